//! The storage and the HBase semantics, without Thrift: tables with column families, cells
//! with versions, delete markers, TTL, counters, row-range scans — on an HBase-like write
//! path (write-ahead log, sorted in-memory store, background flushes to sorted files,
//! compaction).
//!
//! **Durability.** Every mutating call is appended to the write-ahead log in a group commit
//! (`commit.rs`) before it returns: with [`Durability::Os`] (the default) the log has reached
//! the operating system when the client is answered, so the write survives a kill -9 of the
//! emulator, as a write HBase acknowledges by default (WAL `hflush`) survives a RegionServer
//! crash; [`Durability::Fsync`] also waits for the disk. Reads never block writes.
//!
//! **Semantics, as HBase has them.** Rows, families and qualifiers sort bytewise; versions
//! newest first. A delete is a marker ("every version of this column / family with a
//! timestamp ≤ T"); it is kept, so it also masks puts with an older timestamp that arrive
//! later, as in HBase before a major compaction. A family keeps at most `maxVersions`
//! versions per column; reads never return more. Masked puts and versions past
//! `maxVersions` stay in the engine as edits until the row is folded (below), as HBase keeps
//! them until a compaction; reads behave as if they were gone. Cells older than the family's
//! TTL are never returned. Counters are 8-byte big-endian longs.
//!
//! **Layout.** A row is a run of adjacent engine entries, its *edits* (`keys.rs`: `table id ‖
//! row ‖ sequence number`; values: `edit.rs`), as an HBase row is a run of cells (KeyValues)
//! across the memstore and store files. A put or delete is a blind write — one edit per row
//! and call, no read before it — so its cost does not depend on what the row holds; reads
//! merge a row's edits. A read-modify-write (`increment`, `append`, `checkAndPut`) reads the
//! row on the committer thread, which makes it atomic, and replaces the edits it read with
//! one snapshot; a row that reads find with many edits is folded the same way in the
//! background, so a row's read cost stays bounded. Table metadata lives in the engine too
//! and in an in-memory map guarded by a lock that data writes hold shared and DDL holds
//! exclusive, so a table cannot vanish under a write.
//!
//! * `meta.rs` — table and family descriptors;
//! * `edit.rs` — row edits (deltas, snapshots) and merging them into a row;
//! * `engine.rs` — the LSM engine (log, memstore, files, flushes, compaction);
//! * `commit.rs` — the group committer (every write);
//! * `read.rs` — the read path (gets, scans, filters, versions);
//! * `tables.rs` — DDL (create, enable, disable, delete);
//! * `rmw.rs` — read-modify-writes (`increment`, `append`, `checkAndPut`).

mod batch;
mod commit;
mod edit;
mod engine;
mod meta;
mod read;
mod rmw;
mod tables;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{mpsc, Arc};

use parking_lot::{Mutex, RwLock};

use crate::filter::Filter;
use crate::keys;
pub use batch::{MutationBatch, OpKind};
use commit::{Answer, Group, Job, Sequence, SEQ_RESERVED};
pub use engine::{Durability, Engine, EngineOptions, EngineStats, LOCK_FILE, LSM_DIR};
use meta::show;
pub use meta::{validate_table_name, FamilyDescriptor, TableMeta};
use read::{load_row, read_row, resolve_selection};
pub use read::{PreparedScan, RowCells, ScanCursor, ScanSpec, StoredCell};

/// HBase's `HConstants.LATEST_TIMESTAMP`: "the server's current time".
pub const LATEST_TIMESTAMP: i64 = i64::MAX;

/// Keys of the metadata partition.
const TABLE_PREFIX: &[u8] = b"table/";
const NEXT_TABLE_ID: &[u8] = b"counter/next_table_id";

/// Edits removed per batch when a table is deleted.
const DELETE_CHUNK_ROWS: usize = 10_000;

/// Most rows waiting to be folded at once; reads that find more leave them for later.
const MAX_PENDING_FOLDS: usize = 1024;

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
    /// The engine failed; the operation may be retried.
    #[error("storage error: {0}")]
    Storage(String),
}

impl StoreError {
    /// Whether retrying the same request may succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(self, StoreError::Storage(_))
    }
}

