//! What one ledger line holds: a [`Record`] — its sequence number, its time and an [`Event`],
//! the state change. Every fold of the ledger (the daemon's task book, `status`, `stats`) reads
//! these.

use serde::{Deserialize, Serialize};

use crate::judge::{Class, StopCause};
use crate::task::TaskSpec;

/// One line of the ledger.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// Position in the ledger, from 1, never reused.
    pub seq: u64,
    /// Wall-clock time in milliseconds since the Unix epoch.
    pub ts: u64,
    #[serde(flatten)]
    pub event: Event,
}

/// A state change. `task` is the task id.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    DaemonStarted {
        pid: u32,
        version: String,
    },
    DaemonStopped {
        pid: u32,
    },
    /// The config was reloaded (`trigger`: `SIGHUP` or `file`); running attempts keep theirs.
    ConfigReloaded {
        trigger: String,
        source: String,
    },
    /// A reload was refused; the previous config stays in force.
    ConfigRejected {
        trigger: String,
        error: String,
    },
    /// A task file was parsed and accepted; `file` is its name in the inbox.
    Received {
        task: String,
        file: String,
        spec: Box<TaskSpec>,
    },
    /// A file could not be accepted; it is in `rejected/` next to `<name>.error.txt`.
    Rejected {
        file: String,
        reason: String,
        moved_to: String,
    },
    /// The task file was moved into `running/` under this name.
    Claimed {
        task: String,
        file: String,
    },
    AttemptStarted {
        task: String,
        attempt: u32,
        agent: String,
        pid: u32,
        pgid: u32,
        /// Process start time in clock ticks since boot (`/proc/<pid>/stat` field 22), so a
        /// reused pid is never mistaken for ours.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        start_ticks: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        boot_id: Option<String>,
        argv0: String,
    },
    AttemptFinished {
        task: String,
        attempt: u32,
        agent: String,
        class: Class,
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
        /// Set when the supervisor stopped it: why, and the last signal it had to send.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stopped: Option<StopCause>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kill_signal: Option<i32>,
        /// Processes of its group were still alive after it exited and were killed.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        leaked: bool,
        stdout_bytes: u64,
        stderr_bytes: u64,
        duration_ms: u64,
        /// A `network` failure with retries left: the same agent runs again after this long.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_in_ms: Option<u64>,
        /// Tokens and cost, when the CLI reported them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<crate::usage::Usage>,
        /// For an attempt in a worktree: what it changed, and its commit when it passed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        work: Option<Box<WorkChecked>>,
    },
    /// A provider said "rate limited": every agent on it is skipped until `until_ms` (the reset
    /// time the CLI printed, or the agent's `cooldown`). Survives restarts like any event.
    ProviderCooldown {
        provider: String,
        /// Fleet mode: the worker whose record this was, when it came from the fleet (a
        /// 429 seen there rests the provider here too).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        worker: Option<String>,
        agent: String,
        task: String,
        until_ms: u64,
        reason: String,
    },
    /// An auth failure: every agent on the provider is skipped until `dirigent agents enable`.
    ProviderDisabled {
        provider: String,
        /// Fleet mode: the worker whose record this was, when it came from the fleet (a
        /// 429 seen there rests the provider here too).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        worker: Option<String>,
        agent: String,
        task: String,
        reason: String,
    },
    /// `dirigent agents enable`: the provider's agents are used again.
    ProviderEnabled {
        provider: String,
        /// Fleet mode: the worker whose record this was, when it came from the fleet (a
        /// 429 seen there rests the provider here too).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        worker: Option<String>,
    },
    /// The task succeeded; its result is at `output` (workspace-relative).
    Done {
        task: String,
        agent: String,
        attempt: u32,
        output: String,
    },
    /// The whole chain failed; the report is `escalations/<task>.md`.
    Escalated {
        task: String,
        reason: String,
        attempts: u32,
    },
    /// A workflow run finished a phase; its result is at `output`. Recorded before the next
    /// phase starts, so a restart never runs a finished phase again.
    PhaseCompleted {
        task: String,
        phase: String,
        output: String,
        /// `fnv1a64:<hex>` of the output's bytes when it was recorded.
        #[serde(default)]
        digest: String,
    },
    /// A loop phase's evaluator judged a round: `passed`, or the feedback for the next round.
    LoopRound {
        task: String,
        phase: String,
        round: u32,
        passed: bool,
        feedback: String,
    },
    /// Stopped by `dirigent cancel`; the file is in `failed/`.
    Cancelled {
        task: String,
    },
    /// `dirigent retry`: the task runs again from the top of its chain, with the spec re-read
    /// from its file.
    Retried {
        task: String,
        spec: Box<TaskSpec>,
    },
    /// Put back into the inbox by a graceful stop; it runs again on the next start.
    Requeued {
        task: String,
        file: String,
    },
    /// A task's worktree was made: at `path` (git directory `git_dir`), on `branch`, from the
    /// commit `base`; its branch merges into `target`. Recorded before any agent runs there.
    WorktreeMade {
        task: String,
        path: std::path::PathBuf,
        git_dir: std::path::PathBuf,
        branch: String,
        base: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<String>,
    },
    /// A verified task waits to be merged: for `dirigent merge ID` (`merge: manual`), or for
    /// the user's checkout of the target to be clean.
    MergeWaiting {
        task: String,
        reason: String,
    },
    /// The merge of a task's branch began, onto `target` at `onto`.
    MergeStarted {
        task: String,
        target: String,
        onto: String,
    },
    /// The commit `target` is to point at was made (and verified when the target had moved);
    /// the ref update from `old` follows. After a crash, the target's ref tells whether it did.
    MergeReady {
        task: String,
        target: String,
        old: String,
        commit: String,
    },
    /// `target` points at `commit`, which holds the task's work.
    Merged {
        task: String,
        target: String,
        commit: String,
    },
    /// The task's branch could not be merged: a conflict (`files`), or `verify` failed on the
    /// combined result. The task escalates or goes to a resolver next.
    MergeFailed {
        task: String,
        class: Class,
        reason: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        files: Vec<String>,
        /// `on_conflict: agent`: an agent resolves the conflict in the task's tree next (the
        /// merge of `target` started there, its markers in `files`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resolve: Option<String>,
    },
    /// The user discarded the task's work (`dirigent discard`).
    Discarded {
        task: String,
    },
    /// The task's worktree is gone (and its branch, when `branch_deleted`).
    WorktreeRemoved {
        task: String,
        branch_deleted: bool,
    },
    /// A notification reached its destination (`notify:`), after `tries` tries. `count` > 1:
    /// a summary of that many notifications of a burst.
    NotifySent {
        destination: String,
        kind: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        about: Option<String>,
        delivery: String,
        tries: u32,
        #[serde(default = "one", skip_serializing_if = "is_one")]
        count: u32,
    },
    /// A notification could not be delivered, after every try; `error` says why.
    NotifyFailed {
        destination: String,
        kind: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        about: Option<String>,
        delivery: String,
        tries: u32,
        #[serde(default = "one", skip_serializing_if = "is_one")]
        count: u32,
        error: String,
    },
    /// Fleet mode: a task accepted here went onto the fleet's queue under `subject`; a worker
    /// of the fleet runs it, and its outcome comes back here.
    Published {
        task: String,
        subject: String,
        /// The round (0, then one more per `dirigent retry`).
        #[serde(default, skip_serializing_if = "is_zero_u32")]
        round: u32,
        /// Its message's sequence in the stream (a cancel deletes it while it waits there).
        /// Not `seq`: a record's own sequence number has that name.
        #[serde(default, skip_serializing_if = "is_zero_u64")]
        stream_seq: u64,
        /// An editing task: the base commit it went out with (its work must start there).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        base: Option<String>,
    },
    /// Fleet mode: this worker took a task off the fleet's queue; `key` (`NODE.ID`) names it
    /// there, and its outcome is claimed under that key.
    FleetTaken {
        task: String,
        key: String,
        /// An editing task: the repository, its base, the cache it works in here, and the
        /// branch its work is delivered as.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        edit: Option<crate::fleet::edits::EditHere>,
    },
    /// Fleet mode: this worker's outcome for a task of the fleet was claimed first (`won`), or
    /// another worker's was, and this one is a duplicate that counts for nothing.
    FleetSettled {
        task: String,
        key: String,
        won: bool,
    },
    /// Fleet mode: a task taken off the queue was handed back unfinished (this worker stopped
    /// while it waited or ran); another worker runs it.
    HandedBack {
        task: String,
    },
    /// Fleet mode: a task published here was run by `worker` of the fleet (recorded just before
    /// its `done` or `escalated`).
    RanOn {
        task: String,
        worker: String,
    },
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

