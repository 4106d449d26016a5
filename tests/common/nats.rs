//! Fleet tests' harness: a real `nats-server` per test (Debian's package; `.ci/run` installs
//! it) on a free port with JetStream and a temporary store, and helpers for the nodes' configs.
//! Without `nats-server` on PATH, [`Nats::start`] says so and the test passes, unless
//! `DIRIGENT_REQUIRE_NATS=1` (what `.ci/run` sets after installing it).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use crate::common::Workspace;
use dirigent::ledger::{Event, Record};

/// A `nats-server` with JetStream, on a free loopback port, its store in a temporary directory.
pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    store: tempfile::TempDir,
    /// Added to the server's config file (e.g. an `authorization` block); `None`: no file.
    extra_config: Option<String>,
    /// Every line the server has logged, in order.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Nats {
    /// Started and ready, or `None` (the test is skipped) when the server is not installed.
    pub fn start() -> Option<Nats> {
        Nats::start_with(None)
    }

    /// Started with `extra` added to its config file (its `listen` and `jetstream` are set here).
    pub fn start_with(extra: Option<String>) -> Option<Nats> {
        if which::which("nats-server").is_err() {
            assert!(
                std::env::var("DIRIGENT_REQUIRE_NATS").as_deref() != Ok("1"),
                "nats-server is not installed (apt-get install nats-server), and DIRIGENT_REQUIRE_NATS=1"
            );
            eprintln!(
                "skipped: no nats-server on PATH (apt-get install nats-server; .ci/run does)"
            );
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut nats = Nats {
            child: None,
            port,
            store: tempfile::tempdir().unwrap(),
            extra_config: extra,
            log: Default::default(),
        };
        nats.run();
        Some(nats)
    }

    /// Starts the server (again) on the same port and store; returns once it says it is ready.
    pub fn run(&mut self) {
        let mut command = Command::new("nats-server");
        match &self.extra_config {
            None => {
                command
                    .args([
                        "-js",
                        "-a",
                        "127.0.0.1",
                        "-p",
                        &self.port.to_string(),
                        "-sd",
                    ])
                    .arg(self.store.path());
            }
            Some(extra) => {
                let conf = self.store.path().join("server.conf");
                std::fs::write(
                    &conf,
                    format!(
                        "listen: \"127.0.0.1:{}\"\njetstream {{ store_dir: \"{}\" }}\n{extra}",
                        self.port,
                        self.store.path().join("js").display()
                    ),
                )
                .unwrap();
                command.arg("-c").arg(&conf);
            }
        }
        crate::common::die_with_the_test(&mut command);
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nats-server starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = Vec::new();
        loop {
            let Some(Ok(line)) = lines.next() else {
                panic!(
                    "nats-server ended before it was ready:\n{}",
                    seen.join("\n")
                );
            };
            let ready = line.contains("Server is ready");
            self.log.lock().unwrap().push(line.clone());
            seen.push(line);
            if ready {
                break;
            }
        }
        // Keep reading its log so it never blocks on a full pipe.
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                log.lock().unwrap().push(line);
            }
        });
        self.child = Some(child);
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A node's config: `agents` is the YAML of its `agents:` map, indented by two.
pub fn node(nats: &Nats, name: &str, work: bool, agents: &str) -> String {
    format!(
        "concurrency: 2\ncluster:\n  url: {}\n  name: {name}\n  ack_wait: 2s\n  work: {work}\nagents:\n{agents}",
        nats.url()
    )
}

/// The node `desk`, which only submits: it knows `agents` (to accept tasks for them) but has
/// none installed.
pub fn submitter(nats: &Nats, agents: &[&str]) -> Workspace {
    let yaml: String = agents
        .iter()
        .map(|a| format!("  {a}: {{ command: [\"absent-cli\"] }}\n"))
        .collect();
    Workspace::new(&node(nats, "desk", false, &yaml))
}

/// A worker named `name` whose `agents` all succeed (`ok.sh`).
pub fn ok_worker(nats: &Nats, name: &str, agents: &[&str]) -> Workspace {
    let yaml: String = agents
        .iter()
        .map(|a| format!("  {a}: {{ command: [\"{{agents}}/ok.sh\"] }}\n"))
        .collect();
    Workspace::new(&node(nats, name, true, &yaml))
}

/// Waits until `ws`'s daemon has heard a live heartbeat from the node `name`.
pub fn wait_live(ws: &Workspace, name: &str) {
    ws.wait_until(&format!("`{name}` to be live in the fleet"), || {
        let out = ws.cli(&["fleet", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["workers"]
            .as_array()?
            .iter()
            .any(|w| w["name"] == name && w["live"] == true)
            .then_some(())
    });
}

pub fn count(records: &[Record], pred: impl Fn(&Event) -> bool) -> usize {
    records.iter().filter(|r| pred(&r.event)).count()
}

/// The worker a published task ran on, from the submitter's `ran_on`.
pub fn ran_on(records: &[Record], task: &str) -> Option<String> {
    records.iter().find_map(|r| match &r.event {
        Event::RanOn { task: t, worker } if t == task => Some(worker.clone()),
        _ => None,
    })
}
