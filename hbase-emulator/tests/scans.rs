//! Scanners through a real Thrift client: bytewise order, prefixes, bounds, TScan options.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use hbase_thrift::hbase::{THbaseSyncClient, TScan};

/// Rows chosen to catch any ordering that is not plain bytewise (NUL bytes, high bytes,
/// prefixes of one another, salt-like decimal prefixes).
const ROWS: &[&[u8]] = &[
    b"001|7|9223372036854775000",
    b"001|7|9223372036854775100",
    b"001|70|1",
    b"001|8|5",
    b"002|7|1",
    b"a",
    b"a\x00",
    b"a\x00\x01",
    b"a\x01",
    b"aa",
    b"b",
    b"\x7f",
    b"\x80",
    b"\xff",
    b"\xff\xff",
];

fn loaded() -> (chatpipe_hbase_emulator::EmulatorHandle, Client) {
    let emu = emulator();
    let mut c = connect(emu.local_addr());
    create_table(&mut c, "t", &["f", "g"]);
    // Written in reverse so that insertion order cannot pass for sorted order.
    let batches = ROWS.iter().rev().map(|r| batch(r.to_vec(), vec![put("f:q", r.to_vec()), put("g:q", "g")])).collect();
    c.mutate_rows("t".into(), batches, no_attrs()).unwrap();
    (emu, c)
}

fn keys(rows: &[hbase_thrift::hbase::TRowResult]) -> Vec<Vec<u8>> {
    rows.iter().map(|r| r.row.clone().unwrap()).collect()
}

fn expected(pred: impl Fn(&[u8]) -> bool) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = ROWS.iter().filter(|r| pred(r)).map(|r| r.to_vec()).collect();
    v.sort();
    v
}

#[test]
fn full_scan_returns_rows_in_bytewise_order() {
    let (_emu, mut c) = loaded();
    for page in [1, 4, 1000] {
        let id = c.scanner_open("t".into(), Vec::new(), vec![], no_attrs()).unwrap();
        assert_eq!(keys(&drain(&mut c, id, page)), expected(|_| true), "page {page}");
    }
    // scannerGet: one row per call, then empty.
    let id = c.scanner_open("t".into(), Vec::new(), vec![], no_attrs()).unwrap();
    let mut seen = Vec::new();
    loop {
        let rows = c.scanner_get(id).unwrap();
        assert!(rows.len() <= 1);
        match rows.into_iter().next() {
            Some(r) => seen.push(r.row.unwrap()),
            None => break,
        }
    }
    assert_eq!(seen, expected(|_| true));
    // Still empty at the end, until closed; then the id is invalid.
    assert!(c.scanner_get_list(id, 10).unwrap().is_empty());
    c.scanner_close(id).unwrap();
    assert_exception(c.scanner_get(id), "IllegalArgument", "scanner ID is invalid");
    assert_exception(c.scanner_close(id), "IllegalArgument", "scanner ID is invalid");
    assert_exception(c.scanner_get_list(12345, 1), "IllegalArgument", "invalid");
}

#[test]
fn prefix_scans_return_exactly_the_prefixed_rows() {
    let (_emu, mut c) = loaded();
    for prefix in [&b"001|7|"[..], b"001|7", b"a", b"a\x00", b"\xff", b"zz", b""] {
        let id = c.scanner_open_with_prefix("t".into(), prefix.to_vec(), vec![], no_attrs()).unwrap();
        assert_eq!(keys(&drain(&mut c, id, 3)), expected(|r| r.starts_with(prefix)), "prefix {prefix:?}");
        // The same through TScan's filter string.
        let mut f = b"PrefixFilter('".to_vec();
        f.extend_from_slice(prefix);
        f.extend_from_slice(b"')");
        let s = TScan { filter_string: Some(f), ..scan() };
        let id = c.scanner_open_with_scan("t".into(), s, no_attrs()).unwrap();
        assert_eq!(keys(&drain(&mut c, id, 2)), expected(|r| r.starts_with(prefix)), "filter prefix {prefix:?}");
    }
}

