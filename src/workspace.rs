//! The workspace and its `.context/` directory: where every stage of the flow keeps its files.
//!
//! `inbox/` → (claim) → `running/` → `done/` | `failed/`; bad files go to `rejected/`.
//! Everything else (ledger, progress, runs, outbox, escalations) is written next to them.
//! This module only knows paths and how to create them; it decides nothing.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub use crate::confined::CONTEXT_DIR;

/// Subdirectories of `.context/` created by `init` and by the daemon.
pub const SUBDIRS: &[&str] = &[
    "inbox",
    "inbox/.tmp",
    "running",
    "done",
    "failed",
    "rejected",
    "escalations",
    "outbox",
    "runs",
    "workflows",
];

/// A workspace root and the paths derived from it.
#[derive(Clone, Debug)]
pub struct Workspace {
    root: PathBuf,
    ctx: PathBuf,
}

impl Workspace {
    /// A workspace rooted at `root` (made absolute, not required to exist yet).
    pub fn new(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        let root = if root.is_absolute() {
            root
        } else {
            std::env::current_dir()?.join(root)
        };
        // `--root .` is `/path`, not `/path/.`, in every message (components drop a `.`; a `..`
        // stays, as only the filesystem knows where it leads).
        let root: PathBuf = root.components().collect();
        let ctx = root.join(CONTEXT_DIR);
        Ok(Self { root, ctx })
    }

    /// Chooses the workspace: an explicit `--root`/`DIRIGENT_ROOT`, else the nearest ancestor of
    /// the current directory that has a `.context/`, else the current directory.
    pub fn discover(explicit: Option<&Path>) -> io::Result<Self> {
        if let Some(root) = explicit {
            return Self::new(root);
        }
        let cwd = std::env::current_dir()?;
        let found = cwd
            .ancestors()
            .find(|dir| dir.join(CONTEXT_DIR).is_dir())
            .map(Path::to_path_buf);
        Self::new(found.unwrap_or(cwd))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn context(&self) -> &Path {
        &self.ctx
    }
    pub fn inbox(&self) -> PathBuf {
        self.ctx.join("inbox")
    }
    /// Staging area for writers (Maildir `tmp/`): files here are never picked up.
    pub fn inbox_tmp(&self) -> PathBuf {
        self.ctx.join("inbox/.tmp")
    }
    pub fn running(&self) -> PathBuf {
        self.ctx.join("running")
    }
    pub fn done(&self) -> PathBuf {
        self.ctx.join("done")
    }
    pub fn failed(&self) -> PathBuf {
        self.ctx.join("failed")
    }
    pub fn rejected(&self) -> PathBuf {
        self.ctx.join("rejected")
    }
    pub fn escalations(&self) -> PathBuf {
        self.ctx.join("escalations")
    }
    pub fn outbox(&self) -> PathBuf {
        self.ctx.join("outbox")
    }
    pub fn runs(&self) -> PathBuf {
        self.ctx.join("runs")
    }
    pub fn run_dir(&self, task: &str) -> PathBuf {
        self.runs().join(task)
    }
    pub fn workflows(&self) -> PathBuf {
        self.ctx.join("workflows")
    }
    pub fn ledger(&self) -> PathBuf {
        self.ctx.join("ledger.jsonl")
    }
    pub fn progress(&self) -> PathBuf {
        self.ctx.join("progress.md")
    }
    pub fn config(&self) -> PathBuf {
        self.ctx.join("dirigent.yaml")
    }
    pub fn lock(&self) -> PathBuf {
        self.ctx.join("daemon.lock")
    }

    /// The workspace root, opened (the user chose it: a link there is followed).
    pub fn open_root(&self) -> io::Result<crate::confined::Dir> {
        crate::confined::Dir::open(&self.root)
    }

    /// `.context/`, opened below the root without following a link: an agent may have
    /// replaced it with one.
    pub fn open_context(&self) -> io::Result<crate::confined::Dir> {
        self.open_root()?.child(CONTEXT_DIR, None)
    }

    /// A subdirectory of `.context/` (such as `running` or `inbox/.tmp`), opened without
    /// following a link and made again (mode 0700) when someone removed it.
    /// A link or a file an agent put in the place of one of these directories is moved aside
    /// (see [`displace`]) and the directory made again: refusing it instead stopped every
    /// later task, with reasons that named something else.
    pub fn open_sub(&self, sub: &str) -> io::Result<crate::confined::Dir> {
        let parts: Vec<&str> = sub.split('/').collect();
        let ctx = self.open_context()?;
        match ctx.descend(&parts, Some(0o700)) {
            Err(e)
                if matches!(
                    crate::confined::errno_of(&e),
                    Some(nix::libc::ELOOP | nix::libc::ENOTDIR)
                ) =>
            {
                let mut dir = ctx;
                for part in &parts {
                    displace(&dir, part)?;
                    dir = dir.child(part, Some(0o700))?;
                }
                Ok(dir)
            }
            other => other,
        }
    }

    /// Creates the workspace directory if needed, then `.context/` and every subdirectory that
    /// is missing, mode 0700. Existing directories are left as they are.
    pub fn ensure(&self) -> io::Result<()> {
        std::fs::create_dir_all(&self.root).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot create `{}`: {e}", self.root.display()),
            )
        })?;
        create_private_dir(&self.ctx)?;
        for sub in SUBDIRS {
            let path = self.ctx.join(sub);
            if std::fs::symlink_metadata(&path).is_ok_and(|m| !m.is_dir())
                && let (Some(parent), Some(name)) = (path.parent(), path.file_name())
            {
                displace(
                    &crate::confined::Dir::open(parent)?,
                    &name.to_string_lossy(),
                )?;
            }
            create_private_dir(&path)?;
        }
        Ok(())
    }
}

