//! The web dashboard, served by the HTTP door ([`crate::http`]): the page and its assets
//! (compiled into the binary — no CDN, nothing fetched at run time), and the login that turns
//! a one-time link from `dirigent open` into a session cookie. The page itself is plain
//! JavaScript over the same JSON API and event stream as every other client; see
//! `docs/dashboard.md`.
//!
//! Who may do what: the page (`/`), its assets and the login page are public (they hold no
//! data); every API route needs the bearer token, or a session: its cookie *and* its CSRF value
//! in `X-Dirigent-CSRF`. The value comes in the login answer and the page keeps it in its
//! origin's storage. Both are needed because a browser sends a cookie for `127.0.0.1` to every
//! port of that host, so a server another local user runs on another port could collect it;
//! the storage, like the header, is bound to the origin with its port.

pub mod session;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::get;

use crate::web::{ApiError, AppState};

/// The header a page sends its CSRF value in.
pub const CSRF_HEADER: &str = "x-dirigent-csrf";

const INDEX_HTML: &str = include_str!("assets/index.html");
const LOGIN_HTML: &str = include_str!("assets/login.html");
const APP_JS: &str = include_str!("assets/app.js");
const LOGIN_JS: &str = include_str!("assets/login.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// What the page may load and talk to: only this server. No inline script, no frames.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The dashboard's routes; public ones check nothing, the page checks the session itself.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/login", get(login_page).post(login))
        .route("/assets/{name}", get(asset))
}

/// The cookie's name: one per port, so two daemons on one host (cookies do not tell ports
/// apart) do not overwrite each other's session.
pub(crate) fn cookie_name(port: u16) -> String {
    format!("dirigent_{port}")
}

/// The session a request carries in its cookie `cookie`, when valid for `token`.
pub(crate) fn session_of(
    token: &str,
    cookie: &str,
    headers: &HeaderMap,
) -> Option<session::Signed> {
    let now = crate::ledger::now_ms();
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == cookie)
        .find_map(|(_, value)| session::check_session(token, value, now).ok())
}

/// Whether a request with session `s` also carries its CSRF value (every request does, reading
/// ones too: the cookie alone is not enough, see the module's doc).
pub(crate) fn csrf_ok(token: &str, headers: &HeaderMap, s: &session::Signed) -> bool {
    let want = session::csrf_value(token, s);
    headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|given| session::same(given.trim().as_bytes(), want.as_bytes()))
}

/// Headers every page and asset carries.
fn guarded(mut response: HttpResponse, content_type: &'static str) -> HttpResponse {
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /`: the dashboard page. It holds no data: it asks the API for everything, with the
/// session it keeps, and says how to log in when it has none.
async fn index(State(st): State<AppState>) -> HttpResponse {
    let name = st
        .api
        .workspace()
        .root()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let page = INDEX_HTML.replace("{{workspace}}", &html_escape(&name));
    guarded(
        (StatusCode::OK, page).into_response(),
        "text/html; charset=utf-8",
    )
}

/// Text made safe inside HTML.
fn html_escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '&' => "&amp;".to_string(),
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '"' => "&quot;".to_string(),
            '\'' => "&#39;".to_string(),
            c if c.is_control() => String::new(),
            c => c.to_string(),
        })
        .collect()
}

/// `GET /login`: a page whose script sends the code after `#` (which browsers never send to a
/// server, so it is in no log) to `POST /login`.
async fn login_page() -> HttpResponse {
    let page = LOGIN_HTML.replace("{{message}}", "Logging in…");
    guarded(
        (StatusCode::OK, page).into_response(),
        "text/html; charset=utf-8",
    )
}

/// `POST /login` with the code as the body: sets the session cookie and answers the session's
/// CSRF value (`{"ok": true, "csrf": …}`), which the page keeps.
async fn login(State(st): State<AppState>, body: Bytes) -> HttpResponse {
    let code = String::from_utf8_lossy(&body).trim().to_string();
    let now = crate::ledger::now_ms();
    let Some(token) = st.token.get() else {
        return ApiError::token_unusable().into_response();
    };
    let redeemed = st
        .used_codes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .redeem(&token, std::process::id(), &code, now);
    if let Err(why) = redeemed {
        tracing::info!("refused a dashboard login: {why}");
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            format!("this login link cannot be used: {why}; run `dirigent open` for a new one"),
        )
        .into_response();
    }
    let Ok(nonce) = session::nonce() else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "no random bytes for a session",
        )
        .into_response();
    };
    let value = session::session_value(&token, now, &nonce);
    let csrf = session::check_session(&token, &value, now)
        .map(|s| session::csrf_value(&token, &s))
        .unwrap_or_default();
    let cookie = format!(
        "{}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        st.cookie,
        session::SESSION_TTL_MS / 1000
    );
    let mut response = (
        StatusCode::OK,
        axum::Json(serde_json::json!({"ok": true, "message": "logged in", "csrf": csrf})),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    tracing::info!("a browser logged in to the dashboard");
    response
}

/// `POST /logout` (an API route: it needs the session): ends the session — a copy of its cookie
/// no longer works here — and forgets the cookie in this browser; the page forgets the CSRF
/// value. (Every session ends when the token file is replaced.)
pub(crate) async fn logout(State(st): State<AppState>, headers: HeaderMap) -> HttpResponse {
    if let Some(token) = st.token.get()
        && let Some(s) = session_of(&token, &st.cookie, &headers)
        && !st
            .ended_sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .end(&s, crate::ledger::now_ms())
    {
        tracing::warn!(
            "too many dashboard sessions ended at once to remember another; this one's cookie is cleared in its browser only"
        );
    }
    let cookie = format!(
        "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        st.cookie
    );
    let mut response = (
        StatusCode::OK,
        axum::Json(serde_json::json!({"ok": true, "message": "logged out"})),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

async fn asset(Path(name): Path<String>) -> HttpResponse {
    let (body, kind) = match name.as_str() {
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "login.js" => (LOGIN_JS, "text/javascript; charset=utf-8"),
        "app.css" => (APP_CSS, "text/css; charset=utf-8"),
        _ => {
            return ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such asset")
                .into_response();
        }
    };
    guarded((StatusCode::OK, body).into_response(), kind)
}
