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

/// Whether a directory entry is a task candidate: `*.json` or `*.md`, not a dot-file, not `*.tmp`.
pub fn is_candidate(name: &str) -> bool {
    !name.starts_with('.')
        && !name.ends_with(".tmp")
        && (name.ends_with(".json") || name.ends_with(".md"))
}

/// Lists the inbox, oldest first (then by name), so arrival order is stable.
pub fn scan(dir: &Path) -> std::io::Result<Vec<Candidate>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        let raw = entry.file_name();
        let name = raw.to_string_lossy().into_owned();
        if !is_candidate(&name) {
            continue;
        }
        // DirEntry::metadata does not follow symlinks: never follow a link just to sort it.
        let modified = entry
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        out.push(Candidate {
            raw,
            name,
            modified,
        });
    }
    out.sort_by(|a, b| {
        a.modified
            .cmp(&b.modified)
            .then_with(|| a.name.cmp(&b.name))
    });
    Ok(out)
}

/// Keeps the watcher alive; dropping it stops watching.
pub struct InboxWatcher {
    _watcher: notify::RecommendedWatcher,
}

/// Starts watching `dir`. Every event (and every watcher error, including "rescan needed")
/// stores a permit in `dirty`; the engine's scan consumes it.
pub fn watch(dir: &Path, dirty: Arc<Notify>) -> notify::Result<InboxWatcher> {
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = &res
            && ev.need_rescan()
        {
            tracing::debug!("inbox watcher asked for a rescan (event queue overflow)");
        }
        // Events, errors and rescan requests all mean the same thing: look again.
        dirty.notify_one();
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(InboxWatcher { _watcher: watcher })
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
            ("a.txt", false),
            ("a", false),
        ] {
            assert_eq!(is_candidate(name), want, "{name}");
        }
    }
}
