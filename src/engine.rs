//! The engine: the daemon's one owner task. It takes what the inbox stage finds, claims it,
//! schedules attempts under the concurrency, `max_parallel` and `stagger` limits, walks each
//! task's fallback chain on failure, and hands finished tasks to the result / escalate stages.
//!
//! Flow: inbox (watch + scan) → claim → spawn (one task per attempt) → judge → next agent or
//! settle (result / escalate) → ledger → progress. Every state change goes through the ledger
//! first; the engine's [`TaskBook`] is updated only from records that are already on disk.
//!
//! Starts are driven by events — a task arrives, an attempt ends, a stagger window closes —
//! never by a polling tick. The only timers are: the next stagger window (if one is pending),
//! the coalesced `progress.md` render, and the slow inbox safety-net rescan.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio::time::{Instant, sleep_until};

use crate::claim;
use crate::config::{Agent, Config, ConfigError};
use crate::confined;
use crate::escalate;
use crate::fsutil;
use crate::inbox;
use crate::judge::{Class, ResultText};
use crate::ledger::{self, Event, Ledger, LedgerError, Record};
use crate::progress;
use crate::result;
use crate::spawn::{self, AttemptPlan, AttemptReport, PreviousAttempt};
use crate::state::{Availability, Outcome, Phase, TaskBook, TaskRecord};
use crate::task::TaskSpec;
use crate::workspace::Workspace;

/// Most inbox files taken in per scan; the rest wait for the next round, so a flood of files
/// neither blocks dispatching nor makes one huge batch.
const INGEST_BATCH: usize = 256;

/// Finished tasks the daemon keeps in full (for progress.md); older ones shrink to id → outcome.
const KEEP_FINISHED: usize = 1000;

/// How long after a change `progress.md` is rewritten (changes in between are coalesced).
const PROGRESS_DELAY: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot prepare the workspace `{path}`: {cause}")]
    Workspace { path: String, cause: std::io::Error },
    #[error("another dirigent daemon (pid {pid}) is already running on `{root}`; stop it first")]
    Locked { pid: String, root: String },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("{0}")]
    Unsafe(String),
    #[error("cannot serve the HTTP API on `{addr}`: {cause}")]
    Http { addr: String, cause: std::io::Error },
    #[error("cannot watch the inbox `{path}`: {cause}")]
    Watch { path: String, cause: notify::Error },
}

/// Runs the daemon on `ws` until `shutdown` resolves, then stops gracefully: no new claims,
/// running attempts are terminated (group, grace, kill) and recorded as interrupted, and their
/// task files go back into the inbox so they run again on the next start.
pub async fn run(
    ws: Workspace,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    let (_keep, reload) = mpsc::unbounded_channel();
    run_with_reload(ws, shutdown, reload).await
}

/// [`run`], plus a channel of reload requests (the binary forwards SIGHUP into it). A change of
/// `.context/dirigent.yaml` reloads too. A reload never touches running attempts; an invalid
/// config is refused with one log line and the previous one stays in force.
pub async fn run_with_reload(
    ws: Workspace,
    shutdown: impl Future<Output = ()> + Send + 'static,
    reload: mpsc::UnboundedReceiver<()>,
) -> Result<(), DaemonError> {
    run_with_options(ws, shutdown, reload, Options::default()).await
}

/// What the command line adds to the config.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Serve the HTTP API here (`--http`); overrides the config's `http:`.
    pub http: Option<std::net::SocketAddr>,
}

/// [`run_with_reload`] with command-line [`Options`].
pub async fn run_with_options(
    ws: Workspace,
    shutdown: impl Future<Output = ()> + Send + 'static,
    mut reload: mpsc::UnboundedReceiver<()>,
    options: Options,
) -> Result<(), DaemonError> {
    let ws_err = |cause: std::io::Error| DaemonError::Workspace {
        path: ws.root().display().to_string(),
        cause,
    };
    ws.ensure().map_err(ws_err)?;
    ws.check_private().map_err(DaemonError::Unsafe)?;
    let _lock = lock_workspace(&ws)?;
    if !crate::reaper::become_subreaper() {
        tracing::debug!("not a child subreaper: processes that escape with setsid are not caught");
    }
    let config = Arc::new(Config::load(&ws.config())?);
    // Bound before the ledger is touched: a taken port or a bad token stops the start cleanly.
    let http_addr = options.http.or(config.http);
    let http_bound = match http_addr {
        Some(addr) => {
            Some(
                crate::http::bind(&ws, addr)
                    .await
                    .map_err(|cause| DaemonError::Http {
                        addr: addr.to_string(),
                        cause,
                    })?,
            )
        }
        None => None,
    };

    // Records are sealed with a key kept outside the workspace, so that lines an agent appends
    // to the ledger are not believed (see `integrity`).
    let (key, key_is_new) =
        crate::integrity::load_or_create(&ws).map_err(|e| DaemonError::Unsafe(e.to_string()))?;
    let loaded = crate::compact::load(&ws, Some(KEEP_FINISHED), true, Some(&key), key_is_new)
        .map_err(ws_err)?;
    report_refused(&ws, &loaded);
    if loaded.unsealed_snapshot
        && let Err(e) = crate::compact::reseal_snapshot(&ws, &key)
    {
        tracing::warn!("cannot seal the ledger snapshot an older version wrote: {e}");
    }
    if let Some(aside) = &loaded.torn {
        tracing::warn!(
            "the ledger ended in a torn or damaged line (a crash while writing); it was cut off and kept in `{}`",
            aside.display()
        );
    }
    if loaded.skipped > 0 {
        tracing::warn!(
            "{} line(s) in the middle of `{}` could not be read and were skipped (they stay in the file)",
            loaded.skipped,
            ws.ledger().display()
        );
    }
    let book = loaded.book;
    let compactor = crate::compact::Compactor::new(
        ws.clone(),
        KEEP_FINISHED,
        config.ledger_keep_segments,
        Some(key.clone()),
    );
    if !ledger::segments(ws.context()).map_err(ws_err)?.is_empty() {
        // Finish what a crash may have interrupted.
        compactor.trigger();
    }
    let rotation = ledger::Rotation {
        segment_events: config.ledger_segment_events,
        current_events: loaded.current_events,
        on_rotate: Box::new(move || compactor.trigger()),
    };
    let (ledger, writer) = Ledger::open_rotating(
        &ws.ledger(),
        book.last_seq,
        Some(rotation),
        Some(key.clone()),
    )?;

    let dirty = Arc::new(Notify::new());
    let (tx, rx) = mpsc::unbounded_channel();
    let notifier = crate::service::Notifier::from_env();
    let mut engine = Engine {
        workflows: HashMap::new(),
        advance_due: BTreeSet::new(),
        evaluating: HashSet::new(),
        watchdog_due: notifier
            .as_ref()
            .and_then(|n| n.watchdog_every)
            .map(|every| later(Instant::now(), every)),
        notifier,
        dirty: dirty.clone(),
        ws: ws.clone(),
        config_text: crate::config::read_text(&ws.config()).ok().flatten(),
        config,
        ledger,
        book,
        queue: BTreeSet::new(),
        keys: HashMap::new(),
        arrivals: 0,
        running: HashMap::new(),
        finishing: HashSet::new(),
        slots: HashMap::new(),
        start_log: HashMap::new(),
        best_routed: 0,
        tx,
        rx,
        accepting: true,
        ledger_failed: None,
        paused: None,
        held: Vec::new(),
        pause_backoff: PAUSE_FIRST,
        last_resume: None,
        claims_left: false,
        reserved: HashMap::new(),
        progress_due: None,
        stagger_due: None,
        rescan_due: Instant::now(),
    };
    let started = engine
        .ledger
        .append(Event::DaemonStarted {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").into(),
        })
        .await?;
    engine.book.apply(&started);
    engine.recover().await?;

    // The doors' requests: every door holds an `Api` with a sender; the receiver is dropped
    // when the loop ends, which answers what is still queued with "shutting down".
    let (ctrl_tx, mut ctrl_rx) = mpsc::unbounded_channel();
    // Flipped when the daemon begins to stop, so long waits and event streams end.
    let (stopping_tx, stopping) = watch::channel(false);
    // How many records the engine's book has applied: doors waiting for a task's end re-read
    // it when this moves (the ledger's live records arrive before the engine has applied them).
    let (applied_tx, applied) = watch::channel(engine.book.applied);
    let api = crate::api::Api::new(
        ws.clone(),
        ctrl_tx,
        engine.ledger.live(),
        applied,
        stopping,
        Some(key),
    );
    let control =
        crate::control::serve(&ws, api.clone()).map_err(|cause| DaemonError::Workspace {
            path: crate::control::socket_path(&ws).display().to_string(),
            cause,
        })?;
    let http = match (http_bound, http_addr) {
        (Some(bound), Some(addr)) => Some(crate::http::serve(bound, api.clone()).map_err(
            |cause| DaemonError::Http {
                addr: addr.to_string(),
                cause,
            },
        )?),
        _ => None,
    };
    drop(api);
    let config_changed = Arc::new(Notify::new());
    let config_path = ws.config();
    let watcher = inbox::watch_with_config(
        &ws.inbox(),
        dirty.clone(),
        Some((&config_path, config_changed.clone())),
    )
    .map_err(|cause| DaemonError::Watch {
        path: ws.inbox().display().to_string(),
        cause,
    })?;
    // The first scan after the watcher is up: nothing dropped in between is missed.
    engine.ingest().await;
    engine.rescan_due = later(Instant::now(), engine.config.inbox_rescan);
    engine.advance_runs().await;
    engine.dispatch();
    engine.write_progress();
    tracing::info!(
        root = %ws.root().display(),
        config = %engine.config.source,
        concurrency = engine.config.concurrency,
        "dirigent is running"
    );
    engine.notify(&format!("READY=1\nSTATUS={}", engine.status_line()));

    // The stop is watched by a task of its own: if the loop is waiting on a ledger write that
    // is paused (the disk is full), the writer is told to give up, so a stop is never stuck.
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let give_up = engine.ledger.give_up_handle();
    tokio::spawn(async move {
        shutdown.await;
        give_up.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = stop_tx.send(true);
    });
    let mut was_idle = true;
    loop {
        let wake = engine.next_wake();
        tokio::select! {
            biased;
            _ = stop_rx.wait_for(|s| *s) => break,
            msg = engine.rx.recv() => {
                // The engine holds a sender itself, so the channel never closes here.
                if let Some(msg) = msg {
                    engine.handle(msg);
                }
            }
            () = dirty.notified() => engine.ingest().await,
            () = config_changed.notified() => engine.reload("file", false).await,
            Some(()) = reload.recv() => engine.reload("SIGHUP", true).await,
            Some(req) = ctrl_rx.recv() => {
                let answer = engine.control(req.request).await;
                let _ = req.reply.send(answer);
            }
            () = sleep_until(wake) => engine.on_timer().await,
        }
        engine.advance_runs().await;
        engine.dispatch();
        if *applied_tx.borrow() != engine.book.applied {
            applied_tx.send_replace(engine.book.applied);
        }
        // Going idle after work: hand the memory a burst used back to the system.
        let idle = engine.running.is_empty() && engine.queue.is_empty();
        if idle && !was_idle {
            release_free_memory();
        }
        was_idle = idle;
    }
    drop(watcher);
    let _ = stopping_tx.send(true);
    drop(ctrl_rx);
    control.abort();
    let _ = std::fs::remove_file(crate::control::socket_path(&ws));
    if let Some(http) = http {
        http.stop().await;
    }
    engine.notify("STOPPING=1\nSTATUS=stopping: terminating running attempts");
    tracing::info!("shutting down: stopping running attempts");
    engine.shutdown().await;
    // Reap adopted zombies; nothing of ours is running any more.
    let _ = tokio::task::spawn_blocking(|| crate::reaper::sweep(None)).await;
    let Engine { ledger, .. } = engine;
    drop(ledger);
    writer.join();
    Ok(())
}

/// Says in the log which ledger lines were not believed, and why.
fn report_refused(ws: &Workspace, loaded: &crate::compact::Loaded) {
    if loaded.another_key {
        tracing::warn!(
            "no record of the ledger carries this workspace's seal (was the workspace copied or moved, or `{}` replaced?); its records were believed as written and are sealed from now on",
            crate::integrity::key_path(ws).display()
        );
        return;
    }
    if loaded.refused_count == 0 {
        return;
    }
    tracing::warn!(
        "{} line(s) of the ledger were not written by dirigent (or were altered) and are ignored; they stay in the files. An agent may have written them",
        loaded.refused_count
    );
    for r in loaded.refused.iter().take(10) {
        tracing::warn!("ignored: {r}");
    }
}

