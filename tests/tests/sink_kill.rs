//! The sink process is killed with SIGKILL in the middle of a run (batches in flight,
//! offsets partly committed) and started again: the final HBase state is identical to the
//! model of the mutations, deletes and puts-after-deletes included.
//!
//! The sink process is this test executable run again with `CHATPIPE_SINK_TEST_CHILD=1`
//! and a filter selecting [`sink_child_process_entry_point`], which parses
//! `chatpipe_sink::Config` from the `CHATPIPE_*` environment exactly as `chatpipe sink`
//! does and calls `chatpipe_sink::run`. Unlike `target/debug/chatpipe`, it is always built
//! by the same `cargo test` invocation (never stale, never missing), and it needs no nested
//! `cargo build`, which would wait on the build-directory lock `cargo test` holds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chatpipe_common::kafka::{topics, TopicSpec};
use chatpipe_tests::sink_support::*;
use chatpipe_tests::{TestBroker, TestHbase};
use clap::Parser;

/// Set in the environment of the child process.
const CHILD_ENV: &str = "CHATPIPE_SINK_TEST_CHILD";

#[derive(Parser)]
struct ChildCli {
    #[command(flatten)]
    config: chatpipe_sink::Config,
}

/// Not a test of its own: the entry point of the sink process that
/// [`killed_sink_restarts_to_the_exact_state`] starts and kills. A no-op unless
/// `CHATPIPE_SINK_TEST_CHILD` is set.
#[test]
fn sink_child_process_entry_point() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    init_logs();
    let cli = ChildCli::try_parse_from(["chatpipe-sink"]).expect("sink flags from the CHATPIPE_* environment");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(chatpipe_sink::run(cli.config, chatpipe_common::shutdown::signal())).unwrap();
}

fn spawn_child(broker: &TestBroker, hbase: &TestHbase, group: &str, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "sink_child_process_entry_point", "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, "1")
        .env("CHATPIPE_KAFKA_BROKERS", broker.bootstrap())
        // a killed member must leave the group quickly for the restart to get its partitions
        .env("CHATPIPE_KAFKA_OPTIONS", "session.timeout.ms=6000\nheartbeat.interval.ms=1000")
        .env("CHATPIPE_HBASE_THRIFT", hbase.thrift())
        .env("CHATPIPE_SINK_GROUP_ID", group)
        .env("CHATPIPE_SINK_METRICS_LISTEN", "127.0.0.1:0")
        .env("CHATPIPE_SINK_BATCH_ROWS", "50")
        .env("CHATPIPE_SINK_FLUSH_INTERVAL", "20ms")
        .env("CHATPIPE_SINK_CREATE_TABLES", "true")
        .env("CHATPIPE_HBASE_CONNECTIONS", "4")
        .env("CHATPIPE_SINK_MAX_IN_FLIGHT", "4")
        .env("CHATPIPE_TEST_LOG", std::env::var("CHATPIPE_TEST_LOG").unwrap_or_else(|_| "info".into()))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_sink_restarts_to_the_exact_state() {
    init_logs();
    let broker = TestBroker::start();
    let hbase = TestHbase::start();
    let partitions = 6;
    broker.create_topics(&[TopicSpec::new(topics::ROWS, partitions), TopicSpec::new(topics::DLQ, 1)]).await;
    let ms = workload(20_000, 3);
    let placed = produce(&broker, topics::ROWS, &ms).await;
    let ends = ends(&placed, partitions);
    let total: i64 = ends.iter().sum();
    let group = "sink-kill";
    let offsets = Offsets::new(&broker, group, topics::ROWS, partitions);
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("sink.log");

    let mut child = spawn_child(&broker, &hbase, group, &log);
    let started = wait_for_progress(&offsets, &mut child, total / 4, &log).await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let at_kill: i64 = offsets.committed().iter().sum();
    eprintln!("killed with {at_kill} of {total} records committed");
    assert!(started >= total / 4 && at_kill < total, "killed mid-run: {at_kill} of {total} committed");

    let mut child = spawn_child(&broker, &hbase, group, &log);
    let caught_up =
        tokio::time::timeout(Duration::from_secs(120), offsets.wait_caught_up(&ends, Duration::from_secs(120)));
    let result = caught_up.await;
    let _ = child.kill();
    let _ = child.wait();
    if result.is_err() {
        panic!("restarted sink did not catch up; its log:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    }
    let expected_state = expected(&ms);
    let actual = scan_state(&hbase.thrift());
    assert!(actual == expected_state, "{}", diff(&expected_state, &actual));
}

/// Waits until at least `at_least` records are committed; returns how many are.
async fn wait_for_progress(offsets: &Offsets, child: &mut Child, at_least: i64, log: &Path) -> i64 {
    for _ in 0..1200 {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the sink exited with {status}; its log:\n{}", std::fs::read_to_string(log).unwrap_or_default());
        }
        let committed: i64 = offsets.committed().iter().sum();
        if committed >= at_least {
            return committed;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no progress in 60 s; the sink's log:\n{}", std::fs::read_to_string(log).unwrap_or_default());
}
