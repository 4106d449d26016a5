//! Shared stewardship of providers: a rate limit (429) or an auth failure seen on one worker
//! rests that provider on every worker, `dirigent agents enable` on one enables it
//! everywhere, and a provider's `starts_per_minute` counts the starts of every worker.
//!
//! Each node puts its own provider records (`provider_cooldown`, `provider_disabled`,
//! `provider_enabled` — those its engine wrote, not those that came from the fleet) into the
//! providers bucket, one key per provider, so the bucket holds the fleet's latest word on each.
//! Each node watches the bucket and hands the others' words to its engine, which records them
//! in its own ledger (with `worker` set) when they change what it knows. A node that loses the
//! server keeps what its ledger says — the last state it saw.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::ToEngine;
use super::connect::Connection;
use crate::ledger::{Event, LiveRecord};

/// The fleet's latest word on one provider.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Word {
    pub provider: String,
    /// The worker that said it.
    pub worker: String,
    #[serde(flatten)]
    pub state: ProviderWord,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ProviderWord {
    Cooling {
        agent: String,
        until_ms: u64,
        reason: String,
    },
    Disabled {
        agent: String,
        reason: String,
    },
    Enabled,
}

/// The word a record of this node's own gives, if it is one to share.
pub fn word_of(event: &Event, me: &str) -> Option<Word> {
    let (provider, state) = match event {
        Event::ProviderCooldown {
            provider,
            worker: None,
            agent,
            until_ms,
            reason,
            ..
        } => (
            provider,
            ProviderWord::Cooling {
                agent: agent.clone(),
                until_ms: *until_ms,
                reason: reason.clone(),
            },
        ),
        Event::ProviderDisabled {
            provider,
            worker: None,
            agent,
            reason,
            ..
        } => (
            provider,
            ProviderWord::Disabled {
                agent: agent.clone(),
                reason: reason.clone(),
            },
        ),
        Event::ProviderEnabled {
            provider,
            worker: None,
        } => (provider, ProviderWord::Enabled),
        _ => return None,
    };
    Some(Word {
        provider: provider.clone(),
        worker: me.to_string(),
        state,
    })
}

