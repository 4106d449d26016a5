//! A workflow run as people look at it: its phases in order, each with its state, its tasks and
//! its loop rounds. A pure function of the task book (and the phase names of the definition,
//! read by the caller), so `dirigent status RUN` and the dashboard's workflow graph show the
//! same thing.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::state::{Phase, TaskBook, TaskRecord};

/// One run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunView {
    pub id: String,
    pub title: String,
    pub workflow: Option<String>,
    /// `running` while its tasks are under way, else the run task's own state.
    pub state: String,
    pub received_ms: u64,
    pub phases: Vec<PhaseView>,
}

/// One phase of a run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PhaseView {
    pub name: String,
    /// `completed`, `failed`, `running` or `not_started`.
    pub state: &'static str,
    /// A completed phase's output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    pub tasks: Vec<ChildView>,
    pub rounds: Vec<RoundView>,
}

/// A task a phase started.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChildView {
    pub id: String,
    pub state: &'static str,
    pub agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A judged loop round.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RoundView {
    pub round: u32,
    pub passed: bool,
    /// The first line of the judge's feedback, at most 100 characters.
    pub feedback: String,
}

/// The workflow a run task runs: from its spec while it has one, else from its default title.
pub fn workflow_of(run: &TaskRecord) -> Option<String> {
    run.workflow().or_else(|| {
        run.title()
            .strip_prefix("workflow ")
            .filter(|n| !n.contains(' '))
            .map(str::to_string)
    })
}

/// A workflow's phase names, from its definition in `dir` or the built-in ones (when it can
/// still be read).
pub fn defined_phases(dir: &std::path::Path, name: &str) -> Option<Vec<String>> {
    let defs = crate::workflow::discover(dir).ok()?;
    let def = defs.into_iter().find(|d| d.name == name)?;
    let wf: crate::workflow::written::Written = serde_saphyr::from_str(&def.text).ok()?;
    Some(wf.phases.iter().map(|p| p.name.value.clone()).collect())
}

/// Whether `t` is a workflow run, also once finished (when its spec, which names the workflow,
/// is no longer held).
pub fn is_run(t: &TaskRecord) -> bool {
    t.workflow().is_some()
        || !t.more().phases.is_empty()
        || !t.more().rounds.is_empty()
        || (t.chain().is_empty() && workflow_of(t).is_some())
}

/// Every run in the book (or only `only`), newest first, at most `limit`; `phases_of` gives a
/// workflow's phase names from its definition (when it can still be read).
pub fn runs(
    book: &TaskBook,
    limit: usize,
    only: Option<&str>,
    phases_of: &dyn Fn(&str) -> Option<Vec<String>>,
) -> Vec<RunView> {
    let ids: HashSet<&str> = book
        .iter()
        .filter(|t| only.is_none_or(|o| t.id() == o) && is_run(t))
        .map(|t| t.id())
        .collect();
    // Each task under the run its id starts with (`RUN.phase`, `RUN.phase.n`).
    let mut children: HashMap<&str, Vec<&TaskRecord>> = HashMap::new();
    for t in book.iter() {
        for (i, _) in t.id().match_indices('.') {
            if let Some(run) = ids.get(&t.id()[..i]) {
                children.entry(run).or_default().push(t);
                break;
            }
        }
    }
    book.iter()
        .rev()
        .filter(|t| ids.contains(t.id()))
        .take(limit)
        .map(|run| {
            let mine = children.get(run.id()).map(Vec::as_slice).unwrap_or(&[]);
            let defined = workflow_of(run)
                .and_then(|w| phases_of(&w))
                .unwrap_or_default();
            view(run, mine, defined)
        })
        .collect()
}

