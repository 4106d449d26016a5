//! File access where others can write: the workspace (agents run there and may write anywhere
//! in it, `.context/` included) and paths chosen by task submitters.
//!
//! Two halves, used by every stage that touches such a file:
//! - **Paths are parsed before they are used.** A task's `output`, `files` and `context`, and a
//!   workflow's outputs, become a [`RelPath`]: normalised component by component (`./a//b` is
//!   `a/b`), with `..`, absolute paths and NUL refused. Only then are the rules applied:
//!   [`workspace_path`] keeps them out of `.context/` and `.git/` (in any letter case, for
//!   case-insensitive file systems), [`context_path`] keeps them away from dirigent's secrets.
//! - **Files are opened relative to an open directory, never through a link.** A [`Dir`] walks a
//!   path one component at a time with `O_NOFOLLOW`, creating missing directories the same way,
//!   so a symbolic link planted anywhere on the way is refused instead of followed. Files are
//!   written under an unpredictable temporary name created with `O_EXCL` and renamed into place
//!   (a link at the final name is replaced, never written through); reads check that what was
//!   opened is a regular file, on the open descriptor itself.
//!
//! The directory a [`Dir`] starts from is trusted as given (the workspace root may itself be a
//! symlink the user made); everything below it is not.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fstat, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};

/// Name of the directory dirigent owns inside a workspace.
pub const CONTEXT_DIR: &str = ".context";

/// `("name", ".json")` for `name.json`; the extension includes the dot.
pub fn split_name(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    }
}

/// A workspace-relative path after normalisation: at least one component, none of them empty,
/// `.` or `..`. Its text form joins the components with `/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelPath {
    parts: Vec<String>,
}

/// Why a path was refused. The text completes "`what` path `raw` …".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("`{what}` is empty")]
    Empty { what: String },
    #[error("`{what}` contains a NUL byte")]
    Nul { what: String },
    #[error(
        "`{what}` path {raw:?} holds a control character (a line break, a tab, an escape): a file name here is one line of text"
    )]
    Control { what: String, raw: String },
    #[error("`{what}` path `{raw}` is absolute; give a path relative to the workspace")]
    Absolute { what: String, raw: String },
    #[error("`{what}` path `{raw}` contains `..`; it must stay inside the workspace")]
    Parent { what: String, raw: String },
    #[error("`{what}` path `{raw}` names no file")]
    NoFile { what: String, raw: String },
    #[error("`{what}` path is too long for a file system ({why}): `{shown}…`")]
    TooLong {
        what: String,
        shown: String,
        why: String,
    },
    #[error("`{what}` path `{raw}` is inside `{area}`, {why}")]
    Reserved {
        what: String,
        raw: String,
        area: &'static str,
        why: &'static str,
    },
}

impl RelPath {
    /// Normalises `raw`: `.` components and repeated or trailing `/` disappear; `..`, a leading
    /// `/`, NUL and a path with no component left are refused. `what` names the field in errors.
    pub fn parse(what: &str, raw: &str) -> Result<RelPath, PathError> {
        let what = what.to_string();
        if raw.is_empty() {
            return Err(PathError::Empty { what });
        }
        if raw.contains('\0') {
            return Err(PathError::Nul { what });
        }
        // Such a name would break every line it is shown on (`progress.md`, a log).
        if raw.chars().any(char::is_control) {
            return Err(PathError::Control {
                what,
                raw: raw.to_string(),
            });
        }
        if raw.starts_with('/') {
            return Err(PathError::Absolute {
                what,
                raw: raw.to_string(),
            });
        }
        let mut parts = Vec::new();
        for part in raw.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    return Err(PathError::Parent {
                        what,
                        raw: raw.to_string(),
                    });
                }
                p => parts.push(p.to_string()),
            }
        }
        if parts.is_empty() {
            return Err(PathError::NoFile {
                what,
                raw: raw.to_string(),
            });
        }
        // Refused now, not once an agent has run and its result cannot be written.
        let too_long = |why: String| PathError::TooLong {
            what: what.clone(),
            shown: raw.chars().take(60).collect(),
            why,
        };
        if let Some(long) = parts.iter().find(|p| p.len() > MAX_NAME) {
            return Err(too_long(format!(
                "a name of {} bytes; at most {MAX_NAME}",
                long.len()
            )));
        }
        if raw.len() > MAX_PATH {
            return Err(too_long(format!("{} bytes; at most {MAX_PATH}", raw.len())));
        }
        Ok(RelPath { parts })
    }

    /// The directories above the file, outermost first.
    pub fn parents(&self) -> &[String] {
        &self.parts[..self.parts.len() - 1]
    }

    /// The last component.
    pub fn file_name(&self) -> &str {
        &self.parts[self.parts.len() - 1]
    }

    /// Whether the first component is `name`, ignoring ASCII letter case.
    pub fn starts_with_ci(&self, name: &str) -> bool {
        self.parts[0].eq_ignore_ascii_case(name)
    }

    /// A sibling of this file: the same directories, another name.
    pub fn with_file_name(&self, name: &str) -> RelPath {
        let mut parts = self.parts.clone();
        *parts.last_mut().expect("never empty") = name.to_string();
        RelPath { parts }
    }
}

