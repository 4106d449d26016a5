//! What the book knows of providers and spending: rate-limit cool-downs, disabled providers,
//! and each UTC day's spend — read by admission (`availability`) and budgets (`spent_on`).

use super::*;

/// Spending of one UTC day, in US dollars.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct DaySpend {
    pub total_usd: f64,
    pub by_agent: std::collections::BTreeMap<String, f64>,
}

/// Days of spending kept (for `status` and budgets; `dirigent stats` reads the ledger).
pub(super) const SPEND_DAYS: u64 = 40;

/// The UTC day (days since 1970-01-01) of a Unix time in milliseconds.
pub fn day_of(ms: u64) -> u64 {
    ms / 86_400_000
}

/// What the ledger says of a provider.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ProviderState {
    /// Rate-limited until then (Unix ms); over once the time has passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooling_until_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cooling_reason: String,
    /// Auth failed: skipped until `dirigent agents enable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<Disabled>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Disabled {
    pub agent: String,
    pub reason: String,
    pub since_ms: u64,
}

/// Whether a provider can be used at `now_ms`, and if not, why.
#[derive(Clone, Debug, PartialEq)]
pub enum Availability {
    Ready,
    CoolingDown { until_ms: u64, reason: String },
    Disabled { reason: String, since_ms: u64 },
}

impl TaskBook {
    /// What was spent on `day`: here, and elsewhere in the fleet.
    pub fn spent_on(&self, day: u64) -> DaySpend {
        let mut out = self.spend.get(&day).cloned().unwrap_or_default();
        if let Some(other) = self.elsewhere.get(&day) {
            out.total_usd += other.total_usd;
            for (agent, usd) in &other.by_agent {
                *out.by_agent.entry(agent.clone()).or_default() += usd;
            }
        }
        out
    }

    /// Whether the agents of `provider` may run at `now_ms`.
    pub fn availability(&self, provider: &str, now_ms: u64) -> Availability {
        let Some(p) = self.providers.get(provider) else {
            return Availability::Ready;
        };
        if let Some(d) = &p.disabled {
            return Availability::Disabled {
                reason: d.reason.clone(),
                since_ms: d.since_ms,
            };
        }
        match p.cooling_until_ms {
            Some(until) if until > now_ms => Availability::CoolingDown {
                until_ms: until,
                reason: p.cooling_reason.clone(),
            },
            _ => Availability::Ready,
        }
    }
}

/// What counts against the budget that covers a task: its workflow run's when it belongs to
/// one (the run's budget covers all its tasks), else its own.
#[derive(Debug, Clone, PartialEq)]
pub struct Spending {
    /// The task whose budget it is: the run, or the task itself.
    pub owner: String,
    /// What the owner and (for a run) all its tasks have cost, in US dollars.
    pub spent_usd: f64,
    /// Attempts made on it (for a run, by its tasks).
    pub attempts: usize,
    /// The owner's own `budget_usd` (the config's `budgets.task` applies without one).
    pub budget_usd: Option<f64>,
}

impl TaskBook {
    /// [`Spending`] for task `t`: what admission checks before an attempt, and what `status`
    /// shows.
    pub fn spending_of(&self, t: &TaskRecord) -> Spending {
        let run = t
            .id()
            .match_indices('.')
            .map(|(i, _)| &t.id()[..i])
            .find_map(|prefix| self.get(prefix).filter(|r| crate::run_view::is_run(r)));
        let owner = run.unwrap_or(t);
        let children: Vec<&TaskRecord> = if run.is_some() || crate::run_view::is_run(t) {
            self.iter()
                .filter(|c| crate::runner::is_child_of(c.id(), owner.id()))
                .collect()
        } else {
            Vec::new()
        };
        Spending {
            owner: owner.id().to_string(),
            spent_usd: owner.cost_usd() + children.iter().map(|c| c.cost_usd()).sum::<f64>(),
            attempts: owner.attempts().len()
                + children.iter().map(|c| c.attempts().len()).sum::<usize>(),
            budget_usd: owner.more().budget_usd,
        }
    }
}
