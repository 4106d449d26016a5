//! Admission: what dispatch decides for one queued task, as a pure function of the task, the
//! book, the config and the time — no I/O, no engine state — so each rule is a row of a case
//! table. It answers which chain entry may run the task now (`after` dependencies, a network
//! retry's backoff, budgets, crash loops, per-agent budgets, cooldowns and disabled providers),
//! or until when it waits, or why it escalates. The agent's capacity right now (`max_parallel`,
//! `stagger`, start rates, resource groups) is the engine's running state and is checked by
//! dispatch after this says "start".

use super::*;

/// The window of `starts_per_minute`.
pub(super) const MINUTE: Duration = Duration::from_secs(60);

/// The decision for one queued task.
#[derive(Debug, PartialEq)]
pub(super) enum Admission<'a> {
    /// Run it on this chain entry (an agent, or `agent:model`) if the agent has room.
    Start { entry: &'a str },
    /// Not before this time (Unix ms): a backoff or a cooldown ends then.
    WaitUntil(u64),
    /// Not now, and no time is known: a task it runs after is not done yet.
    Later,
    /// It cannot run: escalate with this reason.
    Escalate(String),
}

/// Decides for `t` at `now_ms`.
pub(super) fn admit<'a>(
    t: &'a TaskRecord,
    book: &TaskBook,
    config: &Config,
    now_ms: u64,
) -> Admission<'a> {
    for dep in &t.more().after {
        match book.outcome(dep) {
            Some(Outcome::Done) => {}
            Some(Outcome::Failed) => {
                // Cancelled is a way of failing; said as the user saw it when still known.
                let how = match book.get(dep).map(|d| d.phase().shown()) {
                    Some("cancelled") => "was cancelled",
                    _ => "failed",
                };
                return Admission::Escalate(format!("it runs after `{dep}`, which {how}"));
            }
            None => return Admission::Later,
        }
    }
    // A network retry waits out its backoff.
    if let Some(at) = t.more().not_before_ms
        && at > now_ms
    {
        return Admission::WaitUntil(at);
    }
    if let Some(reason) = over_budget(t, book, config, now_ms) {
        return Admission::Escalate(reason);
    }
    let interrupted = t.interruptions_in_a_row();
    if interrupted >= config.max_interruptions {
        return Admission::Escalate(format!(
            "its attempts were interrupted {interrupted} times in a row: the daemon stopped or crashed while each ran (the last: {}). If the agent itself stops the daemon, that is why; the log names the sender of each stop signal. Raise `max_interruptions` to allow more",
            t.attempts().last().map(|a| a.reason.as_str()).unwrap_or("")
        ));
    }
    // The first agent from the chain's position whose provider may be used now.
    let mut cooling_until: Option<u64> = None;
    let mut unusable = Vec::new();
    let today = book.spent_on(crate::state::day_of(now_ms));
    for name in t.chain().iter().skip(t.chain_pos()) {
        // Limits, providers and budgets are the agent's, whichever model an entry names.
        let base = split_entry_base(name);
        let Some(agent) = config.agents.get(base) else {
            unusable.push(format!("`{name}` is no longer configured"));
            continue;
        };
        if let Some(limit) = config.budgets.agents.get(base) {
            let spent = today.by_agent.get(base).copied().unwrap_or(0.0);
            if spent >= *limit {
                unusable.push(format!(
                    "`{name}` has spent its daily budget ({} of {} today, UTC)",
                    crate::usage::dollars(spent),
                    crate::usage::dollars(*limit)
                ));
                continue;
            }
        }
        match book.availability(&agent.provider, now_ms) {
            Availability::Ready => return Admission::Start { entry: name },
            Availability::CoolingDown { until_ms, reason } => {
                cooling_until = Some(cooling_until.map_or(until_ms, |u| u.min(until_ms)));
                unusable.push(format!(
                    "`{name}` is cooling down until {} ({reason})",
                    crate::duration::clock(until_ms)
                ));
            }
            Availability::Disabled { reason, .. } if reason.contains("agents enable") => unusable
                .push(format!(
                    "`{name}` is disabled after an auth failure: {reason}"
                )),
            Availability::Disabled { reason, .. } => unusable.push(format!(
                "`{name}` is disabled after an auth failure ({reason}); {}, then `dirigent agents enable {base}`",
                agent.preset.map_or("fix its credentials", |p| p.login_hint)
            )),
        }
    }
    if t.chain_pos() >= t.chain().len() {
        Admission::Escalate(if t.chain().is_empty() {
            escalate::no_agents_message(config, t.id())
        } else {
            chain_failed(t, config)
        })
    } else if let Some(until) = cooling_until {
        // Nothing else can take it: wait for the first provider to come back.
        Admission::WaitUntil(until)
    } else {
        Admission::Escalate(format!(
            "no agent left in the chain can run: {}",
            unusable.join("; ")
        ))
    }
}

