//! What a daemon offers, as data: its agents (with their chains, roles and recent record) and its
//! workflows. `dirigent agents`, `dirigent workflow list`, the HTTP API, `/v1/models` and the
//! MCP server all describe the same things, so they all read them from here.

use serde_json::{Value, json};

use crate::config::Config;
use crate::judge::Class;
use crate::state::TaskBook;
use crate::workspace::Workspace;

/// Every configured agent, one JSON object each, in config order. `default_chain` is
/// `config.effective_default_chain` (passed in: it looks each program up on PATH).
pub fn agents(
    ws: &Workspace,
    config: &Config,
    book: &TaskBook,
    default_chain: &[String],
) -> Vec<Value> {
    let mut rows = Vec::new();
    for (name, agent) in &config.agents {
        let path = agent.resolve(ws.root());
        let mut chains = config.memberships(name);
        if config.default_chain.is_none() && default_chain.contains(name) {
            chains.insert(0, "default_chain".into());
        }
        let (mut attempts, mut ok) = (0u64, 0u64);
        // The latest failed attempt (of this agent or an `agent:model` variant of it).
        let mut last_failure: Option<(&str, &crate::state::AttemptSummary)> = None;
        for t in book.iter() {
            for a in t
                .attempts()
                .iter()
                .filter(|a| crate::config::split_entry(&a.agent).0 == name)
            {
                attempts += 1;
                ok += u64::from(a.class == Some(Class::Ok));
                // A cancel or a stop of the daemon is no failure of the agent's.
                if a.class.is_some_and(|c| {
                    !matches!(c, Class::Ok | Class::Cancelled | Class::Interrupted)
                }) && last_failure.is_none_or(|(_, l)| l.started_ms <= a.started_ms)
                {
                    last_failure = Some((t.id(), a));
                }
            }
        }
        let last_failure = last_failure.map(|(task, a)| {
            json!({
                "class": a.class.map(Class::as_str),
                "reason": a.reason,
                "task": task,
                "at": crate::duration::clock(a.started_ms + a.duration_ms),
            })
        });
        let state = match book.availability(&agent.provider, crate::ledger::now_ms()) {
            crate::state::Availability::Ready => json!({"state": "ready"}),
            crate::state::Availability::CoolingDown { until_ms, reason } => json!({
                "state": "cooling_down",
                "until_ms": until_ms,
                "until": crate::duration::clock(until_ms),
                "reason": reason,
            }),
            crate::state::Availability::Disabled { reason, since_ms } => json!({
                "state": "disabled",
                "since": crate::duration::clock(since_ms),
                "reason": reason,
            }),
        };
        rows.push(json!({
            "name": name,
            "provider": agent.provider,
            "availability": state,
            "preset": agent.preset.map(|p| p.name),
            "program": agent.program(),
            "path": path.as_ref().map(|p| p.display().to_string()),
            "installed": path.is_some(),
            "install_hint": agent.preset.map(|p| p.install_hint),
            "model": agent.model,
            "max_parallel": agent.max_parallel,
            "stagger_ms": agent.stagger.as_millis() as u64,
            "timeout_ms": agent.timeout.as_millis() as u64,
            "idle_timeout_ms": agent.idle_timeout.map(|d| d.as_millis() as u64),
            "in": chains,
            "attempts": attempts,
            "ok": ok,
            "last_failure": last_failure,
        }));
    }
    rows
}

/// `{config, default_chain, roles, agents}`: the answer of `dirigent agents --json` and
/// `GET /agents`.
pub fn agents_report(ws: &Workspace, config: &Config, book: &TaskBook) -> Value {
    let roles: serde_json::Map<String, Value> = config
        .roles
        .iter()
        .map(|(name, chain)| (name.clone(), json!(chain)))
        .collect();
    let default_chain = config.effective_default_chain(ws.root());
    json!({
        "config": config.source,
        "roles": roles,
        "agents": agents(ws, config, book, &default_chain),
        "default_chain": default_chain,
    })
}

/// Every workflow (built-in and `.context/workflows/`), one JSON object each:
/// `{name, source, valid, phases, description, vars}`.
pub fn workflows(ws: &Workspace, config: &Config) -> std::io::Result<Vec<Value>> {
    let mut rows = Vec::new();
    for def in crate::workflow::discover(&ws.workflows())? {
        let (phases, description, vars, path_vars, valid) =
            match crate::workflow::validate(&def, config) {
                Ok(wf) => (
                    wf.phases
                        .iter()
                        .map(|p| format!("{}:{}", p.name.value, p.phase_type().name()))
                        .collect::<Vec<_>>(),
                    wf.description.clone(),
                    // Declared ones, and the `{variables}` used without being declared (required).
                    wf.variables.clone(),
                    wf.path_variables(),
                    true,
                ),
                Err(_) => (
                    vec![],
                    String::new(),
                    Default::default(),
                    Default::default(),
                    false,
                ),
            };
        rows.push(json!({
            "name": def.name,
            "source": def.source.to_string(),
            "valid": valid,
            "phases": phases,
            "description": description,
            // Each variable's default; `null` means the run must give it.
            "vars": vars,
            // The variables that name files (an `output`, a `glob`, `files`).
            "path_vars": path_vars,
        }));
    }
    Ok(rows)
}
