//! Notifications (`notify:` in the config): people are told when a task is done, escalated or
//! needs them, and when a workflow run finishes — by signed webhooks, desktop notifications or
//! commands. See docs/dashboard.md.
//!
//! Where it sits: the notifier is a task of its own beside the engine. It reads the ledger's
//! live records (a broadcast it can fall behind on, never one that waits for it), so the engine
//! is never blocked by a slow or dead receiver. Each destination has a worker with a bounded
//! queue: it holds bursts back into one summary ([`decide::Gate`]), tries a delivery again with
//! backoff, and records every delivery (`notify_sent`) and every final failure
//! (`notify_failed`) in the ledger. What to send is decided in [`decide`]; how, in [`deliver`].

pub mod decide;
pub mod deliver;

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::json;
use tokio::sync::{broadcast, mpsc, watch};

use crate::config::Config;
use crate::config::notify::{Destination, Target};
use crate::ledger::{Event, Ledger, Record};
use crate::workspace::Workspace;
use decide::{Admit, Gate, Known, Notice, Summary};

/// Notices a destination's queue holds at most; beyond, they are counted as dropped (the
/// receiver is far behind, and a flood would only make it worse).
const QUEUE: usize = 1024;

/// Hands the records the notifier wrote to the engine, which applies them like its own.
pub type Report = Arc<dyn Fn(Vec<Record>) + Send + Sync>;

/// What every destination worker shares.
#[derive(Clone)]
struct Shared {
    ws: Workspace,
    ledger: Ledger,
    report: Report,
    /// Sender: the daemon; `true` when it stops.
    stopping: watch::Receiver<bool>,
}

