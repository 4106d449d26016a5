//! The HTTP door: a JSON API over the same [`Api`] as the control socket, Server-Sent Events of
//! the ledger, and (in [`crate::openai`]) an OpenAI-compatible endpoint; what the two share is in
//! [`crate::web`]. Started by the engine
//! when `--http ADDR` or `http:` is set; stopped when the daemon stops.
//!
//! Every route but `/health` needs `Authorization: Bearer <token>`, the token the daemon writes
//! on first start to `.context/http.token` (mode 0600). The bound address is written to
//! `.context/http.url` so scripts (and tests) can find a server started on port 0.
//! Routes and shapes are documented in `docs/api.md` and `docs/openapi.yaml`.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request as HttpRequest, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::api::Api;
use crate::protocol::{Failure, Request, Response};
use crate::web::{ApiError, AppState};
use crate::workspace::Workspace;

/// How long a stopping server waits for open requests before it drops them. Long waits and
/// event streams end at the stop by themselves; what is left is a request being answered, or a
/// stranger's half-sent one, which must not hold a stop up for long.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// The running server.
pub struct HttpServer {
    /// Receiver: axum's graceful-shutdown future. Sent by [`HttpServer::stop`].
    shutdown: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    url_file: PathBuf,
}

impl HttpServer {
    /// Stops accepting, lets open requests finish (event streams and waits have already been
    /// ended by the daemon's stop signal) for a moment (`STOP_GRACE`), then drops the rest.
    pub async fn stop(self) {
        let _ = self.shutdown.send(());
        let mut task = self.task;
        if tokio::time::timeout(STOP_GRACE, &mut task).await.is_err() {
            task.abort();
        }
        let _ = std::fs::remove_file(&self.url_file);
    }
}

/// Where the bearer token lives.
pub fn token_path(ws: &Workspace) -> PathBuf {
    ws.context().join("http.token")
}

/// Where the running server's base URL is written.
pub fn url_path(ws: &Workspace) -> PathBuf {
    ws.context().join("http.url")
}

/// Reads the token, or creates it (32 random bytes as hex, mode 0600) on first start. A token
/// file others can read is refused: anyone who has it controls the agents.
pub fn load_or_create_token(ws: &Workspace) -> std::io::Result<String> {
    let path = token_path(ws);
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(mut f) => {
            let mut raw = [0u8; 32];
            std::fs::File::open("/dev/urandom")?.read_exact(&mut raw)?;
            let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
            f.write_all(format!("{token}\n").as_bytes())?;
            f.sync_all()?;
            tracing::info!("created the HTTP API token in `{}`", path.display());
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // Never through a link an agent planted: the token would be one it chose.
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
                .open(&path)?;
            let meta = file.metadata()?;
            if !meta.is_file() {
                return Err(std::io::Error::other(format!(
                    "`{}` is not a regular file; delete it to get a new token",
                    path.display()
                )));
            }
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(std::io::Error::other(format!(
                    "`{}` can be read by other users (mode {:o}); run `chmod 600` on it",
                    path.display(),
                    mode & 0o777
                )));
            }
            let mut token = String::new();
            file.take(4096).read_to_string(&mut token)?;
            let token = token.trim().to_string();
            if token.len() < 16 {
                return Err(std::io::Error::other(format!(
                    "`{}` holds no usable token (at least 16 characters); delete it to get a new one",
                    path.display()
                )));
            }
            Ok(token)
        }
        Err(e) => Err(e),
    }
}

/// A bound listener with its token, not serving yet: the daemon binds before it touches the
/// ledger, so a taken port or a bad token file stops it before anything has happened.
pub struct Bound {
    listener: tokio::net::TcpListener,
    token: Arc<str>,
}

/// Loads (or creates) the token and binds `addr`.
pub async fn bind(ws: &Workspace, addr: SocketAddr) -> std::io::Result<Bound> {
    let token: Arc<str> = load_or_create_token(ws)?.into();
    let listener = tokio::net::TcpListener::bind(addr).await?;
    Ok(Bound { listener, token })
}

