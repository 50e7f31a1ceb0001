//! Shared by the sink's end-to-end tests: a workload of row mutations and the HBase state it
//! must leave (an independent model of HBase's visible cells), producing it to `chat.rows`,
//! running the sink in process, and reading back HBase and the committed offsets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::{now_ms, TestBroker};
use chatpipe_common::envelope;
use chatpipe_common::http::Telemetry;
use chatpipe_common::row_key;
use chatpipe_common::rows::{self, tables, Cell, RowMutation};
use chatpipe_sink::hbase::{HbaseClient, HbaseConfig};
use chatpipe_sink::Config;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Visible HBase state: table → row → column → value.
pub type State = BTreeMap<String, BTreeMap<Vec<u8>, BTreeMap<String, Vec<u8>>>>;

fn covers(deleted: &str, column: &str) -> bool {
    deleted == column || (!deleted.contains(':') && column.split_once(':').is_some_and(|(f, _)| f == deleted))
}

/// Applies one mutation as HBase shows it afterwards (rows without cells do not exist).
pub fn apply(state: &mut State, m: &RowMutation) {
    let table = state.entry(m.table.clone()).or_default();
    let row = table.entry(m.row.clone()).or_default();
    if m.delete && m.cells.is_empty() {
        row.clear();
    } else if m.delete {
        for c in &m.cells {
            row.retain(|col, _| !covers(&c.column, col));
        }
    } else {
        for c in &m.cells {
            row.insert(c.column.clone(), c.value.clone());
        }
    }
    if row.is_empty() {
        table.remove(&m.row);
    }
    if table.is_empty() {
        state.remove(&m.table);
    }
}

/// The state a sequence of mutations leaves.
pub fn expected(ms: &[RowMutation]) -> State {
    let mut s = State::new();
    for m in ms {
        apply(&mut s, m);
    }
    s
}

/// A deterministic mix over every table: puts to new rows, updates of existing rows (so a
/// row gets many mutations, often within one batch), column deletes, row deletes followed
/// by puts of the same row (the case HBase's timestamp rules make hard).
pub fn workload(n: usize, seed: u64) -> Vec<RowMutation> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut rows: Vec<(usize, Vec<u8>)> = Vec::new();
    let mut out = Vec::with_capacity(n);
    let quals = ["sender", "kind", "body", "sent_at", "seq", "edited", "recalled", "x"];
    while out.len() < n {
        let pick_existing = !rows.is_empty() && rng.gen_bool(0.5);
        let (t, row) = if pick_existing {
            rows[rng.gen_range(0..rows.len())].clone()
        } else {
            let t = rng.gen_range(0..tables::ALL.len());
            let id = rng.gen_range(1..200u64);
            let other = rng.gen_range(1..1_000_000_000u64);
            let key = if t == 3 || t == 4 { row_key::encode_pair(id, other) } else { row_key::encode(id, other) };
            rows.push((t, key.clone().into_bytes()));
            (t, key.into_bytes())
        };
        let (table, family) = tables::ALL[t];
        let col = |q: &str| format!("{family}:{q}");
        let roll = rng.gen_range(0..100);
        let m = if pick_existing && roll < 8 {
            RowMutation { table: table.into(), row, cells: vec![], delete: true, ingested_at_ms: now_ms() }
        } else if pick_existing && roll < 20 {
            let k = rng.gen_range(1..3);
            let mut cells: Vec<Cell> =
                (0..k).map(|_| Cell::new(col(quals[rng.gen_range(0..quals.len())]), Vec::new())).collect();
            if rng.gen_bool(0.1) {
                cells = vec![Cell::new(family, Vec::new())]; // the whole family
            }
            RowMutation { table: table.into(), row, cells, delete: true, ingested_at_ms: now_ms() }
        } else {
            let k = rng.gen_range(1..5);
            let cells = (0..k)
                .map(|_| {
                    let q = quals[rng.gen_range(0..quals.len())];
                    let len = if rng.gen_bool(0.02) { 2000 } else { rng.gen_range(1..40) };
                    let v: String = (0..len).map(|_| rng.gen_range(b'a'..=b'z') as char).collect();
                    Cell::new(col(q), v.into_bytes())
                })
                .collect();
            RowMutation { table: table.into(), row, cells, delete: false, ingested_at_ms: now_ms() }
        };
        out.push(m);
    }
    out
}

