//! Property test of the request parser and validator through the real HTTP handler (with
//! librdkafka's mock cluster behind it): arbitrary bodies — random bytes, JSON-like text,
//! valid events with one field replaced by an arbitrary JSON value, NDJSON of those — never
//! panic the server and never yield a 5xx; the answer is 202 with one result per event or a
//! 4xx with a JSON error list.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ingest_support;

use std::sync::atomic::{AtomicUsize, Ordering};

use chatpipe_common::event::EVENT_FIELDS;
use ingest_support::{event, Ingest, TOPIC};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use rdkafka::mocking::MockCluster;
use serde_json::Value;

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        prop_oneof![
            Just("18446744073709551615".to_owned()),
            Just("18446744073709551616".to_owned()),
            Just("-1".to_owned()),
            Just("2026-03-01T10:00:00Z".to_owned()),
            Just("message".to_owned()),
            Just("direct".to_owned()),
            Just("text".to_owned()),
            ".{0,80}",
            "[0-9]{1,30}",
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    prop::sample::select(vec!["kind", "body", "mentions"]).prop_map(str::to_owned),
                    "[a-z]{1,6}"
                ],
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid event with one field (or `message.*` field) replaced or removed.
fn arb_mutated_event() -> impl Strategy<Value = Value> {
    (
        0u64..60,
        prop::sample::select(EVENT_FIELDS.iter().copied().chain(["extra"]).collect::<Vec<_>>()),
        prop::option::of(arb_json()),
        any::<bool>(),
    )
        .prop_map(|(i, field, value, nested)| {
            let mut ev = event(i);
            let target = if nested && ev.get("message").is_some() { &mut ev["message"] } else { &mut ev };
            let obj = target.as_object_mut().unwrap();
            let key = if nested { ["kind", "body", "mentions"][(i % 3) as usize] } else { field };
            match value {
                Some(v) => {
                    obj.insert(key.to_owned(), v);
                }
                None => {
                    obj.remove(key);
                }
            }
            ev
        })
}

#[derive(Debug, Clone)]
enum Body {
    Bytes(Vec<u8>, &'static str),
    Text(String, &'static str),
}

fn arb_body() -> impl Strategy<Value = Body> {
    let ct = prop::sample::select(vec!["application/json", "application/x-ndjson"]);
    prop_oneof![
        (prop::collection::vec(any::<u8>(), 0..600), ct.clone()).prop_map(|(b, c)| Body::Bytes(b, c)),
        ("[\\[\\]{}:,\"a-z0-9 .eE+\\-\n]{0,300}", ct.clone()).prop_map(|(s, c)| Body::Text(s, c)),
        arb_mutated_event().prop_map(|v| Body::Text(v.to_string(), "application/json")),
        prop::collection::vec(arb_mutated_event(), 0..8)
            .prop_map(|v| Body::Text(Value::Array(v).to_string(), "application/json")),
        prop::collection::vec(arb_mutated_event(), 0..8).prop_map(|v| {
            Body::Text(v.iter().map(Value::to_string).collect::<Vec<_>>().join("\n"), "application/x-ndjson")
        }),
        arb_json().prop_map(|v| Body::Text(v.to_string(), "application/json")),
    ]
}

#[test]
fn arbitrary_bodies_never_panic_and_never_yield_a_5xx() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic(TOPIC, 2, 1).unwrap();
    let ingest = rt.block_on(Ingest::start(&mock.bootstrap_servers(), |c| {
        c.events_partitions = 2;
        c.rate_limit_per_second = 0;
        c.max_batch = 5;
    }));
    let accepted = AtomicUsize::new(0);
    let rejected = AtomicUsize::new(0);
    let mut runner =
        TestRunner::new(ProptestConfig { cases: 600, failure_persistence: None, ..ProptestConfig::default() });
    let result = runner.run(&arb_body(), |body| {
        let (bytes, ct) = match body {
            Body::Bytes(b, c) => (b, c),
            Body::Text(s, c) => (s.into_bytes(), c),
        };
        let events_hint = bytes.len();
        let reply = rt.block_on(ingest.post(bytes, Some(ct), None));
        prop_assert!(reply.status < 500, "status {} for a {events_hint}-byte body: {}", reply.status, reply.body);
        match reply.status {
            202 => {
                accepted.fetch_add(1, Ordering::Relaxed);
                let results = reply.body["results"].as_array().unwrap();
                prop_assert!(!results.is_empty());
                prop_assert!(results.iter().all(|r| r["status"] == "accepted"));
            }
            400 => {
                rejected.fetch_add(1, Ordering::Relaxed);
                prop_assert!(!reply.errors().is_empty(), "{}", reply.body);
            }
            s => return Err(TestCaseError::fail(format!("unexpected status {s}: {}", reply.body))),
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // Both outcomes were exercised, and the server is still serving.
    assert!(accepted.load(Ordering::Relaxed) > 10, "valid bodies accepted");
    assert!(rejected.load(Ordering::Relaxed) > 100, "invalid bodies rejected");
    let reply = rt.block_on(ingest.post_json(&event(1)));
    assert_eq!(reply.status, 202);
    rt.block_on(ingest.stop());
}
