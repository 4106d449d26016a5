//! What `dirigent workflow validate` and `dirigent workflow show` tell a user about a workflow
//! beyond "ok": the variables a run needs, what runs each step and how that was found (the
//! lookup of [`super::targets`]), and the prompt each phase really gets (its own or the
//! default of [`super::prompts`]).

use super::targets::{self, Accepts};
use super::{Evaluation, FanOutTasks, Kind, Phase, Step, Workflow, prompts};
use crate::config::Config;

/// `variables: feature (required), requirements = "see …"`.
pub fn variables_line(wf: &Workflow) -> String {
    let vars = &wf.variables;
    if vars.is_empty() {
        return "variables: none".to_string();
    }
    let items: Vec<String> = vars
        .iter()
        .map(|(name, default)| match default {
            Some(d) => format!("{name} = {d:?}"),
            None if wf.vars.contains_key(name) => format!("{name} (required)"),
            None => {
                // A typo of a declared variable becomes a required one: say which it resembles.
                let hint = crate::suggest::hint(name, wf.vars.keys().map(String::as_str));
                format!("{name} (required: used but not declared under `vars:`{hint})")
            }
        })
        .collect();
    format!("variables: {}", items.join(", "))
}

/// What runs each phase's steps, one line per step: a phase run by one name on its own line
/// (`decompose (single): `claude-opus` → a `models:` alias for …`), a phase of several under
/// its name (`  proposer 1: …`, `  judge: …`).
pub fn runner_lines(wf: &Workflow, config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for phase in &wf.phases {
        let head = format!("{} ({})", phase.name.value, phase.phase_type().name());
        let steps: Vec<(String, String)> = runners(phase, config)
            .into_iter()
            .map(|r| {
                let found = match &r.found {
                    Ok(how) if *how == format!("agent `{}`", r.name) => how.clone(),
                    Ok(how) => format!(
                        "`{}` → {}",
                        r.name,
                        how.trim_start_matches(&format!("`{}` is ", r.name))
                    ),
                    Err(why) => format!("`{}`: {why}", r.name),
                };
                (r.step, found)
            })
            .collect();
        match steps.as_slice() {
            [] => out.push(format!("{head}: the tasks' own agents")),
            [(step, found)] if step.is_empty() => out.push(format!("{head}: {found}")),
            _ => {
                out.push(head);
                for (step, found) in steps {
                    // The phase's own runner beside other steps: it runs the phase's tasks.
                    let step = if step.is_empty() { "tasks" } else { &step };
                    out.push(format!("  {step}: {found}"));
                }
            }
        }
    }
    out
}

/// One named runner of a phase and what its name was found to be.
pub struct Runner {
    /// Which step it runs (`proposer 1`, `judge`, a category, `synthesize`, `generator`,
    /// `evaluator`); empty for the phase's own runner.
    pub step: String,
    /// The name the workflow gives.
    pub name: String,
    /// How the name resolved (`agent `claude``, `` `fast` is a role … ``), or why it did not.
    pub found: Result<String, String>,
}

/// The named runners of a phase (none: its tasks run on their own agents).
pub fn runners(phase: &Phase, config: &Config) -> Vec<Runner> {
    steps(phase)
        .into_iter()
        .map(|(step, name, accepts)| Runner {
            step: step.trim_end_matches(':').to_string(),
            name: name.to_string(),
            found: targets::resolve(name, accepts, config)
                .map(|r| r.how)
                .map_err(|why| why.to_string()),
        })
        .collect()
}

/// The named runners of a phase, labelled for the report.
fn steps<'a>(phase: &'a Phase) -> Vec<(String, &'a str, Accepts)> {
    let mut out: Vec<(String, &str, Accepts)> = Vec::new();
    if let Some(r) = &phase.runner {
        out.push((String::new(), &r.name.value, r.accepts));
    }
    let step = |label: &str, s: &'a Step| {
        s.runner()
            .map(|(n, a)| (label.to_string(), n.value.as_str(), a))
    };
    match &phase.kind {
        Kind::Single => {}
        Kind::Ensemble(e) => {
            for (i, n) in e.proposers.iter().enumerate() {
                out.push((format!("proposer {}:", i + 1), &n.value, Accepts::Any));
            }
            out.push(("judge:".into(), &e.judge.value, Accepts::Any));
        }
        Kind::FanOut(f) => {
            if let FanOutTasks::Routed { routing, .. } = &f.tasks {
                for (category, n) in routing {
                    out.push((format!("{category}:"), &n.value, Accepts::Any));
                }
            }
            out.extend(f.combine.as_ref().and_then(|s| step("synthesize:", s)));
        }
        Kind::Loop(l) => {
            out.extend(step("generator:", &l.generator));
            if let Evaluation::Agent { agent, .. } = &l.evaluator {
                out.push(("evaluator:".into(), &agent.value, Accepts::Any));
            }
        }
    }
    out
}

/// The effective prompt of every phase, as YAML comments (so `show`'s output stays a valid
/// definition), marking the defaults.
pub fn prompt_comments(wf: &Workflow) -> String {
    let mut s = String::from(
        "\n# ---- The prompt each phase runs with (`{name}`s are filled in per run) ----\n",
    );
    for phase in &wf.phases {
        let origin = if phase.prompt.is_some() {
            "its own `prompt:`"
        } else {
            "the default for its name and type"
        };
        s.push_str(&format!(
            "#\n# {} ({}), {origin}:\n",
            phase.name.value,
            phase.phase_type().name()
        ));
        for line in prompts::effective(wf, phase).trim_end().lines() {
            if line.is_empty() {
                s.push_str("#\n");
            } else {
                s.push_str(&format!("#   {line}\n"));
            }
        }
    }
    s
}
