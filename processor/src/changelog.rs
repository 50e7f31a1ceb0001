//! The changelog protocol: how a partition's state is fenced, restored and checkpointed.
//!
//! **Records.** Every batch writes `(key, ChangeRecord { batch_offset, prev, new })` for each
//! changed key, then the `Meta` record that commits it (`state.rs`); every record carries
//! the writer's epoch in the [`EPOCH_HEADER`] header.
//!
//! **Fencing.** A task that takes over a partition first appends a fence record (key
//! [`StateKey::Fence`] with a random id, so compaction never removes a fence) to the
//! partition's changelog; the offset the broker gives it is the task's epoch. Reading the
//! log in order, a record counts only if its epoch is at least the offset of the latest
//! fence read before it ([`Fold::push`]). So once a new owner has fenced, nothing the
//! previous owner writes later — a process frozen past its session, a batch in flight when a
//! partition was lost — can change the state any restore computes; what the previous owner
//! wrote before the fence was its legitimate work and counts, committed or not, by the rule
//! of `state.rs`. The new owner reads the log up to its own fence, so its state is exactly
//! what any later restore computes for that prefix. Epochs are unique and increase in log
//! order, so two tasks that both believe they own a partition are ordered too: the later
//! fence wins, and the other task, when it finds a newer fence or a newer epoch in the log
//! ([`foreign_records`]), stops writing (the runner starts a new task, with a new fence, if
//! the partition is still assigned to its member a second later). Records without the header (earlier builds) have
//! epoch −1 and count only before the first fence.
//!
//! **Compaction.** Compaction keeps the latest record of each key, so a zombie's record can
//! become the only one of its key and hide the legitimate value it shadows. Two things keep
//! that from happening: an owner whose `Meta` lands past the offset its own writes account
//! for reads the gap and logs again every key an older owner wrote there; and a restore logs
//! again every key whose latest record it ignored. Both rewrite the legitimate value after
//! the zombie's record, well within the changelog's `min.compaction.lag.ms` (24 h), before
//! compaction may consider the zombie's record. Fences are never compacted (one small record
//! per restore of a partition).
//!
//! **Checkpoints.** After a committed batch (at most every `--checkpoint-interval`) and when
//! a partition is released, the task writes its state to a file under `--state-dir`, with
//! the changelog offset of the `Meta` record it reflects and the fence it ran under. A
//! restart that finds a valid checkpoint folds only the changelog records after that offset
//! on top of it — the checkpoint is exactly the latest committed record of every key at
//! that offset, i.e. a compacted prefix. A checkpoint is ignored (full restore) when it is
//! unreadable, names another topic or partition, is at or past the log's end (a recreated
//! topic), or is older than [`MAX_CHECKPOINT_AGE`] (compaction may have removed tombstones
//! after it, which a tail read would then miss).
//!
//! **Failure behaviour.** A broker error or a record that does not decode fails the restore
//! (the task retries with backoff); a checkpoint that cannot be written is logged and the
//! next one retried — it only costs restart time, never exactness.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

use chatpipe_common::envelope;

use crate::checkpoint::{read_checkpoint, MAX_CHECKPOINT_AGE};
use crate::config::Config;
use crate::state::{ChangeRecord, PartitionState, StateKey};
use crate::Error;

/// The header carrying a changelog record's epoch (its writer's fence offset), decimal.
pub const EPOCH_HEADER: &str = "chatpipe.epoch";
/// The value of a fence record (never a tombstone, so compaction keeps the latest).
const FENCE_VALUE: &[u8] = b"fence";
/// How long a restore may take before it fails (and is retried).
const RESTORE_DEADLINE: Duration = Duration::from_secs(600);

/// The latest record of every key, from changelog records read in log order, with records
/// of fenced-off owners left out.
#[derive(Debug, Default)]
pub struct Fold {
    latest: HashMap<StateKey, ChangeRecord>,
    /// Keys whose latest record was a fenced-off owner's: logged again by the first batch.
    shadowed: std::collections::HashSet<StateKey>,
    /// Offset of the latest fence read (−1: none).
    fence: i64,
    /// Records read.
    pub read: u64,
    /// Records ignored: written by an owner after a newer owner's fence.
    pub ignored: u64,
}

