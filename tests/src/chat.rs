//! A scripted chat workload and an independent oracle of what the processor must output.
//!
//! The oracle is written from the rules in DESIGN §3–§6 and the processor's documented
//! choices, not from the processor's code: it computes final values directly (e.g. unread =
//! messages from others after the user's latest join and above their highest read mark),
//! where the processor updates state incrementally. [`Outputs`] folds what the topics hold
//! into the same final shape (rows as HBase would show them, aggregates by key at their
//! highest revision), so a test compares the two with `assert_eq!`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chatpipe_common::event::{rfc3339_ms, ChatEvent, EventType, MessageContent, MessageKind, SessionKind};
use chatpipe_common::kafka::dlq;
use chatpipe_common::row_key;
use chatpipe_common::rows::{self, tables, RowMutation};
use chatpipe_common::seek_back::SeekBack;
use chatpipe_common::snowflake::EPOCH_MS;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{json, Value};

/// Rules the workload is checked under (pass the same to the processor).
#[derive(Debug, Clone)]
pub struct OracleRules {
    /// Blocked senders.
    pub blocked_sender: u64,
    /// The one kind that is not allowed.
    pub disallowed_kind: MessageKind,
    /// Larger bodies go to the DLQ.
    pub max_body_bytes: usize,
    /// Compression threshold.
    pub compress_min_bytes: usize,
    /// Fan-out threshold.
    pub fanout_max_members: usize,
    /// Window size.
    pub window_ms: i64,
    /// Correction horizon.
    pub correction_horizon_ms: i64,
}

impl Default for OracleRules {
    fn default() -> Self {
        OracleRules {
            blocked_sender: 666,
            disallowed_kind: MessageKind::System,
            max_body_bytes: 8192,
            compress_min_bytes: 512,
            fanout_max_members: 6,
            window_ms: 60_000,
            correction_horizon_ms: 24 * 3_600_000,
        }
    }
}

/// One input record.
// Built once per test and read in place: boxing the event would only add indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Input {
    /// An event.
    Event(ChatEvent),
    /// Bytes that are not an envelope.
    Garbage(Vec<u8>),
}

/// A workload: records per partition, in order.
#[derive(Debug, Clone)]
pub struct Workload {
    /// `partitions[p]` = records for partition `p`, in produce order.
    pub partitions: Vec<Vec<Input>>,
}

