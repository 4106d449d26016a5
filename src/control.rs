//! The control socket: how the CLI (and later the other doors) asks the running daemon to act —
//! `cancel`, `retry`. A Unix socket at `.context/daemon.sock` (or in `$XDG_RUNTIME_DIR` when that
//! path is too long for a socket), mode 0600; every connection's peer uid is checked and other
//! users are refused. The protocol is one JSON object per line each way.
//!
//! The server only translates: each line becomes a call on [`crate::api::Api`], the core every
//! door shares; requests that touch state reach the engine as a [`ControlRequest`] on a channel
//! whose receiver the engine owns, and its answer comes back on a oneshot. The messages are
//! [`crate::protocol`]'s. The MCP server
//! (`dirigent mcp`) is a client of this socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

pub use crate::protocol::{ControlRequest, Failure, Request, Response};
use crate::workspace::Workspace;

/// Where the socket of `ws` lives: `.context/daemon.sock`, unless that path is too long for a
/// Unix socket (108 bytes with the terminating NUL); then a name derived from the workspace path
/// in a directory only this user may use ([`private_runtime_dir`]).
pub fn socket_path(ws: &Workspace) -> PathBuf {
    let local = ws.context().join("daemon.sock");
    if local.as_os_str().len() < 100 {
        return local;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in ws.root().as_os_str().as_encoded_bytes() {
        hash = (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    runtime_dir().join(format!("dirigent-{hash:016x}.sock"))
}

/// `$XDG_RUNTIME_DIR/dirigent`, else `/tmp/dirigent-<uid>`: never a name another user could
/// take first in a directory everyone can write to.
fn runtime_dir() -> PathBuf {
    let uid = nix::unistd::geteuid().as_raw();
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d).join("dirigent"),
        None => std::env::temp_dir().join(format!("dirigent-{uid}")),
    }
}

/// Makes (mode 0700) or checks the directory of a socket outside the workspace: it must be a
/// real directory, owned by this user, that nobody else may enter. Anything else is refused,
/// with what to do about it.
pub fn private_runtime_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    use crate::fsutil::Untrusted;
    let meta = std::fs::symlink_metadata(dir)?;
    let me = nix::unistd::geteuid().as_raw();
    let problem = crate::fsutil::untrusted_dir(&meta, me, 0o077).map(|p| match p {
        Untrusted::NotADirectory => "is not a directory".to_string(),
        Untrusted::Owner(uid) => format!(
            "belongs to uid {uid}, not to you (uid {me}): another user may have made it to catch your requests"
        ),
        Untrusted::OpenTo(mode) => format!("can be used by other users (mode {mode:o})"),
    });
    match problem {
        None => Ok(()),
        Some(p) => Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "`{}` {p}; remove it, or set XDG_RUNTIME_DIR to a directory only you can use",
                dir.display()
            ),
        )),
    }
}

/// The longest request line read; a longer one is refused and the connection closed.
pub const MAX_LINE: usize = 8 * 1024 * 1024;

/// Connections served at once as long as their clients like.
const MAX_CONNECTIONS: usize = 64;

/// Connections served past [`MAX_CONNECTIONS`], each for one request within [`BRIEF`]: whoever
/// holds the 64 (an agent can open them) cannot keep `dirigent cancel` from being heard. Past
/// these too, a client is told the daemon is busy at once rather than left waiting.
const OVERFLOW_CONNECTIONS: usize = 16;

/// How long a connection may stay silent before a request line is complete.
const IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// How long an overflow connection has to send its one request.
const BRIEF: std::time::Duration = std::time::Duration::from_secs(2);