/// Holds `.context/daemon.lock` (an exclusive `flock`) for the daemon's lifetime.
struct WorkspaceLock(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

fn lock_workspace(ws: &Workspace) -> Result<WorkspaceLock, DaemonError> {
    use std::io::Write;
    let path = ws.lock();
    let io = |cause| DaemonError::Workspace {
        path: path.display().to_string(),
        cause,
    };
    // Never through a link an agent planted: the lock file is truncated and written.
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io)?
    };
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            lock.set_len(0).map_err(io)?;
            writeln!(lock, "{}", std::process::id()).map_err(io)?;
            Ok(WorkspaceLock(lock))
        }
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(DaemonError::Locked {
            pid: std::fs::read_to_string(&path)
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into()),
            root: ws.root().display().to_string(),
        }),
        Err((_, e)) => Err(io(std::io::Error::from(e))),
    }
}

/// Order of the run queue: higher priority first, then arrival.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct QueueKey {
    priority: Reverse<i64>,
    arrival: u64,
    id: String,
}

/// A file claimed from the inbox (or found in `running/`), not yet taken in.
struct Claimed {
    /// Its name in `running/` now.
    claim_name: String,
    /// Its name in the inbox: it picks the format and, without an `id`, the task's id.
    name: String,
}

/// Why and since when the engine is paused (a resource ran out).
struct Pause {
    what: String,
    since_ms: u64,
    /// When to try again.
    retry_at: Instant,
}

/// How long the first pause lasts; each pause that follows doubles it, up to the maximum. A
/// stretch of this long without a pause starts again from the first.
const PAUSE_FIRST: Duration = Duration::from_secs(1);
const PAUSE_MAX: Duration = Duration::from_secs(30);
const PAUSE_FORGET: Duration = Duration::from_secs(120);

/// Finished work that waits for a resource: it is done again when the pause ends.
enum Held {
    /// A successful attempt whose result could not be written yet.
    Settle {
        task: String,
        report: Box<AttemptReport>,
    },
    /// An escalation whose report could not be written yet.
    Escalate {
        snapshot: Box<TaskRecord>,
        reason: String,
    },
}

impl Held {
    fn task(&self) -> &str {
        match self {
            Held::Settle { task, .. } => task,
            Held::Escalate { snapshot, .. } => &snapshot.id,
        }
    }
}

struct RunningAttempt {
    agent: String,
    /// The isolated instance it uses (`isolate: true`), freed when it ends.
    instance: Option<usize>,
    /// What it holds of resource groups until it ends.
    resources: BTreeMap<String, f64>,
    /// The attempt task holds the receiver. Sending a cause (or dropping this sender) stops
    /// the attempt: its whole process group is terminated.
    stop: watch::Sender<Option<crate::judge::StopCause>>,
}

#[derive(Default)]
struct AgentSlot {
    running: usize,
    last_start: Option<Instant>,
}

/// Messages to the engine from the tasks it spawned.
enum Msg {
    /// An attempt's child is running; the record is on disk.
    Started(Record),
    /// An attempt ended and was judged; `records` is its `attempt_finished` (empty if the
    /// ledger refused it).
    AttemptDone {
        task: String,
        records: Vec<Record>,
        report: Box<AttemptReport>,
    },
    /// A task reached `done` or `escalated`.
    Settled {
        task: String,
        records: Vec<Record>,
    },
    /// A loop round's evaluator command finished; `records` is its `loop_round`.
    Evaluated {
        run: String,
        key: String,
        records: Vec<Record>,
    },
    /// A successful attempt's result could not be written (e.g. `output` leads outside the
    /// workspace through a symlink): the task escalates with this reason.
    ResultFailed {
        task: String,
        reason: String,
    },
    /// Finished work could not be saved because a resource ran out: the engine pauses and
    /// holds it until the pause ends.
    Paused {
        what: String,
        held: Held,
    },
    LedgerFailed(String),
}

struct Engine {
    /// Workflow runs seen by this daemon, with their parsed workflow.
    workflows: HashMap<String, Arc<crate::workflow::Workflow>>,
    /// Runs to advance after the current message (received, or a child settled).
    advance_due: BTreeSet<String>,
    /// Loop evaluations running now (`run/phase/round`), so none starts twice.
    evaluating: HashSet<String>,
    /// The text the config was last loaded from (`None`: the embedded default), so that a file
    /// event that changed nothing does not reload.
    config_text: Option<String>,
    /// The service manager's notify socket, when there is one.
    notifier: Option<crate::service::Notifier>,
    /// Next `WATCHDOG=1`, sent from this loop so that a stuck loop is noticed.
    watchdog_due: Option<Instant>,
    /// Permit stored by the inbox watcher (and by `ingest` when it left files for later);
    /// consumed by the loop, which scans.
    dirty: Arc<Notify>,
    ws: Workspace,
    config: Arc<Config>,
    ledger: Ledger,
    book: TaskBook,
    /// Tasks waiting to start their next attempt.
    queue: BTreeSet<QueueKey>,
    /// Each unfinished task keeps its queue position across attempts.
    keys: HashMap<String, QueueKey>,
    arrivals: u64,
    running: HashMap<String, RunningAttempt>,
    /// Tasks whose result or escalation is being written.
    finishing: HashSet<String>,
    slots: HashMap<String, AgentSlot>,
    /// Recent starts (at most the last minute's) per `agent:NAME` and `provider:NAME` that has a
    /// `starts_per_minute` limit.
    start_log: HashMap<String, std::collections::VecDeque<Instant>>,
    /// Tasks routed by a `strategy: best` role so far (every tenth explores).
    best_routed: u64,
    /// Cloned into every attempt and settle task; the receiver is `rx`. The engine keeps this
    /// sender, so the channel stays open for as long as the engine exists.
    tx: mpsc::UnboundedSender<Msg>,
    rx: mpsc::UnboundedReceiver<Msg>,
    /// False once shutdown began: nothing new is claimed or started.
    accepting: bool,
    /// Set when the ledger refused a write: nothing new is claimed or started.
    ledger_failed: Option<String>,
    /// Set while a resource (disk space, descriptors) is out: nothing new is claimed or
    /// started until `retry_at`, and `held` work waits.
    paused: Option<Pause>,
    held: Vec<Held>,
    /// The next pause's length.
    pause_backoff: Duration,
    last_resume: Option<Instant>,
    /// Files were claimed into `running/` but could not be read (a pause): take them in when
    /// it ends.
    claims_left: bool,
    /// Ids that doors have given out for files not taken in yet (id → the inbox file), so a
    /// file dropped with a name that maps to the same id cannot take it.
    reserved: HashMap<String, String>,
    progress_due: Option<Instant>,
    stagger_due: Option<Instant>,
    rescan_due: Instant,
}

impl Engine {
    /// Reloads `.context/dirigent.yaml`. Running attempts keep the agents they started with;
    /// queued tasks keep their chains (an agent that disappeared fails their next attempt).
    async fn reload(&mut self, trigger: &str, always: bool) {
        let path = self.ws.config();
        let read = crate::config::read_text(&path);
        let text = read.as_ref().ok().cloned().flatten();
        if !always && read.is_ok() && text == self.config_text {
            return;
        }
        let rejected = |error: String| Event::ConfigRejected {
            trigger: trigger.to_string(),
            error,
        };
        let from_file = self.config.source != crate::config::EMBEDDED_SOURCE;
        let event = match read {
            Err(e) => {
                tracing::error!(
                    trigger,
                    "the configuration cannot be read, keeping the running one: {e}"
                );
                rejected(e.to_string())
            }
            // Deleted while running (an editor's swap, a mistake): the daemon does not quietly
            // become another one. The embedded default takes over only at the next start.
            Ok(None) if from_file => {
                self.config_text = None;
                let error = format!(
                    "`{}` was deleted; the running configuration stays in force (restart the daemon to use the embedded default)",
                    path.display()
                );
                tracing::warn!(trigger, "{error}");
                rejected(error)
            }
            Ok(text) => {
                let parsed = match &text {
                    Some(t) => Config::parse(t, &path.display().to_string()),
                    None => Config::parse(
                        crate::config::DEFAULT_CONFIG,
                        crate::config::EMBEDDED_SOURCE,
                    ),
                };
                let unchanged = text == self.config_text;
                self.config_text = text;
                match parsed {
                    Ok(config) => {
                        if unchanged {
                            tracing::info!(trigger, source = %config.source, "configuration re-read: unchanged");
                        } else {
                            tracing::info!(trigger, source = %config.source, "configuration reloaded");
                        }
                        let source = config.source.clone();
                        self.config = Arc::new(config);
                        Event::ConfigReloaded {
                            trigger: trigger.to_string(),
                            source,
                        }
                    }
                    Err(e) => {
                        tracing::error!(
                            trigger,
                            "the new configuration is invalid, keeping the previous one: {e}"
                        );
                        rejected(e.to_string())
                    }
                }
            }
        };
        match self.ledger.append(event).await {
            Ok(r) => self.apply(&[r]),
            Err(e) => self.ledger_failed(e.to_string()),
        }
    }

    fn notify(&self, msg: &str) {
        if let Some(n) = &self.notifier {
            n.send(msg);
        }
    }

    fn status_line(&self) -> String {
        let (mut pending, mut done, mut failed) =
            (0, self.book.archived_done, self.book.archived_failed);
        for t in self.book.iter() {
            match t.phase {
                Phase::Done { .. } => done += 1,
                Phase::Failed { .. } => failed += 1,
                Phase::Pending | Phase::Requeued => pending += 1,
                Phase::Running { .. } => {}
            }
        }
        let paused = match self.not_claiming() {
            Some(why) => format!(" — {why}"),
            None => String::new(),
        };
        format!(
            "{} running, {pending} pending, {done} done, {failed} failed{paused}",
            self.running.len()
        )
    }

    fn next_wake(&self) -> Instant {
        [
            self.progress_due,
            self.stagger_due,
            self.watchdog_due,
            self.paused.as_ref().map(|p| p.retry_at),
            Some(self.rescan_due),
        ]
        .into_iter()
        .flatten()
        .min()
        .expect("rescan_due is always set")
    }

    async fn on_timer(&mut self) {
        let now = Instant::now();
        if self.progress_due.is_some_and(|t| t <= now) {
            self.progress_due = None;
            self.write_progress();
            self.notify(&format!("STATUS={}", self.status_line()));
        }
        if let (Some(due), Some(n)) = (self.watchdog_due, &self.notifier)
            && due <= now
        {
            n.send("WATCHDOG=1");
            self.watchdog_due = n.watchdog_every.map(|every| later(now, every));
        }
        if self.stagger_due.is_some_and(|t| t <= now) {
            self.stagger_due = None; // dispatch() runs next and sets it again if needed
        }
        if self.paused.as_ref().is_some_and(|p| p.retry_at <= now) {
            self.resume().await;
        }
        if self.rescan_due <= now {
            self.rescan_due = later(now, self.config.inbox_rescan);
            self.ingest().await;
        }
    }

    fn changed(&mut self) {
        if self.progress_due.is_none() {
            self.progress_due = Some(Instant::now() + PROGRESS_DELAY);
        }
    }

    fn write_progress(&self) {
        if let Err(e) = progress::write(&self.ws, &self.book) {
            tracing::warn!("cannot write `{}`: {e}", self.ws.progress().display());
        }
    }

    fn apply(&mut self, records: &[Record]) {
        for r in records {
            // One clear message when a provider changes state, not one per task.
            match &r.event {
                Event::ProviderDisabled {
                    provider,
                    agent,
                    reason,
                    ..
                } if self
                    .book
                    .providers
                    .get(provider)
                    .is_none_or(|p| p.disabled.is_none()) =>
                {
                    tracing::error!(
                        provider,
                        agent,
                        "`{agent}` failed to authenticate ({reason}); its provider `{provider}` is disabled and its tasks go to the next agent. Fix the login, then run `dirigent agents enable {agent}`"
                    );
                }
                Event::ProviderCooldown {
                    provider,
                    agent,
                    until_ms,
                    reason,
                    ..
                } if self
                    .book
                    .providers
                    .get(provider)
                    .and_then(|p| p.cooling_until_ms)
                    .is_none_or(|u| u < *until_ms) =>
                {
                    tracing::warn!(
                        provider,
                        agent,
                        "`{agent}` is rate limited ({reason}); provider `{provider}` rests until {}",
                        crate::duration::clock(*until_ms)
                    );
                }
                _ => {}
            }
            self.book.apply(r);
        }
        if !records.is_empty() {
            self.changed();
        }
    }

