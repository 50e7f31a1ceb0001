//! The log-structured engine under the store, the way an HBase RegionServer stores data:
//! fjall (an LSM-tree crate) provides the write-ahead log (its journal), the sorted
//! in-memory store (memtables), background flushes to immutable sorted files (segments)
//! and their compaction; reads merge the memtables and the files.
//!
//! **Guarantee.** [`Engine::commit`] returns once the batch is in the journal and in the
//! operating system's hands ([`Durability::Os`]: survives a kill -9 of the process, as HBase's
//! WAL `hflush` survives a RegionServer crash) or on disk ([`Durability::Fsync`], `fdatasync`:
//! survives a power loss). A batch is atomic: after a crash it is either all there or absent.
//! On open, journals are replayed into memtables (fjall's recovery).
//!
//! **Memory** is bounded by [`EngineOptions::memstore_bytes`] (every memtable, active and
//! being flushed; writes stall while flushes catch up) plus the block cache
//! ([`EngineOptions::block_cache_bytes`]), not by the size of the data.
//!
//! **Failure.** An I/O error fails the batch (every caller in its group sees it) and
//! fjall marks the keyspace poisoned: later writes fail too, until a restart recovers
//! from the journal. The data directory is locked while open, so a second emulator on the
//! same directory is refused instead of corrupting it.

use std::fs::File;
use std::path::{Path, PathBuf};

use fjall::compaction::{SizeTiered, Strategy};
use fjall::{Batch, Config, Keyspace, PartitionCreateOptions, PartitionHandle, PersistMode};

use super::StoreError;

/// The directory of the LSM tree inside `--data-dir`.
pub const LSM_DIR: &str = "lsm";
/// The partition of the row edits (`rows` held one entry per row before edits; a data
/// directory of that layout opens empty).
const ROWS_PARTITION: &str = "row_edits";
/// The file locked while an emulator has the data directory open.
pub const LOCK_FILE: &str = "LOCK";

/// When an acknowledged write is safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Durability {
    /// In the write-ahead log and handed to the operating system before the reply: survives
    /// a crash or kill of the emulator, not of the machine.
    #[default]
    Os,
    /// Also `fdatasync`'d before the reply: survives a power loss; costs a disk flush per
    /// group commit.
    Fsync,
}

/// Sizes of the engine.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    pub durability: Durability,
    /// Most bytes held in memtables (HBase: the global memstore limit); at least 4 MiB.
    pub memstore_bytes: u64,
    /// Bytes of the block cache of the sorted files (HBase: the block cache).
    pub block_cache_bytes: u64,
}

impl EngineOptions {
    /// Smallest memstore accepted (fjall needs 1 MiB of write buffer; a memtable of a
    /// quarter of that makes flushes too small to be useful below this).
    pub const MIN_MEMSTORE_BYTES: u64 = 4 * 1024 * 1024;
}

/// What the engine has done, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineStats {
    /// Sorted files of the row data.
    pub files: usize,
    /// Memtables flushed to files since open.
    pub flushes: usize,
    /// Compactions finished since open.
    pub compactions: usize,
    /// Bytes in memtables now.
    pub memstore_bytes: u64,
    /// Bytes of sorted files and journals on disk.
    pub disk_bytes: u64,
}

/// The open engine.
pub struct Engine {
    keyspace: Keyspace,
    /// Row edits, keyed as `keys.rs` says, valued as `edit.rs` encodes.
    pub rows: PartitionHandle,
    /// Table descriptors and counters.
    pub meta: PartitionHandle,
    durability: Durability,
    /// Held (and locked) while open.
    _lock: Option<File>,
    /// Deleted when the engine is dropped (`--in-memory`).
    _temp: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("durability", &self.durability).finish()
    }
}

fn storage(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Storage(format!("{what}: {e}"))
}

