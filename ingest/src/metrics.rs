//! Ingest metrics: every name and label value in one place. Labels never carry user,
//! session or key identities.

use chatpipe_common::telemetry::{Metrics, LATENCY_BUCKETS, SIZE_BUCKETS};
use prometheus::{Histogram, HistogramVec, IntCounterVec, IntGauge, Registry};

/// Requests by `route` and HTTP `status`.
pub const REQUESTS_TOTAL: &str = "chatpipe_ingest_requests_total";
/// Requests refused before any event was produced, by `reason` (see [`reason`]).
pub const REQUESTS_REJECTED_TOTAL: &str = "chatpipe_ingest_requests_rejected_total";
/// Events handed to Kafka, by `outcome` (`accepted`: acknowledged; `failed`: not).
pub const EVENTS_TOTAL: &str = "chatpipe_ingest_events_total";
/// Invalid events of 400 responses, by `reason`: the validation code of each invalid
/// event's first error (`invalid_json`, `missing`, `invalid_type`, `out_of_range`, …); a
/// request that is not events at all (bad JSON, too many, empty) counts once.
pub const EVENTS_REJECTED_TOTAL: &str = "chatpipe_ingest_events_rejected_total";
/// Request handling time by `route`, from headers received to response ready.
pub const REQUEST_DURATION_SECONDS: &str = "chatpipe_ingest_request_duration_seconds";
/// Time from handing a request's events to the producer until Kafka acknowledged the last.
pub const PRODUCE_LATENCY_SECONDS: &str = "chatpipe_ingest_produce_latency_seconds";
/// Events per accepted request.
pub const REQUEST_SIZE_EVENTS: &str = "chatpipe_ingest_request_size_events";
/// Requests being processed (holding an in-flight slot).
pub const INFLIGHT_REQUESTS: &str = "chatpipe_ingest_inflight_requests";
/// Bytes of request bodies being received or parsed (charged to `--max-buffered-body-bytes`).
pub const BUFFERED_BODY_BYTES: &str = "chatpipe_ingest_buffered_body_bytes";
/// Operational errors by `kind` (see [`kind`]).
pub const ERRORS_TOTAL: &str = "chatpipe_ingest_errors_total";

/// Label names.
pub mod label {
    /// The API route.
    pub const ROUTE: &str = "route";
    /// HTTP status code.
    pub const STATUS: &str = "status";
    /// `accepted` / `failed`.
    pub const OUTCOME: &str = "outcome";
    /// Why something was rejected.
    pub const REASON: &str = "reason";
    /// Kind of error.
    pub const KIND: &str = "kind";
}

/// Values of the `route` label.
pub mod route {
    /// `POST /v1/events`.
    pub const EVENTS: &str = "/v1/events";
    /// Anything else (404/405).
    pub const OTHER: &str = "other";
}

/// Values of the `outcome` label.
pub mod outcome {
    /// Acknowledged by Kafka.
    pub const ACCEPTED: &str = "accepted";
    /// Handed to the producer but not acknowledged (the response says which).
    pub const FAILED: &str = "failed";
}

/// Values of the `reason` label of [`REQUESTS_REJECTED_TOTAL`].
pub mod reason {
    /// No API key.
    pub const MISSING_API_KEY: &str = "missing_api_key";
    /// Unknown API key.
    pub const INVALID_API_KEY: &str = "invalid_api_key";
    /// Over the key's request rate.
    pub const RATE_LIMITED: &str = "rate_limited";
    /// Over the key's event rate.
    pub const EVENT_RATE_LIMITED: &str = "event_rate_limited";
    /// Content type or encoding not accepted.
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "unsupported_media_type";
    /// Body over `--max-body-bytes`.
    pub const BODY_TOO_LARGE: &str = "body_too_large";
    /// Body not received within `--read-timeout`.
    pub const READ_TIMEOUT: &str = "read_timeout";
    /// The body stream failed.
    pub const BAD_BODY: &str = "bad_body";
    /// At least one invalid event (400).
    pub const INVALID_EVENTS: &str = "invalid_events";
    /// Every in-flight slot taken.
    pub const OVERLOADED: &str = "overloaded";
    /// `--max-buffered-body-bytes` spent by the bodies being received.
    pub const BODY_BUFFER_FULL: &str = "body_buffer_full";
    /// Kafka topic not ready yet, or shutting down.
    pub const NOT_READY: &str = "not_ready";
    /// The id generator refused (clock stepped back too far).
    pub const CLOCK: &str = "clock";
}

