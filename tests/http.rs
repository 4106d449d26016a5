//! The HTTP API against the real daemon on a loopback port: the bearer token, the task routes,
//! workflows and agents, Server-Sent Events with `Last-Event-ID` resume, and a clean stop.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{SseStream, Workspace, http};
use dirigent::ledger::Event;

const CONFIG: &str = r#"
concurrency: 2
kill_grace: 300ms
default_chain: [good]
roles: { review: [broken, good] }
agents:
  good:   { command: ["{agents}/ok.sh"] }
  broken: { command: ["{agents}/fail.sh"] }
  hang:   { command: ["{agents}/hang.sh"] }
"#;

#[test]
fn every_route_but_health_needs_the_token_which_is_private() {
    let ws = Workspace::new(CONFIG);
    let (_d, url, token) = ws.start_http();
    let mode = std::fs::metadata(ws.path("http.token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(token.len(), 64, "32 random bytes as hex");

    let health = http(&url, "GET", "/health", None, None);
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["ok"], true);

    for (method, path) in [
        ("GET", "/tasks"),
        ("POST", "/tasks"),
        ("GET", "/events"),
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
    ] {
        let none = http(&url, method, path, None, Some("{}"));
        assert_eq!(none.status, 401, "{method} {path}: {none:?}");
        assert_eq!(none.header("www-authenticate"), Some("Bearer"));
        assert_eq!(
            none.json()["error"]["message"],
            "missing `Authorization: Bearer <token>`; the token is in `.context/http.token`"
        );
        let wrong = http(&url, method, path, Some(&"0".repeat(64)), Some("{}"));
        assert_eq!(wrong.status, 401, "{method} {path}");
        assert_eq!(
            wrong.json()["error"]["message"],
            "wrong bearer token; the daemon's token is in `.context/http.token`"
        );
    }
    assert_eq!(http(&url, "GET", "/tasks", Some(&token), None).status, 200);
    // The scheme's name is case-insensitive (RFC 7235).
    let lower = common::http_with(
        &url,
        "GET",
        "/tasks",
        None,
        &[("Authorization", &format!("bearer {token}"))],
        None,
    );
    assert_eq!(
        lower.status, 200,
        "expected `bearer` to be taken: {lower:?}"
    );
}

#[test]
fn the_frameworks_own_refusals_come_in_the_documented_shape() {
    let ws = Workspace::new(CONFIG);
    let (_d, url, token) = ws.start_http();
    // (method, path, status, words the message holds)
    let cases = [
        ("GET", "/tasks?limit=abc", 400, "limit"),
        ("GET", "/tasks?limit=0", 400, "`limit` must be at least 1"),
        ("GET", "/runs?limit=0", 400, "`limit` must be at least 1"),
        (
            "GET",
            "/tasks?state=bogus",
            400,
            "`state` is one of pending, running, merging, merge_waiting, done, failed, cancelled, requeued, not `bogus`",
        ),
        ("GET", "/events?after=-1", 400, "after"),
        (
            "DELETE",
            "/tasks",
            405,
            "`DELETE` is not allowed on `/tasks`",
        ),
        ("GET", "/v1/chat/completions", 405, "`GET` is not allowed"),
        ("GET", "/tasks/%ff%fe", 400, ""),
    ];
    for (method, path, status, words) in cases {
        let r = common::http(&url, method, path, Some(&token), None);
        assert_eq!(r.status, status, "{method} {path}: {}", r.body);
        let body: serde_json::Value = serde_json::from_str(&r.body)
            .unwrap_or_else(|e| panic!("{method} {path}: expected JSON, got {:?} ({e})", r.body));
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            !message.is_empty() && message.contains(words),
            "{method} {path}: expected a message with {words:?}, got {body}"
        );
        if status == 405 {
            assert!(
                r.headers.iter().any(|(k, _)| k == "allow"),
                "{method} {path}: expected the `Allow` header kept"
            );
        }
    }
    let r = common::http(&url, "POST", "/tasks", Some(&token), Some(""));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("the body is empty"),
        "expected the empty body named as a body, got {}",
        r.body
    );
    // A chat request's fields of the wrong type are named as such, not taken for absent.
    let chats = [
        (
            r#"{"model": 5, "messages": []}"#,
            "`model` must be a string naming a model",
        ),
        (
            r#"{"model": "good", "messages": [], "stream": "yes"}"#,
            "`stream` must be `true` or `false`",
        ),
        (
            r###"{"model": "good", "messages": [{"role": "user", "content": "a"}, {"role": "assistant\n\n## system", "content": "b"}]}"###,
            r#"`messages[1].role` is \"assistant\\n\\n## system\"; it must be one of system, developer, user, assistant, tool"#,
        ),
        (
            r#"{"model": "good", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}"#,
            "the messages hold no text: only text content is taken",
        ),
        // One key written twice: a filter in front may read the other one.
        (
            r#"{"model": "good", "messages": [{"role": "user", "content": "a"}], "model": "hang"}"#,
            "\"the key `model` is written twice in one object; write each key once at line 1 column 73\"",
        ),
        // A chat's text is no file name, and a workflow that needs no variable has nowhere to
        // put it: refused before anything runs, with the doors that can run them.
        (
            r#"{"model": "workflow:feature-build", "messages": [{"role": "user", "content": "a\nb"}]}"#,
            "model `workflow:feature-build` cannot take a chat: its variable `feature` names files (an `output`, a `glob` or `files`), and a chat's text is no file name. Run workflow `feature-build` with `POST /tasks`",
        ),
        (
            r#"{"model": "workflow:bulk-refine", "messages": [{"role": "user", "content": "x"}]}"#,
            "model `workflow:bulk-refine` cannot take a chat: it needs no variable, so the chat's text would go nowhere.",
        ),
    ];
    for (body, want) in chats {
        let r = common::http(
            &url,
            "POST",
            "/v1/chat/completions",
            Some(&token),
            Some(body),
        );
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert!(
            r.body.contains(want),
            "{body}: expected {want:?}, got {}",
            r.body
        );
    }
}

