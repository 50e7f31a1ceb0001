#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The JSON Schemas in `docs/schemas/` describe what a real run writes.
//!
//! `records_of_a_real_run_match_the_published_json_schemas` starts tansu, the HBase
//! emulator, ingest, the processor and the sink in process, posts a group conversation
//! (joins, messages of several kinds, a read, a leave) through ingest's HTTP API with event
//! times a few minutes back (so the idle partitions' wall-time watermark closes the windows
//! at once), then one late message for an already closed window (a corrected window with
//! revision 2), and feeds records that no stage can use to `chat.events` and `chat.rows`
//! (DLQ records of the processor and of the sink). It reads every record of
//! `chat.agg.session.1m`, `chat.agg.global.1m`, `chat.unread` and the headers of `chat.dlq`
//! and validates them with Python's `jsonschema` (Draft 2020-12) against the schemas, made
//! strict for the check: a field the schema does not declare fails, so a new field must be
//! documented before it ships (the published schemas stay open for consumers).
//!
//! `the_schema_check_rejects_records_that_break_the_contract` proves the check can fail:
//! records with an id as a number, a missing revision, an undeclared field and an unknown
//! DLQ stage are each refused.
//!
//! Both need the set-up's virtualenv (`jsonschema`); they fail naming `scripts/setup` without it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chatpipe_common::http::Telemetry;
use chatpipe_common::kafka::{dlq, parse_kafka_option, topics, KafkaArgs};
use chatpipe_tests::{now_ms, TestBroker, TestHbase, SETUP_COMMAND};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};

const PARTITIONS: i32 = 2;
const SESSION: u64 = 5150;

/// The schema of each JSON topic, and of the DLQ headers.
const SCHEMAS: [(&str, &str); 4] = [
    (topics::AGG_SESSION, "chat.agg.session.1m.schema.json"),
    (topics::AGG_GLOBAL, "chat.agg.global.1m.schema.json"),
    (topics::UNREAD, "chat.unread.schema.json"),
    (topics::DLQ, "chat.dlq.headers.schema.json"),
];

/// Validates `{topic: [record, …]}` (a JSON file) against the schemas; prints one line per
/// failure and exits 1 when there is any.
const VALIDATOR: &str = r#"
import json, sys
from jsonschema import Draft202012Validator

def strict(s):
    if isinstance(s, dict):
        s = {k: strict(v) for k, v in s.items()}
        if "properties" in s and "additionalProperties" not in s:
            s["additionalProperties"] = False
    elif isinstance(s, list):
        s = [strict(v) for v in s]
    return s

schemas = json.loads(sys.argv[1])
records = json.load(open(sys.argv[2]))
failures = 0
for topic, path in schemas.items():
    schema = json.load(open(path))
    Draft202012Validator.check_schema(schema)
    v = Draft202012Validator(strict(schema))
    for i, r in enumerate(records.get(topic, [])):
        for e in v.iter_errors(r):
            failures += 1
            print(f"{topic} record {i}: {'/'.join(map(str, e.absolute_path)) or '(record)'}: {e.message} -- {json.dumps(r)}")
print(f"checked {sum(len(records.get(t, [])) for t in schemas)} records, {failures} failures")
sys.exit(1 if failures else 0)
"#;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// The virtualenv's Python with `jsonschema`: `CHATPIPE_PYTHON`, else
/// `${CHATPIPE_TOOLS:-~/.cache/chatpipe}/venv/bin/python`.
fn python() -> PathBuf {
    let py = std::env::var_os("CHATPIPE_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        let tools = std::env::var_os("CHATPIPE_TOOLS")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(&std::env::var_os("HOME").expect("HOME is set")).join(".cache/chatpipe"));
        tools.join("venv/bin/python")
    });
    assert!(py.is_file(), "{} is missing: run `{SETUP_COMMAND}` (it creates the test virtualenv)", py.display());
    let check = Command::new(&py).args(["-c", "import jsonschema"]).output().expect("run python");
    assert!(check.status.success(), "{} lacks jsonschema: run `{SETUP_COMMAND}`", py.display());
    py
}

/// Runs the validator; `Ok(report)` when every record matches, `Err(report)` otherwise.
fn validate(records: &BTreeMap<&str, Vec<Value>>) -> Result<String, String> {
    let schemas: BTreeMap<&str, String> = SCHEMAS
        .iter()
        .map(|(topic, file)| (*topic, repo_root().join("docs/schemas").join(file).display().to_string()))
        .collect();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_vec(records).unwrap()).unwrap();
    let out = Command::new(python())
        .args(["-c", VALIDATOR, &serde_json::to_string(&schemas).unwrap()])
        .arg(file.path())
        .output()
        .expect("run the schema validator");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(report)
    } else {
        Err(report)
    }
}

