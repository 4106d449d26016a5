//! Crash recovery: the daemon is killed with SIGKILL and started again.

mod common;

use common::{Workspace, list, process_gone};
use dirigent::ledger::Event;

/// Waits for attempt 1's `attempt_finished` as `interrupted` (a restart closing it): its reason
/// and the time it was recorded to have run.
fn first_attempt_interrupted(ws: &Workspace) -> (String, u64) {
    ws.wait_for("the interrupted attempt to be closed", |recs| {
        recs.iter().find_map(|r| match &r.event {
            Event::AttemptFinished {
                attempt: 1,
                class,
                reason,
                duration_ms,
                ..
            } if class.as_str() == "interrupted" => Some((reason.clone(), *duration_ms)),
            _ => None,
        })
    })
}

/// Drops task `job` on the gate agent and waits until its attempt waits at the gate.
fn gate_job_waits(ws: &Workspace) {
    ws.drop_task("job.json", r#"{"prompt": "p", "agent": "gate"}"#);
    ws.wait_for("the agent's first line", |_| {
        std::fs::read_to_string(ws.path("runs/job/1-gate.stdout"))
            .ok()
            .filter(|s| s.contains("waiting"))
    });
}

const CONFIG: &str = r#"
kill_grace: 300ms
agents:
  gate: { command: ["{agents}/gate.sh", "release"] }
  good: { command: ["{agents}/ok.sh"], prompt: stdin }
default_chain: [good]
"#;

/// The daemon dies (SIGKILL) while an agent runs: each attempt's supervisor sees its daemon
/// gone and stops the agent's group (SIGTERM, the grace, SIGKILL) — nothing runs on unsupervised
/// until someone starts the daemon again. The restart records the attempt interrupted and runs
/// the task again, once.
#[test]
fn when_the_daemon_dies_its_agents_are_stopped_without_waiting_for_a_restart() {
    let ws = Workspace::new(CONFIG);
    let mut d = ws.start();
    gate_job_waits(&ws);
    assert!(
        !ws.survivors().is_empty(),
        "expected the agent running before the crash"
    );
    d.crash();
    ws.wait_until("the agent to be stopped with no daemon", || {
        ws.survivors().is_empty().then_some(())
    });

    let _d = ws.start();
    let (reason, _) = first_attempt_interrupted(&ws);
    assert_eq!(
        reason, "the daemon stopped while this attempt ran",
        "expected the attempt closed as interrupted, with nothing left to kill"
    );
    std::fs::write(ws.root().join("release"), "").unwrap();
    assert!(matches!(ws.wait_settled("job"), Event::Done { .. }));
    let dones = ws
        .records()
        .iter()
        .filter(|r| matches!(r.event, Event::Done { .. }))
        .count();
    assert_eq!(dones, 1, "expected one `done` for the task");
}

/// After a crash and before the restart, what the ledger shows as running is said to be cut
/// off: `status` calls it interrupted (no clock running on), `logs -f` ends instead of waiting
/// for an end nothing will write, and a script reads `interrupted` in `status --json`.
#[test]
fn before_the_restart_a_crashed_daemons_running_task_reads_as_interrupted() {
    let ws = Workspace::new(CONFIG);
    let mut d = ws.start();
    gate_job_waits(&ws);
    d.crash();
    let out = ws.cli(&["status"]);
    let table = String::from_utf8_lossy(&out.stdout);
    let row = table
        .lines()
        .find(|l| l.starts_with("job "))
        .unwrap_or_else(|| panic!("expected a row for `job`: {table}"));
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>()[..5],
        ["job", "interrupted", "gate", "1", "-"],
        "expected `job` interrupted with no running clock: {table}"
    );
    assert!(
        table.contains("↳ the daemon stopped without recording how its attempt ended (it died or was killed; its agent was stopped with it); the task runs again when the daemon starts (`dirigent daemon`)"),
        "expected what happened and what happens next: {table}"
    );
    let detail = String::from_utf8_lossy(&ws.cli(&["status", "job"]).stdout).into_owned();
    assert!(
        detail.contains("state:    interrupted: the daemon stopped")
            && detail
                .lines()
                .any(|l| l.starts_with("attempt 1: gate") && l.contains(" interrupted ")),
        "expected the task and its attempt interrupted: {detail}"
    );
    let v: serde_json::Value =
        serde_json::from_slice(&ws.cli(&["status", "--json"]).stdout).unwrap();
    assert_eq!(
        v["tasks"][0]["interrupted"], true,
        "expected `interrupted` in --json: {v}"
    );
    let out = ws.cli(&["logs", "-f", "job"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "waiting for release\n",
        "expected the output it had"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "dirigent: no daemon is running: attempt 1 of `job` (gate) was cut off when it stopped (its agent was stopped with it); the task runs again when the daemon starts (`dirigent daemon`)\n"
    );
    // Started again, it is an ordinary task once more.
    let _d = ws.start();
    first_attempt_interrupted(&ws);
    let v: serde_json::Value =
        serde_json::from_slice(&ws.cli(&["status", "--json"]).stdout).unwrap();
    assert!(
        v["tasks"][0].get("interrupted").is_none(),
        "expected no `interrupted` with a daemon running: {v}"
    );
}

/// An attempt whose agent printed nothing, left open by a crash, is recorded to have run at
/// least until the daemon's last record — not the zero its empty captures' times would give.
#[test]
fn an_attempt_cut_short_by_a_crash_ran_at_least_until_the_daemons_last_record() {
    let ws = Workspace::new(
        "concurrency: 1\nkill_grace: 300ms\nagents:\n  quiet: { command: [sh, -c, \"exec sleep 600\"] }\ndefault_chain: [quiet]\n",
    );
    let mut d = ws.start();
    ws.drop_task("job.json", r#"{"prompt": "p"}"#);
    let started_ms = ws.wait_for("the attempt to start", |recs| {
        recs.iter()
            .find(|r| matches!(&r.event, Event::AttemptStarted { task, .. } if task == "job"))
            .map(|r| r.ts)
    });
    // Time passes before the daemon's next record (this waits for the clock, not for work).
    while dirigent::ledger::now_ms() < started_ms + 50 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    ws.drop_task("later.json", r#"{"prompt": "p"}"#);
    let later_ms = ws.wait_for("the second task to be received", |recs| {
        recs.iter()
            .find(|r| matches!(&r.event, Event::Received { task, .. } if task == "later"))
            .map(|r| r.ts)
    });
    d.crash();
    ws.wait_until("the agent to be stopped with no daemon", || {
        ws.survivors().is_empty().then_some(())
    });
    let _d = ws.start();
    let (_, ran_ms) = first_attempt_interrupted(&ws);
    assert!(
        ran_ms >= later_ms - started_ms,
        "expected the attempt to have run at least until the daemon's last record ({} ms), got {ran_ms} ms",
        later_ms - started_ms
    );
}

/// An agent that ignores SIGTERM outlives its daemon for the grace its supervisor gives it; a
/// restart within that grace finds its group alive, kills it, and runs the task again once.
#[test]
fn after_a_crash_an_orphaned_agent_still_running_is_killed_and_the_task_runs_again_once() {
    // A long grace while it runs, so the group is surely alive at the restart; a short one
    // for the restart's own kill.
    let stubborn = |grace: &str| {
        format!(
            "kill_grace: {grace}\nagents:\n  gate: {{ command: [\"sh\", \"-c\", \"trap '' TERM; exec {{agents}}/gate.sh release\"] }}\ndefault_chain: [gate]\n"
        )
    };
    let ws = Workspace::new(&stubborn("10m"));
    let mut d = ws.start();
    ws.drop_task("job.json", r#"{"prompt": "p", "agent": "gate"}"#);
    let first = ws.wait_for("the first attempt", |recs| {
        recs.iter().find_map(|r| match r.event {
            Event::AttemptStarted { pid, .. } => Some(pid),
            _ => None,
        })
    });
    // Crash once the agent has printed its line: an agent that writes after its reader died gets
    // SIGPIPE, which is not what this test is about.
    ws.wait_for("the agent's first line", |_| {
        std::fs::read_to_string(ws.path("runs/job/1-gate.stdout"))
            .ok()
            .filter(|s| s.contains("waiting"))
    });
    d.crash();
    assert!(
        !process_gone(first),
        "expected the orphan running: it ignores SIGTERM and its grace is ten minutes"
    );

    ws.write_config(&stubborn("300ms"));
    let _d = ws.start();
    let (reason, ran_ms) = first_attempt_interrupted(&ws);
    assert!(
        reason.contains("still alive and was killed"),
        "expected the restart to say it killed the group, got: {reason}"
    );
    // It ran from its start until the new daemon killed it: not a zero that reads "never ran".
    assert!(
        ran_ms > 0,
        "expected the interrupted attempt's time to run until it was killed, got {ran_ms} ms"
    );
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
    assert_eq!(dones, 1, "expected one `done` for the task");
    ws.wait_for("the file in done/", |_| {
        (list(&ws, "done") == ["job.json"]).then_some(())
    });
    assert!(list(&ws, "running").is_empty());
}

/// An agent that killed its supervisor and dropped the workspace marker, still in the
/// attempt's group when the daemon crashes: the restart finds it by its group (its leader gone,
/// every member younger than the leader was) and kills it.
#[test]
fn after_a_crash_a_group_whose_supervisor_was_killed_is_still_found_and_killed() {
    let config = "kill_grace: 300ms\nleak_timeout: 10m\nagents:\n  killer: { command: [\"{agents}/hostile/kill-parent-unmarked.sh\"] }\ndefault_chain: [killer]\n";
    let ws = Workspace::new(config);
    let mut d = ws.start();
    ws.drop_task("job.json", r#"{"prompt": "p"}"#);
    let supervisor = ws.wait_for("the first attempt", |recs| {
        recs.iter().find_map(|r| match r.event {
            Event::AttemptStarted { pid, .. } => Some(pid),
            _ => None,
        })
    });
    ws.wait_for("the agent to kill its supervisor", |_| {
        std::fs::read_to_string(ws.path("runs/job/1-killer.stdout"))
            .ok()
            .filter(|s| s.contains("killed my parent"))
    });
    let left = ws.wait_until("the lingering process's pid", || ws.agent_pid("left.pid"));
    ws.wait_until("the supervisor to be gone", || {
        process_gone(supervisor).then_some(())
    });
    d.crash();
    assert!(
        !process_gone(left),
        "expected the unmarked process {left} alive after the crash (no supervisor is left to stop it)"
    );

    let _d = ws.start();
    let (reason, _) = first_attempt_interrupted(&ws);
    assert!(
        reason.contains("still alive and was killed"),
        "expected the restart to say it killed the group, got: {reason}"
    );
    ws.wait_until("the lingering process to be killed", || {
        process_gone(left).then_some(())
    });
}

/// dirigent's own work for an attempt dies (a panic: a bug, injected here while the agent's
/// group exists): its task escalates with a plain reason instead of staying `running` until a
/// restart, the attempt is closed in the ledger, nothing of its group lives on, its slot is
/// free for the next task, and the daemon still stops when asked.
// The fault is injected by debug builds only.
#[cfg(debug_assertions)]
#[test]
fn a_panic_in_an_attempts_work_escalates_the_task_and_frees_its_slot() {
    let ws = Workspace::new(
        "concurrency: 1\nkill_grace: 300ms\nagents:\n  gate: { command: [\"{agents}/gate.sh\", \"release\"] }\n  good: { command: [\"{agents}/ok.sh\"], prompt: stdin }\ndefault_chain: [good]\n",
    );
    let mut d = ws.start_with(&[("DIRIGENT_FAULT", "attempt-panic:boom")]);
    ws.drop_task("boom.json", r#"{"prompt": "p", "agent": "gate"}"#);
    let settled = ws.wait_settled("boom");
    let Event::Escalated { reason, .. } = &settled else {
        panic!("expected `boom` escalated, got {settled:?}");
    };
    assert!(
        reason.starts_with("internal error: dirigent's own work for this attempt panicked"),
        "expected the reason to say what happened, got: {reason}"
    );
    assert!(
        reason.contains("`dirigent retry boom`"),
        "expected the way out in the reason, got: {reason}"
    );
    let closed = ws.records().iter().any(|r| {
        matches!(&r.event, Event::AttemptFinished { task, attempt: 1, class, .. }
            if task == "boom" && class.as_str() == "interrupted")
    });
    assert!(closed, "expected attempt 1 of `boom` closed as interrupted");
    ws.wait_until("the attempt's group to be gone", || {
        ws.survivors().is_empty().then_some(())
    });

    ws.drop_task("after.json", r#"{"prompt": "next"}"#);
    assert!(
        matches!(ws.wait_settled("after"), Event::Done { .. }),
        "expected the next task to run in the freed slot"
    );
    assert!(d.stop().success(), "expected the daemon to stop cleanly");
}

/// The same while the daemon stops: the attempt's work dies as the stop reaches it. The stop
/// waits for the word of it, so the task escalates (its attempt closed) instead of being put
/// back with an attempt left open for ever.
// The fault is injected by debug builds only.
#[cfg(debug_assertions)]
#[test]
fn a_panic_in_an_attempts_work_during_a_stop_escalates_the_task() {
    let ws = Workspace::new(
        "kill_grace: 300ms\nagents:\n  gate: { command: [\"{agents}/gate.sh\", \"release\"] }\ndefault_chain: [gate]\n",
    );
    let mut d = ws.start_with(&[("DIRIGENT_FAULT", "attempt-panic-at-stop:p")]);
    ws.drop_task("p.json", r#"{"prompt": "p"}"#);
    ws.wait_started("p");
    assert!(d.stop().success(), "expected the daemon to stop cleanly");
    let records = ws.records();
    let ended = records.iter().find_map(|r| match &r.event {
        Event::Escalated { task, reason, .. } if task == "p" => Some(reason.clone()),
        Event::Requeued { task, .. } if task == "p" => Some("requeued".into()),
        _ => None,
    });
    assert!(
        ended.as_deref().is_some_and(
            |r| r.starts_with("internal error: dirigent's own work for this attempt panicked")
        ),
        "expected `p` escalated as an internal error at the stop, got {ended:?}"
    );
    let closed = records.iter().any(
        |r| matches!(&r.event, Event::AttemptFinished { task, attempt: 1, .. } if task == "p"),
    );
    assert!(
        closed,
        "expected attempt 1 of `p` closed before the daemon stopped"
    );
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

/// Processes of an earlier daemon the ledger does not know (an agent spawned in the instant
/// before a crash) are stopped at start: asked first (SIGTERM — a git command removes its lock
/// then), killed if they ignore it.
#[test]
fn an_unrecorded_agent_of_an_earlier_daemon_is_stopped_at_start() {
    use std::os::unix::process::ExitStatusExt;
    let ws = Workspace::new(CONFIG);
    // Running, but in no ledger record: one that stops when asked, one that ignores it.
    let mut stray = std::process::Command::new("sleep")
        .arg("100")
        .env("DIRIGENT_WORKSPACE", ws.root())
        .spawn()
        .unwrap();
    let mut stubborn = std::process::Command::new("sh")
        .args(["-c", "trap '' TERM; exec sleep 100"])
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
    for (child, signal, what) in [
        (&mut stray, 15, "asked to stop (SIGTERM)"),
        (&mut stubborn, 9, "killed (SIGKILL) once it ignored SIGTERM"),
    ] {
        let status = child
            .try_wait()
            .unwrap()
            .unwrap_or_else(|| panic!("expected the leftover {what} before the first task ran"));
        assert_eq!(
            status.signal(),
            Some(signal),
            "expected the leftover {what}"
        );
    }
    assert_eq!(
        bystander.try_wait().unwrap(),
        None,
        "a process of another workspace was killed"
    );
    bystander.kill().unwrap();
    bystander.wait().unwrap();
    let log = std::fs::read_to_string(ws.root().join("daemon.log")).unwrap();
    assert!(
        log.contains("stopped 2 leftover process(es) of an earlier daemon of this workspace"),
        "{log}"
    );
}

#[test]
fn the_ledger_is_compacted_into_a_snapshot_and_a_restart_keeps_the_state() {
    let ws = Workspace::new(
        r#"
concurrency: 2
kill_grace: 300ms
ledger_segment_events: 40
ledger_keep_segments: 2
agents:
  gate: { command: ["{agents}/gate.sh", "release"] }
  good: { command: ["{agents}/ok.sh"], prompt: stdin }
default_chain: [good]
"#,
    );
    let mut d = ws.start();
    ws.drop_task("waiting.json", r#"{"prompt": "p", "agent": "gate"}"#);
    ws.drop_task(
        "first.json",
        r#"{"id": "first", "prompt": "the first task"}"#,
    );
    ws.wait_settled("first");
    for i in 0..60 {
        ws.drop_task(&format!("t{i}.json"), r#"{"prompt": "p"}"#);
    }
    let segments = |ws: &Workspace| dirigent::ledger::segments(&ws.ctx()).unwrap();
    // Settled tasks may already be in a rotated segment: look in the snapshot too.
    ws.wait_for(
        "every task to finish and the compaction to catch up",
        |_| {
            let book = dirigent::compact::load(
                &dirigent::workspace::Workspace::new(ws.root()).unwrap(),
                None,
                false,
                None,
                false,
            )
            .ok()?
            .book;
            let all_done = (0..60).all(|i| book.outcome(&format!("t{i}")).is_some());
            (all_done && ws.path(dirigent::compact::SNAPSHOT).exists() && segments(&ws).len() <= 2)
                .then_some(())
        },
    );
    d.stop();
    // The current file is small; history older than the kept segments is only in the snapshot.
    let current = std::fs::read_to_string(ws.path("ledger.jsonl")).unwrap();
    assert!(
        current.lines().count() < 40 + 20,
        "the ledger was not rotated"
    );
    // The stop's own events may rotate once more; that segment is folded in at the next start.
    assert!(segments(&ws).len() <= 3, "{:?}", segments(&ws));
    let first_seq_on_disk = segments(&ws)
        .first()
        .map(|(_, p)| dirigent::ledger::read(p).unwrap().records[0].seq)
        .unwrap_or(u64::MAX);
    assert!(first_seq_on_disk > 40, "old segments were not deleted");

    // After a restart: the first task's id is still taken, the waiting task resumes and
    // sequence numbers continue.
    let last_seq_before = dirigent::compact::load(
        &dirigent::workspace::Workspace::new(ws.root()).unwrap(),
        None,
        false,
        None,
        false,
    )
    .unwrap()
    .book
    .last_seq;
    let _d = ws.start();
    ws.drop_task("again.json", r#"{"id": "first", "prompt": "p"}"#);
    ws.wait_for("the duplicate to be rejected", |recs| {
        recs.iter()
            .any(|r| matches!(&r.event, Event::Rejected { file, .. } if file == "again.json"))
            .then_some(())
    });
    std::fs::write(ws.root().join("release"), "").unwrap();
    assert!(matches!(ws.wait_settled("waiting"), Event::Done { .. }));
    let seqs: Vec<u64> = ws.records().iter().map(|r| r.seq).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    assert!(
        *seqs.last().unwrap() > last_seq_before,
        "{seqs:?} after {last_seq_before}"
    );
    // `done` is in the file before the engine has applied it: ask once the daemon says so.
    let waiting = ws.wait_state("waiting", "done");
    assert_eq!(
        waiting["attempts"].as_array().unwrap().len(),
        2,
        "interrupted once by the stop, then done"
    );
}

/// A snapshot that cannot be read holds history only it has: the daemon (and `status`) refuse
/// it, saying what it is and the way out; taking that way, the daemon starts.
#[test]
fn an_unreadable_snapshot_is_refused_with_the_way_out() {
    let ws = Workspace::new(
        r#"
agents:
  good: { command: ["{agents}/ok.sh"], prompt: stdin }
default_chain: [good]
"#,
    );
    let snapshot = ws.path(dirigent::compact::SNAPSHOT);
    std::fs::write(&snapshot, "not json\n").unwrap();
    let way_out = format!(
        "restore it from a backup, or move it aside (`mv {0} {0}.broken`) to start without that history",
        snapshot.display()
    );
    let mut d = ws.start();
    let status = d.wait();
    assert!(
        !status.success(),
        "expected the daemon to refuse to start, got {status}"
    );
    let log = std::fs::read_to_string(ws.root().join("daemon.log")).unwrap();
    assert!(
        log.contains("cannot be read: expected ident at line 1 column 2 — it holds the history compacted out of the ledger")
            && log.contains(&way_out),
        "expected the refusal to say what the snapshot is and the way out, got:\n{log}"
    );
    let out = ws.cli(&["status"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(&way_out),
        "expected `status` to refuse with the way out too, got {out:?}"
    );
    std::fs::rename(&snapshot, format!("{}.broken", snapshot.display())).unwrap();
    let mut d = ws.start();
    ws.drop_task("after.json", r#"{"id": "after", "prompt": "p"}"#);
    assert!(
        matches!(ws.wait_settled("after"), Event::Done { .. }),
        "expected a task to run once the snapshot is moved aside"
    );
    d.stop();
    // One a later version wrote says so.
    std::fs::write(&snapshot, r#"{"format":99,"seq":1,"shape":"new"}"#).unwrap();
    let out = ws.cli(&["status"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot be read: it was written by a newer dirigent (snapshot format 99; this one reads 1): run that version"),
        "expected a newer snapshot named as such, got {out:?}"
    );
}

#[test]
fn a_full_disk_stops_claiming_without_corrupting_the_ledger() {
    use std::os::unix::process::CommandExt;
    let ws = Workspace::new(CONFIG);
    // Files may not grow past 4 KiB: the ledger write fails after a task or two, as on a full
    // disk (EFBIG instead of ENOSPC; the same write error path).
    let log = std::fs::File::create(ws.root().join("daemon.log")).unwrap();
    let mut cmd = std::process::Command::new(common::BIN);
    cmd.args(["daemon", "--log-level", "debug"])
        .env("DIRIGENT_ROOT", ws.root())
        .stdin(std::process::Stdio::null())
        .stderr(log);
    unsafe {
        cmd.pre_exec(|| {
            let lim = nix::libc::rlimit {
                rlim_cur: 4096,
                rlim_max: 4096,
            };
            if nix::libc::setrlimit(nix::libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut daemon = common::Daemon::adopt(cmd.spawn().unwrap(), ws.root().join("daemon.log"));
    for i in 0..10 {
        ws.drop_task(&format!("t{i}.json"), r#"{"prompt": "p"}"#);
    }
    ws.wait_for("the ledger failure to be reported", |_| {
        std::fs::read_to_string(ws.root().join("daemon.log"))
            .ok()
            .filter(|l| l.contains("error: the ledger cannot be written"))
    });
    assert!(
        !common::process_gone(daemon.pid()),
        "the daemon must stay up"
    );
    // The ledger is intact: no torn line, nothing after the failure.
    let replay = dirigent::ledger::read(&ws.path("ledger.jsonl")).unwrap();
    assert_eq!((replay.valid_len, replay.skipped), (replay.file_len, 0));
    assert!(replay.file_len <= 4096);
    // No more claims: new files stay in the inbox, and the daemon says why.
    ws.drop_task("late.json", r#"{"prompt": "p"}"#);
    ws.wait_for("the daemon to notice the new file", |_| {
        std::fs::read_to_string(ws.root().join("daemon.log"))
            .ok()
            .filter(|l| l.contains("1 task file(s) wait in the inbox: not claiming while the ledger cannot be written"))
    });
    assert_eq!(list(&ws, "inbox"), ["late.json"]);
    daemon.stop();

    // Space again: everything runs, each task exactly once.
    let _d = ws.start();
    let ids: Vec<String> = (0..10)
        .map(|i| format!("t{i}"))
        .chain(["late".to_string()])
        .collect();
    for id in &ids {
        assert!(matches!(ws.wait_settled(id), Event::Done { .. }), "{id}");
    }
    let recs = ws.records();
    for id in &ids {
        let dones = recs
            .iter()
            .filter(|r| matches!(&r.event, Event::Done { task, .. } if task == id))
            .count();
        assert_eq!(dones, 1, "{id}");
    }
}

/// A command that acts, sent while the daemon is still starting (here: waiting for a leftover
/// of an earlier daemon that ignores SIGTERM), waits for it and gets its answer — not "no
/// daemon is running" from a daemon that holds the workspace.
#[test]
fn a_command_sent_while_the_daemon_starts_waits_for_it() {
    let ws = Workspace::new(CONFIG);
    let mut stubborn = std::process::Command::new("sh")
        .args(["-c", "trap '' TERM; exec sleep 100"])
        .env("DIRIGENT_WORKSPACE", ws.root())
        .spawn()
        .unwrap();
    let d = ws.start();
    ws.wait_until("the daemon to hold the workspace", || {
        std::fs::read_to_string(ws.path("daemon.lock"))
            .ok()
            .filter(|pid| pid.trim() == d.pid().to_string())
            .map(drop)
    });
    let out = ws.cli(&["cancel", "nosuch"]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        stderr.contains("no task `nosuch`") && !stderr.contains("no daemon is running"),
        "expected the starting daemon's own answer, got: {stderr}"
    );
    stubborn.wait().unwrap();
}

/// A workspace moved (or copied) to another path meets a key that never sealed its records:
/// they are taken as written — and still on every later start, snapshot included, once the new
/// key marks from which record it seals everything.
#[test]
fn a_moved_workspace_keeps_its_history_on_every_start() {
    // The history in the ledger file; and in segments of a few records, folded into a snapshot.
    for (config, snapshot) in [
        (CONFIG.to_string(), false),
        (format!("{CONFIG}ledger_segment_events: 4\n"), true),
    ] {
        moved_workspace_keeps_its_history(&config, snapshot);
    }
}

fn moved_workspace_keeps_its_history(config: &str, snapshot: bool) {
    let before = Workspace::new(config);
    let mut d = before.start();
    for id in ["old-1", "old-2", "old-3"] {
        before.drop_task(&format!("{id}.json"), r#"{"prompt": "p"}"#);
        before.wait_settled(id);
    }
    assert!(d.stop().success());
    let moved = Workspace::new(config);
    for entry in std::fs::read_dir(before.root().join(".context")).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("ledger") {
            std::fs::copy(entry.path(), moved.path(&name)).unwrap();
        }
    }
    assert_eq!(
        moved.path("ledger.snapshot.json").exists(),
        snapshot,
        "expected a snapshot among the moved files: {snapshot}"
    );
    for round in 1..=2 {
        let mut d = moved.start();
        let id = format!("new-{round}");
        moved.drop_task(&format!("{id}.json"), r#"{"prompt": "p"}"#);
        moved.wait_settled(&id);
        for old in ["old-1", "old-2", "old-3"] {
            let out = moved.cli(&["status", old, "--json"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            assert_eq!(
                v["state"], "done",
                "start {round} (snapshot: {snapshot}): expected `{old}` still done after the move, got {v}"
            );
        }
        assert!(d.stop().success());
        let log = std::fs::read_to_string(moved.root().join("daemon.log")).unwrap_or_default();
        assert!(
            !log.contains("ignored:"),
            "start {round} (snapshot: {snapshot}): expected every moved record believed, the log says:\n{log}"
        );
    }
}

/// A task a stop put back into the inbox whose file is then removed while the daemon is down
/// is written again from the ledger at the next start and runs — it stayed `requeued` for good,
/// with nothing to say so.
#[test]
fn a_requeued_task_whose_file_was_removed_runs_at_the_next_start() {
    let ws = Workspace::new(CONFIG);
    let mut d = ws.start();
    ws.drop_task("rq.json", r#"{"prompt": "p", "agent": "gate"}"#);
    ws.wait_started("rq");
    assert!(d.stop().success());
    assert!(
        list(&ws, "inbox").contains(&"rq.json".to_string()),
        "expected the stop to put the task back into the inbox"
    );
    std::fs::remove_file(ws.path("inbox/rq.json")).unwrap();
    std::fs::write(ws.root().join("release"), "").unwrap();
    let _d = ws.start();
    assert!(
        matches!(ws.wait_settled("rq"), Event::Done { .. }),
        "expected the requeued task run again and done"
    );
}

/// A task a stop put back in the inbox was accepted once: when its file comes back refused (its
/// agent removed from the config meanwhile), it is not "rejected" while its record waits on — a
/// later start would run it — but goes on as accepted and fails once, saying why; put the
/// agent back and restart: it stays failed, it never runs.
#[test]
fn a_task_put_back_by_a_stop_whose_agent_is_gone_fails_once_and_is_not_rejected() {
    let with_gate = "kill_grace: 300ms\nagents:\n  gate: { command: [\"{agents}/gate.sh\", \"go\"] }\n  other: { command: [\"{agents}/ok.sh\"] }\n";
    let ws = Workspace::new(with_gate);
    let mut d = ws.start();
    ws.drop_task("lim.json", r#"{"prompt": "p", "agent": "gate"}"#);
    ws.wait_started("lim");
    assert!(d.stop().success(), "expected the daemon to stop");
    ws.write_config("kill_grace: 300ms\nagents:\n  other: { command: [\"{agents}/ok.sh\"] }\n");
    let mut d = ws.start();
    let Event::Escalated { reason, .. } = ws.wait_settled("lim") else {
        panic!("expected `lim` to fail");
    };
    assert!(
        reason.contains("`gate` is no longer configured"),
        "expected the gone agent named, got {reason}"
    );
    let rejected: Vec<_> = ws
        .records()
        .into_iter()
        .filter(|r| matches!(&r.event, Event::Rejected { file, .. } if file == "lim.json"))
        .collect();
    assert!(
        rejected.is_empty(),
        "expected no rejection of its file, got {rejected:?}"
    );
    assert!(d.stop().success(), "expected the daemon to stop");
    ws.write_config(with_gate);
    std::fs::write(ws.root().join("go"), "").unwrap();
    let _d = ws.start();
    // A task after it: once that is settled, the start has done all it would do with `lim`.
    ws.drop_task("probe.json", r#"{"prompt": "p", "agent": "other"}"#);
    ws.wait_settled("probe");
    ws.wait_state("lim", "failed");
    let started = ws
        .records()
        .iter()
        .filter(|r| matches!(&r.event, Event::AttemptStarted { task, .. } if task == "lim"))
        .count();
    assert_eq!(
        started, 1,
        "expected only the first attempt, the one the stop cut off"
    );
}
