//! The workflow runner: decides what a workflow run needs next. A run is a task with a
//! `workflow` key; its phases become ordinary child tasks (ids `<run>.<phase>` and
//! `<run>.<phase>.<k>`) that go through the inbox like any other task — same spawning, judging,
//! fallback and ledger. [`next`] decides from the run's record, the checked workflow, the task
//! book and the config; it reads the workspace (earlier phases' results, a map phase's files)
//! but writes nothing and starts nothing. The engine carries out what it returns and calls it
//! again whenever the run is received or one of its children settles. One function per phase
//! kind decides (`phases`); `context` says what a phase's tasks see of earlier phases. Phase completion is a ledger event recorded before
//! the next phase starts, and child ids are deterministic, so resuming after a crash never runs
//! a finished phase again and never submits a child twice.
//!
//! Every phase type runs: `single`, `ensemble` (parallel or sequential, pick or synthesize),
//! `routed`, `parallel`, `loop` (a command or an agent as evaluator) and `map`; and every
//! context strategy: `full`, `fresh`, `scoped` and `distilled`.

use std::collections::BTreeMap;

use crate::config::Config;
use crate::state::{LoopRound, Outcome, Phase as TaskPhase, TaskBook, TaskRecord};
use crate::workflow::targets::{self, Accepts, Target};
use crate::workflow::{ContextStrategy, Kind, Phase, Workflow, prompts};
pub use crate::workflow::{render, vars_of};

mod context;
mod phases;

use crate::workspace::Workspace;
pub use context::glob_workspace;

/// A child task to submit.
#[derive(Debug, Clone, PartialEq)]
pub struct Child {
    pub id: String,
    pub title: String,
    pub prompt: String,
    pub agent: Option<String>,
    pub role: Option<String>,
    /// An explicit chain (an ensemble proposer spread to another agent), instead of `agent`/`role`.
    pub chain: Option<Vec<String>>,
    /// Workspace-relative result path; `None` = `.context/outbox/<id>.md`.
    pub output: Option<String>,
    /// Workspace files put into the prompt (map phases, the `scoped` strategy).
    pub files: Vec<String>,
    /// Where it works: its phase's `workdir` (`None`: shared).
    pub workdir: Option<crate::workdir::Workdir>,
    /// Its phase's `verify`.
    pub verify: Option<Vec<Vec<String>>>,
}

/// What the engine should do for a run.
#[derive(Debug, PartialEq)]
pub enum Action {
    Submit(Child),
    /// Record the phase as complete (then ask again: the next phase may start at once).
    PhaseCompleted {
        phase: String,
        output: String,
        /// When not empty, the engine first writes these results, labelled, into `output`.
        parts: Vec<(String, String)>,
    },
    /// Every phase is complete; the run is done with this result.
    Finished {
        output: String,
    },
    /// The run fails with this reason (the phase is named).
    Failed(String),
    /// Run a loop's evaluator command on a round's result, then record the round.
    Evaluate {
        phase: String,
        round: u32,
        command: Vec<String>,
    },
    /// Record a loop round's verdict (then ask again).
    RecordRound(LoopRound),
}

/// The state of one child task.
enum ChildState {
    Missing,
    Waiting,
    Done(String),
    Failed(String),
}

fn child_state(book: &TaskBook, run: &str, id: &str) -> ChildState {
    child_state_by(book, run, id).0
}

/// A child's state, and for a done child the agent that answered. A task under the child's
/// id that `run` did not submit (one submitted first by someone else, to hand the run a
/// result of their choosing) is never taken as the child: the run fails, saying so.
fn child_state_by(book: &TaskBook, run: &str, id: &str) -> (ChildState, Option<String>) {
    // A task recorded by a build before `workflow_run` carries none: it is the run's own when
    // it came after the run (a task someone put in first came before it; since then, a task
    // under a live run's ids without the mark is refused at the door).
    let own = |t: &TaskRecord| match t.more().workflow_run.as_deref() {
        Some(r) => r == run,
        None => book.get(run).is_some_and(|r| t.received_ms > r.received_ms),
    };
    if let Some(t) = book.get(id)
        && !own(t)
    {
        return (
            ChildState::Failed(format!(
                "the id `{id}` its task needs is taken by a task this run did not submit; run the workflow again under another id"
            )),
            None,
        );
    }
    let Some(t) = book.get(id) else {
        let state = match book.outcome(id) {
            // Archived: only the outcome is known; the default output path is deterministic.
            Some(Outcome::Done) => ChildState::Done(crate::result::destination(id, None)),
            Some(Outcome::Failed) => ChildState::Failed("failed".into()),
            None => ChildState::Missing,
        };
        return (state, None);
    };
    match t.phase() {
        TaskPhase::Done { agent, output, .. } => {
            (ChildState::Done(output.clone()), Some(agent.clone()))
        }
        TaskPhase::Failed { reason, .. } => {
            // The run's reason is read where the run is: say how the last attempt ended too,
            // when the task's own reason does not already give a cause.
            let last = t
                .attempts()
                .last()
                .filter(|a| !a.reason.is_empty() && !reason.contains(&a.reason));
            let reason = match last {
                Some(a) if !reason.contains(": ") => {
                    format!("{reason} (last attempt, {}: {})", a.agent, a.reason)
                }
                _ => reason.clone(),
            };
            (ChildState::Failed(reason), None)
        }
        _ => (ChildState::Waiting, None),
    }
}