impl Workload {
    /// Total records.
    pub fn len(&self) -> usize {
        self.partitions.iter().map(Vec::len).sum()
    }
    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

struct Gen {
    rng: StdRng,
    next_id: u64,
    t: i64,
}

impl Gen {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
    fn body(&mut self, large: bool) -> String {
        let n = if large { self.rng.gen_range(600..3000) } else { self.rng.gen_range(1..200) };
        let words = ["hello", "lunch?", "ok", "see", "the", "deploy", "ticket", "🙂", "ünïcode", "later"];
        let mut s = String::new();
        while s.len() < n {
            s.push_str(words[self.rng.gen_range(0..words.len())]);
            s.push(' ');
        }
        s
    }
}

fn base_event(g: &mut Gen, t: EventType, session: u64, kind: SessionKind, sender: u64) -> ChatEvent {
    let id = g.id();
    g.t += g.rng.gen_range(50..1500);
    ChatEvent::bare(id, g.t, t, session, kind, sender)
}

/// Session ids are chosen so that `session % partitions` is the partition.
fn session_id(partition: usize, partitions: usize, i: usize) -> u64 {
    (1_000 + i * partitions + partition) as u64
}

/// Generates a scripted workload: `per_partition` events on each of `partitions`, covering
/// joins and leaves, direct, small-group, large-group and channel messages of every kind,
/// bodies on both sides of the compression threshold, mentions, edits and recalls (by the
/// sender, by someone else, of unknown ids and through a retry's alias id), reads by id and
/// by seq, session names, profiles, duplicate `client_msg_id`s, a blocked sender, a
/// disallowed kind, an oversized body, late events inside and beyond the correction
/// horizon, and (on partition 0) one undecodable record.
/// Event times lie in the hours before `now_ms`.
pub fn scripted(partitions: usize, per_partition: usize, now_ms: i64, rules: &OracleRules, seed: u64) -> Workload {
    let mut out = Vec::new();
    for p in 0..partitions {
        let start = now_ms - 3 * 3_600_000;
        let mut g = Gen {
            rng: StdRng::seed_from_u64(seed * 1000 + p as u64),
            next_id: (((start - EPOCH_MS) as u64) << 22) + ((p as u64) << 32),
            t: start,
        };
        let mut evs: Vec<Input> = Vec::new();
        let directs: Vec<u64> = (0..3).map(|i| session_id(p, partitions, i)).collect();
        let groups: Vec<u64> = (3..6).map(|i| session_id(p, partitions, i)).collect();
        let big = session_id(p, partitions, 6);
        let channel = session_id(p, partitions, 7);
        let mut members: HashMap<u64, Vec<u64>> = HashMap::new();
        // joins: small groups of 3–5, a big group above the fan-out threshold, a channel
        for (i, s) in groups.iter().enumerate() {
            let m: Vec<u64> = (0..3 + i as u64).map(|u| 10 + u + p as u64 * 100).collect();
            members.insert(*s, m);
        }
        members.insert(big, (0..rules.fanout_max_members as u64 + 3).map(|u| 10 + u + p as u64 * 100).collect());
        members.insert(channel, (0..4).map(|u| 50 + u + p as u64 * 100).collect());
        for (s, ms) in &members {
            let kind = if *s == channel { SessionKind::Channel } else { SessionKind::Group };
            for u in ms {
                let mut e = base_event(&mut g, EventType::Join, *s, kind, *u);
                e.user_id = Some(*u);
                evs.push(Input::Event(e));
            }
        }
        // (session, kind, message id, sender) of messages, and of retries' alias ids
        let mut sent: Vec<(u64, SessionKind, u64, u64)> = Vec::new();
        let mut aliases: Vec<(u64, SessionKind, u64, u64)> = Vec::new();
        while evs.len() < per_partition {
            let roll = g.rng.gen_range(0..100);
            let (s, kind) = match g.rng.gen_range(0..10) {
                0..=2 => (directs[g.rng.gen_range(0..directs.len())], SessionKind::Direct),
                3..=6 => (groups[g.rng.gen_range(0..groups.len())], SessionKind::Group),
                7..=8 => (big, SessionKind::Group),
                _ => (channel, SessionKind::Channel),
            };
            let sender = match kind {
                SessionKind::Direct => 20 + (s % 2) + p as u64 * 100,
                _ => {
                    let ms = &members[&s];
                    ms[g.rng.gen_range(0..ms.len())]
                }
            };
            // a target: mostly a message, sometimes a retry's alias id, sometimes unknown
            let pick =
                |g: &mut Gen, sent: &[(u64, SessionKind, u64, u64)], aliases: &[(u64, SessionKind, u64, u64)]| {
                    if !aliases.is_empty() && g.rng.gen_bool(0.15) {
                        aliases[g.rng.gen_range(0..aliases.len())]
                    } else {
                        let t = sent[g.rng.gen_range(0..sent.len())];
                        if g.rng.gen_bool(0.05) {
                            (t.0, t.1, g.id(), t.3) // an id this session never had
                        } else {
                            t
                        }
                    }
                };
            if roll < 58 || sent.is_empty() {
                let mut e = base_event(&mut g, EventType::Message, s, kind, sender);
                let large = g.rng.gen_bool(0.2);
                let allowed: Vec<MessageKind> =
                    MessageKind::ALL.iter().copied().filter(|k| *k != rules.disallowed_kind).collect();
                let mk = allowed[g.rng.gen_range(0..allowed.len())];
                let mentions = if g.rng.gen_bool(0.1) { vec![11, 12] } else { vec![] };
                e.message = Some(MessageContent { kind: mk, body: g.body(large), mentions });
                if kind == SessionKind::Direct {
                    e.recipient_id = Some(sender + 1);
                }
                e.client_msg_id = Some(format!("c{}", e.message_id));
                let dup = g.rng.gen_bool(0.05);
                sent.push((s, kind, e.message_id, sender));
                evs.push(Input::Event(e.clone()));
                if dup {
                    // a producer retry: new id, same client_msg_id
                    let mut r = e;
                    r.message_id = g.id();
                    r.ingested_at_ms += 5;
                    aliases.push((s, kind, r.message_id, sender));
                    evs.push(Input::Event(r));
                }
            } else if roll < 70 {
                // edits and recalls: mostly by the original sender, sometimes by someone else
                let (ts, tk, target, original) = pick(&mut g, &sent, &aliases);
                let by = if g.rng.gen_bool(0.8) { original } else { sender };
                let t = if roll < 66 { EventType::Edit } else { EventType::Recall };
                let mut e = base_event(&mut g, t, ts, tk, by);
                e.target_id = Some(target);
                if t == EventType::Edit {
                    let large = g.rng.gen_bool(0.3);
                    e.message = Some(MessageContent { kind: MessageKind::Text, body: g.body(large), mentions: vec![] });
                }
                evs.push(Input::Event(e));
            } else if roll < 84 {
                let (ts, tk, target, _) = pick(&mut g, &sent, &aliases);
                let reader = match tk {
                    SessionKind::Direct => 20 + (ts % 2) + p as u64 * 100 + g.rng.gen_range(0..2),
                    _ => members[&ts][g.rng.gen_range(0..members[&ts].len())],
                };
                let mut e = base_event(&mut g, EventType::Read, ts, tk, reader);
                if g.rng.gen_bool(0.25) {
                    // a client that knows the seq (past the end is clamped)
                    e.read_seq = Some(g.rng.gen_range(1..40));
                } else {
                    e.target_id = Some(target);
                }
                evs.push(Input::Event(e));
            } else if roll < 88 {
                // leave and later rejoin in a small group
                let s = groups[g.rng.gen_range(0..groups.len())];
                let u = members[&s][0];
                let t = if g.rng.gen_bool(0.5) { EventType::Leave } else { EventType::Join };
                let mut e = base_event(&mut g, t, s, SessionKind::Group, u);
                e.user_id = Some(u);
                evs.push(Input::Event(e));
            } else if roll < 89 {
                let s = groups[g.rng.gen_range(0..groups.len())];
                let mut e = base_event(&mut g, EventType::Session, s, SessionKind::Group, members[&s][0]);
                e.name = Some(format!("room {}", g.rng.gen_range(0..100)));
                evs.push(Input::Event(e));
            } else if roll < 91 {
                // a profile is keyed by its user
                let u = 10 + p as u64 * 100 + g.rng.gen_range(0..5);
                let mut e = base_event(&mut g, EventType::Profile, u, SessionKind::Direct, u);
                e.user_id = Some(u);
                e.name = Some(format!("user {u} v{}", g.rng.gen_range(0..100)));
                e.avatar_url = g.rng.gen_bool(0.5).then(|| format!("https://img.example/{u}.png"));
                evs.push(Input::Event(e));
            } else if roll < 93 {
                let mut e = base_event(&mut g, EventType::Message, s, kind, rules.blocked_sender);
                e.message = Some(MessageContent { kind: MessageKind::Text, body: "spam".into(), mentions: vec![] });
                e.recipient_id = (kind == SessionKind::Direct).then_some(1);
                evs.push(Input::Event(e));
            } else if roll < 94 {
                let mut e = base_event(&mut g, EventType::Message, s, kind, sender);
                e.message = Some(MessageContent { kind: rules.disallowed_kind, body: "sys".into(), mentions: vec![] });
                e.recipient_id = (kind == SessionKind::Direct).then_some(sender + 1);
                evs.push(Input::Event(e));
            } else if roll < 95 {
                let mut e = base_event(&mut g, EventType::Message, s, kind, sender);
                e.message = Some(MessageContent {
                    kind: MessageKind::File,
                    body: "x".repeat(rules.max_body_bytes + 1),
                    mentions: vec![],
                });
                e.recipient_id = (kind == SessionKind::Direct).then_some(sender + 1);
                evs.push(Input::Event(e));
            } else {
                // late: within the horizon (10 minutes back) or beyond it (3 days back)
                let mut e = base_event(&mut g, EventType::Message, s, kind, sender);
                let back = if g.rng.gen_bool(0.5) { 600_000 } else { 3 * 24 * 3_600_000 };
                e.sent_at_ms -= back;
                e.message = Some(MessageContent { kind: MessageKind::Text, body: "late".into(), mentions: vec![] });
                e.recipient_id = (kind == SessionKind::Direct).then_some(sender + 1);
                sent.push((s, kind, e.message_id, sender));
                evs.push(Input::Event(e));
            }
        }
        if p == 0 {
            evs.insert(evs.len() / 2, Input::Garbage(b"\x00not an envelope".to_vec()));
        }
        out.push(evs);
    }
    Workload { partitions: out }
}

/// Final values the processor's outputs must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outputs {
    /// (table, row) → column → value, as HBase shows them (`c:revision` left out).
    pub rows: RowMap,
    /// `session|window` → record without `revision`.
    pub session_aggs: BTreeMap<String, Value>,
    /// `global|window` → record without `revision`.
    pub global_aggs: BTreeMap<String, Value>,
    /// `user|session` → record, or `None` for a tombstone.
    pub unread: BTreeMap<String, Option<Value>>,
    /// DLQ record count by reason.
    pub dlq: BTreeMap<String, usize>,
}

