//! The push feed rate of one serve instance: how many `chat.rows` records per second it
//! decodes and dispatches. Every instance reads the whole feed, so this rate bounds the
//! message rate live push can follow (see `push/mod.rs`, "Scaling and its limit").
//!
//! Records are what the processor writes for a direct message: the message row, two inbox
//! rows, the session's `last_seq`, the sender's `read_seq` (5 mutations, ~500 bytes). Users
//! `2k−1` and `2k` share session `k`, with `USERS` users in all; users `1..=STREAMS` have an
//! open stream on this instance (drained as a reading client would), so a record concerns
//! this instance's clients with probability `STREAMS / USERS`. One thread does it all (the
//! feed task is one task), without Kafka: the rate is serve's own, on top of the consumer's.
//!
//! ```text
//! cargo bench -p chatpipe-serve --bench push_feed
//! # env: PUSH_FEED_RECORDS=300000 PUSH_FEED_CASES=1000/1000,1000/100000,10000/100000 (STREAMS/USERS)
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use chatpipe_common::row_key;
use chatpipe_common::rows::{encode_record, tables, Cell, RowBatch, RowMutation};

fn put(table: &str, row: String, cells: Vec<(&str, String)>) -> RowMutation {
    RowMutation {
        table: table.to_owned(),
        row: row.into_bytes(),
        cells: cells.into_iter().map(|(c, v)| Cell::new(c, v.into_bytes())).collect(),
        delete: false,
        ingested_at_ms: 0,
    }
}

fn id_key(id: u64) -> String {
    let mut p = row_key::prefix(id);
    p.pop();
    p
}

/// The `chat.rows` record of message `i` of a chat among `users` users.
fn record(i: u64, users: u64) -> Vec<u8> {
    let pairs = users / 2;
    let session = 1 + i % pairs;
    let seq = 1 + i / pairs;
    let (a, b) = (2 * session - 1, 2 * session);
    let sender = if seq % 2 == 1 { a } else { b };
    let id = 7_000_000_000_000_000 + i;
    let body = format!("message {i}: the quick brown fox jumps over the lazy dog, twice over");
    let at = (1_767_225_600_000 + i).to_string();
    let mut muts = vec![put(
        tables::MESSAGES,
        row_key::encode(session, id),
        vec![
            ("m:sender", sender.to_string()),
            ("m:kind", "text".into()),
            ("m:body", body.clone()),
            ("m:sent_at", at.clone()),
            ("m:seq", seq.to_string()),
        ],
    )];
    for u in [a, b] {
        muts.push(put(
            tables::INBOX,
            row_key::encode(u, id),
            vec![
                ("i:session", session.to_string()),
                ("i:sender", sender.to_string()),
                ("i:kind", "text".into()),
                ("i:preview", body.clone()),
                ("i:seq", seq.to_string()),
            ],
        ));
    }
    muts.push(put(
        tables::SESSIONS,
        id_key(session),
        vec![("s:last_seq", seq.to_string()), ("s:last_message_id", id.to_string()), ("s:last_sent_at", at)],
    ));
    muts.push(put(tables::USER_SESSIONS, row_key::encode_pair(sender, session), vec![("f:read_seq", seq.to_string())]));
    let mut out = Vec::new();
    encode_record(&RowBatch { mutations: muts }, &mut out).unwrap();
    out
}

fn main() {
    let n: u64 = std::env::var("PUSH_FEED_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(300_000);
    let cases = std::env::var("PUSH_FEED_CASES").unwrap_or_else(|_| "1000/1000,1000/100000,10000/100000".into());
    for case in cases.split(',') {
        let (streams, users) = case.split_once('/').expect("STREAMS/USERS");
        let (streams, users): (u64, u64) = (streams.trim().parse().unwrap(), users.trim().parse().unwrap());
        let records: Vec<Vec<u8>> = (0..n).map(|i| record(i, users)).collect();
        let bytes: usize = records.iter().map(Vec::len).sum();
        let started = Instant::now();
        let events = chatpipe_serve::feed_for_bench(&records, streams, 500);
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{streams:>6} streams of {users:>7} users: {n} records ({} B each) in {secs:.2} s = {:>9.0} records/s, {:>9.0} events/s delivered",
            bytes / records.len().max(1),
            n as f64 / secs,
            events as f64 / secs
        );
    }
}
