//! Settling: an attempt's verdict is recorded; a task is done (its result written), moves on to
//! the next agent of its chain, or is escalated (report, `on_escalate`); cancelled tasks too.

use super::*;

/// The events that close an attempt: `attempt_finished` (with the backoff when a network
/// failure is retried) and, for a rate limit or an auth failure, what it means for the provider.
/// One batch, so a crash never records the failure without its consequence.
pub(super) fn finished_events(
    plan: &AttemptPlan,
    attempt: u32,
    retries_used: u32,
    report: &AttemptReport,
    prices: &std::collections::BTreeMap<String, crate::usage::Price>,
) -> Vec<Event> {
    let agent = &plan.agent;
    let class = report.verdict.class;
    let retry_in_ms = (class == Class::Network && retries_used < agent.retry.attempts).then(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let spread = f64::from(nanos % 1000) / 1000.0;
        agent.retry.delay_for(retries_used, spread).as_millis() as u64
    });
    let usage = report.verdict.usage.clone().map(|mut u| {
        crate::usage::price(&mut u, agent.model.as_deref(), prices);
        u
    });
    let mut events = vec![attempt_finished(
        &plan.task_id,
        attempt,
        &agent.name,
        report,
        retry_in_ms,
        usage,
    )];
    match class {
        Class::RateLimit => events.push(Event::ProviderCooldown {
            worker: None,
            provider: agent.provider.clone(),
            agent: agent.name.clone(),
            task: plan.task_id.clone(),
            until_ms: report
                .verdict
                .resets_at_ms
                .unwrap_or_else(|| ledger::now_ms() + agent.cooldown.as_millis() as u64),
            reason: report.verdict.reason.clone(),
        }),
        Class::Auth => events.push(Event::ProviderDisabled {
            worker: None,
            provider: agent.provider.clone(),
            agent: agent.name.clone(),
            task: plan.task_id.clone(),
            reason: report.verdict.reason.clone(),
        }),
        _ => {}
    }
    events
}

/// How long the `on_escalate` hook may run.
const HOOK_LIMIT: Duration = Duration::from_secs(60);

/// The `attempt_finished` event of an attempt's report; the one place it is made.
pub(super) fn attempt_finished(
    task: &str,
    attempt: u32,
    agent: &str,
    report: &AttemptReport,
    retry_in_ms: Option<u64>,
    usage: Option<crate::usage::Usage>,
) -> Event {
    Event::AttemptFinished {
        task: task.to_string(),
        attempt,
        agent: agent.to_string(),
        class: report.verdict.class,
        reason: report.verdict.reason.clone(),
        exit_code: report.exit_code,
        signal: report.signal,
        stopped: report.stopped,
        kill_signal: report.kill_signal,
        leaked: report.leaked,
        stdout_bytes: report.stdout_bytes,
        stderr_bytes: report.stderr_bytes,
        duration_ms: report.duration.as_millis() as u64,
        retry_in_ms,
        usage,
        work: report.work.clone().map(Box::new),
    }
}

/// The `attempt_finished` of an attempt that ended without being judged (its daemon stopped,
/// its work was lost): `interrupted`, with `reason`, having run for `ran`, its captures where
/// its attempt wrote them.
pub(super) fn interrupted_end(
    ws: &Workspace,
    task: &str,
    attempt: u32,
    agent: &str,
    reason: &str,
    ran: Duration,
) -> Event {
    let capture = |stream| {
        ws.run_dir(task)
            .join(crate::workspace::attempt_file(attempt, agent, stream))
    };
    let report = spawn::AttemptReport::not_run(
        crate::judge::Verdict::fail(Class::Interrupted, reason.to_string()),
        None,
        ran,
        capture("stdout"),
        capture("stderr"),
    );
    attempt_finished(task, attempt, agent, &report, None, None)
}

