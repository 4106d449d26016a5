//! Editing tasks across the fleet: the git work that lets a task which edits a repository be
//! published on one node and done on another.
//!
//! Flow (see `mod.rs` for the queue itself):
//! 1. The submitting node has `cluster.repository:` — where workers reach its repository. An
//!    editing task is published with that address and its base commit ([`EditJob`]), resolved
//!    here from the task's `base:` or the head of the branch it would merge into.
//! 2. A worker takes it only when the address is under one of its `cluster.repositories:`
//!    ([`allows`]); it fetches the base into a cache of its own (`.context/fleet/repos/`,
//!    [`fetch_into_cache`]), and its engine works in a worktree of that cache, with the same
//!    checked completion as on one machine (`expect_changes`, `verify`).
//! 3. Work that passes is committed there; before the outcome is claimed it is pushed to the
//!    repository as branch `fleet/<worker>/<id>` ([`deliver`]) — or, when the push is refused,
//!    put in the object store as a git bundle.
//! 4. The submitting node fetches that branch (or unbundles it) into its own repository
//!    ([`receive`]); merging it is the user's decision, as with `merge: manual`.
//!
//! Everything here blocks (git runs); callers use tokio's blocking pool.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

/// What an editing task carries on the queue: where its repository is and the commit it
/// starts from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EditJob {
    /// The submitting node's `cluster.repository` (a path or URL workers reach).
    pub repository: String,
    /// The full commit id the work starts from.
    pub base: String,
    /// Where the submitting workspace is inside the repository (`""` at its top): where the
    /// agent works inside the tree.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub inside: String,
}

/// Whether `inside` is a plain relative path (names only: no `..`, no leading `/`).
pub fn valid_inside(inside: &str) -> bool {
    inside.is_empty()
        || (!inside.starts_with('/')
            && inside
                .split('/')
                .all(|s| !s.is_empty() && s != "." && s != ".." && !s.contains('\0')))
}

/// An editing task taken by this worker, as its ledger records it (`fleet_taken`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EditHere {
    pub repository: String,
    pub base: String,
    /// The bare repository this worker fetched the base into; the task's worktree is one of it.
    pub cache: PathBuf,
    /// The branch the work is delivered as (`fleet/<worker>/<node>.<id>[-rN]`).
    pub branch: String,
    /// Where the agent works inside the tree (see [`EditJob::inside`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub inside: String,
}

/// Work done on a worker, as the outcome carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Work {
    /// The branch, in the repository (pushed) or in the bundle.
    pub branch: String,
    pub commit: String,
    pub base: String,
    /// How it travels: pushed to the repository, in the object store as a bundle, or not at
    /// all (why).
    pub carried: Carried,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "by")]
pub enum Carried {
    /// Not carried yet (on the worker, before its outcome is claimed).
    NotYet,
    Pushed,
    /// A bundle under this name in the results object store.
    Bundle {
        object: String,
    },
    /// It stayed on the worker.
    Stayed {
        why: String,
    },
}

/// A repository address, checked: an absolute path (or `file://` URL), or a network URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Path(PathBuf),
    Url {
        /// `ssh`, `https`, `http` or `git`.
        scheme: String,
        /// `[user@]host[:port]`, the host lower-cased.
        authority: String,
        /// From its first `/`, without a trailing `/`.
        path: String,
    },
}