/// Serves the API on `bound` until [`HttpServer::stop`].
pub fn serve(bound: Bound, api: Api) -> std::io::Result<HttpServer> {
    let ws = api.workspace().clone();
    let Bound { listener, token } = bound;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        tracing::warn!(
            "the HTTP API listens on {addr}, which is not loopback: anyone who can reach it and has the token controls your agents"
        );
    }
    let url_file = url_path(&ws);
    ws.open_context()?
        .write_atomic("http.url", format!("http://{addr}\n").as_bytes(), 0o644)?;
    let state = AppState {
        token: Arc::new(crate::web::TokenSource::new(ws.clone(), token)),
        api,
        cookie: crate::dashboard::cookie_name(addr.port()).into(),
        used_codes: Default::default(),
        ended_sessions: Default::default(),
    };
    let app = router(state);
    let (shutdown, stop) = oneshot::channel::<()>();
    let task = tokio::spawn(accept_loop(listener, app, stop));
    tracing::info!(
        "HTTP API on http://{addr} (token in `{}`)",
        token_path(&ws).display()
    );
    Ok(HttpServer {
        shutdown,
        task,
        url_file,
    })
}

/// How long a client may take to send a request's headers — also how long an idle kept-alive
/// connection stays open — and then its body.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest request body read (a task is at most 1 MiB; a chat may carry more).
const MAX_BODY: usize = 8 * 1024 * 1024;

/// The largest body of a request that needs no token (the dashboard's login form): such a
/// request's body is read before anyone is known, so it is kept small.
const MAX_PUBLIC_BODY: usize = 64 * 1024;

/// Connections served at once: at most 256, and never more than a quarter of the descriptors
/// the process may open, so clients can never starve the daemon of them. More wait in the
/// listen queue.
fn max_connections() -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024);
    usize::try_from(soft / 4).unwrap_or(256).clamp(4, 256)
}

/// Accepts connections until `stop` fires, each served by hyper with a header timeout; then
/// asks open connections to finish (event streams and waits end with the daemon's stop). When
/// every place is taken, a stranger's connection makes room (see [`crate::http_conns`]).
async fn accept_loop(listener: tokio::net::TcpListener, app: Router, stop: oneshot::Receiver<()>) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let conns = crate::http_conns::Conns::new(max_connections());
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    let mut backoff = crate::accept::Backoff::default();
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            _ = &mut stop => break,
            got = listener.accept() => match got {
                Ok((stream, _)) => {
                    backoff.reset();
                    stream
                }
                Err(e) => {
                    backoff.wait(&e, "HTTP API").await;
                    continue;
                }
            },
        };
        // Every place held by a token's holder: this one waits for a place, the next ones in
        // the listen queue.
        let place = loop {
            if let Some(place) = conns.admit() {
                break Some(place);
            }
            tokio::select! {
                _ = &mut stop => break None,
                () = conns.freed() => {}
            }
        };
        let Some(place) = place else { break };
        let _ = stream.set_nodelay(true);
        let trust = crate::http_conns::ConnTrust(place.trusted.clone());
        let service =
            hyper_util::service::TowerToHyperService::new(app.clone().layer(Extension(trust)));
        let mut closing = closing.clone();
        tokio::spawn(async move {
            let evict = place.evict.clone();
            let _place = place;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            loop {
                tokio::select! {
                    _ = conn.as_mut() => break,
                    // Room for another connection: this one never showed the token.
                    () = evict.notified() => break,
                    changed = closing.changed() => {
                        if changed.is_err() || *closing.borrow() {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.as_mut().await;
                            break;
                        }
                    }
                }
            }
        });
    }
    let _ = closing_tx.send(true);
    // Wait until every connection has finished (the daemon's stop bounds this).
    while conns.open() > 0 {
        conns.freed().await;
    }
}

/// Reads the request body under a time and a size limit (`limit`) before its route sees it: a
/// client that sends headers and then trickles (or never sends) its body cannot hold a
/// connection. A guarded route's body is read only once its token was checked, so a stranger
/// cannot make the daemon buffer megabytes; a declared length over the limit is refused before
/// a byte is read.
async fn bounded_body(State(limit): State<usize>, req: HttpRequest, next: Next) -> HttpResponse {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body is larger than {limit} bytes, or broken"),
        )
        .into_response()
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large();
    }
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => {
            next.run(HttpRequest::from_parts(
                parts,
                axum::body::Body::from(bytes),
            ))
            .await
        }
        Ok(Err(_)) => too_large(),
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            format!(
                "the request body did not arrive within {}",
                crate::duration::short(BODY_TIMEOUT)
            ),
        )
        .into_response(),
    }
}

