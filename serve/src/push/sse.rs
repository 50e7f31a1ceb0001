//! `GET /v1/users/{user}/stream`: opens a Server-Sent-Events stream of the user's events.
//!
//! A new user's sessions are loaded from HBase (one `chat:user_sessions` scan and one
//! `chat:sessions` multi-get), then the stream is registered with the hub, replaying after
//! `Last-Event-ID` (or `?last_event_id=`) when given. Answers: 400 for a malformed position
//! (naming the header or parameter), 503 when push is off, the feed is not assigned yet or
//! `--max-push-clients` streams are open; the stream ends when the client is too slow or
//! serve shuts down.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::json;

use super::hub::{Snapshot, Tracked};
use super::position::Position;
use super::PARAMS;
use crate::api::{bad, json_response, parse_id, parse_query, ApiError, AppState};
use crate::store::{self, Calls};

/// Loads a user's sessions from HBase for a new stream.
async fn snapshot(st: &AppState, calls: &Calls, user: u64) -> Result<Snapshot, ApiError> {
    let memberships = st.store.user_sessions(calls, user, store::MAX_USER_SESSIONS).await?;
    let ids: Vec<u64> = memberships.iter().map(|m| m.session_id).collect();
    let infos = if ids.is_empty() { BTreeMap::new() } else { st.store.sessions(calls, &ids).await? };
    let sessions = memberships
        .iter()
        .map(|m| {
            let info = infos.get(&m.session_id);
            (
                m.session_id,
                Tracked {
                    members: info.map_or(0, |i| i.members),
                    joined_seq: m.joined_seq,
                    read_seq: m.read_seq,
                    last_seq: info.map_or(0, |i| i.last_seq),
                    sent: None,
                },
            )
        })
        .collect();
    Ok(Snapshot { sessions })
}

/// `GET /v1/users/{user}/stream`.
pub(crate) async fn stream(
    State(st): State<Arc<AppState>>,
    Extension(calls): Extension<Arc<Calls>>,
    Path(raw): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    match open(&st, &calls, &raw, q.as_deref(), &headers).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn open(
    st: &AppState,
    calls: &Calls,
    raw: &str,
    q: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let user = parse_id("user", raw)?;
    let q = parse_query(q, PARAMS)?;
    let resume = match (headers.get("last-event-id"), q.get("last_event_id")) {
        (Some(h), _) => {
            let s = h.to_str().map_err(|_| bad("Last-Event-ID", "not ASCII"))?;
            Some(Position::parse(s).ok_or_else(|| bad("Last-Event-ID", "not an event id of this stream"))?)
        }
        (None, Some(v)) => {
            Some(Position::parse(v).ok_or_else(|| bad("last_event_id", "not an event id of this stream"))?)
        }
        (None, None) => None,
    };
    let Some(hub) = st.push.clone() else {
        return Ok(json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"code": "push_disabled", "message": "live push is off on this server (--no-push)", "errors": [{"code": "push_disabled", "message": "live push is off"}]}),
        ));
    };
    if st.metrics.push_clients.get() >= st.max_push_clients as i64 {
        return Err(ApiError::Overloaded);
    }
    if !hub.is_ready() {
        return Err(ApiError::Unavailable("the push feed is not assigned yet".into()));
    }
    let snap = if hub.has_user(user) { None } else { Some(snapshot(st, calls, user).await?) };
    let rx = hub.subscribe(user, snap, resume);
    let gauge = st.metrics.push_clients.clone();
    gauge.inc();
    let guard = GaugeGuard(gauge);
    let events = futures::stream::unfold((rx, guard), |(mut rx, guard)| async move {
        let ev = rx.recv().await?;
        Some((Ok::<Event, Infallible>(ev.sse()), (rx, guard)))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(st.push_keepalive)).into_response())
}

struct GaugeGuard(prometheus::IntGauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
