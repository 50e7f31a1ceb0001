//! The pure processing core of one input partition: events in, outputs and state changes
//! out. No I/O and no clock except what the caller passes in, so it is deterministic: the
//! same input sequence always yields the same outputs (DESIGN §7), which is what makes a
//! replay after a crash rewrite identical records.
//!
//! Per event, in partition order:
//! 1. filter (blocked sender, disallowed kind → `filtered`; body too large → DLQ);
//! 2. dedupe by (session, `client_msg_id`) within the dedupe horizon of event time;
//! 3. apply: timeline row (`chat:messages` / `chat:channel_messages`) with a dense per-session
//!    `seq`; inbox fan-out (direct: both parties; groups up to `fanout_max_members`; never
//!    channels); membership rows; unread counts; window counts;
//! 4. advance the watermark (max event time − grace) and emit every window it passed.
//!
//! Unread and `chat:user_sessions.unread` outputs are coalesced per batch: one record per
//! changed (user, session) with its value at the end of the batch (the topic is compacted,
//! so only the latest value per key matters).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde_json::json;

use chatpipe_common::event::{rfc3339_ms, ChatEvent, EventType, MessageKind, SessionKind};
use chatpipe_common::row_key;
use chatpipe_common::rows::{tables, Cell, RowMutation};

use crate::state::{LogEntry, Member, PartitionState, Seen, Session, Unread, WindowAgg};

/// The processing rules (from the CLI flags).
#[derive(Debug, Clone)]
pub struct Rules {
    /// Messages from these senders are dropped (counted as `filtered`).
    pub blocked_senders: HashSet<u64>,
    /// When set, messages of other kinds are dropped (counted as `filtered`).
    pub allowed_kinds: Option<HashSet<MessageKind>>,
    /// Bodies larger than this go to the DLQ.
    pub max_body_bytes: usize,
    /// How long (event time) a `client_msg_id` is remembered.
    pub dedupe_horizon_ms: i64,
    /// Bodies at or above this size are LZ4-compressed.
    pub compress_min_bytes: usize,
    /// Groups with more members are not fanned out to inboxes.
    pub fanout_max_members: usize,
    /// Tumbling window size.
    pub window_ms: i64,
    /// Watermark lag behind the largest event time.
    pub grace_ms: i64,
    /// Late events within this much of the largest event time correct their window.
    pub correction_horizon_ms: i64,
    /// Characters of body kept as the inbox preview.
    pub preview_chars: usize,
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
            window_ms: 60_000,
            grace_ms: 30_000,
            correction_horizon_ms: 24 * 3_600_000,
            preview_chars: 80,
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

/// A record for the DLQ: the input at `offset`, with a reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DlqEntry {
    /// Input offset.
    pub offset: i64,
    /// Short reason code.
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
    /// Row mutations for `chat.rows`, in order.
    pub rows: Vec<RowMutation>,
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
    out: Outputs,
    unread_dirty: BTreeSet<(u64, u64)>,
    unread_ingested: i64,
}

/// A cell holding a decimal number (DESIGN §6: numbers as decimal ASCII).
fn num<N: itoa::Integer>(col: &str, v: N) -> Cell {
    Cell::new(col, itoa::Buffer::new().format(v).as_bytes().to_vec())
}

/// A cell holding text.
fn text(col: &str, v: &str) -> Cell {
    Cell::new(col, v.as_bytes().to_vec())
}

/// `{"user_id":"…","session_id":"…","unread":N,"last_read_message_id":"…"}` (ids are
/// digits, so no escaping is needed; written by hand because it is the hottest output).
fn unread_json(user: u64, session: u64, unread: u64, last_read: u64) -> String {
    let mut b = itoa::Buffer::new();
    let mut s = String::with_capacity(112);
    s.push_str("{\"user_id\":\"");
    s.push_str(b.format(user));
    s.push_str("\",\"session_id\":\"");
    s.push_str(b.format(session));
    s.push_str("\",\"unread\":");
    s.push_str(b.format(unread));
    s.push_str(",\"last_read_message_id\":\"");
    s.push_str(b.format(last_read));
    s.push_str("\"}");
    s
}

impl PartitionCore {
    /// A core over restored (or empty) state.
    pub fn new(partition: i32, rules: Rules, state: PartitionState) -> Self {
        PartitionCore {
            partition,
            rules,
            state,
            out: Outputs::default(),
            unread_dirty: BTreeSet::new(),
            unread_ingested: 0,
        }
    }

    /// Last applied input offset (−1 when none).
    pub fn applied_offset(&self) -> i64 {
        self.state.meta.applied_offset
    }

