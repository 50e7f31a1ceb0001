//! Unit tests of the store: HBase's semantics through the store's API, folds, read-modify-
//! writes among blind writes, and recovery.

use super::meta::TTL_FOREVER;
use super::*;

const NOW: i64 = 1_700_000_000_000;

fn store_with(families: &[(&str, i32, i32)]) -> Store {
    let store = Store::in_memory().unwrap();
    let fams = families
        .iter()
        .map(|(n, v, ttl)| FamilyDescriptor {
            max_versions: *v,
            time_to_live: *ttl,
            ..FamilyDescriptor::new(n.as_bytes())
        })
        .collect();
    store.create_table(b"t", fams, Vec::new(), NOW).unwrap();
    store
}

fn put(row: &str, fam: &str, q: &str, v: &str) -> RowEdit {
    RowEdit { row: row.into(), ops: vec![Op::Put { family: fam.into(), qualifier: q.into(), value: v.into() }] }
}

fn values(cells: &[StoredCell]) -> Vec<(String, i64, String)> {
    cells.iter().map(|c| (format!("{}:{}", show(&c.family), show(&c.qualifier)), c.ts, show(&c.value))).collect()
}

fn versions(n: u32) -> ReadSpec {
    ReadSpec { versions: n, ..ReadSpec::default() }
}

#[test]
fn versions_are_newest_first_and_capped_by_max_versions() {
    let s = store_with(&[("f", 2, TTL_FOREVER)]);
    for (ts, v) in [(10, "a"), (30, "c"), (20, "b")] {
        s.mutate(b"t", vec![put("r", "f", "q", v)], Some(ts), NOW).unwrap();
    }
    let got = s.get(b"t", b"r", &versions(10), NOW).unwrap();
    assert_eq!(values(&got), vec![("f:q".into(), 30, "c".into()), ("f:q".into(), 20, "b".into())]);
    let latest = s.get(b"t", b"r", &ReadSpec::default(), NOW).unwrap();
    assert_eq!(values(&latest), vec![("f:q".into(), 30, "c".into())]);
    let before = ReadSpec { max_ts_exclusive: Some(30), versions: 5, ..ReadSpec::default() };
    assert_eq!(values(&s.get(b"t", b"r", &before, NOW).unwrap())[0].1, 20);
}

#[test]
fn column_delete_masks_older_puts_even_ones_written_later() {
    let s = store_with(&[("f", 3, TTL_FOREVER)]);
    s.mutate(b"t", vec![put("r", "f", "q", "old")], Some(100), NOW).unwrap();
    s.mutate(b"t", vec![put("r", "f", "keep", "k")], Some(100), NOW).unwrap();
    let del =
        RowEdit { row: b"r".to_vec(), ops: vec![Op::DeleteColumn { family: b"f".to_vec(), qualifier: b"q".to_vec() }] };
    s.mutate(b"t", vec![del], Some(200), NOW).unwrap();
    s.mutate(b"t", vec![put("r", "f", "q", "late-but-old")], Some(150), NOW).unwrap();
    assert_eq!(values(&s.get(b"t", b"r", &versions(3), NOW).unwrap()), vec![("f:keep".into(), 100, "k".into())]);
    s.mutate(b"t", vec![put("r", "f", "q", "new")], Some(201), NOW).unwrap();
    assert_eq!(
        values(&s.get(b"t", b"r", &versions(3), NOW).unwrap()),
        vec![("f:keep".into(), 100, "k".into()), ("f:q".into(), 201, "new".into())]
    );
}

#[test]
fn family_and_row_deletes_mask_at_or_below_their_timestamp() {
    let s = store_with(&[("a", 3, TTL_FOREVER), ("b", 3, TTL_FOREVER)]);
    s.mutate(b"t", vec![put("r", "a", "x", "1"), put("r", "b", "y", "2")], Some(50), NOW).unwrap();
    let del = RowEdit { row: b"r".to_vec(), ops: vec![Op::DeleteFamily { family: b"a".to_vec() }] };
    s.mutate(b"t", vec![del], Some(50), NOW).unwrap();
    assert_eq!(values(&s.get(b"t", b"r", &versions(3), NOW).unwrap()), vec![("b:y".into(), 50, "2".into())]);
    let del_row = RowEdit { row: b"r".to_vec(), ops: vec![Op::DeleteRow] };
    s.mutate(b"t", vec![del_row], None, NOW).unwrap();
    assert!(s.get(b"t", b"r", &versions(3), NOW).unwrap().is_empty());
    // A put after the delete, at a later server time, is visible again.
    s.mutate(b"t", vec![put("r", "a", "x", "3")], None, NOW + 1).unwrap();
    assert_eq!(s.get(b"t", b"r", &versions(3), NOW + 1).unwrap().len(), 1);
}

