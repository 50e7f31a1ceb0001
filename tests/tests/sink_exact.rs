//! The sink against a real broker (tansu) and the HBase emulator: mutations of every kind
//! (puts, updates, column and row deletes, puts after deletes) over many partitions end up
//! in HBase exactly — a full scan of every table equals the model of the mutations applied
//! in order — and every offset is committed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chatpipe_common::kafka::{topics, TopicSpec};
use chatpipe_sink::metrics;
use chatpipe_tests::sink_support::*;
use chatpipe_tests::{TestBroker, TestHbase};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutations_over_many_partitions_land_in_hbase_exactly() {
    init_logs();
    let broker = TestBroker::start();
    let hbase = TestHbase::start();
    let partitions = 8;
    broker.create_topics(&[TopicSpec::new(topics::ROWS, partitions), TopicSpec::new(topics::DLQ, 1)]).await;

    let ms = workload(20_000, 1);
    let expected_state = expected(&ms);
    let deletes = ms.iter().filter(|m| m.delete).count();
    assert!(deletes > 1000, "the workload exercises deletes ({deletes})");
    let placed = produce(&broker, topics::ROWS, &ms).await;
    let used: std::collections::BTreeSet<i32> = placed.iter().map(|(p, _)| *p).collect();
    assert_eq!(used.len(), partitions as usize, "every partition holds rows");

    let mut config = sink_config(&broker, &hbase.thrift(), "sink-exact");
    config.batch_rows = 500;
    config.hbase_connections = 4;
    config.max_in_flight = 4;
    let sink = spawn_sink(config);
    let offsets = Offsets::new(&broker, "sink-exact", topics::ROWS, partitions);
    offsets.wait_caught_up(&ends(&placed, partitions), Duration::from_secs(60)).await;

    let actual = scan_state(&hbase.thrift());
    assert!(actual == expected_state, "{}", diff(&expected_state, &actual));

    let written = sink.metric(metrics::ROWS_WRITTEN);
    let effective = ms.iter().filter(|m| m.delete || !m.cells.is_empty()).count() as f64;
    assert!(written >= effective, "rows_written_total {written} < {effective}");
    assert!(sink.metric(metrics::BATCH_ROWS) > 0.0);
    assert!(sink.metric(metrics::HBASE_WRITE_LATENCY) > 0.0);
    assert!(sink.metric(metrics::END_TO_END_LATENCY) > 0.0);
    assert_eq!(sink.metric(metrics::DLQ_RECORDS), 0.0);
    assert!(sink.telemetry.health.is_ready(), "not ready: {:?}", sink.telemetry.health.not_ready());
    sink.stop().await;
}
