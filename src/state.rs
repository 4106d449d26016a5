//! Task state as a fold over ledger records. The daemon applies every record it writes; `status`,
//! `progress.md` and a restarting daemon replay the file through the same [`TaskBook::apply`], so
//! there is exactly one definition of what a sequence of events means.
//!
//! A task's record is `state/task_record.rs`; providers and spending `state/providers.rs`.
//! (Its length past ~800 lines is the fold's tests, kept beside the fold they pin down.)

mod archive;
mod providers;
mod task_record;
mod task_table;

use providers::SPEND_DAYS;
pub use providers::{Availability, DaySpend, Disabled, ProviderState, Spending, day_of};
pub use task_record::{
    AttemptSummary, LoopRound, MAX_DIFF, MergeState, Resolve, TaskMore, TaskProgress, TaskRecord,
    WorktreeState, with_prompts_cut,
};
use task_record::{More, Names, Progress};

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::judge::Class;
use crate::ledger::{Event, Record};
use crate::packed_spec::{Held, PackedSpec};
use crate::task::TaskSpec;

/// The reason a cancelled task failed with.
pub const CANCELLED_REASON: &str = "cancelled by the user";

/// Why a task taken off the fleet's queue ended here without an outcome.
pub const HANDED_BACK_REASON: &str =
    "handed back to the fleet: this worker stopped before it ended; another worker runs it";

/// A task's part in a fleet (`cluster:`), when it has one.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "part", rename_all = "snake_case")]
pub enum FleetPart {
    /// Accepted here and put on the fleet's queue; `worker` ran it once its outcome is back.
    Published {
        subject: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        worker: Option<String>,
        /// How many times it was retried (`dirigent retry`): each round is a new task for the
        /// fleet, with a key of its own.
        #[serde(default, skip_serializing_if = "is_zero_u32")]
        round: u32,
        /// Its message's sequence in the fleet's stream (`0`: not known).
        #[serde(default, skip_serializing_if = "is_zero_u64")]
        seq: u64,
        /// An editing task: the base commit it went out with.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        base: Option<String>,
    },
    /// Retried after the fleet ran it: it goes onto the queue again as round `round`.
    Retry { round: u32 },
    /// Taken off the queue to run here for the node in `key` (`NODE.ID`); `won` once its
    /// outcome was claimed (`false`: another worker's stood first).
    Taken {
        key: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        won: Option<bool>,
        /// An editing task: where it works here and where its work goes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        edit: Option<crate::fleet::edits::EditHere>,
    },
}

/// Where a task is in its life.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Phase {
    /// Accepted, waiting for a slot (or for the tasks in `after`).
    Pending,
    /// An attempt is running.
    Running {
        attempt: u32,
        agent: String,
        since_ms: u64,
    },
    Done {
        agent: String,
        output: String,
        finished_ms: u64,
    },
    /// The whole chain failed.
    Failed { reason: String, finished_ms: u64 },
    /// Put back into the inbox by a graceful stop.
    Requeued,
    /// Its work is committed and verified on its branch, and in the merge queue.
    Merging,
    /// Its verified work waits to be merged: for `dirigent merge` (`merge: manual`), or for
    /// the user's checkout of the target to be clean; `reason` says which and what to do.
    MergeWaiting { reason: String },
}

impl Phase {
    pub fn is_terminal(&self) -> bool {
        matches!(self, Phase::Done { .. } | Phase::Failed { .. })
    }
    /// What a list may be filtered by: every [`Phase::label`] in a task's usual order, and
    /// `cancelled` (the failed tasks the user cancelled, as [`Phase::shown`] says).
    pub const FILTERS: [&'static str; 8] = [
        "pending",
        "running",
        "merging",
        "merge_waiting",
        "done",
        "failed",
        "cancelled",
        "requeued",
    ];

    pub fn label(&self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Running { .. } => "running",
            Phase::Done { .. } => "done",
            Phase::Failed { .. } => "failed",
            Phase::Requeued => "requeued",
            Phase::Merging => "merging",
            Phase::MergeWaiting { .. } => "merge_waiting",
        }
    }

    /// The word shown to people: [`Phase::label`], except that a task the user cancelled is
    /// `cancelled` (it is `failed` in records and filters, where it ends like one).
    pub fn shown(&self) -> &'static str {
        match self {
            Phase::Failed { reason, .. } if reason == CANCELLED_REASON => "cancelled",
            other => other.label(),
        }
    }
}

/// A rejected file, as remembered for `status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RejectedFile {
    pub file: String,
    pub reason: String,
    pub moved_to: String,
    pub ts: u64,
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

fn is_zero_f64(v: &f64) -> bool {
    *v == 0.0
}

/// How many rejections `status` remembers (the ledger keeps all of them).
const REJECTED_KEPT: usize = 100;

/// How a finished task ended, all that is kept of it once its full record is archived.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Done,
    Failed,
}

/// How the daemon's `config_rejected` ends when its config file was deleted while it ran.
pub const DELETED_CONFIG_END: &str = "was deleted; the running configuration stays in force (restart the daemon to use the embedded default)";

