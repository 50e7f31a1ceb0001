//! Partition state and its changelog encoding.
//!
//! Every piece of state lives in a [`Tracked`] map that remembers, for the current batch,
//! the value each changed key had when the batch began. At the end of a batch the changes
//! are written to the changelog as `(key, ChangeRecord { batch_offset, prev, new })`, then a
//! `Meta` record with the applied offset commits the batch. On restore, the latest record of
//! each key is taken as `new` if its batch was committed (`batch_offset <= meta.applied`)
//! and as `prev` otherwise — so a crash between the first and the last changelog write of a
//! batch leaves the state exactly as it was before that batch, even after log compaction
//! (compaction keeps the latest record of a key, which carries both values).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;

/// A HashMap with aHash: several times faster than SipHash on these small keys and still
/// randomly keyed, so producer-chosen ids cannot be crafted into collisions.
pub type FastMap<K, V> = HashMap<K, V, ahash::RandomState>;

use serde::{Deserialize, Serialize};

use chatpipe_common::event::{MessageKind, SessionKind};

/// A map that records the original value of every key changed since the last drain.
#[derive(Debug, Clone)]
pub struct Tracked<K, V> {
    map: FastMap<K, V>,
    changed: FastMap<K, Option<V>>,
}

impl<K: Eq + Hash + Clone, V: Clone + PartialEq> Default for Tracked<K, V> {
    fn default() -> Self {
        Tracked { map: FastMap::default(), changed: FastMap::default() }
    }
}

impl<K: Eq + Hash + Clone, V: Clone + PartialEq> Tracked<K, V> {
    /// The current value.
    pub fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k)
    }
    fn remember(&mut self, k: &K) {
        if !self.changed.contains_key(k) {
            self.changed.insert(k.clone(), self.map.get(k).cloned());
        }
    }
    /// Sets a value.
    pub fn insert(&mut self, k: K, v: V) {
        self.remember(&k);
        self.map.insert(k, v);
    }
    /// Removes a value.
    pub fn remove(&mut self, k: &K) -> Option<V> {
        if self.map.contains_key(k) {
            self.remember(k);
        }
        self.map.remove(k)
    }
    /// Mutable access, inserting `default()` when missing.
    pub fn entry_or(&mut self, k: K, default: impl FnOnce() -> V) -> &mut V {
        self.remember(&k);
        self.map.entry(k).or_insert_with(default)
    }
    /// Mutable access to an existing value.
    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        if self.map.contains_key(k) {
            self.remember(k);
        }
        self.map.get_mut(k)
    }
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.map.len()
    }
    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    /// Iterates current entries.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.map.iter()
    }
    /// Keys whose value differs from the batch start: `(key, prev, new)`.
    pub fn drain_changes(&mut self) -> Vec<(K, Option<V>, Option<V>)> {
        let mut out = Vec::with_capacity(self.changed.len());
        for (k, prev) in self.changed.drain() {
            let new = self.map.get(&k).cloned();
            if prev != new {
                out.push((k, prev, new));
            }
        }
        out
    }
    /// Sets a value without recording a change (restore).
    pub fn restore(&mut self, k: K, v: Option<V>) {
        match v {
            Some(v) => self.map.insert(k, v),
            None => self.map.remove(&k),
        };
    }
}

/// Per-session counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct Session {
    /// Kind as first seen.
    pub kind: SessionKind,
    /// Last assigned per-session sequence number.
    pub seq: u64,
}

/// A member of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct Member {
    /// When they joined (event time, epoch ms).
    pub joined_at_ms: i64,
}

/// Unread state of one (user, session).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, bincode::Encode, bincode::Decode)]
pub struct Unread {
    /// Highest message id the user has read.
    pub last_read: u64,
    /// Messages from others above `last_read`, received while a member.
    pub count: u64,
    /// The session's `seq` when they joined: later messages count for them.
    pub joined_seq: u64,
}

/// One message in a session's log (what a read mark moving over it needs to know).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct LogEntry {
    /// Who sent it.
    pub sender: u64,
    /// Its per-session sequence number.
    pub seq: u64,
}

/// A producer retry key seen recently.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct Seen {
    /// The id the first delivery got.
    pub message_id: u64,
    /// Its event time (for eviction).
    pub event_time_ms: i64,
}

/// Counts of one session in one window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct WindowAgg {
    /// The session's kind.
    pub session_kind: SessionKind,
    /// Messages in the window.
    pub messages: u64,
    /// Messages per kind.
    pub by_kind: BTreeMap<MessageKind, u64>,
    /// Distinct senders.
    pub senders: BTreeSet<u64>,
    /// 0 until emitted; then 1, 2, … per emission.
    pub revision: u32,
}

/// Progress of the partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, bincode::Encode, bincode::Decode)]
pub struct Meta {
    /// Last input offset applied (−1: none).
    pub applied_offset: i64,
    /// Largest event time seen.
    pub max_event_time_ms: Option<i64>,
    /// Watermark (max event time − grace, or advanced while idle).
    pub watermark_ms: Option<i64>,
    /// Windows (by start) whose global partial has been emitted, with its revision.
    pub partial_revisions: BTreeMap<i64, u32>,
}