impl std::fmt::Display for RelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.parts.join("/"))
    }
}

/// The longest name of one file or directory (Linux's `NAME_MAX`), and the longest path given
/// (a path under the workspace must still fit `PATH_MAX`, 4096, with the workspace's own).
const MAX_NAME: usize = 255;
const MAX_PATH: usize = 1024;

/// Directories at the top of the workspace that no task path may name: dirigent's own state
/// (writing `.context/dirigent.yaml` would change which commands run) and git's (a written
/// `.git/config` or hook runs commands on the user's next `git status`).
const RESERVED_TOP: &[(&str, &str)] = &[
    (
        CONTEXT_DIR,
        "which belongs to dirigent (results there are kept in `outbox/` already; name `.context/` files under `context`)",
    ),
    (
        ".git",
        "which belongs to git; dirigent never reads or writes there",
    ),
];

/// A path in the workspace that a task may read or write: normalised, and not inside
/// `.context/` or `.git/` — at the top, nor in a nested project (a nested repository's hooks
/// run as well; another workspace's `.context/inbox/` runs tasks).
pub fn workspace_path(what: &str, raw: &str) -> Result<RelPath, PathError> {
    let path = RelPath::parse(what, raw)?;
    for (dir, why) in RESERVED_TOP {
        if path.parts.iter().any(|p| p.eq_ignore_ascii_case(dir)) {
            return Err(PathError::Reserved {
                what: what.to_string(),
                raw: raw.to_string(),
                area: dir,
                why,
            });
        }
    }
    Ok(path)
}

/// Files and directories in `.context/` that are never context: the HTTP token, the config (its
/// `env:` may hold API keys), the copied credentials of isolated agents, and the ledger and its
/// snapshot (every task's prompt, from every submitter).
const PRIVATE_IN_CONTEXT: &[&str] = &[
    "http.token",
    "dirigent.yaml",
    "isolation",
    "daemon.lock",
    "daemon.sock",
    "ledger.jsonl",
    "ledger.snapshot.json",
    // `dirigent open`'s page: it holds a login link that works once, within minutes.
    "dashboard-login.html",
];

/// A path under `.context/` that a task may name as context: normalised, and none of
/// dirigent's private files.
pub fn context_path(what: &str, raw: &str) -> Result<RelPath, PathError> {
    let path = RelPath::parse(what, raw)?;
    let first = path.parts[0].to_ascii_lowercase();
    let private = PRIVATE_IN_CONTEXT.contains(&first.as_str())
        || first.starts_with("ledger.")
        || first.ends_with(".key");
    if private {
        return Err(PathError::Reserved {
            what: what.to_string(),
            raw: raw.to_string(),
            area: ".context",
            why: "and is private to dirigent (tokens, credentials, config or the ledger); it is never handed to an agent",
        });
    }
    Ok(path)
}

