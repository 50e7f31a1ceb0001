//! The storage and the HBase semantics, without Thrift: tables with column families, cells
//! with versions, delete markers, TTL, counters, row-range scans.
//!
//! **Durability.** Every mutating call is committed in a redb write transaction before it
//! returns. With [`Durability::Os`] (the default) the commit has reached the operating
//! system when the client is answered: it survives a kill -9 of the emulator, as a write
//! HBase acknowledges by default (WAL `hflush`, not `hsync`) survives a RegionServer crash,
//! but not a power loss. [`Durability::Fsync`] also waits for the disk (fsync) and survives
//! a power loss. Reads use redb's MVCC snapshots and never block writes.
//!
//! **Semantics, as HBase has them.** Rows, families and qualifiers sort bytewise; versions
//! newest first. A delete is a marker ("every version of this column / family with a
//! timestamp ≤ T"); it is kept, so it also masks puts with an older timestamp that arrive
//! later, as in HBase before a major compaction. Puts it masks are removed at once (and a
//! masked put is not stored), which is what a compaction would do. A family keeps at most
//! `maxVersions` versions per column (older ones are dropped on write, as a flush or
//! compaction does); reads never return more. Cells older than the family's TTL are never
//! returned. Counters are 8-byte big-endian longs.
//!
//! **Layout.** One redb entry per row (`keys.rs`: `table id ‖ row`; value: `row.rs`), so a
//! new row is one insert and a scan reads one entry per row; a write reads, changes and
//! rewrites its rows (fine for HBase-style narrow rows; a very wide row costs its size per
//! write). Table metadata lives in its own redb table and in an in-memory map guarded by a
//! lock that data writes hold shared and DDL holds exclusive, so a table cannot vanish under
//! a write.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io;
use std::ops::Bound;
use std::path::Path;
use std::sync::{mpsc, Arc};

use parking_lot::RwLock;
use redb::{Database, ReadableTable, TableDefinition};

use crate::filter::{CellRef, Filter};
use crate::keys;
use crate::row::{Reader, Row};

/// Rows (`row.rs` encoding), keyed as [`crate::keys`] describes.
const ROWS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("rows");
/// Table name → encoded [`TableMeta`].
const TABLES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tables");
/// Named counters (the next table id).
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const NEXT_TABLE_ID: &str = "next_table_id";

/// HBase's `HConstants.FOREVER`: a TTL that never expires.
pub const TTL_FOREVER: i32 = i32::MAX;
/// HBase's `HConstants.LATEST_TIMESTAMP`: "the server's current time".
pub const LATEST_TIMESTAMP: i64 = i64::MAX;

/// Errors of the store; each maps to the exception HBase's Thrift server would raise.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("org.apache.hadoop.hbase.TableNotFoundException: {0}")]
    TableNotFound(String),
    #[error("table name already in use: {0}")]
    TableExists(String),
    #[error("org.apache.hadoop.hbase.TableNotEnabledException: {0} is disabled")]
    TableDisabled(String),
    #[error("org.apache.hadoop.hbase.TableNotDisabledException: {0} is enabled")]
    TableNotDisabled(String),
    #[error(
        "org.apache.hadoop.hbase.regionserver.NoSuchColumnFamilyException: \
         Column family {family} does not exist in table {table}"
    )]
    NoSuchFamily { table: String, family: String },
    /// A bad argument: maps to Thrift's `IllegalArgument` where the method declares it.
    #[error("java.lang.IllegalArgumentException: {0}")]
    IllegalArgument(String),
    /// A request HBase refuses with a (non-retriable) IOException.
    #[error("org.apache.hadoop.hbase.DoNotRetryIOException: {0}")]
    Refused(String),
    /// The embedded store failed; the operation may be retried.
    #[error("storage error: {0}")]
    Storage(String),
}

impl StoreError {
    /// Whether retrying the same request may succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(self, StoreError::Storage(_))
    }
}

macro_rules! storage_error_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Storage(e.to_string())
            }
        }
    )*};
}
storage_error_from!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A column family's settings, as Thrift1's `ColumnDescriptor` carries them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyDescriptor {
    /// The family name, without the trailing `:`.
    pub name: Vec<u8>,
    pub max_versions: i32,
    /// Upper-case algorithm name (`NONE`, `GZ`, `SNAPPY`, …): recorded, not applied.
    pub compression: String,
    pub in_memory: bool,
    /// `NONE`, `ROW`, `ROWCOL`, …: recorded, not applied.
    pub bloom_filter_type: String,
    pub block_cache_enabled: bool,
    /// Seconds; [`TTL_FOREVER`] means no expiry.
    pub time_to_live: i32,
}

impl FamilyDescriptor {
    /// A family with Thrift1's defaults (3 versions, no TTL, no compression).
    pub fn new(name: impl Into<Vec<u8>>) -> Self {
        FamilyDescriptor {
            name: name.into(),
            max_versions: 3,
            compression: "NONE".into(),
            in_memory: false,
            bloom_filter_type: "NONE".into(),
            block_cache_enabled: false,
            time_to_live: TTL_FOREVER,
        }
    }

    /// Checks the descriptor as HBase's `HColumnDescriptor` does; normalises names.
    pub fn validate(mut self) -> Result<Self, StoreError> {
        let bad = |m: String| Err(StoreError::IllegalArgument(m));
        if self.name.is_empty() {
            return bad("Column Family name can not be empty".into());
        }
        if self.name[0] == b'.' {
            return bad(format!("Column Family names cannot start with a period: {}", show(&self.name)));
        }
        if self.name.iter().any(|&b| b == b':' || b.is_ascii_control()) {
            return bad(format!(
                "Column Family names cannot contain control characters or colons: {}",
                show(&self.name)
            ));
        }
        if self.max_versions <= 0 {
            return bad(format!("Maximum versions must be positive: {}", self.max_versions));
        }
        let compression = self.compression.to_ascii_lowercase();
        self.compression = match compression.as_str() {
            "none" | "gz" | "lzo" | "snappy" | "lz4" | "bzip2" | "zstd" | "lzma" | "brotli" => {
                compression.to_ascii_uppercase()
            }
            _ => return bad(format!("Unsupported compression algorithm: {}", self.compression)),
        };
        match self.bloom_filter_type.as_str() {
            "NONE" | "ROW" | "ROWCOL" | "ROWPREFIX_FIXED_LENGTH" | "ROWPREFIX_DELIMITED" => {}
            other => return bad(format!("No enum constant org.apache.hadoop.hbase.regionserver.BloomType.{other}")),
        }
        if self.time_to_live <= 0 {
            self.time_to_live = TTL_FOREVER;
        }
        Ok(self)
    }
}

