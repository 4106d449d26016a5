//! Fleet mode: several daemons share one queue of tasks on a NATS JetStream server
//! (`cluster:` in the config; docs/cluster.md). Without that section none of this runs.
//!
//! Flow, for a task submitted on node A and run on worker B:
//! 1. A's engine accepts the task exactly as on one machine (`task::accept`, `received`), then
//!    hands it here instead of queueing it: [`submitter`] publishes it to the work-queue stream
//!    under `dirigent.tasks.<agent>.<node>` (the first agent of its chain), with the message id
//!    `A.<id>` so a publish repeated after a crash is dropped by the server, and A records
//!    `published`.
//! 2. B's [`worker`] pulls only the subjects of agents B can run, through one durable consumer
//!    per agent that every worker with that agent shares. It gives the task to B's engine,
//!    which records `received` + `fleet_taken` and runs it like any other. While it runs, the
//!    worker tells the server "in progress" well within the ack wait.
//! 3. When B's engine has settled the task (its record durable), the worker claims the outcome
//!    with a create-if-absent in the outcomes bucket under `A.<id>` — the one compare-and-set
//!    that makes the outcome exactly one across the fleet — records `fleet_settled`, and only
//!    then acknowledges the message. A worker that dies before that leaves the message to be
//!    delivered again after the ack wait; one that was only cut off and comes back late finds
//!    the key taken and records its result as a duplicate.
//! 4. A watches the outcomes under `A.>` and settles its task from the one it finds: `ran_on`,
//!    then `done` (the result written to A's outbox) or `escalated`.
//!
//! Attempts are at least once; outcomes are exactly once.
//!
//! The engine owns all task state; this module owns the connection. They talk in typed
//! messages: [`ToFleet`] from the engine, [`ToEngine`] back.

pub mod connect;
mod delivery;
pub mod edits;
pub mod events;
pub mod heartbeat;
pub mod permissions;
pub mod signing;
pub mod stewardship;
pub mod submitter;
pub mod worker;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::config::cluster::Cluster;
use crate::task::TaskSpec;

/// The work-queue stream every task of the fleet goes through.
pub const TASKS_STREAM: &str = "DIRIGENT_TASKS";
/// The subjects of [`TASKS_STREAM`]: one per agent.
pub const TASKS_SUBJECTS: &str = "dirigent.tasks.>";
/// The bucket of outcomes, one key per task (`NODE.ID`), each written once.
pub const OUTCOMES_BUCKET: &str = "dirigent_outcomes";
/// The bucket of the fleet's latest word on each provider (cooling down, disabled, enabled).
pub const PROVIDERS_BUCKET: &str = "dirigent_providers";
/// The bucket of each worker's starts per provider in the last minute (`PROVIDER.WORKER`).
pub const STARTS_BUCKET: &str = "dirigent_starts";
/// The bucket of heartbeats, one key per worker.
pub const WORKERS_BUCKET: &str = "dirigent_workers";
/// The object store results larger than [`INLINE_RESULT_BYTES`] go through, by key.
pub const RESULTS_BUCKET: &str = "dirigent_results";
/// Results up to this size travel in the outcome itself.
pub const INLINE_RESULT_BYTES: usize = 64 * 1024;
/// The largest result the fleet carries (through the object store); a larger one stays on the
/// worker, and the outcome says where.
pub const MAX_RESULT_BYTES: usize = 64 * 1024 * 1024;

/// The subject a task for `agent`, published by `node`, goes on:
/// `dirigent.tasks.<agent>.<node>`. The node's token lets the server's permissions tie a
/// publisher to its own subjects (docs/cluster.md, "Permissions"), and a worker drops a task
/// whose `node` is not its subject's. Agent names may hold dots, which split NATS subjects;
/// `~` is outside the names' alphabet, so the mapping stays one to one.
pub fn subject_for(agent: &str, node: &str) -> String {
    format!("dirigent.tasks.{}.{node}", agent.replace('.', "~"))
}

/// What a worker pulls for `agent`: its tasks from every node.
pub fn filter_for(agent: &str) -> String {
    format!("dirigent.tasks.{}.*", agent.replace('.', "~"))
}

/// The agent a subject of [`subject_for`] is for (also of the older `dirigent.tasks.<agent>`
/// that ledgers written before the node's token may hold).
pub fn agent_of_subject(subject: &str) -> String {
    let rest = subject.strip_prefix("dirigent.tasks.").unwrap_or(subject);
    rest.split('.').next().unwrap_or(rest).replace('~', ".")
}

