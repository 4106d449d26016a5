//! The CLI commands other than `daemon`: the binary's edge, where typed errors become
//! `error: …` lines and exit codes. Everything here reads the same files the daemon writes
//! (the ledger, runs/, outbox/), so it works whether or not the daemon is running.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;

use dirigent::config::{Config, DEFAULT_CONFIG, validate_name};
use dirigent::duration::{self, Dur, short};
use dirigent::engine::running_daemon;
use dirigent::fsutil;
use dirigent::judge::signal_name;
use dirigent::ledger::{self, Event, Record};
use dirigent::state::{Phase, TaskBook, TaskRecord};
use dirigent::task::TaskFields;
use dirigent::usage;
use dirigent::workspace::Workspace;

use crate::cli::SubmitArgs;

mod agents;
mod fleet;
mod inbox_view;
mod logs;
mod logs_all;
mod open;
mod spend;
mod status;
mod submit;
mod top;
mod workflows;

pub use agents::{agents, doctor, stats};
pub use fleet::{fleet, fleet_permissions, fleet_status};
pub use logs::logs;
pub use logs_all::logs_many;
pub use open::open;
pub use status::{diff, status};
pub use submit::submit;
pub use top::top;
pub use workflows::{workflow_copy, workflow_list, workflow_show, workflow_validate};

