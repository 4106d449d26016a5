//! Crash recovery at start: attempts the ledger left open are closed (their process groups
//! killed when they provably still run), unfinished tasks are queued again, interrupted moves
//! finished, and unknown files in `running/` taken in.

use std::path::Path;

use super::*;

impl Engine {
    /// After a restart: close attempts that have no finish record (killing their process group
    /// if it provably still runs), re-queue unfinished tasks whose files are in `running/`,
    /// finish moves a crash interrupted, and take in unknown files found in `running/`.
    /// `last_heard_ms`: when the daemon before made its last record.
    pub(super) async fn recover(&mut self, last_heard_ms: u64) -> Result<(), DaemonError> {
        let grace = self.config.kill_grace;
        // First the processes the ledger knows, verified by start time and boot id ...
        let mut closing = Vec::new();
        for t in self.book.iter() {
            // An attempt with a start and no end: its task is `running`, or a stop that could
            // not wait for its work (past the stop's deadline) put the task back.
            let Some(open) = t.open_attempt() else {
                continue;
            };
            let alive = crate::process_group::reap_orphan_group(
                open.pid,
                open.start_ticks,
                open.boot_id.as_deref(),
                grace,
            )
            .await;
            let reason = if alive {
                "the daemon stopped while this attempt ran; its process group was still alive and was killed"
            } else {
                "the daemon stopped while this attempt ran"
            };
            // How long it ran: until now when its group was still alive; else until the later
            // of its output's last write and the daemon's last record (its supervisor stops it
            // when the daemon is gone) — the nearest traces of its end a crash or a stop's
            // cut-off leaves, not a zero that reads as "never ran".
            let ended_ms = if alive {
                Some(ledger::now_ms())
            } else {
                ["stdout", "stderr"]
                    .into_iter()
                    .map(|stream| {
                        self.ws.run_dir(t.id()).join(crate::workspace::attempt_file(
                            open.n,
                            &open.agent,
                            stream,
                        ))
                    })
                    .filter_map(|f| std::fs::symlink_metadata(f).ok()?.modified().ok())
                    .filter_map(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_millis() as u64)
                    .chain(Some(last_heard_ms).filter(|ms| *ms >= open.started_ms))
                    .max()
            };
            let ran = ended_ms
                .filter(|_| open.started_ms > 0)
                .map_or(Duration::ZERO, |end| {
                    Duration::from_millis(end.saturating_sub(open.started_ms))
                });
            closing.push(settling::interrupted_end(
                &self.ws,
                t.id(),
                open.n,
                &open.agent,
                reason,
                ran,
            ));
        }
        // ... then anything else an earlier daemon of this workspace left running (an agent
        // spawned just before a crash, before its start was recorded).
        let root = self.ws.root().to_path_buf();
        let leftovers = tokio::task::spawn_blocking(move || crate::reaper::kill_leftovers(&root))
            .await
            .unwrap_or(0);
        if leftovers > 0 {
            tracing::warn!(
                "stopped {leftovers} leftover process(es) of an earlier daemon of this workspace"
            );
        }
        let recs = self.ledger.append_all(closing).await?;
        self.apply(&recs);

        // Which files are in running/ right now (made again if someone removed it).
        let running = self
            .ws
            .open_sub("running")
            .map_err(|cause| DaemonError::Workspace {
                path: self.ws.running().display().to_string(),
                cause,
            })?;
        let mut present: HashSet<String> = running
            .names()
            .map_err(|cause| DaemonError::Workspace {
                path: self.ws.running().display().to_string(),
                cause,
            })?
            .into_iter()
            .filter_map(|n| n.into_string().ok())
            .filter(|n| inbox::is_candidate(n) || n.starts_with(claim::CLAIM_PREFIX))
            .collect();

        let mut claims = Vec::new();
        let mut requeue = Vec::new();
        let mut resettle = Vec::new();
        let mut merging = Vec::new();
        for t in self.book.iter() {
            // Where a crash can have left it: under its recorded name, or named for its id.
            let names = [
                t.file().to_string(),
                task_file::file_name(t.id(), ".json"),
                task_file::file_name(t.id(), ".md"),
            ];
            let found = names.iter().find(|n| present.contains(*n)).cloned();
            if let Some(name) = &found {
                present.remove(name);
            }
            match (t.phase(), found) {
                (Phase::Done { .. }, Some(name)) => self.finish_move(&name, true),
                (Phase::Failed { .. }, Some(name)) => self.finish_move(&name, false),
                // The attempt succeeded but `done` is not recorded (a crash in between, or a
                // damaged line): settle it from what the attempt left, without running it again.
                // (Only an attempt of this run: one before a retry ended the earlier run.)
                (Phase::Pending, found)
                    if t.attempts().last().is_some_and(|a| {
                        a.class == Some(Class::Ok) && a.n > t.more().retried_after
                    }) =>
                {
                    if let Some(name) = found
                        && *name != *t.file()
                    {
                        claims.push(Event::Claimed {
                            task: t.id().to_string(),
                            file: name,
                        });
                    }
                    resettle.push(t.shared_id().clone());
                }
                // Verified work on its way to its target: the merge goes on from the ledger's
                // last step.
                (Phase::Merging | Phase::MergeWaiting { .. }, found) => {
                    if let Some(name) = found
                        && *name != *t.file()
                    {
                        claims.push(Event::Claimed {
                            task: t.id().to_string(),
                            file: name,
                        });
                    }
                    merging.push(t.shared_id().clone());
                }
                (Phase::Pending | Phase::Requeued, Some(name)) => {
                    if *name != *t.file() {
                        claims.push(Event::Claimed {
                            task: t.id().to_string(),
                            file: name,
                        });
                    }
                    requeue.push(t.shared_id().clone());
                }
                // Its file is not in running/ (and not back in the inbox, where a stop puts a
                // requeued task's): someone removed it. The ledger has the task; the file is
                // written again and the task goes on (`dirigent cancel` drops it).
                (Phase::Pending | Phase::Requeued, None)
                    if self.ws.inbox().join(t.file()).symlink_metadata().is_err() =>
                {
                    let rebuilt = t.spec().map(|spec| {
                        task_file::rebuild_in_running(&running, &spec.fields, t.id(), t.file())
                    });
                    match rebuilt {
                        Some(Ok(name)) => {
                            tracing::warn!(
                                task = %t.id(),
                                "its task file was missing from running/; it was written again from the ledger"
                            );
                            if *name != *t.file() {
                                claims.push(Event::Claimed {
                                    task: t.id().to_string(),
                                    file: name,
                                });
                            }
                            requeue.push(t.shared_id().clone());
                        }
                        Some(Err(e)) => {
                            tracing::error!(task = %t.id(), "cannot write its task file again: {e}");
                            requeue.push(t.shared_id().clone());
                        }
                        None => requeue.push(t.shared_id().clone()),
                    }
                }
                _ => {}
            }
        }
        let recs = self.ledger.append_all(claims).await?;
        self.apply(&recs);
        for id in requeue {
            self.enqueue_or_advance(&id);
        }
        for id in resettle {
            self.resettle(&id);
        }
        for id in merging {
            self.recover_merge(&id).await;
        }
        self.recover_trees().await;
        // Files in running/ that the ledger does not know: claimed, not yet recorded.
        let mut unknown: Vec<String> = present.into_iter().collect();
        unknown.sort();
        let mut claimed = Vec::new();
        for name in unknown {
            let (stem, _) = fsutil::split_name(&name);
            if let Some(outcome) = self.book.outcome(stem) {
                // A finished task whose file move a crash interrupted (archived in memory).
                self.finish_move(&name, outcome == Outcome::Done);
                continue;
            }
            tracing::info!(file = %name, "found an unrecorded task file in running/; taking it in");
            let original = claim::original_name(&name).unwrap_or(&name).to_string();
            claimed.push(Claimed {
                claim_name: name,
                name: original,
            });
        }
        self.take_in(&running, claimed).await;
        Ok(())
    }

