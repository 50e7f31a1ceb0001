//! Helpers shared by the `serve_*` tests: a chat dataset written straight into the emulator
//! in the DESIGN v2 layout (§5 keys, §6 columns) with an oracle of every read computed from
//! the dataset alone; an in-process serve; and a small JSON-schema checker for the OpenAPI
//! document (`$ref`, `oneOf`, `type`, `enum`, `required`, `properties`,
//! `additionalProperties: false`, `items`, and the decimal-id pattern).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use chatpipe_common::event::rfc3339_ms;
use chatpipe_common::http::Telemetry;
use chatpipe_common::row_key;
use chatpipe_sink::hbase::{HbaseClient, HbaseConfig};
use hbase_thrift::hbase::{BatchMutation, ColumnDescriptor, Mutation};
use serde_json::{json, Value};

pub const FANOUT_MAX: u64 = 5;
pub const PREVIEW_CHARS: usize = 80;
pub const UNKNOWN_USER: u64 = 99;
pub const UNKNOWN_SESSION: u64 = 9999;

/// One message of the dataset.
#[derive(Debug, Clone)]
pub struct Msg {
    pub session: u64,
    pub id: u64,
    pub sender: u64,
    pub kind: &'static str,
    pub body: String,
    pub sent_at: i64,
    pub seq: u64,
    pub edited: u64,
    pub recalled: bool,
    pub mentions: Vec<u64>,
}

/// One membership.
#[derive(Debug, Clone)]
pub struct Membership {
    pub user: u64,
    pub joined_at: i64,
    pub joined_seq: u64,
    pub read_seq: u64,
}

/// One session with its members and messages (in seq order).
#[derive(Debug, Clone)]
pub struct Sess {
    pub id: u64,
    pub kind: &'static str,
    pub name: Option<String>,
    pub created_at: i64,
    pub members: Vec<Membership>,
    pub msgs: Vec<Msg>,
    /// Members that received inbox rows for each message, by seq (fan-out on write while
    /// the group was small).
    pub inbox_for: BTreeMap<u64, Vec<u64>>,
}

/// The dataset.
#[derive(Debug, Clone)]
pub struct Model {
    pub sessions: Vec<Sess>,
    pub profiles: BTreeMap<u64, (String, String, i64)>,
}

const T0: i64 = 1_767_225_600_000;
const ID0: u64 = 7_000_000_000_000_000;