/// The node a subject of [`subject_for`] was published by (`None`: not of that form).
pub fn node_of_subject(subject: &str) -> Option<&str> {
    let rest = subject.strip_prefix("dirigent.tasks.")?;
    match rest.split('.').collect::<Vec<_>>()[..] {
        [agent, node] if !agent.is_empty() && !node.is_empty() => Some(node),
        _ => None,
    }
}

/// The durable consumer every worker that runs `agent` pulls through. (`pull-`, not the
/// `work-` of builds before the node's token: that consumer's filter matches no subject now,
/// and a work-queue stream allows the two side by side.)
pub fn consumer_for(agent: &str) -> String {
    format!("pull-{}", agent.replace('.', "~"))
}

/// SHA-256 of `bytes`, in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The subject `node` tells the workers on that it cancelled a task (core NATS).
pub fn cancel_subject(node: &str) -> String {
    format!("dirigent.cancel.{node}")
}

/// What a worker listens to for cancels: every node's.
pub const CANCEL_SUBJECTS: &str = "dirigent.cancel.*";

/// The prefix of `node`'s reply subjects: its own, so the server's permissions can let each
/// node read only the replies meant for it (a shared `_INBOX.>` would let one node read the
/// tasks the server hands to another).
pub fn inbox_prefix(node: &str) -> String {
    format!("_INBOX_{node}")
}

/// A task's key in the fleet: the node that accepted it, its id there, once retried the round
/// (`/rN`), and the time its node received it (`=MS`) — `NODE.ID[/rN]=MS`. `/` and `=` are
/// outside ids' alphabet and allowed in bucket keys. The time tells apart two tasks of one id:
/// one of a workspace made again under the same node name, or of two nodes given one name.
pub fn key_of(node: &str, id: &str, round: u32, received_ms: u64) -> String {
    match round {
        0 => format!("{node}.{id}={received_ms}"),
        n => format!("{node}.{id}/r{n}={received_ms}"),
    }
}

/// The id, round and time in what follows `NODE.` in a key (`None`: not a key of this form).
pub fn parse_key_rest(rest: &str) -> Option<(&str, u32, u64)> {
    let (rest, received_ms) = rest.rsplit_once('=')?;
    let received_ms = received_ms.parse().ok()?;
    match rest.rsplit_once("/r") {
        Some((id, n)) => Some((id, n.parse().ok().filter(|n| *n > 0)?, received_ms)),
        None => Some((rest, 0, received_ms)),
    }
}

/// Whether `key` can be a key of the outcomes bucket (and a NATS subject token sequence).
pub fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with('.')
        && !key.ends_with('.')
        && !key.contains("..")
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '=' | '/' | '.'))
}

/// What goes on the queue: the task as its node accepted it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueuedTask {
    /// The node that accepted it (its outcome goes back there).
    pub node: String,
    pub spec: TaskSpec,
    /// 0, then one more per `dirigent retry` on its node.
    #[serde(default)]
    pub round: u32,
    /// When its node received it (Unix ms; part of its key).
    #[serde(default)]
    pub received_ms: u64,
    /// An editing task: its repository and base commit (`edits.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edit: Option<edits::EditJob>,
}

impl QueuedTask {
    pub fn key(&self) -> String {
        key_of(&self.node, &self.spec.id, self.round, self.received_ms)
    }

    /// Whether it names its node and itself as the fleet's keys need: a node name (no dot)
    /// and a task id of the names' alphabet. A message that does not is not a task of ours.
    pub fn well_formed(&self) -> bool {
        crate::config::validate_name(&self.node).is_ok()
            && !self.node.contains('.')
            && crate::config::validate_name(&self.spec.id).is_ok()
            && valid_key(&self.key())
    }
}

