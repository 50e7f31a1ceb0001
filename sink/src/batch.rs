//! The pure part of the sink: decoding and validating records, buffering them per
//! partition, and planning how a batch is written so that it means exactly what applying its
//! mutations one by one, in offset order, means.
//!
//! # Why a plan
//!
//! The sink writes with server timestamps (Thrift1's `Mutation` has no per-cell timestamp),
//! and HBase resolves cells by timestamp, not by arrival:
//!
//! * a delete marker masks every put of its column (or row) with a timestamp **≤** its own,
//!   so a put that follows a delete within the same millisecond would be invisible;
//! * one `mutateRows` call turns each row's mutations into one `Put` and one `Delete` and
//!   applies all puts before all deletes (`ThriftHBaseServiceHandler.mutateRowsTs`), so a
//!   row's put-after-delete cannot share a call with that delete either;
//! * two values of one column in one call have the same timestamp, and which one wins is
//!   not specified.
//!
//! So [`plan`] coalesces each row's consecutive mutations into one entry with the same
//! final effect (a later put of a column replaces an earlier one; a column delete removes
//! earlier puts of that column and stays a delete; a row delete replaces everything before
//! it), and starts a new **phase** for a row only when a put must follow a delete of the
//! same row or column. Phases run in order and the executor (`writer.rs`) waits until the
//! clock has moved past the millisecond of the last acknowledged delete before a phase that
//! puts, so the put always lands at a later timestamp than the delete. Within one phase,
//! every row appears once and no put overlaps a delete of the same entry, so the order in
//! which HBase applies a phase does not matter.
//!
//! That is also what makes replays safe: every replayed mutation gets a newer timestamp than
//! anything written before, so replaying any suffix of a partition re-applies a suffix of
//! each row's history in order, which ends in the same visible state.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use chatpipe_common::row_key::MAX_ROW_LENGTH;
use chatpipe_common::rows::{self, RowMutation};

/// DLQ reason codes (header `chatpipe.reason`).
pub mod reason {
    /// The value is not a `RowBatch` (or, from older builds, `RowMutation`) envelope.
    pub const UNDECODABLE: &str = "undecodable";
    /// It decodes but can never be written (empty row or table, malformed column).
    pub const INVALID: &str = "invalid_mutation";
    /// HBase: the table does not exist.
    pub const UNKNOWN_TABLE: &str = "unknown_table";
    /// HBase: a column family does not exist in the table.
    pub const UNKNOWN_FAMILY: &str = "unknown_family";
    /// HBase: `IllegalArgument`.
    pub const ILLEGAL_ARGUMENT: &str = "illegal_argument";
    /// HBase refused it for another reason it says will not change on retry.
    pub const REJECTED: &str = "rejected";
    /// Transient errors outlasted `--max-retries`.
    pub const RETRIES_EXHAUSTED: &str = "retries_exhausted";
}

/// Why a record goes to the DLQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// One of [`reason`].
    pub reason: &'static str,
    /// Human-readable detail.
    pub detail: String,
}

impl Rejection {
    /// A rejection with `reason` and `detail`.
    pub fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        Rejection { reason, detail: detail.into() }
    }
}

/// One consumed record.
#[derive(Debug, Clone)]
pub struct Record {
    /// Its offset in the partition.
    pub offset: i64,
    /// The record key (kept for the DLQ).
    pub key: Option<Vec<u8>>,
    /// The record value (kept for the DLQ).
    pub payload: Vec<u8>,
    /// The decoded, validated mutations (every row change of one event, in order), or why
    /// the record cannot be written.
    pub content: Result<Vec<RowMutation>, Rejection>,
    /// When the sink received it (flush interval).
    pub arrived: Instant,
}

impl Record {
    /// Decodes and validates a consumed record.
    pub fn decode(offset: i64, key: Option<&[u8]>, payload: Option<&[u8]>, arrived: Instant) -> Record {
        let payload = payload.unwrap_or_default().to_vec();
        let content = if payload.is_empty() {
            Err(Rejection::new(reason::UNDECODABLE, "empty value"))
        } else {
            rows::decode_record(&payload).map_err(|e| Rejection::new(reason::UNDECODABLE, e.to_string())).and_then(
                |ms| match ms.iter().enumerate().find_map(|(i, m)| validate(m).err().map(|d| (i, d))) {
                    // one bad mutation makes the event's record unwritable: it goes to the
                    // DLQ whole, so the event can be replayed as one
                    Some((i, d)) => Err(Rejection::new(reason::INVALID, format!("mutation {i}: {d}"))),
                    None => Ok(ms),
                },
            )
        };
        Record { offset, key: key.map(<[u8]>::to_vec), payload, content, arrived }
    }

