//! Serve metrics: every name and label value in one place. The `route` label is the route
//! template (`/v1/sessions/{session}/messages`), never a concrete path: labels carry no
//! user, session or key identities.

use chatpipe_common::telemetry::{Metrics, LATENCY_BUCKETS};
use prometheus::{HistogramVec, IntCounter, IntCounterVec, IntGauge, Registry};

/// Requests by `route` and HTTP `status`.
pub const REQUESTS_TOTAL: &str = "chatpipe_serve_requests_total";
/// Request handling time by `route` (push streams: until the stream is opened).
pub const REQUEST_DURATION_SECONDS: &str = "chatpipe_serve_request_duration_seconds";
/// HBase operations (a scan or a multi-get, each a few Thrift round trips) per request, by
/// `route`.
pub const REQUEST_HBASE_CALLS: &str = "chatpipe_serve_request_hbase_calls";
/// HBase operations by `op` (`scan`, `get`).
pub const HBASE_CALLS_TOTAL: &str = "chatpipe_serve_hbase_calls_total";
/// HBase operation time by `op`.
pub const HBASE_CALL_DURATION_SECONDS: &str = "chatpipe_serve_hbase_call_duration_seconds";
/// Connected push (SSE) clients.
pub const PUSH_CLIENTS: &str = "chatpipe_serve_push_clients";
/// Push events sent to clients, by `type`.
pub const PUSH_EVENTS_TOTAL: &str = "chatpipe_serve_push_events_total";
/// `chat.rows` records the push feed consumed.
pub const PUSH_RECORDS_TOTAL: &str = "chatpipe_serve_push_records_total";
/// Stream resumes by `outcome` (`resumed`: from the retained events; `reset`: too old).
pub const PUSH_RESUMES_TOTAL: &str = "chatpipe_serve_push_resumes_total";
/// Push clients dropped because they did not keep up with their queue.
pub const PUSH_SLOW_CLIENTS_TOTAL: &str = "chatpipe_serve_push_slow_clients_total";
/// Operational errors by `kind`.
pub const ERRORS_TOTAL: &str = "chatpipe_serve_errors_total";

/// HBase operations per request: the target is 1 for a timeline page.
const CALL_BUCKETS: &[f64] = &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 12.0, 16.0, 32.0, 64.0];

/// Label names.
pub mod label {
    /// The route template.
    pub const ROUTE: &str = "route";
    /// HTTP status code.
    pub const STATUS: &str = "status";
    /// HBase operation.
    pub const OP: &str = "op";
    /// Push event type.
    pub const TYPE: &str = "type";
    /// Resume outcome.
    pub const OUTCOME: &str = "outcome";
    /// Error kind.
    pub const KIND: &str = "kind";
}

/// Values of the `op` label.
pub mod op {
    /// A scan (open, fetch, close).
    pub const SCAN: &str = "scan";
    /// A get of one or more rows.
    pub const GET: &str = "get";
}

/// Values of the `kind` label of [`ERRORS_TOTAL`].
pub mod kind {
    /// An HBase call failed.
    pub const HBASE: &str = "hbase";
    /// A row did not decode (foreign or corrupt data).
    pub const BAD_ROW: &str = "bad_row";
    /// The push consumer failed to read or decode a record.
    pub const PUSH_CONSUMER: &str = "push_consumer";
}

/// The registered metrics of one serve.
#[derive(Clone)]
pub struct ServeMetrics {
    /// [`REQUESTS_TOTAL`].
    pub requests: IntCounterVec,
    /// [`REQUEST_DURATION_SECONDS`].
    pub request_duration: HistogramVec,
    /// [`REQUEST_HBASE_CALLS`].
    pub request_hbase_calls: HistogramVec,
    /// [`HBASE_CALLS_TOTAL`].
    pub hbase_calls: IntCounterVec,
    /// [`HBASE_CALL_DURATION_SECONDS`].
    pub hbase_call_duration: HistogramVec,
    /// [`PUSH_CLIENTS`].
    pub push_clients: IntGauge,
    /// [`PUSH_EVENTS_TOTAL`].
    pub push_events: IntCounterVec,
    /// [`PUSH_RECORDS_TOTAL`].
    pub push_records: IntCounter,
    /// [`PUSH_RESUMES_TOTAL`].
    pub push_resumes: IntCounterVec,
    /// [`PUSH_SLOW_CLIENTS_TOTAL`].
    pub push_slow_clients: IntCounter,
    /// [`ERRORS_TOTAL`].
    pub errors: IntCounterVec,
}

