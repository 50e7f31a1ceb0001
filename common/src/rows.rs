//! `RowBatch`: the value of `chat.rows` (bincode, in the [`crate::envelope`], version 3).
//!
//! The processor decides every HBase row and cell; the sink writes them as they are. One
//! `chat.rows` record carries every [`RowMutation`] one input event causes, in order
//! (DESIGN §3), keyed by the id that owns those rows: the session id (the user id for a
//! `profile` event). **Row ownership**: every HBase row chatpipe writes is written by the
//! events of exactly one key (timelines, inbox rows of a session's messages, `members`,
//! `user_sessions` and `sessions` rows of a session, its counts; a user's `users` row), so
//! keying by owner keeps each row's mutations in one partition and in order.
//!
//! One mutation touches one row of one table. Puts carry values; a delete with no cells
//! removes the whole row, a delete with cells removes those columns (all versions).
//! Records written by builds before version 3 hold a single `RowMutation` (keyed by row);
//! [`decode_record`] reads both, so a rolling upgrade works.

use crate::envelope::{self, EnvelopeError};

use serde::{Deserialize, Serialize};

/// Table names of DESIGN §6 (namespace `chat`).
pub mod tables {
    /// Direct and group messages.
    pub const MESSAGES: &str = "chat:messages";
    /// Channel (broadcast) messages, kept apart.
    pub const CHANNEL_MESSAGES: &str = "chat:channel_messages";
    /// Per-user inbox fan-out.
    pub const INBOX: &str = "chat:inbox";
    /// Who is in a session.
    pub const MEMBERS: &str = "chat:members";
    /// Which sessions a user is in.
    pub const USER_SESSIONS: &str = "chat:user_sessions";
    /// Windowed counts.
    pub const COUNTS: &str = "chat:counts";
    /// Sessions (rooms): kind, name, member count, last message.
    pub const SESSIONS: &str = "chat:sessions";
    /// User profiles.
    pub const USERS: &str = "chat:users";
    /// Every table with its one column family.
    pub const ALL: &[(&str, &str)] = &[
        (MESSAGES, "m"),
        (CHANNEL_MESSAGES, "m"),
        (INBOX, "i"),
        (MEMBERS, "f"),
        (USER_SESSIONS, "f"),
        (COUNTS, "c"),
        (SESSIONS, "s"),
        (USERS, "u"),
    ];
}

/// One cell of a put (`family:qualifier` → value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct Cell {
    /// `family:qualifier`, e.g. `m:body`.
    pub column: String,
    /// The value bytes (decimal ASCII for numbers, per DESIGN §6).
    pub value: Vec<u8>,
}

impl Cell {
    /// A cell from any byte-like value.
    pub fn new(column: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Cell { column: column.into(), value: value.into() }
    }
}

/// A change to one HBase row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct RowMutation {
    /// `namespace:table`.
    pub table: String,
    /// The row key.
    pub row: Vec<u8>,
    /// Cells to put (or, for a delete, columns to delete).
    pub cells: Vec<Cell>,
    /// Delete instead of put.
    pub delete: bool,
    /// `ingested_at` of the event that caused it, epoch ms (end-to-end latency).
    pub ingested_at_ms: i64,
}

impl RowMutation {
    /// Approximate encoded size, for batch byte limits.
    pub fn approx_bytes(&self) -> usize {
        self.table.len()
            + self.row.len()
            + self.cells.iter().map(|c| c.column.len() + c.value.len() + 4).sum::<usize>()
            + 16
    }
}

/// Every row mutation one input event causes, in order (the value of `chat.rows`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct RowBatch {
    /// The mutations, applied in this order.
    pub mutations: Vec<RowMutation>,
}

/// Encodes a `chat.rows` value.
pub fn encode_record(batch: &RowBatch, out: &mut Vec<u8>) -> Result<(), EnvelopeError> {
    envelope::encode_into(batch, out)
}

/// Decodes a `chat.rows` value: a [`RowBatch`] (envelope version 3) or, from builds before
/// it, a single [`RowMutation`] (versions 1 and 2).
pub fn decode_record(bytes: &[u8]) -> Result<Vec<RowMutation>, EnvelopeError> {
    match bytes.get(1) {
        Some(1 | 2) => envelope::decode::<RowMutation>(bytes).map(|m| vec![m]),
        _ => envelope::decode::<RowBatch>(bytes).map(|b| b.mutations),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(row: &str) -> RowMutation {
        RowMutation {
            table: tables::MESSAGES.into(),
            row: row.as_bytes().to_vec(),
            cells: vec![Cell::new("m:body", b"hi".to_vec())],
            delete: false,
            ingested_at_ms: 7,
        }
    }

    #[test]
    fn a_batch_round_trips_and_a_single_mutation_of_an_older_build_still_decodes() {
        let batch = RowBatch { mutations: vec![put("a"), put("b")] };
        let mut bytes = Vec::new();
        encode_record(&batch, &mut bytes).unwrap();
        assert_eq!(decode_record(&bytes).unwrap(), batch.mutations);
        // what a version-2 build wrote: one RowMutation per record
        let mut old = envelope::encode(&put("c")).unwrap();
        old[1] = 2;
        assert_eq!(decode_record(&old).unwrap(), vec![put("c")]);
        assert!(decode_record(b"garbage").is_err());
        assert!(decode_record(&[]).is_err());
    }
}
