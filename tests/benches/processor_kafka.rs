//! Processor throughput on a real broker vs a raw consume→produce passthrough, same broker,
//! same run; then the time to restore the processor's state from the changelog.
//!
//! Run: `cargo bench -p chatpipe-tests --bench processor_kafka` (env `BENCH_EVENTS`, default
//! 200,000). Workload: 10,000 sessions, groups of 3–30 members (joined first, not counted
//! as events), ~300-byte text messages, 10% reads of the session's latest message. Prints events/s and events per CPU-second
//! (this process's user+system time, broker excluded) for both, and the restore time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use chatpipe_common::envelope;
use chatpipe_common::event::{ChatEvent, EventType, MessageContent, MessageKind, SessionKind};
use chatpipe_common::http::Telemetry;
use chatpipe_common::kafka::TopicSpec;
use chatpipe_tests::TestBroker;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, TopicPartitionList};

const PARTITIONS: i32 = 8;

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0 // utime + stime, in clock ticks of 1/100 s
}

fn workload(n: usize) -> (Vec<ChatEvent>, usize) {
    let mut x = 42u64;
    let mut rnd = move || {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        x >> 33
    };
    let t0 = chatpipe_tests::now_ms() - 3_600_000;
    let body: String = "lorem ipsum dolor sit amet ".repeat(12).chars().take(300).collect();
    let mut id = 1u64 << 40;
    let mut out = Vec::new();
    let mut sizes = Vec::new();
    let base = |t: i64, id: u64, ty: EventType, s: u64, sk: SessionKind, sender: u64| {
        ChatEvent::bare(id, t, ty, s, sk, sender)
    };
    for s in 0..10_000u64 {
        let size = 3 + rnd() % 28;
        sizes.push(size);
        for u in 0..size {
            id += 1;
            let mut e = base(t0, id, EventType::Join, s, SessionKind::Group, s * 100 + u);
            e.user_id = Some(s * 100 + u);
            out.push(e);
        }
    }
    let joins = out.len();
    let mut last = std::collections::HashMap::new(); // session → its latest message id
    for i in 0..n {
        let s = rnd() % 10_000;
        id += 1;
        let t = t0 + (i as i64) * 1_800_000 / n as i64;
        let sender = s * 100 + rnd() % sizes[s as usize];
        let mut e = if i % 10 == 9 && last.contains_key(&s) {
            let mut e = base(t, id, EventType::Read, s, SessionKind::Group, sender);
            e.target_id = last.get(&s).copied();
            e
        } else {
            last.insert(s, id);
            let mut e = base(t, id, EventType::Message, s, SessionKind::Group, sender);
            e.message = Some(MessageContent { kind: MessageKind::Text, body: body.clone(), mentions: vec![] });
            e.client_msg_id = Some(format!("c{id}"));
            e
        };
        e.ingested_at_ms = t;
        out.push(e);
    }
    (out, joins)
}

async fn produce(broker: &TestBroker, topic: &str, events: &[ChatEvent]) {
    let producer: FutureProducer = broker.kafka_args().producer_config("bench", 20).create().unwrap();
    for chunk in events.chunks(10_000) {
        let sends: Vec<_> = chunk
            .iter()
            .map(|e| {
                let v = envelope::encode(e).unwrap();
                let k = e.session_id.to_string();
                let p = producer.clone();
                let topic = topic.to_owned();
                async move {
                    p.send(FutureRecord::to(&topic).key(&k).payload(&v), Duration::from_secs(60))
                        .await
                        .map_err(|(e, _)| e)
                        .unwrap()
                }
            })
            .collect();
        futures::future::join_all(sends).await;
    }
}

fn end_offsets(broker: &TestBroker, topic: &str) -> TopicPartitionList {
    let c: BaseConsumer = broker.kafka_args().client_config("bench-meta").create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        let (_, high) = c.fetch_watermarks(topic, p, Duration::from_secs(10)).unwrap();
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Offset(high)).unwrap();
    }
    tpl
}

