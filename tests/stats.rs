//! `dirigent stats` against a ledger written by hand, whose figures are computed by hand below.

mod common;

use common::Workspace;
use dirigent::judge::Class;
use dirigent::ledger::{Event, Record};
use dirigent::task::{TaskFields, TaskSpec};
use dirigent::usage::Usage;

struct Ledger {
    records: Vec<Record>,
    ts: u64,
}

impl Ledger {
    fn push(&mut self, event: Event) {
        self.ts += 1000;
        self.records.push(Record {
            seq: self.records.len() as u64 + 1,
            ts: self.ts,
            event,
        });
    }
    fn received(&mut self, task: &str, source: &str, chain: &[&str]) {
        self.push(Event::Received {
            task: task.into(),
            file: format!("{task}.json"),
            spec: Box::new(TaskSpec {
                id: task.into(),
                title: task.into(),
                prompt: "p".into(),
                chain: chain.iter().map(|s| s.to_string()).collect(),
                chain_source: source.into(),
                fields: TaskFields::default(),
            }),
        });
    }
    /// One attempt: started, then finished with `class` after `ms`, costing `cost` on `model`.
    fn attempt(
        &mut self,
        task: &str,
        n: u32,
        agent: &str,
        class: Class,
        ms: u64,
        usage: Option<(f64, Option<&str>)>,
    ) {
        self.push(Event::AttemptStarted {
            task: task.into(),
            attempt: n,
            agent: agent.into(),
            pid: 1,
            pgid: 1,
            start_ticks: None,
            boot_id: None,
            argv0: agent.into(),
        });
        self.push(Event::AttemptFinished {
            task: task.into(),
            attempt: n,
            agent: agent.into(),
            class,
            reason: String::new(),
            exit_code: Some(0),
            signal: None,
            stopped: None,
            kill_signal: None,
            leaked: false,
            stdout_bytes: 0,
            stderr_bytes: 0,
            duration_ms: ms,
            retry_in_ms: None,
            usage: usage.map(|(cost, model)| Usage {
                input_tokens: 10,
                output_tokens: 1,
                cost_usd: Some(cost),
                model: model.map(str::to_string),
            }),
            work: None,
        });
    }
}

impl Ledger {
    /// Writes the records as the workspace's ledger.
    fn write_to(&self, ws: &Workspace) {
        let text: String = self
            .records
            .iter()
            .map(|r| serde_json::to_string(r).unwrap() + "\n")
            .collect();
        std::fs::write(ws.path("ledger.jsonl"), text).unwrap();
    }
}

fn stats(ws: &Workspace, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["stats", "--json"];
    all.extend_from_slice(args);
    let out = ws.cli(&all);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn row<'a>(v: &'a serde_json::Value, key: &str) -> &'a serde_json::Value {
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == key)
        .unwrap_or_else(|| panic!("no row `{key}` in {v}"))
}

fn close(a: &serde_json::Value, b: f64) -> bool {
    (a.as_f64().unwrap() - b).abs() < 1e-9
}

