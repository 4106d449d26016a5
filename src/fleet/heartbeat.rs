//! Who is in the fleet: each worker puts a heartbeat (its name, agents, tasks in hand) into
//! the workers bucket every [`BEAT_EVERY`]; every node watches the bucket and keeps the
//! [`View`] that `status` and `dirigent fleet` show — and from which a node tells that no live
//! worker runs an agent its tasks wait for, instead of letting them wait silently.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::connect::Connection;

/// How often a worker says it is there.
pub const BEAT_EVERY: Duration = Duration::from_secs(5);
/// The shortest time between two heartbeats (one follows a task taken in hand this soon).
pub const BEAT_SOONEST: Duration = Duration::from_millis(500);
/// A worker not heard from for this long is not counted as live.
pub const LIVE_FOR: Duration = Duration::from_secs(15);

/// One worker's heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Heartbeat {
    pub name: String,
    /// The agents it takes tasks for.
    pub agents: Vec<String>,
    /// Tasks of the fleet in its hands now, and how many it takes at most.
    pub running: usize,
    pub slots: usize,
    /// When it said so (Unix ms, its own clock).
    pub at_ms: u64,
    pub version: String,
    /// What it spent on `spend_day` (UTC days since 1970): fleet-wide budgets add it up.
    #[serde(default)]
    pub spend_day: u64,
    #[serde(default)]
    pub spend: crate::state::DaySpend,
    /// Whether it takes tasks (`false`: it only submits).
    #[serde(default = "yes")]
    pub works: bool,
    /// A random number for this run of its daemon: two nodes given one name tell each other
    /// apart by it.
    #[serde(default)]
    pub instance: u64,
    /// The keys (`NODE.ID…`) of the fleet's tasks in its hands, so a node can say where its
    /// task runs (at most `slots`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holding: Vec<String>,
    /// Its last word: it stopped cleanly (its spending still counts).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub left: bool,
}

fn yes() -> bool {
    true
}

/// What this node knows of the fleet. Written by the fleet component, read by `status`.
#[derive(Debug, Default)]
pub struct View {
    /// Whether the server is reached now; `problem` says why not.
    pub connected: bool,
    pub problem: Option<String>,
    /// The latest heartbeat of each worker, and when this node received it (its clock, so
    /// skew between machines does not make a live worker look dead).
    pub workers: BTreeMap<String, (Heartbeat, std::time::Instant)>,
    /// This node's spending today, as its engine last said (sent with its heartbeat).
    pub own_spend: (u64, crate::state::DaySpend),
    /// This run's instance number (see [`Heartbeat::instance`]).
    pub instance: u64,
    /// Another live node uses this node's name: what to do about it.
    pub twin: Option<String>,
    /// The server refused something this node asked (a permission it lacks): the latest
    /// refusal, and how many there were since the daemon started.
    pub refused: Option<(String, u64)>,
    /// Messages of the fleet this node did not take (not signed as its roster says): the
    /// latest, and how many since the daemon started.
    pub not_taken: Option<(String, u64)>,
}

pub type SharedView = Arc<Mutex<View>>;

/// Keeps `what` as the latest of something counted (`View::refused`, `View::not_taken`).
pub fn count_latest(slot: &mut Option<(String, u64)>, what: String) {
    let count = slot.as_ref().map_or(0, |(_, n)| *n);
    *slot = Some((what, count.saturating_add(1)));
}

pub fn lock(view: &SharedView) -> std::sync::MutexGuard<'_, View> {
    view.lock().unwrap_or_else(|e| e.into_inner())
}

impl View {
    /// The workers heard from within [`LIVE_FOR`].
    pub fn live(&self) -> impl Iterator<Item = &Heartbeat> {
        self.workers
            .values()
            .filter(|(h, seen)| h.works && !h.left && seen.elapsed() < LIVE_FOR)
            .map(|(h, _)| h)
    }

    /// The live worker that holds the task of fleet key `key`, if any says so.
    pub fn holder(&self, key: &str) -> Option<&str> {
        self.live()
            .find(|h| h.holding.iter().any(|k| k == key))
            .map(|h| h.name.as_str())
    }

