//! `dirigent status`: the task table (inbox included), one task in detail, a workflow run's
//! phases and tasks, and today's spending; live from the daemon when it answers, else the ledger.

use super::inbox_view::{inbox_files, inbox_note, inbox_refusal};
use super::spend::{spend_line, spend_report};
use super::*;
use std::io::IsTerminal;

/// The daemon's live state when it answers: its task book and, when it does not take work
/// now, why.
pub(super) struct Live {
    answering: bool,
    paused: Option<String>,
    /// Why task files are left in the inbox for now (the tasks taken in hold too much).
    pub(super) intake_held: Option<String>,
    /// Fleet mode: the fleet as the daemon sees it.
    fleet: Option<serde_json::Value>,
}

fn daemon_line(ws: &Workspace, live: &Live) -> String {
    match (running_daemon(ws), live.answering) {
        (Some(pid), true) => match &live.paused {
            Some(why) => format!(
                "daemon: running (pid {pid}), not taking work: {why}; this is its live state"
            ),
            None => match &live.intake_held {
                Some(why) => format!(
                    "daemon: running (pid {pid}), leaving task files in the inbox for now: {why}; this is its live state"
                ),
                None => format!("daemon: running (pid {pid}); this is its live state"),
            },
        },
        (Some(pid), false) => format!(
            "daemon: running (pid {pid}), not answering; showing the state recorded in the ledger"
        ),
        (None, _) => "daemon: not running (showing the state recorded in the ledger)".to_string(),
    }
}

/// The running daemon's own state when it answers, else the files. `true` = live.
fn load_live_book(ws: &Workspace) -> Result<(TaskBook, Live)> {
    if running_daemon(ws).is_some()
        && let Ok(answer) = dirigent::control::request(ws, &dirigent::control::Request::Status)
        && let Some(data) = answer.data
    {
        let paused = data["paused"]["why"].as_str().map(str::to_string);
        let intake_held = data["intake_held"].as_str().map(str::to_string);
        let fleet = data.get("fleet").cloned();
        if let Ok(mut book) = serde_json::from_value::<TaskBook>(data) {
            // A record is in the ledger file (fsynced) a moment before the daemon has applied
            // it: fold what the file has beyond the daemon's answer, so that `status` right
            // after `submit --wait` said "escalated" says so too.
            let key = ledger_key(ws);
            if let Ok(records) =
                ledger::read_after(&ws.ledger(), book.last_seq, usize::MAX, key.as_ref())
            {
                for r in &records {
                    book.apply(r);
                }
            }
            return Ok((
                book,
                Live {
                    answering: true,
                    paused,
                    intake_held,
                    fleet,
                },
            ));
        }
    }
    Ok((
        load_book(ws)?,
        Live {
            answering: false,
            paused: None,
            intake_held: None,
            fleet: None,
        },
    ))
}

/// Whether `t` was running (or merging) when the daemon stopped without recording its end — it
/// died or was killed: its attempt ended with it (the supervisor stops an agent whose daemon is
/// gone), and the task runs again at the next start. Shown as such instead of a clock that runs on.
fn interrupted(t: &TaskRecord, daemon_down: bool) -> bool {
    daemon_down && matches!(t.phase(), Phase::Running { .. } | Phase::Merging) && !on_fleet(t)
}

/// Whether `t` ended cancelled (its state is `failed`, as the filters have it): `cancelled` in
/// `--json`, so a script does not read it from the reason's words.
fn cancelled(t: &TaskRecord) -> bool {
    matches!(t.phase(), Phase::Failed { reason, .. } if reason == dirigent::state::CANCELLED_REASON)
}

/// What an interrupted task's line says.
const INTERRUPTED_NOTE: &str = "the daemon stopped without recording how its attempt ended (it died or was killed; its agent was stopped with it); the task runs again when the daemon starts (`dirigent daemon`)";

