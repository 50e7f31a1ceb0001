//! Live push: `GET /v1/users/{user}/stream` (Server-Sent Events), fed from `chat.rows`.
//!
//! **Source (choice)**: `chat.rows`, not `chat.events`. Its records are exactly what the sink
//! writes to HBase (after the processor's dedupe, filters, seq assignment and fan-out), so a
//! pushed entry is the row a client would read, with its `seq`, and serve needs none of the
//! processor's rules. `chat.unread` alone would miss messages and edits.
//!
//! Every serve instance reads every partition of `chat.rows` (plain assignment from the end
//! at start, no consumer group, nothing committed) and keeps state only for users with a
//! stream: their sessions with `read_seq`, `last_seq`, kind and member count (loaded from
//! HBase when the first stream of the user opens, then kept current from the feed). A record
//! yields, for each such user: `message` (a new inbox row of the user, or a new message of one
//! of the user's large groups, which have no inbox rows), `update` (an edit or recall of such
//! an entry) and `unread` (the user's `last_seq`/`read_seq` of a session changed). Events go
//! out in feed order: per session, in the order the processor wrote them.
//!
//! **Resume**: each event's SSE `id` is the feed position it was made at (partition, offset,
//! index within the record, and the offsets of every partition before it). The last
//! `--push-retention-events` events (over all users) are kept in memory, and a user's state
//! is kept for `RESUME_WINDOW` after their last stream closes, so a client that reconnects to
//! the same instance with `Last-Event-ID` gets exactly the events after that id — none twice,
//! none missing — followed by live events (replay and subscription happen under one lock).
//! A position this instance cannot vouch for (evicted, older than the user's state, another
//! instance's feed, malformed ids of another shape) gets one `reset` event: reload with the
//! REST API (`after_seq` catch-up is gap-free) and go on from the stream.
//!
//! **Scaling and its limit**: connections scale out with instances (route a user's streams
//! to one instance, e.g. by hashing the path, so resumes land where the state is), but every
//! instance decodes the whole `chat.rows` feed, so one instance's decode rate (measured in
//! docs/BENCHMARKS.md) bounds the cluster's write rate for push. Past it the processor would
//! need a per-user push topic keyed by user, which the design does not have yet.
//!
//! **Failure**: a client whose bounded queue fills (it does not read) is disconnected and
//! counted; it resumes with `Last-Event-ID`. A record that does not decode is counted and
//! skipped. Kafka errors are logged and retried by the client library; `/readyz` reports
//! `push` not ready until the partitions are assigned. Events may reach a client shortly
//! before the sink's HBase write of the same rows (both follow `chat.rows`).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use chatpipe_common::http::Health;
use chatpipe_common::kafka::KafkaArgs;
use chatpipe_common::row_key;
use chatpipe_common::rows::{tables, RowMutation};
use parking_lot::Mutex;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message as _, Offset, TopicPartitionList};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::api::{bad, json_response, parse_id, parse_query, preview, ApiError, AppState};
use crate::metrics::{kind, ServeMetrics};
use crate::store::{self, decode_pair, Calls, SESSIONS};

/// Query parameters of the stream (`last_event_id`: for clients that cannot set the header).
pub const PARAMS: &[&str] = &["last_event_id"];
/// The readiness component of the push feed.
pub const HEALTH_COMPONENT: &str = "push";
/// How long a user's state (and so their resumable events) outlives their last stream.
pub const RESUME_WINDOW: Duration = Duration::from_secs(300);
/// Events queued for one stream before it is dropped as too slow.
const CLIENT_QUEUE: usize = 1024;

/// The value of a `chat.rows` record: the mutations it carries (a `RowBatch`, or one
/// `RowMutation` from builds before envelope version 3).
fn decode_record(bytes: &[u8]) -> Result<Vec<RowMutation>, chatpipe_common::envelope::EnvelopeError> {
    chatpipe_common::rows::decode_record(bytes)
}

