//! Safe parallel editing, end to end with a real git and real processes: each editing task in
//! its own worktree, checked (changes, `verify` with its feedback round), committed and merged
//! through the queue; the user's checkout never damaged; a crash in the merge step recovered
//! without a second commit. The agent is `tests/agents/editor.sh`, whose prompt is a short
//! list of edits.

mod common;

use std::path::Path;

use common::{Workspace, git};
use dirigent::ledger::Event;

/// A repository on `main` whose `a.txt` has four slots far enough apart to edit without
/// conflict, made a dirigent workspace with `config`.
fn repo_workspace(config: &str) -> Workspace {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "--quiet", "--initial-branch=main"]);
    std::fs::write(
        dir.path().join("a.txt"),
        "slot1\n-\n-\n-\nslot2\n-\n-\n-\nslot3\n-\n-\n-\nslot4\n",
    )
    .unwrap();
    std::fs::write(dir.path().join(".gitignore"), ".env\nnode_modules\n").unwrap();
    git(dir.path(), &["add", "."]);
    git(dir.path(), &["commit", "--quiet", "-m", "first"]);
    Workspace::in_dir(dir, config)
}

const AGENT: &str = r#"
kill_grace: 200ms
inbox_rescan: 200ms
agents:
  ed: { command: ["{agents}/editor.sh"], prompt: stdin }
  ed2: { command: ["{agents}/editor.sh"], prompt: stdin }
"#;

