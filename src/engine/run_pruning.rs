//! Giving up old run directories: `.context/runs/<id>/` holds a task's prompts, captured output
//! and logs — up to `max_output` per attempt — and a daemon left running for months would fill
//! its disk with them. Once an hour (and soon after start) the run directories of tasks that
//! finished longer than `keep_runs` ago (30 days by default) are removed. Results (`outbox/`, a
//! task's `output`) are never touched, and neither are saved patches (`*.patch`: a failed task's
//! changes, which its report points to) — they stay where they were.
//!
//! Who does what: a blocking job lists the directories old enough (`old_run_dirs`); the loop,
//! which alone decides what runs, keeps those of finished tasks (`may_prune`, a pure decision)
//! and moves each into `runs/.pruning/` with one rename — so a retry that starts the task again
//! meanwhile writes into a fresh directory, never into one being emptied; a second blocking job
//! empties `.pruning/` (`empty_trash`), also what a crash left there. Every step goes through no
//! link: an agent can write into `.context/runs/`, and a link it planted there must not lead the
//! removal elsewhere.

use std::time::Duration;

use super::*;
use crate::confined::{Dir, Kind};

/// How often the run directories are looked over.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// The most directories given up in one pass: the first pass over a year of them does not hold
/// the loop for long; the rest go in the passes after.
const PRUNE_BATCH: usize = 1000;

/// Below `runs/`: where directories wait for their files to be removed.
const TRASH: &str = ".pruning";

/// How deep a directory an agent made inside a run directory is followed when it is removed.
const MAX_DEPTH: usize = 16;

/// What the book says of the task a run directory belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Finished {
    /// Not finished (queued, running, waiting to be merged, retried), or not known: kept.
    No,
    /// Finished at this time (Unix ms).
    At(u64),
    /// Finished so long ago that only its outcome is held (archived).
    LongAgo,
}

/// Whether a run directory last changed at `dir_ms` (Unix ms) may go at `now_ms`: its task
/// finished, and both its end and the directory's last change are at least `keep` old.
pub(super) fn may_prune(finished: Finished, dir_ms: u64, now_ms: u64, keep: Duration) -> bool {
    let keep_ms = u64::try_from(keep.as_millis()).unwrap_or(u64::MAX);
    let old_enough = |at: u64| now_ms.checked_sub(at).is_some_and(|age| age >= keep_ms);
    match finished {
        Finished::No => false,
        Finished::At(end) => old_enough(end.max(dir_ms)),
        Finished::LongAgo => old_enough(dir_ms),
    }
}

/// What one pass removed.
#[derive(Debug, Default)]
pub(super) struct Emptied {
    dirs: usize,
    files: usize,
    /// Patches moved back out of the directories given up.
    patches_kept: usize,
}

impl Engine {
    /// On the rescan timer: once an hour, look for run directories to give up.
    pub(super) fn prune_runs_if_due(&mut self, now: Instant) {
        if self.pruning || now < self.prune_due {
            return;
        }
        self.prune_due = later(now, PRUNE_EVERY);
        let Some(keep) = self.config.keep_runs else {
            return;
        };
        self.pruning = true;
        let (ws, tx) = (self.ws.clone(), self.tx.clone());
        self.tasks.spawn(async move {
            let cutoff = ledger::now_ms().saturating_sub(keep.as_millis() as u64);
            let old = tokio::task::spawn_blocking(move || old_run_dirs(&ws, cutoff))
                .await
                .unwrap_or_default();
            let _ = tx.send(Msg::RunsOld(old));
        });
    }

    /// The directories old enough (name, last change in Unix ms): those of finished tasks are
    /// moved into the trash here, in the loop, and the trash is emptied in the background.
    pub(super) fn on_runs_old(&mut self, old: Vec<(String, u64)>) {
        let Some(keep) = self.config.keep_runs else {
            self.pruning = false;
            return;
        };
        let now = ledger::now_ms();
        let given_up = match self.ws.open_sub("runs") {
            Ok(runs) => self.give_up(&runs, old, now, keep),
            Err(e) => {
                tracing::warn!("cannot open .context/runs to remove old output: {e}");
                0
            }
        };
        let (ws, tx) = (self.ws.clone(), self.tx.clone());
        self.tasks.spawn(async move {
            let emptied = tokio::task::spawn_blocking(move || empty_trash(&ws))
                .await
                .unwrap_or_default();
            let _ = tx.send(Msg::RunsPruned(emptied));
        });
        if given_up > 0 {
            tracing::debug!(given_up, "run directories moved out to be removed");
        }
    }

    /// Moves the run directories of finished tasks among `old` into the trash; returns how many.
    fn give_up(&self, runs: &Dir, old: Vec<(String, u64)>, now: u64, keep: Duration) -> usize {
        let Ok(trash) = runs.child(TRASH, Some(0o700)) else {
            return 0;
        };
        let mut moved = 0;
        for (id, dir_ms) in old {
            if moved >= PRUNE_BATCH {
                break;
            }
            if !may_prune(self.finished(&id), dir_ms, now, keep) {
                continue;
            }
            // `<id>~<ms>`: the patches kept go back by the id (ids have no `~`), and an entry
            // a pass could not empty never blocks the next one's.
            match runs.rename_noreplace(&id, &trash, &format!("{id}~{now}")) {
                Ok(()) => moved += 1,
                Err(e) => tracing::debug!(task = %id, "cannot move its run directory out: {e}"),
            }
        }
        moved
    }

