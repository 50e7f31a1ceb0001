//! Processor metrics (DESIGN §8). Names are constants here and nowhere else.

use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};

use chatpipe_common::telemetry::{Metrics, LATENCY_BUCKETS, SIZE_BUCKETS};

/// Events by outcome.
pub const EVENTS: &str = "chatpipe_processor_events_total";
/// Window emissions by kind.
pub const WINDOWS: &str = "chatpipe_processor_window_emissions_total";
/// Late events beyond the correction horizon.
pub const LATE: &str = "chatpipe_processor_late_events_total";
/// DLQ records by reason.
pub const DLQ: &str = "chatpipe_processor_dlq_records_total";
/// State entries per partition.
pub const STATE_ENTRIES: &str = "chatpipe_processor_state_entries";
/// Changelog bytes written.
pub const CHANGELOG_BYTES: &str = "chatpipe_processor_changelog_bytes_total";
/// Restore duration.
pub const RESTORE: &str = "chatpipe_processor_restore_duration_seconds";
/// Changelog records read by restores, by kind (`read`, `fenced`: ignored as a fenced-off
/// owner's).
pub const RESTORE_RECORDS: &str = "chatpipe_processor_restore_records_total";
/// Consumer lag per partition.
pub const LAG: &str = "chatpipe_processor_consumer_lag_messages";
/// Batch duration.
pub const BATCH: &str = "chatpipe_processor_batch_duration_seconds";
/// Batch sizes.
pub const BATCH_EVENTS: &str = "chatpipe_processor_batch_events";
/// Output records by topic kind.
pub const OUTPUT: &str = "chatpipe_processor_output_records_total";
/// Errors by kind.
pub const ERRORS: &str = "chatpipe_processor_errors_total";
/// Assigned partitions.
pub const ASSIGNED: &str = "chatpipe_processor_assigned_partitions";
/// Partitions paused because their task's queue is full.
pub const PAUSED: &str = "chatpipe_processor_paused_partitions";
/// Idle checks that found input waiting on the broker (a starved partition).
pub const IDLE_DEFERRED: &str = "chatpipe_processor_idle_deferred_total";

/// The processor's metrics.
#[derive(Clone)]
pub struct ProcessorMetrics {
    /// See [`EVENTS`].
    pub events: IntCounterVec,
    /// See [`WINDOWS`].
    pub windows: IntCounterVec,
    /// See [`LATE`].
    pub late: IntCounter,
    /// See [`DLQ`].
    pub dlq: IntCounterVec,
    /// See [`STATE_ENTRIES`].
    pub state_entries: IntGaugeVec,
    /// See [`CHANGELOG_BYTES`].
    pub changelog_bytes: IntCounter,
    /// See [`RESTORE`].
    pub restore: Histogram,
    /// See [`RESTORE_RECORDS`].
    pub restore_records: IntCounterVec,
    /// See [`LAG`].
    pub lag: IntGaugeVec,
    /// See [`BATCH`].
    pub batch: Histogram,
    /// See [`BATCH_EVENTS`].
    pub batch_events: Histogram,
    /// See [`OUTPUT`].
    pub output: IntCounterVec,
    /// See [`ERRORS`].
    pub errors: IntCounterVec,
    /// See [`ASSIGNED`].
    pub assigned: IntGauge,
    /// See [`PAUSED`].
    pub paused: IntGauge,
    /// See [`IDLE_DEFERRED`].
    pub idle_deferred: IntCounter,
}

impl ProcessorMetrics {
    /// Registers every processor metric.
    pub fn new(registry: &Registry) -> Self {
        let r = Metrics(registry);
        ProcessorMetrics {
            events: r.counter_vec(EVENTS, "Input events by outcome.", &["outcome"]),
            windows: r.counter_vec(WINDOWS, "Window records emitted (final and corrected).", &["scope"]),
            late: r.counter(LATE, "Events beyond the correction horizon (sent to the DLQ, not counted)."),
            dlq: r.counter_vec(DLQ, "Records sent to the DLQ by reason.", &["reason"]),
            state_entries: r.gauge_vec(STATE_ENTRIES, "State entries per input partition.", &["partition"]),
            changelog_bytes: r.counter(CHANGELOG_BYTES, "Bytes written to the state changelog."),
            restore: r.histogram(RESTORE, "Time to restore a partition's state from the changelog.", LATENCY_BUCKETS),
            restore_records: r.counter_vec(
                RESTORE_RECORDS,
                "Changelog records read by restores (read) and ignored as a fenced-off owner's (fenced).",
                &["kind"],
            ),
            lag: r.gauge_vec(LAG, "Consumer lag per input partition.", &["topic", "partition"]),
            batch: r.histogram(BATCH, "Time to apply a batch, deliver its outputs and log its state.", LATENCY_BUCKETS),
            batch_events: r.histogram(BATCH_EVENTS, "Input records per batch.", SIZE_BUCKETS),
            output: r.counter_vec(OUTPUT, "Output records by topic.", &["topic"]),
            errors: r.counter_vec(ERRORS, "Errors by kind.", &["kind"]),
            assigned: r.gauge(ASSIGNED, "Input partitions assigned to this instance."),
            paused: r.gauge(PAUSED, "Input partitions paused because their task's queue is full."),
            idle_deferred: r.counter(
                IDLE_DEFERRED,
                "Idle checks that found input records on the broker not yet processed: the watermark did not advance on wall time.",
            ),
        }
    }
}