/// One event for one user.
#[derive(Debug, Clone)]
struct Pushed {
    user: u64,
    partition: usize,
    offset: i64,
    index: u32,
    id: Arc<str>,
    kind: &'static str,
    data: Arc<str>,
}

impl Pushed {
    fn sse(&self) -> Event {
        Event::default().id(&*self.id).event(self.kind).data(&*self.data)
    }
}

/// A user's session as push tracks it.
#[derive(Debug, Clone, Default)]
struct Tracked {
    members: u64,
    joined_seq: u64,
    read_seq: u64,
    last_seq: u64,
    /// The `(last_seq, read_seq)` of the last `unread` event.
    sent: Option<(u64, u64)>,
}

/// A user with at least one stream (or one that closed less than [`RESUME_WINDOW`] ago).
struct UserState {
    sessions: HashMap<u64, Tracked>,
    /// The feed frontier when this state was made: events before it were never made.
    since: Vec<i64>,
    streams: Vec<mpsc::Sender<Pushed>>,
    idle_since: Option<Instant>,
}

/// Feed position of a client: the last event it received.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Position {
    partition: usize,
    offset: i64,
    index: u32,
    frontier: Vec<i64>,
}

impl Position {
    fn id(&self) -> String {
        let f: Vec<String> = self.frontier.iter().map(i64::to_string).collect();
        format!("{}:{}:{}:{}", self.partition, self.offset, self.index, f.join(","))
    }

    fn parse(s: &str) -> Option<Self> {
        let mut parts = s.trim().splitn(4, ':');
        let partition = parts.next()?.parse().ok()?;
        let offset = parts.next()?.parse().ok()?;
        let index = parts.next()?.parse().ok()?;
        let frontier: Option<Vec<i64>> = parts.next()?.split(',').map(|x| x.parse().ok()).collect();
        let frontier = frontier?;
        (partition < frontier.len()).then_some(Position { partition, offset, index, frontier })
    }

    /// The first offset of partition `q` with events not delivered (the position's own
    /// record counts as not delivered unless its index is `u32::MAX`).
    fn first_undelivered(&self, q: usize) -> Option<i64> {
        if q == self.partition {
            Some(if self.index == u32::MAX { self.offset + 1 } else { self.offset })
        } else {
            self.frontier.get(q).copied()
        }
    }

    /// Whether event `(p, o, k)` comes after this position (was not delivered).
    fn before(&self, p: usize, o: i64, k: u32) -> bool {
        if p == self.partition {
            (o, k) > (self.offset, self.index)
        } else {
            self.frontier.get(p).is_some_and(|f| o >= *f)
        }
    }
}

struct HubState {
    /// The partitions are assigned.
    ready: bool,
    /// Next offset to process, per partition.
    frontier: Vec<i64>,
    /// Where this hub started, per partition.
    start: Vec<i64>,
    /// Per partition, the largest offset of an evicted event (-1: none).
    evicted: Vec<i64>,
    retained: VecDeque<Pushed>,
    users: HashMap<u64, UserState>,
    /// session → users with state who are in it.
    members: HashMap<u64, HashSet<u64>>,
}

/// The push hub of one serve: feed state, retained events, subscribers.
pub struct Hub {
    state: Mutex<HubState>,
    retention: usize,
    fanout_max_members: u64,
    preview_chars: usize,
    metrics: ServeMetrics,
}

/// What a user's state is loaded from.
pub(crate) struct Snapshot {
    sessions: HashMap<u64, Tracked>,
}

fn cell<'a>(m: &'a RowMutation, column: &str) -> Option<&'a [u8]> {
    m.cells.iter().rev().find(|c| c.column == column).map(|c| c.value.as_slice())
}

fn cell_num(m: &RowMutation, column: &str) -> Option<u64> {
    std::str::from_utf8(cell(m, column)?).ok()?.trim().parse().ok()
}

fn cell_text(m: &RowMutation, column: &str) -> Option<String> {
    cell(m, column).map(|v| String::from_utf8_lossy(v).into_owned())
}

