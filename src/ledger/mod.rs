//! The ledger: `.context/ledger.jsonl`, an append-only log of every state change, one JSON object
//! per line. It is the source of truth: `progress.md`, `dirigent status` and the daemon's state
//! after a restart are all derived from it.
//!
//! One owner writes it: a dedicated thread ([`Ledger::open`]) that takes batches of events from a
//! channel, writes them, `fsync`s once per batch (group commit) and only then acknowledges each
//! one. Every caller awaits that acknowledgement before acting on the event, so what the daemon
//! did is always on disk first. A torn or unparsable tail left by a crash is cut off when the
//! ledger is opened and kept aside in `ledger.torn-<unix-ms>` instead of being dropped.
//!
//! This file is the writer; [`event`] has what a line holds, [`read`] how the ledger and its
//! rotated segments are read back.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::integrity::Key;

mod event;
mod read;

pub use event::{Event, Record, WorkChecked};
#[cfg(test)]
use read::leading_seq;
pub(crate) use read::only_name;
use read::open_nofollow;
pub use read::{
    ReadInfo, Replay, read, read_after, read_after_within, read_each, read_each_checked, read_from,
    repair, repair_at, segment_path, segments,
};

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger `{path}`: {cause}")]
    Io { path: String, cause: std::io::Error },
    #[error("the ledger writer has stopped")]
    Closed,
    #[error("ledger write failed earlier ({0}); no further events are accepted")]
    Failed(String),
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

struct Append {
    events: Vec<Event>,
    /// Answered by the writer thread after the batch containing these events is fsynced.
    ack: oneshot::Sender<Result<Vec<Record>, LedgerError>>,
    /// Fired once the batch is written to the file, before the fsync: enough that a crash of
    /// the daemon (not of the machine) cannot lose it.
    written: Option<oneshot::Sender<()>>,
}

/// A record as the live broadcast carries it to every listener: one allocation for all of
/// them, and its JSON (without the seal) made once, on first use, for every event stream that
/// sends it — fifty dashboards cost one serialisation, not fifty.
#[derive(Debug)]
pub struct SharedRecord {
    record: Record,
    json: std::sync::OnceLock<Box<str>>,
    /// Held while the record waits to be sent (an event stream catching up bounds the bytes it
    /// has read and not yet sent with these); let go of with the record.
    _held: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// What the live broadcast sends.
pub type LiveRecord = Arc<SharedRecord>;

impl SharedRecord {
    pub fn new(record: Record) -> LiveRecord {
        Arc::new(SharedRecord {
            record,
            json: std::sync::OnceLock::new(),
            _held: None,
        })
    }

    /// A record whose JSON is made already, holding `held` for as long as it lives.
    pub fn holding(
        record: Record,
        json: Box<str>,
        held: tokio::sync::OwnedSemaphorePermit,
    ) -> LiveRecord {
        Arc::new(SharedRecord {
            record,
            json: std::sync::OnceLock::from(json),
            _held: Some(held),
        })
    }

