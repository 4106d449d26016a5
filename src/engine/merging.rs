//! Merging: the merge queue. A verified task's branch reaches its target here — one merge at a
//! time per target, in the order tasks were verified. Each merge replays the branch on the
//! target's current head (rebase, merge commit or squash), verifies the combined result again
//! when the target moved since the task's base, and then moves the target by compare-and-swap:
//! the target only ever points at verified commits, and a commit someone else put there
//! meanwhile is never lost. Where the target is checked out (the user's own checkout), it is
//! fast-forwarded only when clean; otherwise the task waits (`merge_waiting`) and says what to
//! do.
//!
//! Every step is a ledger event (`merge_started`, `merge_ready`, `merged`, `merge_failed`), so
//! recovery after a crash knows whether the target moved (see `recovery.rs`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::tree_release::{Keep, give_up_tree};
use super::*;
use crate::editing::{MergeMode, MergeStrategy};
use crate::git::{FastForward, GitError, Repo};
use crate::state::WorktreeState;

/// How many times a merge starts over because its target moved between the replay and the swap.
const MERGE_TRIES: u32 = 3;

/// Tasks waiting to be merged, per target, and the targets with a merge in progress.
#[derive(Default)]
pub(super) struct MergeQueue {
    waiting: BTreeMap<String, VecDeque<String>>,
    busy: BTreeSet<String>,
    /// The task whose merge job runs, by task: it must not be queued, cancelled or discarded
    /// until the job ends.
    in_flight: BTreeMap<String, String>,
}

impl MergeQueue {
    /// Whether a merge job of `id` runs now.
    pub(super) fn is_merging(&self, id: &str) -> bool {
        self.in_flight.contains_key(id)
    }

    /// Takes `id` out of its target's queue (a cancel or discard while it waits its turn).
    pub(super) fn forget(&mut self, id: &str) {
        for queue in self.waiting.values_mut() {
            queue.retain(|t| t != id);
        }
        self.waiting.retain(|_, q| !q.is_empty());
    }
}

/// How one merge ended.
pub(super) enum MergeEnd {
    /// The target points at the commit that holds the task's work.
    Merged,
    /// Not now: the user's checkout of the target is not clean (or its head moved under us).
    Waiting(String),
    /// A conflict, or `verify` failing on the combined result: recorded as `merge_failed`.
    Failed(String),
    /// The daemon is stopping; the merge runs again after the restart.
    Stopped,
    /// A conflict an agent resolves next (`on_conflict: agent`): the task runs again.
    Resolve,
}

/// The prefix of a `merge_waiting` reason that only `dirigent merge` ends (`merge: manual`).
pub(super) const MANUAL_PREFIX: &str = crate::editing::MANUAL_MERGE;

/// How a wait for a checkout with uncommitted changes begins: it ends by itself (tried again
/// every rescan, recorded once), as does one the user queued with `dirigent merge` and one whose
/// target kept moving. Every other wait (`merge: manual`, git refusing the fast-forward) needs
/// `dirigent merge`.
const DIRTY_PREFIX: &str = "the checkout of `";
const QUEUED_PREFIX: &str = "queued for merging";
const MOVING: &str = "kept moving";
/// How a wait for room (the disk, descriptors) begins: it ends by itself.
const EXHAUSTED_PREFIX: &str = "out of room: ";

/// Whether a `merge_waiting` task is tried again without being asked.
pub(super) fn goes_on_by_itself(reason: &str) -> bool {
    reason.starts_with(DIRTY_PREFIX)
        || reason.starts_with(QUEUED_PREFIX)
        || reason.starts_with(EXHAUSTED_PREFIX)
        || reason.contains(MOVING)
}

