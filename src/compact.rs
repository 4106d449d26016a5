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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};

use crate::integrity::{Checker, Key, Refused, Seal};
use crate::ledger;
use crate::state::TaskBook;
use crate::workspace::Workspace;

/// Written next to the ledger.
pub const SNAPSHOT: &str = "ledger.snapshot.json";

/// The snapshot's shape, written first in it: a later version that changes the shape writes a
/// higher number, so this one can say why it cannot read it.
const SNAPSHOT_FORMAT: u32 = 1;

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
    /// Lines that parsed but were not believed (no valid seal, a copy), and the snapshot when
    /// it was refused: reported, kept in the files, left out of the state.
    pub refused: Vec<Refused>,
    /// How many lines were refused in all (`refused` keeps the first hundred).
    pub refused_count: usize,
    /// Nothing verified under the key although sealed lines exist: the workspace was copied
    /// or moved, or its key replaced. The lines were believed as written.
    pub another_key: bool,
    /// The snapshot was believed without this key's seal — an older version's, or a copied or
    /// moved workspace's: the daemon seals it again before it builds on it.
    pub reseal_snapshot: bool,
    /// The first record that carried this key's valid seal (see [`Key::sealed_from`]).
    pub first_sealed: Option<u64>,
    /// Rotated segments the snapshot does not cover yet (a compaction to finish or that waited).
    pub uncovered_segments: usize,
    /// Sequence numbers no believed line carries although later ones do (first, last): lines
    /// removed from the ledger — each line is sealed alone, so only the hole tells.
    pub missing: Vec<(u64, u64)>,
}

/// Finds the holes in sequence numbers seen in order after those a snapshot covers: each
/// `(first, last)` range skipped. Kept as it goes, so a long ledger costs no list of them.
pub struct Holes {
    next: u64,
    pub found: Vec<(u64, u64)>,
}

impl Holes {
    pub fn after(covered: u64) -> Self {
        Holes {
            next: covered + 1,
            found: Vec::new(),
        }
    }

    pub fn see(&mut self, seq: u64) {
        if seq > self.next && self.found.len() < 100 {
            self.found.push((self.next, seq - 1));
        }
        self.next = self.next.max(seq + 1);
    }
}

fn snapshot_path(ws: &Workspace) -> PathBuf {
    ws.context().join(SNAPSHOT)
}

/// The snapshot as read: what it covers, the state, and what its seal said.
struct ReadSnapshot {
    seq: u64,
    book: TaskBook,
    seal: Seal,
}

/// What to do about a snapshot that cannot be read. It is refused rather than set aside: it
/// holds every task finished before the last compaction, and starting without them silently
/// would lose them; the user decides.
fn way_out(path: &Path) -> String {
    format!(
        " — it holds the history compacted out of the ledger (the tasks finished before the last compaction); restore it from a backup, or move it aside (`mv {0} {0}.broken`) to start without that history",
        path.display()
    )
}

