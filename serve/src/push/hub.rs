//! The push hub of one serve: the feed's frontier, the retained events (for resume), the
//! state of users with a stream, and their subscribers.
//!
//! Guarantee: replay of retained events after a position and registration of the new
//! stream happen under one lock with [`Hub::apply`], so a resumed stream misses nothing and
//! gets nothing twice; a position the hub cannot vouch for gets one `reset` event whose id
//! is the current frontier. Failure: a subscriber whose queue is full is dropped (it
//! resumes); a user's state outlives their last stream by [`RESUME_WINDOW`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::response::sse::Event;
use chatpipe_common::rows::RowMutation;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::position::Position;
use crate::metrics::ServeMetrics;

/// How long a user's state (and so their resumable events) outlives their last stream.
pub const RESUME_WINDOW: Duration = Duration::from_secs(300);
/// Events queued for one stream before it is dropped as too slow.
const CLIENT_QUEUE: usize = 1024;

/// One event for one user.
#[derive(Debug, Clone)]
pub(super) struct Pushed {
    pub(super) user: u64,
    pub(super) partition: usize,
    pub(super) offset: i64,
    pub(super) index: u32,
    pub(super) id: Arc<str>,
    pub(super) kind: &'static str,
    pub(super) data: Arc<str>,
}

impl Pushed {
    pub(super) fn sse(&self) -> Event {
        Event::default().id(&*self.id).event(self.kind).data(&*self.data)
    }
}

/// A user's session as push tracks it.
#[derive(Debug, Clone, Default)]
pub(super) struct Tracked {
    pub(super) members: u64,
    pub(super) joined_seq: u64,
    pub(super) read_seq: u64,
    pub(super) last_seq: u64,
    /// The `(last_seq, read_seq)` of the last `unread` event.
    pub(super) sent: Option<(u64, u64)>,
}

/// A user with at least one stream (or one that closed less than [`RESUME_WINDOW`] ago).
pub(super) struct UserState {
    pub(super) sessions: HashMap<u64, Tracked>,
    /// The feed frontier when this state was made: events before it were never made.
    pub(super) since: Vec<i64>,
    pub(super) streams: Vec<mpsc::Sender<Pushed>>,
    pub(super) idle_since: Option<Instant>,
}

pub(super) struct HubState {
    /// The partitions are assigned.
    pub(super) ready: bool,
    /// Next offset to process, per partition.
    pub(super) frontier: Vec<i64>,
    /// Where this hub started, per partition.
    pub(super) start: Vec<i64>,
    /// Per partition, the largest offset of an evicted event (-1: none).
    pub(super) evicted: Vec<i64>,
    pub(super) retained: VecDeque<Pushed>,
    pub(super) users: HashMap<u64, UserState>,
    /// session → users with state who are in it.
    pub(super) members: HashMap<u64, HashSet<u64>>,
}

/// The push hub of one serve: feed state, retained events, subscribers.
pub struct Hub {
    pub(super) state: Mutex<HubState>,
    pub(super) retention: usize,
    pub(super) fanout_max_members: u64,
    pub(super) preview_chars: usize,
    pub(super) metrics: ServeMetrics,
}

/// What a user's state is loaded from.
pub(crate) struct Snapshot {
    pub(super) sessions: HashMap<u64, Tracked>,
}

impl Hub {
    pub(super) fn new(retention: usize, fanout: u64, preview_chars: usize, metrics: ServeMetrics) -> Self {
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
    pub(super) fn init(&self, start: Vec<i64>) {
        let mut st = self.state.lock();
        st.evicted = vec![-1; start.len()];
        st.frontier = start.clone();
        st.start = start;
        st.ready = true;
    }

    /// Whether the feed is assigned.
    pub(super) fn is_ready(&self) -> bool {
        self.state.lock().ready
    }

    /// Applies one `chat.rows` record at `(partition, offset)`.
    pub(super) fn apply(&self, partition: usize, offset: i64, mutations: &[RowMutation]) {
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

    /// Whether the user has state (a stream, or one closed within the resume window).
    pub(super) fn has_user(&self, user: u64) -> bool {
        self.state.lock().users.contains_key(&user)
    }

    /// Opens a stream: installs the user's state if new, replays retained events after
    /// `resume` (or a `reset`), and registers the stream, all under one lock.
    pub(super) fn subscribe(
        &self,
        user: u64,
        snapshot: Option<Snapshot>,
        resume: Option<Position>,
    ) -> mpsc::Receiver<Pushed> {
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
    pub(super) fn sweep(&self) -> usize {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{self, SESSIONS};
    use chatpipe_common::row_key;
    use chatpipe_common::rows::tables;
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
