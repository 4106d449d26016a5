//! Git, for isolated editing: the repository a workspace is in, the branch and worktree a task
//! edits in, what an attempt changed there, its commit, and the steps of a merge (replaying a
//! branch on its target, the compare-and-swap of the target's ref, the fast-forward of the
//! user's checkout). It runs the real `git` — the one the user has, with their configuration —
//! never through a shell, never prompting, and with hooks off: a hook an agent planted in the
//! repository never runs as dirigent. When and why these steps run is the engine's
//! `worktrees`/`merging` rooms.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

/// Why a git step did not happen.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error(
        "`{}` is not inside a git repository; `workdir: worktree` needs one (run `git init`, or use `workdir: shared`)",
        dir.display()
    )]
    NotARepository { dir: PathBuf },
    #[error("git is not installed (no `git` on PATH); `workdir: worktree` needs it")]
    NotInstalled,
    #[error("`{id}` cannot name a git branch ({why}); give the task another `id`")]
    BadBranch { id: String, why: &'static str },
    #[error("`base: {rev}` names no commit of the repository")]
    NoSuchBase { rev: String },
    #[error(
        "there is no branch `{branch}` to merge into (`merge_into`, or the branch checked out when the task started)"
    )]
    NoSuchBranch { branch: String },
    #[error("git {found} is too old: worktrees and merges need git 2.38 or later")]
    TooOld { found: String },
    #[error("`git {args}` failed ({status}): {stderr}")]
    Failed {
        args: String,
        status: String,
        stderr: String,
    },
    #[error("cannot run git: {0}")]
    Io(std::io::Error),
    #[error(
        "`{}` is no longer the task's worktree: {why}; nothing is done through it (an agent may have put a link in its place)",
        path.display()
    )]
    Displaced { path: PathBuf, why: &'static str },
}

/// A repository, by the top of its main work tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repo {
    pub top: PathBuf,
}

/// Held while git administers worktrees (adding, removing, pruning, listing, switching a
/// tree's branch): git does not lock that itself, and two at once fail reading each other's
/// half-made administrative files (`failed to read .git/worktrees/…/commondir`).
static WORKTREE_ADMIN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn admin() -> std::sync::MutexGuard<'static, ()> {
    WORKTREE_ADMIN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A task's worktree: its directory and its own git directory, recorded when it was made.
/// Every command on it names both, so a `.git` file an agent rewrites inside the tree cannot
/// turn dirigent's resets on another checkout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    pub path: PathBuf,
    pub git_dir: PathBuf,
}

/// Files that do not merge, and the conflicting regions (bounded) for the report.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Conflict {
    pub files: Vec<String>,
    pub hunks: String,
}

/// Most bytes of conflict hunks kept for a report.
const MAX_HUNKS: usize = 16 * 1024;

/// What an attempt changed against its base: files, lines added, lines removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffStat {
    pub files: u32,
    pub insertions: u64,
    pub deletions: u64,
}

/// The branch a task edits on: `dirigent/<id>`. Task ids are file-name safe, but git refuses
/// some of them as ref names (`a..b`, `x.lock`, a trailing dot); those are refused here, with
/// the reason, rather than by git halfway through.
pub fn branch_for(id: &str) -> Result<String, GitError> {
    check_branch_name(id).map_err(|why| GitError::BadBranch {
        id: id.to_string(),
        why,
    })?;
    Ok(format!("dirigent/{id}"))
}

/// Whether git takes `name` as (part of) a branch name; the reason when it does not. Stricter
/// than git in one way: no name starts with `-`, so none is ever read as an option.
pub fn check_branch_name(name: &str) -> Result<(), &'static str> {
    let why = if name.is_empty() {
        Some("it is empty")
    } else if name.starts_with('-') {
        Some("it starts with `-`")
    } else if name.contains("..") || name.contains("//") {
        Some("it contains `..` or `//`")
    } else if name.ends_with(".lock") {
        Some("it ends with `.lock`")
    } else if name.ends_with('.')
        || name.starts_with('.')
        || name.ends_with('/')
        || name.starts_with('/')
        || name.contains("/.")
    {
        Some("it starts or ends with `.` or `/`")
    } else if name.contains(|c: char| c.is_ascii_control() || " ~^:?*[\\@{".contains(c)) {
        Some("it contains a character git refuses in branch names")
    } else {
        None
    };
    match why {
        Some(why) => Err(why),
        None => Ok(()),
    }
}

/// Whether `name` may be a branch tasks merge into: a branch name git takes, and not one of
/// dirigent's own task branches (`dirigent/<id>`), which another agent works on.
pub fn check_target_name(name: &str) -> Result<(), &'static str> {
    check_branch_name(name)?;
    if name.starts_with("dirigent/") && !name.starts_with("dirigent/run/") {
        return Err(
            "is one of dirigent's own task branches; merge into a branch of yours (or a run branch, `dirigent/run/<id>`)",
        );
    }
    Ok(())
}

/// Keeps the workspace's `.context/` out of git: when `dir` (the workspace) is in a repository
/// and git does not ignore its `.context/` yet, the repository's own uncommitted ignore file
/// (`info/exclude`) gets a line for it, anchored where the workspace is (`/.context/`, or
/// `/pkg/.context/` in a subdirectory). Returns the file it changed.
pub fn exclude_context(dir: &Path) -> Result<Option<PathBuf>, GitError> {
    if !in_repository(dir) {
        return Ok(None);
    }
    let ignored = run(dir, ["check-ignore", "--quiet", ".context/"])?;
    if ignored.status.success() {
        return Ok(None);
    }
    let asked = git(
        dir,
        ["rev-parse", "--show-prefix", "--git-path", "info/exclude"],
    )?;
    let mut lines = asked.lines();
    let (Some(prefix), Some(path)) = (lines.next(), lines.next()) else {
        return Ok(None);
    };
    let exclude = if Path::new(path).is_absolute() {
        PathBuf::from(path)
    } else {
        dir.join(path)
    };
    if let Some(parent) = exclude.parent() {
        std::fs::create_dir_all(parent).map_err(GitError::Io)?;
    }
    // Read and replaced, never written through: a link or a FIFO an agent put in its place
    // is left alone (git then lists `.context/` as untracked, which is all it costs).
    let mut text = match std::fs::symlink_metadata(&exclude) {
        Err(_) => String::new(),
        Ok(m) if m.is_file() => {
            let bytes =
                crate::fsutil::read_small_nofollow(&exclude, 1 << 20).map_err(GitError::Io)?;
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Ok(_) => {
            tracing::warn!(
                "`{}` is not a regular file (a link?); `.context/` is not added to it",
                exclude.display()
            );
            return Ok(None);
        }
    };
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!(
        "# dirigent's queue, ledger and results (added by dirigent)\n/{}.context/\n",
        prefix.trim()
    ));
    crate::fsutil::write_atomic(&exclude, text.as_bytes()).map_err(GitError::Io)?;
    Ok(Some(exclude))
}

