//! Today's spending against the budgets, for `status` (a line) and `status --json`.

use super::*;

/// Today's spending (UTC) against the budgets: `{day, total_usd, daily_budget_usd, agents:
/// {name: {spent_usd, budget_usd}}}`.
pub(super) fn spend_report(ws: &Workspace, book: &TaskBook) -> Result<serde_json::Value> {
    // `status` works with a broken config too: the budgets are then unknown, and it says so.
    let config = match Config::load(&ws.config()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "warning: {e}\nwarning: {}; budgets it may set are not shown",
                if running_daemon(ws).is_some() {
                    "the daemon still runs its previous configuration, but a daemon started now would refuse this file: fix it"
                } else {
                    "a daemon does not start with this file: fix it"
                }
            );
            Config::parse("{}", "no config")?
        }
    };
    let today = dirigent::state::day_of(ledger::now_ms());
    let day = book.spend.get(&today).cloned().unwrap_or_default();
    let mut agents = serde_json::Map::new();
    let names: std::collections::BTreeSet<&String> = day
        .by_agent
        .keys()
        .chain(config.budgets.agents.keys())
        .collect();
    for name in names {
        agents.insert(
            name.clone(),
            json!({
                "spent_usd": day.by_agent.get(name).copied().unwrap_or(0.0),
                "budget_usd": config.budgets.agents.get(name),
            }),
        );
    }
    Ok(json!({
        "day": duration::clock(today * 86_400_000)[..10].to_string(),
        "total_usd": day.total_usd,
        "daily_budget_usd": config.budgets.daily,
        "agents": agents,
    }))
}

/// `spend today: $1.20 of $20.00 (claude $0.80 of $5.00, gemini $0.40)`, or nothing when
/// nothing was spent and no budget is set.
pub(super) fn spend_line(spend: &serde_json::Value) -> Option<String> {
    let of = |budget: &serde_json::Value| {
        budget
            .as_f64()
            .map(|b| format!(" of {}", usage::dollars(b)))
            .unwrap_or_default()
    };
    let total = spend["total_usd"].as_f64().unwrap_or(0.0);
    let agents = spend["agents"].as_object()?;
    if total == 0.0 && spend["daily_budget_usd"].is_null() && agents.is_empty() {
        return None;
    }
    let parts: Vec<String> = agents
        .iter()
        .map(|(name, a)| {
            format!(
                "{name} {}{}",
                usage::dollars(a["spent_usd"].as_f64().unwrap_or(0.0)),
                of(&a["budget_usd"])
            )
        })
        .collect();
    let mut line = format!(
        "spend today (UTC): {}{}",
        usage::dollars(total),
        of(&spend["daily_budget_usd"])
    );
    if !parts.is_empty() {
        line.push_str(&format!(" ({})", parts.join(", ")));
    }
    Some(line)
}