/// Binds the socket (replacing a stale one: the workspace lock proves no other daemon uses it),
/// mode 0600, and serves connections until the returned task is aborted. Each line read is a
/// request for `api`; connections are served concurrently (at most 64 at once), requests on one
/// connection in order.
pub fn serve(ws: &Workspace, api: crate::api::Api) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let path = socket_path(ws);
    if let Some(dir) = path.parent()
        && !dir.starts_with(ws.context())
    {
        private_runtime_dir(dir)?;
    }
    let (mut listener, mut bound) = bind_socket(&path)?;
    let me = nix::unistd::geteuid().as_raw();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let overflow = std::sync::Arc::new(tokio::sync::Semaphore::new(OVERFLOW_CONNECTIONS));
    Ok(tokio::spawn(async move {
        let mut backoff = crate::accept::Backoff::default();
        let mut look = tokio::time::interval(SOCKET_CHECK);
        look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = look.tick() => {
                    // The socket is a file in the workspace: an agent can remove it (then no
                    // `dirigent cancel` is heard) or put its own in its place. Ours again.
                    if socket_id(&path) != Some(bound) {
                        match bind_socket(&path) {
                            Ok((again, id)) => {
                                tracing::warn!(
                                    "the control socket `{}` was removed or replaced (by an agent?); it is bound again",
                                    path.display()
                                );
                                (listener, bound) = (again, id);
                            }
                            Err(e) => tracing::warn!(
                                "the control socket `{}` was removed or replaced, and cannot be bound again: {e}",
                                path.display()
                            ),
                        }
                    }
                    continue;
                }
            };
            let stream = match accepted {
                Ok((stream, _)) => {
                    backoff.reset();
                    stream
                }
                Err(e) => {
                    // Out of descriptors: wait instead of spinning on the same error.
                    backoff.wait(&e, "control socket").await;
                    continue;
                }
            };
            let cred = stream.peer_cred().ok();
            let allowed = cred.is_some_and(|c| c.uid() == me);
            let api = api.clone();
            // The overflow connections are kept for the user's own commands: a process the
            // daemon started (an agent, anything it spawned) holding the 64 and reconnecting
            // to the rest would otherwise keep `dirigent cancel` from being heard.
            let ours = || {
                cred.and_then(|c| c.pid())
                    .is_none_or(crate::signals::descends_from_me_or_unknown)
            };
            let (permit, limit) = match slots.clone().try_acquire_owned() {
                Ok(p) => (p, Serve::Long),
                Err(_) => match overflow
                    .clone()
                    .try_acquire_owned()
                    .ok()
                    .filter(|_| !ours())
                {
                    Some(p) => (p, Serve::Brief),
                    None => {
                        // Told at once, without reading: the answer fits the socket's buffer.
                        let busy = Response::fail(
                            Failure::Unavailable,
                            format!(
                                "busy: {} connections to the daemon are open; try again shortly (something may be holding them: `ss -xp | grep daemon.sock`)",
                                MAX_CONNECTIONS + OVERFLOW_CONNECTIONS
                            ),
                        );
                        let mut text = serde_json::to_string(&busy).unwrap_or_default();
                        text.push('\n');
                        let _ = stream.try_write(text.as_bytes());
                        continue;
                    }
                },
            };
            tokio::spawn(async move {
                let _permit = permit;
                serve_connection(stream, allowed, api, limit).await;
            });
        }
    }))
}

/// How often the daemon looks that its socket is still the one it bound.
const SOCKET_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// The device and inode of what is at `path`, if anything.
fn socket_id(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Binds the socket at `path` (whatever file is there goes first), mode 0600; returns it and
/// what it is on disk.
fn bind_socket(path: &std::path::Path) -> std::io::Result<(tokio::net::UnixListener, (u64, u64))> {
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let id = socket_id(path).ok_or_else(|| std::io::Error::other("the socket vanished"))?;
    Ok((listener, id))
}

/// How long a connection is served.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Serve {
    /// Request after request, while the client sends one within [`IDLE`].
    Long,
    /// One request, sent within [`BRIEF`] (an overflow connection).
    Brief,
}

async fn serve_connection(
    stream: tokio::net::UnixStream,
    allowed: bool,
    api: crate::api::Api,
    limit: Serve,
) {
    let (read, mut write) = stream.into_split();
    let reply = |r: &Response| {
        let mut text = serde_json::to_string(r).unwrap_or_default();
        text.push('\n');
        text
    };
    if !allowed {
        let refusal = Response::error("refused: the daemon serves only the user it runs as");
        let _ = write.write_all(reply(&refusal).as_bytes()).await;
        return;
    }
    let mut reader = tokio::io::BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let idle = if limit == Serve::Brief { BRIEF } else { IDLE };
        let got = tokio::time::timeout(idle, read_line_limited(&mut reader, &mut line)).await;
        // A line that is no request ends the connection after its answer: no client of ours
        // sends one, and one that keeps sending them would hold its connection for good.
        let mut last = limit == Serve::Brief;
        let answer = match got {
            Err(_) | Ok(Ok(LineRead::Eof)) | Ok(Err(_)) => return,
            Ok(Ok(LineRead::TooLong)) => {
                let refusal = Response::error(format!(
                    "refused: a request line may have at most {MAX_LINE} bytes"
                ));
                let _ = write.write_all(reply(&refusal).as_bytes()).await;
                return;
            }
            Ok(Ok(LineRead::Line)) => match serde_json::from_slice::<Request>(&line) {
                // A wait can last as long as a task: not on a connection lent for one quick
                // request (its client tries again, or waits on a connection of its own).
                Ok(Request::Wait { .. }) if limit == Serve::Brief => Response::fail(
                    Failure::Unavailable,
                    "busy: every long-lived connection to the daemon is taken; a `wait` needs one, try again shortly",
                ),
                Ok(request) => {
                    // Answered while the client is there: one that hangs up (or dies) frees
                    // its connection at once, not when a long `wait` would have ended.
                    let call = api.call(request);
                    tokio::pin!(call);
                    tokio::select! {
                        answer = &mut call => answer,
                        gone = reader.fill_buf() => match gone {
                            Ok([]) | Err(_) => return,
                            // The next request is already here: answer this one first.
                            Ok(_) => call.await,
                        },
                    }
                }
                Err(e) => {
                    last = true;
                    Response::error(format!("not a request: {e}"))
                }
            },
        };
        if write.write_all(reply(&answer).as_bytes()).await.is_err() || last {
            return;
        }
    }
}

