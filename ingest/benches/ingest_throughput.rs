//! Ingest benchmark over loopback against a tansu broker started by the test harness.
//!
//! 1. **Throughput**: the same ~300-byte chat events (JSON) go (a) through ingest's HTTP API
//!    in batches of 100 from `BENCH_CONCURRENCY` concurrent clients, and (b) straight into
//!    a raw rdkafka `FutureProducer` loop (same producer settings: idempotent, acks=all,
//!    lz4, same linger; same envelope-encoded values and keys) — alternating, several
//!    rounds, in one run against the same broker. Reported: events/s of each and the ratio,
//!    and (c) the same HTTP requests to a handler that only reads the body and answers: the
//!    floor any HTTP path has on this machine.
//! 2. **Latency**: single-event requests at a fixed 1,000 req/s (open loop: latency is
//!    measured from each request's scheduled start, so a stall is not hidden), p50/p99/max.
//!
//! Run: `cargo bench -p chatpipe-ingest --bench ingest_throughput`. Knobs (env):
//! `BENCH_EVENTS` (events per throughput round, default 200000), `BENCH_ROUNDS` (5),
//! `BENCH_CONCURRENCY` (HTTP requests in flight, 64), `BENCH_LATENCY_SECS` (20),
//! `BENCH_LINGER_MS` (5), `BENCH_ONLY` (`raw`, `http` or `floor`: one path, for profiling).
//! No assertions: numbers are printed, not judged.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use chatpipe_common::envelope;
use chatpipe_common::event::{self, ChatEvent};
use chatpipe_common::http::Telemetry;
use chatpipe_common::kafka::TopicSpec;
use chatpipe_ingest::Config;
use chatpipe_tests::TestBroker;
use rdkafka::error::KafkaError;
use rdkafka::producer::{
    BaseRecord, DeliveryResult, FutureProducer, FutureRecord, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;

// the allocator of the chatpipe binary, so the numbers are the product's
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One ~300-byte message event as producers send it.
fn event_json(i: u64) -> String {
    let body: String = format!("message {i} ").chars().cycle().take(160).collect();
    serde_json::json!({
        "type": "message",
        "session_id": (1_000_000 + i % 5_000).to_string(),
        "session_kind": "group",
        "sender_id": (2_000_000 + i % 977).to_string(),
        "client_msg_id": format!("bench-{i:012}"),
        "sent_at": 1_790_000_000_000u64 + i,
        "message": {"kind": "text", "body": body, "mentions": []}
    })
    .to_string()
}

fn batch_body(from: u64, n: u64) -> String {
    let mut s = String::with_capacity(320 * n as usize);
    s.push('[');
    for i in from..from + n {
        if i > from {
            s.push(',');
        }
        s.push_str(&event_json(i));
    }
    s.push(']');
    s
}

async fn raw_round(producer: &FutureProducer, topic: &str, payloads: &[(String, Vec<u8>)]) -> f64 {
    let started = Instant::now();
    let mut pending = Vec::with_capacity(payloads.len());
    for (key, value) in payloads {
        let mut record = FutureRecord::to(topic).key(key.as_str()).payload(value.as_slice());
        loop {
            match producer.send_result(record) {
                Ok(f) => {
                    pending.push(f);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _)) => panic!("raw produce failed: {e}"),
            }
        }
    }
    for f in pending {
        f.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
    payloads.len() as f64 / started.elapsed().as_secs_f64()
}

/// Counts delivery reports: the raw loop's second form, with the delivery callbacks ingest
/// itself uses instead of a future per message.
#[derive(Clone, Default)]
struct Counting {
    acked: Arc<std::sync::atomic::AtomicU64>,
    failed: Arc<std::sync::atomic::AtomicU64>,
}

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let counter = if result.is_ok() { &self.acked } else { &self.failed };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn raw_round_callbacks(
    producer: &ThreadedProducer<Counting>,
    topic: &str,
    payloads: &[(String, Vec<u8>)],
) -> f64 {
    use std::sync::atomic::Ordering::Relaxed;
    let started = Instant::now();
    let context = producer.context();
    let target = context.acked.load(Relaxed) + payloads.len() as u64;
    for (key, value) in payloads {
        let mut record = BaseRecord::to(topic).key(key.as_str()).payload(value.as_slice());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _)) => panic!("raw produce failed: {e}"),
            }
        }
    }
    while context.acked.load(Relaxed) < target {
        assert_eq!(context.failed.load(Relaxed), 0, "raw deliveries failed");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    payloads.len() as f64 / started.elapsed().as_secs_f64()
}