    /// The record as JSON on one line (as in `ledger.jsonl`, without its `mac`).
    pub fn json(&self) -> &str {
        self.json.get_or_init(|| {
            serde_json::to_string(&self.record)
                .unwrap_or_default()
                .into()
        })
    }
}

impl std::ops::Deref for SharedRecord {
    type Target = Record;
    fn deref(&self) -> &Record {
        &self.record
    }
}

/// A handle to the ledger writer. Cheap to clone; the writer thread stops when every handle is
/// dropped, after writing what it was sent.
#[derive(Clone)]
pub struct Ledger {
    /// Receiver: the writer thread. Closed when all handles are dropped.
    tx: mpsc::UnboundedSender<Append>,
    /// The writer thread sends every record here once it is on disk (only while someone
    /// listens); receivers come from [`Ledger::live`] (the SSE stream, `wait`).
    events: broadcast::Sender<LiveRecord>,
    /// Sender: the writer thread. `Some(why)` while a write waits for a resource to come back
    /// (the disk is full, descriptors ran out): the ledger is paused, not failed.
    paused: watch::Receiver<Option<String>>,
    /// Set by the daemon when it stops: a paused writer gives up on the batch it holds instead
    /// of waiting for the resource (nothing is lost: that batch was never acknowledged).
    give_up: Arc<AtomicBool>,
    /// Set by the writer thread: the newest sequence number it has given a record.
    newest: Newest,
}

/// The newest sequence number the ledger has given a record (it may still be on its way to
/// the disk): no record with a higher one exists. An event stream asked to resume after a
/// higher one was handed a position from another ledger (one started afresh), and says so
/// instead of waiting for records that will never come.
#[derive(Clone, Debug, Default)]
pub struct Newest(Arc<std::sync::atomic::AtomicU64>);

impl Newest {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    fn set(&self, seq: u64) {
        self.0.store(seq, Ordering::Release);
    }
}

/// Records a live subscriber may fall behind by before it is told it lagged (it then reads the
/// missed ones back from the files).
const LIVE_BACKLOG: usize = 4096;

/// Joined by the daemon at the very end, so nothing is left unwritten.
pub struct WriterThread(std::thread::JoinHandle<()>);

impl WriterThread {
    pub fn join(self) {
        let _ = self.0.join();
    }
}

/// When the writer closes the current file and starts a new one.
pub struct Rotation {
    /// Events per segment; the current file is rotated once it holds this many.
    pub segment_events: u64,
    /// Events already in the current file.
    pub current_events: u64,
    /// Called (on the writer thread) after each rotation; it should start compaction.
    pub on_rotate: Box<dyn Fn() + Send>,
}

impl Ledger {
    /// Opens the ledger for appending, continuing after sequence number `last_seq`; lines are
    /// not sealed.
    pub fn open(path: &Path, last_seq: u64) -> Result<(Ledger, WriterThread), LedgerError> {
        Self::open_rotating(path, last_seq, None, None)
    }

    /// [`Ledger::open`], rotating the file into segments as `rotation` says, and sealing every
    /// line with `key` (see [`crate::integrity`]).
    pub fn open_rotating(
        path: &Path,
        last_seq: u64,
        rotation: Option<Rotation>,
        key: Option<Key>,
    ) -> Result<(Ledger, WriterThread), LedgerError> {
        let io_err = |cause| LedgerError::Io {
            path: path.display().to_string(),
            cause,
        };
        let file = open_nofollow(path, true).map_err(io_err)?;
        // Unbounded, and safely so: every appender awaits its own append's fsync before it
        // appends again, so what waits here is at most one batch per appender — the engine and
        // the few tasks it spawns per live attempt.
        let (tx, rx) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(LIVE_BACKLOG);
        let (paused_tx, paused) = watch::channel(None);
        let give_up = Arc::new(AtomicBool::new(false));
        let newest = Newest::default();
        newest.set(last_seq);
        let writer = Writer {
            dir_id: dir_id(path),
            newest: newest.clone(),
            good_len: file.metadata().map(|m| m.len()).unwrap_or(0),
            file,
            path: path.to_path_buf(),
            seq: last_seq,
            rotation,
            key,
            live: events.clone(),
            paused: paused_tx,
            give_up: give_up.clone(),
            failed: None,
        };
        let handle = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(io_err)?;
        Ok((
            Ledger {
                tx,
                events,
                paused,
                give_up,
                newest,
            },
            WriterThread(handle),
        ))
    }

    /// Every record appended from now on, in order, once it is on disk: subscribe to the
    /// returned sender. A receiver that falls more than a few thousand records behind gets
    /// `Lagged` and should read the gap back with [`read_after`]. (A sender, not a `Ledger`
    /// handle, so its holders do not keep the writer alive.)
    pub fn live(&self) -> broadcast::Sender<LiveRecord> {
        self.events.clone()
    }

    /// The newest sequence number given to a record, kept current by the writer.
    pub fn newest(&self) -> Newest {
        self.newest.clone()
    }

    /// Why the writer is waiting for a resource, while it is.
    pub fn paused(&self) -> Option<String> {
        self.paused.borrow().clone()
    }

    /// A receiver that sees the writer pause and resume (for `status`).
    pub fn pause_watch(&self) -> watch::Receiver<Option<String>> {
        self.paused.clone()
    }

    /// Set it to make a paused writer give up (the daemon is stopping): the batch it waits
    /// with fails, and so does every later one. A writer that is not paused is not affected.
    pub fn give_up_handle(&self) -> Arc<AtomicBool> {
        self.give_up.clone()
    }

