//! A small W3C WebDriver client for the dashboard tests: starts Debian's `chromedriver` on a
//! free port, opens a headless Chromium session in a private profile, and speaks the JSON
//! protocol over the tests' plain HTTP client. Waits run in the browser (a MutationObserver
//! resolves an async script), so no test polls or sleeps.
//!
//! Without `chromedriver` installed the tests say so and pass, unless
//! `DIRIGENT_REQUIRE_BROWSER=1` (what `.ci/run` sets after installing it).

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use crate::common::patience;

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// The driver process, killed when dropped (also when the test fails half-way through
/// starting it).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Browser {
    _driver: KillOnDrop,
    base: String,
    session: String,
    _profile: tempfile::TempDir,
}

/// Where screenshots go: `target/dashboard-screenshots/`.
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Browser {
    /// A fresh headless browser, or `None` (after saying why) when none is installed and the
    /// run does not require one.
    pub fn start() -> Option<Browser> {
        let Ok(driver_path) = which("chromedriver") else {
            if std::env::var("DIRIGENT_REQUIRE_BROWSER").as_deref() == Ok("1") {
                panic!(
                    "chromedriver is not installed (apt-get install chromium chromium-driver), and DIRIGENT_REQUIRE_BROWSER=1"
                );
            }
            eprintln!(
                "skipped: no chromedriver on PATH (apt-get install chromium chromium-driver; .ci/run does)"
            );
            return None;
        };
        let mut driver = KillOnDrop(
            Command::new(driver_path)
                .arg("--port=0")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromedriver starts"),
        );
        // "ChromeDriver was started successfully on port 12345."
        let mut out = std::io::BufReader::new(driver.0.stdout.take().unwrap());
        let mut port = None;
        let mut line = String::new();
        while out.read_line(&mut line).unwrap_or(0) > 0 {
            if let Some(rest) = line.split("started successfully on port ").nth(1) {
                port = rest.trim().trim_end_matches('.').parse::<u16>().ok();
                break;
            }
            line.clear();
        }
        let port = port.expect("chromedriver prints its port");
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let base = format!("http://127.0.0.1:{port}");
        let profile = tempfile::tempdir().unwrap();
        let binary = which("chromium").unwrap_or_else(|_| PathBuf::from("/usr/bin/chromium"));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": binary,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        }}});
        let r = http(&base, "POST", "/session", None, Some(&caps.to_string()));
        assert_eq!(r.status, 200, "a browser session starts: {}", r.body);
        let session = r.json()["value"]["sessionId"]
            .as_str()
            .expect("a session id")
            .to_string();
        let b = Browser {
            _driver: driver,
            base,
            session,
            _profile: profile,
        };
        let ms = patience().as_millis() as u64;
        b.cmd(
            "POST",
            "timeouts",
            json!({"script": ms, "pageLoad": ms, "implicit": 0}),
        );
        Some(b)
    }

    fn cmd(&self, method: &str, path: &str, body: Value) -> Value {
        let path = if path.is_empty() {
            format!("/session/{}", self.session)
        } else {
            format!("/session/{}/{path}", self.session)
        };
        let body = (method != "GET").then(|| body.to_string());
        let r = http(&self.base, method, &path, None, body.as_deref());
        assert_eq!(r.status, 200, "WebDriver {method} {path}: {}", r.body);
        r.json()["value"].clone()
    }

    pub fn go(&self, url: &str) {
        self.cmd("POST", "url", json!({"url": url}));
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    pub fn js(&self, script: &str, args: Value) -> Value {
        self.cmd(
            "POST",
            "execute/sync",
            json!({"script": script, "args": args}),
        )
    }

    /// Waits until the JavaScript expression `cond` is truthy in the page (checked on every
    /// change of the document), and returns its value.
    pub fn wait(&self, what: &str, cond: &str) -> Value {
        let script = format!(
            r#"const done = arguments[arguments.length - 1];
            const check = () => {{ try {{ const v = ({cond}); if (v) {{ obs.disconnect(); clearInterval(clock); done(v); return true; }} }} catch (e) {{}} return false; }};
            const obs = new MutationObserver(check);
            // Time passing changes some conditions (a countdown) without a DOM change.
            const clock = setInterval(check, 250);
            if (!check()) obs.observe(document, {{subtree: true, childList: true, characterData: true, attributes: true}});"#
        );
        let path = format!("/session/{}/execute/async", self.session);
        let body = json!({"script": script, "args": []}).to_string();
        let deadline = std::time::Instant::now() + patience();
        loop {
            let r = http(&self.base, "POST", &path, None, Some(&body));
            if r.status == 200 {
                return r.json()["value"].clone();
            }
            // The page navigated while the script waited (a login page moving on to the
            // dashboard): the script went with the old page; wait again in the new one.
            assert!(
                std::time::Instant::now() < deadline,
                "waited for {what} (`{cond}`), in vain: {}\npage text: {}",
                r.body,
                self.text("body")
            );
        }
    }

    fn element(&self, css: &str) -> String {
        let v = self.cmd(
            "POST",
            "element",
            json!({"using": "css selector", "value": css}),
        );
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("an element `{css}`: {v}"))
            .to_string()
    }

    pub fn text(&self, css: &str) -> String {
        self.js(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;",
            json!([css]),
        )
        .as_str()
        .unwrap_or("")
        .to_string()
    }

    /// Clicks the element. A live page may redraw it between finding and clicking (a stale
    /// element); then it is found again, a few times at most.
    pub fn click(&self, css: &str) {
        for _ in 0..5 {
            let e = self.element(css);
            let path = format!("/session/{}/element/{e}/click", self.session);
            let r = http(&self.base, "POST", &path, None, Some("{}"));
            if r.status == 200 {
                return;
            }
            assert!(
                r.body.contains("stale element"),
                "clicking `{css}`: {}",
                r.body
            );
        }
        panic!("`{css}` was redrawn under every click");
    }

    pub fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css);
        self.cmd("POST", &format!("element/{e}/value"), json!({"text": text}));
    }

    /// Presses keys (WebDriver key codes: "\u{E004}" is Tab, "\u{E007}" Enter).
    pub fn keys(&self, keys: &[&str]) {
        let actions: Vec<Value> = keys
            .iter()
            .flat_map(|k| {
                [
                    json!({"type": "keyDown", "value": k}),
                    json!({"type": "keyUp", "value": k}),
                ]
            })
            .collect();
        self.cmd(
            "POST",
            "actions",
            json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]}),
        );
    }

    /// Saves a PNG of the page as `target/dashboard-screenshots/<name>.png`.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let b64 = self.cmd("GET", "screenshot", Value::Null);
        let png = base64_decode(b64.as_str().expect("base64 text"));
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        let path = screenshot_dir().join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// The browser console's messages since the last call, as `(level, message)`.
    pub fn console(&self) -> Vec<(String, String)> {
        let v = self.cmd("POST", "se/log", json!({"type": "browser"}));
        v.as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                (
                    e["level"].as_str().unwrap_or("").to_string(),
                    e["message"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    /// Fails on any console error, except those `allowed` (substrings) — a page loaded on
    /// purpose with a 401, say.
    pub fn assert_no_console_errors(&self, allowed: &[&str]) {
        let errors: Vec<_> = self
            .console()
            .into_iter()
            .filter(|(level, msg)| level == "SEVERE" && !allowed.iter().any(|a| msg.contains(a)))
            .collect();
        assert!(
            errors.is_empty(),
            "no JavaScript console errors, got {errors:#?}"
        );
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let path = format!("/session/{}", self.session);
        // Ends Chromium too; the driver itself goes with `self.driver`.
        let _ = std::panic::catch_unwind(|| http(&self.base, "DELETE", &path, None, None));
    }
}

/// One request to the driver. Its answers carry a `Content-Length`, and it does not close the
/// connection after them: the body is read by its length.
fn http(base: &str, method: &str, path: &str, _token: Option<&str>, body: Option<&str>) -> Reply {
    use std::io::{Read, Write};
    let host = base.strip_prefix("http://").unwrap();
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    stream.set_read_timeout(Some(patience() * 2)).unwrap();
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = std::io::BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut length = 0usize;
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.trim().eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut bytes = vec![0u8; length];
    reader.read_exact(&mut bytes).unwrap();
    Reply {
        status,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

struct Reply {
    status: u16,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

fn which(name: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter_map(val) {
        acc = (acc << 6) | c;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}
