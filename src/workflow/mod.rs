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
mod validate;
pub mod written;

pub use validate::validate;

use std::collections::BTreeMap;
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

/// A checked workflow: what [`validate`] returns and the runner runs. Each phase's kind carries
/// exactly the data that kind needs, so nothing is looked up or checked again at run time.
#[derive(Debug)]
pub struct Workflow {
    pub name: Spanned<String>,
    pub description: String,
    /// The declared variables and their defaults (`None`: must be given).
    pub vars: BTreeMap<String, Option<String>>,
    /// Every variable: the declared ones, then each `{variable}` the phases use without
    /// declaring it — a required one (`None`).
    pub variables: BTreeMap<String, Option<String>>,
    pub phases: Vec<Phase>,
}

impl Workflow {
    /// The variables a run must give: declared without a default, or used and not declared.
    pub fn required_variables(&self) -> Vec<String> {
        self.variables
            .iter()
            .filter(|(_, default)| default.is_none())
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The variables that name files: used in an `output`, a map's `glob` or a scoped phase's
    /// `files`. Such a value becomes a path, so free text (a chat's) cannot fill it.
    pub fn path_variables(&self) -> std::collections::BTreeSet<String> {
        let mut out = std::collections::BTreeSet::new();
        for phase in &self.phases {
            let mut paths: Vec<&str> = phase.files.iter().map(String::as_str).collect();
            paths.extend(phase.output.as_ref().map(|o| o.value.as_str()));
            if let Kind::FanOut(FanOut {
                tasks: FanOutTasks::Files { glob },
                ..
            }) = &phase.kind
            {
                paths.push(glob);
            }
            for path in paths {
                out.extend(placeholders(path).into_iter().map(str::to_string));
            }
        }
        out
    }
}

/// One checked phase: what every kind has, and its [`Kind`].
#[derive(Debug)]
pub struct Phase {
    pub name: Spanned<String>,
    /// Its own prompt template; `None`: the default of [`prompts`].
    pub prompt: Option<Spanned<String>>,
    /// Who runs the phase's own tasks, when it names one (`agent`, `role` or `model`).
    pub runner: Option<Runner>,
    /// The earlier phases it reads, by name.
    pub inputs: Vec<String>,
    /// Whether `input:` was written at all (an empty list too): a `distilled` phase without it
    /// summarises every earlier phase.
    pub input_given: bool,
    /// Where its result goes: a workspace-relative path template.
    pub output: Option<Spanned<String>>,
    /// What its tasks see of earlier phases; `None`: its `input`s.
    pub context: Option<ContextStrategy>,
    /// The `distilled` strategy's summarising step, when written.
    pub distill: Option<DistillStep>,
    /// Who runs the distill tasks: the `distill` step's `agent` or `role`, else the phase's own
    /// runner, else its `judge` (whatever the phase's type).
    pub distill_by: Option<Runner>,
    /// Workspace files or globs for the `scoped` strategy.
    pub files: Vec<String>,
    /// Where its tasks work (`single`, `parallel`, `routed`, `map`); `None`: shared.
    pub workdir: Option<crate::workdir::Workdir>,
    /// Its tasks' `verify`, when it gives one.
    pub verify: Option<Vec<Vec<String>>>,
    pub kind: Kind,
}

impl Phase {
    /// The type as written (`single`, `ensemble`, `routed`, `parallel`, `loop`, `map`).
    pub fn phase_type(&self) -> PhaseType {
        match &self.kind {
            Kind::Single => PhaseType::Single,
            Kind::Ensemble(_) => PhaseType::Ensemble,
            Kind::FanOut(f) => match f.tasks {
                FanOutTasks::Inline(_) => PhaseType::Parallel,
                FanOutTasks::Routed { .. } => PhaseType::Routed,
                FanOutTasks::Files { .. } => PhaseType::Map,
            },
            Kind::Loop(_) => PhaseType::Loop,
        }
    }
}

/// A name that runs something, and what kind of name it may be.
#[derive(Debug, Clone)]
pub struct Runner {
    pub name: Spanned<String>,
    pub accepts: targets::Accepts,
}

/// What a phase does, with the data for it.
#[derive(Debug)]
pub enum Kind {
    /// One task.
    Single,
    /// Several proposers answer; a judge picks or synthesises.
    Ensemble(Ensemble),
    /// Many tasks at once (`parallel`, `routed`, `map`), then optionally one step over them all.
    FanOut(FanOut),
    /// A generator, judged each round, until it passes or the rounds run out.
    Loop(Loop),
}

#[derive(Debug)]
pub struct Ensemble {
    /// Each resolves like `model` (at least two).
    pub proposers: Vec<Spanned<String>>,
    pub judge: Spanned<String>,
    pub judge_mode: Option<JudgeMode>,
    /// Each proposer sees the proposals before it (`mode: sequential`).
    pub sequential: bool,
    /// Fewer successful proposals fail the phase.
    pub min_proposals: usize,
}

#[derive(Debug)]
pub struct FanOut {
    pub tasks: FanOutTasks,
    /// One step over every result: a `parallel` phase's `synthesize`, a `map`'s `refine`.
    pub combine: Option<Step>,
}

/// Where a fan-out phase's tasks come from.
#[derive(Debug)]
pub enum FanOutTasks {
    /// `parallel`: the tasks written in the phase.
    Inline(Vec<SubTask>),
    /// `routed`: tasks by category, each run by its `routing` entry.
    Routed {
        routing: BTreeMap<String, Spanned<String>>,
        list: TaskList,
    },
    /// `map`: one task per workspace file matching the glob template.
    Files { glob: String },
}

/// A routed phase's task list.
#[derive(Debug)]
pub enum TaskList {
    /// Written in the phase.
    Inline(Vec<SubTask>),
    /// Read from an earlier phase's output (`tasks_from`, or the first `input`).
    FromPhase(String),
}

#[derive(Debug)]
pub struct Loop {
    pub generator: Step,
    pub evaluator: Evaluation,
    pub max_rounds: u32,
}

/// How a loop's round is judged.
#[derive(Debug)]
pub enum Evaluation {
    /// A command run in the workspace: exit 0 passes.
    Command(Vec<String>),
    /// An agent whose answer starts with PASS or FAIL.
    Agent {
        agent: Spanned<String>,
        prompt: Option<Spanned<String>>,
    },
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
#[derive(Clone, Debug, Deserialize)]
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
#[derive(Clone, Debug, Deserialize)]
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
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillStep {
    #[serde(default)]
    pub agent: Option<Spanned<String>>,
    #[serde(default)]
    pub role: Option<Spanned<String>>,
    #[serde(default)]
    pub prompt: Option<String>,
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
            // Compiled in: no file of the user's to point at.
            Source::Builtin => format!("{} (built-in)", self.name),
            Source::File(p) => p.display().to_string(),
        }
    }
}

/// Every workflow available in a workspace: built-ins, then `.context/workflows/*.yaml` (a
/// file replaces the built-in of the same name). Sorted by name.
/// The largest workflow file read (as large as a config may be).
const MAX_DEFINITION: u64 = 1024 * 1024;

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
    // The directory itself is not followed either (an agent could point it anywhere).
    if std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(std::io::Error::other(format!(
            "`{}` is a symbolic link; workflows are read only from a real directory",
            dir.display()
        )));
    }
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
                // Never through a link, never blocking on a FIFO, never more than a config may
                // be: agents can write here, and the engine reads these files in its loop.
                let name = e.file_name().to_string_lossy().into_owned();
                let text = crate::fsutil::read_confined(dir, &name, MAX_DEFINITION)
                    .map_err(|e| std::io::Error::other(format!("`{}` {e}", path.display())))?;
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