/// Folds topic records into [`Outputs`].
#[derive(Debug, Default)]
pub struct Folder {
    /// The folded outputs.
    pub out: Outputs,
    session_rev: HashMap<String, u64>,
    global_rev: HashMap<String, u64>,
    dlq_seen: BTreeSet<(String, String)>,
}

impl Folder {
    /// A `chat.rows` record.
    pub fn row(&mut self, value: &[u8]) {
        let Ok(ms) = rows::decode_record(value) else { return };
        for m in ms {
            self.mutation(m);
        }
    }

    /// One row mutation, applied as HBase would.
    pub fn mutation(&mut self, m: RowMutation) {
        let key = (m.table.clone(), m.row.clone());
        if m.delete {
            if m.cells.is_empty() {
                self.out.rows.remove(&key);
            } else if let Some(r) = self.out.rows.get_mut(&key) {
                for c in &m.cells {
                    r.remove(&c.column);
                }
                if r.is_empty() {
                    self.out.rows.remove(&key);
                }
            }
        } else {
            let r = self.out.rows.entry(key).or_default();
            for c in m.cells {
                if c.column != "c:revision" {
                    r.insert(c.column, c.value);
                }
            }
        }
    }
    fn agg(map: &mut BTreeMap<String, Value>, revs: &mut HashMap<String, u64>, key: &[u8], value: &[u8]) {
        let key = String::from_utf8_lossy(key).into_owned();
        let Ok(mut v) = serde_json::from_slice::<Value>(value) else { return };
        let rev = v["revision"].as_u64().unwrap_or(0);
        if revs.get(&key).is_some_and(|r| *r > rev) {
            return;
        }
        revs.insert(key.clone(), rev);
        if let Some(o) = v.as_object_mut() {
            o.remove("revision");
        }
        map.insert(key, v);
    }
    /// A `chat.agg.session.1m` record.
    pub fn session_agg(&mut self, key: &[u8], value: &[u8]) {
        Self::agg(&mut self.out.session_aggs, &mut self.session_rev, key, value);
    }
    /// A `chat.agg.global.1m` record.
    pub fn global_agg(&mut self, key: &[u8], value: &[u8]) {
        Self::agg(&mut self.out.global_aggs, &mut self.global_rev, key, value);
    }
    /// A `chat.unread` record.
    pub fn unread(&mut self, key: &[u8], value: Option<&[u8]>) {
        let key = String::from_utf8_lossy(key).into_owned();
        let v = value.and_then(|v| serde_json::from_slice::<Value>(v).ok());
        self.out.unread.insert(key, v);
    }
    /// A `chat.dlq` record with its reason and source-coordinate headers. A replayed batch
    /// re-sends the same DLQ record; its source partition and offset identify it.
    pub fn dlq(&mut self, reason: &str, source: (String, String)) {
        if self.dlq_seen.insert(source) {
            *self.out.dlq.entry(reason.to_owned()).or_default() += 1;
        }
    }
}

