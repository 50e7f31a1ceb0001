//! Every metric of the sink: names and labels are constants here, nowhere else
//! (`chatpipe_sink_<noun>_<unit>[_total]`, DESIGN §8). Labels never carry ids.

use chatpipe_common::telemetry::{Metrics, LATENCY_BUCKETS, SIZE_BUCKETS};
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};

/// Row mutations acknowledged by HBase, per table.
pub const ROWS_WRITTEN: &str = "chatpipe_sink_rows_written_total";
/// Records per batch taken from a partition.
pub const BATCH_ROWS: &str = "chatpipe_sink_batch_rows";
/// Approximate bytes per batch.
pub const BATCH_BYTES: &str = "chatpipe_sink_batch_bytes";
/// Latency of one successful HBase write call (mutateRows, deleteAllRow) on its
/// connection; waiting for a free connection is not included.
pub const HBASE_WRITE_LATENCY: &str = "chatpipe_sink_hbase_write_latency_seconds";
/// HBase calls retried after a transient error.
pub const RETRIES: &str = "chatpipe_sink_retries_total";
/// Calls that used up `--max-retries`: their rows went to the DLQ. Alert on any increase.
pub const RETRIES_EXHAUSTED: &str = "chatpipe_sink_retries_exhausted_total";
/// Records sent to the DLQ, per reason.
pub const DLQ_RECORDS: &str = "chatpipe_sink_dlq_records_total";
/// From `ingested_at` (ingest) to HBase's acknowledgement of the row.
pub const END_TO_END_LATENCY: &str = "chatpipe_sink_end_to_end_latency_seconds";
/// Consumer lag per assigned partition (librdkafka statistics).
pub const CONSUMER_LAG: &str = "chatpipe_sink_consumer_lag_messages";
/// Errors, per kind (see the `kind` constants).
pub const ERRORS: &str = "chatpipe_sink_errors_total";
/// Batches being written now.
pub const IN_FLIGHT_BATCHES: &str = "chatpipe_sink_in_flight_batches";
/// How long each revocation (and a shutdown past its drain timeout) blocked before the
/// partitions were released: draining batches, then waiting for the HBase calls of
/// cancelled ones (bounded by `--drain-timeout` + `--hbase-timeout` + 1 s).
pub const REVOCATION_WAIT: &str = "chatpipe_sink_revocation_wait_seconds";
/// HBase calls of revoked partitions that a revocation is waiting for now (they were on
/// the wire when their batch was cancelled).
pub const REVOCATION_WAITING_CALLS: &str = "chatpipe_sink_revocation_waiting_calls";
/// Partitions not reading because their buffer is full (HBase slower than Kafka, or failing).
pub const PAUSED_PARTITIONS: &str = "chatpipe_sink_paused_partitions";

/// Label names.
pub mod label {
    /// The HBase table.
    pub const TABLE: &str = "table";
    /// Why a record went to the DLQ.
    pub const REASON: &str = "reason";
    /// The kind of an error.
    pub const KIND: &str = "kind";
    /// Kafka topic.
    pub const TOPIC: &str = "topic";
    /// Kafka partition.
    pub const PARTITION: &str = "partition";
}

/// Values of `errors_total{kind}`.
pub mod kind {
    /// A transient HBase error (transport, `IOError`): the call is retried.
    pub const HBASE_TRANSIENT: &str = "hbase_transient";
    /// A permanent HBase error (`IllegalArgument`, unknown table or family).
    pub const HBASE_PERMANENT: &str = "hbase_permanent";
    /// Producing to the DLQ failed (retried).
    pub const DLQ_PRODUCE: &str = "dlq_produce";
    /// A consumer error reported by librdkafka.
    pub const KAFKA: &str = "kafka";
    /// Storing or committing offsets failed.
    pub const OFFSET_COMMIT: &str = "offset_commit";
    /// A batch abandoned on revocation or shutdown (its rows are replayed later).
    pub const ABANDONED: &str = "abandoned";
    /// An HBase call of a released partition was still running after the bound: its write
    /// may land after the next owner's (data at risk; see `ownership.rs`).
    pub const REVOKED_CALL_OUTLIVED: &str = "revoked_call_outlived";
    /// The member rejoined its group after holding no partitions while some were unowned
    /// (`chatpipe_common::group`).
    pub const GROUP_REJOIN: &str = "group_rejoin";
}

