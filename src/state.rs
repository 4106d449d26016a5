//! Task state as a fold over ledger records. The daemon applies every record it writes; `status`,
//! `progress.md` and a restarting daemon replay the file through the same [`TaskBook::apply`], so
//! there is exactly one definition of what a sequence of events means.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use serde::Serialize;

use crate::judge::Class;
use crate::ledger::{Event, Record};
use crate::task::TaskSpec;

/// Where a task is in its life.
#[derive(Clone, Debug, Serialize, PartialEq)]
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
}

impl Phase {
    pub fn is_terminal(&self) -> bool {
        matches!(self, Phase::Done { .. } | Phase::Failed { .. })
    }
    pub fn label(&self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Running { .. } => "running",
            Phase::Done { .. } => "done",
            Phase::Failed { .. } => "failed",
            Phase::Requeued => "requeued",
        }
    }
}

/// One attempt as the ledger recorded it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AttemptSummary {
    pub n: u32,
    pub agent: String,
    pub started_ms: u64,
    pub pid: u32,
    /// Identity of the process, so recovery after a crash never signals a reused pid.
    #[serde(skip)]
    pub start_ticks: Option<u64>,
    #[serde(skip)]
    pub boot_id: Option<String>,
    /// `None` while it runs.
    pub class: Option<Class>,
    pub reason: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub duration_ms: u64,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct TaskRecord {
    pub id: String,
    pub title: String,
    /// The task file's name in its current directory.
    pub file: String,
    pub received_ms: u64,
    pub chain: Vec<String>,
    /// Index into `chain` of the agent the next attempt uses.
    pub chain_pos: usize,
    pub priority: i64,
    pub after: Vec<String>,
    pub attempts: Vec<AttemptSummary>,
    #[serde(flatten)]
    pub phase: Phase,
    /// The full spec while the task can still run; dropped once it is finished to keep a
    /// long-lived daemon's memory flat (the file in `done/`/`failed/` still has it).
    #[serde(skip)]
    pub spec: Option<Arc<TaskSpec>>,
}

impl TaskRecord {
    /// Sum of the attempts' durations.
    pub fn busy_ms(&self) -> u64 {
        self.attempts.iter().map(|a| a.duration_ms).sum()
    }
}

/// A rejected file, as remembered for `status`.
#[derive(Clone, Debug, Serialize)]
pub struct RejectedFile {
    pub file: String,
    pub reason: String,
    pub moved_to: String,
    pub ts: u64,
}

/// How many rejections `status` remembers (the ledger keeps all of them).
const REJECTED_KEPT: usize = 100;

/// All tasks, in arrival order.
#[derive(Default, Debug)]
pub struct TaskBook {
    tasks: HashMap<String, TaskRecord>,
    order: Vec<String>,
    pub rejected: VecDeque<RejectedFile>,
    pub last_seq: u64,
}