struct MergeJob {
    repo: Repo,
    ws: Workspace,
    task: String,
    title: String,
    state: WorktreeState,
    target: String,
    commit: String,
    strategy: MergeStrategy,
    verify: Vec<Vec<String>>,
    limit: Duration,
    grace: Duration,
    stop: watch::Receiver<bool>,
    ledger: Ledger,
    tx: mpsc::UnboundedSender<Msg>,
    /// Whether the tree goes back to the pool once merged (else it is removed).
    pool_room: bool,
    /// The workspace's place in the tree, where `verify` runs.
    dir: std::path::PathBuf,
    /// A conflict goes to an agent (`on_conflict: agent`, not tried yet for this task).
    resolve: bool,
    /// `on_conflict: agent` is set (tried or not): a failed merge's advice leaves it out.
    agent_resolves: bool,
    /// The workflow run the task is a phase's task of: its retry is the run's, which resumes it.
    run: Option<String>,
}

impl Engine {
    /// A task's attempt passed in its worktree: its branch goes where `merge:` says.
    pub(super) fn after_verified(&mut self, id: &str, report: AttemptReport) {
        let Some(t) = self.book.get(id) else { return };
        let Some(spec) = t.spec() else { return };
        let settings = self.editing_of(&spec, &self.agent_verify(id));
        // A task of the fleet: its work goes back to its node (as a branch) once it settles.
        if self.fleet_edit(id).is_some() {
            return self.settle_done(id, report);
        }
        match settings.merge {
            MergeMode::None => self.settle_done(id, report),
            MergeMode::Manual => {
                self.live.merging(id);
                let branch = t
                    .more()
                    .worktree
                    .as_ref()
                    .map_or(String::new(), |w| w.branch.clone());
                let target = t
                    .more()
                    .worktree
                    .as_ref()
                    .and_then(|w| w.target.clone())
                    .unwrap_or_else(|| "its target".into());
                let reason = format!(
                    "{MANUAL_PREFIX}: review `{branch}` (`dirigent diff {id}`), then `dirigent merge {id}` to merge it into `{target}`, or `dirigent discard {id}`"
                );
                self.record_later(vec![Event::MergeWaiting {
                    task: id.to_string(),
                    reason,
                }]);
            }
            MergeMode::Auto => self.queue_merge(id),
        }
    }

    /// The `verify` of the agent of the task's last attempt.
    fn agent_verify(&self, id: &str) -> Vec<Vec<String>> {
        self.book
            .get(id)
            .and_then(|t| t.attempts().last())
            .and_then(|a| self.config.agent_for(&a.agent))
            .map(|a| a.verify.clone())
            .unwrap_or_default()
    }

    /// Puts a task in its target's merge queue and starts what can start.
    pub(super) fn queue_merge(&mut self, id: &str) {
        if self.merges.is_merging(id) || self.live.is_finishing(id) {
            return;
        }
        match self.book.get(id) {
            Some(t) if !t.phase().is_terminal() => {}
            _ => return,
        }
        let Some(target) = self.target_of(id) else {
            self.escalate(
                id,
                "no branch to merge into: the checkout was on a detached HEAD when the task started; give the task `merge_into:`".into(),
            );
            return;
        };
        self.live.merging(id);
        let queue = self.merges.waiting.entry(target).or_default();
        if !queue.iter().any(|t| t == id) {
            queue.push_back(id.to_string());
        }
        self.pump_merges();
    }

    fn target_of(&self, id: &str) -> Option<String> {
        self.book.get(id)?.more().worktree.as_ref()?.target.clone()
    }

    /// Starts the next merge of every target that has none in progress.
    pub(super) fn pump_merges(&mut self) {
        if !self.accepting {
            return;
        }
        let free: Vec<String> = self
            .merges
            .waiting
            .keys()
            .filter(|t| !self.merges.busy.contains(*t))
            .cloned()
            .collect();
        for target in free {
            let Some(id) = self
                .merges
                .waiting
                .get_mut(&target)
                .and_then(VecDeque::pop_front)
            else {
                continue;
            };
            if self
                .merges
                .waiting
                .get(&target)
                .is_some_and(VecDeque::is_empty)
            {
                self.merges.waiting.remove(&target);
            }
            if let Some(job) = self.merge_job(&id, &target) {
                self.merges.busy.insert(target.clone());
                self.merges.in_flight.insert(id.clone(), target.clone());
                self.tasks.spawn(async move {
                    let (task, target, tx) = (job.task.clone(), job.target.clone(), job.tx.clone());
                    let end = run_merge(job).await;
                    let _ = tx.send(Msg::MergeEnded { task, target, end });
                });
            }
        }
    }

