//! Memory of the emulator while it takes a long write storm: starts the emulator binary
//! (a separate process, so the client's memory is not counted) on a fresh data directory,
//! writes `--cells` cells as `mutateRows` of 1,000 rows × 3 cells (~200 B body) from 4
//! connections, and samples the server's resident memory (`/proc/PID/status`) as it goes.
//!
//! ```text
//! cargo build --release -p chatpipe-hbase-emulator --bin chatpipe-hbase-emulator --example write_memory
//! target/release/examples/write_memory target/release/chatpipe-hbase-emulator 10000000 [EXTRA FLAGS…]
//! ```
//!
//! Prints one line per million cells (cells, seconds, cells/s, RSS, peak RSS, data on disk)
//! and a summary. A measurement tool, not a test: it asserts nothing but that writes succeed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hbase_thrift::hbase::{BatchMutation, ColumnDescriptor, HbaseSyncClient, Mutation, THbaseSyncClient};
use thrift::protocol::{TBinaryInputProtocol, TBinaryOutputProtocol};
use thrift::transport::{
    ReadHalf, TBufferedReadTransport, TBufferedWriteTransport, TIoChannel, TTcpChannel, WriteHalf,
};

type Client = HbaseSyncClient<
    TBinaryInputProtocol<TBufferedReadTransport<ReadHalf<TTcpChannel>>>,
    TBinaryOutputProtocol<TBufferedWriteTransport<WriteHalf<TTcpChannel>>>,
>;

fn connect(addr: SocketAddr) -> Client {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    let (r, w) = TTcpChannel::with_stream(stream).split().unwrap();
    HbaseSyncClient::new(
        TBinaryInputProtocol::new(TBufferedReadTransport::with_capacity(1 << 16, r), true),
        TBinaryOutputProtocol::new(TBufferedWriteTransport::with_capacity(1 << 16, w), true),
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

/// (VmRSS, VmHWM) of a process, in MiB.
fn rss_mib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb / 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn dir_mib(path: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        let Ok(entries) = std::fs::read_dir(p) else { return 0 };
        entries
            .flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => walk(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    }
    walk(path) / (1024 * 1024)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let binary = args.get(1).expect("usage: write_memory EMULATOR_BINARY CELLS [FLAGS…]");
    let cells: u64 = args.get(2).and_then(|c| c.parse().ok()).unwrap_or(10_000_000);
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
    let written = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let (next, written) = (Arc::clone(&next), Arc::clone(&written));
            std::thread::spawn(move || {
                let mut c = connect(addr);
                loop {
                    let first = next.fetch_add(1000, Ordering::Relaxed);
                    if first >= rows_total {
                        break;
                    }
                    let batch = (first..(first + 1000).min(rows_total)).map(row).collect::<Vec<_>>();
                    let n = batch.len() as u64;
                    c.mutate_rows(b"chat:messages".to_vec(), batch, Default::default()).unwrap();
                    written.fetch_add(n * 3, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut peak = 0;
    let mut reported = 0;
    println!("cells\tseconds\tcells/s\trss_mib\tpeak_rss_mib\tdisk_mib");
    while writers.iter().any(|w| !w.is_finished()) {
        std::thread::sleep(Duration::from_millis(200));
        let (rss, hwm) = rss_mib(pid);
        peak = peak.max(hwm);
        let done = written.load(Ordering::Relaxed);
        if done / 1_000_000 > reported {
            reported = done / 1_000_000;
            let secs = started.elapsed().as_secs_f64();
            println!("{done}\t{secs:.1}\t{:.0}\t{rss}\t{hwm}\t{}", done as f64 / secs, dir_mib(dir.path()));
        }
    }
    for w in writers {
        w.join().unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let (rss, hwm) = rss_mib(pid);
    let done = written.load(Ordering::Relaxed);
    println!(
        "total: {done} cells in {secs:.1} s = {:.0} cells/s; RSS now {rss} MiB, peak {} MiB; {} MiB on disk",
        done as f64 / secs,
        peak.max(hwm),
        dir_mib(dir.path())
    );
    let _ = child.kill();
    let _ = child.wait();
}
