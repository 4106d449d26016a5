//! The whole daemon started in-process, the way a program embedding the library (or a test)
//! runs it: `engine::run` with a `shutdown` future, no subprocess for the daemon itself.

mod common;

use common::{BIN, Workspace};
use dirigent::ledger::Event;

#[test]
fn the_daemon_runs_in_process_until_its_shutdown_future_resolves() {
    let ws = Workspace::new(
        "agents:\n  good: { command: [\"{agents}/ok.sh\"], prompt: stdin }\ndefault_chain: [good]\n",
    );
    // SAFETY: set before any thread of this test process reads the environment: the key's
    // location (outside the workspace) and the supervisor each attempt runs under — this test
    // binary is not `dirigent`, so it names the one cargo built.
    unsafe {
        std::env::set_var("DIRIGENT_STATE_DIR", ws.state.path());
        std::env::set_var("DIRIGENT_SUPERVISOR", BIN);
    }
    let root = dirigent::workspace::Workspace::new(ws.root()).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(dirigent::engine::run(root, async {
            let _ = stopped.await;
        }))
    });
    ws.drop_task("t.json", r#"{"prompt": "in process"}"#);
    let ev = ws.wait_settled("t");
    assert!(matches!(ev, Event::Done { .. }), "the task is done: {ev:?}");
    assert_eq!(
        std::fs::read_to_string(ws.path("outbox/t.md")).unwrap(),
        "ok from good: in process\n",
        "the agent's answer is the result"
    );
    // Resolving the future stops it gracefully, and `run` returns Ok.
    stop.send(()).unwrap();
    let ended = daemon.join().expect("the daemon thread does not panic");
    assert!(ended.is_ok(), "a graceful stop is Ok: {ended:?}");
    assert!(
        !ws.path("daemon.sock").exists(),
        "the control socket is removed at the stop"
    );
}
