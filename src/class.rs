//! The outcome class of one attempt — `ok` or why it failed — shared by the judge that decides
//! it, the config that names classes (`fatal_patterns`, `patterns`), the ledger that records it
//! and the stages that act on it. Its own module, so that config and judge do not import each
//! other.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The outcome class of one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    Ok,
    /// Non-zero exit code or death by a signal.
    Exit,
    /// Success exit but no output (or no result in the structured output).
    Empty,
    /// A `success.fail_patterns` pattern (or a preset's generic error pattern) matched.
    Pattern,
    /// The provider could not be reached: DNS, refused or reset connections, stream drops.
    /// The same agent is tried again with backoff before the chain moves on.
    Network,
    /// Exited successfully but printed no valid structured output (cut off, not JSON).
    BadOutput,
    /// The CLI itself reported that its run failed (a structured error that is not auth, rate
    /// limit or network: `is_error`, `turn.failed`, an error event).
    ToolError,
    /// The wall-clock `timeout` ran out.
    Timeout,
    /// No output for `idle_timeout`.
    Idle,
    /// The program could not be started (not installed, not executable).
    Spawn,
    /// Not logged in, bad key, untrusted folder.
    Auth,
    /// 429, quota, usage limit.
    RateLimit,
    /// Stopped by a daemon shutdown; not the agent's fault, the task runs again.
    Interrupted,
    /// Stopped by `dirigent cancel`.
    Cancelled,
    /// The agent said done in its worktree, but the task's `verify` command failed there.
    Verify,
    /// The agent said done in its worktree, but changed nothing (`expect_changes`).
    NoChange,
    /// The task's branch does not merge cleanly onto its target.
    Conflict,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Ok => "ok",
            Class::Exit => "exit",
            Class::Empty => "empty",
            Class::Pattern => "pattern",
            Class::Network => "network",
            Class::BadOutput => "bad_output",
            Class::ToolError => "tool_error",
            Class::Timeout => "timeout",
            Class::Idle => "idle",
            Class::Spawn => "spawn",
            Class::Auth => "auth",
            Class::RateLimit => "rate_limit",
            Class::Interrupted => "interrupted",
            Class::Cancelled => "cancelled",
            Class::Verify => "verify",
            Class::NoChange => "no_change",
            Class::Conflict => "conflict",
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
