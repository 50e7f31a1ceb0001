//! Against tansu: events posted to ingest (one object, a JSON array, NDJSON) come back from
//! `chat.events` decoded to exactly what was posted plus the ids ingest assigned and
//! returned; ids are unique; shutdown drains in-flight requests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use chatpipe_common::event::{self, ChatEvent};
use chatpipe_tests::ingest_support;
use chatpipe_tests::{now_ms, TestBroker};
use ingest_support::{batch, event, read_topic, Ingest, TOPIC};
use serde_json::{json, Value};

/// Checks that `got` is `posted` stamped with `message_id` and an `ingested_at` in
/// `[from, to]`, with `sent_at` as sent or clamped.
fn assert_stamped(posted: &Value, got: &ChatEvent, message_id: u64, from: i64, to: i64) {
    let input = event::parse_event(posted.to_string().as_bytes()).unwrap();
    assert_eq!(got.message_id, message_id, "the id the response returned");
    assert!((from..=to).contains(&got.ingested_at_ms), "ingested_at {} not in [{from}, {to}]", got.ingested_at_ms);
    let expected = ChatEvent::from_input(input, message_id, got.ingested_at_ms, 60_000);
    assert_eq!(got, &expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_events_appear_on_the_topic_exactly_as_posted_with_their_ids() {
    let broker = TestBroker::start();
    let ingest = Ingest::start(&broker.bootstrap(), |_| {}).await;
    let from = now_ms();

    // One object, with a sent_at far in the future (clamped) ...
    let mut future_event = event(0);
    future_event["sent_at"] = json!(from + 3_600_000);
    let single = ingest.post_json(&future_event).await;
    assert_eq!(single.status, 202, "{:?}", single.body);
    assert_eq!(single.content_type.as_deref(), Some("application/json"));
    assert_eq!(single.body["results"][0]["status"], "accepted");

    // ... a JSON array ...
    let array = batch(1, 100);
    let arr = ingest.post_json(&array).await;
    assert_eq!(arr.status, 202, "{:?}", arr.body);

    // ... and NDJSON (with a blank line and CRLF endings).
    let nd: Vec<Value> = (101..151).map(event).collect();
    let mut body = String::new();
    for (i, v) in nd.iter().enumerate() {
        body.push_str(&v.to_string());
        body.push_str(if i % 2 == 0 { "\r\n" } else { "\n" });
        if i == 10 {
            body.push('\n');
        }
    }
    let ndr = ingest.post(body, Some("application/x-ndjson"), None).await;
    assert_eq!(ndr.status, 202, "{:?}", ndr.body);
    let to = now_ms();

    // Every event has an id, in order of the request, all distinct.
    let mut posted: BTreeMap<u64, Value> = BTreeMap::new();
    for (reply, events) in
        [(&single, vec![future_event.clone()]), (&arr, array.as_array().unwrap().clone()), (&ndr, nd)]
    {
        let ids = reply.accepted_ids();
        assert_eq!(ids.len(), events.len());
        assert_eq!(ids.keys().copied().collect::<Vec<_>>(), (0..events.len()).collect::<Vec<_>>());
        for (i, ev) in events.into_iter().enumerate() {
            assert!(posted.insert(ids[&i], ev).is_none(), "duplicate message_id");
        }
    }
    assert_eq!(posted.len(), 151);

    let records = read_topic(&broker.bootstrap(), TOPIC, 151, Duration::from_secs(30));
    let mut seen = HashSet::new();
    for (key, got) in &records {
        assert_eq!(key, &got.session_id.to_string(), "keyed by session id (decimal)");
        let sent = posted.get(&got.message_id).expect("a record whose id was returned");
        assert_stamped(sent, got, got.message_id, from, to);
        assert!(seen.insert(got.message_id), "record written twice");
    }
    assert_eq!(seen.len(), 151);
    let clamped = records.iter().find(|(_, e)| e.client_msg_id.as_deref() == Some("c-0")).unwrap();
    assert_eq!(clamped.1.sent_at_ms, clamped.1.ingested_at_ms, "sent_at an hour ahead is clamped");
    let past = records.iter().find(|(_, e)| e.client_msg_id.as_deref() == Some("c-5")).unwrap();
    assert_eq!(past.1.sent_at_ms, 1_000_000_000_000, "past sent_at kept as sent");

    // Events of one session keep request order within their partition.
    let mut last: BTreeMap<u64, u64> = BTreeMap::new();
    for (_, e) in &records {
        if let Some(prev) = last.insert(e.session_id, e.message_id) {
            assert!(prev < e.message_id, "session {} out of order", e.session_id);
        }
    }
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_get_unique_ids_and_an_authorization_header_is_ignored_without_auth() {
    let broker = TestBroker::start();
    let ingest = Ingest::start(&broker.bootstrap(), |_| {}).await;
    let replies = futures::future::join_all((0..20u64).map(|r| {
        let body = batch(r * 50, 50).to_string();
        let key = (r % 2 == 0).then_some("whatever-the-dev-client-sends");
        let ingest = &ingest;
        async move { ingest.post(body, Some("application/json; charset=utf-8"), key).await }
    }))
    .await;
    let mut ids = HashSet::new();
    for r in &replies {
        assert_eq!(r.status, 202, "{:?}", r.body);
        for id in r.accepted_ids().into_values() {
            assert!(ids.insert(id), "duplicate id {id}");
        }
    }
    assert_eq!(ids.len(), 1000);
    let records = read_topic(&broker.bootstrap(), TOPIC, 1000, Duration::from_secs(30));
    let on_topic: HashSet<u64> = records.iter().map(|(_, e)| e.message_id).collect();
    assert_eq!(on_topic, ids);

    let metrics = ingest.metrics().await;
    for name in [
        "chatpipe_ingest_requests_total{route=\"/v1/events\",status=\"202\"} 20",
        "chatpipe_ingest_events_total{outcome=\"accepted\"} 1000",
        "chatpipe_ingest_request_duration_seconds_bucket",
        "chatpipe_ingest_produce_latency_seconds_bucket",
        "chatpipe_ingest_inflight_requests 0",
    ] {
        assert!(metrics.contains(name), "missing {name} in\n{metrics}");
    }
    assert!(!metrics.contains("1000\"") && !metrics.contains("session"), "no ids in labels");
    assert_eq!(ingest.readyz().await, 200);
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_requests_and_flushes() {
    let broker = TestBroker::start();
    // A long linger keeps requests waiting for their acknowledgement when shutdown starts.
    let ingest = Ingest::start(&broker.bootstrap(), |c| c.linger = Duration::from_millis(1500)).await;
    let url = ingest.url();
    let client = ingest.client.clone();
    let requests: Vec<_> = (0..5u64)
        .map(|r| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                ingest_support::post_to(&client, &url, batch(r * 10, 10).to_string(), Some("application/json"), None)
                    .await
            })
        })
        .collect();
    let inflight_all = chatpipe_tests::eventually(Duration::from_secs(10), async || {
        ingest.metrics().await.contains("chatpipe_ingest_inflight_requests 5")
    })
    .await;
    assert!(inflight_all, "five requests in flight");
    ingest.stop().await;
    let mut ids = HashSet::new();
    for r in requests {
        let reply = r.await.unwrap();
        assert_eq!(reply.status, 202, "an in-flight request completes during shutdown: {:?}", reply.body);
        ids.extend(reply.accepted_ids().into_values());
    }
    assert_eq!(ids.len(), 50);
    let records = read_topic(&broker.bootstrap(), TOPIC, 50, Duration::from_secs(30));
    assert_eq!(records.iter().map(|(_, e)| e.message_id).collect::<HashSet<_>>(), ids);
}