/// Moves `name` in `dir` aside (to `name.displaced-<ms>`) when it is a link or anything but a
/// directory, where dirigent keeps one of its own; says so in the log. Nothing is followed or
/// deleted: what was put there stays for a look.
fn displace(dir: &crate::confined::Dir, name: &str) -> io::Result<()> {
    use crate::confined::Kind;
    let Some(kind @ (Kind::Link | Kind::File | Kind::Other)) = dir.kind(name) else {
        return Ok(());
    };
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let aside = format!("{name}.displaced-{millis}");
    dir.rename_noreplace(name, dir, &aside)?;
    tracing::warn!(
        "`{}` was {} where dirigent keeps a directory (an agent may have put it there): moved aside to `{aside}`, and the directory made again",
        dir.path().join(name).display(),
        match kind {
            Kind::Link => "a symbolic link",
            Kind::File => "a file",
            _ => "not a directory",
        }
    );
    Ok(())
}

impl Workspace {
    /// Refuses a `.context/` that another user could tamper with: it and each subdirectory must
    /// be a real directory (not a symlink), owned by the effective user, not writable by group or
    /// others. Returns the first problem as a message that says how to fix it.
    pub fn check_private(&self) -> Result<(), NotPrivate> {
        self.check_private_for(nix::unistd::geteuid().as_raw(), SUBDIRS)
    }

    /// [`Workspace::check_private`] of `.context/` itself and the directories above it, not of
    /// its subdirectories: what the daemon looks at while it runs (a link an agent put in a
    /// subdirectory's place is moved aside where it is met, not a reason to stop).
    pub fn check_private_above(&self) -> Result<(), NotPrivate> {
        self.check_private_for(nix::unistd::geteuid().as_raw(), &[])
    }

    /// What `.context/` is on disk (device, inode): the daemon compares it with what it found
    /// at its start to notice one put in its place.
    pub fn context_id(&self) -> Option<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        std::fs::symlink_metadata(&self.ctx)
            .ok()
            .map(|m| (m.dev(), m.ino()))
    }

    /// [`Workspace::check_private`] for the user `me`, of `.context/`, the directories above it
    /// and its `subdirs`.
    fn check_private_for(&self, me: u32, subdirs: &[&str]) -> Result<(), NotPrivate> {
        use std::os::unix::fs::MetadataExt;
        let dirs =
            std::iter::once(self.ctx.clone()).chain(subdirs.iter().map(|s| self.ctx.join(s)));
        for dir in dirs {
            let meta = match std::fs::symlink_metadata(&dir) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(cause) => return Err(NotPrivate::Unreadable { dir, cause }),
            };
            if meta.file_type().is_symlink() {
                return Err(NotPrivate::Link { dir });
            }
            if meta.uid() != me {
                return Err(NotPrivate::Foreign {
                    dir,
                    owner: meta.uid(),
                    me,
                    context: self.ctx.clone(),
                });
            }
            let mode = meta.mode() & 0o777;
            if mode & 0o022 != 0 {
                return Err(NotPrivate::Writable {
                    dir,
                    mode,
                    context: self.ctx.clone(),
                });
            }
        }
        // The directories above `.context/` too: whoever may rename entries in one of them can
        // put a `.context/` of theirs in the daemon's way — a config whose commands then run
        // as you. The workspace must be yours; above it, yours or root's, and none open to
        // everyone's writes unless sticky (`/tmp`). (Root is trusted: it can do anything.)
        // As they are on disk: `a/../b` is not below `a`, and a link's target is what counts.
        let root = std::fs::canonicalize(&self.root).unwrap_or_else(|_| self.root.clone());
        for dir in root.ancestors() {
            let Ok(meta) = std::fs::metadata(dir) else {
                continue;
            };
            let owner = meta.uid();
            if owner != me && owner != 0 {
                return Err(NotPrivate::ForeignAbove {
                    dir: dir.to_path_buf(),
                    owner,
                    me,
                });
            }
            let mode = meta.mode();
            if mode & 0o002 != 0 && mode & 0o1000 == 0 {
                return Err(NotPrivate::OpenAbove {
                    dir: dir.to_path_buf(),
                    mode: mode & 0o7777,
                });
            }
        }
        Ok(())
    }
}