#[test]
fn ttl_hides_expired_cells() {
    let s = store_with(&[("f", 3, 10)]);
    s.mutate(b"t", vec![put("r", "f", "old", "x")], Some(NOW - 11_000), NOW).unwrap();
    s.mutate(b"t", vec![put("r", "f", "new", "y")], Some(NOW - 9_000), NOW).unwrap();
    assert_eq!(values(&s.get(b"t", b"r", &versions(3), NOW).unwrap()), vec![("f:new".into(), NOW - 9_000, "y".into())]);
    assert!(s.get(b"t", b"r", &versions(3), NOW + 2_000).unwrap().is_empty());
}

#[test]
fn increments_are_big_endian_longs() {
    let s = store_with(&[("c", 3, TTL_FOREVER)]);
    let inc = |n: i64| Increment { row: b"r".to_vec(), family: b"c".to_vec(), qualifier: b"n".to_vec(), amount: n };
    assert_eq!(s.increment(b"t", &[inc(5)], NOW).unwrap(), vec![5]);
    assert_eq!(s.increment(b"t", &[inc(-2), inc(10)], NOW).unwrap(), vec![3, 13]);
    let got = s.get(b"t", b"r", &ReadSpec::default(), NOW).unwrap();
    assert_eq!(got[0].value, 13i64.to_be_bytes().to_vec());
    s.mutate(b"t", vec![put("r", "c", "s", "abc")], None, NOW).unwrap();
    let err = s.increment(b"t", &[Increment { qualifier: b"s".to_vec(), ..inc(1) }], NOW).unwrap_err();
    assert!(err.to_string().contains("3 bytes wide"), "{err}");
}

#[test]
fn scans_are_bytewise_ordered_bounded_and_resumable() {
    let s = store_with(&[("f", 1, TTL_FOREVER)]);
    let rows = ["b", "a", "a\u{0}", "ab", "c", "aa"];
    let muts: Vec<_> = rows.iter().map(|r| put(r, "f", "q", r)).collect();
    s.mutate(b"t", muts, None, NOW).unwrap();
    let scan_all = |spec: ScanSpec, page: usize| {
        let (mut cur, prep) = s.open_scan(b"t", spec).unwrap();
        let mut seen = Vec::new();
        while !cur.is_exhausted() {
            for r in s.scan_next(&mut cur, &prep, page, NOW).unwrap() {
                seen.push(show(&r.row));
            }
        }
        seen
    };
    assert_eq!(scan_all(ScanSpec::default(), 2), vec!["a", "a\u{0}", "aa", "ab", "b", "c"]);
    let prefix = ScanSpec { filter: crate::filter::parse(b"PrefixFilter('a')").unwrap(), ..ScanSpec::default() };
    assert_eq!(scan_all(prefix, 1), vec!["a", "a\u{0}", "aa", "ab"]);
    let bounded = ScanSpec { start_row: b"aa".to_vec(), stop_row: b"c".to_vec(), ..ScanSpec::default() };
    assert_eq!(scan_all(bounded, 10), vec!["aa", "ab", "b"]);
    let reversed =
        ScanSpec { start_row: b"b".to_vec(), stop_row: b"a".to_vec(), reversed: true, ..ScanSpec::default() };
    assert_eq!(scan_all(reversed, 2), vec!["b", "ab", "aa", "a\u{0}"]);
    let reversed_prefix =
        ScanSpec { reversed: true, filter: crate::filter::parse(b"PrefixFilter('a')").unwrap(), ..ScanSpec::default() };
    assert_eq!(scan_all(reversed_prefix, 3), vec!["ab", "aa", "a\u{0}", "a"]);
}

