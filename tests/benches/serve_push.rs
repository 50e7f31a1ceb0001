//! Live push end to end: the delay from ingest's `202 Accepted` for a posted message to the
//! `message` event of that message on the Server-Sent-Events stream of each of its
//! recipients, with `CLIENTS` streams connected (default 1,000, one user each).
//!
//! The whole pipeline runs as in `tests/tests/serve_e2e.rs`: tansu, the HBase emulator,
//! ingest, processor, sink and serve (push on, reading `chat.rows`), all but tansu in this
//! process and sharing the machine's cores with the driver. Users `2k−1` and `2k` share the
//! direct session `k`, so every message has two recipients with a stream (the sender's own
//! inbox row is pushed too). After the streams are open, a warm-up message in every session
//! must reach both members (every stream is live and every session exists); then an
//! open-loop driver posts `RATE` messages per second for `SECONDS`, one per request, the
//! sessions taken round-robin, and each delivery's latency is the event's arrival minus the
//! 202's arrival (the send → event delay is printed too). A delivery still missing 120 s
//! after the last post is counted as lost.
//!
//! ```text
//! CARGO_TARGET_DIR=target-rel cargo bench -p chatpipe-tests --bench serve_push
//! # env: PUSH_BENCH_CLIENTS=1000 PUSH_BENCH_RATE=50 PUSH_BENCH_SECONDS=30 PUSH_BENCH_PARTITIONS=4
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatpipe_common::http::Telemetry;
use chatpipe_common::kafka::{parse_kafka_option, KafkaArgs, TopicSpec};
use chatpipe_sink::hbase::{HbaseClient, HbaseConfig};
use chatpipe_tests::serve_support;
use chatpipe_tests::{now_ms, TestBroker, TestHbase};
use futures::StreamExt;
use serde_json::{json, Value};
use serve_support::Serve;
use tokio::sync::mpsc;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn kafka(broker: &TestBroker) -> KafkaArgs {
    let mut k = broker.kafka_args();
    k.options.push(parse_kafka_option("session.timeout.ms=6000").unwrap());
    k
}

/// A `message` event as received: (user, message id, arrival).
type Delivery = (u64, u64, Instant);

/// Reads one user's stream until it ends, reporting each `message` event.
async fn read_stream(user: u64, mut resp: reqwest::Response, out: mpsc::UnboundedSender<Delivery>) {
    let mut buf = String::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        let at = Instant::now();
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let mut event = "";
            let mut data = String::new();
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = if v.trim() == "message" { "message" } else { "other" };
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if event != "message" {
                continue;
            }
            let v: Value = serde_json::from_str(&data).unwrap();
            let id: u64 = v["message_id"].as_str().unwrap().parse().unwrap();
            if out.send((user, id, at)).is_err() {
                return;
            }
        }
    }
}

