//! `chatpipe load`: a load generator against an ingest URL.
//!
//! Drives a realistic chat workload (direct, group and channel sessions; joins first, then
//! messages of a configurable kind mix and body sizes, and reads), at a target rate or as
//! fast as the pipeline accepts, from a bounded number of concurrent workers. Reports
//! events/s, HTTP latency percentiles, end-to-end latency percentiles (from the sink's
//! `/metrics` histogram, read before and after the run so only this run's rows count) and
//! errors by status. `--ledger` writes every accepted message; `--verify` waits for the
//! pipeline to drain, checks every accepted message is in HBase exactly once, and reports
//! the end-to-end rate (accepted events over the time until the last one is in HBase). A
//! request that fails is resent as it was (same `client_msg_id`) and never with a new id, so
//! the ledger holds exactly what ingest acknowledged.
//!
//! Files: this one holds the flags, the report and `run`; `generate.rs` the workers;
//! `verify.rs` the HBase check and the latency histogram; `raw.rs` the broker baseline.

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

mod generate;
mod raw;
mod verify;

pub use generate::generate;
use raw::raw_ceiling;
pub use verify::{e2e_histogram, e2e_percentiles};

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
