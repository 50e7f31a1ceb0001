//! A batch of row mutations held in one buffer: rows, families, qualifiers and values are
//! ranges of it, so that a `mutateRows` of thousands of cells is decoded with a handful of
//! allocations instead of several per cell (`mutate_rows.rs` decodes into it straight off
//! the wire). Pure data, no I/O; the store validates it before writing anything.

use std::ops::Range;

use super::{Op, RowEdit};

/// What an op does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Put,
    /// Every version ≤ ts of one column.
    DeleteColumn,
    /// Every cell ≤ ts of one family.
    DeleteFamily,
    /// Every cell ≤ ts of the row.
    DeleteRow,
}

#[derive(Debug, Clone)]
struct BatchOp {
    kind: OpKind,
    family: Range<usize>,
    qualifier: Range<usize>,
    value: Range<usize>,
}

#[derive(Debug, Clone)]
struct BatchRow {
    row: Range<usize>,
    ops: Range<usize>,
}

/// One op of a row, borrowed from the batch (empty slices where the kind has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpRef<'a> {
    pub kind: OpKind,
    pub family: &'a [u8],
    pub qualifier: &'a [u8],
    pub value: &'a [u8],
}

/// Row mutations in one buffer, in the order they were added.
#[derive(Debug, Clone, Default)]
pub struct MutationBatch {
    bytes: Vec<u8>,
    rows: Vec<BatchRow>,
    ops: Vec<BatchOp>,
}

impl MutationBatch {
    /// An empty batch with room for `bytes` bytes, `rows` rows and `ops` ops.
    pub fn with_capacity(bytes: usize, rows: usize, ops: usize) -> Self {
        MutationBatch { bytes: Vec::with_capacity(bytes), rows: Vec::with_capacity(rows), ops: Vec::with_capacity(ops) }
    }

    /// The buffer, for a decoder to append bytes to; ranges of it name rows, columns, values.
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }

    /// Appends bytes to the buffer and returns their range.
    pub fn push_bytes(&mut self, b: &[u8]) -> Range<usize> {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(b);
        start..self.bytes.len()
    }

    /// Starts a row: the ops pushed next are its ops.
    pub fn start_row(&mut self, row: Range<usize>) {
        let at = self.ops.len();
        self.rows.push(BatchRow { row, ops: at..at });
    }

    /// Adds an op to the last row started (ignored before the first row).
    pub fn push_op(&mut self, kind: OpKind, family: Range<usize>, qualifier: Range<usize>, value: Range<usize>) {
        if let Some(last) = self.rows.last_mut() {
            self.ops.push(BatchOp { kind, family, qualifier, value });
            last.ops.end = self.ops.len();
        }
    }

    /// How many rows.
    pub fn row_count(&self) -> usize {
        self.rows.len()
    }

    /// Each row and its ops, in order.
    pub fn rows(&self) -> impl Iterator<Item = (&[u8], impl Iterator<Item = OpRef<'_>> + Clone)> {
        self.rows.iter().map(|r| {
            let ops = self.ops[r.ops.clone()].iter().map(|o| OpRef {
                kind: o.kind,
                family: &self.bytes[o.family.clone()],
                qualifier: &self.bytes[o.qualifier.clone()],
                value: &self.bytes[o.value.clone()],
            });
            (&self.bytes[r.row.clone()], ops)
        })
    }
}

impl From<&[RowEdit]> for MutationBatch {
    fn from(rows: &[RowEdit]) -> Self {
        let mut b = MutationBatch::default();
        for rm in rows {
            let row = b.push_bytes(&rm.row);
            b.start_row(row);
            for op in &rm.ops {
                let none = b.bytes.len()..b.bytes.len();
                match op {
                    Op::Put { family, qualifier, value } => {
                        let (f, q, v) = (b.push_bytes(family), b.push_bytes(qualifier), b.push_bytes(value));
                        b.push_op(OpKind::Put, f, q, v);
                    }
                    Op::DeleteColumn { family, qualifier } => {
                        let (f, q) = (b.push_bytes(family), b.push_bytes(qualifier));
                        b.push_op(OpKind::DeleteColumn, f, q, none);
                    }
                    Op::DeleteFamily { family } => {
                        let f = b.push_bytes(family);
                        b.push_op(OpKind::DeleteFamily, f, none.clone(), none);
                    }
                    Op::DeleteRow => b.push_op(OpKind::DeleteRow, none.clone(), none.clone(), none),
                }
            }
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_ops_read_back_in_order() {
        let rows = vec![
            RowEdit {
                row: b"r1".to_vec(),
                ops: vec![
                    Op::Put { family: b"f".to_vec(), qualifier: b"q".to_vec(), value: b"v".to_vec() },
                    Op::DeleteFamily { family: b"g".to_vec() },
                ],
            },
            RowEdit { row: b"r2".to_vec(), ops: vec![] },
            RowEdit { row: b"r3".to_vec(), ops: vec![Op::DeleteRow] },
        ];
        let batch = MutationBatch::from(rows.as_slice());
        let read: Vec<(Vec<u8>, Vec<OpRef<'_>>)> = batch.rows().map(|(r, ops)| (r.to_vec(), ops.collect())).collect();
        assert_eq!(read.len(), 3);
        assert_eq!(read[0].1[0], OpRef { kind: OpKind::Put, family: b"f", qualifier: b"q", value: b"v" });
        assert_eq!(read[0].1[1].kind, OpKind::DeleteFamily);
        assert_eq!(read[0].1[1].family, b"g");
        assert!(read[1].1.is_empty());
        assert_eq!((read[2].0.as_slice(), read[2].1[0].kind), (&b"r3"[..], OpKind::DeleteRow));
    }
}
