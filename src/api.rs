//! The doors' common core inside the daemon. The control socket, the HTTP API, the
//! OpenAI-compatible endpoint (and, through the socket, the MCP server) are thin adapters over
//! [`Api`]: each turns its protocol into a [`Request`] and the [`Response`] back into its own.
//! None of them touches the task lifecycle: requests that change or read state go to the engine
//! (its one owner), and the two that take time — waiting for a task, streaming events — are
//! built here from the engine's answers and the ledger's live records.

use std::time::Duration;

use serde_json::{Value, json};
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::ledger::{self, Event, Record};
use crate::protocol::{ControlRequest, Failure, Request, Response};
use crate::workspace::Workspace;

/// The largest result `result` returns inline.
const MAX_RESULT_BYTES: u64 = 64 * 1024 * 1024;

/// Door requests waiting for the engine at most; a door sending more waits for room. Every
/// door bounds its own connections too, so this is the backstop, not the everyday limit.
pub const DOOR_REQUESTS: usize = 256;

/// How long a live event stream gathers records after the first before it passes them on.
const LIVE_GATHER: Duration = Duration::from_millis(50);

/// Records read back from the files per page while an event stream catches up, and the most
/// ledger text a page holds (a record of a big prompt is up to ~1 MiB).
const CATCH_UP_PAGE: usize = 1000;
const CATCH_UP_PAGE_BYTES: usize = 1 << 20;

/// The most bytes of records an event stream has read back from the files and not yet sent (a
/// slow client holds no more than this of the daemon's memory; it is sent more as it reads).
const STREAM_UNSENT_BYTES: usize = 4 << 20;

/// A handle on the running daemon for the doors. Cheap to clone.
#[derive(Clone)]
pub struct Api {
    ws: Workspace,
    /// Receiver: the engine's loop, which answers each request on its oneshot. Closed when the
    /// engine stops taking requests (shutdown); requests then fail with "shutting down".
    /// Bounded ([`DOOR_REQUESTS`]): a door that sends faster than the engine answers waits.
    engine: mpsc::Sender<ControlRequest>,
    /// The ledger writer sends every record on disk here; `wait` subscribes.
    live: broadcast::Sender<crate::ledger::LiveRecord>,
    /// Sender: the gathering task ([`gather_live`]), a batch of live records per
    /// [`LIVE_GATHER`]; every event stream subscribes, so a busy daemon wakes each stream a few
    /// times a second, not once per record.
    batches: broadcast::Sender<LiveBatch>,
    /// Sender: the engine, after each round in which its book applied records.
    applied: watch::Receiver<u64>,
    /// Set to `true` by the daemon when it begins to stop: waits and event streams end, so
    /// the servers can close their connections.
    stopping: watch::Receiver<bool>,
    /// Checks the records read back from the files (an agent may have appended lines).
    key: Option<crate::integrity::Key>,
    /// Set by the ledger writer: an event stream asked to resume past it says so.
    newest: crate::ledger::Newest,
    /// Fleet mode: the connection to the fleet's server, once made (`None`: not in a fleet).
    fleet: Option<crate::fleet::ConnCell>,
}

/// Why the fleet's events cannot be followed.
#[derive(Debug, thiserror::Error)]
pub enum FleetEventsError {
    #[error(
        "this daemon is not in a fleet: add a `cluster:` section to .context/dirigent.yaml (see docs/cluster.md)"
    )]
    NotInFleet,
    #[error("this daemon has not reached the fleet's server yet (`dirigent fleet` says why)")]
    NotConnected,
    #[error("{0}")]
    Refused(String),
}

/// Live records as the event streams get them.
#[derive(Debug, Clone)]
pub enum LiveBatch {
    /// The records written within one [`LIVE_GATHER`], in order.
    Records(Arc<[crate::ledger::LiveRecord]>),
    /// The gatherer fell behind the ledger: records were missed (read them from the files).
    Lagged,
}

