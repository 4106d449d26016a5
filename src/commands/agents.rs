//! `dirigent agents`, `dirigent doctor` and `dirigent stats`: what can run, what is wrong with
//! it, and how each agent (or role, or model) has done.

use super::*;

pub fn agents(ws: &Workspace, as_json: bool) -> Result<ExitCode> {
    let config = Arc::new(Config::load(&ws.config())?);
    let book = load_book(ws)?;
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&dirigent::catalog::agents_report(ws, &config, &book))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let default_chain = config.effective_default_chain(ws.root());
    let rows = dirigent::catalog::agents(ws, &config, &book, &default_chain);
    println!("config: {}", config.source);
    if book.config_file_gone && !ws.config().exists() && running_daemon(ws).is_some() {
        println!(
            "  `{}` is missing: the running daemon keeps the configuration it read before (not shown here); `dirigent init` writes a new file",
            ws.config().display()
        );
    }
    println!(
        "default chain: {}",
        if default_chain.is_empty() {
            "(empty: no agent is installed)".to_string()
        } else {
            default_chain.join(" → ")
        }
    );
    println!();
    for r in &rows {
        let name = r["name"].as_str().unwrap_or("");
        let where_ = r["path"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| "not installed".into());
        let limits = format!(
            "timeout {}, idle {}, max_parallel {}, stagger {}",
            short(Duration::from_millis(r["timeout_ms"].as_u64().unwrap_or(0))),
            r["idle_timeout_ms"]
                .as_u64()
                .map(|m| short(Duration::from_millis(m)))
                .unwrap_or_else(|| "none".into()),
            r["max_parallel"]
                .as_u64()
                .map(|m| m.to_string())
                .unwrap_or_else(|| "-".into()),
            short(Duration::from_millis(r["stagger_ms"].as_u64().unwrap_or(0))),
        );
        let ins: Vec<&str> = r["in"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        println!("{name:<10} {where_}");
        let installed = r["installed"].as_bool().unwrap_or(false);
        if !installed {
            println!(
                "{:<10} cannot run: `{}` is not installed (not on PATH){}",
                "",
                r["program"].as_str().unwrap_or(name),
                r["install_hint"]
                    .as_str()
                    .map(|h| format!("; install: {h}"))
                    .unwrap_or_default()
            );
        }
        match r["availability"]["state"].as_str() {
            Some("cooling_down") => println!(
                "{:<10} COOLING DOWN until {}: {}",
                "",
                r["availability"]["until"].as_str().unwrap_or(""),
                r["availability"]["reason"].as_str().unwrap_or("")
            ),
            Some("disabled") => println!(
                "{:<10} DISABLED since {} (auth failed: {}); fix it, then `dirigent agents enable {name}`",
                "",
                r["availability"]["since"].as_str().unwrap_or(""),
                r["availability"]["reason"].as_str().unwrap_or("")
            ),
            // Never "ready" for an agent that cannot start.
            _ if !installed => {}
            _ => println!(
                "{:<10} ready (provider `{}`)",
                "",
                r["provider"].as_str().unwrap_or("")
            ),
        }
        println!("{:<10} {limits}", "");
        if !ins.is_empty() {
            println!("{:<10} in: {}", "", ins.join(", "));
        }
        if r["attempts"].as_u64().unwrap_or(0) > 0 {
            println!("{:<10} attempts: {}, ok: {}", "", r["attempts"], r["ok"]);
        }
        if let Some(f) = r["last_failure"].as_object() {
            println!(
                "{:<10} last failure: {} at {} (task {}): {}",
                "",
                f["class"].as_str().unwrap_or(""),
                f["at"].as_str().unwrap_or(""),
                f["task"].as_str().unwrap_or(""),
                f["reason"].as_str().unwrap_or("")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn doctor(ws: &Workspace, as_json: bool) -> Result<ExitCode> {
    let config = Config::load(&ws.config())?;
    let book = load_book(ws)?;
    let report = dirigent::doctor::report(ws, &config, &book);
    let default_chain = config.effective_default_chain(ws.root());
    let agents = report["agents"].as_array().cloned().unwrap_or_default();
    let usable = agents
        .iter()
        .any(|a| a["ok"] == true && default_chain.iter().any(|c| a["name"] == c.as_str()));
    if as_json {
        // The verdict too, so a script need not work it out: can the default chain run?
        let mut report = report;
        report["default_chain"] = json!(default_chain);
        report["usable"] = json!(usable);
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("config: {}", config.source);
        for a in &agents {
            let name = a["name"].as_str().unwrap_or("");
            let version = a["version"]
                .as_str()
                .map(|v| format!(" ({v})"))
                .unwrap_or_default();
            let place = match a["path"].as_str() {
                Some(p) => format!("{p}{version}"),
                None => "not installed".into(),
            };
            let creds = match a["credentials"]["state"].as_str() {
                Some("found") => format!(
                    ", credentials: {}",
                    a["credentials"]["at"].as_str().unwrap_or("")
                ),
                Some("missing") => ", credentials: none".into(),
                _ if a["preset"].is_string() && a["installed"] == true => {
                    ", credentials: not checked (its own answer decides)".into()
                }
                _ => String::new(),
            };
            let state = match a["availability"]["state"].as_str() {
                Some("cooling_down") => format!(
                    ", cooling down until {}",
                    a["availability"]["until"].as_str().unwrap_or("")
                ),
                Some("disabled") => ", disabled".into(),
                _ => String::new(),
            };
            let verdict = if a["ok"] == true { "ok" } else { "PROBLEM" };
            println!("{name:<10} {verdict}: {place}{creds}{state}");
            for p in a["problems"].as_array().into_iter().flatten() {
                println!("{:<10} - {}", "", p["problem"].as_str().unwrap_or(""));
                println!("{:<10}   fix: {}", "", p["fix"].as_str().unwrap_or(""));
            }
            if let Some(f) = a["last_failure"].as_object() {
                println!(
                    "{:<10} last failure: {} (task {}): {}",
                    "",
                    f["class"].as_str().unwrap_or(""),
                    f["task"].as_str().unwrap_or(""),
                    f["reason"].as_str().unwrap_or("")
                );
            }
        }
        println!(
            "\ndefault chain: {}",
            if default_chain.is_empty() {
                "(empty: no agent is installed)".to_string()
            } else {
                default_chain.join(" → ")
            }
        );
        if !usable {
            println!(
                "no agent of the default chain can run: fix one of the problems above, or try dirigent with a script agent that needs no CLI (the README's \"No agent CLI installed yet?\")"
            );
        }
        println!(
            "(checked with this shell's environment; a daemon started by systemd or launchd may see another one)"
        );
    }
    Ok(if usable {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub fn stats(
    ws: &Workspace,
    since: &str,
    by: crate::cli::StatsBy,
    fleet: bool,
    as_json: bool,
) -> Result<ExitCode> {
    use dirigent::stats::By;
    let period = duration::parse(since).map_err(|e| anyhow::anyhow!("`--since`: {e}"))?;
    let since_ms = ledger::now_ms().saturating_sub(period.as_millis() as u64);
    let by = match by {
        crate::cli::StatsBy::Agent => By::Agent,
        crate::cli::StatsBy::Role => By::Role,
        crate::cli::StatsBy::Model => By::Model,
        crate::cli::StatsBy::Worker if fleet => By::Worker,
        crate::cli::StatsBy::Worker => {
            anyhow::bail!("`--by worker` groups the fleet's attempts: add `--fleet`")
        }
    };
    let config = Config::load(&ws.config());
    let models: std::collections::HashMap<String, String> = config
        .as_ref()
        .map(|c| {
            c.agents
                .iter()
                .filter_map(|(n, a)| a.model.clone().map(|m| (n.clone(), m)))
                .collect()
        })
        .unwrap_or_default();
    let report = if fleet {
        let cluster = match &config {
            Ok(c) => c.cluster.clone(),
            Err(e) => anyhow::bail!("{e}"),
        };
        let Some(cluster) = cluster else {
            anyhow::bail!(
                "this workspace is not in a fleet: add a `cluster:` section to .context/dirigent.yaml (see docs/cluster.md)"
            );
        };
        fleet_report(&cluster, since_ms, by, &models)?
    } else {
        dirigent::stats::over_ledger(ws, since_ms, by, &models)?
    };
    let compacted = report.history_from_seq.is_some_and(|s| s > 1);
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows = report.rows;
    if rows.is_empty() {
        println!("no attempts finished in the last {since}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<16} {:>8} {:>6} {:>6} {:>9} {:>9} {:>9} {:>10}  FAILURES",
        format!("{by:?}").to_uppercase(),
        "ATTEMPTS",
        "OK",
        "FALLBK",
        "MEDIAN",
        "P95",
        "COST",
        "$/SUCCESS"
    );
    for r in &rows {
        let failures: Vec<String> = r.classes.iter().map(|(c, n)| format!("{c} {n}")).collect();
        let line = format!(
            "{:<16} {:>8} {:>5.0}% {:>5.0}% {:>9} {:>9} {:>9} {:>10}  {}",
            r.key,
            r.attempts,
            r.success_rate * 100.0,
            r.fallback_rate * 100.0,
            short(Duration::from_millis(r.median_ms)),
            short(Duration::from_millis(r.p95_ms)),
            usage::dollars(r.cost_usd),
            r.cost_per_success_usd
                .map(usage::dollars)
                .unwrap_or_else(|| "-".into()),
            failures.join(", ")
        );
        println!("{}", line.trim_end());
    }
    if compacted {
        println!(
            "(older history was compacted away; these figures start at ledger record {})",
            report.history_from_seq.unwrap_or(0)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The scorecard over every fleet node's records (`stats --fleet`), read from the events
/// stream on the fleet's server.
fn fleet_report(
    cluster: &dirigent::config::cluster::Cluster,
    since_ms: u64,
    by: dirigent::stats::By,
    models: &std::collections::HashMap<String, String>,
) -> Result<dirigent::stats::Report> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let conn = dirigent::fleet::connect::connect(cluster, None).await?;
        let mut card = dirigent::stats::Scorecard::new(since_ms, by, models);
        dirigent::fleet::events::scorecard(&conn, since_ms, &mut card)
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        let (rows, days) = card.finish();
        Ok(dirigent::stats::Report {
            since_ms,
            by: by.name(),
            history_from_seq: None,
            rows,
            days,
        })
    })
}

#[cfg(test)]
mod tests {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, ModifyKind, RemoveKind};

    #[test]
    fn only_changes_wake_a_waiting_client() {
        let cases = [
            (EventKind::Access(AccessKind::Open(AccessMode::Any)), false),
            (EventKind::Access(AccessKind::Read), false),
            (
                EventKind::Access(AccessKind::Close(AccessMode::Read)),
                false,
            ),
            (
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                true,
            ),
            (EventKind::Create(CreateKind::File), true),
            (EventKind::Modify(ModifyKind::Data(DataChange::Any)), true),
            (EventKind::Remove(RemoveKind::File), true),
            (EventKind::Any, true),
        ];
        for (kind, want) in cases {
            assert_eq!(super::is_change(&kind), want, "{kind:?}");
        }
    }
}
