//! Worktrees: where an editing task's attempts work. At an attempt's start the engine decides
//! (`workdir.rs`) whether it works in a worktree; if so, the attempt's own task makes the tree
//! the first time (recorded as `worktree_made` before any agent runs there) or puts it back at
//! the base (saving what a failed attempt left as its `.patch`) and runs the agent in it; what
//! the agent then claims is checked in `work_check.rs`, and merged in `merging.rs`.
//!
//! The git work blocks, so it runs on tokio's blocking pool, never on the engine's loop.

use std::path::{Path, PathBuf};

use super::*;
use crate::editing::{Resolved, Setup};
use crate::git::{GitError, Repo, Tree};
use crate::state::WorktreeState;

/// What an attempt's task needs to ready the tree, decided by the engine at the start.
pub(super) struct TreePlan {
    pub repo: Repo,
    pub task: String,
    /// The tree the ledger has for the task, if one was made and not removed.
    pub existing: Option<WorktreeState>,
    /// For a new tree: a pooled one to reuse, or the directory of a new one; the task's
    /// `base:` and `merge_into:`.
    pub place: NewTree,
    pub base_rev: Option<String>,
    pub merge_into: Option<String>,
    pub settings: Resolved,
    pub setup: Setup,
    /// This attempt is a `verify` feedback round of the last one: the tree is kept as it is.
    pub continuing: bool,
    /// The attempt before this one (number, agent): what it left is saved as its patch.
    pub previous: Option<(u32, String)>,
    pub run_dir: PathBuf,
    pub workspace_root: PathBuf,
    /// Where the workspace is inside the repository (`""` at its top): the agent's directory
    /// inside the tree.
    pub inside: PathBuf,
    /// A task of the fleet: its work is delivered to the node it came from, not merged here,
    /// so it has no target branch.
    pub delivered: bool,
}

/// Where a task's first tree comes from.
pub(super) enum NewTree {
    /// A tree a finished task gave back (checked out afresh: fast).
    Pooled(Tree),
    /// A new worktree at this directory (a full checkout: slow on a large repository).
    Fresh(PathBuf),
}

/// The directory name of a pooled tree: `slot-<n>`.
pub(super) fn slot_number(path: &Path) -> Option<u64> {
    path.file_name()?
        .to_str()?
        .strip_prefix("slot-")?
        .parse()
        .ok()
}

/// A tree ready for the agent: the task's worktree state, and the `worktree_made` event when
/// it was made now.
pub(super) struct ReadyTree {
    pub state: WorktreeState,
    pub made: Option<Event>,
    pub agent_dir: PathBuf,
}

/// Why a tree could not be readied.
#[derive(Debug, thiserror::Error)]
pub(super) enum TreeError {
    #[error("{0}")]
    Git(#[from] GitError),
    #[error("worktree setup: {0}")]
    Setup(String),
}

impl TreeError {
    /// What ran out, when a resource did: the task waits instead of failing.
    pub fn exhausted(&self) -> Option<&'static str> {
        match self {
            TreeError::Git(e) => e.exhausted(),
            _ => None,
        }
    }
}

