//! Poison records — bytes that are not an envelope, an empty value, a mutation of an unknown
//! table, one naming an unknown column family, one with an empty row key — go to `chat.dlq`
//! with their reason, source coordinates and original bytes, and the partition moves on:
//! every good record around them (including good records of the same row, in the same
//! batch, as a refused one) is written and the committed offset reaches the end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use chatpipe_common::kafka::{dlq, topics, TopicSpec};
use chatpipe_common::row_key;
use chatpipe_common::rows::{self, tables, Cell, RowMutation};
use chatpipe_sink::metrics;
use chatpipe_tests::sink_support::*;
use chatpipe_tests::{TestBroker, TestHbase};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message};

fn put(table: &str, row: &str, cells: &[(&str, &str)]) -> RowMutation {
    RowMutation {
        table: table.into(),
        row: row.as_bytes().to_vec(),
        cells: cells.iter().map(|(c, v)| Cell::new(*c, v.as_bytes())).collect(),
        delete: false,
        ingested_at_ms: 0,
    }
}

enum Rec {
    Good(RowMutation),
    Bad(Option<Vec<u8>>, &'static str),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_go_to_the_dlq_and_the_partition_moves_on() {
    init_logs();
    let broker = TestBroker::start();
    let hbase = TestHbase::start();
    broker.create_topics(&[TopicSpec::new(topics::ROWS, 2), TopicSpec::new(topics::DLQ, 1)]).await;

    let shared_row = row_key::encode(7, 100);
    let mut recs = Vec::new();
    for i in 0..300u64 {
        recs.push(Rec::Good(put(tables::MESSAGES, &row_key::encode(1, i), &[("m:body", "hello"), ("m:seq", "1")])));
        match i {
            10 => recs.push(Rec::Bad(Some(b"not an envelope".to_vec()), "undecodable")),
            20 => recs.push(Rec::Bad(None, "undecodable")),
            30 => recs.push(Rec::Bad(
                Some(rows::encode_one(&put("chat:nope", "001|1|x", &[("m:a", "1")])).unwrap()),
                "unknown_table",
            )),
            40 => recs.push(Rec::Bad(
                Some(rows::encode_one(&put(tables::MESSAGES, "001|1|y", &[("zz:a", "1")])).unwrap()),
                "unknown_family",
            )),
            50 => recs.push(Rec::Bad(
                Some(rows::encode_one(&put(tables::MESSAGES, "", &[("m:a", "1")])).unwrap()),
                "invalid_mutation",
            )),
            60 => {
                // one row: good, refused (unknown family next to a good column), good — in
                // one batch they coalesce; the refused record alone goes to the DLQ
                recs.push(Rec::Good(put(tables::MESSAGES, &shared_row, &[("m:a", "1")])));
                recs.push(Rec::Bad(
                    Some(
                        rows::encode_one(&put(tables::MESSAGES, &shared_row, &[("m:b", "2"), ("zz:x", "1")])).unwrap(),
                    ),
                    "unknown_family",
                ));
                recs.push(Rec::Good(put(tables::MESSAGES, &shared_row, &[("m:c", "3")])));
            }
            _ => {}
        }
    }
    // all on partition 0, so that poison sits between good records of one partition
    let producer = producer(&broker);
    let mut placed = Vec::new();
    let mut good = Vec::new();
    let mut bad: BTreeMap<i64, (Option<Vec<u8>>, &str)> = BTreeMap::new();
    for r in &recs {
        match r {
            Rec::Good(m) => {
                let value = rows::encode_one(m).unwrap();
                placed.push(produce_raw(&producer, topics::ROWS, 0, &m.row, Some(&value)).await);
                good.push(m.clone());
            }
            Rec::Bad(value, reason) => {
                let at = produce_raw(&producer, topics::ROWS, 0, b"poison", value.as_deref()).await;
                bad.insert(at.1, (value.clone(), *reason));
                placed.push(at);
            }
        }
    }

    let mut config = sink_config(&broker, &hbase.thrift(), "sink-poison");
    config.batch_rows = 64;
    config.flush_interval = Duration::from_millis(200); // batches hold several records
    let sink = spawn_sink(config);
    Offsets::new(&broker, "sink-poison", topics::ROWS, 2)
        .wait_caught_up(&ends(&placed, 2), Duration::from_secs(60))
        .await;

    let expected_state = expected(&good);
    let actual = scan_state(&hbase.thrift());
    assert!(actual == expected_state, "{}", diff(&expected_state, &actual));
    let shared = &actual[tables::MESSAGES][shared_row.as_bytes()];
    assert_eq!(shared.keys().collect::<Vec<_>>(), vec!["m:a", "m:c"]);

    // the DLQ holds exactly the poison, with reasons, coordinates and the original bytes
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", "dlq-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topics::DLQ]).unwrap();
    let mut seen: BTreeMap<i64, (Option<Vec<u8>>, String)> = BTreeMap::new();
    while seen.len() < bad.len() {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("DLQ records within 30 s")
            .unwrap();
        let headers = m.headers().expect("DLQ records carry headers");
        let header = |name: &str| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        assert_eq!(header(dlq::STAGE), "sink");
        assert_eq!(header(dlq::TOPIC), topics::ROWS);
        assert_eq!(header(dlq::PARTITION), "0");
        assert!(!header(dlq::DETAIL).is_empty());
        let offset: i64 = header(dlq::OFFSET).parse().unwrap();
        seen.insert(offset, (m.payload().filter(|p| !p.is_empty()).map(<[u8]>::to_vec), header(dlq::REASON)));
    }
    let expected_dlq: BTreeMap<i64, (Option<Vec<u8>>, String)> =
        bad.iter().map(|(o, (v, r))| (*o, (v.clone().filter(|v| !v.is_empty()), (*r).to_owned()))).collect();
    assert_eq!(seen, expected_dlq);
    assert_eq!(sink.metric(metrics::DLQ_RECORDS), bad.len() as f64);
    assert_eq!(sink.metric_with(metrics::DLQ_RECORDS, "reason", "unknown_family"), 2.0);
    sink.stop().await;
}
