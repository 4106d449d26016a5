//! Fleet mode against a real `nats-server` (Debian's package; `.ci/run` installs it): each
//! test starts its own server on a free port with JetStream and a temporary store, and real
//! daemons in fleet mode around it. Without `nats-server` on PATH these tests say so and pass,
//! unless `DIRIGENT_REQUIRE_NATS=1` (what `.ci/run` sets after installing it).

mod common;
#[path = "common/nats.rs"]
mod nats;

use common::*;
use dirigent::ledger::Event;
use nats::*;

#[test]
fn tasks_go_to_the_workers_that_have_their_agent_and_come_back_done() {
    let Some(nats) = Nats::start() else { return };
    // The submitter knows both agents but has neither installed, and does not work.
    let submitter = Workspace::new(&node(
        &nats,
        "desk",
        false,
        "  alpha: { command: [\"absent-alpha-cli\"] }\n  beta: { command: [\"absent-beta-cli\"] }\n",
    ));
    let a = ok_worker(&nats, "gpu", &["alpha"]);
    let b = ok_worker(&nats, "laptop", &["beta"]);
    let _ds = submitter.start();
    let _da = a.start();
    let _db = b.start();
    for i in 0..3 {
        submitter.drop_task(
            &format!("a{i}.json"),
            &format!(r#"{{"prompt": "alpha task {i}", "agent": "alpha"}}"#),
        );
        submitter.drop_task(
            &format!("b{i}.json"),
            &format!(r#"{{"prompt": "beta task {i}", "agent": "beta"}}"#),
        );
    }
    for i in 0..3 {
        for (task, worker, agent) in [
            (format!("a{i}"), "gpu", "alpha"),
            (format!("b{i}"), "laptop", "beta"),
        ] {
            let settled = submitter.wait_settled(&task);
            let Event::Done { output, .. } = settled else {
                panic!("expected `{task}` done, got {settled:?}");
            };
            let records = submitter.records();
            assert_eq!(
                ran_on(&records, &task).as_deref(),
                Some(worker),
                "expected `{task}` ({agent}) to run on `{worker}`, the only worker with {agent}"
            );
            let text = std::fs::read_to_string(submitter.root().join(&output)).unwrap();
            assert!(
                text.contains(&format!("ok from {agent}: {agent} task {i}")),
                "expected the worker's result in the submitter's `{output}`, got {text:?}"
            );
        }
    }
    // A task's `output` is a path of its node's workspace: the worker's file of that name is
    // never touched (written there, it replaced the worker's own files).
    std::fs::create_dir_all(a.root().join("notes")).unwrap();
    std::fs::write(a.root().join("notes/Makefile"), "the worker's own\n").unwrap();
    submitter.drop_task(
        "o1.json",
        r#"{"id": "o1", "prompt": "to a path", "agent": "alpha", "output": "notes/Makefile"}"#,
    );
    assert!(
        matches!(submitter.wait_settled("o1"), Event::Done { .. }),
        "expected `o1` done"
    );
    let there = std::fs::read_to_string(submitter.root().join("notes/Makefile")).unwrap();
    assert!(
        there.contains("ok from alpha: to a path"),
        "expected the result at the submitter's `output`, got {there:?}"
    );
    assert_eq!(
        std::fs::read_to_string(a.root().join("notes/Makefile")).unwrap(),
        "the worker's own\n",
        "expected the worker's own file of that name untouched"
    );
    let (ra, rb) = (a.records(), b.records());
    assert_eq!(
        count(&ra, |e| matches!(e, Event::FleetTaken { .. })),
        4,
        "expected the alpha worker to take exactly the four alpha tasks"
    );
    assert_eq!(
        count(&rb, |e| matches!(e, Event::FleetTaken { .. })),
        3,
        "expected the beta worker to take exactly the three beta tasks"
    );
    assert_eq!(
        count(&ra, |e| matches!(e, Event::FleetSettled { won: true, .. })),
        4,
        "expected the alpha worker to claim four outcomes"
    );
    // Every node's attempts, from the events stream, by the worker that ran them.
    let by_worker = submitter.wait_until("`stats --fleet` to count both workers' attempts", || {
        let out = submitter.cli(&["stats", "--fleet", "--by", "worker", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let rows: Vec<(String, u64)> = v["rows"]
            .as_array()?
            .iter()
            .map(|r| {
                (
                    r["key"].as_str().unwrap_or("").to_string(),
                    r["ok"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        let expected = [("gpu", 4), ("laptop", 3)];
        (rows.len() == 2
            && rows
                .iter()
                .zip(expected)
                .all(|((k, ok), (w, n))| k == w && *ok == n))
        .then_some(rows)
    });
    assert_eq!(
        by_worker,
        vec![("gpu".to_string(), 4), ("laptop".to_string(), 3)],
        "expected four successful attempts on the alpha worker, three on the beta one"
    );
    let text = submitter.cli(&["stats", "--fleet"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("alpha") && l.contains(" 4 "))
            && text
                .lines()
                .any(|l| l.starts_with("beta") && l.contains(" 3 ")),
        "expected `stats --fleet` to list alpha with 4 attempts and beta with 3, got:\n{text}"
    );
    let refused = submitter.cli(&["stats", "--by", "worker"]);
    assert_eq!(
        String::from_utf8_lossy(&refused.stderr).trim(),
        "error: `--by worker` groups the fleet's attempts: add `--fleet`",
        "expected `--by worker` without `--fleet` refused with the reason"
    );
}

#[test]
fn a_task_of_a_worker_killed_mid_attempt_finishes_exactly_once_on_another() {
    let Some(nats) = Nats::start() else { return };
    let submitter = submitter(&nats, &["slow"]);
    // The first worker's agent never finishes; the second's does at once.
    let first = Workspace::new(&node(
        &nats,
        "first",
        true,
        "  slow: { command: [\"{agents}/gate.sh\", \"never\"] }\n",
    ));
    let second = ok_worker(&nats, "second", &["slow"]);
    let _ds = submitter.start();
    let mut d1 = first.start();
    submitter.drop_task("t.json", r#"{"prompt": "p", "agent": "slow"}"#);
    first.wait_for("the first worker to start the task", |recs| {
        recs.iter()
            .any(|r| matches!(&r.event, Event::AttemptStarted { .. }))
            .then_some(())
    });
    let _d2 = second.start();
    d1.crash();
    let settled = submitter.wait_settled("t");
    assert!(
        matches!(settled, Event::Done { .. }),
        "expected `t` done on the second worker, got {settled:?}"
    );
    assert_eq!(
        ran_on(&submitter.records(), "t").as_deref(),
        Some("second"),
        "expected the second worker's outcome"
    );
    // The first worker comes back: its unfinished copy is handed back, not run or settled.
    let _d1 = first.start();
    first.wait_for("the first worker to hand its copy back", |recs| {
        recs.iter()
            .any(|r| matches!(&r.event, Event::HandedBack { .. }))
            .then_some(())
    });
    let records = submitter.records();
    assert_eq!(
        count(&records, |e| matches!(
            e,
            Event::Done { .. } | Event::Escalated { .. }
        )),
        1,
        "expected exactly one outcome for `t` on the submitter"
    );
    assert_eq!(
        count(&first.records(), |e| matches!(e, Event::Done { .. })),
        0,
        "expected no `done` on the killed worker"
    );
}

#[test]
fn a_partitioned_worker_that_finishes_late_records_a_duplicate_not_a_second_done() {
    let Some(nats) = Nats::start() else { return };
    let submitter = submitter(&nats, &["slow"]);
    let late = Workspace::new(&node(
        &nats,
        "late",
        true,
        "  slow: { command: [\"{agents}/gate.sh\", \"go\"] }\n",
    ));
    let other = ok_worker(&nats, "other", &["slow"]);
    let _ds = submitter.start();
    let dl = late.start();
    submitter.drop_task("t.json", r#"{"prompt": "p", "agent": "slow"}"#);
    late.wait_for("the late worker to start the task", |recs| {
        recs.iter()
            .any(|r| matches!(&r.event, Event::AttemptStarted { .. }))
            .then_some(())
    });
    // Cut off: frozen, it says nothing to the server, which gives the task to the other.
    dl.signal(nix::sys::signal::Signal::SIGSTOP);
    let _do = other.start();
    let settled = submitter.wait_settled("t");
    assert!(
        matches!(settled, Event::Done { .. }),
        "expected `t` done, got {settled:?}"
    );
    assert_eq!(ran_on(&submitter.records(), "t").as_deref(), Some("other"));
    // Back, and its agent finishes: its outcome is a duplicate.
    dl.signal(nix::sys::signal::Signal::SIGCONT);
    std::fs::write(late.root().join("go"), "").unwrap();
    late.wait_for(
        "the late worker to record its outcome as a duplicate",
        |recs| {
            recs.iter()
                .any(|r| matches!(&r.event, Event::FleetSettled { won: false, .. }))
                .then_some(())
        },
    );
    let records = submitter.records();
    assert_eq!(
        count(&records, |e| matches!(e, Event::Done { .. })),
        1,
        "expected one `done` for `t` on the submitter, whatever the late worker did"
    );
}

#[test]
fn a_rejected_task_never_reaches_the_queue() {
    let Some(nats) = Nats::start() else { return };
    let submitter = ok_worker(&nats, "desk", &["alpha"]);
    let _ds = submitter.start();
    submitter.drop_task("bad.json", r#"{"prompt": "p", "agent": "nobody"}"#);
    submitter.drop_task("good.json", r#"{"prompt": "p", "agent": "alpha"}"#);
    submitter.wait_settled("good");
    let records = submitter.records();
    assert_eq!(
        count(&records, |e| matches!(e, Event::Rejected { .. })),
        1,
        "expected `bad.json` rejected"
    );
    let published: Vec<&str> = records
        .iter()
        .filter_map(|r| match &r.event {
            Event::Published { task, .. } => Some(task.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        published,
        ["good"],
        "expected only the accepted task on the queue"
    );
    // The server itself: one message ever stored, and it was acknowledged.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let state = rt.block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream("DIRIGENT_TASKS").await.unwrap();
        stream.info().await.unwrap().state.clone()
    });
    assert_eq!(
        state.last_sequence, 1,
        "expected exactly one message ever published to the queue, got {state:?}"
    );
    assert_eq!(
        state.messages, 0,
        "expected the one message acknowledged and gone"
    );
}

#[test]
fn a_restart_of_the_server_mid_run_loses_nothing() {
    let Some(mut nats) = Nats::start() else {
        return;
    };
    let submitter = submitter(&nats, &["alpha"]);
    let worker = ok_worker(&nats, "gpu", &["alpha"]);
    let _ds = submitter.start();
    let _dw = worker.start();
    for i in 0..5 {
        submitter.drop_task(
            &format!("a{i}.json"),
            r#"{"prompt": "p", "agent": "alpha"}"#,
        );
    }
    submitter.wait_settled("a0");
    nats.stop();
    // Said plainly, on a node that only submits too.
    let said = submitter.wait_until("`status` to say the server is away", || {
        let out = submitter.cli(&["status"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.contains("fleet:   node `desk` at")
            .then_some(text)
            .filter(|t| t.contains("not connected"))
    });
    assert!(
        said.contains("keeps obeying the last state it saw"),
        "expected status to say what the node does meanwhile, got:\n{said}"
    );
    // Tasks submitted while the server is down wait; none is lost.
    for i in 5..10 {
        submitter.drop_task(
            &format!("a{i}.json"),
            r#"{"prompt": "p", "agent": "alpha"}"#,
        );
    }
    submitter.wait_for("the new tasks to be received", |recs| {
        (count(recs, |e| matches!(e, Event::Received { .. })) == 10).then_some(())
    });
    nats.run();
    for i in 0..10 {
        let settled = submitter.wait_settled(&format!("a{i}"));
        assert!(
            matches!(settled, Event::Done { .. }),
            "expected `a{i}` done, got {settled:?}"
        );
    }
    let records = submitter.records();
    assert_eq!(
        count(&records, |e| matches!(e, Event::Done { .. })),
        10,
        "expected exactly ten `done`, one per task"
    );
}

#[test]
fn a_task_escalated_on_the_fleet_runs_there_again_when_retried() {
    let Some(nats) = Nats::start() else { return };
    let submitter = submitter(&nats, &["flaky"]);
    // Fails the first time it runs in the worker's workspace, succeeds afterwards.
    let worker = Workspace::new(&node(
        &nats,
        "gpu",
        true,
        "  flaky: { command: [\"{agents}/flaky.sh\"] }\n",
    ));
    let _ds = submitter.start();
    let _dw = worker.start();
    submitter.drop_task("t.json", r#"{"prompt": "p", "agent": "flaky"}"#);
    let first = submitter.wait_settled("t");
    let Event::Escalated { reason, .. } = &first else {
        panic!("expected `t` escalated on its first run, got {first:?}");
    };
    assert!(
        reason.contains("on worker `gpu`"),
        "expected the reason to name the worker, got {reason:?}"
    );
    // The node has no record of attempts made elsewhere: the reason carries them.
    assert!(
        reason.contains("Attempts on this worker (task `desk.t` here; `dirigent logs desk.t` on it shows their output):\n- attempt 1: flaky → "),
        "expected the worker's attempts in the reason, got {reason:?}"
    );
    // `retry` asks the daemon, which applies the escalation just after the ledger has it.
    submitter.wait_state("t", "failed");
    let out = submitter.cli(&["retry", "t"]);
    assert!(out.status.success(), "retry failed: {out:?}");
    submitter.wait_for("`t` to be done after the retry", |recs| {
        recs.iter()
            .any(|r| matches!(&r.event, Event::Done { task, .. } if task == "t"))
            .then_some(())
    });
    let rounds: Vec<u32> = submitter
        .records()
        .iter()
        .filter_map(|r| match &r.event {
            Event::Published { round, .. } => Some(*round),
            _ => None,
        })
        .collect();
    assert_eq!(rounds, [0, 1], "expected the retry published as round 1");
}

#[test]
fn a_task_every_worker_refuses_escalates_on_its_node_instead_of_circling() {
    let Some(nats) = Nats::start() else { return };
    let submitter = submitter(&nats, &["alpha", "beta"]);
    // The worker has alpha but not beta: the task's chain names an agent it does not know.
    let worker = ok_worker(&nats, "gpu", &["alpha"]);
    let _ds = submitter.start();
    let _dw = worker.start();
    submitter.drop_task("t.json", r#"{"prompt": "p", "chain": ["alpha", "beta"]}"#);
    let settled = submitter.wait_settled("t");
    let Event::Escalated { reason, .. } = &settled else {
        panic!("expected `t` escalated, got {settled:?}");
    };
    // Five refusals at least: a delivery whose ack wait ran out on a loaded machine counts too.
    let times: Option<u32> = reason
        .split("refused by the fleet's workers ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok());
    assert!(
        times.is_some_and(|n| n >= 5) && reason.contains("unknown agent `beta`"),
        "expected the reason to say the workers refused it at least 5 times and why, got {reason:?}"
    );
}

#[test]
fn status_and_fleet_name_the_workers_and_the_agents_no_worker_runs() {
    let Some(nats) = Nats::start() else { return };
    let submitter = submitter(&nats, &["alpha", "beta"]);
    let worker = ok_worker(&nats, "gpu", &["alpha"]);
    let _ds = submitter.start();
    let _dw = worker.start();
    let fleet = submitter.wait_until("the submitter to hear from the worker", || {
        let out = submitter.cli(&["fleet", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let live = v["workers"]
            .as_array()?
            .iter()
            .any(|w| w["name"] == "gpu" && w["live"] == true);
        live.then_some(v)
    });
    assert_eq!(
        fleet["node"], "desk",
        "expected the node's own name in {fleet}"
    );
    let gpu = fleet["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "gpu")
        .unwrap();
    assert_eq!(
        gpu["agents"],
        serde_json::json!(["alpha"]),
        "expected the worker's agents in {fleet}"
    );
    let desk = fleet["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "desk")
        .expect("the submitting node is listed too");
    assert_eq!(
        desk["works"], false,
        "expected the submitter listed as submitting only"
    );
    submitter.drop_task("b.json", r#"{"prompt": "p", "agent": "beta"}"#);
    submitter.wait_for("`b` to be published", |recs| {
        recs.iter()
            .any(|r| matches!(&r.event, Event::Published { task, .. } if task == "b"))
            .then_some(())
    });
    let out = submitter.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("waiting: no live worker of the fleet runs `beta` (1 task: b)"),
        "expected status to say no worker runs beta, got:\n{text}"
    );
    // Its row: the agent it waits for; attempts and time are the worker's, not counted here.
    let row = format!(
        "{:<28} {:<9} {:<10} {:>3} {:>8}  ",
        "b", "pending", "beta", "-", "-"
    );
    assert!(
        text.lines().any(|l| l.starts_with(&row)),
        "expected the row {row:?} in:\n{text}"
    );
    assert!(
        text.contains("workers: gpu (alpha; 0/2)"),
        "expected status to list the live worker, got:\n{text}"
    );
    // The task's own view, and a client waiting for such a task, say why it waits.
    let out = submitter.cli(&["status", "b"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("waiting:  no live worker of the fleet runs `beta`; the task runs once one that does joins"),
        "expected `status b` to say why it waits, got:\n{text}"
    );
    let mut waiting = submitter.cli_spawn(&["submit", "p2", "--agent", "beta", "--wait"]);
    let (found, said) = stderr_until(
        &mut waiting,
        "waiting: no live worker of the fleet runs `beta`",
    );
    let _ = waiting.kill();
    let _ = waiting.wait();
    assert!(
        found,
        "expected `submit --wait` to say why the task waits, it said:\n{}",
        said.join("\n")
    );
    assert!(
        said.iter()
            .any(|l| l.contains("on the fleet's queue (dirigent.tasks.")),
        "expected `submit --wait` to say the task went onto the fleet's queue, it said:\n{}",
        said.join("\n")
    );
    let out = worker.cli(&["fleet"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("gpu") && text.contains("live"),
        "expected `dirigent fleet` on the worker to list itself live, got:\n{text}"
    );
}

/// An agent a worker's config gains by a reload is pulled for at once: a task that waited for
/// it runs, and the worker's heartbeat lists it.
#[test]
fn an_agent_added_to_a_workers_config_is_pulled_for_after_the_reload() {
    let Some(nats) = Nats::start() else { return };
    let submitter = submitter(&nats, &["alpha", "beta"]);
    let worker = ok_worker(&nats, "gpu", &["alpha"]);
    let _ds = submitter.start();
    let _dw = worker.start();
    wait_live(&submitter, "gpu");
    submitter.drop_task("b.json", r#"{"id": "b", "prompt": "p", "agent": "beta"}"#);
    submitter.wait_for("`b` to be published", |recs| {
        recs.iter()
            .any(|r| matches!(&r.event, Event::Published { task, .. } if task == "b"))
            .then_some(())
    });
    worker.write_config(&node(
        &nats,
        "gpu",
        true,
        "  alpha: { command: [\"{agents}/ok.sh\"] }\n  beta: { command: [\"{agents}/ok.sh\"] }\n",
    ));
    assert!(
        matches!(submitter.wait_settled("b"), Event::Done { .. }),
        "expected `b` done once the worker runs beta"
    );
    let agents = submitter.wait_until("the worker's heartbeat to list beta", || {
        let out = submitter.cli(&["fleet", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let gpu = v["workers"]
            .as_array()?
            .iter()
            .find(|w| w["name"] == "gpu")?
            .clone();
        (gpu["agents"] == serde_json::json!(["alpha", "beta"])).then_some(gpu["agents"].clone())
    });
    assert_eq!(
        agents,
        serde_json::json!(["alpha", "beta"]),
        "expected both agents listed"
    );
}

/// A node whose server cannot be reached says so: `fleet` and `status --fleet` exit 1 and
/// name the problem.
#[test]
fn a_node_without_its_server_says_so_everywhere() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ws = Workspace::new(&format!(
        "cluster:\n  url: nats://127.0.0.1:{port}\n  name: desk\n  work: false\nagents:\n  a: {{ command: [\"absent-cli\"] }}\n"
    ));
    let _d = ws.start();
    let out = ws.wait_until("`fleet` to say the server is away", || {
        let out = ws.cli(&["fleet"]);
        String::from_utf8_lossy(&out.stdout)
            .contains("not connected")
            .then_some(out)
    });
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected `fleet` to exit 1 without its server: {out:?}"
    );
    let out = ws.cli(&["status", "--fleet"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.code() == Some(1)
            && text.starts_with("fleet:   not connected to the fleet's server (")
            && text.contains("nothing heard from the fleet yet"),
        "expected `status --fleet` to say the server is away and exit 1, got {out:?}"
    );
}

/// A token from a variable the daemon's environment lacks cannot come by retrying: the daemon
/// refuses to start, saying which variable and where to set it.
#[test]
fn a_missing_token_variable_stops_the_start_with_the_reason() {
    let ws = Workspace::new(
        "cluster:\n  url: nats://127.0.0.1:4222\n  name: desk\n  token_env: DIRIGENT_TEST_NO_SUCH_TOKEN\nagents:\n  a: { command: [\"absent-cli\"] }\n",
    );
    let mut d = ws.start();
    let status = d.wait();
    assert!(
        !status.success(),
        "expected the start refused, got {status}"
    );
    let log = std::fs::read_to_string(ws.root().join("daemon.log")).unwrap();
    assert!(
        log.contains("`cluster.token_env: DIRIGENT_TEST_NO_SUCH_TOKEN` names a variable this daemon's environment does not have"),
        "expected the variable named, got:\n{log}"
    );
}

#[test]
fn fleet_on_a_daemon_outside_a_fleet_says_how_to_join_one() {
    let ws = Workspace::new("agents:\n  a: { command: [\"{agents}/ok.sh\"] }\n");
    let _d = ws.start();
    let out = ws.wait_until("the daemon to answer", || {
        let out = ws.cli(&["fleet"]);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        (!err.contains("not running") && !err.contains("does not answer")).then_some(out)
    });
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected `fleet` to fail outside a fleet"
    );
    assert!(
        err.contains("error: this daemon is not in a fleet: add a `cluster:` section"),
        "expected the error to say how to join a fleet, got {err:?}"
    );
}

#[test]
fn a_stopped_worker_hands_its_task_back_and_another_runs_it_at_once() {
    let Some(nats) = Nats::start() else { return };
    let submitter = submitter(&nats, &["slow"]);
    // A long ack wait: only the hand-back, not the wait running out, can move the task on.
    let long = |name: &str, agent: &str| {
        node(&nats, name, true, agent).replace("ack_wait: 2s", "ack_wait: 10m")
    };
    let first = Workspace::new(&long(
        "first",
        "  slow: { command: [\"{agents}/gate.sh\", \"never\"] }\n",
    ));
    let second = Workspace::new(&long(
        "second",
        "  slow: { command: [\"{agents}/ok.sh\"] }\n",
    ));
    let _ds = submitter.start();
    let mut d1 = first.start();
    submitter.drop_task("t.json", r#"{"prompt": "p", "agent": "slow"}"#);
    first.wait_started("desk.t");
    let _d2 = second.start();
    let status = d1.stop();
    assert!(status.success(), "expected a clean stop, got {status:?}");
    let records = first.records();
    assert!(
        records
            .iter()
            .any(|r| matches!(&r.event, Event::HandedBack { task } if task == "desk.t")),
        "expected the stopped worker to record the task handed back"
    );
    let settled = submitter.wait_settled("t");
    assert!(
        matches!(settled, Event::Done { .. }),
        "expected `t` done, got {settled:?}"
    );
    assert_eq!(ran_on(&submitter.records(), "t").as_deref(), Some("second"));
    // A clean stop takes the worker's heartbeat away at once: it is not listed any more.
    submitter.wait_until("the stopped worker to leave the fleet's list", || {
        let out = submitter.cli(&["fleet", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let listed = v["workers"]
            .as_array()?
            .iter()
            .any(|w| w["name"] == "first");
        (!listed).then_some(())
    });
}

#[test]
fn a_rate_limit_seen_on_one_worker_rests_the_provider_on_the_others() {
    let Some(nats) = Nats::start() else { return };
    let submitter = submitter(&nats, &["limited", "backup"]);
    // On `a` the provider answers with a rate limit; on `b` it would work.
    let a = Workspace::new(&node(
        &nats,
        "a",
        true,
        "  limited: { command: [\"{agents}/pattern.sh\"], provider: shared, cooldown: 10m, fatal_patterns: { rate_limit: [\"rate limit exceeded\"] } }\n",
    ));
    let b = Workspace::new(&node(
        &nats,
        "b",
        true,
        "  limited: { command: [\"{agents}/ok.sh\"], provider: shared }\n  backup: { command: [\"{agents}/ok.sh\"] }\n",
    ));
    let _ds = submitter.start();
    let mut da = a.start();
    submitter.drop_task("x.json", r#"{"prompt": "p", "agent": "limited"}"#);
    a.wait_for("the provider to cool down on `a`", |recs| {
        recs.iter()
            .any(|r| matches!(&r.event, Event::ProviderCooldown { worker: None, .. }))
            .then_some(())
    });
    let _db = b.start();
    b.wait_for("`b` to hear that the provider rests", |recs| {
        recs.iter().find_map(|r| match &r.event {
            Event::ProviderCooldown {
                provider, worker, ..
            } if provider == "shared" && worker.as_deref() == Some("a") => Some(()),
            _ => None,
        })
    });
    da.stop();
    submitter.drop_task(
        "y.json",
        r#"{"prompt": "p", "chain": ["limited", "backup"]}"#,
    );
    let settled = submitter.wait_settled("y");
    assert!(
        matches!(settled, Event::Done { .. }),
        "expected `y` done, got {settled:?}"
    );
    let agents: Vec<String> = b
        .attempts("desk.y")
        .into_iter()
        .map(|(agent, _)| agent)
        .collect();
    assert_eq!(
        agents,
        ["backup"],
        "expected `b` to skip the resting provider and run the backup"
    );
}

#[test]
fn the_daily_budget_counts_what_every_worker_spent() {
    let Some(nats) = Nats::start() else { return };
    let submitter = submitter(&nats, &["dear"]);
    let worker = |name: &str| {
        Workspace::new(&format!(
            "budgets: {{daily: 1}}\n{}",
            node(
                &nats,
                name,
                true,
                "  dear: { command: [\"{agents}/costly.sh\", \"0.6\", \"ok\"], output: claude_json, prompt: stdin }\n",
            )
        ))
    };
    let (a, b) = (worker("a"), worker("b"));
    let _ds = submitter.start();
    let mut da = a.start();
    for t in ["t1", "t2"] {
        submitter.drop_task(&format!("{t}.json"), r#"{"prompt": "p", "agent": "dear"}"#);
        let settled = submitter.wait_settled(t);
        assert!(
            matches!(settled, Event::Done { .. }),
            "expected `{t}` done on `a`, got {settled:?}"
        );
    }
    // `a` has spent $1.20 of the fleet's $1 a day; `b` has spent nothing.
    let _db = b.start();
    b.wait_until("`b` to hear what `a` spent", || {
        let out = b.cli(&["fleet", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["workers"]
            .as_array()?
            .iter()
            .any(|w| w["name"] == "a" && w["spent_today_usd"].as_f64().is_some_and(|s| s > 1.1))
            .then_some(())
    });
    da.stop();
    submitter.drop_task("t3.json", r#"{"prompt": "p", "agent": "dear"}"#);
    let settled = submitter.wait_settled("t3");
    let Event::Escalated { reason, .. } = &settled else {
        panic!("expected `t3` escalated by the fleet's budget, got {settled:?}");
    };
    assert!(
        reason.contains("on worker `b`: the daily budget is spent: $1.20 of $1.00"),
        "expected the reason to name the fleet's spending, got {reason:?}"
    );
}

#[test]
fn a_large_result_comes_back_whole_through_the_object_store() {
    let Some(nats) = Nats::start() else { return };
    let submitter = submitter(&nats, &["big"]);
    // 300,000 bytes of output: far over what travels in an outcome.
    let worker = Workspace::new(&node(
        &nats,
        "gpu",
        true,
        "  big: { command: [\"sh\", \"-c\", \"head -c 300000 /dev/zero | tr '\\\\0' x; echo; echo end-of-result\"] }\n",
    ));
    let _ds = submitter.start();
    let _dw = worker.start();
    submitter.drop_task("t.json", r#"{"prompt": "p", "agent": "big"}"#);
    let settled = submitter.wait_settled("t");
    let Event::Done { output, .. } = settled else {
        panic!("expected `t` done, got {settled:?}");
    };
    let text = std::fs::read_to_string(submitter.root().join(&output)).unwrap();
    assert!(
        text.len() > 300_000 && text.trim_end().ends_with("end-of-result"),
        "expected the whole 300 kB result on the submitter, got {} bytes ending {:?}",
        text.len(),
        &text[text.len().saturating_sub(40)..]
    );
    // It travelled through the object store, not in the outcome.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let outcome: serde_json::Value = rt.block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let kv = js.get_key_value("dirigent_outcomes").await.unwrap();
        let mut keys = kv.keys().await.unwrap();
        let mut key = None;
        while let Some(k) = futures_util::StreamExt::next(&mut keys).await {
            let k = k.unwrap();
            if k.starts_with("desk.t=") {
                key = Some(k);
            }
        }
        let key = key.expect("the outcome is in the bucket under `desk.t=…`");
        let value = kv.get(key.clone()).await.unwrap().unwrap();
        let mut v: serde_json::Value = serde_json::from_slice(&value).unwrap();
        v["key"] = key.into();
        v
    });
    assert_eq!(
        outcome["object"], outcome["key"],
        "expected the outcome to name the result's object (its key), got {outcome}"
    );
    assert_eq!(outcome["text"], "", "expected no inline text in {outcome}");
}

#[test]
fn status_fleet_shows_every_nodes_tasks_from_the_events_stream() {
    let Some(nats) = Nats::start() else { return };
    let submitter = submitter(&nats, &["alpha"]);
    let worker = ok_worker(&nats, "gpu", &["alpha"]);
    let _ds = submitter.start();
    let _dw = worker.start();
    submitter.drop_task("t.json", r#"{"prompt": "p", "agent": "alpha"}"#);
    submitter.wait_settled("t");
    // Asked on the worker: it knows the submitter's task only from the events stream.
    let view = worker.wait_until("the worker's fleet view to have both nodes' tasks", || {
        let out = worker.cli(&["status", "--fleet", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let state = |node: &str, id: &str| {
            v["nodes"].as_array()?.iter().find(|n| n["node"] == node)?["tasks"]
                .as_array()?
                .iter()
                .find(|t| t["id"] == id)
                .map(|t| t["state"].clone())
        };
        (state("desk", "t")? == "done" && state("gpu", "desk.t")? == "done").then_some(v)
    });
    let desk = view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == "desk")
        .unwrap();
    assert_eq!(
        desk["tasks"][0]["ran_on"], "gpu",
        "expected the submitter's task to say where it ran, in {view}"
    );
    let out = worker.cli(&["status", "--fleet"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("desk") && l.contains(" t ") && l.contains("ran on gpu")),
        "expected a line for desk's task `t` that ran on gpu, got:\n{text}"
    );
    let out = Workspace::new("agents:\n  a: { command: [\"{agents}/ok.sh\"] }\n")
        .cli(&["status", "--fleet"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("error: the daemon is not running"),
        "expected a clear error without a daemon, got {out:?}"
    );
}

#[test]
fn a_providers_start_rate_counts_the_starts_of_every_worker() {
    let Some(nats) = Nats::start() else { return };
    let submitter = submitter(&nats, &["a"]);
    let worker = |name: &str| {
        Workspace::new(&format!(
            "providers: {{p: {{starts_per_minute: 2}}}}\n{}",
            node(
                &nats,
                name,
                true,
                "  a: { command: [\"{agents}/ok.sh\"], provider: p }\n"
            )
        ))
    };
    let (first, second) = (worker("first"), worker("second"));
    let _ds = submitter.start();
    // One start on the first worker.
    let mut d1 = first.start();
    submitter.drop_task("t1.json", r#"{"prompt": "p", "agent": "a"}"#);
    submitter.wait_settled("t1");
    let first_start = first
        .records()
        .iter()
        .find(|r| matches!(&r.event, Event::AttemptStarted { .. }))
        .map(|r| r.ts)
        .expect("the first worker started `t1`");
    d1.stop();
    // The second worker joins (hearing the fleet's recent starts before it takes a task) and
    // runs two more: the first fits the window (1 + 1 of 2), the next must wait for it.
    let _d2 = second.start();
    for t in ["t2", "t3"] {
        submitter.drop_task(&format!("{t}.json"), r#"{"prompt": "p", "agent": "a"}"#);
        // `t3` waits about a minute by design (the first worker's start leaving the window):
        // the usual patience on top of that.
        submitter.wait_until_longer(
            &format!("task `{t}` to settle"),
            std::time::Duration::from_secs(60),
            || {
                submitter.records().iter().find_map(|r| match &r.event {
                    Event::Done { task, .. } | Event::Escalated { task, .. } if task == t => {
                        Some(())
                    }
                    _ => None,
                })
            },
        );
    }
    let starts: Vec<u64> = second
        .records()
        .iter()
        .filter(|r| matches!(&r.event, Event::AttemptStarted { .. }))
        .map(|r| r.ts)
        .collect();
    assert_eq!(
        starts.len(),
        2,
        "expected `t2` and `t3` to run on the second worker"
    );
    assert!(
        starts[0] < first_start + 60_000,
        "expected `t2` to start at once (one start of two in the window), it started {} ms after the first worker's",
        starts[0] - first_start
    );
    // The window counts from the moment the first worker decided to start, a few ms before
    // its `attempt_started` was written: a second's slack, where not waiting would be ~59 s early.
    assert!(
        starts[1] >= first_start + 59_000,
        "expected `t3` to wait until the first worker's start left the window ({first_start} + 60 s), it started at {}",
        starts[1]
    );
}

#[test]
fn two_nodes_with_one_name_are_told_and_keep_their_own_results() {
    let Some(nats) = Nats::start() else { return };
    let config = |prompt_agent: &str| node(&nats, "desk", false, prompt_agent);
    let one = Workspace::new(&config("  alpha: { command: [\"absent-cli\"] }\n"));
    let two = Workspace::new(&config("  alpha: { command: [\"absent-cli\"] }\n"));
    let worker = ok_worker(&nats, "gpu", &["alpha"]);
    let _d1 = one.start();
    let _dw = worker.start();
    one.wait_until("the first `desk` to beat", || {
        let out = one.cli(&["fleet", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["workers"]
            .as_array()?
            .iter()
            .any(|w| w["name"] == "desk")
            .then_some(())
    });
    let _d2 = two.start();
    // The same id on both: each gets its own task's result, not the other's.
    one.drop_task("same.json", r#"{"prompt": "from one", "agent": "alpha"}"#);
    two.drop_task("same.json", r#"{"prompt": "from two", "agent": "alpha"}"#);
    for (ws, prompt) in [(&one, "from one"), (&two, "from two")] {
        let Event::Done { output, .. } = ws.wait_settled("same") else {
            panic!("expected `same` done on the node that sent {prompt:?}");
        };
        let text = std::fs::read_to_string(ws.root().join(&output)).unwrap();
        assert!(
            text.contains(prompt),
            "expected the result of {prompt:?}, got {text:?}"
        );
    }
    let said = one.wait_until("a node to say the name is taken twice", || {
        [&one, &two].iter().find_map(|ws| {
            let out = ws.cli(&["status"]);
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            text.contains("another node of the fleet also uses the name `desk`")
                .then_some(text)
        })
    });
    assert!(
        said.contains("give each node its own `cluster.name`"),
        "got:\n{said}"
    );
}

#[test]
fn hostile_messages_on_the_queue_are_dropped_and_the_worker_goes_on() {
    let Some(nats) = Nats::start() else { return };
    let submitter = submitter(&nats, &["alpha"]);
    let worker = ok_worker(&nats, "gpu", &["alpha"]);
    let _ds = submitter.start();
    let _dw = worker.start();
    wait_live(&worker, "gpu");
    // Published straight onto the queue: not JSON, a node name no key can hold, an id that is
    // not a name, a node other than the subject's. The worker (concurrency 2) must not be held
    // by any of them.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let spec = |node: &str, id: &str| {
            serde_json::json!({
                "node": node,
                "spec": {"id": id, "title": "x", "prompt": "", "chain": ["alpha"],
                         "chain_source": "agent", "fields": {"prompt": "hostile", "agent": "alpha"}},
                "received_ms": 5
            })
            .to_string()
        };
        for payload in [
            "not json".to_string(),
            spec("bad node", "x1"),
            spec("evil", "../x"),
            spec("a.b", "x2"),
            spec("desk", "x3"),
        ] {
            js.publish("dirigent.tasks.alpha.evil", payload.into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    });
    submitter.drop_task("t.json", r#"{"prompt": "p", "agent": "alpha"}"#);
    let settled = submitter.wait_settled("t");
    assert!(
        matches!(settled, Event::Done { .. }),
        "expected `t` done, got {settled:?}"
    );
    assert_eq!(
        count(&worker.records(), |e| matches!(e, Event::FleetTaken { .. })),
        1,
        "expected the worker to take only the real task"
    );
}

#[test]
fn a_task_too_large_for_the_server_escalates_with_the_reason() {
    let Some(nats) = Nats::start() else { return };
    let submitter = submitter(&nats, &["alpha"]);
    let _ds = submitter.start();
    // Under the 1 MiB task file limit; with JSON's escaping (`"` → `\"`), over the server's
    // 1 MiB messages.
    let prompt = "\"".repeat(600_000);
    submitter.drop_task("big.md", &format!("---\nagent: alpha\n---\n{prompt}\n"));
    let settled = submitter.wait_settled("big");
    let Event::Escalated { reason, .. } = &settled else {
        panic!("expected `big` escalated, got {settled:?}");
    };
    assert!(
        reason.contains("it cannot go on the fleet's queue") && reason.contains("max_payload"),
        "expected the reason to say the task is too large for the server, got {reason:?}"
    );
}

#[test]
fn the_event_stream_follows_every_nodes_records_with_fleet_true() {
    let Some(nats) = Nats::start() else { return };
    let submitter = submitter(&nats, &["alpha"]);
    let worker = ok_worker(&nats, "gpu", &["alpha"]);
    let _ds = submitter.start();
    let (_dw, url, token) = worker.start_http();
    submitter.drop_task("t.json", r#"{"prompt": "p", "agent": "alpha"}"#);
    submitter.wait_settled("t");
    // Asked of the worker: the submitter's records come only through the fleet's stream.
    let mut all = SseStream::open(&url, "/events?fleet=true&after=0", &token, &[]);
    assert_eq!(all.status, 200, "expected the fleet's event stream");
    let mut seen: Vec<(String, serde_json::Value, Option<u64>)> = Vec::new();
    let done = |seen: &[(String, serde_json::Value, Option<u64>)], node: &str, task: &str| {
        seen.iter()
            .any(|(n, r, _)| n == node && r["event"] == "done" && r["task"] == task)
    };
    while !(done(&seen, "desk", "t") && done(&seen, "gpu", "desk.t")) {
        let ev = all.next().expect("the stream stays open");
        let v: serde_json::Value = serde_json::from_str(&ev.data)
            .unwrap_or_else(|e| panic!("expected JSON data, got {:?}: {e}", ev.data));
        let node = v["node"].as_str().expect("each event names its node");
        assert!(
            v["record"]["seq"].is_u64() && v["record"]["event"].is_string(),
            "expected a ledger record in {v}"
        );
        let id = ev
            .id
            .map(|i| i.parse::<u64>().expect("`id:` is the stream's sequence"));
        seen.push((node.to_string(), v["record"].clone(), id));
    }
    let ids: Vec<u64> = seen.iter().filter_map(|(_, _, id)| *id).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "expected the stream's sequence to grow: {ids:?}"
    );
    // Resumed after the first message: what follows it, from its next record on.
    let first_id = ids[0];
    let after_first = seen
        .iter()
        .position(|(_, _, id)| *id == Some(first_id))
        .unwrap()
        + 1;
    let mut resumed = SseStream::open(
        &url,
        "/events?fleet=true",
        &token,
        &[("Last-Event-ID", &first_id.to_string())],
    );
    let ev = resumed
        .next()
        .expect("the resumed stream sends what followed");
    let v: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
    assert_eq!(
        (v["node"].as_str().unwrap(), &v["record"]),
        (seen[after_first].0.as_str(), &seen[after_first].1),
        "expected the record right after message {first_id}"
    );
    // Refused with the reason: with `brief`, and on a daemon outside a fleet.
    let bad = http(
        &url,
        "GET",
        "/events?fleet=true&brief=true",
        Some(&token),
        None,
    );
    assert_eq!(
        bad.status, 400,
        "expected `fleet` with `brief` refused: {bad:?}"
    );
    let alone = Workspace::new("agents:\n  a: { command: [\"{agents}/ok.sh\"] }\n");
    let (_da, url, token) = alone.start_http();
    let out = http(&url, "GET", "/events?fleet=true", Some(&token), None);
    assert_eq!(out.status, 404, "expected 404 outside a fleet: {out:?}");
    assert!(
        out.body.contains("not in a fleet"),
        "expected the reason, got {}",
        out.body
    );
}
