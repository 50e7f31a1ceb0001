//! The Kafka I/O around [`crate::core::PartitionCore`]: a consumer-group poller thread,
//! one task per assigned input partition, and the global merge task.
//!
//! Per batch of one partition (DESIGN §7, in this order): apply the records to the state;
//! produce every output and every changelog entry of the batch and await their delivery;
//! then produce the `Meta` record that commits the batch and await it; then commit the
//! input offset. Outputs and entries share one wave: until `Meta` is written, a restore
//! takes the entries' `prev` values and the batch is redone, so their relative order does
//! not matter, and a broker round trip per batch is saved.
//! A failure at any step retries the step with backoff (outputs are deterministic, so a
//! retry rewrites identical records); the partition does not read further meanwhile.
//!
//! The poller thread owns the consumer and never blocks on a slow partition: when a
//! task's queue is full, the partition is paused and resumed (at the exact next offset)
//! once the task catches up, so the consumer keeps polling and stays in the group.
//! Rebalance callbacks run on it: on revocation the
//! affected partition tasks are closed and awaited (bounded by `--drain-timeout`, below
//! the session timeout) and the producer is flushed before the partition can be assigned
//! elsewhere (lost partitions are aborted and the producer purged instead); on assignment a
//! task fences and restores the partition (`changelog.rs`) and skips input at or below the
//! applied offset. Before each batch's writes a task waits out a hold after a process freeze
//! (`freeze.rs`); after each `Meta` it checks that no one else wrote to its changelog
//! partition, and checkpoints its state every `--checkpoint-interval`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use chatpipe_common::envelope;
use chatpipe_common::event::ChatEvent;
use chatpipe_common::group::{self, GroupWatchdog, Verdict};
use chatpipe_common::http::Telemetry;
use chatpipe_common::kafka::{ensure_topics, record_consumer_lag, TopicSpec};

use crate::changelog;
use crate::config::Config;
use crate::core::{PartitionCore, Progress};
use crate::delivery::{deliver, output_records, record_outcomes, Delivery, Out, Source};
use crate::fetch_start::{self, FetchStarts};
use crate::freeze::FreezeGuard;
use crate::merge::Merger;
use crate::metrics::ProcessorMetrics;
use crate::state::{ChangeRecord, PartitionState, StateKey};
use crate::Error;

struct PartitionTask {
    /// Unique per task: the poller tells a partition's new task from its old one by it, even
    /// when the partition was revoked (or lost) and assigned again within one poll.
    id: u64,
    tx: mpsc::Sender<OwnedMessage>,
    task: JoinHandle<()>,
}

struct Shared {
    config: Config,
    out: Delivery,
    runtime: tokio::runtime::Handle,
    tasks: Mutex<HashMap<i32, PartitionTask>>,
    task_ids: std::sync::atomic::AtomicU64,
    commits: mpsc::Sender<(i32, i64)>,
    freeze: Arc<FreezeGuard>,
    /// Partitions whose task found a newer owner's fence, and when: the poller starts them
    /// again if they are still assigned here.
    fenced: Mutex<Vec<(i32, Instant)>>,
}

