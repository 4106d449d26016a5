//! The fleet's records in one place: every node publishes each record its ledger writes to the
//! events stream (`dirigent.events.<node>`), and every node folds the stream into one task
//! book per node — what `dirigent status --fleet` shows.
//!
//! Each node's own fsynced ledger stays the truth. The events stream is a window onto all of
//! them: a record is published once it is durable locally, without waiting for the server
//! (a record written while the server is away is not in the stream; the node's own `status`
//! still has it). The stream keeps a week, at most 1 GiB.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::broadcast;

use super::connect::Connection;
use crate::ledger::{LiveRecord, Record};
use crate::state::TaskBook;

/// The stream of every node's records.
pub const EVENTS_STREAM: &str = "DIRIGENT_EVENTS";
/// Its subjects: one per node.
pub const EVENTS_SUBJECTS: &str = "dirigent.events.>";
/// Finished tasks each node's book in the fleet view keeps in full.
const KEEP_FINISHED: usize = 200;

/// One task book per node, folded from the events stream. Written by [`fold`], read by the
/// engine's answer to `status --fleet`; `wanted` starts the folding, on the first such request
/// (a node nobody asks does not pay for reading every node's records).
#[derive(Clone, Default)]
pub struct FleetBooks {
    books: Arc<Mutex<BTreeMap<String, TaskBook>>>,
    /// Notified by the engine when `status --fleet` is asked; the fold task waits for it once.
    pub wanted: Arc<tokio::sync::Notify>,
}

pub fn lock(books: &FleetBooks) -> std::sync::MutexGuard<'_, BTreeMap<String, TaskBook>> {
    books.books.lock().unwrap_or_else(|e| e.into_inner())
}

/// The most bytes of records sent in one message (well under a server's `max_payload`).
const BATCH_BYTES: usize = 256 * 1024;

