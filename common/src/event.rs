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

use std::borrow::Cow;
use std::fmt;

use bincode::de::read::Reader;
use bincode::de::Decoder;
use bincode::error::DecodeError;
use bincode::Decode;

use crate::envelope::Version;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

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

// `Decode` is written out for the two event structs (field order = the derived `Encode`)
// so their strings are copied straight from the input slice: bincode's own `String`
// decode zero-fills a buffer first (about 15% of the envelope round trip in a profile).

/// Reads a length-prefixed UTF-8 string, copying from the input slice when the reader
/// exposes it. Lengths are claimed against the decoder's limit before anything is allocated.
fn decode_string<D: Decoder>(decoder: &mut D) -> Result<String, DecodeError> {
    let len = u64::decode(decoder)?;
    let len = usize::try_from(len).map_err(|_| DecodeError::OutsideUsizeRange(len))?;
    decoder.claim_container_read::<u8>(len)?;
    let reader = decoder.reader();
    if let Some(bytes) = reader.peek_read(len) {
        let text = std::str::from_utf8(bytes).map_err(|inner| DecodeError::Utf8 { inner })?.to_owned();
        reader.consume(len);
        return Ok(text);
    }
    let mut bytes = vec![0u8; len];
    reader.read(&mut bytes)?;
    String::from_utf8(bytes).map_err(|e| DecodeError::Utf8 { inner: e.utf8_error() })
}

impl<Context> Decode<Context> for MessageContent {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        Ok(MessageContent {
            kind: Decode::decode(decoder)?,
            body: decode_string(decoder)?,
            mentions: Decode::decode(decoder)?,
        })
    }
}
bincode::impl_borrow_decode!(MessageContent);

impl Decode<Version> for ChatEvent {
    fn decode<D: Decoder<Context = Version>>(decoder: &mut D) -> Result<Self, DecodeError> {
        // schema version 3 added `read_seq`, `name` and `avatar_url`; records of versions 1
        // and 2 (written before) end after `user_id`
        let tail = decoder.context().0 >= 3;
        Ok(ChatEvent {
            message_id: Decode::decode(decoder)?,
            ingested_at_ms: Decode::decode(decoder)?,
            sent_at_ms: Decode::decode(decoder)?,
            event_type: Decode::decode(decoder)?,
            session_id: Decode::decode(decoder)?,
            session_kind: Decode::decode(decoder)?,
            sender_id: Decode::decode(decoder)?,
            recipient_id: Decode::decode(decoder)?,
            client_msg_id: decode_opt_string(decoder)?,
            message: Decode::decode(decoder)?,
            target_id: Decode::decode(decoder)?,
            user_id: Decode::decode(decoder)?,
            read_seq: if tail { Decode::decode(decoder)? } else { None },
            name: if tail { decode_opt_string(decoder)? } else { None },
            avatar_url: if tail { decode_opt_string(decoder)? } else { None },
        })
    }
}
bincode::impl_borrow_decode_with_context!(ChatEvent, Version);

/// An `Option<String>` (bincode's tag byte, then the string).
fn decode_opt_string<D: Decoder>(decoder: &mut D) -> Result<Option<String>, DecodeError> {
    match u8::decode(decoder)? {
        0 => Ok(None),
        1 => Ok(Some(decode_string(decoder)?)),
        found => Err(DecodeError::UnexpectedVariant {
            type_name: "Option<String>",
            allowed: &bincode::error::AllowedEnumVariants::Range { min: 0, max: 1 },
            found: found.into(),
        }),
    }
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

/// One validation problem, as returned to the producer in a 400 body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Position in the request (array element or NDJSON line, from 0); absent for a body
    /// that is not an event at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// Field path, e.g. `message.body`; empty for the event itself.
    pub field: String,
    /// Machine-readable code: `invalid_json`, `invalid_type`, `missing`, `invalid_value`,
    /// `out_of_range`, `too_long`, `too_many`, `empty`.
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
}

impl FieldError {
    fn new(index: Option<usize>, field: &str, code: &'static str, message: impl Into<String>) -> Self {
        FieldError { index, field: field.to_owned(), code, message: message.into() }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.index {
            Some(i) => write!(f, "[{i}].{}: {} ({})", self.field, self.message, self.code),
            None => write!(f, "{}: {} ({})", self.field, self.message, self.code),
        }
    }
}

/// How a request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// One JSON object or a JSON array of objects.
    Json,
    /// One JSON object per line (`application/x-ndjson`).
    Ndjson,
}

/// Limits applied while parsing one request.
#[derive(Debug, Clone, Copy)]
pub struct ParseLimits {
    /// Most events in one request.
    pub max_events: usize,
    /// Most errors reported back.
    pub max_errors: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        ParseLimits { max_events: 1000, max_errors: 100 }
    }
}

mod fast;

/// Parses and validates a whole request body. Either every event is valid (`Ok`) or the
/// errors of all invalid events, capped at `limits.max_errors`, are returned (`Err`).
///
/// A body of plain valid events is read by a scanner (`fast`); anything it is not sure
/// of, and every invalid body, goes through [`parse_body_serde`], so the result is always
/// the one `parse_body_serde` gives.
pub fn parse_body(body: &[u8], format: BodyFormat, limits: ParseLimits) -> Result<Vec<EventInput>, Vec<FieldError>> {
    if let Some(events) = fast_path(body, format, limits) {
        return Ok(events);
    }
    parse_body_serde(body, format, limits)
}

