//! Writes one batch of one partition: DLQ for what cannot be written, then the planned
//! HBase calls (see `batch.rs`) with retries; it reports what happened and, when done, the
//! offset after the batch's last record, which the partition worker stores (`worker.rs`).
//!
//! A batch ends `Done` — every record acknowledged by HBase or by the DLQ — or `Abandoned`
//! when cancelled (revocation timeout, shutdown), reporting no offset. Transient HBase errors are retried with
//! exponential backoff and jitter, forever or up to `--max-retries` (then the call's records
//! go to the DLQ as `retries_exhausted`); permanent errors send exactly the refused records
//! to the DLQ: a refused call is split in halves until the refused rows are found, and a
//! refused row's coalesced records are replayed one by one.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chatpipe_common::backoff;
use chatpipe_common::http::Health;
use chatpipe_common::kafka::dlq;
use hbase_thrift::hbase::BatchMutation;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use crate::batch::{flatten, plan, plan_mutations, reason, Entry, EntryOp, Phase, Record, Rejection};
use crate::hbase::{batch_mutation, HbaseClient, HbaseError, HbasePool};
use crate::metrics::{kind, SinkMetrics};
use crate::ownership::Ownership;
use chatpipe_common::rows::RowMutation;

/// HBase timestamps are milliseconds: a put must reach the server at least this long after
/// the acknowledgement of a delete it follows, so that its timestamp is strictly greater.
/// Two milliseconds, because the server's clock ticks independently of ours.
const DELETE_BARRIER: Duration = Duration::from_millis(2);
/// Longest detail text put in a DLQ header.
const MAX_DETAIL: usize = 1000;
/// Timeout of one DLQ produce before it is retried.
const DLQ_SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// How a batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BatchOutcome {
    /// Every record is in HBase or in the DLQ and the offset is stored.
    Done,
    /// Cancelled (revocation timeout, shutdown): nothing stored.
    Abandoned,
}

/// What a batch task reports to its partition.
pub(crate) struct BatchReport {
    pub(crate) outcome: BatchOutcome,
    /// When the last delete of the partition was acknowledged (see [`DELETE_BARRIER`]).
    pub(crate) last_delete_ack: Option<Instant>,
    /// `Done`: the offset after the batch's last record, for the worker to store.
    pub(crate) next_offset: Option<i64>,
}

/// Cancelled while writing.
struct Abandoned;

/// What every batch task shares.
pub(crate) struct BatchWriter {
    pub(crate) pool: HbasePool,
    pub(crate) producer: FutureProducer,
    pub(crate) ownership: Arc<Ownership>,
    pub(crate) metrics: SinkMetrics,
    pub(crate) health: Health,
    pub(crate) topic: String,
    pub(crate) dlq_topic: String,
    pub(crate) retry_backoff: Duration,
    pub(crate) retry_max_backoff: Duration,
    pub(crate) max_retries: u32,
    /// Last readiness reported for `hbase` (the health registry is only touched on changes).
    pub(crate) hbase_ok: AtomicBool,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// One batch being written.
struct BatchRun<'a> {
    writer: &'a BatchWriter,
    records: &'a [Record],
    /// Every mutation of the writable records, with its record's index (entries' sources
    /// are positions in this list).
    flat: Vec<(usize, &'a RowMutation)>,
    partition: i32,
    cancel: CancellationToken,
    last_delete_ack: Option<Instant>,
    /// Per mutation of `flat`: written to HBase.
    written: Vec<bool>,
    /// Records for the DLQ, with why.
    rejected: Vec<(usize, Rejection)>,
    /// A call used up `--max-retries`.
    exhausted: AtomicBool,
}

impl BatchWriter {
    fn hbase_ready(&self, ok: bool) {
        if self.hbase_ok.swap(ok, Ordering::Relaxed) != ok {
            self.health.set("hbase", ok);
        }
    }