    /// Appends one event; resolves once it is on disk.
    pub async fn append(&self, event: Event) -> Result<Record, LedgerError> {
        let mut v = self.append_all(vec![event]).await?;
        Ok(v.remove(0))
    }

    /// Appends several events in one batch; resolves once all of them are on disk.
    pub async fn append_all(&self, events: Vec<Event>) -> Result<Vec<Record>, LedgerError> {
        if events.is_empty() {
            return Ok(vec![]);
        }
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Append {
                events,
                ack,
                written: None,
            })
            .map_err(|_| LedgerError::Closed)?;
        done.await.map_err(|_| LedgerError::Closed)?
    }

    /// Appends one event; the first receiver fires once it is written to the file (a crash of
    /// the daemon can no longer lose it), the future resolves once it is fsynced. An attempt's
    /// agent is let run at the first, so the fsync overlaps its start.
    pub fn append_written(
        &self,
        event: Event,
    ) -> (
        oneshot::Receiver<()>,
        impl Future<Output = Result<Record, LedgerError>> + Send + 'static,
    ) {
        let (written, durable) = self.append_all_written(vec![event]);
        (written, async move { Ok(durable.await?.remove(0)) })
    }

    /// [`Ledger::append_written`] of several events, in one batch. An ended attempt's slot is
    /// freed at the first: what follows is written after its end, and the fsync overlaps the
    /// next start.
    pub fn append_all_written(
        &self,
        events: Vec<Event>,
    ) -> (
        oneshot::Receiver<()>,
        impl Future<Output = Result<Vec<Record>, LedgerError>> + Send + 'static,
    ) {
        let (ack, done) = oneshot::channel();
        let (written_tx, written) = oneshot::channel();
        let sent = self.tx.send(Append {
            events,
            ack,
            written: Some(written_tx),
        });
        let durable = async move {
            sent.map_err(|_| LedgerError::Closed)?;
            done.await.map_err(|_| LedgerError::Closed)?
        };
        (written, durable)
    }
}

/// The writer thread's state: the one owner of the ledger file.
struct Writer {
    file: File,
    path: PathBuf,
    /// The directory the ledger was opened in (device, inode): moved away with the ledger in
    /// it, the writer follows its file there instead of restoring it at the path.
    dir_id: Option<(u64, u64)>,
    /// The last sequence number written.
    seq: u64,
    /// Receivers: the doors' event streams (through [`Ledger::newest`]).
    newest: Newest,
    /// Where the last complete batch ends: a failed write is cut back to here.
    good_len: u64,
    rotation: Option<Rotation>,
    key: Option<Key>,
    live: broadcast::Sender<LiveRecord>,
    /// Receivers: the `Ledger` handles (`paused`, `status`).
    paused: watch::Sender<Option<String>>,
    give_up: Arc<AtomicBool>,
    /// Set after a write failed for a reason waiting cannot fix: everything is refused from
    /// then on rather than risk a hole in the sequence.
    failed: Option<String>,
}

/// How long a paused writer waits between tries: from the first to the last, doubling.
const PAUSE_FIRST: Duration = Duration::from_millis(100);
const PAUSE_MAX: Duration = Duration::from_secs(5);