/// One message as the oracle knows it.
#[derive(Debug, Clone)]
struct Msg {
    seq: u64,
    sender: u64,
    fanned_out: bool,
}

/// (kind, messages, per-kind counts, senders) of one session in one window.
type SessionWindow<'a> = (SessionKind, u64, BTreeMap<&'a str, u64>, BTreeSet<u64>);
/// Rows as (table, row) → column → value.
type RowMap = BTreeMap<(String, Vec<u8>), BTreeMap<String, Vec<u8>>>;

fn window(rules: &OracleRules, t: i64) -> i64 {
    t.div_euclid(rules.window_ms) * rules.window_ms
}

fn s(v: impl ToString) -> Vec<u8> {
    v.to_string().into_bytes()
}

/// Read-mark candidates: (user, session) → [(position, seq, message id)].
type MarkCandidates = BTreeMap<(u64, u64), Vec<(usize, u64, u64)>>;

/// A member as the oracle tracks it: when (position) and at which seq they joined.
#[derive(Debug, Clone)]
struct Membership {
    joined_at: i64,
    pos: usize,
    joined_seq: u64,
    joined_last_id: u64,
}

/// A conversation as the oracle tracks it.
#[derive(Debug, Clone, Default)]
struct Conv {
    kind: Option<SessionKind>,
    created_at: i64,
    name: Option<String>,
    last_seq: u64,
    last_id: u64,
    last_sent_at: i64,
    members: BTreeMap<u64, Membership>,
}

