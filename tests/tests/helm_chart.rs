#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The Helm chart (`helm/chatpipe`), tested from `cargo test`:
//!
//! * `chart_renders_lints_validates_and_matches_the_binary` runs `helm/tests/test_chart.py`
//!   with the set-up's Python: the chart rendered offline by Helm v4's engine
//!   (helm-python-sdk) for the default and the production-like values, `helm lint`, every
//!   object validated against the Kubernetes schemas (kubernetes-validate), bad values
//!   refused, and each role's args and env checked against `chatpipe <role> --help` of the
//!   binary built by `cargo build -p chatpipe`.
//! * `alert_and_dashboard_metrics_exist_in_a_running_stack` starts a real stack (tansu,
//!   the HBase emulator, ingest, processor and sink in process), drives events through it,
//!   including the failures that make the error and DLQ series appear, scrapes each
//!   role's `/metrics`, and requires every `chatpipe_*` series named by the alerts and the
//!   dashboard to be there. Labelled series appear only once their label set is used, so
//!   the test provokes them rather than comparing with the names the code registers: a
//!   name passes only if a running role really exports it.
//!
//! Both fail, naming `scripts/setup`, when the Python virtualenv or its packages are missing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chatpipe_common::http::{ObservabilityServer, Telemetry};
use chatpipe_common::kafka::{parse_kafka_option, topics, KafkaArgs};
use chatpipe_common::rows::{self, Cell, RowMutation};
use chatpipe_tests::{chatpipe_binary, free_port, now_ms, TestBroker, TestHbase, SETUP_COMMAND};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};

const PARTITIONS: i32 = 2;
const PARTIALS_TOPIC: &str = "chatpipe.processor.partials";

/// The virtualenv's Python: `CHATPIPE_PYTHON`, else `${CHATPIPE_TOOLS:-~/.cache/chatpipe}/venv`.
fn python() -> PathBuf {
    let py = std::env::var_os("CHATPIPE_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        let tools = std::env::var_os("CHATPIPE_TOOLS")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(&std::env::var_os("HOME").expect("HOME is set")).join(".cache/chatpipe"));
        tools.join("venv/bin/python")
    });
    assert!(py.is_file(), "{} is missing: run `{SETUP_COMMAND}` (it creates the test virtualenv)", py.display());
    let check = Command::new(&py)
        .args(["-c", "import helm_python, kubernetes_validate, yaml"])
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", py.display()));
    assert!(
        check.status.success(),
        "{} lacks helm-python-sdk or kubernetes-validate: run `{SETUP_COMMAND}`\n{}",
        py.display(),
        String::from_utf8_lossy(&check.stderr)
    );
    py
}

fn helm_tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/tests")
}

#[test]
fn chart_renders_lints_validates_and_matches_the_binary() {
    let binary = chatpipe_binary().unwrap_or_else(|e| panic!("{e:#}"));
    let out = Command::new(python())
        .args(["-m", "unittest", "-v", "test_chart"])
        .current_dir(helm_tests_dir())
        .env("CHATPIPE_BINARY", &binary)
        .output()
        .expect("run the chart tests");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{report}");
    assert!(out.status.success(), "helm/tests/test_chart.py failed:\n{report}");
}