impl Fold {
    /// An empty fold (no fence read yet).
    pub fn new() -> Self {
        Fold { fence: -1, ..Fold::default() }
    }

    /// A fold that continues from a checkpoint: the latest record of every key and the
    /// fence it was written under.
    pub(crate) fn resume(fence: i64, latest: HashMap<StateKey, ChangeRecord>) -> Self {
        Fold { latest, fence, ..Fold::default() }
    }

    /// Folds the record at `offset`: a fence moves the bound; a record whose `epoch` is below
    /// the bound is ignored; a tombstone (`None`) removes the key.
    pub fn push(&mut self, offset: i64, key: StateKey, epoch: i64, value: Option<ChangeRecord>) {
        self.read += 1;
        if matches!(key, StateKey::Fence(_)) {
            self.fence = self.fence.max(offset);
            return;
        }
        if epoch < self.fence {
            self.ignored += 1;
            self.shadowed.insert(key);
            return;
        }
        self.shadowed.remove(&key);
        match value {
            Some(r) => {
                self.latest.insert(key, r);
            }
            None => {
                self.latest.remove(&key);
            }
        }
    }

    /// Folds one changelog message.
    fn push_message(&mut self, m: &BorrowedMessage<'_>) -> Result<(), Error> {
        let Some(k) = m.key() else { return Ok(()) };
        let key: StateKey = envelope::decode(k).map_err(|e| Error::Restore(format!("changelog key: {e}")))?;
        let epoch = record_epoch(m);
        let value = match m.payload() {
            Some(_) if matches!(key, StateKey::Fence(_)) => None,
            Some(v) => Some(envelope::decode(v).map_err(|e| Error::Restore(format!("changelog value: {e}")))?),
            None => None,
        };
        self.push(m.offset(), key, epoch, value);
        Ok(())
    }

    /// The state the folded records describe (see `PartitionState::restore`); keys a
    /// fenced-off owner wrote last are logged again by its first batch.
    pub fn finish(self) -> PartitionState {
        let mut st = PartitionState::restore(self.latest);
        st.relog_keys(self.shadowed);
        st
    }
}

/// A restored partition.
pub struct Restored {
    /// The state.
    pub state: PartitionState,
    /// This owner's epoch: the offset of its fence.
    pub epoch: i64,
    /// The fence's id (its key), which checkpoints name to prove which log they belong to.
    pub fence_id: u64,
    /// Changelog records read (the tail only, after a checkpoint).
    pub read: u64,
    /// Records of fenced-off owners ignored.
    pub ignored: u64,
    /// Whether a checkpoint was used.
    pub from_checkpoint: bool,
}

/// A random fence id (only its uniqueness matters).
fn fence_id(partition: i32) -> u64 {
    ahash::RandomState::new().hash_one((partition, std::time::SystemTime::now(), std::process::id()))
}

/// Fences the partition and restores its state: from the local checkpoint plus the
/// changelog after it when one is valid, else from the whole changelog.
pub async fn restore(config: &Config, producer: &FutureProducer, partition: i32) -> Result<Restored, Error> {
    let id = fence_id(partition);
    let key = envelope::encode(&StateKey::Fence(id)).map_err(|e| Error::Internal(e.to_string()))?;
    let fence = producer
        .send(
            FutureRecord::<[u8], [u8]>::to(&config.changelog_topic).partition(partition).key(&key).payload(FENCE_VALUE),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| Error::Kafka(e))?
        .offset;
    let config = config.clone();
    tokio::task::spawn_blocking(move || read_to_fence(&config, partition, fence, id))
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
}

