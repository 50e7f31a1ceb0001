//! The Kafka I/O around [`crate::core::PartitionCore`]: the state the poller thread, the
//! partition tasks and the global merge task share, the rebalance callbacks, and start-up.
//!
//! A tour of the processor's moving parts: the poller thread (`poller.rs`) owns the
//! consumer and hands each record to its partition's task without ever blocking; one task
//! per assigned input partition (`task.rs`, the ordering point) fences and restores the
//! partition's state, applies batches and writes their outputs, changelog entries and `Meta`
//! in order (`delivery.rs`); the merge task combines the partitions' window partials into
//! the global windows (`merge.rs`).
//!
//! **Guarantee**: rebalance callbacks run on the poller thread: on revocation the affected
//! tasks are closed and awaited (bounded by `--drain-timeout`, below the session timeout)
//! and the producer is flushed before the partition can be assigned elsewhere; lost
//! partitions are aborted and the producer's queue purged instead; on assignment a task is
//! started. Each task has a unique id, so the poller tells a partition's new task from its
//! old one even when both callbacks run within one poll.
//!
//! **Failure behaviour**: a task that does not drain in time is aborted (its partition's
//! next owner redoes its last batch from the changelog); a flush that fails purges the
//! producer's queue, so nothing queued for a revoked partition is delivered later.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{ClientContext, Message, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use chatpipe_common::envelope;
use chatpipe_common::group::GroupWatchdog;
use chatpipe_common::http::Telemetry;
use chatpipe_common::kafka::{ensure_topics, record_consumer_lag, TopicSpec};

use crate::config::Config;
use crate::core::Progress;
use crate::delivery::{deliver, Delivery, OutRecord, Source};
use crate::freeze::FreezeGuard;
use crate::merge::Merger;
use crate::metrics::ProcessorMetrics;
use crate::poller::poll_loop;
use crate::task::partition_task;
use crate::Error;

pub(crate) struct PartitionTask {
    /// Unique per task: the poller tells a partition's new task from its old one by it, even
    /// when the partition was revoked (or lost) and assigned again within one poll.
    pub(crate) id: u64,
    /// The task's input queue (replaced by a rewind).
    pub(crate) tx: mpsc::Sender<OwnedMessage>,
    task: JoinHandle<()>,
}

/// A task's request to the poller: fetch its partition from `offset` on, into a new queue
/// (sent back on `reply`).
pub(crate) struct Rewind {
    pub(crate) partition: i32,
    pub(crate) task: u64,
    pub(crate) offset: i64,
    pub(crate) reply: oneshot::Sender<mpsc::Receiver<OwnedMessage>>,
}

/// What the poller, the partition tasks and the merge task share.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) out: Delivery,
    runtime: tokio::runtime::Handle,
    tasks: Mutex<HashMap<i32, PartitionTask>>,
    task_ids: std::sync::atomic::AtomicU64,
    rewinds: Mutex<Vec<Rewind>>,
    pub(crate) commits: mpsc::Sender<(i32, i64)>,
    pub(crate) freeze: Arc<FreezeGuard>,
    /// Partitions whose task found a newer owner's fence, and when: the poller starts them
    /// again if they are still assigned here.
    pub(crate) fenced: Mutex<Vec<(i32, Instant)>>,
}

impl Shared {
    pub(crate) fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<i32, PartitionTask>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the poller to fetch `partition` from `offset` on for task `id`: the queue that
    /// receives from there, or `None` when the task was replaced or its partition revoked.
    pub(crate) async fn rewind(&self, partition: i32, id: u64, offset: i64) -> Option<mpsc::Receiver<OwnedMessage>> {
        let (reply, answer) = oneshot::channel();
        self.rewinds.lock().unwrap_or_else(|p| p.into_inner()).push(Rewind { partition, task: id, offset, reply });
        // A revocation removes the task and then drops its pending requests (the poller
        // answers none while it runs the callback); a request pushed after that sees the
        // task gone here. Either way the task is not left waiting out the drain timeout.
        if self.tasks().get(&partition).is_none_or(|t| t.id != id) {
            self.drop_rewinds(&[partition]);
        }
        answer.await.ok()
    }

    /// Drops the pending rewind requests of `partitions` (their tasks see `None`).
    fn drop_rewinds(&self, partitions: &[i32]) {
        self.rewinds.lock().unwrap_or_else(|p| p.into_inner()).retain(|r| !partitions.contains(&r.partition));
    }

