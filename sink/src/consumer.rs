//! The sink's Kafka consumer: its context — lag metrics from statistics, the partitions a
//! rebalance assigns (announced to the consume loop, `sink.rs`), the drain of revoked
//! partitions — and the way librdkafka's blocking calls are made from async code.
//!
//! Guarantee: the rebalance callback returns for a revoked partition only after its batch
//! ended or was cancelled, the HBase calls it had on the wire returned (bounded by the
//! Thrift timeout and a margin, `ownership.rs`), and the offsets stored so far were
//! committed — so the next owner starts after everything acknowledged, and no write of this
//! instance lands after its writes. Failure: a failed commit is logged and left to the next
//! auto-commit (the next owner then rewrites some rows, which is replay-safe); a call that
//! outlives the bound is counted (`revoked_call_outlived`) and the partition released anyway.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chatpipe_common::kafka::record_consumer_lag;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Statistics, TopicPartitionList};
use tokio::sync::mpsc;

use crate::metrics::{kind, SinkMetrics};
use crate::ownership::{Ownership, Released};

/// A newly assigned partition.
pub(crate) struct Assignment {
    pub(crate) partition: i32,
    pub(crate) generation: u64,
}

/// The consumer's context: records lag from statistics, announces assigned partitions,
/// drains revoked partitions.
pub(crate) struct SinkContext {
    pub(crate) ownership: Arc<Ownership>,
    pub(crate) topic: String,
    pub(crate) metrics: SinkMetrics,
    pub(crate) drain_timeout: Duration,
    /// How long a revocation waits for the HBase calls its cancelled batches have on a
    /// connection: the Thrift call timeout plus a margin (see `ownership.rs`).
    pub(crate) call_bound: Duration,
    /// New assignments for the main task (at most one message per assigned partition per
    /// rebalance, so unbounded is bounded by the partition count).
    pub(crate) assignments: mpsc::UnboundedSender<Assignment>,
}

impl SinkContext {
    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        tpl.elements_for_topic(&self.topic).iter().map(|e| e.partition()).collect()
    }
}

impl ClientContext for SinkContext {
    fn stats(&self, statistics: Statistics) {
        record_consumer_lag(&statistics, &self.metrics.consumer_lag);
    }
}

impl ConsumerContext for SinkContext {
    fn pre_rebalance(&self, base_consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let partitions = self.partitions(tpl);
                tracing::info!(?partitions, "partitions revoked; draining in-flight batches");
                let started = Instant::now();
                let waiting = &self.metrics.revocation_waiting_calls;
                // Waiting blocks this thread; batch tasks need the runtime's other threads
                // (HBase calls run on the pool's own threads, so waiting for them never
                // needs the runtime).
                let released = if multi_thread() {
                    tokio::task::block_in_place(|| {
                        self.ownership.revoke(&partitions, self.drain_timeout, self.call_bound, waiting)
                    })
                } else {
                    self.ownership.revoke(&partitions, Duration::ZERO, self.call_bound, waiting)
                };
                record_release(&self.metrics, released, started.elapsed());
                commit(base_consumer);
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }

    fn post_rebalance(&self, _base_consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(tpl) = rebalance else { return };
        let partitions = self.partitions(tpl);
        tracing::info!(?partitions, "partitions assigned");
        for partition in partitions {
            let generation = self.ownership.generation(partition);
            let _ = self.assignments.send(Assignment { partition, generation });
        }
    }
}

/// Counts what a revocation or shutdown had to cancel, wait for, or leave running.
pub(crate) fn record_release(metrics: &SinkMetrics, released: Released, took: Duration) {
    metrics.revocation_wait.observe(took.as_secs_f64());
    if released.waited_calls > 0 || released.outlived > 0 {
        tracing::info!(
            calls = released.waited_calls,
            outlived = released.outlived,
            took_ms = took.as_millis() as u64,
            "partitions released after their running HBase calls returned"
        );
    }
    for _ in 0..released.outlived {
        metrics.error(kind::REVOKED_CALL_OUTLIVED);
    }
}

/// Commits the stored offsets now (synchronously); "nothing to commit" is fine.
pub(crate) fn commit<C: Consumer<X>, X: ConsumerContext>(consumer: &C) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => {}
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => tracing::warn!(error = %e, "offset commit failed (the next auto-commit retries)"),
    }
}

pub(crate) type SinkConsumer = StreamConsumer<SinkContext>;

fn multi_thread() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// Runs a blocking librdkafka call from async code: in place on a multi-threaded runtime
/// (the other workers go on), directly otherwise.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    if multi_thread() {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}
