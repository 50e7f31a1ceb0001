//! Read-your-writes, as a property: random puts (explicit timestamps, some colliding),
//! deletes of a column, a family and a row (markers that also mask later, older puts),
//! version limits, flushes (`compact`) and major compactions (`majorCompact`), checked
//! through the Thrift API of a running emulator against a model of HBase's semantics —
//! every version of every column (`getVer`) and a full scan, after every flush or
//! compaction and at the end.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use hbase_thrift::hbase::{Mutation, THbaseSyncClient};
use proptest::prelude::*;

const ROWS: usize = 4;
const QUALIFIERS: usize = 3;
/// Families and their `maxVersions`.
const FAMILIES: [(&str, usize); 2] = [("a", 2), ("b", 3)];

#[derive(Debug, Clone)]
enum Step {
    Put { row: usize, family: usize, qualifier: usize, ts: i64, value: u16 },
    DeleteColumn { row: usize, family: usize, qualifier: usize, ts: i64 },
    DeleteFamily { row: usize, family: usize, ts: i64 },
    DeleteRow { row: usize, ts: i64 },
    Flush,
    MajorCompact,
}

fn step() -> impl Strategy<Value = Step> {
    let (r, f, q, ts) = (0..ROWS, 0..FAMILIES.len(), 0..QUALIFIERS, 1i64..40);
    prop_oneof![
        8 => (r.clone(), f.clone(), q.clone(), ts.clone(), any::<u16>())
            .prop_map(|(row, family, qualifier, ts, value)| Step::Put { row, family, qualifier, ts, value }),
        2 => (r.clone(), f.clone(), q, ts.clone())
            .prop_map(|(row, family, qualifier, ts)| Step::DeleteColumn { row, family, qualifier, ts }),
        1 => (r.clone(), f, ts.clone()).prop_map(|(row, family, ts)| Step::DeleteFamily { row, family, ts }),
        1 => (r, ts).prop_map(|(row, ts)| Step::DeleteRow { row, ts }),
        1 => Just(Step::Flush),
        1 => Just(Step::MajorCompact),
    ]
}

/// One column of the model: its delete marker and versions, newest first.
#[derive(Debug, Default, Clone)]
struct ColumnModel {
    marker: Option<i64>,
    versions: Vec<(i64, String)>,
}

/// HBase's semantics as the emulator documents them (see `row.rs`), written independently.
#[derive(Debug, Default)]
struct Model {
    columns: BTreeMap<(usize, usize, usize), ColumnModel>,
    family_markers: BTreeMap<(usize, usize), i64>,
}

impl Model {
    fn masked_by_family(&self, row: usize, family: usize, ts: i64) -> bool {
        self.family_markers.get(&(row, family)).is_some_and(|m| ts <= *m)
    }

    fn apply(&mut self, step: &Step) {
        match *step {
            Step::Put { row, family, qualifier, ts, value } => {
                if self.masked_by_family(row, family, ts) {
                    return;
                }
                let col = self.columns.entry((row, family, qualifier)).or_default();
                if col.marker.is_some_and(|m| ts <= m) {
                    return;
                }
                col.versions.retain(|(t, _)| *t != ts);
                col.versions.push((ts, value.to_string()));
                col.versions.sort_by_key(|v| std::cmp::Reverse(v.0));
                col.versions.truncate(FAMILIES[family].1);
            }
            Step::DeleteColumn { row, family, qualifier, ts } => {
                if self.masked_by_family(row, family, ts) {
                    return;
                }
                let col = self.columns.entry((row, family, qualifier)).or_default();
                col.marker = Some(col.marker.map_or(ts, |m| m.max(ts)));
                col.versions.retain(|(t, _)| *t > ts);
            }
            Step::DeleteFamily { row, family, ts } => self.delete_family(row, family, ts),
            Step::DeleteRow { row, ts } => {
                for family in 0..FAMILIES.len() {
                    self.delete_family(row, family, ts);
                }
            }
            Step::Flush | Step::MajorCompact => {}
        }
    }

    fn delete_family(&mut self, row: usize, family: usize, ts: i64) {
        let marker = self.family_markers.entry((row, family)).or_insert(ts);
        *marker = (*marker).max(ts);
        let marker = *marker;
        for q in 0..QUALIFIERS {
            if let Some(col) = self.columns.get_mut(&(row, family, q)) {
                col.versions.retain(|(t, _)| *t > marker);
            }
        }
    }

