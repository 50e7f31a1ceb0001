//! Crashes of real processes while events flow, on tansu and the HBase emulator: every
//! output topic and every HBase table equal an oracle computed independently in the test.
//!
//! * Two processors and a sink, as `chatpipe` processes: a processor killed with SIGKILL
//!   twice within 3 s and the other once (each restarted at once), then the sink killed once, ≥ 20,000 events.
//!   On tansu 0.6 this is the case whose group could end with every member holding no
//!   partitions; the group watchdog (`chatpipe_common::group`) must get it going again.
//! * A processor killed and never replaced: the survivor takes over its partitions.
//! * A processor frozen (SIGSTOP) past its session, then resumed (SIGCONT).
//!
//! What these found, and what keeps them passing under load: a producer fenced by the broker
//! after a freeze is replaced (`delivery.rs`); a partition revoked or lost and assigned
//! again within one poll gets a fresh fetch (task ids, `poller.rs`); a task's input resumes
//! right after its restored state, not at the committed offset; a window's revision is its
//! message count, so a failover never leaves an older owner's smaller value on top.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use chatpipe_common::kafka::TopicSpec;
use chatpipe_sink::hbase::{HbaseClient, HbaseConfig};
use chatpipe_tests::chat::{oracle, scripted, Collector, OracleRules};
use chatpipe_tests::pipeline::{produce, wait_for_hbase};
use chatpipe_tests::roles::{processor_args, sink_args, RoleProcess};
use chatpipe_tests::{TestBroker, TestHbase};

const PARTITIONS: i32 = 4;
const OUTPUT_PARTITIONS: i32 = 2;

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// The roles' log directory; prints the end of every log when the test fails.
struct Logs(tempfile::TempDir);

impl Logs {
    fn new() -> Self {
        Logs(tempfile::tempdir().unwrap())
    }
    fn path(&self, role: &str) -> std::path::PathBuf {
        self.0.path().join(format!("{role}.log"))
    }
    /// Lines of every log containing `pattern`.
    fn count(&self, pattern: &str) -> usize {
        std::fs::read_dir(self.0.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| {
                std::fs::read_to_string(e.path()).unwrap_or_default().lines().filter(|l| l.contains(pattern)).count()
            })
            .sum()
    }
}