fn read_snapshot(ws: &Workspace, key: Option<&Key>) -> std::io::Result<ReadSnapshot> {
    let path = snapshot_path(ws);
    let file = match crate::fsutil::open_nofollow(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(ReadSnapshot {
                seq: 0,
                book: TaskBook::default(),
                seal: Seal::Valid,
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
            return Err(std::io::Error::new(
                e.kind(),
                format!("{e}{}", way_out(&path)),
            ));
        }
        Err(e) => return Err(e),
    };
    let unreadable = |e: serde_json::Error| {
        // A later version's snapshot says so first (`{"format":N,…`): that is the reason then.
        let newer = crate::fsutil::read_small_nofollow(&path, 64)
            .ok()
            .and_then(|head| {
                let head = String::from_utf8_lossy(&head).into_owned();
                let n = head.strip_prefix("{\"format\":")?;
                n.split([',', '}']).next()?.trim().parse::<u32>().ok()
            })
            .filter(|n| *n > SNAPSHOT_FORMAT);
        let why = match newer {
            Some(n) => format!(
                "it was written by a newer dirigent (snapshot format {n}; this one reads {SNAPSHOT_FORMAT}): run that version"
            ),
            None => e.to_string(),
        };
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "`{}` cannot be read: {why}{}",
                path.display(),
                way_out(&path)
            ),
        )
    };
    // Parsed as it is read (and its seal checked on the way): a book with many queued tasks
    // is tens of megabytes as text, and would otherwise be held whole next to the book.
    const BUFFER: usize = 256 * 1024;
    let (snap, seal) = match key {
        Some(k) => {
            let mut reader = std::io::BufReader::with_capacity(BUFFER, k.checking_reader(file));
            let snap: Snapshot = serde_json::from_reader(&mut reader).map_err(unreadable)?;
            // The seal covers every byte: read what the parser left (trailing space) too.
            std::io::copy(&mut reader, &mut std::io::sink())?;
            (snap, reader.into_inner().finish())
        }
        None => {
            let reader = std::io::BufReader::with_capacity(BUFFER, file);
            let snap: Snapshot = serde_json::from_reader(reader).map_err(unreadable)?;
            (snap, Seal::Valid)
        }
    };
    let mut book = snap.book;
    book.share_after_read();
    Ok(ReadSnapshot {
        seq: snap.seq,
        book,
        seal,
    })
}

/// Rebuilds the task state. `keep_finished` is the daemon's archiving limit (`None` keeps
/// everything the files still hold). With `repair`, a torn tail of the current file is cut off
/// and kept aside (only the daemon does that; readers never write). With a `key`, only lines
/// sealed by it are believed (see [`crate::integrity`]); `key_is_new` says it was only just
/// made, so an unsealed snapshot is an older version's, not a forgery.
pub fn load(
    ws: &Workspace,
    keep_finished: Option<usize>,
    repair: bool,
    key: Option<&Key>,
    key_is_new: bool,
) -> std::io::Result<Loaded> {
    let loaded = load_checked(ws, keep_finished, repair, key, key_is_new)?;
    if loaded.another_key {
        // Nothing verifies: not forgery of some lines but another key for all of them.
        let mut again = load_checked(ws, keep_finished, false, None, true)?;
        again.another_key = true;
        again.reseal_snapshot = true;
        again.torn = loaded.torn;
        return Ok(again);
    }
    Ok(loaded)
}

fn load_checked(
    ws: &Workspace,
    keep_finished: Option<usize>,
    repair: bool,
    key: Option<&Key>,
    key_is_new: bool,
) -> std::io::Result<Loaded> {
    let mut checker = Checker::new(key.cloned());
    let snap = read_snapshot(ws, key)?;
    let mut refused_snapshot = None;
    // A snapshot taken as written when the key was made (a moved workspace's) was sealed
    // again then: from the second start on, every snapshot carries the key's seal.
    let (covered, mut book) = match snap.seal {
        Seal::Bad => {
            refused_snapshot =
                Some("its seal does not match: it was altered, or not written by dirigent");
            (0, TaskBook::default())
        }
        Seal::Unsigned if !key_is_new => {
            refused_snapshot = Some("it carries no seal, so dirigent did not write it");
            (0, TaskBook::default())
        }
        _ => (snap.seq, snap.book),
    };
    checker.after_snapshot(covered, snap.seal == Seal::Valid && covered > 0);
    book.set_limit(keep_finished);
    let mut uncovered_segments = 0;
    // The sequence numbers believed, in order: a hole among them is a line taken away.
    let mut holes = Holes::after(covered);
    let mut damaged = 0;
    for (last, segment) in ledger::segments(ws.context())? {
        if last > covered {
            uncovered_segments += 1;
            let read = ledger::read_each_checked(&segment, &mut checker, |r| {
                if r.seq > covered {
                    holes.see(r.seq);
                    book.apply(&r);
                }
            })?;
            damaged += read.skipped;
        }
    }
    let info = ledger::read_each_checked(&ws.ledger(), &mut checker, |r| {
        if r.seq > covered {
            holes.see(r.seq);
            book.apply(&r);
        }
    })?;
    // A hole that a refused or unreadable line may explain is reported as that already.
    let explained: Vec<u64> = checker.refused.iter().filter_map(|r| r.seq).collect();
    let all_refused_known = checker.refused_total() == checker.refused.len();
    let missing: Vec<(u64, u64)> = if damaged + info.skipped == 0 && all_refused_known {
        holes
            .found
            .into_iter()
            .filter(|(a, b)| !explained.iter().any(|s| (a..=b).contains(&s)))
            .collect()
    } else {
        Vec::new()
    };
    let torn = if repair {
        ledger::repair_at(&ws.ledger(), info.valid_len, info.file_len)?
    } else {
        None
    };
    book.last_seq = book.last_seq.max(covered).max(checker.last_seq());
    let another_key = checker.looks_like_another_key();
    let mut refused = std::mem::take(&mut checker.refused);
    let mut refused_count = checker.refused_total();
    if let Some(why) = refused_snapshot {
        refused.insert(
            0,
            Refused {
                file: snapshot_path(ws),
                line: 1,
                seq: None,
                why,
            },
        );
        refused_count += 1;
    }
    Ok(Loaded {
        book,
        current_events: info.count,
        skipped: info.skipped,
        torn,
        refused,
        refused_count,
        another_key,
        reseal_snapshot: key.is_some() && covered > 0 && snap.seal != Seal::Valid,
        first_sealed: checker.first_sealed(),
        uncovered_segments,
        missing,
    })
}