impl Source {
    /// Parses an address as written in a config or a task. Refused: relative paths, `..`,
    /// scp-like `host:path` (ambiguous about where the path starts), other transports (`ext::`
    /// runs commands), control characters and spaces.
    pub fn parse(text: &str) -> Result<Source, String> {
        if text.is_empty() {
            return Err("it is empty".into());
        }
        if text
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '\\')
        {
            return Err("it has a space, a backslash or a control character".into());
        }
        // `ext::sh …`, `fd::3`: a transport helper named before `::` (an IPv6 host is in
        // brackets, after `//`).
        if let Some((helper, _)) = text.split_once("::")
            && !helper.contains('/')
            && !helper.contains('[')
        {
            return Err("`::` transports are not allowed".into());
        }
        let path_of = |p: &str| -> Result<Source, String> {
            if !p.starts_with('/') {
                return Err("a path must be absolute".into());
            }
            if p.split('/').any(|s| s == "..") {
                return Err("it has a `..` component".into());
            }
            Ok(Source::Path(Path::new(p).components().collect()))
        };
        if let Some(rest) = text.strip_prefix("file://") {
            return path_of(rest);
        }
        if let Some((scheme, rest)) = text.split_once("://") {
            let scheme = scheme.to_ascii_lowercase();
            if !["ssh", "https", "http", "git"].contains(&scheme.as_str()) {
                return Err(format!(
                    "`{scheme}://` is not a transport the fleet uses (`ssh`, `https`, `http`, `git`, `file` or a path)"
                ));
            }
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, ""),
            };
            if authority.is_empty() || path.len() <= 1 {
                return Err("it names no host or no repository path".into());
            }
            let (user, host) = match authority.rsplit_once('@') {
                Some((user, host)) => (Some(user), host),
                None => (None, authority),
            };
            if user.is_some_and(|u| u.contains(':')) {
                return Err("it carries a password; give the worker its credentials (an ssh key, a git credential helper), not the address".into());
            }
            let lowered = path.to_ascii_lowercase();
            if path.split('/').any(|s| s == "..")
                || lowered.contains("%2e")
                || lowered.contains("%2f")
                || path.contains("//")
            {
                return Err("its path has `..`, `//` or an encoded `.` or `/`".into());
            }
            // Host names are not case-sensitive; user names are.
            let authority = match user {
                Some(u) => format!("{u}@{}", host.to_ascii_lowercase()),
                None => host.to_ascii_lowercase(),
            };
            return Ok(Source::Url {
                scheme,
                authority,
                path: path.trim_end_matches('/').to_string(),
            });
        }
        if text.starts_with('/') {
            return path_of(text);
        }
        Err("write an absolute path or a URL (`ssh://host/path`, `https://…`, `file:///…`); `host:path` is not taken".into())
    }

    /// The argument git is given (never one that starts with `-`).
    pub fn git_arg(&self) -> String {
        match self {
            Source::Path(p) => p.display().to_string(),
            Source::Url {
                scheme,
                authority,
                path,
            } => format!("{scheme}://{authority}{path}"),
        }
    }

    /// A path's real place (links followed), so that a root and a repository compare as the
    /// same directories; URLs as they are.
    fn real(&self) -> Option<Source> {
        match self {
            Source::Path(p) => p.canonicalize().ok().map(Source::Path),
            url => Some(url.clone()),
        }
    }
}

/// Whether `repository` is under one of `roots` (this worker's `cluster.repositories`):
/// paths compared by their real places, component by component; URLs by scheme, host and
/// path segments. `Ok`: the source to fetch from.
pub fn allows(roots: &[Source], repository: &str) -> Result<Source, String> {
    let source = Source::parse(repository)
        .map_err(|e| format!("its repository `{repository}` is not an address taken here: {e}"))?;
    let real = source
        .real()
        .ok_or_else(|| format!("its repository `{repository}` does not exist on this worker"))?;
    let under = |root: &Source| match (root.real(), &real) {
        (Some(Source::Path(r)), Source::Path(p)) => p.starts_with(r),
        (
            Some(Source::Url {
                scheme: s1,
                authority: a1,
                path: p1,
            }),
            Source::Url {
                scheme: s2,
                authority: a2,
                path: p2,
            },
        ) => s1 == *s2 && a1 == *a2 && (p2 == &p1 || p2.starts_with(&format!("{p1}/"))),
        _ => false,
    };
    if roots.iter().any(under) {
        Ok(real)
    } else if roots.is_empty() {
        Err(format!(
            "it edits the repository `{repository}`, and this worker takes no editing tasks (its `cluster.repositories` is empty)"
        ))
    } else {
        Err(format!(
            "its repository `{repository}` is outside this worker's `cluster.repositories`"
        ))
    }
}

/// The branch work is delivered as: `fleet/<worker>/<node>.<id>`, `-rN` for a retried round
/// — the worker's own name space, and the task's node and id, so no two deliveries share one.
/// `None` when git would not take it (then the work is not delivered).
pub fn branch_name(worker: &str, node: &str, id: &str, round: u32) -> Option<String> {
    let name = match round {
        0 => format!("fleet/{worker}/{node}.{id}"),
        n => format!("fleet/{worker}/{node}.{id}-r{n}"),
    };
    crate::git::check_branch_name(&name).ok().map(|()| name)
}

