//! Hostile agents (tests/agents/hostile/): each ends in a correct verdict within its limits,
//! with no process left alive and nothing lost.

mod common;

use common::{Workspace, process_gone};
use dirigent::ledger::Event;

const CONFIG: &str = r#"
kill_grace: 300ms
leak_timeout: 300ms
# The gigabyte below is allowed (the default stops an attempt at 256MiB).
max_output: 2GiB
agents:
  leak:    { command: ["{agents}/hostile/leak-stdout.sh"], timeout: 30s }
  setsid:  { command: ["{agents}/hostile/setsid.sh"], timeout: 30s }
  bare:    { command: ["{agents}/hostile/escape-bare.sh"], timeout: 30s }
  escapes: { command: ["{agents}/hostile/escapes.sh"] }
  plant:   { command: ["{agents}/hostile/plant-dirs.sh"] }
  giga:    { command: ["{agents}/hostile/gigabyte.sh"], timeout: 120s }
  binary:  { command: ["{agents}/hostile/binary.sh"] }
  stdin:   { command: ["{agents}/hostile/reads-stdin.sh", "{prompt}"], prompt: arg, timeout: 10s }
  segv:    { command: ["{agents}/hostile/segfault.sh"] }
  good:    { command: ["{agents}/ok.sh"], prompt: stdin }
"#;

fn finished(ws: &Workspace, task: &str) -> Event {
    ws.records()
        .into_iter()
        .find_map(|r| match &r.event {
            e @ Event::AttemptFinished { task: t, .. } if t == task => Some(e.clone()),
            _ => None,
        })
        .expect("an attempt_finished event")
}

