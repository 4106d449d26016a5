//! The fleet as the commands show it: `dirigent fleet` (the server, the workers, their agents
//! and load), `dirigent fleet permissions` (the server's `authorization` block), `dirigent
//! status --fleet` (every node's tasks), and the `fleet:` lines `status` prints. Each asks the
//! running daemon, which holds the fleet's view.

use super::*;

/// The fleet in a few lines: the server, the live workers, and the agents tasks wait for that
/// no live worker runs.
pub(super) fn fleet_lines(fleet: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    let node = fleet["node"].as_str().unwrap_or("?");
    let url = fleet["url"].as_str().unwrap_or("?");
    match fleet["problem"].as_str() {
        Some(problem) if fleet["connected"] != true => out.push(format!(
            "fleet:   node `{node}` at {url}: not connected: {problem}"
        )),
        _ => {
            let workers = fleet["workers"]
                .as_array()
                .map_or(&[][..], |w| w.as_slice());
            let live: Vec<String> = workers
                .iter()
                .filter(|w| w["live"] == true && w["works"] != false)
                .map(|w| {
                    let agents: Vec<&str> = w["agents"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
                        .unwrap_or_default();
                    format!(
                        "{} ({}; {}/{})",
                        w["name"].as_str().unwrap_or("?"),
                        agents.join(", "),
                        w["running"],
                        w["slots"]
                    )
                })
                .collect();
            let live = if live.is_empty() {
                "no live worker".to_string()
            } else {
                live.join(", ")
            };
            out.push(format!("fleet:   node `{node}` at {url}; workers: {live}"));
        }
    }
    if let Some(twin) = fleet["twin"].as_str() {
        out.push(format!("fleet:   {twin}"));
    }
    // Both hold text from elsewhere (another node's message, the server's words): printed
    // without what a terminal would act on.
    if let Some(latest) = fleet["not_taken"]["latest"].as_str() {
        let latest = dirigent::terminal::printable(latest);
        out.push(format!(
            "fleet:   {} message(s) of the fleet not taken here, latest: {latest}",
            fleet["not_taken"]["count"]
        ));
    }
    if let Some(latest) = fleet["refused"]["latest"].as_str() {
        let latest = dirigent::terminal::printable(latest);
        out.push(format!(
            "fleet:   the server refused this node {} time(s), latest: {latest} (see docs/cluster.md, \"Permissions\")",
            fleet["refused"]["count"]
        ));
    }
    if let Some(unrunnable) = fleet["unrunnable"].as_object() {
        for (agent, tasks) in unrunnable {
            let tasks: Vec<&str> = tasks
                .as_array()
                .map(|t| t.iter().filter_map(|x| x.as_str()).collect())
                .unwrap_or_default();
            out.push(format!(
                "waiting: no live worker of the fleet runs `{agent}` ({} task{}: {})",
                tasks.len(),
                if tasks.len() == 1 { "" } else { "s" },
                tasks.join(", ")
            ));
        }
    }
    out
}

/// `dirigent fleet permissions`: the server's `authorization` block for the nodes given.
pub fn fleet_permissions(nodes: &[String], workers: &[String]) -> Result<ExitCode> {
    use dirigent::fleet::permissions;
    if nodes.is_empty() && workers.is_empty() {
        anyhow::bail!(
            "name the fleet's nodes: `--node NAME=NKEY` for each that only submits, `--worker NAME=NKEY[:AGENTS]` for each that works"
        );
    }
    let mut members = Vec::new();
    for (text, works) in nodes
        .iter()
        .map(|n| (n, false))
        .chain(workers.iter().map(|w| (w, true)))
    {
        let member = permissions::parse_member(text, works).map_err(anyhow::Error::msg)?;
        if members
            .iter()
            .any(|m: &permissions::Member| m.name == member.name || m.nkey == member.nkey)
        {
            anyhow::bail!(
                "`{}` is given twice (a node's name and its nkey are its own)",
                member.name
            );
        }
        members.push(member);
    }
    print!("{}", permissions::config(&members));
    Ok(ExitCode::SUCCESS)
}

/// `dirigent fleet`: the running daemon's view of its fleet — the server, every worker it has
/// heard from (live or not), their agents and load.
pub fn fleet(ws: &Workspace, as_json: bool) -> Result<ExitCode> {
    if running_daemon(ws).is_none() {
        anyhow::bail!(
            "the daemon is not running; `dirigent fleet` asks it (start it with `dirigent daemon`)"
        );
    }
    let answer = dirigent::control::request(ws, &dirigent::control::Request::Status)
        .map_err(|e| anyhow::anyhow!("the daemon does not answer: {e}"))?;
    let Some(fleet) = answer.data.as_ref().and_then(|d| d.get("fleet")).cloned() else {
        anyhow::bail!(
            "this daemon is not in a fleet: add a `cluster:` section to .context/dirigent.yaml (see docs/cluster.md)"
        );
    };
    // Exit 1 while the server is away: a script asking "is the fleet there?" is told no.
    let code = if fleet["connected"] == true {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    };
    if as_json {
        println!("{}", serde_json::to_string_pretty(&fleet)?);
        return Ok(code);
    }
    for line in fleet_lines(&fleet) {
        println!("{line}");
    }
    let workers = fleet["workers"].as_array().cloned().unwrap_or_default();
    if !workers.is_empty() {
        println!();
        println!(
            "{:<20} {:<6} {:>7} {:>10}  AGENTS",
            "WORKER", "STATE", "RUNNING", "SEEN"
        );
    }
    for w in workers {
        let agents: Vec<String> = w["agents"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let seen = w["seen_ms_ago"].as_u64().unwrap_or(0);
        println!(
            "{:<20} {:<6} {:>7} {:>10}  {}",
            dirigent::terminal::printable(w["name"].as_str().unwrap_or("?")),
            if w["live"] == true { "live" } else { "gone" },
            format!("{}/{}", w["running"], w["slots"]),
            format!("{}s ago", seen / 1000),
            if w["works"] == false {
                "(submits only)".to_string()
            } else if agents.is_empty() {
                "(no agent installed: takes nothing)".to_string()
            } else {
                dirigent::terminal::printable(&agents.join(", "))
            }
        );
    }
    Ok(code)
}

/// `dirigent status --fleet`: every node's tasks, from the fleet's events stream, as the running
/// daemon has folded them.
pub fn fleet_status(ws: &Workspace, as_json: bool) -> Result<ExitCode> {
    if running_daemon(ws).is_none() {
        anyhow::bail!(
            "the daemon is not running; `dirigent status --fleet` asks it (start it with `dirigent daemon`)"
        );
    }
    let answer = dirigent::control::request(ws, &dirigent::control::Request::FleetStatus)
        .map_err(|e| anyhow::anyhow!("the daemon does not answer: {e}"))?;
    if !answer.ok {
        anyhow::bail!("{}", answer.message);
    }
    let data = answer.data.unwrap_or_default();
    if as_json {
        println!("{}", serde_json::to_string_pretty(&data)?);
        return Ok(ExitCode::SUCCESS);
    }
    let nodes = data["nodes"].as_array().cloned().unwrap_or_default();
    // Without the server, what follows is what was heard before it went away (or nothing).
    let away = (data["fleet"]["connected"] != true).then(|| {
        format!(
            "fleet:   not connected to the fleet's server{}; {}",
            data["fleet"]["problem"]
                .as_str()
                .map(|p| format!(" ({})", dirigent::terminal::printable(p)))
                .unwrap_or_default(),
            if nodes.is_empty() {
                "nothing heard from the fleet yet"
            } else {
                "the tasks below are as last heard, and may be stale"
            }
        )
    });
    if let Some(away) = &away {
        println!("{away}");
    }
    if nodes.is_empty() {
        if away.is_none() {
            println!("no records from the fleet yet");
        }
        return Ok(if away.is_some() {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        });
    }
    println!(
        "{:<16} {:<28} {:<9} {:<14} WHERE",
        "NODE", "TASK", "STATE", "AGENT"
    );
    for n in nodes {
        let node = dirigent::terminal::printable(n["node"].as_str().unwrap_or("?"));
        for t in n["tasks"].as_array().cloned().unwrap_or_default() {
            let place = if let Some(w) = t["ran_on"].as_str() {
                format!("ran on {w}")
            } else if t["on_fleet"] == true {
                "on the fleet's queue".to_string()
            } else if let Some(k) = t["fleet_key"].as_str() {
                format!("for {}", k.split('.').next().unwrap_or("?"))
            } else {
                String::new()
            };
            println!(
                "{:<16} {:<28} {:<9} {:<14} {}",
                node,
                dirigent::terminal::printable(t["id"].as_str().unwrap_or("?")),
                t["state"].as_str().unwrap_or("?"),
                dirigent::terminal::printable(t["agent"].as_str().unwrap_or("-")),
                dirigent::terminal::printable(&place)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
