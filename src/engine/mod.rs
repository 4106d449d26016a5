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
//!
//! The rooms, each an `impl Engine` block with one responsibility:
//! - [`daemon`]: assembly — workspace, lock, ledger, doors — and the loop's start and end;
//! - `event_loop`: what wakes the engine, reloads, pausing and resuming, shutdown;
//! - `intake`: where a task is claimed, checked and received (or rejected);
//! - `recovery`: what a crash left behind, at start;
//! - `dispatch`: which queued task starts next, on which agent, or why it waits;
//! - `attempt_start`: where an attempt is started;
//! - `settling`: where an attempt's verdict settles the task (done, next agent, escalated);
//! - `workflow_runs`: the workflow runner's decisions carried out;
//! - `requests`: the doors' requests.
//!
//! This file holds the engine's state and the one way it changes: [`Engine::apply`] of records
//! already on disk.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;
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
use crate::task_file::{self, Place};
use crate::workspace::Workspace;

mod admission;
mod attempt_start;
pub mod daemon;
mod dispatch;
mod event_loop;
mod fleet_outcomes;
mod fleet_tasks;
mod intake;
mod lifecycle;
mod merging;
mod recovery;
mod requests;
mod run_pruning;
mod settling;
mod tree_release;
mod work_check;
mod workflow_runs;
mod worktrees;

use crate::duration::later;
pub use crate::runner::is_child_of;
pub use daemon::{DaemonError, Options, run, run_with_options, running_daemon};

// Shared by the rooms.
use admission::MINUTE;
use attempt_start::MAX_CONTEXT_FILE;
use dispatch::{chain_failed, split_entry_base};
use event_loop::release_free_memory;
use lifecycle::{Live, LiveTasks, RunningAttempt};
use settling::finished_events;

/// Finished tasks the daemon keeps in full (for progress.md); older ones shrink to id → outcome.
const KEEP_FINISHED: usize = 1000;

/// [`KEEP_FINISHED`]; a debug build takes `DIRIGENT_KEEP_FINISHED` instead, so tests reach
/// archiving without a thousand tasks.
fn keep_finished() -> usize {
    #[cfg(debug_assertions)]
    if let Some(n) = std::env::var("DIRIGENT_KEEP_FINISHED")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    KEEP_FINISHED
}

/// How long after a change `progress.md` is rewritten (changes in between are coalesced).
const PROGRESS_DELAY: Duration = Duration::from_millis(100);

/// Tasks settled before free memory is given back to the system, once the queue drains.
const TRIM_AFTER: u64 = 256;

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
            Held::Escalate { snapshot, .. } => snapshot.id(),
        }
    }
}

#[derive(Default)]
struct AgentSlot {
    running: usize,
    last_start: Option<Instant>,
}

/// Messages to the engine from the tasks it spawned.
enum Msg {
    /// An attempt's agent has ended, its process group is gone and its end is written to the
    /// ledger (not yet fsynced; `AttemptDone` follows once it is). Its slot is free from now:
    /// waiting for the disk runs no agent.
    AgentGone {
        task: String,
    },
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
        /// `phase/round`, and which evaluator of that round.
        key: String,
        id: u64,
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
    /// From the fleet component (fleet mode): carried out by the loop, in order.
    Fleet(crate::fleet::ToEngine),
    /// Records a spawned task wrote that the book applies: an attempt's child runs (its
    /// `attempt_started` on disk), a worktree made, a merge step.
    Recorded(Vec<Record>),
    /// A finished task's worktree was released, clean, into the pool.
    TreeFreed(crate::git::Tree),
    /// The giving up of `task`'s tree ended (its `worktree_removed` in `records`, none when it
    /// failed): the tree is no longer on its way out.
    TreeGivenUp {
        task: String,
        records: Vec<Record>,
    },
    /// The old tree of the retried `task` is given up (`pooled`: it went back to the pool), or
    /// could not be (logged): the task may run in a new tree now.
    TreeRetired {
        task: String,
        pooled: Option<crate::git::Tree>,
    },
    /// Run directories that last changed before `keep_runs` (name, Unix ms), to be given up
    /// if their tasks have finished.
    RunsOld(Vec<(String, u64)>),
    /// A pass over the run directories ended (see `run_pruning`).
    RunsPruned(run_pruning::Emptied),
    /// A merge of `task`'s branch into `target` ended.
    MergeEnded {
        task: String,
        target: String,
        end: merging::MergeEnd,
    },
    /// The work of `task`'s attempt ended without its last word (`how`: it panicked — a bug —,
    /// or returned early): its agent's group is gone (the attempt's guard kills it); the task
    /// escalates, its attempt's end recorded if its start was — once `started` resolves (the
    /// attempt's start, if one was recorded, has reached the engine).
    AttemptLost {
        task: String,
        how: Lost,
        started: Option<tokio::sync::oneshot::Receiver<()>>,
    },
    /// An attempt ended with no verdict: its worktree could not be readied, or its work was
    /// lost (after [`Msg::AttemptLost`]). The task escalates with `reason`, or waits when
    /// `exhausted` names what ran out.
    AttemptUnjudged {
        task: String,
        reason: String,
        exhausted: Option<String>,
    },
}

