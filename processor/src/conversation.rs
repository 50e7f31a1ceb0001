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
use chatpipe_common::row_key;
use chatpipe_common::rows::tables;

use crate::core::{reason, Outcome, PartitionCore};
use crate::rows::{body_cells, delete, mentions_cell, num, put, session_row, text, timeline_table, user_row};
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
        self.cur.push(put(
            tables::SESSIONS,
            session_row(session),
            vec![
                text("s:kind", ev.session_kind.as_str()),
                num("s:created_at", ev.sent_at_ms),
                num("s:members", 0u64),
                num("s:last_seq", 0u64),
            ],
            ev.ingested_at_ms,
        ));
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
        self.cur.push(put(
            tables::MEMBERS,
            row_key::encode_pair(session, user),
            vec![num("f:joined_at", ev.sent_at_ms)],
            at,
        ));
        self.cur.push(put(
            tables::USER_SESSIONS,
            row_key::encode_pair(user, session),
            vec![num("f:joined_at", ev.sent_at_ms), num("f:joined_seq", seq), num("f:read_seq", seq)],
            at,
        ));
        self.cur.push(put(tables::SESSIONS, session_row(session), vec![num("s:members", count)], at));
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
        self.cur.push(delete(tables::MEMBERS, row_key::encode_pair(session, user), Vec::new(), at));
        self.cur.push(delete(tables::USER_SESSIONS, row_key::encode_pair(user, session), Vec::new(), at));
        self.cur.push(put(tables::SESSIONS, session_row(session), vec![num("s:members", count)], at));
    }

    fn preview(&self, body: &str) -> String {
        body.chars().take(self.rules.preview_chars).collect()
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
        self.cur.push(put(
            tables::USER_SESSIONS,
            row_key::encode_pair(user, session),
            vec![num("f:read_seq", seq)],
            ev.ingested_at_ms,
        ));
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
        let mut cells = Vec::with_capacity(8);
        cells.push(num("m:sender", ev.sender_id));
        cells.push(text("m:kind", msg.kind.as_str()));
        body_cells(&msg.body, self.rules.compress_min_bytes, &mut cells);
        cells.push(num("m:sent_at", ev.sent_at_ms));
        cells.push(num("m:seq", seq));
        cells.extend(mentions_cell(&msg.mentions));
        self.cur.push(put(timeline_table(kind), row_key::encode(session, ev.message_id), cells, at));
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
        self.cur.push(put(
            tables::SESSIONS,
            session_row(session),
            vec![num("s:last_seq", seq), num("s:last_message_id", ev.message_id), num("s:last_sent_at", ev.sent_at_ms)],
            at,
        ));
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
        let mut rows = Vec::with_capacity(members.map_or(1, |m| m.len() + 1));
        for user in targets {
            rows.push(put(
                tables::INBOX,
                row_key::encode(user, ev.message_id),
                vec![
                    num("i:session", session),
                    num("i:sender", ev.sender_id),
                    text("i:kind", msg.kind.as_str()),
                    text("i:preview", &preview),
                    num("i:seq", seq),
                ],
                ev.ingested_at_ms,
            ));
        }
        self.cur.extend(rows);
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
        let row = row_key::encode(session, id);
        let table = timeline_table(ev.session_kind);
        let mut inbox_cells = Vec::new();
        if ev.event_type == EventType::Edit {
            let Some(msg) = &ev.message else { return Outcome::Dlq };
            let edits = info.edits + 1;
            let mut cells = vec![text("m:kind", msg.kind.as_str())];
            if !body_cells(&msg.body, self.rules.compress_min_bytes, &mut cells) {
                // the new body is plain: an earlier compressed body's flag must go
                self.cur.push(delete(table, row.clone(), vec![text("m:enc", "")], at));
            }
            cells.push(num("m:edited", edits));
            self.cur.push(put(table, row, cells, at));
            if let Some(e) = self.state.events.get_mut(&(session, id)) {
                if let EntryKind::Message(m) = &mut e.kind {
                    m.edits = edits;
                }
            }
            inbox_cells.push(text("i:kind", msg.kind.as_str()));
            inbox_cells.push(text("i:preview", &self.preview(&msg.body)));
        } else {
            self.cur.push(put(table, row, vec![num("m:recalled", 1u8)], at));
            inbox_cells.push(num("i:recalled", 1u8));
        }
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
            for user in users {
                self.cur.push(put(tables::INBOX, row_key::encode(user, id), inbox_cells.clone(), at));
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
            self.cur.push(put(
                tables::SESSIONS,
                session_row(ev.session_id),
                vec![text("s:name", name)],
                ev.ingested_at_ms,
            ));
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
        let mut cells = Vec::with_capacity(3);
        if let Some(name) = &ev.name {
            cells.push(text("u:name", name));
        }
        if let Some(url) = &ev.avatar_url {
            cells.push(text("u:avatar", url));
        }
        cells.push(num("u:updated_at", ev.sent_at_ms));
        self.cur.push(put(tables::USERS, user_row(user), cells, ev.ingested_at_ms));
        Outcome::Processed
    }
}
