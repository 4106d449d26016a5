//! One decision per phase kind: given where a phase stands (which of its tasks exist, which
//! are done or failed, which loop rounds are judged), what happens next — submit tasks, wait,
//! record the phase complete, evaluate a round, or fail the run. Each reads earlier results
//! from the workspace where it needs their text; none writes or starts anything.

use super::context::{glob_workspace, scoped_files};
use super::{
    Action, Child, ChildState, Ctx, chain_of, child_state, child_state_by, read_output, render,
    says_pass,
};
use crate::state::LoopRound;
use crate::workflow::targets::{self, Accepts};
use crate::workflow::{
    Ensemble, Evaluation, FanOut, FanOutTasks, JudgeMode, Loop, TaskList, prompts, task_list,
};

/// `single`: one task; its result is the phase's.
pub(super) fn single(cx: &Ctx) -> Vec<Action> {
    let id = cx.phase_task_id();
    match child_state(cx.book, cx.run.id(), &id) {
        ChildState::Missing => {
            let (agent, role) = match cx.own_route() {
                Ok(r) => r,
                Err(failed) => return failed,
            };
            vec![Action::Submit(Child {
                id,
                title: cx.title.clone(),
                prompt: cx.prompt(""),
                agent,
                role,
                chain: None,
                output: cx.output.clone(),
                files: scoped_files(cx.phase, cx.ws, &cx.vars),
                workdir: cx.phase.workdir,
                verify: cx.phase.verify.clone(),
            })]
        }
        ChildState::Waiting => vec![],
        ChildState::Done(out) => cx.completed(out),
        ChildState::Failed(reason) => cx.failed(format!("failed: {reason}")),
    }
}

/// `ensemble`: every proposer answers (in parallel, or each seeing the ones before); then a
/// judge picks or synthesises, and its answer is the phase's.
pub(super) fn ensemble(cx: &Ctx, e: &Ensemble) -> Vec<Action> {
    let mut actions = Vec::new();
    let mut proposals: Vec<Proposal> = Vec::new();
    let mut failures: Vec<Proposal> = Vec::new();
    let mut waiting = false;
    // Each proposer's target, spread so that proposers on one chain start with different agents.
    let mut resolved = Vec::new();
    for name in &e.proposers {
        match targets::resolve(&name.value, Accepts::Any, cx.config) {
            Ok(r) => resolved.push(r.target),
            Err(why) => return cx.failed_to_route(why),
        }
    }
    let natural: Vec<Vec<String>> = resolved
        .iter()
        .map(|t| chain_of(t, cx.config, cx.ws))
        .collect();
    let spread = targets::diversify(natural.clone());
    for (i, proposer) in e.proposers.iter().enumerate() {
        let id = cx.id(i + 1);
        let (state, answered_by) = child_state_by(cx.book, cx.run.id(), &id);
        let from = match answered_by {
            Some(by) if by != proposer.value => format!("{}, answered by {by}", proposer.value),
            _ => proposer.value.clone(),
        };
        match state {
            ChildState::Done(out) => proposals.push(Proposal {
                from,
                text: read_output(cx.ws, &out),
            }),
            ChildState::Failed(reason) => failures.push(Proposal { from, text: reason }),
            ChildState::Waiting => waiting = true,
            ChildState::Missing => {
                if e.sequential && (waiting || !actions.is_empty()) {
                    // Each proposer sees the ones before it: wait for them.
                    waiting = true;
                    continue;
                }
                let earlier = if e.sequential {
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
                    title: format!("{} (proposal {})", cx.title, i + 1),
                    prompt: cx.prompt(&earlier),
                    agent,
                    role,
                    chain,
                    output: None,
                    files: scoped_files(cx.phase, cx.ws, &cx.vars),
                    workdir: None,
                    verify: None,
                }));
            }
        }
    }
    if waiting || !actions.is_empty() {
        return actions;
    }
    if proposals.len() < e.min_proposals {
        // Why they failed, first: the cause and its fix are in the proposers' own reasons.
        // One reason given by several proposers is said once, after all their names.
        let mut grouped: Vec<(Vec<&str>, &str)> = Vec::new();
        for f in &failures {
            let text = f.text.lines().next().unwrap_or("");
            match grouped.iter_mut().find(|(_, t)| *t == text) {
                Some((froms, _)) => froms.push(&f.from),
                None => grouped.push((vec![&f.from], text)),
            }
        }
        let why: Vec<String> = grouped
            .iter()
            .map(|(froms, text)| format!("{}: {text}", froms.join(", ")))
            .collect();
        return cx.failed(format!(
            "failed: only {} of {} proposals succeeded (`min_proposals` is {}){}",
            proposals.len(),
            e.proposers.len(),
            e.min_proposals,
            if why.is_empty() {
                String::new()
            } else {
                format!(" — {}", why.join("; "))
            }
        ));
    }
    let id = cx.id("judge");
    match child_state(cx.book, cx.run.id(), &id) {
        ChildState::Missing => {
            let (agent, role) = match cx.route(Some((&e.judge.value, Accepts::Any))) {
                Ok(r) => r,
                Err(failed) => return failed,
            };
            vec![Action::Submit(Child {
                id,
                title: format!("{} (judge)", cx.title),
                prompt: cx.prompt(&judge_brief(e.judge_mode, &proposals, &failures)),
                agent,
                role,
                chain: None,
                output: cx.output.clone(),
                files: vec![],
                workdir: None,
                verify: None,
            })]
        }
        ChildState::Waiting => vec![],
        ChildState::Done(out) => cx.completed(out),
        ChildState::Failed(reason) => cx.failed(format!("failed: the judge failed: {reason}")),
    }
}

