//! chatpipe-processor: `chat.events` → timelines, inbox fan-out, membership, read marks and
//! unread, sessions and users, and windowed counts — effectively once, without Kafka
//! transactions.
//!
//! * [`core`] — the pure, deterministic per-partition logic: filter, dedupe, route each
//!   event to its conversation, collect outputs; `conversation.rs` — what an event does to a
//!   session (seq, members, marks, message index) and the rows it causes; [`rows`] — row
//!   building and row ownership; `windows.rs` — window counts and partials; [`records`] —
//!   the analysts' JSON records;
//! * [`state`] — partition state and its changelog encoding (crash-atomic batches);
//!   [`changelog`] — fencing and restore (the protocol and why it is exact); [`checkpoint`]
//!   — checkpoint files under `--state-dir`;
//! * [`merge`] — the global window merge over per-partition partials;
//! * [`runner`] — the Kafka I/O: shared state, rebalance callbacks, start-up; `poller.rs` —
//!   the poller thread (hands records to tasks, never blocks, moves a task's fetch to where
//!   its restored state ends); `task.rs` — one partition's task (`task::partition_task` is
//!   the ordering point); `delivery.rs` — output records, awaited delivery, the producer
//!   replaced when it fails for good;
//! * [`config`], [`metrics`].
//!
//! **Broker cost** (DESIGN §3): one `chat.rows` record per input event that changes rows
//! (key = the session; a `RowBatch` of every row mutation the event causes), plus one per
//! emitted session window; `chat.unread` coalesced per `--unread-emit-interval`; a message
//! changes O(1) state entries whatever the group size (the session, the sender's mark, one
//! message entry, one window), so its changelog cost is constant too.
//!
//! **Guarantee** (DESIGN §7): per input partition and batch — apply, deliver outputs,
//! log state changes (with the applied offset), commit the input offset. After a crash or
//! rebalance the partition's state is restored from the changelog and input at or below
//! the applied offset is skipped; rows and aggregates are deterministic, so a replayed batch
//! rewrites identical records. Every output topic is therefore effectively-once as an
//! upsert table (rows by row key, aggregates by `<scope>|<window_start>` and revision,
//! unread by `user|session` — its intermediate values depend on when emissions fell due, its
//! final value does not), though a record may appear more than once in the log.
//!
//! **Fencing and checkpoints** (DESIGN §7, [`changelog`]): each new owner of a partition
//! fences the changelog before it restores, and restore ignores what an older owner wrote
//! after that fence; a frozen process holds its writes until the group has confirmed its
//! partitions. A checkpoint under `--state-dir` lets a restart read only the changelog tail.
//! The consumer group rejoins when a faulty coordinator leaves this member without partitions
//! (`chatpipe_common::group`).
//!
//! **Ordering**: one task per input partition applies records in offset order; a session
//! lives in one partition, so per-session `seq` is dense and in partition order.
//!
//! **Failure**: undecodable or invalid records go to `chat.dlq` with a reason header and
//! the partition moves on (also `forbidden` and `unknown_target` edits, recalls and reads);
//! delivery failures retry the batch with backoff and hold the partition; a restore failure
//! retries; an output that fails to encode is counted as an error and logged. Nothing
//! panics on input.
//!
//! Semantics chosen where the design is silent: direct sessions have implicit membership
//! (both parties join on the first message); only the original sender may edit or recall,
//! within the dedupe horizon (24 h by default: the message index is bounded by it); a
//! recall keeps the body and sets `m:recalled` (and `i:recalled` on the inbox rows); edits
//! and recalls update the inbox rows of members who were in the session when the message
//! was sent; messages later than the correction horizon are still written to timelines and
//! inboxes but not counted, and a copy goes to the DLQ with reason `late`; a read by
//! `read_seq` past the end is clamped; a read naming an unknown id goes to the DLQ
//! (`unknown_target`), a non-member's read marks nothing; per-user counts (messages sent,
//! sessions joined) span partitions and are left out.

pub mod changelog;
pub mod checkpoint;
pub mod config;
mod conversation;
pub mod core;
#[cfg(test)]
mod core_tests;
mod delivery;
mod fetch_start;
mod freeze;
pub mod merge;
pub mod metrics;
mod poller;
pub mod records;
pub mod rows;
pub mod runner;
pub mod state;
mod task;
mod windows;

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
