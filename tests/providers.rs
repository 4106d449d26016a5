//! Provider stewardship against script agents that imitate the real CLIs' failures
//! (`tests/agents/fake-cli.sh`, on `PATH` as `claude`, `gemini`, `codex`, `opencode`, `aider`,
//! so the real presets judge them): failure classes, network retries with backoff, rate-limit
//! cooldowns that survive restarts, auth failures that disable a provider once, start limits.

mod common;

use common::{Daemon, Workspace, agents_dir};
use dirigent::ledger::{Event, Record};

/// A `bin/` in the workspace with the fake CLIs, and the daemon started with it first on PATH
/// and a home where every CLI is logged in.
fn start_with_fakes(ws: &Workspace) -> Daemon {
    start_logged_in(ws, &["claude", "gemini", "codex"])
}

/// Where each CLI keeps its login (what the credentials check looks for).
const LOGIN_FILES: &[(&str, &str)] = &[
    ("claude", ".claude/.credentials.json"),
    ("gemini", ".gemini/oauth_creds.json"),
    ("codex", ".codex/auth.json"),
];

/// Like [`start_with_fakes`], with only `logged_in` logged in, and no API key in the
/// environment (whatever the machine running the tests has).
fn start_logged_in(ws: &Workspace, logged_in: &[&str]) -> Daemon {
    let bin = ws.root().join("bin");
    if !bin.exists() {
        std::fs::create_dir(&bin).unwrap();
        for cli in ["claude", "gemini", "codex", "opencode", "aider"] {
            std::os::unix::fs::symlink(agents_dir().join("fake-cli.sh"), bin.join(cli)).unwrap();
        }
    }
    let home = ws.root().join("home");
    let _ = std::fs::remove_dir_all(&home);
    for (cli, file) in LOGIN_FILES {
        if logged_in.contains(cli) {
            let path = home.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "{}").unwrap();
        }
    }
    std::fs::create_dir_all(&home).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let mut env = vec![("PATH", path.as_str()), ("HOME", home.to_str().unwrap())];
    // No key and no moved config home from the machine running the tests: every variable the
    // presets' credentials checks read, emptied.
    for rule in dirigent::preset::PRESETS
        .iter()
        .filter_map(|p| p.credentials.as_ref())
    {
        env.extend(
            rule.env
                .iter()
                .chain(rule.home_var.iter())
                .map(|v| (*v, "")),
        );
    }
    env.push(("OPENAI_API_KEY", ""));
    ws.start_with(&env)
}

fn set_mode(ws: &Workspace, mode: &str) {
    let tmp = ws.root().join("mode.tmp");
    std::fs::write(&tmp, mode).unwrap();
    std::fs::rename(&tmp, ws.root().join("mode")).unwrap();
}

/// (agent, class) of every attempt of `task`.
fn attempts(ws: &Workspace, task: &str) -> Vec<(String, String)> {
    ws.attempts(task)
}

fn find<T>(records: &[Record], f: impl Fn(&Event) -> Option<T>) -> Vec<T> {
    records.iter().filter_map(|r| f(&r.event)).collect()
}

