//! Fault cases tansu cannot simulate, against librdkafka's mock cluster: produce request
//! errors (retriable ones are retried transparently, permanent ones give a 503 naming each
//! failed event), and a broker that goes down and comes back (503 + not ready, then 202).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chatpipe_tests::eventually;
use chatpipe_tests::ingest_support;
use ingest_support::{batch, Ingest, TOPIC};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

fn cluster(partitions: i32) -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic(TOPIC, partitions, 1).unwrap();
    mock
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retriable_produce_errors_are_retried_and_the_request_succeeds() {
    let mock = cluster(2);
    let ingest = Ingest::start(&mock.bootstrap_servers(), |c| c.events_partitions = 2).await;
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        ],
    );
    let r = ingest.post_json(&batch(0, 20)).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(r.accepted_ids().len(), 20);
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_produce_error_gives_503_with_per_event_status() {
    let mock = cluster(1);
    let ingest = Ingest::start(&mock.bootstrap_servers(), |c| c.events_partitions = 1).await;
    mock.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE]);
    let r = ingest.post_json(&batch(0, 5)).await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.code(), "produce_failed");
    assert!(r.retry_after.is_some());
    let results = r.body["results"].as_array().unwrap();
    assert_eq!(results.len(), 5);
    for (i, e) in results.iter().enumerate() {
        assert_eq!(e["index"], i);
        assert_eq!(e["status"], "failed", "{e}");
        assert_eq!(e["code"], "rejected", "{e}");
        assert_eq!(e["retriable"], false, "{e}");
        assert!(e["message_id"].is_null());
    }
    // the next request, without injected errors, goes through
    let r = ingest.post_json(&batch(5, 5)).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let metrics = ingest.metrics().await;
    assert!(metrics.contains("chatpipe_ingest_events_total{outcome=\"failed\"} 5"), "{metrics}");
    assert!(metrics.contains("chatpipe_ingest_requests_total{route=\"/v1/events\",status=\"503\"} 1"), "{metrics}");
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_failure_reports_which_events_were_acknowledged() {
    // Two partitions: the events of some sessions land in the partition whose produce request
    // fails permanently, the others are acknowledged.
    let mock = cluster(2);
    let ingest = Ingest::start(&mock.bootstrap_servers(), |c| c.events_partitions = 2).await;
    mock.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE]);
    let r = ingest.post_json(&batch(0, 26)).await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    let results = r.body["results"].as_array().unwrap();
    let accepted = r.accepted_ids();
    let failed: Vec<_> = results.iter().filter(|e| e["status"] == "failed").collect();
    assert!(!accepted.is_empty() && !failed.is_empty(), "a mix: {results:?}");
    assert_eq!(accepted.len() + failed.len(), 26);
    // events of one session share a partition: a session's events all succeeded or all failed
    let posted = batch(0, 26);
    let session = |i: usize| posted[i]["session_id"].to_string().trim_matches('"').to_owned();
    for e in &failed {
        let i = e["index"].as_u64().unwrap() as usize;
        assert!(accepted.keys().all(|&a| session(a) != session(i)), "session {} split", session(i));
    }
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_gives_503_and_not_ready_until_it_is_back() {
    let mock = cluster(2);
    let ingest = Ingest::start(&mock.bootstrap_servers(), |c| {
        c.events_partitions = 2;
        c.produce_timeout = Duration::from_secs(2);
    })
    .await;
    assert_eq!(ingest.post_json(&batch(0, 10)).await.status, 202);
    mock.broker_down(1).unwrap();
    let r = ingest.post_json(&batch(10, 10)).await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert!(r.accepted_ids().is_empty(), "nothing acknowledged while the broker is down");
    assert_eq!(r.body["results"][0]["code"], "timeout");
    assert_eq!(r.retry_after.as_deref(), Some("1"));
    assert!(eventually(Duration::from_secs(10), async || ingest.readyz().await == 503).await, "/readyz flips");
    mock.broker_up(1).unwrap();
    assert!(eventually(Duration::from_secs(30), async || ingest.readyz().await == 200).await, "ready again");
    let mut status = 0;
    for round in 0..20 {
        status = ingest.post_json(&batch(100 + round * 10, 10)).await.status;
        if status == 202 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(status, 202, "requests succeed once the broker is back");
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_in_flight_slots_give_503_overloaded_with_retry_after() {
    let mock = cluster(1);
    // one slot, and a long linger holds it
    let ingest = Ingest::start(&mock.bootstrap_servers(), |c| {
        c.events_partitions = 1;
        c.max_inflight_requests = 1;
        c.linger = Duration::from_millis(1500);
    })
    .await;
    let first = batch(0, 1);
    let slow = ingest.post_json(&first);
    let fast = async {
        assert!(
            eventually(Duration::from_secs(10), async || ingest
                .metrics()
                .await
                .contains("chatpipe_ingest_inflight_requests 1"))
            .await
        );
        ingest.post_json(&batch(1, 1)).await
    };
    let (slow, fast) = tokio::join!(slow, fast);
    assert_eq!(slow.status, 202, "{:?}", slow.body);
    assert_eq!(fast.status, 503, "{:?}", fast.body);
    assert_eq!(fast.code(), "overloaded");
    assert_eq!(fast.retry_after.as_deref(), Some("1"));
    ingest.stop().await;
}
