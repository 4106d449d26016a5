//! Checking a workflow: [`validate`] reads a definition, reports *every* problem with its
//! file, line and column, and — when there are none — builds the typed [`Workflow`] whose
//! phases carry exactly what their kind needs.

use std::collections::BTreeSet;

use super::written::{Written, WrittenPhase};
use super::*;

/// Parses and checks a definition against the config. Returns the workflow, or every problem.
pub fn validate(def: &Definition, config: &Config) -> Result<Workflow, Vec<Problem>> {
    let file = def.label();
    // Every problem reading finds is reported, not only the first (see
    // `config::from_yaml_collecting`): one misspelt key must not hide the others.
    let collected = crate::config::from_yaml_collecting::<Written>(&def.text);
    let mut problems: Vec<Problem> = collected
        .problems
        .iter()
        .map(|e| read_problem(&file, &def.text, e))
        .collect();
    // Read with only unknown keys stepped over, the rest is checked too; a value that was
    // wrong would only be reported again as missing.
    let wf: Written = match collected.value {
        Some(wf) if !collected.values_stepped_over => wf,
        _ => return Err(problems),
    };
    let mut at = |s: &dyn Pos, message: String| {
        let (line, column) = s.pos();
        problems.push(Problem {
            file: file.clone(),
            line,
            column,
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
    let mut phases = Vec::new();
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
        let misplaced = phase.misplaced_keys();
        for (key, name, accepts) in phase.named_runners() {
            // A key the phase never reads is reported as such (below); the names in it are
            // not a second problem.
            if misplaced.iter().any(|m| m.key == key) {
                continue;
            }
            if let Err(why) = targets::resolve(&name.value, accepts, config) {
                at(&name.referenced, why.to_string());
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
        for m in misplaced {
            let key = m.key;
            let second = super::written::SECOND_NAMES
                .iter()
                .find(|(k, _)| *k == key)
                .map_or(String::new(), |(_, other)| format!(" (or `{other}`)"));
            let message = match m.belongs {
                super::written::Belongs::Types(types, note) => {
                    let names: Vec<&str> = types.iter().map(|t| t.name()).collect();
                    format!(
                        "phase `{pname}`: `{key}`{second} belongs to {} phases, and `{pname}` is {} phase; remove it or change its `type`{note}",
                        crate::advice::and_list(&names),
                        with_article(kind.name())
                    )
                }
                super::written::Belongs::Context(context) => format!(
                    "phase `{pname}`: `{key}` is read only with `context: {context}`; remove it or set `context: {context}`"
                ),
            };
            // Where the key is written: its value's position, else found in the phase's lines
            // (a number or a word keeps none), else the phase.
            let written = key_in_phase(&def.text, here.line(), key).or_else(|| {
                super::written::SECOND_NAMES
                    .iter()
                    .find(|(k, _)| *k == key)
                    .and_then(|(_, other)| key_in_phase(&def.text, here.line(), other))
            });
            match (m.at, written) {
                (Some(l), _) => at(l, message),
                (None, Some(found)) => at(&found, message),
                (None, None) => at(here, message),
            }
        }
        let typed = match kind {
            PhaseType::Single => {
                if phase.runner().is_none() {
                    at(
                        here,
                        format!("phase `{pname}` needs a `model`, an `agent` or a `role`"),
                    );
                }
                Some(Kind::Single)
            }
            PhaseType::Map => {
                if phase.runner().is_none() {
                    at(
                        here,
                        format!("phase `{pname}` needs a `model`, an `agent` or a `role`"),
                    );
                }
                if phase.glob.is_none() {
                    at(here, format!("map phase `{pname}` needs a `glob`"));
                }
                phase.glob.clone().map(|glob| {
                    Kind::FanOut(FanOut {
                        tasks: FanOutTasks::Files { glob },
                        combine: phase.synthesize.clone(),
                    })
                })
            }
            PhaseType::Ensemble => {
                if phase.agents.len() < 2 {
                    at(
                        here,
                        format!(
                            "ensemble phase `{pname}` needs at least two `agents` (or `models`) to propose, has {}",
                            phase.agents.len()
                        ),
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
                phase.judge.clone().map(|judge| {
                    Kind::Ensemble(Ensemble {
                        proposers: phase.agents.clone(),
                        judge,
                        judge_mode: phase.judge_mode,
                        sequential: phase.mode == Some(EnsembleMode::Sequential),
                        min_proposals: phase.min_proposals.unwrap_or(1),
                    })
                })
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
                // The list: `tasks_from`, else (no inline `tasks`) the first `input`.
                let from = match &phase.tasks_from {
                    Some(from) => Some(from.value.clone()),
                    None if phase.tasks.is_empty() => phase.inputs().first().map(|s| s.to_string()),
                    None => None,
                };
                Some(Kind::FanOut(FanOut {
                    tasks: FanOutTasks::Routed {
                        routing: phase.routing.clone(),
                        list: match from {
                            Some(from) => TaskList::FromPhase(from),
                            None => TaskList::Inline(phase.tasks.clone()),
                        },
                    },
                    combine: phase.synthesize.clone(),
                }))
            }
            PhaseType::Parallel => {
                if phase.tasks.is_empty() {
                    at(here, format!("parallel phase `{pname}` needs `tasks`"));
                }
                Some(Kind::FanOut(FanOut {
                    tasks: FanOutTasks::Inline(phase.tasks.clone()),
                    combine: phase.synthesize.clone(),
                }))
            }
            PhaseType::Loop => {
                if phase.generator.is_none() {
                    at(here, format!("loop phase `{pname}` needs a `generator`"));
                }
                let evaluation = match &phase.evaluator {
                    None => {
                        at(
                            here,
                            format!(
                                "loop phase `{pname}` needs an `evaluator` (a `command` or an `agent`)"
                            ),
                        );
                        None
                    }
                    Some(ev) => match (&ev.command, &ev.agent) {
                        (Some(command), None) if !command.is_empty() => {
                            Some(Evaluation::Command(command.clone()))
                        }
                        (Some(_), None) => {
                            at(
                                here,
                                format!("the evaluator command of phase `{pname}` is empty"),
                            );
                            None
                        }
                        (None, Some(agent)) => Some(Evaluation::Agent {
                            agent: agent.clone(),
                            prompt: ev.prompt.clone(),
                        }),
                        _ => {
                            at(
                                here,
                                format!(
                                    "the evaluator of phase `{pname}` needs exactly one of `command` and `agent`"
                                ),
                            );
                            None
                        }
                    },
                };
                let max_rounds = phase.max_rounds.filter(|r| *r > 0);
                if max_rounds.is_none() {
                    at(
                        here,
                        format!("loop phase `{pname}` needs `max_rounds` of at least 1"),
                    );
                }
                match (phase.generator.clone(), evaluation, max_rounds) {
                    (Some(generator), Some(evaluator), Some(max_rounds)) => {
                        Some(Kind::Loop(Loop {
                            generator,
                            evaluator,
                            max_rounds,
                        }))
                    }
                    _ => None,
                }
            }
        };
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
        if let Some(out) = &phase.output
            && let Err(e) = crate::confined::workspace_path("output", &out.value)
        {
            at(&out.referenced, e.to_string());
        }
        if phase.workdir == Some(crate::workdir::Workdir::Worktree)
            && matches!(phase.kind.value, PhaseType::Ensemble | PhaseType::Loop)
        {
            at(
                &phase.name.referenced,
                format!(
                    "phase `{pname}`: `workdir: worktree` applies to single, parallel, routed and map phases ({} phase's steps produce text)",
                    with_article(phase.kind.value.name())
                ),
            );
        }
        let verify = match &phase.verify {
            Some(v) => match v.commands() {
                Ok(c) => Some(c),
                Err(e) => {
                    at(&phase.name.referenced, format!("phase `{pname}`: {e}"));
                    None
                }
            },
            None => None,
        };
        if verify.is_some() && phase.workdir != Some(crate::workdir::Workdir::Worktree) {
            at(
                &phase.name.referenced,
                format!(
                    "phase `{pname}`: `verify` needs `workdir: worktree` (it checks the work in each task's tree)"
                ),
            );
        }
        if let Some(kind) = typed {
            phases.push(Phase {
                name: phase.name.clone(),
                prompt: phase.prompt.clone(),
                runner: phase.runner().map(|(name, accepts)| Runner {
                    name: name.clone(),
                    accepts,
                }),
                inputs: phase.inputs().into_iter().map(str::to_string).collect(),
                input_given: phase.input.is_some(),
                distill_by: distill_runner(phase),
                output: phase.output.clone(),
                context: phase.context,
                distill: phase.distill.clone(),
                files: phase.files.clone(),
                workdir: phase.workdir,
                verify,
                kind,
            });
        }
    }
    if problems.is_empty() {
        Ok(Workflow {
            variables: wf.variables(),
            name: wf.name,
            description: wf.description,
            vars: wf.vars,
            phases,
        })
    } else {
        problems.sort_by_key(|p| (p.line, p.column));
        Err(problems)
    }
}

/// A position a problem is reported at (1-based line and column).
trait Pos {
    fn pos(&self) -> (u64, u64);
}

impl Pos for serde_saphyr::Location {
    fn pos(&self) -> (u64, u64) {
        (self.line().max(1), self.column().max(1))
    }
}

impl Pos for (u64, u64) {
    fn pos(&self) -> (u64, u64) {
        *self
    }
}

/// Where `key:` is written among the lines of the phase whose `name` is on line `name_line`
/// (1-based): from the phase's `- ` to the next line as little indented. `None` for a phase
/// written as a flow map, or a key not found.
fn key_in_phase(text: &str, name_line: u64, key: &str) -> Option<(u64, u64)> {
    let lines: Vec<&str> = text.split('\n').collect();
    let indent = |l: &str| l.len() - l.trim_start_matches(' ').len();
    let name_at = usize::try_from(name_line).ok()?.checked_sub(1)?;
    let dash = (0..=name_at).rev().find(|j| {
        lines
            .get(*j)
            .is_some_and(|l| l.trim_start().starts_with("- "))
    })?;
    let dash_indent = indent(lines[dash]);
    let wanted = format!("{key}:");
    for (j, l) in lines.iter().enumerate().skip(dash) {
        if j > dash && !l.trim().is_empty() && indent(l) <= dash_indent {
            break;
        }
        let rest = l.trim_start();
        let rest = if j == dash {
            rest.strip_prefix("- ")?.trim_start()
        } else {
            rest
        };
        if rest.starts_with(&wanted) {
            return Some(((j + 1) as u64, (l.len() - rest.len() + 1) as u64));
        }
    }
    None
}

/// A problem reading found, at its position, in the reader's words.
fn read_problem(file: &str, text: &str, e: &crate::config::YamlError) -> Problem {
    let (line, column) = e
        .error
        .location()
        .map_or((1, 1), |l| (l.line().max(1), l.column().max(1)));
    // The position is in the Problem already; the message names the key it was at.
    let mut message = crate::config::yaml_message(e);
    // serde names only the key, also when the other was written under its second name.
    for (key, other) in super::written::SECOND_NAMES {
        if let Some(path) = message.strip_suffix(&format!("duplicate field `{key}`")) {
            message = format!(
                "{path}`{key}` is given twice (`{other}` is another name for it): write it once"
            );
            break;
        }
    }
    let source_line = text
        .lines()
        .nth(line.saturating_sub(1) as usize)
        .unwrap_or("");
    if flow_map_with_placeholder(source_line) {
        message.push_str(
            "; a `{placeholder}` inside a flow-style map `{ … }` must be quoted (`prompt: \"Plan {feature}\"`), or write the map in block style, one key per line",
        );
    }
    Problem {
        file: file.to_string(),
        line,
        column,
        message,
    }
}

/// `an ensemble`, `a loop`.
fn with_article(name: &str) -> String {
    let an = name.starts_with(['a', 'e', 'i', 'o', 'u']);
    format!("{} {name}", if an { "an" } else { "a" })
}

/// Who runs a phase's distill tasks (see [`Phase::distill_by`]).
fn distill_runner(phase: &WrittenPhase) -> Option<Runner> {
    use targets::Accepts;
    let step = phase.distill.as_ref();
    step.and_then(|d| d.agent.as_ref().map(|a| (a, Accepts::Agent)))
        .or_else(|| step.and_then(|d| d.role.as_ref().map(|r| (r, Accepts::Role))))
        .or_else(|| phase.runner())
        .or(phase.judge.as_ref().map(|j| (j, Accepts::Any)))
        .map(|(name, accepts)| Runner {
            name: name.clone(),
            accepts,
        })
}

/// Whether a YAML line opens a flow-style map (`{ key: … }`) that holds an unquoted
/// `{placeholder}`: YAML reads the placeholder's braces as a nested map.
fn flow_map_with_placeholder(line: &str) -> bool {
    let code = line.split(" #").next().unwrap_or(line);
    let opens_map = code.trim_start().starts_with("- {") || code.contains(": {");
    opens_map && code.matches('{').count() >= 2
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
        // What the phase lacks, and the unknown key: one does not hide the other.
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0]
                .message
                .contains("needs a `model`, an `agent` or a `role`"),
            "{}",
            problems[0]
        );
        assert!(
            problems[1].message.contains("unknown field `colour`"),
            "{}",
            problems[1]
        );
        assert_eq!(
            (problems[1].line, problems[1].column),
            (5, 5),
            "{}",
            problems[1]
        );
        // A value of the wrong shape says what shape it should have.
        let problems = validate(
            &def(
                "x",
                "name: x\nphases:\n  - name: a\n    type: single\n    input: {a: 1}\n",
            ),
            &config(),
        )
        .unwrap_err();
        assert!(
            problems[0]
                .message
                .contains("expected an earlier phase's output (`plan` or `plan.output`) or a list"),
            "expected the shape `input` takes, got {}",
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
    fn an_unknown_key_does_not_hide_the_other_problems() {
        let text = "name: x\nphases:\n  - name: a\n    type: single\n    agent: claude\n    bogus: 1\n    input: c.output\n  - name: b\n    type: single\n    agent: claude\n    colour:\n      deep: [1, 2]\n      deeper: 3\n    judge: gemini\n";
        let problems: Vec<(u64, u64, String)> = validate(&def("x", text), &config())
            .unwrap_err()
            .into_iter()
            .map(|p| (p.line, p.column, p.message))
            .collect();
        let at: Vec<(u64, u64)> = problems.iter().map(|(l, c, _)| (*l, *c)).collect();
        assert_eq!(
            at,
            [(6, 5), (7, 12), (11, 5), (14, 12)],
            "expected both unknown keys, the unknown input and the misplaced judge: {problems:#?}"
        );
        assert!(
            problems[0].2.contains("unknown field `bogus`"),
            "{problems:#?}"
        );
        assert!(
            problems[2].2.contains("unknown field `colour`"),
            "{problems:#?}"
        );
        // In a flow-style map the key cannot be taken out safely: that one problem is all.
        let flow = "name: x\nphases:\n  - { name: a, type: single, agent: claude, bogus: 1 }\n";
        let problems = validate(&def("x", flow), &config()).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].message.contains("unknown field `bogus`"));
    }

    #[test]
    fn wrong_values_and_unknown_variants_do_not_hide_the_other_problems() {
        let text = "name: x\nphases:\n  - name: a\n    type: loop\n    generator: { agent: claude, prompt: Fix it }\n    evaluator: { command: [\"true\"] }\n    max_rounds: many\n  - colour: red\n    name: b\n    type: sigle\n    agent: claude\n  - name: c\n    type: ensemble\n    agents:\n      nested: 1\n    judge: claude\n    judge_mode: loud\n";
        let problems: Vec<(u64, u64, String)> = validate(&def("x", text), &config())
            .unwrap_err()
            .into_iter()
            .map(|p| (p.line, p.column, p.message))
            .collect();
        let at: Vec<(u64, u64)> = problems.iter().map(|(l, c, _)| (*l, *c)).collect();
        assert_eq!(
            at,
            [(7, 17), (8, 5), (10, 11), (15, 7), (17, 17)],
            "expected every wrong value, the unknown type and the unknown key: {problems:#?}"
        );
        let messages: Vec<&str> = problems.iter().map(|(_, _, m)| m.as_str()).collect();
        for (i, expected) in [
            "`phases[0].max_rounds`: expected a whole number",
            "unknown field `colour`",
            "`phases[1].type`: unknown variant `sigle`, expected one of single, ensemble, routed, parallel, loop, map; did you mean `single`?",
            "`phases[2].agents`: expected a list",
            "`phases[2].judge_mode`: unknown variant `loud`",
        ]
        .iter()
        .enumerate()
        {
            assert!(
                messages[i].contains(expected),
                "expected problem {i} to say {expected:?}, got {messages:#?}"
            );
        }
        // A required key whose value was wrong is not reported missing as well.
        let text = "name: x\nphases:\n  - name: [a]\n    type: single\n    agent: claude\n";
        let problems = validate(&def("x", text), &config()).unwrap_err();
        assert_eq!(
            problems.len(),
            1,
            "expected only the wrong name: {problems:?}"
        );
        assert!(
            problems[0]
                .message
                .contains("`phases[0].name`: expected one value"),
            "{}",
            problems[0]
        );
    }

    /// A misplaced key whose value keeps no position (a number, a word) is still reported at
    /// the key, not at its phase.
    #[test]
    fn a_misplaced_key_is_reported_where_it_is_written() {
        let text = "name: x\nphases:\n  - name: review\n    type: single\n    agent: claude\n    prompt: Look\n    max_rounds: 3\n  - max_rounds: 2\n    name: two\n    type: single\n    agent: claude\n";
        let problems = validate(&def("x", text), &config()).unwrap_err();
        let at: Vec<(u64, u64)> = problems.iter().map(|p| (p.line, p.column)).collect();
        assert_eq!(
            at,
            [(7, 5), (8, 5)],
            "expected each misplaced `max_rounds` at its own line: {problems:#?}"
        );
        assert!(
            problems[0]
                .message
                .contains("`max_rounds` belongs to loop phases"),
            "{}",
            problems[0]
        );
    }

    #[test]
    fn keys_of_other_phase_types_are_problems_not_ignored() {
        // (the phase's keys after `name: p`, the one problem expected; "" = none)
        let note = "; a `distilled` phase of any type may also name its distiller with it";
        let judge_on_single = format!(
            "x.yaml:6:12: phase `p`: `judge` belongs to ensemble phases, and `p` is a single phase; remove it or change its `type`{note}"
        );
        let agent_on_ensemble = format!(
            "x.yaml:7:12: phase `p`: `agent` belongs to single, map and parallel phases, and `p` is an ensemble phase; remove it or change its `type`{note}"
        );
        let cases: Vec<(&str, &str)> = vec![
            (
                "type: single\n    agent: claude\n    judge: gemini",
                &judge_on_single,
            ),
            (
                "type: single\n    agent: claude\n    models: [claude, gemini]",
                "x.yaml:6:14: phase `p`: `agents` (or `models`) belongs to ensemble phases, and `p` is a single phase; remove it or change its `type`",
            ),
            (
                "type: ensemble\n    agents: [claude, gemini]\n    judge: claude\n    refine: {agent: claude, prompt: x}",
                "x.yaml:7:5: phase `p`: `synthesize` (or `refine`) belongs to map, routed and parallel phases, and `p` is an ensemble phase; remove it or change its `type`",
            ),
            (
                "type: ensemble\n    agents: [claude, gemini]\n    judge: claude\n    agent: local",
                &agent_on_ensemble,
            ),
            (
                "type: map\n    agent: claude\n    glob: '*.rs'\n    max_rounds: 3",
                "x.yaml:7:5: phase `p`: `max_rounds` belongs to loop phases, and `p` is a map phase; remove it or change its `type`",
            ),
            (
                "type: parallel\n    tasks: [{prompt: a, agent: claude}]\n    glob: '*.rs'",
                "x.yaml:6:5: phase `p`: `glob` belongs to map phases, and `p` is a parallel phase; remove it or change its `type`",
            ),
            (
                "type: parallel\n    prompt: ignored\n    tasks: [{prompt: a, agent: claude}]",
                "x.yaml:5:13: phase `p`: `prompt` belongs to single, ensemble, routed and map phases, and `p` is a parallel phase; remove it or change its `type`",
            ),
            (
                "type: parallel\n    tasks: [{prompt: a, agent: claude, category: backend}]",
                "x.yaml:5:50: phase `p`: `category` belongs to routed phases, and `p` is a parallel phase; remove it or change its `type`",
            ),
            (
                "type: single\n    agent: claude\n    files: [src/a.rs]",
                "x.yaml:6:5: phase `p`: `files` is read only with `context: scoped`; remove it or set `context: scoped`",
            ),
            (
                "type: single\n    agent: claude\n    distill: {agent: gemini}",
                "x.yaml:6:5: phase `p`: `distill` is read only with `context: distilled`; remove it or set `context: distilled`",
            ),
            // The names in a key the phase never reads are not looked up: one problem, not two.
            (
                "type: single\n    agent: claude\n    judge: nobody",
                &judge_on_single,
            ),
            (
                "type: single\n    agent: claude\n    distill: {agent: ghost}",
                "x.yaml:6:5: phase `p`: `distill` is read only with `context: distilled`; remove it or set `context: distilled`",
            ),
            // Where they are read: none of these is a problem.
            (
                "type: parallel\n    agent: claude\n    tasks: [{prompt: a}]\n    synthesize: {agent: claude, prompt: x}",
                "",
            ),
            (
                "type: map\n    agent: claude\n    glob: '*.rs'\n    refine: {agent: claude, prompt: x}",
                "",
            ),
            (
                "type: ensemble\n    agents: [claude, gemini]\n    judge: claude\n    context: distilled\n    agent: local",
                "",
            ),
            (
                "type: parallel\n    tasks: [{prompt: a, agent: claude}]\n    context: distilled\n    judge: gemini",
                "",
            ),
            (
                "type: single\n    agent: claude\n    context: scoped\n    files: [src/a.rs]",
                "",
            ),
            // Both names of one key: one key written twice.
            (
                "type: map\n    agent: claude\n    glob: '*.rs'\n    refine: {agent: claude, prompt: x}\n    synthesize: {agent: claude, prompt: y}",
                "`phases[0]`: `synthesize` is given twice (`refine` is another name for it): write it once",
            ),
            (
                "type: single\n    agent: claude\n    context: fresh\n    context_strategy: full",
                "`phases[0]`: `context` is given twice (`context_strategy` is another name for it): write it once",
            ),
        ];
        for (keys, want) in cases {
            let text = format!("name: x\nphases:\n  - name: p\n    {keys}\n");
            let got = match validate(&def("x", &text), &config()) {
                Ok(_) => vec![],
                Err(problems) => problems.iter().map(|p| p.to_string()).collect(),
            };
            if want.is_empty() {
                assert!(got.is_empty(), "{keys:?}: expected no problem, got {got:?}");
            } else {
                assert!(
                    got.len() == 1 && got[0].ends_with(want),
                    "{keys:?}: expected one problem ending {want:?}, got {got:?}"
                );
            }
        }
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
        assert_eq!(wf.phases[2].inputs, ["plan", "build"]);
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

#[cfg(test)]
mod typed_tests {
    use super::*;

    /// What each phase type becomes once checked: the kind and the data it carries.
    #[test]
    fn each_phase_type_becomes_its_kind_with_its_data() {
        let config = Config::parse(
            "agents:\n  claude: {command: [c]}\n  gemini: {command: [g]}\n",
            "t",
        )
        .unwrap();
        let text = "\
name: all
phases:
  - {name: plan, type: ensemble, agents: [claude, gemini], judge: claude, mode: sequential}
  - {name: split, type: single, agent: claude, input: plan}
  - name: work
    type: routed
    input: [split, plan]
    routing: {ui: claude, default: gemini}
  - name: inline
    type: routed
    tasks: [{category: ui, prompt: Do it}]
    routing: {ui: claude}
  - {name: each, type: map, agent: gemini, glob: \"src/*.rs\"}
  - name: fix
    type: loop
    generator: {agent: claude, prompt: Fix}
    evaluator: {command: [\"true\"]}
    max_rounds: 3
";
        let def = Definition {
            name: "all".into(),
            source: Source::Builtin,
            text: text.into(),
        };
        let wf = validate(&def, &config).unwrap();
        let kinds: Vec<String> = wf
            .phases
            .iter()
            .map(|p| match &p.kind {
                Kind::Single => "single".to_string(),
                Kind::Ensemble(e) => format!(
                    "ensemble of {} judged by {}, sequential {}, min {}",
                    e.proposers.len(),
                    e.judge.value,
                    e.sequential,
                    e.min_proposals
                ),
                Kind::FanOut(f) => match &f.tasks {
                    FanOutTasks::Inline(t) => format!("parallel of {}", t.len()),
                    FanOutTasks::Routed {
                        list: TaskList::FromPhase(from),
                        ..
                    } => format!("routed from {from}"),
                    FanOutTasks::Routed {
                        list: TaskList::Inline(t),
                        ..
                    } => format!("routed inline {}", t.len()),
                    FanOutTasks::Files { glob } => format!("map over {glob}"),
                },
                Kind::Loop(l) => format!(
                    "loop of {} by {}",
                    l.max_rounds,
                    match &l.evaluator {
                        Evaluation::Command(c) => c.join(" "),
                        Evaluation::Agent { agent, .. } => agent.value.clone(),
                    }
                ),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "ensemble of 2 judged by claude, sequential true, min 1",
                "single",
                "routed from split",
                "routed inline 1",
                "map over src/*.rs",
                "loop of 3 by true",
            ],
            "expected each phase checked into its kind"
        );
        assert_eq!(
            wf.phases.iter().map(|p| p.phase_type()).collect::<Vec<_>>(),
            [
                PhaseType::Ensemble,
                PhaseType::Single,
                PhaseType::Routed,
                PhaseType::Routed,
                PhaseType::Map,
                PhaseType::Loop
            ],
            "expected the written type back"
        );
    }

    /// Who distils for a `distilled` phase, and whether `input:` was written (an empty list
    /// too: then no earlier phase is summarised, instead of all of them).
    #[test]
    fn distilled_phases_keep_their_inputs_and_their_distiller() {
        let config = Config::parse(
            "agents:\n  claude: {command: [c]}\n  gemini: {command: [g]}\n",
            "t",
        )
        .unwrap();
        let text = "\
name: d
phases:
  - {name: a, type: single, agent: claude}
  - name: b
    type: parallel
    context: distilled
    judge: gemini
    input: []
    tasks: [{prompt: one}]
  - {name: c, type: single, agent: claude, context: distilled, distill: {role: planner}}
";
        let def = Definition {
            name: "d".into(),
            source: Source::Builtin,
            text: text.into(),
        };
        let wf = validate(&def, &config).unwrap();
        let b = &wf.phases[1];
        assert!(
            b.input_given && b.inputs.is_empty(),
            "expected `input: []` to be kept as given and empty"
        );
        assert_eq!(
            b.distill_by.as_ref().map(|r| r.name.value.as_str()),
            Some("gemini"),
            "expected a parallel phase's judge to distil when it names nothing else"
        );
        let c = &wf.phases[2];
        assert!(!c.input_given, "expected no `input:` to read as not given");
        assert_eq!(
            c.distill_by
                .as_ref()
                .map(|r| (r.name.value.as_str(), r.accepts)),
            Some(("planner", targets::Accepts::Role)),
            "expected the distill step's own role first"
        );
    }
}
