//! An output record the broker refuses for what it is (here: over a deliberately small
//! `message.max.bytes`) is not retried forever and not dropped silently: a DLQ record names
//! its topic and size, carries its key and the input batch it came from (reason
//! `output_refused`), and the partition goes on with the events after it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use chatpipe_common::envelope;
use chatpipe_common::event::{ChatEvent, EventType, MessageContent, MessageKind, SessionKind};
use chatpipe_common::http::Telemetry;
use chatpipe_common::kafka::{dlq, parse_kafka_option, TopicSpec};
use chatpipe_common::rows;
use chatpipe_tests::TestBroker;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

fn event(id: u64, ty: EventType, session: u64, sender: u64) -> ChatEvent {
    let now = chatpipe_tests::now_ms();
    let mut e = ChatEvent::bare(id, now, ty, session, SessionKind::Group, sender);
    e.user_id = (ty == EventType::Join).then_some(sender);
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_output_goes_to_the_dlq_and_the_partition_moves_on() {
    let broker = TestBroker::start();
    broker.create_topics(&[TopicSpec::new("chat.events", 1)]).await;
    let mut c = chatpipe_processor::Config::for_brokers(&broker.bootstrap());
    c.group_id = "p-refused".into();
    c.events_partitions = 1;
    c.output_partitions = 1;
    c.drain_timeout = Duration::from_secs(5);
    // librdkafka's smallest limit: a group message fanned out to 30 inboxes is far above it
    c.kafka.options.push(parse_kafka_option("message.max.bytes=2000").unwrap());
    let handle = chatpipe_processor::start(c, Telemetry::new()).await.unwrap();

    // 30 joins, one message (its chat.rows record is ~8 KB), then one more join
    let mut events: Vec<ChatEvent> = (0..30).map(|u| event(100 + u, EventType::Join, 7, 1000 + u)).collect();
    let mut msg = event(500, EventType::Message, 7, 1000);
    msg.message = Some(MessageContent { kind: MessageKind::Text, body: "hello there".into(), mentions: vec![] });
    events.push(msg);
    events.push(event(600, EventType::Join, 7, 2000));
    let producer: FutureProducer = broker.kafka_args().producer_config("test", 5).create().unwrap();
    for e in &events {
        let value = envelope::encode(e).unwrap();
        producer
            .send(FutureRecord::to("chat.events").partition(0).key("7").payload(&value), Duration::from_secs(30))
            .await
            .unwrap();
    }

    // the DLQ names the refused record; chat.rows has the join that came after it
    let consumer: BaseConsumer = broker
        .kafka_args()
        .client_config("check")
        .set("group.id", "check")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["chat.dlq", "chat.rows"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let (mut refused, mut later_join) = (None, false);
    while (refused.is_none() || !later_join) && Instant::now() < deadline {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else { continue };
        if m.topic() == "chat.dlq" {
            let headers: Vec<(String, String)> = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|x| (x.key.to_owned(), String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned()))
                        .collect()
                })
                .unwrap_or_default();
            let get = |k: &str| headers.iter().find(|(hk, _)| hk == k).map(|(_, v)| v.clone());
            if get(dlq::REASON).as_deref() == Some("output_refused") {
                refused = Some((get(dlq::TOPIC), get(dlq::DETAIL)));
            }
        } else if let Some(v) = m.payload() {
            let ms = rows::decode_record(v).unwrap();
            later_join |= ms.iter().any(|r| r.row.ends_with(b"|2000") && r.table == rows::tables::MEMBERS);
        }
    }
    handle.shutdown().await.unwrap();
    let (topic, detail) = refused.expect("a DLQ record for the refused output");
    assert_eq!(topic.as_deref(), Some("chat.events"), "the source is the input the output was made from");
    assert!(detail.unwrap_or_default().contains("byte record for chat.rows"));
    assert!(later_join, "the event after the refused output was processed");
}
