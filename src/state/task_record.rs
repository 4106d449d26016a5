//! One task's record in the book: its names, chain, attempts, phase and what only some tasks
//! have, held compactly (see the field docs), and how it is written to a snapshot. The book
//! (`state.rs`) alone sets what identifies it; the fold there changes it record by record.

use super::*;

/// One attempt as the ledger recorded it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AttemptSummary {
    pub n: u32,
    pub agent: String,
    pub started_ms: u64,
    pub pid: u32,
    /// Identity of the process, so recovery after a crash never signals a reused pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_ticks: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// `None` while it runs.
    pub class: Option<Class>,
    pub reason: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub duration_ms: u64,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<crate::usage::Usage>,
    /// Why the supervisor stopped it, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<crate::judge::StopCause>,
    /// In a worktree: what it changed, its commit when it passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work: Option<Box<crate::ledger::WorkChecked>>,
}

impl AttemptSummary {
    /// How long it took, or (running) has taken until `now_ms`.
    pub fn elapsed_ms(&self, now_ms: u64) -> u64 {
        if self.class.is_none() {
            now_ms.saturating_sub(self.started_ms)
        } else {
            self.duration_ms
        }
    }

    /// Attempt `n` of `agent`, started at `started_ms`, with nothing known yet of how it runs
    /// or ends.
    pub(crate) fn started(n: u32, agent: &str, started_ms: u64) -> Self {
        AttemptSummary {
            n,
            agent: agent.to_string(),
            started_ms,
            pid: 0,
            start_ticks: None,
            boot_id: None,
            class: None,
            reason: String::new(),
            exit_code: None,
            signal: None,
            duration_ms: 0,
            stdout_bytes: 0,
            stderr_bytes: 0,
            usage: None,
            stopped: None,
            work: None,
        }
    }
}

/// A task's worktree and where its branch stands, as the ledger recorded them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WorktreeState {
    pub tree: crate::git::Tree,
    pub branch: String,
    pub base: String,
    /// The branch it merges into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Changes of the last attempt that was checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<crate::git::DiffStat>,
    /// The verified commit on its branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    pub merge: MergeState,
    /// The worktree directory is gone (merged, discarded, cleaned up).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
    /// `dirigent discard` is recorded, its branch's deletion not yet (`worktree_removed` with
    /// the branch deleted): a crash in between leaves the branch, which the next start deletes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub discard_pending: bool,
    /// `on_conflict: agent`: the next attempt resolves a conflict with this target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolve: Option<Resolve>,
    /// Conflicts handed to an agent so far.
    #[serde(default, skip_serializing_if = "super::is_zero_u32")]
    pub resolutions: u32,
}

/// A conflict an agent is to resolve in the task's tree.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Resolve {
    pub target: String,
    pub files: Vec<String>,
    /// The conflict as the report shows it (files and marked regions).
    pub reason: String,
}

/// Most bytes of a task's diff that `dirigent diff` and the doors return.
pub const MAX_DIFF: usize = 1024 * 1024;

impl WorktreeState {
    /// What the task changed against its base, as a patch with a stat: its verified commit
    /// when there is one (or the merged commit), else its tree as it stands now. Bounded by
    /// [`MAX_DIFF`] (the cut is said).
    pub fn diff_text(&self, repo: &crate::git::Repo) -> Result<String, crate::git::GitError> {
        let mut text = match (&self.merge, &self.commit) {
            (MergeState::Merged { commit, .. }, _) => repo.diff_between(&self.base, commit)?,
            (_, Some(commit)) => repo.diff_between(&self.base, commit)?,
            (_, None) if !self.removed && self.tree.path.exists() => self.tree.patch(&self.base)?,
            (_, None) => String::new(),
        };
        crate::progress::cut_bytes(&mut text, MAX_DIFF, "\n… (cut at 1 MiB)\n");
        Ok(text)
    }
}

/// Where a task's branch stands with its target.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum MergeState {
    /// Not verified yet (or `merge: none`).
    #[default]
    NotYet,
    Waiting {
        reason: String,
    },
    Started {
        target: String,
        onto: String,
    },
    Ready {
        target: String,
        old: String,
        commit: String,
    },
    Merged {
        target: String,
        commit: String,
    },
    Failed {
        class: Class,
        reason: String,
    },
    Discarded,
}

