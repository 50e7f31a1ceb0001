//! chatpipe-sink: writes the row mutations of `chat.rows` into HBase through its Thrift1
//! API (DESIGN §5–§7), and the `chatpipe tables` and `chatpipe query` commands.
//!
//! # Guarantee: effectively once
//!
//! * A record's offset is committed only after HBase acknowledged it (or the DLQ did), and
//!   only as the end of a contiguous prefix of its partition: a batch that keeps failing
//!   holds back every later offset of its partition. A crash at any instant loses nothing;
//!   it replays at most the records after the last commit.
//! * Writes are **replay-safe**: replaying any suffix of `chat.rows` leaves the same visible
//!   HBase state. Puts of the same cells are idempotent, every write gets a newer server
//!   timestamp than the ones before it, and a put that follows a delete of its row or
//!   column is sent only once the clock has moved past the delete's millisecond (HBase
//!   masks a put whose timestamp equals a delete marker's). See `batch.rs`.
//!
//! # Ordering
//!
//! `chat.rows` is keyed by row key, so one row's mutations are in one partition, in order.
//! A partition has at most one batch in flight; within a batch, each row's mutations are
//! coalesced into the same final effect and split into phases where HBase's timestamp rules
//! require it. Mutations of one row are never reordered; different partitions write in
//! parallel, up to `--max-in-flight` batches over `--hbase-connections` connections.
//!
//! # Failure behaviour
//!
//! * Transient HBase errors (transport errors, `IOError`) reconnect and retry with
//!   exponential backoff and jitter, forever by default or up to `--max-retries`, after
//!   which the rows go to the DLQ (`retries_exhausted`) and
//!   `chatpipe_sink_retries_exhausted_total` counts it. Meanwhile the partition stops
//!   reading once its bounded buffer is full (the others go on) and `/readyz` reports
//!   `hbase` not ready.
//! * Permanent errors (`IllegalArgument`, unknown table or family) send the records HBase
//!   refuses (found by bisecting the call) to `chat.dlq` with the reason in headers, and the
//!   partition moves on. Undecodable and malformed records go there too, without a call.
//! * Revocation and shutdown drain in-flight batches within `--drain-timeout`; batches still
//!   running then are cancelled, and the partitions are released only once the HBase calls
//!   they had on the wire returned (at most `--hbase-timeout` + 1 s more): **no write of a
//!   revoked partition lands after the partition is released** (`ownership.rs` has the
//!   argument and its limit: a call that timed out may still execute in HBase).
//!
//! # Layout
//!
//! * `config.rs` — [`Config`] (flags, `CHATPIPE_*` env), [`HbaseArgs`];
//! * `batch.rs` — decoding, per-partition buffers, the write plan (pure, unit-tested);
//! * `hbase.rs` — the Thrift client, the bounded connection pool, error classification;
//! * `sink.rs` — the main task: serves the consumer, starts and joins the workers, shutdown;
//! * `consumer.rs` — the consumer's context: lag, assignments, the revocation drain;
//! * `worker.rs` — one worker per partition: buffer, flush, offset store, fetch check;
//! * `writer.rs` — one batch: DLQ, HBase calls with retries; reports the next offset;
//! * `ownership.rs` — which batch and which call may write for a partition; revocation;
//! * `tables.rs` — `chatpipe tables` (create over Thrift, or HBase shell DDL);
//! * `query.rs` — `chatpipe query timeline | inbox`;
//! * `metrics.rs` — every metric name.

pub mod batch;
pub mod config;
mod consumer;
pub mod hbase;
pub mod metrics;
mod ownership;
pub mod query;
mod sink;
pub mod tables;
mod worker;
mod writer;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chatpipe_common::http::{ObservabilityServer, Telemetry};
use chatpipe_common::kafka::{ensure_topics, TopicSpec};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use tokio_util::sync::CancellationToken;

pub use config::{Config, HbaseArgs};
pub use query::QueryArgs;
pub use tables::TablesArgs;

