//! Workflow definitions: declarative multi-agent workflows in YAML — `name`, `description`,
//! `vars` with defaults, and `phases` of the types `single`, `ensemble`, `routed`, `parallel`,
//! `loop` and `map`. The format is the one our users write by hand: `model: claude-opus` names
//! what runs a phase ([`targets`]), a phase without `prompt:` gets a purpose-written default
//! ([`prompts`]), a `{variable}` used but not declared is a required variable, and a routed phase
//! can take its tasks from an earlier phase's Markdown or JSON list ([`task_list`]).
//!
//! Built-in workflows live in `context/workflows/` and are compiled in; `.context/workflows/*.yaml`
//! adds more (a file with a built-in's name replaces it). [`validate`] reports *every* problem —
//! unknown phase references, forward references (cycles), names that resolve to no agent or role,
//! missing fields — each with file, line and column.
//!
//! This module only reads and checks definitions; running them is the workflow runner's job.

pub mod explain;
pub mod prompts;
pub mod targets;
pub mod task_list;

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
        include_str!("../../context/workflows/workshop.yaml"),
    ),
    ("plan", include_str!("../../context/workflows/plan.yaml")),
    (
        "feature-build",
        include_str!("../../context/workflows/feature-build.yaml"),
    ),
    ("tdd", include_str!("../../context/workflows/tdd.yaml")),
    (
        "research-implement-validate",
        include_str!("../../context/workflows/research-implement-validate.yaml"),
    ),
    (
        "bulk-refine",
        include_str!("../../context/workflows/bulk-refine.yaml"),
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

impl Workflow {
    /// Every variable: the declared ones with their defaults, then each `{variable}` the
    /// phases use without declaring it — a required one (`None`), asked for like `feature: ~`.
    pub fn variables(&self) -> BTreeMap<String, Option<String>> {
        let mut vars = self.vars.clone();
        for phase in &self.phases {
            for var in phase.variables_used() {
                if !ALL_TYPES
                    .iter()
                    .any(|k| type_placeholders(*k).contains(&var))
                {
                    vars.entry(var.to_string()).or_insert(None);
                }
            }
        }
        vars
    }

    /// The variables a run must give: declared without a default, or used and not declared.
    pub fn required_variables(&self) -> Vec<String> {
        self.variables()
            .into_iter()
            .filter(|(_, default)| default.is_none())
            .map(|(name, _)| name)
            .collect()
    }
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
    /// … or a role's chain …
    #[serde(default)]
    pub role: Option<Spanned<String>>,
    /// … or a model name, resolved by [`targets::resolve`] (agent, `agent:model`, role, or a
    /// `models:` alias of the config).
    #[serde(default)]
    pub model: Option<Spanned<String>>,
    /// The proposers of an ensemble; `models` is the same key. Each resolves like `model`.
    #[serde(default, alias = "models")]
    pub agents: Vec<Spanned<String>>,
    /// Resolves like `model`.
    #[serde(default)]
    pub judge: Option<Spanned<String>>,
    #[serde(default)]
    pub judge_mode: Option<JudgeMode>,
    #[serde(default)]
    pub mode: Option<EnsembleMode>,
    #[serde(default)]
    pub min_proposals: Option<usize>,
    /// Outputs of earlier phases this phase reads (`plan`, or `plan.output`; one
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
    /// `routed`: category → what runs it (resolves like `model`).
    #[serde(default)]
    pub routing: BTreeMap<String, Spanned<String>>,
    /// `routed`/`parallel`: inline sub-tasks.
    #[serde(default)]
    pub tasks: Vec<SubTask>,
    /// `routed`: the earlier phase whose output is the task list (default: the first `input`).
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

/// A step run by one agent (or role, or model): a loop's generator, a synthesize or refine step.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    #[serde(default)]
    pub agent: Option<Spanned<String>>,
    #[serde(default)]
    pub role: Option<Spanned<String>>,
    #[serde(default)]
    pub model: Option<Spanned<String>>,
    pub prompt: Spanned<String>,
}

impl Step {
    /// Who runs the step, and what kind of name it is.
    pub fn runner(&self) -> Option<(&Spanned<String>, targets::Accepts)> {
        runner_of(&self.agent, &self.role, &self.model)
    }
}

/// The one of `agent`, `role`, `model` that is given (validation refuses more than one).
fn runner_of<'a>(
    agent: &'a Option<Spanned<String>>,
    role: &'a Option<Spanned<String>>,
    model: &'a Option<Spanned<String>>,
) -> Option<(&'a Spanned<String>, targets::Accepts)> {
    use targets::Accepts;
    agent
        .as_ref()
        .map(|a| (a, Accepts::Agent))
        .or(role.as_ref().map(|r| (r, Accepts::Role)))
        .or(model.as_ref().map(|m| (m, Accepts::Any)))
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
    /// Who runs the phase's own tasks (`agent`, `role` or `model`), and what kind of name it is.
    pub fn runner(&self) -> Option<(&Spanned<String>, targets::Accepts)> {
        runner_of(&self.agent, &self.role, &self.model)
    }

    /// Every name in the phase that must resolve to something that runs, with what it accepts.
    pub fn named_runners(&self) -> Vec<(&Spanned<String>, targets::Accepts)> {
        use targets::Accepts;
        let mut out = Vec::new();
        out.extend(self.agent.iter().map(|a| (a, Accepts::Agent)));
        out.extend(self.role.iter().map(|r| (r, Accepts::Role)));
        out.extend(self.model.iter().map(|m| (m, Accepts::Any)));
        out.extend(self.agents.iter().map(|a| (a, Accepts::Any)));
        out.extend(self.judge.iter().map(|j| (j, Accepts::Any)));
        out.extend(self.routing.values().map(|v| (v, Accepts::Any)));
        out.extend(
            self.tasks
                .iter()
                .filter_map(|t| t.agent.as_ref())
                .map(|a| (a, Accepts::Any)),
        );
        for step in [&self.synthesize, &self.generator].into_iter().flatten() {
            out.extend(step.agent.iter().map(|a| (a, Accepts::Agent)));
            out.extend(step.role.iter().map(|r| (r, Accepts::Role)));
            out.extend(step.model.iter().map(|m| (m, Accepts::Any)));
        }
        if let Some(ev) = &self.evaluator {
            out.extend(ev.agent.iter().map(|a| (a, Accepts::Any)));
        }
        if let Some(d) = &self.distill {
            out.extend(d.agent.iter().map(|a| (a, Accepts::Agent)));
            out.extend(d.role.iter().map(|r| (r, Accepts::Role)));
        }
        out
    }

    /// The phase's templates with their positions: `prompt`, `output`, tasks' and steps'
    /// prompts.
    pub fn templates(&self) -> Vec<&Spanned<String>> {
        let mut t: Vec<&Spanned<String>> = self.prompt.iter().chain(self.output.iter()).collect();
        t.extend(self.tasks.iter().map(|t| &t.prompt));
        for step in [&self.synthesize, &self.generator].into_iter().flatten() {
            t.push(&step.prompt);
        }
        if let Some(ev) = &self.evaluator {
            t.extend(ev.prompt.iter());
        }
        t
    }

    /// The `{variables}` the phase uses (its templates, `glob` and `files`), excluding the
    /// placeholders dirigent fills in itself.
    fn variables_used(&self) -> Vec<&str> {
        let mut texts: Vec<&str> = self
            .templates()
            .into_iter()
            .map(|t| t.value.as_str())
            .collect();
        texts.extend(self.glob.as_deref());
        texts.extend(self.files.iter().map(String::as_str));
        texts
            .into_iter()
            .flat_map(placeholders)
            .filter(|v| !ALWAYS.contains(v) && !type_placeholders(self.kind.value).contains(v))
            .collect()
    }

    /// The phases this one reads, by name (an `.output`/`.outputs` suffix removed).
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
                if text.trim().is_empty() {
                    // An empty file is no definition: most often the shell created it for
                    // `dirigent workflow show NAME > .context/workflows/NAME.yaml` before `show`
                    // ran. Replacing a built-in with nothing would only break runs.
                    continue;
                }
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

const ALL_TYPES: &[PhaseType] = &[
    PhaseType::Single,
    PhaseType::Ensemble,
    PhaseType::Routed,
    PhaseType::Parallel,
    PhaseType::Loop,
    PhaseType::Map,
];

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
        let mut message = first.to_string();
        let source_line = def.text.lines().nth(line.saturating_sub(1) as usize).unwrap_or("");
        if flow_map_with_placeholder(source_line) {
            message.push_str(
                "; a `{placeholder}` inside a flow-style map `{ … }` must be quoted (`prompt: \"Plan {feature}\"`), or write the map in block style, one key per line",
            );
        }
        vec![Problem {
            file: file.clone(),
            line,
            column,
            message,
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
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    for phase in &wf.phases {
        let pname = phase.name.value.as_str();
        let kind = phase.kind.value;
        let here = &phase.name.referenced;
        if !seen.insert(pname) {
            at(here, format!("phase `{pname}` is defined twice"));
        }
        // A phase's name becomes part of its tasks' ids (`<run>.<phase>.<k>`).
        let usable = !pname.is_empty()
            && pname.len() <= 64
            && pname
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !usable {
            at(
                here,
                format!(
                    "phase name `{pname}` can use only letters, digits, `-` and `_` (at most 64): it becomes part of task ids"
                ),
            );
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
                let hint =
                    crate::suggest::hint(target, wf.phases.iter().map(|p| p.name.value.as_str()));
                at(
                    pos,
                    format!(
                        "phase `{pname}` reads `{target}`, which is not a phase of this workflow{hint}"
                    ),
                );
            }
        }
        // Who runs each step: every name must resolve (see `targets` for the lookup order).
        let given: Vec<&str> = [
            phase.agent.as_ref().map(|_| "`agent`"),
            phase.role.as_ref().map(|_| "`role`"),
            phase.model.as_ref().map(|_| "`model`"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if given.len() > 1 {
            at(
                here,
                format!(
                    "phase `{pname}` gives {}; give one of them",
                    given.join(" and ")
                ),
            );
        }
        for (name, accepts) in phase.named_runners() {
            if let Err(why) = targets::resolve(&name.value, accepts, config) {
                at(&name.referenced, why);
            }
        }
        // Placeholders: a variable that is not declared is a required one; a placeholder of
        // another phase type is a mistake.
        for t in phase.templates() {
            for var in placeholders(&t.value) {
                if wf.vars.contains_key(var)
                    || ALWAYS.contains(&var)
                    || type_placeholders(kind).contains(&var)
                {
                    continue;
                }
                if let Some(other) = ALL_TYPES
                    .iter()
                    .find(|k| type_placeholders(**k).contains(&var))
                {
                    at(
                        &t.referenced,
                        format!(
                            "`{{{var}}}` exists only in {} phases; `{pname}` is a {} phase",
                            other.name(),
                            kind.name()
                        ),
                    );
                }
            }
        }
        match kind {
            PhaseType::Single | PhaseType::Map => {
                if phase.runner().is_none() {
                    at(
                        here,
                        format!("phase `{pname}` needs a `model`, an `agent` or a `role`"),
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
                if phase.tasks.is_empty() && phase.tasks_from.is_none() && phase.input.is_none() {
                    at(
                        here,
                        format!(
                            "routed phase `{pname}` needs its tasks: inline `tasks`, or an earlier phase's task list as `input` (or `tasks_from`)"
                        ),
                    );
                }
                for t in &phase.tasks {
                    match &t.category {
                        Some(c) if task_list::route(&phase.routing, &c.value).is_none() => at(
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
                || phase.runner().is_some()
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

/// Whether a YAML line opens a flow-style map (`{ key: … }`) that holds an unquoted
/// `{placeholder}`: YAML reads the placeholder's braces as a nested map.
fn flow_map_with_placeholder(line: &str) -> bool {
    let code = line.split(" #").next().unwrap_or(line);
    let opens_map = code.trim_start().starts_with("- {") || code.contains(": {");
    opens_map && code.matches('{').count() >= 2
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
            "broken.yaml:6:22: `nobody` is not an agent (configured: claude, gemini, local), an `agent:model` entry, a role (roles: backend, bulk, frontend, judge, planner, proposer, reviewer) or a `models:` alias. To run it, add `nobody: AGENT` (or `AGENT:MODEL`) under `models:` in the config.",
            "broken.yaml:9:12: phase `plan` reads `audit`, which runs later (a cycle); phases run in order",
            "broken.yaml:12:11: unknown role `qa` (roles: backend, bulk, frontend, judge, planner, proposer, reviewer)",
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
    fn the_input_forms_users_write_are_accepted() {
        let text = "\
name: forms
vars: { feature: auth }
phases:
  - name: plan
    type: single
    agent: claude
    prompt: Plan {feature}
  - { name: build, type: single, agent: claude, prompt: Build, input: plan.output }
  - { name: audit, type: single, agent: claude, prompt: Audit, input: [plan.output, build.outputs] }
";
        let wf = validate(&def("forms", text), &config()).unwrap();
        assert_eq!(wf.phases.len(), 3);
        assert_eq!(wf.phases[2].inputs(), ["plan", "build"]);
        assert_eq!(
            placeholders("a {feature}/{x} {not a var} {}"),
            ["feature", "x"]
        );
    }

    #[test]
    fn undeclared_variables_are_required_and_other_types_placeholders_are_problems() {
        let text = "\
name: v
vars:
  area: src
  owner: ~
phases:
  - name: plan
    type: single
    agent: claude
    prompt: \"Plan {feature} in {area} for {owner}\"
    output: \"docs/{feature}/{team}.md\"
";
        let wf = validate(&def("v", text), &config()).unwrap();
        assert_eq!(
            wf.required_variables(),
            ["feature", "owner", "team"],
            "declared without default, or used without being declared"
        );
        let text = "name: w\nphases:\n  - name: a\n    type: single\n    agent: claude\n    prompt: \"Round {round}\"\n";
        let problems = validate(&def("w", text), &config()).unwrap_err();
        assert_eq!(
            problems[0].message,
            "`{round}` exists only in loop phases; `a` is a single phase"
        );
    }

    #[test]
    fn typos_of_variables_and_phases_get_a_suggestion() {
        let text = "name: t\nvars: {feature: x}\nphases:\n  - name: plan\n    type: single\n    agent: claude\n    prompt: \"Plan {featur}\"\n  - name: build\n    type: single\n    agent: claude\n    input: plna.output\n";
        let problems = validate(&def("t", text), &config()).unwrap_err();
        assert_eq!(
            problems[0].message,
            "phase `build` reads `plna`, which is not a phase of this workflow; did you mean `plan`?"
        );
        let text = text.replace("plna.output", "plan.output");
        let wf = validate(&def("t", &text), &config()).unwrap();
        assert_eq!(
            explain::variables_line(&wf),
            "variables: featur (required: used but not declared under `vars:`; did you mean `feature`?), feature = \"x\""
        );
    }
}