impl Hub {
    fn new(retention: usize, fanout: u64, preview_chars: usize, metrics: ServeMetrics) -> Self {
        Hub {
            state: Mutex::new(HubState {
                ready: false,
                frontier: Vec::new(),
                start: Vec::new(),
                evicted: Vec::new(),
                retained: VecDeque::new(),
                users: HashMap::new(),
                members: HashMap::new(),
            }),
            retention,
            fanout_max_members: fanout,
            preview_chars,
            metrics,
        }
    }

    /// Sets the start offsets once the partitions are assigned.
    fn init(&self, start: Vec<i64>) {
        let mut st = self.state.lock();
        st.evicted = vec![-1; start.len()];
        st.frontier = start.clone();
        st.start = start;
        st.ready = true;
    }

    /// Whether the feed is assigned.
    fn is_ready(&self) -> bool {
        self.state.lock().ready
    }

    /// Applies one `chat.rows` record at `(partition, offset)`.
    fn apply(&self, partition: usize, offset: i64, mutations: &[RowMutation]) {
        let mut st = self.state.lock();
        let Some(next) = st.frontier.get(partition).copied() else { return };
        if offset < next {
            return; // seen already (a fetch may restart inside a batch)
        }
        let mut out: Vec<(u64, &'static str, Value)> = Vec::new();
        for m in mutations {
            self.events_of(&mut st, m, &mut out);
        }
        let mut counts: HashMap<u64, u32> = HashMap::new();
        let frontier_before = {
            let mut f = st.frontier.clone();
            if let Some(x) = f.get_mut(partition) {
                *x = offset;
            }
            f
        };
        for (user, kind, data) in out {
            let index = counts.entry(user).or_insert(0);
            let pos = Position { partition, offset, index: *index, frontier: frontier_before.clone() };
            *index += 1;
            let ev = Pushed {
                user,
                partition,
                offset,
                index: pos.index,
                id: pos.id().into(),
                kind,
                data: data.to_string().into(),
            };
            self.metrics.push_events.with_label_values(&[kind]).inc();
            if let Some(u) = st.users.get_mut(&user) {
                let before = u.streams.len();
                u.streams.retain(|tx| match tx.try_send(ev.clone()) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => false,
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                });
                let dropped = before - u.streams.len();
                if dropped > 0 && u.streams.is_empty() {
                    u.idle_since = Some(Instant::now());
                }
            }
            st.retained.push_back(ev);
            while st.retained.len() > self.retention {
                if let Some(old) = st.retained.pop_front() {
                    if let Some(e) = st.evicted.get_mut(old.partition) {
                        *e = (*e).max(old.offset);
                    }
                }
            }
        }
        if let Some(x) = st.frontier.get_mut(partition) {
            *x = offset + 1;
        }
    }