/// Folds the rotated segments into a new snapshot and deletes all but the newest
/// `keep_segments` of them. `keep_finished` is the archiving limit the snapshot keeps.
/// Returns the sequence number the snapshot now covers (0 when there was nothing to do).
pub fn compact(
    ws: &Workspace,
    keep_finished: usize,
    keep_segments: usize,
    key: Option<&Key>,
) -> std::io::Result<u64> {
    let snap = read_snapshot(ws, key)?;
    // The daemon checked the snapshot when it started (and sealed an older one again); one
    // that fails now was replaced since, and is not built upon.
    if snap.seal == Seal::Bad || (snap.seal == Seal::Unsigned && key.is_some() && snap.seq > 0) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "`{}` does not carry this workspace's seal; it was replaced while the daemon ran",
                snapshot_path(ws).display()
            ),
        ));
    }
    let (covered, mut book) = (snap.seq, snap.book);
    let mut checker = Checker::new(key.cloned());
    checker.after_snapshot(covered, covered > 0);
    book.set_limit(Some(keep_finished));
    let segments = ledger::segments(ws.context())?;
    let mut upto = covered;
    for (last, segment) in &segments {
        if *last > covered {
            ledger::read_each_checked(segment, &mut checker, |r| {
                if r.seq > covered {
                    book.apply(&r);
                }
            })?;
            upto = upto.max(*last);
        }
    }
    if upto > covered {
        write_snapshot(ws, upto, &book, key)?;
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

/// Writes `book`, covering records up to `seq`, as the snapshot (sealed with `key`).
pub fn write_snapshot(
    ws: &Workspace,
    seq: u64,
    book: &TaskBook,
    key: Option<&Key>,
) -> std::io::Result<()> {
    #[derive(Serialize)]
    struct SnapshotRef<'a> {
        format: u32,
        seq: u64,
        book: &'a TaskBook,
    }
    let snapshot = SnapshotRef {
        format: SNAPSHOT_FORMAT,
        seq,
        book,
    };
    // Streamed into the file (and sealed on the way): a book with many queued tasks would
    // otherwise be held once more, whole, as text.
    ws.open_context()?
        .write_atomic_with(SNAPSHOT, 0o600, |file| {
            let out = std::io::BufWriter::with_capacity(256 * 1024, file);
            match key {
                Some(k) => {
                    let mut sealing = k.sealing_writer(out);
                    serde_json::to_writer(&mut sealing, &snapshot)
                        .map_err(std::io::Error::other)?;
                    sealing.finish()?;
                }
                None => {
                    let mut out = out;
                    serde_json::to_writer(&mut out, &snapshot).map_err(std::io::Error::other)?;
                    std::io::Write::flush(&mut out)?;
                }
            }
            Ok(())
        })
}

