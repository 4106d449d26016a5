//! Submitting a task: how every door puts work in. `dirigent submit`, a workflow's phases, the
//! HTTP API, the OpenAI-compatible endpoint and the MCP server all end here: the fields are
//! checked with the daemon's own rules ([`task::accept`]) and the task is written into the inbox
//! exactly as a user would drop it (Maildir: `inbox/.tmp/`, fsync, rename). The inbox stage
//! takes it from there, so a task produces the same ledger events whichever door it came by.

use std::path::PathBuf;

use crate::config::{Config, validate_name};
use crate::task::{self, TaskFields};
use crate::workspace::Workspace;

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The fields would be rejected by the daemon; the text says why.
    #[error("{0}")]
    Invalid(String),
    /// The id is taken (by a known task, or a file waiting in the inbox).
    #[error("{0}; choose another id")]
    Exists(Taken),
    #[error("cannot write the task into `{path}`: {cause}")]
    Io { path: String, cause: std::io::Error },
}

/// Why an id is taken; the caller adds how to choose another (a door's field, the CLI's flag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// A task the ledger knows has it.
    Known(String),
    /// A file of that name waits in the inbox.
    Waiting(PathBuf),
}

impl std::fmt::Display for Taken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Taken::Known(id) => write!(f, "a task `{id}` already exists"),
            Taken::Waiting(path) => {
                write!(f, "`{}` is already waiting in the inbox", path.display())
            }
        }
    }
}

/// A task written into the inbox.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub id: String,
    /// Its file in `inbox/`.
    pub file: PathBuf,
}

/// A readable, unique-enough id: a slug of the first words plus a time-based suffix.
pub fn generate_id(seed: &str) -> String {
    let words: Vec<String> = seed
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .take(4)
        .map(|w| w.to_ascii_lowercase())
        .collect();
    let slug = if words.is_empty() {
        "task".to_string()
    } else {
        words.join("-")
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mix = (nanos as u64) ^ ((std::process::id() as u64) << 40) ^ (nanos >> 64) as u64;
    let mut slug: String = slug.chars().take(40).collect();
    slug.push_str(&format!("-{:06x}", mix & 0xff_ffff));
    slug
}

/// Decides the id (the given one, or one generated from the workflow name or prompt) and checks
/// the fields with the daemon's rules. `exists` answers whether an id is already taken.
pub fn prepare(
    mut fields: TaskFields,
    config: &Config,
    ws: &Workspace,
    exists: impl Fn(&str) -> bool,
) -> Result<(String, TaskFields), SubmitError> {
    let id = match &fields.id {
        Some(id) => {
            validate_name(id)
                .map_err(|m| SubmitError::Invalid(format!("invalid id `{id}`: {m}")))?;
            id.clone()
        }
        None => generate_id(
            fields
                .workflow
                .as_deref()
                .or(fields.prompt.as_deref())
                .unwrap_or("task"),
        ),
    };
    fields.id = Some(id.clone());
    task::accept(id.clone(), fields.clone(), config, ws.root())
        .map_err(|e| SubmitError::Invalid(e.0))?;
    if let Some(why) = unknown_dependency(ws, &fields.after, &exists) {
        return Err(SubmitError::Invalid(why));
    }
    if exists(&id) {
        return Err(SubmitError::Exists(Taken::Known(id)));
    }
    Ok((id, fields))
}

/// Why a task's `after` cannot be met: it names a task this workspace has never seen (not
/// `known`, not waiting in the inbox). Refused at once rather than waiting forever on a typo;
/// a task must be submitted after the tasks it depends on.
pub fn unknown_dependency(
    ws: &Workspace,
    after: &[String],
    known: &dyn Fn(&str) -> bool,
) -> Option<String> {
    let waiting = |id: &str| {
        ["json", "md"].iter().any(|ext| {
            ws.inbox()
                .join(format!("{id}.{ext}"))
                .symlink_metadata()
                .is_ok()
        })
    };
    let dep = after.iter().find(|d| !known(d) && !waiting(d))?;
    Some(format!(
        "`after` names `{dep}`, which is no task of this workspace (`dirigent status` lists them); submit the tasks it depends on first"
    ))
}

/// Writes the task into the inbox: `inbox/.tmp/<id>.json`, fsync, then a rename that never
/// replaces a file already waiting under that name. The daemon never sees half a file.
pub fn write_into_inbox(
    ws: &Workspace,
    id: &str,
    fields: &TaskFields,
) -> Result<Submitted, SubmitError> {
    let name = crate::task_file::submitted_name(id);
    let tmp = ws.inbox_tmp().join(&name);
    let dest = ws.inbox().join(&name);
    let io = |path: &PathBuf, cause| SubmitError::Io {
        path: path.display().to_string(),
        cause,
    };
    let bytes = serde_json::to_vec_pretty(fields).map_err(|e| io(&tmp, e.into()))?;
    if bytes.len() as u64 > task::MAX_TASK_BYTES {
        // The inbox would reject it; say so now, to the door that can tell its caller.
        return Err(SubmitError::Invalid(format!(
            "the task is {} bytes; a task may have at most {} (put large inputs in files and name them in `files`)",
            bytes.len(),
            task::MAX_TASK_BYTES
        )));
    }
    // Through directories opened without following links: an agent could have replaced
    // `inbox/.tmp` with one.
    let tmp_dir = ws.open_sub("inbox/.tmp").map_err(|e| io(&tmp, e))?;
    let inbox = ws.open_sub("inbox").map_err(|e| io(&dest, e))?;
    tmp_dir
        .write_atomic(&name, &bytes, 0o600)
        .map_err(|e| io(&tmp, e))?;
    if let Err(e) = tmp_dir.rename_noreplace(&name, &inbox, &name) {
        let _ = tmp_dir.remove(&name);
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            return Err(SubmitError::Exists(Taken::Waiting(dest)));
        }
        return Err(io(&dest, e));
    }
    Ok(Submitted {
        id: id.to_string(),
        file: dest,
    })
}

/// [`prepare`] then [`write_into_inbox`].
pub fn submit(
    ws: &Workspace,
    config: &Config,
    fields: TaskFields,
    exists: impl Fn(&str) -> bool,
) -> Result<Submitted, SubmitError> {
    let (id, fields) = prepare(fields, config, ws, exists)?;
    write_into_inbox(ws, &id, &fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_valid_names_and_differ() {
        let a = generate_id("Review the parser, please!");
        assert!(a.starts_with("review-the-parser-please-"), "{a}");
        assert!(validate_name(&a).is_ok());
        assert!(validate_name(&generate_id("")).is_ok());
        assert!(validate_name(&generate_id("ü ß ☃")).is_ok());
    }
}
