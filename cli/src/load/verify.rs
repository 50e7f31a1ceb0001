//! What a run is checked against: every accepted message in HBase exactly once (`--verify`),
//! and the end-to-end latency histogram of the sink's `/metrics` before and after the run.

use super::generate::SessionPlan;
use super::*;

/// Waits until every session's timeline holds its accepted messages (or the timeout),
/// then counts missing and duplicated messages per session. Rows are keyed by message id,
/// and a resent event may have been stored under the id of an earlier, unacknowledged
/// attempt (the processor keeps the first copy of a `client_msg_id`), so the check is by
/// count: a session must hold exactly as many messages as were accepted for it (plus at
/// most the messages still unacknowledged when the run ended).
pub(super) async fn verify(
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