/// The events of a body the scanner could read and that are all valid.
fn fast_path(body: &[u8], format: BodyFormat, limits: ParseLimits) -> Option<Vec<EventInput>> {
    let events = fast::parse(body, format, limits.max_events, |i, raw| raw.validate(Some(i)).ok())?;
    (!events.is_empty()).then_some(events)
}

/// [`parse_body`] with serde_json alone: the reference the fast path is tested against, and
/// the path of every body it does not read.
pub fn parse_body_serde(
    body: &[u8],
    format: BodyFormat,
    limits: ParseLimits,
) -> Result<Vec<EventInput>, Vec<FieldError>> {
    let items: Vec<(Option<usize>, Result<RawItem<'_>, FieldError>)> = match format {
        BodyFormat::Json => {
            let first = body.iter().find(|b| !b.is_ascii_whitespace()).copied();
            if first == Some(b'[') {
                match serde_json::from_slice::<Vec<RawItem<'_>>>(body) {
                    Ok(v) => v.into_iter().enumerate().map(|(i, r)| (Some(i), Ok(r))).collect(),
                    Err(e) => return Err(vec![json_error(None, &e)]),
                }
            } else {
                match serde_json::from_slice::<RawItem<'_>>(body) {
                    Ok(r) => vec![(Some(0), Ok(r))],
                    Err(e) => return Err(vec![json_error(None, &e)]),
                }
            }
        }
        BodyFormat::Ndjson => body
            .split(|b| *b == b'\n')
            .filter(|line| line.iter().any(|b| !b.is_ascii_whitespace()))
            .enumerate()
            .map(|(i, line)| {
                (Some(i), serde_json::from_slice::<RawItem<'_>>(line).map_err(|e| json_error(Some(i), &e)))
            })
            .collect(),
    };
    if items.is_empty() {
        return Err(vec![FieldError::new(None, "", "empty", "the request holds no events")]);
    }
    if items.len() > limits.max_events {
        return Err(vec![FieldError::new(
            None,
            "",
            "too_many",
            format!("{} events in one request; at most {} are allowed", items.len(), limits.max_events),
        )]);
    }
    let mut events = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for (index, item) in items {
        let result = item.map_err(|e| vec![e]).and_then(|raw| raw.validate(index));
        match result {
            Ok(ev) => events.push(ev),
            Err(errs) => {
                for e in errs {
                    if errors.len() < limits.max_errors {
                        errors.push(e);
                    }
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(events)
    } else {
        Err(errors)
    }
}

/// Parses and validates one JSON object (convenience for tests and tools).
pub fn parse_event(json: &[u8]) -> Result<EventInput, Vec<FieldError>> {
    match serde_json::from_slice::<RawItem<'_>>(json) {
        Ok(raw) => raw.validate(None),
        Err(e) => Err(vec![json_error(None, &e)]),
    }
}

fn json_error(index: Option<usize>, e: &serde_json::Error) -> FieldError {
    FieldError::new(
        index,
        "",
        "invalid_json",
        format!("invalid JSON at line {} column {}: {}", e.line(), e.column(), e),
    )
}

/// A JSON value of any type, kept cheaply (strings borrowed when unescaped).
#[derive(Debug)]
enum Loose<'a> {
    Str(Cow<'a, str>),
    U64(u64),
    Negative,
    F64(f64),
    Bool,
    Null,
    Array,
    Object,
}

impl Loose<'_> {
    fn type_name(&self) -> &'static str {
        match self {
            Loose::Str(_) => "a string",
            Loose::U64(_) | Loose::Negative | Loose::F64(_) => "a number",
            Loose::Bool => "a boolean",
            Loose::Null => "null",
            Loose::Array => "an array",
            Loose::Object => "an object",
        }
    }
}

struct LooseVisitor;

impl<'de> Visitor<'de> for LooseVisitor {
    type Value = Loose<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Loose::Bool)
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Loose::U64(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(if v >= 0 { Loose::U64(v as u64) } else { Loose::Negative })
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Loose::F64(v))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Loose::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Loose::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Loose::Str(Cow::Owned(v)))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Loose::Null)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Loose::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Loose::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Loose::Object)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Loose<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LooseVisitor)
    }
}

/// Visitor methods that record a scalar (or null) as `$wrap(Loose::…)`: the shared part of
/// the "expected X, got Y" wrappers below.
macro_rules! other_scalars {
    ($wrap:path) => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($wrap(Loose::Bool))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
            Ok($wrap(Loose::U64(v)))
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($wrap(Loose::Negative))
        }
        fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
            Ok($wrap(Loose::F64(v)))
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok($wrap(Loose::Str(Cow::Borrowed(""))))
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($wrap(Loose::Null))
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok($wrap(Loose::Null))
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    };
}

/// A value that must be an object, or the type it was instead.
#[derive(Debug)]
enum ObjectOr<'a, T> {
    Object(T),
    Other(Loose<'a>),
}