impl Shared {
    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<i32, PartitionTask>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a task (a fence and a restore) for `partition`; its task id.
    fn start_partition(self: &Arc<Self>, partition: i32) -> u64 {
        let (tx, rx) = mpsc::channel(self.config.partition_queue.max(1));
        let shared = self.clone();
        let task = self.runtime.spawn(async move { partition_task(partition, rx, shared).await });
        let id = self.task_ids.fetch_add(1, Ordering::Relaxed);
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
    fn stop_partitions(&self, partitions: &[i32], lost: bool) {
        let stopping: Vec<(i32, PartitionTask)> = {
            let mut tasks = self.tasks();
            partitions.iter().filter_map(|p| tasks.remove(p).map(|t| (*p, t))).collect()
        };
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
struct Ctx {
    shared: Arc<Shared>,
}

impl ClientContext for Ctx {
    fn stats(&self, statistics: rdkafka::Statistics) {
        record_consumer_lag(&statistics, &self.shared.out.metrics.lag);
    }
}

fn partitions_of(tpl: &TopicPartitionList, topic: &str) -> Vec<i32> {
    tpl.elements().iter().filter(|e| e.topic() == topic).map(|e| e.partition()).collect()
}

impl ConsumerContext for Ctx {
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
            TopicSpec::new(&config.partials_topic, 1),
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
        commits: commit_tx,
        fenced: Mutex::new(Vec::new()),
        freeze: FreezeGuard::start(chatpipe_common::kafka::session_timeout(&consumer_config))
            .map_err(|e| Error::Internal(e.to_string()))?,
    });
    let consumer: BaseConsumer<Ctx> = consumer_config.create_with_context(Ctx { shared: shared.clone() })?;
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

fn poll_loop(
    consumer: BaseConsumer<Ctx>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    mut commits: mpsc::Receiver<(i32, i64)>,
    mut watchdog: GroupWatchdog,
) {
    let topic = shared.config.events_topic.clone();
    let commit = |consumer: &BaseConsumer<Ctx>, commits: &mut mpsc::Receiver<(i32, i64)>| {
        let mut latest: HashMap<i32, i64> = HashMap::new();
        while let Ok((p, o)) = commits.try_recv() {
            let e = latest.entry(p).or_insert(o);
            *e = (*e).max(o);
        }
        if latest.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (p, o) in latest {
            let _ = tpl.add_partition_offset(&topic, p, Offset::Offset(o));
        }
        if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
            // the changelog, not the committed offset, decides what is applied: a lost
            // commit only means re-reading records that will be skipped
            shared.out.metrics.errors.with_label_values(&["commit"]).inc();
            tracing::debug!(error = %e, "offset commit failed");
        }
    };
    // Where each partition's fetch starts is checked (`fetch_start`): tansu answers a
    // fetch from inside a record batch with the next batch or nothing.
    let mut starts = FetchStarts::default();
    // A record a partition's full queue could not take. The poll loop never blocks (so the
    // consumer keeps polling and stays in the group however slow a partition is): the
    // partition is paused instead, its record parked, and once the task takes the record
    // the partition is resumed at the record after it.
    let mut parked: HashMap<i32, OwnedMessage> = HashMap::new();
    // The offset after the last record handed to each partition's task: a record below it
    // (fetched again after a seek) is dropped here rather than queued for the task to skip,
    // so a seek back never refills a queue with old records.
    let mut next: HashMap<i32, i64> = HashMap::new();
    // The task each partition had at the last look (partition → task id).
    let mut known: HashMap<i32, u64> = HashMap::new();
    let mut watched = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        commit(&consumer, &mut commits);
        if watched.elapsed() >= Duration::from_secs(1) {
            watched = Instant::now();
            if watchdog.check(&consumer, watched) == Verdict::Rejoin {
                shared.out.metrics.errors.with_label_values(&["group_rejoin"]).inc();
                if let Err(e) = group::rejoin(&consumer, &topic) {
                    shared.out.metrics.errors.with_label_values(&["rejoin"]).inc();
                    tracing::error!(error = %e, "rejoining the consumer group failed");
                }
            }
        }
        let current: HashMap<i32, u64> = shared.tasks().iter().map(|(p, t)| (*p, t.id)).collect();
        for (&p, &id) in &current {
            let Some(&was) = known.get(&p) else {
                starts.assigned(p);
                new_task(&consumer, &topic, p, &mut parked, &mut next);
                continue;
            };
            if was != id {
                // Revoked (or lost) and assigned again within one poll: what the old task
                // was handed but did not apply is not the new task's unless fetched again,
                // so the fetch goes back to the committed offset (the new task skips what its
                // restored state applied).
                tracing::info!(partition = p, "a partition's task was replaced; fetching from the committed offset");
                new_task(&consumer, &topic, p, &mut parked, &mut next);
                starts.restart(&consumer, &topic, p);
            }
        }
        let assigned: std::collections::HashSet<i32> = current.keys().copied().collect();
        starts.retain(&assigned);
        parked.retain(|p, _| assigned.contains(p));
        next.retain(|p, _| assigned.contains(p));
        known = current;
        for (p, m) in std::mem::take(&mut parked) {
            let after = m.offset() + 1;
            match hand_over(&shared, m) {
                Ok(()) => {
                    next.insert(p, after);
                    let mut tpl = TopicPartitionList::new();
                    let _ = tpl.add_partition(&topic, p);
                    // fetch exactly from the record after the parked one (records fetched
                    // meanwhile were dropped), then let it run again
                    let resumed = consumer.seek(&topic, p, Offset::Offset(after), Duration::from_secs(10)).is_ok()
                        && consumer.resume(&tpl).is_ok();
                    if !resumed {
                        shared.out.metrics.errors.with_label_values(&["seek"]).inc();
                    }
                    tracing::debug!(partition = p, next = after, "partition resumed");
                    starts.resumed(p, after);
                }
                Err(Some(m)) => {
                    parked.insert(p, m);
                }
                Err(None) => {}
            }
        }
        for (p, id) in restart_fenced(&consumer, &shared, &topic) {
            new_task(&consumer, &topic, p, &mut parked, &mut next);
            starts.restart(&consumer, &topic, p);
            known.insert(p, id);
        }
        starts.check_stalled(&consumer, &topic);
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(m)) => {
                let (p, offset) = (m.partition(), m.offset());
                if parked.contains_key(&p) {
                    continue; // fetched before the pause took effect; re-read after the resume
                }
                if starts.check(&consumer, &topic, p, offset) == fetch_start::Verdict::SoughtBack {
                    continue;
                }
                if next.get(&p).is_some_and(|n| offset < *n) {
                    continue; // handed over before
                }
                let handed = hand_over(&shared, m.detach());
                if handed.is_ok() {
                    next.insert(p, offset + 1);
                }
                if let Err(Some(m)) = handed {
                    let mut tpl = TopicPartitionList::new();
                    let _ = tpl.add_partition(&topic, p);
                    if let Err(e) = consumer.pause(&tpl) {
                        shared.out.metrics.errors.with_label_values(&["pause"]).inc();
                        tracing::warn!(partition = p, error = %e, "pausing a full partition failed");
                    }
                    tracing::debug!(partition = p, offset, "partition paused");
                    parked.insert(p, m);
                }
            }
            Some(Err(e)) => {
                shared.out.metrics.errors.with_label_values(&["consume"]).inc();
                tracing::warn!(error = %e, "consume error");
            }
        }
        shared.out.metrics.paused.set(parked.len() as i64);
    }
    let all: Vec<i32> = shared.tasks().keys().copied().collect();
    shared.stop_partitions(&all, false);
    commit(&consumer, &mut commits);
    consumer.unsubscribe();
}