fn storage(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Storage(format!("{what}: {e}"))
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
pub struct RowEdit {
    pub row: Vec<u8>,
    pub ops: Vec<Op>,
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

/// The store.
pub struct Store {
    engine: Arc<Engine>,
    tables: RwLock<BTreeMap<Vec<u8>, Arc<TableMeta>>>,
    /// Hands writes to the group committer; `None` once the store is closing.
    committer: Option<mpsc::Sender<Job>>,
    committer_thread: Option<std::thread::JoinHandle<()>>,
    /// Prefixes of rows handed to the committer to be folded, not yet done.
    folding: Arc<Mutex<HashSet<Vec<u8>>>>,
}

impl Drop for Store {
    fn drop(&mut self) {
        // Closing the channel ends the committer once it has answered every job.
        self.committer = None;
        if let Some(t) = self.committer_thread.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("tables", &self.tables.read().len()).finish()
    }
}

impl Store {
    /// Opens (or creates) the store in `dir` (locked while open), recovering from its log.
    pub fn open(dir: &Path, options: EngineOptions) -> Result<Store, StoreError> {
        Store::init(Engine::open(dir, options)?)
    }

    /// A store whose files live in a temporary directory, deleted on close (`--in-memory`).
    pub fn temporary(options: EngineOptions) -> Result<Store, StoreError> {
        Store::init(Engine::temporary(options)?)
    }

    /// A temporary store with small defaults (tests).
    #[cfg(test)]
    pub fn in_memory() -> Result<Store, StoreError> {
        Store::temporary(EngineOptions {
            durability: Durability::Os,
            memstore_bytes: 16 * 1024 * 1024,
            block_cache_bytes: 8 * 1024 * 1024,
        })
    }

    fn init(engine: Engine) -> Result<Store, StoreError> {
        let mut tables = BTreeMap::new();
        for entry in engine.meta.prefix(TABLE_PREFIX) {
            let (k, v) = entry.map_err(|e| storage("reading the table descriptors failed", e))?;
            let meta = TableMeta::decode(&v)
                .ok_or_else(|| StoreError::Storage(format!("corrupt descriptor of table {}", show(&k))))?;
            tables.insert(meta.name.clone(), Arc::new(meta));
        }
        let reserved = match engine.meta.get(SEQ_RESERVED).map_err(|e| storage("reading the sequence failed", e))? {
            Some(v) => <[u8; 8]>::try_from(v.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::Storage("corrupt sequence reservation".into()))?,
            None => 0,
        };
        let engine = Arc::new(engine);
        let (committer, jobs) = mpsc::channel();
        let committer_engine = Arc::clone(&engine);
        let committer_thread = std::thread::Builder::new()
            .name("hbase-emu-commit".into())
            .spawn(move || commit::run_committer(committer_engine, Sequence::after(reserved), jobs))
            .map_err(|e| storage("cannot start the committer", e))?;
        Ok(Store {
            engine,
            tables: RwLock::new(tables),
            committer: Some(committer),
            committer_thread: Some(committer_thread),
            folding: Arc::default(),
        })
    }

    /// Hands a job to the committer and waits for its answer.
    fn submit<T: Send + 'static>(
        &self,
        rows: usize,
        run: impl FnOnce(&mut Group<'_>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let closed = || StoreError::Storage("the store is closing".into());
        let (reply, answer) = mpsc::sync_channel(1);
        let job = Job {
            rows,
            run: Box::new(move |group| {
                let result = run(group);
                let answer: Answer = Box::new(move |commit| {
                    let _ = reply.send(commit.and(result));
                });
                answer
            }),
        };
        self.committer.as_ref().ok_or_else(closed)?.send(job).map_err(|_| closed())?;
        answer.recv().map_err(|_| closed())?
    }

    // ---- tables: `tables.rs`; read-modify-writes: `rmw.rs` ------------------------------

    // ---- engine -------------------------------------------------------------------------

    /// Flushes the memstore to a sorted file (HBase `flush`; Thrift `compact` does this).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.engine.flush()
    }

    /// Flushes and merges every sorted file into one (Thrift `majorCompact`).
    pub fn major_compact(&self) -> Result<(), StoreError> {
        self.engine.major_compact()
    }

    /// What the engine has done so far.
    pub fn stats(&self) -> EngineStats {
        self.engine.stats()
    }

    // ---- writes -------------------------------------------------------------------------

    /// Applies mutations to rows of an enabled table in one durable group commit. `ts` is the
    /// timestamp of every put and the upper bound of every delete; `None` (or
    /// [`LATEST_TIMESTAMP`]) means `now`. Every family is checked before anything is written:
    /// a batch naming an unknown family writes nothing.
    pub fn mutate(&self, table: &[u8], rows: Vec<RowEdit>, ts: Option<i64>, now: i64) -> Result<(), StoreError> {
        self.mutate_batch(table, &MutationBatch::from(rows.as_slice()), ts, now)
    }

    /// [`Store::mutate`] of a batch in one buffer (`mutateRows`).
    pub fn mutate_batch(
        &self,
        table: &[u8],
        batch: &MutationBatch,
        ts: Option<i64>,
        now: i64,
    ) -> Result<(), StoreError> {
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
        for (_, ops) in batch.rows() {
            for op in ops {
                if op.kind != OpKind::DeleteRow {
                    meta.require_family(op.family)?;
                }
            }
        }
        // The edits are encoded here, on the caller's thread; the committer only appends them.
        let mut edits: Vec<(Vec<u8>, fjall::Slice)> = Vec::with_capacity(batch.row_count());
        for (row, ops) in batch.rows() {
            if ops.clone().next().is_some() {
                edits.push((keys::row_prefix(meta.id, row), edit::delta(ts, ops).into()));
            }
        }
        if edits.is_empty() {
            return Ok(());
        }
        let meta = Arc::clone(meta);
        let result = self.submit(edits.len(), move |group| {
            for (prefix, delta) in edits {
                group.append(&meta, prefix, delta)?;
            }
            Ok(())
        });
        drop(tables);
        result
    }

    // ---- reads --------------------------------------------------------------------------

    fn readable(&self, table: &[u8]) -> Result<Arc<TableMeta>, StoreError> {
        let meta = self.table(table)?;
        meta.require_enabled()?;
        Ok(meta)
    }

    /// The cells of one row; empty if the row has none that qualify.
    pub fn get(&self, table: &[u8], key: &[u8], spec: &ReadSpec, now: i64) -> Result<Vec<StoredCell>, StoreError> {
        let meta = self.readable(table)?;
        let selection = resolve_selection(&meta, &spec.columns)?;
        let mut folds = Vec::new();
        let row = load_row(&self.engine, &meta, &keys::row_prefix(meta.id, key), &mut folds)?;
        self.fold(&meta, folds);
        Ok(read_row(&meta, key, &row, &selection, spec, &Filter::default(), now))
    }

    /// Validates a scan and returns its cursor.
    pub fn open_scan(&self, table: &[u8], spec: ScanSpec) -> Result<(ScanCursor, PreparedScan), StoreError> {
        let meta = self.readable(table)?;
        let selection = resolve_selection(&meta, &spec.read.columns)?;
        let id = meta.id;
        let (start, stop) = (&spec.start_row, &spec.stop_row);
        let (mut lo, mut hi) = if !spec.reversed {
            let hi = if stop.is_empty() { keys::table_end(id) } else { Some(keys::row_bound(id, stop)) };
            (keys::row_bound(id, start), hi)
        } else {
            // Reversed: from start_row (inclusive) down to stop_row (exclusive).
            let hi = if start.is_empty() {
                keys::table_end(id)
            } else {
                Some(keys::after_row(&keys::row_prefix(id, start)))
            };
            let lo = if stop.is_empty() { keys::table_start(id) } else { keys::after_row(&keys::row_prefix(id, stop)) };
            (lo, hi)
        };
        // Narrow the range to the filter's row prefixes: a prefix scan is a range read.
        for prefix in &spec.filter.row_prefixes {
            lo = lo.max(keys::row_bound(id, prefix));
            if let Some(end) = keys::prefix_end(prefix) {
                let end = keys::row_bound(id, &end);
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
        if cursor.exhausted || max_rows == 0 {
            return Ok(Vec::new());
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
                    return Ok(Vec::new());
                }
                max_rows.min(usize::try_from(left).unwrap_or(usize::MAX))
            }
            None => max_rows,
        };
        let mut folds = Vec::new();
        let page = read::scan_page(&self.engine, &meta, cursor, scan, max_rows, now, &mut folds);
        self.fold(&meta, folds);
        page
    }

    /// Has the committer fold each row (by prefix) into one snapshot edit, without waiting:
    /// a row with many edits costs every read of it that many entries until then.
    fn fold(&self, meta: &Arc<TableMeta>, prefixes: Vec<Vec<u8>>) {
        let Some(committer) = self.committer.as_ref() else { return };
        for prefix in prefixes {
            {
                let mut folding = self.folding.lock();
                if folding.len() >= MAX_PENDING_FOLDS || !folding.insert(prefix.clone()) {
                    continue;
                }
            }
            let (meta, folding) = (Arc::clone(meta), Arc::clone(&self.folding));
            let job = Job {
                rows: 1,
                run: Box::new(move |group| {
                    // A failed read leaves the row as it is; a later read asks again.
                    if let Ok(row) = group.load(&meta, &prefix) {
                        group.stage(std::collections::HashMap::from([(prefix.clone(), row)]));
                    }
                    let answer: Answer = Box::new(move |_| {
                        folding.lock().remove(&prefix);
                    });
                    answer
                }),
            };
            // The store is closing: the row stays as it is.
            let _ = committer.send(job);
        }
    }
}

#[cfg(test)]
mod tests;
