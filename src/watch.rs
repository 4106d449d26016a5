//! Watching an attempt's output as it arrives, to stop it as soon as the output is conclusive.
//!
//! A CLI that is not logged in, or cannot reach its provider, often does not exit: it waits for
//! a browser login, or retries by itself for minutes (gemini ~10 times, opencode ~70 s, codex
//! forever). Judging only at the end would make the user wait for the CLI's loop (times our own
//! retries). So `spawn`'s capture tasks feed every line to a [`Watcher`]; when a *fatal* pattern
//! of the agent matches — at once for `auth`, after `fatal_repeats` lines in a row for the
//! transient classes (`network`, `rate_limit`) — the supervisor stops the attempt and the judge
//! gives it that class. Decisions only: no I/O here.
//!
//! Only lines that cannot be the model's answer are looked at, so that a task *about* DNS errors
//! is not stopped for quoting one: stderr always; stdout for plain-text agents; for JSON-lines
//! agents only error events; for agents that print one JSON object at the end, nothing (their
//! end is near anyway, and the judge reads it).

use regex::Regex;

use crate::class::Class;
use crate::preset::OutputFormat;

/// Longest part of one line that is matched; the rest of a longer line is skipped.
const MAX_LINE: usize = 8 * 1024;

/// Which stream a chunk came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// What makes an agent's output conclusive while it runs.
#[derive(Debug, Clone, Default)]
pub struct FatalRules {
    /// Patterns by class, checked in order.
    pub patterns: Vec<(Class, Regex)>,
    /// `network` lines seen before the attempt is stopped; a line of progress in between starts
    /// the count again. Every other class stops it at the first line.
    pub repeats: u32,
}

impl FatalRules {
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }
}

/// Why the output is conclusive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conclusive {
    pub class: Class,
    /// The text that matched (one line, at most 200 characters).
    pub matched: String,
    /// How many lines of this class were seen.
    pub times: u32,
}

impl Conclusive {
    /// A reason for the attempt's record: "its output said `Not logged in`; stopped at once".
    pub fn reason(&self) -> String {
        if self.times <= 1 {
            format!("its output said `{}`; stopped at once", self.matched)
        } else {
            format!(
                "its output said `{}` ({} times with no progress in between); stopped instead of waiting for the CLI's own retries",
                self.matched, self.times
            )
        }
    }
}

/// Which stdout lines can hold an error rather than the model's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StdoutScope {
    All,
    ErrorEvents,
    Nothing,
}

fn stdout_scope(format: OutputFormat) -> StdoutScope {
    match format {
        OutputFormat::Plain | OutputFormat::AiderText => StdoutScope::All,
        OutputFormat::CodexJsonl | OutputFormat::OpencodeJsonl => StdoutScope::ErrorEvents,
        OutputFormat::ClaudeJson | OutputFormat::GeminiJson => StdoutScope::Nothing,
    }
}

/// Whether a JSON-lines event shows work done since the last error: not the events that only
/// open something (a thread, a turn, a step) or stream text, which a CLI stuck in a loop of
/// failing requests also prints.
fn is_progress_event(line: &str) -> bool {
    let head: String = line
        .chars()
        .take(40)
        .filter(|c| !c.is_whitespace())
        .collect();
    ![
        r#"{"type":"step_start""#,
        r#"{"type":"text""#,
        r#"{"type":"thread.started""#,
        r#"{"type":"turn.started""#,
        r#"{"type":"item.started""#,
    ]
    .iter()
    .any(|p| head.starts_with(p))
}

