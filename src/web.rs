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
    pub token: Arc<str>,
    /// The dashboard's session cookie name (one per port: [`crate::dashboard::cookie_name`]).
    pub cookie: Arc<str>,
    /// Dashboard login codes already exchanged for a session, so each link works once.
    pub used_codes: Arc<std::sync::Mutex<crate::dashboard::session::UsedCodes>>,
}

/// An error as every route returns it: OpenAI's shape, so one client-side handler fits all.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
}

impl ApiError {
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