/// Waits until `group` has committed the end of every partition of `topic`.
async fn wait_committed(broker: &TestBroker, group: &str, topic: &str) {
    let ends = end_offsets(broker, topic);
    let c: BaseConsumer = broker.kafka_args().client_config("bench-watch").set("group.id", group).create().unwrap();
    loop {
        let committed = c.committed_offsets(ends.clone(), Duration::from_secs(10)).unwrap();
        // tansu can report a high watermark below the last offset + 1, so "at or past" the end
        let done = committed.elements().iter().zip(ends.elements()).all(|(c, e)| match (c.offset(), e.offset()) {
            (rdkafka::Offset::Offset(c), rdkafka::Offset::Offset(e)) => c >= e,
            _ => false,
        });
        if done {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let broker = TestBroker::start();
    broker
        .create_topics(&[TopicSpec::new("chat.events", PARTITIONS), TopicSpec::new("bench.passthrough", PARTITIONS)])
        .await;
    let (events, joins) = workload(n);
    produce(&broker, "chat.events", &events).await;
    println!("workload: {} records on chat.events ({joins} joins + {n} messages/reads)", events.len());

    // raw passthrough: consume every record and produce it unchanged, committing as it goes
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    {
        let consumer: StreamConsumer = broker
            .kafka_args()
            .client_config("bench-pass")
            .set("group.id", "bench-pass")
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "200")
            .create()
            .unwrap();
        consumer.subscribe(&["chat.events"]).unwrap();
        let producer: FutureProducer = broker.kafka_args().producer_config("bench-pass", 5).create().unwrap();
        let mut pending = Vec::with_capacity(4096);
        for _ in 0..events.len() {
            let m = consumer.recv().await.unwrap().detach();
            let producer = producer.clone();
            pending.push(async move {
                let rec = FutureRecord::to("bench.passthrough")
                    .key(m.key().unwrap_or_default())
                    .payload(m.payload().unwrap_or_default());
                producer.send(rec, Duration::from_secs(60)).await
            });
            if pending.len() >= 4096 {
                futures::future::join_all(pending.drain(..)).await;
            }
        }
        futures::future::join_all(pending).await;
        consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync).unwrap();
    }
    let (pass_s, pass_cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
    let total = events.len() as f64;
    println!(
        "passthrough: {:.1} s, {:.0} events/s, {:.0} events per CPU-second",
        pass_s,
        total / pass_s,
        total / pass_cpu.max(1e-9)
    );

    // the processor, same broker, same input
    let mut cfg = chatpipe_processor::Config::for_brokers(&broker.bootstrap());
    cfg.group_id = "bench-processor".into();
    cfg.events_partitions = PARTITIONS;
    cfg.output_partitions = PARTITIONS;
    let telemetry = Telemetry::new();
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let handle = chatpipe_processor::start(cfg.clone(), telemetry.clone()).await.unwrap();
    wait_committed(&broker, "bench-processor", "chat.events").await;
    let (proc_s, proc_cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
    let outputs: f64 = telemetry
        .registry
        .gather()
        .iter()
        .filter(|f| f.name() == chatpipe_processor::metrics::OUTPUT)
        .flat_map(|f| f.get_metric().iter().map(|m| m.get_counter().get_value()))
        .sum();
    println!(
        "processor: {:.1} s, {:.0} events/s ({:.2}x passthrough), {:.0} events per CPU-second ({:.2}x); {outputs:.0} output records ({:.1} per event)",
        proc_s,
        total / proc_s,
        pass_s / proc_s,
        total / proc_cpu.max(1e-9),
        pass_cpu / proc_cpu.max(1e-9),
        outputs / total
    );
    handle.shutdown().await.unwrap();

    // restore: a new instance rebuilds every partition's state from the changelog
    let telemetry = Telemetry::new();
    let t0 = Instant::now();
    let handle = chatpipe_processor::start(cfg, telemetry.clone()).await.unwrap();
    let (mut entries, mut restored) = (0.0, 0u64);
    while restored < PARTITIONS as u64 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let fams = telemetry.registry.gather();
        restored = fams
            .iter()
            .filter(|f| f.name() == chatpipe_processor::metrics::RESTORE)
            .map(|f| f.get_metric()[0].get_histogram().get_sample_count())
            .sum();
        entries = fams
            .iter()
            .filter(|f| f.name() == chatpipe_processor::metrics::STATE_ENTRIES)
            .flat_map(|f| f.get_metric().iter().map(|m| m.get_gauge().get_value()))
            .sum();
    }
    println!(
        "restore: all {PARTITIONS} partitions restored in {:.2} s (state entries reported so far: {entries:.0})",
        t0.elapsed().as_secs_f64()
    );
    handle.shutdown().await.unwrap();
}