    /// Bytes it holds (batch limits, buffer bounds).
    pub fn bytes(&self) -> usize {
        self.payload.len() + self.key.as_ref().map_or(0, Vec::len) + 32
    }
}

/// Checks what HBase would refuse whatever its state: an empty table name, an empty or
/// oversized row, a put column without `family:`, a delete column without a family.
pub fn validate(m: &RowMutation) -> Result<(), String> {
    if m.table.is_empty() {
        return Err("empty table name".into());
    }
    if m.row.is_empty() {
        return Err("empty row key".into());
    }
    if m.row.len() > MAX_ROW_LENGTH {
        return Err(format!("row key of {} bytes exceeds {MAX_ROW_LENGTH}", m.row.len()));
    }
    for c in &m.cells {
        match c.column.split_once(':') {
            Some((family, _)) if !family.is_empty() => {}
            None if m.delete && !c.column.is_empty() => {} // a whole family
            _ => return Err(format!("column {:?} is not family:qualifier", c.column)),
        }
    }
    Ok(())
}

/// A partition's records waiting to be written, oldest first.
#[derive(Debug, Default)]
pub struct Buffer {
    records: VecDeque<Record>,
    bytes: usize,
}

impl Buffer {
    /// Appends a record.
    pub fn push(&mut self, record: Record) {
        self.bytes += record.bytes();
        self.records.push_back(record);
    }

    /// Records buffered.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Bytes buffered.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// When the oldest buffered record arrived.
    pub fn oldest(&self) -> Option<Instant> {
        self.records.front().map(|r| r.arrived)
    }

    /// Whether a batch should be written now: a full batch is there, or the oldest record
    /// has waited `interval`.
    pub fn is_due(&self, now: Instant, rows: usize, bytes: usize, interval: Duration) -> bool {
        match self.records.front() {
            None => false,
            Some(first) => {
                self.records.len() >= rows || self.bytes >= bytes || now.duration_since(first.arrived) >= interval
            }
        }
    }

    /// Takes the oldest records up to `rows` records and `bytes` bytes (at least one record
    /// when not empty, whatever its size).
    pub fn take_batch(&mut self, rows: usize, bytes: usize) -> Vec<Record> {
        let mut out = Vec::with_capacity(rows.min(self.records.len()));
        let mut taken = 0;
        while let Some(r) = self.records.front() {
            let b = r.bytes();
            if out.len() >= rows || (!out.is_empty() && taken + b > bytes) {
                break;
            }
            taken += b;
            if let Some(r) = self.records.pop_front() {
                out.push(r);
            }
        }
        self.bytes -= taken;
        out
    }

    /// Drops everything (revocation).
    pub fn clear(&mut self) {
        self.records.clear();
        self.bytes = 0;
    }
}

/// What an entry does to its row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryOp {
    /// Put these cells and delete these columns (never overlapping), in one `BatchMutation`.
    Write {
        /// `(family:qualifier, value)`, one per column.
        puts: Vec<(String, Vec<u8>)>,
        /// Columns (`family:qualifier`) or families (`family`) to delete, all versions.
        deletes: Vec<String>,
    },
    /// Delete the whole row (`deleteAllRow`).
    DeleteRow,
}

/// One row's coalesced mutations within a phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `namespace:table`.
    pub table: String,
    /// The row key.
    pub row: Vec<u8>,
    /// What to do.
    pub op: EntryOp,
    /// Positions (in the [`flatten`]ed batch) of the mutations it stands for, in order.
    pub sources: Vec<usize>,
}

impl Entry {
    /// Whether it deletes anything.
    pub fn has_deletes(&self) -> bool {
        match &self.op {
            EntryOp::Write { deletes, .. } => !deletes.is_empty(),
            EntryOp::DeleteRow => true,
        }
    }

    /// Whether it puts anything.
    pub fn has_puts(&self) -> bool {
        matches!(&self.op, EntryOp::Write { puts, .. } if !puts.is_empty())
    }
}

/// Entries that can be applied together, in any order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Phase {
    /// One per row.
    pub entries: Vec<Entry>,
}