/// What an attempt in a worktree left there, checked after the agent said done (or failed).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WorkChecked {
    /// Its changes against the task's base.
    pub diff: crate::git::DiffStat,
    /// The commit on the task's branch, when the work passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// `verify` failed and the same agent tries again with the check's output (its tree kept).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub again: bool,
}

impl Event {
    /// The task this event is about, if any.
    pub fn task(&self) -> Option<&str> {
        match self {
            Event::Received { task, .. }
            | Event::Claimed { task, .. }
            | Event::AttemptStarted { task, .. }
            | Event::AttemptFinished { task, .. }
            | Event::Done { task, .. }
            | Event::Escalated { task, .. }
            | Event::PhaseCompleted { task, .. }
            | Event::LoopRound { task, .. }
            | Event::Cancelled { task, .. }
            | Event::Retried { task, .. }
            | Event::Requeued { task, .. }
            | Event::WorktreeMade { task, .. }
            | Event::MergeWaiting { task, .. }
            | Event::MergeStarted { task, .. }
            | Event::MergeReady { task, .. }
            | Event::Merged { task, .. }
            | Event::MergeFailed { task, .. }
            | Event::Discarded { task, .. }
            | Event::WorktreeRemoved { task, .. }
            | Event::Published { task, .. }
            | Event::FleetTaken { task, .. }
            | Event::FleetSettled { task, .. }
            | Event::HandedBack { task }
            | Event::RanOn { task, .. } => Some(task),
            Event::DaemonStarted { .. }
            | Event::DaemonStopped { .. }
            | Event::ConfigReloaded { .. }
            | Event::ConfigRejected { .. }
            | Event::ProviderCooldown { .. }
            | Event::ProviderDisabled { .. }
            | Event::ProviderEnabled { .. }
            | Event::NotifySent { .. }
            | Event::NotifyFailed { .. }
            | Event::Rejected { .. } => None,
        }
    }
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}