impl TaskBook {
    pub fn from_records<'a>(records: impl IntoIterator<Item = &'a Record>) -> Self {
        let mut book = TaskBook::default();
        for r in records {
            book.apply(r);
        }
        book
    }

    pub fn get(&self, id: &str) -> Option<&TaskRecord> {
        self.tasks.get(id)
    }

    pub fn contains(&self, id: &str) -> bool {
        self.tasks.contains_key(id)
    }

    /// Tasks in arrival order.
    pub fn iter(&self) -> impl Iterator<Item = &TaskRecord> {
        self.order.iter().filter_map(|id| self.tasks.get(id))
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Applies one record. Records about unknown tasks are ignored (they can only come from a
    /// hand-edited ledger), so replay never fails.
    pub fn apply(&mut self, r: &Record) {
        self.last_seq = self.last_seq.max(r.seq);
        match &r.event {
            Event::Received { task, file, spec } => {
                if let Some(t) = self.tasks.get_mut(task) {
                    // A requeued task coming back through the inbox: same task, same history.
                    t.file = file.clone();
                    t.phase = Phase::Pending;
                    t.spec = Some(Arc::new((**spec).clone()));
                    return;
                }
                self.order.push(task.clone());
                self.tasks.insert(
                    task.clone(),
                    TaskRecord {
                        id: task.clone(),
                        title: spec.title.clone(),
                        file: file.clone(),
                        received_ms: r.ts,
                        chain: spec.chain.clone(),
                        chain_pos: 0,
                        priority: spec.fields.priority,
                        after: spec.fields.after.clone(),
                        attempts: vec![],
                        phase: Phase::Pending,
                        spec: Some(Arc::new((**spec).clone())),
                    },
                );
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
                if let Some(t) = self.tasks.get_mut(task) {
                    t.file = file.clone();
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
                if let Some(t) = self.tasks.get_mut(task) {
                    t.attempts.push(AttemptSummary {
                        n: *attempt,
                        agent: agent.clone(),
                        started_ms: r.ts,
                        pid: *pid,
                        start_ticks: *start_ticks,
                        boot_id: boot_id.clone(),
                        class: None,
                        reason: String::new(),
                        exit_code: None,
                        signal: None,
                        duration_ms: 0,
                        stdout_bytes: 0,
                        stderr_bytes: 0,
                    });
                    t.phase = Phase::Running {
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
                ..
            } => {
                if let Some(t) = self.tasks.get_mut(task) {
                    if !t.attempts.iter().any(|a| a.n == *attempt) {
                        // An attempt that never started (spawn failure) has no start event.
                        t.attempts.push(AttemptSummary {
                            n: *attempt,
                            agent: agent.clone(),
                            started_ms: r.ts,
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
                        });
                    }
                    if let Some(a) = t.attempts.iter_mut().rev().find(|a| a.n == *attempt) {
                        a.class = Some(*class);
                        a.reason = reason.clone();
                        a.exit_code = *exit_code;
                        a.signal = *signal;
                        a.duration_ms = *duration_ms;
                        a.stdout_bytes = *stdout_bytes;
                        a.stderr_bytes = *stderr_bytes;
                    }
                    // A failure moves the chain on; an interruption retries the same agent.
                    if !matches!(class, Class::Ok | Class::Interrupted) {
                        t.chain_pos += 1;
                    }
                    if matches!(t.phase, Phase::Running { .. }) {
                        t.phase = Phase::Pending;
                    }
                }
            }
            Event::Done {
                task,
                agent,
                output,
                ..
            } => {
                if let Some(t) = self.tasks.get_mut(task) {
                    t.phase = Phase::Done {
                        agent: agent.clone(),
                        output: output.clone(),
                        finished_ms: r.ts,
                    };
                    t.spec = None;
                }
            }
            Event::Escalated { task, reason, .. } => {
                if let Some(t) = self.tasks.get_mut(task) {
                    t.phase = Phase::Failed {
                        reason: reason.clone(),
                        finished_ms: r.ts,
                    };
                    t.spec = None;
                }
            }
            Event::Requeued { task, file } => {
                if let Some(t) = self.tasks.get_mut(task) {
                    t.phase = Phase::Requeued;
                    t.file = file.clone();
                }
            }
            Event::DaemonStarted { .. } | Event::DaemonStopped { .. } => {}
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
            rec(
                1,
                Event::Received {
                    task: "t".into(),
                    file: "t.json".into(),
                    spec: spec("t"),
                },
            ),
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
        assert_eq!((t.chain_pos, t.phase.label()), (1, "pending"));
        let book = TaskBook::from_records(&records);
        let t = book.get("t").unwrap();
        assert_eq!(t.attempts.len(), 2);
        assert_eq!(t.attempts[0].class, Some(Class::Exit));
        assert_eq!(t.busy_ms(), 14);
        assert!(matches!(t.phase, Phase::Done { .. }));
        assert!(t.spec.is_none(), "finished tasks drop their spec");
        assert_eq!(book.last_seq, 7);
    }

    #[test]
    fn interruption_does_not_advance_the_chain() {
        let records = vec![
            rec(
                1,
                Event::Received {
                    task: "t".into(),
                    file: "t.json".into(),
                    spec: spec("t"),
                },
            ),
            started(2, 1, "a"),
            finished(3, 1, "a", Class::Interrupted),
            rec(
                4,
                Event::Requeued {
                    task: "t".into(),
                    file: "t.json".into(),
                },
            ),
            rec(
                5,
                Event::Received {
                    task: "t".into(),
                    file: "t.json".into(),
                    spec: spec("t"),
                },
            ),
        ];
        let book = TaskBook::from_records(&records);
        let t = book.get("t").unwrap();
        assert_eq!(t.chain_pos, 0);
        assert_eq!(t.phase, Phase::Pending);
        assert_eq!(book.len(), 1);
    }
}
