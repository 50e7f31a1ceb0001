//! How rows are shown: ids as decimal strings (64-bit ids exceed JavaScript's numbers),
//! times RFC 3339 UTC with milliseconds, a recalled message without its body, previews cut
//! as the processor cuts them. Pure.

use chatpipe_common::event::rfc3339_ms;
use serde_json::{json, Value};

use crate::store::{Message, SessionInfo};

pub(crate) fn id_str(id: u64) -> Value {
    Value::String(id.to_string())
}

pub(crate) fn time(ms: Option<i64>) -> Value {
    ms.map_or(Value::Null, |m| Value::String(rfc3339_ms(m)))
}

/// A message as the API shows it: a recalled message has no body.
pub(crate) fn message_json(m: &Message) -> Value {
    let t = &m.m;
    json!({
        "message_id": id_str(t.message_id),
        "session_id": id_str(t.session_id),
        "sender_id": t.sender_id.map(id_str),
        "kind": t.kind,
        "body": if t.recalled { None } else { t.body.clone() },
        "sent_at": time(t.sent_at_ms),
        "seq": t.seq,
        "edited": t.edited,
        "recalled": t.recalled,
        "mentions": m.mentions.iter().map(|u| id_str(*u)).collect::<Vec<_>>(),
    })
}

pub(crate) fn session_json(s: &SessionInfo) -> Value {
    json!({
        "session_id": id_str(s.session_id),
        "kind": s.kind,
        "name": s.name,
        "created_at": time(s.created_at_ms),
        "members": s.members,
        "last_seq": s.last_seq,
        "last_message_id": s.last_message_id.map(id_str),
        "last_sent_at": time(s.last_sent_at_ms),
    })
}

/// The preview of a body, as the processor makes it (its first `chars` characters).
pub(crate) fn preview(body: Option<&str>, chars: usize) -> Option<String> {
    body.map(|b| b.chars().take(chars).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previews_count_characters() {
        assert_eq!(preview(Some("héllo wörld"), 4).as_deref(), Some("héll"));
        assert_eq!(preview(None, 4), None);
    }
}
