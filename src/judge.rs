//! Judging: turns what an attempt left behind (exit status, why it was stopped, output samples,
//! the structured output of a known CLI) into one verdict — `ok` or a failure class — and finds
//! the result text. Pure functions over [`Evidence`]; `spawn` gathers the evidence, the engine
//! acts on the verdict (next agent in the chain, or escalate).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::Agent;
use crate::preset::OutputFormat;

/// The outcome class of one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    Ok,
    /// Non-zero exit code or death by a signal.
    Exit,
    /// Success exit but no output (or no result in the structured output).
    Empty,
    /// An error pattern or a structured error field matched.
    Pattern,
    /// The wall-clock `timeout` ran out.
    Timeout,
    /// No output for `idle_timeout`.
    Idle,
    /// The program could not be started (not installed, not executable).
    Spawn,
    /// Not logged in, bad key, untrusted folder.
    Auth,
    /// 429, quota, usage limit.
    RateLimit,
    /// Stopped by a daemon shutdown; not the agent's fault, the task runs again.
    Interrupted,
    /// Stopped by `dirigent cancel`.
    Cancelled,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Ok => "ok",
            Class::Exit => "exit",
            Class::Empty => "empty",
            Class::Pattern => "pattern",
            Class::Timeout => "timeout",
            Class::Idle => "idle",
            Class::Spawn => "spawn",
            Class::Auth => "auth",
            Class::RateLimit => "rate_limit",
            Class::Interrupted => "interrupted",
            Class::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the supervisor stopped an attempt before it exited on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopCause {
    Timeout,
    Idle,
    Shutdown,
    /// `dirigent cancel`.
    Cancel,
}

/// The first and last bytes of one output stream; memory stays bounded however much is printed.
#[derive(Clone, Debug, Default)]
pub struct OutputSample {
    pub head: Vec<u8>,
    pub tail: Vec<u8>,
    pub total: u64,
}

/// How many bytes of each stream's start and end are kept in memory.
pub const SAMPLE_BYTES: usize = 64 * 1024;

impl OutputSample {
    pub fn push(&mut self, chunk: &[u8]) {
        self.total += chunk.len() as u64;
        let room = SAMPLE_BYTES.saturating_sub(self.head.len());
        let (to_head, rest) = chunk.split_at(room.min(chunk.len()));
        self.head.extend_from_slice(to_head);
        if rest.is_empty() {
            return;
        }
        self.tail.extend_from_slice(rest);
        if self.tail.len() > SAMPLE_BYTES {
            let cut = self.tail.len() - SAMPLE_BYTES;
            self.tail.drain(..cut);
        }
    }

    /// Head and tail as lossy text, with a marker where bytes were skipped.
    pub fn text(&self) -> String {
        let mut s = String::from_utf8_lossy(&self.head).into_owned();
        if !self.tail.is_empty() {
            let skipped = self.total - (self.head.len() + self.tail.len()) as u64;
            if skipped > 0 {
                s.push_str(&format!("\n[… {skipped} bytes …]\n"));
            }
            s.push_str(&String::from_utf8_lossy(&self.tail));
        }
        s
    }

    pub fn is_blank(&self) -> bool {
        self.total == 0
            || (self.tail.is_empty() && self.head.iter().all(|b| b.is_ascii_whitespace()))
    }

