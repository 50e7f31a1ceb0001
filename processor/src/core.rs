//! The pure processing core of one input partition: events in, outputs and state changes
//! out. No I/O and no clock except what the caller passes in, so it is deterministic: the
//! same input sequence always yields the same rows, aggregates and state (DESIGN §7), which
//! is what makes a replay after a crash rewrite identical records.
//!
//! Per event, in partition order (the ordering point is `task::partition_task`):
//! 1. filter (blocked sender, disallowed kind → `filtered`; body too large → DLQ);
//! 2. dedupe by (session, `client_msg_id`) within the dedupe horizon of **ingest** time; a
//!    retried message that got a new id is remembered as an alias of the original;
//! 3. apply it to its conversation (`conversation.rs`): timeline row with a dense
//!    per-session `seq`, inbox fan-out (direct sessions and groups up to
//!    `fanout_max_members`), membership, read marks, `sessions`/`users` rows — all of the
//!    event's rows in **one** `chat.rows` record keyed by the session (row ownership,
//!    `rows.rs`);
//! 4. count it in its window and advance the watermark (`windows.rs`).
//!
//! **Unread** is `last_seq − read_seq` (DESIGN §3): a message changes only the session and
//! the sender's mark, never per-member state. `chat.unread` is emitted coalesced
//! ([`PartitionCore::finish_batch`]): each changed (user, session) at most once per
//! `unread_emit_interval_ms` of wall time, with its value at that time; what is pending is
//! part of the session's state, so a crash never loses the final value.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use chatpipe_common::event::{ChatEvent, EventType, MessageKind, SessionKind};
use chatpipe_common::rows::RowMutation;

use crate::records::{to_json, UnreadRecord};
use crate::rows::{RowBuilder, RowRecord};
use crate::state::{EntryKind, EventEntry, PartitionState};

/// The processing rules (from the CLI flags).
#[derive(Debug, Clone)]
pub struct Rules {
    /// Messages from these senders are dropped (counted as `filtered`).
    pub blocked_senders: HashSet<u64>,
    /// When set, messages of other kinds are dropped (counted as `filtered`).
    pub allowed_kinds: Option<HashSet<MessageKind>>,
    /// Bodies larger than this go to the DLQ.
    pub max_body_bytes: usize,
    /// How long (ingest time) a `client_msg_id`, an alias and a message's seq and sender are
    /// remembered: retries, reads by id, edits and recalls within it are exact.
    pub dedupe_horizon_ms: i64,
    /// Bodies at or above this size are LZ4-compressed.
    pub compress_min_bytes: usize,
    /// Groups with more members are not fanned out to inboxes.
    pub fanout_max_members: usize,
    /// Inbox fan-out on write at all (off only for benchmarks of the counting path).
    pub fan_out: bool,
    /// Unread marks and `chat.unread` at all (off only for benchmarks).
    pub unread: bool,
    /// Tumbling window size.
    pub window_ms: i64,
    /// Watermark lag behind the largest event time.
    pub grace_ms: i64,
    /// Late events within this much of the largest event time correct their window.
    pub correction_horizon_ms: i64,
    /// Characters of body kept as the inbox preview.
    pub preview_chars: usize,
    /// Least wall time between two `chat.unread` emissions of one partition.
    pub unread_emit_interval_ms: i64,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            blocked_senders: HashSet::new(),
            allowed_kinds: None,
            max_body_bytes: 64 * 1024,
            dedupe_horizon_ms: 24 * 3_600_000,
            compress_min_bytes: 512,
            fanout_max_members: 500,
            fan_out: true,
            unread: true,
            window_ms: 60_000,
            grace_ms: 30_000,
            correction_horizon_ms: 24 * 3_600_000,
            preview_chars: 80,
            unread_emit_interval_ms: 1_000,
        }
    }
}

/// What happened to one event (metric label values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// Applied.
    Processed,
    /// Dropped by a rule.
    Filtered,
    /// A producer retry of an event already applied.
    Duplicate,
    /// Applied; its window was already emitted and was corrected.
    Corrected,
    /// Applied to timelines; too late to correct its window (copied to the DLQ).
    Late,
    /// Not applied; sent to the DLQ.
    Dlq,
}

impl Outcome {
    /// Label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Processed => "processed",
            Outcome::Filtered => "filtered",
            Outcome::Duplicate => "duplicate",
            Outcome::Corrected => "corrected",
            Outcome::Late => "late",
            Outcome::Dlq => "dlq",
        }
    }
}

/// DLQ reason codes of the processor (header `chatpipe.reason`).
pub mod reason {
    /// Not a `ChatEvent` envelope.
    pub const UNDECODABLE: &str = "undecodable";
    /// Decodes but breaks a rule no producer can meet (e.g. a message without a body).
    pub const INVALID: &str = "invalid";
    /// Body over `--max-body-bytes`.
    pub const BODY_TOO_LARGE: &str = "body_too_large";
    /// Beyond the correction horizon: applied to timelines, not counted.
    pub const LATE: &str = "late";
    /// An edit or recall by someone other than the original sender.
    pub const FORBIDDEN: &str = "forbidden";
    /// An edit, recall or read of a message this session does not have (or no longer
    /// remembers: older than the dedupe horizon).
    pub const UNKNOWN_TARGET: &str = "unknown_target";
}

