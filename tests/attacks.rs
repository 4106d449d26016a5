//! Probes as an attacker would make them, one class of hole at a time (see docs/security.md):
//! paths that sneak into `.context/` or through planted links, agents that try to take the
//! supervisor down or forge its records, inputs that would panic or wedge the daemon, and a
//! disk that runs full. Each test failed before the fix it names.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{Workspace, process_gone};
use dirigent::ledger::Event;

const CONFIG: &str = r#"
kill_grace: 300ms
leak_timeout: 300ms
agents:
  good:       { command: ["{agents}/ok.sh"], prompt: stdin }
  fail:       { command: ["{agents}/fail.sh"] }
  slow:       { command: ["{agents}/slow.sh"], timeout: 30s }
  hang:       { command: ["{agents}/hang.sh"], timeout: 10m }
  killparent: { command: ["{agents}/hostile/kill-parent.sh"] }
  killhard:   { command: ["{agents}/hostile/kill-parent-hard.sh"], timeout: 30s }
  killdaemon: { command: ["{agents}/hostile/kill-daemon.sh"] }
  escape:     { command: ["{agents}/hostile/escape-env.sh"] }
  forge:      { command: ["{agents}/hostile/forge-done.sh"], timeout: 60s }
"#;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn log(ws: &Workspace) -> String {
    std::fs::read_to_string(ws.root().join("daemon.log")).unwrap_or_default()
}

// --- Paths are checked after normalisation --------------------------------------------------

#[test]
fn no_door_can_name_dirigents_own_files_as_an_output() {
    let ws = Workspace::new(CONFIG);
    let config_before = std::fs::read(ws.path("dirigent.yaml")).unwrap();
    let (_d, url, token) = ws.start_http();
    let long_output = "y".repeat(300);
    let cases = [
        ("./.context/dirigent.yaml", "is inside `.context`"),
        (".context//dirigent.yaml", "is inside `.context`"),
        ("./.CONTEXT/ledger.jsonl", "is inside `.context`"),
        ("docs/../.context/dirigent.yaml", "contains `..`"),
        (".git/config", "is inside `.git`"),
        ("./.git/hooks/pre-commit", "is inside `.git`"),
        // A nested repository's hooks run as well; refused before any agent runs.
        ("vendor/lib/.git/hooks/pre-commit", "is inside `.git`"),
        (
            &long_output,
            "is too long for a file system (a name of 300 bytes",
        ),
    ];
    for (i, (output, want)) in cases.iter().enumerate() {
        // The file door …
        let name = format!("o{i}.json");
        ws.drop_task(
            &name,
            &serde_json::json!({"prompt": "p", "agent": "good", "output": output}).to_string(),
        );
        let reason = ws.rejection(&name);
        assert!(reason.contains(want), "{output}: {reason}");
        // … and the HTTP door say the same.
        let body = serde_json::json!({"prompt": "p", "agent": "good", "output": output});
        let reply = common::http(
            &url,
            "POST",
            "/tasks",
            Some(&token),
            Some(&body.to_string()),
        );
        assert_eq!(reply.status, 400, "{output}: {}", reply.body);
        assert!(reply.body.contains(want), "{output}: {}", reply.body);
    }
    assert_eq!(
        std::fs::read(ws.path("dirigent.yaml")).unwrap(),
        config_before,
        "the config must not have changed"
    );
}

#[test]
fn secrets_in_context_are_never_context() {
    let ws = Workspace::new(CONFIG);
    let _d = ws.start();
    for (i, task) in [
        r#"{"prompt": "p", "agent": "good", "context": ["http.token"]}"#,
        r#"{"prompt": "p", "agent": "good", "context": ["./dirigent.yaml"]}"#,
        r#"{"prompt": "p", "agent": "good", "context": ["isolation/claude/0/.credentials.json"]}"#,
        r#"{"prompt": "p", "agent": "good", "files": [".context/http.token"]}"#,
        r#"{"prompt": "p", "agent": "good", "context": ["Dashboard-Login.html"]}"#,
    ]
    .iter()
    .enumerate()
    {
        let name = format!("s{i}.json");
        ws.drop_task(&name, task);
        let reason = ws.rejection(&name);
        assert!(
            reason.contains("private to dirigent") || reason.contains("is inside `.context`"),
            "{task}: {reason}"
        );
    }
}

