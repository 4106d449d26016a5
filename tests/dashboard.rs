//! The web dashboard in a real browser (headless Chromium through WebDriver) against the real
//! daemon: the one-time login, live tasks and output, cancel killing the process group, a
//! provider's countdown and its enable button, the workflow graph, the scorecards, keyboard use
//! and contrast, the fleet's workers and tasks, and no console errors. Screenshots go to `target/dashboard-screenshots/`.

mod common;
#[path = "common/nats.rs"]
mod nats;
#[path = "common/webdriver.rs"]
mod webdriver;

use std::time::Instant;

use common::{Workspace, http, http_with};
use dirigent::ledger::Event;
use serde_json::json;
use webdriver::Browser;

const CONFIG: &str = r#"
concurrency: 2
kill_grace: 300ms
default_chain: [ok]
agents:
  ok:    { command: ["{agents}/ok.sh"], prompt: stdin }
  other: { command: ["{agents}/ok.sh"], prompt: stdin }
  gate:  { command: ["{agents}/gate.sh", "release"] }
  hang:  { command: ["{agents}/hang.sh"] }
roles:
  judge: [other]
"#;

/// A login link from `dirigent open`, as a user would get it.
fn login_link(ws: &Workspace) -> String {
    let out = ws.cli(&["open", "--no-browser", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "`dirigent open` works: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["url"].as_str().expect("a url").to_string()
}

/// The browser, logged in and on the Tasks page.
fn logged_in(ws: &Workspace, base: &str) -> Option<Browser> {
    let b = Browser::start()?;
    b.go(&login_link(ws));
    b.wait(
        "the dashboard after login",
        "document.querySelector('nav') && location.pathname === '/'",
    );
    b.wait("the tasks table", "document.querySelector('#tasks tbody')");
    assert!(
        b.text("header").contains("Tasks"),
        "the header lists the pages"
    );
    let _ = base;
    Some(b)
}

#[test]
fn the_dashboard_needs_a_login_link_that_works_once_and_sets_a_private_cookie() {
    let ws = Workspace::new(CONFIG);
    let (_d, base, token) = ws.start_http();
    let Some(b) = Browser::start() else { return };

    // Without a login: no data, and the way in.
    b.go(&format!("{base}/"));
    b.wait(
        "the login hint",
        "document.querySelector('main').innerText.includes('dirigent open')",
    );
    assert_eq!(
        b.js("return document.querySelector('#tasks')", json!([])),
        json!(null),
        "no tasks without a login"
    );
    b.screenshot("not-logged-in");

    let link = login_link(&ws);
    assert!(
        !link.contains(&token),
        "the token itself is never in the link: {link}"
    );
    let (_, code) = link
        .split_once('#')
        .expect("the code is after `#`, never sent to a server");
    b.go(&link);
    b.wait(
        "the dashboard after login",
        "document.querySelector('#tasks')",
    );
    assert_eq!(
        b.js("return location.href", json!([])),
        json!(format!("{base}/")),
        "the code is gone from the address bar"
    );
    assert_eq!(
        b.js("return document.cookie", json!([])),
        json!(""),
        "the session cookie is HttpOnly: scripts cannot read it"
    );
    b.assert_no_console_errors(&["401"]);

    // The same link a second time: refused, with what to do.
    let again = http(&base, "POST", "/login", None, Some(code));
    assert_eq!(again.status, 401, "{again:?}");
    assert_eq!(
        again.json()["error"]["message"],
        "this login link cannot be used: it was already used; run `dirigent open` for a new one"
    );
    // A fresh code gives a cookie with the promised attributes, and the session's CSRF value.
    let (_, fresh) = login_link(&ws)
        .split_once('#')
        .map(|(a, c)| (a.to_string(), c.to_string()))
        .unwrap();
    let ok = http(&base, "POST", "/login", None, Some(&fresh));
    assert_eq!(ok.status, 200, "{ok:?}");
    let set = ok.header("set-cookie").expect("a cookie").to_string();
    let port = base.rsplit(':').next().unwrap();
    assert!(set.starts_with(&format!("dirigent_{port}=")), "{set}");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attr), "`{attr}` in {set}");
    }
    let cookie = set.split(';').next().unwrap().to_string();
    let csrf = ok.json()["csrf"]
        .as_str()
        .expect("the CSRF value")
        .to_string();
    // The cookie alone — what a server on another port of this host would be sent — is
    // refused, for reading too; with the CSRF value it works.
    for (method, path) in [("GET", "/tasks"), ("GET", "/events"), ("POST", "/tasks")] {
        let alone = http_with(
            &base,
            method,
            path,
            None,
            &[("Cookie", &cookie)],
            Some("{}"),
        );
        assert_eq!(
            alone.status, 403,
            "{method} {path} with the cookie alone: {alone:?}"
        );
    }
    let session = [
        ("Cookie", cookie.as_str()),
        ("X-Dirigent-CSRF", csrf.as_str()),
    ];
    let both = http_with(&base, "GET", "/tasks", None, &session, None);
    assert_eq!(both.status, 200, "{both:?}");
    // A logout ends its session on the server: a copy of the cookie (with the CSRF value)
    // made before it no longer gets in. Another session goes on.
    let (_, other_code) = login_link(&ws)
        .split_once('#')
        .map(|(a, c)| (a.to_string(), c.to_string()))
        .unwrap();
    let other = http(&base, "POST", "/login", None, Some(&other_code));
    let other_cookie = other
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let other_csrf = other.json()["csrf"].as_str().unwrap().to_string();
    let out = http_with(&base, "POST", "/logout", None, &session, Some(""));
    assert_eq!(out.status, 200, "{out:?}");
    let after = http_with(&base, "GET", "/tasks", None, &session, None);
    assert_eq!(
        after.status, 401,
        "the logged-out session's copy: {after:?}"
    );
    let other_session = [
        ("Cookie", other_cookie.as_str()),
        ("X-Dirigent-CSRF", other_csrf.as_str()),
    ];
    let still = http_with(&base, "GET", "/tasks", None, &other_session, None);
    assert_eq!(still.status, 200, "the other session goes on: {still:?}");
    let session = other_session;
    // A new token file ends every session and the old token, without a restart.
    std::fs::remove_file(ws.path("http.token")).unwrap();
    let again = http_with(&base, "GET", "/tasks", None, &session, None);
    assert_eq!(
        again.status, 401,
        "a session from before the new token: {again:?}"
    );
    assert_eq!(
        http(&base, "GET", "/tasks", Some(&token), None).status,
        401,
        "the old token"
    );
    let new_token = std::fs::read_to_string(ws.path("http.token")).unwrap();
    assert_ne!(new_token.trim(), token);
    assert_eq!(
        http(&base, "GET", "/tasks", Some(new_token.trim()), None).status,
        200,
        "the new token"
    );
}