impl Phase {
    /// Whether any entry deletes.
    pub fn has_deletes(&self) -> bool {
        self.entries.iter().any(Entry::has_deletes)
    }

    /// Whether any entry puts.
    pub fn has_puts(&self) -> bool {
        self.entries.iter().any(Entry::has_puts)
    }
}

/// Whether deleting `deleted` (`family:qualifier` or a whole `family`) removes `column`.
fn covers(deleted: &str, column: &str) -> bool {
    deleted == column || (!deleted.contains(':') && column.split_once(':').is_some_and(|(f, _)| f == deleted))
}

/// The mutations of a batch's writable records in order, each with its record's index.
/// Entries of a [`plan`] name their sources by position in this list.
pub fn flatten(records: &[Record]) -> Vec<(usize, &RowMutation)> {
    records
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.content.as_ref().ok().map(|ms| ms.iter().map(move |m| (i, m))))
        .flatten()
        .collect()
}

/// Plans the writes of a batch (see the module doc) over its [`flatten`]ed mutations;
/// records whose content is an error are left out; a put without cells is a no-op and gets
/// no entry.
pub fn plan(flat: &[(usize, &RowMutation)]) -> Vec<Phase> {
    plan_mutations(flat.iter().enumerate().map(|(i, (_, m))| (i, *m)))
}

/// [`plan`] over `(source index, mutation)` pairs in order.
pub fn plan_mutations<'a>(mutations: impl IntoIterator<Item = (usize, &'a RowMutation)>) -> Vec<Phase> {
    let mut phases: Vec<Phase> = Vec::new();
    // (table, row) → (phase, entry) of the row's latest entry
    let mut last: HashMap<(&'a str, &'a [u8]), (usize, usize)> = HashMap::new();
    fn push(phases: &mut Vec<Phase>, phase: usize, entry: Entry) -> (usize, usize) {
        if phases.len() <= phase {
            phases.resize_with(phase + 1, Phase::default);
        }
        phases[phase].entries.push(entry);
        (phase, phases[phase].entries.len() - 1)
    }
    for (i, m) in mutations {
        if !m.delete && m.cells.is_empty() {
            continue;
        }
        let key = (m.table.as_str(), m.row.as_slice());
        let fresh = |m: &RowMutation| {
            let op = if m.delete && m.cells.is_empty() {
                EntryOp::DeleteRow
            } else if m.delete {
                EntryOp::Write { puts: Vec::new(), deletes: dedup(m.cells.iter().map(|c| c.column.clone())) }
            } else {
                let mut puts = Vec::with_capacity(m.cells.len());
                merge_puts(&mut puts, m);
                EntryOp::Write { puts, deletes: Vec::new() }
            };
            Entry { table: m.table.clone(), row: m.row.clone(), op, sources: vec![i] }
        };
        let Some(&(p, e)) = last.get(&key) else {
            let at = push(&mut phases, 0, fresh(m));
            last.insert(key, at);
            continue;
        };
        let entry = &mut phases[p].entries[e];
        match (&mut entry.op, m.delete, m.cells.is_empty()) {
            // a put: joins the entry unless one of its columns is deleted by it
            (EntryOp::Write { puts, deletes }, false, _) => {
                if m.cells.iter().any(|c| deletes.iter().any(|d| covers(d, &c.column))) {
                    let at = push(&mut phases, p + 1, fresh(m));
                    last.insert(key, at);
                } else {
                    merge_puts(puts, m);
                    entry.sources.push(i);
                }
            }
            (EntryOp::DeleteRow, false, _) => {
                let at = push(&mut phases, p + 1, fresh(m));
                last.insert(key, at);
            }
            // a row delete supersedes everything before it
            (op, true, true) => {
                *op = EntryOp::DeleteRow;
                entry.sources.push(i);
            }
            // a column delete removes earlier puts of those columns and stays a delete
            (EntryOp::Write { puts, deletes }, true, false) => {
                puts.retain(|(c, _)| !m.cells.iter().any(|d| covers(&d.column, c)));
                for c in &m.cells {
                    if !deletes.contains(&c.column) {
                        deletes.push(c.column.clone());
                    }
                }
                entry.sources.push(i);
            }
            // the row is already deleted in this phase: nothing more to remove
            (EntryOp::DeleteRow, true, false) => entry.sources.push(i),
        }
    }
    phases
}