/// A proposer's answer (or, for a failed one, why it failed), and who gave it.
struct Proposal {
    from: String,
    text: String,
}

fn proposals_text(proposals: &[Proposal], heading: &str) -> String {
    if proposals.is_empty() {
        return String::new();
    }
    let mut s = format!("{heading}:\n");
    for (i, p) in proposals.iter().enumerate() {
        s.push_str(&format!(
            "\n## Proposal {} (from {})\n\n{}\n",
            i + 1,
            p.from,
            p.text.trim_end()
        ));
    }
    s
}

fn judge_brief(mode: Option<JudgeMode>, proposals: &[Proposal], failures: &[Proposal]) -> String {
    let task = match mode.unwrap_or(JudgeMode::Pick) {
        JudgeMode::Pick => {
            "You are the judge. Pick the best proposal below: name it on the first line, then reproduce it in full."
        }
        JudgeMode::Synthesize => {
            "You are the judge. Synthesize the best elements of the proposals below into one answer."
        }
    };
    let mut s = format!("{task}\n\n{}", proposals_text(proposals, "Proposals"));
    for f in failures {
        s.push_str(&format!(
            "\n(The proposal from {} is missing: it failed — {}.)\n",
            f.from, f.text
        ));
    }
    s
}

/// `loop`: round after round the generator works with the last round's feedback, and the
/// evaluator judges it, until a round passes or `max_rounds` is reached.
pub(super) fn loop_rounds(cx: &Ctx, l: &Loop) -> Vec<Action> {
    let pname = cx.name();
    let mut feedback = "(none yet: this is the first round)".to_string();
    for round in 1..=l.max_rounds {
        let mut round_vars = cx.vars.clone();
        round_vars.insert("round".into(), round.to_string());
        round_vars.insert("feedback".into(), feedback.clone());
        let id = cx.id(round);
        let out = match child_state(cx.book, cx.run.id(), &id) {
            ChildState::Missing => {
                let mut p = render(&l.generator.prompt.value, &round_vars);
                if !cx.context.is_empty() {
                    p.push_str("\n\n---\n");
                    p.push_str(&cx.context);
                }
                let (agent, role) = match cx.step_route(&l.generator) {
                    Ok(r) => r,
                    Err(failed) => return failed,
                };
                return vec![Action::Submit(Child {
                    id,
                    title: format!("{} (round {round})", cx.title),
                    prompt: p,
                    agent,
                    role,
                    chain: None,
                    output: cx.output.clone(),
                    files: scoped_files(cx.phase, cx.ws, &cx.vars),
                    workdir: None,
                    verify: None,
                })];
            }
            ChildState::Waiting => return vec![],
            ChildState::Failed(reason) => {
                return cx.failed(format!("failed in round {round}: {reason}"));
            }
            ChildState::Done(out) => out,
        };
        match cx
            .run
            .more()
            .rounds
            .iter()
            .find(|r| r.phase == pname && r.round == round)
        {
            Some(r) if r.passed => return cx.completed(out),
            Some(r) => {
                feedback = r.feedback.clone();
                continue;
            }
            None => {}
        }
        // The round is not judged yet.
        let (agent, ask) = match &l.evaluator {
            Evaluation::Command(command) => {
                return vec![Action::Evaluate {
                    phase: pname.to_string(),
                    round,
                    command: command.clone(),
                }];
            }
            Evaluation::Agent { agent, prompt } => (agent, prompt),
        };
        let eval_id = format!("{id}.eval");
        return match child_state(cx.book, cx.run.id(), &eval_id) {
            ChildState::Missing => {
                let ask = ask
                    .as_ref()
                    .map(|p| render(&p.value, &round_vars))
                    .unwrap_or_default();
                let prompt = format!(
                    "{ask}\n\nAnswer PASS or FAIL on the first line; after FAIL, say what must change.\n\n---\n## The result to judge (round {round})\n\n{}",
                    read_output(cx.ws, &out).trim_end()
                );
                let (agent, role) = match cx.route(Some((&agent.value, Accepts::Any))) {
                    Ok(r) => r,
                    Err(failed) => return failed,
                };
                vec![Action::Submit(Child {
                    id: eval_id,
                    title: format!("{} (evaluate round {round})", cx.title),
                    prompt,
                    agent,
                    role,
                    chain: None,
                    output: None,
                    files: vec![],
                    workdir: None,
                    verify: None,
                })]
            }
            ChildState::Waiting => vec![],
            ChildState::Failed(reason) => {
                cx.failed_to_route(format!("the evaluator failed in round {round}: {reason}"))
            }
            ChildState::Done(verdict) => {
                let text = read_output(cx.ws, &verdict);
                vec![Action::RecordRound(LoopRound {
                    phase: pname.to_string(),
                    round,
                    passed: says_pass(&text),
                    feedback: text,
                })]
            }
        };
    }
    let last = super::feedback_line(&feedback, 300);
    cx.failed(format!(
        "gave up after {} round(s): the evaluator never passed; last feedback: {}",
        l.max_rounds,
        if last.is_empty() { "(none)" } else { &last }
    ))
}

