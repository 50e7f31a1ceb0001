//! `chatpipe query` proves the row-key design: a session's timeline (and a user's inbox)
//! reads newest first, pages with `--limit`, and `--before` continues exactly where the
//! previous page ended — no message twice, none skipped, none from a neighbouring session
//! (including one whose id starts with the same digits and has the same salt). Compressed
//! bodies come back decompressed; `--json` prints ids as strings.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chatpipe_common::row_key;
use chatpipe_common::rows::{tables, Cell, RowMutation};
use chatpipe_sink::batch::plan_mutations;
use chatpipe_sink::hbase::{batch_mutation, HbaseClient, HbaseConfig};
use chatpipe_sink::query::{inbox, timeline};
use chatpipe_sink::QueryArgs;
use chatpipe_tests::TestHbase;
use clap::Parser;
use rand::seq::SliceRandom;
use rand::SeedableRng;

const SESSION: u64 = 4242;
const USER: u64 = 77;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    Query(QueryArgs),
}

fn message(session: u64, id: u64, seq: u64) -> (RowMutation, String) {
    let body = if seq.is_multiple_of(5) { format!("long body {seq} ").repeat(60) } else { format!("hello {seq}") };
    let mut cells = vec![
        Cell::new("m:sender", (1000 + seq % 3).to_string()),
        Cell::new("m:kind", "text"),
        Cell::new("m:sent_at", (1_767_225_600_000 + seq as i64 * 1000).to_string()),
        Cell::new("m:seq", seq.to_string()),
    ];
    if body.len() >= 512 {
        cells.push(Cell::new("m:body", lz4_flex::compress_prepend_size(body.as_bytes())));
        cells.push(Cell::new("m:enc", "lz4"));
    } else {
        cells.push(Cell::new("m:body", body.clone()));
    }
    let m = RowMutation {
        table: tables::MESSAGES.into(),
        row: row_key::encode(session, id).into_bytes(),
        cells,
        delete: false,
        ingested_at_ms: 0,
    };
    (m, body)
}

fn inbox_entry(user: u64, id: u64, session: u64) -> RowMutation {
    RowMutation {
        table: tables::INBOX.into(),
        row: row_key::encode(user, id).into_bytes(),
        cells: vec![
            Cell::new("i:session", session.to_string()),
            Cell::new("i:sender", "1000"),
            Cell::new("i:kind", "text"),
            Cell::new("i:preview", format!("preview {id}")),
        ],
        delete: false,
        ingested_at_ms: 0,
    }
}

fn write(client: &mut HbaseClient, ms: &[RowMutation]) {
    for phase in plan_mutations(ms.iter().enumerate()) {
        for e in &phase.entries {
            client.mutate_rows(&e.table, vec![batch_mutation(e).unwrap()]).unwrap();
        }
    }
}

/// A session id that starts with the digits of `SESSION` and has the same salt, so its
/// rows sort right after the session's own in the same region.
fn same_salt_neighbour() -> u64 {
    (SESSION * 10..SESSION * 10 + 10)
        .chain(SESSION * 100..SESSION * 100 + 100)
        .chain(SESSION * 1000..SESSION * 1000 + 1000)
        .find(|id| row_key::salt(*id) == row_key::salt(SESSION))
        .expect("a neighbour with the same salt")
}

