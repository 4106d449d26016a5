//! What a daemon left running for months does not keep for ever: the run directories (prompts,
//! captured output, logs) of tasks finished longer ago than `keep_runs`.

mod common;

use std::path::Path;

use common::Workspace;

const CONFIG: &str = r#"
keep_runs: 1h
inbox_rescan: 100ms
concurrency: 1
agents:
  good: { command: ["{agents}/ok.sh"] }
  gate: { command: ["{agents}/gate.sh", "release"] }
default_chain: [good]
"#;

/// Sets a directory's modification time `hours` back.
fn age(dir: &Path, hours: u32) {
    let out = std::process::Command::new("touch")
        .args(["-d", &format!("{hours} hours ago")])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "touch {}: {out:?}", dir.display());
}

/// Only finished tasks old enough lose their run directory; their saved patches stay, a link an
/// agent planted there is removed without being followed, and a task that has not finished
/// keeps its directory however old it is.
#[test]
fn old_output_of_finished_tasks_goes_and_everything_else_stays() {
    let ws = Workspace::new(CONFIG);
    // Only the most recent finished task is held in full: the others count as finished long
    // ago, judged by their directory's age alone.
    let env = [("DIRIGENT_KEEP_FINISHED", "1")];
    let mut d = ws.start_with(&env);
    for id in ["old-1", "old-2", "recent"] {
        let out = ws.cli(&["submit", "p", "--id", id]);
        assert!(out.status.success(), "{out:?}");
        ws.wait_settled(id);
    }
    // A task that has not finished: it waits behind the gate.
    let out = ws.cli(&["submit", "p", "--id", "running", "--agent", "gate"]);
    assert!(out.status.success(), "{out:?}");
    ws.wait_started("running");
    d.stop();

    // What an agent or an earlier failure left: a saved patch, a link out of the workspace, a
    // directory of its own.
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("precious"), "mine").unwrap();
    let old1 = ws.path("runs/old-1");
    std::fs::write(old1.join("1-good.patch"), "diff --git a/x b/x\n").unwrap();
    std::os::unix::fs::symlink(outside.path(), old1.join("link")).unwrap();
    std::fs::create_dir_all(old1.join("made/deeper")).unwrap();
    std::fs::write(old1.join("made/deeper/file"), "x").unwrap();
    for id in ["old-1", "old-2", "recent", "running"] {
        age(&ws.path(&format!("runs/{id}")), 2);
    }
    let _d = ws.start_with(&env);
    ws.wait_until("the old run directories to go", || {
        let gone = |id: &str| {
            std::fs::read_dir(ws.path(&format!("runs/{id}")))
                .map(|d| d.count() <= 1)
                .unwrap_or(true)
        };
        (gone("old-1") && gone("old-2")).then_some(())
    });
    let names = |id: &str| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(ws.path(&format!("runs/{id}")))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    assert_eq!(
        names("old-1"),
        ["1-good.patch"],
        "expected only the saved patch kept"
    );
    assert!(names("old-2").is_empty(), "{:?}", names("old-2"));
    assert!(
        names("recent").contains(&"1-good.stdout".to_string()),
        "the task finished last is held in full and finished just now: kept, {:?}",
        names("recent")
    );
    assert!(
        names("running").iter().any(|n| n.ends_with("-gate.stdout")),
        "a task that has not finished keeps its output: {:?}",
        names("running")
    );
    assert_eq!(
        std::fs::read_to_string(outside.path().join("precious")).unwrap(),
        "mine",
        "the link was removed, not followed"
    );
    ws.wait_until("the pass to be logged", || {
        let log = std::fs::read_to_string(ws.root().join("daemon.log")).unwrap_or_default();
        log.contains("removed the run directories (prompts, captured output, logs) of 2 task(s) finished longer ago than `keep_runs`; results and saved patches stay")
            .then_some(())
    });
    assert!(
        names(".pruning").is_empty(),
        "the trash is emptied: {:?}",
        names(".pruning")
    );
    // Asked for, the output that went is said to be gone; the result stays.
    let out = ws.cli(&["logs", "old-2"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "dirigent: the output of attempt 1 of `old-2` (good) is no longer kept: the run directories of tasks finished longer ago than `keep_runs` are removed\n",
        "{out:?}"
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    // The results stay.
    assert!(
        ws.path("outbox/old-1.md").exists(),
        "expected the result of `old-1` kept"
    );
}

#[test]
fn keep_runs_takes_a_duration_of_an_hour_or_more_or_forever() {
    for (value, error) in [
        ("forever", None),
        ("90d", None),
        (
            "30m",
            Some("`keep_runs` must be at least 1h (or `forever`)"),
        ),
        ("soon", Some("`keep_runs`: invalid duration `soon`")),
    ] {
        let ws = Workspace::new(&format!("keep_runs: {value}\n"));
        let out = ws.cli(&["agents"]);
        let err = String::from_utf8_lossy(&out.stderr);
        match error {
            None => assert!(out.status.success(), "`{value}`: {err}"),
            Some(e) => assert!(err.contains(e), "`{value}`: expected `{e}` in {err}"),
        }
    }
}