/// A table's descriptor and state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableMeta {
    /// Key prefix of the table's cells; never reused.
    pub id: u32,
    pub name: Vec<u8>,
    /// Sorted by name.
    pub families: Vec<FamilyDescriptor>,
    pub enabled: bool,
    /// The region boundaries reported by `getTableRegions`.
    pub split_points: Vec<Vec<u8>>,
    /// Creation time (ms), used as the region id.
    pub created_ms: i64,
}

impl TableMeta {
    pub fn family(&self, name: &[u8]) -> Option<&FamilyDescriptor> {
        self.families.binary_search_by(|f| f.name.as_slice().cmp(name)).ok().map(|i| &self.families[i])
    }

    fn require_family(&self, name: &[u8]) -> Result<&FamilyDescriptor, StoreError> {
        self.family(name).ok_or_else(|| StoreError::NoSuchFamily { table: show(&self.name), family: show(name) })
    }

    fn require_enabled(&self) -> Result<(), StoreError> {
        if self.enabled {
            Ok(())
        } else {
            Err(StoreError::TableDisabled(show(&self.name)))
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(128);
        w.push(1u8); // encoding version
        w.extend_from_slice(&self.id.to_be_bytes());
        put_bytes(&mut w, &self.name);
        w.push(u8::from(self.enabled));
        w.extend_from_slice(&self.created_ms.to_be_bytes());
        w.extend_from_slice(&(self.families.len() as u32).to_be_bytes());
        for f in &self.families {
            put_bytes(&mut w, &f.name);
            w.extend_from_slice(&f.max_versions.to_be_bytes());
            put_bytes(&mut w, f.compression.as_bytes());
            w.push(u8::from(f.in_memory));
            put_bytes(&mut w, f.bloom_filter_type.as_bytes());
            w.push(u8::from(f.block_cache_enabled));
            w.extend_from_slice(&f.time_to_live.to_be_bytes());
        }
        w.extend_from_slice(&(self.split_points.len() as u32).to_be_bytes());
        for s in &self.split_points {
            put_bytes(&mut w, s);
        }
        w
    }

    fn decode(bytes: &[u8]) -> Option<TableMeta> {
        let mut r = Reader(bytes);
        if r.u8()? != 1 {
            return None;
        }
        let id = r.u32()?;
        let name = r.bytes()?;
        let enabled = r.u8()? != 0;
        let created_ms = r.u64()? as i64;
        let n = r.u32()?;
        let mut families = Vec::new();
        for _ in 0..n {
            families.push(FamilyDescriptor {
                name: r.bytes()?,
                max_versions: r.u32()? as i32,
                compression: String::from_utf8(r.bytes()?).ok()?,
                in_memory: r.u8()? != 0,
                bloom_filter_type: String::from_utf8(r.bytes()?).ok()?,
                block_cache_enabled: r.u8()? != 0,
                time_to_live: r.u32()? as i32,
            });
        }
        let n = r.u32()?;
        let mut split_points = Vec::new();
        for _ in 0..n {
            split_points.push(r.bytes()?);
        }
        Some(TableMeta { id, name, families, enabled, split_points, created_ms })
    }
}

fn put_bytes(w: &mut Vec<u8>, b: &[u8]) {
    w.extend_from_slice(&(b.len() as u32).to_be_bytes());
    w.extend_from_slice(b);
}

/// Checks a table name as HBase's `TableName` does: `[namespace:]qualifier`, namespace of
/// `[A-Za-z0-9_]`, qualifier of `[A-Za-z0-9_.-]` not starting with `.` or `-`.
pub fn validate_table_name(name: &[u8]) -> Result<(), StoreError> {
    let bad = |why: &str| Err(StoreError::IllegalArgument(format!("Illegal table name {:?}: {why}", show(name))));
    let (namespace, qualifier) = match name.iter().position(|&b| b == b':') {
        Some(i) => (Some(&name[..i]), &name[i + 1..]),
        None => (None, name),
    };
    if let Some(ns) = namespace {
        if ns.is_empty() || !ns.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_') {
            return bad("namespace must be [A-Za-z0-9_]+");
        }
    }
    if qualifier.is_empty() {
        return bad("qualifier is empty");
    }
    if qualifier[0] == b'.' || qualifier[0] == b'-' {
        return bad("qualifier must not start with '.' or '-'");
    }
    if !qualifier.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) {
        return bad("qualifier must be [A-Za-z0-9_.-]+");
    }
    Ok(())
}

/// One change to a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        family: Vec<u8>,
        qualifier: Vec<u8>,
        value: Vec<u8>,
    },
    /// Every version ≤ ts of one column (HBase `Delete.addColumns`).
    DeleteColumn {
        family: Vec<u8>,
        qualifier: Vec<u8>,
    },
    /// Every cell ≤ ts of one family (HBase `Delete.addFamily`).
    DeleteFamily {
        family: Vec<u8>,
    },
    /// Every cell ≤ ts of the row: a family marker for every family (HBase `new Delete(row)`).
    DeleteRow,
}

/// Adds `amount` to the counter in `family:qualifier` of `row`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Increment {
    pub row: Vec<u8>,
    pub family: Vec<u8>,
    pub qualifier: Vec<u8>,
    pub amount: i64,
}

/// The changes to one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowMutation {
    pub row: Vec<u8>,
    pub ops: Vec<Op>,
}

/// One version of one cell, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub family: Vec<u8>,
    pub qualifier: Vec<u8>,
    pub ts: i64,
    pub value: Vec<u8>,
}

/// A row and its cells (family, qualifier ascending; versions newest first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowCells {
    pub row: Vec<u8>,
    pub cells: Vec<Cell>,
}

/// A column selector as HBase's `Get.addFamily` / `addColumn` build it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnSel {
    Family(Vec<u8>),
    Column(Vec<u8>, Vec<u8>),
}

/// What a read returns of each row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadSpec {
    /// Empty: every family.
    pub columns: Vec<ColumnSel>,
    /// Only versions with a timestamp strictly below (HBase `setTimeRange(0, ts)`).
    pub max_ts_exclusive: Option<i64>,
    /// Versions per column, capped by the family's `maxVersions`.
    pub versions: u32,
}

impl Default for ReadSpec {
    fn default() -> Self {
        ReadSpec { columns: Vec::new(), max_ts_exclusive: None, versions: 1 }
    }
}

/// `columns` resolved as HBase resolves a Get's family map: `None` = the whole family.
type Selection = BTreeMap<Vec<u8>, Option<BTreeSet<Vec<u8>>>>;

