//! Where a task's file lives, and the one place it moves. After the claim (inbox → `running/`,
//! in [`crate::claim`]) a task file is renamed to its task's name in `running/`, settled into
//! `done/` or `failed/`, put back into the inbox by a stop, taken back from `failed/` by a
//! retry, or moved to `rejected/` with the reason beside it. Every one of those moves is a
//! function here, and so is the one rule for the file's name: `<id>.md` or `<id>.json`.
//!
//! A task file that went missing (an agent or a user removed it) never loses its task: the
//! ledger has its fields, and the file is written again from them.

use std::io;

use crate::confined::Dir;
use crate::task::TaskFields;
use crate::workspace::Workspace;

/// The `.context/` directories a task file moves between.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    Inbox,
    Running,
    Done,
    Failed,
    Rejected,
}

impl Place {
    pub fn dir(self) -> &'static str {
        match self {
            Place::Inbox => "inbox",
            Place::Running => "running",
            Place::Done => "done",
            Place::Failed => "failed",
            Place::Rejected => "rejected",
        }
    }
}

/// The name a task's file has in `running/`, `done/` and `failed/`, and when a stop puts it
/// back into the inbox: its id, with the extension of the name it arrived under (`.md`, or
/// `.json` for everything else).
pub fn file_name(id: &str, arrived_as: &str) -> String {
    let ext = if arrived_as.ends_with(".md") {
        ".md"
    } else {
        ".json"
    };
    format!("{id}{ext}")
}

/// The name a door gives the file it writes into the inbox for task `id` (JSON).
pub fn submitted_name(id: &str) -> String {
    file_name(id, ".json")
}

/// Gives a claimed file (`claim_name` in `running/`) its task's name; returns the name it got.
pub fn name_claimed(
    running: &Dir,
    claim_name: &str,
    id: &str,
    arrived_as: &str,
) -> io::Result<String> {
    let want = file_name(id, arrived_as);
    if claim_name == want {
        return Ok(want);
    }
    running.move_into(claim_name, running, &want)
}

/// Moves a settled task's file from `from` — `running/`, or the inbox for a task a stop put
/// back there — into `done/` or `failed/`, and returns the name it got.
pub fn settle(
    ws: &Workspace,
    from: Place,
    to: Place,
    file: &str,
    id: &str,
    fields: Option<&TaskFields>,
) -> io::Result<Option<String>> {
    debug_assert!(matches!(from, Place::Running | Place::Inbox));
    debug_assert!(matches!(to, Place::Done | Place::Failed));
    move_task(ws, from, to, file, id, fields)
}

/// Takes a failed task's file back into `running/` for a retry.
pub fn retry(ws: &Workspace, file: &str, id: &str) -> io::Result<Option<String>> {
    move_task(ws, Place::Failed, Place::Running, file, id, None)
}

/// Puts an unfinished task's file back into the inbox (a graceful stop), under its task's
/// name so that it keeps its id; returns the name it got.
pub fn requeue(running: &Dir, inbox: &Dir, id: &str, file: &str) -> io::Result<String> {
    running.move_into(file, inbox, &file_name(id, file))
}

/// Writes a task file that went missing from `running/` again from the ledger's fields;
/// returns its name.
pub fn rebuild_in_running(
    running: &Dir,
    fields: &TaskFields,
    id: &str,
    file: &str,
) -> io::Result<String> {
    let name = file_name(id, file);
    running.write_atomic(&name, &rebuild(fields, id, &name), 0o600)?;
    Ok(name)
}

/// Writes the file of a task that arrived without one (from the fleet) into `running/`; returns
/// its name. Not fsynced: the ledger's `received` holds the fields, and a start that finds the
/// file missing writes it again from there.
pub fn place_in_running(
    running: &Dir,
    fields: &TaskFields,
    id: &str,
    file: &str,
) -> io::Result<String> {
    let name = file_name(id, file);
    running.write_new(&name, &rebuild(fields, id, &name), 0o600)?;
    Ok(name)
}

/// Moves a task's file `file` from `from` into `to` (keeping its name when free) and returns
/// the name it got. A file that is not there is written anew from the task's fields as the
/// ledger recorded them. Returns `Ok(None)` only when there is nothing to rebuild it from.
fn move_task(
    ws: &Workspace,
    from: Place,
    to: Place,
    file: &str,
    id: &str,
    fields: Option<&TaskFields>,
) -> io::Result<Option<String>> {
    let (from_dir, to_dir) = (ws.open_sub(from.dir())?, ws.open_sub(to.dir())?);
    match from_dir.move_into(file, &to_dir, file) {
        Ok(name) => Ok(Some(name)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if to_dir.kind(file).is_some() {
                // A move a crash interrupted after it happened.
                return Ok(Some(file.to_string()));
            }
            let Some(fields) = fields else {
                return Ok(None);
            };
            tracing::warn!(
                task = id,
                "the task file `{}/{file}` is gone; it is written again from the ledger into `{}/`",
                from.dir(),
                to.dir()
            );
            to_dir.write_atomic(file, &rebuild(fields, id, file), 0o600)?;
            Ok(Some(file.to_string()))
        }
        Err(e) => Err(e),
    }
}

