//! The consume → batch → write → commit loop.
//!
//! # Shape
//!
//! The consumer is subscribed to `chat.rows`; on every assignment the main task splits each
//! assigned partition's messages into a queue of their own (librdkafka partition queues),
//! served by a **partition worker** task, which owns the partition's [`Buffer`]. When the buffer is
//! due (rows, bytes or age) and the partition has no batch in flight, the worker takes a
//! batch and spawns a **batch task** ([`Writer`]) that writes it, bounded by
//! `--max-in-flight` permits over all partitions. One batch per partition at a time keeps
//! each row's mutations in order (a row lives in one partition); partitions write in
//! parallel. The main task serves the consumer's own queue (rebalances, statistics,
//! errors), starts workers and handles shutdown.
//!
//! # Offsets
//!
//! Auto-commit is on with `enable.auto.offset.store=false`: a batch task stores the offset
//! after its last record only when every record of the batch is acknowledged by HBase or by
//! the DLQ. Since a partition's batches run one after another, the stored offset is always
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
//! # Where a fetch starts
//!
//! A worker knows where its partition's fetch must start (the committed offset) and checks
//! that the first record is that one ([`FetchCheck`]): tansu 0.6 answers a fetch from the
//! middle of a record batch with the next batch, which would silently skip records.

use std::collections::HashMap;
use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatpipe_common::group::{self, GroupWatchdog, Verdict};
use chatpipe_common::kafka::record_consumer_lag;
use futures::StreamExt;
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Message, Offset, Statistics, TopicPartitionList};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::batch::{Buffer, Record};
use crate::config::Config;
use crate::metrics::{kind, SinkMetrics};
use crate::ownership::{Begin, Released, Shared, CALL_MARGIN};
use crate::writer::{BatchReport, Outcome, Writer};
use crate::Error;

/// A partition whose fetch was (re)started and delivered nothing for this long is checked
/// for skipped records (see [`FetchCheck`]).
const CHECK_IDLE: Duration = Duration::from_secs(1);
/// How long reading the committed offsets may take.
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a seek may wait for librdkafka.
const SEEK_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------
// Consumer context: lag metrics, partition queues, the rebalance drain
// ---------------------------------------------------------------------------------------

/// A newly assigned partition.
pub(crate) struct Assignment {
    partition: i32,
    generation: u64,
}

/// The consumer's context: records lag from statistics, announces assigned partitions,
/// drains revoked partitions.
pub(crate) struct SinkContext {
    pub(crate) shared: Arc<Shared>,
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
                        self.shared.revoke(&partitions, self.drain_timeout, self.call_bound, waiting)
                    })
                } else {
                    self.shared.revoke(&partitions, Duration::ZERO, self.call_bound, waiting)
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
            let generation = self.shared.generation(partition);
            let _ = self.assignments.send(Assignment { partition, generation });
        }
    }
}