    fn ledger_failed(&mut self, why: String) {
        if self.ledger_failed.is_none() {
            tracing::error!(
                "error: the ledger cannot be written ({why}); dirigent has stopped claiming and starting work. \
Free disk space or fix `{}`, then restart the daemon",
                self.ws.ledger().display()
            );
            self.ledger_failed = Some(why);
        }
    }

    fn enqueue(&mut self, id: &str) {
        let key = match self.keys.get(id) {
            Some(k) => k.clone(),
            None => {
                self.arrivals += 1;
                let priority = self.book.get(id).map_or(0, |t| t.priority);
                let k = QueueKey {
                    priority: Reverse(priority),
                    arrival: self.arrivals,
                    id: id.to_string(),
                };
                self.keys.insert(id.to_string(), k.clone());
                k
            }
        };
        self.queue.insert(key);
    }

    /// Queues a task for attempts, or — a workflow run — has the runner advance it.
    fn enqueue_or_advance(&mut self, id: &str) {
        let is_run = self
            .book
            .get(id)
            .and_then(|t| t.spec.as_ref())
            .is_some_and(|s| s.fields.workflow.is_some());
        if is_run {
            self.advance_due.insert(id.to_string());
        } else {
            self.enqueue(id);
        }
    }

    /// Carries out what the workflow runner decides for each run that is due.
    async fn advance_runs(&mut self) {
        if !self.accepting || self.not_claiming().is_some() {
            return;
        }
        let due = std::mem::take(&mut self.advance_due);
        for run in due {
            // A completed phase may let the next one start at once: ask again until nothing moves.
            for _ in 0..64 {
                let live = self.book.get(&run).is_some_and(|t| !t.phase.is_terminal());
                if !live || self.finishing.contains(&run) {
                    break;
                }
                let Some(wf) = self.workflow_of(&run) else {
                    break;
                };
                let Some(t) = self.book.get(&run) else { break };
                let actions = crate::runner::next(t, &wf, &self.book, &self.config, &self.ws);
                let mut moved = false;
                for action in actions {
                    match action {
                        crate::runner::Action::Submit(child) => self.submit_child(&child),
                        crate::runner::Action::PhaseCompleted {
                            phase,
                            output,
                            parts,
                        } => {
                            tracing::info!(task = %run, phase = %phase, "workflow phase completed");
                            if !parts.is_empty() {
                                // A phase of many tasks: its output is all of their results.
                                let mut text = String::new();
                                for (label, path) in &parts {
                                    let body = fsutil::read_confined(
                                        self.ws.root(),
                                        path,
                                        MAX_CONTEXT_FILE,
                                    )
                                    .unwrap_or_default();
                                    text.push_str(&format!(
                                        "## {label} ({path})\n\n{}\n\n",
                                        body.trim_end()
                                    ));
                                }
                                if let Err(e) = result::write_text(&self.ws, &output, &text) {
                                    self.escalate(
                                        &run,
                                        format!("phase `{phase}`: cannot write its output: {e}"),
                                    );
                                    break;
                                }
                            }
                            let digest = fsutil::digest_confined(self.ws.root(), &output)
                                .unwrap_or_default();
                            let ev = Event::PhaseCompleted {
                                task: run.clone(),
                                phase,
                                output,
                                digest,
                            };
                            if !self.record_now(ev).await {
                                return;
                            }
                            moved = true;
                        }
                        crate::runner::Action::Finished { output } => {
                            self.finish_run(&run, output).await
                        }
                        crate::runner::Action::Failed(reason) => self.escalate(&run, reason),
                        crate::runner::Action::Evaluate {
                            phase,
                            round,
                            command,
                        } => {
                            self.start_evaluation(&run, phase, round, command);
                        }
                        crate::runner::Action::RecordRound {
                            phase,
                            round,
                            passed,
                            feedback,
                        } => {
                            let ev = Event::LoopRound {
                                task: run.clone(),
                                phase,
                                round,
                                passed,
                                feedback,
                            };
                            if !self.record_now(ev).await {
                                return;
                            }
                            moved = true;
                        }
                    }
                }
                if !moved {
                    break;
                }
            }
        }
    }

    /// The parsed workflow of a run (cached); a workflow that vanished or broke fails the run.
    fn workflow_of(&mut self, run: &str) -> Option<Arc<crate::workflow::Workflow>> {
        if let Some(wf) = self.workflows.get(run) {
            return Some(wf.clone());
        }
        let name = self.book.get(run)?.spec.as_ref()?.fields.workflow.clone()?;
        let found = crate::workflow::discover(&self.ws.workflows())
            .map_err(|e| e.to_string())
            .and_then(|defs| {
                let def = defs
                    .into_iter()
                    .find(|d| d.name == name)
                    .ok_or_else(|| format!("workflow `{name}` no longer exists"))?;
                crate::workflow::validate(&def, &self.config).map_err(|p| {
                    format!(
                        "workflow `{name}` is invalid now: {}",
                        p.first().map(|p| p.to_string()).unwrap_or_default()
                    )
                })
            });
        match found {
            Ok(wf) => {
                let wf = Arc::new(wf);
                self.workflows.insert(run.to_string(), wf.clone());
                Some(wf)
            }
            Err(reason) => {
                self.escalate(run, reason);
                None
            }
        }
    }

    /// Submits a child task through the inbox, like any other door. Submitting the same child
    /// twice is harmless: the second file finds the first in the inbox, or the id taken.
    fn submit_child(&mut self, child: &crate::runner::Child) {
        let fields = crate::task::TaskFields {
            id: Some(child.id.clone()),
            title: Some(child.title.clone()),
            prompt: Some(child.prompt.clone()),
            agent: child.agent.clone(),
            role: child.role.clone(),
            chain: child.chain.clone(),
            output: child.output.clone(),
            files: child.files.clone(),
            ..Default::default()
        };
        match crate::submit::write_into_inbox(&self.ws, &child.id, &fields) {
            Ok(_) => {
                self.reserved
                    .insert(child.id.clone(), format!("{}.json", child.id));
                tracing::info!(task = %child.id, "workflow submitted a task");
            }
            Err(crate::submit::SubmitError::Exists(_)) => {}
            Err(e) => tracing::error!(task = %child.id, "cannot submit a workflow task: {e}"),
        }
        // The prompt a phase's task received is kept next to its output.
        if let Some(out) = &child.output {
            let (stem, _) = fsutil::split_name(out);
            if let Err(e) =
                result::write_text(&self.ws, &format!("{stem}.prompt.md"), &child.prompt)
            {
                tracing::warn!(task = %child.id, "cannot keep the prompt beside its output: {e}");
            }
        }
    }

    /// Answers a control request (`dirigent cancel`, `dirigent retry`).
    async fn control(&mut self, request: crate::control::Request) -> crate::control::Response {
        use crate::control::{Failure, Request, Response};
        match request {
            Request::Status => match serde_json::to_value(&self.book) {
                Ok(mut data) => {
                    // What stops the daemon from taking work, beside the tasks.
                    if let Some(why) = self.not_claiming() {
                        data["paused"] = serde_json::json!({
                            "why": why,
                            "since_ms": self.paused.as_ref().map(|p| p.since_ms),
                        });
                    }
                    Response::data(data)
                }
                Err(e) => Response::error(format!("cannot serialise the state: {e}")),
            },
            Request::Get { id } => self.describe(&id),
            Request::List { state } => {
                let rows: Vec<serde_json::Value> = self
                    .book
                    .iter()
                    .filter(|t| state.as_deref().is_none_or(|s| t.phase.label() == s))
                    .map(summary)
                    .collect();
                Response::data(serde_json::Value::Array(rows))
            }
            Request::Submit { task } => {
                let (book, reserved) = (&self.book, &self.reserved);
                let submitted = crate::submit::submit(&self.ws, &self.config, *task, |id| {
                    book.contains(id) || reserved.contains_key(id)
                });
                if let Ok(done) = &submitted {
                    // The id is this submitter's from now on: a file dropped meanwhile whose
                    // name maps to the same id gets another one.
                    self.reserved
                        .insert(done.id.clone(), format!("{}.json", done.id));
                }
                match submitted {
                    Ok(done) => Response {
                        message: format!("submitted `{}`", done.id),
                        ..Response::data(serde_json::json!({"id": done.id, "file": done.file}))
                    },
                    Err(e @ crate::submit::SubmitError::Exists(_)) => {
                        Response::fail(Failure::Conflict, e.to_string())
                    }
                    Err(e @ crate::submit::SubmitError::Io { .. }) => {
                        Response::fail(Failure::Unavailable, e.to_string())
                    }
                    Err(e) => Response::error(e.to_string()),
                }
            }
            Request::Enable { agent } => {
                let Some(a) = self.config.agents.get(&agent) else {
                    return Response::fail(
                        Failure::NotFound,
                        format!("no agent `{agent}`; `dirigent agents` lists them"),
                    );
                };
                let provider = a.provider.clone();
                if !self.book.providers.contains_key(&provider) {
                    return Response::ok(format!(
                        "`{agent}` (provider `{provider}`) is not disabled or cooling down"
                    ));
                }
                if !self
                    .record_now(Event::ProviderEnabled {
                        provider: provider.clone(),
                    })
                    .await
                {
                    return Response::fail(Failure::Unavailable, "the ledger cannot be written");
                }
                tracing::info!(provider, "enabled by the user");
                Response::ok(format!(
                    "`{agent}` and every agent on provider `{provider}` can run again"
                ))
            }
            Request::Agents => Response::data(crate::catalog::agents_report(
                &self.ws,
                &self.config,
                &self.book,
            )),
            Request::Workflows => match crate::catalog::workflows(&self.ws, &self.config) {
                Ok(rows) => Response::data(serde_json::json!(rows)),
                Err(e) => Response::error(format!("cannot read the workflows: {e}")),
            },
            // Answered by the doors themselves (`api`), from `get` and the live events.
            Request::Wait { .. } | Request::Result { .. } => {
                Response::error("`wait` and `result` are answered by the door, not the engine")
            }
            Request::Cancel { id } => {
                let Some(t) = self.book.get(&id) else {
                    return if self.book.contains(&id) {
                        Response::fail(
                            Failure::Conflict,
                            format!("task `{id}` has already finished"),
                        )
                    } else {
                        Response::fail(
                            Failure::NotFound,
                            format!("no task `{id}`; `dirigent status` lists the tasks"),
                        )
                    };
                };
                if t.phase.is_terminal() {
                    return Response::fail(
                        Failure::Conflict,
                        format!("task `{id}` has already finished ({})", t.phase.label()),
                    );
                }
                if self.finishing.contains(&id) {
                    return Response::fail(
                        Failure::Conflict,
                        format!(
                            "task `{id}` is finishing (its result or report is being written); it cannot be cancelled any more"
                        ),
                    );
                }
                // A workflow run takes its unfinished tasks with it.
                let mut ids: Vec<String> = self
                    .book
                    .iter()
                    .filter(|c| !c.phase.is_terminal() && is_child_of(&c.id, &id))
                    .map(|c| c.id.clone())
                    .collect();
                ids.push(id.clone());
                let mut stopping = false;
                for one in ids {
                    if self.finishing.contains(&one) {
                        continue;
                    }
                    if let Some(run) = self.running.get(&one) {
                        let _ = run.stop.send(Some(crate::judge::StopCause::Cancel));
                        stopping = true;
                    } else {
                        self.dequeue(&one);
                        self.keys.remove(&one);
                        self.settle_cancelled(&one);
                    }
                }
                Response::ok(if stopping {
                    format!("cancelling `{id}`: its process group is being stopped")
                } else {
                    format!("cancelled `{id}`")
                })
            }
            Request::Retry { id } => match self.retry(&id).await {
                Ok(message) => Response::ok(message),
                Err(refused) => refused,
            },
        }
    }