/// Readies the task's tree (blocking: git runs here).
pub(super) fn prepare(plan: &TreePlan) -> Result<ReadyTree, TreeError> {
    let repo = &plan.repo;
    let (state, made) = match &plan.existing {
        Some(state) if state.tree.path.exists() => (state.clone(), None),
        _ => {
            let target = match &plan.merge_into {
                _ if plan.delivered => None,
                Some(t) => Some(t.clone()),
                None => repo.current_branch()?,
            };
            if target.is_none() && plan.settings.merge != crate::editing::MergeMode::None {
                return Err(TreeError::Setup(
                    "the checkout is on a detached HEAD, so there is no branch to merge the task's work into; give the task (or the config) `merge_into: BRANCH`, or `merge: none`".into(),
                ));
            }
            if let Some(t) = &target
                && repo.branch_head(t)?.is_none()
            {
                if t.starts_with("dirigent/run/") {
                    // A workflow run's branch is made by its first editing task, at the head.
                    repo.create_branch(t, &repo.head()?)?;
                } else if crate::git::has_no_commits(&repo.top) {
                    // `git init` and nothing committed: "no branch `main`" would read as wrong
                    // with `main` checked out.
                    return Err(GitError::NoCommits.into());
                } else {
                    return Err(GitError::NoSuchBranch { branch: t.clone() }.into());
                }
            }
            let base = match (&plan.base_rev, &target) {
                (Some(rev), _) => repo.resolve_base(rev)?,
                (None, Some(t)) => repo
                    .branch_head(t)?
                    .ok_or_else(|| GitError::NoSuchBranch { branch: t.clone() })?,
                (None, None) => repo.head()?,
            };
            let branch = crate::git::branch_for(&plan.task)?;
            let tree = match &plan.place {
                NewTree::Pooled(tree) => {
                    let reused = tree
                        .restore_dot_git()
                        .map_err(TreeError::from)
                        .and_then(|()| tree.reuse(&branch, &base).map_err(TreeError::from));
                    if let Err(e) = reused {
                        // Not left half-switched and unowned: gone, with its branch.
                        let _ = repo.remove_worktree(tree);
                        let _ = repo.delete_branch_at(&branch, &base);
                        return Err(e);
                    }
                    tree.clone()
                }
                NewTree::Fresh(path) => {
                    // The trees live in `.context/`: git must never list them as untracked.
                    crate::git::exclude_context(&plan.workspace_root)?;
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent).map_err(GitError::Io)?;
                        // Not through a link planted in `.context/worktrees`' place.
                        if std::fs::symlink_metadata(parent).is_ok_and(|m| !m.is_dir()) {
                            return Err(GitError::Displaced {
                                path: parent.to_path_buf(),
                                why: "it is a link, not the directory of the worktrees",
                            }
                            .into());
                        }
                    }
                    repo.add_worktree(path, &branch, &base)?
                }
            };
            // Nothing is copied through a link in the workspace's place (the check below
            // refuses the tree).
            let through_link = matches!(real_dir_below(&tree.path, &plan.inside), RealDir::Link(_));
            if let Err(e) = if through_link {
                Ok(())
            } else {
                copy_and_link(
                    &tree,
                    &tree.path.join(&plan.inside),
                    &plan.workspace_root,
                    &plan.setup,
                )
            } {
                // Not recorded yet, so nobody would own it: removed, with its branch (at the
                // base: nothing is lost), so a retry can make it again.
                let _ = repo.remove_worktree(&tree);
                let _ = repo.delete_branch_at(&branch, &base);
                return Err(e);
            }
            let state = WorktreeState {
                tree: tree.clone(),
                branch: branch.clone(),
                base: base.clone(),
                target: target.clone(),
                diff: None,
                commit: None,
                merge: crate::state::MergeState::NotYet,
                removed: false,
                discard_pending: false,
                resolve: None,
                resolutions: 0,
            };
            let made = Event::WorktreeMade {
                task: plan.task.clone(),
                path: tree.path,
                git_dir: tree.git_dir,
                branch,
                base,
                target,
            };
            (state, Some(made))
        }
    };
    // Whatever an agent did to the tree's `.git` file, the next one finds it pointing home.
    state.tree.restore_dot_git()?;
    if let Some(resolve) = state.resolve.as_ref().filter(|_| made.is_none()) {
        // `on_conflict: agent`: the merge is started in the tree, its conflicts left for the
        // agent to resolve.
        state.tree.start_merge(&resolve.target)?;
    } else if made.is_none() && !plan.continuing {
        start_clean(plan, &state)?;
    }
    let agent_dir = state.tree.path.join(&plan.inside);
    match real_dir_below(&state.tree.path, &plan.inside) {
        RealDir::Yes => {}
        RealDir::Missing => {
            return Err(TreeError::Setup(format!(
                "the workspace is `{}` inside the repository at `{}`, but git does not track it, so a worktree has no such directory; run `git init` in the workspace, or set `workdir: shared`",
                plan.inside.display(),
                repo.top.display()
            )));
        }
        // A link committed in its place would take the agent out of the tree.
        RealDir::Link(at) => {
            return Err(TreeError::Setup(format!(
                "`{}` in the task's tree is a symbolic link, not a directory: the agent would work wherever it points, outside the tree; refusing",
                at.display()
            )));
        }
    }
    Ok(ReadyTree {
        state,
        made,
        agent_dir,
    })
}