/// Every refusal in the documented shape (`{"error": {"message", "type", "code"}}`): the
/// framework's own — a query or path that does not parse, a method a route does not take, a
/// URL that is not one — are plain text or empty, and are rewritten here with their words.
async fn json_errors(req: HttpRequest, next: Next) -> HttpResponse {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let response = next.run(req).await;
    let status = response.status();
    let typed = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json") || t.starts_with("text/html"));
    if !(status.is_client_error() || status.is_server_error()) || typed {
        return response;
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    let said = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let (kind, message) = match status {
        StatusCode::METHOD_NOT_ALLOWED => (
            "invalid_request_error",
            format!(
                "`{method}` is not allowed on `{path}`; docs/api.md lists the routes and their methods"
            ),
        ),
        StatusCode::NOT_FOUND => ("not_found", said),
        s if s.is_server_error() => ("unavailable", said),
        _ => ("invalid_request_error", said),
    };
    let message = if message.is_empty() {
        status.canonical_reason().unwrap_or("refused").to_string()
    } else {
        message
    };
    let mut rewritten = ApiError::new(status, kind, message).into_response();
    if let Some(allow) = allow {
        rewritten.headers_mut().insert(header::ALLOW, allow);
    }
    rewritten
}

fn router(state: AppState) -> Router {
    let guarded = Router::new()
        .route("/tasks", get(list_tasks).post(create_task))
        .route("/tasks/{id}", get(get_task))
        .route("/tasks/{id}/cancel", post(cancel_task))
        .route("/tasks/{id}/retry", post(retry_task))
        .route("/tasks/{id}/result", get(task_result))
        .route("/tasks/{id}/diff", get(task_diff))
        .route("/tasks/{id}/merge", post(merge_task))
        .route("/tasks/{id}/discard", post(discard_task))
        .route("/tasks/{id}/log", get(crate::http_views::task_log))
        .route("/tasks/{id}/report", get(crate::http_views::task_report))
        .route("/runs", get(crate::http_views::runs))
        .route("/stats", get(crate::http_views::stats))
        .route("/agents", get(agents))
        .route("/agents/{name}/enable", post(enable_agent))
        .route("/fleet", get(fleet))
        .route("/workflows", get(workflows))
        .route("/workflows/{name}/runs", post(run_workflow))
        .route("/events", get(crate::http_events::events))
        .route("/logout", post(crate::dashboard::logout))
        .route("/v1/models", get(crate::openai::models))
        .route(
            "/v1/chat/completions",
            post(crate::openai::chat_completions),
        )
        // The outer layer runs first: the token, then the body.
        .route_layer(middleware::from_fn_with_state(MAX_BODY, bounded_body))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    let public = Router::new()
        .route("/health", get(health))
        .merge(crate::dashboard::routes())
        .route_layer(middleware::from_fn_with_state(
            MAX_PUBLIC_BODY,
            bounded_body,
        ));
    Router::new()
        .merge(public)
        .merge(guarded)
        .fallback(not_found)
        // The body is bounded above (axum's own default, 2 MiB, would refuse first, in plain
        // text).
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(json_errors))
        .with_state(state)
}

type ApiResult = Result<HttpResponse, ApiError>;

/// The data of a successful answer, or its refusal.
fn data(r: Response) -> Result<Value, ApiError> {
    if r.ok {
        Ok(r.data.unwrap_or(Value::Null))
    } else {
        Err(ApiError::from_response(r))
    }
}

fn json_ok(status: StatusCode, v: Value) -> HttpResponse {
    (status, axum::Json(v)).into_response()
}

/// Lets a request in with the bearer token, or with a dashboard session: its cookie and its
/// CSRF value in a header, together (the cookie alone, which a browser also sends to any other
/// port of the same host, is not enough).
async fn authorize(State(st): State<AppState>, req: HttpRequest, next: Next) -> HttpResponse {
    let Some(token) = st.token.get() else {
        return ApiError::token_unusable().into_response();
    };
    // A connection that shows the token is never closed to make room for a stranger's.
    let trust = |req: &HttpRequest| {
        if let Some(t) = req.extensions().get::<crate::http_conns::ConnTrust>() {
            t.trust();
        }
    };
    if !req.headers().contains_key(header::AUTHORIZATION)
        && let Some(s) = crate::dashboard::session_of(&token, &st.cookie, req.headers())
        && !st
            .ended_sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_ended(&s)
    {
        if crate::dashboard::csrf_ok(&token, req.headers(), &s) {
            trust(&req);
            return next.run(req).await;
        }
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "authentication_error",
            format!(
                "a dashboard request needs the session's `{}` header (the page sends it); log in again with `dirigent open`",
                crate::dashboard::CSRF_HEADER
            ),
        )
        .into_response();
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme's name is case-insensitive (RFC 7235): `bearer` is as good as `Bearer`.
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    match given {
        Some(t) if same(t.as_bytes(), token.as_bytes()) => {
            trust(&req);
            next.run(req).await
        }
        Some(_) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "wrong bearer token; the daemon's token is in `.context/http.token`",
        )
        .into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "missing `Authorization: Bearer <token>`; the token is in `.context/http.token`",
        )
        .into_response(),
    }
}

