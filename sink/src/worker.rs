//! A partition worker: reads its partition's queue into a buffer, hands due batches to a
//! batch task ([`BatchWriter`]) one at a time, stores the offset after each batch that ended
//! `Done`, and checks where a (re)started fetch really starts.
//!
//! Guarantee: a partition has at most one batch in flight, so a row's mutations reach HBase
//! in partition order, and the stored offset is always the end of a contiguous prefix of
//! acknowledged records. Failure: a batch abandoned while the partition is still assigned,
//! or a panicked batch task, stops the worker with an error (the sink stops: storing later
//! offsets past an unknown part would lose rows); a full buffer stops reading the queue.
//!
//! # Where a fetch starts
//!
//! A worker knows where its partition's fetch must start (the committed offset) and checks
//! that the first record is that one ([`FetchCheck`]): tansu 0.6 answers a fetch from the
//! middle of a record batch with the next batch, which would silently skip records.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::Consumer;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use chatpipe_common::seek_back::SeekBack;

use crate::batch::{Buffer, Record};
use crate::config::Config;
use crate::consumer::{blocking, SinkConsumer, SinkContext};
use crate::metrics::kind;
use crate::ownership::{Begin, FinishGuard, Ownership};
use crate::writer::{BatchOutcome, BatchReport, BatchWriter};
use crate::Error;

/// A partition whose fetch was (re)started and delivered nothing for this long is checked
/// for skipped records (see [`FetchCheck`]).
const CHECK_IDLE: Duration = Duration::from_secs(1);
/// How long reading the committed offsets may take.
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a seek may wait for librdkafka.
const SEEK_TIMEOUT: Duration = Duration::from_secs(5);

/// What every partition worker uses.
pub(crate) struct WorkerDeps {
    pub(crate) config: Config,
    pub(crate) consumer: Arc<SinkConsumer>,
    pub(crate) ownership: Arc<Ownership>,
    pub(crate) writer: Arc<BatchWriter>,
    pub(crate) permits: Arc<Semaphore>,
    /// Shutdown: stop reading, write what is buffered, exit.
    pub(crate) drain: CancellationToken,
    /// `auto.offset.reset` is earliest: without a committed offset, fetches start at the
    /// log start.
    pub(crate) from_earliest: bool,
}

/// One batch: the writer writes it; then, still inside the task, the offset after its last
/// record is stored — before the partition's in-flight mark is cleared, so a revocation
/// that waited for the batch commits that offset.
async fn batch_task(
    deps: Arc<WorkerDeps>,
    partition: i32,
    records: Vec<Record>,
    last_delete_ack: Option<Instant>,
    cancel: CancellationToken,
    permit: OwnedSemaphorePermit,
) -> BatchReport {
    // cleared however the task ends (dropped last: after the offset is stored)
    let _finish = FinishGuard { ownership: Arc::clone(&deps.ownership), partition };
    let report = Arc::clone(&deps.writer).run_batch(partition, records, last_delete_ack, cancel, permit).await;
    if let Some(next) = report.next_offset {
        let mut list = TopicPartitionList::new();
        let stored = list
            .add_partition_offset(&deps.config.rows_topic, partition, Offset::Offset(next))
            .and_then(|()| deps.consumer.store_offsets(&list));
        if let Err(e) = stored {
            // after a revocation the partition is gone: the next owner writes them again
            tracing::debug!(partition, error = %e, "offset not stored");
            deps.writer.metrics.error(kind::OFFSET_COMMIT);
        }
    }
    report
}

/// One partition's bookkeeping, owned by its worker.
#[derive(Default)]
pub(crate) struct WorkerState {
    buffer: Buffer,
    /// The offset after the last record received.
    next_offset: Option<i64>,
    /// Verifying that a fetch (re)started at `next_offset` really starts there.
    check: Option<FetchCheck>,
    last_delete_ack: Option<Instant>,
    /// Not reading because the buffer is full.
    full: bool,
}

/// The task that serves one assigned partition (see `sink.rs` for the shape).
pub(crate) struct Worker {
    pub(crate) deps: Arc<WorkerDeps>,
    pub(crate) partition: i32,
    pub(crate) generation: u64,
    pub(crate) state: WorkerState,
}

