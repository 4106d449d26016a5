//! The escalate stage: when a task's whole chain has failed, write `escalations/<id>.md` (the
//! prompt, then every attempt with agent, class, exit code or signal, duration and the last lines
//! of its output), and run the optional `on_escalate` hook with the task id.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::Config;
use crate::duration::short;
use crate::fsutil;
use crate::judge::signal_name;
use crate::preset;
use crate::state::TaskRecord;
use crate::workspace::Workspace;

/// Lines of each output stream quoted in the report.
const TAIL_LINES: usize = 20;

/// Writes `escalations/<id>.md` atomically and returns its path. For a workflow run,
/// `children` are its tasks: the report lists its phases and tasks, links the reports of the
/// ones that failed, and takes its advice from their attempts.
pub fn write_report(
    ws: &Workspace,
    task: &TaskRecord,
    reason: &str,
    config: Option<&Config>,
    children: &[TaskRecord],
) -> std::io::Result<PathBuf> {
    let is_run = task.workflow().is_some() || !children.is_empty();
    if is_run {
        return write_run_report(ws, task, reason, config, children);
    }
    let mut md = String::new();
    let heading = if reason == crate::state::CANCELLED_REASON {
        "Cancelled"
    } else {
        "Escalated"
    };
    let _ = writeln!(md, "# {heading}: {} — {}\n", task.id(), task.title());
    let advice = config.and_then(|c| crate::advice::in_short(task.attempts(), c));
    if let Some(advice) = &advice {
        let _ = writeln!(md, "**In short:** {advice}.\n");
    }
    // The reason ends with the same advice: say it once.
    let why = advice
        .as_deref()
        .and_then(|a| reason.strip_suffix(a))
        .and_then(|r| r.strip_suffix(": "))
        .unwrap_or(reason);
    let _ = writeln!(md, "**Why:** {why}\n");
    let _ = writeln!(
        md,
        "**Chain:** {}\n",
        if task.chain().is_empty() {
            "(empty)".to_string()
        } else {
            task.chain().join(" → ")
        }
    );
    if let Some(w) = &task.more().worktree {
        let _ = writeln!(
            md,
            "**Branch:** `{}` from {} in `{}`{} — {}\n",
            w.branch,
            &w.base[..w.base.len().min(12)],
            w.tree.path.display(),
            if w.removed { " (removed)" } else { "" },
            if matches!(w.merge, crate::state::MergeState::Discarded) {
                "discarded (`dirigent discard`)".to_string()
            } else {
                format!(
                    "`dirigent diff {}` shows the work, `dirigent discard {}` throws it away",
                    task.id(),
                    task.id()
                )
            }
        );
    }
    let spec = task.spec();
    let prompt = spec.as_ref().map_or("", |s| s.prompt.as_str());
    let _ = writeln!(md, "## Prompt\n\n{}\n", fenced(prompt));
    let _ = writeln!(md, "## Attempts\n");
    if task.attempts().is_empty() {
        let _ = writeln!(md, "_No attempt could be made._\n");
    }
    for a in task.attempts() {
        let status = match (a.exit_code, a.signal) {
            (_, Some(sig)) => format!("signal {sig} ({})", signal_name(sig)),
            (Some(code), None) => format!("exit code {code}"),
            (None, None) => "no exit status".to_string(),
        };
        let _ = writeln!(
            md,
            "### Attempt {} — {}: `{}`\n\n- reason: {}\n- {status}, {} (stdout {} bytes, stderr {} bytes)\n",
            a.n,
            a.agent,
            a.class.map(|c| c.as_str()).unwrap_or("unfinished"),
            a.reason,
            short(Duration::from_millis(a.duration_ms)),
            a.stdout_bytes,
            a.stderr_bytes,
        );
        if let Some(w) = &a.work {
            let patch = crate::workspace::attempt_file(a.n, &a.agent, "patch");
            let saved = ws.run_dir(task.id()).join(&patch);
            let _ = writeln!(
                md,
                "- changed {} file{} (+{} -{}){}\n",
                w.diff.files,
                if w.diff.files == 1 { "" } else { "s" },
                w.diff.insertions,
                w.diff.deletions,
                if saved.exists() {
                    format!("; saved as `{}`", saved.display())
                } else {
                    String::new()
                }
            );
        }
        for stream in ["stdout", "stderr"] {
            let name = crate::workspace::attempt_file(a.n, &a.agent, stream);
            let path = ws.run_dir(task.id()).join(&name);
            // Read through no link: an agent could plant one to have a file of its choosing
            // copied into the report.
            let text = ws
                .open_sub(&format!("runs/{}", task.id()))
                .and_then(|d| d.open_regular(&name))
                .map(|f| fsutil::tail_of(f, 16 * 1024))
                .unwrap_or_default();
            let tail = last_lines(&text, TAIL_LINES);
            if !tail.trim().is_empty() {
                let _ = writeln!(
                    md,
                    "Last lines of {stream} (`{}`):\n\n{}\n",
                    path.display(),
                    fenced(&tail)
                );
            }
        }
    }
    let again = format!(
        "`dirigent retry {id}` (it re-reads `.context/failed/{file}`, so you can correct the task there first), or submit it anew",
        id = task.id(),
        file = task.file()
    );
    if reason == crate::state::CANCELLED_REASON {
        let _ = writeln!(
            md,
            "## What now\n\nIt was cancelled on request. To run it anyway: {again}.\n"
        );
        let name = format!("{}.md", task.id());
        ws.open_sub("escalations")?
            .write_atomic(&name, md.as_bytes(), 0o600)?;
        return Ok(ws.escalations().join(name));
    }
    let _ = match crate::advice::outlook(task.attempts()) {
        crate::advice::Outlook::FixFirst => writeln!(
            md,
            "## What now\n\nA retry now would fail the same way: first log in or install as **In short** says \
(then `dirigent agents enable <agent>`). Then run it again: {again}.\n"
        ),
        crate::advice::Outlook::FixSome => writeln!(
            md,
            "## What now\n\nFirst log in or install as **In short** says (then `dirigent agents enable <agent>`); \
a retry before that runs without those agents. Then run it again: {again}.\n"
        ),
        crate::advice::Outlook::Retry => writeln!(
            md,
            "## What now\n\nFix the cause (see the reasons above), then run it again: {again}.\n"
        ),
    };
    let name = format!("{}.md", task.id());
    ws.open_sub("escalations")?
        .write_atomic(&name, md.as_bytes(), 0o600)?;
    Ok(ws.escalations().join(name))
}

