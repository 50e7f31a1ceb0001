//! Live push: `GET /v1/users/{user}/stream` (Server-Sent Events), fed from `chat.rows`.
//!
//! **Source (choice)**: `chat.rows`, not `chat.events`. Its records are exactly what the sink
//! writes to HBase (after the processor's dedupe, filters, seq assignment and fan-out), so a
//! pushed entry is the row a client would read, with its `seq`, and serve needs none of the
//! processor's rules. `chat.unread` alone would miss messages and edits.
//!
//! Every serve instance reads every partition of `chat.rows` (plain assignment from the end
//! at start, no consumer group, nothing committed) and keeps state only for users with a
//! stream: their sessions with `read_seq`, `last_seq`, kind and member count (loaded from
//! HBase when the first stream of the user opens, then kept current from the feed). A record
//! yields, for each such user: `message` (a new inbox row of the user, or a new message of one
//! of the user's large groups, which have no inbox rows), `update` (an edit or recall of such
//! an entry) and `unread` (the user's `last_seq`/`read_seq` of a session changed). Events go
//! out in feed order: per session, in the order the processor wrote them.
//!
//! **Resume**: each event's SSE `id` is the feed position it was made at (partition, offset,
//! index within the record, and the offsets of every partition before it). The last
//! `--push-retention-events` events (over all users) are kept in memory, and a user's state
//! is kept for `RESUME_WINDOW` after their last stream closes, so a client that reconnects to
//! the same instance with `Last-Event-ID` gets exactly the events after that id — none twice,
//! none missing — followed by live events (replay and subscription happen under one lock).
//! A position this instance cannot vouch for (evicted, older than the user's state, another
//! instance's feed, malformed ids of another shape) gets one `reset` event: reload with the
//! REST API (`after_seq` catch-up is gap-free) and go on from the stream.
//!
//! **Scaling and its limit**: connections scale out with instances (route a user's streams
//! to one instance, e.g. by hashing the path, so resumes land where the state is), but every
//! instance decodes the whole `chat.rows` feed, so one instance's feed rate (decode and
//! dispatch, measured by `benches/push_feed.rs` in docs/BENCHMARKS.md) bounds the cluster's
//! write rate for push. Past it the processor would
//! need a per-user push topic keyed by user, which the design does not have yet.
//!
//! **Failure**: a client whose bounded queue fills (it does not read) is disconnected and
//! counted; it resumes with `Last-Event-ID`. A record that does not decode is counted and
//! skipped. Kafka errors are logged and retried by the client library; `/readyz` reports
//! `push` not ready until the partitions are assigned. Events may reach a client shortly
//! before the sink's HBase write of the same rows (both follow `chat.rows`).
//!
//! Layout: `position.rs` (event ids and what a position vouches for), `hub.rs` (the feed
//! state, retained events, subscribers), `events.rs` (what a `chat.rows` mutation means for
//! a user with a stream), `sse.rs` (the route); the feed task is here.

mod events;
mod hub;
mod position;
mod sse;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatpipe_common::http::Health;
use chatpipe_common::kafka::KafkaArgs;
use chatpipe_common::rows::RowMutation;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message as _, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

pub(crate) use hub::Hub;
pub(crate) use sse::stream;

use crate::large_groups::LargeGroups;
use crate::metrics::{kind, ServeMetrics};

/// Query parameters of the stream (`last_event_id`: for clients that cannot set the header).
pub const PARAMS: &[&str] = &["last_event_id"];
/// The readiness component of the push feed.
pub const HEALTH_COMPONENT: &str = "push";

/// The value of a `chat.rows` record: the mutations it carries (a `RowBatch`, or one
/// `RowMutation` from builds before envelope version 3).
fn decode_record(bytes: &[u8]) -> Result<Vec<RowMutation>, chatpipe_common::envelope::EnvelopeError> {
    chatpipe_common::rows::decode_record(bytes)
}

