//! The live tasks: one [`Live`] value per task the engine is handling — from the moment it is
//! received until it is settled — in one map. A task is queued, running, parked between
//! attempts, a workflow run being advanced, or finishing; each state carries its own data.
//!
//! Two indexes sit beside the map so that the engine never scans every task: the run queue
//! (queued tasks in start order) and the runs due to be advanced. Only the methods here change
//! the map or the indexes, so they never disagree. The ledger stays the truth about a task's
//! history; this is what the running daemon is doing with it now.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::watch;

use crate::judge::StopCause;
use crate::workflow::Workflow;

/// Order of the run queue: higher priority first, then arrival.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct QueueKey {
    priority: Reverse<i64>,
    arrival: u64,
    /// Shared with the live map's key: one allocation per task for both.
    pub(super) id: Arc<str>,
}

/// The run queue: queued tasks in start order, higher priority first, then arrival. One lane
/// per priority, each in arrival order, so that a queued task costs 24 bytes here (a B-tree of
/// keys took about 64: keys that come in order leave its nodes half full). A task joins at the
/// back of its lane and usually starts from the front, both O(1); one that starts ahead of
/// tasks that wait (for `after`, a cooling provider) or is put back at its place is found by
/// binary search, and the shorter side of the lane moves.
#[derive(Default)]
struct RunQueue {
    lanes: BTreeMap<Reverse<i64>, VecDeque<(u64, Arc<str>)>>,
    len: usize,
}

impl RunQueue {
    fn insert(&mut self, key: QueueKey) {
        let lane = self.lanes.entry(key.priority).or_default();
        if let Err(at) = lane.binary_search_by_key(&key.arrival, |(arrival, _)| *arrival) {
            lane.insert(at, (key.arrival, key.id));
            self.len += 1;
        }
    }