impl Engine {
    /// Opens (or creates) the engine in `dir`, recovering from its journal, and locks `dir`.
    pub fn open(dir: &Path, options: EngineOptions) -> Result<Engine, StoreError> {
        let lock_path = dir.join(LOCK_FILE);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| storage(&format!("cannot open {}", lock_path.display()), e))?;
        lock.try_lock().map_err(|e| {
            StoreError::Storage(format!(
                "{} is in use by another emulator (cannot lock {}: {e})",
                dir.display(),
                lock_path.display()
            ))
        })?;
        let mut engine = Engine::open_at(dir.join(LSM_DIR), options, false)?;
        engine._lock = Some(lock);
        Ok(engine)
    }

    /// An engine in a temporary directory, deleted when dropped (`--in-memory`: nothing is
    /// kept, but the write path is the same, and memory stays bounded).
    pub fn temporary(options: EngineOptions) -> Result<Engine, StoreError> {
        let temp = tempfile::Builder::new()
            .prefix("chatpipe-hbase-emulator-")
            .tempdir()
            .map_err(|e| storage("cannot create a temporary directory", e))?;
        let mut engine = Engine::open_at(temp.path().join(LSM_DIR), options, true)?;
        engine._temp = Some(temp);
        Ok(engine)
    }

    fn open_at(path: PathBuf, options: EngineOptions, temporary: bool) -> Result<Engine, StoreError> {
        let memstore = options.memstore_bytes.max(EngineOptions::MIN_MEMSTORE_BYTES);
        let keyspace = Config::new(&path)
            .max_write_buffer_size(memstore)
            .cache_size(options.block_cache_bytes)
            .temporary(temporary)
            .open()
            .map_err(|e| storage(&format!("cannot open the store in {}", path.display()), e))?;
        // A memtable is flushed at a quarter of the memstore, so that one can be flushed while
        // the next fills (HBase: `hbase.hregion.memstore.flush.size` under the global limit).
        let memtable = u32::try_from(memstore / 4).unwrap_or(u32::MAX);
        let rows = keyspace
            .open_partition(
                ROWS_PARTITION,
                PartitionCreateOptions::default()
                    .max_memtable_size(memtable)
                    .block_size(16 * 1024)
                    // Size-tiered, as HBase's own (ratio-based) compaction policy: a byte is
                    // rewritten a few times, not once per level as in leveled compaction.
                    .compaction_strategy(Strategy::SizeTiered(SizeTiered::default())),
            )
            .map_err(|e| storage("cannot open the rows", e))?;
        let meta = keyspace
            .open_partition("meta", PartitionCreateOptions::default())
            .map_err(|e| storage("cannot open the table descriptors", e))?;
        Ok(Engine { keyspace, rows, meta, durability: options.durability, _lock: None, _temp: None })
    }

    /// A consistent view of the row edits as of the last finished commit: a batch being
    /// applied is either wholly in it or absent (plain partition reads see a batch's entries
    /// as they are inserted).
    pub fn rows_snapshot(&self) -> fjall::Snapshot {
        self.rows.snapshot_at(self.keyspace.instant())
    }

    /// The keyspace (for batches of a known size).
    pub fn keyspace(&self) -> Keyspace {
        self.keyspace.clone()
    }

    /// A new, empty batch.
    pub fn batch(&self) -> Batch {
        self.keyspace.batch()
    }

    fn persist_mode(&self) -> PersistMode {
        match self.durability {
            Durability::Os => PersistMode::Buffer,
            Durability::Fsync => PersistMode::SyncData,
        }
    }

    /// Commits a batch atomically to the journal and memtables; durable as configured when
    /// `durable`, else left in the journal's buffer for a later commit or [`Engine::sync`].
    pub fn commit(&self, batch: Batch, durable: bool) -> Result<(), StoreError> {
        let mode = durable.then(|| self.persist_mode());
        batch.durability(mode).commit().map_err(|e| storage("writing the log failed", e))
    }

    /// Makes everything committed so far durable as configured.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.keyspace.persist(self.persist_mode()).map_err(|e| storage("writing the log failed", e))
    }

    /// Flushes the memtables of the rows to a sorted file and waits for it (HBase `flush`).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.rows.rotate_memtable_and_wait().map_err(|e| storage("flush failed", e))
    }

    /// Flushes, then merges every sorted file of the rows into one (HBase `major_compact`).
    pub fn major_compact(&self) -> Result<(), StoreError> {
        self.flush()?;
        self.rows.major_compact().map_err(|e| storage("major compaction failed", e))
    }

    /// What the engine has done so far.
    pub fn stats(&self) -> EngineStats {
        EngineStats {
            files: self.rows.segment_count(),
            flushes: self.keyspace.flushes_completed(),
            compactions: self.keyspace.compactions_completed(),
            memstore_bytes: self.keyspace.write_buffer_size(),
            disk_bytes: self.keyspace.disk_space(),
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Everything acknowledged is in the journal already; this makes a clean close durable
        // under `os` too.
        if let Err(e) = self.keyspace.persist(PersistMode::SyncAll) {
            tracing::warn!(error = %e, "syncing the store on close failed");
        }
    }
}
