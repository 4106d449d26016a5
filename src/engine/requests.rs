//! Door requests: what the control socket, HTTP, the OpenAI endpoint and MCP ask of the engine
//! (submit, get, list, wait, cancel, retry, agents, workflows), answered from its live state.

use super::*;

/// One line of `list`: what a client needs to pick a task, without its prompt or attempts.
fn summary(t: &TaskRecord) -> serde_json::Value {
    let mut v = serde_json::json!({
        "id": t.id(),
        "title": t.title(),
        "state": t.phase().label(),
        "chain": t.chain(),
        "attempts": t.attempts().len(),
        "received_ms": t.received_ms,
    });
    if let Some(a) = t.attempts().first() {
        v["started_ms"] = serde_json::json!(a.started_ms);
    }
    if let Some(a) = t.attempts().last() {
        v["agent"] = serde_json::json!(a.agent);
    }
    if let Some(role) = &t.more().role {
        v["role"] = serde_json::json!(role);
    }
    match t.more().fleet.as_deref() {
        Some(crate::state::FleetPart::Published {
            worker: Some(w), ..
        }) => v["ran_on"] = serde_json::json!(w),
        Some(crate::state::FleetPart::Published { .. }) => v["on_fleet"] = true.into(),
        Some(crate::state::FleetPart::Taken { key, .. }) => v["fleet_key"] = key.clone().into(),
        _ => {}
    }
    if t.cost_usd() > 0.0 {
        v["cost_usd"] = serde_json::json!(t.cost_usd());
    }
    if let Some(w) = &t.more().worktree {
        v["branch"] = serde_json::json!(w.branch);
        if let Some(d) = &w.diff {
            v["diff"] = serde_json::json!(d);
        }
    }
    match t.phase() {
        Phase::Done {
            output,
            finished_ms,
            ..
        } => {
            v["output"] = serde_json::json!(output);
            v["finished_ms"] = serde_json::json!(finished_ms);
        }
        Phase::Failed {
            reason,
            finished_ms,
        } => {
            v["reason"] = serde_json::json!(reason);
            v["finished_ms"] = serde_json::json!(finished_ms);
        }
        _ => {}
    }
    v
}

/// The answer of `list`: the tasks that pass the filters, one summary each; with a `limit`,
/// one page of them and how many matched (only the page is summarised, so a page of a long
/// history costs a pass over it and no more).
fn list(
    book: &crate::state::TaskBook,
    state: Option<String>,
    f: &crate::protocol::ListFilter,
) -> serde_json::Value {
    let text = f.text.as_deref().map(str::to_lowercase);
    let keep = |t: &&TaskRecord| {
        state
            .as_deref()
            .is_none_or(|s| t.phase().label() == s || t.phase().shown() == s)
            && f.agent.as_deref().is_none_or(|a| {
                t.attempts()
                    .last()
                    .is_some_and(|l| crate::config::split_entry(&l.agent).0 == a)
            })
            && f.role
                .as_deref()
                .is_none_or(|r| t.more().role.as_deref() == Some(r))
            && text.as_deref().is_none_or(|q| {
                t.id().to_lowercase().contains(q) || t.title().to_lowercase().contains(q)
            })
    };
    let matching: Box<dyn Iterator<Item = &TaskRecord>> = if f.newest_first {
        Box::new(book.iter().rev().filter(keep))
    } else {
        Box::new(book.iter().filter(keep))
    };
    let Some(limit) = f.limit else {
        let rows: Vec<serde_json::Value> =
            matching.skip(f.offset.unwrap_or(0)).map(summary).collect();
        return serde_json::Value::Array(rows);
    };
    let (mut total, mut rows) = (0usize, Vec::new());
    let offset = f.offset.unwrap_or(0);
    for t in matching {
        if total >= offset && rows.len() < limit {
            rows.push(summary(t));
        }
        total += 1;
    }
    // Older finished tasks keep only their outcome (the ledger has the rest): counted, so a
    // reader knows they exist.
    serde_json::json!({
        "tasks": rows,
        "total": total,
        "archived": {"done": book.archived_done, "failed": book.archived_failed},
    })
}

