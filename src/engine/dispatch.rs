//! Dispatch: which queued task starts next and on which agent — concurrency, `max_parallel`,
//! stagger, start limits, cooldowns, disabled providers, resources, budgets and `after`
//! dependencies — or why a task waits or escalates.

use super::*;

/// Why a task whose chain is used up escalates: the chain, then what to do when the
/// attempts show a cause with a fix (a login, an installation, the network).
pub(super) fn chain_failed(t: &TaskRecord, config: &Config) -> String {
    let chain = format!("every agent in the chain failed ({})", t.chain.join(" → "));
    match crate::advice::in_short(&t.attempts, config) {
        Some(advice) => format!("{chain}: {advice}"),
        None => chain,
    }
}

/// The agent of a chain entry (`claude` of `claude:sonnet`).
pub(super) fn split_entry_base(entry: &str) -> &str {
    crate::config::split_entry(entry).0
}

/// The window of `starts_per_minute`.
const MINUTE: Duration = Duration::from_secs(60);

enum Deps {
    Ready,
    Wait,
    Failed(String),
}

fn deps(book: &TaskBook, t: &TaskRecord) -> Deps {
    for dep in &t.after {
        match book.outcome(dep) {
            Some(Outcome::Done) => {}
            Some(Outcome::Failed) => {
                return Deps::Failed(format!("it runs after `{dep}`, which failed"));
            }
            None => return Deps::Wait,
        }
    }
    Deps::Ready
}

