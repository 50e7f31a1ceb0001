//! `chatpipe load`: a load generator against an ingest URL.
//!
//! Drives a realistic chat workload (direct, group and channel sessions; joins first, then
//! messages of a configurable kind mix and body sizes, and reads), at a target rate or as
//! fast as the pipeline accepts, from a bounded number of concurrent workers. Reports
//! events/s, HTTP latency percentiles, end-to-end latency percentiles (from the sink's
//! `/metrics` histogram, read before and after the run so only this run's rows count) and
//! errors by status. `--ledger` writes every accepted message; `--verify` waits for the
//! pipeline to drain, checks every accepted message is in HBase exactly once, and reports
//! the end-to-end rate (accepted events over the time until the last one is in HBase). A request that fails is counted, never retried with a new id, so the ledger
//! holds exactly what ingest acknowledged.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chatpipe_common::duration::parse_duration;
use chatpipe_common::event::{EventInput, EventType, MessageContent, MessageKind, SessionKind};
use chatpipe_common::row_key;
use chatpipe_common::rows::tables;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s.split_once("..").ok_or_else(|| format!("expected MIN..MAX, got {s:?}"))?;
    let a: u64 = a.trim().parse().map_err(|_| format!("bad minimum in {s:?}"))?;
    let b: u64 = b.trim().parse().map_err(|_| format!("bad maximum in {s:?}"))?;
    if a > b || a == 0 {
        return Err(format!("need 0 < MIN <= MAX in {s:?}"));
    }
    Ok((a, b))
}

/// Message kind weights.
#[derive(Debug, Clone)]
pub struct KindMix(pub Vec<(MessageKind, u32)>);

fn parse_mix(s: &str) -> Result<KindMix, String> {
    s.split(',')
        .map(|part| {
            let (k, w) = part.split_once('=').ok_or_else(|| format!("expected kind=weight, got {part:?}"))?;
            let kind = MessageKind::from_name(k.trim()).ok_or_else(|| format!("unknown kind {k:?}"))?;
            let w: u32 = w.trim().parse().map_err(|_| format!("bad weight in {part:?}"))?;
            Ok((kind, w))
        })
        .collect::<Result<Vec<_>, String>>()
        .map(KindMix)
}