/// The task fields (`agent`, `role`) that send a step to what `name` resolves to; the error
/// (the config changed since the run was accepted) fails the phase.
fn route(
    name: &str,
    accepts: Accepts,
    config: &Config,
) -> Result<(Option<String>, Option<String>), targets::Unresolved> {
    targets::resolve(name, accepts, config).map(|r| r.target.fields())
}

/// A target's chain as it stands now, for spreading an ensemble's proposers.
fn chain_of(target: &Target, config: &Config, ws: &Workspace) -> Vec<String> {
    match target {
        Target::Agent(a) => vec![a.clone()],
        Target::Role(r) | Target::DefaultChain { role: r } => {
            config.role_chain(r, ws.root()).unwrap_or_default()
        }
    }
}

/// Whether `id` names a task (or task file) a workflow run submitted: `<run>.<…>`.
pub fn is_child_of(id: &str, run: &str) -> bool {
    id.strip_prefix(run)
        .is_some_and(|rest| rest.starts_with('.'))
}

/// What every kind's decision needs: the run, the phase it is at, and what was worked out for
/// that phase (variables, its output path, the context its tasks see).
pub(crate) struct Ctx<'a> {
    run: &'a TaskRecord,
    wf: &'a Workflow,
    phase: &'a Phase,
    book: &'a TaskBook,
    config: &'a Config,
    ws: &'a Workspace,
    vars: BTreeMap<String, String>,
    /// The phase's `output`, rendered.
    output: Option<String>,
    /// What its tasks see of earlier phases.
    context: String,
    /// Its prompt (its own or the default), rendered.
    phase_prompt: String,
    title: String,
}

impl Ctx<'_> {
    fn name(&self) -> &str {
        &self.phase.name.value
    }

    /// The id of one of the phase's tasks: `<run>.<phase>.<suffix>`.
    fn id(&self, suffix: impl std::fmt::Display) -> String {
        format!("{}.{}.{suffix}", self.run.id(), self.name())
    }

    /// The id of a phase's only task: `<run>.<phase>`.
    fn phase_task_id(&self) -> String {
        format!("{}.{}", self.run.id(), self.name())
    }

    /// The phase's prompt, its context, then `extra`, each in its own section.
    fn prompt(&self, extra: &str) -> String {
        let mut p = self.phase_prompt.clone();
        for part in [self.context.as_str(), extra] {
            if !part.is_empty() {
                p.push_str("\n\n---\n");
                p.push_str(part);
            }
        }
        p
    }

    /// Who runs a step, resolved now (the config may have changed since the run was
    /// accepted): the task fields, or the actions that fail the run.
    fn route(
        &self,
        named: Option<(&str, Accepts)>,
    ) -> Result<(Option<String>, Option<String>), Vec<Action>> {
        match named {
            Some((name, accepts)) => {
                route(name, accepts, self.config).map_err(|why| self.failed_to_route(why))
            }
            None => Ok((None, None)),
        }
    }

    /// [`Ctx::route`] of the phase's own runner (`agent`, `role` or `model`).
    fn own_route(&self) -> Result<(Option<String>, Option<String>), Vec<Action>> {
        self.route(
            self.phase
                .runner
                .as_ref()
                .map(|r| (r.name.value.as_str(), r.accepts)),
        )
    }

    /// [`Ctx::route`] of a step's runner (a generator, a synthesize or refine step).
    fn step_route(
        &self,
        step: &crate::workflow::Step,
    ) -> Result<(Option<String>, Option<String>), Vec<Action>> {
        self.route(step.runner().map(|(n, a)| (n.value.as_str(), a)))
    }

    fn completed(&self, output: String) -> Vec<Action> {
        vec![Action::PhaseCompleted {
            phase: self.name().to_string(),
            output,
            parts: vec![],
        }]
    }

    /// The run fails: "phase `NAME` {rest}".
    fn failed(&self, rest: String) -> Vec<Action> {
        vec![Action::Failed(format!("phase `{}` {rest}", self.name()))]
    }

    /// The run fails: "phase `NAME`: {why}".
    fn failed_to_route(&self, why: impl std::fmt::Display) -> Vec<Action> {
        vec![Action::Failed(format!("phase `{}`: {why}", self.name()))]
    }
}

