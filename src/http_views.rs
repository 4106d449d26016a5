//! The HTTP routes that show more than a task's record — what the dashboard reads, open to any
//! client with the token: a task's prompt (kept in its file once it has finished), its
//! escalation report, its attempt's output as a resumable event stream, the workflow runs, and
//! the scorecards. Mounted by [`crate::http`] behind the same authorisation as every route.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response as HttpResponse};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::protocol::{Failure, Request, Response};
use crate::task_log::{LogItem, Offsets};
use crate::web::{ApiError, AppState};

type ApiResult = Result<HttpResponse, ApiError>;

/// The largest task file or report read back.
const MAX_TEXT: u64 = 2 * 1024 * 1024;

fn data(r: Response) -> Result<Value, ApiError> {
    if r.ok {
        Ok(r.data.unwrap_or(Value::Null))
    } else {
        Err(ApiError::from_response(r))
    }
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
}

/// Reads `rel` below `.context/` as text: one directory at a time, through no link an agent
/// may have planted, a regular file only, at most [`MAX_TEXT`] bytes.
fn read_text(ws: &crate::workspace::Workspace, rel: &str) -> std::io::Result<String> {
    crate::fsutil::read_confined(ws.context(), rel, MAX_TEXT).map_err(|e| match e {
        crate::fsutil::ConfinedReadError::Io(e) => e,
        other => std::io::Error::other(other.to_string()),
    })
}

/// Adds `prompt` to a task's record: from its spec while it can run, else from its file in
/// `done/` or `failed/` (the spec is dropped once a task has finished).
pub(crate) async fn with_prompt(st: &AppState, mut record: Value) -> Value {
    if let Some(p) = record["spec"]["fields"]["prompt"].as_str() {
        record["prompt"] = json!(p);
        return record;
    }
    let dir = match record["state"].as_str() {
        Some("done") => "done",
        Some("failed") => "failed",
        _ => return record,
    };
    let Some(file) = record["file"]
        .as_str()
        .filter(|f| !f.is_empty() && !f.contains('/') && !f.starts_with('.'))
    else {
        return record;
    };
    let rel = format!("{dir}/{file}");
    let name = file.to_string();
    let ws = st.api.workspace().clone();
    let prompt = tokio::task::spawn_blocking(move || {
        let text = read_text(&ws, &rel).ok()?;
        crate::task::parse_fields(&name, text.as_bytes())
            .ok()?
            .prompt
    })
    .await
    .ok()
    .flatten();
    if let Some(p) = prompt {
        record["prompt"] = json!(p);
    }
    record
}

/// `GET /tasks/{id}/report`: a failed task's escalation report, as `text/markdown`.
pub(crate) async fn task_report(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult {
    // Known to the daemon first: the id then names no path outside the reports.
    let record = data(st.api.call(Request::Get { id: id.clone() }).await)?;
    if record["state"] != "failed" {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "task `{id}` is {}, and only a failed task has an escalation report",
                record["state"].as_str().unwrap_or("unknown")
            ),
        ));
    }
    let ws = st.api.workspace().clone();
    let rel = format!("escalations/{id}.md");
    let text = tokio::task::spawn_blocking(move || read_text(&ws, &rel))
        .await
        .map_err(ApiError::lost)?
        .map_err(|e| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("task `{id}` has no escalation report: {e}"),
            )
        })?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/markdown; charset=utf-8")],
        text,
    )
        .into_response())
}

#[derive(Deserialize)]
pub(crate) struct LogQuery {
    /// The attempt (default: the latest).
    attempt: Option<u32>,
    /// Where to start, as `<stdout offset>.<stderr offset>` (like `Last-Event-ID`).
    after: Option<String>,
}

