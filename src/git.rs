//! Git, for isolated editing: the repository a workspace is in, its head, the branch and
//! worktree a task edits in, and what an attempt changed there. It runs the real `git` — the one
//! the user has, with their configuration — never through a shell, and never prompting.
//!
//! It is the first part of per-task worktrees (isolated editing) and not yet used by the
//! engine: nothing here decides when a worktree is made, verified or merged.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

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
    #[error("`git {args}` failed ({status}): {stderr}")]
    Failed {
        args: String,
        status: String,
        stderr: String,
    },
    #[error("cannot run git: {0}")]
    Io(std::io::Error),
}

/// A repository, by the top of its main work tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repo {
    pub top: PathBuf,
}

/// What an attempt changed against its base: files, lines added, lines removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiffStat {
    pub files: u32,
    pub insertions: u64,
    pub deletions: u64,
}

/// The branch a task edits on: `dirigent/<id>`. Task ids are file-name safe, but git refuses
/// some of them as ref names (`a..b`, `x.lock`, a trailing dot); those are refused here, with
/// the reason, rather than by git halfway through.
pub fn branch_for(id: &str) -> Result<String, GitError> {
    let why = if id.is_empty() {
        Some("it is empty")
    } else if id.contains("..") {
        Some("it contains `..`")
    } else if id.ends_with(".lock") {
        Some("it ends with `.lock`")
    } else if id.ends_with('.') || id.starts_with('.') {
        Some("it starts or ends with `.`")
    } else if id.contains(|c: char| c.is_ascii_control() || " ~^:?*[\\@{".contains(c)) {
        Some("it contains a character git refuses in branch names")
    } else {
        None
    };
    match why {
        Some(why) => Err(GitError::BadBranch {
            id: id.to_string(),
            why,
        }),
        None => Ok(format!("dirigent/{id}")),
    }
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

    /// Makes a worktree at `path` on a new branch `branch` starting at `base`.
    pub fn add_worktree(&self, path: &Path, branch: &str, base: &str) -> Result<(), GitError> {
        git(
            &self.top,
            [
                OsStr::new("worktree"),
                OsStr::new("add"),
                OsStr::new("--quiet"),
                OsStr::new("-b"),
                OsStr::new(branch),
                path.as_os_str(),
                OsStr::new(base),
            ],
        )
        .map(drop)
    }

    /// Removes the worktree at `path` (whatever it holds: its changes were saved or merged
    /// before) and what git keeps about it; the branch stays.
    pub fn remove_worktree(&self, path: &Path) -> Result<(), GitError> {
        git(
            &self.top,
            [
                OsStr::new("worktree"),
                OsStr::new("remove"),
                OsStr::new("--force"),
                path.as_os_str(),
            ],
        )?;
        git(&self.top, ["worktree", "prune"]).map(drop)
    }

    /// What the work tree at `worktree` changed against `base`, untracked files included.
    pub fn diff_stat(&self, worktree: &Path, base: &str) -> Result<DiffStat, GitError> {
        count_untracked(worktree)?;
        let numstat = git(worktree, ["diff", "--numstat", base])?;
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

    /// Everything the work tree at `worktree` changed against `base` as a binary-safe patch
    /// (untracked files included), for the human and for the next agent.
    pub fn patch(&self, worktree: &Path, base: &str) -> Result<String, GitError> {
        count_untracked(worktree)?;
        git(worktree, ["diff", "--binary", base])
    }

    /// Readies a kept worktree for another task: a new branch `branch` at `base`, checked out
    /// by force, untracked files removed (ignored ones stay). Measured with
    /// `scripts/bench/worktrees`, this is tens of milliseconds where making a worktree of a large
    /// repository afresh takes seconds.
    pub fn reuse_worktree(
        &self,
        worktree: &Path,
        branch: &str,
        base: &str,
    ) -> Result<(), GitError> {
        git(
            worktree,
            ["checkout", "--quiet", "--force", "-B", branch, base],
        )?;
        git(worktree, ["clean", "--quiet", "-fd"]).map(drop)
    }

    /// Puts the work tree at `worktree` back to `base`: tracked changes and untracked files are
    /// discarded; ignored files (a copied `.env`, a linked `node_modules`) stay.
    pub fn reset_to(&self, worktree: &Path, base: &str) -> Result<(), GitError> {
        git(worktree, ["reset", "--quiet", "--hard", base])?;
        git(worktree, ["clean", "--quiet", "-fd"]).map(drop)
    }

    /// Applies a patch made by [`Repo::patch`] to the work tree at `worktree`.
    pub fn apply(&self, worktree: &Path, patch_file: &Path) -> Result<(), GitError> {
        git(
            worktree,
            [
                OsStr::new("apply"),
                OsStr::new("--whitespace=nowarn"),
                patch_file.as_os_str(),
            ],
        )
        .map(drop)
    }

    /// Commits everything in the work tree at `worktree` on its branch — after any commits the
    /// agent made itself — with `title` and the trailers `Dirigent-Task:` and `Dirigent-Agent:`.
    /// Returns the new head, or `None` when there was nothing to commit.
    pub fn commit_all(
        &self,
        worktree: &Path,
        title: &str,
        task: &str,
        agent: &str,
    ) -> Result<Option<String>, GitError> {
        git(worktree, ["add", "--all"])?;
        if git(worktree, ["diff", "--cached", "--quiet"]).is_ok() {
            return Ok(None);
        }
        let message = format!("{title}\n\nDirigent-Task: {task}\nDirigent-Agent: {agent}\n");
        // The user's own identity when git has one; dirigent's when it has none (a fresh
        // machine, a service account), rather than failing a finished task.
        let commit = ["commit", "--quiet", "--no-verify", "-m", &message];
        let has_identity = git(worktree, ["var", "GIT_AUTHOR_IDENT"]).is_ok()
            && git(worktree, ["var", "GIT_COMMITTER_IDENT"]).is_ok();
        if has_identity {
            git(worktree, commit)?;
        } else {
            let fallback = [
                "-c",
                "user.name=dirigent",
                "-c",
                "user.email=dirigent@localhost",
            ];
            git(worktree, fallback.iter().chain(commit.iter()))?;
        }
        Ok(Some(
            git(worktree, ["rev-parse", "HEAD"])?.trim().to_string(),
        ))
    }
}

/// Makes a diff against the base see the untracked files too: they are recorded as intended
/// additions (this stages no content).
fn count_untracked(worktree: &Path) -> Result<(), GitError> {
    git(worktree, ["add", "--all", "--intent-to-add"]).map(drop)
}

/// Runs `git -C dir ARGS…` and returns its stdout. No terminal prompt, no pager, messages in
/// English (they are matched nowhere, but shown to users who report them).
fn git<I, S>(dir: &Path, args: I) -> Result<String, GitError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().into()).collect();
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(&args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_PAGER", "cat")
        .env("LC_ALL", "C")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => GitError::NotInstalled,
            _ => GitError::Io(e),
        })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(GitError::Failed {
        args: args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" "),
        status: out.status.to_string(),
        stderr: stderr.trim().lines().last().unwrap_or("").to_string(),
    })
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
        let tree = dir.path().join(".wt").join("t1");
        let branch = branch_for("t1").unwrap();
        repo.add_worktree(&tree, &branch, &base).unwrap();
        assert_eq!(
            std::fs::read_to_string(tree.join("a.txt")).unwrap(),
            "one\ntwo\n",
            "expected the worktree to hold the base's files"
        );
        std::fs::write(tree.join("a.txt"), "one\nthree\nfour\n").unwrap();
        std::fs::write(tree.join("new.txt"), "x\n").unwrap();
        assert_eq!(
            repo.diff_stat(&tree, &base).unwrap(),
            DiffStat {
                files: 2,
                insertions: 3,
                deletions: 1
            },
            "expected the edit and the untracked file counted"
        );
        // Kept for the next task: on its own branch at the base, the last task's files gone.
        repo.reuse_worktree(&tree, &branch_for("t9").unwrap(), &base)
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(tree.join("a.txt")).unwrap(),
            "one\ntwo\n",
            "expected a reused worktree back at the base"
        );
        assert!(
            !tree.join("new.txt").exists(),
            "expected the last task's new file gone"
        );
        assert_eq!(
            git(&tree, ["symbolic-ref", "--short", "HEAD"])
                .unwrap()
                .trim(),
            "dirigent/t9",
            "expected the next task's branch checked out"
        );
        repo.remove_worktree(&tree).unwrap();
        assert!(!tree.exists(), "expected the worktree's directory gone");
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
        let tree = dir.path().join(".wt").join("t2");
        repo.add_worktree(&tree, &branch_for("t2").unwrap(), &base)
            .unwrap();
        std::fs::write(tree.join(".env"), "SECRET=1\n").unwrap();
        std::fs::write(tree.join("a.txt"), "one\nhalf-done\n").unwrap();
        std::fs::write(tree.join("scratch.txt"), "tmp\n").unwrap();
        let patch = repo.patch(&tree, &base).unwrap();
        assert!(
            patch.contains("+half-done") && patch.contains("scratch.txt"),
            "expected the edit and the new file in the patch:\n{patch}"
        );
        repo.reset_to(&tree, &base).unwrap();
        assert_eq!(
            std::fs::read_to_string(tree.join("a.txt")).unwrap(),
            "one\ntwo\n",
            "expected the edit discarded"
        );
        assert!(
            !tree.join("scratch.txt").exists(),
            "expected the new file discarded"
        );
        assert!(tree.join(".env").exists(), "expected the ignored .env kept");
        let patch_file = dir.path().join("t2.patch");
        std::fs::write(&patch_file, &patch).unwrap();
        repo.apply(&tree, &patch_file).unwrap();
        assert_eq!(
            std::fs::read_to_string(tree.join("a.txt")).unwrap(),
            "one\nhalf-done\n",
            "expected the patch to bring the changes back"
        );
        let head = repo
            .commit_all(&tree, "Finish a.txt", "t2", "claude")
            .unwrap();
        assert!(head.is_some(), "expected a commit");
        let log = git(&tree, ["log", "-1", "--format=%B"]).unwrap();
        assert!(
            log.starts_with("Finish a.txt")
                && log.contains("Dirigent-Task: t2")
                && log.contains("Dirigent-Agent: claude"),
            "expected the title and the trailers, got:\n{log}"
        );
        assert_eq!(
            repo.commit_all(&tree, "again", "t2", "claude").unwrap(),
            None,
            "expected nothing to commit the second time"
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
