//! Keeping the ledger bounded: snapshot + rotation, and the replay that reads them back.
//!
//! The ledger writer rotates `ledger.jsonl` into a segment `ledger.<last-seq>.jsonl` once it
//! holds `ledger_segment_events` events. [`compact`] (on a background thread) then folds the
//! previous snapshot and the rotated segments into a new `ledger.snapshot.json` — a serialised
//! [`TaskBook`] plus the sequence number it covers — and deletes all but the newest
//! `ledger_keep_segments` segments. [`load`] rebuilds state from the snapshot, the segments
//! newer than it, and the current file, streaming, so a restart reads a bounded amount.
//!
//! Every step is crash-safe: segments are renamed whole, the snapshot is replaced atomically,
//! and a segment is deleted only after a snapshot that covers it is on disk. Whatever instant a
//! crash hits, [`load`] finds files that replay to the same state.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::ledger;
use crate::state::TaskBook;
use crate::workspace::Workspace;

/// Written next to the ledger.
pub const SNAPSHOT: &str = "ledger.snapshot.json";

#[derive(Serialize, Deserialize)]
struct Snapshot {
    format: u32,
    /// The last sequence number folded into `book`.
    seq: u64,
    book: TaskBook,
}

/// State rebuilt from the files.
pub struct Loaded {
    pub book: TaskBook,
    /// Records in the current `ledger.jsonl`.
    pub current_events: u64,
    /// Unparsable lines in the middle of the current file (kept, reported).
    pub skipped: usize,
    /// Where a torn tail of the current file was kept, when `repair` was asked for.
    pub torn: Option<PathBuf>,
}

fn snapshot_path(ws: &Workspace) -> PathBuf {
    ws.context().join(SNAPSHOT)
}

fn read_snapshot(ws: &Workspace) -> std::io::Result<(u64, TaskBook)> {
    match std::fs::read(snapshot_path(ws)) {
        Ok(bytes) => {
            let snap: Snapshot = serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("`{}` cannot be read: {e}", snapshot_path(ws).display()),
                )
            })?;
            Ok((snap.seq, snap.book))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((0, TaskBook::default())),
        Err(e) => Err(e),
    }
}

/// Rebuilds the task state. `keep_finished` is the daemon's archiving limit (`None` keeps
/// everything the files still hold). With `repair`, a torn tail of the current file is cut off
/// and kept aside (only the daemon does that; readers never write).
pub fn load(ws: &Workspace, keep_finished: Option<usize>, repair: bool) -> std::io::Result<Loaded> {
    let (covered, mut book) = read_snapshot(ws)?;
    book.set_limit(keep_finished);
    for (last, segment) in ledger::segments(ws.context())? {
        if last > covered {
            ledger::read_each(&segment, |r| {
                if r.seq > covered {
                    book.apply(&r);
                }
            })?;
        }
    }
    let info = ledger::read_each(&ws.ledger(), |r| {
        if r.seq > covered {
            book.apply(&r);
        }
    })?;
    let torn = if repair {
        ledger::repair_at(&ws.ledger(), info.valid_len, info.file_len)?
    } else {
        None
    };
    book.last_seq = book.last_seq.max(covered);
    Ok(Loaded {
        book,
        current_events: info.count,
        skipped: info.skipped,
        torn,
    })
}

/// Folds the rotated segments into a new snapshot and deletes all but the newest
/// `keep_segments` of them. `keep_finished` is the archiving limit the snapshot keeps.
/// Returns the sequence number the snapshot now covers (0 when there was nothing to do).
pub fn compact(ws: &Workspace, keep_finished: usize, keep_segments: usize) -> std::io::Result<u64> {
    let (covered, mut book) = read_snapshot(ws)?;
    book.set_limit(Some(keep_finished));
    let segments = ledger::segments(ws.context())?;
    let mut upto = covered;
    for (last, segment) in &segments {
        if *last > covered {
            ledger::read_each(segment, |r| {
                if r.seq > covered {
                    book.apply(&r);
                }
            })?;
            upto = upto.max(*last);
        }
    }
    if upto > covered {
        let snap = Snapshot {
            format: 1,
            seq: upto,
            book,
        };
        fsutil::write_atomic(
            &snapshot_path(ws),
            &serde_json::to_vec(&snap).map_err(std::io::Error::other)?,
        )?;
    }
    // Only segments the snapshot covers may go; the newest few stay as readable history.
    let deletable = segments.len().saturating_sub(keep_segments);
    for (last, segment) in segments.iter().take(deletable) {
        if *last <= upto.max(covered) {
            std::fs::remove_file(segment)?;
        }
    }
    Ok(if upto > covered { upto } else { 0 })
}

/// Runs [`compact`] on a background thread, one at a time: a rotation while one runs makes it
/// go round once more.
#[derive(Clone)]
pub struct Compactor {
    ws: Workspace,
    keep_finished: usize,
    keep_segments: usize,
    /// Set while a compaction thread runs; `again` asks it for one more round.
    running: Arc<AtomicBool>,
    again: Arc<AtomicBool>,
}

impl Compactor {
    pub fn new(ws: Workspace, keep_finished: usize, keep_segments: usize) -> Self {
        Compactor {
            ws,
            keep_finished,
            keep_segments,
            running: Arc::new(AtomicBool::new(false)),
            again: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Starts a compaction unless one is running (then that one repeats).
    pub fn trigger(&self) {
        self.again.store(true, Ordering::SeqCst);
        if self.running.swap(true, Ordering::SeqCst) {
            return;
        }
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("ledger-compactor".into())
            .spawn(move || {
                while me.again.swap(false, Ordering::SeqCst) {
                    match compact(&me.ws, me.keep_finished, me.keep_segments) {
                        Ok(0) => {}
                        Ok(seq) => tracing::info!(
                            "ledger compacted: the snapshot covers events up to {seq}"
                        ),
                        Err(e) => {
                            tracing::error!("ledger compaction failed (the segments are kept): {e}")
                        }
                    }
                }
                me.running.store(false, Ordering::SeqCst);
                // A trigger that raced with the end of the loop.
                if me.again.load(Ordering::SeqCst) {
                    me.trigger();
                }
            });
        if spawned.is_err() {
            self.running.store(false, Ordering::SeqCst);
        }
    }
}
