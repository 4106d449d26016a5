//! Notifications against a real local HTTP receiver (a thread with a socket, answering as the
//! test scripts it): the HMAC signature over the body, a retry after a failed delivery with the
//! same delivery id (what a receiver de-duplicates on), a burst summarised, a dead receiver
//! recorded as failed while the tasks go on, and a command destination.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;

use common::Workspace;
use dirigent::ledger::Event;
use hmac::{KeyInit, Mac};

/// One POST the receiver got.
#[derive(Debug, Clone)]
struct Received {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// A receiver on a free loopback port; `statuses` are its answers in order (then 200).
fn receiver(statuses: Vec<u16>) -> (String, mpsc::Receiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut statuses = statuses.into_iter();
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let mut headers = Vec::new();
            let mut length = 0;
            loop {
                line.clear();
                reader.read_line(&mut line).unwrap();
                let l = line.trim_end();
                if l.is_empty() {
                    break;
                }
                let (k, v) = l.split_once(':').unwrap();
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
                if k == "content-length" {
                    length = v.parse().unwrap();
                }
                headers.push((k, v));
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let status = statuses.next().unwrap_or(200);
            let _ = write!(
                conn,
                "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            if tx.send(Received { headers, body }).is_err() {
                return;
            }
        }
    });
    (url, rx)
}