/// Whether `name` is a branch of the form workers deliver (checked before the submitting
/// node writes it into its repository).
pub fn is_delivery_branch(name: &str) -> bool {
    name.starts_with("fleet/")
        && name.split('/').count() == 3
        && crate::git::check_branch_name(name).is_ok()
}

/// Whether `text` is a full commit id.
pub fn is_commit_id(text: &str) -> bool {
    (text.len() == 40 || text.len() == 64) && text.chars().all(|c| c.is_ascii_hexdigit())
}

/// The submitting node: the commit an editing task starts from — its `base:` when it has one,
/// else the head of `merge_into`, else of the checked-out branch.
pub fn resolve_base(
    repo: &Path,
    base: Option<&str>,
    merge_into: Option<&str>,
) -> Result<String, String> {
    let repo = crate::git::Repo {
        top: repo.to_path_buf(),
    };
    let commit = match (base, merge_into) {
        (Some(rev), _) => repo.resolve_base(rev),
        (None, Some(branch)) => repo.resolve_base(&format!("refs/heads/{branch}")),
        (None, None) => repo.head(),
    };
    commit.map_err(|e| e.to_string())
}

/// Runs git in `dir` for the fleet's transfers: no hooks, no prompt, and only the transports
/// the fleet takes (`ext::` and the like never run).
fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new("git");
    cmd.arg("-C").arg(dir);
    for c in [
        "core.hooksPath=/dev/null",
        "core.fsmonitor=false",
        "gc.autoDetach=false",
        "maintenance.autoDetach=false",
        "protocol.allow=never",
        "protocol.file.allow=always",
        "protocol.ssh.allow=always",
        "protocol.https.allow=always",
        "protocol.http.allow=always",
        "protocol.git.allow=always",
        // A transfer that stalls ends instead of holding a worker's slot for ever.
        "http.lowSpeedLimit=1000",
        "http.lowSpeedTime=60",
    ] {
        cmd.args(["-c", c]);
    }
    cmd.args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env(
            "GIT_SSH_COMMAND",
            "ssh -o BatchMode=yes -o ConnectTimeout=30 -o ServerAliveInterval=15 -o ServerAliveCountMax=4",
        )
        .env("LC_ALL", "C")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .stdin(std::process::Stdio::null());
    let out = crate::reaper::output(&mut cmd).map_err(|e| format!("cannot run git: {e}"))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).trim().to_string());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.trim().lines().last().unwrap_or("").to_string();
    Err(format!("`git {}` failed: {last}", args.join(" ")))
}

/// The cache's own git configuration, written again before every transfer: an agent works in
/// a worktree of the cache and can write its `config` (a worktree shares it), and settings such
/// as `url.<x>.insteadOf`, `core.gitProxy` or `credential.helper` would redirect the next
/// fetch or push, or run a command; alternates would borrow objects from elsewhere.
fn reset_cache(cache: &Path) -> Result<(), String> {
    let config = "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = true\n";
    crate::fsutil::write_atomic(&cache.join("config"), config.as_bytes())
        .map_err(|e| format!("cannot write the cache's config: {e}"))?;
    for planted in ["objects/info/alternates", "info/grafts", "shallow"] {
        match std::fs::remove_file(cache.join(planted)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot remove the cache's `{planted}`: {e}")),
        }
    }
    Ok(())
}

/// One lock per cache: two fetches into one repository at once fail on each other's ref locks.
fn cache_lock(cache: &Path) -> std::sync::Arc<std::sync::Mutex<()>> {
    static LOCKS: std::sync::Mutex<
        Option<std::collections::HashMap<PathBuf, std::sync::Arc<std::sync::Mutex<()>>>>,
    > = std::sync::Mutex::new(None);
    let mut all = LOCKS.lock().unwrap_or_else(|e| e.into_inner());
    all.get_or_insert_with(Default::default)
        .entry(cache.to_path_buf())
        .or_default()
        .clone()
}