impl<'de: 'a, 'a, T: Deserialize<'de>> Deserialize<'de> for ObjectOr<'a, T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = ObjectOr<'de, T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(ObjectOr::Object)
            }
            other_scalars!(ObjectOr::Other);
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(ObjectOr::Other(Loose::Array))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData)).map(|v| match v {
            ObjectOr::Object(t) => ObjectOr::Object(t),
            ObjectOr::Other(l) => ObjectOr::Other(l),
        })
    }
}

/// A value that must be an array of scalars, or the type it was instead.
#[derive(Debug)]
enum ArrayOr<'a> {
    Array(Vec<Loose<'a>>),
    Other(Loose<'a>),
}

impl<'de: 'a, 'a> Deserialize<'de> for ArrayOr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ArrayOr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element::<Loose<'de>>()? {
                    // Keep a bounded amount; the count is still checked below.
                    if out.len() <= MAX_MENTIONS {
                        out.push(v);
                    }
                }
                Ok(ArrayOr::Array(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                LooseVisitor.visit_map(map).map(ArrayOr::Other)
            }
            other_scalars!(ArrayOr::Other);
        }
        d.deserialize_any(V).map(|v| match v {
            ArrayOr::Array(a) => ArrayOr::Array(a),
            ArrayOr::Other(l) => ArrayOr::Other(l),
        })
    }
}

#[derive(Debug, Default, Deserialize)]
struct RawMessage<'a> {
    #[serde(borrow)]
    kind: Option<Loose<'a>>,
    #[serde(borrow)]
    body: Option<Loose<'a>>,
    #[serde(borrow)]
    mentions: Option<ArrayOr<'a>>,
}

#[derive(Debug, Default, Deserialize)]
struct RawEvent<'a> {
    #[serde(borrow, rename = "type")]
    event_type: Option<Loose<'a>>,
    #[serde(borrow)]
    session_id: Option<Loose<'a>>,
    #[serde(borrow)]
    session_kind: Option<Loose<'a>>,
    #[serde(borrow)]
    sender_id: Option<Loose<'a>>,
    #[serde(borrow)]
    recipient_id: Option<Loose<'a>>,
    #[serde(borrow)]
    client_msg_id: Option<Loose<'a>>,
    #[serde(borrow)]
    sent_at: Option<Loose<'a>>,
    #[serde(borrow)]
    message: Option<ObjectOr<'a, RawMessage<'a>>>,
    #[serde(borrow)]
    target_id: Option<Loose<'a>>,
    #[serde(borrow)]
    user_id: Option<Loose<'a>>,
    #[serde(borrow)]
    read_seq: Option<Loose<'a>>,
    #[serde(borrow)]
    name: Option<Loose<'a>>,
    #[serde(borrow)]
    avatar_url: Option<Loose<'a>>,
}

type RawItem<'a> = ObjectOr<'a, RawEvent<'a>>;

/// Collects the errors of one event.
struct Check {
    index: Option<usize>,
    errors: Vec<FieldError>,
}

impl Check {
    fn err(&mut self, field: &str, code: &'static str, message: impl Into<String>) {
        self.errors.push(FieldError::new(self.index, field, code, message));
    }

    /// Present (not null) value of a field, or None.
    fn present<'v, 'a>(v: &'v Option<Loose<'a>>) -> Option<&'v Loose<'a>> {
        match v {
            None | Some(Loose::Null) => None,
            Some(v) => Some(v),
        }
    }

    fn id(&mut self, field: &str, v: &Option<Loose<'_>>, required: bool) -> Option<u64> {
        self.id_named(|| Cow::Borrowed(field), v, required)
    }

    /// [`Check::id`] with the field's name made only when there is an error (a mention's
    /// name is formatted from its position).
    fn id_named<'f>(&mut self, name: impl Fn() -> Cow<'f, str>, v: &Option<Loose<'_>>, required: bool) -> Option<u64> {
        let Some(v) = Self::present(v) else {
            if required {
                let field = name();
                self.err(&field, "missing", format!("{field} is required"));
            }
            return None;
        };
        let parsed = match v {
            Loose::U64(n) => Ok(*n),
            Loose::Negative => Err(("out_of_range", "must be a positive 64-bit id".to_owned())),
            Loose::F64(f) if f.fract() == 0.0 && f.abs() >= u64::MAX as f64 => {
                Err(("out_of_range", "exceeds the 64-bit id range".to_owned()))
            }
            Loose::F64(_) => Err(("invalid_type", "must be an integer id".to_owned())),
            Loose::Str(s) => parse_decimal_id(s),
            other => Err(("invalid_type", format!("must be a number or a decimal string, not {}", other.type_name()))),
        };
        match parsed {
            Ok(0) => {
                let field = name();
                self.err(&field, "out_of_range", format!("{field} must be a positive 64-bit id"));
                None
            }
            Ok(n) => Some(n),
            Err((code, msg)) => {
                let field = name();
                self.err(&field, code, format!("{field} {msg}"));
                None
            }
        }
    }

    /// An optional (or `required`) string of at most `max` bytes.
    fn text(&mut self, field: &str, v: &Option<Loose<'_>>, required: bool, max: usize) -> Option<String> {
        match Self::present(v) {
            None => {
                if required {
                    self.err(field, "missing", format!("{field} is required"));
                }
                None
            }
            Some(Loose::Str(s)) if s.len() > max => {
                self.err(field, "too_long", format!("{field} is longer than {max} bytes"));
                None
            }
            Some(Loose::Str(s)) => Some(s.clone().into_owned()),
            Some(other) => {
                self.err(field, "invalid_type", format!("{field} must be a string, not {}", other.type_name()));
                None
            }
        }
    }

    fn name<T>(
        &mut self,
        field: &str,
        v: &Option<Loose<'_>>,
        parse: fn(&str) -> Option<T>,
        allowed: &str,
    ) -> Option<T> {
        match Self::present(v) {
            None => {
                self.err(field, "missing", format!("{field} is required"));
                None
            }
            Some(Loose::Str(s)) => {
                let r = parse(s);
                if r.is_none() {
                    self.err(field, "invalid_value", format!("{field} must be one of {allowed}"));
                }
                r
            }
            Some(other) => {
                self.err(field, "invalid_type", format!("{field} must be a string, not {}", other.type_name()));
                None
            }
        }
    }
}

