//! The submitting half of a fleet node: puts the tasks its engine accepted on the queue, and
//! brings their outcomes back.
//!
//! A publish is tried until the server has it (doubling waits up to 30 s): a task accepted
//! while the server is away waits, it is never dropped. The message id is the task's key, so
//! a publish repeated after a crash (before `published` was recorded) is dropped by the server.
//! Outcomes are watched under `NODE.>` from the bucket's history, so those written while this
//! node was down arrive when it comes back.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::message::PublishMessage as Publish;
use futures_util::StreamExt;
use tokio::sync::{Semaphore, mpsc};

use super::connect::Connection;
use super::edits::{self, Carried, EditJob};
use super::{
    EditAsk, MAX_RESULT_BYTES, Outcome, QueuedTask, ToEngine, key_of, parse_key_rest, subject_for,
};
use crate::task::TaskSpec;

/// Publishes in flight at once (each waits for the server's acknowledgement).
const IN_FLIGHT: usize = 256;

/// A task to publish: its spec, round, received time, and for an editing task what names its
/// base.
pub type ToPublish = (Arc<TaskSpec>, u32, u64, Option<Box<EditAsk>>);

pub async fn run(
    conn: Connection,
    node: String,
    root: std::path::PathBuf,
    mut rx: mpsc::UnboundedReceiver<ToPublish>,
    to_engine: Arc<dyn Fn(ToEngine) + Send + Sync>,
) {
    let watcher = tokio::spawn(watch_outcomes(
        conn.clone(),
        node.clone(),
        root,
        to_engine.clone(),
    ));
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some((spec, round, received_ms, edit)) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let (conn, node, to_engine) = (conn.clone(), node.clone(), to_engine.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let task = spec.id.clone();
            match publish(&conn, &node, &spec, round, received_ms, edit).await {
                Ok((subject, seq, base)) => to_engine(ToEngine::Published {
                    task,
                    subject,
                    round,
                    seq,
                    base,
                }),
                Err(reason) => to_engine(ToEngine::Unpublishable { task, reason }),
            }
        });
    }
    watcher.abort();
}

/// The subject a task published by `node` goes on: its chain's first agent's.
pub fn subject_of(spec: &TaskSpec, node: &str) -> String {
    let first = spec.chain.first().map(String::as_str).unwrap_or("");
    subject_for(crate::config::split_entry(first).0, node)
}

