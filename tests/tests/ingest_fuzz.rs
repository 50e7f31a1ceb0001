//! Fuzzing the request parser and validator through the real HTTP handler: arbitrary bodies
//! — random bytes, JSON-like text, valid events with one field replaced by an arbitrary JSON
//! value, NDJSON of those, valid batches, and hostile bodies (deep nesting, thousands of
//! items, huge numbers and strings, broken UTF-8, over the size limit) — never panic the
//! server and never yield a 5xx; the answer is 202 with one result per event or a 4xx with
//! a JSON error.
//!
//! * `arbitrary_bodies_never_panic_and_never_yield_a_5xx`: a shrinking property test (600
//!   cases) against librdkafka's mock cluster.
//! * `fuzzed_bodies_leave_exactly_the_accepted_events_in_kafka`: `CHATPIPE_FUZZ_CASES` bodies
//!   (default 15,000, about two minutes on two cores; the full run is
//!   `CHATPIPE_FUZZ_CASES=100000 cargo test -p chatpipe-tests --test ingest_fuzz -- fuzzed
//!   --nocapture`) posted concurrently to an ingest on a real broker (tansu). Every event a
//!   body carries is marked with its case number (`client_msg_id` `z<case>-…`); at the end the
//!   topic is read back: it holds exactly the events the 202s acknowledged (by message id),
//!   and no event of a rejected request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chatpipe_common::event::EVENT_FIELDS;
use chatpipe_common::kafka::TopicSpec;
use chatpipe_tests::ingest_support;
use chatpipe_tests::TestBroker;
use futures::StreamExt;
use ingest_support::{event, read_topic_all, Ingest, TOPIC};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config as ProptestConfig, RngAlgorithm, TestCaseError, TestRng, TestRunner};
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

/// Bodies meant to hurt: deep nesting, many items, huge numbers and strings, broken UTF-8,
/// duplicate keys, surrogate escapes, a body over `--max-body-bytes`.
fn arb_hostile() -> impl Strategy<Value = Body> {
    let json = "application/json";
    prop_oneof![
        (1usize..20_000).prop_map(move |d| Body::Text(format!("{}{}", "[".repeat(d), "]".repeat(d)), json)),
        (1usize..5_000).prop_map(move |d| Body::Text(format!("{}1{}", "{\"a\":".repeat(d), "}".repeat(d)), json)),
        (1usize..50_000).prop_map(move |n| Body::Text(format!("[{}]", vec!["{}"; n].join(",")), json)),
        (1usize..50_000).prop_map(|n| Body::Text(vec!["{}"; n].join("\n"), "application/x-ndjson")),
        (1usize..4_000, 0u64..60).prop_map(move |(digits, i)| {
            let mut ev = event(i);
            ev["session_id"] = Value::String("9".repeat(digits));
            Body::Text(ev.to_string().replace("\"9", "9").replace("9\"", "9"), json)
        }),
        (0u64..60, 60_000usize..70_000).prop_map(move |(i, len)| {
            let mut ev = event(i);
            ev["message"]["body"] = Value::String("b".repeat(len));
            Body::Text(ev.to_string(), json)
        }),
        (0u64..60, any::<u8>()).prop_map(move |(i, b)| {
            let mut bytes = event(i).to_string().into_bytes();
            let at = bytes.len() / 2;
            bytes.splice(at..at, [0xC3, b, 0xFF, 0xFE]);
            Body::Bytes(bytes, json)
        }),
        (0u64..60).prop_map(move |i| {
            let text = event(i).to_string();
            Body::Text(format!("{{\"type\":\"message\",{}", &text[1..]), json)
        }),
        (0u64..60).prop_map(move |i| {
            let mut ev = event(i);
            ev["client_msg_id"] = Value::String("\u{feff}\u{0}".to_owned());
            let text = ev.to_string().replace("\"hello", "\"\\ud800hello");
            Body::Text(format!("\u{feff}{text}"), json)
        }),
        (0u64..60).prop_map(move |i| Body::Text(format!("[{}]", vec![event(i).to_string(); 3000].join(",")), json)),
    ]
}

/// A valid batch of 1–4 events.
fn arb_valid() -> impl Strategy<Value = Body> {
    prop::collection::vec(0u64..10_000, 1..5)
        .prop_map(|is| Body::Text(Value::Array(is.into_iter().map(event).collect()).to_string(), "application/json"))
}

/// What one case's body is, with its events marked by the case number.
fn fuzz_body(case: u64, body: Body) -> (Vec<u8>, &'static str) {
    match body {
        Body::Bytes(b, c) => (b, c),
        Body::Text(s, c) => (s.replace("\"c-", &format!("\"z{case}-")).into_bytes(), c),
    }
}

/// The case number of a marked `client_msg_id`.
fn marked_case(client_msg_id: &str) -> Option<u64> {
    client_msg_id.strip_prefix('z')?.split_once('-')?.0.parse().ok()
}

/// The ingest's `--max-body-bytes` in the fuzz: some hostile bodies are larger.
const MAX_BODY_BYTES: usize = 256 * 1024;

/// A response's status and JSON body.
struct Reply {
    status: u16,
    body: Value,
}