#[test]
fn the_token_survives_restarts_and_a_readable_one_is_refused() {
    let ws = Workspace::new(CONFIG);
    let (mut d, _, first) = ws.start_http();
    assert!(d.stop().success());
    assert!(
        !ws.path("http.url").exists(),
        "a stopped daemon leaves no URL behind"
    );
    let (mut d, _, second) = ws.start_http();
    assert_eq!(first, second);
    assert!(d.stop().success());

    std::fs::set_permissions(
        ws.path("http.token"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let mut d = ws.start_full(&[], &["--http", "127.0.0.1:0"]);
    let status = d.wait();
    assert_eq!(status.code(), Some(2));
    let log = std::fs::read_to_string(&d.log).unwrap();
    let path = ws.path("http.token");
    assert!(
        log.contains(&format!(
            "error: cannot serve the HTTP API on `127.0.0.1:0`: `{}` can be read by other users (mode 644); run `chmod 600` on it",
            path.display()
        )),
        "{log}"
    );
}

#[test]
fn tasks_are_created_listed_waited_for_and_their_results_read() {
    let ws = Workspace::new(CONFIG);
    let (_d, url, token) = ws.start_http();
    let t = Some(token.as_str());

    let created = http(
        &url,
        "POST",
        "/tasks",
        t,
        Some(r#"{"prompt": "over http", "id": "h1"}"#),
    );
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.json()["id"], "h1");
    assert_eq!(created.header("location"), Some("/tasks/h1"));

    let done = http(&url, "GET", "/tasks/h1?wait=60s", t, None);
    assert_eq!(done.status, 200);
    let record = done.json();
    assert_eq!(record["state"], "done", "{record}");
    assert_eq!(record["attempts"][0]["agent"], "good");

    let result = http(&url, "GET", "/tasks/h1/result", t, None);
    assert_eq!(result.status, 200);
    assert_eq!(
        result.header("content-type"),
        Some("text/markdown; charset=utf-8")
    );
    assert_eq!(result.body, "ok from good: over http\n");
    assert_eq!(
        result.body,
        std::fs::read_to_string(ws.path("outbox/h1.md")).unwrap()
    );

    let list = http(&url, "GET", "/tasks?state=done", t, None).json();
    let ids: Vec<&str> = list["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["h1"]);
    assert_eq!(list["tasks"][0]["output"], ".context/outbox/h1.md");

    // Refusals carry the daemon's own words and fitting status codes.
    let again = http(
        &url,
        "POST",
        "/tasks",
        t,
        Some(r#"{"prompt": "x", "id": "h1"}"#),
    );
    assert_eq!(again.status, 409);
    assert_eq!(
        again.json()["error"]["message"],
        "a task `h1` already exists; choose another id"
    );
    let bad = http(
        &url,
        "POST",
        "/tasks",
        t,
        Some(r#"{"prompt": "x", "agnet": "good"}"#),
    );
    assert_eq!(bad.status, 400);
    assert!(
        bad.json()["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("invalid task JSON at line 1 column 23: unknown field `agnet`"),
        "{bad:?}"
    );
    let huge = format!(r#"{{"prompt": "{}"}}"#, "x".repeat(1_100_000));
    let too_big = http(&url, "POST", "/tasks", t, Some(&huge));
    assert_eq!(too_big.status, 400);
    assert!(
        too_big.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("a task may have at most 1048576"),
        "{too_big:?}"
    );
    let unknown_agent = http(
        &url,
        "POST",
        "/tasks",
        t,
        Some(r#"{"prompt": "x", "agent": "nope"}"#),
    );
    assert_eq!(unknown_agent.status, 400);
    let missing = http(&url, "GET", "/tasks/nope", t, None);
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.json()["error"]["message"],
        "no task `nope`; `dirigent status` lists the tasks"
    );
    assert_eq!(http(&url, "GET", "/tasks/nope/result", t, None).status, 404);
    assert_eq!(http(&url, "GET", "/no/such/route", t, None).status, 404);

    // A failed chain: the record says why, and there is no result.
    let failed = http(
        &url,
        "POST",
        "/tasks",
        t,
        Some(r#"{"prompt": "x", "id": "h2", "agent": "broken"}"#),
    );
    assert_eq!(failed.status, 201);
    let record = http(&url, "GET", "/tasks/h2?wait=60s", t, None).json();
    assert_eq!(record["state"], "failed", "{record}");
    let no_result = http(&url, "GET", "/tasks/h2/result", t, None);
    assert_eq!(no_result.status, 409);
    assert_eq!(
        no_result.json()["error"]["message"],
        "task `h2` failed and has no result; see .context/escalations/h2.md"
    );
}

#[test]
fn a_long_poll_that_runs_out_returns_the_state_so_far() {
    let ws = Workspace::new(CONFIG);
    let (_d, url, token) = ws.start_http();
    let t = Some(token.as_str());
    http(
        &url,
        "POST",
        "/tasks",
        t,
        Some(r#"{"prompt": "x", "id": "slow", "agent": "hang"}"#),
    );
    ws.wait_started("slow");
    let polled = http(&url, "GET", "/tasks/slow?wait=200ms", t, None);
    assert_eq!(polled.status, 200);
    // The engine may not have applied the start it already wrote: pending or running.
    let state = polled.json()["state"].as_str().unwrap().to_string();
    assert!(state == "running" || state == "pending", "{state}");
    let bad = http(&url, "GET", "/tasks/slow?wait=soon", t, None);
    assert_eq!(bad.status, 400);

    // Cancel over HTTP, then retry: the same engine paths as the CLI.
    let cancel = http(&url, "POST", "/tasks/slow/cancel", t, None);
    assert_eq!(cancel.status, 200, "{cancel:?}");
    assert_eq!(
        cancel.json()["message"],
        "cancelling `slow`: its process group is being stopped"
    );
    let record = http(&url, "GET", "/tasks/slow?wait=60s", t, None).json();
    assert_eq!(record["state"], "failed");
    // Listed as the user saw it: `cancelled`, and among the failed.
    for state in ["cancelled", "failed"] {
        let list = http(&url, "GET", &format!("/tasks?state={state}"), t, None).json();
        assert_eq!(
            list["tasks"][0]["id"], "slow",
            "expected the cancelled task under state={state}: {list}"
        );
    }
    let again = http(&url, "POST", "/tasks/slow/cancel", t, None);
    assert_eq!(again.status, 409);
    let retry = http(&url, "POST", "/tasks/slow/retry", t, None);
    assert_eq!(retry.status, 200, "{retry:?}");
    ws.wait_for("the retried attempt", |recs| {
        recs.iter()
            .filter(|r| matches!(&r.event, Event::AttemptStarted { task, .. } if task == "slow"))
            .nth(1)
            .map(|_| ())
    });
    assert_eq!(
        http(&url, "POST", "/tasks/slow/cancel", t, None).status,
        200
    );
}

#[test]
fn agents_and_workflows_are_listed_and_a_workflow_runs() {
    let ws = Workspace::new(CONFIG);
    std::fs::write(
        ws.path("workflows/echo.yaml"),
        "name: echo\nvars: { goal: ~ }\nphases:\n  - { name: only, type: single, agent: good, prompt: \"do {goal}\" }\n",
    )
    .unwrap();
    let (_d, url, token) = ws.start_http();
    let t = Some(token.as_str());

    let agents = http(&url, "GET", "/agents", t, None).json();
    let names: Vec<&str> = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["broken", "good", "hang"]);
    assert_eq!(
        agents["roles"]["review"],
        serde_json::json!(["broken", "good"])
    );

    let workflows = http(&url, "GET", "/workflows", t, None).json();
    let echo = workflows["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "echo")
        .expect("echo listed")
        .clone();
    assert_eq!(echo["valid"], true);
    assert_eq!(echo["vars"], serde_json::json!({"goal": null}));
    // A built-in that uses `{feature}` without declaring it lists it as required.
    let feature_build = workflows["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "feature-build")
        .expect("feature-build listed")
        .clone();
    assert_eq!(
        feature_build["vars"]["feature"],
        serde_json::Value::Null,
        "`feature` is required: {feature_build}"
    );
    assert!(
        feature_build["vars"]
            .as_object()
            .is_some_and(|v| v.contains_key("feature")),
        "{feature_build}"
    );

    let missing_var = http(&url, "POST", "/workflows/echo/runs", t, Some("{}"));
    assert_eq!(missing_var.status, 400, "{missing_var:?}");
    let run = http(
        &url,
        "POST",
        "/workflows/echo/runs",
        t,
        Some(r#"{"vars": {"goal": "the thing"}, "id": "wf1"}"#),
    );
    assert_eq!(run.status, 201, "{run:?}");
    let record = http(&url, "GET", "/tasks/wf1?wait=60s", t, None).json();
    assert_eq!(record["state"], "done", "{record}");
    let result = http(&url, "GET", "/tasks/wf1/result", t, None);
    assert_eq!(result.body, "ok from good: do the thing\n");
}

#[test]
fn a_missing_resource_is_a_404_and_a_broken_body_says_where() {
    let ws = Workspace::new(CONFIG);
    let (_d, url, token) = ws.start_http();
    let t = Some(token.as_str());
    let plain = http(
        &url,
        "POST",
        "/tasks",
        t,
        Some(r#"{"prompt": "p", "id": "plain"}"#),
    );
    assert_eq!(plain.status, 201, "{}", plain.body);
    // (method, path, body, status, kind, words the message holds)
    let cases = [
        (
            "POST",
            "/workflows/nope/runs",
            "{}",
            404,
            "not_found",
            "no workflow `nope` (workflows: ",
        ),
        (
            "POST",
            "/workflows/plan/runs",
            "{\"vars\": ",
            400,
            "invalid_request_error",
            "the body is not valid JSON: EOF while parsing a value at line 1 column 9",
        ),
        (
            "POST",
            "/workflows/plan/runs",
            "[1]",
            400,
            "invalid_request_error",
            "the body is not a JSON object; the body must be a JSON object like",
        ),
        (
            "GET",
            "/runs?id=nope",
            "",
            404,
            "not_found",
            "no workflow run `nope`",
        ),
        (
            "GET",
            "/runs?id=",
            "",
            400,
            "invalid_request_error",
            "`id` is empty",
        ),
        (
            "GET",
            "/runs?id=plain",
            "",
            404,
            "not_found",
            "task `plain` is not a workflow run",
        ),
    ];
    for (method, path, body, status, kind, words) in cases {
        let r = http(&url, method, path, t, (!body.is_empty()).then_some(body));
        assert_eq!(r.status, status, "{method} {path}: {}", r.body);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["error"]["type"], kind, "{method} {path}: {v}");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(words),
            "{method} {path}: expected a message with {words:?}, got {message:?}"
        );
    }
    // A byte order mark before a body is taken, as in a task file.
    let bom = "\u{feff}{\"vars\": {\"goal\": \"g\"}, \"id\": \"bom\"}";
    let r = http(&url, "POST", "/workflows/plan/runs", t, Some(bom));
    assert_eq!(r.status, 201, "expected a BOM to be taken: {}", r.body);
}

#[test]
fn events_arrive_in_order_and_resume_after_last_event_id() {
    let ws = Workspace::new(CONFIG);
    let (_d, url, token) = ws.start_http();
    let t = Some(token.as_str());
    let mut all = SseStream::open(&url, "/events?after=0", &token, &[]);
    assert_eq!(all.status, 200);
    for id in ["e1", "e2", "e3"] {
        let body = format!(r#"{{"prompt": "p", "id": "{id}"}}"#);
        assert_eq!(http(&url, "POST", "/tasks", t, Some(&body)).status, 201);
    }
    // Read until all three are done; every record in sequence, `id:` = its seq.
    let mut seen = Vec::new();
    let mut done = 0;
    while done < 3 {
        let ev = all.next().expect("the stream stays open");
        let record: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
        assert_eq!(ev.id.as_deref(), Some(record["seq"].to_string().as_str()));
        if record["event"] == "done" {
            done += 1;
        }
        seen.push(record);
    }
    let seqs: Vec<u64> = seen.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs[0], 1, "after=0 replays from the start");
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    // The stream holds the same records as the ledger, in the same order.
    let on_disk: Vec<serde_json::Value> = ws
        .records()
        .iter()
        .take(seen.len())
        .map(|r| serde_json::to_value(r).unwrap())
        .collect();
    assert_eq!(seen, on_disk);

    // Reconnect after the fourth record: the next is the fifth, and the rest match.
    let resume_at = seqs[3];
    let mut resumed = SseStream::open(
        &url,
        "/events",
        &token,
        &[("Last-Event-ID", &resume_at.to_string())],
    );
    for expected in &seen[4..] {
        let ev = resumed.next().unwrap();
        let record: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
        assert_eq!(&record, expected);
    }

    // Without a position, a stream starts with the next record written; `task=` filters.
    let mut live = SseStream::open(&url, "/events?task=e4", &token, &[]);
    let last_before = *seqs.last().unwrap();
    http(
        &url,
        "POST",
        "/tasks",
        t,
        Some(r#"{"prompt": "p", "id": "x5"}"#),
    );
    http(
        &url,
        "POST",
        "/tasks",
        t,
        Some(r#"{"prompt": "p", "id": "e4"}"#),
    );
    let mut kinds = Vec::new();
    loop {
        let ev = live.next().unwrap();
        let record: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
        assert_eq!(record["task"], "e4", "{record}");
        assert!(record["seq"].as_u64().unwrap() > last_before);
        kinds.push(record["event"].as_str().unwrap().to_string());
        if record["event"] == "done" {
            break;
        }
    }
    assert_eq!(
        kinds,
        [
            "received",
            "claimed",
            "attempt_started",
            "attempt_finished",
            "done"
        ]
    );
    let bad = SseStream::open(&url, "/events", &token, &[("Last-Event-ID", "yesterday")]);
    assert_eq!(bad.status, 400);

    // A position past the ledger's newest record (from a ledger since started afresh) is
    // announced, and the stream goes on after the newest record, instead of waiting for
    // records that will never come.
    let x5 = http(&url, "GET", "/tasks/x5?wait=30s", t, None);
    assert!(
        x5.body.contains(r#""state":"done""#),
        "x5 ends: {}",
        x5.body
    );
    let newest = ws.records().last().unwrap().seq;
    let mut stale = SseStream::open(&url, "/events", &token, &[("Last-Event-ID", "999999")]);
    assert_eq!(stale.status, 200);
    let reset = stale.next().expect("a reset event, not silence");
    assert_eq!(
        (reset.event.as_deref(), reset.id.as_deref()),
        (Some("reset"), Some(newest.to_string().as_str())),
        "expected a reset to the newest record: {reset:?}"
    );
    let data: serde_json::Value = serde_json::from_str(&reset.data).unwrap();
    assert_eq!(data, serde_json::json!({"after": 999999, "newest": newest}));
    http(
        &url,
        "POST",
        "/tasks",
        t,
        Some(r#"{"prompt": "p", "id": "e6"}"#),
    );
    let next = stale.next().unwrap();
    let record: serde_json::Value = serde_json::from_str(&next.data).unwrap();
    assert_eq!(
        record["seq"].as_u64(),
        Some(newest + 1),
        "the stream goes on right after the newest record: {record}"
    );
}

#[test]
fn a_stopping_daemon_ends_event_streams_and_long_polls() {
    let ws = Workspace::new(CONFIG);
    let (mut d, url, token) = ws.start_http();
    let mut stream = SseStream::open(&url, "/events", &token, &[]);
    assert_eq!(stream.status, 200, "the event stream must open");
    let created = http(
        &url,
        "POST",
        "/tasks",
        Some(&token),
        Some(r#"{"prompt": "p", "id": "hold", "agent": "hang"}"#),
    );
    assert_eq!(
        created.status, 201,
        "the task must be accepted: {created:?}"
    );
    ws.wait_started("hold");
    let poll = {
        let (url, token) = (url.clone(), token.clone());
        std::thread::spawn(move || http(&url, "GET", "/tasks/hold?wait=10m", Some(&token), None))
    };
    // An OpenAI client waiting for its answer too.
    let chat = {
        let (url, token) = (url.clone(), token.clone());
        std::thread::spawn(move || {
            http(
                &url,
                "POST",
                "/v1/chat/completions",
                Some(&token),
                Some(r#"{"model": "hang", "messages": [{"role": "user", "content": "p"}]}"#),
            )
        })
    };
    // Stop only once the daemon is inside both waits (its debug log says so).
    ws.wait_until("the long poll and the chat to wait", || {
        (std::fs::read_to_string(&d.log)
            .unwrap_or_default()
            .matches("a door waits for the task to finish")
            .count()
            >= 2)
            .then_some(())
    });
    let status = d.stop();
    assert!(status.success(), "{status}");
    // The stream saw the task's events and then ended instead of hanging. Everything written
    // before the stop is in it: the test saw `attempt_started` in the ledger before stopping.
    let mut kinds = Vec::new();
    while let Some(ev) = stream.next() {
        let record: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
        kinds.push(record["event"].as_str().unwrap_or("?").to_string());
    }
    assert!(
        ["received", "claimed", "attempt_started"]
            .iter()
            .all(|k| kinds.iter().any(|got| got == k)),
        "the stream must deliver every record written before the stop, then end; got {kinds:?}"
    );
    let answer = poll.join().unwrap();
    assert_eq!(
        answer.status, 503,
        "a long poll ends with 503 when the daemon stops: {answer:?}"
    );
    assert_eq!(
        answer.json()["error"]["message"],
        "the daemon is shutting down",
        "{answer:?}"
    );
    // The chat gets the documented shape, is told its task is not lost, and its client is told
    // not to send it again (the task went back to the inbox).
    let answer = chat.join().unwrap();
    let body = answer.json();
    assert!(
        answer.status == 503
            && body["error"]["type"] == "unavailable"
            && answer.header("x-should-retry") == Some("false")
            && body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("is not lost: it goes on when the daemon runs again")),
        "expected a 503 `unavailable` that says the task goes on and not to retry, got {answer:?}"
    );
    assert!(
        !ws.path("http.url").exists(),
        "a stopped daemon must remove .context/http.url"
    );
}

#[test]
fn every_path_in_the_openapi_file_is_served() {
    let spec_text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.yaml"),
    )
    .unwrap();
    let spec: serde_json::Value = serde_saphyr::from_str(&spec_text).unwrap();
    let ws = Workspace::new(CONFIG);
    let (_d, url, token) = ws.start_http();
    let mut checked = 0;
    for (path, methods) in spec["paths"].as_object().unwrap() {
        let concrete = path.replace("{id}", "nope").replace("{name}", "nope");
        for method in methods.as_object().unwrap().keys() {
            let method = method.to_ascii_uppercase();
            let status = if path == "/events" {
                SseStream::open(&url, &concrete, &token, &[]).status
            } else {
                let reply = http(&url, &method, &concrete, Some(&token), Some("{}"));
                assert_ne!(
                    reply.body,
                    r#"{"error":{"code":"not_found","message":"no such route; docs/api.md lists them","type":"not_found"}}"#,
                    "{method} {path} is in docs/openapi.yaml but not served"
                );
                reply.status
            };
            assert_ne!(status, 405, "{method} {path}");
            // Each documented status is one the spec lists for that operation.
            let listed = methods[method.to_ascii_lowercase()]["responses"]
                .as_object()
                .unwrap()
                .contains_key(&status.to_string());
            assert!(
                listed,
                "{method} {path} answered {status}, not in docs/openapi.yaml"
            );
            checked += 1;
        }
    }
    assert_eq!(
        checked, 22,
        "expected every operation of docs/openapi.yaml checked (22 in all)"
    );
}

#[test]
fn the_brief_event_stream_says_what_changed_in_few_small_events() {
    let ws = Workspace::new(CONFIG);
    let (_d, url, token) = ws.start_http();
    let t = Some(token.as_str());
    let mut brief = SseStream::open(&url, "/events?brief=true&after=0", &token, &[]);
    assert_eq!(brief.status, 200);
    for id in ["b1", "b2"] {
        let body = format!(r#"{{"prompt": "p", "id": "{id}"}}"#);
        assert_eq!(http(&url, "POST", "/tasks", t, Some(&body)).status, 201);
    }
    ws.wait_settled("b1");
    ws.wait_settled("b2");
    let last_seq = ws.records().last().unwrap().seq;
    // Read until the events have covered every record written; each names the tasks it saw.
    let (mut records, mut tasks, mut events, mut seq) = (0, Vec::new(), 0, 0);
    while seq < last_seq {
        let ev = brief.next().expect("the stream stays open");
        assert_eq!(ev.event.as_deref(), Some("changed"), "{ev:?}");
        let data: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
        seq = data["seq"].as_u64().unwrap();
        assert_eq!(
            ev.id,
            Some(seq.to_string()),
            "its id is the last record's seq"
        );
        records += data["records"].as_u64().unwrap();
        for t in data["tasks"].as_array().unwrap() {
            tasks.push(t.as_str().unwrap().to_string());
        }
        events += 1;
    }
    assert_eq!(records, last_seq, "every record is counted once");
    assert!(events < records, "{events} events for {records} records");
    for id in ["b1", "b2"] {
        assert!(tasks.iter().any(|t| t == id), "`{id}` in {tasks:?}");
    }
}

/// Strangers who hold every connection — each sends a login form's headers and never its body,
/// which the door waits 30 s for — do not keep the token's holder out: the oldest stranger's
/// connection is closed to make room, and the request with the token is answered.
#[test]
fn strangers_holding_every_connection_do_not_keep_the_token_out() {
    use std::io::{Read, Write};
    let ws = Workspace::new(CONFIG);
    let (_d, base, token) = ws.start_http();
    let addr = base.trim_start_matches("http://").to_string();
    // More than the door's 256 places.
    let strangers: Vec<std::net::TcpStream> = (0..300)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&addr).unwrap();
            s.write_all(b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    // Without room made, this waited until the strangers' bodies timed out (30 s).
    let mut mine = std::net::TcpStream::connect(&addr).unwrap();
    mine.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    mine.write_all(
        format!(
            "GET /agents HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let mut reply = String::new();
    let read = mine.read_to_string(&mut reply);
    assert!(
        read.is_ok() && reply.starts_with("HTTP/1.1 200"),
        "expected the token's request answered while strangers held the door, got {read:?}: {reply:?}"
    );
    drop(strangers);
}

/// A result whose file is no longer as the task left it (replaced by a link) is refused as the
/// result's state — a 409 — not blamed on the request.
#[test]
fn a_result_replaced_by_a_link_is_a_conflict_not_a_bad_request() {
    let ws = Workspace::new(CONFIG);
    let (_d, url, token) = ws.start_http();
    ws.drop_task("r.json", r#"{"id": "r", "prompt": "p"}"#);
    let Event::Done { output, .. } = ws.wait_settled("r") else {
        panic!("expected `r` done");
    };
    let path = ws.root().join(&output);
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", &path).unwrap();
    let reply = http(&url, "GET", "/tasks/r/result", Some(&token), None);
    assert_eq!(reply.status, 409, "expected a 409, got {reply:?}");
    assert_eq!(
        reply.json()["error"]["type"],
        "conflict",
        "expected the documented `conflict` type: {reply:?}"
    );
}

/// Event streams catching up on records of big prompts hold little of the daemon's memory: a
/// page read back from the files is bounded in bytes, and so is what a stream has read and not
/// yet sent (before, each stream read 1,000 records at a time and queued 256: five clients
/// replaying twenty 1 MB prompts took hundreds of MB).
#[test]
fn event_streams_catching_up_on_big_records_hold_little_memory() {
    let ws = Workspace::new(CONFIG);
    let (d, url, token) = ws.start_http();
    let prompt = "x".repeat(1_000_000);
    for i in 0..20 {
        ws.drop_task(&format!("big{i:02}.md"), &prompt);
    }
    let last = ws.wait_for("the 20 tasks to be done", |recs| {
        let done = recs
            .iter()
            .filter(|r| matches!(r.event, Event::Done { .. }))
            .count();
        (done == 20).then(|| recs.last().map_or(0, |r| r.seq))
    });
    let before = d.peak_rss_kib();
    let readers: Vec<_> = (0..5)
        .map(|_| {
            let (url, token) = (url.clone(), token.clone());
            std::thread::spawn(move || {
                let mut stream = SseStream::open(&url, "/events?after=0", &token, &[]);
                assert_eq!(stream.status, 200, "expected the stream opened");
                loop {
                    let ev = stream.next().expect("the stream stays open");
                    if ev.id.as_deref().and_then(|id| id.parse::<u64>().ok()) >= Some(last) {
                        return;
                    }
                }
            })
        })
        .collect();
    for r in readers {
        r.join().expect("a reader saw every record");
    }
    let grown = d.peak_rss_kib().saturating_sub(before);
    assert!(
        grown < 100 * 1024,
        "expected five streams replaying 20 MB of records to take little memory, the daemon's peak grew {grown} KiB"
    );
}
