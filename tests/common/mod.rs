//! Test harness: a temp workspace, the real `dirigent` binary as a child process, script agents
//! from `tests/agents/`, and waiting on ledger events (woken by a file watcher) instead of
//! sleeping.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dirigent::ledger::{self, Event, Record};

pub const BIN: &str = env!("CARGO_BIN_EXE_dirigent");

/// How long any single wait may take before the test fails with the ledger printed.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub fn agents_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/agents")
}

pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    /// A workspace with `.context/` created and `config` written (`{agents}` is replaced by the
    /// absolute path of `tests/agents`).
    pub fn new(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace { dir };
        let out = ws.cli(&["init"]);
        assert!(out.status.success(), "init failed: {out:?}");
        let config = config.replace("{agents}", &agents_dir().display().to_string());
        std::fs::write(ws.ctx().join("dirigent.yaml"), config).unwrap();
        ws
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }
    pub fn ctx(&self) -> PathBuf {
        self.root().join(".context")
    }
    pub fn path(&self, rel: &str) -> PathBuf {
        self.ctx().join(rel)
    }

    /// Runs a CLI command to completion.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("DIRIGENT_ROOT", self.root())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Starts `dirigent daemon` on this workspace.
    pub fn start(&self) -> Daemon {
        self.start_with(&[])
    }

    pub fn start_with(&self, env: &[(&str, &str)]) -> Daemon {
        self.start_full(env, &[])
    }

    /// Starts the daemon with extra environment and extra `daemon` arguments.
    pub fn start_full(&self, env: &[(&str, &str)], args: &[&str]) -> Daemon {
        let log = std::fs::File::create(self.root().join("daemon.log")).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["daemon", "--log-level", "debug"])
            .args(args)
            .env("DIRIGENT_ROOT", self.root())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Daemon {
            child: Some(cmd.spawn().unwrap()),
            log: self.root().join("daemon.log"),
        }
    }

    /// Replaces `.context/dirigent.yaml` atomically, as an editor would.
    pub fn write_config(&self, config: &str) {
        let config = config.replace("{agents}", &agents_dir().display().to_string());
        let tmp = self.ctx().join(".dirigent.yaml.tmp");
        std::fs::write(&tmp, config).unwrap();
        std::fs::rename(&tmp, self.ctx().join("dirigent.yaml")).unwrap();
    }

    /// Drops a task file into the inbox the Maildir way (write elsewhere, rename in).
    pub fn drop_task(&self, name: &str, content: &str) {
        let tmp = self.path("inbox/.tmp").join(name);
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(&tmp, self.path("inbox").join(name)).unwrap();
    }

    pub fn records(&self) -> Vec<Record> {
        ledger::read(&self.path("ledger.jsonl")).unwrap().records
    }

    /// Waits until `found` returns `Some` for the ledger's records. Woken by changes in
    /// `.context/`; fails the test with the ledger and the daemon log after [`PATIENCE`].
    pub fn wait_for<T>(&self, what: &str, mut found: impl FnMut(&[Record]) -> Option<T>) -> T {
        use notify::Watcher;
        let (tx, rx) = mpsc::channel();
        let mut watcher = notify::recommended_watcher(move |_| {
            let _ = tx.send(());
        })
        .unwrap();
        watcher
            .watch(&self.ctx(), notify::RecursiveMode::NonRecursive)
            .unwrap();
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(v) = found(&self.records()) {
                return v;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "timed out waiting for {what}\n--- ledger ---\n{}\n--- daemon log ---\n{}",
                    std::fs::read_to_string(self.path("ledger.jsonl")).unwrap_or_default(),
                    std::fs::read_to_string(self.root().join("daemon.log")).unwrap_or_default()
                );
            }
            // A wake-up means "look again"; the timeout only bounds a missed event.
            let _ = rx.recv_timeout(left.min(Duration::from_millis(500)));
        }
    }

    /// Waits for the task's `done` or `escalated` event and returns it.
    pub fn wait_settled(&self, task: &str) -> Event {
        self.wait_for(&format!("task `{task}` to settle"), |recs| {
            recs.iter().rev().find_map(|r| match &r.event {
                e @ (Event::Done { task: t, .. } | Event::Escalated { task: t, .. })
                    if t == task =>
                {
                    Some(e.clone())
                }
                _ => None,
            })
        })
    }

    /// Attempts of a task as (agent, class) in order.
    pub fn attempts(&self, task: &str) -> Vec<(String, String)> {
        self.records()
            .iter()
            .filter_map(|r| match &r.event {
                Event::AttemptFinished {
                    task: t,
                    agent,
                    class,
                    ..
                } if t == task => Some((agent.clone(), class.as_str().to_string())),
                _ => None,
            })
            .collect()
    }
}

/// A running daemon; stopped with SIGTERM (and waited for) when dropped.
pub struct Daemon {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGTERM, then wait for the exit; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        child.wait().unwrap()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig).unwrap();
    }

    /// SIGKILL: a crash, with no chance to clean up.
    pub fn crash(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Peak resident memory of the daemon so far, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
    }
}

/// Whether a process is gone (or only a zombie waiting for init to reap it).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            let after = &stat[stat.rfind(')').unwrap() + 1..];
            after.split_whitespace().next() == Some("Z")
        }
    }
}

/// The most attempts the ledger shows running at once.
pub fn max_running(records: &[Record]) -> i32 {
    let (mut now, mut max) = (0i32, 0i32);
    for r in records {
        match r.event {
            Event::AttemptStarted { .. } => now += 1,
            Event::AttemptFinished { .. } => now -= 1,
            _ => {}
        }
        max = max.max(now);
    }
    max
}

/// Names of the files in a `.context/` subdirectory, sorted.
pub fn list(ws: &Workspace, sub: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(ws.path(sub))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    v.sort();
    v
}