/// Gathers the ledger's live records into batches: after the first record, whatever else is
/// written within [`LIVE_GATHER`] goes with it.
fn gather_live(
    live: &broadcast::Sender<crate::ledger::LiveRecord>,
) -> broadcast::Sender<LiveBatch> {
    let (out, _) = broadcast::channel(1024);
    let mut rx = live.subscribe();
    let tx = out.clone();
    tokio::spawn(async move {
        use broadcast::error::{RecvError, TryRecvError};
        loop {
            let first = match rx.recv().await {
                Ok(r) => r,
                Err(RecvError::Lagged(_)) => {
                    let _ = tx.send(LiveBatch::Lagged);
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            tokio::time::sleep(LIVE_GATHER).await;
            let mut batch = vec![first];
            let mut lagged = false;
            loop {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(TryRecvError::Lagged(_)) => {
                        lagged = true;
                        break;
                    }
                    Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                }
            }
            let _ = tx.send(LiveBatch::Records(batch.into()));
            if lagged {
                let _ = tx.send(LiveBatch::Lagged);
            }
        }
    });
    out
}

/// One item of an event stream.
#[derive(Debug, Clone)]
pub enum StreamItem {
    Record(crate::ledger::LiveRecord),
    /// Live records, in order, as one item.
    Records(Vec<crate::ledger::LiveRecord>),
    /// Records after `after` and before `next` are no longer kept (compacted away); the stream
    /// continues at `next`.
    Gap {
        after: u64,
        next: u64,
    },
    /// The position asked for (`after`) is past the ledger's newest record (`newest`): it came
    /// from another ledger, one since started afresh. The stream goes on after `newest`.
    Reset {
        after: u64,
        newest: u64,
    },
}

impl Api {
    pub fn new(
        ws: Workspace,
        engine: mpsc::Sender<ControlRequest>,
        ledger: &crate::ledger::Ledger,
        applied: watch::Receiver<u64>,
        stopping: watch::Receiver<bool>,
        key: Option<crate::integrity::Key>,
    ) -> Self {
        let live = ledger.live();
        Api {
            ws,
            engine,
            batches: gather_live(&live),
            live,
            applied,
            stopping,
            key,
            newest: ledger.newest(),
            fleet: None,
        }
    }

    /// The same, in a fleet: its doors can follow every node's records.
    pub fn with_fleet(mut self, conn: Option<crate::fleet::ConnCell>) -> Self {
        self.fleet = conn;
        self
    }

    /// Every node's records from the fleet's events stream, from `from`, until the receiver
    /// is dropped or the daemon stops. `Err`: why it cannot be followed now (the server's
    /// stream is opened before this answers).
    pub async fn fleet_events(
        &self,
        from: crate::fleet::events::StartAt,
    ) -> Result<mpsc::Receiver<crate::fleet::events::NodeRecords>, FleetEventsError> {
        let cell = self.fleet.as_ref().ok_or(FleetEventsError::NotInFleet)?;
        let conn = cell.get().ok_or(FleetEventsError::NotConnected)?.clone();
        let messages = crate::fleet::events::open(&conn, from)
            .await
            .map_err(FleetEventsError::Refused)?;
        // A couple of messages (each up to the server's `max_payload`) wait for a slow
        // client; past that the server's consumer waits for it.
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(crate::fleet::events::follow(
            messages,
            conn.signing.clone(),
            tx,
            self.stopping.clone(),
        ));
        Ok(rx)
    }

    pub fn workspace(&self) -> &Workspace {
        &self.ws
    }

    /// The ledger's records as they are written, from now on.
    pub fn live(&self) -> broadcast::Receiver<crate::ledger::LiveRecord> {
        self.live.subscribe()
    }

    /// Becomes `true` when the daemon begins to stop: long-lived answers end then.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stopping.clone()
    }

    /// Answers any request: `wait` and `result` here, everything else by the engine.
    pub async fn call(&self, request: Request) -> Response {
        match request {
            Request::Wait { id, timeout_ms } => {
                self.wait(&id, timeout_ms.map(Duration::from_millis)).await
            }
            Request::Result { id } => self.result(&id).await,
            Request::Diff { id } => self.diff(&id).await,
            other => self.engine(other).await,
        }
    }

    /// Sends a request to the engine and awaits its answer.
    async fn engine(&self, request: Request) -> Response {
        let (reply, answer) = oneshot::channel();
        if self
            .engine
            .send(ControlRequest { request, reply })
            .await
            .is_err()
        {
            return shutting_down();
        }
        answer.await.unwrap_or_else(|_| shutting_down())
    }

    /// Waits until task `id` has finished (done, failed, cancelled or rejected), at most
    /// `timeout` (`None`: until it finishes or the daemon stops). The answer's `data` is what
    /// `get` says of the task; on timeout `ok` is false and `data` holds its state so far.
    pub async fn wait(&self, id: &str, timeout: Option<Duration>) -> Response {
        tracing::debug!(task = %id, ?timeout, "a door waits for the task to finish");
        // Subscribe before asking, so nothing that happens in between is missed.
        let mut live = self.live.subscribe();
        let mut applied = self.applied.clone();
        let deadline = timeout.map(|t| crate::duration::later(tokio::time::Instant::now(), t));
        let mut stopping = self.stopping.clone();
        // Set once a record that may end the task was written: from then on the engine's book
        // is asked again each time it applies records, until it shows the end.
        let mut ending = false;
        loop {
            applied.borrow_and_update();
            let now = self.engine(Request::Get { id: id.to_string() }).await;
            if !now.ok || is_finished(now.data.as_ref()) {
                return now;
            }
            let until_deadline = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(until_deadline);
            loop {
                tokio::select! {
                    () = &mut until_deadline => {
                        return Response {
                            ok: false,
                            message: format!("task `{id}` has not finished yet"),
                            data: now.data,
                            failure: Some(Failure::Conflict),
                        };
                    }
                    () = until_stopping(&mut stopping) => return shutting_down(),
                    changed = applied.changed(), if ending => {
                        if changed.is_err() {
                            return shutting_down();
                        }
                        break;
                    }
                    got = live.recv(), if !ending => match got {
                        Ok(r) if ends(&r.event, id) => ending = true,
                        Ok(_) => {}
                        // Fell behind: the end may have been among the missed records.
                        Err(broadcast::error::RecvError::Lagged(_)) => ending = true,
                        Err(broadcast::error::RecvError::Closed) => return shutting_down(),
                    },
                }
            }
        }
    }

    /// A done task's result: `data` is `{id, output, text}`.
    /// What an editing task changed against its base, read from git here (not in the engine's
    /// loop).
    pub async fn diff(&self, id: &str) -> Response {
        let got = self.engine(Request::Get { id: id.to_string() }).await;
        let Some(data) = got.data.as_ref().filter(|_| got.ok) else {
            return got;
        };
        let Some(w) = data
            .get("worktree")
            .and_then(|w| serde_json::from_value::<crate::state::WorktreeState>(w.clone()).ok())
        else {
            return Response::fail(
                Failure::Conflict,
                format!("task `{id}` has no branch: it did not work in a worktree"),
            );
        };
        let root = self.ws.root().to_path_buf();
        let (branch, base) = (w.branch.clone(), w.base.clone());
        let text = tokio::task::spawn_blocking(move || {
            crate::git::Repo::discover(&root).and_then(|repo| w.diff_text(&repo))
        })
        .await;
        match text {
            Ok(Ok(diff)) => Response::data(serde_json::json!({
                "id": id, "branch": branch, "base": base, "diff": diff,
            })),
            Ok(Err(e)) => Response::error(format!("cannot read the diff of `{id}`: {e}")),
            Err(_) => Response::error(format!("cannot read the diff of `{id}`")),
        }
    }

    pub async fn result(&self, id: &str) -> Response {
        let got = self.engine(Request::Get { id: id.to_string() }).await;
        let Some(data) = got.data.as_ref().filter(|_| got.ok) else {
            return got;
        };
        let output = match data["state"].as_str() {
            Some("done") => data["output"]
                .as_str()
                .map(str::to_string)
                // Archived: only the outcome is kept; the default place is the best guess.
                .unwrap_or_else(|| crate::result::destination(id, None)),
            Some("failed") => {
                return Response::fail(
                    Failure::Conflict,
                    if data["reason"] == crate::state::CANCELLED_REASON {
                        format!("task `{id}` was cancelled and has no result")
                    } else {
                        format!(
                            "task `{id}` failed and has no result; see .context/escalations/{id}.md"
                        )
                    },
                );
            }
            Some("rejected") => {
                return Response::fail(
                    Failure::Conflict,
                    format!(
                        "task `{id}` was rejected: {}",
                        data["reason"].as_str().unwrap_or("")
                    ),
                );
            }
            other => {
                return Response::fail(
                    Failure::Conflict,
                    format!(
                        "task `{id}` is not done yet (it is {})",
                        other.unwrap_or("unknown")
                    ),
                );
            }
        };
        let root = self.ws.root().to_path_buf();
        let rel = output.clone();
        let read = tokio::task::spawn_blocking(move || {
            crate::fsutil::read_confined(&root, &rel, MAX_RESULT_BYTES)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
        match read {
            Ok(text) => Response::data(json!({"id": id, "output": output, "text": text})),
            // The file is not as the task left it (gone, replaced by a link or a FIFO): the
            // request was right, the result's state is not.
            Err(e) => Response::fail(
                Failure::Conflict,
                format!("cannot read the result `{output}`: {e}"),
            ),
        }
    }

    /// The ledger's records after sequence number `after` (`None`: from the next one written),
    /// then live ones as they are written, until the daemon stops or the receiver is dropped.
    /// Only records about `task` (and its workflow children) when given. Read back from the
    /// files first, so a client that reconnects with the last id it saw misses nothing that is
    /// still kept.
    pub fn events(&self, after: Option<u64>, task: Option<String>) -> mpsc::Receiver<StreamItem> {
        let (tx, rx) = mpsc::channel(256);
        let mut live = self.batches.subscribe();
        // Only until the stream's position is set (it starts with the next record written):
        // the first record, as soon as it is on disk, not a batch later.
        let mut first = after.is_none().then(|| self.live.subscribe());
        let ledger_path = self.ws.ledger();
        let mut stopping = self.stopping.clone();
        let key = self.key.clone();
        let newest = self.newest.clone();
        let unsent = Arc::new(tokio::sync::Semaphore::new(STREAM_UNSENT_BYTES));
        tokio::spawn(async move {
            let keep = |r: &Record| match &task {
                None => true,
                Some(t) => r
                    .event
                    .task()
                    .is_some_and(|id| id == t || crate::runner::is_child_of(id, t)),
            };
            // `None` until the first live record when the stream starts "from now".
            let mut last = after;
            // Set once the daemon begins to stop. Records are sent live only after their fsync,
            // but they are in the file (where a client may already have read them) before it:
            // the stream reads the files one last time, sends what it has not sent, and ends.
            let mut ending = false;
            'catch_up: loop {
                let Some(mut from) = last else {
                    // From now: the first live record sets the position, and the stream starts
                    // with it (read back from the file like any other; it is on disk already).
                    let Some(firsts) = first.as_mut() else {
                        return;
                    };
                    tokio::select! {
                        got = firsts.recv() => match got {
                            Ok(r) => {
                                last = Some(r.seq - 1);
                                first = None;
                                continue 'catch_up;
                            }
                            Err(broadcast::error::RecvError::Lagged(_)) => continue 'catch_up,
                            Err(broadcast::error::RecvError::Closed) => return,
                        },
                        () = until_stopping(&mut stopping) => match firsts.try_recv() {
                            // Sent live before this task looked: it still belongs to the stream.
                            Ok(r) => {
                                last = Some(r.seq - 1);
                                first = None;
                                ending = true;
                                continue 'catch_up;
                            }
                            Err(_) => return,
                        },
                        () = tx.closed() => return,
                    }
                };
                // From the files, page by page, until they have nothing newer.
                loop {
                    let page = match read_page(&ledger_path, from, key.clone()).await {
                        Ok(p) => p,
                        Err(e) => {
                            tracing::warn!("cannot read the ledger for an event stream: {e}");
                            return;
                        }
                    };
                    if page.is_empty() {
                        // Nothing after `from`, and nothing given a number past it either: the
                        // position is from another ledger. Read after the files, so a record
                        // written meanwhile is not mistaken for one that never was.
                        let newest_now = newest.get();
                        if from > newest_now {
                            let reset = StreamItem::Reset {
                                after: from,
                                newest: newest_now,
                            };
                            if tx.send(reset).await.is_err() {
                                return;
                            }
                            from = newest_now;
                            continue;
                        }
                        break;
                    }
                    for r in page {
                        if r.seq > from + 1 {
                            let gap = StreamItem::Gap {
                                after: from,
                                next: r.seq,
                            };
                            if tx.send(gap).await.is_err() {
                                return;
                            }
                        }
                        from = r.seq;
                        if !keep(&r) {
                            continue;
                        }
                        let json: Box<str> = serde_json::to_string(&r).unwrap_or_default().into();
                        let size = json.len().clamp(1, STREAM_UNSENT_BYTES) as u32;
                        let Ok(held) = unsent.clone().acquire_many_owned(size).await else {
                            return;
                        };
                        let shared = crate::ledger::SharedRecord::holding(r, json, held);
                        if tx.send(StreamItem::Record(shared)).await.is_err() {
                            return;
                        }
                    }
                }
                if ending {
                    return;
                }
                // Then live, a batch of records at a time.
                loop {
                    let got = tokio::select! {
                        got = live.recv() => got,
                        () = until_stopping(&mut stopping) => {
                            // Not `return`: records written before the stop may not have been
                            // sent live yet (their fsync is pending, or this task lagged).
                            ending = true;
                            last = Some(from);
                            continue 'catch_up;
                        }
                        () = tx.closed() => return,
                    };
                    let batch = match got {
                        Ok(LiveBatch::Records(b)) => b,
                        Ok(LiveBatch::Lagged) | Err(broadcast::error::RecvError::Lagged(_)) => {
                            last = Some(from);
                            continue 'catch_up;
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    };
                    let mut out = Vec::new();
                    let mut missed = false;
                    for r in batch.iter() {
                        if r.seq <= from {
                            continue;
                        }
                        // Something was missed between the files and the subscription.
                        if r.seq > from + 1 {
                            missed = true;
                            break;
                        }
                        from = r.seq;
                        if keep(r) {
                            out.push(r.clone());
                        }
                    }
                    if !out.is_empty() && tx.send(StreamItem::Records(out)).await.is_err() {
                        return;
                    }
                    if missed {
                        last = Some(from);
                        continue 'catch_up;
                    }
                }
            }
        });
        rx
    }
}

async fn read_page(
    path: &std::path::Path,
    after: u64,
    key: Option<crate::integrity::Key>,
) -> std::io::Result<Vec<Record>> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        ledger::read_after_within(
            &path,
            after,
            CATCH_UP_PAGE,
            CATCH_UP_PAGE_BYTES,
            key.as_ref(),
        )
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Resolves once the daemon begins to stop (without holding the watch's lock across awaits).
async fn until_stopping(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|s| *s).await;
}

fn shutting_down() -> Response {
    Response::fail(Failure::Unavailable, "the daemon is shutting down")
}

/// Whether `get`'s answer describes a finished task.
pub fn is_finished(data: Option<&Value>) -> bool {
    match data.and_then(|d| d["state"].as_str()) {
        Some("done" | "failed" | "rejected") => true,
        // Verified and waiting for `dirigent merge`: nothing more happens until someone acts.
        Some("merge_waiting") => data
            .and_then(|d| d["reason"].as_str())
            .is_some_and(|r| r.starts_with(crate::editing::MANUAL_MERGE)),
        _ => false,
    }
}

/// Whether `event` may have ended task `id` (or rejected its file).
fn ends(event: &Event, id: &str) -> bool {
    match event {
        Event::Done { task, .. }
        | Event::Escalated { task, .. }
        | Event::Cancelled { task }
        | Event::MergeWaiting { task, .. } => task == id,
        Event::Rejected { file, .. } => {
            crate::task::id_from_stem(crate::fsutil::split_name(file).0) == id
        }
        _ => false,
    }
}