/// `GET /tasks/{id}/log`: the attempt's output as Server-Sent Events (`event: output`, data
/// `{stream, text}`, `id` the offsets to resume at), then `event: end` with its class.
pub(crate) async fn task_log(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Query<LogQuery>,
) -> ApiResult {
    let from = match headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or(""))
        .or(q.after.as_deref())
    {
        None => Offsets::default(),
        Some(s) => Offsets::parse(s).ok_or_else(|| {
            bad("`Last-Event-ID` (or `after`) must be `<stdout offset>.<stderr offset>`")
        })?,
    };
    // Subscribed before the record is read: an end written in between is not missed.
    let live = st.api.live();
    let record = data(st.api.call(Request::Get { id: id.clone() }).await)?;
    let attempts = record["attempts"].as_array().cloned().unwrap_or_default();
    let chosen = match q.attempt {
        Some(n) => attempts
            .iter()
            .find(|a| a["n"].as_u64() == Some(u64::from(n)))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("task `{id}` has no attempt {n} (it has {})", attempts.len()),
                )
            })?,
        None => attempts.last().ok_or_else(|| {
            // Archived: only its outcome is held; its output is still in its run directory.
            if record["archived"] == true {
                ApiError::new(
                    StatusCode::GONE,
                    "gone",
                    format!(
                        "task `{id}` is archived (only the 1,000 most recent finished tasks are held in full): its attempts' output is in .context/runs/{id}/"
                    ),
                )
            } else {
                ApiError::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    format!("task `{id}` has not started an attempt yet"),
                )
            }
        })?,
    };
    let n = chosen["n"].as_u64().unwrap_or(0) as u32;
    let agent = chosen["agent"].as_str().unwrap_or_default();
    let ws = st.api.workspace();
    let attempt = crate::task_log::Attempt {
        stdout: crate::task_log::CaptureFile::of(ws, &id, n, agent, "stdout"),
        stderr: crate::task_log::CaptureFile::of(ws, &id, n, agent, "stderr"),
        task: id,
        n,
        finished: chosen["class"].as_str().map(str::to_string),
    };
    let rx = crate::task_log::follow(st.api.clone(), attempt, from, live, st.api.stopping());
    Ok(crate::web::event_stream(
        rx,
        |item: &LogItem, out: &mut String| {
            // JSON on one line: a `data:` field never holds a raw newline.
            let (event, id, data) = match item {
                LogItem::Output { stream, text, at } => (
                    "output",
                    Some(at.id()),
                    json!({"stream": stream, "text": text}),
                ),
                LogItem::End { class } => ("end", None, json!({"class": class})),
            };
            out.push_str("event: ");
            out.push_str(event);
            out.push('\n');
            if let Some(id) = id {
                out.push_str("id: ");
                out.push_str(&id);
                out.push('\n');
            }
            out.push_str("data: ");
            out.push_str(&data.to_string());
            out.push_str("\n\n");
        },
    ))
}

#[derive(Deserialize)]
pub(crate) struct RunsQuery {
    limit: Option<usize>,
    /// Only this run.
    id: Option<String>,
}

/// `GET /runs`: the workflow runs, newest first (at most `limit`, 50 by default, 1000 at most).
pub(crate) async fn runs(State(st): State<AppState>, Query(q): Query<RunsQuery>) -> ApiResult {
    if q.limit == Some(0) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "`limit` must be at least 1 (at most 1000)",
        ));
    }
    let limit = Some(q.limit.unwrap_or(50).clamp(1, 1000));
    if q.id.as_deref() == Some("") {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "`id` is empty: give a run's id, or leave `id` out for every run",
        ));
    }
    let runs = data(st.api.call(Request::Runs { limit, id: q.id }).await)?;
    Ok((StatusCode::OK, axum::Json(json!({"runs": runs}))).into_response())
}

#[derive(Deserialize)]
pub(crate) struct StatsQuery {
    /// The period, as `dirigent stats --since` takes it (default `7d`).
    since: Option<String>,
    /// `agent` (default), `role` or `model`.
    by: Option<String>,
}

/// `GET /stats`: the scorecard of `dirigent stats --json`, with a row per day.
pub(crate) async fn stats(State(st): State<AppState>, Query(q): Query<StatsQuery>) -> ApiResult {
    use crate::stats::By;
    let since = q.since.as_deref().unwrap_or("7d");
    let period = crate::duration::parse(since).map_err(|e| bad(format!("`since`: {e}")))?;
    let by = match q.by.as_deref().unwrap_or("agent") {
        "agent" => By::Agent,
        "role" => By::Role,
        "model" => By::Model,
        other => {
            return Err(bad(format!(
                "`by` is `agent`, `role` or `model`, not `{other}`"
            )));
        }
    };
    let since_ms = crate::ledger::now_ms().saturating_sub(period.as_millis() as u64);
    // The configured models, for `by=model`: from the agents the daemon describes.
    let agents = data(st.api.call(Request::Agents).await)?;
    let models: std::collections::HashMap<String, String> = agents["agents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| {
            Some((
                a["name"].as_str()?.to_string(),
                a["model"].as_str()?.to_string(),
            ))
        })
        .collect();
    let ws = st.api.workspace().clone();
    let report =
        tokio::task::spawn_blocking(move || crate::stats::over_ledger(&ws, since_ms, by, &models))
            .await
            .map_err(ApiError::lost)?
            .map_err(|e| {
                ApiError::from_response(Response::fail(
                    Failure::Unavailable,
                    format!("cannot read the ledger: {e}"),
                ))
            })?;
    Ok((StatusCode::OK, axum::Json(report)).into_response())
}