/// `git status --porcelain` of the user's checkout, without the harness's own `daemon.log`.
fn status_of(ws: &Workspace) -> String {
    git(ws.root(), &["status", "--porcelain"])
        .lines()
        .filter(|l| !l.ends_with("daemon.log"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Every attempt's end, with its reason: what an assertion message shows when it fails.
fn attempt_reasons(ws: &Workspace) -> String {
    ws.records()
        .iter()
        .filter_map(|r| match &r.event {
            Event::AttemptFinished {
                task,
                class,
                reason,
                ..
            } => Some(format!("{task}: {class}: {reason}\n")),
            _ => None,
        })
        .collect()
}

fn main_file(ws: &Workspace) -> String {
    std::fs::read_to_string(ws.root().join("a.txt")).unwrap()
}

/// Commits on `main` carrying `Dirigent-Task: id`.
fn commits_of(ws: &Workspace, id: &str) -> usize {
    git(ws.root(), &["log", "main", "--format=%B%x00"])
        .split('\0')
        .filter(|m| m.contains(&format!("Dirigent-Task: {id}\n")))
        .count()
}

#[test]
fn four_agents_edit_one_file_in_parallel_and_only_the_conflict_is_held_back() {
    let ws = repo_workspace(&format!(
        "{AGENT}default_chain: [ed]\nmerge: auto\nconcurrency: 4\n"
    ));
    let mut daemon = ws.start();
    // Three edit their own slot; the fourth rewrites slot 1 as well: it cannot land cleanly
    // after t1 (or t1 after it) — exactly one of the two conflicts.
    ws.drop_task("t1.md", "replace a.txt slot1 slot1-by-t1\n");
    ws.drop_task("t2.md", "replace a.txt slot2 slot2-by-t2\n");
    ws.drop_task("t3.md", "replace a.txt slot3 slot3-by-t3\n");
    ws.drop_task("t4.md", "replace a.txt slot1 slot1-by-t4\n");
    let ends: Vec<(String, Event)> = ["t1", "t2", "t3", "t4"]
        .iter()
        .map(|id| (id.to_string(), ws.wait_settled(id)))
        .collect();
    let escalated: Vec<&String> = ends
        .iter()
        .filter(|(_, e)| matches!(e, Event::Escalated { .. }))
        .map(|(id, _)| id)
        .collect();
    assert_eq!(
        escalated.len(),
        1,
        "expected exactly one of t1/t4 held back by the conflict, got {ends:?}\nattempts:\n{}",
        attempt_reasons(&ws)
    );
    let loser = escalated[0].clone();
    assert!(
        loser == "t1" || loser == "t4",
        "expected t1 or t4 to conflict, got {loser}"
    );
    let Event::Escalated { reason, .. } = &ends.iter().find(|(id, _)| *id == loser).unwrap().1
    else {
        unreachable!()
    };
    assert!(
        reason.contains("conflict") && reason.contains("a.txt") && reason.contains("<<<<<<<"),
        "expected the conflict's file and hunk in the reason, got: {reason}"
    );
    let winner = if loser == "t1" { "t4" } else { "t1" };
    let text = main_file(&ws);
    for want in [
        format!("slot1-by-{winner}"),
        "slot2-by-t2".into(),
        "slot3-by-t3".into(),
    ] {
        assert!(
            text.contains(&want),
            "expected `{want}` on main, got:\n{text}"
        );
    }
    for id in ["t2", "t3", winner] {
        assert_eq!(
            commits_of(&ws, id),
            1,
            "expected one commit of {id} on main"
        );
    }
    // Nothing lost: the conflicting work stays on its branch, its worktree kept for a look.
    let branch = git(
        ws.root(),
        &["branch", "--list", &format!("dirigent/{loser}")],
    );
    assert!(
        branch.contains(&format!("dirigent/{loser}")),
        "expected the conflicting branch kept, branches: {}",
        git(ws.root(), &["branch", "--list"])
    );
    let kept = ws.wait_state(&loser, "failed");
    let kept = Path::new(kept["worktree"]["tree"]["path"].as_str().unwrap()).to_path_buf();
    assert!(
        kept.join("a.txt").exists(),
        "expected the failed task's worktree kept at {}",
        kept.display()
    );
    for id in ["t2", "t3", winner] {
        // A wait that fails the test (with the ledger) if the tree is not given up.
        ws.wait_until(
            &format!("the merged worktree of {id} to be given up"),
            || {
                ws.records()
                    .iter()
                    .any(|r| matches!(&r.event, Event::WorktreeRemoved { task, .. } if task == id))
                    .then_some(())
            },
        );
    }
    assert_eq!(
        status_of(&ws),
        "",
        "expected the user's checkout clean (worktrees invisible to git)"
    );
    daemon.stop();
}

#[test]
fn a_failed_attempts_half_edit_is_saved_as_a_patch_and_not_seen_by_the_next_agent() {
    let ws = repo_workspace(&format!("{AGENT}merge: auto\ndefault_chain: [ed, ed2]\n"));
    let mut daemon = ws.start();
    ws.drop_task(
        "half.md",
        "as ed append a.txt half-done\nas ed fail\nas ed2 refuse-if a.txt half-done\nas ed2 append a.txt finished\n",
    );
    let end = ws.wait_settled("half");
    assert!(
        matches!(end, Event::Done { .. }),
        "expected done, got {end:?}"
    );
    assert_eq!(
        ws.attempts("half"),
        vec![
            ("ed".to_string(), "exit".to_string()),
            ("ed2".into(), "ok".into())
        ],
        "expected ed to fail and ed2 to finish without seeing ed's edit"
    );
    let patch = std::fs::read_to_string(ws.path("runs/half/1-ed.patch")).unwrap();
    assert!(
        patch.contains("+half-done"),
        "expected ed's half-edit in its patch, got:\n{patch}"
    );
    let text = main_file(&ws);
    assert!(
        text.contains("finished") && !text.contains("half-done"),
        "expected only ed2's work on main, got:\n{text}"
    );
    daemon.stop();
}

#[test]
fn a_failing_verify_gets_a_feedback_round_that_fixes_it_and_lands() {
    let config = format!(
        "{AGENT}default_chain: [ed]\nmerge: auto\nverify: [sh, -c, \"if grep -q broken a.txt; then echo 'test_slot failed: a.txt is broken'; exit 1; fi\"]\n"
    );
    let ws = repo_workspace(&config);
    let mut daemon = ws.start();
    ws.drop_task(
        "fix.md",
        "firsttry append a.txt broken\nonretry replace a.txt broken repaired\n",
    );
    let end = ws.wait_settled("fix");
    assert!(
        matches!(end, Event::Done { .. }),
        "expected done, got {end:?}"
    );
    assert_eq!(
        ws.attempts("fix"),
        vec![
            ("ed".to_string(), "verify".to_string()),
            ("ed".into(), "ok".into())
        ],
        "expected a verify failure, then the same agent's feedback round"
    );
    let prompt = std::fs::read_to_string(ws.path("runs/fix/2-ed.prompt")).unwrap();
    assert!(
        prompt.contains("## The check failed")
            && prompt.contains("test_slot failed: a.txt is broken"),
        "expected the verifier's output as feedback in the second prompt, got:\n{prompt}"
    );
    // In the documented format (docs/worktrees.md), and in words for the agent.
    assert!(
        prompt.ends_with(
            "\n\nIts output ends:\n\n```\ntest_slot failed: a.txt is broken\n```\n\nFix what it reports; the check runs again when you finish.\n"
        ) && !prompt.contains("tries again"),
        "expected the documented feedback section, got:\n{prompt}"
    );
    let text = main_file(&ws);
    assert!(
        text.contains("repaired") && !text.contains("broken"),
        "expected the repaired work on main, got:\n{text}"
    );
    assert_eq!(
        commits_of(&ws, "fix"),
        1,
        "expected only the verified work committed (the failed round left no commit)"
    );
    daemon.stop();
}

#[test]
fn an_agent_that_changes_nothing_ends_no_change() {
    let ws = repo_workspace(&format!("{AGENT}default_chain: [ed]\n"));
    let mut daemon = ws.start();
    ws.drop_task("idle.md", "say something\n");
    let end = ws.wait_settled("idle");
    assert!(
        matches!(&end, Event::Escalated { .. }),
        "expected escalation, got {end:?}"
    );
    assert_eq!(
        ws.attempts("idle"),
        vec![("ed".to_string(), "no_change".to_string())],
        "expected class no_change"
    );
    daemon.stop();
}

#[test]
fn a_dirty_checkout_is_never_touched_and_manual_merge_waits_for_dirigent_merge() {
    let ws = repo_workspace(&format!("{AGENT}default_chain: [ed]\n")); // merge: manual is the default
    let mut daemon = ws.start();
    ws.drop_task("m1.md", "replace a.txt slot2 slot2-by-m1\n");
    let waiting = ws.wait_state("m1", "merge_waiting");
    assert!(
        waiting["reason"]
            .as_str()
            .is_some_and(|r| r.contains("dirigent merge m1")),
        "expected the waiting reason to say what to do, got {waiting}"
    );
    let diff = ws.cli(&["diff", "m1"]);
    let diff_text = String::from_utf8_lossy(&diff.stdout);
    assert!(
        diff.status.success() && diff_text.contains("+slot2-by-m1"),
        "expected `dirigent diff` to show the change, got {diff:?}"
    );
    let v: serde_json::Value =
        serde_json::from_slice(&ws.cli(&["diff", "m1", "--json"]).stdout).unwrap();
    assert!(
        v["id"] == "m1"
            && v["branch"] == "dirigent/m1"
            && v["base"].as_str().is_some_and(|b| b.len() == 40)
            && v["diff"].as_str() == Some(&*diff_text),
        "expected the same diff in an object, got {v}"
    );
    // The user edits their own checkout meanwhile.
    std::fs::write(
        ws.root().join("a.txt"),
        format!("{}my own edit\n", main_file(&ws)),
    )
    .unwrap();
    // `merge` waits for the outcome: not merged, and why (exit 1).
    let out = ws.cli(&["merge", "m1"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "expected not merged: {out:?}");
    assert!(
        said.contains("error: `m1` is not merged: ") && said.contains("uncommitted changes"),
        "expected why it is not merged, got {said:?}"
    );
    let waiting = ws.wait_until("the merge to wait for the dirty checkout", || {
        let v = ws.wait_state("m1", "merge_waiting");
        let reason = v["reason"].as_str()?.to_string();
        reason.contains("uncommitted changes").then_some(reason)
    });
    assert!(
        waiting.contains("commit or stash"),
        "expected the reason to say what to do, got {waiting}"
    );
    assert!(
        main_file(&ws).ends_with("my own edit\n") && !main_file(&ws).contains("slot2-by-m1"),
        "expected the user's edit untouched and nothing merged"
    );
    // A script asking again reads the same in one object (still exit 1).
    let out = ws.cli(&["merge", "m1", "--json"]);
    assert_eq!(out.status.code(), Some(1), "expected not merged: {out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("expected one JSON object ({e}): {out:?}"));
    assert!(
        v["id"] == "m1"
            && v["state"] == "merge_waiting"
            && v["reason"]
                .as_str()
                .is_some_and(|r| r.contains("uncommitted changes")),
        "expected merge_waiting (tried again on its own) and why, got {v}"
    );
    // The user commits their edit: the merge goes on by itself (rescan) and lands on top.
    git(ws.root(), &["commit", "--quiet", "-am", "my own edit"]);
    let end = ws.wait_settled("m1");
    assert!(
        matches!(end, Event::Done { .. }),
        "expected done, got {end:?}"
    );
    let text = main_file(&ws);
    assert!(
        text.contains("slot2-by-m1") && text.contains("my own edit"),
        "expected both the user's commit and m1's on main, got:\n{text}"
    );
    assert_eq!(commits_of(&ws, "m1"), 1, "expected one commit of m1");
    daemon.stop();
}

#[test]
fn env_files_are_copied_and_heavy_directories_linked_into_the_worktree() {
    let config = format!(
        "{AGENT}default_chain: [ed]\nmerge: none\nworktree:\n  copy: [.env]\n  link: [node_modules]\nverify: [sh, -c, \"test -f .env && test -L node_modules && test -f node_modules/dep.js\"]\n"
    );
    let ws = repo_workspace(&config);
    std::fs::write(ws.root().join(".env"), "SECRET=1\n").unwrap();
    std::fs::create_dir(ws.root().join("node_modules")).unwrap();
    std::fs::write(ws.root().join("node_modules/dep.js"), "x").unwrap();
    let mut daemon = ws.start();
    ws.drop_task("deps.md", "append a.txt uses-deps\n");
    let end = ws.wait_settled("deps");
    assert!(
        matches!(end, Event::Done { .. }),
        "expected done (verify saw .env and node_modules), got {end:?}"
    );
    // merge: none — the branch is the result; main is untouched.
    let on_branch = git(ws.root(), &["show", "dirigent/deps:a.txt"]);
    assert!(
        on_branch.contains("uses-deps"),
        "expected the work on dirigent/deps"
    );
    assert!(
        !main_file(&ws).contains("uses-deps"),
        "expected main untouched with merge: none"
    );
    let files = git(
        ws.root(),
        &["show", "--name-only", "--format=", "dirigent/deps"],
    );
    assert_eq!(
        files.trim(),
        "a.txt",
        "expected .env and node_modules not committed, got {files}"
    );
    daemon.stop();
}

#[test]
fn a_worktree_outside_a_repository_is_a_clear_error() {
    let ws = Workspace::new(&format!("{AGENT}default_chain: [ed]\n"));
    let out = ws.cli(&["submit", "edit it", "--id", "nogit"]);
    assert!(
        out.status.success(),
        "plain tasks still work outside git: {out:?}"
    );
    std::fs::write(
        ws.path("inbox/w.json"),
        r#"{"prompt": "x", "workdir": "worktree"}"#,
    )
    .unwrap();
    let mut daemon = ws.start();
    let reason = ws.wait_for("the worktree task to be rejected", |recs| {
        recs.iter().find_map(|r| match &r.event {
            Event::Rejected { file, reason, .. } if file == "w.json" => Some(reason.clone()),
            _ => None,
        })
    });
    assert_eq!(
        reason,
        "`workdir: worktree` (from the task) needs a git repository, and this workspace is not one; run `git init`, or set `workdir: shared`",
        "expected the exact error"
    );
    let end = ws.wait_settled("nogit");
    assert!(
        matches!(end, Event::Escalated { .. } | Event::Done { .. }),
        "expected the plain task to run in the workspace, got {end:?}"
    );
    daemon.stop();
}

/// SIGKILL while the merge re-verifies (after `merge_started`, before the target moved), then
/// restart: the merge starts over and lands once.
#[test]
fn a_crash_in_the_merge_step_is_recovered_without_a_second_commit() {
    let gate = tempfile::tempdir().unwrap();
    let hold = gate.path().join("hold");
    let inside = gate.path().join("inside");
    std::fs::write(&hold, "").unwrap();
    // The check holds while `hold` exists, but only on the merged result (a.txt has t1's
    // slot and t2's): the re-verification of the merge.
    let check = format!(
        "if grep -q slot1-by-k1 a.txt && grep -q slot2-by-k2 a.txt && test -e {hold}; then touch {inside}; sleep 60; fi",
        hold = hold.display(),
        inside = inside.display()
    );
    let config = format!(
        "{AGENT}default_chain: [ed]\nmerge: auto\nconcurrency: 1\nverify: [sh, -c, {check:?}]\n"
    );
    let ws = repo_workspace(&config);
    let mut daemon = ws.start();
    ws.drop_task("k1.md", "replace a.txt slot1 slot1-by-k1\n");
    ws.wait_settled("k1");
    ws.drop_task("k2.md", "replace a.txt slot2 slot2-by-k2\n");
    ws.wait_until("the merge's verification to start", || {
        inside.exists().then_some(())
    });
    daemon.crash();
    std::fs::remove_file(&hold).unwrap();
    let mut daemon = ws.start();
    let end = ws.wait_settled("k2");
    assert!(
        matches!(end, Event::Done { .. }),
        "expected done after the restart, got {end:?}"
    );
    assert_eq!(
        commits_of(&ws, "k2"),
        1,
        "expected exactly one commit of k2 on main"
    );
    assert_eq!(
        commits_of(&ws, "k1"),
        1,
        "expected exactly one commit of k1 on main"
    );
    let text = main_file(&ws);
    assert!(
        text.contains("slot1-by-k1") && text.contains("slot2-by-k2"),
        "expected both on main, got:\n{text}"
    );
    assert_eq!(
        status_of(&ws),
        "",
        "expected the checkout clean after recovery"
    );
    daemon.stop();
}

/// Trees are pooled: a later task reuses one, and finds nothing an earlier task's agent left
/// there (an ignored `.env` it planted included).
#[test]
fn a_pooled_worktree_carries_nothing_from_its_last_task() {
    let ws = repo_workspace(&format!(
        "{AGENT}default_chain: [ed]\nmerge: auto\nconcurrency: 1\n"
    ));
    let mut daemon = ws.start();
    let made = |id: &str| {
        ws.wait_for(&format!("the worktree of {id}"), |recs| {
            recs.iter().find_map(|r| match &r.event {
                Event::WorktreeMade { task, path, .. } if task == id => Some(path.clone()),
                _ => None,
            })
        })
    };
    let mut paths = Vec::new();
    for (id, slot) in [("p1", "slot1"), ("p2", "slot2"), ("p3", "slot3")] {
        ws.drop_task(
            &format!("{id}.md"),
            &format!(
                "refuse-if .env planted\nappend .env planted-by-{id}\nreplace a.txt {slot} {slot}-by-{id}\n"
            ),
        );
        let end = ws.wait_settled(id);
        assert!(
            matches!(end, Event::Done { .. }),
            "expected {id} done (no leftover .env seen), got {end:?}"
        );
        paths.push(made(id));
    }
    assert!(
        paths[1..].contains(&paths[0]) || paths[2] == paths[1],
        "expected a later task to reuse a pooled tree, got {paths:?}"
    );
    assert!(
        !main_file(&ws).contains("planted"),
        "expected the ignored .env never committed"
    );
    daemon.stop();
}

/// A graceful stop leaves verified work where it is: after the restart the task still waits to
/// be merged, and no agent runs again.
#[test]
fn verified_work_waiting_to_merge_survives_a_graceful_stop() {
    let ws = repo_workspace(&format!("{AGENT}default_chain: [ed]\n"));
    let mut daemon = ws.start();
    ws.drop_task("keep.md", "replace a.txt slot4 slot4-by-keep\n");
    ws.wait_state("keep", "merge_waiting");
    daemon.stop();
    let mut daemon = ws.start();
    ws.wait_state("keep", "merge_waiting");
    let out = ws.cli(&["merge", "keep", "--json"]);
    assert!(out.status.success(), "expected merge accepted: {out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("expected one JSON object once merged ({e}): {out:?}"));
    let head = git(ws.root(), &["rev-parse", "main"]);
    assert_eq!(
        v,
        serde_json::json!({"id": "keep", "state": "merged", "target": "main", "commit": head.trim(), "nothing_new": false}),
        "expected `merge --json` to return once merged"
    );
    let end = ws.wait_settled("keep");
    assert!(
        matches!(end, Event::Done { .. }),
        "expected done, got {end:?}"
    );
    assert_eq!(
        ws.attempts("keep"),
        vec![("ed".to_string(), "ok".to_string())],
        "expected the agent to have run once"
    );
    assert_eq!(
        commits_of(&ws, "keep"),
        1,
        "expected one commit of keep on main"
    );
    daemon.stop();
}

/// `dirigent merge` twice at once (squash, which would write a second commit) merges once.
#[test]
fn merging_twice_at_once_lands_one_commit() {
    let ws = repo_workspace(&format!(
        "{AGENT}default_chain: [ed]\nmerge_strategy: squash\n"
    ));
    let mut daemon = ws.start();
    ws.drop_task("twice.md", "replace a.txt slot3 slot3-by-twice\n");
    ws.wait_state("twice", "merge_waiting");
    let first = ws.cli(&["merge", "twice"]);
    let second = ws.cli(&["merge", "twice"]);
    assert!(
        first.status.success(),
        "expected the first merge accepted: {first:?}"
    );
    let end = ws.wait_settled("twice");
    assert!(
        matches!(end, Event::Done { .. }),
        "expected done, got {end:?}"
    );
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(
        second.status.success()
            || said.contains("being merged")
            || said.contains("is merged already"),
        "expected the second merge accepted or refused as under way, got {second:?}"
    );
    assert_eq!(
        commits_of(&ws, "twice"),
        1,
        "expected exactly one commit of twice"
    );
    let merged = ws
        .records()
        .iter()
        .filter(|r| matches!(&r.event, Event::Merged { task, .. } if task == "twice"))
        .count();
    assert_eq!(merged, 1, "expected one `merged` record");
    daemon.stop();
}

/// `dirigent cancel` while `verify` runs stops the check's process group and nothing lands.
#[test]
fn cancel_during_verify_stops_the_check_and_merges_nothing() {
    let gate = tempfile::tempdir().unwrap();
    let inside = gate.path().join("inside");
    let config = format!(
        "{AGENT}default_chain: [ed]\nmerge: auto\nverify: [sh, -c, \"touch {}; sleep 60\"]\n",
        inside.display()
    );
    let ws = repo_workspace(&config);
    let mut daemon = ws.start();
    ws.drop_task("stopme.md", "replace a.txt slot2 slot2-by-stopme\n");
    ws.wait_until("the check to start", || inside.exists().then_some(()));
    let out = ws.cli(&["cancel", "stopme"]);
    assert!(out.status.success(), "expected cancel accepted: {out:?}");
    // A wait that fails the test (with the ledger) if it is never cancelled.
    ws.wait_for("the task to be cancelled", |recs| {
        recs.iter()
            .any(|r| matches!(&r.event, Event::Cancelled { task } if task == "stopme"))
            .then_some(())
    });
    assert_eq!(
        ws.attempts("stopme"),
        vec![("ed".to_string(), "cancelled".to_string())],
        "expected the attempt cancelled during its check"
    );
    assert!(
        !main_file(&ws).contains("stopme"),
        "expected nothing merged"
    );
    assert!(
        ws.survivors().is_empty(),
        "expected the check's process group gone, found {:?}",
        ws.survivors()
    );
    daemon.stop();
}

/// `copy:` of a file git does not ignore would commit it: refused with what to do.
#[test]
fn copying_a_file_git_does_not_ignore_is_refused() {
    let config = format!("{AGENT}default_chain: [ed]\nworktree:\n  copy: [secrets.txt]\n");
    let ws = repo_workspace(&config);
    std::fs::write(ws.root().join("secrets.txt"), "k=v\n").unwrap();
    let mut daemon = ws.start();
    ws.drop_task("cp.md", "append a.txt x\n");
    let end = ws.wait_settled("cp");
    let Event::Escalated { reason, .. } = &end else {
        panic!("expected escalation, got {end:?}")
    };
    assert!(
        reason.contains("`worktree.copy: secrets.txt`")
            && reason.contains("git does not ignore `secrets.txt`")
            && reason.contains("add `secrets.txt` to .gitignore"),
        "expected the refusal to say what to do, got: {reason}"
    );
    daemon.stop();
}

/// A task escalated for a conflict, retried, starts from the target as it is now and lands;
/// its first work is kept as a patch.
#[test]
fn a_retried_conflict_starts_from_the_current_target_and_lands() {
    let ws = repo_workspace(&format!(
        "{AGENT}default_chain: [ed]\nmerge: auto\nconcurrency: 2\n"
    ));
    let mut daemon = ws.start();
    // Both append at the end of the file from the same base: whichever merges second conflicts.
    ws.drop_task("c1.md", "append a.txt tail-by-c1\n");
    ws.drop_task("c2.md", "append a.txt tail-by-c2\n");
    let ends = [("c1", ws.wait_settled("c1")), ("c2", ws.wait_settled("c2"))];
    let loser = ends
        .iter()
        .find(|(_, e)| matches!(e, Event::Escalated { .. }))
        .map(|(id, _)| *id)
        .expect("expected one of c1/c2 to conflict");
    // `retry` asks the daemon, which applies the escalation just after the ledger has it.
    ws.wait_state(loser, "failed");
    // The reason says what to do next; `status ID` shows the conflict's regions under it.
    let detail = String::from_utf8_lossy(&ws.cli(&["status", loser]).stdout).into_owned();
    let state = detail
        .lines()
        .find(|l| l.starts_with("state:"))
        .unwrap_or_default();
    assert!(
        state.contains(&format!("`dirigent/{loser}` conflicts with `main`"))
            && state.contains(&format!("`dirigent retry {loser}` runs it again on `main`"))
            && state.contains("`on_conflict: agent`"),
        "expected the conflict and what to do about it on the state line, got:\n{detail}"
    );
    assert!(
        detail.contains("\n          <<<<<<< HEAD\n"),
        "expected the conflicting region under the state line, got:\n{detail}"
    );
    let out = ws.cli(&["retry", loser]);
    assert!(out.status.success(), "expected retry accepted: {out:?}");
    ws.wait_for(&format!("{loser} to finish again"), |recs| {
        recs.iter()
            .rev()
            .take_while(|r| !matches!(&r.event, Event::Retried { task, .. } if task == loser))
            .any(|r| matches!(&r.event, Event::Done { task, .. } if task == loser))
            .then_some(())
    });
    let text = main_file(&ws);
    assert!(
        text.contains("tail-by-c1") && text.contains("tail-by-c2"),
        "expected both tails on main after the retry, got:\n{text}"
    );
    let saved: Vec<String> = std::fs::read_dir(ws.path(&format!("runs/{loser}")))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("retried-") && n.ends_with(".patch"))
        .collect();
    assert_eq!(
        saved.len(),
        1,
        "expected the first work saved as a patch, got {saved:?}"
    );
    daemon.stop();
}

/// `on_conflict: agent`: the branch that conflicts goes back to its agent with the merge started
/// in its tree; the agent resolves it, the result is checked, and both changes land.
#[test]
fn with_on_conflict_agent_a_conflict_is_resolved_and_lands() {
    let ws = repo_workspace(&format!(
        "{AGENT}default_chain: [ed]\nmerge: auto\non_conflict: agent\nconcurrency: 2\nverify: [sh, -c, \"! grep -q '^<<<<<<<' a.txt\"]\n"
    ));
    let mut daemon = ws.start();
    ws.drop_task(
        "r1.md",
        "replace a.txt slot1 slot1-by-r1\nonresolve unmark a.txt\n",
    );
    ws.drop_task(
        "r2.md",
        "replace a.txt slot1 slot1-by-r2\nonresolve unmark a.txt\n",
    );
    for id in ["r1", "r2"] {
        let end = ws.wait_settled(id);
        assert!(
            matches!(end, Event::Done { .. }),
            "expected {id} done, got {end:?}\nattempts:\n{}",
            attempt_reasons(&ws)
        );
    }
    let text = main_file(&ws);
    assert!(
        text.contains("slot1-by-r1") && text.contains("slot1-by-r2") && !text.contains("<<<<<<<"),
        "expected both changes on main and no marker, got:\n{text}"
    );
    let resolved = ws
        .records()
        .iter()
        .any(|r| matches!(&r.event, Event::MergeFailed { resolve: Some(t), .. } if t == "main"));
    assert!(resolved, "expected the conflict handed to the agent");
    let prompts: Vec<String> = ["r1", "r2"]
        .iter()
        .filter_map(|id| std::fs::read_to_string(ws.path(&format!("runs/{id}/2-ed.prompt"))).ok())
        .collect();
    assert!(
        prompts.len() == 1
            && prompts[0].contains("## Resolve the merge conflict")
            && prompts[0].contains("<<<<<<<"),
        "expected one resolving attempt whose prompt shows the conflict, got {prompts:?}"
    );
    daemon.stop();
}

/// A workflow's `parallel` phase with `workdir: worktree`: each task edits in its own tree and is
/// merged before the next phase, which (in the workspace) sees both edits.
#[test]
fn a_parallel_phase_in_worktrees_is_merged_before_the_next_phase() {
    let ws = repo_workspace(&format!("{AGENT}default_chain: [ed]\n"));
    ws.write_workflow(
        "edit-both",
        r#"
name: edit-both
phases:
  - name: execute
    type: parallel
    workdir: worktree
    verify: [sh, -c, "! grep -q '^slot1$' a.txt || ! grep -q '^slot4$' a.txt"]
    tasks:
      - { name: one, prompt: "replace a.txt slot1 slot1-by-one", agent: ed }
      - { name: two, prompt: "replace a.txt slot4 slot4-by-two", agent: ed }
  - name: integrate
    type: single
    agent: ed
    prompt: "require a.txt slot1-by-one\nrequire a.txt slot4-by-two"
"#,
    );
    let mut daemon = ws.start();
    ws.drop_task("run.json", r#"{"workflow": "edit-both"}"#);
    let end = ws.wait_settled("run");
    assert!(
        matches!(end, Event::Done { .. }),
        "expected the run done (integrate saw both edits), got {end:?}\nattempts:\n{}",
        attempt_reasons(&ws)
    );
    let text = main_file(&ws);
    assert!(
        text.contains("slot1-by-one") && text.contains("slot4-by-two"),
        "expected both edits on main, got:\n{text}"
    );
    daemon.stop();
}

/// A worktree task's `output` is part of its work: written in its tree and committed on its
/// branch, not into the user's checkout; its text is in the outbox. Its `files:` are read from
/// its tree, not from the user's uncommitted edits.
#[test]
fn output_and_files_of_a_worktree_task_are_its_trees() {
    let ws = repo_workspace(&format!("{AGENT}default_chain: [ed]\nmerge: none\n"));
    // An uncommitted edit of the user's: the task must see the committed a.txt.
    std::fs::write(ws.root().join("a.txt"), "the user's draft\n").unwrap();
    let mut daemon = ws.start();
    ws.drop_task(
        "out.md",
        "---\noutput: notes/out.md\nfiles: [a.txt]\n---\nappend b.txt new file\n",
    );
    let end = ws.wait_settled("out");
    assert!(
        matches!(end, Event::Done { .. }),
        "expected done, got {end:?}"
    );
    let committed = git(ws.root(), &["show", "dirigent/out:notes/out.md"]);
    assert!(
        committed.contains("edited in"),
        "expected the agent's output committed on the branch, got {committed:?}"
    );
    assert!(
        !ws.root().join("notes/out.md").exists(),
        "expected nothing written into the user's checkout"
    );
    let result = ws.cli(&["result", "out"]);
    assert!(
        String::from_utf8_lossy(&result.stdout).contains("edited in"),
        "expected the result text in the outbox, got {result:?}"
    );
    let prompt = std::fs::read_to_string(ws.path("runs/out/1-ed.prompt")).unwrap();
    assert!(
        prompt.contains("slot1") && !prompt.contains("the user's draft"),
        "expected a.txt as the tree has it in the prompt, got:\n{prompt}"
    );
    daemon.stop();
}

/// What an agent may not slip into the user's checkout through a merge: dirigent's own
/// `.context` (as a file), or a file the user's checkout ignores (a force-added `.env`).
#[test]
fn work_that_touches_context_or_ignored_files_is_refused() {
    let ws = repo_workspace(&format!("{AGENT}default_chain: [ed]\nmerge: auto\n"));
    std::fs::write(ws.root().join(".env"), "MINE=1\n").unwrap();
    let mut daemon = ws.start();
    ws.drop_task("ctx.md", "run echo takeover > .context\n");
    ws.drop_task(
        "env.md",
        "run echo EVIL=1 > .env && git add -f .env\nappend a.txt also\n",
    );
    for (id, want) in [
        ("ctx", "inside dirigent's own `.context/`: refused"),
        ("env", "the work adds files your checkout ignores (`.env`)"),
    ] {
        let end = ws.wait_settled(id);
        assert!(
            matches!(end, Event::Escalated { .. }),
            "expected {id} refused, got {end:?}"
        );
        let reasons = attempt_reasons(&ws);
        assert!(
            reasons.contains(&format!("{id}: exit: ")) && reasons.contains(want),
            "expected {id} refused with `{want}`, got:\n{reasons}"
        );
    }
    assert!(ws.ctx().is_dir(), "expected the user's .context/ untouched");
    assert_eq!(
        std::fs::read_to_string(ws.root().join(".env")).unwrap(),
        "MINE=1\n",
        "expected the user's .env untouched"
    );
    assert_eq!(
        commits_of(&ws, "ctx") + commits_of(&ws, "env"),
        0,
        "expected nothing merged"
    );
    daemon.stop();
}

/// A `.git` file an agent pointed at the user's repository is put back before the next agent
/// runs in that tree: the next agent's own commit lands on its branch, never on `main`.
#[test]
fn a_planted_git_file_does_not_outlive_its_attempt() {
    let ws = repo_workspace(&format!(
        "{AGENT}default_chain: [ed]\nmerge: manual\nconcurrency: 1\n"
    ));
    let main_before = git(ws.root(), &["rev-parse", "main"]);
    let mut daemon = ws.start();
    let planted = format!(
        "run echo gitdir: {}/.git > .git\nappend b.txt junk\n",
        ws.root().display()
    );
    ws.drop_task("plant.md", &planted);
    ws.wait_state("plant", "merge_waiting");
    let out = ws.cli(&["discard", "plant"]);
    assert!(out.status.success(), "expected discard accepted: {out:?}");
    // A wait that fails the test (with the ledger) if the tree is never given up.
    ws.wait_for("the planted tree to be given up", |recs| {
        recs.iter()
            .any(|r| matches!(&r.event, Event::WorktreeRemoved { task, .. } if task == "plant"))
            .then_some(())
    });
    ws.drop_task("honest.md", "append b.txt mine\ncommit an honest commit\n");
    ws.wait_state("honest", "merge_waiting");
    assert_eq!(
        git(ws.root(), &["rev-parse", "main"]),
        main_before,
        "expected main untouched by the agents' own commits"
    );
    let paths: Vec<std::path::PathBuf> = ws
        .records()
        .iter()
        .filter_map(|r| match &r.event {
            Event::WorktreeMade { path, .. } => Some(path.clone()),
            _ => None,
        })
        .collect();
    assert!(
        paths.len() == 2 && paths[0] == paths[1],
        "expected the honest task in the planted task's (pooled) tree, got {paths:?}"
    );
    // On its own branch: its work, in the commit its own commit was folded into.
    let on_branch = git(ws.root(), &["log", "-1", "--format=%B", "dirigent/honest"]);
    assert!(
        on_branch.contains("Dirigent-Task: honest"),
        "expected the agent's work committed on its own branch, got:\n{on_branch}"
    );
    assert!(
        git(ws.root(), &["show", "dirigent/honest:b.txt"]).contains("mine"),
        "expected the agent's change on its own branch"
    );
    daemon.stop();
}

#[test]
fn work_waiting_to_be_merged_shows_its_agents_answer() {
    let ws = repo_workspace(&format!("{AGENT}default_chain: [ed]\nmerge: manual\n"));
    let _d = ws.start();
    // `submit --wait` returns at merge_waiting with the agent's answer on stdout…
    let out = ws.cli(&["submit", "append a.txt mine", "--id", "w", "--wait"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let answer = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        answer.starts_with("edited in "),
        "expected the agent's answer on stdout, got {answer:?}"
    );
    // …and `dirigent result` shows the same before the merge, saying it is not merged.
    let out = ws.cli(&["result", "w"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), answer);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is verified and not merged yet"),
        "{out:?}"
    );
    let v: serde_json::Value =
        serde_json::from_slice(&ws.cli(&["result", "w", "--json"]).stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"id": "w", "state": "merge_waiting", "result": answer, "attempt": 1, "agent": "ed"}),
        "the answer waiting to be merged, for a script"
    );
}

#[test]
fn a_link_planted_in_a_trees_place_is_never_gone_through() {
    let ws = repo_workspace(&format!(
        "{AGENT}default_chain: [ed, ed2]\nmerge: manual\nconcurrency: 1\n"
    ));
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir(outside.path().join("sub")).unwrap();
    std::fs::write(outside.path().join("precious.txt"), "keep me").unwrap();
    std::fs::write(outside.path().join("sub/data.db"), "and me").unwrap();
    let _d = ws.start();
    // The first agent moves its tree away, leaves a link to `outside` in its place, and fails:
    // the next attempt would reset and clean "its tree" — whatever the link names.
    let plant = format!(
        "as ed run T=$PWD; cd ..; mv $T $T.moved; ln -s {} $T\nas ed fail\nappend a.txt second\n",
        outside.path().display()
    );
    ws.drop_task("plant.md", &plant);
    ws.wait_settled("plant");
    let mut left: Vec<String> = std::fs::read_dir(outside.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["precious.txt", "sub"],
        "expected nothing removed or written where the link points; reasons:\n{}",
        attempt_reasons(&ws)
    );
    assert_eq!(
        std::fs::read_to_string(outside.path().join("sub/data.db")).unwrap(),
        "and me"
    );
    // And the next task gets a tree of its own, not the link.
    ws.drop_task("next.md", "append a.txt next\n");
    ws.wait_state("next", "merge_waiting");
    assert_eq!(
        std::fs::read_dir(outside.path()).unwrap().count(),
        2,
        "expected the next task not to work where the link pointed"
    );
}

#[test]
fn a_link_at_the_failed_attempts_patch_is_not_written_through() {
    let ws = repo_workspace(&format!("{AGENT}default_chain: [ed]\nconcurrency: 1\n"));
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    std::fs::write(&victim, "PRECIOUS").unwrap();
    let _d = ws.start();
    // The agent changes something, puts a link where its patch will be saved, and fails.
    let plant = format!(
        "append a.txt half-done\nrun mkdir -p $DIRIGENT_CONTEXT_DIR/runs/$DIRIGENT_TASK_ID; ln -sf {} $DIRIGENT_CONTEXT_DIR/runs/$DIRIGENT_TASK_ID/$DIRIGENT_ATTEMPT-$DIRIGENT_AGENT.patch\nfail\n",
        victim.display()
    );
    ws.drop_task("p.md", &plant);
    ws.wait_settled("p");
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "PRECIOUS",
        "expected the linked file untouched; reasons:\n{}",
        attempt_reasons(&ws)
    );
    let patch = std::fs::read_to_string(ws.path("runs/p/1-ed.patch")).unwrap();
    assert!(
        patch.contains("+half-done"),
        "expected the patch in the run directory instead: {patch}"
    );
}

#[test]
fn a_fifo_planted_as_a_trees_git_file_does_not_hang_the_next_task() {
    let ws = repo_workspace(&format!(
        "{AGENT}default_chain: [ed]\nmerge: manual\nconcurrency: 1\n"
    ));
    let _d = ws.start();
    // Its `.git` (a file naming the tree's git directory) becomes a FIFO: read as it was, the
    // next task to reuse the tree would wait on it for good.
    ws.drop_task(
        "plant.md",
        "run rm -f .git; mkfifo .git\nappend a.txt planted\n",
    );
    ws.wait_state("plant", "merge_waiting");
    assert!(ws.cli(&["discard", "plant"]).status.success());
    ws.wait_for("the planted tree to be given up", |recs| {
        recs.iter()
            .any(|r| matches!(&r.event, Event::WorktreeRemoved { task, .. } if task == "plant"))
            .then_some(())
    });
    ws.drop_task("honest.md", "append a.txt mine\n");
    ws.wait_state("honest", "merge_waiting");
}

/// `worktree.setup` that leaves files git does not ignore is refused (they would count as the
/// agent's work), before any agent runs.
#[test]
fn setup_that_leaves_files_git_does_not_ignore_is_refused() {
    let ws = repo_workspace(&format!(
        "{AGENT}default_chain: [ed]\nworktree:\n  setup: [sh, -c, \"echo x > built.out\"]\n"
    ));
    let mut daemon = ws.start();
    ws.drop_task("setup.md", "append a.txt x\n");
    let end = ws.wait_settled("setup");
    let Event::Escalated { reason, .. } = &end else {
        panic!("expected escalation, got {end:?}")
    };
    assert!(
        reason.contains("changed files git tracks or does not ignore (`built.out`)"),
        "expected the refusal to name the file, got: {reason}"
    );
    assert!(
        ws.attempts("setup").is_empty(),
        "expected no agent to have run"
    );
    daemon.stop();
}

/// An id git refuses as a branch name is refused when the task is submitted, in a repository.
#[test]
fn an_id_git_refuses_is_refused_at_submit() {
    let ws = repo_workspace(&format!("{AGENT}default_chain: [ed]\n"));
    let out = ws.cli(&["submit", "x", "--id", "a..b"]);
    assert_eq!(out.status.code(), Some(2), "expected a refusal: {out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("`a..b` cannot name a git branch (it contains `..`"),
        "expected the reason, got: {said}"
    );
}

/// A role may say where its tasks work: `workdir: shared` on a role of answerers runs them in
/// the workspace, no worktree, no `no_change`.
#[test]
fn a_role_can_say_its_tasks_work_in_the_workspace() {
    let ws = repo_workspace(&format!(
        "{AGENT}default_chain: [ed]\nroles:\n  answer: {{ agents: [ed], workdir: shared }}\n"
    ));
    let mut daemon = ws.start();
    ws.drop_task(
        "ask.json",
        r#"{"prompt": "what is in a.txt?", "role": "answer"}"#,
    );
    let end = ws.wait_settled("ask");
    assert!(
        matches!(end, Event::Done { .. }),
        "expected done, got {end:?}"
    );
    let made = ws
        .records()
        .iter()
        .any(|r| matches!(&r.event, Event::WorktreeMade { task, .. } if task == "ask"));
    assert!(!made, "expected no worktree for a shared role's task");
    daemon.stop();
}

/// SIGKILL as soon as `merge_ready` is on disk — the ref update may or may not have happened —
/// then restart: the task is done once, with one commit on the target, whichever it was.
#[test]
fn a_crash_at_merge_ready_is_recovered_without_a_second_commit() {
    let ws = repo_workspace(&format!("{AGENT}default_chain: [ed]\nmerge: auto\n"));
    let mut daemon = ws.start();
    ws.drop_task("mr.md", "replace a.txt slot3 slot3-by-mr\n");
    ws.wait_for("merge_ready", |recs| {
        recs.iter()
            .any(|r| matches!(&r.event, Event::MergeReady { task, .. } if task == "mr"))
            .then_some(())
    });
    daemon.crash();
    let mut daemon = ws.start();
    let end = ws.wait_settled("mr");
    assert!(
        matches!(end, Event::Done { .. }),
        "expected done after the restart, got {end:?}"
    );
    assert_eq!(
        commits_of(&ws, "mr"),
        1,
        "expected exactly one commit of mr on main"
    );
    let dones = ws
        .records()
        .iter()
        .filter(|r| matches!(&r.event, Event::Done { task, .. } if task == "mr"))
        .count();
    assert_eq!(dones, 1, "expected one `done` record");
    assert!(
        main_file(&ws).contains("slot3-by-mr"),
        "expected the work on main"
    );
    assert_eq!(status_of(&ws), "", "expected the checkout clean");
    let listed = git(ws.root(), &["worktree", "list", "--porcelain"]);
    assert!(
        !listed.contains("prunable"),
        "expected no worktree left half-registered, got:\n{listed}"
    );
    daemon.stop();
}

/// `carry_failed_changes: true`: the next agent starts from the failed attempt's changes
/// (applied from its patch) instead of a clean base.
#[test]
fn carried_failed_changes_reach_the_next_agent() {
    let ws = repo_workspace(&format!(
        "{AGENT}default_chain: [ed, ed2]\nmerge: auto\ncarry_failed_changes: true\n"
    ));
    let mut daemon = ws.start();
    ws.drop_task(
        "carry.md",
        "as ed append a.txt half-done\nas ed fail\nas ed2 require a.txt half-done\nas ed2 append a.txt finished\n",
    );
    let end = ws.wait_settled("carry");
    assert!(
        matches!(end, Event::Done { .. }),
        "expected done (ed2 saw ed's half-edit), got {end:?}\nattempts:\n{}",
        attempt_reasons(&ws)
    );
    let text = main_file(&ws);
    assert!(
        text.contains("half-done") && text.contains("finished"),
        "expected both on main, got:\n{text}"
    );
    daemon.stop();
}

/// A workflow run with `merge_into: dirigent/run/<id>` collects its editing tasks on that branch
/// and leaves the user's branch alone.
#[test]
fn a_run_branch_collects_a_workflows_edits() {
    let ws = repo_workspace(&format!("{AGENT}default_chain: [ed]\n"));
    ws.write_workflow(
        "collect",
        r#"
name: collect
phases:
  - name: execute
    type: parallel
    workdir: worktree
    tasks:
      - { name: one, prompt: "replace a.txt slot2 slot2-by-one", agent: ed }
      - { name: two, prompt: "replace a.txt slot3 slot3-by-two", agent: ed }
"#,
    );
    let main_before = git(ws.root(), &["rev-parse", "main"]);
    let mut daemon = ws.start();
    ws.drop_task(
        "rb.json",
        r#"{"workflow": "collect", "merge_into": "dirigent/run/rb"}"#,
    );
    let end = ws.wait_settled("rb");
    assert!(
        matches!(end, Event::Done { .. }),
        "expected the run done, got {end:?}\nattempts:\n{}",
        attempt_reasons(&ws)
    );
    assert_eq!(
        git(ws.root(), &["rev-parse", "main"]),
        main_before,
        "expected main untouched"
    );
    let collected = git(ws.root(), &["show", "dirigent/run/rb:a.txt"]);
    assert!(
        collected.contains("slot2-by-one") && collected.contains("slot3-by-two"),
        "expected both edits on the run branch, got:\n{collected}"
    );
    daemon.stop();
}

/// Discarding a finished task whose tree is back in the pool deletes its branch and leaves the
/// pooled tree alone: two tasks started together afterwards never share a directory.
#[test]
fn discarding_a_finished_task_does_not_pool_its_tree_twice() {
    let ws = repo_workspace(&format!(
        "{AGENT}default_chain: [ed]\nmerge: none\nconcurrency: 2\n"
    ));
    let mut daemon = ws.start();
    ws.drop_task("d1.md", "append a.txt from-d1\n");
    ws.wait_settled("d1");
    ws.wait_for("d1's tree to be given up", |recs| {
        recs.iter()
            .any(|r| matches!(&r.event, Event::WorktreeRemoved { task, .. } if task == "d1"))
            .then_some(())
    });
    let out = ws.cli(&["discard", "d1"]);
    assert!(out.status.success(), "expected discard accepted: {out:?}");
    ws.wait_until("the branch of d1 to be deleted", || {
        git(ws.root(), &["branch", "--list", "dirigent/d1"])
            .trim()
            .is_empty()
            .then_some(())
    });
    ws.drop_task("d2.md", "append a.txt from-d2\n");
    ws.drop_task("d3.md", "append a.txt from-d3\n");
    for id in ["d2", "d3"] {
        let end = ws.wait_settled(id);
        assert!(
            matches!(end, Event::Done { .. }),
            "expected {id} done, got {end:?}\nattempts:\n{}",
            attempt_reasons(&ws)
        );
    }
    let paths: Vec<(String, std::path::PathBuf)> = ws
        .records()
        .iter()
        .filter_map(|r| match &r.event {
            Event::WorktreeMade { task, path, .. } if task != "d1" => {
                Some((task.clone(), path.clone()))
            }
            _ => None,
        })
        .collect();
    assert!(
        paths.len() == 2 && paths[0].1 != paths[1].1,
        "expected d2 and d3 in different trees, got {paths:?}"
    );
    daemon.stop();
}

/// A task retried after its branch was discarded (its last attempt had succeeded), still
/// waiting for its slot when the daemon crashes: the restart runs it again, not settling it
/// from the earlier run's success (it showed `merge_waiting` with no branch, and a retry of a
/// `merge: none` task was `done` without running).
#[test]
fn a_retry_waiting_for_its_slot_runs_after_a_crash() {
    let ws = repo_workspace(&format!(
        "{AGENT}  gate: {{ command: [\"{{agents}}/gate.sh\", \"release\"], workdir: shared }}\ndefault_chain: [ed]\nmerge: manual\nconcurrency: 1\n"
    ));
    let mut daemon = ws.start();
    ws.drop_task("a.md", "append a.txt from-a\n");
    ws.wait_state("a", "merge_waiting");
    let out = ws.cli(&["discard", "a"]);
    assert!(
        out.status.success(),
        "expected `discard a` accepted: {out:?}"
    );
    ws.wait_for("`a` cancelled by the discard", |recs| {
        recs.iter()
            .any(|r| matches!(&r.event, Event::Cancelled { task } if task == "a"))
            .then_some(())
    });
    // `b` holds the only slot, so the retried `a` waits.
    ws.drop_task("b.json", r#"{"prompt": "p", "agent": "gate"}"#);
    ws.wait_started("b");
    // Until the discard's give-up is over, a retry is refused with why (never let in to race it).
    ws.wait_until("`retry a` to be accepted", || {
        let out = ws.cli(&["retry", "a"]);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            out.status.success()
                || stderr.contains("is still being given up; retry it in a moment"),
            "expected `retry a` accepted or told to wait for the discard, got: {out:?}"
        );
        out.status.success().then_some(())
    });
    ws.wait_for("the retry on record", |recs| {
        recs.iter()
            .any(|r| matches!(&r.event, Event::Retried { task, .. } if task == "a"))
            .then_some(())
    });
    daemon.crash();
    let _daemon = ws.start();
    std::fs::write(ws.root().join("release"), "").unwrap();
    ws.wait_for("the retried task's own attempt", |recs| {
        recs.iter()
            .any(|r| {
                matches!(&r.event, Event::AttemptStarted { task, attempt: 2, .. } if task == "a")
            })
            .then_some(())
    });
    ws.wait_state("a", "merge_waiting");
    let branch = git(ws.root(), &["show", "dirigent/a:a.txt"]);
    assert!(
        branch.contains("from-a"),
        "expected the retried run's work on its branch, got:\n{branch}"
    );
}

/// A discard cut short by a crash (its record on disk, the give-up not done — held there by an
/// injected fault) is finished by the next start: the branch is deleted, the task is over, and
/// a second `discard` says nothing is left. Both kinds of discard: of work waiting to be merged
/// (its tree still there) and of a finished `merge: none` task (its tree gone, its branch kept).
// The fault is injected by debug builds only.
#[cfg(debug_assertions)]
#[test]
fn a_discard_cut_short_by_a_crash_is_finished_at_the_next_start() {
    for (merge, waits_for) in [("manual", "merge_waiting"), ("none", "done")] {
        let ws = repo_workspace(&format!(
            "{AGENT}default_chain: [ed]\nmerge: {merge}\nconcurrency: 1\n"
        ));
        let mut daemon = ws.start_with(&[("DIRIGENT_FAULT", "discard-stall:x")]);
        ws.drop_task("x.md", "append a.txt from-x\n");
        ws.wait_state("x", waits_for);
        if merge == "none" {
            ws.wait_for("x's tree to be given up", |recs| {
                recs.iter()
                    .any(|r| matches!(&r.event, Event::WorktreeRemoved { task, .. } if task == "x"))
                    .then_some(())
            });
        }
        // Until the daemon has applied the tree's give-up (`merge: none`), a discard is refused
        // as under way.
        ws.wait_until("`discard x` to be accepted", || {
            let out = ws.cli(&["discard", "x"]);
            assert!(
                out.status.success()
                    || String::from_utf8_lossy(&out.stderr).contains("is being given up right now"),
                "merge: {merge}: expected `discard x` accepted: {out:?}"
            );
            out.status.success().then_some(())
        });
        // Answered once the discard is on disk.
        assert!(
            ws.records()
                .iter()
                .any(|r| matches!(&r.event, Event::Discarded { task } if task == "x")),
            "merge: {merge}: expected `discarded` recorded before the answer"
        );
        daemon.crash();
        assert!(
            !git(ws.root(), &["branch", "--list", "dirigent/x"])
                .trim()
                .is_empty(),
            "merge: {merge}: expected the branch still there after the crash (the fault held the give-up)"
        );

        let mut daemon = ws.start();
        ws.wait_until("the discarded branch to be deleted", || {
            git(ws.root(), &["branch", "--list", "dirigent/x"])
                .trim()
                .is_empty()
                .then_some(())
        });
        ws.wait_for("the branch's deletion on record", |recs| {
            recs.iter()
                .any(|r| {
                    matches!(&r.event, Event::WorktreeRemoved { task, branch_deleted: true } if task == "x")
                })
                .then_some(())
        });
        let want = if merge == "none" { "done" } else { "failed" };
        ws.wait_state("x", want);
        ws.wait_until("a second discard to say nothing is left", || {
            let out = ws.cli(&["discard", "x"]);
            let stderr = String::from_utf8_lossy(&out.stderr).to_string();
            assert!(
                !out.status.success(),
                "merge: {merge}: expected a second `discard x` refused: {out:?}"
            );
            stderr
                .contains("task `x` has nothing left to discard")
                .then_some(())
        });
        daemon.stop();
    }
}

/// Two tasks make the same change: the second one's merge adds nothing, and says so instead of
/// naming the first one's commit as its own.
#[test]
fn merging_a_change_already_on_the_target_says_nothing_new_was_merged() {
    let ws = repo_workspace(&format!(
        "{AGENT}default_chain: [ed]\nmerge: manual\nconcurrency: 2\n"
    ));
    let mut daemon = ws.start();
    ws.drop_task("e3.md", "append a.txt same-line\n");
    ws.drop_task("e4.md", "append a.txt same-line\n");
    ws.wait_state("e3", "merge_waiting");
    ws.wait_state("e4", "merge_waiting");
    let out = ws.cli(&["merge", "e3"]);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && said.starts_with("merged `e3` into `main` at "),
        "expected e3 merged: {out:?}"
    );
    let head = git(ws.root(), &["rev-parse", "main"]);
    let out = ws.cli(&["merge", "e4"]);
    assert!(
        out.status.success(),
        "expected e4's merge to succeed: {out:?}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "`e4`'s change was on `main` already (another task made the same one): nothing new to merge; `main` stays at {}\n",
            &head.trim()[..12]
        )
    );
    assert_eq!(
        git(ws.root(), &["rev-parse", "main"]),
        head,
        "expected no new commit on main"
    );
    daemon.stop();
}

/// `keep_failed` running out while a discard of the same task is still giving its tree up
/// (held there by an injected fault) starts no second give-up: the first one's guard stays, so
/// a retry is refused until the discard is over (before, the second give-up ended the guard and
/// a retry's new branch was deleted under its running attempt).
// The fault is injected by debug builds only.
#[cfg(debug_assertions)]
#[test]
fn keep_failed_running_out_during_a_discard_does_not_give_the_tree_up_twice() {
    let ws = repo_workspace(&format!(
        // Long enough to discard the failed task before it runs out, even on a loaded machine.
        "{AGENT}default_chain: [ed]\nmerge: manual\nconcurrency: 1\nkeep_failed: 8s\n"
    ));
    let mut daemon = ws.start_with(&[("DIRIGENT_FAULT", "discard-stall:f1")]);
    ws.drop_task("f1.md", "append a.txt from-f1\nrequire a.txt never-there\n");
    ws.wait_state("f1", "failed");
    let out = ws.cli(&["discard", "f1"]);
    assert!(
        out.status.success(),
        "expected `discard f1` accepted: {out:?}"
    );
    ws.wait_until("keep_failed to run out during the discard", || {
        std::fs::read_to_string(ws.root().join("daemon.log"))
            .ok()
            .filter(|log| log.contains("keep_failed is over; its tree is being given up already"))
            .map(drop)
    });
    let removed = ws
        .records()
        .iter()
        .filter(|r| matches!(&r.event, Event::WorktreeRemoved { task, .. } if task == "f1"))
        .count();
    assert_eq!(removed, 0, "expected no give-up beside the stalled discard");
    let out = ws.cli(&["retry", "f1"]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr)
                .contains("is still being given up; retry it in a moment"),
        "expected the retry refused while the discard is under way: {out:?}"
    );
    daemon.crash();
}

/// A retry gives the task's old tree up in a task of its own: a git step that hangs there (an
/// injected fault, as a slow filter would be) holds neither the answer nor `status` nor a stop,
/// and the next start runs the retried task in a new tree.
// The fault is injected by debug builds only.
#[cfg(debug_assertions)]
#[test]
fn a_retry_whose_old_tree_hangs_holds_neither_the_daemon_nor_its_stop() {
    let ws = repo_workspace(&format!(
        "{AGENT}default_chain: [ed]\nmerge: manual\nconcurrency: 1\nkeep_failed: 1h\n"
    ));
    let outside = tempfile::tempdir().unwrap();
    let flag = outside.path().join("go.flag");
    let mut daemon = ws.start_with(&[("DIRIGENT_FAULT", "retire-stall:r")]);
    ws.drop_task(
        "r.md",
        &format!("append a.txt from-r\nrequire {} go\n", flag.display()),
    );
    ws.wait_state("r", "failed");
    std::fs::write(&flag, "go\n").unwrap();
    let out = ws.cli(&["retry", "r"]);
    assert!(out.status.success(), "expected `retry r` accepted: {out:?}");
    let out = ws.cli(&["status", "r"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && text.contains("state:    pending"),
        "expected `status r` answered by the daemon while the old tree is given up, pending: {out:?}"
    );
    let out = ws.cli(&["retry", "r"]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr)
                .contains("only a failed or cancelled task can be retried"),
        "expected a second retry refused: {out:?}"
    );
    assert!(daemon.stop().success(), "expected the daemon to stop");
    let log = std::fs::read_to_string(ws.root().join("daemon.log")).unwrap();
    assert!(
        log.contains("stopping without waiting any longer for work still under way"),
        "expected the stop to say what it left, log:\n{log}"
    );
    let _daemon = ws.start();
    ws.wait_state("r", "merge_waiting");
    assert!(
        !main_file(&ws).contains("from-r"),
        "expected nothing merged yet (merge: manual), a.txt:\n{}",
        main_file(&ws)
    );
}

/// A stop never waits for ever: work that does not end when told (a give-up held by an injected
/// fault, as a hung git command would be) is left to the next start after `kill_grace` and 10 s,
/// and that start finishes it.
// The fault is injected by debug builds only.
#[cfg(debug_assertions)]
#[test]
fn a_stop_ends_even_when_a_give_up_hangs_and_the_next_start_finishes_it() {
    let ws = repo_workspace(&format!(
        "{AGENT}default_chain: [ed]\nmerge: manual\nconcurrency: 1\n"
    ));
    let mut daemon = ws.start_with(&[("DIRIGENT_FAULT", "discard-stall:s")]);
    ws.drop_task("s.md", "append a.txt from-s\n");
    ws.wait_state("s", "merge_waiting");
    let out = ws.cli(&["discard", "s"]);
    assert!(
        out.status.success(),
        "expected `discard s` accepted: {out:?}"
    );
    assert!(daemon.stop().success(), "expected the daemon to stop");
    let log = std::fs::read_to_string(ws.root().join("daemon.log")).unwrap();
    assert!(
        log.contains("stopping without waiting any longer for work still under way"),
        "expected the stop to say what it left, log:\n{log}"
    );
    let _daemon = ws.start();
    ws.wait_until("the discarded branch to be deleted", || {
        git(ws.root(), &["branch", "--list", "dirigent/s"])
            .trim()
            .is_empty()
            .then_some(())
    });
}

/// A failed task whose tree (and, with no commit, its branch) `keep_failed` already removed has
/// nothing left to discard, and `discard` says so instead of claiming to delete it.
#[test]
fn discarding_a_failed_task_whose_tree_expired_says_nothing_is_left() {
    let ws = repo_workspace(&format!(
        "{AGENT}default_chain: [ed]\nmerge: manual\nconcurrency: 1\nkeep_failed: 100ms\n"
    ));
    let _daemon = ws.start();
    ws.drop_task("f.md", "append a.txt from-f\nrequire a.txt never-there\n");
    ws.wait_for("f's kept tree to expire", |recs| {
        recs.iter()
            .any(|r| matches!(&r.event, Event::WorktreeRemoved { task, .. } if task == "f"))
            .then_some(())
    });
    // Until the daemon has applied the removal, a discard is refused as under way.
    ws.wait_until("discard to say nothing is left", || {
        let out = ws.cli(&["discard", "f"]);
        let said = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            !out.status.success(),
            "expected `discard f` refused, got: {out:?}"
        );
        (said
            == "error: task `f` has nothing left to discard (its branch was merged, discarded, or removed with its worktree)\n")
            .then_some(())
    });
    let discards = ws
        .records()
        .iter()
        .filter(|r| matches!(&r.event, Event::Discarded { task } if task == "f"))
        .count();
    assert_eq!(discards, 0, "expected no `discarded` recorded for nothing");
}