pub fn init(ws: &Workspace, force: bool) -> Result<ExitCode> {
    let was_there = ws.context().is_dir();
    ws.ensure()?;
    let cfg = ws.config();
    let existed = cfg.exists();
    if existed && !force {
        println!("kept the existing {}", cfg.display());
    } else {
        fsutil::write_atomic(&cfg, DEFAULT_CONFIG.as_bytes())
            .with_context(|| format!("cannot write `{}`", cfg.display()))?;
        println!("wrote {}", cfg.display());
    }
    println!(
        "{} {} (inbox/, running/, done/, failed/, rejected/, escalations/, outbox/, runs/, workflows/)",
        if was_there { "checked" } else { "created" },
        ws.context().display()
    );
    match exclude_from_git(ws) {
        Ok(Some(file)) => println!(
            "added `/.context/` to {} (dirigent's state is not part of your code)",
            file.display()
        ),
        Ok(None) => {}
        Err(e) => eprintln!(
            "warning: could not keep .context/ out of git ({e}); add `.context/` to .gitignore"
        ),
    }
    // The next step that works from here.
    let runs_something =
        Config::load(&cfg).is_ok_and(|c| !c.effective_default_chain(ws.root()).is_empty());
    match running_daemon(ws) {
        Some(pid) => println!(
            "next: a daemon (pid {pid}) already runs on this workspace: `dirigent submit \"your prompt\" --wait`"
        ),
        None if !runs_something => println!(
            "next: no agent CLI of the config is installed: `dirigent doctor` says how to install one (README, \"No agent CLI installed yet?\", shows a script agent to try dirigent without one); then `dirigent daemon`"
        ),
        None => println!(
            "next: `dirigent daemon` to start, then `dirigent submit \"your prompt\" --wait`"
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// In a git repository, lists the workspace's `.context/` in its `info/exclude` (the
/// repository's own, uncommitted ignore file) unless git ignores it already. Returns the file
/// it changed.
fn exclude_from_git(ws: &Workspace) -> Result<Option<PathBuf>> {
    Ok(dirigent::git::exclude_context(ws.root()).unwrap_or(None))
}

/// Whether task `id` is claimed: its file is in `running/` (named for it), its `received` about
/// to be written — a moment between the inbox and the ledger that a reader must not call
/// "no such task".
fn claimed(ws: &Workspace, id: &str) -> bool {
    // Also claimed and not yet named for it (`.claim.<hex>.<name>`), for as long as the
    // daemon is paused with claims left.
    std::fs::read_dir(ws.running()).is_ok_and(|dir| {
        dir.flatten()
            .any(|e| dirigent::claim::names_task(&e.file_name().to_string_lossy(), id))
    })
}

/// This workspace's ledger key, if the daemon has made one: records are checked with it.
fn ledger_key(ws: &Workspace) -> Option<dirigent::integrity::Key> {
    dirigent::integrity::load(ws).ok().flatten()
}

fn load_book(ws: &Workspace) -> Result<TaskBook> {
    let key = ledger_key(ws);
    let load = || dirigent::compact::load(ws, None, false, key.as_ref(), false);
    // A compaction may delete a segment between listing and reading it: look once more.
    let loaded = load()
        .or_else(|_| load())
        .with_context(|| format!("cannot read the ledger in `{}`", ws.context().display()))?;
    Ok(loaded.book)
}

/// Task `id` of `book`; for one the book does not hold, an error that says where it is: its
/// file still in the inbox (listed by `status`, not started), being taken in, or nowhere.
fn find_task<'a>(ws: &Workspace, book: &'a TaskBook, id: &str) -> Result<&'a TaskRecord> {
    if let Some(t) = book.get(id) {
        return Ok(t);
    }
    let waiting = inbox_view::inbox_files(ws, book)
        .into_iter()
        .find(|(i, _, is_task)| i == id && *is_task);
    if let Some((_, file, _)) = waiting {
        anyhow::bail!(
            "task `{id}` has not started: its file waits in the inbox (.context/inbox/{file}); `dirigent status` says why"
        );
    }
    if claimed(ws, id) {
        if running_daemon(ws).is_none() {
            anyhow::bail!(
                "task `{id}` was being taken in from the inbox when the daemon stopped: its file waits in .context/running/ and is taken in at the next start (`dirigent daemon`)"
            );
        }
        anyhow::bail!("task `{id}` is being taken in from the inbox; ask again in a moment");
    }
    if book.outcome(id).is_some() {
        let runs = ws.run_dir(id);
        anyhow::bail!(
            "task `{id}` finished long ago: only its outcome is kept (`dirigent status {id}`){}",
            if runs.is_dir() {
                format!("; its files are in `{}`", runs.display())
            } else {
                String::new()
            }
        );
    }
    anyhow::bail!("no task `{id}` in this workspace; `dirigent status` lists the tasks")
}

/// Wakes a waiting CLI command when something in the watched directories changes, or after a
/// timeout (a safety net for file systems without change events).
struct ChangeWaker {
    rx: std::sync::mpsc::Receiver<()>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl ChangeWaker {
    fn new(dirs: &[&Path]) -> Self {
        use notify::Watcher;
        let (tx, rx) = std::sync::mpsc::channel();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // Our own reads of the ledger and capture files raise open/read/close events on
            // the watched directories: waking on those would spin a core.
            if res.as_ref().map_or(true, |e| is_change(&e.kind)) {
                let _ = tx.send(());
            }
        })
        .ok()
        .map(|mut w| {
            for d in dirs {
                let _ = w.watch(d, notify::RecursiveMode::NonRecursive);
            }
            w
        });
        ChangeWaker {
            rx,
            _watcher: watcher,
        }
    }

    fn wait(&self, limit: Duration) {
        let _ = self.rx.recv_timeout(limit);
        while self.rx.try_recv().is_ok() {}
    }
}

