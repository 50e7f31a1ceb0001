//! One assigned input partition's task: the ordering point of the processor.
//!
//! Per batch (DESIGN §7, in this order): apply the records to the state; produce every
//! output and every changelog entry of the batch and await their delivery; then produce the
//! `Meta` record that commits the batch and await it; then send the input offset to be
//! committed. Outputs and entries share one wave: until `Meta` is written, a restore takes
//! the entries' `prev` values and the batch is redone, so their relative order does not
//! matter, and a broker round trip per batch is saved.
//!
//! **Guarantee**: the task first fences and restores the partition (`changelog.rs`), then has
//! its input moved to the offset after the restored applied offset (`poller.rs`); records at
//! or below it are skipped. Before each batch's writes it waits out a hold after a process
//! freeze (`freeze.rs`); after each `Meta` it checks that no one else wrote to its changelog
//! partition and stops writing if a newer owner fenced it; it checkpoints its state every
//! `--checkpoint-interval`, and when released, only at a `Meta` known to be its own.
//!
//! **Failure behaviour**: a failure at any step retries the step with backoff (outputs are
//! deterministic, so a retry rewrites identical records); the partition does not read further
//! meanwhile. An undecodable record goes to the DLQ. A restore that fails is retried with
//! backoff; a producer that failed for good is replaced (`delivery.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::message::OwnedMessage;
use rdkafka::producer::Producer;
use rdkafka::Message;
use tokio::sync::mpsc;

use chatpipe_common::backoff::Backoff;
use chatpipe_common::envelope;
use chatpipe_common::event::ChatEvent;

use crate::changelog;
use crate::core::PartitionCore;
use crate::delivery::{deliver, output_records, record_outcomes, OutRecord, Source};
use crate::runner::Shared;
use crate::state::{ChangeRecord, PartitionState, StateKey};
use crate::Error;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub(crate) async fn partition_task(partition: i32, id: u64, mut rx: mpsc::Receiver<OwnedMessage>, shared: Arc<Shared>) {
    let cfg = &shared.config;
    let t0 = Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
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
                tokio::time::sleep(backoff.next_delay()).await;
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
    // input resumes right after what the restored state applied, wherever the group's
    // committed offset is (`poller.rs`)
    let applied = restored.state.meta.applied_offset;
    if applied >= 0 {
        match shared.rewind(partition, id, applied + 1).await {
            Some(fresh) => rx = fresh,
            None => return, // replaced or revoked meanwhile
        }
    }
    let mut core = PartitionCore::new(partition, cfg.rules(), restored.state);
    // the changelog offset of the last Meta delivered, when the changelog up to it is known to
    // be this task's (a checkpoint names it; `None` while unverified), and when a checkpoint
    // was last written
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
    // the offset a rewind last went back to for a gap in the input (`None`: none yet)
    let mut gap_refetched: Option<i64> = None;
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
                // idle, not starved: records the poller has not handed over yet (a slow
                // broker, a paused fetch) would arrive after their window closed
                if input_drained(&shared, partition, core.applied_offset()).await {
                    core.advance_idle(now_ms());
                } else {
                    shared.out.metrics.idle_deferred.inc();
                }
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
            let mut skipped = None;
            for m in &batch {
                let expected = core.applied_offset() + 1;
                if expected > 0 && m.offset() > expected && gap_refetched != Some(expected) {
                    skipped = Some((expected, m.offset()));
                    break;
                }
                match m.payload().map(envelope::decode::<ChatEvent>) {
                    Some(Ok(ev)) => {
                        core.apply(m.offset(), &ev);
                    }
                    Some(Err(e)) => core.reject(m.offset(), "undecodable", e.to_string()),
                    None => core.reject(m.offset(), "undecodable", "record without a value".into()),
                }
            }
            shared.out.metrics.batch_events.observe(batch.len() as f64);
            if let Some((expected, got)) = skipped {
                // Input offsets are dense: records were skipped on the way here (a fetch that
                // started past its offset). They are fetched again, once; a gap that is still
                // there afterwards is real (retention, or a transactional producer's markers).
                shared.out.metrics.errors.with_label_values(&["input_gap"]).inc();
                tracing::warn!(partition, expected, got, "input skipped offsets; fetching them again");
                gap_refetched = Some(expected);
                match shared.rewind(partition, id, expected).await {
                    Some(fresh) => rx = fresh,
                    None => {
                        // replaced or revoked meanwhile: this batch is neither written nor
                        // checkpointed (its next owner redoes it)
                        released_dirty = true;
                        break;
                    }
                }
            }
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
        let log = |set: Vec<(StateKey, ChangeRecord)>| -> Vec<OutRecord> {
            set.into_iter()
                .filter_map(|(k, r)| {
                    // a record with neither value is a committed delete: a Kafka tombstone
                    let encoded = envelope::encode(&k).and_then(|key| {
                        let value =
                            if r.prev.is_none() && r.new.is_none() { None } else { Some(envelope::encode(&r)?) };
                        Ok((key, value))
                    });
                    match encoded {
                        Ok((key, value)) => Some(OutRecord {
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
            committed_at = (at <= epoch + ours).then_some(at);
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
                        committed_at = Some(at);
                    }
                    Err(e) => {
                        // neither checkpointed nor committed until a later check succeeds
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
        if next > 0 && committed_at.is_some() {
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

/// How long an idle check waits for the broker's answer; no answer counts as "records may
/// be waiting" (the watermark stays where it is until the next check).
const IDLE_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the broker holds no input record of `partition` past `applied`, so the partition
/// is truly idle and its watermark may advance on wall time. A partition whose records are
/// on the broker but not here (starved: a slow fetch, a paused partition, a rewind under
/// way) is not idle; neither is one whose high watermark cannot be read.
async fn input_drained(shared: &Shared, partition: i32, applied: i64) -> bool {
    let (_, producer) = shared.out.producer();
    let topic = shared.config.events_topic.clone();
    let probe =
        tokio::task::spawn_blocking(move || producer.client().fetch_watermarks(&topic, partition, IDLE_PROBE_TIMEOUT));
    match probe.await {
        Ok(Ok((_, high))) => high <= applied + 1,
        Ok(Err(e)) => {
            tracing::debug!(partition, error = %e, "the input's high watermark is unknown; the watermark waits");
            false
        }
        Err(_) => false,
    }
}
