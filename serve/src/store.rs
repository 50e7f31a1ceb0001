//! Reading the tables of DESIGN §6 back through HBase's Thrift1 API: the row shapes serve
//! answers with, and one function per HBase operation (a prefix scan, or a multi-get).
//!
//! Guarantee: every read is one HBase operation (one scanner opened, drained to its limit
//! and closed; or one `getRowsWithColumns`), counted on the request's [`Calls`] and in
//! `chatpipe_serve_hbase_calls_total`. Rows are returned as HBase has them: a row whose key
//! does not decode is skipped and counted (`chatpipe_serve_errors_total{kind="bad_row"}`),
//! never fatal. Failure: the HBase error is returned as is (its `is_retriable` decides 503
//! vs 500 at the edge); the pool drops and remakes a broken connection.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use chatpipe_common::row_key;
use chatpipe_common::rows::tables;
use chatpipe_sink::hbase::{HbaseClient, HbaseError, HbasePool, Row};
use chatpipe_sink::query::{prefix_end, InboxEntry, TimelineMessage};
use hbase_thrift::hbase::THbaseSyncClient;

use crate::metrics::{kind, op, ServeMetrics};

/// `chat:sessions` (DESIGN §6 v2), family `s`.
pub const SESSIONS: &str = tables::SESSIONS;
/// `chat:users` (DESIGN §6 v2), family `u`.
pub const USERS: &str = tables::USERS;
/// Most sessions of one user read for the sessions list and the inbox merge.
pub const MAX_USER_SESSIONS: usize = 10_000;

/// The key of a one-id row (`chat:sessions`, `chat:users`): `SALT|ID`.
pub fn encode_id(id: u64) -> String {
    row_key::encode_id(id)
}

/// HBase operations made for one request.
#[derive(Debug, Default)]
pub struct Calls(AtomicU32);

impl Calls {
    /// Operations so far.
    pub fn get(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
    fn add(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

fn dec<T: FromStr>(cells: &BTreeMap<String, Vec<u8>>, column: &str) -> Option<T> {
    std::str::from_utf8(cells.get(column)?).ok()?.trim().parse().ok()
}

fn text(cells: &BTreeMap<String, Vec<u8>>, column: &str) -> Option<String> {
    cells.get(column).map(|v| String::from_utf8_lossy(v).into_owned())
}

/// A `chat:sessions` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The session id.
    pub session_id: u64,
    /// `direct`, `group` or `channel`.
    pub kind: String,
    /// Group or channel name.
    pub name: Option<String>,
    /// Epoch ms.
    pub created_at_ms: Option<i64>,
    /// Member count.
    pub members: u64,
    /// The seq of the latest message (0: none yet).
    pub last_seq: u64,
    /// The latest message.
    pub last_message_id: Option<u64>,
    /// Its `sent_at`, epoch ms.
    pub last_sent_at_ms: Option<i64>,
}

impl SessionInfo {
    /// Reads a row of `chat:sessions` (`None` when it has no `s:kind`).
    pub fn from_row(session_id: u64, c: &BTreeMap<String, Vec<u8>>) -> Option<Self> {
        Some(SessionInfo {
            session_id,
            kind: text(c, "s:kind")?,
            name: text(c, "s:name"),
            created_at_ms: dec(c, "s:created_at"),
            members: dec(c, "s:members").unwrap_or(0),
            last_seq: dec(c, "s:last_seq").unwrap_or(0),
            last_message_id: dec(c, "s:last_message_id"),
            last_sent_at_ms: dec(c, "s:last_sent_at"),
        })
    }

    /// The timeline table of this session's kind.
    pub fn timeline_table(&self) -> &'static str {
        timeline_table(&self.kind)
    }
}

/// The timeline table of a session kind (channels are kept apart, DESIGN §6).
pub fn timeline_table(kind: &str) -> &'static str {
    if kind == "channel" {
        tables::CHANNEL_MESSAGES
    } else {
        tables::MESSAGES
    }
}

/// A timeline message with its mentions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The row as `chatpipe query` reads it (body decoded).
    pub m: TimelineMessage,
    /// `m:mentions`.
    pub mentions: Vec<u64>,
}

