//! Against tansu (SQLite storage, so acknowledged events and the topic survive): the broker
//! is killed mid-run. Requests then get 503 with per-event statuses and `Retry-After`, never
//! a 2xx for events Kafka did not acknowledge; `/readyz` turns not ready; after the broker
//! restarts, readiness returns and requests succeed again. Every event that got a 202 is on
//! the topic afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::Duration;

use chatpipe_tests::ingest_support;
use chatpipe_tests::{eventually, Storage, TestBroker};
use ingest_support::{batch, read_topic, Ingest, TOPIC};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_gives_503_and_not_ready_then_recovers() {
    let mut broker = TestBroker::start_with(Storage::Sqlite);
    let ingest = Ingest::start(&broker.bootstrap(), |c| {
        c.produce_timeout = Duration::from_secs(2);
    })
    .await;
    let mut acknowledged: HashSet<u64> = HashSet::new();

    let r = ingest.post_json(&batch(0, 20)).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    acknowledged.extend(r.accepted_ids().into_values());
    assert_eq!(ingest.readyz().await, 200);

    broker.stop();
    // While the broker is down: never a 2xx, always a per-event account.
    let mut saw_503 = 0;
    for round in 0..3u64 {
        let r = ingest.post_json(&batch(100 + round * 10, 10)).await;
        assert_eq!(r.status, 503, "no 2xx while the broker is down: {:?}", r.body);
        assert_eq!(r.code(), "produce_failed");
        assert!(r.retry_after.is_some(), "Retry-After on 503");
        let results = r.body["results"].as_array().unwrap();
        assert_eq!(results.len(), 10);
        for (i, e) in results.iter().enumerate() {
            assert_eq!(e["index"], i);
            assert_eq!(e["status"], "failed", "{e}");
            assert!(e["message_id"].is_null(), "no id for an unacknowledged event");
            assert_eq!(e["retriable"], true);
        }
        saw_503 += 1;
    }
    assert_eq!(saw_503, 3);
    assert!(eventually(Duration::from_secs(15), async || ingest.readyz().await == 503).await, "/readyz flips");
    assert!(!ingest.handle.is_ready());

    broker.restart();
    assert!(eventually(Duration::from_secs(45), async || ingest.readyz().await == 200).await, "ready again");
    // Requests succeed again (the first may still race the producer's reconnection).
    let mut ok = false;
    for round in 0..20u64 {
        let r = ingest.post_json(&batch(1_000 + round * 10, 10)).await;
        match r.status {
            202 => {
                acknowledged.extend(r.accepted_ids().into_values());
                ok = true;
                break;
            }
            503 => {
                eprintln!("503 while the producer reconnects: {}", r.body);
                // events acknowledged in a partial 503 are acknowledged too
                acknowledged.extend(r.accepted_ids().into_values());
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            s => panic!("unexpected status {s}: {:?}", r.body),
        }
    }
    if !ok {
        let l = broker.log();
        eprintln!("tansu log:\n{}", &l[l.len().saturating_sub(5000)..]);
    }
    assert!(ok, "requests succeed after the broker is back");
    let r = ingest.post_json(&batch(2_000, 10)).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    acknowledged.extend(r.accepted_ids().into_values());

    // Everything acknowledged is on the topic (failed events may or may not be).
    let count = ingest_support::topic_count(&broker.bootstrap(), TOPIC) as usize;
    let records = read_topic(&broker.bootstrap(), TOPIC, count, Duration::from_secs(30));
    let on_topic: HashSet<u64> = records.iter().map(|(_, e)| e.message_id).collect();
    let missing: Vec<_> = acknowledged.difference(&on_topic).collect();
    assert!(missing.is_empty(), "acknowledged but not on the topic: {missing:?}");
    let metrics = ingest.metrics().await;
    assert!(metrics.contains("chatpipe_ingest_events_total{outcome=\"failed\"} 30"), "{metrics}");
    ingest.stop().await;
}
