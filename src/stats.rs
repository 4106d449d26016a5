//! Scorecards: what the ledger says about each agent (or role, or model) over a period — the
//! data to compare the tools by. A pure fold over records, so `dirigent stats` and the
//! tests compute the same figures from the same ledger.
//!
//! Definitions (also in docs/stats.md):
//! - an **attempt** counts unless it was `interrupted` (a daemon stop) or `cancelled`;
//! - **success rate** = `ok` attempts / attempts;
//! - **tasks** = distinct tasks the group attempted; a **fallback** is a task the group failed
//!   on that then went on to a different agent; **fallback rate** = fallbacks / tasks;
//! - **median** and **p95** are nearest-rank percentiles of the attempts' durations;
//! - **cost per success** = the group's total cost / its `ok` attempts.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::judge::Class;
use crate::ledger::{Event, Record};

/// What to group by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum By {
    Agent,
    /// The task's chain source: `role:NAME`, `default`, `agent` or `chain`.
    Role,
    /// The model the CLI reported, else the agent's configured one, else `-`.
    Model,
    /// The fleet node whose ledger has the attempt (`stats --fleet`); `-` on one machine.
    Worker,
}

/// One row of the scorecard.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Row {
    pub key: String,
    pub attempts: u64,
    pub ok: u64,
    pub success_rate: f64,
    pub tasks: u64,
    pub fallbacks: u64,
    pub fallback_rate: f64,
    /// Failure classes and how often each happened.
    pub classes: BTreeMap<String, u64>,
    pub median_ms: u64,
    pub p95_ms: u64,
    pub cost_usd: f64,
    /// `None` when nothing succeeded.
    pub cost_per_success_usd: Option<f64>,
}

#[derive(Default)]
struct Acc {
    attempts: u64,
    ok: u64,
    classes: BTreeMap<String, u64>,
    durations: Vec<u64>,
    cost: f64,
    tasks: std::collections::HashSet<String>,
    fallbacks: std::collections::HashSet<String>,
}

/// Nearest-rank percentile `q` (0–1) of sorted values.
fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A scorecard being built, record by record (so a long ledger is streamed, not loaded).
pub struct Scorecard<'m> {
    since_ms: u64,
    by: By,
    agent_models: &'m HashMap<String, String>,
    sources: HashMap<String, String>,
    /// Per task: the group key and agent of its last counted failure, waiting to see whether
    /// the task moves on to another agent.
    failed_last: HashMap<String, (String, String)>,
    acc: BTreeMap<String, Acc>,
    /// Per UTC day (`YYYY-MM-DD`): attempts, successes, cost and failure classes.
    days: BTreeMap<String, Day>,
}

/// One UTC day of the scorecard's period: the dashboard's charts over time.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Day {
    pub day: String,
    pub attempts: u64,
    pub ok: u64,
    pub cost_usd: f64,
    pub classes: BTreeMap<String, u64>,
}

/// A scorecard over every ledger file still kept.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub since_ms: u64,
    pub by: &'static str,
    /// The first sequence number still kept: above 1, older history was compacted away.
    pub history_from_seq: Option<u64>,
    pub rows: Vec<Row>,
    pub days: Vec<Day>,
}

/// Reads every ledger file still kept (the rotated segments, then the live ledger), oldest
/// first, into a scorecard of the attempts finished since `since_ms`.
pub fn over_ledger(
    ws: &crate::workspace::Workspace,
    since_ms: u64,
    by: By,
    agent_models: &HashMap<String, String>,
) -> std::io::Result<Report> {
    let mut card = Scorecard::new(since_ms, by, agent_models);
    let mut files: Vec<std::path::PathBuf> = crate::ledger::segments(ws.context())?
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    files.push(ws.ledger());
    let mut first_seq = None;
    // Only records dirigent sealed: a line an agent appended (a forged cost, say) is not counted.
    let key = crate::integrity::load(ws).ok().flatten();
    let mut checker = crate::integrity::Checker::new(key);
    for f in &files {
        crate::ledger::read_each_checked(f, &mut checker, |r| {
            first_seq.get_or_insert(r.seq);
            card.add(&r);
        })
        .map_err(|e| std::io::Error::other(format!("cannot read `{}`: {e}", f.display())))?;
    }
    let (rows, days) = card.finish();
    Ok(Report {
        since_ms,
        by: by.name(),
        history_from_seq: first_seq,
        rows,
        days,
    })
}

impl By {
    pub fn name(self) -> &'static str {
        match self {
            By::Agent => "agent",
            By::Role => "role",
            By::Model => "model",
            By::Worker => "worker",
        }
    }
}

impl<'m> Scorecard<'m> {
    /// Counts the attempts that finish at or after `since_ms`, grouped `by`. `agent_models`
    /// gives each agent's configured model, for `By::Model`.
    pub fn new(since_ms: u64, by: By, agent_models: &'m HashMap<String, String>) -> Self {
        Scorecard {
            since_ms,
            by,
            agent_models,
            sources: HashMap::new(),
            failed_last: HashMap::new(),
            acc: BTreeMap::new(),
            days: BTreeMap::new(),
        }
    }