#[test]
fn start_and_stop_rows_bound_the_scan() {
    let (_emu, mut c) = loaded();
    let id = c.scanner_open_with_stop("t".into(), "001|70".into(), "a\x00\x01".into(), vec![], no_attrs()).unwrap();
    assert_eq!(keys(&drain(&mut c, id, 2)), expected(|r| r >= &b"001|70"[..] && r < &b"a\x00\x01"[..]));
    let id = c.scanner_open("t".into(), "aa".into(), vec![], no_attrs()).unwrap();
    assert_eq!(keys(&drain(&mut c, id, 100)), expected(|r| r >= &b"aa"[..]));
    let s = TScan { start_row: Some("a".into()), stop_row: Some("b".into()), caching: Some(2), ..scan() };
    let id = c.scanner_open_with_scan("t".into(), s, no_attrs()).unwrap();
    assert_eq!(keys(&drain(&mut c, id, 100)), expected(|r| r >= &b"a"[..] && r < &b"b"[..]));
    // start ≥ stop: nothing.
    let id = c.scanner_open_with_stop("t".into(), "b".into(), "a".into(), vec![], no_attrs()).unwrap();
    assert!(drain(&mut c, id, 10).is_empty());
}

#[test]
fn reversed_scans_go_from_start_row_down() {
    let (_emu, mut c) = loaded();
    let s = TScan { start_row: Some("b".into()), stop_row: Some("001|8|5".into()), reversed: Some(true), ..scan() };
    let id = c.scanner_open_with_scan("t".into(), s, no_attrs()).unwrap();
    let mut want = expected(|r| r <= &b"b"[..] && r > &b"001|8|5"[..]);
    want.reverse();
    assert_eq!(keys(&drain(&mut c, id, 3)), want);
    let s = TScan { reversed: Some(true), filter_string: Some(b"PrefixFilter('001|7')".to_vec()), ..scan() };
    let id = c.scanner_open_with_scan("t".into(), s, no_attrs()).unwrap();
    let mut want = expected(|r| r.starts_with(b"001|7"));
    want.reverse();
    assert_eq!(keys(&drain(&mut c, id, 2)), want);
}

