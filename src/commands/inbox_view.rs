//! What `status` says of the files waiting in the inbox that the daemon has not taken in yet:
//! which they are, and whether the daemon will refuse one — the checks it makes when it takes a
//! file in, made here without it.

use super::status::Live;
use super::*;

/// A file waiting in the inbox that the daemon has not taken in yet: (id, file name, whether
/// it is a task file at all).
pub(super) fn inbox_files(ws: &Workspace, book: &TaskBook) -> Vec<(String, String, bool)> {
    let out: Vec<(String, String, bool)> = dirigent::inbox::scan(&ws.inbox())
        .unwrap_or_default()
        .into_iter()
        .map(|c| {
            let (stem, _) = dirigent::fsutil::split_name(&c.name);
            let is_task = c.name.ends_with(".json") || c.name.ends_with(".md");
            (
                dirigent::task::id_from_stem(stem).to_string(),
                c.name,
                is_task,
            )
        })
        .filter(|(id, _, _)| !book.contains(id))
        .collect();
    // Oldest first, as the scan lists them: the order the daemon takes them in.
    out
}

/// What a waiting inbox file will become, in words: one that cannot be read as a task says
/// so now, not once a daemon has rejected it.
pub(super) fn inbox_note(
    ws: &Workspace,
    book: &TaskBook,
    config: Option<&Config>,
    live: &Live,
    (id, file, is_task): (&str, &str, bool),
) -> String {
    if !is_task {
        return "not a task file (only .json and .md are): the daemon moves it to rejected/".into();
    }
    match (
        inbox_refusal(ws, book, config, (id, file, is_task)),
        running_daemon(ws).is_some(),
    ) {
        (Some(why), _) => format!(
            "will be rejected: {}",
            dirigent::terminal::printable(why.lines().next().unwrap_or(""))
        ),
        (None, true) if live.intake_held.is_some() => {
            "waiting in the inbox; the daemon takes it in once the tasks it holds have room (see its line above)".into()
        }
        (None, true) => "waiting in the inbox; the daemon takes it in shortly".into(),
        (None, false) => {
            "waiting in the inbox; it runs when a daemon starts (`dirigent daemon`)".into()
        }
    }
}

/// Why the daemon will refuse an inbox file, as far as that can be known without it: the
/// checks it makes when it takes a file in (`--json` gives it as `rejected_because`).
pub(super) fn inbox_refusal(
    ws: &Workspace,
    book: &TaskBook,
    config: Option<&Config>,
    (id, file, is_task): (&str, &str, bool),
) -> Option<String> {
    if !is_task {
        return Some("not a task file (only .json and .md are)".into());
    }
    match dirigent::fsutil::read_task_file(&ws.inbox().join(file), dirigent::task::MAX_TASK_BYTES) {
        dirigent::fsutil::ReadOutcome::Bytes(bytes) => {
            match dirigent::task::parse_fields(file, &bytes) {
                Err(e) => Some(format!("cannot be read as a task: {}", e.0)),
                Ok(fields) => {
                    let after = fields.after.clone();
                    let parent = fields.parent.clone();
                    let id = fields.id.clone().unwrap_or_else(|| id.to_string());
                    let own = |t: &str| (t == id).then_some(after.as_slice());
                    let circle = after
                        .contains(&id)
                        .then(|| dirigent::submit::dependency_cycle(&id, &own))
                        .flatten();
                    config
                        .and_then(|c| {
                            dirigent::task::accept(id.clone(), fields, c, ws.root()).err()
                        })
                        .map(|e| e.0)
                        .or(circle)
                        .or_else(|| {
                            dirigent::submit::unknown_dependency(ws, &after, &|d| book.contains(d))
                        })
                        .or_else(|| {
                            parent
                                .filter(|p| !book.contains(p))
                                .map(|p| dirigent::submit::unknown_parent(&p))
                        })
                }
            }
        }
        dirigent::fsutil::ReadOutcome::Refused(why) => {
            Some(format!("cannot be read as a task: {why}"))
        }
        dirigent::fsutil::ReadOutcome::Gone => None,
    }
}