fn resolve_selection(meta: &TableMeta, columns: &[ColumnSel]) -> Result<Selection, StoreError> {
    let mut sel = Selection::new();
    for c in columns {
        match c {
            ColumnSel::Family(f) => {
                meta.require_family(f)?;
                sel.insert(f.clone(), None);
            }
            ColumnSel::Column(f, q) => {
                meta.require_family(f)?;
                match sel.get_mut(f) {
                    Some(Some(set)) => {
                        set.insert(q.clone());
                    }
                    _ => {
                        sel.insert(f.clone(), Some(BTreeSet::from([q.clone()])));
                    }
                }
            }
        }
    }
    Ok(sel)
}

/// A position in a scan: the key range still to read.
#[derive(Debug, Clone)]
pub struct ScanCursor {
    table_id: u32,
    table: Vec<u8>,
    /// Inclusive lower key bound.
    lo: Vec<u8>,
    /// Exclusive upper key bound; `None`: the end of the key space.
    hi: Option<Vec<u8>>,
    reversed: bool,
    exhausted: bool,
    rows_returned: u64,
}

impl ScanCursor {
    /// Whether the scan has returned its last row.
    pub fn is_exhausted(&self) -> bool {
        self.exhausted
    }
}

/// Parameters of a scan.
#[derive(Debug, Clone, Default)]
pub struct ScanSpec {
    /// Forward: first row (inclusive). Reversed: the highest row (inclusive). Empty: the end.
    pub start_row: Vec<u8>,
    /// Forward: end (exclusive). Reversed: the lowest row (exclusive). Empty: the end.
    pub stop_row: Vec<u8>,
    pub reversed: bool,
    pub read: ReadSpec,
    pub filter: Filter,
}

/// What [`Store::scan_next`] needs besides the cursor: the validated spec.
#[derive(Debug, Clone)]
pub struct PreparedScan {
    selection: Selection,
    read: ReadSpec,
    filter: Filter,
}

/// The embedded store.
pub struct Store {
    db: Arc<Database>,
    tables: RwLock<BTreeMap<Vec<u8>, Arc<TableMeta>>>,
    /// Hands `mutate` calls to the group committer; `None` once the store is closing.
    committer: Option<mpsc::Sender<WriteRequest>>,
    committer_thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Store {
    fn drop(&mut self) {
        // Closing the channel ends the committer once it has answered every request.
        self.committer = None;
        if let Some(t) = self.committer_thread.take() {
            let _ = t.join();
        }
    }
}

/// Most rows the group committer puts into one transaction.
const MAX_GROUP_ROWS: usize = 20_000;

/// One `mutate` call waiting for the group committer.
struct WriteRequest {
    meta: Arc<TableMeta>,
    rows: Vec<RowMutation>,
    ts: i64,
    reply: mpsc::SyncSender<Result<(), StoreError>>,
}

/// Group commit: `mutate` calls from concurrent connections that arrive while a commit is
/// under way are applied together in the next transaction, with one fsync for all of them,
/// and each caller is answered only after that commit. Requests are applied in arrival
/// order, so the result is that of committing them one by one. Only `mutate` goes this way:
/// its validation is done before it is queued, so applying it cannot fail for one request
/// alone (a storage error fails the whole group, and every caller sees it).
fn run_committer(db: Arc<Database>, requests: mpsc::Receiver<WriteRequest>) {
    while let Ok(first) = requests.recv() {
        let mut rows = first.rows.len();
        let mut group = vec![first];
        while rows < MAX_GROUP_ROWS {
            match requests.try_recv() {
                Ok(r) => {
                    rows += r.rows.len();
                    group.push(r);
                }
                Err(_) => break,
            }
        }
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| commit_group(&db, &group)))
            .unwrap_or_else(|_| Err(StoreError::Storage("the write failed unexpectedly".into())));
        for r in group {
            let _ = r.reply.send(result.clone());
        }
    }
}

fn commit_group(db: &Database, group: &[WriteRequest]) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(ROWS)?;
        for req in group {
            let mut w = Writer { rows: &mut table, meta: &req.meta };
            for rm in &req.rows {
                // Most rows written are new: write them as if they were (one B-tree walk
                // instead of a lookup and an insert), and redo the few that were not.
                let mut row = Row::default();
                for op in &rm.ops {
                    w.apply(&mut row, op, req.ts);
                }
                let key = keys::row_key(req.meta.id, &rm.row);
                let previous = w.rows.insert(key.as_slice(), row.encode().as_slice())?.map(|old| old.value().to_vec());
                if let Some(previous) = previous {
                    let mut row = decode_row(&previous)?;
                    for op in &rm.ops {
                        w.apply(&mut row, op, req.ts);
                    }
                    w.save(&rm.row, &row)?;
                }
            }
        }
    }
    txn.commit()?;
    Ok(())
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("tables", &self.tables.read().len()).finish()
    }
}

/// When an acknowledged write is safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Durability {
    /// Written to the operating system before the reply: survives a crash or kill of the
    /// emulator, not of the machine.
    #[default]
    Os,
    /// Also fsync'd before the reply: survives a power loss; costs a disk flush per commit.
    Fsync,
}

/// redb's file backend, with the per-commit fsync skipped under [`Durability::Os`].
///
/// A process crash keeps every completed write (they are in the page cache, in order), so
/// redb recovers to the last commit. A machine crash can lose recent commits and, without
/// the ordering fsync gives, leave the file for redb's repair or worse: `Fsync` is for
/// data that must outlive the machine. The file is synced once when the store closes.
#[derive(Debug)]
struct StoreFile {
    file: redb::backends::FileBackend,
    durability: Durability,
}

impl Drop for StoreFile {
    fn drop(&mut self) {
        if let Err(e) = redb::StorageBackend::sync_data(&self.file, false) {
            tracing::warn!(error = %e, "syncing the store file on close failed");
        }
    }
}

impl redb::StorageBackend for StoreFile {
    fn len(&self) -> Result<u64, io::Error> {
        self.file.len()
    }

    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, io::Error> {
        self.file.read(offset, len)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.file.set_len(len)
    }

    fn sync_data(&self, eventual: bool) -> Result<(), io::Error> {
        match self.durability {
            Durability::Os => Ok(()),
            Durability::Fsync => self.file.sync_data(eventual),
        }
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.file.write(offset, data)
    }
}

