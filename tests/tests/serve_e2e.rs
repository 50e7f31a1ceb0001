//! The whole pipeline under serve: a scripted chat (profiles, a direct session, a small
//! group, a group that grows past the fan-out threshold, a channel; edits, recalls, reads,
//! a leave) is posted to ingest over HTTP, processed, written by the sink to the emulator,
//! and read back through every serve endpoint. Each answer must equal an oracle simulated
//! here from the posted events and DESIGN's rules alone: timelines paged both ways and by
//! seq, inboxes including the large group merged from its timeline, unread per user and
//! session after reads and own messages, members, profiles.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chatpipe_common::http::Telemetry;
use chatpipe_common::kafka::{parse_kafka_option, KafkaArgs, TopicSpec};
use chatpipe_sink::hbase::{HbaseClient, HbaseConfig};
use chatpipe_tests::serve_support;
use chatpipe_tests::{TestBroker, TestHbase};
use serde_json::{json, Value};
use serve_support::{Membership, Model, Msg, Serve, Sess, Stream, PREVIEW_CHARS};

const PARTITIONS: i32 = 3;
const FANOUT: u64 = serve_support::FANOUT_MAX;

fn kafka(broker: &TestBroker) -> KafkaArgs {
    let mut k = broker.kafka_args();
    k.options.push(parse_kafka_option("session.timeout.ms=6000").unwrap());
    k
}

/// The oracle: the dataset the posted events imply, by DESIGN's rules.
struct Sim {
    model: Model,
    fanout: u64,
}

impl Sim {
    fn sess(&mut self, id: u64, kind: &'static str, at: i64) -> &mut Sess {
        if !self.model.sessions.iter().any(|s| s.id == id) {
            self.model.sessions.push(Sess {
                id,
                kind,
                name: None,
                created_at: at,
                members: Vec::new(),
                msgs: Vec::new(),
                inbox_for: BTreeMap::new(),
            });
        }
        self.model.sessions.iter_mut().find(|s| s.id == id).unwrap()
    }

    fn join(&mut self, id: u64, kind: &'static str, user: u64, at: i64) {
        let s = self.sess(id, kind, at);
        if s.members.iter().any(|m| m.user == user) {
            return;
        }
        let seq = s.msgs.len() as u64;
        s.members.push(Membership { user, joined_at: at, joined_seq: seq, read_seq: seq });
    }

    fn apply(&mut self, e: &Value, id: u64) {
        let num = |k: &str| e[k].as_u64().or_else(|| e[k].as_str().and_then(|s| s.parse().ok()));
        let at = e["sent_at"].as_i64().unwrap();
        let session = num("session_id").unwrap();
        let kind: &'static str = match e["session_kind"].as_str() {
            Some("direct") => "direct",
            Some("channel") => "channel",
            _ => "group",
        };
        let sender = num("sender_id").unwrap();
        match e["type"].as_str().unwrap() {
            "profile" => {
                let user = num("user_id").unwrap();
                self.model
                    .profiles
                    .insert(user, (e["name"].as_str().unwrap().into(), e["avatar_url"].as_str().unwrap().into(), at));
            }
            "session" => {
                self.sess(session, kind, at).name = e["name"].as_str().map(str::to_owned);
            }
            "join" => self.join(session, kind, num("user_id").unwrap(), at),
            "leave" => {
                let user = num("user_id").unwrap();
                self.sess(session, kind, at).members.retain(|m| m.user != user);
            }
            "message" => {
                if kind == "direct" {
                    self.join(session, kind, sender, at);
                    self.join(session, kind, num("recipient_id").unwrap(), at);
                }
                let fanout = self.fanout;
                let s = self.sess(session, kind, at);
                let seq = s.msgs.len() as u64 + 1;
                let body = e["message"]["body"].as_str().unwrap().to_owned();
                let mentions = e["message"]["mentions"]
                    .as_array()
                    .map(|a| a.iter().map(|v| v.as_u64().unwrap()).collect())
                    .unwrap_or_default();
                s.msgs.push(Msg {
                    session,
                    id,
                    sender,
                    kind: "text",
                    body,
                    sent_at: at,
                    seq,
                    edited: 0,
                    recalled: false,
                    mentions,
                });
                let fanned = match kind {
                    "direct" => true,
                    "group" => s.members.len() as u64 <= fanout,
                    _ => false,
                };
                if fanned {
                    let mut users: Vec<u64> = s.members.iter().map(|m| m.user).collect();
                    if !users.contains(&sender) {
                        users.push(sender);
                    }
                    s.inbox_for.insert(seq, users);
                }
                // sending implies having read
                if let Some(m) = s.members.iter_mut().find(|m| m.user == sender) {
                    m.read_seq = m.read_seq.max(seq);
                }
            }
            "edit" | "recall" => {
                let target = num("target_id").unwrap();
                let s = self.sess(session, kind, at);
                let m = s.msgs.iter_mut().find(|m| m.id == target).unwrap();
                if e["type"] == "edit" {
                    m.body = e["message"]["body"].as_str().unwrap().to_owned();
                    m.edited += 1;
                } else {
                    m.recalled = true;
                }
            }
            "read" => {
                let s = self.sess(session, kind, at);
                let last = s.msgs.len() as u64;
                let upto = num("read_seq").unwrap().min(last);
                if let Some(m) = s.members.iter_mut().find(|m| m.user == sender) {
                    m.read_seq = m.read_seq.max(upto);
                }
            }
            other => panic!("unscripted event type {other}"),
        }
    }
}