impl Model {
    /// A direct session, a small group, a group that grew past the threshold after three
    /// messages, and a channel; LZ4 bodies, edits, recalls, mentions, unread marks.
    pub fn build() -> Model {
        let mut clock = 0i64;
        let mut next = |session: u64, sender: u64, seq: u64, body: String| {
            clock += 1;
            Msg {
                session,
                id: ID0 + (clock as u64) * 4096 + session % 7,
                sender,
                kind: if seq.is_multiple_of(5) { "image" } else { "text" },
                body,
                sent_at: T0 + clock * 1000,
                seq,
                edited: 0,
                recalled: false,
                mentions: Vec::new(),
            }
        };
        let m = |user: u64, joined_seq: u64, read_seq: u64| Membership {
            user,
            joined_at: T0 + joined_seq as i64,
            joined_seq,
            read_seq,
        };
        let mut direct = Sess {
            id: 1001,
            kind: "direct",
            name: None,
            created_at: T0,
            members: vec![m(1, 0, 4), m(2, 0, 6)],
            msgs: Vec::new(),
            inbox_for: BTreeMap::new(),
        };
        let mut small = Sess {
            id: 1002,
            kind: "group",
            name: Some("small group".into()),
            created_at: T0 + 1,
            members: vec![m(1, 0, 7), m(2, 0, 3), m(3, 0, 0)],
            msgs: Vec::new(),
            inbox_for: BTreeMap::new(),
        };
        let mut large = Sess {
            id: 1003,
            kind: "group",
            name: Some("large group".into()),
            created_at: T0 + 2,
            members: vec![
                m(1, 0, 2),
                m(2, 0, 0),
                m(3, 0, 13),
                m(4, 0, 1),
                m(5, 3, 3),
                m(6, 3, 5),
                m(7, 3, 3),
                m(8, 3, 3),
            ],
            msgs: Vec::new(),
            inbox_for: BTreeMap::new(),
        };
        let mut channel = Sess {
            id: 1004,
            kind: "channel",
            name: Some("news".into()),
            created_at: T0 + 3,
            members: vec![m(1, 0, 1), m(5, 0, 0)],
            msgs: Vec::new(),
            inbox_for: BTreeMap::new(),
        };
        // interleave the sessions' messages in time
        for round in 0..13u64 {
            if round < 6 {
                let seq = round + 1;
                let sender = if round % 2 == 0 { 1 } else { 2 };
                direct.msgs.push(next(1001, sender, seq, format!("direct message {seq} from {sender}")));
            }
            if round < 7 {
                let seq = round + 1;
                let sender = [1, 2, 3][(round % 3) as usize];
                let body = if seq == 2 {
                    format!("a long body that is stored compressed {}", "lorem ipsum dolor sit amet ".repeat(40))
                } else {
                    format!("small group message {seq} ünïcödé")
                };
                let mut msg = next(1002, sender, seq, body);
                if seq == 3 {
                    msg.edited = 2;
                    msg.body = "edited twice".into();
                }
                if seq == 5 {
                    msg.recalled = true;
                }
                if seq == 4 {
                    msg.mentions = vec![2, 3];
                }
                if seq == 7 {
                    msg.sender = 1; // user 1 sent the last one: read_seq 7
                }
                small.msgs.push(msg);
            }
            {
                let seq = round + 1;
                let sender = if seq <= 3 { [1, 2, 3][(round % 3) as usize] } else { 3 + (round % 5) };
                let mut msg = next(1003, sender, seq, format!("large group message {seq}"));
                if seq == 8 {
                    msg.recalled = true;
                }
                if seq == 2 {
                    msg.edited = 1;
                    msg.body = "large group message 2 (edited)".into();
                }
                large.msgs.push(msg);
            }
            if round < 4 {
                let seq = round + 1;
                channel.msgs.push(next(1004, 9, seq, format!("channel post {seq}")));
            }
        }
        for s in [&mut direct, &mut small] {
            let members: Vec<u64> = s.members.iter().map(|m| m.user).collect();
            for msg in &s.msgs {
                s.inbox_for.insert(msg.seq, members.clone());
            }
        }
        // the large group had 4 members for its first three messages
        for seq in 1..=3 {
            large.inbox_for.insert(seq, vec![1, 2, 3, 4]);
        }
        let mut profiles = BTreeMap::new();
        for u in 1..=6u64 {
            profiles.insert(u, (format!("user {u}"), format!("https://example.com/a/{u}.png"), T0 + u as i64));
        }
        Model { sessions: vec![direct, small, large, channel], profiles }
    }

    pub fn session(&self, id: u64) -> &Sess {
        self.sessions.iter().find(|s| s.id == id).unwrap()
    }

    fn last_seq(s: &Sess) -> u64 {
        s.msgs.iter().map(|m| m.seq).max().unwrap_or(0)
    }

    fn is_large(s: &Sess) -> bool {
        s.kind == "group" && s.members.len() as u64 > FANOUT_MAX
    }

