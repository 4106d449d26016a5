//! Small file-system primitives every stage relies on: atomic replace, rename that never
//! overwrites, reading a task file without following symlinks or blocking on a FIFO. The
//! primitives for directories others can write to (walking a path without following links)
//! are in [`crate::confined`].

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically: an unpredictable temp name in the same directory
/// (created with `O_EXCL`, so a link planted there is never written through), fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let (dir, name) = open_parent(path)?;
    dir.write_atomic(&name, bytes, 0o666)
}

/// Writes `bytes` to `base/rel` (mode 0600) as [`write_atomic`] does, and reaches its directory
/// from `base` one component at a time without following a link (made when missing): for files
/// dirigent keeps below `.context/`, where an agent may have planted a link at any level.
pub fn write_below(base: &Path, rel: &Path, bytes: &[u8]) -> io::Result<()> {
    let parts: Vec<String> = rel
        .parent()
        .into_iter()
        .flat_map(Path::components)
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let name = rel
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?
        .to_string_lossy()
        .into_owned();
    crate::confined::Dir::open(base)?
        .descend(&parts, Some(0o700))?
        .write_atomic(&name, bytes, 0o600)
}

/// Copies `from` to `to` atomically (as [`write_atomic`]), streaming; `from` is opened without
/// following a link.
pub fn copy_atomic(from: &Path, to: &Path) -> io::Result<u64> {
    let mut src = open_nofollow(from)?;
    let (dir, name) = open_parent(to)?;
    dir.copy_atomic(&name, &mut src, 0o666)
}

/// The directory of `path` (opened as given) and the file name in it.
fn open_parent(path: &Path) -> io::Result<(crate::confined::Dir, String)> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    Ok((crate::confined::Dir::open(dir)?, name.to_string()))
}

