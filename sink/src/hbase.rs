//! The HBase Thrift1 client: one blocking connection ([`HbaseClient`]), a bounded pool of
//! them for async callers ([`HbasePool`]), and the classification of every error as
//! transient (retry) or permanent (DLQ).
//!
//! Thrift calls block, so the pool runs each call on a thread of its own (one per
//! connection), never on an async worker thread; the pool size caps both the calls in
//! progress and the TCP connections. A connection that saw a transport or protocol error
//! is dropped (its stream may hold half a reply) and, since that usually means the server
//! went away, the others are remade before their next call too.
//!
//! Classification follows what HBase's Thrift server raises (`ThriftHBaseServiceHandler`):
//! transport errors and `IOError`s are transient unless the message names an exception
//! HBase itself never retries (`TableNotFoundException`, `NoSuchColumnFamilyException`,
//! `IllegalArgumentException`, `DoNotRetryIOException`) or `canRetry` is false;
//! `IllegalArgument` is permanent. A disabled table (`TableNotEnabledException`) is
//! transient: operators disable tables to alter them and enable them again.
//! `TApplicationException`s are transient too: they mean a server or protocol problem
//! (e.g. a Thrift2 server on the port), which retrying with a bound or an operator fixes;
//! sending every row to the DLQ would not.

use std::collections::BTreeMap;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hbase_thrift::hbase::{
    AlreadyExists, BatchMutation, ColumnDescriptor, HbaseSyncClient, IOError, IllegalArgument, Mutation,
    THbaseSyncClient, TRowResult, TScan,
};
use thrift::protocol::{
    TBinaryInputProtocol, TBinaryOutputProtocol, TCompactInputProtocol, TCompactOutputProtocol, TInputProtocol,
    TOutputProtocol,
};
use thrift::transport::{
    TBufferedReadTransport, TBufferedWriteTransport, TFramedReadTransport, TFramedWriteTransport, TIoChannel,
    TTcpChannel,
};

use crate::batch::{reason, Entry, EntryOp};

/// Transport buffer size: a 2 MiB batch goes out in 64 KiB writes, not 4 KiB ones.
const IO_BUFFER: usize = 64 * 1024;
/// Rows fetched per `scannerGetList`.
const SCAN_PAGE: usize = 1000;

/// The Thrift transports HBase's Thrift server can be started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ThriftTransport {
    /// Messages back to back on the stream (`hbase thrift start`, the default).
    #[default]
    Buffered,
    /// Each message behind a 4-byte length (`hbase thrift start -f`, and the nonblocking
    /// servers `-nonblocking`, `-hsha`, `-threadedselector`, which require it).
    Framed,
}

/// The Thrift protocols HBase's Thrift server can be started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ThriftProtocol {
    /// TBinaryProtocol (`hbase thrift start`, the default).
    #[default]
    Binary,
    /// TCompactProtocol (`hbase thrift start -c`).
    Compact,
}

/// Where and how to reach the Thrift server.
#[derive(Debug, Clone)]
pub struct HbaseConfig {
    /// HOST:PORT.
    pub addr: String,
    /// The server's transport (it must match: a mismatch fails every call).
    pub transport: ThriftTransport,
    /// The server's protocol (it must match).
    pub protocol: ThriftProtocol,
    /// Connect, read and write timeout.
    pub timeout: Duration,
}

impl HbaseConfig {
    /// HBase's defaults (buffered transport, binary protocol) at `addr`, 30 s timeout.
    pub fn new(addr: impl Into<String>) -> Self {
        HbaseConfig {
            addr: addr.into(),
            transport: ThriftTransport::Buffered,
            protocol: ThriftProtocol::Binary,
            timeout: Duration::from_secs(30),
        }
    }
}

/// What went wrong talking to HBase.
#[derive(Debug, thiserror::Error)]
pub enum HbaseError {
    /// No TCP connection could be made.
    #[error("cannot connect to HBase Thrift at {addr}: {message}")]
    Connect {
        /// The configured address.
        addr: String,
        /// Why.
        message: String,
    },
    /// The connection failed mid-call (closed, reset, timed out, garbled).
    #[error("HBase Thrift transport error: {0}")]
    Transport(String),
    /// HBase raised `IOError`.
    #[error("HBase IOError: {message}")]
    Io {
        /// The server's message (usually the Java exception).
        message: String,
        /// Whether retrying may help, per the classification in the module doc.
        retriable: bool,
    },
    /// HBase raised `IllegalArgument`.
    #[error("HBase IllegalArgument: {0}")]
    IllegalArgument(String),
    /// HBase raised `AlreadyExists` (table creation).
    #[error("HBase AlreadyExists: {0}")]
    AlreadyExists(String),
    /// The server answered with a `TApplicationException`.
    #[error("HBase Thrift application error: {0}")]
    Application(String),
    /// The blocking task running the call failed (panicked or was cancelled).
    #[error("HBase call task failed: {0}")]
    Task(String),
}