#[test]
fn a_context_file_that_is_a_link_is_not_read() {
    let ws = Workspace::new(CONFIG);
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "the secret").unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), ws.root().join("notes.md")).unwrap();
    let _d = ws.start();
    ws.drop_task(
        "n.json",
        r#"{"prompt": "p", "agent": "good", "files": ["notes.md"]}"#,
    );
    let Event::Escalated { reason, .. } = ws.wait_settled("n") else {
        panic!("a task whose context file is a link must escalate")
    };
    assert!(reason.contains("symbolic link"), "{reason}");
    let prompts: Vec<String> = walk(&ws.path("runs"))
        .into_iter()
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect();
    assert!(
        prompts.iter().all(|p| !p.contains("the secret")),
        "the secret reached a file in runs/"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn an_agent_cannot_choose_its_result_by_swapping_its_capture_for_a_link() {
    let config = format!(
        "{CONFIG}  swap: {{ command: [\"{{agents}}/hostile/swap-capture.sh\", \"{}\"] }}\n",
        "/etc/hostname"
    );
    let ws = Workspace::new(&config);
    let _d = ws.start();
    ws.drop_task("w.json", r#"{"prompt": "p", "agent": "swap"}"#);
    assert!(matches!(ws.wait_settled("w"), Event::Done { .. }));
    assert_eq!(
        std::fs::read_to_string(ws.path("outbox/w.md")).unwrap(),
        "the real output\n",
        "the result must be what the agent printed"
    );
}

#[test]
fn links_planted_for_the_next_attempt_are_replaced_not_written_through() {
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    std::fs::write(&victim, "keep me").unwrap();
    let config = format!(
        "{CONFIG}  plant: {{ command: [\"{{agents}}/hostile/plant-next.sh\", \"{}\", \"good\"] }}\n",
        victim.display()
    );
    let ws = Workspace::new(&config);
    let _d = ws.start();
    ws.drop_task("p.json", r#"{"prompt": "p", "chain": ["plant", "good"]}"#);
    assert!(matches!(ws.wait_settled("p"), Event::Done { .. }));
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "keep me",
        "a file outside was written through a planted link"
    );
}

#[test]
fn an_http_id_never_reveals_files_outside() {
    let ws = Workspace::new(CONFIG);
    let (_d, url, token) = ws.start_http();
    let exists = common::http(&url, "GET", "/tasks/%2Fetc%2Fhostname", Some(&token), None);
    let missing = common::http(
        &url,
        "GET",
        "/tasks/%2Fetc%2Fno-such-file-here",
        Some(&token),
        None,
    );
    let dots = common::http(&url, "GET", "/tasks/..%2F..%2Fetc", Some(&token), None);
    for r in [&exists, &missing, &dots] {
        assert_eq!(r.status, 404, "{}", r.body);
    }
    assert_eq!(
        exists.body.replace("/etc/hostname", "X"),
        missing.body.replace("/etc/no-such-file-here", "X"),
        "an existing and a missing file outside must look the same"
    );
}

// --- A claim is of the bytes that were checked ------------------------------------------------

#[test]
fn an_id_asked_for_in_a_file_wins_over_one_made_from_a_name() {
    let ws = Workspace::new(CONFIG);
    // The older file's name maps to the id the newer one asks for by name.
    ws.drop_task("Foo Bar 3.md", "---\nagent: good\n---\nby name\n");
    std::thread::sleep(Duration::from_millis(20)); // distinct mtimes: arrival order
    ws.drop_task(
        "explicit.json",
        r#"{"id": "Foo-Bar-3", "prompt": "by id", "agent": "good"}"#,
    );
    let _d = ws.start();
    assert!(matches!(ws.wait_settled("Foo-Bar-3"), Event::Done { .. }));
    assert!(matches!(ws.wait_settled("Foo-Bar-3-2"), Event::Done { .. }));
    let spec_of = |id: &str| {
        ws.records().into_iter().find_map(|r| match r.event {
            Event::Received { task, spec, .. } if task == id => Some(spec.prompt.clone()),
            _ => None,
        })
    };
    assert_eq!(spec_of("Foo-Bar-3").as_deref(), Some("by id"));
    assert_eq!(spec_of("Foo-Bar-3-2").as_deref(), Some("by name"));
}

// --- No input can panic or wedge the daemon ---------------------------------------------------

#[test]
fn huge_and_zero_durations_are_refused_when_parsed() {
    let ws = Workspace::new(CONFIG);
    let (d, url, token) = ws.start_http();
    for (i, (task, want)) in [
        (
            r#"{"prompt": "p", "agent": "good", "timeout": 18446744073709551615}"#,
            "limited to 366 days",
        ),
        (
            r#"{"prompt": "p", "agent": "good", "timeout": "99999999h"}"#,
            "limited to 366 days",
        ),
        (
            r#"{"prompt": "p", "agent": "good", "idle_timeout": "0s"}"#,
            "`idle_timeout` is 0ms; it must be at least 100ms",
        ),
        (
            r#"{"prompt": "p", "agent": "good", "timeout": "1ms"}"#,
            "`timeout` is 1ms; it must be at least 100ms (an agent does not even start in less)",
        ),
        (
            r#"{"prompt": "p", "agent": "good", "verify_rounds": 4294967295}"#,
            "`verify_rounds` is 4294967295; at most 10",
        ),
        (
            r#"{"prompt": "p", "agent": "good", "timeout": "1ns"}"#,
            "invalid duration `1ns` (dirigent counts time in whole milliseconds)",
        ),
    ]
    .iter()
    .enumerate()
    {
        let name = format!("d{i}.json");
        ws.drop_task(&name, task);
        let reason = ws.rejection(&name);
        assert!(reason.contains(want), "{task}: {reason}");
    }
    let r = common::http(
        &url,
        "GET",
        "/tasks/x?wait=18446744073709551615",
        Some(&token),
        None,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("limited to 366 days"), "{}", r.body);
    assert!(!process_gone(d.pid()), "the daemon must stay up");
    ws.drop_task("after.json", r#"{"prompt": "p", "agent": "good"}"#);
    assert!(matches!(ws.wait_settled("after"), Event::Done { .. }));
}

#[test]
fn a_config_with_a_huge_interval_is_refused_at_start_with_a_message() {
    let ws = Workspace::new(
        "agents:\n  good: { command: [\"{agents}/ok.sh\"], stagger: 18446744073709551615 }\n",
    );
    let out = ws.cli(&["daemon"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with("error: ") && stderr(&out).contains("limited to 366 days"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_file_hard_linked_in_the_ledgers_or_the_locks_place_is_never_written() {
    let ws = Workspace::new(CONFIG);
    let outside = tempfile::tempdir().unwrap();
    let mut d = ws.start();
    ws.drop_task("t.json", r#"{"prompt": "p", "agent": "good"}"#);
    ws.wait_settled("t");
    d.stop();
    // An agent puts a file of the user's in the ledger's place, then in the lock's: a "torn
    // tail" would have been cut off it, and the pid written over it.
    for name in ["ledger.jsonl", "daemon.lock"] {
        let victim = outside.path().join("victim.txt");
        std::fs::write(&victim, "the user's own text, no newline at the end").unwrap();
        let saved = ws.path(&format!("{name}.saved"));
        std::fs::rename(ws.path(name), &saved).unwrap();
        std::fs::hard_link(&victim, ws.path(name)).unwrap();
        let out = ws.cli(&["daemon"]);
        assert_ne!(out.status.code(), Some(0), "{name}: expected a refusal");
        let err = stderr(&out);
        assert!(
            err.starts_with("error: ") && err.contains("has 2 names (hard links)"),
            "{name}: expected the second name said, got {err:?}"
        );
        assert_eq!(
            std::fs::read_to_string(&victim).unwrap(),
            "the user's own text, no newline at the end",
            "{name}: expected the linked file untouched"
        );
        std::fs::remove_file(ws.path(name)).unwrap();
        std::fs::rename(&saved, ws.path(name)).unwrap();
    }
    // Put back, the workspace starts as before.
    let _d = ws.start();
    ws.drop_task("u.json", r#"{"prompt": "p", "agent": "good"}"#);
    ws.wait_settled("u");
}

#[test]
fn results_and_progress_are_the_users_alone_even_in_an_opened_context() {
    use std::os::unix::fs::PermissionsExt;
    let ws = Workspace::new(CONFIG);
    // Opened to others by hand (`chmod 755 .context`): what dirigent keeps there stays private.
    std::fs::set_permissions(ws.ctx(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let _d = ws.start();
    ws.drop_task("t.json", r#"{"prompt": "p", "agent": "good"}"#);
    ws.wait_settled("t");
    ws.wait_until("progress.md to list the task", || {
        std::fs::read_to_string(ws.path("progress.md"))
            .ok()
            .filter(|p| p.contains("- [x] t "))
    });
    for name in ["outbox/t.md", "progress.md"] {
        let mode = std::fs::metadata(ws.path(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(
            mode, 0o600,
            "expected `{name}` readable by the user alone, got {mode:o}"
        );
    }
}

#[test]
fn tasks_that_wait_for_each_other_are_refused_not_left_waiting() {
    let ws = Workspace::new(CONFIG);
    // Both in the inbox before the daemon starts: one batch, each naming the other.
    ws.drop_task("ta.json", r#"{"prompt": "p", "after": ["tb"]}"#);
    ws.drop_task("tb.json", r#"{"prompt": "p", "after": ["ta"]}"#);
    ws.drop_task("tc.json", r#"{"prompt": "p", "after": ["tc"]}"#);
    let _d = ws.start();
    for (file, circle) in [
        ("ta.json", "(ta → tb → ta)"),
        ("tb.json", "(tb → ta → tb)"),
        ("tc.json", "(tc → tc)"),
    ] {
        let reason = ws.rejection(file);
        assert!(
            reason.starts_with(&format!("`after` goes round in a circle {circle}")),
            "{file}: expected the circle named, got {reason:?}"
        );
    }
}

/// A circle closed across intakes: `ta` is taken in while `tb`, which it names, still waits in
/// the inbox (the first batch is full: 255 older files and `ta`); when `tb` comes in the next
/// batch, naming `ta`, it is refused. (Only such a task — named before it was one — is searched
/// for a circle: one after tasks already known cannot close one.)
#[test]
fn a_circle_closed_by_a_task_of_a_later_batch_is_refused() {
    let ws = Workspace::new(CONFIG);
    let tmp = ws.path("inbox/.tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let at = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    let mut files: Vec<(String, String)> = (0..255)
        .map(|i| (format!("f{i:03}.json"), "not json".to_string()))
        .collect();
    files.push((
        "ta.json".into(),
        r#"{"prompt": "p", "after": ["tb"]}"#.into(),
    ));
    files.push((
        "tb.json".into(),
        r#"{"prompt": "p", "after": ["ta"]}"#.into(),
    ));
    // Oldest first: the fillers, then `ta`, then `tb`.
    for (n, (name, body)) in files.iter().enumerate() {
        let path = tmp.join(name);
        std::fs::write(&path, body).unwrap();
        let when = at + std::time::Duration::from_secs(if n < 255 { 0 } else { n as u64 });
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(when)
            .unwrap();
        std::fs::rename(&path, ws.path(&format!("inbox/{name}"))).unwrap();
    }
    let _d = ws.start();
    let reason = ws.rejection("tb.json");
    assert!(
        reason.starts_with("`after` goes round in a circle (tb → ta → tb)"),
        "expected the circle named, got {reason:?}"
    );
}

/// A task of a batch refused for a circle of its own is still "named ahead" by the task of the
/// batch that waits for it: a later task under its id that closes a circle is refused too.
#[test]
fn a_circle_through_a_refused_tasks_id_is_refused_later() {
    let ws = Workspace::new(CONFIG);
    ws.drop_task("ta.json", r#"{"prompt": "p", "after": ["tb"]}"#);
    ws.drop_task("tb.json", r#"{"prompt": "p", "after": ["tb"]}"#);
    let _d = ws.start();
    let reason = ws.rejection("tb.json");
    assert!(
        reason.starts_with("`after` goes round in a circle (tb → tb)"),
        "expected tb refused, got {reason:?}"
    );
    ws.wait_state("ta", "pending");
    ws.drop_task(
        "tb2.json",
        r#"{"id": "tb", "prompt": "p", "after": ["ta"]}"#,
    );
    let reason = ws.rejection("tb2.json");
    assert!(
        reason.starts_with("`after` goes round in a circle (tb → ta → tb)"),
        "expected the later tb refused, got {reason:?}"
    );
}

#[test]
fn a_removed_lock_file_does_not_let_a_second_daemon_in() {
    let ws = Workspace::new(CONFIG);
    let _d = ws.start();
    ws.drop_task("first.json", r#"{"prompt": "p", "agent": "good"}"#);
    ws.wait_settled("first");
    std::fs::remove_file(ws.path("daemon.lock")).unwrap();
    let out = ws.cli(&["daemon"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with(
            "error: another dirigent daemon (pid unknown: its lock file was removed) is already running"
        ),
        "expected the second daemon refused, got {:?}",
        stderr(&out)
    );
    let status = stdout(&ws.cli(&["status"]));
    assert!(
        status.starts_with("daemon: running"),
        "expected the running daemon still seen, got {status:?}"
    );
    // And it still works.
    ws.drop_task("t.json", r#"{"prompt": "p", "agent": "good"}"#);
    assert!(matches!(ws.wait_settled("t"), Event::Done { .. }));
    // `.context/` moved away and made again: the workspace is still this daemon's.
    std::fs::rename(ws.ctx(), ws.root().join(".context.moved")).unwrap();
    std::fs::create_dir(ws.ctx()).unwrap();
    std::fs::copy(
        ws.root().join(".context.moved/dirigent.yaml"),
        ws.path("dirigent.yaml"),
    )
    .unwrap();
    let out = ws.cli(&["daemon"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "expected a second daemon refused after `.context` was moved: {}",
        stderr(&out)
    );
    std::fs::remove_dir_all(ws.ctx()).unwrap();
    std::fs::rename(ws.root().join(".context.moved"), ws.ctx()).unwrap();
}

#[test]
fn fifos_and_holes_planted_among_dirigents_files_neither_hang_nor_flood() {
    let ws = Workspace::new(CONFIG);
    let mut d = ws.start();
    ws.drop_task("t.json", r#"{"prompt": "p", "agent": "good"}"#);
    ws.wait_settled("t");
    // A hole in the lock file while the daemon runs: asking about it reads a few bytes.
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .open(ws.path("daemon.lock"))
        .unwrap();
    lock.set_len(8 << 30).unwrap();
    let started = std::time::Instant::now();
    let out = ws.cli(&["status"]);
    assert!(
        stdout(&out).starts_with("daemon: running"),
        "{}",
        stderr(&out)
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "`status` read the 8 GiB hole: {:?}",
        started.elapsed()
    );
    d.stop();
    // A FIFO named like a ledger segment, and one in the lock's place: the next start neither
    // waits on them nor refuses to start.
    nix::unistd::mkfifo(
        &ws.path("ledger.00000000000000000099.jsonl"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    std::fs::remove_file(ws.path("daemon.lock")).unwrap();
    nix::unistd::mkfifo(
        &ws.path("daemon.lock"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let status = ws.cli(&["status"]);
    assert!(status.status.success(), "{}", stderr(&status));
    let _d = ws.start();
    ws.drop_task("u.json", r#"{"prompt": "p", "agent": "good"}"#);
    assert!(matches!(ws.wait_settled("u"), Event::Done { .. }));
}

#[test]
fn a_config_replaced_by_a_fifo_or_a_device_does_not_wedge_the_daemon() {
    let ws = Workspace::new(CONFIG);
    let _d = ws.start();
    ws.drop_task("a.json", r#"{"prompt": "p", "agent": "good"}"#);
    ws.wait_settled("a");
    let cfg = ws.path("dirigent.yaml");
    std::fs::remove_file(&cfg).unwrap();
    nix::unistd::mkfifo(&cfg, nix::sys::stat::Mode::S_IRWXU).unwrap();
    ws.wait_until("the FIFO to be refused", || {
        log(&ws)
            .contains("the configuration cannot be read")
            .then_some(())
    });
    // Still answering and still working.
    let out = ws.cli(&["status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    ws.drop_task("b.json", r#"{"prompt": "p", "agent": "good"}"#);
    assert!(matches!(ws.wait_settled("b"), Event::Done { .. }));
    std::fs::remove_file(&cfg).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &cfg).unwrap();
    ws.wait_until("/dev/zero to be refused", || {
        (log(&ws).matches("the configuration cannot be read").count() >= 2).then_some(())
    });
    ws.drop_task("c.json", r#"{"prompt": "p", "agent": "good"}"#);
    assert!(matches!(ws.wait_settled("c"), Event::Done { .. }));
}

#[test]
fn a_deleted_config_keeps_the_running_one() {
    let ws = Workspace::new(CONFIG);
    let _d = ws.start();
    // Its watcher is up once it says it runs.
    ws.wait_until("the daemon to run", || {
        log(&ws).contains("dirigent is running").then_some(())
    });
    std::fs::remove_file(ws.path("dirigent.yaml")).unwrap();
    ws.wait_until("the deletion to be noticed", || {
        log(&ws)
            .contains("was deleted; the running configuration stays in force")
            .then_some(())
    });
    // `good` exists only in the file: it still runs.
    ws.drop_task("g.json", r#"{"prompt": "p", "agent": "good"}"#);
    assert!(matches!(ws.wait_settled("g"), Event::Done { .. }));
}

#[test]
fn a_closed_stderr_does_not_take_the_daemon_down() {
    let ws = Workspace::new(CONFIG);
    let mut child = std::process::Command::new(common::BIN)
        .args(["daemon", "--log-level", "debug"])
        .env("DIRIGENT_ROOT", ws.root())
        .env("DIRIGENT_STATE_DIR", ws.state.path())
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read the first line, then close the pipe: every later log line fails to be written.
    let mut err = child.stderr.take().unwrap();
    let mut first = [0u8; 1];
    err.read_exact(&mut first).unwrap();
    drop(err);
    let mut daemon = common::Daemon::adopt(child, ws.root().join("daemon.log"));
    ws.drop_task("a.json", r#"{"prompt": "p", "agent": "good"}"#);
    assert!(matches!(ws.wait_settled("a"), Event::Done { .. }));
    assert!(!process_gone(daemon.pid()), "the daemon must stay up");
    let status = daemon.stop();
    assert_eq!(
        status.code(),
        Some(0),
        "a clean stop, not a panic: {status:?}"
    );
}

#[test]
fn the_control_socket_refuses_a_huge_line_without_holding_it() {
    let ws = Workspace::new(CONFIG);
    let d = ws.start();
    ws.drop_task("a.json", r#"{"prompt": "p", "agent": "good"}"#);
    ws.wait_settled("a");
    let mut s = std::os::unix::net::UnixStream::connect(ws.path("daemon.sock")).unwrap();
    let chunk = vec![b'x'; 1 << 20];
    // 64 MiB without a newline; the daemon hangs up after 8.
    let mut sent = 0;
    while sent < 64 {
        if s.write_all(&chunk).is_err() {
            break;
        }
        sent += 1;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(
        answer.contains("a request line may have at most"),
        "{answer:?} after {sent} MiB"
    );
    assert!(sent < 64, "the daemon read all 64 MiB");
    let rss = d.peak_rss_kib();
    assert!(rss < 200 * 1024, "peak RSS {rss} KiB: the line was held");
    let out = ws.cli(&["status"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn held_control_connections_cannot_keep_a_cancel_from_being_heard() {
    let ws = Workspace::new(CONFIG);
    let _d = ws.start();
    ws.drop_task("a.json", r#"{"prompt": "p", "agent": "good"}"#);
    ws.wait_settled("a");
    let sock = ws.path("daemon.sock");
    // A line that is no request is answered, and the connection ends there.
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    s.write_all(b"\"garbage\"\n").unwrap();
    s.set_read_timeout(Some(common::PATIENCE)).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(
        answer.contains("not a request"),
        "expected the line refused and the connection closed, got {answer:?}"
    );
    // Every long-lived connection taken (an agent can open them): the CLI is still answered.
    let held: Vec<_> = (0..64)
        .map(|_| std::os::unix::net::UnixStream::connect(&sock).unwrap())
        .collect();
    let out = ws.cli(&["cancel", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no task `nope`"),
        "expected the daemon's own answer, got {:?}",
        stderr(&out)
    );
    drop(held);

    // Clients that ask to wait on a long task and then go away free their connections at
    // once: a new `wait` (it needs a long-lived one) is served, not told the daemon is busy.
    ws.drop_task("s1.json", r#"{"prompt": "p", "agent": "hang"}"#);
    ws.wait_for("the slow attempt", |recs| {
        recs.iter()
            .any(|r| matches!(&r.event, Event::AttemptStarted { task, .. } if task == "s1"))
            .then_some(())
    });
    let waiters: Vec<_> = (0..80)
        .map(|_| {
            let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
            let _ = s.write_all(b"{\"op\": \"wait\", \"id\": \"s1\"}\n");
            s
        })
        .collect();
    drop(waiters);
    let served = ws.wait_until("a wait to be served after its askers left", || {
        let mut s = std::os::unix::net::UnixStream::connect(&sock).ok()?;
        s.write_all(b"{\"op\": \"wait\", \"id\": \"s1\", \"timeout_ms\": 50}\n")
            .ok()?;
        let mut answer = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(s), &mut answer).ok()?;
        (!answer.contains("busy")).then_some(answer)
    });
    assert!(!served.is_empty(), "expected an answer to the wait");
    assert!(ws.cli(&["cancel", "s1"]).status.success());
}

/// An agent that holds every long-lived control connection and keeps reconnecting to take the
/// overflow ones too cannot keep the user's `dirigent cancel` from being heard: the overflow
/// connections are not served to the daemon's own descendants.
#[test]
fn an_agent_holding_every_control_connection_cannot_keep_a_cancel_out() {
    let ws = Workspace::new(
        "kill_grace: 300ms\nagents:\n  hold: { command: [\"python3\", \"hold.py\"] }\n",
    );
    std::fs::write(
        ws.root().join("hold.py"),
        r#"
import os, socket, threading, time
root = os.environ["DIRIGENT_WORKSPACE"]
path = os.path.join(root, ".context", "daemon.sock")
held = []
for _ in range(64):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    held.append(s)
def churn():
    while True:
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            s.recv(4096)
            s.close()
        except OSError:
            pass
        time.sleep(0.005)
for _ in range(24):
    threading.Thread(target=churn, daemon=True).start()
open(os.path.join(root, "holding"), "w").close()
time.sleep(600)
"#,
    )
    .unwrap();
    let _d = ws.start();
    ws.drop_task("hold.json", r#"{"prompt": "p", "agent": "hold"}"#);
    ws.wait_until("the agent to hold the connections", || {
        ws.root().join("holding").exists().then_some(())
    });
    let out = ws.cli(&["cancel", "hold"]);
    assert!(
        out.status.success(),
        "expected the cancel heard, got {}",
        stderr(&out)
    );
    ws.wait_for("`hold` to be cancelled", |recs| {
        recs.iter()
            .any(|r| matches!(&r.event, Event::Cancelled { task } if task == "hold"))
            .then_some(())
    });
}

#[test]
fn idle_and_half_open_http_connections_are_closed_and_never_starve_the_daemon() {
    let ws = Workspace::new(CONFIG);
    let (d, url, token) = ws.start_http();
    let addr = url.trim_start_matches("http://").to_string();
    // Far more connections than the daemon serves at once: idle ones, and ones that sent
    // half a request.
    let mut held = Vec::new();
    for i in 0..300 {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        if i % 2 == 0 {
            // Past its cap the daemon closes the oldest strangers' connections, maybe this one
            // already: a failed write is that, not a failure.
            let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n");
        }
        held.push(s);
    }
    // Work still gets done, and the daemon's descriptors stay bounded.
    ws.drop_task("a.json", r#"{"prompt": "p", "agent": "good"}"#);
    assert!(matches!(ws.wait_settled("a"), Event::Done { .. }));
    // Connections told to make room close a moment later (each in its own task): a busy
    // machine may see a few still open; they must go.
    ws.wait_until("the daemon to hold fewer than 300 descriptors", || {
        let fds = std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
            .unwrap()
            .count();
        (fds < 300).then_some(())
    });
    // A half-open connection is closed by the daemon within the header timeout (10 s).
    let first = &mut held[0];
    first
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = Vec::new();
    let started = std::time::Instant::now();
    let _ = first.read_to_end(&mut buf);
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "a half-open connection was held for {:?}",
        started.elapsed()
    );
    drop(held);
    let r = common::http(&url, "GET", "/tasks", Some(&token), None);
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn a_body_is_read_only_after_its_token_and_never_past_its_limit() {
    let ws = Workspace::new(CONFIG);
    let (_d, url, token) = ws.start_http();
    let addr = url.trim_start_matches("http://").to_string();
    let head_of = |s: &mut std::net::TcpStream| {
        // Well inside the 30 s the daemon gives a body: an answer sent before the body came
        // is an answer that did not wait for it.
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    };
    // A stranger announcing a big body, sending none of it: refused at once, unread.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.write_all(b"POST /tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 8000000\r\n\r\n{").unwrap();
    let head = head_of(&mut s);
    assert!(
        head.starts_with("HTTP/1.1 401"),
        "expected 401 before the body was sent, got {head:?}"
    );
    // With the token, a body declared past the limit is refused before it is read.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.write_all(format!("POST /tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n").as_bytes()).unwrap();
    let head = head_of(&mut s);
    assert!(
        head.starts_with("HTTP/1.1 413"),
        "expected 413 for a declared 10 GB body, got {head:?}"
    );
    // A body under the limit but over axum's own default (2 MiB) reaches the daemon's own
    // check, which answers in JSON.
    let big = format!("{{\"prompt\": \"{}\"}}", "x".repeat(3 << 20));
    let r = common::http(&url, "POST", "/tasks", Some(&token), Some(&big));
    assert_eq!(
        r.status, 400,
        "expected the task's own size check, got {} {}",
        r.status, r.body
    );
    assert!(
        r.body.contains("\"error\""),
        "expected a JSON error, got {}",
        r.body
    );
    let r = common::http(&url, "GET", "/health", None, None);
    assert_eq!(r.status, 200, "{}", r.body);
}

// --- Recovery does not trust what agents can write -------------------------------------------

#[test]
fn a_forged_done_line_is_not_believed_after_a_crash() {
    let ws = Workspace::new(CONFIG);
    let mut d = ws.start();
    ws.drop_task("f.json", r#"{"prompt": "p", "agent": "forge"}"#);
    ws.wait_until("the forged line", || {
        ws.root().join("forged.ready").exists().then_some(())
    });
    d.crash();
    let _d = ws.start();
    // The test reads the file unchecked, so it sees the forged line too: wait for a real one.
    let attempt = ws.wait_for("a done written by dirigent", |recs| {
        recs.iter().find_map(|r| match &r.event {
            Event::Done { task, attempt, .. } if task == "f" && r.seq != 999_999 => Some(*attempt),
            _ => None,
        })
    });
    assert!(
        attempt >= 2,
        "done by attempt {attempt}, not by the forged line"
    );
    assert_eq!(
        std::fs::read_to_string(ws.path("outbox/f.md")).unwrap(),
        "the honest result\n"
    );
    assert!(
        log(&ws).contains("were not written by dirigent"),
        "the forged line must be reported:\n{}",
        log(&ws)
    );
    // The record is read as soon as it is written; the daemon applies it once it is durable,
    // and then moves the file: wait for that before asking it.
    ws.wait_for("f.json in done/", |_| {
        common::list(&ws, "done")
            .contains(&"f.json".to_string())
            .then_some(())
    });
    // The file moves before the engine applies `done` (it does on the settling task's message):
    // the move alone does not mean the daemon's status says so yet.
    let v = ws.wait_state("f", "done");
    assert!(!v["attempts"].as_array().unwrap().is_empty(), "{v}");
}

#[test]
fn a_damaged_line_in_the_middle_does_not_undo_a_finished_task() {
    let ws = Workspace::new(CONFIG);
    let mut d = ws.start();
    ws.drop_task("t.json", r#"{"prompt": "p", "agent": "good"}"#);
    assert!(matches!(ws.wait_settled("t"), Event::Done { .. }));
    ws.drop_task("u.json", r#"{"prompt": "p", "agent": "good"}"#);
    ws.wait_settled("u");
    d.stop();
    // Damage the `done` of `t`, in the middle of the file.
    let path = ws.path("ledger.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let damaged: String = text
        .lines()
        .map(|l| {
            if l.contains("\"event\":\"done\"") && l.contains("\"task\":\"t\"") {
                l.replacen("\"event\":\"done\"", "\"event\":\"do#e\"", 1)
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    assert_ne!(damaged, text, "the test must damage a line");
    std::fs::write(&path, damaged).unwrap();
    let _d = ws.start();
    ws.drop_task("v.json", r#"{"prompt": "p", "agent": "good"}"#);
    ws.wait_settled("v");
    let dones: Vec<u32> = ws
        .records()
        .into_iter()
        .filter_map(|r| match r.event {
            Event::Done { task, attempt, .. } if task == "t" => Some(attempt),
            _ => None,
        })
        .collect();
    assert_eq!(
        dones.last(),
        Some(&1),
        "settled again from its first attempt, not run again"
    );
    assert!(!ws.path("escalations/t.md").exists(), "t must not escalate");
    // The last file moves after its `done` is recorded.
    ws.wait_until("three files in done/", || {
        (common::list(&ws, "done").len() == 3).then_some(())
    });
}

#[test]
fn a_removed_running_directory_loses_no_task_and_runs_none_twice() {
    let ws = Workspace::new(CONFIG);
    let _d = ws.start();
    ws.drop_task("s.json", r#"{"prompt": "p", "agent": "slow"}"#);
    ws.wait_started("s");
    std::fs::remove_dir_all(ws.path("running")).unwrap();
    ws.drop_task("n.json", r#"{"prompt": "p", "agent": "good"}"#);
    assert!(matches!(ws.wait_settled("n"), Event::Done { .. }));
    assert!(matches!(ws.wait_settled("s"), Event::Done { .. }));
    // The file moves after `done` is recorded.
    ws.wait_until("s.json in done/", || {
        ws.path("done/s.json").exists().then_some(())
    });
    let received: Vec<String> = ws
        .records()
        .into_iter()
        .filter_map(|r| match r.event {
            Event::Received { task, .. } => Some(task),
            _ => None,
        })
        .collect();
    assert_eq!(received, ["s", "n"], "each task once, none under a new id");
    assert_eq!(
        common::list(&ws, "done"),
        ["n.json", "s.json"],
        "{}",
        log(&ws)
    );
    assert!(common::list(&ws, "escalations").is_empty());
}

// --- An agent cannot take the supervisor down --------------------------------------------------

#[test]
fn an_agent_that_signals_its_parent_or_the_daemon_does_not_stop_it() {
    let ws = Workspace::new(CONFIG);
    let d = ws.start();
    ws.drop_task("p.json", r#"{"prompt": "p", "agent": "killparent"}"#);
    assert!(matches!(ws.wait_settled("p"), Event::Done { .. }));
    assert_eq!(
        std::fs::read_to_string(ws.path("outbox/p.md")).unwrap(),
        format!(
            "sent SIGTERM to my parent {}\nstill here\n",
            std::fs::read_to_string(ws.path("outbox/p.md"))
                .unwrap()
                .split_whitespace()
                .nth(5)
                .unwrap()
        )
    );
    ws.drop_task("k.json", r#"{"prompt": "p", "agent": "killdaemon"}"#);
    assert!(matches!(ws.wait_settled("k"), Event::Done { .. }));
    // The daemon logs the ignored signal from its signal task, which may run after the task
    // settled on a loaded machine: wait for the line (the harness fails with the log after its
    // patience if it never comes).
    ws.wait_until("the ignored signal and its sender in the log", || {
        log(&ws).contains("ignored SIGTERM from pid").then_some(())
    });
    ws.drop_task("h.json", r#"{"prompt": "p", "agent": "killhard"}"#);
    let ev = ws.wait_settled("h");
    assert!(matches!(ev, Event::Escalated { .. }), "{ev:?}");
    assert!(!process_gone(d.pid()), "the daemon must still run");
    ws.drop_task("after.json", r#"{"prompt": "p", "agent": "good"}"#);
    assert!(matches!(ws.wait_settled("after"), Event::Done { .. }));
}

#[test]
fn a_task_whose_attempts_keep_being_interrupted_escalates() {
    let config = format!(
        "max_interruptions: 2\n{}  killer: {{ command: [\"{{agents}}/hostile/kill-daemon.sh\", \"KILL\"] }}\n",
        CONFIG.trim_start()
    );
    let ws = Workspace::new(&config);
    ws.drop_task("x.json", r#"{"prompt": "p", "agent": "killer"}"#);
    // Each start runs the agent, which SIGKILLs the daemon (as a crash loop under a service
    // manager would).
    for round in 1..=2 {
        let mut d = ws.start();
        ws.wait_for(&format!("attempt {round}"), |recs| {
            (recs
                .iter()
                .filter(|r| matches!(&r.event, Event::AttemptStarted { task, .. } if task == "x"))
                .count()
                >= round)
                .then_some(())
        });
        d.wait();
    }
    let _d = ws.start();
    let Event::Escalated { reason, .. } = ws.wait_settled("x") else {
        panic!("not escalated")
    };
    assert!(
        reason.starts_with("its attempts were interrupted 2 times in a row"),
        "{reason}"
    );
}

#[test]
fn an_agent_that_keeps_creating_tasks_is_bounded() {
    let config = format!(
        "max_spawned_tasks: 5\n{}  spawner: {{ command: [\"{{agents}}/hostile/spawner.sh\", \"{}\"] }}\n",
        CONFIG.trim_start(),
        common::BIN
    );
    let ws = Workspace::new(&config);
    let _d = ws.start();
    ws.drop_task("root.json", r#"{"prompt": "p", "agent": "spawner"}"#);
    let reason = ws.wait_for("the sixth generation to be refused", |recs| {
        recs.iter().find_map(|r| match &r.event {
            Event::Rejected { reason, .. } if reason.contains("max_spawned_tasks") => {
                Some(reason.clone())
            }
            _ => None,
        })
    });
    assert!(
        reason
            .contains("the attempts of `root` and of the tasks they created have created 5 tasks"),
        "{reason}"
    );
    let received = ws
        .records()
        .iter()
        .filter(|r| matches!(r.event, Event::Received { .. }))
        .count();
    assert_eq!(received, 6, "the root and five generations");
}

/// `parent` (the task whose attempt created this one, counted against its
/// `max_spawned_tasks`) is dirigent's word, not a submitter's: over HTTP it is refused, and a
/// file naming a task that does not exist is rejected — so no submitter can use up another
/// task's allowance or claim a parent that never was.
#[test]
fn a_submitter_cannot_claim_a_parent() {
    let ws = Workspace::new(CONFIG);
    let (_d, base, token) = ws.start_http();
    let reply = common::http(
        &base,
        "POST",
        "/tasks",
        Some(&token),
        Some(r#"{"prompt": "spoof", "parent": "someone"}"#),
    );
    assert_eq!(reply.status, 400, "expected a 400, got {}", reply.body);
    assert_eq!(
        reply.json()["error"]["message"],
        "`parent` is set by dirigent for a task an agent creates inside an attempt; a task sent over HTTP cannot name one",
        "expected the refusal to say why"
    );
    // Nor through a workflow run, the other way HTTP creates a task.
    let reply = common::http(
        &base,
        "POST",
        "/workflows/plan/runs",
        Some(&token),
        Some(r#"{"vars": {"goal": "x"}, "parent": "someone"}"#),
    );
    assert_eq!(
        (reply.status, reply.json()["error"]["message"].clone()),
        (
            400,
            "`parent` is set by dirigent for a task an agent creates inside an attempt; a task sent over HTTP cannot name one".into()
        ),
        "expected a workflow run naming a parent refused"
    );
    ws.drop_task("orphan.json", r#"{"prompt": "p", "parent": "never-was"}"#);
    let reason = ws.wait_for("the file naming an unknown parent to be rejected", |recs| {
        recs.iter().find_map(|r| match &r.event {
            Event::Rejected { file, reason, .. } if file == "orphan.json" => Some(reason.clone()),
            _ => None,
        })
    });
    assert!(
        reason.starts_with("`parent` names `never-was`, which is no task of this workspace"),
        "expected the unknown parent named, got {reason}"
    );
    // An agent of another workspace handing work to this one: its attempt is no task here, so
    // the task carries no parent (it was refused for the unknown parent).
    let out = ws.cli_with_env(
        &["submit", "delegated", "--id", "delegated"],
        &[
            ("DIRIGENT_TASK_ID", "elsewhere"),
            ("DIRIGENT_WORKSPACE", "/some/other/project"),
        ],
    );
    assert!(
        out.status.success(),
        "expected the task of another workspace's agent accepted: {out:?}"
    );
}

#[test]
fn an_escapee_that_changed_its_variables_is_still_caught() {
    let ws = Workspace::new(CONFIG);
    let _d = ws.start();
    ws.drop_task("e.json", r#"{"prompt": "p", "agent": "escape"}"#);
    assert!(matches!(ws.wait_settled("e"), Event::Done { .. }));
    let pid: u32 = std::fs::read_to_string(ws.root().join("escaped.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    ws.wait_until("the escapee to be killed", || {
        process_gone(pid).then_some(())
    });
}

// --- The socket ------------------------------------------------------------------------------

#[test]
fn a_socket_directory_another_user_made_first_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to act as another user");
        return;
    }
    // A workspace path too long for a socket in `.context/`.
    let base = tempfile::tempdir().unwrap();
    let long = base.path().join("a".repeat(60)).join("b".repeat(60));
    std::fs::create_dir_all(&long).unwrap();
    let runtime = tempfile::tempdir().unwrap();
    let theirs = runtime.path().join("dirigent");
    std::fs::create_dir(&theirs).unwrap();
    nix::unistd::chown(
        &theirs,
        Some(nix::unistd::Uid::from_raw(65534)),
        Some(nix::unistd::Gid::from_raw(65534)),
    )
    .unwrap();
    let state = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(common::BIN)
            .args(args)
            .env("DIRIGENT_ROOT", &long)
            .env("DIRIGENT_STATE_DIR", state.path())
            .env("XDG_RUNTIME_DIR", runtime.path())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    assert!(run(&["init"]).status.success());
    let out = run(&["daemon"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("belongs to uid 65534, not to you"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty());
}

// --- Exhaustion is a pause, not a loss ---------------------------------------------------------

#[test]
fn a_full_disk_pauses_work_and_loses_no_finished_attempt() {
    let Some(disk) = common::small_disk("2m", |_| {
        "kill_grace: 300ms\nagents:\n  big: { command: [\"sh\", \"-c\", \"head -c 150000 /dev/zero | tr '\\\\0' x; echo\"] }\n".into()
    }) else {
        return;
    };
    let ws = &disk.ws;
    // Fill the disk, leaving a little room for the ledger.
    let filler = ws.root().join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    let len = std::fs::metadata(&filler).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap()
        .set_len(len.saturating_sub(64 * 1024))
        .unwrap();
    let _d = ws.start();
    for i in 0..3 {
        ws.drop_task(&format!("t{i}.json"), r#"{"prompt": "p", "agent": "big"}"#);
    }
    ws.wait_until("the pause", || {
        std::fs::read_to_string(ws.root().join("daemon.log"))
            .unwrap_or_default()
            .contains("paused:")
            .then_some(())
    });
    let status = ws.cli(&["status"]);
    assert!(
        stdout(&status).contains("not taking work"),
        "status must say why: {}",
        stdout(&status)
    );
    // Room again: everything finishes, nothing escalated.
    std::fs::remove_file(&filler).unwrap();
    for i in 0..3 {
        let ev = ws.wait_settled(&format!("t{i}"));
        assert!(matches!(ev, Event::Done { .. }), "t{i}: {ev:?}");
        let result = std::fs::read_to_string(ws.path(&format!("outbox/t{i}.md"))).unwrap();
        assert_eq!(result.len(), 150_001, "t{i}: the whole result");
    }
    assert!(common::list(ws, "escalations").is_empty());
}

/// A prompt with its files is bounded: files that each fit but together would be a prompt of
/// gigabytes (the daemon aborted on the allocation, and again at every start) escalate the
/// task with the reason, and the daemon goes on; a file named twice is refused at the door.
#[test]
fn a_prompt_with_its_files_is_bounded_in_total() {
    let ws = Workspace::new(CONFIG);
    std::fs::create_dir_all(ws.root().join("big")).unwrap();
    // Five files of 3.5 MiB: each under the 4 MiB a file may be, 17.5 MiB together.
    let chunk = "x".repeat(3_500_000);
    for i in 0..5 {
        std::fs::write(ws.root().join(format!("big/{i}.txt")), &chunk).unwrap();
    }
    let mut d = ws.start();
    ws.drop_task(
        "bomb.json",
        r#"{"id": "bomb", "prompt": "p", "agent": "good", "files": ["big/0.txt", "big/1.txt", "big/2.txt", "big/3.txt", "big/4.txt"]}"#,
    );
    let reason = match ws.wait_settled("bomb") {
        Event::Escalated { reason, .. } => reason,
        other => panic!("expected the task escalated, got {other:?}"),
    };
    assert!(
        reason.contains("the prompt with its files would be over 16 MiB at `big/4.txt`"),
        "expected the total's limit as the reason, got: {reason}"
    );
    // A file named twice never gets in.
    let out = ws.cli(&[
        "submit",
        "p",
        "--file",
        "big/0.txt",
        "--file",
        "./big/0.txt",
    ]);
    assert_eq!(
        stderr(&out),
        "error: `files` names `big/0.txt` twice; name each file once\n",
        "expected the repeated file refused at submit"
    );
    // The daemon is still there and runs the next task.
    ws.drop_task(
        "after.json",
        r#"{"id": "after", "prompt": "p", "agent": "good"}"#,
    );
    assert!(
        matches!(ws.wait_settled("after"), Event::Done { .. }),
        "expected the daemon to go on"
    );
    d.stop();
}

/// A submitter who queues big prompts faster than they run fills the inbox, not the daemon's
/// memory: once the tasks taken in and not finished hold `queue_in_memory` of specs, the rest
/// are left in the inbox (said in the log and by `status`), and taken in as tasks finish.
#[test]
fn big_prompts_queued_faster_than_they_run_wait_in_the_inbox_not_in_memory() {
    let release = tempfile::tempdir().unwrap();
    let ws = Workspace::new(&format!(
        "concurrency: 1\ninbox_rescan: 200ms\nqueue_in_memory: 4MiB\nagents:\n  wait: {{ command: [sh, -c, \"cat >/dev/null; while [ ! -e {r}/go ]; do sleep 0.05; done; echo done\"], prompt: stdin }}\ndefault_chain: [wait]\n",
        r = release.path().display()
    ));
    let _d = ws.start();
    // 12 prompts of 1,000,000 bytes: 12 MB, three times what may be held.
    let prompt = "x".repeat(1_000_000);
    for i in 0..12 {
        ws.drop_task(&format!("big{i:02}.md"), &prompt);
    }
    // Said by the daemon's own answer: the batch it was taking in is recorded by then.
    let status = ws.wait_until("the daemon to leave task files in the inbox", || {
        Some(stdout(&ws.cli(&["status"]))).filter(|s| {
            s.contains(
                "leaving task files in the inbox for now: the tasks taken in and not finished hold",
            )
        })
    });
    assert!(
        log(&ws)
            .contains("not taking more task files in: the tasks taken in and not finished hold"),
        "expected the log to say why files wait in the inbox"
    );
    let taken = ws
        .records()
        .iter()
        .filter(|r| matches!(r.event, Event::Received { .. }))
        .count();
    assert!(
        (4..=6).contains(&taken),
        "expected about 4 MiB of prompts taken in (4 or 5 of 1,000,000 bytes), got {taken}"
    );
    assert!(
        status.contains("big11")
            && status.contains("the daemon takes it in once the tasks it holds have room"),
        "expected `status` to list the files waiting in the inbox, and why:\n{status}"
    );
    // As tasks finish, the rest are taken in; every one of them runs.
    std::fs::write(release.path().join("go"), "").unwrap();
    for i in 0..12 {
        let settled = ws.wait_settled(&format!("big{i:02}"));
        assert!(
            matches!(settled, Event::Done { .. }),
            "expected big{i:02} done, got {settled:?}"
        );
    }
    assert!(
        log(&ws).contains("taking task files in again"),
        "expected the log to say the intake went on"
    );
}

/// While task files are left in the inbox, the tasks of a workflow run already taken in are
/// still taken in: the run waits for them, and leaving them out would leave it waiting for as
/// long as the tasks holding the room do.
#[test]
fn a_held_back_inbox_still_takes_in_the_tasks_a_run_waits_for() {
    let ws = Workspace::new(
        "concurrency: 3\ninbox_rescan: 200ms\nqueue_in_memory: 1MiB\nagents:\n  first: { command: [\"{agents}/gate.sh\", \"first-go\"] }\n  hog: { command: [\"{agents}/gate.sh\", \"hogs-go\"] }\n  ok: { command: [\"{agents}/ok.sh\"], prompt: stdin }\ndefault_chain: [hog]\n",
    );
    std::fs::write(
        ws.path("workflows/two.yaml"),
        "name: two\nphases:\n  - name: first\n    type: single\n    agent: first\n    prompt: One\n  - name: second\n    type: single\n    agent: ok\n    input: first\n    prompt: Two\n",
    )
    .unwrap();
    let _d = ws.start();
    ws.drop_task("w.json", r#"{"workflow": "two"}"#);
    ws.wait_for("the run's first task to start", |recs| {
        recs.iter()
            .any(|r| matches!(&r.event, Event::AttemptStarted { task, .. } if task == "w.first"))
            .then_some(())
    });
    // Two big prompts fill the room; a third task waits in the inbox behind them.
    let prompt = "x".repeat(600_000);
    ws.drop_task("hog1.md", &prompt);
    ws.drop_task("hog2.md", &prompt);
    ws.drop_task("later.md", "a small task\n");
    ws.wait_until("the inbox to be held back", || {
        Some(stdout(&ws.cli(&["status"])))
            .filter(|s| s.contains("leaving task files in the inbox for now"))
    });
    std::fs::write(ws.root().join("first-go"), "").unwrap();
    assert!(
        matches!(ws.wait_settled("w"), Event::Done { .. }),
        "expected the run done: its second task taken in though the inbox is held back"
    );
    let later_taken = ws
        .records()
        .iter()
        .any(|r| matches!(&r.event, Event::Received { task, .. } if task == "later"));
    assert!(
        !later_taken,
        "expected `later` left in the inbox while the hogs hold the room"
    );
    std::fs::write(ws.root().join("hogs-go"), "").unwrap();
    for id in ["hog1", "hog2", "later"] {
        assert!(
            matches!(ws.wait_settled(id), Event::Done { .. }),
            "expected {id} done once the room is free"
        );
    }
}

/// Tasks a stop put back into the inbox while the intake was held back are taken in again at
/// the next start although their specs (held from the ledger) fill the room: they are what the
/// room is held for.
#[test]
fn tasks_put_back_by_a_stop_while_the_intake_is_held_run_after_a_restart() {
    let ws = Workspace::new(
        "concurrency: 1\nkill_grace: 300ms\ninbox_rescan: 200ms\nqueue_in_memory: 1MiB\nagents:\n  gate: { command: [\"{agents}/gate.sh\", \"go\"] }\ndefault_chain: [gate]\n",
    );
    let mut d = ws.start();
    let prompt = "x".repeat(600_000);
    for id in ["a", "b", "c"] {
        ws.drop_task(&format!("{id}.md"), &prompt);
    }
    ws.wait_until("the inbox to be held back", || {
        Some(stdout(&ws.cli(&["status"])))
            .filter(|s| s.contains("leaving task files in the inbox for now"))
    });
    assert!(d.stop().success(), "expected the daemon to stop");
    let _d = ws.start();
    std::fs::write(ws.root().join("go"), "").unwrap();
    for id in ["a", "b", "c"] {
        let settled = ws.wait_settled(id);
        assert!(
            matches!(settled, Event::Done { .. }),
            "expected `{id}` done after the restart, got {settled:?}"
        );
    }
}

/// A JSON object with a key written twice says one thing to a filter that reads the first and
/// another to a reader that keeps the last: every door refuses it. The chat door and task files
/// are checked in `http.rs` and the corpus; this is MCP's, before any tool is reached.
#[test]
fn the_mcp_door_refuses_a_key_written_twice() {
    let ws = Workspace::new(CONFIG);
    let mut mcp = std::process::Command::new(common::BIN)
        .args(["--root", &ws.root().display().to_string(), "mcp"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut input = mcp.stdin.take().unwrap();
    input
        .write_all(b"{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\": \"ping\", \"method\": \"tools/call\"}\n")
        .unwrap();
    drop(input);
    let mut out = String::new();
    mcp.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    // It then ends: a session that never initialised is an error of its own.
    mcp.wait().unwrap();
    let answer: serde_json::Value = serde_json::from_str(out.lines().next().unwrap_or("")).unwrap();
    assert_eq!(
        answer["error"]["code"], -32700,
        "expected a parse error, got {out}"
    );
    let message = answer["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.starts_with("parse error: the key `method` is written twice in one object"),
        "expected the key named, got {message:?}"
    );
}

/// Once the key has sealed a workspace's records, a ledger whose seals were all stripped (read
/// as an older version's) or all garbled (read as a moved workspace's) is forgery: nothing of
/// it is believed, and the log says so.
#[test]
fn a_ledger_with_every_seal_stripped_or_garbled_is_not_believed() {
    type Edit = fn(&str) -> String;
    let strip: Edit = |line| match line.rfind(",\"mac\":\"") {
        Some(at) => format!("{}}}", &line[..at]),
        None => line.to_string(),
    };
    let garble: Edit = |line| match line.rfind(",\"mac\":\"") {
        Some(at) => format!("{},\"mac\":\"{}\"}}", &line[..at], "0".repeat(32)),
        None => line.to_string(),
    };
    for (what, edit) in [("stripped", strip), ("garbled", garble)] {
        let ws = Workspace::new(CONFIG);
        let mut d = ws.start();
        ws.drop_task("f.json", r#"{"prompt": "p", "agent": "fail"}"#);
        assert!(
            matches!(ws.wait_settled("f"), Event::Escalated { .. }),
            "expected the failing task escalated"
        );
        assert!(d.stop().success());
        // What an agent that cannot read the key does: rewrite history without seals.
        let path = ws.path("ledger.jsonl");
        let text = std::fs::read_to_string(&path).unwrap();
        let forged: String = text
            .lines()
            .map(|l| edit(l) + "\n")
            .collect::<String>()
            .replace("\"event\":\"escalated\"", "\"event\":\"cancelled\"");
        assert_ne!(forged, text, "the test must change the ledger");
        std::fs::write(&path, forged).unwrap();
        let _d = ws.start();
        let out = ws.cli(&["status", "f", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        assert_ne!(
            v["state"], "cancelled",
            "{what}: expected the forged history not believed, got {v}"
        );
        // The log is written on a thread of its own: wait for the line.
        ws.wait_until(&format!("{what}: the forged lines reported"), || {
            log(&ws)
                .contains("were not written by dirigent")
                .then_some(())
        });
    }
}

/// A task file's name is anyone's choice: with escape sequences in it, neither the daemon's log
/// (read on a terminal, `journalctl`) nor the rejection's `.error.txt` (read with `cat`) carries
/// them on.
#[test]
fn an_inbox_file_named_with_escape_sequences_drives_no_terminal() {
    let ws = Workspace::new(CONFIG);
    let _d = ws.start();
    let name = "x\u{1b}]0;OWNED\u{7}y\u{1b}[2J.json";
    std::fs::write(ws.path("inbox").join(name), "not json").unwrap();
    let error = ws.wait_until("the rejection's reason", || {
        std::fs::read_dir(ws.path("rejected"))
            .ok()?
            .filter_map(Result::ok)
            .find(|e| e.file_name().to_string_lossy().ends_with(".error.txt"))
            .and_then(|e| std::fs::read(e.path()).ok())
    });
    assert!(
        !error.iter().any(|b| *b == 0x1b || *b == 0x07),
        "expected no escape or bell in the reason file: {:?}",
        String::from_utf8_lossy(&error)
    );
    ws.wait_until("the rejection logged", || {
        log(&ws).contains("rejected").then_some(())
    });
    let said = std::fs::read(ws.root().join("daemon.log")).unwrap();
    assert!(
        !said.iter().any(|b| *b == 0x1b || *b == 0x07),
        "expected no escape or bell in the log: {:?}",
        String::from_utf8_lossy(&said)
    );
}

/// Output that could not be saved in full for a reason waiting does not fix (here the daemon's
/// file-size limit) is never judged a success: the result would be cut short. The attempt
/// fails (`bad_output`) and says why.
#[test]
fn output_cut_by_a_file_size_limit_is_not_a_success() {
    let ws = Workspace::new(
        "agents:\n  big: { command: [\"{agents}/big.sh\", \"3\"] }\ndefault_chain: [big]\n",
    );
    // The daemon under `ulimit -f 2048` (1 KiB blocks: 2 MiB); its agent prints 3 MiB.
    let wrapper = ws.root().join("limited.sh");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nulimit -f 2048\nexec {} \"$@\"\n", common::BIN),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let _d = ws.start_program(&wrapper, &[], &[]);
    ws.drop_task("cut.json", r#"{"prompt": "p"}"#);
    let end = ws.wait_settled("cut");
    assert!(
        matches!(end, Event::Escalated { .. }),
        "expected the cut output not judged done, got {end:?}"
    );
    let finished = ws
        .records()
        .into_iter()
        .find_map(|r| match r.event {
            Event::AttemptFinished { class, reason, .. } => Some((class, reason)),
            _ => None,
        })
        .expect("an attempt_finished record");
    assert_eq!(finished.0.as_str(), "bad_output", "{finished:?}");
    assert!(
        finished
            .1
            .starts_with("its output could not be saved in full (")
            && finished.1.ends_with("so its result would be cut short"),
        "expected why, got {:?}",
        finished.1
    );
}

/// The control socket is a file in the workspace: an agent that removes it, or puts a listener
/// of its own in its place, does not keep `dirigent cancel` from being heard — the daemon binds
/// its socket again.
#[test]
fn a_removed_or_replaced_control_socket_is_bound_again() {
    let ws = Workspace::new(CONFIG);
    let _d = ws.start();
    ws.drop_task("h.json", r#"{"prompt": "p", "agent": "hang"}"#);
    ws.wait_started("h");
    let sock = ws.path("daemon.sock");
    std::fs::remove_file(&sock).unwrap();
    // What an agent would leave there: a socket that takes requests and never answers them.
    let _rogue = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    ws.wait_until("the daemon to bind its socket again", || {
        log(&ws).contains("is bound again").then_some(())
    });
    let out = ws.cli(&["cancel", "h"]);
    assert!(
        out.status.success(),
        "expected the cancel heard by the daemon: {}",
        stderr(&out)
    );
    ws.wait_for("the task cancelled", |recs| {
        recs.iter()
            .any(|r| matches!(&r.event, Event::Cancelled { task } if task == "h"))
            .then_some(())
    });
}

/// An agent that moves a copy over the ledger (or removes it) while the daemon runs: the
/// daemon puts its own file back, so the records after it — this task's end, the next task's —
/// are not written into a file no one reads and lost at the next start.
#[test]
fn a_ledger_swapped_by_an_agent_loses_no_record() {
    let ws = Workspace::new(
        "agents:\n  swap: { command: [\"sh\", \"-c\", \"cd \\\"$DIRIGENT_CONTEXT_DIR\\\" && cp ledger.jsonl .l.tmp && mv .l.tmp ledger.jsonl && echo swapped\"] }\n  good: { command: [\"{agents}/ok.sh\"], prompt: stdin }\ndefault_chain: [good]\n",
    );
    let mut d = ws.start();
    ws.drop_task("swap1.json", r#"{"prompt": "p", "agent": "swap"}"#);
    assert!(matches!(ws.wait_settled("swap1"), Event::Done { .. }));
    ws.drop_task("after.json", r#"{"prompt": "p"}"#);
    assert!(matches!(ws.wait_settled("after"), Event::Done { .. }));
    ws.wait_until("the swap to be reported", || {
        log(&ws)
            .contains("was replaced while the daemon ran (an agent?): its own file, with every record, is back in place")
            .then_some(())
    });
    d.stop();
    // A restart knows both, and runs neither again.
    let _d = ws.start();
    for id in ["swap1", "after"] {
        ws.wait_state(id, "done");
    }
    let starts = ws
        .records()
        .iter()
        .filter(|r| matches!(&r.event, Event::AttemptStarted { task, .. } if task == "swap1"))
        .count();
    assert_eq!(starts, 1, "the swapping task ran once");
}

/// A `.context/` moved away and another put in its place while the daemon runs (someone who
/// may write to the workspace): the daemon reads no config and takes no task from it — it
/// stops, and says where its state went.
#[test]
fn a_context_put_in_the_daemons_place_stops_it() {
    let ws = Workspace::new(CONFIG);
    let mut d = ws.start();
    let pid = d.pid();
    // Running, its signal handlers in place.
    ws.drop_task("t.json", r#"{"prompt": "p", "agent": "good"}"#);
    ws.wait_settled("t");
    let ctx = ws.root().join(".context");
    std::fs::rename(&ctx, ws.root().join(".ctx-stolen")).unwrap();
    std::fs::create_dir(&ctx).unwrap();
    std::fs::write(
        ctx.join("dirigent.yaml"),
        "agents:\n  evil: { command: [\"sh\", \"-c\", \"touch pwned\"] }\ndefault_chain: [evil]\n",
    )
    .unwrap();
    d.signal(nix::sys::signal::Signal::SIGHUP);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(d.wait());
    });
    let status = rx
        .recv_timeout(common::PATIENCE)
        .expect("the daemon to stop by itself");
    assert!(
        !status.success(),
        "expected the daemon to stop with an error: {status:?}"
    );
    let log = std::fs::read_to_string(ws.root().join("daemon.log")).unwrap();
    assert!(
        log.contains("was replaced while the daemon ran (moved away, and another put in its place): the daemon stops"),
        "expected why in the log:\n{log}"
    );
    assert!(
        !log.contains("configuration reloaded"),
        "the planted config must not be loaded:\n{log}"
    );
    assert!(!ws.root().join("pwned").exists(), "no planted command ran");
    assert!(process_gone(pid), "the daemon is gone");
}

/// Lines removed from the ledger (each sealed alone, so nothing else tells): the hole they
/// leave is reported at the next start.
#[test]
fn lines_removed_from_the_ledger_are_reported() {
    let ws = Workspace::new(CONFIG);
    let mut d = ws.start();
    ws.drop_task("t.json", r#"{"prompt": "p", "agent": "good"}"#);
    ws.wait_settled("t");
    d.stop();
    let path = ws.path("ledger.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let claimed = text
        .lines()
        .position(|l| l.contains("\"event\":\"claimed\""))
        .expect("a claimed line");
    let kept: Vec<&str> = text
        .lines()
        .enumerate()
        .filter(|(n, _)| *n != claimed)
        .map(|(_, l)| l)
        .collect();
    std::fs::write(&path, kept.join("\n") + "\n").unwrap();
    let seq = claimed + 1; // one record a line, from 1
    let _d = ws.start();
    ws.wait_until("the hole to be reported", || {
        log(&ws)
            .contains(&format!("record {seq} is missing from the ledger"))
            .then_some(())
    });
}