    /// A task that was being merged when the daemon stopped. The ledger's last merge step
    /// says where it was: after `merge_ready`, the target's ref tells whether the swap
    /// happened (then `merged` is recorded now, never a second commit); before it, the target
    /// was not touched and the merge starts over from the task's verified commit.
    async fn recover_merge(&mut self, id: &str) {
        use crate::state::MergeState;
        let Some(w) = self
            .book
            .get(id)
            .and_then(|t| t.more().worktree.as_deref().cloned())
        else {
            return;
        };
        self.live.merging(id);
        match w.merge {
            MergeState::Waiting { reason } => {
                if merging::goes_on_by_itself(&reason) {
                    self.queue_merge(id);
                }
            }
            MergeState::Ready {
                target,
                old: _,
                commit,
            } => {
                let Ok(repo) = self.repo() else {
                    return self.queue_merge(id);
                };
                let (t2, c2) = (target.clone(), commit.clone());
                let landed = tokio::task::spawn_blocking(move || {
                    let head = repo.branch_head(&t2)?;
                    match head {
                        Some(h) => {
                            Ok::<bool, crate::git::GitError>(h == c2 || repo.is_ancestor(&c2, &h)?)
                        }
                        None => Ok(false),
                    }
                })
                .await
                .unwrap_or(Ok(false))
                .unwrap_or(false);
                if landed {
                    tracing::info!(
                        task = id,
                        "its merge into `{target}` had happened before the daemon stopped"
                    );
                    let ev = Event::Merged {
                        task: id.to_string(),
                        target,
                        commit,
                    };
                    if self.record_now(ev).await {
                        self.finish_merged(id);
                    }
                } else {
                    self.queue_merge(id);
                }
            }
            MergeState::Merged { .. } => self.finish_merged(id),
            MergeState::Failed { reason, .. } => self.escalate(id, reason),
            // Discarded, but the daemon stopped before the task was cancelled: it is now.
            MergeState::Discarded => {
                self.live.stop_merging(id);
                self.discarding.insert(id.to_string());
                self.settle_cancelled(id);
            }
            MergeState::NotYet | MergeState::Started { .. } => self.queue_merge(id),
        }
    }

