//! Read latency of `chatpipe serve` at fixed request rates against the HBase emulator.
//!
//! Loads `SESSIONS × PER_SESSION` messages (default 1,000 × 1,000 = 1M) into
//! `chat:messages` in the DESIGN v2 layout, plus `USERS` users with `INBOX_PER_USER` inbox
//! rows each, every user a member of 10 small groups and of one large group (1,000 members,
//! above the fan-out threshold of 500, so every inbox page merges its timeline). Then, for
//! each rate, an open-loop driver sends `GET /v1/sessions/{random}/messages?limit=50` (or
//! `GET /v1/users/{random}/inbox?limit=50`) at that fixed rate for `SECONDS`, measuring each
//! latency from the request's scheduled time (so queueing behind a slow server counts), and
//! prints p50/p99/max, the achieved rate, errors, and HBase operations per request (from
//! serve's own `chatpipe_serve_request_hbase_calls`).
//!
//! Everything (driver, serve, emulator) runs in this process, sharing the machine's cores.
//! `cargo bench -p chatpipe-serve --bench serve_read` (env: `SERVE_BENCH_SESSIONS`,
//! `SERVE_BENCH_PER_SESSION`, `SERVE_BENCH_RATES` e.g. `200,500,1000`, `SERVE_BENCH_SECONDS`,
//! `SERVE_BENCH_ROUTES` e.g. `inbox`, `SERVE_BENCH_INBOX_CACHE_TTL` in seconds, `0` for
//! serve without its large-group cache, or a list such as `30,0`: one serve each, every rate
//! run on each in turn). Serve runs without push, so the cache's entries
//! live their TTL: after a user's first page, an inbox page reads the inbox and the large
//! group's timeline only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use chatpipe_common::http::Telemetry;
use chatpipe_common::row_key;
use chatpipe_sink::hbase::{HbaseClient, HbaseConfig};
use hbase_thrift::hbase::{BatchMutation, ColumnDescriptor, Mutation};
use hdrhistogram::Histogram;
use rand::Rng;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

const T0: i64 = 1_767_225_600_000;
const USERS: u64 = 200;
const INBOX_PER_USER: u64 = 500;
const LARGE: u64 = 1; // session 1 is the large group
const LARGE_MEMBERS: u64 = 1000;

fn put(key: String, cells: Vec<(&str, Vec<u8>)>) -> BatchMutation {
    BatchMutation {
        row: Some(key.into_bytes()),
        mutations: Some(
            cells
                .into_iter()
                .map(|(c, v)| Mutation {
                    is_delete: Some(false),
                    column: Some(c.as_bytes().to_vec()),
                    value: Some(v),
                    write_to_w_a_l: Some(true),
                })
                .collect(),
        ),
    }
}

fn id_key(id: u64) -> String {
    let mut p = row_key::prefix(id);
    p.pop();
    p
}

fn msg_id(session: u64, seq: u64) -> u64 {
    7_000_000_000_000_000 + seq * 1_000_000 + session
}

