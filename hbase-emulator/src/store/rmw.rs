//! Read-modify-writes: `increment`, `append` and `checkAndPut`. Each runs on the committer
//! thread (`commit.rs`), which reads the row (its group's changes first), so it is atomic
//! with respect to every other write; its result replaces the edits it read with one
//! snapshot. All of a call's changes commit, or none if it fails (a counter that is not
//! 8 bytes wide, say).

use std::sync::Arc;

use super::commit::Txn;
use super::edit::max_versions;
use super::meta::show;
use super::read::expired;
use super::{Increment, Store, StoreError, StoredCell, TableMeta};
use crate::row::Row;

/// The newest visible (unexpired) version of a column.
fn latest<'r>(
    meta: &TableMeta,
    row: &'r Row,
    family: &[u8],
    qualifier: &[u8],
    now: i64,
) -> Result<Option<(i64, &'r [u8])>, StoreError> {
    let desc = meta.require_family(family)?;
    let Some(fam) = row.family(family) else { return Ok(None) };
    let Ok(i) = fam.columns.binary_search_by(|c| c.qualifier.as_slice().cmp(qualifier)) else {
        return Ok(None);
    };
    Ok(fam.columns[i].versions.iter().find(|v| !expired(desc, v.ts, now)).map(|v| (v.ts, v.value.as_slice())))
}

impl Store {
    /// Runs a read-modify-write of `rows` rows on the committer: all of `step`'s changes are
    /// committed, or none if it fails.
    fn read_modify_write<T: Send + 'static>(
        &self,
        table: &[u8],
        rows: usize,
        step: impl FnOnce(&mut Txn<'_, '_>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let tables = self.tables.read();
        let meta = Arc::clone(tables.get(table).ok_or_else(|| StoreError::TableNotFound(show(table)))?);
        meta.require_enabled()?;
        let result = self.submit(rows, move |group| {
            let mut txn = Txn::new(group, &meta);
            let out = step(&mut txn)?;
            txn.finish();
            Ok(out)
        });
        drop(tables);
        result
    }

    /// Adds `amount` to the 8-byte big-endian counter of each cell, atomically, and returns
    /// the new values. A missing cell counts as 0; any other width is refused.
    pub fn increment(&self, table: &[u8], increments: &[Increment], now: i64) -> Result<Vec<i64>, StoreError> {
        let increments = increments.to_vec();
        self.read_modify_write(table, increments.len(), move |txn| {
            let mut out = Vec::with_capacity(increments.len());
            for Increment { row: key, family, qualifier, amount } in &increments {
                let mut row = txn.load(key)?;
                let (old, old_ts) = match latest(txn.meta, &row, family, qualifier, now)? {
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
                    row.put(family, qualifier, &new.to_be_bytes(), ts, max_versions(txn.meta, family));
                    txn.save(key, row);
                }
                out.push(new);
            }
            Ok(out)
        })
    }

    /// Appends bytes to cells (a missing cell is empty) and returns the new cells.
    pub fn append(
        &self,
        table: &[u8],
        key: &[u8],
        columns: &[(Vec<u8>, Vec<u8>, Vec<u8>)],
        now: i64,
    ) -> Result<Vec<StoredCell>, StoreError> {
        let (key, columns) = (key.to_vec(), columns.to_vec());
        self.read_modify_write(table, 1, move |txn| {
            let mut out = Vec::with_capacity(columns.len());
            for (family, qualifier, suffix) in &columns {
                let mut row = txn.load(&key)?;
                let (value, ts) = match latest(txn.meta, &row, family, qualifier, now)? {
                    None => (suffix.clone(), now),
                    Some((t, v)) => {
                        let mut v = v.to_vec();
                        v.extend_from_slice(suffix);
                        (v, now.max(t.saturating_add(1)))
                    }
                };
                row.put(family, qualifier, &value, ts, max_versions(txn.meta, family));
                txn.save(&key, row);
                out.push(StoredCell { family: family.clone(), qualifier: qualifier.clone(), ts, value });
            }
            Ok(out)
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
        let key = key.to_vec();
        let (family, qualifier) = (check.0.to_vec(), check.1.to_vec());
        let expected = expected.unwrap_or_default().to_vec();
        let (put_family, put_qualifier, put_value) = (put.0.to_vec(), put.1.to_vec(), put.2.to_vec());
        self.read_modify_write(table, 1, move |txn| {
            txn.meta.require_family(&put_family)?;
            let mut row = txn.load(&key)?;
            let matches = match latest(txn.meta, &row, &family, &qualifier, now)? {
                None => expected.is_empty(),
                Some((_, v)) => expected == v,
            };
            if matches {
                row.put(&put_family, &put_qualifier, &put_value, now, max_versions(txn.meta, &put_family));
                txn.save(&key, row);
            }
            Ok(matches)
        })
    }
}