async fn run_json(args: &[&str]) -> Vec<serde_json::Value> {
    let cli = Cli::try_parse_from(std::iter::once("chatpipe").chain(args.iter().copied())).unwrap();
    let Command::Query(q) = cli.command;
    let (mut out, mut hint) = (Vec::new(), Vec::new());
    chatpipe_sink::query::run(q, &mut out, &mut hint).await.unwrap();
    String::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeline_pages_newest_first_and_before_continues_exactly() {
    let hbase = TestHbase::start();
    let mut client = HbaseClient::connect(&HbaseConfig::new(hbase.thrift())).unwrap();
    chatpipe_sink::tables::create_all(&mut client).unwrap();

    // 53 messages with snowflake-like ids, written in random order
    let base = 7_000_000_000_000u64;
    let mut ids: Vec<u64> = (0..53u64).map(|i| base + i * 4096 * 1000 + (i * 7919) % 4096).collect();
    let mut writes = Vec::new();
    let mut bodies = std::collections::HashMap::new();
    for (seq, id) in ids.iter().enumerate() {
        let (m, body) = message(SESSION, *id, seq as u64 + 1);
        bodies.insert(*id, body);
        writes.push(m);
    }
    let neighbour = same_salt_neighbour();
    for (i, id) in ids.iter().enumerate().take(10) {
        writes.push(message(neighbour, id + 1, i as u64).0);
        writes.push(message(SESSION + 1, id + 2, i as u64).0);
        writes.push(message(SESSION - 1, id + 3, i as u64).0);
    }
    for id in &ids {
        writes.push(inbox_entry(USER, *id, SESSION));
        writes.push(inbox_entry(USER + 1, *id + 5, SESSION));
    }
    writes.shuffle(&mut rand::rngs::StdRng::seed_from_u64(5));
    tokio::task::block_in_place(|| write(&mut client, &writes));
    ids.sort_unstable_by(|a, b| b.cmp(a)); // newest first

    // library: pages of 10
    let mut seen = Vec::new();
    let mut before = None;
    let mut pages = 0;
    loop {
        let page =
            tokio::task::block_in_place(|| timeline(&mut client, tables::MESSAGES, SESSION, 10, before)).unwrap();
        pages += 1;
        assert!(page.len() <= 10);
        for m in &page {
            assert_eq!(m.session_id, SESSION);
            assert_eq!(m.body.as_deref(), Some(bodies[&m.message_id].as_str()), "body of {}", m.message_id);
            assert!(m.error.is_none());
        }
        seen.extend(page.iter().map(|m| m.message_id));
        match page.last() {
            Some(last) if page.len() == 10 => before = Some(last.message_id),
            _ => break,
        }
    }
    assert_eq!(seen, ids, "pages concatenate to every message, newest first, once");
    assert_eq!(pages, 6);

    // the command: --json, ids as strings, --before continues exactly
    let addr = hbase.thrift();
    let session = SESSION.to_string();
    let first =
        run_json(&["query", "timeline", "--hbase-thrift", &addr, "--session", &session, "--limit", "20", "--json"])
            .await;
    assert_eq!(first.len(), 20);
    assert!(first.iter().all(|m| m["message_id"].is_string() && m["session_id"] == session.as_str()));
    let last = first.last().unwrap()["message_id"].as_str().unwrap().to_owned();
    let second = run_json(&[
        "query",
        "timeline",
        "--hbase-thrift",
        &addr,
        "--session",
        &session,
        "--limit",
        "20",
        "--before",
        &last,
        "--json",
    ])
    .await;
    let got: Vec<u64> =
        first.iter().chain(second.iter()).map(|m| m["message_id"].as_str().unwrap().parse().unwrap()).collect();
    assert_eq!(got, ids[..40].to_vec());
    let long = first.iter().find(|m| m["seq"].as_u64().is_some_and(|s| s.is_multiple_of(5))).unwrap();
    assert!(long["body"].as_str().unwrap().starts_with("long body"), "compressed bodies are decompressed");

    // the inbox reads the same way
    let user = USER.to_string();
    let mut inbox_ids = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut args = vec!["query", "inbox", "--hbase-thrift", &addr, "--user", &user, "--limit", "7", "--json"];
        if let Some(b) = &before {
            args.extend(["--before", b.as_str()]);
        }
        let page = run_json(&args).await;
        inbox_ids.extend(page.iter().map(|m| m["message_id"].as_str().unwrap().parse::<u64>().unwrap()));
        assert!(page.iter().all(|m| m["user_id"] == user.as_str() && m["session_id"] == session.as_str()));
        if page.len() < 7 {
            break;
        }
        before = page.last().map(|m| m["message_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(inbox_ids, ids);
    let lib = tokio::task::block_in_place(|| inbox(&mut client, USER, 100, None)).unwrap();
    assert_eq!(lib.iter().map(|e| e.message_id).collect::<Vec<_>>(), ids);
}