impl Store {
    /// Opens (or creates) the store file at `path`; the file is locked while open.
    pub fn open(path: &Path, durability: Durability) -> Result<Store, StoreError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| StoreError::Storage(format!("cannot open {}: {e}", path.display())))?;
        let file = redb::backends::FileBackend::new(file)?;
        Store::init(Database::builder().create_with_backend(StoreFile { file, durability })?)
    }

    /// A store that lives in memory only (tests).
    pub fn in_memory() -> Result<Store, StoreError> {
        let db = Database::builder().create_with_backend(redb::backends::InMemoryBackend::new())?;
        Store::init(db)
    }

    fn init(db: Database) -> Result<Store, StoreError> {
        let txn = db.begin_write()?;
        {
            txn.open_table(ROWS)?;
            txn.open_table(COUNTERS)?;
            txn.open_table(TABLES)?;
        }
        txn.commit()?;
        let mut tables = BTreeMap::new();
        let read = db.begin_read()?;
        let t = read.open_table(TABLES)?;
        for entry in t.iter()? {
            let (k, v) = entry?;
            let meta = TableMeta::decode(v.value())
                .ok_or_else(|| StoreError::Storage(format!("corrupt descriptor of table {}", show(k.value()))))?;
            tables.insert(meta.name.clone(), Arc::new(meta));
        }
        drop(t);
        drop(read);
        let db = Arc::new(db);
        let (committer, requests) = mpsc::channel();
        let committer_db = Arc::clone(&db);
        let committer_thread = std::thread::Builder::new()
            .name("hbase-emu-commit".into())
            .spawn(move || run_committer(committer_db, requests))
            .map_err(|e| StoreError::Storage(format!("cannot start the committer: {e}")))?;
        Ok(Store {
            db,
            tables: RwLock::new(tables),
            committer: Some(committer),
            committer_thread: Some(committer_thread),
        })
    }

    // ---- tables -------------------------------------------------------------------------

    /// The descriptor of a table, enabled or not.
    pub fn table(&self, name: &[u8]) -> Result<Arc<TableMeta>, StoreError> {
        self.tables.read().get(name).cloned().ok_or_else(|| StoreError::TableNotFound(show(name)))
    }

    /// Every table with its enabled flag, sorted by name.
    pub fn tables(&self) -> Vec<(Vec<u8>, bool)> {
        self.tables.read().values().map(|m| (m.name.clone(), m.enabled)).collect()
    }

    /// Creates a table (enabled).
    pub fn create_table(
        &self,
        name: &[u8],
        families: Vec<FamilyDescriptor>,
        split_points: Vec<Vec<u8>>,
        now: i64,
    ) -> Result<(), StoreError> {
        validate_table_name(name)?;
        let mut tables = self.tables.write();
        if tables.contains_key(name) {
            return Err(StoreError::TableExists(show(name)));
        }
        if families.is_empty() {
            return Err(StoreError::Refused(format!("Table should have at least one column family: {}", show(name))));
        }
        let mut by_name: BTreeMap<Vec<u8>, FamilyDescriptor> = BTreeMap::new();
        for f in families {
            let f = f.validate()?;
            if by_name.contains_key(&f.name) {
                return Err(StoreError::IllegalArgument(format!(
                    "Family '{}' already exists so cannot be added",
                    show(&f.name)
                )));
            }
            by_name.insert(f.name.clone(), f);
        }
        let txn = self.db.begin_write()?;
        let meta = {
            let mut counters = txn.open_table(COUNTERS)?;
            let id = counters.get(NEXT_TABLE_ID)?.map_or(1, |v| v.value());
            let id32 = u32::try_from(id).map_err(|_| StoreError::Refused("table ids exhausted".into()))?;
            counters.insert(NEXT_TABLE_ID, id + 1)?;
            let meta = TableMeta {
                id: id32,
                name: name.to_vec(),
                families: by_name.into_values().collect(),
                enabled: true,
                split_points,
                created_ms: now,
            };
            txn.open_table(TABLES)?.insert(name, meta.encode().as_slice())?;
            meta
        };
        txn.commit()?;
        tables.insert(name.to_vec(), Arc::new(meta));
        Ok(())
    }

    /// Enables or disables a table; HBase refuses to enable an enabled table and vice versa.
    pub fn set_enabled(&self, name: &[u8], enabled: bool) -> Result<(), StoreError> {
        let mut tables = self.tables.write();
        let meta = tables.get(name).ok_or_else(|| StoreError::TableNotFound(show(name)))?;
        match (meta.enabled, enabled) {
            (true, true) => return Err(StoreError::TableNotDisabled(show(name))),
            (false, false) => return Err(StoreError::TableDisabled(show(name))),
            _ => {}
        }
        let mut meta = TableMeta::clone(meta);
        meta.enabled = enabled;
        let txn = self.db.begin_write()?;
        txn.open_table(TABLES)?.insert(name, meta.encode().as_slice())?;
        txn.commit()?;
        tables.insert(name.to_vec(), Arc::new(meta));
        Ok(())
    }

    /// Deletes a disabled table and all its cells.
    pub fn delete_table(&self, name: &[u8]) -> Result<(), StoreError> {
        let mut tables = self.tables.write();
        let meta = tables.get(name).ok_or_else(|| StoreError::TableNotFound(show(name)))?;
        if meta.enabled {
            return Err(StoreError::TableNotDisabled(show(name)));
        }
        let start = keys::table_start(meta.id);
        let end = keys::table_end(meta.id);
        let txn = self.db.begin_write()?;
        {
            let mut rows = txn.open_table(ROWS)?;
            let range: (Bound<&[u8]>, Bound<&[u8]>) =
                (Bound::Included(start.as_slice()), end.as_deref().map_or(Bound::Unbounded, Bound::Excluded));
            rows.retain_in::<&[u8], _>(range, |_, _| false)?;
            txn.open_table(TABLES)?.remove(name)?;
        }
        txn.commit()?;
        tables.remove(name);
        Ok(())
    }

    // ---- writes -------------------------------------------------------------------------

    /// Applies mutations to rows of an enabled table in one durable transaction. `ts` is the
    /// timestamp of every put and the upper bound of every delete; `None` (or
    /// [`LATEST_TIMESTAMP`]) means `now`. Every family is checked before anything is written:
    /// a batch naming an unknown family writes nothing.
    pub fn mutate(&self, table: &[u8], rows: Vec<RowMutation>, ts: Option<i64>, now: i64) -> Result<(), StoreError> {
        let ts = match ts {
            None | Some(LATEST_TIMESTAMP) => now,
            Some(ts) if ts < 0 => {
                return Err(StoreError::IllegalArgument(format!("Timestamp cannot be negative. ts={ts}")))
            }
            Some(ts) => ts,
        };
        // Held until the commit is done, so the table cannot be deleted under the write.
        let tables = self.tables.read();
        let meta = tables.get(table).ok_or_else(|| StoreError::TableNotFound(show(table)))?;
        meta.require_enabled()?;
        for rm in &rows {
            for op in &rm.ops {
                match op {
                    Op::Put { family, .. } | Op::DeleteColumn { family, .. } | Op::DeleteFamily { family } => {
                        meta.require_family(family)?;
                    }
                    Op::DeleteRow => {}
                }
            }
        }
        if rows.iter().all(|r| r.ops.is_empty()) {
            return Ok(());
        }
        let closed = || StoreError::Storage("the store is closing".into());
        let (reply, answer) = mpsc::sync_channel(1);
        let request = WriteRequest { meta: Arc::clone(meta), rows, ts, reply };
        self.committer.as_ref().ok_or_else(closed)?.send(request).map_err(|_| closed())?;
        let result = answer.recv().map_err(|_| closed())?;
        drop(tables);
        result
    }

    /// Adds `amount` to the 8-byte big-endian counter of each cell, in one transaction, and
    /// returns the new values. A missing cell counts as 0; any other width is refused.
    pub fn increment(&self, table: &[u8], increments: &[Increment], now: i64) -> Result<Vec<i64>, StoreError> {
        self.read_modify_write(table, increments.len(), |w, i| {
            let Increment { row: key, family, qualifier, amount } = &increments[i];
            let mut row = w.load(key)?;
            let (old, old_ts) = match w.latest(&row, family, qualifier, now)? {
                None => (0, None),
                Some((ts, value)) => {
                    let bytes: [u8; 8] = value.try_into().map_err(|_| {
                        StoreError::Refused(format!("Field is not a long, it's {} bytes wide", value.len()))
                    })?;
                    (i64::from_be_bytes(bytes), Some(ts))
                }
            };
            let new = old.wrapping_add(*amount);
            if *amount != 0 || old_ts.is_none() {
                // Newer than the current version, as HBase does, so the new value is the
                // visible one even after increments within one millisecond.
                let ts = old_ts.map_or(now, |t| now.max(t.saturating_add(1)));
                w.put(&mut row, family, qualifier, &new.to_be_bytes(), ts);
                w.save(key, &row)?;
            }
            Ok(new)
        })
    }

    /// Appends bytes to cells (a missing cell is empty) and returns the new cells.
    pub fn append(
        &self,
        table: &[u8],
        key: &[u8],
        columns: &[(Vec<u8>, Vec<u8>, Vec<u8>)],
        now: i64,
    ) -> Result<Vec<Cell>, StoreError> {
        self.read_modify_write(table, columns.len(), |w, i| {
            let (family, qualifier, suffix) = &columns[i];
            let mut row = w.load(key)?;
            let (value, ts) = match w.latest(&row, family, qualifier, now)? {
                None => (suffix.clone(), now),
                Some((t, v)) => {
                    let mut v = v.to_vec();
                    v.extend_from_slice(suffix);
                    (v, now.max(t.saturating_add(1)))
                }
            };
            w.put(&mut row, family, qualifier, &value, ts);
            w.save(key, &row)?;
            Ok(Cell { family: family.clone(), qualifier: qualifier.clone(), ts, value })
        })
    }

    /// Puts `put` if the newest visible value of the checked column equals `expected`;
    /// `None` or an empty value: if the column has no visible value (or an empty one), as
    /// HBase's `checkAndMutate` does. Returns whether it put.
    pub fn check_and_put(
        &self,
        table: &[u8],
        key: &[u8],
        check: (&[u8], &[u8]),
        expected: Option<&[u8]>,
        put: (&[u8], &[u8], &[u8]),
        now: i64,
    ) -> Result<bool, StoreError> {
        let (family, qualifier) = check;
        let results = self.read_modify_write(table, 1, |w, _| {
            w.meta.require_family(put.0)?;
            let mut row = w.load(key)?;
            let expected = expected.unwrap_or_default();
            let matches = match w.latest(&row, family, qualifier, now)? {
                None => expected.is_empty(),
                Some((_, v)) => expected == v,
            };
            if matches {
                w.put(&mut row, put.0, put.1, put.2, now);
                w.save(key, &row)?;
            }
            Ok(matches)
        })?;
        Ok(results.first().copied().unwrap_or(false))
    }

    /// Runs `n` read-modify-write steps in one durable write transaction.
    fn read_modify_write<T>(
        &self,
        table: &[u8],
        n: usize,
        mut step: impl FnMut(&mut Writer<'_, '_>, usize) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let tables = self.tables.read();
        let meta = tables.get(table).ok_or_else(|| StoreError::TableNotFound(show(table)))?;
        meta.require_enabled()?;
        let txn = self.db.begin_write()?;
        let mut out = Vec::with_capacity(n);
        {
            let mut rows = txn.open_table(ROWS)?;
            let mut w = Writer { rows: &mut rows, meta };
            for i in 0..n {
                out.push(step(&mut w, i)?);
            }
        }
        txn.commit()?;
        Ok(out)
    }

    // ---- reads --------------------------------------------------------------------------

    fn readable(&self, table: &[u8]) -> Result<Arc<TableMeta>, StoreError> {
        let meta = self.table(table)?;
        meta.require_enabled()?;
        Ok(meta)
    }

    /// The cells of one row; empty if the row has none that qualify.
    pub fn get(&self, table: &[u8], key: &[u8], spec: &ReadSpec, now: i64) -> Result<Vec<Cell>, StoreError> {
        let meta = self.readable(table)?;
        let selection = resolve_selection(&meta, &spec.columns)?;
        let txn = self.db.begin_read()?;
        let rows = txn.open_table(ROWS)?;
        let Some(value) = rows.get(keys::row_key(meta.id, key).as_slice())? else {
            return Ok(Vec::new());
        };
        let row = decode_row(value.value())?;
        Ok(read_row(&meta, key, &row, &selection, spec, &Filter::default(), now))
    }

    /// Validates a scan and returns its cursor.
    pub fn open_scan(&self, table: &[u8], spec: ScanSpec) -> Result<(ScanCursor, PreparedScan), StoreError> {
        let meta = self.readable(table)?;
        let selection = resolve_selection(&meta, &spec.read.columns)?;
        let id = meta.id;
        let (start, stop) = (&spec.start_row, &spec.stop_row);
        let (mut lo, mut hi) = if !spec.reversed {
            let hi = if stop.is_empty() { keys::table_end(id) } else { Some(keys::row_key(id, stop)) };
            (keys::row_key(id, start), hi)
        } else {
            // Reversed: from start_row (inclusive) down to stop_row (exclusive).
            let hi =
                if start.is_empty() { keys::table_end(id) } else { Some(keys::successor(&keys::row_key(id, start))) };
            let lo = if stop.is_empty() { keys::table_start(id) } else { keys::successor(&keys::row_key(id, stop)) };
            (lo, hi)
        };
        // Narrow the range to the filter's row prefixes: a prefix scan is a range read.
        for prefix in &spec.filter.row_prefixes {
            lo = lo.max(keys::row_key(id, prefix));
            if let Some(end) = keys::prefix_end(prefix) {
                let end = keys::row_key(id, &end);
                hi = Some(hi.map_or(end.clone(), |h| h.min(end)));
            }
        }
        let exhausted = hi.as_ref().is_some_and(|h| *h <= lo);
        let cursor = ScanCursor {
            table_id: id,
            table: table.to_vec(),
            lo,
            hi,
            reversed: spec.reversed,
            exhausted,
            rows_returned: 0,
        };
        Ok((cursor, PreparedScan { selection, read: spec.read, filter: spec.filter }))
    }

    /// Reads up to `max_rows` further non-empty rows of a scan.
    pub fn scan_next(
        &self,
        cursor: &mut ScanCursor,
        scan: &PreparedScan,
        max_rows: usize,
        now: i64,
    ) -> Result<Vec<RowCells>, StoreError> {
        let mut out = Vec::new();
        if cursor.exhausted || max_rows == 0 {
            return Ok(out);
        }
        let meta = self.readable(&cursor.table)?;
        if meta.id != cursor.table_id {
            return Err(StoreError::TableNotFound(show(&cursor.table)));
        }
        let max_rows = match scan.filter.page_size {
            Some(page) => {
                let left = page.saturating_sub(cursor.rows_returned);
                if left == 0 {
                    cursor.exhausted = true;
                    return Ok(out);
                }
                max_rows.min(usize::try_from(left).unwrap_or(usize::MAX))
            }
            None => max_rows,
        };
        if cursor.hi.as_ref().is_some_and(|h| *h <= cursor.lo) {
            cursor.exhausted = true;
            return Ok(out);
        }
        let txn = self.db.begin_read()?;
        let rows = txn.open_table(ROWS)?;
        let range: (Bound<&[u8]>, Bound<&[u8]>) =
            (Bound::Included(cursor.lo.as_slice()), cursor.hi.as_deref().map_or(Bound::Unbounded, Bound::Excluded));
        let mut iter = rows.range::<&[u8]>(range)?;
        loop {
            if out.len() >= max_rows {
                break;
            }
            let next = if cursor.reversed { iter.next_back() } else { iter.next() };
            let Some(entry) = next else {
                cursor.exhausted = true;
                break;
            };
            let (k, v) = entry?;
            let key = k.value();
            if cursor.reversed {
                cursor.hi = Some(key.to_vec());
            } else {
                cursor.lo = keys::successor(key);
            }
            let row_key = &key[4..];
            if !scan.filter.row_may_match(row_key) {
                continue;
            }
            let row = decode_row(v.value())?;
            let cells = read_row(&meta, row_key, &row, &scan.selection, &scan.read, &scan.filter, now);
            if !cells.is_empty() {
                out.push(RowCells { row: row_key.to_vec(), cells });
            }
        }
        cursor.rows_returned += out.len() as u64;
        Ok(out)
    }
}