impl Writer {
    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Append>) {
        let mut buf = Vec::with_capacity(64 * 1024);
        let mut line = Vec::with_capacity(1024);
        while let Some(first) = rx.blocking_recv() {
            // Group commit: take everything already queued, one write, one fsync.
            let mut batch = vec![first];
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
                if batch.len() >= 1024 {
                    break;
                }
            }
            if let Some(why) = &self.failed {
                for a in batch {
                    let _ = a.ack.send(Err(LedgerError::Failed(why.clone())));
                }
                continue;
            }
            buf.clear();
            let ts = now_ms();
            let start_seq = self.seq;
            let mut out: Vec<Vec<Record>> = Vec::with_capacity(batch.len());
            for a in &batch {
                let mut recs = Vec::with_capacity(a.events.len());
                for ev in &a.events {
                    self.seq += 1;
                    let rec = Record {
                        seq: self.seq,
                        ts,
                        event: ev.clone(),
                    };
                    line.clear();
                    serde_json::to_writer(&mut line, &rec).expect("events serialise");
                    match &self.key {
                        Some(key) => key.seal_into(&line, &mut buf),
                        None => buf.extend_from_slice(&line),
                    }
                    buf.push(b'\n');
                    recs.push(rec);
                }
                out.push(recs);
            }
            // Before the write: a reader may find these records in the file from now on.
            self.newest.set(self.seq);
            let result = self.write_durably(&buf, &mut batch);
            if buf.capacity() > 1 << 20 {
                // A burst should not pin its buffer for the daemon's lifetime.
                buf = Vec::with_capacity(64 * 1024);
            }
            match result {
                Ok(()) => {
                    if self.live.receiver_count() > 0 {
                        for rec in out.iter().flatten() {
                            let _ = self.live.send(SharedRecord::new(rec.clone()));
                        }
                    }
                    for (a, recs) in batch.into_iter().zip(out) {
                        let _ = a.ack.send(Ok(recs));
                    }
                    self.maybe_rotate(self.seq - start_seq);
                }
                Err(e) => {
                    // The partial batch was cut off. Refuse everything from now on rather than
                    // risk a hole in the sequence.
                    self.seq = start_seq;
                    self.newest.set(start_seq);
                    let why = format!("{}: {e}", self.path.display());
                    tracing::error!("ledger write failed: {why}; dirigent stops accepting work");
                    for a in batch {
                        let _ = a.ack.send(Err(LedgerError::Failed(why.clone())));
                    }
                    self.failed = Some(why);
                }
            }
        }
        let _ = self.file.sync_all();
    }

    /// Writes and fsyncs `buf`, telling the appends that asked once it is written (before the
    /// fsync). A failure for lack of a resource (disk space, quota,
    /// descriptors) is cut back and tried again, paused, until it succeeds or the daemon
    /// stops; any other failure is returned.
    fn write_durably(&mut self, buf: &[u8], batch: &mut [Append]) -> std::io::Result<()> {
        let mut wait = PAUSE_FIRST;
        loop {
            let result = self
                .still_in_place()
                .and_then(|()| self.start_on_a_line())
                .and_then(|()| self.file.write_all(buf))
                .and_then(|()| {
                    for a in batch.iter_mut() {
                        if let Some(w) = a.written.take() {
                            let _ = w.send(());
                        }
                    }
                    self.file.sync_data()
                });
            match result {
                Ok(()) => {
                    self.good_len += buf.len() as u64;
                    if self.paused.borrow().is_some() {
                        tracing::info!("the ledger can be written again; dirigent resumes");
                        self.paused.send_replace(None);
                    }
                    return Ok(());
                }
                Err(e) => {
                    // A partial write must not leave half a line behind.
                    let _ = self
                        .file
                        .set_len(self.good_len)
                        .and_then(|()| self.file.sync_data());
                    let Some(what) = crate::fsutil::exhausted(&e) else {
                        return Err(e);
                    };
                    if self.give_up.load(Ordering::SeqCst) {
                        return Err(e);
                    }
                    if self.paused.borrow().is_none() {
                        tracing::warn!(
                            "paused: the ledger `{}` cannot be written ({what}: {e}); dirigent claims and starts nothing until it can, and tries again",
                            self.path.display()
                        );
                        self.paused.send_replace(Some(format!("{what} ({e})")));
                    }
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(PAUSE_MAX);
                }
            }
        }
    }

    /// Makes sure the file at the ledger's path is the one this writer holds. The file is in the
    /// workspace, where an agent can move another over it (`mv`) or remove it: every later
    /// record would go to a file no one reads, and be lost at the next start. Then the writer's
    /// own file — every record of this segment — is put back in place (copied to a new file,
    /// renamed over the path), and what was there is kept aside, not believed. One `lstat` a
    /// batch.
    fn still_in_place(&mut self) -> std::io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let held = self.file.metadata()?;
        let placed = std::fs::symlink_metadata(&self.path);
        if placed
            .as_ref()
            .is_ok_and(|m| m.dev() == held.dev() && m.ino() == held.ino())
        {
            return Ok(());
        }
        // The whole directory moved (`.context/` replaced): the file went with it and holds
        // every record; the daemon notices and stops. Nothing is put where it was.
        if dir_id(&self.path) != self.dir_id {
            return Ok(());
        }
        let aside = put_back(&mut self.file, &self.path, self.good_len)?;
        tracing::error!(
            "`{}` was {} while the daemon ran (an agent?): its own file, with every record, is back in place{}",
            self.path.display(),
            if aside.is_some() {
                "replaced"
            } else {
                "removed"
            },
            match &aside {
                Some(a) => format!(
                    "; what was there is kept as `{}` and not believed",
                    a.display()
                ),
                None => String::new(),
            }
        );
        Ok(())
    }

    /// Makes the next record start a line of its own. The file is in the workspace, where an
    /// agent can append to it: bytes without a line end would have the next record spliced onto
    /// them — a line replay then cannot read, and the record lost. One `fstat` a batch.
    fn start_on_a_line(&mut self) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let len = self.file.metadata()?.len();
        if len == self.good_len {
            return Ok(());
        }
        tracing::warn!(
            "{} byte(s) dirigent did not write were added to `{}` (an agent?); they are left as they are and not believed",
            len.abs_diff(self.good_len),
            self.path.display()
        );
        let mut last = [0u8; 1];
        if len > 0 && self.file.read_at(&mut last, len - 1)? == 1 && last[0] != b'\n' {
            self.file.write_all(b"\n")?;
            self.good_len = len + 1;
        } else {
            self.good_len = len;
        }
        Ok(())
    }

    fn maybe_rotate(&mut self, written: u64) {
        let Some(r) = self.rotation.as_mut() else {
            return;
        };
        r.current_events += written;
        if r.current_events < r.segment_events {
            return;
        }
        // What is renamed into the segment must be this file, not one moved over it since.
        if let Err(e) = self.still_in_place() {
            tracing::error!("cannot rotate the ledger `{}`: {e}", self.path.display());
            return;
        }
        match rotate(&self.path, self.seq) {
            Ok(new) => {
                self.file = new;
                self.good_len = 0;
                if let Some(r) = self.rotation.as_mut() {
                    r.current_events = 0;
                    (r.on_rotate)();
                }
            }
            Err(e) => {
                // Keep writing to the same file; try again after the next batch.
                tracing::error!("cannot rotate the ledger `{}`: {e}", self.path.display());
            }
        }
    }
}