    fn count(&mut self, o: Outcome) {
        *self.out.outcomes.entry(o).or_default() += 1;
    }

    /// Records an input that could not be decoded or validated.
    pub fn reject(&mut self, offset: i64, reason: &'static str, detail: String) {
        if offset <= self.state.meta.applied_offset {
            return; // replayed input, handled before
        }
        self.out.dlq.push(DlqEntry { offset, reason, detail });
        self.count(Outcome::Dlq);
        self.state.meta.applied_offset = offset;
    }

    /// Applies one event at `offset`. Offsets at or below the applied one are skipped.
    pub fn apply(&mut self, offset: i64, ev: &ChatEvent) {
        if offset <= self.state.meta.applied_offset {
            return;
        }
        self.state.meta.applied_offset = offset;
        let outcome = self.apply_event(offset, ev);
        self.count(outcome);
        self.observe_event_time(ev.sent_at_ms);
    }

    fn apply_event(&mut self, offset: i64, ev: &ChatEvent) -> Outcome {
        if ev.event_type == EventType::Message || ev.event_type == EventType::Edit {
            if let Some(m) = &ev.message {
                if self.rules.blocked_senders.contains(&ev.sender_id) {
                    return Outcome::Filtered;
                }
                if self.rules.allowed_kinds.as_ref().is_some_and(|k| !k.contains(&m.kind)) {
                    return Outcome::Filtered;
                }
                if m.body.len() > self.rules.max_body_bytes {
                    self.out.dlq.push(DlqEntry {
                        offset,
                        reason: "body_too_large",
                        detail: format!("body is {} bytes; the limit is {}", m.body.len(), self.rules.max_body_bytes),
                    });
                    return Outcome::Dlq;
                }
            } else {
                self.out.dlq.push(DlqEntry {
                    offset,
                    reason: "invalid",
                    detail: "message event without a body".into(),
                });
                return Outcome::Dlq;
            }
        }
        if let Some(cmid) = &ev.client_msg_id {
            let key = (ev.session_id, cmid.clone());
            if self.state.seen.get(&key).is_some() {
                return Outcome::Duplicate;
            }
            self.state.seen.insert(key, Seen { message_id: ev.message_id, event_time_ms: ev.sent_at_ms });
        }
        match ev.event_type {
            EventType::Message => self.on_message(offset, ev),
            EventType::Edit | EventType::Recall => {
                self.on_edit_or_recall(ev);
                Outcome::Processed
            }
            EventType::Read => {
                self.on_read(ev);
                Outcome::Processed
            }
            EventType::Join => {
                if let Some(user) = ev.user_id {
                    self.join(ev.session_id, ev.session_kind, user, ev.sent_at_ms, ev.ingested_at_ms);
                }
                Outcome::Processed
            }
            EventType::Leave => {
                if let Some(user) = ev.user_id {
                    self.leave(ev.session_id, ev.session_kind, user, ev.ingested_at_ms);
                }
                Outcome::Processed
            }
        }
    }