/// Computes the expected outputs of a workload.
///
/// Unread is computed from final values: a member's `read_seq` is the largest of the seq
/// when they last joined, the seqs their reads after that named (a read by seq is clamped
/// to the session's last seq at that point) and the seqs of their own messages after it;
/// `unread = last_seq − read_seq`.
pub fn oracle(w: &Workload, rules: &OracleRules) -> Outputs {
    let mut out = Outputs::default();
    // per-window counted messages over all partitions: (window) → list
    let mut counted: BTreeMap<i64, Vec<(u64, SessionKind, u64, MessageKind)>> = BTreeMap::new();
    for events in &w.partitions {
        let mut seen: BTreeSet<(u64, String)> = BTreeSet::new();
        let mut convs: BTreeMap<u64, Conv> = BTreeMap::new();
        let mut ever_member: BTreeSet<(u64, u64)> = BTreeSet::new();
        let mut msgs: BTreeMap<(u64, u64), Msg> = BTreeMap::new(); // (session, id)
        let mut alias: BTreeMap<(u64, u64), u64> = BTreeMap::new(); // (session, retry id) → original
        let mut cmid_msg: BTreeMap<(u64, String), u64> = BTreeMap::new(); // the message that carried it
        let mut marks = MarkCandidates::new();
        let mut max_t: Option<i64> = None;
        for (pos, input) in events.iter().enumerate() {
            let Input::Event(e) = input else {
                *out.dlq.entry("undecodable".into()).or_default() += 1;
                continue;
            };
            let sid = e.session_id;
            let is_body = matches!(e.event_type, EventType::Message | EventType::Edit);
            let mut skip = false;
            if is_body {
                let m = e.message.as_ref().expect("body events carry a message");
                if e.sender_id == rules.blocked_sender || m.kind == rules.disallowed_kind {
                    skip = true;
                } else if m.body.len() > rules.max_body_bytes {
                    *out.dlq.entry("body_too_large".into()).or_default() += 1;
                    skip = true;
                }
            }
            if !skip {
                if let Some(c) = &e.client_msg_id {
                    if !seen.insert((sid, c.clone())) {
                        if e.event_type == EventType::Message {
                            if let Some(o) = cmid_msg.get(&(sid, c.clone())) {
                                alias.insert((sid, e.message_id), *o);
                            }
                        }
                        skip = true;
                    }
                }
            }
            let resolve = |msgs: &BTreeMap<(u64, u64), Msg>, target: u64| -> Option<(u64, Msg)> {
                let id = alias.get(&(sid, target)).copied().unwrap_or(target);
                msgs.get(&(sid, id)).map(|m| (id, m.clone()))
            };
            if !skip {
                let table =
                    if e.session_kind == SessionKind::Channel { tables::CHANNEL_MESSAGES } else { tables::MESSAGES };
                let create = |convs: &mut BTreeMap<u64, Conv>| {
                    let c = convs.entry(sid).or_default();
                    if c.kind.is_none() {
                        c.kind = Some(e.session_kind);
                        c.created_at = e.sent_at_ms;
                    }
                };
                let join = |convs: &mut BTreeMap<u64, Conv>, ever: &mut BTreeSet<(u64, u64)>, u: u64| {
                    if convs.get(&sid).is_some_and(|c| c.members.contains_key(&u)) {
                        return;
                    }
                    create(convs);
                    let c = convs.entry(sid).or_default();
                    let m =
                        Membership { joined_at: e.sent_at_ms, pos, joined_seq: c.last_seq, joined_last_id: c.last_id };
                    c.members.insert(u, m);
                    ever.insert((u, sid));
                };
                match e.event_type {
                    EventType::Message => {
                        let m = e.message.as_ref().expect("message");
                        if e.session_kind == SessionKind::Direct {
                            join(&mut convs, &mut ever_member, e.sender_id);
                            if let Some(r) = e.recipient_id {
                                join(&mut convs, &mut ever_member, r);
                            }
                        }
                        create(&mut convs);
                        let c = convs.entry(sid).or_default();
                        c.last_seq += 1;
                        c.last_id = e.message_id;
                        c.last_sent_at = e.sent_at_ms;
                        let seq = c.last_seq;
                        let mut row = BTreeMap::new();
                        row.insert("m:sender".into(), s(e.sender_id));
                        row.insert("m:kind".into(), s(m.kind.as_str()));
                        set_body(&mut row, &m.body, rules);
                        row.insert("m:sent_at".into(), s(e.sent_at_ms));
                        row.insert("m:seq".into(), s(seq));
                        if !m.mentions.is_empty() {
                            let list: Vec<String> = m.mentions.iter().map(u64::to_string).collect();
                            row.insert("m:mentions".into(), s(list.join(",")));
                        }
                        out.rows.insert((table.into(), row_key::encode(sid, e.message_id).into_bytes()), row);
                        let mem: BTreeSet<u64> = c.members.keys().copied().collect();
                        let fan = match e.session_kind {
                            SessionKind::Direct => true,
                            SessionKind::Group => mem.len() <= rules.fanout_max_members,
                            SessionKind::Channel => false,
                        };
                        if fan {
                            let preview: String = m.body.chars().take(80).collect();
                            for u in mem.iter().copied().chain([e.sender_id]) {
                                let mut r = BTreeMap::new();
                                r.insert("i:session".into(), s(sid));
                                r.insert("i:sender".into(), s(e.sender_id));
                                r.insert("i:kind".into(), s(m.kind.as_str()));
                                r.insert("i:preview".into(), preview.clone().into_bytes());
                                r.insert("i:seq".into(), s(seq));
                                out.rows
                                    .insert((tables::INBOX.into(), row_key::encode(u, e.message_id).into_bytes()), r);
                            }
                        }
                        if mem.contains(&e.sender_id) {
                            marks.entry((e.sender_id, sid)).or_default().push((pos, seq, e.message_id));
                        }
                        let beyond = max_t.is_some_and(|mt| e.sent_at_ms < mt - rules.correction_horizon_ms);
                        if beyond {
                            *out.dlq.entry("late".into()).or_default() += 1;
                        } else {
                            counted.entry(window(rules, e.sent_at_ms)).or_default().push((
                                sid,
                                e.session_kind,
                                e.sender_id,
                                m.kind,
                            ));
                        }
                        msgs.insert((sid, e.message_id), Msg { seq, sender: e.sender_id, fanned_out: fan });
                        if let Some(c) = &e.client_msg_id {
                            cmid_msg.insert((sid, c.clone()), e.message_id);
                        }
                    }
                    EventType::Edit | EventType::Recall => match resolve(&msgs, e.target_id.expect("target")) {
                        None => *out.dlq.entry("unknown_target".into()).or_default() += 1,
                        Some((_, m)) if m.sender != e.sender_id => *out.dlq.entry("forbidden".into()).or_default() += 1,
                        Some((id, m)) => {
                            let key = (table.to_string(), row_key::encode(sid, id).into_bytes());
                            let row = out.rows.entry(key).or_default();
                            let mut inbox: BTreeMap<String, Vec<u8>> = BTreeMap::new();
                            if e.event_type == EventType::Edit {
                                let b = e.message.as_ref().expect("edit body");
                                row.insert("m:kind".into(), s(b.kind.as_str()));
                                set_body(row, &b.body, rules);
                                let n: u64 = row
                                    .get("m:edited")
                                    .map(|v| String::from_utf8_lossy(v).parse().unwrap_or(0))
                                    .unwrap_or(0);
                                row.insert("m:edited".into(), s(n + 1));
                                inbox.insert("i:kind".into(), s(b.kind.as_str()));
                                inbox.insert(
                                    "i:preview".into(),
                                    b.body.chars().take(80).collect::<String>().into_bytes(),
                                );
                            } else {
                                row.insert("m:recalled".into(), s(1));
                                inbox.insert("i:recalled".into(), s(1));
                            }
                            if m.fanned_out {
                                // the sender's inbox row and those of members present when it was sent
                                let c = &convs[&sid];
                                let users: BTreeSet<u64> = c
                                    .members
                                    .iter()
                                    .filter(|(_, ms)| ms.joined_seq < m.seq)
                                    .map(|(u, _)| *u)
                                    .chain([m.sender])
                                    .collect();
                                for u in users {
                                    let r = out
                                        .rows
                                        .entry((tables::INBOX.into(), row_key::encode(u, id).into_bytes()))
                                        .or_default();
                                    r.extend(inbox.clone());
                                }
                            }
                        }
                    },
                    EventType::Read => {
                        let member = convs.get(&sid).filter(|c| c.members.contains_key(&e.sender_id));
                        if let (Some(c), Some(rs)) = (member, e.read_seq) {
                            let seq = rs.min(c.last_seq);
                            let id = if seq == c.last_seq { c.last_id } else { 0 };
                            marks.entry((e.sender_id, sid)).or_default().push((pos, seq, id));
                        } else if member.is_some() {
                            match resolve(&msgs, e.target_id.expect("target")) {
                                Some((id, m)) => marks.entry((e.sender_id, sid)).or_default().push((pos, m.seq, id)),
                                None => *out.dlq.entry("unknown_target".into()).or_default() += 1,
                            }
                        }
                        // a non-member's read marks nothing
                    }
                    EventType::Join => join(&mut convs, &mut ever_member, e.user_id.expect("user")),
                    EventType::Leave => {
                        if let Some(c) = convs.get_mut(&sid) {
                            c.members.remove(&e.user_id.expect("user"));
                        }
                    }
                    EventType::Session => {
                        create(&mut convs);
                        convs.entry(sid).or_default().name = e.name.clone();
                    }
                    EventType::Profile => {
                        let u = e.user_id.expect("user");
                        let r = out.rows.entry((tables::USERS.into(), row_key::encode_id(u).into_bytes())).or_default();
                        if let Some(n) = &e.name {
                            r.insert("u:name".into(), s(n));
                        }
                        if let Some(a) = &e.avatar_url {
                            r.insert("u:avatar".into(), s(a));
                        }
                        r.insert("u:updated_at".into(), s(e.sent_at_ms));
                    }
                }
            }
            max_t = Some(max_t.map_or(e.sent_at_ms, |m| m.max(e.sent_at_ms)));
        }
        // sessions, membership rows and unread, from final values
        for (session, c) in &convs {
            let mut r = BTreeMap::new();
            r.insert("s:kind".into(), s(c.kind.map_or("", |k| k.as_str())));
            r.insert("s:created_at".into(), s(c.created_at));
            r.insert("s:members".into(), s(c.members.len()));
            r.insert("s:last_seq".into(), s(c.last_seq));
            if c.last_seq > 0 {
                r.insert("s:last_message_id".into(), s(c.last_id));
                r.insert("s:last_sent_at".into(), s(c.last_sent_at));
            }
            if let Some(n) = &c.name {
                r.insert("s:name".into(), s(n));
            }
            out.rows.insert((tables::SESSIONS.into(), row_key::encode_id(*session).into_bytes()), r);
            for (user, m) in &c.members {
                // the mark: the join's, or the first candidate after the join that reached the highest seq
                let mut read = (m.joined_seq, m.joined_last_id);
                for (pos, seq, id) in marks.get(&(*user, *session)).into_iter().flatten() {
                    if *pos > m.pos && *seq > read.0 {
                        read = (*seq, *id);
                    }
                }
                let mut r = BTreeMap::new();
                r.insert("f:joined_at".into(), s(m.joined_at));
                out.rows
                    .insert((tables::MEMBERS.into(), row_key::encode_pair(*session, *user).into_bytes()), r.clone());
                r.insert("f:joined_seq".into(), s(m.joined_seq));
                r.insert("f:read_seq".into(), s(read.0));
                out.rows.insert((tables::USER_SESSIONS.into(), row_key::encode_pair(*user, *session).into_bytes()), r);
                out.unread.insert(
                    format!("{user}|{session}"),
                    Some(json!({"user_id": user.to_string(), "session_id": session.to_string(),
                                "unread": c.last_seq - read.0, "last_read_message_id": read.1.to_string(),
                                "read_seq": read.0, "last_seq": c.last_seq})),
                );
            }
        }
        for (user, session) in ever_member {
            let still = convs.get(&session).is_some_and(|c| c.members.contains_key(&user));
            if !still {
                out.unread.insert(format!("{user}|{session}"), None);
            }
        }
    }
    // windows
    for (start, list) in counted {
        let mut per_session: BTreeMap<u64, SessionWindow<'_>> = BTreeMap::new();
        let mut by_sk: BTreeMap<&str, u64> = BTreeMap::new();
        let mut by_k: BTreeMap<&str, u64> = BTreeMap::new();
        let mut senders = BTreeSet::new();
        for (session, sk, sender, mk) in &list {
            let e = per_session.entry(*session).or_insert((*sk, 0, BTreeMap::new(), BTreeSet::new()));
            e.1 += 1;
            *e.2.entry(mk.as_str()).or_default() += 1;
            e.3.insert(*sender);
            *by_sk.entry(sk.as_str()).or_default() += 1;
            *by_k.entry(mk.as_str()).or_default() += 1;
            senders.insert(*sender);
        }
        for (session, (sk, n, by_kind, snd)) in &per_session {
            out.session_aggs.insert(
                format!("{session}|{}", rfc3339_ms(start)),
                json!({"session_id": session.to_string(), "session_kind": sk.as_str(), "window_start": rfc3339_ms(start),
                       "window_end": rfc3339_ms(start + rules.window_ms), "messages": n, "by_kind": by_kind, "senders": snd.len()}),
            );
            let mut r = BTreeMap::new();
            r.insert("c:window_start".into(), s(start));
            r.insert("c:messages".into(), s(n));
            r.insert("c:senders".into(), s(snd.len()));
            for (k, c) in by_kind {
                r.insert(format!("c:{k}"), s(c));
            }
            out.rows.insert((tables::COUNTS.into(), row_key::encode(*session, start as u64).into_bytes()), r);
        }
        out.global_aggs.insert(
            format!("global|{}", rfc3339_ms(start)),
            json!({"window_start": rfc3339_ms(start), "window_end": rfc3339_ms(start + rules.window_ms), "messages": list.len(),
                   "active_sessions": per_session.len(), "active_senders": senders.len(), "by_session_kind": by_sk, "by_kind": by_k}),
        );
    }
    out
}

