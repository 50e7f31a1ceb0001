//! What an event does to its conversation: the session's seq and last message, members and
//! their read marks, the message index (seq and sender by id), and the rows all of that
//! causes. Every mutation goes into the event's one `chat.rows` record (`core.cur`).
//!
//! The cost of a message does not grow with the group: it changes the session, the
//! sender's mark and one message entry; only the inbox rows of a fanned-out group (at
//! most `fanout_max_members` + 1) are per member, and they are HBase cells in the same
//! record, not broker records.
//!
//! Rules (DESIGN §3, §6): direct sessions have implicit membership (both parties join on the
//! first message, before its seq); a member's `read_seq` starts at the session's seq when
//! they join, moves forward on their reads and on their own messages, never back; only the
//! original sender may edit or recall a message, within the dedupe horizon (the message
//! index is bounded by it) — other attempts go to the DLQ as `forbidden` or
//! `unknown_target`; an alias (a retry that got a new id) acts on its original.

use chatpipe_common::event::{ChatEvent, EventType, MessageContent, SessionKind};
use chatpipe_common::rows::tables;

use crate::core::{reason, Outcome, PartitionCore};
use crate::rows::{body_cells, mentions_cell, timeline_table, RowKey};
use crate::state::{EntryKind, EventEntry, Member, MessageInfo, Session, UnreadPending};

impl PartitionCore {
    /// The session, created (with its `sessions` row) when this event is its first.
    fn ensure_session(&mut self, ev: &ChatEvent) {
        let session = ev.session_id;
        if self.state.sessions.get(&session).is_some() {
            return;
        }
        self.state.sessions.insert(
            session,
            Session {
                kind: ev.session_kind,
                name: None,
                created_at_ms: ev.sent_at_ms,
                seq: 0,
                last_message_id: 0,
                last_sent_at_ms: 0,
                members: 0,
                unread_pending: UnreadPending::default(),
            },
        );
        self.cur
            .put(tables::SESSIONS, RowKey::Id(session), ev.ingested_at_ms)
            .cell("s:kind", ev.session_kind.as_str().as_bytes())
            .num("s:created_at", ev.sent_at_ms)
            .num("s:members", 0u64)
            .num("s:last_seq", 0u64);
    }

    /// Adds `user` to the event's session (no-op for a member).
    pub(crate) fn join(&mut self, ev: &ChatEvent, user: u64) {
        let session = ev.session_id;
        if self.state.members.get(&(session, user)).is_some() {
            return;
        }
        self.ensure_session(ev);
        let Some(s) = self.state.sessions.get_mut(&session) else { return };
        s.members += 1;
        let (seq, last_id, count) = (s.seq, s.last_message_id, s.members);
        let member = Member { joined_at_ms: ev.sent_at_ms, joined_seq: seq, read_seq: seq, read_message_id: last_id };
        self.state.add_member(session, user, member);
        if self.rules.unread {
            self.state.mark_unread(session, Some(user));
        }
        let at = ev.ingested_at_ms;
        self.cur.put(tables::MEMBERS, RowKey::Pair(session, user), at).num("f:joined_at", ev.sent_at_ms);
        self.cur
            .put(tables::USER_SESSIONS, RowKey::Pair(user, session), at)
            .num("f:joined_at", ev.sent_at_ms)
            .num("f:joined_seq", seq)
            .num("f:read_seq", seq);
        self.cur.put(tables::SESSIONS, RowKey::Id(session), at).num("s:members", count);
    }

    /// Removes `user` from the event's session (no-op for a non-member).
    pub(crate) fn leave(&mut self, ev: &ChatEvent, user: u64) {
        let session = ev.session_id;
        if !self.state.remove_member(session, user) {
            return;
        }
        let Some(s) = self.state.sessions.get_mut(&session) else { return };
        s.members = s.members.saturating_sub(1);
        let count = s.members;
        if self.rules.unread {
            self.state.mark_unread(session, Some(user));
        }
        let at = ev.ingested_at_ms;
        self.cur.delete(tables::MEMBERS, RowKey::Pair(session, user), at);
        self.cur.delete(tables::USER_SESSIONS, RowKey::Pair(user, session), at);
        self.cur.put(tables::SESSIONS, RowKey::Id(session), at).num("s:members", count);
    }

