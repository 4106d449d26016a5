//! The workflow runner: decides what a workflow run needs next. A run is a task with a
//! `workflow` key; its phases become ordinary child tasks (ids `<run>.<phase>` and
//! `<run>.<phase>.<k>`) that go through the inbox like any other task — same spawning, judging,
//! fallback and ledger. [`next`] is a pure function of the run's record, the workflow and the
//! task book; the engine carries out what it returns and calls it again whenever the run is
//! received or one of its children settles. Phase completion is a ledger event recorded before
//! the next phase starts, and child ids are deterministic, so resuming after a crash never runs
//! a finished phase again and never submits a child twice.
//!
//! Implemented phase types: `single` and `ensemble` (parallel and sequential, pick and
//! synthesize). Context strategies: `full` and `fresh` (`distilled` and `scoped` behave like
//! `fresh` for now).

use std::collections::BTreeMap;

use crate::config::Config;
use crate::state::{Outcome, Phase as TaskPhase, TaskBook, TaskRecord};
use crate::workflow::{ContextStrategy, EnsembleMode, JudgeMode, Phase, PhaseType, Workflow};
use crate::workspace::Workspace;

/// A child task to submit.
#[derive(Debug, Clone, PartialEq)]
pub struct Child {
    pub id: String,
    pub title: String,
    pub prompt: String,
    pub agent: Option<String>,
    pub role: Option<String>,
    /// Workspace-relative result path; `None` = `.context/outbox/<id>.md`.
    pub output: Option<String>,
}

/// What the engine should do for a run.
#[derive(Debug, PartialEq)]
pub enum Action {
    Submit(Child),
    /// Record the phase as complete (then ask again: the next phase may start at once).
    PhaseCompleted {
        phase: String,
        output: String,
    },
    /// Every phase is complete; the run is done with this result.
    Finished {
        output: String,
    },
    /// The run fails with this reason (the phase is named).
    Failed(String),
}

/// The state of one child task.
enum ChildState {
    Missing,
    Waiting,
    Done(String),
    Failed(String),
}

fn child_state(book: &TaskBook, ws: &Workspace, id: &str) -> ChildState {
    match book.get(id).map(|t| &t.phase) {
        Some(TaskPhase::Done { output, .. }) => ChildState::Done(output.clone()),
        Some(TaskPhase::Failed { reason, .. }) => ChildState::Failed(reason.clone()),
        Some(_) => ChildState::Waiting,
        None => match book.outcome(id) {
            // Archived: only the outcome is known; the default output path is deterministic.
            Some(Outcome::Done) => ChildState::Done(crate::result::destination(ws, id, None)),
            Some(Outcome::Failed) => ChildState::Failed("failed".into()),
            None => ChildState::Missing,
        },
    }
}

/// The workflow's variables: defaults overlaid with what the run gave.
pub fn vars_of(wf: &Workflow, given: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut vars: BTreeMap<String, String> = wf
        .vars
        .iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
        .collect();
    vars.extend(given.iter().map(|(k, v)| (k.clone(), v.clone())));
    vars
}

