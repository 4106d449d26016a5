//! Checking what an attempt in a worktree claims: that it changed something
//! (`expect_changes`), that no conflict markers are left, that `verify` passes — and, when a
//! check fails, the feedback the next round's prompt ends with (or the resolve section for a
//! conflict an agent is to settle). Work that passes is committed on the task's branch here;
//! making the tree is `worktrees.rs`, merging it `merging.rs`.

use std::path::{Path, PathBuf};

use super::worktrees::{save_patch, tree_env};
use super::*;
use crate::editing::Resolved;
use crate::git::{GitError, Repo};
use crate::state::WorktreeState;

/// Most bytes of a verifier's output quoted in a reason and in the next prompt.
const VERIFY_TAIL: u64 = 4096;
/// What the check after an attempt needs.
pub(super) struct CheckPlan {
    pub ws: Workspace,
    pub task: String,
    pub title: String,
    pub attempt: u32,
    pub agent: String,
    pub state: WorktreeState,
    /// The workspace's place in the tree, where the agent ran and `verify` runs.
    pub dir: PathBuf,
    pub settings: Resolved,
    /// Files a resolving attempt had to resolve: none may keep a conflict marker.
    pub resolving: Vec<String>,
    pub repo: Repo,
    /// Dirigent's own directory, as a path in the tree (`.context`, or `sub/.context` when the
    /// workspace is a subdirectory): the work may not touch it.
    pub context: String,
    /// The task's `output`: written into the tree, so it is committed with the work.
    pub output: Option<String>,
    /// `verify` failures of this agent in a row on this task before this attempt.
    pub verify_failures: u32,
    pub limit: Duration,
    pub grace: Duration,
    /// The daemon's stop.
    pub stop: watch::Receiver<bool>,
    /// The attempt's own stop (`dirigent cancel`): it stops the check too.
    pub cancel: watch::Receiver<Option<crate::judge::StopCause>>,
}

