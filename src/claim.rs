//! The claim stage: reads one inbox candidate safely, parses it, gives it an id and either
//! accepts it (the engine records `received`, then renames it into `running/<id>.<ext>` and
//! records `claimed`) or rejects it (moved to `rejected/` next to `<name>.error.txt`).
//!
//! Reading never follows a symlink, never blocks on a FIFO and never reads past 1 MiB.

use std::ffi::OsStr;
use std::io;
use std::path::Path;

use crate::config::{Config, validate_name};
use crate::fsutil::{self, ReadOutcome};
use crate::task::{self, MAX_TASK_BYTES, TaskSpec};
use crate::workspace::Workspace;

/// What examining a candidate decided.
pub enum Intake {
    Accepted(Box<TaskSpec>),
    Rejected(String),
    /// The file vanished before we could read it: another claimer (or its writer) took it.
    Gone,
}

/// Reads, parses and validates `dir/raw`. `id_free` says whether an id may be used (not yet
/// known, or a known task that is coming back, such as a requeued one).
pub fn examine(
    dir: &Path,
    raw: &OsStr,
    config: &Config,
    root: &Path,
    id_free: impl Fn(&str) -> bool,
) -> Intake {
    let Some(name) = raw.to_str() else {
        return Intake::Rejected("the file name is not valid UTF-8; rename the file".into());
    };
    let bytes = match fsutil::read_task_file(&dir.join(raw), MAX_TASK_BYTES) {
        ReadOutcome::Bytes(b) => b,
        ReadOutcome::Gone => return Intake::Gone,
        ReadOutcome::Refused(reason) => return Intake::Rejected(reason),
    };
    let fields = match task::parse_fields(name, &bytes) {
        Ok(f) => f,
        Err(e) => return Intake::Rejected(e.0),
    };
    let id = match &fields.id {
        Some(id) => {
            if let Err(m) = validate_name(id) {
                return Intake::Rejected(format!("invalid `id` `{id}`: {m}"));
            }
            if !id_free(id) {
                return Intake::Rejected(format!(
                    "duplicate id: a task `{id}` already exists; choose another `id` or leave it out"
                ));
            }
            id.clone()
        }
        None => {
            let (stem, _) = fsutil::split_name(name);
            let base = task::id_from_stem(stem);
            let mut id = base.clone();
            let mut n = 2u32;
            while !id_free(&id) {
                id = format!("{base}-{n}");
                n += 1;
            }
            id
        }
    };
    match task::accept(id, fields, config, root) {
        Ok(spec) => Intake::Accepted(Box::new(spec)),
        Err(e) => Intake::Rejected(e.0),
    }
}

/// Moves `dir/raw` into `rejected/` (keeping its name when free) and writes
/// `<name>.error.txt` beside it. Returns the name it got in `rejected/`.
pub fn reject(ws: &Workspace, dir: &Path, raw: &OsStr, reason: &str) -> io::Result<String> {
    let lossy = raw.to_string_lossy();
    // A name that is not UTF-8 (or has a newline) is kept as-is only if it is printable.
    let safe_name: String = if raw.to_str().is_some() && !lossy.contains(['\n', '\r']) {
        lossy.to_string()
    } else {
        lossy
            .chars()
            .map(|c| {
                if c.is_control() || c == '\u{fffd}' {
                    '_'
                } else {
                    c
                }
            })
            .collect()
    };
    let moved = fsutil::move_into(&dir.join(raw), &ws.rejected(), &safe_name)?;
    let moved_name = moved
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or(safe_name);
    let text = format!(
        "error: the task file `{lossy}` was rejected\n\n{reason}\n\nFix the file and move it back into .context/inbox/ to try again.\n"
    );
    fsutil::write_atomic(
        &ws.rejected().join(format!("{moved_name}.error.txt")),
        text.as_bytes(),
    )?;
    Ok(moved_name)
}

/// Moves an accepted file into `running/<id>.<ext>`. Returns the name it got there, or `None`
/// when the file vanished (another claimer won).
pub fn claim(ws: &Workspace, dir: &Path, raw: &OsStr, id: &str) -> io::Result<Option<String>> {
    let name = raw.to_string_lossy();
    let ext = if name.ends_with(".md") {
        ".md"
    } else {
        ".json"
    };
    match fsutil::move_into(&dir.join(raw), &ws.running(), &format!("{id}{ext}")) {
        Ok(path) => Ok(path.file_name().map(|n| n.to_string_lossy().into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
