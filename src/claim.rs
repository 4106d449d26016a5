//! The claim stage: takes one file out of the inbox and decides what it is.
//!
//! The file is claimed *first* — renamed from `inbox/` into `running/` under a private,
//! unpredictable name — and only then read and checked. Whatever sat in the inbox at the instant
//! of the rename is what is read, so a file swapped in by someone else after a check can never
//! be claimed unchecked. Reading never follows a symlink, never blocks on a FIFO and never reads
//! past 1 MiB; the checks are made on the open descriptor.
//!
//! Then the engine gives the task its id ([`choose_id`]), checks it against the config
//! (`task::accept`), renames it to `running/<id>.<ext>` and records `received` + `claimed`; or it
//! moves it to `rejected/` next to `<name>.error.txt` ([`reject`]).

use std::io::{self, Read};

use crate::config::validate_name;
use crate::confined::{Dir, random_u64};
use crate::fsutil;
use crate::task::{self, MAX_TASK_BYTES, TaskFields};
use crate::workspace::Workspace;

/// The prefix of a file claimed but not yet accepted or rejected, in `running/`.
pub const CLAIM_PREFIX: &str = ".claim.";

/// The longest file name most file systems take.
const NAME_MAX: usize = 255;

/// Claims `name` from `inbox`: renames it into `running` as `.claim.<16 hex>.<name>` (the name
/// shortened when it would be too long). Returns the claim name, or `None` when the file is
/// gone (another claimer won, or its writer took it back).
pub fn claim(inbox: &Dir, running: &Dir, name: &str) -> io::Result<Option<String>> {
    let prefix = format!("{CLAIM_PREFIX}{:016x}.", random_u64());
    let mut keep = name.to_string();
    while prefix.len() + keep.len() > NAME_MAX {
        // Shorten the stem, keep the extension: it still says how to parse the file.
        let (stem, ext) = fsutil::split_name(&keep);
        let mut stem = stem.to_string();
        stem.pop();
        keep = format!("{stem}{ext}");
    }
    let claim_name = format!("{prefix}{keep}");
    match inbox.rename_noreplace(name, running, &claim_name) {
        Ok(()) => Ok(Some(claim_name)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The inbox name a claim name was made from (shortened if it had to be).
pub fn original_name(claim_name: &str) -> Option<&str> {
    let rest = claim_name.strip_prefix(CLAIM_PREFIX)?;
    let (_, name) = rest.split_once('.')?;
    Some(name)
}

/// Why a claimed file could not be taken in. Its text goes into `rejected/<name>.error.txt`.
#[derive(Debug)]
pub enum Unreadable {
    /// Not a task: the file breaks a rule (a link, too big, not UTF-8, bad JSON …).
    Refused(String),
    /// It could not be read for lack of a resource (descriptors): try again later.
    Exhausted(io::Error),
}

/// Reads the claimed file `claim_name` in `running` and parses it; `name` (its inbox name)
/// picks the format. The file must be a regular file with no other hard link (else it would
/// also be reachable from outside the inbox), at most 1 MiB.
pub fn read(running: &Dir, claim_name: &str, name: &str) -> Result<TaskFields, Unreadable> {
    let refused = |m: String| Unreadable::Refused(m);
    let file = match running.open_regular(claim_name) {
        Ok(f) => f,
        Err(e) if fsutil::exhausted(&e).is_some() => return Err(Unreadable::Exhausted(e)),
        Err(e) if crate::confined::errno_of(&e) == Some(nix::libc::ELOOP) => {
            return Err(refused(
                "the task file is a symbolic link; dirigent only reads regular files".into(),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
            let kind = ["a directory", "a FIFO", "a socket", "a device"]
                .into_iter()
                .find(|k| e.to_string().contains(&format!(" is {k},")))
                .unwrap_or("not a regular file");
            return Err(refused(format!(
                "the task file is {kind}; dirigent only reads regular files"
            )));
        }
        Err(e) => return Err(refused(format!("cannot open the task file: {e}"))),
    };
    let meta = file
        .metadata()
        .map_err(|e| refused(format!("cannot stat the task file: {e}")))?;
    if std::os::unix::fs::MetadataExt::nlink(&meta) > 1 {
        return Err(refused(
            "the task file has other hard links, so it is also reachable from outside the inbox; \
copy it into the inbox instead"
                .into(),
        ));
    }
    if meta.len() > MAX_TASK_BYTES {
        return Err(refused(format!(
            "the task file is {} bytes; the limit is {MAX_TASK_BYTES} bytes (1 MiB)",
            meta.len()
        )));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    if let Err(e) = (&file).take(MAX_TASK_BYTES + 1).read_to_end(&mut bytes) {
        return Err(refused(format!("cannot read the task file: {e}")));
    }
    if bytes.len() as u64 > MAX_TASK_BYTES {
        return Err(refused(format!(
            "the task file grew past the limit of {MAX_TASK_BYTES} bytes while being read"
        )));
    }
    task::parse_fields(name, &bytes).map_err(|e| refused(e.0))
}

/// Chooses the id of a task read from the file `name`: its explicit `id`, which must be free,
/// or one made from the file's stem, with `-2`, `-3` … added until it is free. `free(id,
/// explicit)` answers whether an id may be used (the engine knows the tasks, the ids reserved
/// by doors, and the ids given in the same batch).
pub fn choose_id(
    fields: &TaskFields,
    name: &str,
    free: impl Fn(&str, bool) -> bool,
) -> Result<String, String> {
    match &fields.id {
        Some(id) => {
            validate_name(id).map_err(|m| format!("invalid `id` `{id}`: {m}"))?;
            if free(id, true) {
                Ok(id.clone())
            } else {
                Err(format!(
                    "duplicate id: a task `{id}` already exists; choose another `id` or leave it out"
                ))
            }
        }
        None => {
            let (stem, _) = fsutil::split_name(name);
            let base = task::id_from_stem(stem);
            let mut id = base.clone();
            let mut n = 2u32;
            while !free(&id, false) {
                id = format!("{base}-{n}");
                n += 1;
            }
            Ok(id)
        }
    }
}

/// The extension a task file keeps in `running/`, `done/` and `failed/`: `.md` or `.json`.
pub fn extension(name: &str) -> &'static str {
    if name.ends_with(".md") {
        ".md"
    } else {
        ".json"
    }
}

/// Moves a task's file `file` from the `.context/` subdirectory `from` into `to` (keeping its
/// name when free) and returns the name it got. A file that is not there — an agent or a user
/// removed it — is written anew from the task's fields as the ledger recorded them, so a lost
/// file never loses its task. Returns `Ok(None)` only when there is nothing to rebuild it from.
pub fn move_task(
    ws: &Workspace,
    from: &str,
    to: &str,
    file: &str,
    id: &str,
    fields: Option<&TaskFields>,
) -> io::Result<Option<String>> {
    let (from_dir, to_dir) = (ws.open_sub(from)?, ws.open_sub(to)?);
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
                "the task file `{from}/{file}` is gone; it is written again from the ledger into `{to}/`"
            );
            to_dir.write_atomic(file, &rebuild(fields, id, file), 0o600)?;
            Ok(Some(file.to_string()))
        }
        Err(e) => Err(e),
    }
}

/// A task file made again from its fields (with the id, so that it keeps it), in the format its
/// name says: JSON, or Markdown whose front matter is the fields as JSON (YAML reads JSON).
pub fn rebuild(fields: &TaskFields, id: &str, name: &str) -> Vec<u8> {
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
    let rejected = ws.open_sub("rejected")?;
    let moved = from.move_into(from_name, &rejected, &printable_name(name))?;
    let text = format!(
        "error: the task file `{name}` was rejected\n\n{reason}\n\nFix the file and move it back into .context/inbox/ to try again.\n"
    );
    rejected.write_atomic(&format!("{moved}.error.txt"), text.as_bytes(), 0o600)?;
    Ok(moved)
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

    /// A fresh workspace with its inbox and running/ opened.
    fn setup() -> (tempfile::TempDir, Workspace, Dir, Dir) {
        let root = tempfile::tempdir().unwrap();
        let ws = Workspace::new(root.path()).unwrap();
        ws.ensure().unwrap();
        let (inbox, running) = (
            ws.open_sub("inbox").unwrap(),
            ws.open_sub("running").unwrap(),
        );
        (root, ws, inbox, running)
    }

    #[test]
    fn a_claim_is_of_the_file_that_was_there_at_the_rename() {
        let (_root, ws, inbox, running) = setup();
        std::fs::write(ws.inbox().join("a.json"), r#"{"prompt":"checked"}"#).unwrap();
        let claimed = claim(&inbox, &running, "a.json").unwrap().unwrap();
        assert!(claimed.starts_with(CLAIM_PREFIX), "{claimed}");
        assert_eq!(original_name(&claimed), Some("a.json"));
        // What is dropped under the same name afterwards is a new file, not this claim.
        std::fs::write(ws.inbox().join("a.json"), r#"{"prompt":"swapped"}"#).unwrap();
        let fields = read(&running, &claimed, "a.json").unwrap();
        assert_eq!(fields.prompt.as_deref(), Some("checked"));
        // A second claim of a name that is gone finds nothing.
        std::fs::remove_file(ws.inbox().join("a.json")).unwrap();
        assert_eq!(claim(&inbox, &running, "a.json").unwrap(), None);
    }

    #[test]
    fn claimed_links_fifos_and_big_files_are_refused() {
        let (root, ws, inbox, running) = setup();
        let secret = root.path().join("secret");
        std::fs::write(&secret, r#"{"prompt":"secret"}"#).unwrap();
        std::os::unix::fs::symlink(&secret, ws.inbox().join("l.json")).unwrap();
        nix::unistd::mkfifo(&ws.inbox().join("f.json"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        std::fs::write(ws.inbox().join("b.json"), vec![b' '; 2 << 20]).unwrap();
        std::fs::hard_link(&secret, ws.inbox().join("h.json")).unwrap();
        let cases = [
            ("l.json", "symbolic link"),
            ("f.json", "is a FIFO"),
            ("b.json", "the limit is"),
            ("h.json", "hard links"),
        ];
        for (name, want) in cases {
            let c = claim(&inbox, &running, name).unwrap().unwrap();
            match read(&running, &c, name) {
                Err(Unreadable::Refused(m)) => assert!(m.contains(want), "{name}: {m}"),
                other => panic!("{name}: want a refusal containing {want:?}, got {other:?}"),
            }
        }
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
            let moved = move_task(&ws, "running", "done", name, "the-id", Some(&fields)).unwrap();
            assert_eq!(moved.as_deref(), Some(name));
            let bytes = std::fs::read(ws.done().join(name)).unwrap();
            let back = task::parse_fields(name, &bytes).unwrap();
            assert_eq!(back.id.as_deref(), Some("the-id"), "{name}");
            assert_eq!(back.prompt, fields.prompt, "{name}");
            assert_eq!(back.output, fields.output, "{name}");
            assert_eq!(back.priority, fields.priority, "{name}");
        }
        assert_eq!(
            move_task(&ws, "running", "done", "c.json", "c", None).unwrap(),
            None
        );
    }

    #[test]
    fn ids_table() {
        let f = |json: &str| task::parse_fields("x.json", json.as_bytes()).unwrap();
        let taken = ["a", "a-2", "b"];
        let free = |id: &str, _explicit: bool| !taken.contains(&id);
        assert_eq!(
            choose_id(&f(r#"{"prompt":"p"}"#), "a.json", free),
            Ok("a-3".into())
        );
        assert_eq!(
            choose_id(&f(r#"{"prompt":"p"}"#), "c d.md", free),
            Ok("c-d".into())
        );
        assert_eq!(
            choose_id(&f(r#"{"prompt":"p","id":"z"}"#), "a.json", free),
            Ok("z".into())
        );
        let err = choose_id(&f(r#"{"prompt":"p","id":"b"}"#), "q.json", free).unwrap_err();
        assert!(err.contains("duplicate id"), "{err}");
        assert_eq!(printable_name("..claim.x\n.json"), "claim.x_.json");
    }
}
