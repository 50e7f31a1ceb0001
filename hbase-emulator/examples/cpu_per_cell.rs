//! Where the CPU of a write goes: starts the emulator binary (a separate process) on a fresh
//! data directory, writes `CELLS` cells as `mutateRows` of 1,000 rows × 3 cells (~200 B
//! body, the criterion bench's rows) from 4 connections, then reads the CPU time of each
//! emulator thread (`/proc/PID/task/*/stat`, while the connections are still open) and of
//! the client process, and prints µs of CPU per cell by stage:
//!
//! * `conn` — connection threads (Thrift decoding, encoding the edits);
//! * `commit` — the group committer (log append, memtable inserts);
//! * `flush` / `compact` — fjall's background flushes and compactions;
//! * `other` — the rest of the emulator; `client` — this process (Thrift encoding).
//!
//! ```text
//! cargo build --release -p chatpipe-hbase-emulator --bin chatpipe-hbase-emulator --example cpu_per_cell
//! target/release/examples/cpu_per_cell target/release/chatpipe-hbase-emulator 3000000
//! ```
//!
//! Throughput on a shared machine depends on what else runs; CPU per cell much less so.
//! A measurement tool, not a test: it asserts nothing but that writes succeed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::time::Instant;

use hbase_thrift::hbase::{BatchMutation, ColumnDescriptor, HbaseSyncClient, Mutation, THbaseSyncClient};
use thrift::protocol::{TBinaryInputProtocol, TBinaryOutputProtocol};
use thrift::transport::{
    ReadHalf, TBufferedReadTransport, TBufferedWriteTransport, TIoChannel, TTcpChannel, WriteHalf,
};

// the allocator of the chatpipe binary and of the criterion bench
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Client = HbaseSyncClient<
    TBinaryInputProtocol<TBufferedReadTransport<ReadHalf<TTcpChannel>>>,
    TBinaryOutputProtocol<TBufferedWriteTransport<WriteHalf<TTcpChannel>>>,
>;

const CONNECTIONS: usize = 4;

fn connect(addr: SocketAddr) -> Client {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    let (r, w) = TTcpChannel::with_stream(stream).split().unwrap();
    HbaseSyncClient::new(
        TBinaryInputProtocol::new(TBufferedReadTransport::new(r), true),
        TBinaryOutputProtocol::new(TBufferedWriteTransport::new(w), true),
    )
}

fn put(column: &str, value: Vec<u8>) -> Mutation {
    Mutation { is_delete: Some(false), column: Some(column.into()), value: Some(value), write_to_w_a_l: Some(true) }
}

fn row(n: u64) -> BatchMutation {
    let key = format!("{:03}|{}|{:019}", n % 128, 1_000_000 + n % 977, i64::MAX as u64 - n);
    let mut body = format!("message {n} ").into_bytes();
    body.resize(200, b'x');
    BatchMutation {
        row: Some(key.into_bytes()),
        mutations: Some(vec![
            put("m:body", body),
            put("m:sender", (n % 10_000).to_string().into_bytes()),
            put("m:sent_at", (1_700_000_000_000 + n).to_string().into_bytes()),
        ]),
    }
}

/// Seconds of CPU (user + system) in a `/proc/…/stat` line.
fn cpu_secs(stat: &str) -> f64 {
    // Fields after the parenthesised name: state is field 3; utime, stime are 14, 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(14) + ticks(15)) / 100.0
}

/// CPU seconds of every thread of `pid`, by stage (thread names as the emulator and fjall
/// set them).
fn server_cpu(pid: u32) -> BTreeMap<&'static str, f64> {
    let mut by = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let stage = match comm.trim() {
            c if c.starts_with("hbase-emu-conn") => "conn",
            c if c.starts_with("hbase-emu-commi") => "commit",
            c if c.starts_with("flush") => "flush",
            c if c.starts_with("compact") => "compact",
            _ => "other",
        };
        *by.entry(stage).or_insert(0.0) += cpu_secs(&stat);
    }
    by
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let binary = args.get(1).expect("usage: cpu_per_cell EMULATOR_BINARY CELLS [FLAGS…]");
    let cells: u64 = args.get(2).and_then(|c| c.parse().ok()).unwrap_or(3_000_000);
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(binary)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(&args[3.min(args.len())..])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the emulator");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr: SocketAddr = line.trim().strip_prefix("listening on ").unwrap().parse().unwrap();
    let pid = child.id();
    let mut admin = connect(addr);
    let family = ColumnDescriptor {
        name: Some(b"m:".to_vec()),
        max_versions: Some(1),
        compression: Some("NONE".into()),
        in_memory: Some(false),
        bloom_filter_type: Some("NONE".into()),
        bloom_filter_vector_size: Some(0),
        bloom_filter_nb_hashes: Some(0),
        block_cache_enabled: Some(false),
        time_to_live: Some(-1),
    };
    admin.create_table(b"chat:messages".to_vec(), vec![family]).unwrap();

    let rows_total = cells / 3;
    let next = Arc::new(AtomicU64::new(0));
    let (done_tx, done_rx) = mpsc::channel();
    let close = Arc::new(Barrier::new(CONNECTIONS + 1));
    let client_cpu_before = cpu_secs(&std::fs::read_to_string("/proc/self/stat").unwrap());
    let server_before = server_cpu(pid);
    let started = Instant::now();
    let writers: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (next, done_tx, close) = (Arc::clone(&next), done_tx.clone(), Arc::clone(&close));
            std::thread::spawn(move || {
                let mut c = connect(addr);
                let mut written = 0u64;
                loop {
                    let first = next.fetch_add(1000, Ordering::Relaxed);
                    if first >= rows_total {
                        break;
                    }
                    let batch = (first..(first + 1000).min(rows_total)).map(row).collect::<Vec<_>>();
                    written += batch.len() as u64 * 3;
                    c.mutate_rows(b"chat:messages".to_vec(), batch, Default::default()).unwrap();
                }
                done_tx.send(written).unwrap();
                // Keep the connection (and its server thread) until the CPU has been read.
                close.wait();
            })
        })
        .collect();
    let written: u64 = done_rx.iter().take(CONNECTIONS).sum();
    let secs = started.elapsed().as_secs_f64();
    let server_after = server_cpu(pid);
    let client_cpu = cpu_secs(&std::fs::read_to_string("/proc/self/stat").unwrap()) - client_cpu_before;
    close.wait();
    for w in writers {
        w.join().unwrap();
    }
    println!("{written} cells in {secs:.2} s = {:.0} cells/s", written as f64 / secs);
    let per_cell = |s: f64| s * 1e6 / written as f64;
    let mut server_total = 0.0;
    for (stage, after) in &server_after {
        let used = after - server_before.get(stage).copied().unwrap_or(0.0);
        server_total += used;
        println!("{stage:>8}: {used:7.2} CPU-s  {:6.3} µs/cell", per_cell(used));
    }
    println!("{:>8}: {server_total:7.2} CPU-s  {:6.3} µs/cell", "emulator", per_cell(server_total));
    println!("{:>8}: {client_cpu:7.2} CPU-s  {:6.3} µs/cell", "client", per_cell(client_cpu));
    let _ = child.kill();
    let _ = child.wait();
}