/// The directory `path` is in (device, inode).
fn dir_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty())?;
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

/// Puts `held` (the writer's file, no longer at `path`) back at `path`: its first `len` bytes
/// are copied to a new file under a name no one can guess, fsynced, and only then is whatever
/// is at `path` moved aside (returned) and the copy renamed into place, the directory fsynced.
/// `held` becomes the copy. A failure leaves `held` as it was, with every record, to try again.
fn put_back(held: &mut File, path: &Path, len: u64) -> std::io::Result<Option<PathBuf>> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let dir = path.parent().unwrap_or(Path::new("."));
    let temp = path.with_extension(format!(
        "jsonl.restoring-{}-{:016x}",
        now_ms(),
        crate::confined::random_u64()
    ));
    let copy = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(&temp)?;
    let copied = (|| {
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0u64;
        let mut out = &copy;
        while at < len {
            let want = usize::try_from((len - at).min(buf.len() as u64)).unwrap_or(buf.len());
            let n = held.read_at(&mut buf[..want], at)?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])?;
            at += n as u64;
        }
        copy.sync_all()?;
        let aside = match std::fs::symlink_metadata(path) {
            Ok(_) => {
                let aside = path.with_extension(format!("jsonl.replaced-{}", now_ms()));
                std::fs::rename(path, &aside)?;
                Some(aside)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        std::fs::rename(&temp, path)?;
        File::open(dir)?.sync_all()?;
        Ok(aside)
    })();
    match copied {
        Ok(aside) => {
            // The copy's own descriptor: nothing is opened by the path an agent could swap again.
            *held = copy;
            Ok(aside)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            Err(e)
        }
    }
}

/// Closes the current file as the segment ending at `last_seq` and opens a fresh one. Only
/// called after a batch is fully on disk, so a segment never ends in a torn line.
fn rotate(path: &Path, last_seq: u64) -> std::io::Result<File> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let segment = segment_path(dir, last_seq);
    std::fs::rename(path, &segment)?;
    let opened = open_nofollow(path, true).and_then(|file| {
        // Make both names durable before anything is written to the new file.
        File::open(dir)?.sync_all()?;
        Ok(file)
    });
    if opened.is_err() {
        // Half done (no descriptor, say): the file goes back to its name, so the writer's file
        // is where it belongs and no segment holds what the next one will.
        let _ = std::fs::remove_file(path);
        let _ = std::fs::rename(&segment, path);
    }
    opened
}