fn decode_row(bytes: &[u8]) -> Result<Row, StoreError> {
    Row::decode(bytes).ok_or_else(|| StoreError::Storage("corrupt row in the store".into()))
}

/// Applies writes to rows inside one write transaction.
struct Writer<'t, 'm> {
    rows: &'t mut redb::Table<'m, &'static [u8], &'static [u8]>,
    meta: &'t TableMeta,
}

impl Writer<'_, '_> {
    /// The row as stored (empty if absent).
    fn load(&self, key: &[u8]) -> Result<Row, StoreError> {
        match self.rows.get(keys::row_key(self.meta.id, key).as_slice())? {
            Some(v) => decode_row(v.value()),
            None => Ok(Row::default()),
        }
    }

    /// Stores the row (removes it when nothing is left).
    fn save(&mut self, key: &[u8], row: &Row) -> Result<(), StoreError> {
        let k = keys::row_key(self.meta.id, key);
        if row.is_empty() {
            self.rows.remove(k.as_slice())?;
        } else {
            self.rows.insert(k.as_slice(), row.encode().as_slice())?;
        }
        Ok(())
    }

    fn max_versions(&self, family: &[u8]) -> usize {
        self.meta.family(family).map_or(1, |f| f.max_versions.max(1) as usize)
    }