/// The script: (event without ids, index of the message an edit/recall targets).
fn script(t0: i64) -> Vec<(Value, Option<usize>)> {
    let mut out: Vec<(Value, Option<usize>)> = Vec::new();
    let mut t = t0;
    let mut at = || {
        t += 1000;
        t
    };
    for u in 1..=4u64 {
        let at = at();
        out.push((
            json!({"type": "profile", "session_id": u.to_string(), "session_kind": "direct", "sender_id": u, "user_id": u,
                   "name": format!("user {u}"), "avatar_url": format!("https://example.com/{u}.png"), "sent_at": at}),
            None,
        ));
    }
    let msg = |session: u64, kind: &str, sender: u64, body: String, at: i64| {
        let mut v = json!({"type": "message", "session_id": session.to_string(), "session_kind": kind, "sender_id": sender,
                           "message": {"kind": "text", "body": body}, "sent_at": at});
        if kind == "direct" {
            v["recipient_id"] = json!(if sender == 1 { 2 } else { 1 });
        }
        v
    };
    let member = |ty: &str, session: u64, user: u64, at: i64| json!({"type": ty, "session_id": session.to_string(), "session_kind": "group", "sender_id": user, "user_id": user, "sent_at": at});
    // direct 100 between 1 and 2
    for i in 0..5u64 {
        let sender = 1 + i % 2;
        out.push((msg(100, "direct", sender, format!("direct {i}"), at()), None));
    }
    out.push((json!({"type": "read", "session_id": "100", "session_kind": "direct", "sender_id": 2, "read_seq": 3, "sent_at": at()}), None));
    // small group 200: three members, within the threshold
    out.push((json!({"type": "session", "session_id": "200", "session_kind": "group", "sender_id": 1, "name": "small", "sent_at": at()}), None));
    for u in 1..=3 {
        out.push((member("join", 200, u, at()), None));
    }
    let first_small = out.len();
    for i in 0..4u64 {
        let mut m = msg(200, "group", 1 + i % 3, format!("small {i}"), at());
        if i == 1 {
            m["message"]["body"] = json!(format!("a long one {}", "stored compressed ".repeat(40)));
        }
        if i == 3 {
            m["message"]["mentions"] = json!([2, 3]);
        }
        out.push((m, None));
    }
    // edit message 0 (sender 1), recall message 2 (sender 3)
    let mut edit = json!({"type": "edit", "session_id": "200", "session_kind": "group", "sender_id": 1,
                          "message": {"kind": "text", "body": "small 0, edited"}, "sent_at": at()});
    edit["target_id"] = json!(0);
    out.push((edit, Some(first_small)));
    out.push((
        json!({"type": "recall", "session_id": "200", "session_kind": "group", "sender_id": 3, "sent_at": at()}),
        Some(first_small + 2),
    ));
    out.push((json!({"type": "read", "session_id": "200", "session_kind": "group", "sender_id": 2, "read_seq": 3, "sent_at": at()}), None));
    // group 300: two members and two messages (fanned out), then three more join: large
    out.push((json!({"type": "session", "session_id": "300", "session_kind": "group", "sender_id": 1, "name": "big", "sent_at": at()}), None));
    for u in 1..=2 {
        out.push((member("join", 300, u, at()), None));
    }
    for i in 0..2u64 {
        out.push((msg(300, "group", 1 + i, format!("big early {i}"), at()), None));
    }
    for u in 3..=7 {
        out.push((member("join", 300, u, at()), None));
    }
    let first_big = out.len();
    for i in 0..7u64 {
        out.push((msg(300, "group", 1 + i % 5, format!("big {i}"), at()), None));
    }
    out.push((
        json!({"type": "edit", "session_id": "300", "session_kind": "group", "sender_id": 2,
               "message": {"kind": "text", "body": "big 1, edited"}, "sent_at": at()}),
        Some(first_big + 1),
    ));
    out.push((
        json!({"type": "recall", "session_id": "300", "session_kind": "group", "sender_id": 4, "sent_at": at()}),
        Some(first_big + 3),
    ));
    out.push((json!({"type": "read", "session_id": "300", "session_kind": "group", "sender_id": 5, "read_seq": 6, "sent_at": at()}), None));
    // channel 400
    for u in [1, 5] {
        let mut j = member("join", 400, u, at());
        j["session_kind"] = json!("channel");
        out.push((j, None));
    }
    for i in 0..3u64 {
        out.push((msg(400, "channel", 5, format!("post {i}"), at()), None));
    }
    // user 2 leaves the small group
    out.push((member("leave", 200, 2, at()), None));
    out
}

