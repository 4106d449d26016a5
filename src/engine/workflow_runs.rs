//! Workflow runs: the runner's decisions carried out — child tasks submitted through the inbox,
//! phases recorded complete, loop evaluators run, the run finished or failed.

use super::*;
use crate::state::LoopRound;

/// Why a workflow run's task cannot be submitted at all: the run fails with it.
#[derive(Debug, thiserror::Error)]
enum ChildRefused {
    #[error("its task id `{id}` is not usable: {cause}")]
    BadId {
        id: String,
        cause: crate::config::BadName,
    },
    #[error("its task `{id}` cannot be submitted: {cause}")]
    Submit {
        id: String,
        cause: crate::submit::SubmitError,
    },
}

/// The `loop_round` event of a judged round (by an evaluator command or an agent).
fn round_judged(run: &str, r: crate::state::LoopRound) -> Event {
    Event::LoopRound {
        task: run.to_string(),
        phase: r.phase,
        round: r.round,
        passed: r.passed,
        feedback: r.feedback,
    }
}

/// How long a loop's evaluator command may run.
/// Most bytes of a phase's output made of its tasks' results (`parallel`, `map`…): later
/// results are named, not copied in.
const MAX_PHASE_OUTPUT: usize = 64 * 1024 * 1024;

const EVALUATOR_LIMIT: Duration = Duration::from_secs(30 * 60);

impl Engine {
    /// Carries out what the workflow runner decides for each run that is due.
    pub(super) async fn advance_runs(&mut self) {
        if !self.accepting || self.not_claiming().is_some() {
            return;
        }
        let due = self.live.take_due_runs();
        for run in due {
            // A completed phase may let the next one start at once: ask again until nothing moves.
            for _ in 0..64 {
                let live = self
                    .book
                    .get(&run)
                    .is_some_and(|t| !t.phase().is_terminal());
                if !live || self.live.is_finishing(&run) {
                    break;
                }
                let Some(wf) = self.workflow_of(&run) else {
                    break;
                };
                let Some(t) = self.book.get(&run) else { break };
                let actions = crate::runner::next(t, &wf, &self.book, &self.config, &self.ws);
                let mut moved = false;
                for action in actions {
                    match action {
                        crate::runner::Action::Submit(child) => {
                            if let Err(refused) = self.submit_child(&run, &child) {
                                self.escalate(&run, refused.to_string());
                                break;
                            }
                        }
                        crate::runner::Action::PhaseCompleted {
                            phase,
                            output,
                            parts,
                        } => {
                            tracing::info!(task = %run, phase = %phase, "workflow phase completed");
                            if !parts.is_empty() {
                                // A phase of many tasks: its output is all of their results.
                                let mut text = String::new();
                                for (i, (label, path)) in parts.iter().enumerate() {
                                    // Bounded: a map over thousands of files must not make one
                                    // output of gigabytes; each result stays in its own file.
                                    if text.len() > MAX_PHASE_OUTPUT {
                                        text.push_str(&format!(
                                            "… {} more result(s) not included here (this output stops at {} MiB); each is in its own file: {}\n",
                                            parts.len() - i,
                                            MAX_PHASE_OUTPUT >> 20,
                                            parts[i..]
                                                .iter()
                                                .map(|(_, p)| p.as_str())
                                                .take(50)
                                                .collect::<Vec<_>>()
                                                .join(", ")
                                        ));
                                        break;
                                    }
                                    let body = fsutil::read_confined(
                                        self.ws.root(),
                                        path,
                                        MAX_CONTEXT_FILE,
                                    )
                                    .unwrap_or_default();
                                    text.push_str(&format!(
                                        "## {label} ({path})\n\n{}\n\n",
                                        body.trim_end()
                                    ));
                                }
                                if let Err(e) = result::write_text(&self.ws, &output, &text) {
                                    self.escalate(
                                        &run,
                                        format!("phase `{phase}`: cannot write its output: {e}"),
                                    );
                                    break;
                                }
                            }
                            let digest = fsutil::digest_confined(self.ws.root(), &output)
                                .unwrap_or_default();
                            let ev = Event::PhaseCompleted {
                                task: run.clone(),
                                phase,
                                output,
                                digest,
                            };
                            if !self.record_now(ev).await {
                                return;
                            }
                            moved = true;
                        }
                        crate::runner::Action::Finished { output } => {
                            self.finish_run(&run, output).await
                        }
                        crate::runner::Action::Failed(reason) => self.escalate(&run, reason),
                        crate::runner::Action::Evaluate {
                            phase,
                            round,
                            command,
                        } => {
                            self.start_evaluation(&run, phase, round, command);
                        }
                        crate::runner::Action::RecordRound(verdict) => {
                            if !self.record_now(round_judged(&run, verdict)).await {
                                return;
                            }
                            moved = true;
                        }
                    }
                }
                if !moved {
                    break;
                }
            }
        }
    }