/// The finished tasks a running daemon no longer lists (it keeps the most recent ones in full),
/// so the list does not read as the whole history.
fn archived_line(book: &TaskBook) -> Option<String> {
    let (done, failed) = (book.archived_done, book.archived_failed);
    (done + failed > 0).then(|| {
        format!(
            "… and {} older finished task(s) not listed: {done} done, {failed} failed (`dirigent status ID` shows one; `stats` counts them all)",
            done + failed
        )
    })
}

pub fn status(ws: &Workspace, id: Option<&str>, as_json: bool) -> Result<ExitCode> {
    let (book, live) = load_live_book(ws)?;
    if let Some(id) = id
        && book.get(id).is_none()
        && let Some((_, file, is_task)) = inbox_files(ws, &book).into_iter().find(|(i, ..)| i == id)
    {
        if as_json {
            let config = Config::load(&ws.config()).ok();
            let mut v = json!({"id": id, "state": "inbox", "file": ws.inbox().join(&file)});
            if let Some(why) = inbox_refusal(ws, &book, config.as_ref(), (id, &file, is_task)) {
                v["rejected_because"] = why.into();
            }
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            println!("{id} — .context/inbox/{file}");
            let config = Config::load(&ws.config()).ok();
            println!(
                "state:    inbox: {}",
                inbox_note(ws, &book, config.as_ref(), &live, (id, &file, is_task))
            );
            println!("{}", daemon_line(ws, &live));
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(id) = id
        && book.get(id).is_none()
        && let Some(outcome) = book.outcome(id)
    {
        // Finished long ago: only its outcome is kept in the book (its records stay in the
        // ledger's segments until compacted).
        let state = match outcome {
            dirigent::state::Outcome::Done => "done",
            dirigent::state::Outcome::Failed => "failed",
        };
        if as_json {
            let v = json!({"id": id, "state": state, "archived": true});
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            println!("{id} — archived");
            println!(
                "state:    {state} (only the outcome of a task this old is kept; {})",
                if state == "done" {
                    format!("`dirigent result {id}` prints its result")
                } else {
                    format!("its report is .context/escalations/{id}.md")
                }
            );
            println!("{}", daemon_line(ws, &live));
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(id) = id {
        let t = find_task(ws, &book, id)?;
        // What counts against its budget (a workflow run's covers all its tasks), and that
        // budget: the owner's own, else the config's for every task — what admission checks.
        let spending = book.spending_of(t);
        let budget = spending
            .budget_usd
            .or_else(|| Config::load(&ws.config()).ok().and_then(|c| c.budgets.task));
        if as_json {
            // The daemon's listing cuts long prompts; its record of this one task has it whole.
            let whole = live
                .answering
                .then(|| {
                    dirigent::control::request(
                        ws,
                        &dirigent::control::Request::Get {
                            id: t.id().to_string(),
                        },
                    )
                    .ok()?
                    .data
                    .filter(|d| d["id"] == t.id())
                })
                .flatten();
            let mut v = match whole {
                Some(v) => v,
                None => serde_json::to_value(t)?,
            };
            v["cost_usd"] = json!(t.cost_usd());
            v["budget_usd"] = json!(budget);
            if interrupted(t, running_daemon(ws).is_none()) {
                v["interrupted"] = true.into();
            }
            if cancelled(t) {
                v["cancelled"] = true.into();
            }
            if spending.owner != t.id() || dirigent::run_view::is_run(t) {
                v["budget_covers"] = json!(spending.owner);
                v["budget_spent_usd"] = json!(spending.spent_usd);
            }
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(ExitCode::SUCCESS);
        }
        // A title is a submitter's text: no escape sequence of it reaches the terminal.
        println!("{} — {}", t.id(), dirigent::terminal::printable(t.title()));
        let workflow = t.workflow();
        match (&workflow, run_running(&book, t)) {
            (_, Some(progress)) => println!("state:    running: {progress}"),
            _ if interrupted(t, running_daemon(ws).is_none()) => {
                println!("state:    interrupted: {INTERRUPTED_NOTE}");
            }
            _ => {
                println!("state:    {}", describe(t));
                // What only the daemon knows: which worker of the fleet holds the task, or why
                // none does yet.
                if live.answering
                    && !t.phase().is_terminal()
                    && let Ok(r) = dirigent::control::request(
                        ws,
                        &dirigent::control::Request::Get {
                            id: t.id().to_string(),
                        },
                    )
                    && let Some(d) = r.data.as_ref()
                {
                    if let Some(worker) = d["running_on"].as_str() {
                        println!(
                            "running:  on worker `{}` of the fleet (its heartbeat says so; `dirigent logs` there shows the attempt)",
                            dirigent::terminal::printable(worker)
                        );
                    }
                    if let Some(why) = d["waiting_for"].as_str() {
                        println!("waiting:  {why}");
                    }
                }
                // A reason's further lines (a conflict's regions, each proposer's failure) under
                // it, as far as a screen holds them; the report has all.
                if let Phase::Failed { reason, .. } = t.phase() {
                    for line in more_lines(reason, 40) {
                        println!("          {line}");
                    }
                    println!("report:   .context/escalations/{}.md", t.id());
                }
            }
        }
        match &workflow {
            Some(name) => println!("workflow: {name}"),
            None if !t.chain().is_empty() || t.more().phases.is_empty() => println!(
                "chain:    {}",
                if t.chain().is_empty() {
                    "(empty)".into()
                } else {
                    t.chain().join(" → ")
                }
            ),
            None => {}
        }
        println!("received: {}", duration::clock(t.received_ms));
        if !t.more().after.is_empty() {
            println!("after:    {}", t.more().after.join(", "));
        }
        if spending.spent_usd > 0.0 || budget.is_some() {
            let line = match (spending.owner == t.id(), budget) {
                (true, Some(b)) => format!(
                    "{} of its {} budget",
                    usage::dollars(spending.spent_usd),
                    usage::dollars(b)
                ),
                (true, None) => usage::dollars(spending.spent_usd),
                (false, Some(b)) => format!(
                    "{} (its run `{}` has cost {} of its {} budget)",
                    usage::dollars(t.cost_usd()),
                    spending.owner,
                    usage::dollars(spending.spent_usd),
                    usage::dollars(b)
                ),
                (false, None) => format!(
                    "{} (its run `{}` has cost {})",
                    usage::dollars(t.cost_usd()),
                    spending.owner,
                    usage::dollars(spending.spent_usd)
                ),
            };
            println!("cost:     {line}");
        }
        let cut_off = interrupted(t, running_daemon(ws).is_none());
        for a in t.attempts() {
            let status = match (a.exit_code, a.signal) {
                (_, Some(s)) => format!("signal {s} ({})", signal_name(s)),
                (Some(c), None) => format!("exit {c}"),
                _ => "-".into(),
            };
            // An open attempt of a daemon that is gone: how long it ran is not known.
            let (class, took) = match a.class {
                Some(c) => (
                    c.as_str(),
                    short(Duration::from_millis(a.elapsed_ms(ledger::now_ms()))),
                ),
                None if cut_off => ("interrupted", "-".into()),
                None => (
                    "running",
                    short(Duration::from_millis(a.elapsed_ms(ledger::now_ms()))),
                ),
            };
            // One line each: a reason's further lines (a check's output) are in the report.
            let reason = match a.reason.split_once('\n') {
                Some((first, _)) => format!("{first} …"),
                None => a.reason.clone(),
            };
            println!(
                "attempt {}: {:<10} {:<12} {:<10} {:>8}  {}",
                a.n,
                a.agent,
                class,
                status,
                took,
                dirigent::terminal::printable(&reason)
            );
        }
        print_run(ws, &book, t);
        println!("{}", daemon_line(ws, &live));
        return Ok(ExitCode::SUCCESS);
    }
    let waiting = inbox_files(ws, &book);
    let daemon_down = running_daemon(ws).is_none();
    if as_json {
        let tasks: Vec<serde_json::Value> = book
            .iter()
            .map(|t| {
                let mut v = serde_json::to_value(t).unwrap_or_default();
                if interrupted(t, daemon_down) {
                    v["interrupted"] = true.into();
                }
                if cancelled(t) {
                    v["cancelled"] = true.into();
                }
                v
            })
            .collect();
        let config = (!waiting.is_empty())
            .then(|| Config::load(&ws.config()).ok())
            .flatten();
        let inbox: Vec<serde_json::Value> = waiting
            .iter()
            .enumerate()
            .map(|(n, (id, file, is_task))| {
                let mut v = json!({"id": id, "state": "inbox", "file": file, "task_file": is_task});
                // Read to tell: the first few only (see the listing below).
                if n < INBOX_SHOWN
                    && let Some(why) =
                        inbox_refusal(ws, &book, config.as_ref(), (id, file, *is_task))
                {
                    v["rejected_because"] = why.into();
                }
                v
            })
            .collect();
        let pid = running_daemon(ws);
        let out = json!({
            // A number, or null when no daemon runs (or its pid could not be read).
            "daemon_pid": pid.as_deref().and_then(|p| p.parse::<u32>().ok()),
            "daemon_running": pid.is_some(),
            "inbox": inbox,
            "paused": live.paused,
            "intake_held": live.intake_held,
            "fleet": live.fleet,
            "tasks": tasks,
            // Older finished tasks the daemon keeps only the outcome of: not in `tasks`.
            "archived": {"done": book.archived_done, "failed": book.archived_failed},
            "rejected": book.rejected,
            "spend": spend_report(ws, &book)?,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{}", daemon_line(ws, &live));
    if let Some(fleet) = &live.fleet {
        for line in super::fleet::fleet_lines(fleet) {
            println!("{line}");
        }
    }
    let spend = spend_report(ws, &book)?;
    if let Some(line) = spend_line(&spend) {
        println!("{line}");
    }
    if book.is_empty() && book.rejected.is_empty() && waiting.is_empty() {
        println!("no tasks yet: drop a file into .context/inbox/ or run `dirigent submit \"…\"`");
        return Ok(ExitCode::SUCCESS);
    }
    // As wide as the longest id (at least 28; ids have at most 100 characters): the columns
    // stay aligned.
    let w = book
        .iter()
        .map(|t| t.id().chars().count())
        .chain(waiting.iter().map(|(id, ..)| id.chars().count()))
        .max()
        .unwrap_or(0)
        .clamp(28, 100);
    // As wide as the longest state shown (`merge_waiting` pushed the columns after it).
    let sw = book
        .iter()
        .map(|t| match interrupted(t, daemon_down) {
            true => "interrupted".len(),
            false => t.phase().shown().len(),
        })
        .max()
        .unwrap_or(0)
        .max(9);
    println!(
        "{:<w$} {:<sw$} {:<10} {:>3} {:>8}  TITLE",
        "ID", "STATE", "AGENT", "#", "TIME"
    );
    for t in book.iter() {
        let on_fleet = on_fleet(t);
        let agent = match (t.phase(), t.more().fleet.as_deref()) {
            (Phase::Done { agent, .. } | Phase::Running { agent, .. }, _) => agent.clone(),
            // On the fleet's queue: the agent it waits for.
            (_, Some(dirigent::state::FleetPart::Published { subject, .. }))
                if t.attempts().is_empty() =>
            {
                dirigent::fleet::agent_of_subject(subject)
            }
            _ => t
                .attempts()
                .last()
                .map(|a| a.agent.clone())
                .unwrap_or_else(|| "-".into()),
        };
        println!(
            "{:<w$} {:<sw$} {:<10} {:>3} {:>8}  {}",
            t.id(),
            if interrupted(t, daemon_down) {
                "interrupted"
            } else if run_running(&book, t).is_some() {
                "running"
            } else {
                t.phase().shown()
            },
            agent,
            // Run on the fleet: its attempts were made, and are counted, on the worker.
            if on_fleet {
                "-".to_string()
            } else {
                t.attempts().len().to_string()
            },
            if on_fleet || interrupted(t, daemon_down) {
                "-".to_string()
            } else {
                short(Duration::from_millis(t.busy_ms(ledger::now_ms())))
            },
            match t.branch_note() {
                Some(branch) => format!("{} [{branch}]", dirigent::terminal::printable(t.title())),
                None => dirigent::terminal::printable(t.title()),
            }
        );
        // Why it failed (or waits), and what to do about it, where the user looks first. Only
        // its first line: a conflict's hunks are in the report.
        if let Phase::Failed { reason, .. } | Phase::MergeWaiting { reason } = t.phase() {
            let first = reason.lines().next().unwrap_or("");
            let mut line: String = first.chars().take(300).collect();
            if first.chars().count() > 300 || reason.lines().nth(1).is_some() {
                line.push('…');
            }
            println!("{:<w$} ↳ {}", "", dirigent::terminal::printable(&line));
        }
        if interrupted(t, daemon_down) {
            println!("{:<w$} ↳ {INTERRUPTED_NOTE}", "");
        }
        // Waiting for tasks it runs after: which, so a pending task does not look stuck.
        if matches!(t.phase(), Phase::Pending) {
            let waits: Vec<String> = t
                .more()
                .after
                .iter()
                .filter(|d| book.outcome(d) != Some(dirigent::state::Outcome::Done))
                .map(|d| match book.get(d).map(|t| t.phase()) {
                    // Nothing moves it but a person: said, or the wait looks like a hang.
                    Some(Phase::MergeWaiting { .. }) => {
                        format!("`{d}` (verified, waiting to be merged: `dirigent merge {d}`)")
                    }
                    _ => format!("`{d}`"),
                })
                .collect();
            if !waits.is_empty() {
                println!(
                    "{:<w$} ↳ starts once {} {} done",
                    "",
                    waits.join(" and "),
                    if waits.len() == 1 { "is" } else { "are" }
                );
            }
        }
    }
    if let Some(line) = archived_line(&book) {
        println!("{line}");
    }
    let inbox_config = (!waiting.is_empty())
        .then(|| Config::load(&ws.config()).ok())
        .flatten();
    // Each is read to say whether it will be refused: the first few (oldest first, the next
    // taken in), then a count — a big drop must not make `status` read every file.
    for (id, file, is_task) in waiting.iter().take(INBOX_SHOWN) {
        println!(
            "{id:<w$} {:<sw$} {:<10} {:>3} {:>8}  .context/inbox/{file}",
            "inbox", "-", 0, "-"
        );
        println!(
            "{:<w$} ↳ {}",
            "",
            inbox_note(
                ws,
                &book,
                inbox_config.as_ref(),
                &live,
                (id, file, *is_task)
            )
        );
    }
    if waiting.len() > INBOX_SHOWN {
        println!(
            "… and {} more file(s) waiting in the inbox (`dirigent status --json` lists them all)",
            waiting.len() - INBOX_SHOWN
        );
    }
    // The latest few: they stay in `rejected/` until someone deletes them, and the list must
    // not bury the tasks.
    let shown = book.rejected.len().saturating_sub(REJECTED_SHOWN);
    for r in book.rejected.iter().skip(shown) {
        println!(
            "rejected: {} — {}",
            dirigent::terminal::printable(&r.file),
            dirigent::progress::one_line(
                &dirigent::terminal::printable(r.reason.lines().next().unwrap_or("")),
                200
            )
        );
    }
    if shown > 0 {
        println!(
            "rejected: {shown} more in .context/rejected/ (`status --json` lists all; delete them there to clear this list)"
        );
    } else if !book.rejected.is_empty() {
        println!("          (they stay in .context/rejected/ until you delete them there)");
    }
    Ok(ExitCode::SUCCESS)
}

/// How many rejected files the task list ends with (the latest).
const REJECTED_SHOWN: usize = 5;

/// How many inbox files `status` lists (and reads, to say whether each will be refused).
const INBOX_SHOWN: usize = 20;

/// A task that went to the fleet from here (and had no attempt here).
fn on_fleet(t: &TaskRecord) -> bool {
    t.attempts().is_empty()
        && matches!(
            t.more().fleet.as_deref(),
            Some(dirigent::state::FleetPart::Published { .. })
        )
}

/// For a workflow run that is under way (its tasks are queued or running): how far it is. A
/// run has no attempts of its own, so its record says `pending` all along.
fn run_running(book: &TaskBook, run: &TaskRecord) -> Option<String> {
    if run.phase().is_terminal() || !run.chain().is_empty() {
        return None;
    }
    let prefix = format!("{}.", run.id());
    let started = run.more().phases.len()
        + usize::from(
            book.iter()
                .any(|c| c.id().starts_with(&prefix) && !c.phase().is_terminal()),
        );
    (started > 0 || !run.more().phases.is_empty()).then(|| {
        format!(
            "{} phase(s) completed{}",
            run.more().phases.len(),
            run.more()
                .phases
                .last()
                .map(|(p, _)| format!(", the last `{p}`"))
                .unwrap_or_default()
        )
    })
}

/// For a workflow run: each phase of its workflow with its state, its loop rounds, and its
/// tasks with theirs (failed ones with their reason and report).
fn print_run(ws: &Workspace, book: &TaskBook, run: &TaskRecord) {
    let prefix = format!("{}.", run.id());
    let children: Vec<&TaskRecord> = book
        .iter()
        .filter(|c| c.id().starts_with(&prefix))
        .collect();
    let workflow = dirigent::run_view::workflow_of(run);
    if run.workflow().is_none() && children.is_empty() && run.more().phases.is_empty() {
        return;
    }
    // The phases in order: from the definition when it can be read, else those recorded.
    let defined = workflow
        .as_deref()
        .and_then(|name| dirigent::run_view::defined_phases(&ws.workflows(), name))
        .unwrap_or_default();
    let view = dirigent::run_view::view(run, &children, defined);
    println!("phases:");
    for p in &view.phases {
        let state = match &p.output {
            Some(out) => format!("completed → {out}"),
            None => p.state.replace('_', " "),
        };
        println!("  {:<20} {state}", p.name);
        for r in &p.rounds {
            println!(
                "  {:<20}   round {}: {}{}",
                "",
                r.round,
                if r.passed { "PASS" } else { "FAIL" },
                if r.feedback.is_empty() {
                    String::new()
                } else {
                    format!(" — {}", r.feedback)
                }
            );
        }
    }
    if children.is_empty() {
        return;
    }
    println!("tasks:");
    for c in &children {
        let agent = match c.phase() {
            Phase::Done { agent, .. } | Phase::Running { agent, .. } => agent.clone(),
            _ => c
                .attempts()
                .last()
                .map(|a| a.agent.clone())
                .unwrap_or_else(|| "-".into()),
        };
        println!("  {:<32} {:<9} {agent}", c.id(), c.phase().label());
        if let Phase::Failed { reason, .. } = c.phase() {
            println!(
                "  {:<32} ↳ {}",
                "",
                dirigent::terminal::printable(first_line(reason))
            );
            let report = ws.escalations().join(format!("{}.md", c.id()));
            if report.exists() {
                println!("  {:<32}   report: {}", "", report.display());
            }
        }
    }
}

/// `dirigent diff ID`: what an editing task changed against its base.
pub fn diff(ws: &Workspace, id: &str, json: bool) -> Result<ExitCode> {
    let (book, _) = load_live_book(ws)?;
    let t = find_task(ws, &book, id)?;
    let Some(w) = &t.more().worktree else {
        anyhow::bail!(
            "task `{id}` has no branch: it did not work in a worktree (`workdir: shared`, or not started yet)"
        );
    };
    let repo = dirigent::git::Repo::discover(ws.root())?;
    let text = w.diff_text(&repo)?;
    if json {
        println!(
            "{}",
            json!({"id": id, "branch": w.branch, "base": w.base, "diff": text})
        );
        return Ok(ExitCode::SUCCESS);
    }
    if text.is_empty() {
        eprintln!(
            "dirigent: `{id}` changed nothing against its base {}",
            &w.base[..w.base.len().min(12)]
        );
    }
    // The agent wrote every line of it: on a terminal its escape sequences (a window title, a
    // clipboard write, a cleared screen) are removed, as `logs` removes them; a pipe gets the
    // patch as it is, for `git apply`.
    if std::io::stdout().is_terminal() {
        print!("{}", dirigent::terminal::log_safe(&text, false));
    } else {
        print!("{text}");
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn describe(t: &TaskRecord) -> String {
    let line = describe_phase(t);
    match t.branch_note() {
        Some(branch) => format!("{line} [{branch}{}]", merge_note(t)),
        None => line,
    }
}

/// Where a task's branch stands with its target, after its diff stat.
fn merge_note(t: &TaskRecord) -> String {
    use dirigent::state::MergeState;
    let Some(w) = &t.more().worktree else {
        return String::new();
    };
    match &w.merge {
        MergeState::Merged { target, commit } => {
            format!(
                "; merged into {target} at {}",
                &commit[..commit.len().min(12)]
            )
        }
        MergeState::Failed { class, .. } => format!("; merge failed: {class}"),
        MergeState::Discarded => "; discarded".into(),
        _ => String::new(),
    }
}

fn describe_phase(t: &TaskRecord) -> String {
    match t.phase() {
        Phase::Merging => "merging".into(),
        Phase::MergeWaiting { reason } => format!(
            "merge_waiting: {}",
            dirigent::progress::one_line(reason, 300)
        ),
        Phase::Pending => match t.more().fleet.as_deref() {
            Some(dirigent::state::FleetPart::Published { subject, .. }) => {
                format!("pending: on the fleet's queue ({subject}), waiting for a worker's outcome")
            }
            _ => "pending".into(),
        },
        Phase::Requeued => "requeued (back in the inbox until the daemon starts)".into(),
        Phase::Running {
            attempt,
            agent,
            since_ms,
        } => {
            format!(
                "running: attempt {attempt} with {agent} since {}",
                duration::clock(*since_ms)
            )
        }
        Phase::Done {
            agent,
            output,
            finished_ms,
        } => {
            let on = match t.more().fleet.as_deref() {
                Some(dirigent::state::FleetPart::Published {
                    worker: Some(w), ..
                }) => format!(" on worker `{w}`"),
                _ => String::new(),
            };
            format!(
                "done by {agent}{on} at {}; result in {output}",
                duration::clock(*finished_ms)
            )
        }
        Phase::Failed {
            reason,
            finished_ms,
        } if reason == dirigent::state::CANCELLED_REASON => format!(
            "cancelled at {} (by the user; `dirigent retry {}` runs it again)",
            duration::clock(*finished_ms),
            t.id()
        ),
        Phase::Failed {
            reason,
            finished_ms,
        } => format!(
            "failed (escalated at {}): {}",
            duration::clock(*finished_ms),
            dirigent::progress::one_line(first_line(reason), 300),
        ),
    }
}

/// A reason's first line with text (the whole reason's gist).
fn first_line(reason: &str) -> &str {
    reason
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(reason)
}

/// A reason's lines after its [`first_line`], made printable, at most `max` of them (then how
/// many more there are).
fn more_lines(reason: &str, max: usize) -> Vec<String> {
    let rest: Vec<&str> = reason
        .lines()
        .skip_while(|l| l.trim().is_empty())
        .skip(1)
        .skip_while(|l| l.trim().is_empty())
        .collect();
    let mut out: Vec<String> = rest
        .iter()
        .take(max)
        .map(|l| dirigent::terminal::printable(l))
        .collect();
    if rest.len() > max {
        out.push(format!("… {} more line(s) in the report", rest.len() - max));
    }
    out
}