fn read_to_fence(config: &Config, partition: i32, fence: i64, fence_id: u64) -> Result<Restored, Error> {
    let topic = &config.changelog_topic;
    let c = restore_consumer(config)?;
    let (low, high) = c.fetch_watermarks(topic, partition, Duration::from_secs(30))?;
    // a checkpoint counts only for the log it was taken from: the fence it names must be at
    // its offset in this changelog (a recreated topic or another cluster has other ids)
    let checkpoint = read_checkpoint(&config.state_dir, topic, partition)
        .filter(|(h, _)| h.offset < high.max(fence) && h.offset >= low - 1 && h.age() < MAX_CHECKPOINT_AGE)
        .filter(|(h, _)| fence_at(&c, topic, partition, low, h.fence).is_ok_and(|id| id == Some(h.fence_id)));
    let from_checkpoint = checkpoint.is_some();
    let (after, mut fold) = match checkpoint {
        Some((h, fold)) => (h.offset, fold),
        None => (low - 1, Fold::new()),
    };
    let mut failed = None;
    read_range(&c, topic, partition, low, after, fence, |m| {
        if failed.is_none() {
            failed = fold.push_message(m).err();
        }
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    let (read, ignored) = (fold.read, fold.ignored);
    Ok(Restored { state: fold.finish(), epoch: fence, fence_id, read, ignored, from_checkpoint })
}

/// The id of the fence record at `offset`, if the record there is a fence.
fn fence_at(c: &BaseConsumer, topic: &str, partition: i32, low: i64, offset: i64) -> Result<Option<u64>, Error> {
    let mut id = None;
    read_range(c, topic, partition, low, offset - 1, offset, |m| {
        if m.offset() == offset {
            if let Some(StateKey::Fence(f)) = m.key().and_then(|k| envelope::decode::<StateKey>(k).ok()) {
                id = Some(f);
            }
        }
    })?;
    Ok(id)
}

fn restore_consumer(config: &Config) -> Result<BaseConsumer, Error> {
    Ok(config
        .kafka
        .consumer_config("processor-restore")
        .set("group.id", "chatpipe-processor-restore")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()?)
}

/// Calls `f` with every record of `(after, until]`, in order. tansu answers a fetch from
/// inside a record batch with the next batch (DESIGN §2): when the first record is past the
/// expected one, the read starts earlier (16, then ×4 records back, down to `low`) and skips
/// what is at or below `after` — the steps of the input's fetch check.
fn read_range(
    c: &BaseConsumer,
    topic: &str,
    partition: i32,
    low: i64,
    after: i64,
    until: i64,
    mut f: impl FnMut(&BorrowedMessage<'_>),
) -> Result<(), Error> {
    if until <= after {
        return Ok(());
    }
    let deadline = Instant::now() + RESTORE_DEADLINE;
    let mut start = after + 1;
    let mut step = 16;
    let mut first = true;
    assign(c, topic, partition, start)?;
    loop {
        if Instant::now() > deadline {
            return Err(Error::Restore(format!("partition {partition}: changelog not read to {until} in time")));
        }
        let Some(m) = c.poll(Duration::from_millis(500)) else { continue };
        let m = m?;
        if first {
            first = false;
            if m.offset() > after + 1 && start > low {
                start = (start - step).max(low);
                step *= 4;
                first = true;
                assign(c, topic, partition, start)?;
                continue;
            }
        }
        if m.offset() > after {
            f(&m);
        }
        if m.offset() >= until {
            return Ok(());
        }
    }
}

/// What other writers put into a partition's changelog after this owner's fence.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Foreign {
    /// Keys written by an older owner (a zombie): relog them, so that compaction can never
    /// keep the zombie's record as a key's only one.
    pub keys: Vec<StateKey>,
    /// A newer owner fenced this one: this task must stop writing.
    pub fenced: bool,
}

/// Reads `(after, until]` of the changelog (this owner's fence ≤ `after`) for records not
/// written under `epoch`.
pub async fn foreign_records(
    config: &Config,
    partition: i32,
    epoch: i64,
    after: i64,
    until: i64,
) -> Result<Foreign, Error> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || {
        let c = restore_consumer(&config)?;
        let (low, _) = c.fetch_watermarks(&config.changelog_topic, partition, Duration::from_secs(30))?;
        let mut found = Foreign::default();
        read_range(&c, &config.changelog_topic, partition, low, after, until, |m| {
            let Some(key) = m.key().and_then(|k| envelope::decode::<StateKey>(k).ok()) else { return };
            if matches!(key, StateKey::Fence(_)) {
                found.fenced |= m.offset() > epoch;
                return;
            }
            match record_epoch(m) {
                e if e == epoch => {}
                e if e > epoch => found.fenced = true,
                _ => found.keys.push(key),
            }
        })?;
        Ok(found)
    })
    .await
    .map_err(|e| Error::Internal(e.to_string()))?
}