fn parse_decimal_id(s: &str) -> Result<u64, (&'static str, String)> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(("invalid_value", "must be a decimal string of digits".to_owned()));
    }
    s.parse::<u64>().map_err(|_| ("out_of_range", "exceeds the 64-bit id range".to_owned()))
}

/// Parses `sent_at`: RFC 3339 text or epoch milliseconds.
fn parse_time(c: &mut Check, v: &Option<Loose<'_>>) -> Option<i64> {
    const FIELD: &str = "sent_at";
    // Epoch ms between 1970 and year 9999 (what RFC 3339 can also express).
    const MAX_MS: u64 = 253_402_300_799_999;
    match Check::present(v)? {
        Loose::U64(ms) if *ms <= MAX_MS => Some(*ms as i64),
        Loose::U64(_) | Loose::Negative => {
            c.err(FIELD, "out_of_range", "sent_at epoch milliseconds must be between 1970 and 9999");
            None
        }
        Loose::Str(s) => match DateTime::parse_from_rfc3339(s) {
            Ok(t) if t.timestamp_millis() >= 0 => Some(t.timestamp_millis()),
            Ok(_) => {
                c.err(FIELD, "out_of_range", "sent_at must not be before 1970");
                None
            }
            Err(e) => {
                c.err(FIELD, "invalid_value", format!("sent_at is not RFC 3339: {e}"));
                None
            }
        },
        other => {
            c.err(
                FIELD,
                "invalid_type",
                format!("sent_at must be RFC 3339 text or epoch ms, not {}", other.type_name()),
            );
            None
        }
    }
}

impl ObjectOr<'_, RawEvent<'_>> {
    fn validate(self, index: Option<usize>) -> Result<EventInput, Vec<FieldError>> {
        match self {
            ObjectOr::Object(raw) => raw.validate(index),
            ObjectOr::Other(v) => Err(vec![FieldError::new(
                index,
                "",
                "invalid_type",
                format!("an event must be a JSON object, not {}", v.type_name()),
            )]),
        }
    }
}

