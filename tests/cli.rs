//! The command line as a user meets it: exact error texts, `--help`, `--json`, `logs -f`.

mod common;

use std::process::{Command, Stdio};
use std::time::Instant;

use common::{BIN, Workspace};
use dirigent::ledger::Event;

const CONFIG: &str = r#"
default_chain: [good]
roles: { backend: [good] }
agents:
  good: { command: ["{agents}/ok.sh"], prompt: stdin }
  gate: { command: ["{agents}/gate.sh", "release"], max_parallel: 1, stagger: 250ms }
  ghost: { command: ["definitely-not-installed-xyz"] }
"#;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn submit_validates_before_writing_anything() {
    let ws = Workspace::new(CONFIG);
    let cases: &[(&[&str], &str)] = &[
        (
            &["submit", "x", "--agent", "nope"],
            "error: unknown agent `nope` (configured: gate, ghost, good)\n",
        ),
        (
            &["submit", "x", "--role", "qa"],
            "error: unknown role `qa` (roles: backend, bulk, frontend, judge, planner, proposer, reviewer)\n",
        ),
        (
            &["submit", "x", "--agent", "godo"],
            "error: unknown agent `godo` (configured: gate, ghost, good); did you mean `good`?\n",
        ),
        (
            &["submit", "x", "--role", "backnd"],
            "error: unknown role `backnd` (roles: backend, bulk, frontend, judge, planner, proposer, reviewer); did you mean `backend`?\n",
        ),
        (
            &["submit", "x", "--output", "../out.md"],
            "error: `--output` `../out.md` contains `..`; it must stay inside the workspace\n",
        ),
        (
            &["submit", "x", "--id", "s1", "--after", "s1"],
            "error: `after` goes round in a circle (s1 → s1): none of these tasks could ever start; remove one of the dependencies\n",
        ),
        (
            &["submit", "x", "--file", "../etc/passwd"],
            "error: `--file` `../etc/passwd` contains `..`; it must stay inside the workspace\n",
        ),
        (
            &["submit", "x", "--timeout", "soon"],
            "error: `--timeout`: invalid duration `soon` (it must start with a number, not `s`); write it like `500ms`, `10s` or `5m`\n",
        ),
        (
            &["submit", "x", "--id", ".hidden"],
            "error: invalid `--id` `.hidden`: names use ASCII letters, digits, `-`, `_` and `.`, do not start with `.` or `-`, and have at most 128 characters\n",
        ),
        (&["submit", "  "], "error: the prompt is empty\n"),
        (
            &["submit", "--workflow", "tdd", "--file", "src/a.rs"],
            "error: a `workflow` task reads no `files` or `context` itself: its phases name what they read (`files` with `context: scoped`); remove them\n",
        ),
    ];
    for (args, want) in cases {
        let out = ws.cli(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_eq!(stderr(&out), *want, "{args:?}");
    }
    // A priority that is not a number is refused in the user's terms, not the parser's.
    let out = ws.cli(&["submit", "x", "--priority", "high"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "`--priority high` is a usage error"
    );
    assert_eq!(
        stderr(&out).lines().next(),
        Some(
            "error: invalid value 'high' for '--priority <PRIORITY>': expected a whole number, higher runs first (e.g. `10` or `-5`; default 0)"
        ),
    );
    assert!(
        common::list(&ws, "inbox").is_empty(),
        "nothing may be written on a validation error"
    );
    // A file to include that is not there is not refused (an earlier task may write it), but
    // the user hears of it now rather than when the task starts.
    let out = ws.cli(&["submit", "x", "--id", "reads", "--file", "src/nope.rs"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "warning: `--file src/nope.rs`: there is no such file in `{}` now; the task escalates if it is still so when it starts\n",
            ws.root().display()
        )),
        "expected a warning about the missing file, got {:?}",
        stderr(&out)
    );
    // A directory and a link are read no more than a missing file (no link is followed).
    std::fs::create_dir_all(ws.root().join("src")).unwrap();
    std::fs::write(ws.root().join("src/real.rs"), "fn main() {}").unwrap();
    std::os::unix::fs::symlink("real.rs", ws.root().join("src/link.rs")).unwrap();
    for (file, want) in [
        ("src/real.rs", None),
        (
            "src",
            Some(format!(
                "`{}` is not a regular file",
                ws.root().join("src").display()
            )),
        ),
        (
            "src/link.rs",
            Some(format!(
                "`{}` is a symbolic link, and links are never followed",
                ws.root().join("src/link.rs").display()
            )),
        ),
    ] {
        let out = ws.cli(&["submit", "x", "--file", file]);
        assert!(out.status.success(), "{}", stderr(&out));
        let warned = stderr(&out)
            .lines()
            .find(|l| l.starts_with("warning:"))
            .map(str::to_string);
        match want {
            None => assert_eq!(warned, None, "`--file {file}` exists: expected no warning"),
            Some(w) => assert_eq!(
                warned,
                Some(format!(
                    "warning: `--file {file}`: {w}; the task escalates if it is still so when it starts"
                )),
                "`--file {file}`"
            ),
        }
    }
    // A duplicate id is refused up front too.
    assert!(ws.cli(&["submit", "x", "--id", "one"]).status.success());
    let out = ws.cli(&["submit", "y", "--id", "one"]);
    assert_eq!(
        stderr(&out),
        format!(
            "error: `{}` is already waiting in the inbox; choose another `--id`\n",
            ws.path("inbox/one.json").display()
        )
    );
}

