//! Workflow definitions: declarative multi-agent workflows in YAML, following the seed's
//! `feature-build.yaml` — `name`, `description`, `vars` with defaults, and `phases` of the types
//! `single`, `ensemble`, `routed`, `parallel`, `loop` and `map`.
//!
//! Built-in workflows live in `context/workflows/` and are compiled in; `.context/workflows/*.yaml`
//! adds more (a file with a built-in's name replaces it). [`validate`] reports *every* problem —
//! unknown phase references, forward references (cycles), undeclared variables, unknown agents and
//! roles, missing fields — each with file, line and column.
//!
//! This module only reads and checks definitions; running them is the workflow runner's job.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::config::Config;

/// The built-in workflows, compiled in.
pub const BUILTIN: &[(&str, &str)] = &[
    (
        "workshop",
        include_str!("../context/workflows/workshop.yaml"),
    ),
    ("plan", include_str!("../context/workflows/plan.yaml")),
    (
        "feature-build",
        include_str!("../context/workflows/feature-build.yaml"),
    ),
    ("tdd", include_str!("../context/workflows/tdd.yaml")),
    (
        "research-implement-validate",
        include_str!("../context/workflows/research-implement-validate.yaml"),
    ),
    (
        "bulk-refine",
        include_str!("../context/workflows/bulk-refine.yaml"),
    ),
];

/// A workflow as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workflow {
    pub name: Spanned<String>,
    #[serde(default)]
    pub description: String,
    /// Variables and their defaults; `~` (null) means the variable must be given.
    #[serde(default)]
    pub vars: BTreeMap<String, Option<String>>,
    pub phases: Vec<Phase>,
}

/// One phase. Which keys apply depends on `type`; [`validate`] says which are missing or
/// misplaced.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    pub name: Spanned<String>,
    #[serde(rename = "type")]
    pub kind: Spanned<PhaseType>,
    /// The phase's task prompt (a template: `{var}`, and per type `{file}`, `{feedback}`, …).
    #[serde(default)]
    pub prompt: Option<Spanned<String>>,
    /// One agent (`single`, `map`, …) …
    #[serde(default)]
    pub agent: Option<Spanned<String>>,
    /// … or a role's chain.
    #[serde(default)]
    pub role: Option<Spanned<String>>,
    /// Several agents (`ensemble` proposers). `models` is accepted as in the seed.
    #[serde(default, alias = "models")]
    pub agents: Vec<Spanned<String>>,
    /// An agent or a role.
    #[serde(default)]
    pub judge: Option<Spanned<String>>,
    #[serde(default)]
    pub judge_mode: Option<JudgeMode>,
    #[serde(default)]
    pub mode: Option<EnsembleMode>,
    #[serde(default)]
    pub min_proposals: Option<usize>,
    /// Outputs of earlier phases this phase reads (`plan`, or the seed's `plan.output`; one
    /// name or a list).
    #[serde(default)]
    pub input: Option<Spanned<OneOrMany>>,
    /// Where the result goes, a workspace-relative path template.
    #[serde(default)]
    pub output: Option<Spanned<String>>,
    /// What the phase's tasks see: `full`, `distilled`, `scoped` or `fresh`.
    #[serde(default, alias = "context_strategy")]
    pub context: Option<ContextStrategy>,
    /// The `distilled` strategy's summarising step (default: the phase's own agent or role
    /// with a built-in prompt).
    #[serde(default)]
    pub distill: Option<DistillStep>,
    /// Workspace files or globs for the `scoped` strategy.
    #[serde(default)]
    pub files: Vec<String>,
    /// `routed`: category → agent or role.
    #[serde(default)]
    pub routing: BTreeMap<String, Spanned<String>>,
    /// `routed`/`parallel`: inline sub-tasks.
    #[serde(default)]
    pub tasks: Vec<SubTask>,
    /// `routed`: the earlier phase whose output is the task list.
    #[serde(default)]
    pub tasks_from: Option<Spanned<String>>,
    /// `parallel`: an optional step over all outputs; `map`: an optional refine step.
    #[serde(default, alias = "refine")]
    pub synthesize: Option<Step>,
    /// `loop`: the generator and the evaluator.
    #[serde(default)]
    pub generator: Option<Step>,
    #[serde(default)]
    pub evaluator: Option<Evaluator>,
    #[serde(default)]
    pub max_rounds: Option<u32>,
    /// `map`: one task per matching workspace file.
    #[serde(default)]
    pub glob: Option<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PhaseType {
    Single,
    Ensemble,
    Routed,
    Parallel,
    Loop,
    Map,
}

