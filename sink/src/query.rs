//! `chatpipe query`: read a conversation timeline or a user's inbox back from HBase, newest
//! first — the reads the row-key design of DESIGN §5 exists for.
//!
//! * `timeline --session ID [--limit N] [--before MESSAGE_ID]` scans `chat:messages` (or
//!   `chat:channel_messages` with `--channel`) from the prefix `SALT|SESSION|`, or, with
//!   `--before`, from the first key strictly older than that message, to the end of the
//!   prefix. Because the key ends with `i64::MAX − message_id`, a forward scan returns the
//!   newest message first, and "load older" continues exactly where the last page ended.
//! * `inbox --user ID [--limit N] [--before MESSAGE_ID]` does the same on `chat:inbox`.
//!
//! Bodies stored LZ4-compressed (`m:enc` = `lz4`) are decompressed. `--json` prints one
//! JSON object per message, ids as strings, times in RFC 3339. A body that does not decode
//! is shown with an `error` instead of failing the whole page.

use std::collections::BTreeMap;
use std::str::FromStr;

use chatpipe_common::event::rfc3339_ms;
use chatpipe_common::row_key;
use chatpipe_common::rows::tables;
use clap::builder::TypedValueParser as _;
use serde_json::json;

use crate::config::HbaseArgs;
use crate::hbase::{HbaseClient, HbaseError, Row};

/// Largest decompressed body accepted (bodies are ≤ 64 KiB by DESIGN §4; this bounds what a
/// corrupt size prefix could make us allocate).
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Default page size.
pub const DEFAULT_LIMIT: usize = 20;

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// Talking to HBase failed.
    #[error(transparent)]
    Hbase(#[from] HbaseError),
    /// Writing the output failed.
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

impl QueryError {
    /// Whether trying again may help.
    pub fn is_retriable(&self) -> bool {
        match self {
            QueryError::Hbase(e) => e.is_retriable(),
            QueryError::Output(_) => false,
        }
    }
}

/// `chatpipe query` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct QueryArgs {
    /// What to read.
    #[command(subcommand)]
    pub command: QueryCommand,
}

/// `chatpipe query` subcommands.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum QueryCommand {
    /// A conversation's messages, newest first.
    Timeline(TimelineArgs),
    /// A user's inbox, newest first.
    Inbox(InboxArgs),
}

/// Paging and output flags shared by the queries.
#[derive(clap::Args, Debug, Clone)]
pub struct PageArgs {
    /// Messages per page.
    #[arg(long, default_value_t = DEFAULT_LIMIT, value_parser = clap::value_parser!(u32).range(1..=10_000).map(|v| v as usize))]
    pub limit: usize,
    /// Only messages strictly older than this message id (the last id of the previous page).
    #[arg(long)]
    pub before: Option<u64>,
    /// One JSON object per message (ids as strings) instead of text lines.
    #[arg(long)]
    pub json: bool,
}

/// `chatpipe query timeline` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct TimelineArgs {
    /// HBase Thrift connection.
    #[command(flatten)]
    pub hbase: HbaseArgs,
    /// The session (conversation) id.
    #[arg(long)]
    pub session: u64,
    /// Read `chat:channel_messages` (channel sessions) instead of `chat:messages`.
    #[arg(long)]
    pub channel: bool,
    /// Paging and output.
    #[command(flatten)]
    pub page: PageArgs,
}

/// `chatpipe query inbox` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct InboxArgs {
    /// HBase Thrift connection.
    #[command(flatten)]
    pub hbase: HbaseArgs,
    /// The user id.
    #[arg(long)]
    pub user: u64,
    /// Paging and output.
    #[command(flatten)]
    pub page: PageArgs,
}