/// A worker: makes sure `base` is in its cache of `source` (fetched when it is not), and
/// returns the cache — a bare repository under `root/.context/fleet/repos/`, one per address.
pub fn fetch_into_cache(root: &Path, source: &Source, base: &str) -> Result<PathBuf, String> {
    if !is_commit_id(base) {
        return Err(format!("its base `{base}` is not a full commit id"));
    }
    let name = format!("{:016x}.git", fnv(&source.git_arg()));
    let cache = root.join(".context/fleet/repos").join(name);
    let lock = cache_lock(&cache);
    let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
    if !cache.join("HEAD").exists() {
        std::fs::create_dir_all(&cache)
            .map_err(|e| format!("cannot make the cache `{}`: {e}", cache.display()))?;
        git(&cache, &["init", "--quiet", "--bare"])?;
    }
    reset_cache(&cache)?;
    let has = |c: &str| git(&cache, &["cat-file", "-e", &format!("{c}^{{commit}}")]).is_ok();
    if has(base) {
        return Ok(cache);
    }
    let from = source.git_arg();
    let fetch = |what: &str| {
        git(
            &cache,
            &[
                "fetch",
                "--quiet",
                "--no-tags",
                "--no-write-fetch-head",
                "--",
                &from,
                what,
            ],
        )
    };
    // By commit first (one object graph); a server that takes only advertised refs gets a
    // fetch of its branches instead.
    let by_commit = fetch(base);
    if has(base) {
        return Ok(cache);
    }
    let by_branches = fetch("+refs/heads/*:refs/remotes/origin/*");
    if has(base) {
        return Ok(cache);
    }
    let why = by_branches
        .err()
        .or(by_commit.err())
        .unwrap_or_else(|| format!("the repository has no commit `{base}`"));
    Err(format!("cannot fetch its base from `{from}`: {why}"))
}

/// How a delivery went.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    Pushed,
    /// The push was refused (why); the work is in the bundle file, for the object store.
    Bundled {
        push: String,
    },
    /// Neither worked.
    Stayed {
        why: String,
    },
}

/// A worker: delivers committed work — pushed to the repository as `branch` (this worker's
/// own name space, so pushed with force: a repeat of the same task replaces its own older
/// work), else bundled into `bundle` (a file the caller puts into the object store).
pub fn deliver(cache: &Path, source: &Source, work: &Work, bundle: &Path) -> Delivery {
    match try_deliver(cache, source, work, bundle) {
        Ok(d) => d,
        Err(why) => Delivery::Stayed { why },
    }
}

fn try_deliver(
    cache: &Path,
    source: &Source,
    work: &Work,
    bundle: &Path,
) -> Result<Delivery, String> {
    if !is_commit_id(&work.commit) || !is_commit_id(&work.base) {
        return Err("its commits are not full commit ids".into());
    }
    if !is_delivery_branch(&work.branch) {
        return Err(format!("`{}` is not a delivery branch", work.branch));
    }
    let reference = format!("refs/heads/{}", work.branch);
    let lock = cache_lock(cache);
    let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
    reset_cache(cache)?;
    git(cache, &["update-ref", &reference, &work.commit])?;
    let pushed = git(
        cache,
        &[
            "push",
            "--quiet",
            "--force",
            "--no-verify",
            "--",
            &source.git_arg(),
            &format!("{reference}:{reference}"),
        ],
    );
    let delivery = match pushed {
        Ok(_) => Delivery::Pushed,
        Err(push) => {
            let made = git(
                cache,
                &[
                    "bundle",
                    "create",
                    "--quiet",
                    &bundle.display().to_string(),
                    &reference,
                    &format!("^{}", work.base),
                ],
            );
            match made {
                Ok(_) => Delivery::Bundled { push },
                Err(b) => Delivery::Stayed {
                    why: format!("{push}; and no bundle could be made: {b}"),
                },
            }
        }
    };
    // The cache keeps the commit (the task's own branch there); the delivery ref is only for
    // the transfer.
    let _ = git(cache, &["update-ref", "-d", &reference]);
    Ok(delivery)
}

/// A worker whose outcome lost: its pushed branch is deleted from the repository (the
/// winner's is the task's work).
pub fn withdraw(cache: &Path, source: &Source, branch: &str) -> Result<(), String> {
    if !is_delivery_branch(branch) {
        return Err(format!("`{branch}` is not a delivery branch"));
    }
    let lock = cache_lock(cache);
    let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
    reset_cache(cache)?;
    git(
        cache,
        &[
            "push",
            "--quiet",
            "--no-verify",
            "--",
            &source.git_arg(),
            &format!(":refs/heads/{branch}"),
        ],
    )
    .map(|_| ())
}

