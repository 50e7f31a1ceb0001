//! The consume → batch → write → commit loop: the main task of the sink.
//!
//! # Shape
//!
//! The consumer is subscribed to `chat.rows`; on every assignment the main task splits each
//! assigned partition's messages into a queue of their own (librdkafka partition queues),
//! served by a **partition worker** task, which owns the partition's [`Buffer`]. When the buffer is
//! due (rows, bytes or age) and the partition has no batch in flight, the worker takes a
//! batch and spawns a **batch task** ([`BatchWriter`]) that writes it, bounded by
//! `--max-in-flight` permits over all partitions. One batch per partition at a time keeps
//! each row's mutations in order (a row lives in one partition); partitions write in
//! parallel. The main task ([`ConsumeLoop`], here) serves the consumer's own queue
//! (rebalances, statistics, errors), starts workers (`worker.rs`) and handles shutdown; the
//! consumer's context and rebalance callback are in `consumer.rs`.
//!
//! # Offsets
//!
//! Auto-commit is on with `enable.auto.offset.store=false`: the writer reports the offset
//! after a batch's last record only when every record of the batch is acknowledged by HBase
//! or by the DLQ, and the batch task stores it (`worker.rs`). Since a partition's batches run one after another, the stored offset is always
//! the end of a contiguous prefix of written records; a batch that keeps failing holds back
//! every later offset of its partition.
//!
//! # Backpressure
//!
//! A worker buffers at most `max(2 × batch rows, 1024)` records or `2 × batch bytes` beyond
//! its in-flight batch; with a full buffer it stops reading its queue, and librdkafka stops
//! fetching the partition once its own prefetch bound (`queued.max.messages.kbytes`) is
//! reached. So a partition whose batch retries against a failing HBase stops consuming
//! while the others go on — without pause, resume or seeks.
//!
//! # Rebalances and shutdown
//!
//! On revocation, the consumer's rebalance callback waits (up to `--drain-timeout`) for the
//! revoked partitions' in-flight batches, which store their offsets, then commits. Batches
//! still running then are cancelled: they stop at their next retry or step and store
//! nothing, so their rows are written again by the next owner. Their calls not yet on the
//! wire are refused, and the callback waits for the ones on the wire (bounded by the Thrift
//! call timeout and a second) so that none lands after the next owner's writes
//! (`ownership.rs`). The revoked workers stop and drop their buffers (never stored). A new
//! batch for a partition never starts while an older one, even a cancelled one, is still
//! running. Shutdown stops reading, writes what is buffered, waits for in-flight batches up
//! to `--drain-timeout` (then cancels them and waits for their calls on the wire, as a
//! revocation does), and commits.
//!
//!

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatpipe_common::group::{self, GroupWatchdog, Verdict};
use rdkafka::Message;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::consumer::{blocking, commit, record_release, Assignment, SinkConsumer};
use crate::metrics::kind;
use crate::ownership::{Ownership, CALL_MARGIN};
use crate::worker::{Worker, WorkerDeps, WorkerState};
use crate::writer::BatchWriter;
use crate::Error;

/// The main task: serves the consumer's queue, starts and joins the partition workers,
/// drains on shutdown.
pub(crate) struct ConsumeLoop {
    deps: Arc<WorkerDeps>,
    assignments: mpsc::UnboundedReceiver<Assignment>,
    workers: JoinSet<(i32, Result<(), Error>)>,
    /// Partitions with a worker task (maybe a revoked one finishing).
    alive: HashSet<i32>,
    /// Assignments waiting for the revoked worker of the same partition to finish: its
    /// queue handle must be dropped before the partition's queue is split again (dropping
    /// it disables the queue's wake-up callback).
    pending: HashMap<i32, Assignment>,
    /// Rejoins the group when a faulty coordinator left this member without partitions.
    watchdog: GroupWatchdog,
}

impl ConsumeLoop {
    pub(crate) fn new(
        config: Config,
        consumer: Arc<SinkConsumer>,
        ownership: Arc<Ownership>,
        writer: Arc<BatchWriter>,
        assignments: mpsc::UnboundedReceiver<Assignment>,
        from_earliest: bool,
        watchdog: GroupWatchdog,
    ) -> Self {
        let permits = Arc::new(Semaphore::new(config.max_in_flight));
        let deps =
            WorkerDeps { config, consumer, ownership, writer, permits, drain: CancellationToken::new(), from_earliest };
        ConsumeLoop {
            deps: Arc::new(deps),
            assignments,
            workers: JoinSet::new(),
            alive: HashSet::new(),
            pending: HashMap::new(),
            watchdog,
        }
    }