/// One message of a timeline, as stored in `m:` (DESIGN §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineMessage {
    /// From the row key.
    pub message_id: u64,
    /// From the row key.
    pub session_id: u64,
    /// `m:sender`.
    pub sender_id: Option<u64>,
    /// `m:kind`.
    pub kind: Option<String>,
    /// `m:body`, decompressed.
    pub body: Option<String>,
    /// `m:sent_at`, epoch ms.
    pub sent_at_ms: Option<i64>,
    /// `m:seq`.
    pub seq: Option<u64>,
    /// `m:edited` (edit count, 0 when absent).
    pub edited: u64,
    /// `m:recalled` = `1`.
    pub recalled: bool,
    /// Why the body (or the key) could not be read.
    pub error: Option<String>,
}

/// One inbox entry, as stored in `i:` (DESIGN §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxEntry {
    /// From the row key.
    pub message_id: u64,
    /// From the row key.
    pub user_id: u64,
    /// `i:session`.
    pub session_id: Option<u64>,
    /// `i:sender`.
    pub sender_id: Option<u64>,
    /// `i:kind`.
    pub kind: Option<String>,
    /// `i:preview`.
    pub preview: Option<String>,
}

fn dec<T: FromStr>(cells: &BTreeMap<String, Vec<u8>>, column: &str) -> Option<T> {
    std::str::from_utf8(cells.get(column)?).ok()?.trim().parse().ok()
}

fn text(cells: &BTreeMap<String, Vec<u8>>, column: &str) -> Option<String> {
    cells.get(column).map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Decodes a stored body: plain UTF-8 when `enc` is absent, LZ4 block with a 4-byte
/// little-endian size prefix when it is `lz4`.
pub fn decode_body(raw: &[u8], enc: Option<&[u8]>) -> Result<String, String> {
    let bytes = match enc {
        None | Some(b"") => raw.to_vec(),
        Some(b"lz4") => {
            let size = raw.get(..4).map(|p| u32::from_le_bytes([p[0], p[1], p[2], p[3]]) as usize);
            match size {
                None => return Err("lz4 body shorter than its size prefix".into()),
                Some(n) if n > MAX_BODY_BYTES => return Err(format!("lz4 body claims {n} bytes")),
                Some(_) => lz4_flex::decompress_size_prepended(raw).map_err(|e| format!("lz4: {e}"))?,
            }
        }
        Some(other) => return Err(format!("unknown body encoding {:?}", String::from_utf8_lossy(other))),
    };
    String::from_utf8(bytes).map_err(|e| format!("body is not UTF-8: {e}"))
}

impl TimelineMessage {
    /// Reads a `chat:messages` row.
    pub fn from_row(row: &Row) -> Result<Self, String> {
        let (session_id, message_id) = row_key::decode(&row.row).map_err(|e| e.to_string())?;
        let c = &row.cells;
        let (body, error) = match c.get("m:body") {
            None => (None, None),
            Some(raw) => match decode_body(raw, c.get("m:enc").map(Vec::as_slice)) {
                Ok(b) => (Some(b), None),
                Err(e) => (None, Some(e)),
            },
        };
        Ok(TimelineMessage {
            message_id,
            session_id,
            sender_id: dec(c, "m:sender"),
            kind: text(c, "m:kind"),
            body,
            sent_at_ms: dec(c, "m:sent_at"),
            seq: dec(c, "m:seq"),
            edited: dec(c, "m:edited").unwrap_or(0),
            recalled: c.get("m:recalled").is_some_and(|v| v.as_slice() == b"1"),
            error,
        })
    }

    /// The `--json` object: ids as strings, time in RFC 3339.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = json!({
            "message_id": self.message_id.to_string(),
            "session_id": self.session_id.to_string(),
            "sender_id": self.sender_id.map(|s| s.to_string()),
            "kind": self.kind,
            "body": self.body,
            "sent_at": self.sent_at_ms.map(rfc3339_ms),
            "seq": self.seq,
            "edited": self.edited,
            "recalled": self.recalled,
        });
        if let (Some(e), Some(map)) = (&self.error, v.as_object_mut()) {
            map.insert("error".into(), json!(e));
        }
        v
    }

    /// One text line.
    pub fn to_text(&self) -> String {
        let body = if self.recalled {
            "(recalled)".to_owned()
        } else {
            match (&self.body, &self.error) {
                (Some(b), _) => b.replace('\n', "\\n"),
                (None, Some(e)) => format!("(unreadable body: {e})"),
                (None, None) => String::new(),
            }
        };
        format!(
            "{}  #{}  id={}  from={}  [{}]  {}{}",
            self.sent_at_ms.map(rfc3339_ms).unwrap_or_else(|| "-".into()),
            self.seq.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
            self.message_id,
            self.sender_id.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
            self.kind.as_deref().unwrap_or("-"),
            body,
            if self.edited > 0 { "  (edited)" } else { "" },
        )
    }
}

