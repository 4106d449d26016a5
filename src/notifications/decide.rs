//! The decisions of notifying, as pure functions tested as case tables: which ledger records
//! become which notifications ([`Known::see`]), which of them a destination takes
//! ([`wanted`]), when a burst is held back and summarised ([`Gate`]), and how long to wait
//! before trying a delivery again ([`backoff`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde::Serialize;

use crate::config::notify::{Destination, Kind};
use crate::judge::Class;
use crate::ledger::{Event, Record};

/// One thing to tell people.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notice {
    pub kind: Kind,
    /// The task (or, for a disabled provider, the provider) it is about.
    pub about: Option<String>,
    /// The agent of the task's latest attempt, when known.
    pub agent: Option<String>,
    /// One line for a person: "Task `t1` escalated".
    pub title: String,
    /// What happened, in a sentence or two.
    pub text: String,
    /// The record it came from.
    pub seq: u64,
    pub ts: u64,
}

/// What the notifier remembers of tasks in flight, to word their notifications: titles, their
/// latest agent, and which tasks are workflow runs. Forgotten when a task ends.
#[derive(Default)]
pub struct Known {
    titles: HashMap<String, String>,
    agents: HashMap<String, String>,
    runs: HashSet<String>,
}

/// Escalation reasons that mean a budget stopped the work (see `engine::admission`).
fn is_budget(reason: &str) -> bool {
    reason.starts_with("the budget is spent") || reason.starts_with("the daily budget is spent")
}

impl Known {
    /// The notifications a record makes (none for most).
    pub fn see(&mut self, r: &Record) -> Vec<Notice> {
        let notice =
            |kind, about: &str, agent: Option<&String>, title: String, text: String| Notice {
                kind,
                about: Some(about.to_string()),
                agent: agent.cloned(),
                title,
                text,
                seq: r.seq,
                ts: r.ts,
            };
        match &r.event {
            Event::Received { task, spec, .. } => {
                self.titles.insert(task.clone(), spec.title.clone());
                if spec.fields.workflow.is_some() {
                    self.runs.insert(task.clone());
                }
                vec![]
            }
            Event::AttemptStarted { task, agent, .. } => {
                self.agents.insert(task.clone(), agent.clone());
                vec![]
            }
            Event::Done {
                task,
                agent,
                output,
                ..
            } => {
                // A workflow run's end is told once, as `workflow_finished` (the tasks of its
                // phases are told as tasks).
                let title = self.title(task);
                let out = if self.runs.contains(task) {
                    notice(
                        Kind::WorkflowFinished,
                        task,
                        None,
                        format!("Workflow run `{task}` done"),
                        format!("{title} — every phase completed; result in {output}"),
                    )
                } else {
                    notice(
                        Kind::Done,
                        task,
                        Some(agent),
                        format!("Task `{task}` done"),
                        format!("{title} — done by {agent}; result in {output}"),
                    )
                };
                self.forget(task);
                vec![out]
            }
            Event::Escalated { task, reason, .. } => {
                let title = self.title(task);
                let agent = self.agents.get(task).cloned();
                let first = reason.lines().next().unwrap_or("").to_string();
                let report = format!("(report: .context/escalations/{task}.md)");
                let mut out = vec![if self.runs.contains(task) {
                    notice(
                        Kind::WorkflowFinished,
                        task,
                        None,
                        format!("Workflow run `{task}` failed"),
                        format!("{title} — {first} {report}"),
                    )
                } else {
                    notice(
                        Kind::Escalated,
                        task,
                        agent.as_ref(),
                        format!("Task `{task}` escalated"),
                        format!("{title} — {first} {report}"),
                    )
                }];
                if is_budget(reason) {
                    out.push(notice(
                        Kind::Attention,
                        task,
                        agent.as_ref(),
                        "A budget is spent".to_string(),
                        first.clone(),
                    ));
                }
                self.forget(task);
                out
            }
            Event::Cancelled { task, .. } => {
                self.forget(task);
                vec![]
            }
            Event::ProviderDisabled {
                worker: None,
                provider,
                agent,
                reason,
                ..
            } => vec![notice(
                Kind::Attention,
                provider,
                Some(agent),
                format!("Provider `{provider}` disabled"),
                format!(
                    "{} — fix the login, then `dirigent agents enable {agent}`",
                    reason.lines().next().unwrap_or("")
                ),
            )],
            Event::MergeFailed {
                task,
                class: Class::Conflict,
                files,
                resolve: None,
                ..
            } => {
                let agent = self.agents.get(task).cloned();
                vec![notice(
                    Kind::Attention,
                    task,
                    agent.as_ref(),
                    format!("Task `{task}` conflicts with its target"),
                    format!(
                        "{} — conflicting files: {}",
                        self.title(task),
                        files.join(", ")
                    ),
                )]
            }
            _ => vec![],
        }
    }

