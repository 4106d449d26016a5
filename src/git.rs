//! Git, for isolated editing: the repository a workspace is in, the branch and worktree a task
//! edits in, what an attempt changed there, its commit, and the steps of a merge (replaying a
//! branch on its target, the compare-and-swap of the target's ref, the fast-forward of the
//! user's checkout). It runs the real `git` — the one the user has, with their configuration —
//! never through a shell, never prompting, and with hooks off: a hook an agent planted in the
//! repository never runs as dirigent. When and why these steps run is the engine's
//! `worktrees`/`merging` rooms. The repository's operations are `git/repo.rs`, a task tree's
//! `git/tree.rs`; here are the types, the checks of names, and how git is run.

mod repo;
mod tree;

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
    #[error(
        "the repository has no commit yet: a task's worktree starts from a commit; make one (`git add -A && git commit -m start`), or run the task in the workspace itself (`--workdir shared`)"
    )]
    NoCommits,
    #[error("git {found} is too old: worktrees and merges need git 2.38 or later")]
    TooOld { found: String },
    #[error("`git {args}` failed ({status}): {stderr}")]
    Failed {
        args: String,
        status: String,
        stderr: String,
        /// What ran out, when git failed for want of a resource (the disk, descriptors,
        /// memory): not the work's fault, so the step waits for room instead of failing it.
        exhausted: Option<&'static str>,
    },
    #[error("cannot run git: {0}")]
    Io(std::io::Error),
    #[error(
        "`{}` is no longer the task's worktree: {why}; nothing is done through it (an agent may have put a link in its place)",
        path.display()
    )]
    Displaced { path: PathBuf, why: &'static str },
}

impl GitError {
    /// What ran out, when that is why git failed: the step is then tried again once there is
    /// room, not counted against the work.
    pub fn exhausted(&self) -> Option<&'static str> {
        match self {
            GitError::Io(e) => crate::fsutil::exhausted(e),
            GitError::Failed { exhausted, .. } => *exhausted,
            _ => None,
        }
    }
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

/// Whether the repository `dir` is in has no commit yet (`git init` and nothing committed):
/// no worktree can be made from it. `false` when that cannot be told.
pub fn has_no_commits(dir: &Path) -> bool {
    matches!(
        git(dir, ["rev-parse", "--verify", "--quiet", "HEAD^{commit}"]),
        Err(GitError::Failed { .. })
    ) && git(dir, ["rev-parse", "--git-dir"]).is_ok()
        && git(dir, ["rev-list", "-n", "1", "--all"]).is_ok_and(|out| out.trim().is_empty())
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
            out.push_str(&format!("--- {}\n", crate::terminal::printable(file)));
        }
        // The agent wrote these lines: shown in reasons and on terminals, so made printable.
        if inside {
            out.push_str(&crate::terminal::printable(line));
            out.push('\n');
        }
        if line.starts_with(">>>>>>>") {
            inside = false;
        }
    }
    out
}

