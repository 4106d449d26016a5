//! `dirigent logs`: an attempt's captured output, followed as it grows with `-f` (waiting for a
//! task that has not started yet).

use super::inbox_view::inbox_files;
use super::status::describe;
use super::*;

pub fn logs(
    ws: &Workspace,
    id: &str,
    follow: bool,
    attempt: Option<u32>,
    stderr: bool,
) -> Result<ExitCode> {
    let mut book = load_book(ws)?;
    if follow && attempt.is_none() {
        // Following a task that has not started yet (queued, or still in the inbox): wait for
        // its first attempt instead of failing.
        let mut told = false;
        // Seen waiting in the inbox: once the file is gone the daemon is taking it in, and the
        // task shows up in the ledger (or as rejected) a moment later.
        let mut seen_waiting = false;
        // Since when a file seen waiting is neither there nor taken in: removed (the way to
        // cancel a task without a daemon) once that lasts.
        let mut missing_since: Option<Instant> = None;
        let waker = ChangeWaker::new(&[ws.context()]);
        let key = ledger_key(ws);
        loop {
            match book.get(id) {
                Some(t) if !t.attempts().is_empty() => break,
                Some(t) if is_run(&book, t) => break, // said below
                Some(t) if t.phase().is_terminal() => {
                    eprintln!(
                        "error: task `{id}` ended without an attempt: {}",
                        describe(t)
                    );
                    return Ok(ExitCode::from(1));
                }
                Some(_) => {}
                None => {
                    let in_inbox = inbox_files(ws, &book)
                        .iter()
                        .any(|(i, _, is_task)| i == id && *is_task);
                    if in_inbox || claimed(ws, id) {
                        seen_waiting = true;
                        missing_since = None;
                    } else if !seen_waiting {
                        // It may have moved from the inbox into the ledger since the book was
                        // read: read it again before calling the task unknown.
                        book = load_book(ws)?;
                        if book.get(id).is_some() {
                            continue;
                        }
                        break; // unknown: `find_task` below says so
                    } else if let Some(r) = book.rejected.iter().rev().find(|r| {
                        dirigent::task::id_from_stem(dirigent::fsutil::split_name(&r.file).0) == id
                    }) {
                        eprintln!(
                            "error: the task was rejected: {}",
                            r.reason.lines().next().unwrap_or("")
                        );
                        return Ok(ExitCode::from(1));
                    } else if missing_since.is_some_and(|t| t.elapsed() >= Duration::from_secs(2)) {
                        eprintln!(
                            "error: `{id}` will not run: its file was removed from .context/inbox/ before the daemon took it in"
                        );
                        return Ok(ExitCode::from(1));
                    } else if missing_since.is_none() {
                        missing_since = Some(Instant::now());
                    }
                }
            }
            if !told {
                eprintln!(
                    "dirigent: `{id}` has not started yet; waiting for its first attempt{}",
                    if running_daemon(ws).is_none() {
                        " (no daemon is running: start one with `dirigent daemon`)"
                    } else {
                        ""
                    }
                );
                told = true;
            }
            waker.wait(Duration::from_secs(1));
            // Only what was written since: a waiting client does not replay the whole ledger
            // on every change.
            for r in ledger::read_after(&ws.ledger(), book.last_seq, usize::MAX, key.as_ref())? {
                book.apply(&r);
            }
        }
    }
    let t = find_task(ws, &book, id)?;
    if is_run(&book, t) {
        anyhow::bail!("{}", run_note(&book, t));
    }
    let a = match attempt {
        Some(n) => t.attempts().iter().find(|a| a.n == n).ok_or_else(|| {
            anyhow::anyhow!(
                "task `{id}` has no attempt {n} (it has {})",
                t.attempts().len()
            )
        })?,
        None => t
            .attempts()
            .last()
            .ok_or_else(|| anyhow::anyhow!("task `{id}` has not started an attempt yet"))?,
    };
    let path = dirigent::task_log::CaptureFile::of(
        ws,
        id,
        a.n,
        &a.agent,
        if stderr { "stderr" } else { "stdout" },
    );
    // On a terminal, the agent's escape sequences are not passed on (they could retitle the
    // window or write to the clipboard); in a pipe, its bytes are.
    let stdout = std::io::stdout().lock();
    let mut out: Box<dyn Write> = if stdout.is_terminal() {
        Box::new(dirigent::terminal::PrintableWriter::new(stdout))
    } else {
        Box::new(stdout)
    };
    let mut pos = copy_from(&path, 0, &mut out)?;
    // Gone with its run directory (`keep_runs`): said, not shown as an attempt that printed
    // nothing. (An attempt that never made its files leaves the others' in place.)
    let no_captures = || {
        std::fs::read_dir(ws.run_dir(id)).map_or(true, |d| {
            !d.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".stdout"))
        })
    };
    // (It printed something, so there was a capture: not an attempt that never ran.)
    let printed = a.stdout_bytes + a.stderr_bytes > 0;
    if a.class.is_some() && printed && pos == 0 && path.open().is_err() && no_captures() {
        eprintln!(
            "dirigent: the output of attempt {} of `{id}` ({}) is no longer kept: the run directories of tasks finished longer ago than `keep_runs` are removed",
            a.n, a.agent
        );
        return Ok(ExitCode::from(1));
    }
    // Followed after it was cut off: said as when it is cut off while followed.
    if follow && let Some(note) = cut_off(id, a.n, &a.agent, a.class) {
        eprintln!("{note}");
        return Ok(ExitCode::from(1));
    }
    if !follow || a.class.is_some() {
        // Nothing shown while the other stream holds something: said, not left blank.
        if pos == 0 && !stderr && a.stderr_bytes > 0 {
            eprintln!(
                "dirigent: attempt {} of `{id}` ({}) wrote nothing to stdout; `dirigent logs {id} --stderr` shows the {} byte(s) it wrote to stderr",
                a.n, a.agent, a.stderr_bytes
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (n, agent) = (a.n, a.agent.clone());
    let waker = ChangeWaker::new(&[&ws.run_dir(id), ws.context()]);
    let mut follower = dirigent::follow::Follower::from_start(ws);
    // Set once no daemon runs: the records are read once more (it may have written the end
    // just before it stopped) before saying the attempt was cut off.
    let mut last_look = false;
    loop {
        let records = follower.next_records()?;
        let finished = records.iter().find_map(|r| match &r.event {
            Event::AttemptFinished {
                task,
                attempt,
                class,
                ..
            } if task == id && *attempt == n => Some(*class),
            _ => None,
        });
        pos = copy_from(&path, pos, &mut out)?;
        // Ended by itself: its output is whole. Cut off (a cancel, a stop of the daemon): said,
        // and exit 1, so a script does not take the output for all there was.
        if let Some(note) = cut_off(id, n, &agent, finished) {
            eprintln!("{note}");
            return Ok(ExitCode::from(1));
        }
        if finished.is_some() {
            return Ok(ExitCode::SUCCESS);
        }
        if last_look {
            // Nothing ends this attempt until a daemon starts again: waiting would be silent
            // and endless.
            eprintln!(
                "dirigent: no daemon is running: attempt {n} of `{id}` ({agent}) was cut off when it stopped (its agent was stopped with it); the task runs again when the daemon starts (`dirigent daemon`)"
            );
            return Ok(ExitCode::from(1));
        }
        if running_daemon(ws).is_none() {
            last_look = true;
            continue;
        }
        waker.wait(Duration::from_secs(1));
    }
}

/// What `logs -f` says of an attempt that ended cut off (a cancel, a stop of the daemon), not
/// by itself.
fn cut_off(id: &str, n: u32, agent: &str, class: Option<dirigent::class::Class>) -> Option<String> {
    use dirigent::class::Class;
    match class? {
        Class::Cancelled => Some(format!(
            "dirigent: attempt {n} of `{id}` ({agent}) was cancelled"
        )),
        Class::Interrupted => Some(format!(
            "dirigent: attempt {n} of `{id}` ({agent}) was cut off: the daemon stopped while it ran; the task runs again when the daemon starts"
        )),
        _ => None,
    }
}

/// Copies what `file` holds from `pos` on; opened through no link an agent planted, and only if
/// it is a regular file (a FIFO would block).
fn copy_from(
    file: &dirigent::task_log::CaptureFile,
    pos: u64,
    out: &mut impl Write,
) -> Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = match file.open() {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(pos),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot open `runs/{}/{}`", file.task, file.name));
        }
    };
    f.seek(SeekFrom::Start(pos))?;
    let n = std::io::copy(&mut f, out)?;
    out.flush()?;
    Ok(pos + n)
}

