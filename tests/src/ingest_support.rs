//! Helpers shared by the `ingest_*` tests: start an in-process ingest, post bodies, read
//! the events topic back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chatpipe_common::envelope;
use chatpipe_common::event::ChatEvent;
use chatpipe_common::http::{ObservabilityServer, Telemetry};
use chatpipe_common::kafka::KafkaArgs;
use chatpipe_ingest::{Config, IngestHandle};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{json, Value};

pub const TOPIC: &str = "chat.events";

/// A running ingest with its observability server.
pub struct Ingest {
    pub handle: IngestHandle,
    pub obs: ObservabilityServer,
    pub telemetry: Telemetry,
    pub client: reqwest::Client,
}

impl Ingest {
    /// Starts ingest (auth off unless `tweak` sets keys) against `brokers` and waits until
    /// it is ready.
    pub async fn start(brokers: &str, tweak: impl FnOnce(&mut Config)) -> Ingest {
        let mut config = Config::new(KafkaArgs::new(brokers));
        config.events_partitions = 4;
        config.worker_id = Some(7);
        tweak(&mut config);
        let telemetry = Telemetry::new();
        let obs = ObservabilityServer::start("127.0.0.1:0".parse().unwrap(), telemetry.clone()).await.unwrap();
        let handle = chatpipe_ingest::start(config, telemetry.clone()).await.expect("ingest starts");
        assert!(handle.wait_ready(Duration::from_secs(30)).await, "ingest did not become ready");
        let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        Ingest { handle, obs, telemetry, client }
    }

    pub fn url(&self) -> String {
        format!("http://{}/v1/events", self.handle.local_addr())
    }

    /// Posts `body` with a content type and an optional bearer key.
    pub async fn post(&self, body: impl Into<reqwest::Body>, content_type: Option<&str>, key: Option<&str>) -> Reply {
        post_to(&self.client, &self.url(), body, content_type, key).await
    }

    /// Posts JSON.
    pub async fn post_json(&self, body: &Value) -> Reply {
        self.post(body.to_string(), Some("application/json"), None).await
    }

    pub async fn readyz(&self) -> u16 {
        let url = format!("http://{}/readyz", self.obs.addr);
        self.client.get(url).send().await.unwrap().status().as_u16()
    }

    pub async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.obs.addr);
        self.client.get(url).send().await.unwrap().text().await.unwrap()
    }

    pub async fn stop(self) {
        self.handle.shutdown().await.expect("clean shutdown");
        self.obs.shutdown().await;
    }
}

/// A response: status, `Retry-After`, JSON body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<String>,
    pub content_type: Option<String>,
    pub body: Value,
}

