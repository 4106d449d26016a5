//! Judging: turns what an attempt left behind (exit status, why it was stopped, output samples,
//! the structured output of a known CLI) into one verdict — `ok` or a failure class — and finds
//! the result text. Pure functions over [`Evidence`]; `spawn` gathers the evidence, the engine
//! acts on the verdict (next agent in the chain, or escalate).
//!
//! (Its length past ~800 lines is the verdict tables, tests kept beside the rules they check.)

use serde::{Deserialize, Serialize};

use crate::config::Agent;
use crate::preset::OutputFormat;

pub use crate::class::Class;

/// Why the supervisor stopped an attempt before it exited on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopCause {
    Timeout,
    Idle,
    Shutdown,
    /// `dirigent cancel`.
    Cancel,
    /// Its output could not be saved because the disk (or the descriptors) ran out; it runs
    /// again when there is room, and it does not count against the chain.
    Exhausted,
    /// Its output was conclusive while it ran (a login prompt, repeated network errors): see
    /// `watch`. The class is the one the output showed.
    Conclusive,
    /// It printed more than `max_output`.
    OutputLimit,
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

    /// The last `n` lines, for escalation reports and error messages — made printable: they
    /// are shown on terminals, and an agent's escape sequences could retitle a window or write
    /// to the clipboard there.
    pub fn last_lines(&self, n: usize) -> String {
        let text = self.text();
        let lines: Vec<&str> = text.lines().collect();
        crate::terminal::printable_lines(&lines[lines.len().saturating_sub(n)..].join("\n"))
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
    /// For `StopCause::Conclusive`: what the output said.
    pub conclusive: Option<crate::watch::Conclusive>,
    /// The limits that applied to this attempt, when not the agent's (a task may set its own).
    pub timeout: Option<std::time::Duration>,
    pub idle_timeout: Option<std::time::Duration>,
    /// Why its output could not be saved in full, when waiting would not fix it (a file-size
    /// limit, an I/O error; a full disk is a pause instead): a success would hand on a result
    /// cut short.
    pub capture_cut: Option<&'a str>,
    /// The most it could print (`max_output`), for the reason of a stop there.
    pub output_limit: u64,
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
    /// For `rate_limit`: when the provider said it may be used again (a reset time or a
    /// `Retry-After`), in Unix milliseconds.
    pub resets_at_ms: Option<u64>,
    /// Tokens and cost, when the CLI reported them (whatever the verdict).
    pub usage: Option<crate::usage::Usage>,
}

impl Verdict {
    pub(crate) fn fail(class: Class, reason: impl Into<String>) -> Self {
        Verdict {
            class,
            reason: reason.into(),
            result: None,
            resets_at_ms: None,
            usage: None,
        }
    }
}

/// Judges one attempt and, for a rate limit, reads when the limit resets from the output.
pub fn judge_at(agent: &Agent, ev: &Evidence<'_>, now_ms: u64) -> Verdict {
    let mut v = judge(agent, ev);
    if v.class == Class::RateLimit {
        let text = format!(
            "{}\n{}\n{}",
            ev.stdout_full.unwrap_or(""),
            ev.stdout.text(),
            ev.stderr.text()
        );
        v.resets_at_ms = reset_time(&text, now_ms);
    }
    v.usage = ev
        .stdout_full
        .and_then(|out| crate::usage::parse(agent.format, out));
    v
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
    let v = judge_output(agent, ev);
    match ev.capture_cut {
        Some(why) if v.class == Class::Ok => Verdict::fail(
            Class::BadOutput,
            format!(
                "its output could not be saved in full ({why}), so its result would be cut short"
            ),
        ),
        _ => v,
    }
}

