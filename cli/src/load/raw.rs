//! The baseline of `--raw-kafka-brokers`: the same events produced straight to the broker.

use super::generate::{body, message_input};
use super::*;

/// The broker's raw produce ceiling for the same events: a producer loop with the
/// configuration ingest uses, for `--duration` or `--events` messages.
pub(super) async fn raw_ceiling(args: &LoadArgs, brokers: &str) -> Result<()> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let mut kafka = chatpipe_common::kafka::KafkaArgs::new(brokers);
    kafka.options.clone_from(&args.raw_kafka_options);
    chatpipe_common::kafka::ensure_topics(
        &kafka,
        &[chatpipe_common::kafka::TopicSpec::new("chatpipe.bench.raw", 4)],
        Duration::from_secs(30),
    )
    .await?;
    let producer: FutureProducer = kafka.producer_config("bench-raw", 5).create()?;
    let mut rng = StdRng::seed_from_u64(args.seed);
    let deadline = args.duration.map(|d| Instant::now() + d);
    let target = args.events.unwrap_or(u64::MAX);
    let started = Instant::now();
    let mut sent = 0u64;
    let mut id = 1u64 << 40;
    while sent < target && deadline.is_none_or(|d| Instant::now() < d) {
        let mut batch = Vec::with_capacity(1000);
        for _ in 0..1000 {
            id += 1;
            let session = rng.gen_range(0..args.sessions);
            let content =
                MessageContent { kind: MessageKind::Text, body: body(&mut rng, args.body_size), mentions: vec![] };
            let input =
                message_input((session + 1, SessionKind::Group), id % 50 + 1, None, format!("raw-{id}"), content);
            let ev =
                chatpipe_common::event::ChatEvent::from_input(input, id, chrono::Utc::now().timestamp_millis(), 60_000);
            batch.push((ev.session_id.to_string(), chatpipe_common::envelope::encode(&ev)?));
        }
        let sends: Vec<_> = batch
            .iter()
            .map(|(k, v)| {
                producer.send(FutureRecord::to("chatpipe.bench.raw").key(k).payload(v), Duration::from_secs(30))
            })
            .collect();
        for r in futures::future::join_all(sends).await {
            r.map_err(|(e, _)| e)?;
        }
        sent += 1000;
    }
    let secs = started.elapsed().as_secs_f64();
    println!("raw produce ceiling: {sent} events in {secs:.1} s = {:.0} events/s", sent as f64 / secs);
    Ok(())
}
