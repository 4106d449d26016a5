//! The control socket: how the CLI (and later the other doors) asks the running daemon to act —
//! `cancel`, `retry`. A Unix socket at `.context/daemon.sock` (or in `$XDG_RUNTIME_DIR` when that
//! path is too long for a socket), mode 0600; every connection's peer uid is checked and other
//! users are refused. The protocol is one JSON object per line each way.
//!
//! The server only translates: each line becomes a call on [`crate::api::Api`], the core every
//! door shares; requests that touch state reach the engine as a [`ControlRequest`] on a channel
//! whose receiver the engine owns, and its answer comes back on a oneshot. The MCP server
//! (`dirigent mcp`) is a client of this socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use crate::task::TaskFields;
use crate::workspace::Workspace;

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

/// Where the socket of `ws` lives: `.context/daemon.sock`, unless that path is too long for a
/// Unix socket (108 bytes with the terminating NUL); then a name derived from the workspace path
/// in `$XDG_RUNTIME_DIR` (or the temp directory).
pub fn socket_path(ws: &Workspace) -> PathBuf {
    let local = ws.context().join("daemon.sock");
    if local.as_os_str().len() < 100 {
        return local;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in ws.root().as_os_str().as_encoded_bytes() {
        hash = (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    dir.join(format!("dirigent-{hash:016x}.sock"))
}

/// Binds the socket (replacing a stale one: the workspace lock proves no other daemon uses it),
/// mode 0600, and serves connections until the returned task is aborted. Each line read is a
/// request for `api`; connections are served concurrently, requests on one connection in order.
pub fn serve(ws: &Workspace, api: crate::api::Api) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let path = socket_path(ws);
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let me = nix::unistd::geteuid().as_raw();
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let allowed = stream.peer_cred().is_ok_and(|c| c.uid() == me);
            let api = api.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                if !allowed {
                    let refusal =
                        Response::error("refused: the daemon serves only the user it runs as");
                    let _ = write
                        .write_all(
                            format!("{}\n", serde_json::to_string(&refusal).unwrap_or_default())
                                .as_bytes(),
                        )
                        .await;
                    return;
                }
                let mut lines = tokio::io::BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let answer = match serde_json::from_str::<Request>(&line) {
                        Ok(request) => api.call(request).await,
                        Err(e) => Response::error(format!("not a request: {e}")),
                    };
                    let mut text = serde_json::to_string(&answer).unwrap_or_default();
                    text.push('\n');
                    if write.write_all(text.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    }))
}

/// Sends one request to the daemon of `ws` and waits for the answer (for the CLI).
pub fn request(ws: &Workspace, req: &Request) -> Result<Response, String> {
    let mut stream =
        std::os::unix::net::UnixStream::connect(socket_path(ws)).map_err(|e| not_running(ws, e))?;
    // A refused client is told why and hung up on, possibly before it has written: read the
    // answer even when the write failed.
    let written = stream.write_all(encode(req)?.as_bytes());
    let mut answer = String::new();
    let read = BufReader::new(stream).read_line(&mut answer);
    decode(written, read, answer)
}

/// [`request`] for async callers (the MCP server): one connection per request, so a long
/// `wait` never holds up another call.
pub async fn request_async(ws: &Workspace, req: &Request) -> Result<Response, String> {
    let stream = tokio::net::UnixStream::connect(socket_path(ws))
        .await
        .map_err(|e| not_running(ws, e))?;
    let (read, mut write) = stream.into_split();
    let written = write.write_all(encode(req)?.as_bytes()).await;
    let mut answer = String::new();
    let read = tokio::io::BufReader::new(read).read_line(&mut answer).await;
    decode(written, read, answer)
}

fn not_running(ws: &Workspace, e: std::io::Error) -> String {
    format!(
        "no daemon is running on `{}` ({e}); start it with `dirigent daemon`",
        ws.root().display()
    )
}

/// One request line.
fn encode(req: &Request) -> Result<String, String> {
    let mut line = serde_json::to_string(req).map_err(|e| e.to_string())?;
    line.push('\n');
    Ok(line)
}

/// The answer line, or why there is none.
fn decode(
    written: std::io::Result<()>,
    read: std::io::Result<usize>,
    answer: String,
) -> Result<Response, String> {
    if answer.is_empty() {
        return Err(match (written, read) {
            (Err(e), _) => format!("cannot talk to the daemon: {e}"),
            (_, Err(e)) => format!("cannot read the daemon's answer: {e}"),
            _ => "the daemon closed the connection without an answer".to_string(),
        });
    }
    serde_json::from_str(&answer)
        .map_err(|e| format!("the daemon's answer is not understood ({e}): {answer}"))
}
