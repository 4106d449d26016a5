//! The live terminal views against a real daemon: `dirigent top` (frames printed on change when
//! piped) and `dirigent logs -f` of several tasks or `--all` (interleaved, prefixed lines, and
//! an end once the named tasks have ended).

mod common;

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use common::{BIN, Workspace};

const CONFIG: &str = r#"
concurrency: 2
agents:
  gate: { command: ["{agents}/gate.sh", "release"] }
"#;

/// A CLI command left running, its stdout read line by line on a thread of its own.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(ws: &Workspace, args: &[&str]) -> Running {
        let mut child = Command::new(BIN)
            .args(args)
            .env("DIRIGENT_ROOT", ws.root())
            .env("DIRIGENT_STATE_DIR", ws.state.path())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads lines until one satisfies `want`; returns it.
    fn until(&mut self, what: &str, want: impl Fn(&str) -> bool) -> String {
        loop {
            match self.lines.recv_timeout(common::patience()) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if want(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line with {what}; the output was:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

impl Running {
    /// Reads lines until each of `wanted` has been seen, in any order.
    fn until_all(&mut self, what: &str, wanted: &[&str]) {
        let mut left: Vec<&str> = wanted.to_vec();
        while !left.is_empty() {
            let line = self.until(what, |l| left.contains(&l));
            left.retain(|w| *w != line);
        }
    }

    /// Reads lines until each of `tests` has matched a line, in any order: one frame lists
    /// its rows in its own order, and a frame is printed only when something changed, so
    /// waiting for one row after another can wait past the only frame that has both.
    fn until_each(&mut self, what: &str, tests: &[&dyn Fn(&str) -> bool]) {
        let mut left: Vec<&dyn Fn(&str) -> bool> = tests.to_vec();
        while !left.is_empty() {
            let line = self.until(what, |l| left.iter().any(|t| t(l)));
            if let Some(i) = left.iter().position(|t| t(&line)) {
                left.remove(i);
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn top_shows_each_running_agent_with_its_last_line_and_then_what_finished() {
    let ws = Workspace::new(CONFIG);
    let _d = ws.start();
    ws.drop_task("g1.json", r#"{"prompt": "p", "agent": "gate"}"#);
    ws.drop_task("g2.json", r#"{"prompt": "p", "agent": "gate"}"#);
    let mut top = Running::start(&ws, &["top"]);
    top.until("the header", |l| {
        l.starts_with("dirigent — ") && l.contains("daemon running")
    });
    // Piped, a frame is printed only when something changed: the time column is when the
    // attempt started (HH:MM:SS), which stays; the last output line is the agent's.
    let running = |id: &'static str| {
        move |l: &str| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words.len() == 7
                && words[..3] == [id, "gate", "1"]
                && words[3].len() == 8
                && words[3].chars().filter(|c| *c == ':').count() == 2
                && words[4..] == ["waiting", "for", "release"]
        }
    };
    let (g1, g2) = (running("g1"), running("g2"));
    top.until_each("`g1` and `g2` running", &[&g1, &g2]);
    std::fs::write(ws.root().join("release"), "").unwrap();
    // Both may end between two frames: the empty table and the finished list then come in
    // one frame, the table first.
    let finished = |l: &str| l == "  g1  done by gate" || l == "  g2  done by gate";
    let empty = |l: &str| l == "(nothing running)";
    top.until_each(
        "an empty table and the finished tasks",
        &[&finished, &empty],
    );
}

#[test]
fn logs_of_several_tasks_are_interleaved_with_prefixes_and_end_when_they_end() {
    let ws = Workspace::new(CONFIG);
    let _d = ws.start();
    ws.drop_task("a1.json", r#"{"prompt": "p", "agent": "gate"}"#);
    ws.drop_task("b2.json", r#"{"prompt": "p", "agent": "gate"}"#);
    let mut all = Running::start(&ws, &["logs", "-f", "--all"]);
    let mut named = Running::start(&ws, &["logs", "-f", "a1", "b2"]);
    for r in [&mut all, &mut named] {
        r.until_all(
            "both first lines",
            &[
                "a1/gate | waiting for release",
                "b2/gate | waiting for release",
            ],
        );
    }
    std::fs::write(ws.root().join("release"), "").unwrap();
    for r in [&mut all, &mut named] {
        r.until_all(
            "both last lines",
            &["a1/gate | released", "b2/gate | released"],
        );
    }
    // The named tasks have ended: that view ends by itself, successfully.
    let status = named.child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "`logs -f a1 b2` ends with its tasks"
    );
    // A later attempt joins the `--all` view.
    ws.drop_task("c3.json", r#"{"prompt": "p", "agent": "gate"}"#);
    all.until("a task started later", |l| {
        l == "c3/gate | waiting for release"
    });
}

#[test]
fn logs_refuse_flags_that_take_one_task_with_several() {
    let ws = Workspace::new(CONFIG);
    let out = ws.cli(&["logs", "a", "b", "--stderr"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: `--attempt` and `--stderr` take one task; several show every stream of their latest attempts"
    );
    let out = ws.cli(&["logs"]);
    assert_eq!(out.status.code(), Some(2), "`logs` needs a task");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: give the task (or tasks) whose output to print, or `--all` for every attempt's; `dirigent status` lists the tasks\n",
        "expected what is missing named, and `--all`"
    );
    let out = ws.cli(&["logs", "-f", "nosuch", "other"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: no task `nosuch` in this workspace; `dirigent status` lists the tasks"
    );
}

#[test]
fn top_on_a_terminal_redraws_in_place_and_never_passes_an_agents_escape_sequences_on() {
    let ws = Workspace::new("agents:\n  evil: { command: [\"sh\", \"evil.sh\"] }\n");
    // Sets the terminal's title (an OSC sequence), then prints a line, then keeps running.
    std::fs::write(
        ws.root().join("evil.sh"),
        "printf '\\033]0;pwned\\007visible line\\n'\nexec sleep 60\n",
    )
    .unwrap();
    let _d = ws.start();
    ws.drop_task("e1.json", r#"{"prompt": "p", "agent": "evil"}"#);
    ws.wait_started("e1");
    // `top` on a pseudo-terminal, read until the agent's line shows (or the patience runs out).
    let script = r#"
import os, pty, sys, time, json, signal
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
data = b""
deadline = time.time() + float(os.environ["PATIENCE"])
while b"visible line" not in data and time.time() < deadline:
    try:
        chunk = os.read(fd, 65536)
    except OSError:
        break
    if not chunk:
        break
    data += chunk
os.kill(pid, signal.SIGTERM)
os.waitpid(pid, 0)
print(json.dumps({"home": data.count(b"\x1b[H"), "visible": b"visible line" in data, "osc": b"\x1b]" in data or b"pwned" in data}))
"#;
    let out = Command::new("python3")
        .args(["-c", script, BIN, "top"])
        .env("DIRIGENT_ROOT", ws.root())
        .env("DIRIGENT_STATE_DIR", ws.state.path())
        .env("PATIENCE", common::patience().as_secs().to_string())
        .output()
        .expect("python3 runs");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(v["visible"], true, "the agent's last line is shown: {v}");
    assert!(
        v["home"].as_u64().unwrap() >= 1,
        "frames are drawn from the top left, in place: {v}"
    );
    assert_eq!(
        v["osc"], false,
        "the agent's escape sequence never reaches the terminal: {v}"
    );
}

/// Without a daemon, `top` counts the task files waiting in the inbox, as `status` lists them.
#[test]
fn top_counts_the_files_waiting_in_the_inbox() {
    let ws = Workspace::new(CONFIG);
    ws.drop_task("q1.json", r#"{"prompt": "p"}"#);
    ws.drop_task("q2.md", "p\n");
    let mut top = Running::start(&ws, &["top"]);
    top.until("the header with the inbox counted", |l| {
        l.starts_with("dirigent — 0 running, 2 waiting (2 in the inbox), ")
            && l.ends_with("no daemon running")
    });
}