    /// Whether a live worker takes tasks for `agent`.
    pub fn runs(&self, agent: &str) -> bool {
        self.live().any(|h| h.agents.iter().any(|a| a == agent))
    }

    /// What the other workers (live or gone) spent, by day.
    pub fn spent_elsewhere(&self, me: &str) -> BTreeMap<u64, crate::state::DaySpend> {
        let mut out: BTreeMap<u64, crate::state::DaySpend> = BTreeMap::new();
        // What another node says it spent counts only as a finite amount of zero or more: a
        // negative one would let this node overspend, an infinite one stop it.
        let sane = |usd: f64| if usd.is_finite() { usd.max(0.0) } else { 0.0 };
        for (h, _) in self.workers.values().filter(|(h, _)| h.name != me) {
            let day = out.entry(h.spend_day).or_default();
            day.total_usd += sane(h.spend.total_usd);
            for (agent, usd) in &h.spend.by_agent {
                *day.by_agent.entry(agent.clone()).or_default() += sane(*usd);
            }
        }
        out
    }

    /// For `status`: the workers, live or not, with how long ago each was heard from.
    pub fn to_json(&self) -> serde_json::Value {
        let today = crate::state::day_of(crate::ledger::now_ms());
        let workers: Vec<serde_json::Value> = self
            .workers
            .values()
            .filter(|(h, _)| !h.left)
            .map(|(h, seen)| {
                serde_json::json!({
                    "name": h.name,
                    "agents": h.agents,
                    "running": h.running,
                    "slots": h.slots,
                    "version": h.version,
                    "works": h.works,
                    "spent_today_usd": if h.spend_day == today { h.spend.total_usd } else { 0.0 },
                    "seen_ms_ago": seen.elapsed().as_millis() as u64,
                    "live": seen.elapsed() < LIVE_FOR,
                })
            })
            .collect();
        serde_json::json!({
            "connected": self.connected,
            "problem": self.problem,
            "twin": self.twin,
            "refused": latest_json(&self.refused),
            "not_taken": latest_json(&self.not_taken),
            "workers": workers,
        })
    }
}

/// A counted latest (see [`count_latest`]) for `status`: `{"latest", "count"}`, or null.
fn latest_json(slot: &Option<(String, u64)>) -> serde_json::Value {
    match slot {
        Some((latest, count)) => serde_json::json!({"latest": latest, "count": count}),
        None => serde_json::Value::Null,
    }
}

/// Puts this worker's heartbeat every [`BEAT_EVERY`], and soon after `taken` is notified (a
/// task taken in hand: its node then says where it runs) — at most once a [`BEAT_SOONEST`];
/// `holding` gives the keys of the tasks in hand at each beat.
pub async fn beat(
    conn: Connection,
    mut me: Heartbeat,
    agents: Option<tokio::sync::watch::Receiver<Vec<String>>>,
    holding: impl Fn() -> Vec<String> + Send + 'static,
    taken: Arc<tokio::sync::Notify>,
    view: SharedView,
) {
    loop {
        if let Some(agents) = &agents {
            me.agents = agents.borrow().clone();
        }
        me.holding = holding();
        me.running = me.holding.len();
        (me.spend_day, me.spend) = lock(&view).own_spend.clone();
        me.at_ms = crate::ledger::now_ms();
        let value = super::signing::seal(
            conn.signing.as_deref(),
            &format!("heartbeat {}", me.name),
            serde_json::to_vec(&me).expect("a heartbeat serialises"),
        );
        if let Err(e) = conn.workers.put(&me.name, value.into()).await {
            tracing::debug!("cannot put this worker's heartbeat: {e}");
        }
        // Taken tasks are said soon, but in a burst one beat says many (each beat is a write
        // the server keeps on disk).
        let next = tokio::time::Instant::now() + BEAT_EVERY;
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = taken.notified() => {
                tokio::time::sleep(BEAT_SOONEST).await;
            }
        }
    }
}