/// Publishes this node's records as the ledger writes them: each message carries what has
/// been written since the last one (JSON lines), so a busy node sends a few messages a batch
/// of tasks, not one per record.
pub async fn publish(conn: Connection, node: String, mut live: broadcast::Receiver<LiveRecord>) {
    use broadcast::error::{RecvError, TryRecvError};
    let subject = format!("dirigent.events.{node}");
    loop {
        let first = match live.recv().await {
            Ok(r) => r,
            // Missed records are missing from the stream only; the ledger has them.
            Err(RecvError::Lagged(n)) => {
                tracing::debug!("{n} record(s) were not published to the fleet's events");
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let mut batch = String::with_capacity(first.json().len() + 1);
        batch.push_str(first.json());
        batch.push('\n');
        while batch.len() < BATCH_BYTES {
            match live.try_recv() {
                Ok(r) => {
                    batch.push_str(r.json());
                    batch.push('\n');
                }
                Err(TryRecvError::Lagged(_)) => continue,
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        let sent = match conn.signing.as_deref() {
            Some(signing) => {
                let headers = signing.headers(&format!("events {subject}"), batch.as_bytes());
                conn.client
                    .publish_with_headers(subject.clone(), headers, batch.into())
                    .await
            }
            None => conn.client.publish(subject.clone(), batch.into()).await,
        };
        if let Err(e) = sent {
            tracing::debug!("cannot publish records to the fleet's events: {e}");
        }
    }
}

/// Folds the whole stream (from its start, then live) into `books`, made again from scratch
/// when the consumer breaks.
pub async fn fold(conn: Connection, books: FleetBooks) {
    use async_nats::jetstream::consumer::{DeliverPolicy, pull};
    books.wanted.notified().await;
    let mut delay = Duration::from_millis(250);
    loop {
        let consumer = conn
            .events
            .create_consumer(pull::OrderedConfig {
                filter_subject: EVENTS_SUBJECTS.into(),
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await;
        match consumer {
            Ok(c) => match c.messages().await {
                Ok(mut messages) => {
                    lock(&books).clear();
                    delay = Duration::from_millis(250);
                    while let Some(Ok(msg)) = messages.next().await {
                        let Some(node) = node_of(conn.signing.as_deref(), &msg) else {
                            continue;
                        };
                        let mut books = lock(&books);
                        let book = books
                            .entry(node.to_string())
                            .or_insert_with(|| TaskBook::with_limit(Some(KEEP_FINISHED), []));
                        for line in msg.payload.split(|b| *b == b'\n') {
                            if let Ok(record) = serde_json::from_slice::<Record>(line)
                                && !replayed(conn.signing.is_some(), book.last_seq, &record)
                            {
                                book.apply(&record);
                            }
                        }
                    }
                }
                Err(e) => tracing::debug!("cannot read the fleet's events: {e}"),
            },
            Err(e) => tracing::debug!("cannot read the fleet's events: {e}"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// How long a fleet scorecard waits for the stream's next message before it takes what it
/// has read as all (a stream with nothing after the start time sends nothing).
const QUIET_FOR: Duration = Duration::from_secs(2);

/// Reads every node's records since `since_ms` from the events stream into `card`
/// (`dirigent stats --fleet`): from the stream's time `since_ms` (less a margin for clocks
/// that differ) up to what the stream held when asked. Returns how many records were read.
pub async fn scorecard(
    conn: &Connection,
    since_ms: u64,
    card: &mut crate::stats::Scorecard<'_>,
) -> Result<u64, String> {
    use async_nats::jetstream::consumer::{DeliverPolicy, pull};
    let last = conn
        .events
        .get_info()
        .await
        .map_err(|e| format!("cannot read the fleet's events stream: {e}"))?
        .state
        .last_sequence;
    let margin_ms = 10 * 60 * 1000;
    let start = async_nats::datetime::from_nanos(
        i128::from(since_ms.saturating_sub(margin_ms)) * 1_000_000,
    )
    .map_err(|e| e.to_string())?;
    let consumer = conn
        .events
        .create_consumer(pull::OrderedConfig {
            filter_subject: EVENTS_SUBJECTS.into(),
            deliver_policy: DeliverPolicy::ByStartTime { start_time: start },
            ..Default::default()
        })
        .await
        .map_err(|e| format!("cannot read the fleet's events stream: {e}"))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| format!("cannot read the fleet's events stream: {e}"))?;
    let mut read = 0;
    let mut last_seq: std::collections::HashMap<String, u64> = Default::default();
    loop {
        let msg = match tokio::time::timeout(QUIET_FOR, messages.next()).await {
            Ok(Some(Ok(msg))) => msg,
            Ok(Some(Err(e))) => return Err(format!("cannot read the fleet's events stream: {e}")),
            Ok(None) | Err(_) => break,
        };
        if let Some(node) = node_of(conn.signing.as_deref(), &msg) {
            let last = last_seq.entry(node.to_string()).or_insert(0);
            for line in msg.payload.split(|b| *b == b'\n') {
                if let Ok(record) = serde_json::from_slice::<Record>(line)
                    && !replayed(conn.signing.is_some(), *last, &record)
                {
                    *last = record.seq;
                    card.add_on(Some(node), &record);
                    read += 1;
                }
            }
        }
        if msg
            .info()
            .is_ok_and(|i| i.stream_sequence >= last || i.pending == 0)
        {
            break;
        }
    }
    Ok(read)
}

/// The node whose records a message of the events stream holds: its subject's, when that is a
/// node's name and — with a roster — that node signed the message (the server can be made to
/// write onto any node's subject).
fn node_of<'m>(
    signing: Option<&super::signing::Signing>,
    msg: &'m async_nats::Message,
) -> Option<&'m str> {
    let node = msg.subject.strip_prefix("dirigent.events.")?;
    crate::config::validate_name(node).ok()?;
    if let Some(signing) = signing {
        let context = format!("events {}", msg.subject);
        if !signing.signed_by(node, msg.headers.as_ref(), &context, &msg.payload) {
            tracing::debug!(subject = %msg.subject, "records not signed by their node; left out");
            return None;
        }
    }
    Some(node)
}

/// Whether `record` is one its node sent before (with a roster: a signed batch can be echoed
/// onto the stream again). A node's records come in its ledger's order, so a sequence not
/// above the last one read is a repeat. Without a roster every record counts, as before (a
/// workspace made again under the same name starts its sequence anew).
fn replayed(signed: bool, last_seq: u64, record: &Record) -> bool {
    signed && record.seq <= last_seq
}

/// One message of the events stream, for a client following the fleet (`GET /events?fleet=true`):
/// the node that wrote its records, its sequence in the stream (what a client resumes after),
/// and the records, each read as a record and written again as one JSON line.
#[derive(Debug)]
pub struct NodeRecords {
    pub node: String,
    pub stream_seq: u64,
    pub records: Vec<String>,
}

/// Where a client following the fleet starts: the next message, every message kept, or after
/// the message it saw last.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StartAt {
    Next,
    After(u64),
}

/// Opens the events stream from `from` for one client (`Err`: why the server would not).
/// The server hands over at most a few messages at a time (`max_batch`), so a client that
/// reads slowly holds a few messages here, not the hundreds a pull would fetch by default.
pub async fn open(
    conn: &Connection,
    from: StartAt,
) -> Result<async_nats::jetstream::consumer::pull::Ordered, String> {
    use async_nats::jetstream::consumer::{DeliverPolicy, pull};
    let deliver_policy = match from {
        StartAt::Next => DeliverPolicy::New,
        StartAt::After(0) => DeliverPolicy::All,
        StartAt::After(n) => DeliverPolicy::ByStartSequence {
            start_sequence: n.saturating_add(1),
        },
    };
    let consumer = conn
        .events
        .create_consumer(pull::OrderedConfig {
            filter_subject: EVENTS_SUBJECTS.into(),
            deliver_policy,
            max_batch: 4,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("the fleet's server would not open its events stream: {e}"))?;
    consumer
        .messages()
        .await
        .map_err(|e| format!("the fleet's server would not open its events stream: {e}"))
}

/// Sends the messages of `messages` (see [`open`]) into `tx` until the client goes (`tx`
/// closed) or `stopping` turns true. A message whose subject is not a node's, and lines that
/// are not records, are left out. The channel bounds what waits for a slow client; the
/// server's consumer waits with it.
pub async fn follow(
    mut messages: async_nats::jetstream::consumer::pull::Ordered,
    signing: Option<Arc<super::signing::Signing>>,
    tx: tokio::sync::mpsc::Sender<NodeRecords>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let mut last_seq: std::collections::HashMap<String, u64> = Default::default();
    loop {
        let msg = tokio::select! {
            m = messages.next() => match m {
                Some(Ok(m)) => m,
                Some(Err(e)) => return tracing::debug!("the fleet's events stopped: {e}"),
                None => return,
            },
            _ = stopping.wait_for(|s| *s) => return,
            () = tx.closed() => return,
        };
        let Some(node) = node_of(signing.as_deref(), &msg) else {
            continue;
        };
        let Ok(info) = msg.info() else { continue };
        let stream_seq = info.stream_sequence;
        let last = last_seq.entry(node.to_string()).or_insert(0);
        let records: Vec<String> = msg
            .payload
            .split(|b| *b == b'\n')
            // Written again from what was read: another node's extra fields, or whitespace
            // that would end a line of the client's event stream, do not pass through.
            .filter_map(|line| serde_json::from_slice::<Record>(line).ok())
            .filter(|record| {
                let fresh = !replayed(signing.is_some(), *last, record);
                if fresh {
                    *last = record.seq;
                }
                fresh
            })
            .filter_map(|record| serde_json::to_string(&record).ok())
            .collect();
        if records.is_empty() {
            continue;
        }
        let batch = NodeRecords {
            node: node.to_string(),
            stream_seq,
            records,
        };
        tokio::select! {
            sent = tx.send(batch) => if sent.is_err() { return },
            _ = stopping.wait_for(|s| *s) => return,
        }
    }
}