/// Opens `path` for reading without following a link at its last component and without
/// blocking on a FIFO.
pub fn open_nofollow(path: &Path) -> io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_flags())
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{}` is not a regular file", path.display()),
        ));
    }
    Ok(file)
}

/// Reads at most `limit` bytes of a regular file (see [`open_nofollow`]): a file another process
/// may have replaced — by a link, a FIFO, `/dev/zero` or a sparse giant — is read no further.
pub fn read_small_nofollow(path: &Path, limit: usize) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    open_nofollow(path)?
        .take(limit as u64)
        .read_to_end(&mut out)?;
    Ok(out)
}

/// Why a directory cannot be trusted with what only its user may change.
#[derive(Debug, PartialEq, Eq)]
pub enum Untrusted {
    NotADirectory,
    /// Another user's: the uid.
    Owner(u32),
    /// Its mode (`0o777` bits) has some of the bits that must be closed.
    OpenTo(u32),
}

/// `meta` (of a directory, its link not followed) judged for the user `me`: a real directory
/// of theirs whose mode has none of the `closed` bits (`0o022`: no one else writes; `0o077`:
/// no one else even looks).
pub fn untrusted_dir(meta: &std::fs::Metadata, me: u32, closed: u32) -> Option<Untrusted> {
    use std::os::unix::fs::MetadataExt;
    if !meta.file_type().is_dir() {
        Some(Untrusted::NotADirectory)
    } else if meta.uid() != me {
        Some(Untrusted::Owner(meta.uid()))
    } else if meta.mode() & closed != 0 {
        Some(Untrusted::OpenTo(meta.mode() & 0o777))
    } else {
        None
    }
}

/// When `e` means a resource ran out — disk space, a disk quota, file descriptors, memory or
/// processes — what ran out, in words. dirigent treats these as a pause: work waits until the
/// resource is back, and nothing finished is thrown away.
pub fn exhausted(e: &io::Error) -> Option<&'static str> {
    use nix::libc;
    match crate::confined::errno_of(e)? {
        libc::ENOSPC => Some("the disk is full"),
        libc::EDQUOT => Some("the disk quota is used up"),
        libc::EMFILE => Some("the daemon has too many open files"),
        libc::ENFILE => Some("the system has too many open files"),
        libc::ENOMEM => Some("memory ran out"),
        libc::EAGAIN => Some("no more processes can be started"),
        _ => None,
    }
}

/// Renames `from` to `to` but fails with `AlreadyExists` instead of replacing `to`.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
        match renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE) {
            Ok(()) => return Ok(()),
            // Some file systems do not support the flag: fall through to the portable way.
            Err(nix::errno::Errno::EINVAL) => {}
            Err(e) => return Err(io::Error::from(e)),
        }
    }
    if std::fs::symlink_metadata(to).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "target exists",
        ));
    }
    std::fs::rename(from, to)
}

/// Moves `from` into `dir`, keeping its name when free, else `stem-2.ext`, `stem-3.ext`, ….
/// Returns the new path.
pub fn move_into(from: &Path, dir: &Path, name: &str) -> io::Result<PathBuf> {
    let (stem, ext) = split_name(name);
    for n in 1u32.. {
        let candidate = if n == 1 {
            dir.join(name)
        } else {
            dir.join(format!("{stem}-{n}{ext}"))
        };
        match rename_noreplace(from, &candidate) {
            Ok(()) => return Ok(candidate),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    unreachable!("u32 names run out")
}

pub use crate::confined::split_name;

/// What reading a task file found.
pub enum ReadOutcome {
    Bytes(Vec<u8>),
    /// The file vanished (another claimer won, or the writer took it back).
    Gone,
    /// Not something we accept; the reason says why.
    Refused(String),
}

/// Reads a task file without following symlinks, without blocking on a FIFO, and without reading
/// more than `limit` bytes.
pub fn read_task_file(path: &Path, limit: u64) -> ReadOutcome {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_flags())
        .open(path);
    let file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return ReadOutcome::Gone,
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return ReadOutcome::Refused(
                "the task file is a symbolic link; dirigent only reads regular files".into(),
            );
        }
        Err(e) => return ReadOutcome::Refused(format!("cannot open the task file: {e}")),
    };
    let meta = match file.metadata() {
        Ok(m) => m,
        Err(e) => return ReadOutcome::Refused(format!("cannot stat the task file: {e}")),
    };
    if !meta.is_file() {
        let kind = if meta.is_dir() {
            "a directory"
        } else {
            use std::os::unix::fs::FileTypeExt;
            let ft = meta.file_type();
            if ft.is_fifo() {
                "a FIFO"
            } else if ft.is_socket() {
                "a socket"
            } else {
                "not a regular file"
            }
        };
        return ReadOutcome::Refused(format!(
            "the task file is {kind}; dirigent only reads regular files"
        ));
    }
    if std::os::unix::fs::MetadataExt::nlink(&meta) > 1 {
        return ReadOutcome::Refused(
            "the task file has other hard links, so it is also reachable from outside the inbox; \
copy it into the inbox instead"
                .into(),
        );
    }
    if meta.len() > limit {
        return ReadOutcome::Refused(format!(
            "the task file is {} bytes; the limit is {limit} bytes (1 MiB)",
            meta.len()
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    match file.take(limit + 1).read_to_end(&mut bytes) {
        Ok(_) if bytes.len() as u64 > limit => ReadOutcome::Refused(format!(
            "the task file grew past the limit of {limit} bytes while being read"
        )),
        Ok(_) => ReadOutcome::Bytes(bytes),
        Err(e) => ReadOutcome::Refused(format!("cannot read the task file: {e}")),
    }
}

fn libc_flags() -> i32 {
    nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC
}

/// Reads `base/rel` as text, refusing what leads outside `base` (`..`, an absolute path, or a
/// symbolic link anywhere on the way), what is not a regular file, and what is larger than
/// `limit` bytes. Errors complete "`rel` …".
pub fn read_confined(base: &Path, rel: &str, limit: u64) -> Result<String, ConfinedReadError> {
    let path = crate::confined::RelPath::parse("path", rel)?;
    let dir = crate::confined::Dir::open(base).map_err(ConfinedReadError::Io)?;
    crate::confined::read_text(&dir, &path, limit).map_err(ConfinedReadError::Io)
}

/// Why [`read_confined`] read nothing; the text completes "`rel` …".
#[derive(Debug, thiserror::Error)]
pub enum ConfinedReadError {
    #[error(transparent)]
    Path(#[from] crate::confined::PathError),
    #[error("cannot be read: {0}")]
    Io(io::Error),
}

/// Opens `base/rel` for reading as [`read_confined`] reaches it (no link followed on the way,
/// no FIFO waited on, a regular file only): for a reader that streams it, with no size limit.
pub fn open_confined(base: &Path, rel: &str) -> Result<File, ConfinedReadError> {
    let path = crate::confined::RelPath::parse("path", rel)?;
    crate::confined::Dir::open(base)
        .and_then(|d| d.descend(path.parents(), None))
        .and_then(|d| d.open_regular(path.file_name()))
        .map_err(ConfinedReadError::Io)
}

/// [`digest_file`] of `base/rel`, reached without following a link.
pub fn digest_confined(base: &Path, rel: &str) -> Option<String> {
    let path = crate::confined::RelPath::parse("path", rel).ok()?;
    let dir = crate::confined::Dir::open(base)
        .ok()?
        .descend(path.parents(), None)
        .ok()?;
    digest_reader(dir.open_regular(path.file_name()).ok()?)
}

/// A stable content digest, `fnv1a64:<16 hex digits>` (FNV-1a, 64-bit): enough to notice that a
/// recorded output changed, with no dependency. `None` when the file cannot be read.
pub fn digest_file(path: &Path) -> Option<String> {
    digest_reader(open_nofollow(path).ok()?)
}

fn digest_reader(mut f: File) -> Option<String> {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        for b in &buf[..n] {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    Some(format!("fnv1a64:{hash:016x}"))
}

/// Reads at most the last `max` bytes of a file, lossily as text.
pub fn read_tail(path: &Path, max: u64) -> String {
    match open_nofollow(path) {
        Ok(f) => tail_of(f, max),
        Err(_) => String::new(),
    }
}

/// At most the last `max` bytes of an open file, lossily as text.
pub fn tail_of(mut f: File, max: u64) -> String {
    use std::io::{Seek, SeekFrom};
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.take(max).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_the_fnv1a_reference_values() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x");
        std::fs::write(&f, "").unwrap();
        assert_eq!(digest_file(&f).unwrap(), "fnv1a64:cbf29ce484222325");
        std::fs::write(&f, "a").unwrap();
        assert_eq!(digest_file(&f).unwrap(), "fnv1a64:af63dc4c8601ec8c");
        assert!(digest_file(&dir.path().join("missing")).is_none());
    }

    #[test]
    fn noreplace_and_move_into() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.json");
        let b = dir.path().join("b.json");
        std::fs::write(&a, "1").unwrap();
        std::fs::write(&b, "2").unwrap();
        let err = rename_noreplace(&a, &b).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("b.json"), "old").unwrap();
        let moved = move_into(&b, &sub, "b.json").unwrap();
        assert_eq!(moved, sub.join("b-2.json"));
        assert_eq!(std::fs::read_to_string(sub.join("b.json")).unwrap(), "old");
    }

    #[test]
    fn task_reads_refuse_links_fifos_and_big_files() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("secret");
        std::fs::write(&target, "s").unwrap();
        let link = dir.path().join("l.json");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(
            matches!(read_task_file(&link, 10), ReadOutcome::Refused(r) if r.contains("symbolic link"))
        );
        let fifo = dir.path().join("f.json");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(matches!(read_task_file(&fifo, 10), ReadOutcome::Refused(r) if r.contains("FIFO")));
        let big = dir.path().join("b.json");
        std::fs::write(&big, vec![b'x'; 11]).unwrap();
        assert!(matches!(read_task_file(&big, 10), ReadOutcome::Refused(r) if r.contains("limit")));
        assert!(matches!(
            read_task_file(&dir.path().join("nope"), 10),
            ReadOutcome::Gone
        ));
        assert!(matches!(read_task_file(&target, 10), ReadOutcome::Bytes(b) if b == b"s"));
        let hard = dir.path().join("h.json");
        std::fs::hard_link(&target, &hard).unwrap();
        assert!(
            matches!(read_task_file(&hard, 10), ReadOutcome::Refused(r) if r.contains("hard links"))
        );
    }
}