/// Load generator flags.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Ingest base URL.
    #[arg(long, env = "CHATPIPE_LOAD_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Target events per second over all workers; 0 = as fast as accepted.
    #[arg(long, env = "CHATPIPE_LOAD_RATE", default_value_t = 0)]
    pub rate: u64,
    /// Stop after this long (e.g. 60s).
    #[arg(long, env = "CHATPIPE_LOAD_DURATION", value_parser = parse_duration, conflicts_with = "events")]
    pub duration: Option<Duration>,
    /// Stop after this many messages (default 10000 when no --duration); the joins a group
    /// needs before its first message are sent in addition.
    #[arg(long, env = "CHATPIPE_LOAD_EVENTS")]
    pub events: Option<u64>,
    /// Number of sessions.
    #[arg(long, env = "CHATPIPE_LOAD_SESSIONS", default_value_t = 500)]
    pub sessions: u64,
    /// Group size range MIN..MAX (uniform); direct sessions have 2.
    #[arg(long, env = "CHATPIPE_LOAD_GROUP_SIZE", default_value = "3..30", value_parser = parse_range)]
    pub group_size: (u64, u64),
    /// Body size range in bytes MIN..MAX (uniform).
    #[arg(long, env = "CHATPIPE_LOAD_BODY_SIZE", default_value = "20..400", value_parser = parse_range)]
    pub body_size: (u64, u64),
    /// Message kind mix as kind=weight pairs.
    #[arg(long, env = "CHATPIPE_LOAD_KIND_MIX", default_value = "text=85,image=8,audio=2,video=1,file=2,card=2", value_parser = parse_mix)]
    pub kind_mix: KindMix,
    /// Events per HTTP request (a JSON array when > 1).
    #[arg(long, env = "CHATPIPE_LOAD_BATCH", default_value_t = 1)]
    pub batch: usize,
    /// Concurrent requests.
    #[arg(long, env = "CHATPIPE_LOAD_CONCURRENCY", default_value_t = 32)]
    pub concurrency: usize,
    /// API key sent as `Authorization: Bearer` (not shown in logs).
    #[arg(long, env = "CHATPIPE_LOAD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Write every accepted message (`session,message_id,client_msg_id`) to this file.
    #[arg(long, env = "CHATPIPE_LOAD_LEDGER")]
    pub ledger: Option<PathBuf>,
    /// After the run, wait for the pipeline to drain and check every accepted message is in
    /// `chat:messages` exactly once.
    #[arg(long)]
    pub verify: bool,
    /// HBase Thrift server for --verify.
    #[arg(long, env = "CHATPIPE_HBASE_THRIFT", default_value = "127.0.0.1:9090")]
    pub hbase_thrift: String,
    /// How long --verify waits for the pipeline to drain.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub verify_timeout: Duration,
    /// The sink's metrics URL, for end-to-end latency percentiles.
    #[arg(long, env = "CHATPIPE_LOAD_METRICS_URL", default_value = "http://127.0.0.1:9464/metrics")]
    pub metrics_url: String,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Benchmark baseline: instead of HTTP, produce the same events (envelope-encoded, with
    /// the idempotent acks=all producer ingest uses) straight to this broker's topic
    /// `chatpipe.bench.raw`, to measure the broker's raw produce ceiling.
    #[arg(long)]
    pub raw_kafka_brokers: Option<String>,
    /// A librdkafka property for the `--raw-kafka-brokers` producer (`key=value`,
    /// repeatable), to give the baseline the producer settings of the roles it is compared
    /// with (as `--kafka-option` does for a role).
    #[arg(long = "raw-kafka-option", value_parser = chatpipe_common::kafka::parse_kafka_option)]
    pub raw_kafka_options: Vec<chatpipe_common::kafka::KafkaOption>,
    /// Random seed (sessions and bodies).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// One accepted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Session.
    pub session: u64,
    /// Assigned id.
    pub message_id: u64,
    /// The producer key.
    pub client_msg_id: String,
}

#[derive(Debug, Clone, Copy)]
struct SessionPlan {
    id: u64,
    kind: SessionKind,
    size: u64,
}

/// The final report.
#[derive(Debug, Default)]
pub struct Report {
    /// Events accepted (202), joins included.
    pub accepted: u64,
    /// Messages accepted.
    pub accepted_messages: u64,
    /// Events sent in failed requests, by HTTP status (0 = transport error).
    pub failed_by_status: BTreeMap<u16, u64>,
    /// Wall time.
    pub elapsed: Duration,
    /// HTTP latency p50/p95/p99 in ms.
    pub http_ms: (f64, f64, f64),
    /// Accepted messages.
    pub ledger: Vec<Accepted>,
    /// Messages never acknowledged when the run ended (they may or may not be stored).
    pub uncertain: Vec<(u64, String)>,
    /// Missing and duplicated, when verified.
    pub verified: Option<(u64, u64)>,
    /// With `--verify`: from the start of the run until every accepted message was found in
    /// HBase (the end-to-end time of the whole run).
    pub drained_after: Option<Duration>,
}

struct Shared {
    args: LoadArgs,
    plans: Vec<SessionPlan>,
    joined: Mutex<HashMap<u64, bool>>,
    sent: AtomicU64,
    target: Option<u64>,
    deadline: Option<Instant>,
    stop: AtomicBool,
    accepted: AtomicU64,
    accepted_messages: AtomicU64,
    failed: Mutex<BTreeMap<u16, u64>>,
    latency: Mutex<hdrhistogram::Histogram<u64>>,
    ledger: Mutex<Vec<Accepted>>,
    uncertain: Mutex<Vec<(u64, String)>>,
    started: Instant,
    kind_total: u32,
}

impl Shared {
    fn pick_kind(&self, rng: &mut StdRng) -> MessageKind {
        let mut x = rng.gen_range(0..self.kind_total.max(1));
        for (k, w) in &self.args.kind_mix.0 {
            if x < *w {
                return *k;
            }
            x -= w;
        }
        MessageKind::Text
    }
}