    /// The pending rewind requests (the poller's).
    pub(crate) fn take_rewinds(&self) -> Vec<Rewind> {
        std::mem::take(&mut *self.rewinds.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Starts a task (a fence and a restore) for `partition`; its task id.
    pub(crate) fn start_partition(self: &Arc<Self>, partition: i32) -> u64 {
        let (tx, rx) = mpsc::channel(self.config.partition_queue.max(1));
        let shared = self.clone();
        let id = self.task_ids.fetch_add(1, Ordering::Relaxed);
        let task = self.runtime.spawn(async move { partition_task(partition, id, rx, shared).await });
        if let Some(old) = self.tasks().insert(partition, PartitionTask { id, tx, task }) {
            old.task.abort();
        }
        self.out.metrics.assigned.set(self.tasks().len() as i64);
        id
    }

    /// Closes the partitions' queues, waits (bounded) for their tasks to finish the records
    /// already queued, aborts stragglers, and flushes the producer. Partitions `lost` (the
    /// group dropped this member: another may own them already) are not drained: their
    /// tasks are aborted and the producer's queue purged at once.
    pub(crate) fn stop_partitions(&self, partitions: &[i32], lost: bool) {
        let stopping: Vec<(i32, PartitionTask)> = {
            let mut tasks = self.tasks();
            partitions.iter().filter_map(|p| tasks.remove(p).map(|t| (*p, t))).collect()
        };
        self.drop_rewinds(partitions);
        self.out.metrics.assigned.set(self.tasks().len() as i64);
        if stopping.is_empty() {
            return;
        }
        if lost {
            for (_, t) in stopping {
                t.task.abort();
            }
            tracing::warn!(partitions = ?partitions, "partitions lost; their tasks aborted and the producer's queue purged");
            self.out.producer().1.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
            return;
        }
        let deadline = self.config.drain_timeout;
        let handles: Vec<JoinHandle<()>> = stopping.into_iter().map(|(_, t)| t.task).collect();
        let aborts: Vec<_> = handles.iter().map(|h| h.abort_handle()).collect();
        let finished = self.runtime.block_on(async { tokio::time::timeout(deadline, join_all(handles)).await.is_ok() });
        if !finished {
            tracing::warn!(timeout = ?deadline, "partition tasks did not drain in time; aborting them");
            for a in aborts {
                a.abort();
            }
        }
        if let Err(e) = self.out.producer().1.flush(deadline) {
            // nothing of a revoked partition may be delivered after its new owner starts:
            // drop what is still queued (other partitions' tasks see their deliveries fail
            // and resend them, which is safe)
            tracing::error!(error = %e, "producer flush on revocation failed; purging the producer's queue");
            self.out.producer().1.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
        }
    }
}

/// The consumer context: rebalance handling and lag statistics.
pub(crate) struct PollerContext {
    shared: Arc<Shared>,
}

impl ClientContext for PollerContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        record_consumer_lag(&statistics, &self.shared.out.metrics.lag);
    }
}

pub(crate) fn partitions_of(tpl: &TopicPartitionList, topic: &str) -> Vec<i32> {
    tpl.elements().iter().filter(|e| e.topic() == topic).map(|e| e.partition()).collect()
}

impl ConsumerContext for PollerContext {
    fn pre_rebalance(&self, c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let parts = partitions_of(tpl, &self.shared.config.events_topic);
            let lost = c.assignment_lost();
            tracing::info!(partitions = ?parts, lost, "partitions revoked");
            self.shared.stop_partitions(&parts, lost);
        }
    }
    fn post_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts = partitions_of(tpl, &self.shared.config.events_topic);
                tracing::info!(partitions = ?parts, "partitions assigned");
                for p in parts {
                    self.shared.start_partition(p);
                }
            }
            Rebalance::Error(e) => {
                self.shared.out.metrics.errors.with_label_values(&["rebalance"]).inc();
                tracing::error!(error = %e, "rebalance failed");
            }
            Rebalance::Revoke(_) => {}
        }
    }
}

/// A running processor.
pub struct ProcessorHandle {
    stop: Arc<AtomicBool>,
    poller: Option<std::thread::JoinHandle<()>>,
    merger: JoinHandle<()>,
    merger_stop: tokio_util::sync::CancellationToken,
    shared: Arc<Shared>,
}

