//! `dirigent doctor`: can each configured agent run, and if not, what exactly fixes it?
//!
//! For every agent: is its program installed (and, for a preset's CLI, which version —
//! `<program> --version`, run in its own process group and killed after a few seconds; a custom
//! `command` is never run: it may be any script, and `--version` may be work to it), does the preset's CLI have a way to
//! log in (the same check `spawn` makes before each attempt, see `credentials`), is its provider
//! disabled or cooling down, and how did it last fail. Each problem comes with the command that
//! fixes it. Values of credentials are never read or printed: only where one was found.

use std::time::Duration;

use serde_json::{Value, json};

use crate::config::{Agent, Config};
use crate::credentials::Found;
use crate::state::{Availability, TaskBook};
use crate::workspace::Workspace;

/// How long `--version` may take (aider imports a lot of Python).
const VERSION_LIMIT: Duration = Duration::from_secs(15);

/// One agent's findings: `{name, preset, installed, path, version, credentials, availability,
/// last_failure, problems: [{problem, fix}], ok}`.
pub fn check_agent(
    ws: &Workspace,
    agent: &Agent,
    book: &TaskBook,
    version: Option<String>,
) -> Value {
    let path = agent.resolve(ws.root());
    let mut problems: Vec<Value> = Vec::new();
    if path.is_none() {
        problems.push(json!({
            "problem": format!("`{}` is not installed (not on PATH)", agent.program()),
            "fix": agent.preset.map_or_else(
                || format!("install it, or fix the agent's `command` in {}", ".context/dirigent.yaml"),
                |p| p.install_hint.to_string()
            ),
        }));
    }
    let credentials = match agent.preset.and_then(|p| p.credentials.as_ref()) {
        Some(rule) if agent.preflight => {
            let var = |name: &str| {
                agent
                    .env
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
                    .or_else(|| std::env::var(name).ok())
            };
            match crate::credentials::check(rule, &var, ws.root()) {
                Found::Present(at) => json!({"state": "found", "at": at}),
                Found::Missing(looked) => {
                    // Logging in comes after installing: say so in that order.
                    let login = agent.preset.map_or("log in", |p| p.login_hint);
                    problems.push(json!({
                        "problem": "not logged in: none of its credentials exists".to_string(),
                        "fix": if path.is_none() {
                            format!("once it is installed: {login}")
                        } else {
                            format!("{login}, then `dirigent agents enable {}`", agent.name)
                        },
                    }));
                    json!({"state": "missing", "looked_at": looked})
                }
                Found::Unknown => json!({"state": "unknown"}),
            }
        }
        _ => json!({"state": "unknown"}),
    };
    let availability = match book.availability(&agent.provider, crate::ledger::now_ms()) {
        Availability::Ready => json!({"state": "ready"}),
        Availability::CoolingDown { until_ms, reason } => json!({
            "state": "cooling_down",
            "until": crate::duration::clock(until_ms),
            "reason": reason,
        }),
        Availability::Disabled { reason, since_ms } => {
            problems.push(json!({
                "problem": format!("disabled after an auth failure: {reason}"),
                "fix": format!(
                    "{}, then `dirigent agents enable {}`",
                    agent.preset.map_or("fix its credentials", |p| p.login_hint),
                    agent.name
                ),
            }));
            json!({
                "state": "disabled",
                "since": crate::duration::clock(since_ms),
                "reason": reason,
            })
        }
    };
    let last_failure = book
        .iter()
        .flat_map(|t| t.attempts().iter().map(move |a| (t, a)))
        .filter(|(_, a)| {
            crate::config::split_entry(&a.agent).0 == agent.name
                // A cancel or a stop of the daemon is no failure of the agent's.
                && a.class.is_some_and(|c| {
                    use crate::judge::Class;
                    !matches!(c, Class::Ok | Class::Cancelled | Class::Interrupted)
                })
        })
        .max_by_key(|(_, a)| a.started_ms)
        .map(|(t, a)| {
            json!({
                "class": a.class.map(|c| c.as_str()),
                "reason": a.reason,
                "task": t.id(),
            })
        });
    json!({
        "name": agent.name,
        "preset": agent.preset.map(|p| p.name),
        "installed": path.is_some(),
        "path": path.map(|p| p.display().to_string()),
        "version": version,
        "credentials": credentials,
        "availability": availability,
        "last_failure": last_failure,
        "ok": problems.is_empty(),
        "problems": problems,
    })
}

/// Every agent of `config`, versions asked for in parallel — of the presets' CLIs only.
pub fn report(ws: &Workspace, config: &Config, book: &TaskBook) -> Value {
    let versions: Vec<Option<String>> = std::thread::scope(|s| {
        let handles: Vec<_> = config
            .agents
            .values()
            .map(|agent| {
                // A custom command is the user's script: run, it would do its work (edit the
                // checkout, wait, …), whatever `--version` means to it.
                let path = agent
                    .preset
                    .is_some()
                    .then(|| agent.resolve(ws.root()))
                    .flatten();
                s.spawn(move || path.and_then(|p| version_of(&p)))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().ok().flatten())
            .collect()
    });
    let agents: Vec<Value> = config
        .agents
        .values()
        .zip(versions)
        .map(|(agent, version)| check_agent(ws, agent, book, version))
        .collect();
    json!({
        "config": config.source,
        "agents": agents,
    })
}

/// The first line `program --version` prints, if it answers within [`VERSION_LIMIT`].
fn version_of(program: &std::path::Path) -> Option<String> {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    let mut child = std::process::Command::new(program)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .ok()?;
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    let deadline = std::time::Instant::now() + VERSION_LIMIT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => break None,
        }
    };
    // Whatever it started goes with it.
    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    if status.is_none() {
        let _ = child.wait();
        return None;
    }
    let mut out = String::new();
    child
        .stdout
        .take()?
        .take(4096)
        .read_to_string(&mut out)
        .ok()?;
    let line = out.lines().find(|l| !l.trim().is_empty())?.trim();
    Some(line.chars().take(120).collect())
}
