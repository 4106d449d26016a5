//! What to do about a failed chain, in one line: "claude and gemini need a login: run …".
//!
//! When a task escalates, its reason (shown by `submit --wait`, `status`, `show`) and the top of
//! its escalation report say the cause and the fix, grouped by class over the agents that
//! failed: logins (with each preset's login command and `dirigent agents enable`), programs
//! that are not installed, providers that cannot be reached, rate limits. Pure: it reads the
//! task's attempts and the config, nothing else.

use crate::config::Config;
use crate::judge::Class;
use crate::state::AttemptSummary;

/// The causes of a failed chain and their fixes, or `None` when there is no advice beyond the
/// attempts' own reasons (the agents simply failed at the task).
pub fn in_short(attempts: &[AttemptSummary], config: &Config) -> Option<String> {
    // Each agent's last class: an agent that failed on the network and then passed the chain
    // on is judged by its last attempt.
    let mut last: Vec<(&str, Class, &str)> = Vec::new();
    for a in attempts {
        let Some(class) = a.class else { continue };
        match last.iter_mut().find(|(name, ..)| *name == a.agent) {
            Some(entry) => (entry.1, entry.2) = (class, &a.reason),
            None => last.push((&a.agent, class, &a.reason)),
        }
    }
    let of = |want: Class| -> Vec<&str> {
        last.iter()
            .filter(|(_, c, _)| *c == want)
            .map(|(n, ..)| *n)
            .collect()
    };
    let reason_of = |name: &str| {
        last.iter()
            .find(|(n, ..)| *n == name)
            .map_or("", |(_, _, r)| *r)
    };
    let base = |name: &str| crate::config::split_entry(name).0.to_string();
    let mut parts = Vec::new();

    let auth = of(Class::Auth);
    if !auth.is_empty() {
        // In chain order, each agent once.
        let mut names: Vec<String> = Vec::new();
        for n in auth.iter().map(|n| base(n)) {
            if !names.contains(&n) {
                names.push(n);
            }
        }
        let fixes: Vec<String> = names
            .iter()
            .map(|n| {
                let hint = config
                    .agents
                    .get(n)
                    .and_then(|a| a.preset)
                    .map(|p| p.login_hint)
                    .unwrap_or("fix its credentials");
                format!("{n}: {hint}")
            })
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        parts.push(format!(
            "{} {} a login ({}), then `dirigent agents enable {}`",
            and_list(&names),
            if names.len() == 1 { "needs" } else { "need" },
            fixes.join("; "),
            names.join(" ")
        ));
    }
    let missing = of(Class::Spawn);
    if !missing.is_empty() {
        let fixes: Vec<String> = missing
            .iter()
            .map(|entry| {
                let n = base(entry);
                let agent = config.agents.get(&n);
                // The program was there but could not take what it was given.
                if reason_of(entry).contains("(os error 7)") {
                    return format!(
                        "{n}: the prompt is too long for one argument (`prompt: arg`); give it `prompt: stdin` or `prompt: file`"
                    );
                }
                match (agent.and_then(|a| a.preset), agent.and_then(|a| a.command.first())) {
                    (Some(p), _) => format!("{n}: `{}`", p.install_hint),
                    (None, Some(program)) => format!(
                        "{n}: `{program}` is not installed or not on the daemon's PATH; check its `command`"
                    ),
                    (None, None) => format!("{n}: check its `command`"),
                }
            })
            .collect();
        parts.push(format!(
            "{} could not be started ({})",
            and_list(&missing),
            fixes.join("; ")
        ));
    }
    let network = of(Class::Network);
    if !network.is_empty() {
        parts.push(format!(
            "{} could not reach {} provider (offline, a proxy, or the provider is down): check the connection",
            and_list(&network),
            if network.len() == 1 { "its" } else { "their" }
        ));
    }
    let limited = of(Class::RateLimit);
    if !limited.is_empty() {
        parts.push(format!(
            "{} hit a rate or usage limit (`dirigent agents` shows until when)",
            and_list(&limited)
        ));
    }
    let failed_check = of(Class::Verify);
    if !failed_check.is_empty() {
        parts.push(format!(
            "the work of {} did not pass the task's check (`verify`): its output is in the report, under each attempt",
            and_list(&failed_check)
        ));
    }
    let slow = of(Class::Timeout);
    if !slow.is_empty() {
        parts.push(format!(
            "{} ran out of time (the attempt's `timeout`): if the work needs longer, give the task more (`dirigent submit --timeout 30m`, `timeout:` in its file) or split it",
            and_list(&slow)
        ));
    }
    let quiet = of(Class::Idle);
    if !quiet.is_empty() {
        parts.push(format!(
            "{} made no progress for {} `idle_timeout` (no output, or only error events) and {} stopped as hung: if {} silently, raise `idle_timeout` (the agent's, or the task's)",
            and_list(&quiet),
            if quiet.len() == 1 { "its" } else { "their" },
            if quiet.len() == 1 { "was" } else { "were" },
            if quiet.len() == 1 { "it works" } else { "they work" }
        ));
    }
    let unchanged = of(Class::NoChange);
    if !unchanged.is_empty() && unchanged.len() == last.len() {
        parts.push(
            "no agent changed a file: if the task only asks a question, run it in the workspace (`workdir: shared`, or `dirigent submit --workdir shared`)".to_string(),
        );
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// Whether a retry can work as things stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outlook {
    /// Every agent failed for want of a login or an installation: a retry now fails the same way.
    FixFirst,
    /// Some did: fix those, or the retry runs without them.
    FixSome,
    /// Nothing in the way of a retry but the failures themselves.
    Retry,
}

pub fn outlook(attempts: &[AttemptSummary]) -> Outlook {
    let blocked = |a: &AttemptSummary| matches!(a.class, Some(Class::Auth | Class::Spawn));
    if !attempts.is_empty() && attempts.iter().all(blocked) {
        Outlook::FixFirst
    } else if attempts.iter().any(blocked) {
        Outlook::FixSome
    } else {
        Outlook::Retry
    }
}

/// `a`, `a and b`, `a, b and c`: names in a sentence.
pub(crate) fn and_list(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => one.to_string(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(agent: &str, class: Class) -> AttemptSummary {
        AttemptSummary {
            class: Some(class),
            ..AttemptSummary::started(1, agent, 0)
        }
    }

    fn config() -> Config {
        Config::parse(
            "agents:\n  claude: {preset: claude}\n  gemini: {preset: gemini}\n  codex: {preset: codex}\n  local: {command: [x]}\n",
            "t",
        )
        .unwrap()
    }

    /// (each attempt's agent and class, the advice expected).
    type Case<'a> = (&'a [(&'a str, Class)], Option<&'a str>);

    #[test]
    fn a_prompt_too_long_for_an_argument_is_not_called_a_missing_program() {
        let mut too_long = attempt("local", Class::Spawn);
        too_long.reason =
            "dirigent: cannot start `x`: Argument list too long (os error 7)".to_string();
        assert_eq!(
            in_short(&[too_long], &config()).as_deref(),
            Some(
                "local could not be started (local: the prompt is too long for one argument (`prompt: arg`); give it `prompt: stdin` or `prompt: file`)"
            ),
        );
    }

    #[test]
    fn advice_table() {
        use Class::*;
        let cases: &[Case] = &[
            (&[("local", Exit)], None),
            (
                &[("claude", Auth), ("gemini", Auth)],
                Some(
                    "claude and gemini need a login (claude: run `claude`, log in with `/login` (or set `ANTHROPIC_API_KEY`); gemini: run `gemini` and choose a login (or set `GEMINI_API_KEY`)), then `dirigent agents enable claude gemini`",
                ),
            ),
            (
                &[
                    ("codex", Network),
                    ("codex", Network),
                    ("claude:opus", Auth),
                ],
                Some(
                    "claude needs a login (claude: run `claude`, log in with `/login` (or set `ANTHROPIC_API_KEY`)), then `dirigent agents enable claude`; codex could not reach its provider (offline, a proxy, or the provider is down): check the connection",
                ),
            ),
            (&[("codex", Network), ("codex", Exit)], None),
            (
                &[("gemini", Spawn), ("local", Spawn)],
                Some(
                    "gemini and local could not be started (gemini: `npm install -g @google/gemini-cli`; local: `x` is not installed or not on the daemon's PATH; check its `command`)",
                ),
            ),
            (
                &[("claude", RateLimit)],
                Some("claude hit a rate or usage limit (`dirigent agents` shows until when)"),
            ),
            (
                &[("claude", Timeout), ("local", Idle), ("gemini", Idle)],
                Some(
                    "claude ran out of time (the attempt's `timeout`): if the work needs longer, give the task more (`dirigent submit --timeout 30m`, `timeout:` in its file) or split it; local and gemini made no progress for their `idle_timeout` (no output, or only error events) and were stopped as hung: if they work silently, raise `idle_timeout` (the agent's, or the task's)",
                ),
            ),
            (
                &[("local", Idle)],
                Some(
                    "local made no progress for its `idle_timeout` (no output, or only error events) and was stopped as hung: if it works silently, raise `idle_timeout` (the agent's, or the task's)",
                ),
            ),
            (
                &[("local", Verify)],
                Some(
                    "the work of local did not pass the task's check (`verify`): its output is in the report, under each attempt",
                ),
            ),
            // Timed out, then tried again and failed otherwise: judged by its last attempt.
            (&[("local", Timeout), ("local", Exit)], None),
        ];
        let cfg = config();
        for (attempts, want) in cases {
            let list: Vec<AttemptSummary> = attempts.iter().map(|(a, c)| attempt(a, *c)).collect();
            assert_eq!(
                in_short(&list, &cfg).as_deref(),
                *want,
                "attempts {attempts:?}"
            );
        }
    }

    #[test]
    fn retry_is_only_suggested_when_it_can_work() {
        use Class::*;
        let cases: &[(&[Class], Outlook)] = &[
            (&[Auth], Outlook::FixFirst),
            (&[Auth, Spawn], Outlook::FixFirst),
            (&[Network, Auth], Outlook::FixSome),
            (&[Auth, Exit], Outlook::FixSome),
            (&[Network], Outlook::Retry),
            (&[], Outlook::Retry),
        ];
        for (classes, want) in cases {
            let list: Vec<AttemptSummary> = classes.iter().map(|c| attempt("claude", *c)).collect();
            assert_eq!(outlook(&list), *want, "attempts {classes:?}");
        }
    }
}
