//! With `--max-retries`, a call that keeps failing transiently (HBase gone) ends in the DLQ
//! with reason `retries_exhausted`, `chatpipe_sink_retries_exhausted_total` alerts, and the
//! partition moves on (its offsets are committed) instead of waiting forever.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chatpipe_common::kafka::{dlq, topics, TopicSpec};
use chatpipe_sink::metrics;
use chatpipe_tests::sink_support::*;
use chatpipe_tests::{TestBroker, TestHbase};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_send_rows_to_the_dlq_and_alert() {
    init_logs();
    let broker = TestBroker::start();
    let mut hbase = TestHbase::start();
    broker.create_topics(&[TopicSpec::new(topics::ROWS, 2), TopicSpec::new(topics::DLQ, 1)]).await;
    let group = "sink-retry-bound";
    let mut config = sink_config(&broker, &hbase.thrift(), group);
    config.max_retries = 2;
    config.retry_backoff = Duration::from_millis(20);
    config.retry_max_backoff = Duration::from_millis(100);
    let sink = spawn_sink(config);
    let offsets = Offsets::new(&broker, group, topics::ROWS, 2);
    // the sink is up and writing before HBase goes away
    let warm_up = workload(20, 4);
    let mut placed = produce(&broker, topics::ROWS, &warm_up).await;
    offsets.wait_caught_up(&ends(&placed, 2), Duration::from_secs(60)).await;
    tokio::task::block_in_place(|| hbase.stop());

    let ms = workload(200, 5);
    placed.extend(produce(&broker, topics::ROWS, &ms).await);
    offsets.wait_caught_up(&ends(&placed, 2), Duration::from_secs(60)).await;
    let effective = ms.iter().filter(|m| m.delete || !m.cells.is_empty()).count() as f64;
    assert_eq!(sink.metric_with(metrics::DLQ_RECORDS, "reason", "retries_exhausted"), effective);
    assert!(sink.metric(metrics::RETRIES_EXHAUSTED) > 0.0, "the alert metric counts it");

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", "dlq-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topics::DLQ]).unwrap();
    let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await.expect("a DLQ record").unwrap();
    let reason = m.headers().and_then(|h| h.iter().find(|h| h.key == dlq::REASON).and_then(|h| h.value));
    assert_eq!(reason, Some(&b"retries_exhausted"[..]));
    sink.stop().await;
}