/// How long after a task found a newer fence its partition is started again (if it is still
/// assigned here): two members the coordinator both gave a partition take turns, slowly.
const REFENCE_AFTER: Duration = Duration::from_secs(1);

/// Starts a new task (a new fence and restore) for every partition whose task was fenced
/// while the partition is still assigned to this member: either the fence came from a
/// zombie-era double assignment that the group has since resolved in this member's favour,
/// or the group will revoke the partition soon. Partitions no longer assigned are left
/// alone. The partitions restarted, with their new task ids.
fn restart_fenced(consumer: &BaseConsumer<Ctx>, shared: &Arc<Shared>, topic: &str) -> Vec<(i32, u64)> {
    let due: Vec<i32> = {
        let mut fenced = shared.fenced.lock().unwrap_or_else(|p| p.into_inner());
        let due = fenced.iter().filter(|(_, at)| at.elapsed() >= REFENCE_AFTER).map(|(p, _)| *p).collect();
        fenced.retain(|(_, at)| at.elapsed() < REFENCE_AFTER);
        due
    };
    if due.is_empty() {
        return Vec::new();
    }
    let assigned: Vec<i32> = consumer.assignment().map(|tpl| partitions_of(&tpl, topic)).unwrap_or_default();
    due.into_iter()
        .filter(|p| assigned.contains(p))
        .map(|p| {
            tracing::warn!(partition = p, "restarting a fenced partition that is still assigned here");
            (p, shared.start_partition(p))
        })
        .collect()
}

/// What the poller forgets when a partition gets a new task: what it handed the old task
/// and a record parked for it; a pause left from before is lifted (whether a client keeps a
/// pause across an assignment varies).
fn new_task(
    consumer: &BaseConsumer<Ctx>,
    topic: &str,
    p: i32,
    parked: &mut HashMap<i32, OwnedMessage>,
    next: &mut HashMap<i32, i64>,
) {
    parked.remove(&p);
    next.remove(&p);
    let mut tpl = TopicPartitionList::new();
    let _ = tpl.add_partition(topic, p);
    let _ = consumer.resume(&tpl);
}

/// Gives a record to its partition's task without blocking: `Err(Some(record))` when the
/// task's queue is full, `Err(None)` when the partition has no task (revoked: the record
/// is the new owner's to read).
fn hand_over(shared: &Shared, m: OwnedMessage) -> Result<(), Option<OwnedMessage>> {
    let Some(tx) = shared.tasks().get(&m.partition()).map(|t| t.tx.clone()) else { return Err(None) };
    match tx.try_send(m) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Full(m)) => Err(Some(m)),
        Err(mpsc::error::TrySendError::Closed(_)) => Err(None),
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