/// All tasks, in arrival order.
///
/// A long-running daemon keeps full records only for unfinished tasks and the most recent
/// `keep_finished` finished ones; older finished tasks shrink to id → [`Outcome`], which is all
/// that duplicate-id checks and `after` need. (The CLI replays with no limit.)
/// Serialisable as a whole: a snapshot of the ledger (see `compact`) is a `TaskBook`.
#[derive(Default, Debug, Serialize, Deserialize)]
pub struct TaskBook {
    /// Boxed, by their own ids: the table's slots stay small (a slot per task, and twice as
    /// many while it grows), and only the tasks themselves take a record's size.
    tasks: task_table::TaskTable,
    /// Arrival order; may hold ids of archived tasks, which iteration skips.
    order: Vec<Arc<str>>,
    /// Finished tasks still held in full, oldest first.
    finished: VecDeque<String>,
    archived: archive::Archive,
    /// Archived counts, for summaries.
    pub archived_done: usize,
    pub archived_failed: usize,
    /// Not part of a snapshot: whoever loads one sets its own limit.
    #[serde(skip)]
    keep_finished: Option<usize>,
    pub rejected: VecDeque<RejectedFile>,
    /// Rate-limit cooldowns and auth failures, by provider.
    #[serde(default)]
    pub providers: std::collections::BTreeMap<String, ProviderState>,
    /// Spending by UTC day (the most recent days only).
    #[serde(default)]
    pub spend: std::collections::BTreeMap<u64, DaySpend>,
    /// Fleet mode: what the fleet's other workers spent, by UTC day, from their heartbeats
    /// (not from this ledger). Budgets count it: spend anywhere counts against one budget.
    #[serde(skip)]
    pub elsewhere: std::collections::BTreeMap<u64, DaySpend>,
    /// How many tasks were created from inside the attempts of each original task (and of the
    /// tasks those created), by the original's id.
    #[serde(default)]
    pub spawned: HashMap<String, u32>,
    /// Whether the running daemon's config file was deleted since it read it (it keeps that
    /// configuration): a client then cannot check a task against the file.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub config_file_gone: bool,
    pub last_seq: u64,
    /// The bytes the specs of unfinished tasks hold (their prompts, mostly): the daemon stops
    /// taking task files in while they hold too much.
    #[serde(skip)]
    spec_bytes: usize,
    /// When (Unix ms) the latest record applied was made: at a start, the last moment the
    /// daemon before was known to be alive.
    #[serde(default)]
    pub last_ts: u64,
    /// The chain the last task received has: the tasks of a batch (a drop, a `map`) mostly
    /// share one, and hold it once instead of one copy each.
    #[serde(skip)]
    last_chain: Option<Arc<Vec<String>>>,
    /// Records applied since this book was made (not part of a snapshot): the daemon tells
    /// waiting doors when it changes.
    #[serde(skip)]
    pub applied: u64,
}

