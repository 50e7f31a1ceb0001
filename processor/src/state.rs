//! Partition state and its changelog encoding.
//!
//! State is organised around the conversation: a [`Session`] (its seq, last message, member
//! count, pending unread emission), its [`Member`]s with their read marks, the
//! [`EventEntry`]s remembered for the dedupe horizon (message seq and sender for reads,
//! edits and recalls; aliases of producer retries), and window counts. A message changes
//! O(1) entries whatever the group size: the session, the sender's mark, one event entry,
//! one window.
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

/// Which members' unread values changed since `chat.unread` was last emitted for a session.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct UnreadPending {
    /// Every member's (the session's `last_seq` moved).
    pub all: bool,
    /// These users' (their mark moved, or they joined or left).
    pub users: BTreeSet<u64>,
}

impl UnreadPending {
    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        !self.all && self.users.is_empty()
    }
}

/// A conversation: what the `chat:sessions` row shows, plus its pending unread emission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct Session {
    /// Kind as first seen.
    pub kind: SessionKind,
    /// Name (from `session` events).
    pub name: Option<String>,
    /// Event time of the first event that created it.
    pub created_at_ms: i64,
    /// Last assigned per-session sequence number (= `last_seq`).
    pub seq: u64,
    /// Id of the message with `seq`.
    pub last_message_id: u64,
    /// Event time of that message.
    pub last_sent_at_ms: i64,
    /// Members now.
    pub members: u64,
    /// What `chat.unread` has not yet been told.
    pub unread_pending: UnreadPending,
}

/// A member of a session and their read mark.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct Member {
    /// When they joined (event time, epoch ms).
    pub joined_at_ms: i64,
    /// The session's `seq` when they joined.
    pub joined_seq: u64,
    /// The highest `seq` they have read; starts at `joined_seq`, never moves back.
    pub read_seq: u64,
    /// The id of the message at `read_seq` (0 when unknown, e.g. an empty session).
    pub read_message_id: u64,
}

/// What the processor remembers of a message (edits, recalls, reads by id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct MessageInfo {
    /// Its per-session sequence number.
    pub seq: u64,
    /// Who sent it (the only user who may edit or recall it).
    pub sender: u64,
    /// Edits applied.
    pub edits: u32,
    /// Whether it was fanned out to inboxes (their previews follow edits and recalls).
    pub fanned_out: bool,
}

/// What an [`EventEntry`] remembers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub enum EntryKind {
    /// A message.
    Message(MessageInfo),
    /// A producer retry that got a new id: acts as the original with this id.
    Alias(u64),
    /// Another event with a `client_msg_id` (kept for dedupe only).
    Other,
}

/// An input event remembered for the dedupe horizon (by ingest time), keyed by
/// `(session, message_id)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct EventEntry {
    /// When ingest accepted it (pruning).
    pub ingested_at_ms: i64,
    /// The producer's idempotency key, if any (dedupe).
    pub client_msg_id: Option<String>,
    /// What it was.
    pub kind: EntryKind,
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
    /// Largest ingest time seen (the dedupe and message-index horizon runs on it).
    pub max_ingested_ms: i64,
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
    /// (session, message id).
    Event(u64, u64),
    /// (window start, session).
    Window(i64, u64),
    /// An owner's fence, by a random id (so compaction never removes one): its offset in the
    /// changelog is the epoch of every record that owner writes afterwards (`changelog.rs`).
    /// Never part of the state.
    Fence(u64),
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
    /// See [`EventEntry`].
    Event(EventEntry),
    /// See [`WindowAgg`].
    Window(WindowAgg),
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

