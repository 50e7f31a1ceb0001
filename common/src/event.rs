//! The chat event model (DESIGN §4) and its producer-facing JSON.
//!
//! [`parse_body`] turns a request body (one object, an array, or NDJSON lines) into validated
//! [`EventInput`]s or a list of [`FieldError`]s naming the array index, the field path and a
//! machine-readable code. Parsing is two-step: a lenient serde pass that accepts any JSON type
//! for every field (so a wrong type is reported by field name, not as a serde message), then
//! validation. A body of plain valid events is first tried by a faster scanner (`fast`),
//! which builds the same raw events and answers "not sure" for anything else; the result is
//! always the serde pass's. Nothing here panics on input.
//!
//! [`ChatEvent`] is what ingest publishes on `chat.events`: the validated input plus the
//! snowflake `message_id` and `ingested_at` it assigned.
//!
//! Files: this one holds the model; `parse.rs` the body formats and [`parse_body`];
//! `lenient.rs` the serde types of the first pass; `validate.rs` the rules; `fast.rs` the
//! scanner; `decode.rs` the envelope's bincode decoding; `json.rs` the producer JSON.

use std::fmt;

use serde::{Deserialize, Serialize};

mod decode;
mod fast;
mod json;
mod lenient;
mod parse;
mod validate;

pub use json::rfc3339_ms;
pub use parse::{parse_body, parse_body_serde, parse_event, BodyFormat, FieldError, ParseLimits};

/// The JSON fields of an event (DESIGN §4); `message` holds `kind`, `body` and `mentions`.
pub const EVENT_FIELDS: [&str; 13] = [
    "type",
    "session_id",
    "session_kind",
    "sender_id",
    "recipient_id",
    "client_msg_id",
    "sent_at",
    "message",
    "target_id",
    "user_id",
    "read_seq",
    "name",
    "avatar_url",
];

/// Largest message body in bytes (DESIGN §4).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest `client_msg_id` in bytes (DESIGN §4).
pub const MAX_CLIENT_MSG_ID_BYTES: usize = 64;
/// Most mentions one message may carry; bounds the work a single event can cause.
pub const MAX_MENTIONS: usize = 1024;
/// Longest session or user `name` in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// Longest `avatar_url` in bytes.
pub const MAX_AVATAR_URL_BYTES: usize = 2048;

/// What happened in a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// A new message.
    Message,
    /// A new body for `target_id`.
    Edit,
    /// `target_id` is withdrawn.
    Recall,
    /// The sender has read up to `target_id`.
    Read,
    /// `user_id` joins the session.
    Join,
    /// `user_id` leaves the session.
    Leave,
    /// The session's `name` (the name or topic of a group or channel) is set.
    Session,
    /// `user_id`'s profile (`name`, `avatar_url`) is set. Routed by the user id: ingest
    /// publishes it with `session_id = user_id`, so one key owns the user's row.
    Profile,
}

/// The kind of a conversation.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, bincode::Encode, bincode::Decode,
)]
#[serde(rename_all = "snake_case")]
pub enum SessionKind {
    /// One-to-one: members are the sender and the recipient.
    Direct,
    /// A group with explicit membership (join/leave).
    Group,
    /// A public account or broadcast; stored apart (`chat:channel_messages`).
    Channel,
}

/// The kind of a message body.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, bincode::Encode, bincode::Decode,
)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// Plain text.
    Text,
    /// An image (body: a reference or caption).
    Image,
    /// An audio clip.
    Audio,
    /// A video.
    Video,
    /// A file.
    File,
    /// A rich card.
    Card,
    /// A system notice.
    System,
}

macro_rules! names {
    ($t:ty { $($v:ident => $s:literal),* $(,)? }) => {
        impl $t {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$t] = &[$(<$t>::$v),*];
            /// The lowercase wire name.
            pub const fn as_str(self) -> &'static str {
                match self { $(<$t>::$v => $s),* }
            }
            /// Parses the lowercase wire name.
            pub fn from_name(s: &str) -> Option<Self> {
                match s { $($s => Some(<$t>::$v),)* _ => None }
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
    };
}
names!(EventType { Message => "message", Edit => "edit", Recall => "recall", Read => "read", Join => "join", Leave => "leave", Session => "session", Profile => "profile" });
names!(SessionKind { Direct => "direct", Group => "group", Channel => "channel" });
names!(MessageKind { Text => "text", Image => "image", Audio => "audio", Video => "video", File => "file", Card => "card", System => "system" });

