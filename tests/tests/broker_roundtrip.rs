//! Against a real tansu from the harness: events encoded in the envelope, produced with an
//! idempotent producer (acks=all), consumed back in a consumer group, decoded and compared
//! one by one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use chatpipe_common::envelope;
use chatpipe_common::event::{ChatEvent, EventInput, EventType, MessageContent, MessageKind, SessionKind};
use chatpipe_common::kafka::TopicSpec;
use chatpipe_tests::{Storage, TestBroker};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

fn event(i: u64) -> ChatEvent {
    let input = EventInput {
        event_type: EventType::Message,
        session_id: 1_000 + i % 37,
        session_kind: if i.is_multiple_of(3) { SessionKind::Direct } else { SessionKind::Group },
        sender_id: 10 + i % 11,
        recipient_id: i.is_multiple_of(3).then_some(99),
        client_msg_id: Some(format!("c-{i}")),
        sent_at_ms: Some(1_790_000_000_000 + i as i64),
        message: Some(MessageContent {
            kind: MessageKind::Text,
            body: format!("hello {i} {}", "x".repeat((i % 200) as usize)),
            mentions: vec![i],
        }),
        target_id: None,
        user_id: None,
        read_seq: None,
        name: None,
        avatar_url: None,
    };
    ChatEvent::from_input(input, 7_000_000 + i, 1_790_000_000_500 + i as i64, 60_000)
}

async fn round_trip(broker: &TestBroker, topic: &str, n: u64) {
    broker.create_topics(&[TopicSpec::new(topic, 4)]).await;
    let producer: FutureProducer = broker.kafka_args().producer_config("test", 5).create().unwrap();
    let sends: Vec<_> = (0..n)
        .map(|i| {
            let ev = event(i);
            let key = ev.session_id.to_string();
            let value = envelope::encode(&ev).unwrap();
            let producer = producer.clone();
            let topic = topic.to_owned();
            async move {
                producer
                    .send(FutureRecord::to(&topic).key(&key).payload(&value), Duration::from_secs(30))
                    .await
                    .map(|_| ())
                    .map_err(|(e, _)| e)
            }
        })
        .collect();
    for r in futures::future::join_all(sends).await {
        r.expect("every event is acknowledged");
    }

    let consumer: StreamConsumer = broker
        .kafka_args()
        .client_config("test")
        .set("group.id", format!("rt-{topic}"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut got: Vec<Option<ChatEvent>> = vec![None; n as usize];
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen < n {
        assert!(Instant::now() < deadline, "only {seen} of {n} events came back");
        let msg = match tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await {
            Ok(m) => m.unwrap(),
            Err(_) => continue,
        };
        let ev: ChatEvent = envelope::decode(msg.payload().unwrap()).unwrap();
        assert_eq!(msg.key().unwrap(), ev.session_id.to_string().as_bytes(), "keyed by session id");
        let i = (ev.message_id - 7_000_000) as usize;
        assert!(got[i].is_none(), "event {i} delivered twice");
        got[i] = Some(ev);
        seen += 1;
    }
    for (i, g) in got.into_iter().enumerate() {
        assert_eq!(g.unwrap(), event(i as u64), "event {i} differs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_round_trip_through_tansu() {
    let broker = TestBroker::start();
    round_trip(&broker, "rt.events", 10_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_broker_keeps_acknowledged_events_across_restart() {
    let mut broker = TestBroker::start_with(Storage::Sqlite);
    broker.create_topics(&[TopicSpec::new("rt.durable", 1)]).await;
    let producer: FutureProducer = broker.kafka_args().producer_config("test", 0).create().unwrap();
    for i in 0..100 {
        let v = envelope::encode(&event(i)).unwrap();
        producer
            .send(FutureRecord::to("rt.durable").key("k").payload(&v), Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    drop(producer);
    broker.restart();
    let consumer: StreamConsumer = broker
        .kafka_args()
        .client_config("test")
        .set("group.id", "durable")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["rt.durable"]).unwrap();
    for i in 0..100 {
        let msg =
            tokio::time::timeout(Duration::from_secs(60), consumer.recv()).await.expect("event after restart").unwrap();
        let ev: ChatEvent = envelope::decode(msg.payload().unwrap()).unwrap();
        assert_eq!(ev, event(i));
    }
}