/// A `verify` command whose child escapes its group (`setsid`) leaves nothing behind: not after
/// a cancel stops the check, nor after the daemon's stop does.
#[test]
fn what_a_check_leaves_behind_goes_with_it_at_a_cancel_and_at_a_stop() {
    for stop_how in ["cancel", "stop"] {
        let gate = tempfile::tempdir().unwrap();
        let inside = gate.path().join("inside");
        let config = format!(
            "{AGENT}default_chain: [ed]\nmerge: auto\nverify: [sh, -c, \"setsid sh -c 'exec sleep 777' & touch {}; trap '' TERM; while :; do sleep 0.05; done\"]\n",
            inside.display()
        );
        let ws = repo_workspace(&config);
        let mut daemon = ws.start();
        ws.drop_task("esc.md", "replace a.txt slot2 slot2-by-esc\n");
        ws.wait_until("the check to start", || inside.exists().then_some(()));
        if stop_how == "cancel" {
            let out = ws.cli(&["cancel", "esc"]);
            assert!(out.status.success(), "expected cancel accepted: {out:?}");
            ws.wait_for("the task to be cancelled", |recs| {
                recs.iter()
                    .any(|r| matches!(&r.event, Event::Cancelled { task } if task == "esc"))
                    .then_some(())
            });
        } else {
            assert!(daemon.stop().success(), "expected the daemon to stop");
        }
        assert!(
            ws.survivors().is_empty(),
            "{stop_how}: expected nothing of the check left, found {:?}",
            ws.survivors()
        );
        if stop_how == "cancel" {
            daemon.stop();
        }
    }
}

