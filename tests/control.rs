//! The control socket: cancel and retry through the running daemon.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{Workspace, list, process_gone};
use dirigent::ledger::Event;

const CONFIG: &str = r#"
concurrency: 1
kill_grace: 300ms
agents:
  hang:  { command: ["{agents}/hang.sh"] }
  gate:  { command: ["{agents}/gate.sh", "release"] }
  flaky: { command: ["{agents}/flaky.sh"] }
"#;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}
fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn cancel_stops_a_running_agent_with_its_grandchild_and_a_queued_task() {
    let ws = Workspace::new(CONFIG);
    let _d = ws.start();
    ws.drop_task("h.json", r#"{"prompt": "p", "agent": "hang"}"#);
    ws.wait_for("the grandchild", |_| {
        std::fs::read_to_string(ws.root().join("grandchild.pid"))
            .ok()
            .filter(|s| !s.trim().is_empty())
    });
    // concurrency 1: this one waits in the queue.
    ws.drop_task("q.json", r#"{"prompt": "p", "agent": "gate"}"#);
    ws.wait_for("the second task to be claimed", |recs| {
        recs.iter()
            .any(|r| matches!(&r.event, Event::Claimed { task, .. } if task == "q"))
            .then_some(())
    });
    let socket = ws.path("daemon.sock");
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let out = ws.cli(&["cancel", "h"]);
    assert_eq!(
        stdout(&out),
        "cancelling `h`: its process group is being stopped\n",
        "{}",
        stderr(&out)
    );
    let out = ws.cli(&["cancel", "q"]);
    assert_eq!(stdout(&out), "cancelled `q`\n");
    for id in ["h", "q"] {
        ws.wait_for("the cancellation", |recs| {
            recs.iter()
                .any(|r| matches!(&r.event, Event::Cancelled { task } if task == id))
                .then_some(())
        });
    }
    let grandchild: u32 = std::fs::read_to_string(ws.root().join("grandchild.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        process_gone(grandchild),
        "the grandchild survived the cancel"
    );
    assert_eq!(
        ws.attempts("h"),
        [("hang".to_string(), "cancelled".to_string())]
    );
    assert!(ws.attempts("q").is_empty(), "a queued task must not start");
    ws.wait_for("both files in failed/", |_| {
        (list(&ws, "failed") == ["h.json", "q.json"]).then_some(())
    });
    let status = stdout(&ws.cli(&["status", "h"]));
    assert!(
        status.contains("state:    cancelled at ")
            && status.contains("(by the user; `dirigent retry h` runs it again)\nreport:   .context/escalations/h.md\n"),
        "status says it was cancelled and where its report is: {status}"
    );
    // The report it points to exists, for a running and for a queued task.
    for id in ["h", "q"] {
        let report = std::fs::read_to_string(ws.path(&format!("escalations/{id}.md")))
            .unwrap_or_else(|e| panic!("the report of cancelled `{id}`: {e}"));
        assert!(
            report.starts_with(&format!("# Cancelled: {id} — "))
                && report.contains("It was cancelled on request")
                && report.contains(&format!("`dirigent retry {id}`")),
            "{report}"
        );
    }
    // Cancelling again, or something unknown, is a clear error.
    assert_eq!(
        stderr(&ws.cli(&["cancel", "h"])),
        "error: task `h` has already finished (cancelled)\n"
    );
    assert_eq!(
        stderr(&ws.cli(&["result", "h"])),
        "error: task `h` was cancelled and has no result; `dirigent retry h` runs it again\n"
    );
    let table = String::from_utf8_lossy(&ws.cli(&["status"]).stdout).into_owned();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("h ") && l.split_whitespace().nth(1) == Some("cancelled")),
        "expected `h` listed as cancelled, got:\n{table}"
    );
    assert_eq!(
        stderr(&ws.cli(&["cancel", "nope"])),
        "error: no task `nope`; `dirigent status` lists the tasks\n"
    );
    // A script reads it as cancelled, not from the reason's words.
    let v: serde_json::Value =
        serde_json::from_slice(&ws.cli(&["status", "h", "--json"]).stdout).expect("status --json");
    assert_eq!(
        (&v["state"], &v["cancelled"]),
        (&"failed".into(), &true.into()),
        "expected state failed and cancelled: {v}"
    );
    // A cancel is the user's doing, not a failure of the agent's.
    let v: serde_json::Value =
        serde_json::from_slice(&ws.cli(&["agents", "--json"]).stdout).expect("agents --json");
    let hang = v["agents"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["name"] == "hang"))
        .unwrap_or_else(|| panic!("expected `hang` listed: {v}"));
    assert!(
        hang["last_failure"].is_null(),
        "expected no last failure for a cancelled attempt: {hang}"
    );
}

