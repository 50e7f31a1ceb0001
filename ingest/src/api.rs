//! The HTTP API: `POST /v1/events`.
//!
//! A request goes through, in order: authentication (401), the key's request rate (429),
//! content type and encoding (415), the declared length (413), readiness (503), the body —
//! received whole within `--max-body-bytes` (413), `--read-timeout` (408) and the shared
//! `--max-buffered-body-bytes` (503) **before** any in-flight slot is taken, so slow
//! clients cannot hold the slots fast ones need (`body.rs`) — the event count (more than
//! `--max-batch`: 400 before anything is parsed), an in-flight slot (503), parsing and
//! validation of every event (400, nothing produced), the key's event rate (429, all the
//! request's events or none), id assignment, and publishing (202 once Kafka acknowledged
//! every event; 503 with per-event statuses otherwise). Every non-2xx answer has a JSON
//! body `{"code", "message", "errors": [{"code", "message", ...}]}`; a 400 lists the
//! validation errors with their `index` and `field`. Nothing of a refused request is
//! produced.
//!
//! Memory of one request: its body (≤ `--max-body-bytes`, counted in the shared budget
//! until parsed) and at most `--max-batch` parsed events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use chatpipe_common::event::{self, BodyFormat, ChatEvent, FieldError, ParseLimits};
use chatpipe_common::snowflake::Snowflake;
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::auth::{Auth, AuthFailure, RateLimits};
use crate::body::{self, BodyBudget, ReadError};
use crate::metrics::{reason, route, InflightGuard, IngestMetrics};
use crate::producer::{Delivery, EventProducer};

/// `Retry-After` of a 503 (overload, Kafka trouble): short, the condition is transient.
const RETRY_AFTER_UNAVAILABLE: Duration = Duration::from_secs(1);

/// Everything a request needs.
pub(crate) struct AppState {
    pub(crate) auth: Auth,
    pub(crate) limits: Option<RateLimits>,
    pub(crate) event_limits: Option<RateLimits>,
    pub(crate) inflight: Arc<Semaphore>,
    pub(crate) body_budget: BodyBudget,
    pub(crate) producer: Arc<EventProducer>,
    pub(crate) ids: Snowflake,
    pub(crate) metrics: IngestMetrics,
    pub(crate) parse_limits: ParseLimits,
    pub(crate) max_body_bytes: usize,
    pub(crate) max_skew_ms: i64,
    pub(crate) read_timeout: Duration,
}

/// The API router.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    let other = state.clone();
    Router::new()
        .route("/v1/events", post(post_events).fallback(method_not_allowed))
        .fallback(move || not_found(other.clone()))
        .with_state(state)
}

/// One event's outcome in a 202 or 503 body.
#[derive(Debug, Serialize)]
pub(crate) struct EventResult {
    index: usize,
    /// A decimal string (64-bit ids exceed JavaScript's precision), written without an
    /// intermediate `String`.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ser_opt_id")]
    message_id: Option<u64>,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retriable: Option<bool>,
}

fn ser_opt_id<S: serde::Serializer>(id: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match id {
        Some(id) => s.serialize_str(itoa::Buffer::new().format(*id)),
        None => s.serialize_none(),
    }
}

#[derive(Serialize)]
struct Accepted {
    results: Vec<EventResult>,
}

/// A non-field error entry.
#[derive(Serialize)]
struct ErrorEntry<'a> {
    code: &'a str,
    message: &'a str,
}

#[derive(Serialize)]
struct ErrorBody<'a, E: Serialize> {
    code: &'a str,
    message: &'a str,
    errors: E,
    #[serde(skip_serializing_if = "Option::is_none")]
    results: Option<Vec<EventResult>>,
}

/// Why a request was not accepted.
#[derive(Debug)]
pub(crate) enum Rejection {
    Unauthorized(AuthFailure),
    RateLimited(Duration),
    EventRateLimited(Duration),
    UnsupportedMediaType(String),
    UnsupportedEncoding(String),
    TooLarge(usize),
    ReadTimeout,
    BadBody(String),
    Invalid(Vec<FieldError>),
    Overloaded,
    BodyBufferFull,
    NotReady,
    Clock(String),
    ProduceFailed(Vec<EventResult>),
    NotFound,
    MethodNotAllowed,
}