    /// Writes every row of the dataset.
    pub fn write(&self, thrift: &str) {
        let mut c = HbaseClient::connect(&HbaseConfig::new(thrift)).unwrap();
        chatpipe_sink::tables::create_all(&mut c).unwrap();
        for (table, family) in [("chat:sessions", "s"), ("chat:users", "u")] {
            if !c.table_names().unwrap().iter().any(|t| t == table) {
                let cd = ColumnDescriptor {
                    name: Some(format!("{family}:").into_bytes()),
                    max_versions: Some(1),
                    compression: Some("NONE".into()),
                    in_memory: Some(false),
                    bloom_filter_type: Some("ROW".into()),
                    bloom_filter_vector_size: Some(0),
                    bloom_filter_nb_hashes: Some(0),
                    block_cache_enabled: Some(true),
                    time_to_live: Some(i32::MAX),
                };
                c.create_table(table, vec![cd]).unwrap();
            }
        }
        let mut rows: BTreeMap<&str, Vec<BatchMutation>> = BTreeMap::new();
        let put = |rows: &mut BTreeMap<&str, Vec<BatchMutation>>,
                   table: &'static str,
                   key: String,
                   cells: Vec<(&str, Vec<u8>)>| {
            rows.entry(table).or_default().push(BatchMutation {
                row: Some(key.into_bytes()),
                mutations: Some(
                    cells
                        .into_iter()
                        .map(|(col, v)| Mutation {
                            is_delete: Some(false),
                            column: Some(col.as_bytes().to_vec()),
                            value: Some(v),
                            write_to_w_a_l: Some(true),
                        })
                        .collect(),
                ),
            });
        };
        let n = |v: u64| v.to_string().into_bytes();
        let t = |v: i64| v.to_string().into_bytes();
        for s in &self.sessions {
            let table = if s.kind == "channel" { "chat:channel_messages" } else { "chat:messages" };
            for m in &s.msgs {
                let mut cells = vec![
                    ("m:sender", n(m.sender)),
                    ("m:kind", m.kind.as_bytes().to_vec()),
                    ("m:sent_at", t(m.sent_at)),
                    ("m:seq", n(m.seq)),
                ];
                if m.body.len() >= 512 {
                    cells.push(("m:body", lz4_flex::compress_prepend_size(m.body.as_bytes())));
                    cells.push(("m:enc", b"lz4".to_vec()));
                } else {
                    cells.push(("m:body", m.body.as_bytes().to_vec()));
                }
                if m.edited > 0 {
                    cells.push(("m:edited", n(m.edited)));
                }
                if m.recalled {
                    cells.push(("m:recalled", b"1".to_vec()));
                }
                if !m.mentions.is_empty() {
                    let list: Vec<String> = m.mentions.iter().map(u64::to_string).collect();
                    cells.push(("m:mentions", list.join(",").into_bytes()));
                }
                put(&mut rows, table, row_key::encode(s.id, m.id), cells);
                for user in s.inbox_for.get(&m.seq).into_iter().flatten() {
                    let preview: String = m.body.chars().take(PREVIEW_CHARS).collect();
                    let mut cells = vec![
                        ("i:session", n(s.id)),
                        ("i:sender", n(m.sender)),
                        ("i:kind", m.kind.as_bytes().to_vec()),
                        ("i:preview", preview.into_bytes()),
                        ("i:seq", n(m.seq)),
                    ];
                    if m.recalled {
                        cells.push(("i:recalled", b"1".to_vec()));
                    }
                    put(&mut rows, "chat:inbox", row_key::encode(*user, m.id), cells);
                }
            }
            for mem in &s.members {
                put(
                    &mut rows,
                    "chat:members",
                    row_key::encode_pair(s.id, mem.user),
                    vec![("f:joined_at", t(mem.joined_at))],
                );
                put(
                    &mut rows,
                    "chat:user_sessions",
                    row_key::encode_pair(mem.user, s.id),
                    vec![
                        ("f:joined_at", t(mem.joined_at)),
                        ("f:joined_seq", n(mem.joined_seq)),
                        ("f:read_seq", n(mem.read_seq)),
                    ],
                );
            }
            let mut cells = vec![
                ("s:kind", s.kind.as_bytes().to_vec()),
                ("s:created_at", t(s.created_at)),
                ("s:members", n(s.members.len() as u64)),
                ("s:last_seq", n(Self::last_seq(s))),
            ];
            if let Some(name) = &s.name {
                cells.push(("s:name", name.as_bytes().to_vec()));
            }
            if let Some(last) = s.msgs.last() {
                cells.push(("s:last_message_id", n(last.id)));
                cells.push(("s:last_sent_at", t(last.sent_at)));
            }
            put(&mut rows, "chat:sessions", id_key(s.id), cells);
        }
        for (u, (name, avatar, at)) in &self.profiles {
            put(
                &mut rows,
                "chat:users",
                id_key(*u),
                vec![
                    ("u:name", name.as_bytes().to_vec()),
                    ("u:avatar", avatar.as_bytes().to_vec()),
                    ("u:updated_at", t(*at)),
                ],
            );
        }
        for (table, batch) in rows {
            c.mutate_rows(table, batch).unwrap();
        }
    }

    // ---- the oracle: what each endpoint must answer, from the dataset alone ----

    pub fn message_json(m: &Msg) -> Value {
        json!({
            "message_id": m.id.to_string(),
            "session_id": m.session.to_string(),
            "sender_id": m.sender.to_string(),
            "kind": m.kind,
            "body": if m.recalled { Value::Null } else { json!(m.body) },
            "sent_at": rfc3339_ms(m.sent_at),
            "seq": m.seq,
            "edited": m.edited,
            "recalled": m.recalled,
            "mentions": m.mentions.iter().map(|u| u.to_string()).collect::<Vec<_>>(),
        })
    }