/// Why `t` may not start another attempt because of a budget: its own (a workflow run's covers
/// its tasks), or the day's for all agents. The text has the figures.
fn over_budget(t: &TaskRecord, book: &TaskBook, config: &Config, now_ms: u64) -> Option<String> {
    use crate::usage::dollars;
    if let Some(daily) = config.budgets.daily {
        let spent = book.spent_on(crate::state::day_of(now_ms)).total_usd;
        if spent >= daily {
            return Some(format!(
                "the daily budget is spent: {} of {} today (UTC); raise `budgets.daily` or retry tomorrow",
                dollars(spent),
                dollars(daily)
            ));
        }
    }
    // A workflow run's budget covers all its tasks.
    let s = book.spending_of(t);
    let budget = s.budget_usd.or(config.budgets.task)?;
    (s.spent_usd >= budget).then(|| {
        format!(
            "the budget is spent: `{}` has cost {} of its {} over {} attempt(s); raise `budget_usd` and `dirigent retry {}`",
            s.owner,
            dollars(s.spent_usd),
            dollars(budget),
            s.attempts,
            s.owner
        )
    })
}

/// Whether an agent has room for one more attempt now — the engine's momentary state, passed
/// in: its running attempts and last start, what the resource groups hold (running attempts
/// plus the starts already decided this round), and the start times within the last minute
/// by rate window (`agent:NAME`, `provider:NAME`).
#[derive(Debug, PartialEq)]
pub(super) enum Room {
    Now,
    /// Not before then: a stagger or a start-rate window frees up.
    At(Instant),
    /// Not until an attempt ends (`max_parallel`, a resource group).
    Full,
}