    /// Versions of a column a read of `n` versions returns.
    fn versions(&self, row: usize, family: usize, qualifier: usize, n: usize) -> Vec<(i64, String)> {
        let col = self.columns.get(&(row, family, qualifier)).cloned().unwrap_or_default();
        col.versions.into_iter().take(n.min(FAMILIES[family].1)).collect()
    }
}

fn row_name(row: usize) -> String {
    format!("row{row}")
}

fn column(family: usize, qualifier: usize) -> String {
    format!("{}:q{qualifier}", FAMILIES[family].0)
}

fn run_step(c: &mut Client, table: &str, step: &Step) {
    let t = || table.as_bytes().to_vec();
    match *step {
        Step::Put { row, family, qualifier, ts, value } => {
            let m = put(&column(family, qualifier), value.to_string());
            c.mutate_row_ts(t(), row_name(row).into_bytes(), vec![m], ts, no_attrs()).unwrap();
        }
        Step::DeleteColumn { row, family, qualifier, ts } => {
            let m = delete(&column(family, qualifier));
            c.mutate_row_ts(t(), row_name(row).into_bytes(), vec![m], ts, no_attrs()).unwrap();
        }
        Step::DeleteFamily { row, family, ts } => {
            let m = Mutation {
                is_delete: Some(true),
                column: Some(FAMILIES[family].0.as_bytes().to_vec()),
                value: None,
                write_to_w_a_l: Some(true),
            };
            c.mutate_row_ts(t(), row_name(row).into_bytes(), vec![m], ts, no_attrs()).unwrap();
        }
        Step::DeleteRow { row, ts } => c.delete_all_row_ts(t(), row_name(row).into_bytes(), ts, no_attrs()).unwrap(),
        Step::Flush => c.compact(t()).unwrap(),
        Step::MajorCompact => c.major_compact(t()).unwrap(),
    }
}

/// Every version of every column, and a full scan of the latest values, equal the model's.
fn check(c: &mut Client, table: &str, model: &Model, after: usize) {
    for row in 0..ROWS {
        for family in 0..FAMILIES.len() {
            for qualifier in 0..QUALIFIERS {
                let got: Vec<(i64, String)> = c
                    .get_ver(
                        table.as_bytes().to_vec(),
                        row_name(row).into_bytes(),
                        column(family, qualifier).into_bytes(),
                        5,
                        no_attrs(),
                    )
                    .unwrap()
                    .into_iter()
                    .map(|cell| (cell.timestamp.unwrap(), String::from_utf8(cell.value.unwrap_or_default()).unwrap()))
                    .collect();
                let want = model.versions(row, family, qualifier, 5);
                assert_eq!(got, want, "{} {} after step {after}", row_name(row), column(family, qualifier));
            }
        }
    }
    let mut want: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for row in 0..ROWS {
        for family in 0..FAMILIES.len() {
            for qualifier in 0..QUALIFIERS {
                if let Some((_, v)) = model.versions(row, family, qualifier, 1).into_iter().next() {
                    want.entry(row_name(row)).or_default().insert(column(family, qualifier), v);
                }
            }
        }
    }
    let id = c.scanner_open_with_scan(table.as_bytes().to_vec(), scan(), no_attrs()).unwrap();
    let rows = drain(c, id, 2);
    let mut got: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for r in &rows {
        let key = String::from_utf8(r.row.clone().unwrap()).unwrap();
        for (col, cell) in r.columns.clone().unwrap_or_default() {
            got.entry(key.clone())
                .or_default()
                .insert(String::from_utf8(col).unwrap(), String::from_utf8(cell.value.unwrap_or_default()).unwrap());
        }
    }
    assert_eq!(got, want, "scan after step {after}");
}

static EMULATOR: std::sync::OnceLock<chatpipe_hbase_emulator::EmulatorHandle> = std::sync::OnceLock::new();
static TABLES: AtomicUsize = AtomicUsize::new(0);

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn reads_match_a_model_across_deletes_versions_flushes_and_compactions(
        steps in proptest::collection::vec(step(), 1..80)
    ) {
        let emu = EMULATOR.get_or_init(emulator);
        let mut c = connect(emu.local_addr());
        let table = format!("t{}", TABLES.fetch_add(1, Ordering::SeqCst));
        c.create_table(table.as_bytes().to_vec(), vec![family("a", 2, -1), family("b", 3, -1)]).unwrap();
        let mut model = Model::default();
        for (i, s) in steps.iter().enumerate() {
            run_step(&mut c, &table, s);
            model.apply(s);
            if matches!(s, Step::Flush | Step::MajorCompact) {
                check(&mut c, &table, &model, i);
            }
        }
        check(&mut c, &table, &model, steps.len());
    }
}