/// Counts what a revocation or shutdown had to cancel, wait for, or leave running.
fn record_release(metrics: &SinkMetrics, released: Released, took: Duration) {
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
fn commit<C: Consumer<X>, X: ConsumerContext>(consumer: &C) {
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
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    if multi_thread() {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

// ---------------------------------------------------------------------------------------
// The main task
// ---------------------------------------------------------------------------------------

/// Everything a partition worker needs.
struct WorkerEnv {
    config: Config,
    consumer: Arc<SinkConsumer>,
    shared: Arc<Shared>,
    writer: Arc<Writer>,
    permits: Arc<Semaphore>,
    /// Shutdown: stop reading, write what is buffered, exit.
    drain: CancellationToken,
    /// `auto.offset.reset` is earliest: without a committed offset, fetches start at the
    /// log start.
    from_earliest: bool,
}

pub(crate) struct Pipeline {
    env: Arc<WorkerEnv>,
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

impl Pipeline {
    pub(crate) fn new(
        config: Config,
        consumer: Arc<SinkConsumer>,
        shared: Arc<Shared>,
        writer: Arc<Writer>,
        assignments: mpsc::UnboundedReceiver<Assignment>,
        from_earliest: bool,
        watchdog: GroupWatchdog,
    ) -> Self {
        let permits = Arc::new(Semaphore::new(config.max_in_flight));
        let env =
            WorkerEnv { config, consumer, shared, writer, permits, drain: CancellationToken::new(), from_earliest };
        Pipeline {
            env: Arc::new(env),
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
        let consumer = Arc::clone(&self.env.consumer);
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
                        self.env.writer.health.set("kafka", false);
                        self.env.writer.metrics.error(kind::KAFKA);
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
        let consumer = &*self.env.consumer;
        if blocking(|| self.watchdog.check(consumer, Instant::now())) == Verdict::Rejoin {
            self.env.writer.metrics.error(kind::GROUP_REJOIN);
            if let Err(e) = group::rejoin(consumer, &self.env.config.rows_topic) {
                self.env.writer.metrics.error(kind::KAFKA);
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
        if !self.env.shared.register_worker(a.partition, a.generation, stop.clone()) {
            return; // revoked again meanwhile
        }
        // Messages fetched before the split would sit on the main queue; the worker's fetch
        // check fetches them again.
        let Some(queue) = self.env.consumer.split_partition_queue(&self.env.config.rows_topic, a.partition) else {
            tracing::error!(partition = a.partition, "cannot split the partition's queue; it is not consumed");
            return;
        };
        self.env.writer.health.set("kafka", true);
        let env = Arc::clone(&self.env);
        let (partition, generation) = (a.partition, a.generation);
        self.alive.insert(partition);
        self.workers.spawn(async move {
            let worker = Worker { env: &env, partition, generation, state: PartitionState::default() };
            (partition, worker.run(queue, stop).await)
        });
    }

    /// Shutdown: the workers write what they buffered; after the drain timeout, batches
    /// still running are cancelled; then the stored offsets are committed.
    async fn drain(mut self) -> Result<(), Error> {
        tracing::info!("shutting down: writing buffered rows");
        self.env.drain.cancel();
        let deadline = tokio::time::Instant::now() + self.env.config.drain_timeout;
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
                    let (shared, m) = (&self.env.shared, &self.env.writer.metrics);
                    let bound = self.env.config.hbase.timeout + CALL_MARGIN;
                    let released = blocking(|| shared.fence_all(bound, &m.revocation_waiting_calls));
                    record_release(m, released, started.elapsed());
                    let grace = tokio::time::Instant::now() + Duration::from_secs(5);
                    while tokio::time::timeout_at(grace, self.workers.join_next()).await.is_ok_and(|d| d.is_some()) {}
                    self.workers.abort_all();
                    break;
                }
            }
        }
        commit(self.env.consumer.as_ref());
        result
    }
}

// ---------------------------------------------------------------------------------------
// Partition worker
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct PartitionState {
    buffer: Buffer,
    /// The offset after the last record received.
    next_offset: Option<i64>,
    /// Verifying that a fetch (re)started at `next_offset` really starts there.
    check: Option<FetchCheck>,
    last_delete_ack: Option<Instant>,
    /// Not reading because the buffer is full.
    full: bool,
}

struct Worker<'e> {
    env: &'e WorkerEnv,
    partition: i32,
    generation: u64,
    state: PartitionState,
}

impl Worker<'_> {
    async fn run(mut self, queue: StreamPartitionQueue<SinkContext>, stop: CancellationToken) -> Result<(), Error> {
        let env = self.env;
        let cfg = &env.config;
        self.start_at_committed();
        let mut batch: Option<tokio::task::JoinHandle<BatchReport>> = None;
        let mut draining = false;
        let mut kafka_ok = false;
        let mut tick = tokio::time::interval(CHECK_IDLE / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        // one stream and one timer for the worker's life (not one per message)
        let mut messages = queue.stream();
        let mut flush_timer = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
        let mut flush_deadline: Option<Instant> = None;
        let result = loop {
            let st = &self.state;
            let has_room = st.buffer.len() < cfg.max_buffered_rows() && st.buffer.bytes() < cfg.max_buffered_bytes();
            self.set_full(!has_room);
            let st = &self.state;
            let due = !st.buffer.is_empty()
                && (draining || st.buffer.is_due(Instant::now(), cfg.batch_rows, cfg.batch_bytes, cfg.flush_interval));
            let want_permit = batch.is_none() && due;
            let flush_at = match (&batch, st.buffer.oldest()) {
                (None, Some(t)) if !due => Some(t + cfg.flush_interval),
                _ => None,
            };
            if draining && batch.is_none() && st.buffer.is_empty() {
                break Ok(());
            }
            if flush_at != flush_deadline {
                if let Some(t) = flush_at {
                    flush_timer.as_mut().reset(t.into());
                }
                flush_deadline = flush_at;
            }
            tokio::select! {
                biased;
                _ = stop.cancelled() => break Ok(()), // revoked: the buffer is dropped
                report = join_opt(&mut batch), if batch.is_some() => {
                    batch = None;
                    env.writer.metrics.in_flight.dec();
                    match report {
                        Ok(r) => {
                            self.state.last_delete_ack = r.last_delete_ack;
                            if r.outcome == Outcome::Abandoned && !stop.is_cancelled() && !draining {
                                break Err(Error::BatchTask(format!(
                                    "partition {}: batch abandoned while the partition is still assigned",
                                    self.partition
                                )));
                            }
                        }
                        // A batch task that panicked wrote an unknown part of its batch and
                        // stored nothing; going on would store later offsets past it.
                        Err(e) => break Err(Error::BatchTask(format!("partition {}: {e}", self.partition))),
                    }
                }
                _ = env.drain.cancelled(), if !draining => draining = true,
                permit = Arc::clone(&env.permits).acquire_owned(), if want_permit => {
                    let Ok(permit) = permit else { break Ok(()) };
                    let token = CancellationToken::new();
                    match env.shared.begin(self.partition, self.generation, token.clone()) {
                        Begin::Started => {}
                        Begin::Stale => break Ok(()),
                        Begin::Busy => {
                            // an older generation's batch is still running: try again shortly
                            drop(permit);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    }
                    let records = self.state.buffer.take_batch(cfg.batch_rows, cfg.batch_bytes);
                    let m = &env.writer.metrics;
                    m.batch_rows.observe(records.len() as f64);
                    m.batch_bytes.observe(records.iter().map(Record::bytes).sum::<usize>() as f64);
                    m.in_flight.inc();
                    let writer = Arc::clone(&env.writer);
                    batch = Some(tokio::spawn(writer.run_batch(
                        self.partition,
                        records,
                        self.state.last_delete_ack,
                        token,
                        permit,
                    )));
                }
                msg = messages.next(), if has_room && !draining => match msg {
                    None => break Ok(()), // the consumer is gone
                    Some(Ok(m)) => {
                        if !kafka_ok {
                            env.writer.health.set("kafka", true);
                            kafka_ok = true;
                        }
                        self.on_message(m.offset(), m.key(), m.payload());
                    }
                    Some(Err(e)) => {
                        kafka_ok = false;
                        env.writer.metrics.error(kind::KAFKA);
                        tracing::debug!(partition = self.partition, error = %e, "partition queue error");
                    }
                },
                () = &mut flush_timer, if flush_deadline.is_some() => flush_deadline = None,
                _ = tick.tick() => self.check_idle_fetch(),
            }
        };
        self.set_full(false);
        if let Some(b) = batch {
            // revoked or failed: the revocation already waited for (or cancelled) it
            env.writer.metrics.in_flight.dec();
            drop(b);
        }
        result
    }

    fn set_full(&mut self, full: bool) {
        if full != self.state.full {
            self.state.full = full;
            if full {
                self.env.writer.metrics.paused.inc();
            } else {
                self.env.writer.metrics.paused.dec();
            }
        }
    }

    /// Reads where the fetch starts — the committed offset, or the log start when nothing is
    /// committed and `auto.offset.reset` is `earliest` (the sink's default) — and expects
    /// the first record there.
    fn start_at_committed(&mut self) {
        let (topic, partition) = (&self.env.config.rows_topic, self.partition);
        let mut list = TopicPartitionList::new();
        list.add_partition(topic, partition);
        let consumer = &self.env.consumer;
        let committed = match blocking(|| consumer.committed_offsets(list, COMMITTED_TIMEOUT)) {
            Ok(c) => c.find_partition(topic, partition).map(|e| e.offset()),
            Err(e) => {
                tracing::warn!(partition, error = %e, "cannot read the committed offset; not checking where the fetch starts");
                return;
            }
        };
        let start = match committed {
            Some(Offset::Offset(o)) => Some(o),
            _ if self.env.from_earliest => {
                match blocking(|| consumer.fetch_watermarks(topic, partition, COMMITTED_TIMEOUT)) {
                    Ok((low, _)) => Some(low),
                    Err(e) => {
                        tracing::warn!(partition, error = %e, "cannot read the log start; not checking where the fetch starts");
                        None
                    }
                }
            }
            _ => None,
        };
        if let Some(o) = start {
            self.state.next_offset = Some(o);
            if o > 0 {
                self.state.check = Some(FetchCheck::new(o));
            }
        }
    }

    fn on_message(&mut self, offset: i64, key: Option<&[u8]>, payload: Option<&[u8]>) {
        let (partition, topic) = (self.partition, &self.env.config.rows_topic);
        let st = &mut self.state;
        if let Some(check) = st.check.as_mut() {
            if offset > check.expected {
                // The fetch skipped records (see `FetchCheck`): fetch from further back;
                // the records before `expected` are skipped below.
                check.probe_further(&self.env.consumer, topic, partition, offset);
                if check.given_up {
                    st.check = None;
                } else {
                    return;
                }
            } else {
                st.check = None;
            }
        }
        if let Some(next) = st.next_offset {
            if offset < next {
                return; // already buffered or written (a fetch from further back)
            }
            if offset > next {
                tracing::debug!(partition, offset, expected = next, "offset gap (compaction or control records)");
            }
        }
        st.next_offset = Some(offset + 1);
        st.buffer.push(Record::decode(offset, key, payload, Instant::now()));
    }

    /// A fetch check that saw nothing for a while probes further back (the skipped records
    /// may be the tail of the partition, with nothing after them).
    fn check_idle_fetch(&mut self) {
        if let Some(check) = self.state.check.as_mut() {
            if check.since.elapsed() >= CHECK_IDLE {
                check.probe_further(&self.env.consumer, &self.env.config.rows_topic, self.partition, -1);
                if check.given_up {
                    self.state.check = None;
                }
            }
        }
    }
}

/// The batch task's result (never resolves without one; guarded by `is_some` anyway).
async fn join_opt(
    batch: &mut Option<tokio::task::JoinHandle<BatchReport>>,
) -> Result<BatchReport, tokio::task::JoinError> {
    match batch {
        Some(b) => b.await,
        None => std::future::pending().await,
    }
}

/// Moves a partition's fetch position. Synchronous (a few ms, rare): when it returns,
/// librdkafka discards every message it had fetched from the old position.
fn seek(consumer: &SinkConsumer, topic: &str, partition: i32, offset: i64) {
    if let Err(e) = blocking(|| consumer.seek(topic, partition, Offset::Offset(offset), SEEK_TIMEOUT)) {
        tracing::warn!(partition, offset, error = %e, "seek failed");
    }
}

/// Verifies that a partition's fetch, started at `expected` (the committed offset), delivers
/// `expected` first. A correct broker does; tansu 0.6 answers a fetch from inside a record
/// batch with the *following* batch, which would silently skip records. Then the fetch is
/// restarted further back (16, 64, 256, … records before `expected`, down to 0) until a
/// record at or before `expected` arrives; the worker skips the records it already has.
/// Nothing arriving for [`CHECK_IDLE`] counts as a skip too (the skipped records may be the
/// partition's tail); on a correct broker that costs one re-read of 16 records. Reaching
/// offset 0 without success accepts the gap (a compacted or truncated log).
struct FetchCheck {
    expected: i64,
    target: i64,
    step: i64,
    since: Instant,
    given_up: bool,
}

impl FetchCheck {
    fn new(expected: i64) -> Self {
        FetchCheck { expected, target: expected, step: 0, since: Instant::now(), given_up: false }
    }

    /// The fetch from `target` did not deliver `expected` (`seen`: what it delivered
    /// instead, -1 for nothing): fetch from further back, or give up at offset 0.
    fn probe_further(&mut self, consumer: &SinkConsumer, topic: &str, partition: i32, seen: i64) {
        if self.target == 0 {
            if seen >= 0 {
                tracing::warn!(
                    partition,
                    expected = self.expected,
                    first = seen,
                    "records missing from the log; continuing after the gap"
                );
            }
            self.given_up = true;
            return;
        }
        self.step = if self.step == 0 { 16 } else { self.step.saturating_mul(4) };
        self.target = (self.expected - self.step).max(0);
        tracing::debug!(
            partition,
            expected = self.expected,
            seen,
            target = self.target,
            "fetch skipped ahead; fetching from further back"
        );
        seek(consumer, topic, partition, self.target);
        self.since = Instant::now();
    }
}
