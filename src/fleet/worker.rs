//! The working half of a fleet node: takes tasks off the queue for the agents it can run, has
//! its engine run them, keeps the server told they are in progress, claims each outcome once,
//! and only then acknowledges.
//!
//! One pull loop per agent, each through the durable consumer every worker with that agent
//! shares (a work-queue stream lets one consumer per subject exist; many workers pull through
//! it). A loop takes a slot first — as many slots as the engine's `concurrency` — so this
//! worker never takes more than it can start; the slot is held until the task's outcome is
//! claimed.
//!
//! The messages in hand are this module's alone ([`Held`]); the engine knows the tasks by id
//! and tells it when one settled ([`Settled`]). When the engine stops, what is still in hand is
//! handed back (NAK), so another worker takes it at once instead of after the ack wait.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, pull};
use async_nats::jetstream::message::Acker;
use async_nats::jetstream::{AckKind, Message};
use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::connect::Connection;
use super::{End, Outcome, QueuedTask, Taken, ToEngine, consumer_for, edits, filter_for};
use crate::config::cluster::Cluster;

/// Deliveries of a task that workers refused to run before it escalates.
const MAX_REFUSALS: i64 = 5;
/// How soon a refused task is offered again (to any worker).
/// Long enough that other tasks for the agent are served in between: a refused task must not
/// hold up the queue behind it.
const REFUSED_AGAIN_IN: Duration = Duration::from_secs(3);

/// How soon a task a stopping worker hands back is offered again: after the pull requests
/// it still has at the server (each lives [`PULL_WAIT`]) have expired, so the server cannot
/// offer it straight back to the worker that is going away.
const HANDED_BACK_AGAIN_IN: Duration = Duration::from_millis(2 * PULL_WAIT.as_millis() as u64);

/// How soon a task this worker could not take now (paused, stopping) is offered again.
const BUSY_AGAIN_IN: Duration = Duration::from_secs(5);

/// How long one pull waits for a task before it asks again.
const PULL_WAIT: Duration = Duration::from_secs(1);

/// What the engine says about a task taken here.
#[derive(Debug)]
pub enum FromEngine {
    Settled(Settled),
    /// It ended without an outcome: hand it back.
    HandBack(String),
}

/// A task taken here has settled: claim its outcome and acknowledge it.
#[derive(Debug)]
pub struct Settled {
    pub key: String,
    pub task: String,
    pub end: End,
}

/// A message in hand: acknowledged once its outcome is claimed, or handed back.
pub struct Held {
    acker: Arc<Acker>,
    /// The task it runs as here.
    task: String,
    /// One of the worker's slots, given back with the message.
    _slot: OwnedSemaphorePermit,
}

/// The messages in hand, by key: this module's; the heartbeat lists their keys.
#[derive(Clone, Default)]
pub struct HeldMap {
    tasks: Arc<Mutex<HashMap<String, Held>>>,
    /// Notified when a task is taken in hand; the heartbeat waits on it to say so soon.
    pub taken: Arc<tokio::sync::Notify>,
}