/// Whether `dir` is inside a git work tree, by looking for `.git` in it and its parents — no
/// process, so acceptance can ask it for every task.
pub fn in_repository(dir: &Path) -> bool {
    dir.ancestors().any(|d| d.join(".git").exists())
}

/// How a file of the checkout stands against its last commit — what a new worktree holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Committed {
    /// Committed as it is.
    AsIs,
    /// Tracked, with changes not committed: a worktree holds the committed version.
    Changed,
    /// Not tracked: a worktree does not hold it.
    Untracked,
    /// Ignored by git: a worktree does not hold it.
    Ignored,
}

/// Whether `rel` (a file under `dir`) is committed as it is.
pub fn committed(dir: &Path, rel: &str) -> Result<Committed, GitError> {
    // Literal: a name with `*` or `:` is that name, not a pattern.
    let spec = format!(":(literal){rel}");
    let out = git(
        dir,
        ["status", "--porcelain=v1", "--ignored", "-z", "--", &spec],
    )?;
    Ok(match out.get(..2) {
        None => Committed::AsIs,
        Some("??") => Committed::Untracked,
        Some("!!") => Committed::Ignored,
        Some(_) => Committed::Changed,
    })
}

impl Repo {
    /// The repository `dir` is in.
    pub fn discover(dir: &Path) -> Result<Repo, GitError> {
        match git(dir, ["rev-parse", "--show-toplevel"]) {
            Ok(top) => Ok(Repo {
                top: PathBuf::from(top.trim_end()),
            }),
            Err(GitError::Failed { .. }) => Err(GitError::NotARepository {
                dir: dir.to_path_buf(),
            }),
            Err(e) => Err(e),
        }
    }

    /// Whether this is a bare repository (a fleet worker's cache): no work tree of its own.
    pub fn is_bare(&self) -> bool {
        self.top.join("HEAD").is_file() && !self.top.join(".git").exists()
    }

    /// Refuses a git older than 2.38 (`merge-tree --write-tree`), with what was found.
    pub fn check_version(&self) -> Result<(), GitError> {
        let out = git(&self.top, ["--version"])?;
        let found = out.trim().trim_start_matches("git version ").to_string();
        let mut parts = found.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        if (major, minor) < (2, 38) {
            return Err(GitError::TooOld { found });
        }
        Ok(())
    }

    /// The commit `HEAD` points at.
    pub fn head(&self) -> Result<String, GitError> {
        Ok(git(&self.top, ["rev-parse", "--verify", "HEAD^{commit}"])?
            .trim()
            .to_string())
    }

    /// The commit a task's `base:` names (a branch, a tag, a commit), as a full commit id.
    /// The name is never read as an option (`--end-of-options`): a base like `--orphan` is an
    /// unknown revision, not a flag.
    pub fn resolve_base(&self, rev: &str) -> Result<String, GitError> {
        let spec = format!("{rev}^{{commit}}");
        let args = [
            "rev-parse",
            "--verify",
            "--quiet",
            "--end-of-options",
            &spec,
        ];
        match git(&self.top, args) {
            Ok(id) => Ok(id.trim().to_string()),
            Err(GitError::Failed { .. }) => Err(GitError::NoSuchBase {
                rev: rev.to_string(),
            }),
            Err(e) => Err(e),
        }
    }