impl ProcessorHandle {
    /// Drains every partition, flushes the producer, commits and leaves the group.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        self.stop.store(true, Ordering::SeqCst);
        self.merger_stop.cancel();
        if let Some(p) = self.poller.take() {
            tokio::task::spawn_blocking(move || p.join()).await.map_err(|e| Error::Internal(e.to_string()))?.ok();
        }
        let _ = (&mut self.merger).await;
        Ok(())
    }

    /// Simulates a crash: aborts every task without draining, purges the producer's
    /// queue and drops the consumer without committing.
    pub fn kill(mut self) {
        self.merger.abort();
        let tasks: Vec<PartitionTask> = self.shared.tasks().drain().map(|(_, t)| t).collect();
        for t in tasks {
            t.task.abort();
        }
        self.shared.out.producer().1.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
        // the poller exits without draining (tasks are gone) and drops the consumer
        self.stop.store(true, Ordering::SeqCst);
        if let Some(p) = self.poller.take() {
            let _ = p.join();
        }
    }
}

/// Creates the topics, starts the poller thread and the merge task.
pub async fn start(config: Config, telemetry: Telemetry) -> Result<ProcessorHandle, Error> {
    let metrics = ProcessorMetrics::new(&telemetry.registry);
    telemetry.health.set("processor", false);
    let timeout = Duration::from_secs(30);
    ensure_topics(&config.kafka, &[TopicSpec::new(&config.events_topic, config.events_partitions)], timeout).await?;
    let partitions = topic_partitions(&config, &config.events_topic).await?;
    let out = config.output_partitions;
    ensure_topics(
        &config.kafka,
        &[
            // a zombie's record stays uncompacted long after its keys are logged again
            // (`changelog.rs`)
            TopicSpec::compacted(&config.changelog_topic, partitions).with("min.compaction.lag.ms", "86400000"),
            TopicSpec::new(&config.rows_topic, out),
            TopicSpec::compacted(&config.agg_session_topic, out),
            TopicSpec::compacted(&config.agg_global_topic, 1),
            TopicSpec::compacted(&config.unread_topic, out),
            // a merge that fails over replays the partials from the start: every partial a
            // correction can still change must be there (`partials_retention`)
            TopicSpec::new(&config.partials_topic, 1)
                .with("retention.ms", partials_retention(&config).as_millis().to_string()),
            TopicSpec::new(&config.dlq_topic, out),
        ],
        timeout,
    )
    .await?;
    let changelog_partitions = topic_partitions(&config, &config.changelog_topic).await?;
    if changelog_partitions != partitions {
        return Err(Error::Config(format!(
            "{} has {changelog_partitions} partitions but {} has {partitions}: the changelog must be co-partitioned",
            config.changelog_topic, config.events_topic
        )));
    }
    // deliveries are awaited and retried here: no local message timeout (no epoch bump)
    let producer_config = config.kafka.awaited_producer_config("processor", config.producer_linger_ms);
    let delivery = Delivery::new(
        move || producer_config.create::<FutureProducer>(),
        metrics,
        telemetry.clone(),
        config.dlq_topic.clone(),
    )?;
    let mut defaults = vec![
        ("group.id", config.group_id.as_str()),
        ("auto.offset.reset", "earliest"),
        ("statistics.interval.ms", "5000"),
        ("fetch.wait.max.ms", chatpipe_common::kafka::FETCH_WAIT_MAX_MS),
    ];
    defaults.extend_from_slice(chatpipe_common::kafka::GROUP_DEFAULTS);
    let mut consumer_config =
        config.kafka.client_config_with("processor", &defaults).set("enable.auto.commit", "false").clone();
    if let Some(id) = &config.group_instance_id {
        consumer_config.set("group.instance.id", id);
    }
    let (commit_tx, commit_rx) = mpsc::channel(4096);
    let shared = Arc::new(Shared {
        config: config.clone(),
        out: delivery,
        runtime: tokio::runtime::Handle::current(),
        tasks: Mutex::new(HashMap::new()),
        task_ids: std::sync::atomic::AtomicU64::new(0),
        rewinds: Mutex::new(Vec::new()),
        commits: commit_tx,
        fenced: Mutex::new(Vec::new()),
        freeze: FreezeGuard::start(chatpipe_common::kafka::session_timeout(&consumer_config))
            .map_err(|e| Error::Internal(e.to_string()))?,
    });
    let consumer: BaseConsumer<PollerContext> =
        consumer_config.create_with_context(PollerContext { shared: shared.clone() })?;
    consumer.subscribe(&[&config.events_topic])?;
    let watchdog = GroupWatchdog::new(
        &config.group_id,
        &config.events_topic,
        chatpipe_common::kafka::session_timeout(&consumer_config),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let stop = stop.clone();
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("processor-poller".into())
            .spawn(move || poll_loop(consumer, shared, stop, commit_rx, watchdog))
            .map_err(|e| Error::Internal(e.to_string()))?
    };
    let merger_stop = tokio_util::sync::CancellationToken::new();
    let merger = tokio::spawn(merge_task(shared.clone(), partitions, merger_stop.clone()));
    telemetry.health.set("processor", true);
    Ok(ProcessorHandle { stop, poller: Some(poller), merger, merger_stop, shared })
}

