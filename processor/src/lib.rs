//! chatpipe-processor: `chat.events` → timelines, inbox fan-out, membership, unread counts
//! and windowed counts — effectively once, without Kafka transactions.
//!
//! * [`core`] — the pure, deterministic per-partition logic (rows, aggregates, unread);
//! * [`state`] — partition state and its changelog encoding (crash-atomic batches);
//! * [`merge`] — the global window merge over per-partition partials;
//! * [`runner`] — the Kafka I/O: consumer group, partition tasks, delivery, commits;
//! * [`config`], [`metrics`].
//!
//! **Guarantee** (DESIGN §7): per input partition and batch — apply, deliver outputs,
//! log state changes (with the applied offset), commit the input offset. After a crash or
//! rebalance the partition's state is restored from the changelog and input at or below
//! the applied offset is skipped; outputs are deterministic, so a replayed batch rewrites
//! identical records. Every output topic is therefore effectively-once as an upsert table
//! (rows by row key, aggregates by `<scope>|<window_start>` and revision, unread by
//! `user|session`), though a record may appear more than once in the log.
//!
//! **Ordering**: one task per input partition applies records in offset order; a session
//! lives in one partition, so per-session `seq` is dense and in partition order.
//!
//! **Failure**: undecodable or invalid records go to `chat.dlq` with a reason header and
//! the partition moves on; delivery failures retry the batch with backoff and hold the
//! partition; a restore failure retries. Nothing panics on input.
//!
//! Semantics chosen where the design is silent: direct sessions have implicit membership
//! (both parties, written to `chat:members`/`chat:user_sessions` on the first message);
//! edits and recalls update the target row without checking it exists; a recall keeps the
//! body and sets `m:recalled`; messages later than the correction horizon are still
//! written to timelines and inboxes but not counted, and a copy goes to the DLQ with reason
//! `late`; unread outputs are coalesced per batch.

pub mod config;
pub mod core;
pub mod merge;
pub mod metrics;
pub mod runner;
pub mod state;

use std::future::Future;

use chatpipe_common::http::{ObservabilityServer, Telemetry};

pub use config::Config;
pub use runner::{start, ProcessorHandle};

/// Processor errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Kafka client or admin error.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Configuration that cannot work.
    #[error("configuration: {0}")]
    Config(String),
    /// The changelog could not be read back.
    #[error("state restore: {0}")]
    Restore(String),
    /// The metrics endpoint could not bind.
    #[error("metrics endpoint: {0}")]
    Io(#[from] std::io::Error),
    /// A task failed unexpectedly.
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    /// Whether retrying later may succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(self, Error::Kafka(_) | Error::Restore(_) | Error::Io(_))
    }
}

/// Runs the processor until `shutdown` resolves, serving its own metrics endpoint.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), Error> {
    let telemetry = Telemetry::new();
    let server = ObservabilityServer::start(config.metrics_listen, telemetry.clone()).await?;
    tracing::info!(metrics = %server.addr, "processor metrics endpoint up");
    let result = run_with_telemetry(config, telemetry, shutdown).await;
    server.shutdown().await;
    result
}

/// Runs the processor with metrics registered on a shared [`Telemetry`] (the `dev` command).
pub async fn run_with_telemetry(
    config: Config,
    telemetry: Telemetry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let handle = start(config, telemetry).await?;
    shutdown.await;
    tracing::info!("processor draining");
    handle.shutdown().await
}