/// A loop round of a workflow run, judged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoopRound {
    pub phase: String,
    pub round: u32,
    pub passed: bool,
    /// The evaluator's words, given to the next round.
    pub feedback: String,
}

/// Written through [`RecordOut`] (its spec whole); read as derived.
#[derive(Clone, Debug, Deserialize)]
pub struct TaskRecord {
    /// Shared with the book's arrival order and the engine's live map: one allocation for all.
    /// The book's table finds the record by it, so only the book sets it (read it with
    /// [`TaskRecord::id`]).
    pub(super) id: Arc<str>,
    /// Its title and its file's name (read with [`TaskRecord::title`] and
    /// [`TaskRecord::file`]), one allocation for both.
    #[serde(flatten)]
    pub(super) names: Names,
    pub received_ms: u64,
    /// Shared by the tasks of a batch that have the same chain (see [`TaskBook::share_chain`]).
    /// An `Arc` of a `Vec` rather than of a slice: a thin pointer, 8 bytes less in the record.
    /// The packed spec leaves it out when it is the same, so only the book sets it, with the
    /// spec (read it with [`TaskRecord::chain`]).
    pub(super) chain: Arc<Vec<String>>,
    /// Its phase, attempts, place in the chain and cost (read with [`TaskRecord::phase`] and
    /// the like), once it has any.
    #[serde(flatten)]
    pub(super) progress: Progress,
    /// The full spec while the task can still run, held as its text less what this record
    /// holds (see [`PackedSpec`]; read it with [`TaskRecord::spec`], set it with
    /// [`TaskRecord::hold_spec`]); dropped once it is finished to keep a long-lived daemon's
    /// memory flat (the file in `done/`/`failed/` still has it).
    #[serde(default, rename = "spec")]
    pub(super) packed_spec: Option<PackedSpec>,
    /// What only some tasks have (read with [`TaskRecord::more`]). In a snapshot its fields sit
    /// beside the others, as before it was split off.
    #[serde(flatten)]
    pub(super) more: More,
}

/// How a [`TaskRecord`] is written: its fields as they are, but its spec whole (the record
/// holds it packed against its own id, title and chain), so a snapshot, and the records a
/// daemon sends, keep the shape they had before it was packed. A field added to the record
/// is added here too (the round-trip tests below catch one left out).
#[derive(Serialize)]
pub(super) struct RecordOut<'a> {
    id: &'a str,
    title: &'a str,
    file: &'a str,
    received_ms: u64,
    chain: &'a [String],
    chain_pos: usize,
    priority: i64,
    attempts: &'a [AttemptSummary],
    #[serde(flatten)]
    phase: &'a Phase,
    #[serde(skip_serializing_if = "super::is_zero_f64")]
    cost_usd: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    spec: Option<Arc<TaskSpec>>,
    #[serde(flatten)]
    more: &'a More,
}

thread_local! {
    /// Set by [`with_prompts_cut`] while a record is written for a listing.
    static CUT_PROMPTS_AT: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Runs `write` with every record written by this thread carrying at most `at` bytes of its
/// prompt (cut at a character, `…` added): a listing of every task (`status`) need not carry
/// every waiting task's prompt whole — up to 1 MiB each. One task's record (`status ID`, `GET
/// /tasks/ID`) and a snapshot are written whole.
pub fn with_prompts_cut<T>(at: usize, write: impl FnOnce() -> T) -> T {
    struct Reset(Option<usize>);
    impl Drop for Reset {
        fn drop(&mut self) {
            CUT_PROMPTS_AT.with(|c| c.set(self.0));
        }
    }
    let _reset = Reset(CUT_PROMPTS_AT.with(|c| c.replace(Some(at))));
    write()
}

impl Serialize for TaskRecord {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Every field named, so that one added to the record does not compile until it is
        // written here too.
        let TaskRecord {
            id,
            names: _,
            received_ms,
            chain,
            progress: _,
            packed_spec: _,
            more,
        } = self;
        RecordOut {
            id,
            title: self.title(),
            file: self.file(),
            received_ms: *received_ms,
            chain,
            chain_pos: self.chain_pos(),
            priority: self.priority(),
            attempts: self.attempts(),
            phase: self.phase(),
            cost_usd: self.cost_usd(),
            spec: match CUT_PROMPTS_AT.with(|c| c.get()) {
                None => self.spec(),
                Some(at) => self.spec().map(|spec| {
                    let mut spec = Arc::unwrap_or_clone(spec);
                    crate::progress::cut_bytes(&mut spec.prompt, at, "…");
                    if let Some(p) = spec.fields.prompt.as_mut() {
                        crate::progress::cut_bytes(p, at, "…");
                    }
                    Arc::new(spec)
                }),
            },
            more,
        }
        .serialize(s)
    }
}

