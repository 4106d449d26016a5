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
    if let Some(id) = &fields.id {
        validate_name(id).map_err(|m| SubmitError::Invalid(format!("invalid id `{id}`: {m}")))?;
    }
    let id = id_of(&mut fields);
    task::accept(id.clone(), fields.clone(), config, ws.root())
        .map_err(|e| SubmitError::Invalid(e.0))?;
    // After itself: the circle named, as the inbox names it (not "no such task").
    if fields.after.contains(&id) {
        let after = fields.after.clone();
        let own = |t: &str| (t == id).then_some(after.as_slice());
        if let Some(why) = dependency_cycle(&id, &own) {
            return Err(SubmitError::Invalid(why));
        }
    }
    if let Some(why) = unknown_dependency(ws, &fields.after, &exists) {
        return Err(SubmitError::Invalid(why));
    }
    if let Some(parent) = fields.parent.as_deref()
        && !exists(parent)
    {
        return Err(SubmitError::Invalid(unknown_parent(parent)));
    }
    if exists(&id) {
        return Err(SubmitError::Exists(Taken::Known(id)));
    }
    Ok((id, fields))
}

/// The task's id: the one given, else one made from its workflow's name or its prompt, written
/// into `fields` so that whoever accepts the task uses the same.
pub fn id_of(fields: &mut TaskFields) -> String {
    let id = fields.id.clone().unwrap_or_else(|| {
        generate_id(
            fields
                .workflow
                .as_deref()
                .or(fields.prompt.as_deref())
                .unwrap_or("task"),
        )
    });
    fields.id = Some(id.clone());
    id
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

/// Why a task's `parent` (the task whose attempt created it) cannot be so: no such task.
pub fn unknown_parent(parent: &str) -> String {
    format!(
        "`parent` names `{parent}`, which is no task of this workspace; it is set by dirigent for a task an agent creates inside an attempt"
    )
}

/// Why `start` could never run: its `after` leads back to it (`a → b → a`, or `a` after
/// itself). `after_of` gives a task's `after` (`None`: a task that waits for nothing, or none
/// known). A pure function: the intake asks it of every new task.
pub fn dependency_cycle<'a>(
    start: &str,
    after_of: &dyn Fn(&str) -> Option<&'a [String]>,
) -> Option<String> {
    // Depth first, each task visited once; `path` is the way from `start` to the current one.
    // Bounded: a graph too big to search is refused rather than searched for minutes.
    const MOST_LINKS: usize = 100_000;
    let mut links = 0usize;
    let mut seen = std::collections::HashSet::new();
    let mut path: Vec<&str> = vec![start];
    let mut stack: Vec<std::slice::Iter<'a, String>> =
        vec![after_of(start).unwrap_or_default().iter()];
    while let Some(next) = stack.last_mut().map(Iterator::next) {
        match next {
            None => {
                stack.pop();
                path.pop();
            }
            Some(dep) if dep == start => {
                path.push(start);
                return Some(format!(
                    "`after` goes round in a circle ({}): none of these tasks could ever start; remove one of the dependencies",
                    path.join(" → ")
                ));
            }
            Some(dep) => {
                links += 1;
                if links > MOST_LINKS {
                    return Some(format!(
                        "`after` leads through more than {MOST_LINKS} dependencies (from `{start}`), too many to check that none leads back to it; name fewer"
                    ));
                }
                if seen.insert(dep.as_str()) {
                    path.push(dep);
                    stack.push(after_of(dep).unwrap_or_default().iter());
                }
            }
        }
    }
    None
}

