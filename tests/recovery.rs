//! Crash recovery: the daemon is killed with SIGKILL and started again.

mod common;

use common::{Workspace, list, process_gone};
use dirigent::ledger::Event;

const CONFIG: &str = r#"
kill_grace: 300ms
agents:
  gate: { command: ["{agents}/gate.sh", "release"] }
  good: { command: ["{agents}/ok.sh"], prompt: stdin }
default_chain: [good]
"#;

#[test]
fn after_a_crash_the_orphaned_agent_is_killed_and_the_task_runs_again_once() {
    let ws = Workspace::new(CONFIG);
    let mut d = ws.start();
    ws.drop_task("job.json", r#"{"prompt": "p", "agent": "gate"}"#);
    let first = ws.wait_for("the first attempt", |recs| {
        recs.iter().find_map(|r| match r.event {
            Event::AttemptStarted { pid, .. } => Some(pid),
            _ => None,
        })
    });
    d.crash();
    // The agent survived the crash: it is in its own process group.
    assert!(!process_gone(first), "expected the orphan to be running");

    let _d = ws.start();
    let reason = ws.wait_for("the interrupted attempt to be closed", |recs| {
        recs.iter().find_map(|r| match &r.event {
            Event::AttemptFinished {
                attempt: 1,
                class,
                reason,
                ..
            } if class.as_str() == "interrupted" => Some(reason.clone()),
            _ => None,
        })
    });
    assert!(reason.contains("still alive and was killed"), "{reason}");
    assert!(
        process_gone(first),
        "the orphan {first} survived the restart"
    );
    let second = ws.wait_for("the second attempt", |recs| {
        recs.iter().find_map(|r| match r.event {
            Event::AttemptStarted {
                attempt: 2, pid, ..
            } => Some(pid),
            _ => None,
        })
    });
    assert_ne!(first, second);
    std::fs::write(ws.root().join("release"), "").unwrap();
    assert!(matches!(ws.wait_settled("job"), Event::Done { .. }));
    let dones = ws
        .records()
        .iter()
        .filter(|r| matches!(r.event, Event::Done { .. }))
        .count();
    assert_eq!(dones, 1);
    ws.wait_for("the file in done/", |_| {
        (list(&ws, "done") == ["job.json"]).then_some(())
    });
    assert!(list(&ws, "running").is_empty());
}

#[test]
fn a_file_in_running_without_a_ledger_record_is_run() {
    let ws = Workspace::new(CONFIG);
    // A claim whose `received` never reached the ledger (a crash right after the rename).
    std::fs::write(
        ws.path("running/orphan.json"),
        r#"{"prompt": "left behind"}"#,
    )
    .unwrap();
    let _d = ws.start();
    assert!(matches!(ws.wait_settled("orphan"), Event::Done { .. }));
    assert_eq!(
        std::fs::read_to_string(ws.path("outbox/orphan.md")).unwrap(),
        "ok from good: left behind\n"
    );
    ws.wait_for("the file in done/", |_| {
        (list(&ws, "done") == ["orphan.json"]).then_some(())
    });
}

#[test]
fn a_finished_task_whose_file_was_not_moved_is_not_run_again() {
    let ws = Workspace::new(CONFIG);
    let mut d = ws.start();
    ws.drop_task("once.json", r#"{"prompt": "p"}"#);
    ws.wait_settled("once");
    ws.wait_for("the file in done/", |_| {
        (list(&ws, "done") == ["once.json"]).then_some(())
    });
    d.stop();
    // Simulate a crash between recording `done` and moving the file.
    std::fs::rename(ws.path("done/once.json"), ws.path("running/once.json")).unwrap();
    let _d = ws.start();
    ws.wait_for("the file to be moved to done/", |_| {
        (list(&ws, "done") == ["once.json"]).then_some(())
    });
    let recs = ws.records();
    assert_eq!(
        recs.iter()
            .filter(|r| matches!(r.event, Event::AttemptStarted { .. }))
            .count(),
        1
    );
    assert_eq!(
        recs.iter()
            .filter(|r| matches!(r.event, Event::Done { .. }))
            .count(),
        1
    );
}

#[test]
fn an_unrecorded_agent_of_an_earlier_daemon_is_killed_at_start() {
    use std::os::unix::process::ExitStatusExt;
    let ws = Workspace::new(CONFIG);
    // An agent spawned in the instant before a crash: running, but in no ledger record.
    let mut stray = std::process::Command::new("sleep")
        .arg("100")
        .env("DIRIGENT_WORKSPACE", ws.root())
        .spawn()
        .unwrap();
    // A process of another workspace is none of our business.
    let other = tempfile::tempdir().unwrap();
    let mut bystander = std::process::Command::new("sleep")
        .arg("100")
        .env("DIRIGENT_WORKSPACE", other.path())
        .spawn()
        .unwrap();
    let _d = ws.start();
    // Recovery runs before the first scan: once this task is done, it has happened.
    ws.drop_task("after.json", r#"{"prompt": "p"}"#);
    ws.wait_settled("after");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(stray.wait().unwrap()).unwrap());
    let status = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the stray process was not killed");
    assert_eq!(status.signal(), Some(9));
    assert_eq!(
        bystander.try_wait().unwrap(),
        None,
        "a process of another workspace was killed"
    );
    bystander.kill().unwrap();
    bystander.wait().unwrap();
    let log = std::fs::read_to_string(ws.root().join("daemon.log")).unwrap();
    assert!(
        log.contains("killed 1 leftover process(es) of an earlier daemon of this workspace"),
        "{log}"
    );
}
