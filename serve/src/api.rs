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
//! Every request records `chatpipe_serve_requests_total`, its latency and the HBase
//! operations it made (`chatpipe_serve_request_hbase_calls`), by route template.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{MatchedPath, Path, RawQuery, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::{Extension, Router};
use chatpipe_common::event::rfc3339_ms;
use chatpipe_ingest::{Auth, AuthFailure, RateLimits};
use chatpipe_sink::hbase::HbaseError;
use futures::{StreamExt, TryStreamExt};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::inbox::{merge_newest_first, Entry};
use crate::metrics::ServeMetrics;
use crate::push::Hub;
use crate::store::{self, Calls, Message, SessionInfo, Start, Store};

/// Largest `limit`.
pub const MAX_LIMIT: usize = 200;
/// `limit` when absent.
pub const DEFAULT_LIMIT: usize = 50;
/// Rows examined at most by one `after_seq` catch-up (bounds the cost of a request whose
/// `after_seq` is far from both ends of a long timeline).
pub const MAX_CATCH_UP_ROWS: usize = 20_000;
/// Large-group timelines scanned at once for one inbox page.
const MERGE_CONCURRENCY: usize = 8;
/// Session kinds remembered (a session's kind never changes); the map is cleared when full.
const KIND_CACHE_ENTRIES: usize = 1_000_000;
/// `Retry-After` of a 503.
const RETRY_AFTER_UNAVAILABLE: Duration = Duration::from_secs(1);
/// The OpenAPI document, served at `/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("../../docs/openapi.json");

/// Query parameters each route accepts (the OpenAPI test checks the document against these).
pub mod params {
    /// `GET /v1/sessions/{session}/messages`.
    pub const MESSAGES: &[&str] = &["limit", "before", "after_seq"];
    /// `GET /v1/users/{user}/inbox`.
    pub const INBOX: &[&str] = &["limit", "before"];
    /// `GET /v1/users/{user}/sessions`.
    pub const USER_SESSIONS: &[&str] = &["limit", "before"];
    /// `GET /v1/sessions/{session}/members`.
    pub const MEMBERS: &[&str] = &["limit", "after"];
    /// Routes without query parameters.
    pub const NONE: &[&str] = &[];
}

/// Everything a request needs.
pub(crate) struct AppState {
    pub(crate) auth: Auth,
    pub(crate) limits: Option<RateLimits>,
    pub(crate) inflight: Arc<Semaphore>,
    pub(crate) store: Store,
    pub(crate) metrics: ServeMetrics,
    pub(crate) kinds: Mutex<HashMap<u64, &'static str>>,
    pub(crate) fanout_max_members: u64,
    pub(crate) preview_chars: usize,
    pub(crate) push: Option<Arc<Hub>>,
    pub(crate) push_keepalive: Duration,
    pub(crate) max_push_clients: usize,
}

/// Why a request failed.
#[derive(Debug)]
pub(crate) enum ApiError {
    BadParam { parameter: String, message: String },
    NotFound(String),
    NoRoute,
    Unauthorized(AuthFailure),
    RateLimited(Duration),
    Overloaded,
    Unavailable(String),
    Internal(String),
}

impl From<HbaseError> for ApiError {
    fn from(e: HbaseError) -> Self {
        if e.is_retriable() {
            ApiError::Unavailable(format!("HBase is unavailable: {e}"))
        } else {
            ApiError::Internal(format!("HBase refused the read: {e}"))
        }
    }
}

