//! The web dashboard, served by the HTTP door ([`crate::http`]): the page and its assets
//! (compiled into the binary — no CDN, nothing fetched at run time), and the login that turns
//! a one-time link from `dirigent open` into a session cookie. The page itself is plain
//! JavaScript over the same JSON API and event stream as every other client; see
//! `docs/dashboard.md`.
//!
//! Who may do what: `/assets/*` and the login page are public (they hold no data); the
//! dashboard page and every API route need the bearer token or a session cookie; with a cookie,
//! a request that changes something must also carry the session's CSRF value in
//! `X-Dirigent-CSRF` (the page has it; another site cannot read it or set the header).

pub mod session;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};

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
        .route("/logout", post(logout))
        .route("/assets/{name}", get(asset))
}

/// The cookie's name: one per port, so two daemons on one host (cookies do not tell ports
/// apart) do not overwrite each other's session.
pub(crate) fn cookie_name(port: u16) -> String {
    format!("dirigent_{port}")
}

/// The session a request carries in its cookie, when valid.
pub(crate) fn session_of(st: &AppState, headers: &HeaderMap) -> Option<session::Signed> {
    let now = crate::ledger::now_ms();
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == &*st.cookie)
        .find_map(|(_, value)| session::check_session(&st.token, value, now).ok())
}

/// Whether a cookie-authenticated request may go on: reading always, changing only with the
/// session's CSRF value.
pub(crate) fn csrf_ok(
    st: &AppState,
    method: &Method,
    headers: &HeaderMap,
    s: &session::Signed,
) -> bool {
    if matches!(*method, Method::GET | Method::HEAD) {
        return true;
    }
    let want = session::csrf_value(&st.token, s);
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

/// `GET /`: the dashboard for a logged-in browser (or a bearer-token client); otherwise a page
/// that says how to log in.
async fn index(State(st): State<AppState>, headers: HeaderMap) -> HttpResponse {
    let Some(s) = session_of(&st, &headers) else {
        let page = LOGIN_HTML.replace(
            "{{message}}",
            "Not logged in. Run <code>dirigent open</code> in the workspace for a login link.",
        );
        return guarded(
            (StatusCode::UNAUTHORIZED, page).into_response(),
            "text/html; charset=utf-8",
        );
    };
    let page = INDEX_HTML.replace("{{csrf}}", &session::csrf_value(&st.token, &s));
    guarded(
        (StatusCode::OK, page).into_response(),
        "text/html; charset=utf-8",
    )
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

/// `POST /login` with the code as the body: sets the session cookie.
async fn login(State(st): State<AppState>, body: Bytes) -> HttpResponse {
    let code = String::from_utf8_lossy(&body).trim().to_string();
    let now = crate::ledger::now_ms();
    let redeemed = st
        .used_codes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .redeem(&st.token, &code, now);
    if let Err(why) = redeemed {
        tracing::info!("a dashboard login was refused: the code {why}");
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
    let value = session::session_value(&st.token, now, &nonce);
    let cookie = format!(
        "{}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        st.cookie,
        session::SESSION_TTL_MS / 1000
    );
    let mut response = (
        StatusCode::OK,
        axum::Json(serde_json::json!({"ok": true, "message": "logged in"})),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    tracing::info!("a browser logged in to the dashboard");
    response
}

/// `POST /logout`: forgets the cookie in this browser. (Other sessions end when the token file
/// is replaced.)
async fn logout(State(st): State<AppState>) -> HttpResponse {
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