/// Whether `t` is a workflow run: a task with no chain of its own whose phases are tasks.
fn is_run(book: &dirigent::state::TaskBook, t: &TaskRecord) -> bool {
    t.chain().is_empty()
        && (t.workflow().is_some()
            || !t.more().phases.is_empty()
            || !run_tasks(book, t.id()).is_empty())
}

/// The tasks of run `run`: those recorded as its own (older ledgers: those under its id).
fn run_tasks<'a>(book: &'a dirigent::state::TaskBook, run: &str) -> Vec<&'a TaskRecord> {
    let under = format!("{run}.");
    book.iter()
        .filter(|c| match c.more().workflow_run.as_deref() {
            Some(r) => r == run,
            None => c.id().starts_with(&under),
        })
        .collect()
}

/// What `logs` says of a workflow run, which has no output of its own: its tasks, and how to
/// see theirs.
fn run_note(book: &dirigent::state::TaskBook, t: &TaskRecord) -> String {
    let tasks = run_tasks(book, t.id());
    let listed = if tasks.is_empty() {
        "it has not submitted a task yet".to_string()
    } else {
        format!(
            "its tasks: {}",
            tasks
                .iter()
                .map(|c| format!("`{}` ({})", c.id(), c.phase().shown()))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    format!(
        "`{}` is a workflow run ({}): it has no output of its own; {listed}. `dirigent logs TASK` shows one task's, `dirigent logs -f --all` follows them all, `dirigent status {}` shows the run",
        t.id(),
        t.phase().shown(),
        t.id()
    )
}