/// Seals a snapshot believed without this key's seal (an older version's, a moved
/// workspace's), before anything builds on it.
pub fn reseal_snapshot(ws: &Workspace, key: &Key) -> std::io::Result<()> {
    let snap = read_snapshot(ws, None)?;
    if snap.seq == 0 {
        return Ok(());
    }
    write_snapshot(ws, snap.seq, &snap.book, Some(key))
}

/// Runs [`compact`] on a background thread, one at a time: a rotation while one runs makes it
/// go round once more.
#[derive(Clone)]
pub struct Compactor {
    ws: Workspace,
    /// Seals the snapshots it writes, and checks what it folds in.
    key: Option<Key>,
    keep_finished: usize,
    keep_segments: usize,
    /// Set while a compaction thread runs; `again` asks it for one more round.
    running: Arc<AtomicBool>,
    again: Arc<AtomicBool>,
    /// The engine's count of live tasks (it stores it as it goes), and the rotations whose
    /// compaction waits for that count to fall (see [`Compactor::rotated`]).
    live_tasks: Arc<AtomicUsize>,
    deferred: Arc<AtomicUsize>,
}

/// While more tasks than this are live, a rotation's compaction waits: the compaction builds
/// a second book of every live task next to the daemon's own, which doubled a big drop's
/// memory. It catches up once the queue drains.
pub const DEFER_WHILE_LIVE_ABOVE: usize = 10_000;

/// However big the queue, no more than this many segments wait for a compaction: it bounds
/// what a restart in the middle of a burst replays (and the disk the segments take).
pub const MAX_DEFERRED_SEGMENTS: usize = 8;

/// Whether a rotation's compaction waits, given the live tasks and the rotations already
/// waiting (this one included).
pub fn defers(live_tasks: usize, waiting_rotations: usize) -> bool {
    live_tasks > DEFER_WHILE_LIVE_ABOVE && waiting_rotations < MAX_DEFERRED_SEGMENTS
}