impl RawEvent<'_> {
    fn validate(self, index: Option<usize>) -> Result<EventInput, Vec<FieldError>> {
        let mut c = Check { index, errors: Vec::new() };
        let event_type = c.name(
            "type",
            &self.event_type,
            EventType::from_name,
            "message, edit, recall, read, join, leave, session, profile",
        );
        let is_profile = event_type == Some(EventType::Profile);
        // a profile is about a user, not a session: it is routed by `user_id`
        let needs_user = matches!(event_type, Some(EventType::Join | EventType::Leave | EventType::Profile));
        let user_id = c.id("user_id", &self.user_id, needs_user);
        let session_id = c.id("session_id", &self.session_id, !is_profile);
        let session_kind = if is_profile && Check::present(&self.session_kind).is_none() {
            Some(SessionKind::Direct)
        } else {
            c.name("session_kind", &self.session_kind, SessionKind::from_name, "direct, group, channel")
        };
        let sender_id = c.id("sender_id", &self.sender_id, !is_profile);
        let needs_recipient = event_type == Some(EventType::Message) && session_kind == Some(SessionKind::Direct);
        let recipient_id = c.id("recipient_id", &self.recipient_id, needs_recipient);
        let read_seq = c.id("read_seq", &self.read_seq, false);
        let needs_target = matches!(event_type, Some(EventType::Edit | EventType::Recall))
            || (event_type == Some(EventType::Read) && read_seq.is_none());
        let target_id = c.id("target_id", &self.target_id, needs_target);
        let name = c.text("name", &self.name, event_type == Some(EventType::Session), MAX_NAME_BYTES);
        let avatar_url = c.text("avatar_url", &self.avatar_url, false, MAX_AVATAR_URL_BYTES);
        if is_profile && Check::present(&self.name).is_none() && Check::present(&self.avatar_url).is_none() {
            c.err("name", "missing", "a profile event needs name or avatar_url");
        }
        let (session_id, sender_id) = if is_profile { (user_id, user_id) } else { (session_id, sender_id) };
        let sent_at_ms = parse_time(&mut c, &self.sent_at);
        let client_msg_id = match Check::present(&self.client_msg_id) {
            None => None,
            Some(Loose::Str(s)) if s.is_empty() => {
                c.err("client_msg_id", "empty", "client_msg_id must not be empty");
                None
            }
            Some(Loose::Str(s)) if s.len() > MAX_CLIENT_MSG_ID_BYTES => {
                c.err(
                    "client_msg_id",
                    "too_long",
                    format!("client_msg_id is longer than {MAX_CLIENT_MSG_ID_BYTES} bytes"),
                );
                None
            }
            Some(Loose::Str(s)) => Some(s.clone().into_owned()),
            Some(other) => {
                c.err(
                    "client_msg_id",
                    "invalid_type",
                    format!("client_msg_id must be a string, not {}", other.type_name()),
                );
                None
            }
        };
        let needs_message = matches!(event_type, Some(EventType::Message | EventType::Edit));
        let message = match self.message {
            None | Some(ObjectOr::Other(Loose::Null)) => {
                if needs_message {
                    c.err("message", "missing", "message is required for message and edit events");
                }
                None
            }
            Some(ObjectOr::Other(other)) => {
                c.err("message", "invalid_type", format!("message must be an object, not {}", other.type_name()));
                None
            }
            Some(ObjectOr::Object(m)) => validate_message(&mut c, m),
        };
        if !c.errors.is_empty() {
            return Err(c.errors);
        }
        match (event_type, session_id, session_kind, sender_id) {
            (Some(event_type), Some(session_id), Some(session_kind), Some(sender_id)) => Ok(EventInput {
                event_type,
                session_id,
                session_kind,
                sender_id,
                recipient_id,
                client_msg_id,
                sent_at_ms,
                message: if needs_message { message } else { None },
                target_id,
                user_id,
                read_seq,
                name,
                avatar_url,
            }),
            // Unreachable in practice: a missing required field recorded an error above.
            _ => Err(vec![FieldError::new(index, "", "invalid_value", "incomplete event")]),
        }
    }
}

