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
            let entry = match admission::admit(t, &self.book, &self.config, now_ms) {
                admission::Admission::Start { entry } => entry,
                admission::Admission::WaitUntil(at) => {
                    wake_at(&mut self.stagger_due, now, now_ms, at);
                    continue;
                }
                admission::Admission::Later => continue,
                admission::Admission::Escalate(reason) => {
                    escalations.push((key.id.clone(), reason));
                    continue;
                }
            };
            let Some(agent) = self.config.agents.get(split_entry_base(entry)) else {
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
}