/// Whether a watcher event means something may have changed: a file created, written,
/// renamed or removed (and a file closed after writing), not merely opened or read.
fn is_change(kind: &notify::EventKind) -> bool {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// An agent's text (a result, an answer) on stdout. On a terminal its escape sequences are
/// dropped (they could retitle the window or write to the clipboard) and a final newline is
/// added when it has none, so the shell's prompt does not join its last line; in a pipe, its
/// bytes exactly.
pub(super) fn print_agent_text(mut from: impl Read) -> std::io::Result<()> {
    let stdout = std::io::stdout().lock();
    if !stdout.is_terminal() {
        let mut stdout = stdout;
        return std::io::copy(&mut from, &mut stdout).map(|_| ());
    }
    let mut out = dirigent::terminal::PrintableWriter::new(stdout);
    let mut buf = vec![0u8; 64 * 1024];
    let mut last = None;
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            break;
        }
        last = Some(buf[n - 1]);
        out.write_all(&buf[..n])?;
    }
    if last.is_some_and(|b| b != b'\n') {
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// The most bytes of a result `result --json` holds in memory: an agent's output can be any size.
const RESULT_IN_JSON: u64 = 16 << 20;

/// `{"id", "state", "result", …more}` for `result --json`: at most [`RESULT_IN_JSON`] bytes of
/// the text (`truncated` when there was more).
fn result_object(
    id: &str,
    state: &str,
    from: impl Read,
    more: serde_json::Value,
) -> Result<ExitCode> {
    let mut text = Vec::new();
    from.take(RESULT_IN_JSON + 1).read_to_end(&mut text)?;
    let truncated = text.len() as u64 > RESULT_IN_JSON;
    text.truncate(RESULT_IN_JSON as usize);
    let mut v = json!({"id": id, "state": state, "result": String::from_utf8_lossy(&text)});
    if truncated {
        v["truncated"] = true.into();
    }
    if let (Some(obj), serde_json::Value::Object(more)) = (v.as_object_mut(), more) {
        obj.extend(more);
    }
    println!("{v}");
    Ok(ExitCode::SUCCESS)
}

pub fn result(ws: &Workspace, id: &str, json: bool) -> Result<ExitCode> {
    let book = load_book(ws)?;
    let t = find_task(ws, &book, id)?;
    match t.phase() {
        Phase::Done { output, .. } => {
            // Streamed, through no link and from no FIFO: an agent may have replaced the file.
            let f = dirigent::fsutil::open_confined(ws.root(), output)
                .map_err(|e| anyhow::anyhow!("the result `{output}` {e}"))?;
            if json {
                return result_object(id, "done", f, json!({"output": output}));
            }
            print_agent_text(f)?;
            Ok(ExitCode::SUCCESS)
        }
        Phase::Failed { reason, .. } if reason == dirigent::state::CANCELLED_REASON => {
            bail!(
                "task `{id}` was cancelled and has no result; `dirigent retry {id}` runs it again"
            )
        }
        Phase::Failed { .. } => {
            bail!("task `{id}` failed and has no result; see .context/escalations/{id}.md")
        }
        // Verified and not merged yet: its agent's answer is what a reviewer wants to read
        // before merging, with `dirigent diff`.
        other @ (Phase::MergeWaiting { .. } | Phase::Merging) => {
            let Some(a) = t
                .attempts()
                .iter()
                .rev()
                .find(|a| a.class == Some(dirigent::class::Class::Ok))
            else {
                bail!("task `{id}` is {} and has no answer yet", other.label());
            };
            let capture = dirigent::task_log::CaptureFile::of(ws, id, a.n, &a.agent, "stdout");
            let mut f = capture
                .open()
                .with_context(|| format!("cannot read `runs/{id}/{}`", capture.name))?;
            if json {
                let more = json!({"attempt": a.n, "agent": a.agent});
                return result_object(id, other.label(), f, more);
            }
            eprintln!(
                "dirigent: `{id}` is verified and not merged yet ({}); its agent's answer (attempt {}, {}) follows; `dirigent diff {id}` shows its changes",
                other.label(),
                a.n,
                a.agent
            );
            print_agent_text(&mut f)?;
            Ok(ExitCode::SUCCESS)
        }
        other => bail!(
            "task `{id}` is not done yet (it is {}); `dirigent submit --wait` or `dirigent logs {id} -f` follow it",
            other.label()
        ),
    }
}

/// How a `dirigent merge` ended, as said to a person or, with `--json`, to a script.
enum MergeEnd {
    /// `--no-wait`: the daemon took it; `message` is its answer.
    Queued { message: String },
    /// On `target` at `commit` (both unknown when only the task's end was seen); `nothing_new`:
    /// the target had its change already.
    Merged {
        target: Option<String>,
        commit: Option<String>,
        nothing_new: bool,
    },
    /// It cannot be merged (or is not yet, with `resolving` when an agent resolves a conflict).
    NotMerged { reason: String, resolving: bool },
    /// Not now, and the task waits to be merged still (`reason`: what holds it — a checkout
    /// with uncommitted changes, tried again on its own —).
    Held { reason: String },
    /// The daemon stopped before the merge ended; it goes on when one starts.
    DaemonStopped,
}

impl MergeEnd {
    fn say(&self, id: &str, json: bool) -> ExitCode {
        let ok = matches!(self, MergeEnd::Queued { .. } | MergeEnd::Merged { .. });
        if json {
            let v = match self {
                MergeEnd::Queued { message } => {
                    json!({"id": id, "state": "queued", "message": message})
                }
                MergeEnd::Merged {
                    target,
                    commit,
                    nothing_new,
                } => {
                    json!({"id": id, "state": "merged", "target": target, "commit": commit, "nothing_new": nothing_new})
                }
                MergeEnd::NotMerged { reason, resolving } => {
                    json!({"id": id, "state": "not_merged", "reason": reason, "resolving": resolving})
                }
                MergeEnd::Held { reason } => {
                    json!({"id": id, "state": "merge_waiting", "reason": reason})
                }
                MergeEnd::DaemonStopped => {
                    json!({"id": id, "state": "waiting", "reason": "the daemon stopped before it was merged; it goes on merging when a daemon starts again"})
                }
            };
            println!("{v}");
        }
        match self {
            MergeEnd::Queued { message } => eprintln!("dirigent: {message}"),
            MergeEnd::Merged {
                target: Some(target),
                commit: Some(commit),
                nothing_new: true,
            } if !json => println!(
                "`{id}`'s change was on `{target}` already (another task made the same one): nothing new to merge; `{target}` stays at {}",
                short_commit(commit)
            ),
            MergeEnd::Merged {
                target: Some(target),
                commit: Some(commit),
                ..
            } if !json => println!("merged `{id}` into `{target}` at {}", short_commit(commit)),
            MergeEnd::Merged { .. } if !json => println!("`{id}` is merged"),
            MergeEnd::Merged { .. } => {}
            MergeEnd::Held { reason } => eprintln!("error: `{id}` is not merged: {reason}"),
            MergeEnd::NotMerged { reason, resolving } => {
                eprintln!("error: `{id}` is not merged: {reason}");
                if *resolving {
                    eprintln!(
                        "an agent resolves the conflict next; `dirigent status {id}` follows it"
                    );
                }
            }
            MergeEnd::DaemonStopped => eprintln!(
                "dirigent: the daemon stopped before `{id}` was merged; it goes on merging when a daemon starts again"
            ),
        }
        if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }
    }
}