    /// Runs a failed or cancelled task again from the top of its chain, re-reading its file in
    /// `failed/`. A workflow run resumes from the phase that failed: its failed tasks run again
    /// and its completed phases stay completed. Returns what to tell the user.
    async fn retry(&mut self, id: &str) -> Result<String, crate::control::Response> {
        use crate::control::{Failure, Response};
        let id = id.to_string();
        let Some(t) = self.book.get(&id) else {
            return Err(if self.book.contains(&id) {
                Response::fail(
                    Failure::Conflict,
                    format!(
                        "task `{id}` is too old to retry (only the 1,000 most recent finished tasks are kept in full); submit it again"
                    ),
                )
            } else {
                Response::fail(
                    Failure::NotFound,
                    format!("no task `{id}`; `dirigent status` lists the tasks"),
                )
            });
        };
        if !matches!(t.phase, Phase::Failed { .. }) {
            return Err(Response::fail(
                Failure::Conflict,
                format!(
                    "task `{id}` is {}; only a failed or cancelled task can be retried",
                    t.phase.label()
                ),
            ));
        }
        let file = t.file.clone();
        let path = self.ws.failed().join(&file);
        let fields = match self.ws.open_sub("failed") {
            Ok(failed) if failed.kind(&file).is_none() => {
                Err(format!("its file `{}` is gone", path.display()))
            }
            Ok(failed) => match claim::read(&failed, &file, &file) {
                Ok(f) => Ok(f),
                Err(claim::Unreadable::Refused(r)) => Err(r),
                Err(claim::Unreadable::Exhausted(e)) => {
                    return Err(Response::fail(
                        Failure::Unavailable,
                        format!("cannot read `{}` now: {e}", path.display()),
                    ));
                }
            },
            Err(e) => Err(format!("cannot open `{}`: {e}", self.ws.failed().display())),
        };
        let spec = match fields.and_then(|f| {
            crate::task::accept(id.clone(), f, &self.config, self.ws.root()).map_err(|e| e.0)
        }) {
            Ok(spec) => spec,
            Err(e) => {
                return Err(Response::error(format!(
                    "task `{id}` cannot run again: {e}"
                )));
            }
        };
        // A workflow run resumes where it failed: its failed tasks run again first
        // (its completed phases are kept), then the run itself.
        let is_run = spec.fields.workflow.is_some();
        let mut again = Vec::new();
        if is_run {
            let prefix = format!("{id}.");
            let failed: Vec<String> = self
                .book
                .iter()
                .filter(|c| c.id.starts_with(&prefix) && matches!(c.phase, Phase::Failed { .. }))
                .map(|c| c.id.clone())
                .collect();
            for child in failed {
                Box::pin(self.retry(&child)).await?;
                again.push(child);
            }
        }
        if !self
            .record_now(Event::Retried {
                task: id.clone(),
                spec: Box::new(spec),
            })
            .await
        {
            return Err(Response::fail(
                Failure::Unavailable,
                "the ledger cannot be written",
            ));
        }
        if let Err(e) = claim::move_task(&self.ws, "failed", "running", &file, &id, None) {
            tracing::warn!(task = %id, "cannot move the task file back to running/: {e}");
        }
        self.keys.remove(&id);
        self.enqueue_or_advance(&id);
        tracing::info!(task = %id, "retried");
        Ok(if is_run {
            let phase = self
                .book
                .get(&id)
                .map(|t| t.phases.len())
                .unwrap_or_default();
            format!(
                "resuming the workflow run `{id}` after its {phase} completed phase(s){}",
                if again.is_empty() {
                    String::new()
                } else {
                    format!("; running again: {}", again.join(", "))
                }
            )
        } else {
            format!("retrying `{id}` from the top of its chain")
        })
    }

    /// What is known of task `id`, for `get` and `wait`: its full record; only its outcome once
    /// archived; or, before it is taken in, a file waiting in the inbox or a rejection.
    fn describe(&self, id: &str) -> crate::control::Response {
        use crate::control::Response;
        use serde_json::json;
        if let Some(t) = self.book.get(id) {
            return match serde_json::to_value(t) {
                Ok(v) => Response::data(v),
                Err(e) => Response::error(format!("cannot serialise task `{id}`: {e}")),
            };
        }
        if let Some(outcome) = self.book.outcome(id) {
            let state = match outcome {
                Outcome::Done => "done",
                Outcome::Failed => "failed",
            };
            return Response::data(json!({"id": id, "state": state, "archived": true}));
        }
        // Only a task id is ever looked up as a file name (never `../x` or `/etc/x`).
        if crate::config::validate_name(id).is_err() {
            return Response::fail(
                crate::control::Failure::NotFound,
                format!("no task `{id}`; `dirigent status` lists the tasks"),
            );
        }
        let waiting = ["json", "md"].iter().any(|ext| {
            self.ws
                .inbox()
                .join(format!("{id}.{ext}"))
                .symlink_metadata()
                .is_ok()
        });
        if waiting {
            return Response::data(json!({"id": id, "state": "inbox"}));
        }
        if let Some(r) = self
            .book
            .rejected
            .iter()
            .rev()
            .find(|r| crate::task::id_from_stem(fsutil::split_name(&r.file).0) == id)
        {
            return Response::data(json!({
                "id": id,
                "state": "rejected",
                "reason": r.reason,
                "moved_to": r.moved_to,
            }));
        }
        Response::fail(
            crate::control::Failure::NotFound,
            format!("no task `{id}`; `dirigent status` lists the tasks"),
        )
    }

    /// Records `cancelled` and moves the task file to `failed/`.
    fn settle_cancelled(&mut self, id: &str) {
        let Some(t) = self.book.get(id) else { return };
        let file = t.file.clone();
        let fields = t.spec.as_ref().map(|s| s.fields.clone());
        let snapshot = t.clone();
        self.finishing.insert(id.to_string());
        let (ws, ledger, tx, id, config) = (
            self.ws.clone(),
            self.ledger.clone(),
            self.tx.clone(),
            id.to_string(),
            self.config.clone(),
        );
        tracing::info!(task = %id, "cancelled");
        tokio::spawn(async move {
            // A cancelled task has a report like an escalated one: status, progress.md and the
            // doors point every failed task at `escalations/<id>.md`.
            let prompt = snapshot
                .spec
                .as_ref()
                .map(|s| s.prompt.clone())
                .unwrap_or_default();
            if let Err(e) = escalate::write_report(
                &ws,
                &snapshot,
                &prompt,
                crate::state::CANCELLED_REASON,
                Some(&config),
                &[],
            ) {
                tracing::warn!(task = %id, "cannot write the report of the cancelled task: {e}");
            }
            let records = record(&ledger, &tx, Event::Cancelled { task: id.clone() }).await;
            if !records.is_empty() {
                // Usually in running/; a task put back by a stop may still wait in the inbox.
                let from = if ws.inbox().join(&file).symlink_metadata().is_ok()
                    && ws.running().join(&file).symlink_metadata().is_err()
                {
                    "inbox"
                } else {
                    "running"
                };
                if let Err(e) = claim::move_task(&ws, from, "failed", &file, &id, fields.as_ref()) {
                    tracing::warn!(task = %id, "cannot move the task file to failed/: {e}");
                }
            }
            let _ = tx.send(Msg::Settled { task: id, records });
        });
    }

    /// Appends one event and applies it; on a ledger failure, stops taking work and returns false.
    async fn record_now(&mut self, event: Event) -> bool {
        match self.ledger.append(event).await {
            Ok(r) => {
                self.apply(&[r]);
                true
            }
            Err(e) => {
                self.ledger_failed(e.to_string());
                false
            }
        }
    }

    /// Runs a loop's evaluator command in the background; the round is recorded when it ends.
    fn start_evaluation(&mut self, run: &str, phase: String, round: u32, command: Vec<String>) {
        let key = format!("{run}/{phase}/{round}");
        if !self.evaluating.insert(key.clone()) {
            return; // already running
        }
        tracing::info!(task = run, phase = %phase, round, "evaluating the round with `{}`", command.join(" "));
        let (ws, ledger, tx, run) = (
            self.ws.clone(),
            self.ledger.clone(),
            self.tx.clone(),
            run.to_string(),
        );
        tokio::spawn(async move {
            let log = ws
                .run_dir(&run)
                .join(format!("{phase}-round{round}-evaluator.log"));
            let (passed, feedback) =
                crate::runner::run_evaluator(&ws, &command, &log, Duration::from_secs(30 * 60))
                    .await;
            let ev = Event::LoopRound {
                task: run.clone(),
                phase,
                round,
                passed,
                feedback,
            };
            let records = record(&ledger, &tx, ev).await;
            let _ = tx.send(Msg::Evaluated { run, key, records });
        });
    }

    /// Every phase of a run is complete: record `done` and move its file.
    async fn finish_run(&mut self, run: &str, output: String) {
        let Some(t) = self.book.get(run) else { return };
        let file = t.file.clone();
        let fields = t.spec.as_ref().map(|s| s.fields.clone());
        let ev = Event::Done {
            task: run.to_string(),
            agent: "workflow".into(),
            attempt: 0,
            output,
        };
        match self.ledger.append(ev).await {
            Ok(r) => {
                self.apply(&[r]);
                tracing::info!(task = run, "workflow done");
                self.workflows.remove(run);
                if let Err(e) =
                    claim::move_task(&self.ws, "running", "done", &file, run, fields.as_ref())
                {
                    tracing::warn!(
                        task = run,
                        "cannot move the workflow's task file to done/: {e}"
                    );
                }
                self.keys.remove(run);
            }
            Err(e) => self.ledger_failed(e.to_string()),
        }
    }

    /// A task id may be used for a new file if nobody has it, or if it belongs to a task that
    /// is coming back through the inbox (requeued by a graceful stop). An id a door reserved is
    /// free only for the file that door wrote (`explicit_in`: the file asking for it by name).
    fn id_free(&self, id: &str, explicit_in: Option<&str>) -> bool {
        if let Some(file) = self.reserved.get(id)
            && explicit_in != Some(file.as_str())
        {
            return false;
        }
        match self.book.get(id) {
            None => !self.book.contains(id),
            Some(t) => {
                !t.phase.is_terminal()
                    && !self.keys.contains_key(id)
                    && !self.running.contains_key(id)
                    && !self.finishing.contains(id)
            }
        }
    }