/// One task of a fan-out phase.
struct SubTask {
    /// How the phase's report and titles name it.
    label: String,
    prompt: String,
    agent: Option<String>,
    role: Option<String>,
    /// Its result path; `None`: the default in the outbox.
    output: Option<String>,
    files: Vec<String>,
}

/// `parallel`, `routed` and `map`: every task at once; when all are done, the optional step
/// over their results (synthesize, refine), or the results together are the phase's output.
pub(super) fn fan_out(cx: &Ctx, f: &FanOut) -> Vec<Action> {
    let subs = match sub_tasks(cx, &f.tasks) {
        Ok(subs) => subs,
        Err(failed) => return failed,
    };
    let mut actions = Vec::new();
    let mut results: Vec<(String, String)> = Vec::new();
    let mut waiting = false;
    for (k, sub) in subs.into_iter().enumerate() {
        let id = cx.id(k + 1);
        match child_state(cx.book, cx.run.id(), &id) {
            ChildState::Missing => actions.push(Action::Submit(Child {
                id,
                title: format!("{} ({})", cx.title, sub.label),
                prompt: sub.prompt,
                agent: sub.agent,
                role: sub.role,
                chain: None,
                output: sub.output,
                files: sub.files,
                workdir: cx.phase.workdir,
                verify: cx.phase.verify.clone(),
            })),
            ChildState::Waiting => waiting = true,
            ChildState::Done(o) => results.push((sub.label, o)),
            ChildState::Failed(reason) => {
                return cx.failed(format!("failed: its task `{}` failed: {reason}", sub.label));
            }
        }
    }
    if waiting || !actions.is_empty() {
        return actions;
    }
    let is_map = matches!(f.tasks, FanOutTasks::Files { .. });
    let Some(step) = &f.combine else {
        let combined = format!(".context/outbox/{}.{}.md", cx.run.id(), cx.name());
        return vec![Action::PhaseCompleted {
            phase: cx.name().to_string(),
            output: cx.output.clone().unwrap_or(combined),
            parts: results,
        }];
    };
    // One more step over every result: a parallel phase's synthesis, a map's refine.
    let id = cx.id(if is_map { "refine" } else { "synthesize" });
    match child_state(cx.book, cx.run.id(), &id) {
        ChildState::Missing => {
            let mut p = render(&step.prompt.value, &cx.vars);
            p.push_str("\n\n---\n");
            for (label, o) in &results {
                p.push_str(&format!(
                    "\n## {label} ({o})\n\n{}\n",
                    read_output(cx.ws, o).trim_end()
                ));
            }
            let (agent, role) = match cx.step_route(step) {
                Ok(r) => r,
                Err(failed) => return failed,
            };
            vec![Action::Submit(Child {
                id,
                title: format!("{} (synthesis)", cx.title),
                prompt: p,
                agent,
                role,
                chain: None,
                output: if is_map { None } else { cx.output.clone() },
                files: vec![],
                workdir: None,
                verify: None,
            })]
        }
        ChildState::Waiting => vec![],
        ChildState::Done(o) => cx.completed(o),
        ChildState::Failed(reason) => cx.failed(format!("failed: its synthesis failed: {reason}")),
    }
}

