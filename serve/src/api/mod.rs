//! The HTTP read API (`/v1/...`) and its request pipeline.
//!
//! A request goes through, in order: the route (404 `no_route` JSON for unknown paths),
//! authentication (401), the API key's rate limit (429 with `Retry-After`), an in-flight slot
//! (503), parameter parsing (400 naming the parameter: unknown, repeated or malformed
//! parameters, `limit` outside 1..=200), then its HBase reads (404 `not_found` for an unknown
//! session or user; 503 when HBase is unreachable, 500 for a permanent HBase error). Every
//! non-2xx answer is JSON `{"code", "message", "errors": [{"code", "message", "parameter"?}]}`.
//!
//! Ids are decimal strings in and out (64-bit ids exceed JavaScript's numbers), times RFC
//! 3339 UTC with milliseconds. Cursors are documented values, not opaque blobs:
//! `before` = the last `message_id` of the previous page (messages, inbox), `after_seq` = the
//! last `seq` received (catch-up, oldest first), `after` = the last member's `user_id`, and
//! for the sessions list `before` = the `cursor` field of the last session (`<activity ms>.<session id>`).
//!
//! Handlers by role: `sessions.rs` (a session, its timeline, its members), `users.rs` (a
//! user's sessions list, a profile), `inbox.rs` (inbox pages with read fan-out); parameters
//! in `params.rs`, errors in `errors.rs`, JSON shapes in `views.rs`.
//!
//! Every request records `chatpipe_serve_requests_total`, its latency and the HBase
//! operations it made (`chatpipe_serve_request_hbase_calls`), by route template.

mod errors;
mod inbox;
pub mod params;
mod sessions;
mod users;
mod views;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::Router;
use chatpipe_ingest::{Auth, RateLimits};
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::Semaphore;

pub(crate) use errors::{bad, json_response, ApiError};
pub(crate) use params::{parse_id, parse_query};
pub(crate) use views::preview;

use crate::large_groups::LargeGroups;
use crate::metrics::ServeMetrics;
use crate::push::Hub;
use crate::store::{self, Calls, SessionInfo, Store};

/// Largest `limit`.
pub const MAX_LIMIT: usize = 200;
/// `limit` when absent.
pub const DEFAULT_LIMIT: usize = 50;
/// Rows examined at most by one `after_seq` catch-up (bounds the cost of a request whose
/// `after_seq` is far from both ends of a long timeline).
pub const MAX_CATCH_UP_ROWS: usize = 20_000;
/// Session kinds remembered (a session's kind never changes); the map is cleared when full.
const KIND_CACHE_ENTRIES: usize = 1_000_000;
/// The OpenAPI document, served at `/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("../../../docs/openapi.json");

/// Everything a request needs.
pub(crate) struct AppState {
    pub(crate) auth: Auth,
    pub(crate) limits: Option<RateLimits>,
    pub(crate) inflight: Arc<Semaphore>,
    pub(crate) store: Store,
    pub(crate) metrics: ServeMetrics,
    pub(crate) kinds: Mutex<HashMap<u64, &'static str>>,
    pub(crate) large_groups: Arc<LargeGroups>,
    pub(crate) preview_chars: usize,
    pub(crate) push: Option<Arc<Hub>>,
    pub(crate) push_keepalive: Duration,
    pub(crate) max_push_clients: usize,
}

impl AppState {
    pub(crate) fn remember_kind(&self, session: u64, kind: &str) {
        let table = store::timeline_table(kind);
        let mut k = self.kinds.lock();
        if k.len() >= KIND_CACHE_ENTRIES {
            k.clear();
        }
        k.insert(session, table);
    }

