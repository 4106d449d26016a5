//! The connection to the fleet's NATS server: options from `cluster:`, the first connection
//! (tried again with backoff while the server is away — the daemon runs meanwhile and its
//! fleet tasks wait), and the stream and bucket every node agrees on, made when missing.
//! After the first connection the client reconnects by itself.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};

use tokio::sync::mpsc;

use super::{
    OUTCOMES_BUCKET, PROVIDERS_BUCKET, RESULTS_BUCKET, STARTS_BUCKET, TASKS_STREAM, TASKS_SUBJECTS,
    ToFleet, WORKERS_BUCKET,
};
use crate::config::cluster::{Auth, Cluster};

/// How long the server keeps a publish's message id to drop a repeat: a node that crashed
/// between publishing and recording `published` publishes again when it starts.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(600);
/// How long an outcome is kept for its node to collect (a node away longer runs it again).
pub const OUTCOME_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long the fleet's events are kept, and how many bytes of them at most.
const EVENTS_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
const EVENTS_BYTES: i64 = 1024 * 1024 * 1024;
/// How long a gone worker's last heartbeat stays listed.
const WORKER_AGE: Duration = Duration::from_secs(24 * 3600);

/// The fleet's server, its stream and bucket: cheap to clone (handles).
#[derive(Clone)]
pub struct Connection {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub tasks: jetstream::stream::Stream,
    pub outcomes: kv::Store,
    /// Each worker's latest heartbeat.
    pub workers: kv::Store,
    /// The fleet's latest word on each provider.
    pub providers: kv::Store,
    /// Each worker's starts per provider in the last minute (`starts_per_minute` windows).
    pub starts: kv::Store,
    /// Every node's records (`dirigent.events.<node>`).
    pub events: jetstream::stream::Stream,
    /// Results too large for an outcome, by key.
    pub results: async_nats::jetstream::object_store::ObjectStore,
    /// With `cluster.nodes`: this node's key and the roster it checks messages against.
    pub signing: Option<std::sync::Arc<super::signing::Signing>>,
    /// What this node knows of the fleet, where what it did not take is kept for `fleet`.
    view: Option<super::heartbeat::SharedView>,
}

impl Connection {
    /// A message this node did not take (not signed as the roster says, or not readable):
    /// logged, and kept for `dirigent fleet` and `status` — rosters that differ between nodes
    /// show here first.
    pub fn not_taken(&self, what: String) {
        // It may quote another node's message: one line, of a bounded length.
        let what = crate::progress::one_line(&what, 400);
        tracing::warn!("{what}");
        if let Some(view) = &self.view {
            super::heartbeat::count_latest(&mut super::heartbeat::lock(view).not_taken, what);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot read the credentials for `{url}`: {cause}")]
    Credentials { url: String, cause: String },
    #[error("cannot reach the fleet's server at `{url}`: {cause}")]
    Connect { url: String, cause: String },
    #[error(
        "the fleet's server at `{url}` refused this node's credentials ({cause}): check `cluster.token`, `token_env`, `nkey` or `creds`, and the server's `authorization`"
    )]
    Refused { url: String, cause: String },
    #[error(
        "the fleet's server at `{url}` refused to set up JetStream (is it started with `-js`?): {cause}"
    )]
    JetStream { url: String, cause: String },
}