/// Whether a JSON-lines event reports an error (codex `error` / `turn.failed`, opencode `error`,
/// and opencode's `step_finish` with reason `unknown`: its stream ended without a finish, after
/// which it asks again in a loop that never ends).
pub fn is_error_event(line: &str) -> bool {
    let head: String = line
        .chars()
        .take(64)
        .filter(|c| !c.is_whitespace())
        .collect();
    head.starts_with(r#"{"type":"error""#)
        || head.starts_with(r#"{"type":"turn.failed""#)
        || head.starts_with(r#"{"type":"stream_error""#)
        || (head.starts_with(r#"{"type":"step_finish""#) && line.contains(r#""reason":"unknown""#))
}

/// One attempt's watcher: splits both streams into lines and counts fatal matches.
#[derive(Debug)]
pub struct Watcher {
    rules: FatalRules,
    scope: StdoutScope,
    /// The current (unfinished) line of each stream, at most `MAX_LINE` bytes of it.
    partial: [Vec<u8>; 2],
    /// `network` lines since the last progress.
    strikes: u32,
    decided: Option<Conclusive>,
}

impl Watcher {
    pub fn new(rules: FatalRules, format: OutputFormat) -> Self {
        Watcher {
            rules,
            scope: stdout_scope(format),
            partial: [Vec::new(), Vec::new()],
            strikes: 0,
            decided: None,
        }
    }

    /// Feeds a chunk of one stream; returns the verdict the first time the output becomes
    /// conclusive (and never again).
    pub fn feed(&mut self, stream: Stream, chunk: &[u8]) -> Option<Conclusive> {
        if self.decided.is_some() || self.rules.is_empty() {
            return None;
        }
        let idx = stream as usize;
        let mut rest = chunk;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let (part, after) = rest.split_at(nl);
            rest = &after[1..];
            let room = MAX_LINE.saturating_sub(self.partial[idx].len());
            self.partial[idx].extend_from_slice(&part[..part.len().min(room)]);
            let line = std::mem::take(&mut self.partial[idx]);
            if let Some(c) = self.line(stream, &String::from_utf8_lossy(&line)) {
                self.decided = Some(c.clone());
                return Some(c);
            }
        }
        let room = MAX_LINE.saturating_sub(self.partial[idx].len());
        self.partial[idx].extend_from_slice(&rest[..rest.len().min(room)]);
        None
    }

    fn line(&mut self, stream: Stream, line: &str) -> Option<Conclusive> {
        if line.trim().is_empty() {
            return None;
        }
        if stream == Stream::Stdout {
            match self.scope {
                StdoutScope::Nothing => return None,
                StdoutScope::ErrorEvents if !is_error_event(line) => {
                    // The CLI got somewhere since its last error.
                    if is_progress_event(line) {
                        self.strikes = 0;
                    }
                    return None;
                }
                _ => {}
            }
        }
        let (class, m) = self
            .rules
            .patterns
            .iter()
            .find_map(|(class, re)| re.find(line).map(|m| (*class, m.as_str())))?;
        if class != Class::Network {
            // Auth, a rate limit, a configured tool_error: final at once.
            return Some(Conclusive {
                class,
                matched: one_line(m),
                times: 1,
            });
        }
        self.strikes += 1;
        (self.strikes >= self.rules.repeats.max(1)).then(|| Conclusive {
            class,
            matched: one_line(m),
            times: self.strikes,
        })
    }
}

fn one_line(s: &str) -> String {
    let s = s.trim();
    if s.chars().count() > 200 {
        let mut t: String = s.chars().take(199).collect();
        t.push('…');
        t
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(repeats: u32) -> FatalRules {
        FatalRules {
            patterns: vec![
                (Class::Auth, Regex::new(r"(?i)no api key").unwrap()),
                (
                    Class::Network,
                    Regex::new(r#"(?i)name or service not known|fetch failed|"reason":"unknown""#)
                        .unwrap(),
                ),
                (Class::RateLimit, Regex::new(r"\b429\b").unwrap()),
            ],
            repeats,
        }
    }

    /// Feeds `(stream, text)` chunks in order; returns the first verdict and the chunk index.
    fn run(
        format: OutputFormat,
        repeats: u32,
        chunks: &[(Stream, &str)],
    ) -> Option<(usize, Class, u32)> {
        let mut w = Watcher::new(rules(repeats), format);
        chunks
            .iter()
            .enumerate()
            .find_map(|(i, (s, text))| w.feed(*s, text.as_bytes()).map(|c| (i, c.class, c.times)))
    }

    use OutputFormat::*;
    use Stream::*;

    /// (name, format, repeats, chunks fed, the first verdict as (chunk index, class, times)).
    type Case<'a> = (
        &'a str,
        OutputFormat,
        u32,
        &'a [(Stream, &'a str)],
        Option<(usize, Class, u32)>,
    );

    #[test]
    fn decisions_table() {
        let cases: &[Case] = &[
            (
                "auth on stderr stops at once",
                Plain,
                3,
                &[(Stderr, "starting\n"), (Stderr, "No API key found\n")],
                Some((1, Class::Auth, 1)),
            ),
            (
                "auth on a plain stdout stops at once",
                Plain,
                3,
                &[(Stdout, "no api key was provided\n")],
                Some((0, Class::Auth, 1)),
            ),
            (
                "a line is only matched once complete",
                Plain,
                1,
                &[(Stderr, "No API"), (Stderr, " key\n")],
                Some((1, Class::Auth, 1)),
            ),
            (
                "network needs `repeats` lines",
                Plain,
                3,
                &[
                    (Stderr, "fetch failed\n"),
                    (Stderr, "retrying\nfetch failed\n"),
                    (Stderr, "fetch failed\n"),
                ],
                Some((2, Class::Network, 3)),
            ),
            (
                "a rate limit stops it at once, network errors before it or not",
                Plain,
                3,
                &[(Stderr, "fetch failed\n"), (Stderr, "HTTP 429\n")],
                Some((1, Class::RateLimit, 1)),
            ),
            (
                "claude's one JSON object on stdout is left to the judge",
                ClaudeJson,
                1,
                &[(Stdout, "{\"result\":\"no api key\"}\n")],
                None,
            ),
            (
                "the model's text in a JSON-lines event is not an error",
                CodexJsonl,
                1,
                &[(
                    Stdout,
                    "{\"type\":\"item.completed\",\"item\":{\"text\":\"Name or service not known\"}}\n",
                )],
                None,
            ),
            (
                "JSON-lines error events count",
                CodexJsonl,
                2,
                &[
                    (
                        Stdout,
                        "{\"type\":\"error\",\"message\":\"fetch failed\"}\n",
                    ),
                    (
                        Stdout,
                        "{\"type\":\"error\",\"message\":\"fetch failed\"}\n",
                    ),
                ],
                Some((1, Class::Network, 2)),
            ),
            (
                "progress between errors starts the count again",
                OpencodeJsonl,
                2,
                &[
                    (
                        Stdout,
                        "{\"type\":\"error\",\"message\":\"fetch failed\"}\n",
                    ),
                    (
                        Stdout,
                        "{\"type\":\"tool_use\",\"part\":{\"tool\":\"edit\"}}\n",
                    ),
                    (
                        Stdout,
                        "{\"type\":\"error\",\"message\":\"fetch failed\"}\n",
                    ),
                ],
                None,
            ),
            (
                "opencode asking again and again after a cut stream is not progress",
                OpencodeJsonl,
                2,
                &[
                    (Stdout, "{\"type\":\"step_start\",\"part\":{}}\n"),
                    (
                        Stdout,
                        "{\"type\":\"step_finish\",\"part\":{\"reason\":\"unknown\"}}\n",
                    ),
                    (
                        Stdout,
                        "{\"type\":\"text\",\"part\":{\"text\":\"half an ans\"}}\n",
                    ),
                    (Stdout, "{\"type\":\"step_start\",\"part\":{}}\n"),
                    (
                        Stdout,
                        "{\"type\":\"step_finish\",\"part\":{\"reason\":\"unknown\"}}\n",
                    ),
                ],
                Some((4, Class::Network, 2)),
            ),
            (
                "a finished step is progress",
                OpencodeJsonl,
                2,
                &[
                    (
                        Stdout,
                        "{\"type\":\"step_finish\",\"part\":{\"reason\":\"unknown\"}}\n",
                    ),
                    (
                        Stdout,
                        "{\"type\":\"step_finish\",\"part\":{\"reason\":\"tool-calls\"}}\n",
                    ),
                    (
                        Stdout,
                        "{\"type\":\"step_finish\",\"part\":{\"reason\":\"unknown\"}}\n",
                    ),
                ],
                None,
            ),
            (
                "an unfinished last line is left to the judge",
                Plain,
                1,
                &[(Stderr, "No API key")],
                None,
            ),
        ];
        for (name, format, repeats, chunks, want) in cases {
            assert_eq!(run(*format, *repeats, chunks), *want, "case: {name}");
        }
    }

    #[test]
    fn a_long_line_is_bounded_and_still_matched_by_its_start() {
        let mut w = Watcher::new(rules(1), Plain);
        let mut line = b"no api key ".to_vec();
        line.resize(10 * MAX_LINE, b'x');
        assert_eq!(w.feed(Stderr, &line), None, "no newline yet: undecided");
        assert!(
            w.partial[1].len() <= MAX_LINE,
            "the partial line must stay bounded, it held {}",
            w.partial[1].len()
        );
        let c = w.feed(Stderr, b"\n").expect("decided at the newline");
        assert_eq!(c.class, Class::Auth);
        assert_eq!(w.feed(Stderr, b"no api key\n"), None, "decides only once");
    }
}