    /// A session's messages, newest first.
    pub fn timeline(&self, session: u64) -> Vec<Value> {
        let mut msgs = self.session(session).msgs.clone();
        msgs.sort_by_key(|m| std::cmp::Reverse(m.id));
        msgs.iter().map(Self::message_json).collect()
    }

    /// Messages with seq > after, oldest first.
    pub fn after_seq(&self, session: u64, after: u64) -> Vec<Value> {
        let mut msgs: Vec<Msg> = self.session(session).msgs.iter().filter(|m| m.seq > after).cloned().collect();
        msgs.sort_by_key(|m| m.seq);
        msgs.iter().map(Self::message_json).collect()
    }

    /// A user's inbox, newest first: inbox rows, and the large groups' messages after the
    /// user joined, each message once.
    pub fn inbox(&self, user: u64) -> Vec<Value> {
        let mut out: BTreeMap<u64, Value> = BTreeMap::new();
        for s in &self.sessions {
            // inbox rows stay after a leave; merged entries need a current membership
            let mem = s.members.iter().find(|m| m.user == user);
            for m in &s.msgs {
                let fanned = s.inbox_for.get(&m.seq).is_some_and(|us| us.contains(&user));
                let merged = Self::is_large(s) && mem.is_some_and(|mem| m.seq > mem.joined_seq);
                if !fanned && !merged {
                    continue;
                }
                let preview: String = m.body.chars().take(PREVIEW_CHARS).collect();
                out.insert(
                    m.id,
                    json!({
                        "message_id": m.id.to_string(),
                        "session_id": s.id.to_string(),
                        "sender_id": m.sender.to_string(),
                        "kind": m.kind,
                        "preview": if m.recalled { Value::Null } else { json!(preview) },
                        "seq": m.seq,
                        "recalled": m.recalled,
                        "source": if fanned { "inbox" } else { "timeline" },
                    }),
                );
            }
        }
        out.into_values().rev().collect()
    }

    /// A user's sessions, newest activity first.
    pub fn user_sessions(&self, user: u64) -> Vec<Value> {
        let mut items: Vec<(i64, u64, Value)> = Vec::new();
        for s in &self.sessions {
            let Some(mem) = s.members.iter().find(|m| m.user == user) else { continue };
            let last = s.msgs.iter().max_by_key(|m| m.id);
            let activity = last.map_or(s.created_at, |m| m.sent_at);
            let last_seq = Self::last_seq(s);
            let last_message = last.map(|m| {
                let preview: String = m.body.chars().take(PREVIEW_CHARS).collect();
                json!({
                    "message_id": m.id.to_string(),
                    "sender_id": m.sender.to_string(),
                    "kind": m.kind,
                    "preview": if m.recalled { Value::Null } else { json!(preview) },
                    "sent_at": rfc3339_ms(m.sent_at),
                    "seq": m.seq,
                    "recalled": m.recalled,
                })
            });
            items.push((
                activity,
                s.id,
                json!({
                    "session_id": s.id.to_string(),
                    "kind": s.kind,
                    "name": s.name,
                    "members": s.members.len(),
                    "last_seq": last_seq,
                    "read_seq": mem.read_seq,
                    "unread": last_seq.saturating_sub(mem.read_seq),
                    "joined_at": rfc3339_ms(mem.joined_at),
                    "last_activity_at": rfc3339_ms(activity),
                    "last_message": last_message,
                    "cursor": format!("{activity}.{}", s.id),
                }),
            ));
        }
        items.sort_by_key(|i| std::cmp::Reverse((i.0, i.1)));
        items.into_iter().map(|i| i.2).collect()
    }

    pub fn session_json(&self, id: u64) -> Value {
        let s = self.session(id);
        let last = s.msgs.iter().max_by_key(|m| m.id);
        json!({
            "session_id": s.id.to_string(),
            "kind": s.kind,
            "name": s.name,
            "created_at": rfc3339_ms(s.created_at),
            "members": s.members.len(),
            "last_seq": Self::last_seq(s),
            "last_message_id": last.map(|m| m.id.to_string()),
            "last_sent_at": last.map(|m| rfc3339_ms(m.sent_at)),
        })
    }