/// Starts the feed: assigns every partition of `topic` at its end and applies records until
/// `stop`. Returns the hub at once (streams get 503 until it is assigned); `push` turns ready
/// when the partitions are assigned.
#[allow(clippy::too_many_arguments)]
pub(crate) fn start(
    kafka: &KafkaArgs,
    topic: &str,
    retention: usize,
    fanout: u64,
    preview_chars: usize,
    metrics: ServeMetrics,
    health: Health,
    large_groups: Arc<LargeGroups>,
    stop: CancellationToken,
) -> Result<(Arc<Hub>, tokio::task::JoinHandle<()>), rdkafka::error::KafkaError> {
    let consumer: Arc<StreamConsumer> = Arc::new(
        kafka
            .consumer_config("serve-push")
            .set("group.id", "chatpipe-serve-push")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .create()?,
    );
    health.set(HEALTH_COMPONENT, false);
    let topic = topic.to_owned();
    let hub = Arc::new(Hub::new(retention, fanout, preview_chars, metrics.clone()));
    let h = hub.clone();
    let task = tokio::spawn(async move {
        let hub = h;
        let m = metrics;
        loop {
            if stop.is_cancelled() {
                return;
            }
            let (c, t) = (consumer.clone(), topic.clone());
            match tokio::task::spawn_blocking(move || assign(&c, &t)).await {
                Ok(Ok(start)) => {
                    hub.init(start);
                    break;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, topic = %topic, "push feed: cannot assign the rows topic yet; retrying")
                }
                Err(e) => tracing::warn!(error = %e, "push feed: the assignment task failed; retrying"),
            }
            tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(Duration::from_secs(1)) => {} }
        }
        health.set(HEALTH_COMPONENT, true);
        tracing::info!(topic = %topic, "push feed assigned");
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                _ = sweep.tick() => { hub.sweep(); }
                msg = consumer.recv() => match msg {
                    Ok(msg) => {
                        let partition = usize::try_from(msg.partition()).unwrap_or(usize::MAX);
                        feed_record(&hub, &large_groups, &m, partition, msg.offset(), msg.payload());
                    }
                    Err(e) => {
                        m.error(kind::PUSH_CONSUMER);
                        tracing::warn!(error = %e, "push feed: Kafka error");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    });
    Ok((hub, task))
}

/// What the feed does with one record: decode it (an undecodable one is counted and applied
/// as empty, so its offset still advances), let the large-group cache see it, apply it.
fn feed_record(
    hub: &Hub,
    large_groups: &LargeGroups,
    m: &ServeMetrics,
    partition: usize,
    offset: i64,
    payload: Option<&[u8]>,
) {
    m.push_records.inc();
    let muts = match payload.map(decode_record) {
        Some(Ok(muts)) => muts,
        _ => {
            m.error(kind::PUSH_CONSUMER);
            Vec::new()
        }
    };
    large_groups.observe(&muts, Instant::now());
    hub.apply(partition, offset, &muts);
}

/// Runs `records` (values of `chat.rows` records, offsets `0..` of one partition) through
/// what the feed does with each record, with users `1..=streams` each holding one open
/// stream (drained every 256 records, as a reading client would); returns the events
/// delivered. For `benches/push_feed.rs` (the feed rate of one instance); not part of the
/// API.
#[doc(hidden)]
pub fn feed_for_bench(records: &[Vec<u8>], streams: u64, fanout_max_members: u64) -> usize {
    let metrics = ServeMetrics::new(&prometheus::Registry::new());
    let hub = Hub::new(200_000, fanout_max_members, 80, metrics.clone());
    hub.init(vec![0]);
    let large_groups = LargeGroups::new(Duration::from_secs(30), fanout_max_members);
    let mut rxs: Vec<_> =
        (1..=streams).map(|u| hub.subscribe(u, Some(hub::Snapshot { sessions: HashMap::new() }), None)).collect();
    let mut events = 0;
    let mut drain = |rxs: &mut Vec<tokio::sync::mpsc::Receiver<hub::Pushed>>| {
        for rx in rxs.iter_mut() {
            while rx.try_recv().is_ok() {
                events += 1;
            }
        }
    };
    for (offset, r) in (0i64..).zip(records) {
        feed_record(&hub, &large_groups, &metrics, 0, offset, Some(r));
        if offset % 256 == 255 {
            drain(&mut rxs);
        }
    }
    drain(&mut rxs);
    events
}

/// Assigns every partition of `topic` at its high watermark (blocking); returns the start
/// offsets.
fn assign(consumer: &StreamConsumer, topic: &str) -> Result<Vec<i64>, rdkafka::error::KafkaError> {
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(5))?;
    let parts = md.topics().first().map_or(0, |t| t.partitions().len());
    if parts == 0 {
        return Err(rdkafka::error::KafkaError::MetadataFetch(
            rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
        ));
    }
    let mut start = Vec::with_capacity(parts);
    let mut tpl = TopicPartitionList::new();
    for p in 0..parts {
        let p32 = i32::try_from(p).unwrap_or(i32::MAX);
        let (_, high) = consumer.fetch_watermarks(topic, p32, Duration::from_secs(5))?;
        start.push(high);
        tpl.add_partition_offset(topic, p32, Offset::Offset(high))?;
    }
    consumer.assign(&tpl)?;
    Ok(start)
}