#[test]
fn a_grandchild_holding_stdout_open_is_killed_after_the_leak_timeout() {
    let ws = Workspace::new(CONFIG);
    let _d = ws.start();
    ws.drop_task("l.json", r#"{"prompt": "p", "agent": "leak"}"#);
    let ev = ws.wait_settled("l");
    // The agent did its work and exited 0: that is a success, with the leak recorded.
    assert!(matches!(ev, Event::Done { .. }), "{ev:?}");
    let Event::AttemptFinished {
        leaked,
        exit_code,
        duration_ms,
        ..
    } = finished(&ws, "l")
    else {
        unreachable!()
    };
    assert!(leaked);
    assert_eq!(exit_code, Some(0));
    assert!(duration_ms < 10_000, "{duration_ms}");
    let grandchild: u32 = std::fs::read_to_string(ws.root().join("grandchild.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        process_gone(grandchild),
        "the grandchild {grandchild} survived"
    );
    assert_eq!(
        std::fs::read_to_string(ws.path("outbox/l.md")).unwrap(),
        "done, but my child still holds stdout\n"
    );
}

#[test]
fn a_gigabyte_of_output_is_captured_with_flat_memory() {
    let ws = Workspace::new(CONFIG);
    let d = ws.start();
    // The daemon's own size first (a debug build maps a large binary): what capturing adds is
    // measured against it, after one task has warmed up every path a task takes.
    ws.drop_task("w.json", r#"{"prompt": "p", "agent": "good"}"#);
    ws.wait_settled("w");
    let before = d.peak_rss_kib();
    ws.drop_task("g.json", r#"{"prompt": "p", "agent": "giga"}"#);
    let ev = ws.wait_settled("g");
    assert!(matches!(ev, Event::Done { .. }), "{ev:?}");
    let Event::AttemptFinished { stdout_bytes, .. } = finished(&ws, "g") else {
        unreachable!()
    };
    assert_eq!(stdout_bytes, 1 << 30);
    assert_eq!(
        std::fs::metadata(ws.path("runs/g/1-giga.stdout"))
            .unwrap()
            .len(),
        1 << 30
    );
    let peak = d.peak_rss_kib();
    assert!(
        peak < before + 16 * 1024,
        "daemon peak RSS {peak} KiB while capturing 1 GiB, {before} KiB before: it grew by more than 16 MiB"
    );
    // Don't keep 2 GiB of test output around.
    std::fs::remove_file(ws.path("runs/g/1-giga.stdout")).unwrap();
    std::fs::remove_file(ws.path("outbox/g.md")).unwrap();
}

#[test]
fn invalid_utf8_and_nul_bytes_are_kept_byte_for_byte() {
    let ws = Workspace::new(CONFIG);
    let _d = ws.start();
    ws.drop_task("b.json", r#"{"prompt": "p", "agent": "binary"}"#);
    assert!(matches!(ws.wait_settled("b"), Event::Done { .. }));
    assert_eq!(
        std::fs::read(ws.path("runs/b/1-binary.stdout")).unwrap(),
        b"before\x00\xff\xfeafter\n"
    );
    assert_eq!(
        std::fs::read(ws.path("runs/b/1-binary.stderr")).unwrap(),
        b"\xfferr\x00\n"
    );
    assert_eq!(
        std::fs::read(ws.path("outbox/b.md")).unwrap(),
        b"before\x00\xff\xfeafter\n"
    );
    // The ledger stays valid JSON lines.
    assert!(ws.records().len() >= 5);
}

#[test]
fn an_agent_reading_stdin_gets_eof_not_the_daemons_stdin() {
    let ws = Workspace::new(CONFIG);
    let _d = ws.start();
    ws.drop_task("s.json", r#"{"prompt": "p", "agent": "stdin"}"#);
    assert!(matches!(ws.wait_settled("s"), Event::Done { .. }));
    assert_eq!(
        std::fs::read_to_string(ws.path("outbox/s.md")).unwrap(),
        "stdin had 0 bytes\n"
    );
}

#[test]
fn death_by_a_signal_is_recorded_with_its_number() {
    let ws = Workspace::new(CONFIG);
    let _d = ws.start();
    ws.drop_task("x.json", r#"{"prompt": "p", "chain": ["segv", "good"]}"#);
    assert!(matches!(ws.wait_settled("x"), Event::Done { .. }));
    let Event::AttemptFinished {
        class,
        signal,
        exit_code,
        reason,
        stopped,
        ..
    } = finished(&ws, "x")
    else {
        unreachable!()
    };
    assert_eq!(class.as_str(), "exit");
    assert_eq!(signal, Some(11));
    assert_eq!(exit_code, None);
    assert_eq!(stopped, None, "it died on its own");
    assert!(reason.contains("killed by signal 11 (SIGSEGV)"), "{reason}");
}

#[test]
fn a_process_that_escaped_with_setsid_is_caught_after_the_attempt() {
    let ws = Workspace::new(CONFIG);
    let _d = ws.start();
    ws.drop_task("e.json", r#"{"prompt": "p", "agent": "setsid"}"#);
    assert!(matches!(ws.wait_settled("e"), Event::Done { .. }));
    let escaped: u32 = std::fs::read_to_string(ws.root().join("escaped.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // It left the process group, so group signals missed it; the daemon adopted it (child
    // subreaper) and recognised it by the attempt's environment.
    assert!(
        process_gone(escaped),
        "the escaped process {escaped} is still running"
    );
    let Event::AttemptFinished { leaked, .. } = finished(&ws, "e") else {
        unreachable!()
    };
    assert!(leaked);
    let log = std::fs::read_to_string(ws.root().join("daemon.log")).unwrap();
    assert!(
        log.contains("killed 1 process(es) the attempt left behind outside its process group"),
        "{log}"
    );
}

#[test]
fn a_process_that_escaped_with_no_environment_is_caught_after_the_attempt() {
    let ws = Workspace::new(CONFIG);
    let _d = ws.start();
    ws.drop_task("b.json", r#"{"prompt": "p", "agent": "bare"}"#);
    assert!(matches!(ws.wait_settled("b"), Event::Done { .. }));
    let escaped: u32 = std::fs::read_to_string(ws.root().join("bare.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // No marker in its environment and a session of its own: the daemon adopted it, and an
    // orphan outside every live group of the daemon's is an escapee, whatever it carries.
    assert!(
        process_gone(escaped),
        "the bare escaped process {escaped} is still running"
    );
}

#[test]
fn an_agents_escape_sequences_never_reach_a_reason_or_a_report() {
    let ws = Workspace::new(CONFIG);
    let _d = ws.start();
    ws.drop_task("x.json", r#"{"prompt": "p", "agent": "escapes"}"#);
    let Event::Escalated { reason, .. } = ws.wait_settled("x") else {
        panic!("expected the task escalated")
    };
    let Event::AttemptFinished {
        reason: attempt, ..
    } = finished(&ws, "x")
    else {
        unreachable!()
    };
    let report = std::fs::read_to_string(ws.path("escalations/x.md")).unwrap();
    for (what, text) in [
        ("escalation", &reason),
        ("attempt", &attempt),
        ("report", &report),
    ] {
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "expected no escape sequence in the {what}: {text:?}"
        );
    }
    assert!(
        attempt.contains("error"),
        "expected the agent's words kept: {attempt:?}"
    );
}

/// An inbox removed and made again, or another moved into its place, is watched again at once:
/// a task dropped into it runs without waiting for the periodic rescan.
#[test]
fn an_inbox_made_again_is_watched_again() {
    let ws = Workspace::new(&format!("inbox_rescan: 1h\n{CONFIG}"));
    let mut d = ws.start();
    ws.drop_task(
        "first.json",
        r#"{"id": "first", "prompt": "p", "agent": "good"}"#,
    );
    ws.wait_settled("first");
    // Two tasks one after the other: the scan made when the directory appeared may find the
    // first; only a watch on the new directory finds the second.
    let both_run = |ids: [&str; 2], inbox: &str| {
        for id in ids {
            ws.drop_task(
                &format!("{id}.json"),
                &format!(r#"{{"id": "{id}", "prompt": "p", "agent": "good"}}"#),
            );
            assert!(
                matches!(ws.wait_settled(id), Event::Done { .. }),
                "expected `{id}` in {inbox} to run"
            );
        }
    };
    // Removed and made again.
    std::fs::remove_dir_all(ws.path("inbox")).unwrap();
    std::fs::create_dir_all(ws.path("inbox/.tmp")).unwrap();
    both_run(["second", "second-later"], "the new inbox");
    // Another directory moved into its place.
    let other = ws.root().join("other-inbox");
    std::fs::create_dir_all(other.join(".tmp")).unwrap();
    std::fs::rename(ws.path("inbox"), ws.root().join("old-inbox")).unwrap();
    std::fs::rename(&other, ws.path("inbox")).unwrap();
    both_run(["third", "third-later"], "the inbox moved into place");
    d.stop();
}

#[test]
fn links_planted_in_place_of_dirigents_directories_are_moved_aside() {
    // No periodic rescan within the test: the inbox made again is watched again at once.
    let ws = Workspace::new(&format!("inbox_rescan: 1h\n{CONFIG}"));
    let _d = ws.start();
    ws.drop_task("p.json", r#"{"prompt": "p", "agent": "plant"}"#);
    ws.wait_settled("p");
    // The next tasks run, their results land in dirigent's own directories, and nothing is
    // written where the links pointed.
    // (Submitted through the daemon: the inbox is one of the links.)
    for (id, agent) in [("q", "good"), ("r", "segv")] {
        let out = ws.cli(&["submit", "p", "--id", id, "--agent", agent]);
        assert!(out.status.success(), "{out:?}");
    }
    assert!(
        matches!(ws.wait_settled("q"), Event::Done { .. }),
        "expected the next task done"
    );
    ws.wait_settled("r");
    assert!(
        ws.path("outbox/q.md").is_file(),
        "expected the result in the outbox"
    );
    assert!(
        ws.path("escalations/r.md").is_file(),
        "expected the report in escalations/"
    );
    let outside: Vec<_> = std::fs::read_dir(ws.root().join("outside"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        outside.is_empty(),
        "expected nothing written through the links: {outside:?}"
    );
    let log = std::fs::read_to_string(ws.root().join("daemon.log")).unwrap();
    assert!(
        log.contains("was a symbolic link where dirigent keeps a directory"),
        "expected the log to say what was moved aside:\n{log}"
    );
}

/// A helper an attempt starts with `setsid` (a dev server, say) lives as long as that attempt:
/// another task's attempt ending meanwhile does not take it for its own leftover; its own
/// attempt's end does.
#[test]
fn another_attempts_end_leaves_a_running_attempts_setsid_helper_alone() {
    let ws = Workspace::new(
        "concurrency: 2\nkill_grace: 300ms\nagents:\n  server: { command: [sh, -c, \"(setsid sh -c 'echo $$ > $DIRIGENT_WORKSPACE/helper.pid; exec sleep 60' &); while [ ! -e $DIRIGENT_WORKSPACE/go ]; do sleep 0.02; done; kill -0 $(cat $DIRIGENT_WORKSPACE/helper.pid) && echo helper alive\"] }\n  quick: { command: [sh, -c, \"echo done\"] }\ndefault_chain: [quick]\n",
    );
    let _d = ws.start();
    ws.drop_task("s.json", r#"{"prompt": "p", "agent": "server"}"#);
    let helper: u32 = ws.wait_until("the helper to start", || {
        std::fs::read_to_string(ws.root().join("helper.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    });
    ws.drop_task("q.json", r#"{"prompt": "p"}"#);
    assert!(
        matches!(ws.wait_settled("q"), Event::Done { .. }),
        "expected the quick task done"
    );
    assert!(
        !process_gone(helper),
        "expected the running attempt's helper alive after another task's attempt ended"
    );
    std::fs::write(ws.root().join("go"), "").unwrap();
    assert!(
        matches!(ws.wait_settled("s"), Event::Done { .. }),
        "expected the server task done: its helper was alive to the end"
    );
    ws.wait_until("its own attempt's end to take the helper", || {
        process_gone(helper).then_some(())
    });
}