/// A task's title and its file's name in one allocation: every waiting task has both, and
/// apart they took two of malloc's smallest chunks (32 bytes) and 32 bytes of the record.
#[derive(Clone, Debug)]
pub(super) struct Names {
    /// The title, then the file name.
    text: Box<str>,
    title_len: usize,
}

impl Names {
    pub(super) fn new(title: &str, file: &str) -> Self {
        Names {
            text: [title, file].concat().into(),
            title_len: title.len(),
        }
    }

    pub(super) fn title(&self) -> &str {
        &self.text[..self.title_len]
    }

    pub(super) fn file(&self) -> &str {
        &self.text[self.title_len..]
    }
}

impl<'de> Deserialize<'de> for Names {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Written {
            title: String,
            file: String,
        }
        let w = Written::deserialize(d)?;
        Ok(Names::new(&w.title, &w.file))
    }
}

/// What a task has once it has left its first wait: its phase, attempts, place in the chain
/// and cost. A task that has not started has none of it (phase `pending`, no attempts, the
/// chain's first agent, nothing spent) and no box: the tasks of a big drop wait in a record
/// of 88 bytes instead of 200.
#[derive(Clone, Debug, Deserialize)]
pub struct TaskProgress {
    /// Index into `chain` of the agent the next attempt uses.
    #[serde(default)]
    pub chain_pos: usize,
    #[serde(default)]
    pub attempts: Vec<AttemptSummary>,
    #[serde(flatten)]
    pub phase: Phase,
    /// What its attempts cost so far, in US dollars.
    #[serde(default)]
    pub cost_usd: f64,
}

impl TaskProgress {
    const NONE: TaskProgress = TaskProgress {
        chain_pos: 0,
        attempts: Vec::new(),
        phase: Phase::Pending,
        cost_usd: 0.0,
    };

    pub(super) fn is_none(&self) -> bool {
        // Every field named: one added and not checked here would be dropped from a task that
        // has not started, when a snapshot is read.
        let TaskProgress {
            chain_pos,
            attempts,
            phase,
            cost_usd,
        } = self;
        *chain_pos == 0 && attempts.is_empty() && *phase == Phase::Pending && *cost_usd == 0.0
    }
}

/// What a task without any [`TaskProgress`] reads.
static NO_PROGRESS: TaskProgress = TaskProgress::NONE;

/// A record's [`TaskProgress`], boxed only once it has any.
#[derive(Clone, Debug, Default)]
pub(super) struct Progress(pub(super) Option<Box<TaskProgress>>);

impl<'de> Deserialize<'de> for Progress {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let p = TaskProgress::deserialize(d)?;
        Ok(Progress((!p.is_none()).then(|| Box::new(p))))
    }
}

/// The parts of a [`TaskRecord`] that most tasks never use — `after`, a workflow run's phases
/// and rounds, a budget, a retry's wait, an origin, a role, a priority other than 0, a
/// worktree, a fleet part — held in one box that a task without any of them does not have. A
/// big drop holds every waiting task in full: without them a record is 168 bytes smaller.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TaskMore {
    /// Always written (as `[]` too): builds before the split required it in a snapshot.
    #[serde(default)]
    pub after: Vec<String>,
    /// The workflow run it is a step of (see `TaskFields::workflow_run`): a run takes as its
    /// own only a task recorded as its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_run: Option<String>,
    /// A workflow run's completed phases and their outputs, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<(String, String)>,
    /// A workflow run's judged loop rounds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rounds: Vec<LoopRound>,
    /// Its `budget_usd` (kept after the spec is dropped, for `status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<f64>,
    /// A `network` retry waits until then (Unix ms) before the same agent runs again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<u64>,
    /// For a task created from inside an attempt: the task at the top of that line (the one no
    /// attempt created), whose count `max_spawned_tasks` limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// Its worktree, when its attempts edit in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worktree: Option<Box<WorktreeState>>,
    /// The role it was given (kept after the spec is dropped, for filters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Its priority, when not 0 (read with [`TaskRecord::priority`]; written by the record in
    /// the place it had before it was moved here).
    #[serde(default, skip_serializing)]
    pub priority: i64,
    /// Its part in a fleet, in fleet mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<Box<FleetPart>>,
    /// The number of its last attempt when it was last retried (0: never retried, or before
    /// any attempt): attempts up to it belong to the earlier run, so a successful one there
    /// says nothing of this run (a crash right after `retried` must not settle it).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retried_after: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// What a task without any of [`TaskMore`]'s parts reads.