impl Rejection {
    fn status(&self) -> StatusCode {
        match self {
            Rejection::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Rejection::RateLimited(_) | Rejection::EventRateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Rejection::UnsupportedMediaType(_) | Rejection::UnsupportedEncoding(_) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            Rejection::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::ReadTimeout => StatusCode::REQUEST_TIMEOUT,
            Rejection::BadBody(_) | Rejection::Invalid(_) => StatusCode::BAD_REQUEST,
            Rejection::Overloaded
            | Rejection::BodyBufferFull
            | Rejection::NotReady
            | Rejection::Clock(_)
            | Rejection::ProduceFailed(_) => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::NotFound => StatusCode::NOT_FOUND,
            Rejection::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// The `code` of the body (and the `reason` label of rejected requests).
    fn code(&self) -> &'static str {
        match self {
            Rejection::Unauthorized(AuthFailure::Missing) => reason::MISSING_API_KEY,
            Rejection::Unauthorized(AuthFailure::Invalid) => reason::INVALID_API_KEY,
            Rejection::RateLimited(_) => reason::RATE_LIMITED,
            Rejection::EventRateLimited(_) => reason::EVENT_RATE_LIMITED,
            Rejection::UnsupportedMediaType(_) => reason::UNSUPPORTED_MEDIA_TYPE,
            Rejection::UnsupportedEncoding(_) => "unsupported_encoding",
            Rejection::TooLarge(_) => reason::BODY_TOO_LARGE,
            Rejection::ReadTimeout => reason::READ_TIMEOUT,
            Rejection::BadBody(_) => reason::BAD_BODY,
            Rejection::Invalid(_) => reason::INVALID_EVENTS,
            Rejection::Overloaded => reason::OVERLOADED,
            Rejection::BodyBufferFull => reason::BODY_BUFFER_FULL,
            Rejection::NotReady => reason::NOT_READY,
            Rejection::Clock(_) => reason::CLOCK,
            Rejection::ProduceFailed(_) => "produce_failed",
            Rejection::NotFound => "not_found",
            Rejection::MethodNotAllowed => "method_not_allowed",
        }
    }

    fn message(&self) -> String {
        match self {
            Rejection::Unauthorized(AuthFailure::Missing) => {
                "an `Authorization: Bearer <key>` header is required".into()
            }
            Rejection::Unauthorized(AuthFailure::Invalid) => "the API key is not valid".into(),
            Rejection::RateLimited(_) => "too many requests for this API key; retry after the given delay".into(),
            Rejection::EventRateLimited(_) => {
                "too many events for this API key; retry after the given delay (nothing was accepted)".into()
            }
            Rejection::UnsupportedMediaType(got) => {
                format!("content type {got} is not accepted; send application/json or application/x-ndjson")
            }
            Rejection::UnsupportedEncoding(got) => format!("content encoding {got} is not accepted"),
            Rejection::TooLarge(limit) => format!("the request body is larger than {limit} bytes"),
            Rejection::ReadTimeout => "the request body was not received in time".into(),
            Rejection::BadBody(e) => format!("the request body could not be read: {e}"),
            Rejection::Invalid(errors) => format!("{} invalid field(s); nothing was accepted", errors.len()),
            Rejection::Overloaded => "too many requests in progress; retry shortly".into(),
            Rejection::BodyBufferFull => "too many request bodies being received; retry shortly".into(),
            Rejection::NotReady => "ingest is not ready (Kafka topic not available or shutting down)".into(),
            Rejection::Clock(e) => format!("message ids cannot be generated now: {e}"),
            Rejection::ProduceFailed(results) => {
                let failed = results.iter().filter(|r| r.status != "accepted").count();
                format!(
                    "{failed} of {} events were not acknowledged by Kafka; retry those (same client_msg_id)",
                    results.len()
                )
            }
            Rejection::NotFound => "no such route; events go to POST /v1/events".into(),
            Rejection::MethodNotAllowed => "use POST".into(),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Rejection::RateLimited(d) | Rejection::EventRateLimited(d) => Some(*d),
            Rejection::Overloaded
            | Rejection::BodyBufferFull
            | Rejection::NotReady
            | Rejection::Clock(_)
            | Rejection::ProduceFailed(_) => Some(RETRY_AFTER_UNAVAILABLE),
            _ => None,
        }
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let status = self.status();
        let code = self.code();
        let message = self.message();
        let retry_after = self.retry_after();
        let unauthorized = matches!(self, Rejection::Unauthorized(_));
        let body = match self {
            Rejection::Invalid(errors) => {
                serde_json::to_vec(&ErrorBody { code, message: &message, errors, results: None })
            }
            Rejection::ProduceFailed(results) => serde_json::to_vec(&ErrorBody {
                code,
                message: &message,
                errors: [ErrorEntry { code, message: &message }],
                results: Some(results),
            }),
            _ => serde_json::to_vec(&ErrorBody {
                code,
                message: &message,
                errors: [ErrorEntry { code, message: &message }],
                results: None,
            }),
        };
        let mut response = json_response(status, body);
        let headers = response.headers_mut();
        if let Some(d) = retry_after {
            // Whole seconds, rounded up, at least 1 (RFC 9110 delay-seconds).
            let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if unauthorized {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

fn json_response(status: StatusCode, body: Result<Vec<u8>, serde_json::Error>) -> Response {
    // Serializing strings, numbers and these plain structs cannot fail; keep a body anyway.
    let body = body.unwrap_or_else(|_| br#"{"code":"internal","message":"response encoding failed"}"#.to_vec());
    let mut response = (status, Body::from(body)).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

async fn not_found(state: Arc<AppState>) -> Response {
    state.metrics.requests.with_label_values(&[route::OTHER, "404"]).inc();
    Rejection::NotFound.into_response()
}

async fn method_not_allowed(State(state): State<Arc<AppState>>) -> Response {
    state.metrics.requests.with_label_values(&[route::OTHER, "405"]).inc();
    let mut r = Rejection::MethodNotAllowed.into_response();
    r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
    r
}

async fn post_events(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let started = Instant::now();
    let response = match handle(&state, request).await {
        Ok(accepted) => json_response(StatusCode::ACCEPTED, serde_json::to_vec(&accepted)),
        Err(rejection) => {
            if !matches!(rejection, Rejection::ProduceFailed(_)) {
                state.metrics.requests_rejected.with_label_values(&[rejection.code()]).inc();
            }
            rejection.into_response()
        }
    };
    state.metrics.requests.with_label_values(&[route::EVENTS, response.status().as_str()]).inc();
    state.metrics.request_duration.with_label_values(&[route::EVENTS]).observe(started.elapsed().as_secs_f64());
    response
}

/// The body format of a content type, if accepted.
pub(crate) fn body_format(content_type: &str) -> Option<BodyFormat> {
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if mime.eq_ignore_ascii_case("application/json") {
        Some(BodyFormat::Json)
    } else if mime.eq_ignore_ascii_case("application/x-ndjson") || mime.eq_ignore_ascii_case("application/ndjson") {
        Some(BodyFormat::Ndjson)
    } else {
        None
    }
}

fn check_headers(headers: &HeaderMap, max_body: usize) -> Result<BodyFormat, Rejection> {
    let content_type = headers.get(header::CONTENT_TYPE).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let format = content_type
        .as_deref()
        .and_then(body_format)
        .ok_or_else(|| Rejection::UnsupportedMediaType(content_type.unwrap_or_else(|| "(none)".into())))?;
    if let Some(enc) = headers.get(header::CONTENT_ENCODING) {
        let enc = String::from_utf8_lossy(enc.as_bytes());
        if !enc.trim().eq_ignore_ascii_case("identity") {
            return Err(Rejection::UnsupportedEncoding(enc.into_owned()));
        }
    }
    if let Some(len) = headers.get(header::CONTENT_LENGTH) {
        let declared = len.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok());
        match declared {
            Some(n) if n > max_body as u64 => return Err(Rejection::TooLarge(max_body)),
            Some(_) => {}
            None => return Err(Rejection::BadBody("invalid Content-Length".into())),
        }
    }
    Ok(format)
}

async fn handle(state: &AppState, request: Request) -> Result<Accepted, Rejection> {
    let (parts, body) = request.into_parts();
    let client = state
        .auth
        .authenticate(parts.headers.get(header::AUTHORIZATION).map(HeaderValue::as_bytes))
        .map_err(Rejection::Unauthorized)?;
    if let Some(limits) = &state.limits {
        limits.check(client).map_err(Rejection::RateLimited)?;
    }
    let format = check_headers(&parts.headers, state.max_body_bytes)?;
    if !state.producer.topic_ready() {
        return Err(Rejection::NotReady);
    }
    // The body first, outside any in-flight slot: a slow client holds its connection and
    // the bytes it sent, nothing a fast client needs.
    let received = body::read_body(body, state.max_body_bytes, state.read_timeout, &state.body_budget).await.map_err(
        |e| match e {
            ReadError::TooLarge => Rejection::TooLarge(state.max_body_bytes),
            ReadError::Timeout => Rejection::ReadTimeout,
            ReadError::BudgetSpent => Rejection::BodyBufferFull,
            ReadError::Failed(e) => Rejection::BadBody(e),
        },
    )?;
    let max_events = state.parse_limits.max_events;
    if body::too_many_events(&received.bytes, format, max_events) {
        let errors = vec![too_many_events(max_events)];
        count_invalid(&state.metrics, &errors);
        return Err(Rejection::Invalid(errors));
    }

    let _permit = state.inflight.clone().try_acquire_owned().map_err(|_| Rejection::Overloaded)?;
    let _inflight = InflightGuard::new(&state.metrics.inflight);
    let inputs = event::parse_body(&received.bytes, format, state.parse_limits).map_err(|errors| {
        count_invalid(&state.metrics, &errors);
        Rejection::Invalid(errors)
    })?;
    drop(received);
    if let Some(limits) = &state.event_limits {
        let n = u32::try_from(inputs.len()).unwrap_or(u32::MAX);
        limits.check_n(client, n).map_err(Rejection::EventRateLimited)?;
    }

    let ingested_at = chrono::Utc::now().timestamp_millis();
    let mut ids = Vec::with_capacity(inputs.len());
    state.ids.next_ids(inputs.len(), &mut ids).map_err(|e| {
        state.metrics.error(crate::metrics::kind::CLOCK);
        tracing::warn!(error = %e, "snowflake generator refused; answering 503");
        Rejection::Clock(e.to_string())
    })?;
    let events: Vec<ChatEvent> = inputs
        .into_iter()
        .zip(ids)
        .map(|(input, id)| ChatEvent::from_input(input, id, ingested_at, state.max_skew_ms))
        .collect();

    let deliveries = state.producer.publish(&events).await;
    let all_accepted = deliveries.iter().all(|d| matches!(d, Delivery::Accepted { .. }));
    let results: Vec<EventResult> = events
        .iter()
        .zip(deliveries)
        .enumerate()
        .map(|(index, (ev, d))| match d {
            Delivery::Accepted { .. } => EventResult {
                index,
                message_id: Some(ev.message_id),
                status: "accepted",
                code: None,
                message: None,
                retriable: None,
            },
            Delivery::Failed(f) => EventResult {
                index,
                message_id: None,
                status: "failed",
                code: Some(f.code),
                message: Some(f.message),
                retriable: Some(f.retriable),
            },
        })
        .collect();
    if all_accepted {
        state.metrics.request_size.observe(results.len() as f64);
        Ok(Accepted { results })
    } else {
        Err(Rejection::ProduceFailed(results))
    }
}

/// The error of a body with more than `max_events` events: the one the parser gives (code
/// `too_many`, no index, the field empty: it is the request's), without its total, which
/// the scan does not count past the limit.
fn too_many_events(max_events: usize) -> FieldError {
    FieldError {
        index: None,
        field: String::new(),
        code: "too_many",
        message: format!("more than {max_events} events in one request; at most {max_events} are allowed"),
    }
}

/// Counts each invalid event once, by its first error's code.
fn count_invalid(metrics: &IngestMetrics, errors: &[FieldError]) {
    let mut last_index: Option<Option<usize>> = None;
    for e in errors {
        if last_index != Some(e.index) || e.index.is_none() {
            metrics.events_rejected.with_label_values(&[e.code]).inc();
            last_index = Some(e.index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(body_format("application/json"), Some(BodyFormat::Json));
        assert_eq!(body_format("Application/JSON; charset=utf-8"), Some(BodyFormat::Json));
        assert_eq!(body_format("application/x-ndjson"), Some(BodyFormat::Ndjson));
        assert_eq!(body_format("text/plain"), None);
        assert_eq!(body_format(""), None);
        assert_eq!(body_format("application/jsonx"), None);
    }

    #[test]
    fn rejections_have_json_bodies_codes_and_retry_after() {
        let r = Rejection::RateLimited(Duration::from_millis(1500)).into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        let r = Rejection::Unauthorized(AuthFailure::Missing).into_response();
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let r = Rejection::RateLimited(Duration::from_millis(10)).into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn declared_length_over_the_limit_is_413_before_reading() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("2000"));
        assert!(matches!(check_headers(&h, 1000), Err(Rejection::TooLarge(1000))));
        assert!(check_headers(&h, 2000).is_ok());
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        assert!(matches!(check_headers(&h, 2000), Err(Rejection::UnsupportedEncoding(_))));
    }
}
