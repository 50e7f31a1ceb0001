//! The consume → batch → write → commit loop.
//!
//! # Shape
//!
//! One task (the *loop*) owns the consumer's message stream and every partition's
//! [`Buffer`]. When a partition's buffer is due (rows, bytes or age) and the partition has
//! no batch in flight, the loop takes a batch and spawns a *batch task* that writes it (see
//! [`Writer`]), bounded by `--max-in-flight` permits over all partitions. One batch per
//! partition at a time keeps each row's mutations in order (a row lives in one partition);
//! different partitions write in parallel.
//!
//! # Offsets
//!
//! Auto-commit is on with `enable.auto.offset.store=false`: a batch task stores
//! `last offset + 1` only after every record of the batch is acknowledged by HBase or by
//! the DLQ. Since a partition's batches run one after another, the stored offset is always
//! the end of a contiguous prefix of written records; a batch that keeps failing holds back
//! every later offset of its partition.
//!
//! # Backpressure
//!
//! A partition whose buffer reaches `max(2 × batch rows, 1024)` records or `2 × batch
//! bytes` is paused in the consumer and resumed when it drains, so a partition retrying
//! against a failing HBase stops consuming while the others go on.
//!
//! # Rebalances and shutdown
//!
//! On revocation, the consumer's rebalance callback waits (up to `--drain-timeout`) for the
//! revoked partitions' in-flight batches, which store their offsets, then commits. Batches
//! still running then are cancelled: they stop at their next retry or step and store
//! nothing, so their rows are written again by the next owner. Buffered records of revoked
//! partitions are dropped (never stored). A new batch for a partition never starts while an
//! older one, even a cancelled one, is still running. Shutdown stops consuming, writes what
//! is buffered, waits for in-flight batches up to `--drain-timeout`, and commits.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chatpipe_common::http::Health;
use chatpipe_common::kafka::{dlq, record_consumer_lag};
use futures::stream::{FuturesUnordered, StreamExt};
use hbase_thrift::hbase::BatchMutation;
use rand::Rng;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Message, Offset, Statistics, TopicPartitionList};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::batch::{plan, plan_mutations, reason, Buffer, Entry, EntryOp, Phase, Record, Rejection};
use crate::config::Config;
use crate::hbase::{batch_mutation, HbaseClient, HbaseError, HbasePool};
use crate::metrics::{kind, SinkMetrics};
use crate::Error;

/// HBase timestamps are milliseconds: a put must reach the server at least this long after
/// the acknowledgement of a delete it follows, so that its timestamp is strictly greater.
/// Two milliseconds, because the server's clock ticks independently of ours.
const DELETE_BARRIER: Duration = Duration::from_millis(2);
/// Longest detail text put in a DLQ header.
const MAX_DETAIL: usize = 1000;
/// A partition whose fetch was (re)started and delivered nothing for this long is checked
/// for skipped records (see [`FetchCheck`]).
const CHECK_IDLE: Duration = Duration::from_secs(1);
/// How long reading the committed offsets may take.
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a seek may wait for librdkafka.
const SEEK_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout of one DLQ produce before it is retried.
const DLQ_SEND_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// State shared between the loop, the batch tasks and the rebalance callback
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct PartShared {
    /// Bumped on every revocation: the loop's buffers of an older generation are stale.
    generation: u64,
    /// The running batch, if any (cancelled when a revocation times out).
    in_flight: Option<CancellationToken>,
}

/// What the loop, the batch tasks and the rebalance callback share (std locks: the
/// callback runs inside librdkafka's poll, outside any async context).
#[derive(Default)]
pub(crate) struct Shared {
    parts: Mutex<HashMap<i32, PartShared>>,
    idle: Condvar,
    next_generation: AtomicU64,
    rebalanced: AtomicBool,
    /// Partitions of the rows topic currently assigned.
    assigned: Mutex<Vec<i32>>,
}

