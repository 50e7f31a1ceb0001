//! Driving a pipeline under test from both ends: a [`Workload`] produced to `chat.events`
//! (optionally paced, so that faults can be injected while events flow) and every HBase
//! table read back for comparison with the oracle's rows.

use std::collections::BTreeMap;
use std::time::Duration;

use chatpipe_common::envelope;
use chatpipe_common::rows::tables;
use chatpipe_sink::hbase::{HbaseClient, HbaseConfig};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::chat::{diff, Input, Outputs, Workload};
use crate::TestBroker;

/// Produces every record of `w` to its partition of `chat.events`, in order; with `pause`,
/// sleeps that long after each chunk of `chunk` records per partition (the partitions are
/// produced concurrently), so that the workload takes a predictable while.
pub async fn produce(broker: &TestBroker, w: &Workload, chunk: usize, pause: Option<Duration>) {
    let producer: FutureProducer = broker.kafka_args().producer_config("test", 5).create().expect("producer");
    let all = w.partitions.iter().enumerate().map(|(p, events)| {
        let producer = producer.clone();
        async move {
            for part in events.chunks(chunk.max(1)) {
                let sends = part.iter().map(|input| {
                    let (key, value) = match input {
                        Input::Event(e) => (e.session_id.to_string(), envelope::encode(e).expect("encode")),
                        Input::Garbage(b) => ("garbage".to_string(), b.clone()),
                    };
                    let producer = producer.clone();
                    async move {
                        producer
                            .send(
                                FutureRecord::to("chat.events").partition(p as i32).key(&key).payload(&value),
                                Duration::from_secs(60),
                            )
                            .await
                            .map_err(|(e, _)| e)
                            .expect("produce to chat.events");
                    }
                });
                // sends of one partition are enqueued in order; the idempotent producer keeps it
                futures::future::join_all(sends).await;
                if let Some(pause) = pause {
                    tokio::time::sleep(pause).await;
                }
            }
        }
    });
    futures::future::join_all(all).await;
}

/// Waits until every HBase table equals `expected` (the oracle's rows); panics with a diff
/// after `timeout`.
pub async fn wait_for_hbase(thrift: &str, expected: &Outputs, timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let t = thrift.to_owned();
        let rows = tokio::task::spawn_blocking(move || hbase_rows(&t)).await.expect("HBase read task");
        if rows == expected.rows {
            return;
        }
        let got = Outputs { rows, ..Outputs::default() };
        let want = Outputs { rows: expected.rows.clone(), ..Outputs::default() };
        assert!(std::time::Instant::now() < deadline, "HBase differs from the oracle:\n{}", diff(&want, &got));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Every row of every chatpipe table, `c:revision` cells left out (they count writes, not
/// content): `(table, row) → column → value`.
pub fn hbase_rows(thrift: &str) -> BTreeMap<(String, Vec<u8>), BTreeMap<String, Vec<u8>>> {
    let mut client = HbaseClient::connect(&HbaseConfig::new(thrift)).expect("connect to HBase");
    let mut out = BTreeMap::new();
    for (table, _) in tables::ALL {
        for row in client.scan_all(table).expect("scan") {
            let mut cells = row.cells;
            cells.remove("c:revision");
            out.insert((table.to_string(), row.row), cells);
        }
    }
    out
}
