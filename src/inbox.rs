//! The inbox stage: watches `.context/inbox/` (non-recursively) and lists what is there.
//!
//! Maildir rules: writers create files elsewhere (`inbox/.tmp/`, or a dot-file / `*.tmp` name)
//! and rename them in, so anything we list is complete. A watcher event only marks the inbox
//! dirty; a scan decides what exists. The engine scans once after the watcher is set up, after
//! each batch of events (the [`Notify`] permit coalesces them), when notify asks for a rescan
//! (queue overflow), and on a slow safety-net timer.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use notify::{RecursiveMode, Watcher};
use tokio::sync::Notify;

/// A file in the inbox that looks like a task.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The name as the file system has it.
    pub raw: std::ffi::OsString,
    /// The name as text (lossy when it is not UTF-8; such files are rejected).
    pub name: String,
    pub modified: SystemTime,
}

/// Whether a directory entry is taken from the inbox: anything but a dot-file or `*.tmp` (how
/// writers hide a file they are still writing). A file that is not `*.json` or `*.md` is taken
/// too — and rejected with a reason, instead of sitting in the inbox unexplained.
pub fn is_candidate(name: &str) -> bool {
    !name.starts_with('.') && !name.ends_with(".tmp")
}

/// Lists the candidates in `dir`, oldest first (then by name).
pub fn scan(dir: &Path) -> std::io::Result<Vec<Candidate>> {
    let mut backlog = Backlog::scan(dir)?;
    Ok(backlog.take(usize::MAX))
}

/// The inbox as one scan found it, oldest first, taken a batch at a time. A drop of 100,000
/// files is held as one buffer of their names and a 24-byte entry per file (about 3.5 MB),
/// not as two strings and a 104-byte value per file (about 35 MB), for as long as it takes
/// the engine to take them in.
#[derive(Default)]
pub struct Backlog {
    /// Every name's bytes, one after the other.
    names: Vec<u8>,
    /// Sorted oldest first (then by name); `next` is the first not taken yet.
    entries: Vec<Entry>,
    next: usize,
}

struct Entry {
    modified: SystemTime,
    /// Where its name is in `names`.
    start: u32,
    len: u32,
}

impl Backlog {
    /// Reads `dir`'s candidates. Names beyond 4 GiB of them in one scan (some 16 million
    /// files) are left for the next scan.
    pub fn scan(dir: &Path) -> std::io::Result<Backlog> {
        use std::os::unix::ffi::OsStrExt;
        let mut backlog = Backlog::default();
        for entry in std::fs::read_dir(dir)? {
            let Ok(entry) = entry else { continue };
            let raw = entry.file_name();
            let name = raw.to_string_lossy();
            // A directory is left alone unless it is named like a task (then it is rejected
            // as one): `inbox/drafts/` is the user's business.
            let task_named = name.ends_with(".json") || name.ends_with(".md");
            if !is_candidate(&name) || (!task_named && entry.file_type().is_ok_and(|t| t.is_dir()))
            {
                continue;
            }
            let bytes = raw.as_bytes();
            let (Ok(start), Ok(len)) = (
                u32::try_from(backlog.names.len()),
                u32::try_from(bytes.len()),
            ) else {
                break;
            };
            if start.checked_add(len).is_none() {
                break;
            }
            // DirEntry::metadata does not follow symlinks: never follow a link just to sort it.
            let modified = entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            backlog.names.extend_from_slice(bytes);
            backlog.entries.push(Entry {
                modified,
                start,
                len,
            });
        }
        let names = &backlog.names;
        backlog.entries.sort_by(|a, b| {
            a.modified
                .cmp(&b.modified)
                .then_with(|| name_of(names, a).cmp(name_of(names, b)))
        });
        backlog.names.shrink_to_fit();
        backlog.entries.shrink_to_fit();
        Ok(backlog)
    }

    /// How many are not taken yet.
    pub fn len(&self) -> usize {
        self.entries.len() - self.next
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next `n` (or fewer), oldest first. Once all are taken the buffers are let go.
    pub fn take(&mut self, n: usize) -> Vec<Candidate> {
        use std::os::unix::ffi::OsStrExt;
        let end = self.next.saturating_add(n).min(self.entries.len());
        let taken = self.entries[self.next..end]
            .iter()
            .map(|e| {
                let raw = std::ffi::OsStr::from_bytes(name_of(&self.names, e)).to_os_string();
                Candidate {
                    name: raw.to_string_lossy().into_owned(),
                    raw,
                    modified: e.modified,
                }
            })
            .collect();
        self.next = end;
        if self.is_empty() {
            *self = Backlog::default();
        }
        taken
    }
}

fn name_of<'a>(names: &'a [u8], e: &Entry) -> &'a [u8] {
    &names[e.start as usize..(e.start + e.len) as usize]
}