fn set_body(row: &mut BTreeMap<String, Vec<u8>>, body: &str, rules: &OracleRules) {
    if body.len() >= rules.compress_min_bytes {
        row.insert("m:body".into(), lz4_flex::compress_prepend_size(body.as_bytes()));
        row.insert("m:enc".into(), s("lz4"));
    } else {
        row.insert("m:body".into(), body.as_bytes().to_vec());
        row.remove("m:enc");
    }
}

/// A short description of the first differences between two outputs (for assertion
/// messages; full dumps of large outputs are unreadable).
pub fn diff(expected: &Outputs, actual: &Outputs) -> String {
    let mut lines = Vec::new();
    fn cmp<K: Ord + std::fmt::Debug, V: PartialEq + std::fmt::Debug>(
        name: &str,
        a: &BTreeMap<K, V>,
        b: &BTreeMap<K, V>,
        lines: &mut Vec<String>,
    ) {
        lines.push(format!("{name}: expected {} entries, got {}", a.len(), b.len()));
        let mut n = 0;
        for (k, v) in a {
            if b.get(k) != Some(v) && n < 5 {
                lines.push(format!("  {name} {k:?}: expected {v:?}, got {:?}", b.get(k)));
                n += 1;
            }
        }
        for k in b.keys() {
            if !a.contains_key(k) && n < 8 {
                lines.push(format!("  {name} {k:?}: unexpected"));
                n += 1;
            }
        }
    }
    type Readable = BTreeMap<(String, String), BTreeMap<String, String>>;
    let readable = |rows: &RowMap| -> Readable {
        rows.iter()
            .map(|((t, r), cells)| {
                let cells = cells.iter().map(|(c, v)| (c.clone(), String::from_utf8_lossy(v).into_owned())).collect();
                ((t.clone(), String::from_utf8_lossy(r).into_owned()), cells)
            })
            .collect()
    };
    cmp("rows", &readable(&expected.rows), &readable(&actual.rows), &mut lines);
    cmp("session_aggs", &expected.session_aggs, &actual.session_aggs, &mut lines);
    cmp("global_aggs", &expected.global_aggs, &actual.global_aggs, &mut lines);
    cmp("unread", &expected.unread, &actual.unread, &mut lines);
    cmp("dlq", &expected.dlq, &actual.dlq, &mut lines);
    lines.join("\n")
}