pub(crate) fn bad(parameter: &str, message: impl Into<String>) -> ApiError {
    ApiError::BadParam { parameter: parameter.to_owned(), message: message.into() }
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadParam { .. } => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) | ApiError::NoRoute => StatusCode::NOT_FOUND,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Overloaded | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::BadParam { .. } => "invalid_parameter",
            ApiError::NotFound(_) => "not_found",
            ApiError::NoRoute => "no_route",
            ApiError::Unauthorized(AuthFailure::Missing) => "missing_api_key",
            ApiError::Unauthorized(AuthFailure::Invalid) => "invalid_api_key",
            ApiError::RateLimited(_) => "rate_limited",
            ApiError::Overloaded => "overloaded",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    fn message(&self) -> String {
        match self {
            ApiError::BadParam { parameter, message } => format!("invalid parameter `{parameter}`: {message}"),
            ApiError::NotFound(what) => format!("{what} not found"),
            ApiError::NoRoute => "no such route; see /openapi.json".into(),
            ApiError::Unauthorized(AuthFailure::Missing) => {
                "an `Authorization: Bearer <key>` header is required".into()
            }
            ApiError::Unauthorized(AuthFailure::Invalid) => "the API key is not valid".into(),
            ApiError::RateLimited(_) => "too many requests for this API key; retry after the given delay".into(),
            ApiError::Overloaded => "too many requests in progress; retry shortly".into(),
            ApiError::Unavailable(m) | ApiError::Internal(m) => m.clone(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let code = self.code();
        let message = self.message();
        let mut entry = json!({ "code": code, "message": message });
        if let ApiError::BadParam { parameter, .. } = &self {
            entry["parameter"] = json!(parameter);
        }
        let body = json!({ "code": code, "message": message, "errors": [entry] });
        let mut response = json_response(status, &body);
        let headers = response.headers_mut();
        let retry = match &self {
            ApiError::RateLimited(d) => Some(*d),
            ApiError::Overloaded | ApiError::Unavailable(_) => Some(RETRY_AFTER_UNAVAILABLE),
            _ => None,
        };
        if let Some(d) = retry {
            let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if matches!(self, ApiError::Unauthorized(_)) {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, Body::from(body.to_string())).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

type ApiResult = Result<Response, ApiError>;

fn ok(body: Value) -> ApiResult {
    Ok(json_response(StatusCode::OK, &body))
}

/// A decimal id: digits only, no sign, no leading zero, fits u64.
pub(crate) fn parse_id(parameter: &str, raw: &str) -> Result<u64, ApiError> {
    let valid = !raw.is_empty()
        && raw.len() <= 20
        && raw.bytes().all(|b| b.is_ascii_digit())
        && !(raw.len() > 1 && raw.starts_with('0'));
    valid
        .then(|| raw.parse::<u64>().ok())
        .flatten()
        .ok_or_else(|| bad(parameter, "expected a decimal id (digits only, at most 18446744073709551615)"))
}

/// The query parameters of a request, each at most once and each in `allowed`.
pub(crate) fn parse_query<'q>(raw: Option<&'q str>, allowed: &[&str]) -> Result<BTreeMap<&'q str, &'q str>, ApiError> {
    let mut out = BTreeMap::new();
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if !allowed.contains(&k) {
            let hint = if allowed.is_empty() { "none".to_owned() } else { allowed.join(", ") };
            return Err(bad(k, format!("unknown parameter (accepted: {hint})")));
        }
        if out.insert(k, v).is_some() {
            return Err(bad(k, "given more than once"));
        }
    }
    Ok(out)
}

fn limit_of(q: &BTreeMap<&str, &str>) -> Result<usize, ApiError> {
    match q.get("limit") {
        None => Ok(DEFAULT_LIMIT),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) && v.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
            _ => Err(bad("limit", format!("expected an integer from 1 to {MAX_LIMIT}"))),
        },
    }
}

fn opt_id(q: &BTreeMap<&str, &str>, name: &str) -> Result<Option<u64>, ApiError> {
    q.get(name).map(|v| parse_id(name, v)).transpose()
}

fn opt_seq(q: &BTreeMap<&str, &str>, name: &str) -> Result<Option<u64>, ApiError> {
    q.get(name)
        .map(|v| {
            (!v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()))
                .then(|| v.parse::<u64>().ok())
                .flatten()
                .ok_or_else(|| bad(name, "expected a non-negative integer seq"))
        })
        .transpose()
}

fn id_str(id: u64) -> Value {
    Value::String(id.to_string())
}

fn time(ms: Option<i64>) -> Value {
    ms.map_or(Value::Null, |m| Value::String(rfc3339_ms(m)))
}

/// A message as the API shows it: a recalled message has no body.
pub(crate) fn message_json(m: &Message) -> Value {
    let t = &m.m;
    json!({
        "message_id": id_str(t.message_id),
        "session_id": id_str(t.session_id),
        "sender_id": t.sender_id.map(id_str),
        "kind": t.kind,
        "body": if t.recalled { None } else { t.body.clone() },
        "sent_at": time(t.sent_at_ms),
        "seq": t.seq,
        "edited": t.edited,
        "recalled": t.recalled,
        "mentions": m.mentions.iter().map(|u| id_str(*u)).collect::<Vec<_>>(),
    })
}