/// Checks what an attempt left in its tree and sets `report.work`, and for an `ok` the agent
/// claimed that its work does not bear out, the class it ends in. Work that passes is
/// committed on the task's branch; a failed attempt's changes are saved as its patch.
pub(super) async fn check(plan: CheckPlan, report: &mut AttemptReport) {
    let tree = plan.state.tree.clone();
    let base = plan.state.base.clone();
    // What the agent changed, on the task's branch (an agent that switched branches is put
    // back first, so every check below is of that branch).
    let diff = {
        let (tree, base, branch) = (tree.clone(), base.clone(), plan.state.branch.clone());
        tokio::task::spawn_blocking(move || {
            tree.ensure_on(&branch)?;
            tree.diff_stat(&base)
        })
        .await
    };
    let mut diff = match diff {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => {
            if report.verdict.class == Class::Ok {
                git_step_failed(report, "cannot read what the attempt changed", &e);
            }
            return;
        }
        Err(_) => return,
    };
    // Whether the agent changed anything is decided before the output is added: dirigent's
    // own writing is no change of the agent's.
    let changed = diff.files > 0;
    // The output is part of the work: written into the tree, counted and committed with it.
    if report.verdict.class == Class::Ok
        && (changed || !plan.settings.expect_changes)
        && let Some(rel) = &plan.output
    {
        let inside = plan
            .dir
            .strip_prefix(&plan.state.tree.path)
            .unwrap_or(Path::new(""));
        let content = match (&report.verdict.result, &report.stdout_capture) {
            (Some(crate::judge::ResultText::Text(text)), _) => result::Content::Text(text),
            (_, Some(capture)) => result::Content::Capture(capture),
            (_, None) => result::Content::Text(""),
        };
        match result::write_in_tree(&plan.state.tree.path, inside, rel, content) {
            Ok(_) => {
                let (tree, base) = (tree.clone(), base.clone());
                match tokio::task::spawn_blocking(move || tree.diff_stat(&base)).await {
                    Ok(Ok(d)) => diff = d,
                    Ok(Err(e)) => {
                        git_step_failed(report, "cannot read what the attempt changed", &e);
                    }
                    Err(_) => return,
                }
            }
            Err(e) => {
                report.verdict.class = Class::Exit;
                report.verdict.reason =
                    format!("the result cannot be written into the worktree: {e}");
            }
        }
    }
    let mut commit = None;
    let mut again = false;
    if report.verdict.class == Class::Ok && changed {
        let (tree, repo, base, context) = (
            tree.clone(),
            plan.repo.clone(),
            base.clone(),
            plan.context.clone(),
        );
        let refused =
            tokio::task::spawn_blocking(move || tree.unmergeable(&repo, &base, &context)).await;
        match refused {
            Ok(Ok(None)) => {}
            Ok(Ok(Some(why))) => {
                report.verdict.class = Class::Exit;
                report.verdict.reason = why;
            }
            Ok(Err(e)) => {
                git_step_failed(report, "cannot check what the attempt changed", &e);
            }
            Err(_) => return,
        }
    }
    if report.verdict.class == Class::Ok {
        let left: Vec<&String> = plan
            .resolving
            .iter()
            .filter(|f| has_markers(&plan.state.tree.path.join(f)))
            .collect();
        if !left.is_empty() {
            report.verdict.class = Class::Conflict;
            report.verdict.reason = format!(
                "the agent said the conflict was resolved, but conflict markers remain in {}",
                left.iter()
                    .map(|f| format!("`{f}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    if report.verdict.class == Class::Ok {
        // The work is committed before it is verified, and what the check leaves behind is
        // dropped after it: the commit is exactly what was verified.
        let mut made = None;
        if changed {
            let (tree, title, task, agent, branch, base) = (
                tree.clone(),
                plan.title.clone(),
                plan.task.clone(),
                plan.agent.clone(),
                plan.state.branch.clone(),
                base.clone(),
            );
            // A resolved merge is committed as the merge it is (the next merge of the branch
            // is then a fast-forward); other work is one commit of dirigent's.
            let fold = plan.resolving.is_empty();
            let committed =
                tokio::task::spawn_blocking(move || -> Result<(String, String), GitError> {
                    tree.ensure_on(&branch)?;
                    let mut before = tree.head()?;
                    // Commits the agent made itself are folded into that one commit (their
                    // changes stay staged): what lands on the target says which task and
                    // agent made it, whatever the agent wrote as its message and author.
                    if fold && before != base {
                        tree.uncommit(&base)?;
                        before = base;
                    }
                    // Staged by the diff above.
                    match tree.commit_staged(&title, &task, &agent)? {
                        Some(c) => Ok((before, c)),
                        // Nothing staged after all.
                        None => Ok((before.clone(), before)),
                    }
                })
                .await;
            match committed {
                Ok(Ok((before, c))) => made = Some((before, c)),
                Ok(Err(e)) => {
                    git_step_failed(report, "the work cannot be committed", &e);
                }
                Err(_) => return,
            }
        }
        let verify =
            if report.verdict.class == Class::Ok && (changed || !plan.settings.expect_changes) {
                let dropped = drop_hidden(&plan).await;
                run_verify(&plan, &dropped).await
            } else {
                None
            };
        let cancelled = *plan.cancel.borrow() == Some(crate::judge::StopCause::Cancel);
        if cancelled || matches!(verify, Some(Err(None))) {
            // The daemon is stopping, or the task was cancelled: not the agent's failure.
            report.verdict.class =
                if cancelled || *plan.cancel.borrow() == Some(crate::judge::StopCause::Cancel) {
                    Class::Cancelled
                } else {
                    Class::Interrupted
                };
            report.verdict.reason = "stopped while the work was being verified".into();
            // Not verified: its commit comes off the branch again.
            if let Some((before, _)) = &made {
                let (tree, before) = (tree.clone(), before.clone());
                let _ = tokio::task::spawn_blocking(move || tree.uncommit(&before)).await;
            }
            return;
        }
        match (&made, &verify) {
            (Some((_, c)), Some(Ok(()))) => {
                // What the check left behind is dropped: the commit is what was verified.
                let (tree, c) = (tree.clone(), c.clone());
                let _ = tokio::task::spawn_blocking(move || tree.reset_to(&c)).await;
            }
            (Some((before, _)), Some(Err(_))) => {
                // Work that failed its check leaves no commit of dirigent's in the branch's
                // history; its changes stay, staged, for a feedback round or the patch.
                let (tree, before) = (tree.clone(), before.clone());
                let _ = tokio::task::spawn_blocking(move || tree.uncommit(&before)).await;
            }
            _ => {}
        }
        let passed = verify.as_ref().map(|v| v.is_ok());
        if report.verdict.class == Class::Ok {
            match crate::editing::checked_class(changed, plan.settings.expect_changes, passed) {
                Some(Class::NoChange) => {
                    report.verdict.class = Class::NoChange;
                    report.verdict.reason = "the agent said done but changed no file in its worktree; for a task that only answers, set `workdir: shared` or `expect_changes: false`".into();
                }
                Some(class) => {
                    let failed = verify.and_then(|v| v.err()).flatten().unwrap_or_default();
                    again = plan.verify_failures < plan.settings.verify_rounds;
                    report.verdict.class = class;
                    report.verdict.reason = if again {
                        format!("{failed}; the same agent tries again with this output")
                    } else {
                        failed
                    };
                }
                None => commit = made.map(|(_, c)| c),
            }
        }
    }
    if report.verdict.class != Class::Ok && !again && changed {
        let path = plan
            .ws
            .run_dir(&plan.task)
            .join(crate::workspace::attempt_file(
                plan.attempt,
                &plan.agent,
                "patch",
            ));
        let saved = tokio::task::spawn_blocking(move || save_patch(&tree, &base, &path)).await;
        if let Ok(Err(e)) = saved {
            tracing::warn!(task = %plan.task, "cannot save the attempt's changes as a patch: {e}");
        }
    }
    report.work = Some(crate::ledger::WorkChecked {
        diff,
        commit,
        again,
    });
}

/// The verdict of an attempt whose work a git step could not take: the attempt's failure —
/// unless a resource ran out (the disk, descriptors): the attempt is then `interrupted` (not
/// counted against the chain), the engine pauses, and the task runs again once there is room
/// instead of failing. Such ends count against `max_interruptions`, so an agent that fills
/// the disk itself each time still ends.
fn git_step_failed(report: &mut AttemptReport, what: &str, e: &GitError) {
    match e.exhausted() {
        Some(ran_out) => {
            report.verdict.class = Class::Interrupted;
            report.verdict.reason =
                format!("{what}: {ran_out}; it runs again when there is room ({e})");
            report.exhausted = Some(format!("{ran_out} ({what}: {e})"));
        }
        None => {
            report.verdict.class = Class::Exit;
            report.verdict.reason = format!("{what}: {e}");
        }
    }
}

/// Before `verify`: removes what only the work's own ignore rules hide (see
/// [`crate::git::Tree::drop_hidden_by_work`]), so the check sees what a merge lands. Returns
/// what was removed; nothing when there is no check, or when git cannot tell (said in the log).
async fn drop_hidden(plan: &CheckPlan) -> Vec<String> {
    if plan.settings.verify.is_empty() {
        return Vec::new();
    }
    let (tree, repo) = (plan.state.tree.clone(), plan.repo.clone());
    match tokio::task::spawn_blocking(move || tree.drop_hidden_by_work(&repo)).await {
        Ok(Ok(dropped)) => {
            if !dropped.is_empty() {
                tracing::info!(
                    task = %plan.task,
                    "before verify, removed what only the work's own ignore rules hide (not in its commit): {}",
                    dropped.join(", ")
                );
            }
            dropped
        }
        Ok(Err(e)) => {
            tracing::warn!(task = %plan.task, "cannot tell which ignored files only the work's own rules hide; verify sees them all: {e}");
            Vec::new()
        }
        Err(_) => Vec::new(),
    }
}

/// How a failed check's reason names what it ran without: at most a few paths.
pub(super) fn ran_without(dropped: &[String]) -> String {
    const SHOWN: usize = 5;
    if dropped.is_empty() {
        return String::new();
    }
    let mut names: Vec<String> = dropped
        .iter()
        .take(SHOWN)
        .map(|n| format!("`{}`", crate::terminal::printable(n)))
        .collect();
    if dropped.len() > SHOWN {
        names.push(format!("and {} more", dropped.len() - SHOWN));
    }
    format!(
        " — it ran without {}, which only the work's own ignore rules hide: the commit does not hold them",
        names.join(", ")
    )
}

/// Runs the `verify` commands in the tree, in order, until one fails: `Err(Some(_))` holds why
/// and the tail of its output, `Err(None)` says the daemon stopped it. `None` when there is
/// nothing to run. `dropped` is what was removed before it ran, named when it fails.
async fn run_verify(plan: &CheckPlan, dropped: &[String]) -> Option<Result<(), Option<String>>> {
    if plan.settings.verify.is_empty() {
        return None;
    }
    let log = verify_log(&plan.ws, &plan.task, plan.attempt, &plan.agent);
    let _ = std::fs::remove_file(&log);
    for argv in &plan.settings.verify {
        // A cancel stops the check the way the daemon's stop does (its group told to end, then
        // what it left behind swept), rather than by dropping it mid-way.
        let limits = crate::side_command::SideLimits {
            limit: plan.limit,
            stop: plan.stop.clone(),
            cancel: Some(plan.cancel.clone()),
            grace: plan.grace,
            dir: Some((plan.dir.clone(), tree_env(&plan.state))),
            task: Some(plan.task.clone()),
        };
        let end = crate::side_command::run_logged(&plan.ws, argv, &log, limits).await;
        let shown = crate::terminal::shown_command(argv);
        let why = match end {
            crate::side_command::CommandEnd::Exited(s) if s.success() => continue,
            crate::side_command::CommandEnd::Exited(s) => format!("`{shown}` failed ({s})"),
            crate::side_command::CommandEnd::TimedOut => {
                format!(
                    "`{shown}` ran longer than {}",
                    crate::duration::short(plan.limit)
                )
            }
            crate::side_command::CommandEnd::Stopped => return Some(Err(None)),
            crate::side_command::CommandEnd::CouldNotStart(e) => e,
        };
        let why = format!("{why}{}", ran_without(dropped));
        let tail = verify_tail(&plan.ws, &plan.task, plan.attempt, &plan.agent, VERIFY_TAIL);
        return Some(Err(Some(if tail.trim().is_empty() {
            format!("verify: {why}")
        } else {
            format!("verify: {why}; its output ends:\n{tail}")
        })));
    }
    Some(Ok(()))
}

/// Whether a file still holds a conflict marker line.
fn has_markers(path: &Path) -> bool {
    // The agent's tree: no link followed, no FIFO waited on, no giant read whole.
    crate::fsutil::read_small_nofollow(path, 8 << 20).is_ok_and(|bytes| {
        bytes.split(|b| *b == b'\n').any(|line| {
            line.starts_with(b"<<<<<<< ") || line.starts_with(b">>>>>>> ") || line == b"======="
        })
    })
}

/// `runs/<id>/<n>-<agent>.verify.log`: what the verifier printed.
pub(super) fn verify_log(ws: &Workspace, task: &str, attempt: u32, agent: &str) -> PathBuf {
    ws.run_dir(task)
        .join(crate::workspace::attempt_file(attempt, agent, "verify.log"))
}

/// The last `max` bytes of the verifier's log, as text (empty when it cannot be read). Opened
/// through no link: an agent could plant one to have a file of its choosing quoted.
fn verify_tail(ws: &Workspace, task: &str, attempt: u32, agent: &str, max: u64) -> String {
    let name = crate::workspace::attempt_file(attempt, agent, "verify.log");
    ws.open_sub(&format!("runs/{task}"))
        .and_then(|d| d.open_regular(&name))
        .map(|f| crate::terminal::printable_lines(&fsutil::tail_of(f, max)))
        .unwrap_or_default()
}

/// The section a resolving attempt's prompt ends with (`on_conflict: agent`).
pub(super) fn resolve_section(branch: &str, resolve: &crate::state::Resolve) -> String {
    format!(
        "\n\n---\n\n## Resolve the merge conflict\n\nYour finished work on `{branch}` does not merge onto `{}`, which moved meanwhile. The merge is started in your worktree; these files have conflict markers: {}. Resolve each conflict so that both changes do what they meant to, remove every marker (`<<<<<<<`, `=======`, `>>>>>>>`), and leave the result uncommitted: dirigent checks and commits it.\n\n{}\n",
        resolve.target,
        resolve
            .files
            .iter()
            .map(|f| format!("`{f}`"))
            .collect::<Vec<_>>()
            .join(", "),
        crate::escalate::fenced(&resolve.reason)
    )
}

/// The feedback section a `verify` round's prompt ends with: the check that failed and the end
/// of its output. The format is documented in `docs/worktrees.md`.
pub(super) fn feedback(ws: &Workspace, task: &str, last: &crate::state::AttemptSummary) -> String {
    let tail = verify_tail(ws, task, last.n, &last.agent, VERIFY_TAIL);
    // A check that printed nothing is said so, not shown as an empty block.
    let output = if tail.trim().is_empty() {
        "It printed nothing.".to_string()
    } else {
        format!("Its output ends:\n\n{}", crate::escalate::fenced(&tail))
    };
    format!(
        "\n\n---\n\n## The check failed\n\nYour last attempt said it was done, but the task's check did not pass in your worktree. Your changes are still there. {}\n\n{output}\n\nFix what it reports; the check runs again when you finish.\n",
        // The reason's words for the agent: what failed, not what dirigent does next.
        last.reason
            .split("; its output ends:")
            .next()
            .unwrap_or("")
            .trim_end_matches("; the same agent tries again with this output")
            .trim_start_matches("verify: "),
    )
}