/// Connects and readies the stream and bucket, trying again (1 s, doubling to 30 s) until it
/// works or the engine lets go of the link (`None`).
pub async fn until_connected(
    cluster: &Cluster,
    rx: &mut mpsc::UnboundedReceiver<ToFleet>,
    view: &super::heartbeat::SharedView,
) -> Option<Connection> {
    let mut delay = Duration::from_secs(1);
    loop {
        match connect(cluster, Some(view)).await {
            Ok(c) => return Some(c),
            Err(e) => {
                tracing::warn!("{e}; trying again in {}s", delay.as_secs());
                super::heartbeat::lock(view).problem = Some(e.to_string());
            }
        }
        let until = tokio::time::Instant::now() + delay;
        while tokio::time::Instant::now() < until {
            if rx.is_closed() {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// One try. With `view`, what the server refuses this node (a permission it lacks) is kept
/// there for `status` and `dirigent fleet`, as well as logged.
pub async fn connect(
    cluster: &Cluster,
    view: Option<&super::heartbeat::SharedView>,
) -> Result<Connection, ConnectError> {
    let url = cluster.url.clone();
    let view = view.cloned();
    // The event callback's own handle on the view (the connection keeps the other).
    let refusals = view.clone();
    let mut signing = None;
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("dirigent {}", cluster.name))
        .custom_inbox_prefix(super::inbox_prefix(&cluster.name))
        .event_callback(move |event| {
            let view = refusals.clone();
            async move {
                if let async_nats::Event::ServerError(async_nats::ServerError::Other(what)) = event
                {
                    tracing::warn!("the fleet's server refused: {what}");
                    if let Some(view) = view {
                        super::heartbeat::count_latest(
                            &mut super::heartbeat::lock(&view).refused,
                            what,
                        );
                    }
                }
            }
        })
        .connection_timeout(Duration::from_secs(5));
    options = match &cluster.auth {
        Auth::None => options,
        Auth::Token(secret) => {
            let token = match secret {
                crate::config::notify::Secret::Given(t) => t.clone(),
                crate::config::notify::Secret::Env(var) => match std::env::var(var) {
                    Ok(t) if !t.is_empty() => t,
                    _ => {
                        return Err(ConnectError::Credentials {
                            url: url.clone(),
                            cause: format!(
                                "`cluster.token_env: {var}` names a variable the daemon's environment does not have (or is empty)"
                            ),
                        });
                    }
                },
            };
            options.token(token)
        }
        Auth::Creds(path) => {
            options
                .credentials_file(path)
                .await
                .map_err(|e| ConnectError::Credentials {
                    url: url.clone(),
                    cause: format!("`{}`: {e}", path.display()),
                })?
        }
        Auth::Nkey(path) => {
            let seed = std::fs::read_to_string(path).map_err(|e| ConnectError::Credentials {
                url: url.clone(),
                cause: format!("`{}`: {e}", path.display()),
            })?;
            if !cluster.nodes.is_empty() {
                signing = Some(std::sync::Arc::new(
                    super::signing::Signing::new(&cluster.name, &seed, &cluster.nodes).map_err(
                        |cause| ConnectError::Credentials {
                            url: url.clone(),
                            cause,
                        },
                    )?,
                ));
            }
            options.nkey(seed.trim().to_string())
        }
    };
    if let Some(tls) = &cluster.tls {
        options = options.require_tls(true);
        if let Some(ca) = &tls.ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &tls.client {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
    }
    let servers: Vec<&str> = cluster.url.split(',').map(str::trim).collect();
    let client = options.connect(servers.as_slice()).await.map_err(|e| {
        let cause = e.to_string();
        // Reached, and turned away: not a network problem, and retrying will not fix it.
        if cause
            .to_ascii_lowercase()
            .contains("authorization violation")
        {
            ConnectError::Refused {
                url: url.clone(),
                cause,
            }
        } else {
            ConnectError::Connect {
                url: url.clone(),
                cause,
            }
        }
    })?;
    let js = jetstream::new(client.clone());
    let js_err = |e: &dyn std::fmt::Display| ConnectError::JetStream {
        url: url.clone(),
        cause: e.to_string(),
    };
    let tasks = js
        .get_or_create_stream(stream::Config {
            name: TASKS_STREAM.into(),
            subjects: vec![TASKS_SUBJECTS.into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        })
        .await
        .map_err(|e| js_err(&e))?;
    let outcomes = bucket(
        &js,
        OUTCOMES_BUCKET,
        "dirigent: one outcome per task of the fleet",
        OUTCOME_AGE,
    )
    .await
    .map_err(|e| js_err(&e))?;
    let workers = bucket(
        &js,
        WORKERS_BUCKET,
        "dirigent: each worker's latest heartbeat",
        WORKER_AGE,
    )
    .await
    .map_err(|e| js_err(&e))?;
    let starts = bucket(
        &js,
        STARTS_BUCKET,
        "dirigent: each worker's starts per provider in the last minute",
        Duration::from_secs(3600),
    )
    .await
    .map_err(|e| js_err(&e))?;
    let providers = bucket(
        &js,
        PROVIDERS_BUCKET,
        "dirigent: the fleet's latest word on each provider",
        OUTCOME_AGE,
    )
    .await
    .map_err(|e| js_err(&e))?;
    let events = js
        .get_or_create_stream(stream::Config {
            name: super::events::EVENTS_STREAM.into(),
            subjects: vec![super::events::EVENTS_SUBJECTS.into()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age: EVENTS_AGE,
            max_bytes: EVENTS_BYTES,
            discard: stream::DiscardPolicy::Old,
            ..Default::default()
        })
        .await
        .map_err(|e| js_err(&e))?;
    let results = match js.get_object_store(RESULTS_BUCKET).await {
        Ok(store) => store,
        Err(_) => js
            .create_object_store(async_nats::jetstream::object_store::Config {
                bucket: RESULTS_BUCKET.into(),
                description: Some("dirigent: results too large for an outcome".into()),
                max_age: OUTCOME_AGE,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| js_err(&e))?,
    };
    Ok(Connection {
        starts,
        events,
        results,
        client,
        js,
        tasks,
        outcomes,
        workers,
        providers,
        signing,
        view,
    })
}

/// A key-value bucket, made when missing. Its stream is made here as the client library would
/// (`KV_<bucket>`, one message per key, deletes denied), without rollups: the library's own
/// `create_key_value` first asks for account fields that Debian's nats-server 2.9 does not send.
async fn bucket(
    js: &jetstream::Context,
    name: &str,
    description: &str,
    max_age: Duration,
) -> Result<kv::Store, async_nats::Error> {
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{name}"),
        description: Some(description.into()),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage: stream::StorageType::File,
        // No rollups: a rollup on a node's own key would empty every node's keys, and the
        // server's permissions could not stop it. (A bucket made by an earlier build keeps
        // them until `nats stream edit KV_<bucket> --no-allow-rollup`.)
        allow_rollup: false,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        num_replicas: 1,
        ..Default::default()
    })
    .await?;
    Ok(js.get_key_value(name).await?)
}
