//! The full stack end to end on tansu + the HBase emulator: a scripted workload posted over
//! HTTP to ingest, processed, and written by the sink. After draining, every HBase table
//! and every aggregate topic equals an oracle computed independently from the events ingest
//! published; timelines read newest-first with decompressed bodies and a dense `seq`; and
//! each role's `/metrics` exposes the series DESIGN §8 requires.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use chatpipe_common::envelope;
use chatpipe_common::event::{ChatEvent, EventInput, EventType, MessageKind};
use chatpipe_common::http::{ObservabilityServer, Telemetry};
use chatpipe_common::kafka::{parse_kafka_option, KafkaArgs, TopicSpec};
use chatpipe_common::rows::tables;
use chatpipe_sink::hbase::{HbaseClient, HbaseConfig};
use chatpipe_tests::chat::{diff, oracle, scripted, Collector, Input, OracleRules, Workload};
use chatpipe_tests::{now_ms, TestBroker, TestHbase};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

const PARTITIONS: i32 = 3;

fn kafka(broker: &TestBroker) -> KafkaArgs {
    let mut k = broker.kafka_args();
    k.options.push(parse_kafka_option("session.timeout.ms=6000").unwrap());
    k
}

fn input_of(e: &ChatEvent) -> EventInput {
    EventInput {
        event_type: e.event_type,
        session_id: e.session_id,
        session_kind: e.session_kind,
        sender_id: e.sender_id,
        recipient_id: e.recipient_id,
        client_msg_id: e.client_msg_id.clone(),
        sent_at_ms: Some(e.sent_at_ms),
        message: e.message.clone(),
        target_id: e.target_id,
        user_id: e.user_id,
        read_seq: e.read_seq,
        name: e.name.clone(),
        avatar_url: e.avatar_url.clone(),
    }
}