    fn put(&self, row: &mut Row, family: &[u8], qualifier: &[u8], value: &[u8], ts: i64) {
        row.put(family, qualifier, value, ts, self.max_versions(family));
    }

    fn apply(&self, row: &mut Row, op: &Op, ts: i64) {
        match op {
            Op::Put { family, qualifier, value } => self.put(row, family, qualifier, value, ts),
            Op::DeleteColumn { family, qualifier } => row.delete_column(family, qualifier, ts),
            Op::DeleteFamily { family } => row.delete_family(family, ts),
            Op::DeleteRow => {
                for f in &self.meta.families {
                    row.delete_family(&f.name, ts);
                }
            }
        }
    }

    /// The newest visible (unmasked, unexpired) version of a column.
    fn latest<'r>(
        &self,
        row: &'r Row,
        family: &[u8],
        qualifier: &[u8],
        now: i64,
    ) -> Result<Option<(i64, &'r [u8])>, StoreError> {
        let desc = self.meta.require_family(family)?;
        let Some(fam) = row.family(family) else { return Ok(None) };
        let Ok(i) = fam.columns.binary_search_by(|c| c.qualifier.as_slice().cmp(qualifier)) else {
            return Ok(None);
        };
        Ok(fam.columns[i].versions.iter().find(|v| !expired(desc, v.ts, now)).map(|v| (v.ts, v.value.as_slice())))
    }
}

/// Whether a cell is past its family's TTL.
fn expired(family: &FamilyDescriptor, ts: i64, now: i64) -> bool {
    family.time_to_live != TTL_FOREVER && ts < now.saturating_sub(i64::from(family.time_to_live).saturating_mul(1000))
}

