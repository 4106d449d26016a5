//! Dispatch: which queued task starts next and on which agent — concurrency, `max_parallel`,
//! stagger, start limits, cooldowns, disabled providers, resources, budgets and `after`
//! dependencies — or why a task waits or escalates.

use super::*;

/// Why a task whose chain is used up escalates: the chain, then what to do when the
/// attempts show a cause with a fix (a login, an installation, the network).
pub(super) fn chain_failed(t: &TaskRecord, config: &Config) -> String {
    let chain = format!(
        "every agent in the chain failed ({})",
        t.chain().join(" → ")
    );
    match crate::advice::in_short(t.attempts(), config) {
        Some(advice) => format!("{chain}: {advice}"),
        None => chain,
    }
}

/// The agent of a chain entry (`claude` of `claude:sonnet`).
pub(super) fn split_entry_base(entry: &str) -> &str {
    crate::config::split_entry(entry).0
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
        let mut total = self.live.running_count();
        for id in self.live.queued() {
            if !admission::below_concurrency(total, &self.config) {
                break;
            }
            let Some(t) = self.book.get(id) else {
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
                    escalations.push((id.to_string(), reason));
                    continue;
                }
            };
            let Some(agent) = self.config.agents.get(split_entry_base(entry)) else {
                continue;
            };
            let base_name = &agent.name;
            // Prune the rate windows' old starts; `room` counts only the last minute anyway.
            let windows = admission::rate_windows(agent, &self.config);
            for (window, _) in &windows {
                let log = self.start_log.entry(window.clone()).or_default();
                while log
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= MINUTE)
                {
                    log.pop_front();
                }
            }
            let slot = self.slots.entry(base_name.clone()).or_default();
            let (running, last_start) = (slot.running, slot.last_start);
            // What the resource groups hold: running attempts, and the starts this round has
            // already decided.
            let held = |group: &str| -> f64 {
                self.live
                    .attempts()
                    .map(|r| &r.resources)
                    .chain(planned.iter())
                    .filter_map(|r| r.get(group))
                    .sum()
            };
            let fleet_starts = self.starts_with_fleet(&windows);
            match admission::room(
                agent,
                &self.config,
                running,
                last_start,
                &held,
                fleet_starts.as_ref().unwrap_or(&self.start_log),
                now,
            ) {
                admission::Room::Now => {}
                admission::Room::At(ready) => {
                    // Only this agent waits; others keep starting.
                    self.stagger_due = Some(self.stagger_due.map_or(ready, |d| d.min(ready)));
                    continue;
                }
                admission::Room::Full => continue,
            }
            for (key, _) in windows {
                self.tell_fleet_started(&key);
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
            starts.push((id.to_string(), run));
        }
        for (id, reason) in escalations {
            self.escalate(&id, reason);
        }
        for (id, agent) in starts {
            self.start_attempt(&id, agent);
        }
    }
}
