//! Sink throughput into the HBase emulator against a raw `mutateRows` loop, same run.
//!
//! For each batch size (1, 100, 1000 rows), the same pre-encoded rows (message-shaped puts,
//! one row each) are written twice into a fresh on-disk emulator, by default with
//! `--durability fsync` (every commit waits for the disk, a per-call cost closer to HBase's
//! WAL sync than the default `os` mode; `SINK_BENCH_DURABILITY=os` measures that one):
//!
//! * **sink**: produced to an 8-partition topic on tansu first, then consumed and written
//!   by `chatpipe_sink::run_with_telemetry` with `--batch-rows` = the batch size,
//!   `--hbase-connections` = `CONNECTIONS` (and `--max-in-flight` = 2 × `CONNECTIONS`, the
//!   default ratio: batches being planned or acknowledged do not hold a connection). Rate = rows acknowledged
//!   per second between the first and the last acknowledgement (`rows_written_total`), so
//!   consumer-group start-up is not counted;
//! * **raw**: the rows as ready `BatchMutation`s, `CONNECTIONS` threads each with its own
//!   Thrift connection calling `mutateRows` with chunks of the batch size, as fast as they
//!   can. Rate = rows / wall time.
//!
//! Each pair runs three times, alternating, and the best of each is shown (the machine is
//! shared).
//!
//! Run: `cargo bench -p chatpipe-sink --bench sink_throughput` (needs tansu: `scripts/setup`);
//! `SINK_BENCH_BATCH=100` runs one batch size, `SINK_BENCH_ROUNDS=N` sets the rounds.
//! Not a criterion benchmark: each sample needs a broker and an emulator and takes seconds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chatpipe_common::envelope;
use chatpipe_common::http::Telemetry;
use chatpipe_common::kafka::TopicSpec;
use chatpipe_common::row_key;
use chatpipe_common::rows::{tables, Cell, RowMutation};
use chatpipe_hbase_emulator::Durability;
use chatpipe_sink::batch::plan_mutations;
use chatpipe_sink::hbase::{batch_mutation, HbaseClient, HbaseConfig};
use chatpipe_sink::{metrics, Config};
use chatpipe_tests::{TestBroker, TestHbase};
use hbase_thrift::hbase::BatchMutation;
use rdkafka::producer::{FutureProducer, FutureRecord};

const CONNECTIONS: usize = 4;
const PARTITIONS: i32 = 8;

fn rows(n: usize) -> Vec<RowMutation> {
    (0..n as u64)
        .map(|i| RowMutation {
            table: tables::MESSAGES.into(),
            row: row_key::encode(1 + i % 5000, 7_000_000_000_000 + i).into_bytes(),
            cells: vec![
                Cell::new("m:sender", (100 + i % 97).to_string()),
                Cell::new("m:kind", "text"),
                Cell::new("m:body", format!("message {i}: {}", "lorem ipsum dolor sit amet ".repeat(4))),
                Cell::new("m:sent_at", (1_767_225_600_000 + i as i64).to_string()),
                Cell::new("m:seq", i.to_string()),
            ],
            delete: false,
            ingested_at_ms: 0,
        })
        .collect()
}

/// Mean of a histogram, in ms.
fn mean_ms(t: &Telemetry, name: &str) -> f64 {
    let (mut sum, mut count) = (0.0, 0u64);
    for f in t.registry.gather().iter().filter(|f| f.name() == name) {
        for m in f.get_metric() {
            sum += m.get_histogram().get_sample_sum();
            count += m.get_histogram().get_sample_count();
        }
    }
    1000.0 * sum / count.max(1) as f64
}

fn gauge(t: &Telemetry, name: &str) -> f64 {
    t.registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter().map(|m| m.get_gauge().get_value()).collect::<Vec<_>>())
        .sum()
}

fn rows_written(t: &Telemetry) -> f64 {
    t.registry
        .gather()
        .iter()
        .filter(|f| f.name() == metrics::ROWS_WRITTEN)
        .flat_map(|f| f.get_metric().iter().map(|m| m.get_counter().get_value()).collect::<Vec<_>>())
        .sum()
}

async fn produce(broker: &TestBroker, topic: &str, ms: &[RowMutation]) {
    let producer: FutureProducer = broker.kafka_args().producer_config("bench", 5).create().unwrap();
    for chunk in ms.chunks(5000) {
        let sends = chunk.iter().map(|m| {
            let mut value = Vec::new();
            chatpipe_common::rows::encode_record(
                &chatpipe_common::rows::RowBatch { mutations: vec![m.clone()] },
                &mut value,
            )
            .unwrap();
            let producer = producer.clone();
            let key = m.row.clone();
            let topic = topic.to_owned();
            async move {
                producer
                    .send(FutureRecord::to(&topic).key(&key).payload(&value), Duration::from_secs(30))
                    .await
                    .map_err(|(e, _)| e)
                    .unwrap();
            }
        });
        futures::future::join_all(sends).await;
    }
}

/// `SINK_BENCH_DURABILITY=os|fsync` (default `fsync`): the emulator's `--durability`.
fn durability() -> Durability {
    match std::env::var("SINK_BENCH_DURABILITY").as_deref() {
        Ok("os") => Durability::Os,
        _ => Durability::Fsync,
    }
}