/// The agent's start-rate windows: its own `starts_per_minute` and its provider's.
pub(super) fn rate_windows(agent: &Agent, config: &Config) -> Vec<(String, u32)> {
    let provider_limit = config
        .providers
        .get(&agent.provider)
        .and_then(|p| p.starts_per_minute);
    [
        agent
            .starts_per_minute
            .map(|l| (format!("agent:{}", agent.name), l)),
        provider_limit.map(|l| (format!("provider:{}", agent.provider), l)),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Whether one more attempt of any agent may start while `all_running` run (`concurrency`).
pub(super) fn below_concurrency(all_running: usize, config: &Config) -> bool {
    all_running < config.concurrency
}

/// Decides whether `agent` may start one more attempt at `now`.
pub(super) fn room(
    agent: &Agent,
    config: &Config,
    running: usize,
    last_start: Option<Instant>,
    held: &dyn Fn(&str) -> f64,
    recent_starts: &HashMap<String, std::collections::VecDeque<Instant>>,
    now: Instant,
) -> Room {
    if agent.max_parallel.is_some_and(|max| running >= max) {
        return Room::Full;
    }
    if let Some(last) = last_start
        && !agent.stagger.is_zero()
        && now < last + agent.stagger
    {
        return Room::At(last + agent.stagger);
    }
    let fits = agent.resources.iter().all(|(group, amount)| {
        let capacity = config.resources.get(group).copied().unwrap_or(0.0);
        held(group) + amount <= capacity + 1e-9
    });
    if !fits {
        return Room::Full;
    }
    let mut ready: Option<Instant> = None;
    for (window, limit) in rate_windows(agent, config) {
        let within: Vec<&Instant> = recent_starts
            .get(&window)
            .into_iter()
            .flatten()
            .filter(|t| now.duration_since(**t) < MINUTE)
            .collect();
        if within.len() >= limit as usize
            && let Some(first) = within.first()
        {
            let at = **first + MINUTE;
            ready = Some(ready.map_or(at, |r| r.min(at)));
        }
    }
    match ready {
        Some(at) => Room::At(at),
        None => Room::Now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Event, Record};
    use crate::state::ProviderState;

    const NOW: u64 = 1_800_000_000_000;

    fn config(extra: &str) -> Config {
        Config::parse(
            &format!(
                "agents:\n  a: {{command: [a]}}\n  b: {{command: [b], provider: pb}}\n{extra}"
            ),
            "t",
        )
        .unwrap()
    }

    /// Records that task `id` was received with `chain` and `after`.
    fn receive(book: &mut TaskBook, id: &str, chain: &[&str], after: &[&str]) {
        let fields = crate::task::TaskFields {
            prompt: Some("p".into()),
            chain: Some(chain.iter().map(|s| s.to_string()).collect()),
            after: after.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let spec = TaskSpec {
            id: id.into(),
            title: id.into(),
            prompt: "p".into(),
            chain: chain.iter().map(|s| s.to_string()).collect(),
            chain_source: "chain".into(),
            fields,
        };
        let seq = book.last_seq + 1;
        book.apply(&Record {
            seq,
            ts: NOW,
            event: Event::Received {
                task: id.into(),
                file: format!("{id}.json"),
                spec: Box::new(spec),
            },
        });
    }

    /// Task `id` finished: done, or escalated.
    fn finish(book: &mut TaskBook, id: &str, done: bool) {
        receive(book, id, &["a"], &[]);
        let event = if done {
            Event::Done {
                task: id.into(),
                agent: "a".into(),
                attempt: 1,
                output: "o".into(),
            }
        } else {
            Event::Escalated {
                task: id.into(),
                reason: "r".into(),
                attempts: 1,
            }
        };
        let seq = book.last_seq + 1;
        book.apply(&Record {
            seq,
            ts: NOW,
            event,
        });
    }

    fn cool(book: &mut TaskBook, provider: &str, until_ms: u64) {
        book.providers.insert(
            provider.into(),
            ProviderState {
                cooling_until_ms: Some(until_ms),
                cooling_reason: "429".into(),
                disabled: None,
            },
        );
    }

    fn spend(book: &mut TaskBook, agent: &str, usd: f64) {
        let day = book.spend.entry(crate::state::day_of(NOW)).or_default();
        day.total_usd += usd;
        *day.by_agent.entry(agent.into()).or_default() += usd;
    }

    #[test]
    fn admission_case_table() {
        type Setup = fn(&mut TaskBook);
        /// (what, chain, after, extra config, book setup, expected decision)
        type Case<'a> = (
            &'a str,
            &'a [&'a str],
            &'a [&'a str],
            &'a str,
            Setup,
            Admission<'a>,
        );
        let none: Setup = |_| {};
        let cases: &[Case] = &[
            ("first agent ready", &["a", "b"], &[], "", none, Admission::Start { entry: "a" }),
            ("agent:model entry", &["a:big"], &[], "", none, Admission::Start { entry: "a:big" }),
            ("after a task not received yet", &["a"], &["dep"], "", none, Admission::Later),
            (
                "after a task still running",
                &["a"],
                &["dep"],
                "",
                |b| receive(b, "dep", &["a"], &[]),
                Admission::Later,
            ),
            (
                "after a task that failed",
                &["a"],
                &["dep"],
                "",
                |b| finish(b, "dep", false),
                Admission::Escalate("it runs after `dep`, which failed".into()),
            ),
            (
                "after a task that was cancelled",
                &["a"],
                &["dep"],
                "",
                |b| {
                    receive(b, "dep", &["a"], &[]);
                    let seq = b.last_seq + 1;
                    b.apply(&Record {
                        seq,
                        ts: NOW,
                        event: Event::Cancelled { task: "dep".into() },
                    });
                },
                Admission::Escalate("it runs after `dep`, which was cancelled".into()),
            ),
            (
                "after a task that is done",
                &["a"],
                &["dep"],
                "",
                |b| finish(b, "dep", true),
                Admission::Start { entry: "a" },
            ),
            (
                "first provider cooling, the next ready",
                &["a", "b"],
                &[],
                "",
                |b| cool(b, "a", NOW + 60_000),
                Admission::Start { entry: "b" },
            ),
            (
                "every provider cooling: wait for the first back",
                &["a", "b"],
                &[],
                "",
                |b| {
                    cool(b, "a", NOW + 60_000);
                    cool(b, "pb", NOW + 30_000);
                },
                Admission::WaitUntil(NOW + 30_000),
            ),
            (
                "a cooldown that is over",
                &["a"],
                &[],
                "",
                |b| cool(b, "a", NOW - 1),
                Admission::Start { entry: "a" },
            ),
            (
                "agent over its daily budget is skipped",
                &["a", "b"],
                &[],
                "budgets: {agents: {a: 1}}\n",
                |b| spend(b, "a", 2.0),
                Admission::Start { entry: "b" },
            ),
            (
                "the day's budget stops every task",
                &["a"],
                &[],
                "budgets: {daily: 5}\n",
                |b| spend(b, "b", 6.0),
                Admission::Escalate("the daily budget is spent: $6.00 of $5.00 today (UTC); raise `budgets.daily` or retry tomorrow".into()),
            ),
            (
                "an agent no longer configured",
                &["gone"],
                &[],
                "",
                none,
                Admission::Escalate(
                    "no agent left in the chain can run: `gone` is no longer configured".into(),
                ),
            ),
            (
                "no agent at all",
                &[],
                &[],
                "",
                none,
                Admission::Escalate(escalate::no_agents_message(&config(""), "t")),
            ),
        ];
        for (what, chain, after, extra, setup, want) in cases {
            let cfg = config(extra);
            let mut book = TaskBook::default();
            setup(&mut book);
            receive(&mut book, "t", chain, after);
            let t = book.get("t").unwrap().clone();
            assert_eq!(&admit(&t, &book, &cfg, NOW), want, "{what}");
        }
    }

    #[test]
    fn a_backoff_a_spent_task_budget_and_a_used_up_chain() {
        let cfg = config("budgets: {task: 1}\n");
        let mut book = TaskBook::default();
        receive(&mut book, "t", &["a"], &[]);
        let mut t = book.get("t").unwrap().clone();
        t.more_mut().not_before_ms = Some(NOW + 5_000);
        assert_eq!(
            admit(&t, &book, &cfg, NOW),
            Admission::WaitUntil(NOW + 5_000),
            "backoff"
        );
        assert_eq!(
            admit(&t, &book, &cfg, NOW + 5_000),
            Admission::Start { entry: "a" },
            "backoff over"
        );
        t.progress_mut().cost_usd = 1.5;
        assert_eq!(
            admit(&t, &book, &cfg, NOW + 5_000),
            Admission::Escalate("the budget is spent: `t` has cost $1.50 of its $1.00 over 0 attempt(s); raise `budget_usd` and `dirigent retry t`".into()),
            "task budget"
        );
        t.progress_mut().cost_usd = 0.0;
        t.progress_mut().chain_pos = 1;
        assert_eq!(
            admit(&t, &book, &cfg, NOW + 5_000),
            Admission::Escalate("every agent in the chain failed (a)".into()),
            "chain used up"
        );
    }

    #[test]
    fn concurrency_case_table() {
        let cfg = Config::parse("concurrency: 2\nagents:\n  a: {command: [a]}\n", "t").unwrap();
        for (running, want) in [(0, true), (1, true), (2, false), (3, false)] {
            assert_eq!(
                below_concurrency(running, &cfg),
                want,
                "expected {running} running under `concurrency: 2` to give {want}"
            );
        }
    }

    #[test]
    fn room_case_table() {
        let cfg = Config::parse(
            "resources: {gpu: 10}\nproviders: {p: {starts_per_minute: 2}}\nagents:\n  a: {command: [a], max_parallel: 2, stagger: 1s, provider: p, resources: {gpu: 6}}\n",
            "t",
        )
        .unwrap();
        let agent = cfg.agents["a"].clone();
        let now = Instant::now() + Duration::from_secs(600);
        let ago = |s: u64| now - Duration::from_secs(s);
        let starts = |times: &[Instant]| -> HashMap<String, std::collections::VecDeque<Instant>> {
            [("provider:p".to_string(), times.iter().copied().collect())].into()
        };
        let free = |_: &str| 0.0;
        let gpu_half = |_: &str| 5.0;
        type Case<'a> = (
            &'a str,
            usize,
            Option<Instant>,
            &'a dyn Fn(&str) -> f64,
            Vec<Instant>,
            Room,
        );
        let cases: Vec<Case> = vec![
            ("idle", 0, None, &free, vec![], Room::Now),
            ("at max_parallel", 2, None, &free, vec![], Room::Full),
            (
                "inside the stagger",
                1,
                Some(ago(0)),
                &free,
                vec![],
                Room::At(now + Duration::from_secs(1)),
            ),
            (
                "after the stagger",
                1,
                Some(ago(2)),
                &free,
                vec![],
                Room::Now,
            ),
            (
                "the resource group is too full",
                0,
                None,
                &gpu_half,
                vec![],
                Room::Full,
            ),
            (
                "one start in the window",
                0,
                None,
                &free,
                vec![ago(10)],
                Room::Now,
            ),
            (
                "the provider's rate is used up",
                0,
                None,
                &free,
                vec![ago(50), ago(10)],
                Room::At(ago(50) + MINUTE),
            ),
            (
                "starts older than a minute do not count",
                0,
                None,
                &free,
                vec![ago(70), ago(10)],
                Room::Now,
            ),
        ];
        for (what, running, last, held, recent, want) in cases {
            let got = room(&agent, &cfg, running, last, held, &starts(&recent), now);
            assert_eq!(got, want, "{what}");
        }
    }
}