fn session_json(s: &SessionInfo) -> Value {
    json!({
        "session_id": id_str(s.session_id),
        "kind": s.kind,
        "name": s.name,
        "created_at": time(s.created_at_ms),
        "members": s.members,
        "last_seq": s.last_seq,
        "last_message_id": s.last_message_id.map(id_str),
        "last_sent_at": time(s.last_sent_at_ms),
    })
}

/// The preview of a body, as the processor makes it (its first `chars` characters).
pub(crate) fn preview(body: Option<&str>, chars: usize) -> Option<String> {
    body.map(|b| b.chars().take(chars).collect())
}

impl AppState {
    fn remember_kind(&self, session: u64, kind: &str) {
        let table = store::timeline_table(kind);
        let mut k = self.kinds.lock();
        if k.len() >= KIND_CACHE_ENTRIES {
            k.clear();
        }
        k.insert(session, table);
    }

    /// The timeline table of a known session (404 when unknown); cached after the first read.
    async fn timeline_table(&self, calls: &Calls, session: u64) -> Result<&'static str, ApiError> {
        if let Some(t) = self.kinds.lock().get(&session) {
            return Ok(t);
        }
        let info = self.known_session(calls, session).await?;
        Ok(info.timeline_table())
    }

    async fn known_session(&self, calls: &Calls, session: u64) -> Result<SessionInfo, ApiError> {
        let info = self.store.session(calls, session).await?.ok_or_else(|| ApiError::NotFound("session".into()))?;
        self.remember_kind(session, &info.kind);
        Ok(info)
    }

    /// 404 unless the user has a profile or a session.
    async fn require_user(&self, calls: &Calls, user: u64) -> Result<(), ApiError> {
        if self.store.profile(calls, user).await?.is_some() {
            return Ok(());
        }
        if !self.store.user_sessions(calls, user, 1).await?.is_empty() {
            return Ok(());
        }
        Err(ApiError::NotFound("user".into()))
    }
}

async fn get_session(
    State(st): State<Arc<AppState>>,
    Extension(calls): Extension<Arc<Calls>>,
    Path(raw): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let session = parse_id("session", &raw)?;
    parse_query(q.as_deref(), params::NONE)?;
    let info = st.known_session(&calls, session).await?;
    ok(session_json(&info))
}

async fn get_messages(
    State(st): State<Arc<AppState>>,
    Extension(calls): Extension<Arc<Calls>>,
    Path(raw): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let session = parse_id("session", &raw)?;
    let q = parse_query(q.as_deref(), params::MESSAGES)?;
    let limit = limit_of(&q)?;
    let before = opt_id(&q, "before")?;
    let after_seq = opt_seq(&q, "after_seq")?;
    let Some(after) = after_seq else {
        let table = st.timeline_table(&calls, session).await?;
        let from = before.map_or(Start::Newest, Start::Before);
        let (messages, _) = st.store.timeline(&calls, table, session, from, None, limit).await?;
        let next_before = (messages.len() == limit).then(|| messages.last().map(|m| id_str(m.m.message_id))).flatten();
        return ok(json!({
            "session_id": id_str(session),
            "order": "newest_first",
            "messages": messages.iter().map(message_json).collect::<Vec<_>>(),
            "next_before": next_before,
        }));
    };
    if before.is_some() {
        return Err(bad("after_seq", "cannot be combined with `before`"));
    }
    let info = st.known_session(&calls, session).await?;
    let (messages, next) = catch_up(&st.store, &calls, &info, after, limit).await?;
    ok(json!({
        "session_id": id_str(session),
        "order": "oldest_first",
        "last_seq": info.last_seq,
        "messages": messages.iter().map(message_json).collect::<Vec<_>>(),
        "next_after_seq": next,
    }))
}