#[test]
fn retry_after_escalation_succeeds_when_the_agent_is_fixed() {
    let ws = Workspace::new(CONFIG);
    let _d = ws.start();
    ws.drop_task("f.json", r#"{"prompt": "p", "agent": "flaky"}"#);
    assert!(matches!(ws.wait_settled("f"), Event::Escalated { .. }));
    ws.wait_for("the file in failed/", |_| {
        (list(&ws, "failed") == ["f.json"]).then_some(())
    });
    // flaky.sh fails only the first time: the "fix" is in place now. `retry` asks the daemon,
    // which applies the escalation just after the file has moved.
    ws.wait_state("f", "failed");
    let out = ws.cli(&["retry", "f"]);
    assert_eq!(
        stdout(&out),
        "retrying `f` from the top of its chain\n",
        "{}",
        stderr(&out)
    );
    ws.wait_for("the retried task to be done", |recs| {
        recs.iter()
            .any(|r| matches!(&r.event, Event::Done { task, .. } if task == "f"))
            .then_some(())
    });
    assert_eq!(
        ws.attempts("f"),
        [
            ("flaky".to_string(), "exit".to_string()),
            ("flaky".to_string(), "ok".to_string())
        ]
    );
    ws.wait_for("the file in done/", |_| {
        (list(&ws, "done") == ["f.json"]).then_some(())
    });
    assert!(
        list(&ws, "failed").is_empty(),
        "f.json must have left failed/"
    );
    // `result` and `retry` ask the engine, which applies `done` after the file has moved.
    ws.wait_state("f", "done");
    assert_eq!(
        stdout(&ws.cli(&["result", "f"])),
        "worked the second time\n",
        "the retried task's result"
    );
    let v: serde_json::Value =
        serde_json::from_slice(&ws.cli(&["result", "f", "--json"]).stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"id": "f", "state": "done", "result": "worked the second time\n", "output": ".context/outbox/f.md"}),
        "the result for a script"
    );
    assert_eq!(
        stderr(&ws.cli(&["retry", "f"])),
        "error: task `f` is done; only a failed or cancelled task can be retried\n"
    );
}

#[test]
fn without_a_daemon_cancel_says_what_to_do() {
    let ws = Workspace::new(CONFIG);
    let out = ws.cli(&["cancel", "x"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!(
            "error: no daemon is running on `{}`",
            ws.root().display()
        )),
        "{err}"
    );
    assert!(
        err.ends_with("; start it with `dirigent daemon`\n"),
        "{err}"
    );
}

#[test]
fn other_users_are_refused() {
    if !nix::unistd::geteuid().is_root() {
        // Changing to another uid needs root; CI runs as root.
        eprintln!("skipped: needs root to act as another user");
        return;
    }
    let ws = Workspace::new(CONFIG);
    let _d = ws.start();
    // Start-up (including the socket's chmod 0600 after bind) is over once a task has settled.
    ws.drop_task("first.json", r#"{"prompt": "p", "agent": "flaky"}"#);
    ws.wait_settled("first");
    // The socket is 0600: as another user even connect() is refused. Open it up to check that
    // the peer check refuses too.
    std::fs::set_permissions(
        ws.path("daemon.sock"),
        std::fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    std::fs::set_permissions(ws.ctx(), std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(ws.root(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            common::BIN,
            "cancel",
            "x",
        ])
        .env("DIRIGENT_ROOT", ws.root())
        .output()
        .expect("setpriv (util-linux) runs");
    // The client checks first: a socket of another user never gets a request.
    let sock = ws.path("daemon.sock");
    assert_eq!(
        stderr(&out),
        format!(
            "error: refusing to talk to `{}`: it belongs to uid 0, not to you (uid 65534)\n",
            sock.display()
        )
    );
    // A client that does not check is refused by the daemon's peer check.
    let raw = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            // perl-base is on every Debian system; its IO::Socket::UNIX does no checks.
            "/usr/bin/perl",
            "-MIO::Socket::UNIX",
            "-e",
            "$SIG{PIPE} = q(IGNORE); my $s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or die $!; print $s qq({\"op\":\"status\"}\\n); print scalar <$s>;",
        ])
        .arg(&sock)
        .output()
        .expect("setpriv runs perl");
    assert_eq!(
        String::from_utf8_lossy(&raw.stdout),
        "{\"ok\":false,\"message\":\"refused: the daemon serves only the user it runs as\"}\n",
        "stderr: {}",
        stderr(&raw)
    );
}

/// `--json` on the commands that act: one object on stdout, what was done or why not.
#[test]
fn cancel_retry_and_discard_answer_scripts_in_json() {
    let ws = Workspace::new(CONFIG);
    let json = |out: &std::process::Output| -> serde_json::Value {
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("expected one JSON object on stdout ({e}): {out:?}"))
    };
    // No daemon: the refusal says it cannot be asked.
    let out = ws.cli(&["cancel", "x", "--json"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let v = json(&out);
    assert_eq!(
        (&v["ok"], &v["id"], &v["failure"]),
        (&false.into(), &"x".into(), &"unavailable".into()),
        "{v}"
    );
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("no daemon is running on")),
        "expected why in `error`, got {v}"
    );

    let _d = ws.start();
    ws.drop_task("f.json", r#"{"prompt": "p", "agent": "flaky"}"#);
    assert!(matches!(ws.wait_settled("f"), Event::Escalated { .. }));
    ws.wait_state("f", "failed");
    let out = ws.cli(&["retry", "f", "--json"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        json(&out),
        serde_json::json!({"ok": true, "id": "f", "message": "retrying `f` from the top of its chain"})
    );
    ws.wait_settled("f");
    ws.wait_state("f", "done");
    for (args, failure, error) in [
        (
            ["retry", "f"],
            "conflict",
            "task `f` is done; only a failed or cancelled task can be retried",
        ),
        (
            ["cancel", "f"],
            "conflict",
            "task `f` has already finished (done)",
        ),
        (
            ["cancel", "nope"],
            "not_found",
            "no task `nope`; `dirigent status` lists the tasks",
        ),
    ] {
        let out = ws.cli(&[args[0], args[1], "--json"]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert_eq!(
            json(&out),
            serde_json::json!({"ok": false, "id": args[1], "error": error, "failure": failure}),
            "{args:?}"
        );
        assert_eq!(
            stderr(&out),
            format!("error: {error}\n"),
            "{args:?}: the error line stays on stderr"
        );
    }
    let out = ws.cli(&["discard", "f", "--json"]);
    let v = json(&out);
    assert_eq!(
        (out.status.code(), &v["ok"], &v["id"]),
        (Some(2), &false.into(), &"f".into()),
        "a task without a worktree has nothing to discard: {v}"
    );
}