/// An outcome as the bucket holds it under `key`, checked: with a roster, signed by a node of
/// it — the worker it names, or for a cancel the task's own node. `Err`: why it is not taken.
pub fn read_outcome(
    signing: Option<&signing::Signing>,
    key: &str,
    value: &[u8],
) -> Result<Outcome, String> {
    let (signer, body) = signing::open(signing, &format!("outcome {key}"), value)?;
    let outcome: Outcome = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if let (Some(signer), Some(signing)) = (signer, signing) {
        let node = key.split('.').next().unwrap_or("");
        if outcome.end == End::Cancelled && signer != node {
            return Err(format!(
                "a cancel signed by `{signer}`, not by the task's node"
            ));
        }
        // A task's end comes from a node the roster lets work, for an agent it runs.
        let works = signing.works(&signer).unwrap_or(&signing::Works::No);
        match (&outcome.end, works) {
            (End::Cancelled, _) => {}
            (_, signing::Works::No) => {
                return Err(format!(
                    "signed by `{signer}`, which the roster does not let work"
                ));
            }
            (End::Done { agent, .. }, signing::Works::Agents(agents))
                if !agents
                    .iter()
                    .any(|a| a == crate::config::split_entry(agent).0) =>
            {
                return Err(format!(
                    "signed by `{signer}` for the agent `{agent}`, which the roster does not give it"
                ));
            }
            _ => {}
        }
        if signer != outcome.worker {
            return Err(format!(
                "signed by `{signer}` but names the worker `{}`",
                outcome.worker
            ));
        }
    }
    Ok(outcome)
}

/// The outcome the bucket holds for `key`, if it holds one this node takes.
pub async fn stored_outcome(conn: &connect::Connection, key: &str) -> Option<Outcome> {
    let value = conn.outcomes.get(key).await.ok()??;
    read_outcome(conn.signing.as_deref(), key, &value).ok()
}

/// What claiming an outcome came to.
#[derive(Debug)]
pub enum Claim {
    /// This one stands.
    Won,
    /// Another valid outcome stood first.
    Lost,
    /// The key is not one the bucket takes.
    InvalidKey(String),
    /// The server did not answer as it should (try again).
    Failed(String),
}

/// Claims `key` with `outcome` (sealed here): create-if-absent, the one compare-and-set that
/// makes an outcome exactly one across the fleet. A value there that this node would not take
/// (not signed by a node of the roster, or not an outcome) does not stand: it is replaced,
/// again only if nothing changed it meanwhile.
pub async fn claim_outcome(conn: &connect::Connection, key: &str, outcome: Vec<u8>) -> Claim {
    use async_nats::jetstream::kv::CreateErrorKind;
    let value: bytes::Bytes =
        signing::seal(conn.signing.as_deref(), &format!("outcome {key}"), outcome).into();
    match conn.outcomes.create(key, value.clone()).await {
        Ok(_) => Claim::Won,
        Err(e) if e.kind() == CreateErrorKind::InvalidKey => Claim::InvalidKey(e.to_string()),
        Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
            let entry = match conn.outcomes.entry(key).await {
                Ok(Some(entry)) => entry,
                Ok(None) => return Claim::Failed("the outcome went away".into()),
                Err(e) => return Claim::Failed(e.to_string()),
            };
            match read_outcome(conn.signing.as_deref(), key, &entry.value) {
                // Without a roster nothing can be told apart: the first value stands, as
                // before (a node of a newer build may write what this one cannot read).
                Ok(_) => Claim::Lost,
                Err(_) if conn.signing.is_none() => Claim::Lost,
                Err(why) => {
                    tracing::warn!(
                        key,
                        "the bucket held an outcome this node does not take ({why}); it is replaced"
                    );
                    match conn.outcomes.update(key, value, entry.revision).await {
                        Ok(_) => Claim::Won,
                        Err(e) => Claim::Failed(e.to_string()),
                    }
                }
            }
        }
        Err(e) => Claim::Failed(e.to_string()),
    }
}

/// How a task of the fleet ended, as its worker claims it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Outcome {
    /// The worker that ran it.
    pub worker: String,
    #[serde(flatten)]
    pub end: End,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum End {
    Done {
        agent: String,
        attempt: u32,
        /// The result text, when it is small; `truncated` says it could not be carried whole.
        #[serde(default)]
        text: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        truncated: bool,
        /// The result's name in the results object store, when it is too large to travel here.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        object: Option<String>,
        /// The SHA-256 (hex) of that object's bytes: the outcome is signed, the object store's
        /// own records are not, so the node checks what it reads against this.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        object_sha256: Option<String>,
        /// On the worker, before the outcome is claimed: where its engine wrote the result
        /// (workspace-relative). Never sent.
        #[serde(skip)]
        local_output: Option<String>,
        /// An editing task's work: its branch and commit, and how it travels.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        work: Option<Box<edits::Work>>,
        /// On the worker, before the outcome is claimed: where the work is and goes. Never
        /// sent.
        #[serde(skip)]
        deliver: Option<Box<edits::EditHere>>,
    },
    Escalated {
        reason: String,
        attempts: u32,
    },
    /// Its node cancelled it (the outcome is the node's own; a worker's later one is a
    /// duplicate).
    Cancelled,
}

