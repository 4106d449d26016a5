//! Every door into dirigent — a task file, `dirigent submit`, a workflow's own task, the HTTP
//! API, the OpenAI-compatible endpoint (driven by the official `openai` Python client) and the
//! MCP server (driven by the official `mcp` Python client) — ends in the same engine, so the
//! same task produces the same ledger events whichever door it came by.

mod common;

use common::{BIN, Workspace, http, python_client};

const CONFIG: &str = r#"
concurrency: 2
agents:
  good:   { command: ["{agents}/ok.sh"], prompt: stdin }
  broken: { command: ["{agents}/fail.sh"] }
default_chain: [good]
"#;

const ONE: &str = "name: one\nvars: { goal: ~ }\nphases:\n  - { name: only, type: single, agent: good, prompt: \"p {goal}\" }\n";

/// The kinds of the events about `id`, in ledger order.
fn kinds(ws: &Workspace, id: &str) -> Vec<String> {
    ws.records()
        .iter()
        .filter(|r| r.event.task() == Some(id))
        .map(|r| {
            serde_json::to_value(&r.event).unwrap()["event"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// The id of the task whose `received` prompt contains `needle`.
fn task_with_prompt(ws: &Workspace, needle: &str) -> String {
    ws.records()
        .iter()
        .find_map(|r| match &r.event {
            dirigent::ledger::Event::Received { task, spec, .. }
                if spec.prompt.contains(needle) =>
            {
                Some(task.clone())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no task with `{needle}` in its prompt"))
}

const ONE_ATTEMPT: [&str; 5] = [
    "received",
    "claimed",
    "attempt_started",
    "attempt_finished",
    "done",
];

#[test]
fn every_door_produces_the_same_ledger_events() {
    let ws = Workspace::new(CONFIG);
    std::fs::write(ws.path("workflows/one.yaml"), ONE).unwrap();
    let (_d, url, token) = ws.start_http();

    // The inbox, the CLI, a workflow's child task (submitted by the daemon itself), HTTP.
    ws.drop_task("by-file.json", r#"{"prompt": "p"}"#);
    assert!(ws.cli(&["submit", "p", "--id", "by-cli"]).status.success());
    ws.drop_task("run.json", r#"{"workflow": "one", "vars": {"goal": "g"}}"#);
    let created = http(
        &url,
        "POST",
        "/tasks",
        Some(&token),
        Some(r#"{"prompt": "p", "id": "by-http"}"#),
    );
    assert_eq!(created.status, 201, "{created:?}");
    for id in ["by-file", "by-cli", "run.only", "by-http"] {
        ws.wait_settled(id);
        assert_eq!(kinds(&ws, id), ONE_ATTEMPT, "{id}");
    }

    // The OpenAI-compatible endpoint, through the `openai` library.
    let seen = python_client("openai_client.py", &[&url, &token]);
    let plain = task_with_prompt(&ws, "openai plain");
    let streamed = task_with_prompt(&ws, "openai streamed");
    for id in [&plain, &streamed] {
        assert_eq!(kinds(&ws, id), ONE_ATTEMPT, "{id}");
    }
    // The MCP server, through the `mcp` library.
    let mcp = python_client("mcp_client.py", &[BIN, &ws.root().display().to_string()]);
    assert_eq!(kinds(&ws, "by-mcp"), ONE_ATTEMPT);
    let later = task_with_prompt(&ws, "mcp later");
    assert_eq!(kinds(&ws, &later), ONE_ATTEMPT);

    // Same task, same record: the prompt and chain the engine accepted are the same.
    let spec = |id: &str| {
        ws.records()
            .iter()
            .find_map(|r| match &r.event {
                dirigent::ledger::Event::Received { task, spec, .. } if task == id => {
                    Some((spec.chain.clone(), spec.chain_source.clone()))
                }
                _ => None,
            })
            .unwrap()
    };
    for id in ["by-file", "by-cli", "by-http", &later] {
        assert_eq!(
            spec(id),
            (vec!["good".to_string()], "default".to_string()),
            "{id}"
        );
    }

    check_openai(&seen, &plain);
    check_mcp(&mcp);
}

/// What the `openai` client saw: the models, a completion, a streamed one, and errors.
fn check_openai(seen: &serde_json::Value, plain_id: &str) {
    let models: Vec<&str> = seen["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    // The standard roles, and the built-in workflows that name them, run on any config: they
    // are offered too — those whose one variable a chat's text can fill (not `bulk-refine`,
    // which needs none, nor `feature-build`, whose `feature` names its files).
    assert_eq!(
        models,
        [
            "backend",
            "broken",
            "bulk",
            "dirigent",
            "frontend",
            "good",
            "judge",
            "planner",
            "proposer",
            "reviewer",
            "workflow:one",
            "workflow:plan",
            "workflow:research-implement-validate",
            "workflow:tdd",
            "workflow:workshop"
        ],
        "the models the OpenAI endpoint offers"
    );
    assert_eq!(
        seen["plain"],
        serde_json::json!({
            "content": "ok from good: Answer briefly.\n\nopenai plain\n",
            "finish_reason": "stop",
            "role": "assistant",
        })
    );
    assert!(plain_id.starts_with("chat-openai-plain-"), "{plain_id}");
    assert_eq!(
        seen["streamed"],
        serde_json::json!({"content": "ok from good: openai streamed\n", "finish_reason": "stop"})
    );
    assert_eq!(seen["failure"]["status"], 502, "{seen}");
    let failure = seen["failure"]["message"].as_str().unwrap();
    assert!(
        failure.contains("failed: every agent in the chain failed (broken)")
            && failure.contains(".context/escalations/chat-openai-failing-"),
        "{failure}"
    );
    let stream_failure = seen["stream_failure"]["message"].as_str().unwrap_or("");
    assert!(
        stream_failure.contains("every agent in the chain failed (broken)"),
        "{seen}"
    );
    assert_eq!(seen["unknown_model"]["status"], 404, "{seen}");
    assert!(
        seen["unknown_model"]["message"].as_str().unwrap().contains(
            "no model `no-such-model` (models: dirigent, planner, proposer, judge, backend, frontend, reviewer, bulk, broken, good, workflow:one,"
        ),
        "{seen}"
    );
}

/// What the `mcp` client saw: the tools, and a call of each kind.
fn check_mcp(seen: &serde_json::Value) {
    assert_eq!(seen["server"], "dirigent");
    assert_eq!(
        seen["tools"],
        serde_json::json!([
            "cancel_task",
            "discard_task",
            "list_agents",
            "list_workflows",
            "merge_task",
            "run_workflow",
            "submit_task",
            "task_diff",
            "task_result",
            "task_status",
            "wait_task"
        ])
    );
    assert_eq!(
        seen["submit_wait"],
        serde_json::json!({"error": false, "text": "ok from good: mcp waited\n"})
    );
    assert_eq!(
        seen["wait_task"],
        serde_json::json!({"error": false, "text": "ok from good: mcp later\n"})
    );
    assert_eq!(seen["task_result"], "ok from good: mcp waited\n");
    assert_eq!(seen["status_state"], "done");
    assert_eq!(seen["agents"], serde_json::json!(["broken", "good"]));
    assert_eq!(seen["failing"]["error"], true);
    let failing = seen["failing"]["text"].as_str().unwrap();
    assert!(
        failing.contains("failed: every agent in the chain failed (broken)")
            && failing.contains("dirigent retry"),
        "{failing}"
    );
    assert_eq!(
        seen["workflow"],
        serde_json::json!({"error": false, "text": "ok from good: p mcp goal\n"})
    );
    assert_eq!(
        seen["missing"],
        serde_json::json!({"error": true, "text": "no task `no-such-task`; `dirigent status` lists the tasks"})
    );
}

#[test]
fn the_mcp_server_says_plainly_when_no_daemon_runs() {
    let ws = Workspace::new(CONFIG);
    let script = r#"
import asyncio, json, sys
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
async def main():
    server = StdioServerParameters(command=sys.argv[1], args=["--root", sys.argv[2], "mcp"])
    async with stdio_client(server) as (r, w):
        async with ClientSession(r, w) as s:
            await s.initialize()
            out = await s.call_tool("list_agents", {})
            print(json.dumps({"error": bool(out.is_error), "text": out.content[0].text}))
asyncio.run(main())
"#;
    let path = ws.root().join("probe.py");
    std::fs::write(&path, script).unwrap();
    let deps = common::python_deps();
    let out = std::process::Command::new("python3")
        .arg(&path)
        .args([BIN, &ws.root().display().to_string()])
        .env("PYTHONPATH", deps)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["error"], true);
    let text = seen["text"].as_str().unwrap();
    assert!(
        text.starts_with(&format!(
            "no daemon is running on `{}`",
            ws.root().display()
        )) && text.ends_with("start it with `dirigent daemon`"),
        "{text}"
    );
}
