//! The config file as written: what serde reads it into, before `Config::parse` checks it and
//! builds the [`Config`](super::Config) the daemon runs with. Unknown keys are refused here
//! (`deny_unknown_fields`), each with the known ones listed.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::agent::RawAgent;
use super::{cluster, notify};
use crate::duration::Dur;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) concurrency: Option<usize>,
    #[serde(default)]
    pub(super) default_chain: Option<Vec<String>>,
    #[serde(default)]
    pub(super) roles: BTreeMap<String, RawRole>,
    #[serde(default)]
    pub(super) agents: BTreeMap<String, RawAgent>,
    #[serde(default)]
    pub(super) on_escalate: Option<Vec<String>>,
    #[serde(default)]
    pub(super) kill_grace: Option<Dur>,
    #[serde(default)]
    pub(super) leak_timeout: Option<Dur>,
    #[serde(default)]
    pub(super) inbox_rescan: Option<Dur>,
    #[serde(default)]
    pub(super) ledger_segment_events: Option<u64>,
    #[serde(default)]
    pub(super) ledger_keep_segments: Option<usize>,
    #[serde(default)]
    pub(super) http: Option<String>,
    #[serde(default)]
    pub(super) providers: BTreeMap<String, RawProvider>,
    #[serde(default)]
    pub(super) prices: BTreeMap<String, crate::usage::Price>,
    #[serde(default)]
    pub(super) budgets: RawBudgets,
    #[serde(default)]
    pub(super) notify: Vec<notify::RawDestination>,
    #[serde(default)]
    pub(super) cluster: Option<cluster::RawCluster>,
    /// Model aliases, resolved before spawning: `{claude-3-5-sonnet: qwen2.5-coder}`.
    #[serde(default)]
    pub(super) models: BTreeMap<String, String>,
    /// Resource groups and their capacity: `{local-gpu: 25}`.
    #[serde(default)]
    pub(super) resources: BTreeMap<String, f64>,
    #[serde(default)]
    pub(super) max_interruptions: Option<u32>,
    #[serde(default)]
    pub(super) max_spawned_tasks: Option<u32>,
    #[serde(default)]
    pub(super) queue_in_memory: Option<String>,
    #[serde(default)]
    pub(super) max_output: Option<String>,
    /// How long a finished task's run directory is kept: a duration, or `forever`.
    #[serde(default)]
    pub(super) keep_runs: Option<String>,
    #[serde(default)]
    pub(super) workdir: Option<crate::workdir::Workdir>,
    #[serde(default)]
    pub(super) verify: Option<crate::editing::VerifyWritten>,
    #[serde(default)]
    pub(super) verify_rounds: Option<u32>,
    #[serde(default)]
    pub(super) expect_changes: Option<bool>,
    #[serde(default)]
    pub(super) merge: Option<crate::editing::MergeMode>,
    #[serde(default)]
    pub(super) merge_into: Option<String>,
    #[serde(default)]
    pub(super) merge_strategy: Option<crate::editing::MergeStrategy>,
    #[serde(default)]
    pub(super) on_conflict: Option<crate::editing::OnConflict>,
    #[serde(default)]
    pub(super) carry_failed_changes: Option<bool>,
    #[serde(default)]
    pub(super) keep_failed: Option<Dur>,
    /// How a new worktree is prepared.
    #[serde(default)]
    pub(super) worktree: RawWorktree,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWorktree {
    #[serde(default)]
    pub(super) copy: Vec<String>,
    #[serde(default)]
    pub(super) link: Vec<String>,
    #[serde(default)]
    pub(super) setup: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBudgets {
    #[serde(default)]
    pub(super) daily: Option<f64>,
    #[serde(default)]
    pub(super) agents: BTreeMap<String, f64>,
    #[serde(default)]
    pub(super) task: Option<f64>,
}

/// A role: its chain, or `{agents: [...], strategy: best}`.
#[derive(Debug)]
pub(super) enum RawRole {
    Chain(Vec<String>),
    Full(RawRoleFull),
}

/// A role written as a map.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoleFull {
    pub(super) agents: Vec<String>,
    #[serde(default)]
    pub(super) strategy: Option<String>,
    /// Where its tasks work, unless the task says.
    #[serde(default)]
    pub(super) workdir: Option<crate::workdir::Workdir>,
    /// Its tasks' check, unless the task gives one.
    #[serde(default)]
    pub(super) verify: Option<crate::editing::VerifyWritten>,
}

// Read by shape (`by_shape`), not `untagged`: a mistake in either form gets that form's own
// error (`missing field `agents``, `unknown field `chain``).
impl<'de> Deserialize<'de> for RawRole {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::by_shape::read(
            d,
            crate::by_shape::Shapes {
                expecting: "a role: a list of agents (`[claude, gemini]`) or a map (`{agents: [claude, gemini], strategy: best}`)",
                word: None,
                list: Some(RawRole::Chain),
                map: Some(RawRole::Full),
            },
        )
    }
}

/// Limits shared by every agent on one provider account.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProvider {
    #[serde(default)]
    pub(super) starts_per_minute: Option<u32>,
}