/// Produces mutations keyed by row key (so one row stays in one partition, in order), one
/// per record — every seventh in the single-row format of builds before `RowBatch` — and
/// returns each one's `(partition, offset)`.
pub async fn produce(broker: &TestBroker, topic: &str, ms: &[RowMutation]) -> Vec<(i32, i64)> {
    let producer: FutureProducer = broker.kafka_args().producer_config("test", 5).create().unwrap();
    let mut out = Vec::with_capacity(ms.len());
    for chunk in ms.chunks(2000) {
        let sends: Vec<_> = chunk
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let value = if i % 7 == 3 {
                    // as builds before RowBatch wrote it (a rolling upgrade): one RowMutation,
                    // envelope version 2 (same body encoding as 3)
                    let mut v = envelope::encode(m).unwrap();
                    v[1] = 2;
                    v
                } else {
                    let mut v = Vec::new();
                    rows::encode_record(&rows::RowBatch { mutations: vec![m.clone()] }, &mut v).unwrap();
                    v
                };
                let key = m.row.clone();
                let producer = producer.clone();
                let topic = topic.to_owned();
                async move {
                    producer
                        .send(FutureRecord::to(&topic).key(&key).payload(&value), Duration::from_secs(30))
                        .await
                        .map_err(|(e, _)| e)
                        .unwrap()
                }
            })
            .collect();
        for d in futures::future::join_all(sends).await {
            out.push((d.partition, d.offset));
        }
    }
    out
}

/// An idempotent producer for the test broker.
pub fn producer(broker: &TestBroker) -> FutureProducer {
    broker.kafka_args().producer_config("test", 0).create().unwrap()
}

/// Produces one raw record to a given partition.
pub async fn produce_raw(
    producer: &FutureProducer,
    topic: &str,
    partition: i32,
    key: &[u8],
    payload: Option<&[u8]>,
) -> (i32, i64) {
    let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).partition(partition).key(key);
    if let Some(p) = payload {
        rec = rec.payload(p);
    }
    let d = producer.send(rec, Duration::from_secs(30)).await.map_err(|(e, _)| e).unwrap();
    (d.partition, d.offset)
}

/// Every row of every chatpipe table.
pub fn scan_state(hbase: &str) -> State {
    let mut client = HbaseClient::connect(&HbaseConfig::new(hbase)).unwrap();
    let mut state = State::new();
    for (table, _) in tables::ALL {
        for row in client.scan_all(table).unwrap() {
            if !row.cells.is_empty() {
                state.entry((*table).to_owned()).or_default().insert(row.row, row.cells);
            }
        }
    }
    state
}

/// Where two states differ (first few differences), for assertion messages.
pub fn diff(expected: &State, actual: &State) -> String {
    let mut out = Vec::new();
    let empty = BTreeMap::new();
    for table in expected.keys().chain(actual.keys()).collect::<std::collections::BTreeSet<_>>() {
        let (e, a) = (expected.get(table).unwrap_or(&empty), actual.get(table).unwrap_or(&empty));
        for row in e.keys().chain(a.keys()).collect::<std::collections::BTreeSet<_>>() {
            let (er, ar) = (e.get(row), a.get(row));
            if er != ar {
                let show = |r: Option<&BTreeMap<String, Vec<u8>>>| {
                    r.map(|cells| {
                        cells
                            .iter()
                            .map(|(c, v)| format!("{c}={:.24}", String::from_utf8_lossy(v)))
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                };
                out.push(format!(
                    "{table} {:?}: expected {:?}, got {:?}",
                    String::from_utf8_lossy(row),
                    show(er),
                    show(ar)
                ));
            }
        }
    }
    let n = out.len();
    out.truncate(10);
    format!("{n} rows differ:\n{}", out.join("\n"))
}

/// A sink configuration for tests: fast flushes and retries, metrics on a free port,
/// tables created at start-up.
pub fn sink_config(broker: &TestBroker, hbase: &str, group: &str) -> Config {
    let mut c = Config::new(broker.kafka_args(), hbase);
    c.group_id = group.to_owned();
    c.flush_interval = Duration::from_millis(20);
    c.retry_backoff = Duration::from_millis(50);
    c.retry_max_backoff = Duration::from_secs(1);
    c.hbase.timeout = Duration::from_secs(10);
    c.drain_timeout = Duration::from_secs(10);
    c.create_tables = true;
    c
}

/// A sink running in this process.
pub struct RunningSink {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), chatpipe_sink::Error>>,
    /// Its metrics and health.
    pub telemetry: Telemetry,
}

/// Starts the sink in process.
pub fn spawn_sink(config: Config) -> RunningSink {
    let telemetry = Telemetry::new();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let t = telemetry.clone();
    let task = tokio::spawn(async move {
        chatpipe_sink::run_with_telemetry(config, t, async move {
            let _ = rx.await;
        })
        .await
    });
    RunningSink { stop: Some(tx), task, telemetry }
}

impl RunningSink {
    /// Asks it to stop and waits (it drains and commits).
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.await.unwrap().unwrap();
    }

    /// The sum of every series of a counter or gauge (0 when absent), or a histogram's count.
    pub fn metric(&self, name: &str) -> f64 {
        metric(&self.telemetry, name, None)
    }

    /// Like [`Self::metric`], for the series with `label = value`.
    pub fn metric_with(&self, name: &str, label: &str, value: &str) -> f64 {
        metric(&self.telemetry, name, Some((label, value)))
    }
}