impl TaskBook {
    /// A book that keeps every record in full (for the CLI).
    pub fn from_records<'a>(records: impl IntoIterator<Item = &'a Record>) -> Self {
        Self::with_limit(None, records)
    }

    /// A book that archives finished tasks beyond the most recent `keep_finished`.
    pub fn with_limit<'a>(
        keep_finished: Option<usize>,
        records: impl IntoIterator<Item = &'a Record>,
    ) -> Self {
        let mut book = TaskBook {
            keep_finished,
            ..Default::default()
        };
        for r in records {
            book.apply(r);
        }
        book
    }

    /// The original task of a line of tasks created from inside attempts: `id`'s origin, or
    /// `id` itself when no attempt created it (or it is archived).
    pub fn origin_of(&self, id: &str) -> String {
        self.tasks
            .get(id)
            .and_then(|t| t.more().origin.clone())
            .unwrap_or_else(|| id.to_string())
    }

    /// Sets the archiving limit (after loading a snapshot) and applies it.
    pub fn set_limit(&mut self, keep_finished: Option<usize>) {
        self.keep_finished = keep_finished;
        self.trim();
    }

    /// Gives back the room its maps and lists grew to for a burst now gone (they never shrink
    /// on their own): called when the daemon has drained its queue.
    pub fn shrink(&mut self) {
        self.order.retain(|id| self.tasks.contains_key(id));
        self.order.shrink_to_fit();
        self.tasks.shrink_to_fit();
        self.finished.shrink_to_fit();
        self.archived.compact();
        self.spawned.shrink_to_fit();
    }

    /// Gives a book read from a snapshot the sharing the book that wrote it had: each task's
    /// id one allocation again (the reader makes one for the record and one for the arrival
    /// order), equal chains one, and each spec packed against its record (a snapshot has it
    /// whole).
    pub fn share_after_read(&mut self) {
        // Chains too: the reader makes one per task.
        let mut chains: std::collections::HashSet<Arc<Vec<String>>> = Default::default();
        let mut bytes = 0;
        for t in self.tasks.iter_mut() {
            match chains.get(&t.chain) {
                Some(shared) => t.chain = shared.clone(),
                None => {
                    chains.insert(t.chain.clone());
                }
            }
            // A snapshot has each spec whole: held packed again.
            if let Some(spec) = t.spec() {
                let (_, held) = t.hold_spec(&spec);
                bytes += held;
            }
        }
        self.spec_bytes = bytes;
        let tasks = &self.tasks;
        for id in self.order.iter_mut() {
            if let Some(held) = tasks.id(id) {
                *id = held.clone();
            }
        }
    }

    /// The bytes the specs of unfinished tasks hold.
    pub fn spec_bytes(&self) -> usize {
        self.spec_bytes
    }

    /// `chain` as a shared slice: the one the last task received has when it is the same.
    fn share_chain(&mut self, chain: &[String]) -> Arc<Vec<String>> {
        match &self.last_chain {
            Some(last) if **last == *chain => last.clone(),
            _ => {
                let made = Arc::new(chain.to_vec());
                self.last_chain = Some(made.clone());
                made
            }
        }
    }

    /// The full record of a task, unless it is unknown or archived.
    pub fn get(&self, id: &str) -> Option<&TaskRecord> {
        self.tasks.get(id)
    }

    /// Whether the id is taken by any task, archived ones included.
    pub fn contains(&self, id: &str) -> bool {
        self.tasks.contains_key(id) || self.archived.contains_key(id)
    }

    /// How a task ended, if it has; works for archived tasks too.
    pub fn outcome(&self, id: &str) -> Option<Outcome> {
        match self.tasks.get(id).map(|t| t.phase()) {
            Some(Phase::Done { .. }) => Some(Outcome::Done),
            Some(Phase::Failed { .. }) => Some(Outcome::Failed),
            Some(_) => None,
            None => self.archived.get(id),
        }
    }

    /// Tasks held in full, in arrival order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &TaskRecord> {
        self.order.iter().filter_map(|id| self.tasks.get(id))
    }

    pub fn len(&self) -> usize {
        self.tasks.len() + self.archived.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Notes that a task finished and archives the oldest finished ones beyond the limit.
    fn finished(&mut self, id: &str) {
        if self.keep_finished.is_some() {
            self.finished.push_back(id.to_string());
            self.trim();
        }
    }

    /// Archives the oldest finished tasks beyond the limit.
    fn trim(&mut self) {
        let Some(limit) = self.keep_finished else {
            return;
        };
        while self.finished.len() > limit {
            let old = self.finished.pop_front().expect("longer than the limit");
            if let Some(t) = self.tasks.remove(old.as_str()) {
                self.spawned.remove(&old);
                let outcome = if matches!(t.phase(), Phase::Done { .. }) {
                    self.archived_done += 1;
                    Outcome::Done
                } else {
                    self.archived_failed += 1;
                    Outcome::Failed
                };
                self.archived.insert(old.into_boxed_str(), outcome);
            }
        }
        // Drop archived ids from the order once they are the majority.
        if self.order.len() > 2 * self.tasks.len() + 1024 {
            let tasks = &self.tasks;
            self.order.retain(|id| tasks.contains_key(id));
        }
    }

    /// Applies one record. Records about unknown tasks are ignored (they can only come from a
    /// hand-edited ledger), so replay never fails.
    pub fn apply(&mut self, r: &Record) {
        self.last_seq = self.last_seq.max(r.seq);
        self.last_ts = self.last_ts.max(r.ts);
        self.applied += 1;
        match &r.event {
            Event::Received { task, file, spec } => {
                if let Some(t) = self.tasks.get_mut(task.as_str()) {
                    // A requeued task coming back through the inbox: same task, same history.
                    t.names = Names::new(t.title(), file);
                    t.progress_mut().phase = Phase::Pending;
                    let (freed, held) = t.hold_spec(spec);
                    self.spec_bytes = self.spec_bytes.saturating_sub(freed) + held;
                    return;
                }
                let origin = spec.fields.parent.as_ref().map(|p| self.origin_of(p));
                if let Some(o) = &origin {
                    *self.spawned.entry(o.clone()).or_default() += 1;
                }
                let id: Arc<str> = Arc::from(task.as_str());
                self.order.push(id.clone());
                let mut record = Box::new(TaskRecord {
                    id: id.clone(),
                    names: Names::new(&spec.title, file),
                    received_ms: r.ts,
                    chain: self.share_chain(&spec.chain),
                    progress: Progress::default(),
                    packed_spec: None,
                    more: More::of(TaskMore {
                        after: spec.fields.after.clone(),
                        workflow_run: spec.fields.workflow_run.clone(),
                        budget_usd: spec.fields.budget_usd,
                        origin,
                        role: spec.fields.role.clone(),
                        priority: spec.fields.priority,
                        ..TaskMore::default()
                    }),
                });
                let (_, held) = record.hold_spec(spec);
                self.spec_bytes += held;
                self.tasks.insert(record);
            }
            Event::Rejected {
                file,
                reason,
                moved_to,
            } => {
                if self.rejected.len() == REJECTED_KEPT {
                    self.rejected.pop_front();
                }
                self.rejected.push_back(RejectedFile {
                    file: file.clone(),
                    reason: reason.clone(),
                    moved_to: moved_to.clone(),
                    ts: r.ts,
                });
            }
            Event::Claimed { task, file } => {
                if let Some(t) = self.tasks.get_mut(task.as_str()) {
                    t.names = Names::new(t.title(), file);
                }
            }
            Event::AttemptStarted {
                task,
                attempt,
                agent,
                pid,
                start_ticks,
                boot_id,
                ..
            } => {
                if let Some(t) = self.tasks.get_mut(task.as_str()) {
                    t.progress_mut().attempts.push(AttemptSummary {
                        pid: *pid,
                        start_ticks: *start_ticks,
                        boot_id: boot_id.clone(),
                        ..AttemptSummary::started(*attempt, agent, r.ts)
                    });
                    t.progress_mut().phase = Phase::Running {
                        attempt: *attempt,
                        agent: agent.clone(),
                        since_ms: r.ts,
                    };
                }
            }
            Event::AttemptFinished {
                task,
                attempt,
                agent,
                class,
                reason,
                exit_code,
                signal,
                stdout_bytes,
                stderr_bytes,
                duration_ms,
                retry_in_ms,
                usage,
                stopped,
                work,
                ..
            } => {
                if let Some(cost) = usage.as_ref().and_then(|u| u.cost_usd) {
                    let day = self.spend.entry(day_of(r.ts)).or_default();
                    day.total_usd += cost;
                    // Budgets are per agent, whichever model it ran.
                    let base = crate::config::split_entry(agent).0.to_string();
                    *day.by_agent.entry(base).or_default() += cost;
                    while self.spend.len() as u64 > SPEND_DAYS {
                        self.spend.pop_first();
                    }
                }
                if let Some(t) = self.tasks.get_mut(task.as_str()) {
                    t.progress_mut().cost_usd +=
                        usage.as_ref().and_then(|u| u.cost_usd).unwrap_or(0.0);
                    if !t.attempts().iter().any(|a| a.n == *attempt) {
                        // An attempt that never started (spawn failure) has no start event.
                        t.progress_mut()
                            .attempts
                            .push(AttemptSummary::started(*attempt, agent, r.ts));
                    }
                    if let Some(a) = t
                        .progress_mut()
                        .attempts
                        .iter_mut()
                        .rev()
                        .find(|a| a.n == *attempt)
                    {
                        // Only needed while it might still run.
                        a.boot_id = None;
                        a.start_ticks = None;
                        a.class = Some(*class);
                        a.reason = reason.clone();
                        a.exit_code = *exit_code;
                        a.signal = *signal;
                        a.duration_ms = *duration_ms;
                        a.stdout_bytes = *stdout_bytes;
                        a.stderr_bytes = *stderr_bytes;
                        a.usage = usage.clone();
                        a.stopped = *stopped;
                        a.work = work.clone();
                    }
                    if let Some(tree) = t.more_present().and_then(|m| m.worktree.as_mut()) {
                        // A resolving attempt is over, whatever its end.
                        tree.resolve = None;
                    }
                    if let (Some(w), Some(tree)) =
                        (work, t.more_present().and_then(|m| m.worktree.as_mut()))
                    {
                        tree.diff = Some(w.diff);
                        if w.commit.is_some() {
                            tree.commit = w.commit.clone();
                        }
                    }
                    let again = work.as_ref().is_some_and(|w| w.again);
                    // A failure moves the chain past the agent that failed (agents skipped while
                    // cooling down stay behind); a network retry or an interruption keeps it.
                    if let Some(delay) = retry_in_ms {
                        t.set_not_before(Some(r.ts + delay));
                    } else if again {
                        // A `verify` feedback round: the same agent, right away.
                        t.set_not_before(None);
                    } else if !matches!(class, Class::Ok | Class::Interrupted | Class::Cancelled) {
                        t.set_not_before(None);
                        let pos = t.chain_pos();
                        let from = pos.min(t.chain.len());
                        let next = t.chain[from..]
                            .iter()
                            .position(|a| a == agent)
                            .map_or(pos + 1, |i| from + i + 1);
                        t.progress_mut().chain_pos = next;
                    }
                    if matches!(t.phase(), Phase::Running { .. }) {
                        t.progress_mut().phase = Phase::Pending;
                    }
                }
            }
            Event::Done {
                task,
                agent,
                output,
                ..
            } => {
                if let Some(t) = self.tasks.get_mut(task.as_str()) {
                    t.progress_mut().phase = Phase::Done {
                        agent: agent.clone(),
                        output: output.clone(),
                        finished_ms: r.ts,
                    };
                    self.spec_bytes = self.spec_bytes.saturating_sub(t.drop_spec());
                    self.finished(task);
                }
            }
            Event::Escalated { task, reason, .. } => {
                if let Some(t) = self.tasks.get_mut(task.as_str()) {
                    t.progress_mut().phase = Phase::Failed {
                        reason: reason.clone(),
                        finished_ms: r.ts,
                    };
                    self.spec_bytes = self.spec_bytes.saturating_sub(t.drop_spec());
                    self.finished(task);
                }
            }
            Event::WorktreeMade {
                task,
                path,
                git_dir,
                branch,
                base,
                target,
            } => {
                if let Some(t) = self.tasks.get_mut(task.as_str()) {
                    t.more_mut().worktree = Some(Box::new(WorktreeState {
                        tree: crate::git::Tree {
                            path: path.clone(),
                            git_dir: git_dir.clone(),
                        },
                        branch: branch.clone(),
                        base: base.clone(),
                        target: target.clone(),
                        diff: None,
                        commit: None,
                        merge: MergeState::NotYet,
                        removed: false,
                        discard_pending: false,
                        resolve: None,
                        resolutions: 0,
                    }));
                }
            }
            Event::MergeWaiting { task, reason } => {
                if let Some(t) = self.tasks.get_mut(task.as_str()) {
                    if !t.phase().is_terminal() {
                        t.progress_mut().phase = Phase::MergeWaiting {
                            reason: reason.clone(),
                        };
                    }
                    if let Some(w) = t.more_present().and_then(|m| m.worktree.as_mut()) {
                        w.merge = MergeState::Waiting {
                            reason: reason.clone(),
                        };
                    }
                }
            }
            Event::MergeStarted { task, target, onto } => {
                if let Some(t) = self.tasks.get_mut(task.as_str()) {
                    if !t.phase().is_terminal() {
                        t.progress_mut().phase = Phase::Merging;
                    }
                    if let Some(w) = t.more_present().and_then(|m| m.worktree.as_mut()) {
                        w.merge = MergeState::Started {
                            target: target.clone(),
                            onto: onto.clone(),
                        };
                    }
                }
            }
            Event::MergeReady {
                task,
                target,
                old,
                commit,
            } => {
                if let Some(w) = self
                    .tasks
                    .get_mut(task.as_str())
                    .and_then(|t| t.more_present()?.worktree.as_mut())
                {
                    w.merge = MergeState::Ready {
                        target: target.clone(),
                        old: old.clone(),
                        commit: commit.clone(),
                    };
                }
            }
            Event::Merged {
                task,
                target,
                commit,
            } => {
                if let Some(w) = self
                    .tasks
                    .get_mut(task.as_str())
                    .and_then(|t| t.more_present()?.worktree.as_mut())
                {
                    w.merge = MergeState::Merged {
                        target: target.clone(),
                        commit: commit.clone(),
                    };
                }
            }
            Event::MergeFailed {
                task,
                class,
                reason,
                files,
                resolve,
            } => {
                if let Some(t) = self.tasks.get_mut(task.as_str()) {
                    if resolve.is_some() && !t.phase().is_terminal() {
                        // An agent resolves it: the task runs again.
                        t.progress_mut().phase = Phase::Pending;
                    }
                    if let Some(w) = t.more_present().and_then(|m| m.worktree.as_mut()) {
                        w.merge = MergeState::Failed {
                            class: *class,
                            reason: reason.clone(),
                        };
                        if let Some(target) = resolve {
                            w.resolutions += 1;
                            w.resolve = Some(Resolve {
                                target: target.clone(),
                                files: files.clone(),
                                reason: reason.clone(),
                            });
                        }
                    }
                }
            }
            Event::Discarded { task } => {
                if let Some(w) = self
                    .tasks
                    .get_mut(task.as_str())
                    .and_then(|t| t.more_present()?.worktree.as_mut())
                {
                    w.merge = MergeState::Discarded;
                    w.discard_pending = true;
                }
            }
            Event::WorktreeRemoved {
                task,
                branch_deleted,
            } => {
                if let Some(w) = self
                    .tasks
                    .get_mut(task.as_str())
                    .and_then(|t| t.more_present()?.worktree.as_mut())
                {
                    w.removed = true;
                    w.discard_pending &= !branch_deleted;
                }
            }
            Event::PhaseCompleted {
                task,
                phase,
                output,
                ..
            } => {
                if let Some(t) = self.tasks.get_mut(task.as_str())
                    && !t.more().phases.iter().any(|(p, _)| p == phase)
                {
                    t.more_mut().phases.push((phase.clone(), output.clone()));
                }
            }
            Event::LoopRound {
                task,
                phase,
                round,
                passed,
                feedback,
            } => {
                if let Some(t) = self.tasks.get_mut(task.as_str())
                    && !t
                        .more()
                        .rounds
                        .iter()
                        .any(|r| r.phase == *phase && r.round == *round)
                {
                    t.more_mut().rounds.push(LoopRound {
                        phase: phase.clone(),
                        round: *round,
                        passed: *passed,
                        feedback: feedback.clone(),
                    });
                }
            }
            Event::Published {
                task,
                subject,
                round,
                stream_seq,
                base,
            } => {
                if let Some(t) = self.tasks.get_mut(task.as_str()) {
                    t.more_mut().fleet = Some(Box::new(FleetPart::Published {
                        subject: subject.clone(),
                        worker: None,
                        round: *round,
                        seq: *stream_seq,
                        base: base.clone(),
                    }));
                }
            }
            Event::RanOn { task, worker } => {
                if let Some(t) = self.tasks.get_mut(task.as_str())
                    && let Some(FleetPart::Published { worker: w, .. }) =
                        t.more_present().and_then(|m| m.fleet.as_deref_mut())
                {
                    *w = Some(worker.clone());
                }
            }
            Event::FleetTaken { task, key, edit } => {
                if let Some(t) = self.tasks.get_mut(task.as_str()) {
                    t.more_mut().fleet = Some(Box::new(FleetPart::Taken {
                        key: key.clone(),
                        won: None,
                        edit: edit.clone(),
                    }));
                }
            }
            Event::FleetSettled { task, won, .. } => {
                if let Some(t) = self.tasks.get_mut(task.as_str())
                    && let Some(FleetPart::Taken { won: w, .. }) =
                        t.more_present().and_then(|m| m.fleet.as_deref_mut())
                {
                    *w = Some(*won);
                }
            }
            Event::HandedBack { task } => {
                if let Some(t) = self.tasks.get_mut(task.as_str()) {
                    t.progress_mut().phase = Phase::Failed {
                        reason: HANDED_BACK_REASON.into(),
                        finished_ms: r.ts,
                    };
                    self.spec_bytes = self.spec_bytes.saturating_sub(t.drop_spec());
                    self.finished(task);
                }
            }
            Event::Cancelled { task } => {
                if let Some(t) = self.tasks.get_mut(task.as_str()) {
                    t.progress_mut().phase = Phase::Failed {
                        reason: CANCELLED_REASON.into(),
                        finished_ms: r.ts,
                    };
                    self.spec_bytes = self.spec_bytes.saturating_sub(t.drop_spec());
                    self.finished(task);
                }
            }
            Event::Retried { task, spec } => {
                let chain = self.share_chain(&spec.chain);
                if let Some(t) = self.tasks.get_mut(task.as_str()) {
                    // The fleet ran it: the next run is a new round there.
                    if let Some(FleetPart::Published { round, .. } | FleetPart::Retry { round }) =
                        t.more().fleet.as_deref()
                    {
                        t.more_mut().fleet = Some(Box::new(FleetPart::Retry { round: round + 1 }));
                    }
                    let last = t.attempts().last().map_or(0, |a| a.n);
                    t.progress_mut().phase = Phase::Pending;
                    t.chain = chain;
                    t.progress_mut().chain_pos = 0;
                    let (freed, held) = t.hold_spec(spec);
                    self.spec_bytes = self.spec_bytes.saturating_sub(freed) + held;
                    let more = t.more_mut();
                    more.not_before_ms = None;
                    more.retried_after = last;
                    more.budget_usd = spec.fields.budget_usd;
                    // It starts from a new worktree; the engine gives the old one up.
                    more.worktree = None;
                    // A workflow run's loop that gave up is judged again from its first round
                    // (the generator's results are kept); completed phases keep their rounds.
                    let phases = &more.phases;
                    more.rounds
                        .retain(|r| phases.iter().any(|(p, _)| *p == r.phase));
                    t.tidy_more();
                    // No longer finished: it must not be archived while it runs again.
                    self.finished.retain(|id| id != task);
                }
            }
            Event::Requeued { task, file } => {
                if let Some(t) = self.tasks.get_mut(task.as_str()) {
                    t.progress_mut().phase = Phase::Requeued;
                    t.names = Names::new(t.title(), file);
                }
            }
            Event::ProviderCooldown {
                provider,
                until_ms,
                reason,
                ..
            } => {
                let p = self.providers.entry(provider.clone()).or_default();
                if p.cooling_until_ms.is_none_or(|u| u < *until_ms) {
                    p.cooling_until_ms = Some(*until_ms);
                    p.cooling_reason = reason.clone();
                }
            }
            Event::ProviderDisabled {
                provider,
                agent,
                reason,
                ..
            } => {
                let p = self.providers.entry(provider.clone()).or_default();
                if p.disabled.is_none() {
                    p.disabled = Some(Disabled {
                        agent: agent.clone(),
                        reason: reason.clone(),
                        since_ms: r.ts,
                    });
                }
            }
            Event::ProviderEnabled { provider, .. } => {
                self.providers.remove(provider);
            }
            Event::ConfigRejected { error, .. } if error.ends_with(DELETED_CONFIG_END) => {
                self.config_file_gone = true;
            }
            Event::DaemonStarted { .. } | Event::ConfigReloaded { .. } => {
                self.config_file_gone = false;
            }
            Event::DaemonStopped { .. }
            | Event::ConfigRejected { .. }
            | Event::NotifySent { .. }
            | Event::NotifyFailed { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{TaskFields, TaskSpec};

    fn rec(seq: u64, event: Event) -> Record {
        Record {
            seq,
            ts: seq * 10,
            event,
        }
    }

    /// The `received` record of `id` (its file `<id>.json`).
    fn received(seq: u64, id: &str, spec: Box<TaskSpec>) -> Record {
        rec(
            seq,
            Event::Received {
                task: id.into(),
                file: format!("{id}.json"),
                spec,
            },
        )
    }

    fn spec(id: &str) -> Box<TaskSpec> {
        Box::new(TaskSpec {
            id: id.into(),
            title: "T".into(),
            prompt: "p".into(),
            chain: vec!["a".into(), "b".into()],
            chain_source: "chain".into(),
            fields: TaskFields::default(),
        })
    }

    fn finished(seq: u64, attempt: u32, agent: &str, class: Class) -> Record {
        rec(
            seq,
            Event::AttemptFinished {
                task: "t".into(),
                attempt,
                agent: agent.into(),
                class,
                reason: "r".into(),
                exit_code: Some(1),
                signal: None,
                stopped: None,
                kill_signal: None,
                leaked: false,
                stdout_bytes: 3,
                stderr_bytes: 0,
                duration_ms: 7,
                retry_in_ms: None,
                usage: None,
                work: None,
            },
        )
    }

    fn started(seq: u64, attempt: u32, agent: &str) -> Record {
        rec(
            seq,
            Event::AttemptStarted {
                task: "t".into(),
                attempt,
                agent: agent.into(),
                pid: 9,
                pgid: 9,
                start_ticks: None,
                boot_id: None,
                argv0: "x".into(),
            },
        )
    }

    #[test]
    fn failure_then_success_walks_the_chain() {
        let records = vec![
            received(1, "t", spec("t")),
            rec(
                2,
                Event::Claimed {
                    task: "t".into(),
                    file: "t.json".into(),
                },
            ),
            started(3, 1, "a"),
            finished(4, 1, "a", Class::Exit),
            started(5, 2, "b"),
            finished(6, 2, "b", Class::Ok),
            rec(
                7,
                Event::Done {
                    task: "t".into(),
                    agent: "b".into(),
                    attempt: 2,
                    output: "o".into(),
                },
            ),
        ];
        let book = TaskBook::from_records(&records[..4]);
        let t = book.get("t").unwrap();
        assert_eq!((t.chain_pos(), t.phase().label()), (1, "pending"));
        let book = TaskBook::from_records(&records);
        let t = book.get("t").unwrap();
        assert_eq!(t.attempts().len(), 2);
        assert_eq!(t.attempts()[0].class, Some(Class::Exit));
        assert_eq!(t.busy_ms(u64::MAX), 14);
        assert!(matches!(t.phase(), Phase::Done { .. }));
        assert!(!t.has_spec(), "finished tasks drop their spec");
        assert_eq!(book.last_seq, 7);
    }

    #[test]
    fn the_bytes_waiting_specs_hold_are_counted_until_they_finish() {
        let mut book = TaskBook::from_records(&[]);
        let mut big = spec("big");
        big.prompt = "x".repeat(10_000);
        big.fields.prompt = Some(big.prompt.clone());
        book.apply(&received(1, "big", big));
        book.apply(&received(2, "small", spec("small")));
        let held = book.spec_bytes();
        assert!(
            (10_000..11_000).contains(&held),
            "expected the big prompt held once and the small spec beside it, got {held} bytes"
        );
        let mut read: TaskBook =
            serde_json::from_value(serde_json::to_value(&book).unwrap()).unwrap();
        read.share_after_read();
        assert_eq!(
            read.spec_bytes(),
            held,
            "expected a snapshot to count the same"
        );
        book.apply(&rec(3, Event::Cancelled { task: "big".into() }));
        assert!(
            book.spec_bytes() < 1_000,
            "expected the big spec let go of once its task finished, got {} bytes",
            book.spec_bytes()
        );
        book.apply(&rec(
            4,
            Event::Cancelled {
                task: "small".into(),
            },
        ));
        assert_eq!(
            book.spec_bytes(),
            0,
            "expected nothing held once all finished"
        );
    }

    #[test]
    fn old_finished_tasks_are_archived_but_still_known() {
        let mut records = Vec::new();
        let mut seq = 0;
        for i in 0..5 {
            let id = format!("t{i}");
            seq += 1;
            records.push(received(seq, &id, spec(&id)));
            seq += 1;
            let ev = if i == 1 {
                Event::Escalated {
                    task: id.clone(),
                    reason: "r".into(),
                    attempts: 0,
                }
            } else {
                Event::Done {
                    task: id.clone(),
                    agent: "a".into(),
                    attempt: 1,
                    output: "o".into(),
                }
            };
            records.push(rec(seq, ev));
        }
        let book = TaskBook::with_limit(Some(2), &records);
        assert_eq!(
            book.iter().map(|t| &*t.id).collect::<Vec<_>>(),
            ["t3", "t4"]
        );
        assert!(book.get("t0").is_none());
        assert!(book.contains("t0") && book.contains("t4") && !book.contains("t9"));
        assert_eq!(book.outcome("t1"), Some(Outcome::Failed));
        assert_eq!(book.outcome("t2"), Some(Outcome::Done));
        assert_eq!(
            (book.archived_done, book.archived_failed, book.len()),
            (2, 1, 5)
        );
        let full = TaskBook::from_records(&records);
        assert_eq!(full.iter().count(), 5);
    }

    #[test]
    fn ids_chains_and_specs_are_held_once_also_after_a_snapshot() {
        let records = [received(1, "t", spec("t")), received(2, "u", spec("u"))];
        let shared = |book: &TaskBook| {
            let t = book.tasks.get("t").expect("`t` is in the book");
            let u = book.tasks.get("u").expect("`u` is in the book");
            Arc::ptr_eq(&t.id, &book.order[0])
                && Arc::ptr_eq(&t.chain, &u.chain)
                && !format!("{:?}", t.packed_spec).contains(r#""title""#)
        };
        let book = TaskBook::from_records(&records);
        assert!(
            shared(&book),
            "expected one id, one chain for both tasks and a spec without its title as the \
             book applies"
        );
        let text = serde_json::to_string(&book).expect("a book serialises");
        assert!(
            text.contains(r#""spec":{"id":"t","title":"T","prompt":"p","chain":["a","b"],"#),
            "expected the snapshot to hold each spec whole, got {text}"
        );
        let mut read: TaskBook = serde_json::from_str(&text).expect("and reads back");
        assert!(
            !shared(&read),
            "expected serde to make copies (else share_after_read is moot)"
        );
        read.share_after_read();
        assert!(
            shared(&read),
            "expected all shared again after share_after_read"
        );
        for id in ["t", "u"] {
            assert_eq!(
                read.get(id).and_then(|t| t.spec()).as_deref(),
                Some(&*spec(id)),
                "expected `{id}`'s spec back whole"
            );
        }
        // As values: the map's order is the hasher's.
        let value = |text: &str| serde_json::from_str::<serde_json::Value>(text).unwrap();
        assert_eq!(
            value(&serde_json::to_string(&read).expect("it serialises again")),
            value(&text),
            "expected the book read back to write the same snapshot"
        );
    }

    #[test]
    fn a_task_back_from_the_inbox_with_another_spec_runs_that_spec() {
        let mut again = spec("t");
        again.title = "T2".into();
        again.chain = vec!["c".into()];
        let records = [
            received(1, "t", spec("t")),
            rec(
                2,
                Event::Requeued {
                    task: "t".into(),
                    file: "t.json".into(),
                },
            ),
            received(3, "t", again.clone()),
        ];
        let book = TaskBook::from_records(&records);
        assert_eq!(
            book.get("t").and_then(|t| t.spec()).as_deref(),
            Some(&*again),
            "expected the spec it came back with"
        );
    }

    #[test]
    fn a_task_without_rare_parts_has_no_box_and_a_snapshot_keeps_them_flat() {
        assert!(
            std::mem::size_of::<TaskRecord>() <= 88,
            "expected a record of at most 88 bytes (a waiting task is held in full), got {}",
            std::mem::size_of::<TaskRecord>()
        );
        let mut with_role = spec("r");
        with_role.fields.role = Some("reviewer".into());
        with_role.fields.after = vec!["t".into()];
        with_role.fields.priority = 3;
        let records = [received(1, "t", spec("t")), received(2, "r", with_role)];
        let book = TaskBook::from_records(&records);
        assert!(
            book.tasks.get("t").unwrap().more.0.is_none(),
            "expected no box for `t`"
        );
        assert!(
            book.tasks.get("r").unwrap().more.0.is_some(),
            "expected a box for `r`"
        );
        let text = serde_json::to_string(&book).expect("a book serialises");
        assert!(
            text.contains(r#""after":["t"]"#) && text.contains(r#""role":"reviewer""#),
            "expected `after` and `role` beside the record's other fields, got {text}"
        );
        assert!(
            !text.contains("more"),
            "expected no `more` key in the snapshot, got {text}"
        );
        // Builds before the split required `after` in every record.
        assert!(
            text.contains(r#""after":[]"#),
            "expected `after` written for `t` too, got {text}"
        );
        let read: TaskBook = serde_json::from_str(&text).expect("and reads back");
        assert!(
            read.tasks.get("t").unwrap().more.0.is_none(),
            "expected no box for `t` read back"
        );
        assert_eq!(
            (
                text.matches(r#""priority":3"#).count(),
                text.matches(r#""chain_pos":0,"priority":3,"attempts""#)
                    .count()
            ),
            (2, 1),
            "expected `r`'s priority in its place in the record (and in its spec), got {text}"
        );
        let r = read.get("r").expect("`r` read back");
        assert_eq!(
            (
                r.more().role.as_deref(),
                r.more().after.as_slice(),
                r.priority()
            ),
            (Some("reviewer"), ["t".to_string()].as_slice(), 3)
        );
    }

    #[test]
    fn only_a_task_that_has_started_has_a_progress_box_also_after_a_snapshot() {
        let records = [
            received(1, "t", spec("t")),
            received(2, "u", spec("u")),
            started(3, 1, "a"),
        ];
        let book = TaskBook::from_records(&records);
        assert!(
            book.tasks.get("u").unwrap().progress.0.is_none(),
            "expected no progress box for `u`, which has not started"
        );
        assert!(
            book.tasks.get("t").unwrap().progress.0.is_some(),
            "expected a progress box for `t`, which has"
        );
        let text = serde_json::to_string(&book).expect("a book serialises");
        assert!(
            text.contains(r#""chain_pos":0,"priority":0,"attempts":[],"state":"pending""#),
            "expected `u` written with the fields it had before the split, got {text}"
        );
        let read: TaskBook = serde_json::from_str(&text).expect("and reads back");
        assert!(
            read.tasks.get("u").unwrap().progress.0.is_none(),
            "expected no progress box for `u` read back"
        );
        let t = read.get("t").expect("`t` read back");
        assert_eq!(
            (t.phase().label(), t.attempts().len(), t.chain_pos()),
            ("running", 1, 0),
            "expected `t`'s progress read back"
        );
    }

    #[test]
    fn the_table_finds_replaces_and_removes_records_by_their_own_ids() {
        let ids: Vec<String> = (0..1000).map(|i| format!("t{i}")).collect();
        let records: Vec<Record> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| received(i as u64 + 1, id, spec(id)))
            .collect();
        let book = TaskBook::from_records(&records);
        let mut table = book.tasks;
        assert_eq!(table.len(), 1000, "expected every record in the table");
        for (i, id) in ids.iter().enumerate() {
            if i % 2 == 1 {
                let gone = table.remove(id).map(|t| t.id.to_string());
                assert_eq!(
                    gone.as_deref(),
                    Some(id.as_str()),
                    "expected `{id}` removed"
                );
            }
        }
        table.shrink_to_fit();
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(
                table.get(id).map(|t| &*t.id),
                (i % 2 == 0).then_some(id.as_str()),
                "expected `{id}` found only if it was kept"
            );
        }
        assert_eq!(table.len(), 500, "expected half left");
        // The same id again takes the old record's place.
        let mut again = Box::new(table.get("t0").expect("`t0` kept").clone());
        again.more_mut().role = Some("again".into());
        table.insert(again);
        assert_eq!(
            (table.len(), table.get("t0").map(|t| t.more().role.clone())),
            (500, Some(Some("again".to_string()))),
            "expected `t0` replaced, not added"
        );
        // Written as the map it was; the key is the id when a record says otherwise.
        let text = serde_json::to_string(&table).expect("a table serialises");
        let edited = text.replacen(r#""t0":{"id":"t0""#, r#""t0":{"id":"elsewhere""#, 1);
        assert_ne!(edited, text, "expected the test to edit `t0`'s id");
        let read: task_table::TaskTable = serde_json::from_str(&edited).expect("and reads back");
        assert_eq!(read.len(), 500, "expected every record read back");
        assert_eq!(
            (
                read.get("t0").map(|t| &*t.id),
                read.contains_key("elsewhere")
            ),
            (Some("t0"), false),
            "expected the map's key to be the id"
        );
    }

    #[test]
    fn records_written_before_the_split_read_and_write_the_same() {
        // Written by the build before the record's parts were split off (a daemon's answer to
        // `dirigent status --json`: done, failed, running, and two waiting tasks, one with a
        // role and a priority; `cost_usd` added to the first by hand, as that build wrote it).
        let text = include_str!("state/testdata/records_written_before_the_split.json");
        let before: Vec<serde_json::Value> = serde_json::from_str(text).unwrap();
        let mut read = Vec::new();
        for value in &before {
            let t: TaskRecord = serde_json::from_value(value.clone())
                .unwrap_or_else(|e| panic!("expected {value} to read: {e}"));
            assert_eq!(
                serde_json::to_value(&t).unwrap(),
                *value,
                "expected `{}` written as it was read",
                t.id()
            );
            read.push(t);
        }
        let summary: Vec<_> = read
            .iter()
            .map(|t| {
                (
                    t.id(),
                    t.phase().label(),
                    t.attempts().len(),
                    t.chain_pos(),
                    t.priority(),
                    t.cost_usd(),
                    t.spec().map(|s| s.prompt.clone()),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("done1", "done", 1, 0, 0, 0.25, None),
                ("failed1", "failed", 1, 1, 0, 0.0, None),
                (
                    "hold",
                    "running",
                    1,
                    0,
                    0,
                    0.0,
                    Some("hold the slot".into())
                ),
                (
                    "waiting1",
                    "pending",
                    0,
                    0,
                    5,
                    0.0,
                    Some("review the thing".into())
                ),
                (
                    "waiting2",
                    "pending",
                    0,
                    0,
                    0,
                    0.0,
                    Some("plain waiting".into())
                ),
            ],
            "expected each record's parts read back"
        );
        assert!(
            read[4].progress.0.is_none() && read[4].more.0.is_none(),
            "expected a plain waiting task read back without boxes"
        );
    }

    #[test]
    fn interruption_does_not_advance_the_chain() {
        let records = vec![
            received(1, "t", spec("t")),
            started(2, 1, "a"),
            finished(3, 1, "a", Class::Interrupted),
            rec(
                4,
                Event::Requeued {
                    task: "t".into(),
                    file: "t.json".into(),
                },
            ),
            received(5, "t", spec("t")),
        ];
        let book = TaskBook::from_records(&records);
        let t = book.get("t").unwrap();
        assert_eq!(t.chain_pos(), 0);
        assert_eq!(*t.phase(), Phase::Pending);
        assert_eq!(book.len(), 1);
    }
}
