//! Giving trees up: where a task's worktree (and branch) goes once the task no longer needs
//! it — back to the pool or removed when the task is done (merged or `merge: none`), kept for
//! `keep_failed` when it failed, at once on `dirigent discard`, and before a retry (its work
//! saved as a patch). A tree is released only by the task that holds it: one another task took
//! from the pool is never given up in its place.

use super::merging::blocking;
use super::*;
use crate::git::{GitError, Repo};
use crate::state::{MergeState, WorktreeState};

impl Engine {
    /// `dirigent discard ID`: the task's branch and worktree go. A task waiting to be merged
    /// ends cancelled; a finished task loses what was kept of it.
    pub(super) async fn discard_request(&mut self, id: &str) -> crate::protocol::Response {
        use crate::protocol::{Failure, Response};
        let Some(t) = self.book.get(id) else {
            return Response::fail(
                Failure::NotFound,
                format!("no task `{id}`; `dirigent status` lists the tasks"),
            );
        };
        let Some(w) = t.more().worktree.as_deref() else {
            return Response::fail(
                Failure::Conflict,
                format!("task `{id}` has no branch or worktree to discard"),
            );
        };
        let branch = w.branch.clone();
        // A discard cut short by a crash (its branch left) may be asked again. A tree removed
        // with no commit took its branch with it (`keep_failed` ran out, say).
        let gone = w.removed && !w.discard_pending && self.branch_goes_with_tree(id, w);
        let discarded = |id: &str| Event::Discarded {
            task: id.to_string(),
        };
        let done = Response::ok(if w.removed {
            format!("discarded `{id}`: its branch `{branch}` is being deleted")
        } else {
            format!(
                "discarded `{id}`: its branch `{branch}` and its worktree are being removed (a few git commands)"
            )
        });
        let unrecorded = |id: &str| {
            Response::fail(
                Failure::Unavailable,
                format!("cannot record the discard of `{id}`: the ledger cannot be written"),
            )
        };
        match t.phase() {
            // Its tree is on its way out already (its task just finished, or another discard):
            // a second give-up at once would race the first.
            _ if self.trees_leaving.contains(id) => Response::fail(
                Failure::Conflict,
                format!(
                    "task `{id}`'s worktree is being given up right now; ask again in a moment"
                ),
            ),
            _ if gone => Response::fail(
                Failure::Conflict,
                format!(
                    "task `{id}` has nothing left to discard (its branch was merged, discarded, or removed with its worktree)"
                ),
            ),
            Phase::MergeWaiting { .. } if self.merges.is_merging(id) => Response::fail(
                Failure::Conflict,
                format!("task `{id}` is being merged now; discard it after, or let it land"),
            ),
            // The discard is on disk before the answer: from then on a crash cannot undo it
            // (the next start finishes what it left).
            Phase::MergeWaiting { .. } => {
                if !self.record_now(discarded(id)).await {
                    return unrecorded(id);
                }
                self.merges.forget(id);
                self.live.stop_merging(id);
                self.discarding.insert(id.to_string());
                self.settle_cancelled(id);
                done
            }
            Phase::Done { .. } | Phase::Failed { .. } => {
                if !self.record_now(discarded(id)).await {
                    return unrecorded(id);
                }
                self.remove_tree_and_branch(id, true);
                done
            }
            Phase::Merging => Response::fail(
                Failure::Conflict,
                format!("task `{id}` is being merged now; discard it after, or let it land"),
            ),
            other => Response::fail(
                Failure::Conflict,
                format!(
                    "task `{id}` is in state `{}`; stop it with `dirigent cancel {id}` first",
                    other.label()
                ),
            ),
        }
    }

    /// A task with a worktree settled: a done one's tree goes now (its work is merged, or on
    /// its branch with `merge: none`); a failed or cancelled one's is kept for `keep_failed`,
    /// for a human to look at.
    pub(super) fn tree_after_settled(&mut self, id: &str) {
        let Some(t) = self.book.get(id) else { return };
        let Some(w) = t.more().worktree.as_deref() else {
            return;
        };
        // Discarded: its branch goes, and its tree if it is still there (unless that is
        // under way).
        let discarded = self.discarding.remove(id) || w.discard_pending;
        if self.trees_leaving.contains(id) {
            return;
        }
        if discarded {
            return self.remove_tree_and_branch(id, true);
        }
        if w.removed {
            return;
        }
        match t.phase() {
            Phase::Done { .. } => self.remove_tree(id),
            Phase::Failed { finished_ms, .. } => {
                let due = finished_ms + self.config.editing.keep_failed.as_millis() as u64;
                self.kept_trees.push((due, id.to_string()));
            }
            _ => {}
        }
    }