    /// The events one mutation causes for users with state.
    fn events_of(&self, st: &mut HubState, m: &RowMutation, out: &mut Vec<(u64, &'static str, Value)>) {
        match m.table.as_str() {
            tables::INBOX if !m.delete => {
                let Ok((user, message_id)) = row_key::decode(&m.row) else { return };
                if !st.users.contains_key(&user) {
                    return;
                }
                let recalled = cell(m, "i:recalled") == Some(b"1");
                let preview = if recalled { None } else { cell_text(m, "i:preview") };
                if cell(m, "i:session").is_some() {
                    out.push((
                        user,
                        "message",
                        json!({
                            "message_id": message_id.to_string(),
                            "session_id": cell_num(m, "i:session").map(|s| s.to_string()),
                            "sender_id": cell_num(m, "i:sender").map(|s| s.to_string()),
                            "kind": cell_text(m, "i:kind"),
                            "preview": preview,
                            "seq": cell_num(m, "i:seq"),
                            "recalled": recalled,
                            "source": "inbox",
                        }),
                    ));
                } else {
                    out.push((
                        user,
                        "update",
                        json!({ "message_id": message_id.to_string(), "preview": preview, "recalled": recalled }),
                    ));
                }
            }
            tables::MESSAGES if !m.delete => {
                let Ok((session, message_id)) = row_key::decode(&m.row) else { return };
                let Some(users) = st.members.get(&session) else { return };
                let mut users: Vec<u64> = users.iter().copied().collect();
                users.sort_unstable();
                for user in users {
                    let Some(t) = st.users.get(&user).and_then(|u| u.sessions.get(&session)) else { continue };
                    // a large group: more members than the fan-out threshold (a direct
                    // session has two; channels are in their own table, not matched here),
                    // so a join seen on the feed needs no kind lookup
                    if t.members <= self.fanout_max_members {
                        continue;
                    }
                    let recalled = cell(m, "m:recalled") == Some(b"1");
                    let body =
                        cell(m, "m:body").and_then(|b| chatpipe_sink::query::decode_body(b, cell(m, "m:enc")).ok());
                    let preview = if recalled { None } else { preview(body.as_deref(), self.preview_chars) };
                    match cell_num(m, "m:seq") {
                        Some(seq) if seq > t.joined_seq => out.push((
                            user,
                            "message",
                            json!({
                                "message_id": message_id.to_string(),
                                "session_id": session.to_string(),
                                "sender_id": cell_num(m, "m:sender").map(|s| s.to_string()),
                                "kind": cell_text(m, "m:kind"),
                                "preview": preview,
                                "seq": seq,
                                "recalled": recalled,
                                "source": "timeline",
                            }),
                        )),
                        Some(_) => {}
                        None => out.push((
                            user,
                            "update",
                            json!({ "message_id": message_id.to_string(), "preview": preview, "recalled": recalled }),
                        )),
                    }
                }
            }
            tables::USER_SESSIONS => {
                let Some((user, session)) = decode_pair(&m.row) else { return };
                let Some(u) = st.users.get_mut(&user) else { return };
                if m.delete && m.cells.is_empty() {
                    u.sessions.remove(&session);
                    if let Some(set) = st.members.get_mut(&session) {
                        set.remove(&user);
                    }
                    out.push((user, "left", json!({ "session_id": session.to_string() })));
                    return;
                }
                let t = u.sessions.entry(session).or_default();
                if let Some(j) = cell_num(m, "f:joined_seq") {
                    t.joined_seq = j;
                }
                if let Some(r) = cell_num(m, "f:read_seq") {
                    t.read_seq = t.read_seq.max(r);
                }
                st.members.entry(session).or_default().insert(user);
                Self::unread(user, session, st, out);
            }
            SESSIONS if !m.delete => {
                let id = std::str::from_utf8(&m.row)
                    .ok()
                    .and_then(|k| k.split('|').nth(1))
                    .and_then(|s| s.parse::<u64>().ok());
                let Some(session) = id else { return };
                let Some(users) = st.members.get(&session) else { return };
                let mut users: Vec<u64> = users.iter().copied().collect();
                users.sort_unstable();
                for user in users {
                    if let Some(t) = st.users.get_mut(&user).and_then(|u| u.sessions.get_mut(&session)) {
                        if let Some(n) = cell_num(m, "s:members") {
                            t.members = n;
                        }
                        if let Some(l) = cell_num(m, "s:last_seq") {
                            t.last_seq = t.last_seq.max(l);
                        }
                    }
                    Self::unread(user, session, st, out);
                }
            }
            _ => {}
        }
    }

    fn unread(user: u64, session: u64, st: &mut HubState, out: &mut Vec<(u64, &'static str, Value)>) {
        let Some(t) = st.users.get_mut(&user).and_then(|u| u.sessions.get_mut(&session)) else { return };
        let now = (t.last_seq, t.read_seq);
        if t.sent == Some(now) || (t.sent.is_none() && t.last_seq == 0) {
            return;
        }
        t.sent = Some(now);
        out.push((
            user,
            "unread",
            json!({
                "session_id": session.to_string(),
                "last_seq": t.last_seq,
                "read_seq": t.read_seq,
                "unread": t.last_seq.saturating_sub(t.read_seq),
            }),
        ));
    }

    /// Whether the user has state (a stream, or one closed within the resume window).
    fn has_user(&self, user: u64) -> bool {
        self.state.lock().users.contains_key(&user)
    }

    /// Opens a stream: installs the user's state if new, replays retained events after
    /// `resume` (or a `reset`), and registers the stream, all under one lock.
    fn subscribe(&self, user: u64, snapshot: Option<Snapshot>, resume: Option<Position>) -> mpsc::Receiver<Pushed> {
        let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
        let mut st = self.state.lock();
        let fresh = !st.users.contains_key(&user);
        if fresh {
            let mut sessions = snapshot.map(|s| s.sessions).unwrap_or_default();
            for (sid, t) in sessions.iter_mut() {
                t.sent = Some((t.last_seq, t.read_seq));
                st.members.entry(*sid).or_default().insert(user);
            }
            let since = st.frontier.clone();
            st.users.insert(user, UserState { sessions, since, streams: Vec::new(), idle_since: None });
        }
        if let Some(pos) = resume {
            let valid = !fresh && pos.frontier.len() == st.frontier.len() && {
                let since = st.users.get(&user).map(|u| u.since.clone()).unwrap_or_default();
                (0..st.frontier.len()).all(|q| {
                    let Some(from) = pos.first_undelivered(q) else { return false };
                    st.start[q] <= from
                        && st.evicted[q] < from
                        && since.get(q).is_some_and(|s| *s <= from)
                        && from <= st.frontier[q]
                })
            };
            if valid {
                self.metrics.push_resumes.with_label_values(&["resumed"]).inc();
                for ev in st.retained.iter().filter(|e| e.user == user && pos.before(e.partition, e.offset, e.index)) {
                    if tx.try_send(ev.clone()).is_err() {
                        break; // more than a queue behind: the stream ends and resumes again
                    }
                }
            } else {
                self.metrics.push_resumes.with_label_values(&["reset"]).inc();
                // a position at the current frontier: resuming from it is exact
                let offset = st.frontier.first().map_or(-1, |f| f - 1);
                let pos = Position { partition: 0, offset, index: u32::MAX, frontier: st.frontier.clone() };
                let _ = tx.try_send(Pushed {
                    user,
                    partition: 0,
                    offset,
                    index: u32::MAX,
                    id: pos.id().into(),
                    kind: "reset",
                    data:
                        json!({"reason": "the position is outside this server's retained events; reload and continue"})
                            .to_string()
                            .into(),
                });
            }
        }
        if let Some(u) = st.users.get_mut(&user) {
            u.streams.push(tx);
            u.idle_since = None;
        }
        rx
    }

    /// Drops closed streams and the state of users idle for longer than the resume window.
    fn sweep(&self) -> usize {
        let mut st = self.state.lock();
        let now = Instant::now();
        let mut gone = Vec::new();
        let mut streams = 0;
        for (user, u) in st.users.iter_mut() {
            u.streams.retain(|tx| !tx.is_closed());
            streams += u.streams.len();
            if u.streams.is_empty() {
                let since = *u.idle_since.get_or_insert(now);
                if now.duration_since(since) > RESUME_WINDOW {
                    gone.push(*user);
                }
            }
        }
        for user in gone {
            if let Some(u) = st.users.remove(&user) {
                for s in u.sessions.keys() {
                    if let Some(set) = st.members.get_mut(s) {
                        set.remove(&user);
                        if set.is_empty() {
                            st.members.remove(s);
                        }
                    }
                }
            }
        }
        streams
    }
}

/// Loads a user's sessions from HBase for a new stream.
async fn snapshot(st: &AppState, calls: &Calls, user: u64) -> Result<Snapshot, ApiError> {
    let memberships = st.store.user_sessions(calls, user, store::MAX_USER_SESSIONS).await?;
    let ids: Vec<u64> = memberships.iter().map(|m| m.session_id).collect();
    let infos = if ids.is_empty() { BTreeMap::new() } else { st.store.sessions(calls, &ids).await? };
    let sessions = memberships
        .iter()
        .map(|m| {
            let info = infos.get(&m.session_id);
            (
                m.session_id,
                Tracked {
                    members: info.map_or(0, |i| i.members),
                    joined_seq: m.joined_seq,
                    read_seq: m.read_seq,
                    last_seq: info.map_or(0, |i| i.last_seq),
                    sent: None,
                },
            )
        })
        .collect();
    Ok(Snapshot { sessions })
}

/// `GET /v1/users/{user}/stream`.
pub(crate) async fn stream(
    State(st): State<Arc<AppState>>,
    Extension(calls): Extension<Arc<Calls>>,
    Path(raw): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    match open(&st, &calls, &raw, q.as_deref(), &headers).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn open(
    st: &AppState,
    calls: &Calls,
    raw: &str,
    q: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let user = parse_id("user", raw)?;
    let q = parse_query(q, PARAMS)?;
    let resume = match (headers.get("last-event-id"), q.get("last_event_id")) {
        (Some(h), _) => {
            let s = h.to_str().map_err(|_| bad("Last-Event-ID", "not ASCII"))?;
            Some(Position::parse(s).ok_or_else(|| bad("Last-Event-ID", "not an event id of this stream"))?)
        }
        (None, Some(v)) => {
            Some(Position::parse(v).ok_or_else(|| bad("last_event_id", "not an event id of this stream"))?)
        }
        (None, None) => None,
    };
    let Some(hub) = st.push.clone() else {
        return Ok(json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"code": "push_disabled", "message": "live push is off on this server (--no-push)", "errors": [{"code": "push_disabled", "message": "live push is off"}]}),
        ));
    };
    if st.metrics.push_clients.get() >= st.max_push_clients as i64 {
        return Err(ApiError::Overloaded);
    }
    if !hub.is_ready() {
        return Err(ApiError::Unavailable("the push feed is not assigned yet".into()));
    }
    let snap = if hub.has_user(user) { None } else { Some(snapshot(st, calls, user).await?) };
    let rx = hub.subscribe(user, snap, resume);
    let gauge = st.metrics.push_clients.clone();
    gauge.inc();
    let guard = GaugeGuard(gauge);
    let events = futures::stream::unfold((rx, guard), |(mut rx, guard)| async move {
        let ev = rx.recv().await?;
        Some((Ok::<Event, Infallible>(ev.sse()), (rx, guard)))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(st.push_keepalive)).into_response())
}

