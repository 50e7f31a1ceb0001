//! Live push end to end on tansu: a client connected to `GET /v1/users/1/stream` before the
//! rows are produced to `chat.rows` receives exactly the events for user 1 — new inbox
//! entries, a large group's new message (read fan-out), an edit, a recall, unread changes —
//! in order per session, nothing for other users; after a disconnect in the middle it
//! resumes with `Last-Event-ID` and receives the rest without gaps or duplicates. A
//! malformed `Last-Event-ID` is a 400 naming it; a position this server cannot vouch for
//! gets a `reset` event. And the feed keeps inbox pages exact although serve caches each
//! user's large groups: with a cache TTL of an hour, a join seen on `chat.rows` is what makes
//! the new group's messages appear in the user's inbox.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chatpipe_common::kafka::TopicSpec;
use chatpipe_common::row_key;
use chatpipe_common::rows::{Cell, RowBatch, RowMutation};
use chatpipe_tests::serve_support;
use chatpipe_tests::{TestBroker, TestHbase};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use serve_support::{config, id_key, write_rows, Model, Serve, Sse, Stream, FANOUT_MAX};

const TOPIC: &str = "chat.rows";

fn put(table: &str, row: String, cells: &[(&str, String)]) -> RowMutation {
    RowMutation {
        table: table.to_owned(),
        row: row.into_bytes(),
        cells: cells.iter().map(|(c, v)| Cell::new(*c, v.as_bytes().to_vec())).collect(),
        delete: false,
        ingested_at_ms: 0,
    }
}

/// The records of one step: (partition, mutations).
type Step = (i32, Vec<RowMutation>);