fn bounded(mut text: String) -> String {
    crate::progress::cut_bytes(&mut text, MAX_HUNKS, "\n… (cut)\n");
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
    let mut e = failed(&args, &out);
    if let GitError::Failed { exhausted, .. } = &mut e
        && exhausted.is_none()
    {
        *exhausted = disk_full_at(dir);
    }
    Err(e)
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

/// A path as git prints it in a line of output: as it is, or — holding a quote, a backslash or
/// a control character — in double quotes with C escapes (`"a\tb"`, octal `\303`), which this
/// undoes.
fn unquote_path(line: &str) -> String {
    let Some(inner) = line
        .strip_prefix('"')
        .and_then(|l| l.strip_suffix('"'))
        .filter(|_| line.len() >= 2)
    else {
        return line.to_string();
    };
    let mut bytes = Vec::with_capacity(inner.len());
    let mut it = inner.bytes().peekable();
    while let Some(b) = it.next() {
        if b != b'\\' {
            bytes.push(b);
            continue;
        }
        match it.next() {
            Some(b'n') => bytes.push(b'\n'),
            Some(b't') => bytes.push(b'\t'),
            Some(b'r') => bytes.push(b'\r'),
            Some(b'a') => bytes.push(0x07),
            Some(b'b') => bytes.push(0x08),
            Some(b'f') => bytes.push(0x0c),
            Some(b'v') => bytes.push(0x0b),
            Some(d @ b'0'..=b'7') => {
                let mut value = u32::from(d - b'0');
                for _ in 0..2 {
                    match it.peek() {
                        Some(d @ b'0'..=b'7') => {
                            value = value * 8 + u32::from(d - b'0');
                            it.next();
                        }
                        _ => break,
                    }
                }
                bytes.push(value as u8);
            }
            Some(other) => bytes.push(other),
            None => bytes.push(b'\\'),
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// What ran out, as git's messages say it — the system's words ending one of its lines (the
/// last is often only "cannot update ref"), never anywhere in a line, where a file name an agent
/// chose could say them — in the words of [`crate::fsutil::exhausted`].
fn exhausted_in(stderr: &str) -> Option<&'static str> {
    [
        ("No space left on device", "the disk is full"),
        ("Disk quota exceeded", "the disk quota is used up"),
        ("Too many open files", "the daemon has too many open files"),
        ("Cannot allocate memory", "memory ran out"),
        ("Out of memory", "memory ran out"),
    ]
    .into_iter()
    .find(|(said, _)| {
        stderr
            .lines()
            .any(|l| l.trim_end().ends_with(&format!(": {said}")))
    })
    .map(|(_, what)| what)
}

/// Whether the file system holding `dir` is (all but) full — git does not always say so when
/// a write fails (`couldn't write '….lock'`).
fn disk_full_at(dir: &Path) -> Option<&'static str> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    // `fsblkcnt_t` is 32 bits on macOS, 64 on Linux.
    #[allow(clippy::useless_conversion)]
    let free = u64::from(st.blocks_available()).saturating_mul(st.fragment_size());
    (free < 1 << 20 || (st.files() > 0 && st.files_available() == 0)).then_some("the disk is full")
}

fn failed<S: AsRef<OsStr>>(args: &[S], out: &std::process::Output) -> GitError {
    let stderr = String::from_utf8_lossy(&out.stderr);
    GitError::Failed {
        exhausted: exhausted_in(&stderr),
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

    /// The system's words count only where git puts them, ending a line: a file name an agent
    /// chose saying them is no full disk.
    #[test]
    fn running_out_is_read_from_the_end_of_gits_lines() {
        for (stderr, want) in [
            (
                "fatal: unable to write loose object file: No space left on device\n",
                Some("the disk is full"),
            ),
            (
                "error: unable to create file x: Disk quota exceeded\nfatal: cannot update ref\n",
                Some("the disk quota is used up"),
            ),
            (
                "error: 'No space left on device/' does not have a commit checked out\n",
                None,
            ),
            (
                "fatal: pathspec 'x: No space left on device' did not match\n",
                None,
            ),
            ("", None),
        ] {
            assert_eq!(exhausted_in(stderr), want, "reading {stderr:?}");
        }
    }

    #[test]
    fn paths_git_quotes_are_read_back() {
        for (line, want) in [
            ("plain/path", "plain/path"),
            ("dir/", "dir/"),
            ("\"tab\\there\"", "tab\there"),
            ("\"new\\nline\"", "new\nline"),
            ("\"say \\\"hi\\\"\"", "say \"hi\""),
            ("\"back\\\\slash\"", "back\\slash"),
            ("\"caf\\303\\251\"", "café"),
            ("\"", "\""),
        ] {
            assert_eq!(unquote_path(line), want, "reading {line:?}");
        }
    }

    /// Only what the tree's own ignore rules hide goes, odd names included; what the user's
    /// checkout ignores too stays, and so does every tracked and committed file.
    #[test]
    fn files_only_the_works_ignore_rules_hide_are_removed() {
        let (dir, repo) = repo();
        std::fs::write(dir.path().join(".gitignore"), "*.log\n").unwrap();
        let base = repo.head().unwrap();
        let path = dir.path().join(".wt").join("t1");
        let tree = repo
            .add_worktree(&path, &branch_for("t1").unwrap(), &base)
            .unwrap();
        // The work's rules: its own `.gitignore` (the user's is not committed in the base).
        std::fs::write(
            path.join(".gitignore"),
            "*.log\nhidden*\nodd*\n:*\ncache/\n",
        )
        .unwrap();
        for name in [
            "hidden.txt",
            "odd\tname \"q\" é.txt",
            ":(glob)odd",
            "kept.log",
            "cache/x",
        ] {
            let file = path.join(name);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, "x").unwrap();
        }
        let mut dropped = tree.drop_hidden_by_work(&repo).unwrap();
        dropped.sort();
        assert_eq!(
            dropped,
            [
                ":(glob)odd",
                "cache/",
                "hidden.txt",
                "odd\tname \"q\" é.txt"
            ],
            "expected only what the user's checkout does not ignore"
        );
        for (name, there) in [
            ("hidden.txt", false),
            ("odd\tname \"q\" é.txt", false),
            (":(glob)odd", false),
            ("cache", false),
            ("kept.log", true),
            (".gitignore", true),
            ("a.txt", true),
        ] {
            assert_eq!(
                path.join(name).exists(),
                there,
                "expected `{name}` {}",
                if there { "kept" } else { "removed" }
            );
        }
    }

    #[test]
    fn a_worktree_is_found_by_gits_own_link_not_by_its_git_file() {
        let (dir, repo) = repo();
        let base = repo.head().unwrap();
        let path = dir.path().join(".context/worktrees/slot-1");
        let made = repo
            .add_worktree(&path, &branch_for("t1").unwrap(), &base)
            .unwrap();
        let found = repo.linked_tree(&path).unwrap().expect("a tree git links");
        assert_eq!(
            found.git_dir.canonicalize().unwrap(),
            made.git_dir.canonicalize().unwrap(),
            "expected the administrative directory git made for it"
        );
        // The tree's own `.git` file pointed elsewhere (an agent wrote it): git's link decides.
        std::fs::write(path.join(".git"), "gitdir: /somewhere/else\n").unwrap();
        let found = repo
            .linked_tree(&path)
            .unwrap()
            .expect("still linked by git");
        assert_eq!(
            found.git_dir.canonicalize().unwrap(),
            made.git_dir.canonicalize().unwrap(),
            "expected git's link, not the planted file"
        );
        let plain = dir.path().join(".context/worktrees/slot-2");
        std::fs::create_dir_all(&plain).unwrap();
        assert!(
            repo.linked_tree(&plain).unwrap().is_none(),
            "expected a directory git does not know as none"
        );
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
            // A name git quotes unless asked not to (`"caf\303\251.md"`).
            std::fs::write(path.join("café.md"), text).unwrap();
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
            vec!["a.txt".to_string(), "café.md".to_string()],
            "expected a.txt and café.md to conflict, named as they are"
        );
        assert!(
            conflict.hunks.contains("<<<<<<<")
                && conflict.hunks.contains("second")
                && conflict.hunks.contains("--- café.md\n<<<<<<<"),
            "expected the conflicting regions of both files, got:\n{}",
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