/// Keeps `view.connected` current from the client's own state, on every node (a node that
/// only submits sends no heartbeats, and must still say when the server is away).
pub async fn health(conn: Connection, view: SharedView) {
    loop {
        let state = conn.client.connection_state();
        {
            let mut v = lock(&view);
            match state {
                async_nats::connection::State::Connected => {
                    if !v.connected {
                        tracing::info!("the fleet's server is reached again");
                    }
                    v.connected = true;
                    v.problem = None;
                }
                other => {
                    if v.connected {
                        tracing::warn!(
                            "the fleet's server is away ({other}); this node keeps the last state it saw"
                        );
                    }
                    v.connected = false;
                    v.problem = Some(format!(
                        "the server is away ({other}); the client keeps trying, and this node keeps obeying the last state it saw"
                    ));
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Keeps `view.workers` current from the workers bucket (its history first), and notices a
/// live node with this node's name (`own_name`) but another instance.
pub async fn watch(conn: Connection, view: SharedView, own_name: Option<String>) {
    let mut delay = Duration::from_millis(250);
    loop {
        if let Ok(mut w) = conn.workers.watch_with_history(">").await {
            delay = Duration::from_millis(250);
            while let Some(Ok(entry)) = w.next().await {
                // A node that stopped cleanly took its heartbeat away.
                if entry.operation != async_nats::jetstream::kv::Operation::Put {
                    lock(&view).workers.remove(&entry.key);
                    continue;
                }
                // With a roster, only a heartbeat its node signed.
                let body = match super::signing::open(
                    conn.signing.as_deref(),
                    &format!("heartbeat {}", entry.key),
                    &entry.value,
                ) {
                    Ok((Some(signer), _)) if signer != entry.key => {
                        conn.not_taken(format!(
                            "a heartbeat under `{}` signed by `{signer}`; ignored",
                            entry.key
                        ));
                        continue;
                    }
                    Ok((_, body)) => body,
                    Err(why) => {
                        conn.not_taken(format!(
                            "a heartbeat under `{}`: {why}; ignored",
                            entry.key
                        ));
                        continue;
                    }
                };
                let Ok(mut h) = serde_json::from_slice::<Heartbeat>(body) else {
                    continue;
                };
                // A node the roster does not let work runs nothing and spends nothing, whatever
                // its beat says.
                if conn
                    .signing
                    .as_deref()
                    .is_some_and(|s| s.works(&h.name) == Some(&super::signing::Works::No))
                {
                    h.works = false;
                    h.agents.clear();
                    h.spend = Default::default();
                }
                // The key is what the server's permissions tie to a node; a beat that names
                // another node than its key is not that node's.
                if h.name != entry.key {
                    tracing::warn!(key = %entry.key, name = %h.name, "a heartbeat names another node than its key; ignored");
                    continue;
                }
                // A beat from the bucket's history is as old as the worker's clock says (a
                // worker gone an hour ago is not live); a new one was received just now.
                let now = std::time::Instant::now();
                let seen = if entry.seen_current {
                    now
                } else {
                    let age = crate::ledger::now_ms().saturating_sub(h.at_ms);
                    now.checked_sub(Duration::from_millis(age.min(3_600_000)))
                        .unwrap_or(now)
                };
                let mut v = lock(&view);
                // Only a beat newer than the one held counts: one echoed back onto the bucket
                // from its history (or the current one again) would keep a dead worker live.
                if v.workers
                    .get(&h.name)
                    .is_some_and(|(held, _)| held.at_ms >= h.at_ms)
                {
                    continue;
                }
                if entry.seen_current
                    && h.instance != 0
                    && h.instance != v.instance
                    && v.twin.is_none()
                    && own_name.as_deref() == Some(h.name.as_str())
                {
                    let twin = format!(
                        "another node of the fleet also uses the name `{}`: give each node its own `cluster.name` (their heartbeats, provider words and budgets are mixed up until then)",
                        h.name
                    );
                    tracing::error!("{twin}");
                    v.twin = Some(twin);
                }
                v.workers.insert(h.name.clone(), (h, seen));
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}