impl Message {
    fn from_row(row: &Row) -> Result<Self, String> {
        let m = TimelineMessage::from_row(row)?;
        let mentions = row
            .cells
            .get("m:mentions")
            .map(|v| String::from_utf8_lossy(v).split(',').filter_map(|s| s.trim().parse().ok()).collect())
            .unwrap_or_default();
        Ok(Message { m, mentions })
    }
}

/// An inbox row with the v2 columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxRow {
    /// The row as `chatpipe query` reads it.
    pub e: InboxEntry,
    /// `i:seq`.
    pub seq: Option<u64>,
    /// `i:recalled` = `1`.
    pub recalled: bool,
}

impl InboxRow {
    fn from_row(row: &Row) -> Result<Self, String> {
        Ok(InboxRow {
            e: InboxEntry::from_row(row)?,
            seq: dec(&row.cells, "i:seq"),
            recalled: row.cells.get("i:recalled").is_some_and(|v| v.as_slice() == b"1"),
        })
    }
}

/// A `chat:user_sessions` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// The session.
    pub session_id: u64,
    /// Epoch ms.
    pub joined_at_ms: Option<i64>,
    /// The session's seq when the user joined.
    pub joined_seq: u64,
    /// The user's read mark.
    pub read_seq: u64,
}

/// A `chat:members` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The member.
    pub user_id: u64,
    /// Epoch ms.
    pub joined_at_ms: Option<i64>,
}

/// A `chat:users` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// The user.
    pub user_id: u64,
    /// `u:name`.
    pub name: Option<String>,
    /// `u:avatar`.
    pub avatar: Option<String>,
    /// `u:updated_at`, epoch ms.
    pub updated_at_ms: Option<i64>,
}

/// Decodes the key of a pair row (`SALT|A|B`) into `(A, B)`, checking the salt.
pub fn decode_pair(key: &[u8]) -> Option<(u64, u64)> {
    let s = std::str::from_utf8(key).ok()?;
    let mut parts = s.split('|');
    let (Some(salt), Some(a), Some(b), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    let a: u64 = a.parse().ok()?;
    let b: u64 = b.parse().ok()?;
    (salt.parse::<u16>().ok()? == row_key::salt(a)).then_some((a, b))
}

/// Where a timeline scan starts and in which direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Newest first, from the newest message.
    Newest,
    /// Newest first, strictly older than this message id.
    Before(u64),
    /// Newest first, from this row key (inclusive) — continuing a scan.
    Key,
    /// Oldest first, from the oldest message.
    Oldest,
}

/// The HBase reader of one serve: the connection pool and the metrics.
#[derive(Clone)]
pub struct Store {
    pool: HbasePool,
    metrics: ServeMetrics,
}

impl Store {
    /// A store over `pool`.
    pub fn new(pool: HbasePool, metrics: ServeMetrics) -> Self {
        Store { pool, metrics }
    }

    async fn call<T, F>(&self, calls: &Calls, op: &'static str, f: F) -> Result<T, HbaseError>
    where
        F: FnOnce(&mut HbaseClient) -> Result<T, HbaseError> + Send + 'static,
        T: Send + 'static,
    {
        calls.add();
        self.metrics.hbase_calls.with_label_values(&[op]).inc();
        let started = Instant::now();
        let result = self.pool.call(f).await;
        self.metrics.hbase_call_duration.with_label_values(&[op]).observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            self.metrics.error(kind::HBASE);
        }
        result
    }

    /// One scan of `[start, stop)` (or reversed from `start` down to `stop`).
    #[allow(clippy::too_many_arguments)]
    pub async fn scan(
        &self,
        calls: &Calls,
        table: &'static str,
        family: &'static str,
        start: Vec<u8>,
        stop: Vec<u8>,
        limit: usize,
        reversed: bool,
    ) -> Result<Vec<Row>, HbaseError> {
        self.call(calls, op::SCAN, move |c| c.scan_ordered(table, &start, &stop, &[family], Some(limit), reversed))
            .await
    }