pub fn metric(t: &Telemetry, name: &str, label: Option<(&str, &str)>) -> f64 {
    let mut sum = 0.0;
    for family in t.registry.gather() {
        if family.name() != name {
            continue;
        }
        for m in family.get_metric() {
            if let Some((k, v)) = label {
                if !m.get_label().iter().any(|l| l.name() == k && l.value() == v) {
                    continue;
                }
            }
            sum +=
                m.get_counter().get_value() + m.get_gauge().get_value() + m.get_histogram().get_sample_count() as f64;
        }
    }
    sum
}

/// Reads committed offsets of a group and end offsets of a topic.
pub struct Offsets {
    consumer: BaseConsumer,
    topic: String,
    partitions: i32,
}

impl Offsets {
    /// For `group` on `topic` with `partitions` partitions.
    pub fn new(broker: &TestBroker, group: &str, topic: &str, partitions: i32) -> Self {
        let consumer: BaseConsumer =
            ClientConfig::new().set("bootstrap.servers", broker.bootstrap()).set("group.id", group).create().unwrap();
        Offsets { consumer, topic: topic.to_owned(), partitions }
    }

    fn tpl(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions {
            tpl.add_partition(&self.topic, p);
        }
        tpl
    }

    /// Committed offset per partition (0 when none).
    pub fn committed(&self) -> Vec<i64> {
        let tpl = tokio::task::block_in_place(|| self.consumer.committed_offsets(self.tpl(), Duration::from_secs(10)))
            .unwrap();
        (0..self.partitions)
            .map(|p| match tpl.find_partition(&self.topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => 0,
            })
            .collect()
    }

    /// Commits `offset` for every partition (the group must have no live member).
    pub fn reset_to(&self, offset: i64) {
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions {
            tpl.add_partition_offset(&self.topic, p, Offset::Offset(offset)).unwrap();
        }
        tokio::task::block_in_place(|| self.consumer.commit(&tpl, CommitMode::Sync)).unwrap();
    }

    /// Waits until every partition's committed offset reaches `ends` (tansu's high
    /// watermarks lag, so the ends come from the producer's delivery reports).
    pub async fn wait_caught_up(&self, ends: &[i64], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let committed = self.committed();
            if committed == ends {
                return;
            }
            assert!(Instant::now() < deadline, "timed out after {timeout:?}: committed {committed:?}, ends {ends:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// End offset per partition of what was produced: `max(offset) + 1`.
pub fn ends(placed: &[(i32, i64)], partitions: i32) -> Vec<i64> {
    let mut ends = vec![0; partitions as usize];
    for (p, o) in placed {
        ends[*p as usize] = ends[*p as usize].max(o + 1);
    }
    ends
}

/// Logs to stderr (shown for failing tests): `RUST_LOG`-style filter in `CHATPIPE_TEST_LOG`.
pub fn init_logs() {
    let level = std::env::var("CHATPIPE_TEST_LOG").unwrap_or_else(|_| "info".into());
    let args = chatpipe_common::telemetry::LogArgs {
        log_format: Some(chatpipe_common::telemetry::LogFormat::Text),
        log_level: level,
    };
    let _ = chatpipe_common::telemetry::init(&args, chatpipe_common::telemetry::LogFormat::Text);
}
