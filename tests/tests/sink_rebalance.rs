//! Two sinks in one consumer group: a second instance joins mid-run (partitions are revoked
//! from the first, drained and reassigned), then the first leaves. The final HBase state is
//! exactly the model's and every offset is committed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chatpipe_common::kafka::{topics, TopicSpec};
use chatpipe_tests::sink_support::*;
use chatpipe_tests::{wait_for, TestBroker, TestHbase};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_and_a_leaving_instance_leave_the_exact_state() {
    init_logs();
    let broker = TestBroker::start();
    let hbase = TestHbase::start();
    let partitions = 6;
    broker.create_topics(&[TopicSpec::new(topics::ROWS, partitions), TopicSpec::new(topics::DLQ, 1)]).await;
    let group = "sink-rebalance";
    let offsets = Offsets::new(&broker, group, topics::ROWS, partitions);
    let ms = workload(20_000, 11);
    // records keep arriving while the group changes
    let producing = {
        let (ms, args) = (ms.clone(), broker.kafka_args());
        tokio::spawn(async move {
            let producer: rdkafka::producer::FutureProducer = args.producer_config("test", 5).create().unwrap();
            let mut placed = Vec::new();
            for chunk in ms.chunks(1000) {
                let sends = chunk.iter().map(|m| {
                    let (producer, key) = (producer.clone(), m.row.clone());
                    let value = chatpipe_common::rows::encode_one(m).unwrap();
                    async move {
                        let record = rdkafka::producer::FutureRecord::to(topics::ROWS).key(&key).payload(&value);
                        let d = producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| e).unwrap();
                        (d.partition, d.offset)
                    }
                });
                placed.extend(futures::future::join_all(sends).await);
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
            placed
        })
    };

    let config = || {
        let mut c = sink_config(&broker, &hbase.thrift(), group);
        c.batch_rows = 50;
        c.kafka.options.push(chatpipe_common::kafka::parse_kafka_option("session.timeout.ms=6000").unwrap());
        c
    };
    let first = spawn_sink(config());
    wait_for(Duration::from_secs(60), "a first part to be committed", || {
        let done = offsets.committed().iter().sum::<i64>() >= 2_000;
        async move { done }
    })
    .await;
    let second = spawn_sink(config());
    wait_for(Duration::from_secs(60), "both instances to hold partitions", || {
        let done = second.metric(chatpipe_sink::metrics::ROWS_WRITTEN) > 0.0;
        async move { done }
    })
    .await;
    first.stop().await;
    let placed = producing.await.unwrap();
    offsets.wait_caught_up(&ends(&placed, partitions), Duration::from_secs(90)).await;
    second.stop().await;

    let expected_state = expected(&ms);
    let actual = scan_state(&hbase.thrift());
    assert!(actual == expected_state, "{}", diff(&expected_state, &actual));
}
