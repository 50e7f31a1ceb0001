//! The processor end to end on tansu: a scripted workload's `chat.rows`, aggregate topics,
//! `chat.unread` and DLQ equal an oracle computed independently in the test — also after
//! the processor is killed at several points (in-process abort and SIGKILL of the process)
//! after a rebalance between two instances, and with partition queues so small that the
//! poller pauses and resumes partitions all the time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatpipe_common::envelope;
use chatpipe_common::event::MessageKind;
use chatpipe_common::http::Telemetry;
use chatpipe_common::kafka::{parse_kafka_option, TopicSpec};
use chatpipe_processor::Config;
use chatpipe_tests::chat::{oracle, scripted, Collector, Input, OracleRules, Outputs, Workload};
use chatpipe_tests::{chatpipe_binary, TestBroker};
use rdkafka::producer::{FutureProducer, FutureRecord};

const PARTITIONS: usize = 4;

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn kafka_test_options() -> Vec<(&'static str, &'static str)> {
    vec![("session.timeout.ms", "6000"), ("heartbeat.interval.ms", "500")]
}

fn config(broker: &TestBroker, rules: &OracleRules, group: &str) -> Config {
    let mut c = Config::for_brokers(&broker.bootstrap());
    for (k, v) in kafka_test_options() {
        c.kafka.options.push(parse_kafka_option(&format!("{k}={v}")).unwrap());
    }
    c.group_id = group.to_owned();
    c.events_partitions = PARTITIONS as i32;
    c.output_partitions = 2;
    c.blocked_senders = vec![rules.blocked_sender];
    c.allowed_kinds = MessageKind::ALL.iter().copied().filter(|k| *k != rules.disallowed_kind).collect();
    c.max_body_bytes = rules.max_body_bytes;
    c.compress_min_bytes = rules.compress_min_bytes;
    c.fanout_max_members = rules.fanout_max_members;
    c.window = Duration::from_millis(rules.window_ms as u64);
    c.grace = Duration::from_secs(5);
    c.correction_horizon = Duration::from_millis(rules.correction_horizon_ms as u64);
    c.idle_timeout = Duration::from_secs(1);
    c.drain_timeout = Duration::from_secs(5);
    c.metrics_listen = "127.0.0.1:0".parse().unwrap();
    c
}

/// The same configuration as command-line flags, for the process variant.
fn config_args(c: &Config, rules: &OracleRules) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "process".into(),
        "--kafka-brokers".into(),
        c.kafka.brokers.clone(),
        "--group-id".into(),
        c.group_id.clone(),
        "--events-partitions".into(),
        c.events_partitions.to_string(),
        "--output-partitions".into(),
        c.output_partitions.to_string(),
        "--blocked-senders".into(),
        rules.blocked_sender.to_string(),
        "--allowed-kinds".into(),
        c.allowed_kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(","),
        "--max-body-bytes".into(),
        c.max_body_bytes.to_string(),
        "--compress-min-bytes".into(),
        c.compress_min_bytes.to_string(),
        "--fanout-max-members".into(),
        c.fanout_max_members.to_string(),
        "--window".into(),
        format!("{}ms", rules.window_ms),
        "--grace".into(),
        "5s".into(),
        "--correction-horizon".into(),
        format!("{}ms", rules.correction_horizon_ms),
        "--idle-timeout".into(),
        "1s".into(),
        "--metrics-listen".into(),
        "127.0.0.1:0".into(),
        "--log-format".into(),
        "text".into(),
    ];
    for (k, v) in kafka_test_options() {
        a.push("--kafka-option".into());
        a.push(format!("{k}={v}"));
    }
    a
}

async fn produce(broker: &TestBroker, w: &Workload) {
    let producer: FutureProducer = broker.kafka_args().producer_config("test", 5).create().unwrap();
    let mut all = Vec::new();
    for (p, events) in w.partitions.iter().enumerate() {
        let producer = producer.clone();
        let events = events.clone();
        all.push(async move {
            for chunk in events.chunks(500) {
                let sends: Vec<_> = chunk
                    .iter()
                    .map(|input| {
                        let (key, value) = match input {
                            Input::Event(e) => (e.session_id.to_string(), envelope::encode(e).unwrap()),
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
                                .unwrap();
                        }
                    })
                    .collect();
                // sends of one partition are enqueued in order; the idempotent producer keeps it
                futures::future::join_all(sends).await;
            }
        });
    }
    futures::future::join_all(all).await;
}

async fn setup(broker: &TestBroker) {
    broker.create_topics(&[TopicSpec::new("chat.events", PARTITIONS as i32)]).await;
}