/// Posts one message of direct session `pair` from `sender`; returns (message id, the
/// instant the request was sent, the instant the 202 arrived).
async fn post(client: &reqwest::Client, url: &str, pair: u64, sender: u64, i: u64) -> (u64, Instant, Instant) {
    let recipient = if sender % 2 == 1 { sender + 1 } else { sender - 1 };
    let event = json!({"type": "message", "session_id": pair.to_string(), "session_kind": "direct",
                       "sender_id": sender, "recipient_id": recipient,
                       "message": {"kind": "text", "body": format!("push bench message {i}")}, "sent_at": now_ms()});
    let sent = Instant::now();
    let r = client.post(url).header("content-type", "application/json").body(event.to_string()).send().await.unwrap();
    let status = r.status().as_u16();
    let accepted = Instant::now();
    let text = r.text().await.unwrap();
    assert_eq!(status, 202, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    (v["results"][0]["message_id"].as_str().unwrap().parse().unwrap(), sent, accepted)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(name: &str, mut ms: Vec<f64>) {
    ms.sort_by(f64::total_cmp);
    println!(
        "{name:<22} n={:<6} p50={:>7.1} ms  p90={:>7.1} ms  p99={:>7.1} ms  max={:>7.1} ms",
        ms.len(),
        percentile(&ms, 50.0),
        percentile(&ms, 90.0),
        percentile(&ms, 99.0),
        ms.last().copied().unwrap_or(f64::NAN)
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let clients = env("PUSH_BENCH_CLIENTS", 1000).max(2) / 2 * 2;
    let rate = env("PUSH_BENCH_RATE", 50).max(1);
    let seconds = env("PUSH_BENCH_SECONDS", 30).max(1);
    let partitions = i32::try_from(env("PUSH_BENCH_PARTITIONS", 4)).unwrap();
    let pairs = clients / 2;

    let broker = TestBroker::start();
    broker.create_topics(&[TopicSpec::new("chat.events", partitions)]).await;
    let hbase = TestHbase::start();
    {
        let mut c = HbaseClient::connect(&HbaseConfig::new(hbase.thrift())).unwrap();
        chatpipe_sink::tables::create_all(&mut c).unwrap();
    }
    let ingest = chatpipe_ingest::start(chatpipe_ingest::Config::new(kafka(&broker)), Telemetry::new()).await.unwrap();
    assert!(ingest.wait_ready(Duration::from_secs(60)).await, "ingest not ready");
    let state_dir = tempfile::tempdir().unwrap();
    let mut pc = chatpipe_processor::Config::for_brokers(&broker.bootstrap());
    pc.kafka = kafka(&broker);
    pc.events_partitions = partitions;
    pc.output_partitions = partitions;
    pc.fanout_max_members = serve_support::FANOUT_MAX as usize;
    pc.idle_timeout = Duration::from_secs(1);
    pc.state_dir = state_dir.path().to_owned();
    pc.metrics_listen = "127.0.0.1:0".parse().unwrap();
    let processor = chatpipe_processor::start(pc, Telemetry::new()).await.unwrap();
    let mut sc = chatpipe_sink::Config::new(kafka(&broker), hbase.thrift());
    sc.topic_partitions = partitions;
    let stop = tokio_util::sync::CancellationToken::new();
    let sink = {
        let stop = stop.clone();
        tokio::spawn(async move {
            chatpipe_sink::run_with_telemetry(sc, Telemetry::new(), async move { stop.cancelled().await }).await
        })
    };
    let mut cfg = serve_support::config(&hbase.thrift());
    cfg.no_push = false;
    cfg.kafka = kafka(&broker);
    let serve = Serve::start(cfg).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !serve.telemetry.health.is_ready() {
        assert!(Instant::now() < deadline, "serve not ready: {:?}", serve.telemetry.health.not_ready());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // the streams, one per user, opened 50 at a time
    let (tx, mut rx) = mpsc::unbounded_channel::<Delivery>();
    let opened = Instant::now();
    let responses: Vec<(u64, reqwest::Response)> = futures::stream::iter(1..=clients)
        .map(|user| {
            let (client, base) = (serve.client.clone(), serve.base.clone());
            async move {
                let resp = client.get(format!("{base}/v1/users/{user}/stream")).send().await.unwrap();
                assert_eq!(resp.status(), 200, "stream of {user}");
                (user, resp)
            }
        })
        .buffer_unordered(50)
        .collect()
        .await;
    let streams: Vec<tokio::task::JoinHandle<()>> =
        responses.into_iter().map(|(user, resp)| tokio::spawn(read_stream(user, resp, tx.clone()))).collect();
    drop(tx);
    println!("{clients} streams open in {:.1} s", opened.elapsed().as_secs_f64());

    let http = reqwest::Client::new();
    let url = format!("http://{}/v1/events", ingest.local_addr());
    let url = url.as_str();

    // warm-up: one message per session, each must reach both members
    let warm = Instant::now();
    let warm_ids: Vec<u64> = futures::stream::iter(1..=pairs)
        .map(|k| post(&http, url, k, 2 * k - 1, 0))
        .buffer_unordered(16)
        .map(|r| r.0)
        .collect()
        .await;
    let mut pending: HashMap<u64, u32> = warm_ids.iter().map(|id| (*id, 2)).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while !pending.is_empty() {
        let (_, id, _) = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("warm-up: {} messages not delivered to both members", pending.len()))
            .expect("streams ended");
        if let Some(n) = pending.get_mut(&id) {
            *n -= 1;
            if *n == 0 {
                pending.remove(&id);
            }
        }
    }
    println!("warm-up: {pairs} messages reached both members' streams in {:.1} s", warm.elapsed().as_secs_f64());

    // the measured run: open loop at `rate`, deliveries collected meanwhile
    let total = rate * seconds;
    let posted: Arc<std::sync::Mutex<HashMap<u64, (Instant, Instant)>>> = Arc::default();
    let mut early: Vec<Delivery> = Vec::new();
    let driver = {
        let (http, url, posted) = (http.clone(), url.to_owned(), posted.clone());
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            let mut tasks = Vec::with_capacity(usize::try_from(total).unwrap());
            for i in 0..total {
                tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate as f64)).await;
                let (http, url, posted) = (http.clone(), url.clone(), posted.clone());
                let pair = 1 + i % pairs;
                let sender = 2 * pair - 1 + (i / pairs) % 2;
                tasks.push(tokio::spawn(async move {
                    let (id, sent, accepted) = post(&http, &url, pair, sender, i + 1).await;
                    posted.lock().unwrap().insert(id, (sent, accepted));
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            start.elapsed()
        })
    };
    let mut received: Vec<Delivery> = Vec::new();
    let want = usize::try_from(2 * total).unwrap();
    let mut driver = Some(driver);
    let mut posting_took = Duration::ZERO;
    let mut give_up: Option<tokio::time::Instant> = None;
    loop {
        if let Some(d) = driver.as_mut() {
            tokio::select! {
                r = d => {
                    posting_took = r.unwrap();
                    driver = None;
                    give_up = Some(tokio::time::Instant::now() + Duration::from_secs(120));
                }
                e = rx.recv() => received.push(e.expect("streams ended")),
            }
        } else {
            if received.len() >= want {
                break;
            }
            match tokio::time::timeout_at(give_up.unwrap(), rx.recv()).await {
                Ok(Some(e)) => received.push(e),
                _ => break,
            }
        }
    }
    let posted = posted.lock().unwrap().clone();
    let (mut from_202, mut from_send) = (Vec::new(), Vec::new());
    let mut before_202 = 0usize;
    for (user, id, at) in received {
        match posted.get(&id) {
            Some((sent, accepted)) => {
                from_send.push(at.duration_since(*sent).as_secs_f64() * 1000.0);
                if at < *accepted {
                    before_202 += 1;
                }
                from_202.push(at.saturating_duration_since(*accepted).as_secs_f64() * 1000.0);
            }
            None => early.push((user, id, at)),
        }
    }
    println!(
        "posted {total} messages at {rate}/s in {:.1} s ({} accepted), {} deliveries expected",
        posting_took.as_secs_f64(),
        posted.len(),
        want
    );
    println!(
        "received {} deliveries ({} lost; {} arrived before their 202, counted as 0 ms; {} of other messages)",
        from_202.len(),
        want.saturating_sub(from_202.len()),
        before_202,
        early.len()
    );
    summary("202 -> SSE event", from_202);
    summary("send -> SSE event", from_send);
    let clients_gauge =
        serve.telemetry.registry.gather().into_iter().find(|f| f.name() == chatpipe_serve::metrics::PUSH_CLIENTS);
    if let Some(g) = clients_gauge {
        println!("{} = {}", chatpipe_serve::metrics::PUSH_CLIENTS, g.get_metric()[0].get_gauge().get_value());
    }

    for s in streams {
        s.abort();
    }
    serve.handle.shutdown().await.unwrap();
    ingest.shutdown().await.unwrap();
    processor.shutdown().await.unwrap();
    stop.cancel();
    sink.await.unwrap().unwrap();
}