static NO_MORE: TaskMore = TaskMore {
    after: Vec::new(),
    workflow_run: None,
    phases: Vec::new(),
    rounds: Vec::new(),
    budget_usd: None,
    not_before_ms: None,
    origin: None,
    worktree: None,
    role: None,
    priority: 0,
    fleet: None,
    retried_after: 0,
};

impl TaskMore {
    pub(super) fn is_empty(&self) -> bool {
        // Every field named: one added and not checked here would be dropped when the record
        // lets its box go.
        let TaskMore {
            after,
            workflow_run,
            phases,
            rounds,
            budget_usd,
            not_before_ms,
            origin,
            worktree,
            role,
            priority,
            fleet,
            retried_after,
        } = self;
        after.is_empty()
            && workflow_run.is_none()
            && phases.is_empty()
            && rounds.is_empty()
            && budget_usd.is_none()
            && not_before_ms.is_none()
            && origin.is_none()
            && worktree.is_none()
            && role.is_none()
            && *priority == 0
            && fleet.is_none()
            && *retried_after == 0
    }
}

/// A record's [`TaskMore`], boxed only when it has something.
#[derive(Clone, Debug, Default)]
pub(super) struct More(pub(super) Option<Box<TaskMore>>);

impl More {
    pub(super) fn of(more: TaskMore) -> Self {
        More((!more.is_empty()).then(|| Box::new(more)))
    }
}

impl Serialize for More {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.as_deref().unwrap_or(&NO_MORE).serialize(s)
    }
}

impl<'de> Deserialize<'de> for More {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        TaskMore::deserialize(d).map(More::of)
    }
}

impl TaskRecord {
    /// Its id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its id, to hold one more reference to it (the engine's live map does).
    pub fn shared_id(&self) -> &Arc<str> {
        &self.id
    }

    /// Its fallback chain, fixed when it was accepted (or retried).
    pub fn chain(&self) -> &[String] {
        &self.chain
    }

    /// Where it is in its life.
    pub fn phase(&self) -> &Phase {
        &self.progress().phase
    }

    /// Its attempts so far, oldest first.
    pub fn attempts(&self) -> &[AttemptSummary] {
        &self.progress().attempts
    }

    /// Its last attempt while the ledger shows it started and not ended.
    pub fn open_attempt(&self) -> Option<&AttemptSummary> {
        self.attempts().last().filter(|a| a.class.is_none())
    }

    /// Index into `chain` of the agent the next attempt uses.
    pub fn chain_pos(&self) -> usize {
        self.progress().chain_pos
    }

    /// What its attempts cost so far, in US dollars.
    pub fn cost_usd(&self) -> f64 {
        self.progress().cost_usd
    }

    pub(super) fn progress(&self) -> &TaskProgress {
        self.progress.0.as_deref().unwrap_or(&NO_PROGRESS)
    }

    /// [`TaskRecord::progress`], to change; gives the record its box if it has none. Only the
    /// book's `apply` changes a record (tests of decisions set one up with it too).
    pub(crate) fn progress_mut(&mut self) -> &mut TaskProgress {
        self.progress
            .0
            .get_or_insert_with(|| Box::new(TaskProgress::NONE))
    }

    /// Its `after`, phases, rounds, budget, retry wait, origin, worktree, role and fleet part.
    pub fn more(&self) -> &TaskMore {
        self.more.0.as_deref().unwrap_or(&NO_MORE)
    }

    /// [`TaskRecord::more`], to change; gives the record its box if it has none.
    pub fn more_mut(&mut self) -> &mut TaskMore {
        self.more.0.get_or_insert_with(Box::default)
    }