fn member(session: u64, j: u64) -> u64 {
    session.wrapping_mul(64).wrapping_add(j) % (i64::MAX as u64) + 1
}

fn body(rng: &mut StdRng, (min, max): (u64, u64)) -> String {
    const WORDS: &[&str] = &[
        "hey", "are", "you", "coming", "to", "the", "standup", "ok", "lunch", "at", "noon", "🙂", "shipping", "today",
    ];
    let n = rng.gen_range(min..=max) as usize;
    let mut s = String::with_capacity(n + 8);
    while s.len() < n {
        s.push_str(WORDS[rng.gen_range(0..WORDS.len())]);
        s.push(' ');
    }
    s.truncate(s.char_indices().take_while(|(i, _)| *i < n).last().map_or(0, |(i, c)| i + c.len_utf8()));
    s
}

/// Builds the next request's events for one session (joins first for groups/channels).
fn next_events(shared: &Shared, rng: &mut StdRng, seq: &mut u64, worker: usize) -> Vec<EventInput> {
    let mut out = Vec::with_capacity(shared.args.batch);
    while out.len() < shared.args.batch {
        let plan = shared.plans[rng.gen_range(0..shared.plans.len())];
        let needs_join = plan.kind != SessionKind::Direct && {
            let mut j = shared.joined.lock().unwrap_or_else(|p| p.into_inner());
            let first = !j.contains_key(&plan.id);
            j.insert(plan.id, true);
            first
        };
        if needs_join {
            for k in 0..plan.size {
                out.push(EventInput {
                    event_type: EventType::Join,
                    session_id: plan.id,
                    session_kind: plan.kind,
                    sender_id: member(plan.id, k),
                    recipient_id: None,
                    client_msg_id: None,
                    sent_at_ms: None,
                    message: None,
                    target_id: None,
                    user_id: Some(member(plan.id, k)),
                    read_seq: None,
                    name: None,
                    avatar_url: None,
                });
            }
        }
        *seq += 1;
        let sender = member(plan.id, rng.gen_range(0..plan.size));
        let recipient = (plan.kind == SessionKind::Direct).then(|| {
            if sender == member(plan.id, 0) {
                member(plan.id, 1)
            } else {
                member(plan.id, 0)
            }
        });
        out.push(EventInput {
            event_type: EventType::Message,
            session_id: plan.id,
            session_kind: plan.kind,
            sender_id: sender,
            recipient_id: recipient,
            client_msg_id: Some(format!("load-{}-{worker}-{seq}", shared.args.seed)),
            sent_at_ms: None,
            message: Some(MessageContent {
                kind: shared.pick_kind(rng),
                body: body(rng, shared.args.body_size),
                mentions: vec![],
            }),
            target_id: None,
            user_id: None,
            read_seq: None,
            name: None,
            avatar_url: None,
        });
    }
    out
}