use crate::dashboard::session::same;

async fn health() -> HttpResponse {
    json_ok(
        StatusCode::OK,
        json!({"ok": true, "version": env!("CARGO_PKG_VERSION")}),
    )
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route; docs/api.md lists them",
    )
}

#[derive(Deserialize)]
struct ListQuery {
    state: Option<String>,
    agent: Option<String>,
    role: Option<String>,
    /// Text in the id or title.
    q: Option<String>,
    /// `newest` or `oldest` (the default).
    order: Option<String>,
    offset: Option<usize>,
    limit: Option<usize>,
}

/// The most tasks one page returns.
const MAX_PAGE: usize = 1000;

async fn list_tasks(State(st): State<AppState>, Query(q): Query<ListQuery>) -> ApiResult {
    let newest_first = match q.order.as_deref() {
        None | Some("oldest") => false,
        Some("newest") => true,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                format!("`order` is `newest` or `oldest`, not `{other}`"),
            ));
        }
    };
    if q.limit == Some(0) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!("`limit` must be at least 1 (at most {MAX_PAGE})"),
        ));
    }
    let non_empty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    let labels = crate::state::Phase::FILTERS;
    if let Some(state) = non_empty(q.state.clone())
        && !labels.contains(&state.as_str())
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!("`state` is one of {}, not `{state}`", labels.join(", ")),
        ));
    }
    let filter = crate::protocol::ListFilter {
        agent: non_empty(q.agent),
        role: non_empty(q.role),
        text: non_empty(q.q),
        newest_first,
        offset: q.offset,
        // Paged when asked for a page (or an offset): a page is never unbounded.
        limit: q
            .limit
            .or(q.offset.map(|_| MAX_PAGE))
            .map(|l| l.clamp(1, MAX_PAGE)),
    };
    let paged = filter.limit.is_some();
    let answer = data(
        st.api
            .call(Request::List {
                state: non_empty(q.state),
                filter,
            })
            .await,
    )?;
    Ok(json_ok(
        StatusCode::OK,
        if paged {
            answer
        } else {
            json!({"tasks": answer})
        },
    ))
}

/// `POST /tasks`: the body is a task, exactly as a `.json` task file would hold it.
async fn create_task(State(st): State<AppState>, body: Bytes) -> ApiResult {
    let fields = crate::task::parse_fields("request.json", &body).map_err(|e| {
        // The parser speaks of a task file; here the task is the request's body.
        let message = e.0.replacen("the file is", "the body is", 1);
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    })?;
    submit(&st.api, fields).await
}

/// Every task created over HTTP (`POST /tasks`, a workflow run) comes through here.
pub(crate) async fn submit(api: &Api, fields: crate::task::TaskFields) -> ApiResult {
    // `parent` says an agent created the task inside an attempt (it counts against that task's
    // `max_spawned_tasks`); a request over the network is no such thing.
    if fields.parent.is_some() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "`parent` is set by dirigent for a task an agent creates inside an attempt; a task sent over HTTP cannot name one",
        ));
    }
    let d = data(
        api.call(Request::Submit {
            task: Box::new(fields),
        })
        .await,
    )?;
    let id = d["id"].as_str().unwrap_or_default().to_string();
    let mut response = json_ok(
        StatusCode::CREATED,
        json!({"id": id, "file": d["file"], "url": format!("/tasks/{id}")}),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("/tasks/{id}")) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

#[derive(Deserialize)]
struct GetQuery {
    /// Long-poll: wait up to this long (`30s`, `5m`) for the task to finish.
    wait: Option<String>,
}

async fn get_task(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<GetQuery>,
) -> ApiResult {
    let answer = match q.wait.as_deref() {
        None => st.api.call(Request::Get { id }).await,
        Some(w) => {
            let limit = crate::duration::parse(w).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    format!("`wait`: {e}"),
                )
            })?;
            let r = st.api.wait(&id, Some(limit)).await;
            // Not finished in time is not an error here: the state so far is the answer.
            if !r.ok && r.data.is_some() && r.failure == Some(Failure::Conflict) {
                Response::data(r.data.unwrap_or_default())
            } else {
                r
            }
        }
    };
    let record = crate::http_views::with_prompt(&st, data(answer)?).await;
    Ok(json_ok(StatusCode::OK, record))
}