/// Replaces `{name}` placeholders; unknown ones stay as they are.
pub fn render(template: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find('}') {
            Some(end) if vars.contains_key(&after[..end]) => {
                out.push_str(&vars[&after[..end]]);
                rest = &after[end + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Decides the next actions for `run`.
pub fn next(
    run: &TaskRecord,
    wf: &Workflow,
    book: &TaskBook,
    config: &Config,
    ws: &Workspace,
) -> Vec<Action> {
    let given = run
        .spec
        .as_ref()
        .map(|s| s.fields.vars.clone())
        .unwrap_or_default();
    let mut vars = vars_of(wf, &given);
    vars.insert("workflow".into(), wf.name.value.clone());
    vars.insert("run".into(), run.id.clone());
    let Some(phase) = wf
        .phases
        .iter()
        .find(|p| !run.phases.iter().any(|(done, _)| *done == p.name.value))
    else {
        let output = run
            .phases
            .last()
            .map(|(_, o)| o.clone())
            .unwrap_or_default();
        return vec![Action::Finished { output }];
    };
    vars.insert("phase".into(), phase.name.value.clone());
    let output = phase.output.as_ref().map(|o| render(&o.value, &vars));
    let context = inputs(run, phase, ws);
    let prompt = |extra: &str| {
        let mut p = phase
            .prompt
            .as_ref()
            .map(|p| render(&p.value, &vars))
            .unwrap_or_default();
        if !context.is_empty() {
            p.push_str("\n\n---\n");
            p.push_str(&context);
        }
        if !extra.is_empty() {
            p.push_str("\n\n---\n");
            p.push_str(extra);
        }
        p
    };
    let title = format!("{} / {}", wf.name.value, phase.name.value);
    let pname = phase.name.value.clone();
    match phase.kind.value {
        PhaseType::Single => {
            let id = format!("{}.{}", run.id, pname);
            match child_state(book, ws, &id) {
                ChildState::Missing => vec![Action::Submit(Child {
                    id,
                    title,
                    prompt: prompt(""),
                    agent: phase.agent.as_ref().map(|a| a.value.clone()),
                    role: phase.role.as_ref().map(|r| r.value.clone()),
                    output,
                })],
                ChildState::Waiting => vec![],
                ChildState::Done(out) => vec![Action::PhaseCompleted {
                    phase: pname,
                    output: out,
                }],
                ChildState::Failed(reason) => {
                    vec![Action::Failed(format!("phase `{pname}` failed: {reason}"))]
                }
            }
        }
        PhaseType::Ensemble => {
            let sequential = phase.mode == Some(EnsembleMode::Sequential);
            let mut actions = Vec::new();
            let mut proposals: Vec<(String, String)> = Vec::new();
            let mut failures: Vec<(String, String)> = Vec::new();
            let mut waiting = false;
            for (i, agent) in phase.agents.iter().enumerate() {
                let id = format!("{}.{}.{}", run.id, pname, i + 1);
                match child_state(book, ws, &id) {
                    ChildState::Done(out) => {
                        proposals.push((agent.value.clone(), read_output(ws, &out)))
                    }
                    ChildState::Failed(reason) => failures.push((agent.value.clone(), reason)),
                    ChildState::Waiting => waiting = true,
                    ChildState::Missing => {
                        if sequential && (waiting || !actions.is_empty()) {
                            // Each proposer sees the ones before it: wait for them.
                            waiting = true;
                            continue;
                        }
                        let earlier = if sequential {
                            proposals_text(&proposals, "Earlier proposals")
                        } else {
                            String::new()
                        };
                        actions.push(Action::Submit(Child {
                            id,
                            title: format!("{title} (proposal {})", i + 1),
                            prompt: prompt(&earlier),
                            agent: Some(agent.value.clone()),
                            role: None,
                            output: None,
                        }));
                    }
                }
            }
            if waiting || !actions.is_empty() {
                return actions;
            }
            let min = phase.min_proposals.unwrap_or(1);
            if proposals.len() < min {
                return vec![Action::Failed(format!(
                    "phase `{pname}` failed: only {} of {} proposals succeeded (`min_proposals` is {min})",
                    proposals.len(),
                    phase.agents.len()
                ))];
            }
            let id = format!("{}.{}.judge", run.id, pname);
            match child_state(book, ws, &id) {
                ChildState::Missing => {
                    let judge = phase
                        .judge
                        .as_ref()
                        .map(|j| j.value.clone())
                        .unwrap_or_default();
                    let (agent, role) = if config.agents.contains_key(&judge) {
                        (Some(judge), None)
                    } else {
                        (None, Some(judge))
                    };
                    vec![Action::Submit(Child {
                        id,
                        title: format!("{title} (judge)"),
                        prompt: prompt(&judge_brief(phase.judge_mode, &proposals, &failures)),
                        agent,
                        role,
                        output,
                    })]
                }
                ChildState::Waiting => vec![],
                ChildState::Done(out) => vec![Action::PhaseCompleted {
                    phase: pname,
                    output: out,
                }],
                ChildState::Failed(reason) => vec![Action::Failed(format!(
                    "phase `{pname}` failed: the judge failed: {reason}"
                ))],
            }
        }
        other => vec![Action::Failed(format!(
            "phase `{pname}`: `{}` phases cannot run yet in this version of dirigent",
            other.name()
        ))],
    }
}

fn proposals_text(proposals: &[(String, String)], heading: &str) -> String {
    if proposals.is_empty() {
        return String::new();
    }
    let mut s = format!("{heading}:\n");
    for (i, (agent, text)) in proposals.iter().enumerate() {
        s.push_str(&format!(
            "\n## Proposal {} (from {agent})\n\n{}\n",
            i + 1,
            text.trim_end()
        ));
    }
    s
}

fn judge_brief(
    mode: Option<JudgeMode>,
    proposals: &[(String, String)],
    failures: &[(String, String)],
) -> String {
    let task = match mode.unwrap_or(JudgeMode::Pick) {
        JudgeMode::Pick => {
            "You are the judge. Pick the best proposal below: name it on the first line, then reproduce it in full."
        }
        JudgeMode::Synthesize => {
            "You are the judge. Synthesize the best elements of the proposals below into one answer."
        }
    };
    let mut s = format!("{task}\n\n{}", proposals_text(proposals, "Proposals"));
    for (agent, reason) in failures {
        s.push_str(&format!(
            "\n(The proposal from {agent} is missing: it failed — {reason}.)\n"
        ));
    }
    s
}

/// The earlier outputs this phase sees: all of them (`full`) or its `input`s (the others).
fn inputs(run: &TaskRecord, phase: &Phase, ws: &Workspace) -> String {
    let names: Vec<String> = match phase.context {
        Some(ContextStrategy::Full) => run.phases.iter().map(|(p, _)| p.clone()).collect(),
        _ => phase.inputs().into_iter().map(str::to_string).collect(),
    };
    let mut s = String::new();
    for name in names {
        if let Some((_, out)) = run.phases.iter().find(|(p, _)| *p == name) {
            s.push_str(&format!(
                "\n## Output of phase `{name}` ({out})\n\n{}\n",
                read_output(ws, out).trim_end()
            ));
        }
    }
    s
}

/// Reads a result, confined to the workspace; a missing file reads as a note.
fn read_output(ws: &Workspace, rel: &str) -> String {
    let path = ws.root().join(rel);
    let inside = path
        .canonicalize()
        .ok()
        .zip(ws.root().canonicalize().ok())
        .is_some_and(|(p, root)| p.starts_with(root));
    if !inside {
        return format!("(`{rel}` cannot be read)");
    }
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("(`{rel}` cannot be read: {e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_substitutes_known_placeholders_only() {
        let vars: BTreeMap<String, String> = [("feature".to_string(), "auth".to_string())].into();
        assert_eq!(
            render("docs/{feature}/{other}/x {", &vars),
            "docs/auth/{other}/x {"
        );
        assert_eq!(render("{feature}{feature}", &vars), "authauth");
    }
}