fn merge_puts(puts: &mut Vec<(String, Vec<u8>)>, m: &RowMutation) {
    for c in &m.cells {
        match puts.iter_mut().find(|(col, _)| *col == c.column) {
            Some((_, v)) => v.clone_from(&c.value),
            None => puts.push((c.column.clone(), c.value.clone())),
        }
    }
}

fn dedup(columns: impl Iterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in columns {
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatpipe_common::envelope;
    use chatpipe_common::rows::Cell;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    type Model = BTreeMap<(String, Vec<u8>), BTreeMap<String, Vec<u8>>>;

    /// The meaning of a sequence of mutations applied one by one.
    fn apply_one(model: &mut Model, m: &RowMutation) {
        let key = (m.table.clone(), m.row.clone());
        let row = model.entry(key.clone()).or_default();
        if m.delete && m.cells.is_empty() {
            row.clear();
        } else if m.delete {
            for c in &m.cells {
                row.retain(|col, _| !covers(&c.column, col));
            }
        } else {
            for c in &m.cells {
                row.insert(c.column.clone(), c.value.clone());
            }
        }
        if model.get(&key).is_some_and(BTreeMap::is_empty) {
            model.remove(&key);
        }
    }

    /// HBase with server timestamps: a phase is applied "at once" (all its entries get the
    /// phase's timestamp; puts of an entry before its deletes, as mutateRows does), phases
    /// at increasing timestamps. Keeps timestamps so that a delete masks same-ts puts.
    fn apply_plan(model: &mut Model, phases: &[Phase]) {
        for phase in phases {
            for e in &phase.entries {
                let key = (e.table.clone(), e.row.clone());
                let row = model.entry(key.clone()).or_default();
                match &e.op {
                    EntryOp::DeleteRow => row.clear(),
                    EntryOp::Write { puts, deletes } => {
                        for (c, v) in puts {
                            row.insert(c.clone(), v.clone());
                        }
                        // same timestamp: the delete masks a put of the same column
                        for d in deletes {
                            row.retain(|col, _| !covers(d, col));
                        }
                    }
                }
                if model.get(&key).is_some_and(BTreeMap::is_empty) {
                    model.remove(&key);
                }
            }
        }
    }

    fn put(table: &str, row: &str, cells: &[(&str, &str)]) -> RowMutation {
        RowMutation {
            table: table.into(),
            row: row.into(),
            cells: cells.iter().map(|(c, v)| Cell::new(*c, v.as_bytes())).collect(),
            delete: false,
            ingested_at_ms: 0,
        }
    }

    fn del(table: &str, row: &str, cols: &[&str]) -> RowMutation {
        RowMutation {
            table: table.into(),
            row: row.into(),
            cells: cols.iter().map(|c| Cell::new(*c, Vec::new())).collect(),
            delete: true,
            ingested_at_ms: 0,
        }
    }

    fn plan_of(ms: &[RowMutation]) -> Vec<Phase> {
        plan_mutations(ms.iter().enumerate())
    }

    #[test]
    fn puts_of_one_row_coalesce_with_the_last_value_winning() {
        let ms = [put("t", "r", &[("m:a", "1"), ("m:b", "1")]), put("t", "r", &[("m:a", "2")])];
        let phases = plan_of(&ms);
        assert_eq!(phases.len(), 1);
        assert_eq!(
            phases[0].entries[0].op,
            EntryOp::Write {
                puts: vec![("m:a".into(), b"2".to_vec()), ("m:b".into(), b"1".to_vec())],
                deletes: vec![]
            }
        );
        assert_eq!(phases[0].entries[0].sources, vec![0, 1]);
    }

    #[test]
    fn a_put_after_a_delete_of_its_row_goes_to_a_later_phase() {
        let ms = [put("t", "r", &[("m:a", "1")]), del("t", "r", &[]), put("t", "r", &[("m:a", "2")])];
        let phases = plan_of(&ms);
        assert_eq!(phases.len(), 2);
        assert_eq!(phases[0].entries[0].op, EntryOp::DeleteRow);
        assert_eq!(phases[0].entries[0].sources, vec![0, 1]);
        assert!(phases[0].has_deletes());
        assert_eq!(phases[1].entries[0].sources, vec![2]);
    }

    #[test]
    fn a_put_of_another_column_joins_a_column_delete() {
        let ms = [del("t", "r", &["m:a"]), put("t", "r", &[("m:b", "1")]), put("t", "r", &[("m:a", "1")])];
        let phases = plan_of(&ms);
        assert_eq!(phases.len(), 2);
        assert_eq!(phases[0].entries[0].sources, vec![0, 1]);
        assert_eq!(phases[1].entries[0].sources, vec![2]);
    }

    #[test]
    fn a_family_delete_covers_its_columns() {
        let ms = [put("t", "r", &[("m:a", "1"), ("x:a", "1")]), del("t", "r", &["m"]), put("t", "r", &[("m:b", "2")])];
        let phases = plan_of(&ms);
        assert_eq!(phases.len(), 2);
        assert_eq!(
            phases[0].entries[0].op,
            EntryOp::Write { puts: vec![("x:a".into(), b"1".to_vec())], deletes: vec!["m".into()] }
        );
    }

    #[test]
    fn other_rows_and_tables_stay_in_the_first_phase() {
        let ms = [
            put("t", "r", &[("m:a", "1")]),
            del("t", "r", &[]),
            put("t", "r", &[("m:a", "2")]),
            put("t", "s", &[("m:a", "1")]),
            put("u", "r", &[("m:a", "1")]),
        ];
        let phases = plan_of(&ms);
        assert_eq!(phases[0].entries.len(), 3);
        assert_eq!(phases[1].entries.len(), 1);
    }

    fn batch(ms: Vec<RowMutation>) -> Vec<u8> {
        let mut v = Vec::new();
        rows::encode_record(&rows::RowBatch { mutations: ms }, &mut v).unwrap();
        v
    }

    #[test]
    fn rejected_records_and_empty_puts_get_no_entry() {
        let now = Instant::now();
        let good = batch(vec![put("t", "r", &[("m:a", "1")])]);
        let empty = batch(vec![put("t", "r", &[])]);
        let bad = batch(vec![put("t", "s", &[("m:a", "1")]), put("", "r", &[("m:a", "1")])]);
        let records = [
            Record::decode(0, None, Some(b"garbage"), now),
            Record::decode(1, None, Some(&good), now),
            Record::decode(2, None, Some(&empty), now),
            Record::decode(3, None, None, now),
            Record::decode(4, None, Some(&bad), now),
        ];
        assert_eq!(records[0].content.as_ref().unwrap_err().reason, reason::UNDECODABLE);
        assert_eq!(records[3].content.as_ref().unwrap_err().reason, reason::UNDECODABLE);
        // one invalid mutation sends the whole event record to the DLQ, its good row too
        assert_eq!(records[4].content.as_ref().unwrap_err().reason, reason::INVALID);
        let flat = flatten(&records);
        let phases = plan(&flat);
        assert_eq!(phases.len(), 1);
        assert_eq!(phases[0].entries.len(), 1);
        assert_eq!(phases[0].entries[0].sources, vec![0]);
        assert_eq!(flat[0].0, 1, "the entry's mutation belongs to record 1");
    }

    #[test]
    fn a_batch_expands_into_its_rows_in_order_and_an_old_single_row_record_still_plans() {
        let now = Instant::now();
        let b = batch(vec![put("t", "r", &[("m:a", "1")]), del("t", "r", &[]), put("t", "r", &[("m:a", "2")])]);
        let mut old = envelope::encode(&put("t", "q", &[("m:a", "9")])).unwrap();
        old[1] = 2; // what builds before RowBatch wrote
        let records = [Record::decode(0, None, Some(&b), now), Record::decode(1, None, Some(&old), now)];
        let flat = flatten(&records);
        assert_eq!(flat.iter().map(|(r, _)| *r).collect::<Vec<_>>(), vec![0, 0, 0, 1]);
        let mut model = Model::new();
        apply_plan(&mut model, &plan(&flat));
        let row = |r: &str| model.get(&("t".to_string(), r.as_bytes().to_vec())).cloned();
        assert_eq!(row("r").unwrap().get("m:a").map(Vec::as_slice), Some(&b"2"[..]));
        assert_eq!(row("q").unwrap().get("m:a").map(Vec::as_slice), Some(&b"9"[..]));
    }

    #[test]
    fn validation_refuses_what_hbase_always_refuses() {
        assert!(validate(&put("", "r", &[("m:a", "1")])).is_err());
        assert!(validate(&put("t", "", &[("m:a", "1")])).is_err());
        assert!(validate(&put("t", "r", &[("m", "1")])).is_err());
        assert!(validate(&put("t", "r", &[(":a", "1")])).is_err());
        assert!(validate(&del("t", "r", &["m"])).is_ok());
        assert!(validate(&del("t", "r", &[""])).is_err());
        let long = "x".repeat(MAX_ROW_LENGTH + 1);
        assert!(validate(&put("t", &long, &[("m:a", "1")])).is_err());
    }

    #[test]
    fn buffer_takes_batches_by_rows_and_bytes() {
        let t0 = Instant::now();
        let mut b = Buffer::default();
        for i in 0..10 {
            b.push(Record::decode(i, None, Some(&[0u8; 68]), t0));
        }
        assert_eq!(b.bytes(), 1000);
        assert!(!b.is_due(t0, 11, 10_000, Duration::from_secs(1)));
        assert!(b.is_due(t0, 10, 10_000, Duration::from_secs(1)));
        assert!(b.is_due(t0, 100, 1000, Duration::from_secs(1)));
        assert!(b.is_due(t0 + Duration::from_secs(1), 100, 10_000, Duration::from_secs(1)));
        let batch = b.take_batch(4, 10_000);
        assert_eq!(batch.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        let batch = b.take_batch(100, 250);
        assert_eq!(batch.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![4, 5]);
        let batch = b.take_batch(100, 1);
        assert_eq!(batch.len(), 1, "one record even when it alone exceeds the byte limit");
        assert_eq!(b.len(), 3);
        assert_eq!(b.bytes(), 300);
    }

    fn arb_mutation() -> impl Strategy<Value = RowMutation> {
        let col = prop::sample::select(vec!["m:a", "m:b", "m:c", "n:a", "m", "n"]);
        (
            prop::sample::select(vec!["t1", "t2"]),
            prop::sample::select(vec!["r1", "r2", "r3"]),
            0..4u8,
            prop::collection::vec((col, 0..5u8), 0..4),
        )
            .prop_map(|(table, row, kind, cells)| match kind {
                0 => del(table, row, &[]),
                1 => del(table, row, &cells.iter().map(|(c, _)| *c).collect::<Vec<_>>()),
                _ => {
                    let cells: Vec<(String, String)> = cells
                        .iter()
                        .filter(|(c, _)| c.contains(':'))
                        .map(|(c, v)| (c.to_string(), v.to_string()))
                        .collect();
                    let refs: Vec<(&str, &str)> = cells.iter().map(|(c, v)| (c.as_str(), v.as_str())).collect();
                    put(table, row, &refs)
                }
            })
    }

    proptest! {
        /// The plan, applied phase by phase with HBase's same-timestamp rules, leaves the
        /// same state as the mutations applied one by one.
        #[test]
        fn plan_means_the_same_as_sequential_application(
            before in prop::collection::vec(arb_mutation(), 0..10),
            ms in prop::collection::vec(arb_mutation(), 0..40),
        ) {
            let mut expected = Model::new();
            let mut actual = Model::new();
            for m in &before {
                apply_one(&mut expected, m);
                apply_one(&mut actual, m);
            }
            for m in &ms {
                apply_one(&mut expected, m);
            }
            let phases = plan_of(&ms);
            apply_plan(&mut actual, &phases);
            prop_assert_eq!(&actual, &expected);
            // every row at most once per phase, and every record accounted for once
            let mut seen = Vec::new();
            for phase in &phases {
                let mut rows: Vec<_> = phase.entries.iter().map(|e| (e.table.clone(), e.row.clone())).collect();
                let n = rows.len();
                rows.sort();
                rows.dedup();
                prop_assert_eq!(rows.len(), n);
                for e in &phase.entries {
                    seen.extend(e.sources.iter().copied());
                }
            }
            seen.sort_unstable();
            let expected_sources: Vec<usize> =
                ms.iter().enumerate().filter(|(_, m)| m.delete || !m.cells.is_empty()).map(|(i, _)| i).collect();
            prop_assert_eq!(seen, expected_sources);
        }

        /// Replaying any suffix of a history (with newer timestamps) into the final state
        /// leaves the final state.
        #[test]
        fn replaying_a_suffix_leaves_the_same_state(
            ms in prop::collection::vec(arb_mutation(), 1..40),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut state = Model::new();
            apply_plan(&mut state, &plan_of(&ms));
            let expected = state.clone();
            let from = cut.index(ms.len());
            apply_plan(&mut state, &plan_of(&ms[from..]));
            prop_assert_eq!(state, expected);
        }
    }
}