/// A record for the DLQ: the input at `offset`, with a reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DlqEntry {
    /// Input offset.
    pub offset: i64,
    /// Short reason code (one of [`reason`]).
    pub reason: &'static str,
    /// Detail.
    pub detail: String,
}

/// One partition's contribution to a global window.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, bincode::Encode, bincode::Decode)]
pub struct WindowPartial {
    /// Window start, epoch ms.
    pub window_start_ms: i64,
    /// Revision of this partial (1, then +1 per correction).
    pub revision: u32,
    /// Messages.
    pub messages: u64,
    /// Sessions with at least one message.
    pub active_sessions: u64,
    /// Distinct senders.
    pub senders: BTreeSet<u64>,
    /// Messages per session kind.
    pub by_session_kind: BTreeMap<SessionKind, u64>,
    /// Messages per message kind.
    pub by_kind: BTreeMap<MessageKind, u64>,
}

/// A partition's progress report for the global merge (`chatpipe.processor.partials`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, bincode::Encode, bincode::Decode)]
pub struct Progress {
    /// Input partition.
    pub partition: i32,
    /// Its watermark after this report.
    pub watermark_ms: i64,
    /// Windows closed or corrected since the last report.
    pub partials: Vec<WindowPartial>,
}

/// Everything one batch produces, in output order.
#[derive(Debug, Default)]
pub struct Outputs {
    /// `chat.rows` records, in order: one per event that changes rows, one per emitted
    /// session window.
    pub rows: Vec<RowRecord>,
    /// `(key, JSON)` for `chat.agg.session.1m`.
    pub session_aggs: Vec<(String, String)>,
    /// `(key, JSON or tombstone)` for `chat.unread`.
    pub unread: Vec<(String, Option<String>)>,
    /// Progress for the global merge (at most one per batch).
    pub progress: Option<Progress>,
    /// DLQ records.
    pub dlq: Vec<DlqEntry>,
    /// Outcome counts.
    pub outcomes: BTreeMap<Outcome, u64>,
    /// Windows emitted (first emission) and corrected.
    pub windows_emitted: u64,
    /// Output values that failed to encode (an error to alert on, never a silent drop).
    pub encode_errors: u64,
}

impl Outputs {
    /// Row mutations over all records, decoded (tests, tools; records this build wrote
    /// always decode).
    pub fn mutations(&self) -> Vec<RowMutation> {
        self.rows.iter().flat_map(|r| r.decode().unwrap_or_default()).collect()
    }
}

/// The processing core of one input partition.
#[derive(Debug)]
pub struct PartitionCore {
    /// The input partition.
    pub partition: i32,
    /// The rules.
    pub rules: Rules,
    /// The state.
    pub state: PartitionState,
    pub(crate) out: Outputs,
    /// Mutations of the event being applied (become one [`RowRecord`]).
    pub(crate) cur: RowBuilder,
    /// Wall time of the last `chat.unread` emission.
    last_unread_emit_ms: i64,
}

impl PartitionCore {
    /// A core over restored (or empty) state.
    pub fn new(partition: i32, rules: Rules, state: PartitionState) -> Self {
        PartitionCore {
            partition,
            rules,
            state,
            out: Outputs::default(),
            cur: RowBuilder::default(),
            last_unread_emit_ms: i64::MIN,
        }
    }

    /// Last applied input offset (−1 when none).
    pub fn applied_offset(&self) -> i64 {
        self.state.meta.applied_offset
    }

    fn count(&mut self, o: Outcome) {
        *self.out.outcomes.entry(o).or_default() += 1;
    }

    pub(crate) fn dlq(&mut self, offset: i64, reason: &'static str, detail: String) -> Outcome {
        self.out.dlq.push(DlqEntry { offset, reason, detail });
        Outcome::Dlq
    }

    /// Records an input that could not be decoded or validated.
    pub fn reject(&mut self, offset: i64, reason: &'static str, detail: String) {
        if offset <= self.state.meta.applied_offset {
            return; // replayed input, handled before
        }
        self.dlq(offset, reason, detail);
        self.count(Outcome::Dlq);
        self.state.meta.applied_offset = offset;
    }

    /// Applies one event at `offset` and says what happened to it. Offsets at or below the
    /// applied one are skipped (`None`).
    pub fn apply(&mut self, offset: i64, ev: &ChatEvent) -> Option<Outcome> {
        if offset <= self.state.meta.applied_offset {
            return None;
        }
        self.state.meta.applied_offset = offset;
        let meta = &mut self.state.meta;
        meta.max_ingested_ms = meta.max_ingested_ms.max(ev.ingested_at_ms);
        let floor = meta.max_ingested_ms.saturating_sub(self.rules.dedupe_horizon_ms);
        self.state.prune_events(floor);
        let outcome = self.apply_event(offset, ev);
        if !self.cur.is_empty() {
            let owner =
                if ev.event_type == EventType::Profile { ev.user_id.unwrap_or(ev.session_id) } else { ev.session_id };
            self.out.rows.push(self.cur.finish(owner));
        }
        self.count(outcome);
        self.observe_event_time(ev.sent_at_ms);
        Some(outcome)
    }