/// How the work of an attempt ended without its last word ([`Msg::AttemptLost`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lost {
    /// It panicked, there or in a step it ran on another thread: a bug.
    Panicked,
    /// It returned without a verdict: a bug.
    NoVerdict,
    /// The ledger refused a record it needed: the engine knows (it stopped taking work), and
    /// the next start settles the task.
    LedgerRefused,
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Lost::Panicked => "panicked",
            Lost::NoVerdict => "ended without a verdict",
            Lost::LedgerRefused => "could not write the ledger",
        })
    }
}

struct Engine {
    /// Fleet mode: the link to the fleet component (`None` on one machine).
    fleet: Option<crate::fleet::Link>,
    /// Messages from the fleet component not yet carried out (they need the ledger).
    fleet_waiting: Vec<crate::fleet::ToEngine>,
    /// Fleet mode: the agents this node last told the fleet it runs (see
    /// [`Engine::tell_fleet_agents`]).
    fleet_agents: Vec<String>,
    /// Tasks taken off the fleet's queue that go back to it (found at start).
    hand_backs: Vec<String>,
    /// Fleet mode: the other workers' starts in the last minute, by `provider:NAME` window and
    /// worker (converted to this machine's clock when heard).
    starts_elsewhere: HashMap<String, HashMap<String, Vec<Instant>>>,
    /// What the engine is doing with each task it handles: queued, running, finishing …
    live: LiveTasks,
    /// The text the config was last read from (`None`: the embedded default), valid or not, so
    /// that a file event that changed nothing does not reload (nor report a rejection twice).
    config_text: Option<String>,
    /// The text of the configuration in force: a reload says `reloaded` only when the new one
    /// means something else.
    running_text: Option<String>,
    /// The service manager's notify socket, when there is one.
    notifier: Option<crate::service::Notifier>,
    /// Next `WATCHDOG=1`, sent from this loop so that a stuck loop is noticed.
    watchdog_due: Option<Instant>,
    /// Permit stored by the inbox watcher (and by `ingest` when it left files for later);
    /// consumed by the loop, which scans.
    dirty: Arc<Notify>,
    ws: Workspace,
    config: Arc<Config>,
    /// Receiver: the notifier, which takes its destinations from each configuration the
    /// engine loads. Sent on every reload.
    config_watch: watch::Sender<Arc<Config>>,
    ledger: Ledger,
    book: TaskBook,
    slots: HashMap<String, AgentSlot>,
    /// Recent starts (at most the last minute's) per `agent:NAME` and `provider:NAME` that has a
    /// `starts_per_minute` limit.
    start_log: HashMap<String, std::collections::VecDeque<Instant>>,
    /// Tasks routed by a `strategy: best` role so far (every tenth explores).
    best_routed: u64,
    /// The git repository the workspace is in, once an editing task needed it.
    repo: Option<crate::git::Repo>,
    /// Verified branches waiting to be merged, per target (see `merging`).
    merges: merging::MergeQueue,
    /// Worktrees of failed tasks kept for a human, with when (Unix ms) they go.
    kept_trees: Vec<(u64, String)>,
    /// Tasks being discarded: their tree and branch go as soon as they settle.
    discarding: HashSet<String>,
    /// Worktrees finished tasks gave back, ready for the next task (at most `concurrency`).
    tree_pool: Vec<crate::git::Tree>,
    /// Tasks whose tree is being given up (the git work runs, or its record is not applied
    /// yet): until the book says `removed`, the tree is not theirs to give up again — a second
    /// release would put one directory in the pool twice.
    trees_leaving: HashSet<String>,
    /// The highest `slot-<n>` a worktree directory has had.
    next_slot: u64,
    /// Cloned into every attempt and settle task; the receiver is `rx`. The engine keeps this
    /// sender, so the channel stays open for as long as the engine exists.
    tx: mpsc::UnboundedSender<Msg>,
    rx: mpsc::UnboundedReceiver<Msg>,
    /// Every task the engine spawned: attempts, settling, escalations with their hook, loop
    /// evaluations. A stop waits for them all; dropping the engine aborts them, and an aborted
    /// attempt or side command kills its whole process group.
    tasks: JoinSet<()>,
    /// The `on_escalate` hooks hold receivers; `true` terminates their process groups, as a
    /// stop does to attempts. (Loop evaluators have a stop each, held by their run.)
    side_stop: watch::Sender<bool>,
    /// The last loop evaluator's id.
    evaluators: u64,
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
    /// Inbox files found by the last scan and not taken in yet, oldest first. The inbox is
    /// scanned again only once these are taken: a scan reads and sorts every file waiting
    /// there, and doing that for every batch made a big drop cost more per task the bigger it
    /// was.
    inbox_backlog: crate::inbox::Backlog,
    /// Why task files are left in the inbox for now, while the tasks taken in and not finished
    /// hold `queue_in_memory` of specs (prompts, mostly): taking more in would hold
    /// them in memory too. Cleared (and the inbox looked at again) once they hold less.
    intake_held: Option<String>,
    /// When the inbox was last read while intake was held back.
    held_scan_at: Option<Instant>,
    /// Ids that doors have given out for files not taken in yet (id → the inbox file), so a
    /// file dropped with a name that maps to the same id cannot take it.
    reserved: HashMap<String, String>,
    /// Ids that a task taken in named in its `after` before they were tasks themselves (they
    /// waited in the inbox): only such a task, once taken in, can close a circle of `after`,
    /// so only it is searched for one (see `intake`). Rebuilt from the book at each start.
    named_ahead: HashSet<String>,
    /// The tasks workflow runs wrote into the inbox and that are not taken in yet, by id: a
    /// digest of their fields as written (see `sent_digest`), so that the intake knows a run's
    /// own task however the workspace has changed since. Empty after a restart: then the
    /// runner is asked what it wants.
    sent_children: HashMap<String, u64>,
    /// Tasks whose running merge a `dirigent merge` joined: its end is recorded even when it
    /// waits for the same reason as before, so the joined client hears it.
    merge_answer_owed: HashSet<String>,
    sent_hasher: std::collections::hash_map::RandomState,
    progress_due: Option<Instant>,
    /// How long `progress.md` took to render and write the last time (it paces the next).
    progress_cost: Duration,
    /// Tasks settled since free memory was last given back (see `give_memory_back`).
    settled_since_trim: u64,
    stagger_due: Option<Instant>,
    rescan_due: Instant,
    /// What `.context/` was at the start (see `Workspace::context_id`).
    context_id: Option<(u64, u64)>,
    /// Why the daemon stops of its own accord (its `.context/` was replaced): set, the loop
    /// ends and the daemon stops as at a signal, then fails with this.
    stop_self: Option<String>,
    /// The next look for old run directories to give up.
    prune_due: Instant,
    /// A pass over the run directories is under way.
    pruning: bool,
    /// Told how many tasks are live, so that a big queue's compaction waits for it to drain.
    compactor: crate::compact::Compactor,
}

