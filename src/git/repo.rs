//! A repository, by the top of its main work tree: its branches and refs, its worktrees made
//! and removed, and the steps of a merge on the target (the compare-and-swap of its ref, the
//! fast-forward of the user's checkout).

use super::*;

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

    /// The worktree at `path` as git itself links it — the administrative directory in the
    /// repository's `worktrees/` whose `gitdir` names `path` — not as the tree's own `.git`
    /// file says (an agent may have written that). `None` when git knows no tree there.
    pub fn linked_tree(&self, path: &Path) -> Result<Option<Tree>, GitError> {
        let common = git(&self.top, ["rev-parse", "--git-common-dir"])?;
        let common = self.top.join(common.trim_end());
        let Ok(entries) = std::fs::read_dir(common.join("worktrees")) else {
            return Ok(None);
        };
        let want = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        for entry in entries.flatten() {
            let admin = entry.path();
            let Ok(named) = std::fs::read_to_string(admin.join("gitdir")) else {
                continue;
            };
            let named = Path::new(named.trim_end());
            let Some(tree) = named.parent() else { continue };
            let tree = std::fs::canonicalize(tree).unwrap_or_else(|_| tree.to_path_buf());
            if tree == want {
                return Ok(Some(Tree {
                    path: path.to_path_buf(),
                    git_dir: std::fs::canonicalize(&admin).unwrap_or(admin),
                }));
            }
        }
        Ok(None)
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
                // Names as they are (not quoted: `café.md` is not `"caf\303\251.md"`).
                "-z",
                ours,
                theirs,
            ],
        )?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut lines = stdout.split('\0');
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