    /// Removes the kept worktrees of failed tasks whose `keep_failed` is over (rescan tick).
    pub(super) fn expire_kept_trees(&mut self) {
        let now = ledger::now_ms();
        // Against `keep_failed` as configured now (a reload may have changed it), from when
        // each task last failed; a task no longer failed (retried) works in its tree again
        // and is no longer kept for it.
        let keep = self.config.editing.keep_failed.as_millis() as u64;
        let mut due = Vec::new();
        for (_, id) in std::mem::take(&mut self.kept_trees) {
            let until = match self.book.get(&id).map(|t| t.phase()) {
                Some(Phase::Failed { finished_ms, .. }) => finished_ms.saturating_add(keep),
                _ => continue,
            };
            if until <= now {
                due.push(id);
            } else {
                self.kept_trees.push((until, id));
            }
        }
        for id in due {
            if self.trees_leaving.contains(&id) {
                tracing::debug!(task = %id, "keep_failed is over; its tree is being given up already");
            } else {
                self.remove_tree(&id);
            }
        }
    }

    /// Removes a finished task's worktree and, when its work is merged or discarded (or was
    /// never committed), its branch; recorded as `worktree_removed`.
    pub(super) fn remove_tree(&mut self, id: &str) {
        self.remove_tree_and_branch(id, false);
    }

    /// [`Engine::remove_tree`]; `discard` deletes the branch whatever it holds.
    fn remove_tree_and_branch(&mut self, id: &str, discard: bool) {
        // One give-up at a time: a second one (`keep_failed` running out during a discard)
        // would end the first's guard early and let a retry's new branch be deleted.
        if self.trees_leaving.contains(id) {
            return;
        }
        let Some(t) = self.book.get(id) else { return };
        let Some(w) = t.more().worktree.as_deref().cloned() else {
            return;
        };
        if w.removed && !discard {
            return;
        }
        let delete_branch = discard || self.branch_goes_with_tree(id, &w);
        let Ok(repo) = self.repo_of(id) else { return };
        // A pooled tree goes back to the pool (checked out afresh for the next task) while the
        // pool has room; others are removed.
        let keep = self.keep_for(id, &w);
        // Until its record is applied: no second give-up, no retry into a new tree the
        // give-up's branch deletion and record would then hit.
        self.trees_leaving.insert(id.to_string());
        let (ledger, tx, id) = (self.ledger.clone(), self.tx.clone(), id.to_string());
        let stall = discard && crate::fault::at("discard-stall", &id);
        self.tasks.spawn(async move {
            if stall {
                // The injected fault `discard-stall`: a git step that never returns.
                let _ = blocking(&repo, |_| -> Result<(), GitError> {
                    loop {
                        std::thread::sleep(std::time::Duration::from_secs(3600));
                    }
                })
                .await;
            }
            give_up_tree(&repo, &ledger, &tx, &id, &w, delete_branch, keep).await;
        });
    }
}

impl Engine {
    /// Whether task `id`'s branch is deleted with its tree (and so gone once the tree is): its
    /// work is merged or discarded, it has none (no verified commit), or the task came from
    /// the fleet (its work went to its node, pushed or bundled before the outcome was
    /// claimed; the cache keeps no branch per task).
    fn branch_goes_with_tree(&self, id: &str, w: &WorktreeState) -> bool {
        matches!(w.merge, MergeState::Merged { .. } | MergeState::Discarded)
            || w.commit.is_none()
            || self.fleet_edit(id).is_some()
    }

    /// What becomes of task `id`'s tree `w`: left alone when another task holds the same
    /// directory, back to the pool while it has room, else removed.
    fn keep_for(&self, id: &str, w: &WorktreeState) -> Keep {
        // Given up already, or on its way: the directory is the pool's (or another task's).
        if w.removed || self.trees_leaving.contains(id) {
            return Keep::NotMine;
        }
        let held_by_another = self.book.iter().any(|o| {
            *o.id() != *id
                && o.more()
                    .worktree
                    .as_ref()
                    .is_some_and(|ow| !ow.removed && ow.tree.path == w.tree.path)
        });
        if held_by_another {
            Keep::NotMine
        } else if super::worktrees::slot_number(&w.tree.path).is_some()
            && self.tree_pool.len() < self.config.concurrency
        {
            Keep::Pool
        } else {
            Keep::Remove
        }
    }

    /// A released tree goes into the pool while it has room, else it is removed (in a task of
    /// its own): no tree is left detached and unowned.
    pub(super) fn pool_or_remove(&mut self, tree: crate::git::Tree) {
        if self.tree_pool.iter().any(|t| t.path == tree.path) {
            // Never twice: two tasks would work in one directory.
            tracing::warn!(path = %tree.path.display(), "a worktree given back twice; pooled once");
            return;
        }
        if self.tree_pool.len() < self.config.concurrency {
            self.tree_pool.push(tree);
            return;
        }
        let Ok(repo) = self.repo() else { return };
        self.tasks.spawn(async move {
            let _ = blocking(&repo, move |repo| repo.remove_worktree(&tree)).await;
        });
    }

