//! `dirigent top` (and `status --watch`): the running agents as a table redrawn in place — each
//! with its attempt, elapsed time and the last line it printed — then what waits and what
//! finished last. It reads the ledger and the capture files like `status` (so it works while
//! the daemon is down) and sleeps until one of them changes; while something runs it redraws
//! once a second for the elapsed times. Piped, it prints a frame only when something other
//! than the elapsed times changed.

use std::collections::HashMap;

use super::*;
use dirigent::terminal::{fit, pad, printable};

/// The last bytes of a capture file read for its last line.
const TAIL: u64 = 8 * 1024;

/// Finished tasks listed under the table.
const RECENT: usize = 5;

pub fn top(ws: &Workspace) -> Result<ExitCode> {
    let mut book = load_book(ws)?;
    let mut follower = dirigent::follow::Follower::from_start(ws);
    let tty = std::io::stdout().is_terminal();
    let mut last_shown = String::new();
    let mut watched: Vec<String> = Vec::new();
    let mut waker = ChangeWaker::new(&[ws.context()]);
    loop {
        for r in follower.next_records()? {
            if r.seq > book.last_seq {
                book.apply(&r);
            }
        }
        let running: Vec<&TaskRecord> = book
            .iter()
            .filter(|t| matches!(t.phase(), Phase::Running { .. }))
            .collect();
        let outputs: HashMap<String, String> = running
            .iter()
            .filter_map(|t| {
                let a = t.attempts().last()?;
                Some((t.id().to_string(), last_line(ws, t.id(), a.n, &a.agent)))
            })
            .collect();
        let now = ledger::now_ms();
        let width = if tty {
            dirigent::terminal::width()
        } else {
            120
        };
        let daemon = running_daemon(ws);
        let inbox = inbox_count(ws);
        let shown = frame(&book, &outputs, now, width, !tty, daemon.as_deref(), inbox);
        if tty {
            // Home, each line cleared to its end, then everything below: no scrolling.
            let mut out = String::from("\u{1b}[H");
            for line in shown.lines() {
                out.push_str(line);
                out.push_str("\u{1b}[K\n");
            }
            out.push_str("\u{1b}[J");
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(out.as_bytes())?;
            stdout.flush()?;
        } else if shown != last_shown {
            println!("{shown}");
            std::io::stdout().flush()?;
            last_shown = shown;
        }
        // Watch the run directories of what runs (their capture files grow), and the ledger.
        let now_running: Vec<String> = running.iter().map(|t| t.id().to_string()).collect();
        if now_running != watched {
            let dirs: Vec<std::path::PathBuf> =
                now_running.iter().map(|id| ws.run_dir(id)).collect();
            let mut paths: Vec<&Path> = dirs.iter().map(|p| p.as_path()).collect();
            paths.push(ws.context());
            waker = ChangeWaker::new(&paths);
            watched = now_running;
            // Draw once more before sleeping: what changed before the new watches were set
            // raised no event.
            continue;
        }
        // Elapsed times tick while something runs (on a terminal); otherwise only a change
        // wakes this (and a minute's safety net).
        waker.wait(if tty && !watched.is_empty() {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(60)
        });
    }
}

/// Task files waiting in the inbox (not taken in yet): counted, not read — a big drop must not
/// cost the view a parse of every file each second.
fn inbox_count(ws: &Workspace) -> usize {
    std::fs::read_dir(ws.inbox()).map_or(0, |dir| {
        dir.flatten()
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                !name.starts_with('.') && (name.ends_with(".json") || name.ends_with(".md"))
            })
            .count()
    })
}

