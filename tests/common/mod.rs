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

/// [`PATIENCE`], or `DIRIGENT_TEST_PATIENCE` seconds (for a machine known to be slow; keep it
/// under nextest's `terminate-after` in `.config/nextest.toml`).
/// Reads `child`'s stderr line by line until one contains `want` (within [`patience`]):
/// whether it came, and the lines said before it.
pub fn stderr_until(child: &mut Child, want: &str) -> (bool, Vec<String>) {
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut said = Vec::new();
    loop {
        match rx.recv_timeout(patience()) {
            Ok(line) if line.contains(want) => return (true, said),
            Ok(line) => said.push(line),
            Err(_) => return (false, said),
        }
    }
}

/// Makes a process the test starts (a daemon, a server) die with the test's process: a test
/// that nextest kills on a timeout would otherwise leave it running, loading every test after.
/// (The signal comes when the thread that spawned it ends: tests start these from their own
/// thread, which lives as long as the test.)
pub fn die_with_the_test(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches only the child about to exec.
    unsafe {
        cmd.pre_exec(|| {
            if nix::libc::prctl(nix::libc::PR_SET_PDEATHSIG, nix::libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

pub fn patience() -> Duration {
    std::env::var("DIRIGENT_TEST_PATIENCE")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(PATIENCE, Duration::from_secs)
}

/// Whether a watcher event means something may have changed: created, written, renamed or
/// removed (or closed after writing), not merely opened or read. The waits below read files in
/// the directory they watch; waking on their own opens would spin a core for the whole wait
/// (the CLI's waiting clients had the same bug, fixed in 5791789).
fn is_change(kind: &notify::EventKind) -> bool {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

pub fn agents_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/agents")
}

pub struct Workspace {
    pub dir: tempfile::TempDir,
    /// Where this workspace's ledger key lives (`DIRIGENT_STATE_DIR`), outside the workspace
    /// and outside the user's home.
    pub state: tempfile::TempDir,
}

impl Workspace {
    /// A workspace with `.context/` created and `config` written (`{agents}` is replaced by the
    /// absolute path of `tests/agents`).
    pub fn new(config: &str) -> Self {
        Self::in_dir(tempfile::tempdir().unwrap(), config)
    }

    /// [`Workspace::new`] in a directory the test made (on a small file system, say).
    pub fn in_dir(dir: tempfile::TempDir, config: &str) -> Self {
        let ws = Workspace {
            dir,
            state: tempfile::tempdir().unwrap(),
        };
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
            .env("DIRIGENT_STATE_DIR", self.state.path())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// [`Workspace::cli`] with more environment (as an agent's attempt would have).
    #[allow(dead_code)]
    pub fn cli_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("DIRIGENT_ROOT", self.root())
            .env("DIRIGENT_STATE_DIR", self.state.path())
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }

    /// Starts a `dirigent` command on this workspace without waiting for it (stdout and
    /// stderr piped), for one that waits: the test reads what it says, then ends it.
    #[allow(dead_code)]
    pub fn cli_spawn(&self, args: &[&str]) -> Child {
        Command::new(BIN)
            .args(args)
            .env("DIRIGENT_ROOT", self.root())
            .env("DIRIGENT_STATE_DIR", self.state.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
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
        self.start_program(Path::new(BIN), env, args)
    }

    /// [`Workspace::start_full`] with the `dirigent` binary at `program`.
    pub fn start_program(&self, program: &Path, env: &[(&str, &str)], args: &[&str]) -> Daemon {
        let log = std::fs::File::create(self.root().join("daemon.log")).unwrap();
        let mut cmd = Command::new(program);
        cmd.args(["daemon", "--log-level", "debug"])
            .args(args)
            .env("DIRIGENT_ROOT", self.root())
            .env("DIRIGENT_STATE_DIR", self.state.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        die_with_the_test(&mut cmd);
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

    /// Writes `.context/workflows/NAME.yaml`.
    pub fn write_workflow(&self, name: &str, text: &str) {
        std::fs::create_dir_all(self.path("workflows")).unwrap();
        std::fs::write(self.path("workflows").join(format!("{name}.yaml")), text).unwrap();
    }

    /// Drops a task file into the inbox the Maildir way (write elsewhere, rename in).
    pub fn drop_task(&self, name: &str, content: &str) {
        let tmp = self.path("inbox/.tmp").join(name);
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(&tmp, self.path("inbox").join(name)).unwrap();
    }

    /// The ledger's records still on disk, oldest first: the rotated segments, then the live
    /// file. A record may be rotated into a segment a moment after it was written (a restart
    /// folds the segments it finds), so a wait must not look at the live file alone.
    pub fn records(&self) -> Vec<Record> {
        // The current file first: one rotated between the two reads is then among the segments
        // listed after it (read the other way round, its records would be missed).
        let current = ledger::read(&self.path("ledger.jsonl")).unwrap().records;
        let mut out: Vec<Record> = Vec::new();
        let segments = ledger::segments(&self.ctx()).unwrap_or_default();
        // A segment compacted away between listing and reading is simply gone.
        for (_, path) in segments {
            if let Ok(read) = ledger::read(&path) {
                out.extend(read.records);
            }
        }
        out.extend(current);
        // Each record once (a rotation racing the reads may show one twice). By its number, not
        // by order: a test may plant a line with a number of its own.
        let mut seen = std::collections::HashSet::new();
        out.retain(|r| seen.insert(r.seq));
        out
    }

    /// Waits until `found` returns `Some` for the ledger's records. Woken by changes in
    /// `.context/`; fails the test with the ledger and the daemon log after [`PATIENCE`].
    pub fn wait_for<T>(&self, what: &str, mut found: impl FnMut(&[Record]) -> Option<T>) -> T {
        self.wait_until(what, || found(&self.records()))
    }

    /// The reason the inbox file `file` was rejected with, once it was.
    pub fn rejection(&self, file: &str) -> String {
        self.wait_for(&format!("`{file}` to be rejected"), |recs| {
            recs.iter().find_map(|r| match &r.event {
                Event::Rejected {
                    file: f, reason, ..
                } if f == file => Some(reason.clone()),
                _ => None,
            })
        })
    }

    /// Waits until `found` returns `Some`, looking again on every change in `.context/`.
    pub fn wait_until<T>(&self, what: &str, found: impl FnMut() -> Option<T>) -> T {
        self.wait_until_longer(what, Duration::ZERO, found)
    }

    /// [`Self::wait_until`] for something that by design takes `longer` than usual (a rate
    /// window, say): the patience is that much more.
    pub fn wait_until_longer<T>(
        &self,
        what: &str,
        longer: Duration,
        mut found: impl FnMut() -> Option<T>,
    ) -> T {
        use notify::Watcher;
        let (tx, rx) = mpsc::channel();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if res.as_ref().map_or(true, |e| is_change(&e.kind)) {
                let _ = tx.send(());
            }
        })
        .unwrap();
        watcher
            .watch(&self.ctx(), notify::RecursiveMode::NonRecursive)
            .unwrap();
        let patience = patience() + longer;
        let began = Instant::now();
        let deadline = began + patience;
        loop {
            if let Some(v) = found() {
                return v;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let records =
                    std::fs::read_to_string(self.path("ledger.jsonl")).unwrap_or_default();
                panic!(
                    "timed out after {:?} waiting for {what} (now = {} ms; compare the records' `ts`)\n--- ledger ---\n{records}\n--- daemon log ---\n{}",
                    began.elapsed(),
                    ledger::now_ms(),
                    std::fs::read_to_string(self.root().join("daemon.log")).unwrap_or_default()
                );
            }
            // A wake-up means "look again" (once for a burst of changes); the timeout only
            // bounds a missed event and changes outside `.context/` (daemon.log, agent files).
            if rx
                .recv_timeout(left.min(Duration::from_millis(500)))
                .is_ok()
            {
                while rx.try_recv().is_ok() {}
            }
        }
    }

    /// Starts the daemon with the HTTP API on a free loopback port; returns it with the
    /// server's base URL and token once `.context/http.url` says it listens.
    pub fn start_http(&self) -> (Daemon, String, String) {
        let d = self.start_full(&[], &["--http", "127.0.0.1:0"]);
        let url = self.wait_until("the HTTP API to listen", || {
            std::fs::read_to_string(self.path("http.url"))
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        });
        let token = std::fs::read_to_string(self.path("http.token"))
            .unwrap()
            .trim()
            .to_string();
        (d, url, token)
    }

    /// Waits until an attempt of `task` has started.
    pub fn wait_started(&self, task: &str) {
        self.wait_for(&format!("an attempt of `{task}` to start"), |recs| {
            recs.iter()
                .any(|r| matches!(&r.event, Event::AttemptStarted { task: t, .. } if t == task))
                .then_some(())
        });
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

    /// Waits until the running daemon itself (not only the ledger file) reports `id` in
    /// `state`, and returns what `status <id> --json` said. A record is in the file before it is
    /// fsynced and before the engine applies it, so a client asked right after
    /// [`Workspace::wait_settled`] may still be told "running".
    pub fn wait_state(&self, id: &str, state: &str) -> serde_json::Value {
        // Asked of the daemon itself over its control socket: `dirigent status` also folds
        // what the ledger file has beyond the daemon's answer, which is not what this waits for.
        let ws = dirigent::workspace::Workspace::new(self.root()).unwrap();
        let request = dirigent::control::Request::Get { id: id.to_string() };
        self.wait_until(&format!("the daemon to report `{id}` as {state}"), || {
            let answer = dirigent::control::request(&ws, &request).ok()?;
            let v = answer.data?;
            (v["state"] == state).then_some(v)
        })
    }

    /// The pid an agent wrote to `rel` (under the workspace root), if it got that far: a limit
    /// may stop an agent before or while it writes the file, so its absence is not an error.
    pub fn agent_pid(&self, rel: &str) -> Option<u32> {
        std::fs::read_to_string(self.root().join(rel))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Live processes (zombies aside) that carry this workspace's `DIRIGENT_WORKSPACE`: every
    /// process an attempt starts inherits it, so after an attempt has been recorded as finished
    /// this must be empty — whether or not its agent got as far as starting a grandchild.
    pub fn survivors(&self) -> Vec<u32> {
        let want = [
            b"DIRIGENT_WORKSPACE=".as_slice(),
            self.root().as_os_str().as_encoded_bytes(),
        ]
        .concat();
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == want.as_slice()))
            })
            .filter(|pid| !process_gone(*pid))
            .collect()
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
    /// A daemon the test started itself, stopped like any other when dropped (also when the
    /// test fails half-way).
    pub fn adopt(child: Child, log: PathBuf) -> Daemon {
        Daemon {
            child: Some(child),
            log,
        }
    }

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

    /// Waits for a daemon that exits on its own (a start-up failure).
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.take().expect("running").wait().unwrap()
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

/// One HTTP response, as the tests' small client read it.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

/// Opens a connection to `base` (`http://host:port`) and sends one HTTP/1.1 request.
fn http_send(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> std::net::TcpStream {
    use std::io::Write;
    let host = base.strip_prefix("http://").expect("an http:// URL");
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    // Longer than any `?wait=` a test asks the server for, so the server's answer, not the
    // client's timeout, ends a long poll.
    stream.set_read_timeout(Some(patience() * 2)).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).unwrap();
    stream
}

/// Reads the status line and headers.
fn http_head(reader: &mut impl std::io::BufRead) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP status line: {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    (status, headers)
}

/// Undoes `Transfer-Encoding: chunked` as it is read.
struct Chunked<R> {
    inner: R,
    left: usize,
    done: bool,
}

impl<R: std::io::BufRead> std::io::Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        if self.left == 0 {
            let mut size = String::new();
            self.inner.read_line(&mut size)?;
            if size.trim().is_empty() {
                // The CRLF after the previous chunk.
                size.clear();
                self.inner.read_line(&mut size)?;
            }
            if size.is_empty() {
                self.done = true;
                return Ok(0);
            }
            self.left = usize::from_str_radix(size.trim().split(';').next().unwrap(), 16)
                .map_err(|e| std::io::Error::other(format!("bad chunk size {size:?}: {e}")))?;
            if self.left == 0 {
                self.done = true;
                return Ok(0);
            }
        }
        let n = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..n])?;
        if n == 0 {
            self.done = true;
        }
        self.left -= n;
        Ok(n)
    }
}

fn body_reader(
    reader: std::io::BufReader<std::net::TcpStream>,
    headers: &[(String, String)],
) -> Box<dyn std::io::BufRead> {
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        Box::new(std::io::BufReader::new(Chunked {
            inner: reader,
            left: 0,
            done: false,
        }))
    } else {
        Box::new(reader)
    }
}

/// One request, read to the end (`Connection: close`).
pub fn http(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> HttpReply {
    http_with(base, method, path, token, &[], body)
}

/// [`http`] with more headers.
pub fn http_with(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> HttpReply {
    use std::io::Read;
    let stream = http_send(base, method, path, token, headers, body);
    let mut reader = std::io::BufReader::new(stream);
    let (status, headers) = http_head(&mut reader);
    let mut body = String::new();
    body_reader(reader, &headers)
        .read_to_string(&mut body)
        .unwrap();
    HttpReply {
        status,
        headers,
        body,
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// An open event stream.
pub struct SseStream {
    pub status: u16,
    reader: Box<dyn std::io::BufRead>,
}

impl SseStream {
    pub fn open(base: &str, path: &str, token: &str, headers: &[(&str, &str)]) -> SseStream {
        let stream = http_send(base, "GET", path, Some(token), headers, None);
        let mut reader = std::io::BufReader::new(stream);
        let (status, headers) = http_head(&mut reader);
        SseStream {
            status,
            reader: body_reader(reader, &headers),
        }
    }

    /// The next event (comments skipped), or `None` when the server ended the stream.
    pub fn next(&mut self) -> Option<SseEvent> {
        let mut ev = SseEvent {
            id: None,
            event: None,
            data: String::new(),
        };
        let mut any = false;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).unwrap() == 0 {
                return None;
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if any {
                    return Some(ev);
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            any = true;
            match field {
                "id" => ev.id = Some(value.to_string()),
                "event" => ev.event = Some(value.to_string()),
                "data" => {
                    if !ev.data.is_empty() {
                        ev.data.push('\n');
                    }
                    ev.data.push_str(value);
                }
                _ => {}
            }
        }
    }
}

/// A Python interpreter that can import the packages of `tests/clients/requirements.txt`:
/// they are installed into `target/pydeps` once (by `.ci/run`, or here on first use, under a
/// lock so parallel tests install once). Returns the `PYTHONPATH` to use.
pub fn python_deps() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let reqs = root.join("tests/clients/requirements.txt");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let deps = target.join("pydeps");
    let wanted = std::fs::read_to_string(&reqs).unwrap();
    let stamp = deps.join(".requirements.txt");
    let installed = || std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str());
    if installed() {
        return deps;
    }
    std::fs::create_dir_all(&target).unwrap();
    let lock = std::fs::File::create(target.join("pydeps.lock")).unwrap();
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).unwrap();
    if !installed() {
        let out = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--upgrade",
                "--target",
            ])
            .arg(&deps)
            .arg("-r")
            .arg(&reqs)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cannot install the Python client libraries the door tests use:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&stamp, &wanted).unwrap();
    }
    deps
}