    /// Members in row-key order: user ids compared as decimal strings.
    pub fn members(&self, id: u64) -> Vec<Value> {
        let s = self.session(id);
        let mut ms: Vec<&Membership> = s.members.iter().collect();
        ms.sort_by_key(|m| m.user.to_string());
        ms.iter().map(|m| json!({"user_id": m.user.to_string(), "joined_at": rfc3339_ms(m.joined_at)})).collect()
    }

    pub fn profile(&self, user: u64) -> Option<Value> {
        if let Some((name, avatar, at)) = self.profiles.get(&user) {
            return Some(
                json!({"user_id": user.to_string(), "name": name, "avatar_url": avatar, "updated_at": rfc3339_ms(*at)}),
            );
        }
        let known: BTreeSet<u64> = self.sessions.iter().flat_map(|s| s.members.iter().map(|m| m.user)).collect();
        known
            .contains(&user)
            .then(|| json!({"user_id": user.to_string(), "name": null, "avatar_url": null, "updated_at": null}))
    }

    pub fn users(&self) -> BTreeSet<u64> {
        self.sessions.iter().flat_map(|s| s.members.iter().map(|m| m.user)).collect()
    }
}

/// Writes `rows` (row key, `(column, value)` cells) into `table`.
pub fn write_rows(thrift: &str, table: &str, rows: Vec<(String, Vec<(&str, String)>)>) {
    let mut c = HbaseClient::connect(&HbaseConfig::new(thrift)).unwrap();
    let batch = rows
        .into_iter()
        .map(|(key, cells)| BatchMutation {
            row: Some(key.into_bytes()),
            mutations: Some(
                cells
                    .into_iter()
                    .map(|(col, v)| Mutation {
                        is_delete: Some(false),
                        column: Some(col.as_bytes().to_vec()),
                        value: Some(v.into_bytes()),
                        write_to_w_a_l: Some(true),
                    })
                    .collect(),
            ),
        })
        .collect();
    c.mutate_rows(table, batch).unwrap();
}

/// `SALT|ID`.
pub fn id_key(id: u64) -> String {
    let mut p = row_key::prefix(id);
    p.pop();
    p
}

/// A serve config for the tests (no push unless asked).
pub fn config(thrift: &str) -> chatpipe_serve::Config {
    let mut c = chatpipe_serve::Config::new(
        chatpipe_sink::HbaseArgs::new(thrift),
        chatpipe_common::kafka::KafkaArgs::new("127.0.0.1:1"),
    );
    c.no_push = true;
    c.fanout_max_members = FANOUT_MAX;
    c.preview_chars = PREVIEW_CHARS;
    c
}

/// A running serve and a client for it.
pub struct Serve {
    pub handle: chatpipe_serve::ServeHandle,
    pub telemetry: Telemetry,
    pub base: String,
    pub client: reqwest::Client,
    pub key: Option<String>,
}

impl Serve {
    pub async fn start(config: chatpipe_serve::Config) -> Serve {
        let telemetry = Telemetry::new();
        let handle = chatpipe_serve::start(config, telemetry.clone()).await.unwrap();
        let base = format!("http://{}", handle.local_addr());
        Serve { handle, telemetry, base, client: reqwest::Client::new(), key: None }
    }

    /// GET `path`: (status, JSON body).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(k) = &self.key {
            req = req.bearer_auth(k);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
        let text = r.text().await.unwrap();
        assert_eq!(ct.as_deref(), Some("application/json"), "{path}: {status} {text}");
        (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}")))
    }

    /// Sum and count of a histogram series with `route`.
    pub fn histogram(&self, name: &str, route: &str) -> (f64, u64) {
        for f in self.telemetry.registry.gather() {
            if f.name() != name {
                continue;
            }
            for m in f.get_metric() {
                if m.get_label().iter().any(|l| l.name() == "route" && l.value() == route) {
                    let h = m.get_histogram();
                    return (h.get_sample_sum(), h.get_sample_count());
                }
            }
        }
        (0.0, 0)
    }
}

// ---- the OpenAPI document and a checker of its schemas ----

pub fn openapi() -> Value {
    serde_json::from_str(chatpipe_serve::OPENAPI_JSON).unwrap()
}

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("unsupported $ref {r}"));
            resolve(doc, &doc["components"]["schemas"][name])
        }
        None => schema,
    }
}