/// An open directory. Everything reached through it is reached without following links.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    /// For messages only; never used to open anything.
    path: PathBuf,
}

/// Flags every open here carries: no inheritance by agents, no blocking on a FIFO.
fn base_flags() -> OFlag {
    OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW
}

impl Dir {
    /// Opens a trusted directory by path (a symlink in `path` itself is followed: the user gave
    /// it).
    pub fn open(path: &Path) -> io::Result<Dir> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| annotate(e, path))?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// Where this directory was when it was opened, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the child directory `name` without following a link; with `create`, makes it
    /// (with that mode, before the umask) when it is missing.
    pub fn child(&self, name: &str, create: Option<u32>) -> io::Result<Dir> {
        check_component(name)?;
        let path = self.path.join(name);
        let open = || {
            openat(
                self.fd.as_fd(),
                name,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | base_flags(),
                Mode::empty(),
            )
        };
        let fd = match open() {
            Ok(fd) => fd,
            // O_NOFOLLOW with O_DIRECTORY reports a link as "not a directory": say what it is.
            Err(Errno::ENOTDIR) if self.kind(name) == Some(Kind::Link) => {
                return Err(annotate(Errno::ELOOP, &path));
            }
            Err(Errno::ENOENT) if create.is_some() => {
                let mode = Mode::from_bits_truncate(create.unwrap_or(0o700) as _);
                match mkdirat(self.fd.as_fd(), name, mode) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(annotate(e, &path)),
                }
                open().map_err(|e| annotate(e, &path))?
            }
            Err(e) => return Err(annotate(e, &path)),
        };
        Ok(Dir { fd, path })
    }

    /// Opens (with `create`: making what is missing) the directories `parts` below this one.
    pub fn descend<S: AsRef<str>>(&self, parts: &[S], create: Option<u32>) -> io::Result<Dir> {
        let mut dir = self.child_or_self(parts.first().map(AsRef::as_ref), create)?;
        for part in parts.iter().skip(1) {
            dir = dir.child(part.as_ref(), create)?;
        }
        Ok(dir)
    }

    fn child_or_self(&self, name: Option<&str>, create: Option<u32>) -> io::Result<Dir> {
        match name {
            Some(n) => self.child(n, create),
            None => Ok(Dir {
                fd: self.fd.try_clone()?,
                path: self.path.clone(),
            }),
        }
    }

    /// Creates `name` fresh for writing: whatever was there (a file, or a link an agent
    /// planted) is removed first, and the new file is created with `O_EXCL`, so nothing is ever
    /// written through a link.
    pub fn create_fresh(&self, name: &str, mode: u32) -> io::Result<File> {
        check_component(name)?;
        for _ in 0..8 {
            match unlinkat(self.fd.as_fd(), name, UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(annotate(e, &self.path.join(name))),
            }
            match self.create_excl(name, mode) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                other => return other,
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "`{}` keeps being recreated by someone else",
                self.path.join(name).display()
            ),
        ))
    }

    /// Creates `name`, failing if anything (a link included) is there.
    pub fn create_excl(&self, name: &str, mode: u32) -> io::Result<File> {
        check_component(name)?;
        let fd = openat(
            self.fd.as_fd(),
            name,
            OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL | base_flags(),
            Mode::from_bits_truncate(mode as _),
        )
        .map_err(|e| annotate(e, &self.path.join(name)))?;
        Ok(File::from(fd))
    }

    /// Writes `name` atomically: an unpredictable temp name beside it (created with `O_EXCL`),
    /// the bytes, fsync, rename over `name` (which replaces a link there, never follows it).
    pub fn write_atomic(&self, name: &str, bytes: &[u8], mode: u32) -> io::Result<()> {
        self.replace_with(name, mode, |f| f.write_all(bytes).map(|()| 0))
            .map(|_| ())
    }

    /// Writes `name` atomically as [`Dir::write_atomic`] does, its content written by `fill`
    /// (streamed: nothing has to be held in memory whole).
    pub fn write_atomic_with(
        &self,
        name: &str,
        mode: u32,
        fill: impl FnOnce(&mut File) -> io::Result<()>,
    ) -> io::Result<()> {
        self.replace_with(name, mode, |f| fill(f).map(|()| 0))
            .map(|_| ())
    }

    /// Writes `name` as [`Dir::write_atomic`] does, but without the fsync: for files that only
    /// need to be whole, not durable (a prompt kept for the agent and the user; the ledger has
    /// the task).
    pub fn write_new(&self, name: &str, bytes: &[u8], mode: u32) -> io::Result<()> {
        check_component(name)?;
        let (tmp, mut file) = self.temp_file(name, mode)?;
        let result = file.write_all(bytes).and_then(|()| {
            nix::fcntl::renameat(self.fd.as_fd(), tmp.as_str(), self.fd.as_fd(), name)
                .map_err(|e| annotate(e, &self.path.join(name)))
        });
        if result.is_err() {
            let _ = unlinkat(self.fd.as_fd(), tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        }
        result
    }

    /// Copies `from` into `name` atomically (as [`Dir::write_atomic`]); returns the bytes
    /// copied.
    pub fn copy_atomic(&self, name: &str, from: &mut impl Read, mode: u32) -> io::Result<u64> {
        self.replace_with(name, mode, |f| io::copy(from, f))
    }

    fn replace_with(
        &self,
        name: &str,
        mode: u32,
        fill: impl FnOnce(&mut File) -> io::Result<u64>,
    ) -> io::Result<u64> {
        check_component(name)?;
        let (tmp, mut file) = self.temp_file(name, mode)?;
        let result = fill(&mut file)
            .and_then(|n| file.sync_all().map(|()| n))
            .and_then(|n| {
                nix::fcntl::renameat(self.fd.as_fd(), tmp.as_str(), self.fd.as_fd(), name)
                    .map_err(|e| annotate(e, &self.path.join(name)))
                    .map(|()| n)
            });
        if result.is_err() {
            let _ = unlinkat(self.fd.as_fd(), tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        }
        result
    }

    /// A new file under an unpredictable name beside `name`: `.<name>.<16 hex>.tmp`.
    fn temp_file(&self, name: &str, mode: u32) -> io::Result<(String, File)> {
        let mut last = None;
        for _ in 0..8 {
            let tmp = format!(".{name}.{:016x}.tmp", random_u64());
            match self.create_excl(&tmp, mode) {
                Ok(f) => return Ok((tmp, f)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no free temporary name")))
    }

    /// Opens `name` for reading if it is a regular file: never through a link, never blocking
    /// on a FIFO; the check is made on the opened descriptor, so a swap after it changes
    /// nothing.
    pub fn open_regular(&self, name: &str) -> io::Result<File> {
        check_component(name)?;
        let path = self.path.join(name);
        let fd = openat(
            self.fd.as_fd(),
            name,
            OFlag::O_RDONLY | OFlag::O_NONBLOCK | base_flags(),
            Mode::empty(),
        )
        .map_err(|e| annotate(e, &path))?;
        let st = fstat(&fd).map_err(|e| annotate(e, &path))?;
        let kind = match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
            SFlag::S_IFREG => None,
            SFlag::S_IFDIR => Some("a directory"),
            SFlag::S_IFIFO => Some("a FIFO"),
            SFlag::S_IFSOCK => Some("a socket"),
            _ => Some("a device"),
        };
        if let Some(kind) = kind {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`{}` is {kind}, not a regular file", path.display()),
            ));
        }
        // Reads of a regular file never block; clear the flag for ordinary blocking reads.
        let _ = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(OFlag::empty()));
        Ok(File::from(fd))
    }

    /// Renames `from` here to `to_name` in `to`, failing with `AlreadyExists` rather than
    /// replacing anything there.
    pub fn rename_noreplace(&self, from: &str, to: &Dir, to_name: &str) -> io::Result<()> {
        check_component(from)?;
        check_component(to_name)?;
        let dest = to.path.join(to_name);
        #[cfg(target_os = "linux")]
        {
            use nix::fcntl::{RenameFlags, renameat2};
            match renameat2(
                self.fd.as_fd(),
                from,
                to.fd.as_fd(),
                to_name,
                RenameFlags::RENAME_NOREPLACE,
            ) {
                Ok(()) => return Ok(()),
                // Some file systems do not support the flag: the portable way below.
                Err(Errno::EINVAL) => {}
                Err(e) => return Err(annotate(e, &dest)),
            }
        }
        if to.kind(to_name).is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("`{}` exists", dest.display()),
            ));
        }
        nix::fcntl::renameat(self.fd.as_fd(), from, to.fd.as_fd(), to_name)
            .map_err(|e| annotate(e, &dest))
    }

    /// Moves `from` here into `to`, under `name` when free, else `stem-2.ext`, `stem-3.ext` …
    /// Returns the name it got.
    pub fn move_into(&self, from: &str, to: &Dir, name: &str) -> io::Result<String> {
        let (stem, ext) = split_name(name);
        for n in 1u32.. {
            let candidate = if n == 1 {
                name.to_string()
            } else {
                format!("{stem}-{n}{ext}")
            };
            match self.rename_noreplace(from, to, &candidate) {
                Ok(()) => return Ok(candidate),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        unreachable!("u32 names run out")
    }

    /// Removes the file (or link) `name`; a missing one is not an error.
    pub fn remove(&self, name: &str) -> io::Result<()> {
        check_component(name)?;
        match unlinkat(self.fd.as_fd(), name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(annotate(e, &self.path.join(name))),
        }
    }

    /// Removes the empty directory `name`.
    pub fn remove_dir(&self, name: &str) -> io::Result<()> {
        check_component(name)?;
        unlinkat(self.fd.as_fd(), name, UnlinkatFlags::RemoveDir)
            .map_err(|e| annotate(e, &self.path.join(name)))
    }

    /// What `name` is, without following a link; `None` when there is nothing.
    pub fn kind(&self, name: &str) -> Option<Kind> {
        let st = fstatat(
            self.fd.as_fd(),
            name,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .ok()?;
        Some(
            match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
                SFlag::S_IFREG => Kind::File,
                SFlag::S_IFDIR => Kind::Dir,
                SFlag::S_IFLNK => Kind::Link,
                _ => Kind::Other,
            },
        )
    }

    /// When the file `name` was last modified (not following a link).
    pub fn modified(&self, name: &str) -> Option<std::time::SystemTime> {
        let st = fstatat(
            self.fd.as_fd(),
            name,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .ok()?;
        let secs = u64::try_from(st.st_mtime).ok()?;
        let nanos = u32::try_from(st.st_mtime_nsec).ok()?;
        std::time::UNIX_EPOCH.checked_add(std::time::Duration::new(secs, nanos))
    }

    /// The names in this directory (not `.` and `..`).
    pub fn names(&self) -> io::Result<Vec<OsString>> {
        let fd = self.fd.try_clone()?;
        let mut dir = nix::dir::Dir::from_fd(fd).map_err(|e| annotate(e, &self.path))?;
        let mut out = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(|e| annotate(e, &self.path))?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                use std::os::unix::ffi::OsStrExt;
                out.push(std::ffi::OsStr::from_bytes(name).to_os_string());
            }
        }
        Ok(out)
    }
}

