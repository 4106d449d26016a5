//! A workflow as its author wrote it: the YAML's shape, with every key's position, read by
//! serde. Nothing here is checked; [`super::validate`] checks it and builds the typed
//! [`super::Workflow`] the runner uses.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{
    ALL_TYPES, ALWAYS, ContextStrategy, DistillStep, EnsembleMode, JudgeMode, PhaseType, Step,
    SubTask, placeholders, runner_of, targets, type_placeholders,
};

/// A phase's keys that have a second name, each `(key, other name)`: writing both is one key
/// written twice.
pub const SECOND_NAMES: [(&str, &str); 3] = [
    ("agents", "models"),
    ("context", "context_strategy"),
    ("synthesize", "refine"),
];

/// A workflow as written, before [`super::validate`] checks it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Written {
    pub name: Spanned<String>,
    #[serde(default)]
    pub description: String,
    /// Variables and their defaults; `~` (null) means the variable must be given.
    #[serde(default)]
    pub vars: BTreeMap<String, Option<String>>,
    pub phases: Vec<WrittenPhase>,
}

impl Written {
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
}

/// One phase as written. Which keys apply depends on `type`; [`super::validate`] says which
/// are missing or misplaced.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WrittenPhase {
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
    pub evaluator: Option<WrittenEvaluator>,
    #[serde(default)]
    pub max_rounds: Option<u32>,
    /// `map`: one task per matching workspace file.
    #[serde(default)]
    pub glob: Option<String>,
    /// Where the phase's tasks work: `worktree` (each its own, merged before the next phase)
    /// or `shared` (the default for a workflow's steps).
    #[serde(default)]
    pub workdir: Option<crate::workdir::Workdir>,
    /// The check its tasks' work must pass in their worktrees (with `workdir: worktree`).
    #[serde(default)]
    pub verify: Option<crate::editing::VerifyWritten>,
}

/// A loop's evaluator as written: a command (exit 0 ends the loop) or an agent whose answer
/// starts with PASS or FAIL.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WrittenEvaluator {
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub agent: Option<Spanned<String>>,
    #[serde(default)]
    pub prompt: Option<Spanned<String>>,
}

/// A single name or a list of names.
#[derive(Debug)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

// Read by shape (`by_shape`), not `untagged`: a mistake gets "expected an earlier phase's
// output (`plan`) or a list of them", not "data did not match any variant".
impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::by_shape::word_or_list(
            d,
            "an earlier phase's output (`plan` or `plan.output`) or a list of them",
            OneOrMany::One,
            OneOrMany::Many,
        )
    }
}

impl WrittenPhase {
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

    /// The keys this phase has that belong to other phase types only, each with the types it
    /// belongs to: a `judge` on a `single` phase would otherwise be read and never used.
    pub fn misplaced_keys(&self) -> Vec<(&'static str, &'static [PhaseType])> {
        use PhaseType::{Ensemble, Loop, Map, Parallel, Routed};
        let only: [(&'static str, bool, &'static [PhaseType]); 13] = [
            ("agents", !self.agents.is_empty(), &[Ensemble]),
            // A `distilled` phase of any type may name its distiller `judge`.
            (
                "judge",
                self.judge.is_some() && self.context != Some(ContextStrategy::Distilled),
                &[Ensemble],
            ),
            ("judge_mode", self.judge_mode.is_some(), &[Ensemble]),
            ("mode", self.mode.is_some(), &[Ensemble]),
            ("min_proposals", self.min_proposals.is_some(), &[Ensemble]),
            ("routing", !self.routing.is_empty(), &[Routed]),
            ("tasks_from", self.tasks_from.is_some(), &[Routed]),
            ("tasks", !self.tasks.is_empty(), &[Routed, Parallel]),
            (
                "synthesize",
                self.synthesize.is_some(),
                &[Map, Routed, Parallel],
            ),
            ("generator", self.generator.is_some(), &[Loop]),
            ("evaluator", self.evaluator.is_some(), &[Loop]),
            ("max_rounds", self.max_rounds.is_some(), &[Loop]),
            ("glob", self.glob.is_some(), &[Map]),
        ];
        only.into_iter()
            .filter(|(_, given, types)| *given && !types.contains(&self.kind.value))
            .map(|(key, _, types)| (key, types))
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