/// Starts the notifier. `config` is the engine's current configuration (sent again on each
/// reload); `live` the ledger's records as they are written.
pub fn start(
    ws: Workspace,
    mut config: watch::Receiver<Arc<Config>>,
    live: broadcast::Receiver<crate::ledger::LiveRecord>,
    ledger: Ledger,
    report: Report,
    stopping: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let shared = Shared {
        ws,
        ledger,
        report,
        stopping,
    };
    tokio::spawn(async move {
        let mut known = Known::default();
        // Destination name → (its config, the sender of its worker's queue).
        let mut workers: HashMap<String, (Destination, mpsc::Sender<Notice>)> = HashMap::new();
        let mut stopping = shared.stopping.clone();
        update_workers(&mut workers, &config.borrow_and_update().notify, &shared);
        // Records are heard only while there is somewhere to send notices: a subscriber makes
        // the ledger's writer copy every record for it, and `known` holds a title for every
        // task in flight (100,000 of them after a big drop). A destination added later words
        // the tasks received before it by their ids.
        let mut live = (!workers.is_empty()).then_some(live);
        loop {
            tokio::select! {
                () = until_stopping(&mut stopping) => break,
                changed = config.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let destinations = config.borrow_and_update().notify.clone();
                    update_workers(&mut workers, &destinations, &shared);
                    if workers.is_empty() {
                        live = None;
                        known = Known::default();
                    } else if live.is_none() {
                        live = Some(shared.ledger.live().subscribe());
                    }
                }
                got = next_record(&mut live) => match got {
                    Ok(r) => {
                        if matches!(r.event, Event::NotifySent { .. } | Event::NotifyFailed { .. }) {
                            continue;
                        }
                        for n in known.see(&r) {
                            for (d, tx) in workers.values() {
                                if decide::wanted(d, &n) && tx.try_send(n.clone()).is_err() {
                                    tracing::warn!(destination = %d.name, "the notification queue is full; dropped the notification about {:?}", n.about);
                                }
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!("the notifier fell behind the ledger and skipped {missed} record(s)");
                        // The ends of tasks it knows may be among them: start again rather than
                        // hold their titles for ever.
                        known = Known::default();
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            }
        }
    })
}

/// The next live record; never, while not listening.
async fn next_record(
    live: &mut Option<broadcast::Receiver<crate::ledger::LiveRecord>>,
) -> Result<crate::ledger::LiveRecord, broadcast::error::RecvError> {
    match live {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Starts a worker for each new or changed destination; a removed one's worker ends when its
/// queue's sender is dropped (after what it holds).
fn update_workers(
    workers: &mut HashMap<String, (Destination, mpsc::Sender<Notice>)>,
    destinations: &[Destination],
    shared: &Shared,
) {
    workers.retain(|name, (d, _)| destinations.iter().any(|n| n.name == *name && n == d));
    for d in destinations {
        if workers.contains_key(&d.name) {
            continue;
        }
        if d.target == Target::Desktop && deliver::desktop_argv("", "").is_none() {
            tracing::warn!(
                destination = %d.name,
                "`desktop: true`, but neither `notify-send` (Linux) nor `osascript` (macOS) is on the daemon's PATH: its notifications will fail"
            );
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(worker(d.clone(), rx, shared.clone()));
        tracing::info!(destination = %d.name, "notifications go to {}", describe(&d.target));
        workers.insert(d.name.clone(), (d.clone(), tx));
    }
}

fn describe(t: &Target) -> String {
    match t {
        Target::Webhook { url, .. } => format!("the webhook {}", url.shown),
        Target::Desktop => "desktop notifications".into(),
        Target::Command(argv) => format!("the command `{}`", argv[0]),
    }
}

/// One message, ready to go.
struct Message {
    kind: String,
    about: Option<String>,
    delivery: String,
    title: String,
    text: String,
    count: u32,
    body: serde_json::Value,
}

fn message_of(ws: &Workspace, n: &Notice) -> Message {
    let delivery = format!("{}-{}", n.seq, n.kind.as_str());
    Message {
        kind: n.kind.as_str().into(),
        about: n.about.clone(),
        body: json!({
            "delivery": delivery,
            "kind": n.kind.as_str(),
            "about": n.about,
            "agent": n.agent,
            "title": n.title,
            "text": n.text,
            "seq": n.seq,
            "ts": n.ts,
            "workspace": ws.root(),
        }),
        delivery,
        title: n.title.clone(),
        text: n.text.clone(),
        count: 1,
    }
}

fn summary_of(ws: &Workspace, s: &Summary, window: std::time::Duration) -> Message {
    let delivery = format!("summary-{}-{}", s.first_seq, s.last_seq);
    let kinds: Vec<String> = s.kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
    let more = s.count as usize > s.about.len();
    let title = format!(
        "{} more notification{} in {}",
        s.count,
        if s.count == 1 { "" } else { "s" },
        humantime::format_duration(window)
    );
    let text = format!(
        "{} — {}{}",
        kinds.join(", "),
        s.about.join(", "),
        if more { ", …" } else { "" }
    );
    Message {
        kind: "summary".into(),
        about: None,
        body: json!({
            "delivery": delivery,
            "kind": "summary",
            "title": title,
            "text": text,
            "count": s.count,
            "kinds": s.kinds,
            "about": s.about,
            "first_seq": s.first_seq,
            "last_seq": s.last_seq,
            "ts": crate::ledger::now_ms(),
            "workspace": ws.root(),
        }),
        delivery,
        title,
        text,
        count: s.count,
    }
}

async fn worker(d: Destination, mut rx: mpsc::Receiver<Notice>, shared: Shared) {
    let mut gate = Gate::default();
    let mut stopping = shared.stopping.clone();
    loop {
        let due = gate.due_ms(d.burst_window).map(|due| {
            let wait = due.saturating_sub(crate::ledger::now_ms());
            tokio::time::Instant::now() + std::time::Duration::from_millis(wait)
        });
        tokio::select! {
            got = rx.recv() => {
                let Some(n) = got else { break };
                let holding = gate.due_ms(d.burst_window).is_some();
                match gate.admit(crate::ledger::now_ms(), d.burst_max, d.burst_window, &n) {
                    Admit::Send => send(&d, message_of(&shared.ws, &n), &shared).await,
                    Admit::Held { due_ms } if !holding => tracing::info!(
                        destination = %d.name,
                        "{} notifications within {}: the next ones are held for one summary in {}",
                        d.burst_max,
                        humantime::format_duration(d.burst_window),
                        crate::duration::short(std::time::Duration::from_millis(due_ms.saturating_sub(crate::ledger::now_ms())))
                    ),
                    Admit::Held { .. } => {}
                }
            }
            () = async { tokio::time::sleep_until(due.expect("guarded")).await }, if due.is_some() => {
                if let Some(s) = gate.flush(crate::ledger::now_ms(), d.burst_window) {
                    send(&d, summary_of(&shared.ws, &s, d.burst_window), &shared).await;
                }
            }
            () = until_stopping(&mut stopping) => break,
        }
    }
    // What a burst held back is sent now, once, rather than lost.
    if let Some(s) = gate.flush(u64::MAX, d.burst_window) {
        let once = Destination {
            retries: 0,
            ..d.clone()
        };
        send(&once, summary_of(&shared.ws, &s, d.burst_window), &shared).await;
    }
}

/// Delivers `m`, trying again with backoff, and records the outcome.
async fn send(d: &Destination, m: Message, shared: &Shared) {
    let mut tries = 0u32;
    let mut stopping = shared.stopping.clone();
    let error = loop {
        tries += 1;
        let outcome = deliver_once(d, &m, shared).await;
        let (e, retry) = match outcome {
            Ok(()) => {
                record(
                    shared,
                    Event::NotifySent {
                        destination: d.name.clone(),
                        kind: m.kind.clone(),
                        about: m.about.clone(),
                        delivery: m.delivery.clone(),
                        tries,
                        count: m.count,
                    },
                )
                .await;
                return;
            }
            Err(e) => e,
        };
        let stopped = *stopping.borrow();
        if !retry || tries > d.retries || stopped {
            break e;
        }
        let wait = decide::backoff(tries + 1);
        tracing::warn!(destination = %d.name, "notification {} failed ({e}); trying again in {}", m.delivery, crate::duration::short(wait));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = until_stopping(&mut stopping) => {}
        }
    };
    tracing::error!(destination = %d.name, "notification {} was not delivered: {error}", m.delivery);
    record(
        shared,
        Event::NotifyFailed {
            destination: d.name.clone(),
            kind: m.kind.clone(),
            about: m.about.clone(),
            delivery: m.delivery.clone(),
            tries,
            count: m.count,
            error,
        },
    )
    .await;
}

/// One try; the error says whether trying again can help.
async fn deliver_once(d: &Destination, m: &Message, shared: &Shared) -> Result<(), (String, bool)> {
    let body = serde_json::to_vec(&m.body).unwrap_or_default();
    match &d.target {
        Target::Webhook { url, secret } => deliver::webhook(
            url,
            match secret {
                Some(s) => Some(s.value().map_err(|e| (e, false))?),
                None => None,
            }
            .as_deref(),
            &m.delivery,
            &m.kind,
            &body,
            d.timeout,
        )
        .await
        .map_err(|e| (e, true)),
        Target::Desktop => {
            let argv = deliver::desktop_argv(&m.title, &m.text).ok_or((
                "no `notify-send` (Linux) or `osascript` (macOS) on the daemon's PATH".to_string(),
                false,
            ))?;
            run(d, &argv, m, &body, shared).await
        }
        Target::Command(argv) => run(d, argv, m, &body, shared).await,
    }
}

/// Runs a command destination (or the desktop notifier) as a supervised side command, with
/// the notification in its environment.
async fn run(
    d: &Destination,
    argv: &[String],
    m: &Message,
    body: &[u8],
    shared: &Shared,
) -> Result<(), (String, bool)> {
    use crate::side_command::{CommandEnd, SideLimits, run_logged};
    // An environment variable cannot hold a NUL (a title may): dropped, never a failed start.
    let clean = |s: &str| s.replace('\0', "");
    let argv: Vec<String> = argv.iter().map(|a| clean(a)).collect();
    let argv = &argv[..];
    let env = vec![
        (
            "DIRIGENT_NOTIFICATION".to_string(),
            String::from_utf8_lossy(body).into_owned(),
        ),
        ("DIRIGENT_NOTIFY_KIND".to_string(), m.kind.clone()),
        ("DIRIGENT_NOTIFY_TITLE".to_string(), clean(&m.title)),
        ("DIRIGENT_NOTIFY_TEXT".to_string(), clean(&m.text)),
    ];
    let log = shared
        .ws
        .context()
        .join("notify")
        .join(format!("{}.log", d.name));
    let limits = SideLimits {
        limit: d.timeout,
        stop: shared.stopping.clone(),
        cancel: None,
        grace: std::time::Duration::from_secs(1),
        dir: Some((shared.ws.root().to_path_buf(), env)),
        task: None,
    };
    match run_logged(&shared.ws, argv, &log, limits).await {
        CommandEnd::Exited(s) if s.success() => Ok(()),
        CommandEnd::Exited(s) => Err((
            format!("`{}` exited with {s}; see {}", argv[0], log.display()),
            true,
        )),
        CommandEnd::TimedOut => Err((
            format!(
                "`{}` did not finish within {}",
                argv[0],
                crate::duration::short(d.timeout)
            ),
            true,
        )),
        CommandEnd::Stopped => Err(("the daemon stopped".into(), false)),
        CommandEnd::CouldNotStart(e) => Err((e, false)),
    }
}

async fn record(shared: &Shared, event: Event) {
    match shared.ledger.append(event).await {
        Ok(r) => (shared.report)(vec![r]),
        Err(e) => tracing::error!("cannot record a notification in the ledger: {e}"),
    }
}

/// Returns once the daemon begins to stop (the guard `wait_for` gives is dropped here, so the
/// future stays `Send`).
async fn until_stopping(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|s| *s).await;
}