impl Worker {
    pub(crate) async fn run(
        mut self,
        queue: StreamPartitionQueue<SinkContext>,
        stop: CancellationToken,
    ) -> Result<(), Error> {
        let deps = Arc::clone(&self.deps);
        let cfg = &deps.config;
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
                    deps.writer.metrics.in_flight.dec();
                    match report {
                        Ok(r) => {
                            self.state.last_delete_ack = r.last_delete_ack;
                            if r.outcome == BatchOutcome::Abandoned && !stop.is_cancelled() && !draining {
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
                _ = deps.drain.cancelled(), if !draining => draining = true,
                permit = Arc::clone(&deps.permits).acquire_owned(), if want_permit => {
                    let Ok(permit) = permit else { break Ok(()) };
                    let token = CancellationToken::new();
                    match deps.ownership.begin(self.partition, self.generation, token.clone()) {
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
                    let m = &deps.writer.metrics;
                    m.batch_rows.observe(records.len() as f64);
                    m.batch_bytes.observe(records.iter().map(Record::bytes).sum::<usize>() as f64);
                    m.in_flight.inc();
                    batch = Some(tokio::spawn(batch_task(
                        Arc::clone(&deps),
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
                            deps.writer.health.set("kafka", true);
                            kafka_ok = true;
                        }
                        self.on_message(m.offset(), m.key(), m.payload());
                    }
                    Some(Err(e)) => {
                        kafka_ok = false;
                        deps.writer.metrics.error(kind::KAFKA);
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
            deps.writer.metrics.in_flight.dec();
            drop(b);
        }
        result
    }

    fn set_full(&mut self, full: bool) {
        if full != self.state.full {
            self.state.full = full;
            if full {
                self.deps.writer.metrics.paused.inc();
            } else {
                self.deps.writer.metrics.paused.dec();
            }
        }
    }

    /// Reads where the fetch starts — the committed offset, or the log start when nothing is
    /// committed and `auto.offset.reset` is `earliest` (the sink's default) — and expects
    /// the first record there.
    fn start_at_committed(&mut self) {
        let (topic, partition) = (&self.deps.config.rows_topic, self.partition);
        let mut list = TopicPartitionList::new();
        list.add_partition(topic, partition);
        let consumer = &self.deps.consumer;
        let committed = match blocking(|| consumer.committed_offsets(list, COMMITTED_TIMEOUT)) {
            Ok(c) => c.find_partition(topic, partition).map(|e| e.offset()),
            Err(e) => {
                tracing::warn!(partition, error = %e, "cannot read the committed offset; not checking where the fetch starts");
                return;
            }
        };
        let start = match committed {
            Some(Offset::Offset(o)) => Some(o),
            _ if self.deps.from_earliest => {
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
        let (partition, topic) = (self.partition, &self.deps.config.rows_topic);
        let st = &mut self.state;
        if let Some(check) = st.check.as_mut() {
            if offset > check.expected {
                // The fetch skipped records (see `FetchCheck`): fetch from further back;
                // the records before `expected` are skipped below.
                check.probe_further(&self.deps.consumer, topic, partition, offset);
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
                check.probe_further(&self.deps.consumer, &self.deps.config.rows_topic, self.partition, -1);
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
/// record at or before `expected` arrives ([`SeekBack`], the schedule the processor follows
/// too); the worker skips the records it already has.
/// Nothing arriving for [`CHECK_IDLE`] counts as a skip too (the skipped records may be the
/// partition's tail); on a correct broker that costs one re-read of 16 records. Reaching
/// offset 0 without success accepts the gap (a compacted or truncated log).
struct FetchCheck {
    expected: i64,
    seek: SeekBack,
    since: Instant,
    given_up: bool,
}

impl FetchCheck {
    fn new(expected: i64) -> Self {
        FetchCheck { expected, seek: SeekBack::default(), since: Instant::now(), given_up: false }
    }

    /// The fetch from `target` did not deliver `expected` (`seen`: what it delivered
    /// instead, -1 for nothing): fetch from further back, or give up at offset 0.
    fn probe_further(&mut self, consumer: &SinkConsumer, topic: &str, partition: i32, seen: i64) {
        let Some(target) = self.seek.next_target(self.expected) else {
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
        };
        tracing::debug!(
            partition,
            expected = self.expected,
            seen,
            target,
            "fetch skipped ahead; fetching from further back"
        );
        seek(consumer, topic, partition, target);
        self.since = Instant::now();
    }
}