impl Engine {
    /// Records `cancelled` and moves the task file to `failed/`.
    pub(super) fn settle_cancelled(&mut self, id: &str) {
        let Some(t) = self.book.get(id) else { return };
        let file = t.file().to_string();
        let fields = t.spec().map(|s| s.fields.clone());
        // A task a stop put back waits in the inbox until it is claimed again.
        let from = if *t.phase() == Phase::Requeued {
            Place::Inbox
        } else {
            Place::Running
        };
        let snapshot = t.clone();
        if !self.live.begin_finishing(id) {
            return;
        }
        self.tell_fleet_cancelled(id);
        let (ws, ledger, tx, id, config) = (
            self.ws.clone(),
            self.ledger.clone(),
            self.tx.clone(),
            id.to_string(),
            self.config.clone(),
        );
        tracing::info!(task = %id, "cancelled");
        self.tasks.spawn(async move {
            // A cancelled task has a report like an escalated one: status, progress.md and the
            // doors point every failed task at `escalations/<id>.md`.
            if let Err(e) = escalate::write_report(
                &ws,
                &snapshot,
                crate::state::CANCELLED_REASON,
                Some(&config),
                &[],
            ) {
                tracing::warn!(task = %id, "cannot write the report of the cancelled task: {e}");
            }
            let records = record(&ledger, &tx, Event::Cancelled { task: id.clone() }).await;
            if !records.is_empty() {
                if let Err(e) =
                    task_file::settle(&ws, from, Place::Failed, &file, &id, fields.as_ref())
                {
                    tracing::warn!(task = %id, "cannot move the task file to failed/: {e}");
                }
            }
            let _ = tx.send(Msg::Settled { task: id, records });
        });
    }

    /// Writes the result, records `done`, moves the file to `done/` — in a task of its own, so a
    /// large result never holds up scheduling. A result that cannot be written where the task
    /// says escalates; one that cannot be written for lack of a resource waits (paused) and is
    /// written when the resource is back: a finished attempt is never thrown away.
    pub(super) fn settle_done(&mut self, id: &str, report: AttemptReport) {
        let Some(t) = self.book.get(id) else { return };
        let Some(spec) = t.spec() else { return };
        let Some(last) = t.attempts().last() else {
            return;
        };
        let (attempt, agent) = (last.n, last.agent.clone());
        // A worktree task's `output` was written into its tree and committed with its work;
        // its result text goes to the outbox.
        let in_tree = t.more().worktree.is_some();
        if !self.live.begin_finishing(id) {
            return;
        }
        let (ws, ledger, tx, file, id) = (
            self.ws.clone(),
            self.ledger.clone(),
            self.tx.clone(),
            t.file().to_string(),
            id.to_string(),
        );
        self.tasks.spawn(async move {
            let output = spec.fields.output.clone().filter(|_| !in_tree);
            let (ws2, id2) = (ws.clone(), id.clone());
            let (written, report) = tokio::task::spawn_blocking(move || {
                let content = match (&report.verdict.result, &report.stdout_capture) {
                    (Some(ResultText::Text(text)), _) => result::Content::Text(text),
                    (_, Some(capture)) => result::Content::Capture(capture),
                    (_, None) => result::Content::Text(""),
                };
                let written = result::write(&ws2, &id2, output.as_deref(), content);
                (written, report)
            })
            .await
            .expect("the result writer does not panic");
            let rel = match written {
                Ok(rel) => rel,
                Err(e) => {
                    let _ = tx.send(match e.exhausted() {
                        Some(what) => Msg::Paused {
                            what: format!("{what} (writing the result of `{id}`: {e})"),
                            held: Held::Settle {
                                task: id,
                                report: Box::new(report),
                            },
                        },
                        None => Msg::ResultFailed {
                            task: id,
                            reason: e.to_string(),
                        },
                    });
                    return;
                }
            };
            let agent_name = agent.clone();
            let done = Event::Done {
                task: id.clone(),
                agent,
                attempt,
                output: rel,
            };
            let records = record(&ledger, &tx, done).await;
            if !records.is_empty()
                && let Err(e) = task_file::settle(
                    &ws,
                    Place::Running,
                    Place::Done,
                    &file,
                    &id,
                    Some(&spec.fields),
                )
            {
                tracing::warn!(task = %id, "cannot move the task file to done/: {e}");
            }
            tracing::info!(task = %id, agent = %agent_name, attempt, "done");
            let _ = tx.send(Msg::Settled { task: id, records });
        });
    }