    fn merge_job(&mut self, id: &str, target: &str) -> Option<MergeJob> {
        let repo = match self.repo() {
            Ok(r) => r,
            Err(e) => {
                self.escalate(id, format!("cannot merge: {e}"));
                return None;
            }
        };
        let inside = self.inside(&repo);
        let t = self.book.get(id)?;
        let state = t.more().worktree.as_deref()?.clone();
        let t_dir = state.tree.path.join(inside);
        let resolutions = state.resolutions;
        let Some(commit) = state.commit.clone() else {
            self.escalate(
                id,
                "cannot merge: no verified commit on the task's branch".into(),
            );
            return None;
        };
        let spec = t.spec()?;
        let settings = self.editing_of(&spec, &self.agent_verify(id));
        let limit = spec
            .fields
            .timeout
            .map_or(Duration::from_secs(30 * 60), |d| d.0);
        Some(MergeJob {
            repo,
            ws: self.ws.clone(),
            task: id.to_string(),
            title: t.title().to_string(),
            state,
            target: target.to_string(),
            commit,
            strategy: settings.merge_strategy,
            verify: settings.verify,
            limit,
            grace: self.config.kill_grace,
            stop: self.side_stop.subscribe(),
            ledger: self.ledger.clone(),
            tx: self.tx.clone(),
            pool_room: self.tree_pool.len() < self.config.concurrency,
            dir: t_dir,
            resolve: settings.on_conflict == crate::editing::OnConflict::Agent && resolutions == 0,
            agent_resolves: settings.on_conflict == crate::editing::OnConflict::Agent,
            run: self.run_of_child(id),
        })
    }

    /// A merge ended: the task is done, waits, or escalates; the target's next merge starts.
    pub(super) fn merge_ended(&mut self, id: &str, target: &str, end: MergeEnd) {
        self.merges.busy.remove(target);
        self.merges.in_flight.remove(id);
        if self.book.get(id).is_none_or(|t| t.phase().is_terminal()) {
            self.pump_merges();
            return;
        }
        match end {
            MergeEnd::Merged => self.finish_merged(id),
            MergeEnd::Waiting(reason) => {
                if let Some(what) = reason.strip_prefix(EXHAUSTED_PREFIX) {
                    self.pause(what.to_string());
                }
                let same = matches!(
                    self.book.get(id).map(|t| t.phase()),
                    Some(Phase::MergeWaiting { reason: r }) if *r == reason
                );
                if !same || self.merge_answer_owed.remove(id) {
                    self.record_later(vec![Event::MergeWaiting {
                        task: id.to_string(),
                        reason,
                    }]);
                }
            }
            MergeEnd::Failed(reason) => self.escalate(id, reason),
            MergeEnd::Resolve => {
                tracing::info!(
                    task = id,
                    "its branch conflicts with `{target}`; an agent resolves it"
                );
                self.live.stop_merging(id);
                self.enqueue(id);
            }
            MergeEnd::Stopped => {}
        }
        self.pump_merges();
    }

    /// The task's work is on its target: its result is written and it is done; its worktree
    /// and branch go.
    pub(super) fn finish_merged(&mut self, id: &str) {
        let Some(t) = self.book.get(id) else { return };
        let Some(a) = t.attempts().last().cloned() else {
            return;
        };
        let report = match self.config.agent_for(&a.agent) {
            Some(agent) => spawn::report_from_capture(&self.ws, id, &a, &agent),
            // Its agent left the config: the work is merged all the same; its result text
            // cannot be read the agent's way, so the task is done without one.
            None => AttemptReport::not_run(
                crate::judge::Verdict::fail(Class::Ok, "merged"),
                None,
                Duration::ZERO,
                self.ws
                    .run_dir(id)
                    .join(crate::workspace::attempt_file(a.n, &a.agent, "stdout")),
                self.ws
                    .run_dir(id)
                    .join(crate::workspace::attempt_file(a.n, &a.agent, "stderr")),
            ),
        };
        self.live.stop_merging(id);
        self.settle_done(id, report);
    }

