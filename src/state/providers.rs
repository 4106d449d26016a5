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