impl ServeMetrics {
    /// Registers the serve metrics on `registry` (once per registry).
    pub fn new(registry: &Registry) -> Self {
        let m = Metrics(registry);
        ServeMetrics {
            requests: m.counter_vec(
                REQUESTS_TOTAL,
                "HTTP requests by route and status",
                &[label::ROUTE, label::STATUS],
            ),
            request_duration: m.histogram_vec(
                REQUEST_DURATION_SECONDS,
                "Request handling time in seconds",
                &[label::ROUTE],
                LATENCY_BUCKETS,
            ),
            request_hbase_calls: m.histogram_vec(
                REQUEST_HBASE_CALLS,
                "HBase operations (scans, multi-gets) per request",
                &[label::ROUTE],
                CALL_BUCKETS,
            ),
            hbase_calls: m.counter_vec(HBASE_CALLS_TOTAL, "HBase operations by op", &[label::OP]),
            hbase_call_duration: m.histogram_vec(
                HBASE_CALL_DURATION_SECONDS,
                "HBase operation time in seconds",
                &[label::OP],
                LATENCY_BUCKETS,
            ),
            push_clients: m.gauge(PUSH_CLIENTS, "Connected push (SSE) clients"),
            push_events: m.counter_vec(PUSH_EVENTS_TOTAL, "Push events sent, by type", &[label::TYPE]),
            push_records: m.counter(PUSH_RECORDS_TOTAL, "chat.rows records read by the push feed"),
            push_resumes: m.counter_vec(PUSH_RESUMES_TOTAL, "Push stream resumes by outcome", &[label::OUTCOME]),
            push_slow_clients: m.counter(PUSH_SLOW_CLIENTS_TOTAL, "Push clients dropped for not keeping up"),
            errors: m.counter_vec(ERRORS_TOTAL, "Operational errors by kind", &[label::KIND]),
        }
    }

    /// Counts one operational error.
    pub fn error(&self, kind: &str) {
        self.errors.with_label_values(&[kind]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_convention_and_register() {
        let registry = Registry::new();
        let m = ServeMetrics::new(&registry);
        m.error(kind::HBASE);
        m.requests.with_label_values(&["/v1/users/{user}", "200"]).inc();
        m.request_duration.with_label_values(&["/v1/users/{user}"]).observe(0.01);
        m.request_hbase_calls.with_label_values(&["/v1/users/{user}"]).observe(1.0);
        m.hbase_calls.with_label_values(&[op::SCAN]).inc();
        m.hbase_call_duration.with_label_values(&[op::SCAN]).observe(0.001);
        m.push_events.with_label_values(&["inbox"]).inc();
        m.push_resumes.with_label_values(&["resumed"]).inc();
        m.push_records.inc();
        m.push_slow_clients.inc();
        let names: Vec<String> = registry.gather().iter().map(|f| f.name().to_owned()).collect();
        for name in [
            REQUESTS_TOTAL,
            REQUEST_DURATION_SECONDS,
            REQUEST_HBASE_CALLS,
            HBASE_CALLS_TOTAL,
            HBASE_CALL_DURATION_SECONDS,
            PUSH_CLIENTS,
            PUSH_EVENTS_TOTAL,
            PUSH_RECORDS_TOTAL,
            PUSH_RESUMES_TOTAL,
            PUSH_SLOW_CLIENTS_TOTAL,
            ERRORS_TOTAL,
        ] {
            assert!(name.starts_with("chatpipe_serve_"), "{name}");
            assert!(names.iter().any(|n| n == name), "{name} not registered");
        }
    }
}