    /// The last `n` lines, for escalation reports and error messages.
    pub fn last_lines(&self, n: usize) -> String {
        let text = self.text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// Everything known about a finished attempt.
#[derive(Debug, Default)]
pub struct Evidence<'a> {
    pub spawn_error: Option<&'a str>,
    pub stopped: Option<StopCause>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: OutputSample,
    pub stderr: OutputSample,
    /// All of stdout, for structured formats (read from the capture file when small enough).
    pub stdout_full: Option<&'a str>,
}

/// Where the result text of a successful attempt is.
#[derive(Debug, PartialEq)]
pub enum ResultText {
    /// The whole captured stdout is the result.
    Stdout,
    /// Extracted from structured output.
    Text(String),
}

#[derive(Debug, PartialEq)]
pub struct Verdict {
    pub class: Class,
    pub reason: String,
    pub result: Option<ResultText>,
}

impl Verdict {
    fn fail(class: Class, reason: impl Into<String>) -> Self {
        Verdict {
            class,
            reason: reason.into(),
            result: None,
        }
    }
}

/// What a known CLI's structured stdout said.
#[derive(Debug, Default)]
struct Structured {
    parsed: bool,
    error: Option<String>,
    result: Option<String>,
}

/// Judges one attempt of `agent`.
pub fn judge(agent: &Agent, ev: &Evidence<'_>) -> Verdict {
    if let Some(err) = ev.spawn_error {
        return Verdict::fail(Class::Spawn, err.to_string());
    }
    match ev.stopped {
        Some(StopCause::Timeout) => {
            return Verdict::fail(
                Class::Timeout,
                format!(
                    "killed after the {} timeout",
                    crate::duration::short(agent.timeout)
                ),
            );
        }
        Some(StopCause::Idle) => {
            let idle = agent
                .idle_timeout
                .map(crate::duration::short)
                .unwrap_or_default();
            return Verdict::fail(
                Class::Idle,
                format!("no progress for {idle} (no output, or only error events): killed as hung"),
            );
        }
        Some(StopCause::Shutdown) => {
            return Verdict::fail(Class::Interrupted, "stopped by daemon shutdown");
        }
        Some(StopCause::Cancel) => {
            return Verdict::fail(Class::Cancelled, "cancelled by the user");
        }
        None => {}
    }
    let both = format!("{}\n{}", ev.stdout.text(), ev.stderr.text());
    let classify = |text: &str| -> Option<(Class, String)> {
        agent
            .classified
            .iter()
            .find_map(|(class, re)| re.find(text).map(|m| (*class, m.as_str().to_string())))
    };
    let exit_ok =
        ev.signal.is_none() && ev.exit_code.is_some_and(|c| agent.exit_codes.contains(&c));

    if let Some(code) = ev.exit_code
        && !exit_ok
        && let Some((_, class)) = agent.exit_classes.iter().find(|(c, _)| *c == code)
    {
        return Verdict::fail(
            *class,
            format!(
                "exit code {code} ({}){}",
                exit_meaning(agent, code),
                first_error_line(ev)
            ),
        );
    }

    let structured = match agent.format {
        OutputFormat::Plain => None,
        format => Some(parse_structured(
            format,
            ev.stdout_full.unwrap_or(""),
            &ev.stderr.text(),
        )),
    };
    if let Some(Structured {
        error: Some(err), ..
    }) = &structured
    {
        let text = format!("{err}\n{}", ev.stderr.text());
        let class = classify(&text).map_or(Class::Pattern, |(c, _)| c);
        return Verdict::fail(
            class,
            format!("the agent reported an error: {}", one_line(err)),
        );
    }
    if !exit_ok {
        let status = match (ev.exit_code, ev.signal) {
            (_, Some(sig)) => format!("killed by signal {sig} ({})", signal_name(sig)),
            (Some(code), None) => format!("exit code {code}"),
            (None, None) => "no exit status".to_string(),
        };
        return match classify(&both) {
            Some((class, m)) => {
                Verdict::fail(class, format!("{status}; output says `{}`", one_line(&m)))
            }
            None => Verdict::fail(Class::Exit, format!("{status}{}", first_error_line(ev))),
        };
    }
    if let Some(s) = &structured
        && !s.parsed
    {
        if let Some((class, m)) = classify(&both) {
            return Verdict::fail(class, format!("output says `{}`", one_line(&m)));
        }
        return Verdict::fail(
            Class::Pattern,
            format!(
                "exited 0 but printed no valid {} output",
                format_name(agent.format)
            ),
        );
    }
    for re in &agent.fail_patterns {
        if let Some(m) = re.find(&both) {
            return Verdict::fail(
                Class::Pattern,
                format!(
                    "fail pattern `{}` matched `{}`",
                    re.as_str(),
                    one_line(m.as_str())
                ),
            );
        }
    }
    if structured.is_none()
        && let Some((class, m)) = classify(&both)
    {
        return Verdict::fail(class, format!("output says `{}`", one_line(&m)));
    }
    let result = match structured {
        None => ResultText::Stdout,
        Some(s) => ResultText::Text(s.result.unwrap_or_default()),
    };
    if agent.require_output {
        let empty = match &result {
            ResultText::Stdout => ev.stdout.is_blank(),
            ResultText::Text(t) => t.trim().is_empty(),
        };
        if empty {
            return Verdict::fail(Class::Empty, "exited successfully but produced no output");
        }
    }
    Verdict {
        class: Class::Ok,
        reason: "ok".into(),
        result: Some(result),
    }
}

fn exit_meaning(agent: &Agent, code: i32) -> &'static str {
    match (agent.preset.map(|p| p.name), code) {
        (Some("gemini"), 41) => "gemini: no authentication configured",
        (Some("gemini"), 55) => "gemini: the workspace folder is not trusted",
        _ => "known failure code",
    }
}