/// From the engine to this module.
#[derive(Debug)]
pub enum ToFleet {
    /// Put an accepted task on the queue (the engine records `published` when told it is).
    Publish {
        spec: Arc<TaskSpec>,
        round: u32,
        received_ms: u64,
        /// An editing task: what its base commit is resolved from.
        edit: Option<Box<EditAsk>>,
    },
    /// A task taken off the queue has settled here: claim its outcome, then acknowledge it.
    Settled { key: String, task: String, end: End },
    /// An attempt started here on `provider`, which has a `starts_per_minute` window: every
    /// worker counts it.
    Started { provider: String },
    /// A task taken off the queue ended here without an outcome (cancelled here): it goes
    /// back to the queue for another worker — unless its node cancelled it.
    HandBack { key: String },
    /// A task published here was cancelled here: taken off the queue if it waits there, its
    /// outcome claimed as cancelled, and the worker that runs it told.
    Cancel { key: String, seq: u64 },
    /// The agents this node can run changed (a config reload, an agent installed): the worker
    /// pulls for those and its heartbeat says so.
    Agents(Vec<String>),
}

/// An editing task to publish: the repository workers reach (`cluster.repository`), the
/// repository here, and what names its base.
#[derive(Debug, Clone)]
pub struct EditAsk {
    pub repository: String,
    pub here: std::path::PathBuf,
    pub base: Option<String>,
    pub merge_into: Option<String>,
    /// Where the workspace is inside the repository (`""` at its top).
    pub inside: String,
}

/// From this module to the engine.
#[derive(Debug)]
pub enum ToEngine {
    /// The server has the task: record `published`.
    Published {
        task: String,
        subject: String,
        round: u32,
        /// Its message's sequence in the stream.
        seq: u64,
        /// An editing task: the base commit it was published with.
        base: Option<String>,
    },
    /// Run a task of the fleet here. The answer is what the worker does with the message.
    Run {
        queued: Box<QueuedTask>,
        /// An editing task: its base fetched into this worker's cache, and its branch.
        edit: Option<Box<edits::EditHere>>,
        reply: oneshot::Sender<Taken>,
    },
    /// An outcome claimed for one of this node's tasks.
    Outcome {
        task: String,
        round: u32,
        received_ms: u64,
        outcome: Outcome,
    },
    /// The task can never go on the queue (its message would be larger than the server
    /// takes): it escalates with `reason`.
    Unpublishable { task: String, reason: String },
    /// Another worker's word on a provider.
    Provider(stewardship::Word),
    /// Another worker's starts on a provider within the last minute (Unix ms, its clock).
    Starts {
        worker: String,
        provider: String,
        at_ms: Vec<u64>,
    },
    /// Its node cancelled a task taken here: stop it (it settles cancelled here).
    Cancel { task: String },
    /// The outcome of a taken task is claimed (`won`) or was another worker's.
    Claimed {
        task: String,
        key: String,
        won: bool,
    },
}

/// What the engine did with a task of the fleet.
#[derive(Debug)]
pub enum Taken {
    /// It runs (or already runs) here as `task`.
    Runs { task: String },
    /// It already ended here (a delivery repeated after this worker settled it).
    Ended { task: String, end: End },
    /// It cannot run here, ever (this node's rules say no); the worker hands it back, and
    /// after enough refusals its node is told it escalated.
    Refused(String),
    /// It cannot run here now (this worker is stopping or paused); the worker hands it back.
    Busy(String),
}

/// The engine's end of the link: what it sends here. Held by the engine; dropping it (the
/// engine stopping) makes the worker hand back what it holds and end.
#[derive(Clone)]
pub struct Link {
    pub to_fleet: mpsc::UnboundedSender<ToFleet>,
    /// This node's name in the fleet.
    pub node: String,
    /// Whether this node takes tasks off the queue.
    pub works: bool,
    /// What this node knows of the fleet (for `status`), kept by the fleet component.
    pub view: heartbeat::SharedView,
    /// The server's address, for `status`.
    pub url: String,
    /// Where workers reach this node's repository (`cluster.repository`): editing tasks go
    /// to the fleet only with it.
    pub repository: Option<String>,
    /// Every node's tasks, folded from the events stream (`status --fleet`).
    pub books: events::FleetBooks,
    /// The connection, once made (set by the fleet component; read by the doors that follow
    /// the fleet's events).
    pub conn: ConnCell,
}