#[allow(clippy::too_many_arguments)]
pub async fn run(
    conn: Connection,
    cluster: Cluster,
    root: std::path::PathBuf,
    mut agents: tokio::sync::watch::Receiver<Vec<String>>,
    slots: usize,
    held: HeldMap,
    mut settled: mpsc::UnboundedReceiver<FromEngine>,
    to_engine: Arc<dyn Fn(ToEngine) + Send + Sync>,
) {
    let slots = Arc::new(Semaphore::new(slots.max(1)));
    let root: Arc<std::path::Path> = root.into();
    // How often to say "in progress": a third of the shortest ack wait among this worker's
    // consumers — the server's, which the first worker that made a consumer chose, whatever
    // this config says.
    let every = Arc::new(std::sync::atomic::AtomicU64::new(
        (cluster.ack_wait / 3).as_millis() as u64,
    ));
    let mut loops = tokio::task::JoinSet::new();
    // The agents pulled for; one pull loop each, which ends once its agent is no longer run.
    let mut pulled: std::collections::HashSet<String> = Default::default();
    let for_loops = agents.clone();
    let pull_new = |loops: &mut tokio::task::JoinSet<()>,
                    now: &[String],
                    pulled: &mut std::collections::HashSet<String>| {
        pulled.retain(|a| now.contains(a));
        for agent in now {
            if pulled.insert(agent.clone()) {
                loops.spawn(pull_loop(
                    conn.clone(),
                    cluster.clone(),
                    root.clone(),
                    every.clone(),
                    agent.clone(),
                    for_loops.clone(),
                    slots.clone(),
                    held.clone(),
                    to_engine.clone(),
                ));
            }
        }
    };
    let first = agents.borrow_and_update().clone();
    pull_new(&mut loops, &first, &mut pulled);
    // "Still working", well within the ack wait, for every message in hand.
    let progress = {
        let (held, every) = (held.clone(), every.clone());
        tokio::spawn(async move {
            loop {
                let ms = every.load(std::sync::atomic::Ordering::Relaxed).max(100);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                let ackers: Vec<Arc<Acker>> =
                    lock(&held).values().map(|h| h.acker.clone()).collect();
                for a in ackers {
                    if let Err(e) = a.ack_with(AckKind::Progress).await {
                        tracing::debug!(
                            "cannot tell the fleet's server a task is in progress: {e}"
                        );
                    }
                }
            }
        })
    };
    // A node's word that it cancelled a task: the one in hand here stops. The word is only a
    // nudge: it counts when it comes on the subject of the task's own node and that node's
    // cancelled outcome is in the bucket, so no node can stop another's task by saying so.
    let cancels = {
        let (conn, held, to_engine) = (conn.clone(), held.clone(), to_engine.clone());
        tokio::spawn(async move {
            let mut words = match conn.client.subscribe(super::CANCEL_SUBJECTS).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("cannot hear the fleet's cancels: {e}");
                    return;
                }
            };
            while let Some(word) = words.next().await {
                let key = String::from_utf8_lossy(&word.payload).into_owned();
                let from = word.subject.strip_prefix("dirigent.cancel.").unwrap_or("");
                if from.is_empty() || !key.starts_with(&format!("{from}.")) {
                    tracing::warn!(subject = %word.subject, key, "a cancel for another node's task; ignored");
                    continue;
                }
                let task = lock(&held).get(&key).map(|h| h.task.clone());
                let Some(task) = task.filter(|t| !t.is_empty()) else {
                    continue;
                };
                if !cancelled_in_bucket(&conn, &key).await {
                    tracing::warn!(
                        task,
                        key,
                        "a cancel whose outcome the bucket does not hold; ignored"
                    );
                    continue;
                }
                tracing::info!(task, key, "its node cancelled it");
                to_engine(ToEngine::Cancel { task });
            }
        })
    };
    loop {
        let word = tokio::select! {
            word = settled.recv() => word,
            changed = agents.changed() => {
                if changed.is_ok() {
                    let now = agents.borrow_and_update().clone();
                    pull_new(&mut loops, &now, &mut pulled);
                }
                continue;
            }
        };
        let Some(word) = word else { break };
        let s = match word {
            FromEngine::Settled(s) => s,
            FromEngine::HandBack(key) => {
                let h = lock(&held).remove(&key);
                if let Some(h) = h {
                    // Cancelled by its node (its outcome is there): done with, not handed back.
                    if super::stored_outcome(&conn, &key).await.is_some() {
                        let _ = h.acker.double_ack().await;
                        tracing::info!(task = %h.task, key, "its node cancelled it; acknowledged");
                    } else {
                        let _ = h.acker.ack_with(AckKind::Nak(None)).await;
                        tracing::info!(task = %h.task, key, "handed back to the fleet");
                    }
                }
                continue;
            }
        };
        let (conn, cluster, held, to_engine, root) = (
            conn.clone(),
            cluster.clone(),
            held.clone(),
            to_engine.clone(),
            root.clone(),
        );
        tokio::spawn(async move {
            claim_and_ack(&conn, &root, &cluster, &held, s, &*to_engine).await;
        });
    }
    // The engine stopped: take nothing more, hand back what is in hand.
    loops.shutdown().await;
    progress.abort();
    cancels.abort();
    let in_hand: Vec<(String, Held)> = lock(&held).drain().collect();
    for (key, h) in in_hand {
        match h
            .acker
            .ack_with(AckKind::Nak(Some(HANDED_BACK_AGAIN_IN)))
            .await
        {
            Ok(()) => tracing::info!(task = %h.task, key, "handed back to the fleet"),
            Err(e) => tracing::warn!(
                task = %h.task,
                key,
                "cannot hand the task back ({e}); the server gives it to another worker after the ack wait"
            ),
        }
    }
    // The hand-backs are only queued in the client: sent before the process goes.
    if let Err(e) = conn.client.flush().await {
        tracing::warn!(
            "cannot send the hand-backs to the fleet's server ({e}); it gives the tasks to other workers after the ack wait"
        );
    }
}

