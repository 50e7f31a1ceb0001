//! `RowMutation`: the value of `chat.rows` (bincode, in the [`crate::envelope`]).
//!
//! The processor decides every HBase row and cell; the sink writes them as they are. One
//! mutation touches one row of one table. Puts carry values; a delete with no cells removes
//! the whole row, a delete with cells removes those columns (all versions). Mutations of one
//! row are keyed by the row key on `chat.rows`, so they stay in one partition and in order.

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
    /// Every table with its one column family.
    pub const ALL: &[(&str, &str)] =
        &[(MESSAGES, "m"), (CHANNEL_MESSAGES, "m"), (INBOX, "i"), (MEMBERS, "f"), (USER_SESSIONS, "f"), (COUNTS, "c")];
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