    /// After a restart: close attempts that have no finish record (killing their process group
    /// if it provably still runs), re-queue unfinished tasks whose files are in `running/`,
    /// finish moves a crash interrupted, and take in unknown files found in `running/`.
    async fn recover(&mut self) -> Result<(), DaemonError> {
        let grace = self.config.kill_grace;
        // First the processes the ledger knows, verified by start time and boot id ...
        let mut closing = Vec::new();
        for t in self.book.iter() {
            if let Phase::Running { attempt, agent, .. } = &t.phase {
                let a = t.attempts.iter().rev().find(|a| a.n == *attempt);
                let alive = match a {
                    Some(a) => {
                        spawn::reap_orphan_group(a.pid, a.start_ticks, a.boot_id.as_deref(), grace)
                            .await
                    }
                    None => false,
                };
                closing.push(Event::AttemptFinished {
                    task: t.id.clone(),
                    attempt: *attempt,
                    agent: agent.clone(),
                    class: Class::Interrupted,
                    reason: if alive {
                        "the daemon stopped while this attempt ran; its process group was still alive and was killed".into()
                    } else {
                        "the daemon stopped while this attempt ran".into()
                    },
                    exit_code: None,
                    signal: None,
                    stopped: None,
                    kill_signal: None,
                    leaked: false,
                    retry_in_ms: None,
                    usage: None,
                    stdout_bytes: 0,
                    stderr_bytes: 0,
                    duration_ms: 0,
                });
            }
        }
        // ... then anything else an earlier daemon of this workspace left running (an agent
        // spawned just before a crash, before its start was recorded).
        let root = self.ws.root().to_path_buf();
        let leftovers = tokio::task::spawn_blocking(move || crate::reaper::kill_leftovers(&root))
            .await
            .unwrap_or(0);
        if leftovers > 0 {
            tracing::warn!(
                "killed {leftovers} leftover process(es) of an earlier daemon of this workspace"
            );
        }
        let recs = self.ledger.append_all(closing).await?;
        self.apply(&recs);

        // Which files are in running/ right now (made again if someone removed it).
        let running = self
            .ws
            .open_sub("running")
            .map_err(|cause| DaemonError::Workspace {
                path: self.ws.running().display().to_string(),
                cause,
            })?;
        let mut present: HashSet<String> = running
            .names()
            .map_err(|cause| DaemonError::Workspace {
                path: self.ws.running().display().to_string(),
                cause,
            })?
            .into_iter()
            .filter_map(|n| n.into_string().ok())
            .filter(|n| inbox::is_candidate(n) || n.starts_with(claim::CLAIM_PREFIX))
            .collect();

        let mut claims = Vec::new();
        let mut requeue = Vec::new();
        let mut resettle = Vec::new();
        for t in self.book.iter() {
            let names = [
                t.file.clone(),
                format!("{}.json", t.id),
                format!("{}.md", t.id),
            ];
            let found = names.iter().find(|n| present.contains(*n)).cloned();
            if let Some(name) = &found {
                present.remove(name);
            }
            match (&t.phase, found) {
                (Phase::Done { .. }, Some(name)) => self.finish_move(&name, true),
                (Phase::Failed { .. }, Some(name)) => self.finish_move(&name, false),
                // The attempt succeeded but `done` is not recorded (a crash in between, or a
                // damaged line): settle it from what the attempt left, without running it again.
                (Phase::Pending, found)
                    if t.attempts
                        .last()
                        .is_some_and(|a| a.class == Some(Class::Ok)) =>
                {
                    if let Some(name) = found
                        && name != t.file
                    {
                        claims.push(Event::Claimed {
                            task: t.id.clone(),
                            file: name,
                        });
                    }
                    resettle.push(t.id.clone());
                }
                (Phase::Pending | Phase::Requeued, Some(name)) => {
                    if name != t.file {
                        claims.push(Event::Claimed {
                            task: t.id.clone(),
                            file: name,
                        });
                    }
                    requeue.push(t.id.clone());
                }
                // Its file is not in running/ (and not back in the inbox): someone removed it.
                // The ledger has the task; the file is written again and the task goes on.
                (Phase::Pending, None)
                    if self.ws.inbox().join(&t.file).symlink_metadata().is_err() =>
                {
                    let name = format!("{}{}", t.id, claim::extension(&t.file));
                    let rebuilt = t.spec.as_ref().map(|spec| {
                        running.write_atomic(
                            &name,
                            &claim::rebuild(&spec.fields, &t.id, &name),
                            0o600,
                        )
                    });
                    match rebuilt {
                        Some(Ok(())) => {
                            tracing::warn!(
                                task = %t.id,
                                "its task file was missing from running/; it was written again from the ledger"
                            );
                            if name != t.file {
                                claims.push(Event::Claimed {
                                    task: t.id.clone(),
                                    file: name,
                                });
                            }
                            requeue.push(t.id.clone());
                        }
                        Some(Err(e)) => {
                            tracing::error!(task = %t.id, "cannot write its task file again: {e}");
                            requeue.push(t.id.clone());
                        }
                        None => requeue.push(t.id.clone()),
                    }
                }
                _ => {}
            }
        }
        let recs = self.ledger.append_all(claims).await?;
        self.apply(&recs);
        for id in requeue {
            self.enqueue_or_advance(&id);
        }
        for id in resettle {
            self.resettle(&id);
        }
        // Files in running/ that the ledger does not know: claimed, not yet recorded.
        let mut unknown: Vec<String> = present.into_iter().collect();
        unknown.sort();
        let mut claimed = Vec::new();
        for name in unknown {
            let (stem, _) = fsutil::split_name(&name);
            if let Some(outcome) = self.book.outcome(stem) {
                // A finished task whose file move a crash interrupted (archived in memory).
                self.finish_move(&name, outcome == Outcome::Done);
                continue;
            }
            tracing::info!(file = %name, "found an unrecorded task file in running/; taking it in");
            let original = claim::original_name(&name).unwrap_or(&name).to_string();
            claimed.push(Claimed {
                claim_name: name,
                name: original,
            });
        }
        self.take_in(&running, claimed).await;
        Ok(())
    }

    /// Moves a settled task's file out of `running/` (completing a move a crash interrupted).
    fn finish_move(&self, name: &str, done: bool) {
        let to = if done { "done" } else { "failed" };
        let (stem, _) = fsutil::split_name(name);
        if let Err(e) = claim::move_task(&self.ws, "running", to, name, stem, None) {
            tracing::warn!(
                file = name,
                "cannot move a finished task file out of running/: {e}"
            );
        }
    }

    /// Scans the inbox and takes in every candidate: each is claimed (renamed into
    /// `running/`) before it is read, then accepted or rejected.
    async fn ingest(&mut self) {
        if !self.accepting {
            return;
        }
        let dir = self.ws.inbox();
        if let Some(why) = self.not_claiming() {
            let waiting = inbox::scan(&dir).map(|c| c.len()).unwrap_or(0);
            if waiting > 0 {
                tracing::warn!(
                    "{waiting} task file(s) wait in the inbox: not claiming while {why}"
                );
            }
            return;
        }
        let candidates = match inbox::scan(&dir) {
            Ok(c) => c,
            Err(e) => {
                if let Some(what) = fsutil::exhausted(&e) {
                    self.pause(format!("{what} (reading the inbox: {e})"));
                } else {
                    tracing::error!("cannot read the inbox `{}`: {e}", dir.display());
                }
                return;
            }
        };
        if candidates.is_empty() {
            return;
        }
        let dirs = self
            .ws
            .open_sub("inbox")
            .and_then(|inbox| Ok((inbox, self.ws.open_sub("running")?)));
        let (inbox_dir, running) = match dirs {
            Ok(d) => d,
            Err(e) => {
                if let Some(what) = fsutil::exhausted(&e) {
                    self.pause(format!("{what} (opening `.context/`: {e})"));
                } else {
                    tracing::error!("cannot open the inbox or running/: {e}");
                }
                return;
            }
        };
        if candidates.len() > INGEST_BATCH {
            // Come back for the rest after this batch has been dispatched.
            self.dirty.notify_one();
        }
        let mut claimed = Vec::new();
        for cand in candidates.into_iter().take(INGEST_BATCH) {
            let Some(name) = cand.raw.to_str() else {
                // Not UTF-8: it cannot be claimed under a text name; rejected where it is.
                let reason = "the file name is not valid UTF-8; rename the file".to_string();
                self.reject_unnamed(&dir, &cand.raw, reason).await;
                continue;
            };
            let claim_name = match claim::claim(&inbox_dir, &running, name) {
                Ok(Some(c)) => c,
                Ok(None) => continue, // gone: its writer took it back
                Err(e) => {
                    if let Some(what) = fsutil::exhausted(&e) {
                        self.pause(format!("{what} (claiming `{name}`: {e})"));
                        break;
                    }
                    tracing::error!(file = name, "cannot claim the task file: {e}");
                    continue;
                }
            };
            claimed.push(Claimed {
                claim_name,
                name: name.to_string(),
            });
        }
        self.take_in(&running, claimed).await;
    }

    /// Reads, checks and records claimed files (in `running/` under their claim names, or —
    /// found there after a crash — under any name): ids given in the files first, then ids
    /// made from file names, so a file named like another task's explicit id never takes it.
    async fn take_in(&mut self, running: &confined::Dir, claimed: Vec<Claimed>) {
        let mut parsed = Vec::new();
        for c in claimed {
            match claim::read(running, &c.claim_name, &c.name) {
                Ok(fields) => parsed.push((c, fields)),
                Err(claim::Unreadable::Refused(reason)) => {
                    self.reject(running, &c.claim_name, &c.name, reason).await
                }
                Err(claim::Unreadable::Exhausted(e)) => {
                    // It stays claimed; it is taken in when the pause ends (or at the next start).
                    let what = fsutil::exhausted(&e).unwrap_or("a resource ran out");
                    self.pause(format!("{what} (reading `{}`: {e})", c.name));
                    self.claims_left = true;
                }
            }
        }
        let mut batch_ids: HashSet<String> = HashSet::new();
        let mut accepted: Vec<(Claimed, Box<TaskSpec>)> = Vec::new();
        let mut refused: Vec<(Claimed, String)> = Vec::new();
        let mut spawned_now: HashMap<String, u32> = HashMap::new();
        // Explicit ids first: they were asked for; a name-derived id yields to them.
        parsed.sort_by_key(|(_, f)| f.id.is_none());
        for (c, fields) in parsed {
            let id = claim::choose_id(&fields, &c.name, |id, explicit| {
                !batch_ids.contains(id) && self.id_free(id, explicit.then_some(c.name.as_str()))
            });
            let spec = id
                .and_then(|id| {
                    crate::task::accept(id, fields, &self.config, self.ws.root()).map_err(|e| e.0)
                })
                .and_then(|spec| match &spec.fields.parent {
                    Some(parent) => {
                        // Tasks agents create: bounded per original task, so an agent that
                        // keeps submitting (each task submitting the next) stops.
                        let origin = self.book.origin_of(parent);
                        let made = self.book.spawned.get(&origin).copied().unwrap_or(0)
                            + spawned_now.get(&origin).copied().unwrap_or(0);
                        if made >= self.config.max_spawned_tasks {
                            Err(format!(
                                "created from inside an attempt of `{parent}`: the attempts of `{origin}` and of the tasks they created have created {made} tasks, the limit (`max_spawned_tasks`)"
                            ))
                        } else {
                            *spawned_now.entry(origin).or_default() += 1;
                            Ok(spec)
                        }
                    }
                    None => Ok(spec),
                });
            match spec {
                Ok(spec) => {
                    batch_ids.insert(spec.id.clone());
                    accepted.push((c, Box::new(spec)));
                }
                Err(reason) => refused.push((c, reason)),
            }
        }
        // `after` must name a task that exists: known, in this batch, or waiting in the inbox.
        let mut kept = Vec::with_capacity(accepted.len());
        for (c, spec) in accepted {
            let known = |id: &str| {
                self.book.contains(id) || self.reserved.contains_key(id) || batch_ids.contains(id)
            };
            match crate::submit::unknown_dependency(&self.ws, &spec.fields.after, &known) {
                Some(reason) => refused.push((c, reason)),
                None => kept.push((c, spec)),
            }
        }
        let accepted = kept;
        for (c, reason) in refused {
            self.reject(running, &c.claim_name, &c.name, reason).await;
        }
        self.accept_batch(running, accepted).await;
    }

    async fn accept_batch(
        &mut self,
        running: &confined::Dir,
        mut accepted: Vec<(Claimed, Box<TaskSpec>)>,
    ) {
        if accepted.is_empty() {
            return;
        }
        // `strategy: best` roles: the chain is ordered by the record, before it is recorded.
        let mut scores = None;
        for (_, spec) in accepted.iter_mut() {
            let Some(role) = spec.chain_source.strip_prefix("role:") else {
                continue;
            };
            if !self.config.best_roles.contains(role) {
                continue;
            }
            let scores = scores.get_or_insert_with(|| crate::routing::scores(&self.book));
            self.best_routed += 1;
            // Every tenth such task keeps the configured order, so no agent starves of data.
            if self.best_routed % crate::routing::EXPLORE_EVERY != 0 {
                spec.chain = crate::routing::rank(&spec.chain, scores);
            }
        }
        // Each file gets its task's name in running/, then `received` and `claimed` are
        // recorded together, with one fsync. A crash before that leaves `<id>.<ext>` in
        // running/, which the next start takes in as the same task.
        let mut events = Vec::with_capacity(accepted.len() * 2);
        for (c, spec) in &accepted {
            let want = format!("{}{}", spec.id, claim::extension(&c.name));
            let file = if c.claim_name == want {
                Ok(want)
            } else {
                running.move_into(&c.claim_name, running, &want)
            };
            match file {
                Ok(file) => {
                    self.reserved.remove(&spec.id);
                    events.push(Event::Received {
                        task: spec.id.clone(),
                        file: c.name.clone(),
                        spec: spec.clone(),
                    });
                    events.push(Event::Claimed {
                        task: spec.id.clone(),
                        file,
                    });
                }
                Err(e) => {
                    // Still claimed under its claim name: the next start takes it in.
                    tracing::error!(task = %spec.id, "cannot name the claimed task file: {e}");
                }
            }
        }
        match self.ledger.append_all(events).await {
            Ok(recs) => {
                self.apply(&recs);
                for r in &recs {
                    if let Event::Claimed { task, .. } = &r.event {
                        tracing::info!(task, "received");
                        let task = task.clone();
                        self.enqueue_or_advance(&task);
                    }
                }
            }
            Err(e) => self.ledger_failed(e.to_string()),
        }
    }

    /// Moves a claimed file to `rejected/` and records why.
    async fn reject(&mut self, from: &confined::Dir, from_name: &str, name: &str, reason: String) {
        tracing::warn!(file = %name, "rejected: {reason}");
        let moved = claim::reject(&self.ws, from, from_name, name, &reason);
        self.record_rejection(name, reason, moved).await;
    }