async fn cancel_task(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult {
    message(st.api.call(Request::Cancel { id }).await)
}

async fn retry_task(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult {
    message(st.api.call(Request::Retry { id }).await)
}

/// `POST /tasks/{id}/merge`: as `dirigent merge ID`.
async fn merge_task(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult {
    message(st.api.call(Request::Merge { id }).await)
}

/// `POST /tasks/{id}/discard`: as `dirigent discard ID`.
async fn discard_task(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult {
    message(st.api.call(Request::Discard { id }).await)
}

/// `GET /tasks/{id}/diff`: what an editing task changed, as `text/x-diff`.
async fn task_diff(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let d = data(st.api.call(Request::Diff { id }).await)?;
    let text = d["diff"].as_str().unwrap_or_default().to_string();
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/x-diff; charset=utf-8")],
        text,
    )
        .into_response())
}

fn message(r: Response) -> ApiResult {
    if r.ok {
        Ok(json_ok(
            StatusCode::OK,
            json!({"ok": true, "message": r.message}),
        ))
    } else {
        Err(ApiError::from_response(r))
    }
}

/// `GET /tasks/{id}/result`: the result text itself, as `text/markdown`.
async fn task_result(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let d = data(st.api.call(Request::Result { id }).await)?;
    let text = d["text"].as_str().unwrap_or_default().to_string();
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/markdown; charset=utf-8")],
        text,
    )
        .into_response())
}

async fn agents(State(st): State<AppState>) -> ApiResult {
    Ok(json_ok(
        StatusCode::OK,
        data(st.api.call(Request::Agents).await)?,
    ))
}

/// `POST /agents/{name}/enable`: as `dirigent agents enable NAME`.
async fn enable_agent(State(st): State<AppState>, Path(name): Path<String>) -> ApiResult {
    message(st.api.call(Request::Enable { agent: name }).await)
}

/// `GET /fleet`: fleet mode — the server, the workers, and every node's tasks (as
/// `dirigent fleet --json` and `status --fleet --json`).
/// A daemon not in a fleet answers `{"fleet": null, "nodes": []}` (the dashboard asks, to know
/// whether to list its Fleet page).
async fn fleet(State(st): State<AppState>) -> ApiResult {
    let answer = st.api.call(Request::FleetStatus).await;
    if !answer.ok && answer.failure == Some(crate::protocol::Failure::NotFound) {
        return Ok(json_ok(StatusCode::OK, json!({"fleet": null, "nodes": []})));
    }
    Ok(json_ok(StatusCode::OK, data(answer)?))
}

async fn workflows(State(st): State<AppState>) -> ApiResult {
    let rows = data(st.api.call(Request::Workflows).await)?;
    Ok(json_ok(StatusCode::OK, json!({"workflows": rows})))
}

/// `POST /workflows/{name}/runs`: the body may give `vars`, `id`, `title`, `priority`, `after`
/// (the keys of a task file; `workflow` is the path's).
async fn run_workflow(
    State(st): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult {
    let mut object = if body.iter().all(u8::is_ascii_whitespace) {
        serde_json::Map::new()
    } else {
        // A UTF-8 byte order mark is harmless, as in a task file.
        let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&body);
        let refuse = |why: String| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                format!(
                    "{why}; the body must be a JSON object like {{\"vars\": {{\"goal\": \"…\"}}}}"
                ),
            )
        };
        if let Err(e) = crate::strict_json::check(body) {
            return Err(refuse(e.to_string()));
        }
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(refuse("the body is not a JSON object".into())),
            Err(e) => return Err(refuse(format!("the body is not valid JSON: {e}"))),
        }
    };
    // The workflow is the path's resource: one that does not exist is a 404, as an unknown
    // task or agent is (in a `POST /tasks` body it is a field, and a 400).
    let known = data(st.api.call(Request::Workflows).await)?;
    let names: Vec<&str> = known
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| w["name"].as_str())
        .collect();
    if !names.contains(&name.as_str()) {
        let hint = crate::suggest::hint(&name, names.iter().copied());
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no workflow `{name}` (workflows: {}){hint}; `GET /workflows` lists them",
                names.join(", ")
            ),
        ));
    }
    object.insert("workflow".into(), Value::String(name));
    let bytes = serde_json::to_vec(&object).unwrap_or_default();
    let fields = crate::task::parse_fields("request.json", &bytes)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", e.0))?;
    submit(&st.api, fields).await
}