fn short_commit(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

/// `dirigent merge ID`: queues the merge, then (unless `no_wait`) follows the ledger until the
/// task is merged (exit 0) or cannot be (exit 1, with the reason) — `merge X && git push` must
/// not push before X has landed.
pub fn merge(ws: &Workspace, id: String, no_wait: bool, json: bool) -> Result<ExitCode> {
    let mut follower = dirigent::follow::Follower::from_end(ws);
    let request = dirigent::control::Request::Merge { id: id.clone() };
    let answer = match dirigent::control::request_when_up(ws, &request) {
        Ok(answer) => answer,
        Err(e) => {
            let unavailable = Some(dirigent::control::Failure::Unavailable);
            return Ok(refused(&id, &e.to_string(), unavailable, json));
        }
    };
    // Being merged already (another `merge`, or one with `--no-wait`): this one waits too.
    let joining = answer.failure == Some(dirigent::control::Failure::Conflict)
        && answer.message.ends_with("is being merged now");
    if !answer.ok && !joining {
        return Ok(refused(&id, &answer.message, answer.failure, json));
    }
    if no_wait {
        return Ok(MergeEnd::Queued {
            message: answer.message,
        }
        .say(&id, json));
    }
    eprintln!("dirigent: {}", answer.message);
    Ok(follow_merge(ws, &id, joining, &mut follower, json)?.say(&id, json))
}

/// Follows the ledger from where `follower` stands until the merge of `id` is decided.
fn follow_merge(
    ws: &Workspace,
    id: &str,
    joining: bool,
    follower: &mut dirigent::follow::Follower,
    json: bool,
) -> Result<MergeEnd> {
    let unknown_merged = MergeEnd::Merged {
        target: None,
        commit: None,
        nothing_new: false,
    };
    // Joining a merge that may have ended a moment ago (its records written before this
    // follower began): the ledger says so.
    if joining
        && let Ok(book) = load_book(ws)
        && let Some(t) = book.get(id)
    {
        match t.phase() {
            Phase::Done { .. } => return Ok(unknown_merged),
            Phase::Failed { reason, .. } => {
                return Ok(MergeEnd::NotMerged {
                    reason: reason.clone(),
                    resolving: false,
                });
            }
            _ => {}
        }
    }
    let _ = dirigent::signals::part_with(
        format!(
            "dirigent: stopped waiting; the merge of `{id}` goes on in the daemon (`dirigent status {id}` shows how it went)"
        ),
        json.then(|| json!({"id": id, "state": "waiting", "reason": "the wait was interrupted; the merge goes on in the daemon"}).to_string()),
    );
    let waker = ChangeWaker::new(&[ws.context()]);
    // Set once no daemon runs: the records are read once more (it may have written the end
    // just before it stopped) before saying so.
    let mut last_look = false;
    // Replayed onto the target, the branch added nothing: its change was there already.
    let mut nothing_new = false;
    // Merged, its `done` not recorded yet: the answer waits for it, so that a `status` or a
    // `retry` right after sees the task done, not still merging.
    // (Not for long: a daemon paused for room holds `done` back, and the work has landed.)
    let mut merged: Option<(MergeEnd, Instant)> = None;
    loop {
        for r in follower.next_records()? {
            if r.event.task() != Some(id) {
                continue;
            }
            let not_merged = |reason: &str, resolving: bool| MergeEnd::NotMerged {
                reason: reason.to_string(),
                resolving,
            };
            match &r.event {
                Event::MergeReady { old, commit, .. } => nothing_new = old == commit,
                Event::Merged { target, commit, .. } => {
                    merged = Some((
                        MergeEnd::Merged {
                            target: Some(target.clone()),
                            commit: Some(commit.clone()),
                            nothing_new,
                        },
                        Instant::now(),
                    ));
                }
                // Merged already: whatever comes after, the work has landed.
                Event::Escalated { .. } | Event::Cancelled { .. } if merged.is_some() => {
                    return Ok(merged.map(|(m, _)| m).unwrap_or(unknown_merged));
                }
                // Queued again behind another merge: still under way.
                Event::MergeWaiting { reason, .. } if reason.starts_with("queued for merging") => {}
                Event::MergeWaiting { reason, .. } => {
                    return Ok(MergeEnd::Held {
                        reason: reason.clone(),
                    });
                }
                Event::Escalated { reason, .. } => return Ok(not_merged(reason, false)),
                Event::MergeFailed {
                    reason, resolve, ..
                } => return Ok(not_merged(reason, resolve.is_some())),
                Event::Cancelled { .. } => {
                    return Ok(not_merged("it was cancelled before it was merged", false));
                }
                // Its end (with its `merged` before it, or before this client looked).
                Event::Done { .. } => return Ok(merged.map(|(m, _)| m).unwrap_or(unknown_merged)),
                _ => {}
            }
        }
        if last_look {
            // Merged all the same when the daemon stopped before recording `done`.
            return Ok(merged.map(|(m, _)| m).unwrap_or(MergeEnd::DaemonStopped));
        }
        if let Some((_, at)) = &merged
            && at.elapsed() >= Duration::from_secs(10)
        {
            return Ok(merged.map(|(m, _)| m).unwrap_or(unknown_merged));
        }
        if running_daemon(ws).is_none() {
            last_look = true;
            continue;
        }
        waker.wait(Duration::from_secs(1));
    }
}

/// A request the daemon refused (or could not be asked): the `error:` line on stderr and, for
/// a script, `{"ok": false, "id", "error", "failure"}` on stdout. Exit 2, as every error.
fn refused(
    id: &str,
    message: &str,
    failure: Option<dirigent::control::Failure>,
    json: bool,
) -> ExitCode {
    eprintln!("error: {message}");
    if json {
        let failure = failure.map_or(json!("bad_request"), |f| json!(f));
        println!(
            "{}",
            json!({"ok": false, "id": id, "error": message, "failure": failure})
        );
    }
    ExitCode::from(2)
}

/// `dirigent agents enable A B…`: each in turn; every refusal is said, and the exit is 2 when
/// any was refused.
pub fn enable_agents(ws: &Workspace, names: Vec<String>, json: bool) -> Result<ExitCode> {
    let mut enabled = Vec::new();
    let mut refused = Vec::new();
    for agent in names {
        let request = dirigent::control::Request::Enable {
            agent: agent.clone(),
        };
        let answer =
            dirigent::control::request_when_up(ws, &request).map_err(|e| anyhow::anyhow!(e))?;
        if answer.ok {
            if !json {
                println!("{}", answer.message);
            }
            enabled.push(json!({"agent": agent, "message": answer.message}));
        } else {
            eprintln!("error: {}", answer.message);
            refused.push(json!({"agent": agent, "error": answer.message}));
        }
    }
    if json {
        println!("{}", json!({"enabled": enabled, "refused": refused}));
    }
    Ok(if refused.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// `cancel`, `retry` or `discard` of task `id`: sends the request over the control socket and
/// prints the daemon's answer (with `json`, as `{"ok", "id", "message"}`).
pub fn control(
    ws: &Workspace,
    id: &str,
    request: dirigent::control::Request,
    json: bool,
) -> Result<ExitCode> {
    let answer = match dirigent::control::request_when_up(ws, &request) {
        Ok(answer) => answer,
        // A task still waiting in the inbox can be cancelled without a daemon: by removing it.
        Err(e @ dirigent::control::ClientError::NotRunning { .. }) => {
            let waiting = match &request {
                dirigent::control::Request::Cancel { .. } => {
                    let book = load_book(ws).unwrap_or_default();
                    inbox_view::inbox_files(ws, &book)
                        .into_iter()
                        .find(|(i, _, is_task)| i == id && *is_task)
                        .map(|(_, name, _)| name)
                }
                _ => None,
            };
            let message = match waiting {
                Some(name) => format!(
                    "{e}; or, to cancel it before it runs, delete its file `.context/inbox/{name}`"
                ),
                None => e.to_string(),
            };
            let unavailable = Some(dirigent::control::Failure::Unavailable);
            return Ok(refused(id, &message, unavailable, json));
        }
        Err(e) => {
            let unavailable = Some(dirigent::control::Failure::Unavailable);
            return Ok(refused(id, &e.to_string(), unavailable, json));
        }
    };
    if !answer.ok {
        return Ok(refused(id, &answer.message, answer.failure, json));
    }
    if json {
        println!(
            "{}",
            json!({"ok": true, "id": id, "message": answer.message})
        );
    } else {
        println!("{}", answer.message);
    }
    Ok(ExitCode::SUCCESS)
}