    fn apply_event(&mut self, offset: i64, ev: &ChatEvent) -> Outcome {
        if matches!(ev.event_type, EventType::Message | EventType::Edit) {
            let Some(m) = &ev.message else {
                return self.dlq(offset, reason::INVALID, format!("{} event without a body", ev.event_type));
            };
            if self.rules.blocked_senders.contains(&ev.sender_id) {
                return Outcome::Filtered;
            }
            if self.rules.allowed_kinds.as_ref().is_some_and(|k| !k.contains(&m.kind)) {
                return Outcome::Filtered;
            }
            if m.body.len() > self.rules.max_body_bytes {
                let detail = format!("body is {} bytes; the limit is {}", m.body.len(), self.rules.max_body_bytes);
                return self.dlq(offset, reason::BODY_TOO_LARGE, detail);
            }
        }
        if let Some(cmid) = &ev.client_msg_id {
            if let Some(&original) = self.state.dedupe.get(&ev.session_id).and_then(|m| m.get(cmid.as_str())) {
                if ev.event_type == EventType::Message && original != ev.message_id {
                    // the retry's id acts on the original (edits, recalls, reads naming it)
                    let alias = EventEntry {
                        ingested_at_ms: ev.ingested_at_ms,
                        client_msg_id: None,
                        kind: EntryKind::Alias(original),
                    };
                    self.state.put_event(ev.session_id, ev.message_id, alias);
                }
                return Outcome::Duplicate;
            }
            if ev.event_type != EventType::Message {
                let entry = EventEntry {
                    ingested_at_ms: ev.ingested_at_ms,
                    client_msg_id: Some(cmid.clone()),
                    kind: EntryKind::Other,
                };
                self.state.put_event(ev.session_id, ev.message_id, entry);
            }
        }
        match ev.event_type {
            EventType::Message => self.on_message(offset, ev),
            EventType::Edit | EventType::Recall => self.on_edit_or_recall(offset, ev),
            EventType::Read => self.on_read(offset, ev),
            EventType::Join => {
                if let Some(user) = ev.user_id {
                    self.join(ev, user);
                }
                Outcome::Processed
            }
            EventType::Leave => {
                if let Some(user) = ev.user_id {
                    self.leave(ev, user);
                }
                Outcome::Processed
            }
            EventType::Session => self.on_session(ev),
            EventType::Profile => self.on_profile(offset, ev),
        }
    }

    /// Whether a `chat.unread` emission is waiting, and the wall time it is due.
    pub fn unread_due_at(&self) -> Option<i64> {
        (!self.state.unread_pending.is_empty())
            .then(|| self.last_unread_emit_ms.saturating_add(self.rules.unread_emit_interval_ms))
    }

    /// Emits `chat.unread` for every pending (user, session): the value now, or a tombstone
    /// for a user who left.
    fn emit_unread(&mut self) {
        let pending = std::mem::take(&mut self.state.unread_pending);
        for session in pending {
            let Some(s) = self.state.sessions.get_mut(&session) else { continue };
            let p = std::mem::take(&mut s.unread_pending);
            let last_seq = s.seq;
            let mut users: BTreeSet<u64> = p.users;
            if p.all {
                if let Some(ms) = self.state.members_by_session.get(&session) {
                    users.extend(ms.iter().copied());
                }
            }
            for user in users {
                let key = format!("{user}|{session}");
                match self.state.members.get(&(session, user)) {
                    Some(m) => {
                        let rec = UnreadRecord {
                            user_id: user,
                            session_id: session,
                            unread: last_seq.saturating_sub(m.read_seq),
                            last_read_message_id: m.read_message_id,
                            read_seq: m.read_seq,
                            last_seq,
                        };
                        match to_json(&rec) {
                            Ok(json) => self.out.unread.push((key, Some(json))),
                            Err(_) => self.out.encode_errors += 1,
                        }
                    }
                    None => self.out.unread.push((key, None)),
                }
            }
        }
    }

    /// Ends the batch: the outputs, in order, and the state changes for the changelog.
    /// `now_ms` (wall time) decides whether pending unread values are emitted now.
    pub fn finish_batch(
        &mut self,
        now_ms: i64,
    ) -> (Outputs, Vec<(crate::state::StateKey, crate::state::ChangeRecord)>) {
        if !self.state.unread_pending.is_empty()
            && now_ms.saturating_sub(self.last_unread_emit_ms) >= self.rules.unread_emit_interval_ms
        {
            self.emit_unread();
            self.last_unread_emit_ms = now_ms;
        }
        let changes = self.state.drain_changes();
        (std::mem::take(&mut self.out), changes)
    }
}