/// Messages with `seq` in `after+1 ..= after+limit`, oldest first, stopping at the first seq
/// not (yet) in HBase so that the answer never has a hole. The seq is dense but the rows are
/// ordered by message id, so this scans from whichever end of the timeline is closer to
/// `after` (newest first when fewer than `after` messages follow it, oldest first otherwise)
/// until every wanted seq was seen: the cost is
/// `O(min(after, last_seq − after) + limit)` rows, capped at [`MAX_CATCH_UP_ROWS`].
/// Returns the messages and the `after_seq` to ask next (`None`: caught up with `last_seq`).
async fn catch_up(
    store: &Store,
    calls: &Calls,
    info: &SessionInfo,
    after: u64,
    limit: usize,
) -> Result<(Vec<Message>, Option<u64>), ApiError> {
    let last = info.last_seq;
    if after >= last {
        return Ok((Vec::new(), None));
    }
    let hi = last.min(after.saturating_add(limit as u64));
    let want = (hi - after) as usize;
    let from_newest = last - after <= after;
    let skip = if from_newest { last - hi } else { after };
    let mut chunk = usize::try_from(skip).unwrap_or(usize::MAX).saturating_add(want).saturating_add(16).min(1000);
    let mut key = None;
    let mut found: BTreeMap<u64, Message> = BTreeMap::new();
    let mut examined = 0usize;
    loop {
        let from = if from_newest { Start::Key } else { Start::Oldest };
        let (rows, next) = store.timeline(calls, info.timeline_table(), info.session_id, from, key, chunk).await?;
        examined += rows.len();
        let exhausted = rows.len() < chunk;
        for m in rows {
            if let Some(s) = m.m.seq.filter(|s| *s > after && *s <= hi) {
                found.insert(s, m);
            }
        }
        if found.len() == want || exhausted || examined >= MAX_CATCH_UP_ROWS {
            break;
        }
        key = next;
        chunk = 1000;
    }
    let mut out = Vec::with_capacity(found.len());
    let mut expect = after + 1;
    for (s, m) in found {
        if s != expect {
            break;
        }
        out.push(m);
        expect += 1;
    }
    let reached = expect - 1;
    Ok((out, (reached < last).then_some(reached)))
}

async fn get_inbox(
    State(st): State<Arc<AppState>>,
    Extension(calls): Extension<Arc<Calls>>,
    Path(raw): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let user = parse_id("user", &raw)?;
    let q = parse_query(q.as_deref(), params::INBOX)?;
    let limit = limit_of(&q)?;
    let before = opt_id(&q, "before")?;
    let (rows, memberships) = futures::try_join!(
        st.store.inbox(&calls, user, before, limit),
        st.store.user_sessions(&calls, user, store::MAX_USER_SESSIONS)
    )?;
    if rows.is_empty() && memberships.is_empty() {
        st.require_user(&calls, user).await?;
    }
    let ids: Vec<u64> = memberships.iter().map(|m| m.session_id).collect();
    let infos = if ids.is_empty() { BTreeMap::new() } else { st.store.sessions(&calls, &ids).await? };
    for info in infos.values() {
        st.remember_kind(info.session_id, &info.kind);
    }
    let large: Vec<(u64, u64)> = memberships
        .iter()
        .filter(|m| infos.get(&m.session_id).is_some_and(|i| i.kind == "group" && i.members > st.fanout_max_members))
        .map(|m| (m.session_id, m.joined_seq))
        .collect();
    let from = before.map_or(Start::Newest, Start::Before);
    let store = &st.store;
    let calls_ref = &*calls;
    let preview_chars = st.preview_chars;
    let pages: Vec<Vec<Entry>> = futures::stream::iter(large)
        .map(|(session, joined_seq)| async move {
            let (messages, _) =
                store.timeline(calls_ref, store::timeline_table("group"), session, from, None, limit).await?;
            Ok::<_, HbaseError>(
                messages
                    .into_iter()
                    .filter(|m| m.m.seq.is_none_or(|s| s > joined_seq))
                    .map(|m| Entry::from_message(&m, preview_chars))
                    .collect(),
            )
        })
        .buffer_unordered(MERGE_CONCURRENCY)
        .try_collect()
        .await?;
    let mut lists = pages;
    lists.push(rows.iter().map(Entry::from_inbox).collect());
    let merged = merge_newest_first(lists, limit);
    let next_before = (merged.len() == limit).then(|| merged.last().map(|e| id_str(e.message_id))).flatten();
    ok(json!({
        "user_id": id_str(user),
        "entries": merged.iter().map(Entry::to_json).collect::<Vec<_>>(),
        "next_before": next_before,
    }))
}