/// Reads every output topic from the beginning into a [`Folder`], in the background.
pub struct Collector {
    folder: Arc<Mutex<Folder>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Collector {
    pub fn start(broker: &crate::TestBroker) -> Self {
        let folder = Arc::new(Mutex::new(Folder::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let consumer: BaseConsumer = broker
            .kafka_args()
            .consumer_config("collector")
            .set("group.id", "collector")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        // the roles create the topics: a processor started as a separate process may not
        // have yet
        let deadline = Instant::now() + Duration::from_secs(60);
        for topic in ["chat.rows", "chat.agg.session.1m", "chat.agg.global.1m", "chat.unread", "chat.dlq"] {
            let partitions = loop {
                let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
                let ids: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
                if !ids.is_empty() {
                    break ids;
                }
                assert!(Instant::now() < deadline, "topic {topic} was not created within 60 s");
                std::thread::sleep(Duration::from_millis(200));
            };
            for p in partitions {
                tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
            }
        }
        consumer.assign(&tpl).unwrap();
        let (f, s) = (folder.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            // Output offsets are dense (no transactions, no compaction in tests), so a record
            // past the next expected offset means the fetch skipped some (tansu answers a
            // fetch from inside a record batch with the next batch, DESIGN §2): fetch again
            // from further back and drop what was folded already.
            let mut next: HashMap<(String, i32), i64> = HashMap::new();
            let mut seeks: HashMap<(String, i32), SeekBack> = HashMap::new();
            while !s.load(Ordering::SeqCst) {
                let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else { continue };
                let key = (m.topic().to_owned(), m.partition());
                let expected = next.get(&key).copied().unwrap_or(0);
                if m.offset() < expected {
                    continue; // fetched again after a seek back
                }
                if m.offset() > expected {
                    if let Some(target) = seeks.entry(key.clone()).or_default().next_target(expected) {
                        eprintln!(
                            "collector: {} partition {} skipped from {expected} to {}; fetching from {target}",
                            key.0,
                            key.1,
                            m.offset()
                        );
                        if let Err(e) = consumer.seek(&key.0, key.1, Offset::Offset(target), Duration::from_secs(5)) {
                            eprintln!("collector: seek failed: {e}");
                        }
                        continue;
                    }
                    eprintln!("collector: {} partition {} has no offsets {expected}..{}", key.0, key.1, m.offset());
                }
                seeks.remove(&key);
                next.insert(key, m.offset() + 1);
                let mut f = f.lock().unwrap();
                match m.topic() {
                    "chat.rows" => f.row(m.payload().unwrap_or_default()),
                    "chat.agg.session.1m" => f.session_agg(m.key().unwrap(), m.payload().unwrap()),
                    "chat.agg.global.1m" => f.global_agg(m.key().unwrap(), m.payload().unwrap()),
                    "chat.unread" => f.unread(m.key().unwrap(), m.payload()),
                    "chat.dlq" => {
                        let header = |name: &str| {
                            m.headers()
                                .and_then(|h| h.iter().find(|h| h.key == name).and_then(|h| h.value))
                                .map(|v| String::from_utf8_lossy(v).into_owned())
                                .unwrap_or_default()
                        };
                        f.dlq(&header(dlq::REASON), (header(dlq::PARTITION), header(dlq::OFFSET)));
                    }
                    _ => {}
                }
            }
        });
        Collector { folder, stop, thread: Some(thread) }
    }

    /// The outputs folded so far.
    pub fn snapshot(&self) -> Outputs {
        self.folder.lock().unwrap().out.clone()
    }

    /// Rows folded so far.
    pub fn rows(&self) -> usize {
        self.folder.lock().unwrap().out.rows.len()
    }

    /// Waits until the outputs equal `expected`; panics with a diff after `timeout`.
    pub async fn wait_for(&self, expected: &Outputs, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.snapshot();
            if &got == expected {
                return;
            }
            if Instant::now() > deadline {
                panic!("outputs differ from the oracle:\n{}", diff(expected, &got));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Waits until at least `at_least` rows were folded.
    pub async fn wait_rows(&self, at_least: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.rows() < at_least {
            assert!(Instant::now() < deadline, "only {} of {at_least} rows appeared", self.rows());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