fn first_error_line(ev: &Evidence<'_>) -> String {
    if let Some(msg) = json_error_message(&ev.stderr.text()) {
        return format!(": {}", one_line(&msg));
    }
    let pick = |s: &OutputSample| {
        s.last_lines(3)
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(str::to_string)
    };
    match pick(&ev.stderr).or_else(|| pick(&ev.stdout)) {
        Some(line) => format!(": {}", one_line(&line)),
        None => String::new(),
    }
}

fn one_line(s: &str) -> String {
    let line = s
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    if line.chars().count() > 200 {
        let mut t: String = line.chars().take(199).collect();
        t.push('…');
        t
    } else {
        line.to_string()
    }
}

fn format_name(f: OutputFormat) -> &'static str {
    match f {
        OutputFormat::Plain => "text",
        OutputFormat::ClaudeJson => "claude JSON",
        OutputFormat::GeminiJson => "gemini JSON",
        OutputFormat::CodexJsonl => "codex JSONL (no `turn.completed`)",
        OutputFormat::OpencodeJsonl => "opencode JSON",
    }
}

/// `SIGKILL` for 9, and so on.
pub fn signal_name(sig: i32) -> &'static str {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str())
        .unwrap_or("unknown signal")
}

fn parse_structured(format: OutputFormat, stdout: &str, stderr: &str) -> Structured {
    use serde_json::Value;
    let json: Option<Value> = serde_json::from_str(stdout.trim()).ok();
    let message_of = |v: &Value| -> String {
        v.get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| {
                v.pointer("/data/message")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .or_else(|| v.as_str().map(str::to_string))
            .unwrap_or_else(|| v.to_string())
    };
    match format {
        OutputFormat::Plain => Structured::default(),
        OutputFormat::ClaudeJson => {
            let Some(v) = json else {
                return Structured::default();
            };
            let result = v.get("result").and_then(Value::as_str).map(str::to_string);
            let is_error = v.get("is_error").and_then(Value::as_bool).unwrap_or(false);
            let subtype = v
                .get("subtype")
                .and_then(Value::as_str)
                .unwrap_or("success");
            let error = (is_error || subtype != "success").then(|| {
                result
                    .clone()
                    .filter(|r| !r.trim().is_empty())
                    .unwrap_or_else(|| format!("is_error={is_error}, subtype={subtype}"))
            });
            Structured {
                parsed: true,
                error,
                result,
            }
        }
        OutputFormat::GeminiJson => {
            let stderr_error = || {
                serde_json::from_str::<Value>(stderr.trim())
                    .ok()
                    .and_then(|v| v.get("error").map(message_of))
            };
            match json {
                Some(v) => Structured {
                    parsed: true,
                    error: v
                        .get("error")
                        .filter(|e| !e.is_null())
                        .map(message_of)
                        .or_else(stderr_error),
                    result: v
                        .get("response")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                },
                None => Structured {
                    parsed: false,
                    error: stderr_error(),
                    result: None,
                },
            }
        }
        OutputFormat::CodexJsonl | OutputFormat::OpencodeJsonl => {
            let mut s = Structured::default();
            let mut completed = false;
            let mut failed: Option<String> = None;
            let mut last_error: Option<String> = None;
            let mut texts: Vec<String> = Vec::new();
            for line in stdout.lines() {
                let Ok(v) = serde_json::from_str::<Value>(line) else {
                    continue;
                };
                let kind = v.get("type").and_then(Value::as_str).unwrap_or("");
                match (format, kind) {
                    (OutputFormat::CodexJsonl, "turn.completed") => completed = true,
                    (OutputFormat::CodexJsonl, "turn.failed") => {
                        failed = Some(
                            v.get("error")
                                .map(message_of)
                                .unwrap_or_else(|| "turn failed".into()),
                        );
                    }
                    (_, "error") => {
                        last_error = Some(
                            v.get("error")
                                .map(message_of)
                                .or_else(|| {
                                    v.get("message").and_then(Value::as_str).map(str::to_string)
                                })
                                .unwrap_or_else(|| line.to_string()),
                        );
                    }
                    (OutputFormat::CodexJsonl, "item.completed") => {
                        let item = v.get("item");
                        let item_type = item
                            .and_then(|i| i.get("type").or_else(|| i.get("item_type")))
                            .and_then(Value::as_str);
                        if item_type == Some("agent_message")
                            && let Some(t) =
                                item.and_then(|i| i.get("text")).and_then(Value::as_str)
                        {
                            // The last agent message is the answer.
                            texts = vec![t.to_string()];
                        }
                    }
                    (OutputFormat::OpencodeJsonl, "text") => {
                        if let Some(t) = v.pointer("/part/text").and_then(Value::as_str) {
                            texts.push(t.to_string());
                        }
                        completed = true;
                    }
                    (OutputFormat::OpencodeJsonl, "step_finish") => completed = true,
                    _ => {}
                }
            }
            s.parsed = completed;
            s.error = match format {
                // codex reports transient trouble ("Reconnecting... 2/5") as `error` events and
                // may still complete: only `turn.failed` or a missing `turn.completed` fail it.
                OutputFormat::CodexJsonl => failed.or(if completed { None } else { last_error }),
                // opencode's error events are final.
                _ => last_error,
            };
            if !texts.is_empty() {
                s.result = Some(texts.join("\n"));
            }
            s
        }
    }
}

/// The `error.message` of a JSON object printed on stderr (gemini prints one after a line of
/// chatter), for a readable reason instead of its closing brace.
fn json_error_message(text: &str) -> Option<String> {
    let start = text
        .find("\n{")
        .map(|i| i + 1)
        .or_else(|| text.starts_with('{').then_some(0))?;
    let v: serde_json::Value = serde_json::from_str(text[start..].trim()).ok()?;
    let err = v.get("error")?;
    err.get("message")
        .and_then(serde_json::Value::as_str)
        .map(str::to_string)
        .or_else(|| err.as_str().map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn agents() -> Config {
        Config::parse(
            r#"
agents:
  plain: {command: [x], success: {fail_patterns: ["(?i)rate limit"]}}
  lenient: {command: [x], success: {require_output: false, exit_codes: [0, 3]}}
  claude: {preset: claude}
  gemini: {preset: gemini}
  codex: {preset: codex}
  opencode: {preset: opencode}
  aider: {preset: aider}
"#,
            "t",
        )
        .unwrap()
    }

    fn sample(s: &str) -> OutputSample {
        let mut o = OutputSample::default();
        o.push(s.as_bytes());
        o
    }

    struct Case {
        agent: &'static str,
        exit: Option<i32>,
        signal: Option<i32>,
        stdout: &'static str,
        stderr: &'static str,
        stopped: Option<StopCause>,
        want: Class,
    }

    const fn case(
        agent: &'static str,
        exit: i32,
        stdout: &'static str,
        stderr: &'static str,
        want: Class,
    ) -> Case {
        Case {
            agent,
            exit: Some(exit),
            signal: None,
            stdout,
            stderr,
            stopped: None,
            want,
        }
    }

    #[test]
    fn verdict_table() {
        let cases = [
            case("plain", 0, "hello\n", "", Class::Ok),
            case("plain", 1, "hello\n", "boom", Class::Exit),
            case("plain", 0, "", "", Class::Empty),
            case("plain", 0, "  \n\n", "", Class::Empty),
            case(
                "plain",
                0,
                "done",
                "warning: Rate limit reached",
                Class::Pattern,
            ),
            case("lenient", 3, "", "", Class::Ok),
            case("lenient", 4, "", "", Class::Exit),
            Case {
                agent: "plain",
                exit: None,
                signal: Some(9),
                stdout: "x",
                stderr: "",
                stopped: None,
                want: Class::Exit,
            },
            Case {
                agent: "plain",
                exit: None,
                signal: Some(15),
                stdout: "",
                stderr: "",
                stopped: Some(StopCause::Timeout),
                want: Class::Timeout,
            },
            Case {
                agent: "plain",
                exit: None,
                signal: Some(15),
                stdout: "",
                stderr: "",
                stopped: Some(StopCause::Idle),
                want: Class::Idle,
            },
            Case {
                agent: "plain",
                exit: None,
                signal: Some(15),
                stdout: "",
                stderr: "",
                stopped: Some(StopCause::Shutdown),
                want: Class::Interrupted,
            },
            // claude: success, is_error with subtype success, not logged in on stdout, rate limit.
            case(
                "claude",
                0,
                r#"{"type":"result","subtype":"success","is_error":false,"result":"4"}"#,
                "",
                Class::Ok,
            ),
            case(
                "claude",
                0,
                r#"{"type":"result","subtype":"success","is_error":true,"result":"API Error: Connection error."}"#,
                "",
                Class::Pattern,
            ),
            case(
                "claude",
                1,
                "Invalid API key · Please run /login\n",
                "",
                Class::Auth,
            ),
            case(
                "claude",
                1,
                "Not logged in · Please run /login\n",
                "",
                Class::Auth,
            ),
            case(
                "claude",
                0,
                r#"{"subtype":"success","is_error":true,"result":"Claude AI usage limit reached|1700000000"}"#,
                "",
                Class::RateLimit,
            ),
            case(
                "claude",
                0,
                r#"{"subtype":"success","is_error":false,"result":""}"#,
                "",
                Class::Empty,
            ),
            case("claude", 0, "not json at all", "", Class::Pattern),
            // gemini: exit codes 41/55, error JSON on stderr, success JSON.
            case(
                "gemini",
                0,
                r#"{"response":"Hi","stats":{}}"#,
                "",
                Class::Ok,
            ),
            case(
                "gemini",
                41,
                "",
                r#"{"error":{"type":"Error","message":"Please set an Auth method","code":41}}"#,
                Class::Auth,
            ),
            case("gemini", 55, "", "folder is not trusted", Class::Auth),
            case(
                "gemini",
                1,
                "",
                r#"{"error":{"message":"[API Error: 429 RESOURCE_EXHAUSTED quota]","code":1}}"#,
                Class::RateLimit,
            ),
            case(
                "gemini",
                1,
                "",
                r#"{"error":{"message":"fetch failed","code":1}}"#,
                Class::Pattern,
            ),
            // codex: turn.completed required, turn.failed is an error.
            case(
                "codex",
                0,
                "{\"type\":\"thread.started\"}\n{\"type\":\"item.completed\",\"item\":{\"type\":\"agent_message\",\"text\":\"done\"}}\n{\"type\":\"turn.completed\",\"usage\":{}}\n",
                "",
                Class::Ok,
            ),
            case(
                "codex",
                0,
                "{\"type\":\"thread.started\"}\n{\"type\":\"turn.failed\",\"error\":{\"message\":\"stream disconnected\"}}\n",
                "",
                Class::Pattern,
            ),
            case(
                "codex",
                0,
                "{\"type\":\"thread.started\"}\n",
                "",
                Class::Pattern,
            ),
            case(
                "codex",
                1,
                "{\"type\":\"error\",\"message\":\"401 Unauthorized: invalid_api_key\"}\n",
                "",
                Class::Auth,
            ),
            // opencode: error events on stdout with exit 0.
            case(
                "opencode",
                0,
                "{\"type\":\"text\",\"part\":{\"text\":\"answer\"}}\n{\"type\":\"step_finish\",\"part\":{}}\n",
                "",
                Class::Ok,
            ),
            case(
                "opencode",
                0,
                "{\"type\":\"error\",\"error\":{\"name\":\"ProviderAuthError\",\"data\":{\"message\":\"ProviderAuthError: no key\"}}}\n",
                "",
                Class::Auth,
            ),
            case("opencode", 0, "", "", Class::Pattern),
            // aider: exit 0 with litellm error text on stdout.
            case(
                "aider",
                0,
                "litellm.APIConnectionError: Connection refused\n",
                "",
                Class::Pattern,
            ),
            case(
                "aider",
                0,
                "litellm.AuthenticationError: AuthenticationError: invalid api key\n",
                "",
                Class::Auth,
            ),
            case("aider", 0, "Applied edit to src/a.rs\n", "", Class::Ok),
        ];
        let cfg = agents();
        for (i, c) in cases.iter().enumerate() {
            let ev = Evidence {
                spawn_error: None,
                stopped: c.stopped,
                exit_code: c.exit,
                signal: c.signal,
                stdout: sample(c.stdout),
                stderr: sample(c.stderr),
                stdout_full: Some(c.stdout),
            };
            let v = judge(&cfg.agents[c.agent], &ev);
            assert_eq!(v.class, c.want, "case {i} ({}): {v:?}", c.agent);
            assert!(!v.reason.is_empty());
        }
    }

    #[test]
    fn results_are_extracted() {
        let cfg = agents();
        let ev = Evidence {
            exit_code: Some(0),
            stdout: sample(r#"{"subtype":"success","is_error":false,"result":"the answer"}"#),
            stdout_full: Some(r#"{"subtype":"success","is_error":false,"result":"the answer"}"#),
            ..Default::default()
        };
        assert_eq!(
            judge(&cfg.agents["claude"], &ev).result,
            Some(ResultText::Text("the answer".into()))
        );
        let ev = Evidence {
            exit_code: Some(0),
            stdout: sample("plain text"),
            ..Default::default()
        };
        assert_eq!(
            judge(&cfg.agents["plain"], &ev).result,
            Some(ResultText::Stdout)
        );
    }

    #[test]
    fn gemini_reasons_quote_the_error_message_not_the_json() {
        let cfg = agents();
        let stderr = "YOLO mode is enabled.\n{\n  \"session_id\": \"x\",\n  \"error\": {\n    \"type\": \"Error\",\n    \"message\": \"Please set an Auth method\",\n    \"code\": 41\n  }\n}\n";
        let ev = Evidence {
            exit_code: Some(41),
            stderr: sample(stderr),
            ..Default::default()
        };
        let v = judge(&cfg.agents["gemini"], &ev);
        assert_eq!(v.class, Class::Auth);
        assert_eq!(
            v.reason,
            "exit code 41 (gemini: no authentication configured): Please set an Auth method"
        );
    }

    #[test]
    fn spawn_failure_and_signal_names() {
        let cfg = agents();
        let ev = Evidence {
            spawn_error: Some("`x` is not installed"),
            ..Default::default()
        };
        assert_eq!(judge(&cfg.agents["plain"], &ev).class, Class::Spawn);
        let ev = Evidence {
            signal: Some(9),
            ..Default::default()
        };
        let v = judge(&cfg.agents["plain"], &ev);
        assert!(v.reason.contains("signal 9 (SIGKILL)"), "{}", v.reason);
    }

    #[test]
    fn samples_stay_bounded() {
        let mut s = OutputSample::default();
        for _ in 0..100 {
            s.push(&[b'a'; 10_000]);
        }
        s.push(b"\nlast line");
        assert_eq!(s.total, 1_000_010);
        assert!(s.head.len() <= SAMPLE_BYTES && s.tail.len() <= SAMPLE_BYTES);
        assert_eq!(s.last_lines(1), "last line");
        assert!(s.text().contains("bytes …]"));
    }
}