/// All state of one input partition. The `Tracked` maps are the state; the other maps
/// are indexes derived from them (rebuilt on restore, never logged).
#[derive(Debug, Clone, Default)]
pub struct PartitionState {
    /// Progress.
    pub meta: Meta,
    /// Sessions.
    pub sessions: Tracked<u64, Session>,
    /// Memberships by (session, user).
    pub members: Tracked<(u64, u64), Member>,
    /// Events remembered for the dedupe horizon, by (session, message id).
    pub events: Tracked<(u64, u64), EventEntry>,
    /// Windows by (start, session).
    pub windows: Tracked<(i64, u64), WindowAgg>,
    /// Index: session → members (from `members`).
    pub members_by_session: FastMap<u64, BTreeSet<u64>>,
    /// Index: session → client_msg_id → message id (from `events`; nested so a lookup needs
    /// no owned key).
    pub dedupe: FastMap<u64, FastMap<String, u64>>,
    /// Index: (ingested_at, session, message id) of every entry, for pruning (from `events`).
    pub events_by_time: BTreeSet<(i64, u64, u64)>,
    /// Index: sessions with a pending unread emission (from `sessions`).
    pub unread_pending: BTreeSet<u64>,
    /// Index: window starts present (from `windows`).
    pub window_index: BTreeMap<i64, BTreeSet<u64>>,
    /// Index: windows not emitted yet (revision 0), by (start, session) (from `windows`):
    /// the watermark visits only these, not every window kept for corrections.
    pub open_windows: BTreeSet<(i64, u64)>,
    meta_at_batch_start: Meta,
    /// Keys whose latest changelog record belonged to a batch that never committed: the
    /// next batch logs their restored value again (see [`PartitionState::restore`]).
    relog: Vec<StateKey>,
    /// Keys the last (committed) batch deleted: the next batch writes their tombstones.
    deleted: Vec<StateKey>,
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

    /// Remembers an event (and its index entries).
    pub fn put_event(&mut self, session: u64, id: u64, e: EventEntry) {
        if let Some(c) = &e.client_msg_id {
            self.dedupe.entry(session).or_default().insert(c.clone(), id);
        }
        self.events_by_time.insert((e.ingested_at_ms, session, id));
        self.events.insert((session, id), e);
    }

    /// Forgets events ingested before `floor` (the dedupe horizon).
    pub fn prune_events(&mut self, floor: i64) {
        while let Some(&(t, session, id)) = self.events_by_time.first() {
            if t >= floor {
                break;
            }
            self.events_by_time.pop_first();
            if let Some(e) = self.events.remove(&(session, id)) {
                if let (Some(c), Some(m)) = (e.client_msg_id, self.dedupe.get_mut(&session)) {
                    if m.get(&c) == Some(&id) {
                        m.remove(&c);
                    }
                    if m.is_empty() {
                        self.dedupe.remove(&session);
                    }
                }
            }
        }
    }

    /// Marks a session's unread as pending for everyone or for one user.
    pub fn mark_unread(&mut self, session: u64, user: Option<u64>) {
        if let Some(s) = self.sessions.get_mut(&session) {
            match user {
                None => s.unread_pending.all = true,
                // kept even when everyone is pending: a user who left is no longer among the
                // members and still needs their tombstone
                Some(u) => {
                    s.unread_pending.users.insert(u);
                }
            }
            self.unread_pending.insert(session);
        }
    }

    /// Sets a window.
    pub fn put_window(&mut self, start: i64, session: u64, w: WindowAgg) {
        if w.revision == 0 {
            self.open_windows.insert((start, session));
        } else {
            self.open_windows.remove(&(start, session));
        }
        self.windows.insert((start, session), w);
        self.window_index.entry(start).or_default().insert(session);
    }

    /// Removes a window.
    pub fn remove_window(&mut self, start: i64, session: u64) {
        self.windows.remove(&(start, session));
        self.open_windows.remove(&(start, session));
        if let Some(set) = self.window_index.get_mut(&start) {
            set.remove(&session);
            if set.is_empty() {
                self.window_index.remove(&start);
            }
        }
    }