/// A changelog key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub enum StateKey {
    /// Partition progress (the batch commit record).
    Meta,
    /// A session.
    Session(u64),
    /// (session, user).
    Member(u64, u64),
    /// (user, session).
    Unread(u64, u64),
    /// (session, client_msg_id).
    Seen(u64, String),
    /// (session, message id) → edit count.
    Edits(u64, u64),
    /// (window start, session).
    Window(i64, u64),
    /// (session, message id).
    Log(u64, u64),
}

/// A changelog value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub enum StateValue {
    /// See [`Meta`].
    Meta(Meta),
    /// See [`Session`].
    Session(Session),
    /// See [`Member`].
    Member(Member),
    /// See [`Unread`].
    Unread(Unread),
    /// See [`Seen`].
    Seen(Seen),
    /// Edit count.
    Edits(u32),
    /// See [`WindowAgg`].
    Window(WindowAgg),
    /// See [`LogEntry`].
    Log(LogEntry),
}

/// One changelog record value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct ChangeRecord {
    /// Input offset of the batch that wrote it (for `Meta`: the applied offset).
    pub batch_offset: i64,
    /// Value before the batch.
    pub prev: Option<StateValue>,
    /// Value after the batch.
    pub new: Option<StateValue>,
}

/// All state of one input partition.
#[derive(Debug, Clone, Default)]
pub struct PartitionState {
    /// Progress.
    pub meta: Meta,
    /// Sessions.
    pub sessions: Tracked<u64, Session>,
    /// Memberships by (session, user).
    pub members: Tracked<(u64, u64), Member>,
    /// Index: session → members (derived from `members`).
    pub members_by_session: FastMap<u64, BTreeSet<u64>>,
    /// Unread by (user, session).
    pub unread: Tracked<(u64, u64), Unread>,
    /// Dedupe keys by (session, client_msg_id).
    pub seen: Tracked<(u64, String), Seen>,
    /// Edit counts by (session, message).
    pub edits: Tracked<(u64, u64), u32>,
    /// Windows by (start, session).
    pub windows: Tracked<(i64, u64), WindowAgg>,
    /// Message log by (session, id), kept while some member's read mark is below it.
    pub log: Tracked<(u64, u64), LogEntry>,
    /// Index: session → id → entry (derived from `log`).
    pub log_by_session: FastMap<u64, BTreeMap<u64, LogEntry>>,
    /// Index: window starts present (derived from `windows`).
    pub window_index: BTreeMap<i64, BTreeSet<u64>>,
    meta_at_batch_start: Meta,
}

impl PartitionState {
    /// Adds a member (and the index entry).
    pub fn add_member(&mut self, session: u64, user: u64, m: Member) {
        self.members.insert((session, user), m);
        self.members_by_session.entry(session).or_default().insert(user);
    }

    /// Removes a member.
    pub fn remove_member(&mut self, session: u64, user: u64) -> bool {
        let was = self.members.remove(&(session, user)).is_some();
        if let Some(set) = self.members_by_session.get_mut(&session) {
            set.remove(&user);
            if set.is_empty() {
                self.members_by_session.remove(&session);
            }
        }
        was
    }

    /// Sets a window.
    pub fn put_window(&mut self, start: i64, session: u64, w: WindowAgg) {
        self.windows.insert((start, session), w);
        self.window_index.entry(start).or_default().insert(session);
    }

    /// Appends to a session's message log.
    pub fn log_message(&mut self, session: u64, id: u64, e: LogEntry) {
        self.log.insert((session, id), e);
        self.log_by_session.entry(session).or_default().insert(id, e);
    }

    /// Drops a session's log entries at or below `id`.
    pub fn prune_log(&mut self, session: u64, id: u64) {
        let Some(entries) = self.log_by_session.get_mut(&session) else { return };
        let keep = match id.checked_add(1) {
            Some(next) => entries.split_off(&next),
            None => BTreeMap::new(),
        };
        let old = std::mem::replace(entries, keep);
        if entries.is_empty() {
            self.log_by_session.remove(&session);
        }
        for k in old.keys() {
            self.log.remove(&(session, *k));
        }
    }

    /// Removes a window.
    pub fn remove_window(&mut self, start: i64, session: u64) {
        self.windows.remove(&(start, session));
        if let Some(set) = self.window_index.get_mut(&start) {
            set.remove(&session);
            if set.is_empty() {
                self.window_index.remove(&start);
            }
        }
    }

    /// Number of state entries (for the state-size metric).
    pub fn entries(&self) -> usize {
        self.sessions.len()
            + self.members.len()
            + self.unread.len()
            + self.seen.len()
            + self.edits.len()
            + self.windows.len()
    }