fn type_ok(t: &str, v: &Value) -> bool {
    match t {
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        "null" => v.is_null(),
        other => panic!("unsupported type {other}"),
    }
}

/// Checks `v` against `schema`; the error names the JSON path.
pub fn check(doc: &Value, schema: &Value, v: &Value, path: &str) -> Result<(), String> {
    let schema = resolve(doc, schema);
    if let Some(options) = schema.get("oneOf").and_then(Value::as_array) {
        let ok = options.iter().filter(|o| check(doc, o, v, path).is_ok()).count();
        return if ok == 1 { Ok(()) } else { Err(format!("{path}: matches {ok} of the oneOf schemas: {v}")) };
    }
    if let Some(t) = schema.get("type") {
        let ok = match t {
            Value::String(t) => type_ok(t, v),
            Value::Array(ts) => ts.iter().any(|t| type_ok(t.as_str().unwrap(), v)),
            _ => panic!("bad type in schema"),
        };
        if !ok {
            return Err(format!("{path}: {v} is not of type {t}"));
        }
    }
    if let (Some(e), false) = (schema.get("enum").and_then(Value::as_array), v.is_null()) {
        if !e.contains(v) {
            return Err(format!("{path}: {v} is not one of {e:?}"));
        }
    }
    if let (Some(p), Some(s)) = (schema.get("pattern").and_then(Value::as_str), v.as_str()) {
        let decimal = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if p.starts_with("^(0|[1-9]") && !decimal {
            return Err(format!("{path}: {s:?} is not a decimal id"));
        }
    }
    if let Some(obj) = v.as_object() {
        for r in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
            let r = r.as_str().unwrap();
            if !obj.contains_key(r) {
                return Err(format!("{path}: missing required `{r}` in {v}"));
            }
        }
        let props = schema.get("properties").and_then(Value::as_object);
        for (k, val) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(s) => check(doc, s, val, &format!("{path}.{k}"))?,
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    return Err(format!("{path}: `{k}` is not in the document"));
                }
                None => {}
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
        for (i, x) in arr.iter().enumerate() {
            check(doc, items, x, &format!("{path}[{i}]"))?;
        }
    }
    Ok(())
}

/// Checks a response of `GET template` with `status` against the document.
pub fn check_response(doc: &Value, template: &str, method: &str, status: u16, body: &Value) {
    let op = &doc["paths"][template][method];
    assert!(op.is_object(), "{method} {template} is not in the document");
    let resp = &op["responses"][status.to_string()];
    assert!(resp.is_object(), "{method} {template} answered {status}, which the document does not list: {body}");
    let schema = &resp["content"]["application/json"]["schema"];
    check(doc, schema, body, "$").unwrap_or_else(|e| panic!("{method} {template} {status}: {e}"));
}

/// One SSE event as received.
#[derive(Debug, Clone)]
pub struct Sse {
    pub id: String,
    pub event: String,
    pub data: Value,
}

/// A connected stream, parsed frame by frame.
pub struct Stream {
    resp: reqwest::Response,
    buf: String,
}

impl Stream {
    pub async fn open(serve: &Serve, user: u64, last_event_id: Option<&str>) -> Stream {
        Self::connect(&serve.client, &serve.base, user, last_event_id).await
    }

    /// Opens user `user`'s stream on the serve at `base` (e.g. `http://127.0.0.1:8081`).
    pub async fn connect(client: &reqwest::Client, base: &str, user: u64, last_event_id: Option<&str>) -> Stream {
        let mut req = client.get(format!("{base}/v1/users/{user}/stream"));
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Stream { resp, buf: String::new() }
    }

    /// The next event (keep-alive comments skipped); panics after 60 s (a hang guard, not
    /// a latency assertion).
    pub async fn next(&mut self) -> Sse {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let frame: String = self.buf.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (String::new(), String::new(), String::new());
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim_start().to_owned();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim_start().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if event.is_empty() && data.is_empty() {
                    continue; // a keep-alive comment
                }
                return Sse { id, event, data: serde_json::from_str(&data).unwrap() };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.resp.chunk()).await.expect("no event within 60 s").unwrap();
            self.buf.push_str(std::str::from_utf8(&chunk.expect("stream ended")).unwrap());
        }
    }
}