impl HbaseError {
    /// Whether the same call may succeed later.
    pub fn is_retriable(&self) -> bool {
        match self {
            HbaseError::Connect { .. } | HbaseError::Transport(_) | HbaseError::Application(_) => true,
            HbaseError::Task(_) => true,
            HbaseError::Io { retriable, .. } => *retriable,
            HbaseError::IllegalArgument(_) | HbaseError::AlreadyExists(_) => false,
        }
    }

    /// The DLQ reason of a permanent error.
    pub fn dlq_reason(&self) -> &'static str {
        match self {
            HbaseError::Io { message, .. } if message.contains("TableNotFoundException") => reason::UNKNOWN_TABLE,
            HbaseError::Io { message, .. } if message.contains("NoSuchColumnFamilyException") => reason::UNKNOWN_FAMILY,
            HbaseError::Io { message, .. } if message.contains("IllegalArgumentException") => reason::ILLEGAL_ARGUMENT,
            HbaseError::IllegalArgument(_) => reason::ILLEGAL_ARGUMENT,
            _ if self.is_retriable() => reason::RETRIES_EXHAUSTED,
            _ => reason::REJECTED,
        }
    }

    /// Whether the connection is still in a known state after this error (the server sent a
    /// complete, declared exception).
    fn keeps_connection(&self) -> bool {
        matches!(self, HbaseError::Io { .. } | HbaseError::IllegalArgument(_) | HbaseError::AlreadyExists(_))
    }
}

/// Whether an `IOError` is worth retrying.
fn io_error_is_retriable(message: &str, can_retry: Option<bool>) -> bool {
    const PERMANENT: &[&str] =
        &["TableNotFoundException", "NoSuchColumnFamilyException", "IllegalArgumentException", "DoNotRetryIOException"];
    if message.contains("TableNotEnabledException") {
        return true;
    }
    if PERMANENT.iter().any(|p| message.contains(p)) {
        return false;
    }
    can_retry.unwrap_or(true)
}

impl From<thrift::Error> for HbaseError {
    fn from(e: thrift::Error) -> Self {
        match e {
            thrift::Error::Transport(t) => HbaseError::Transport(t.to_string()),
            thrift::Error::Protocol(p) => HbaseError::Transport(format!("protocol: {p}")),
            thrift::Error::Application(a) => HbaseError::Application(a.to_string()),
            thrift::Error::User(u) => {
                if let Some(io) = u.downcast_ref::<IOError>() {
                    let message = io.message.clone().unwrap_or_default();
                    let retriable = io_error_is_retriable(&message, io.can_retry);
                    HbaseError::Io { message, retriable }
                } else if let Some(ia) = u.downcast_ref::<IllegalArgument>() {
                    HbaseError::IllegalArgument(ia.message.clone().unwrap_or_default())
                } else if let Some(ae) = u.downcast_ref::<AlreadyExists>() {
                    HbaseError::AlreadyExists(ae.message.clone().unwrap_or_default())
                } else {
                    HbaseError::Application(u.to_string())
                }
            }
        }
    }
}

/// The generated client over boxed protocols (so that transport and protocol are flags).
pub type ThriftClient = HbaseSyncClient<Box<dyn TInputProtocol + Send>, Box<dyn TOutputProtocol + Send>>;

/// One row as read back: `family:qualifier` → latest value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The row key.
    pub row: Vec<u8>,
    /// Its cells.
    pub cells: BTreeMap<String, Vec<u8>>,
}

impl From<TRowResult> for Row {
    fn from(r: TRowResult) -> Self {
        let mut cells = BTreeMap::new();
        for (name, cell) in r.columns.into_iter().flatten() {
            cells.insert(String::from_utf8_lossy(&name).into_owned(), cell.value.unwrap_or_default());
        }
        for c in r.sorted_columns.into_iter().flatten() {
            let name = String::from_utf8_lossy(&c.column_name.unwrap_or_default()).into_owned();
            cells.insert(name, c.cell.and_then(|c| c.value).unwrap_or_default());
        }
        Row { row: r.row.unwrap_or_default(), cells }
    }
}