/// A task file made again from its fields (with the id, so that it keeps it), in the format its
/// name says: JSON, or Markdown whose front matter is the fields as JSON (YAML reads JSON).
fn rebuild(fields: &TaskFields, id: &str, name: &str) -> Vec<u8> {
    let mut f = fields.clone();
    f.id = Some(id.to_string());
    if name.ends_with(".md") {
        let prompt = f.prompt.take().unwrap_or_default();
        let front = serde_json::to_string(&f).unwrap_or_else(|_| "{}".into());
        format!("---\n{front}\n---\n{prompt}\n").into_bytes()
    } else {
        serde_json::to_vec_pretty(&f).unwrap_or_default()
    }
}

/// Moves `from_name` (in `from`) into `rejected/`, keeping `name` (its inbox name, made
/// printable) when free, and writes `<name>.error.txt` beside it. Returns the name it got in
/// `rejected/`.
pub fn reject(
    ws: &Workspace,
    from: &Dir,
    from_name: &str,
    name: &str,
    reason: &str,
) -> io::Result<String> {
    let rejected = ws.open_sub(Place::Rejected.dir())?;
    let moved = from.move_into(from_name, &rejected, &printable_name(name))?;
    write_reason(&rejected, &moved, name, reason)?;
    Ok(moved)
}

/// Rejects an inbox entry whose name is not UTF-8 (it cannot be opened by name through a
/// [`Dir`]): moved by path, under a printable name.
pub fn reject_unnamed(ws: &Workspace, raw: &std::ffi::OsStr, reason: &str) -> io::Result<String> {
    let name = raw.to_string_lossy().into_owned();
    let safe = printable_name(&name);
    let moved = crate::fsutil::move_into(&ws.inbox().join(raw), &ws.rejected(), &safe)?;
    let moved = moved
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or(safe);
    write_reason(&ws.open_sub(Place::Rejected.dir())?, &moved, &name, reason)?;
    Ok(moved)
}

fn write_reason(rejected: &Dir, moved: &str, name: &str, reason: &str) -> io::Result<()> {
    // Read with `cat` on a terminal: the name (anyone's choice) and the reason (which may quote
    // the file) lose what would drive it.
    let text = crate::terminal::printable_lines(&format!(
        "error: the task file `{name}` was rejected\n\n{reason}\n\nFix the file and move it back into .context/inbox/ to try again."
    )) + "\n";
    rejected.write_atomic(&format!("{moved}.error.txt"), text.as_bytes(), 0o600)
}

/// A file name safe to show and to reuse: control characters and undecodable bytes become `_`,
/// and a name that would start with a dot (hidden, or a claim name) loses it.
pub fn printable_name(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_control() || c == '\u{fffd}' || c == '/' {
                '_'
            } else {
                c
            }
        })
        .collect();
    let clean = clean.trim_start_matches('.').to_string();
    if clean.is_empty() {
        "task".to_string()
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task;

    #[test]
    fn names_table() {
        let cases = [
            ("a", "notes.md", "a.md"),
            ("a", "a.json", "a.json"),
            ("a", "a.yaml", "a.json"),
            ("a", "a.MD", "a.json"),
            ("run.phase", "anything", "run.phase.json"),
        ];
        for (id, arrived_as, want) in cases {
            assert_eq!(
                file_name(id, arrived_as),
                want,
                "expected `{id}` arrived as `{arrived_as}` to be named `{want}`"
            );
        }
        assert_eq!(printable_name("..claim.x\n.json"), "claim.x_.json");
        assert_eq!(
            printable_name("..."),
            "task",
            "expected a name of dots to become `task`"
        );
    }

    #[test]
    fn a_lost_task_file_is_rebuilt_and_parses_back() {
        let root = tempfile::tempdir().unwrap();
        let ws = Workspace::new(root.path()).unwrap();
        ws.ensure().unwrap();
        for (name, json) in [
            (
                "a.json",
                r#"{"prompt":"line one\nline two","agent":"x","priority":3}"#,
            ),
            (
                "b.md",
                r##"{"prompt":"# Title\n\nbody","output":"docs/x.md"}"##,
            ),
        ] {
            let fields = task::parse_fields("f.json", json.as_bytes()).unwrap();
            let moved = move_task(
                &ws,
                Place::Running,
                Place::Done,
                name,
                "the-id",
                Some(&fields),
            )
            .unwrap();
            assert_eq!(moved.as_deref(), Some(name));
            let bytes = std::fs::read(ws.done().join(name)).unwrap();
            let back = task::parse_fields(name, &bytes).unwrap();
            assert_eq!(back.id.as_deref(), Some("the-id"), "{name}");
            assert_eq!(back.prompt, fields.prompt, "{name}");
            assert_eq!(back.output, fields.output, "{name}");
            assert_eq!(back.priority, fields.priority, "{name}");
        }
        assert_eq!(
            move_task(&ws, Place::Running, Place::Done, "c.json", "c", None).unwrap(),
            None
        );
    }
}