/// Whether `top/inside` is a directory reached through directories only.
enum RealDir {
    Yes,
    Missing,
    /// This part of `inside` is a link (or not a directory at all).
    Link(PathBuf),
}

fn real_dir_below(top: &std::path::Path, inside: &std::path::Path) -> RealDir {
    let mut at = PathBuf::new();
    for part in inside.components() {
        at.push(part);
        match std::fs::symlink_metadata(top.join(&at)) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return RealDir::Link(at),
            Err(_) => return RealDir::Missing,
        }
    }
    RealDir::Yes
}

/// Puts an existing tree back at the base for a new attempt: what the last attempt left (if
/// its patch was not saved yet: a crash) is saved first; with `carry_failed_changes`, the last
/// patch is applied again for this agent.
fn start_clean(plan: &TreePlan, state: &WorktreeState) -> Result<(), TreeError> {
    let tree = &state.tree;
    if let Some((n, agent)) = &plan.previous {
        let patch_path = plan
            .run_dir
            .join(crate::workspace::attempt_file(*n, agent, "patch"));
        let patch_there = || std::fs::symlink_metadata(&patch_path).is_ok_and(|m| m.is_file());
        if std::fs::symlink_metadata(&patch_path).is_err() {
            save_patch(tree, &state.base, &patch_path)?;
        }
        tree.reset_to(&state.base)?;
        // Applied only as the file dirigent wrote: not through a link an agent put there.
        if plan.settings.carry_failed_changes
            && patch_there()
            && let Err(e) = tree.apply(&patch_path)
        {
            tracing::warn!(task = %plan.task, "the last attempt's changes do not apply again: {e}");
        }
    } else {
        tree.reset_to(&state.base)?;
    }
    Ok(())
}

/// Saves what the tree changed against `base` as a patch file (none when nothing changed),
/// at `path` in a run directory (`.context/runs/<id>/…`): written through no link an agent
/// planted there, at the file or at its directories.
pub(super) fn save_patch(tree: &Tree, base: &str, path: &Path) -> Result<(), GitError> {
    let patch = tree.patch(base)?;
    if !patch.is_empty() {
        write_in_runs(path, patch.as_bytes()).map_err(GitError::Io)?;
    }
    Ok(())
}

/// Writes `bytes` to `path`, a file in `.context/runs/<id>/`, reached from `.context/`
/// through no link.
pub(super) fn write_in_runs(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    // `.context/runs/<id>/<name>`: the context directory is three levels up.
    let context = path.ancestors().nth(3).ok_or_else(|| {
        std::io::Error::other(format!("`{}` is not in a run directory", path.display()))
    })?;
    let rel = path.strip_prefix(context).map_err(std::io::Error::other)?;
    fsutil::write_below(context, rel, bytes)
}