#[cfg(test)]
mod tests {
    #[test]
    fn read_after_pages_across_segments_and_the_live_file() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("ledger.jsonl");
        let line = |seq: u64| {
            let r = Record {
                seq,
                ts: seq,
                event: Event::DaemonStopped { pid: seq as u32 },
            };
            serde_json::to_string(&r).unwrap() + "\n"
        };
        let text = |range: std::ops::RangeInclusive<u64>| range.map(line).collect::<String>();
        std::fs::write(segment_path(dir.path(), 10), text(1..=10)).unwrap();
        std::fs::write(segment_path(dir.path(), 20), text(11..=20)).unwrap();
        std::fs::write(&live, text(21..=25)).unwrap();
        let seqs = |after, max| -> Vec<u64> {
            read_after(&live, after, max, None)
                .unwrap()
                .iter()
                .map(|r| r.seq)
                .collect()
        };
        assert_eq!(seqs(0, 3), [1, 2, 3]);
        assert_eq!(seqs(9, 3), [10, 11, 12]);
        assert_eq!(seqs(19, 100), [20, 21, 22, 23, 24, 25]);
        assert!(seqs(25, 10).is_empty());
        // A compacted-away first segment: the records simply start later.
        std::fs::remove_file(segment_path(dir.path(), 10)).unwrap();
        assert_eq!(seqs(0, 2), [11, 12]);
        assert_eq!(leading_seq(b"{\"seq\":42,\"ts\":1}"), Some(42));
        assert_eq!(leading_seq(b"{\"ts\":1}"), None);
        // Bounded in bytes too: a page stops once its lines take the budget, and holds at
        // least one record whatever its size.
        let one = line(11).len();
        let within = |after, bytes| -> Vec<u64> {
            read_after_within(&live, after, 100, bytes, None)
                .unwrap()
                .iter()
                .map(|r| r.seq)
                .collect()
        };
        assert_eq!(within(10, 3 * one), [11, 12, 13], "three lines' worth");
        assert_eq!(
            within(10, 3 * one - 1),
            [11, 12, 13],
            "the third starts within it"
        );
        assert_eq!(within(10, 1), [11], "at least one");
        assert_eq!(
            within(18, 10 * one),
            [19, 20, 21, 22, 23, 24, 25],
            "across files"
        );
    }

    use super::*;
    use crate::judge::{Class, StopCause};
    use crate::task::TaskSpec;

    /// Appends a `daemon_stopped` record (any record will do) and waits for it to be written.
    async fn stop(ledger: &Ledger, pid: u32) {
        ledger.append(Event::DaemonStopped { pid }).await.unwrap();
    }

    /// The sequence numbers a replay of `path` believes, in order.
    fn seqs_in(path: &Path) -> Vec<u64> {
        read(path).unwrap().records.iter().map(|r| r.seq).collect()
    }

    /// Bytes appended by someone else with no line end (an agent: `printf '{"x":' >> …`) do not
    /// swallow the next record: it starts a line of its own, and both records replay.
    #[tokio::test]
    async fn a_record_after_a_foreign_unfinished_line_starts_a_line_of_its_own() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        let (ledger, writer) = Ledger::open(&path, 0).unwrap();
        stop(&ledger, 1).await;
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"x\":")
            .unwrap();
        stop(&ledger, 2).await;
        drop(ledger);
        writer.join();
        let seqs = seqs_in(&path);
        assert_eq!(
            seqs,
            [1, 2],
            "expected both records replayed around the foreign bytes"
        );
    }

    /// A file moved over the ledger, or the ledger removed, while the writer runs: its own
    /// file is put back with every record, and the records after it land there too.
    #[tokio::test]
    async fn a_ledger_replaced_or_removed_under_the_writer_is_put_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        let (ledger, writer) = Ledger::open(&path, 0).unwrap();
        stop(&ledger, 1).await;
        // Replaced by a copy of itself (`cp` then `mv`), then removed.
        let copy = dir.path().join(".copy");
        std::fs::copy(&path, &copy).unwrap();
        std::fs::rename(&copy, &path).unwrap();
        stop(&ledger, 2).await;
        std::fs::remove_file(&path).unwrap();
        stop(&ledger, 3).await;
        drop(ledger);
        writer.join();
        let seqs = seqs_in(&path);
        assert_eq!(
            seqs,
            [1, 2, 3],
            "expected every record in the file in place"
        );
        let aside: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("ledger.jsonl.replaced-"))
            .collect();
        assert_eq!(
            aside.len(),
            1,
            "expected the file moved in kept aside: {aside:?}"
        );
    }

    /// The whole directory moved away (`.context/` replaced): the writer's file went with it
    /// and goes on taking the records; nothing is put at the old path.
    #[tokio::test]
    async fn a_ledger_whose_directory_moved_is_followed_not_put_back() {
        let top = tempfile::tempdir().unwrap();
        let ctx = top.path().join("ctx");
        std::fs::create_dir(&ctx).unwrap();
        let path = ctx.join("ledger.jsonl");
        let (ledger, writer) = Ledger::open(&path, 0).unwrap();
        stop(&ledger, 1).await;
        let moved = top.path().join("moved");
        std::fs::rename(&ctx, &moved).unwrap();
        std::fs::create_dir(&ctx).unwrap();
        stop(&ledger, 2).await;
        drop(ledger);
        writer.join();
        let seqs = seqs_in(&moved.join("ledger.jsonl"));
        assert_eq!(seqs, [1, 2], "expected every record where the file went");
        assert!(
            !path.exists(),
            "expected nothing put into the directory that took its place"
        );
    }

    #[tokio::test]
    async fn appends_are_numbered_durable_and_replayable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        let (ledger, writer) = Ledger::open(&path, 0).unwrap();
        let r1 = ledger
            .append(Event::DaemonStarted {
                pid: 1,
                version: "x".into(),
            })
            .await
            .unwrap();
        let rs = ledger
            .append_all(vec![
                Event::DaemonStopped { pid: 1 },
                Event::DaemonStopped { pid: 2 },
            ])
            .await
            .unwrap();
        assert_eq!((r1.seq, rs[0].seq, rs[1].seq), (1, 2, 3));
        // Durable before the ack: readable now, without the writer closing.
        assert_eq!(read(&path).unwrap().records.len(), 3);
        drop(ledger);
        writer.join();
        let replay = read(&path).unwrap();
        assert_eq!(replay.records[2], rs[1]);
        assert_eq!(replay.valid_len, replay.file_len);
    }

    #[test]
    fn torn_tail_is_cut_and_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        let good = serde_json::to_string(&Record {
            seq: 1,
            ts: 5,
            event: Event::DaemonStopped { pid: 1 },
        })
        .unwrap();
        std::fs::write(&path, format!("{good}\n{{\"seq\":2,\"ts\":")).unwrap();
        let replay = read(&path).unwrap();
        assert_eq!(replay.records.len(), 1);
        assert!(replay.file_len > replay.valid_len);
        let aside = repair(&path, &replay).unwrap().expect("tail saved");
        assert_eq!(
            std::fs::read_to_string(&aside).unwrap(),
            "{\"seq\":2,\"ts\":"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{good}\n"));
        // Garbage in the middle is skipped and counted, never treated as a tail.
        std::fs::write(&path, format!("{good}\nnot json\n{good}\n")).unwrap();
        let replay = read(&path).unwrap();
        assert_eq!((replay.records.len(), replay.skipped), (2, 1));
        assert_eq!(replay.valid_len, replay.file_len);
        // Garbage lines at the end are a tail.
        std::fs::write(&path, format!("{good}\nnot json\n")).unwrap();
        let replay = read(&path).unwrap();
        assert_eq!(
            (replay.records.len(), replay.valid_len as usize),
            (1, good.len() + 1)
        );
    }

    #[test]
    fn a_hole_punched_into_the_ledger_is_skipped_not_held() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        let line = |seq| {
            serde_json::to_string(&Record {
                seq,
                ts: 5,
                event: Event::DaemonStopped { pid: 1 },
            })
            .unwrap()
                + "\n"
        };
        // A record, then 256 MiB of zeros with no newline (a sparse hole: no disk taken), a
        // newline, and a record after it. The process may not grow by half of that: a
        // reader holding the "line" whole fails. (nextest runs each test in a process of its
        // own, so the limit binds this test alone.)
        let vm_kib: u64 = std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmSize:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap();
        let cap = vm_kib * 1024 + (128 << 20);
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_AS, cap, cap).unwrap();
        std::fs::write(&path, line(1)).unwrap();
        let f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.set_len(f.metadata().unwrap().len() + (256 << 20))
            .unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(format!("\n{}", line(2)).as_bytes()).unwrap();
        let replay = read(&path).unwrap();
        let seqs: Vec<u64> = replay.records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [1, 2], "the records on both sides of the hole");
        assert_eq!(replay.skipped, 1, "the hole is one damaged line");
        let (records, end) = read_from(&path, 0, None).unwrap();
        assert_eq!(records.len(), 2, "the follower reads past it too");
        assert_eq!(end, replay.file_len);
        // A hole at the end is a torn tail: cut, and at most one line's worth kept aside.
        std::fs::write(&path, line(1)).unwrap();
        let f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.set_len(f.metadata().unwrap().len() + (64 << 20)).unwrap();
        let replay = read(&path).unwrap();
        assert_eq!(replay.records.len(), 1);
        let aside = repair(&path, &replay).unwrap().expect("tail saved");
        assert_eq!(
            std::fs::metadata(&aside).unwrap().len(),
            read::MAX_LINE as u64,
            "expected the saved tail cut to one line's worth"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), line(1));
    }

    #[test]
    fn every_event_round_trips() {
        let fields = crate::task::parse_fields(
            "t.json",
            br#"{"id":"t","prompt":"p","agent":"a","timeout":"5m","after":["x"],"priority":2,"vars":{"k":"v"}}"#,
        )
        .unwrap();
        let spec = TaskSpec {
            id: "t".into(),
            title: "p".into(),
            prompt: "p".into(),
            chain: vec!["a".into()],
            chain_source: "agent".into(),
            fields,
        };
        let events = [
            Event::Received {
                task: "t".into(),
                file: "t.json".into(),
                spec: Box::new(spec),
            },
            Event::AttemptFinished {
                task: "t".into(),
                attempt: 1,
                agent: "a".into(),
                class: Class::RateLimit,
                reason: "r".into(),
                exit_code: None,
                signal: Some(9),
                stopped: Some(StopCause::Timeout),
                kill_signal: Some(9),
                leaked: true,
                stdout_bytes: 1,
                stderr_bytes: 2,
                duration_ms: 3,
                retry_in_ms: None,
                usage: None,
                work: None,
            },
            Event::Rejected {
                file: "x\ny.json".into(),
                reason: "r".into(),
                moved_to: "x_y.json".into(),
            },
            // Fleet events carry numbers of their own: none may be named like the record's
            // `seq` or `ts` (the JSON would hold the key twice).
            Event::Published {
                task: "t".into(),
                subject: "dirigent.tasks.a".into(),
                round: 1,
                stream_seq: 7,
                base: Some("0".repeat(40)),
            },
            Event::FleetTaken {
                task: "desk.t".into(),
                key: "desk.t=5".into(),
                edit: Some(crate::fleet::edits::EditHere {
                    repository: "/srv/git/app".into(),
                    base: "0".repeat(40),
                    cache: "/w/.context/fleet/repos/x.git".into(),
                    branch: "fleet/gpu/desk.t".into(),
                    inside: "pkg".into(),
                }),
            },
        ];
        for event in events {
            let rec = Record {
                seq: 1,
                ts: 2,
                event,
            };
            let line = serde_json::to_string(&rec).unwrap();
            let back: Record =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(back, rec);
            let keys: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&line).unwrap();
            for own in ["seq", "ts", "event"] {
                assert_eq!(
                    line.matches(&format!("\"{own}\":")).count(),
                    1,
                    "expected the record's `{own}` once in {line} (keys {:?})",
                    keys.keys().collect::<Vec<_>>()
                );
            }
        }
    }

    #[test]
    fn read_from_skips_incomplete_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        let good = serde_json::to_string(&Record {
            seq: 1,
            ts: 5,
            event: Event::DaemonStopped { pid: 1 },
        })
        .unwrap();
        std::fs::write(&path, format!("{good}\n{{\"seq\"")).unwrap();
        let (recs, off) = read_from(&path, 0, None).unwrap();
        assert_eq!(recs.len(), 1);
        assert_eq!(off as usize, good.len() + 1);
    }
}
