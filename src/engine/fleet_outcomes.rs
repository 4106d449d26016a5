//! Fleet mode, the submitting node's side of an outcome: a task this node published was run
//! somewhere in the fleet, and its outcome arrives here (see `fleet_tasks` for where it was
//! published and `crate::fleet` for the whole flow). The outcome settles the task — `ran_on`,
//! then `done` with its result (and its work brought into this repository) or `escalated`.

use super::*;
use crate::fleet::{self, End};
use crate::state::FleetPart;

impl Engine {
    /// An outcome from the fleet for a task published here: `ran_on`, then `done` with the
    /// result written here, or `escalated`. One that arrives again is ignored.
    pub(super) async fn settle_from_fleet(
        &mut self,
        id: &str,
        round: u32,
        received_ms: u64,
        outcome: fleet::Outcome,
    ) {
        // A bundle fetched for this outcome is this call's to remove, whatever becomes of it.
        let bundle = match (&self.fleet, &outcome.end) {
            (Some(l), End::Done { work: Some(w), .. })
                if matches!(w.carried, fleet::edits::Carried::Bundle { .. }) =>
            {
                Some(fleet::submitter::bundle_file(
                    self.ws.root(),
                    &fleet::key_of(&l.node, id, round, received_ms),
                ))
            }
            _ => None,
        };
        // Not this task's outcome any more: another task of the same id (of an earlier
        // workspace under this node's name, or of another node given the same name), an
        // earlier round's (the task was retried since), or one that arrives again.
        let stale = match self.book.get(id) {
            None => true,
            Some(t) => {
                received_ms != t.received_ms
                    || t.phase().is_terminal()
                    || !matches!(
                        t.more().fleet.as_deref(),
                        Some(FleetPart::Published { round: r, .. }) if *r == round
                    )
            }
        };
        if stale {
            if let Some(b) = bundle {
                let _ = std::fs::remove_file(b);
            }
            return;
        }
        let Some(t) = self.book.get(id) else { return };
        let ran_on = Event::RanOn {
            task: id.to_string(),
            worker: outcome.worker.clone(),
        };
        match outcome.end {
            // Cancelled here (the outcome is this node's own word): settled so already, or
            // now if the node stopped before it had recorded the cancel.
            End::Cancelled => self.settle_cancelled(id),
            End::Escalated { reason, .. } => {
                if self.record_now(ran_on).await {
                    self.escalate(id, format!("on worker `{}`: {reason}", outcome.worker));
                }
            }
            End::Done {
                agent,
                attempt,
                mut text,
                work,
                ..
            } => {
                let Some(spec) = t.spec() else { return };
                let file = t.file().to_string();
                let published = match t.more().fleet.as_deref() {
                    Some(FleetPart::Published { base, .. }) => base.clone(),
                    _ => None,
                };
                if !self.live.begin_finishing(id) {
                    return;
                }
                // An editing task's work: brought into this repository as its branch.
                let receive = work.map(|work| {
                    let repository = self
                        .fleet
                        .as_ref()
                        .and_then(|l| l.repository.clone())
                        .unwrap_or_default();
                    // The branch is the one this worker delivers this task as, and no other.
                    let expected = self.fleet.as_ref().and_then(|l| {
                        fleet::edits::branch_name(&outcome.worker, &l.node, id, round)
                    });
                    let here = self.repo().map(|r| r.top).map_err(|e| e.to_string());
                    // … and starts from the base the task went out with, so that the review
                    // command the result gives shows all of it.
                    let here = match published {
                        _ if expected.as_deref() != Some(work.branch.as_str()) => Err(format!(
                            "the worker named the branch `{}`, not the one it delivers this task as",
                            work.branch
                        )),
                        Some(base) if base != work.base => Err(format!(
                            "the worker says its work starts from `{}`, but the task went out with `{base}`",
                            work.base
                        )),
                        _ => here,
                    };
                    (work, repository, here, bundle.clone(), outcome.worker.clone())
                });
                let (ws, ledger, tx, id) = (
                    self.ws.clone(),
                    self.ledger.clone(),
                    self.tx.clone(),
                    id.to_string(),
                );
                self.tasks.spawn(async move {
                    if let Some((work, repository, here, bundle, worker)) = receive {
                        let said = tokio::task::spawn_blocking(move || {
                            receive_work(&work, &repository, here, bundle.as_deref(), &worker)
                        })
                        .await
                        .unwrap_or_else(|e| e.to_string());
                        tracing::info!(task = %id, "{said}");
                        if !text.is_empty() && !text.ends_with('\n') {
                            text.push('\n');
                        }
                        if !text.is_empty() {
                            text.push('\n');
                        }
                        text.push_str(&said);
                        text.push('\n');
                    }
                    let output = spec.fields.output.clone();
                    let (ws2, id2) = (ws.clone(), id.clone());
                    let written = tokio::task::spawn_blocking(move || {
                        result::write(&ws2, &id2, output.as_deref(), result::Content::Text(&text))
                    })
                    .await
                    .expect("the result writer does not panic");
                    let rel = match written {
                        Ok(rel) => rel,
                        Err(e) => {
                            let _ = tx.send(Msg::ResultFailed {
                                task: id,
                                reason: e.to_string(),
                            });
                            return;
                        }
                    };
                    let done = Event::Done {
                        task: id.clone(),
                        agent,
                        attempt,
                        output: rel,
                    };
                    let records = match ledger.append_all(vec![ran_on, done]).await {
                        Ok(r) => r,
                        Err(e) => {
                            let _ = tx.send(Msg::LedgerFailed(e.to_string()));
                            return;
                        }
                    };
                    if let Err(e) = task_file::settle(
                        &ws,
                        Place::Running,
                        Place::Done,
                        &file,
                        &id,
                        Some(&spec.fields),
                    ) {
                        tracing::warn!(task = %id, "cannot move the task file to done/: {e}");
                    }
                    tracing::info!(task = %id, "done on the fleet");
                    let _ = tx.send(Msg::Settled { task: id, records });
                });
            }
        }
    }
}

/// Brings a fleet task's work into this repository (blocking: git runs) and says where it
/// is, for its result.
fn receive_work(
    work: &fleet::edits::Work,
    repository: &str,
    here: Result<std::path::PathBuf, String>,
    bundle: Option<&std::path::Path>,
    worker: &str,
) -> String {
    use fleet::edits::{self, Carried};
    let received = match (&work.carried, &here) {
        (_, Err(e)) => Err(e.clone()),
        (Carried::Pushed, Ok(top)) => edits::Source::parse(repository)
            .map_err(|e| format!("`{repository}`: {e}"))
            .and_then(|from| edits::receive(top, &from.git_arg(), work)),
        (Carried::Bundle { .. }, Ok(top)) => match bundle {
            Some(b) => edits::receive(top, &b.display().to_string(), work),
            None => Err("its bundle was not fetched".into()),
        },
        (Carried::Stayed { .. } | Carried::NotYet, _) => Ok(()),
    };
    if let Some(b) = bundle {
        let _ = std::fs::remove_file(b);
    }
    edits::describe(work, worker, repository, &received)
}