#[test]
fn a_file_a_worktree_will_not_hold_is_warned_of_at_submit() {
    let ws = Workspace::new(CONFIG);
    let root = ws.root();
    common::git(root, &["init", "-q", "-b", "main"]);
    std::fs::create_dir_all(root.join("src")).unwrap();
    std::fs::write(root.join(".gitignore"), ".env\n.context/\n").unwrap();
    for name in ["src/kept.rs", "src/draft.rs", "src/we*rd.rs"] {
        std::fs::write(root.join(name), "fn a() {}\n").unwrap();
    }
    common::git(root, &["add", "."]);
    common::git(root, &["commit", "-q", "-m", "base"]);
    std::fs::write(root.join("src/draft.rs"), "fn b() {}\n").unwrap();
    std::fs::write(root.join("src/new.rs"), "fn c() {}\n").unwrap();
    std::fs::write(root.join(".env"), "K=v\n").unwrap();
    let tail = "; commit it first, or run the task in the workspace itself (`--workdir shared`)";
    // (file, the warning expected; None: none)
    let cases = [
        ("src/kept.rs", None),
        ("src/we*rd.rs", None),
        (
            "src/draft.rs",
            Some(
                "has changes that are not committed, and the task's worktree holds the committed version",
            ),
        ),
        (
            "src/new.rs",
            Some("is not committed, so the task's worktree does not hold it"),
        ),
        (
            ".env",
            Some("is ignored by git, so the task's worktree does not hold it"),
        ),
    ];
    for (file, want) in cases {
        let out = ws.cli(&["submit", "x", "--file", file]);
        assert!(out.status.success(), "{}", stderr(&out));
        let warned: Vec<String> = stderr(&out)
            .lines()
            .filter(|l| l.starts_with("warning:"))
            .map(str::to_string)
            .collect();
        let want: Vec<String> = want
            .map(|w| format!("warning: `--file {file}` {w}{tail}"))
            .into_iter()
            .collect();
        assert_eq!(warned, want, "`--file {file}`");
        // In the workspace itself the file is read as it is: nothing to warn of.
        let out = ws.cli(&["submit", "x", "--workdir", "shared", "--file", file]);
        assert!(
            !stderr(&out).contains("warning:"),
            "`--workdir shared --file {file}`: expected no warning, got {:?}",
            stderr(&out)
        );
    }
    // Nor when the agent (or every agent of the chain) works in the workspace.
    ws.write_config(&format!(
        "{CONFIG}  here: {{ command: [\"{{agents}}/ok.sh\"], workdir: shared }}\n"
    ));
    for args in [
        vec!["submit", "x", "--agent", "here", "--file", "src/new.rs"],
        vec![
            "submit",
            "x",
            "--chain",
            "here,here",
            "--file",
            "src/new.rs",
        ],
    ] {
        let out = ws.cli(&args);
        assert!(
            out.status.success() && !stderr(&out).contains("warning:"),
            "{args:?}: expected no warning, got {:?}",
            stderr(&out)
        );
    }
}