impl Engine {
    fn apply(&mut self, records: &[Record]) {
        for r in records {
            // One clear message when a provider changes state, not one per task.
            match &r.event {
                Event::ProviderDisabled {
                    worker: None,
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
                    worker: None,
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
        if self.intake_held.is_some() && self.book.spec_bytes() < self.config.queue_in_memory {
            tracing::info!("taking task files in again: the tasks taken in hold less now");
            self.intake_held = None;
            self.dirty.notify_one();
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

    /// Records events from the loop without waiting for them: a task of its own writes them
    /// and sends them back to be applied.
    pub(super) fn record_later(&mut self, events: Vec<Event>) {
        let (ledger, tx) = (self.ledger.clone(), self.tx.clone());
        self.tasks.spawn(async move {
            match ledger.append_all(events).await {
                Ok(records) => drop(tx.send(Msg::Recorded(records))),
                Err(e) => drop(tx.send(Msg::LedgerFailed(e.to_string()))),
            }
        });
    }

    /// Appends events (one fsync) and applies them: the engine's one way to change its state
    /// from its own loop. On a ledger failure it stops taking work and returns `None`. (Tasks
    /// the engine spawned write with [`record`] and send the records back.)
    async fn record_all(&mut self, events: Vec<Event>) -> Option<Vec<Record>> {
        match self.ledger.append_all(events).await {
            Ok(records) => {
                self.apply(&records);
                Some(records)
            }
            Err(e) => {
                self.ledger_failed(e.to_string());
                None
            }
        }
    }

    /// [`Engine::record_all`] of one event; false when the ledger refused it.
    async fn record_now(&mut self, event: Event) -> bool {
        self.record_all(vec![event]).await.is_some()
    }
}

/// Appends one event for a task spawned by the engine. A ledger failure is reported to the
/// engine (which stops taking work) and yields no records.
async fn record(ledger: &Ledger, tx: &mpsc::UnboundedSender<Msg>, event: Event) -> Vec<Record> {
    match ledger.append(event).await {
        Ok(r) => vec![r],
        Err(e) => {
            let _ = tx.send(Msg::LedgerFailed(e.to_string()));
            vec![]
        }
    }
}

/// Asks for a dispatch round at Unix time `at_ms` (no later than one already due).
fn wake_at(due: &mut Option<Instant>, now: Instant, now_ms: u64, at_ms: u64) {
    let at = later(now, Duration::from_millis(at_ms.saturating_sub(now_ms)));
    *due = Some(due.map_or(at, |d| d.min(at)));
}