/// A sessions-list cursor: `<activity ms>.<session id>`.
fn parse_session_cursor(raw: &str) -> Result<(i64, u64), ApiError> {
    let err = || bad("before", "expected the `cursor` of a session of the previous page (`<ms>.<session id>`)");
    let (ms, id) = raw.split_once('.').ok_or_else(err)?;
    let ms = (!ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit())).then(|| ms.parse::<i64>().ok()).flatten();
    let id = parse_id("before", id).ok();
    match (ms, id) {
        (Some(ms), Some(id)) => Ok((ms, id)),
        _ => Err(err()),
    }
}

async fn get_user_sessions(
    State(st): State<Arc<AppState>>,
    Extension(calls): Extension<Arc<Calls>>,
    Path(raw): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let user = parse_id("user", &raw)?;
    let q = parse_query(q.as_deref(), params::USER_SESSIONS)?;
    let limit = limit_of(&q)?;
    let cursor = q.get("before").map(|v| parse_session_cursor(v)).transpose()?;
    let memberships = st.store.user_sessions(&calls, user, store::MAX_USER_SESSIONS).await?;
    if memberships.is_empty() {
        st.require_user(&calls, user).await?;
        return ok(json!({ "user_id": id_str(user), "sessions": [], "next_before": null }));
    }
    let ids: Vec<u64> = memberships.iter().map(|m| m.session_id).collect();
    let infos = st.store.sessions(&calls, &ids).await?;
    let mut items: Vec<(i64, u64, &store::Membership, &SessionInfo)> = memberships
        .iter()
        .filter_map(|m| {
            let info = infos.get(&m.session_id)?;
            let activity = info.last_sent_at_ms.or(info.created_at_ms).or(m.joined_at_ms).unwrap_or(0);
            Some((activity, m.session_id, m, info))
        })
        .collect();
    items.sort_by_key(|i| std::cmp::Reverse((i.0, i.1)));
    if let Some(c) = cursor {
        items.retain(|i| (i.0, i.1) < c);
    }
    let more = items.len() > limit;
    items.truncate(limit);
    // the last messages of the page, one multi-get per timeline table
    let mut wanted: BTreeMap<&'static str, Vec<(u64, u64)>> = BTreeMap::new();
    for (_, session, _, info) in &items {
        if let Some(mid) = info.last_message_id {
            wanted.entry(info.timeline_table()).or_default().push((*session, mid));
        }
    }
    let mut last: HashMap<(u64, u64), Message> = HashMap::new();
    for (table, keys) in wanted {
        for m in st.store.messages(&calls, table, &keys).await? {
            last.insert((m.m.session_id, m.m.message_id), m);
        }
    }
    let sessions: Vec<Value> = items
        .iter()
        .map(|(activity, session, m, info)| {
            let last_message = info.last_message_id.and_then(|mid| last.get(&(*session, mid))).map(|msg| {
                json!({
                    "message_id": id_str(msg.m.message_id),
                    "sender_id": msg.m.sender_id.map(id_str),
                    "kind": msg.m.kind,
                    "preview": if msg.m.recalled { None } else { preview(msg.m.body.as_deref(), st.preview_chars) },
                    "sent_at": time(msg.m.sent_at_ms),
                    "seq": msg.m.seq,
                    "recalled": msg.m.recalled,
                })
            });
            json!({
                "session_id": id_str(*session),
                "kind": info.kind,
                "name": info.name,
                "members": info.members,
                "last_seq": info.last_seq,
                "read_seq": m.read_seq,
                "unread": info.last_seq.saturating_sub(m.read_seq),
                "joined_at": time(m.joined_at_ms),
                "last_activity_at": time(Some(*activity)),
                "last_message": last_message,
                "cursor": format!("{activity}.{session}"),
            })
        })
        .collect();
    let next_before = if more { items.last().map(|(a, s, _, _)| json!(format!("{a}.{s}"))) } else { None };
    ok(json!({ "user_id": id_str(user), "sessions": sessions, "next_before": next_before }))
}