/// The fleet's connection, set once it is first made.
pub type ConnCell = Arc<std::sync::OnceLock<connect::Connection>>;

/// The running fleet component: wait for it after the engine stopped.
pub struct Running {
    handle: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Waits until the worker has handed back what it held.
    pub async fn join(self) {
        let _ = self.handle.await;
    }
}

/// Starts the fleet component for `cluster`. `agents` are the agents this node can run (its
/// capabilities), `slots` how many tasks of the fleet it holds at once (its `concurrency`);
/// `to_engine` delivers messages to the engine.
pub fn start(
    cluster: Cluster,
    root: std::path::PathBuf,
    agents: Vec<String>,
    slots: usize,
    live: &tokio::sync::broadcast::Sender<crate::ledger::LiveRecord>,
    to_engine: Arc<dyn Fn(ToEngine) + Send + Sync>,
) -> (Link, Running) {
    // Subscribed now, before the engine writes anything more.
    let live = (live.subscribe(), live.subscribe());
    let (tx, rx) = mpsc::unbounded_channel();
    let view = heartbeat::SharedView::default();
    heartbeat::lock(&view).problem = Some(format!("connecting to {}", cluster.url));
    let link = Link {
        to_fleet: tx,
        node: cluster.name.clone(),
        works: cluster.work,
        view: view.clone(),
        url: cluster.url.clone(),
        repository: cluster.repository.clone(),
        books: events::FleetBooks::default(),
        conn: ConnCell::default(),
    };
    let books = link.books.clone();
    let cell = link.conn.clone();
    let handle = tokio::spawn(run(
        cluster, root, agents, slots, live, rx, to_engine, view, books, cell,
    ));
    (link, Running { handle })
}