#[test]
fn unknown_family_and_table_and_disabled_table_are_refused() {
    let s = store_with(&[("f", 1, TTL_FOREVER)]);
    let err = s.mutate(b"t", vec![put("r", "nope", "q", "v")], None, NOW).unwrap_err();
    assert!(matches!(err, StoreError::NoSuchFamily { .. }), "{err}");
    let err = s.mutate(b"missing", vec![put("r", "f", "q", "v")], None, NOW).unwrap_err();
    assert!(matches!(err, StoreError::TableNotFound(_)), "{err}");
    let err = s.delete_table(b"t").unwrap_err();
    assert!(matches!(err, StoreError::TableNotDisabled(_)), "{err}");
    s.set_enabled(b"t", false).unwrap();
    let err = s.get(b"t", b"r", &ReadSpec::default(), NOW).unwrap_err();
    assert!(matches!(err, StoreError::TableDisabled(_)), "{err}");
    s.delete_table(b"t").unwrap();
    assert!(s.tables().is_empty());
}

#[test]
fn recreated_table_does_not_see_old_cells() {
    let s = store_with(&[("f", 1, TTL_FOREVER)]);
    s.mutate(b"t", vec![put("r", "f", "q", "v")], None, NOW).unwrap();
    s.set_enabled(b"t", false).unwrap();
    s.delete_table(b"t").unwrap();
    s.create_table(b"t", vec![FamilyDescriptor::new("f")], Vec::new(), NOW).unwrap();
    assert!(s.get(b"t", b"r", &ReadSpec::default(), NOW).unwrap().is_empty());
}

#[test]
fn descriptors_are_validated_like_hbase() {
    let s = Store::in_memory().unwrap();
    let bad = |f: FamilyDescriptor| {
        matches!(s.create_table(b"x", vec![f], Vec::new(), NOW), Err(StoreError::IllegalArgument(_)))
    };
    assert!(bad(FamilyDescriptor::new("")));
    assert!(bad(FamilyDescriptor { max_versions: 0, ..FamilyDescriptor::new("f") }));
    assert!(bad(FamilyDescriptor { compression: "zip".into(), ..FamilyDescriptor::new("f") }));
    assert!(bad(FamilyDescriptor { bloom_filter_type: "BLOOM".into(), ..FamilyDescriptor::new("f") }));
    assert!(matches!(
        s.create_table(b"-x", vec![FamilyDescriptor::new("f")], Vec::new(), NOW),
        Err(StoreError::IllegalArgument(_))
    ));
    s.create_table(b"ns:x", vec![FamilyDescriptor::new("f")], Vec::new(), NOW).unwrap();
    assert!(matches!(
        s.create_table(b"ns:x", vec![FamilyDescriptor::new("f")], Vec::new(), NOW),
        Err(StoreError::TableExists(_))
    ));
}

#[test]
fn rows_survive_flushes_compactions_and_reopening_and_the_dir_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let options = EngineOptions { durability: Durability::Os, memstore_bytes: 4 << 20, block_cache_bytes: 1 << 20 };
    let body = "x".repeat(100);
    {
        let s = Store::open(dir.path(), options).unwrap();
        s.create_table(b"t", vec![FamilyDescriptor::new("f")], Vec::new(), NOW).unwrap();
        for i in 0..3000 {
            s.mutate(b"t", vec![put(&format!("r{i:05}"), "f", "q", &body)], None, NOW).unwrap();
            match i {
                1000 => s.flush().unwrap(),
                2000 => s.major_compact().unwrap(),
                _ => {}
            }
        }
        // A row in a sorted file, rewritten in the memstore: the newest value wins.
        s.mutate(b"t", vec![put("r00001", "f", "q", "new")], None, NOW + 1).unwrap();
        let del = RowEdit { row: b"r00002".to_vec(), ops: vec![Op::DeleteRow] };
        s.mutate(b"t", vec![del], None, NOW + 1).unwrap();
        assert!(s.stats().flushes >= 2, "{:?}", s.stats());
        let second = Store::open(dir.path(), options).unwrap_err();
        assert!(second.to_string().contains("in use by another emulator"), "{second}");
    }
    let s = Store::open(dir.path(), options).unwrap();
    let (mut cursor, prepared) = s.open_scan(b"t", ScanSpec::default()).unwrap();
    let mut rows = 0;
    while !cursor.is_exhausted() {
        rows += s.scan_next(&mut cursor, &prepared, 700, NOW + 2).unwrap().len();
    }
    assert_eq!(rows, 2999);
    assert_eq!(values(&s.get(b"t", b"r00001", &versions(1), NOW + 2).unwrap())[0].2, "new");
    assert!(s.get(b"t", b"r00002", &versions(1), NOW + 2).unwrap().is_empty());
    assert_eq!(values(&s.get(b"t", b"r02999", &versions(1), NOW + 2).unwrap())[0].2, body);
}

