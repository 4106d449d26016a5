//! The `notify:` section: where dirigent tells people what happened — webhooks (signed POSTs),
//! desktop notifications, and commands — and which events each destination gets. Parsed into
//! [`Destination`]s here; [`crate::notifications`] delivers.

use std::time::Duration;

use serde::Deserialize;

use crate::duration::Dur;

/// What a notification is about.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A task finished with a result.
    Done,
    /// A task failed its whole chain (a report is in `.context/escalations/`).
    Escalated,
    /// Something only a person can fix: a provider disabled after an auth failure, a budget
    /// spent, a merge conflict.
    Attention,
    /// A workflow run finished (done or escalated).
    WorkflowFinished,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Done => "done",
            Kind::Escalated => "escalated",
            Kind::Attention => "attention",
            Kind::WorkflowFinished => "workflow_finished",
        }
    }
}

/// The kinds a destination gets unless it says: what needs a person, not every success.
pub const DEFAULT_KINDS: &[Kind] = &[Kind::Escalated, Kind::Attention, Kind::WorkflowFinished];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDestination {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    webhook: Option<String>,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    secret_env: Option<String>,
    #[serde(default)]
    desktop: Option<bool>,
    #[serde(default)]
    command: Option<Vec<String>>,
    #[serde(default)]
    events: Option<Vec<Kind>>,
    #[serde(default)]
    agents: Option<Vec<String>>,
    #[serde(default)]
    burst: Option<RawBurst>,
    #[serde(default)]
    retries: Option<u32>,
    #[serde(default)]
    timeout: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBurst {
    #[serde(default)]
    max: Option<u32>,
    #[serde(default)]
    window: Option<Dur>,
}

/// Where notifications go.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// POST JSON to an `http://` or `https://` URL, signed with HMAC-SHA-256 when a secret is
    /// set.
    Webhook {
        url: WebhookUrl,
        secret: Option<Secret>,
    },
    /// `notify-send` (Linux) or `osascript` (macOS), where present.
    Desktop,
    /// A command run with the notification in its environment (`DIRIGENT_NOTIFICATION`, JSON).
    Command(Vec<String>),
}

/// What signs a webhook's bodies.
#[derive(Debug, Clone, PartialEq)]
pub enum Secret {
    /// Written in the config.
    Given(String),
    /// Read from the daemon's environment at each delivery (so the CLI, which reads the same
    /// config, need not have it).
    Env(String),
}

impl Secret {
    /// The secret's value, or why there is none.
    pub fn value(&self) -> Result<String, String> {
        match self {
            Secret::Given(s) => Ok(s.clone()),
            Secret::Env(var) => match std::env::var(var) {
                Ok(s) if !s.is_empty() => Ok(s),
                _ => Err(format!(
                    "`secret_env: {var}` names a variable the daemon's environment does not have (or is empty); the notification was not sent unsigned"
                )),
            },
        }
    }
}

/// A webhook address, split once at load so delivery never parses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// The path and query, starting with `/`.
    pub path: String,
    /// As written (for messages and the ledger, without any userinfo).
    pub shown: String,
}

impl WebhookUrl {
    pub fn parse(text: &str) -> Result<WebhookUrl, String> {
        let (tls, rest) = if let Some(r) = text.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = text.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("`{text}` is not an `http://` or `https://` URL"));
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest[i..].starts_with('/') => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        if authority.contains('@') {
            return Err(format!(
                "`{text}`: put credentials in `secret`, not in the URL"
            ));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => match p.parse::<u16>() {
                Ok(p) if p > 0 => (h.to_string(), p),
                _ => return Err(format!("`{text}`: `{p}` is not a port")),
            },
            _ => (authority.to_string(), if tls { 443 } else { 80 }),
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:_".contains(c))
        {
            return Err(format!("`{text}`: `{host}` is not a host name"));
        }
        if path.chars().any(|c| c.is_control() || c == ' ') {
            return Err(format!(
                "`{text}`: the path may not hold spaces or control characters"
            ));
        }
        Ok(WebhookUrl {
            tls,
            host,
            port,
            path,
            shown: text.to_string(),
        })
    }
}

/// One validated destination.
#[derive(Debug, Clone, PartialEq)]
pub struct Destination {
    /// How the ledger and the logs name it: `name`, else `webhook-1`, `desktop-2`, ….
    pub name: String,
    pub target: Target,
    pub kinds: Vec<Kind>,
    /// Only notifications about tasks whose (latest) agent is one of these; empty: all.
    pub agents: Vec<String>,
    /// At most `burst_max` notifications per `burst_window`; more become one summary at the
    /// end of the window.
    pub burst_max: u32,
    pub burst_window: Duration,
    /// Deliveries tried again after a failure (with backoff) before it is recorded as failed.
    pub retries: u32,
    /// How long one delivery may take.
    pub timeout: Duration,
}