impl PhaseType {
    pub fn name(self) -> &'static str {
        match self {
            PhaseType::Single => "single",
            PhaseType::Ensemble => "ensemble",
            PhaseType::Routed => "routed",
            PhaseType::Parallel => "parallel",
            PhaseType::Loop => "loop",
            PhaseType::Map => "map",
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum JudgeMode {
    Pick,
    Synthesize,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EnsembleMode {
    Parallel,
    Sequential,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ContextStrategy {
    Full,
    Distilled,
    Scoped,
    Fresh,
}

/// A task within a phase.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubTask {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub category: Option<Spanned<String>>,
    pub prompt: Spanned<String>,
    #[serde(default)]
    pub agent: Option<Spanned<String>>,
}

/// A step run by one agent (or role): a loop's generator, a synthesize or refine step.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    #[serde(default)]
    pub agent: Option<Spanned<String>>,
    #[serde(default)]
    pub role: Option<Spanned<String>>,
    pub prompt: Spanned<String>,
}

/// How a `distilled` phase summarises earlier phases.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillStep {
    #[serde(default)]
    pub agent: Option<Spanned<String>>,
    #[serde(default)]
    pub role: Option<Spanned<String>>,
    #[serde(default)]
    pub prompt: Option<String>,
}

/// A loop's evaluator: a command (exit 0 ends the loop) or an agent whose answer starts with
/// PASS or FAIL.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evaluator {
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub agent: Option<Spanned<String>>,
    #[serde(default)]
    pub prompt: Option<Spanned<String>>,
}

/// A single name or a list of names.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl Phase {
    /// The phases this one reads, by name (the seed's `.output`/`.outputs` suffix removed).
    pub fn inputs(&self) -> Vec<&str> {
        let names: Vec<&str> = match self.input.as_ref().map(|s| &s.value) {
            None => vec![],
            Some(OneOrMany::One(n)) => vec![n.as_str()],
            Some(OneOrMany::Many(v)) => v.iter().map(String::as_str).collect(),
        };
        names
            .into_iter()
            .map(|n| n.trim_end_matches(".outputs").trim_end_matches(".output"))
            .collect()
    }
}