/// The number of edits a row has in the engine.
fn edits(s: &Store, row: &str) -> usize {
    let meta = s.table(b"t").unwrap();
    s.engine.rows.prefix(keys::row_prefix(meta.id, row.as_bytes())).count()
}

#[test]
fn a_row_read_with_many_edits_is_folded_into_one_and_reads_the_same() {
    let s = store_with(&[("f", 2, TTL_FOREVER)]);
    for ts in 1..=40 {
        s.mutate(
            b"t",
            vec![put("r", "f", "q", &format!("v{ts}")), put("r", "f", &format!("q{ts}"), "x")],
            Some(ts),
            NOW,
        )
        .unwrap();
    }
    let del = RowEdit {
        row: b"r".to_vec(),
        ops: vec![Op::DeleteColumn { family: b"f".to_vec(), qualifier: b"q3".to_vec() }],
    };
    s.mutate(b"t", vec![del], Some(40), NOW).unwrap();
    assert_eq!(edits(&s, "r"), 81, "one edit per row mutation");
    let before = s.get(b"t", b"r", &versions(5), NOW).unwrap();
    // The fold runs on the committer after the read; wait for it (bounded), reading as it goes.
    for _ in 0..500 {
        assert_eq!(s.get(b"t", b"r", &versions(5), NOW).unwrap(), before);
        if edits(&s, "r") == 1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(edits(&s, "r"), 1, "folded into one snapshot");
    assert_eq!(values(&before)[..2], [("f:q".into(), 40, "v40".into()), ("f:q".into(), 39, "v39".into())]);
    assert!(!values(&before).iter().any(|(c, _, _)| c == "f:q3"));
    // Blind writes after the fold merge over the snapshot.
    s.mutate(b"t", vec![put("r", "f", "q", "v41")], Some(41), NOW).unwrap();
    assert_eq!(values(&s.get(b"t", b"r", &versions(5), NOW).unwrap())[0], ("f:q".into(), 41, "v41".into()));
}

#[test]
fn increments_among_concurrent_blind_writes_see_every_acknowledged_write() {
    let s = Arc::new(store_with(&[("c", 1, TTL_FOREVER), ("f", 1, TTL_FOREVER)]));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                for i in 0..200 {
                    if t % 2 == 0 {
                        let inc = Increment {
                            row: b"r".to_vec(),
                            family: b"c".to_vec(),
                            qualifier: b"n".to_vec(),
                            amount: 1,
                        };
                        s.increment(b"t", &[inc], NOW).unwrap();
                    } else {
                        s.mutate(b"t", vec![put("r", "f", &format!("{t}-{i}"), "x")], None, NOW).unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let cells = s.get(b"t", b"r", &ReadSpec::default(), NOW).unwrap();
    let counter = cells.iter().find(|c| c.family == b"c").unwrap();
    assert_eq!(counter.value, 400i64.to_be_bytes().to_vec());
    assert_eq!(cells.iter().filter(|c| c.family == b"f").count(), 400);
}

#[test]
fn edits_after_a_reopen_sort_after_the_recovered_ones() {
    let dir = tempfile::tempdir().unwrap();
    let options = EngineOptions { durability: Durability::Os, memstore_bytes: 4 << 20, block_cache_bytes: 1 << 20 };
    {
        let s = Store::open(dir.path(), options).unwrap();
        s.create_table(b"t", vec![FamilyDescriptor::new("f")], Vec::new(), NOW).unwrap();
        s.mutate(b"t", vec![put("r", "f", "q", "before")], Some(7), NOW).unwrap();
    }
    let s = Store::open(dir.path(), options).unwrap();
    // Same cell, same timestamp: the later write wins, as in HBase.
    s.mutate(b"t", vec![put("r", "f", "q", "after")], Some(7), NOW).unwrap();
    assert_eq!(values(&s.get(b"t", b"r", &versions(3), NOW).unwrap()), vec![("f:q".into(), 7, "after".into())]);
}