    /// After a restart: a task whose last attempt succeeded but whose `done` was never recorded
    /// is settled from that attempt's output, judged again, instead of running again.
    pub(super) fn resettle(&mut self, id: &str) {
        let Some(t) = self.book.get(id) else { return };
        let Some(a) = t.attempts().last() else { return };
        let Some(agent) = self.config.agent_for(&a.agent) else {
            self.enqueue(id);
            return;
        };
        let verified = a.work.as_ref().is_some_and(|w| w.commit.is_some());
        let report = spawn::report_from_capture(&self.ws, id, a, &agent);
        if report.verdict.class == Class::Ok && verified {
            // Its work is committed on its branch: it goes on to be merged.
            self.after_verified(id, report);
        } else if report.verdict.class == Class::Ok {
            tracing::info!(
                task = id,
                "its attempt {} succeeded before the daemon stopped; its result is written from that attempt's output",
                a.n
            );
            self.settle_done(id, report);
        } else {
            tracing::warn!(
                task = id,
                "its attempt {} succeeded before the daemon stopped, but its output is not usable now ({}); it runs again",
                a.n,
                report.verdict.reason
            );
            self.enqueue(id);
        }
    }

    /// Writes the escalation report, records `escalated`, moves the file to `failed/`, runs
    /// the `on_escalate` hook.
    pub(super) fn escalate(&mut self, id: &str, reason: String) {
        let Some(t) = self.book.get(id) else { return };
        if t.phase().is_terminal() || !self.live.begin_finishing(id) {
            return;
        }
        let snapshot: TaskRecord = t.clone();
        tracing::warn!(
            task = id,
            "escalated: {}",
            reason.lines().next().unwrap_or("")
        );
        self.spawn_escalation(Box::new(snapshot), reason);
    }

    /// The work of [`Engine::escalate`], in a task of its own (also when a paused escalation
    /// is done again).
    pub(super) fn spawn_escalation(&mut self, snapshot: Box<TaskRecord>, reason: String) {
        // A workflow run's report lists its tasks.
        let prefix = format!("{}.", snapshot.id());
        let children: Vec<TaskRecord> = if snapshot.workflow().is_some() {
            self.book
                .iter()
                .filter(|c| c.id().starts_with(&prefix))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        let (ws, ledger, tx, hook, config) = (
            self.ws.clone(),
            self.ledger.clone(),
            self.tx.clone(),
            self.config.on_escalate.clone(),
            self.config.clone(),
        );
        let stop = self.side_stop.subscribe();
        self.tasks.spawn(async move {
            if let Err(e) =
                escalate::write_report(&ws, &snapshot, &reason, Some(&config), &children)
            {
                if let Some(what) = fsutil::exhausted(&e) {
                    let _ = tx.send(Msg::Paused {
                        what: format!(
                            "{what} (writing the escalation report of `{}`: {e})",
                            snapshot.id()
                        ),
                        held: Held::Escalate { snapshot, reason },
                    });
                    return;
                }
                tracing::error!(task = %snapshot.id(), "cannot write the escalation report: {e}");
            }
            let ev = Event::Escalated {
                task: snapshot.id().to_string(),
                reason,
                attempts: snapshot.attempts().len() as u32,
            };
            let records = record(&ledger, &tx, ev).await;
            let fields = snapshot.spec().map(|s| s.fields.clone());
            if !records.is_empty()
                && let Err(e) = task_file::settle(
                    &ws,
                    Place::Running,
                    Place::Failed,
                    snapshot.file(),
                    snapshot.id(),
                    fields.as_ref(),
                )
            {
                tracing::warn!(task = %snapshot.id(), "cannot move the task file to failed/: {e}");
            }
            let _ = tx.send(Msg::Settled {
                task: snapshot.id().to_string(),
                records,
            });
            if let Some(hook) = hook {
                let limits = crate::side_command::SideLimits {
                    limit: HOOK_LIMIT,
                    stop,
                    cancel: None,
                    grace: config.kill_grace,
                    dir: None,
                    task: None,
                };
                escalate::run_hook(&ws, &hook, snapshot.id(), limits).await;
            }
        });
    }
}