/// A git command that hangs (a slow clean filter, as git-lfs can be) when the daemon stops is
/// told to stop with it — with what it started — instead of running on, holding the index
/// lock against the next start; that start runs the task to the end.
#[test]
fn a_git_command_hanging_at_a_stop_is_stopped_and_the_next_start_finishes_the_task() {
    git_command_hanging_when_the_daemon_ends(false);
}

/// The same git command, when the daemon is killed (SIGKILL) instead: it runs on, orphaned.
/// The next start asks it to stop before anything runs (git removes its `index.lock` then;
/// killed, it would leave the lock and the task's worktree unusable) and runs the task to the
/// end.
#[test]
fn a_git_command_left_hanging_by_a_crash_is_stopped_by_the_next_start() {
    git_command_hanging_when_the_daemon_ends(true);
}

fn git_command_hanging_when_the_daemon_ends(crash: bool) {
    let ws = repo_workspace(&format!(
        "{AGENT}default_chain: [ed]\nmerge: manual\nconcurrency: 1\n"
    ));
    let filter = ws.root().join("hang-filter.sh");
    std::fs::write(
        &filter,
        format!(
            "#!/bin/sh\nif [ -e {root}/HANG ]; then echo $$ > {root}/filter.pid; sleep 600; fi\ncat\n",
            root = ws.root().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&filter, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(ws.root().join(".gitattributes"), "*.txt filter=hang\n").unwrap();
    git(
        ws.root(),
        &["config", "filter.hang.clean", &filter.display().to_string()],
    );
    std::fs::write(
        ws.root().join(".gitignore"),
        ".env\nnode_modules\nHANG\nfilter.pid\nhang-filter.sh\ndaemon.log\n",
    )
    .unwrap();
    git(ws.root(), &["add", "."]);
    git(ws.root(), &["commit", "--quiet", "-m", "a filter"]);
    std::fs::write(ws.root().join("HANG"), "").unwrap();

    let mut daemon = ws.start();
    ws.drop_task("h.md", "append a.txt from-h\n");
    let filter_pid: u32 = ws.wait_until("the filter to hang in the task's check", || {
        std::fs::read_to_string(ws.root().join("filter.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    });
    if crash {
        daemon.crash();
        assert!(
            !common::process_gone(filter_pid),
            "expected the filter to run on after the daemon was killed"
        );
    } else {
        assert!(daemon.stop().success(), "expected the daemon to stop");
        ws.wait_until("the hanging filter to be stopped", || {
            common::process_gone(filter_pid).then_some(())
        });
    }
    std::fs::remove_file(ws.root().join("HANG")).unwrap();
    let _daemon = ws.start();
    ws.wait_state("h", "merge_waiting");
    assert!(
        common::process_gone(filter_pid),
        "expected the hanging filter stopped before the task ran again"
    );
    // The cut-off is no bug of the attempt's: it is put back, not escalated.
    let log = std::fs::read_to_string(ws.root().join("daemon.log")).unwrap();
    assert!(
        !log.contains("internal error"),
        "expected the cut-off attempt left to the next start, log:\n{log}"
    );
}

/// `worktree.setup` runs before the agent: a cancel stops it at once and the task ends
/// `cancelled`; the daemon's stop puts the task back (it runs again at the next start) instead
/// of failing it.
#[test]
fn a_setup_is_stopped_by_a_cancel_and_survives_the_daemons_stop() {
    for stop_how in ["cancel", "stop"] {
        let gate = tempfile::tempdir().unwrap();
        let (inside, hang) = (gate.path().join("inside"), gate.path().join("hang"));
        std::fs::write(&hang, "").unwrap();
        let ws = repo_workspace(&format!(
            "{AGENT}default_chain: [ed]\nmerge: manual\nworktree:\n  setup: [sh, -c, \"touch {inside}; while [ -e {hang} ]; do sleep 0.05; done\"]\n",
            inside = inside.display(),
            hang = hang.display()
        ));
        let mut daemon = ws.start();
        ws.drop_task("s.md", "append a.txt from-s\n");
        ws.wait_until("the setup to run", || inside.exists().then_some(()));
        if stop_how == "cancel" {
            let out = ws.cli(&["cancel", "s"]);
            assert!(out.status.success(), "expected cancel accepted: {out:?}");
            ws.wait_state("s", "failed");
            let status = String::from_utf8_lossy(&ws.cli(&["status", "s"]).stdout).to_string();
            assert!(
                status.contains("state:    cancelled at "),
                "expected `s` cancelled during its setup: {status}"
            );
            daemon.stop();
        } else {
            assert!(daemon.stop().success(), "expected the daemon to stop");
            let requeued = ws
                .records()
                .iter()
                .any(|r| matches!(&r.event, Event::Requeued { task, .. } if task == "s"));
            assert!(
                requeued,
                "expected `s` put back at the stop, not failed; log:\n{}",
                std::fs::read_to_string(ws.root().join("daemon.log")).unwrap()
            );
            std::fs::remove_file(&hang).unwrap();
            let _daemon = ws.start();
            ws.wait_state("s", "merge_waiting");
        }
        assert!(
            !ws.records()
                .iter()
                .any(|r| matches!(&r.event, Event::Escalated { task, .. } if task == "s")),
            "{stop_how}: expected no escalation of `s`"
        );
    }
}

/// An agent that commits its work itself (its own message and author) does not put those
/// commits on the target: they are folded into dirigent's one verified commit, whose trailers
/// say which task and agent made it.
#[test]
fn an_agents_own_commits_are_folded_into_one_commit_that_names_the_task() {
    let ws = repo_workspace(&format!("{AGENT}default_chain: [ed]\nmerge: auto\n"));
    let before = git(ws.root(), &["rev-parse", "main"]);
    let _daemon = ws.start();
    ws.drop_task(
        "own.md",
        "append b.txt first\ncommit the agent's first commit\nappend b.txt second\ncommit the agent's second commit\nappend b.txt third\n",
    );
    assert!(
        matches!(ws.wait_settled("own"), Event::Done { .. }),
        "expected the task done"
    );
    let log = git(
        ws.root(),
        &[
            "log",
            "--format=%an|%s|%b",
            &format!("{}..main", before.trim()),
        ],
    );
    assert_eq!(
        commits_of(&ws, "own"),
        1,
        "expected one commit of the task on main, log:\n{log}"
    );
    assert!(
        !log.contains("the agent's") && !log.contains("agent|"),
        "expected none of the agent's own commits on main, log:\n{log}"
    );
    assert_eq!(
        std::fs::read_to_string(ws.root().join("b.txt")).unwrap(),
        "first\nsecond\nthird\n",
        "expected all of the work merged"
    );
}

/// A worktree under `.context/worktrees/` that no task holds and the ledger cannot name (the
/// last task that held it is archived, or a crash came just after it was made) goes back to
/// the pool when git links it, instead of being removed at every start; the next task works
/// in it.
#[test]
fn a_pool_tree_the_ledger_cannot_name_is_pooled_again_at_start() {
    let ws = repo_workspace(&format!(
        "{AGENT}default_chain: [ed]\nmerge: manual\nconcurrency: 1\n"
    ));
    let slot = ws.path("worktrees/slot-7");
    git(
        ws.root(),
        &[
            "worktree",
            "add",
            "--quiet",
            "--detach",
            &slot.display().to_string(),
            "main",
        ],
    );
    let _daemon = ws.start();
    ws.drop_task("p.md", "append a.txt from-p\n");
    ws.wait_state("p", "merge_waiting");
    let made: Vec<std::path::PathBuf> = ws
        .records()
        .iter()
        .filter_map(|r| match &r.event {
            Event::WorktreeMade { path, .. } => Some(path.clone()),
            _ => None,
        })
        .collect();
    assert!(
        made.len() == 1 && made[0].ends_with("slot-7"),
        "expected the task in the pooled slot-7, got {made:?}"
    );
    let log = std::fs::read_to_string(ws.root().join("daemon.log")).unwrap();
    assert!(
        !log.contains("removing the worktree"),
        "expected no tree removed at start, log:\n{log}"
    );
}

/// `keep_failed` shortened by a reload applies to the trees already kept: they go by the new
/// time, not the one in force when their task failed.
#[test]
fn keep_failed_shortened_by_a_reload_applies_to_trees_kept_already() {
    let config = |keep: &str| {
        format!("{AGENT}default_chain: [ed]\nmerge: manual\nconcurrency: 1\nkeep_failed: {keep}\n")
    };
    let ws = repo_workspace(&config("1h"));
    let _daemon = ws.start();
    ws.drop_task("f.md", "append a.txt from-f\nrequire a.txt never-there\n");
    ws.wait_state("f", "failed");
    ws.write_config(&config("100ms"));
    ws.wait_for(
        "the failed task's tree to be given up by the new keep_failed",
        |recs| {
            recs.iter()
                .any(|r| matches!(&r.event, Event::WorktreeRemoved { task, .. } if task == "f"))
                .then_some(())
        },
    );
}

/// A helper a `verify` starts with `setsid` (a test server, say) lives as long as that check:
/// another task's attempt ending meanwhile does not take it for its own leftover (the check
/// carries its task's id), and the check's own end does.
#[test]
fn another_attempts_end_leaves_a_running_checks_setsid_helper_alone() {
    let ws = repo_workspace(&format!("{AGENT}concurrency: 2\nmerge: none\n"));
    let _d = ws.start();
    let check = r#"(setsid sh -c 'echo $$ > \"$DIRIGENT_WORKSPACE/helper.pid\"; exec sleep 60' &); while [ ! -e \"$DIRIGENT_WORKSPACE/go\" ]; do sleep 0.02; done; kill -0 $(cat \"$DIRIGENT_WORKSPACE/helper.pid\")"#;
    ws.drop_task(
        "v.json",
        &format!(
            r#"{{"prompt": "append a.txt checked", "agent": "ed", "verify": [["sh", "-c", "{check}"]]}}"#
        ),
    );
    let helper: u32 = ws.wait_until("the check's helper to start", || {
        std::fs::read_to_string(ws.root().join("helper.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    });
    ws.drop_task(
        "q.json",
        r#"{"prompt": "append b.txt quick", "agent": "ed2"}"#,
    );
    assert!(
        matches!(ws.wait_settled("q"), Event::Done { .. }),
        "expected the quick task done"
    );
    assert!(
        !common::process_gone(helper),
        "expected the running check's helper alive after another task's attempt ended"
    );
    std::fs::write(ws.root().join("go"), "").unwrap();
    assert!(
        matches!(ws.wait_settled("v"), Event::Done { .. }),
        "expected the checked task done: its check's helper was alive to the end"
    );
    ws.wait_until("its own check's end to take the helper", || {
        common::process_gone(helper).then_some(())
    });
}

/// MCP's `submit_task` with `wait` (what an assistant delegating an edit uses): verified work
/// that waits for review under `merge: manual` is an answer, not a failure — and names no
/// escalation report, since there is none.
#[test]
fn mcp_wait_answers_merge_waiting_work_as_verified_not_failed() {
    use std::io::{BufRead, Write};
    let ws = repo_workspace(&format!("{AGENT}default_chain: [ed]\nmerge: manual\n"));
    let _d = ws.start();
    // The MCP server asks the running daemon: wait until it answers.
    ws.wait_until("the daemon to answer", || {
        String::from_utf8_lossy(&ws.cli(&["status"]).stdout)
            .contains("this is its live state")
            .then_some(())
    });
    let mut mcp = std::process::Command::new(common::BIN)
        .args(["--root", &ws.root().display().to_string(), "mcp"])
        .env("DIRIGENT_STATE_DIR", ws.state.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut input = mcp.stdin.take().unwrap();
    for line in [
        r#"{"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-03-26", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}}"#,
        r#"{"jsonrpc": "2.0", "method": "notifications/initialized"}"#,
        r#"{"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "submit_task", "arguments": {"prompt": "append a.txt reviewed", "id": "m1", "wait": true}}}"#,
    ] {
        writeln!(input, "{line}").unwrap();
    }
    let out = std::io::BufReader::new(mcp.stdout.take().unwrap());
    let answer = out
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .find(|v| v["id"] == 2)
        .expect("an answer to the tool call");
    drop(input);
    let _ = mcp.wait();
    let result = &answer["result"];
    assert_ne!(
        result["isError"], true,
        "expected merge_waiting work answered as verified, got {answer}"
    );
    assert_eq!(
        result["structuredContent"]["state"], "merge_waiting",
        "expected the state in the answer: {answer}"
    );
    let text = result["content"][0]["text"].as_str().unwrap_or("");
    assert!(
        text.starts_with("task `m1` is verified and waits to be merged: ")
            && text.ends_with("Review it with task_diff, then merge_task (or discard_task)."),
        "expected what to do next, got {text:?}"
    );
}

/// `submit --wait` under `merge: auto` waits for the merge; when the merge is held up (here a
/// dirty checkout), it says once that it goes on waiting and what happens next — not a silent
/// hang — and ends when the merge lands.
#[test]
fn a_wait_held_up_by_an_auto_merge_says_so_and_ends_when_it_lands() {
    use std::io::BufRead;
    let ws = repo_workspace(&format!("{AGENT}default_chain: [ed]\nmerge: auto\n"));
    let _d = ws.start();
    std::fs::write(
        ws.root().join("a.txt"),
        format!("{}my own edit\n", main_file(&ws)),
    )
    .unwrap();
    let mut wait = std::process::Command::new(common::BIN)
        .args([
            "submit",
            "--wait",
            "--id",
            "w1",
            "replace a.txt slot2 slot2-by-w1",
        ])
        .env("DIRIGENT_ROOT", ws.root())
        .env("DIRIGENT_STATE_DIR", ws.state.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    let err = wait.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut said = Vec::new();
    let held = ws.wait_until("the wait to say it goes on", || {
        said.extend(lines.try_iter());
        said.iter().find(|l| l.contains("still waiting")).cloned()
    });
    assert!(
        held.ends_with("still waiting: it merges by itself once that is fixed; Ctrl-C leaves the wait (the task stays, and `dirigent status w1` follows it)"),
        "expected what the wait does next, got {held:?}"
    );
    git(ws.root(), &["commit", "--quiet", "-am", "my own edit"]);
    let status = wait.wait().unwrap();
    said.extend(lines.iter());
    assert!(
        status.success() && said.iter().any(|l| l.contains("merged into `main`")),
        "expected the wait to end with the merge, got {status}: {said:#?}"
    );
}

/// A workflow run's task whose merge conflicts says to retry the run — which resumes it —
/// not the task alone, after which the run would stay failed.
#[test]
fn a_runs_conflicting_task_says_to_retry_the_run() {
    let ws = repo_workspace(&format!("{AGENT}default_chain: [ed]\n"));
    ws.write_workflow(
        "clash",
        r#"
name: clash
phases:
  - name: execute
    type: parallel
    workdir: worktree
    tasks:
      - { name: one, prompt: "append a.txt tail-by-one", agent: ed }
      - { name: two, prompt: "append a.txt tail-by-two", agent: ed }
"#,
    );
    let _d = ws.start();
    ws.drop_task("run.json", r#"{"workflow": "clash"}"#);
    let end = ws.wait_settled("run");
    let Event::Escalated { reason, .. } = end else {
        panic!("expected the run escalated by the conflict, got {end:?}")
    };
    assert!(
        reason.contains(
            "`dirigent retry run` resumes the workflow run from this phase, running `run.execute."
        ) && !reason.contains("`dirigent retry run.execute."),
        "expected the advice to retry the run, got {reason}"
    );
}

/// A check that fails without printing anything is said so in the feedback round's prompt,
/// not shown as an empty block under "Its output ends".
#[test]
fn a_silent_failing_check_is_said_to_have_printed_nothing() {
    let ws = repo_workspace(&format!(
        "{AGENT}default_chain: [ed]\nmerge: none\nverify: [sh, -c, \"! grep -q broken a.txt\"]\n"
    ));
    let _d = ws.start();
    ws.drop_task(
        "quiet.md",
        "firsttry append a.txt broken\nonretry replace a.txt broken repaired\n",
    );
    assert!(
        matches!(ws.wait_settled("quiet"), Event::Done { .. }),
        "expected done on the feedback round"
    );
    let prompt = std::fs::read_to_string(ws.path("runs/quiet/2-ed.prompt")).unwrap();
    assert!(
        prompt.ends_with(
            "\n\nIt printed nothing.\n\nFix what it reports; the check runs again when you finish.\n"
        ),
        "expected the silent check said so, got:\n{prompt}"
    );
}

/// `verify` sees what a merge lands: a file only the work's own `.gitignore` hides (here a
/// self-ignoring `tests/.gitignore` with `*`) is not in the commit, so it is removed before
/// the check runs, and the reason says so; a file the user's checkout ignores too (`.env`)
/// stays, as build output and installed dependencies do.
#[test]
fn verify_runs_without_files_only_the_works_own_ignore_rules_hide() {
    let ws = repo_workspace(&format!(
        "{AGENT}default_chain: [ed]\nmerge: none\nverify_rounds: 0\nverify: [sh, -c, \"test -f .env || exit 3; test -f tests/needed || exit 4\"]\n"
    ));
    let _d = ws.start();
    ws.drop_task(
        "hide.md",
        "append a.txt work\nrun mkdir -p tests && printf '*\\n' > tests/.gitignore && echo fixture > tests/needed && echo local > .env\n",
    );
    let end = ws.wait_settled("hide");
    assert!(
        matches!(end, Event::Escalated { .. }),
        "expected the check to fail without the hidden file, got {end:?}\n{}",
        attempt_reasons(&ws)
    );
    let reasons = attempt_reasons(&ws);
    assert!(
        reasons.contains("failed (exit status: 4) — it ran without `tests/`, which only the work's own ignore rules hide: the commit does not hold them"),
        "expected `.env` kept (not exit 3) and `tests/` named as removed, got:\n{reasons}"
    );
}

/// `dirigent diff` on a terminal never passes the agent's escape sequences on (a window title,
/// a cleared screen); piped, the patch is as the agent wrote it, for `git apply`.
#[test]
fn diff_on_a_terminal_drops_the_agents_escape_sequences_and_a_pipe_keeps_them() {
    let ws = repo_workspace(&format!("{AGENT}default_chain: [ed]\nmerge: none\n"));
    let _d = ws.start();
    ws.drop_task(
        "esc.md",
        "run printf 'visible line\\033]0;PWNED\\007\\033[2J\\n' > notes.txt\n",
    );
    assert!(
        matches!(ws.wait_settled("esc"), Event::Done { .. }),
        "expected done:\n{}",
        attempt_reasons(&ws)
    );
    let piped = ws.cli(&["diff", "esc"]);
    assert!(
        piped.stdout.windows(4).any(|w| w == b"\x1b]0;"),
        "expected the patch as written in a pipe, got {:?}",
        String::from_utf8_lossy(&piped.stdout)
    );
    let script = r#"
import os, pty, sys
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
data = b""
while True:
    try:
        chunk = os.read(fd, 65536)
    except OSError:
        break
    if not chunk:
        break
    data += chunk
os.waitpid(pid, 0)
sys.stdout.write(data.decode("utf-8", "replace"))
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, common::BIN, "diff", "esc"])
        .env("DIRIGENT_ROOT", ws.root())
        .env("DIRIGENT_STATE_DIR", ws.state.path())
        .output()
        .expect("python3 runs");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("+visible line") && !shown.contains('\x1b') && !shown.contains("PWNED\x07"),
        "expected the line shown without its escape sequences, got {shown:?}"
    );
}

/// `dirigent merge` of a task that needs none says why: merged already (where, at which
/// commit), or kept as a branch for the user to merge with git (`merge: none`).
#[test]
fn merging_a_merged_or_unmerged_done_task_says_what_it_is() {
    for (mode, want) in [
        ("auto", "is merged already: into `main` at "),
        (
            "none",
            "is done without a merge (`merge: none`): its branch `dirigent/t` is kept for you — merge it with git (`git merge dirigent/t`)",
        ),
    ] {
        let ws = repo_workspace(&format!("{AGENT}default_chain: [ed]\nmerge: {mode}\n"));
        let _d = ws.start();
        ws.drop_task("t.md", "append a.txt done\n");
        assert!(
            matches!(ws.wait_settled("t"), Event::Done { .. }),
            "{mode}: expected done"
        );
        ws.wait_state("t", "done");
        let out = ws.cli(&["merge", "t"]);
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && said.contains(want),
            "{mode}: expected {want:?}, got {said:?}"
        );
    }
}

/// `merge --json` of a task whose branch conflicts with the target: `not_merged`, with why,
/// exit 1 — a failure, not a wait (`merge_waiting` is one that is tried again on its own).
#[test]
fn a_conflicting_merge_answers_not_merged_in_json() {
    let ws = repo_workspace(&format!(
        "{AGENT}default_chain: [ed]\nmerge: manual\nconcurrency: 2\n"
    ));
    let _d = ws.start();
    ws.drop_task("c1.md", "replace a.txt slot1 slot1-by-c1\n");
    ws.drop_task("c2.md", "replace a.txt slot1 slot1-by-c2\n");
    ws.wait_state("c1", "merge_waiting");
    ws.wait_state("c2", "merge_waiting");
    assert!(ws.cli(&["merge", "c1"]).status.success(), "c1 merges first");
    let out = ws.cli(&["merge", "c2", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("expected one JSON object ({e}): {out:?}"));
    assert!(
        v["id"] == "c2"
            && v["state"] == "not_merged"
            && v["resolving"] == false
            && v["reason"].as_str().is_some_and(|r| r.contains("a.txt")),
        "expected not_merged naming the conflicting file, got {v}"
    );
    // Failed, it is said what can be done instead.
    ws.wait_state("c2", "failed");
    let out = ws.cli(&["merge", "c2"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.starts_with("error: task `c2` failed (")
            && said.ends_with("and has nothing to merge; `dirigent retry c2` runs it again, `dirigent discard c2` throws its branch away\n"),
        "expected retry and discard named, got {said:?}"
    );
    // A task after it waits for a person: said where the user looks.
    ws.drop_task("w1.md", "append a.txt w1\n");
    ws.wait_state("w1", "merge_waiting");
    let out = ws.cli(&[
        "submit",
        "append a.txt w2",
        "--id",
        "w2",
        "--after",
        "w1",
        "--wait-for",
        "100ms",
    ]);
    let hint = "`w1` (verified, waiting to be merged: `dirigent merge w1`)";
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("starts once {hint} is done")),
        "expected submit to say what it waits for: {out:?}"
    );
    ws.wait_state("w2", "pending");
    let table = String::from_utf8_lossy(&ws.cli(&["status"]).stdout).into_owned();
    assert!(
        table.contains(&format!("↳ starts once {hint} is done")),
        "expected status to say it:\n{table}"
    );
}

/// A repository with no commit yet (`git init`, nothing committed) cannot give a task a
/// worktree: `submit` warns, and the task escalates saying so and what to do — not "no branch
/// `main`" with `main` checked out.
#[test]
fn a_repository_without_a_commit_is_said_to_have_none() {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "--quiet", "--initial-branch=main"]);
    std::fs::write(dir.path().join("a.txt"), "slot1\n").unwrap();
    let ws = Workspace::in_dir(dir, &format!("{AGENT}default_chain: [ed]\n"));
    let said = "the repository has no commit yet: a task's worktree starts from a commit; make one (`git add -A && git commit -m start`), or run the task in the workspace itself (`--workdir shared`)";
    let out = ws.cli(&["submit", "replace a.txt slot1 x", "--id", "n1"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("warning: {said}")),
        "expected submit to warn: {out:?}"
    );
    let _d = ws.start();
    match ws.wait_settled("n1") {
        Event::Escalated { reason, .. } => {
            assert!(reason.contains(said), "expected why, got {reason}")
        }
        other => panic!("expected escalated, got {other:?}"),
    }
}

/// A task whose work fails its check, with no agent left: the reason says the check failed
/// (not only that every agent did), and `status` keeps each attempt on one line however much
/// the check printed.
#[test]
fn work_that_fails_its_check_is_said_to_and_status_keeps_one_line_per_attempt() {
    let ws = repo_workspace(&format!(
        "{AGENT}default_chain: [ed]\nmerge: none\nverify_rounds: 0\nverify: [sh, -c, \"echo check says no; echo second line; exit 4\"]\n"
    ));
    let _d = ws.start();
    ws.drop_task("v1.md", "append a.txt v1\n");
    let Event::Escalated { reason, .. } = ws.wait_settled("v1") else {
        panic!("expected v1 escalated");
    };
    assert!(
        reason.contains("the work of ed did not pass the task's check (`verify`)"),
        "expected the check named, got {reason}"
    );
    ws.wait_state("v1", "failed");
    let detail = String::from_utf8_lossy(&ws.cli(&["status", "v1"]).stdout).into_owned();
    let attempt = detail
        .lines()
        .find(|l| l.starts_with("attempt 1: ed"))
        .unwrap_or_else(|| panic!("expected attempt 1 listed:\n{detail}"));
    assert!(
        attempt.contains(" verify ") && attempt.ends_with(" …"),
        "expected its first line and a mark that there is more: {attempt}"
    );
    assert!(
        !detail.lines().any(|l| l.starts_with("second line")),
        "no line of the check's output starts a line of the table:\n{detail}"
    );
}

/// A disk that fills while an attempt's work is committed is a pause, not a failure: the
/// attempt ends `interrupted` (the disk named), the task waits, and once there is room it runs
/// again and lands — nothing escalated. (Needs root for its small tmpfs; says `skipped` else.)
#[test]
fn a_disk_full_while_the_work_is_committed_pauses_and_the_task_runs_again() {
    let Some(disk) = common::small_disk("8m", |dir| {
        git(dir, &["init", "--quiet", "--initial-branch=main"]);
        std::fs::write(dir.join("a.txt"), "one\n").unwrap();
        git(dir, &["add", "."]);
        git(dir, &["commit", "--quiet", "-m", "first"]);
        // The first time, it fills the disk (outside its tree, leaving room for the ledger but
        // not for the work's objects); after that it only does the work.
        let agent = dir.join("agent.sh");
        std::fs::write(
            &agent,
            "#!/bin/sh\nhead -c 300000 /dev/urandom | base64 >> a.txt\nif [ ! -e \"$DIRIGENT_WORKSPACE/.once\" ]; then\n  touch \"$DIRIGENT_WORKSPACE/.once\"\n  avail=$(df --output=avail -B1 \"$DIRIGENT_WORKSPACE\" | tail -1)\n  head -c $((avail - 96 * 1024)) /dev/zero > \"$DIRIGENT_WORKSPACE/.filler\" 2>/dev/null\nfi\necho done\n",
        )
        .unwrap();
        std::fs::set_permissions(&agent, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        format!(
            "kill_grace: 200ms\nmerge: none\nagents:\n  ed: {{ command: [\"{}\"] }}\ndefault_chain: [ed]\n",
            agent.display()
        )
    }) else {
        return;
    };
    let ws = &disk.ws;
    let _d = ws.start();
    ws.drop_task("full.md", "add to a.txt\n");
    let first = ws.wait_for("the first attempt's end", |recs| {
        recs.iter().find_map(|r| match &r.event {
            Event::AttemptFinished {
                task,
                class,
                reason,
                ..
            } if task == "full" => Some(format!("{class}: {reason}")),
            _ => None,
        })
    });
    assert!(
        first.starts_with("interrupted: ")
            && first.contains(": the disk is full; it runs again when there is room ("),
        "expected the attempt interrupted by the full disk, got {first}"
    );
    std::fs::remove_file(ws.root().join(".filler")).unwrap();
    let end = ws.wait_settled("full");
    assert!(
        matches!(end, Event::Done { .. }),
        "expected done once there was room, got {end:?}\n{}",
        attempt_reasons(ws)
    );
}

/// `merge` answers once the task is done, not only merged: a `status` or a second `merge` right
/// after sees `done` (they saw `merging`, and a second merge was "queued").
#[test]
fn merge_answers_once_the_task_is_done() {
    let ws = repo_workspace(&format!("{AGENT}default_chain: [ed]\nmerge: manual\n"));
    let _d = ws.start();
    for round in 0..3 {
        let id = format!("r{round}");
        ws.drop_task(&format!("{id}.md"), &format!("append a.txt {id}\n"));
        ws.wait_state(&id, "merge_waiting");
        let out = ws.cli(&["merge", &id, "--json"]);
        assert_eq!(out.status.code(), Some(0), "expected merged: {out:?}");
        let status: serde_json::Value =
            serde_json::from_slice(&ws.cli(&["status", &id, "--json"]).stdout).unwrap();
        assert_eq!(
            status["state"], "done",
            "{id}: expected done right after `merge` answered, got {status}"
        );
    }
}