/// Whether the outcomes bucket holds `key` as cancelled by its node.
async fn cancelled_in_bucket(conn: &Connection, key: &str) -> bool {
    super::stored_outcome(conn, key)
        .await
        .is_some_and(|o| o.end == End::Cancelled)
}

pub fn lock(held: &HeldMap) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
    held.tasks.lock().unwrap_or_else(|e| e.into_inner())
}

/// Takes tasks for `agent`, one slot at a time, until aborted.
#[allow(clippy::too_many_arguments)]
async fn pull_loop(
    conn: Connection,
    cluster: Cluster,
    root: Arc<std::path::Path>,
    every: Arc<std::sync::atomic::AtomicU64>,
    agent: String,
    agents: tokio::sync::watch::Receiver<Vec<String>>,
    slots: Arc<Semaphore>,
    held: HeldMap,
    to_engine: Arc<dyn Fn(ToEngine) + Send + Sync>,
) {
    let config = pull::Config {
        durable_name: Some(consumer_for(&agent)),
        filter_subject: filter_for(&agent),
        ack_policy: AckPolicy::Explicit,
        ack_wait: cluster.ack_wait,
        max_deliver: -1,
        max_ack_pending: 10_000,
        ..Default::default()
    };
    let mut delay = Duration::from_millis(250);
    let mut consumer = loop {
        match conn
            .tasks
            .get_or_create_consumer(&consumer_for(&agent), config.clone())
            .await
        {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(agent, "cannot pull the fleet's tasks: {e}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    };
    // The consumer may have been made by another worker, with its own ack wait.
    let server_wait = match consumer.info().await {
        Ok(info) => info.config.ack_wait,
        Err(_) => cluster.ack_wait,
    };
    if server_wait != cluster.ack_wait {
        tracing::warn!(
            agent,
            "the fleet's consumer `{}` waits {}s for an acknowledgement (the worker that made it chose that), not this config's {}s; this worker says \"in progress\" within {}s",
            consumer_for(&agent),
            server_wait.as_secs_f64(),
            cluster.ack_wait.as_secs_f64(),
            server_wait.as_secs_f64()
        );
    }
    every.fetch_min(
        (server_wait / 3).as_millis() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    loop {
        // No longer an agent of this node (a config reload): it pulls no more.
        if !agents.borrow().contains(&agent) {
            tracing::info!(agent, "no longer pulling the fleet's tasks for this agent");
            return;
        }
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let batch = consumer
            .fetch()
            .max_messages(1)
            .expires(PULL_WAIT)
            .messages()
            .await;
        let mut batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(agent, "cannot pull the fleet's tasks: {e}");
                drop(slot);
                tokio::time::sleep(PULL_WAIT).await;
                continue;
            }
        };
        let mut slot = Some(slot);
        let mut busy = false;
        while let Some(msg) = batch.next().await {
            match msg {
                Ok(msg) => {
                    if let Some(s) = slot.take() {
                        busy = take(&conn, &root, &cluster, msg, s, &held, &*to_engine).await;
                    } else {
                        // More than asked for: the next pull takes it.
                        let _ = msg.ack_with(AckKind::Nak(None)).await;
                    }
                }
                Err(e) => tracing::debug!(agent, "a pull from the fleet's queue failed: {e}"),
            }
        }
        // The engine cannot take tasks now (paused, stopping): pulling again at once would
        // only hand task after task back.
        if busy {
            tokio::time::sleep(BUSY_AGAIN_IN).await;
        }
    }
}

/// How many times a task not signed by its node is offered before it is dropped (30 s apart).
const UNSIGNED_TRIES: i64 = 10;

/// One delivery: a task taken, a repeat of one in hand or already settled, or unreadable.
/// Returns whether the engine was too busy to take it (paused, stopping).
async fn take(
    conn: &Connection,
    root: &std::path::Path,
    cluster: &Cluster,
    msg: Message,
    slot: OwnedSemaphorePermit,
    held: &HeldMap,
    to_engine: &(dyn Fn(ToEngine) + Send + Sync),
) -> bool {
    let queued: QueuedTask = match serde_json::from_slice(&msg.payload) {
        Ok(q) => q,
        Err(e) => {
            // Never delivered again: it would fail the same way on every worker.
            tracing::warn!(subject = %msg.subject, "a message on the fleet's queue is not a task ({e}); it is dropped");
            let _ = msg.ack_with(AckKind::Term).await;
            return false;
        }
    };
    if !queued.well_formed() {
        // Its key could never be written: dropped, as an unreadable message is.
        tracing::warn!(subject = %msg.subject, node = %queued.node, task = %queued.spec.id, "a message on the fleet's queue does not name a node and a task as keys need; it is dropped");
        let _ = msg.ack_with(AckKind::Term).await;
        return false;
    }
    // The node in the task is the one whose subject it came on: the server's permissions tie a
    // subject to its publisher, so a node cannot pass its task off as another's (whose outcome
    // it would then claim, or whose repository it would name).
    if super::node_of_subject(&msg.subject) != Some(queued.node.as_str()) {
        tracing::warn!(subject = %msg.subject, node = %queued.node, task = %queued.spec.id, "a task names a node other than the one whose subject it came on; it is dropped");
        let _ = msg.ack_with(AckKind::Term).await;
        return false;
    }
    // With a roster, the task must be signed by its node: the server can be made to write onto
    // any node's subject (a request's reply subject is not held to permissions).
    if let Some(signing) = conn.signing.as_deref() {
        let context = format!("task {}", msg.subject);
        if !signing.signed_by(&queued.node, msg.headers.as_ref(), &context, &msg.payload) {
            // Offered again for a while (a roster being updated node by node), then dropped:
            // a forged task would otherwise come back for ever.
            let delivered = msg.info().map_or(1, |i| i.delivered);
            if delivered < UNSIGNED_TRIES {
                conn.not_taken(format!(
                    "a task `{}` of `{}` on `{}` not signed by its node (is the roster the same on every node?); offered again in 30 s ({delivered} of {UNSIGNED_TRIES})",
                    queued.spec.id, queued.node, msg.subject
                ));
                let _ = msg
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(30))))
                    .await;
            } else {
                conn.not_taken(format!(
                    "a task `{}` of `{}` on `{}` not signed by its node, offered {delivered} times; dropped",
                    queued.spec.id, queued.node, msg.subject
                ));
                let _ = msg.ack_with(AckKind::Term).await;
            }
            return false;
        }
    }
    let key = queued.key();
    let delivered = msg.info().map_or(1, |i| i.delivered);
    // A delivery again (or a publish repeated after the server's duplicate window): settled by
    // another worker already? Then acknowledge and do nothing. A first delivery is not asked
    // about, to keep a round trip off every task; its outcome's create-if-absent still decides.
    // With a roster every delivery is asked: a signed task can be echoed onto the queue again
    // (a first delivery then), and must not run twice. A task older than its outcome is kept
    // is not taken at all (its outcome may be gone, so it could not be told from a new one).
    if conn.signing.is_some()
        && crate::ledger::now_ms().saturating_sub(queued.received_ms)
            > super::connect::OUTCOME_AGE.as_millis() as u64 - 24 * 3600 * 1000
    {
        tracing::warn!(key, "a task older than the fleet keeps outcomes; dropped");
        let _ = msg.ack_with(AckKind::Term).await;
        return false;
    }
    if (delivered > 1 || conn.signing.is_some())
        && super::stored_outcome(conn, &key).await.is_some()
    {
        tracing::info!(key, "the fleet already has this task's outcome; dropped");
        let _ = msg.double_ack().await;
        return false;
    }
    let (_, acker) = msg.split();
    let acker = Arc::new(acker);
    // A first fetch of a large repository can outlast the ack wait: the server is told the
    // task is in progress meanwhile, so it is not given to another worker.
    let ready = {
        let fetch = ready_edit(root, cluster, &queued);
        tokio::pin!(fetch);
        loop {
            tokio::select! {
                r = &mut fetch => break r,
                () = tokio::time::sleep(Duration::from_secs(1)) => {
                    let _ = acker.ack_with(AckKind::Progress).await;
                }
            }
        }
    };
    let answer = match ready {
        // Not a repository this worker edits, or one it cannot reach: as a refusal by its
        // engine, the task goes back for another worker.
        Err(reason) => Ok(Taken::Refused(reason)),
        Ok(edit) => {
            let (reply, answer) = oneshot::channel();
            to_engine(ToEngine::Run {
                queued: Box::new(queued),
                edit,
                reply,
            });
            answer.await
        }
    };
    match answer {
        Ok(Taken::Runs { task }) => {
            let _ = acker.ack_with(AckKind::Progress).await;
            // A repeat of a delivery in hand replaces it: the newest is the one to acknowledge.
            lock(held).insert(
                key,
                Held {
                    acker,
                    task,
                    _slot: slot,
                },
            );
            held.taken.notify_one();
        }
        Ok(Taken::Ended { task, end }) => {
            lock(held).insert(
                key.clone(),
                Held {
                    acker,
                    task: task.clone(),
                    _slot: slot,
                },
            );
            claim_and_ack(
                conn,
                root,
                cluster,
                held,
                Settled { key, task, end },
                to_engine,
            )
            .await;
        }
        // Refused again and again (by this worker or others): the fleet says so to its node
        // instead of passing it round for ever.
        Ok(Taken::Refused(reason)) if delivered >= MAX_REFUSALS => {
            tracing::warn!(
                key,
                "cannot run the fleet's task here: {reason}; refused {delivered} times, it escalates"
            );
            lock(held).insert(
                key.clone(),
                Held {
                    acker,
                    task: String::new(),
                    _slot: slot,
                },
            );
            let end = End::Escalated {
                reason: format!(
                    "refused by the fleet's workers {delivered} times; the last said: {reason}"
                ),
                attempts: 0,
            };
            claim_and_ack(
                conn,
                root,
                cluster,
                held,
                Settled {
                    key,
                    task: String::new(),
                    end,
                },
                to_engine,
            )
            .await;
        }
        Ok(Taken::Refused(reason)) => {
            tracing::warn!(
                key,
                "cannot run the fleet's task here: {reason}; handed back"
            );
            let _ = acker.ack_with(AckKind::Nak(Some(REFUSED_AGAIN_IN))).await;
        }
        Ok(Taken::Busy(why)) => {
            tracing::info!(key, "not taking the fleet's task now: {why}; handed back");
            let _ = acker.ack_with(AckKind::Nak(Some(BUSY_AGAIN_IN))).await;
            return true;
        }
        // The engine is stopping: the server gives it to another worker.
        Err(_) => {
            let _ = acker
                .ack_with(AckKind::Nak(Some(HANDED_BACK_AGAIN_IN)))
                .await;
        }
    }
    false
}

