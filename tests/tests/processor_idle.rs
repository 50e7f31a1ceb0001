//! Liveness of the watermark (issue 14): a partition without input advances its watermark
//! on wall time after `--idle-timeout` only when it is truly idle — no record of it waits on
//! the broker — never while it is starved.
//!
//! The broker sits behind a TCP proxy. One message is processed; then every byte on the
//! network is delayed by seconds and a second message of the same window is produced. The
//! window's end passes on the wall clock while the second message is still on its way to the
//! processor: a processor that took "no input for a while" as idle would emit the window
//! counting one message (and correct it later). The first record of that window must count
//! both; and once the network is fast again it must come at all (idle really is idle).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use chatpipe_common::envelope;
use chatpipe_common::event::{ChatEvent, EventType, MessageContent, MessageKind, SessionKind};
use chatpipe_common::http::Telemetry;
use chatpipe_common::kafka::{parse_kafka_option, TopicSpec};
use chatpipe_processor::Config;
use chatpipe_tests::{now_ms, wait_for, TestBroker};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

const SESSION: u64 = 77;
const WINDOW_MS: i64 = 4_000;

fn config(broker: &TestBroker) -> Config {
    let mut c = Config::for_brokers(&broker.bootstrap());
    // the group's traffic crosses the slowed network too: a session that survives it
    for opt in ["session.timeout.ms=60000", "heartbeat.interval.ms=10000"] {
        c.kafka.options.push(parse_kafka_option(opt).unwrap());
    }
    c.group_id = "p-idle".into();
    c.events_partitions = 1;
    c.output_partitions = 1;
    c.window = Duration::from_millis(WINDOW_MS as u64);
    c.grace = Duration::from_secs(1);
    c.idle_timeout = Duration::from_secs(1);
    c.drain_timeout = Duration::from_secs(5);
    c.metrics_listen = "127.0.0.1:0".parse().unwrap();
    c.state_dir = std::env::temp_dir().join(format!("chatpipe-test-state-idle-{}", std::process::id()));
    c
}

fn message(id: u64, at_ms: i64) -> ChatEvent {
    let mut e = ChatEvent::bare(id, at_ms, EventType::Message, SESSION, SessionKind::Direct, 1);
    e.recipient_id = Some(2);
    e.client_msg_id = Some(format!("c{id}"));
    e.message = Some(MessageContent { kind: MessageKind::Text, body: format!("message {id}"), mentions: vec![] });
    e
}

async fn produce(producer: &FutureProducer, e: &ChatEvent) {
    let value = envelope::encode(e).unwrap();
    let key = e.session_id.to_string();
    producer
        .send(FutureRecord::to("chat.events").partition(0).key(&key).payload(&value), Duration::from_secs(60))
        .await
        .map_err(|(e, _)| e)
        .expect("produce to chat.events");
}

fn counter(t: &Telemetry, name: &str) -> u64 {
    t.registry
        .gather()
        .iter()
        .find(|f| f.name() == name)
        .map(|f| f.get_metric().iter().map(|m| m.get_counter().get_value() as u64).sum())
        .unwrap_or(0)
}

/// `(messages, revision)` of every `chat.agg.session.1m` record of [`SESSION`]'s window
/// starting at `start`, in topic order.
fn window_records(consumer: &BaseConsumer, start: i64, seen: &mut Vec<(u64, u64)>) {
    let prefix = format!("{SESSION}|{}", chatpipe_common::event::rfc3339_ms(start));
    while let Some(m) = consumer.poll(Duration::from_millis(200)) {
        let m = m.expect("consume chat.agg.session.1m");
        if m.key().is_some_and(|k| k == prefix.as_bytes()) {
            let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            seen.push((v["messages"].as_u64().unwrap(), v["revision"].as_u64().unwrap()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starved_partition_does_not_close_its_windows_and_an_idle_one_does() {
    let (broker, proxy) = TestBroker::start_behind_proxy();
    broker.create_topics(&[TopicSpec::new("chat.events", 1)]).await;
    let telemetry = Telemetry::new();
    let handle = chatpipe_processor::start(config(&broker), telemetry.clone()).await.unwrap();
    let producer: FutureProducer = broker.kafka_args().producer_config("test", 5).create().unwrap();
    let events = chatpipe_processor::metrics::EVENTS;

    // the window of the first message ends a few seconds from now
    let now = now_ms();
    let start = now - now.rem_euclid(WINDOW_MS);
    let (first, second) = (message(1, now), message(2, (now + 1).min(start + WINDOW_MS - 1)));
    produce(&producer, &first).await;
    wait_for(Duration::from_secs(60), "the first message to be processed", || {
        let done = counter(&telemetry, events) >= 1;
        async move { done }
    })
    .await;

    // every chunk on the network now takes 4 s: the second message reaches the processor
    // well after the window's end + grace has passed on the wall clock
    proxy.set_latency(Duration::from_secs(4));
    let window_closes_at = start + WINDOW_MS + 1_000;
    produce(&producer, &second).await;
    assert!(now_ms() > window_closes_at, "the window must close on the wall clock before the second message is read");
    wait_for(Duration::from_secs(120), "the second message to be processed", || {
        let done = counter(&telemetry, events) >= 2;
        async move { done }
    })
    .await;
    let deferred = counter(&telemetry, chatpipe_processor::metrics::IDLE_DEFERRED);
    assert!(deferred > 0, "no idle check saw the starved partition: the test did not exercise the path");

    // the network is fast again; nothing is left on the broker: the partition is idle
    proxy.set_latency(Duration::ZERO);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", "idle-test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("chat.agg.session.1m", 0, Offset::Beginning).unwrap();
    consumer.assign(&tpl).unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.is_empty() {
        assert!(Instant::now() < deadline, "the window of an idle partition was never emitted");
        window_records(&consumer, start, &mut seen);
    }
    assert_eq!(seen[0], (2, 2), "the window's first record must count both messages: {seen:?}");
    handle.shutdown().await.unwrap();
}