/// Where a definition came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Builtin,
    File(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Builtin => f.write_str("built-in"),
            Source::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A workflow file: its name, where it came from, and its text.
#[derive(Clone, Debug)]
pub struct Definition {
    pub name: String,
    pub source: Source,
    pub text: String,
}

impl Definition {
    /// How problems name this file.
    pub fn label(&self) -> String {
        match &self.source {
            Source::Builtin => format!("context/workflows/{}.yaml", self.name),
            Source::File(p) => p.display().to_string(),
        }
    }
}

/// Every workflow available in a workspace: built-ins, then `.context/workflows/*.yaml` (a
/// file replaces the built-in of the same name). Sorted by name.
pub fn discover(dir: &Path) -> std::io::Result<Vec<Definition>> {
    let mut by_name: BTreeMap<String, Definition> = BUILTIN
        .iter()
        .map(|(name, text)| {
            (
                name.to_string(),
                Definition {
                    name: name.to_string(),
                    source: Source::Builtin,
                    text: text.to_string(),
                },
            )
        })
        .collect();
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for e in entries.flatten() {
                let path = e.path();
                let Some(stem) = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .map(str::to_string)
                else {
                    continue;
                };
                let yaml = matches!(
                    path.extension().and_then(|x| x.to_str()),
                    Some("yaml" | "yml")
                );
                if !yaml || stem.starts_with('.') {
                    continue;
                }
                let text = std::fs::read_to_string(&path)?;
                by_name.insert(
                    stem.clone(),
                    Definition {
                        name: stem,
                        source: Source::File(path),
                        text,
                    },
                );
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(by_name.into_values().collect())
}

/// One problem in a workflow file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub line: u64,
    pub column: u64,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// Placeholders every phase may use besides the workflow's vars.
const ALWAYS: &[&str] = &["workflow", "phase", "run"];

/// Placeholders a phase type adds.
fn type_placeholders(kind: PhaseType) -> &'static [&'static str] {
    match kind {
        PhaseType::Loop => &["round", "feedback"],
        PhaseType::Map => &["file", "stem", "dir"],
        PhaseType::Routed | PhaseType::Parallel => &["category", "task"],
        PhaseType::Single | PhaseType::Ensemble => &[],
    }
}

/// Parses and checks a definition against the config. Returns the workflow, or every problem.
pub fn validate(def: &Definition, config: &Config) -> Result<Workflow, Vec<Problem>> {
    let file = def.label();
    let wf: Workflow = serde_saphyr::from_str(&def.text).map_err(|e| {
        let (line, column) = e
            .location()
            .map_or((1, 1), |l| (l.line().max(1), l.column().max(1)));
        let msg = e.to_string();
        let first = msg.lines().next().unwrap_or(&msg);
        // serde-saphyr says `error: line L column C: …`; the position is in the Problem already.
        let first = first.strip_prefix("error: ").unwrap_or(first);
        let first = match first.strip_prefix("line ").and_then(|r| r.split_once(": ")) {
            Some((pos, rest)) if pos.contains(" column ") => rest,
            _ => first,
        };
        vec![Problem {
            file: file.clone(),
            line,
            column,
            message: first.to_string(),
        }]
    })?;
    let mut problems = Vec::new();
    let mut at = |s: &serde_saphyr::Location, message: String| {
        problems.push(Problem {
            file: file.clone(),
            line: s.line().max(1),
            column: s.column().max(1),
            message,
        });
    };
    if wf.name.value != def.name {
        at(
            &wf.name.referenced,
            format!(
                "the workflow is called `{}` but its file is `{}.yaml`; use one name",
                wf.name.value, def.name
            ),
        );
    }
    if wf.phases.is_empty() {
        at(&wf.name.referenced, "the workflow has no phases".into());
    }
    let known_agent = |n: &str| config.agents.contains_key(n);
    let agents_list = config.agents.keys().cloned().collect::<Vec<_>>().join(", ");
    let roles_list = if config.roles.is_empty() {
        "none".to_string()
    } else {
        config.roles.keys().cloned().collect::<Vec<_>>().join(", ")
    };
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    for phase in &wf.phases {
        let pname = phase.name.value.as_str();
        let kind = phase.kind.value;
        let here = &phase.name.referenced;
        if !seen.insert(pname) {
            at(here, format!("phase `{pname}` is defined twice"));
        }
        // References to earlier phases; positions point at the `input:` / `tasks_from:` value.
        let mut refs: Vec<(&str, &serde_saphyr::Location)> = match &phase.input {
            Some(input) => phase
                .inputs()
                .into_iter()
                .map(|n| (n, &input.referenced))
                .collect(),
            None => vec![],
        };
        refs.extend(
            phase
                .tasks_from
                .iter()
                .map(|t| (t.value.as_str(), &t.referenced)),
        );
        for (target, pos) in refs {
            if target == pname {
                at(
                    pos,
                    format!("phase `{pname}` reads its own output (a cycle)"),
                );
            } else if seen.contains(target) {
                // An earlier phase: fine.
            } else if wf.phases.iter().any(|p| p.name.value == target) {
                at(
                    pos,
                    format!(
                        "phase `{pname}` reads `{target}`, which runs later (a cycle); phases run in order"
                    ),
                );
            } else {
                at(
                    pos,
                    format!(
                        "phase `{pname}` reads `{target}`, which is not a phase of this workflow"
                    ),
                );
            }
        }
        // Agents and roles. A judge or a routing target may be either.
        for r in phase.judge.iter().chain(phase.routing.values()) {
            if !known_agent(&r.value) && !config.roles.contains_key(&r.value) {
                at(
                    &r.referenced,
                    format!(
                        "`{}` is neither an agent (configured: {agents_list}) nor a role (configured: {roles_list})",
                        r.value
                    ),
                );
            }
        }
        let mut agents: Vec<&Spanned<String>> = phase.agents.iter().collect();
        agents.extend(phase.agent.iter());
        agents.extend(phase.tasks.iter().filter_map(|t| t.agent.as_ref()));
        for step in [&phase.synthesize, &phase.generator].into_iter().flatten() {
            agents.extend(step.agent.iter());
        }
        if let Some(ev) = &phase.evaluator {
            agents.extend(ev.agent.iter());
        }
        if let Some(d) = &phase.distill {
            agents.extend(d.agent.iter());
        }
        for a in agents {
            if !known_agent(&a.value) {
                at(
                    &a.referenced,
                    format!("unknown agent `{}` (configured: {agents_list})", a.value),
                );
            }
        }
        let mut roles: Vec<&Spanned<String>> = phase.role.iter().collect();
        for step in [&phase.synthesize, &phase.generator].into_iter().flatten() {
            roles.extend(step.role.iter());
        }
        if let Some(d) = &phase.distill {
            roles.extend(d.role.iter());
        }
        for r in roles {
            if !config.roles.contains_key(&r.value) {
                at(
                    &r.referenced,
                    format!(
                        "unknown role `{}` (configured roles: {roles_list})",
                        r.value
                    ),
                );
            }
        }
        // Placeholders.
        let mut templates: Vec<&Spanned<String>> =
            phase.prompt.iter().chain(phase.output.iter()).collect();
        templates.extend(phase.tasks.iter().map(|t| &t.prompt));
        for step in [&phase.synthesize, &phase.generator].into_iter().flatten() {
            templates.push(&step.prompt);
        }
        if let Some(ev) = &phase.evaluator {
            templates.extend(ev.prompt.iter());
        }
        for t in templates {
            for var in placeholders(&t.value) {
                let ok = wf.vars.contains_key(var)
                    || ALWAYS.contains(&var)
                    || type_placeholders(kind).contains(&var);
                if !ok {
                    at(
                        &t.referenced,
                        format!(
                            "`{{{var}}}` is not a variable of this workflow; declare it under `vars:`"
                        ),
                    );
                }
            }
        }
        // What each type needs.
        let needs_prompt = matches!(
            kind,
            PhaseType::Single | PhaseType::Ensemble | PhaseType::Map
        );
        if needs_prompt && phase.prompt.is_none() {
            at(
                here,
                format!("{} phase `{pname}` needs a `prompt`", kind.name()),
            );
        }
        match kind {
            PhaseType::Single | PhaseType::Map => {
                if phase.agent.is_none() && phase.role.is_none() {
                    at(
                        here,
                        format!("phase `{pname}` needs an `agent` or a `role`"),
                    );
                }
            }
            PhaseType::Ensemble => {
                if phase.agents.len() < 2 {
                    at(
                        here,
                        format!("ensemble phase `{pname}` needs at least two `agents` to propose"),
                    );
                }
                if phase.judge.is_none() {
                    at(here, format!("ensemble phase `{pname}` needs a `judge`"));
                }
                if let Some(min) = phase.min_proposals
                    && (min == 0 || min > phase.agents.len())
                {
                    at(
                        here,
                        format!(
                            "`min_proposals` of phase `{pname}` must be between 1 and the number of agents"
                        ),
                    );
                }
            }
            PhaseType::Routed => {
                if phase.routing.is_empty() {
                    at(
                        here,
                        format!("routed phase `{pname}` needs `routing` (category: agent)"),
                    );
                }
                if phase.tasks.is_empty() && phase.tasks_from.is_none() {
                    at(
                        here,
                        format!("routed phase `{pname}` needs `tasks` or `tasks_from`"),
                    );
                }
                for t in &phase.tasks {
                    match &t.category {
                        Some(c) if !phase.routing.contains_key(&c.value) => at(
                            &c.referenced,
                            format!(
                                "category `{}` has no entry in `routing` of phase `{pname}`",
                                c.value
                            ),
                        ),
                        None if t.agent.is_none() => at(
                            &t.prompt.referenced,
                            format!("a task of phase `{pname}` needs a `category` (or an `agent`)"),
                        ),
                        _ => {}
                    }
                }
            }
            PhaseType::Parallel => {
                if phase.tasks.is_empty() {
                    at(here, format!("parallel phase `{pname}` needs `tasks`"));
                }
            }
            PhaseType::Loop => {
                if phase.generator.is_none() {
                    at(here, format!("loop phase `{pname}` needs a `generator`"));
                }
                match &phase.evaluator {
                    None => at(
                        here,
                        format!(
                            "loop phase `{pname}` needs an `evaluator` (a `command` or an `agent`)"
                        ),
                    ),
                    Some(ev) => {
                        if ev.command.is_some() == ev.agent.is_some() {
                            at(
                                here,
                                format!(
                                    "the evaluator of phase `{pname}` needs exactly one of `command` and `agent`"
                                ),
                            );
                        }
                        if ev.command.as_ref().is_some_and(|c| c.is_empty()) {
                            at(
                                here,
                                format!("the evaluator command of phase `{pname}` is empty"),
                            );
                        }
                    }
                }
                if phase.max_rounds.is_none_or(|r| r == 0) {
                    at(
                        here,
                        format!("loop phase `{pname}` needs `max_rounds` of at least 1"),
                    );
                }
            }
        }
        if phase.context == Some(ContextStrategy::Distilled) {
            let has_route = phase
                .distill
                .as_ref()
                .is_some_and(|d| d.agent.is_some() || d.role.is_some())
                || phase.agent.is_some()
                || phase.role.is_some()
                || phase.judge.is_some();
            if !has_route {
                at(
                    here,
                    format!(
                        "distilled phase `{pname}` needs a `distill` step with an `agent` or `role`"
                    ),
                );
            }
        }
        if kind == PhaseType::Map && phase.glob.is_none() {
            at(here, format!("map phase `{pname}` needs a `glob`"));
        }
        if let Some(out) = &phase.output
            && let Err(e) = crate::confined::workspace_path("output", &out.value)
        {
            at(&out.referenced, e.to_string());
        }
    }
    if problems.is_empty() {
        Ok(wf)
    } else {
        problems.sort_by_key(|p| (p.line, p.column));
        Err(problems)
    }
}

/// The `{name}` placeholders in a template.
pub fn placeholders(template: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else { break };
        let name = &after[..end];
        if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.push(name);
        }
        rest = &after[end + 1..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(
            "agents:\n  claude: {command: [c]}\n  gemini: {command: [g]}\n  local: {command: [l]}\nroles:\n  backend: [claude]\n",
            "t",
        )
        .unwrap()
    }

    fn def(name: &str, text: &str) -> Definition {
        Definition {
            name: name.into(),
            source: Source::File(format!("{name}.yaml").into()),
            text: text.into(),
        }
    }

    #[test]
    fn every_builtin_workflow_validates_with_the_preset_agents() {
        let cfg = Config::parse(crate::config::DEFAULT_CONFIG, "embedded").unwrap();
        for (name, text) in BUILTIN {
            let d = Definition {
                name: name.to_string(),
                source: Source::Builtin,
                text: text.to_string(),
            };
            if let Err(problems) = validate(&d, &cfg) {
                panic!(
                    "{name}:\n{}",
                    problems
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
        }
    }

    #[test]
    fn validate_reports_every_problem_with_its_position() {
        let text = "\
name: broken
vars: { feature: ~ }
phases:
  - name: plan
    type: ensemble
    agents: [claude, nobody]
    judge: claude
    prompt: Plan {feature} for {team}
    input: audit
  - name: audit
    type: single
    role: qa
    prompt: Audit
    input: [plan.output, ghost]
  - name: plan
    type: loop
    generator: { agent: claude, prompt: Fix it }
    max_rounds: 0
";
        let problems = validate(&def("broken", text), &config()).unwrap_err();
        let got: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        let want = [
            "broken.yaml:6:22: unknown agent `nobody` (configured: claude, gemini, local)",
            "broken.yaml:8:13: `{team}` is not a variable of this workflow; declare it under `vars:`",
            "broken.yaml:9:12: phase `plan` reads `audit`, which runs later (a cycle); phases run in order",
            "broken.yaml:12:11: unknown role `qa` (configured roles: backend)",
            "broken.yaml:14:12: phase `audit` reads `ghost`, which is not a phase of this workflow",
            "broken.yaml:15:11: phase `plan` is defined twice",
            "broken.yaml:15:11: loop phase `plan` needs an `evaluator` (a `command` or an `agent`)",
            "broken.yaml:15:11: loop phase `plan` needs `max_rounds` of at least 1",
        ];
        for w in want {
            assert!(
                got.iter().any(|g| g == w),
                "missing {w:?} in:\n{}",
                got.join("\n")
            );
        }
        assert_eq!(got.len(), want.len(), "{}", got.join("\n"));
    }

    #[test]
    fn syntax_errors_and_unknown_keys_have_positions() {
        let problems = validate(
            &def(
                "x",
                "name: x\nphases:\n  - name: a\n    type: single\n    colour: red\n",
            ),
            &config(),
        )
        .unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].message.contains("unknown field `colour`"),
            "{}",
            problems[0]
        );
        assert_eq!(
            (problems[0].line, problems[0].column),
            (5, 5),
            "{}",
            problems[0]
        );
        let problems = validate(&def("x", "name: x\nphases: [\n"), &config()).unwrap_err();
        assert!(problems[0].line >= 2, "{}", problems[0]);
        assert!(
            !problems[0].message.starts_with("error:") && !problems[0].message.starts_with("line "),
            "{}",
            problems[0]
        );
    }

    #[test]
    fn the_seeds_input_forms_are_accepted() {
        let text = "\
name: seed
vars: { feature: auth }
phases:
  - name: plan
    type: single
    agent: claude
    prompt: Plan {feature}
  - { name: build, type: single, agent: claude, prompt: Build, input: plan.output }
  - { name: audit, type: single, agent: claude, prompt: Audit, input: [plan.output, build.outputs] }
";
        let wf = validate(&def("seed", text), &config()).unwrap();
        assert_eq!(wf.phases.len(), 3);
        assert_eq!(wf.phases[2].inputs(), ["plan", "build"]);
        assert_eq!(
            placeholders("a {feature}/{x} {not a var} {}"),
            ["feature", "x"]
        );
    }
}
