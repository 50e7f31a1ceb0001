//! The JSON records analysts consume (DESIGN §3), as typed `Serialize` structs: ids as
//! decimal strings, times as RFC 3339. Names are a contract: add fields, never rename.

use std::collections::BTreeMap;

use serde::{Serialize, Serializer};

/// Serializes an id as a decimal string (64-bit ids exceed JavaScript's precision).
fn id_str<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(itoa::Buffer::new().format(*v))
}

/// A `chat.unread` value (key `user|session`).
#[derive(Debug, Clone, Serialize)]
pub struct UnreadRecord {
    /// The member.
    #[serde(serialize_with = "id_str")]
    pub user_id: u64,
    /// The session.
    #[serde(serialize_with = "id_str")]
    pub session_id: u64,
    /// `last_seq − read_seq`.
    pub unread: u64,
    /// The message at the read mark ("0" when the mark was set by seq alone).
    #[serde(serialize_with = "id_str")]
    pub last_read_message_id: u64,
    /// The member's read mark.
    pub read_seq: u64,
    /// The session's last message seq.
    pub last_seq: u64,
}

/// A `chat.agg.session.1m` value (key `session|window_start`).
#[derive(Debug, Clone, Serialize)]
pub struct SessionWindowRecord<'a> {
    /// The session.
    #[serde(serialize_with = "id_str")]
    pub session_id: u64,
    /// Its kind.
    pub session_kind: &'static str,
    /// Window start, RFC 3339.
    pub window_start: String,
    /// Window end, RFC 3339.
    pub window_end: String,
    /// Messages counted.
    pub messages: u64,
    /// Messages per kind.
    pub by_kind: BTreeMap<&'a str, u64>,
    /// Distinct senders.
    pub senders: usize,
    /// 1, then +1 per correction.
    pub revision: u32,
}

/// JSON text of a record. Serializing these strings, numbers and maps cannot fail in
/// practice; the caller still treats an error as an error (counted), never as a silent drop.
pub fn to_json<T: Serialize>(v: &T) -> Result<String, serde_json::Error> {
    serde_json::to_string(v)
}