/// The cells a read returns of a row: selected columns, unexpired, within the time range,
/// through the filter (which sees every such version, as HBase's filters do), then up to the
/// requested versions per column (capped by `maxVersions`). Masked versions are never stored
/// (see `row.rs`), so markers need no check here.
fn read_row(
    meta: &TableMeta,
    row_key: &[u8],
    row: &Row,
    selection: &Selection,
    spec: &ReadSpec,
    filter: &Filter,
    now: i64,
) -> Vec<Cell> {
    struct Candidate<'r> {
        family: &'r [u8],
        qualifier: &'r [u8],
        ts: i64,
        value: &'r [u8],
        limit: usize,
    }
    let mut candidates: Vec<Candidate<'_>> = Vec::new();
    for fam in &row.families {
        let Some(desc) = meta.family(&fam.name) else { continue };
        let wanted = if selection.is_empty() {
            None
        } else {
            match selection.get(&fam.name) {
                None => continue,
                Some(w) => w.as_ref(),
            }
        };
        let limit = spec.versions.min(desc.max_versions.max(1) as u32) as usize;
        // Without a filter, only the versions returned are needed.
        let per_column = if filter.is_pass_all() { limit } else { usize::MAX };
        for col in &fam.columns {
            if wanted.is_some_and(|set| !set.contains(&col.qualifier)) {
                continue;
            }
            let versions = col
                .versions
                .iter()
                .filter(|v| !expired(desc, v.ts, now) && spec.max_ts_exclusive.is_none_or(|max| v.ts < max))
                .take(per_column);
            for v in versions {
                candidates.push(Candidate {
                    family: &fam.name,
                    qualifier: &col.qualifier,
                    ts: v.ts,
                    value: &v.value,
                    limit,
                });
            }
        }
    }
    let keep = if filter.is_pass_all() {
        vec![true; candidates.len()]
    } else {
        let refs: Vec<CellRef<'_>> = candidates
            .iter()
            .map(|c| CellRef { family: c.family, qualifier: c.qualifier, ts: c.ts, value: c.value })
            .collect();
        filter.keep(row_key, &refs)
    };
    let mut cells = Vec::new();
    let mut column: Option<(&[u8], &[u8])> = None;
    let mut taken = 0usize;
    for (c, keep) in candidates.iter().zip(keep) {
        if !keep {
            continue;
        }
        if column != Some((c.family, c.qualifier)) {
            column = Some((c.family, c.qualifier));
            taken = 0;
        }
        if taken >= c.limit {
            continue;
        }
        taken += 1;
        cells.push(Cell {
            family: c.family.to_vec(),
            qualifier: c.qualifier.to_vec(),
            ts: c.ts,
            value: if filter.key_only { Vec::new() } else { c.value.to_vec() },
        });
    }
    cells
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn store_with(families: &[(&str, i32, i32)]) -> Store {
        let store = Store::in_memory().unwrap();
        let fams = families
            .iter()
            .map(|(n, v, ttl)| FamilyDescriptor {
                max_versions: *v,
                time_to_live: *ttl,
                ..FamilyDescriptor::new(n.as_bytes())
            })
            .collect();
        store.create_table(b"t", fams, Vec::new(), NOW).unwrap();
        store
    }

    fn put(row: &str, fam: &str, q: &str, v: &str) -> RowMutation {
        RowMutation { row: row.into(), ops: vec![Op::Put { family: fam.into(), qualifier: q.into(), value: v.into() }] }
    }

    fn values(cells: &[Cell]) -> Vec<(String, i64, String)> {
        cells.iter().map(|c| (format!("{}:{}", show(&c.family), show(&c.qualifier)), c.ts, show(&c.value))).collect()
    }

    fn versions(n: u32) -> ReadSpec {
        ReadSpec { versions: n, ..ReadSpec::default() }
    }

    #[test]
    fn versions_are_newest_first_and_capped_by_max_versions() {
        let s = store_with(&[("f", 2, TTL_FOREVER)]);
        for (ts, v) in [(10, "a"), (30, "c"), (20, "b")] {
            s.mutate(b"t", vec![put("r", "f", "q", v)], Some(ts), NOW).unwrap();
        }
        let got = s.get(b"t", b"r", &versions(10), NOW).unwrap();
        assert_eq!(values(&got), vec![("f:q".into(), 30, "c".into()), ("f:q".into(), 20, "b".into())]);
        let latest = s.get(b"t", b"r", &ReadSpec::default(), NOW).unwrap();
        assert_eq!(values(&latest), vec![("f:q".into(), 30, "c".into())]);
        let before = ReadSpec { max_ts_exclusive: Some(30), versions: 5, ..ReadSpec::default() };
        assert_eq!(values(&s.get(b"t", b"r", &before, NOW).unwrap())[0].1, 20);
    }

    #[test]
    fn column_delete_masks_older_puts_even_ones_written_later() {
        let s = store_with(&[("f", 3, TTL_FOREVER)]);
        s.mutate(b"t", vec![put("r", "f", "q", "old")], Some(100), NOW).unwrap();
        s.mutate(b"t", vec![put("r", "f", "keep", "k")], Some(100), NOW).unwrap();
        let del = RowMutation {
            row: b"r".to_vec(),
            ops: vec![Op::DeleteColumn { family: b"f".to_vec(), qualifier: b"q".to_vec() }],
        };
        s.mutate(b"t", vec![del], Some(200), NOW).unwrap();
        s.mutate(b"t", vec![put("r", "f", "q", "late-but-old")], Some(150), NOW).unwrap();
        assert_eq!(values(&s.get(b"t", b"r", &versions(3), NOW).unwrap()), vec![("f:keep".into(), 100, "k".into())]);
        s.mutate(b"t", vec![put("r", "f", "q", "new")], Some(201), NOW).unwrap();
        assert_eq!(
            values(&s.get(b"t", b"r", &versions(3), NOW).unwrap()),
            vec![("f:keep".into(), 100, "k".into()), ("f:q".into(), 201, "new".into())]
        );
    }

    #[test]
    fn family_and_row_deletes_mask_at_or_below_their_timestamp() {
        let s = store_with(&[("a", 3, TTL_FOREVER), ("b", 3, TTL_FOREVER)]);
        s.mutate(b"t", vec![put("r", "a", "x", "1"), put("r", "b", "y", "2")], Some(50), NOW).unwrap();
        let del = RowMutation { row: b"r".to_vec(), ops: vec![Op::DeleteFamily { family: b"a".to_vec() }] };
        s.mutate(b"t", vec![del], Some(50), NOW).unwrap();
        assert_eq!(values(&s.get(b"t", b"r", &versions(3), NOW).unwrap()), vec![("b:y".into(), 50, "2".into())]);
        let del_row = RowMutation { row: b"r".to_vec(), ops: vec![Op::DeleteRow] };
        s.mutate(b"t", vec![del_row], None, NOW).unwrap();
        assert!(s.get(b"t", b"r", &versions(3), NOW).unwrap().is_empty());
        // A put after the delete, at a later server time, is visible again.
        s.mutate(b"t", vec![put("r", "a", "x", "3")], None, NOW + 1).unwrap();
        assert_eq!(s.get(b"t", b"r", &versions(3), NOW + 1).unwrap().len(), 1);
    }

    #[test]
    fn ttl_hides_expired_cells() {
        let s = store_with(&[("f", 3, 10)]);
        s.mutate(b"t", vec![put("r", "f", "old", "x")], Some(NOW - 11_000), NOW).unwrap();
        s.mutate(b"t", vec![put("r", "f", "new", "y")], Some(NOW - 9_000), NOW).unwrap();
        assert_eq!(
            values(&s.get(b"t", b"r", &versions(3), NOW).unwrap()),
            vec![("f:new".into(), NOW - 9_000, "y".into())]
        );
        assert!(s.get(b"t", b"r", &versions(3), NOW + 2_000).unwrap().is_empty());
    }

    #[test]
    fn increments_are_big_endian_longs() {
        let s = store_with(&[("c", 3, TTL_FOREVER)]);
        let inc = |n: i64| Increment { row: b"r".to_vec(), family: b"c".to_vec(), qualifier: b"n".to_vec(), amount: n };
        assert_eq!(s.increment(b"t", &[inc(5)], NOW).unwrap(), vec![5]);
        assert_eq!(s.increment(b"t", &[inc(-2), inc(10)], NOW).unwrap(), vec![3, 13]);
        let got = s.get(b"t", b"r", &ReadSpec::default(), NOW).unwrap();
        assert_eq!(got[0].value, 13i64.to_be_bytes().to_vec());
        s.mutate(b"t", vec![put("r", "c", "s", "abc")], None, NOW).unwrap();
        let err = s.increment(b"t", &[Increment { qualifier: b"s".to_vec(), ..inc(1) }], NOW).unwrap_err();
        assert!(err.to_string().contains("3 bytes wide"), "{err}");
    }

    #[test]
    fn scans_are_bytewise_ordered_bounded_and_resumable() {
        let s = store_with(&[("f", 1, TTL_FOREVER)]);
        let rows = ["b", "a", "a\u{0}", "ab", "c", "aa"];
        let muts: Vec<_> = rows.iter().map(|r| put(r, "f", "q", r)).collect();
        s.mutate(b"t", muts, None, NOW).unwrap();
        let scan_all = |spec: ScanSpec, page: usize| {
            let (mut cur, prep) = s.open_scan(b"t", spec).unwrap();
            let mut seen = Vec::new();
            while !cur.is_exhausted() {
                for r in s.scan_next(&mut cur, &prep, page, NOW).unwrap() {
                    seen.push(show(&r.row));
                }
            }
            seen
        };
        assert_eq!(scan_all(ScanSpec::default(), 2), vec!["a", "a\u{0}", "aa", "ab", "b", "c"]);
        let prefix = ScanSpec { filter: crate::filter::parse(b"PrefixFilter('a')").unwrap(), ..ScanSpec::default() };
        assert_eq!(scan_all(prefix, 1), vec!["a", "a\u{0}", "aa", "ab"]);
        let bounded = ScanSpec { start_row: b"aa".to_vec(), stop_row: b"c".to_vec(), ..ScanSpec::default() };
        assert_eq!(scan_all(bounded, 10), vec!["aa", "ab", "b"]);
        let reversed =
            ScanSpec { start_row: b"b".to_vec(), stop_row: b"a".to_vec(), reversed: true, ..ScanSpec::default() };
        assert_eq!(scan_all(reversed, 2), vec!["b", "ab", "aa", "a\u{0}"]);
        let reversed_prefix = ScanSpec {
            reversed: true,
            filter: crate::filter::parse(b"PrefixFilter('a')").unwrap(),
            ..ScanSpec::default()
        };
        assert_eq!(scan_all(reversed_prefix, 3), vec!["ab", "aa", "a\u{0}", "a"]);
    }

    #[test]
    fn unknown_family_and_table_and_disabled_table_are_refused() {
        let s = store_with(&[("f", 1, TTL_FOREVER)]);
        let err = s.mutate(b"t", vec![put("r", "nope", "q", "v")], None, NOW).unwrap_err();
        assert!(matches!(err, StoreError::NoSuchFamily { .. }), "{err}");
        let err = s.mutate(b"missing", vec![put("r", "f", "q", "v")], None, NOW).unwrap_err();
        assert!(matches!(err, StoreError::TableNotFound(_)), "{err}");
        let err = s.delete_table(b"t").unwrap_err();
        assert!(matches!(err, StoreError::TableNotDisabled(_)), "{err}");
        s.set_enabled(b"t", false).unwrap();
        let err = s.get(b"t", b"r", &ReadSpec::default(), NOW).unwrap_err();
        assert!(matches!(err, StoreError::TableDisabled(_)), "{err}");
        s.delete_table(b"t").unwrap();
        assert!(s.tables().is_empty());
    }

    #[test]
    fn recreated_table_does_not_see_old_cells() {
        let s = store_with(&[("f", 1, TTL_FOREVER)]);
        s.mutate(b"t", vec![put("r", "f", "q", "v")], None, NOW).unwrap();
        s.set_enabled(b"t", false).unwrap();
        s.delete_table(b"t").unwrap();
        s.create_table(b"t", vec![FamilyDescriptor::new("f")], Vec::new(), NOW).unwrap();
        assert!(s.get(b"t", b"r", &ReadSpec::default(), NOW).unwrap().is_empty());
    }

    #[test]
    fn descriptors_are_validated_like_hbase() {
        let s = Store::in_memory().unwrap();
        let bad = |f: FamilyDescriptor| {
            matches!(s.create_table(b"x", vec![f], Vec::new(), NOW), Err(StoreError::IllegalArgument(_)))
        };
        assert!(bad(FamilyDescriptor::new("")));
        assert!(bad(FamilyDescriptor { max_versions: 0, ..FamilyDescriptor::new("f") }));
        assert!(bad(FamilyDescriptor { compression: "zip".into(), ..FamilyDescriptor::new("f") }));
        assert!(bad(FamilyDescriptor { bloom_filter_type: "BLOOM".into(), ..FamilyDescriptor::new("f") }));
        assert!(matches!(
            s.create_table(b"-x", vec![FamilyDescriptor::new("f")], Vec::new(), NOW),
            Err(StoreError::IllegalArgument(_))
        ));
        s.create_table(b"ns:x", vec![FamilyDescriptor::new("f")], Vec::new(), NOW).unwrap();
        assert!(matches!(
            s.create_table(b"ns:x", vec![FamilyDescriptor::new("f")], Vec::new(), NOW),
            Err(StoreError::TableExists(_))
        ));
    }
}