/// The submitting node: brings delivered work into its repository as the branch it was
/// delivered as — fetched from `from`: the repository it was pushed to, or the bundle file.
pub fn receive(repo: &Path, from: &str, work: &Work) -> Result<(), String> {
    if !is_delivery_branch(&work.branch) || !is_commit_id(&work.commit) {
        return Err(format!(
            "the worker named the branch `{}` and commit `{}`, which are not a delivery's",
            work.branch, work.commit
        ));
    }
    let reference = format!("refs/heads/{}", work.branch);
    if git(repo, &["rev-parse", "--verify", "--quiet", &reference]).ok()
        == Some(work.commit.clone())
    {
        return Ok(());
    }
    // Fetched aside first: the branch is written only once it is the commit the outcome names.
    let incoming = format!(
        "refs/dirigent/incoming/{:016x}",
        fnv(&format!("{}\n{}", work.branch, work.commit))
    );
    git(
        repo,
        &[
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            "--",
            from,
            &format!("+{reference}:{incoming}"),
        ],
    )?;
    let got = git(repo, &["rev-parse", "--verify", "--quiet", &incoming]);
    let moved = match got {
        Ok(c) if c == work.commit => {
            git(repo, &["update-ref", &reference, &work.commit]).map(|_| ())
        }
        Ok(c) => Err(format!(
            "`{}` there is at `{c}`, not at the worker's `{}`",
            work.branch, work.commit
        )),
        Err(e) => Err(e),
    };
    let _ = git(repo, &["update-ref", "-d", &incoming]);
    moved
}

/// What the result says about the work, for the person who reads it on the submitting node.
pub fn describe(
    work: &Work,
    worker: &str,
    repository: &str,
    received: &Result<(), String>,
) -> String {
    let short = |c: &str| c.chars().take(12).collect::<String>();
    let (branch, commit, base) = (&work.branch, short(&work.commit), short(&work.base));
    match (&work.carried, received) {
        (Carried::Pushed | Carried::Bundle { .. }, Ok(())) => format!(
            "The work is on branch `{branch}` (commit `{commit}`, from `{base}`), done on worker `{worker}`. Review it with `git diff {base} {branch}`; merge it with `git merge {branch}`."
        ),
        (Carried::Pushed, Err(e)) => format!(
            "The work is on branch `{branch}` of `{repository}` (commit `{commit}`, from `{base}`), done on worker `{worker}`; it could not be brought into this repository: {e}"
        ),
        (Carried::Bundle { object }, Err(e)) => format!(
            "The work (commit `{commit}` on `{base}`, done on worker `{worker}`) came as a bundle, `{object}` in the fleet's object store `dirigent_results`, and could not be brought into this repository: {e}"
        ),
        (Carried::Stayed { why }, _) => {
            format!("The work (commit `{commit}` on `{base}`) stayed on worker `{worker}`: {why}")
        }
        (Carried::NotYet, _) => format!(
            "The work (commit `{commit}` on `{base}`) stayed on worker `{worker}`: it was not delivered"
        ),
    }
}