/// Connects (again and again while the server is away), then runs the submitter and worker
/// halves until the engine drops its end of the link.
#[allow(clippy::too_many_arguments)]
async fn run(
    cluster: Cluster,
    root: std::path::PathBuf,
    agents: Vec<String>,
    slots: usize,
    live: (
        tokio::sync::broadcast::Receiver<crate::ledger::LiveRecord>,
        tokio::sync::broadcast::Receiver<crate::ledger::LiveRecord>,
    ),
    mut rx: mpsc::UnboundedReceiver<ToFleet>,
    to_engine: Arc<dyn Fn(ToEngine) + Send + Sync>,
    view: heartbeat::SharedView,
    books: events::FleetBooks,
    cell: ConnCell,
) {
    let (live, live_events) = live;
    let conn = match connect::until_connected(&cluster, &mut rx, &view).await {
        Some(c) => c,
        None => return,
    };
    let _ = cell.set(conn.clone());
    {
        let mut v = heartbeat::lock(&view);
        v.connected = true;
        v.problem = None;
    }
    // Everything that runs as long as the node is in the fleet; aborted together at the end.
    let mut background = tokio::task::JoinSet::new();
    background.spawn(heartbeat::watch(
        conn.clone(),
        view.clone(),
        Some(cluster.name.clone()),
    ));
    background.spawn(heartbeat::health(conn.clone(), view.clone()));
    background.spawn(events::publish(
        conn.clone(),
        cluster.name.clone(),
        live_events,
    ));
    background.spawn(events::fold(conn.clone(), books));
    background.spawn(stewardship::share(conn.clone(), cluster.name.clone(), live));
    background.spawn(stewardship::listen(
        conn.clone(),
        cluster.name.clone(),
        to_engine.clone(),
    ));
    let held = worker::HeldMap::default();
    let instance = crate::confined::random_u64() | 1;
    heartbeat::lock(&view).instance = instance;
    let me = heartbeat::Heartbeat {
        name: cluster.name.clone(),
        agents: if cluster.work {
            agents.clone()
        } else {
            Vec::new()
        },
        running: 0,
        holding: Vec::new(),
        slots: if cluster.work { slots } else { 0 },
        at_ms: 0,
        version: env!("CARGO_PKG_VERSION").into(),
        spend_day: 0,
        spend: Default::default(),
        works: cluster.work,
        instance,
        left: false,
    };
    let in_hand = held.clone();
    // The agents it runs now; the engine says when they change.
    let (agents_tx, agents_rx) = tokio::sync::watch::channel(agents.clone());
    background.spawn(heartbeat::beat(
        conn.clone(),
        me.clone(),
        cluster.work.then(|| agents_rx.clone()),
        {
            let in_hand = in_hand.clone();
            move || worker::lock(&in_hand).keys().cloned().collect()
        },
        in_hand.taken.clone(),
        view.clone(),
    ));
    tracing::info!(
        url = %cluster.url,
        node = %cluster.name,
        agents = ?agents,
        "connected to the fleet"
    );
    if cluster.work && agents.is_empty() {
        tracing::warn!(
            "this node works for the fleet but none of its agents is installed: it takes no task (install one, or set `cluster.work: false`)"
        );
    }
    let (settled_tx, settled_rx) = mpsc::unbounded_channel();
    let (publish_tx, publish_rx) = mpsc::unbounded_channel();
    let (starts_tx, starts_rx) = mpsc::unbounded_channel();
    background.spawn(stewardship::count_starts(
        conn.clone(),
        cluster.name.clone(),
        starts_rx,
    ));
    background.spawn(stewardship::hear_starts(
        conn.clone(),
        cluster.name.clone(),
        to_engine.clone(),
    ));
    background.spawn(submitter::run(
        conn.clone(),
        cluster.name.clone(),
        root.clone(),
        publish_rx,
        to_engine.clone(),
    ));
    if cluster.work {
        stewardship::prime(&conn, &cluster.name, &*to_engine).await;
    }
    let worker = cluster.work.then(|| {
        tokio::spawn(worker::run(
            conn.clone(),
            cluster.clone(),
            root,
            agents_rx,
            slots,
            held,
            settled_rx,
            to_engine.clone(),
        ))
    });
    // Route the engine's messages to the half that handles them.
    while let Some(msg) = rx.recv().await {
        match msg {
            ToFleet::Publish {
                spec,
                round,
                received_ms,
                edit,
            } => {
                let _ = publish_tx.send((spec, round, received_ms, edit));
            }
            ToFleet::Settled { key, task, end } => {
                let _ = settled_tx.send(worker::FromEngine::Settled(worker::Settled {
                    key,
                    task,
                    end,
                }));
            }
            ToFleet::HandBack { key } => {
                let _ = settled_tx.send(worker::FromEngine::HandBack(key));
            }
            ToFleet::Cancel { key, seq } => {
                background.spawn(submitter::cancel(
                    conn.clone(),
                    cluster.name.clone(),
                    key,
                    seq,
                ));
            }
            ToFleet::Started { provider } => {
                let _ = starts_tx.send(provider);
            }
            ToFleet::Agents(now) => {
                if *agents_tx.borrow() != now {
                    tracing::info!(agents = ?now, "the agents this node runs for the fleet changed");
                    agents_tx.send_replace(now);
                }
            }
        }
    }
    // The engine stopped: the worker hands back what it holds, the submitter stops.
    drop(settled_tx);
    drop(publish_tx);
    if let Some(w) = worker {
        let _ = w.await;
    }
    background.shutdown().await;
    // Gone, said at once rather than by a heartbeat that stops coming — with what it spent
    // today, which still counts against the fleet's budgets.
    let (spend_day, spend) = heartbeat::lock(&view).own_spend.clone();
    let last = heartbeat::Heartbeat {
        left: true,
        at_ms: crate::ledger::now_ms(),
        running: 0,
        holding: Vec::new(),
        spend_day,
        spend,
        ..me
    };
    if let Ok(value) = serde_json::to_vec(&last) {
        let value = signing::seal(
            conn.signing.as_deref(),
            &format!("heartbeat {}", cluster.name),
            value,
        );
        let _ = conn.workers.put(&cluster.name, value.into()).await;
    }
    let _ = conn.client.flush().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outcome_counts_only_from_a_node_the_roster_lets_answer_for_it() {
        let pairs: Vec<(&str, nkeys::KeyPair, signing::Works)> = vec![
            ("desk", nkeys::KeyPair::new_user(), signing::Works::No),
            (
                "gpu",
                nkeys::KeyPair::new_user(),
                signing::Works::Agents(vec!["alpha".into()]),
            ),
            ("big", nkeys::KeyPair::new_user(), signing::Works::All),
        ];
        let roster: signing::Roster = pairs
            .iter()
            .map(|(n, k, w)| {
                (
                    n.to_string(),
                    signing::Member {
                        key: k.public_key(),
                        works: w.clone(),
                    },
                )
            })
            .collect();
        let node = |name: &str| {
            let (_, k, _) = pairs.iter().find(|(n, _, _)| *n == name).unwrap();
            signing::Signing::new(name, &k.seed().unwrap(), &roster).unwrap()
        };
        let reader = node("desk");
        let key = "desk.t=1";
        let done = |worker: &str, agent: &str| {
            format!(
                r#"{{"worker":"{worker}","state":"done","agent":"{agent}","attempt":1,"text":"x"}}"#
            )
        };
        let cancelled = |worker: &str| format!(r#"{{"worker":"{worker}","state":"cancelled"}}"#);
        let cases: Vec<(&str, String, Result<(), &str>)> = vec![
            ("gpu", done("gpu", "alpha"), Ok(())),
            ("gpu", done("gpu", "alpha:big-model"), Ok(())),
            ("big", done("big", "beta"), Ok(())),
            (
                "gpu",
                done("gpu", "beta"),
                Err("which the roster does not give it"),
            ),
            (
                "desk",
                done("desk", "alpha"),
                Err("which the roster does not let work"),
            ),
            ("desk", cancelled("desk"), Ok(())),
            ("gpu", cancelled("gpu"), Err("not by the task's node")),
            ("gpu", done("big", "alpha"), Err("names the worker `big`")),
        ];
        for (signer, body, want) in cases {
            let value = signing::seal(
                Some(&node(signer)),
                &format!("outcome {key}"),
                body.clone().into_bytes(),
            );
            let got = read_outcome(Some(&reader), key, &value);
            match (want, &got) {
                (Ok(()), Ok(_)) => {}
                (Err(why), Err(e)) => assert!(
                    e.contains(why),
                    "{signer} {body}: expected {why:?}, got {e:?}"
                ),
                _ => panic!("{signer} {body}: expected {want:?}, got {got:?}"),
            }
        }
        let unsigned = read_outcome(Some(&reader), key, done("gpu", "alpha").as_bytes());
        assert!(
            unsigned.is_err_and(|e| e.contains("not signed")),
            "an unsigned outcome is not taken with a roster"
        );
        assert!(
            read_outcome(None, key, done("gpu", "alpha").as_bytes()).is_ok(),
            "without a roster it is, as before"
        );
    }

    #[test]
    fn keys_name_the_node_the_task_its_round_and_when_it_was_received() {
        assert_eq!(
            key_of("desk", "t.1", 0, 5),
            "desk.t.1=5",
            "round 0 has no round"
        );
        assert_eq!(
            key_of("desk", "t.1", 2, 5),
            "desk.t.1/r2=5",
            "a retried round"
        );
        type Parsed<'a> = Option<(&'a str, u32, u64)>;
        let cases: &[(&str, Parsed)] = &[
            ("t.1=5", Some(("t.1", 0, 5))),
            ("t.1/r2=5", Some(("t.1", 2, 5))),
            ("t.1", None),
            ("t/r0=5", None),
            ("t/rx=5", None),
            ("t=x", None),
        ];
        for (rest, want) in cases {
            assert_eq!(parse_key_rest(rest), *want, "for {rest:?}");
        }
        for (key, valid) in [
            ("desk.t=5", true),
            ("bad node.t=5", false),
            ("a..b", false),
            (".a", false),
        ] {
            assert_eq!(valid_key(key), valid, "for {key:?}");
        }
        assert_eq!(
            subject_for("qwen.2", "desk"),
            "dirigent.tasks.qwen~2.desk",
            "dots cannot split the subject"
        );
        let subjects: &[(&str, &str, Option<&str>)] = &[
            ("dirigent.tasks.qwen~2.desk", "qwen.2", Some("desk")),
            ("dirigent.tasks.claude.w-1", "claude", Some("w-1")),
            // Written by builds before the node's token: the agent still reads.
            ("dirigent.tasks.claude", "claude", None),
            ("dirigent.tasks.claude.a.b", "claude", None),
            ("dirigent.tasks..desk", "", None),
            ("other.claude.desk", "other", None),
        ];
        for (subject, agent, node) in subjects {
            assert_eq!(agent_of_subject(subject), *agent, "agent of {subject:?}");
            assert_eq!(node_of_subject(subject), *node, "node of {subject:?}");
        }
    }
}