    /// Number of state entries (for the state-size metric).
    pub fn entries(&self) -> usize {
        self.sessions.len() + self.members.len() + self.events.len() + self.windows.len()
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
        for ((s, m), p, n) in self.events.drain_changes() {
            out.push((StateKey::Event(s, m), rec(p.map(StateValue::Event), n.map(StateValue::Event))));
        }
        for ((w, s), p, n) in self.windows.drain_changes() {
            out.push((StateKey::Window(w, s), rec(p.map(StateValue::Window), n.map(StateValue::Window))));
        }
        let deleted: Vec<StateKey> = out.iter().filter(|(_, r)| r.new.is_none()).map(|(k, _)| k.clone()).collect();
        // keys an aborted batch wrote last (only in the first batch after a restore): their
        // restored value, committed by this batch's Meta, so that no later restore can take
        // the aborted record as committed
        let relog = std::mem::take(&mut self.relog);
        if !relog.is_empty() {
            let mut logged: std::collections::HashSet<StateKey> = out.iter().map(|(k, _)| k.clone()).collect();
            for k in relog {
                if logged.insert(k.clone()) {
                    let v = self.value_of(&k);
                    out.push((k, rec(v.clone(), v)));
                }
            }
        }
        // deletes of the last batch are committed: tombstones let compaction drop the key
        // (a record with neither value is written as a Kafka tombstone). A key absent now
        // was not logged by this batch: it was absent when the batch began, so a change
        // would have ended with a value.
        for k in std::mem::replace(&mut self.deleted, deleted) {
            if self.value_of(&k).is_none() {
                out.push((k, rec(None, None)));
            }
        }
        if out.is_empty() && self.meta_at_batch_start == self.meta {
            return out;
        }
        let prev_meta = std::mem::replace(&mut self.meta_at_batch_start, self.meta.clone());
        out.push((StateKey::Meta, rec(Some(StateValue::Meta(prev_meta)), Some(StateValue::Meta(self.meta.clone())))));
        out
    }

    /// Logs these keys again, with their current value, in the next batch (keys a fenced-off
    /// owner wrote: see `changelog.rs`).
    pub fn relog_keys(&mut self, keys: impl IntoIterator<Item = StateKey>) {
        self.relog.extend(keys.into_iter().filter(|k| *k != StateKey::Meta && !matches!(k, StateKey::Fence(_))));
    }

    /// The current value of a key.
    pub fn value_of(&self, k: &StateKey) -> Option<StateValue> {
        match k {
            StateKey::Meta => Some(StateValue::Meta(self.meta.clone())),
            StateKey::Session(s) => self.sessions.get(s).cloned().map(StateValue::Session),
            StateKey::Member(s, u) => self.members.get(&(*s, *u)).cloned().map(StateValue::Member),
            StateKey::Event(s, m) => self.events.get(&(*s, *m)).cloned().map(StateValue::Event),
            StateKey::Window(w, s) => self.windows.get(&(*w, *s)).cloned().map(StateValue::Window),
            StateKey::Fence(_) => None,
        }
    }

    /// The state as the latest committed changelog record of every key, `Meta` included —
    /// what a compacted changelog that ends at this batch's `Meta` restores to (a checkpoint).
    pub fn committed_records(&self) -> Vec<(StateKey, ChangeRecord)> {
        let off = self.meta.applied_offset;
        let rec = |v: StateValue| ChangeRecord { batch_offset: off, prev: None, new: Some(v) };
        let mut out = Vec::with_capacity(self.entries() + 1);
        out.push((StateKey::Meta, rec(StateValue::Meta(self.meta.clone()))));
        out.extend(self.sessions.iter().map(|(s, v)| (StateKey::Session(*s), rec(StateValue::Session(v.clone())))));
        out.extend(
            self.members.iter().map(|((s, u), v)| (StateKey::Member(*s, *u), rec(StateValue::Member(v.clone())))),
        );
        out.extend(self.events.iter().map(|((s, m), v)| (StateKey::Event(*s, *m), rec(StateValue::Event(v.clone())))));
        out.extend(
            self.windows.iter().map(|((w, s), v)| (StateKey::Window(*w, *s), rec(StateValue::Window(v.clone())))),
        );
        out
    }

    /// Every entry's current value (tests compare states with it).
    pub fn snapshot(&self) -> BTreeMap<String, StateValue> {
        let mut out = BTreeMap::new();
        let mut put = |k: StateKey| {
            if let Some(v) = self.value_of(&k) {
                out.insert(format!("{k:?}"), v);
            }
        };
        self.sessions.iter().for_each(|(s, _)| put(StateKey::Session(*s)));
        self.members.iter().for_each(|((s, u), _)| put(StateKey::Member(*s, *u)));
        self.events.iter().for_each(|((s, m), _)| put(StateKey::Event(*s, *m)));
        self.windows.iter().for_each(|((w, s), _)| put(StateKey::Window(*w, *s)));
        out
    }