async fn flush(client: &reqwest::Client, url: &str, batch: &[&ChatEvent], ids: &mut HashMap<u64, u64>) {
    if batch.is_empty() {
        return;
    }
    let body: Vec<String> = batch
        .iter()
        .map(|e| {
            let mut i = input_of(e);
            // (a target the workload never sent — an unknown id on purpose — stays as it is)
            i.target_id = i.target_id.map(|t| ids.get(&t).copied().unwrap_or(t));
            i.to_json()
        })
        .collect();
    let r = client
        .post(format!("{url}/v1/events"))
        .header("content-type", "application/json")
        .body(format!("[{}]", body.join(",")))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    assert_eq!(status, 202, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    for (e, res) in batch.iter().zip(v["results"].as_array().unwrap()) {
        ids.insert(e.message_id, res["message_id"].as_str().unwrap().parse().unwrap());
    }
}

/// Posts the workload over HTTP in arrays, in order, mapping the workload's ids to the ids
/// ingest assigns (an event whose target is in the unsent batch flushes the batch first).
async fn post(url: &str, w: &Workload) {
    let client = reqwest::Client::new();
    let mut ids: HashMap<u64, u64> = HashMap::new();
    for events in &w.partitions {
        let mut batch: Vec<&ChatEvent> = Vec::new();
        for input in events {
            let Input::Event(e) = input else { continue };
            let unsent_target = e.target_id.is_some_and(|t| batch.iter().any(|b| b.message_id == t));
            let needs_flush = unsent_target || batch.len() >= 50;
            if needs_flush {
                flush(&client, url, &std::mem::take(&mut batch), &mut ids).await;
            }
            batch.push(e);
        }
        flush(&client, url, &batch, &mut ids).await;
    }
}

/// What ingest published, per partition in offset order (plus the garbage record).
fn published(broker: &TestBroker, expected: usize) -> Workload {
    let c: BaseConsumer = broker.kafka_args().client_config("read-back").set("group.id", "read-back").create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset("chat.events", p, Offset::Beginning).unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut parts: Vec<Vec<(i64, Input)>> = vec![Vec::new(); PARTITIONS as usize];
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut n = 0;
    while n < expected {
        assert!(Instant::now() < deadline, "read back only {n} of {expected} events");
        let Some(Ok(m)) = c.poll(Duration::from_millis(200)) else { continue };
        let input = match envelope::decode::<ChatEvent>(m.payload().unwrap()) {
            Ok(e) => Input::Event(e),
            Err(_) => Input::Garbage(m.payload().unwrap().to_vec()),
        };
        parts[m.partition() as usize].push((m.offset(), input));
        n += 1;
    }
    Workload {
        partitions: parts
            .into_iter()
            .map(|mut v| {
                v.sort_by_key(|(o, _)| *o);
                v.into_iter().map(|(_, i)| i).collect()
            })
            .collect(),
    }
}

fn scrape_names(t: &Telemetry) -> Vec<String> {
    t.registry.gather().iter().map(|f| f.name().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posted_workload_lands_in_hbase_and_topics_exactly() {
    let broker = TestBroker::start();
    broker.create_topics(&[TopicSpec::new("chat.events", PARTITIONS)]).await;
    let hbase = TestHbase::start();
    {
        let mut c = HbaseClient::connect(&HbaseConfig::new(hbase.thrift())).unwrap();
        chatpipe_sink::tables::create_all(&mut c).unwrap();
    }
    let rules = OracleRules::default();
    let (ti, tp, ts) = (Telemetry::new(), Telemetry::new(), Telemetry::new());
    let ingest = chatpipe_ingest::start(chatpipe_ingest::Config::new(kafka(&broker)), ti.clone()).await.unwrap();
    assert!(ingest.wait_ready(Duration::from_secs(30)).await);
    let mut pc = chatpipe_processor::Config::for_brokers(&broker.bootstrap());
    pc.kafka = kafka(&broker);
    pc.events_partitions = PARTITIONS;
    pc.output_partitions = 2;
    pc.blocked_senders = vec![rules.blocked_sender];
    pc.allowed_kinds = MessageKind::ALL.iter().copied().filter(|k| *k != rules.disallowed_kind).collect();
    pc.max_body_bytes = rules.max_body_bytes;
    pc.fanout_max_members = rules.fanout_max_members;
    pc.grace = Duration::from_secs(5);
    pc.idle_timeout = Duration::from_secs(1);
    pc.metrics_listen = "127.0.0.1:0".parse().unwrap();
    let processor = chatpipe_processor::start(pc, tp.clone()).await.unwrap();
    let mut sc = chatpipe_sink::Config::new(kafka(&broker), hbase.thrift());
    sc.topic_partitions = 2;
    let stop = tokio_util::sync::CancellationToken::new();
    let sink = {
        let (stop, ts) = (stop.clone(), ts.clone());
        tokio::spawn(
            async move { chatpipe_sink::run_with_telemetry(sc, ts, async move { stop.cancelled().await }).await },
        )
    };
    let servers = [
        ObservabilityServer::start("127.0.0.1:0".parse().unwrap(), ti.clone()).await.unwrap(),
        ObservabilityServer::start("127.0.0.1:0".parse().unwrap(), tp.clone()).await.unwrap(),
        ObservabilityServer::start("127.0.0.1:0".parse().unwrap(), ts.clone()).await.unwrap(),
    ];

    // the workload: scripted events posted over HTTP, one undecodable record produced raw
    let now = now_ms();
    let w = scripted(PARTITIONS as usize, 400, now, &rules, 11);
    let url = format!("http://{}", ingest.local_addr());
    post(&url, &w).await;
    let producer: FutureProducer = broker.kafka_args().producer_config("test", 0).create().unwrap();
    producer
        .send(FutureRecord::to("chat.events").key("x").payload(&b"\x00garbage"[..]), Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    producer
        .send(FutureRecord::to("chat.rows").key("x").payload(&b"\x00poison row"[..]), Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    let posted: usize = w.partitions.iter().flatten().filter(|i| matches!(i, Input::Event(_))).count();
    let published = published(&broker, posted + 1);
    let expected = oracle(&published, &rules);

    // topics
    let collector = Collector::start(&broker);
    let mut expected_topics = expected.clone();
    expected_topics.rows = BTreeMap::new();
    *expected_topics.dlq.entry("undecodable".into()).or_default() += 1; // the poison row, from the sink
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let mut got = collector.snapshot();
        got.rows = BTreeMap::new();
        if got == expected_topics {
            break;
        }
        assert!(Instant::now() < deadline, "topics differ from the oracle:\n{}", diff(&expected_topics, &got));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // HBase
    let thrift = hbase.thrift();
    chatpipe_tests::pipeline::wait_for_hbase(&thrift, &expected, Duration::from_secs(120)).await;
    // timelines: newest first, bodies decompressed, seq dense
    let sessions: std::collections::BTreeSet<(u64, bool)> = published
        .partitions
        .iter()
        .flatten()
        .filter_map(|i| match i {
            Input::Event(e) if e.event_type == EventType::Message => {
                Some((e.session_id, e.session_kind == chatpipe_common::event::SessionKind::Channel))
            }
            _ => None,
        })
        .collect();
    let t = thrift.clone();
    let exp = expected.rows.clone();
    tokio::task::spawn_blocking(move || {
        let mut client = HbaseClient::connect(&HbaseConfig::new(t)).unwrap();
        for (session, channel) in sessions {
            let table = if channel { tables::CHANNEL_MESSAGES } else { tables::MESSAGES };
            let page = chatpipe_sink::query::timeline(&mut client, table, session, 100_000, None).unwrap();
            let ids: Vec<u64> = page.iter().map(|m| m.message_id).collect();
            assert!(ids.windows(2).all(|w| w[0] > w[1]), "session {session} is not newest first");
            let mut seqs: Vec<u64> = page
                .iter()
                .map(|m| m.seq.unwrap_or_else(|| panic!("session {session}: a row without seq: {m:?}")))
                .collect();
            seqs.sort_unstable();
            assert_eq!(seqs, (1..=page.len() as u64).collect::<Vec<_>>(), "session {session}: seq is not dense");
            for m in &page {
                let key = (table.to_string(), chatpipe_common::row_key::encode(session, m.message_id).into_bytes());
                let cells = &exp[&key];
                let body =
                    chatpipe_sink::query::decode_body(&cells["m:body"], cells.get("m:enc").map(Vec::as_slice)).unwrap();
                assert_eq!(m.body.as_deref(), Some(body.as_str()), "session {session} message {}: body", m.message_id);
            }
        }
    })
    .await
    .unwrap();

    // DESIGN §8 series on each role's /metrics
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let required = [
        (0, "chatpipe_ingest_requests_total"),
        (0, "chatpipe_ingest_request_duration_seconds"),
        (0, "chatpipe_ingest_produce_latency_seconds"),
        (1, "chatpipe_processor_consumer_lag_messages"),
        (1, "chatpipe_processor_dlq_records_total"),
        (1, "chatpipe_processor_late_events_total"),
        (1, "chatpipe_processor_state_entries"),
        (1, "chatpipe_processor_restore_duration_seconds"),
        (1, "chatpipe_processor_events_total"),
        (2, "chatpipe_sink_consumer_lag_messages"),
        (2, "chatpipe_sink_end_to_end_latency_seconds"),
        (2, "chatpipe_sink_hbase_write_latency_seconds"),
        (2, "chatpipe_sink_batch_rows"),
        (2, "chatpipe_sink_dlq_records_total"),
        (2, "chatpipe_sink_rows_written_total"),
    ];
    loop {
        let mut missing = Vec::new();
        for (i, name) in required {
            let body =
                http.get(format!("http://{}/metrics", servers[i].addr)).send().await.unwrap().text().await.unwrap();
            if !body.lines().any(|l| l.starts_with(name)) {
                missing.push(name);
            }
        }
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "series missing from /metrics: {missing:?} (registered: {:?})",
            [scrape_names(&ti), scrape_names(&tp), scrape_names(&ts)]
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    ingest.shutdown().await.unwrap();
    processor.shutdown().await.unwrap();
    stop.cancel();
    sink.await.unwrap().unwrap();
    for s in servers {
        s.shutdown().await;
    }
}