/// Keeps the watcher alive; dropping it stops watching.
pub struct InboxWatcher {
    watcher: notify::RecommendedWatcher,
    inbox: std::path::PathBuf,
    /// Stored a permit when a directory appeared at the inbox's name (the inbox removed and made
    /// again, or another moved in its place): the old watch went with the old directory, so the
    /// daemon calls [`InboxWatcher::rewatch`]. The watcher's callback holds the other half.
    pub replaced: Arc<Notify>,
}

impl InboxWatcher {
    /// Watches the directory now at the inbox's name (after [`InboxWatcher::replaced`]).
    pub fn rewatch(&mut self) {
        // Not through a link (watching follows it): the scan that comes next moves a link aside
        // and makes the directory, which arrives here again.
        if !std::fs::symlink_metadata(&self.inbox).is_ok_and(|m| m.is_dir()) {
            return;
        }
        match self.watcher.watch(&self.inbox, RecursiveMode::NonRecursive) {
            Ok(()) => tracing::info!(
                "`{}` was replaced; watching the new directory",
                self.inbox.display()
            ),
            // It may be gone again already; the periodic rescan still looks.
            Err(e) => tracing::warn!(
                "cannot watch the replaced inbox `{}` ({e}); it is scanned every `inbox_rescan`",
                self.inbox.display()
            ),
        }
    }
}

/// Starts watching `dir`. Every event (and every watcher error, including "rescan needed")
/// stores a permit in `dirty`; the engine's scan consumes it.
pub fn watch(dir: &Path, dirty: Arc<Notify>) -> notify::Result<InboxWatcher> {
    watch_with_config(dir, dirty, None)
}

/// Like [`watch`], and also stores a permit in the second `Notify` whenever the file `config`
/// (a path in another directory, watched non-recursively) is created, changed or replaced. The
/// inbox's own parent is watched too, so that an inbox made again is noticed
/// ([`InboxWatcher::replaced`]).
pub fn watch_with_config(
    dir: &Path,
    dirty: Arc<Notify>,
    config: Option<(&Path, Arc<Notify>)>,
) -> notify::Result<InboxWatcher> {
    let inbox = dir.to_path_buf();
    let config_file = config.map(|(p, n)| (p.to_path_buf(), n));
    let cfg = config_file.clone();
    let replaced = Arc::new(Notify::new());
    let appeared = replaced.clone();
    let inbox_path = inbox.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let ev = match res {
            Ok(ev) => ev,
            Err(_) => {
                dirty.notify_one();
                return;
            }
        };
        if let Some((file, changed)) = &cfg
            && ev.paths.iter().any(|p| p == file)
            && !matches!(ev.kind, notify::EventKind::Access(_))
        {
            changed.notify_one();
        }
        // Where a rename's two paths are given, the second is where it arrives.
        let arrived = match ev.kind {
            notify::EventKind::Modify(notify::event::ModifyKind::Name(
                notify::event::RenameMode::Both,
            )) => ev.paths.last().is_some_and(|p| *p == inbox),
            _ => ev.paths.contains(&inbox),
        };
        if is_arrival(&ev.kind) && arrived {
            appeared.notify_one();
            dirty.notify_one();
            return;
        }
        let in_inbox =
            ev.paths.is_empty() || ev.paths.iter().any(|p| p.parent() == Some(inbox.as_path()));
        if ev.need_rescan() {
            tracing::debug!("inbox watcher asked for a rescan (event queue overflow)");
        } else if !in_inbox || !changes_the_listing(&ev.kind) {
            return;
        }
        // Changes, errors and rescan requests all mean the same thing: look again.
        dirty.notify_one();
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    let mut parents: Vec<&Path> = dir.parent().into_iter().collect();
    if let Some((file, _)) = &config_file
        && let Some(parent) = file.parent()
        && !parents.contains(&parent)
    {
        parents.push(parent);
    }
    for parent in parents {
        watcher.watch(parent, RecursiveMode::NonRecursive)?;
    }
    Ok(InboxWatcher {
        watcher,
        inbox: inbox_path,
        replaced,
    })
}

/// Whether an event puts something at its path: made there, or moved there.
fn is_arrival(kind: &notify::EventKind) -> bool {
    use notify::EventKind;
    use notify::event::{ModifyKind, RenameMode};
    matches!(
        kind,
        EventKind::Create(_)
            | EventKind::Modify(ModifyKind::Name(
                RenameMode::To | RenameMode::Both | RenameMode::Any
            ))
    )
}

