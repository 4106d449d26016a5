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
//! moves it to `rejected/` next to `<name>.error.txt`. Every move after the claim is
//! [`crate::task_file`]'s.

use std::io::{self, Read};

use crate::config::validate_name;
use crate::confined::{Dir, random_u64};
use crate::fsutil;
use crate::task::{self, MAX_TASK_BYTES, TaskFields};

/// The prefix of a file claimed but not yet accepted or rejected, in `running/`.
pub const CLAIM_PREFIX: &str = ".claim.";

/// Whether `name` (in `running/`) is the file of task `id` — named for it, or claimed
/// (`.claim.<hex>.<id>.json`) and not yet named for it: what a reader looking for a task
/// between the inbox and the ledger must count as taken in.
pub fn names_task(name: &str, id: &str) -> bool {
    let unclaimed = name
        .strip_prefix(CLAIM_PREFIX)
        .and_then(|rest| rest.split_once('.'))
        .map_or(name, |(_, file)| file);
    ["json", "md"].iter().any(|ext| {
        unclaimed
            .strip_suffix(ext)
            .and_then(|s| s.strip_suffix('.'))
            == Some(id)
    })
}

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
    // Only the daemon's user submits through the inbox (it is theirs, and not writable by
    // others: the start checks that); a file of another user's got in through a directory
    // opened since, and would run their prompt as this user.
    let me = nix::unistd::geteuid().as_raw();
    let owner = std::os::unix::fs::MetadataExt::uid(&meta);
    if owner != me {
        return Err(refused(format!(
            "the task file belongs to uid {owner}, not to the daemon's user (uid {me}); only the daemon's user submits through the inbox"
        )));
    }
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

/// Why a task's explicit `id` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdRefused {
    #[error("invalid `id` `{id}`: {cause}")]
    Invalid {
        id: String,
        cause: crate::config::BadName,
    },
    #[error("duplicate id: a task `{id}` already exists; choose another `id` or leave it out")]
    Duplicate { id: String },
}

/// Chooses the id of a task read from the file `name`: its explicit `id`, which must be free,
/// or one made from the file's stem, with `-2`, `-3` … added until it is free. `free(id,
/// explicit)` answers whether an id may be used (the engine knows the tasks, the ids reserved
/// by doors, and the ids given in the same batch).
pub fn choose_id(
    fields: &TaskFields,
    name: &str,
    free: impl Fn(&str, bool) -> bool,
) -> Result<String, IdRefused> {
    match &fields.id {
        Some(id) => {
            validate_name(id).map_err(|cause| IdRefused::Invalid {
                id: id.clone(),
                cause,
            })?;
            if free(id, true) {
                Ok(id.clone())
            } else {
                Err(IdRefused::Duplicate { id: id.clone() })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace::Workspace;

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
    fn a_claimed_file_still_names_its_task() {
        let cases = [
            ("q3.json", "q3", true),
            ("q3.md", "q3", true),
            (".claim.0123456789abcdef.q3.json", "q3", true),
            (".claim.0123456789abcdef.q3.json", "q", false),
            ("q3.json.tmp", "q3", false),
            (".claim.0123456789abcdef.other.json", "q3", false),
            ("a.b.json", "a.b", true),
        ];
        for (name, id, want) in cases {
            assert_eq!(names_task(name, id), want, "`{name}` of `{id}`");
        }
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
        let mut cases = vec![
            ("l.json", "symbolic link"),
            ("f.json", "is a FIFO"),
            ("b.json", "the limit is"),
            ("h.json", "hard links"),
        ];
        // Another user's file (only root can make one here).
        std::fs::write(ws.inbox().join("o.json"), r#"{"prompt":"theirs"}"#).unwrap();
        if nix::unistd::chown(
            &ws.inbox().join("o.json"),
            Some(nix::unistd::Uid::from_raw(65534)),
            None,
        )
        .is_ok()
        {
            cases.push(("o.json", "belongs to uid 65534, not to the daemon's user"));
        }
        for (name, want) in cases {
            let c = claim(&inbox, &running, name).unwrap().unwrap();
            match read(&running, &c, name) {
                Err(Unreadable::Refused(m)) => assert!(m.contains(want), "{name}: {m}"),
                other => panic!("{name}: want a refusal containing {want:?}, got {other:?}"),
            }
        }
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
        let err = choose_id(&f(r#"{"prompt":"p","id":"b"}"#), "q.json", free)
            .unwrap_err()
            .to_string();
        assert!(err.contains("duplicate id"), "{err}");
    }
}