    /// Worktrees after a restart. A settled task whose tree was not given up yet (a crash cut it
    /// short) gives it up now — its branch too, when its work is merged or discarded (a discarded
    /// task's branch also when its tree was gone before the discard); a failed
    /// task's is kept until `keep_failed` is over. Pooled trees no task holds go back to the
    /// pool; any other directory under `.context/worktrees/` (a tree made just before a crash,
    /// before the ledger knew it) is removed, and git forgets trees whose directory is gone.
    async fn recover_trees(&mut self) {
        let settled: Vec<String> = self
            .book
            .iter()
            .filter(|t| {
                t.phase().is_terminal()
                    && t.more()
                        .worktree
                        .as_ref()
                        .is_some_and(|w| !w.removed || w.discard_pending)
            })
            .map(|t| t.id().to_string())
            .collect();
        for id in settled {
            self.tree_after_settled(&id);
        }
        let dir = self.ws.context().join("worktrees");
        let names: Vec<String> = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        // From the directories and from every path the ledger recorded: a slot whose directory
        // someone deleted is not made again for another task while its task still counts on it.
        let highest = names
            .iter()
            .filter_map(|n| super::worktrees::slot_number(Path::new(n)))
            .chain(
                self.book
                    .iter()
                    .filter_map(|t| t.more().worktree.as_ref())
                    .filter_map(|w| super::worktrees::slot_number(&w.tree.path)),
            )
            .max()
            .unwrap_or(0);
        self.next_slot = self.next_slot.max(highest);
        if names.is_empty() {
            return;
        }
        let Ok(repo) = self.repo() else { return };
        let name_of = |t: &crate::state::WorktreeState| {
            t.tree
                .path
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_string)
        };
        let held: HashSet<String> = self
            .book
            .iter()
            .filter_map(|t| {
                t.more()
                    .worktree
                    .as_deref()
                    .filter(|w| !w.removed)
                    .and_then(name_of)
            })
            .collect();
        // Given up by a task that finished: its git directory is known from the ledger.
        let mut released: HashMap<String, crate::git::Tree> = HashMap::new();
        for t in self.book.iter() {
            if let Some(w) = t.more().worktree.as_deref().filter(|w| w.removed)
                && let Some(name) = name_of(w)
                && !held.contains(&name)
            {
                released.insert(name, w.tree.clone());
            }
        }
        let room = self.config.concurrency;
        let mut to_pool = Vec::new();
        let mut unknown = Vec::new();
        let mut to_remove = Vec::new();
        for name in names {
            if held.contains(&name) {
                continue;
            }
            match released.remove(&name) {
                Some(tree) if to_pool.len() < room => to_pool.push(tree),
                // A pool's tree whose last task is no longer held in full (archived), or one
                // made just before a crash: git's own link says which it is.
                None if super::worktrees::slot_number(Path::new(&name)).is_some() => {
                    unknown.push(dir.join(&name))
                }
                _ => to_remove.push(dir.join(&name)),
            }
        }
        let pooled = tokio::task::spawn_blocking(move || {
            for path in unknown {
                match repo.linked_tree(&path) {
                    Ok(Some(tree)) if to_pool.len() < room => to_pool.push(tree),
                    _ => to_remove.push(path),
                }
            }
            let mut pooled = Vec::new();
            for tree in to_pool {
                if tree.is_usable() && tree.release().is_ok() {
                    pooled.push(tree);
                } else {
                    to_remove.push(tree.path);
                }
            }
            for path in to_remove {
                tracing::warn!(
                    "removing the worktree `{}`: no task holds it and the pool is full, or git no longer knows it as a worktree (made just before a crash, or its removal was cut short)",
                    path.display()
                );
                let gone = crate::git::Tree {
                    path,
                    git_dir: std::path::PathBuf::new(),
                };
                if let Err(e) = repo.remove_worktree(&gone) {
                    tracing::warn!("cannot remove it: {e}");
                }
            }
            let _ = repo.prune_worktrees();
            pooled
        })
        .await
        .unwrap_or_default();
        self.tree_pool.extend(pooled);
    }

    /// Moves a settled task's file out of `running/` (completing a move a crash interrupted).
    fn finish_move(&self, name: &str, done: bool) {
        let to = if done { Place::Done } else { Place::Failed };
        let (stem, _) = fsutil::split_name(name);
        if let Err(e) = task_file::settle(&self.ws, Place::Running, to, name, stem, None) {
            tracing::warn!(
                file = name,
                "cannot move a finished task file out of running/: {e}"
            );
        }
    }
}