/// Decides the next actions for `run`: the first phase not yet complete, by its kind.
pub fn next(
    run: &TaskRecord,
    wf: &Workflow,
    book: &TaskBook,
    config: &Config,
    ws: &Workspace,
) -> Vec<Action> {
    let given = run
        .spec()
        .map(|s| s.fields.vars.clone())
        .unwrap_or_default();
    let mut vars = vars_of(wf, &given);
    vars.insert("workflow".into(), wf.name.value.clone());
    vars.insert("run".into(), run.id().to_string());
    let Some(phase) = wf.phases.iter().find(|p| {
        !run.more()
            .phases
            .iter()
            .any(|(done, _)| *done == p.name.value)
    }) else {
        let output = run
            .more()
            .phases
            .last()
            .map(|(_, o)| o.clone())
            .unwrap_or_default();
        return vec![Action::Finished { output }];
    };
    vars.insert("phase".into(), phase.name.value.clone());
    let context = if phase.context == Some(ContextStrategy::Distilled) {
        match context::distilled(run, phase, book, config, ws) {
            Ok(summaries) => summaries,
            Err(actions) => return actions,
        }
    } else {
        context::inputs(run, phase, ws)
    };
    let cx = Ctx {
        output: phase.output.as_ref().map(|o| render(&o.value, &vars)),
        phase_prompt: render(&prompts::effective(wf, phase), &vars),
        title: format!("{} / {}", wf.name.value, phase.name.value),
        run,
        wf,
        phase,
        book,
        config,
        ws,
        vars,
        context,
    };
    match &phase.kind {
        Kind::Single => phases::single(&cx),
        Kind::Ensemble(e) => phases::ensemble(&cx, e),
        Kind::Loop(l) => phases::loop_rounds(&cx, l),
        Kind::FanOut(f) => phases::fan_out(&cx, f),
    }
}

/// Whether an evaluator's answer starts with PASS (its first non-empty line, any case).
pub fn says_pass(text: &str) -> bool {
    text.lines()
        .map(|l| l.trim().trim_start_matches(['*', '#', '`', ' ']))
        .find(|l| !l.is_empty())
        .is_some_and(|l| l.to_ascii_uppercase().starts_with("PASS"))
}

/// The most of one earlier result a phase's prompt takes in.
const MAX_INPUT_BYTES: u64 = 16 * 1024 * 1024;

/// Reads a result, confined to the workspace; what cannot be read reads as a note.
fn read_output(ws: &Workspace, rel: &str) -> String {
    crate::fsutil::read_confined(ws.root(), rel, MAX_INPUT_BYTES)
        .unwrap_or_else(|e| format!("(`{rel}` {e})"))
}

/// An evaluator's feedback in one printable line of at most `max` characters, saying why:
/// - an agent's answer opens with its verdict (`FAIL`, `**FAIL**`): the line after it;
/// - a command's opens with what failed (`` `cargo test` failed (…): ``) and then the end of its
///   output, whose first line may be cut: the line that tells (the last one naming a failure or
///   an error, else the last), after that opening — which is shortened first.
pub fn feedback_line(feedback: &str, max: usize) -> String {
    let mut lines = feedback.lines().map(str::trim).filter(|l| !l.is_empty());
    let Some(first) = lines.next() else {
        return String::new();
    };
    let verdict_only = |l: &str| {
        let word = l.trim_matches(['*', '#', '`', ' ', ':', '.']);
        word.eq_ignore_ascii_case("FAIL") || word.eq_ignore_ascii_case("PASS")
    };
    let (head, why) = if verdict_only(first) {
        (String::new(), lines.next().unwrap_or(first).to_string())
    } else if first.ends_with(':') {
        let rest: Vec<&str> = lines.collect();
        let telling = rest
            .iter()
            .rev()
            .find(|l| {
                let l = l.to_ascii_lowercase();
                l.contains("fail") || l.contains("error") || l.contains("panic")
            })
            .or(rest.last())
            .copied()
            .unwrap_or("");
        (first.to_string(), telling.to_string())
    } else {
        (String::new(), first.to_string())
    };
    let cut = |text: &str, n: usize| -> String {
        if text.chars().count() <= n {
            text.to_string()
        } else {
            let mut t: String = text.chars().take(n.saturating_sub(1)).collect();
            t.push('…');
            t
        }
    };
    let why = crate::terminal::printable(&why);
    if head.is_empty() {
        return cut(&why, max);
    }
    let head = crate::terminal::printable(&head);
    if why.is_empty() {
        return cut(&head, max);
    }
    let why = cut(&why, max.saturating_sub(8).max(1));
    let room = max.saturating_sub(why.chars().count() + 1);
    if room < 4 {
        return why;
    }
    format!("{} {why}", cut(&head, room))
}