impl Engine {
    /// Starts every queued task that may start now, in queue order.
    pub(super) fn dispatch(&mut self) {
        if !self.accepting || self.not_claiming().is_some() {
            return;
        }
        let now = Instant::now();
        let now_ms = ledger::now_ms();
        self.stagger_due = None;
        let mut starts: Vec<(String, Arc<Agent>)> = Vec::new();
        // Resources taken by the starts decided in this round (not in `running` yet).
        let mut planned: Vec<BTreeMap<String, f64>> = Vec::new();
        let mut escalations: Vec<(String, String)> = Vec::new();
        let mut total = self.running.len();
        for key in &self.queue {
            if total >= self.config.concurrency {
                break;
            }
            let Some(t) = self.book.get(&key.id) else {
                continue;
            };
            match deps(&self.book, t) {
                Deps::Wait => continue,
                Deps::Failed(reason) => {
                    escalations.push((key.id.clone(), reason));
                    continue;
                }
                Deps::Ready => {}
            }
            // A network retry waits out its backoff.
            if let Some(at) = t.not_before_ms
                && at > now_ms
            {
                wake_at(&mut self.stagger_due, now, now_ms, at);
                continue;
            }
            if let Some(reason) = self.over_budget(t, now_ms) {
                escalations.push((key.id.clone(), reason));
                continue;
            }
            let interrupted = t.interruptions_in_a_row();
            if interrupted >= self.config.max_interruptions {
                escalations.push((
                    key.id.clone(),
                    format!(
                        "its attempts were interrupted {interrupted} times in a row: the daemon stopped or crashed while each ran (the last: {}). If the agent itself stops the daemon, that is why; the log names the sender of each stop signal. Raise `max_interruptions` to allow more",
                        t.attempts.last().map(|a| a.reason.as_str()).unwrap_or("")
                    ),
                ));
                continue;
            }
            // The first agent from the chain's position whose provider may be used now.
            let mut chosen = None;
            let mut cooling_until: Option<u64> = None;
            let mut unusable = Vec::new();
            let today = self.book.spend.get(&crate::state::day_of(now_ms));
            for name in t.chain.iter().skip(t.chain_pos) {
                // Limits, providers and budgets are the agent's, whichever model an entry names;
                // the `agent:model` variant is made only for a start.
                let base = split_entry_base(name);
                let Some(agent) = self.config.agents.get(base) else {
                    unusable.push(format!("`{name}` is no longer configured"));
                    continue;
                };
                if let Some(limit) = self.config.budgets.agents.get(base) {
                    let spent = today
                        .and_then(|d| d.by_agent.get(base))
                        .copied()
                        .unwrap_or(0.0);
                    if spent >= *limit {
                        unusable.push(format!(
                            "`{name}` has spent its daily budget ({} of {} today, UTC)",
                            crate::usage::dollars(spent),
                            crate::usage::dollars(*limit)
                        ));
                        continue;
                    }
                }
                match self.book.availability(&agent.provider, now_ms) {
                    Availability::Ready => {
                        chosen = Some((name, agent));
                        break;
                    }
                    Availability::CoolingDown { until_ms, reason } => {
                        cooling_until = Some(cooling_until.map_or(until_ms, |u| u.min(until_ms)));
                        unusable.push(format!(
                            "`{name}` is cooling down until {} ({reason})",
                            crate::duration::clock(until_ms)
                        ));
                    }
                    Availability::Disabled { reason, .. } if reason.contains("agents enable") => {
                        unusable.push(format!(
                            "`{name}` is disabled after an auth failure: {reason}"
                        ))
                    }
                    Availability::Disabled { reason, .. } => unusable.push(format!(
                        "`{name}` is disabled after an auth failure ({reason}); {}, then `dirigent agents enable {base}`",
                        agent.preset.map_or("fix its credentials", |p| p.login_hint)
                    )),
                }
            }
            let Some((entry, agent)) = chosen else {
                if t.chain_pos >= t.chain.len() {
                    let reason = if t.chain.is_empty() {
                        escalate::no_agents_message(&self.config)
                    } else {
                        chain_failed(t, &self.config)
                    };
                    escalations.push((key.id.clone(), reason));
                } else if let Some(until) = cooling_until {
                    // Nothing else can take it: wait for the first provider to come back.
                    wake_at(&mut self.stagger_due, now, now_ms, until);
                } else {
                    escalations.push((
                        key.id.clone(),
                        format!(
                            "no agent left in the chain can run: {}",
                            unusable.join("; ")
                        ),
                    ));
                }
                continue;
            };
            let base_name = &agent.name;
            let slot = self.slots.entry(base_name.clone()).or_default();
            if agent.max_parallel.is_some_and(|max| slot.running >= max) {
                continue;
            }
            if let Some(last) = slot.last_start
                && !agent.stagger.is_zero()
                && now < last + agent.stagger
            {
                // Only this agent waits; others keep starting.
                let ready = last + agent.stagger;
                self.stagger_due = Some(self.stagger_due.map_or(ready, |d| d.min(ready)));
                continue;
            }
            // Resource groups: what runs plus what this one takes must fit each group, also
            // counting what this round has already decided to start.
            let fits = agent.resources.iter().all(|(group, amount)| {
                let capacity = self.config.resources.get(group).copied().unwrap_or(0.0);
                let held: f64 = self
                    .running
                    .values()
                    .map(|r| &r.resources)
                    .chain(planned.iter())
                    .filter_map(|r| r.get(group))
                    .sum();
                held + amount <= capacity + 1e-9
            });
            if !fits {
                continue;
            }
            // Start-rate limits: the agent's own, and its provider's (shared by its agents).
            let provider_limit = self
                .config
                .providers
                .get(&agent.provider)
                .and_then(|p| p.starts_per_minute);
            let windows: Vec<(String, u32)> = [
                agent
                    .starts_per_minute
                    .map(|l| (format!("agent:{base_name}"), l)),
                provider_limit.map(|l| (format!("provider:{}", agent.provider), l)),
            ]
            .into_iter()
            .flatten()
            .collect();
            let mut limited = false;
            for (key, limit) in &windows {
                let log = self.start_log.entry(key.clone()).or_default();
                while log
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= MINUTE)
                {
                    log.pop_front();
                }
                if log.len() >= *limit as usize {
                    let ready = *log.front().expect("non-empty at the limit") + MINUTE;
                    self.stagger_due = Some(self.stagger_due.map_or(ready, |d| d.min(ready)));
                    limited = true;
                }
            }
            if limited {
                continue;
            }
            for (key, _) in windows {
                self.start_log.entry(key).or_default().push_back(now);
            }
            let slot = self.slots.entry(base_name.clone()).or_default();
            slot.running += 1;
            slot.last_start = Some(now);
            total += 1;
            planned.push(agent.resources.clone());
            let run = self
                .config
                .agent_for(entry)
                .expect("the entry's agent was just found");
            starts.push((key.id.clone(), run));
        }
        for (id, reason) in escalations {
            self.escalate(&id, reason);
        }
        for (id, agent) in starts {
            self.start_attempt(&id, agent);
        }
    }

    /// Why `t` may not start another attempt because of a budget: its own (a workflow run's
    /// covers its tasks), or the day's for all agents. The text has the figures.
    fn over_budget(&self, t: &TaskRecord, now_ms: u64) -> Option<String> {
        use crate::usage::dollars;
        if let Some(daily) = self.config.budgets.daily {
            let spent = self
                .book
                .spend
                .get(&crate::state::day_of(now_ms))
                .map_or(0.0, |d| d.total_usd);
            if spent >= daily {
                return Some(format!(
                    "the daily budget is spent: {} of {} today (UTC); raise `budgets.daily` or retry tomorrow",
                    dollars(spent),
                    dollars(daily)
                ));
            }
        }
        // The workflow run this task belongs to, if any: its budget covers all its tasks.
        let run =
            t.id.match_indices('.')
                .map(|(i, _)| &t.id[..i])
                .find_map(|prefix| {
                    self.book
                        .get(prefix)
                        .filter(|r| r.spec.as_ref().is_some_and(|s| s.fields.workflow.is_some()))
                });
        let owner = run.unwrap_or(t);
        let budget = owner.budget_usd;
        let budget = budget.or(self.config.budgets.task)?;
        let spent = if owner
            .spec
            .as_ref()
            .is_some_and(|s| s.fields.workflow.is_some())
        {
            owner.cost_usd
                + self
                    .book
                    .iter()
                    .filter(|c| is_child_of(&c.id, &owner.id))
                    .map(|c| c.cost_usd)
                    .sum::<f64>()
        } else {
            owner.cost_usd
        };
        (spent >= budget).then(|| {
            format!(
                "the budget is spent: `{}` has cost {} of its {} over {} attempt(s); raise `budget_usd` and `dirigent retry {}`",
                owner.id,
                dollars(spent),
                dollars(budget),
                owner.attempts.len(),
                t.id
            )
        })
    }
}
