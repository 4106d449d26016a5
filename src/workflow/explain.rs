//! What `dirigent workflow validate` and `dirigent workflow show` tell a user about a workflow
//! beyond "ok": the variables a run needs, what runs each step and how that was found (the
//! lookup of [`super::targets`]), and the prompt each phase really gets (its own or the
//! default of [`super::prompts`]).

use super::targets::{self, Accepts};
use super::{Phase, Workflow, prompts};
use crate::config::Config;

/// `variables: feature (required), requirements = "see …"`.
pub fn variables_line(wf: &Workflow) -> String {
    let vars = wf.variables();
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
        let head = format!("{} ({})", phase.name.value, phase.kind.value.name());
        let steps: Vec<(String, String)> = steps(phase)
            .into_iter()
            .map(|(label, name, accepts)| {
                let found = match targets::resolve(name, accepts, config) {
                    Ok(r) if r.how == format!("agent `{name}`") => r.how,
                    Ok(r) => format!(
                        "`{name}` → {}",
                        r.how.trim_start_matches(&format!("`{name}` is "))
                    ),
                    Err(why) => format!("`{name}`: {why}"),
                };
                (label, found)
            })
            .collect();
        match steps.as_slice() {
            [] => out.push(format!("{head}: the tasks' own agents")),
            [(label, found)] if label.is_empty() => out.push(format!("{head}: {found}")),
            _ => {
                out.push(head);
                for (label, found) in steps {
                    out.push(format!("  {label} {found}"));
                }
            }
        }
    }
    out
}

/// The named runners of a phase, labelled for the report.
fn steps(phase: &Phase) -> Vec<(String, &str, Accepts)> {
    let mut out: Vec<(String, &str, Accepts)> = Vec::new();
    if let Some((n, a)) = phase.runner() {
        out.push((String::new(), &n.value, a));
    }
    for (i, n) in phase.agents.iter().enumerate() {
        out.push((format!("proposer {}:", i + 1), &n.value, Accepts::Any));
    }
    if let Some(j) = &phase.judge {
        out.push(("judge:".into(), &j.value, Accepts::Any));
    }
    for (category, n) in &phase.routing {
        out.push((format!("{category}:"), &n.value, Accepts::Any));
    }
    for (label, step) in [
        ("generator:", &phase.generator),
        ("synthesize:", &phase.synthesize),
    ] {
        if let Some((n, a)) = step.as_ref().and_then(|s| s.runner()) {
            out.push((label.into(), &n.value, a));
        }
    }
    if let Some(a) = phase.evaluator.as_ref().and_then(|e| e.agent.as_ref()) {
        out.push(("evaluator:".into(), &a.value, Accepts::Any));
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
            phase.kind.value.name()
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