    /// Rejects an inbox file whose name is not UTF-8, moving it by path.
    async fn reject_unnamed(
        &mut self,
        dir: &std::path::Path,
        raw: &std::ffi::OsStr,
        reason: String,
    ) {
        let name = raw.to_string_lossy().into_owned();
        tracing::warn!(file = %name, "rejected: {reason}");
        let safe = claim::printable_name(&name);
        let moved = fsutil::move_into(&dir.join(raw), &self.ws.rejected(), &safe).and_then(|p| {
            let moved = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or(safe);
            let text = format!("error: the task file `{name}` was rejected\n\n{reason}\n");
            self.ws.open_sub("rejected")?.write_atomic(
                &format!("{moved}.error.txt"),
                text.as_bytes(),
                0o600,
            )?;
            Ok(moved)
        });
        self.record_rejection(&name, reason, moved).await;
    }

    async fn record_rejection(
        &mut self,
        file: &str,
        reason: String,
        moved: std::io::Result<String>,
    ) {
        // A task a workflow run submitted that cannot be accepted fails the run, which would
        // otherwise wait for it forever.
        let run = self
            .workflows
            .keys()
            .find(|run| is_child_of(file, run))
            .cloned();
        let moved_to = match moved {
            Ok(m) => m,
            Err(e) => {
                // It stays claimed (or in the inbox); the next start tries again.
                tracing::error!(file = %file, "cannot move a rejected file to rejected/: {e}");
                return;
            }
        };
        let ev = Event::Rejected {
            file: file.to_string(),
            reason: reason.clone(),
            moved_to,
        };
        match self.ledger.append(ev).await {
            Ok(r) => {
                self.apply(&[r]);
                if let Some(run) = run {
                    self.escalate(
                        &run,
                        format!("a task it submitted (`{file}`) was rejected: {reason}"),
                    );
                }
            }
            Err(e) => self.ledger_failed(e.to_string()),
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Started(rec) => self.apply(&[rec]),
            Msg::AttemptDone {
                task,
                records,
                report,
            } => {
                if let Some(run) = self.running.remove(&task)
                    && let Some(slot) = self.slots.get_mut(&run.agent)
                {
                    slot.running -= 1;
                }
                if let (false, Some(what)) = (report.ran, &report.exhausted) {
                    // It never started, so nothing was recorded: it waits for the resource.
                    self.pause(what.clone());
                    if self.accepting {
                        self.enqueue(&task);
                    }
                    return;
                }
                if records.is_empty() {
                    return; // the ledger refused it: ledger_failed already stopped new work
                }
                self.apply(&records);
                let Some(t) = self.book.get(&task) else {
                    return;
                };
                let (attempt, agent) = (
                    t.attempts.last().map_or(0, |a| a.n),
                    t.attempts.last().map(|a| a.agent.clone()),
                );
                tracing::info!(
                    task,
                    agent = agent.as_deref().unwrap_or("?"),
                    attempt,
                    class = report.verdict.class.as_str(),
                    "attempt finished: {}",
                    report.verdict.reason
                );
                match report.verdict.class {
                    Class::Ok => self.settle_done(&task, *report),
                    Class::Cancelled => self.settle_cancelled(&task),
                    Class::Interrupted => {
                        if let Some(what) = &report.exhausted {
                            self.pause(what.clone());
                        }
                        if self.accepting {
                            self.enqueue(&task);
                        }
                    }
                    _ => {
                        let Some(t) = self.book.get(&task) else {
                            return;
                        };
                        if t.chain_pos >= t.chain.len() {
                            let reason = chain_failed(t, &self.config);
                            self.escalate(&task, reason);
                        } else {
                            self.enqueue(&task);
                        }
                    }
                }
            }
            Msg::Settled { task, records } => {
                self.finishing.remove(&task);
                self.keys.remove(&task);
                // A finished run's workflow is no longer needed.
                self.workflows.remove(&task);
                self.apply(&records);
                // A child of a workflow run settled: the run may move on.
                let runs: Vec<String> = self
                    .workflows
                    .keys()
                    .filter(|run| is_child_of(&task, run))
                    .cloned()
                    .collect();
                self.advance_due.extend(runs);
            }
            Msg::Evaluated { run, key, records } => {
                self.evaluating.remove(&key);
                self.apply(&records);
                self.advance_due.insert(run);
            }
            Msg::ResultFailed { task, reason } => {
                self.finishing.remove(&task);
                self.escalate(&task, reason);
            }
            Msg::Paused { what, held } => {
                // The task stays `finishing`: nothing else may touch it until this is done.
                self.pause(what);
                self.held.push(held);
            }
            Msg::LedgerFailed(why) => self.ledger_failed(why),
        }
    }

    /// Stops claiming and starting work because a resource ran out (`what` says which, and
    /// where). Tries again after a backoff (1 s, doubling to 30 s while it keeps failing).
    fn pause(&mut self, what: String) {
        let now = Instant::now();
        if self
            .last_resume
            .is_some_and(|t| now.saturating_duration_since(t) > PAUSE_FORGET)
        {
            self.pause_backoff = PAUSE_FIRST;
        }
        if let Some(p) = &mut self.paused {
            p.what = what;
            return;
        }
        let retry_at = now + self.pause_backoff;
        tracing::warn!(
            "paused: {what}. Nothing new is claimed or started, and finished work is kept; dirigent tries again in {}",
            crate::duration::short(self.pause_backoff)
        );
        self.paused = Some(Pause {
            what,
            since_ms: ledger::now_ms(),
            retry_at,
        });
        self.pause_backoff = (self.pause_backoff * 2).min(PAUSE_MAX);
        self.changed();
    }

