//! A task published to the fleet while it runs, against a real `nats-server`: its node says
//! which worker holds it; `dirigent cancel` makes the worker running it stop it (its whole
//! process group) and never report it done; a task still waiting on the queue is taken off
//! it, so no worker ever runs it.

mod common;
#[path = "common/nats.rs"]
mod nats;

use common::*;
use dirigent::ledger::Event;
use nats::*;

/// A worker named `name` whose agent `slow` hangs until killed (`hang.sh`, which ignores
/// SIGTERM and leaves a grandchild).
fn hanging_worker(nats: &Nats, name: &str) -> Workspace {
    Workspace::new(&format!(
        "{}kill_grace: 200ms\n",
        node(
            nats,
            name,
            true,
            "  slow: { command: [\"{agents}/hang.sh\"] }\n"
        )
    ))
}

/// Waits for `task`'s `cancelled` record in `ws`'s ledger.
fn wait_cancelled(ws: &Workspace, task: &str) {
    ws.wait_for(&format!("`{task}` to be cancelled"), |recs| {
        recs.iter()
            .any(|r| matches!(&r.event, Event::Cancelled { task: t } if t == task))
            .then_some(())
    });
}

#[test]
fn status_and_a_waiting_client_say_which_worker_runs_a_published_task() {
    let Some(nats) = Nats::start() else { return };
    let desk = submitter(&nats, &["slow"]);
    let worker = hanging_worker(&nats, "gpu");
    let _dd = desk.start();
    let _dw = worker.start();
    let mut waiting = desk.cli_spawn(&["submit", "p", "--agent", "slow", "--id", "t", "--wait"]);
    let (found, said) = stderr_until(&mut waiting, "running on worker `gpu` of the fleet");
    assert!(
        found,
        "expected `submit --wait` to say the worker that runs the task, it said:\n{}",
        said.join("\n")
    );
    let out = desk.cli(&["status", "t"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("running:  on worker `gpu` of the fleet"),
        "expected `status t` to name the worker that runs it, got:\n{text}"
    );
    assert!(
        !text.contains("waiting:"),
        "expected no reason to wait for a task a worker holds, got:\n{text}"
    );
    let out = desk.cli(&["cancel", "t"]);
    assert!(
        out.status.success(),
        "expected `cancel t` to succeed: {out:?}"
    );
    let status = waiting.wait().unwrap();
    assert!(
        !status.success(),
        "expected the waiting client to exit non-zero for a cancelled task"
    );
}

#[test]
fn cancelling_a_published_task_stops_it_on_the_worker_that_runs_it() {
    let Some(nats) = Nats::start() else { return };
    let desk = submitter(&nats, &["slow"]);
    let worker = hanging_worker(&nats, "gpu");
    let _dd = desk.start();
    let _dw = worker.start();
    desk.drop_task("t.json", r#"{"prompt": "p", "agent": "slow"}"#);
    worker.wait_started("desk.t");
    let out = desk.cli(&["cancel", "t"]);
    assert!(
        out.status.success(),
        "expected `cancel t` to succeed on the submitting node: {out:?}"
    );
    wait_cancelled(&desk, "t");
    // The worker heard it and stopped its copy: its own `cancelled`, well before any
    // timeout (the agent hangs for ever).
    wait_cancelled(&worker, "desk.t");
    let survivors = worker.survivors();
    assert!(
        survivors.is_empty(),
        "expected the agent's whole process group gone on the worker, found {survivors:?}"
    );
    assert!(
        !worker
            .records()
            .iter()
            .any(|r| matches!(r.event, Event::Done { .. })),
        "expected no `done` on the worker"
    );
}

#[test]
fn a_cancelled_task_still_on_the_queue_is_never_run() {
    let Some(nats) = Nats::start() else { return };
    let desk = submitter(&nats, &["alpha"]);
    let _dd = desk.start();
    // No worker yet: the task waits on the queue.
    desk.drop_task("early.json", r#"{"prompt": "p", "agent": "alpha"}"#);
    desk.wait_for("`early` on the fleet's queue", |recs| {
        recs.iter()
            .any(|r| matches!(&r.event, Event::Published { task, .. } if task == "early"))
            .then_some(())
    });
    let out = desk.cli(&["cancel", "early"]);
    assert!(
        out.status.success(),
        "expected `cancel early` to succeed: {out:?}"
    );
    wait_cancelled(&desk, "early");
    // A task published after it, for the same agent: a worker that took `early` would have
    // taken it first.
    desk.drop_task("late.json", r#"{"prompt": "p", "agent": "alpha"}"#);
    let worker = ok_worker(&nats, "gpu", &["alpha"]);
    let _dw = worker.start();
    let late = desk.wait_settled("late");
    assert!(
        matches!(late, Event::Done { .. }),
        "expected `late` done by the worker, got {late:?}"
    );
    let taken: Vec<String> = worker
        .records()
        .into_iter()
        .filter_map(|r| match r.event {
            Event::FleetTaken { task, .. } => Some(task),
            _ => None,
        })
        .collect();
    assert_eq!(
        taken,
        vec!["desk.late".to_string()],
        "expected the worker to take only `late`, never the cancelled `early`"
    );
}

#[test]
fn a_word_of_cancel_stops_nothing_unless_the_tasks_own_node_claimed_the_outcome() {
    let Some(nats) = Nats::start() else { return };
    let desk = submitter(&nats, &["slow"]);
    let worker = hanging_worker(&nats, "gpu");
    let _dd = desk.start();
    let _dw = worker.start();
    desk.drop_task("t.json", r#"{"prompt": "p", "agent": "slow"}"#);
    worker.wait_started("desk.t");
    let key = worker.wait_for("the key `desk.t` was taken under", |recs| {
        recs.iter().find_map(|r| match &r.event {
            Event::FleetTaken { key, .. } => Some(key.clone()),
            _ => None,
        })
    });
    // Words of cancel with no cancelled outcome behind them: from another node's subject, and
    // from the task's own node's subject.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        for subject in ["dirigent.cancel.evil", "dirigent.cancel.desk"] {
            client.publish(subject, key.clone().into()).await.unwrap();
        }
        client.flush().await.unwrap();
    });
    worker.wait_until("the worker to weigh both words", || {
        let log = std::fs::read_to_string(worker.root().join("daemon.log")).ok()?;
        (log.contains("a cancel for another node's task; ignored")
            && log.contains("a cancel whose outcome the bucket does not hold; ignored"))
        .then_some(())
    });
    assert!(
        !worker
            .records()
            .iter()
            .any(|r| matches!(&r.event, Event::Cancelled { .. })),
        "expected the attempt to go on after words of cancel nobody claimed"
    );
    // The node's own cancel still stops it.
    let out = desk.cli(&["cancel", "t"]);
    assert!(
        out.status.success(),
        "expected `cancel t` to succeed: {out:?}"
    );
    wait_cancelled(&worker, "desk.t");
}
