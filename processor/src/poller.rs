//! The poller thread: it owns the consumer, hands each record to its partition's task and
//! never blocks.
//!
//! **Guarantee**: every record of an assigned partition from the offset its task's restored
//! state ends at is handed to that task exactly once and in order: when a task's queue is
//! full the partition is paused and its record parked, and the partition resumes at the exact
//! next offset; a task that starts (assignment, a fenced task restarted, or a partition
//! revoked or lost and assigned again within one poll — told apart by task id) gets its
//! fetch moved to the offset after its restored state's applied offset (`Rewind`), so what
//! decides where input resumes is the changelog, not the group's committed offset (which is
//! only where the fetch begins before that, and may be behind or — after a zombie's commit —
//! ahead). Every fetch start is checked (`fetch_start.rs`). Committed offsets are sent here by
//! the tasks after their `Meta` and committed asynchronously.
//!
//! **Failure behaviour**: a consume error is counted and logged and polling goes on; a
//! consumer the client declares failed for good makes `/healthz` fail (a restart is the only
//! way past it); a failed
//! seek is counted and left to the fetch check; the group watchdog (`chatpipe_common::group`)
//! rejoins when this member was left without partitions while some are unowned.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use chatpipe_common::group::{self, GroupWatchdog, Verdict};

use crate::fetch_start::{self, FetchStarts};
use crate::runner::{partitions_of, PollerContext, Rewind, Shared};

pub(crate) fn poll_loop(
    consumer: BaseConsumer<PollerContext>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    mut commits: mpsc::Receiver<(i32, i64)>,
    mut watchdog: GroupWatchdog,
) {
    let topic = shared.config.events_topic.clone();
    let commit = |consumer: &BaseConsumer<PollerContext>, commits: &mut mpsc::Receiver<(i32, i64)>| {
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
            if let Some((code, reason)) = consumer.client().fatal_error() {
                // only a new consumer gets past it: liveness fails so the pod is restarted
                if shared.out.telemetry.health.broken_components().is_empty() {
                    tracing::error!(?code, %reason, "the Kafka consumer failed for good; /healthz fails");
                }
                shared.out.telemetry.health.broken("consumer", &format!("{code:?}: {reason}"));
            }
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
        for r in shared.take_rewinds() {
            rewind(&consumer, &shared, &topic, r, &mut starts, &mut parked, &mut next);
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
fn restart_fenced(consumer: &BaseConsumer<PollerContext>, shared: &Arc<Shared>, topic: &str) -> Vec<(i32, u64)> {
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
    consumer: &BaseConsumer<PollerContext>,
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

/// Moves a partition's fetch to where its task's restored state ends (`Rewind`): the task
/// gets a new queue (nothing fetched before the seek reaches it) and the fetch start is
/// checked as after a resume. A request of a task that has been replaced is dropped (its
/// task sees the reply channel closed).
fn rewind(
    consumer: &BaseConsumer<PollerContext>,
    shared: &Shared,
    topic: &str,
    r: Rewind,
    starts: &mut FetchStarts,
    parked: &mut HashMap<i32, OwnedMessage>,
    next: &mut HashMap<i32, i64>,
) {
    let rx = {
        let mut tasks = shared.tasks();
        let Some(t) = tasks.get_mut(&r.partition).filter(|t| t.id == r.task) else { return };
        let (tx, rx) = mpsc::channel(shared.config.partition_queue.max(1));
        t.tx = tx;
        rx
    };
    new_task(consumer, topic, r.partition, parked, next);
    if consumer.seek(topic, r.partition, Offset::Offset(r.offset), Duration::from_secs(10)).is_err() {
        // the fetch check below seeks again when the first record is past the offset
        shared.out.metrics.errors.with_label_values(&["seek"]).inc();
    }
    starts.resumed(r.partition, r.offset);
    tracing::debug!(partition = r.partition, offset = r.offset, "fetch moved to the restored state's end");
    let _ = r.reply.send(rx);
}