/// `copy:` and `link:` in a new (or reused) tree, at the workspace's place in it (`dir`).
/// Sources are read from the workspace without following a link at their last component; a
/// missing source is an error that names it. Each name must be one git ignores: otherwise the
/// copy (a secret in `.env`) or the link would be committed with the task's work.
fn copy_and_link(tree: &Tree, dir: &Path, root: &Path, setup: &Setup) -> Result<(), TreeError> {
    let refuse = |key: &str, rel: &str, why: String| {
        TreeError::Setup(format!("`worktree.{key}: {rel}`: {why}"))
    };
    for (key, rel) in setup
        .copy
        .iter()
        .map(|r| ("copy", r))
        .chain(setup.link.iter().map(|r| ("link", r)))
    {
        let in_tree = dir.join(rel);
        let as_tree_path = in_tree
            .strip_prefix(&tree.path)
            .unwrap_or(Path::new(rel))
            .to_string_lossy()
            .into_owned();
        if !tree.is_ignored(&as_tree_path)? {
            return Err(refuse(
                key,
                rel,
                format!(
                    "git does not ignore `{rel}` in this repository, so it would be committed with the task's work; add `{rel}` to .gitignore (a pattern ending in `/` matches directories only, not a link)"
                ),
            ));
        }
        let from = root.join(rel);
        let meta = std::fs::symlink_metadata(&from).map_err(|e| {
            refuse(
                key,
                rel,
                format!("there is no `{rel}` in the workspace ({e})"),
            )
        })?;
        if key == "copy" && !meta.is_file() {
            return Err(refuse(
                key,
                rel,
                "is not a regular file (copy files; `link:` directories)".into(),
            ));
        }
        if let Some(parent) = in_tree.parent() {
            std::fs::create_dir_all(parent).map_err(|e| refuse(key, rel, e.to_string()))?;
        }
        if std::fs::symlink_metadata(&in_tree).is_ok_and(|m| m.is_dir()) {
            std::fs::remove_dir_all(&in_tree).map_err(|e| refuse(key, rel, e.to_string()))?;
        } else {
            let _ = std::fs::remove_file(&in_tree);
        }
        if key == "copy" {
            std::fs::copy(&from, &in_tree).map_err(|e| refuse(key, rel, e.to_string()))?;
        } else {
            std::os::unix::fs::symlink(&from, &in_tree)
                .map_err(|e| refuse(key, rel, e.to_string()))?;
        }
    }
    Ok(())
}