enum Begin {
    Started,
    /// The loop's state is from before a revocation.
    Stale(u64),
    /// An older batch (maybe cancelled) is still running.
    Busy,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, PartShared>> {
        self.parts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn generation(&self, partition: i32) -> u64 {
        self.lock().entry(partition).or_default().generation
    }

    fn begin(&self, partition: i32, generation: u64, token: CancellationToken) -> Begin {
        let mut parts = self.lock();
        let p = parts.entry(partition).or_default();
        if p.generation != generation {
            Begin::Stale(p.generation)
        } else if p.in_flight.is_some() {
            Begin::Busy
        } else {
            p.in_flight = Some(token);
            Begin::Started
        }
    }

    fn finish(&self, partition: i32) {
        if let Some(p) = self.lock().get_mut(&partition) {
            p.in_flight = None;
        }
        self.idle.notify_all();
    }

    /// Marks `partitions` revoked, waits up to `timeout` for their batches, cancels the
    /// ones still running. Blocking.
    fn revoke(&self, partitions: &[i32], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut parts = self.lock();
        for p in partitions {
            let g = self.next_generation.fetch_add(1, Ordering::Relaxed) + 1;
            parts.entry(*p).or_default().generation = g;
        }
        loop {
            let busy = partitions.iter().filter(|p| parts.get(p).is_some_and(|s| s.in_flight.is_some())).count();
            let now = Instant::now();
            if busy == 0 {
                break;
            }
            if now >= deadline {
                tracing::warn!(batches = busy, "revocation: batches still in flight after the drain timeout; cancelled (their rows will be written again)");
                for p in partitions {
                    if let Some(token) = parts.get(p).and_then(|s| s.in_flight.as_ref()) {
                        token.cancel();
                    }
                }
                break;
            }
            parts = match self.idle.wait_timeout(parts, deadline - now) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        drop(parts);
        self.rebalanced.store(true, Ordering::SeqCst);
    }

    fn set_assigned(&self, add: &[i32], remove: &[i32]) {
        let mut a = self.assigned.lock().unwrap_or_else(|p| p.into_inner());
        a.retain(|p| !remove.contains(p));
        for p in add {
            if !a.contains(p) {
                a.push(*p);
            }
        }
        drop(a);
        self.rebalanced.store(true, Ordering::SeqCst);
    }

    fn assigned(&self) -> Vec<i32> {
        self.assigned.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn cancel_all(&self) {
        for p in self.lock().values() {
            if let Some(t) = &p.in_flight {
                t.cancel();
            }
        }
    }
}

/// Clears a partition's in-flight mark when its batch task ends, however it ends.
struct FinishGuard {
    shared: Arc<Shared>,
    partition: i32,
}

impl Drop for FinishGuard {
    fn drop(&mut self) {
        self.shared.finish(self.partition);
    }
}

// ---------------------------------------------------------------------------------------
// Consumer context: lag metrics and the rebalance drain
// ---------------------------------------------------------------------------------------

/// The consumer's context: records lag from statistics, drains revoked partitions.
pub(crate) struct SinkContext {
    pub(crate) shared: Arc<Shared>,
    pub(crate) topic: String,
    pub(crate) lag: prometheus::IntGaugeVec,
    pub(crate) drain_timeout: Duration,
}

impl ClientContext for SinkContext {
    fn stats(&self, statistics: Statistics) {
        record_consumer_lag(&statistics, &self.lag);
    }
}

impl ConsumerContext for SinkContext {
    fn pre_rebalance(&self, base_consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let partitions: Vec<i32> = tpl.elements_for_topic(&self.topic).iter().map(|e| e.partition()).collect();
                tracing::info!(?partitions, "partitions revoked; draining in-flight batches");
                // Waiting blocks this thread; batch tasks need the runtime's other threads.
                let multi_thread = tokio::runtime::Handle::try_current()
                    .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
                if multi_thread {
                    tokio::task::block_in_place(|| self.shared.revoke(&partitions, self.drain_timeout));
                } else {
                    self.shared.revoke(&partitions, Duration::ZERO);
                }
                commit(base_consumer);
            }
            Rebalance::Assign(tpl) => {
                let partitions: Vec<i32> = tpl.elements_for_topic(&self.topic).iter().map(|e| e.partition()).collect();
                tracing::info!(?partitions, "partitions assigned");
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }

    fn post_rebalance(&self, _base_consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let partitions = |tpl: &TopicPartitionList| -> Vec<i32> {
            tpl.elements_for_topic(&self.topic).iter().map(|e| e.partition()).collect()
        };
        match rebalance {
            Rebalance::Assign(tpl) => self.shared.set_assigned(&partitions(tpl), &[]),
            Rebalance::Revoke(tpl) => self.shared.set_assigned(&[], &partitions(tpl)),
            Rebalance::Error(_) => self.shared.rebalanced.store(true, Ordering::SeqCst),
        }
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

// ---------------------------------------------------------------------------------------
// Writer: runs one batch
// ---------------------------------------------------------------------------------------

/// How a batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Every record is in HBase or in the DLQ and the offset is stored.
    Done,
    /// Cancelled (revocation timeout, shutdown): nothing stored.
    Abandoned,
}

struct BatchReport {
    partition: i32,
    generation: u64,
    outcome: Outcome,
    last_delete_ack: Option<Instant>,
}

/// Cancelled while writing.
struct Abandoned;

/// What every batch task shares.
pub(crate) struct Writer {
    pub(crate) pool: HbasePool,
    pub(crate) producer: FutureProducer,
    pub(crate) consumer: Arc<SinkConsumer>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) metrics: SinkMetrics,
    pub(crate) health: Health,
    pub(crate) topic: String,
    pub(crate) dlq_topic: String,
    pub(crate) retry_backoff: Duration,
    pub(crate) retry_max_backoff: Duration,
    pub(crate) max_retries: u32,
}

/// The backoff before retry number `attempt` (1-based): exponential, capped, with jitter
/// in [½, 1] of the step so that many partitions do not retry in lockstep.
pub(crate) fn backoff(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let step = initial.saturating_mul(1u32 << attempt.saturating_sub(1).min(20)).min(max);
    let half = step / 2;
    half + half.mul_f64(rand::thread_rng().gen_range(0.0..=1.0))
}

/// Runs a blocking librdkafka call from the loop: in place on a multi-threaded runtime (the
/// other workers go on), directly otherwise.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_thread {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// One batch being written.
struct BatchRun<'a> {
    writer: &'a Writer,
    records: &'a [Record],
    partition: i32,
    cancel: CancellationToken,
    last_delete_ack: Option<Instant>,
    /// Per record: written to HBase.
    written: Vec<bool>,
    /// Records for the DLQ, with why.
    rejected: Vec<(usize, Rejection)>,
}

impl Writer {
    async fn run_batch(
        self: Arc<Self>,
        partition: i32,
        generation: u64,
        records: Vec<Record>,
        last_delete_ack: Option<Instant>,
        cancel: CancellationToken,
        _permit: OwnedSemaphorePermit,
    ) -> BatchReport {
        let _finish = FinishGuard { shared: Arc::clone(&self.shared), partition };
        let mut run = BatchRun {
            writer: &self,
            records: &records,
            partition,
            cancel,
            last_delete_ack,
            written: vec![false; records.len()],
            rejected: Vec::new(),
        };
        let outcome = match run.execute().await {
            Ok(()) => Outcome::Done,
            Err(Abandoned) => {
                self.metrics.error(kind::ABANDONED);
                Outcome::Abandoned
            }
        };
        BatchReport { partition, generation, outcome, last_delete_ack: run.last_delete_ack }
    }
}

impl BatchRun<'_> {
    async fn execute(&mut self) -> Result<(), Abandoned> {
        for (i, r) in self.records.iter().enumerate() {
            if let Err(rejection) = &r.content {
                self.rejected.push((i, rejection.clone()));
            }
        }
        for phase in plan(self.records) {
            self.run_phase(&phase).await?;
        }
        self.send_rejected().await?;
        if self.cancel.is_cancelled() {
            return Err(Abandoned);
        }
        self.account();
        if let Some(last) = self.records.last() {
            let w = self.writer;
            // the offset to commit is the next one to read (`store_offset` would add 1)
            let mut next = TopicPartitionList::new();
            let stored = next
                .add_partition_offset(&w.topic, self.partition, Offset::Offset(last.offset + 1))
                .and_then(|()| w.consumer.store_offsets(&next));
            if let Err(e) = stored {
                // after a revocation the partition is gone: the next owner writes them again
                tracing::debug!(partition = self.partition, error = %e, "offset not stored");
                w.metrics.error(kind::OFFSET_COMMIT);
            }
        }
        Ok(())
    }

    /// Rows per table and end-to-end latency of what HBase acknowledged.
    fn account(&self) {
        let m = &self.writer.metrics;
        let mut per_table: BTreeMap<&str, u64> = BTreeMap::new();
        let now = now_ms();
        for (r, _) in self.records.iter().zip(&self.written).filter(|(_, w)| **w) {
            if let Ok(mutation) = &r.content {
                *per_table.entry(mutation.table.as_str()).or_default() += 1;
                if mutation.ingested_at_ms > 0 {
                    m.end_to_end_latency.observe((now - mutation.ingested_at_ms).max(0) as f64 / 1000.0);
                }
            }
        }
        for (table, n) in per_table {
            m.rows_written.with_label_values(&[table]).inc_by(n);
        }
    }

    /// Waits until a put cannot share a millisecond with the last acknowledged delete.
    async fn delete_barrier(&self) {
        if let Some(at) = self.last_delete_ack {
            let ready = at + DELETE_BARRIER;
            if Instant::now() < ready {
                tokio::time::sleep_until(ready.into()).await;
            }
        }
    }

    fn run_phase<'s>(
        &'s mut self,
        phase: &'s Phase,
    ) -> Pin<Box<dyn Future<Output = Result<(), Abandoned>> + Send + 's>> {
        Box::pin(async move {
            if phase.has_puts() {
                self.delete_barrier().await;
            }
            let mut writes: BTreeMap<&str, Vec<&Entry>> = BTreeMap::new();
            let mut row_deletes = Vec::new();
            for e in &phase.entries {
                match e.op {
                    EntryOp::Write { .. } => writes.entry(e.table.as_str()).or_default().push(e),
                    EntryOp::DeleteRow => row_deletes.push(e),
                }
            }
            for (table, entries) in writes {
                self.write_rows(table, entries).await?;
            }
            for e in row_deletes {
                let make = || {
                    let (table, row) = (e.table.clone(), e.row.clone());
                    move |c: &mut HbaseClient| c.delete_all_row(&table, &row)
                };
                match self.call(make).await? {
                    Ok(()) => self.mark_written(e),
                    Err(err) => self.reject_entry(e, &err),
                }
            }
            if phase.has_deletes() {
                self.last_delete_ack = Some(Instant::now());
            }
            Ok(())
        })
    }

    /// `mutateRows` for one table's entries; on a permanent error, splits the call in
    /// halves to find the rows HBase refuses, and replays a refused row's records one by
    /// one, so that only the records HBase refuses go to the DLQ.
    async fn write_rows(&mut self, table: &str, entries: Vec<&Entry>) -> Result<(), Abandoned> {
        let mut stack = vec![entries];
        while let Some(chunk) = stack.pop() {
            let batches: Arc<Vec<BatchMutation>> = Arc::new(chunk.iter().filter_map(|e| batch_mutation(e)).collect());
            let make = || {
                let (batches, table) = (Arc::clone(&batches), table.to_owned());
                move |c: &mut HbaseClient| c.mutate_rows(&table, (*batches).clone())
            };
            let result = self.call(make).await?;
            match result {
                Ok(()) => chunk.iter().for_each(|e| self.mark_written(e)),
                Err(err) if err.is_retriable() || err.dlq_reason() == reason::UNKNOWN_TABLE => {
                    // retries exhausted, or nothing of this table can be written
                    chunk.iter().for_each(|e| self.reject_entry(e, &err));
                }
                Err(err) if chunk.len() > 1 => {
                    tracing::debug!(table, rows = chunk.len(), error = %err, "permanent error; bisecting the call");
                    let mut first = chunk;
                    let second = first.split_off(first.len() / 2);
                    stack.push(second);
                    stack.push(first);
                }
                Err(err) => {
                    let entry = chunk[0];
                    if entry.sources.len() == 1 {
                        self.reject_entry(entry, &err);
                    } else {
                        self.replay_one_by_one(entry).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes each record of a refused entry on its own, in order.
    async fn replay_one_by_one(&mut self, entry: &Entry) -> Result<(), Abandoned> {
        let records = self.records;
        for &i in &entry.sources {
            let Ok(m) = &records[i].content else { continue };
            for phase in plan_mutations(std::iter::once((i, m))) {
                self.run_phase(&phase).await?;
            }
        }
        Ok(())
    }

    fn mark_written(&mut self, e: &Entry) {
        for &i in &e.sources {
            self.written[i] = true;
        }
    }

    fn reject_entry(&mut self, e: &Entry, err: &HbaseError) {
        let rejection = Rejection::new(err.dlq_reason(), err.to_string());
        for &i in &e.sources {
            self.rejected.push((i, rejection.clone()));
        }
    }

    /// Runs one HBase call, retrying transient errors with backoff until it succeeds, fails
    /// permanently, uses up `--max-retries` (then the error is returned) or the batch is
    /// cancelled. `make` builds the call for each attempt.
    async fn call<T, F, M>(&self, make: M) -> Result<Result<T, HbaseError>, Abandoned>
    where
        M: Fn() -> F,
        F: FnOnce(&mut HbaseClient) -> Result<T, HbaseError> + Send + 'static,
        T: Send + 'static,
    {
        let w = self.writer;
        let mut failures: u32 = 0;
        loop {
            if self.cancel.is_cancelled() {
                return Err(Abandoned);
            }
            let started = Instant::now();
            let result = w.pool.call(make()).await;
            w.metrics.hbase_write_latency.observe(started.elapsed().as_secs_f64());
            match result {
                Ok(v) => {
                    if failures > 0 {
                        tracing::info!(partition = self.partition, failures, "HBase call succeeded after retries");
                    }
                    w.health.set("hbase", true);
                    return Ok(Ok(v));
                }
                Err(e) if e.is_retriable() => {
                    w.metrics.error(kind::HBASE_TRANSIENT);
                    w.health.set("hbase", false);
                    failures += 1;
                    if w.max_retries > 0 && failures > w.max_retries {
                        w.metrics.retries_exhausted.inc();
                        tracing::error!(partition = self.partition, failures, error = %e,
                            "HBase call failed after --max-retries; its rows go to the DLQ");
                        return Ok(Err(e));
                    }
                    if failures.is_power_of_two() {
                        tracing::warn!(partition = self.partition, failures, error = %e,
                            "transient HBase error; retrying with backoff (partition paused when its buffer fills)");
                    }
                    w.metrics.retries.inc();
                    let delay = backoff(w.retry_backoff, w.retry_max_backoff, failures);
                    tokio::select! {
                        _ = self.cancel.cancelled() => return Err(Abandoned),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                Err(e) => {
                    w.metrics.error(kind::HBASE_PERMANENT);
                    return Ok(Err(e));
                }
            }
        }
    }

    /// Produces every rejected record to the DLQ and waits for the acknowledgements;
    /// retries a failed produce forever (the offset must not pass an unrecorded record).
    async fn send_rejected(&mut self) -> Result<(), Abandoned> {
        if self.rejected.is_empty() {
            return Ok(());
        }
        let sends = self.rejected.iter().map(|(i, rejection)| self.send_one(&self.records[*i], rejection));
        futures::future::join_all(sends).await.into_iter().collect::<Result<Vec<()>, Abandoned>>()?;
        Ok(())
    }

    async fn send_one(&self, record: &Record, rejection: &Rejection) -> Result<(), Abandoned> {
        let w = self.writer;
        let detail: String = rejection.detail.chars().take(MAX_DETAIL).collect();
        let partition = self.partition.to_string();
        let offset = record.offset.to_string();
        let mut failures: u32 = 0;
        loop {
            let headers = OwnedHeaders::new()
                .insert(Header { key: dlq::REASON, value: Some(rejection.reason) })
                .insert(Header { key: dlq::DETAIL, value: Some(detail.as_str()) })
                .insert(Header { key: dlq::STAGE, value: Some("sink") })
                .insert(Header { key: dlq::TOPIC, value: Some(w.topic.as_str()) })
                .insert(Header { key: dlq::PARTITION, value: Some(partition.as_str()) })
                .insert(Header { key: dlq::OFFSET, value: Some(offset.as_str()) });
            let mut fr: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&w.dlq_topic).headers(headers);
            if !record.payload.is_empty() {
                fr = fr.payload(record.payload.as_slice()); // a null value stays null
            }
            if let Some(k) = &record.key {
                fr = fr.key(k.as_slice());
            }
            let sent = tokio::select! {
                _ = self.cancel.cancelled() => return Err(Abandoned),
                r = w.producer.send(fr, DLQ_SEND_TIMEOUT) => r,
            };
            match sent {
                Ok(_) => {
                    w.metrics.dlq_records.with_label_values(&[rejection.reason]).inc();
                    return Ok(());
                }
                Err((e, _)) => {
                    failures += 1;
                    w.metrics.error(kind::DLQ_PRODUCE);
                    if failures.is_power_of_two() {
                        tracing::warn!(error = %e, failures, "DLQ produce failed; retrying");
                    }
                    let delay = backoff(w.retry_backoff, w.retry_max_backoff, failures);
                    tokio::select! {
                        _ = self.cancel.cancelled() => return Err(Abandoned),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The loop
// ---------------------------------------------------------------------------------------

struct PartitionState {
    generation: u64,
    buffer: Buffer,
    /// A batch of this generation is in flight.
    busy: bool,
    paused: bool,
    /// The offset after the last record received.
    next_offset: Option<i64>,
    /// Verifying that a fetch (re)started at `next_offset` really starts there.
    check: Option<FetchCheck>,
    last_delete_ack: Option<Instant>,
}

impl PartitionState {
    fn new(generation: u64) -> Self {
        PartitionState {
            generation,
            buffer: Buffer::default(),
            busy: false,
            paused: false,
            next_offset: None,
            check: None,
            last_delete_ack: None,
        }
    }
}

type InFlight = Pin<Box<dyn Future<Output = Result<BatchReport, String>> + Send>>;

pub(crate) struct Pipeline {
    pub(crate) config: Config,
    pub(crate) consumer: Arc<SinkConsumer>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) writer: Arc<Writer>,
    pub(crate) permits: Arc<Semaphore>,
    partitions: HashMap<i32, PartitionState>,
    in_flight: FuturesUnordered<InFlight>,
    rotate: usize,
}

impl Pipeline {
    pub(crate) fn new(config: Config, consumer: Arc<SinkConsumer>, shared: Arc<Shared>, writer: Arc<Writer>) -> Self {
        let permits = Arc::new(Semaphore::new(config.max_in_flight));
        Pipeline {
            config,
            consumer,
            shared,
            writer,
            permits,
            partitions: HashMap::new(),
            in_flight: FuturesUnordered::new(),
            rotate: 0,
        }
    }

    fn metrics(&self) -> &SinkMetrics {
        &self.writer.metrics
    }

    /// Consumes until `shutdown`, then drains and commits.
    pub(crate) async fn run(mut self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), Error> {
        let tick_every = (self.config.flush_interval / 4).clamp(Duration::from_millis(1), Duration::from_millis(50));
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut shutdown = std::pin::pin!(shutdown);
        let consumer = Arc::clone(&self.consumer);
        let mut kafka_errors: u64 = 0;
        loop {
            tokio::select! {
                biased;
                Some(done) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    self.on_done(done)?;
                    self.dispatch_due(false);
                }
                () = &mut shutdown => break,
                _ = tick.tick() => {
                    self.reconcile();
                    self.check_idle_fetches();
                    self.dispatch_due(false);
                }
                msg = consumer.recv() => match msg {
                    Ok(m) => {
                        self.writer.health.set("kafka", true);
                        let partition = m.partition();
                        self.on_message(partition, m.offset(), m.key(), m.payload());
                        self.dispatch_partition(partition, false);
                    }
                    Err(e) => {
                        kafka_errors += 1;
                        self.metrics().error(kind::KAFKA);
                        if kafka_errors.is_power_of_two() {
                            tracing::warn!(error = %e, count = kafka_errors, "consumer error");
                        }
                    }
                },
            }
        }
        self.drain().await
    }

    fn on_message(&mut self, partition: i32, offset: i64, key: Option<&[u8]>, payload: Option<&[u8]>) {
        if self.shared.rebalanced.load(Ordering::SeqCst) {
            self.reconcile();
        }
        let generation = self.shared.generation(partition);
        let st = self.partitions.entry(partition).or_insert_with(|| PartitionState::new(generation));
        if st.generation != generation {
            Self::reset(&self.consumer, &self.config, &self.writer.metrics, partition, st, generation);
        }
        if let Some(check) = st.check.as_mut() {
            if offset > check.expected {
                // The fetch skipped records (see `FetchCheck`): fetch from further back;
                // the records before `expected` are skipped below.
                check.probe_further(&self.consumer, &self.config.rows_topic, partition, offset);
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
        if !st.paused
            && (st.buffer.len() >= self.config.max_buffered_rows()
                || st.buffer.bytes() >= self.config.max_buffered_bytes())
        {
            match self.consumer.pause(&tpl(&self.config.rows_topic, partition)) {
                Ok(()) => {
                    tracing::debug!(partition, offset, buffered = st.buffer.len(), "partition paused");
                    st.paused = true;
                    self.writer.metrics.paused.inc();
                }
                Err(e) => tracing::debug!(partition, error = %e, "pause failed"),
            }
        }
    }

    /// Partitions whose fetch check saw nothing for a while probe further back (the
    /// skipped records may be the tail of the partition, with nothing after them).
    fn check_idle_fetches(&mut self) {
        for (p, st) in &mut self.partitions {
            if let Some(check) = st.check.as_mut() {
                if check.since.elapsed() >= CHECK_IDLE {
                    check.probe_further(&self.consumer, &self.config.rows_topic, *p, -1);
                    if check.given_up {
                        st.check = None;
                    }
                }
            }
        }
    }

    /// Drops a partition's state from before a revocation.
    fn reset(
        consumer: &SinkConsumer,
        config: &Config,
        metrics: &SinkMetrics,
        partition: i32,
        st: &mut PartitionState,
        generation: u64,
    ) {
        if st.paused {
            let _ = consumer.resume(&tpl(&config.rows_topic, partition));
            metrics.paused.dec();
        }
        if st.busy {
            metrics.in_flight.dec();
        }
        *st = PartitionState::new(generation);
    }

    /// After a rebalance: forget the buffers of revoked partitions; start newly assigned
    /// ones at their committed offset, with a [`FetchCheck`].
    fn reconcile(&mut self) {
        if !self.shared.rebalanced.swap(false, Ordering::SeqCst) {
            return;
        }
        let stale: Vec<(i32, u64)> = self
            .partitions
            .iter()
            .filter_map(|(p, st)| {
                let g = self.shared.generation(*p);
                (g != st.generation).then_some((*p, g))
            })
            .collect();
        for (p, g) in stale {
            if let Some(st) = self.partitions.get_mut(&p) {
                Self::reset(&self.consumer, &self.config, &self.writer.metrics, p, st, g);
            }
        }
        let fresh: Vec<i32> = self
            .shared
            .assigned()
            .into_iter()
            .filter(|p| self.partitions.get(p).is_none_or(|st| st.next_offset.is_none() && st.check.is_none()))
            .collect();
        if fresh.is_empty() {
            return;
        }
        let mut list = TopicPartitionList::new();
        for p in &fresh {
            list.add_partition(&self.config.rows_topic, *p);
        }
        let consumer = &self.consumer;
        let committed = match blocking(|| consumer.committed_offsets(list, COMMITTED_TIMEOUT)) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read committed offsets; not checking where fetches start");
                return;
            }
        };
        for p in fresh {
            let generation = self.shared.generation(p);
            let st = self.partitions.entry(p).or_insert_with(|| PartitionState::new(generation));
            let offset = committed.find_partition(&self.config.rows_topic, p).map(|e| e.offset());
            if let Some(Offset::Offset(o)) = offset {
                if o > 0 {
                    st.next_offset = Some(o);
                    st.check = Some(FetchCheck::new(o));
                }
            }
        }
    }

    fn dispatch_due(&mut self, force: bool) {
        let mut keys: Vec<i32> = self.partitions.keys().copied().collect();
        keys.sort_unstable();
        if keys.is_empty() {
            return;
        }
        self.rotate = self.rotate.wrapping_add(1);
        let start = self.rotate % keys.len();
        keys.rotate_left(start);
        for p in keys {
            if !self.dispatch_partition(p, force) {
                break; // no permit left
            }
        }
    }

    /// Starts a batch for `partition` if one is due; false when no permit is left.
    fn dispatch_partition(&mut self, partition: i32, force: bool) -> bool {
        let cfg = &self.config;
        let Some(st) = self.partitions.get_mut(&partition) else { return true };
        if st.busy
            || st.buffer.is_empty()
            || (!force && !st.buffer.is_due(Instant::now(), cfg.batch_rows, cfg.batch_bytes, cfg.flush_interval))
        {
            return true;
        }
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else { return false };
        let token = CancellationToken::new();
        match self.shared.begin(partition, st.generation, token.clone()) {
            Begin::Started => {}
            Begin::Busy => return true,
            Begin::Stale(g) => {
                Self::reset(&self.consumer, cfg, &self.writer.metrics, partition, st, g);
                return true;
            }
        }
        let records = st.buffer.take_batch(cfg.batch_rows, cfg.batch_bytes);
        let m = &self.writer.metrics;
        m.batch_rows.observe(records.len() as f64);
        m.batch_bytes.observe(records.iter().map(Record::bytes).sum::<usize>() as f64);
        m.in_flight.inc();
        st.busy = true;
        if st.paused && st.buffer.len() < cfg.max_buffered_rows() && st.buffer.bytes() < cfg.max_buffered_bytes() {
            match self.consumer.resume(&tpl(&cfg.rows_topic, partition)) {
                Ok(()) => {
                    tracing::debug!(partition, buffered = st.buffer.len(), "partition resumed");
                    st.paused = false;
                    m.paused.dec();
                    // librdkafka drops what it had fetched for a paused partition and may
                    // resume from another position: continue exactly after the last record
                    if let Some(next) = st.next_offset {
                        seek(&self.consumer, &cfg.rows_topic, partition, next);
                        st.check = Some(FetchCheck::new(next));
                    }
                }
                Err(e) => tracing::debug!(partition, error = %e, "resume failed"),
            }
        }
        let (generation, last_delete_ack) = (st.generation, st.last_delete_ack);
        let task = tokio::spawn(Arc::clone(&self.writer).run_batch(
            partition,
            generation,
            records,
            last_delete_ack,
            token,
            permit,
        ));
        self.in_flight.push(Box::pin(async move { task.await.map_err(|e| format!("partition {partition}: {e}")) }));
        true
    }

    fn on_done(&mut self, done: Result<BatchReport, String>) -> Result<(), Error> {
        // A batch task that panicked wrote an unknown part of its batch and stored nothing;
        // continuing would store later offsets past it. Stop: the restart replays.
        let report = done.map_err(Error::BatchTask)?;
        let Some(st) = self.partitions.get_mut(&report.partition) else { return Ok(()) };
        if st.generation != report.generation {
            return Ok(()); // revoked meanwhile; its in-flight count was dropped on reset
        }
        self.writer.metrics.in_flight.dec();
        st.busy = false;
        st.last_delete_ack = report.last_delete_ack;
        if report.outcome == Outcome::Abandoned {
            // only cancellation abandons a batch, and only revocation and shutdown cancel
            return Err(Error::BatchTask(format!(
                "partition {}: batch abandoned while the partition is still assigned",
                report.partition
            )));
        }
        Ok(())
    }

    /// Shutdown: write what is buffered, wait for the batches (up to the drain timeout),
    /// commit.
    async fn drain(mut self) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + self.config.drain_timeout;
        tracing::info!("shutting down: writing buffered rows");
        let mut result = Ok(());
        loop {
            self.reconcile();
            self.dispatch_due(true);
            let pending = self.partitions.values().any(|st| !st.buffer.is_empty());
            if self.in_flight.is_empty() && !pending {
                break;
            }
            tokio::select! {
                done = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    if let Some(done) = done {
                        if let Err(e) = self.on_done(done) {
                            result = Err(e);
                            break;
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!("drain timeout: abandoning in-flight batches (their rows are written again after restart)");
                    break;
                }
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
        self.shared.cancel_all();
        // cancelled batches stop at their next step; a blocking call ends by its timeout
        let grace = tokio::time::Instant::now() + Duration::from_secs(5);
        while !self.in_flight.is_empty() {
            tokio::select! {
                _ = self.in_flight.next() => {}
                _ = tokio::time::sleep_until(grace) => break,
            }
        }
        commit(self.consumer.as_ref());
        result
    }
}

/// Moves a partition's fetch position. Synchronous (a few ms, rare): when it returns,
/// librdkafka discards every message it had fetched from the old position.
fn seek(consumer: &SinkConsumer, topic: &str, partition: i32, offset: i64) {
    if let Err(e) = blocking(|| consumer.seek(topic, partition, Offset::Offset(offset), SEEK_TIMEOUT)) {
        tracing::warn!(partition, offset, error = %e, "seek failed");
    }
}

/// Verifies that a partition's fetch, (re)started at `expected` (after an assignment, from
/// the committed offset, or after a resume), delivers `expected` first. A correct broker
/// does; tansu 0.6 answers a fetch from inside a record batch with the *following* batch,
/// which would silently skip records. Then the fetch is restarted further back (16, 64,
/// 256, … records before `expected`, down to 0) until a record at or before `expected`
/// arrives; the loop skips the records it already has. Nothing arriving for
/// [`CHECK_IDLE`] counts as a skip too (the skipped records may be the partition's tail);
/// on a correct broker that costs one re-read of 16 records. Reaching offset 0 without
/// success accepts the gap (a compacted or truncated log).
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

fn tpl(topic: &str, partition: i32) -> TopicPartitionList {
    let mut t = TopicPartitionList::new();
    t.add_partition(topic, partition);
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_with_jitter_and_a_cap() {
        let (i, m) = (Duration::from_millis(100), Duration::from_secs(10));
        for _ in 0..100 {
            let b1 = backoff(i, m, 1);
            assert!(b1 >= Duration::from_millis(50) && b1 <= Duration::from_millis(100), "{b1:?}");
            let b4 = backoff(i, m, 4);
            assert!(b4 >= Duration::from_millis(400) && b4 <= Duration::from_millis(800), "{b4:?}");
            let b30 = backoff(i, m, 30);
            assert!(b30 >= Duration::from_secs(5) && b30 <= Duration::from_secs(10), "{b30:?}");
        }
    }

    #[test]
    fn revocation_waits_for_in_flight_batches_then_cancels() {
        let shared = Arc::new(Shared::default());
        let g = shared.generation(3);
        let token = CancellationToken::new();
        assert!(matches!(shared.begin(3, g, token.clone()), Begin::Started));
        assert!(matches!(shared.begin(3, g, CancellationToken::new()), Begin::Busy));
        // a batch that finishes within the drain timeout is waited for
        let s2 = Arc::clone(&shared);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            s2.finish(3);
        });
        shared.revoke(&[3], Duration::from_secs(10));
        t.join().unwrap();
        assert!(!token.is_cancelled());
        assert!(matches!(shared.begin(3, g, CancellationToken::new()), Begin::Stale(_)));
        // one that does not is cancelled
        let g = shared.generation(3);
        let token = CancellationToken::new();
        assert!(matches!(shared.begin(3, g, token.clone()), Begin::Started));
        shared.revoke(&[3], Duration::from_millis(20));
        assert!(token.is_cancelled());
        assert!(shared.rebalanced.load(Ordering::SeqCst));
    }
}