/// The most bytes of each task's prompt the answer to `status` carries (the listing of every
/// task; one task's record has its prompt whole).
const LISTED_PROMPT_BYTES: usize = 4096;

impl Engine {
    /// Answers a control request (`dirigent cancel`, `dirigent retry`).
    pub(super) async fn control(
        &mut self,
        request: crate::protocol::Request,
    ) -> crate::protocol::Response {
        use crate::protocol::{Failure, Request, Response};
        match request {
            Request::Status => match crate::state::with_prompts_cut(LISTED_PROMPT_BYTES, || {
                serde_json::to_value(&self.book)
            }) {
                Ok(mut data) => {
                    // What stops the daemon from taking work, beside the tasks.
                    if let Some(why) = self.not_claiming() {
                        data["paused"] = serde_json::json!({
                            "why": why,
                            "since_ms": self.paused.as_ref().map(|p| p.since_ms),
                        });
                    }
                    if let Some(why) = &self.intake_held {
                        data["intake_held"] = why.as_str().into();
                    }
                    if let Some(fleet) = self.fleet_status() {
                        data["fleet"] = fleet;
                    }
                    Response::data(data)
                }
                Err(e) => Response::error(format!("cannot serialise the state: {e}")),
            },
            Request::Get { id } => self.describe(&id),
            Request::List { state, filter } => Response::data(list(&self.book, state, &filter)),
            Request::Submit { task } => {
                let (book, reserved) = (&self.book, &self.reserved);
                let submitted = crate::submit::submit(&self.ws, &self.config, *task, |id| {
                    book.contains(id) || reserved.contains_key(id)
                });
                if let Ok(done) = &submitted {
                    // The id is this submitter's from now on: a file dropped meanwhile whose
                    // name maps to the same id gets another one.
                    self.reserved
                        .insert(done.id.clone(), task_file::submitted_name(&done.id));
                }
                match submitted {
                    Ok(done) => Response {
                        message: format!("submitted `{}`", done.id),
                        ..Response::data(serde_json::json!({"id": done.id, "file": done.file}))
                    },
                    Err(crate::submit::SubmitError::Exists(taken)) => {
                        // What is taken, as data too: a door may word it its own way.
                        let data = match &taken {
                            crate::submit::Taken::Known(id) => serde_json::json!({"taken_by": id}),
                            crate::submit::Taken::Waiting(path) => {
                                serde_json::json!({"waiting": path})
                            }
                        };
                        Response {
                            data: Some(data),
                            ..Response::fail(
                                Failure::Conflict,
                                crate::submit::SubmitError::Exists(taken).to_string(),
                            )
                        }
                    }
                    Err(e @ crate::submit::SubmitError::Io { .. }) => {
                        Response::fail(Failure::Unavailable, e.to_string())
                    }
                    Err(e) => Response::error(e.to_string()),
                }
            }
            Request::Enable { agent } => {
                let Some(a) = self.config.agents.get(&agent) else {
                    return Response::fail(
                        Failure::NotFound,
                        format!("no agent `{agent}`; `dirigent agents` lists them"),
                    );
                };
                let provider = a.provider.clone();
                if !self.book.providers.contains_key(&provider) {
                    return Response::ok(format!(
                        "`{agent}` (provider `{provider}`) is not disabled or cooling down"
                    ));
                }
                if !self
                    .record_now(Event::ProviderEnabled {
                        worker: None,
                        provider: provider.clone(),
                    })
                    .await
                {
                    return Response::fail(Failure::Unavailable, "the ledger cannot be written");
                }
                tracing::info!(provider, "enabled by the user");
                Response::ok(format!(
                    "`{agent}` and every agent on provider `{provider}` can run again"
                ))
            }
            Request::Agents => Response::data(crate::catalog::agents_report(
                &self.ws,
                &self.config,
                &self.book,
            )),
            Request::Runs { limit, id } => {
                // Each workflow's definition read once per answer, however many runs it has.
                let dir = self.ws.workflows();
                let cache = std::cell::RefCell::new(std::collections::HashMap::new());
                let phases_of = |name: &str| {
                    cache
                        .borrow_mut()
                        .entry(name.to_string())
                        .or_insert_with(|| crate::run_view::defined_phases(&dir, name))
                        .clone()
                };
                let runs = crate::run_view::runs(
                    &self.book,
                    limit.unwrap_or(50),
                    id.as_deref(),
                    &phases_of,
                );
                // Asked for one run by id: an empty list would read as "no such run" only to
                // those who know the shape; say which it is.
                if let Some(id) = id.as_deref()
                    && runs.is_empty()
                {
                    // A task submitted a moment ago may still be on its way in: reserved.
                    let message = if self.book.contains(id) || self.reserved.contains_key(id) {
                        format!(
                            "task `{id}` is not a workflow run; `dirigent status {id}` shows it"
                        )
                    } else {
                        format!("no workflow run `{id}`; `GET /runs` lists them")
                    };
                    return Response::fail(Failure::NotFound, message);
                }
                Response::data(serde_json::json!(runs))
            }
            Request::Workflows => match crate::catalog::workflows(&self.ws, &self.config) {
                Ok(rows) => Response::data(serde_json::json!(rows)),
                Err(e) => Response::error(format!("cannot read the workflows: {e}")),
            },
            // Answered by the doors themselves (`api`), from `get` and the live events.
            Request::Wait { .. } | Request::Result { .. } | Request::Diff { .. } => {
                Response::error(
                    "`wait`, `result` and `diff` are answered by the door, not the engine",
                )
            }
            Request::Cancel { id } => {
                let Some(t) = self.book.get(&id) else {
                    return if self.book.contains(&id) {
                        Response::fail(
                            Failure::Conflict,
                            format!("task `{id}` has already finished"),
                        )
                    } else {
                        Response::fail(
                            Failure::NotFound,
                            format!("no task `{id}`; `dirigent status` lists the tasks"),
                        )
                    };
                };
                if t.phase().is_terminal() {
                    return Response::fail(
                        Failure::Conflict,
                        format!("task `{id}` has already finished ({})", t.phase().shown()),
                    );
                }
                if self.live.is_finishing(&id) {
                    return Response::fail(
                        Failure::Conflict,
                        format!(
                            "task `{id}` is finishing (its result or report is being written); it cannot be cancelled any more"
                        ),
                    );
                }
                // A workflow run takes its unfinished tasks with it.
                let mut ids: Vec<String> = self
                    .book
                    .iter()
                    .filter(|c| !c.phase().is_terminal() && is_child_of(c.id(), &id))
                    .map(|c| c.id().to_string())
                    .collect();
                ids.push(id.clone());
                if self.merges.is_merging(&id) {
                    return Response::fail(
                        Failure::Conflict,
                        format!(
                            "task `{id}` is being merged into its target now; it cannot be cancelled any more (`dirigent discard {id}` once it is done, if need be)"
                        ),
                    );
                }
                let mut stopping = false;
                for one in ids {
                    match self.live.get(&one) {
                        Some(Live::Finishing) => {}
                        // A child whose merge job runs is left to it: the target may move.
                        Some(Live::Merging) if self.merges.is_merging(&one) => {}
                        Some(Live::Merging) => {
                            self.merges.forget(&one);
                            self.live.stop_merging(&one);
                            self.settle_cancelled(&one);
                        }
                        Some(Live::Running(run)) => {
                            let _ = run.stop.send(Some(crate::judge::StopCause::Cancel));
                            stopping = true;
                        }
                        _ => self.settle_cancelled(&one),
                    }
                }
                Response::ok(if stopping {
                    format!("cancelling `{id}`: its process group is being stopped")
                } else {
                    format!("cancelled `{id}`")
                })
            }
            Request::Merge { id } => self.merge_request(&id),
            Request::Discard { id } => self.discard_request(&id).await,
            Request::FleetStatus => match &self.fleet {
                None => Response::fail(
                    crate::protocol::Failure::NotFound,
                    "this daemon is not in a fleet: add a `cluster:` section to .context/dirigent.yaml (see docs/cluster.md)",
                ),
                Some(link) => {
                    // The first request starts the folding; until it has caught up, the
                    // answer holds what it has read so far.
                    link.books.wanted.notify_one();
                    let books = crate::fleet::events::lock(&link.books);
                    let nodes: Vec<serde_json::Value> = books
                        .iter()
                        .map(|(node, book)| {
                            serde_json::json!({
                                "node": node,
                                "tasks": list(book, None, &Default::default()),
                            })
                        })
                        .collect();
                    drop(books);
                    Response::data(serde_json::json!({
                        "fleet": self.fleet_status(),
                        "nodes": nodes,
                    }))
                }
            },
            Request::Retry { id } => match self.retry(&id).await {
                Ok(message) => Response::ok(message),
                Err(refused) => refused,
            },
        }
    }