/// Whether any circle may run through the tasks of `starts` (a batch being taken in): one
/// search of everything they reach, each task and link looked at once. `false` means none
/// does; `true` that one does — or that the graph is too big to tell (past a million links),
/// and [`dependency_cycle`] should be asked task by task.
pub fn may_have_cycle<'a, 's>(
    starts: impl Iterator<Item = &'s str>,
    after_of: &dyn Fn(&str) -> Option<&'a [String]>,
) -> bool
where
    'a: 's,
{
    const MOST_LINKS: usize = 1_000_000;
    #[derive(PartialEq)]
    enum Mark {
        /// On the way being searched now: reaching it again closes a circle.
        OnPath,
        /// Searched: no circle through it.
        Done,
    }
    let mut marks: std::collections::HashMap<&str, Mark> = std::collections::HashMap::new();
    let mut links = 0usize;
    for start in starts {
        if marks.contains_key(start) {
            continue;
        }
        marks.insert(start, Mark::OnPath);
        let mut stack: Vec<(&str, std::slice::Iter<'a, String>)> =
            vec![(start, after_of(start).unwrap_or_default().iter())];
        while let Some((id, deps)) = stack.last_mut() {
            let id = *id;
            match deps.next() {
                None => {
                    marks.insert(id, Mark::Done);
                    stack.pop();
                }
                Some(dep) => {
                    links += 1;
                    if links > MOST_LINKS {
                        return true;
                    }
                    match marks.get(dep.as_str()) {
                        Some(Mark::OnPath) => return true,
                        Some(Mark::Done) => {}
                        None => {
                            marks.insert(dep, Mark::OnPath);
                            stack.push((dep, after_of(dep).unwrap_or_default().iter()));
                        }
                    }
                }
            }
        }
    }
    false
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

    #[test]
    fn a_dependency_that_leads_back_is_found() {
        let graph: std::collections::HashMap<&str, Vec<String>> = [
            ("self", vec!["self".to_string()]),
            ("a", vec!["b".to_string()]),
            ("b", vec!["c".to_string(), "old".to_string()]),
            ("c", vec!["a".to_string()]),
            ("d", vec!["old".to_string(), "e".to_string()]),
            ("e", vec!["old".to_string()]),
            // A diamond: two ways to one task, no circle.
            ("f", vec!["g".to_string(), "h".to_string()]),
            ("g", vec!["i".to_string()]),
            ("h", vec!["i".to_string()]),
            ("i", vec![]),
            ("into", vec!["a".to_string()]),
        ]
        .into_iter()
        .collect();
        let after_of = |id: &str| graph.get(id).map(Vec::as_slice);
        // (the new task, the circle it is on; None: none)
        let cases = [
            ("self", Some("self → self")),
            ("a", Some("a → b → c → a")),
            ("c", Some("c → a → b → c")),
            ("d", None),
            ("f", None),
            ("unknown", None),
            // Leads into a circle it is not on: it waits on tasks that are refused themselves.
            ("into", None),
        ];
        for (start, want) in cases {
            let got = dependency_cycle(start, &after_of);
            match want {
                None => assert_eq!(got, None, "{start}"),
                Some(path) => assert!(
                    got.as_deref()
                        .is_some_and(|g| g.contains(&format!("({path})"))),
                    "{start}: expected the circle {path}, got {got:?}"
                ),
            }
        }
    }

    /// One search per batch: a batch with no circle is told so however tangled; one with a
    /// circle anywhere in what it reaches is told to look closer.
    #[test]
    fn a_batch_is_searched_once_for_any_circle() {
        let graph: std::collections::HashMap<&str, Vec<String>> = [
            ("a", vec!["b".to_string(), "c".to_string()]),
            ("b", vec!["c".to_string()]),
            ("c", vec![]),
            ("d", vec!["a".to_string(), "b".to_string()]),
            ("x", vec!["y".to_string()]),
            ("y", vec!["z".to_string()]),
            ("z", vec!["x".to_string()]),
            ("into", vec!["x".to_string()]),
        ]
        .into_iter()
        .collect();
        let after_of = |id: &str| graph.get(id).map(Vec::as_slice);
        for (starts, want) in [
            (vec!["a", "b", "c", "d"], false),
            (vec!["d"], false),
            (vec!["unknown"], false),
            (vec!["x"], true),
            (vec!["a", "into"], true),
        ] {
            assert_eq!(
                may_have_cycle(starts.iter().copied(), &after_of),
                want,
                "from {starts:?}"
            );
        }
        // A diamond 2,000 wide and deep is searched once: each link once, no circle.
        let ids: Vec<String> = (0..2000).map(|i| format!("t{i}")).collect();
        let wide: std::collections::HashMap<&str, Vec<String>> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), ids[i.saturating_sub(300)..i].to_vec()))
            .collect();
        let after_of = |id: &str| wide.get(id).map(Vec::as_slice);
        assert!(
            !may_have_cycle(ids.iter().map(String::as_str), &after_of),
            "expected about 600,000 links searched to no circle"
        );
    }

    /// A graph too big to search is refused with a reason, not searched without end: 400 tasks
    /// each after all the ones before reach 80,000 links from the last.
    #[test]
    fn a_dependency_graph_too_big_to_search_is_refused() {
        let ids: Vec<String> = (0..=600).map(|i| format!("t{i}")).collect();
        let graph: std::collections::HashMap<&str, Vec<String>> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), ids[..i].to_vec()))
            .collect();
        let after_of = |id: &str| graph.get(id).map(Vec::as_slice);
        assert_eq!(
            dependency_cycle("t300", &after_of),
            None,
            "expected 300 × 299 / 2 links searched in full"
        );
        let got = dependency_cycle("t600", &after_of);
        assert!(
            got.as_deref().is_some_and(|g| g
                .starts_with("`after` leads through more than 100000 dependencies (from `t600`)")),
            "expected the graph refused as too big, got {got:?}"
        );
    }
}