impl Drop for Logs {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        // the whole logs are kept for a post-mortem; the tails are printed
        let kept = std::env::temp_dir().join(format!("chatpipe-crash-logs-{}", now_ms()));
        if std::fs::create_dir_all(&kept).is_ok() {
            for entry in std::fs::read_dir(self.0.path()).into_iter().flatten().flatten() {
                let _ = std::fs::copy(entry.path(), kept.join(entry.file_name()));
            }
            eprintln!("---- the roles' logs are kept in {}", kept.display());
        }
        for entry in std::fs::read_dir(self.0.path()).into_iter().flatten().flatten() {
            let log = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("---- {} (last 60 lines) ----", entry.file_name().to_string_lossy());
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_killed_twice_within_3s_and_the_sink_once_outputs_and_hbase_equal_the_oracle() {
    let broker = TestBroker::start();
    broker.create_topics(&[TopicSpec::new("chat.events", PARTITIONS)]).await;
    let hbase = TestHbase::start();
    {
        let mut c = HbaseClient::connect(&HbaseConfig::new(hbase.thrift())).unwrap();
        chatpipe_sink::tables::create_all(&mut c).unwrap();
    }
    let rules = OracleRules::default();
    let w = scripted(PARTITIONS as usize, 5_000, now_ms(), &rules, 21);
    assert!(w.len() >= 20_000, "{} events", w.len());
    let expected = oracle(&w, &rules);
    let total_rows = expected.rows.len();
    let logs = Logs::new();
    let p_args = processor_args(
        &broker.bootstrap(),
        "p-crash-procs",
        PARTITIONS,
        OUTPUT_PARTITIONS,
        &rules,
        &logs.path("state"),
    );
    let mut a = RoleProcess::start(p_args.clone(), &logs.path("processor-a"));
    let mut b = RoleProcess::start(p_args, &logs.path("processor-b"));
    let mut sink = RoleProcess::start(
        sink_args(&broker.bootstrap(), &hbase.thrift(), "s-crash-procs", OUTPUT_PARTITIONS),
        &logs.path("sink"),
    );
    let collector = Collector::start(&broker);
    // about 20 s of input: 25 records per partition every 100 ms
    let producing = produce(&broker, &w, 25, Some(Duration::from_millis(100)));
    let faults = async {
        collector.wait_rows(total_rows / 5, Duration::from_secs(180)).await;
        // the same member twice (its first restart dies while joining), then the other one
        a.kill_and_restart();
        tokio::time::sleep(Duration::from_secs(2)).await;
        a.kill_and_restart();
        tokio::time::sleep(Duration::from_millis(500)).await;
        b.kill_and_restart();
        let (killed, rows) = (Instant::now(), collector.rows());
        collector.wait_rows(rows + total_rows / 10, Duration::from_secs(240)).await;
        eprintln!("processing went on {:?} after the last processor kill", killed.elapsed());
        sink.kill_and_restart();
    };
    tokio::join!(producing, faults);
    collector.wait_for(&expected, Duration::from_secs(300)).await;
    eprintln!("group rejoins by the watchdog: {}", logs.count("rejoining the group"));
    wait_for_hbase(&hbase.thrift(), &expected, Duration::from_secs(180)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_processor_that_never_comes_back_is_replaced_by_the_survivor() {
    let broker = TestBroker::start();
    broker.create_topics(&[TopicSpec::new("chat.events", PARTITIONS)]).await;
    let rules = OracleRules::default();
    let w = scripted(PARTITIONS as usize, 2_500, now_ms(), &rules, 22);
    let expected = oracle(&w, &rules);
    let logs = Logs::new();
    let p_args = processor_args(
        &broker.bootstrap(),
        "p-crash-survivor",
        PARTITIONS,
        OUTPUT_PARTITIONS,
        &rules,
        &logs.path("state"),
    );
    let _a = RoleProcess::start(p_args.clone(), &logs.path("processor-a"));
    let mut b = RoleProcess::start(p_args, &logs.path("processor-b"));
    let collector = Collector::start(&broker);
    let producing = produce(&broker, &w, 100, Some(Duration::from_millis(100)));
    let fault = async {
        collector.wait_rows(expected.rows.len() / 3, Duration::from_secs(180)).await;
        b.kill();
    };
    tokio::join!(producing, fault);
    collector.wait_for(&expected, Duration::from_secs(300)).await;
    eprintln!("input gaps fetched again: {}", logs.count("input skipped offsets"));
}

/// The zombie case: a processor frozen (SIGSTOP) past its session while events flow, the
/// other takes over; the first is resumed (SIGCONT) and left running a while — it must
/// neither roll the state back nor overwrite newer outputs — then the second is killed and
/// restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_processor_resumed_after_losing_its_partitions_changes_nothing() {
    let broker = TestBroker::start();
    broker.create_topics(&[TopicSpec::new("chat.events", PARTITIONS)]).await;
    let rules = OracleRules::default();
    let w = scripted(PARTITIONS as usize, 3_000, now_ms(), &rules, 23);
    let expected = oracle(&w, &rules);
    let total_rows = expected.rows.len();
    let logs = Logs::new();
    let p_args =
        processor_args(&broker.bootstrap(), "p-zombie", PARTITIONS, OUTPUT_PARTITIONS, &rules, &logs.path("state"));
    let a = RoleProcess::start(p_args.clone(), &logs.path("processor-a"));
    let mut b = RoleProcess::start(p_args, &logs.path("processor-b"));
    let collector = Collector::start(&broker);
    let producing = produce(&broker, &w, 20, Some(Duration::from_millis(100)));
    let faults = async {
        collector.wait_rows(total_rows / 5, Duration::from_secs(180)).await;
        a.signal("STOP");
        // past the 6 s session: b takes every partition and goes on
        let rows = collector.rows();
        collector.wait_rows(rows + total_rows / 10, Duration::from_secs(120)).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        a.signal("CONT");
        tokio::time::sleep(Duration::from_secs(8)).await;
        b.kill_and_restart();
    };
    tokio::join!(producing, faults);
    collector.wait_for(&expected, Duration::from_secs(300)).await;
    eprintln!(
        "writes held after the freeze: {}; partitions lost: {}; fenced tasks: {}",
        logs.count("the process was frozen"),
        logs.count("partitions lost"),
        logs.count("a newer owner fenced")
    );
}