    /// The pause's time is up: do the held work again and let dispatch try. What still fails
    /// pauses again, for longer.
    async fn resume(&mut self) {
        let Some(p) = self.paused.take() else { return };
        tracing::info!("resuming after the pause ({})", p.what);
        self.last_resume = Some(Instant::now());
        for held in std::mem::take(&mut self.held) {
            match held {
                Held::Settle { task, report } => {
                    self.finishing.remove(&task);
                    self.settle_done(&task, *report);
                }
                Held::Escalate { snapshot, reason } => self.spawn_escalation(snapshot, reason),
            }
        }
        if std::mem::take(&mut self.claims_left) {
            // Files claimed before the pause but not read then.
            match self.ws.open_sub("running") {
                Ok(running) => {
                    let claimed: Vec<Claimed> = running
                        .names()
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|n| n.into_string().ok())
                        .filter(|n| n.starts_with(claim::CLAIM_PREFIX))
                        .map(|claim_name| Claimed {
                            name: claim::original_name(&claim_name)
                                .unwrap_or(&claim_name)
                                .to_string(),
                            claim_name,
                        })
                        .collect();
                    self.take_in(&running, claimed).await;
                }
                Err(_) => self.claims_left = true,
            }
        }
        self.dirty.notify_one();
        self.changed();
    }

    /// Why nothing may be claimed or started now, if so.
    fn not_claiming(&self) -> Option<String> {
        if let Some(why) = &self.ledger_failed {
            return Some(format!("the ledger cannot be written ({why})"));
        }
        if let Some(why) = self.ledger.paused() {
            return Some(format!("paused: the ledger cannot be written ({why})"));
        }
        self.paused.as_ref().map(|p| format!("paused: {}", p.what))
    }

    /// Starts every queued task that may start now, in queue order.
    fn dispatch(&mut self) {
        if !self.accepting || self.not_claiming().is_some() {
            return;
        }
        let now = Instant::now();
        let now_ms = ledger::now_ms();
        self.stagger_due = None;
        let mut starts: Vec<(String, Arc<Agent>)> = Vec::new();
        // Resources taken by the starts decided in this round (not in `running` yet).
        let mut planned: Vec<BTreeMap<String, f64>> = Vec::new();
        let mut escalations: Vec<(String, String)> = Vec::new();
        let mut total = self.running.len();
        for key in &self.queue {
            if total >= self.config.concurrency {
                break;
            }
            let Some(t) = self.book.get(&key.id) else {
                continue;
            };
            match deps(&self.book, t) {
                Deps::Wait => continue,
                Deps::Failed(reason) => {
                    escalations.push((key.id.clone(), reason));
                    continue;
                }
                Deps::Ready => {}
            }
            // A network retry waits out its backoff.
            if let Some(at) = t.not_before_ms
                && at > now_ms
            {
                wake_at(&mut self.stagger_due, now, now_ms, at);
                continue;
            }
            if let Some(reason) = self.over_budget(t, now_ms) {
                escalations.push((key.id.clone(), reason));
                continue;
            }
            let interrupted = t.interruptions_in_a_row();
            if interrupted >= self.config.max_interruptions {
                escalations.push((
                    key.id.clone(),
                    format!(
                        "its attempts were interrupted {interrupted} times in a row: the daemon stopped or crashed while each ran (the last: {}). If the agent itself stops the daemon, that is why; the log names the sender of each stop signal. Raise `max_interruptions` to allow more",
                        t.attempts.last().map(|a| a.reason.as_str()).unwrap_or("")
                    ),
                ));
                continue;
            }
            // The first agent from the chain's position whose provider may be used now.
            let mut chosen = None;
            let mut cooling_until: Option<u64> = None;
            let mut unusable = Vec::new();
            let today = self.book.spend.get(&crate::state::day_of(now_ms));
            for name in t.chain.iter().skip(t.chain_pos) {
                // Limits, providers and budgets are the agent's, whichever model an entry names;
                // the `agent:model` variant is made only for a start.
                let base = split_entry_base(name);
                let Some(agent) = self.config.agents.get(base) else {
                    unusable.push(format!("`{name}` is no longer configured"));
                    continue;
                };
                if let Some(limit) = self.config.budgets.agents.get(base) {
                    let spent = today
                        .and_then(|d| d.by_agent.get(base))
                        .copied()
                        .unwrap_or(0.0);
                    if spent >= *limit {
                        unusable.push(format!(
                            "`{name}` has spent its daily budget ({} of {} today, UTC)",
                            crate::usage::dollars(spent),
                            crate::usage::dollars(*limit)
                        ));
                        continue;
                    }
                }
                match self.book.availability(&agent.provider, now_ms) {
                    Availability::Ready => {
                        chosen = Some((name, agent));
                        break;
                    }
                    Availability::CoolingDown { until_ms, reason } => {
                        cooling_until = Some(cooling_until.map_or(until_ms, |u| u.min(until_ms)));
                        unusable.push(format!(
                            "`{name}` is cooling down until {} ({reason})",
                            crate::duration::clock(until_ms)
                        ));
                    }
                    Availability::Disabled { reason, .. } if reason.contains("agents enable") => {
                        unusable.push(format!(
                            "`{name}` is disabled after an auth failure: {reason}"
                        ))
                    }
                    Availability::Disabled { reason, .. } => unusable.push(format!(
                        "`{name}` is disabled after an auth failure ({reason}); {}, then `dirigent agents enable {base}`",
                        agent.preset.map_or("fix its credentials", |p| p.login_hint)
                    )),
                }
            }
            let Some((entry, agent)) = chosen else {
                if t.chain_pos >= t.chain.len() {
                    let reason = if t.chain.is_empty() {
                        escalate::no_agents_message(&self.config)
                    } else {
                        chain_failed(t, &self.config)
                    };
                    escalations.push((key.id.clone(), reason));
                } else if let Some(until) = cooling_until {
                    // Nothing else can take it: wait for the first provider to come back.
                    wake_at(&mut self.stagger_due, now, now_ms, until);
                } else {
                    escalations.push((
                        key.id.clone(),
                        format!(
                            "no agent left in the chain can run: {}",
                            unusable.join("; ")
                        ),
                    ));
                }
                continue;
            };
            let base_name = &agent.name;
            let slot = self.slots.entry(base_name.clone()).or_default();
            if agent.max_parallel.is_some_and(|max| slot.running >= max) {
                continue;
            }
            if let Some(last) = slot.last_start
                && !agent.stagger.is_zero()
                && now < last + agent.stagger
            {
                // Only this agent waits; others keep starting.
                let ready = last + agent.stagger;
                self.stagger_due = Some(self.stagger_due.map_or(ready, |d| d.min(ready)));
                continue;
            }
            // Resource groups: what runs plus what this one takes must fit each group, also
            // counting what this round has already decided to start.
            let fits = agent.resources.iter().all(|(group, amount)| {
                let capacity = self.config.resources.get(group).copied().unwrap_or(0.0);
                let held: f64 = self
                    .running
                    .values()
                    .map(|r| &r.resources)
                    .chain(planned.iter())
                    .filter_map(|r| r.get(group))
                    .sum();
                held + amount <= capacity + 1e-9
            });
            if !fits {
                continue;
            }
            // Start-rate limits: the agent's own, and its provider's (shared by its agents).
            let provider_limit = self
                .config
                .providers
                .get(&agent.provider)
                .and_then(|p| p.starts_per_minute);
            let windows: Vec<(String, u32)> = [
                agent
                    .starts_per_minute
                    .map(|l| (format!("agent:{base_name}"), l)),
                provider_limit.map(|l| (format!("provider:{}", agent.provider), l)),
            ]
            .into_iter()
            .flatten()
            .collect();
            let mut limited = false;
            for (key, limit) in &windows {
                let log = self.start_log.entry(key.clone()).or_default();
                while log
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= MINUTE)
                {
                    log.pop_front();
                }
                if log.len() >= *limit as usize {
                    let ready = *log.front().expect("non-empty at the limit") + MINUTE;
                    self.stagger_due = Some(self.stagger_due.map_or(ready, |d| d.min(ready)));
                    limited = true;
                }
            }
            if limited {
                continue;
            }
            for (key, _) in windows {
                self.start_log.entry(key).or_default().push_back(now);
            }
            let slot = self.slots.entry(base_name.clone()).or_default();
            slot.running += 1;
            slot.last_start = Some(now);
            total += 1;
            planned.push(agent.resources.clone());
            let run = self
                .config
                .agent_for(entry)
                .expect("the entry's agent was just found");
            starts.push((key.id.clone(), run));
        }
        for (id, reason) in escalations {
            self.escalate(&id, reason);
        }
        for (id, agent) in starts {
            self.start_attempt(&id, agent);
        }
    }

    /// Why `t` may not start another attempt because of a budget: its own (a workflow run's
    /// covers its tasks), or the day's for all agents. The text has the figures.
    fn over_budget(&self, t: &TaskRecord, now_ms: u64) -> Option<String> {
        use crate::usage::dollars;
        if let Some(daily) = self.config.budgets.daily {
            let spent = self
                .book
                .spend
                .get(&crate::state::day_of(now_ms))
                .map_or(0.0, |d| d.total_usd);
            if spent >= daily {
                return Some(format!(
                    "the daily budget is spent: {} of {} today (UTC); raise `budgets.daily` or retry tomorrow",
                    dollars(spent),
                    dollars(daily)
                ));
            }
        }
        // The workflow run this task belongs to, if any: its budget covers all its tasks.
        let run =
            t.id.match_indices('.')
                .map(|(i, _)| &t.id[..i])
                .find_map(|prefix| {
                    self.book
                        .get(prefix)
                        .filter(|r| r.spec.as_ref().is_some_and(|s| s.fields.workflow.is_some()))
                });
        let owner = run.unwrap_or(t);
        let budget = owner.budget_usd;
        let budget = budget.or(self.config.budgets.task)?;
        let spent = if owner
            .spec
            .as_ref()
            .is_some_and(|s| s.fields.workflow.is_some())
        {
            owner.cost_usd
                + self
                    .book
                    .iter()
                    .filter(|c| is_child_of(&c.id, &owner.id))
                    .map(|c| c.cost_usd)
                    .sum::<f64>()
        } else {
            owner.cost_usd
        };
        (spent >= budget).then(|| {
            format!(
                "the budget is spent: `{}` has cost {} of its {} over {} attempt(s); raise `budget_usd` and `dirigent retry {}`",
                owner.id,
                dollars(spent),
                dollars(budget),
                owner.attempts.len(),
                t.id
            )
        })
    }

    fn dequeue(&mut self, id: &str) {
        if let Some(k) = self.keys.get(id) {
            self.queue.remove(k);
        }
    }

    fn start_attempt(&mut self, id: &str, agent: Arc<Agent>) {
        self.dequeue(id);
        let t = self.book.get(id).expect("queued tasks are in the book");
        let spec = t.spec.clone().expect("unfinished tasks keep their spec");
        let prompt = match compose_prompt(&self.ws, &spec) {
            Ok(p) => p,
            Err(e) => {
                if let Some(slot) = self.slots.get_mut(split_entry_base(&agent.name)) {
                    slot.running -= 1;
                }
                return match e {
                    PromptError::Refused(reason) => self.escalate(id, reason),
                    PromptError::Exhausted(what) => {
                        self.pause(what);
                        self.enqueue(id);
                    }
                };
            }
        };
        let previous = t.attempts.last().and_then(|a| {
            let class = a.class?;
            (class != Class::Ok && class != Class::Interrupted).then(|| PreviousAttempt {
                agent: a.agent.clone(),
                class,
                stdout: self
                    .ws
                    .run_dir(id)
                    .join(format!("{}-{}.stdout", a.n, a.agent)),
                stderr: self
                    .ws
                    .run_dir(id)
                    .join(format!("{}-{}.stderr", a.n, a.agent)),
            })
        });
        // An isolated agent: the lowest instance no running attempt of it uses.
        let base = split_entry_base(&agent.name).to_string();
        let (instance, extra_env) = if agent.isolate {
            let used: HashSet<usize> = self
                .running
                .values()
                .filter(|r| r.agent == base)
                .filter_map(|r| r.instance)
                .collect();
            let n = (0..).find(|n| !used.contains(n)).expect("a free instance");
            let recipe = agent
                .preset
                .and_then(|p| crate::isolation::recipe(p.name))
                .expect("config checked that the preset can be isolated");
            let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
            match crate::isolation::prepare(self.ws.context(), &base, n, recipe, home.as_deref()) {
                Ok((var, dir)) => (Some(n), vec![(var, dir.display().to_string())]),
                Err(e) => {
                    if let Some(slot) = self.slots.get_mut(&base) {
                        slot.running -= 1;
                    }
                    return self.escalate(
                        id,
                        format!("cannot prepare the isolated state directory of `{base}`: {e}"),
                    );
                }
            }
        } else {
            (None, vec![])
        };
        let t = self.book.get(id).expect("queued tasks are in the book");
        let attempt = t.attempts.iter().map(|a| a.n).max().unwrap_or(0) + 1;
        // Network retries this agent has had in a row on this task.
        let retries_used = t
            .attempts
            .iter()
            .rev()
            .take_while(|a| a.agent == agent.name && a.class == Some(Class::Network))
            .count() as u32;
        let plan = AttemptPlan {
            task_id: id.to_string(),
            attempt,
            timeout: spec.fields.timeout.map_or(agent.timeout, |d| d.0),
            idle_timeout: spec.fields.idle_timeout.map(|d| d.0).or(agent.idle_timeout),
            agent: agent.clone(),
            prompt,
            workspace: self.ws.clone(),
            kill_grace: self.config.kill_grace,
            leak_timeout: self.config.leak_timeout,
            previous,
            extra_env,
        };
        let (stop_tx, stop_rx) = watch::channel(None);
        self.running.insert(
            id.to_string(),
            RunningAttempt {
                agent: split_entry_base(&agent.name).to_string(),
                instance,
                resources: agent.resources.clone(),
                stop: stop_tx,
            },
        );
        tracing::info!(task = id, agent = %agent.name, attempt, "starting attempt");
        let ledger = self.ledger.clone();
        let tx = self.tx.clone();
        let prices = self.config.prices.clone();
        tokio::spawn(async move {
            let (task, agent_name) = (plan.task_id.clone(), plan.agent.name.clone());
            let (l2, tx2, task2, agent2) =
                (ledger.clone(), tx.clone(), task.clone(), agent_name.clone());
            // Fired once `started` has reached the engine, so that `AttemptDone` never
            // overtakes it.
            let (started_sent, started_reached) = tokio::sync::oneshot::channel::<()>();
            let report = spawn::run_attempt(&plan, stop_rx, move |info| async move {
                let ev = Event::AttemptStarted {
                    task: task2,
                    attempt,
                    agent: agent2,
                    pid: info.pid,
                    pgid: info.pgid,
                    start_ticks: info.start_ticks,
                    boot_id: info.boot_id,
                    argv0: info.argv0,
                };
                let (written, durable) = l2.append_written(ev);
                tokio::spawn(async move {
                    match durable.await {
                        Ok(rec) => drop(tx2.send(Msg::Started(rec))),
                        Err(e) => drop(tx2.send(Msg::LedgerFailed(e.to_string()))),
                    }
                    drop(started_sent);
                });
                // In the file (if not yet fsynced): a crash of the daemon from here on finds it.
                let _ = written.await;
            })
            .await;
            let _ = started_reached.await;
            let events = finished_events(&plan, attempt, retries_used, &report, &prices);
            let records = match ledger.append_all(events).await {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Msg::LedgerFailed(e.to_string()));
                    vec![]
                }
            };
            let _ = tx.send(Msg::AttemptDone {
                task,
                records,
                report: Box::new(report),
            });
        });
    }

    /// Writes the result, records `done`, moves the file to `done/` — in a task of its own, so a
    /// large result never holds up scheduling. A result that cannot be written where the task
    /// says escalates; one that cannot be written for lack of a resource waits (paused) and is
    /// written when the resource is back: a finished attempt is never thrown away.
    fn settle_done(&mut self, id: &str, report: AttemptReport) {
        let Some(t) = self.book.get(id) else { return };
        let Some(spec) = t.spec.clone() else { return };
        let Some(last) = t.attempts.last() else {
            return;
        };
        let (attempt, agent) = (last.n, last.agent.clone());
        self.finishing.insert(id.to_string());
        let (ws, ledger, tx, file, id) = (
            self.ws.clone(),
            self.ledger.clone(),
            self.tx.clone(),
            t.file.clone(),
            id.to_string(),
        );
        tokio::spawn(async move {
            let output = spec.fields.output.clone();
            let (ws2, id2) = (ws.clone(), id.clone());
            let (written, report) = tokio::task::spawn_blocking(move || {
                let content = match (&report.verdict.result, &report.stdout_capture) {
                    (Some(ResultText::Text(text)), _) => result::Content::Text(text),
                    (_, Some(capture)) => result::Content::Capture(capture),
                    (_, None) => result::Content::Text(""),
                };
                let written = result::write(&ws2, &id2, output.as_deref(), content);
                (written, report)
            })
            .await
            .expect("the result writer does not panic");
            let rel = match written {
                Ok(rel) => rel,
                Err(e) => {
                    let _ = tx.send(match e.exhausted() {
                        Some(what) => Msg::Paused {
                            what: format!("{what} (writing the result of `{id}`: {e})"),
                            held: Held::Settle {
                                task: id,
                                report: Box::new(report),
                            },
                        },
                        None => Msg::ResultFailed {
                            task: id,
                            reason: e.to_string(),
                        },
                    });
                    return;
                }
            };
            let agent_name = agent.clone();
            let done = Event::Done {
                task: id.clone(),
                agent,
                attempt,
                output: rel,
            };
            let records = record(&ledger, &tx, done).await;
            if !records.is_empty()
                && let Err(e) =
                    claim::move_task(&ws, "running", "done", &file, &id, Some(&spec.fields))
            {
                tracing::warn!(task = %id, "cannot move the task file to done/: {e}");
            }
            tracing::info!(task = %id, agent = %agent_name, attempt, "done");
            let _ = tx.send(Msg::Settled { task: id, records });
        });
    }

    /// After a restart: a task whose last attempt succeeded but whose `done` was never recorded
    /// is settled from that attempt's output, judged again, instead of running again.
    fn resettle(&mut self, id: &str) {
        let Some(t) = self.book.get(id) else { return };
        let Some(a) = t.attempts.last() else { return };
        let Some(agent) = self.config.agent_for(&a.agent) else {
            self.enqueue(id);
            return;
        };
        let report = spawn::report_from_capture(&self.ws, id, a, &agent);
        if report.verdict.class == Class::Ok {
            tracing::info!(
                task = id,
                "its attempt {} succeeded before the daemon stopped; its result is written from that attempt's output",
                a.n
            );
            self.settle_done(id, report);
        } else {
            tracing::warn!(
                task = id,
                "its attempt {} succeeded before the daemon stopped, but its output is not usable now ({}); it runs again",
                a.n,
                report.verdict.reason
            );
            self.enqueue(id);
        }
    }

    /// Writes the escalation report, records `escalated`, moves the file to `failed/`, runs
    /// the `on_escalate` hook.
    fn escalate(&mut self, id: &str, reason: String) {
        self.dequeue(id);
        let Some(t) = self.book.get(id) else { return };
        if t.phase.is_terminal() || self.finishing.contains(id) {
            return;
        }
        self.finishing.insert(id.to_string());
        let snapshot: TaskRecord = t.clone();
        tracing::warn!(
            task = id,
            "escalated: {}",
            reason.lines().next().unwrap_or("")
        );
        self.spawn_escalation(Box::new(snapshot), reason);
    }

    /// The work of [`Engine::escalate`], in a task of its own (also when a paused escalation
    /// is done again).
    fn spawn_escalation(&self, snapshot: Box<TaskRecord>, reason: String) {
        // A workflow run's report lists its tasks.
        let prefix = format!("{}.", snapshot.id);
        let children: Vec<TaskRecord> = if snapshot
            .spec
            .as_ref()
            .is_some_and(|s| s.fields.workflow.is_some())
        {
            self.book
                .iter()
                .filter(|c| c.id.starts_with(&prefix))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        let (ws, ledger, tx, hook, config) = (
            self.ws.clone(),
            self.ledger.clone(),
            self.tx.clone(),
            self.config.on_escalate.clone(),
            self.config.clone(),
        );
        tokio::spawn(async move {
            let prompt = snapshot
                .spec
                .as_ref()
                .map(|s| s.prompt.clone())
                .unwrap_or_default();
            if let Err(e) =
                escalate::write_report(&ws, &snapshot, &prompt, &reason, Some(&config), &children)
            {
                if let Some(what) = fsutil::exhausted(&e) {
                    let _ = tx.send(Msg::Paused {
                        what: format!(
                            "{what} (writing the escalation report of `{}`: {e})",
                            snapshot.id
                        ),
                        held: Held::Escalate { snapshot, reason },
                    });
                    return;
                }
                tracing::error!(task = %snapshot.id, "cannot write the escalation report: {e}");
            }
            let ev = Event::Escalated {
                task: snapshot.id.clone(),
                reason,
                attempts: snapshot.attempts.len() as u32,
            };
            let records = record(&ledger, &tx, ev).await;
            let fields = snapshot.spec.as_ref().map(|s| s.fields.clone());
            if !records.is_empty()
                && let Err(e) = claim::move_task(
                    &ws,
                    "running",
                    "failed",
                    &snapshot.file,
                    &snapshot.id,
                    fields.as_ref(),
                )
            {
                tracing::warn!(task = %snapshot.id, "cannot move the task file to failed/: {e}");
            }
            let _ = tx.send(Msg::Settled {
                task: snapshot.id.clone(),
                records,
            });
            if let Some(hook) = hook {
                escalate::run_hook(&ws, &hook, &snapshot.id, Duration::from_secs(60)).await;
            }
        });
    }

    /// Graceful stop: terminate running attempts, wait for them and for settling tasks, put
    /// unfinished task files back into the inbox, record it all.
    async fn shutdown(&mut self) {
        self.accepting = false;
        for run in self.running.values() {
            let _ = run.stop.send(Some(crate::judge::StopCause::Shutdown));
        }
        loop {
            // Work held for a resource is not waited for: the ledger has what the next start
            // needs to do it (a successful attempt without `done` is settled again).
            for held in std::mem::take(&mut self.held) {
                self.finishing.remove(held.task());
            }
            if self.running.is_empty() && self.finishing.is_empty() {
                break;
            }
            match self.rx.recv().await {
                Some(msg) => self.handle(msg),
                None => break,
            }
        }
        let dirs = self
            .ws
            .open_sub("running")
            .and_then(|r| Ok((r, self.ws.open_sub("inbox")?)));
        let (running, inbox) = match dirs {
            Ok(d) => d,
            Err(e) => {
                tracing::error!("cannot open running/ or the inbox to put tasks back: {e}");
                return;
            }
        };
        let mut events = Vec::new();
        for t in self.book.iter() {
            if t.phase.is_terminal() || t.phase == Phase::Requeued {
                continue;
            }
            if running.kind(&t.file) != Some(confined::Kind::File) {
                continue;
            }
            let name = format!("{}{}", t.id, claim::extension(&t.file));
            match running.move_into(&t.file, &inbox, &name) {
                Ok(file) => events.push(Event::Requeued {
                    task: t.id.clone(),
                    file,
                }),
                Err(e) => {
                    tracing::error!(task = %t.id, "cannot move the task file back to the inbox: {e}")
                }
            }
        }
        let count = events.len();
        events.push(Event::DaemonStopped {
            pid: std::process::id(),
        });
        match self.ledger.append_all(events).await {
            Ok(recs) => self.apply(&recs),
            Err(e) => tracing::error!("cannot record the shutdown in the ledger: {e}"),
        }
        if count > 0 {
            tracing::info!("{count} unfinished task(s) were put back into the inbox");
        }
        self.write_progress();
    }
}

