//! What a door asks the engine and what the engine answers: the typed messages the control
//! socket carries as JSON lines and every other door (HTTP, the OpenAI endpoint, MCP, the CLI)
//! sends through [`crate::api::Api`]. Kept apart from the doors and the engine so that neither
//! imports the other.

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::task::TaskFields;

/// What a client asks for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Stop a task: its running attempt's whole process group, or its place in the queue.
    Cancel { id: String },
    /// Run a failed (escalated or cancelled) task again from the top of its chain.
    Retry { id: String },
    /// The daemon's task state (its `TaskBook`, in `data`).
    Status,
    /// One line per task held in full, oldest first (`data`: an array of `{id, title, state,
    /// …}`), only those in `state` when given.
    List {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state: Option<String>,
        /// More filters, and paging; with `limit`, `data` is `{tasks, total}` instead.
        #[serde(default, skip_serializing_if = "ListFilter::is_empty")]
        filter: ListFilter,
    },
    /// One task (`data`: its record; or `{id, state, archived: true}` for an old finished task,
    /// `{id, state: "inbox"}` for a file not taken in yet, `{id, state: "rejected", reason}`).
    Get { id: String },
    /// Check a task with the daemon's rules and write it into the inbox (`data`: `{id, file}`).
    Submit { task: Box<TaskFields> },
    /// Wait until a task has finished, at most `timeout_ms` (`data`: as for `get`; `ok` is false
    /// on timeout).
    Wait {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    /// A done task's result (`data`: `{id, output, text}`).
    Result { id: String },
    /// The agents, roles and default chain (`data`: as `dirigent agents --json`).
    Agents,
    /// Use a disabled or cooling-down agent's provider again.
    Enable { agent: String },
    /// The workflows (`data`: as `dirigent workflow list --json`).
    Workflows,
    /// Merge a task that waits to be merged (`merge_waiting`) into its target, through the
    /// merge queue.
    Merge { id: String },
    /// What an editing task changed against its base (`data`: `{id, branch, base, diff}`,
    /// the diff a stat and a patch, at most 1 MiB).
    Diff { id: String },
    /// The workflow runs, newest first, each with its phases, their tasks and loop rounds
    /// (`data`: an array of [`crate::run_view::RunView`]).
    Runs {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
        /// Only this run.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
    },
    /// Fleet mode: every node's tasks, from the fleet's events stream (`data`: `{nodes: [{node,
    /// tasks}]}`, each node's tasks as `list` gives them).
    FleetStatus,
    /// Throw away a task's branch and worktree: a task waiting to be merged ends cancelled; a
    /// finished one loses its kept branch or tree.
    Discard { id: String },
}

/// What `list` narrows the tasks to, and which page of them it returns (the dashboard's task
/// table). Every filter is optional; all given must hold.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ListFilter {
    /// The agent of the task's latest attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The role the task was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Case-insensitive text in the task's id or title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Newest first (the default is oldest first).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub newest_first: bool,
    /// Tasks to skip (after filtering and ordering).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<usize>,
    /// Tasks to return at most; given, the answer says how many matched in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

impl ListFilter {
    pub fn is_empty(&self) -> bool {
        *self == ListFilter::default()
    }
}

/// The daemon's answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Response {
    pub ok: bool,
    pub message: String,
    /// The payload of requests that return data (`status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    /// What kind of refusal an error is, for doors that have status codes (HTTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
}

/// Kinds of refusal. An error without one is a bad request.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// No such task (or workflow).
    NotFound,
    /// The task is in the wrong state for this (already finished, not failed, id taken).
    Conflict,
    /// The daemon is stopping, or cannot write its ledger.
    Unavailable,
}

impl Response {
    pub fn ok(message: impl Into<String>) -> Self {
        Response {
            ok: true,
            message: message.into(),
            data: None,
            failure: None,
        }
    }
    pub fn data(data: serde_json::Value) -> Self {
        Response {
            ok: true,
            message: String::new(),
            data: Some(data),
            failure: None,
        }
    }
    /// A refusal of a bad request.
    pub fn error(message: impl Into<String>) -> Self {
        Response {
            ok: false,
            message: message.into(),
            data: None,
            failure: None,
        }
    }
    /// A refusal of a given kind.
    pub fn fail(failure: Failure, message: impl Into<String>) -> Self {
        Response {
            failure: Some(failure),
            ..Response::error(message)
        }
    }
}

/// A request on its way to the engine; the engine answers on `reply`.
pub struct ControlRequest {
    pub request: Request,
    /// Held by the connection task, which writes the answer to the client.
    pub reply: oneshot::Sender<Response>,
}