/// What reading one line found.
enum LineRead {
    Line,
    Eof,
    TooLong,
}

/// Reads up to a newline into `buf` (without it), refusing to hold more than [`MAX_LINE`].
async fn read_line_limited<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<LineRead> {
    use tokio::io::AsyncBufReadExt;
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            return Ok(if buf.is_empty() {
                LineRead::Eof
            } else {
                LineRead::Line
            });
        }
        let (take, done) = match avail.iter().position(|b| *b == b'\n') {
            Some(i) => (i, true),
            None => (avail.len(), false),
        };
        if buf.len() + take > MAX_LINE {
            return Ok(LineRead::TooLong);
        }
        buf.extend_from_slice(&avail[..take]);
        r.consume(if done { take + 1 } else { take });
        if done {
            return Ok(LineRead::Line);
        }
    }
}

/// Why a client got no answer from the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("refusing to talk to `{path}`: it belongs to uid {owner}, not to you (uid {me})")]
    ForeignSocket {
        path: std::path::PathBuf,
        owner: u32,
        me: u32,
    },
    #[error(
        "refusing to talk to `{path}`: the process behind it runs as uid {peer}, not as you (uid {me})"
    )]
    ForeignPeer {
        path: std::path::PathBuf,
        peer: u32,
        me: u32,
    },
    #[error("refusing to talk to `{path}`: cannot tell who is behind it")]
    UnknownPeer { path: std::path::PathBuf },
    #[error(
        "no daemon is running on `{}`{}; start it with `dirigent daemon`",
        root.display(),
        unusual(cause)
    )]
    NotRunning {
        root: std::path::PathBuf,
        cause: std::io::Error,
    },
    #[error(
        "the daemon (pid {pid}) holds this workspace but has taken no requests for {}s: it may be starting or stopping slowly (its log says which); try again, or `dirigent status` reads the ledger without it",
        CLIENT_PATIENCE.as_secs()
    )]
    NotAnswering { pid: String },
    #[error("cannot encode the request: {0}")]
    Encode(serde_json::Error),
    #[error("cannot talk to the daemon: {0}")]
    Write(std::io::Error),
    #[error("cannot read the daemon's answer: {0}")]
    Read(std::io::Error),
    #[error(
        "the daemon did not answer within {}s: it may be stuck or overloaded (`dirigent status` reads the ledger without it; its log says more)",
        CLIENT_PATIENCE.as_secs()
    )]
    Silent,
    #[error("the daemon closed the connection without an answer")]
    NoAnswer,
    #[error("the daemon's answer is not understood ({cause}): {answer}")]
    NotUnderstood {
        cause: serde_json::Error,
        answer: String,
    },
}

/// Checks, before a client sends anything, that the socket belongs to this user: a socket
/// someone else made (in a shared directory) never receives a prompt.
fn check_socket_owner(path: &std::path::Path) -> Result<(), ClientError> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(()); // connecting will say it is not there
    };
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(ClientError::ForeignSocket {
            path: path.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    Ok(())
}

/// Whether the process at the other end of a connected socket runs as this user.
fn check_peer(uid: Option<u32>, path: &std::path::Path) -> Result<(), ClientError> {
    let me = nix::unistd::geteuid().as_raw();
    match uid {
        Some(u) if u == me => Ok(()),
        Some(peer) => Err(ClientError::ForeignPeer {
            path: path.to_path_buf(),
            peer,
            me,
        }),
        None => Err(ClientError::UnknownPeer {
            path: path.to_path_buf(),
        }),
    }
}

/// The cause of a failed connection, when it is not the plain "nothing listens there".
fn unusual(cause: &std::io::Error) -> String {
    match cause.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => String::new(),
        _ => format!(" ({cause})"),
    }
}