/// A message body with its kind and mentions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode)]
pub struct MessageContent {
    /// What the body is.
    pub kind: MessageKind,
    /// The body, at most [`MAX_BODY_BYTES`] of UTF-8.
    pub body: String,
    /// Mentioned user ids.
    pub mentions: Vec<u64>,
}

/// A validated producer event, before ingest assigns ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventInput {
    /// What happened.
    pub event_type: EventType,
    /// The conversation.
    pub session_id: u64,
    /// The conversation's kind.
    pub session_kind: SessionKind,
    /// Who did it (the reader for `read`, the actor for `join`/`leave`).
    pub sender_id: u64,
    /// The other party of a `direct` message.
    pub recipient_id: Option<u64>,
    /// The producer's idempotency key.
    pub client_msg_id: Option<String>,
    /// Event time in epoch ms, if the producer gave one.
    pub sent_at_ms: Option<i64>,
    /// The body, for `message` and `edit`.
    pub message: Option<MessageContent>,
    /// The message edited, recalled, or read up to.
    pub target_id: Option<u64>,
    /// The member joining or leaving; the user of a `profile`.
    pub user_id: Option<u64>,
    /// For `read`: the session `seq` read up to (alternative to `target_id`).
    pub read_seq: Option<u64>,
    /// For `session` and `profile`: the name.
    pub name: Option<String>,
    /// For `profile`: the avatar URL.
    pub avatar_url: Option<String>,
}

/// An event as published on `chat.events` (bincode, in the [`crate::envelope`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode)]
pub struct ChatEvent {
    /// Snowflake id assigned by ingest; for a `message` it is the message's id.
    pub message_id: u64,
    /// When ingest accepted it, epoch ms.
    pub ingested_at_ms: i64,
    /// Event time, epoch ms (as sent, or clamped to `ingested_at_ms` when too far ahead).
    pub sent_at_ms: i64,
    /// What happened.
    pub event_type: EventType,
    /// The conversation.
    pub session_id: u64,
    /// The conversation's kind.
    pub session_kind: SessionKind,
    /// Who did it.
    pub sender_id: u64,
    /// The other party of a `direct` message.
    pub recipient_id: Option<u64>,
    /// The producer's idempotency key.
    pub client_msg_id: Option<String>,
    /// The body, for `message` and `edit`.
    pub message: Option<MessageContent>,
    /// The message edited, recalled, or read up to.
    pub target_id: Option<u64>,
    /// The member joining or leaving; the user of a `profile`.
    pub user_id: Option<u64>,
    /// For `read`: the session `seq` read up to (alternative to `target_id`).
    pub read_seq: Option<u64>,
    /// For `session` and `profile`: the name.
    pub name: Option<String>,
    /// For `profile`: the avatar URL.
    pub avatar_url: Option<String>,
}

impl ChatEvent {
    /// An event with its required fields and none of the optional ones, ingested and sent
    /// at `at_ms` (tools, tests and benchmarks set the rest on it).
    pub fn bare(
        message_id: u64,
        at_ms: i64,
        event_type: EventType,
        session_id: u64,
        session_kind: SessionKind,
        sender_id: u64,
    ) -> Self {
        ChatEvent {
            message_id,
            ingested_at_ms: at_ms,
            sent_at_ms: at_ms,
            event_type,
            session_id,
            session_kind,
            sender_id,
            recipient_id: None,
            client_msg_id: None,
            message: None,
            target_id: None,
            user_id: None,
            read_seq: None,
            name: None,
            avatar_url: None,
        }
    }

    /// Stamps a validated input with its id and ingest time. A `sent_at` more than
    /// `max_skew_ms` ahead of `ingested_at_ms` is clamped to `ingested_at_ms`; a missing one
    /// defaults to it; past times are kept as sent.
    pub fn from_input(input: EventInput, message_id: u64, ingested_at_ms: i64, max_skew_ms: i64) -> Self {
        let sent_at_ms = match input.sent_at_ms {
            Some(t) if t > ingested_at_ms.saturating_add(max_skew_ms) => ingested_at_ms,
            Some(t) => t,
            None => ingested_at_ms,
        };
        ChatEvent {
            message_id,
            ingested_at_ms,
            sent_at_ms,
            event_type: input.event_type,
            session_id: input.session_id,
            session_kind: input.session_kind,
            sender_id: input.sender_id,
            recipient_id: input.recipient_id,
            client_msg_id: input.client_msg_id,
            message: input.message,
            target_id: input.target_id,
            user_id: input.user_id,
            read_seq: input.read_seq,
            name: input.name,
            avatar_url: input.avatar_url,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