/// The tasks of a fan-out phase, or why there are none to run.
fn sub_tasks(cx: &Ctx, tasks: &FanOutTasks) -> Result<Vec<SubTask>, Vec<Action>> {
    let default_route = cx.own_route()?;
    let mut subs: Vec<SubTask> = Vec::new();
    match tasks {
        FanOutTasks::Inline(tasks) => {
            for t in tasks {
                let (agent, role) = match &t.agent {
                    Some(a) => cx.route(Some((&a.value, Accepts::Any)))?,
                    None => default_route.clone(),
                };
                let label = t
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("task {}", subs.len() + 1));
                let mut v = cx.vars.clone();
                v.insert("task".into(), label.clone());
                subs.push(SubTask {
                    label,
                    prompt: render(&t.prompt.value, &v),
                    agent,
                    role,
                    output: None,
                    files: scoped_files(cx.phase, cx.ws, &cx.vars),
                });
            }
        }
        FanOutTasks::Routed { routing, list } => {
            let categories: Vec<&str> = routing.keys().map(String::as_str).collect();
            let (listed, from_output): (Vec<(String, String)>, bool) = match list {
                TaskList::FromPhase(from) => {
                    let Some((_, out)) = cx.run.more().phases.iter().find(|(p, _)| p == from)
                    else {
                        return Err(cx.failed_to_route(format!("`{from}` has no output")));
                    };
                    match task_list::parse(&read_output(cx.ws, out), &categories) {
                        Ok(list) => (
                            list.into_iter().map(|t| (t.category, t.prompt)).collect(),
                            true,
                        ),
                        Err(e) => {
                            return Err(cx.failed_to_route(format!(
                                "the task list from `{from}` ({out}) cannot be read: {e}"
                            )));
                        }
                    }
                }
                TaskList::Inline(tasks) => (
                    tasks
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
                    false,
                ),
            };
            // An agent wrote the list: it is data, not a template, and it is bounded.
            if from_output && listed.len() > cx.config.max_spawned_tasks as usize {
                return Err(cx.failed_to_route(format!(
                    "the task list has {} tasks; a phase takes at most {} (`max_spawned_tasks`)",
                    listed.len(),
                    cx.config.max_spawned_tasks
                )));
            }
            for (category, task_prompt) in listed {
                let Some(target) = task_list::route(routing, &category) else {
                    return Err(cx.failed_to_route(format!(
                        "the task category `{category}` has no entry in `routing` (categories: {}; a `default` entry takes any other)",
                        categories.join(", ")
                    )));
                };
                let (agent, role) = cx.route(Some((&target.value, Accepts::Any)))?;
                let mut v = cx.vars.clone();
                v.insert("category".into(), category.clone());
                v.insert("task".into(), task_prompt.clone());
                let mut p = if from_output {
                    task_prompt.clone()
                } else {
                    render(&task_prompt, &v)
                };
                // The phase's own prompt (written or default) says what to do with it.
                p.push_str("\n\n---\n");
                p.push_str(&render(&prompts::effective(cx.wf, cx.phase), &v));
                if !cx.context.is_empty() {
                    p.push_str("\n\n---\n");
                    p.push_str(&cx.context);
                }
                subs.push(SubTask {
                    label: format!("{category} task {}", subs.len() + 1),
                    prompt: p,
                    agent,
                    role,
                    output: None,
                    files: scoped_files(cx.phase, cx.ws, &cx.vars),
                });
            }
        }
        FanOutTasks::Files { glob } => {
            let pattern = render(glob, &cx.vars);
            for file in glob_workspace(cx.ws, &pattern) {
                let path = std::path::Path::new(&file);
                let mut v = cx.vars.clone();
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
                subs.push(SubTask {
                    label: file.clone(),
                    prompt: render(&prompts::effective(cx.wf, cx.phase), &v),
                    agent: default_route.0.clone(),
                    role: default_route.1.clone(),
                    output: cx.phase.output.as_ref().map(|o| render(&o.value, &v)),
                    files: vec![file],
                });
            }
            if subs.is_empty() {
                return Err(cx.failed_to_route(format!("no workspace file matches `{pattern}`")));
            }
        }
    }
    Ok(subs)
}