    /// Consumes until `shutdown`, then drains and commits.
    pub(crate) async fn run(mut self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), Error> {
        let mut shutdown = std::pin::pin!(shutdown);
        let consumer = Arc::clone(&self.deps.consumer);
        let mut kafka_errors: u64 = 0;
        let mut watch = tokio::time::interval(Duration::from_secs(1));
        watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            tokio::select! {
                biased;
                Some(a) = self.assignments.recv() => self.start_worker(a),
                _ = watch.tick() => self.watch_group(),
                Some(done) = self.workers.join_next(), if !self.workers.is_empty() => match done {
                    Ok((partition, Ok(()))) => {
                        self.alive.remove(&partition);
                        if let Some(a) = self.pending.remove(&partition) {
                            self.start_worker(a);
                        }
                    }
                    Ok((partition, Err(e))) => {
                        tracing::error!(partition, error = %e, "partition worker failed; stopping");
                        break Err(e);
                    }
                    Err(e) => break Err(Error::BatchTask(format!("partition worker: {e}"))),
                },
                () = &mut shutdown => break Ok(()),
                // the consumer's own queue: rebalances, statistics and errors are served here
                msg = consumer.recv() => match msg {
                    Ok(m) => {
                        // fetched before its queue was split: the worker's fetch check
                        // fetches it again
                        tracing::debug!(partition = m.partition(), offset = m.offset(), "record on the main queue; left to the partition's worker");
                    }
                    Err(e) => {
                        kafka_errors += 1;
                        self.deps.writer.health.set("kafka", false);
                        self.deps.writer.metrics.error(kind::KAFKA);
                        if kafka_errors.is_power_of_two() {
                            tracing::warn!(error = %e, count = kafka_errors, "consumer error");
                        }
                    }
                },
            }
        };
        let drained = self.drain().await;
        result.and(drained)
    }

    /// Runs the group watchdog (a describe round trip only after a session timeout without
    /// partitions).
    fn watch_group(&mut self) {
        let consumer = &*self.deps.consumer;
        if blocking(|| self.watchdog.check(consumer, Instant::now())) == Verdict::Rejoin {
            self.deps.writer.metrics.error(kind::GROUP_REJOIN);
            if let Err(e) = group::rejoin(consumer, &self.deps.config.rows_topic) {
                self.deps.writer.metrics.error(kind::KAFKA);
                tracing::error!(error = %e, "rejoining the consumer group failed");
            }
        }
    }

    fn start_worker(&mut self, a: Assignment) {
        if self.alive.contains(&a.partition) {
            self.pending.insert(a.partition, a);
            return;
        }
        let stop = CancellationToken::new();
        if !self.deps.ownership.register_worker(a.partition, a.generation, stop.clone()) {
            return; // revoked again meanwhile
        }
        // Messages fetched before the split would sit on the main queue; the worker's fetch
        // check fetches them again.
        let Some(queue) = self.deps.consumer.split_partition_queue(&self.deps.config.rows_topic, a.partition) else {
            tracing::error!(partition = a.partition, "cannot split the partition's queue; it is not consumed");
            return;
        };
        self.deps.writer.health.set("kafka", true);
        let deps = Arc::clone(&self.deps);
        let (partition, generation) = (a.partition, a.generation);
        self.alive.insert(partition);
        self.workers.spawn(async move {
            let worker = Worker { deps, partition, generation, state: WorkerState::default() };
            (partition, worker.run(queue, stop).await)
        });
    }

    /// Shutdown: the workers write what they buffered; after the drain timeout, batches
    /// still running are cancelled; then the stored offsets are committed.
    async fn drain(mut self) -> Result<(), Error> {
        tracing::info!("shutting down: writing buffered rows");
        self.deps.drain.cancel();
        let deadline = tokio::time::Instant::now() + self.deps.config.drain_timeout;
        let mut result = Ok(());
        loop {
            tokio::select! {
                done = self.workers.join_next() => match done {
                    None => break,
                    Some(Ok((_, Err(e)))) => result = Err(e),
                    Some(Err(e)) => result = Err(Error::BatchTask(format!("partition worker: {e}"))),
                    Some(Ok((_, Ok(())))) => {}
                },
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!("drain timeout: abandoning in-flight batches (their rows are written again after restart)");
                    // no HBase call of a cancelled batch starts; the ones on the wire end by
                    // their timeout, and the consumer leaves the group only after them
                    let started = Instant::now();
                    let (ownership, m) = (&self.deps.ownership, &self.deps.writer.metrics);
                    let bound = self.deps.config.hbase.timeout + CALL_MARGIN;
                    let released = blocking(|| ownership.fence_all(bound, &m.revocation_waiting_calls));
                    record_release(m, released, started.elapsed());
                    let grace = tokio::time::Instant::now() + Duration::from_secs(5);
                    while tokio::time::timeout_at(grace, self.workers.join_next()).await.is_ok_and(|d| d.is_some()) {}
                    self.workers.abort_all();
                    break;
                }
            }
        }
        commit(self.deps.consumer.as_ref());
        result
    }
}