    /// Merges that wait for a clean checkout are tried again (on the rescan tick).
    pub(super) fn retry_waiting_merges(&mut self) {
        let waiting: Vec<String> = self
            .book
            .iter()
            .filter(
                |t| matches!(t.phase(), Phase::MergeWaiting { reason } if goes_on_by_itself(reason)),
            )
            .map(|t| t.id().to_string())
            .collect();
        for id in waiting {
            if self.live.contains(&id) && !self.live.is_finishing(&id) {
                self.queue_merge(&id);
            }
        }
    }

    /// `dirigent merge ID`: a task waiting to be merged goes into its target's queue now.
    pub(super) fn merge_request(&mut self, id: &str) -> crate::protocol::Response {
        use crate::protocol::{Failure, Response};
        let Some(t) = self.book.get(id) else {
            return Response::fail(
                Failure::NotFound,
                format!("no task `{id}`; `dirigent status` lists the tasks"),
            );
        };
        match t.phase() {
            Phase::MergeWaiting { .. } if self.discarding.contains(id) => Response::fail(
                Failure::Conflict,
                format!("task `{id}` is being discarded; there is nothing to merge"),
            ),
            Phase::MergeWaiting { .. } => {
                let target = self.target_of(id).unwrap_or_default();
                if self.merges.is_merging(id) {
                    // The client follows this merge's end: it gets a record even if the merge
                    // ends waiting for the same reason as before (else it would wait for good).
                    self.merge_answer_owed.insert(id.to_string());
                    return Response::fail(
                        Failure::Conflict,
                        format!("task `{id}` is being merged now"),
                    );
                }
                // Recorded, so that a restart goes on merging it instead of waiting again.
                self.record_later(vec![Event::MergeWaiting {
                    task: id.to_string(),
                    reason: format!("queued for merging into `{target}` (`dirigent merge {id}`)"),
                }]);
                self.queue_merge(id);
                Response::ok(format!(
                    "merging `{id}` into `{target}`; `dirigent status {id}` shows how it went"
                ))
            }
            Phase::Merging => Response::fail(
                Failure::Conflict,
                format!("task `{id}` is being merged now"),
            ),
            // Done: merged already, or its branch kept for the user (`merge: none`).
            Phase::Done { .. } if t.more().worktree.is_some() => {
                let w = t.more().worktree.as_ref().expect("guarded");
                let said = match &w.merge {
                    crate::state::MergeState::Merged { target, commit } => format!(
                        "task `{id}` is merged already: into `{target}` at {}; nothing to do",
                        &commit[..commit.len().min(12)]
                    ),
                    _ => format!(
                        "task `{id}` is done without a merge (`merge: none`): its branch `{}` is kept for you — merge it with git (`git merge {}`)",
                        w.branch, w.branch
                    ),
                };
                Response::fail(Failure::Conflict, said)
            }
            // Failed (a conflict, a check): what can be done is retry it, or throw it away.
            Phase::Failed { reason, .. } if t.more().worktree.is_some() => Response::fail(
                Failure::Conflict,
                format!(
                    "task `{id}` failed ({}) and has nothing to merge; `dirigent retry {id}` runs it again, `dirigent discard {id}` throws its branch away",
                    reason.lines().next().unwrap_or("")
                ),
            ),
            other => Response::fail(
                Failure::Conflict,
                format!(
                    "task `{id}` is in state `{}`; only a task waiting to be merged (`merge_waiting`) can be merged",
                    other.label()
                ),
            ),
        }
    }
}

