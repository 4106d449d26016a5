//! The result stage: after a successful attempt, write the result text to `outbox/<id>.md` or
//! to the task's `output` path (atomically), confined to the workspace even through symlinks.

use std::path::{Path, PathBuf};

use crate::fsutil;
use crate::judge::ResultText;
use crate::workspace::Workspace;

/// Where a task's result goes, workspace-relative.
pub fn destination(ws: &Workspace, task_id: &str, output: Option<&str>) -> String {
    match output {
        Some(o) => o.to_string(),
        None => {
            let abs = ws.outbox().join(format!("{task_id}.md"));
            abs.strip_prefix(ws.root())
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|_| abs.to_string_lossy().into_owned())
        }
    }
}

/// Writes the result. `rel` was checked when the task was parsed (relative, no `..`); here the
/// real location of its parent directory is checked too, so a symlinked directory cannot carry
/// the write outside the workspace.
pub fn write(
    ws: &Workspace,
    rel: &str,
    result: &ResultText,
    stdout: &Path,
) -> Result<PathBuf, String> {
    let dest = ws.root().join(rel);
    let parent = dest
        .parent()
        .ok_or_else(|| format!("`{rel}` has no parent directory"))?;
    std::fs::create_dir_all(parent)
        .map_err(|e| format!("cannot create `{}`: {e}", parent.display()))?;
    let real_root = ws
        .root()
        .canonicalize()
        .map_err(|e| format!("cannot resolve the workspace: {e}"))?;
    let real_parent = parent
        .canonicalize()
        .map_err(|e| format!("cannot resolve `{}`: {e}", parent.display()))?;
    if !real_parent.starts_with(&real_root) {
        return Err(format!(
            "`output` path `{rel}` leads outside the workspace (to `{}`); refusing to write there",
            real_parent.display()
        ));
    }
    let dest = real_parent.join(
        dest.file_name()
            .ok_or_else(|| format!("`{rel}` names no file"))?,
    );
    if std::fs::symlink_metadata(&dest).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(format!(
            "`output` path `{rel}` is a symbolic link; refusing to write through it"
        ));
    }
    let written = match result {
        ResultText::Stdout => fsutil::copy_atomic(stdout, &dest).map(|_| ()),
        ResultText::Text(text) => {
            let mut t = text.clone();
            if !t.ends_with('\n') {
                t.push('\n');
            }
            fsutil::write_atomic(&dest, t.as_bytes())
        }
    };
    written.map_err(|e| format!("cannot write the result to `{}`: {e}", dest.display()))?;
    Ok(dest)
}

/// Writes `text` to `rel` with the same confinement (prompt files, a phase's gathered results).
pub fn write_text(ws: &Workspace, rel: &str, text: String) -> Result<PathBuf, String> {
    write(ws, rel, &ResultText::Text(text), Path::new("/dev/null"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_symlink_escape() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let ws = Workspace::new(root.path()).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("docs")).unwrap();
        let err = write(
            &ws,
            "docs/x.md",
            &ResultText::Text("r".into()),
            Path::new("/dev/null"),
        )
        .unwrap_err();
        assert!(err.contains("outside the workspace"), "{err}");
        assert!(!outside.path().join("x.md").exists());
        let ok = write(
            &ws,
            "a/b/c.md",
            &ResultText::Text("r".into()),
            Path::new("/dev/null"),
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(ok).unwrap(), "r\n");
    }
}
