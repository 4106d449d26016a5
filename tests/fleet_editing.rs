//! Editing tasks across the fleet, against a real `nats-server` and a real git: a task
//! submitted on a node whose workspace is a repository is done in a worktree on a worker (of
//! the worker's cache of that repository), checked there, and comes back as a branch
//! `fleet/<worker>/<id>` — pushed, or as a bundle when the repository refuses the push. A
//! worker refuses a repository outside its `cluster.repositories`.

mod common;
#[path = "common/nats.rs"]
mod nats;

use std::path::Path;

use common::*;
use dirigent::ledger::Event;
use nats::*;

/// The submitting node `desk`: its workspace a repository on `main` with `a.txt`, in fleet
/// mode with `cluster.repository` naming itself; it knows the agent `ed` but has it not
/// installed.
fn desk(nats: &Nats) -> Workspace {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "--quiet", "--initial-branch=main"]);
    std::fs::write(dir.path().join("a.txt"), "slot1\n-\nslot2\n").unwrap();
    git(dir.path(), &["add", "."]);
    git(dir.path(), &["commit", "--quiet", "-m", "first"]);
    let config = format!(
        "concurrency: 2\ncluster:\n  url: {}\n  name: desk\n  ack_wait: 2s\n  work: false\n  repository: '{}'\nagents:\n  ed: {{ command: [\"absent-cli\"] }}\n",
        nats.url(),
        dir.path().display()
    );
    Workspace::in_dir(dir, &config)
}

/// The config of a worker named `name` that runs `ed` (the scriptable editor) and edits
/// repositories under `roots`. Its own `worktree.setup` leaves a file git does not ignore: a
/// tree of another node's repository must never get it (the task would be refused).
fn editor_config(nats: &Nats, name: &str, roots: &[&Path]) -> String {
    let roots: Vec<String> = roots.iter().map(|r| format!("'{}'", r.display())).collect();
    format!(
        "concurrency: 2\nworktree: {{ setup: [touch, setup-ran] }}\ncluster:\n  url: {}\n  name: {name}\n  ack_wait: 2s\n  repositories: [{}]\nagents:\n  ed: {{ command: [\"{{agents}}/editor.sh\"], prompt: stdin }}\n",
        nats.url(),
        roots.join(", ")
    )
}

/// A worker (not a repository itself) made from [`editor_config`].
fn editor_worker(nats: &Nats, name: &str, roots: &[&Path]) -> Workspace {
    Workspace::new(&editor_config(nats, name, roots))
}

