//! In-memory processor core throughput (no Kafka) and state restore time.
//!
//! Run: `cargo bench -p chatpipe-processor --bench core` (env `BENCH_EVENTS`, default
//! 1,000,000). Workload (the load generator's default mix): 10,000 sessions (groups of
//! 3–30 members joined up front, 10% direct), 20–400-byte text bodies with a
//! `client_msg_id`, one event in ten a read; batches of 2,000 as the runner does, each
//! finished 20 ms of wall time after the last (so `chat.unread` is coalesced per second).
//! `BENCH_PROFILE=count` turns fan-out and unread off (the counting path alone);
//! `BENCH_SKIP_RESTORE=1` stops after the throughput part (for profiles).
//! Prints events/s on one thread (= per core), then the time to encode a ≥1M-entry state
//! as changelog records, decode them and rebuild the state, and for the run's state and
//! that one: a checkpoint's size, write time and read-and-rebuild time (a restart's local
//! part) with the process's resident memory.

use std::collections::HashMap;
use std::time::Instant;

use chatpipe_common::envelope;
use chatpipe_common::event::{ChatEvent, EventType, MessageContent, MessageKind, SessionKind};
use chatpipe_processor::core::{PartitionCore, Rules};
use chatpipe_processor::state::{ChangeRecord, PartitionState, StateKey};

// the allocator the chatpipe binary uses
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// This thread's CPU time (user + system), seconds: on a shared machine the events per
/// CPU-second are steadier than per wall second.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0 // utime + stime, in clock ticks of 1/100 s
}

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

fn event(id: u64, t: i64, kind: EventType, session: u64, sk: SessionKind, sender: u64) -> ChatEvent {
    ChatEvent::bare(id, t, kind, session, sk, sender)
}