    /// Whether task `id` has finished, as far as its run directory is concerned: a workflow
    /// run's task counts as finished only once its run has.
    fn finished(&self, id: &str) -> Finished {
        // Any task whose id this one's extends (`run` of `run.phase.1`, also for run ids with
        // a `.` of their own) that has not finished keeps it.
        let owner_unfinished = id.match_indices('.').any(|(at, _)| {
            let run = &id[..at];
            self.book.contains(run) && self.finished_itself(run) == Finished::No
        });
        if owner_unfinished {
            return Finished::No;
        }
        self.finished_itself(id)
    }

    fn finished_itself(&self, id: &str) -> Finished {
        if self.live.contains(id) {
            return Finished::No;
        }
        match self.book.get(id).map(|t| t.phase()) {
            Some(Phase::Done { finished_ms, .. } | Phase::Failed { finished_ms, .. }) => {
                Finished::At(*finished_ms)
            }
            Some(_) => Finished::No,
            None if self.book.outcome(id).is_some() => Finished::LongAgo,
            None => Finished::No,
        }
    }

    /// A pass ended.
    pub(super) fn on_runs_pruned(&mut self, emptied: Emptied) {
        self.pruning = false;
        if emptied.dirs > 0 {
            tracing::info!(
                dirs = emptied.dirs,
                files = emptied.files,
                patches_kept = emptied.patches_kept,
                "removed the run directories (prompts, captured output, logs) of {} task(s) finished longer ago than `keep_runs`; results and saved patches stay",
                emptied.dirs
            );
        }
    }
}

/// The run directories (not the trash) that last changed before `cutoff_ms`, oldest first —
/// all of them: the loop keeps those of finished tasks and gives up at most [`PRUNE_BATCH`], so
/// directories never to be pruned (a task waiting for weeks to be merged) do not hold a place.
fn old_run_dirs(ws: &Workspace, cutoff_ms: u64) -> Vec<(String, u64)> {
    let Ok(runs) = ws.open_sub("runs") else {
        return Vec::new();
    };
    let mut old: Vec<(String, u64)> = runs
        .names()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|n| n.into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .filter(|n| runs.kind(n) == Some(Kind::Dir))
        .filter_map(|n| {
            let at = runs
                .modified(&n)?
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?;
            let ms = u64::try_from(at.as_millis()).ok()?;
            (ms < cutoff_ms).then_some((n, ms))
        })
        .collect();
    old.sort_by_key(|(_, ms)| *ms);
    old
}

/// Removes what waits in `runs/.pruning/`: each directory's files, except its patches, which go
/// back to the task's run directory.
fn empty_trash(ws: &Workspace) -> Emptied {
    let mut emptied = Emptied::default();
    let Ok(runs) = ws.open_sub("runs") else {
        return emptied;
    };
    let Ok(trash) = runs.child(TRASH, None) else {
        return emptied;
    };
    for name in trash.names().unwrap_or_default() {
        let Ok(name) = name.into_string() else {
            continue;
        };
        let Ok(dir) = trash.child(&name, None) else {
            // Not a directory (something an agent put there): removed as it is.
            let _ = trash.remove(&name);
            continue;
        };
        let id = name.split_once('~').map_or(name.as_str(), |(id, _)| id);
        for file in dir.names().unwrap_or_default() {
            let Ok(file) = file.into_string() else {
                continue;
            };
            match dir.kind(&file) {
                Some(Kind::File) if file.ends_with(".patch") => {
                    let back = runs.child(id, Some(0o700));
                    if back.and_then(|b| dir.move_into(&file, &b, &file)).is_ok() {
                        emptied.patches_kept += 1;
                    }
                }
                Some(Kind::Dir) => emptied.files += remove_tree(&dir, &file, 1),
                Some(_) => emptied.files += usize::from(dir.remove(&file).is_ok()),
                None => {}
            }
        }
        if trash.remove_dir(&name).is_ok() {
            emptied.dirs += 1;
        }
    }
    emptied
}

/// Removes the directory `name` in `parent` with everything in it, through no link, at most
/// [`MAX_DEPTH`] deep (deeper, it stays); returns how many files went.
fn remove_tree(parent: &Dir, name: &str, depth: usize) -> usize {
    let Ok(dir) = parent.child(name, None) else {
        return 0;
    };
    let mut files = 0;
    for entry in dir.names().unwrap_or_default() {
        let Ok(entry) = entry.into_string() else {
            continue;
        };
        match dir.kind(&entry) {
            Some(Kind::Dir) if depth < MAX_DEPTH => files += remove_tree(&dir, &entry, depth + 1),
            Some(Kind::Dir) | None => {}
            Some(_) => files += usize::from(dir.remove(&entry).is_ok()),
        }
    }
    let _ = parent.remove_dir(name);
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 24 * 3600 * 1000;

    #[test]
    fn only_finished_tasks_old_enough_lose_their_run_directory() {
        let keep = Duration::from_millis(30 * DAY);
        let now = 100 * DAY;
        // (what the book says, the directory's last change, expected)
        let cases = [
            (Finished::No, 0, false),
            (Finished::At(80 * DAY), 80 * DAY, false),
            (Finished::At(60 * DAY), 60 * DAY, true),
            (Finished::At(70 * DAY), 10 * DAY, true),
            (Finished::At(70 * DAY + 1), 10 * DAY, false),
            // Retried and finished again lately: its newer files keep it.
            (Finished::At(10 * DAY), 80 * DAY, false),
            (Finished::LongAgo, 69 * DAY, true),
            (Finished::LongAgo, 71 * DAY, false),
            // A clock set back: nothing is old.
            (Finished::At(200 * DAY), 200 * DAY, false),
        ];
        for (finished, dir_ms, want) in cases {
            assert_eq!(
                may_prune(finished, dir_ms, now, keep),
                want,
                "{finished:?}, directory changed at day {}",
                dir_ms / DAY
            );
        }
    }
}
