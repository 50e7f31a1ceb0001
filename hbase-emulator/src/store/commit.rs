//! Group commit: every write of the store goes through one committer thread, as HBase's
//! WAL syncs many handlers' edits with one `hflush`.
//!
//! A write is a [`Job`]: it reads the rows it changes (its own earlier changes in the same
//! group first, then the engine), stages the new rows and returns its answer. The committer
//! runs every job waiting when it wakes (up to [`MAX_GROUP_ROWS`] rows), writes all their
//! rows in one atomic [`Engine::commit`] (one log append, one `fdatasync` under `fsync`), and
//! only then answers each caller. Jobs run in arrival order, so the outcome is that of
//! running them one by one; one thread doing every read-modify-write is also what makes
//! `increment`, `append` and `checkAndPut` atomic.
//!
//! **Failure.** A job that fails (a counter that is not 8 bytes, say) leaves nothing in the
//! group and is answered with its error; the others commit. A failed commit answers every
//! job of the group with the storage error: none of it is acknowledged.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::Arc;

use super::engine::Engine;
use super::{StoreError, TableMeta};
use crate::keys;
use crate::row::Row;

/// Most rows written in one group commit.
pub const MAX_GROUP_ROWS: usize = 20_000;

/// What a job hands back: called with the group's commit outcome, it answers the caller.
pub type Answer = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// One write waiting for the committer.
pub struct Job {
    /// Rows it will write (to size groups).
    pub rows: usize,
    pub run: Box<dyn FnOnce(&mut Group<'_>) -> Answer + Send>,
}

/// The rows changed by the jobs of one group, not yet committed.
pub struct Group<'e> {
    engine: &'e Engine,
    pending: HashMap<Vec<u8>, Row>,
}

impl<'e> Group<'e> {
    fn new(engine: &'e Engine) -> Self {
        Group { engine, pending: HashMap::new() }
    }

    /// A row as the group sees it: changed in this group, else as committed, else empty.
    pub fn load(&self, key: &[u8]) -> Result<Row, StoreError> {
        if let Some(row) = self.pending.get(key) {
            return Ok(row.clone());
        }
        self.load_committed(key)
    }

    fn load_committed(&self, key: &[u8]) -> Result<Row, StoreError> {
        match self.engine.rows.get(key).map_err(|e| StoreError::Storage(format!("reading a row failed: {e}")))? {
            Some(bytes) => Row::decode(&bytes).ok_or_else(|| StoreError::Storage("corrupt row in the store".into())),
            None => Ok(Row::default()),
        }
    }

    /// Changes one row in place (loading it first if this group has not touched it).
    pub fn update(&mut self, key: Vec<u8>, change: impl FnOnce(&mut Row)) -> Result<(), StoreError> {
        if !self.pending.contains_key(&key) {
            let row = self.load_committed(&key)?;
            self.pending.insert(key.clone(), row);
        }
        if let Some(row) = self.pending.get_mut(&key) {
            change(row);
        }
        Ok(())
    }

    /// Stages rows a job computed (all or nothing for that job).
    pub fn stage(&mut self, rows: HashMap<Vec<u8>, Row>) {
        self.pending.extend(rows);
    }

    fn commit(self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut batch = self.engine.batch();
        for (key, row) in self.pending {
            if row.is_empty() {
                batch.remove(&self.engine.rows, key);
            } else {
                batch.insert(&self.engine.rows, key, row.encode());
            }
        }
        self.engine.commit(batch)
    }
}

/// A job's view for a read-modify-write that must be all or nothing: its own staged rows over
/// the group's.
pub struct Txn<'g, 'e> {
    group: &'g Group<'e>,
    pub meta: &'g TableMeta,
    staged: HashMap<Vec<u8>, Row>,
}

impl<'g, 'e> Txn<'g, 'e> {
    pub fn new(group: &'g Group<'e>, meta: &'g TableMeta) -> Self {
        Txn { group, meta, staged: HashMap::new() }
    }

    /// The row `row` of the table, as this job sees it.
    pub fn load(&self, row: &[u8]) -> Result<Row, StoreError> {
        let key = keys::row_key(self.meta.id, row);
        match self.staged.get(&key) {
            Some(r) => Ok(r.clone()),
            None => self.group.load(&key),
        }
    }

    pub fn save(&mut self, row: &[u8], value: Row) {
        self.staged.insert(keys::row_key(self.meta.id, row), value);
    }

    /// The staged rows, for [`Group::stage`].
    pub fn into_staged(self) -> HashMap<Vec<u8>, Row> {
        self.staged
    }
}

/// Runs jobs until every sender is gone.
pub fn run_committer(engine: Arc<Engine>, jobs: mpsc::Receiver<Job>) {
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
        let mut group = Group::new(&engine);
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