fn main() {
    let n: usize = std::env::var("BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let mut rng = Lcg(42);
    let t0 = 1_790_000_000_000i64;
    let text: String = "lorem ipsum dolor sit amet ".repeat(16);
    let sessions = 10_000u64;
    let mut sizes = HashMap::new();
    let mut events = Vec::with_capacity(n + 300_000);
    let mut id = 1u64 << 40;
    for s in 0..sessions {
        let direct = s % 10 == 0;
        let size = if direct { 2 } else { 3 + rng.next() % 28 };
        sizes.insert(s, (direct, size));
        if !direct {
            for u in 0..size {
                id += 1;
                let mut e = event(id, t0, EventType::Join, s, SessionKind::Group, s * 100 + u);
                e.user_id = Some(s * 100 + u);
                events.push(e);
            }
        }
    }
    let joins = events.len();
    let mut last: HashMap<u64, u64> = HashMap::new(); // session → its latest message id
    for i in 0..n {
        let s = rng.next() % sessions;
        let (direct, size) = sizes[&s];
        id += 1;
        let t = t0 + (i as i64) * 60_000 * 30 / n as i64; // 30 minutes of event time
        let sender = s * 100 + rng.next() % size;
        let sk = if direct { SessionKind::Direct } else { SessionKind::Group };
        let mut e = if i % 10 == 9 && last.contains_key(&s) {
            let mut e = event(id, t, EventType::Read, s, sk, sender);
            e.target_id = last.get(&s).copied();
            e
        } else {
            last.insert(s, id);
            let mut e = event(id, t, EventType::Message, s, sk, sender);
            let len = 20 + (rng.next() % 381) as usize;
            e.message =
                Some(MessageContent { kind: MessageKind::Text, body: text[..len].to_owned(), mentions: vec![] });
            e.client_msg_id = Some(format!("c{id}"));
            e
        };
        if direct {
            e.recipient_id = Some(s * 100 + (sender % 100 + 1) % 2);
        }
        events.push(e);
    }
    // BENCH_PROFILE=count: fan-out and unread off (the counting path alone)
    let count_only = std::env::var("BENCH_PROFILE").is_ok_and(|v| v == "count");
    let rules = Rules { fan_out: !count_only, unread: !count_only, ..Rules::default() };
    let mut core = PartitionCore::new(0, rules, PartitionState::default());
    let start = Instant::now();
    let cpu0 = cpu_seconds();
    let mut rows = 0usize;
    let mut mutations = 0usize;
    let mut unread = 0usize;
    let mut changelog = 0usize;
    for (i, chunk) in events.chunks(2000).enumerate() {
        for (j, e) in chunk.iter().enumerate() {
            core.apply((i * 2000 + j) as i64, e);
        }
        let (out, changes) = core.finish_batch(t0 + i as i64 * 20);
        rows += out.rows.len();
        mutations += out.rows.iter().map(|r| r.mutations).sum::<usize>();
        unread += out.unread.len();
        changelog += changes.len();
    }
    let took = start.elapsed();
    let cpu = cpu_seconds() - cpu0;
    let total = events.len();
    println!(
        "core: {total} events ({joins} joins + {n} messages/reads) in {:.2} s = {:.0} events/s on one core \
         ({:.0} per CPU-second); \
         {rows} chat.rows records ({:.2}/event, {mutations} row mutations), {unread} chat.unread records, \
         {changelog} changelog records ({:.2}/event)",
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64(),
        total as f64 / cpu.max(0.01),
        rows as f64 / total as f64,
        changelog as f64 / total as f64
    );

    if std::env::var("BENCH_SKIP_RESTORE").is_ok() {
        return;
    }
    checkpoint_round_trip(&core.state, "after the run");
    // restore of a state with at least 1M entries
    let mut state = PartitionState::default();
    state.meta.applied_offset = 0;
    let mut core = PartitionCore::new(0, Rules::default(), state);
    let mut off = 0i64;
    while core.state.entries() < 1_000_000 {
        off += 1;
        let s = off as u64 / 50;
        let mut e = event(off as u64, t0, EventType::Join, s, SessionKind::Group, off as u64);
        e.user_id = Some(off as u64);
        core.apply(off, &e);
    }
    let (_, changes) = core.finish_batch(t0);
    let entries = core.state.entries();
    let encoded: Vec<(Vec<u8>, Vec<u8>)> =
        changes.iter().filter_map(|(k, r)| Some((envelope::encode(k).ok()?, envelope::encode(r).ok()?))).collect();
    let bytes: usize = encoded.iter().map(|(k, v)| k.len() + v.len()).sum();
    let start = Instant::now();
    let mut latest: HashMap<StateKey, ChangeRecord> = HashMap::with_capacity(encoded.len());
    for (k, v) in &encoded {
        if let (Ok(k), Ok(v)) = (envelope::decode::<StateKey>(k), envelope::decode::<ChangeRecord>(v)) {
            latest.insert(k, v);
        }
    }
    let restored = PartitionState::restore(latest);
    let took = start.elapsed();
    assert_eq!(restored.entries(), entries);
    println!(
        "restore: {entries} entries ({} changelog records, {:.1} MiB) decoded and rebuilt in {:.2} s",
        encoded.len(),
        bytes as f64 / 1048576.0,
        took.as_secs_f64()
    );
    checkpoint_round_trip(&restored, "1M-entry state");
}

/// Resident memory of this process, MiB (Linux).
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A restart's local part: write the state as a checkpoint, read it back and rebuild the
/// state (what a restart does before it reads the changelog's tail).
fn checkpoint_round_trip(state: &PartitionState, what: &str) {
    use chatpipe_processor::checkpoint::{read_checkpoint, write_checkpoint};
    let dir = std::env::temp_dir().join(format!("chatpipe-bench-checkpoint-{}", std::process::id()));
    let start = Instant::now();
    if let Err(e) = write_checkpoint(&dir, "cl", 0, 1, (0, 1), state) {
        println!("checkpoint ({what}): not written: {e}");
        return;
    }
    let wrote = start.elapsed();
    let size: u64 =
        std::fs::read_dir(&dir).map_or(0, |d| d.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum());
    let start = Instant::now();
    let Some((_, fold)) = read_checkpoint(&dir, "cl", 0) else {
        println!("checkpoint ({what}): did not read back");
        return;
    };
    let restored = fold.finish();
    let read = start.elapsed();
    assert_eq!(restored.entries(), state.entries());
    println!(
        "checkpoint ({what}): {} entries, {:.1} MiB on disk, written in {:.2} s, read and rebuilt in {:.2} s; RSS {:.0} MiB",
        state.entries(),
        size as f64 / 1048576.0,
        wrote.as_secs_f64(),
        read.as_secs_f64(),
        rss_mib()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