/// Values of the `kind` label of [`ERRORS_TOTAL`].
pub mod kind {
    /// A delivery timed out (`message.timeout.ms`/`--produce-timeout`).
    pub const PRODUCE_TIMEOUT: &str = "produce_timeout";
    /// The producer queue stayed full for `--produce-timeout`.
    pub const QUEUE_FULL: &str = "queue_full";
    /// Kafka refused a delivery.
    pub const DELIVERY: &str = "delivery";
    /// An error reported by the Kafka client (connection, broker down, fatal).
    pub const KAFKA_CLIENT: &str = "kafka_client";
    /// Creating the events topic failed.
    pub const TOPIC_SETUP: &str = "topic_setup";
    /// The readiness probe (metadata request) failed.
    pub const PROBE: &str = "probe";
    /// The snowflake generator refused.
    pub const CLOCK: &str = "clock";
    /// An event did not encode into the envelope.
    pub const ENCODE: &str = "encode";
    /// The Kafka producer was replaced after timeouts or a fatal error.
    pub const PRODUCER_REPLACED: &str = "producer_replaced";
}

/// The registered metrics of one ingest.
#[derive(Clone)]
pub struct IngestMetrics {
    /// [`REQUESTS_TOTAL`].
    pub requests: IntCounterVec,
    /// [`REQUESTS_REJECTED_TOTAL`].
    pub requests_rejected: IntCounterVec,
    /// [`EVENTS_TOTAL`].
    pub events: IntCounterVec,
    /// [`EVENTS_REJECTED_TOTAL`].
    pub events_rejected: IntCounterVec,
    /// [`REQUEST_DURATION_SECONDS`].
    pub request_duration: HistogramVec,
    /// [`PRODUCE_LATENCY_SECONDS`].
    pub produce_latency: Histogram,
    /// [`REQUEST_SIZE_EVENTS`].
    pub request_size: Histogram,
    /// [`INFLIGHT_REQUESTS`].
    pub inflight: IntGauge,
    /// [`BUFFERED_BODY_BYTES`].
    pub buffered_body_bytes: IntGauge,
    /// [`ERRORS_TOTAL`].
    pub errors: IntCounterVec,
}

impl IngestMetrics {
    /// Registers the ingest metrics on `registry` (once per registry).
    pub fn new(registry: &Registry) -> Self {
        let m = Metrics(registry);
        IngestMetrics {
            requests: m.counter_vec(
                REQUESTS_TOTAL,
                "HTTP requests by route and status",
                &[label::ROUTE, label::STATUS],
            ),
            requests_rejected: m.counter_vec(
                REQUESTS_REJECTED_TOTAL,
                "Requests refused before producing, by reason",
                &[label::REASON],
            ),
            events: m.counter_vec(EVENTS_TOTAL, "Events handed to Kafka, by outcome", &[label::OUTCOME]),
            events_rejected: m.counter_vec(
                EVENTS_REJECTED_TOTAL,
                "Invalid events (400 responses), by validation code",
                &[label::REASON],
            ),
            request_duration: m.histogram_vec(
                REQUEST_DURATION_SECONDS,
                "Request handling time in seconds",
                &[label::ROUTE],
                LATENCY_BUCKETS,
            ),
            produce_latency: m.histogram(
                PRODUCE_LATENCY_SECONDS,
                "Seconds from producing a request's events until Kafka acknowledged all of them",
                LATENCY_BUCKETS,
            ),
            request_size: m.histogram(REQUEST_SIZE_EVENTS, "Events per accepted request", SIZE_BUCKETS),
            inflight: m.gauge(INFLIGHT_REQUESTS, "Requests being processed"),
            buffered_body_bytes: m.gauge(BUFFERED_BODY_BYTES, "Bytes of request bodies being received or parsed"),
            errors: m.counter_vec(ERRORS_TOTAL, "Operational errors by kind", &[label::KIND]),
        }
    }

    /// Counts one operational error.
    pub fn error(&self, kind: &str) {
        self.errors.with_label_values(&[kind]).inc();
    }
}

/// Holds one in-flight slot's gauge increment; decrements on drop (also when the client
/// goes away and the request future is dropped).
pub(crate) struct InflightGuard(IntGauge);

impl InflightGuard {
    pub(crate) fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        InflightGuard(gauge.clone())
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_convention_and_register() {
        let registry = Registry::new();
        let m = IngestMetrics::new(&registry);
        m.error(kind::PROBE);
        m.requests.with_label_values(&[route::EVENTS, "202"]).inc();
        for name in [
            REQUESTS_TOTAL,
            REQUESTS_REJECTED_TOTAL,
            EVENTS_TOTAL,
            EVENTS_REJECTED_TOTAL,
            REQUEST_DURATION_SECONDS,
            PRODUCE_LATENCY_SECONDS,
            REQUEST_SIZE_EVENTS,
            INFLIGHT_REQUESTS,
            BUFFERED_BODY_BYTES,
            ERRORS_TOTAL,
        ] {
            assert!(name.starts_with("chatpipe_ingest_"), "{name}");
        }
        {
            let _g = InflightGuard::new(&m.inflight);
            assert_eq!(m.inflight.get(), 1);
        }
        assert_eq!(m.inflight.get(), 0);
    }
}