/// One `chat.rows` record per step (what the processor writes for one event).
async fn produce(producer: &FutureProducer, steps: &[Step]) {
    for (partition, muts) in steps {
        let mut payload = Vec::new();
        chatpipe_common::rows::encode_record(&RowBatch { mutations: muts.clone() }, &mut payload).unwrap();
        producer
            .send(FutureRecord::to(TOPIC).partition(*partition).key("s").payload(&payload), Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
}

fn message_rows(session: u64, id: u64, sender: u64, seq: u64, body: &str, inbox_users: &[u64]) -> Vec<RowMutation> {
    let mut v = vec![put(
        "chat:messages",
        row_key::encode(session, id),
        &[
            ("m:sender", sender.to_string()),
            ("m:kind", "text".into()),
            ("m:body", body.into()),
            ("m:sent_at", "1767225700000".into()),
            ("m:seq", seq.to_string()),
        ],
    )];
    for u in inbox_users {
        v.push(put(
            "chat:inbox",
            row_key::encode(*u, id),
            &[
                ("i:session", session.to_string()),
                ("i:sender", sender.to_string()),
                ("i:kind", "text".into()),
                ("i:preview", body.into()),
                ("i:seq", seq.to_string()),
            ],
        ));
    }
    v
}

fn last_seq(session: u64, seq: u64, id: u64) -> RowMutation {
    put(
        "chat:sessions",
        id_key(session),
        &[
            ("s:last_seq", seq.to_string()),
            ("s:last_message_id", id.to_string()),
            ("s:last_sent_at", "1767225700000".into()),
        ],
    )
}

fn read_mark(user: u64, session: u64, seq: u64) -> RowMutation {
    put("chat:user_sessions", row_key::encode_pair(user, session), &[("f:read_seq", seq.to_string())])
}

fn entry(id: u64, session: u64, sender: u64, seq: u64, preview: &str, source: &str) -> Value {
    json!({"message_id": id.to_string(), "session_id": session.to_string(), "sender_id": sender.to_string(),
           "kind": "text", "preview": preview, "seq": seq, "recalled": false, "source": source})
}

fn unread(session: u64, last: u64, read: u64) -> Value {
    json!({"session_id": session.to_string(), "last_seq": last, "read_seq": read, "unread": last - read})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_client_gets_exactly_its_events_and_resumes_without_gaps() {
    let broker = TestBroker::start();
    broker.create_topics(&[TopicSpec::new(TOPIC, 2)]).await;
    let hbase = TestHbase::start();
    let model = Model::build();
    let thrift = hbase.thrift();
    let m = model.clone();
    tokio::task::spawn_blocking(move || m.write(&thrift)).await.unwrap();
    let mut cfg = config(&hbase.thrift());
    cfg.no_push = false;
    cfg.kafka = broker.kafka_args();
    let serve = Serve::start(cfg).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !serve.telemetry.health.is_ready() {
        assert!(Instant::now() < deadline, "serve not ready: {:?}", serve.telemetry.health.not_ready());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", broker.bootstrap()).create().unwrap();

    // a malformed position is a 400 naming the header
    let r = serve
        .client
        .get(format!("{}/v1/users/1/stream", serve.base))
        .header("Last-Event-ID", "garbage")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(body["errors"][0]["parameter"], "Last-Event-ID");

    let mut stream = Stream::open(&serve, 1, None).await;
    let edited = model.session(1002).msgs[0].clone();
    let (d7, l14, d8, x1) =
        (8_000_000_000_000_001u64, 8_000_000_000_000_002u64, 8_000_000_000_000_003u64, 8_000_000_000_000_004u64);
    // direct 1001 and small 1002 on partition 0; large 1003 and the others' 1005 on 1
    let phase_a: Vec<Step> = vec![
        (0, {
            let mut v = message_rows(1001, d7, 2, 7, "seven", &[1, 2]);
            v.push(last_seq(1001, 7, d7));
            v.push(read_mark(2, 1001, 7));
            v
        }),
        (1, {
            let mut v = message_rows(1003, l14, 5, 14, "fourteen", &[]);
            v.push(last_seq(1003, 14, l14));
            v.push(read_mark(5, 1003, 14));
            v
        }),
        (1, message_rows(1005, x1, 2, 1, "not for user 1", &[2, 3])),
        (0, {
            let mut v = vec![put(
                "chat:messages",
                row_key::encode(1002, edited.id),
                &[("m:body", "fixed".into()), ("m:edited", "1".into())],
            )];
            for u in [1, 2, 3] {
                v.push(put("chat:inbox", row_key::encode(u, edited.id), &[("i:preview", "fixed".into())]));
            }
            v
        }),
        (0, vec![read_mark(1, 1001, 7)]),
    ];
    let phase_b: Vec<Step> = vec![
        (1, vec![put("chat:messages", row_key::encode(1003, l14), &[("m:recalled", "1".into())])]),
        (0, {
            let mut v = message_rows(1001, d8, 1, 8, "eight", &[1, 2]);
            v.push(last_seq(1001, 8, d8));
            v.push(read_mark(1, 1001, 8));
            v
        }),
    ];
    // what user 1 must receive, per session, in order
    let mut expected: BTreeMap<u64, Vec<(String, Value)>> = BTreeMap::new();
    let mut exp = |s: u64, kind: &str, v: Value| expected.entry(s).or_default().push((kind.to_owned(), v));
    exp(1001, "message", entry(d7, 1001, 2, 7, "seven", "inbox"));
    exp(1001, "unread", unread(1001, 7, 4));
    exp(1003, "message", entry(l14, 1003, 5, 14, "fourteen", "timeline"));
    exp(1003, "unread", unread(1003, 14, 2));
    exp(1002, "update", json!({"message_id": edited.id.to_string(), "preview": "fixed", "recalled": false}));
    exp(1001, "unread", unread(1001, 7, 7));
    exp(1003, "update", json!({"message_id": l14.to_string(), "preview": null, "recalled": true}));
    exp(1001, "message", entry(d8, 1001, 1, 8, "eight", "inbox"));
    exp(1001, "unread", unread(1001, 8, 7));
    exp(1001, "unread", unread(1001, 8, 8));
    let total: usize = expected.values().map(Vec::len).sum();
    let session_of = |e: &Sse| -> u64 {
        if let Some(s) = e.data["session_id"].as_str() {
            return s.parse().unwrap();
        }
        let id = e.data["message_id"].as_str().unwrap();
        if id == edited.id.to_string() {
            1002
        } else {
            1003
        }
    };

    produce(&producer, &phase_a).await;
    let mut received = Vec::new();
    for _ in 0..4 {
        received.push(stream.next().await);
    }
    drop(stream); // disconnect mid-way; the rest of phase A arrives while away
    let last_id = received.last().unwrap().id.clone();
    produce(&producer, &phase_b).await;
    let mut stream = Stream::open(&serve, 1, Some(&last_id)).await;
    while received.len() < total {
        let e = stream.next().await;
        assert_ne!(e.event, "reset", "the position was retained: {e:?}");
        received.push(e);
    }
    let mut got: BTreeMap<u64, Vec<(String, Value)>> = BTreeMap::new();
    for e in &received {
        got.entry(session_of(e)).or_default().push((e.event.clone(), e.data.clone()));
    }
    assert_eq!(got, expected);
    let ids: std::collections::BTreeSet<&str> = received.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), received.len(), "event ids are unique");
    // nothing more: a marker for user 1 after everything, and it is the next event
    produce(&producer, &[(1, vec![read_mark(1, 1003, 14)])]).await;
    let e = stream.next().await;
    assert_eq!((e.event.as_str(), &e.data), ("unread", &unread(1003, 14, 14)));

    // a position of another feed (wrong partition count) gets a reset, then live events
    drop(stream);
    let mut stream = Stream::open(&serve, 1, Some("0:5:0:5")).await;
    let e = stream.next().await;
    assert_eq!(e.event, "reset");
    // resuming from the reset's id is exact: the next event is the next one for user 1
    let reset_id = e.id.clone();
    drop(stream);
    let mut stream = Stream::open(&serve, 1, Some(&reset_id)).await;
    produce(&producer, &[(0, vec![read_mark(1, 1002, 7)]), (1, vec![read_mark(1, 1003, 14)])]).await;
    // 1002: read_seq already 7 = last_seq, no change; 1003 unchanged: nothing for either,
    // so send a real change to see the stream is live
    produce(&producer, &[(0, vec![last_seq(1002, 9, 1)])]).await;
    let e = stream.next().await;
    assert_eq!((e.event.as_str(), &e.data), ("unread", &unread(1002, 9, 7)));
    drop(stream);
    serve.handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_on_the_feed_refreshes_the_cached_large_groups_of_an_inbox() {
    let broker = TestBroker::start();
    broker.create_topics(&[TopicSpec::new(TOPIC, 2)]).await;
    let hbase = TestHbase::start();
    let model = Model::build();
    let thrift = hbase.thrift();
    let m = model.clone();
    tokio::task::spawn_blocking(move || m.write(&thrift)).await.unwrap();
    let mut cfg = config(&hbase.thrift());
    cfg.no_push = false;
    cfg.kafka = broker.kafka_args();
    cfg.inbox_cache_ttl = Duration::from_secs(3600); // only the feed can refresh an entry
    let serve = Serve::start(cfg).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !serve.telemetry.health.is_ready() {
        assert!(Instant::now() < deadline, "serve not ready: {:?}", serve.telemetry.health.not_ready());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", broker.bootstrap()).create().unwrap();
    let (_, page) = serve.get("/v1/users/1/inbox?limit=200").await;
    assert_eq!(page["entries"], json!(model.inbox(1)), "user 1's large groups are now cached");

    // a large group 1006 that user 1 joins, as the sink writes it
    let (group, message) = (1006u64, 8_100_000_000_000_001u64);
    let members = FANOUT_MAX + 1;
    let thrift = hbase.thrift();
    let membership = ("f:joined_seq", "0".to_owned());
    tokio::task::spawn_blocking(move || {
        write_rows(
            &thrift,
            "chat:sessions",
            vec![(
                id_key(group),
                vec![
                    ("s:kind", "group".into()),
                    ("s:members", members.to_string()),
                    ("s:last_seq", "1".into()),
                    ("s:created_at", "1767225700000".into()),
                ],
            )],
        );
        write_rows(
            &thrift,
            "chat:messages",
            vec![(
                row_key::encode(group, message),
                vec![
                    ("m:sender", "5".into()),
                    ("m:kind", "text".into()),
                    ("m:body", "in the new group".into()),
                    ("m:sent_at", "1767225700000".into()),
                    ("m:seq", "1".into()),
                ],
            )],
        );
        write_rows(
            &thrift,
            "chat:user_sessions",
            vec![(row_key::encode_pair(1, group), vec![membership, ("f:read_seq", "0".into())])],
        );
    })
    .await
    .unwrap();
    // HBase has the join, the cached entry does not: the page is still the old one
    let (_, page) = serve.get("/v1/users/1/inbox?limit=200").await;
    assert_eq!(page["entries"], json!(model.inbox(1)), "served from the cached large groups");

    // the join on the feed drops the entry; the next pages merge the new group
    produce(
        &producer,
        &[(0, vec![put("chat:user_sessions", row_key::encode_pair(1, group), &[("f:joined_seq", "0".into())])])],
    )
    .await;
    let want = entry(message, group, 5, 1, "in the new group", "timeline");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, page) = serve.get("/v1/users/1/inbox?limit=200").await;
        if page["entries"][0] == want {
            let mut all = vec![want.clone()];
            all.extend(model.inbox(1));
            assert_eq!(page["entries"], json!(all));
            break;
        }
        assert!(Instant::now() < deadline, "the join on the feed never reached the inbox: {page}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    serve.handle.shutdown().await.unwrap();
}