/// Runs a loop's evaluator command (see [`crate::side_command::run_logged`]). Returns whether it
/// passed (exit 0) and the last lines of its output as feedback; `None` when a stop of the
/// daemon ended it first (no verdict).
pub async fn run_evaluator(
    ws: &Workspace,
    argv: &[String],
    log: &std::path::Path,
    limits: crate::side_command::SideLimits,
) -> Option<(bool, String)> {
    use crate::side_command::CommandEnd;
    let limit = limits.limit;
    let end = crate::side_command::run_logged(ws, argv, log, limits).await;
    let tail = crate::fsutil::read_tail(log, 4096);
    Some(match end {
        CommandEnd::Exited(s) if s.success() => (true, tail),
        CommandEnd::Exited(s) => {
            // Where the whole output is: the feedback keeps only its end.
            let whole = log.strip_prefix(ws.root()).unwrap_or(log).display();
            (
                false,
                format!(
                    "`{}` failed ({s}; all its output: {whole}):\n{tail}",
                    crate::terminal::shown_command(argv)
                ),
            )
        }
        CommandEnd::TimedOut => (
            false,
            format!(
                "`{}` ran longer than {}; killed",
                crate::terminal::shown_command(argv),
                crate::duration::short(limit)
            ),
        ),
        // Not a verdict: the round is evaluated again after the restart.
        CommandEnd::Stopped => return None,
        CommandEnd::CouldNotStart(why) => (false, format!("the evaluator {why}")),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn feedback_in_one_line_says_why() {
        let long_cmd = format!(
            "`{}` failed (exit status: 101; all its output: .context/runs/r/x.log):",
            "sh -c ".repeat(40)
        );
        // (the feedback, the line shown at 100 characters)
        let cases: Vec<(String, &str)> = vec![
            ("FAIL\nThe function parse() still panics on empty input.\n".into(), "The function parse() still panics on empty input."),
            ("**FAIL**\n\nNo tests for the empty case.".into(), "No tests for the empty case."),
            ("PASS".into(), "PASS"),
            ("FAIL: tests are missing".into(), "FAIL: tests are missing"),
            (
                "`cargo test` failed (exit status: 101):\nerror: could not find `Cargo.toml`\n".into(),
                "`cargo test` failed (exit status: 101): error: could not find `Cargo.toml`",
            ),
            (
                // The tail starts mid-line; the failing summary at its end is what tells.
                "`t` failed (exit status: 1):\nber 170 ... ok\nrunning test 171 ... ok\ntest result: FAILED. 1 failed\n".into(),
                "`t` failed (exit status: 1): test result: FAILED. 1 failed",
            ),
            (
                // A long command is shortened, not the reason.
                format!("{long_cmd}\ntest result: FAILED. 1 failed"),
                "test result: FAILED. 1 failed",
            ),
            ("".into(), ""),
        ];
        for (feedback, want) in cases {
            let got = feedback_line(&feedback, 100);
            assert!(got.chars().count() <= 100, "{got:?} is too long");
            assert!(
                got.ends_with(want),
                "{feedback:?}: expected it to end with {want:?}, got {got:?}"
            );
            if want.starts_with('`') || want.is_empty() || !feedback.starts_with('`') {
                assert_eq!(got, want, "{feedback:?}");
            }
        }
    }

    use super::*;

    #[test]
    fn pass_and_fail_verdicts() {
        for (text, want) in [
            ("PASS", true),
            ("pass: all good", true),
            ("\n**PASS**\n", true),
            ("FAIL\nfix x", false),
            ("It passes", false),
            ("", false),
        ] {
            assert_eq!(says_pass(text), want, "{text:?}");
        }
    }

    #[test]
    fn render_substitutes_known_placeholders_only() {
        let vars: BTreeMap<String, String> = [("feature".to_string(), "auth".to_string())].into();
        assert_eq!(
            render("docs/{feature}/{other}/x {", &vars),
            "docs/auth/{other}/x {"
        );
        assert_eq!(render("{feature}{feature}", &vars), "authauth");
    }
}