    /// The timeline table of a known session (404 when unknown); cached after the first read.
    pub(crate) async fn timeline_table(&self, calls: &Calls, session: u64) -> Result<&'static str, ApiError> {
        if let Some(t) = self.kinds.lock().get(&session) {
            return Ok(t);
        }
        let info = self.known_session(calls, session).await?;
        Ok(info.timeline_table())
    }

    pub(crate) async fn known_session(&self, calls: &Calls, session: u64) -> Result<SessionInfo, ApiError> {
        let info = self.store.session(calls, session).await?.ok_or_else(|| ApiError::NotFound("session".into()))?;
        self.remember_kind(session, &info.kind);
        Ok(info)
    }

    /// 404 unless the user has a profile or a session.
    pub(crate) async fn require_user(&self, calls: &Calls, user: u64) -> Result<(), ApiError> {
        if self.store.profile(calls, user).await?.is_some() {
            return Ok(());
        }
        if !self.store.user_sessions(calls, user, 1).await?.is_empty() {
            return Ok(());
        }
        Err(ApiError::NotFound("user".into()))
    }
}

async fn openapi() -> Response {
    let mut r = (StatusCode::OK, OPENAPI_JSON).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

async fn no_route() -> Response {
    ApiError::NoRoute.into_response()
}

async fn method_not_allowed() -> Response {
    let mut r = json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &json!({"code": "method_not_allowed", "message": "use GET", "errors": [{"code": "method_not_allowed", "message": "use GET"}]}),
    );
    r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET"));
    r
}

/// The API routes with their handlers: the router is built from this list, and the OpenAPI
/// test compares the document with it.
/// A route: path template, accepted query parameters, handler.
pub(crate) type Route = (&'static str, &'static [&'static str], MethodRouter<Arc<AppState>>);

pub(crate) fn routes() -> Vec<Route> {
    vec![
        ("/v1/sessions/{session}", params::NONE, get(sessions::get_session)),
        ("/v1/sessions/{session}/messages", params::MESSAGES, get(sessions::get_messages)),
        ("/v1/sessions/{session}/members", params::MEMBERS, get(sessions::get_members)),
        ("/v1/users/{user}", params::NONE, get(users::get_user)),
        ("/v1/users/{user}/inbox", params::INBOX, get(inbox::get_inbox)),
        ("/v1/users/{user}/sessions", params::USER_SESSIONS, get(users::get_user_sessions)),
        ("/v1/users/{user}/stream", crate::push::PARAMS, get(crate::push::stream)),
    ]
}

/// `(path template, query parameters)` of every authenticated `GET` route.
pub fn route_table() -> Vec<(&'static str, &'static [&'static str])> {
    routes().into_iter().map(|(p, q, _)| (p, q)).collect()
}

/// Authentication, rate limit and an in-flight slot (held until the response head is
/// ready, so a push stream does not keep one).
async fn authorize(State(st): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let client = match st.auth.authenticate(request.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes)) {
        Ok(c) => c,
        Err(f) => return ApiError::Unauthorized(f).into_response(),
    };
    if let Some(limits) = &st.limits {
        if let Err(wait) = limits.check(client) {
            return ApiError::RateLimited(wait).into_response();
        }
    }
    let Ok(_permit) = st.inflight.clone().try_acquire_owned() else {
        return ApiError::Overloaded.into_response();
    };
    next.run(request).await
}

/// Per-route metrics; hands each request its HBase call counter.
async fn observe(State(st): State<Arc<AppState>>, mut request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or("other", |m| m.as_str()).to_owned();
    let calls = Arc::new(Calls::default());
    request.extensions_mut().insert(calls.clone());
    let started = Instant::now();
    let response = next.run(request).await;
    let m = &st.metrics;
    m.requests.with_label_values(&[route.as_str(), response.status().as_str()]).inc();
    m.request_duration.with_label_values(&[route.as_str()]).observe(started.elapsed().as_secs_f64());
    m.request_hbase_calls.with_label_values(&[route.as_str()]).observe(f64::from(calls.get()));
    response
}

/// The API router.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    let mut api = Router::new();
    for (path, _, handler) in routes() {
        api = api.route(path, handler.fallback(method_not_allowed));
    }
    api.route_layer(from_fn_with_state(state.clone(), authorize))
        .route("/openapi.json", get(openapi))
        .fallback(no_route)
        .layer(from_fn_with_state(state.clone(), observe))
        .with_state(state)
}
