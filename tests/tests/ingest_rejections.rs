//! Against tansu: every kind of bad request gets its status and a JSON error body with a
//! code (400s name the index and field), and nothing of it reaches `chat.events`: bad
//! bodies, keys over their request or event rate (429, per key), slow bodies (408, without
//! locking fast clients out of the in-flight slots) and a spent body budget (503).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::time::Duration;

use chatpipe_tests::ingest_support;
use chatpipe_tests::{eventually, TestBroker};
use ingest_support::{batch, event, read_topic_all, topic_count, Ingest, Reply, TOPIC};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "k-0123456789abcdef";
const OTHER_KEY: &str = "k-fedcba9876543210";

fn keys_file() -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    writeln!(f, "# test keys\nchat-server:{KEY}\n{OTHER_KEY}").unwrap();
    f
}

fn assert_error(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "{:?}", r.body);
    assert_eq!(r.code(), code, "{:?}", r.body);
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    assert!(r.body["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(!r.errors().is_empty(), "an errors array: {:?}", r.body);
    assert!(!r.body.to_string().contains(KEY), "the key is never echoed");
}

/// Sends a raw HTTP/1.1 request and returns the status code and body.
async fn raw(addr: std::net::SocketAddr, head: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let _ = s.write_all(body).await; // the server may answer and close before reading it all
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let json = text.split("\r\n\r\n").nth(1).unwrap_or("");
    // a chunked response: take the JSON object between the chunk sizes
    let start = json.find('{').unwrap();
    let end = json.rfind('}').unwrap();
    (status, serde_json::from_str(&json[start..=end]).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_their_status_and_a_json_error_and_nothing_is_produced() {
    let broker = TestBroker::start();
    let keys = keys_file();
    let ingest = Ingest::start(&broker.bootstrap(), |c| {
        c.api_keys_file = Some(keys.path().to_owned());
        c.insecure_no_auth = false;
        c.max_body_bytes = 16 * 1024;
        c.max_batch = 10;
    })
    .await;
    let post = |body: String, ct: Option<&'static str>, key: Option<&'static str>| {
        let ingest = &ingest;
        async move { ingest.post(body, ct, key).await }
    };
    let json_ct = Some("application/json");
    let ok_body = event(1).to_string();

    // invalid JSON
    let r = post("{\"type\": \"message\",".into(), json_ct, Some(KEY)).await;
    assert_error(&r, 400, "invalid_events");
    assert_eq!(r.errors()[0].2, "invalid_json");

    // wrong types, reported by field and index
    let mut bad = event(1);
    bad["session_id"] = json!(true);
    bad["message"]["body"] = json!(5);
    let r = post(json!([event(0), bad]).to_string(), json_ct, Some(KEY)).await;
    assert_error(&r, 400, "invalid_events");
    let errs = r.errors();
    assert!(errs.contains(&(Some(1), "session_id".into(), "invalid_type".into())), "{errs:?}");
    assert!(errs.contains(&(Some(1), "message.body".into(), "invalid_type".into())), "{errs:?}");
    assert!(errs.iter().all(|e| e.0 == Some(1)), "the valid event 0 has no error: {errs:?}");

    // missing required fields
    let r = post(json!({"type": "message", "session_kind": "direct"}).to_string(), json_ct, Some(KEY)).await;
    assert_error(&r, 400, "invalid_events");
    let fields: Vec<String> = r.errors().into_iter().filter(|e| e.2 == "missing").map(|e| e.1).collect();
    for f in ["session_id", "sender_id", "recipient_id", "message"] {
        assert!(fields.contains(&f.to_owned()), "{f} missing in {fields:?}");
    }

    // 64-bit id out of range, as a number and as a string
    let mut big = event(2);
    big["target_id"] = json!("18446744073709551616");
    let r = post(big.to_string(), json_ct, Some(KEY)).await;
    assert_error(&r, 400, "invalid_events");
    assert_eq!(r.errors(), vec![(Some(0), "target_id".into(), "out_of_range".into())]);
    let r = post(
        r#"{"type":"read","session_id":18446744073709551616,"session_kind":"group","sender_id":1,"target_id":1}"#
            .into(),
        json_ct,
        Some(KEY),
    )
    .await;
    assert_eq!(r.errors(), vec![(Some(0), "session_id".into(), "out_of_range".into())]);

    // an invalid NDJSON line rejects the whole request
    let nd = format!("{}\n{{\"type\":\"join\"}}\n{}\n", event(3), event(4));
    let r = post(nd, Some("application/x-ndjson"), Some(KEY)).await;
    assert_error(&r, 400, "invalid_events");
    assert!(r.errors().iter().all(|e| e.0 == Some(1)));

    // too many events
    let r = post(batch(0, 11).to_string(), json_ct, Some(KEY)).await;
    assert_error(&r, 400, "invalid_events");
    assert_eq!(r.errors()[0].2, "too_many");

    // body over the limit: declared ...
    let huge = json!([{"type":"message","session_id":1,"session_kind":"group","sender_id":1,
                        "message":{"kind":"text","body":"x".repeat(20_000)}}])
    .to_string();
    let r = post(huge.clone(), json_ct, Some(KEY)).await;
    assert_error(&r, 413, "body_too_large");
    // ... and chunked, without a Content-Length
    let addr = ingest.handle.local_addr();
    let mut chunked = Vec::new();
    for chunk in huge.as_bytes().chunks(4096) {
        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend_from_slice(chunk);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer {KEY}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let (status, body) = raw(addr, &head, &chunked).await;
    assert_eq!((status, body["code"].as_str()), (413, Some("body_too_large")));

    // wrong content type, or none
    let r = post(ok_body.clone(), Some("text/plain"), Some(KEY)).await;
    assert_error(&r, 415, "unsupported_media_type");
    let r = post(ok_body.clone(), None, Some(KEY)).await;
    assert_error(&r, 415, "unsupported_media_type");

    // missing or invalid key (checked first: a valid body does not get through)
    let r = post(ok_body.clone(), json_ct, None).await;
    assert_error(&r, 401, "missing_api_key");
    let r = post(ok_body.clone(), json_ct, Some("k-0123456789abcdeX")).await;
    assert_error(&r, 401, "invalid_api_key");
    let (status, body) = raw(
        addr,
        &format!(
            "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Basic {KEY}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            ok_body.len()
        ),
        ok_body.as_bytes(),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (401, Some("invalid_api_key")));

    // unknown route and method: JSON too
    let r = ingest_support::post_to(&ingest.client, &format!("http://{addr}/v2/nope"), "{}", json_ct, Some(KEY)).await;
    assert_error(&r, 404, "not_found");
    let resp = ingest.client.get(ingest.url()).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 405);

    // The topic exists and is still empty; the rejections are counted by reason.
    assert_eq!(topic_count(&broker.bootstrap(), TOPIC), 0);
    let metrics = ingest.metrics().await;
    for line in [
        "chatpipe_ingest_requests_rejected_total{reason=\"invalid_events\"} 7",
        "chatpipe_ingest_requests_rejected_total{reason=\"body_too_large\"} 2",
        "chatpipe_ingest_requests_rejected_total{reason=\"unsupported_media_type\"} 2",
        "chatpipe_ingest_requests_rejected_total{reason=\"missing_api_key\"} 1",
        "chatpipe_ingest_requests_rejected_total{reason=\"invalid_api_key\"} 2",
        "chatpipe_ingest_events_rejected_total{reason=\"out_of_range\"} 2",
        "chatpipe_ingest_requests_total{route=\"/v1/events\",status=\"400\"} 7",
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }

    // A valid request still goes through with the same key.
    let r = post(ok_body, json_ct, Some(KEY)).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(topic_count(&broker.bootstrap(), TOPIC), 1);
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_rate_gets_429_with_retry_after_per_key() {
    let broker = TestBroker::start();
    let keys = keys_file();
    let ingest = Ingest::start(&broker.bootstrap(), |c| {
        c.api_keys_file = Some(keys.path().to_owned());
        c.insecure_no_auth = false;
        c.rate_limit_per_second = 1;
        c.rate_limit_burst = 2;
    })
    .await;
    // Invalid bodies: the rate limit applies before parsing, and the topic stays empty.
    let body = "[]".to_owned();
    let ct = Some("application/json");
    assert_eq!(ingest.post(body.clone(), ct, Some(KEY)).await.status, 400);
    assert_eq!(ingest.post(body.clone(), ct, Some(KEY)).await.status, 400);
    let r = ingest.post(body.clone(), ct, Some(KEY)).await;
    assert_error(&r, 429, "rate_limited");
    let secs: u64 = r.retry_after.as_deref().expect("Retry-After").parse().unwrap();
    assert!((1..=2).contains(&secs), "Retry-After {secs}");
    // another key has its own bucket
    assert_eq!(ingest.post(body.clone(), ct, Some(OTHER_KEY)).await.status, 400);
    // a bad key is refused as unauthorized, not rate limited
    assert_eq!(ingest.post(body, ct, Some("nope")).await.status, 401);
    assert_eq!(topic_count(&broker.bootstrap(), TOPIC), 0);
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_event_rate_gets_429_per_key_and_nothing_of_it_is_produced() {
    let broker = TestBroker::start();
    let keys = keys_file();
    let ingest = Ingest::start(&broker.bootstrap(), |c| {
        c.api_keys_file = Some(keys.path().to_owned());
        c.insecure_no_auth = false;
        c.rate_limit_per_second = 0; // requests unlimited: only the event rate applies
        c.rate_limit_events_per_second = 1;
        c.rate_limit_events_burst = 20;
        c.max_batch = 20;
    })
    .await;
    let ct = Some("application/json");
    let post = |from: u64, n: u64, key: &'static str| {
        let ingest = &ingest;
        async move { ingest.post(batch(from, n).to_string(), ct, Some(key)).await }
    };
    // 15 of the 20 tokens, then a request of 10 is refused whole (and takes none) ...
    assert_eq!(post(0, 15, KEY).await.status, 202);
    let r = post(15, 10, KEY).await;
    assert_error(&r, 429, "event_rate_limited");
    let secs: u64 = r.retry_after.as_deref().expect("Retry-After").parse().unwrap();
    assert!((1..=10).contains(&secs), "Retry-After {secs}");
    // ... so the 5 left still pass, and a full batch after them does not.
    assert_eq!(post(25, 5, KEY).await.status, 202);
    assert_error(&post(30, 10, KEY).await, 429, "event_rate_limited");
    // Another key has its own bucket.
    assert_eq!(post(40, 20, OTHER_KEY).await.status, 202);

    // Exactly the accepted events are in Kafka: none of the refused requests'.
    let got = read_topic_all(&broker.bootstrap(), TOPIC, 40, Duration::from_secs(2));
    let mut ids: Vec<String> = got.into_iter().map(|(_, e)| e.client_msg_id.unwrap()).collect();
    ids.sort();
    let mut want: Vec<String> = (0..15).chain(25..30).chain(40..60).map(|i| format!("c-{i}")).collect();
    want.sort();
    assert_eq!(ids, want);
    let metrics = ingest.metrics().await;
    let line = "chatpipe_ingest_requests_rejected_total{reason=\"event_rate_limited\"} 2";
    assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    ingest.stop().await;
}

/// Opens a request whose body never completes: the head declares `declared` bytes and only
/// `sent` of them are written. The stream is returned open.
async fn stalled_request(addr: std::net::SocketAddr, declared: usize, sent: &[u8]) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(sent).await.unwrap();
    s
}

/// Whether the server has not answered on `s` yet (nothing to read, connection open).
fn unanswered(s: &tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(s.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// The status and JSON body of the response on `s` (read until the server closes it).
async fn response(mut s: tokio::net::TcpStream) -> (u16, serde_json::Value) {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    let status = text.split_whitespace().nth(1).unwrap_or_else(|| panic!("no response: {text:?}")).parse().unwrap();
    let json = text.split("\r\n\r\n").nth(1).unwrap_or("");
    let (start, end) = (json.find('{').unwrap(), json.rfind('}').unwrap());
    (status, serde_json::from_str(&json[start..=end]).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_do_not_lock_fast_clients_out_and_get_408() {
    const SLOW: usize = 8;
    let broker = TestBroker::start();
    let read_timeout = Duration::from_secs(6);
    let ingest = Ingest::start(&broker.bootstrap(), |c| {
        c.max_inflight_requests = 2;
        c.read_timeout = read_timeout;
    })
    .await;
    let addr = ingest.handle.local_addr();
    let body = batch(0, 3).to_string();

    // Four times as many slow bodies as in-flight slots, each a few bytes into its body.
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        slow.push(stalled_request(addr, body.len(), &body.as_bytes()[..10]).await);
    }
    let receiving = format!("chatpipe_ingest_buffered_body_bytes {}\n", SLOW * 10);
    assert!(
        eventually(Duration::from_secs(10), async || ingest.metrics().await.contains(&receiving)).await,
        "every slow body is being received"
    );

    // A fast client is served while they stall (none of them answered yet) ...
    for i in 0..3 {
        let r = ingest.post_json(&batch(100 + i * 5, 5)).await;
        assert_eq!(r.status, 202, "fast request {i}: {:?}", r.body);
    }
    assert!(slow.iter().all(unanswered), "the fast requests were served while every slow body still stalled");
    let metrics = ingest.metrics().await;
    assert!(metrics.contains("chatpipe_ingest_inflight_requests 0"), "slow bodies hold no slot:\n{metrics}");

    // ... and each slow one gets 408 with a JSON error once its time is up.
    for s in slow {
        let (status, body) = response(s).await;
        assert_eq!((status, body["code"].as_str()), (408, Some("read_timeout")), "{body}");
    }

    // Only the fast requests' events are in Kafka; every body's bytes were released.
    assert_eq!(read_topic_all(&broker.bootstrap(), TOPIC, 15, Duration::from_secs(2)).len(), 15);
    let metrics = ingest.metrics().await;
    for line in [
        format!("chatpipe_ingest_requests_rejected_total{{reason=\"read_timeout\"}} {SLOW}"),
        "chatpipe_ingest_buffered_body_bytes 0".to_owned(),
    ] {
        assert!(metrics.contains(&line), "missing {line} in\n{metrics}");
    }
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_body_budget_gets_503_at_once_and_is_released_after() {
    let broker = TestBroker::start();
    let ingest = Ingest::start(&broker.bootstrap(), |c| {
        c.max_body_bytes = 16 * 1024;
        c.max_buffered_body_bytes = 16 * 1024;
        c.read_timeout = Duration::from_secs(6);
    })
    .await;
    let addr = ingest.handle.local_addr();
    // One stalled body holds all but a few bytes of the budget ...
    let hog = stalled_request(addr, 16 * 1024, &[b' '; 16 * 1024 - 8]).await;
    assert!(
        eventually(Duration::from_secs(10), async || ingest
            .metrics()
            .await
            .contains(&format!("chatpipe_ingest_buffered_body_bytes {}\n", 16 * 1024 - 8)))
        .await
    );
    // ... so a body that does not fit is refused while the hog still holds it, not queued
    // behind it.
    let r = ingest.post_json(&batch(0, 2)).await;
    assert_error(&r, 503, "body_buffer_full");
    assert_eq!(r.retry_after.as_deref(), Some("1"));
    assert!(unanswered(&hog), "refused while the stalled body was still being received");
    // Once the stalled body times out its bytes are released and requests fit again.
    assert_eq!(response(hog).await.0, 408);
    let r = ingest.post_json(&batch(0, 2)).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(read_topic_all(&broker.bootstrap(), TOPIC, 2, Duration::from_secs(2)).len(), 2);
    ingest.stop().await;
}