#[test]
fn the_schema_check_rejects_records_that_break_the_contract() {
    let good_session = json!({"session_id":"1","session_kind":"group","window_start":"2026-01-01T00:00:00.000Z",
        "window_end":"2026-01-01T00:01:00.000Z","messages":2,"by_kind":{"text":2},"senders":1,"revision":1});
    let good_dlq = json!({"chatpipe.reason":"undecodable","chatpipe.detail":"x","chatpipe.stage":"sink",
        "chatpipe.source.topic":"chat.rows","chatpipe.source.partition":"0","chatpipe.source.offset":"12"});
    let good =
        BTreeMap::from([(topics::AGG_SESSION, vec![good_session.clone()]), (topics::DLQ, vec![good_dlq.clone()])]);
    validate(&good).unwrap_or_else(|r| panic!("a record of the documented shape was refused:\n{r}"));

    let mut id_as_number = good_session.clone();
    id_as_number["session_id"] = json!(1);
    let mut no_revision = good_session.clone();
    no_revision.as_object_mut().unwrap().remove("revision");
    let mut undeclared = good_session.clone();
    undeclared["participants"] = json!(3);
    let mut bad_kind = good_session;
    bad_kind["by_kind"] = json!({"sticker": 1});
    let mut bad_stage = good_dlq;
    bad_stage["chatpipe.stage"] = json!("router");
    for (what, topic, record) in [
        ("an id as a number", topics::AGG_SESSION, id_as_number),
        ("a missing revision", topics::AGG_SESSION, no_revision),
        ("an undeclared field", topics::AGG_SESSION, undeclared),
        ("an unknown message kind", topics::AGG_SESSION, bad_kind),
        ("an unknown DLQ stage", topics::DLQ, bad_stage),
    ] {
        let report = validate(&BTreeMap::from([(topic, vec![record])]))
            .err()
            .unwrap_or_else(|| panic!("the schema check accepted {what}"));
        assert!(report.contains("1 failures"), "{what}: {report}");
    }
}

fn kafka_args(broker: &TestBroker) -> KafkaArgs {
    let mut k = broker.kafka_args();
    for o in ["session.timeout.ms=6000", "heartbeat.interval.ms=500"] {
        k.options.push(parse_kafka_option(o).unwrap());
    }
    k
}

/// A group conversation at event time `t`: three joins, messages of several kinds from
/// every member, a read and a leave.
fn conversation(t: i64) -> Value {
    let mut events = Vec::new();
    for user in 1..=3u64 {
        events.push(json!({"type":"join","session_id":SESSION.to_string(),"session_kind":"group","sender_id":user,
            "user_id":user,"client_msg_id":format!("join-{user}"),"sent_at":t}));
    }
    let kinds = ["text", "image", "text", "file", "text", "card"];
    for (i, kind) in kinds.iter().enumerate() {
        let sender = 1 + i as u64 % 3;
        events.push(json!({"type":"message","session_id":SESSION,"session_kind":"group","sender_id":sender,
            "client_msg_id":format!("m-{i}"),"sent_at":t + 1 + i as i64,
            "message":{"kind":kind,"body":format!("message {i}"),"mentions":[1]}}));
    }
    events.push(json!({"type":"message","session_id":"77","session_kind":"direct","sender_id":1,"recipient_id":2,
        "client_msg_id":"d-1","sent_at":t + 10,"message":{"kind":"text","body":"direct"}}));
    events.push(json!({"type":"leave","session_id":SESSION,"session_kind":"group","sender_id":3,"user_id":3,
        "client_msg_id":"leave-3","sent_at":t + 20}));
    Value::Array(events)
}

struct Seen {
    records: BTreeMap<&'static str, Vec<Value>>,
    tombstones: usize,
}

impl Seen {
    fn count(&self, topic: &str) -> usize {
        self.records.get(topic).map_or(0, Vec::len)
    }
    fn max_revision(&self) -> u64 {
        self.records
            .get(topics::AGG_SESSION)
            .into_iter()
            .flatten()
            .filter_map(|r| r["revision"].as_u64())
            .max()
            .unwrap_or(0)
    }
    fn dlq_stages(&self) -> Vec<String> {
        let mut s: Vec<String> = self
            .records
            .get(topics::DLQ)
            .into_iter()
            .flatten()
            .filter_map(|h| h[dlq::STAGE].as_str().map(str::to_owned))
            .collect();
        s.sort();
        s.dedup();
        s
    }
}