    /// The batch's changelog records, the `Meta` commit record last.
    pub fn drain_changes(&mut self) -> Vec<(StateKey, ChangeRecord)> {
        let off = self.meta.applied_offset;
        let mut out = Vec::new();
        let rec = |prev, new| ChangeRecord { batch_offset: off, prev, new };
        for (k, p, n) in self.sessions.drain_changes() {
            out.push((StateKey::Session(k), rec(p.map(StateValue::Session), n.map(StateValue::Session))));
        }
        for ((s, u), p, n) in self.members.drain_changes() {
            out.push((StateKey::Member(s, u), rec(p.map(StateValue::Member), n.map(StateValue::Member))));
        }
        for ((u, s), p, n) in self.unread.drain_changes() {
            out.push((StateKey::Unread(u, s), rec(p.map(StateValue::Unread), n.map(StateValue::Unread))));
        }
        for ((s, c), p, n) in self.seen.drain_changes() {
            out.push((StateKey::Seen(s, c), rec(p.map(StateValue::Seen), n.map(StateValue::Seen))));
        }
        for ((s, m), p, n) in self.edits.drain_changes() {
            out.push((StateKey::Edits(s, m), rec(p.map(StateValue::Edits), n.map(StateValue::Edits))));
        }
        for ((w, s), p, n) in self.windows.drain_changes() {
            out.push((StateKey::Window(w, s), rec(p.map(StateValue::Window), n.map(StateValue::Window))));
        }
        for ((s, m), p, n) in self.log.drain_changes() {
            out.push((StateKey::Log(s, m), rec(p.map(StateValue::Log), n.map(StateValue::Log))));
        }
        if out.is_empty() && self.meta_at_batch_start == self.meta {
            return out;
        }
        let prev_meta = std::mem::replace(&mut self.meta_at_batch_start, self.meta.clone());
        out.push((StateKey::Meta, rec(Some(StateValue::Meta(prev_meta)), Some(StateValue::Meta(self.meta.clone())))));
        out
    }

    /// Rebuilds state from the latest changelog record of every key.
    pub fn restore(latest: HashMap<StateKey, ChangeRecord>) -> Self {
        let mut st = PartitionState::default();
        let applied = match latest.get(&StateKey::Meta) {
            Some(ChangeRecord { new: Some(StateValue::Meta(m)), .. }) => m.applied_offset,
            _ => -1,
        };
        for (k, r) in latest {
            let v = if r.batch_offset <= applied { r.new } else { r.prev };
            match (k, v) {
                (StateKey::Meta, Some(StateValue::Meta(m))) => st.meta = m,
                (StateKey::Session(s), Some(StateValue::Session(v))) => st.sessions.restore(s, Some(v)),
                (StateKey::Member(s, u), Some(StateValue::Member(v))) => {
                    st.members.restore((s, u), Some(v));
                    st.members_by_session.entry(s).or_default().insert(u);
                }
                (StateKey::Unread(u, s), Some(StateValue::Unread(v))) => st.unread.restore((u, s), Some(v)),
                (StateKey::Seen(s, c), Some(StateValue::Seen(v))) => st.seen.restore((s, c), Some(v)),
                (StateKey::Edits(s, m), Some(StateValue::Edits(v))) => st.edits.restore((s, m), Some(v)),
                (StateKey::Window(w, s), Some(StateValue::Window(v))) => {
                    st.windows.restore((w, s), Some(v));
                    st.window_index.entry(w).or_default().insert(s);
                }
                (StateKey::Log(s, m), Some(StateValue::Log(v))) => {
                    st.log.restore((s, m), Some(v));
                    st.log_by_session.entry(s).or_default().insert(m, v);
                }
                _ => {} // absent (deleted) or a mismatched pair, which encode never writes
            }
        }
        if applied < 0 {
            st.meta.applied_offset = -1;
        }
        st.meta_at_batch_start = st.meta.clone();
        st
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn latest(records: Vec<(StateKey, ChangeRecord)>) -> HashMap<StateKey, ChangeRecord> {
        records.into_iter().collect()
    }

    #[test]
    fn restore_takes_committed_values_and_rolls_back_an_unfinished_batch() {
        let mut st = PartitionState { meta: Meta { applied_offset: -1, ..Meta::default() }, ..Default::default() };
        st.sessions.insert(1, Session { kind: SessionKind::Group, seq: 1 });
        st.meta.applied_offset = 10;
        let batch1 = st.drain_changes();
        st.sessions.insert(1, Session { kind: SessionKind::Group, seq: 2 });
        st.sessions.insert(2, Session { kind: SessionKind::Direct, seq: 1 });
        st.meta.applied_offset = 20;
        let mut batch2 = st.drain_changes();
        // crash: batch 2's entries were written, its Meta record was not
        batch2.retain(|(k, _)| *k != StateKey::Meta);
        let mut log = batch1.clone();
        log.extend(batch2);
        let restored = PartitionState::restore(latest(log));
        assert_eq!(restored.meta.applied_offset, 10);
        assert_eq!(restored.sessions.get(&1).map(|s| s.seq), Some(1));
        assert!(restored.sessions.get(&2).is_none());
    }

    #[test]
    fn unchanged_values_are_not_logged() {
        let mut st = PartitionState::default();
        st.sessions.insert(1, Session { kind: SessionKind::Group, seq: 1 });
        st.drain_changes();
        st.sessions.insert(1, Session { kind: SessionKind::Group, seq: 1 });
        let ch = st.drain_changes();
        assert!(ch.is_empty(), "nothing changed: {ch:?}");
    }
}