/// Runs one merge (see the module doc). Git steps run on the blocking pool; each step is
/// recorded before the next.
async fn run_merge(job: MergeJob) -> MergeEnd {
    for _ in 0..MERGE_TRIES {
        match merge_once(&job).await {
            Ok(Some(end)) => return end,
            Ok(None) => continue, // the target moved between the replay and the swap
            Err(e) => {
                // Out of room is no fault of the work: the merge waits and goes on by itself.
                if let Some(what) = e.exhausted() {
                    return MergeEnd::Waiting(format!(
                        "{EXHAUSTED_PREFIX}{what}; the merge into `{}` goes on when there is room ({e})",
                        job.target
                    ));
                }
                return MergeEnd::Failed(format!("the merge into `{}` failed: {e}", job.target));
            }
        }
    }
    MergeEnd::Waiting(format!(
        "`{}` kept moving while the merge ran; it is tried again shortly, or run `dirigent merge {}`",
        job.target, job.task
    ))
}

/// Runs `f` with the job's repository on the blocking pool.
pub(super) async fn blocking<T: Send + 'static>(
    repo: &Repo,
    f: impl FnOnce(&Repo) -> Result<T, GitError> + Send + 'static,
) -> Result<T, GitError> {
    let repo = repo.clone();
    tokio::task::spawn_blocking(move || f(&repo))
        .await
        .unwrap_or_else(|_| Err(GitError::Io(std::io::Error::other("a git step panicked"))))
}

/// Writes `events` and hands them to the engine; `false` when the ledger refused them.
async fn note(job: &MergeJob, ev: Event) -> bool {
    let records = record(&job.ledger, &job.tx, ev).await;
    let ok = !records.is_empty();
    let _ = job.tx.send(Msg::Recorded(records));
    ok
}