/// Whether an event can add to what a scan finds. Access events cannot: our own scan opens the
/// directory, and waking on that would make every scan cause the next one. Nor can a file
/// leaving the inbox — most often our own claim renaming it into `running/` — so those do not
/// wake the daemon for a scan that would find nothing new.
fn changes_the_listing(kind: &notify::EventKind) -> bool {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
    match kind {
        // A file written in place and closed: it may have become complete.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) | EventKind::Remove(_) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidate_rules() {
        for (name, want) in [
            ("a.json", true),
            ("b.md", true),
            (".a.json", false),
            ("a.json.tmp", false),
            ("a.tmp", false),
            // Not tasks, but taken so that they are rejected with a reason.
            ("a.txt", true),
            ("a", true),
        ] {
            assert_eq!(is_candidate(name), want, "{name}");
        }
    }

    #[test]
    fn the_backlog_gives_the_inbox_oldest_first_a_batch_at_a_time() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let at = |secs| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        let odd = std::ffi::OsStr::from_bytes(b"odd-\xff.json");
        // (name, modified): the scan orders by time, then by name.
        for (name, secs) in [
            (std::ffi::OsStr::new("c.json"), 100),
            (std::ffi::OsStr::new("a.json"), 300),
            (std::ffi::OsStr::new("b.md"), 100),
            (odd, 200),
            (std::ffi::OsStr::new(".hidden.json"), 50),
            (std::ffi::OsStr::new("w.json.tmp"), 50),
        ] {
            let f = std::fs::File::create(dir.path().join(name)).expect("a file");
            f.set_modified(at(secs)).expect("its time set");
        }
        std::fs::create_dir(dir.path().join("drafts")).expect("a directory");
        let mut backlog = Backlog::scan(dir.path()).expect("the scan");
        assert_eq!(
            backlog.len(),
            4,
            "expected the four candidates, not the hidden, *.tmp or dir"
        );
        let first = backlog.take(3);
        let names: Vec<&std::ffi::OsStr> = first.iter().map(|c| c.raw.as_os_str()).collect();
        assert_eq!(
            names,
            [
                std::ffi::OsStr::new("b.md"),
                std::ffi::OsStr::new("c.json"),
                odd
            ]
        );
        assert_eq!(
            first[2].name, "odd-\u{fffd}.json",
            "expected the lossy text name"
        );
        assert_eq!(first[0].modified, at(100));
        assert_eq!(backlog.len(), 1);
        let rest = backlog.take(3);
        assert_eq!(rest.len(), 1, "expected only what is left");
        assert_eq!(rest[0].name, "a.json");
        assert!(backlog.is_empty() && backlog.take(1).is_empty());
        assert_eq!(
            (backlog.names.capacity(), backlog.entries.capacity()),
            (0, 0),
            "expected the buffers let go once all are taken"
        );
        assert_eq!(
            scan(dir.path()).expect("scan").len(),
            4,
            "expected `scan` to list all"
        );
    }

    #[test]
    fn reading_the_inbox_does_not_wake_the_scanner() {
        use notify::EventKind;
        use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
        assert!(!changes_the_listing(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!changes_the_listing(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(changes_the_listing(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(changes_the_listing(&EventKind::Create(CreateKind::File)));
        assert!(changes_the_listing(&EventKind::Modify(ModifyKind::Name(
            RenameMode::To
        ))));
        assert!(changes_the_listing(&EventKind::Modify(ModifyKind::Name(
            RenameMode::Both
        ))));
        // A file leaving the inbox (a claim moving it into running/) adds nothing to scan.
        assert!(!changes_the_listing(&EventKind::Modify(ModifyKind::Name(
            RenameMode::From
        ))));
        assert!(!changes_the_listing(&EventKind::Remove(
            notify::event::RemoveKind::File
        )));
    }

    /// The daemon-level check: an idle watcher plus scans must go quiet.
    #[test]
    fn a_scan_does_not_trigger_another_scan() {
        let dir = tempfile::tempdir().unwrap();
        let dirty = Arc::new(Notify::new());
        let _w = watch(dir.path(), dirty.clone()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            std::fs::write(dir.path().join("a.json"), "{}").unwrap();
            dirty.notified().await;
            // Scan repeatedly, as the engine would after each wake-up.
            for _ in 0..3 {
                scan(dir.path()).unwrap();
            }
            // Drain what the write itself caused, then expect silence after one more scan.
            while tokio::time::timeout(std::time::Duration::from_millis(200), dirty.notified())
                .await
                .is_ok()
            {}
            scan(dir.path()).unwrap();
            let woke =
                tokio::time::timeout(std::time::Duration::from_millis(300), dirty.notified()).await;
            assert!(woke.is_err(), "scanning the inbox woke the watcher");
        });
    }
}