async fn worker(shared: Arc<Shared>, client: reqwest::Client, idx: usize, pb: indicatif::ProgressBar) {
    let mut rng = StdRng::seed_from_u64(shared.args.seed.wrapping_mul(7919).wrapping_add(idx as u64));
    let mut seq = 0u64;
    let url = format!("{}/v1/events", shared.args.url.trim_end_matches('/'));
    let per_worker_rate = (shared.args.rate > 0).then(|| shared.args.rate as f64 / shared.args.concurrency as f64);
    let mut next_at = Instant::now();
    // events ingest did not acknowledge: resent as they are (same client_msg_id), as a
    // well-behaved producer does, before anything new
    let mut pending: Vec<EventInput> = Vec::new();
    loop {
        let stopping = shared.stop.load(Ordering::Relaxed) || shared.deadline.is_some_and(|d| Instant::now() >= d);
        if stopping {
            break;
        }
        let events = if pending.is_empty() {
            let events = next_events(&shared, &mut rng, &mut seq, idx);
            // --events counts messages; the joins a group needs before its first message ride along
            let messages = events.iter().filter(|e| e.event_type == EventType::Message).count() as u64;
            if let Some(t) = shared.target {
                if shared.sent.fetch_add(messages, Ordering::Relaxed) >= t {
                    break;
                }
            }
            events
        } else {
            std::mem::take(&mut pending)
        };
        let n = events.len() as u64;
        if let Some(r) = per_worker_rate {
            next_at += Duration::from_secs_f64(n as f64 / r);
            if let Some(wait) = next_at.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
        }
        let body = if events.len() == 1 {
            events[0].to_json()
        } else {
            format!("[{}]", events.iter().map(EventInput::to_json).collect::<Vec<_>>().join(","))
        };
        let mut req = client.post(&url).header("content-type", "application/json").body(body);
        if let Some(k) = &shared.args.api_key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        let t0 = Instant::now();
        let resp = req.send().await;
        let us = t0.elapsed().as_micros() as u64;
        if let Ok(mut h) = shared.latency.lock() {
            let _ = h.record(us.max(1));
        }
        let (status, text) = match resp {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.text().await.unwrap_or_default())
            }
            Err(_) => (0, String::new()),
        };
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let mut acked = vec![None; events.len()];
        if let Some(results) = v["results"].as_array() {
            for res in results {
                let i = res["index"].as_u64().unwrap_or(u64::MAX) as usize;
                if res["status"] == "accepted" && i < acked.len() {
                    acked[i] = res["message_id"].as_str().and_then(|s| s.parse::<u64>().ok());
                }
            }
        }
        let retriable = status == 0 || status == 429 || status >= 500;
        let mut accepted = Vec::new();
        let (mut ok_events, mut ok_messages) = (0u64, 0u64);
        for (ev, id) in events.into_iter().zip(acked) {
            match id {
                Some(id) => {
                    ok_events += 1;
                    if ev.event_type == EventType::Message {
                        ok_messages += 1;
                        accepted.push(Accepted {
                            session: ev.session_id,
                            message_id: id,
                            client_msg_id: ev.client_msg_id.clone().unwrap_or_default(),
                        });
                    }
                }
                None if retriable => pending.push(ev),
                None => {}
            }
        }
        if status != 202 {
            if let Ok(mut f) = shared.failed.lock() {
                *f.entry(status).or_default() += n - ok_events;
            }
        }
        shared.accepted.fetch_add(ok_events, Ordering::Relaxed);
        shared.accepted_messages.fetch_add(ok_messages, Ordering::Relaxed);
        if let Ok(mut l) = shared.ledger.lock() {
            l.extend(accepted);
        }
        pb.inc(ok_messages);
        if !pending.is_empty() {
            let backoff = v["retry_after_ms"].as_u64().unwrap_or(100).min(2000);
            tokio::time::sleep(Duration::from_millis(backoff)).await;
        }
    }
    let uncertain: Vec<(u64, String)> = pending
        .iter()
        .filter(|e| e.event_type == EventType::Message)
        .map(|e| (e.session_id, e.client_msg_id.clone().unwrap_or_default()))
        .collect();
    if let Ok(mut u) = shared.uncertain.lock() {
        u.extend(uncertain);
    }
}