    /// One multi-get of `rows` (absent rows are left out of the answer).
    pub async fn get_rows(
        &self,
        calls: &Calls,
        table: &'static str,
        family: &'static str,
        rows: Vec<Vec<u8>>,
    ) -> Result<Vec<Row>, HbaseError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        self.call(calls, op::GET, move |c| {
            let results = c.thrift().get_rows_with_columns(
                table.as_bytes().to_vec(),
                rows,
                vec![family.as_bytes().to_vec()],
                BTreeMap::new(),
            )?;
            Ok(results.into_iter().map(Row::from).filter(|r| !r.cells.is_empty()).collect())
        })
        .await
    }

    fn bad_row(&self, row: &Row, e: &str) {
        self.metrics.error(kind::BAD_ROW);
        tracing::debug!(row = %String::from_utf8_lossy(&row.row), error = %e, "skipping a row that does not decode");
    }

    /// Sessions by id (one multi-get); unknown ids are absent from the map.
    pub async fn sessions(&self, calls: &Calls, ids: &[u64]) -> Result<BTreeMap<u64, SessionInfo>, HbaseError> {
        let keys = ids.iter().map(|id| encode_id(*id).into_bytes()).collect();
        let rows = self.get_rows(calls, SESSIONS, "s", keys).await?;
        let mut out = BTreeMap::new();
        for row in rows {
            let id = std::str::from_utf8(&row.row).ok().and_then(|k| k.split('|').nth(1)).and_then(|s| s.parse().ok());
            match id.and_then(|id| SessionInfo::from_row(id, &row.cells)) {
                Some(s) => {
                    out.insert(s.session_id, s);
                }
                None => self.bad_row(&row, "not a session row"),
            }
        }
        Ok(out)
    }

    /// One session.
    pub async fn session(&self, calls: &Calls, id: u64) -> Result<Option<SessionInfo>, HbaseError> {
        Ok(self.sessions(calls, &[id]).await?.remove(&id))
    }

    /// A user's profile.
    pub async fn profile(&self, calls: &Calls, user: u64) -> Result<Option<Profile>, HbaseError> {
        let rows = self.get_rows(calls, USERS, "u", vec![encode_id(user).into_bytes()]).await?;
        Ok(rows.first().map(|r| Profile {
            user_id: user,
            name: text(&r.cells, "u:name"),
            avatar: text(&r.cells, "u:avatar"),
            updated_at_ms: dec(&r.cells, "u:updated_at"),
        }))
    }

    /// Up to `limit` messages of a session's timeline (one scan). `Key(k)` continues a
    /// newest-first scan from key `k`.
    pub async fn timeline(
        &self,
        calls: &Calls,
        table: &'static str,
        session: u64,
        from: Start,
        key: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<(Vec<Message>, Option<Vec<u8>>), HbaseError> {
        let prefix = row_key::prefix(session).into_bytes();
        let end = prefix_end(&prefix);
        let (start, stop, reversed) = match from {
            Start::Newest => (prefix.clone(), end, false),
            Start::Before(b) => match row_key::older_than_start(session, b) {
                Some(s) => (s.into_bytes(), end, false),
                None => return Ok((Vec::new(), None)),
            },
            Start::Key => (key.unwrap_or_else(|| prefix.clone()), end, false),
            Start::Oldest => (key.unwrap_or(end), prefix.clone(), true),
        };
        let rows = self.scan(calls, table, "m", start, stop, limit, reversed).await?;
        // the key to continue from: just after (newest first) or just before (oldest first)
        // the last row seen
        let next = rows.last().map(|r| {
            let mut k = r.row.clone();
            if reversed {
                // the largest key below `k`: keys under one prefix have the same length and
                // end in a digit, so lowering the last digit and appending 0xFF sorts
                // between `k` and every smaller key
                if let Some(last) = k.last_mut() {
                    *last = last.saturating_sub(1);
                }
                k.push(0xFF);
            } else {
                k.push(0);
            }
            k
        });
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            match Message::from_row(row) {
                Ok(m) => out.push(m),
                Err(e) => self.bad_row(row, &e),
            }
        }
        Ok((out, next))
    }

    /// Up to `limit` inbox rows of a user, newest first, strictly older than `before`.
    pub async fn inbox(
        &self,
        calls: &Calls,
        user: u64,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<InboxRow>, HbaseError> {
        let prefix = row_key::prefix(user).into_bytes();
        let start = match before {
            None => prefix.clone(),
            Some(b) => match row_key::older_than_start(user, b) {
                Some(s) => s.into_bytes(),
                None => return Ok(Vec::new()),
            },
        };
        let rows = self.scan(calls, tables::INBOX, "i", start, prefix_end(&prefix), limit, false).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            match InboxRow::from_row(row) {
                Ok(e) => out.push(e),
                Err(e) => self.bad_row(row, &e),
            }
        }
        Ok(out)
    }

    /// The sessions of a user (one scan, at most `limit`, normally [`MAX_USER_SESSIONS`]).
    pub async fn user_sessions(&self, calls: &Calls, user: u64, limit: usize) -> Result<Vec<Membership>, HbaseError> {
        let prefix = row_key::prefix(user).into_bytes();
        let end = prefix_end(&prefix);
        let rows = self.scan(calls, tables::USER_SESSIONS, "f", prefix, end, limit, false).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            match decode_pair(&row.row) {
                Some((u, session_id)) if u == user => out.push(Membership {
                    session_id,
                    joined_at_ms: dec(&row.cells, "f:joined_at"),
                    joined_seq: dec(&row.cells, "f:joined_seq").unwrap_or(0),
                    read_seq: dec(&row.cells, "f:read_seq").unwrap_or(0),
                }),
                _ => self.bad_row(row, "not a user_sessions key"),
            }
        }
        Ok(out)
    }

    /// Up to `limit` members of a session in row-key order (user ids as decimal strings,
    /// compared bytewise), strictly after member `after`.
    pub async fn members(
        &self,
        calls: &Calls,
        session: u64,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Member>, HbaseError> {
        let prefix = row_key::prefix(session).into_bytes();
        let start = match after {
            None => prefix.clone(),
            Some(a) => {
                let mut k = row_key::encode_pair(session, a).into_bytes();
                k.push(0);
                k
            }
        };
        let rows = self.scan(calls, tables::MEMBERS, "f", start, prefix_end(&prefix), limit, false).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            match decode_pair(&row.row) {
                Some((s, user_id)) if s == session => {
                    out.push(Member { user_id, joined_at_ms: dec(&row.cells, "f:joined_at") })
                }
                _ => self.bad_row(row, "not a members key"),
            }
        }
        Ok(out)
    }

    /// Messages by `(session, message_id)` from one table (one multi-get).
    pub async fn messages(
        &self,
        calls: &Calls,
        table: &'static str,
        ids: &[(u64, u64)],
    ) -> Result<Vec<Message>, HbaseError> {
        let keys = ids.iter().map(|(s, m)| row_key::encode(*s, *m).into_bytes()).collect();
        let rows = self.get_rows(calls, table, "m", keys).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            match Message::from_row(row) {
                Ok(m) => out.push(m),
                Err(e) => self.bad_row(row, &e),
            }
        }
        Ok(out)
    }

    /// Whether HBase answers (readiness probe).
    pub async fn probe(&self) -> Result<(), HbaseError> {
        self.pool.call(|c| c.table_names().map(|_| ())).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_id_keys_are_salt_and_id() {
        let k = encode_id(12345);
        assert_eq!(k, format!("{:03}|12345", row_key::salt(12345)));
        assert_eq!(format!("{k}|"), row_key::prefix(12345));
    }

    #[test]
    fn pair_keys_decode_and_check_the_salt() {
        let k = row_key::encode_pair(42, 7);
        assert_eq!(decode_pair(k.as_bytes()), Some((42, 7)));
        let bad = format!("{:03}|42|7", (row_key::salt(42) + 1) % 128);
        assert_eq!(decode_pair(bad.as_bytes()), None);
        assert_eq!(decode_pair(b"001|x|7"), None);
        assert_eq!(decode_pair(b"001|1|2|3"), None);
    }
}