/// How long the CLI waits for the daemon's answer (every request it sends is answered at once;
/// none waits for a task).
const CLIENT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// Sends one request to the daemon of `ws` and waits for the answer (for the CLI).
pub fn request(ws: &Workspace, req: &Request) -> Result<Response, ClientError> {
    request_with(ws, req, false)
}

/// [`request`] for a command that acts (`merge`, `cancel`, …): a daemon that is starting is
/// waited for (at most [`CLIENT_PATIENCE`]) rather than said not to run. Reading commands use
/// [`request`] and fall back to the ledger at once.
pub fn request_when_up(ws: &Workspace, req: &Request) -> Result<Response, ClientError> {
    request_with(ws, req, true)
}

fn request_with(ws: &Workspace, req: &Request, wait: bool) -> Result<Response, ClientError> {
    let path = socket_path(ws);
    check_socket_owner(&path)?;
    let mut stream = if wait {
        connect_waiting_for_a_start(ws, &path)?
    } else {
        std::os::unix::net::UnixStream::connect(&path).map_err(|e| not_running(ws, e))?
    };
    check_peer(peer_uid(&stream), &path)?;
    // Never a silent hang: a daemon that does not answer in this long is said to.
    let _ = stream.set_read_timeout(Some(CLIENT_PATIENCE));
    let _ = stream.set_write_timeout(Some(CLIENT_PATIENCE));
    // A refused client is told why and hung up on, possibly before it has written: read the
    // answer even when the write failed.
    let written = stream.write_all(encode(req)?.as_bytes());
    let mut answer = String::new();
    let read = BufReader::new(stream).read_line(&mut answer);
    decode(written, read, answer)
}

/// The uid of the peer of a connected Unix socket.
fn peer_uid(stream: &std::os::unix::net::UnixStream) -> Option<u32> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
            .ok()
            .map(|c| c.uid())
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        nix::unistd::getpeereid(stream)
            .ok()
            .map(|(uid, _)| uid.as_raw())
    }
}

/// [`request`] for async callers (the MCP server): one connection per request, so a long
/// `wait` never holds up another call.
pub async fn request_async(ws: &Workspace, req: &Request) -> Result<Response, ClientError> {
    let path = socket_path(ws);
    check_socket_owner(&path)?;
    let stream = tokio::net::UnixStream::connect(&path)
        .await
        .map_err(|e| not_running(ws, e))?;
    check_peer(stream.peer_cred().ok().map(|c| c.uid()), &path)?;
    let (read, mut write) = stream.into_split();
    let written = write.write_all(encode(req)?.as_bytes()).await;
    let mut answer = String::new();
    let read = tokio::io::BufReader::new(read).read_line(&mut answer).await;
    decode(written, read, answer)
}

/// Connects to the daemon's socket. A daemon that holds the workspace but takes no requests
/// yet is starting (closing what a crash left, putting trees back in the pool) or stopping:
/// waited for, at most [`CLIENT_PATIENCE`], instead of told "no daemon is running".
fn connect_waiting_for_a_start(
    ws: &Workspace,
    path: &std::path::Path,
) -> Result<std::os::unix::net::UnixStream, ClientError> {
    let deadline = std::time::Instant::now() + CLIENT_PATIENCE;
    loop {
        let cause = match std::os::unix::net::UnixStream::connect(path) {
            Ok(stream) => return Ok(stream),
            Err(e) => e,
        };
        let Some(pid) = crate::engine::running_daemon(ws) else {
            return Err(not_running(ws, cause));
        };
        if std::time::Instant::now() >= deadline {
            return Err(ClientError::NotAnswering { pid });
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn not_running(ws: &Workspace, cause: std::io::Error) -> ClientError {
    ClientError::NotRunning {
        root: ws.root().to_path_buf(),
        cause,
    }
}

/// One request line.
fn encode(req: &Request) -> Result<String, ClientError> {
    let mut line = serde_json::to_string(req).map_err(ClientError::Encode)?;
    line.push('\n');
    Ok(line)
}

/// The answer line, or why there is none.
fn decode(
    written: std::io::Result<()>,
    read: std::io::Result<usize>,
    answer: String,
) -> Result<Response, ClientError> {
    if answer.is_empty() {
        return Err(match (written, read) {
            (Err(e), _) => ClientError::Write(e),
            (_, Err(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                ClientError::Silent
            }
            (_, Err(e)) => ClientError::Read(e),
            _ => ClientError::NoAnswer,
        });
    }
    serde_json::from_str(&answer).map_err(|cause| ClientError::NotUnderstood { cause, answer })
}
