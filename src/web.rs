//! What the HTTP routes ([`crate::http`]) and the OpenAI-compatible routes ([`crate::openai`])
//! share: the state every handler gets, the error shape every route answers with, and the
//! keep-alive of event streams. Its own module, so that neither door imports the other.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response as HttpResponse};
use serde_json::{Value, json};

use crate::api::Api;
use crate::protocol::{Failure, Response};

/// Comment lines on idle event streams, so proxies and clients do not time them out.
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What every handler gets: the door's handle on the daemon, the bearer token it checks, and
/// what the dashboard's login needs.
#[derive(Clone)]
pub(crate) struct AppState {
    pub api: Api,
    /// The bearer token, re-read when `.context/http.token` changes.
    pub token: Arc<TokenSource>,
    /// The dashboard's session cookie name (one per port: [`crate::dashboard::cookie_name`]).
    pub cookie: Arc<str>,
    /// Dashboard login codes already exchanged for a session, so each link works once.
    pub used_codes: Arc<std::sync::Mutex<crate::dashboard::session::UsedCodes>>,
    /// Dashboard sessions ended by a logout.
    pub ended_sessions: Arc<std::sync::Mutex<crate::dashboard::session::EndedSessions>>,
}

/// The HTTP token as the file says now: replacing (or deleting) `.context/http.token` takes
/// effect at the next request — the old token and every dashboard session made with it stop
/// working — without a restart. A file that cannot be used (readable by others, not a regular
/// file) refuses every request until it is fixed: the door fails closed.
pub(crate) struct TokenSource {
    ws: crate::workspace::Workspace,
    /// (the file's identity when read, the token); only held to compare and swap.
    current: std::sync::Mutex<(Option<FileId>, Option<Arc<str>>)>,
}

/// Device, inode, modification time, change time (which no one can set), mode and length.
type FileId = (u64, u64, i64, i64, i64, i64, u32, u64);

impl TokenSource {
    pub fn new(ws: crate::workspace::Workspace, token: Arc<str>) -> Self {
        let id = Self::identity(&ws);
        TokenSource {
            ws,
            current: std::sync::Mutex::new((id, Some(token))),
        }
    }

    /// A replaced, rewritten or re-moded file has another (a chmod changes the mode and the
    /// change time; a rewrite the change time, whatever it does to the modification time).
    fn identity(ws: &crate::workspace::Workspace) -> Option<FileId> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(crate::http::token_path(ws)).ok()?;
        Some((
            m.dev(),
            m.ino(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
            m.mode(),
            m.len(),
        ))
    }

    /// The token now, or `None` when the file cannot be used.
    pub fn get(&self) -> Option<Arc<str>> {
        let id = Self::identity(&self.ws);
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if id.is_some() && cur.0 == id {
            return cur.1.clone();
        }
        // Changed, or gone (then a new one is made, as on first start).
        let token = match crate::http::load_or_create_token(&self.ws) {
            Ok(t) => {
                tracing::info!(
                    "the HTTP token changed: earlier tokens and dashboard sessions no longer work"
                );
                Some(Arc::<str>::from(t))
            }
            Err(e) => {
                tracing::error!("the HTTP token cannot be used, so every request is refused: {e}");
                None
            }
        };
        *cur = (Self::identity(&self.ws), token.clone());
        token
    }
}

/// An error as every route returns it: OpenAI's shape, so one client-side handler fits all.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
}

impl ApiError {
    /// The token file cannot be used (see [`TokenSource`]): every request is refused.
    pub fn token_unusable() -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the daemon's `.context/http.token` cannot be used; its log says why",
        )
    }

    /// A blocking task of a handler did not finish (it panicked).
    pub fn lost(e: tokio::task::JoinError) -> Self {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "unavailable",
            e.to_string(),
        )
    }

    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
        }
    }

    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "code": self.kind}})
    }

    /// The refusal in a daemon answer.
    pub fn from_response(r: Response) -> Self {
        let (status, kind) = match r.failure {
            Some(Failure::NotFound) => (StatusCode::NOT_FOUND, "not_found"),
            Some(Failure::Conflict) => (StatusCode::CONFLICT, "conflict"),
            Some(Failure::Unavailable) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            None => (StatusCode::BAD_REQUEST, "invalid_request_error"),
        };
        ApiError::new(status, kind, r.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> HttpResponse {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// How an event stream writes its items: each as it comes (`item`), and — for a stream that
/// summarises — once after each batch (`end`). A plain `fn(&T, &mut String)` writes each item.
pub(crate) trait Encode<T>: Send + 'static {
    fn item(&mut self, item: &T, out: &mut String);
    fn end(&mut self, _out: &mut String) {}
}

impl<T, F: FnMut(&T, &mut String) + Send + 'static> Encode<T> for F {
    fn item(&mut self, item: &T, out: &mut String) {
        self(item, out)
    }
}

/// The most bytes of events written in one piece.
const EVENT_BATCH: usize = 256 * 1024;

/// How long a stream gathers events after the first before it writes them: a busy daemon
/// writes thousands of records a second, and fifty dashboards each woken and written to for
/// every one of them would slow the work they watch. No person sees 50 ms.
const EVENT_GATHER: std::time::Duration = std::time::Duration::from_millis(50);

/// A `text/event-stream` response fed by `rx`: `encode` appends one item's SSE text (`id:`,
/// `event:`, `data:` lines and the blank line) to the buffer. What arrives within
/// [`EVENT_GATHER`] of the first item is written with it, so a burst of ledger records costs
/// each client one write, not one per record; a comment line every [`KEEP_ALIVE`] keeps idle
/// connections open. Ends when `rx` does (after writing what it has).
pub(crate) fn event_stream<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
    encode: impl Encode<T>,
) -> HttpResponse {
    let stream = futures_util::stream::unfold((rx, encode), |(mut rx, mut enc)| async move {
        let mut buf = String::new();
        tokio::select! {
            got = rx.recv() => enc.item(&got?, &mut buf),
            () = tokio::time::sleep(KEEP_ALIVE) => buf.push_str(":\n\n"),
        }
        let until = tokio::time::Instant::now() + EVENT_GATHER;
        while buf.len() < EVENT_BATCH {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(item)) => enc.item(&item, &mut buf),
                // The sender is gone: write what there is; the next poll ends the stream.
                Ok(None) | Err(_) => break,
            }
        }
        enc.end(&mut buf);
        Some((
            Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(buf)),
            (rx, enc),
        ))
    });
    let mut response = axum::body::Body::from_stream(stream).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
