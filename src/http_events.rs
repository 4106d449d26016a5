//! `GET /events`: the ledger's records as Server-Sent Events, resumable by sequence number —
//! every record, or one small `changed` per batch for a dashboard (`?brief=true`), or in fleet
//! mode every node's records from the fleet's events stream (`?fleet=true`). Mounted by
//! [`crate::http`] behind the same authorisation as every route; docs/api.md has the shapes.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response as HttpResponse;
use serde::Deserialize;
use serde_json::json;

use crate::api::StreamItem;
use crate::web::{ApiError, AppState};

type ApiResult = Result<HttpResponse, ApiError>;

#[derive(Deserialize)]
pub(crate) struct EventsQuery {
    /// Start after this sequence number (like `Last-Event-ID`); `0` replays what is kept.
    after: Option<u64>,
    /// Only events about this task (and a workflow run's own tasks).
    task: Option<String>,
    /// One small `changed` event per batch instead of every record (what a dashboard needs to
    /// know when to look again).
    #[serde(default)]
    brief: bool,
    /// Fleet mode: every node's records, from the fleet's events stream.
    #[serde(default)]
    fleet: bool,
}

/// The `?brief=true` form of `/events`: per batch of records, one `event: changed` with the
/// last sequence number as its id and `{"seq", "records", "tasks"}` (at most 50 task ids).
#[derive(Default)]
struct Brief {
    records: u64,
    last: Option<u64>,
    tasks: Vec<String>,
}

impl Brief {
    fn count(&mut self, r: &crate::ledger::SharedRecord) {
        self.records += 1;
        self.last = Some(r.seq);
        if let Some(t) = r.event.task()
            && self.tasks.len() < 50
            && !self.tasks.iter().any(|k| k == t)
        {
            self.tasks.push(t.to_string());
        }
    }
}

impl crate::web::Encode<StreamItem> for Brief {
    fn item(&mut self, item: &StreamItem, _out: &mut String) {
        match item {
            StreamItem::Record(r) => self.count(r),
            StreamItem::Records(rs) => rs.iter().for_each(|r| self.count(r)),
            StreamItem::Gap { next, .. } => {
                self.records += 1;
                self.last = Some(next.saturating_sub(1));
            }
            // A dashboard looks again at everything: what it showed came from another ledger.
            StreamItem::Reset { newest, .. } => {
                self.records += 1;
                self.last = Some(*newest);
            }
        }
    }

    fn end(&mut self, out: &mut String) {
        use std::fmt::Write;
        if let Some(last) = self.last.take() {
            let data = json!({"seq": last, "records": self.records, "tasks": self.tasks});
            let _ = write!(out, "id: {last}\nevent: changed\ndata: {data}\n\n");
        }
        self.records = 0;
        self.tasks.clear();
    }
}

/// `GET /events?fleet=true`: every node's records from the fleet's events stream, one event per
/// record, `data: {"node": …, "record": …}`; `id:` (on a message's last record) is the stream's
/// sequence, which `Last-Event-ID` / `?after=` resume after.
async fn fleet_events(st: &AppState, after: Option<u64>, q: &EventsQuery) -> ApiResult {
    if q.brief || q.task.is_some() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "`fleet=true` follows every node's records; it does not take `brief` or `task`",
        ));
    }
    let from = after.map_or(
        crate::fleet::events::StartAt::Next,
        crate::fleet::events::StartAt::After,
    );
    let rx = st.api.fleet_events(from).await.map_err(|e| {
        let (status, kind) = match e {
            crate::api::FleetEventsError::NotInFleet => (StatusCode::NOT_FOUND, "not_found"),
            crate::api::FleetEventsError::NotConnected
            | crate::api::FleetEventsError::Refused(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
        };
        ApiError::new(status, kind, e.to_string())
    })?;
    Ok(crate::web::event_stream(
        rx,
        |batch: &crate::fleet::events::NodeRecords, out: &mut String| {
            use std::fmt::Write;
            let last = batch.records.len().saturating_sub(1);
            for (i, line) in batch.records.iter().enumerate() {
                if i == last {
                    let _ = writeln!(out, "id: {}", batch.stream_seq);
                }
                // The node's name is a checked name (no quote to escape); the line a checked
                // record.
                let _ = write!(
                    out,
                    "data: {{\"node\":\"{}\",\"record\":{line}}}\n\n",
                    batch.node
                );
            }
        },
    ))
}

/// `GET /events`: Server-Sent Events, one per ledger record, `id:` = its sequence number.
/// Resumes after `Last-Event-ID` (or `?after=`); without either, starts with the next event.
pub(crate) async fn events(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> ApiResult {
    let after = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_request_error",
                        "`Last-Event-ID` must be a ledger sequence number",
                    )
                })?,
        ),
        None => q.after,
    };
    if q.fleet {
        return fleet_events(&st, after, &q).await;
    }
    let rx = st.api.events(after, q.task);
    if q.brief {
        return Ok(crate::web::event_stream(rx, Brief::default()));
    }
    Ok(crate::web::event_stream(
        rx,
        |item: &StreamItem, out: &mut String| {
            use std::fmt::Write;
            match item {
                // The record's JSON is one line, made once for every stream that sends it.
                StreamItem::Record(r) => {
                    let _ = write!(out, "id: {}\ndata: {}\n\n", r.seq, r.json());
                }
                StreamItem::Records(rs) => {
                    for r in rs {
                        let _ = write!(out, "id: {}\ndata: {}\n\n", r.seq, r.json());
                    }
                }
                StreamItem::Gap { after, next } => {
                    let _ = write!(
                        out,
                        "event: gap\ndata: {{\"after\":{after},\"next\":{next}}}\n\n"
                    );
                }
                // With an `id:`, so a browser resumes from the ledger's real position.
                StreamItem::Reset { after, newest } => {
                    let _ = write!(
                        out,
                        "id: {newest}\nevent: reset\ndata: {{\"after\":{after},\"newest\":{newest}}}\n\n"
                    );
                }
            }
        },
    ))
}
