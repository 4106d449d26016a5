//! The prompt a phase runs with when its definition has no `prompt:` — the format users write
//! leaves most prompts out and lets the phase's name say what it is for. A default is a template like
//! a written prompt (rendered with the run's variables): a line placing the phase in its
//! workflow, what it is for — purpose-written for the well-known phase names (workshop, plan,
//! decompose, execute, integrate, audit, and a few synonyms), generic by type otherwise — the
//! workflow's variables, and which earlier outputs follow.
//!
//! `dirigent workflow show` prints these, so nobody has to guess what an agent was told.

use super::{FanOut, FanOutTasks, Kind, Phase, PhaseType, TaskList, Workflow};

/// The categories a decompose step asks for when no routed phase reads it.
const FALLBACK_CATEGORIES: &[&str] = &["frontend", "backend", "test"];

/// The phase's prompt template: its own `prompt:`, or the default.
pub fn effective(wf: &Workflow, phase: &Phase) -> String {
    match &phase.prompt {
        Some(p) => p.value.clone(),
        None => default_prompt(wf, phase),
    }
}

/// The default prompt of a phase (see the module doc).
pub fn default_prompt(wf: &Workflow, phase: &Phase) -> String {
    let name = phase.name.value.as_str();
    let kind = phase.phase_type();
    let mut p = format!(
        "This is the `{name}` phase ({}) of the workflow `{}`",
        kind.name(),
        wf.name.value
    );
    let description = wf.description.trim();
    if description.is_empty() {
        p.push_str(".\n");
    } else {
        p.push_str(&format!(": {description}\n"));
    }
    let vars = &wf.variables;
    if !vars.is_empty() {
        p.push('\n');
        for var in vars.keys() {
            p.push_str(&format!("- {var}: {{{var}}}\n"));
        }
    }
    p.push('\n');
    p.push_str(&purpose(wf, phase));
    p.push('\n');
    let inputs = &phase.inputs;
    if !inputs.is_empty() && kind != PhaseType::Routed {
        let names: Vec<String> = inputs.iter().map(|i| format!("`{i}`")).collect();
        p.push_str(&format!(
            "\nWhat the earlier phase{} {} produced follows below; build on it.\n",
            if names.len() == 1 { "" } else { "s" },
            names.join(" and ")
        ));
    }
    p
}

/// What the phase is for, by its name (and type).
fn purpose(wf: &Workflow, phase: &Phase) -> String {
    let name = phase.name.value.to_ascii_lowercase();
    let is = |names: &[&str]| {
        names
            .iter()
            .any(|n| name == *n || name.starts_with(&format!("{n}-")))
    };
    let ensemble = phase.phase_type() == PhaseType::Ensemble;
    let judged = if ensemble {
        " Other models answer the same question; a judge compares the answers, so make yours complete on its own."
    } else {
        ""
    };
    if is(&["workshop", "brainstorm", "explore", "direction"]) {
        format!(
            "Workshop the work: propose a direction — the approach you recommend, the alternatives you considered and why you set them aside, and the main risks.{judged}"
        )
    } else if is(&["plan", "planning", "design", "architecture"]) {
        format!(
            "Write an implementation plan: the key decisions and why, the constraints, the risks, and the steps in order, each small enough to review.{judged}"
        )
    } else if is(&["decompose", "split", "breakdown", "tasks"]) {
        let categories = categories_for(wf, phase);
        format!(
            "Split the plan into independent tasks that can each be done and reviewed on their own. Answer with the task list only, one task per line, in the form `- [category] what to do`, where category is one of: {}. Put the details a task needs on indented lines below it.",
            categories.join(", ")
        )
    } else if is(&["execute", "implement", "build", "code"]) {
        "Carry out the task: change the code in the repository, add or update the tests, run them, and answer with what you changed and why.".to_string()
    } else if is(&["integrate", "integration", "merge"]) {
        "Integrate the work of the earlier phases: check that the changes fit together, resolve conflicts and gaps, run the tests, and answer with what changed, why, and any gotchas.".to_string()
    } else if is(&["audit", "review", "verify", "validate", "check"]) {
        "Audit the work against the plan and the requirements. Start your answer with PASS or FAIL on the first line, then list the findings, most important first.".to_string()
    } else if is(&["research", "investigate"]) {
        "Research current good practice for the work: concrete recommendations, security considerations, and short examples.".to_string()
    } else if is(&["test", "tests", "testing"]) {
        "Write the tests the work needs, run them, and answer with what they cover and what they found.".to_string()
    } else if is(&["document", "docs", "documentation"]) {
        "Document the work for its users: what it does, how to use it, and what to watch out for."
            .to_string()
    } else {
        match phase.phase_type() {
            PhaseType::Ensemble => {
                format!("Answer this phase's question as well as you can.{judged}")
            }
            PhaseType::Map => "Do this phase's work on the file {file}.".to_string(),
            PhaseType::Routed | PhaseType::Parallel => {
                "Carry out the task above as your part of this phase, and answer with what you did."
                    .to_string()
            }
            PhaseType::Single | PhaseType::Loop => {
                "Do this phase's part of the work, and answer with its result.".to_string()
            }
        }
    }
}