/// One try: `Ok(None)` when the target moved before the swap.
async fn merge_once(job: &MergeJob) -> Result<Option<MergeEnd>, GitError> {
    let target = job.target.clone();
    let tree = job.state.tree.clone();
    let own = tree.path.clone();
    let t2 = target.clone();
    let checkout = blocking(&job.repo, move |r| {
        Ok(r.checked_out_in(&t2)?
            .filter(|dir| dir.canonicalize().ok() != own.canonicalize().ok()))
    })
    .await?;
    if let Some(dir) = checkout.clone() {
        let d = dir.clone();
        if !blocking(&job.repo, move |r| r.is_clean(&d)).await? {
            return Ok(Some(MergeEnd::Waiting(format!(
                "the checkout of `{target}` at {} has uncommitted changes, and dirigent never touches them; commit or stash them — the merge is tried again on its own every `inbox_rescan` (30 s unless configured), or at once with `dirigent merge {}`",
                dir.display(),
                job.task
            ))));
        }
    }
    let t2 = target.clone();
    let Some(onto) = blocking(&job.repo, move |r| r.branch_head(&t2)).await? else {
        return Err(GitError::NoSuchBranch { branch: target });
    };
    if !note(
        job,
        Event::MergeStarted {
            task: job.task.clone(),
            target: target.clone(),
            onto: onto.clone(),
        },
    )
    .await
    {
        return Ok(Some(MergeEnd::Stopped));
    }
    let (commit, strategy, title, task) = (
        job.commit.clone(),
        job.strategy,
        job.title.clone(),
        job.task.clone(),
    );
    let (tree2, onto2) = (tree.clone(), onto.clone());
    let replayed = blocking(
        &job.repo,
        move |r| -> Result<Result<String, crate::git::Conflict>, GitError> {
            tree2.abort_rebase()?;
            tree2.move_to(&commit)?;
            match strategy {
                MergeStrategy::Rebase => {
                    if r.is_ancestor(&onto2, &commit)? {
                        return Ok(Ok(commit));
                    }
                    match tree2.rebase_onto(&onto2)? {
                        Ok(()) => Ok(Ok(tree2.head()?)),
                        Err(c) => Ok(Err(c)),
                    }
                }
                MergeStrategy::Merge | MergeStrategy::Squash => {
                    let merged = match r.merge_trees(&onto2, &commit)? {
                        Ok(t) => t,
                        Err(c) => return Ok(Err(c)),
                    };
                    let new = if strategy == MergeStrategy::Merge {
                        let msg = format!(
                            "Merge {}: {title}\n\nDirigent-Task: {task}\n",
                            crate::git::branch_for(&task)?
                        );
                        r.commit_tree(&merged, &[&onto2, &commit], &msg)?
                    } else {
                        let msg = r.message(&commit)?;
                        r.commit_tree(&merged, &[&onto2], msg.trim_end())?
                    };
                    tree2.move_to(&new)?;
                    Ok(Ok(new))
                }
            }
        },
    )
    .await?;
    let new = match replayed {
        Ok(new) => new,
        Err(conflict) => {
            let reason = format!(
                "`{}` conflicts with `{target}` (changed since the task began) in {} file{}: {}{}\n\n{}",
                job.state.branch,
                conflict.files.len(),
                if conflict.files.len() == 1 { "" } else { "s" },
                crate::terminal::printable(&conflict.files.join(", ")),
                // While an agent resolves it, the reason only says what conflicts.
                if job.resolve {
                    String::new()
                } else {
                    format!(
                        " — {}",
                        next_steps(&job.task, job.run.as_deref(), &target, !job.agent_resolves)
                    )
                },
                crate::escalate::fenced(&conflict.hunks)
            );
            note(
                job,
                Event::MergeFailed {
                    task: job.task.clone(),
                    class: Class::Conflict,
                    reason: reason.clone(),
                    files: conflict.files,
                    resolve: job.resolve.then(|| target.clone()),
                },
            )
            .await;
            return Ok(Some(if job.resolve {
                MergeEnd::Resolve
            } else {
                MergeEnd::Failed(reason)
            }));
        }
    };
    // The target moved since the task's base: the combined result is verified before the
    // target may point at it.
    if onto != job.state.base && !job.verify.is_empty() {
        match verify_merged(job).await {
            Ok(()) => {}
            Err(None) => return Ok(Some(MergeEnd::Stopped)),
            Err(Some(why)) => {
                let reason = format!(
                    "`{}` merges onto `{target}`, but the combined result fails its check — {why}. {}",
                    job.state.branch,
                    next_steps(&job.task, job.run.as_deref(), &target, false)
                );
                note(
                    job,
                    Event::MergeFailed {
                        task: job.task.clone(),
                        class: Class::Verify,
                        reason: reason.clone(),
                        files: vec![],
                        resolve: None,
                    },
                )
                .await;
                return Ok(Some(MergeEnd::Failed(reason)));
            }
        }
    }
    if !note(
        job,
        Event::MergeReady {
            task: job.task.clone(),
            target: target.clone(),
            old: onto.clone(),
            commit: new.clone(),
        },
    )
    .await
    {
        return Ok(Some(MergeEnd::Stopped));
    }
    // Where the target is checked out is asked again now: the user may have switched to it
    // (or started a rebase of it) while the merge was verified.
    let (t2, old2, new2, own) = (
        target.clone(),
        onto.clone(),
        new.clone(),
        job.state.tree.path.clone(),
    );
    let swapped = blocking(&job.repo, move |r| {
        let checkout = r
            .checked_out_in(&t2)?
            .filter(|dir| dir.canonicalize().ok() != own.canonicalize().ok());
        Ok(match &checkout {
            Some(dir) => (
                Some(dir.clone()),
                r.fast_forward_checkout(dir, &old2, &new2)?,
            ),
            None if r.update_branch(&t2, &new2, &old2)? => (None, FastForward::Done),
            None => (None, FastForward::Moved),
        })
    })
    .await?;
    match swapped {
        (_, FastForward::Done) => {}
        (_, FastForward::Moved) => return Ok(None),
        (dir, FastForward::Dirty) => {
            return Ok(Some(MergeEnd::Waiting(format!(
                "the checkout of `{target}` at {} has uncommitted changes (or a rebase in progress), and dirigent never touches them; commit or stash them — the merge is tried again on its own every `inbox_rescan` (30 s unless configured), or at once with `dirigent merge {}`",
                dir.map(|d| d.display().to_string()).unwrap_or_default(),
                job.task
            ))));
        }
        (dir, FastForward::Refused(why)) => {
            return Ok(Some(MergeEnd::Waiting(format!(
                "git refused to fast-forward the checkout of `{target}` at {} ({why}); move what is in the way, then `dirigent merge {}`",
                dir.map(|d| d.display().to_string()).unwrap_or_default(),
                job.task
            ))));
        }
    }
    note(
        job,
        Event::Merged {
            task: job.task.clone(),
            target,
            commit: new,
        },
    )
    .await;
    // The tree is given up before the task is done, so a task started right after finds it
    // in the pool.
    let keep = if job.pool_room && super::worktrees::slot_number(&job.state.tree.path).is_some() {
        Keep::Pool
    } else {
        Keep::Remove
    };
    give_up_tree(
        &job.repo,
        &job.ledger,
        &job.tx,
        &job.task,
        &job.state,
        true,
        keep,
    )
    .await;
    Ok(Some(MergeEnd::Merged))
}