impl InboxEntry {
    /// Reads a `chat:inbox` row.
    pub fn from_row(row: &Row) -> Result<Self, String> {
        let (user_id, message_id) = row_key::decode(&row.row).map_err(|e| e.to_string())?;
        let c = &row.cells;
        Ok(InboxEntry {
            message_id,
            user_id,
            session_id: dec(c, "i:session"),
            sender_id: dec(c, "i:sender"),
            kind: text(c, "i:kind"),
            preview: text(c, "i:preview"),
        })
    }

    /// The `--json` object: ids as strings.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "message_id": self.message_id.to_string(),
            "user_id": self.user_id.to_string(),
            "session_id": self.session_id.map(|s| s.to_string()),
            "sender_id": self.sender_id.map(|s| s.to_string()),
            "kind": self.kind,
            "preview": self.preview,
        })
    }

    /// One text line.
    pub fn to_text(&self) -> String {
        format!(
            "id={}  session={}  from={}  [{}]  {}",
            self.message_id,
            self.session_id.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
            self.sender_id.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
            self.kind.as_deref().unwrap_or("-"),
            self.preview.as_deref().unwrap_or("").replace('\n', "\\n"),
        )
    }
}

/// The first key after every key that starts with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    Vec::new()
}

/// The newest `limit` rows under `id` (strictly older than `before`), newest first.
fn page(
    client: &mut HbaseClient,
    table: &str,
    family: &str,
    id: u64,
    limit: usize,
    before: Option<u64>,
) -> Result<Vec<Row>, HbaseError> {
    let prefix = row_key::prefix(id);
    let start = match before {
        None => prefix.clone(),
        Some(b) => match row_key::older_than_start(id, b) {
            Some(s) => s,
            None => return Ok(Vec::new()), // nothing is older than message 0
        },
    };
    client.scan(table, start.as_bytes(), &prefix_end(prefix.as_bytes()), &[family], Some(limit))
}

/// A page of a session's timeline, newest first. Rows whose key does not decode are
/// returned with their `error` set (they cannot be under this prefix unless written by
/// something else).
pub fn timeline(
    client: &mut HbaseClient,
    table: &str,
    session: u64,
    limit: usize,
    before: Option<u64>,
) -> Result<Vec<TimelineMessage>, HbaseError> {
    let rows = page(client, table, "m", session, limit, before)?;
    Ok(rows
        .iter()
        .filter_map(|r| match TimelineMessage::from_row(r) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(row = %String::from_utf8_lossy(&r.row), error = %e, "skipping a row with a foreign key");
                None
            }
        })
        .collect())
}

/// A page of a user's inbox, newest first.
pub fn inbox(
    client: &mut HbaseClient,
    user: u64,
    limit: usize,
    before: Option<u64>,
) -> Result<Vec<InboxEntry>, HbaseError> {
    let rows = page(client, tables::INBOX, "i", user, limit, before)?;
    Ok(rows
        .iter()
        .filter_map(|r| match InboxEntry::from_row(r) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(row = %String::from_utf8_lossy(&r.row), error = %e, "skipping a row with a foreign key");
                None
            }
        })
        .collect())
}