impl Compactor {
    pub fn new(
        ws: Workspace,
        keep_finished: usize,
        keep_segments: usize,
        key: Option<Key>,
    ) -> Self {
        Compactor {
            ws,
            key,
            keep_finished,
            keep_segments,
            running: Arc::new(AtomicBool::new(false)),
            again: Arc::new(AtomicBool::new(false)),
            live_tasks: Arc::new(AtomicUsize::new(0)),
            deferred: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The ledger rotated: compacts now, or — while a big queue is live — once it drains
    /// ([`Compactor::catch_up`]) or enough segments wait ([`defers`]).
    pub fn rotated(&self) {
        let waiting = self.deferred.fetch_add(1, Ordering::SeqCst) + 1;
        if defers(self.live_tasks.load(Ordering::SeqCst), waiting) {
            tracing::debug!(
                "{waiting} ledger segment(s) wait for compaction until the queue drains"
            );
            return;
        }
        self.deferred.store(0, Ordering::SeqCst);
        self.trigger();
    }

    /// At the daemon's start, `segments` rotated segments the snapshot does not cover are
    /// there (a crash, or compactions that waited): compacts them now, or once the
    /// `unfinished` tasks the daemon takes up (counted only then) drain if they are many (the same rule as
    /// [`Compactor::rotated`]). Covered segments beyond `ledger_keep_segments` (a crash between
    /// a snapshot and its deletions) go at the next compaction.
    pub fn at_start(&self, segments: usize, unfinished: impl FnOnce() -> usize) {
        if segments == 0 {
            return;
        }
        let unfinished = unfinished();
        if defers(unfinished, segments) {
            tracing::debug!(
                "{segments} ledger segment(s) wait for compaction until the queue of {unfinished} drains"
            );
            self.deferred.store(segments, Ordering::SeqCst);
            return;
        }
        self.trigger();
    }

    /// Reads the count of live tasks from `count` (the engine keeps it up to date).
    pub fn with_live_tasks(mut self, count: Arc<AtomicUsize>) -> Self {
        self.live_tasks = count;
        self
    }

    /// Runs the compactions that waited for the queue to drain, if any.
    pub fn catch_up(&self) {
        if self.deferred.swap(0, Ordering::SeqCst) > 0 {
            self.trigger();
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
                    match compact(&me.ws, me.keep_finished, me.keep_segments, me.key.as_ref()) {
                        Ok(0) => {}
                        Ok(seq) => tracing::info!(
                            "ledger compacted: the snapshot covers events up to {seq}"
                        ),
                        Err(e) => {
                            tracing::error!("ledger compaction failed (the segments are kept): {e}")
                        }
                    }
                }
                // The book it built was freed into this thread's heap: given back, or the
                // daemon keeps a second book's worth of memory it no longer uses.
                #[cfg(all(target_os = "linux", target_env = "gnu"))]
                // SAFETY: `malloc_trim` only releases free memory of glibc's heaps; it takes
                // a lock of its own and is safe to call from any thread at any time.
                unsafe {
                    nix::libc::malloc_trim(0);
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

#[cfg(test)]
mod tests {
    /// Holes among the sequence numbers read after a snapshot's: each range skipped, once.
    #[test]
    fn a_hole_in_the_sequence_is_found() {
        // (what the snapshot covers, the numbers read, the holes expected)
        type Case<'a> = (u64, &'a [u64], &'a [(u64, u64)]);
        let cases: &[Case] = &[
            (0, &[1, 2, 3], &[]),
            (0, &[1, 2, 5, 6], &[(3, 4)]),
            (10, &[11, 13, 14, 20], &[(12, 12), (15, 19)]),
            // Lines below the snapshot's are not holes; a repeat is not a hole either.
            (10, &[12], &[(11, 11)]),
            (0, &[1, 1, 2], &[]),
            (0, &[], &[]),
        ];
        for (covered, seqs, want) in cases {
            let mut holes = Holes::after(*covered);
            for s in *seqs {
                holes.see(*s);
            }
            assert_eq!(&holes.found, want, "after {covered}: {seqs:?}");
        }
    }

    use super::*;

    #[test]
    fn a_rotation_compacts_at_once_unless_a_big_queue_is_live_and_few_segments_wait() {
        // (live tasks, rotations waiting including this one) → waits?
        for (live, waiting, want) in [
            (0, 1, false),
            (DEFER_WHILE_LIVE_ABOVE, 1, false),
            (DEFER_WHILE_LIVE_ABOVE + 1, 1, true),
            (100_000, MAX_DEFERRED_SEGMENTS - 1, true),
            (100_000, MAX_DEFERRED_SEGMENTS, false),
            (100_000, MAX_DEFERRED_SEGMENTS + 5, false),
        ] {
            assert_eq!(
                defers(live, waiting),
                want,
                "expected defers({live}, {waiting}) to be {want}"
            );
        }
    }
    #[test]
    fn segments_found_at_start_wait_while_the_queue_taken_up_is_big() {
        let root = tempfile::tempdir().expect("a temporary directory");
        let ws = Workspace::new(root.path()).expect("a workspace");
        ws.ensure().expect("its directories");
        // (segments, unfinished tasks) → segments left waiting for the queue to drain (the
        // others are compacted at once: `trigger`, as for any rotation).
        for (segments, unfinished, waiting) in [
            (0, 0, 0),
            (0, 100_000, 0),
            (3, 100_000, 3),
            (MAX_DEFERRED_SEGMENTS, 100_000, 0),
            (3, 5, 0),
        ] {
            let compactor = Compactor::new(ws.clone(), 10, 0, None);
            compactor.at_start(segments, || unfinished);
            assert_eq!(
                compactor.deferred.load(Ordering::SeqCst),
                waiting,
                "at_start({segments}, {unfinished}): expected {waiting} segment(s) left waiting"
            );
        }
    }
}
