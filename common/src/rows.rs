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

/// Encodes one mutation as a whole `chat.rows` value (a batch of one; tools and tests).
pub fn encode_one(m: &RowMutation) -> Result<Vec<u8>, EnvelopeError> {
    let mut out = Vec::new();
    encode_record(&RowBatch { mutations: vec![m.clone()] }, &mut out)?;
    Ok(out)
}

/// Writes a `chat.rows` value (a [`RowBatch`] in an envelope of the current version)
/// straight into bytes, one mutation at a time: exactly the bytes [`encode_record`] writes
/// for the equivalent batch (a property test holds them equal), without building a
/// `RowMutation` per row. A group message is ~20 rows (its inbox fan-out), so building
/// them as owned strings and vectors first cost ~200 allocations per event.
///
/// Use: [`put`](Self::put) or [`delete`](Self::delete) opens a mutation, [`cell`](Self::cell)
/// / [`num`](Self::num) add its cells, the next mutation or [`finish`](Self::finish)
/// closes it.
#[derive(Debug)]
pub struct RowBatchEncoder {
    buf: Vec<u8>,
    mutations: u64,
    open: Option<OpenMutation>,
    /// Size of the last finished record (the next buffer's capacity).
    last_len: usize,
}

#[derive(Debug)]
struct OpenMutation {
    /// Where its cell count goes.
    cells_at: usize,
    cells: u64,
    delete: bool,
    ingested_at_ms: i64,
}

/// Bytes of the envelope header plus the batch's mutation count.
const BATCH_HEADER: usize = 2 + 8;

impl Default for RowBatchEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl RowBatchEncoder {
    /// An empty batch.
    pub fn new() -> Self {
        let mut e = RowBatchEncoder { buf: Vec::new(), mutations: 0, open: None, last_len: 0 };
        e.reset();
        e
    }

    fn reset(&mut self) {
        self.buf.clear();
        // the next record is likely as large as this one: one allocation, no regrowth
        self.buf.reserve(self.last_len.max(256));
        self.buf.push(envelope::MAGIC);
        self.buf.push(envelope::SCHEMA_VERSION);
        self.buf.extend_from_slice(&0u64.to_le_bytes());
        self.mutations = 0;
        self.open = None;
    }

    /// Mutations written so far.
    pub fn len(&self) -> usize {
        self.mutations as usize + usize::from(self.open.is_some())
    }

    /// Whether no mutation was written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    fn bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(&(b.len() as u64).to_le_bytes());
        self.buf.extend_from_slice(b);
    }

    fn close(&mut self) {
        if let Some(m) = self.open.take() {
            self.buf[m.cells_at..m.cells_at + 8].copy_from_slice(&m.cells.to_le_bytes());
            self.buf.push(u8::from(m.delete));
            self.buf.extend_from_slice(&m.ingested_at_ms.to_le_bytes());
            self.mutations += 1;
        }
    }

    fn open(&mut self, table: &str, row: &[u8], delete: bool, ingested_at_ms: i64) -> &mut Self {
        self.close();
        self.bytes(table.as_bytes());
        self.bytes(row);
        let cells_at = self.buf.len();
        self.buf.extend_from_slice(&0u64.to_le_bytes());
        self.open = Some(OpenMutation { cells_at, cells: 0, delete, ingested_at_ms });
        self
    }

    /// Opens a put into `table`/`row`.
    pub fn put(&mut self, table: &str, row: &[u8], ingested_at_ms: i64) -> &mut Self {
        self.open(table, row, false, ingested_at_ms)
    }

    /// Opens a delete of `table`/`row`: the whole row, or only the columns of the cells
    /// added to it.
    pub fn delete(&mut self, table: &str, row: &[u8], ingested_at_ms: i64) -> &mut Self {
        self.open(table, row, true, ingested_at_ms)
    }

    /// Adds a cell to the open mutation (ignored when none is open, which the callers'
    /// `put(..).cell(..)` chains never do).
    pub fn cell(&mut self, column: &str, value: &[u8]) -> &mut Self {
        if self.open.is_some() {
            self.bytes(column.as_bytes());
            self.bytes(value);
            if let Some(m) = &mut self.open {
                m.cells += 1;
            }
        }
        self
    }

    /// Adds a cell holding a decimal number (DESIGN §6: numbers as decimal ASCII).
    pub fn num<N: itoa::Integer>(&mut self, column: &str, v: N) -> &mut Self {
        let mut b = itoa::Buffer::new();
        let s = b.format(v);
        self.cell(column, s.as_bytes())
    }

    /// The encoded record, and the encoder reset for the next one.
    pub fn finish(&mut self) -> Vec<u8> {
        self.close();
        let n = self.mutations;
        self.buf[2..BATCH_HEADER].copy_from_slice(&n.to_le_bytes());
        let out = std::mem::take(&mut self.buf);
        self.last_len = out.len();
        self.reset();
        out
    }
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

    fn arb_mutation() -> impl proptest::strategy::Strategy<Value = RowMutation> {
        use proptest::prelude::*;
        let cell = ("[a-z]:[a-z_]{0,8}", prop::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(column, value)| Cell { column, value });
        (
            "chat:[a-z_]{1,12}",
            prop::collection::vec(any::<u8>(), 0..50),
            prop::collection::vec(cell, 0..6),
            any::<bool>(),
            any::<i64>(),
        )
            .prop_map(|(table, row, cells, delete, ingested_at_ms)| RowMutation {
                table,
                row,
                cells,
                delete,
                ingested_at_ms,
            })
    }

    proptest::proptest! {
        #[test]
        fn the_encoder_writes_exactly_what_encode_record_writes(
            batches in proptest::collection::vec(proptest::collection::vec(arb_mutation(), 0..8), 1..4)
        ) {
            // one encoder reused for several records, as the processor does
            let mut enc = RowBatchEncoder::new();
            for mutations in batches {
                for m in &mutations {
                    if m.delete { enc.delete(&m.table, &m.row, m.ingested_at_ms) } else { enc.put(&m.table, &m.row, m.ingested_at_ms) };
                    for c in &m.cells {
                        enc.cell(&c.column, &c.value);
                    }
                }
                proptest::prop_assert_eq!(enc.len(), mutations.len());
                let batch = RowBatch { mutations };
                let mut expected = Vec::new();
                encode_record(&batch, &mut expected).unwrap();
                let got = enc.finish();
                proptest::prop_assert_eq!(&got, &expected);
                proptest::prop_assert_eq!(decode_record(&got).unwrap(), batch.mutations);
                proptest::prop_assert!(enc.is_empty());
            }
        }
    }

    #[test]
    fn num_cells_are_decimal_ascii() {
        let mut enc = RowBatchEncoder::new();
        enc.put(tables::SESSIONS, b"001|7", 3).num("s:last_seq", 42u64).num("s:created_at", -5i64);
        let m = decode_record(&enc.finish()).unwrap();
        assert_eq!(
            m[0].cells,
            vec![Cell::new("s:last_seq", b"42".to_vec()), Cell::new("s:created_at", b"-5".to_vec())]
        );
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