    fn remove(&mut self, key: &QueueKey) {
        let Some(lane) = self.lanes.get_mut(&key.priority) else {
            return;
        };
        if let Ok(at) = lane.binary_search_by_key(&key.arrival, |(arrival, _)| *arrival) {
            lane.remove(at);
            self.len -= 1;
            if lane.is_empty() {
                self.lanes.remove(&key.priority);
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = &str> {
        self.lanes
            .values()
            .flat_map(|lane| lane.iter().map(|(_, id)| &**id))
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn shrink(&mut self) {
        for lane in self.lanes.values_mut() {
            lane.shrink_to_fit();
        }
    }
}

/// What the engine is doing with a task now. The states with data are boxed: every queued task
/// has a `Live` (100,000 of them after a big drop), only the few running ones need the room.
pub(super) enum Live {
    /// Waiting for its next attempt, in the run queue.
    Queued,
    /// An attempt is running — or its agent has ended and the end is being recorded: then it
    /// holds no slot ([`LiveTasks::release_slot`]), but a cancel still waits for that end.
    Running(Box<RunningAttempt>),
    /// Between attempts and not queued: its attempt was interrupted by a stop, the ledger
    /// refused its record, or it is being started.
    Parked,
    /// A workflow run: the runner advances it.
    Run(Box<RunProgress>),
    /// Its work is verified on its branch; it waits for, or is in, the merge queue.
    Merging,
    /// Its result, cancellation or escalation is being written: nothing else may touch it.
    Finishing,
}

/// An attempt the engine started and has not heard the end of.
pub(super) struct RunningAttempt {
    /// The agent's base name (`claude` of `claude:sonnet`).
    pub(super) agent: String,
    /// The isolated instance it uses (`isolate: true`), freed when it ends.
    pub(super) instance: Option<usize>,
    /// What it holds of resource groups until it ends.
    pub(super) resources: BTreeMap<String, f64>,
    /// The attempt task holds the receiver. Sending a cause (or dropping this sender) stops
    /// the attempt: its whole process group is terminated.
    pub(super) stop: watch::Sender<Option<StopCause>>,
}

/// A workflow run being advanced.
#[derive(Default)]
pub(super) struct RunProgress {
    /// Its parsed workflow, once loaded.
    pub(super) workflow: Option<Arc<Workflow>>,
    /// Loop rounds whose evaluator runs now, by `phase/round`, so that none starts twice.
    /// The evaluator holds the receiver of its stop: when the run stops being advanced
    /// (finishing, settled) this is dropped, and the evaluator's process group with it.
    pub(super) evaluating: BTreeMap<String, Evaluator>,
}

/// A loop evaluator the engine started for a run.
pub(super) struct Evaluator {
    /// Tells this evaluator's end from that of an earlier one of the same round.
    pub(super) id: u64,
    /// `true` (or dropping it) terminates the evaluator's process group.
    pub(super) stop: watch::Sender<bool>,
}

/// 32 bytes: every queued task has one (the id is the map's key, not repeated here).
struct Entry {
    /// Its place in the run queue, kept across attempts: priority, then arrival.
    priority: Reverse<i64>,
    arrival: u64,
    live: Live,
}

/// Every live task, by id.
#[derive(Default)]
pub(super) struct LiveTasks {
    tasks: HashMap<Arc<str>, Entry>,
    /// The keys of the `Queued` tasks, in start order.
    queue: RunQueue,
    /// `Run` tasks due to be advanced.
    due_runs: BTreeSet<String>,
    /// The `Running` tasks whose agent may still run (they hold a slot): dispatch asks what
    /// they hold on every round, and must not walk every queued task to find out.
    running: BTreeSet<String>,
    arrivals: u64,
    /// How many tasks are live, for the ledger's compactor (it holds the other half, and waits
    /// while the count is high; see `compact::defers`).
    count: Arc<AtomicUsize>,
}

impl LiveTasks {
    /// The entry of `id`, made (parked, at the end of the queue order) if it has none.
    fn entry(&mut self, id: &str, priority: i64) -> &mut Entry {
        self.entry_from(id, priority, || Arc::from(id))
    }

    /// [`LiveTasks::entry`], the id of a new entry made by `make` (a copy of one held elsewhere
    /// shares its allocation).
    fn entry_from(
        &mut self,
        id: &str,
        priority: i64,
        make: impl FnOnce() -> Arc<str>,
    ) -> &mut Entry {
        if !self.tasks.contains_key(id) {
            self.arrivals += 1;
            self.tasks.insert(
                make(),
                Entry {
                    priority: Reverse(priority),
                    arrival: self.arrivals,
                    live: Live::Parked,
                },
            );
            self.count.store(self.tasks.len(), Ordering::Relaxed);
        }
        self.tasks.get_mut(id).expect("just made")
    }

    /// Sets the state of `id`, keeping the indexes in step; returns the state it had.
    fn set(&mut self, id: &str, priority: i64, live: Live) -> Live {
        let entry = self.entry(id, priority);
        let before = std::mem::replace(&mut entry.live, live);
        let (shared, entry) = self.tasks.get_key_value(id).expect("just made");
        let key = QueueKey {
            priority: entry.priority,
            arrival: entry.arrival,
            id: shared.clone(),
        };
        let now_queued = matches!(entry.live, Live::Queued);
        let now_running = matches!(entry.live, Live::Running(_));
        let now_run = matches!(entry.live, Live::Run(_));
        if matches!(before, Live::Queued) && !now_queued {
            self.queue.remove(&key);
        }
        if !matches!(before, Live::Queued) && now_queued {
            self.queue.insert(key);
        }
        match (matches!(before, Live::Running(_)), now_running) {
            (true, false) => {
                self.running.remove(id);
            }
            (false, true) => {
                self.running.insert(id.to_string());
            }
            _ => {}
        }
        if !now_run {
            self.due_runs.remove(id);
        }
        before
    }

    /// Puts a task in the run queue for its next attempt (at the place it had, if it had one).
    /// A finishing task stays finishing, and a running one running: its attempt's end decides.
    pub(super) fn queue(&mut self, id: &str, priority: i64) {
        if !matches!(self.get(id), Some(Live::Finishing | Live::Running(_))) {
            self.set(id, priority, Live::Queued);
        }
    }

    /// [`LiveTasks::queue`] of an id whose allocation the book holds: the entry shares it.
    pub(super) fn queue_shared(&mut self, id: &Arc<str>, priority: i64) {
        self.entry_from(id, priority, || id.clone());
        self.queue(id, priority);
    }

    /// Takes a queued task out of the queue while its attempt is being started.
    pub(super) fn park(&mut self, id: &str) {
        if matches!(self.get(id), Some(Live::Queued)) {
            self.set(id, 0, Live::Parked);
        }
    }

    /// The attempt of `id` runs.
    pub(super) fn start(&mut self, id: &str, attempt: RunningAttempt) {
        self.set(id, 0, Live::Running(Box::new(attempt)));
    }

    /// The agent of `id`'s attempt has ended (its process group is gone): it no longer holds a
    /// slot, its resources or its isolated instance, though its end is still being recorded.
    /// Returns the agent, the first time only.
    pub(super) fn release_slot(&mut self, id: &str) -> Option<&str> {
        match self.tasks.get(id).map(|e| &e.live) {
            Some(Live::Running(attempt)) if self.running.remove(id) => Some(&attempt.agent),
            _ => None,
        }
    }

    /// The attempt of `id` ended: the task is parked until it is queued, settled or finishing.
    pub(super) fn end_attempt(&mut self, id: &str) -> Option<RunningAttempt> {
        if !matches!(self.get(id), Some(Live::Running(_))) {
            return None;
        }
        match self.set(id, 0, Live::Parked) {
            Live::Running(attempt) => Some(*attempt),
            _ => unreachable!("checked above"),
        }
    }

    /// A workflow run is to be advanced (made a `Run` if it was not one).
    pub(super) fn advance(&mut self, id: &str) {
        if self.is_finishing(id) {
            return;
        }
        if !matches!(self.get(id), Some(Live::Run(_))) {
            self.set(id, 0, Live::Run(Box::default()));
        }
        self.due_runs.insert(id.to_string());
    }

    /// Runs due to be advanced, in id order; they are no longer due.
    pub(super) fn take_due_runs(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.due_runs)
    }

    /// The workflow runs `id` is a task of (`<run>.<…>`), that are live.
    pub(super) fn runs_of(&self, id: &str) -> Vec<String> {
        id.match_indices('.')
            .map(|(i, _)| &id[..i])
            .filter(|run| matches!(self.get(run), Some(Live::Run(_))))
            .map(str::to_string)
            .collect()
    }

    /// The task's result, cancellation or escalation is being written. Returns false if it
    /// already was — only one of them may happen — or if an attempt still runs: the attempt is
    /// stopped first, and its end settles the task (dropping it here would free its agent's
    /// slot without the engine knowing).
    pub(super) fn begin_finishing(&mut self, id: &str) -> bool {
        if matches!(self.get(id), Some(Live::Finishing | Live::Running(_))) {
            return false;
        }
        self.set(id, 0, Live::Finishing);
        true
    }

    /// Its verified branch waits for (or is in) the merge queue.
    pub(super) fn merging(&mut self, id: &str) {
        if !matches!(self.get(id), Some(Live::Finishing | Live::Running(_))) {
            self.set(id, 0, Live::Merging);
        }
    }

    /// Its merge is over: parked until it settles.
    pub(super) fn stop_merging(&mut self, id: &str) {
        if matches!(self.get(id), Some(Live::Merging)) {
            self.set(id, 0, Live::Parked);
        }
    }

    /// Finishing failed or is to be done again: the task is parked.
    pub(super) fn stop_finishing(&mut self, id: &str) {
        if self.is_finishing(id) {
            self.set(id, 0, Live::Parked);
        }
    }

    /// The task reached `done`, `escalated` or `cancelled`: it is no longer live.
    pub(super) fn settled(&mut self, id: &str) {
        if self.tasks.contains_key(id) {
            self.set(id, 0, Live::Parked);
            self.tasks.remove(id);
            self.count.store(self.tasks.len(), Ordering::Relaxed);
        }
    }

    pub(super) fn get(&self, id: &str) -> Option<&Live> {
        self.tasks.get(id).map(|e| &e.live)
    }

    pub(super) fn run_mut(&mut self, id: &str) -> Option<&mut RunProgress> {
        match self.tasks.get_mut(id).map(|e| &mut e.live) {
            Some(Live::Run(progress)) => Some(progress.as_mut()),
            _ => None,
        }
    }

    pub(super) fn contains(&self, id: &str) -> bool {
        self.tasks.contains_key(id)
    }

    pub(super) fn is_finishing(&self, id: &str) -> bool {
        matches!(self.get(id), Some(Live::Finishing))
    }

    /// Every running attempt.
    pub(super) fn attempts(&self) -> impl Iterator<Item = &RunningAttempt> {
        self.running.iter().filter_map(|id| match self.get(id) {
            Some(Live::Running(attempt)) => Some(&**attempt),
            _ => None,
        })
    }

    pub(super) fn running_count(&self) -> usize {
        self.running.len()
    }

    /// The queued tasks, in start order.
    pub(super) fn queued(&self) -> impl Iterator<Item = &str> {
        self.queue.iter()
    }

    /// Gives back the room the map and indexes grew to for a burst now gone.
    pub(super) fn shrink(&mut self) {
        self.tasks.shrink_to_fit();
        self.queue.shrink();
    }

    /// The count of live tasks, kept up to date for whoever holds it.
    pub(super) fn counter(&self) -> Arc<AtomicUsize> {
        self.count.clone()
    }

    /// Nothing runs and nothing waits to start.
    pub(super) fn is_idle(&self) -> bool {
        self.running.is_empty() && self.queue.is_empty()
    }

    /// Terminates every running loop evaluator (a stop of the daemon).
    pub(super) fn stop_evaluators(&self) {
        for entry in self.tasks.values() {
            if let Live::Run(progress) = &entry.live {
                for evaluator in progress.evaluating.values() {
                    evaluator.stop.send_replace(true);
                }
            }
        }
    }

    /// Tasks running or finishing: what a stop waits for.
    pub(super) fn busy(&self) -> usize {
        self.tasks
            .values()
            .filter(|e| matches!(e.live, Live::Running(_) | Live::Finishing))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(agent: &str) -> RunningAttempt {
        RunningAttempt {
            agent: agent.into(),
            instance: None,
            resources: BTreeMap::new(),
            stop: watch::channel(None).0,
        }
    }

    proptest::proptest! {
        /// The lanes keep the order a sorted set of the keys has, whatever comes in and goes
        /// out, in whatever order (a set of keys was the queue before the lanes).
        #[test]
        fn the_run_queue_keeps_the_order_of_a_sorted_set(
            ops in proptest::collection::vec((proptest::bool::ANY, 0u64..40), 0..200),
        ) {
            // Key `n`: arrival `n`, one of three priorities.
            let key = |n: u64| QueueKey {
                priority: Reverse((n % 3) as i64 - 1),
                arrival: n,
                id: Arc::from(format!("t{n}")),
            };
            let mut queue = RunQueue::default();
            let mut model = BTreeSet::new();
            for (insert, n) in ops {
                if insert {
                    queue.insert(key(n));
                    model.insert(key(n));
                } else {
                    queue.remove(&key(n));
                    model.remove(&key(n));
                }
                let expected: Vec<&str> = model.iter().map(|k| &*k.id).collect();
                proptest::prop_assert_eq!(queue.iter().collect::<Vec<_>>(), expected);
                proptest::prop_assert_eq!(queue.is_empty(), model.is_empty());
                proptest::prop_assert_eq!(queue.lanes.values().any(|l| l.is_empty()), false);
            }
        }
    }

    #[test]
    fn a_task_queued_with_the_books_id_shares_its_allocation() {
        assert_eq!(
            std::mem::size_of::<Entry>(),
            32,
            "expected a live entry of 32 bytes (one per queued task)"
        );
        let id: Arc<str> = Arc::from("t");
        let mut live = LiveTasks::default();
        live.queue_shared(&id, 0);
        // The caller's, the map's key and the run queue's key.
        assert_eq!(
            Arc::strong_count(&id),
            3,
            "expected one allocation for all three"
        );
        assert_eq!(live.queued().collect::<Vec<_>>(), ["t"]);
        live.queue("u", 0);
        assert_eq!(live.queued().collect::<Vec<_>>(), ["t", "u"]);
    }

    #[test]
    fn the_count_of_live_tasks_follows_the_map() {
        let mut live = LiveTasks::default();
        let count = live.counter();
        live.queue("t", 0);
        live.queue("u", 0);
        assert_eq!(
            count.load(Ordering::Relaxed),
            2,
            "expected two live after two queued"
        );
        live.settled("t");
        assert_eq!(
            count.load(Ordering::Relaxed),
            1,
            "expected one live after one settled"
        );
    }

    fn state(live: &LiveTasks, id: &str) -> &'static str {
        match live.get(id) {
            None => "gone",
            Some(Live::Queued) => "queued",
            Some(Live::Running(_)) => "running",
            Some(Live::Parked) => "parked",
            Some(Live::Run(_)) => "run",
            Some(Live::Merging) => "merging",
            Some(Live::Finishing) => "finishing",
        }
    }

    /// Each step of a task's life, from every state it can be in: the state that follows and
    /// what the indexes say.
    #[test]
    fn transitions_table() {
        type Step = fn(&mut LiveTasks, &str);
        let steps: [(&str, Step); 9] = [
            ("queue", |l, id| l.queue(id, 0)),
            ("release_slot", |l, id| {
                l.release_slot(id);
            }),
            ("park", |l, id| l.park(id)),
            ("start", |l, id| l.start(id, attempt("a"))),
            ("end_attempt", |l, id| drop(l.end_attempt(id))),
            ("advance", |l, id| l.advance(id)),
            ("begin_finishing", |l, id| {
                l.begin_finishing(id);
            }),
            ("stop_finishing", |l, id| l.stop_finishing(id)),
            ("settled", |l, id| l.settled(id)),
        ];
        // (from, step, expected state, queued, running, due)
        let cases: &[(&str, &str, &str, usize, usize, usize)] = &[
            ("gone", "queue", "queued", 1, 0, 0),
            ("gone", "advance", "run", 0, 0, 1),
            ("gone", "begin_finishing", "finishing", 0, 0, 0),
            ("gone", "park", "gone", 0, 0, 0),
            ("gone", "end_attempt", "gone", 0, 0, 0),
            ("gone", "settled", "gone", 0, 0, 0),
            ("queued", "queue", "queued", 1, 0, 0),
            ("queued", "park", "parked", 0, 0, 0),
            ("queued", "start", "running", 0, 1, 0),
            ("queued", "begin_finishing", "finishing", 0, 0, 0),
            ("queued", "settled", "gone", 0, 0, 0),
            ("running", "end_attempt", "parked", 0, 0, 0),
            // Its agent ended: still running (a cancel waits for the end), no slot held.
            ("running", "release_slot", "running", 0, 0, 0),
            ("queued", "release_slot", "queued", 1, 0, 0),
            ("gone", "release_slot", "gone", 0, 0, 0),
            ("running", "park", "running", 0, 1, 0),
            ("running", "queue", "running", 0, 1, 0),
            ("running", "begin_finishing", "running", 0, 1, 0),
            ("running", "settled", "gone", 0, 0, 0),
            ("parked", "queue", "queued", 1, 0, 0),
            ("parked", "end_attempt", "parked", 0, 0, 0),
            ("run", "advance", "run", 0, 0, 1),
            ("run", "begin_finishing", "finishing", 0, 0, 0),
            ("run", "settled", "gone", 0, 0, 0),
            ("finishing", "queue", "finishing", 0, 0, 0),
            ("finishing", "advance", "finishing", 0, 0, 0),
            ("finishing", "begin_finishing", "finishing", 0, 0, 0),
            ("finishing", "stop_finishing", "parked", 0, 0, 0),
            ("finishing", "settled", "gone", 0, 0, 0),
        ];
        let reach: fn(&mut LiveTasks, &str, &str) = |l, id, from| match from {
            "gone" => {}
            "queued" => l.queue(id, 0),
            "running" => l.start(id, attempt("a")),
            "parked" => {
                l.queue(id, 0);
                l.park(id)
            }
            "run" => {
                l.advance(id);
                l.take_due_runs();
            }
            "finishing" => {
                l.begin_finishing(id);
            }
            other => panic!("no way to reach {other}"),
        };
        for &(from, step, want, queued, running, due) in cases {
            let mut l = LiveTasks::default();
            reach(&mut l, "t", from);
            assert_eq!(state(&l, "t"), from, "setting up {from}");
            let (_, f) = steps.iter().find(|(n, _)| *n == step).expect("a step");
            f(&mut l, "t");
            let got = (
                state(&l, "t"),
                l.queued().count(),
                l.running_count(),
                l.take_due_runs().len(),
            );
            assert_eq!(
                got,
                (want, queued, running, due),
                "{from} --{step}--> expected {want} with {queued} queued, {running} running, {due} due"
            );
        }
    }

    #[test]
    fn a_task_keeps_its_place_in_the_queue_across_attempts() {
        let mut l = LiveTasks::default();
        l.queue("first", 0);
        l.queue("second", 0);
        l.queue("urgent", 5);
        l.start("first", attempt("a"));
        l.end_attempt("first");
        l.queue("first", 0);
        assert_eq!(
            l.queued().collect::<Vec<_>>(),
            ["urgent", "first", "second"],
            "expected priority first, then arrival; `first` keeps its place after its attempt"
        );
        l.settled("first");
        l.queue("first", 0);
        assert_eq!(
            l.queued().collect::<Vec<_>>(),
            ["urgent", "second", "first"],
            "expected a settled task that comes back to join at the end"
        );
    }

    #[test]
    fn only_live_runs_are_parents() {
        let mut l = LiveTasks::default();
        l.advance("nightly");
        l.queue("nightly.review", 0);
        assert_eq!(l.runs_of("nightly.review.part-1"), ["nightly"]);
        assert_eq!(
            l.runs_of("nightly"),
            Vec::<String>::new(),
            "expected a run not to be its own parent"
        );
        assert_eq!(
            l.runs_of("nightlyx.a"),
            Vec::<String>::new(),
            "expected only a whole id before a dot to count"
        );
        l.begin_finishing("nightly");
        assert_eq!(
            l.runs_of("nightly.review"),
            Vec::<String>::new(),
            "expected a finishing run not to be advanced"
        );
    }

    #[test]
    fn a_released_slot_is_released_once_and_the_attempt_still_ends() {
        let mut l = LiveTasks::default();
        l.queue("a", 0);
        l.start("a", attempt("x"));
        assert_eq!(
            l.release_slot("a"),
            Some("x"),
            "expected the slot of agent x freed"
        );
        assert_eq!(
            l.release_slot("a"),
            None,
            "expected a second release to free nothing"
        );
        assert_eq!(
            l.running_count(),
            0,
            "expected no slot held after the release"
        );
        assert_eq!(
            l.attempts().count(),
            0,
            "expected nothing held for dispatch"
        );
        assert_eq!(
            l.busy(),
            1,
            "expected the attempt busy until its end is recorded"
        );
        assert!(
            !l.begin_finishing("a"),
            "expected finishing to wait for the attempt's recorded end"
        );
        assert_eq!(
            l.end_attempt("a").map(|a| a.agent),
            Some("x".to_string()),
            "expected the attempt to end after its slot was released"
        );
        assert_eq!(state(&l, "a"), "parked");
    }

    #[test]
    fn counts_follow_the_states() {
        let mut l = LiveTasks::default();
        l.queue("a", 0);
        l.queue("b", 0);
        l.start("a", attempt("x"));
        l.begin_finishing("b");
        assert_eq!(l.running_count(), 1, "expected one running");
        assert_eq!(l.busy(), 2, "expected running and finishing to be busy");
        assert!(!l.is_idle(), "expected running work not to be idle");
        assert_eq!(
            l.attempts().map(|a| a.agent.as_str()).collect::<Vec<_>>(),
            ["x"]
        );
        l.end_attempt("a");
        l.settled("b");
        assert!(l.is_idle(), "expected a parked task alone to be idle");
        assert!(l.contains("a") && !l.contains("b"));
    }
}
