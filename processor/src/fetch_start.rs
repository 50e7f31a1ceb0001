//! Where a partition's fetch starts, made exact on any broker.
//!
//! After an assignment (start: the committed offset) or a resume (start: the record after
//! the last one handed to the task) the consumer fetches from an offset that may lie inside
//! a record batch. Apache Kafka answers with that batch (the client drops the records before
//! the offset); tansu answers with the *next* batch, silently skipping records, or with
//! nothing when the offset is in the partition's last batch (DESIGN §2). So until the first
//! record of a partition is known to be at or before its expected start, the partition is
//! **unverified**:
//! * a first record past the expected start seeks back (16 records, then ×4 each time:
//!   [`chatpipe_common::seek_back`], the schedule the sink follows too);
//! * no record for [`STALL`] also seeks back (the fetch may have started inside the last
//!   batch, which tansu answers with nothing).
//!
//! Records before the expected start that a seek back fetches again are dropped by the poller
//! (they were handed over before) or skipped by the task (at or below its applied offset):
//! nothing is lost and nothing is applied twice. On Apache Kafka the first fetch is exact and
//! none of this triggers.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chatpipe_common::seek_back::SeekBack;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};

/// How long an unverified partition may stay silent, with records to read, before the
/// fetch is assumed to have started inside its last batch.
pub const STALL: Duration = Duration::from_millis(500);

/// Broker round trips of the checks (committed offset, watermarks, seek).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
struct Pending {
    /// The offset the first record must be at or before; `None`: the committed offset
    /// (asked once).
    expected: Option<i64>,
    /// How far back the last seek went.
    seek: SeekBack,
    /// When the partition last started a fetch (assignment, resume or seek).
    since: Instant,
}

/// The unverified partitions of one topic.
#[derive(Debug, Default)]
pub struct FetchStarts {
    pending: HashMap<i32, Pending>,
}

/// What the poller does with a record of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Hand it over (the partition is verified, or was already).
    Deliver,
    /// Drop it: the partition was sought back and the fetch restarts.
    SoughtBack,
}

impl FetchStarts {
    /// A partition was assigned: its first record must be at or before the committed offset.
    pub fn assigned(&mut self, partition: i32) {
        self.pending.insert(partition, Pending { expected: None, seek: SeekBack::default(), since: Instant::now() });
    }

    /// A partition's task starts over (it was fenced while the partition stayed assigned):
    /// the fetch goes back to the committed offset (the start of the topic when none) — the
    /// new task skips what its restored state already applied — and is checked as after an
    /// assignment.
    pub fn restart<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, topic: &str, partition: i32) {
        let to = committed(consumer, topic, partition).map_or(Offset::Beginning, Offset::Offset);
        if consumer.seek(topic, partition, to, CALL_TIMEOUT).is_err() {
            tracing::warn!(partition, "seeking a restarted partition failed; its fetch check will seek again");
        }
        self.assigned(partition);
    }

    /// A partition was resumed at `next`: its first record must be at or before it.
    pub fn resumed(&mut self, partition: i32, next: i64) {
        self.pending
            .insert(partition, Pending { expected: Some(next), seek: SeekBack::default(), since: Instant::now() });
    }

    /// Forgets partitions no longer assigned.
    pub fn retain(&mut self, assigned: &std::collections::HashSet<i32>) {
        self.pending.retain(|p, _| assigned.contains(p));
    }

    /// Checks the first record of an unverified partition.
    pub fn check<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Verdict {
        let Some(mut p) = self.pending.get(&partition).copied() else { return Verdict::Deliver };
        let expected = p.expected.or_else(|| committed(consumer, topic, partition));
        p.expected = expected;
        match expected {
            Some(e) if offset > e && self.seek_back(consumer, topic, partition, e, &mut p) => {
                tracing::debug!(
                    partition,
                    first = offset,
                    expected = e,
                    back = p.seek.back(),
                    "fetch started past the expected offset; sought back"
                );
                self.pending.insert(partition, p);
                Verdict::SoughtBack
            }
            _ => {
                self.pending.remove(&partition);
                Verdict::Deliver
            }
        }
    }

    /// Seeks back every unverified partition that has been silent for [`STALL`]: the fetch
    /// may have started inside the partition's last batch. (Watermarks cannot tell: tansu
    /// reports a high watermark of 1 for a partition of hundreds of records.) On a partition
    /// that is merely idle this costs one seek back and re-reading a few records, which the
    /// poller drops; the first of them verifies the partition.
    pub fn check_stalled<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, topic: &str) {
        let stalled: Vec<i32> =
            self.pending.iter().filter(|(_, p)| p.since.elapsed() >= STALL).map(|(part, _)| *part).collect();
        for partition in stalled {
            let Some(mut p) = self.pending.get(&partition).copied() else { continue };
            p.since = Instant::now();
            let expected = p.expected.or_else(|| committed(consumer, topic, partition));
            p.expected = expected;
            match expected {
                Some(e) if self.seek_back(consumer, topic, partition, e, &mut p) => {
                    tracing::debug!(partition, expected = e, back = p.seek.back(), "fetch silent; sought back");
                    self.pending.insert(partition, p);
                }
                // nothing before the start to re-read (or no start known): nothing can have
                // been skipped
                _ => {
                    self.pending.remove(&partition);
                }
            }
        }
    }

    /// Seeks `partition` further back before `expected`; false once a seek reached offset 0
    /// (whatever comes first then is the start: earlier records are gone by retention) or
    /// the seek failed.
    fn seek_back<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        topic: &str,
        partition: i32,
        expected: i64,
        p: &mut Pending,
    ) -> bool {
        let Some(to) = p.seek.next_target(expected) else { return false };
        if consumer.seek(topic, partition, Offset::Offset(to), CALL_TIMEOUT).is_err() {
            return false;
        }
        p.since = Instant::now();
        true
    }
}

fn committed<C: ConsumerContext>(consumer: &BaseConsumer<C>, topic: &str, partition: i32) -> Option<i64> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    match consumer.committed_offsets(tpl, CALL_TIMEOUT).ok()?.elements().first()?.offset() {
        Offset::Offset(c) => Some(c),
        _ => None,
    }
}