    /// Writes one batch of a partition (spawned; holds an in-flight permit).
    pub(crate) async fn run_batch(
        self: Arc<Self>,
        partition: i32,
        records: Vec<Record>,
        last_delete_ack: Option<Instant>,
        cancel: CancellationToken,
        _permit: OwnedSemaphorePermit,
    ) -> BatchReport {
        let flat = flatten(&records);
        let mut run = BatchRun {
            writer: &self,
            records: &records,
            written: vec![false; flat.len()],
            flat,
            partition,
            cancel,
            last_delete_ack,
            rejected: Vec::new(),
            exhausted: AtomicBool::new(false),
        };
        let (outcome, next_offset) = match run.execute().await {
            // the offset to commit is the next one to read (`store_offset` would add 1)
            Ok(()) => (BatchOutcome::Done, records.last().map(|r| r.offset + 1)),
            Err(Abandoned) => {
                self.metrics.error(kind::ABANDONED);
                (BatchOutcome::Abandoned, None)
            }
        };
        BatchReport { outcome, last_delete_ack: run.last_delete_ack, next_offset }
    }
}

impl BatchRun<'_> {
    async fn execute(&mut self) -> Result<(), Abandoned> {
        for (i, r) in self.records.iter().enumerate() {
            if let Err(rejection) = &r.content {
                self.rejected.push((i, rejection.clone()));
            }
        }
        for phase in plan(&self.flat) {
            self.run_phase(&phase).await?;
        }
        self.send_rejected().await?;
        if self.cancel.is_cancelled() {
            return Err(Abandoned);
        }
        self.account();
        Ok(())
    }

    /// Rows per table and end-to-end latency of what HBase acknowledged.
    fn account(&self) {
        let m = &self.writer.metrics;
        let mut per_table: BTreeMap<&str, u64> = BTreeMap::new();
        let now = now_ms();
        let mut last_record = None;
        for ((record, mutation), _) in self.flat.iter().zip(&self.written).filter(|(_, w)| **w) {
            *per_table.entry(mutation.table.as_str()).or_default() += 1;
            // one latency sample per event (its mutations share its ingest time)
            if mutation.ingested_at_ms > 0 && last_record != Some(*record) {
                m.end_to_end_latency.observe((now - mutation.ingested_at_ms).max(0) as f64 / 1000.0);
            }
            last_record = Some(*record);
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
        for &i in &entry.sources {
            let m = self.flat[i].1;
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

    /// Sends the records of a refused entry's mutations to the DLQ (a record once, however
    /// many of its rows HBase refused).
    fn reject_entry(&mut self, e: &Entry, err: &HbaseError) {
        let rejection = Rejection::new(err.dlq_reason(), err.to_string());
        for &i in &e.sources {
            let record = self.flat[i].0;
            if !self.rejected.iter().any(|(r, _)| *r == record) {
                self.rejected.push((record, rejection.clone()));
            }
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
            if self.exhausted.load(Ordering::Relaxed) {
                // HBase stayed unavailable for a whole retry budget: the rest of the batch
                // goes to the DLQ too, without another budget per call
                return Ok(Err(HbaseError::Io {
                    message: "an earlier call of this batch used up --max-retries".into(),
                    retriable: true,
                }));
            }
            // the latency of the call itself, on its connection (not the wait for one)
            let f = make();
            let (ownership, partition, batch) = (Arc::clone(&w.ownership), self.partition, self.cancel.clone());
            let result = w
                .pool
                .call(move |c| {
                    // admitted right before it goes on the wire: a revocation waits for an
                    // admitted call, and a cancelled batch's call is not made (ownership.rs)
                    let Some(_call) = ownership.enter_call(partition, &batch) else { return Ok(None) };
                    let started = Instant::now();
                    f(c).map(|v| Some((v, started.elapsed())))
                })
                .await
                .map(|done| {
                    done.map(|(v, took)| {
                        w.metrics.hbase_write_latency.observe(took.as_secs_f64());
                        v
                    })
                });
            match result {
                Ok(None) => return Err(Abandoned), // fenced: the partition was revoked
                Ok(Some(v)) => {
                    if failures > 0 {
                        tracing::info!(partition = self.partition, failures, "HBase call succeeded after retries");
                    }
                    w.hbase_ready(true);
                    return Ok(Ok(v));
                }
                Err(e) if e.is_retriable() => {
                    w.metrics.error(kind::HBASE_TRANSIENT);
                    w.hbase_ready(false);
                    failures += 1;
                    if w.max_retries > 0 && failures > w.max_retries {
                        self.exhausted.store(true, Ordering::Relaxed);
                        w.metrics.retries_exhausted.inc();
                        tracing::error!(partition = self.partition, failures, error = %e,
                            "HBase call failed after --max-retries; its rows go to the DLQ");
                        return Ok(Err(e));
                    }
                    if failures.is_power_of_two() {
                        tracing::warn!(partition = self.partition, failures, error = %e,
                            "transient HBase error; retrying with backoff (the partition stops reading when its buffer is full)");
                    }
                    w.metrics.retries.inc();
                    let delay = backoff::delay(w.retry_backoff, w.retry_max_backoff, failures);
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
                    let delay = backoff::delay(w.retry_backoff, w.retry_max_backoff, failures);
                    tokio::select! {
                        _ = self.cancel.cancelled() => return Err(Abandoned),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}