async fn answers(serve: &Serve, model: &Model) -> Result<(), String> {
    let eq = |what: String, got: &Value, want: &Value| {
        if got == want {
            Ok(())
        } else {
            Err(format!("{what}:\n got  {got}\n want {want}"))
        }
    };
    for s in &model.sessions {
        let id = s.id;
        let (_, page) = serve.get(&format!("/v1/sessions/{id}/messages?limit=200")).await;
        eq(format!("messages of {id}"), &page["messages"], &json!(model.timeline(id)))?;
        // paged newest first by 2, and by seq oldest first by 2
        let mut got = Vec::new();
        let mut before: Option<String> = None;
        loop {
            let url = match &before {
                None => format!("/v1/sessions/{id}/messages?limit=2"),
                Some(b) => format!("/v1/sessions/{id}/messages?limit=2&before={b}"),
            };
            let (_, p) = serve.get(&url).await;
            got.extend(p["messages"].as_array().cloned().unwrap_or_default());
            match p["next_before"].as_str() {
                Some(b) => before = Some(b.to_owned()),
                None => break,
            }
        }
        eq(format!("messages of {id} by pages"), &json!(got), &json!(model.timeline(id)))?;
        for after in [0, 1, s.msgs.len() as u64 / 2] {
            let (_, p) = serve.get(&format!("/v1/sessions/{id}/messages?after_seq={after}&limit=200")).await;
            eq(format!("messages of {id} after seq {after}"), &p["messages"], &json!(model.after_seq(id, after)))?;
        }
        let (_, p) = serve.get(&format!("/v1/sessions/{id}")).await;
        eq(format!("session {id}"), &p, &model.session_json(id))?;
        let (_, p) = serve.get(&format!("/v1/sessions/{id}/members?limit=200")).await;
        eq(format!("members of {id}"), &p["members"], &json!(model.members(id)))?;
    }
    for user in 1..=7u64 {
        let (_, p) = serve.get(&format!("/v1/users/{user}/inbox?limit=200")).await;
        eq(format!("inbox of {user}"), &p["entries"], &json!(model.inbox(user)))?;
        let (_, p) = serve.get(&format!("/v1/users/{user}/sessions?limit=200")).await;
        eq(format!("sessions of {user}"), &p["sessions"], &json!(model.user_sessions(user)))?;
        let (status, p) = serve.get(&format!("/v1/users/{user}")).await;
        match model.profile(user) {
            Some(want) => eq(format!("profile of {user}"), &p, &want)?,
            None => eq(format!("profile of {user}"), &json!(status), &json!(404))?,
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posted_chat_reads_back_through_every_endpoint() {
    let broker = TestBroker::start();
    broker.create_topics(&[TopicSpec::new("chat.events", PARTITIONS)]).await;
    let hbase = TestHbase::start();
    {
        let mut c = HbaseClient::connect(&HbaseConfig::new(hbase.thrift())).unwrap();
        chatpipe_sink::tables::create_all(&mut c).unwrap();
    }
    let ingest = chatpipe_ingest::start(chatpipe_ingest::Config::new(kafka(&broker)), Telemetry::new()).await.unwrap();
    assert!(ingest.wait_ready(Duration::from_secs(30)).await);
    let mut pc = chatpipe_processor::Config::for_brokers(&broker.bootstrap());
    pc.kafka = kafka(&broker);
    pc.events_partitions = PARTITIONS;
    pc.output_partitions = 2;
    pc.fanout_max_members = FANOUT as usize;
    pc.idle_timeout = Duration::from_secs(1);
    pc.metrics_listen = "127.0.0.1:0".parse().unwrap();
    let processor = chatpipe_processor::start(pc, Telemetry::new()).await.unwrap();
    let mut sc = chatpipe_sink::Config::new(kafka(&broker), hbase.thrift());
    sc.topic_partitions = 2;
    let stop = tokio_util::sync::CancellationToken::new();
    let sink = {
        let stop = stop.clone();
        tokio::spawn(async move {
            chatpipe_sink::run_with_telemetry(sc, Telemetry::new(), async move { stop.cancelled().await }).await
        })
    };
    let mut cfg = serve_support::config(&hbase.thrift());
    cfg.fanout_max_members = FANOUT;
    cfg.preview_chars = PREVIEW_CHARS;
    cfg.no_push = false;
    cfg.kafka = kafka(&broker);
    let serve = Serve::start(cfg).await;
    // user 1's stream, open before anything is posted (the sink creates chat.rows, so wait
    // until the push feed has it assigned)
    let deadline = Instant::now() + Duration::from_secs(60);
    while !serve.telemetry.health.is_ready() {
        assert!(Instant::now() < deadline, "serve not ready: {:?}", serve.telemetry.health.not_ready());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut stream = Stream::open(&serve, 1, None).await;

    // post one event per request, in order, mapping script positions to assigned ids
    let client = reqwest::Client::new();
    let url = format!("http://{}/v1/events", ingest.local_addr());
    let t0 = chatpipe_tests::now_ms() - 3_600_000;
    let mut sim = Sim { model: Model { sessions: Vec::new(), profiles: BTreeMap::new() }, fanout: FANOUT };
    let mut ids: Vec<u64> = Vec::new();
    for (mut event, target) in script(t0) {
        if let Some(t) = target {
            event["target_id"] = json!(ids[t].to_string());
        }
        let r =
            client.post(&url).header("content-type", "application/json").body(event.to_string()).send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(status, 202, "{event}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        let id: u64 = v["results"][0]["message_id"].as_str().unwrap().parse().unwrap();
        ids.push(id);
        sim.apply(&event, id);
    }
    let model = sim.model;
    assert!(model.session(300).members.len() as u64 > FANOUT, "the big group is above the threshold");
    assert!(model.inbox(1).iter().any(|e| e["source"] == "timeline"), "user 1 has merged entries");

    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        match answers(&serve, &model).await {
            Ok(()) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "serve differs from the oracle: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }

    // push: user 1 got one `message` per inbox entry (in seq order per session), one
    // `update` per edit or recall of those, and `unread` events ending at the oracle's unread
    let inbox = model.inbox(1);
    let updates = 4; // the small group's edit and recall, the big group's edit and recall
    let mut messages: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    let mut got_updates = BTreeMap::new();
    let mut unread: BTreeMap<String, u64> = BTreeMap::new();
    let want_unread: BTreeMap<String, u64> = model
        .user_sessions(1)
        .iter()
        .map(|s| (s["session_id"].as_str().unwrap().to_owned(), s["unread"].as_u64().unwrap()))
        .collect();
    while messages.values().map(Vec::len).sum::<usize>() < inbox.len()
        || got_updates.len() < updates
        || unread != want_unread
    {
        let e = stream.next().await;
        match e.event.as_str() {
            "message" => messages
                .entry(e.data["session_id"].as_str().unwrap().to_owned())
                .or_default()
                .push((e.data["seq"].as_u64().unwrap(), e.data["message_id"].as_str().unwrap().to_owned())),
            "update" => {
                got_updates.insert(e.data["message_id"].as_str().unwrap().to_owned(), e.data.clone());
            }
            "unread" => {
                unread.insert(e.data["session_id"].as_str().unwrap().to_owned(), e.data["unread"].as_u64().unwrap());
            }
            other => panic!("unexpected event {other}: {:?}", e.data),
        }
        assert!(
            messages.values().map(Vec::len).sum::<usize>() <= inbox.len(),
            "more messages than the inbox has: {messages:?}"
        );
    }
    let mut want_messages: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for e in &inbox {
        want_messages
            .entry(e["session_id"].as_str().unwrap().to_owned())
            .or_default()
            .push((e["seq"].as_u64().unwrap(), e["message_id"].as_str().unwrap().to_owned()));
    }
    for v in want_messages.values_mut() {
        v.sort();
    }
    assert_eq!(messages, want_messages, "pushed messages per session, in seq order");
    for (id, u) in &got_updates {
        let want =
            inbox.iter().find(|e| e["message_id"] == *id).unwrap_or_else(|| panic!("update of {id}, not in the inbox"));
        assert_eq!((&u["preview"], &u["recalled"]), (&want["preview"], &want["recalled"]), "update of {id}");
    }
    drop(stream);

    serve.handle.shutdown().await.unwrap();
    ingest.shutdown().await.unwrap();
    processor.shutdown().await.unwrap();
    stop.cancel();
    sink.await.unwrap().unwrap();
}