fn record_epoch(m: &BorrowedMessage<'_>) -> i64 {
    m.headers()
        .and_then(|h| h.iter().find(|h| h.key == EPOCH_HEADER).and_then(|h| h.value))
        .and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok())
        .unwrap_or(-1)
}

fn assign(c: &BaseConsumer, topic: &str, partition: i32, offset: i64) -> Result<(), Error> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    c.assign(&tpl)?;
    Ok(())
}

/// The headers of a changelog record written under `epoch`.
pub fn epoch_headers(epoch: i64) -> Vec<(&'static str, String)> {
    vec![(EPOCH_HEADER, epoch.to_string())]
}

/// Kafka headers from `(name, value)` pairs.
pub fn kafka_headers(headers: &[(&'static str, String)]) -> Option<OwnedHeaders> {
    if headers.is_empty() {
        return None;
    }
    let mut h = OwnedHeaders::new_with_capacity(headers.len());
    for (k, v) in headers {
        h = h.insert(Header { key: k, value: Some(v.as_bytes()) });
    }
    Some(h)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::state::Member;

    fn member(read_seq: u64) -> Member {
        Member { joined_at_ms: 0, joined_seq: 0, read_seq, read_message_id: 0 }
    }

    /// A changelog as the broker keeps it: (offset, key, epoch, value).
    pub(crate) type Log = Vec<(i64, StateKey, i64, Option<ChangeRecord>)>;

    pub(crate) fn append(log: &mut Log, epoch: i64, changes: Vec<(StateKey, ChangeRecord)>) {
        for (k, r) in changes {
            let v = if r.prev.is_none() && r.new.is_none() { None } else { Some(r) };
            log.push((log.len() as i64, k, epoch, v));
        }
    }

    pub(crate) fn fence(log: &mut Log) -> i64 {
        let at = log.len() as i64;
        log.push((at, StateKey::Fence(at as u64), -1, None));
        at
    }

    pub(crate) fn fold(log: &Log) -> PartitionState {
        let mut f = Fold::new();
        for (o, k, e, v) in log {
            f.push(*o, k.clone(), *e, v.clone());
        }
        f.finish()
    }

    #[test]
    fn a_zombie_writing_after_the_new_owners_fence_changes_nothing() {
        let mut log: Log = Vec::new();
        let e1 = fence(&mut log);
        let mut old = PartitionState::default();
        old.add_member(1, 1, member(1));
        old.meta.applied_offset = 10;
        append(&mut log, e1, old.drain_changes());
        // a new owner fences and restores
        let e2 = fence(&mut log);
        let mut new = fold(&log);
        assert_eq!(new.meta.applied_offset, 10);
        // the old owner, frozen until now, writes a later batch: a stale Meta and a change
        old.add_member(1, 2, member(0));
        old.meta.applied_offset = 20;
        append(&mut log, e1, old.drain_changes());
        // the new owner's own batch
        new.add_member(1, 3, member(0));
        new.meta.applied_offset = 15;
        append(&mut log, e2, new.drain_changes());
        let restored = fold(&log);
        assert_eq!(restored.meta.applied_offset, 15, "the zombie's Meta rolled the partition");
        assert!(restored.members.get(&(1, 2)).is_none(), "the zombie's member came in");
        assert!(restored.members.get(&(1, 3)).is_some());
        assert_eq!(restored.snapshot(), new.snapshot());
    }

    #[test]
    fn compaction_of_an_older_fence_keeps_its_owners_records() {
        let mut log: Log = Vec::new();
        let e1 = fence(&mut log);
        let mut st = PartitionState::default();
        st.add_member(1, 1, member(1));
        st.meta.applied_offset = 10;
        append(&mut log, e1, st.drain_changes());
        let e2 = fence(&mut log);
        st.add_member(1, 2, member(0));
        st.meta.applied_offset = 20;
        append(&mut log, e2, st.drain_changes());
        // compaction: the first fence is superseded by the second and dropped
        let compacted: Log = log.iter().filter(|(o, _, _, _)| *o != e1).cloned().collect();
        assert_eq!(fold(&compacted).snapshot(), st.snapshot());
    }
}