/// Why `.context/` is not safe to use: another user could tamper with it. Each says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum NotPrivate {
    #[error(
        "`{}` belongs to uid {owner}, not to you (uid {me}): its owner could put a `.context/` of theirs in the daemon's place, and its commands would run as you; run dirigent in a directory of yours",
        dir.display()
    )]
    ForeignAbove { dir: PathBuf, owner: u32, me: u32 },
    #[error(
        "`{}` can be written by every user (mode {mode:04o}, not sticky): anyone could put a `.context/` of theirs in the daemon's place; fix it with `chmod o-w {}`, or run dirigent elsewhere",
        dir.display(),
        dir.display()
    )]
    OpenAbove { dir: PathBuf, mode: u32 },
    #[error("cannot inspect `{}`: {cause}", dir.display())]
    Unreadable { dir: PathBuf, cause: io::Error },
    #[error(
        "`{}` is a symbolic link; dirigent only uses real directories inside `.context/`",
        dir.display()
    )]
    Link { dir: PathBuf },
    #[error(
        "`{}` is owned by uid {owner}, not by you (uid {me}); fix it with `chown -R {me} {}`",
        dir.display(),
        context.display()
    )]
    Foreign {
        dir: PathBuf,
        owner: u32,
        me: u32,
        context: PathBuf,
    },
    #[error(
        "`{}` is writable by other users (mode {mode:04o}); fix it with `chmod -R go-w {}`",
        dir.display(),
        context.display()
    )]
    Writable {
        dir: PathBuf,
        mode: u32,
        context: PathBuf,
    },
}

fn create_private_dir(path: &Path) -> io::Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {
            // The umask may have masked bits away; 0700 is what we promise.
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot create `{}`: {e}", path.display()),
        )),
    }
}

/// The name of an attempt's file in `runs/<id>/`: `<n>-<agent>.<ext>`. The agent may be an
/// `agent:model` entry whose model holds a `/` (`ollama:hf.co/user/model`): it is replaced, so
/// the name stays one file in the task's directory.
pub fn attempt_file(attempt: u32, agent: &str, ext: &str) -> String {
    format!("{attempt}-{}.{ext}", agent.replace('/', "_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ensure_creates_private_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        // The workspace itself may not exist yet.
        let ws = Workspace::new(tmp.path().join("new/project")).unwrap();
        ws.ensure().unwrap();
        for sub in SUBDIRS {
            let meta = std::fs::metadata(ws.context().join(sub)).unwrap();
            assert!(meta.is_dir());
            assert_eq!(meta.permissions().mode() & 0o777, 0o700, "{sub}");
        }
        // Idempotent.
        ws.ensure().unwrap();
        assert!(
            ws.check_private().is_ok(),
            "expected a fresh .context/ to be private"
        );
    }

    #[test]
    fn tampering_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = Workspace::new(tmp.path()).unwrap();
        ws.ensure().unwrap();
        std::fs::set_permissions(ws.inbox(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = ws.check_private().unwrap_err().to_string();
        assert!(
            err.contains("inbox` is writable by other users (mode 0777)"),
            "{err}"
        );
        std::fs::set_permissions(ws.inbox(), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::remove_dir(ws.done()).unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), ws.done()).unwrap();
        let err = ws.check_private().unwrap_err().to_string();
        assert!(err.contains("done` is a symbolic link"), "{err}");
    }

    /// Whoever may rename entries in a directory above `.context/` could put theirs in its
    /// place: one open to everyone's writes (not sticky), or another user's, is refused.
    #[test]
    fn a_workspace_others_can_rename_in_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let open = tmp.path().join("open");
        let ws = Workspace::new(open.join("project")).unwrap();
        ws.ensure().unwrap();
        assert!(ws.check_private().is_ok(), "a workspace of yours");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = ws.check_private().unwrap_err().to_string();
        assert!(
            err.contains("open` can be written by every user (mode 0777, not sticky)"),
            "{err}"
        );
        // Sticky (as `/tmp`): others cannot rename what is not theirs.
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(
            ws.check_private().is_ok(),
            "a sticky directory above is fine"
        );
        if nix::unistd::geteuid().is_root() {
            // Another user's workspace, with a `.context/` of root's in it.
            nix::unistd::chown(ws.root(), Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
            let err = ws.check_private().unwrap_err().to_string();
            assert!(
                err.contains("project` belongs to uid 65534, not to you (uid 0)"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_context_owned_by_someone_else_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = Workspace::new(tmp.path()).unwrap();
        ws.ensure().unwrap();
        let me = nix::unistd::geteuid().as_raw();
        // The same files, seen by another user: none of them is theirs.
        let other = me.wrapping_add(1);
        let err = ws
            .check_private_for(other, SUBDIRS)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("is owned by uid {me}, not by you (uid {other})")),
            "{err}"
        );
        assert!(err.contains("chown -R"), "{err}");
    }
}
