//! The generator: the session plan, the workers that post batches (resending what ingest
//! did not acknowledge, same `client_msg_id`), and the report they add up to.

use super::verify::verify;
use super::*;

#[derive(Debug, Clone, Copy)]
pub(super) struct SessionPlan {
    pub(super) id: u64,
    pub(super) kind: SessionKind,
    pub(super) size: u64,
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

pub(super) fn body(rng: &mut StdRng, (min, max): (u64, u64)) -> String {
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
        let content =
            MessageContent { kind: shared.pick_kind(rng), body: body(rng, shared.args.body_size), mentions: vec![] };
        let client_msg_id = format!("load-{}-{worker}-{seq}", shared.args.seed);
        out.push(message_input((plan.id, plan.kind), sender, recipient, client_msg_id, content));
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

/// A message event of `sender` in `session` (id and kind), with every other field absent.
pub(super) fn message_input(
    (session_id, session_kind): (u64, SessionKind),
    sender_id: u64,
    recipient_id: Option<u64>,
    client_msg_id: String,
    message: MessageContent,
) -> EventInput {
    EventInput {
        event_type: EventType::Message,
        session_id,
        session_kind,
        sender_id,
        recipient_id,
        client_msg_id: Some(client_msg_id),
        sent_at_ms: None,
        message: Some(message),
        target_id: None,
        user_id: None,
        read_seq: None,
        name: None,
        avatar_url: None,
    }
}