fn assign_all(consumer: &BaseConsumer, names: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut tpl = TopicPartitionList::new();
        let mut missing = Vec::new();
        for topic in names {
            let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
            let parts = md.topics().first().map(|t| t.partitions().len()).unwrap_or(0);
            if parts == 0 {
                missing.push(*topic);
            }
            for p in 0..parts as i32 {
                tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
            }
        }
        if missing.is_empty() {
            consumer.assign(&tpl).unwrap();
            return;
        }
        assert!(Instant::now() < deadline, "topics never appeared: {missing:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_of_a_real_run_match_the_published_json_schemas() {
    python(); // fail early, naming the set-up, without starting anything
    let broker = TestBroker::start();
    let hbase = TestHbase::start();
    let state_dir = tempfile::tempdir().unwrap();

    let mut pc = chatpipe_processor::Config::for_brokers(&broker.bootstrap());
    pc.kafka = kafka_args(&broker);
    pc.events_partitions = PARTITIONS;
    pc.output_partitions = PARTITIONS;
    pc.grace = Duration::from_secs(2);
    pc.idle_timeout = Duration::from_secs(1);
    pc.drain_timeout = Duration::from_secs(5);
    pc.state_dir = state_dir.path().to_owned();
    let processor = chatpipe_processor::start(pc, Telemetry::new()).await.expect("processor starts");

    let mut sc = chatpipe_sink::Config::new(kafka_args(&broker), hbase.thrift());
    sc.topic_partitions = PARTITIONS;
    sc.create_tables = true;
    sc.drain_timeout = Duration::from_secs(5);
    let (stop_sink, sink_stopped) = tokio::sync::oneshot::channel::<()>();
    let sink = tokio::spawn(chatpipe_sink::run_with_telemetry(sc, Telemetry::new(), async move {
        let _ = sink_stopped.await;
    }));

    let mut ic = chatpipe_ingest::Config::new(kafka_args(&broker));
    ic.events_partitions = PARTITIONS;
    ic.worker_id = Some(1);
    let ingest = chatpipe_ingest::start(ic, Telemetry::new()).await.expect("ingest starts");
    assert!(ingest.wait_ready(Duration::from_secs(60)).await, "ingest did not become ready");

    // five minutes back: the windows close as soon as the idle partitions' watermark moves
    let t = now_ms() - 5 * 60_000;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let url = format!("http://{}/v1/events", ingest.local_addr());
    let post = |body: Value| http.post(&url).header("content-type", "application/json").body(body.to_string()).send();
    let r = post(conversation(t)).await.unwrap();
    assert_eq!(r.status().as_u16(), 202, "{}", r.text().await.unwrap());

    // records no stage can use: the processor's and the sink's DLQ records
    let producer: FutureProducer = broker.kafka_args().producer_config("schema-test", 1).create().unwrap();
    for (topic, key) in [(topics::EVENTS, SESSION.to_string()), (topics::ROWS, "000|1|1".to_owned())] {
        producer
            .send(FutureRecord::to(topic).key(&key).payload(b"not an envelope".as_slice()), Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .unwrap_or_else(|e| panic!("produce to {topic}: {e}"));
    }

    let consumer: BaseConsumer = broker
        .kafka_args()
        .consumer_config("schema-test")
        .set("group.id", "schema-test")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let names: Vec<&str> = SCHEMAS.iter().map(|(t, _)| *t).collect();
    assign_all(&consumer, &names);

    let mut seen = Seen { records: BTreeMap::new(), tombstones: 0 };
    let mut late_sent = false;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let done = seen.max_revision() >= 2
            && seen.count(topics::AGG_GLOBAL) >= 2
            && seen.count(topics::UNREAD) >= 3
            && seen.dlq_stages() == ["processor", "sink"];
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every kind of record appeared within 180 s: {} session, {} global (max revision {}), \
             {} unread, {} tombstones, DLQ stages {:?}",
            seen.count(topics::AGG_SESSION),
            seen.count(topics::AGG_GLOBAL),
            seen.max_revision(),
            seen.count(topics::UNREAD),
            seen.tombstones,
            seen.dlq_stages()
        );
        if !late_sent && seen.count(topics::AGG_SESSION) >= 2 {
            // the conversation's windows are closed: a late message corrects one (revision 2)
            let late = json!({"type":"message","session_id":SESSION,"session_kind":"group","sender_id":2,
                "client_msg_id":"late-1","sent_at":t + 30,"message":{"kind":"video","body":"late"}});
            let r = post(late).await.unwrap();
            assert_eq!(r.status().as_u16(), 202, "{}", r.text().await.unwrap());
            late_sent = true;
        }
        let Some(m) = consumer.poll(Duration::from_millis(200)) else { continue };
        let m = m.expect("consume the output topics");
        let topic = names.iter().copied().find(|n| *n == m.topic()).unwrap();
        let value = if topic == topics::DLQ {
            let mut headers = serde_json::Map::new();
            for h in m.headers().map(|h| h.iter().collect::<Vec<_>>()).unwrap_or_default() {
                headers.insert(h.key.to_owned(), json!(String::from_utf8_lossy(h.value.unwrap_or_default())));
            }
            Value::Object(headers)
        } else {
            match m.payload() {
                None => {
                    assert_eq!(topic, topics::UNREAD, "only chat.unread has tombstones");
                    seen.tombstones += 1;
                    continue;
                }
                Some(p) => serde_json::from_slice(p)
                    .unwrap_or_else(|e| panic!("{topic} record is not JSON ({e}): {}", String::from_utf8_lossy(p))),
            }
        };
        seen.records.entry(topic).or_default().push(value);
    }

    ingest.shutdown().await.expect("ingest drains");
    processor.shutdown().await.expect("processor drains");
    let _ = stop_sink.send(());
    sink.await.unwrap().expect("sink drains");

    let report = validate(&seen.records).unwrap_or_else(|r| panic!("records of a real run break the schemas:\n{r}"));
    eprintln!("{report}");
    for (topic, records) in &seen.records {
        eprintln!("{topic}: {} records, e.g. {}", records.len(), records[0]);
    }
}