/// `{series name: [where the alerts and the dashboard use it]}`.
fn metric_usages() -> BTreeMap<String, Vec<String>> {
    let out = Command::new(python())
        .arg("metric_names.py")
        .current_dir(helm_tests_dir())
        .output()
        .expect("run metric_names.py");
    assert!(out.status.success(), "metric_names.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let usages: BTreeMap<String, Vec<String>> =
        serde_json::from_slice(&out.stdout).expect("metric_names.py prints JSON");
    assert!(usages.len() > 20, "too few metric names found: {usages:?}");
    usages
}

/// The sample names of a Prometheus text exposition (histograms give `_bucket`, `_sum`, `_count`).
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

fn kafka_args(broker: &TestBroker) -> KafkaArgs {
    let mut k = broker.kafka_args();
    for o in ["session.timeout.ms=6000", "heartbeat.interval.ms=500"] {
        k.options.push(parse_kafka_option(o).unwrap());
    }
    k
}

/// A conversation: two joins and a few messages in a group, sent now.
fn conversation() -> Value {
    let t = now_ms();
    let mut events = vec![
        json!({"type":"join","session_id":4242,"session_kind":"group","sender_id":1,"user_id":1,"client_msg_id":"j1","sent_at":t}),
        json!({"type":"join","session_id":4242,"session_kind":"group","sender_id":2,"user_id":2,"client_msg_id":"j2","sent_at":t}),
    ];
    for i in 0..10i64 {
        events.push(json!({"type":"message","session_id":4242,"session_kind":"group","sender_id":1 + i % 2,
            "client_msg_id":format!("m{i}"),"sent_at":t + i,"message":{"kind":"text","body":format!("hello {i}")}}));
    }
    Value::Array(events)
}

async fn produce(producer: &FutureProducer, topic: &str, key: &str, value: &[u8]) {
    producer
        .send(FutureRecord::to(topic).key(key).payload(value), Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .unwrap_or_else(|e| panic!("produce to {topic}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alert_and_dashboard_metrics_exist_in_a_running_stack() {
    let usages = metric_usages();
    let broker = TestBroker::start();
    let hbase = TestHbase::start();
    let state_dir = tempfile::tempdir().unwrap();

    // processor
    let mut pc = chatpipe_processor::Config::for_brokers(&broker.bootstrap());
    pc.kafka = kafka_args(&broker);
    pc.events_partitions = PARTITIONS;
    pc.output_partitions = PARTITIONS;
    pc.idle_timeout = Duration::from_secs(1);
    pc.drain_timeout = Duration::from_secs(5);
    pc.state_dir = state_dir.path().to_owned();
    let processor_t = Telemetry::new();
    let processor = chatpipe_processor::start(pc, processor_t.clone()).await.expect("processor starts");

    // sink, with the tables created at start-up
    let mut sc = chatpipe_sink::Config::new(kafka_args(&broker), hbase.thrift());
    sc.topic_partitions = PARTITIONS;
    sc.create_tables = true;
    sc.drain_timeout = Duration::from_secs(5);
    let sink_t = Telemetry::new();
    let (stop_sink, sink_stopped) = tokio::sync::oneshot::channel::<()>();
    let sink = tokio::spawn(chatpipe_sink::run_with_telemetry(sc, sink_t.clone(), async move {
        let _ = sink_stopped.await;
    }));

    // ingest, and a second one whose broker is unreachable: its error counters are the
    // ingest's error series
    let mut ic = chatpipe_ingest::Config::new(kafka_args(&broker));
    ic.events_partitions = PARTITIONS;
    ic.worker_id = Some(1);
    let ingest_t = Telemetry::new();
    let ingest = chatpipe_ingest::start(ic, ingest_t.clone()).await.expect("ingest starts");
    assert!(ingest.wait_ready(Duration::from_secs(60)).await, "ingest did not become ready");
    let mut dc = chatpipe_ingest::Config::new(KafkaArgs::new(format!("127.0.0.1:{}", free_port())));
    dc.worker_id = Some(2);
    let dead_t = Telemetry::new();
    let dead_ingest = chatpipe_ingest::start(dc, dead_t.clone()).await.expect("ingest without a broker starts");

    let mut servers = Vec::new();
    for (role, t) in
        [("ingest", &ingest_t), ("ingest (no broker)", &dead_t), ("processor", &processor_t), ("sink", &sink_t)]
    {
        servers.push((role, ObservabilityServer::start("127.0.0.1:0".parse().unwrap(), t.clone()).await.unwrap()));
    }

    // traffic: a valid conversation, an invalid event, a wrong content type
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let url = format!("http://{}/v1/events", ingest.local_addr());
    let post = |body: String, ct: &'static str| http.post(&url).header("content-type", ct).body(body).send();
    let ok = post(conversation().to_string(), "application/json").await.unwrap();
    assert_eq!(ok.status().as_u16(), 202, "{}", ok.text().await.unwrap());
    let bad = post(json!({"type":"message"}).to_string(), "application/json").await.unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    let wrong_type = post("hello".into(), "text/plain").await.unwrap();
    assert!(wrong_type.status().is_client_error());

    // records no stage can use: undecodable events and rows (DLQ), a row of a table that
    // does not exist (a permanent HBase error), an undecodable global-merge partial
    let producer: FutureProducer = broker.kafka_args().producer_config("helm-test", 1).create().unwrap();
    produce(&producer, topics::EVENTS, "4242", b"not an envelope").await;
    produce(&producer, topics::ROWS, "r", b"not an envelope").await;
    let missing_table = RowMutation {
        table: "chat:no_such_table".into(),
        row: b"000|1|1".to_vec(),
        cells: vec![Cell::new("m:body", b"x".to_vec())],
        delete: false,
        ingested_at_ms: now_ms(),
    };
    produce(&producer, topics::ROWS, "000|1|1", &rows::encode_one(&missing_table).unwrap()).await;

    let deadline = Instant::now() + Duration::from_secs(180);
    let (missing, scraped) = loop {
        let mut scraped: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (role, server) in &servers {
            let text = http.get(format!("http://{}/metrics", server.addr)).send().await.unwrap().text().await.unwrap();
            for name in sample_names(&text) {
                scraped.entry(name).or_default().insert((*role).to_owned());
            }
        }
        let missing: Vec<&String> = usages.keys().filter(|n| !scraped.contains_key(*n)).collect();
        if missing.is_empty() || Instant::now() > deadline {
            break (missing.into_iter().cloned().collect::<Vec<_>>(), scraped);
        }
        if missing.iter().any(|n| n.as_str() == "chatpipe_processor_errors_total") {
            // the merge task subscribes in the background: keep offering it a bad partial
            produce(&producer, PARTIALS_TOPIC, "p", b"not a partial").await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };

    for (_, s) in servers {
        s.shutdown().await;
    }
    ingest.shutdown().await.expect("ingest drains");
    let _ = dead_ingest.shutdown().await; // it never reached a broker: its flush may time out
    processor.shutdown().await.expect("processor drains");
    let _ = stop_sink.send(());
    sink.await.unwrap().expect("sink drains");

    let detail: Vec<String> = missing.iter().map(|n| format!("  {n} (used by {})", usages[n].join(", "))).collect();
    assert!(
        missing.is_empty(),
        "alerts or dashboard panels use series that no running role exports:\n{}\nscraped:\n{:?}",
        detail.join("\n"),
        scraped.keys().collect::<Vec<_>>()
    );
    eprintln!("all {} series of the alerts and the dashboard are exported", usages.len());
}
