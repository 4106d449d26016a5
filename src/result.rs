//! The result stage: after a successful attempt, write the result text to `outbox/<id>.md` or
//! to the task's `output` path, atomically. The path is checked again here with the same rules
//! as at acceptance (normalised, outside `.context/` and `.git/`), and written through no link:
//! every directory on the way is opened without following one (see [`crate::confined`]).

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::path::Path;

use crate::confined::{self, Dir};
use crate::workspace::Workspace;

/// What the result is.
pub enum Content<'a> {
    /// Text extracted from structured output, or written by the engine (a phase's output).
    Text(&'a str),
    /// The attempt's whole stdout capture, read from the descriptor it was written through (so
    /// an agent that swaps the file for a link cannot choose what becomes the result).
    Capture(&'a File),
}

/// Why a result could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The path breaks a rule, or a link stands in its way: writing again will not help.
    #[error("{0}")]
    Refused(String),
    #[error("cannot write the result to `{path}`: {cause}")]
    Io { path: String, cause: io::Error },
}

impl WriteError {
    /// When the write failed for lack of disk space or descriptors: what ran out. Such a
    /// failure is a pause, never the end of the task.
    pub fn exhausted(&self) -> Option<&'static str> {
        match self {
            WriteError::Io { cause, .. } => crate::fsutil::exhausted(cause),
            WriteError::Refused(_) => None,
        }
    }
}

/// Where a task's result goes, workspace-relative: its `output`, else `.context/outbox/<id>.md`.
pub fn destination(task_id: &str, output: Option<&str>) -> String {
    match output {
        Some(o) => o.to_string(),
        None => format!("{}/outbox/{task_id}.md", crate::workspace::CONTEXT_DIR),
    }
}

/// Writes the result of task `task_id` to its `output` (or the outbox when it has none).
pub fn write(
    ws: &Workspace,
    task_id: &str,
    output: Option<&str>,
    content: Content<'_>,
) -> Result<String, WriteError> {
    match output {
        Some(rel) => write_in_workspace(ws, rel, content),
        None => {
            let rel = destination(task_id, None);
            let io = |cause| WriteError::Io {
                path: rel.clone(),
                cause,
            };
            let outbox = ws.open_sub("outbox").map_err(io)?;
            put(&outbox, &format!("{task_id}.md"), content, PRIVATE).map_err(io)?;
            Ok(rel)
        }
    }
}

/// Writes `content` to the workspace path `rel` (a task's `output`, a phase's output, the
/// prompt kept beside it), creating its directories.
pub fn write_in_workspace(
    ws: &Workspace,
    rel: &str,
    content: Content<'_>,
) -> Result<String, WriteError> {
    let root = ws.open_root().map_err(|cause| WriteError::Io {
        path: rel.to_string(),
        cause,
    })?;
    write_below(&root, Path::new(""), rel, content)
}

/// Writes `content` to `rel` in a task's worktree (`root`), at the workspace's place in it
/// (`inside`): a worktree task's `output` is part of its work, committed with it. Returns the
/// workspace-relative path.
pub fn write_in_tree(
    root: &Path,
    inside: &Path,
    rel: &str,
    content: Content<'_>,
) -> Result<String, WriteError> {
    let dir = Dir::open(root).map_err(|cause| WriteError::Io {
        path: rel.to_string(),
        cause,
    })?;
    write_below(&dir, inside, rel, content)
}

/// Writes `content` to `inside/rel` below `root`, through no link.
fn write_below(
    root: &Dir,
    inside: &Path,
    rel: &str,
    content: Content<'_>,
) -> Result<String, WriteError> {
    let checked =
        confined::workspace_path("output", rel).map_err(|e| WriteError::Refused(e.to_string()))?;
    let full = Path::new(inside).join(checked.to_string());
    let path = confined::workspace_path("output", &full.to_string_lossy())
        .map_err(|e| WriteError::Refused(e.to_string()))?;
    let io = |cause: io::Error| {
        if confined::errno_of(&cause) == Some(nix::libc::ELOOP) {
            WriteError::Refused(format!(
                "`output` path `{rel}` goes through a symbolic link ({cause}); refusing to write there"
            ))
        } else {
            WriteError::Io {
                path: rel.to_string(),
                cause,
            }
        }
    };
    let (dir, name) = confined::parent_dir(root, &path).map_err(io)?;
    put(&dir, name, content, 0o666).map_err(io)?;
    Ok(checked.to_string())
}