#[test]
fn each_cli_failure_is_classified_as_the_real_one_would_be() {
    let ws = Workspace::new(
        r#"
concurrency: 4
agents:
  claude-auth:     { preset: claude, env: { FAKE_MODE: auth } }
  claude-limit:    { preset: claude, env: { FAKE_MODE: rate_limit }, provider: claude-2 }
  claude-tool:     { preset: claude, env: { FAKE_MODE: tool_error }, provider: claude-3 }
  claude-garbled:  { preset: claude, env: { FAKE_MODE: bad_output }, provider: claude-4 }
  gemini-auth:     { preset: gemini, env: { FAKE_MODE: auth } }
  gemini-limit:    { preset: gemini, env: { FAKE_MODE: rate_limit }, provider: gemini-2 }
  codex-net:       { preset: codex, env: { FAKE_MODE: network }, retry: { attempts: 0 } }
  opencode-net:    { preset: opencode, env: { FAKE_MODE: network }, retry: { attempts: 0 } }
  opencode-cut:    { preset: opencode, env: { FAKE_MODE: bad_output }, provider: opencode-2 }
  aider-exit0:     { preset: aider, env: { FAKE_MODE: exit0_error }, retry: { attempts: 0 } }
  aider-tool:      { preset: aider, env: { FAKE_MODE: tool_error }, provider: aider-2 }
"#,
    );
    let _d = start_with_fakes(&ws);
    let want = [
        ("claude-auth", "auth"),
        ("claude-limit", "rate_limit"),
        ("claude-tool", "tool_error"),
        ("claude-garbled", "bad_output"),
        ("gemini-auth", "auth"),
        ("gemini-limit", "rate_limit"),
        ("codex-net", "network"),
        ("opencode-net", "network"),
        ("opencode-cut", "bad_output"),
        ("aider-exit0", "network"),
        ("aider-tool", "tool_error"),
    ];
    for (agent, _) in want {
        ws.drop_task(
            &format!("{agent}.json"),
            &format!(r#"{{"prompt": "p", "agent": "{agent}"}}"#),
        );
    }
    for (agent, class) in want {
        ws.wait_settled(agent);
        assert_eq!(
            attempts(&ws, agent),
            [(agent.to_string(), class.to_string())],
            "{agent}"
        );
    }
}

#[test]
fn a_network_failure_retries_the_same_agent_with_backoff_then_falls_through() {
    let ws = Workspace::new(
        r#"
concurrency: 1
agents:
  codex: { preset: codex, env: { FAKE_MODE: network },
           retry: { attempts: 2, delay: 200ms, factor: 2, jitter: 0 } }
  backup: { command: ["{agents}/ok.sh"] }
"#,
    );
    let _d = start_with_fakes(&ws);
    ws.drop_task("n.json", r#"{"prompt": "p", "chain": ["codex", "backup"]}"#);
    ws.wait_settled("n");
    assert_eq!(
        attempts(&ws, "n"),
        [
            ("codex".to_string(), "network".to_string()),
            ("codex".to_string(), "network".to_string()),
            ("codex".to_string(), "network".to_string()),
            ("backup".to_string(), "ok".to_string()),
        ]
    );
    let records = ws.records();
    let retries = find(&records, |e| match e {
        Event::AttemptFinished { retry_in_ms, .. } => Some(*retry_in_ms),
        _ => None,
    });
    assert_eq!(retries, [Some(200), Some(400), None, None]);
    // Each retry started no sooner than its backoff after the failure.
    let finished: Vec<u64> = records
        .iter()
        .filter(|r| matches!(r.event, Event::AttemptFinished { .. }))
        .map(|r| r.ts)
        .collect();
    let started: Vec<u64> = records
        .iter()
        .filter(|r| matches!(r.event, Event::AttemptStarted { .. }))
        .map(|r| r.ts)
        .collect();
    assert!(started[1] >= finished[0] + 200, "{started:?} {finished:?}");
    assert!(started[2] >= finished[1] + 400, "{started:?} {finished:?}");
}

/// The `provider_cooldown` records, as (provider, until_ms).
fn cooldowns(ws: &Workspace) -> Vec<(String, u64)> {
    find(&ws.records(), |e| match e {
        Event::ProviderCooldown {
            provider, until_ms, ..
        } => Some((provider.clone(), *until_ms)),
        _ => None,
    })
}

/// When `task`'s attempts started, in order, with their agent.
fn starts(ws: &Workspace, task: &str) -> Vec<(String, u64)> {
    ws.records()
        .iter()
        .filter_map(|r| match &r.event {
            Event::AttemptStarted { task: t, agent, .. } if t == task => {
                Some((agent.clone(), r.ts))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_rate_limited_provider_is_skipped_until_its_reset_also_across_a_restart() {
    let ws = Workspace::new(
        r#"
concurrency: 1
agents:
  claude: { preset: claude, env: { FAKE_MODE_FILE: mode, FAKE_RESET_SECS: "5" } }
  claude-sonnet: { preset: claude, model: sonnet, env: { FAKE_MODE_FILE: mode } }
  backup: { command: ["{agents}/ok.sh"] }
"#,
    );
    set_mode(&ws, "rate_limit");
    let mut d = start_with_fakes(&ws);
    // The first task meets the limit and goes on to the next agent.
    ws.drop_task(
        "a.json",
        r#"{"prompt": "p", "chain": ["claude", "backup"]}"#,
    );
    ws.wait_settled("a");
    assert_eq!(
        attempts(&ws, "a"),
        [
            ("claude".to_string(), "rate_limit".to_string()),
            ("backup".to_string(), "ok".to_string())
        ]
    );
    // The reset time came from what the CLI printed (`usage limit reached|<epoch>`).
    let all = cooldowns(&ws);
    let [(provider, until)] = &all[..] else {
        panic!("one cooldown: {all:?}")
    };
    let (provider, until) = (provider.clone(), *until);
    assert_eq!(provider, "claude");
    let failed_at = ws
        .records()
        .iter()
        .find(|r| matches!(r.event, Event::ProviderCooldown { .. }))
        .unwrap()
        .ts;
    // The CLI printed `date +%s` + 5 while it ran: after its start was recorded (rounded down to
    // the second) and before its failure was — however long the machine took in between.
    let started_at = starts(&ws, "a")[0].1;
    assert!(
        until >= started_at / 1000 * 1000 + 5_000 && until <= failed_at + 5_000,
        "the reset must be 5 s after the CLI ran (start recorded at {started_at}, failure at {failed_at}), not {until}"
    );
    // The provider is fine again by the time it is used again.
    set_mode(&ws, "ok");

    // A restart does not forget it: a task that may use either agent skips the provider while
    // it cools down (both agents are on it), and one pinned to it waits for the reset.
    assert!(d.stop().success());
    let _d = start_with_fakes(&ws);
    ws.drop_task(
        "b.json",
        r#"{"prompt": "p", "chain": ["claude-sonnet", "backup"]}"#,
    );
    ws.drop_task("c.json", r#"{"prompt": "p", "agent": "claude"}"#);
    ws.wait_settled("b");
    let b = starts(&ws, "b");
    if b[0].1 < until {
        assert_eq!(b[0].0, "backup", "dispatched while cooling down: {b:?}");
    }
    let agents = ws.cli(&["agents", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&agents.stdout).unwrap();
    let claude = report["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "claude")
        .unwrap()
        .clone();
    if dirigent::ledger::now_ms() < until {
        assert_eq!(claude["availability"]["state"], "cooling_down", "{claude}");
        assert_eq!(claude["availability"]["until_ms"], until);
    }
    ws.wait_settled("c");
    let c = starts(&ws, "c");
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(c[0].0, "claude");
    assert!(
        c[0].1 >= until,
        "used again only after the reset: {c:?} < {until}"
    );
    assert_eq!(
        attempts(&ws, "c"),
        [("claude".to_string(), "ok".to_string())]
    );
}

#[test]
fn an_auth_failure_disables_the_provider_once_until_it_is_enabled() {
    let ws = Workspace::new(
        r#"
concurrency: 1
agents:
  claude: { preset: claude, env: { FAKE_MODE_FILE: mode } }
  backup: { command: ["{agents}/ok.sh"] }
default_chain: [claude, backup]
"#,
    );
    set_mode(&ws, "auth");
    let _d = start_with_fakes(&ws);
    for id in ["t1", "t2", "t3"] {
        ws.drop_task(&format!("{id}.json"), r#"{"prompt": "p"}"#);
        ws.wait_settled(id);
    }
    assert_eq!(
        attempts(&ws, "t1"),
        [
            ("claude".to_string(), "auth".to_string()),
            ("backup".to_string(), "ok".to_string())
        ]
    );
    for id in ["t2", "t3"] {
        assert_eq!(
            attempts(&ws, id),
            [("backup".to_string(), "ok".to_string())],
            "{id}"
        );
    }
    let disabled = find(&ws.records(), |e| match e {
        Event::ProviderDisabled { provider, .. } => Some(provider.clone()),
        _ => None,
    });
    assert_eq!(disabled, ["claude"]);
    let log = std::fs::read_to_string(ws.root().join("daemon.log")).unwrap();
    assert_eq!(
        log.matches("failed to authenticate").count(),
        1,
        "one message, not one per task:\n{log}"
    );
    let text = String::from_utf8(ws.cli(&["agents"]).stdout).unwrap();
    assert!(
        text.contains("DISABLED since") && text.contains("`dirigent agents enable claude`"),
        "{text}"
    );
    // progress.md says it too (it is rewritten shortly after each change).
    ws.wait_until("progress.md to list the disabled provider", || {
        let p = std::fs::read_to_string(ws.path("progress.md")).unwrap_or_default();
        (p.contains("## Providers\n- claude: disabled since")
            && p.contains("then `dirigent agents enable claude`"))
        .then_some(())
    });

    // Fixed and enabled: used again.
    set_mode(&ws, "ok");
    let out = ws.cli(&["agents", "enable", "claude"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "`claude` and every agent on provider `claude` can run again\n"
    );
    // Several at once, as the advice writes it: each is answered; one refused makes it fail.
    let out = ws.cli(&["agents", "enable", "claude", "nosuch"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "`claude` (provider `claude`) is not disabled or cooling down\n"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: ") && err.contains("`nosuch`"),
        "expected the unknown agent refused by name, got {err:?}"
    );
    // For a script: one object, what was enabled and what was refused (either place of `--json`).
    for args in [
        ["agents", "enable", "claude", "nosuch", "--json"],
        ["agents", "--json", "enable", "claude", "nosuch"],
    ] {
        let out = ws.cli(&args);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("expected one JSON object ({e}): {out:?}"));
        assert_eq!(
            v["enabled"],
            serde_json::json!([{"agent": "claude", "message": "`claude` (provider `claude`) is not disabled or cooling down"}]),
            "{v}"
        );
        assert!(
            v["refused"][0]["agent"] == "nosuch"
                && v["refused"][0]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("`nosuch`")),
            "expected `nosuch` refused with why, got {v}"
        );
    }
    ws.drop_task("t4.json", r#"{"prompt": "p"}"#);
    ws.wait_settled("t4");
    assert_eq!(
        attempts(&ws, "t4"),
        [("claude".to_string(), "ok".to_string())]
    );

    // With the only agent disabled, a task escalates at once and says why.
    set_mode(&ws, "auth");
    ws.drop_task("t5.json", r#"{"prompt": "p", "agent": "claude"}"#);
    ws.wait_settled("t5");
    ws.drop_task("t6.json", r#"{"prompt": "p", "agent": "claude"}"#);
    let escalated = ws.wait_settled("t6");
    let Event::Escalated { reason, .. } = escalated else {
        panic!("{escalated:?}")
    };
    assert!(attempts(&ws, "t6").is_empty());
    assert!(
        reason.starts_with(
            "no agent left in the chain can run: `claude` is disabled after an auth failure"
        ),
        "{reason}"
    );
}

#[test]
fn start_limits_hold_per_agent_and_per_provider() {
    let ws = Workspace::new(
        r#"
concurrency: 4
providers:
  shared: { starts_per_minute: 2 }
agents:
  solo: { command: ["{agents}/ok.sh"], starts_per_minute: 1 }
  one:  { command: ["{agents}/ok.sh"], provider: shared }
  two:  { command: ["{agents}/ok.sh"], provider: shared }
  free: { command: ["{agents}/ok.sh"] }
"#,
    );
    let _d = ws.start();
    ws.drop_task("s1.json", r#"{"prompt": "p", "agent": "solo"}"#);
    ws.drop_task("s2.json", r#"{"prompt": "p", "agent": "solo"}"#);
    ws.drop_task("p1.json", r#"{"prompt": "p", "agent": "one"}"#);
    ws.drop_task("p2.json", r#"{"prompt": "p", "agent": "two"}"#);
    ws.drop_task("p3.json", r#"{"prompt": "p", "agent": "one"}"#);
    // Within the minute, exactly one solo start and two starts on the shared provider.
    let done = |recs: &[Record]| {
        recs.iter()
            .filter(|r| matches!(r.event, Event::Done { .. }))
            .count()
    };
    ws.wait_for("three tasks done", |recs| (done(recs) >= 3).then_some(()));
    // A task on an unlimited agent, after those: by the time it is done the scheduler has had
    // several rounds in which a start over the limit would have happened.
    ws.drop_task("free.json", r#"{"prompt": "p", "agent": "free"}"#);
    ws.wait_settled("free");
    let records = ws.records();
    let started = |agents: &[&str]| {
        records
            .iter()
            .filter(|r| matches!(&r.event, Event::AttemptStarted { agent, .. } if agents.contains(&agent.as_str())))
            .count()
    };
    assert_eq!(started(&["solo"]), 1);
    assert_eq!(started(&["one", "two"]), 2);
    assert_eq!(done(&records), 4);
}

/// The cost recorded for each attempt of `task`.
fn costs(ws: &Workspace, task: &str) -> Vec<Option<f64>> {
    find(&ws.records(), |e| match e {
        Event::AttemptFinished { task: t, usage, .. } if t == task => {
            Some(usage.as_ref().and_then(|u| u.cost_usd))
        }
        _ => None,
    })
}

#[test]
fn tokens_and_cost_are_recorded_and_priced_when_the_cli_gives_tokens_only() {
    let ws = Workspace::new(
        r#"
prices:
  gpt-5: { input: 1.25, output: 10 }
agents:
  claude: { preset: claude }
  codex:  { preset: codex, model: gpt-5 }
  opencode: { preset: opencode }
  gemini: { preset: gemini }
"#,
    );
    let _d = start_with_fakes(&ws);
    for agent in ["claude", "codex", "opencode", "gemini"] {
        ws.drop_task(
            &format!("{agent}.json"),
            &format!(r#"{{"prompt": "p", "agent": "{agent}"}}"#),
        );
    }
    for agent in ["claude", "codex", "opencode", "gemini"] {
        ws.wait_settled(agent);
    }
    let usage = |task: &str| {
        find(&ws.records(), |e| match e {
            Event::AttemptFinished { task: t, usage, .. } if t == task => usage.clone(),
            _ => None,
        })
        .remove(0)
    };
    let claude = usage("claude");
    assert_eq!((claude.input_tokens, claude.output_tokens), (1200, 300));
    assert_eq!(claude.cost_usd, Some(0.0123));
    let codex = usage("codex");
    assert_eq!((codex.input_tokens, codex.output_tokens), (500, 50));
    // 500 × $1.25/M + 50 × $10/M
    assert!(
        (codex.cost_usd.unwrap() - 0.001125).abs() < 1e-12,
        "{codex:?}"
    );
    let opencode = usage("opencode");
    assert_eq!(opencode.cost_usd, Some(0.002));
    let gemini = usage("gemini");
    assert_eq!(
        (
            gemini.input_tokens,
            gemini.model.as_deref(),
            gemini.cost_usd
        ),
        (900, Some("gemini-2.5-pro"), None),
        "no price for it: tokens only"
    );
    let status = String::from_utf8(ws.cli(&["status"]).stdout).unwrap();
    assert!(
        status.contains(
            "spend today (UTC): $0.0154 (claude $0.0123, codex $0.0011, opencode $0.0020)"
        ),
        "{status}"
    );
}

#[test]
fn status_shows_a_tasks_cost_against_the_configs_task_budget() {
    let ws = Workspace::new(
        r#"
budgets: { task: 2.0 }
agents:
  cheap: { command: ["{agents}/costly.sh", "0.01", "ok"], output: claude_json, prompt: stdin }
"#,
    );
    let _d = ws.start();
    ws.drop_task("t.json", r#"{"prompt": "p", "agent": "cheap"}"#);
    ws.wait_settled("t");
    let status = String::from_utf8(ws.cli(&["status", "t"]).stdout).unwrap();
    assert!(
        status.contains("cost:     $0.0100 of its $2.00 budget"),
        "expected the config's task budget shown: {status}"
    );
    let v: serde_json::Value =
        serde_json::from_slice(&ws.cli(&["status", "t", "--json"]).stdout).unwrap();
    assert_eq!(
        (&v["budget_usd"], &v["cost_usd"]),
        (&serde_json::json!(2.0), &serde_json::json!(0.01)),
        "{v}"
    );
}

#[test]
fn budgets_stop_work_at_the_limit_and_say_so_with_the_figures() {
    let ws = Workspace::new(
        r#"
concurrency: 1
budgets:
  agents: { capped: 0.5 }
agents:
  dear1:  { command: ["{agents}/costly.sh", "0.6", "fail"], output: claude_json, prompt: stdin }
  dear2:  { command: ["{agents}/costly.sh", "0.6", "fail"], output: claude_json, prompt: stdin }
  dear3:  { command: ["{agents}/costly.sh", "0.6", "fail"], output: claude_json, prompt: stdin }
  capped: { command: ["{agents}/costly.sh", "0.6", "ok"], output: claude_json, prompt: stdin }
  cheap:  { command: ["{agents}/costly.sh", "0.01", "ok"], output: claude_json, prompt: stdin }
"#,
    );
    let _d = ws.start();
    // A task's own budget: two failures at $0.60 use up $1.00; the third agent never starts.
    ws.drop_task(
        "t.json",
        r#"{"prompt": "p", "chain": ["dear1", "dear2", "dear3"], "budget_usd": 1.0}"#,
    );
    let Event::Escalated { reason, .. } = ws.wait_settled("t") else {
        panic!()
    };
    assert_eq!(costs(&ws, "t"), [Some(0.6), Some(0.6)]);
    assert_eq!(
        reason,
        "the budget is spent: `t` has cost $1.20 of its $1.00 over 2 attempt(s); raise `budget_usd` and `dirigent retry t`"
    );
    let status = String::from_utf8(ws.cli(&["status", "t"]).stdout).unwrap();
    assert!(
        status.contains("cost:     $1.20 of its $1.00 budget"),
        "{status}"
    );

    // An agent's daily budget: once spent, its tasks go to the next agent; alone, it escalates.
    ws.drop_task("a1.json", r#"{"prompt": "p", "agent": "capped"}"#);
    ws.wait_settled("a1");
    ws.drop_task(
        "a2.json",
        r#"{"prompt": "p", "chain": ["capped", "cheap"]}"#,
    );
    ws.wait_settled("a2");
    assert_eq!(
        attempts(&ws, "a2"),
        [("cheap".to_string(), "ok".to_string())]
    );
    ws.drop_task("a3.json", r#"{"prompt": "p", "agent": "capped"}"#);
    let Event::Escalated { reason, .. } = ws.wait_settled("a3") else {
        panic!()
    };
    assert_eq!(
        reason,
        "no agent left in the chain can run: `capped` has spent its daily budget ($0.60 of $0.50 today, UTC)"
    );
    let status = String::from_utf8(ws.cli(&["status"]).stdout).unwrap();
    assert!(
        status.contains("spend today (UTC): $1.81 (capped $0.60 of $0.50, cheap $0.0100, dear1 $0.60, dear2 $0.60)"),
        "{status}"
    );
}

#[test]
fn the_daily_budget_and_a_workflow_runs_budget_stop_work_too() {
    let ws = Workspace::new(
        r#"
concurrency: 1
budgets: { daily: 3.0 }
agents:
  dear: { command: ["{agents}/costly.sh", "0.6", "ok"], output: claude_json, prompt: stdin }
"#,
    );
    std::fs::write(
        ws.path("workflows/three.yaml"),
        "name: three\nphases:\n  - { name: a, type: single, agent: dear, prompt: a }\n  - { name: b, type: single, agent: dear, prompt: b }\n  - { name: c, type: single, agent: dear, prompt: c }\n",
    )
    .unwrap();
    let _d = ws.start();
    // A run's budget covers its tasks: after two phases ($1.20 ≥ $1.00) the third never starts.
    ws.drop_task("run.json", r#"{"workflow": "three", "budget_usd": 1.0}"#);
    let Event::Escalated { reason, .. } = ws.wait_settled("run") else {
        panic!()
    };
    assert!(
        reason.contains(
            "the budget is spent: `run` has cost $1.20 of its $1.00 over 2 attempt(s); raise `budget_usd` and `dirigent retry run`"
        ),
        "{reason}"
    );
    assert_eq!(costs(&ws, "run.c"), Vec::<Option<f64>>::new());
    // `status` shows the run's cost as its tasks', and a task's against its run's budget.
    let status = String::from_utf8(ws.cli(&["status", "run"]).stdout).unwrap();
    assert!(
        status.contains("cost:     $1.20 of its $1.00 budget"),
        "{status}"
    );
    let status = String::from_utf8(ws.cli(&["status", "run.b"]).stdout).unwrap();
    assert!(
        status.contains("cost:     $0.60 (its run `run` has cost $1.20 of its $1.00 budget)"),
        "{status}"
    );
    // The day's budget: $1.20 so far; three more tasks reach $3.00, the fourth is refused.
    for id in ["d1", "d2", "d3", "d4"] {
        ws.drop_task(&format!("{id}.json"), r#"{"prompt": "p", "agent": "dear"}"#);
        ws.wait_settled(id);
    }
    for id in ["d1", "d2", "d3"] {
        assert_eq!(costs(&ws, id), [Some(0.6)], "{id}");
    }
    let Event::Escalated { reason, .. } = ws.wait_settled("d4") else {
        panic!()
    };
    assert_eq!(
        reason,
        "the daily budget is spent: $3.00 of $3.00 today (UTC); raise `budgets.daily` or retry tomorrow"
    );
}

#[test]
fn a_best_role_orders_its_chain_by_the_record_and_still_explores() {
    let ws = Workspace::new(
        r#"
concurrency: 1
roles:
  pick: { agents: [flaky, good], strategy: best }
agents:
  flaky: { command: ["{agents}/fail.sh"] }
  good:  { command: ["{agents}/ok.sh"] }
"#,
    );
    let _d = ws.start();
    let mut chains = Vec::new();
    for n in 1..=12 {
        let id = format!("t{n:02}");
        ws.drop_task(&format!("{id}.json"), r#"{"prompt": "p", "role": "pick"}"#);
        ws.wait_settled(&id);
        let chain = find(&ws.records(), |e| match e {
            Event::Received { task, spec, .. } if *task == id => Some(spec.chain.join(",")),
            _ => None,
        });
        chains.push(chain[0].clone());
    }
    let configured = "flaky,good".to_string();
    let ranked = "good,flaky".to_string();
    // Five tasks gather data in the configured order; then the better agent goes first,
    // except every tenth task, which keeps the configured order.
    let mut want = vec![configured.clone(); 5];
    want.extend([
        ranked.clone(),
        ranked.clone(),
        ranked.clone(),
        ranked.clone(),
    ]);
    want.push(configured);
    want.extend([ranked.clone(), ranked]);
    assert_eq!(chains, want);
    assert_eq!(
        attempts(&ws, "t06"),
        [("good".to_string(), "ok".to_string())]
    );

    let bad = dirigent::config::Config::parse(
        "roles: { r: { agents: [a], strategy: cheapest } }\nagents: { a: { command: [x] } }\n",
        "t",
    )
    .unwrap_err()
    .to_string();
    assert!(
        bad.contains("role `r`: unknown strategy `cheapest` (strategies: order, best)"),
        "{bad}"
    );
}

#[test]
fn model_aliases_are_resolved_and_a_fallback_model_runs_before_the_next_agent() {
    let ws = Workspace::new(
        r#"
concurrency: 1
models: { claude-3-5-sonnet: qwen2.5-coder }
agents:
  local:  { command: ["{agents}/picky.sh", "{model}"], model: claude-3-5-sonnet,
            env: { PICKY_OK: qwen2.5-coder } }
  big:    { command: ["{agents}/picky.sh", "{model}"], model: opus, fallback_model: sonnet,
            env: { PICKY_OK: sonnet } }
  backup: { command: ["{agents}/ok.sh"] }
roles:
  review: ["big:haiku", backup]
"#,
    );
    let _d = ws.start();
    ws.drop_task("alias.json", r#"{"prompt": "p", "agent": "local"}"#);
    ws.drop_task("fb.json", r#"{"prompt": "p", "agent": "big"}"#);
    ws.drop_task("role.json", r#"{"prompt": "p", "role": "review"}"#);
    for id in ["alias", "fb", "role"] {
        ws.wait_settled(id);
    }
    // The alias is what the CLI was given.
    assert_eq!(
        std::fs::read_to_string(ws.path("outbox/alias.md")).unwrap(),
        "picky: ran qwen2.5-coder\n"
    );
    // opus fails, the same agent with its fallback model succeeds.
    assert_eq!(
        attempts(&ws, "fb"),
        [
            ("big".to_string(), "exit".to_string()),
            ("big:sonnet".to_string(), "ok".to_string())
        ]
    );
    // A role entry with a model: that model, then the agent's fallback, then the next agent.
    let chain = find(&ws.records(), |e| match e {
        Event::Received { task, spec, .. } if task == "role" => Some(spec.chain.clone()),
        _ => None,
    });
    assert_eq!(chain[0], ["big:haiku", "big:sonnet", "backup"]);
    assert_eq!(
        attempts(&ws, "role"),
        [
            ("big:haiku".to_string(), "exit".to_string()),
            ("big:sonnet".to_string(), "ok".to_string())
        ]
    );
    let bad = dirigent::config::Config::parse(
        "roles: { r: [\"a:\"] }\nagents: { a: { command: [x] } }\n",
        "t",
    )
    .unwrap_err()
    .to_string();
    assert!(
        bad.contains("role `r`: `a:` names no model after `:`"),
        "{bad}"
    );
}

#[test]
fn resource_groups_never_over_commit() {
    let ws = Workspace::new(
        r#"
concurrency: 6
resources: { local-gpu: 25 }
agents:
  qwen:  { command: ["{agents}/slow.sh", "0.3"], resources: { local-gpu: 20 } }
  llama: { command: ["{agents}/slow.sh", "0.3"], resources: { local-gpu: 20 } }
  tiny:  { command: ["{agents}/slow.sh", "0.3"], resources: { local-gpu: 5 } }
"#,
    );
    let _d = ws.start();
    let tasks = [
        ("q1", "qwen"),
        ("l1", "llama"),
        ("q2", "qwen"),
        ("l2", "llama"),
        ("t1", "tiny"),
        ("t2", "tiny"),
    ];
    for (id, agent) in tasks {
        ws.drop_task(
            &format!("{id}.json"),
            &format!(r#"{{"prompt": "p", "agent": "{agent}"}}"#),
        );
    }
    for (id, _) in tasks {
        ws.wait_settled(id);
    }
    // Replay the starts and ends: what runs never holds more than 25 of the group.
    let uses = |agent: &str| if agent == "tiny" { 5 } else { 20 };
    let (mut held, mut peak, mut big_together) = (0, 0, 0);
    let mut running: Vec<String> = Vec::new();
    for r in ws.records() {
        match &r.event {
            Event::AttemptStarted { agent, .. } => {
                held += uses(agent);
                running.push(agent.clone());
                let big = running.iter().filter(|a| *a != "tiny").count();
                big_together = big_together.max(big);
            }
            Event::AttemptFinished { agent, .. } => {
                held -= uses(agent);
                let i = running.iter().position(|a| a == agent).unwrap();
                running.remove(i);
            }
            _ => {}
        }
        peak = std::cmp::max(peak, held);
    }
    assert!(peak <= 25, "over-committed: {peak}");
    assert_eq!(big_together, 1, "two 20s never fit in 25");
    for (id, _) in tasks {
        assert_eq!(attempts(&ws, id).len(), 1, "{id}");
    }
    let bad = dirigent::config::Config::parse(
        "resources: { gpu: 10 }\nagents: { a: { command: [x], resources: { gpu: 11 } } }\n",
        "t",
    )
    .unwrap_err()
    .to_string();
    assert!(
        bad.contains("agent `a` takes 11 of `gpu`, which holds 10: it could never run"),
        "{bad}"
    );
    let undeclared = dirigent::config::Config::parse(
        "agents: { a: { command: [x], resources: { vram: 1 } } }\n",
        "t",
    )
    .unwrap_err()
    .to_string();
    assert!(
        undeclared.contains("uses resource group `vram`, which is not declared under `resources:`"),
        "{undeclared}"
    );
}

#[test]
fn isolated_instances_get_their_own_state_seeded_from_home() {
    let ws = Workspace::new(
        r#"
concurrency: 2
agents:
  claude: { preset: claude, isolate: true, env: { FAKE_MODE: whoami, FAKE_PEERS_DIR: peers } }
"#,
    );
    let home = ws.root().join("home");
    std::fs::create_dir_all(home.join(".claude")).unwrap();
    std::fs::write(home.join(".claude/.credentials.json"), "secret-1").unwrap();
    std::fs::create_dir(ws.root().join("peers")).unwrap();
    let bin = ws.root().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(agents_dir().join("fake-cli.sh"), bin.join("claude")).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let _d = ws.start_with(&[("PATH", &path), ("HOME", &home.display().to_string())]);
    // Two at once (each waits until the other runs): two instances.
    ws.drop_task("i1.json", r#"{"prompt": "p"}"#);
    ws.drop_task("i2.json", r#"{"prompt": "p"}"#);
    ws.wait_settled("i1");
    ws.wait_settled("i2");
    let result = |id: &str| std::fs::read_to_string(ws.path(&format!("outbox/{id}.md"))).unwrap();
    let inst = |n: usize| {
        ws.path(&format!("isolation/claude/{n}"))
            .display()
            .to_string()
    };
    let mut seen = vec![result("i1"), result("i2")];
    seen.sort();
    assert_eq!(
        seen,
        [
            format!("dir={} cred=secret-1\n", inst(0)),
            format!("dir={} cred=secret-1\n", inst(1)),
        ]
    );
    let mode = std::fs::metadata(ws.path("isolation/claude/0/.credentials.json"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let bad = dirigent::config::Config::parse(
        "agents: { aider: { preset: aider, isolate: true } }\n",
        "t",
    )
    .unwrap_err()
    .to_string();
    assert!(
        bad.contains("`isolate` works with the claude, gemini, codex and opencode presets"),
        "{bad}"
    );
}

/// What each real CLI printed offline (copied into the fake CLI), and the verdict dirigent must
/// reach: the right class, decided from the output while the CLI still runs — not by the
/// idle timeout minutes later (the presets' idle limits are 3–5 minutes; the test's patience is
/// one minute).
#[test]
fn offline_clis_are_stopped_as_soon_as_their_output_is_conclusive() {
    let ws = Workspace::new(
        r#"
concurrency: 4
agents:
  codex:       { preset: codex, env: { FAKE_MODE: offline }, retry: { attempts: 0 } }
  gemini:      { preset: gemini, env: { FAKE_MODE: offline }, retry: { attempts: 0 } }
  aider-nokey: { preset: aider, env: { FAKE_MODE: noauth } }
  aider:       { preset: aider, env: { FAKE_MODE: offline }, retry: { attempts: 0 }, provider: aider-2 }
"#,
    );
    let _d = start_with_fakes(&ws);
    let want = [
        // Its error events on stdout and its log on stderr interleave: any may be third.
        (
            "codex",
            "network",
            r"^its output said `(stream disconnected|failed to connect|error sending request)` \(3 times with no progress in between\)",
        ),
        (
            "gemini",
            "network",
            r"^its output said `fetch failed` \(2 times with no progress in between\)",
        ),
        (
            "aider-nokey",
            "auth",
            r"^its output said `no API keys were provided`; stopped at once$",
        ),
        (
            "aider",
            "network",
            r"^its output said `litellm\.InternalServerError` \(2 times with no progress in between\)",
        ),
    ];
    for (agent, _, _) in want {
        ws.drop_task(
            &format!("{agent}.json"),
            &format!(r#"{{"prompt": "p", "agent": "{agent}"}}"#),
        );
    }
    for (agent, class, reason) in want {
        ws.wait_settled(agent);
        let got = find(&ws.records(), |e| match e {
            Event::AttemptFinished {
                task,
                class,
                reason,
                stopped,
                kill_signal,
                ..
            } if task == agent => Some((
                class.as_str().to_string(),
                reason.clone(),
                *stopped,
                *kill_signal,
            )),
            _ => None,
        });
        assert_eq!(got.len(), 1, "{agent}: one attempt, got {got:?}");
        let (got_class, got_reason, stopped, kill_signal) = &got[0];
        assert_eq!(
            *kill_signal,
            Some(15),
            "{agent}: a CLI that obeys SIGTERM is stopped by it, without waiting for SIGKILL"
        );
        assert_eq!(got_class, class, "{agent}: {got_reason}");
        assert!(
            regex::Regex::new(reason).unwrap().is_match(got_reason),
            "{agent}: expected a reason matching {reason:?}, got {got_reason:?}"
        );
        assert_eq!(
            *stopped,
            Some(dirigent::judge::StopCause::Conclusive),
            "{agent}: stopped by its output"
        );
    }
}

/// A CLI with no login at all is judged `auth` without being started, and the reason says
/// what to run.
#[test]
fn a_cli_with_no_login_anywhere_is_not_started() {
    let ws = Workspace::new(
        r#"
agents:
  codex: { preset: codex, env: { FAKE_MODE: offline, FAKE_LOG: calls.log } }
  backup: { command: ["{agents}/ok.sh"] }
"#,
    );
    let _d = start_logged_in(&ws, &["claude", "gemini"]);
    ws.drop_task("c.json", r#"{"prompt": "p", "chain": ["codex", "backup"]}"#);
    assert!(matches!(ws.wait_settled("c"), Event::Done { .. }));
    assert_eq!(
        attempts(&ws, "c"),
        [
            ("codex".to_string(), "auth".to_string()),
            ("backup".to_string(), "ok".to_string())
        ]
    );
    let reason = find(&ws.records(), |e| match e {
        Event::AttemptFinished { reason, agent, .. } if agent == "codex" => Some(reason.clone()),
        _ => None,
    })
    .remove(0);
    assert!(
        reason.starts_with("not logged in: none of its credentials exists (no `")
            && reason.ends_with(
                "); run `codex login` (or set `CODEX_API_KEY`), then `dirigent agents enable codex` (not started)"
            ),
        "{reason}"
    );
    assert!(
        !ws.root().join("calls.log").exists(),
        "codex must not have been started"
    );
}

/// A chain of CLIs that are not logged in (or offline) escalates quickly, and the report's
/// first line says what to do — without suggesting a retry that would fail the same way.
#[test]
fn a_chain_with_no_logins_says_what_to_do_first() {
    let ws = Workspace::new(
        r#"
agents:
  claude: { preset: claude, env: { FAKE_MODE: auth } }
  codex:  { preset: codex, env: { FAKE_MODE: offline } }
  gemini: { preset: gemini, env: { FAKE_MODE: offline }, retry: { attempts: 0 } }
default_chain: [claude, codex, gemini]
"#,
    );
    let _d = start_logged_in(&ws, &["claude", "gemini"]);
    ws.drop_task("t.json", r#"{"prompt": "p"}"#);
    let Event::Escalated { reason, .. } = ws.wait_settled("t") else {
        panic!("expected an escalation")
    };
    let advice = "claude and codex need a login (claude: run `claude`, log in with `/login` (or set `ANTHROPIC_API_KEY`); codex: run `codex login` (or set `CODEX_API_KEY`)), then `dirigent agents enable claude codex`; gemini could not reach its provider (offline, a proxy, or the provider is down): check the connection";
    assert_eq!(
        reason,
        format!("every agent in the chain failed (claude → codex → gemini): {advice}")
    );
    let report = std::fs::read_to_string(ws.path("escalations/t.md")).unwrap();
    let lines: Vec<&str> = report.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines[1], format!("**In short:** {advice}."), "{report}");
    assert_eq!(
        lines[2], "**Why:** every agent in the chain failed (claude → codex → gemini)",
        "{report}"
    );
    assert!(
        report.contains("## What now\n\nFirst log in or install as **In short** says"),
        "{report}"
    );
    // `status` says it under the task's line too.
    let status = String::from_utf8_lossy(&ws.cli(&["status"]).stdout).into_owned();
    assert!(
        status.contains(&format!(
            "\n{:<28} ↳ every agent in the chain failed (claude → codex → gemini): claude and codex need a login",
            ""
        )),
        "{status}"
    );
}
