//! Row edits: what one engine entry of a row holds (keys in `keys.rs`), and how a row is
//! put back together from its edits, as HBase merges a row's cells from the memstore and
//! its store files.
//!
//! An edit is either a **delta** — the changes one call made to the row (puts, column,
//! family and row deletes, all at one timestamp), written blind: no read before the write,
//! so a put costs one log append and one memtable insert whatever the row holds — or a
//! **snapshot** of the whole row (`row.rs`'s encoding), which a read-modify-write
//! (`increment`, `append`, `checkAndPut`) or a fold (a row with many deltas) writes over
//! the edits it read, deleting them.
//!
//! **Guarantee.** Merging applies a row's edits in commit order (the sequence number in the
//! key) from its newest snapshot on, with `row.rs`'s semantics (a marker masks older puts,
//! `maxVersions` kept per column), so a row reads exactly as if every call had rewritten it
//! in place. **Failure**: bytes that are not an edit make the merge fail (`None`): the
//! caller reports a corrupt row; nothing is dropped silently.

use super::batch::{OpKind, OpRef};
use super::TableMeta;
use crate::row::{Reader, Row};

/// First byte of a snapshot (`Row::encode`'s version byte).
const SNAPSHOT: u8 = 1;
/// First byte of a delta.
const DELTA: u8 = 2;

const PUT: u8 = 1;
const DELETE_COLUMN: u8 = 2;
const DELETE_FAMILY: u8 = 3;
const DELETE_ROW: u8 = 4;

/// Most deltas a read merges before it asks for the row to be folded into a snapshot.
pub const FOLD_AFTER_EDITS: usize = 16;

/// Builds a delta: the changes of one call to one row, at one timestamp.
#[derive(Debug)]
pub struct DeltaWriter(Vec<u8>);

impl DeltaWriter {
    /// A delta at `ts`, with room for `bytes` bytes of changes.
    pub fn new(ts: i64, bytes: usize) -> Self {
        let mut w = Vec::with_capacity(9 + bytes);
        w.push(DELTA);
        w.extend_from_slice(&ts.to_be_bytes());
        DeltaWriter(w)
    }

    fn name(&mut self, kind: u8, family: &[u8]) {
        self.0.push(kind);
        // Family names are checked against the table's families (short) before this.
        self.0.extend_from_slice(&(family.len().min(u16::MAX as usize) as u16).to_be_bytes());
        self.0.extend_from_slice(&family[..family.len().min(u16::MAX as usize)]);
    }

    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(&(b.len() as u32).to_be_bytes());
        self.0.extend_from_slice(b);
    }

    pub fn put(&mut self, family: &[u8], qualifier: &[u8], value: &[u8]) {
        self.name(PUT, family);
        self.bytes(qualifier);
        self.bytes(value);
    }

    pub fn delete_column(&mut self, family: &[u8], qualifier: &[u8]) {
        self.name(DELETE_COLUMN, family);
        self.bytes(qualifier);
    }

    pub fn delete_family(&mut self, family: &[u8]) {
        self.name(DELETE_FAMILY, family);
    }

    pub fn delete_row(&mut self) {
        self.0.push(DELETE_ROW);
    }

    pub fn op(&mut self, op: OpRef<'_>) {
        match op.kind {
            OpKind::Put => self.put(op.family, op.qualifier, op.value),
            OpKind::DeleteColumn => self.delete_column(op.family, op.qualifier),
            OpKind::DeleteFamily => self.delete_family(op.family),
            OpKind::DeleteRow => self.delete_row(),
        }
    }

    pub fn finish(self) -> Vec<u8> {
        self.0
    }
}

/// The delta of `ops` at `ts`.
pub fn delta<'a>(ts: i64, ops: impl Iterator<Item = OpRef<'a>> + Clone) -> Vec<u8> {
    let bytes = ops.clone().map(|op| 11 + op.family.len() + op.qualifier.len() + op.value.len()).sum();
    let mut w = DeltaWriter::new(ts, bytes);
    for op in ops {
        w.op(op);
    }
    w.finish()
}

/// The most versions a family keeps (1 for a family the table does not have).
pub fn max_versions(meta: &TableMeta, family: &[u8]) -> usize {
    meta.family(family).map_or(1, |f| f.max_versions.max(1) as usize)
}

/// Applies one delta to a row; `None` if the bytes are not a delta.
fn apply_delta(meta: &TableMeta, row: &mut Row, bytes: &[u8]) -> Option<()> {
    let mut r = Reader(bytes);
    if r.u8()? != DELTA {
        return None;
    }
    let ts = r.u64()? as i64;
    while !r.0.is_empty() {
        let kind = r.u8()?;
        if kind == DELETE_ROW {
            for f in &meta.families {
                row.delete_family(&f.name, ts);
            }
            continue;
        }
        let len = usize::from(u16::from_be_bytes(r.take(2)?.try_into().ok()?));
        let family = r.take(len)?;
        match kind {
            PUT => {
                let qualifier = r.sized()?;
                let value = r.sized()?;
                row.put(family, qualifier, value, ts, max_versions(meta, family));
            }
            DELETE_COLUMN => row.delete_column(family, r.sized()?, ts),
            DELETE_FAMILY => row.delete_family(family, ts),
            _ => return None,
        }
    }
    Some(())
}