/// The sink's metrics, registered once per [`Registry`].
#[derive(Clone)]
pub struct SinkMetrics {
    /// See [`ROWS_WRITTEN`].
    pub rows_written: IntCounterVec,
    /// See [`BATCH_ROWS`].
    pub batch_rows: Histogram,
    /// See [`BATCH_BYTES`].
    pub batch_bytes: Histogram,
    /// See [`HBASE_WRITE_LATENCY`].
    pub hbase_write_latency: Histogram,
    /// See [`RETRIES`].
    pub retries: IntCounter,
    /// See [`RETRIES_EXHAUSTED`].
    pub retries_exhausted: IntCounter,
    /// See [`DLQ_RECORDS`].
    pub dlq_records: IntCounterVec,
    /// See [`END_TO_END_LATENCY`].
    pub end_to_end_latency: Histogram,
    /// See [`CONSUMER_LAG`].
    pub consumer_lag: IntGaugeVec,
    /// See [`ERRORS`].
    pub errors: IntCounterVec,
    /// See [`IN_FLIGHT_BATCHES`].
    pub in_flight: IntGauge,
    /// See [`PAUSED_PARTITIONS`].
    pub paused: IntGauge,
    /// See [`REVOCATION_WAIT`].
    pub revocation_wait: Histogram,
    /// See [`REVOCATION_WAITING_CALLS`].
    pub revocation_waiting_calls: IntGauge,
}

/// End-to-end latency spans seconds to hours (a sink catching up after an outage).
const E2E_BUCKETS: &[f64] =
    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

/// A revocation blocks from nothing (no batch in flight) to drain plus call timeout
/// (15 s + 30 s + 1 s with the defaults).
const REVOCATION_BUCKETS: &[f64] = &[0.001, 0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 46.0, 60.0, 120.0];

impl SinkMetrics {
    /// Registers the sink's metrics on `registry` (once per registry).
    pub fn new(registry: &Registry) -> Self {
        let m = Metrics(registry);
        SinkMetrics {
            rows_written: m.counter_vec(ROWS_WRITTEN, "Row mutations acknowledged by HBase.", &[label::TABLE]),
            batch_rows: m.histogram(BATCH_ROWS, "Records per batch.", SIZE_BUCKETS),
            batch_bytes: m.histogram(BATCH_BYTES, "Approximate bytes per batch.", SIZE_BUCKETS),
            hbase_write_latency: m.histogram(HBASE_WRITE_LATENCY, "Latency of one HBase write call.", LATENCY_BUCKETS),
            retries: m.counter(RETRIES, "HBase calls retried after a transient error."),
            retries_exhausted: m
                .counter(RETRIES_EXHAUSTED, "HBase calls that used up --max-retries (rows sent to the DLQ)."),
            dlq_records: m.counter_vec(DLQ_RECORDS, "Records sent to the DLQ.", &[label::REASON]),
            end_to_end_latency: m.histogram(
                END_TO_END_LATENCY,
                "From ingested_at to HBase acknowledgement of the row.",
                E2E_BUCKETS,
            ),
            consumer_lag: m.gauge_vec(CONSUMER_LAG, "Consumer lag per partition.", &[label::TOPIC, label::PARTITION]),
            errors: m.counter_vec(ERRORS, "Errors by kind.", &[label::KIND]),
            in_flight: m.gauge(IN_FLIGHT_BATCHES, "Batches being written now."),
            paused: m.gauge(PAUSED_PARTITIONS, "Partitions not reading because their buffer is full."),
            revocation_wait: m.histogram(
                REVOCATION_WAIT,
                "How long a revocation blocked before releasing its partitions.",
                REVOCATION_BUCKETS,
            ),
            revocation_waiting_calls: m
                .gauge(REVOCATION_WAITING_CALLS, "HBase calls of revoked partitions a revocation is waiting for."),
        }
    }

    /// Counts one error of `kind`.
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
        let m = SinkMetrics::new(&registry);
        m.rows_written.with_label_values(&["chat:messages"]).inc();
        m.error(kind::KAFKA);
        m.dlq_records.with_label_values(&["undecodable"]).inc();
        for family in registry.gather() {
            let name = family.name();
            assert!(name.starts_with("chatpipe_sink_"), "{name}");
        }
    }
}