/// [`judge`] of what the attempt did and printed.
fn judge_output(agent: &Agent, ev: &Evidence<'_>) -> Verdict {
    let stopped_by_limit = match ev.stopped {
        Some(StopCause::Timeout) => Some((
            Class::Timeout,
            format!(
                "killed after the {} timeout",
                crate::duration::short(ev.timeout.unwrap_or(agent.timeout))
            ),
        )),
        Some(StopCause::Idle) => Some((
            Class::Idle,
            format!(
                "no progress for {} (no output, or only error events): killed as hung",
                ev.idle_timeout
                    .or(agent.idle_timeout)
                    .map(crate::duration::short)
                    .unwrap_or_default()
            ),
        )),
        Some(StopCause::Shutdown) => {
            return Verdict::fail(Class::Interrupted, "stopped by daemon shutdown");
        }
        Some(StopCause::Cancel) => {
            return Verdict::fail(Class::Cancelled, "cancelled by the user");
        }
        Some(StopCause::Exhausted) => {
            return Verdict::fail(
                Class::Interrupted,
                "its output could not be saved (a resource ran out); it runs again when there is room",
            );
        }
        Some(StopCause::OutputLimit) => {
            return Verdict::fail(
                Class::BadOutput,
                format!(
                    "stopped: it printed more than `max_output` ({}); what it printed up to there is kept",
                    crate::config::shown_bytes(ev.output_limit)
                ),
            );
        }
        Some(StopCause::Conclusive) => {
            return match &ev.conclusive {
                Some(c) => Verdict::fail(c.class, c.reason()),
                None => Verdict::fail(Class::ToolError, "stopped on its output"),
            };
        }
        None => None,
    };
    if let Some((class, reason)) = stopped_by_limit {
        // Killed by a limit, but the output may still say why it hung: a login prompt, a
        // network it could not reach. Then that is the class, and the reason says both.
        return match conclusive_in(agent, ev) {
            Some((c, m)) => Verdict::fail(c, format!("{reason}; its output says `{m}`")),
            None => Verdict::fail(class, reason),
        };
    }
    // The watcher found the output conclusive, but the agent ended before the stop landed: the
    // output decides all the same, so the verdict does not hang on how loaded the machine is.
    if let Some(c) = &ev.conclusive {
        return Verdict::fail(c.class, format!("output says `{}`", c.matched));
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
        format if format.is_text() => None,
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
        let class = classify(&text).map_or(Class::ToolError, |(c, _)| c);
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
            Class::BadOutput,
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
    let result = match (structured, agent.format) {
        (None, OutputFormat::AiderText) => match ev.stdout_full.map(aider_answer) {
            Some(answer) => ResultText::Text(answer),
            None => ResultText::Stdout,
        },
        (None, _) => ResultText::Stdout,
        (Some(s), _) => ResultText::Text(s.result.unwrap_or_default()),
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
        resets_at_ms: None,
        usage: None,
    }
}

/// The model's answer in aider's transcript: what follows its banner (which ends with the
/// `Repo-map:` line) up to its last `Tokens:` line. The whole text when there is no banner.
pub fn aider_answer(transcript: &str) -> String {
    let lines: Vec<&str> = transcript.lines().collect();
    let start = lines
        .iter()
        .rposition(|l| l.starts_with("Repo-map:"))
        .map_or(0, |i| i + 1);
    let end = lines
        .iter()
        .rposition(|l| l.starts_with("Tokens: "))
        .filter(|&e| e >= start)
        .unwrap_or(lines.len());
    let body = &lines[start..end];
    let body: Vec<&str> = body
        .iter()
        .copied()
        .filter(|l| !l.starts_with("https://aider.chat/HISTORY.html"))
        .collect();
    let text = body.join("\n");
    let text = text.trim_matches('\n');
    if text.trim().is_empty() {
        String::new()
    } else {
        format!("{text}\n")
    }
}

/// The class the output of a stopped attempt shows, when it is one that explains a hang (auth,
/// network, rate limit), and the text that showed it. Only lines that cannot be the model's
/// answer are read (see `watch`): stderr, plain stdout, error events of JSON-lines output.
fn conclusive_in(agent: &Agent, ev: &Evidence<'_>) -> Option<(Class, String)> {
    let stdout = ev.stdout.text();
    let errors: String = match agent.format {
        OutputFormat::Plain | OutputFormat::AiderText => stdout,
        OutputFormat::CodexJsonl | OutputFormat::OpencodeJsonl => stdout
            .lines()
            .filter(|l| crate::watch::is_error_event(l))
            .collect::<Vec<_>>()
            .join("\n"),
        OutputFormat::ClaudeJson | OutputFormat::GeminiJson => String::new(),
    };
    let text = format!("{errors}\n{}", ev.stderr.text());
    agent
        .fatal
        .patterns
        .iter()
        .chain(agent.classified.iter())
        .filter(|(c, _)| matches!(c, Class::Auth | Class::Network | Class::RateLimit))
        .find_map(|(c, re)| re.find(&text).map(|m| (*c, one_line(m.as_str()))))
}

/// The longest a parsed reset time may lie ahead; anything later is taken as a misreading.
const MAX_RESET: u64 = 7 * 24 * 3600 * 1000;

/// When a rate limit resets, read from what the CLI printed: `Retry-After: 30`, `retry in 20s`,
/// `try again in 5 minutes`, claude's `usage limit reached|<unix seconds>`, an ISO-8601 UTC
/// time (`2026-11-21T18:00:00Z`), or a local clock time (`resets 5pm`, `resets at 17:30`).
/// `None` when none is found (the agent's `cooldown` applies).
pub fn reset_time(text: &str, now_ms: u64) -> Option<u64> {
    use std::sync::LazyLock;
    static AFTER: LazyLock<regex::Regex> =
        LazyLock::new(|| regex::Regex::new(r"(?i)retry[-_ ]after\W{0,3}(\d{1,6})\b").unwrap());
    static IN: LazyLock<regex::Regex> = LazyLock::new(|| {
        regex::Regex::new(
            r"(?i)(?:retry|try again|reset|resets|available again)\w*\s+(?:in|after)\s+(\d+(?:\.\d+)?)\s*(ms|milliseconds?|s|secs?|seconds?|m|mins?|minutes?|h|hrs?|hours?)\b",
        )
        .unwrap()
    });
    static EPOCH: LazyLock<regex::Regex> =
        LazyLock::new(|| regex::Regex::new(r"(?i)limit reached\|(\d{10})\b").unwrap());
    static ISO: LazyLock<regex::Regex> = LazyLock::new(|| {
        regex::Regex::new(r"(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2}))?(?:\.\d+)?Z")
            .unwrap()
    });
    static CLOCK: LazyLock<regex::Regex> = LazyLock::new(|| {
        regex::Regex::new(r"(?i)resets?\s+(?:at\s+)?(\d{1,2})(?::(\d{2}))?\s*(am|pm)?\b").unwrap()
    });
    let ahead = |at: u64| (at > now_ms && at - now_ms <= MAX_RESET).then_some(at);
    if let Some(c) = AFTER.captures(text) {
        let secs: u64 = c[1].parse().ok()?;
        return ahead(now_ms + secs * 1000);
    }
    if let Some(c) = IN.captures(text) {
        let n: f64 = c[1].parse().ok()?;
        let unit = c[2].to_ascii_lowercase();
        let ms = match unit.as_bytes()[0] {
            b'm' if unit.starts_with("ms") || unit.starts_with("milli") => n,
            b'm' => n * 60_000.0,
            b'h' => n * 3_600_000.0,
            _ => n * 1000.0,
        };
        return ahead(now_ms + ms.ceil() as u64);
    }
    if let Some(c) = EPOCH.captures(text) {
        let secs: u64 = c[1].parse().ok()?;
        return ahead(secs * 1000);
    }
    if let Some(c) = ISO.captures(text) {
        let n = |i: usize| {
            c.get(i)
                .map_or(0, |m| m.as_str().parse::<i64>().unwrap_or(0))
        };
        let days = days_from_civil(n(1), n(2), n(3));
        let secs = days * 86_400 + n(4) * 3600 + n(5) * 60 + n(6);
        return u64::try_from(secs).ok().and_then(|s| ahead(s * 1000));
    }
    if let Some(c) = CLOCK.captures(text) {
        let mut hour: u64 = c[1].parse().ok()?;
        let minute: u64 = c.get(2).map_or(Some(0), |m| m.as_str().parse().ok())?;
        match c.get(3).map(|m| m.as_str().to_ascii_lowercase()).as_deref() {
            Some("pm") if hour < 12 => hour += 12,
            Some("am") if hour == 12 => hour = 0,
            _ => {}
        }
        if hour > 23 || minute > 59 {
            return None;
        }
        // The next time the local clock shows hour:minute.
        let offset_ms = local_offset_secs(now_ms / 1000) * 1000;
        let local_now = now_ms as i64 + offset_ms;
        let day_ms = 86_400_000i64;
        let today = local_now.div_euclid(day_ms) * day_ms;
        let mut at = today + ((hour * 3600 + minute * 60) * 1000) as i64;
        if at <= local_now {
            at += day_ms;
        }
        return u64::try_from(at - offset_ms).ok().and_then(ahead);
    }
    None
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The local time zone's offset from UTC at `unix_secs`, in seconds (from the C library, which
/// reads `TZ` and `/etc/localtime`).
fn local_offset_secs(unix_secs: u64) -> i64 {
    let t = unix_secs as nix::libc::time_t;
    let mut tm: nix::libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: `localtime_r` writes only into `tm`, which lives for the call.
    let ok = unsafe { !nix::libc::localtime_r(&t, &mut tm).is_null() };
    if ok { tm.tm_gmtoff as i64 } else { 0 }
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
    // A reason is shown on terminals: no escape sequence of the agent's survives into it.
    let line = crate::terminal::printable(s.lines().find(|l| !l.trim().is_empty()).unwrap_or(""));
    let line = line.trim();
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
        OutputFormat::Plain | OutputFormat::AiderText => "text",
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
        OutputFormat::Plain | OutputFormat::AiderText => Structured::default(),
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
    fn reset_times_are_read_from_what_the_clis_print() {
        let now = 1_800_000_000_000; // 2027-01-15T08:00:00Z
        assert_eq!(
            reset_time("HTTP 429\nRetry-After: 30", now),
            Some(now + 30_000)
        );
        assert_eq!(
            reset_time("Quota exceeded. Please retry in 47.2s.", now),
            Some(now + 47_200)
        );
        assert_eq!(
            reset_time("rate limited, try again in 5 minutes", now),
            Some(now + 300_000)
        );
        assert_eq!(
            reset_time("Claude AI usage limit reached|1800003600", now),
            Some(1_800_003_600_000)
        );
        assert_eq!(
            reset_time("limit resets at 2027-01-15T09:30:00Z", now),
            Some(now + 90 * 60_000)
        );
        // A time in the past, absurdly far ahead, or nothing at all: no reset time.
        assert_eq!(reset_time("usage limit reached|1700000000", now), None);
        assert_eq!(reset_time("retry after 99999999", now), None);
        assert_eq!(reset_time("429 Too Many Requests", now), None);
        // A local clock time is the next time the clock shows it, within a day.
        let at = reset_time("Your limit resets 5pm", now).unwrap();
        assert!(at > now && at <= now + 86_400_000, "{at}");
        let at2 = reset_time("limit will reset at 17:00", now).unwrap();
        assert_eq!(at, at2);
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
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
                Class::Network,
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
            case("claude", 0, "not json at all", "", Class::BadOutput),
            // claude 2.1.332 offline: the words changed; the error's name did not.
            case(
                "claude",
                1,
                r#"{"type":"result","is_error":true,"api_error":"connection_failed","result":"API Error: Can't reach the API server — check your internet or DNS"}"#,
                "",
                Class::Network,
            ),
            // codex 0.171 offline: its model list times out before any connection is tried.
            case(
                "codex",
                1,
                "",
                "ERROR codex_models_manager::manager: failed to refresh available models: request timed out\n",
                Class::Network,
            ),
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
                Class::Network,
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
                Class::Network,
            ),
            case(
                "codex",
                0,
                "{\"type\":\"thread.started\"}\n",
                "",
                Class::BadOutput,
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
            case("opencode", 0, "", "", Class::BadOutput),
            // The CLI reported a failure that is neither auth, rate limit nor network.
            case(
                "claude",
                0,
                r#"{"type":"result","subtype":"error_during_execution","is_error":true,"result":"Tool use failed: permission denied"}"#,
                "",
                Class::ToolError,
            ),
            case(
                "aider",
                0,
                "litellm.BadRequestError: model does not exist\n",
                "",
                Class::ToolError,
            ),
            case(
                "opencode",
                0,
                "{\"type\":\"error\",\"error\":{\"name\":\"UnknownError\",\"data\":{\"message\":\"Error: Unable to connect. Is the computer able to access the url?\"}}}\n",
                "",
                Class::Network,
            ),
            // aider: exit 0 with litellm error text on stdout.
            case(
                "aider",
                0,
                "litellm.APIConnectionError: Connection refused\n",
                "",
                Class::Network,
            ),
            case(
                "aider",
                0,
                "litellm.AuthenticationError: AuthenticationError: invalid api key\n",
                "",
                Class::Auth,
            ),
            case("aider", 0, "Applied edit to src/a.rs\n", "", Class::Ok),
            // A DNS failure is `network` whatever wraps it (observed offline with a fake key).
            case(
                "aider",
                0,
                "litellm.InternalServerError: AnthropicException - [Errno -2] Name or service not known\n",
                "",
                Class::Network,
            ),
            case(
                "codex",
                1,
                "{\"type\":\"error\",\"message\":\"failed to lookup address information: Temporary failure in name resolution\"}\n",
                "",
                Class::Network,
            ),
            // An overloaded provider is transient: `network` (retried with backoff), not
            // `tool_error`.
            case(
                "claude",
                1,
                r#"{"type":"result","subtype":"success","is_error":true,"result":"API Error: 529 {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}"}"#,
                "",
                Class::Network,
            ),
            case(
                "opencode",
                0,
                "{\"type\":\"error\",\"error\":{\"name\":\"APIError\",\"data\":{\"message\":\"Service Unavailable\",\"statusCode\":503}}}\n",
                "",
                Class::Network,
            ),
            // Stopped by a limit, the output still decides where it is conclusive.
            Case {
                stopped: Some(StopCause::Idle),
                ..case(
                    "aider",
                    0,
                    "No LLM model was specified and no API keys were provided.\nOpenRouter provides free and paid access to many LLMs.\nWaiting up to 5 minutes for you to finish in the browser...\n",
                    "",
                    Class::Auth,
                )
            },
            Case {
                stopped: Some(StopCause::Idle),
                ..case(
                    "codex",
                    0,
                    "{\"type\":\"error\",\"message\":\"Reconnecting... 2/5 (stream disconnected before completion: error sending request for url)\"}\n",
                    "",
                    Class::Network,
                )
            },
            Case {
                stopped: Some(StopCause::Idle),
                ..case(
                    "codex",
                    0,
                    "{\"type\":\"item.completed\",\"item\":{\"text\":\"the 401 unauthorized page\"}}\n",
                    "",
                    Class::Idle,
                )
            },
            Case {
                stopped: Some(StopCause::Timeout),
                ..case("plain", 0, "still thinking\n", "", Class::Timeout)
            },
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
                ..Default::default()
            };
            let v = judge(&cfg.agents[c.agent], &ev);
            assert_eq!(v.class, c.want, "case {i} ({}): {v:?}", c.agent);
            assert!(!v.reason.is_empty());
        }
    }

    #[test]
    fn output_that_could_not_be_saved_in_full_is_never_a_success() {
        let cfg = agents();
        // (exit code, the verdict's class)
        for (exit, want) in [(0, Class::BadOutput), (1, Class::Exit)] {
            let ev = Evidence {
                exit_code: Some(exit),
                stdout: sample("a long answer, cut\n"),
                stdout_full: Some("a long answer, cut\n"),
                capture_cut: Some("File too large (os error 27)"),
                ..Default::default()
            };
            let v = judge(&cfg.agents["plain"], &ev);
            assert_eq!(v.class, want, "exit {exit}: {v:?}");
            if want == Class::BadOutput {
                assert_eq!(
                    v.reason,
                    "its output could not be saved in full (File too large (os error 27)), so its result would be cut short"
                );
            }
        }
    }

    #[test]
    fn a_stop_names_the_limit_and_what_the_output_said() {
        let cfg = agents();
        let ev = Evidence {
            stopped: Some(StopCause::Idle),
            idle_timeout: Some(std::time::Duration::from_secs(180)),
            stdout: sample("No LLM model was specified and no API keys were provided.\n"),
            ..Default::default()
        };
        let v = judge(&cfg.agents["aider"], &ev);
        assert_eq!(
            (v.class, v.reason.as_str()),
            (
                Class::Auth,
                "no progress for 3m00s (no output, or only error events): killed as hung; its output says `no API keys were provided`"
            )
        );
        let ev = Evidence {
            stopped: Some(StopCause::Conclusive),
            conclusive: Some(crate::watch::Conclusive {
                class: Class::Network,
                matched: "fetch failed".into(),
                times: 2,
            }),
            ..Default::default()
        };
        let v = judge(&cfg.agents["gemini"], &ev);
        assert_eq!(v.class, Class::Network);
        assert_eq!(
            v.reason,
            "its output said `fetch failed` (2 times with no progress in between); stopped instead of waiting for the CLI's own retries"
        );

        // The same output, but the agent exited 0 before the stop landed: the same class.
        let ev = Evidence {
            exit_code: Some(0),
            stdout: sample("litellm.RateLimitError: rate limit exceeded\n"),
            conclusive: Some(crate::watch::Conclusive {
                class: Class::RateLimit,
                matched: "rate limit exceeded".into(),
                times: 1,
            }),
            ..Default::default()
        };
        let v = judge(&cfg.agents["aider"], &ev);
        assert_eq!(
            (v.class, v.reason.as_str()),
            (Class::RateLimit, "output says `rate limit exceeded`"),
            "expected a conclusive output to decide when the agent ended first"
        );
    }

    #[test]
    fn aiders_answer_is_cut_out_of_its_transcript() {
        let transcript = "Analytics have been permanently disabled.\n\nHTTPSConnectionPool(host='raw.githubusercontent.com'): Failed to resolve\nAider v0.86.2\nModel: openai/stub-model with whole edit format\nGit repo: none\nRepo-map: disabled\n\n\nhttps://aider.chat/HISTORY.html#release-notes\n\nSTUB ANSWER: the quick brown fox.\n\nApplied edit to a.rs\nTokens: 593 sent, 15 received.\n";
        assert_eq!(
            aider_answer(transcript),
            "STUB ANSWER: the quick brown fox.\n\nApplied edit to a.rs\n"
        );
        assert_eq!(aider_answer("no banner at all\n"), "no banner at all\n");
        assert_eq!(
            aider_answer("Repo-map: disabled\nTokens: 1 sent, 2 received.\n"),
            ""
        );
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