use crate::consumer::{SinkConsumer, SinkContext};
use crate::hbase::{HbaseError, HbasePool};
use crate::metrics::SinkMetrics;
use crate::ownership::Ownership;
use crate::sink::ConsumeLoop;
use crate::tables::TablesError;
use crate::writer::BatchWriter;

/// Why the sink stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kafka client could not be created or subscribed, or topics not created.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// HBase could not be reached or refused the start-up checks.
    #[error(transparent)]
    Hbase(#[from] HbaseError),
    /// The tables could not be made ready (`--create-tables`).
    #[error(transparent)]
    Tables(#[from] TablesError),
    /// The metrics listener could not be bound.
    #[error("cannot serve metrics: {0}")]
    Metrics(std::io::Error),
    /// A batch task failed unexpectedly; the sink stops so that no later offset of its
    /// partition is committed (the restart replays from the last commit).
    #[error("batch task failed: {0}")]
    BatchTask(String),
}

impl Error {
    /// Whether restarting the sink may help.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Kafka(_) | Error::BatchTask(_) => true,
            Error::Hbase(e) => e.is_retriable(),
            Error::Tables(e) => e.is_retriable(),
            Error::Metrics(_) => false,
        }
    }
}

/// Runs the sink, serving `/metrics`, `/healthz` and `/readyz` on `--metrics-listen`, until
/// `shutdown` resolves; then drains and commits.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), Error> {
    let telemetry = Telemetry::new();
    let server = ObservabilityServer::start(config.metrics_listen, telemetry.clone()).await.map_err(Error::Metrics)?;
    tracing::info!(addr = %server.addr, "sink metrics listening");
    let result = run_with_telemetry(config, telemetry, shutdown).await;
    server.shutdown().await;
    result
}

/// Sets librdkafka defaults the user did not set with `--kafka-option`.
fn set_default(cfg: &mut ClientConfig, key: &str, value: &str) {
    if cfg.get(key).is_none() {
        cfg.set(key, value);
    }
}

/// Runs the sink with metrics and health registered on `telemetry` (served by the caller,
/// e.g. `chatpipe dev`, which runs several roles on one port) until `shutdown` resolves.
pub async fn run_with_telemetry(
    config: Config,
    telemetry: Telemetry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let metrics = SinkMetrics::new(&telemetry.registry);
    let health = telemetry.health.clone();
    health.set("kafka", false);
    health.set("hbase", false);
    let stop = CancellationToken::new();
    let stopper = stop.clone();
    let shutdown_task = tokio::spawn(async move {
        shutdown.await;
        stopper.cancel();
    });

    let result = start_and_run(config, metrics, telemetry, stop).await;
    shutdown_task.abort();
    result
}

