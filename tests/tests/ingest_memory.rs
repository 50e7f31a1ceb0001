//! Against tansu: hostile bodies cannot make ingest's memory grow with what they hold.
//!
//! 16 concurrent 1 MiB bodies at a time, three rounds — JSON arrays of `{}` (~350k items),
//! NDJSON of `{}` lines, JSON arrays of numbers (~500k items), and arrays of up to
//! `--max-batch` events each carrying an over-long `mentions` array (the most the parser
//! builds for a body it may read) — are all refused with a 400 JSON error, nothing reaches
//! `chat.events`, and the peak RSS of this process (ingest runs in it) grows by less than
//! [`MAX_GROWTH_MB`]. The measured peak is printed (`--nocapture`). Its own binary, so no
//! other test's allocations share the process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chatpipe_tests::ingest_support;
use chatpipe_tests::TestBroker;
use ingest_support::{event, read_topic_all, Ingest, TOPIC};

/// A generous bound on the growth of peak RSS: 16 buffered 1 MiB bodies, the parser's
/// working set on each worker thread, and the allocator's slack. Before bodies were counted
/// ahead of parsing, one `[{},{},…]` body alone took 100–250 MB.
const MAX_GROWTH_MB: u64 = 200;
const BODY: usize = 1024 * 1024;
const CONCURRENT: usize = 16;
const ROUNDS: usize = 3;

/// A field of `/proc/self/status` in kB (`VmRSS`, `VmHWM`).
fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("{field} in /proc/self/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// `item` repeated (separated by `sep`, inside `open`/`close`) to just under `BODY` bytes.
fn fill(open: &str, item: &str, sep: &str, close: &str) -> Vec<u8> {
    let n = (BODY - open.len() - close.len()) / (item.len() + sep.len());
    let mut s = String::with_capacity(BODY);
    s.push_str(open);
    for i in 0..n {
        if i > 0 {
            s.push_str(sep);
        }
        s.push_str(item);
    }
    s.push_str(close);
    assert!(s.len() <= BODY);
    s.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_are_refused_before_they_are_built_and_memory_stays_bounded() {
    let broker = TestBroker::start();
    let ingest = Ingest::start(&broker.bootstrap(), |c| {
        c.rate_limit_per_second = 0;
        c.rate_limit_events_per_second = 0;
    })
    .await;
    let max_batch = chatpipe_ingest::DEFAULT_MAX_BATCH;
    let mentions = format!("{{\"message\":{{\"mentions\":[{}1]}}}}", "1,".repeat(1100));
    let mentions_items = (BODY / (mentions.len() + 1)).min(max_batch);
    // Leaked, so each request sends the same bytes without a copy in this process.
    let leak = |v: Vec<u8>| -> &'static [u8] { v.leak() };
    let bodies: Vec<(&str, &str, &'static [u8], &str)> = vec![
        ("json {}", "application/json", leak(fill("[", "{}", ",", "]")), "too_many"),
        ("ndjson {}", "application/x-ndjson", leak(fill("", "{}", "\n", "\n")), "too_many"),
        ("json numbers", "application/json", leak(fill("[", "1", ",", "]")), "too_many"),
        (
            "json mentions",
            "application/json",
            leak(format!("[{}]", vec![mentions.as_str(); mentions_items].join(",")).into_bytes()),
            "missing",
        ),
    ];

    // Warm up: a valid request and one of each hostile body, so the allocator, the
    // producer and the connection pool hold what they keep anyway.
    assert_eq!(ingest.post_json(&event(1)).await.status, 202);
    for (name, ct, body, _) in &bodies {
        let r = ingest.post(*body, Some(ct), None).await;
        assert_eq!(r.status, 400, "{name}: {:?}", r.body);
    }
    let baseline_kb = status_kb("VmRSS:");
    // Reset the high-water mark (Linux ≥ 4.0); a sampler covers kernels that refuse it.
    let hwm_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let sampled_kb = Arc::new(AtomicU64::new(baseline_kb));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (sampled_kb, stop) = (sampled_kb.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                sampled_kb.fetch_max(status_kb("VmRSS:"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };

    for round in 0..ROUNDS {
        let requests = (0..CONCURRENT).map(|i| {
            let (name, ct, body, code) = &bodies[i % bodies.len()];
            let ingest = &ingest;
            async move { (*name, *code, ingest.post(*body, Some(ct), None).await) }
        });
        for (name, code, r) in futures::future::join_all(requests).await {
            assert_eq!(r.status, 400, "round {round}, {name}: {:?}", r.body);
            assert_eq!(r.code(), "invalid_events", "{name}");
            let errors = r.errors();
            assert!(errors.iter().any(|e| e.2 == code), "{name}: expected {code} in {errors:?}");
        }
    }

    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak_kb = if hwm_reset { status_kb("VmHWM:") } else { 0 }.max(sampled_kb.load(Ordering::Relaxed));
    let growth_mb = peak_kb.saturating_sub(baseline_kb) / 1024;
    println!(
        "ingest memory: baseline RSS {} MB, peak {} MB, growth {growth_mb} MB under {ROUNDS} rounds of \
         {CONCURRENT} concurrent 1 MiB hostile bodies (high-water mark reset: {hwm_reset})",
        baseline_kb / 1024,
        peak_kb / 1024
    );
    assert!(growth_mb < MAX_GROWTH_MB, "peak RSS grew by {growth_mb} MB (bound {MAX_GROWTH_MB} MB)");

    // Nothing of the refused requests reached Kafka (the warm-up event did), the refusals
    // are counted, and ingest still serves.
    let quiet = Duration::from_secs(2);
    assert_eq!(read_topic_all(&broker.bootstrap(), TOPIC, 1, quiet).len(), 1);
    let metrics = ingest.metrics().await;
    let refused = (ROUNDS * CONCURRENT + bodies.len()) * 3 / 4;
    let line = format!("chatpipe_ingest_events_rejected_total{{reason=\"too_many\"}} {refused}");
    assert!(metrics.contains(&line), "missing {line} in\n{metrics}");
    assert!(metrics.contains("chatpipe_ingest_buffered_body_bytes 0"), "every body released:\n{metrics}");
    assert_eq!(ingest.post_json(&event(2)).await.status, 202);
    assert_eq!(read_topic_all(&broker.bootstrap(), TOPIC, 2, quiet).len(), 2);
    ingest.stop().await;
}