#[test]
fn a_task_from_the_cli_appears_live_and_its_output_streams_while_the_agent_prints() {
    let ws = Workspace::new(CONFIG);
    let (_d, base, _token) = ws.start_http();
    let Some(b) = logged_in(&ws, &base) else {
        return;
    };
    // Set on this page only: still there later means the page was never reloaded.
    b.js("window.__sameDocument = true", json!([]));

    let submitted = Instant::now();
    let out = ws.cli(&[
        "submit",
        "wait for the gate",
        "--agent",
        "gate",
        "--id",
        "g1",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    b.wait(
        "the new task's row",
        "document.querySelector('#tasks tr[data-id=\"g1\"]')",
    );
    let appeared = submitted.elapsed();
    assert_eq!(
        b.js("return window.__sameDocument === true", json!([])),
        json!(true),
        "the row came without a reload"
    );
    eprintln!(
        "the task appeared {} ms after `submit` returned",
        appeared.as_millis()
    );
    b.wait(
        "the row to say running",
        "document.querySelector('#tasks tr[data-id=\"g1\"]').innerText.includes('running')",
    );
    b.screenshot("tasks");

    // Its page: the prompt, and the output as the agent prints it.
    b.click("#tasks tr[data-id=\"g1\"] a");
    b.wait("the first output line", "document.querySelector('#log') && document.querySelector('#log').innerText.includes('waiting for release')");
    assert!(
        b.text("#prompt").contains("wait for the gate"),
        "the prompt is shown"
    );
    assert!(
        !b.text("#log").contains("released"),
        "the agent has not printed that yet"
    );
    b.screenshot("task-running");
    std::fs::write(ws.root().join("release"), "").unwrap();
    b.wait(
        "the line printed after the gate opened",
        "document.querySelector('#log').innerText.includes('released')",
    );
    b.wait("the result", "document.querySelector('.markdown')");
    assert!(b.text("main").contains("done"), "the task is done");
    b.screenshot("task-done");

    // Filters: a text that matches nothing, then the task's agent.
    b.go(&format!("{base}/#/tasks"));
    b.wait(
        "the tasks table",
        "document.querySelector('#tasks tr[data-id=\"g1\"]')",
    );
    b.type_into("input[name=q]", "no-such-task");
    b.wait(
        "the filter to apply",
        "document.querySelector('#tasks').innerText.includes('no tasks match')",
    );
    b.assert_no_console_errors(&[]);
}

#[test]
fn a_task_submitted_from_the_page_runs_and_the_scorecards_chart_it() {
    let ws = Workspace::new(CONFIG);
    let (_d, base, _token) = ws.start_http();
    let Some(b) = logged_in(&ws, &base) else {
        return;
    };
    b.go(&format!("{base}/#/submit"));
    b.wait(
        "the submit form",
        "document.querySelector('#task-form select[name=agent] option[value=ok]')",
    );
    b.type_into("#prompt-input", "say hello from the page");
    b.js(
        "document.querySelector('#task-form select[name=agent]').value = 'ok'",
        json!([]),
    );
    b.screenshot("submit");
    b.click("#task-form button[type=submit]");
    b.wait("the task's page", "location.hash.startsWith('#/task/')");
    let id = b.js(
        "return decodeURIComponent(location.hash.slice('#/task/'.length))",
        json!([]),
    );
    let id = id.as_str().unwrap().to_string();
    ws.wait_settled(&id);
    b.wait(
        "the result on the page",
        "document.querySelector('.markdown')",
    );
    let record = ws.records().into_iter().find_map(|r| match r.event {
        Event::AttemptStarted { task, agent, .. } if task == id => Some(agent),
        _ => None,
    });
    assert_eq!(
        record.as_deref(),
        Some("ok"),
        "the agent chosen on the page ran"
    );

    b.go(&format!("{base}/#/scorecards"));
    b.wait(
        "the charts",
        "document.querySelectorAll('#charts svg').length >= 4",
    );
    assert!(
        b.text("#scores").contains("100%"),
        "one attempt, one success: {}",
        b.text("#scores")
    );
    b.screenshot("scorecards");
    b.assert_no_console_errors(&[]);
}

#[test]
fn cancel_from_the_page_kills_the_whole_process_group() {
    let ws = Workspace::new(CONFIG);
    let (_d, base, _token) = ws.start_http();
    let Some(b) = logged_in(&ws, &base) else {
        return;
    };
    ws.drop_task("h1.json", r#"{"prompt": "hang", "agent": "hang"}"#);
    ws.wait_started("h1");
    let pid_file = ws.root().join("grandchild.pid");
    let grandchild: u32 = ws.wait_until("the grandchild's pid", || {
        std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok()
    });
    b.go(&format!("{base}/#/task/h1"));
    b.wait("the cancel button", "document.querySelector('#cancel')");
    b.wait(
        "the agent's output",
        "document.querySelector('#log').innerText.includes('started grandchild')",
    );
    b.click("#cancel");
    b.wait(
        "the cancelled state",
        "document.querySelector('main').innerText.includes('failed')",
    );
    ws.wait_until("the grandchild to be gone", || {
        common::process_gone(grandchild).then_some(())
    });
    assert!(
        ws.records()
            .iter()
            .any(|r| matches!(&r.event, Event::Cancelled { task, .. } if task == "h1")),
        "the ledger records the cancel"
    );
    b.assert_no_console_errors(&[]);
}

#[test]
fn a_resting_provider_counts_down_and_its_enable_button_works() {
    let ws = Workspace::new(
        r#"
concurrency: 1
agents:
  claude: { preset: claude, env: { FAKE_MODE: rate_limit, FAKE_RESET_SECS: "900" } }
  backup: { command: ["{agents}/ok.sh"] }
"#,
    );
    // The fake claude CLI on PATH, logged in, in a home of its own.
    let bin = ws.root().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(common::agents_dir().join("fake-cli.sh"), bin.join("claude"))
        .unwrap();
    let home = ws.root().join("home");
    std::fs::create_dir_all(home.join(".claude")).unwrap();
    std::fs::write(home.join(".claude/.credentials.json"), "{}").unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let _d = ws.start_full(
        &[
            ("PATH", &path),
            ("HOME", home.to_str().unwrap()),
            ("ANTHROPIC_API_KEY", ""),
        ],
        &["--http", "127.0.0.1:0"],
    );
    let base = ws.wait_until("the HTTP door", || {
        std::fs::read_to_string(ws.path("http.url"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    });
    ws.drop_task(
        "a.json",
        r#"{"prompt": "p", "chain": ["claude", "backup"]}"#,
    );
    ws.wait_settled("a");
    let Some(b) = logged_in(&ws, &base) else {
        return;
    };
    b.go(&format!("{base}/#/agents"));
    b.wait(
        "the cooling-down card",
        "document.querySelector('[data-agent=claude] .countdown')",
    );
    let countdown = b.wait(
        "the countdown to tick",
        "(() => { const t = document.querySelector('[data-agent=claude] .countdown').innerText; return /\\d+m\\d\\ds from now/.test(t) && t; })()",
    );
    assert!(
        countdown.as_str().unwrap().ends_with("from now"),
        "{countdown}"
    );
    b.screenshot("agents-cooling-down");
    b.click("[data-agent=claude] button.enable");
    b.wait(
        "the provider to be ready again",
        "document.querySelector('[data-agent=claude] .state').innerText === 'ready'",
    );
    assert!(
        ws.records().iter().any(
            |r| matches!(&r.event, Event::ProviderEnabled { provider, .. } if provider == "claude")
        ),
        "the ledger records the enable"
    );
    b.assert_no_console_errors(&[]);
}

#[test]
fn the_workflow_graph_shows_a_finished_ensemble_with_its_tasks() {
    let ws = Workspace::new(CONFIG);
    std::fs::write(
        ws.path("workflows").join("demo.yaml"),
        r#"
name: demo
vars: { feature: ~ }
phases:
  - name: propose
    type: ensemble
    agents: [ok, other]
    judge: judge
    judge_mode: synthesize
    prompt: Propose {feature}
  - name: build
    type: single
    agent: ok
    input: propose
    prompt: Build {feature}
"#,
    )
    .unwrap();
    let (_d, base, _token) = ws.start_http();
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
    let Some(b) = logged_in(&ws, &base) else {
        return;
    };
    b.go(&format!("{base}/#/workflows"));
    b.wait(
        "the run's graph",
        "document.querySelector('[data-run=r1] .graph')",
    );
    let phases = b.js(
        "return [...document.querySelectorAll('[data-run=r1] .node')].map(n => [n.dataset.phase, n.className])",
        json!([]),
    );
    assert_eq!(
        phases,
        json!([["propose", "node completed"], ["build", "node completed"]]),
        "both phases, in order, completed"
    );
    let propose = b.text("[data-run=r1] [data-phase=propose]");
    assert!(
        propose.matches("r1.propose").count() >= 2,
        "the ensemble's tasks are listed under it: {propose}"
    );
    b.screenshot("workflows");
    // The run's own page shows the same graph.
    b.go(&format!("{base}/#/task/r1"));
    b.wait(
        "the run's graph on its page",
        "document.querySelector('main [data-run=r1] [data-phase=build]')",
    );
    b.assert_no_console_errors(&[]);
}

#[test]
fn the_pages_work_from_the_keyboard_and_their_text_is_readable() {
    let ws = Workspace::new(CONFIG);
    let (_d, base, _token) = ws.start_http();
    ws.drop_task("k1.json", r#"{"prompt": "p"}"#);
    ws.wait_settled("k1");
    let Some(b) = logged_in(&ws, &base) else {
        return;
    };
    // Tab from the top: the skip link first, then the pages in order.
    b.js(
        "document.activeElement.blur(); window.scrollTo(0, 0)",
        json!([]),
    );
    b.keys(&["\u{E004}"]);
    assert_eq!(
        b.js("return document.activeElement.innerText", json!([])),
        json!("Skip to content")
    );
    b.keys(&["\u{E004}", "\u{E004}", "\u{E004}"]);
    assert_eq!(
        b.js("return document.activeElement.innerText", json!([])),
        json!("Agents")
    );
    b.keys(&["\u{E007}"]);
    b.wait(
        "the agents page, reached by Enter",
        "document.querySelector('#agents [data-agent=ok]')",
    );
    // Every piece of text against what is behind it: WCAG AA (4.5:1) or better.
    for page in ["#/tasks", "#/agents", "#/scorecards", "#/submit"] {
        b.go(&format!("{base}/{page}"));
        b.wait(
            "the page",
            "document.querySelector('main').children.length > 0",
        );
        let worst = b.js(CONTRAST, json!([]));
        assert!(
            worst[0].as_f64().unwrap() >= 4.5,
            "{page}: the least readable text `{}` has contrast {} (WCAG AA asks 4.5)",
            worst[1],
            worst[0]
        );
    }
    b.assert_no_console_errors(&[]);
}

/// The lowest contrast ratio of any visible text on the page against its background, and the
/// text: WCAG's relative luminance, with the background the nearest opaque one up the tree.
const CONTRAST: &str = r#"
const parse = (c) => { const m = c.match(/[\d.]+/g).map(Number); return { r: m[0], g: m[1], b: m[2], a: m.length > 3 ? m[3] : 1 }; };
const lum = ({ r, g, b }) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); }; return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
const bg = (el) => { for (let e = el; e; e = e.parentElement) { const c = parse(getComputedStyle(e).backgroundColor); if (c.a > 0.5) return c; } return { r: 255, g: 255, b: 255 }; };
let worst = [21, ""];
for (const el of document.querySelectorAll("body *")) {
  const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
  if (!own || !el.offsetParent) continue;
  const a = lum(parse(getComputedStyle(el).color)), b = lum(bg(el));
  const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  if (ratio < worst[0]) worst = [ratio, el.innerText.slice(0, 40)];
}
return worst;
"#;

#[test]
fn the_fleet_page_lists_the_workers_and_every_nodes_tasks() {
    let Some(nats) = nats::Nats::start() else {
        return;
    };
    let desk = Workspace::new(&nats::node(
        &nats,
        "desk",
        false,
        "  alpha: { command: [\"absent-alpha-cli\"] }\n",
    ));
    let gpu = nats::ok_worker(&nats, "gpu", &["alpha"]);
    let _dd = desk.start_full(&[], &["--http", "127.0.0.1:0"]);
    let _dg = gpu.start();
    let base = desk.wait_until("the HTTP door", || {
        std::fs::read_to_string(desk.path("http.url"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    });
    desk.drop_task("t.json", r#"{"prompt": "p", "agent": "alpha"}"#);
    let settled = desk.wait_settled("t");
    assert!(
        matches!(settled, Event::Done { .. }),
        "expected `t` done on the fleet, got {settled:?}"
    );
    let Some(b) = logged_in(&desk, &base) else {
        return;
    };
    b.wait(
        "the Fleet link (this node is in a fleet)",
        "!document.getElementById('fleet-link').hidden",
    );
    b.click("#fleet-link");
    let worker = b.wait(
        "the worker `gpu` listed live",
        "(() => { const r = document.querySelector('#fleet-workers [data-worker=gpu]'); return r && /live/.test(r.innerText) && r.innerText; })()",
    );
    assert!(
        worker.as_str().unwrap().contains("alpha"),
        "expected the worker's row to list its agent, got {worker}"
    );
    let task = b.wait(
        "the submitted task with the worker it ran on",
        "(() => { const r = document.querySelector('#fleet-tasks [data-node=desk][data-task=t]'); return r && /ran on gpu/.test(r.innerText) && r.innerText; })()",
    );
    assert!(
        task.as_str().unwrap().contains("done"),
        "expected `t` done on the Fleet page, got {task}"
    );
    b.wait(
        "the worker's copy of the task",
        "document.querySelector('#fleet-tasks [data-node=gpu]')",
    );
    b.screenshot("fleet");
    b.assert_no_console_errors(&[]);
}