    /// The parsed workflow of a run (cached); a workflow that vanished or broke fails the run.
    pub(super) fn workflow_of(&mut self, run: &str) -> Option<Arc<crate::workflow::Workflow>> {
        if let Some(wf) = self.live.run_mut(run).and_then(|p| p.workflow.clone()) {
            return Some(wf);
        }
        let name = self.book.get(run)?.workflow()?;
        let found = crate::workflow::discover(&self.ws.workflows())
            .map_err(|e| e.to_string())
            .and_then(|defs| {
                let def = defs
                    .into_iter()
                    .find(|d| d.name == name)
                    .ok_or_else(|| format!("workflow `{name}` no longer exists"))?;
                crate::workflow::validate(&def, &self.config).map_err(|p| {
                    format!(
                        "workflow `{name}` is invalid now: {}",
                        p.first().map(|p| p.to_string()).unwrap_or_default()
                    )
                })
            });
        match found {
            Ok(wf) => {
                let wf = Arc::new(wf);
                if let Some(progress) = self.live.run_mut(run) {
                    progress.workflow = Some(wf.clone());
                }
                Some(wf)
            }
            Err(reason) => {
                self.escalate(run, reason);
                None
            }
        }
    }

    /// The workflow run `child` is a phase's task of (`RUN.phase.n`), if it is one.
    pub(super) fn run_of_child(&self, child: &str) -> Option<String> {
        let (run, _) = child.split_once('.')?;
        self.book
            .get(run)?
            .spec()?
            .fields
            .workflow
            .is_some()
            .then(|| run.to_string())
    }

    /// The branch a run's editing tasks merge into: the run task's `merge_into` (a run branch
    /// `dirigent/run/<id>` collects them for review as one), else none (the checked-out
    /// branch).
    fn run_merge_into(&self, child: &str) -> Option<String> {
        let run = self.run_of_child(child)?;
        self.book.get(&run)?.spec()?.fields.merge_into.clone()
    }

    /// A digest of a run's task as written, keyed by this daemon's own random hasher (no one
    /// outside can make another task's fields hash the same).
    pub(super) fn sent_digest(&self, fields: &crate::task::TaskFields) -> u64 {
        use std::hash::BuildHasher;
        self.sent_hasher
            .hash_one(serde_json::to_string(fields).unwrap_or_default())
    }

    /// The task fields of `run`'s child: what it writes into the inbox, and what the intake
    /// compares a file naming the run with (see `run_wants`).
    pub(super) fn child_fields(
        &self,
        run: &str,
        child: &crate::runner::Child,
    ) -> crate::task::TaskFields {
        crate::task::TaskFields {
            id: Some(child.id.clone()),
            title: Some(child.title.clone()),
            prompt: Some(child.prompt.clone()),
            agent: child.agent.clone(),
            role: child.role.clone(),
            chain: child.chain.clone(),
            output: child.output.clone(),
            files: child.files.clone(),
            // A workflow's steps work in the workspace unless their phase says `workdir:
            // worktree`; then each works in its own tree and is merged (into the run's
            // `merge_into`, else the checked-out branch) before the next phase starts.
            workdir: Some(child.workdir.unwrap_or(crate::workdir::Workdir::Shared)),
            merge: (child.workdir == Some(crate::workdir::Workdir::Worktree))
                .then_some(crate::editing::MergeMode::Auto),
            verify: child
                .verify
                .clone()
                .map(crate::editing::VerifyWritten::Many),
            merge_into: (child.workdir == Some(crate::workdir::Workdir::Worktree))
                .then(|| self.run_merge_into(&child.id))
                .flatten(),
            workflow_run: Some(run.to_string()),
            ..Default::default()
        }
    }