#[test]
fn stats_figures_match_a_hand_computed_ledger() {
    let ws =
        Workspace::new("agents:\n  claude: { preset: claude }\n  gemini: { preset: gemini }\n");
    let now = dirigent::ledger::now_ms();
    let mut l = Ledger {
        records: vec![],
        ts: now - 10 * 86_400_000,
    };
    // Ten days ago: outside `--since 7d`.
    l.received("old", "default", &["claude"]);
    l.attempt(
        "old",
        1,
        "claude",
        Class::Ok,
        99_999,
        Some((5.0, Some("opus"))),
    );
    l.ts = now - 3_600_000;
    // A: a role's task; claude hits a rate limit, gemini finishes it (a fallback for claude).
    l.received("a", "role:review", &["claude", "gemini"]);
    l.attempt(
        "a",
        1,
        "claude",
        Class::RateLimit,
        1000,
        Some((0.10, Some("opus"))),
    );
    l.attempt("a", 2, "gemini", Class::Ok, 3000, Some((0.05, None)));
    // B: claude at once.
    l.received("b", "default", &["claude"]);
    l.attempt(
        "b",
        1,
        "claude",
        Class::Ok,
        2000,
        Some((0.20, Some("opus"))),
    );
    // C: a network failure retried on claude itself (not a fallback), then ok.
    l.received("c", "default", &["claude"]);
    l.attempt("c", 1, "claude", Class::Network, 500, None);
    l.attempt(
        "c",
        2,
        "claude",
        Class::Ok,
        4000,
        Some((0.30, Some("sonnet"))),
    );
    // D: an interrupted attempt does not count.
    l.received("d", "default", &["claude"]);
    l.attempt("d", 1, "claude", Class::Interrupted, 100, None);
    l.attempt(
        "d",
        2,
        "claude",
        Class::Ok,
        1000,
        Some((0.10, Some("opus"))),
    );
    l.write_to(&ws);

    let by_agent = stats(&ws, &["--since", "7d"]);
    let claude = row(&by_agent, "claude");
    // claude: a1 rate_limit 1000, b1 ok 2000, c1 network 500, c2 ok 4000, d2 ok 1000.
    assert_eq!(claude["attempts"], 5);
    assert_eq!(claude["ok"], 3);
    assert!(close(&claude["success_rate"], 0.6));
    assert_eq!(claude["tasks"], 4);
    assert_eq!(claude["fallbacks"], 1);
    assert!(close(&claude["fallback_rate"], 0.25));
    assert_eq!(
        claude["classes"],
        serde_json::json!({"network": 1, "rate_limit": 1})
    );
    // Sorted: 500 1000 1000 2000 4000 → nearest-rank median (3rd) 1000, p95 (5th) 4000.
    assert_eq!(
        (claude["median_ms"].as_u64(), claude["p95_ms"].as_u64()),
        (Some(1000), Some(4000))
    );
    assert!(close(&claude["cost_usd"], 0.70));
    assert!(close(&claude["cost_per_success_usd"], 0.70 / 3.0));
    let gemini = row(&by_agent, "gemini");
    assert_eq!(
        (gemini["attempts"].as_u64(), gemini["ok"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(close(&gemini["cost_per_success_usd"], 0.05));
    assert_eq!(by_agent["rows"].as_array().unwrap().len(), 2);

    // Everything, old attempt included.
    let all = stats(&ws, &["--since", "30d"]);
    assert_eq!(row(&all, "claude")["attempts"], 6);

    let by_role = stats(&ws, &["--since", "7d", "--by", "role"]);
    let review = row(&by_role, "review");
    assert_eq!(
        (review["attempts"].as_u64(), review["ok"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(
        (review["tasks"].as_u64(), review["fallbacks"].as_u64()),
        (Some(1), Some(1))
    );
    let default = row(&by_role, "(default chain)");
    assert_eq!(
        (default["attempts"].as_u64(), default["ok"].as_u64()),
        (Some(4), Some(3))
    );
    assert_eq!(
        (default["median_ms"].as_u64(), default["p95_ms"].as_u64()),
        (Some(1000), Some(4000))
    );
    assert!(close(&default["cost_per_success_usd"], 0.60 / 3.0));

    let by_model = stats(&ws, &["--since", "7d", "--by", "model"]);
    assert_eq!(row(&by_model, "opus")["attempts"], 3);
    assert_eq!(row(&by_model, "opus")["ok"], 2);
    assert_eq!(row(&by_model, "sonnet")["ok"], 1);
    assert_eq!(row(&by_model, "-")["attempts"], 2);

    let text = String::from_utf8(ws.cli(&["stats"]).stdout).unwrap();
    assert!(text.starts_with("AGENT "), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("claude ")
            && l.contains("60%")
            && l.contains("25%")
            && l.contains("$0.70")
            && l.ends_with("network 1, rate_limit 1")),
        "{text}"
    );
    let bad = ws.cli(&["stats", "--since", "fortnight"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn an_agent_model_entry_counts_under_its_model() {
    let ws = Workspace::new("agents:\n  gemini: { preset: gemini }\n");
    let mut l = Ledger {
        records: vec![],
        ts: dirigent::ledger::now_ms() - 60_000,
    };
    l.received("e", "chain", &["gemini:flash"]);
    // The CLI reported no model: the entry's own name says it.
    l.attempt("e", 1, "gemini:flash", Class::Ok, 1000, None);
    l.write_to(&ws);
    let by_model = stats(&ws, &["--since", "7d", "--by", "model"]);
    assert_eq!(row(&by_model, "flash")["attempts"], 1, "{by_model}");
}

#[test]
fn stats_of_the_fleet_outside_a_fleet_says_how_to_join_one() {
    let ws = Workspace::new("agents:\n  a: { command: [\"{agents}/ok.sh\"] }\n");
    let out = ws.cli(&["stats", "--fleet"]);
    assert!(
        !out.status.success(),
        "expected `stats --fleet` to fail outside a fleet"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: this workspace is not in a fleet: add a `cluster:` section to .context/dirigent.yaml (see docs/cluster.md)",
        "expected the error to say how to join a fleet"
    );
}