    fn title(&self, task: &str) -> String {
        self.titles
            .get(task)
            .cloned()
            .unwrap_or_else(|| task.to_string())
    }

    fn forget(&mut self, task: &str) {
        self.titles.remove(task);
        self.agents.remove(task);
        self.runs.remove(task);
    }
}

/// Whether destination `d` takes notice `n`: its kind is one `d` asked for, and (when `d` names
/// agents) it is about one of them.
pub fn wanted(d: &Destination, n: &Notice) -> bool {
    d.kinds.contains(&n.kind)
        && (d.agents.is_empty()
            || n.agent.as_deref().is_some_and(|a| {
                d.agents
                    .iter()
                    .any(|w| w == crate::config::split_entry(a).0 || w == a)
            }))
}

/// How long to wait before try `n` (2, 3, …) of a delivery: 1 s, 2 s, 4 s … at most a minute.
pub fn backoff(n: u32) -> Duration {
    Duration::from_secs(1u64 << n.saturating_sub(2).min(6)).min(Duration::from_secs(60))
}

/// What a burst held back, to be sent as one summary.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    pub count: u32,
    pub kinds: BTreeMap<&'static str, u32>,
    /// The first tasks (or providers) it was about, at most [`SUMMARY_NAMES`].
    pub about: Vec<String>,
    /// The first and last record it covers.
    pub first_seq: u64,
    pub last_seq: u64,
}

/// Names a summary lists at most.
pub const SUMMARY_NAMES: usize = 20;

/// A destination's burst limit: at most `max` notifications in a window; what comes beyond is
/// counted (never kept in full) and sent as one summary when the window ends.
#[derive(Debug, Default)]
pub struct Gate {
    window_start: u64,
    sent: u32,
    held: Option<Summary>,
}

/// What to do with a notice now.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    Send,
    /// Counted into the summary due at the given time (ms).
    Held {
        due_ms: u64,
    },
}

impl Gate {
    pub fn admit(&mut self, now_ms: u64, max: u32, window: Duration, n: &Notice) -> Admit {
        let window_ms = window.as_millis() as u64;
        if self.held.is_none() && now_ms >= self.window_start.saturating_add(window_ms) {
            self.window_start = now_ms;
            self.sent = 0;
        }
        if self.held.is_none() && self.sent < max {
            self.sent += 1;
            return Admit::Send;
        }
        let s = self.held.get_or_insert_with(|| Summary {
            first_seq: n.seq,
            ..Summary::default()
        });
        s.count = s.count.saturating_add(1);
        *s.kinds.entry(n.kind.as_str()).or_default() += 1;
        s.last_seq = n.seq;
        if let Some(about) = &n.about
            && s.about.len() < SUMMARY_NAMES
            && !s.about.contains(about)
        {
            s.about.push(about.clone());
        }
        Admit::Held {
            due_ms: self.window_start.saturating_add(window_ms),
        }
    }

    /// When the held summary is due, if one is held.
    pub fn due_ms(&self, window: Duration) -> Option<u64> {
        self.held
            .as_ref()
            .map(|_| self.window_start.saturating_add(window.as_millis() as u64))
    }