/// Runs `setup:` once in a new (or reused) tree, at the workspace's place in it, supervised like
/// a verifier: its own process group, the attempt's time limit, stopped with the daemon. Its
/// output is `runs/<id>/setup.log`.
pub(super) async fn run_setup(
    ws: &Workspace,
    task: &str,
    argv: &[String],
    state: &WorktreeState,
    dir: &Path,
    limits: crate::side_command::SideLimits,
) -> Result<(), Option<String>> {
    let log = ws.run_dir(task).join("setup.log");
    let limit = limits.limit;
    let limits = crate::side_command::SideLimits {
        dir: Some((dir.to_path_buf(), tree_env(state))),
        ..limits
    };
    let shown = crate::terminal::shown_command(argv);
    match crate::side_command::run_logged(ws, argv, &log, limits).await {
        crate::side_command::CommandEnd::Exited(s) if s.success() => {
            // What setup made must be ignored by git, or it would count (and be committed) as
            // the agent's work.
            let tree = state.tree.clone();
            let changed = tokio::task::spawn_blocking(move || tree.changed_paths())
                .await
                .unwrap_or(Ok(vec![]))
                .unwrap_or_default();
            if changed.is_empty() {
                Ok(())
            } else {
                Err(Some(format!(
                    "`worktree.setup: {shown}` changed files git tracks or does not ignore ({}); it must write only ignored files (add them to .gitignore), or they would count as the agent's work",
                    changed
                        .iter()
                        .take(5)
                        .map(|p| format!("`{p}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
        }
        crate::side_command::CommandEnd::Exited(s) => Err(Some(format!(
            "`worktree.setup: {shown}` failed ({s}); its output is in {}",
            log.display()
        ))),
        crate::side_command::CommandEnd::TimedOut => Err(Some(format!(
            "`worktree.setup: {shown}` ran longer than {}",
            crate::duration::short(limit)
        ))),
        crate::side_command::CommandEnd::Stopped => Err(None),
        crate::side_command::CommandEnd::CouldNotStart(e) => {
            Err(Some(format!("`worktree.setup`: {e}")))
        }
    }
}

/// The variables an agent (and a verifier) in a tree gets.
pub(super) fn tree_env(state: &WorktreeState) -> Vec<(String, String)> {
    vec![
        (
            "DIRIGENT_WORKTREE".to_string(),
            state.tree.path.display().to_string(),
        ),
        ("DIRIGENT_BASE".to_string(), state.base.clone()),
        ("DIRIGENT_BRANCH".to_string(), state.branch.clone()),
    ]
}

impl Engine {
    /// The repository task `id` edits: for a task of the fleet, this worker's cache of its
    /// node's repository; else the workspace's.
    pub(super) fn repo_of(&mut self, id: &str) -> Result<Repo, GitError> {
        match self.fleet_edit(id) {
            Some(edit) => Ok(Repo { top: edit.cache }),
            None => self.repo(),
        }
    }

    /// An editing task taken from the fleet: where it came from and where its work goes.
    pub(super) fn fleet_edit(&self, id: &str) -> Option<crate::fleet::edits::EditHere> {
        match self.book.get(id)?.more().fleet.as_deref()? {
            crate::state::FleetPart::Taken { edit, .. } => edit.clone(),
            _ => None,
        }
    }

    /// The repository the workspace is in, found once.
    pub(super) fn repo(&mut self) -> Result<Repo, GitError> {
        if let Some(repo) = &self.repo {
            return Ok(repo.clone());
        }
        let repo = Repo::discover(self.ws.root())?;
        repo.check_version()?;
        self.repo = Some(repo.clone());
        Ok(repo)
    }

    /// Where the workspace is inside the repository (`""` at its top): where agents, `setup`
    /// and `verify` run inside a tree.
    pub(super) fn inside(&self, repo: &Repo) -> PathBuf {
        match (self.ws.root().canonicalize(), repo.top.canonicalize()) {
            (Ok(root), Ok(top)) => root
                .strip_prefix(&top)
                .map(Path::to_path_buf)
                .unwrap_or_default(),
            _ => PathBuf::new(),
        }
    }

    /// An attempt planned but not started: a pooled tree it took goes back to the pool.
    pub(super) fn unplan(&mut self, plan: Option<(TreePlan, Resolved)>) {
        if let Some((
            TreePlan {
                place: NewTree::Pooled(tree),
                ..
            },
            _,
        )) = plan
        {
            self.tree_pool.push(tree);
        }
    }

    /// The `workdir` and `verify` of the role the task names, if it names one that has them.
    pub(super) fn role_of(
        &self,
        spec: &TaskSpec,
    ) -> Option<&(Option<crate::workdir::Workdir>, Vec<Vec<String>>)> {
        self.config.role_editing.get(spec.fields.role.as_deref()?)
    }

    /// A task's editing settings: its own, its role's, its agent's (`agent_verify`), the
    /// config's.
    pub(super) fn editing_of(&self, spec: &TaskSpec, agent_verify: &[Vec<String>]) -> Resolved {
        let role_verify = self.role_of(spec).map_or(&[][..], |(_, v)| v.as_slice());
        crate::editing::resolve(
            &spec.fields.editing(),
            role_verify,
            agent_verify,
            &self.config.editing,
        )
    }

    /// Decides where an attempt of `agent` on task `id` works and, for a worktree, what its
    /// task needs to ready it. `Err` is why it cannot run (the task escalates).
    pub(super) fn tree_plan(
        &mut self,
        id: &str,
        agent: &Agent,
    ) -> Result<Option<(TreePlan, Resolved)>, String> {
        let t = self.book.get(id).expect("started tasks are in the book");
        let spec = t.spec().expect("unfinished tasks keep their spec");
        // A task of the fleet works where it came to work: a worktree of its node's repository
        // (an editing task), or else this workspace (a task that answers).
        if let Some(crate::state::FleetPart::Taken { edit, .. }) = t.more().fleet.as_deref() {
            return Ok(edit
                .clone()
                .map(|edit| self.fleet_tree_plan(id, &spec, agent, edit)));
        }
        let asked = crate::workdir::Asked {
            task: spec.fields.workdir,
            phase: None,
            role: self.role_of(&spec).and_then(|(w, _)| *w),
            agent: agent.workdir,
            config: self.config.workdir,
        };
        let in_repo = crate::git::in_repository(self.ws.root());
        let text_only = spec.fields.workflow.is_some();
        match crate::workdir::decide(asked, in_repo, text_only).map_err(|e| e.to_string())? {
            crate::workdir::Workdir::Shared => return Ok(None),
            crate::workdir::Workdir::Worktree => {}
        }
        let repo = self.repo().map_err(|e| e.to_string())?;
        let t = self.book.get(id).expect("started tasks are in the book");
        let settings = self.editing_of(&spec, &agent.verify);
        let last = t.attempts().last();
        let continuing = last
            .is_some_and(|a| a.agent == agent.name && a.work.as_ref().is_some_and(|w| w.again))
            || t.more()
                .worktree
                .as_ref()
                .is_some_and(|w| w.resolve.is_some());
        let inside = self.inside(&repo);
        // A tree whose directory is gone (removed by hand) is made again.
        let existing = t
            .more()
            .worktree
            .as_deref()
            .filter(|w| !w.removed && w.tree.path.exists())
            .cloned();
        let place = match (&existing, self.tree_pool.pop()) {
            (Some(_), Some(tree)) => {
                self.tree_pool.push(tree);
                NewTree::Fresh(PathBuf::new())
            }
            (Some(_), None) => NewTree::Fresh(PathBuf::new()),
            (None, Some(tree)) => NewTree::Pooled(tree),
            (None, None) => {
                self.next_slot += 1;
                NewTree::Fresh(
                    self.ws
                        .context()
                        .join("worktrees")
                        .join(format!("slot-{}", self.next_slot)),
                )
            }
        };
        let plan = TreePlan {
            repo,
            task: id.to_string(),
            existing,
            place,
            base_rev: spec.fields.base.clone(),
            merge_into: settings.merge_into.clone(),
            settings: settings.clone(),
            setup: self.config.editing.setup.clone(),
            continuing,
            previous: last.map(|a| (a.n, a.agent.clone())),
            run_dir: self.ws.run_dir(id),
            workspace_root: self.ws.root().to_path_buf(),
            inside,
            delivered: false,
        };
        Ok(Some((plan, settings)))
    }

    /// [`Engine::tree_plan`] for an editing task of the fleet: a worktree of this worker's
    /// cache of its repository, from the base it came with, in `.context/fleet/trees/<id>`;
    /// no `worktree:` preparation (that is for this workspace's own repository); its work is
    /// delivered, never merged here.
    fn fleet_tree_plan(
        &mut self,
        id: &str,
        spec: &TaskSpec,
        agent: &Agent,
        edit: crate::fleet::edits::EditHere,
    ) -> (TreePlan, Resolved) {
        let t = self.book.get(id).expect("started tasks are in the book");
        let mut settings = self.editing_of(spec, &agent.verify);
        settings.merge = crate::editing::MergeMode::None;
        settings.merge_into = None;
        let last = t.attempts().last();
        let continuing =
            last.is_some_and(|a| a.agent == agent.name && a.work.as_ref().is_some_and(|w| w.again));
        let existing = t
            .more()
            .worktree
            .as_deref()
            .filter(|w| !w.removed && w.tree.path.exists())
            .cloned();
        let plan = TreePlan {
            repo: Repo { top: edit.cache },
            task: id.to_string(),
            existing,
            place: NewTree::Fresh(self.ws.context().join("fleet").join("trees").join(id)),
            base_rev: Some(edit.base),
            merge_into: None,
            settings: settings.clone(),
            setup: Setup::default(),
            continuing,
            previous: last.map(|a| (a.n, a.agent.clone())),
            run_dir: self.ws.run_dir(id),
            workspace_root: self.ws.root().to_path_buf(),
            inside: PathBuf::from(&edit.inside),
            delivered: true,
        };
        (plan, settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_directory_is_reached_through_directories_only() {
        let top = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(top.path().join("a/b")).unwrap();
        std::os::unix::fs::symlink(outside.path(), top.path().join("a/link")).unwrap();
        std::fs::write(top.path().join("a/file"), "").unwrap();
        let cases: [(&str, &str); 6] = [
            ("", "yes"),
            ("a/b", "yes"),
            ("a/link", "link a/link"),
            ("a/link/x", "link a/link"),
            ("a/file", "link a/file"),
            ("a/none", "missing"),
        ];
        for (inside, expected) in cases {
            let got = match real_dir_below(top.path(), std::path::Path::new(inside)) {
                RealDir::Yes => "yes".to_string(),
                RealDir::Missing => "missing".to_string(),
                RealDir::Link(at) => format!("link {}", at.display()),
            };
            assert_eq!(got, expected, "for `{inside}`");
        }
    }
}