#[test]
fn submit_reads_the_prompt_from_stdin_and_writes_a_valid_task_file() {
    let ws = Workspace::new(CONFIG);
    // The tasks it runs after exist (waiting in the inbox): `after` must name real tasks.
    for id in ["a", "b"] {
        let out = ws.cli(&["submit", "before", "--id", id]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let mut child = Command::new(BIN)
        .args([
            "submit",
            "-",
            "--id",
            "piped",
            "--role",
            "backend",
            "--after",
            "a",
            "--after",
            "b",
            "--priority",
            "-3",
            "--json",
        ])
        .env("DIRIGENT_ROOT", ws.root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"line one\nline two\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["id"], "piped");
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ws.path("inbox/piped.json")).unwrap())
            .unwrap();
    assert_eq!(file["prompt"], "line one\nline two\n");
    assert_eq!(file["role"], "backend");
    assert_eq!(file["after"], serde_json::json!(["a", "b"]));
    assert_eq!(file["priority"], -3);
    // Nothing is left in the staging directory.
    assert_eq!(std::fs::read_dir(ws.path("inbox/.tmp")).unwrap().count(), 0);

    // `--verify` is split into words as a shell would: a quoted script stays one argument.
    let out = ws.cli(&[
        "submit",
        "p",
        "--id",
        "checked",
        "--verify",
        "sh -c 'echo tests failed; exit 1'",
        "--verify",
        "cargo test",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ws.path("inbox/checked.json")).unwrap())
            .unwrap();
    assert_eq!(
        file["verify"],
        serde_json::json!([["sh", "-c", "echo tests failed; exit 1"], ["cargo", "test"]]),
        "expected each `--verify` as one argv"
    );
    let out = ws.cli(&["submit", "p", "--id", "unclosed", "--verify", "sh -c 'echo"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(
        stderr(&out),
        "error: `--verify`: `sh -c 'echo` has a `'` that is not closed\n"
    );
    assert!(
        !ws.path("inbox/unclosed.json").exists(),
        "expected no task queued for a `--verify` that cannot be split"
    );
}

#[test]
fn reading_commands_work_without_a_daemon_and_say_so() {
    let ws = Workspace::new(CONFIG);
    let out = ws.cli(&["status"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "daemon: not running (showing the state recorded in the ledger)\nno tasks yet: drop a file into .context/inbox/ or run `dirigent submit \"…\"`\n"
    );
    let out = ws.cli(&["status", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "error: no task `nope` in this workspace; `dirigent status` lists the tasks\n"
    );
    let out = ws.cli(&["result", "nope"]);
    assert_eq!(
        stderr(&out),
        "error: no task `nope` in this workspace; `dirigent status` lists the tasks\n"
    );
    // A script that asked for JSON reads the failure as JSON on stdout, the line on stderr.
    let out = ws.cli(&["status", "nope", "--json"]);
    assert_eq!(out.status.code(), Some(2), "expected exit 2, got {out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "{\"error\":\"no task `nope` in this workspace; `dirigent status` lists the tasks\"}\n",
        "expected the error as one JSON object on stdout"
    );
    assert_eq!(
        stderr(&out),
        "error: no task `nope` in this workspace; `dirigent status` lists the tasks\n"
    );
    // A usage error too.
    let out = ws.cli(&["status", "--json", "--bogus"]);
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
        ),
        (
            Some(2),
            "{\"error\":\"unexpected argument '--bogus' found\"}\n".to_string()
        ),
        "expected the usage error as JSON on stdout"
    );
    let out = ws.cli(&["stats", "--json", "--by", "nonsense"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "{\"error\":\"invalid value 'nonsense' for '--by <BY>' [possible values: agent, role, model, worker]\"}\n",
        "expected the values it takes in the JSON error"
    );
}

#[test]
fn agents_lists_install_state_limits_and_memberships() {
    let ws = Workspace::new(CONFIG);
    let out = ws.cli(&["agents", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let agents = v["agents"].as_array().unwrap();
    let by = |n: &str| agents.iter().find(|a| a["name"] == n).unwrap().clone();
    assert_eq!(by("good")["installed"], true);
    assert_eq!(by("ghost")["installed"], false);
    assert_eq!(by("ghost")["path"], serde_json::Value::Null);
    assert_eq!(by("gate")["max_parallel"], 1);
    assert_eq!(by("gate")["stagger_ms"], 250);
    assert_eq!(
        by("good")["in"],
        serde_json::json!(["default_chain", "role:backend"])
    );
    let text = String::from_utf8_lossy(&ws.cli(&["agents"]).stdout).into_owned();
    assert!(text.contains("ghost      not installed\n           cannot run: `definitely-not-installed-xyz` is not installed (not on PATH)\n"), "{text}");
    // An agent that cannot start is never called ready.
    let ghost: String = text
        .lines()
        .skip_while(|l| !l.starts_with("ghost "))
        .enumerate()
        .take_while(|(i, l)| *i == 0 || l.starts_with(' '))
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    assert!(
        !ghost.contains("ready"),
        "ghost is not installed, so not ready: {ghost}"
    );
    assert!(text.contains("default chain: good"), "{text}");
}

#[test]
fn the_embedded_default_lists_every_preset() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["--root", dir.path().to_str().unwrap(), "agents", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["config"], "embedded default config");
    let names: Vec<&str> = v["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["aider", "claude", "codex", "gemini", "ollama", "opencode"]
    );
}

#[test]
fn init_writes_a_commented_config_and_keeps_an_existing_one() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    let out = Command::new(BIN)
        .args(["--root", root, "init"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("\ncreated {}/.context (", root)),
        "expected .context/ said created: {out:?}"
    );
    let cfg = std::fs::read_to_string(dir.path().join(".context/dirigent.yaml")).unwrap();
    assert_eq!(cfg, dirigent::config::DEFAULT_CONFIG);
    // Every top-level key has a comment right above it.
    let lines: Vec<&str> = cfg.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        if !l.starts_with([' ', '#']) && !l.is_empty() {
            assert!(lines[i - 1].starts_with('#'), "`{l}` has no comment");
        }
    }
    std::fs::write(
        dir.path().join(".context/dirigent.yaml"),
        "concurrency: 1\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["--root", root, "init"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with("kept the existing")
            && said.contains(&format!("\nchecked {}/.context (", root)),
        "expected the existing config kept and .context/ checked (not created), got:\n{said}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join(".context/dirigent.yaml")).unwrap(),
        "concurrency: 1\n"
    );
}

#[test]
fn an_invalid_config_stops_the_daemon_with_a_clear_error() {
    let ws = Workspace::new("agents:\n  x: { command: [a], prompt: arg }\n");
    let out = ws.cli(&["daemon"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        format!(
            "error: `{}`: agent `x`: `prompt: arg` needs `{{prompt}}` in the command\n",
            ws.path("dirigent.yaml").display()
        )
    );
}

#[test]
fn every_command_has_help() {
    for cmd in [
        "init", "daemon", "submit", "status", "logs", "result", "agents", "stats", "mcp", "cancel",
        "retry", "workflow",
    ] {
        let out = Command::new(BIN).args([cmd, "--help"]).output().unwrap();
        assert!(out.status.success(), "{cmd}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage: dirigent"), "{cmd}: {text}");
        assert!(
            text.contains("--root"),
            "{cmd}: the global --root is missing"
        );
    }
}

#[test]
fn logs_follow_prints_live_output_until_the_attempt_ends() {
    let ws = Workspace::new(CONFIG);
    let _d = ws.start();
    ws.drop_task("g.json", r#"{"prompt": "p", "agent": "gate"}"#);
    ws.wait_for("the attempt to start", |recs| {
        recs.iter()
            .any(|r| matches!(&r.event, Event::AttemptStarted { task, .. } if task == "g"))
            .then_some(())
    });
    let mut follower = Command::new(BIN)
        .args(["logs", "g", "-f"])
        .env("DIRIGENT_ROOT", ws.root())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // The first line arrives while the agent still runs: this is live output.
    use std::io::BufRead;
    let mut reader = std::io::BufReader::new(follower.stdout.take().unwrap());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    assert_eq!(first, "waiting for release\n");
    assert!(
        !ws.records()
            .iter()
            .any(|r| matches!(r.event, Event::AttemptFinished { .. }))
    );
    std::fs::write(ws.root().join("release"), "").unwrap();
    // It returns by itself once the attempt has finished, with the rest of the output.
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut reader, &mut rest).unwrap();
    assert!(follower.wait().unwrap().success());
    assert_eq!(rest, "released\n");
    let status = String::from_utf8_lossy(&ws.cli(&["status", "g"]).stdout).into_owned();
    assert!(status.contains("attempt 1: gate"), "{status}");
    assert!(
        status.contains("daemon: running (pid") && status.contains("this is its live state"),
        "{status}"
    );
}

#[test]
fn a_workspace_that_does_not_exist_yet_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("not/yet/here");
    let out = Command::new(BIN)
        .args(["--root", root.to_str().unwrap(), "init"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(root.join(".context/inbox").is_dir());
    // And an error says its cause once.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let out = Command::new(BIN)
        .args(["--root", file.to_str().unwrap(), "daemon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        format!(
            "error: the workspace `{}` (from `--root` or DIRIGENT_ROOT) is not a directory\n",
            file.display()
        ),
        "one error, saying its cause once"
    );
}

#[test]
fn a_context_dir_writable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let ws = Workspace::new(CONFIG);
    std::fs::set_permissions(ws.path("inbox"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = ws.cli(&["daemon"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        format!(
            "error: `{}` is writable by other users (mode 0777); fix it with `chmod -R go-w {}`\n",
            ws.path("inbox").display(),
            ws.ctx().display()
        )
    );
}

#[test]
fn the_service_managers_variables_never_reach_an_agent() {
    let ws = Workspace::new(r#"agents: { envdump: { command: ["{agents}/printenv.sh"] } }"#);
    let _d = ws.start_with(&[
        ("NOTIFY_SOCKET", "/nonexistent/notify"),
        ("LISTEN_PID", "1"),
        ("LISTEN_FDS", "3"),
        ("LISTEN_FDNAMES", "x"),
        ("WATCHDOG_PID", "1"),
        ("WATCHDOG_USEC", "1000000"),
        ("KEEP_ME", "yes"),
    ]);
    ws.drop_task("e.json", r#"{"prompt": "p"}"#);
    assert!(matches!(ws.wait_settled("e"), Event::Done { .. }));
    let env = std::fs::read_to_string(ws.path("outbox/e.md")).unwrap();
    for var in [
        "NOTIFY_SOCKET",
        "LISTEN_PID",
        "LISTEN_FDS",
        "LISTEN_FDNAMES",
        "WATCHDOG_PID",
        "WATCHDOG_USEC",
    ] {
        assert!(
            !env.lines().any(|l| l.starts_with(&format!("{var}="))),
            "{var} leaked into the agent"
        );
    }
    assert!(
        env.contains("KEEP_ME=yes\n") && env.contains("DIRIGENT_TASK_ID=e\n"),
        "{env}"
    );
}

#[test]
fn workflow_validate_reports_every_problem_with_file_line_and_column() {
    let ws = Workspace::new(CONFIG);
    std::fs::write(
        ws.path("workflows/review.yaml"),
        "name: review\nvars: { area: src }\nphases:\n  - name: look\n    type: single\n    agent: nobody\n    prompt: Review {area} for {focus}\n    input: later\n  - name: later\n    type: ensemble\n    agents: [good]\n    judge: good\n    prompt: Again\n",
    )
    .unwrap();
    let out = ws.cli(&["workflow", "validate", "review"]);
    assert_eq!(out.status.code(), Some(1));
    let file = ws.path("workflows/review.yaml");
    let f = file.display();
    assert_eq!(
        stderr(&out),
        format!(
            "error: {f}:6:12: unknown agent `nobody` (configured: gate, ghost, good)\n\
error: {f}:8:12: phase `look` reads `later`, which runs later (a cycle); phases run in order\n\
error: {f}:9:11: ensemble phase `later` needs at least two `agents` (or `models`) to propose, has 1\n\
3 problems found\n"
        )
    );
    // A user file with a built-in's name replaces it; every other built-in is still listed.
    let out = ws.cli(&["workflow", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "bulk-refine",
            "feature-build",
            "plan",
            "research-implement-validate",
            "review",
            "tdd",
            "workshop"
        ]
    );
    let review = v
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "review")
        .unwrap();
    assert_eq!(review["valid"], false);
    let out = ws.cli(&["workflow", "show", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out)
            .starts_with("error: no workflow `nope` (workflows: bulk-refine, feature-build,"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn completions_and_the_man_page_come_from_the_same_definitions() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains("COMPLETE=") || script.contains("COMPLETE\""),
            "the {shell} script asks the binary: {script}"
        );
        // The scripts must at least parse.
        let check = match shell {
            "bash" => Some(("bash", "-n")),
            "zsh" if which::which("zsh").is_ok() => Some(("zsh", "-n")),
            _ => None,
        };
        if let Some((program, flag)) = check {
            let path = dir.path().join(format!("dirigent.{shell}"));
            std::fs::write(&path, script.as_bytes()).unwrap();
            let parsed = Command::new(program).arg(flag).arg(&path).output().unwrap();
            assert!(
                parsed.status.success(),
                "{shell}: {}",
                String::from_utf8_lossy(&parsed.stderr)
            );
        }
    }
    let man = Command::new(BIN).arg("man").output().unwrap();
    let page = String::from_utf8_lossy(&man.stdout);
    assert!(page.contains(".TH dirigent 1"), "{page}");
    assert!(
        page.contains("dirigent\\-submit") || page.contains("submit"),
        "{page}"
    );
}

#[test]
fn submit_wait_shows_a_live_line_on_a_terminal_and_plain_lines_in_a_pipe() {
    let ws = Workspace::new(CONFIG);
    let _d = ws.start();
    // In a pipe: event lines only, no terminal control codes.
    let out = ws.cli(&["submit", "piped", "--agent", "good", "--wait", "--id", "p1"]);
    assert!(out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("attempt 1: good started") && !err.contains('\x1b'),
        "{err:?}"
    );
    // On a terminal (a pseudo-terminal from `script`): a live line with agent, attempt and time.
    let cmd = format!("{} submit held --agent gate --wait --id t1", common::BIN);
    let mut child = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("DIRIGENT_ROOT", ws.root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Read the terminal until the live line shows, then let the agent finish.
    let mut out = child.stdout.take().unwrap();
    let mut screen = String::new();
    let mut buf = [0u8; 4096];
    while !screen.contains("attempt 1: gate running for") {
        let n = std::io::Read::read(&mut out, &mut buf).unwrap();
        assert!(n > 0, "the terminal closed without a live line: {screen:?}");
        screen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    std::fs::write(ws.root().join("release"), "").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(child.wait().unwrap().success());
    assert!(screen.contains("\x1b[2K"), "{screen:?}");
    assert!(rest.contains("released"), "{rest:?}");
}

#[test]
fn doctor_names_each_problem_and_its_fix() {
    let ws = Workspace::new(
        r#"
default_chain: [codex]
agents:
  codex: { preset: codex }
  ghost: { command: ["definitely-not-installed-xyz"] }
  script: { command: ["{agents}/touch-ran.sh"] }
"#,
    );
    // A fake codex first on PATH, and a home with no login.
    let bin = ws.root().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(common::agents_dir().join("fake-cli.sh"), bin.join("codex"))
        .unwrap();
    let home = ws.root().join("home");
    std::fs::create_dir(&home).unwrap();
    let doctor = |json: bool| {
        let mut cmd = Command::new(BIN);
        cmd.arg("doctor")
            .env("DIRIGENT_ROOT", ws.root())
            .env("DIRIGENT_STATE_DIR", ws.state.path())
            .env("HOME", &home)
            .env(
                "PATH",
                format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
            )
            .env("OPENAI_API_KEY", "")
            .env("CODEX_API_KEY", "")
            .env_remove("CODEX_HOME");
        if json {
            cmd.arg("--json");
        }
        cmd.output().unwrap()
    };
    let out = doctor(false);
    let text = String::from_utf8_lossy(&out.stdout)
        .replace(&ws.root().display().to_string(), "WS")
        .replace(&common::agents_dir().display().to_string(), "AGENTS");
    // A custom command is the user's script, never run by the check: `--version` may be work.
    assert!(
        !ws.root().join("ran").exists(),
        "expected the custom agent not run by doctor"
    );
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
    assert_eq!(
        text,
        "config: WS/.context/dirigent.yaml
codex      PROBLEM: WS/bin/codex (codex 0.0.0-fake), credentials: none
           - not logged in: none of its credentials exists
             fix: run `codex login` (or set `CODEX_API_KEY`), then `dirigent agents enable codex`
ghost      PROBLEM: not installed
           - `definitely-not-installed-xyz` is not installed (not on PATH)
             fix: install it, or fix the agent's `command` in .context/dirigent.yaml
script     ok: AGENTS/touch-ran.sh

default chain: codex
no agent of the default chain can run: fix one of the problems above, or try dirigent with a script agent that needs no CLI (the README's \"No agent CLI installed yet?\")
(checked with this shell's environment; a daemon started by systemd or launchd may see another one)
"
    );
    assert_eq!(out.status.code(), Some(1), "no agent of the chain can run");
    // Logged in: codex is fine, and the exit code says so.
    std::fs::create_dir(home.join(".codex")).unwrap();
    std::fs::write(home.join(".codex/auth.json"), "{}").unwrap();
    let out = doctor(true);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&v["usable"], &v["default_chain"]),
        (&serde_json::json!(true), &serde_json::json!(["codex"])),
        "expected the verdict in the JSON: {v}"
    );
    let codex = &v["agents"][0];
    assert_eq!(codex["name"], "codex");
    assert_eq!(codex["ok"], true, "{codex}");
    assert_eq!(codex["credentials"]["state"], "found");
    assert!(
        codex["credentials"]["at"]
            .as_str()
            .unwrap()
            .ends_with("/home/.codex/auth.json"),
        "{codex}"
    );
}

#[test]
fn a_reader_that_goes_away_ends_a_command_quietly() {
    let ws = Workspace::new(CONFIG);
    // A pipe whose reading end is already closed: every write fails with EPIPE.
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    let out = Command::new(BIN)
        .args(["status", "--json"])
        .env("DIRIGENT_ROOT", ws.root())
        .env("DIRIGENT_STATE_DIR", ws.state.path())
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(13),
        "ended by SIGPIPE like any Unix tool; stderr: {}",
        stderr(&out)
    );
    assert_eq!(stderr(&out), "", "no panic message");
}

#[test]
fn waiting_on_a_terminal_redraws_its_live_line_sparingly() {
    let ws = Workspace::new(
        "agents:\n  slow: { command: [\"{agents}/slow.sh\", \"2\"] }\ndefault_chain: [slow]\n",
    );
    let _d = ws.start();
    // `submit --wait` on a pseudo-terminal (so it draws its live line) while a 2-second task
    // runs; count every byte it writes to the terminal.
    let script = r#"
import os, pty, sys
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
total = 0
while True:
    try:
        data = os.read(fd, 65536)
    except OSError:
        break
    if not data:
        break
    total += len(data)
_, status = os.waitpid(pid, 0)
print(total, os.waitstatus_to_exitcode(status))
"#;
    let out = Command::new("python3")
        .args(["-c", script, BIN, "submit", "--wait", "take your time"])
        .env("DIRIGENT_ROOT", ws.root())
        .env("DIRIGENT_STATE_DIR", ws.state.path())
        .output()
        .expect("python3 runs");
    let report = String::from_utf8_lossy(&out.stdout);
    let mut parts = report.split_whitespace();
    let bytes: usize = parts
        .next()
        .and_then(|b| b.parse().ok())
        .unwrap_or(usize::MAX);
    let code = parts.next().unwrap_or("");
    assert_eq!(
        code,
        "0",
        "the waiting client succeeds: {report} {}",
        stderr(&out)
    );
    // A handful of event lines plus a redraw of about 60 bytes at most 4 times a second:
    // well under 4 KiB for a 2-second task. A client that redraws on every wake wrote
    // megabytes.
    assert!(
        bytes < 4096,
        "`submit --wait` wrote {bytes} bytes to the terminal for a 2-second task"
    );
}

#[test]
fn completion_offers_the_workspaces_agents_roles_workflows_and_tasks() {
    let ws = Workspace::new(CONFIG);
    let out = ws.cli(&["submit", "first", "--id", "first-task"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // What bash's completion function asks: the words so far, the index of the one completed.
    let complete = |words: &[&str]| -> Vec<String> {
        let out = Command::new(BIN)
            .arg("--")
            .args(words)
            .env("COMPLETE", "bash")
            .env("_CLAP_COMPLETE_INDEX", (words.len() - 1).to_string())
            .env("_CLAP_COMPLETE_COMP_TYPE", "9")
            .env("_CLAP_COMPLETE_SPACE", "true")
            .env("_CLAP_IFS", "\n")
            .env("DIRIGENT_ROOT", ws.root())
            .env("DIRIGENT_STATE_DIR", ws.state.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{words:?}: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    };
    let has = |got: &[String], want: &[&str], what: &str| {
        for w in want {
            assert!(
                got.iter().any(|g| g == w),
                "{what}: `{w}` not offered in {got:?}"
            );
        }
    };
    has(
        &complete(&["dirigent", ""]),
        &["submit", "status", "workflow"],
        "subcommands",
    );
    has(
        &complete(&["dirigent", "submit", "--agent", ""]),
        &["gate", "ghost", "good"],
        "agents",
    );
    has(
        &complete(&["dirigent", "submit", "--role", ""]),
        &["backend", "reviewer"],
        "roles",
    );
    has(
        &complete(&["dirigent", "workflow", "run", ""]),
        &["feature-build", "plan"],
        "workflows",
    );
    has(
        &complete(&["dirigent", "status", ""]),
        &["first-task"],
        "task ids",
    );
}

#[test]
fn submit_wait_sees_the_end_of_its_task_across_ledger_rotations() {
    // A ledger that rotates every 3 records: while the client waits, other tasks rotate it
    // away several times.
    let ws = Workspace::new(&format!("ledger_segment_events: 3\n{CONFIG}"));
    let _d = ws.start();
    let mut child = Command::new(BIN)
        .args([
            "submit", "hold on", "--agent", "gate", "--id", "w", "--wait",
        ])
        .env("DIRIGENT_ROOT", ws.root())
        .env("DIRIGENT_STATE_DIR", ws.state.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    ws.wait_until("the gate agent to wait", || {
        std::fs::read_to_string(ws.path("runs/w/1-gate.stdout"))
            .ok()
            .filter(|s| s.contains("waiting for"))
    });
    for n in 0..6 {
        ws.drop_task(&format!("o{n}.json"), r#"{"prompt": "p", "agent": "good"}"#);
    }
    ws.wait_until("the other tasks to be done", || {
        (0..6)
            .all(|n| ws.path(&format!("outbox/o{n}.md")).exists())
            .then_some(())
    });
    assert!(
        !dirigent::ledger::segments(&ws.ctx()).unwrap().is_empty()
            || ws.path("ledger.snapshot.json").exists(),
        "the ledger rotated while the client waited"
    );
    std::fs::write(ws.root().join("release"), "").unwrap();
    // The client ends on its own; a bounded wait turns a hang into a failure.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut out = String::new();
        std::io::Read::read_to_string(&mut std::io::BufReader::new(stdout), &mut out).unwrap();
        let _ = done_tx.send(out);
    });
    let out = done_rx.recv_timeout(common::PATIENCE).unwrap_or_else(|_| {
        let _ = child.kill();
        panic!("`submit --wait` missed its task's end in a rotated segment")
    });
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "the task is done");
    assert_eq!(
        out, "waiting for release\nreleased\n",
        "the result on stdout"
    );
}

/// `submit --wait` of a task on the gate agent, once its attempt waits at the gate.
fn waiting(ws: &Workspace, id: &str) -> Spawned {
    let client = Spawned::start(
        ws,
        &["submit", "hold on", "--agent", "gate", "--id", id, "--wait"],
    );
    ws.wait_until("the gate agent to wait", || {
        std::fs::read_to_string(ws.path(&format!("runs/{id}/1-gate.stdout")))
            .ok()
            .filter(|s| s.contains("waiting for"))
    });
    client
}

#[test]
fn submit_wait_ends_at_a_cancel_and_says_when_the_daemon_dies() {
    let ws = Workspace::new(CONFIG);
    let mut d = ws.start();
    // Cancelled while it runs: the client ends, with the way to run it again.
    let mut client = waiting(&ws, "c1");
    assert!(ws.cli(&["cancel", "c1"]).status.success());
    let line = client.line_with("runs it again");
    assert!(
        line.ends_with("cancelled by the user; `dirigent retry c1` runs it again from the start"),
        "{line}"
    );
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(client.child.wait());
    });
    let status = rx
        .recv_timeout(common::PATIENCE)
        .expect("the client ends after the cancel")
        .unwrap();
    assert_eq!(status.code(), Some(1), "a cancelled task is not done");

    // The daemon killed outright: the client says so instead of waiting in silence.
    let mut client = waiting(&ws, "k1");
    let pid = d.pid();
    d.crash();
    let line = client.line_with("is gone");
    assert!(
        line.ends_with(&format!(
            "the daemon (pid {pid}) is gone without a clean stop; `k1` goes on when a daemon starts again (`dirigent daemon`, or its service)"
        )),
        "{line}"
    );
    // And when one starts again, that too.
    let _d = ws.start();
    client.line_with("is running; waiting for `k1`");
    // Interrupted, it says what goes on without it.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(client.child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let line = client.line_with("stopped waiting");
    assert_eq!(
        line,
        "dirigent: stopped waiting; `k1` goes on in the daemon (`dirigent logs k1 -f` follows it, `dirigent cancel k1` stops it)"
    );
    assert_eq!(
        client.child.wait().unwrap().code(),
        Some(130),
        "128 + SIGINT"
    );
}

/// An agent's result on a terminal: its escape sequences dropped and a final newline added
/// (the shell's prompt joined its last line); in a pipe, its bytes exactly.
#[test]
fn a_result_on_a_terminal_ends_its_line_and_carries_no_escape_sequence() {
    let ws = Workspace::new(
        "agents:\n  bare: { command: [\"sh\", \"-c\", \"printf 'the answer\\\\033]0;retitled\\\\007 is 42'\"] }\ndefault_chain: [bare]\n",
    );
    let _d = ws.start();
    ws.drop_task("r.json", r#"{"id": "r", "prompt": "p"}"#);
    assert!(
        matches!(ws.wait_settled("r"), dirigent::ledger::Event::Done { .. }),
        "expected `r` done"
    );
    let piped = ws.cli(&["result", "r"]);
    assert_eq!(
        piped.stdout, b"the answer\x1b]0;retitled\x07 is 42",
        "expected the bytes exactly in a pipe"
    );
    let cmd = format!("{} result r", common::BIN);
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("DIRIGENT_ROOT", ws.root())
        .env("DIRIGENT_STATE_DIR", ws.state.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        screen, "the answer is 42\r\n",
        "expected the text without its escape sequence, its line ended, on a terminal"
    );
}

/// `--merge` and `--verify` count only for a task in its own worktree: given where the task
/// works in the workspace (not a git repository here), submit says they do nothing.
#[test]
fn worktree_settings_on_a_task_in_the_workspace_are_warned_of() {
    let ws = Workspace::new(CONFIG);
    let out = ws.cli(&["submit", "p", "--merge", "auto", "--verify", "true"]);
    assert!(out.status.success(), "expected the task queued: {out:?}");
    assert!(
        stderr(&out).contains(
            "warning: `--merge` and `--verify` count only for a task that works in its own worktree of a git repository; this one works in the workspace (it is not a git repository), so they are ignored"
        ),
        "expected the settings warned of, got:\n{}",
        stderr(&out)
    );
}

/// `status` ends with the latest rejected files only, says how many more there are and where
/// they stay; a misspelt field in a rejected task is named with the one meant.
#[test]
fn status_lists_the_latest_rejected_files_and_counts_the_rest() {
    let ws = Workspace::new(CONFIG);
    let _d = ws.start();
    for i in 1..=7 {
        ws.drop_task(
            &format!("bad{i}.json"),
            r#"{"prompt": "p", "agnet": "good"}"#,
        );
        ws.wait_for(&format!("bad{i}.json to be rejected"), |recs| {
            recs.iter()
                .any(|r| matches!(&r.event, Event::Rejected { file, .. } if file == &format!("bad{i}.json")))
                .then_some(())
        });
    }
    let out = ws.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let rejected: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("rejected: "))
        .collect();
    let want: Vec<String> = (3..=7)
        .map(|i| {
            format!(
                "rejected: bad{i}.json — invalid task JSON at line 1 column 23: unknown field `agnet`; did you mean `agent`?"
            )
        })
        .chain(["rejected: 2 more in .context/rejected/ (`status --json` lists all; delete them there to clear this list)".to_string()])
        .collect();
    assert_eq!(rejected, want, "status said:\n{text}");
}

/// A daemon keeps the most recent finished tasks in full (1,000; here 2) and only the outcome
/// of older ones: `status` says they exist instead of reading as the whole history, and one of
/// them is still found by id.
#[test]
fn status_counts_the_finished_tasks_it_no_longer_lists() {
    let ws = Workspace::new(CONFIG);
    let _d = ws.start_with(&[("DIRIGENT_KEEP_FINISHED", "2")]);
    // One at a time, so the oldest are known: `old-ok` and `old-ghost` (failed) are archived.
    for (id, agent) in [
        ("old-ok", "good"),
        ("old-ghost", "ghost"),
        ("new-1", "good"),
        ("new-2", "good"),
    ] {
        let out = ws.cli(&["submit", "p", "--id", id, "--agent", agent]);
        assert!(out.status.success(), "{}", stderr(&out));
        ws.wait_settled(id);
    }
    let out = ws.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains("\n… and 2 older finished task(s) not listed: 1 done, 1 failed (`dirigent status ID` shows one; `stats` counts them all)\n"),
        "expected the count of the archived tasks, got:\n{text}"
    );
    assert!(
        !text.contains("old-ok") && text.contains("new-1") && text.contains("new-2"),
        "expected only the two most recent listed:\n{text}"
    );
    let out = ws.cli(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["archived"],
        serde_json::json!({"done": 1, "failed": 1}),
        "expected the archived counts in --json"
    );
    let out = ws.cli(&["status", "old-ghost"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("old-ghost — archived"),
        "expected an archived task found by id: {:?}",
        out
    );
}

/// A task whose file waits in the inbox (no daemon yet) is listed by `status`; `logs`,
/// `result` and `diff` say where it is instead of "no task". The inbox is listed oldest first —
/// the order the daemon takes files in — not by name.
#[test]
fn commands_about_a_task_in_the_inbox_say_it_has_not_started() {
    let ws = Workspace::new(CONFIG);
    let out = ws.cli(&["submit", "p", "--id", "w1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for cmd in ["logs", "result", "diff"] {
        let out = ws.cli(&[cmd, "w1"]);
        assert_eq!(
            stderr(&out),
            "error: task `w1` has not started: its file waits in the inbox (.context/inbox/w1.json); `dirigent status` says why\n",
            "{cmd}"
        );
    }
    // An older file with a later name is listed first.
    let old = ws.path("inbox/z-old.json");
    std::fs::write(&old, r#"{"prompt": "p"}"#).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600))
        .unwrap();
    let listed = String::from_utf8_lossy(&ws.cli(&["status"]).stdout).into_owned();
    let (z, w) = (listed.find("z-old"), listed.find("\nw1 "));
    assert!(
        matches!((z, w), (Some(z), Some(w)) if z < w),
        "expected the older file listed first:\n{listed}"
    );
}

/// A task that waits for another (`--after`) says which in `status`, as every waiting state
/// says why; one whose task before it was cancelled says that, not "failed".
#[test]
fn a_task_waiting_for_another_says_which_and_a_cancelled_one_is_named_so() {
    let ws = Workspace::new(CONFIG);
    let _d = ws.start();
    let out = ws.cli(&["submit", "p", "--id", "dep", "--agent", "gate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // `--after` names a task the daemon knows: once it has taken `dep` in.
    ws.wait_started("dep");
    let out = ws.cli(&["submit", "p", "--id", "next", "--after", "dep"]);
    assert!(out.status.success(), "{}", stderr(&out));
    ws.wait_state("next", "pending");
    let listed = String::from_utf8_lossy(&ws.cli(&["status"]).stdout).into_owned();
    let below = listed
        .lines()
        .skip_while(|l| !l.starts_with("next "))
        .nth(1)
        .unwrap_or_default()
        .trim()
        .to_string();
    assert_eq!(
        below, "↳ starts once `dep` is done",
        "expected why it waits under it:\n{listed}"
    );
    assert!(ws.cli(&["cancel", "dep"]).status.success());
    let Event::Escalated { reason, .. } = ws.wait_settled("next") else {
        panic!("expected `next` escalated")
    };
    assert!(
        reason.contains("it runs after `dep`, which was cancelled"),
        "expected the cancel named, got {reason:?}"
    );
}

/// `--wait-for` bounds the wait (`--timeout` is each attempt's): it ends with exit 124 and says
/// the task goes on; with `--json`, the object says `waiting`.
#[test]
fn a_bounded_wait_ends_when_its_time_is_up() {
    let ws = Workspace::new(CONFIG);
    // No daemon: the task cannot finish, so only the bound ends the wait.
    let out = ws.cli(&["submit", "p", "--id", "b1", "--wait-for", "300ms", "--json"]);
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("dirigent: stopped waiting after 300ms (`--wait-for`); `b1` goes on"),
        "expected the wait's end said, got {}",
        stderr(&out)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&v["id"], &v["state"]),
        (&serde_json::json!("b1"), &serde_json::json!("waiting")),
        "expected the object of a wait that ended: {v}"
    );
}

/// A client whose stderr is read line by line while it runs.
struct Spawned {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Spawned {
    fn start(ws: &Workspace, args: &[&str]) -> Spawned {
        let mut child = Command::new(BIN)
            .args(args)
            .env("DIRIGENT_ROOT", ws.root())
            .env("DIRIGENT_STATE_DIR", ws.state.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Spawned { child, lines }
    }

    /// Waits for a stderr line containing `words`.
    fn line_with(&mut self, words: &str) -> String {
        let mut seen = Vec::new();
        let until = Instant::now() + common::PATIENCE;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(words) => return line,
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        let _ = self.child.kill();
        panic!("expected a line with {words:?}, got {seen:?}");
    }

    /// Its exit status and stdout, once it ends (within the tests' patience).
    fn end(self) -> (Option<i32>, String) {
        let (tx, rx) = std::sync::mpsc::channel();
        let child = self.child;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let Ok(out) = rx.recv_timeout(common::PATIENCE) else {
            // A failing test leaves no client behind.
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            panic!("expected the client to end within {:?}", common::PATIENCE);
        };
        let out = out.unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

/// The way to cancel a task without a daemon — removing its file from the inbox — ends a
/// client waiting for it (`submit --wait`, `logs -f`) instead of leaving it waiting for good.
#[test]
fn a_waiting_client_ends_when_the_task_file_is_removed_from_the_inbox() {
    let ws = Workspace::new(CONFIG);
    let mut waiting = Spawned::start(&ws, &["submit", "p", "--id", "q3", "--wait", "--json"]);
    waiting.line_with("no daemon is running");
    let mut following = Spawned::start(&ws, &["logs", "q3", "-f"]);
    following.line_with("has not started yet");
    std::fs::remove_file(ws.path("inbox/q3.json")).unwrap();
    let (code, stdout) = waiting.end();
    assert_eq!(code, Some(1), "a task that will not run is not done");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (&v["id"], &v["state"], &v["reason"]),
        (
            &"q3".into(),
            &"cancelled".into(),
            &"its file was removed from .context/inbox/ before the daemon took it in: nothing runs"
                .into()
        ),
        "{v}"
    );
    let (code, _) = following.end();
    assert_eq!(code, Some(1), "`logs -f` ends too");
}

/// Interrupted, a wait leaves how the task stands now: where its file is and its state (here
/// taken in and running).
#[test]
fn an_interrupted_wait_says_where_the_task_stands_now() {
    let ws = Workspace::new(CONFIG);
    let _d = ws.start();
    let mut waiting = Spawned::start(
        &ws,
        &[
            "submit", "p", "--id", "g2", "--agent", "gate", "--wait", "--json",
        ],
    );
    waiting.line_with("attempt 1: gate started");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(waiting.child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let (code, stdout) = waiting.end();
    assert_eq!(code, Some(130), "128 + SIGINT");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "id": "g2",
            "file": ws.path("running/g2.json").display().to_string(),
            "state": "waiting",
            "task_state": "running",
        }),
        "expected the file where it is now and the task's state"
    );
}

/// `logs -f` of an attempt cut off (a cancel) says so and exits 1: a script does not take the
/// output for all there was.
#[test]
fn following_an_attempt_that_is_cancelled_says_it_was_cut_off() {
    let ws = Workspace::new(CONFIG);
    let _d = ws.start();
    ws.drop_task("c9.json", r#"{"prompt": "p", "agent": "gate"}"#);
    ws.wait_started("c9");
    let mut following = Spawned::start(&ws, &["logs", "c9", "-f"]);
    ws.wait_until("the attempt's output to be there", || {
        std::fs::read_to_string(ws.path("runs/c9/1-gate.stdout"))
            .ok()
            .filter(|s| s.contains("waiting for"))
    });
    assert!(ws.cli(&["cancel", "c9"]).status.success());
    following.line_with("dirigent: attempt 1 of `c9` (gate) was cancelled");
    let (code, stdout) = following.end();
    assert_eq!(code, Some(1), "cut off, not whole");
    assert_eq!(stdout, "waiting for release\n", "the output it had");
}

/// `logs -f --all` says when the daemon comes and goes: the quiet after a stop is not taken
/// for agents thinking.
#[test]
fn following_every_attempt_says_when_the_daemon_comes_and_goes() {
    let ws = Workspace::new(CONFIG);
    let mut following = Spawned::start(&ws, &["logs", "-f", "--all"]);
    following.line_with("nothing is running; waiting for attempts to start");
    let mut d = ws.start();
    following.line_with("dirigent: a daemon is running again");
    d.stop();
    following.line_with(
        "dirigent: the daemon stopped; nothing starts until it runs again (`dirigent daemon`)",
    );
    let _ = following.child.kill();
}

/// The config file deleted while the daemon runs: the daemon keeps what it read, so `submit`
/// does not refuse an agent only the file named (it warns, and the daemon runs the task), and
/// `agents` says the file is missing and that the daemon keeps its configuration.
#[test]
fn a_deleted_config_file_leaves_the_running_daemons_agents_usable() {
    let ws = Workspace::new(CONFIG);
    let _d = ws.start();
    // Once the daemon has read the file (its first record is written after that).
    ws.wait_for("the daemon to start", |recs| {
        recs.iter()
            .any(|r| matches!(&r.event, Event::DaemonStarted { .. }))
            .then_some(())
    });
    std::fs::remove_file(ws.path("dirigent.yaml")).unwrap();
    ws.wait_for("the deletion to be recorded", |recs| {
        recs.iter()
            .any(|r| matches!(&r.event, Event::ConfigRejected { .. }))
            .then_some(())
    });
    let out = ws.cli(&["submit", "--agent", "good", "--id", "kept", "x", "--wait"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "expected the daemon to run it with the agent it knows: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("is missing, so this was checked against the embedded default; the running daemon keeps the configuration it read before and checks this task itself"),
        "expected the warning, got {}",
        stderr(&out)
    );
    let agents = String::from_utf8_lossy(&ws.cli(&["agents"]).stdout).into_owned();
    assert!(
        agents.contains("is missing: the running daemon keeps the configuration it read before"),
        "expected the note in `agents`, got {agents}"
    );
}