async fn start_and_run(
    config: Config,
    metrics: SinkMetrics,
    telemetry: Telemetry,
    stop: CancellationToken,
) -> Result<(), Error> {
    let health = telemetry.health.clone();
    // Topics: wait for the broker rather than exit (it may start after us).
    let specs = [
        TopicSpec::new(&config.rows_topic, config.topic_partitions),
        TopicSpec::new(&config.dlq_topic, config.topic_partitions),
    ];
    let kafka = config.kafka.clone();
    let ready = retry_startup("creating topics", &config, &stop, || {
        let (kafka, specs) = (kafka.clone(), specs.clone());
        async move { ensure_topics(&kafka, &specs, Duration::from_secs(30)).await.map_err(Error::from) }
    })
    .await?;
    if ready.is_none() {
        return Ok(());
    }

    // HBase: reachable, and the tables there (or created).
    let pool = HbasePool::new(config.hbase.config(), config.hbase_connections);
    let create = config.create_tables;
    let checked = retry_startup("checking HBase", &config, &stop, || {
        let pool = pool.clone();
        async move {
            if create {
                for (table, outcome) in pool.call(|c| Ok(tables::create_all(c))).await?? {
                    tracing::info!(table, ?outcome, "table ready");
                }
            }
            Ok(pool.call(|c| c.table_names()).await?)
        }
    })
    .await?;
    let Some(existing) = checked else { return Ok(()) };
    let missing: Vec<&str> =
        tables::TABLES.iter().map(|t| t.name).filter(|t| !existing.iter().any(|e| e == t)).collect();
    if !missing.is_empty() {
        tracing::error!(
            ?missing,
            "HBase tables are missing: their rows will go to the DLQ; run `chatpipe tables create`"
        );
    }
    health.set("hbase", true);

    // Kafka clients.
    let ownership = Arc::new(Ownership::default());
    let (assignments_tx, assignments) = tokio::sync::mpsc::unbounded_channel();
    let context = SinkContext {
        ownership: Arc::clone(&ownership),
        topic: config.rows_topic.clone(),
        metrics: metrics.clone(),
        drain_timeout: config.drain_timeout,
        call_bound: config.hbase.timeout + ownership::CALL_MARGIN,
        assignments: assignments_tx,
    };
    let mut cc = config.kafka.consumer_config("sink");
    set_default(&mut cc, "auto.offset.reset", "earliest");
    set_default(&mut cc, "auto.commit.interval.ms", "1000");
    set_default(&mut cc, "statistics.interval.ms", "5000");
    for (k, v) in chatpipe_common::kafka::GROUP_DEFAULTS {
        set_default(&mut cc, k, v);
    }
    set_default(&mut cc, "enable.auto.commit", "true");
    // Not overridable: the guarantee rests on storing offsets only after HBase acknowledged.
    cc.set("group.id", &config.group_id);
    if let Some(id) = &config.group_instance_id {
        cc.set("group.instance.id", id);
    }
    cc.set("enable.auto.offset.store", "false");
    let from_earliest = matches!(cc.get("auto.offset.reset"), Some("earliest" | "smallest" | "beginning"));
    let consumer: Arc<SinkConsumer> = Arc::new(cc.create_with_context(context)?);
    consumer.subscribe(&[config.rows_topic.as_str()])?;
    // ready once subscribed; a consumer error marks Kafka not ready until the next record
    health.set("kafka", true);
    // DLQ sends are awaited and retried by the writer: no local message timeout (no epoch bump)
    let producer: FutureProducer = config.kafka.awaited_producer_config("sink-dlq", 5).create()?;
    tracing::info!(topic = %config.rows_topic, group = %config.group_id, hbase = %config.hbase.addr, "sink started");

    let writer = Arc::new(BatchWriter {
        pool,
        producer,
        ownership: Arc::clone(&ownership),
        metrics,
        health,
        topic: config.rows_topic.clone(),
        dlq_topic: config.dlq_topic.clone(),
        retry_backoff: config.retry_backoff,
        retry_max_backoff: config.retry_max_backoff,
        max_retries: config.max_retries,
        hbase_ok: std::sync::atomic::AtomicBool::new(true),
    });
    let watchdog = chatpipe_common::group::GroupWatchdog::new(
        &config.group_id,
        &config.rows_topic,
        chatpipe_common::kafka::session_timeout(&cc),
    );
    let pipeline = ConsumeLoop::new(config, consumer, ownership, writer, assignments, from_earliest, watchdog);
    // On a worker thread of its own, so that the rebalance callback may block in place.
    tokio::spawn(pipeline.run(stop.cancelled_owned())).await.map_err(|e| Error::BatchTask(e.to_string()))?
}

/// Retries a start-up step while its error is retriable and the sink is not stopped;
/// `Ok(None)` when stopped first.
async fn retry_startup<T, F, Fut>(
    what: &str,
    config: &Config,
    stop: &CancellationToken,
    mut f: F,
) -> Result<Option<T>, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let mut failures: u32 = 0;
    loop {
        let attempt = tokio::select! {
            _ = stop.cancelled() => return Ok(None),
            r = f() => r,
        };
        match attempt {
            Ok(v) => return Ok(Some(v)),
            Err(e) if e.is_retriable() => {
                failures += 1;
                if failures.is_power_of_two() {
                    tracing::warn!(error = %e, failures, "{what} failed; retrying");
                }
                let delay = chatpipe_common::backoff::delay(config.retry_backoff, config.retry_max_backoff, failures);
                tokio::select! {
                    _ = stop.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            Err(e) => return Err(e),
        }
    }
}