/// The categories a decompose phase should use: the `routing` keys of the routed phase that
/// reads its output, else a common set.
fn categories_for(wf: &Workflow, phase: &Phase) -> Vec<String> {
    let me = phase.name.value.as_str();
    wf.phases
        .iter()
        .find_map(|p| match &p.kind {
            Kind::FanOut(FanOut {
                tasks:
                    FanOutTasks::Routed {
                        routing,
                        list: TaskList::FromPhase(from),
                    },
                ..
            }) if from == me && !routing.is_empty() => Some(
                routing
                    .keys()
                    .filter(|k| *k != "default")
                    .cloned()
                    .collect(),
            ),
            _ => None,
        })
        .unwrap_or_else(|| FALLBACK_CATEGORIES.iter().map(|c| c.to_string()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::{Definition, Source};

    fn workflow(text: &str) -> Workflow {
        let def = Definition {
            name: "w".into(),
            source: Source::Builtin,
            text: text.into(),
        };
        let config = crate::config::Config::parse(
            "agents:\n  a: {command: [a]}\n  b: {command: [b]}\n",
            "t",
        )
        .unwrap();
        crate::workflow::validate(&def, &config).unwrap()
    }

    #[test]
    fn well_known_phases_get_purpose_written_defaults() {
        let wf = workflow(
            "name: w\ndescription: Build a feature\nphases:\n  - {name: plan, type: ensemble, models: [a, b], judge: a}\n  - {name: decompose, type: single, model: a, input: plan.output}\n  - name: execute\n    type: routed\n    input: decompose.output\n    routing:\n      ui: a\n      api: b\n  - {name: audit, type: single, model: a, input: [plan.output, execute.outputs], output: \"docs/{feature}/v.md\"}\n  - {name: polish, type: single, model: a}\n",
        );
        let p = |i: usize| default_prompt(&wf, &wf.phases[i]);
        let cases: &[(usize, &str)] = &[
            (
                0,
                "This is the `plan` phase (ensemble) of the workflow `w`: Build a feature\n",
            ),
            (0, "Write an implementation plan"),
            (0, "a judge compares the answers"),
            (0, "- feature: {feature}\n"),
            (
                1,
                "`- [category] what to do`, where category is one of: api, ui.",
            ),
            (1, "What the earlier phase `plan` produced follows below"),
            (2, "Carry out the task"),
            (3, "PASS or FAIL on the first line"),
            (3, "the earlier phases `plan` and `execute` produced"),
            (4, "Do this phase's part of the work"),
        ];
        for (i, want) in cases {
            assert!(
                p(*i).contains(want),
                "phase {i}: {want:?} not in:\n{}",
                p(*i)
            );
        }
        // The routed phase's tasks come with their own text; its inputs are the list, not
        // context to announce.
        assert!(!p(2).contains("produced follows"), "{}", p(2));
    }
}
