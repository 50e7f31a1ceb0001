//! The producer JSON of an event ([`EventInput::to_json`]) and the time format of every
//! JSON chatpipe writes ([`rfc3339_ms`]).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Serialize, Serializer};

use super::{EventInput, EventType, MessageKind, SessionKind};

/// Writes an id as a JSON string (64-bit ids exceed JavaScript's precision).
fn ser_id<S: Serializer>(id: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(id)
}

fn ser_opt_id<S: Serializer>(id: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match id {
        Some(id) => s.collect_str(id),
        None => s.serialize_none(),
    }
}

fn ser_ids<S: Serializer>(ids: &[u64], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(ids.iter().map(|i| i.to_string()))
}

/// Formats epoch ms as RFC 3339 UTC with millisecond precision.
pub fn rfc3339_ms(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

#[derive(Serialize)]
struct JsonMessage<'a> {
    kind: MessageKind,
    body: &'a str,
    #[serde(serialize_with = "ser_ids")]
    mentions: &'a [u64],
}

#[derive(Serialize)]
struct JsonEvent<'a> {
    #[serde(rename = "type")]
    event_type: EventType,
    #[serde(serialize_with = "ser_id")]
    session_id: u64,
    session_kind: SessionKind,
    #[serde(serialize_with = "ser_id")]
    sender_id: u64,
    #[serde(serialize_with = "ser_opt_id", skip_serializing_if = "Option::is_none")]
    recipient_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_msg_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sent_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<JsonMessage<'a>>,
    #[serde(serialize_with = "ser_opt_id", skip_serializing_if = "Option::is_none")]
    target_id: Option<u64>,
    #[serde(serialize_with = "ser_opt_id", skip_serializing_if = "Option::is_none")]
    user_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    read_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    avatar_url: Option<&'a str>,
}

impl EventInput {
    /// The producer JSON of this event (ids as strings, `sent_at` as RFC 3339); parsing it
    /// back with [`parse_event`] gives an equal event.
    pub fn to_json(&self) -> String {
        let ev = JsonEvent {
            event_type: self.event_type,
            session_id: self.session_id,
            session_kind: self.session_kind,
            sender_id: self.sender_id,
            recipient_id: self.recipient_id,
            client_msg_id: self.client_msg_id.as_deref(),
            sent_at: self.sent_at_ms.map(rfc3339_ms),
            message: self.message.as_ref().map(|m| JsonMessage { kind: m.kind, body: &m.body, mentions: &m.mentions }),
            target_id: self.target_id,
            user_id: self.user_id,
            read_seq: self.read_seq,
            name: self.name.as_deref(),
            avatar_url: self.avatar_url.as_deref(),
        };
        // Serializing plain strings, numbers and enums into a String cannot fail.
        serde_json::to_string(&ev).unwrap_or_default()
    }
}