    fn timeline_table(kind: SessionKind) -> &'static str {
        if kind == SessionKind::Channel {
            tables::CHANNEL_MESSAGES
        } else {
            tables::MESSAGES
        }
    }

    /// Body cells: plain, or LZ4 with `m:enc = lz4` at or above the threshold.
    fn body_cells(&self, body: &str, cells: &mut Vec<Cell>) -> bool {
        if body.len() >= self.rules.compress_min_bytes {
            cells.push(Cell::new("m:body", lz4_flex::compress_prepend_size(body.as_bytes())));
            cells.push(Cell::new("m:enc", b"lz4".to_vec()));
            true
        } else {
            cells.push(Cell::new("m:body", body.as_bytes().to_vec()));
            false
        }
    }

    fn preview(&self, body: &str) -> String {
        body.chars().take(self.rules.preview_chars).collect()
    }

    fn on_message(&mut self, offset: i64, ev: &ChatEvent) -> Outcome {
        let Some(msg) = &ev.message else { return Outcome::Dlq };
        let session = ev.session_id;
        let kind = ev.session_kind;
        // before this message's seq: a party joining now counts this message as unread
        if kind == SessionKind::Direct {
            // direct sessions have implicit membership: both parties
            self.join(session, kind, ev.sender_id, ev.sent_at_ms, ev.ingested_at_ms);
            if let Some(r) = ev.recipient_id {
                self.join(session, kind, r, ev.sent_at_ms, ev.ingested_at_ms);
            }
        }
        let seq = {
            let s = self.state.sessions.entry_or(session, || Session { kind, seq: 0 });
            s.seq += 1;
            s.seq
        };
        // timeline row
        let mut cells = vec![num("m:sender", ev.sender_id), text("m:kind", msg.kind.as_str())];
        self.body_cells(&msg.body, &mut cells);
        cells.push(num("m:sent_at", ev.sent_at_ms));
        cells.push(num("m:seq", seq));
        self.out.rows.push(RowMutation {
            table: Self::timeline_table(kind).to_owned(),
            row: row_key::encode(session, ev.message_id).into_bytes(),
            cells,
            delete: false,
            ingested_at_ms: ev.ingested_at_ms,
        });
        // inbox fan-out and unread
        let members: Vec<u64> =
            self.state.members_by_session.get(&session).map(|m| m.iter().copied().collect()).unwrap_or_default();
        let fan_out = match kind {
            SessionKind::Direct => true,
            SessionKind::Group => members.len() <= self.rules.fanout_max_members,
            SessionKind::Channel => false,
        };
        if fan_out {
            let mut targets: BTreeSet<u64> = members.iter().copied().collect();
            targets.insert(ev.sender_id);
            let preview = self.preview(&msg.body);
            for user in targets {
                self.out.rows.push(RowMutation {
                    table: tables::INBOX.to_owned(),
                    row: row_key::encode(user, ev.message_id).into_bytes(),
                    cells: vec![
                        num("i:session", session),
                        num("i:sender", ev.sender_id),
                        text("i:kind", msg.kind.as_str()),
                        Cell::new("i:preview", preview.clone().into_bytes()),
                    ],
                    delete: false,
                    ingested_at_ms: ev.ingested_at_ms,
                });
            }
        }
        self.state.log_message(session, ev.message_id, LogEntry { sender: ev.sender_id, seq });
        for user in members {
            if user == ev.sender_id {
                continue;
            }
            if let Some(u) = self.state.unread.get_mut(&(user, session)) {
                if ev.message_id > u.last_read {
                    u.count += 1;
                    self.unread_dirty.insert((user, session));
                    self.unread_ingested = self.unread_ingested.max(ev.ingested_at_ms);
                }
            }
        }
        self.count_in_window(offset, ev, kind, msg.kind)
    }

    fn on_edit_or_recall(&mut self, ev: &ChatEvent) {
        let Some(target) = ev.target_id else { return };
        let mut cells = Vec::new();
        let mut delete_enc = false;
        if ev.event_type == EventType::Edit {
            let Some(msg) = &ev.message else { return };
            cells.push(text("m:kind", msg.kind.as_str()));
            delete_enc = !self.body_cells(&msg.body, &mut cells);
            let n = {
                let e = self.state.edits.entry_or((ev.session_id, target), || 0);
                *e += 1;
                *e
            };
            cells.push(num("m:edited", n));
        } else {
            cells.push(num("m:recalled", 1));
        }
        let row = row_key::encode(ev.session_id, target).into_bytes();
        let table = Self::timeline_table(ev.session_kind).to_owned();
        if delete_enc {
            // the new body is plain: an earlier compressed body's flag must go
            self.out.rows.push(RowMutation {
                table: table.clone(),
                row: row.clone(),
                cells: vec![Cell::new("m:enc", Vec::new())],
                delete: true,
                ingested_at_ms: ev.ingested_at_ms,
            });
        }
        self.out.rows.push(RowMutation { table, row, cells, delete: false, ingested_at_ms: ev.ingested_at_ms });
    }

    fn on_read(&mut self, ev: &ChatEvent) {
        let Some(target) = ev.target_id else { return };
        let key = (ev.sender_id, ev.session_id);
        if let Some(u) = self.state.unread.get(&key) {
            if target <= u.last_read {
                return;
            }
        } else {
            return; // not a member: nothing is counted for them
        }
        let Some(u) = self.state.unread.get(&key).cloned() else { return };
        // messages the mark moves over that counted for this user: from others, above the
        // old mark, received after they joined
        let passed = self
            .state
            .log_by_session
            .get(&ev.session_id)
            .map(|log| {
                log.range(u.last_read + 1..=target)
                    .filter(|(_, e)| e.sender != ev.sender_id && e.seq > u.joined_seq)
                    .count() as u64
            })
            .unwrap_or(0);
        if let Some(u) = self.state.unread.get_mut(&key) {
            u.last_read = target;
            u.count = u.count.saturating_sub(passed);
        }
        self.unread_dirty.insert(key);
        self.unread_ingested = self.unread_ingested.max(ev.ingested_at_ms);
    }

    fn join(&mut self, session: u64, kind: SessionKind, user: u64, at_ms: i64, ingested_at_ms: i64) {
        if self.state.members.get(&(session, user)).is_some() {
            return;
        }
        let joined_seq = self.state.sessions.entry_or(session, || Session { kind, seq: 0 }).seq;
        self.state.add_member(session, user, Member { joined_at_ms: at_ms });
        self.state.unread.insert((user, session), Unread { last_read: 0, count: 0, joined_seq });
        self.unread_dirty.insert((user, session));
        self.unread_ingested = self.unread_ingested.max(ingested_at_ms);
        self.out.rows.push(RowMutation {
            table: tables::MEMBERS.to_owned(),
            row: row_key::encode_pair(session, user).into_bytes(),
            cells: vec![num("f:joined_at", at_ms)],
            delete: false,
            ingested_at_ms,
        });
        self.out.rows.push(RowMutation {
            table: tables::USER_SESSIONS.to_owned(),
            row: row_key::encode_pair(user, session).into_bytes(),
            cells: vec![num("f:joined_at", at_ms), num("f:unread", 0)],
            delete: false,
            ingested_at_ms,
        });
    }

    fn leave(&mut self, session: u64, _kind: SessionKind, user: u64, ingested_at_ms: i64) {
        if !self.state.remove_member(session, user) {
            return;
        }
        self.state.unread.remove(&(user, session));
        self.unread_dirty.insert((user, session));
        self.unread_ingested = self.unread_ingested.max(ingested_at_ms);
        for (table, row) in [
            (tables::MEMBERS, row_key::encode_pair(session, user)),
            (tables::USER_SESSIONS, row_key::encode_pair(user, session)),
        ] {
            self.out.rows.push(RowMutation {
                table: table.to_owned(),
                row: row.into_bytes(),
                cells: Vec::new(),
                delete: true,
                ingested_at_ms,
            });
        }
    }

    fn window_of(&self, t: i64) -> i64 {
        t.div_euclid(self.rules.window_ms) * self.rules.window_ms
    }

    fn count_in_window(&mut self, offset: i64, ev: &ChatEvent, skind: SessionKind, mkind: MessageKind) -> Outcome {
        let start = self.window_of(ev.sent_at_ms);
        let end = start + self.rules.window_ms;
        let closed = self.state.meta.watermark_ms.is_some_and(|wm| end <= wm);
        let max_t = self.state.meta.max_event_time_ms.unwrap_or(ev.sent_at_ms);
        if closed && ev.sent_at_ms < max_t - self.rules.correction_horizon_ms {
            self.out.dlq.push(DlqEntry {
                offset,
                reason: "late",
                detail: format!(
                    "event time {} is more than the correction horizon behind {}; applied to timelines, not counted",
                    rfc3339_ms(ev.sent_at_ms),
                    rfc3339_ms(max_t)
                ),
            });
            return Outcome::Late;
        }
        let mut w = self.state.windows.get(&(start, ev.session_id)).cloned().unwrap_or(WindowAgg {
            session_kind: skind,
            messages: 0,
            by_kind: BTreeMap::new(),
            senders: BTreeSet::new(),
            revision: 0,
        });
        w.messages += 1;
        *w.by_kind.entry(mkind).or_default() += 1;
        w.senders.insert(ev.sender_id);
        if closed {
            w.revision += 1;
            self.emit_session_window(start, ev.session_id, &w, ev.ingested_at_ms);
            self.state.put_window(start, ev.session_id, w);
            let partial = self.partial(start);
            self.push_progress(vec![partial]);
            Outcome::Corrected
        } else {
            self.state.put_window(start, ev.session_id, w);
            Outcome::Processed
        }
    }

    fn observe_event_time(&mut self, t: i64) {
        let max_t = self.state.meta.max_event_time_ms.map_or(t, |m| m.max(t));
        self.state.meta.max_event_time_ms = Some(max_t);
        self.advance_watermark(max_t - self.rules.grace_ms, 0);
    }

    /// Advances the watermark of an idle partition to `now_ms − grace` (wall clock), so
    /// its windows close and the global merge is not held back.
    pub fn advance_idle(&mut self, now_ms: i64) {
        self.advance_watermark(now_ms - self.rules.grace_ms, now_ms);
    }

    fn advance_watermark(&mut self, wm: i64, ingested_at_ms: i64) {
        let old = self.state.meta.watermark_ms;
        if old.is_some_and(|o| wm <= o) {
            return;
        }
        self.state.meta.watermark_ms = Some(wm);
        let crossed = old.is_none_or(|o| self.window_of(o) != self.window_of(wm));
        if !crossed {
            return;
        }
        // emit every window that ended at or before the watermark and is not emitted yet
        let due: Vec<i64> = self.state.window_index.range(..=wm - self.rules.window_ms).map(|(s, _)| *s).collect();
        let mut partials = Vec::new();
        for start in due {
            let sessions: Vec<u64> =
                self.state.window_index.get(&start).map(|s| s.iter().copied().collect()).unwrap_or_default();
            let mut any = false;
            for session in sessions {
                let Some(w) = self.state.windows.get(&(start, session)) else { continue };
                if w.revision > 0 {
                    continue;
                }
                let mut w = w.clone();
                w.revision = 1;
                self.emit_session_window(start, session, &w, ingested_at_ms);
                self.state.put_window(start, session, w);
                any = true;
            }
            if any {
                partials.push(self.partial(start));
            }
        }
        self.evict(wm);
        self.push_progress(partials);
    }

    fn partial(&mut self, start: i64) -> WindowPartial {
        let revision = {
            let r = self.state.meta.partial_revisions.entry(start).or_insert(0);
            *r += 1;
            *r
        };
        let mut p = WindowPartial {
            window_start_ms: start,
            revision,
            messages: 0,
            active_sessions: 0,
            senders: BTreeSet::new(),
            by_session_kind: BTreeMap::new(),
            by_kind: BTreeMap::new(),
        };
        if let Some(sessions) = self.state.window_index.get(&start) {
            for s in sessions {
                if let Some(w) = self.state.windows.get(&(start, *s)) {
                    p.messages += w.messages;
                    p.active_sessions += 1;
                    p.senders.extend(w.senders.iter().copied());
                    *p.by_session_kind.entry(w.session_kind).or_default() += w.messages;
                    for (k, n) in &w.by_kind {
                        *p.by_kind.entry(*k).or_default() += n;
                    }
                }
            }
        }
        p
    }

    fn push_progress(&mut self, partials: Vec<WindowPartial>) {
        let wm = self.state.meta.watermark_ms.unwrap_or(i64::MIN);
        let p = self.out.progress.get_or_insert_with(|| Progress {
            partition: self.partition,
            watermark_ms: wm,
            partials: Vec::new(),
        });
        p.watermark_ms = wm;
        p.partials.extend(partials);
    }

    fn emit_session_window(&mut self, start: i64, session: u64, w: &WindowAgg, ingested_at_ms: i64) {
        let end = start + self.rules.window_ms;
        let by_kind: serde_json::Map<String, serde_json::Value> =
            w.by_kind.iter().map(|(k, n)| (k.as_str().to_owned(), json!(n))).collect();
        let value = json!({
            "session_id": session.to_string(),
            "session_kind": w.session_kind.as_str(),
            "window_start": rfc3339_ms(start),
            "window_end": rfc3339_ms(end),
            "messages": w.messages,
            "by_kind": by_kind,
            "senders": w.senders.len(),
            "revision": w.revision,
        });
        self.out.session_aggs.push((format!("{session}|{}", rfc3339_ms(start)), value.to_string()));
        let mut cells = vec![
            num("c:window_start", start),
            num("c:messages", w.messages),
            num("c:senders", w.senders.len()),
            num("c:revision", w.revision),
        ];
        for (k, n) in &w.by_kind {
            cells.push(num(&format!("c:{}", k.as_str()), *n));
        }
        self.out.rows.push(RowMutation {
            table: tables::COUNTS.to_owned(),
            row: row_key::encode(session, start.max(0) as u64).into_bytes(),
            cells,
            delete: false,
            ingested_at_ms,
        });
        self.out.windows_emitted += 1;
    }

    fn evict(&mut self, wm: i64) {
        let Some(max_t) = self.state.meta.max_event_time_ms.or(Some(wm)) else { return };
        let horizon = max_t.max(wm) - self.rules.correction_horizon_ms;
        let old: Vec<i64> = self.state.window_index.range(..horizon - self.rules.window_ms).map(|(s, _)| *s).collect();
        for start in old {
            let sessions: Vec<u64> =
                self.state.window_index.get(&start).map(|s| s.iter().copied().collect()).unwrap_or_default();
            for s in sessions {
                self.state.remove_window(start, s);
            }
            self.state.meta.partial_revisions.remove(&start);
        }
        self.state.meta.partial_revisions.retain(|s, _| *s >= horizon - self.rules.window_ms);
        // a session's log is needed only above its members' lowest read mark
        let sessions: Vec<u64> = self.state.log_by_session.keys().copied().collect();
        for session in sessions {
            let floor = self
                .state
                .members_by_session
                .get(&session)
                .map(|ms| {
                    ms.iter()
                        .filter_map(|u| self.state.unread.get(&(*u, session)).map(|s| s.last_read))
                        .min()
                        .unwrap_or(u64::MAX)
                })
                .unwrap_or(u64::MAX);
            if floor > 0 {
                self.state.prune_log(session, floor);
            }
        }
        let dedupe_floor = max_t.max(wm) - self.rules.dedupe_horizon_ms;
        let stale: Vec<(u64, String)> =
            self.state.seen.iter().filter(|(_, v)| v.event_time_ms < dedupe_floor).map(|(k, _)| k.clone()).collect();
        for k in stale {
            self.state.seen.remove(&k);
        }
    }

    /// Ends the batch: the outputs, in order, and the state changes for the changelog.
    pub fn finish_batch(&mut self) -> (Outputs, Vec<(crate::state::StateKey, crate::state::ChangeRecord)>) {
        let dirty = std::mem::take(&mut self.unread_dirty);
        let ingested = std::mem::take(&mut self.unread_ingested);
        for (user, session) in dirty {
            let key = format!("{user}|{session}");
            match self.state.unread.get(&(user, session)) {
                Some(u) => {
                    self.out.unread.push((key, Some(unread_json(user, session, u.count, u.last_read))));
                    self.out.rows.push(RowMutation {
                        table: tables::USER_SESSIONS.to_owned(),
                        row: row_key::encode_pair(user, session).into_bytes(),
                        cells: vec![num("f:unread", u.count)],
                        delete: false,
                        ingested_at_ms: ingested,
                    });
                }
                None => self.out.unread.push((key, None)),
            }
        }
        let changes = self.state.drain_changes();
        (std::mem::take(&mut self.out), changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatpipe_common::event::MessageContent;

    const T0: i64 = 1_790_000_080_000; // a minute boundary (…040_000) + 40 s

    struct Script {
        core: PartitionCore,
        offset: i64,
        next_id: u64,
    }

    impl Script {
        fn new(rules: Rules) -> Self {
            Script { core: PartitionCore::new(0, rules, PartitionState::default()), offset: 0, next_id: 1_000 }
        }
        fn ev(&mut self, t: EventType, session: u64, kind: SessionKind, sender: u64, at: i64) -> ChatEvent {
            self.next_id += 1;
            ChatEvent {
                message_id: self.next_id,
                ingested_at_ms: at,
                sent_at_ms: at,
                event_type: t,
                session_id: session,
                session_kind: kind,
                sender_id: sender,
                recipient_id: None,
                client_msg_id: None,
                message: None,
                target_id: None,
                user_id: None,
            }
        }
        fn push(&mut self, ev: ChatEvent) -> u64 {
            self.offset += 1;
            self.core.apply(self.offset, &ev);
            ev.message_id
        }
        fn msg(&mut self, session: u64, kind: SessionKind, sender: u64, at: i64, body: &str) -> u64 {
            let mut e = self.ev(EventType::Message, session, kind, sender, at);
            e.message = Some(MessageContent { kind: MessageKind::Text, body: body.into(), mentions: vec![] });
            if kind == SessionKind::Direct {
                e.recipient_id = Some(sender + 1);
            }
            self.push(e)
        }
        fn join(&mut self, session: u64, user: u64, at: i64) {
            let mut e = self.ev(EventType::Join, session, SessionKind::Group, user, at);
            e.user_id = Some(user);
            self.push(e);
        }
        fn read(&mut self, session: u64, user: u64, upto: u64, at: i64) {
            let mut e = self.ev(EventType::Read, session, SessionKind::Group, user, at);
            e.target_id = Some(upto);
            self.push(e);
        }
        fn finish(&mut self) -> Outputs {
            self.core.finish_batch().0
        }
    }

    fn rows<'a>(o: &'a Outputs, table: &str) -> Vec<&'a RowMutation> {
        o.rows.iter().filter(|r| r.table == table).collect()
    }

    fn cell_str(r: &RowMutation, col: &str) -> Option<String> {
        r.cells.iter().find(|c| c.column == col).map(|c| String::from_utf8_lossy(&c.value).into_owned())
    }

    #[test]
    fn seq_is_dense_per_session_and_rows_are_keyed_newest_first() {
        let mut s = Script::new(Rules::default());
        let a = s.msg(7, SessionKind::Group, 1, T0, "a");
        s.msg(8, SessionKind::Group, 1, T0, "x");
        let b = s.msg(7, SessionKind::Group, 2, T0 + 1, "b");
        let o = s.finish();
        let m = rows(&o, tables::MESSAGES);
        let seqs: Vec<_> =
            m.iter().map(|r| (row_key::decode(&r.row).unwrap(), cell_str(r, "m:seq").unwrap())).collect();
        assert_eq!(seqs, vec![((7, a), "1".into()), ((8, a + 1), "1".into()), ((7, b), "2".into())]);
        assert_eq!(cell_str(m[0], "m:body").as_deref(), Some("a"));
        assert_eq!(cell_str(m[0], "m:enc"), None);
    }

    #[test]
    fn large_bodies_are_lz4_compressed_and_flagged() {
        let mut s = Script::new(Rules::default());
        let body = "z".repeat(600);
        s.msg(7, SessionKind::Group, 1, T0, &body);
        let o = s.finish();
        let r = rows(&o, tables::MESSAGES)[0];
        assert_eq!(cell_str(r, "m:enc").as_deref(), Some("lz4"));
        let stored = &r.cells.iter().find(|c| c.column == "m:body").unwrap().value;
        assert_eq!(lz4_flex::decompress_size_prepended(stored).unwrap(), body.as_bytes());
    }

    #[test]
    fn fan_out_includes_sender_and_stops_above_threshold() {
        let mut s = Script::new(Rules { fanout_max_members: 3, ..Rules::default() });
        for u in [1, 2, 3] {
            s.join(10, u, T0);
        }
        for u in [1, 2, 3, 4] {
            s.join(11, u, T0);
        }
        s.msg(10, SessionKind::Group, 9, T0, "small group, sender not a member");
        s.msg(11, SessionKind::Group, 1, T0, "large group");
        s.msg(12, SessionKind::Channel, 1, T0, "channel");
        s.msg(13, SessionKind::Direct, 5, T0, "dm");
        let o = s.finish();
        let inbox: BTreeSet<(u64, u64)> = rows(&o, tables::INBOX)
            .iter()
            .map(|r| (row_key::decode(&r.row).unwrap().0, cell_str(r, "i:session").unwrap().parse().unwrap()))
            .collect();
        let expected: BTreeSet<(u64, u64)> = [(1, 10), (2, 10), (3, 10), (9, 10), (5, 13), (6, 13)].into();
        assert_eq!(inbox, expected);
        assert_eq!(rows(&o, tables::CHANNEL_MESSAGES).len(), 1);
    }

    #[test]
    fn duplicates_by_client_msg_id_are_dropped() {
        let mut s = Script::new(Rules::default());
        let mut e = s.ev(EventType::Message, 7, SessionKind::Group, 1, T0);
        e.message = Some(MessageContent { kind: MessageKind::Text, body: "hi".into(), mentions: vec![] });
        e.client_msg_id = Some("c1".into());
        let mut retry = e.clone();
        retry.message_id += 100;
        s.push(e);
        s.push(retry);
        let o = s.finish();
        assert_eq!(rows(&o, tables::MESSAGES).len(), 1);
        assert_eq!(o.outcomes.get(&Outcome::Duplicate), Some(&1));
    }

    #[test]
    fn unread_counts_others_messages_above_the_read_mark_while_member() {
        let mut s = Script::new(Rules::default());
        s.join(7, 1, T0);
        s.join(7, 2, T0);
        let m1 = s.msg(7, SessionKind::Group, 1, T0, "1");
        s.msg(7, SessionKind::Group, 1, T0, "2");
        s.msg(7, SessionKind::Group, 2, T0, "own message");
        let o = s.finish();
        let unread: HashMap<String, Option<serde_json::Value>> =
            o.unread.iter().map(|(k, v)| (k.clone(), v.as_ref().map(|v| serde_json::from_str(v).unwrap()))).collect();
        assert_eq!(unread["2|7"].as_ref().unwrap()["unread"], 2);
        assert_eq!(unread["1|7"].as_ref().unwrap()["unread"], 1);
        s.read(7, 2, m1, T0);
        let o = s.finish();
        assert_eq!(o.unread.len(), 1);
        let v: serde_json::Value = serde_json::from_str(o.unread[0].1.as_ref().unwrap()).unwrap();
        assert_eq!(
            (v["unread"].as_u64(), v["last_read_message_id"].as_str()),
            (Some(1), Some(m1.to_string().as_str()))
        );
        let us = rows(&o, tables::USER_SESSIONS);
        assert_eq!(cell_str(us[0], "f:unread").as_deref(), Some("1"));
    }

    use std::collections::HashMap;

    #[test]
    fn windows_emit_once_the_watermark_passes_and_late_events_correct_them() {
        let rules = Rules { window_ms: 60_000, grace_ms: 10_000, correction_horizon_ms: 600_000, ..Rules::default() };
        let w0 = T0 - 40_000; // window start
        let mut s = Script::new(rules);
        s.msg(7, SessionKind::Group, 1, T0, "a");
        s.msg(7, SessionKind::Group, 2, T0 + 5_000, "b");
        assert!(s.finish().session_aggs.is_empty(), "watermark has not passed the window end");
        s.msg(8, SessionKind::Group, 1, w0 + 60_000 + 10_000, "moves the watermark to the window end");
        let o = s.finish();
        assert_eq!(o.session_aggs.len(), 1);
        let v: serde_json::Value = serde_json::from_str(&o.session_aggs[0].1).unwrap();
        assert_eq!(
            (v["messages"].as_u64(), v["senders"].as_u64(), v["revision"].as_u64()),
            (Some(2), Some(2), Some(1))
        );
        assert_eq!(o.session_aggs[0].0, format!("7|{}", rfc3339_ms(w0)));
        let p = o.progress.unwrap();
        assert_eq!(p.partials.len(), 1);
        assert_eq!(p.partials[0].messages, 2);
        // a late event inside the horizon corrects the window
        s.msg(7, SessionKind::Group, 3, T0 + 1, "late");
        let o = s.finish();
        let v: serde_json::Value = serde_json::from_str(&o.session_aggs[0].1).unwrap();
        assert_eq!(
            (v["messages"].as_u64(), v["senders"].as_u64(), v["revision"].as_u64()),
            (Some(3), Some(3), Some(2))
        );
        assert_eq!(o.outcomes.get(&Outcome::Corrected), Some(&1));
        assert_eq!(o.progress.unwrap().partials[0].revision, 2);
        // beyond the horizon: timeline yes, count no, DLQ copy with reason late
        s.msg(9, SessionKind::Group, 1, T0 + 2_000_000, "far ahead");
        s.finish();
        s.msg(7, SessionKind::Group, 4, T0 + 2, "too late");
        let o = s.finish();
        assert!(o.session_aggs.is_empty());
        assert_eq!(rows(&o, tables::MESSAGES).len(), 1);
        assert_eq!(o.dlq.iter().map(|d| d.reason).collect::<Vec<_>>(), vec!["late"]);
    }

    #[test]
    fn idle_partition_advances_its_watermark_on_wall_time() {
        let rules = Rules { window_ms: 60_000, grace_ms: 10_000, ..Rules::default() };
        let mut s = Script::new(rules);
        s.msg(7, SessionKind::Group, 1, T0, "a");
        assert!(s.finish().session_aggs.is_empty());
        s.core.advance_idle(T0 + 120_000);
        let o = s.finish();
        assert_eq!(o.session_aggs.len(), 1);
        assert_eq!(o.progress.unwrap().watermark_ms, T0 + 110_000);
    }

    #[test]
    fn replay_of_applied_offsets_is_skipped_and_outputs_are_deterministic() {
        let run = || {
            let mut s = Script::new(Rules::default());
            s.join(7, 1, T0);
            s.msg(7, SessionKind::Group, 2, T0, "x");
            let o = s.finish();
            (o.rows, o.unread, s.core.state.meta.applied_offset)
        };
        assert_eq!(run(), run());
        let mut s = Script::new(Rules::default());
        s.msg(7, SessionKind::Group, 2, T0, "x");
        s.finish();
        let again = s.ev(EventType::Message, 7, SessionKind::Group, 2, T0);
        s.core.apply(1, &again); // offset 1 was applied already
        assert!(s.finish().rows.is_empty());
    }

    #[test]
    fn leave_deletes_membership_rows_and_tombstones_unread() {
        let mut s = Script::new(Rules::default());
        s.join(7, 1, T0);
        s.finish();
        let mut e = s.ev(EventType::Leave, 7, SessionKind::Group, 1, T0);
        e.user_id = Some(1);
        s.push(e);
        let o = s.finish();
        let deletes: Vec<_> = o.rows.iter().filter(|r| r.delete).map(|r| r.table.as_str()).collect();
        assert_eq!(deletes, vec![tables::MEMBERS, tables::USER_SESSIONS]);
        assert_eq!(o.unread, vec![("1|7".to_string(), None)]);
    }
}