/// A short, stable fingerprint of a text (cache and bundle file names).
pub fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_parsed_or_refused_with_the_reason() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("/srv/git/app", Ok("/srv/git/app")),
            ("/srv/git/app/", Ok("/srv/git/app")),
            ("file:///srv/git/app", Ok("/srv/git/app")),
            (
                "https://Git.Example.com/acme/app.git",
                Ok("https://git.example.com/acme/app.git"),
            ),
            (
                "ssh://git@host:2222/acme/app/",
                Ok("ssh://git@host:2222/acme/app"),
            ),
            ("srv/git/app", Err("write an absolute path")),
            (
                "git@github.com:acme/app.git",
                Err("`host:path` is not taken"),
            ),
            ("/srv/../etc", Err("`..`")),
            ("https://host/acme/../x", Err("`..`")),
            ("https://host/acme/%2E%2E/x", Err("encoded")),
            ("ext::sh -c touch% /tmp/x", Err("space")),
            ("ext::sh", Err("`::`")),
            ("ssh://[::1]/srv/app", Ok("ssh://[::1]/srv/app")),
            ("ssh://Alice@Host/srv/app", Ok("ssh://Alice@host/srv/app")),
            ("https://me:secret@host/app", Err("password")),
            ("fd::3", Err("`::`")),
            ("ftp://host/x", Err("not a transport")),
            ("https://host", Err("no host or no repository path")),
            ("-upload-pack=evil", Err("write an absolute path")),
            ("/srv/git/app\n", Err("control")),
            ("", Err("empty")),
        ];
        for (text, want) in cases {
            let got = Source::parse(text).map(|s| s.git_arg());
            match (want, &got) {
                (Ok(w), Ok(g)) => assert_eq!(g, w, "for {text:?}: expected the address {w:?}"),
                (Err(part), Err(e)) => assert!(
                    e.contains(part),
                    "for {text:?}: expected an error containing {part:?}, got {e:?}"
                ),
                _ => panic!("for {text:?}: expected {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn a_repository_must_be_under_an_allowed_root() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(base.join("repos/app")).unwrap();
        std::fs::create_dir_all(base.join("repos-evil/app")).unwrap();
        std::fs::create_dir_all(base.join("elsewhere")).unwrap();
        // A link inside the root that leads out of it.
        std::os::unix::fs::symlink(base.join("elsewhere"), base.join("repos/out")).unwrap();
        let p = |s: &str| base.join(s).display().to_string();
        let roots = vec![
            Source::parse(&p("repos")).unwrap(),
            Source::parse("https://git.example.com/acme").unwrap(),
        ];
        let cases: &[(String, Result<(), &str>)] = &[
            (p("repos/app"), Ok(())),
            (format!("file://{}", p("repos/app")), Ok(())),
            (p("repos-evil/app"), Err("outside")),
            (p("repos/out"), Err("outside")),
            (p("repos/missing"), Err("does not exist")),
            ("https://git.example.com/acme/app.git".into(), Ok(())),
            ("https://GIT.example.com/acme/app.git".into(), Ok(())),
            (
                "https://git.example.com/acme-evil/app.git".into(),
                Err("outside"),
            ),
            ("http://git.example.com/acme/app.git".into(), Err("outside")),
            ("ssh://git.example.com/acme/app.git".into(), Err("outside")),
            (
                "https://git.example.com/acme/../x".into(),
                Err("not an address"),
            ),
        ];
        for (repo, want) in cases {
            let got = allows(&roots, repo).map(|_| ());
            match (want, &got) {
                (Ok(()), Ok(())) => {}
                (Err(part), Err(e)) => assert!(
                    e.contains(part),
                    "for {repo:?}: expected an error containing {part:?}, got {e:?}"
                ),
                _ => panic!("for {repo:?}: expected {want:?}, got {got:?}"),
            }
        }
        let none = allows(&[], &p("repos/app")).unwrap_err();
        assert!(
            none.contains("takes no editing tasks"),
            "a worker with no roots says it takes no editing tasks: {none}"
        );
    }

    #[test]
    fn delivery_branches_are_checked() {
        assert_eq!(
            branch_name("gpu", "desk", "fix-login", 0).as_deref(),
            Some("fleet/gpu/desk.fix-login")
        );
        assert_eq!(
            branch_name("gpu", "desk", "fix", 2).as_deref(),
            Some("fleet/gpu/desk.fix-r2")
        );
        assert_eq!(
            branch_name("gpu", "desk", "x.lock", 0),
            None,
            "git refuses `.lock` names"
        );
        for (inside, ok) in [
            ("", true),
            ("pkg/api", true),
            ("../x", false),
            ("/abs", false),
            ("a//b", false),
            ("a/./b", false),
        ] {
            assert_eq!(
                valid_inside(inside),
                ok,
                "is `{inside}` a place inside a repository: expected {ok}"
            );
        }
        for (name, ok) in [
            ("fleet/gpu/fix", true),
            ("main", false),
            ("fleet/gpu/../main", false),
            ("fleet/gpu/a/b", false),
            ("refs/heads/main", false),
        ] {
            assert_eq!(
                is_delivery_branch(name),
                ok,
                "is `{name}` a delivery branch: expected {ok}"
            );
        }
    }
}
