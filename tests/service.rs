//! The systemd notify protocol, against a real datagram socket standing in for systemd.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use common::Workspace;
use dirigent::ledger::Event;

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .expect("a notification before the read timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn ready_after_recovery_and_the_first_scan_then_watchdog_pings_then_stopping() {
    let ws = Workspace::new(r#"agents: { good: { command: ["{agents}/ok.sh"], prompt: stdin } }"#);
    let sock_path = ws.root().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    // Only bounds a broken daemon; every recv below waits for a datagram.
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    ws.drop_task("early.json", r#"{"prompt": "dropped before the start"}"#);
    let mut d = ws.start_with(&[
        ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
        ("WATCHDOG_USEC", "200000"),
    ]);
    let ready = recv(&sock);
    assert!(ready.starts_with("READY=1\nSTATUS="), "{ready:?}");
    // READY comes after the first inbox scan: the task dropped before the start was claimed.
    assert!(
        ws.records()
            .iter()
            .any(|r| matches!(&r.event, Event::Claimed { task, .. } if task == "early"))
    );
    let mut pings = 0;
    while pings < 3 {
        let msg = recv(&sock);
        if msg == "WATCHDOG=1" {
            pings += 1;
        } else {
            assert!(msg.starts_with("STATUS="), "unexpected {msg:?}");
        }
    }
    d.stop();
    // The daemon has exited: everything it sent is queued already.
    sock.set_nonblocking(true).unwrap();
    let mut rest = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = sock.recv(&mut buf) {
        rest.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(rest.iter().any(|m| m.starts_with("STOPPING=1")), "{rest:?}");
    let log = std::fs::read_to_string(ws.root().join("daemon.log")).unwrap();
    assert!(log.contains("shutting down"), "{log}");
}

fn count(ws: &Workspace, pred: impl Fn(&Event) -> bool) -> usize {
    ws.records().iter().filter(|r| pred(&r.event)).count()
}

#[test]
fn sighup_and_config_changes_reload_without_touching_running_attempts() {
    let ws = Workspace::new(
        r#"
agents:
  say:  { command: ["echo", "one"] }
  gate: { command: ["{agents}/gate.sh", "release"] }
default_chain: [say]
"#,
    );
    let d = ws.start();
    ws.drop_task("a.json", r#"{"prompt": "p"}"#);
    ws.wait_settled("a");
    assert_eq!(
        std::fs::read_to_string(ws.path("outbox/a.md")).unwrap(),
        "one\n"
    );
    ws.drop_task("long.json", r#"{"prompt": "p", "agent": "gate"}"#);
    ws.wait_for("the gate attempt", |recs| {
        recs.iter()
            .any(|r| matches!(&r.event, Event::AttemptStarted { task, .. } if task == "long"))
            .then_some(())
    });

    // SIGHUP reloads even when nothing changed.
    d.signal(nix::sys::signal::Signal::SIGHUP);
    ws.wait_for("a SIGHUP reload", |recs| {
        recs.iter().any(|r| matches!(&r.event, Event::ConfigReloaded { trigger, .. } if trigger == "SIGHUP")).then_some(())
    });

    // A changed file reloads by itself; `gate` is gone from the new config.
    ws.write_config("agents:\n  say: { command: [\"echo\", \"two\"] }\ndefault_chain: [say]\n");
    ws.wait_for("a file reload", |recs| {
        recs.iter()
            .any(|r| matches!(&r.event, Event::ConfigReloaded { trigger, .. } if trigger == "file"))
            .then_some(())
    });
    ws.drop_task("b.json", r#"{"prompt": "p"}"#);
    ws.wait_settled("b");
    assert_eq!(
        std::fs::read_to_string(ws.path("outbox/b.md")).unwrap(),
        "two\n"
    );

    // An invalid config is refused with one clear line; the previous one stays in force.
    ws.write_config("agents:\n  say: { command: [] }\n");
    let error = ws.wait_for("the rejection", |recs| {
        recs.iter().find_map(|r| match &r.event {
            Event::ConfigRejected { error, .. } => Some(error.clone()),
            _ => None,
        })
    });
    assert!(
        error.contains("agent `say`: `command` must start with the program to run"),
        "{error}"
    );
    ws.drop_task("c.json", r#"{"prompt": "p"}"#);
    ws.wait_settled("c");
    assert_eq!(
        std::fs::read_to_string(ws.path("outbox/c.md")).unwrap(),
        "two\n"
    );
    // The running one written back with other spacing and a comment: no change in meaning
    // (after a rejected edit too), so a re-read, not a reload.
    ws.write_config(
        "# the same as before\nagents:\n  say:   { command: [\"echo\", \"two\"] }\ndefault_chain: [ say ]\n",
    );
    ws.wait_for("the file re-read", |recs| {
        (recs
            .iter()
            .filter(
                |r| matches!(&r.event, Event::ConfigReloaded { trigger, .. } if trigger == "file"),
            )
            .count()
            == 2)
            .then_some(())
    });
    let log = std::fs::read_to_string(ws.root().join("daemon.log")).unwrap();
    assert_eq!(
        log.matches("the new configuration is invalid").count(),
        1,
        "{log}"
    );
    assert!(
        !log.contains("error: the new configuration"),
        "one `error`, from the log level, not two: {log}"
    );
    // The log says "reloaded" only for the reload that changed something: the SIGHUP with the
    // same file re-read it unchanged.
    assert_eq!(
        (
            log.matches("configuration re-read: unchanged").count(),
            log.matches("configuration reloaded").count()
        ),
        (2, 1),
        "unchanged re-reads (the SIGHUP, the same text respaced), one real reload (the edit): {log}"
    );

    // The attempt that was running all along finishes normally with the agent it started with.
    std::fs::write(ws.root().join("release"), "").unwrap();
    assert!(matches!(ws.wait_settled("long"), Event::Done { .. }));
    assert_eq!(
        count(
            &ws,
            |e| matches!(e, Event::AttemptStarted { task, .. } if task == "long")
        ),
        1
    );
}

#[test]
fn json_logs_have_one_line_per_lifecycle_event_with_task_agent_and_attempt() {
    let ws = Workspace::new(
        r#"agents: { fail: { command: ["{agents}/fail.sh"] }, good: { command: ["{agents}/ok.sh"], prompt: stdin } }"#,
    );
    let mut d = ws.start_full(&[], &["--log-format", "json"]);
    ws.drop_task("j.json", r#"{"prompt": "p", "chain": ["fail", "good"]}"#);
    ws.wait_settled("j");
    d.stop();
    let log = std::fs::read_to_string(ws.root().join("daemon.log")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    let of = |msg: &str| -> Vec<&serde_json::Value> {
        lines
            .iter()
            .filter(|l| {
                l["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(msg))
            })
            .collect()
    };
    let starts = of("starting attempt");
    assert_eq!(starts.len(), 2);
    assert_eq!(starts[1]["fields"]["task"], "j");
    assert_eq!(starts[1]["fields"]["agent"], "good");
    assert_eq!(starts[1]["fields"]["attempt"], 2);
    let finished = of("attempt finished");
    assert_eq!(finished[0]["fields"]["class"], "exit");
    let done = of("done");
    assert_eq!(done.len(), 1);
    assert_eq!(
        (
            done[0]["fields"]["agent"].as_str(),
            done[0]["fields"]["attempt"].as_u64()
        ),
        (Some("good"), Some(2))
    );
}

/// A config rewritten in place (`cp`, `cat >`, an editor that truncates first) is empty for a
/// moment: that moment is not a config with no agents — queued tasks are not failed for it.
#[test]
fn a_config_empty_for_a_moment_while_rewritten_fails_no_queued_task() {
    let config = "concurrency: 1\nagents:\n  gate: { command: [\"{agents}/gate.sh\", \"release\"] }\ndefault_chain: [gate]\n";
    let ws = Workspace::new(config);
    let _d = ws.start();
    ws.drop_task("first.json", r#"{"prompt": "p"}"#);
    ws.wait_for("the first attempt", |recs| {
        recs.iter()
            .any(|r| matches!(&r.event, Event::AttemptStarted { task, .. } if task == "first"))
            .then_some(())
    });
    ws.drop_task("queued.json", r#"{"prompt": "p"}"#);
    ws.wait_for("the queued task taken in", |recs| {
        recs.iter()
            .any(|r| matches!(&r.event, Event::Received { task, .. } if task == "queued"))
            .then_some(())
    });
    std::fs::write(ws.path("dirigent.yaml"), "").unwrap();
    ws.wait_until("the daemon to see the empty file", || {
        std::fs::read_to_string(ws.root().join("daemon.log"))
            .ok()
            .filter(|log| {
                log.contains("is empty (being written?); the running configuration stays in force")
            })
            .map(drop)
    });
    ws.write_config(config);
    std::fs::write(ws.root().join("release"), "").unwrap();
    for id in ["first", "queued"] {
        let settled = ws.wait_settled(id);
        assert!(
            matches!(settled, Event::Done { .. }),
            "expected `{id}` done, not failed for the moment the config was empty: {settled:?}"
        );
    }
}