fn result_text(ws: &Workspace, task: &str) -> String {
    let out = ws.cli(&["result", task]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn an_editing_task_is_done_on_a_worker_and_comes_back_as_a_branch() {
    let Some(nats) = Nats::start() else { return };
    let desk = desk(&nats);
    // It runs the `verify` another node's task brings (by default it would refuse the task).
    let worker = Workspace::new(
        &editor_config(&nats, "gpu", &[desk.root()])
            .replace("\nagents:", "\n  run_task_verify: true\nagents:"),
    );
    let main_before = git(desk.root(), &["rev-parse", "main"]);
    let _dd = desk.start();
    let _dw = worker.start();
    // Checked on the worker: `verify` must see the edit.
    desk.drop_task(
        "t1.json",
        r#"{"prompt": "replace a.txt slot1 slot1-by-fleet\n", "agent": "ed", "verify": ["grep", "-q", "slot1-by-fleet", "a.txt"]}"#,
    );
    let settled = desk.wait_settled("t1");
    assert!(
        matches!(settled, Event::Done { .. }),
        "expected `t1` done on the fleet, got {settled:?}\nworker's ledger: {:?}",
        worker.records()
    );
    let on_branch = git(desk.root(), &["show", "fleet/gpu/desk.t1:a.txt"]);
    assert_eq!(
        on_branch, "slot1-by-fleet\n-\nslot2\n",
        "expected the worker's edit on branch `fleet/gpu/desk.t1` of the submitting repository"
    );
    assert_eq!(
        git(desk.root(), &["rev-parse", "fleet/gpu/desk.t1~1"]),
        main_before,
        "expected the work to start from `main` as it was when the task was published"
    );
    assert_eq!(
        git(desk.root(), &["rev-parse", "main"]),
        main_before,
        "expected `main` untouched: merging fleet work is the user's decision"
    );
    assert_eq!(
        std::fs::read_to_string(desk.root().join("a.txt")).unwrap(),
        "slot1\n-\nslot2\n",
        "expected the user's checkout untouched"
    );
    let text = result_text(&desk, "t1");
    assert!(
        text.contains("The work is on branch `fleet/gpu/desk.t1`")
            && text.contains("git merge fleet/gpu/desk.t1"),
        "expected the result to say where the work is and how to merge it, got {text:?}"
    );
    // The worker worked in a worktree of its cache, never in its own workspace.
    assert!(
        !worker.root().join("a.txt").exists(),
        "expected no edit in the worker's own workspace"
    );
    let taken = worker
        .records()
        .into_iter()
        .find_map(|r| match r.event {
            Event::FleetTaken { edit, .. } => edit,
            _ => None,
        })
        .expect("the worker recorded the task's repository in `fleet_taken`");
    assert!(
        taken.cache.starts_with(worker.ctx().join("fleet/repos")),
        "expected the worker's cache under .context/fleet/repos, got {:?}",
        taken.cache
    );
}

#[test]
fn a_refused_push_brings_the_work_back_as_a_bundle() {
    let Some(nats) = Nats::start() else { return };
    let desk = desk(&nats);
    // The repository takes no pack: every push is refused; fetching from it still works.
    git(desk.root(), &["config", "receive.maxInputSize", "1"]);
    let worker = editor_worker(&nats, "gpu", &[desk.root()]);
    let _dd = desk.start();
    let _dw = worker.start();
    desk.drop_task(
        "t2.json",
        r#"{"prompt": "append b.txt new file by the fleet\n", "agent": "ed"}"#,
    );
    let settled = desk.wait_settled("t2");
    assert!(
        matches!(settled, Event::Done { .. }),
        "expected `t2` done, got {settled:?}"
    );
    let log = std::fs::read_to_string(worker.root().join("daemon.log")).unwrap_or_default();
    assert!(
        log.contains("it travels as a bundle"),
        "expected the worker to say the refused push went as a bundle; its log:\n{log}"
    );
    assert_eq!(
        git(desk.root(), &["show", "fleet/gpu/desk.t2:b.txt"]),
        "new file by the fleet\n",
        "expected the work unbundled as branch `fleet/gpu/desk.t2`"
    );
    assert!(
        result_text(&desk, "t2").contains("The work is on branch `fleet/gpu/desk.t2`"),
        "expected the result to name the branch"
    );
    let bundles = desk.ctx().join("fleet/bundles");
    let left: Vec<_> = std::fs::read_dir(&bundles)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "expected the bundle removed once fetched, found {left:?}"
    );
}

/// A worker runs no command of another machine's choosing unless its config says so: a task
/// that brings its own `verify` is refused, and its node told why.
#[test]
fn a_worker_refuses_a_task_that_brings_its_own_verify() {
    let Some(nats) = Nats::start() else { return };
    let desk = desk(&nats);
    let worker = editor_worker(&nats, "gpu", &[desk.root()]);
    let _dd = desk.start();
    let _dw = worker.start();
    let marker = desk.root().join("verify-ran");
    desk.drop_task(
        "t4.json",
        &format!(
            r#"{{"prompt": "replace a.txt slot1 x\n", "agent": "ed", "verify": ["touch", "{}"]}}"#,
            marker.display()
        ),
    );
    let settled = desk.wait_settled("t4");
    let Event::Escalated { reason, .. } = &settled else {
        panic!("expected `t4` escalated, got {settled:?}");
    };
    assert!(
        reason.contains("brings its own `verify` commands, which this worker does not run for other nodes (`cluster.run_task_verify: true`"),
        "expected the reason to say why and what allows it, got {reason:?}"
    );
    assert!(!marker.exists(), "expected the task's `verify` never run");
    assert!(
        !worker
            .records()
            .iter()
            .any(|r| matches!(r.event, Event::FleetTaken { .. })),
        "expected the worker never to take the task"
    );
}

#[test]
fn a_worker_refuses_a_repository_outside_its_roots() {
    let Some(nats) = Nats::start() else { return };
    let desk = desk(&nats);
    let elsewhere = tempfile::tempdir().unwrap();
    let worker = editor_worker(&nats, "gpu", &[elsewhere.path()]);
    let _dd = desk.start();
    let _dw = worker.start();
    desk.drop_task(
        "t3.json",
        r#"{"prompt": "replace a.txt slot1 nope\n", "agent": "ed"}"#,
    );
    let settled = desk.wait_settled("t3");
    let Event::Escalated { reason, .. } = &settled else {
        panic!("expected `t3` escalated, got {settled:?}");
    };
    assert!(
        reason.contains("outside this worker's `cluster.repositories`"),
        "expected the reason to name the allowed roots, got {reason:?}"
    );
    assert!(
        !worker
            .records()
            .iter()
            .any(|r| matches!(r.event, Event::FleetTaken { .. })),
        "expected the worker never to take the task"
    );
    let branches = git(desk.root(), &["branch", "--list", "fleet/*"]);
    assert!(
        branches.is_empty(),
        "expected no fleet branch, got {branches:?}"
    );
}

#[test]
fn a_task_that_only_answers_never_edits_the_workers_own_repository() {
    let Some(nats) = Nats::start() else { return };
    let desk = desk(&nats);
    // The worker's workspace is a repository of its own.
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "--quiet", "--initial-branch=main"]);
    std::fs::write(dir.path().join("w.txt"), "worker's own\n").unwrap();
    git(dir.path(), &["add", "."]);
    git(dir.path(), &["commit", "--quiet", "-m", "first"]);
    let worker = Workspace::in_dir(dir, &editor_config(&nats, "gpu", &[desk.root()]));
    let _dd = desk.start();
    let _dw = worker.start();
    desk.drop_task(
        "ask.json",
        r#"{"prompt": "append w.txt HACKED\nrun git rev-parse --show-toplevel 2>/dev/null || echo no-repository-here\n", "agent": "ed", "workdir": "shared"}"#,
    );
    let settled = desk.wait_settled("ask");
    assert!(
        matches!(settled, Event::Done { .. }),
        "expected `ask` done on the worker, got {settled:?}"
    );
    assert_eq!(
        std::fs::read_to_string(worker.root().join("w.txt")).unwrap(),
        "worker's own\n",
        "expected the worker's own files untouched by another node's task"
    );
    let text = result_text(&desk, "ask");
    assert!(
        text.contains("no-repository-here"),
        "expected git in the task's directory not to find the worker's repository, got {text:?}"
    );
    assert!(
        !worker.ctx().join("fleet/scratch/desk.ask").exists(),
        "expected the task's scratch directory removed once it settled"
    );
}