async fn http_round(client: &reqwest::Client, url: &str, bodies: Arc<Vec<String>>, concurrency: usize) -> f64 {
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, url, bodies, next) = (client.clone(), url.to_owned(), bodies.clone(), next.clone());
            tokio::spawn(async move {
                let mut events = 0u64;
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(body) = bodies.get(i) else { return events };
                    let resp = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await
                        .unwrap();
                    let status = resp.status();
                    let _ = resp.bytes().await.unwrap();
                    assert_eq!(status.as_u16(), 202, "bench request refused");
                    events += 100;
                }
            })
        })
        .collect();
    let mut events = 0;
    for w in workers {
        events += w.await.unwrap();
    }
    events as f64 / started.elapsed().as_secs_f64()
}

/// A server that only reads each request's body and answers 202 with a body the size of
/// ingest's answer to a batch of 100: what HTTP alone costs on this machine, client
/// included, before any event is parsed or produced.
async fn http_floor_server() -> String {
    use axum::routing::post;
    let answer: &'static str = Box::leak(
        format!(
            "{{\"results\":[{}]}}",
            (0..100)
                .map(|i| format!("{{\"index\":{i},\"message_id\":\"1234567890123456789\",\"status\":\"accepted\"}}"))
                .collect::<Vec<_>>()
                .join(",")
        )
        .into_boxed_str(),
    );
    let app = axum::Router::new().route(
        "/v1/events",
        post(move |body: axum::body::Bytes| async move {
            std::hint::black_box(body);
            (axum::http::StatusCode::ACCEPTED, [("content-type", "application/json")], answer)
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/events", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// CPU seconds (user + system) a process has used so far, from `/proc` (0 where there is
/// none).
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces):
    // utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: f64 = rest.split_whitespace().skip(11).take(2).filter_map(|v| v.parse::<f64>().ok()).sum();
    ticks / 100.0 // USER_HZ
}

/// Runs one round and returns its events/s and the CPU microseconds per event spent by
/// this process and by the broker.
async fn measured<F: std::future::Future<Output = f64>>(events: u64, broker_pid: &str, round: F) -> [f64; 3] {
    let (me0, broker0) = (cpu_seconds("self"), cpu_seconds(broker_pid));
    let rate = round.await;
    let per_event = |s: f64| s * 1e6 / events as f64;
    [rate, per_event(cpu_seconds("self") - me0), per_event(cpu_seconds(broker_pid) - broker0)]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Latencies of the 202 answers (sorted) and the number of other answers.
async fn latency(client: &reqwest::Client, url: &str, secs: u64) -> (Vec<Duration>, usize) {
    let total = secs * 1000;
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let gate = Arc::new(tokio::sync::Semaphore::new(512));
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let scheduled = start + Duration::from_millis(i);
        tokio::time::sleep_until(scheduled).await;
        let permit = gate.clone().acquire_owned().await.unwrap();
        let (client, url) = (client.clone(), url.to_owned());
        let body = event_json(10_000_000 + i);
        tasks.push(tokio::spawn(async move {
            let resp = client.post(&url).header("content-type", "application/json").body(body).send().await.unwrap();
            let status = resp.status().as_u16();
            let _ = resp.bytes().await.unwrap();
            drop(permit);
            (status == 202).then(|| scheduled.elapsed())
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            Some(d) => out.push(d),
            None => refused += 1,
        }
    }
    out.sort();
    (out, refused)
}

fn main() {
    let events = env("BENCH_EVENTS", 200_000) / 100 * 100;
    let rounds = env("BENCH_ROUNDS", 5);
    let concurrency = env("BENCH_CONCURRENCY", 64) as usize;
    let latency_secs = env("BENCH_LATENCY_SECS", 20);
    let linger = Duration::from_millis(env("BENCH_LINGER_MS", 5));
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let broker = TestBroker::start();
        broker.create_topics(&[TopicSpec::new("bench.raw", 8)]).await;
        let mut config = Config::new(broker.kafka_args());
        config.events_partitions = 8;
        config.linger = linger;
        config.worker_id = Some(1);
        // measure the pipeline, not the limiters
        config.rate_limit_per_second = 0;
        config.rate_limit_events_per_second = 0;
        let ingest = chatpipe_ingest::start(config, Telemetry::new()).await.unwrap();
        assert!(ingest.wait_ready(Duration::from_secs(30)).await, "ingest ready");
        let url = format!("http://{}/v1/events", ingest.local_addr());
        let client = reqwest::Client::builder().pool_max_idle_per_host(1024).build().unwrap();

        // The same events for both paths: JSON batches for HTTP, envelope-encoded ChatEvents
        // (what ingest produces) for the raw loop.
        let bodies = Arc::new((0..events / 100).map(|b| batch_body(b * 100, 100)).collect::<Vec<_>>());
        let payloads: Vec<(String, Vec<u8>)> = (0..events)
            .map(|i| {
                let input = event::parse_event(event_json(i).as_bytes()).unwrap();
                let ev = ChatEvent::from_input(input, 1 << 40 | i, 1_790_000_000_000, 60_000);
                (ev.session_id.to_string(), envelope::encode(&ev).unwrap())
            })
            .collect();
        let avg_json = bodies[0].len() / 100;
        let avg_value = payloads.iter().map(|p| p.1.len()).sum::<usize>() / payloads.len();
        let raw: FutureProducer =
            broker.kafka_args().producer_config("bench-raw", linger.as_millis() as u64).create().unwrap();
        let raw_cb: ThreadedProducer<Counting> = broker
            .kafka_args()
            .producer_config("bench-raw-cb", linger.as_millis() as u64)
            .create_with_context(Counting::default())
            .unwrap();

        println!("ingest benchmark: tansu (memory) on loopback, linger {linger:?}, {events} events per round");
        println!("event: {avg_json} B of JSON, {avg_value} B envelope; HTTP: batches of 100, {concurrency} in flight");
        // Warm-up, a tenth of a round on each path: connections, metadata, producer ids, and
        // the first growth of every heap and of the broker's log (round 1 ran ~15% slow
        // on both paths with a token warm-up).
        let warm = (bodies.len() / 10).max(1);
        let _ = http_round(&client, &url, Arc::new(bodies[..warm].to_vec()), concurrency).await;
        let _ = raw_round(&raw, "bench.raw", &payloads[..warm * 100]).await;
        let _ = raw_round_callbacks(&raw_cb, "bench.raw", &payloads[..warm * 100]).await;
        let (mut raw_rates, mut http_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let floor_url = http_floor_server().await;
        let broker_pid = broker.pid().map(|p| p.to_string()).unwrap_or_default();
        let skip = [f64::NAN; 3];
        let (mut raw_cpu, mut http_cpu, mut cb_cpu, mut floor_cpu) = ([0.0; 2], [0.0; 2], [0.0; 2], [0.0; 2]);
        for round in 1..=rounds {
            let [r, r_me, r_broker] = if only.is_empty() || only == "raw" {
                measured(events, &broker_pid, raw_round(&raw, "bench.raw", &payloads)).await
            } else {
                skip
            };
            let [h, h_me, h_broker] = if only.is_empty() || only == "http" {
                measured(events, &broker_pid, http_round(&client, &url, bodies.clone(), concurrency)).await
            } else {
                skip
            };
            let [c, c_me, c_broker] = if only.is_empty() || only == "raw" {
                measured(events, &broker_pid, raw_round_callbacks(&raw_cb, "bench.raw", &payloads)).await
            } else {
                skip
            };
            let [f, f_me, _] = if only.is_empty() || only == "floor" {
                measured(events, &broker_pid, http_round(&client, &floor_url, bodies.clone(), concurrency)).await
            } else {
                skip
            };
            println!(
                "round {round}: raw producer {r:>7.0} ev/s | HTTP ingest {h:>7.0} ev/s | ratio {:.2} | raw with \
                 callbacks {c:>7.0} ev/s | HTTP alone (no parsing, no Kafka) {f:>7.0} ev/s",
                h / r
            );
            println!(
                "         CPU us/event (this process + broker): raw {r_me:.2} + {r_broker:.2} | HTTP {h_me:.2} + \
                 {h_broker:.2} | raw with callbacks {c_me:.2} + {c_broker:.2} | HTTP alone {f_me:.2}"
            );
            for (sum, v) in [
                (&mut raw_cpu, [r_me, r_broker]),
                (&mut http_cpu, [h_me, h_broker]),
                (&mut cb_cpu, [c_me, c_broker]),
                (&mut floor_cpu, [f_me, 0.0]),
            ] {
                sum[0] += v[0] / rounds as f64;
                sum[1] += v[1] / rounds as f64;
            }
            raw_rates.push(r);
            http_rates.push(h);
            ratios.push(h / r);
        }
        for v in [&mut raw_rates, &mut http_rates, &mut ratios] {
            v.sort_by(f64::total_cmp);
        }
        let median = |v: &[f64]| v[v.len() / 2];
        let (r, h) = (median(&raw_rates), median(&http_rates));
        println!(
            "median: raw producer {r:.0} ev/s, HTTP ingest {h:.0} ev/s, ratio of medians {:.2}, median of the \
             rounds' ratios {:.2} (target >= 0.85)",
            h / r,
            median(&ratios)
        );
        let (raw_total, http_total) = (raw_cpu[0] + raw_cpu[1], http_cpu[0] + http_cpu[1]);
        println!(
            "mean CPU us/event: raw {raw_total:.2} ({:.2} + broker {:.2}), HTTP {http_total:.2} ({:.2} + broker {:.2}), \
             of which HTTP alone {:.2}; raw/HTTP CPU {:.2}; raw with callbacks {:.2} ({:.2} + broker {:.2})",
            raw_cpu[0],
            raw_cpu[1],
            http_cpu[0],
            http_cpu[1],
            floor_cpu[0],
            raw_total / http_total,
            cb_cpu[0] + cb_cpu[1],
            cb_cpu[0],
            cb_cpu[1],
        );

        // Where the HTTP path's extra CPU goes: the per-event work ingest does that the raw
        // loop does not (parse + validate, stamp + encode), single-threaded.
        let t = Instant::now();
        let limits = event::ParseLimits::default();
        let mut parsed = Vec::with_capacity(events as usize);
        for b in bodies.iter() {
            parsed.extend(event::parse_body(b.as_bytes(), event::BodyFormat::Json, limits).unwrap());
        }
        let parse_us = t.elapsed().as_secs_f64() * 1e6 / events as f64;
        let t = Instant::now();
        let mut buf = Vec::new();
        for (i, input) in parsed.into_iter().enumerate() {
            let ev = ChatEvent::from_input(input, i as u64, 1_790_000_000_000, 60_000);
            envelope::encode_into(&ev, &mut buf).unwrap();
            std::hint::black_box((&buf, ev.session_id.to_string()));
        }
        let encode_us = t.elapsed().as_secs_f64() * 1e6 / events as f64;
        println!("CPU per event in ingest (1 thread): parse+validate {parse_us:.2} us, stamp+encode {encode_us:.2} us");

        let (lat, refused) = latency(&client, &url, latency_secs).await;
        println!(
            "single-event requests at 1000 req/s for {latency_secs} s ({} accepted, {refused} refused): p50 {:.2} ms, \
             p99 {:.2} ms, max {:.2} ms (target p99 <= linger + 10 ms = {} ms)",
            lat.len(),
            percentile(&lat, 0.50).as_secs_f64() * 1e3,
            percentile(&lat, 0.99).as_secs_f64() * 1e3,
            lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
            linger.as_millis() + 10
        );
        ingest.shutdown().await.unwrap();
        drop(raw);
        drop(broker);
    });
}