    /// A retried task's old tree: what it held is saved as `runs/<id>/retried-<ms>.patch`, then
    /// the tree is given up and its branch deleted — only if it still points where it did. A
    /// few git commands, run in a task of their own (a git that hangs on a slow filter must not
    /// hold the engine: `status` and a stop go on); the retried task is queued once they end
    /// ([`Msg::TreeRetired`]), so its next tree never meets the old one holding its branch.
    /// Until then the task is in `trees_leaving`: it is not queued, retried or discarded.
    pub(super) fn retire_tree(&mut self, id: &str, w: WorktreeState) {
        let Ok(repo) = self.repo_of(id) else {
            self.enqueue_or_advance(id);
            return;
        };
        let keep = self.keep_for(id, &w);
        let patch = self
            .ws
            .run_dir(id)
            .join(format!("retried-{}.patch", ledger::now_ms()));
        self.trees_leaving.insert(id.to_string());
        let (tx, id) = (self.tx.clone(), id.to_string());
        let stall = crate::fault::at("retire-stall", &id);
        self.tasks.spawn(async move {
            let retired = blocking(&repo, move |repo| {
                if stall {
                    // The injected fault `retire-stall`: a git step that never returns.
                    loop {
                        std::thread::sleep(std::time::Duration::from_secs(3600));
                    }
                }
                let text = w.diff_text(repo)?;
                if !text.is_empty() {
                    super::worktrees::write_in_runs(&patch, text.as_bytes())
                        .map_err(GitError::Io)?;
                }
                let kept = release_or_remove(repo, &w.tree, keep)?;
                if let Some(head) = &w.commit {
                    repo.delete_branch_at(&w.branch, head)?;
                }
                Ok(kept)
            })
            .await;
            let pooled = retired.unwrap_or_else(|e| {
                tracing::warn!(task = %id, "cannot give up the old worktree before the retry: {e}");
                None
            });
            let _ = tx.send(Msg::TreeRetired { task: id, pooled });
        });
    }
}

/// What becomes of a tree a task gives up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Keep {
    /// Back to the pool, for the next task.
    Pool,
    /// Removed.
    Remove,
    /// Left alone: another task holds the same directory now (a pooled tree it took after a
    /// crash cut this task's record short).
    NotMine,
}

/// The tree back to the pool (returned) or removed, as `keep` says; a tree that cannot be
/// released cleanly is removed. Blocking.
fn release_or_remove(
    repo: &Repo,
    tree: &crate::git::Tree,
    keep: Keep,
) -> Result<Option<crate::git::Tree>, GitError> {
    if !tree.path.exists() || keep == Keep::NotMine {
        return Ok(None);
    }
    if keep == Keep::Pool && tree.is_usable() && tree.release().is_ok() {
        return Ok(Some(tree.clone()));
    }
    repo.remove_worktree(tree)?;
    Ok(None)
}

/// Gives a task's tree up — back to the pool (`keep`), else removed — and deletes its branch
/// when told; recorded as `worktree_removed`, and the pooled tree handed to the engine.
pub(super) async fn give_up_tree(
    repo: &Repo,
    ledger: &Ledger,
    tx: &mpsc::UnboundedSender<Msg>,
    id: &str,
    w: &WorktreeState,
    delete_branch: bool,
    keep: Keep,
) {
    let (tree, branch) = (w.tree.clone(), w.branch.clone());
    let removed = blocking(repo, move |repo| {
        let kept = release_or_remove(repo, &tree, keep)?;
        if delete_branch {
            repo.delete_branch(&branch)?;
        }
        Ok(kept)
    })
    .await;
    match removed {
        Ok(kept) => {
            // The pool first, the record after: whoever reads the record may count on the tree
            // being free. (A tree another task took meanwhile is never given up in its place:
            // see `Keep::NotMine`.)
            if let Some(tree) = kept {
                let _ = tx.send(Msg::TreeFreed(tree));
            }
            let ev = Event::WorktreeRemoved {
                task: id.to_string(),
                branch_deleted: delete_branch,
            };
            let records = record(ledger, tx, ev).await;
            let _ = tx.send(Msg::TreeGivenUp {
                task: id.to_string(),
                records,
            });
        }
        Err(e) => {
            tracing::warn!(task = %id, "cannot remove the task's worktree: {e}");
            let _ = tx.send(Msg::TreeGivenUp {
                task: id.to_string(),
                records: vec![],
            });
        }
    }
}
