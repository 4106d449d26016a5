//! `dirigent logs -f --all` (or several task ids): the output of every running attempt (or of
//! the named tasks' attempts), interleaved line by line with a coloured `id/agent |` prefix —
//! like `docker compose logs -f`. Attempts that start later join in. Whole lines only, with
//! escape sequences removed (an agent's output must not drive the terminal). Sleeps until the
//! ledger or a capture file changes.

use std::collections::BTreeMap;

use super::*;
use dirigent::terminal::printable;

/// Prefix colours (ANSI foreground), taken in turn by each new attempt.
const COLOURS: [u8; 6] = [36, 33, 35, 32, 34, 31];

/// One attempt being followed.
struct Tail {
    agent: String,
    stdout: u64,
    stderr: u64,
    colour: u8,
    /// Its `attempt_finished` was seen: what is left is printed, then it is dropped.
    finished: bool,
    /// A capture file could not be read (said once).
    unreadable: bool,
}

pub fn logs_many(ws: &Workspace, ids: &[String], follow: bool) -> Result<ExitCode> {
    // Named tasks must exist: waiting in the inbox, claimed (in `running/`, its record not
    // written yet), or in the book. Looked for in the order a task moves through them, the book
    // last, so one that moves on meanwhile is still found somewhere.
    let waiting = super::inbox_view::inbox_files(ws, &TaskBook::default());
    let claimed: Vec<bool> = ids.iter().map(|id| super::claimed(ws, id)).collect();
    let mut book = load_book(ws)?;
    for (id, claimed) in ids.iter().zip(claimed) {
        if book.get(id).is_none()
            && book.outcome(id).is_none()
            && !claimed
            && !waiting.iter().any(|(i, _, is_task)| i == id && *is_task)
        {
            find_task(ws, &book, id)?;
        }
    }
    let wanted = |task: &str| ids.is_empty() || ids.iter().any(|i| i == task);
    let mut follower = dirigent::follow::Follower::from_start(ws);
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let mut tails: BTreeMap<(String, u32), Tail> = BTreeMap::new();
    let mut next_colour = 0usize;
    let mut add = |tails: &mut BTreeMap<(String, u32), Tail>, task: &str, n: u32, agent: &str| {
        tails.entry((task.to_string(), n)).or_insert_with(|| {
            next_colour += 1;
            Tail {
                agent: agent.to_string(),
                stdout: 0,
                stderr: 0,
                colour: COLOURS[(next_colour - 1) % COLOURS.len()],
                finished: false,
                unreadable: false,
            }
        });
    };
    // What runs now (for named tasks: their latest attempt, even if it has ended).
    for t in book.iter().filter(|t| wanted(t.id())) {
        if let Some(a) = t.attempts().last()
            && (a.class.is_none() || !ids.is_empty())
        {
            add(&mut tails, t.id(), a.n, &a.agent);
            if a.class.is_some()
                && let Some(tail) = tails.get_mut(&(t.id().to_string(), a.n))
            {
                tail.finished = true;
            }
        }
    }
    if tails.is_empty() && !follow {
        eprintln!("dirigent: nothing is running");
        return Ok(ExitCode::SUCCESS);
    }
    let mut watched: Vec<String> = Vec::new();
    let mut waker = ChangeWaker::new(&[ws.context()]);
    let mut told_waiting = false;
    // Said once each time the daemon is found gone while attempts are shown open.
    let mut told_cut = false;
    // Whether a daemon ran when last looked.
    let mut daemon_up = running_daemon(ws).is_some();
    let mut width = 0usize;
    let mut out = std::io::stdout().lock();
    loop {
        for r in follower.next_records()? {
            if r.seq <= book.last_seq {
                continue;
            }
            book.apply(&r);
            match &r.event {
                Event::AttemptStarted {
                    task,
                    attempt,
                    agent,
                    ..
                } if wanted(task) => add(&mut tails, task, *attempt, agent),
                Event::AttemptFinished { task, attempt, .. } => {
                    if let Some(t) = tails.get_mut(&(task.clone(), *attempt)) {
                        t.finished = true;
                    }
                }
                _ => {}
            }
        }
        // The widest prefix seen so far: the columns only ever move right, once.
        width = tails
            .iter()
            .map(|((id, _), t)| id.chars().count() + t.agent.chars().count() + 1)
            .fold(width, usize::max);
        for ((id, n), t) in tails.iter_mut() {
            let label = format!("{id}/{}", t.agent);
            for (stream, offset) in [("stdout", &mut t.stdout), ("stderr", &mut t.stderr)] {
                let file = dirigent::task_log::CaptureFile::of(ws, id, *n, &t.agent, stream);
                loop {
                    // A file that cannot be read (an agent replaced it with a link) ends only
                    // that stream, never the view.
                    let text = match dirigent::task_log::read_new(&file, offset, t.finished) {
                        Ok(Some(text)) => text,
                        Ok(None) => break,
                        Err(e) => {
                            if !t.unreadable {
                                eprintln!("dirigent: cannot read {label}'s {stream}: {e}");
                                t.unreadable = true;
                            }
                            break;
                        }
                    };
                    for line in text.lines() {
                        let line = printable(line);
                        if colour {
                            writeln!(out, "\u{1b}[{}m{label:<width$} |\u{1b}[0m {line}", t.colour)?;
                        } else {
                            writeln!(out, "{label:<width$} | {line}")?;
                        }
                    }
                }
            }
        }
        out.flush()?;
        tails.retain(|_, t| !t.finished);
        if !follow {
            return Ok(ExitCode::SUCCESS);
        }
        // The daemon going away (or coming back) while this follows: said, so the quiet that
        // follows is not taken for agents thinking.
        let up = running_daemon(ws).is_some();
        if daemon_up && !up && tails.is_empty() {
            eprintln!(
                "dirigent: the daemon stopped; nothing starts until it runs again (`dirigent daemon`)"
            );
        } else if !daemon_up && up {
            eprintln!("dirigent: a daemon is running again");
        }
        daemon_up = up;
        // Open attempts of a daemon that is gone end only when one starts again (it records
        // them interrupted): said, so the quiet is not taken for an agent thinking.
        let cut_off = !tails.is_empty() && !up;
        if cut_off && !told_cut {
            eprintln!(
                "dirigent: no daemon is running: the attempts shown were cut off when it stopped (their agents were stopped with it); they are closed, and their tasks run again, when the daemon starts (`dirigent daemon`)"
            );
        }
        told_cut = cut_off;
        // Named tasks: done when each has ended and its output is printed.
        if !ids.is_empty()
            && tails.is_empty()
            && ids.iter().all(|id| {
                book.get(id)
                    .map_or(book.outcome(id).is_some(), |t| t.phase().is_terminal())
            })
        {
            return Ok(ExitCode::SUCCESS);
        }
        // Said once, and only while none of the named tasks has started (one that ran has its
        // end coming).
        let none_started = ids
            .iter()
            .all(|id| book.get(id).is_none_or(|t| t.attempts().is_empty()));
        if tails.is_empty() && !told_waiting && none_started {
            eprintln!(
                "dirigent: nothing is running; waiting for attempts to start{}",
                if running_daemon(ws).is_none() {
                    " (no daemon is running: start one with `dirigent daemon`)"
                } else {
                    ""
                }
            );
            told_waiting = true;
        }
        let now: Vec<String> = tails.keys().map(|(id, _)| id.clone()).collect();
        if now != watched {
            let dirs: Vec<std::path::PathBuf> = now.iter().map(|id| ws.run_dir(id)).collect();
            let mut paths: Vec<&Path> = dirs.iter().map(|p| p.as_path()).collect();
            paths.push(ws.context());
            waker = ChangeWaker::new(&paths);
            watched = now;
            // Read once more before sleeping: what changed before the new watches were set
            // raised no event.
            continue;
        }
        // A daemon's end raises no file event of its own (its lock is let go as it exits):
        // while one runs, looked at each second, so its going is said when it goes.
        waker.wait(Duration::from_secs(if daemon_up { 1 } else { 60 }));
    }
}