/// Applies an edit (delta or snapshot) written after everything `row` holds.
pub fn apply(meta: &TableMeta, row: &mut Row, edit: &[u8]) -> Option<()> {
    match edit.first()? {
        &SNAPSHOT => {
            *row = Row::decode(edit)?;
            Some(())
        }
        _ => apply_delta(meta, row, edit),
    }
}

/// A row from its edits, newest first (as a forward scan reads them); `None` if an edit is
/// corrupt. Edits older than the newest snapshot are not read.
pub fn merge<E: AsRef<[u8]>>(meta: &TableMeta, newest_first: &[E]) -> Option<Row> {
    let start =
        newest_first.iter().position(|e| e.as_ref().first() == Some(&SNAPSHOT)).map_or(newest_first.len(), |i| i + 1);
    let mut row = Row::default();
    for edit in newest_first[..start].iter().rev() {
        apply(meta, &mut row, edit.as_ref())?;
    }
    Some(row)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::batch::MutationBatch;
    use crate::store::meta::TableMeta;
    use crate::store::{FamilyDescriptor, Op, RowEdit};

    fn delta(ts: i64, ops: &[Op]) -> Vec<u8> {
        let batch = MutationBatch::from(&[RowEdit { row: b"r".to_vec(), ops: ops.to_vec() }][..]);
        let (_, ops) = batch.rows().next().unwrap();
        super::delta(ts, ops)
    }

    fn meta() -> TableMeta {
        TableMeta {
            id: 1,
            name: b"t".to_vec(),
            families: vec![
                FamilyDescriptor { max_versions: 2, ..FamilyDescriptor::new("a") },
                FamilyDescriptor::new("b"),
            ],
            enabled: true,
            split_points: Vec::new(),
            created_ms: 0,
        }
    }

    fn put(f: &str, q: &str, v: &str) -> Op {
        Op::Put { family: f.into(), qualifier: q.into(), value: v.into() }
    }

    /// The same calls applied in place, one by one, as the store did before edits.
    fn in_place(meta: &TableMeta, calls: &[(i64, Vec<Op>)]) -> Row {
        let mut row = Row::default();
        for (ts, ops) in calls {
            for op in ops {
                match op {
                    Op::Put { family, qualifier, value } => {
                        row.put(family, qualifier, value, *ts, max_versions(meta, family))
                    }
                    Op::DeleteColumn { family, qualifier } => row.delete_column(family, qualifier, *ts),
                    Op::DeleteFamily { family } => row.delete_family(family, *ts),
                    Op::DeleteRow => meta.families.iter().for_each(|f| row.delete_family(&f.name, *ts)),
                }
            }
        }
        row
    }

    #[test]
    fn merged_deltas_read_as_the_calls_applied_in_place() {
        let meta = meta();
        let calls = vec![
            (10, vec![put("a", "q", "1"), put("b", "", "x")]),
            (30, vec![put("a", "q", "3")]),
            (20, vec![put("a", "q", "2"), Op::DeleteColumn { family: b"b".to_vec(), qualifier: b"gone".to_vec() }]),
            (25, vec![Op::DeleteFamily { family: b"b".to_vec() }]),
            (5, vec![put("b", "late", "masked")]),
            (40, vec![Op::DeleteRow, put("a", "z", "after")]),
            (40, vec![put("a", "q", "at-the-marker")]),
            (41, vec![put("a", "q", "visible")]),
        ];
        let mut newest_first: Vec<Vec<u8>> = calls.iter().map(|(ts, ops)| delta(*ts, ops)).collect();
        newest_first.reverse();
        let merged = merge(&meta, &newest_first).unwrap();
        assert_eq!(merged, in_place(&meta, &calls));
        // A snapshot in the middle stands for everything older.
        let snapshot = in_place(&meta, &calls[..4]).encode();
        let mut with_snapshot: Vec<Vec<u8>> = calls[4..].iter().map(|(ts, ops)| delta(*ts, ops)).collect();
        with_snapshot.reverse();
        with_snapshot.push(snapshot);
        with_snapshot.push(b"older edits are not read".to_vec());
        assert_eq!(merge(&meta, &with_snapshot).unwrap(), merged);
    }

    #[test]
    fn corrupt_edits_fail_the_merge() {
        let meta = meta();
        let good = delta(1, &[put("a", "q", "v")]);
        assert!(merge(&meta, std::slice::from_ref(&good)).is_some());
        assert!(merge(&meta, &[good[..good.len() - 1].to_vec()]).is_none());
        assert!(merge(&meta, &[vec![9u8, 0, 0]]).is_none());
        assert!(merge(&meta, &[Vec::<u8>::new()]).is_none());
    }
}