    /// Runs a failed or cancelled task again from the top of its chain, re-reading its file in
    /// `failed/`. A workflow run resumes from the phase that failed: its failed tasks run again
    /// and its completed phases stay completed. Returns what to tell the user.
    pub(super) async fn retry(&mut self, id: &str) -> Result<String, crate::protocol::Response> {
        use crate::protocol::{Failure, Response};
        let id = id.to_string();
        let Some(t) = self.book.get(&id) else {
            return Err(if self.book.contains(&id) {
                Response::fail(
                    Failure::Conflict,
                    format!(
                        "task `{id}` is too old to retry (only the 1,000 most recent finished tasks are kept in full); submit it again"
                    ),
                )
            } else {
                Response::fail(
                    Failure::NotFound,
                    format!("no task `{id}`; `dirigent status` lists the tasks"),
                )
            });
        };
        if !matches!(t.phase(), Phase::Failed { .. }) {
            return Err(Response::fail(
                Failure::Conflict,
                format!(
                    "task `{id}` is {}; only a failed or cancelled task can be retried",
                    t.phase().label()
                ),
            ));
        }
        // Its old tree is still being given up (a discard just now): a new tree now would take
        // the branch name the give-up is about to delete.
        if self.trees_leaving.contains(&id) || self.discarding.contains(&id) {
            return Err(Response::fail(
                Failure::Conflict,
                format!("task `{id}`'s worktree is still being given up; retry it in a moment"),
            ));
        }
        let file = t.file().to_string();
        let path = self.ws.failed().join(&file);
        let fields = match self.ws.open_sub("failed") {
            Ok(failed) if failed.kind(&file).is_none() => {
                Err(format!("its file `{}` is gone", path.display()))
            }
            Ok(failed) => match claim::read(&failed, &file, &file) {
                Ok(f) => Ok(f),
                Err(claim::Unreadable::Refused(r)) => Err(r),
                Err(claim::Unreadable::Exhausted(e)) => {
                    return Err(Response::fail(
                        Failure::Unavailable,
                        format!("cannot read `{}` now: {e}", path.display()),
                    ));
                }
            },
            Err(e) => Err(format!("cannot open `{}`: {e}", self.ws.failed().display())),
        };
        let spec = match fields.and_then(|f| {
            crate::task::accept(id.clone(), f, &self.config, self.ws.root()).map_err(|e| e.0)
        }) {
            Ok(spec) => spec,
            Err(e) => {
                return Err(Response::error(format!(
                    "task `{id}` cannot run again: {e}"
                )));
            }
        };
        // A workflow run resumes where it failed: its failed tasks run again first
        // (its completed phases are kept), then the run itself.
        let is_run = spec.fields.workflow.is_some();
        let mut again = Vec::new();
        if is_run {
            let prefix = format!("{id}.");
            let failed: Vec<String> = self
                .book
                .iter()
                .filter(|c| {
                    c.id().starts_with(&prefix) && matches!(c.phase(), Phase::Failed { .. })
                })
                .map(|c| c.id().to_string())
                .collect();
            for child in failed {
                Box::pin(self.retry(&child)).await?;
                again.push(child);
            }
        }
        // Its old worktree and branch are given up (their work saved as a patch): it starts
        // again from the target's head as it is now, not from the base it conflicted with.
        let old_tree = self
            .book
            .get(&id)
            .and_then(|t| t.more().worktree.as_deref().cloned())
            .filter(|w| !w.removed || w.commit.is_some());
        if !self
            .record_now(Event::Retried {
                task: id.clone(),
                spec: Box::new(spec),
            })
            .await
        {
            return Err(Response::fail(
                Failure::Unavailable,
                "the ledger cannot be written",
            ));
        }
        if let Err(e) = task_file::retry(&self.ws, &file, &id) {
            tracing::warn!(task = %id, "cannot move the task file back to running/: {e}");
        }
        self.live.settled(&id);
        match old_tree {
            // Queued once the old tree is given up.
            Some(w) => self.retire_tree(&id, w),
            None => self.enqueue_or_advance(&id),
        }
        tracing::info!(task = %id, "retried");
        Ok(if is_run {
            let phase = self
                .book
                .get(&id)
                .map(|t| t.more().phases.len())
                .unwrap_or_default();
            format!(
                "resuming the workflow run `{id}` after its {phase} completed phase(s){}",
                if again.is_empty() {
                    String::new()
                } else {
                    format!("; running again: {}", again.join(", "))
                }
            )
        } else {
            format!("retrying `{id}` from the top of its chain")
        })
    }

