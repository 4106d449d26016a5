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

/// A key a phase has but never reads (see [`WrittenPhase::misplaced_keys`]).
pub struct Misplaced<'a> {
    pub key: &'static str,
    /// Where it is written, when its value keeps a position (else the phase's name is used).
    pub at: Option<&'a serde_saphyr::Location>,
    pub belongs: Belongs,
}

/// Where a misplaced key belongs.
pub enum Belongs {
    /// To phases of these types (and a note on where else it is read).
    Types(&'static [PhaseType], &'static str),
    /// To phases with this `context:`.
    Context(&'static str),
}

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

    /// Every name in the phase that must resolve to something that runs, with the phase's key
    /// it is written under (`tasks` for a task's `agent`) and what it accepts.
    pub fn named_runners(&self) -> Vec<(&'static str, &Spanned<String>, targets::Accepts)> {
        use targets::Accepts;
        let mut out = Vec::new();
        out.extend(self.agent.iter().map(|a| ("agent", a, Accepts::Agent)));
        out.extend(self.role.iter().map(|r| ("role", r, Accepts::Role)));
        out.extend(self.model.iter().map(|m| ("model", m, Accepts::Any)));
        out.extend(self.agents.iter().map(|a| ("agents", a, Accepts::Any)));
        out.extend(self.judge.iter().map(|j| ("judge", j, Accepts::Any)));
        out.extend(self.routing.values().map(|v| ("routing", v, Accepts::Any)));
        out.extend(
            self.tasks
                .iter()
                .filter_map(|t| t.agent.as_ref())
                .map(|a| ("tasks", a, Accepts::Any)),
        );
        for (key, step) in [
            ("synthesize", &self.synthesize),
            ("generator", &self.generator),
        ] {
            let Some(step) = step else { continue };
            out.extend(step.agent.iter().map(|a| (key, a, Accepts::Agent)));
            out.extend(step.role.iter().map(|r| (key, r, Accepts::Role)));
            out.extend(step.model.iter().map(|m| (key, m, Accepts::Any)));
        }
        if let Some(ev) = &self.evaluator {
            out.extend(ev.agent.iter().map(|a| ("evaluator", a, Accepts::Any)));
        }
        if let Some(d) = &self.distill {
            out.extend(d.agent.iter().map(|a| ("distill", a, Accepts::Agent)));
            out.extend(d.role.iter().map(|r| ("distill", r, Accepts::Role)));
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

    /// The keys this phase has that it never reads — a `judge` on a `single` phase, `files`
    /// without `context: scoped` — each with where it belongs and, when known, its position.
    pub fn misplaced_keys(&self) -> Vec<Misplaced<'_>> {
        fn at(s: Option<&Spanned<String>>) -> Option<&serde_saphyr::Location> {
            s.map(|s| &s.referenced)
        }
        use PhaseType::{Ensemble, Loop, Map, Parallel, Routed, Single};
        let distilled = self.context == Some(ContextStrategy::Distilled);
        // A `distilled` phase of any type names its distiller with these.
        let runner_note = "; a `distilled` phase of any type may also name its distiller with it";
        let types = |key, given: bool, pos, belongs: &'static [PhaseType], note| {
            (given && !belongs.contains(&self.kind.value)).then_some(Misplaced {
                key,
                at: pos,
                belongs: Belongs::Types(belongs, note),
            })
        };
        let first_route = self.routing.values().next();
        let first_task = self.tasks.first().map(|t| &t.prompt);
        let mut out: Vec<Misplaced<'_>> = [
            types(
                "agents",
                !self.agents.is_empty(),
                at(self.agents.first()),
                &[Ensemble],
                "",
            ),
            types(
                "judge",
                self.judge.is_some() && !distilled,
                at(self.judge.as_ref()),
                &[Ensemble],
                runner_note,
            ),
            types(
                "judge_mode",
                self.judge_mode.is_some(),
                None,
                &[Ensemble],
                "",
            ),
            types("mode", self.mode.is_some(), None, &[Ensemble], ""),
            types(
                "min_proposals",
                self.min_proposals.is_some(),
                None,
                &[Ensemble],
                "",
            ),
            types(
                "routing",
                first_route.is_some(),
                at(first_route),
                &[Routed],
                "",
            ),
            types(
                "tasks_from",
                self.tasks_from.is_some(),
                at(self.tasks_from.as_ref()),
                &[Routed],
                "",
            ),
            types(
                "tasks",
                first_task.is_some(),
                at(first_task),
                &[Routed, Parallel],
                "",
            ),
            types(
                "synthesize",
                self.synthesize.is_some(),
                None,
                &[Map, Routed, Parallel],
                "",
            ),
            types("generator", self.generator.is_some(), None, &[Loop], ""),
            types("evaluator", self.evaluator.is_some(), None, &[Loop], ""),
            types("max_rounds", self.max_rounds.is_some(), None, &[Loop], ""),
            types("glob", self.glob.is_some(), None, &[Map], ""),
            // A loop's generator and a parallel phase's tasks have their own prompts.
            types(
                "prompt",
                self.prompt.is_some(),
                at(self.prompt.as_ref()),
                &[Single, Ensemble, Routed, Map],
                "",
            ),
        ]
        .into_iter()
        .chain(
            [
                ("agent", &self.agent),
                ("role", &self.role),
                ("model", &self.model),
            ]
            .map(|(key, runner)| {
                let given = runner.is_some() && !distilled;
                let belongs: &[PhaseType] = &[Single, Map, Parallel];
                types(key, given, at(runner.as_ref()), belongs, runner_note)
            }),
        )
        .flatten()
        .collect();
        if !self.files.is_empty() && self.context != Some(ContextStrategy::Scoped) {
            out.push(Misplaced {
                key: "files",
                at: None,
                belongs: Belongs::Context("scoped"),
            });
        }
        if self.distill.is_some() && !distilled {
            out.push(Misplaced {
                key: "distill",
                at: None,
                belongs: Belongs::Context("distilled"),
            });
        }
        if self.kind.value != Routed
            && let Some(c) = self.tasks.iter().find_map(|t| t.category.as_ref())
        {
            out.push(Misplaced {
                key: "category",
                at: Some(&c.referenced),
                belongs: Belongs::Types(&[Routed], ""),
            });
        }
        out
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