struct GaugeGuard(prometheus::IntGauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Starts the feed: assigns every partition of `topic` at its end and applies records until
/// `stop`. Returns the hub at once (streams get 503 until it is assigned); `push` turns ready
/// when the partitions are assigned.
#[allow(clippy::too_many_arguments)]
pub(crate) fn start(
    kafka: &KafkaArgs,
    topic: &str,
    retention: usize,
    fanout: u64,
    preview_chars: usize,
    metrics: ServeMetrics,
    health: Health,
    stop: CancellationToken,
) -> Result<(Arc<Hub>, tokio::task::JoinHandle<()>), rdkafka::error::KafkaError> {
    let consumer: Arc<StreamConsumer> = Arc::new(
        kafka
            .consumer_config("serve-push")
            .set("group.id", "chatpipe-serve-push")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .create()?,
    );
    health.set(HEALTH_COMPONENT, false);
    let topic = topic.to_owned();
    let hub = Arc::new(Hub::new(retention, fanout, preview_chars, metrics.clone()));
    let h = hub.clone();
    let task = tokio::spawn(async move {
        let hub = h;
        let m = metrics;
        loop {
            if stop.is_cancelled() {
                return;
            }
            let (c, t) = (consumer.clone(), topic.clone());
            match tokio::task::spawn_blocking(move || assign(&c, &t)).await {
                Ok(Ok(start)) => {
                    hub.init(start);
                    break;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, topic = %topic, "push feed: cannot assign the rows topic yet; retrying")
                }
                Err(e) => tracing::warn!(error = %e, "push feed: the assignment task failed; retrying"),
            }
            tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(Duration::from_secs(1)) => {} }
        }
        health.set(HEALTH_COMPONENT, true);
        tracing::info!(topic = %topic, "push feed assigned");
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                _ = sweep.tick() => { hub.sweep(); }
                msg = consumer.recv() => match msg {
                    Ok(msg) => {
                        m.push_records.inc();
                        let partition = usize::try_from(msg.partition()).unwrap_or(usize::MAX);
                        let muts = match msg.payload().map(decode_record) {
                            Some(Ok(muts)) => muts,
                            _ => {
                                m.error(kind::PUSH_CONSUMER);
                                Vec::new()
                            }
                        };
                        hub.apply(partition, msg.offset(), &muts);
                    }
                    Err(e) => {
                        m.error(kind::PUSH_CONSUMER);
                        tracing::warn!(error = %e, "push feed: Kafka error");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    });
    Ok((hub, task))
}

/// Assigns every partition of `topic` at its high watermark (blocking); returns the start
/// offsets.
fn assign(consumer: &StreamConsumer, topic: &str) -> Result<Vec<i64>, rdkafka::error::KafkaError> {
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(5))?;
    let parts = md.topics().first().map_or(0, |t| t.partitions().len());
    if parts == 0 {
        return Err(rdkafka::error::KafkaError::MetadataFetch(
            rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
        ));
    }
    let mut start = Vec::with_capacity(parts);
    let mut tpl = TopicPartitionList::new();
    for p in 0..parts {
        let p32 = i32::try_from(p).unwrap_or(i32::MAX);
        let (_, high) = consumer.fetch_watermarks(topic, p32, Duration::from_secs(5))?;
        start.push(high);
        tpl.add_partition_offset(topic, p32, Offset::Offset(high))?;
    }
    consumer.assign(&tpl)?;
    Ok(start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatpipe_common::rows::Cell;

    fn put(table: &str, row: String, cells: &[(&str, &str)]) -> RowMutation {
        RowMutation {
            table: table.into(),
            row: row.into_bytes(),
            cells: cells.iter().map(|(c, v)| Cell::new(*c, v.as_bytes().to_vec())).collect(),
            delete: false,
            ingested_at_ms: 0,
        }
    }

    fn inbox(user: u64, id: u64, session: u64, seq: u64) -> RowMutation {
        put(
            tables::INBOX,
            row_key::encode(user, id),
            &[("i:session", &session.to_string()), ("i:sender", "9"), ("i:preview", "hi"), ("i:seq", &seq.to_string())],
        )
    }

    fn hub() -> Hub {
        let hub = Hub::new(1000, 3, 80, ServeMetrics::new(&prometheus::Registry::new()));
        hub.init(vec![0, 0]);
        hub
    }

    fn drain(rx: &mut mpsc::Receiver<Pushed>) -> Vec<Pushed> {
        let mut out = Vec::new();
        while let Ok(e) = rx.try_recv() {
            out.push(e);
        }
        out
    }

    #[test]
    fn positions_round_trip_and_order_events() {
        let p = Position { partition: 1, offset: 7, index: 2, frontier: vec![4, 7, 9] };
        assert_eq!(Position::parse(&p.id()), Some(p.clone()));
        assert!(Position::parse("1:7:2").is_none());
        assert!(Position::parse("3:7:2:4,7,9").is_none(), "partition outside the frontier");
        assert!(p.before(1, 7, 3) && !p.before(1, 7, 2) && p.before(1, 8, 0));
        assert!(p.before(0, 4, 0) && !p.before(0, 3, 5));
    }

    #[test]
    fn a_resumed_stream_gets_exactly_the_events_after_its_position() {
        let hub = hub();
        let mut rx = hub.subscribe(1, Some(Snapshot { sessions: HashMap::new() }), None);
        for (i, p) in [(1u64, 0usize), (2, 1), (3, 0), (4, 1)] {
            let offset = i64::try_from(i).unwrap();
            hub.apply(p, offset, &[inbox(1, 100 + i, 5, i), inbox(2, 100 + i, 5, i)]);
        }
        let first = drain(&mut rx);
        assert_eq!(first.len(), 4, "user 2's rows are not user 1's events");
        // the client got the first two, then lost the connection
        let pos = Position::parse(&first[1].id).unwrap();
        drop(rx);
        hub.apply(0, 5, &[inbox(1, 105, 5, 5)]);
        let mut rx = hub.subscribe(1, None, Some(pos));
        let rest: Vec<String> = drain(&mut rx).iter().map(|e| e.id.to_string()).collect();
        let want: Vec<String> = first[2..].iter().map(|e| e.id.to_string()).collect();
        assert_eq!(&rest[..2], &want[..]);
        assert_eq!(rest.len(), 3, "and the one made while away");
        // a replayed record (offset already applied) makes nothing
        hub.apply(0, 5, &[inbox(1, 105, 5, 5)]);
        assert!(drain(&mut rx).is_empty());
    }

    #[test]
    fn an_unknown_position_gets_a_reset_whose_id_resumes_exactly() {
        let hub = hub();
        let mut rx = hub.subscribe(1, Some(Snapshot { sessions: HashMap::new() }), None);
        hub.apply(0, 0, &[inbox(1, 100, 5, 1)]);
        drain(&mut rx);
        drop(rx);
        let foreign = Position { partition: 0, offset: 0, index: 0, frontier: vec![0] };
        let mut rx = hub.subscribe(1, None, Some(foreign));
        let reset = drain(&mut rx);
        assert_eq!(reset.len(), 1);
        assert_eq!(reset[0].kind, "reset");
        drop(rx);
        hub.apply(1, 0, &[inbox(1, 101, 5, 2)]);
        let mut rx = hub.subscribe(1, None, Position::parse(&reset[0].id));
        let got = drain(&mut rx);
        assert_eq!(got.iter().map(|e| e.kind).collect::<Vec<_>>(), vec!["message"], "{got:?}");
    }

    #[test]
    fn large_groups_push_timeline_messages_and_unread_follows_marks() {
        let hub = hub();
        let mut sessions = HashMap::new();
        sessions.insert(7, Tracked { members: 5, joined_seq: 2, read_seq: 3, last_seq: 4, sent: None });
        let mut rx = hub.subscribe(1, Some(Snapshot { sessions }), None);
        let msg = |seq: u64| {
            put(
                tables::MESSAGES,
                row_key::encode(7, 1000 + seq),
                &[("m:sender", "2"), ("m:body", "hello"), ("m:seq", &seq.to_string())],
            )
        };
        let last = |seq: u64| put(SESSIONS, store::encode_id(7), &[("s:last_seq", &seq.to_string())]);
        hub.apply(0, 0, &[msg(5), last(5)]);
        hub.apply(0, 1, &[put(tables::USER_SESSIONS, row_key::encode_pair(1, 7), &[("f:read_seq", "5")])]);
        hub.apply(0, 2, &[put(tables::MESSAGES, row_key::encode(7, 1005), &[("m:recalled", "1")])]);
        let got: Vec<(&str, String)> = drain(&mut rx).iter().map(|e| (e.kind, e.data.to_string())).collect();
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!(got[0].0, "message");
        assert!(got[0].1.contains("\"source\":\"timeline\"") && got[0].1.contains("\"preview\":\"hello\""));
        assert_eq!(got[1], ("unread", r#"{"last_seq":5,"read_seq":3,"session_id":"7","unread":2}"#.into()));
        assert_eq!(got[2], ("unread", r#"{"last_seq":5,"read_seq":5,"session_id":"7","unread":0}"#.into()));
        assert_eq!(got[3].0, "update");
        assert!(got[3].1.contains("\"recalled\":true"));
    }
}
