//! Replay safety: after the sink has written a workload with updates, column deletes, row
//! deletes and puts after deletes, the group's offsets are reset to 0 and the sink runs
//! again over the populated tables. A full scan afterwards is identical to the one before
//! (and to the model): replaying any suffix of `chat.rows` leaves the same visible state.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chatpipe_common::kafka::{topics, TopicSpec};
use chatpipe_sink::metrics;
use chatpipe_tests::sink_support::*;
use chatpipe_tests::{TestBroker, TestHbase};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_partitions_from_offset_zero_leaves_an_identical_scan() {
    init_logs();
    let broker = TestBroker::start();
    let hbase = TestHbase::start();
    let partitions = 4;
    broker.create_topics(&[TopicSpec::new(topics::ROWS, partitions), TopicSpec::new(topics::DLQ, 1)]).await;
    let ms = workload(10_000, 7);
    let placed = produce(&broker, topics::ROWS, &ms).await;
    let ends = ends(&placed, partitions);
    let offsets = Offsets::new(&broker, "sink-replay", topics::ROWS, partitions);

    let sink = spawn_sink(sink_config(&broker, &hbase.thrift(), "sink-replay"));
    offsets.wait_caught_up(&ends, Duration::from_secs(60)).await;
    sink.stop().await;
    let first = scan_state(&hbase.thrift());
    let expected_state = expected(&ms);
    assert!(first == expected_state, "{}", diff(&expected_state, &first));

    // replay everything into the populated tables
    offsets.reset_to(0);
    assert_eq!(offsets.committed(), vec![0; partitions as usize]);
    let sink = spawn_sink(sink_config(&broker, &hbase.thrift(), "sink-replay"));
    offsets.wait_caught_up(&ends, Duration::from_secs(60)).await;
    let replayed = sink.metric(metrics::ROWS_WRITTEN);
    sink.stop().await;
    let effective = ms.iter().filter(|m| m.delete || !m.cells.is_empty()).count() as f64;
    assert!(replayed >= effective, "the second run rewrote every row ({replayed} of {effective})");
    let second = scan_state(&hbase.thrift());
    assert!(second == first, "{}", diff(&first, &second));
}