/// Runs `chatpipe query`, printing to `out`; the "next page" hint of text output goes to
/// `hint` (stderr), so that `out` stays one message per line.
pub async fn run(
    args: QueryArgs,
    out: &mut (dyn std::io::Write + Send),
    hint: &mut (dyn std::io::Write + Send),
) -> Result<(), QueryError> {
    let (hbase, page_args) = match &args.command {
        QueryCommand::Timeline(t) => (t.hbase.config(), t.page.clone()),
        QueryCommand::Inbox(i) => (i.hbase.config(), i.page.clone()),
    };
    let command = args.command;
    let lines: Vec<(u64, String)> = tokio::task::spawn_blocking(move || -> Result<_, HbaseError> {
        let mut client = HbaseClient::connect(&hbase)?;
        Ok(match command {
            QueryCommand::Timeline(t) => {
                let table = if t.channel { tables::CHANNEL_MESSAGES } else { tables::MESSAGES };
                timeline(&mut client, table, t.session, t.page.limit, t.page.before)?
                    .into_iter()
                    .map(|m| (m.message_id, if t.page.json { m.to_json().to_string() } else { m.to_text() }))
                    .collect()
            }
            QueryCommand::Inbox(i) => inbox(&mut client, i.user, i.page.limit, i.page.before)?
                .into_iter()
                .map(|m| (m.message_id, if i.page.json { m.to_json().to_string() } else { m.to_text() }))
                .collect(),
        })
    })
    .await
    .map_err(|e| HbaseError::Task(e.to_string()))??;
    for (_, line) in &lines {
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    if let (false, true, Some((last, _))) = (page_args.json, lines.len() == page_args.limit, lines.last()) {
        let _ = writeln!(hint, "-- older messages: add --before {last}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_decode_plain_and_lz4() {
        assert_eq!(decode_body(b"hi", None).unwrap(), "hi");
        let long = "long body ".repeat(100);
        let packed = lz4_flex::compress_prepend_size(long.as_bytes());
        assert_eq!(decode_body(&packed, Some(b"lz4")).unwrap(), long);
        assert!(decode_body(&packed[..3], Some(b"lz4")).is_err());
        assert!(decode_body(&[0xFF, 0xFF, 0xFF, 0xFF, 0], Some(b"lz4")).is_err());
        assert!(decode_body(b"x", Some(b"zstd")).is_err());
        assert!(decode_body(&[0xC3, 0x28], None).is_err());
    }

    #[test]
    fn prefix_end_is_the_first_key_after_the_prefix() {
        assert_eq!(prefix_end(b"001|5|"), b"001|5}".to_vec());
        assert_eq!(prefix_end(&[1, 0xFF]), vec![2]);
        assert!(prefix_end(&[0xFF]).is_empty());
    }

    #[test]
    fn a_message_row_reads_back_with_ids_as_strings() {
        let key = row_key::encode(42, 7_000_000_000_123);
        let mut cells = BTreeMap::new();
        cells.insert("m:sender".to_owned(), b"9007199254740993".to_vec());
        cells.insert("m:kind".to_owned(), b"text".to_vec());
        cells.insert("m:body".to_owned(), lz4_flex::compress_prepend_size("héllo".as_bytes()));
        cells.insert("m:enc".to_owned(), b"lz4".to_vec());
        cells.insert("m:sent_at".to_owned(), b"1767225600000".to_vec());
        cells.insert("m:seq".to_owned(), b"3".to_vec());
        cells.insert("m:edited".to_owned(), b"1".to_vec());
        let m = TimelineMessage::from_row(&Row { row: key.into_bytes(), cells }).unwrap();
        assert_eq!(m.message_id, 7_000_000_000_123);
        assert_eq!(m.session_id, 42);
        assert_eq!(m.body.as_deref(), Some("héllo"));
        let j = m.to_json();
        assert_eq!(j["message_id"], "7000000000123");
        assert_eq!(j["sender_id"], "9007199254740993");
        assert_eq!(j["sent_at"], "2026-01-01T00:00:00.000Z");
        assert_eq!(j["seq"], 3);
        assert!(j.get("error").is_none());
        assert!(m.to_text().contains("héllo  (edited)"));
    }
}