impl Reply {
    /// The `message_id`s of a 202 (or of the accepted events of a 503), by index.
    pub fn accepted_ids(&self) -> BTreeMap<usize, u64> {
        self.body["results"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter(|e| e["status"] == "accepted")
                    .map(|e| {
                        (e["index"].as_u64().unwrap() as usize, e["message_id"].as_str().unwrap().parse().unwrap())
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The `code` of the body.
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }

    /// The `(index, field, code)` of each error.
    pub fn errors(&self) -> Vec<(Option<u64>, String, String)> {
        self.body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["index"].as_u64(),
                    e["field"].as_str().unwrap_or("").to_owned(),
                    e["code"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }
}

pub async fn post_to(
    client: &reqwest::Client,
    url: &str,
    body: impl Into<reqwest::Body>,
    content_type: Option<&str>,
    key: Option<&str>,
) -> Reply {
    let mut req = client.post(url).body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let resp = req.send().await.expect("request sent");
    let status = resp.status().as_u16();
    let header = |name: &str| resp.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
    let retry_after = header("retry-after");
    let content_type = header("content-type");
    let bytes = resp.bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("status {status}: body is not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
    Reply { status, retry_after, content_type, body }
}

/// A valid event of each kind, varied by `i`.
pub fn event(i: u64) -> Value {
    let session = 1_000 + i % 13;
    match i % 6 {
        0 => json!({"type":"message","session_id":session,"session_kind":"direct","sender_id":10 + i % 5,
                    "recipient_id":99,"client_msg_id":format!("c-{i}"),"sent_at":1_790_000_000_000u64 + i,
                    "message":{"kind":"text","body":format!("hello {i} {}", "x".repeat((i % 250) as usize)),"mentions":[i + 1, "18446744073709551615"]}}),
        1 => {
            json!({"type":"message","session_id":session.to_string(),"session_kind":"group","sender_id":"18446744073709551615",
                    "client_msg_id":format!("c-{i}"),"sent_at":"2026-03-01T10:00:00.123Z",
                    "message":{"kind":"image","body":"https://img/1.png"}})
        }
        2 => {
            json!({"type":"edit","session_id":session,"session_kind":"group","sender_id":3,"target_id":"123456789012345678",
                    "client_msg_id":format!("c-{i}"),"message":{"kind":"text","body":"edited"}})
        }
        3 => json!({"type":"read","session_id":session,"session_kind":"channel","sender_id":4,"target_id":42,
                    "client_msg_id":format!("c-{i}")}),
        4 => json!({"type":"join","session_id":session,"session_kind":"group","sender_id":5,"user_id":6,
                    "client_msg_id":format!("c-{i}")}),
        _ => json!({"type":"recall","session_id":session,"session_kind":"group","sender_id":5,"target_id":7,
                    "client_msg_id":format!("c-{i}"),"sent_at":1_000_000_000_000u64}),
    }
}

/// `n` valid events as a JSON array starting at `from`.
pub fn batch(from: u64, n: u64) -> Value {
    Value::Array((from..from + n).map(event).collect())
}

/// Messages in `topic` (sum of high watermarks); `None` if the broker does not answer.
pub fn topic_count(brokers: &str, topic: &str) -> i64 {
    let consumer: BaseConsumer =
        KafkaArgs::new(brokers).client_config("test").set("group.id", "count").create().unwrap();
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    let t = md.topics().iter().find(|t| t.name() == topic).expect("topic exists");
    assert!(!t.partitions().is_empty(), "topic {topic} has partitions");
    t.partitions()
        .iter()
        .map(|p| consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10)).unwrap())
        .map(|(low, high)| high - low)
        .sum()
}

/// Reads every record of `topic` from the beginning until `n` are read (panics after
/// `timeout`). Returns `(key, event)` pairs in partition order.
pub fn read_topic(brokers: &str, topic: &str, n: usize, timeout: Duration) -> Vec<(String, ChatEvent)> {
    read_records(brokers, topic, n, timeout, Duration::ZERO)
}

/// [`read_topic`], then keeps reading for `quiet` and returns whatever else came: a test
/// that asserts the result has exactly `n` records proves nothing more was produced (the
/// topic's watermarks are not a record count on tansu).
pub fn read_topic_all(brokers: &str, topic: &str, n: usize, quiet: Duration) -> Vec<(String, ChatEvent)> {
    read_records(brokers, topic, n, Duration::from_secs(30), quiet)
}

fn read_records(brokers: &str, topic: &str, n: usize, timeout: Duration, quiet: Duration) -> Vec<(String, ChatEvent)> {
    let consumer: BaseConsumer = KafkaArgs::new(brokers)
        .client_config("test")
        .set("group.id", "ingest-test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    let t = md.topics().iter().find(|t| t.name() == topic).expect("topic exists");
    let mut tpl = TopicPartitionList::new();
    for p in t.partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::with_capacity(n);
    let deadline = Instant::now() + timeout;
    let mut quiet_until: Option<Instant> = None;
    loop {
        if out.len() >= n {
            let until = *quiet_until.get_or_insert_with(|| Instant::now() + quiet);
            if Instant::now() >= until {
                break;
            }
        } else {
            assert!(Instant::now() < deadline, "only {} of {n} records came back", out.len());
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
                let ev: ChatEvent = envelope::decode(m.payload().unwrap()).unwrap();
                out.push((key, ev));
            }
            Some(Err(e)) => panic!("consume error: {e}"),
            None => {}
        }
    }
    out
}
