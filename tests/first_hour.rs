//! What a newcomer meets in the first hour, run as they would: the binary on a fresh
//! directory, exact messages. Every case here was a silent dead end once.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{BIN, Workspace};
use dirigent::ledger::Event;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs the binary on `dir` (no `.context/` needed), with a private state directory.
fn run_in(dir: &std::path::Path, state: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("DIRIGENT_ROOT", dir)
        .env("DIRIGENT_STATE_DIR", state)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

const CONFIG: &str = r#"
kill_grace: 200ms
agents:
  good: { command: ["{agents}/ok.sh"], prompt: stdin }
  slow: { command: ["{agents}/slow.sh", "30"], timeout: 1m }
default_chain: [good]
"#;

#[test]
fn submit_in_a_fresh_directory_says_what_it_did_and_status_shows_the_waiting_task() {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let out = run_in(dir.path(), state.path(), &["submit", "hello", "--id", "hi"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hi\n", "stdout is the id alone, for scripts");
    let ctx = dir.path().join(".context");
    assert_eq!(
        stderr(&out),
        format!(
            "dirigent: created `{}`: `{}` is a dirigent workspace now (`dirigent init` also writes a config to edit)\n\
dirigent: no daemon is running on this workspace: `hi` waits in .context/inbox/ and runs when one starts (`dirigent daemon`)\n",
            ctx.display(),
            dir.path().display()
        ),
        "a first submit says that it created the workspace and that nothing runs it yet"
    );
    // `status` lists the task that waits in the inbox, and finds it by id.
    let out = run_in(dir.path(), state.path(), &["status"]);
    assert!(
        stdout(&out).contains(
            "hi                           inbox     -            0        -  .context/inbox/hi.json\n                             ↳ waiting in the inbox; it runs when a daemon starts (`dirigent daemon`)\n"
        ),
        "status lists inbox tasks: {}",
        stdout(&out)
    );
    let out = run_in(dir.path(), state.path(), &["status", "hi"]);
    assert_eq!(
        stdout(&out),
        "hi — .context/inbox/hi.json\nstate:    inbox: waiting in the inbox; it runs when a daemon starts (`dirigent daemon`)\ndaemon: not running (showing the state recorded in the ledger)\n",
        "status ID finds a task in the inbox"
    );
    let out = run_in(dir.path(), state.path(), &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["inbox"],
        serde_json::json!([{"id": "hi", "state": "inbox", "file": "hi.json", "task_file": true}]),
        "status --json lists the inbox"
    );
    assert_eq!(
        v["daemon_pid"],
        serde_json::Value::Null,
        "no daemon: no pid"
    );
    // A file that cannot be read as a task says so now, not once a daemon rejects it.
    std::fs::write(ctx.join("inbox/broken.json"), "{bad").unwrap();
    let out = run_in(dir.path(), state.path(), &["status", "broken"]);
    assert!(
        stdout(&out).starts_with(
            "broken — .context/inbox/broken.json\nstate:    inbox: will be rejected: cannot be read as a task: "
        ),
        "expected the broken file called what it is: {}",
        stdout(&out)
    );
    // So does one the daemon would refuse: an agent not configured, an `after` never seen.
    std::fs::write(
        ctx.join("inbox/ghostly.json"),
        r#"{"prompt": "p", "agent": "ghostly"}"#,
    )
    .unwrap();
    std::fs::write(
        ctx.join("inbox/later.json"),
        r#"{"prompt": "p", "after": ["nobody"]}"#,
    )
    .unwrap();
    std::fs::write(
        ctx.join("inbox/itself.json"),
        r#"{"prompt": "p", "id": "itself", "after": ["itself"]}"#,
    )
    .unwrap();
    std::fs::write(
        ctx.join("inbox/spawned.json"),
        r#"{"prompt": "p", "parent": "ghost"}"#,
    )
    .unwrap();
    for (id, expected) in [
        (
            "ghostly",
            "state:    inbox: will be rejected: unknown agent `ghostly`",
        ),
        (
            "later",
            "state:    inbox: will be rejected: `after` names `nobody`, which is no task of this workspace",
        ),
        (
            "itself",
            "state:    inbox: will be rejected: `after` goes round in a circle (itself → itself)",
        ),
        (
            "spawned",
            "state:    inbox: will be rejected: `parent` names `ghost`, which is no task of this workspace",
        ),
    ] {
        let out = run_in(dir.path(), state.path(), &["status", id]);
        assert!(
            stdout(&out).contains(expected),
            "expected `{expected}` for {id}, got:\n{}",
            stdout(&out)
        );
    }
    // Scripts read the same in `status --json`.
    let out = run_in(dir.path(), state.path(), &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ghostly = v["inbox"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "ghostly")
        .expect("ghostly listed in the inbox")
        .clone();
    assert!(
        ghostly["rejected_because"]
            .as_str()
            .is_some_and(|r| r.starts_with("unknown agent `ghostly`")),
        "expected the reason in `status --json`, got {ghostly}"
    );
}

#[test]
fn a_root_that_does_not_exist_is_an_error_not_a_new_workspace() {
    let out = Command::new(BIN)
        .args(["--root", "/nonexistent/dirigent-ws", "submit", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "error: the workspace `/nonexistent/dirigent-ws` (from `--root` or DIRIGENT_ROOT) does not exist; check the path, or make it a workspace with `dirigent --root /nonexistent/dirigent-ws init`\n"
    );
    assert!(!std::path::Path::new("/nonexistent/dirigent-ws").exists());
}

#[test]
fn the_readme_first_command_makes_its_scratch_workspace() {
    // `dirigent --root /tmp/dirigent-demo daemon` on a fresh machine: the directory is created.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("dirigent-demo");
    let state = tempfile::tempdir().unwrap();
    let mut daemon = Command::new(BIN)
        .args(["--root", root.to_str().unwrap(), "daemon"])
        .env("DIRIGENT_STATE_DIR", state.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It is up once it says so on stderr.
    let mut err = BufReader::new(daemon.stderr.take().unwrap());
    let mut line = String::new();
    while err.read_line(&mut line).unwrap() > 0 && !line.contains("dirigent is running") {}
    assert!(
        line.contains("dirigent is running"),
        "the daemon started: {line}"
    );
    assert!(
        root.join(".context/inbox").is_dir(),
        "the workspace was made"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(
        daemon.wait().unwrap().success(),
        "a SIGTERM stops it cleanly"
    );
}

#[test]
fn a_task_after_an_unknown_task_is_refused_at_every_door() {
    let ws = Workspace::new(CONFIG);
    let out = ws.cli(&["submit", "x", "--after", "ghost"]);
    assert_eq!(
        stderr(&out),
        "error: `after` names `ghost`, which is no task of this workspace (`dirigent status` lists them); submit the tasks it depends on first\n"
    );
    assert!(common::list(&ws, "inbox").is_empty(), "nothing was written");
    // A task waiting in the inbox counts: it exists.
    let out = ws.cli(&["submit", "first", "--id", "first"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ws.cli(&["submit", "second", "--id", "second", "--after", "first"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // A file dropped with an unknown `after` is rejected with the reason.
    let _d = ws.start();
    ws.drop_task("late.json", r#"{"prompt": "p", "after": ["nobody"]}"#);
    let reason = ws.wait_until("late.json to be rejected", || {
        std::fs::read_to_string(ws.path("rejected/late.json.error.txt")).ok()
    });
    assert!(
        reason.contains("`after` names `nobody`, which is no task of this workspace"),
        "{reason}"
    );
    assert!(
        matches!(ws.wait_settled("second"), Event::Done { .. }),
        "a task after a known one runs"
    );
    // `--wait` says what it waits for first.
    let out = ws.cli(&[
        "submit", "third", "--id", "third", "--after", "first", "--after", "second", "--wait",
    ]);
    assert!(out.status.success(), "expected third done: {out:?}");
    assert!(
        stderr(&out).contains("dirigent: `third` starts once `first` and `second` are done\n"),
        "expected the wait for its dependencies said, got:\n{}",
        stderr(&out)
    );
}

#[test]
fn a_file_in_the_inbox_that_is_not_a_task_is_rejected_with_a_reason() {
    let ws = Workspace::new(CONFIG);
    std::fs::write(ws.path("inbox/notes.txt"), "remember the milk").unwrap();
    std::fs::write(ws.path("inbox/plan.yaml"), "name: plan\n").unwrap();
    let out = ws.cli(&["status"]);
    assert!(
        stdout(&out).contains(
            "notes                        inbox     -            0        -  .context/inbox/notes.txt\n                             ↳ not a task file (only .json and .md are): the daemon moves it to rejected/\n"
        ),
        "status says what will happen to it: {}",
        stdout(&out)
    );
    let _d = ws.start();
    for (file, why) in [
        (
            "notes.txt",
            "not a task file: task files end in `.json` (an object like {\"prompt\": \"…\"}) or `.md` (the prompt as Markdown)",
        ),
        (
            "plan.yaml",
            "a workflow definition belongs in `.context/workflows/`",
        ),
    ] {
        let text = ws.wait_until(&format!("{file} to be rejected"), || {
            std::fs::read_to_string(ws.path(&format!("rejected/{file}.error.txt"))).ok()
        });
        assert!(text.contains(why), "{file}: {text}");
        assert!(
            ws.path(&format!("rejected/{file}")).exists(),
            "{file} moved"
        );
    }
    assert!(common::list(&ws, "inbox").is_empty(), "nothing left behind");
}

#[test]
fn a_task_timeout_is_the_one_named_when_it_kills() {
    let ws = Workspace::new(CONFIG);
    let _d = ws.start();
    let out = ws.cli(&[
        "submit",
        "wait",
        "--agent",
        "slow",
        "--timeout",
        "1s",
        "--id",
        "t",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let Event::Escalated { .. } = ws.wait_settled("t") else {
        panic!("the task should time out")
    };
    let reason = ws
        .records()
        .iter()
        .find_map(|r| match &r.event {
            Event::AttemptFinished { task, reason, .. } if task == "t" => Some(reason.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        reason, "killed after the 1.0s timeout",
        "the task's --timeout, not the agent's 1m"
    );
}

#[test]
fn logs_follow_waits_for_a_task_that_has_not_started() {
    let ws = Workspace::new(CONFIG);
    let out = ws.cli(&["submit", "later please", "--id", "w"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut follower = Command::new(BIN)
        .args(["logs", "-f", "w"])
        .env("DIRIGENT_ROOT", ws.root())
        .env("DIRIGENT_STATE_DIR", ws.state.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It says it waits (instead of exiting 2) …
    let mut err = BufReader::new(follower.stderr.take().unwrap());
    let mut first = String::new();
    err.read_line(&mut first).unwrap();
    assert_eq!(
        first,
        "dirigent: `w` has not started yet; waiting for its first attempt (no daemon is running: start one with `dirigent daemon`)\n"
    );
    // … and follows the attempt once a daemon runs it.
    let _d = ws.start();
    let out = follower.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "logs -f ends with the attempt");
    assert_eq!(stdout(&out), "ok from good: later please\n");
}

#[test]
fn a_command_written_as_a_string_gets_the_argv_form_to_paste() {
    let ws = Workspace::new("agents:\n  x: { command: \"/bin/echo hi\" }\n");
    let out = ws.cli(&["agents"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        format!(
            "error: `{}`: line 2 column 17: `agents.x.command`: expected a list: `[a, b]`, or one `- item` per line; `command` is an argv list, never run through a shell: write `command: [\"/bin/echo\", \"hi\"]`\n",
            ws.path("dirigent.yaml").display()
        ),
        "one `error:`, the position, and the fix"
    );
    // Quoted words stay together, as the shell would have kept them.
    ws.write_config("agents:\n  x: { command: \"sh -c 'printf %s hi; cat'\" }\n");
    let out = ws.cli(&["agents"]);
    assert!(
        stderr(&out).ends_with("write `command: [\"sh\", \"-c\", \"printf %s hi; cat\"]`\n"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn init_in_a_git_repository_keeps_the_workspace_state_out_of_git() {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let git = Command::new("git")
        .args(["init", "-q"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(git.success(), "git init");
    let out = run_in(dir.path(), state.path(), &["init"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let exclude = dir.path().join(".git/info/exclude");
    assert!(
        stdout(&out).contains(&format!("added `/.context/` to {}", exclude.display())),
        "{}",
        stdout(&out)
    );
    let status = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=all"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(
        stdout(&status),
        "",
        "git sees nothing of .context/ after init"
    );
    // Once is enough.
    let out = run_in(dir.path(), state.path(), &["init"]);
    assert!(!stdout(&out).contains("added"), "{}", stdout(&out));
    let text = std::fs::read_to_string(&exclude).unwrap();
    assert_eq!(text.matches("/.context/").count(), 1, "{text}");
}

/// A config made invalid while the daemon runs: the daemon keeps its previous one, so `submit`
/// still works — the daemon checks the task — and says the file must be fixed; `status` says
/// what the broken file means, not only that budgets are missing.
#[test]
fn a_config_broken_while_the_daemon_runs_does_not_block_submit() {
    let ws = Workspace::new(CONFIG);
    let _d = ws.start();
    let out = ws.cli(&["submit", "first", "--id", "first", "--wait"]);
    assert!(out.status.success(), "expected `first` done: {out:?}");
    ws.write_config(&format!("{CONFIG}concurrency: lots\n"));
    let out = ws.cli(&["submit", "during", "--id", "during", "--wait"]);
    assert!(
        out.status.success(),
        "expected the task run by the daemon's running config: {out:?}"
    );
    assert!(
        stderr(&out).contains(
            "warning: the daemon still runs its previous configuration, which checks this task; fix the file"
        ),
        "expected the broken file and what it means said, got:\n{}",
        stderr(&out)
    );
    let out = ws.cli(&["status"]);
    assert!(
        stderr(&out).contains("the daemon still runs its previous configuration, but a daemon started now would refuse this file: fix it"),
        "expected status to say what the broken file means, got:\n{}",
        stderr(&out)
    );
}

/// Commands that read a workspace, run where there is none, say so and how to name one —
/// never "no tasks yet" or "no daemon is running" about the wrong directory.
#[test]
fn reading_commands_outside_a_workspace_say_there_is_none() {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    for args in [
        &["status"][..],
        &["retry", "x"],
        &["cancel", "x"],
        &["logs", "x"],
    ] {
        let out = Command::new(BIN)
            .args(args)
            .current_dir(dir.path())
            .env_remove("DIRIGENT_ROOT")
            .env("DIRIGENT_STATE_DIR", state.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert_eq!(
            stderr(&out),
            format!(
                "error: no dirigent workspace here: neither `{}` nor a directory above it has a `.context/`; run this in your project's directory, or name it with `--root DIR`\n",
                dir.path().canonicalize().unwrap().display()
            ),
            "{args:?}"
        );
    }
    let out = run_in(dir.path(), state.path(), &["status"]);
    assert_eq!(
        stderr(&out),
        format!(
            "error: `{}` (from `--root` or DIRIGENT_ROOT) is not a dirigent workspace: it has no `.context/`; make it one with `dirigent --root {} init`\n",
            dir.path().display(),
            dir.path().display()
        ),
        "status with a root that is no workspace"
    );
}

/// `cancel` of a task still waiting in the inbox, with no daemon, says how to cancel it anyway.
#[test]
fn cancel_without_a_daemon_names_the_waiting_file() {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let out = run_in(dir.path(), state.path(), &["submit", "hello", "--id", "hi"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = run_in(dir.path(), state.path(), &["cancel", "hi"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.starts_with("error: no daemon is running on ")
            && err.ends_with("; start it with `dirigent daemon`; or, to cancel it before it runs, delete its file `.context/inbox/hi.json`\n"),
        "expected the way to cancel a waiting task without a daemon, got: {err}"
    );
}