/// One blocking Thrift connection.
pub struct HbaseClient {
    inner: ThriftClient,
}

impl std::fmt::Debug for HbaseClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HbaseClient")
    }
}

fn no_attributes() -> BTreeMap<Vec<u8>, Vec<u8>> {
    BTreeMap::new()
}

impl HbaseClient {
    /// Connects (blocking), trying every address `config.addr` resolves to.
    pub fn connect(config: &HbaseConfig) -> Result<Self, HbaseError> {
        let connect_error = |message: String| HbaseError::Connect { addr: config.addr.clone(), message };
        let addrs = config.addr.to_socket_addrs().map_err(|e| connect_error(e.to_string()))?;
        let mut last = connect_error("the address resolves to nothing".into());
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, config.timeout) {
                Ok(stream) => return Self::over(stream, config).map_err(|e| connect_error(e.to_string())),
                Err(e) => last = connect_error(e.to_string()),
            }
        }
        Err(last)
    }

    fn over(stream: TcpStream, config: &HbaseConfig) -> std::io::Result<Self> {
        stream.set_read_timeout(Some(config.timeout))?;
        stream.set_write_timeout(Some(config.timeout))?;
        stream.set_nodelay(true)?;
        let (r, w) = TTcpChannel::with_stream(stream).split().map_err(|e| std::io::Error::other(e.to_string()))?;
        let (r, w): (Box<dyn std::io::Read + Send>, Box<dyn std::io::Write + Send>) =
            if config.transport == ThriftTransport::Framed {
                (
                    Box::new(TFramedReadTransport::with_capacity(IO_BUFFER, r)),
                    Box::new(TFramedWriteTransport::with_capacity(IO_BUFFER, w)),
                )
            } else {
                (
                    Box::new(TBufferedReadTransport::with_capacity(IO_BUFFER, r)),
                    Box::new(TBufferedWriteTransport::with_capacity(IO_BUFFER, w)),
                )
            };
        let (i, o): (Box<dyn TInputProtocol + Send>, Box<dyn TOutputProtocol + Send>) =
            if config.protocol == ThriftProtocol::Compact {
                (Box::new(TCompactInputProtocol::new(r)), Box::new(TCompactOutputProtocol::new(w)))
            } else {
                (Box::new(TBinaryInputProtocol::new(r, true)), Box::new(TBinaryOutputProtocol::new(w, true)))
            };
        Ok(HbaseClient { inner: HbaseSyncClient::new(i, o) })
    }

    /// The generated client, for calls this wrapper does not cover.
    pub fn thrift(&mut self) -> &mut ThriftClient {
        &mut self.inner
    }

    /// `mutateRows` with server timestamps.
    pub fn mutate_rows(&mut self, table: &str, batches: Vec<BatchMutation>) -> Result<(), HbaseError> {
        Ok(self.inner.mutate_rows(table.as_bytes().to_vec(), batches, no_attributes())?)
    }

    /// `deleteAllRow`: every cell of the row, up to the server's now.
    pub fn delete_all_row(&mut self, table: &str, row: &[u8]) -> Result<(), HbaseError> {
        Ok(self.inner.delete_all_row(table.as_bytes().to_vec(), row.to_vec(), no_attributes())?)
    }

    /// Names of every table.
    pub fn table_names(&mut self) -> Result<Vec<String>, HbaseError> {
        Ok(self.inner.get_table_names()?.into_iter().map(|n| String::from_utf8_lossy(&n).into_owned()).collect())
    }

    /// A table's families (names without the trailing `:`).
    pub fn families(&mut self, table: &str) -> Result<BTreeMap<String, ColumnDescriptor>, HbaseError> {
        let cds = self.inner.get_column_descriptors(table.as_bytes().to_vec())?;
        Ok(cds
            .into_iter()
            .map(|(name, cd)| {
                let name = String::from_utf8_lossy(&name).trim_end_matches(':').to_owned();
                (name, cd)
            })
            .collect())
    }

    /// `createTable`.
    pub fn create_table(&mut self, table: &str, families: Vec<ColumnDescriptor>) -> Result<(), HbaseError> {
        Ok(self.inner.create_table(table.as_bytes().to_vec(), families)?)
    }

    /// Rows in `[start, stop)` (`stop` empty: to the end), at most `limit`, `columns`
    /// (`family` or `family:qualifier`; empty: all), in row-key order.
    pub fn scan(
        &mut self,
        table: &str,
        start: &[u8],
        stop: &[u8],
        columns: &[&str],
        limit: Option<usize>,
    ) -> Result<Vec<Row>, HbaseError> {
        self.scan_ordered(table, start, stop, columns, limit, false)
    }

    /// [`Self::scan`], or with `reversed` HBase's reversed scan: rows from `start` (inclusive,
    /// the larger key) down to `stop` (exclusive, the smaller key; empty: to the beginning),
    /// in descending row-key order.
    pub fn scan_ordered(
        &mut self,
        table: &str,
        start: &[u8],
        stop: &[u8],
        columns: &[&str],
        limit: Option<usize>,
        reversed: bool,
    ) -> Result<Vec<Row>, HbaseError> {
        let page = limit.unwrap_or(SCAN_PAGE).clamp(1, SCAN_PAGE);
        let scan = TScan {
            start_row: Some(start.to_vec()),
            stop_row: (!stop.is_empty()).then(|| stop.to_vec()),
            timestamp: None,
            columns: (!columns.is_empty()).then(|| columns.iter().map(|c| c.as_bytes().to_vec()).collect()),
            caching: i32::try_from(page).ok(),
            filter_string: None,
            batch_size: None,
            sort_columns: None,
            reversed: reversed.then_some(true),
            cache_blocks: None,
        };
        let id = self.inner.scanner_open_with_scan(table.as_bytes().to_vec(), scan, no_attributes())?;
        let result = self.drain_scanner(id, page, limit);
        let closed = self.inner.scanner_close(id);
        let rows = result?;
        closed?;
        Ok(rows)
    }

    fn drain_scanner(&mut self, id: i32, page: usize, limit: Option<usize>) -> Result<Vec<Row>, HbaseError> {
        let mut out = Vec::new();
        loop {
            let want = limit.map_or(page, |l| l.saturating_sub(out.len()).min(page));
            if want == 0 {
                return Ok(out);
            }
            let rows = self.inner.scanner_get_list(id, i32::try_from(want).unwrap_or(i32::MAX))?;
            if rows.is_empty() {
                return Ok(out);
            }
            out.extend(rows.into_iter().map(Row::from));
        }
    }

    /// Every row of a table (tests, small tables).
    pub fn scan_all(&mut self, table: &str) -> Result<Vec<Row>, HbaseError> {
        self.scan(table, b"", b"", &[], None)
    }
}