/// Appends one event for a task spawned by the engine. A ledger failure is reported to the
/// engine (which stops taking work) and yields no records.
/// The events that close an attempt: `attempt_finished` (with the backoff when a network
/// failure is retried) and, for a rate limit or an auth failure, what it means for the provider.
/// One batch, so a crash never records the failure without its consequence.
fn finished_events(
    plan: &AttemptPlan,
    attempt: u32,
    retries_used: u32,
    report: &AttemptReport,
    prices: &std::collections::BTreeMap<String, crate::usage::Price>,
) -> Vec<Event> {
    let agent = &plan.agent;
    let class = report.verdict.class;
    let retry_in_ms = (class == Class::Network && retries_used < agent.retry.attempts).then(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let spread = f64::from(nanos % 1000) / 1000.0;
        agent.retry.delay_for(retries_used, spread).as_millis() as u64
    });
    let mut events = vec![Event::AttemptFinished {
        task: plan.task_id.clone(),
        attempt,
        agent: agent.name.clone(),
        class,
        reason: report.verdict.reason.clone(),
        exit_code: report.exit_code,
        signal: report.signal,
        stopped: report.stopped,
        kill_signal: report.kill_signal,
        leaked: report.leaked,
        stdout_bytes: report.stdout_bytes,
        stderr_bytes: report.stderr_bytes,
        duration_ms: report.duration.as_millis() as u64,
        retry_in_ms,
        usage: report.verdict.usage.clone().map(|mut u| {
            crate::usage::price(&mut u, agent.model.as_deref(), prices);
            u
        }),
    }];
    match class {
        Class::RateLimit => events.push(Event::ProviderCooldown {
            provider: agent.provider.clone(),
            agent: agent.name.clone(),
            task: plan.task_id.clone(),
            until_ms: report
                .verdict
                .resets_at_ms
                .unwrap_or_else(|| ledger::now_ms() + agent.cooldown.as_millis() as u64),
            reason: report.verdict.reason.clone(),
        }),
        Class::Auth => events.push(Event::ProviderDisabled {
            provider: agent.provider.clone(),
            agent: agent.name.clone(),
            task: plan.task_id.clone(),
            reason: report.verdict.reason.clone(),
        }),
        _ => {}
    }
    events
}

async fn record(ledger: &Ledger, tx: &mpsc::UnboundedSender<Msg>, event: Event) -> Vec<Record> {
    match ledger.append(event).await {
        Ok(r) => vec![r],
        Err(e) => {
            let _ = tx.send(Msg::LedgerFailed(e.to_string()));
            vec![]
        }
    }
}

/// Returns freed heap pages to the system (glibc keeps them otherwise: after a burst of ten
/// thousand tasks the daemon would hold the burst's peak for weeks).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator has marked free.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// `now + d`, saturating far in the future instead of overflowing (a reset time a CLI printed
/// can be anything).
pub(crate) fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(60 * 60 * 24 * 365 * 30))
}

/// Asks for a dispatch round at Unix time `at_ms` (no later than one already due).
fn wake_at(due: &mut Option<Instant>, now: Instant, now_ms: u64, at_ms: u64) {
    let at = later(now, Duration::from_millis(at_ms.saturating_sub(now_ms)));
    *due = Some(due.map_or(at, |d| d.min(at)));
}

/// Why a task whose chain is used up escalates: the chain, then what to do when the
/// attempts show a cause with a fix (a login, an installation, the network).
fn chain_failed(t: &TaskRecord, config: &Config) -> String {
    let chain = format!("every agent in the chain failed ({})", t.chain.join(" → "));
    match crate::advice::in_short(&t.attempts, config) {
        Some(advice) => format!("{chain}: {advice}"),
        None => chain,
    }
}

/// The agent of a chain entry (`claude` of `claude:sonnet`).
fn split_entry_base(entry: &str) -> &str {
    crate::config::split_entry(entry).0
}

/// The window of `starts_per_minute`.
const MINUTE: Duration = Duration::from_secs(60);

/// One line of `list`: what a client needs to pick a task, without its prompt or attempts.
fn summary(t: &TaskRecord) -> serde_json::Value {
    let mut v = serde_json::json!({
        "id": t.id,
        "title": t.title,
        "state": t.phase.label(),
        "chain": t.chain,
        "attempts": t.attempts.len(),
        "received_ms": t.received_ms,
    });
    if let Some(a) = t.attempts.last() {
        v["agent"] = serde_json::json!(a.agent);
    }
    match &t.phase {
        Phase::Done { output, .. } => v["output"] = serde_json::json!(output),
        Phase::Failed { reason, .. } => v["reason"] = serde_json::json!(reason),
        _ => {}
    }
    v
}

/// Whether `id` names a task (or task file) a workflow run submitted: `<run>.<…>`.
pub fn is_child_of(id: &str, run: &str) -> bool {
    id.strip_prefix(run)
        .is_some_and(|rest| rest.starts_with('.'))
}

enum Deps {
    Ready,
    Wait,
    Failed(String),
}

fn deps(book: &TaskBook, t: &TaskRecord) -> Deps {
    for dep in &t.after {
        match book.outcome(dep) {
            Some(Outcome::Done) => {}
            Some(Outcome::Failed) => {
                return Deps::Failed(format!("it runs after `{dep}`, which failed"));
            }
            None => return Deps::Wait,
        }
    }
    Deps::Ready
}

/// Most bytes of one context file put into a prompt.
const MAX_CONTEXT_FILE: u64 = 4 * 1024 * 1024;

/// The prompt an agent receives: the task's prompt, then each `context` file (under
/// `.context/`) and each `files` entry (workspace files), each in its own fenced section. The
/// paths are checked again with the acceptance rules (the spec may come from an old ledger)
/// and read through no link.
fn compose_prompt(ws: &Workspace, spec: &TaskSpec) -> Result<String, PromptError> {
    if spec.fields.context.is_empty() && spec.fields.files.is_empty() {
        return Ok(spec.prompt.clone());
    }
    let refused =
        |label: &str, e: String| PromptError::Refused(format!("context file `{label}`: {e}"));
    let open = |r: std::io::Result<confined::Dir>| {
        r.map_err(|e| match fsutil::exhausted(&e) {
            Some(what) => PromptError::Exhausted(format!("{what} (opening the workspace: {e})")),
            None => PromptError::Refused(format!("cannot open the workspace: {e}")),
        })
    };
    let mut out = spec.prompt.clone();
    out.push_str("\n\n---\n");
    let mut dirs: Option<(confined::Dir, confined::Dir)> = None;
    let sources = spec
        .fields
        .context
        .iter()
        .map(|c| (true, c))
        .chain(spec.fields.files.iter().map(|f| (false, f)));
    for (in_context, rel) in sources {
        let label = if in_context {
            format!(".context/{rel}")
        } else {
            rel.clone()
        };
        let path = if in_context {
            confined::context_path("context", rel)
        } else {
            confined::workspace_path("files", rel)
        }
        .map_err(|e| refused(&label, e.to_string()))?;
        if dirs.is_none() {
            dirs = Some((open(ws.open_context())?, open(ws.open_root())?));
        }
        let (ctx, root) = dirs.as_ref().expect("just opened");
        let base = if in_context { ctx } else { root };
        let text =
            confined::read_text(base, &path, MAX_CONTEXT_FILE).map_err(
                |e| match fsutil::exhausted(&e) {
                    Some(what) => {
                        PromptError::Exhausted(format!("{what} (reading `{label}`: {e})"))
                    }
                    None => refused(&label, format!("cannot be read: {e}")),
                },
            )?;
        out.push_str(&format!("\n## {label}\n\n{}\n", escalate::fenced(&text)));
    }
    Ok(out)
}

/// Why the prompt could not be put together.
enum PromptError {
    /// A context file is missing, too big, a link …: the task escalates.
    Refused(String),
    /// A resource ran out while reading: the task waits.
    Exhausted(String),
}

/// The pid of the daemon running on `ws`, if one holds the workspace lock.
pub fn running_daemon(ws: &Workspace) -> Option<String> {
    let file = std::fs::File::open(ws.lock()).ok()?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockSharedNonblock) {
        Ok(_unlocked_on_drop) => None,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Some(
            std::fs::read_to_string(ws.lock())
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into()),
        ),
        Err(_) => None,
    }
}