/// Publishes until the server acknowledges; returns the subject and the message's sequence in
/// the stream. `Err`: the task can never
/// be published (why), so trying again would only hide it.
async fn publish(
    conn: &Connection,
    node: &str,
    spec: &TaskSpec,
    round: u32,
    received_ms: u64,
    edit: Option<Box<EditAsk>>,
) -> Result<(String, u64, Option<String>), String> {
    let subject = subject_of(spec, node);
    // An editing task names the commit its work starts from, as it is now.
    let edit = match edit {
        None => None,
        Some(ask) => {
            let EditAsk {
                repository,
                here,
                base,
                merge_into,
                inside,
            } = *ask;
            let base = tokio::task::spawn_blocking(move || {
                edits::resolve_base(&here, base.as_deref(), merge_into.as_deref())
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r)
            .map_err(|e| format!("its base commit cannot be found: {e}"))?;
            Some(EditJob {
                repository,
                base,
                inside,
            })
        }
    };
    // A worker checks the fields again and makes its own spec: the prompt travels once, in
    // the fields.
    let mut sent = spec.clone();
    sent.prompt.clear();
    let queued = QueuedTask {
        node: node.to_string(),
        spec: sent,
        round,
        received_ms,
        edit,
    };
    let payload: bytes::Bytes = serde_json::to_vec(&queued)
        .expect("a task spec serialises")
        .into();
    let most = conn.client.server_info().max_payload;
    if payload.len() > most {
        return Err(format!(
            "the task is {} bytes as a message of the fleet, more than its server takes (`max_payload`, {most} bytes); make the prompt smaller, or pass the material as `files`",
            payload.len()
        ));
    }
    let key = key_of(node, &spec.id, round, received_ms);
    // Signed (with a roster): the worker takes it only as this node's, and its message id is
    // one no other node can guess.
    let mut message = Publish::build().payload(payload.clone());
    match conn.signing.as_deref() {
        Some(signing) => {
            message = message
                .message_id(signing.message_id(&key))
                .headers(signing.headers(&format!("task {subject}"), &payload));
        }
        None => message = message.message_id(&key),
    }
    let mut delay = Duration::from_millis(250);
    loop {
        let sent = conn.js.send_publish(subject.clone(), message.clone()).await;
        let acked = match sent {
            Ok(ack) => ack.await.map(|a| a.sequence).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match acked {
            Ok(seq) => return Ok((subject, seq, queued.edit.as_ref().map(|e| e.base.clone()))),
            Err(e) => {
                tracing::warn!(
                    task = %spec.id,
                    "cannot put the task on the fleet's queue ({e}); trying again in {} ms",
                    delay.as_millis()
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Delivers every outcome written for this node's tasks to the engine, those already in the
/// bucket first. The watch is made again when it breaks (the server restarted).
async fn watch_outcomes(
    conn: Connection,
    node: String,
    root: std::path::PathBuf,
    to_engine: Arc<dyn Fn(ToEngine) + Send + Sync>,
) {
    let prefix = format!("{node}.");
    let mut delay = Duration::from_millis(250);
    loop {
        match conn.outcomes.watch_with_history(format!("{node}.>")).await {
            Ok(mut watch) => {
                delay = Duration::from_millis(250);
                while let Some(entry) = watch.next().await {
                    let entry = match entry {
                        Ok(e) => e,
                        Err(e) => {
                            tracing::warn!("the fleet's outcomes cannot be watched: {e}");
                            break;
                        }
                    };
                    if entry.operation != async_nats::jetstream::kv::Operation::Put {
                        continue;
                    }
                    let Some((task, round, received_ms)) =
                        entry.key.strip_prefix(&prefix).and_then(parse_key_rest)
                    else {
                        continue;
                    };
                    match super::read_outcome(conn.signing.as_deref(), &entry.key, &entry.value) {
                        Ok(mut outcome) => {
                            fetch_result(&conn, &mut outcome).await;
                            fetch_bundle(&conn, &root, &entry.key, &mut outcome).await;
                            to_engine(ToEngine::Outcome {
                                task: task.to_string(),
                                round,
                                received_ms,
                                outcome,
                            });
                        }
                        Err(e) => conn.not_taken(format!(
                            "the fleet's outcome for `{task}` is not taken ({e}); the task waits for one that is"
                        )),
                    }
                }
            }
            Err(e) => tracing::warn!("the fleet's outcomes cannot be watched: {e}"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// A result too large for the outcome is read from the object store into its text (at most
/// [`MAX_RESULT_BYTES`]); when it cannot be, the text says so and where it is.
async fn fetch_result(conn: &Connection, outcome: &mut Outcome) {
    use tokio::io::AsyncReadExt;
    let super::End::Done {
        text,
        truncated,
        object: Some(name),
        object_sha256,
        ..
    } = &mut outcome.end
    else {
        return;
    };
    let mut delay = Duration::from_millis(250);
    let mut last = String::new();
    for _ in 0..8 {
        match conn.results.get(name.as_str()).await {
            Ok(object) => {
                let mut bytes = Vec::new();
                match object
                    .take(MAX_RESULT_BYTES as u64 + 1)
                    .read_to_end(&mut bytes)
                    .await
                {
                    // The signed outcome names the bytes; the store's own records are not
                    // signed, so with a roster the object must match.
                    Ok(_)
                        if conn.signing.is_some()
                            && object_sha256.as_deref()
                                != Some(super::sha256_hex(&bytes).as_str()) =>
                    {
                        last = "its bytes are not those the signed outcome names".into();
                        break;
                    }
                    Ok(_) if bytes.len() <= MAX_RESULT_BYTES => {
                        *text = String::from_utf8_lossy(&bytes).into_owned();
                        return;
                    }
                    Ok(_) => {
                        last = format!("it is larger than {MAX_RESULT_BYTES} bytes");
                        break;
                    }
                    Err(e) => last = e.to_string(),
                }
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
    *text = format!(
        "(the result could not be read from the fleet's object store ({last}); it is on worker `{}`)",
        outcome.worker
    );
    *truncated = true;
}

/// Where a bundle of work brought from the object store waits for the engine, which fetches
/// it into the repository and removes it.
pub fn bundle_file(root: &std::path::Path, key: &str) -> std::path::PathBuf {
    root.join(".context/fleet/bundles")
        .join(format!("{:016x}.bundle", crate::fleet::edits::fnv(key)))
}

/// Work delivered as a bundle is read from the object store into [`bundle_file`] (at most
/// [`MAX_RESULT_BYTES`]); when it cannot be, the work is marked as staying on the worker.
async fn fetch_bundle(conn: &Connection, root: &std::path::Path, key: &str, outcome: &mut Outcome) {
    use tokio::io::AsyncReadExt;
    let super::End::Done {
        work: Some(work), ..
    } = &mut outcome.end
    else {
        return;
    };
    let Carried::Bundle { object } = &work.carried else {
        return;
    };
    let file = bundle_file(root, key);
    let read = async {
        let object = conn
            .results
            .get(object.as_str())
            .await
            .map_err(|e| e.to_string())?;
        let mut bytes = Vec::new();
        object
            .take(MAX_RESULT_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| e.to_string())?;
        if bytes.len() > MAX_RESULT_BYTES {
            return Err(format!("it is larger than {MAX_RESULT_BYTES} bytes"));
        }
        let file = file.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(file.parent().expect("in bundles/"))?;
            std::fs::write(&file, bytes)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
    };
    if let Err(e) = read.await {
        work.carried = Carried::Stayed {
            why: format!("its bundle could not be read from the fleet's object store: {e}"),
        };
    }
}

/// A task published here was cancelled here: its message deleted from the stream if it still
/// waits there (no worker takes it any more), its outcome claimed as cancelled (a worker's
/// later one is a duplicate; a repeat delivery is dropped), and the workers told, so the one
/// that runs it stops (core NATS, on [`super::cancel_subject`]: a worker that misses the word
/// finds the outcome taken when it claims its own, and records a duplicate).
pub async fn cancel(conn: Connection, node: String, key: String, seq: u64) {
    if seq > 0 {
        match conn.tasks.delete_message(seq).await {
            Ok(_) => tracing::info!(key, "taken off the fleet's queue"),
            // Taken by a worker already (or the server is away): the outcome and the word do it.
            Err(e) => tracing::debug!(key, "not on the fleet's queue any more: {e}"),
        }
    }
    let subject = super::cancel_subject(&node);
    let outcome = Outcome {
        worker: node,
        end: super::End::Cancelled,
    };
    let value = serde_json::to_vec(&outcome).expect("an outcome serialises");
    match super::claim_outcome(&conn, &key, value).await {
        super::Claim::Won => {}
        other => tracing::debug!(
            key,
            "the fleet's outcome of the cancelled task stands already ({other:?})"
        ),
    }
    if let Err(e) = conn.client.publish(subject, key.clone().into()).await {
        tracing::warn!(
            key,
            "cannot tell the fleet's workers the task is cancelled: {e}"
        );
    }
}