async fn get_members(
    State(st): State<Arc<AppState>>,
    Extension(calls): Extension<Arc<Calls>>,
    Path(raw): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let session = parse_id("session", &raw)?;
    let q = parse_query(q.as_deref(), params::MEMBERS)?;
    let limit = limit_of(&q)?;
    let after = opt_id(&q, "after")?;
    st.timeline_table(&calls, session).await?; // 404 for an unknown session
    let members = st.store.members(&calls, session, after, limit).await?;
    let next_after = (members.len() == limit).then(|| members.last().map(|m| id_str(m.user_id))).flatten();
    ok(json!({
        "session_id": id_str(session),
        "members": members.iter().map(|m| json!({
            "user_id": id_str(m.user_id),
            "joined_at": time(m.joined_at_ms),
        })).collect::<Vec<_>>(),
        "next_after": next_after,
    }))
}

async fn get_user(
    State(st): State<Arc<AppState>>,
    Extension(calls): Extension<Arc<Calls>>,
    Path(raw): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let user = parse_id("user", &raw)?;
    parse_query(q.as_deref(), params::NONE)?;
    let profile = match st.store.profile(&calls, user).await? {
        Some(p) => p,
        None if !st.store.user_sessions(&calls, user, 1).await?.is_empty() => {
            store::Profile { user_id: user, name: None, avatar: None, updated_at_ms: None }
        }
        None => return Err(ApiError::NotFound("user".into())),
    };
    ok(json!({
        "user_id": id_str(profile.user_id),
        "name": profile.name,
        "avatar_url": profile.avatar,
        "updated_at": time(profile.updated_at_ms),
    }))
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
        ("/v1/sessions/{session}", params::NONE, get(get_session)),
        ("/v1/sessions/{session}/messages", params::MESSAGES, get(get_messages)),
        ("/v1/sessions/{session}/members", params::MEMBERS, get(get_members)),
        ("/v1/users/{user}", params::NONE, get(get_user)),
        ("/v1/users/{user}/inbox", params::INBOX, get(get_inbox)),
        ("/v1/users/{user}/sessions", params::USER_SESSIONS, get(get_user_sessions)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_strict_decimals() {
        assert_eq!(parse_id("session", "0").unwrap(), 0);
        assert_eq!(parse_id("session", "18446744073709551615").unwrap(), u64::MAX);
        for bad in ["", "-1", "+1", "01", "1.5", "abc", "18446744073709551616", " 1", "1e3"] {
            match parse_id("session", bad) {
                Err(ApiError::BadParam { parameter, .. }) => assert_eq!(parameter, "session"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn query_parameters_are_known_unique_and_bounded() {
        let q = parse_query(Some("limit=5&before=7"), params::MESSAGES).unwrap();
        assert_eq!(limit_of(&q).unwrap(), 5);
        assert_eq!(opt_id(&q, "before").unwrap(), Some(7));
        let name = |e: ApiError| match e {
            ApiError::BadParam { parameter, .. } => parameter,
            other => panic!("{other:?}"),
        };
        assert_eq!(name(parse_query(Some("limt=5"), params::MESSAGES).unwrap_err()), "limt");
        assert_eq!(name(parse_query(Some("limit=5&limit=6"), params::MESSAGES).unwrap_err()), "limit");
        for l in ["0", "201", "-1", "x", "", "+5"] {
            let raw = format!("limit={l}");
            let q = parse_query(Some(&raw), params::MESSAGES).unwrap();
            assert_eq!(name(limit_of(&q).unwrap_err()), "limit", "{l}");
        }
        assert_eq!(limit_of(&parse_query(None, params::MESSAGES).unwrap()).unwrap(), DEFAULT_LIMIT);
        let q = parse_query(Some("after_seq=x"), params::MESSAGES).unwrap();
        assert_eq!(name(opt_seq(&q, "after_seq").unwrap_err()), "after_seq");
    }

    #[test]
    fn session_cursors_round_trip() {
        assert_eq!(parse_session_cursor("1767225600000.42").unwrap(), (1_767_225_600_000, 42));
        for bad in ["", "1", ".1", "1.", "x.1", "1.x", "1.01"] {
            assert!(parse_session_cursor(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_are_json_naming_the_parameter() {
        let r = bad("limit", "too big").into_response();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        let r = ApiError::RateLimited(Duration::from_millis(1500)).into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
        let r = ApiError::Unauthorized(AuthFailure::Missing).into_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }

    #[test]
    fn previews_count_characters() {
        assert_eq!(preview(Some("héllo wörld"), 4).as_deref(), Some("héll"));
        assert_eq!(preview(None, 4), None);
    }
}