async fn sink_rate(broker: &TestBroker, batch: usize, ms: &[RowMutation]) -> (f64, f64) {
    let hbase = TestHbase::start_with(durability());
    static RUN: AtomicUsize = AtomicUsize::new(0);
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    let topic = format!("bench.rows.{batch}.{run}");
    broker.create_topics(&[TopicSpec::new(&topic, PARTITIONS), TopicSpec::new("bench.dlq", 1)]).await;
    produce(broker, &topic, ms).await;
    let mut config = Config::new(broker.kafka_args(), hbase.thrift());
    config.rows_topic = topic.clone();
    config.dlq_topic = "bench.dlq".into();
    config.group_id = format!("bench-{batch}-{run}");
    config.batch_rows = batch;
    config.batch_bytes = 64 * 1024 * 1024;
    config.hbase_connections = CONNECTIONS;
    config.max_in_flight = 2 * CONNECTIONS; // batches queue for the CONNECTIONS connections
    config.create_tables = true;
    let telemetry = Telemetry::new();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let t = telemetry.clone();
    let task = tokio::spawn(chatpipe_sink::run_with_telemetry(config, t, async move {
        let _ = rx.await;
    }));
    let n = ms.len() as f64;
    let (mut t0, mut w0) = (None, 0.0);
    let (mut inflight_sum, mut samples) = (0.0, 0u64);
    let debug = std::env::var_os("SINK_BENCH_DEBUG").is_some();
    let end = loop {
        let w = rows_written(&telemetry);
        if t0.is_some() && debug {
            inflight_sum += gauge(&telemetry, metrics::IN_FLIGHT_BATCHES);
            samples += 1;
        }
        if t0.is_none() && w > 0.0 {
            t0 = Some(Instant::now());
            w0 = w;
        }
        if w >= n {
            break Instant::now();
        }
        // coarse polling: gathering metrics costs CPU the sink would miss
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let _ = tx.send(());
    task.await.unwrap().unwrap();
    if debug {
        eprintln!("mean in-flight batches {:.2}", inflight_sum / samples.max(1) as f64);
    }
    let t0 = t0.unwrap();
    ((n - w0) / end.duration_since(t0).as_secs_f64(), mean_ms(&telemetry, metrics::HBASE_WRITE_LATENCY))
}

fn raw_rate(batch: usize, ms: &[RowMutation]) -> (f64, f64) {
    let hbase = TestHbase::start_with(durability());
    let config = HbaseConfig::new(hbase.thrift());
    chatpipe_sink::tables::create_all(&mut HbaseClient::connect(&config).unwrap()).unwrap();
    // pre-encoded: every row a ready BatchMutation, in chunks of `batch`
    let encoded: Vec<BatchMutation> = plan_mutations(ms.iter().enumerate())
        .iter()
        .flat_map(|p| p.entries.iter().map(|e| batch_mutation(e).unwrap()).collect::<Vec<_>>())
        .collect();
    let chunks: Arc<Vec<Mutex<Option<Vec<BatchMutation>>>>> =
        Arc::new(encoded.chunks(batch).map(|c| Mutex::new(Some(c.to_vec()))).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let call_nanos = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (chunks, next, config) = (Arc::clone(&chunks), Arc::clone(&next), config.clone());
            let call_nanos = Arc::clone(&call_nanos);
            std::thread::spawn(move || {
                let mut client = HbaseClient::connect(&config).unwrap();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(slot) = chunks.get(i) else { return };
                    let chunk = slot.lock().unwrap().take().unwrap();
                    let t = Instant::now();
                    client.mutate_rows(tables::MESSAGES, chunk).unwrap();
                    call_nanos.fetch_add(t.elapsed().as_nanos() as usize, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let rate = ms.len() as f64 / started.elapsed().as_secs_f64();
    (rate, call_nanos.load(Ordering::Relaxed) as f64 / 1e6 / chunks.len() as f64)
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is ignored.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    if let Ok(level) = std::env::var("SINK_BENCH_LOG") {
        let args = chatpipe_common::telemetry::LogArgs {
            log_format: Some(chatpipe_common::telemetry::LogFormat::Text),
            log_level: level,
        };
        let _ = chatpipe_common::telemetry::init(&args, chatpipe_common::telemetry::LogFormat::Text);
    }
    runtime.block_on(async {
        let broker = TestBroker::start();
        println!(
            "sink vs raw mutateRows into the emulator (--durability {:?}), {CONNECTIONS} connections, {PARTITIONS} partitions",
            durability()
        );
        println!(
            "{:>6} {:>8} {:>12} {:>12} {:>7} {:>14} {:>13}",
            "batch", "rows", "sink rows/s", "raw rows/s", "ratio", "sink call ms", "raw call ms"
        );
        let only: Option<usize> = std::env::var("SINK_BENCH_BATCH").ok().and_then(|v| v.parse().ok());
        let rounds: usize = std::env::var("SINK_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
        for (batch, n) in [(1usize, 10_000usize), (100, 150_000), (1000, 400_000)] {
            if only.is_some_and(|b| b != batch) {
                continue;
            }
            let ms = rows(n);
            // alternate the two, keep the best of each: the machine is shared and noisy
            let (mut raw, mut sink) = ((0.0f64, 0.0f64), (0.0f64, 0.0f64));
            for _ in 0..rounds {
                let r = tokio::task::block_in_place(|| raw_rate(batch, &ms));
                if r.0 > raw.0 {
                    raw = r;
                }
                let s = sink_rate(&broker, batch, &ms).await;
                if s.0 > sink.0 {
                    sink = s;
                }
            }
            println!(
                "{batch:>6} {n:>8} {:>12.0} {:>12.0} {:>7.2} {:>14.2} {:>13.2}",
                sink.0,
                raw.0,
                sink.0 / raw.0,
                sink.1,
                raw.1
            );
        }
    });
}