    /// Submits a child task through the inbox, like any other door. Submitting the same child
    /// twice is harmless: the second file finds the first in the inbox, or the id taken.
    /// Returns why the task cannot be submitted at all (too big, a bad id): the run then fails
    /// with that reason instead of waiting for a task that will never come.
    fn submit_child(
        &mut self,
        run: &str,
        child: &crate::runner::Child,
    ) -> Result<(), ChildRefused> {
        crate::config::validate_name(&child.id).map_err(|cause| ChildRefused::BadId {
            id: child.id.clone(),
            cause,
        })?;
        let fields = self.child_fields(run, child);
        let digest = self.sent_digest(&fields);
        self.sent_children.insert(child.id.clone(), digest);
        match crate::submit::write_into_inbox(&self.ws, &child.id, &fields) {
            Ok(_) => {
                self.reserved
                    .insert(child.id.clone(), task_file::submitted_name(&child.id));
                // Taken in at once even while the intake is held back (its run waits for it).
                self.held_scan_at = None;
                tracing::info!(task = %child.id, "workflow submitted a task");
            }
            Err(crate::submit::SubmitError::Exists(_)) => {}
            Err(crate::submit::SubmitError::Io { cause, .. })
                if fsutil::exhausted(&cause).is_some() =>
            {
                // The disk or descriptors ran out: not the task's fault; asked again later.
                let what = fsutil::exhausted(&cause).unwrap_or("a resource ran out");
                self.pause(format!("{what} (submitting `{}`: {cause})", child.id));
            }
            Err(cause) => {
                return Err(ChildRefused::Submit {
                    id: child.id.clone(),
                    cause,
                });
            }
        }
        // The prompt a phase's task received is kept next to its output.
        if let Some(out) = &child.output {
            let (stem, _) = fsutil::split_name(out);
            if let Err(e) =
                result::write_text(&self.ws, &format!("{stem}.prompt.md"), &child.prompt)
            {
                tracing::warn!(task = %child.id, "cannot keep the prompt beside its output: {e}");
            }
        }
        Ok(())
    }

    /// Runs a loop's evaluator command in the background; the round is recorded when it ends.
    fn start_evaluation(&mut self, run: &str, phase: String, round: u32, command: Vec<String>) {
        let key = format!("{phase}/{round}");
        self.evaluators += 1;
        let id = self.evaluators;
        let (stop, stopped) = watch::channel(false);
        let Some(progress) = self.live.run_mut(run) else {
            return;
        };
        if progress.evaluating.contains_key(&key) {
            return; // already running
        }
        progress
            .evaluating
            .insert(key.clone(), lifecycle::Evaluator { id, stop });
        tracing::info!(task = run, phase = %phase, round, "evaluating the round with `{}`", crate::terminal::shown_command(&command));
        let (ws, ledger, tx, run) = (
            self.ws.clone(),
            self.ledger.clone(),
            self.tx.clone(),
            run.to_string(),
        );
        let limits = crate::side_command::SideLimits {
            limit: EVALUATOR_LIMIT,
            stop: stopped,
            cancel: None,
            grace: self.config.kill_grace,
            dir: None,
            task: Some(run.to_string()),
        };
        self.tasks.spawn(async move {
            let log = ws
                .run_dir(&run)
                .join(format!("{phase}-round{round}-evaluator.log"));
            let Some((passed, feedback)) =
                crate::runner::run_evaluator(&ws, &command, &log, limits).await
            else {
                // Stopped — the daemon stops (the next start evaluates the round again), or the
                // run ended meanwhile: no verdict.
                let _ = tx.send(Msg::Evaluated {
                    run,
                    key,
                    id,
                    records: vec![],
                });
                return;
            };
            let verdict = LoopRound {
                phase,
                round,
                passed,
                feedback,
            };
            let records = record(&ledger, &tx, round_judged(&run, verdict)).await;
            let _ = tx.send(Msg::Evaluated {
                run,
                key,
                id,
                records,
            });
        });
    }

    /// Every phase of a run is complete: record `done` and move its file.
    async fn finish_run(&mut self, run: &str, output: String) {
        let Some(t) = self.book.get(run) else { return };
        let file = t.file().to_string();
        let fields = t.spec().map(|s| s.fields.clone());
        let ev = Event::Done {
            task: run.to_string(),
            agent: "workflow".into(),
            attempt: 0,
            output,
        };
        if !self.record_now(ev).await {
            return;
        }
        tracing::info!(task = run, "workflow done");
        if let Err(e) = task_file::settle(
            &self.ws,
            Place::Running,
            Place::Done,
            &file,
            run,
            fields.as_ref(),
        ) {
            tracing::warn!(
                task = run,
                "cannot move the workflow's task file to done/: {e}"
            );
        }
        self.live.settled(run);
    }
}