fn next(rx: &mpsc::Receiver<Received>, what: &str) -> Received {
    rx.recv_timeout(common::patience())
        .unwrap_or_else(|_| panic!("the receiver got no {what}"))
}

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut m = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
    m.update(body);
    m.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn a_webhook_is_signed_and_a_failed_delivery_is_tried_again_with_the_same_id() {
    // The first answer is a 500: the delivery is tried again.
    let (url, rx) = receiver(vec![500]);
    let ws = Workspace::new(&format!(
        r#"
agents:
  good: {{ command: ["{{agents}}/ok.sh"] }}
notify:
  - name: team
    webhook: {url}
    secret: s3cret
    events: [done]
"#
    ));
    let _d = ws.start();
    ws.drop_task("t1.json", r#"{"prompt": "p", "agent": "good"}"#);
    let first = next(&rx, "first delivery");
    let again = next(&rx, "second try");
    assert_eq!(first.body, again.body, "a retry sends the same body");
    let id = first.header("x-dirigent-delivery").expect("a delivery id");
    assert_eq!(
        again.header("x-dirigent-delivery"),
        Some(id),
        "a retry keeps its delivery id, so the receiver can de-duplicate"
    );
    assert_eq!(first.header("x-dirigent-event"), Some("done"));
    assert_eq!(
        first.header("x-dirigent-signature"),
        Some(format!("sha256={}", hmac_hex("s3cret", &first.body)).as_str()),
        "the signature is HMAC-SHA-256 of the body with the secret"
    );
    let body = first.json();
    assert_eq!(body["kind"], "done");
    assert_eq!(body["about"], "t1");
    assert_eq!(body["agent"], "good");
    assert_eq!(body["title"], "Task `t1` done");
    assert_eq!(body["delivery"], id);
    let sent = ws.wait_for("the delivery in the ledger", |recs| {
        recs.iter().find_map(|r| match &r.event {
            Event::NotifySent {
                destination,
                tries,
                delivery,
                ..
            } => Some((destination.clone(), *tries, delivery.clone())),
            _ => None,
        })
    });
    assert_eq!(sent, ("team".to_string(), 2, id.to_string()));
}

#[test]
fn a_burst_of_escalations_becomes_one_summary() {
    let (url, rx) = receiver(vec![]);
    let ws = Workspace::new(&format!(
        r#"
concurrency: 4
agents:
  broken: {{ command: ["{{agents}}/fail.sh"], retry: {{ attempts: 0 }} }}
notify:
  - webhook: {url}
    events: [escalated]
    burst: {{ max: 2, window: 5s }}
"#
    ));
    let _d = ws.start();
    for i in 0..12 {
        ws.drop_task(
            &format!("b{i}.json"),
            r#"{"prompt": "p", "agent": "broken"}"#,
        );
    }
    let (mut singles, mut summarised, mut messages) = (0, 0, 0);
    while singles + summarised < 12 {
        let m = next(&rx, "notification of the burst");
        messages += 1;
        let body = m.json();
        match body["kind"].as_str() {
            Some("escalated") => singles += 1,
            Some("summary") => {
                summarised += body["count"].as_u64().unwrap();
                assert!(
                    body["title"]
                        .as_str()
                        .unwrap()
                        .contains("more notifications in 5s"),
                    "{body}"
                );
                assert_eq!(body["kinds"]["escalated"], body["count"]);
            }
            other => panic!("an unexpected kind {other:?}: {body}"),
        }
    }
    assert_eq!(
        singles + summarised,
        12,
        "every escalation is told, one way or the other"
    );
    assert!(
        messages <= 6,
        "12 escalations in a burst make few messages, not 12: {messages} ({singles} single)"
    );
    assert!(summarised >= 1, "some were summarised");
}

#[test]
fn a_dead_receiver_is_recorded_as_failed_and_the_work_goes_on() {
    // A port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ws = Workspace::new(&format!(
        r#"
agents:
  good: {{ command: ["{{agents}}/ok.sh"] }}
notify:
  - name: gone
    webhook: http://127.0.0.1:{port}/hook
    events: [done]
    retries: 1
"#
    ));
    let _d = ws.start();
    ws.drop_task("t1.json", r#"{"prompt": "p", "agent": "good"}"#);
    ws.drop_task("t2.json", r#"{"prompt": "p", "agent": "good"}"#);
    ws.wait_settled("t1");
    ws.wait_settled("t2");
    let failed = ws.wait_for("the failures in the ledger", |recs| {
        let f: Vec<_> = recs
            .iter()
            .filter_map(|r| match &r.event {
                Event::NotifyFailed {
                    destination,
                    tries,
                    error,
                    about,
                    ..
                } => Some((destination.clone(), *tries, error.clone(), about.clone())),
                _ => None,
            })
            .collect();
        (f.len() == 2).then_some(f)
    });
    for (destination, tries, error, _) in &failed {
        assert_eq!((destination.as_str(), *tries), ("gone", 2));
        assert!(error.starts_with("cannot connect to 127.0.0.1"), "{error}");
    }
}

#[test]
fn a_command_gets_the_notification_in_its_environment() {
    let ws = Workspace::new(
        r#"
agents:
  broken: { command: ["{agents}/fail.sh"], retry: { attempts: 0 } }
notify:
  - name: script
    command: ["sh", "-c", "printf '%s' \"$DIRIGENT_NOTIFICATION\" > notified.json"]
"#,
    );
    let _d = ws.start();
    ws.drop_task("e1.json", r#"{"prompt": "p", "agent": "broken"}"#);
    ws.wait_for("the command's delivery", |recs| {
        recs.iter()
            .any(|r| matches!(&r.event, Event::NotifySent { destination, .. } if destination == "script"))
            .then_some(())
    });
    let text = std::fs::read_to_string(ws.root().join("notified.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["kind"], "escalated");
    assert_eq!(v["about"], "e1");
    assert!(
        v["text"]
            .as_str()
            .unwrap()
            .contains(".context/escalations/e1.md"),
        "{v}"
    );
}

#[test]
fn a_destination_added_by_a_reload_gets_the_notifications_from_then_on() {
    // Without a destination the notifier does not listen to the ledger at all; a reload that
    // adds one must make it listen again.
    let agents = r#"
agents:
  broken: { command: ["{agents}/fail.sh"], retry: { attempts: 0 } }
"#;
    let ws = Workspace::new(agents);
    let _d = ws.start();
    // A task settled first: the daemon watches its config by then.
    ws.drop_task("e0.json", r#"{"prompt": "p", "agent": "broken"}"#);
    ws.wait_settled("e0");
    ws.write_config(&format!(
        r#"{agents}notify:
  - name: script
    command: ["sh", "-c", "printf '%s\\n' \"$DIRIGENT_NOTIFICATION\" >> notified.jsonl"]
"#
    ));
    ws.wait_for("the reload", |recs| {
        recs.iter()
            .any(|r| matches!(&r.event, Event::ConfigReloaded { .. }))
            .then_some(())
    });
    ws.drop_task("e1.json", r#"{"prompt": "p", "agent": "broken"}"#);
    // `e0`'s end may be told too: the ledger file shows a record just before the notifier
    // hears it, so the reload can come in between.
    ws.wait_for("the delivery about `e1`", |recs| {
        recs.iter()
            .any(|r| matches!(&r.event, Event::NotifySent { destination, about: Some(about), .. } if destination == "script" && about == "e1"))
            .then_some(())
    });
    let text = std::fs::read_to_string(ws.root().join("notified.jsonl")).unwrap();
    let told: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("one notification per line"))
        .collect();
    assert!(
        told.iter()
            .any(|v| v["kind"] == "escalated" && v["about"] == "e1"),
        "expected the escalation of `e1` told, got {told:?}"
    );
}

#[test]
fn a_bad_notify_section_is_refused_with_what_to_write() {
    let cases = [
        (
            "notify:\n  - webhook: http://x/\n    desktop: true\n",
            "`notify` entry 1 must have exactly one of `webhook: URL`, `desktop: true` or `command: [...]`",
        ),
        (
            "notify:\n  - webhook: ftp://x/\n",
            "`notify` entry 1: `ftp://x/` is not an `http://` or `https://` URL",
        ),
        (
            "notify:\n  - command: [notify-me]\n    secret: x\n",
            "`notify` entry 1: `secret` and `secret_env` sign webhooks only",
        ),
        (
            "notify:\n  - desktop: true\n    events: []\n",
            "`notify` entry 1: `events` is empty, so it would never be told anything",
        ),
    ];
    for (yaml, want) in cases {
        let ws = Workspace::new(yaml);
        let out = ws.cli(&["agents"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{yaml}: expected `{want}` in {err}");
        assert_ne!(out.status.code(), Some(0), "{yaml}");
    }
}

#[test]
fn a_desktop_notification_runs_notify_send_with_the_title_and_text() {
    let ws = Workspace::new(
        r#"
agents:
  broken: { command: ["{agents}/fail.sh"], retry: { attempts: 0 } }
notify:
  - desktop: true
"#,
    );
    // A `notify-send` of our own on the daemon's PATH, recording its arguments one per line.
    let bin = ws.root().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let script = bin.join("notify-send");
    std::fs::write(
        &script,
        "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done > \"$DIRIGENT_WORKSPACE/desktop.txt\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let _d = ws.start_with(&[("PATH", &path)]);
    ws.drop_task("e1.json", r#"{"prompt": "p", "agent": "broken"}"#);
    ws.wait_for("the desktop delivery", |recs| {
        recs.iter()
            .any(|r| matches!(&r.event, Event::NotifySent { destination, .. } if destination == "desktop-1"))
            .then_some(())
    });
    let args = std::fs::read_to_string(ws.root().join("desktop.txt")).unwrap();
    let args: Vec<&str> = args.lines().collect();
    assert_eq!(
        &args[..3],
        ["--app-name=dirigent", "--", "Task `e1` escalated"],
        "{args:?}"
    );
    assert!(
        args[3].contains("(report: .context/escalations/e1.md)"),
        "{args:?}"
    );
}