/// The `BatchMutation` of a write entry (`None` for a row delete, which is `deleteAllRow`).
pub fn batch_mutation(entry: &Entry) -> Option<BatchMutation> {
    let EntryOp::Write { puts, deletes } = &entry.op else {
        return None;
    };
    let mut mutations = Vec::with_capacity(puts.len() + deletes.len());
    for (column, value) in puts {
        mutations.push(Mutation {
            is_delete: Some(false),
            column: Some(column.as_bytes().to_vec()),
            value: Some(value.clone()),
            write_to_w_a_l: Some(true),
        });
    }
    for column in deletes {
        mutations.push(Mutation {
            is_delete: Some(true),
            column: Some(column.as_bytes().to_vec()),
            value: None,
            write_to_w_a_l: Some(true),
        });
    }
    Some(BatchMutation { row: Some(entry.row.clone()), mutations: Some(mutations) })
}

/// A call waiting for a connection thread.
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// One connection thread's connection (made on first use, remade after a failure).
struct Connection {
    config: HbaseConfig,
    client: Option<HbaseClient>,
    /// The pool's `dead_epoch` when this connection was made.
    epoch: u64,
    shared: Arc<PoolShared>,
}

impl Connection {
    fn run<T>(&mut self, f: impl FnOnce(&mut HbaseClient) -> Result<T, HbaseError>) -> Result<T, HbaseError> {
        let shared = Arc::clone(&self.shared);
        let dead_epoch = shared.dead_epoch.load(Ordering::Relaxed);
        if self.epoch < dead_epoch {
            self.client = None; // another connection saw the server go away
        }
        let client = match &mut self.client {
            Some(c) => c,
            None => {
                let result = HbaseClient::connect(&self.config);
                let c = result.inspect_err(|_| {
                    shared.dead_epoch.fetch_add(1, Ordering::Relaxed);
                })?;
                self.epoch = dead_epoch;
                self.client.insert(c)
            }
        };
        let result = f(client);
        if let Err(e) = &result {
            if !e.keeps_connection() {
                // the stream may hold half a reply; the server probably went away
                self.client = None;
                shared.dead_epoch.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }
}

struct PoolShared {
    /// The queue of calls; a connection thread takes the next one as soon as it is free.
    jobs: Mutex<std::sync::mpsc::Receiver<Job>>,
    /// Bumped when a call finds the server gone: older connections are remade.
    dead_epoch: AtomicU64,
}

/// A bounded pool of HBase connections for async code: `size` threads, each owning one
/// connection, take calls from one queue. Thrift calls block, so they run on these threads,
/// never on the async runtime's workers; a connection goes straight from one call to the
/// next queued one. The queue is bounded by its callers (each in-flight batch has at most
/// one call outstanding). The threads end when the last clone of the pool is dropped.
#[derive(Clone)]
pub struct HbasePool {
    config: HbaseConfig,
    size: usize,
    jobs: std::sync::mpsc::Sender<Job>,
}

impl std::fmt::Debug for HbasePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HbasePool").field("config", &self.config).field("size", &self.size).finish()
    }
}