/// The broker's raw produce ceiling for the same events: a producer loop with the
/// configuration ingest uses, for `--duration` or `--events` messages.
async fn raw_ceiling(args: &LoadArgs, brokers: &str) -> Result<()> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let mut kafka = chatpipe_common::kafka::KafkaArgs::new(brokers);
    kafka.options.clone_from(&args.raw_kafka_options);
    chatpipe_common::kafka::ensure_topics(
        &kafka,
        &[chatpipe_common::kafka::TopicSpec::new("chatpipe.bench.raw", 4)],
        Duration::from_secs(30),
    )
    .await?;
    let producer: FutureProducer = kafka.producer_config("bench-raw", 5).create()?;
    let mut rng = StdRng::seed_from_u64(args.seed);
    let deadline = args.duration.map(|d| Instant::now() + d);
    let target = args.events.unwrap_or(u64::MAX);
    let started = Instant::now();
    let mut sent = 0u64;
    let mut id = 1u64 << 40;
    while sent < target && deadline.is_none_or(|d| Instant::now() < d) {
        let mut batch = Vec::with_capacity(1000);
        for _ in 0..1000 {
            id += 1;
            let session = rng.gen_range(0..args.sessions);
            let input = EventInput {
                event_type: EventType::Message,
                session_id: session + 1,
                session_kind: SessionKind::Group,
                sender_id: id % 50 + 1,
                recipient_id: None,
                client_msg_id: Some(format!("raw-{id}")),
                sent_at_ms: None,
                message: Some(MessageContent {
                    kind: MessageKind::Text,
                    body: body(&mut rng, args.body_size),
                    mentions: vec![],
                }),
                target_id: None,
                user_id: None,
                read_seq: None,
                name: None,
                avatar_url: None,
            };
            let ev =
                chatpipe_common::event::ChatEvent::from_input(input, id, chrono::Utc::now().timestamp_millis(), 60_000);
            batch.push((ev.session_id.to_string(), chatpipe_common::envelope::encode(&ev)?));
        }
        let sends: Vec<_> = batch
            .iter()
            .map(|(k, v)| {
                producer.send(FutureRecord::to("chatpipe.bench.raw").key(k).payload(v), Duration::from_secs(30))
            })
            .collect();
        for r in futures::future::join_all(sends).await {
            r.map_err(|(e, _)| e)?;
        }
        sent += 1000;
    }
    let secs = started.elapsed().as_secs_f64();
    println!("raw produce ceiling: {sent} events in {secs:.1} s = {:.0} events/s", sent as f64 / secs);
    Ok(())
}

/// Runs the load; prints progress unless `quiet`.
pub async fn generate(args: LoadArgs, stop: Option<Arc<AtomicBool>>) -> Result<Report> {
    if args.batch == 0 || args.concurrency == 0 || args.sessions == 0 {
        bail!("--batch, --concurrency and --sessions must be positive");
    }
    let mut rng = StdRng::seed_from_u64(args.seed);
    // session ids from the clock, so runs do not share sessions
    let base = (chrono::Utc::now().timestamp_millis() as u64 % 1_000_000_000) * 1_000_000;
    let plans: Vec<SessionPlan> = (0..args.sessions)
        .map(|i| {
            let roll = rng.gen_range(0..100);
            let (kind, size) = if roll < 40 {
                (SessionKind::Direct, 2)
            } else if roll < 97 {
                (SessionKind::Group, rng.gen_range(args.group_size.0..=args.group_size.1))
            } else {
                (SessionKind::Channel, rng.gen_range(args.group_size.0..=args.group_size.1))
            };
            SessionPlan { id: base + i, kind, size: size.max(2) }
        })
        .collect();
    let target = match (args.events, args.duration) {
        (Some(n), _) => Some(n),
        (None, None) => Some(10_000),
        (None, Some(_)) => None,
    };
    let kind_total = args.kind_mix.0.iter().map(|(_, w)| *w).sum();
    let shared = Arc::new(Shared {
        deadline: args.duration.map(|d| Instant::now() + d),
        args: args.clone(),
        plans,
        joined: Mutex::new(HashMap::new()),
        sent: AtomicU64::new(0),
        target,
        stop: AtomicBool::new(false),
        accepted: AtomicU64::new(0),
        accepted_messages: AtomicU64::new(0),
        failed: Mutex::new(BTreeMap::new()),
        latency: Mutex::new(hdrhistogram::Histogram::new(3).context("histogram")?),
        ledger: Mutex::new(Vec::new()),
        uncertain: Mutex::new(Vec::new()),
        started: Instant::now(),
        kind_total,
    });
    let pb = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        let pb = match target {
            Some(t) => indicatif::ProgressBar::new(t),
            None => indicatif::ProgressBar::new_spinner(),
        };
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} events ({per_sec})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        pb
    };
    let client = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency).build().context("HTTP client")?;
    let mut tasks = Vec::new();
    for i in 0..args.concurrency {
        tasks.push(tokio::spawn(worker(shared.clone(), client.clone(), i, pb.clone())));
    }
    if let Some(stop) = stop {
        let s = shared.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            s.stop.store(true, Ordering::Relaxed);
        });
    }
    for t in tasks {
        let _ = t.await;
    }
    pb.finish_and_clear();
    let elapsed = shared.started.elapsed();
    let http_ms = {
        let h = shared.latency.lock().map_err(|_| anyhow::anyhow!("latency lock poisoned"))?;
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        (ms(0.5), ms(0.95), ms(0.99))
    };
    let mut report = Report {
        accepted: shared.accepted.load(Ordering::Relaxed),
        accepted_messages: shared.accepted_messages.load(Ordering::Relaxed),
        failed_by_status: shared.failed.lock().map(|f| f.clone()).unwrap_or_default(),
        elapsed,
        http_ms,
        ledger: shared.ledger.lock().map(|l| l.clone()).unwrap_or_default(),
        uncertain: shared.uncertain.lock().map(|u| u.clone()).unwrap_or_default(),
        verified: None,
        drained_after: None,
    };
    if let Some(path) = &args.ledger {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        );
        for a in &report.ledger {
            writeln!(f, "{},{},{}", a.session, a.message_id, a.client_msg_id)?;
        }
        f.flush()?;
    }
    if args.verify {
        let verified = verify(&args, &report.ledger, &report.uncertain, &shared.plans).await?;
        if verified.0 == 0 {
            report.drained_after = Some(shared.started.elapsed());
        }
        report.verified = Some(verified);
    }
    Ok(report)
}

