//! Group commit: every write of the store goes through one committer thread, as HBase's
//! WAL syncs many handlers' edits with one `hflush`.
//!
//! A write is a [`Job`]. A put or delete appends one blind edit per row (`edit.rs`: no read
//! before the write); a read-modify-write (`increment`, `append`, `checkAndPut`, a fold)
//! loads the rows it changes (its own group's changes first, then the engine) and stages
//! snapshots of them. The committer runs every job waiting when it wakes (up to
//! [`MAX_GROUP_ROWS`] rows) in arrival order, giving each edit the next sequence number,
//! writes the group in one atomic [`Engine::commit`] (one log append, one `fdatasync` under
//! `fsync`) and only then answers each caller. A read-modify-write that follows blind edits
//! in the same group first commits them (without the sync), so that it reads them; the
//! group's answers still wait for its last commit. One thread doing every read-modify-write
//! is what makes `increment`, `append` and `checkAndPut` atomic.
//!
//! **Sequence numbers** order a row's edits. They are reserved in blocks recorded in the
//! metadata in the same atomic batch as the first edit of a block, so after a restart every
//! new edit sorts after every recovered one.
//!
//! **Failure.** A job that fails (a counter that is not 8 bytes, say) leaves nothing in the
//! group and is answered with its error; the others commit. A failed commit answers every
//! job of the group with the storage error: none of it is acknowledged.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::Arc;

use fjall::{Batch, Slice};

use super::engine::Engine;
use super::{edit, StoreError, TableMeta};
use crate::keys;
use crate::row::Row;

/// Most rows written in one group commit.
pub const MAX_GROUP_ROWS: usize = 20_000;

/// Sequence numbers reserved at a time.
const SEQ_BLOCK: u64 = 1 << 20;
/// The metadata key of the sequence reservation: every edit on disk has a lower number.
pub const SEQ_RESERVED: &[u8] = b"counter/edit_seq_reserved";

/// What a job hands back: called with the group's commit outcome, it answers the caller.
pub type Answer = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// One write waiting for the committer.
pub struct Job {
    /// Rows it will write (to size groups).
    pub rows: usize,
    pub run: Box<dyn FnOnce(&mut Group<'_>) -> Answer + Send>,
}

/// The next sequence number and the end of the reserved block.
#[derive(Debug, Clone, Copy)]
pub struct Sequence {
    next: u64,
    reserved: u64,
}

impl Sequence {
    /// Continues after `reserved`, the last reservation found in the metadata.
    pub fn after(reserved: u64) -> Self {
        Sequence { next: reserved, reserved }
    }
}

/// The edits of the jobs of one group, not yet committed.
pub struct Group<'e> {
    engine: &'e Engine,
    seq: &'e mut Sequence,
    /// Edits (a value) and deletions (`None`) of row edits not yet committed.
    edits: Vec<(Slice, Option<Slice>)>,
    /// A new sequence reservation to record with them.
    reservation: Option<u64>,
    /// The uncommitted edits include blind ones.
    blind: bool,
    /// Rows rewritten by read-modify-writes since the last commit, by row prefix.
    pending: HashMap<Vec<u8>, Row>,
    /// The committed edit keys of the rows loaded since the last commit (deleted when the
    /// row's snapshot is written).
    loaded: HashMap<Vec<u8>, Vec<Slice>>,
    /// Part of the group is committed (and not yet synced under `fsync`).
    committed_part: bool,
    failed: Option<StoreError>,
}

impl<'e> Group<'e> {
    fn new(engine: &'e Engine, seq: &'e mut Sequence) -> Self {
        Group {
            engine,
            seq,
            edits: Vec::new(),
            reservation: None,
            blind: false,
            pending: HashMap::new(),
            loaded: HashMap::new(),
            committed_part: false,
            failed: None,
        }
    }

    fn next_seq(&mut self) -> u64 {
        let seq = self.seq.next;
        self.seq.next += 1;
        if self.seq.next > self.seq.reserved {
            self.seq.reserved = self.seq.reserved.saturating_add(SEQ_BLOCK);
            self.reservation = Some(self.seq.reserved);
        }
        seq
    }

    /// Appends a blind delta to the row whose prefix is `prefix` (`keys::row_prefix`).
    /// The delta comes as the engine's value type, built on the caller's thread, so that the
    /// committer does not copy it.
    pub fn append(&mut self, meta: &TableMeta, prefix: Vec<u8>, delta: Slice) -> Result<(), StoreError> {
        if let Some(row) = self.pending.get_mut(&prefix) {
            // Rewritten earlier in this group: the snapshot to be written includes it.
            return edit::apply(meta, row, &delta).ok_or_else(|| StoreError::Storage("corrupt delta".into()));
        }
        let seq = self.next_seq();
        self.edits.push((keys::edit_key(&prefix, seq).into(), Some(delta)));
        self.blind = true;
        Ok(())
    }