impl HbasePool {
    /// A pool of `size` connections (made on first use).
    pub fn new(config: HbaseConfig, size: usize) -> Self {
        let size = size.max(1);
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let shared = Arc::new(PoolShared { jobs: Mutex::new(rx), dead_epoch: AtomicU64::new(0) });
        for i in 0..size {
            let shared = Arc::clone(&shared);
            let mut conn = Connection { config: config.clone(), client: None, epoch: 0, shared: Arc::clone(&shared) };
            let spawned = std::thread::Builder::new().name(format!("hbase-conn-{i}")).spawn(move || loop {
                let job = {
                    let rx = shared.jobs.lock().unwrap_or_else(|p| p.into_inner());
                    match rx.recv() {
                        Ok(job) => job,
                        Err(_) => return, // the pool is gone
                    }
                };
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut conn))).is_err() {
                    conn.client = None; // the caller sees its call dropped
                }
            });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start an HBase connection thread");
            }
        }
        HbasePool { config, size, jobs: tx }
    }

    /// Connections (threads) in the pool.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Runs `f` on the next free connection, on the connection's thread.
    pub async fn call<T, F>(&self, f: F) -> Result<T, HbaseError>
    where
        F: FnOnce(&mut HbaseClient) -> Result<T, HbaseError> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |conn: &mut Connection| {
            let _ = tx.send(conn.run(f));
        });
        self.jobs.send(job).map_err(|_| HbaseError::Task("the HBase connection threads are gone".into()))?;
        rx.await.map_err(|_| HbaseError::Task("the HBase call was dropped (its thread panicked)".into()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(message: &str, can_retry: Option<bool>) -> HbaseError {
        HbaseError::from(thrift::Error::User(Box::new(IOError { message: Some(message.into()), can_retry })))
    }

    #[test]
    fn errors_are_classified_as_hbase_raises_them() {
        let e = io("org.apache.hadoop.hbase.TableNotFoundException: chat:nope", Some(false));
        assert!(!e.is_retriable());
        assert_eq!(e.dlq_reason(), reason::UNKNOWN_TABLE);
        // real HBase wraps it in RetriesExhaustedWithDetailsException with canRetry = true
        let e = io("RetriesExhaustedWithDetailsException: ... NoSuchColumnFamilyException: x", Some(true));
        assert!(!e.is_retriable());
        assert_eq!(e.dlq_reason(), reason::UNKNOWN_FAMILY);
        let e = io("java.lang.IllegalArgumentException: Row length is 0", None);
        assert_eq!(e.dlq_reason(), reason::ILLEGAL_ARGUMENT);
        assert!(io("storage error: disk full", Some(true)).is_retriable());
        assert!(io("org.apache.hadoop.hbase.TableNotEnabledException: t is disabled", Some(false)).is_retriable());
        assert!(!io("org.apache.hadoop.hbase.DoNotRetryIOException: no", None).is_retriable());
        assert!(!io("something", Some(false)).is_retriable());
        assert!(io("region server busy", None).is_retriable());
        let ia = HbaseError::from(thrift::Error::User(Box::new(IllegalArgument { message: Some("bad".into()) })));
        assert!(!ia.is_retriable());
        assert_eq!(ia.dlq_reason(), reason::ILLEGAL_ARGUMENT);
        let t = HbaseError::from(thrift::Error::Transport(thrift::TransportError::new(
            thrift::TransportErrorKind::EndOfFile,
            "closed",
        )));
        assert!(t.is_retriable());
        assert!(!t.keeps_connection());
        assert_eq!(t.dlq_reason(), reason::RETRIES_EXHAUSTED);
    }

    #[test]
    fn entries_become_batch_mutations() {
        let e = Entry {
            table: "t".into(),
            row: b"r".to_vec(),
            op: EntryOp::Write { puts: vec![("m:a".into(), b"1".to_vec())], deletes: vec!["m:b".into()] },
            sources: vec![0],
        };
        let b = batch_mutation(&e).unwrap();
        let ms = b.mutations.unwrap();
        assert_eq!(ms.len(), 2);
        assert_eq!(ms[0].is_delete, Some(false));
        assert_eq!(ms[1].column.as_deref(), Some(&b"m:b"[..]));
        let d = Entry { op: EntryOp::DeleteRow, ..e };
        assert!(batch_mutation(&d).is_none());
    }

    #[tokio::test]
    async fn an_unreachable_server_is_a_transient_connect_error() {
        // a port nothing listens on: bind, note the port, release it
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut config = HbaseConfig::new(format!("127.0.0.1:{port}"));
        config.timeout = Duration::from_secs(1);
        let pool = HbasePool::new(config, 2);
        let err = pool.call(|c| c.table_names()).await.unwrap_err();
        assert!(matches!(err, HbaseError::Connect { .. }), "{err}");
        assert!(err.is_retriable());
        assert_eq!(pool.size(), 2, "the permit is returned");
    }

    /// The client against an emulator in each transport × protocol HBase offers: writes and
    /// reads round-trip; a client with the wrong transport fails instead of hanging.
    #[test]
    fn the_client_speaks_every_transport_and_protocol() {
        use chatpipe_hbase_emulator::{Config as EmulatorConfig, ThriftProtocol as P, ThriftTransport as T};
        let wires = [
            (T::Buffered, P::Binary, ThriftTransport::Buffered, ThriftProtocol::Binary),
            (T::Framed, P::Binary, ThriftTransport::Framed, ThriftProtocol::Binary),
            (T::Buffered, P::Compact, ThriftTransport::Buffered, ThriftProtocol::Compact),
            (T::Framed, P::Compact, ThriftTransport::Framed, ThriftProtocol::Compact),
        ];
        for (server_transport, server_protocol, transport, protocol) in wires {
            let config =
                EmulatorConfig::in_memory("127.0.0.1:0".parse().unwrap()).with_wire(server_transport, server_protocol);
            let emulator = chatpipe_hbase_emulator::start(config).unwrap();
            let mut config = HbaseConfig::new(emulator.local_addr().to_string());
            config.transport = transport;
            config.protocol = protocol;
            let mut c = HbaseClient::connect(&config).unwrap();
            let family = ColumnDescriptor {
                name: Some(b"f:".to_vec()),
                max_versions: Some(1),
                compression: Some("NONE".into()),
                in_memory: Some(false),
                bloom_filter_type: Some("NONE".into()),
                bloom_filter_vector_size: Some(0),
                bloom_filter_nb_hashes: Some(0),
                block_cache_enabled: Some(false),
                time_to_live: Some(-1),
            };
            c.create_table("t", vec![family]).unwrap();
            let put = |v: &str| Mutation {
                is_delete: Some(false),
                column: Some(b"f:q".to_vec()),
                value: Some(v.as_bytes().to_vec()),
                write_to_w_a_l: Some(true),
            };
            let batches = ["r1", "r2"]
                .iter()
                .map(|r| BatchMutation { row: Some(r.as_bytes().to_vec()), mutations: Some(vec![put(r)]) })
                .collect();
            c.mutate_rows("t", batches).unwrap();
            let rows = c.scan_all("t").unwrap();
            assert_eq!(rows.len(), 2, "{transport:?}/{protocol:?}");

            // The other transport: an error within the timeout, never a hang or a success.
            let mut wrong = HbaseConfig::new(emulator.local_addr().to_string());
            wrong.transport =
                if transport == ThriftTransport::Framed { ThriftTransport::Buffered } else { ThriftTransport::Framed };
            wrong.protocol = protocol;
            wrong.timeout = Duration::from_secs(3);
            let mut w = HbaseClient::connect(&wrong).unwrap();
            assert!(w.table_names().is_err(), "{transport:?}/{protocol:?} served a mismatched client");
        }
    }
}