/// One run, given its tasks and its definition's phase names.
pub fn view(run: &TaskRecord, children: &[&TaskRecord], defined: Vec<String>) -> RunView {
    let prefix = format!("{}.", run.id());
    let mut names = defined;
    // Once finished, a run keeps no definition: its recorded phases and its tasks' ids say.
    let from_tasks = children.iter().filter_map(|c| {
        let rest = c.id().strip_prefix(&prefix)?;
        let phase = rest.split('.').next()?;
        (phase != "distill").then(|| phase.to_string())
    });
    for p in run
        .more()
        .phases
        .iter()
        .map(|(p, _)| p.clone())
        .chain(from_tasks)
    {
        if !names.contains(&p) {
            names.push(p);
        }
    }
    // A failed run names the phase it broke at (`phase `x` failed: …`, the runner's words).
    let broke_at = match run.phase() {
        Phase::Failed { reason, .. } => reason
            .strip_prefix("phase `")
            .and_then(|r| r.split_once('`'))
            .map(|(p, _)| p.to_string()),
        _ => None,
    };
    let run_over = run.phase().is_terminal();
    let phases = names
        .into_iter()
        .map(|p| {
            let tasks: Vec<ChildView> = children
                .iter()
                .filter(|c| {
                    c.id()
                        .strip_prefix(&prefix)
                        .is_some_and(|rest| rest == p || rest.starts_with(&format!("{p}.")))
                })
                .map(|c| child(c))
                .collect();
            let output = run
                .more()
                .phases
                .iter()
                .find(|(done, _)| *done == p)
                .map(|(_, out)| out.clone());
            let state = phase_state(PhaseFacts {
                completed: output.is_some(),
                a_task_failed: tasks.iter().any(|c| c.state == "failed"),
                has_tasks: !tasks.is_empty(),
                run_over,
                broke_here: broke_at.as_deref() == Some(p.as_str()),
            });
            let rounds = run
                .more()
                .rounds
                .iter()
                .filter(|r| r.phase == p)
                .map(|r| RoundView {
                    round: r.round,
                    passed: r.passed,
                    feedback: crate::runner::feedback_line(&r.feedback, 160),
                })
                .collect();
            PhaseView {
                name: p,
                state,
                output,
                tasks,
                rounds,
            }
        })
        .collect();
    let under_way = !run.phase().is_terminal()
        && run.chain().is_empty()
        && (!run.more().phases.is_empty() || children.iter().any(|c| !c.phase().is_terminal()));
    RunView {
        id: run.id().to_string(),
        title: run.title().to_string(),
        workflow: workflow_of(run),
        state: if under_way {
            "running".into()
        } else {
            run.phase().label().into()
        },
        received_ms: run.received_ms,
        phases,
    }
}

/// What is known of one phase of a run, for [`phase_state`].
#[derive(Clone, Copy, Debug)]
struct PhaseFacts {
    /// Its output is recorded.
    completed: bool,
    a_task_failed: bool,
    has_tasks: bool,
    /// The run has ended (done or failed).
    run_over: bool,
    /// The run's failure names this phase.
    broke_here: bool,
}

/// A phase's state: `completed`, `failed`, `running` or `not_started`. A phase of an ended run
/// that did not complete is `failed` when it had begun or the run broke at it: nothing more
/// will happen to it, and `running` would say otherwise.
fn phase_state(f: PhaseFacts) -> &'static str {
    if f.completed {
        "completed"
    } else if f.a_task_failed || f.broke_here || (f.run_over && f.has_tasks) {
        "failed"
    } else if f.has_tasks {
        "running"
    } else {
        "not_started"
    }
}

fn child(c: &TaskRecord) -> ChildView {
    let agent = match c.phase() {
        Phase::Done { agent, .. } | Phase::Running { agent, .. } => Some(agent.clone()),
        _ => c.attempts().last().map(|a| a.agent.clone()),
    };
    ChildView {
        id: c.id().to_string(),
        state: c.phase().label(),
        agent,
        reason: match c.phase() {
            Phase::Failed { reason, .. } => Some(reason.lines().next().unwrap_or("").to_string()),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_state_says_what_will_still_happen() {
        let none = PhaseFacts {
            completed: false,
            a_task_failed: false,
            has_tasks: false,
            run_over: false,
            broke_here: false,
        };
        // (what, facts, expected)
        let cases = [
            ("not begun, the run goes on", none, "not_started"),
            (
                "tasks under way",
                PhaseFacts {
                    has_tasks: true,
                    ..none
                },
                "running",
            ),
            (
                "its output recorded",
                PhaseFacts {
                    completed: true,
                    has_tasks: true,
                    run_over: true,
                    ..none
                },
                "completed",
            ),
            (
                "a task of it failed",
                PhaseFacts {
                    has_tasks: true,
                    a_task_failed: true,
                    ..none
                },
                "failed",
            ),
            (
                "a loop that gave up: every task done, the run failed at it",
                PhaseFacts {
                    has_tasks: true,
                    run_over: true,
                    broke_here: true,
                    ..none
                },
                "failed",
            ),
            (
                "a routed phase with no task list: no task, the run failed at it",
                PhaseFacts {
                    run_over: true,
                    broke_here: true,
                    ..none
                },
                "failed",
            ),
            (
                "begun when the run ended (cancelled)",
                PhaseFacts {
                    has_tasks: true,
                    run_over: true,
                    ..none
                },
                "failed",
            ),
            (
                "after the phase the run failed at",
                PhaseFacts {
                    run_over: true,
                    ..none
                },
                "not_started",
            ),
        ];
        for (what, facts, want) in cases {
            assert_eq!(phase_state(facts), want, "{what}: {facts:?}");
        }
    }
}
