//! Workflow runs end to end: phases become ordinary tasks through the same engine, with script
//! agents standing in for models.

mod common;

use common::{Workspace, process_gone};
use dirigent::ledger::Event;

const CONFIG: &str = r#"
kill_grace: 300ms
agents:
  alpha:  { command: ["{agents}/ok.sh"], prompt: stdin }
  beta:   { command: ["{agents}/ok.sh"], prompt: stdin }
  broken: { command: ["{agents}/fail.sh"] }
  gate:   { command: ["{agents}/gate.sh", "release"] }
roles:
  judge: [beta]
"#;

fn write_workflow(ws: &Workspace, name: &str, text: &str) {
    ws.write_workflow(name, text);
}

fn phases_completed(ws: &Workspace, run: &str) -> Vec<String> {
    ws.records()
        .iter()
        .filter_map(|r| match &r.event {
            Event::PhaseCompleted { task, phase, .. } if task == run => Some(phase.clone()),
            _ => None,
        })
        .collect()
}

fn prompt_of(ws: &Workspace, task: &str, agent: &str) -> String {
    std::fs::read_to_string(ws.path(&format!("runs/{task}/1-{agent}.prompt"))).unwrap()
}

#[test]
fn an_ensemble_where_one_proposer_fails_still_decides_and_later_phases_see_its_output() {
    let ws = Workspace::new(CONFIG);
    write_workflow(
        &ws,
        "demo",
        r#"
name: demo
vars: { feature: ~ }
phases:
  - name: propose
    type: ensemble
    agents: [alpha, broken, beta]
    judge: judge
    judge_mode: synthesize
    prompt: Propose {feature}
    output: docs/{feature}/direction.md
  - name: build
    type: single
    agent: alpha
    input: propose
    context: fresh
    prompt: Build {feature}
"#,
    );
    let _d = ws.start();
    let out = ws.cli(&[
        "workflow",
        "run",
        "demo",
        "--var",
        "feature=auth",
        "--id",
        "r1",
        "--wait",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("phase propose completed: docs/auth/direction.md"),
        "{err}"
    );
    assert_eq!(phases_completed(&ws, "r1"), ["propose", "build"]);
    // Each completion names its output with a digest of what it held.
    let digest = ws
        .records()
        .iter()
        .find_map(|r| match &r.event {
            Event::PhaseCompleted { phase, digest, .. } if phase == "propose" => {
                Some(digest.clone())
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(
        Some(digest),
        dirigent::fsutil::digest_file(&ws.root().join("docs/auth/direction.md"))
    );

    // The judge saw both good proposals and was told about the failed one.
    let judge = prompt_of(&ws, "r1.propose.judge", "beta");
    assert!(judge.starts_with("Propose auth"), "{judge}");
    assert!(judge.contains("Synthesize the best elements"), "{judge}");
    assert!(
        judge.contains("## Proposal 1 (from alpha)") && judge.contains("## Proposal 2 (from beta)"),
        "{judge}"
    );
    assert!(
        judge.contains("The proposal from broken is missing: it failed"),
        "{judge}"
    );
    // Its result is the phase output, and the prompt is kept next to it.
    assert!(
        std::fs::read_to_string(ws.root().join("docs/auth/direction.md"))
            .unwrap()
            .starts_with("ok from beta: Propose auth")
    );
    assert_eq!(
        std::fs::read_to_string(ws.root().join("docs/auth/direction.prompt.md"))
            .unwrap()
            .trim_end(),
        judge.trim_end()
    );
    // The next phase received the judged direction as its input.
    let build = prompt_of(&ws, "r1.build", "alpha");
    assert!(
        build.contains("## Output of phase `propose` (docs/auth/direction.md)"),
        "{build}"
    );
    // The run is a task like any other: done, with the last phase's output.
    assert!(
        matches!(ws.wait_settled("r1"), Event::Done { ref output, .. } if output == ".context/outbox/r1.build.md")
    );
}

#[test]
fn pick_and_sequential_proposers_see_the_earlier_proposals() {
    let ws = Workspace::new(CONFIG);
    write_workflow(
        &ws,
        "seq",
        "name: seq\nphases:\n  - name: plan\n    type: ensemble\n    mode: sequential\n    agents: [alpha, beta]\n    judge: alpha\n    judge_mode: pick\n    prompt: Plan it\n",
    );
    let _d = ws.start();
    ws.drop_task("s.json", r#"{"workflow": "seq"}"#);
    assert!(matches!(ws.wait_settled("s"), Event::Done { .. }));
    let first = prompt_of(&ws, "s.plan.1", "alpha");
    assert!(!first.contains("Earlier proposals"), "{first}");
    let second = prompt_of(&ws, "s.plan.2", "beta");
    assert!(
        second
            .contains("Earlier proposals:\n\n## Proposal 1 (from alpha)\n\nok from alpha: Plan it"),
        "{second}"
    );
    let judge = prompt_of(&ws, "s.plan.judge", "alpha");
    assert!(judge.contains("Pick the best proposal"), "{judge}");
    // Sequential: the second proposer started only after the first had finished.
    let recs = ws.records();
    let pos = |pred: &dyn Fn(&Event) -> bool| recs.iter().position(|r| pred(&r.event)).unwrap();
    assert!(
        pos(&|e| matches!(e, Event::Done { task, .. } if task == "s.plan.1"))
            < pos(&|e| matches!(e, Event::AttemptStarted { task, .. } if task == "s.plan.2"))
    );
}

#[test]
fn a_killed_daemon_resumes_a_workflow_without_rerunning_finished_phases() {
    let ws = Workspace::new(CONFIG);
    write_workflow(
        &ws,
        "two",
        "name: two\nphases:\n  - name: first\n    type: single\n    agent: alpha\n    prompt: One\n  - name: second\n    type: single\n    agent: gate\n    input: first\n    prompt: Two\n",
    );
    let mut d = ws.start();
    ws.drop_task("w.json", r#"{"workflow": "two"}"#);
    ws.wait_for("the second phase to run", |recs| {
        recs.iter()
            .any(|r| matches!(&r.event, Event::AttemptStarted { task, .. } if task == "w.second"))
            .then_some(())
    });
    ws.wait_for("its first line", |_| {
        std::fs::read_to_string(ws.path("runs/w.second/1-gate.stdout"))
            .ok()
            .filter(|s| s.contains("waiting"))
    });
    d.crash();
    let _d = ws.start();
    std::fs::write(ws.root().join("release"), "").unwrap();
    assert!(matches!(ws.wait_settled("w"), Event::Done { .. }));
    let recs = ws.records();
    let attempts = |task: &str| {
        recs.iter()
            .filter(|r| matches!(&r.event, Event::AttemptStarted { task: t, .. } if t == task))
            .count()
    };
    assert_eq!(attempts("w.first"), 1, "a finished phase ran again");
    assert_eq!(attempts("w.second"), 2, "interrupted once, then run again");
    assert_eq!(phases_completed(&ws, "w"), ["first", "second"]);
}

#[test]
fn a_failed_phase_escalates_the_run_naming_the_phase() {
    let ws = Workspace::new(CONFIG);
    write_workflow(
        &ws,
        "bad",
        "name: bad\nphases:\n  - name: only\n    type: ensemble\n    agents: [broken, broken]\n    judge: alpha\n    min_proposals: 1\n    prompt: Try\n",
    );
    let _d = ws.start();
    ws.drop_task("b.json", r#"{"workflow": "bad"}"#);
    let Event::Escalated { reason, .. } = ws.wait_settled("b") else {
        panic!("not escalated")
    };
    // With why each proposal failed: the cause and its fix are in their reasons.
    assert!(
        reason.starts_with(
            "phase `only` failed: only 0 of 2 proposals succeeded (`min_proposals` is 1) — broken, broken: every agent in the chain failed (broken)"
        ) && reason.matches("something went wrong").count() == 1,
        "expected each proposer's reason, got {reason:?}"
    );
}

#[test]
fn workflow_tasks_are_checked_before_they_are_accepted() {
    let ws = Workspace::new(CONFIG);
    write_workflow(
        &ws,
        "needs",
        "name: needs\nvars: { topic: ~ }\nphases:\n  - { name: a, type: single, agent: alpha, prompt: x }\n",
    );
    let stderr = |args: &[&str]| String::from_utf8_lossy(&ws.cli(args).stderr).into_owned();
    assert_eq!(
        stderr(&["workflow", "run", "needs"]),
        "error: workflow `needs` needs the variable `topic`: give it as `--var topic=…` (`\"vars\": {\"topic\": …}` in a task file or a request)\n"
    );
    assert_eq!(
        stderr(&[
            "workflow",
            "run",
            "needs",
            "--var",
            "topic=x",
            "--var",
            "colour=red"
        ]),
        "error: workflow `needs` has no variable `colour` (variables: topic)\n"
    );
    assert!(
        stderr(&["workflow", "run", "nope"])
            .starts_with("error: unknown workflow `nope` (workflows: bulk-refine,")
    );
    // Close names are suggested.
    assert!(
        stderr(&["workflow", "run", "needz"]).ends_with("; did you mean `needs`?\n"),
        "a mistyped workflow gets a suggestion"
    );
    assert_eq!(
        stderr(&["workflow", "run", "needs", "--var", "topik=x"]),
        "error: workflow `needs` has no variable `topik` (variables: topic); did you mean `topic`?\n"
    );
    assert!(common::list(&ws, "inbox").is_empty());
}

const LOOP_CONFIG: &str = r#"
kill_grace: 300ms
agents:
  gen:   { command: ["{agents}/counter.sh"] }
  judge: { command: ["{agents}/pass-round2.sh"], prompt: stdin }
"#;

#[test]
fn a_loop_passes_in_round_three_against_a_real_command_and_feeds_back() {
    let ws = Workspace::new(LOOP_CONFIG);
    write_workflow(
        &ws,
        "tdd3",
        r#"
name: tdd3
phases:
  - name: implement
    type: loop
    generator:
      agent: gen
      prompt: "Round {round}. Feedback: {feedback}"
    evaluator:
      command: ["sh", "-c", "n=$(cat counter); echo \"counter is $n, need 3\"; test \"$n\" -ge 3"]
    max_rounds: 5
"#,
    );
    let _d = ws.start();
    ws.drop_task("t.json", r#"{"workflow": "tdd3"}"#);
    assert!(
        matches!(ws.wait_settled("t"), Event::Done { ref output, .. } if output == ".context/outbox/t.implement.3.md")
    );
    let rounds: Vec<(u32, bool)> = ws
        .records()
        .iter()
        .filter_map(|r| match &r.event {
            Event::LoopRound { round, passed, .. } => Some((*round, *passed)),
            _ => None,
        })
        .collect();
    assert_eq!(
        rounds,
        [(1, false), (2, false), (3, true)],
        "passed in round 3"
    );
    // The evaluator's words went into the next round's prompt.
    let second = prompt_of(&ws, "t.implement.2", "gen");
    assert!(second.starts_with("Round 2. Feedback: `sh -c"), "{second}");
    assert!(second.contains("counter is 1, need 3"), "{second}");
    assert_eq!(
        std::fs::read_to_string(ws.root().join("counter"))
            .unwrap()
            .trim(),
        "3"
    );
}

/// How many loop rounds the ledger has a verdict for.
fn loop_rounds_recorded(ws: &Workspace) -> usize {
    ws.records()
        .iter()
        .filter(|r| matches!(r.event, Event::LoopRound { .. }))
        .count()
}

/// A workflow `slow` whose loop evaluator lingers: it starts a grandchild (its pid in
/// `evaluator.pid`) and ignores SIGTERM, so only a kill of its whole group ends it.
fn write_lingering_loop(ws: &Workspace) {
    let lingers = common::agents_dir().join("lingers.sh");
    write_workflow(
        ws,
        "slow",
        &format!(
            "name: slow\nphases:\n  - name: try\n    type: loop\n    generator: {{ agent: gen, prompt: again }}\n    evaluator: {{ command: [\"{}\", \"evaluator\"] }}\n    max_rounds: 2\n",
            lingers.display()
        ),
    );
}

/// A stop of the daemon ends a running evaluator with its whole process group and records no
/// verdict for the round: it is evaluated again after the restart.
#[test]
fn a_stop_ends_a_loop_evaluator_with_its_group_and_records_no_verdict() {
    let ws = Workspace::new(LOOP_CONFIG);
    write_lingering_loop(&ws);
    let mut d = ws.start();
    ws.drop_task("s.json", r#"{"workflow": "slow"}"#);
    let grandchild = ws.wait_for("the evaluator's grandchild", |_| {
        ws.agent_pid("evaluator.pid")
    });
    let status = d.stop();
    assert!(status.success(), "expected a clean stop, got {status}");
    assert!(
        process_gone(grandchild),
        "expected the evaluator's grandchild {grandchild} to die with its group at the stop"
    );
    let rounds = loop_rounds_recorded(&ws);
    assert_eq!(
        rounds, 0,
        "expected no verdict for a round whose evaluator was stopped"
    );
    // The next start evaluates the round again.
    std::fs::remove_file(ws.root().join("evaluator.pid")).unwrap();
    let _d = ws.start();
    let again = ws.wait_for("the evaluator to run again", |_| {
        ws.agent_pid("evaluator.pid")
    });
    assert_ne!(
        again, grandchild,
        "expected a new evaluator after the restart"
    );
}

/// Cancelling a run ends the loop evaluator it was waiting for, with its whole process group,
/// and records no verdict for the round.
#[test]
fn cancelling_a_run_ends_its_running_evaluator() {
    let ws = Workspace::new(LOOP_CONFIG);
    write_lingering_loop(&ws);
    let _d = ws.start();
    ws.drop_task("c.json", r#"{"workflow": "slow"}"#);
    let grandchild = ws.wait_for("the evaluator's grandchild", |_| {
        ws.agent_pid("evaluator.pid")
    });
    let out = ws.cli(&["cancel", "c"]);
    assert!(
        out.status.success(),
        "expected the cancel to be accepted: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ws.wait_for("the run's `cancelled`", |records| {
        records
            .iter()
            .any(|r| matches!(&r.event, Event::Cancelled { task } if task == "c"))
            .then_some(())
    });
    ws.wait_until("the evaluator's group to be killed", || {
        process_gone(grandchild).then_some(())
    });
    let rounds = loop_rounds_recorded(&ws);
    assert_eq!(
        rounds, 0,
        "expected no verdict from an evaluator its run's cancel ended"
    );
}

#[test]
fn a_loop_gives_up_at_max_rounds() {
    let ws = Workspace::new(LOOP_CONFIG);
    write_workflow(
        &ws,
        "never",
        "name: never\nphases:\n  - name: try\n    type: loop\n    generator: { agent: gen, prompt: again }\n    evaluator: { command: [\"false\"] }\n    max_rounds: 2\n",
    );
    let _d = ws.start();
    let out = ws.cli(&["workflow", "run", "never", "--id", "n", "--wait"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a run that gave up exits 1: {err}"
    );
    // `--wait` shows each round's task and verdict as it happens.
    for want in [
        "n.try.1: attempt 1: gen started",
        "phase try round 1: FAIL — `false` failed",
        "n.try.2: done by gen",
        "phase try round 2: FAIL",
    ] {
        assert!(err.contains(want), "--wait should show {want:?}:\n{err}");
    }
    let Event::Escalated { reason, .. } = ws.wait_settled("n") else {
        panic!("not escalated")
    };
    assert!(
        reason.starts_with("phase `try` gave up after 2 round(s): the evaluator never passed"),
        "{reason}"
    );
    assert!(
        reason.contains(
            "last feedback: `false` failed (exit status: 1; all its output: .context/runs/n/try-round2-evaluator.log):"
        ),
        "expected the reason to say where the evaluator's output is: {reason}"
    );
    // The phase it gave up at is `failed`, not `running`: nothing more happens to it.
    let status = String::from_utf8_lossy(&ws.cli(&["status", "n"]).stdout).into_owned();
    assert!(
        status
            .lines()
            .any(|l| l.contains("try") && l.contains("failed")),
        "expected phase `try` shown failed:\n{status}"
    );
    assert_eq!(
        std::fs::read_to_string(ws.root().join("counter"))
            .unwrap()
            .trim(),
        "2"
    );
}

#[test]
fn a_loop_with_an_agent_evaluator_parses_pass_and_fail() {
    let ws = Workspace::new(LOOP_CONFIG);
    write_workflow(
        &ws,
        "review",
        "name: review\nphases:\n  - name: improve\n    type: loop\n    generator: { agent: gen, prompt: \"improve: {feedback}\" }\n    evaluator: { agent: judge, prompt: Is it good? }\n    max_rounds: 4\n",
    );
    let _d = ws.start();
    ws.drop_task("r.json", r#"{"workflow": "review"}"#);
    assert!(matches!(ws.wait_settled("r"), Event::Done { .. }));
    let second = prompt_of(&ws, "r.improve.2", "gen");
    assert!(
        second.contains("improve: FAIL\nnot there yet: do more"),
        "{second}"
    );
    let judged = prompt_of(&ws, "r.improve.2.eval", "judge");
    assert!(
        judged.starts_with("Is it good?") && judged.contains("generated round 2"),
        "{judged}"
    );
}

const FANOUT_CONFIG: &str = r#"
agents:
  alpha:  { command: ["{agents}/ok.sh"], prompt: stdin }
  beta:   { command: ["{agents}/ok.sh"], prompt: stdin }
  lister: { command: ["{agents}/lister.sh"], prompt: stdin }
roles:
  backend: [beta]
"#;

#[test]
fn routing_sends_each_category_to_its_agent_from_a_task_list_an_earlier_phase_made() {
    let ws = Workspace::new(FANOUT_CONFIG);
    write_workflow(
        &ws,
        "build",
        r#"
name: build
phases:
  - name: decompose
    type: single
    agent: lister
    prompt: Split it
  - name: execute
    type: routed
    tasks_from: decompose
    routing: { frontend: alpha, backend: backend }
  - name: integrate
    type: single
    agent: alpha
    input: execute.outputs
    prompt: Integrate
"#,
    );
    let _d = ws.start();
    ws.drop_task("b.json", r#"{"workflow": "build"}"#);
    assert!(matches!(ws.wait_settled("b"), Event::Done { .. }));
    // Each category went to its agent (the backend role's chain is [beta]).
    let agent_of = |task: &str| {
        ws.records().iter().find_map(|r| match &r.event {
            Event::AttemptStarted { task: t, agent, .. } if t == task => Some(agent.clone()),
            _ => None,
        })
    };
    assert_eq!(agent_of("b.execute.1").as_deref(), Some("alpha"));
    assert_eq!(agent_of("b.execute.2").as_deref(), Some("beta"));
    assert!(prompt_of(&ws, "b.execute.1", "alpha").starts_with("build the form"));
    // The phase's output gathers every result, and the next phase reads it.
    let combined = std::fs::read_to_string(ws.path("outbox/b.execute.md")).unwrap();
    assert!(
        combined.contains("ok from alpha: build the form")
            && combined.contains("ok from beta: build the API"),
        "{combined}"
    );
    let integrate = prompt_of(&ws, "b.integrate", "alpha");
    assert!(
        integrate.contains("## Output of phase `execute`")
            && integrate.contains("ok from beta: build the API"),
        "{integrate}"
    );
}

#[test]
fn parallel_fans_out_then_synthesizes_and_map_runs_one_task_per_file_then_refines() {
    let ws = Workspace::new(FANOUT_CONFIG);
    std::fs::create_dir_all(ws.root().join("src")).unwrap();
    std::fs::write(ws.root().join("src/a.py"), "def a(): pass").unwrap();
    std::fs::write(ws.root().join("src/b.py"), "def b(): pass").unwrap();
    std::fs::write(ws.root().join("src/c.rs"), "fn c() {}").unwrap();
    write_workflow(
        &ws,
        "fan",
        r#"
name: fan
vars: { pattern: "src/*.py" }
phases:
  - name: research
    type: parallel
    tasks:
      - { name: docs, prompt: "Read the docs", agent: alpha }
      - { name: code, prompt: "Read the code", agent: beta }
    synthesize: { agent: alpha, prompt: "Combine the findings" }
  - name: tests
    type: map
    glob: "{pattern}"
    agent: beta
    prompt: "Write tests for {file}"
    output: docs/tests/{stem}.md
    refine: { agent: alpha, prompt: "Refine all tests" }
"#,
    );
    let _d = ws.start();
    ws.drop_task("f.json", r#"{"workflow": "fan"}"#);
    assert!(matches!(ws.wait_settled("f"), Event::Done { .. }));
    let synth = prompt_of(&ws, "f.research.synthesize", "alpha");
    assert!(
        synth.starts_with("Combine the findings")
            && synth.contains("ok from alpha: Read the docs")
            && synth.contains("ok from beta: Read the code"),
        "{synth}"
    );
    // One task per .py file, each seeing its file; none for the .rs file.
    let a = prompt_of(&ws, "f.tests.1", "beta");
    assert!(
        a.starts_with("Write tests for src/a.py")
            && a.contains("## src/a.py")
            && a.contains("def a(): pass"),
        "{a}"
    );
    assert!(ws.path("runs/f.tests.2").exists() && !ws.path("runs/f.tests.3").exists());
    assert!(
        std::fs::read_to_string(ws.root().join("docs/tests/b.md"))
            .unwrap()
            .starts_with("ok from beta: Write tests for src/b.py")
    );
    let refine = prompt_of(&ws, "f.tests.refine", "alpha");
    assert!(
        refine.contains("## src/a.py (docs/tests/a.md)")
            && refine.contains("## src/b.py (docs/tests/b.md)"),
        "{refine}"
    );
}

#[test]
fn scoped_and_fresh_contexts_contain_what_they_should_and_nothing_else() {
    let ws = Workspace::new(FANOUT_CONFIG);
    std::fs::create_dir_all(ws.root().join("notes")).unwrap();
    std::fs::write(ws.root().join("notes/one.md"), "NOTE ONE").unwrap();
    std::fs::write(ws.root().join("notes/two.md"), "NOTE TWO").unwrap();
    std::fs::write(ws.root().join("notes/secret.txt"), "NOT FOR THE MODEL").unwrap();
    write_workflow(
        &ws,
        "ctx",
        r#"
name: ctx
phases:
  - { name: a, type: single, agent: alpha, prompt: "Alpha says A" }
  - { name: b, type: single, agent: alpha, prompt: "Alpha says B" }
  - name: fresh
    type: single
    agent: beta
    input: a
    context: fresh
    prompt: "Fresh"
  - name: scoped
    type: single
    agent: beta
    context: scoped
    files: ["./notes/one.md", "notes/*.md"]
    prompt: "Scoped"
  - name: full
    type: single
    agent: beta
    context: full
    prompt: "Full"
"#,
    );
    let _d = ws.start();
    ws.drop_task("c.json", r#"{"workflow": "ctx"}"#);
    assert!(matches!(ws.wait_settled("c"), Event::Done { .. }));
    let fresh = prompt_of(&ws, "c.fresh", "beta");
    assert!(
        fresh.contains("Alpha says A") && !fresh.contains("Alpha says B"),
        "{fresh}"
    );
    let scoped = prompt_of(&ws, "c.scoped", "beta");
    // A file named and matched by a glob too goes in once (it was refused as named twice).
    assert!(
        scoped.contains("NOTE ONE") && scoped.contains("NOTE TWO"),
        "{scoped}"
    );
    assert_eq!(
        scoped.matches("## notes/one.md").count(),
        1,
        "expected notes/one.md once in:\n{scoped}"
    );
    assert!(
        !scoped.contains("NOT FOR THE MODEL") && !scoped.contains("Alpha says"),
        "{scoped}"
    );
    let full = prompt_of(&ws, "c.full", "beta");
    for earlier in [
        "Alpha says A",
        "Alpha says B",
        "## Output of phase `fresh`",
        "## Output of phase `scoped`",
    ] {
        assert!(full.contains(earlier), "{earlier:?} missing from:\n{full}");
    }
}

#[test]
fn distilled_contexts_hold_cached_summaries_not_the_raw_outputs() {
    let ws = Workspace::new(
        r#"
agents:
  alpha:  { command: ["{agents}/ok.sh"], prompt: stdin }
  beta:   { command: ["{agents}/ok.sh"], prompt: stdin }
  distiller: { command: ["{agents}/summarize.sh"], prompt: stdin }
"#,
    );
    write_workflow(
        &ws,
        "dist",
        r#"
name: dist
phases:
  - { name: a, type: single, agent: alpha, prompt: "Alpha says A" }
  - { name: b, type: single, agent: alpha, prompt: "Alpha says B" }
  - name: c
    type: single
    agent: beta
    context: distilled
    distill: { agent: distiller, prompt: "Summarize briefly" }
    prompt: "Plan from the summaries"
  - name: d
    type: single
    agent: beta
    context: distilled
    input: a
    distill: { agent: distiller }
    prompt: "Again"
"#,
    );
    let _d = ws.start();
    ws.drop_task("d.json", r#"{"workflow": "dist"}"#);
    assert!(matches!(ws.wait_settled("d"), Event::Done { .. }));
    let c = prompt_of(&ws, "d.c", "beta");
    assert!(
        c.contains("## Summary of phase `a`")
            && c.contains("## Summary of phase `b`")
            && c.contains("SUMMARY of"),
        "{c}"
    );
    assert!(
        !c.contains("Alpha says"),
        "the raw outputs leaked into a distilled context:\n{c}"
    );
    // The distill step's prompt is configurable, and summaries are cached and reused.
    assert!(prompt_of(&ws, "d.distill.a", "distiller").starts_with("Summarize briefly"));
    assert!(ws.path("outbox/d.distill.a.md").exists());
    let distills = ws
        .records()
        .iter()
        .filter(|r| matches!(&r.event, Event::AttemptStarted { task, .. } if task == "d.distill.a"))
        .count();
    assert_eq!(distills, 1, "the summary of `a` was made twice");
    let d = prompt_of(&ws, "d.d", "beta");
    assert!(
        d.contains("## Summary of phase `a`") && !d.contains("## Summary of phase `b`"),
        "{d}"
    );
}

#[test]
fn a_run_whose_variables_lead_an_output_out_of_the_workspace_is_refused_before_it_starts() {
    let ws = Workspace::new(CONFIG);
    // The phase output, once its variable is filled in, leads out of the workspace: the run is
    // refused when it is submitted, not halfway through.
    write_workflow(
        &ws,
        "inward",
        "name: inward\nvars: {dir: docs}\nphases:\n  - { name: a, type: single, agent: alpha, prompt: x, output: \"{dir}/x.md\" }\n",
    );
    let out = ws.cli(&["workflow", "run", "inward", "--var", "dir=../.."]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: workflow `inward`: with these variables, phase `a` cannot write its result: `output` path `../../x.md` contains `..`; it must stay inside the workspace\n"
    );
    // Dropped into the inbox, it is rejected with the same reason.
    let _d = ws.start();
    ws.drop_task(
        "i.json",
        r#"{"workflow": "inward", "vars": {"dir": "../.."}}"#,
    );
    let reason = ws.wait_until("the run to be rejected", || {
        std::fs::read_to_string(ws.path("rejected/i.json.error.txt")).ok()
    });
    assert!(
        reason.contains(
            "phase `a` cannot write its result: `output` path `../../x.md` contains `..`"
        ),
        "{reason}"
    );
}

#[test]
fn a_run_whose_task_cannot_be_submitted_escalates_instead_of_waiting() {
    // The first phase answers 2 MiB; the next phase reads all of it, over a task's size limit.
    let ws = Workspace::new(
        "kill_grace: 300ms\nagents:\n  big: { command: [\"{agents}/big.sh\", \"2\"] }\n  alpha: { command: [\"{agents}/ok.sh\"], prompt: stdin }\n",
    );
    write_workflow(
        &ws,
        "big",
        "name: big\nphases:\n  - name: a\n    type: single\n    agent: big\n    prompt: x\n  - name: b\n    type: single\n    agent: alpha\n    input: a\n    prompt: y\n",
    );
    let _d = ws.start();
    ws.drop_task("g.json", r#"{"workflow": "big"}"#);
    let Event::Escalated { reason, .. } = ws.wait_settled("g") else {
        panic!("the run should escalate")
    };
    assert!(
        reason.starts_with("its task `g.b` cannot be submitted: the task is ")
            && reason.contains("a task may have at most 1048576"),
        "{reason}"
    );
}

#[test]
fn every_built_in_workflow_runs_end_to_end_with_only_script_agents_and_no_roles() {
    // Whatever agents a user has: two script agents, no roles, no `models:`. The built-ins name
    // roles, which run on the default chain when the config does not define them.
    let config = "kill_grace: 300ms\nagents:\n  one: { command: [\"{agents}/model.sh\"], prompt: stdin }\n  two: { command: [\"{agents}/model.sh\"], prompt: stdin }\n";
    let ws = Workspace::new(config);
    // For `tdd`, whose evaluator is `cargo test`: a tiny crate whose tests pass.
    std::fs::create_dir_all(ws.root().join("src")).unwrap();
    std::fs::write(
        ws.root().join("Cargo.toml"),
        "[package]\nname = \"tdd-demo\"\nversion = \"0.1.0\"\nedition = \"2021\"\n[workspace]\n",
    )
    .unwrap();
    std::fs::write(
        ws.root().join("src/lib.rs"),
        "#[test]\nfn works() { assert_eq!(1 + 1, 2); }\n",
    )
    .unwrap();
    // For `bulk-refine`: files for its default glob.
    std::fs::write(ws.root().join("src/util.py"), "def util(): pass\n").unwrap();
    let _d = ws.start();
    let runs: &[(&str, &[&str])] = &[
        ("workshop", &["topic=caching"]),
        ("plan", &["goal=split the monolith"]),
        ("feature-build", &["feature=auth"]),
        ("tdd", &["goal=add a helper"]),
        ("research-implement-validate", &["topic=oauth"]),
        ("bulk-refine", &[]),
    ];
    for (name, vars) in runs {
        let mut args = vec!["workflow", "run", name, "--id", name, "--wait"];
        for v in *vars {
            args.extend(["--var", v]);
        }
        let out = ws.cli(&args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The full feature-build workflow went through every phase, routing each category.
    let phases: Vec<String> = ws
        .records()
        .iter()
        .filter_map(|r| match &r.event {
            Event::PhaseCompleted { task, phase, .. } if task == "feature-build" => {
                Some(phase.clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        phases,
        [
            "workshop",
            "plan",
            "decompose",
            "execute",
            "integrate",
            "audit"
        ]
    );
    assert!(
        std::fs::read_to_string(ws.root().join("docs/ai/auth/audits/verdict.md"))
            .unwrap()
            .starts_with("PASS")
    );
    assert!(ws.root().join("docs/ai/bulk/util.md").exists());
    // tdd's evaluator really ran `cargo test` on the crate, and it passed in round 1.
    let log = std::fs::read_to_string(ws.path("runs/tdd/implement-round1-evaluator.log")).unwrap();
    assert!(log.contains("test works ... ok"), "{log}");
}

/// The workflow format as users write it by hand: model names instead of agents, most phases
/// without a prompt, `{feature}` used without being declared, a routed phase reading the
/// decompose phase's Markdown list through `input`, `context_strategy`. Kept verbatim.
const FEATURE_BUILD_AS_WRITTEN: &str = r#"name: feature-build
description: "Full feature development with ensemble planning"

phases:
  - name: workshop
    type: ensemble
    models: [claude-sonnet, gemini-pro, gpt-4o]
    judge: claude-opus
    output: docs/ai/{feature}/workshop/direction.md
    
  - name: plan
    type: ensemble  
    models: [claude-sonnet, gemini-pro]
    judge: claude-opus
    input: workshop.output
    output: docs/ai/{feature}/plan.md
    
  - name: decompose
    type: single
    model: claude-opus
    input: plan.output
    output: docs/ai/{feature}/tasks.md
    
  - name: execute
    type: routed
    routing:
      frontend: gemini-pro
      backend: claude-sonnet
      test: claude-sonnet
    input: decompose.output
    context_strategy: scoped  # Only relevant files
    
  - name: integrate
    type: single
    model: claude-sonnet
    input: execute.outputs
    
  - name: audit
    type: single
    model: claude-opus
    input: [plan.output, integrate.output]
    output: docs/ai/{feature}/audits/verdict.md
"#;

#[test]
fn a_workflow_written_with_model_names_and_default_prompts_validates_and_runs_as_written() {
    // Script agents stand in for the models; `models:` says which runs which model name.
    let ws = Workspace::new(
        r#"
kill_grace: 300ms
agents:
  opus:   { command: ["{agents}/model.sh"], prompt: stdin }
  sonnet: { command: ["{agents}/model.sh"], prompt: stdin }
  gemini: { command: ["{agents}/model.sh"], prompt: stdin }
  gpt:    { command: ["{agents}/model.sh"], prompt: stdin }
models:
  claude-opus: opus
  claude-sonnet: sonnet
  gemini-pro: gemini
  gpt-4o: gpt
"#,
    );
    write_workflow(&ws, "feature-build", FEATURE_BUILD_AS_WRITTEN);
    let out = ws.cli(&["workflow", "validate", "feature-build"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "validate: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "variables: feature (required: used but not declared under `vars:`)",
        "decompose (single): `claude-opus` → a `models:` alias for `opus`: agent `opus`",
        "frontend: `gemini-pro` → a `models:` alias for `gemini`: agent `gemini`",
    ] {
        assert!(
            stdout.contains(want),
            "validate should say {want:?}:\n{stdout}"
        );
    }
    // `{feature}` is required though not declared.
    let out = ws.cli(&["workflow", "run", "feature-build"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: workflow `feature-build` needs the variable `feature`: give it as `--var feature=…` (`\"vars\": {\"feature\": …}` in a task file or a request)\n"
    );
    let _d = ws.start();
    let out = ws.cli(&[
        "workflow",
        "run",
        "feature-build",
        "--var",
        "feature=auth",
        "--id",
        "fb",
        "--wait",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        phases_completed(&ws, "fb"),
        [
            "workshop",
            "plan",
            "decompose",
            "execute",
            "integrate",
            "audit"
        ],
        "every phase completes, in order"
    );
    let agent_of = |task: &str| {
        ws.records().iter().find_map(|r| match &r.event {
            Event::AttemptStarted { task: t, agent, .. } if t == task => Some(agent.clone()),
            _ => None,
        })
    };
    let ran: Vec<(&str, Option<String>)> = [
        "fb.workshop.1",
        "fb.workshop.2",
        "fb.workshop.3",
        "fb.workshop.judge",
        "fb.decompose",
        "fb.execute.1",
        "fb.execute.2",
        "fb.execute.3",
        "fb.audit",
    ]
    .into_iter()
    .map(|t| (t, agent_of(t)))
    .collect();
    let want: Vec<(&str, Option<String>)> = [
        ("fb.workshop.1", "sonnet"),
        ("fb.workshop.2", "gemini"),
        ("fb.workshop.3", "gpt"),
        ("fb.workshop.judge", "opus"),
        ("fb.decompose", "opus"),
        ("fb.execute.1", "gemini"),
        ("fb.execute.2", "sonnet"),
        ("fb.execute.3", "sonnet"),
        ("fb.audit", "opus"),
    ]
    .into_iter()
    .map(|(t, a)| (t, Some(a.to_string())))
    .collect();
    assert_eq!(
        ran, want,
        "each model name ran on the agent `models:` maps it to"
    );
    // The decompose phase got the default prompt for its name, asking for the routing's
    // categories; its Markdown list became the routed tasks (details included).
    let decompose = prompt_of(&ws, "fb.decompose", "opus");
    assert!(
        decompose.contains(
            "`- [category] what to do`, where category is one of: backend, frontend, test"
        ),
        "{decompose}"
    );
    let backend = prompt_of(&ws, "fb.execute.2", "sonnet");
    assert!(
        backend.starts_with("the API\nwith pagination\n") && backend.contains("Carry out the task"),
        "{backend}"
    );
    assert!(
        !backend.contains("- [frontend] the form"),
        "a routed task gets its own item, not the whole list: {backend}"
    );
    let verdict = std::fs::read_to_string(ws.root().join("docs/ai/auth/audits/verdict.md"))
        .expect("the audit wrote its verdict where `output` says");
    assert!(verdict.starts_with("PASS"), "{verdict}");
    // The undeclared variable reached the prompts.
    assert!(
        prompt_of(&ws, "fb.audit", "opus").contains("- feature: auth"),
        "the default prompt lists the run's variables"
    );
}

#[test]
fn a_name_that_resolves_to_nothing_is_reported_with_the_lookup_and_a_fix() {
    let ws = Workspace::new(CONFIG);
    write_workflow(
        &ws,
        "m",
        "name: m\nphases:\n  - name: a\n    type: single\n    model: alpha-large\n  - name: b\n    type: single\n    model: alhpa\n",
    );
    let out = ws.cli(&["workflow", "validate", "m"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "an unresolvable model is a problem"
    );
    let f = ws.path("workflows/m.yaml");
    let f = f.display();
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "error: {f}:5:12: `alpha-large` is not an agent (configured: alpha, beta, broken, gate), an `agent:model` entry, a role (roles: backend, bulk, frontend, judge, planner, proposer, reviewer) or a `models:` alias. To run it, add `alpha-large: \"alpha:large\"` under `models:` in the config.\n\
error: {f}:8:12: `alhpa` is not an agent (configured: alpha, beta, broken, gate), an `agent:model` entry, a role (roles: backend, bulk, frontend, judge, planner, proposer, reviewer) or a `models:` alias. Did you mean `alpha`? To run it, add `alhpa: AGENT` (or `AGENT:MODEL`) under `models:` in the config.\n\
2 problems found\n"
        )
    );
}

#[test]
fn ensemble_proposers_on_one_role_start_with_different_agents() {
    let ws = Workspace::new(CONFIG);
    write_workflow(
        &ws,
        "e",
        "name: e\nphases:\n  - name: p\n    type: ensemble\n    models: [proposer, proposer]\n    judge: judge\n    prompt: Propose\n",
    );
    let _d = ws.start();
    ws.drop_task("e.json", r#"{"workflow": "e"}"#);
    assert!(
        matches!(ws.wait_settled("e"), Event::Done { .. }),
        "the run is done"
    );
    let agents: Vec<String> = ["e.p.1", "e.p.2"]
        .iter()
        .map(|t| {
            ws.attempts(t)
                .first()
                .map(|a| a.0.clone())
                .unwrap_or_default()
        })
        .collect();
    // `proposer` is not configured: the default chain (alpha, beta, broken, gate) runs it; the
    // second proposer starts one agent further.
    assert_eq!(
        agents,
        ["alpha", "beta"],
        "each proposer starts with its own agent"
    );
}

#[test]
fn a_placeholder_in_a_flow_style_map_gets_a_hint_to_quote_it() {
    let ws = Workspace::new(CONFIG);
    write_workflow(
        &ws,
        "flow",
        "name: flow\nphases:\n  - { name: a, type: single, agent: alpha, prompt: Plan {feature} now }\n",
    );
    let out = ws.cli(&["workflow", "validate", "flow"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(":3:") && err.contains("must be quoted (`prompt: \"Plan {feature}\"`)"),
        "the YAML error should point at line 3 and hint at quoting: {err}"
    );
}

#[test]
fn show_into_the_override_file_keeps_the_built_in_and_copy_makes_an_editable_copy() {
    let ws = Workspace::new(CONFIG);
    // What the shell does for `dirigent workflow show plan > .context/workflows/plan.yaml`:
    // the file exists, empty, before `show` runs.
    let target = ws.path("workflows/plan.yaml");
    let file = std::fs::File::create(&target).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dirigent"))
        .args(["workflow", "show", "plan"])
        .env("DIRIGENT_ROOT", ws.root())
        .stdout(file)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let saved = std::fs::read_to_string(&target).unwrap();
    assert!(
        saved.starts_with("# plan (built-in)\n") && saved.contains("type: ensemble"),
        "show wrote the built-in, not the empty file: {saved}"
    );
    let out = ws.cli(&["workflow", "validate", "plan"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the saved copy validates: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `copy` refuses to overwrite an existing copy, and makes one with --force.
    let out = ws.cli(&["workflow", "copy", "plan"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "error: `{}` exists already; edit it, or give `--force` to replace it with the built-in\n",
            target.display()
        )
    );
    let out = ws.cli(&["workflow", "copy", "plan", "--force"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        dirigent::workflow::BUILTIN
            .iter()
            .find(|(n, _)| *n == "plan")
            .unwrap()
            .1,
        "copy writes the built-in's text"
    );
}

#[test]
fn a_failed_run_reports_its_tasks_shows_them_in_status_and_resumes_with_retry() {
    let ws = Workspace::new(
        "kill_grace: 300ms\nagents:\n  alpha: { command: [\"{agents}/ok.sh\"], prompt: stdin }\n  flaky: { command: [\"{agents}/flaky.sh\"] }\n",
    );
    write_workflow(
        &ws,
        "two",
        "name: two\nphases:\n  - name: one\n    type: single\n    agent: alpha\n    prompt: First\n  - name: two\n    type: single\n    agent: flaky\n    input: one\n    prompt: Second\n  - name: three\n    type: single\n    agent: alpha\n    input: two\n    prompt: Third\n",
    );
    let _d = ws.start();
    let out = ws.cli(&["workflow", "run", "two", "--id", "r", "--wait"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "the run escalates: {err}");
    for want in [
        "r.one: attempt 1: alpha started",
        "r.one: done by alpha; result in .context/outbox/r.one.md",
        "phase one completed: .context/outbox/r.one.md",
        "r.two: attempt 1: flaky → exit",
        "r.two: failed: ",
        "escalated: phase `two` failed: ",
    ] {
        assert!(err.contains(want), "--wait should show {want:?}:\n{err}");
    }
    // The run's report lists its tasks and links the failed one's report, which exists.
    let report = std::fs::read_to_string(ws.path("escalations/r.md")).expect("the run's report");
    for want in [
        "- `one` → `.context/outbox/r.one.md`",
        "- `r.one` — done, last attempt on alpha → `.context/outbox/r.one.md`",
        "- `r.two` — **failed**, last attempt on flaky: ",
        "report: [escalations/r.two.md](r.two.md)",
        "`dirigent retry r`: the run resumes from the phase that failed",
    ] {
        assert!(
            report.contains(want),
            "the report should say {want:?}:\n{report}"
        );
    }
    assert!(
        ws.path("escalations/r.two.md").exists(),
        "the linked report exists"
    );
    // `status RUN` shows the phases and the tasks.
    let st = String::from_utf8_lossy(&ws.cli(&["status", "r"]).stdout).into_owned();
    for want in [
        "phases:\n  one                  completed → .context/outbox/r.one.md\n  two                  failed\n  three                not started\n",
        "tasks:\n  r.one                            done      alpha\n  r.two                            failed    flaky\n",
        "report: ",
    ] {
        assert!(st.contains(want), "status should show {want:?}:\n{st}");
    }
    // flaky.sh works the second time: `retry` resumes from the failed phase (once the daemon
    // has applied the escalation `--wait` saw in the ledger).
    ws.wait_state("r", "failed");
    let out = ws.cli(&["retry", "r"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "resuming the workflow run `r` after its 1 completed phase(s); running again: r.two\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ws.wait_for("the resumed run to be done", |recs| {
        recs.iter()
            .any(|r| matches!(&r.event, Event::Done { task, .. } if task == "r"))
            .then_some(())
    });
    assert_eq!(
        phases_completed(&ws, "r"),
        ["one", "two", "three"],
        "phase one completed once, then the rest"
    );
    assert_eq!(
        ws.attempts("r.one").len(),
        1,
        "the completed phase did not run again"
    );
    assert_eq!(
        ws.attempts("r.two"),
        [
            ("flaky".to_string(), "exit".to_string()),
            ("flaky".to_string(), "ok".to_string())
        ],
        "the failed task ran again"
    );
}

#[test]
fn a_run_whose_agent_is_not_installed_says_so() {
    let ws = Workspace::new(
        "kill_grace: 300ms\nagents:\n  ghost: { command: [\"definitely-not-installed-xyz\"] }\n",
    );
    write_workflow(
        &ws,
        "g",
        "name: g\nphases:\n  - name: only\n    type: single\n    model: ghost\n    prompt: Hi\n",
    );
    let _d = ws.start();
    ws.drop_task("g.json", r#"{"workflow": "g"}"#);
    let Event::Escalated { reason, .. } = ws.wait_settled("g") else {
        panic!("the run should escalate")
    };
    assert!(
        reason.starts_with("phase `only` failed: ")
            && reason.contains("`definitely-not-installed-xyz` is not installed"),
        "the run's reason names the real cause: {reason}"
    );
    let report = ws.wait_until("the run's report", || {
        std::fs::read_to_string(ws.path("escalations/g.md")).ok()
    });
    assert!(
        report.contains("**In short:**") && report.contains("definitely-not-installed-xyz"),
        "the report's advice comes from the failed task: {report}"
    );
}

#[test]
fn validate_json_gives_each_workflow_its_problems_or_its_variables_and_runners() {
    let ws = Workspace::new(CONFIG);
    write_workflow(
        &ws,
        "m",
        "name: m\nphases:\n  - name: a\n    type: single\n    model: alhpa\n",
    );
    write_workflow(
        &ws,
        "good",
        "name: good\nvars:\n  topic: null\n  depth: \"2\"\nphases:\n  - name: a\n    type: single\n    agent: alpha\n    prompt: \"About {topic} at {depth}\"\n",
    );
    let out = ws.cli(&["workflow", "validate", "m", "good", "--json"]);
    assert_eq!(out.status.code(), Some(1), "one has a problem: {out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("expected one JSON object ({e}): {out:?}"));
    let f = ws.path("workflows/m.yaml").display().to_string();
    assert_eq!(
        (&v["ok"], &v["problems"]),
        (&false.into(), &1.into()),
        "{v}"
    );
    let bad = &v["workflows"][0];
    assert_eq!(
        (&bad["name"], &bad["ok"], &bad["problems"][0]["file"]),
        (&"m".into(), &false.into(), &f.into()),
        "{v}"
    );
    assert_eq!(
        (&bad["problems"][0]["line"], &bad["problems"][0]["column"]),
        (&5.into(), &12.into()),
        "where the problem is: {v}"
    );
    assert!(
        bad["problems"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("Did you mean `alpha`?")),
        "the message as the text says it: {v}"
    );
    let good = &v["workflows"][1];
    assert_eq!(
        good["variables"],
        serde_json::json!([
            {"name": "depth", "default": "2", "required": false, "declared": true},
            {"name": "topic", "default": null, "required": true, "declared": true},
        ]),
        "{v}"
    );
    assert_eq!(
        good["phases"],
        serde_json::json!([{"name": "a", "type": "single", "runners": [
            {"step": "", "name": "alpha", "resolved": "agent `alpha`"}
        ]}]),
        "{v}"
    );
    // The error lines stay on stderr for people.
    assert!(
        String::from_utf8_lossy(&out.stderr).ends_with("1 problem found\n"),
        "{out:?}"
    );
}

/// A run's steps are its own. A task submitted first under a step's id is not taken as the
/// step: the run fails, saying so. While a run is live, a file naming it (`workflow_run`) that
/// it did not submit — an agent handing it a step's result or a verdict — and a task under its
/// ids (`<run>.…`) are refused; its own step runs and the run finishes.
#[test]
fn a_run_takes_only_its_own_tasks_as_its_steps() {
    let ws = Workspace::new(CONFIG);
    write_workflow(
        &ws,
        "one",
        "name: one\nphases:\n  - name: step\n    type: single\n    agent: gate\n    prompt: do it\n",
    );
    let _d = ws.start();
    ws.drop_task(
        "early.json",
        r#"{"id": "w1.step", "prompt": "forged", "agent": "alpha"}"#,
    );
    ws.wait_settled("w1.step");
    ws.drop_task("w1.json", r#"{"workflow": "one"}"#);
    let Event::Escalated { reason, .. } = ws.wait_settled("w1") else {
        panic!("expected the run w1 to fail");
    };
    assert!(
        reason
            .contains("the id `w1.step` its task needs is taken by a task this run did not submit"),
        "expected the foreign task named, got {reason}"
    );

    ws.drop_task("w2.json", r#"{"workflow": "one"}"#);
    ws.wait_started("w2.step");
    ws.drop_task(
        "forged.json",
        r#"{"id": "w2.step.judge", "prompt": "PASS", "agent": "alpha", "workflow_run": "w2"}"#,
    );
    let reason = ws.rejection("forged.json");
    assert!(
        reason.starts_with("`workflow_run` names `w2`, which did not submit this task"),
        "expected the forged step refused, got {reason}"
    );
    ws.drop_task(
        "under.json",
        r#"{"id": "w2.other", "prompt": "x", "agent": "alpha"}"#,
    );
    let reason = ws.rejection("under.json");
    assert!(
        reason.starts_with("the id `w2.other` is under the workflow run `w2`'s"),
        "expected an id under the run's refused, got {reason}"
    );
    std::fs::write(ws.root().join("release"), "").unwrap();
    let end = ws.wait_settled("w2");
    assert!(
        matches!(end, Event::Done { .. }),
        "expected the run done with its own step, got {end:?}"
    );
}

/// `logs` of a workflow run says what it is and names its tasks, with or without `-f`: a run
/// has no output of its own (it was "has not started an attempt yet").
#[test]
fn logs_of_a_workflow_run_name_its_tasks() {
    let ws = Workspace::new(CONFIG);
    write_workflow(
        &ws,
        "one",
        "name: one\nphases:\n  - name: step\n    type: single\n    agent: alpha\n    prompt: do it\n",
    );
    let _d = ws.start();
    ws.drop_task("r1.json", r#"{"workflow": "one"}"#);
    assert!(
        matches!(ws.wait_settled("r1"), Event::Done { .. }),
        "expected the run done"
    );
    for args in [&["logs", "r1"][..], &["logs", "-f", "r1"][..]] {
        let out = ws.cli(args);
        assert_ne!(out.status.code(), Some(0), "{args:?}: expected a failure");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with("error: `r1` is a workflow run (done): it has no output of its own; its tasks: `r1.step` (done). `dirigent logs TASK` shows one task's"),
            "{args:?}: expected the run's tasks named, got {err}"
        );
    }
}