    /// The summary, once its window has ended; a new window starts with it as its first
    /// message.
    pub fn flush(&mut self, now_ms: u64, window: Duration) -> Option<Summary> {
        let due = self.due_ms(window)?;
        if now_ms < due {
            return None;
        }
        self.window_start = now_ms;
        self.sent = 1;
        self.held.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::notify::Target;
    use crate::task::{TaskFields, TaskSpec};

    fn rec(seq: u64, event: Event) -> Record {
        Record {
            seq,
            ts: 1_000 * seq,
            event,
        }
    }

    fn received(task: &str, workflow: bool) -> Event {
        let fields = TaskFields {
            workflow: workflow.then(|| "wf".to_string()),
            ..TaskFields::default()
        };
        Event::Received {
            task: task.into(),
            file: format!("{task}.json"),
            spec: Box::new(TaskSpec {
                id: task.into(),
                title: format!("title of {task}"),
                prompt: "p".into(),
                chain: vec!["a".into()],
                chain_source: "chain".into(),
                fields,
            }),
        }
    }

    #[test]
    fn records_become_the_documented_notifications() {
        let mut k = Known::default();
        // (record, the kinds it makes, the title of the first)
        let cases: Vec<(Event, Vec<Kind>, &str)> = vec![
            (received("t1", false), vec![], ""),
            (received("r1", true), vec![], ""),
            (
                Event::AttemptStarted {
                    task: "t1".into(),
                    attempt: 1,
                    agent: "claude".into(),
                    pid: 1,
                    pgid: 1,
                    start_ticks: None,
                    boot_id: None,
                    argv0: "claude".into(),
                },
                vec![],
                "",
            ),
            (
                Event::Escalated {
                    task: "t1".into(),
                    reason: "the daily budget is spent: $6 of $5".into(),
                    attempts: 1,
                },
                vec![Kind::Escalated, Kind::Attention],
                "Task `t1` escalated",
            ),
            (
                Event::Done {
                    task: "r1".into(),
                    agent: "a".into(),
                    attempt: 1,
                    output: "o.md".into(),
                },
                vec![Kind::WorkflowFinished],
                "Workflow run `r1` done",
            ),
            (
                Event::ProviderDisabled {
                    worker: None,
                    provider: "anthropic".into(),
                    agent: "claude".into(),
                    task: "t2".into(),
                    reason: "not logged in".into(),
                },
                vec![Kind::Attention],
                "Provider `anthropic` disabled",
            ),
            (
                Event::MergeFailed {
                    task: "t3".into(),
                    class: Class::Conflict,
                    reason: "conflict".into(),
                    files: vec!["a.rs".into()],
                    resolve: None,
                },
                vec![Kind::Attention],
                "Task `t3` conflicts with its target",
            ),
            (
                Event::MergeFailed {
                    task: "t3".into(),
                    class: Class::Conflict,
                    reason: "conflict".into(),
                    files: vec!["a.rs".into()],
                    resolve: Some("claude".into()),
                },
                vec![],
                "",
            ),
            (Event::Cancelled { task: "t4".into() }, vec![], ""),
        ];
        for (i, (event, kinds, title)) in cases.into_iter().enumerate() {
            let got = k.see(&rec(i as u64 + 1, event));
            assert_eq!(
                got.iter().map(|n| n.kind).collect::<Vec<_>>(),
                kinds,
                "case {i}"
            );
            if let Some(first) = got.first() {
                assert_eq!(first.title, title, "case {i}");
            }
        }
        assert!(
            k.titles.is_empty() && k.runs.is_empty(),
            "finished tasks are forgotten"
        );
    }

    #[test]
    fn a_burst_sends_max_then_one_summary_per_window() {
        let window = Duration::from_secs(60);
        let n = |seq: u64| Notice {
            kind: Kind::Escalated,
            about: Some(format!("t{seq}")),
            agent: None,
            title: String::new(),
            text: String::new(),
            seq,
            ts: 0,
        };
        let mut g = Gate::default();
        let start = 100_000;
        // 100 escalations within one minute: 3 go out, 97 are summarised.
        let mut sent = 0;
        for i in 0..100u64 {
            match g.admit(start + i * 500, 3, window, &n(i)) {
                Admit::Send => sent += 1,
                Admit::Held { due_ms } => assert_eq!(due_ms, start + 60_000),
            }
        }
        assert_eq!(sent, 3);
        assert_eq!(
            g.flush(start + 59_999, window),
            None,
            "not before the window ends"
        );
        let s = g.flush(start + 60_000, window).expect("a summary");
        assert_eq!((s.count, s.first_seq, s.last_seq), (97, 3, 99));
        assert_eq!(s.about.len(), SUMMARY_NAMES);
        assert_eq!(s.kinds.get("escalated"), Some(&97));
        // The next window has room for max - 1 more (the summary was its first message).
        assert_eq!(g.admit(start + 61_000, 3, window, &n(200)), Admit::Send);
        assert_eq!(g.admit(start + 61_001, 3, window, &n(201)), Admit::Send);
        assert!(matches!(
            g.admit(start + 61_002, 3, window, &n(202)),
            Admit::Held { .. }
        ));
        // Quiet for a window: all is sent again.
        let _ = g.flush(start + 200_000, window);
        assert_eq!(g.admit(start + 300_000, 3, window, &n(300)), Admit::Send);
    }

    #[test]
    fn destinations_take_their_kinds_and_agents_and_retries_back_off() {
        let d = Destination {
            name: "w".into(),
            target: Target::Desktop,
            kinds: vec![Kind::Escalated],
            agents: vec!["claude".into()],
            burst_max: 5,
            burst_window: Duration::from_secs(60),
            retries: 3,
            timeout: Duration::from_secs(1),
        };
        let n = |kind, agent: Option<&str>| Notice {
            kind,
            about: None,
            agent: agent.map(str::to_string),
            title: String::new(),
            text: String::new(),
            seq: 1,
            ts: 0,
        };
        let cases = [
            (Kind::Escalated, Some("claude"), true),
            (Kind::Escalated, Some("claude:opus"), true),
            (Kind::Escalated, Some("gemini"), false),
            (Kind::Escalated, None, false),
            (Kind::Done, Some("claude"), false),
        ];
        for (kind, agent, want) in cases {
            assert_eq!(wanted(&d, &n(kind, agent)), want, "{kind:?} {agent:?}");
        }
        let waits: Vec<u64> = (2..=10).map(|t| backoff(t).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }
}