/// The last non-empty line of an attempt's output (stdout, else stderr), made printable.
fn last_line(ws: &Workspace, id: &str, n: u32, agent: &str) -> String {
    use std::io::{Seek, SeekFrom};
    for stream in ["stdout", "stderr"] {
        let Ok(mut f) = dirigent::task_log::CaptureFile::of(ws, id, n, agent, stream).open() else {
            continue;
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if f.seek(SeekFrom::Start(len.saturating_sub(TAIL))).is_err() {
            continue;
        }
        let mut buf = Vec::new();
        if f.take(TAIL).read_to_end(&mut buf).is_err() {
            continue;
        }
        let text = String::from_utf8_lossy(&buf);
        if let Some(line) = text
            .lines()
            .rev()
            .map(printable)
            .find(|l| !l.trim().is_empty())
        {
            return line.trim().to_string();
        }
    }
    String::new()
}

/// One frame. `stable` leaves out what changes by itself (the elapsed times and the clock), for
/// output that is printed only on change.
fn frame(
    book: &TaskBook,
    outputs: &HashMap<String, String>,
    now_ms: u64,
    width: usize,
    stable: bool,
    daemon: Option<&str>,
    inbox: usize,
) -> String {
    let (mut running, mut waiting, mut merging, mut to_merge, mut done, mut failed) = (
        Vec::new(),
        Vec::new(),
        0usize,
        0usize,
        book.archived_done,
        book.archived_failed,
    );
    for t in book.iter() {
        match t.phase() {
            Phase::Running { .. } => running.push(t),
            Phase::Pending | Phase::Requeued => waiting.push(t),
            Phase::Merging => merging += 1,
            // Verified work that waits for someone (`dirigent merge`) or a clean checkout.
            Phase::MergeWaiting { .. } => to_merge += 1,
            Phase::Done { .. } => done += 1,
            Phase::Failed { .. } => failed += 1,
        }
    }
    // No daemon: what the ledger has as running was cut off when it stopped.
    let cut_off = daemon.is_none() && !running.is_empty();
    let mut header = format!(
        "dirigent — {} {}, {} waiting{}, {merging} merging, {to_merge} to merge, {done} done, {failed} failed · {}",
        running.len(),
        if cut_off { "interrupted" } else { "running" },
        waiting.len() + inbox,
        if inbox > 0 {
            format!(" ({inbox} in the inbox)")
        } else {
            String::new()
        },
        match daemon {
            Some(pid) => format!("daemon running (pid {pid})"),
            None => "no daemon running".to_string(),
        }
    );
    if !stable {
        header.push_str(&format!(" · {}", &duration::clock(now_ms)[11..19]));
    }
    // Every line fits the terminal: one that wrapped would scroll the frame.
    let mut out = fit(&header, width);
    out.push('\n');
    out.push('\n');
    let id_w = running
        .iter()
        .map(|t| t.id().chars().count())
        .max()
        .unwrap_or(4)
        .clamp(4, 32);
    let agent_w = running
        .iter()
        .filter_map(|t| t.attempts().last().map(|a| a.agent.chars().count()))
        .max()
        .unwrap_or(5)
        .clamp(5, 24);
    // Piped, frames are printed only on change: the start time, which stays, not the elapsed.
    let head = format!(
        "{:<id_w$}  {:<agent_w$}  {:>3}  {:>8}  LAST OUTPUT",
        "TASK",
        "AGENT",
        "TRY",
        if stable || cut_off {
            "STARTED"
        } else {
            "ELAPSED"
        }
    );
    out.push_str(&fit(&head, width));
    out.push('\n');
    if running.is_empty() {
        out.push_str("(nothing running)\n");
    }
    for t in &running {
        let Phase::Running {
            attempt,
            agent,
            since_ms,
        } = t.phase()
        else {
            continue;
        };
        let elapsed = if stable || cut_off {
            duration::clock(*since_ms)[11..19].to_string()
        } else {
            short(Duration::from_millis(now_ms.saturating_sub(*since_ms)))
        };
        let used = id_w + agent_w + 3 + 8 + 8;
        let last = outputs.get(t.id()).map(String::as_str).unwrap_or("");
        let row = format!(
            "{}  {}  {attempt:>3}  {elapsed:>8}  {}",
            pad(t.id(), id_w),
            pad(agent, agent_w),
            fit(last, width.saturating_sub(used).max(10))
        );
        out.push_str(&fit(&row, width));
        out.push('\n');
    }
    if cut_off && !running.is_empty() {
        let note = "(no daemon is running: these were cut off when it stopped, their agents with it; they run again when the daemon starts)";
        out.push_str(&fit(note, width));
        out.push('\n');
    }
    if !waiting.is_empty() {
        let names: Vec<&str> = waiting.iter().take(8).map(|t| t.id()).collect();
        let more = waiting.len().saturating_sub(names.len());
        let line = format!(
            "waiting: {}{}",
            names.join(", "),
            if more > 0 {
                format!(" (+{more} more)")
            } else {
                String::new()
            }
        );
        out.push('\n');
        out.push_str(&fit(&line, width));
        out.push('\n');
    }
    let mut finished: Vec<(&TaskRecord, u64)> = book
        .iter()
        .filter_map(|t| match t.phase() {
            Phase::Done { finished_ms, .. } | Phase::Failed { finished_ms, .. } => {
                Some((t, *finished_ms))
            }
            _ => None,
        })
        .collect();
    finished.sort_by_key(|(_, at)| std::cmp::Reverse(*at));
    if !finished.is_empty() {
        out.push_str("\nrecent:\n");
    }
    finished.truncate(RECENT);
    let recent_w = finished
        .iter()
        .map(|(t, _)| t.id().chars().count())
        .max()
        .unwrap_or(0)
        .min(32);
    for (t, _) in finished {
        let what = match t.phase() {
            Phase::Done { agent, .. } => format!("done by {agent}"),
            Phase::Failed { reason, .. } => {
                format!("failed: {}", printable(reason.lines().next().unwrap_or("")))
            }
            _ => String::new(),
        };
        out.push_str(&fit(&format!("  {}  {what}", pad(t.id(), recent_w)), width));
        out.push('\n');
    }
    out
}