pub(super) fn build(raw: Vec<RawDestination>) -> Result<Vec<Destination>, String> {
    let mut out = Vec::new();
    for (i, d) in raw.into_iter().enumerate() {
        let n = i + 1;
        let chosen = [
            d.webhook.is_some(),
            d.desktop == Some(true),
            d.command.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if chosen != 1 {
            return Err(format!(
                "`notify` entry {n} must have exactly one of `webhook: URL`, `desktop: true` or `command: [...]`"
            ));
        }
        if (d.secret.is_some() || d.secret_env.is_some()) && d.webhook.is_none() {
            return Err(format!(
                "`notify` entry {n}: `secret` and `secret_env` sign webhooks only"
            ));
        }
        let (target, kind_name) = if let Some(url) = &d.webhook {
            let url = WebhookUrl::parse(url).map_err(|e| format!("`notify` entry {n}: {e}"))?;
            let secret = match (&d.secret, &d.secret_env) {
                (Some(_), Some(_)) => {
                    return Err(format!(
                        "`notify` entry {n}: give `secret` or `secret_env`, not both"
                    ));
                }
                (Some(s), None) if s.is_empty() => {
                    return Err(format!("`notify` entry {n}: the secret is empty"));
                }
                (Some(s), None) => Some(Secret::Given(s.clone())),
                (None, Some(var)) => Some(Secret::Env(var.clone())),
                (None, None) => None,
            };
            (Target::Webhook { url, secret }, "webhook")
        } else if let Some(argv) = &d.command {
            if argv.first().is_none_or(|p| p.trim().is_empty()) {
                return Err(format!("`notify` entry {n}: `command` must name a program"));
            }
            (Target::Command(argv.clone()), "command")
        } else {
            (Target::Desktop, "desktop")
        };
        let kinds = d.events.unwrap_or_else(|| DEFAULT_KINDS.to_vec());
        if kinds.is_empty() {
            return Err(format!(
                "`notify` entry {n}: `events` is empty, so it would never be told anything"
            ));
        }
        let burst = d.burst.unwrap_or(RawBurst {
            max: None,
            window: None,
        });
        let burst_max = burst.max.unwrap_or(5);
        let burst_window = burst.window.map_or(Duration::from_secs(60), |d| d.0);
        if burst_window.is_zero() {
            return Err(format!(
                "`notify` entry {n}: `burst.window` must be longer than 0"
            ));
        }
        let timeout = d.timeout.map_or(Duration::from_secs(10), |d| d.0);
        if timeout.is_zero() {
            return Err(format!(
                "`notify` entry {n}: `timeout` must be longer than 0"
            ));
        }
        let name = d.name.unwrap_or_else(|| format!("{kind_name}-{n}"));
        super::validate_name(&name)
            .map_err(|e| format!("`notify` entry {n}: the name `{name}` {e}"))?;
        if out.iter().any(|o: &Destination| o.name == name) {
            return Err(format!("`notify`: two destinations are named `{name}`"));
        }
        out.push(Destination {
            name,
            target,
            kinds,
            agents: d.agents.unwrap_or_default(),
            burst_max,
            burst_window,
            retries: d.retries.unwrap_or(4).min(20),
            timeout,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_are_split_once_and_odd_ones_refused() {
        let ok = |t: &str| WebhookUrl::parse(t).map(|u| (u.tls, u.host, u.port, u.path));
        // (url, Ok((tls, host, port, path)) or Err(part of the message))
        type Want = Result<(bool, &'static str, u16, &'static str), &'static str>;
        let cases: Vec<(&str, Want)> = vec![
            (
                "http://127.0.0.1:9000/hook",
                Ok((false, "127.0.0.1", 9000, "/hook")),
            ),
            (
                "https://hooks.example.com/x?y=1",
                Ok((true, "hooks.example.com", 443, "/x?y=1")),
            ),
            ("http://localhost", Ok((false, "localhost", 80, "/"))),
            ("http://h?q", Ok((false, "h", 80, "/?q"))),
            ("http://[::1]:8080/a", Ok((false, "::1", 8080, "/a"))),
            ("ftp://x/", Err("is not an `http://` or `https://` URL")),
            ("http://user:pw@h/", Err("put credentials in `secret`")),
            ("http://h:0/", Err("is not a port")),
            ("http://h:99999/", Err("is not a port")),
            ("http://h o/", Err("is not a host name")),
            ("http://h/a b", Err("may not hold spaces")),
        ];
        for (text, want) in cases {
            match (ok(text), want) {
                (Ok((tls, host, port, path)), Ok(w)) => {
                    assert_eq!((tls, host.as_str(), port, path.as_str()), w, "{text}")
                }
                (Err(e), Err(w)) => assert!(e.contains(w), "{text}: {e}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
    }
}