fn assert_covers_every_case(expected: &Outputs) {
    let reasons: BTreeSet<&str> = expected.dlq.keys().map(String::as_str).collect();
    assert_eq!(
        reasons,
        ["body_too_large", "forbidden", "late", "undecodable", "unknown_target"].into(),
        "the workload must exercise every DLQ reason"
    );
    let tables: BTreeSet<&str> = expected.rows.keys().map(|(t, _)| t.as_str()).collect();
    assert_eq!(tables.len(), chatpipe_common::rows::tables::ALL.len(), "every table gets rows: {tables:?}");
    assert!(expected.unread.values().any(Option::is_none), "some member left");
    assert!(
        expected.rows.values().any(|r| r.contains_key("m:edited"))
            && expected.rows.values().any(|r| r.contains_key("m:recalled"))
    );
    assert!(expected.rows.values().any(|r| r.get("m:enc").is_some_and(|v| v == b"lz4")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_workload_outputs_equal_the_oracle() {
    let broker = TestBroker::start();
    setup(&broker).await;
    let rules = OracleRules::default();
    let w = scripted(PARTITIONS, 600, now_ms(), &rules, 1);
    let expected = oracle(&w, &rules);
    assert_covers_every_case(&expected);
    let handle = chatpipe_processor::start(config(&broker, &rules, "p-scripted"), Telemetry::new()).await.unwrap();
    let collector = Collector::start(&broker);
    produce(&broker, &w).await;
    collector.wait_for(&expected, Duration::from_secs(120)).await;
    handle.shutdown().await.unwrap();
}

/// Partition queues of four records: the poller pauses a partition on almost every record
/// and resumes it at the exact next offset once its task has taken the parked one. Nothing
/// may be lost, duplicated or reordered by that (outputs equal the oracle).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_partition_queues_pause_and_resume_without_losing_a_record() {
    let _ = chatpipe_common::telemetry::init(
        &chatpipe_common::telemetry::LogArgs {
            log_format: Some(chatpipe_common::telemetry::LogFormat::Text),
            log_level: std::env::var("CHATPIPE_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        },
        chatpipe_common::telemetry::LogFormat::Text,
    );
    let broker = TestBroker::start();
    setup(&broker).await;
    let rules = OracleRules::default();
    let w = scripted(PARTITIONS, 200, now_ms(), &rules, 3);
    let expected = oracle(&w, &rules);
    let mut c = config(&broker, &rules, "p-paused");
    c.partition_queue = 4;
    let telemetry = Telemetry::new();
    let handle = chatpipe_processor::start(c, telemetry.clone()).await.unwrap();
    let collector = Collector::start(&broker);
    let sampling = Arc::new(AtomicBool::new(true));
    let paused_seen = {
        let (t, sampling) = (telemetry.clone(), sampling.clone());
        tokio::spawn(async move {
            let mut most = 0;
            while sampling.load(Ordering::SeqCst) {
                most = most.max(gauge(&t, chatpipe_processor::metrics::PAUSED));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            most
        })
    };
    produce(&broker, &w).await;
    collector.wait_for(&expected, Duration::from_secs(180)).await;
    sampling.store(false, Ordering::SeqCst);
    assert!(paused_seen.await.unwrap() > 0, "no partition was ever paused: the test did not exercise the path");
    handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_three_times_mid_run_outputs_still_equal_the_oracle() {
    let broker = TestBroker::start();
    setup(&broker).await;
    let rules = OracleRules::default();
    let w = scripted(PARTITIONS, 12_500, now_ms(), &rules, 2);
    assert!(w.len() >= 50_000);
    let expected = oracle(&w, &rules);
    let total_rows = expected.rows.len();
    let cfg = config(&broker, &rules, "p-crash");
    let first = chatpipe_processor::start(cfg.clone(), Telemetry::new()).await.unwrap();
    let collector = Collector::start(&broker);
    let produce_all = produce(&broker, &w);
    let crashes = async {
        // 1: abort in-process without draining
        collector.wait_rows(total_rows / 8, Duration::from_secs(120)).await;
        tokio::task::block_in_place(|| first.kill());
        // 2: again, at a later point
        let second = chatpipe_processor::start(cfg.clone(), Telemetry::new()).await.unwrap();
        collector.wait_rows(total_rows * 3 / 8, Duration::from_secs(180)).await;
        tokio::task::block_in_place(|| second.kill());
        // 3: a separate OS process, killed with SIGKILL
        let mut child = KillOnDrop(
            std::process::Command::new(chatpipe_binary().unwrap())
                .args(config_args(&cfg, &rules))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        collector.wait_rows(total_rows * 5 / 8, Duration::from_secs(180)).await;
        child.0.kill().unwrap(); // SIGKILL
        child.0.wait().unwrap();
    };
    tokio::join!(produce_all, crashes);
    let last = chatpipe_processor::start(cfg, Telemetry::new()).await.unwrap();
    collector.wait_for(&expected, Duration::from_secs(240)).await;
    last.shutdown().await.unwrap();
}

/// A child process that is SIGKILLed when the test ends, even when it fails early.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn gauge(t: &Telemetry, name: &str) -> i64 {
    t.registry
        .gather()
        .iter()
        .find(|f| f.name() == name)
        .map(|f| f.get_metric()[0].get_gauge().get_value() as i64)
        .unwrap_or(0)
}

fn assigned(t: &Telemetry) -> i64 {
    gauge(t, chatpipe_processor::metrics::ASSIGNED)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_to_the_surviving_instance_keeps_outputs_exact() {
    let broker = TestBroker::start();
    setup(&broker).await;
    let rules = OracleRules::default();
    let w = scripted(PARTITIONS, 2_000, now_ms(), &rules, 3);
    let expected = oracle(&w, &rules);
    let cfg = config(&broker, &rules, "p-rebalance");
    let (ta, tb) = (Telemetry::new(), Telemetry::new());
    let a = chatpipe_processor::start(cfg.clone(), ta.clone()).await.unwrap();
    let b = chatpipe_processor::start(cfg, tb.clone()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(assigned(&ta) > 0 && assigned(&tb) > 0 && assigned(&ta) + assigned(&tb) == PARTITIONS as i64) {
        assert!(Instant::now() < deadline, "the two instances never shared the partitions");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let collector = Collector::start(&broker);
    produce(&broker, &w).await;
    collector.wait_rows(expected.rows.len() / 3, Duration::from_secs(120)).await;
    b.shutdown().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while assigned(&ta) != PARTITIONS as i64 {
        assert!(Instant::now() < deadline, "the survivor did not take over every partition");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    collector.wait_for(&expected, Duration::from_secs(120)).await;
    a.shutdown().await.unwrap();
}