/// How long the partials topic keeps records: twice the correction horizon plus a window,
/// and at least 7 days. A window can be corrected until the horizon has passed it, so a merge
/// that replays the topic after a failover finds every partition's partials of every window
/// it may still emit, and never emits one from part of its partials.
fn partials_retention(config: &Config) -> Duration {
    (config.correction_horizon * 2 + config.window).max(Duration::from_secs(7 * 86_400))
}

async fn topic_partitions(config: &Config, topic: &str) -> Result<i32, Error> {
    let kafka = config.kafka.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || -> Result<i32, Error> {
        let c: BaseConsumer = kafka.client_config("processor-meta").create()?;
        let md = c.fetch_metadata(Some(&topic), Duration::from_secs(30))?;
        let n = md.topics().first().map(|t| t.partitions().len()).unwrap_or(0);
        if n == 0 {
            return Err(Error::Config(format!("topic {topic} has no partitions")));
        }
        Ok(n as i32)
    })
    .await
    .map_err(|e| Error::Internal(e.to_string()))?
}

async fn merge_task(shared: Arc<Shared>, partitions: i32, stop: tokio_util::sync::CancellationToken) {
    let cfg = &shared.config;
    // the merge's group fails over as fast as the processor's (GROUP_DEFAULTS): its one
    // partition is idle until a dead member's session expires
    let mut defaults = vec![("fetch.wait.max.ms", chatpipe_common::kafka::FETCH_WAIT_MAX_MS)];
    defaults.extend_from_slice(chatpipe_common::kafka::GROUP_DEFAULTS);
    let consumer: StreamConsumer = match cfg
        .kafka
        .client_config_with("processor-merge", &defaults)
        .set("group.id", format!("{}-merge", cfg.group_id))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "global merge consumer could not be created");
            return;
        }
    };
    if let Err(e) = consumer.subscribe(&[&cfg.partials_topic]) {
        tracing::error!(error = %e, "global merge could not subscribe");
        return;
    }
    let rules = cfg.rules();
    let mut merger = Merger::new(partitions, rules.window_ms, rules.correction_horizon_ms);
    loop {
        let m = tokio::select! {
            _ = stop.cancelled() => break,
            m = consumer.recv() => m,
        };
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                shared.out.metrics.errors.with_label_values(&["consume"]).inc();
                tracing::warn!(error = %e, "global merge consume error");
                continue;
            }
        };
        let Some(Ok(progress)) = m.payload().map(envelope::decode::<Progress>) else {
            shared.out.metrics.errors.with_label_values(&["undecodable_partial"]).inc();
            continue;
        };
        let emitted = merger.on_progress(progress);
        if emitted.is_empty() {
            continue;
        }
        let records: Vec<OutRecord> = emitted
            .into_iter()
            .map(|(k, v)| OutRecord {
                topic: cfg.agg_global_topic.clone(),
                partition: None,
                key: k.into_bytes(),
                value: Some(v.into_bytes()),
                headers: Vec::new(),
            })
            .collect();
        shared.out.metrics.windows.with_label_values(&["global"]).inc_by(records.len() as u64);
        shared.out.metrics.output.with_label_values(&["agg_global"]).inc_by(records.len() as u64);
        let source = Source { topic: &cfg.partials_topic, partition: m.partition(), offset: m.offset() };
        deliver(&shared.out, &records, source).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partials_outlive_every_correctable_window() {
        let mut cfg = Config::for_brokers("localhost:9092");
        cfg.correction_horizon = Duration::from_secs(10 * 86_400);
        assert!(partials_retention(&cfg) > cfg.correction_horizon * 2);
        cfg.correction_horizon = Duration::from_secs(3_600);
        assert_eq!(partials_retention(&cfg), Duration::from_secs(7 * 86_400), "at least a week");
    }
}