    /// A row as the group sees it: rewritten in this group, else as committed (with this
    /// group's blind edits), else empty.
    pub fn load(&mut self, meta: &TableMeta, prefix: &[u8]) -> Result<Row, StoreError> {
        if self.blind {
            self.commit_part()?;
        }
        if let Some(row) = self.pending.get(prefix) {
            return Ok(row.clone());
        }
        let mut keys = Vec::new();
        let mut edits = Vec::new();
        for entry in self.engine.rows.prefix(prefix) {
            let (k, v) = entry.map_err(|e| StoreError::Storage(format!("reading a row failed: {e}")))?;
            keys.push(k);
            edits.push(v);
        }
        let row = edit::merge(meta, &edits).ok_or_else(|| StoreError::Storage("corrupt row in the store".into()))?;
        self.loaded.insert(prefix.to_vec(), keys);
        Ok(row)
    }

    /// Stages rows a job computed (all or nothing for that job), by row prefix.
    pub fn stage(&mut self, rows: HashMap<Vec<u8>, Row>) {
        self.pending.extend(rows);
    }

    /// Moves the rewritten rows into the batch: a snapshot each, and a tombstone for each
    /// edit it replaces.
    fn write_pending(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        for (prefix, row) in pending {
            // The snapshot first: a read of the row stops at it, whatever it finds below.
            if !row.is_empty() {
                let seq = self.next_seq();
                self.edits.push((keys::edit_key(&prefix, seq).into(), Some(row.encode().into())));
            }
            for key in self.loaded.remove(&prefix).unwrap_or_default() {
                self.edits.push((key, None));
            }
        }
        self.loaded.clear();
    }

    /// The uncommitted edits as one engine batch.
    fn take_batch(&mut self) -> Batch {
        let edits = std::mem::take(&mut self.edits);
        let mut batch = Batch::with_capacity(self.engine.keyspace(), edits.len() + 1);
        for (key, value) in edits {
            match value {
                Some(value) => batch.insert(&self.engine.rows, key, value),
                None => batch.remove(&self.engine.rows, key),
            }
        }
        if let Some(reserved) = self.reservation.take() {
            batch.insert(&self.engine.meta, SEQ_RESERVED, reserved.to_be_bytes().to_vec());
        }
        batch
    }

    /// Commits what the group has so far, without waiting for the disk.
    fn commit_part(&mut self) -> Result<(), StoreError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.write_pending();
        let batch = self.take_batch();
        self.blind = false;
        if batch.is_empty() {
            return Ok(());
        }
        self.committed_part = true;
        self.engine.commit(batch, false).inspect_err(|e| self.failed = Some(e.clone()))
    }

    fn commit(mut self) -> Result<(), StoreError> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        self.write_pending();
        let batch = self.take_batch();
        if !batch.is_empty() {
            return self.engine.commit(batch, true);
        }
        if self.committed_part {
            return self.engine.sync();
        }
        Ok(())
    }
}

/// A job's view for a read-modify-write that must be all or nothing: its own staged rows over
/// the group's.
pub struct Txn<'g, 'e> {
    group: &'g mut Group<'e>,
    pub meta: &'g TableMeta,
    staged: HashMap<Vec<u8>, Row>,
}

impl<'g, 'e> Txn<'g, 'e> {
    pub fn new(group: &'g mut Group<'e>, meta: &'g TableMeta) -> Self {
        Txn { group, meta, staged: HashMap::new() }
    }

    /// The row `row` of the table, as this job sees it.
    pub fn load(&mut self, row: &[u8]) -> Result<Row, StoreError> {
        let prefix = keys::row_prefix(self.meta.id, row);
        match self.staged.get(&prefix) {
            Some(r) => Ok(r.clone()),
            None => self.group.load(self.meta, &prefix),
        }
    }

    pub fn save(&mut self, row: &[u8], value: Row) {
        self.staged.insert(keys::row_prefix(self.meta.id, row), value);
    }

    /// Ends the job: its staged rows go to the group.
    pub fn finish(self) {
        self.group.stage(self.staged);
    }
}

/// Runs jobs until every sender is gone.
pub fn run_committer(engine: Arc<Engine>, mut seq: Sequence, jobs: mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut rows = first.rows;
        let mut group_jobs = vec![first];
        while rows < MAX_GROUP_ROWS {
            match jobs.try_recv() {
                Ok(j) => {
                    rows += j.rows;
                    group_jobs.push(j);
                }
                Err(_) => break,
            }
        }
        let mut group = Group::new(&engine, &mut seq);
        let mut answers = Vec::with_capacity(group_jobs.len());
        for job in group_jobs {
            // A panicking job (a bug) loses its answer (its caller sees the store closing);
            // the rest of the group goes on.
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (job.run)(&mut group)));
            if let Ok(answer) = ran {
                answers.push(answer);
            }
        }
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| group.commit()))
            .unwrap_or_else(|_| Err(StoreError::Storage("the write failed unexpectedly".into())));
        if let Err(e) = &outcome {
            tracing::error!(error = %e, "group commit failed; its writes were not acknowledged");
        }
        for answer in answers {
            answer(outcome.clone());
        }
    }
}