/// What a directory entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Link,
    Other,
}

/// Reads `rel` below `base` as text: through no link, only a regular file, at most `limit`
/// bytes (more is an error, not a truncation).
pub fn read_text(base: &Dir, rel: &RelPath, limit: u64) -> io::Result<String> {
    let dir = base.descend(rel.parents(), None)?;
    let file = dir.open_regular(rel.file_name())?;
    let len = file.metadata()?.len();
    if len > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("it is {len} bytes; the limit is {limit}"),
        ));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("it grew past the limit of {limit} bytes while being read"),
        ));
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Opens the directory of `rel` below `base`, creating what is missing (mode 0777 before the
/// umask, as `mkdir -p` would), and returns it with the file name.
pub fn parent_dir<'a>(base: &Dir, rel: &'a RelPath) -> io::Result<(Dir, &'a str)> {
    Ok((base.descend(rel.parents(), Some(0o777))?, rel.file_name()))
}

/// A random 64-bit number from the operating system (temp names, keys).
pub fn random_u64() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        // No entropy source at all: still unique enough for a temp name, which O_EXCL guards.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        t ^ (u64::from(std::process::id()) << 32)
    })
}

/// A file name component: not empty, no `/`, not `.` or `..`.
fn check_component(name: &str) -> io::Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{name}` is not a file name"),
        ));
    }
    Ok(())
}

/// An errno as an I/O error whose text names the path, and says plainly when a link was
/// refused.
fn annotate(e: Errno, path: &Path) -> io::Error {
    let err = io::Error::from(e);
    let text = match e {
        Errno::ELOOP => format!(
            "`{}` is a symbolic link; dirigent does not follow links here",
            path.display()
        ),
        Errno::ENOTDIR => format!(
            "`{}` is not a directory (or a link stands in its way)",
            path.display()
        ),
        _ => format!("`{}`: {err}", path.display()),
    };
    io::Error::new(err.kind(), RawError { text, errno: e })
}

/// An error text with the errno it came from, so that [`errno_of`] still finds it (the
/// exhaustion checks need it) while the text names the path.
#[derive(Debug)]
struct RawError {
    text: String,
    errno: Errno,
}

impl std::fmt::Display for RawError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for RawError {}

/// The errno behind an I/O error, also when it was annotated here.
pub fn errno_of(e: &io::Error) -> Option<i32> {
    e.raw_os_error().or_else(|| {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<RawError>())
            .map(|r| r.errno as i32)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_table() {
        let ok = [
            ("a", "a"),
            ("./a", "a"),
            ("a//b", "a/b"),
            ("a/./b/", "a/b"),
            ("././x/y", "x/y"),
        ];
        for (raw, want) in ok {
            assert_eq!(
                RelPath::parse("output", raw).map(|p| p.to_string()),
                Ok(want.to_string()),
                "{raw}"
            );
        }
        let bad = [
            ("", "is empty"),
            ("/etc/x", "is absolute"),
            ("a/../b", "contains `..`"),
            ("..", "contains `..`"),
            ("./", "names no file"),
            ("a\0b", "NUL"),
        ];
        let long_name = "y".repeat(256);
        let long_path = "d/".repeat(600) + "x";
        let bad = bad.into_iter().chain([
            (long_name.as_str(), "a name of 256 bytes; at most 255"),
            (long_path.as_str(), "1201 bytes; at most 1024"),
        ]);
        for (raw, want) in bad {
            let err = RelPath::parse("output", raw).unwrap_err().to_string();
            assert!(err.contains(want), "{raw:?}: got {err:?}, want {want:?}");
        }
    }

    #[test]
    fn reserved_places_are_refused_after_normalisation() {
        for raw in [
            ".context/dirigent.yaml",
            "./.context/dirigent.yaml",
            ".context//ledger.jsonl",
            "./.CONTEXT/x",
            ".git/config",
            "./.Git/hooks/pre-commit",
            // In a nested project: its hooks run too, its inbox runs tasks.
            "x/.git/hooks/pre-commit",
            "sub/.GIT/config",
            "vendor/lib/.git",
            "other/.context/inbox/t.md",
        ] {
            let err = workspace_path("output", raw).unwrap_err();
            assert!(
                matches!(err, PathError::Reserved { .. }),
                "{raw}: want a refusal, got {err:?}"
            );
        }
        assert_eq!(
            workspace_path("output", "./docs/.contextual/x.md")
                .unwrap()
                .to_string(),
            "docs/.contextual/x.md"
        );
        for raw in [
            "http.token",
            "./http.token",
            "HTTP.TOKEN",
            "dirigent.yaml",
            "isolation/claude/0/.credentials.json",
            "ledger.jsonl",
            "ledger.00000000000000000500.jsonl",
            "ledger.snapshot.json",
        ] {
            let err = context_path("context", raw).unwrap_err();
            assert!(
                err.to_string().contains("private to dirigent"),
                "{raw}: got {err}"
            );
        }
        assert!(context_path("context", "outbox/plan.md").is_ok());
        assert!(context_path("context", "requirements.md").is_ok());
    }

    #[test]
    fn nothing_is_followed_through_a_planted_link() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let base = Dir::open(root.path()).unwrap();
        // A link in the middle of the path.
        std::os::unix::fs::symlink(outside.path(), root.path().join("docs")).unwrap();
        let rel = workspace_path("output", "docs/sub/x.md").unwrap();
        let err = parent_dir(&base, &rel).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(
            !outside.path().join("sub").exists(),
            "no directory may be created outside"
        );
        // A link at the final name is replaced, not written through.
        let target = outside.path().join("victim");
        std::fs::write(&target, "keep").unwrap();
        std::os::unix::fs::symlink(&target, root.path().join("out.md")).unwrap();
        base.write_atomic("out.md", b"result", 0o644).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        assert_eq!(
            std::fs::read_to_string(root.path().join("out.md")).unwrap(),
            "result"
        );
        // A fresh capture file never truncates what a planted link points at.
        std::os::unix::fs::symlink(&target, root.path().join("1-a.stdout")).unwrap();
        let mut f = base.create_fresh("1-a.stdout", 0o600).unwrap();
        f.write_all(b"x").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        // Reads refuse links and non-regular files, on the descriptor.
        std::os::unix::fs::symlink(&target, root.path().join("ctx.md")).unwrap();
        let rel = RelPath::parse("files", "ctx.md").unwrap();
        let err = read_text(&base, &rel, 100).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        nix::unistd::mkfifo(&root.path().join("fifo"), Mode::S_IRWXU).unwrap();
        let err = read_text(&base, &RelPath::parse("files", "fifo").unwrap(), 100).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        std::fs::write(root.path().join("big"), vec![b'x'; 101]).unwrap();
        let err = read_text(&base, &RelPath::parse("files", "big").unwrap(), 100).unwrap_err();
        assert!(err.to_string().contains("limit is 100"), "{err}");
    }

    #[test]
    fn temp_names_are_unpredictable_and_exclusive() {
        let root = tempfile::tempdir().unwrap();
        let base = Dir::open(root.path()).unwrap();
        let (a, _) = base.temp_file("x", 0o600).unwrap();
        let (b, _) = base.temp_file("x", 0o600).unwrap();
        assert_ne!(a, b, "two temp names must differ");
        assert!(a.starts_with(".x.") && a.ends_with(".tmp"), "{a}");
        let err = base.create_excl(&a, 0o600).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
    }

    #[test]
    fn moves_never_replace() {
        let root = tempfile::tempdir().unwrap();
        let base = Dir::open(root.path()).unwrap();
        let sub = base.child("sub", Some(0o700)).unwrap();
        std::fs::write(root.path().join("a.json"), "1").unwrap();
        std::fs::write(root.path().join("sub/a.json"), "old").unwrap();
        let got = base.move_into("a.json", &sub, "a.json").unwrap();
        assert_eq!(got, "a-2.json");
        assert_eq!(
            std::fs::read_to_string(root.path().join("sub/a.json")).unwrap(),
            "old"
        );
        assert_eq!(sub.kind("a-2.json"), Some(Kind::File));
        let mut names = sub.names().unwrap();
        names.sort();
        assert_eq!(names, ["a-2.json", "a.json"]);
    }

    #[test]
    fn annotated_errors_keep_their_errno() {
        let root = tempfile::tempdir().unwrap();
        let base = Dir::open(root.path()).unwrap();
        let err = base.open_regular("missing").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert_eq!(errno_of(&err), Some(nix::libc::ENOENT));
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