    /// [`TaskRecord::more`], to change what is there, if the record has a box.
    pub(super) fn more_present(&mut self) -> Option<&mut TaskMore> {
        self.more.0.as_deref_mut()
    }

    /// Sets when the next attempt may start (`None`: at once) without giving the record a box
    /// for nothing.
    pub(super) fn set_not_before(&mut self, at: Option<u64>) {
        match at {
            Some(_) => self.more_mut().not_before_ms = at,
            None => {
                if let Some(m) = self.more_present() {
                    m.not_before_ms = None;
                }
                self.tidy_more();
            }
        }
    }

    /// Lets go of the record's box once nothing is left in it.
    pub(super) fn tidy_more(&mut self) {
        if self.more.0.as_ref().is_some_and(|m| m.is_empty()) {
            self.more.0 = None;
        }
    }

    /// Its priority: higher starts first.
    pub fn priority(&self) -> i64 {
        self.more().priority
    }

    /// Its title: the task file's, or made from its prompt.
    pub fn title(&self) -> &str {
        self.names.title()
    }

    /// The task file's name in its current directory.
    pub fn file(&self) -> &str {
        self.names.file()
    }

    /// What its packed spec leaves out.
    pub(super) fn held(&self) -> Held<'_> {
        Held {
            id: &self.id,
            title: self.title(),
            chain: &self.chain,
        }
    }

    /// Its spec, parsed, while it can still run.
    pub fn spec(&self) -> Option<Arc<TaskSpec>> {
        self.packed_spec.as_ref().map(|p| p.unpack(self.held()))
    }

    /// Keeps `spec` until the task finishes (packed against the record's id, title and chain:
    /// set those first).
    /// Returns the bytes let go of (a spec held before) and the bytes held now.
    #[must_use = "the book counts the bytes specs hold"]
    pub(super) fn hold_spec(&mut self, spec: &TaskSpec) -> (usize, usize) {
        let packed = PackedSpec::pack(spec, self.held());
        let held = packed.len();
        let freed = self.packed_spec.replace(packed).map_or(0, |p| p.len());
        (freed, held)
    }

    /// Lets go of its spec (it has finished); returns the bytes let go of.
    #[must_use = "the book counts the bytes specs hold"]
    pub(super) fn drop_spec(&mut self) -> usize {
        self.packed_spec.take().map_or(0, |p| p.len())
    }

    /// Whether it still holds its spec.
    pub fn has_spec(&self) -> bool {
        self.packed_spec.is_some()
    }

    /// Whether it is (or may be) a workflow run, live or finished: a finished run's spec is
    /// gone, so a finished task with no chain of its own counts, as does one with completed
    /// phases. (Ids under such a task's are refused at the door.)
    pub fn may_be_run(&self) -> bool {
        self.workflow().is_some()
            || (self.chain.is_empty()
                && (self.phase().is_terminal() || !self.more().phases.is_empty()))
    }

    /// The workflow it runs, if it is a workflow run that can still run.
    pub fn workflow(&self) -> Option<String> {
        // A run has no chain of its own: any other task answers without its spec being read
        // (listings ask this of every task).
        if !self.chain.is_empty() {
            return None;
        }
        self.packed_spec.as_ref().and_then(PackedSpec::workflow)
    }

    /// Its branch and what it changed, for one-line listings: `dirigent/t1: 3 files +10 -2`.
    pub fn branch_note(&self) -> Option<String> {
        let w = self.more().worktree.as_ref()?;
        Some(match w.diff {
            Some(d) => format!(
                "{}: {} file{} +{} -{}",
                w.branch,
                d.files,
                if d.files == 1 { "" } else { "s" },
                d.insertions,
                d.deletions
            ),
            None => w.branch.clone(),
        })
    }

    /// How many of its last attempts in a row ended `interrupted` by the daemon stopping (not
    /// by a pause for a resource).
    pub fn interruptions_in_a_row(&self) -> u32 {
        self.attempts()
            .iter()
            .rev()
            .take_while(|a| {
                a.class == Some(Class::Interrupted)
                    && a.stopped != Some(crate::judge::StopCause::Exhausted)
            })
            .count() as u32
    }

    /// The time its attempts took, a running one counted up to `now_ms`.
    pub fn busy_ms(&self, now_ms: u64) -> u64 {
        self.attempts().iter().map(|a| a.elapsed_ms(now_ms)).sum()
    }
}