/// What the user can do about work that did not land, said in the reason where they look: run
/// it again on the target as it is now — a workflow run's task by retrying the run, which
/// resumes it (retried alone, the run would stay failed) — or (a conflict, where no agent
/// resolves them yet) let the agent resolve the next one.
fn next_steps(task: &str, run: Option<&str>, target: &str, suggest_agent: bool) -> String {
    let retry = match run {
        Some(run) => format!(
            "`dirigent retry {run}` resumes the workflow run from this phase, running `{task}` again on `{target}` as it is now"
        ),
        None => format!("`dirigent retry {task}` runs it again on `{target}` as it is now"),
    };
    if suggest_agent {
        format!("{retry}; `on_conflict: agent` lets the agent resolve conflicts")
    } else {
        retry
    }
}

/// Runs `verify` on the merged result in the task's tree: `Err(None)` when the daemon stopped
/// it, `Err(Some(why))` when it failed.
async fn verify_merged(job: &MergeJob) -> Result<(), Option<String>> {
    let log = job.ws.run_dir(&job.task).join("merge.verify.log");
    let _ = std::fs::remove_file(&log);
    // As after an attempt: the check sees what lands, not what only the work's own ignore
    // rules hide.
    let dropped = if job.verify.is_empty() {
        Vec::new()
    } else {
        let (tree, repo) = (job.state.tree.clone(), job.repo.clone());
        match tokio::task::spawn_blocking(move || tree.drop_hidden_by_work(&repo)).await {
            Ok(Ok(dropped)) => dropped,
            Ok(Err(e)) => {
                tracing::warn!(task = %job.task, "cannot tell which ignored files only the work's own rules hide; verify sees them all: {e}");
                Vec::new()
            }
            Err(_) => Vec::new(),
        }
    };
    for argv in &job.verify {
        let limits = crate::side_command::SideLimits {
            limit: job.limit,
            stop: job.stop.clone(),
            cancel: None,
            grace: job.grace,
            dir: Some((job.dir.clone(), super::worktrees::tree_env(&job.state))),
            task: Some(job.task.clone()),
        };
        let end = crate::side_command::run_logged(&job.ws, argv, &log, limits).await;
        match end {
            crate::side_command::CommandEnd::Exited(s) if s.success() => continue,
            crate::side_command::CommandEnd::Stopped => return Err(None),
            crate::side_command::CommandEnd::Exited(s) => {
                return Err(Some(format!(
                    "`{}` failed ({s}){}; its output is in {}",
                    crate::terminal::shown_command(argv),
                    super::work_check::ran_without(&dropped),
                    log.display()
                )));
            }
            crate::side_command::CommandEnd::TimedOut => {
                return Err(Some(format!(
                    "`{}` ran out of time",
                    crate::terminal::shown_command(argv)
                )));
            }
            crate::side_command::CommandEnd::CouldNotStart(e) => return Err(Some(e)),
        }
    }
    Ok(())
}