/// Runs a script from `tests/clients/` with the client libraries importable; returns its
/// stdout parsed as JSON, failing the test with its stderr when it fails.
pub fn python_client(script: &str, args: &[&str]) -> serde_json::Value {
    let deps = python_deps();
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(script);
    let out = Command::new("python3")
        .arg(&path)
        .args(args)
        .env("PYTHONPATH", &deps)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{script} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Runs git in `dir` with a fixed identity; panics with its output when it fails.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "user")
        .env("GIT_AUTHOR_EMAIL", "user@example.com")
        .env("GIT_COMMITTER_NAME", "user")
        .env("GIT_COMMITTER_EMAIL", "user@example.com")
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?} failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A workspace on a small tmpfs of its own (the full disk, for exhaustion tests), unmounted when
/// dropped — before the workspace's directory goes (fields drop in order).
pub struct SmallDisk {
    mount: Unmount,
    pub ws: Workspace,
}

struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Mounts a tmpfs of `size` (`2m`) and makes a workspace on it with the config `prepare`
/// returns (given the directory first, to put a repository there, say). `None`, and `skipped`
/// said, where it cannot be mounted (it needs root).
pub fn small_disk(size: &str, prepare: impl FnOnce(&Path) -> String) -> Option<SmallDisk> {
    let dir = tempfile::tempdir().unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a small tmpfs here (needs root)");
        return None;
    }
    let mount = Unmount(dir.path().to_path_buf());
    let config = prepare(dir.path());
    Some(SmallDisk {
        mount,
        ws: Workspace::in_dir(dir, &config),
    })
}