/// The report of a workflow run: why, its phases, its tasks (each failed one with its reason
/// and a link to its own report), and how to resume.
fn write_run_report(
    ws: &Workspace,
    run: &TaskRecord,
    reason: &str,
    config: Option<&Config>,
    children: &[TaskRecord],
) -> std::io::Result<PathBuf> {
    use crate::state::Phase;
    let mut md = String::new();
    let _ = writeln!(md, "# Escalated: {} — {}\n", run.id(), run.title());
    let failed: Vec<&TaskRecord> = children
        .iter()
        .filter(|c| matches!(c.phase(), Phase::Failed { .. }))
        .collect();
    let advice = config.and_then(|c| {
        failed
            .iter()
            .find_map(|f| crate::advice::in_short(f.attempts(), c))
    });
    if let Some(advice) = &advice {
        let _ = writeln!(md, "**In short:** {advice}.\n");
    }
    let _ = writeln!(md, "**Why:** {}\n", reason.trim_end());
    let _ = writeln!(md, "## Phases completed\n");
    if run.more().phases.is_empty() {
        let _ = writeln!(md, "_None._\n");
    } else {
        for (phase, output) in &run.more().phases {
            let _ = writeln!(md, "- `{phase}` → `{output}`");
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(md, "## Tasks of this run\n");
    if children.is_empty() {
        let _ = writeln!(md, "_None: the run failed before it submitted a task._\n");
    }
    for c in children {
        let agent = c
            .attempts()
            .last()
            .map(|a| format!(", last attempt on {}", a.agent))
            .unwrap_or_default();
        match c.phase() {
            Phase::Failed { reason, .. } => {
                let _ = writeln!(
                    md,
                    "- `{}` — **failed**{agent}: {}\n  report: [escalations/{}.md]({}.md)",
                    c.id(),
                    reason.lines().next().unwrap_or(""),
                    c.id(),
                    c.id()
                );
            }
            Phase::Done { output, .. } => {
                let _ = writeln!(md, "- `{}` — done{agent} → `{output}`", c.id());
            }
            other => {
                let _ = writeln!(md, "- `{}` — {}{agent}", c.id(), other.label());
            }
        }
    }
    let _ = writeln!(
        md,
        "\n## What now\n\nFix the cause{} (see the failed tasks' reports), then `dirigent retry {}`: the run resumes from the phase that failed — its failed tasks run again, completed phases are kept. The retried run reads its workflow's file again: a change there (a loop's `max_rounds` or evaluator, another agent for a phase) applies from the phase it resumes at; the failed tasks run again as they were submitted — edit a failed task's file in `.context/failed/` before the retry to change one.\n",
        if advice.is_some() {
            " as **In short** says"
        } else {
            ""
        },
        run.id()
    );
    let name = format!("{}.md", run.id());
    ws.open_sub("escalations")?
        .write_atomic(&name, md.as_bytes(), 0o600)?;
    Ok(ws.escalations().join(name))
}

/// A complete config with one script agent that needs nothing installed: it answers with the
/// prompt it got. Suggested when no agent is available, and in the README's quick start.
pub const ECHO_AGENT_CONFIG: &str = r#"agents:
  echo:
    command: ["sh", "-c", "printf 'echo agent got: '; cat"]
    workdir: shared
default_chain: [echo]
"#;

/// The message for a task whose chain is empty because no agent CLI is installed. Everything it
/// suggests works when pasted (a test pastes it).
pub fn no_agents_message(config: &Config, task: &str) -> String {
    let mut installs = String::new();
    for p in preset::PRESETS {
        if config.agents.contains_key(p.name) {
            let _ = write!(installs, "\n  - {}: {}", p.name, p.install_hint);
        }
    }
    let why_shared = "`workdir: shared`: it answers in the workspace and edits nothing, so it \
needs no worktree of its own in a git repository";
    let how = if config.from_file {
        // The entry alone: the file has its own `agents:` (and maybe a `default_chain:`).
        let entry: String = ECHO_AGENT_CONFIG
            .lines()
            .skip(1)
            .take_while(|l| l.starts_with(' '))
            .map(|l| format!("{l}\n"))
            .collect();
        format!(
            "add this `echo:` entry (all three of its lines) under `agents:` in \
.context/dirigent.yaml, and set `default_chain: [echo]` there ({why_shared}):\n\n{entry}\n"
        )
    } else {
        format!(
            "there is no .context/dirigent.yaml (the embedded default runs), and \
these five lines are a complete config for it ({why_shared}):\n\n{ECHO_AGENT_CONFIG}\n"
        )
    };
    format!(
        "no agent is available: none of the configured agent CLIs is installed (on the daemon's PATH). \
Install one of them:{installs}\n\
or, to try dirigent without one, use a script agent: {how}\
Then `dirigent retry {task}`."
    )
}

/// The last `n` lines, made printable (the report is read on terminals).
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    crate::terminal::printable_lines(&lines[lines.len().saturating_sub(n)..].join("\n"))
}

/// A Markdown code fence long enough not to be closed by the text inside it.
pub(crate) fn fenced(text: &str) -> String {
    let mut fence = "```".to_string();
    while text.contains(&fence) {
        fence.push('`');
    }
    format!("{fence}\n{}\n{fence}", text.trim_end())
}

/// Runs the `on_escalate` hook (argv + the task id) like any side command (see
/// [`crate::side_command::run_logged`]), output in `runs/<id>/on_escalate.log`, killed after `limit`.
pub async fn run_hook(
    ws: &Workspace,
    argv: &[String],
    task_id: &str,
    limits: crate::side_command::SideLimits,
) {
    let log = ws.run_dir(task_id).join("on_escalate.log");
    let mut full = argv.to_vec();
    full.push(task_id.to_string());
    let limit = limits.limit;
    match crate::side_command::run_logged(ws, &full, &log, limits).await {
        crate::side_command::CommandEnd::Exited(status) if !status.success() => {
            tracing::warn!(
                task = task_id,
                "on_escalate hook exited with {status}; see {}",
                log.display()
            );
        }
        crate::side_command::CommandEnd::Exited(_) => {}
        crate::side_command::CommandEnd::TimedOut => {
            tracing::warn!(
                task = task_id,
                "on_escalate hook ran longer than {}; killed",
                short(limit)
            );
        }
        crate::side_command::CommandEnd::Stopped => {
            tracing::warn!(
                task = task_id,
                "on_escalate hook was stopped: the daemon is stopping"
            );
        }
        crate::side_command::CommandEnd::CouldNotStart(why) => {
            tracing::warn!(task = task_id, "on_escalate hook: {why}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Right after `init` the file exists: the advice is the entry to add to it, not a whole
    /// config to write in its place.
    #[test]
    fn the_no_agent_advice_fits_whether_the_config_file_exists() {
        let embedded = Config::parse("", "embedded").unwrap();
        let text = no_agents_message(&embedded, "t");
        assert!(
            text.contains("there is no .context/dirigent.yaml")
                && text.contains("these five lines are a complete config")
                && text.contains(ECHO_AGENT_CONFIG),
            "expected the whole config for a workspace without the file, got:\n{text}"
        );
        let from_file = Config {
            from_file: true,
            ..embedded
        };
        let text = no_agents_message(&from_file, "t");
        let entry = "  echo:\n    command: [\"sh\", \"-c\", \"printf 'echo agent got: '; cat\"]\n    workdir: shared\n";
        assert!(
            text.contains("under `agents:` in .context/dirigent.yaml")
                && text.contains(entry)
                && !text.contains("five lines")
                && text.ends_with("Then `dirigent retry t`."),
            "expected the entry to add to the existing file, got:\n{text}"
        );
    }
}