impl Reply {
    fn accepted_ids(&self) -> BTreeMap<usize, u64> {
        self.body["results"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter(|e| e["status"] == "accepted")
                    .filter_map(|e| Some((e["index"].as_u64()? as usize, e["message_id"].as_str()?.parse().ok()?)))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[derive(Default)]
struct Outcomes {
    /// message ids the 202s acknowledged
    accepted_ids: BTreeSet<u64>,
    accepted_cases: BTreeSet<u64>,
    rejected_cases: BTreeSet<u64>,
    per_status: BTreeMap<u16, u64>,
    failures: Vec<String>,
}

#[test]
fn fuzzed_bodies_leave_exactly_the_accepted_events_in_kafka() {
    let cases: u64 = std::env::var("CHATPIPE_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(15_000);
    let seed: u64 =
        std::env::var("CHATPIPE_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(rand::random::<u64>);
    println!("ingest fuzz: {cases} cases, seed {seed}");
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let broker = TestBroker::start();
    rt.block_on(broker.create_topics(&[TopicSpec::new(TOPIC, 2)]));
    let ingest = rt.block_on(Ingest::start(&broker.bootstrap(), |c| {
        c.events_partitions = 2;
        c.rate_limit_per_second = 0;
        c.rate_limit_events_per_second = 0;
        c.max_batch = 5;
        c.max_body_bytes = MAX_BODY_BYTES;
    }));

    // Bodies come from proptest's strategies without shrinking (the seed repeats a run),
    // posted 8 at a time.
    let strategy = prop_oneof![4 => arb_body(), 2 => arb_valid(), 1 => arb_hostile()];
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        ProptestConfig { failure_persistence: None, ..ProptestConfig::default() },
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let bodies = (0..cases).map(move |case| (case, fuzz_body(case, strategy.new_tree(&mut runner).unwrap().current())));
    let outcomes = std::sync::Mutex::new(Outcomes::default());
    // A connection per request: a pooled keep-alive connection the server closes (after a
    // refused body) just as the client reuses it fails the request before it is read — a
    // client-pool race, not the server's answer. The error chain of any failure is printed.
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).timeout(Duration::from_secs(30)).build().unwrap();
    let posts = futures::stream::iter(bodies).for_each_concurrent(8, |(case, (bytes, ct))| {
        let (ingest, outcomes, client) = (&ingest, &outcomes, &client);
        async move {
            let len = bytes.len();
            let sent = client.post(ingest.url()).header("content-type", ct).body(bytes).send().await;
            let sent = match sent {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    Ok((status, resp.bytes().await))
                }
                Err(e) => Err(e),
            };
            let mut o = outcomes.lock().unwrap();
            let fail = |o: &mut Outcomes, what: String| {
                if o.failures.len() < 20 {
                    o.failures.push(format!("case {case} (seed {seed}, {len} bytes): {what}"));
                }
            };
            let reply = match sent {
                Ok((status, bytes)) => {
                    let body = bytes.map_err(|e| e.to_string()).and_then(|b| {
                        serde_json::from_slice::<Value>(&b).map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&b)))
                    });
                    match body {
                        Ok(body) => (status, body),
                        Err(e) => return fail(&mut o, format!("status {status} without a JSON body: {e}")),
                    }
                }
                // over the size limit the server answers 413 and closes while the client is
                // still sending: the client may see the close instead of the answer
                Err(_) if len > MAX_BODY_BYTES => {
                    *o.per_status.entry(413).or_default() += 1;
                    o.rejected_cases.insert(case);
                    return;
                }
                Err(e) => {
                    let chain = std::iter::successors(std::error::Error::source(&e), |e| e.source())
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(": ");
                    return fail(&mut o, format!("no answer: {e}: {chain}"));
                }
            };
            let reply = Reply { status: reply.0, body: reply.1 };
            *o.per_status.entry(reply.status).or_default() += 1;
            let mut fail = |what: String| fail(&mut o, what);
            match reply.status {
                202 => {
                    let ids = reply.accepted_ids();
                    let results = reply.body["results"].as_array().map_or(0, Vec::len);
                    if ids.is_empty() || ids.len() != results {
                        fail(format!("202 without one accepted result per event: {}", reply.body));
                    }
                    o.accepted_ids.extend(ids.into_values());
                    o.accepted_cases.insert(case);
                }
                400..=499 => {
                    if reply.body["code"].as_str().is_none() && reply.body["errors"].as_array().is_none() {
                        fail(format!("{} without a JSON error: {}", reply.status, reply.body));
                    }
                    o.rejected_cases.insert(case);
                }
                s => fail(format!("status {s}: {}", reply.body)),
            }
        }
    });
    rt.block_on(posts);
    let posted = started.elapsed();
    let o = outcomes.into_inner().unwrap();
    assert!(o.failures.is_empty(), "{} failures:\n{}", o.failures.len(), o.failures.join("\n"));
    assert!(o.accepted_cases.len() as u64 > cases / 10, "valid bodies accepted: {:?}", o.per_status);
    assert!(o.rejected_cases.len() as u64 > cases / 5, "invalid bodies rejected: {:?}", o.per_status);

    // The topic holds exactly the acknowledged events, none of a rejected request.
    let records = read_topic_all(&broker.bootstrap(), TOPIC, o.accepted_ids.len(), Duration::from_secs(3));
    let mut seen = BTreeSet::new();
    for (_, ev) in &records {
        assert!(seen.insert(ev.message_id), "message id {} twice in the topic", ev.message_id);
        if let Some(case) = ev.client_msg_id.as_deref().and_then(marked_case) {
            assert!(!o.rejected_cases.contains(&case), "an event of rejected case {case} is in Kafka: {ev:?}");
        }
    }
    assert!(
        seen == o.accepted_ids,
        "{} records in the topic, {} events acknowledged",
        seen.len(),
        o.accepted_ids.len()
    );
    // Still serving.
    let reply = rt.block_on(ingest.post_json(&event(1)));
    assert_eq!(reply.status, 202);
    println!(
        "ingest fuzz: {cases} bodies posted in {:.1} s (total {:.1} s): {:?}; {} events acknowledged and read back, \
         0 from the {} rejected requests",
        posted.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        o.per_status,
        o.accepted_ids.len(),
        o.rejected_cases.len()
    );
    rt.block_on(ingest.stop());
}
