//! The workflow runner: decides what a workflow run needs next. A run is a task with a
//! `workflow` key; its phases become ordinary child tasks (ids `<run>.<phase>` and
//! `<run>.<phase>.<k>`) that go through the inbox like any other task — same spawning, judging,
//! fallback and ledger. [`next`] is a pure function of the run's record, the workflow and the
//! task book; the engine carries out what it returns and calls it again whenever the run is
//! received or one of its children settles. Phase completion is a ledger event recorded before
//! the next phase starts, and child ids are deterministic, so resuming after a crash never runs
//! a finished phase again and never submits a child twice.
//!
//! Every phase type runs: `single`, `ensemble` (parallel or sequential, pick or synthesize),
//! `routed`, `parallel`, `loop` (a command or an agent as evaluator) and `map`; and every
//! context strategy: `full`, `fresh`, `scoped` and `distilled`.

use std::collections::BTreeMap;

use crate::config::Config;
use crate::state::{Outcome, Phase as TaskPhase, TaskBook, TaskRecord};
use crate::workflow::targets::{self, Accepts, Target};
use crate::workflow::{
    ContextStrategy, EnsembleMode, JudgeMode, Phase, PhaseType, Workflow, prompts, task_list,
};
use crate::workspace::Workspace;

/// A child task to submit.
#[derive(Debug, Clone, PartialEq)]
pub struct Child {
    pub id: String,
    pub title: String,
    pub prompt: String,
    pub agent: Option<String>,
    pub role: Option<String>,
    /// An explicit chain (an ensemble proposer spread to another agent), instead of `agent`/`role`.
    pub chain: Option<Vec<String>>,
    /// Workspace-relative result path; `None` = `.context/outbox/<id>.md`.
    pub output: Option<String>,
    /// Workspace files put into the prompt (map phases, the `scoped` strategy).
    pub files: Vec<String>,
}

/// What the engine should do for a run.
#[derive(Debug, PartialEq)]
pub enum Action {
    Submit(Child),
    /// Record the phase as complete (then ask again: the next phase may start at once).
    PhaseCompleted {
        phase: String,
        output: String,
        /// When not empty, the engine first writes these results, labelled, into `output`.
        parts: Vec<(String, String)>,
    },
    /// Every phase is complete; the run is done with this result.
    Finished {
        output: String,
    },
    /// The run fails with this reason (the phase is named).
    Failed(String),
    /// Run a loop's evaluator command on a round's result, then record the round.
    Evaluate {
        phase: String,
        round: u32,
        command: Vec<String>,
    },
    /// Record a loop round's verdict (then ask again).
    RecordRound {
        phase: String,
        round: u32,
        passed: bool,
        feedback: String,
    },
}

/// The state of one child task.
enum ChildState {
    Missing,
    Waiting,
    Done(String),
    Failed(String),
}

fn child_state(book: &TaskBook, id: &str) -> ChildState {
    child_state_by(book, id).0
}

/// A child's state, and for a done child the agent that answered.
fn child_state_by(book: &TaskBook, id: &str) -> (ChildState, Option<String>) {
    let Some(t) = book.get(id) else {
        let state = match book.outcome(id) {
            // Archived: only the outcome is known; the default output path is deterministic.
            Some(Outcome::Done) => ChildState::Done(crate::result::destination(id, None)),
            Some(Outcome::Failed) => ChildState::Failed("failed".into()),
            None => ChildState::Missing,
        };
        return (state, None);
    };
    match &t.phase {
        TaskPhase::Done { agent, output, .. } => {
            (ChildState::Done(output.clone()), Some(agent.clone()))
        }
        TaskPhase::Failed { reason, .. } => {
            // The run's reason is read where the run is: say how the last attempt ended too,
            // when the task's own reason does not already give a cause.
            let last = t
                .attempts
                .last()
                .filter(|a| !a.reason.is_empty() && !reason.contains(&a.reason));
            let reason = match last {
                Some(a) if !reason.contains(": ") => {
                    format!("{reason} (last attempt, {}: {})", a.agent, a.reason)
                }
                _ => reason.clone(),
            };
            (ChildState::Failed(reason), None)
        }
        _ => (ChildState::Waiting, None),
    }
}

