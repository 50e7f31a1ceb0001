//! Row building: the HBase rows and cells of DESIGN §6, written straight into the event's
//! `chat.rows` record.
//!
//! Every row built here is owned by one id (**row ownership**, see `chatpipe_common::rows`):
//! timeline rows, the inbox rows of a session's messages, its `members`, `user_sessions`,
//! `sessions` and `counts` rows belong to the session; a `users` row to the user. The core
//! puts every mutation an event causes into one [`RowRecord`] keyed by that owner, so all
//! mutations of a row travel through one `chat.rows` partition in order. Cell values are
//! what an `hbase shell` user can read: numbers and times as decimal ASCII.
//!
//! Mutations are encoded as they are built ([`RowBatchEncoder`]): no `RowMutation`, cell
//! or row-key string is allocated per row, which was most of a group message's cost.

use chatpipe_common::envelope::EnvelopeError;
use chatpipe_common::event::SessionKind;
use chatpipe_common::row_key;
use chatpipe_common::rows::{decode_record, tables, RowBatchEncoder, RowMutation};

/// One `chat.rows` record: the mutations one event (or one window emission) causes,
/// keyed by the id that owns their rows, already encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowRecord {
    /// The owner (session id; user id for `users` rows): the record key.
    pub key: u64,
    /// The encoded `RowBatch` (the record value).
    pub value: Vec<u8>,
    /// How many mutations it holds (metrics).
    pub mutations: usize,
}

impl RowRecord {
    /// The record's mutations, decoded (tests, tools).
    pub fn decode(&self) -> Result<Vec<RowMutation>, EnvelopeError> {
        decode_record(&self.value)
    }
}

/// The mutations of the event being applied, and a scratch buffer for row keys.
#[derive(Debug, Default)]
pub(crate) struct RowBuilder {
    pub(crate) enc: RowBatchEncoder,
    key: String,
}

impl RowBuilder {
    /// Opens a put of `table` at `key`.
    #[inline]
    pub(crate) fn put(&mut self, table: &str, key: RowKey, at: i64) -> &mut RowBatchEncoder {
        key.write(&mut self.key);
        self.enc.put(table, self.key.as_bytes(), at)
    }

    /// Opens a delete of `table` at `key` (the whole row unless cells are added).
    #[inline]
    pub(crate) fn delete(&mut self, table: &str, key: RowKey, at: i64) -> &mut RowBatchEncoder {
        key.write(&mut self.key);
        self.enc.delete(table, self.key.as_bytes(), at)
    }

    /// Whether the event changed no row.
    pub(crate) fn is_empty(&self) -> bool {
        self.enc.is_empty()
    }

    /// The event's record, keyed by `owner`; the builder is empty again.
    pub(crate) fn finish(&mut self, owner: u64) -> RowRecord {
        let mutations = self.enc.len();
        RowRecord { key: owner, value: self.enc.finish(), mutations }
    }
}

/// The row keys of DESIGN §5 the processor writes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RowKey {
    /// `salt|id|reversed` (timeline, inbox, counts).
    Message(u64, u64),
    /// `salt|id|other` (`members`, `user_sessions`).
    Pair(u64, u64),
    /// `salt|id` (`sessions`, `users`).
    Id(u64),
}

impl RowKey {
    #[inline]
    fn write(self, out: &mut String) {
        out.clear();
        match self {
            RowKey::Message(id, m) => row_key::encode_into(id, m, out),
            RowKey::Pair(id, other) => row_key::encode_pair_into(id, other, out),
            RowKey::Id(id) => row_key::encode_id_into(id, out),
        }
    }
}

/// The timeline table of a session kind (channels are kept apart).
pub(crate) fn timeline_table(kind: SessionKind) -> &'static str {
    if kind == SessionKind::Channel {
        tables::CHANNEL_MESSAGES
    } else {
        tables::MESSAGES
    }
}

/// Body cells: plain, or LZ4 with `m:enc = lz4` at or above `compress_min_bytes`. Returns
/// whether the body is compressed.
pub(crate) fn body_cells(body: &str, compress_min_bytes: usize, m: &mut RowBatchEncoder) -> bool {
    if body.len() >= compress_min_bytes {
        m.cell("m:body", &lz4_flex::compress_prepend_size(body.as_bytes())).cell("m:enc", b"lz4");
        true
    } else {
        m.cell("m:body", body.as_bytes());
        false
    }
}

/// `m:mentions`: the mentioned user ids, comma-separated decimal.
pub(crate) fn mentions_cell(mentions: &[u64], m: &mut RowBatchEncoder) {
    if mentions.is_empty() {
        return;
    }
    let mut s = String::with_capacity(mentions.len() * 12);
    let mut b = itoa::Buffer::new();
    for (i, id) in mentions.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(b.format(*id));
    }
    m.cell("m:mentions", s.as_bytes());
}
