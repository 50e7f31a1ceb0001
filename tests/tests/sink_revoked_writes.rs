//! No write of a revoked partition lands after the partition is released (issue 17).
//!
//! Sink A reaches HBase through a [`Proxy`]; sink B directly. A writes a first version of
//! one row per partition; then the proxy holds A's bytes, so the next mutation of each row
//! (a `deleteAllRow` in partition 0, a put in partition 1) is on the wire but not applied.
//! B joins the group and takes one of the partitions; a newer put of each row is produced.
//! Only then are A's held bytes released. Whichever partition moved, the final HBase state
//! must be the newest mutation of each row: if A's revocation released the partition while
//! its call was held, B writes the newer state first and A's older write lands on top.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chatpipe_common::kafka::{parse_kafka_option, topics, TopicSpec};
use chatpipe_common::row_key;
use chatpipe_common::rows::{self, tables, Cell, RowMutation};
use chatpipe_sink::metrics::{IN_FLIGHT_BATCHES, REVOCATION_WAITING_CALLS};
use chatpipe_tests::proxy::Proxy;
use chatpipe_tests::sink_support::*;
use chatpipe_tests::{wait_for, TestBroker, TestHbase};

const PARTITIONS: i32 = 2;

fn put(row: &[u8], body: &str) -> RowMutation {
    RowMutation {
        table: tables::MESSAGES.into(),
        row: row.to_vec(),
        cells: vec![Cell::new("m:body", body.as_bytes().to_vec()), Cell::new("m:sender", b"7".to_vec())],
        delete: false,
        ingested_at_ms: 0,
    }
}

fn delete_row(row: &[u8]) -> RowMutation {
    RowMutation { table: tables::MESSAGES.into(), row: row.to_vec(), cells: vec![], delete: true, ingested_at_ms: 0 }
}

/// Produces `m` to `partition` (the sink does not care which partition a key hashes to).
async fn send(broker: &TestBroker, partition: i32, m: &RowMutation) -> (i32, i64) {
    let mut value = Vec::new();
    rows::encode_record(&rows::RowBatch { mutations: vec![m.clone()] }, &mut value).unwrap();
    produce_raw(&producer(broker), topics::ROWS, partition, &m.row, Some(&value)).await
}

fn body(state: &State, row: &[u8]) -> Option<String> {
    let cells = state.get(tables::MESSAGES)?.get(row)?;
    cells.get("m:body").map(|v| String::from_utf8_lossy(v).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_held_on_the_wire_never_lands_after_the_new_owners_write() {
    init_logs();
    let broker = TestBroker::start();
    let hbase = TestHbase::start();
    let proxy = Proxy::start(hbase.thrift());
    broker.create_topics(&[TopicSpec::new(topics::ROWS, PARTITIONS), TopicSpec::new(topics::DLQ, 1)]).await;
    let group = "sink-revoked-writes";
    let config = |thrift: &str| {
        let mut c = sink_config(&broker, thrift, group);
        c.batch_rows = 10;
        // the drain gives up on A's held batch quickly; its call's own timeout is far away
        c.drain_timeout = Duration::from_secs(1);
        c.hbase.timeout = Duration::from_secs(90);
        c.kafka.options.push(parse_kafka_option("session.timeout.ms=6000").unwrap());
        c
    };
    let rows: Vec<Vec<u8>> = (0..PARTITIONS as u64).map(|p| row_key::encode(100 + p, 1).into_bytes()).collect();
    let mut written: Vec<RowMutation> = Vec::new();
    let mut placed = Vec::new();

    // A owns both partitions and writes the first version of each row.
    let a = spawn_sink(config(&proxy.addr().to_string()));
    for (p, row) in rows.iter().enumerate() {
        let m = put(row, "first");
        placed.push(send(&broker, p as i32, &m).await);
        written.push(m);
    }
    let thrift = hbase.thrift();
    wait_for(Duration::from_secs(60), "A to write the first versions", || {
        let state = scan_state(&thrift);
        let done = rows.iter().all(|r| body(&state, r).as_deref() == Some("first"));
        async move { done }
    })
    .await;

    // A's next write of each row is held on the wire.
    proxy.hold();
    for (p, row) in rows.iter().enumerate() {
        let m = if p == 0 { delete_row(row) } else { put(row, "held") };
        placed.push(send(&broker, p as i32, &m).await);
        written.push(m);
    }
    wait_for(Duration::from_secs(60), "A's writes to be held in the proxy", || {
        let done = a.metric(IN_FLIGHT_BATCHES) >= f64::from(PARTITIONS) && proxy.held_bytes() > 0;
        async move { done }
    })
    .await;

    // B joins and takes a partition; the newest version of each row is produced.
    let b = spawn_sink(config(&thrift));
    for (p, row) in rows.iter().enumerate() {
        let m = put(row, "newest");
        placed.push(send(&broker, p as i32, &m).await);
        written.push(m);
    }
    // Until B wrote a newest version (A released the partition under its held call), or A's
    // revocation is seen waiting for that call; then B gets a moment to write if it can.
    let newest_visible = || {
        let state = scan_state(&thrift);
        rows.iter().any(|r| body(&state, r).as_deref() == Some("newest"))
    };
    wait_for(Duration::from_secs(90), "B to write, or A's revocation to wait for its held call", || {
        let done = newest_visible() || a.metric(REVOCATION_WAITING_CALLS) > 0.0;
        async move { done }
    })
    .await;
    let settle = std::time::Instant::now() + Duration::from_secs(3);
    while !newest_visible() && std::time::Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The network delivers A's held bytes.
    proxy.release();
    Offsets::new(&broker, group, topics::ROWS, PARTITIONS)
        .wait_caught_up(&ends(&placed, PARTITIONS), Duration::from_secs(120))
        .await;
    a.stop().await;
    b.stop().await;

    let want = expected(&written);
    let actual = scan_state(&thrift);
    for row in &rows {
        assert_eq!(body(&want, row).as_deref(), Some("newest"));
    }
    assert!(actual == want, "an older write landed after the new owner's: {}", diff(&want, &actual));
}