    /// Rebuilds state from the latest changelog record of every key (a key whose latest
    /// record is a tombstone is absent from `latest`).
    ///
    /// **Exactness under any batch boundaries.** A record counts as `new` if its batch
    /// committed (`batch_offset ≤` the latest `Meta`'s applied offset) and as `prev`
    /// otherwise. An aborted batch's record would be mistaken for a committed one once a
    /// later `Meta` passes its offset, if the replay happens not to change that key (it
    /// created and deleted it, say): so every key whose latest record is uncommitted is
    /// logged again, with its restored value, by the first batch after the restore
    /// (`relog`), before that batch's `Meta`. Deletes are logged as records carrying the
    /// old value (a crash before `Meta` must be able to roll them back), then, once their
    /// batch committed, as tombstones, so compaction can drop the key.
    pub fn restore(latest: HashMap<StateKey, ChangeRecord>) -> Self {
        let mut st = PartitionState::default();
        let applied = match latest.get(&StateKey::Meta) {
            Some(ChangeRecord { new: Some(StateValue::Meta(m)), .. }) => m.applied_offset,
            _ => -1,
        };
        let mut relog = Vec::new();
        for (k, r) in latest {
            let committed = r.batch_offset <= applied;
            if !committed && k != StateKey::Meta {
                relog.push(k.clone());
            }
            let v = if committed { r.new } else { r.prev };
            match (k, v) {
                (StateKey::Meta, Some(StateValue::Meta(m))) => st.meta = m,
                (StateKey::Session(s), Some(StateValue::Session(v))) => {
                    if !v.unread_pending.is_empty() {
                        st.unread_pending.insert(s);
                    }
                    st.sessions.restore(s, Some(v));
                }
                (StateKey::Member(s, u), Some(StateValue::Member(v))) => {
                    st.members.restore((s, u), Some(v));
                    st.members_by_session.entry(s).or_default().insert(u);
                }
                (StateKey::Event(s, m), Some(StateValue::Event(v))) => {
                    if let Some(c) = &v.client_msg_id {
                        st.dedupe.entry(s).or_default().insert(c.clone(), m);
                    }
                    st.events_by_time.insert((v.ingested_at_ms, s, m));
                    st.events.restore((s, m), Some(v));
                }
                (StateKey::Window(w, s), Some(StateValue::Window(v))) => {
                    if v.revision == 0 {
                        st.open_windows.insert((w, s));
                    }
                    st.windows.restore((w, s), Some(v));
                    st.window_index.entry(w).or_default().insert(s);
                }
                _ => {} // absent (deleted) or a mismatched pair, which encode never writes
            }
        }
        if applied < 0 {
            st.meta.applied_offset = -1;
        }
        st.meta_at_batch_start = st.meta.clone();
        st.relog = relog;
        st
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(kind: SessionKind, seq: u64) -> Session {
        Session {
            kind,
            name: None,
            created_at_ms: 0,
            seq,
            last_message_id: 0,
            last_sent_at_ms: 0,
            members: 0,
            unread_pending: UnreadPending::default(),
        }
    }

    fn latest(records: Vec<(StateKey, ChangeRecord)>) -> HashMap<StateKey, ChangeRecord> {
        records.into_iter().collect()
    }

    #[test]
    fn restore_takes_committed_values_and_rolls_back_an_unfinished_batch() {
        let mut st = PartitionState { meta: Meta { applied_offset: -1, ..Meta::default() }, ..Default::default() };
        st.sessions.insert(1, session(SessionKind::Group, 1));
        st.meta.applied_offset = 10;
        let batch1 = st.drain_changes();
        st.sessions.insert(1, session(SessionKind::Group, 2));
        st.sessions.insert(2, session(SessionKind::Direct, 1));
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
        st.sessions.insert(1, session(SessionKind::Group, 1));
        st.drain_changes();
        st.sessions.insert(1, session(SessionKind::Group, 1));
        let ch = st.drain_changes();
        assert!(ch.is_empty(), "nothing changed: {ch:?}");
    }
}
