//! Row building: the HBase rows and cells of DESIGN §6, as pure functions.
//!
//! Every row built here is owned by one id (**row ownership**, see `chatpipe_common::rows`):
//! timeline rows, the inbox rows of a session's messages, its `members`, `user_sessions`,
//! `sessions` and `counts` rows belong to the session; a `users` row to the user. The core
//! puts every mutation an event causes into one [`RowRecord`] keyed by that owner, so all
//! mutations of a row travel through one `chat.rows` partition in order. Cell values are
//! what an `hbase shell` user can read: numbers and times as decimal ASCII.

use chatpipe_common::row_key;
use chatpipe_common::rows::{tables, Cell, RowBatch, RowMutation};

/// One `chat.rows` record: the mutations one event (or one window emission) causes,
/// keyed by the id that owns their rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowRecord {
    /// The owner (session id; user id for `users` rows): the record key.
    pub key: u64,
    /// The mutations, in order.
    pub batch: RowBatch,
}

/// A cell holding a decimal number (DESIGN §6: numbers as decimal ASCII).
pub(crate) fn num<N: itoa::Integer>(col: &str, v: N) -> Cell {
    Cell::new(col, itoa::Buffer::new().format(v).as_bytes().to_vec())
}

/// A cell holding text.
pub(crate) fn text(col: &str, v: &str) -> Cell {
    Cell::new(col, v.as_bytes().to_vec())
}

/// A put of `cells` into `table`/`row`.
pub(crate) fn put(table: &str, row: String, cells: Vec<Cell>, ingested_at_ms: i64) -> RowMutation {
    RowMutation { table: table.to_owned(), row: row.into_bytes(), cells, delete: false, ingested_at_ms }
}

/// A delete of the whole row (no cells) or of `cells`' columns.
pub(crate) fn delete(table: &str, row: String, cells: Vec<Cell>, ingested_at_ms: i64) -> RowMutation {
    RowMutation { table: table.to_owned(), row: row.into_bytes(), cells, delete: true, ingested_at_ms }
}

/// The timeline table of a session kind (channels are kept apart).
pub(crate) fn timeline_table(kind: chatpipe_common::event::SessionKind) -> &'static str {
    if kind == chatpipe_common::event::SessionKind::Channel {
        tables::CHANNEL_MESSAGES
    } else {
        tables::MESSAGES
    }
}

/// Body cells: plain, or LZ4 with `m:enc = lz4` at or above `compress_min_bytes`. Returns
/// whether the body is compressed.
pub(crate) fn body_cells(body: &str, compress_min_bytes: usize, cells: &mut Vec<Cell>) -> bool {
    if body.len() >= compress_min_bytes {
        cells.push(Cell::new("m:body", lz4_flex::compress_prepend_size(body.as_bytes())));
        cells.push(Cell::new("m:enc", b"lz4".to_vec()));
        true
    } else {
        cells.push(Cell::new("m:body", body.as_bytes().to_vec()));
        false
    }
}

/// `m:mentions`: the mentioned user ids, comma-separated decimal.
pub(crate) fn mentions_cell(mentions: &[u64]) -> Option<Cell> {
    if mentions.is_empty() {
        return None;
    }
    let mut s = String::with_capacity(mentions.len() * 12);
    let mut b = itoa::Buffer::new();
    for (i, m) in mentions.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(b.format(*m));
    }
    Some(Cell::new("m:mentions", s.into_bytes()))
}

/// The `chat:sessions` row key.
pub(crate) fn session_row(session: u64) -> String {
    row_key::encode_id(session)
}

/// The `chat:users` row key.
pub(crate) fn user_row(user: u64) -> String {
    row_key::encode_id(user)
}
