//! End-to-end tests of the core supervisor: the real daemon binary on a temp workspace with
//! small script agents (tests/agents/).

mod common;

use common::{Workspace, list, process_gone};
use dirigent::ledger::Event;

const CHAIN_CONFIG: &str = r#"
concurrency: 4
kill_grace: 300ms
leak_timeout: 300ms
default_chain: [good]
agents:
  good:    { command: ["{agents}/ok.sh"], prompt: stdin }
  fail:    { command: ["{agents}/fail.sh", "3"] }
  empty:   { command: ["{agents}/empty.sh"] }
  pattern: { command: ["{agents}/pattern.sh"], success: { fail_patterns: ["(?i)rate ?limit"] } }
  hang:    { command: ["{agents}/hang.sh"], timeout: 1s }
  idle:    { command: ["{agents}/hang.sh"], timeout: 60s, idle_timeout: 700ms }
  big:     { command: ["{agents}/big.sh", "50"] }
  envy:    { command: ["{agents}/env.sh"], prompt: stdin }
  flaky:   { command: ["{agents}/flaky.sh"] }
  missing: { command: ["/nonexistent/agent-binary"] }
  asarg:   { command: ["/bin/echo", "{prompt}"], prompt: arg }
"#;

#[test]
fn a_successful_task_is_recorded_and_its_result_written() {
    let ws = Workspace::new(CHAIN_CONFIG);
    let _d = ws.start();
    ws.drop_task("hello.json", r#"{"prompt": "say hi"}"#);
    let done = ws.wait_settled("hello");
    assert!(
        matches!(done, Event::Done { ref agent, .. } if agent == "good"),
        "{done:?}"
    );
    assert_eq!(
        std::fs::read_to_string(ws.path("outbox/hello.md")).unwrap(),
        "ok from good: say hi\n"
    );
    // `done` is recorded first, then the file moves (a crash in between is completed on restart).
    ws.wait_for("the task file to reach done/", |_| {
        (list(&ws, "done") == ["hello.json"]).then_some(())
    });
    assert!(list(&ws, "running").is_empty() && list(&ws, "inbox").is_empty());
    // The lifecycle is in the ledger, in order.
    let kinds: Vec<String> = ws
        .records()
        .iter()
        .filter(|r| r.event.task() == Some("hello"))
        .map(|r| {
            serde_json::to_value(&r.event).unwrap()["event"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "received",
            "claimed",
            "attempt_started",
            "attempt_finished",
            "done"
        ]
    );
    // The output was captured, and progress.md lists the task as completed.
    assert_eq!(
        std::fs::read_to_string(ws.path("runs/hello/1-good.stdout")).unwrap(),
        "ok from good: say hi\n"
    );
    let progress = ws.wait_for("progress.md to list the task", |_| {
        std::fs::read_to_string(ws.path("progress.md"))
            .ok()
            .filter(|p| p.contains("- [x] hello — say hi (good, "))
    });
    assert!(
        progress.contains("## Completed") && progress.contains("## Failed"),
        "{progress}"
    );
}

#[test]
fn failures_fall_through_the_chain_by_class() {
    let ws = Workspace::new(CHAIN_CONFIG);
    let _d = ws.start();
    ws.drop_task("a.json", r#"{"prompt": "p", "chain": ["fail", "good"]}"#);
    ws.drop_task("b.json", r#"{"prompt": "p", "chain": ["empty", "good"]}"#);
    ws.drop_task("c.json", r#"{"prompt": "p", "chain": ["pattern", "good"]}"#);
    ws.drop_task("d.json", r#"{"prompt": "p", "chain": ["missing", "good"]}"#);
    for (id, agent, class) in [
        ("a", "fail", "exit"),
        ("b", "empty", "empty"),
        ("c", "pattern", "pattern"),
        ("d", "missing", "spawn"),
    ] {
        let ev = ws.wait_settled(id);
        assert!(matches!(ev, Event::Done { .. }), "{id}: {ev:?}");
        assert_eq!(
            ws.attempts(id),
            [
                (agent.to_string(), class.to_string()),
                ("good".to_string(), "ok".to_string())
            ],
            "{id}"
        );
    }
    // The next agent is told what happened before it.
    ws.drop_task(
        "e.json",
        r#"{"prompt": "show env", "chain": ["fail", "envy"]}"#,
    );
    let ev = ws.wait_settled("e");
    assert!(
        matches!(ev, Event::Done { .. }),
        "`envy` should finish `e` after `fail`; without that there is no outbox/e.md: {ev:?}"
    );
    let out = std::fs::read_to_string(ws.path("outbox/e.md")).unwrap();
    let ctx = ws.ctx().canonicalize().unwrap();
    assert!(out.contains("task=e attempt=2"), "{out}");
    assert!(
        out.contains(&format!("ctx={}", ws.ctx().display()))
            || out.contains(&format!("ctx={}", ctx.display())),
        "{out}"
    );
    assert!(out.contains("prev=exit"), "{out}");
    let root = ws.root().canonicalize().unwrap();
    assert!(
        out.contains(&format!("cwd={}\n", root.display())),
        "the agent must run in the workspace: {out}"
    );
    assert!(out.contains("stdin=[show env]"), "{out}");
}

#[test]
fn a_hang_is_killed_with_its_whole_process_group() {
    let ws = Workspace::new(CHAIN_CONFIG);
    let _d = ws.start();
    ws.drop_task("h.json", r#"{"prompt": "p", "chain": ["hang", "good"]}"#);
    let ev = ws.wait_settled("h");
    assert!(
        matches!(ev, Event::Done { .. }),
        "`good` should finish the task after `hang` times out: {ev:?}"
    );
    assert_eq!(
        ws.attempts("h").first(),
        Some(&("hang".to_string(), "timeout".to_string())),
        "the first attempt must be stopped by its 1 s timeout"
    );
    // hang.sh ignores SIGTERM, so the grace ran out and SIGKILL was needed.
    let finished = ws
        .records()
        .into_iter()
        .find_map(|r| match r.event {
            Event::AttemptFinished {
                task,
                kill_signal,
                stopped,
                signal,
                ..
            } if task == "h" => Some((kill_signal, stopped, signal)),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        finished.0,
        Some(9),
        "hang.sh ignores SIGTERM: SIGKILL must have been needed (kill_signal, stopped, signal) = {finished:?}"
    );
    assert_eq!(
        finished.2,
        Some(9),
        "the agent must have died of SIGKILL (kill_signal, stopped, signal) = {finished:?}"
    );
    // hang.sh writes grandchild.pid once it runs; on a loaded machine the timeout may stop it
    // before (or while) it does. Whatever it started must be gone either way.
    if let Some(grandchild) = ws.agent_pid("grandchild.pid") {
        assert!(
            process_gone(grandchild),
            "the grandchild {grandchild} survived its group's kill"
        );
    }
    let left = ws.survivors();
    assert!(
        left.is_empty(),
        "processes of the attempt outlived it: {left:?}"
    );
}

#[test]
fn silence_longer_than_idle_timeout_counts_as_hung() {
    let ws = Workspace::new(CHAIN_CONFIG);
    let _d = ws.start();
    ws.drop_task("i.json", r#"{"prompt": "p", "chain": ["idle", "good"]}"#);
    let ev = ws.wait_settled("i");
    assert!(
        matches!(ev, Event::Done { .. }),
        "`good` should finish the task after `idle` is stopped: {ev:?}"
    );
    assert_eq!(
        ws.attempts("i").first(),
        Some(&("idle".to_string(), "idle".to_string())),
        "an agent silent for longer than its 700 ms idle_timeout must be judged `idle`"
    );
    // hang.sh writes grandchild.pid once it runs; the idle limit may stop it before (or while)
    // it does, so the file may be missing or empty. Whatever it started must be gone either way.
    if let Some(grandchild) = ws.agent_pid("grandchild.pid") {
        assert!(
            process_gone(grandchild),
            "the grandchild {grandchild} survived the idle kill"
        );
    }
    let left = ws.survivors();
    assert!(
        left.is_empty(),
        "processes of the attempt outlived it: {left:?}"
    );
}

#[test]
fn fifty_megabytes_of_output_are_captured_with_flat_memory() {
    let ws = Workspace::new(CHAIN_CONFIG);
    let d = ws.start();
    // What the daemon itself takes for a task (its code, its runtime, an attempt): a debug
    // build's grows with the binary, so the bound is on what the big output adds to it.
    ws.drop_task("small.json", r#"{"prompt": "p", "agent": "good"}"#);
    let ev = ws.wait_settled("small");
    assert!(matches!(ev, Event::Done { .. }), "{ev:?}");
    let before = d.peak_rss_kib();
    ws.drop_task("big.json", r#"{"prompt": "p", "agent": "big"}"#);
    let ev = ws.wait_settled("big");
    assert!(matches!(ev, Event::Done { .. }), "{ev:?}");
    let size = std::fs::metadata(ws.path("runs/big/1-big.stdout"))
        .unwrap()
        .len();
    assert_eq!(size, 50 * 1024 * 1024);
    assert_eq!(
        std::fs::metadata(ws.path("outbox/big.md")).unwrap().len(),
        size
    );
    let peak = d.peak_rss_kib();
    assert!(
        peak - before < 16 * 1024,
        "daemon peak RSS {peak} KiB, {before} KiB after a small task: 50 MB of output must not \
         be held in memory (expected it to add less than 16 MiB)"
    );
}

#[test]
fn an_exhausted_chain_escalates_with_every_attempt() {
    let ws = Workspace::new(&format!(
        "{CHAIN_CONFIG}\non_escalate: [\"{{agents}}/env.sh\"]\n"
    ));
    let _d = ws.start();
    ws.drop_task(
        "doomed.md",
        "---\nchain: [fail, empty, missing]\n---\nReview the auth module\n",
    );
    let ev = ws.wait_settled("doomed");
    assert!(
        matches!(ev, Event::Escalated { attempts: 3, .. }),
        "all three agents fail, so the task must escalate after 3 attempts: {ev:?}"
    );
    let report = std::fs::read_to_string(ws.path("escalations/doomed.md")).unwrap();
    for needle in [
        "Review the auth module",
        "Attempt 1 — fail: `exit`",
        "exit code 3",
        "fail.sh: something went wrong",
        "Attempt 2 — empty: `empty`",
        "Attempt 3 — missing: `spawn`",
        "not installed",
        "`dirigent retry doomed`",
    ] {
        assert!(report.contains(needle), "missing {needle:?} in:\n{report}");
    }
    ws.wait_for("the task file to reach failed/", |_| {
        (list(&ws, "failed") == ["doomed.md"]).then_some(())
    });
    // The hook ran with the task id as its argument.
    ws.wait_for("the on_escalate hook", |_| {
        std::fs::read_to_string(ws.path("runs/doomed/on_escalate.log"))
            .ok()
            .filter(|s| s.contains("stdin=[]"))
    });
}

/// A stop of the daemon waits for the `on_escalate` hook, terminating its whole process group:
/// a grandchild it started does not outlive the daemon.
#[test]
fn a_stop_ends_the_on_escalate_hook_with_its_whole_group() {
    let ws = Workspace::new(&format!(
        "{CHAIN_CONFIG}\non_escalate: [\"{{agents}}/lingers.sh\"]\n"
    ));
    let mut d = ws.start();
    ws.drop_task("doomed.json", r#"{"prompt": "p", "chain": ["fail"]}"#);
    ws.wait_settled("doomed");
    let grandchild = ws.wait_for("the hook's grandchild", |_| ws.agent_pid("doomed.pid"));
    assert!(
        !process_gone(grandchild),
        "expected the hook's grandchild to run"
    );
    let status = d.stop();
    assert!(status.success(), "expected a clean stop, got {status}");
    assert!(
        process_gone(grandchild),
        "expected the hook's grandchild {grandchild} to die with the hook's group at the stop"
    );
    let log = std::fs::read_to_string(&d.log).unwrap();
    assert!(
        log.contains("on_escalate hook was stopped: the daemon is stopping"),
        "expected the log to say the hook was stopped:\n{log}"
    );
}

#[test]
fn stagger_spaces_one_agent_without_holding_up_others() {
    let ws = Workspace::new(
        r#"
concurrency: 10
agents:
  staggered: { command: ["{agents}/slow.sh", "0.05"], stagger: 400ms }
  free:      { command: ["{agents}/slow.sh", "0.05"] }
"#,
    );
    let _d = ws.start();
    for i in 0..3 {
        ws.drop_task(
            &format!("s{i}.json"),
            r#"{"prompt": "p", "agent": "staggered"}"#,
        );
        ws.drop_task(&format!("f{i}.json"), r#"{"prompt": "p", "agent": "free"}"#);
    }
    for i in 0..3 {
        ws.wait_settled(&format!("s{i}"));
        ws.wait_settled(&format!("f{i}"));
    }
    let starts = |agent: &str| -> Vec<u64> {
        ws.records()
            .iter()
            .filter_map(|r| match &r.event {
                Event::AttemptStarted { agent: a, .. } if a == agent => Some(r.ts),
                _ => None,
            })
            .collect()
    };
    let s = starts("staggered");
    let f = starts("free");
    assert_eq!((s.len(), f.len()), (3, 3));
    for w in s.windows(2) {
        // The stagger spaces the decisions to start (400 ms); the ledger time is taken when a
        // start is recorded, a variable while later on a loaded machine. Unstaggered starts
        // would be a few milliseconds apart: half the stagger still proves the spacing.
        assert!(
            w[1] - w[0] >= 200,
            "staggered starts closer than half the 400 ms stagger: {s:?}"
        );
    }
    assert!(
        f.iter().all(|t| *t < s[1]),
        "free agent was held up by the stagger: free {f:?}, staggered {s:?}"
    );
}

#[test]
fn the_concurrency_cap_is_never_exceeded() {
    let ws = Workspace::new(
        r#"
concurrency: 2
agents:
  a: { command: ["{agents}/slow.sh", "0.1"] }
  b: { command: ["{agents}/slow.sh", "0.1"] }
"#,
    );
    let _d = ws.start();
    for i in 0..8 {
        let agent = if i % 2 == 0 { "a" } else { "b" };
        ws.drop_task(
            &format!("t{i}.json"),
            &format!(r#"{{"prompt": "p", "agent": "{agent}"}}"#),
        );
    }
    for i in 0..8 {
        ws.wait_settled(&format!("t{i}"));
    }
    assert_eq!(
        common::max_running(&ws.records()),
        2,
        "at most 2 at once, and the cap was reached"
    );
}

#[test]
fn max_parallel_limits_one_agent() {
    let ws = Workspace::new(
        r#"
concurrency: 8
agents:
  solo: { command: ["{agents}/slow.sh", "0.1"], max_parallel: 1 }
"#,
    );
    let _d = ws.start();
    for i in 0..4 {
        ws.drop_task(&format!("m{i}.json"), r#"{"prompt": "p"}"#);
    }
    for i in 0..4 {
        ws.wait_settled(&format!("m{i}"));
    }
    assert_eq!(common::max_running(&ws.records()), 1);
}

#[test]
fn malformed_files_are_rejected_with_reasons_and_the_daemon_carries_on() {
    let ws = Workspace::new(CHAIN_CONFIG);
    let d = ws.start();
    let nested = format!("{{\"prompt\": {}", "[".repeat(10_000));
    let huge = vec![b' '; 1024 * 1024 + 10];
    let bad: &[(&str, &[u8], &str)] = &[
        ("truncated.json", b"{\"prompt\": \"p\"", "line 1 column"),
        (
            "unknown-key.json",
            b"{\"prompt\": \"p\", \"colour\": 1}",
            "unknown field `colour`",
        ),
        ("wrong-type.json", b"{\"prompt\": [1]}", "invalid type"),
        ("no-prompt.json", b"{\"agent\": \"good\"}", "no prompt"),
        ("empty.json", b"", "empty"),
        ("binary.json", b"\x00\xff\xfe junk", "not valid UTF-8"),
        ("nested.json", nested.as_bytes(), "invalid task JSON"),
        (
            "escape.json",
            b"{\"prompt\": \"p\", \"output\": \"../../x\"}",
            "contains `..`",
        ),
        (
            "absolute.json",
            b"{\"prompt\": \"p\", \"output\": \"/etc/x\"}",
            "is absolute",
        ),
        (
            "unknown-agent.json",
            b"{\"prompt\": \"p\", \"agent\": \"nobody\"}",
            "unknown agent `nobody`",
        ),
        (
            "bad-front.md",
            b"---\nagent: [good\n---\nbody\n",
            "invalid front matter at line",
        ),
        ("unclosed.md", b"---\nagent: good\n", "no closing `---`"),
        ("big.json", &huge, "limit"),
    ];
    for (name, bytes, _) in bad {
        let tmp = ws.path("inbox/.tmp").join(name);
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, ws.path("inbox").join(name)).unwrap();
    }
    // A symlink and a FIFO are not regular files.
    std::fs::write(ws.root().join("secret.txt"), "{\"prompt\": \"leak\"}").unwrap();
    std::os::unix::fs::symlink(ws.root().join("secret.txt"), ws.path("inbox/link.json")).unwrap();
    nix::unistd::mkfifo(&ws.path("inbox/pipe.json"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let total = bad.len() + 2;
    ws.wait_for("every bad file to be rejected", |recs| {
        (recs
            .iter()
            .filter(|r| matches!(r.event, Event::Rejected { .. }))
            .count()
            == total)
            .then_some(())
    });
    for (name, _, reason) in bad {
        let text =
            std::fs::read_to_string(ws.path("rejected").join(format!("{name}.error.txt"))).unwrap();
        assert!(
            text.starts_with(&format!("error: the task file `{name}` was rejected")),
            "{text}"
        );
        assert!(text.contains(reason), "{name}: want {reason:?} in {text}");
        assert!(ws.path("rejected").join(name).exists(), "{name} not moved");
    }
    let link = std::fs::read_to_string(ws.path("rejected/link.json.error.txt")).unwrap();
    assert!(link.contains("symbolic link"), "{link}");
    let fifo = std::fs::read_to_string(ws.path("rejected/pipe.json.error.txt")).unwrap();
    assert!(fifo.contains("FIFO"), "{fifo}");
    assert_eq!(
        std::fs::read_to_string(ws.root().join("secret.txt")).unwrap(),
        "{\"prompt\": \"leak\"}"
    );
    assert!(list(&ws, "inbox").is_empty());
    // Still alive and working.
    assert!(!process_gone(d.pid()));
    ws.drop_task("fine.json", r#"{"prompt": "still here"}"#);
    assert!(matches!(ws.wait_settled("fine"), Event::Done { .. }));
}

#[test]
fn a_task_dropped_while_the_daemon_is_down_runs_when_it_starts() {
    let ws = Workspace::new(CHAIN_CONFIG);
    ws.drop_task("early.json", r#"{"prompt": "before the daemon"}"#);
    let out = ws.cli(&["submit", "also early", "--id", "early2"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "early2\n");
    let _d = ws.start();
    assert!(matches!(ws.wait_settled("early"), Event::Done { .. }));
    assert!(matches!(ws.wait_settled("early2"), Event::Done { .. }));
}

#[test]
fn submit_wait_exit_codes_and_output() {
    let ws = Workspace::new(CHAIN_CONFIG);
    let _d = ws.start();
    let ok = ws.cli(&["submit", "the question", "--wait", "--id", "w1"]);
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout),
        "ok from good: the question\n"
    );
    let err = String::from_utf8_lossy(&ok.stderr);
    assert!(err.contains("attempt 1: good started"), "{err}");
    let bad = ws.cli(&[
        "submit", "doomed", "--agent", "fail", "--wait", "--id", "w2",
    ]);
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("escalated after 1 attempt: "), "{err}");
    assert!(err.contains("see .context/escalations/w2.md"), "{err}");
    // With `--json`, one object once the task settles, for a script to read.
    for (args, code, want) in [
        (
            vec!["submit", "q", "--wait", "--json", "--id", "j1"],
            0,
            serde_json::json!({"state": "done", "agent": "good", "output": ".context/outbox/j1.md", "result": "ok from good: q\n"}),
        ),
        (
            vec![
                "submit", "q", "--agent", "fail", "--wait", "--json", "--id", "j2",
            ],
            1,
            serde_json::json!({"state": "failed", "class": "exit", "attempts": 1, "report": ".context/escalations/j2.md"}),
        ),
    ] {
        let out = ws.cli(&args);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(stdout.lines().count(), 1, "expected one line: {stdout:?}");
        let got: serde_json::Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("expected one JSON object, got {stdout:?} ({e})"));
        for (key, value) in want.as_object().unwrap() {
            assert_eq!(&got[key], value, "{args:?}: `{key}` in {got}");
        }
        assert_eq!(got["id"], args[args.len() - 1], "{got}");
        // Where the task file is now, not the inbox it left.
        let place = if code == 0 { "done" } else { "failed" };
        let file = ws
            .path(&format!("{place}/{}.json", args[args.len() - 1]))
            .display()
            .to_string();
        assert_eq!(got["file"], file.as_str(), "{args:?}: `file` in {got}");
    }
    // The result command prints the same text; a failed task has none.
    let r = ws.cli(&["result", "w1"]);
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        "ok from good: the question\n"
    );
    let r = ws.cli(&["result", "w2"]);
    assert_eq!(r.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&r.stderr),
        "error: task `w2` failed and has no result; see .context/escalations/w2.md\n"
    );
}

#[test]
fn priority_then_arrival_decides_the_order() {
    let ws = Workspace::new(
        r#"
concurrency: 1
agents:
  gate: { command: ["{agents}/gate.sh", "release"] }
  good: { command: ["{agents}/ok.sh"], prompt: stdin }
default_chain: [good]
"#,
    );
    let _d = ws.start();
    // Hold the only slot, then queue work behind it.
    ws.drop_task("blocker.json", r#"{"prompt": "p", "agent": "gate"}"#);
    ws.wait_for("blocker to start", |recs| {
        recs.iter()
            .any(|r| matches!(&r.event, Event::AttemptStarted { task, .. } if task == "blocker"))
            .then_some(())
    });
    ws.drop_task("low.json", r#"{"prompt": "low", "priority": -5}"#);
    ws.drop_task("mid1.md", "first plain markdown prompt\n");
    ws.drop_task("high.json", r#"{"prompt": "high", "priority": 10}"#);
    ws.drop_task("mid2.md", "second plain markdown prompt\n");
    ws.wait_for("all four to be claimed", |recs| {
        (recs
            .iter()
            .filter(|r| matches!(r.event, Event::Claimed { .. }))
            .count()
            == 5)
            .then_some(())
    });
    std::fs::write(ws.root().join("release"), "").unwrap();
    for id in ["low", "mid1", "high", "mid2"] {
        ws.wait_settled(id);
    }
    let order: Vec<String> = ws
        .records()
        .iter()
        .filter_map(|r| match &r.event {
            Event::AttemptStarted { task, .. } => Some(task.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(order, ["blocker", "high", "mid1", "mid2", "low"]);
}

#[test]
fn after_waits_for_done_and_fails_with_a_failed_dependency() {
    let ws = Workspace::new(CHAIN_CONFIG);
    let _d = ws.start();
    // Dropped first, but must wait for `first`.
    ws.drop_task(
        "second.json",
        r#"{"prompt": "p", "after": ["first"], "priority": 100}"#,
    );
    ws.drop_task("first.json", r#"{"prompt": "p", "agent": "good"}"#);
    ws.drop_task("orphan.json", r#"{"prompt": "p", "after": ["broken"]}"#);
    ws.drop_task("broken.json", r#"{"prompt": "p", "agent": "fail"}"#);
    assert!(matches!(ws.wait_settled("second"), Event::Done { .. }));
    let recs = ws.records();
    let first_done = recs
        .iter()
        .position(|r| matches!(&r.event, Event::Done { task, .. } if task == "first"))
        .unwrap();
    let second_start = recs
        .iter()
        .position(|r| matches!(&r.event, Event::AttemptStarted { task, .. } if task == "second"))
        .unwrap();
    assert!(
        first_done < second_start,
        "`second` started before `first` was done"
    );
    let Event::Escalated {
        reason, attempts, ..
    } = ws.wait_settled("orphan")
    else {
        panic!()
    };
    assert_eq!(attempts, 0);
    assert_eq!(reason, "it runs after `broken`, which failed");
}

#[test]
fn a_prompt_too_long_for_one_argument_says_so() {
    let ws = Workspace::new(CHAIN_CONFIG);
    let _d = ws.start();
    // Linux takes at most 128 KiB in one argument.
    let prompt = "x".repeat(200 * 1024);
    ws.drop_task(
        "long.json",
        &format!(r#"{{"prompt": "{prompt}", "agent": "asarg"}}"#),
    );
    let Event::Escalated { reason, .. } = ws.wait_settled("long") else {
        panic!("expected `long` to escalate")
    };
    assert!(
        reason.contains("the prompt is too long for one argument"),
        "expected the advice to name the long argument, got {reason:?}"
    );
    let attempt_reason = ws.records().iter().find_map(|r| match &r.event {
        Event::AttemptFinished { task, reason, .. } if task == "long" => Some(reason.clone()),
        _ => None,
    });
    assert!(
        attempt_reason
            .as_deref()
            .is_some_and(|r| r.contains("its command line is too long for the system")),
        "expected the attempt's reason to say why it could not start, got {attempt_reason:?}"
    );
    assert!(
        !reason.contains("not installed"),
        "expected no claim that `/bin/echo` is missing, got {reason:?}"
    );
}

#[test]
fn duplicate_stems_get_a_suffix_and_duplicate_ids_are_rejected() {
    let ws = Workspace::new(CHAIN_CONFIG);
    let _d = ws.start();
    ws.drop_task("same.json", r#"{"prompt": "one"}"#);
    ws.wait_settled("same");
    ws.drop_task("same.json", r#"{"prompt": "two"}"#);
    assert!(matches!(ws.wait_settled("same-2"), Event::Done { .. }));
    assert_eq!(
        std::fs::read_to_string(ws.path("outbox/same-2.md")).unwrap(),
        "ok from good: two\n"
    );
    ws.drop_task("other.json", r#"{"id": "same", "prompt": "three"}"#);
    ws.wait_for("the duplicate to be rejected", |recs| {
        recs.iter()
            .any(|r| matches!(&r.event, Event::Rejected { file, .. } if file == "other.json"))
            .then_some(())
    });
    let why = std::fs::read_to_string(ws.path("rejected/other.json.error.txt")).unwrap();
    assert!(
        why.contains("duplicate id: a task `same` already exists"),
        "{why}"
    );
}

#[test]
fn output_paths_receive_the_result_and_context_files_reach_the_prompt() {
    let ws = Workspace::new(CHAIN_CONFIG);
    std::fs::write(ws.path("requirements.md"), "must be fast").unwrap();
    std::fs::create_dir_all(ws.root().join("src")).unwrap();
    std::fs::write(ws.root().join("src/auth.rs"), "fn login() {}").unwrap();
    let _d = ws.start();
    ws.drop_task(
        "review.json",
        r#"{"prompt": "Review it", "agent": "good", "output": "docs/ai/review.md", "context": ["requirements.md"], "files": ["src/auth.rs"]}"#,
    );
    assert!(
        matches!(ws.wait_settled("review"), Event::Done { ref output, .. } if output == "docs/ai/review.md")
    );
    let text = std::fs::read_to_string(ws.root().join("docs/ai/review.md")).unwrap();
    assert!(text.starts_with("ok from good: Review it"), "{text}");
    assert!(
        text.contains("## .context/requirements.md") && text.contains("must be fast"),
        "{text}"
    );
    assert!(
        text.contains("## src/auth.rs") && text.contains("fn login() {}"),
        "{text}"
    );
    assert!(!ws.path("outbox/review.md").exists());
    // The prompt actually sent is kept next to the output.
    let sent = std::fs::read_to_string(ws.path("runs/review/1-good.prompt")).unwrap();
    assert!(sent.contains("must be fast"));
}

#[test]
fn graceful_stop_requeues_running_work_which_runs_again_on_restart() {
    let ws = Workspace::new(
        r#"
kill_grace: 300ms
agents:
  gate: { command: ["{agents}/gate.sh", "release"] }
"#,
    );
    let mut d = ws.start();
    ws.drop_task("long.json", r#"{"prompt": "p", "agent": "gate"}"#);
    let pid = ws.wait_for("the attempt to start", |recs| {
        recs.iter().find_map(|r| match r.event {
            Event::AttemptStarted { pid, .. } => Some(pid),
            _ => None,
        })
    });
    let status = d.stop();
    assert!(status.success(), "{status:?}");
    assert!(process_gone(pid), "the agent survived the shutdown");
    assert_eq!(
        ws.attempts("long"),
        [("gate".to_string(), "interrupted".to_string())]
    );
    assert_eq!(list(&ws, "inbox"), ["long.json"]);
    assert!(list(&ws, "running").is_empty());
    assert!(
        ws.records()
            .iter()
            .any(|r| matches!(&r.event, Event::Requeued { task, .. } if task == "long"))
    );

    std::fs::write(ws.root().join("release"), "").unwrap();
    let _d = ws.start();
    assert!(matches!(ws.wait_settled("long"), Event::Done { .. }));
    let attempts = ws.attempts("long");
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[1], ("gate".to_string(), "ok".to_string()));
    // One task, not a new one.
    assert_eq!(
        ws.records()
            .iter()
            .filter(|r| matches!(r.event, Event::Done { .. }))
            .count(),
        1
    );
}

#[test]
fn a_second_daemon_on_the_same_workspace_is_refused() {
    let ws = Workspace::new(CHAIN_CONFIG);
    let d = ws.start();
    ws.wait_for("the first daemon to start", |recs| {
        recs.iter()
            .any(|r| matches!(r.event, Event::DaemonStarted { .. }))
            .then_some(())
    });
    let second = ws.cli(&["daemon"]);
    assert_eq!(second.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&second.stderr),
        format!(
            "error: another dirigent daemon (pid {}) is already running on `{}`; stop it first\n",
            d.pid(),
            ws.root().display()
        )
    );
}

#[test]
fn with_no_agent_installed_tasks_escalate_with_install_advice() {
    let ws = Workspace::new("");
    // The embedded default config, and a PATH where none of the CLIs exist.
    std::fs::remove_file(ws.path("dirigent.yaml")).unwrap();
    let empty_path = ws.root().join("empty-bin");
    std::fs::create_dir(&empty_path).unwrap();
    let mut d = ws.start_with(&[("PATH", empty_path.to_str().unwrap())]);
    ws.drop_task("q.json", r#"{"prompt": "anyone there?"}"#);
    let ev = ws.wait_settled("q");
    let Event::Escalated {
        reason, attempts, ..
    } = ev
    else {
        panic!("{ev:?}")
    };
    assert_eq!(attempts, 0);
    for needle in [
        "no agent is available",
        "npm install -g @google/gemini-cli",
        "pip install aider-chat",
        "these five lines are a complete config for it",
        "default_chain: [echo]",
        "Then `dirigent retry q`.",
    ] {
        assert!(reason.contains(needle), "missing {needle:?} in {reason}");
    }
    let report = std::fs::read_to_string(ws.path("escalations/q.md")).unwrap();
    assert!(report.contains("No attempt could be made"), "{report}");
    // progress.md keeps the multi-line reason on the task's one line.
    let progress = ws.wait_until("progress.md to list the failed task", || {
        std::fs::read_to_string(ws.path("progress.md"))
            .ok()
            .filter(|p| p.contains("see escalations/q.md"))
    });
    let line = progress
        .lines()
        .find(|l| l.starts_with("- [ ] q ") && l.contains("escalated"))
        .expect("the failed task's line");
    assert!(
        line.contains("no agent is available") && line.ends_with("see escalations/q.md)"),
        "one list item per task, however long its reason: {line:?}"
    );
    // What it suggests works when pasted: the four lines as the whole config.
    let snippet = reason
        .split_once("in a git repository):\n\n")
        .and_then(|(_, rest)| rest.split_once("\n\n"))
        .map(|(config, _)| config)
        .expect("the suggested config in the reason");
    assert_eq!(
        snippet.lines().count(),
        5,
        "the suggestion is five lines: {snippet:?}"
    );
    d.stop();
    std::fs::write(ws.path("dirigent.yaml"), snippet).unwrap();
    // Where a newcomer meets it: in a git repository, where a task works in a worktree of its
    // own unless it says otherwise — and this agent edits nothing.
    common::git(ws.root(), &["init", "-q"]);
    common::git(ws.root(), &["commit", "-q", "--allow-empty", "-m", "first"]);
    let _d = ws.start();
    ws.drop_task("echo.json", r#"{"prompt": "anyone there?"}"#);
    let ev = ws.wait_settled("echo");
    assert!(
        matches!(ev, Event::Done { .. }),
        "the suggested agent runs a task: {ev:?}"
    );
    assert_eq!(
        std::fs::read_to_string(ws.path("outbox/echo.md")).unwrap(),
        "echo agent got: anyone there?",
        "the echo agent answers with the prompt"
    );
}

#[test]
fn flaky_agent_succeeds_on_a_later_task() {
    let ws = Workspace::new(CHAIN_CONFIG);
    let _d = ws.start();
    ws.drop_task("f1.json", r#"{"prompt": "p", "agent": "flaky"}"#);
    assert!(matches!(ws.wait_settled("f1"), Event::Escalated { .. }));
    ws.drop_task("f2.json", r#"{"prompt": "p", "agent": "flaky"}"#);
    let ev = ws.wait_settled("f2");
    assert!(
        matches!(ev, Event::Done { .. }),
        "flaky.sh succeeds the second time: {ev:?}"
    );
    // `done` is in the file before the engine has applied it: ask once the daemon says so.
    ws.wait_state("f2", "done");
    let status = ws.cli(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let states: Vec<&str> = v["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        ["failed", "done"],
        "the live status must show f1 failed and f2 done: {v}"
    );
    assert!(
        v["daemon_pid"].as_u64().is_some_and(|p| p > 0) && v["daemon_running"] == true,
        "the daemon's pid is a number: {}",
        v["daemon_pid"]
    );
    let one = ws.cli(&["status", "f1"]);
    let text = String::from_utf8_lossy(&one.stdout);
    assert!(text.contains("state:    failed"), "{text}");
    assert!(text.contains("attempt 1: flaky"), "{text}");
    let logs = ws.cli(&["logs", "f1", "--stderr"]);
    assert_eq!(String::from_utf8_lossy(&logs.stdout), "first run fails\n");
    // Its stdout is empty: said, with where its output is.
    let logs = ws.cli(&["logs", "f1"]);
    assert!(
        logs.stdout.is_empty()
            && String::from_utf8_lossy(&logs.stderr).contains(
                "wrote nothing to stdout; `dirigent logs f1 --stderr` shows the 16 byte(s) it wrote to stderr"
            ),
        "expected the empty stdout said, got {logs:?}"
    );
    let none = ws.cli(&["logs"]);
    assert_eq!(
        String::from_utf8_lossy(&none.stderr),
        "error: give the task (or tasks) whose output to print, or `--all` for every attempt's; `dirigent status` lists the tasks\n",
        "expected `logs` without ids to name `--all`"
    );
}

#[test]
fn an_output_path_through_a_symlink_out_of_the_workspace_escalates() {
    let outside = tempfile::tempdir().unwrap();
    // An agent that plants the link while it runs, after the task was accepted.
    let ws = Workspace::new(&format!(
        "{CHAIN_CONFIG}  linker: {{ command: [\"sh\", \"-c\", \"ln -s '{}' docs && cat\"], prompt: stdin }}\n",
        outside.path().display()
    ));
    let _d = ws.start();
    // A link already there when the task arrives: refused at once, before any agent runs.
    std::os::unix::fs::symlink(outside.path(), ws.root().join("early")).unwrap();
    ws.drop_task(
        "early.json",
        r#"{"prompt": "p", "agent": "good", "output": "early/x.md"}"#,
    );
    let reason = ws.wait_for(
        "the task with a link in its `output` to be rejected",
        |recs| {
            recs.iter().find_map(|r| match &r.event {
                Event::Rejected { file, reason, .. } if file == "early.json" => {
                    Some(reason.clone())
                }
                _ => None,
            })
        },
    );
    assert_eq!(
        reason,
        "`output` path `early/x.md` goes through `early`, a symbolic link; dirigent writes results only through real directories",
        "expected the link named at intake"
    );
    // One planted while the agent runs is refused where the result is written.
    ws.drop_task(
        "sneaky.json",
        r#"{"prompt": "p", "agent": "linker", "output": "docs/x.md"}"#,
    );
    let ev = ws.wait_settled("sneaky");
    let Event::Escalated { reason, .. } = &ev else {
        panic!("a result that would be written through a link must escalate, not {ev:?}")
    };
    assert!(
        reason.contains("`output` path `docs/x.md` goes through a symbolic link"),
        "the reason must name the link: {reason}"
    );
    assert_eq!(
        std::fs::read_dir(outside.path()).unwrap().count(),
        0,
        "something was written outside"
    );
    // The attempt itself succeeded; only the result could not be delivered.
    assert_eq!(
        ws.attempts("sneaky"),
        [("linker".to_string(), "ok".to_string())],
        "the attempt itself succeeded; only its result could not be delivered"
    );
}

/// An `output` that is a directory, or that starts with `~`, is refused when the task arrives,
/// not after its agent ran.
#[test]
fn an_output_that_cannot_be_written_is_refused_at_the_door() {
    let ws = Workspace::new(CHAIN_CONFIG);
    std::fs::create_dir_all(ws.root().join("src")).unwrap();
    std::fs::write(ws.root().join("notes.txt"), "").unwrap();
    for (output, expected) in [
        (
            "src",
            "error: `--output` `src` is a directory; name the file the result goes to (`src/result.md`)\n",
        ),
        (
            "~/notes.md",
            "error: `--output` `~/notes.md`: `~` is not a home directory here; paths are relative to the workspace (write `notes.md`)\n",
        ),
        (
            "~root/x.md",
            "error: `--output` `~root/x.md`: `~` is not a home directory here; paths are relative to the workspace\n",
        ),
        (
            "notes.txt/x.md",
            "error: `--output` `notes.txt/x.md` goes through `notes.txt`, which is a file, not a directory\n",
        ),
    ] {
        let out = ws.cli(&["submit", "p", "--output", output]);
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            expected,
            "expected `--output {output}` refused"
        );
    }
    assert!(
        !ws.root().join("~").exists(),
        "expected no directory named `~` made"
    );
}

#[test]
fn a_restart_cuts_a_torn_ledger_tail_and_remembers_finished_tasks() {
    let ws = Workspace::new(CHAIN_CONFIG);
    let mut d = ws.start();
    ws.drop_task("before.json", r#"{"id": "kept", "prompt": "p"}"#);
    ws.wait_settled("kept");
    d.stop();
    // A crash in the middle of a write leaves half a line.
    let ledger = ws.path("ledger.jsonl");
    let intact = std::fs::read(&ledger).unwrap();
    let mut torn = intact.clone();
    torn.extend_from_slice(br#"{"seq":99,"ts":1,"event":"done","ta"#);
    std::fs::write(&ledger, &torn).unwrap();

    let _d = ws.start();
    ws.drop_task("again.json", r#"{"id": "kept", "prompt": "p"}"#);
    ws.wait_for("the duplicate to be rejected", |recs| {
        recs.iter()
            .any(|r| matches!(&r.event, Event::Rejected { file, .. } if file == "again.json"))
            .then_some(())
    });
    let aside: Vec<_> = std::fs::read_dir(ws.ctx())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("ledger.torn-"))
        .collect();
    assert_eq!(aside.len(), 1, "the torn tail must be kept aside");
    assert_eq!(
        std::fs::read(aside[0].path()).unwrap(),
        br#"{"seq":99,"ts":1,"event":"done","ta"#
    );
    // The ledger continues cleanly after the cut: every line parses, sequence numbers go on.
    let text = std::fs::read_to_string(&ledger).unwrap();
    assert!(text.starts_with(std::str::from_utf8(&intact).unwrap()));
    let seqs: Vec<u64> = ws.records().iter().map(|r| r.seq).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    assert_eq!(text.lines().count(), seqs.len());
}

#[test]
fn codex_reconnecting_forever_counts_as_idle() {
    let ws = Workspace::new(
        r#"
kill_grace: 300ms
agents:
  codexish: { command: ["{agents}/codex-offline.sh"], output: codex_jsonl, timeout: 60s, idle_timeout: 800ms }
"#,
    );
    let _d = ws.start();
    ws.drop_task("c.json", r#"{"prompt": "p"}"#);
    let ev = ws.wait_settled("c");
    assert!(matches!(ev, Event::Escalated { .. }), "{ev:?}");
    // Output never stopped, but none of it was progress: idle, long before the 60 s timeout.
    assert_eq!(
        ws.attempts("c"),
        [("codexish".to_string(), "idle".to_string())]
    );
}

#[test]
fn a_task_can_shorten_its_agents_timeouts() {
    let ws = Workspace::new(
        r#"
kill_grace: 300ms
agents:
  slow: { command: ["{agents}/slow.sh", "30"], timeout: 60s }
  hang: { command: ["{agents}/hang.sh"], timeout: 60s }
"#,
    );
    let _d = ws.start();
    ws.drop_task(
        "t.json",
        r#"{"prompt": "p", "agent": "slow", "timeout": "500ms"}"#,
    );
    ws.drop_task(
        "i.json",
        r#"{"prompt": "p", "agent": "hang", "idle_timeout": "500ms"}"#,
    );
    ws.wait_settled("t");
    ws.wait_settled("i");
    assert_eq!(
        ws.attempts("t"),
        [("slow".to_string(), "timeout".to_string())]
    );
    assert_eq!(ws.attempts("i"), [("hang".to_string(), "idle".to_string())]);
}

/// Each attempt's supervisor is the small `dirigent-supervise` installed next to `dirigent`
/// (cargo builds it beside the test binary), and `dirigent __supervise` itself when it is
/// missing or others may write it: the same arguments, the same result.
#[test]
fn the_small_supervisor_runs_attempts_and_the_full_binary_stands_in_without_it() {
    let config = r#"
agents:
  parent: { command: ["sh", "-c", "tr '\\0' ' ' < /proc/$PPID/cmdline"] }
default_chain: [parent]
"#;
    let alone = tempfile::tempdir().unwrap();
    let copy = alone.path().join("dirigent");
    std::fs::hard_link(common::BIN, &copy)
        .or_else(|_| std::fs::copy(common::BIN, &copy).map(|_| ()))
        .unwrap();
    let small = std::path::Path::new(common::BIN).with_file_name("dirigent-supervise");
    // A small supervisor that others may write is not trusted: the full binary stands in.
    let shared = tempfile::tempdir().unwrap();
    let beside_shared = shared.path().join("dirigent");
    std::fs::hard_link(common::BIN, &beside_shared)
        .or_else(|_| std::fs::copy(common::BIN, &beside_shared).map(|_| ()))
        .unwrap();
    let writable = shared.path().join("dirigent-supervise");
    std::fs::copy(&small, &writable).unwrap();
    std::fs::set_permissions(
        &writable,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    // (the binary the daemon runs, the supervisor its agent's parent must be)
    let cases = [
        (
            std::path::PathBuf::from(common::BIN),
            small.display().to_string(),
        ),
        (copy, "/proc/self/exe".to_string()),
        (beside_shared, "/proc/self/exe".to_string()),
    ];
    for (daemon, supervisor) in cases {
        let ws = Workspace::new(config);
        let _d = ws.start_program(&daemon, &[], &[]);
        ws.drop_task("who.json", r#"{"prompt": "who runs me"}"#);
        let done = ws.wait_settled("who");
        assert!(matches!(done, Event::Done { .. }), "{done:?}");
        let parent = std::fs::read_to_string(ws.path("outbox/who.md")).unwrap();
        assert!(
            // (the daemon's `kill_grace`, 5 s by default: for when the daemon dies first)
            parent.starts_with(&format!("{supervisor} __supervise --grace-ms=5000 -- ")),
            "expected the attempt's parent to be `{supervisor}` when the daemon is `{}`, got `{parent}`",
            daemon.display()
        );
    }
}

/// A stop does not wait out `leak_timeout`: the agent has ended, a grandchild holds its output
/// open, and the daemon asked to stop kills the group at once instead of waiting ten minutes.
#[test]
fn a_stop_does_not_wait_for_an_ended_agents_leftover_to_let_go_of_its_output() {
    let ws = Workspace::new(
        "kill_grace: 300ms\nleak_timeout: 10m\nagents:\n  leaky: { command: [\"sh\", \"-c\", \"sleep 1000 & echo started\"] }\ndefault_chain: [leaky]\n",
    );
    let mut d = ws.start();
    ws.drop_task("lt.json", r#"{"prompt": "p"}"#);
    ws.wait_for("the agent's line", |_| {
        std::fs::read_to_string(ws.path("runs/lt/1-leaky.stdout"))
            .ok()
            .filter(|s| s.contains("started"))
    });
    // The grandchild outlives the agent and keeps the attempt open.
    ws.wait_until("the agent to end, its grandchild alone left", || {
        (ws.survivors().len() == 1).then_some(())
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let status = d.stop();
        let _ = tx.send(status);
    });
    let status = rx
        .recv_timeout(common::patience())
        .expect("expected the daemon to stop without waiting out leak_timeout (10m)");
    assert!(status.success(), "expected a clean stop, got {status:?}");
    assert_eq!(
        ws.survivors(),
        Vec::<u32>::new(),
        "expected the leftover killed by the stop"
    );
}

/// An agent that prints without end (a loop, a runaway log) is stopped at `max_output` and
/// fails — its capture holds exactly the limit — instead of filling the disk until its timeout.
#[test]
fn an_agent_printing_past_max_output_is_stopped_and_fails() {
    // 500 MiB: stopped while it prints; 10,000 bytes past the limit: the last of it fits the
    // pipe, so the agent has likely ended on its own before it is read — its capture is cut
    // all the same, and never a success.
    for bytes in [500 << 20, (1 << 20) + 10_000] {
        printing_past_max_output_fails(bytes);
    }
}

fn printing_past_max_output_fails(bytes: u64) {
    let ws = Workspace::new(&format!(
        "max_output: 1MiB\nkill_grace: 300ms\nagents:\n  big: {{ command: [sh, -c, \"head -c {bytes} /dev/zero | tr '\\\\0' x\"], timeout: 10m }}\n  good: {{ command: [\"{{agents}}/ok.sh\"], prompt: stdin }}\ndefault_chain: [big, good]\n"
    ));
    let mib = bytes as f64 / (1 << 20) as f64;
    let _d = ws.start();
    ws.drop_task("flood.json", r#"{"prompt": "p"}"#);
    assert!(
        matches!(ws.wait_settled("flood"), Event::Done { ref agent, .. } if agent == "good"),
        "expected the next agent of the chain to finish it"
    );
    let (class, reason) = ws
        .records()
        .into_iter()
        .find_map(|r| match r.event {
            Event::AttemptFinished {
                attempt: 1,
                class,
                reason,
                ..
            } => Some((class, reason)),
            _ => None,
        })
        .expect("the first attempt's end");
    assert_eq!(
        (class.as_str(), reason.as_str()),
        (
            "bad_output",
            "stopped: it printed more than `max_output` (1MiB); what it printed up to there is kept"
        ),
        "{mib} MiB: expected the flood stopped at the limit"
    );
    let saved = std::fs::metadata(ws.path("runs/flood/1-big.stdout"))
        .unwrap()
        .len();
    assert_eq!(
        saved,
        1 << 20,
        "{mib} MiB: expected exactly the limit saved"
    );
}