    /// What is known of task `id`, for `get` and `wait`: its full record; only its outcome once
    /// archived; or, before it is taken in, a file waiting in the inbox or a rejection.
    fn describe(&self, id: &str) -> crate::protocol::Response {
        use crate::protocol::Response;
        use serde_json::json;
        if let Some(t) = self.book.get(id) {
            return match serde_json::to_value(t) {
                Ok(mut v) => {
                    // What it waits for, where only the daemon knows (a waiting client says it).
                    use super::fleet_tasks::FleetWhereabouts;
                    match self.fleet_whereabouts(t) {
                        Some(FleetWhereabouts::RunningOn(worker)) => {
                            v["running_on"] = worker.into()
                        }
                        Some(FleetWhereabouts::WaitingFor(why)) => v["waiting_for"] = why.into(),
                        None => {}
                    }
                    Response::data(v)
                }
                Err(e) => Response::error(format!("cannot serialise task `{id}`: {e}")),
            };
        }
        if let Some(outcome) = self.book.outcome(id) {
            let state = match outcome {
                Outcome::Done => "done",
                Outcome::Failed => "failed",
            };
            return Response::data(json!({"id": id, "state": state, "archived": true}));
        }
        // Only a task id is ever looked up as a file name (never `../x` or `/etc/x`).
        if crate::config::validate_name(id).is_err() {
            return Response::fail(
                crate::protocol::Failure::NotFound,
                format!("no task `{id}`; `dirigent status` lists the tasks"),
            );
        }
        // The names a file for this id can wait under (the inbox takes `.json` and `.md`).
        let waiting = [".json", ".md"].iter().any(|ext| {
            self.ws
                .inbox()
                .join(task_file::file_name(id, ext))
                .symlink_metadata()
                .is_ok()
        });
        if waiting {
            return Response::data(json!({"id": id, "state": "inbox"}));
        }
        if let Some(r) = self
            .book
            .rejected
            .iter()
            .rev()
            .find(|r| crate::task::id_from_stem(fsutil::split_name(&r.file).0) == id)
        {
            return Response::data(json!({
                "id": id,
                "state": "rejected",
                "reason": r.reason,
                "moved_to": r.moved_to,
            }));
        }
        Response::fail(
            crate::protocol::Failure::NotFound,
            format!("no task `{id}`; `dirigent status` lists the tasks"),
        )
    }
}
