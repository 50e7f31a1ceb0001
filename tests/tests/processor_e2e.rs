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

use chatpipe_common::event::MessageKind;
use chatpipe_common::http::Telemetry;
use chatpipe_common::kafka::{parse_kafka_option, TopicSpec};
use chatpipe_processor::Config;
use chatpipe_tests::chat::{oracle, scripted, Collector, OracleRules, Outputs, Workload};
use chatpipe_tests::roles::{processor_args, RoleProcess};
use chatpipe_tests::{now_ms, TestBroker};

const PARTITIONS: usize = 4;

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
    c.state_dir = std::env::temp_dir().join(format!("chatpipe-test-state-{group}-{}", std::process::id()));
    c
}

async fn produce(broker: &TestBroker, w: &Workload) {
    chatpipe_tests::pipeline::produce(broker, w, 500, None).await;
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
        let state = tempfile::tempdir().unwrap();
        let log = state.path().join("processor.log");
        let mut child = RoleProcess::start(
            processor_args(
                &broker.bootstrap(),
                &cfg.group_id,
                PARTITIONS as i32,
                cfg.output_partitions,
                &rules,
                state.path(),
            ),
            &log,
        );
        collector.wait_rows(total_rows * 5 / 8, Duration::from_secs(180)).await;
        child.kill(); // SIGKILL
    };
    tokio::join!(produce_all, crashes);
    let last = chatpipe_processor::start(cfg, Telemetry::new()).await.unwrap();
    collector.wait_for(&expected, Duration::from_secs(240)).await;
    last.shutdown().await.unwrap();
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

fn restore_records(t: &Telemetry) -> u64 {
    t.registry
        .gather()
        .iter()
        .find(|f| f.name() == chatpipe_processor::metrics::RESTORE_RECORDS)
        .and_then(|f| {
            f.get_metric()
                .iter()
                .find(|m| m.get_label().iter().any(|l| l.value() == "read"))
                .map(|m| m.get_counter().get_value() as u64)
        })
        .unwrap_or(0)
}

/// A restart with the local checkpoints reads only the changelog written after them; a new
/// instance without them reads the whole changelog; both end with outputs equal to the
/// oracle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_reads_only_the_changelog_after_its_checkpoint() {
    let broker = TestBroker::start();
    setup(&broker).await;
    let rules = OracleRules::default();
    let w = scripted(PARTITIONS, 2_500, now_ms(), &rules, 4);
    let expected = oracle(&w, &rules);
    let cfg = config(&broker, &rules, "p-checkpoint");
    let t1 = Telemetry::new();
    let first = chatpipe_processor::start(cfg.clone(), t1.clone()).await.unwrap();
    let collector = Collector::start(&broker);
    produce(&broker, &w).await;
    collector.wait_for(&expected, Duration::from_secs(180)).await;
    first.shutdown().await.unwrap(); // checkpoints every partition it releases
    let whole = restore_records(&t1);

    let t2 = Telemetry::new();
    let second = chatpipe_processor::start(cfg.clone(), t2.clone()).await.unwrap();
    wait_assigned(&t2, PARTITIONS as i64).await;
    // the checkpoints' tail: nothing but this instance's own fences (one per partition)
    let deadline = Instant::now() + Duration::from_secs(60);
    while restore_records(&t2) < PARTITIONS as u64 {
        assert!(Instant::now() < deadline, "the restart restored nothing");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        restore_records(&t2) <= 2 * PARTITIONS as u64,
        "the restart read {} changelog records",
        restore_records(&t2)
    );
    second.shutdown().await.unwrap();

    // a new instance without the checkpoints reads the whole changelog (~1.4 records per
    // event: far more than the restart's handful)
    let mut fresh = cfg.clone();
    fresh.state_dir = fresh.state_dir.join("elsewhere");
    let t3 = Telemetry::new();
    let third = chatpipe_processor::start(fresh, t3.clone()).await.unwrap();
    wait_assigned(&t3, PARTITIONS as i64).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while restore_records(&t3) < 5_000 {
        assert!(Instant::now() < deadline, "a new instance read only {} records", restore_records(&t3));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "changelog records read: first start {whole}, restart {}, new instance {}",
        restore_records(&t2),
        restore_records(&t3)
    );
    // neither restore changed an output
    tokio::time::sleep(Duration::from_secs(3)).await;
    collector.wait_for(&expected, Duration::from_secs(30)).await;
    third.shutdown().await.unwrap();
}

async fn wait_assigned(t: &Telemetry, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while assigned(t) != n {
        assert!(Instant::now() < deadline, "not every partition was assigned");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