fn validate_message(c: &mut Check, m: RawMessage<'_>) -> Option<MessageContent> {
    let kind = c.name("message.kind", &m.kind, MessageKind::from_name, "text, image, audio, video, file, card, system");
    let body = match Check::present(&m.body) {
        None => {
            c.err("message.body", "missing", "message.body is required");
            None
        }
        Some(Loose::Str(s)) if s.len() > MAX_BODY_BYTES => {
            c.err(
                "message.body",
                "too_long",
                format!("message.body is {} bytes; at most {MAX_BODY_BYTES} are allowed", s.len()),
            );
            None
        }
        Some(Loose::Str(s)) => Some(s.clone().into_owned()),
        Some(other) => {
            c.err("message.body", "invalid_type", format!("message.body must be a string, not {}", other.type_name()));
            None
        }
    };
    let mut mentions = Vec::new();
    match m.mentions {
        None | Some(ArrayOr::Other(Loose::Null)) => {}
        Some(ArrayOr::Other(other)) => {
            c.err(
                "message.mentions",
                "invalid_type",
                format!("message.mentions must be an array, not {}", other.type_name()),
            );
        }
        Some(ArrayOr::Array(items)) if items.len() > MAX_MENTIONS => {
            c.err("message.mentions", "too_many", format!("at most {MAX_MENTIONS} mentions are allowed"));
        }
        Some(ArrayOr::Array(items)) => {
            for (i, item) in items.into_iter().enumerate() {
                if let Some(id) = c.id_named(|| Cow::Owned(format!("message.mentions[{i}]")), &Some(item), true) {
                    mentions.push(id);
                }
            }
        }
    }
    Some(MessageContent { kind: kind?, body: body?, mentions })
}

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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn one(json: &str) -> Result<EventInput, Vec<FieldError>> {
        parse_event(json.as_bytes())
    }

    #[test]
    fn accepts_ids_as_numbers_and_strings() {
        let a = one(r#"{"type":"message","session_id":"18446744073709551615","session_kind":"group","sender_id":7,"message":{"kind":"text","body":"hi"}}"#).unwrap();
        assert_eq!(a.session_id, u64::MAX);
        assert_eq!(a.sender_id, 7);
        assert_eq!(a.sent_at_ms, None);
    }

    #[test]
    fn rejects_out_of_range_id_naming_the_field() {
        let e = one(
            r#"{"type":"read","session_id":18446744073709551616,"session_kind":"group","sender_id":1,"target_id":"1"}"#,
        )
        .unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].field.as_str(), e[0].code), ("session_id", "out_of_range"));
        let e = one(r#"{"type":"read","session_id":"18446744073709551616","session_kind":"group","sender_id":1,"target_id":"1"}"#).unwrap_err();
        assert_eq!((e[0].field.as_str(), e[0].code), ("session_id", "out_of_range"));
        let e =
            one(r#"{"type":"read","session_id":-3,"session_kind":"group","sender_id":1,"target_id":"1"}"#).unwrap_err();
        assert_eq!((e[0].field.as_str(), e[0].code), ("session_id", "out_of_range"));
    }

    #[test]
    fn reports_every_bad_field_with_array_index() {
        let body = br#"[{"type":"message","session_id":1,"session_kind":"direct","sender_id":2,"recipient_id":3,"message":{"kind":"text","body":"ok"}},
                        {"type":"message","session_id":true,"session_kind":"direct","sender_id":2,"message":{"kind":"gif","body":5}}]"#;
        let errs = parse_body(body, BodyFormat::Json, ParseLimits::default()).unwrap_err();
        let got: Vec<_> = errs.iter().map(|e| (e.index, e.field.as_str(), e.code)).collect();
        assert_eq!(
            got,
            vec![
                (Some(1), "session_id", "invalid_type"),
                (Some(1), "recipient_id", "missing"),
                (Some(1), "message.kind", "invalid_value"),
                (Some(1), "message.body", "invalid_type"),
            ]
        );
    }

    #[test]
    fn ndjson_lines_are_indexed_and_blank_lines_skipped() {
        let body = b"{\"type\":\"join\",\"session_id\":1,\"session_kind\":\"group\",\"sender_id\":2,\"user_id\":2}\n\n{\"type\":\"leave\"}\n";
        let errs = parse_body(body, BodyFormat::Ndjson, ParseLimits::default()).unwrap_err();
        assert!(errs.iter().all(|e| e.index == Some(1)));
        assert!(errs.iter().any(|e| e.field == "user_id" && e.code == "missing"));
    }

    #[test]
    fn sent_at_accepts_rfc3339_and_epoch_ms() {
        let a = one(r#"{"type":"read","session_id":1,"session_kind":"group","sender_id":1,"target_id":1,"sent_at":"2026-01-02T03:04:05.678Z"}"#).unwrap();
        let b = one(r#"{"type":"read","session_id":1,"session_kind":"group","sender_id":1,"target_id":1,"sent_at":1767323045678}"#).unwrap();
        assert_eq!(a.sent_at_ms, Some(1_767_323_045_678));
        assert_eq!(a.sent_at_ms, b.sent_at_ms);
        let e = one(r#"{"type":"read","session_id":1,"session_kind":"group","sender_id":1,"target_id":1,"sent_at":"yesterday"}"#).unwrap_err();
        assert_eq!(e[0].field, "sent_at");
    }

    #[test]
    fn too_many_events_and_garbage_are_rejected() {
        let one_ev = r#"{"type":"read","session_id":1,"session_kind":"group","sender_id":1,"target_id":1}"#;
        let body = format!("[{}]", [one_ev; 3].join(","));
        let e =
            parse_body(body.as_bytes(), BodyFormat::Json, ParseLimits { max_events: 2, max_errors: 10 }).unwrap_err();
        assert_eq!(e[0].code, "too_many");
        let e = parse_body(b"{nope", BodyFormat::Json, ParseLimits::default()).unwrap_err();
        assert_eq!(e[0].code, "invalid_json");
        let e = parse_body(b"[1,\"x\"]", BodyFormat::Json, ParseLimits::default()).unwrap_err();
        assert_eq!(e.iter().map(|e| e.index).collect::<Vec<_>>(), vec![Some(0), Some(1)]);
        let e = parse_body(b"[]", BodyFormat::Json, ParseLimits::default()).unwrap_err();
        assert_eq!(e[0].code, "empty");
    }

    #[test]
    fn clamps_future_sent_at_and_keeps_past() {
        let mut input = one(
            r#"{"type":"read","session_id":1,"session_kind":"group","sender_id":1,"target_id":1,"sent_at":5000000}"#,
        )
        .unwrap();
        let ev = ChatEvent::from_input(input.clone(), 1, 1_000_000, 60_000);
        assert_eq!(ev.sent_at_ms, 1_000_000);
        input.sent_at_ms = Some(10);
        assert_eq!(ChatEvent::from_input(input, 1, 1_000_000, 60_000).sent_at_ms, 10);
    }

    pub(crate) fn arb_input() -> impl Strategy<Value = EventInput> {
        let id = 1..=u64::MAX;
        (
            prop::sample::select(EventType::ALL),
            id.clone(),
            prop::sample::select(SessionKind::ALL),
            id.clone(),
            prop::option::of(id.clone()),
            prop::option::of("[a-zA-Z0-9\\-_ ]{1,64}"),
            prop::option::of(0i64..253_402_300_799_999),
            (prop::sample::select(MessageKind::ALL), ".{0,200}", prop::collection::vec(id.clone(), 0..4)),
            prop::option::of(id.clone()),
            (
                prop::option::of(id.clone()),
                prop::option::of(id),
                prop::option::of("[a-zA-Z0-9 ]{1,40}"),
                prop::option::of("https://[a-z]{1,20}\\.example/[a-z0-9]{1,20}"),
            ),
        )
            .prop_map(
                |(
                    t,
                    session_id,
                    sk,
                    sender_id,
                    recipient,
                    cmid,
                    sent,
                    (mk, body, mentions),
                    target,
                    (user, read_seq, name, avatar_url),
                )| {
                    let user = if matches!(t, EventType::Join | EventType::Leave | EventType::Profile) {
                        Some(user.unwrap_or(1))
                    } else {
                        user
                    };
                    // a profile is routed by its user: session and sender are the user
                    let (session_id, sender_id) = match (t, user) {
                        (EventType::Profile, Some(u)) => (u, u),
                        _ => (session_id, sender_id),
                    };
                    let name = match t {
                        EventType::Session => Some(name.unwrap_or_else(|| "general".into())),
                        EventType::Profile if avatar_url.is_none() => Some(name.unwrap_or_else(|| "ann".into())),
                        _ => name,
                    };
                    let recipient_id = if t == EventType::Message && sk == SessionKind::Direct {
                        Some(recipient.unwrap_or(9))
                    } else {
                        recipient
                    };
                    EventInput {
                        event_type: t,
                        session_id,
                        session_kind: sk,
                        sender_id,
                        recipient_id,
                        client_msg_id: cmid,
                        sent_at_ms: sent,
                        message: matches!(t, EventType::Message | EventType::Edit).then(|| MessageContent {
                            kind: mk,
                            body,
                            mentions,
                        }),
                        target_id: if matches!(t, EventType::Edit | EventType::Recall | EventType::Read) {
                            Some(target.unwrap_or(1))
                        } else {
                            target
                        },
                        user_id: user,
                        read_seq,
                        name,
                        avatar_url,
                    }
                },
            )
    }

    /// JSON text of one field value: the plain forms the fast path reads and odd ones it
    /// leaves to serde.
    fn arb_value() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "[0-9]{1,21}",
            4 => "\"[a-z0-9 _.:-]{0,12}\"",
            2 => prop::sample::select(vec![
                "\"message\"", "\"edit\"", "\"recall\"", "\"read\"", "\"join\"", "\"leave\"", "\"direct\"",
                "\"group\"", "\"channel\"", "\"text\"", "\"card\"", "\"2026-01-02T03:04:05.678Z\"",
            ])
            .prop_map(str::to_owned),
            2 => prop::sample::select(vec![
                "true", "false", "null", "-1", "-0", "1.5", "1e3", "0.0", "0", "00", "01", "18446744073709551615",
                "18446744073709551616", "\"a\\\"b\"", "\"\\u0041\"", "\"\u{e9}t\u{e9}\"", "\"tab\there\"", "[]",
                "{}", "[1,2]", "{\"a\":1}", "nul", "tru", "\"\"", "\"unterminated",
            ])
            .prop_map(str::to_owned),
        ]
    }

    fn arb_ws() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["", "", "", " ", "\n", "\t", "\r\n", "\u{c}"])
    }

    /// An object of random keys (mostly the right ones, sometimes repeated) and values.
    fn arb_fields(keys: Vec<&'static str>, value: BoxedStrategy<String>) -> impl Strategy<Value = String> {
        let key = prop_oneof![
            8 => prop::sample::select(keys).prop_map(|k| format!("\"{k}\"")),
            1 => prop::sample::select(vec!["\"x\"", "\"Type\"", "\"t\\u0079pe\"", "\"kind\"", "\"\""])
                .prop_map(str::to_owned),
        ];
        prop::collection::vec((key, value, arb_ws(), arb_ws()), 0..12).prop_map(|fields| {
            let fields: Vec<String> = fields.iter().map(|(k, v, w1, w2)| format!("{w1}{k}{w2}:{w1}{v}{w2}")).collect();
            format!("{{{}}}", fields.join(","))
        })
    }

    fn arb_object() -> impl Strategy<Value = String> {
        let ids = prop::collection::vec(arb_value(), 0..4).prop_map(|v| format!("[{}]", v.join(",")));
        let message_value = prop_oneof![4 => arb_value(), 1 => ids].boxed();
        let message = arb_fields(vec!["kind", "body", "mentions"], message_value);
        let value = prop_oneof![6 => arb_value(), 1 => message].boxed();
        arb_fields(EVENT_FIELDS.to_vec(), value)
    }

    /// Valid events whose strings need no escape (what the fast path reads).
    fn arb_plain_input() -> impl Strategy<Value = EventInput> {
        (arb_input(), "[^\"\\\\\\x00-\\x1f]{0,100}").prop_map(|(mut input, body)| {
            if let Some(m) = input.message.as_mut() {
                m.body = body;
            }
            input
        })
    }

    /// A plain valid event with one change: an odd value in one field (or inside `message`),
    /// a repeated key, or an unknown key.
    fn arb_mutated_event() -> impl Strategy<Value = String> {
        let change = (0..4u8, any::<prop::sample::Index>(), arb_value(), arb_ws());
        (arb_plain_input(), change).prop_map(|(input, (how, at, value, ws))| {
            let object = |fields: &[(String, String)]| {
                let fields: Vec<String> = fields.iter().map(|(k, v)| format!("{ws}\"{k}\"{ws}:{ws}{v}")).collect();
                format!("{{{}}}", fields.join(","))
            };
            let fields_of = |v: serde_json::Value| -> Vec<(String, String)> {
                v.as_object().into_iter().flatten().map(|(k, v)| (k.clone(), v.to_string())).collect()
            };
            let mut fields = fields_of(serde_json::from_str(&input.to_json()).unwrap());
            let i = at.index(fields.len());
            match how {
                0 => fields[i].1 = value,
                1 => fields.push(fields[i].clone()),
                2 => fields.insert(i, ("x".to_owned(), value)),
                _ => {
                    if let Some(m) = fields.iter_mut().find(|(k, _)| k == "message") {
                        let mut inner = fields_of(serde_json::from_str(&m.1).unwrap());
                        let j = at.index(inner.len());
                        inner[j].1 = if inner[j].0 == "mentions" { format!("[{value}]") } else { value };
                        m.1 = object(&inner);
                    }
                }
            }
            object(&fields)
        })
    }

    /// Request bodies: valid events (as producers write them) and random objects, as one
    /// object, an array or NDJSON lines.
    fn arb_body() -> impl Strategy<Value = (Vec<u8>, BodyFormat, usize)> {
        let object = prop_oneof![
            2 => arb_plain_input().prop_map(|i| i.to_json()),
            1 => arb_input().prop_map(|i| i.to_json()),
            2 => arb_mutated_event(),
            1 => arb_object(),
        ];
        (prop::collection::vec(object, 1..4), 0..3u8, arb_ws(), 1..5usize).prop_map(|(objects, form, ws, max)| {
            match form {
                0 => (format!("{ws}{}{ws}", objects[0]).into_bytes(), BodyFormat::Json, max),
                1 => (format!("{ws}[{}]{ws}", objects.join(&format!("{ws},"))).into_bytes(), BodyFormat::Json, max),
                _ => (objects.join(&format!("{ws}\n")).into_bytes(), BodyFormat::Ndjson, max),
            }
        })
    }

    #[test]
    fn fast_path_reads_plain_events() {
        let bodies = [
            r#"{"type":"message","session_id":"1234567890123456789","session_kind":"group","sender_id":987654321,"client_msg_id":"c-1","sent_at":"2026-11-21T10:15:30.123Z","message":{"kind":"text","body":"see you at five","mentions":["42",43]}}"#,
            r#"[ {"type": "join", "session_id": 1, "session_kind": "group", "sender_id": 2, "user_id": 2, "sent_at": 1790000000000},
                {"type":"read","session_id":1,"session_kind":"group","sender_id":2,"target_id":"9","message":null} ]"#,
        ];
        for body in bodies {
            let fast = fast_path(body.as_bytes(), BodyFormat::Json, ParseLimits::default());
            assert!(fast.is_some(), "the fast path should read {body}");
            assert_eq!(
                fast.ok_or(()),
                parse_body_serde(body.as_bytes(), BodyFormat::Json, ParseLimits::default()).map_err(|_| ())
            );
        }
        let escaped =
            br#"{"type":"join","session_id":1,"session_kind":"group","sender_id":2,"user_id":2,"client_msg_id":"a"b"}"#;
        assert!(fast_path(escaped, BodyFormat::Json, ParseLimits::default()).is_none(), "escapes go to serde");
        let unknown = br#"{"type":"join","session_id":1,"session_kind":"group","sender_id":2,"user_id":2,"extra":1}"#;
        assert!(fast_path(unknown, BodyFormat::Json, ParseLimits::default()).is_none(), "unknown keys go to serde");
        assert!(parse_body(unknown, BodyFormat::Json, ParseLimits::default()).is_ok(), "and serde ignores them");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn fast_path_agrees_with_serde((body, format, max_events) in arb_body()) {
            let limits = ParseLimits { max_events, max_errors: 100 };
            let serde = parse_body_serde(&body, format, limits);
            if let Some(fast) = fast_path(&body, format, limits) {
                prop_assert_eq!(Ok(fast), serde.clone(), "{}", String::from_utf8_lossy(&body));
            }
            prop_assert_eq!(parse_body(&body, format, limits), serde);
        }

        #[test]
        fn fast_path_reads_every_plain_valid_event(
            input in arb_plain_input(),
            ws in prop::sample::select(vec!["", " ", "\n", "\t", "\r\n"]),
        ) {
            let body = format!("[{ws}{}{ws}]", input.to_json());
            let fast = fast_path(body.as_bytes(), BodyFormat::Json, ParseLimits::default());
            prop_assert_eq!(fast, Some(vec![input]));
        }
    }

    proptest! {
        #[test]
        fn json_round_trip(input in arb_input()) {
            let json = input.to_json();
            let back = parse_event(json.as_bytes()).map_err(|e| TestCaseError::fail(format!("{e:?} for {json}")))?;
            prop_assert_eq!(back, input);
        }

        #[test]
        fn arbitrary_bodies_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_body(&body, BodyFormat::Json, ParseLimits::default());
            let _ = parse_body(&body, BodyFormat::Ndjson, ParseLimits::default());
        }

        #[test]
        fn arbitrary_json_values_never_panic(s in "[\\[\\]{}:,\"a-z0-9 .eE+-]{0,200}") {
            let _ = parse_body(s.as_bytes(), BodyFormat::Json, ParseLimits::default());
        }
    }
}
