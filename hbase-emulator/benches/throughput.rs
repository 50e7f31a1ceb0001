//! Write and scan throughput of the emulator through a real Thrift client over TCP, on disk
//! (every call is appended to the write-ahead log in a group commit and acknowledged once the
//! operating system has it, the default `--durability os`; memstore flushes and compactions
//! run in the background as the data grows).
//!
//! * `mutate_rows/batch_<rows>x3/<conns>conn`: one iteration is one `mutateRows` call of
//!   `<rows>` rows × 3 cells (~200 B values) on each of `<conns>` connections at once;
//!   throughput is in cells.
//! * `scan/prefix`: a full prefix scan (`scannerOpenWithPrefix` + `scannerGetList(1000)`) of
//!   30,000 rows × 3 cells.
//!
//! `CHATPIPE_BENCH_IN_MEMORY=1` runs the same against the in-memory store,
//! `CHATPIPE_BENCH_FSYNC=1` with `--durability fsync`. Run briefly:
//! `cargo bench -p chatpipe-hbase-emulator --bench throughput -- --warm-up-time 1
//! --measurement-time 5 --sample-size 10`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chatpipe_hbase_emulator::{start, Config, Durability};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hbase_thrift::hbase::{BatchMutation, ColumnDescriptor, HbaseSyncClient, Mutation, THbaseSyncClient};
use thrift::protocol::{TBinaryInputProtocol, TBinaryOutputProtocol};
use thrift::transport::{
    ReadHalf, TBufferedReadTransport, TBufferedWriteTransport, TIoChannel, TTcpChannel, WriteHalf,
};

// the allocator of the chatpipe binary, so the numbers are the product's
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Client = HbaseSyncClient<
    TBinaryInputProtocol<TBufferedReadTransport<ReadHalf<TTcpChannel>>>,
    TBinaryOutputProtocol<TBufferedWriteTransport<WriteHalf<TTcpChannel>>>,
>;

const TABLE: &str = "chat:messages";
const SCAN_ROWS: usize = 30_000;

fn connect(addr: SocketAddr) -> Client {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    let (r, w) = TTcpChannel::with_stream(stream).split().unwrap();
    HbaseSyncClient::new(
        TBinaryInputProtocol::new(TBufferedReadTransport::new(r), true),
        TBinaryOutputProtocol::new(TBufferedWriteTransport::new(w), true),
    )
}

fn family(name: &str) -> ColumnDescriptor {
    ColumnDescriptor {
        name: Some(format!("{name}:").into_bytes()),
        max_versions: Some(1),
        compression: Some("NONE".into()),
        in_memory: Some(false),
        bloom_filter_type: Some("NONE".into()),
        bloom_filter_vector_size: Some(0),
        bloom_filter_nb_hashes: Some(0),
        block_cache_enabled: Some(false),
        time_to_live: Some(-1),
    }
}

fn put(column: &str, value: Vec<u8>) -> Mutation {
    Mutation { is_delete: Some(false), column: Some(column.into()), value: Some(value), write_to_w_a_l: Some(true) }
}

/// A chat-like row: salted, session-prefixed key; 3 cells, the body ~200 B.
fn row(n: u64, prefix: Option<&str>) -> BatchMutation {
    let key = match prefix {
        Some(p) => format!("{p}{:019}", i64::MAX as u64 - n),
        None => format!("{:03}|{}|{:019}", n % 128, 1_000_000 + n % 977, i64::MAX as u64 - n),
    };
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

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    // CHATPIPE_BENCH_IN_MEMORY=1: the same without the disk, to see what the disk costs.
    let listen = "127.0.0.1:0".parse().unwrap();
    let config = match std::env::var("CHATPIPE_BENCH_IN_MEMORY").as_deref() {
        Ok("1") => Config::in_memory(listen),
        _ => Config::on_disk(listen, dir.path()),
    };
    // CHATPIPE_BENCH_FSYNC=1: every commit also waits for the disk (--durability fsync).
    let config = match std::env::var("CHATPIPE_BENCH_FSYNC").as_deref() {
        Ok("1") => Config { durability: Durability::Fsync, ..config },
        _ => config,
    };
    let emu = start(config).unwrap();
    let addr = emu.local_addr();
    let mut admin = connect(addr);
    admin.create_table(TABLE.into(), vec![family("m")]).unwrap();
    let next = AtomicU64::new(0);

    let mut group = c.benchmark_group("mutate_rows");
    for (rows, conns) in [(1000usize, 1usize), (1000, 4), (100, 4), (1, 4)] {
        let mut clients: Vec<Client> = (0..conns).map(|_| connect(addr)).collect();
        group.throughput(Throughput::Elements((rows * conns * 3) as u64));
        group.bench_function(BenchmarkId::new(format!("batch_{rows}x3"), format!("{conns}conn")), |b| {
            b.iter_batched(
                || {
                    (0..conns)
                        .map(|_| (0..rows).map(|_| row(next.fetch_add(1, Ordering::Relaxed), None)).collect::<Vec<_>>())
                        .collect::<Vec<_>>()
                },
                |batches| {
                    std::thread::scope(|s| {
                        for (client, batch) in clients.iter_mut().zip(batches) {
                            s.spawn(move || client.mutate_rows(TABLE.into(), batch, Default::default()).unwrap());
                        }
                    });
                },
                criterion::BatchSize::PerIteration,
            );
        });
    }
    group.finish();

    // One session prefix of SCAN_ROWS rows to scan.
    let prefix = "050|4242|";
    for chunk in 0..SCAN_ROWS / 1000 {
        let batch = (0..1000).map(|i| row((chunk * 1000 + i) as u64, Some(prefix))).collect();
        admin.mutate_rows(TABLE.into(), batch, Default::default()).unwrap();
    }
    let mut group = c.benchmark_group("scan");
    group.throughput(Throughput::Elements((SCAN_ROWS * 3) as u64));
    group.bench_function("prefix", |b| {
        b.iter(|| {
            let id = admin.scanner_open_with_prefix(TABLE.into(), prefix.into(), vec![], Default::default()).unwrap();
            let mut n = 0;
            loop {
                let rows = admin.scanner_get_list(id, 1000).unwrap();
                if rows.is_empty() {
                    break;
                }
                n += rows.len();
            }
            admin.scanner_close(id).unwrap();
            assert_eq!(n, SCAN_ROWS);
        });
    });
    group.finish();
    emu.stop();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