    /// The branch checked out in the main work tree; `None` on a detached head.
    pub fn current_branch(&self) -> Result<Option<String>, GitError> {
        match git(&self.top, ["symbolic-ref", "--quiet", "--short", "HEAD"]) {
            Ok(name) => Ok(Some(name.trim().to_string())),
            Err(GitError::Failed { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Makes a worktree at `path` on branch `branch` starting at `base`. A branch of that name
    /// is reset there: the ledger knows of no tree for this task, so nothing on it was recorded
    /// (a crash between making a tree and recording it leaves one behind).
    pub fn add_worktree(&self, path: &Path, branch: &str, base: &str) -> Result<Tree, GitError> {
        if path.exists() {
            self.forget_worktree(path)?;
        }
        let _admin = admin();
        git(
            &self.top,
            [
                OsStr::new("worktree"),
                OsStr::new("add"),
                OsStr::new("--quiet"),
                OsStr::new("-B"),
                OsStr::new(branch),
                path.as_os_str(),
                OsStr::new(base),
            ],
        )?;
        let git_dir = git(path, ["rev-parse", "--absolute-git-dir"])?;
        Ok(Tree {
            path: path.to_path_buf(),
            git_dir: PathBuf::from(git_dir.trim_end()),
        })
    }

    /// Removes a worktree (whatever it holds: its changes were saved or merged before) and what
    /// git keeps about it; the branch stays.
    pub fn remove_worktree(&self, tree: &Tree) -> Result<(), GitError> {
        self.forget_worktree(&tree.path)
    }

    /// Removes the directory at `path` and prunes git's record of it. `git worktree remove`
    /// reads the tree's `.git` file, which an agent may have changed, so the directory is
    /// removed by hand when git refuses.
    fn forget_worktree(&self, path: &Path) -> Result<(), GitError> {
        let _admin = admin();
        // A link in the tree's place: only the link goes (git would follow it to whatever it
        // names, and remove that).
        if std::fs::symlink_metadata(path).is_ok_and(|m| !m.is_dir()) {
            std::fs::remove_file(path).map_err(GitError::Io)?;
            return git(&self.top, ["worktree", "prune"]).map(drop);
        }
        let removed = git(
            &self.top,
            [
                OsStr::new("worktree"),
                OsStr::new("remove"),
                OsStr::new("--force"),
                OsStr::new("--force"),
                path.as_os_str(),
            ],
        );
        if removed.is_err() && path.exists() {
            std::fs::remove_dir_all(path).map_err(GitError::Io)?;
        }
        git(&self.top, ["worktree", "prune"]).map(drop)
    }

    /// Makes git forget worktrees whose directory is gone.
    pub fn prune_worktrees(&self) -> Result<(), GitError> {
        let _admin = admin();
        git(&self.top, ["worktree", "prune"]).map(drop)
    }

    /// Deletes `branch` when it exists.
    pub fn delete_branch(&self, branch: &str) -> Result<(), GitError> {
        let r = format!("refs/heads/{branch}");
        if self.branch_head(branch)?.is_none() {
            return Ok(());
        }
        git(&self.top, ["update-ref", "-d", &r]).map(drop)
    }

    /// Deletes `branch` only if it still points at `commit` (a compare-and-swap): a branch of
    /// the same name made meanwhile stays.
    pub fn delete_branch_at(&self, branch: &str, commit: &str) -> Result<(), GitError> {
        let r = format!("refs/heads/{branch}");
        match git(&self.top, ["update-ref", "-d", &r, commit]) {
            Ok(_) => Ok(()),
            Err(GitError::Failed { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Makes `branch` at `commit` unless it exists (a compare-and-swap against "no branch", so
    /// two tasks making the same run branch at once are both fine).
    pub fn create_branch(&self, branch: &str, commit: &str) -> Result<(), GitError> {
        let r = format!("refs/heads/{branch}");
        match git(&self.top, ["update-ref", &r, commit, ""]) {
            Ok(_) => Ok(()),
            Err(_) if self.branch_head(branch)?.is_some() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The commit `branch` points at; `None` when there is no such branch.
    pub fn branch_head(&self, branch: &str) -> Result<Option<String>, GitError> {
        let r = format!("refs/heads/{branch}^{{commit}}");
        match git(
            &self.top,
            ["rev-parse", "--verify", "--quiet", "--end-of-options", &r],
        ) {
            Ok(id) => Ok(Some(id.trim().to_string())),
            Err(GitError::Failed { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Points `branch` at `new` only if it still points at `old`: a compare-and-swap, so a
    /// commit someone else put there meanwhile is never lost. `false` when it had moved.
    pub fn update_branch(&self, branch: &str, new: &str, old: &str) -> Result<bool, GitError> {
        let r = format!("refs/heads/{branch}");
        match git(
            &self.top,
            ["update-ref", "-m", "dirigent merge", &r, new, old],
        ) {
            Ok(_) => Ok(true),
            Err(GitError::Failed { .. }) if self.branch_head(branch)?.as_deref() != Some(old) => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Whether commit `a` is `b` or one of its ancestors.
    pub fn is_ancestor(&self, a: &str, b: &str) -> Result<bool, GitError> {
        match git(&self.top, ["merge-base", "--is-ancestor", a, b]) {
            Ok(_) => Ok(true),
            Err(GitError::Failed { status, .. }) if status == "exit status: 1" => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The work tree where `branch` is checked out, if any (the user's checkout, usually) — or
    /// being rebased: a rebase detaches `HEAD`, but the branch is the user's work in progress.
    pub fn checked_out_in(&self, branch: &str) -> Result<Option<PathBuf>, GitError> {
        let _admin = admin();
        let want = format!("refs/heads/{branch}");
        let list = git(&self.top, ["worktree", "list", "--porcelain"])?;
        let mut current: Option<PathBuf> = None;
        for line in list.lines() {
            if let Some(p) = line.strip_prefix("worktree ") {
                current = Some(PathBuf::from(p));
            } else if line.strip_prefix("branch ") == Some(want.as_str()) {
                return Ok(current);
            } else if line == "detached"
                && let Some(dir) = &current
                && rebasing(dir).as_deref() == Some(want.as_str())
            {
                return Ok(current);
            }
        }
        Ok(None)
    }

    /// Whether the checkout at `dir` has no change to a tracked file (untracked files do not
    /// count: a fast-forward that would overwrite one refuses by itself).
    pub fn is_clean(&self, dir: &Path) -> Result<bool, GitError> {
        Ok(git(dir, ["status", "--porcelain", "--untracked-files=no"])?
            .trim()
            .is_empty())
    }

    /// Fast-forwards the checkout at `dir` (on its branch, at `old`) to `new`, only if it is
    /// clean and still at `old`. Nothing changes unless it says `Done`.
    pub fn fast_forward_checkout(
        &self,
        dir: &Path,
        old: &str,
        new: &str,
    ) -> Result<FastForward, GitError> {
        if rebasing(dir).is_some() || !self.is_clean(dir)? {
            return Ok(FastForward::Dirty);
        }
        let head = git(dir, ["rev-parse", "HEAD"])?;
        if head.trim() != old {
            return Ok(FastForward::Moved);
        }
        let out = run(dir, ["merge", "--quiet", "--ff-only", "--no-edit", new])?;
        if out.status.success() {
            return Ok(FastForward::Done);
        }
        // Git's whole message: it names the files in the way.
        let said: Vec<String> = String::from_utf8_lossy(&out.stderr)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && *l != "Aborting")
            .take(12)
            .map(str::to_string)
            .collect();
        Ok(FastForward::Refused(said.join(" ")))
    }

    /// The tree of merging `theirs` into `ours`, or the files that conflict.
    pub fn merge_trees(
        &self,
        ours: &str,
        theirs: &str,
    ) -> Result<Result<String, Conflict>, GitError> {
        let out = run(
            &self.top,
            [
                "merge-tree",
                "--write-tree",
                "--name-only",
                "--no-messages",
                ours,
                theirs,
            ],
        )?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut lines = stdout.lines();
        let tree = lines.next().unwrap_or("").trim().to_string();
        if out.status.success() {
            return Ok(Ok(tree));
        }
        if out.status.code() != Some(1) || tree.len() < 40 {
            return Err(failed(&["merge-tree", ours, theirs], &out));
        }
        let files: Vec<String> = lines
            .take_while(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        let mut hunks = String::new();
        for f in &files {
            if let Ok(text) = git(&self.top, ["cat-file", "blob", &format!("{tree}:{f}")]) {
                hunks.push_str(&conflict_regions(f, &text));
            }
        }
        Ok(Err(Conflict {
            files,
            hunks: bounded(hunks),
        }))
    }

    /// A commit of `tree` with `parents` and `message`, by the user's identity (or dirigent's).
    pub fn commit_tree(
        &self,
        tree: &str,
        parents: &[&str],
        message: &str,
    ) -> Result<String, GitError> {
        let mut args: Vec<String> = identity(&self.top);
        args.extend(["commit-tree".into(), tree.into()]);
        for p in parents {
            args.extend(["-p".into(), (*p).into()]);
        }
        args.extend(["-m".into(), message.into()]);
        Ok(git(&self.top, &args)?.trim().to_string())
    }

    /// The message of `commit`.
    pub fn message(&self, commit: &str) -> Result<String, GitError> {
        git(&self.top, ["log", "-1", "--format=%B", commit, "--"])
    }

    /// The diff of `commit` against `base` (for `dirigent diff`), bounded by the caller.
    pub fn diff_between(&self, base: &str, commit: &str) -> Result<String, GitError> {
        git(&self.top, ["diff", "--stat", "--patch", base, commit, "--"])
    }
}

impl Tree {
    /// The commit the tree's `HEAD` points at.
    pub fn head(&self) -> Result<String, GitError> {
        Ok(in_tree(self, ["rev-parse", "--verify", "HEAD^{commit}"])?
            .trim()
            .to_string())
    }

    /// What the tree changed against `base` (commits the agent made included), untracked files
    /// too.
    pub fn diff_stat(&self, base: &str) -> Result<DiffStat, GitError> {
        stage_all(self)?;
        let numstat = in_tree(self, ["diff", "--cached", "--numstat", base])?;
        let mut stat = DiffStat::default();
        for line in numstat.lines() {
            let mut parts = line.split('\t');
            let (Some(added), Some(removed)) = (parts.next(), parts.next()) else {
                continue;
            };
            stat.files += 1;
            // `-` for binary files: they count as a file, not as lines.
            stat.insertions += added.parse::<u64>().unwrap_or(0);
            stat.deletions += removed.parse::<u64>().unwrap_or(0);
        }
        Ok(stat)
    }

    /// Everything the tree changed against `base` as a binary-safe patch (untracked files
    /// included), for the human and for the next agent.
    pub fn patch(&self, base: &str) -> Result<String, GitError> {
        stage_all(self)?;
        in_tree(self, ["diff", "--cached", "--binary", base])
    }

    /// Readies a pooled tree for another task: a new branch `branch` at `base`, checked out by
    /// force, and every file git does not track removed — ignored ones too, so nothing one
    /// task's agent left there reaches the next task. Measured with `scripts/bench/worktrees`,
    /// this is tens of milliseconds where making a worktree of a large repository afresh takes
    /// seconds.
    pub fn reuse(&self, branch: &str, base: &str) -> Result<(), GitError> {
        self.abort_rebase()?;
        {
            // Only the checkout looks at the other worktrees (is the branch used elsewhere?).
            let _admin = admin();
            in_tree(self, ["checkout", "--quiet", "--force", "-B", branch, base])?;
        }
        in_tree(self, ["clean", "--quiet", "-ffdx"]).map(drop)
    }

    /// Gives the tree back to the pool: its head detached (so its branch can go) and every file
    /// git does not track removed.
    /// (Its files stay until [`Tree::reuse`] checks the next task's base out and cleans: that
    /// is one pass over the tree instead of two.)
    pub fn release(&self) -> Result<(), GitError> {
        let _admin = admin();
        self.abort_rebase()?;
        if self.git_dir.join("MERGE_HEAD").exists() {
            in_tree(self, ["merge", "--abort"])?;
        }
        let head = self.head()?;
        in_tree(self, ["update-ref", "--no-deref", "HEAD", &head]).map(drop)
    }

    /// Whether git ignores `rel` (a path inside the tree): a tracked path is not ignored.
    pub fn is_ignored(&self, rel: &str) -> Result<bool, GitError> {
        match in_tree(self, ["check-ignore", "--quiet", "--", rel]) {
            Ok(_) => Ok(true),
            Err(GitError::Failed { status, .. }) if status == "exit status: 1" => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether the tree is a worktree git knows, with a git directory of its own.
    pub fn is_usable(&self) -> bool {
        self.git_dir.join("HEAD").is_file()
            && in_tree(self, ["rev-parse", "--verify", "HEAD"]).is_ok()
    }

    /// Puts the tree (and its branch) back to `base`: tracked changes, commits and untracked
    /// files are discarded; ignored files (a copied `.env`, a linked `node_modules`) stay. A
    /// rebase left half-done by a crash is abandoned first.
    pub fn reset_to(&self, base: &str) -> Result<(), GitError> {
        self.abort_rebase()?;
        in_tree(self, ["reset", "--quiet", "--hard", base])?;
        in_tree(self, ["clean", "--quiet", "-fd"]).map(drop)
    }

    /// Applies a patch made by [`Tree::patch`].
    pub fn apply(&self, patch_file: &Path) -> Result<(), GitError> {
        in_tree(
            self,
            [
                OsStr::new("apply"),
                OsStr::new("--whitespace=nowarn"),
                patch_file.as_os_str(),
            ],
        )
        .map(drop)
    }

    /// Puts the tree's `HEAD` back on `branch` if the agent switched it elsewhere (keeping the
    /// files as they are), so dirigent commits on the task's branch and nowhere else.
    pub fn ensure_on(&self, branch: &str) -> Result<(), GitError> {
        let _admin = admin();
        let want = format!("refs/heads/{branch}");
        let head = in_tree(self, ["symbolic-ref", "--quiet", "HEAD"]).unwrap_or_default();
        if head.trim() != want {
            in_tree(self, ["symbolic-ref", "HEAD", &want])?;
        }
        Ok(())
    }

    /// Commits everything in the tree on its branch — after any commits the agent made itself —
    /// with `title` and the trailers `Dirigent-Task:` and `Dirigent-Agent:`. Returns the new
    /// head, or `None` when there was nothing to commit.
    pub fn commit_all(
        &self,
        title: &str,
        task: &str,
        agent: &str,
    ) -> Result<Option<String>, GitError> {
        stage_all(self)?;
        self.commit_staged(title, task, agent)
    }

    /// [`Tree::commit_all`] of what is staged already ([`Tree::diff_stat`] stages everything):
    /// one pass over the tree fewer.
    pub fn commit_staged(
        &self,
        title: &str,
        task: &str,
        agent: &str,
    ) -> Result<Option<String>, GitError> {
        if in_tree(self, ["diff", "--cached", "--quiet"]).is_ok() {
            return Ok(None);
        }
        let message = format!("{title}\n\nDirigent-Task: {task}\nDirigent-Agent: {agent}\n");
        let mut args = identity_in(self);
        args.extend(["commit", "--quiet", "--no-verify", "-m", &message].map(String::from));
        in_tree(self, &args)?;
        self.head().map(Some)
    }

    /// Replays the tree's branch on `onto` (a `git rebase` in the tree). On a conflict the
    /// rebase is abandoned — the branch is as it was — and the conflict returned.
    pub fn rebase_onto(&self, onto: &str) -> Result<Result<(), Conflict>, GitError> {
        let mut args = identity_in(self);
        args.extend(["rebase", "--quiet", "--no-autostash", onto].map(String::from));
        match in_tree(self, &args) {
            Ok(_) => Ok(Ok(())),
            Err(GitError::Failed { .. }) => {
                let files: Vec<String> = in_tree(self, ["diff", "--name-only", "--diff-filter=U"])
                    .unwrap_or_default()
                    .lines()
                    .map(str::to_string)
                    .collect();
                let mut hunks = String::new();
                for f in &files {
                    // The commits are the agent's: a "file" may be a link to a FIFO.
                    if let Ok(bytes) =
                        crate::fsutil::read_small_nofollow(&self.path.join(f), 8 << 20)
                    {
                        hunks.push_str(&conflict_regions(f, &String::from_utf8_lossy(&bytes)));
                    }
                }
                self.abort_rebase()?;
                if files.is_empty() {
                    // Not a conflict: git failed for another reason (a lock, a broken tree).
                    return Err(GitError::Failed {
                        args: format!("rebase {onto}"),
                        status: "no conflicting file".into(),
                        stderr: "the rebase stopped without a conflict".into(),
                    });
                }
                Ok(Err(Conflict {
                    files,
                    hunks: bounded(hunks),
                }))
            }
            Err(e) => Err(e),
        }
    }

    /// Starts merging `target` into the tree's branch and leaves the conflicts in the files for
    /// an agent to resolve (nothing is committed). A merge left from before is abandoned first.
    pub fn start_merge(&self, target: &str) -> Result<(), GitError> {
        self.abort_rebase()?;
        if self.git_dir.join("MERGE_HEAD").exists() {
            in_tree(self, ["merge", "--abort"])?;
        }
        let mut args = identity_in(self);
        args.extend(
            [
                "merge",
                "--quiet",
                "--no-ff",
                "--no-commit",
                "--no-edit",
                target,
            ]
            .map(String::from),
        );
        match in_tree(self, &args) {
            Ok(_) => Ok(()),
            // Stopped at its conflicts: what is wanted.
            Err(GitError::Failed { .. }) if self.git_dir.join("MERGE_HEAD").exists() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// What in the tree's work (staged, against `base`) git may not merge into a user's
    /// checkout: a history that no longer holds `base` (a reset or rebase below it, which a diff
    /// would show as deletions the merge would not make); a change to `context` (dirigent's own
    /// `.context/`, or a file or link of that name); and new files the user's checkout (`repo`)
    /// ignores — a force-added `.env` — because a fast-forward overwrites ignored files without
    /// asking. `None` when the work is clean.
    pub fn unmergeable(
        &self,
        repo: &Repo,
        base: &str,
        context: &str,
    ) -> Result<Option<String>, GitError> {
        if in_tree(self, ["merge-base", "--is-ancestor", base, "HEAD"]).is_err() {
            return Ok(Some(
                "the agent moved its branch below its base (a reset or rebase): its work must build on the base".into(),
            ));
        }
        let names = in_tree(
            self,
            [
                "diff",
                "--cached",
                "--name-only",
                "-z",
                "--no-renames",
                base,
            ],
        )?;
        let own = names
            .split('\0')
            .find(|n| *n == context || n.starts_with(&format!("{context}/")));
        if let Some(path) = own {
            return Ok(Some(format!(
                "the work changes `{path}`, inside dirigent's own `.context/`: refused"
            )));
        }
        let added = in_tree(
            self,
            [
                "diff",
                "--cached",
                "--name-only",
                "-z",
                "--no-renames",
                "--diff-filter=A",
                base,
            ],
        )?;
        let added: Vec<&str> = added.split('\0').filter(|n| !n.is_empty()).collect();
        // A worker's cache of a fleet node's repository is bare: there is no checkout here
        // whose ignored files a merge could overwrite (the work goes back as a branch).
        if added.is_empty() || repo.is_bare() {
            return Ok(None);
        }
        // Asked of the user's checkout, with its own ignore rules: the tree's `.gitignore` is
        // the agent's to change.
        let args: Vec<String> = ["check-ignore", "--no-index", "--"]
            .into_iter()
            .map(str::to_string)
            .chain(added.iter().map(|s| s.to_string()))
            .collect();
        let out = run(&repo.top, &args)?;
        // 0: some are ignored, 1: none is; anything else is git failing, and refuses the work.
        match out.status.code() {
            Some(0) | Some(1) => {}
            _ => return Err(failed(&args, &out)),
        }
        let ignored: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|n| !n.is_empty())
            .map(|n| format!("`{n}`"))
            .collect();
        Ok((!ignored.is_empty()).then(|| {
            format!(
                "the work adds files your checkout ignores ({}), which a merge would write over your own: refused",
                ignored.join(", ")
            )
        }))
    }

    /// Writes the tree's `.git` file again, naming its recorded git directory: an agent may have
    /// pointed it at another repository (the user's own), and the next agent's `git commit`
    /// would land there.
    pub fn restore_dot_git(&self) -> Result<(), GitError> {
        self.check_in_place()?;
        let dot_git = self.path.join(".git");
        let want = format!("gitdir: {}\n", self.git_dir.display());
        // Read only as what it should be: a small regular file, no link followed, never
        // waiting (a FIFO there would block the reader for good).
        let meta = std::fs::symlink_metadata(&dot_git);
        if let Ok(m) = &meta
            && m.is_file()
            && m.len() == want.len() as u64
            && crate::fsutil::read_small_nofollow(&dot_git, want.len())
                .ok()
                .as_deref()
                == Some(want.as_bytes())
        {
            return Ok(());
        }
        match meta {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&dot_git).map_err(GitError::Io)?,
            Ok(_) => std::fs::remove_file(&dot_git).map_err(GitError::Io)?,
            Err(_) => {}
        }
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&dot_git)
            .and_then(|mut f| f.write_all(want.as_bytes()))
            .map_err(GitError::Io)
    }

    /// Whether the tree is still a directory of its own where it was made — not a link (nor
    /// its parent, `.context/worktrees`): every git command and file written in the tree
    /// would otherwise act on whatever the link names (`checkout --force` and `clean -ffdx`
    /// wipe it).
    pub fn check_in_place(&self) -> Result<(), GitError> {
        let displaced = |why| GitError::Displaced {
            path: self.path.clone(),
            why,
        };
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.file_type().is_symlink() => return Err(displaced("it is a link")),
            Ok(m) if !m.is_dir() => return Err(displaced("it is not a directory")),
            Ok(_) => {}
            // Gone: git says so in its own words.
            Err(_) => return Ok(()),
        }
        if let Some(parent) = self.path.parent()
            && std::fs::symlink_metadata(parent).is_ok_and(|m| !m.is_dir())
        {
            return Err(displaced("the directory it is in is a link"));
        }
        Ok(())
    }

    /// Abandons a rebase in progress in the tree, if there is one.
    pub fn abort_rebase(&self) -> Result<(), GitError> {
        let merge_dir = self.git_dir.join("rebase-merge");
        let apply_dir = self.git_dir.join("rebase-apply");
        if merge_dir.exists() || apply_dir.exists() {
            in_tree(self, ["rebase", "--abort"])?;
        }
        Ok(())
    }

    /// Takes the last commits back off the tree's branch down to `to`, keeping their changes
    /// staged: work that failed its check is not left in the branch's history.
    pub fn uncommit(&self, to: &str) -> Result<(), GitError> {
        in_tree(self, ["reset", "--quiet", "--soft", to]).map(drop)
    }

    /// Paths a command changed in the tree: tracked files changed, and untracked files git does
    /// not ignore.
    pub fn changed_paths(&self) -> Result<Vec<String>, GitError> {
        let out = in_tree(
            self,
            ["status", "--porcelain", "-z", "--untracked-files=all"],
        )?;
        Ok(out
            .split('\0')
            .filter(|l| l.len() > 3)
            .map(|l| l[3..].to_string())
            .collect())
    }

    /// Moves the tree's branch (and its files) to `commit`.
    pub fn move_to(&self, commit: &str) -> Result<(), GitError> {
        if self.head()? == commit && self.is_clean_tree()? {
            return Ok(());
        }
        in_tree(self, ["reset", "--quiet", "--hard", commit]).map(drop)
    }

    /// Whether nothing is staged or changed in the tree against its `HEAD` (untracked files
    /// aside).
    fn is_clean_tree(&self) -> Result<bool, GitError> {
        Ok(in_tree(self, ["diff-index", "--quiet", "HEAD", "--"]).is_ok())
    }
}

/// How a fast-forward of a checkout went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FastForward {
    Done,
    /// Its head is not where the merge started from: start over.
    Moved,
    /// It has uncommitted changes (or a rebase in progress): never touched.
    Dirty,
    /// Git refused (an untracked file in the way): its message.
    Refused(String),
}

/// The branch being rebased in the checkout at `dir`, if a rebase is in progress there.
fn rebasing(dir: &Path) -> Option<String> {
    let dot_git = dir.join(".git");
    let git_dir = if dot_git.is_dir() {
        dot_git
    } else {
        let text = std::fs::read_to_string(&dot_git).ok()?;
        let rel = PathBuf::from(text.strip_prefix("gitdir:")?.trim());
        if rel.is_absolute() {
            rel
        } else {
            dir.join(rel)
        }
    };
    ["rebase-merge", "rebase-apply"].iter().find_map(|d| {
        std::fs::read_to_string(git_dir.join(d).join("head-name"))
            .ok()
            .map(|s| s.trim().to_string())
    })
}

/// The conflict-marked regions of one file, as a report shows them.
fn conflict_regions(file: &str, text: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("<<<<<<<") {
            inside = true;
            out.push_str(&format!("--- {file}\n"));
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
        if line.starts_with(">>>>>>>") {
            inside = false;
        }
    }
    out
}

fn bounded(mut text: String) -> String {
    if text.len() > MAX_HUNKS {
        let mut cut = MAX_HUNKS;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("\n… (cut)\n");
    }
    text
}

/// The `-c user.name=… -c user.email=…` to give when git has no identity of the user's (a fresh
/// machine, a service account), so a finished task's commit does not fail for that.
fn identity(dir: &Path) -> Vec<String> {
    fallback_identity(|var| git(dir, ["var", var]).is_ok())
}

/// [`identity`], asked of a task's tree through its recorded git directory.
fn identity_in(tree: &Tree) -> Vec<String> {
    fallback_identity(|var| in_tree(tree, ["var", var]).is_ok())
}

/// Nothing when git knows both the author and the committer (`known`), else dirigent's own.
fn fallback_identity(known: impl Fn(&str) -> bool) -> Vec<String> {
    if known("GIT_AUTHOR_IDENT") && known("GIT_COMMITTER_IDENT") {
        return vec![];
    }
    [
        "-c",
        "user.name=dirigent",
        "-c",
        "user.email=dirigent@localhost",
    ]
    .map(String::from)
    .to_vec()
}

/// Stages everything in the tree, untracked files included, so that a diff against the base
/// (`--cached`) sees every change; the commit that may follow uses the same index.
fn stage_all(tree: &Tree) -> Result<(), GitError> {
    in_tree(tree, ["add", "--all"]).map(drop)
}

/// Runs git on a task's tree, naming its git directory and work tree (see [`Tree`]).
fn in_tree<I, S>(tree: &Tree, args: I) -> Result<String, GitError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    tree.check_in_place()?;
    let mut all: Vec<std::ffi::OsString> = vec![
        format!("--git-dir={}", tree.git_dir.display()).into(),
        format!("--work-tree={}", tree.path.display()).into(),
    ];
    all.extend(args.into_iter().map(|a| a.as_ref().into()));
    git(&tree.path, all)
}

/// Runs `git -C dir ARGS…` and returns its stdout. No terminal prompt, no pager, no hooks,
/// messages in English (they are matched nowhere, but shown to users who report them).
fn git<I, S>(dir: &Path, args: I) -> Result<String, GitError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().into()).collect();
    let out = run(dir, &args)?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    Err(failed(&args, &out))
}

fn run<I, S>(dir: &Path, args: I) -> Result<std::process::Output, GitError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new("git");
    cmd.arg("-C")
        .arg(dir)
        // No hooks, no file-system monitor: programs a repository's config names never run
        // as dirigent's own git commands. No housekeeping left running in the background
        // either: the daemon kills what its children leave behind (see `reaper::sweep`).
        .args([
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "core.fsmonitor=false",
            "-c",
            "gc.autoDetach=false",
            "-c",
            "maintenance.autoDetach=false",
        ])
        .args(args)
        // A background tool must not take the index lock to refresh it: the user's own `git
        // commit` at that moment would fail with `index.lock: File exists`.
        .env("GIT_OPTIONAL_LOCKS", "0")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_PAGER", "cat")
        .env("GIT_EDITOR", "true")
        .env("LC_ALL", "C")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .stdin(std::process::Stdio::null());
    // Registered with the daemon's reaper, which would otherwise reap it first.
    crate::reaper::output(&mut cmd).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => GitError::NotInstalled,
        _ => GitError::Io(e),
    })
}

fn failed<S: AsRef<OsStr>>(args: &[S], out: &std::process::Output) -> GitError {
    let stderr = String::from_utf8_lossy(&out.stderr);
    GitError::Failed {
        args: args
            .iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" "),
        status: out.status.to_string(),
        stderr: stderr.trim().lines().last().unwrap_or("").to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A repository with one commit of `a.txt`.
    fn repo() -> (tempfile::TempDir, Repo) {
        let dir = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let out = Command::new("git")
                .arg("-C")
                .arg(dir.path())
                .args(args)
                .env("GIT_AUTHOR_NAME", "t")
                .env("GIT_AUTHOR_EMAIL", "t@example.com")
                .env("GIT_COMMITTER_NAME", "t")
                .env("GIT_COMMITTER_EMAIL", "t@example.com")
                .output()
                .unwrap();
            assert!(out.status.success(), "git {args:?}: {out:?}");
        };
        run(&["init", "--quiet", "--initial-branch=main"]);
        std::fs::write(dir.path().join("a.txt"), "one\ntwo\n").unwrap();
        run(&["add", "a.txt"]);
        run(&["commit", "--quiet", "-m", "first"]);
        let repo = Repo::discover(dir.path()).unwrap();
        (dir, repo)
    }

    #[test]
    fn a_worktree_is_made_changed_measured_and_removed() {
        let (dir, repo) = repo();
        assert_eq!(
            repo.top.canonicalize().unwrap(),
            dir.path().canonicalize().unwrap(),
            "expected the repository's top to be the directory it was made in"
        );
        assert_eq!(repo.current_branch().unwrap().as_deref(), Some("main"));
        let base = repo.head().unwrap();
        assert_eq!(base.len(), 40, "expected a full commit id, got {base:?}");
        let path = dir.path().join(".wt").join("t1");
        let branch = branch_for("t1").unwrap();
        let tree = repo.add_worktree(&path, &branch, &base).unwrap();
        assert_eq!(
            std::fs::read_to_string(path.join("a.txt")).unwrap(),
            "one\ntwo\n",
            "expected the worktree to hold the base's files"
        );
        std::fs::write(path.join("a.txt"), "one\nthree\nfour\n").unwrap();
        std::fs::write(path.join("new.txt"), "x\n").unwrap();
        assert_eq!(
            tree.diff_stat(&base).unwrap(),
            DiffStat {
                files: 2,
                insertions: 3,
                deletions: 1
            },
            "expected the edit and the untracked file counted"
        );
        // Kept for the next task: on its own branch at the base, the last task's files gone.
        tree.reuse(&branch_for("t9").unwrap(), &base).unwrap();
        assert_eq!(
            std::fs::read_to_string(path.join("a.txt")).unwrap(),
            "one\ntwo\n",
            "expected a reused worktree back at the base"
        );
        assert!(
            !path.join("new.txt").exists(),
            "expected the last task's new file gone"
        );
        assert_eq!(
            git(&path, ["symbolic-ref", "--short", "HEAD"])
                .unwrap()
                .trim(),
            "dirigent/t9",
            "expected the next task's branch checked out"
        );
        repo.remove_worktree(&tree).unwrap();
        assert!(!path.exists(), "expected the worktree's directory gone");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a.txt")).unwrap(),
            "one\ntwo\n",
            "expected the main work tree untouched"
        );
    }

    /// A failed attempt: its changes are kept as a patch, the tree goes back to the base (an
    /// ignored `.env` stays), the patch applies for the next agent, and a passing one is
    /// committed with its trailers.
    #[test]
    fn patch_reset_apply_and_commit() {
        let (dir, repo) = repo();
        // The repository ignores `.env` (committed, as projects do).
        std::fs::write(dir.path().join(".gitignore"), ".env\n").unwrap();
        git(dir.path(), ["add", ".gitignore"]).unwrap();
        git(
            dir.path(),
            [
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@example.com",
                "commit",
                "--quiet",
                "-m",
                "ignore",
            ],
        )
        .unwrap();
        let base = repo.head().unwrap();
        let path = dir.path().join(".wt").join("t2");
        let tree = repo
            .add_worktree(&path, &branch_for("t2").unwrap(), &base)
            .unwrap();
        std::fs::write(path.join(".env"), "SECRET=1\n").unwrap();
        std::fs::write(path.join("a.txt"), "one\nhalf-done\n").unwrap();
        std::fs::write(path.join("scratch.txt"), "tmp\n").unwrap();
        let patch = tree.patch(&base).unwrap();
        assert!(
            patch.contains("+half-done") && patch.contains("scratch.txt"),
            "expected the edit and the new file in the patch:\n{patch}"
        );
        tree.reset_to(&base).unwrap();
        assert_eq!(
            std::fs::read_to_string(path.join("a.txt")).unwrap(),
            "one\ntwo\n",
            "expected the edit discarded"
        );
        assert!(
            !path.join("scratch.txt").exists(),
            "expected the new file discarded"
        );
        assert!(path.join(".env").exists(), "expected the ignored .env kept");
        let patch_file = dir.path().join("t2.patch");
        std::fs::write(&patch_file, &patch).unwrap();
        tree.apply(&patch_file).unwrap();
        assert_eq!(
            std::fs::read_to_string(path.join("a.txt")).unwrap(),
            "one\nhalf-done\n",
            "expected the patch to bring the changes back"
        );
        let head = tree.commit_all("Finish a.txt", "t2", "claude").unwrap();
        assert!(head.is_some(), "expected a commit");
        let log = git(&path, ["log", "-1", "--format=%B"]).unwrap();
        assert!(
            log.starts_with("Finish a.txt")
                && log.contains("Dirigent-Task: t2")
                && log.contains("Dirigent-Agent: claude"),
            "expected the title and the trailers, got:\n{log}"
        );
        assert_eq!(
            tree.commit_all("again", "t2", "claude").unwrap(),
            None,
            "expected nothing to commit the second time"
        );
    }

    /// A rewritten `.git` file in a task's tree does not turn a reset on the main checkout.
    #[test]
    fn a_planted_git_file_does_not_redirect_a_reset() {
        let (dir, repo) = repo();
        let base = repo.head().unwrap();
        std::fs::write(dir.path().join("a.txt"), "user's own edit\n").unwrap();
        let path = dir.path().join(".wt").join("t3");
        let tree = repo
            .add_worktree(&path, &branch_for("t3").unwrap(), &base)
            .unwrap();
        let main_git = dir.path().join(".git");
        std::fs::write(
            path.join(".git"),
            format!("gitdir: {}\n", main_git.display()),
        )
        .unwrap();
        tree.reset_to(&base).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a.txt")).unwrap(),
            "user's own edit\n",
            "expected the user's uncommitted edit untouched"
        );
    }

    /// Two branches from one base: the first lands by compare-and-swap, the second conflicts
    /// (files named, hunks shown), a stale swap is refused.
    #[test]
    fn merge_trees_compare_and_swap_and_conflicts() {
        let (dir, repo) = repo();
        let base = repo.head().unwrap();
        let mk = |name: &str, text: &str| {
            let path = dir.path().join(".wt").join(name);
            let tree = repo
                .add_worktree(&path, &branch_for(name).unwrap(), &base)
                .unwrap();
            std::fs::write(path.join("a.txt"), text).unwrap();
            tree.commit_all(name, name, "x").unwrap().unwrap()
        };
        let first = mk("m1", "one\nfirst\n");
        let second = mk("m2", "one\nsecond\n");
        let tree = repo.merge_trees(&base, &first).unwrap().unwrap();
        let merged = repo
            .commit_tree(&tree, &[&base, &first], "merge m1")
            .unwrap();
        assert!(
            repo.update_branch("main", &merged, &base).unwrap(),
            "expected the swap from the base to succeed"
        );
        assert!(
            !repo.update_branch("main", &second, &base).unwrap(),
            "expected a swap from a stale head refused"
        );
        assert_eq!(
            repo.branch_head("main").unwrap().as_deref(),
            Some(merged.as_str())
        );
        let conflict = repo.merge_trees(&merged, &second).unwrap().unwrap_err();
        assert_eq!(
            conflict.files,
            vec!["a.txt".to_string()],
            "expected a.txt to conflict"
        );
        assert!(
            conflict.hunks.contains("<<<<<<<") && conflict.hunks.contains("second"),
            "expected the conflicting region, got:\n{}",
            conflict.hunks
        );
        assert!(
            repo.is_ancestor(&base, &merged).unwrap(),
            "expected base below the merge"
        );
        assert!(
            !repo.is_ancestor(&second, &merged).unwrap(),
            "expected m2 not merged"
        );
    }

    #[test]
    fn a_base_is_resolved_to_a_commit_and_never_read_as_an_option() {
        let (_dir, repo) = repo();
        let head = repo.head().unwrap();
        assert_eq!(
            repo.resolve_base("main").unwrap(),
            head,
            "expected a branch to resolve"
        );
        assert_eq!(
            repo.resolve_base(&head[..8]).unwrap(),
            head,
            "expected a short id to resolve"
        );
        for bad in ["--orphan", "-b", "no-such-branch", "main..main"] {
            assert!(
                matches!(repo.resolve_base(bad), Err(GitError::NoSuchBase { .. })),
                "expected `{bad}` refused as a base"
            );
        }
    }

    #[test]
    fn outside_a_repository_the_error_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let err = Repo::discover(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("is not inside a git repository")
                && err.contains("git init")
                && err.contains("workdir: shared"),
            "expected a clear error with the fixes, got: {err}"
        );
    }

    #[test]
    fn branch_names_table() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("t1", Ok("dirigent/t1")),
            ("run.phase.2", Ok("dirigent/run.phase.2")),
            ("a..b", Err("contains `..`")),
            ("x.lock", Err("ends with `.lock`")),
            ("x.", Err("starts or ends with `.`")),
            ("", Err("is empty")),
        ];
        for (id, want) in cases {
            let got = branch_for(id).map_err(|e| e.to_string());
            match (want, &got) {
                (Ok(w), Ok(g)) => assert_eq!(g, w, "expected `{id}` to become {w}"),
                (Err(part), Err(msg)) => {
                    assert!(
                        msg.contains(part),
                        "expected `{id}` refused for {part}: {msg}"
                    )
                }
                _ => panic!("expected `{id}` to give {want:?}, got {got:?}"),
            }
        }
    }
}