async fn partition_task(partition: i32, mut rx: mpsc::Receiver<OwnedMessage>, shared: Arc<Shared>) {
    let cfg = &shared.config;
    let t0 = Instant::now();
    let mut backoff = Duration::from_millis(200);
    let restored = loop {
        let (generation, producer) = shared.out.producer();
        match changelog::restore(cfg, &producer, partition).await {
            Ok(r) => break r,
            Err(e) => {
                if let Error::Kafka(k) = &e {
                    if shared.out.renew_if_failed(generation, k) {
                        continue;
                    }
                }
                shared.out.metrics.errors.with_label_values(&["restore"]).inc();
                tracing::error!(partition, error = %e, "state restore failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    };
    shared.out.metrics.restore.observe(t0.elapsed().as_secs_f64());
    shared.out.metrics.restore_records.with_label_values(&["read"]).inc_by(restored.read);
    shared.out.metrics.restore_records.with_label_values(&["fenced"]).inc_by(restored.ignored);
    tracing::info!(
        partition,
        entries = restored.state.entries(),
        applied = restored.state.meta.applied_offset,
        records = restored.read,
        fenced = restored.ignored,
        checkpoint = restored.from_checkpoint,
        epoch = restored.epoch,
        took = ?t0.elapsed(),
        "partition state restored"
    );
    let (epoch, fence_id) = (restored.epoch, restored.fence_id);
    let mut core = PartitionCore::new(partition, cfg.rules(), restored.state);
    // the changelog offset of the last Meta delivered, and when a checkpoint was last written
    let mut committed_at: Option<i64> = None;
    let mut checkpointed = Instant::now();
    // Changelog records this task wrote after its fence, and the offset up to which the
    // changelog is known to hold no one else's: a Meta landing past `epoch + ours` means
    // another writer's records are in between (`changelog::foreign_records`).
    let (mut ours, mut verified) = (0i64, epoch);
    let mut fenced = false;
    let mut released_dirty = false;
    let part_label = partition.to_string();
    let mut last_input = Instant::now();
    loop {
        let mut batch: Vec<OwnedMessage> = Vec::new();
        let idle_at = last_input + cfg.idle_timeout;
        // a pending chat.unread emission wakes the task when it is due (input may have stopped)
        let wake_at = match core.unread_due_at() {
            Some(due) => {
                let wait = Duration::from_millis(due.saturating_sub(now_ms()).clamp(0, 60_000) as u64);
                idle_at.min(Instant::now() + wait)
            }
            None => idle_at,
        };
        tokio::select! {
            m = rx.recv() => match m {
                Some(m) => batch.push(m),
                None => break,
            },
            _ = tokio::time::sleep_until(wake_at.into()) => {}
        }
        let started = Instant::now();
        if batch.is_empty() {
            if Instant::now() >= idle_at {
                core.advance_idle(now_ms());
                last_input = Instant::now();
            }
        } else {
            let linger_until = tokio::time::Instant::now() + cfg.batch_linger;
            while batch.len() < cfg.batch_events {
                match tokio::time::timeout_at(linger_until, rx.recv()).await {
                    Ok(Some(m)) => batch.push(m),
                    _ => break,
                }
            }
            last_input = Instant::now();
            for m in &batch {
                match m.payload().map(envelope::decode::<ChatEvent>) {
                    Some(Ok(ev)) => {
                        core.apply(m.offset(), &ev);
                    }
                    Some(Err(e)) => core.reject(m.offset(), "undecodable", e.to_string()),
                    None => core.reject(m.offset(), "undecodable", "record without a value".into()),
                }
            }
            shared.out.metrics.batch_events.observe(batch.len() as f64);
        }
        let (outputs, changes) = core.finish_batch(now_ms());
        if changes.is_empty() {
            continue;
        }
        let mut outputs = outputs;
        let mut records = output_records(cfg, &mut outputs, &batch, partition, &shared.out.metrics);
        record_outcomes(&shared.out.metrics, &outputs);
        // Outputs and state entries in one wave, then the Meta record that commits the batch:
        // a crash before Meta restores the batch's `prev` values and redoes the batch.
        let (meta, entries): (Vec<_>, Vec<_>) = changes.into_iter().partition(|(k, _)| *k == StateKey::Meta);
        let log = |set: Vec<(StateKey, ChangeRecord)>| -> Vec<Out> {
            set.into_iter()
                .filter_map(|(k, r)| {
                    // a record with neither value is a committed delete: a Kafka tombstone
                    let encoded = envelope::encode(&k).and_then(|key| {
                        let value =
                            if r.prev.is_none() && r.new.is_none() { None } else { Some(envelope::encode(&r)?) };
                        Ok((key, value))
                    });
                    match encoded {
                        Ok((key, value)) => Some(Out {
                            topic: cfg.changelog_topic.clone(),
                            partition: Some(partition),
                            key,
                            value,
                            headers: changelog::epoch_headers(epoch),
                        }),
                        Err(e) => {
                            // only a value over the envelope's size limit: an error, never silent
                            shared.out.metrics.errors.with_label_values(&["encode"]).inc();
                            tracing::error!(error = %e, "a changelog record failed to encode");
                            None
                        }
                    }
                })
                .collect()
        };
        let entries = log(entries);
        let meta = log(meta);
        ours += (entries.len() + meta.len()) as i64;
        let bytes: usize =
            entries.iter().chain(meta.iter()).map(|o| o.key.len() + o.value.as_ref().map_or(0, Vec::len)).sum();
        records.extend(entries);
        let source = Source { topic: &cfg.events_topic, partition, offset: core.applied_offset() };
        if !hold_while_frozen(&shared, &rx).await {
            // released while holding after a freeze: the batch is applied but not written,
            // so the state is not checkpointed either
            released_dirty = true;
            break;
        }
        deliver(&shared.out, &records, source).await;
        if let Some(at) = deliver(&shared.out, &meta, source).await {
            committed_at = Some(at);
            if at > epoch + ours {
                match changelog::foreign_records(cfg, partition, epoch, verified, at).await {
                    Ok(found) if found.fenced => {
                        shared.out.metrics.errors.with_label_values(&["fenced"]).inc();
                        tracing::error!(partition, "a newer owner fenced this partition; this task stops writing");
                        shared.fenced.lock().unwrap_or_else(|p| p.into_inner()).push((partition, Instant::now()));
                        fenced = true;
                        break;
                    }
                    Ok(found) => {
                        if !found.keys.is_empty() {
                            shared.out.metrics.errors.with_label_values(&["zombie_records"]).inc();
                            tracing::warn!(
                                partition,
                                keys = found.keys.len(),
                                "a fenced-off owner wrote to the changelog; logging those keys again"
                            );
                        }
                        core.state.relog_keys(found.keys);
                        (ours, verified) = (at - epoch, at);
                    }
                    Err(e) => {
                        tracing::warn!(partition, error = %e, "checking the changelog for other writers failed; checking again after the next batch")
                    }
                }
            }
        }
        if checkpointed.elapsed() >= cfg.checkpoint_interval {
            checkpoint(&shared, partition, committed_at, (epoch, fence_id), &core.state);
            checkpointed = Instant::now();
        }
        shared.out.metrics.changelog_bytes.inc_by(bytes as u64);
        shared.out.metrics.state_entries.with_label_values(&[&part_label]).set(core.state.entries() as i64);
        shared.out.metrics.batch.observe(started.elapsed().as_secs_f64());
        let next = core.applied_offset() + 1;
        if next > 0 {
            let _ = shared.commits.try_send((partition, next));
        }
    }
    // released (revoked or shut down) after its last committed batch: a restart here reads
    // no changelog beyond this
    if !fenced && !released_dirty {
        checkpoint(&shared, partition, committed_at, (epoch, fence_id), &core.state);
    }
    tracing::info!(partition, "partition task stopped");
}

/// Waits while writes are held after a freeze (`freeze.rs`); `false` when the partition was
/// released meanwhile.
async fn hold_while_frozen(shared: &Shared, rx: &mpsc::Receiver<OwnedMessage>) -> bool {
    while shared.freeze.holding() {
        if rx.is_closed() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    true
}

/// Writes the partition's checkpoint (`changelog.rs`) when a batch has committed under this
/// task; a failure only costs restart time.
fn checkpoint(shared: &Shared, partition: i32, committed_at: Option<i64>, fence: (i64, u64), state: &PartitionState) {
    let Some(at) = committed_at else { return };
    let cfg = &shared.config;
    let t0 = Instant::now();
    match crate::checkpoint::write_checkpoint(&cfg.state_dir, &cfg.changelog_topic, partition, at, fence, state) {
        Ok(()) => tracing::debug!(partition, offset = at, took = ?t0.elapsed(), "checkpoint written"),
        Err(e) => {
            shared.out.metrics.errors.with_label_values(&["checkpoint"]).inc();
            tracing::warn!(partition, error = %e, "checkpoint not written");
        }
    }
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
        let records: Vec<Out> = emitted
            .into_iter()
            .map(|(k, v)| Out {
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