/// The task fields (`agent`, `role`) that send a step to what `name` resolves to; the error
/// (the config changed since the run was accepted) fails the phase.
fn route(
    name: &str,
    accepts: Accepts,
    config: &Config,
) -> Result<(Option<String>, Option<String>), String> {
    targets::resolve(name, accepts, config).map(|r| r.target.fields())
}

/// A target's chain as it stands now, for spreading an ensemble's proposers.
fn chain_of(target: &Target, config: &Config, ws: &Workspace) -> Vec<String> {
    match target {
        Target::Agent(a) => vec![a.clone()],
        Target::Role(r) | Target::DefaultChain { role: r } => {
            config.role_chain(r, ws.root()).unwrap_or_default()
        }
    }
}

/// Whether `id` names a task (or task file) a workflow run submitted: `<run>.<…>`.
pub fn is_child_of(id: &str, run: &str) -> bool {
    id.strip_prefix(run)
        .is_some_and(|rest| rest.starts_with('.'))
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
    let context = if phase.context == Some(ContextStrategy::Distilled) {
        match distilled(run, phase, book, config, ws) {
            Ok(summaries) => summaries,
            Err(actions) => return actions,
        }
    } else {
        inputs(run, phase, ws)
    };
    let phase_prompt = render(&prompts::effective(wf, phase), &vars);
    let prompt = |extra: &str| {
        let mut p = phase_prompt.clone();
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
    // Who runs a step, resolved now (the config may have changed since the run was accepted).
    let runner = |named: Option<(&serde_saphyr::Spanned<String>, Accepts)>| match named {
        Some((name, accepts)) => route(&name.value, accepts, config),
        None => Ok((None, None)),
    };
    let cannot_route = |why: String| vec![Action::Failed(format!("phase `{pname}`: {why}"))];
    match phase.kind.value {
        PhaseType::Single => {
            let id = format!("{}.{}", run.id, pname);
            match child_state(book, &id) {
                ChildState::Missing => {
                    let (agent, role) = match runner(phase.runner()) {
                        Ok(r) => r,
                        Err(why) => return cannot_route(why),
                    };
                    vec![Action::Submit(Child {
                        id,
                        title,
                        prompt: prompt(""),
                        agent,
                        role,
                        chain: None,
                        output,
                        files: scoped_files(phase, ws, &vars),
                    })]
                }
                ChildState::Waiting => vec![],
                ChildState::Done(out) => vec![Action::PhaseCompleted {
                    phase: pname,
                    output: out,
                    parts: vec![],
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
            // Each proposer's target, spread so that proposers on one chain start with
            // different agents.
            let mut resolved = Vec::new();
            for name in &phase.agents {
                match targets::resolve(&name.value, Accepts::Any, config) {
                    Ok(r) => resolved.push(r.target),
                    Err(why) => return cannot_route(why),
                }
            }
            let natural: Vec<Vec<String>> =
                resolved.iter().map(|t| chain_of(t, config, ws)).collect();
            let spread = targets::diversify(natural.clone());
            for (i, agent) in phase.agents.iter().enumerate() {
                let id = format!("{}.{}.{}", run.id, pname, i + 1);
                let (state, answered_by) = child_state_by(book, &id);
                let label = match answered_by {
                    Some(by) if by != agent.value => format!("{}, answered by {by}", agent.value),
                    _ => agent.value.clone(),
                };
                match state {
                    ChildState::Done(out) => proposals.push((label, read_output(ws, &out))),
                    ChildState::Failed(reason) => failures.push((label, reason)),
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
                        let (agent, role, chain) = if spread[i] == natural[i] {
                            let (a, r) = resolved[i].fields();
                            (a, r, None)
                        } else {
                            (None, None, Some(spread[i].clone()))
                        };
                        actions.push(Action::Submit(Child {
                            id,
                            title: format!("{title} (proposal {})", i + 1),
                            prompt: prompt(&earlier),
                            agent,
                            role,
                            chain,
                            output: None,
                            files: scoped_files(phase, ws, &vars),
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
            match child_state(book, &id) {
                ChildState::Missing => {
                    let (agent, role) =
                        match runner(phase.judge.as_ref().map(|j| (j, Accepts::Any))) {
                            Ok(r) => r,
                            Err(why) => return cannot_route(why),
                        };
                    vec![Action::Submit(Child {
                        id,
                        title: format!("{title} (judge)"),
                        prompt: prompt(&judge_brief(phase.judge_mode, &proposals, &failures)),
                        agent,
                        role,
                        chain: None,
                        output,
                        files: vec![],
                    })]
                }
                ChildState::Waiting => vec![],
                ChildState::Done(out) => vec![Action::PhaseCompleted {
                    phase: pname,
                    output: out,
                    parts: vec![],
                }],
                ChildState::Failed(reason) => vec![Action::Failed(format!(
                    "phase `{pname}` failed: the judge failed: {reason}"
                ))],
            }
        }
        PhaseType::Loop => {
            let max = phase.max_rounds.unwrap_or(1);
            let (Some(generator), Some(evaluator)) = (&phase.generator, &phase.evaluator) else {
                return vec![Action::Failed(format!(
                    "phase `{pname}` has no generator or evaluator"
                ))];
            };
            let mut feedback = "(none yet: this is the first round)".to_string();
            for round in 1..=max {
                let mut round_vars = vars.clone();
                round_vars.insert("round".into(), round.to_string());
                round_vars.insert("feedback".into(), feedback.clone());
                let id = format!("{}.{}.{round}", run.id, pname);
                let out = match child_state(book, &id) {
                    ChildState::Missing => {
                        let mut p = render(&generator.prompt.value, &round_vars);
                        if !context.is_empty() {
                            p.push_str("\n\n---\n");
                            p.push_str(&context);
                        }
                        let (agent, role) = match runner(generator.runner()) {
                            Ok(r) => r,
                            Err(why) => return cannot_route(why),
                        };
                        return vec![Action::Submit(Child {
                            id,
                            title: format!("{title} (round {round})"),
                            prompt: p,
                            agent,
                            role,
                            chain: None,
                            output: output.clone(),
                            files: scoped_files(phase, ws, &vars),
                        })];
                    }
                    ChildState::Waiting => return vec![],
                    ChildState::Failed(reason) => {
                        return vec![Action::Failed(format!(
                            "phase `{pname}` failed in round {round}: {reason}"
                        ))];
                    }
                    ChildState::Done(out) => out,
                };
                match run
                    .rounds
                    .iter()
                    .find(|(p, r, _, _)| *p == pname && *r == round)
                {
                    Some((_, _, true, _)) => {
                        return vec![Action::PhaseCompleted {
                            phase: pname,
                            output: out,
                            parts: vec![],
                        }];
                    }
                    Some((_, _, false, fb)) => {
                        feedback = fb.clone();
                        continue;
                    }
                    None => {}
                }
                // The round is not judged yet.
                if let Some(command) = &evaluator.command {
                    return vec![Action::Evaluate {
                        phase: pname,
                        round,
                        command: command.clone(),
                    }];
                }
                let eval_id = format!("{id}.eval");
                return match child_state(book, &eval_id) {
                    ChildState::Missing => {
                        let ask = evaluator
                            .prompt
                            .as_ref()
                            .map(|p| render(&p.value, &round_vars))
                            .unwrap_or_default();
                        let prompt = format!(
                            "{ask}\n\nAnswer PASS or FAIL on the first line; after FAIL, say what must change.\n\n---\n## The result to judge (round {round})\n\n{}",
                            read_output(ws, &out).trim_end()
                        );
                        let (agent, role) =
                            match runner(evaluator.agent.as_ref().map(|a| (a, Accepts::Any))) {
                                Ok(r) => r,
                                Err(why) => return cannot_route(why),
                            };
                        vec![Action::Submit(Child {
                            id: eval_id,
                            title: format!("{title} (evaluate round {round})"),
                            prompt,
                            agent,
                            role,
                            chain: None,
                            output: None,
                            files: vec![],
                        })]
                    }
                    ChildState::Waiting => vec![],
                    ChildState::Failed(reason) => {
                        vec![Action::Failed(format!(
                            "phase `{pname}`: the evaluator failed in round {round}: {reason}"
                        ))]
                    }
                    ChildState::Done(verdict) => {
                        let text = read_output(ws, &verdict);
                        vec![Action::RecordRound {
                            phase: pname,
                            round,
                            passed: says_pass(&text),
                            feedback: text,
                        }]
                    }
                };
            }
            vec![Action::Failed(format!(
                "phase `{pname}` gave up after {max} round(s): the evaluator never passed; last feedback: {}",
                feedback
                    .lines()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("(none)")
            ))]
        }
        PhaseType::Parallel | PhaseType::Routed | PhaseType::Map => {
            // The sub-tasks: (label, prompt, agent, role, output, files).
            let mut subs: Vec<SubTask> = Vec::new();
            let default_route = match runner(phase.runner()) {
                Ok(r) => r,
                Err(why) => return cannot_route(why),
            };
            match phase.kind.value {
                PhaseType::Parallel => {
                    for t in &phase.tasks {
                        let (agent, role) = match &t.agent {
                            Some(a) => match route(&a.value, Accepts::Any, config) {
                                Ok(r) => r,
                                Err(why) => return cannot_route(why),
                            },
                            None => default_route.clone(),
                        };
                        let label = t
                            .name
                            .clone()
                            .unwrap_or_else(|| format!("task {}", subs.len() + 1));
                        let mut v = vars.clone();
                        v.insert("task".into(), label.clone());
                        subs.push((
                            label,
                            render(&t.prompt.value, &v),
                            agent,
                            role,
                            None,
                            scoped_files(phase, ws, &vars),
                        ));
                    }
                }
                PhaseType::Routed => {
                    let categories: Vec<&str> = phase.routing.keys().map(String::as_str).collect();
                    let listed: Vec<(String, String)> = match list_source(phase) {
                        Some(from) => {
                            let Some((_, out)) = run.phases.iter().find(|(p, _)| *p == from) else {
                                return vec![Action::Failed(format!(
                                    "phase `{pname}`: `{from}` has no output"
                                ))];
                            };
                            match task_list::parse(&read_output(ws, out), &categories) {
                                Ok(list) => {
                                    list.into_iter().map(|t| (t.category, t.prompt)).collect()
                                }
                                Err(e) => {
                                    return vec![Action::Failed(format!(
                                        "phase `{pname}`: the task list from `{from}` ({out}) cannot be read: {e}"
                                    ))];
                                }
                            }
                        }
                        None => phase
                            .tasks
                            .iter()
                            .map(|t| {
                                (
                                    t.category
                                        .as_ref()
                                        .map(|c| c.value.clone())
                                        .unwrap_or_default(),
                                    t.prompt.value.clone(),
                                )
                            })
                            .collect(),
                    };
                    // An agent wrote the list: it is data, not a template, and it is bounded.
                    let from_output = list_source(phase).is_some();
                    if from_output && listed.len() > config.max_spawned_tasks as usize {
                        return vec![Action::Failed(format!(
                            "phase `{pname}`: the task list has {} tasks; a phase takes at most {} (`max_spawned_tasks`)",
                            listed.len(),
                            config.max_spawned_tasks
                        ))];
                    }
                    for (category, task_prompt) in listed {
                        let Some(target) = task_list::route(&phase.routing, &category) else {
                            return vec![Action::Failed(format!(
                                "phase `{pname}`: the task category `{category}` has no entry in `routing` (categories: {}; a `default` entry takes any other)",
                                categories.join(", ")
                            ))];
                        };
                        let (agent, role) = match route(&target.value, Accepts::Any, config) {
                            Ok(r) => r,
                            Err(why) => return cannot_route(why),
                        };
                        let mut v = vars.clone();
                        v.insert("category".into(), category.clone());
                        v.insert("task".into(), task_prompt.clone());
                        let mut p = if from_output {
                            task_prompt.clone()
                        } else {
                            render(&task_prompt, &v)
                        };
                        // The phase's own prompt (written or default) says what to do with it.
                        p.push_str("\n\n---\n");
                        p.push_str(&render(&prompts::effective(wf, phase), &v));
                        if !context.is_empty() {
                            p.push_str("\n\n---\n");
                            p.push_str(&context);
                        }
                        subs.push((
                            format!("{category} task {}", subs.len() + 1),
                            p,
                            agent,
                            role,
                            None,
                            scoped_files(phase, ws, &vars),
                        ));
                    }
                }
                _ => {
                    let pattern = render(phase.glob.as_deref().unwrap_or(""), &vars);
                    for file in glob_workspace(ws, &pattern) {
                        let path = std::path::Path::new(&file);
                        let mut v = vars.clone();
                        v.insert("file".into(), file.clone());
                        v.insert(
                            "stem".into(),
                            path.file_stem()
                                .map(|s| s.to_string_lossy().into_owned())
                                .unwrap_or_default(),
                        );
                        v.insert(
                            "dir".into(),
                            path.parent()
                                .map(|d| d.to_string_lossy().into_owned())
                                .unwrap_or_default(),
                        );
                        let p = render(&prompts::effective(wf, phase), &v);
                        let out = phase.output.as_ref().map(|o| render(&o.value, &v));
                        subs.push((
                            file.clone(),
                            p,
                            default_route.0.clone(),
                            default_route.1.clone(),
                            out,
                            vec![file],
                        ));
                    }
                    if subs.is_empty() {
                        return vec![Action::Failed(format!(
                            "phase `{pname}`: no workspace file matches `{pattern}`"
                        ))];
                    }
                }
            }
            let mut actions = Vec::new();
            let mut results: Vec<(String, String)> = Vec::new();
            let mut waiting = false;
            for (k, (label, p, agent, role, out, files)) in subs.into_iter().enumerate() {
                let id = format!("{}.{}.{}", run.id, pname, k + 1);
                match child_state(book, &id) {
                    ChildState::Missing => actions.push(Action::Submit(Child {
                        id,
                        title: format!("{title} ({label})"),
                        prompt: p,
                        agent,
                        role,
                        chain: None,
                        output: out,
                        files,
                    })),
                    ChildState::Waiting => waiting = true,
                    ChildState::Done(o) => results.push((label, o)),
                    ChildState::Failed(reason) => {
                        return vec![Action::Failed(format!(
                            "phase `{pname}` failed: its task `{label}` failed: {reason}"
                        ))];
                    }
                }
            }
            if waiting || !actions.is_empty() {
                return actions;
            }
            let combined = format!(".context/outbox/{}.{}.md", run.id, pname);
            let Some(step) = &phase.synthesize else {
                return vec![Action::PhaseCompleted {
                    phase: pname,
                    output: output.unwrap_or(combined),
                    parts: results,
                }];
            };
            // One more step over every result: a parallel phase's synthesis, a map's refine.
            let id = format!(
                "{}.{}.{}",
                run.id,
                pname,
                if phase.kind.value == PhaseType::Map {
                    "refine"
                } else {
                    "synthesize"
                }
            );
            match child_state(book, &id) {
                ChildState::Missing => {
                    let mut p = render(&step.prompt.value, &vars);
                    p.push_str("\n\n---\n");
                    for (label, o) in &results {
                        p.push_str(&format!(
                            "\n## {label} ({o})\n\n{}\n",
                            read_output(ws, o).trim_end()
                        ));
                    }
                    let (agent, role) = match runner(step.runner()) {
                        Ok(r) => r,
                        Err(why) => return cannot_route(why),
                    };
                    vec![Action::Submit(Child {
                        id,
                        title: format!("{title} (synthesis)"),
                        prompt: p,
                        agent,
                        role,
                        chain: None,
                        output: if phase.kind.value == PhaseType::Map {
                            None
                        } else {
                            output
                        },
                        files: vec![],
                    })]
                }
                ChildState::Waiting => vec![],
                ChildState::Done(o) => vec![Action::PhaseCompleted {
                    phase: pname,
                    output: o,
                    parts: vec![],
                }],
                ChildState::Failed(reason) => vec![Action::Failed(format!(
                    "phase `{pname}` failed: its synthesis failed: {reason}"
                ))],
            }
        }
    }
}

/// One task of a many-task phase: (label, prompt, agent, role, output, files).
type SubTask = (
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Vec<String>,
);

/// The earlier phase whose output is a routed phase's task list: `tasks_from`, else (no inline
/// `tasks`) its first `input`.
fn list_source(phase: &Phase) -> Option<&str> {
    if let Some(from) = &phase.tasks_from {
        return Some(from.value.as_str());
    }
    if phase.tasks.is_empty() {
        return phase.inputs().first().copied();
    }
    None
}

/// The workspace files a `scoped` phase's tasks see: its `files`, globs expanded.
fn scoped_files(phase: &Phase, ws: &Workspace, vars: &BTreeMap<String, String>) -> Vec<String> {
    if phase.context != Some(ContextStrategy::Scoped) {
        return vec![];
    }
    let mut out = Vec::new();
    for f in &phase.files {
        let f = render(f, vars);
        if f.contains(['*', '?']) {
            out.extend(glob_workspace(ws, &f));
        } else {
            out.push(f);
        }
    }
    out
}

/// Workspace files (relative paths, sorted) matching `pattern`: `*` and `?` within a path
/// segment, `**` for any number of directories. Dot-directories, `target` and `node_modules`
/// are skipped; at most 10,000 files.
pub fn glob_workspace(ws: &Workspace, pattern: &str) -> Vec<String> {
    let pat: Vec<&str> = pattern
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    let mut out = Vec::new();
    let mut stack = vec![(ws.root().to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let path = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                if name != "target" && name != "node_modules" {
                    stack.push((e.path(), path));
                }
            } else if ft.is_file() && glob_match(&pat, &path.split('/').collect::<Vec<_>>()) {
                out.push(path);
                if out.len() >= 10_000 {
                    out.sort();
                    return out;
                }
            }
        }
    }
    out.sort();
    out
}

fn glob_match(pat: &[&str], path: &[&str]) -> bool {
    match (pat.first(), path.first()) {
        (None, None) => true,
        (Some(&"**"), _) => {
            glob_match(&pat[1..], path) || (!path.is_empty() && glob_match(pat, &path[1..]))
        }
        (Some(p), Some(s)) => {
            segment_match(p.as_bytes(), s.as_bytes()) && glob_match(&pat[1..], &path[1..])
        }
        _ => false,
    }
}

fn segment_match(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            segment_match(&p[1..], s) || (!s.is_empty() && segment_match(p, &s[1..]))
        }
        (Some(b'?'), Some(_)) => segment_match(&p[1..], &s[1..]),
        (Some(a), Some(b)) if a == b => segment_match(&p[1..], &s[1..]),
        _ => false,
    }
}

/// Whether an evaluator's answer starts with PASS (its first non-empty line, any case).
pub fn says_pass(text: &str) -> bool {
    text.lines()
        .map(|l| l.trim().trim_start_matches(['*', '#', '`', ' ']))
        .find(|l| !l.is_empty())
        .is_some_and(|l| l.to_ascii_uppercase().starts_with("PASS"))
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

/// The built-in prompt of a distill step.
const DISTILL_PROMPT: &str = "Distill the following into a short summary for the next step: the key decisions, \
constraints, risks and open questions, in at most ten bullet points. Leave out everything else.";

/// The `distilled` context: a summary of each earlier phase (or of the phase's `input`s),
/// made by a distill task `<run>.distill.<phase>` whose result is cached in
/// `.context/outbox/<run>.distill.<phase>.md` and reused by every later distilled phase. Returns the
/// summaries, or the actions that make the missing ones (and nothing else happens meanwhile).
fn distilled(
    run: &TaskRecord,
    phase: &Phase,
    book: &TaskBook,
    config: &Config,
    ws: &Workspace,
) -> Result<String, Vec<Action>> {
    let names: Vec<String> = if phase.input.is_some() {
        context_inputs(phase)
    } else {
        run.phases.iter().map(|(p, _)| p.clone()).collect()
    };
    let step = phase.distill.as_ref();
    // The distill step's own agent or role, else whoever runs the phase, else its judge.
    let named = step
        .and_then(|d| d.agent.as_ref().map(|a| (a, Accepts::Agent)))
        .or_else(|| step.and_then(|d| d.role.as_ref().map(|r| (r, Accepts::Role))))
        .or_else(|| phase.runner())
        .or_else(|| phase.judge.as_ref().map(|j| (j, Accepts::Any)));
    let (agent, role) = match named.map(|(n, a)| route(&n.value, a, config)) {
        Some(Ok(r)) => r,
        Some(Err(why)) => {
            return Err(vec![Action::Failed(format!(
                "phase `{}`: {why}",
                phase.name.value
            ))]);
        }
        None => (None, None),
    };
    let ask = step
        .and_then(|d| d.prompt.clone())
        .unwrap_or_else(|| DISTILL_PROMPT.to_string());
    let mut text = String::new();
    let mut actions = Vec::new();
    let mut waiting = false;
    for name in names {
        let Some((_, out)) = run.phases.iter().find(|(p, _)| *p == name) else {
            continue;
        };
        let id = format!("{}.distill.{name}", run.id);
        match child_state(book, &id) {
            ChildState::Missing => actions.push(Action::Submit(Child {
                id,
                title: format!("distill {name}"),
                prompt: format!(
                    "{ask}\n\n---\n## Output of phase `{name}`\n\n{}",
                    read_output(ws, out).trim_end()
                ),
                agent: agent.clone(),
                role: role.clone(),
                chain: None,
                // The default, `.context/outbox/<run>.distill.<phase>.md`, is the cache.
                output: None,
                files: vec![],
            })),
            ChildState::Waiting => waiting = true,
            ChildState::Failed(reason) => {
                return Err(vec![Action::Failed(format!(
                    "phase `{}` failed: distilling `{name}` failed: {reason}",
                    phase.name.value
                ))]);
            }
            ChildState::Done(summary) => {
                text.push_str(&format!(
                    "\n## Summary of phase `{name}`\n\n{}\n",
                    read_output(ws, &summary).trim_end()
                ));
            }
        }
    }
    if waiting || !actions.is_empty() {
        Err(actions)
    } else {
        Ok(text)
    }
}

/// The `input`s a phase's tasks see as context: all of them, except a routed phase's task
/// list, which its tasks receive one item each.
fn context_inputs(phase: &Phase) -> Vec<String> {
    let list = if phase.kind.value == PhaseType::Routed {
        list_source(phase)
    } else {
        None
    };
    phase
        .inputs()
        .into_iter()
        .filter(|i| Some(*i) != list)
        .map(str::to_string)
        .collect()
}

/// The earlier outputs this phase sees: all of them (`full`) or its `input`s (the others).
fn inputs(run: &TaskRecord, phase: &Phase, ws: &Workspace) -> String {
    let names: Vec<String> = match phase.context {
        Some(ContextStrategy::Full) => run.phases.iter().map(|(p, _)| p.clone()).collect(),
        _ => context_inputs(phase),
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

/// The most of one earlier result a phase's prompt takes in.
const MAX_INPUT_BYTES: u64 = 16 * 1024 * 1024;

/// Reads a result, confined to the workspace; what cannot be read reads as a note.
fn read_output(ws: &Workspace, rel: &str) -> String {
    crate::fsutil::read_confined(ws.root(), rel, MAX_INPUT_BYTES)
        .unwrap_or_else(|e| format!("(`{rel}` {e})"))
}

/// Runs a loop's evaluator command (see [`crate::spawn::run_logged`]). Returns whether it
/// passed (exit 0) and the last lines of its output as feedback; `None` when a stop of the
/// daemon ended it first (no verdict).
pub async fn run_evaluator(
    ws: &Workspace,
    argv: &[String],
    log: &std::path::Path,
    limits: crate::spawn::SideLimits,
) -> Option<(bool, String)> {
    use crate::spawn::CommandEnd;
    let limit = limits.limit;
    let end = crate::spawn::run_logged(ws, argv, log, limits).await;
    let tail = crate::fsutil::read_tail(log, 4096);
    Some(match end {
        CommandEnd::Exited(s) if s.success() => (true, tail),
        CommandEnd::Exited(s) => (false, format!("`{}` failed ({s}):\n{tail}", argv.join(" "))),
        CommandEnd::TimedOut => (
            false,
            format!(
                "`{}` ran longer than {}; killed",
                argv.join(" "),
                crate::duration::short(limit)
            ),
        ),
        // Not a verdict: the round is evaluated again after the restart.
        CommandEnd::Stopped => return None,
        CommandEnd::CouldNotStart(why) => (false, format!("the evaluator {why}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let m = |p: &str, s: &str| {
            glob_match(
                &p.split('/').collect::<Vec<_>>(),
                &s.split('/').collect::<Vec<_>>(),
            )
        };
        assert!(m("src/**/*.py", "src/a.py") && m("src/**/*.py", "src/x/y/b.py"));
        assert!(!m("src/**/*.py", "src/a.rs") && !m("src/*.py", "src/x/b.py"));
        assert!(m("**", "a/b/c") && m("a?c.md", "abc.md"));
    }

    #[test]
    fn pass_and_fail_verdicts() {
        for (text, want) in [
            ("PASS", true),
            ("pass: all good", true),
            ("\n**PASS**\n", true),
            ("FAIL\nfix x", false),
            ("It passes", false),
            ("", false),
        ] {
            assert_eq!(says_pass(text), want, "{text:?}");
        }
    }

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