#[test]
fn scan_columns_timestamps_batches_and_sorted_columns() {
    let emu = emulator();
    let mut c = connect(emu.local_addr());
    create_table(&mut c, "t", &["f", "g"]);
    c.mutate_rows_ts(
        "t".into(),
        vec![
            batch("r1", vec![put("f:a", "1"), put("f:b", "2"), put("f:c", "3"), put("g:x", "4")]),
            batch("r2", vec![put("g:x", "5")]),
        ],
        100,
        no_attrs(),
    )
    .unwrap();
    c.mutate_rows_ts("t".into(), vec![batch("r3", vec![put("f:a", "6")])], 200, no_attrs()).unwrap();

    // Columns: a family or a column; rows without any selected cell are left out.
    let id = c.scanner_open("t".into(), Vec::new(), vec!["f".into()], no_attrs()).unwrap();
    let rows = drain(&mut c, id, 10);
    assert_eq!(row_keys(&rows), vec!["r1", "r3"]);
    let id = c.scanner_open("t".into(), Vec::new(), vec!["g:x".into(), "f:b".into()], no_attrs()).unwrap();
    let rows = drain(&mut c, id, 10);
    assert_eq!(row_keys(&rows), vec!["r1", "r2"]);
    let cols: Vec<_> = rows[0].columns.as_ref().unwrap().keys().cloned().collect();
    assert_eq!(cols, vec![b"f:b".to_vec(), b"g:x".to_vec()]);

    // Timestamps: strictly below.
    let id = c.scanner_open_ts("t".into(), Vec::new(), vec![], 200, no_attrs()).unwrap();
    assert_eq!(row_keys(&drain(&mut c, id, 10)), vec!["r1", "r2"]);
    let id = c.scanner_open_with_stop_ts("t".into(), "r2".into(), "r9".into(), vec![], 201, no_attrs()).unwrap();
    assert_eq!(row_keys(&drain(&mut c, id, 10)), vec!["r2", "r3"]);
    let s = TScan { timestamp: Some(150), columns: Some(vec!["f".into()]), ..scan() };
    let id = c.scanner_open_with_scan("t".into(), s, no_attrs()).unwrap();
    assert_eq!(row_keys(&drain(&mut c, id, 10)), vec!["r1"]);

    // batchSize splits a wide row into several results; sortColumns fills sortedColumns.
    let s = TScan { batch_size: Some(3), sort_columns: Some(true), ..scan() };
    let id = c.scanner_open_with_scan("t".into(), s, no_attrs()).unwrap();
    let rows = drain(&mut c, id, 10);
    assert_eq!(row_keys(&rows), vec!["r1", "r1", "r2", "r3"]);
    let names = |r: &hbase_thrift::hbase::TRowResult| -> Vec<Vec<u8>> {
        r.sorted_columns.as_ref().unwrap().iter().map(|c| c.column_name.clone().unwrap()).collect()
    };
    assert_eq!(names(&rows[0]), vec![b"f:a".to_vec(), b"f:b".to_vec(), b"f:c".to_vec()]);
    assert_eq!(names(&rows[1]), vec![b"g:x".to_vec()]);
    assert!(rows[0].columns.is_none());

    // Other supported filters.
    let s = TScan { filter_string: Some(b"KeyOnlyFilter() AND FirstKeyOnlyFilter()".to_vec()), ..scan() };
    let id = c.scanner_open_with_scan("t".into(), s, no_attrs()).unwrap();
    let rows = drain(&mut c, id, 10);
    assert_eq!(row_keys(&rows), vec!["r1", "r2", "r3"]);
    assert_eq!(rows[0].columns.as_ref().unwrap().len(), 1);
    assert_eq!(value(&rows[0], "f:a").as_deref(), Some(""));
    let s = TScan { filter_string: Some(b"PageFilter(2)".to_vec()), ..scan() };
    let id = c.scanner_open_with_scan("t".into(), s, no_attrs()).unwrap();
    assert_eq!(row_keys(&drain(&mut c, id, 1)), vec!["r1", "r2"]);
    let s = TScan { filter_string: Some(b"ColumnPrefixFilter('b')".to_vec()), ..scan() };
    let id = c.scanner_open_with_scan("t".into(), s, no_attrs()).unwrap();
    let rows = drain(&mut c, id, 10);
    assert_eq!(row_keys(&rows), vec!["r1"]);

    // Filters the emulator does not know are refused by name, never ignored.
    let s = TScan { filter_string: Some(b"DependentColumnFilter('f', 'a')".to_vec()), ..scan() };
    assert_exception(c.scanner_open_with_scan("t".into(), s, no_attrs()), "IOError", "DependentColumnFilter");
    // Unknown family in the scan columns, unknown table.
    assert_exception(
        c.scanner_open("t".into(), Vec::new(), vec!["zz".into()], no_attrs()),
        "IOError",
        "NoSuchColumnFamily",
    );
    assert_exception(c.scanner_open("nope".into(), Vec::new(), vec![], no_attrs()), "IOError", "TableNotFound");
}

#[test]
fn a_scanner_sees_rows_written_after_it_was_opened_ahead_of_its_position() {
    let emu = emulator();
    let mut c = connect(emu.local_addr());
    create_table(&mut c, "t", &["f"]);
    c.mutate_rows("t".into(), vec![batch("a", vec![put("f:q", "1")]), batch("c", vec![put("f:q", "1")])], no_attrs())
        .unwrap();
    let id = c.scanner_open("t".into(), Vec::new(), vec![], no_attrs()).unwrap();
    assert_eq!(row_keys(&c.scanner_get_list(id, 1).unwrap()), vec!["a"]);
    c.mutate_row("t".into(), "b".into(), vec![put("f:q", "1")], no_attrs()).unwrap();
    assert_eq!(row_keys(&drain(&mut c, id, 10)), vec!["b", "c"]);
}