fn load(thrift: &str, sessions: u64, per_session: u64) {
    let mut c = HbaseClient::connect(&HbaseConfig::new(thrift)).unwrap();
    chatpipe_sink::tables::create_all(&mut c).unwrap();
    for (table, family) in [("chat:sessions", "s"), ("chat:users", "u")] {
        if !c.table_names().unwrap().iter().any(|t| t == table) {
            let cd = ColumnDescriptor {
                name: Some(format!("{family}:").into_bytes()),
                max_versions: Some(1),
                compression: Some("NONE".into()),
                in_memory: Some(false),
                bloom_filter_type: Some("ROW".into()),
                bloom_filter_vector_size: Some(0),
                bloom_filter_nb_hashes: Some(0),
                block_cache_enabled: Some(true),
                time_to_live: Some(i32::MAX),
            };
            c.create_table(table, vec![cd]).unwrap();
        }
    }
    let started = Instant::now();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let thrift = thrift.to_owned();
            std::thread::spawn(move || {
                let mut c = HbaseClient::connect(&HbaseConfig::new(thrift)).unwrap();
                let body =
                    "a chat message of about a hundred bytes, which is what most chat messages are, or less".as_bytes();
                for s in (1..=sessions).filter(|s| s % 4 == t) {
                    let mut batch = Vec::with_capacity(1000);
                    for seq in 1..=per_session {
                        batch.push(put(
                            row_key::encode(s, msg_id(s, seq)),
                            vec![
                                ("m:sender", (seq % 1000).to_string().into_bytes()),
                                ("m:kind", b"text".to_vec()),
                                ("m:body", body.to_vec()),
                                ("m:sent_at", (T0 + seq as i64 * 1000).to_string().into_bytes()),
                                ("m:seq", seq.to_string().into_bytes()),
                            ],
                        ));
                        if batch.len() == 1000 {
                            c.mutate_rows("chat:messages", std::mem::take(&mut batch)).unwrap();
                        }
                    }
                    if !batch.is_empty() {
                        c.mutate_rows("chat:messages", batch).unwrap();
                    }
                    let members = if s == LARGE { LARGE_MEMBERS } else { 10 };
                    c.mutate_rows(
                        "chat:sessions",
                        vec![put(
                            id_key(s),
                            vec![
                                ("s:kind", b"group".to_vec()),
                                ("s:created_at", T0.to_string().into_bytes()),
                                ("s:members", members.to_string().into_bytes()),
                                ("s:last_seq", per_session.to_string().into_bytes()),
                                ("s:last_message_id", msg_id(s, per_session).to_string().into_bytes()),
                            ],
                        )],
                    )
                    .unwrap();
                }
                for u in (1..=USERS).filter(|u| u % 4 == t) {
                    let mut batch = Vec::new();
                    for i in 1..=INBOX_PER_USER {
                        let s = 2 + (u + i) % 10;
                        batch.push(put(
                            row_key::encode(u, msg_id(s, i)),
                            vec![
                                ("i:session", s.to_string().into_bytes()),
                                ("i:sender", (i % 1000).to_string().into_bytes()),
                                ("i:kind", b"text".to_vec()),
                                ("i:preview", b"a chat message".to_vec()),
                                ("i:seq", i.to_string().into_bytes()),
                            ],
                        ));
                    }
                    c.mutate_rows("chat:inbox", batch).unwrap();
                    let mut us = Vec::new();
                    for s in std::iter::once(LARGE).chain((0..10).map(|k| 2 + k)) {
                        us.push(put(
                            row_key::encode_pair(u, s),
                            vec![
                                ("f:joined_at", T0.to_string().into_bytes()),
                                ("f:joined_seq", b"0".to_vec()),
                                ("f:read_seq", b"0".to_vec()),
                            ],
                        ));
                    }
                    c.mutate_rows("chat:user_sessions", us).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    println!(
        "loaded {} messages in {} sessions, {} inbox rows, in {:.1} s",
        sessions * per_session,
        sessions,
        USERS * INBOX_PER_USER,
        started.elapsed().as_secs_f64()
    );
}

fn calls(t: &Telemetry, route: &str) -> (f64, u64) {
    for f in t.registry.gather() {
        if f.name() != chatpipe_serve::metrics::REQUEST_HBASE_CALLS {
            continue;
        }
        for m in f.get_metric() {
            if m.get_label().iter().any(|l| l.value() == route) {
                return (m.get_histogram().get_sample_sum(), m.get_histogram().get_sample_count());
            }
        }
    }
    (0.0, 0)
}

async fn run_rate(base: &str, what: &str, rate: u64, seconds: u64, sessions: u64, t: &Telemetry) -> (bool, String) {
    let client = reqwest::Client::builder().pool_max_idle_per_host(512).build().unwrap();
    let hist = Arc::new(parking_lot::Mutex::new(Histogram::<u64>::new(3).unwrap()));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let route = if what == "messages" { "/v1/sessions/{session}/messages" } else { "/v1/users/{user}/inbox" };
    let before = calls(t, route);
    let total = rate * seconds;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    let sem = Arc::new(tokio::sync::Semaphore::new(1024));
    for i in 0..total {
        let scheduled = start + interval * i as u32;
        tokio::time::sleep_until(scheduled.into()).await;
        let url = if what == "messages" {
            format!("{base}/v1/sessions/{}/messages?limit=50", rand::thread_rng().gen_range(1..=sessions))
        } else {
            format!("{base}/v1/users/{}/inbox?limit=50", rand::thread_rng().gen_range(1..=USERS))
        };
        let (client, hist, errors, sem) = (client.clone(), hist.clone(), errors.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await;
            let ok = match client.get(&url).send().await {
                Ok(r) if r.status() == 200 => r.bytes().await.is_ok(),
                _ => false,
            };
            if !ok {
                errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let us = scheduled.elapsed().as_micros() as u64;
            let _ = hist.lock().record(us.max(1));
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let h = hist.lock();
    let after = calls(t, route);
    let per_req = (after.0 - before.0) / ((after.1 - before.1).max(1) as f64);
    let achieved = total as f64 / elapsed;
    let errs = errors.load(std::sync::atomic::Ordering::Relaxed);
    let p99_ms = h.value_at_quantile(0.99) as f64 / 1000.0;
    let line = format!(
        "{what:>8} rate {rate:>5}/s achieved {achieved:>7.0}/s  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>8.2} ms  errors {errs}  HBase ops/request {per_req:.2}",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms,
        h.max() as f64 / 1000.0,
    );
    let sustained = errs == 0 && achieved >= 0.95 * rate as f64 && p99_ms < 100.0;
    (sustained, line)
}

fn main() {
    let sessions = env("SERVE_BENCH_SESSIONS", 1000);
    let per_session = env("SERVE_BENCH_PER_SESSION", 1000);
    let seconds = env("SERVE_BENCH_SECONDS", 10);
    let rates: Vec<u64> = std::env::var("SERVE_BENCH_RATES")
        .unwrap_or_else(|_| "100,200,400,800,1200,1600".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let hbase = chatpipe_tests::TestHbase::start();
    load(&hbase.thrift(), sessions, per_session);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        // one serve per cache TTL, on the same emulator; each rate runs on each in turn, so
        // the variants see the same data and, as far as possible, the same machine load
        let ttls: Vec<Option<u64>> = match std::env::var("SERVE_BENCH_INBOX_CACHE_TTL") {
            Ok(v) => {
                v.split(',').map(|t| Some(t.trim().parse().expect("SERVE_BENCH_INBOX_CACHE_TTL: seconds"))).collect()
            }
            Err(_) => vec![None],
        };
        let mut serves = Vec::new();
        for ttl in ttls {
            let telemetry = Telemetry::new();
            let mut cfg = chatpipe_serve::Config::new(
                chatpipe_sink::HbaseArgs::new(hbase.thrift()),
                chatpipe_common::kafka::KafkaArgs::new("127.0.0.1:1"),
            );
            cfg.no_push = true;
            cfg.rate_limit_per_second = 0;
            if let Some(ttl) = ttl {
                cfg.inbox_cache_ttl = Duration::from_secs(ttl);
            }
            let label = format!("cache ttl {}s", cfg.inbox_cache_ttl.as_secs());
            let serve = chatpipe_serve::start(cfg, telemetry.clone()).await.unwrap();
            let base = format!("http://{}", serve.local_addr());
            // warm the session-kind cache (a timeline page is then one scan)
            let client = reqwest::Client::new();
            for s in 1..=sessions {
                client.get(format!("{base}/v1/sessions/{s}")).send().await.unwrap();
            }
            serves.push((label, serve, base, telemetry, true, 0u64));
        }
        let routes = std::env::var("SERVE_BENCH_ROUTES").unwrap_or_else(|_| "messages,inbox".into());
        for what in ["messages", "inbox"].into_iter().filter(|w| routes.split(',').any(|r| r.trim() == *w)) {
            for s in serves.iter_mut() {
                (s.4, s.5) = (true, 0);
            }
            for &rate in &rates {
                for (label, _, base, telemetry, going, max) in serves.iter_mut().filter(|s| s.4) {
                    let (ok, line) = run_rate(base, what, rate, seconds, sessions, telemetry).await;
                    println!("{line}  [{label}]");
                    if ok {
                        *max = rate;
                    } else {
                        *going = false;
                    }
                }
            }
            for (label, _, _, _, _, max) in &serves {
                println!("{what} [{label}]: highest rate sustained (no errors, ≥95% achieved, p99 < 100 ms): {max}/s");
            }
        }
        for (_, serve, ..) in serves {
            serve.shutdown().await.unwrap();
        }
    });
}