    pub fn add(&mut self, r: &Record) {
        self.add_on(None, r)
    }

    /// [`Scorecard::add`] for a record of fleet node `node` (`stats --fleet`): its tasks are
    /// told apart from other nodes' of the same id.
    pub fn add_on(&mut self, node: Option<&str>, r: &Record) {
        let named = |task: &String| match node {
            Some(n) => format!("{n}/{task}"),
            None => task.clone(),
        };
        match &r.event {
            Event::Received { task, spec, .. } => {
                self.sources.insert(named(task), spec.chain_source.clone());
            }
            Event::AttemptStarted { task, agent, .. } if r.ts >= self.since_ms => {
                let task = &named(task);
                // A different agent after a failure: that failure was a fallback.
                if let Some((key, failed_agent)) = self.failed_last.remove(task)
                    && failed_agent != *agent
                    && let Some(a) = self.acc.get_mut(&key)
                {
                    a.fallbacks.insert(task.clone());
                }
            }
            Event::AttemptFinished {
                task,
                agent,
                class,
                duration_ms,
                usage,
                ..
            } if r.ts >= self.since_ms => {
                if matches!(class, Class::Interrupted | Class::Cancelled) {
                    return;
                }
                let task = &named(task);
                let key = match self.by {
                    By::Worker => node.unwrap_or("-").to_string(),
                    By::Agent => agent.clone(),
                    By::Role => role_label(self.sources.get(task).map(String::as_str)),
                    By::Model => usage
                        .as_ref()
                        .and_then(|u| u.model.clone())
                        .or_else(|| self.agent_models.get(agent).cloned())
                        // An `agent:model` entry names its model itself.
                        .or_else(|| agent.split_once(':').map(|(_, m)| m.to_string()))
                        .unwrap_or_else(|| "-".to_string()),
                };
                let a = self.acc.entry(key.clone()).or_default();
                a.attempts += 1;
                a.durations.push(*duration_ms);
                a.tasks.insert(task.clone());
                let cost = usage.as_ref().and_then(|u| u.cost_usd).unwrap_or(0.0);
                a.cost += cost;
                let day_name = crate::duration::clock(r.ts)[..10].to_string();
                let day = self.days.entry(day_name.clone()).or_insert_with(|| Day {
                    day: day_name,
                    ..Day::default()
                });
                day.attempts += 1;
                day.cost_usd += cost;
                if *class == Class::Ok {
                    day.ok += 1;
                } else {
                    *day.classes.entry(class.as_str().to_string()).or_default() += 1;
                }
                if *class == Class::Ok {
                    a.ok += 1;
                    self.failed_last.remove(task);
                } else {
                    *a.classes.entry(class.as_str().to_string()).or_default() += 1;
                    self.failed_last.insert(task.clone(), (key, agent.clone()));
                }
            }
            _ => {}
        }
    }

    /// The rows, ordered by key.
    pub fn rows(self) -> Vec<Row> {
        self.finish().0
    }

    /// The rows, ordered by key, and the days, oldest first.
    pub fn finish(self) -> (Vec<Row>, Vec<Day>) {
        let days = self.days.into_values().collect();
        let rows = self
            .acc
            .into_iter()
            .map(|(key, mut a)| {
                a.durations.sort_unstable();
                let ratio = |n: u64, d: u64| if d == 0 { 0.0 } else { n as f64 / d as f64 };
                Row {
                    key,
                    attempts: a.attempts,
                    ok: a.ok,
                    success_rate: ratio(a.ok, a.attempts),
                    tasks: a.tasks.len() as u64,
                    fallbacks: a.fallbacks.len() as u64,
                    fallback_rate: ratio(a.fallbacks.len() as u64, a.tasks.len() as u64),
                    classes: a.classes,
                    median_ms: percentile(&a.durations, 0.5),
                    p95_ms: percentile(&a.durations, 0.95),
                    cost_usd: a.cost,
                    cost_per_success_usd: (a.ok > 0).then(|| a.cost / a.ok as f64),
                }
            })
            .collect();
        (rows, days)
    }
}

/// A row label of `stats --by role`: the role's name, or in parentheses how a task without
/// a role chose its agents.
fn role_label(chain_source: Option<&str>) -> String {
    match chain_source {
        Some(s) if s.starts_with("role:") => s["role:".len()..].to_string(),
        Some("default") => "(default chain)".to_string(),
        Some("agent") => "(one agent)".to_string(),
        Some("chain") => "(own chain)".to_string(),
        Some(other) => format!("({other})"),
        None => "(unknown)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=20).collect();
        assert_eq!(percentile(&v, 0.5), 10);
        assert_eq!(percentile(&v, 0.95), 19);
        assert_eq!(percentile(&[7], 0.95), 7);
        assert_eq!(percentile(&[], 0.5), 0);
    }
}