    /// The first `preview_chars` characters of `body` (a slice: no copy).
    fn preview<'b>(&self, body: &'b str) -> &'b str {
        match body.char_indices().nth(self.rules.preview_chars) {
            Some((end, _)) => &body[..end],
            None => body,
        }
    }

    /// Moves `user`'s read mark forward to `seq` (never back), with its row.
    fn advance_mark(&mut self, ev: &ChatEvent, user: u64, seq: u64, message_id: u64) -> bool {
        let session = ev.session_id;
        let Some(m) = self.state.members.get(&(session, user)) else { return false };
        if seq <= m.read_seq || !self.rules.unread {
            return false;
        }
        if let Some(m) = self.state.members.get_mut(&(session, user)) {
            m.read_seq = seq;
            m.read_message_id = message_id;
        }
        self.cur.put(tables::USER_SESSIONS, RowKey::Pair(user, session), ev.ingested_at_ms).num("f:read_seq", seq);
        true
    }

    pub(crate) fn on_message(&mut self, offset: i64, ev: &ChatEvent) -> Outcome {
        let Some(msg) = &ev.message else { return Outcome::Dlq };
        let session = ev.session_id;
        let kind = ev.session_kind;
        if kind == SessionKind::Direct {
            // implicit membership: both parties, before this message's seq
            self.join(ev, ev.sender_id);
            if let Some(r) = ev.recipient_id {
                self.join(ev, r);
            }
        }
        self.ensure_session(ev);
        let Some(s) = self.state.sessions.get_mut(&session) else { return Outcome::Dlq };
        s.seq += 1;
        s.last_message_id = ev.message_id;
        s.last_sent_at_ms = ev.sent_at_ms;
        let (seq, members) = (s.seq, s.members);
        if self.rules.unread && members > 0 {
            self.state.mark_unread(session, None);
        }
        let at = ev.ingested_at_ms;
        // timeline
        let m = self.cur.put(timeline_table(kind), RowKey::Message(session, ev.message_id), at);
        m.num("m:sender", ev.sender_id).cell("m:kind", msg.kind.as_str().as_bytes());
        body_cells(&msg.body, self.rules.compress_min_bytes, m);
        m.num("m:sent_at", ev.sent_at_ms).num("m:seq", seq);
        mentions_cell(&msg.mentions, m);
        // inbox fan-out on write (larger groups are read from the timeline by `serve`)
        let fanned_out = self.rules.fan_out
            && match kind {
                SessionKind::Direct => true,
                SessionKind::Group => members as usize <= self.rules.fanout_max_members,
                SessionKind::Channel => false,
            };
        if fanned_out {
            self.fan_out(ev, msg, seq);
        }
        self.cur
            .put(tables::SESSIONS, RowKey::Id(session), at)
            .num("s:last_seq", seq)
            .num("s:last_message_id", ev.message_id)
            .num("s:last_sent_at", ev.sent_at_ms);
        // sending implies having read
        self.advance_mark(ev, ev.sender_id, seq, ev.message_id);
        let info = MessageInfo { seq, sender: ev.sender_id, edits: 0, fanned_out };
        let entry =
            EventEntry { ingested_at_ms: at, client_msg_id: ev.client_msg_id.clone(), kind: EntryKind::Message(info) };
        self.state.put_event(session, ev.message_id, entry);
        self.count_in_window(offset, ev, kind, msg.kind)
    }

    /// Inbox rows for every member and the sender.
    fn fan_out(&mut self, ev: &ChatEvent, msg: &MessageContent, seq: u64) {
        let preview = self.preview(&msg.body);
        let session = ev.session_id;
        let sender_is_member = self.state.members.get(&(session, ev.sender_id)).is_some();
        let members = self.state.members_by_session.get(&session);
        let targets = members.into_iter().flatten().copied().chain((!sender_is_member).then_some(ev.sender_id));
        let mut b = itoa::Buffer::new();
        let session_s = b.format(session).as_bytes().to_vec();
        let mut b = itoa::Buffer::new();
        let sender_s = b.format(ev.sender_id).as_bytes().to_vec();
        let mut b = itoa::Buffer::new();
        let seq_s = b.format(seq).as_bytes().to_vec();
        for user in targets {
            self.cur
                .put(tables::INBOX, RowKey::Message(user, ev.message_id), ev.ingested_at_ms)
                .cell("i:session", &session_s)
                .cell("i:sender", &sender_s)
                .cell("i:kind", msg.kind.as_str().as_bytes())
                .cell("i:preview", preview.as_bytes())
                .cell("i:seq", &seq_s);
        }
    }

    /// The message a target id names in this session, following an alias.
    fn resolve(&self, session: u64, target: u64) -> Option<(u64, MessageInfo)> {
        match self.state.events.get(&(session, target)).map(|e| &e.kind) {
            Some(EntryKind::Message(m)) => Some((target, m.clone())),
            Some(EntryKind::Alias(original)) => match self.state.events.get(&(session, *original)).map(|e| &e.kind) {
                Some(EntryKind::Message(m)) => Some((*original, m.clone())),
                _ => None,
            },
            _ => None,
        }
    }

    pub(crate) fn on_edit_or_recall(&mut self, offset: i64, ev: &ChatEvent) -> Outcome {
        let Some(target) = ev.target_id else { return Outcome::Dlq };
        let session = ev.session_id;
        let Some((id, info)) = self.resolve(session, target) else {
            let detail = format!(
                "{} of message {target}, which session {session} does not have within the dedupe horizon",
                ev.event_type
            );
            return self.dlq(offset, reason::UNKNOWN_TARGET, detail);
        };
        if info.sender != ev.sender_id {
            let detail = format!("only the sender of message {id} may {} it", ev.event_type);
            return self.dlq(offset, reason::FORBIDDEN, detail);
        }
        let at = ev.ingested_at_ms;
        let row = RowKey::Message(session, id);
        let table = timeline_table(ev.session_kind);
        let edit = match ev.event_type {
            EventType::Edit => {
                let Some(msg) = &ev.message else { return Outcome::Dlq };
                let edits = info.edits + 1;
                if msg.body.len() < self.rules.compress_min_bytes {
                    // the new body is plain: an earlier compressed body's flag must go
                    self.cur.delete(table, row, at).cell("m:enc", b"");
                }
                let m = self.cur.put(table, row, at);
                m.cell("m:kind", msg.kind.as_str().as_bytes());
                body_cells(&msg.body, self.rules.compress_min_bytes, m);
                m.num("m:edited", edits);
                if let Some(e) = self.state.events.get_mut(&(session, id)) {
                    if let EntryKind::Message(m) = &mut e.kind {
                        m.edits = edits;
                    }
                }
                Some(msg)
            }
            _ => {
                self.cur.put(table, row, at).num("m:recalled", 1u8);
                None
            }
        };
        if info.fanned_out {
            // the inbox rows the message was fanned out to: the sender's and those of
            // members who were in the session when it was sent
            let mut users: Vec<u64> = self
                .state
                .members_by_session
                .get(&session)
                .into_iter()
                .flatten()
                .copied()
                .filter(|u| self.state.members.get(&(session, *u)).is_some_and(|m| m.joined_seq < info.seq))
                .collect();
            if !users.contains(&info.sender) {
                users.push(info.sender);
            }
            let preview = edit.map(|msg| self.preview(&msg.body));
            for user in users {
                let m = self.cur.put(tables::INBOX, RowKey::Message(user, id), at);
                match (edit, preview) {
                    (Some(msg), Some(preview)) => {
                        m.cell("i:kind", msg.kind.as_str().as_bytes()).cell("i:preview", preview.as_bytes());
                    }
                    _ => {
                        m.num("i:recalled", 1u8);
                    }
                }
            }
        }
        Outcome::Processed
    }

    pub(crate) fn on_read(&mut self, offset: i64, ev: &ChatEvent) -> Outcome {
        let session = ev.session_id;
        let Some(s) = self.state.sessions.get(&session) else { return Outcome::Processed };
        if self.state.members.get(&(session, ev.sender_id)).is_none() {
            return Outcome::Processed; // a non-member's read marks nothing
        }
        let (last_seq, last_id) = (s.seq, s.last_message_id);
        let (seq, id) = match (ev.read_seq, ev.target_id) {
            (Some(seq), _) => {
                let seq = seq.min(last_seq);
                (seq, if seq == last_seq { last_id } else { 0 })
            }
            (None, Some(target)) => match self.resolve(session, target) {
                Some((id, info)) => (info.seq, id),
                None => {
                    let detail = format!("read up to message {target}, which session {session} does not have within the dedupe horizon; send read_seq instead");
                    return self.dlq(offset, reason::UNKNOWN_TARGET, detail);
                }
            },
            (None, None) => return Outcome::Processed,
        };
        if self.advance_mark(ev, ev.sender_id, seq, id) {
            self.state.mark_unread(session, Some(ev.sender_id));
        }
        Outcome::Processed
    }

    pub(crate) fn on_session(&mut self, ev: &ChatEvent) -> Outcome {
        self.ensure_session(ev);
        if let Some(name) = &ev.name {
            if let Some(s) = self.state.sessions.get_mut(&ev.session_id) {
                s.name = Some(name.clone());
            }
            self.cur
                .put(tables::SESSIONS, RowKey::Id(ev.session_id), ev.ingested_at_ms)
                .cell("s:name", name.as_bytes());
        }
        Outcome::Processed
    }

    pub(crate) fn on_profile(&mut self, offset: i64, ev: &ChatEvent) -> Outcome {
        let Some(user) = ev.user_id else {
            return self.dlq(offset, reason::INVALID, "profile event without user_id".into());
        };
        if user != ev.session_id {
            // the users row must have one owner: profiles are keyed by their user id
            let detail =
                format!("profile of user {user} routed as session {}; ingest routes by user_id", ev.session_id);
            return self.dlq(offset, reason::INVALID, detail);
        }
        let m = self.cur.put(tables::USERS, RowKey::Id(user), ev.ingested_at_ms);
        if let Some(name) = &ev.name {
            m.cell("u:name", name.as_bytes());
        }
        if let Some(url) = &ev.avatar_url {
            m.cell("u:avatar", url.as_bytes());
        }
        m.num("u:updated_at", ev.sent_at_ms);
        Outcome::Processed
    }
}
