//! What a `chat.rows` mutation means for the users with a stream: a new inbox row → a
//! `message` (or, with no `i:session`, an `update` of its preview/recall); a large group's
//! new message → a `message` from its timeline (only after the user's `joined_seq`), an
//! edit or recall of one → an `update`; a membership row → `unread` (or `left` when
//! deleted); a session row's `last_seq`/`members` → `unread` for its tracked members.
//!
//! Pure on the hub's state: no I/O; a row whose key does not decode is ignored.

use chatpipe_common::row_key;
use chatpipe_common::rows::{tables, RowMutation};
use serde_json::{json, Value};

use super::hub::{Hub, HubState};
use crate::api::preview;
use crate::store::{decode_pair, SESSIONS};

/// Events of one record: (user, kind, data).
pub(super) type Out = Vec<(u64, &'static str, Value)>;

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
    /// The events one mutation causes for users with state.
    pub(super) fn events_of(&self, st: &mut HubState, m: &RowMutation, out: &mut Out) {
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

    fn unread(user: u64, session: u64, st: &mut HubState, out: &mut Out) {
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
}
