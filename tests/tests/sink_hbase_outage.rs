//! HBase goes away for 20 s in the middle of a run while records keep arriving. During the
//! outage the sink retries (and reports `hbase` not ready), pauses partitions whose buffers
//! fill, and never commits an offset past a row HBase does not hold: every committed offset
//! sampled during the outage is checked against a copy of the emulator's data files taken
//! while it is down. When HBase comes back on the same port, the sink recovers by itself and
//! every row is there.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use chatpipe_common::kafka::{topics, TopicSpec};
use chatpipe_common::row_key;
use chatpipe_common::rows::{tables, Cell, RowMutation};
use chatpipe_sink::hbase::{HbaseClient, HbaseConfig};
use chatpipe_sink::metrics;
use chatpipe_tests::sink_support::*;
use chatpipe_tests::{wait_for, TestBroker, TestHbase};

fn unique_put(i: u64) -> RowMutation {
    RowMutation {
        table: tables::MESSAGES.into(),
        row: row_key::encode(1 + i % 50, 1_000_000 + i).into_bytes(),
        cells: vec![Cell::new("m:seq", i.to_string()), Cell::new("m:body", format!("message {i}"))],
        delete: false,
        ingested_at_ms: 0,
    }
}

/// Rows present in a copy of the emulator's data directory.
fn durable_rows(data_dir: &std::path::Path) -> BTreeSet<Vec<u8>> {
    fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }
    // the store is a directory tree (write-ahead log, sorted files): copied as it is now
    let copy = tempfile::tempdir().unwrap();
    copy_dir(data_dir, copy.path());
    let config = chatpipe_hbase_emulator::Config::on_disk(([127, 0, 0, 1], 0).into(), copy.path());
    let emulator = chatpipe_hbase_emulator::start(config).unwrap();
    let mut client = HbaseClient::connect(&HbaseConfig::new(emulator.local_addr().to_string())).unwrap();
    let rows = client.scan_all(tables::MESSAGES).unwrap().into_iter().map(|r| r.row).collect();
    emulator.stop();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hbase_outage_loses_nothing_and_commits_never_pass_unwritten_rows() {
    init_logs();
    let broker = TestBroker::start();
    let mut hbase = TestHbase::start();
    let partitions = 4;
    broker.create_topics(&[TopicSpec::new(topics::ROWS, partitions), TopicSpec::new(topics::DLQ, 1)]).await;
    let group = "sink-outage";
    let offsets = Offsets::new(&broker, group, topics::ROWS, partitions);

    let before: Vec<RowMutation> = (0..4_000).map(unique_put).collect();
    let during: Vec<RowMutation> = (4_000..12_000).map(unique_put).collect();
    let mut placed = produce(&broker, topics::ROWS, &before).await;

    let mut config = sink_config(&broker, &hbase.thrift(), group);
    config.batch_rows = 100;
    config.hbase.timeout = Duration::from_secs(5);
    let sink = spawn_sink(config);
    wait_for(Duration::from_secs(60), "a first part to be committed", || {
        let done = offsets.committed().iter().sum::<i64>() >= 1_000;
        async move { done }
    })
    .await;

    // HBase goes away; records keep coming
    tokio::task::block_in_place(|| hbase.stop());
    let outage = Instant::now();
    let producing = {
        let broker_args = broker.bootstrap();
        let during = during.clone();
        tokio::spawn(async move {
            let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", broker_args)
                .set("enable.idempotence", "true")
                .set("linger.ms", "5")
                .create()
                .unwrap();
            let mut placed = Vec::new();
            for chunk in during.chunks(1000) {
                let sends = chunk.iter().map(|m| {
                    let value = chatpipe_common::rows::encode_one(m).unwrap();
                    let producer = producer.clone();
                    let key = m.row.clone();
                    async move {
                        let record = rdkafka::producer::FutureRecord::to(topics::ROWS).key(&key).payload(&value);
                        let d = producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| e).unwrap();
                        (d.partition, d.offset)
                    }
                });
                placed.extend(futures::future::join_all(sends).await);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            placed
        })
    };
    let mut samples = Vec::new();
    let mut saw_not_ready = false;
    let mut saw_paused = false;
    while outage.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        samples.push(offsets.committed());
        saw_not_ready |= sink.telemetry.health.not_ready().contains(&"hbase".to_owned());
        saw_paused |= sink.metric(metrics::PAUSED_PARTITIONS) > 0.0;
    }
    samples.push(offsets.committed());
    assert!(saw_not_ready, "readiness reports hbase down during the outage");
    assert!(saw_paused, "partitions are paused while their batches retry");
    assert!(sink.metric(metrics::RETRIES) > 0.0);

    // what HBase holds while down is all it will ever have acknowledged before the restart
    let durable = tokio::task::block_in_place(|| durable_rows(hbase.data_dir()));
    let placed_during = producing.await.unwrap();
    placed.extend(placed_during);
    let row_at: HashMap<(i32, i64), &[u8]> =
        placed.iter().zip(before.iter().chain(during.iter())).map(|(at, m)| (*at, m.row.as_slice())).collect();
    for sample in &samples {
        for (p, committed) in sample.iter().enumerate() {
            for o in 0..*committed {
                let row = row_at.get(&(p as i32, o)).expect("a committed offset was produced");
                assert!(
                    durable.contains(*row),
                    "partition {p} committed {committed} but the row at offset {o} is not in HBase"
                );
            }
        }
    }
    let committed_during: i64 = samples.last().unwrap().iter().sum();
    assert!(committed_during < placed.len() as i64, "the outage held offsets back");

    // HBase comes back on the same port: the sink recovers by itself
    tokio::task::block_in_place(|| hbase.restart());
    offsets.wait_caught_up(&ends(&placed, partitions), Duration::from_secs(90)).await;
    let all: Vec<RowMutation> = before.iter().chain(during.iter()).cloned().collect();
    let expected_state = expected(&all);
    let actual = scan_state(&hbase.thrift());
    assert!(actual == expected_state, "{}", diff(&expected_state, &actual));
    wait_for(Duration::from_secs(10), "readiness after recovery", || {
        let ready = sink.telemetry.health.is_ready();
        async move { ready }
    })
    .await;
    assert_eq!(sink.metric(metrics::DLQ_RECORDS), 0.0);
    sink.stop().await;
}