/// An editing task's repository checked against this worker's `cluster.repositories` and
/// its base fetched into the worker's cache (`None`: not an editing task).
async fn ready_edit(
    root: &std::path::Path,
    cluster: &Cluster,
    queued: &QueuedTask,
) -> Result<Option<Box<edits::EditHere>>, String> {
    let Some(job) = &queued.edit else {
        return Ok(None);
    };
    let source = edits::allows(&cluster.repositories, &job.repository)?;
    if !edits::valid_inside(&job.inside) {
        return Err(format!(
            "its place in the repository, `{}`, is not a plain relative path",
            job.inside
        ));
    }
    let branch = edits::branch_name(&cluster.name, &queued.node, &queued.spec.id, queued.round)
        .ok_or_else(|| format!("`{}` cannot be part of a branch name", queued.spec.id))?;
    let (root2, base) = (root.to_path_buf(), job.base.clone());
    let cache =
        tokio::task::spawn_blocking(move || edits::fetch_into_cache(&root2, &source, &base))
            .await
            .map_err(|e| e.to_string())??;
    Ok(Some(Box::new(edits::EditHere {
        repository: job.repository.clone(),
        base: job.base.clone(),
        cache,
        branch,
        inside: job.inside.clone(),
    })))
}

/// Claims the outcome (create-if-absent: the first worker's stands), tells the engine, then
/// acknowledges the message. Tried again while the server is away; the message stays in hand
/// (and in progress) meanwhile.
async fn claim_and_ack(
    conn: &Connection,
    root: &std::path::Path,
    cluster: &Cluster,
    held: &HeldMap,
    s: Settled,
    to_engine: &(dyn Fn(ToEngine) + Send + Sync),
) {
    let mut end = s.end;
    super::delivery::carry_result(conn, root, &s.key, &mut end).await;
    let pushed =
        super::delivery::deliver_work(conn, root, &cluster.repositories, &s.key, &mut end).await;
    let outcome = Outcome {
        worker: cluster.name.clone(),
        end,
    };
    let value = super::delivery::fit(conn, &s.key, outcome).await;
    let mut delay = Duration::from_millis(250);
    let won = loop {
        match super::claim_outcome(conn, &s.key, value.clone()).await {
            super::Claim::Won => break true,
            super::Claim::Lost => break false,
            // Not a key the bucket takes (checked when the task was taken; kept as a guard):
            // trying again would hold the message and its slot for ever.
            super::Claim::InvalidKey(e) => {
                tracing::warn!(task = %s.task, key = %s.key, "the outcome's key is not one the fleet takes ({e}); the task is dropped");
                let h = lock(held).remove(&s.key);
                if let Some(h) = h {
                    let _ = h.acker.ack_with(AckKind::Term).await;
                }
                return;
            }
            super::Claim::Failed(e) => {
                tracing::warn!(task = %s.task, "cannot record the outcome in the fleet ({e}); trying again");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    };
    if !won {
        tracing::warn!(
            task = %s.task,
            key = %s.key,
            "another worker's outcome for this task stood first; this one is a duplicate"
        );
        // Its pushed branch would only confuse: the winner's is the task's work.
        if let Some((cache, source, branch)) = pushed {
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = edits::withdraw(&cache, &source, &branch) {
                    tracing::warn!(branch, "cannot delete the duplicate's pushed branch: {e}");
                }
            })
            .await;
        }
    }
    // A task refused here never ran as a task of this node: nothing to record.
    if !s.task.is_empty() {
        to_engine(ToEngine::Claimed {
            task: s.task.clone(),
            key: s.key.clone(),
            won,
        });
    }
    let h = lock(held).remove(&s.key);
    if let Some(h) = h
        && let Err(e) = h.acker.double_ack().await
    {
        // Delivered again later, the repeat finds the outcome and is dropped.
        tracing::debug!(task = %s.task, "the acknowledgement was not confirmed: {e}");
    }
}