/// Puts this node's own provider records into the bucket as they are written.
pub async fn share(conn: Connection, me: String, mut live: broadcast::Receiver<LiveRecord>) {
    loop {
        let record = match live.recv().await {
            Ok(r) => r,
            // Missed records: the next one of each provider says the state again.
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Some(word) = word_of(&record.event, &me) else {
            continue;
        };
        let value = serde_json::to_vec(&word).expect("a provider word serialises");
        let mut delay = Duration::from_millis(250);
        // Tried until it is there: another worker must not go on hitting a 429.
        while let Err(e) = conn
            .providers
            .put(
                &word.provider,
                super::signing::seal(
                    conn.signing.as_deref(),
                    &format!("provider {}", word.provider),
                    value.clone(),
                )
                .into(),
            )
            .await
        {
            tracing::warn!(provider = %word.provider, "cannot tell the fleet about the provider ({e}); trying again");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }
}

/// Hands the other workers' words (those already in the bucket first) to the engine.
pub async fn listen(conn: Connection, me: String, to_engine: Arc<dyn Fn(ToEngine) + Send + Sync>) {
    let mut delay = Duration::from_millis(250);
    loop {
        if let Ok(mut watch) = conn.providers.watch_with_history(">").await {
            delay = Duration::from_millis(250);
            while let Some(Ok(entry)) = watch.next().await {
                let Some(word) = read_word(&conn, &entry.key, &entry.value) else {
                    continue;
                };
                if word.worker != me && crate::config::validate_name(&word.provider).is_ok() {
                    to_engine(ToEngine::Provider(word));
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// A minute, in ms: the start-rate window.
const WINDOW_MS: u64 = 60_000;

/// Puts this worker's starts per provider (those of the last minute) into the starts bucket
/// under `PROVIDER.WORKER`, at each start.
pub async fn count_starts(
    conn: Connection,
    me: String,
    mut started: tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let mut recent: std::collections::HashMap<String, std::collections::VecDeque<u64>> =
        Default::default();
    while let Some(provider) = started.recv().await {
        let now = crate::ledger::now_ms();
        let log = recent.entry(provider.clone()).or_default();
        log.push_back(now);
        while log
            .front()
            .is_some_and(|t| now.saturating_sub(*t) >= WINDOW_MS)
        {
            log.pop_front();
        }
        let value = serde_json::to_vec(log).expect("a list of numbers serialises");
        if let Err(e) = conn
            .starts
            .put(
                starts_key(&provider, &me),
                super::signing::seal(
                    conn.signing.as_deref(),
                    &format!("starts {}", starts_key(&provider, &me)),
                    value,
                )
                .into(),
            )
            .await
        {
            tracing::debug!(provider, "cannot tell the fleet about a start: {e}");
        }
    }
}

/// Hands the other workers' starts to the engine as they put them.
pub async fn hear_starts(
    conn: Connection,
    me: String,
    to_engine: Arc<dyn Fn(ToEngine) + Send + Sync>,
) {
    let mut delay = Duration::from_millis(250);
    loop {
        if let Ok(mut watch) = conn.starts.watch_with_history(">").await {
            delay = Duration::from_millis(250);
            while let Some(Ok(entry)) = watch.next().await {
                // `PROVIDER.WORKER`; provider names may hold dots, worker names cannot.
                let Some((provider, worker)) = parse_starts_key(&entry.key) else {
                    continue;
                };
                if worker == me {
                    continue;
                }
                let Some(at_ms) = read_starts(&conn, &entry.key, worker, &entry.value) else {
                    continue;
                };
                to_engine(ToEngine::Starts {
                    worker: worker.to_string(),
                    provider: provider.to_string(),
                    at_ms,
                });
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// Before a worker takes its first task: the fleet's word on every provider and every other
/// worker's recent starts, handed to the engine ahead of any task (the engine carries out the
/// fleet's messages in order), so a worker that just joined does not run into a provider the
/// fleet already rests or over a start rate the others have used up.
pub async fn prime(conn: &Connection, me: &str, to_engine: &(dyn Fn(ToEngine) + Send + Sync)) {
    if let Ok(mut keys) = conn.providers.keys().await {
        while let Some(Ok(key)) = keys.next().await {
            if let Ok(Some(value)) = conn.providers.get(key.clone()).await
                && let Some(word) = read_word(conn, &key, &value)
                && word.worker != me
                && crate::config::validate_name(&word.provider).is_ok()
            {
                to_engine(ToEngine::Provider(word));
            }
        }
    }
    if let Ok(mut keys) = conn.starts.keys().await {
        while let Some(Ok(key)) = keys.next().await {
            let Some((provider, worker)) = parse_starts_key(&key) else {
                continue;
            };
            if worker == me {
                continue;
            }
            if let Ok(Some(value)) = conn.starts.get(key.clone()).await
                && let Some(at_ms) = read_starts(conn, &key, worker, &value)
            {
                to_engine(ToEngine::Starts {
                    worker: worker.to_string(),
                    provider: provider.to_string(),
                    at_ms,
                });
            }
        }
    }
}

/// A worker's key in the starts bucket: `PROVIDER.WORKER`, the provider's dots as `~` (outside
/// names' alphabet), so the worker is always the last token — what the server's permissions
/// (`$KV.dirigent_starts.*.<worker>`) match.
fn starts_key(provider: &str, worker: &str) -> String {
    format!("{}.{worker}", provider.replace('.', "~"))
}

/// The provider and worker of a [`starts_key`] (one written before dots became `~` reads as
/// its last dot splits it).
fn parse_starts_key(key: &str) -> Option<(String, &str)> {
    let (provider, worker) = key.rsplit_once('.')?;
    Some((provider.replace('~', "."), worker))
}

/// A provider word as the bucket holds it under `key`; with a roster, only one signed by the
/// worker it names.
fn read_word(conn: &Connection, key: &str, value: &[u8]) -> Option<Word> {
    let (signer, body) =
        super::signing::open(conn.signing.as_deref(), &format!("provider {key}"), value).ok()?;
    let word: Word = serde_json::from_slice(body).ok()?;
    (signer.is_none_or(|s| s == word.worker) && word.provider == key).then_some(word)
}

/// A worker's starts as the bucket holds them under `key`; with a roster, only those signed by
/// that worker.
fn read_starts(conn: &Connection, key: &str, worker: &str, value: &[u8]) -> Option<Vec<u64>> {
    let (signer, body) =
        super::signing::open(conn.signing.as_deref(), &format!("starts {key}"), value).ok()?;
    if signer.is_some_and(|s| s != worker) {
        return None;
    }
    // Only a node the roster lets work starts anything.
    if conn
        .signing
        .as_deref()
        .is_some_and(|s| matches!(s.works(worker), None | Some(super::signing::Works::No)))
    {
        return None;
    }
    let mut at_ms: Vec<u64> = serde_json::from_slice(body).ok()?;
    // Starts only within the window (a minute back, a little skew forward), and no more than a
    // window could hold: a count from the future or without end would use up every worker's
    // `starts_per_minute`.
    let now = crate::ledger::now_ms();
    at_ms.retain(|t| *t + WINDOW_MS >= now && *t <= now + 5_000);
    at_ms.truncate(MAX_STARTS);
    Some(at_ms)
}

/// The most starts one worker's count is taken to hold.
const MAX_STARTS: usize = 1_000;