/// Writes `text` to the workspace path `rel` (a phase's gathered results, a prompt file). A
/// file directly in `.context/outbox/` (where a phase without `output` keeps its result) is
/// written there; every other path follows the rules of [`write_in_workspace`].
pub fn write_text(ws: &Workspace, rel: &str, text: &str) -> Result<String, WriteError> {
    let outbox = format!("{}/outbox/", crate::workspace::CONTEXT_DIR);
    if let Some(name) = rel.strip_prefix(&outbox)
        && let Ok(path) = confined::RelPath::parse("output", name)
        && path.parents().is_empty()
    {
        let io = |cause| WriteError::Io {
            path: rel.to_string(),
            cause,
        };
        let dir = ws.open_sub("outbox").map_err(io)?;
        put(&dir, path.file_name(), Content::Text(text), PRIVATE).map_err(io)?;
        return Ok(format!("{outbox}{}", path.file_name()));
    }
    write_in_workspace(ws, rel, Content::Text(text))
}

/// The mode of what dirigent keeps in `.context/` for you (results, as its reports and
/// captures): yours alone, even when `.context/` itself was opened to others. A task's
/// `output` elsewhere in the workspace is an ordinary file of yours (0666 less the umask).
const PRIVATE: u32 = 0o600;

fn put(dir: &Dir, name: &str, content: Content<'_>, mode: u32) -> io::Result<()> {
    match content {
        Content::Text(text) => {
            if text.ends_with('\n') {
                dir.write_atomic(name, text.as_bytes(), mode)
            } else {
                let mut t = String::with_capacity(text.len() + 1);
                t.push_str(text);
                t.push('\n');
                dir.write_atomic(name, t.as_bytes(), mode)
            }
        }
        Content::Capture(file) => {
            let mut f = file;
            f.seek(SeekFrom::Start(0))?;
            dir.copy_atomic(name, &mut f, mode).map(|_| ())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_links_and_reserved_places() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let ws = Workspace::new(root.path()).unwrap();
        ws.ensure().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("docs")).unwrap();
        let err = write_text(&ws, "docs/sub/x.md", "r").unwrap_err();
        assert!(
            matches!(&err, WriteError::Refused(m) if m.contains("symbolic link")),
            "{err}"
        );
        assert!(!outside.path().join("sub").exists(), "created outside");
        for rel in ["./.context/dirigent.yaml", ".context//x", ".GIT/config"] {
            let err = write_text(&ws, rel, "r").unwrap_err();
            assert!(matches!(err, WriteError::Refused(_)), "{rel}: {err}");
        }
        assert!(!ws.config().exists(), "the config must not be written");
        let ok = write_text(&ws, "a/b/c.md", "r").unwrap();
        assert_eq!(ok, "a/b/c.md");
        assert_eq!(
            std::fs::read_to_string(root.path().join("a/b/c.md")).unwrap(),
            "r\n"
        );
        let out = write(&ws, "t1", None, Content::Text("hello")).unwrap();
        assert_eq!(out, ".context/outbox/t1.md");
        assert_eq!(
            std::fs::read_to_string(ws.outbox().join("t1.md")).unwrap(),
            "hello\n"
        );
    }

    #[test]
    fn a_capture_is_read_from_its_descriptor() {
        use std::io::Write;
        let root = tempfile::tempdir().unwrap();
        let ws = Workspace::new(root.path()).unwrap();
        ws.ensure().unwrap();
        let cap = root.path().join("cap");
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&cap)
            .unwrap();
        f.write_all(b"the real output").unwrap();
        // The agent swaps the capture for a link to something else: the result is unchanged.
        std::fs::remove_file(&cap).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", &cap).unwrap();
        write(&ws, "t", Some("out.md"), Content::Capture(&f)).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.path().join("out.md")).unwrap(),
            "the real output"
        );
    }
}
