//! The read path: a row put together from its edits (`edit.rs`), which cells of it a read
//! returns (column selection, TTL, time range, filter, version limit), and scans page by
//! page over the engine's merged view of memtables and sorted files. Reads never wait for
//! writes: each get or scan page reads the latest committed state (fjall's sequence-number
//! snapshots). A read that finds a row with many edits reports it, and the store has it
//! folded into one snapshot edit on the committer.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use super::edit;
use super::engine::Engine;
use super::meta::{FamilyDescriptor, TableMeta, TTL_FOREVER};
use super::{ColumnSel, ReadSpec, StoreError};
use crate::filter::{CellRef, Filter};
use crate::keys;
use crate::row::Row;

/// One version of one cell, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCell {
    pub family: Vec<u8>,
    pub qualifier: Vec<u8>,
    pub ts: i64,
    pub value: Vec<u8>,
}

/// A row and its cells (family, qualifier ascending; versions newest first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowCells {
    pub row: Vec<u8>,
    pub cells: Vec<StoredCell>,
}

/// `columns` resolved as HBase resolves a Get's family map: `None` = the whole family.
pub type Selection = BTreeMap<Vec<u8>, Option<BTreeSet<Vec<u8>>>>;

pub fn resolve_selection(meta: &TableMeta, columns: &[ColumnSel]) -> Result<Selection, StoreError> {
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
    pub(super) table_id: u32,
    pub(super) table: Vec<u8>,
    /// Inclusive lower key bound.
    pub(super) lo: Vec<u8>,
    /// Exclusive upper key bound; `None`: the end of the key space.
    pub(super) hi: Option<Vec<u8>>,
    pub(super) reversed: bool,
    pub(super) exhausted: bool,
    pub(super) rows_returned: u64,
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
    pub(super) selection: Selection,
    pub(super) read: ReadSpec,
    pub(super) filter: Filter,
}

/// Whether a cell is past its family's TTL.
pub fn expired(family: &FamilyDescriptor, ts: i64, now: i64) -> bool {
    family.time_to_live != TTL_FOREVER && ts < now.saturating_sub(i64::from(family.time_to_live).saturating_mul(1000))
}

/// The cells a read returns of a row: selected columns, unexpired, within the time range,
/// through the filter (which sees every such version, as HBase's filters do), then up to the
/// requested versions per column (capped by `maxVersions`). Masked versions are never stored
/// (see `row.rs`), so markers need no check here.
pub fn read_row(
    meta: &TableMeta,
    row_key: &[u8],
    row: &Row,
    selection: &Selection,
    spec: &ReadSpec,
    filter: &Filter,
    now: i64,
) -> Vec<StoredCell> {
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
        cells.push(StoredCell {
            family: c.family.to_vec(),
            qualifier: c.qualifier.to_vec(),
            ts: c.ts,
            value: if filter.key_only { Vec::new() } else { c.value.to_vec() },
        });
    }
    cells
}

/// A row put together from its edits, newest first.
fn merged(meta: &TableMeta, edits: &[fjall::Slice]) -> Result<Row, StoreError> {
    edit::merge(meta, edits).ok_or_else(|| StoreError::Storage("corrupt row in the store".into()))
}

/// One row, from its edits; `folds` gets its prefix if it has many.
pub fn load_row(engine: &Engine, meta: &TableMeta, prefix: &[u8], folds: &mut Vec<Vec<u8>>) -> Result<Row, StoreError> {
    let mut edits = Vec::new();
    let view = engine.rows_snapshot();
    for entry in view.prefix(prefix) {
        let (_, v) = entry.map_err(|e| StoreError::Storage(format!("reading a row failed: {e}")))?;
        edits.push(v);
    }
    if edits.len() > edit::FOLD_AFTER_EDITS {
        folds.push(prefix.to_vec());
    }
    merged(meta, &edits)
}

/// Reads up to `max_rows` further non-empty rows of a scan from the engine (the caller has
/// checked the table and the page limits). A row's edits are adjacent: they are gathered
/// and merged when the next row's first edit (or the end) is read; the cursor moves past
/// each finished row, so a page that stops early reads the next row again from its start.
/// Prefixes of rows with many edits go to `folds`.
pub fn scan_page(
    engine: &Engine,
    meta: &TableMeta,
    cursor: &mut ScanCursor,
    scan: &PreparedScan,
    max_rows: usize,
    now: i64,
    folds: &mut Vec<Vec<u8>>,
) -> Result<Vec<RowCells>, StoreError> {
    let mut out = Vec::new();
    if cursor.hi.as_ref().is_some_and(|h| *h <= cursor.lo) {
        cursor.exhausted = true;
        return Ok(out);
    }
    let range: (Bound<Vec<u8>>, Bound<Vec<u8>>) =
        (Bound::Included(cursor.lo.clone()), cursor.hi.clone().map_or(Bound::Unbounded, Bound::Excluded));
    let view = engine.rows_snapshot();
    let iter = view.range(range).map(|entry| entry.map_err(|e| e.to_string()));
    let mut iter: Box<dyn Iterator<Item = Result<(fjall::Slice, fjall::Slice), String>>> =
        if cursor.reversed { Box::new(iter.rev()) } else { Box::new(iter) };
    // The row being gathered: its prefix, its row key if the filter may keep it, its edits.
    let mut current: Option<(Vec<u8>, Option<Vec<u8>>)> = None;
    let mut edits: Vec<fjall::Slice> = Vec::new();
    while out.len() < max_rows {
        let next = iter.next().transpose().map_err(|e| StoreError::Storage(format!("scan failed: {e}")))?;
        let prefix = match &next {
            Some((key, _)) => Some(keys::prefix_of(key).ok_or_else(|| StoreError::Storage("corrupt key".into()))?),
            None => None,
        };
        let same_row = matches!((&current, prefix), (Some((c, _)), Some(p)) if c.as_slice() == p);
        if !same_row {
            if let Some((done, wanted)) = current.take() {
                // Past this row, whichever way the scan goes.
                if cursor.reversed {
                    cursor.hi = Some(done[..done.len() - 2].to_vec());
                } else {
                    cursor.lo = keys::after_row(&done);
                }
                if let Some(row_key) = wanted {
                    if edits.len() > edit::FOLD_AFTER_EDITS {
                        folds.push(done.clone());
                    }
                    if cursor.reversed {
                        edits.reverse();
                    }
                    let row = merged(meta, &edits)?;
                    let cells = read_row(meta, &row_key, &row, &scan.selection, &scan.read, &scan.filter, now);
                    if !cells.is_empty() {
                        out.push(RowCells { row: row_key, cells });
                    }
                }
                edits.clear();
            }
            let Some(prefix) = prefix else {
                cursor.exhausted = true;
                break;
            };
            let row_key = keys::row_of(prefix);
            let wanted = scan.filter.row_may_match(&row_key).then_some(row_key);
            current = Some((prefix.to_vec(), wanted));
        }
        if let (Some((_, Some(_))), Some((_, value))) = (&current, next) {
            edits.push(value);
        }
    }
    cursor.rows_returned += out.len() as u64;
    Ok(out)
}