/// Waits until every session's timeline holds its accepted messages (or the timeout),
/// then counts missing and duplicated messages per session. Rows are keyed by message id,
/// and a resent event may have been stored under the id of an earlier, unacknowledged
/// attempt (the processor keeps the first copy of a `client_msg_id`), so the check is by
/// count: a session must hold exactly as many messages as were accepted for it (plus at
/// most the messages still unacknowledged when the run ended).
async fn verify(
    args: &LoadArgs,
    ledger: &[Accepted],
    uncertain: &[(u64, String)],
    plans: &[SessionPlan],
) -> Result<(u64, u64)> {
    let mut expected: HashMap<u64, (u64, u64)> = HashMap::new();
    for a in ledger {
        expected.entry(a.session).or_default().0 += 1;
    }
    for (session, _) in uncertain {
        expected.entry(*session).or_default().1 += 1;
    }
    let kinds: HashMap<u64, SessionKind> = plans.iter().map(|p| (p.id, p.kind)).collect();
    let addr = args.hbase_thrift.clone();
    let deadline = Instant::now() + args.verify_timeout;
    tokio::task::spawn_blocking(move || -> Result<(u64, u64)> {
        let mut client = chatpipe_sink::hbase::HbaseClient::connect(&chatpipe_sink::hbase::HbaseConfig::new(addr))?;
        loop {
            let mut missing = 0u64;
            let mut duplicated = 0u64;
            for (session, (accepted, maybe)) in &expected {
                let table = if kinds.get(session) == Some(&SessionKind::Channel) {
                    tables::CHANNEL_MESSAGES
                } else {
                    tables::MESSAGES
                };
                let prefix = row_key::prefix(*session);
                let mut stop = prefix.clone().into_bytes();
                if let Some(last) = stop.last_mut() {
                    *last += 1;
                }
                let found = client.scan(table, prefix.as_bytes(), &stop, &["m:seq"], None)?.len() as u64;
                missing += accepted.saturating_sub(found);
                duplicated += found.saturating_sub(accepted + maybe);
            }
            if (missing == 0 && duplicated == 0) || Instant::now() > deadline {
                return Ok((missing, duplicated));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    })
    .await?
}

/// The sink's end-to-end latency histogram on `url`: `(upper bound, cumulative count)` per
/// bucket, or `None` when it cannot be read.
pub async fn e2e_histogram(url: &str) -> Option<Vec<(f64, f64)>> {
    let text = reqwest::get(url).await.ok()?.text().await.ok()?;
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("chatpipe_sink_end_to_end_latency_seconds_bucket{") {
            let le = rest.split("le=\"").nth(1)?.split('"').next()?;
            let le: f64 = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            let count: f64 = rest.rsplit(' ').next()?.parse().ok()?;
            buckets.push((le, count));
        }
    }
    (!buckets.is_empty()).then_some(buckets)
}

/// p50, p95, p99 (upper bucket bounds, seconds) of the rows counted between two snapshots of
/// the histogram, so rows of earlier runs against the same stack do not count.
pub fn e2e_percentiles(before: &[(f64, f64)], after: &[(f64, f64)]) -> Option<(f64, f64, f64)> {
    let delta: Vec<(f64, f64)> =
        after.iter().map(|(le, n)| (*le, n - before.iter().find(|(b, _)| b == le).map_or(0.0, |b| b.1))).collect();
    let total = delta.iter().map(|b| b.1).fold(0.0, f64::max);
    if total <= 0.0 {
        return None;
    }
    let q = |p: f64| delta.iter().find(|(_, c)| *c >= p * total).map_or(f64::INFINITY, |b| b.0);
    Some((q(0.5), q(0.95), q(0.99)))
}

/// `chatpipe load`.
pub async fn run(args: LoadArgs) -> Result<()> {
    if let Some(brokers) = args.raw_kafka_brokers.clone() {
        return raw_ceiling(&args, &brokers).await;
    }
    let metrics_url = args.metrics_url.clone();
    let verify = args.verify;
    let before = e2e_histogram(&metrics_url).await.unwrap_or_default();
    let report = generate(args, None).await?;
    let secs = report.elapsed.as_secs_f64().max(1e-9);
    println!(
        "accepted events:   {} in {:.1} s = {:.0} events/s ({} messages, the rest group joins)",
        report.accepted,
        secs,
        report.accepted as f64 / secs,
        report.accepted_messages
    );
    println!(
        "HTTP latency:      p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms",
        report.http_ms.0, report.http_ms.1, report.http_ms.2
    );
    match e2e_histogram(&metrics_url).await.and_then(|after| e2e_percentiles(&before, &after)) {
        Some((a, b, c)) => println!(
            "end-to-end (ingest→HBase ack, rows of this run, bucket bounds): p50 ≤ {a} s, p95 ≤ {b} s, p99 ≤ {c} s"
        ),
        None => println!("end-to-end latency: not available from {metrics_url}"),
    }
    if let Some(d) = report.drained_after {
        println!(
            "end-to-end rate:   every accepted message in HBase {:.1} s after the start = {:.0} events/s",
            d.as_secs_f64(),
            report.accepted as f64 / d.as_secs_f64().max(1e-9)
        );
    }
    if report.failed_by_status.is_empty() {
        println!("errors:            none");
    } else {
        for (status, n) in &report.failed_by_status {
            let what = if *status == 0 { "transport".to_string() } else { format!("HTTP {status}") };
            println!("errors:            {n} events in {what} responses");
        }
    }
    if verify {
        let (missing, duplicated) = report.verified.unwrap_or((u64::MAX, u64::MAX));
        println!(
            "verify:            {} messages accepted ({} unacknowledged at the end), {missing} missing, {duplicated} duplicated",
            report.ledger.len(),
            report.uncertain.len()
        );
        if missing > 0 || duplicated > 0 {
            bail!("verification failed: {missing} missing, {duplicated} duplicated");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_count_only_the_rows_between_the_snapshots() {
        // an earlier run left 1,000 rows at ≤ 30 s; this run adds 100 rows: 90 ≤ 0.25 s, 10 ≤ 0.5 s
        let before = vec![(0.25, 0.0), (0.5, 0.0), (30.0, 1000.0), (f64::INFINITY, 1000.0)];
        let after = vec![(0.25, 90.0), (0.5, 100.0), (30.0, 1100.0), (f64::INFINITY, 1100.0)];
        assert_eq!(e2e_percentiles(&before, &after), Some((0.25, 0.5, 0.5)));
        // without the snapshot the old rows dominate
        assert_eq!(e2e_percentiles(&[], &after), Some((30.0, 30.0, 30.0)));
        assert_eq!(e2e_percentiles(&after, &after), None);
    }
}
