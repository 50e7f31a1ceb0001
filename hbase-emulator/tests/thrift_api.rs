//! Every implemented Thrift1 method, through a real Thrift client over TCP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use chatpipe_hbase_emulator::{start, Config};
use common::*;
use hbase_thrift::hbase::{
    ColumnDescriptor, TAccessControlEntity, TAppend, THbaseSyncClient, TIncrement, TPermissionScope, TThriftServerType,
};

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

#[test]
fn table_admin_methods_behave_as_hbase() {
    let emu = emulator();
    let mut c = connect(emu.local_addr());

    assert!(c.get_table_names().unwrap().is_empty());
    c.create_table("b_table".into(), vec![family("cf", 5, 3600), family("other", 1, -1)]).unwrap();
    create_table(&mut c, "a_table", &["cf"]);
    assert_exception(c.create_table("a_table".into(), vec![family("cf", 3, -1)]), "AlreadyExists", "a_table");
    // Bad descriptors: IllegalArgument, as HBase's ThriftUtilities.colDescFromThrift raises.
    let bad = [
        ColumnDescriptor::default(),
        family("cf", 0, -1),
        ColumnDescriptor { compression: Some("zip".into()), ..family("cf", 1, -1) },
        ColumnDescriptor { bloom_filter_type: Some("BLOOM".into()), ..family("cf", 1, -1) },
    ];
    for cd in bad {
        assert_exception(c.create_table("bad".into(), vec![cd]), "IllegalArgument", "");
    }
    assert_exception(
        c.create_table("bad".into(), vec![family("cf", 1, -1), family("cf", 2, -1)]),
        "IllegalArgument",
        "already exists",
    );
    assert_exception(c.create_table(".bad".into(), vec![family("cf", 1, -1)]), "IllegalArgument", "Illegal table name");
    assert_exception(c.create_table("nofam".into(), vec![]), "IOError", "column family");

    assert_eq!(c.get_table_names().unwrap(), vec![b"a_table".to_vec(), b"b_table".to_vec()]);

    let cds = c.get_column_descriptors("b_table".into()).unwrap();
    let names: Vec<_> = cds.keys().cloned().collect();
    assert_eq!(names, vec![b"cf:".to_vec(), b"other:".to_vec()]);
    let cf = &cds[&b"cf:".to_vec()];
    assert_eq!(cf.max_versions, Some(5));
    assert_eq!(cf.time_to_live, Some(3600));
    assert_eq!(cf.compression.as_deref(), Some("NONE"));
    assert_eq!(cds[&b"other:".to_vec()].time_to_live, Some(i32::MAX));
    assert_exception(c.get_column_descriptors("nope".into()), "IOError", "TableNotFound");

    assert!(c.is_table_enabled("a_table".into()).unwrap());
    assert_exception(c.enable_table("a_table".into()), "IOError", "TableNotDisabled");
    assert_exception(c.delete_table("a_table".into()), "IOError", "enabled");
    c.disable_table("a_table".into()).unwrap();
    assert!(!c.is_table_enabled("a_table".into()).unwrap());
    assert_exception(c.disable_table("a_table".into()), "IOError", "TableNotEnabled");
    let with_flags = c.get_table_names_with_is_table_enabled().unwrap();
    assert_eq!(with_flags.get(b"a_table".as_slice()), Some(&false));
    assert_eq!(with_flags.get(b"b_table".as_slice()), Some(&true));
    // A disabled table refuses reads and writes.
    assert_exception(
        c.mutate_row("a_table".into(), "r".into(), vec![put("cf:q", "v")], no_attrs()),
        "IOError",
        "disabled",
    );
    assert_exception(c.get_row("a_table".into(), "r".into(), no_attrs()), "IOError", "disabled");
    c.enable_table("a_table".into()).unwrap();
    c.mutate_row("a_table".into(), "r".into(), vec![put("cf:q", "v")], no_attrs()).unwrap();
    c.disable_table("a_table".into()).unwrap();
    c.delete_table("a_table".into()).unwrap();
    assert_exception(c.is_table_enabled("a_table".into()), "IOError", "TableNotFound");
    assert_exception(c.delete_table("a_table".into()), "IOError", "TableNotFound");
    // Recreated, the table starts empty.
    create_table(&mut c, "a_table", &["cf"]);
    assert!(c.get_row("a_table".into(), "r".into(), no_attrs()).unwrap().is_empty());

    c.compact("b_table".into()).unwrap();
    c.major_compact("b_table".into()).unwrap();
    assert_exception(c.compact("nope".into()), "IOError", "TableNotFound");
    assert_eq!(c.get_thrift_server_type().unwrap(), TThriftServerType::ONE);
    assert!(!c.get_cluster_id().unwrap().is_empty());
}

#[test]
fn regions_come_from_split_points() {
    let emu = emulator();
    let port = emu.local_addr().port() as i32;
    let mut c = connect(emu.local_addr());
    create_table(&mut c, "plain", &["f"]);
    create_table(&mut c, "chat:messages", &["m"]);

    let plain = c.get_table_regions("plain".into()).unwrap();
    assert_eq!(plain.len(), 1);
    assert_eq!(plain[0].start_key.as_deref(), Some(&b""[..]));
    assert_eq!(plain[0].end_key.as_deref(), Some(&b""[..]));
    assert_eq!(plain[0].port, Some(port));

    let salted = c.get_table_regions("chat:messages".into()).unwrap();
    assert_eq!(salted.len(), 128);
    assert_eq!(salted[0].start_key.as_deref(), Some(&b""[..]));
    assert_eq!(salted[0].end_key.as_deref(), Some(&b"001"[..]));
    assert_eq!(salted[5].start_key.as_deref(), Some(&b"005"[..]));
    assert_eq!(salted[127].start_key.as_deref(), Some(&b"127"[..]));
    assert_eq!(salted[127].end_key.as_deref(), Some(&b""[..]));
    for w in salted.windows(2) {
        assert_eq!(w[0].end_key, w[1].start_key, "regions must be contiguous");
    }
    let name = String::from_utf8(salted[1].name.clone().unwrap()).unwrap();
    assert!(name.starts_with("chat:messages,001,"), "{name}");

    // HBase answers an empty list for a table that does not exist.
    assert!(c.get_table_regions("nope".into()).unwrap().is_empty());

    // getRegionInfo takes a meta row key `table,row,regionid` and names the region holding it.
    let r = c.get_region_info("chat:messages,005|42|x,99999999999999".into()).unwrap();
    assert_eq!((r.start_key.as_deref(), r.end_key.as_deref()), (Some(&b"005"[..]), Some(&b"006"[..])));
    assert_eq!(r.name, salted[5].name);
    let r = c.get_region_info("plain,anything,99999999999999".into()).unwrap();
    assert_eq!(r.name, plain[0].name);
    assert_exception(c.get_region_info("nope,r,1".into()), "IOError", "TableNotFound");
    assert_exception(c.get_region_info("no-comma".into()), "IOError", "meta row key");
}

#[test]
fn presplit_salt_flag_splits_every_new_table() {
    let config = Config { presplit_salt: Some(128), ..Config::in_memory("127.0.0.1:0".parse().unwrap()) };
    let emu = start(config).unwrap();
    let mut c = connect(emu.local_addr());
    create_table(&mut c, "plain", &["f"]);
    let regions = c.get_table_regions("plain".into()).unwrap();
    assert_eq!(regions.len(), 128);
    assert_eq!(regions[127].start_key.as_deref(), Some(&b"127"[..]));
}

#[test]
fn puts_and_every_get_method_return_what_was_written() {
    let emu = emulator();
    let mut c = connect(emu.local_addr());
    create_table(&mut c, "t", &["a", "b"]);

    c.mutate_row(
        "t".into(),
        "r1".into(),
        vec![put("a:x", "1"), put("a:y", "2"), put("b:z", "3"), put("b:", "empty-q")],
        no_attrs(),
    )
    .unwrap();
    c.mutate_row_ts("t".into(), "r2".into(), vec![put("a:x", "old")], 1000, no_attrs()).unwrap();
    c.mutate_row_ts("t".into(), "r2".into(), vec![put("a:x", "new")], 2000, no_attrs()).unwrap();
    c.mutate_rows(
        "t".into(),
        vec![batch("r3", vec![put("a:x", "r3x")]), batch("r4", vec![put("a:x", "r4x"), put("b:w", "r4w")])],
        no_attrs(),
    )
    .unwrap();
    c.mutate_rows_ts("t".into(), vec![batch("r5", vec![put("a:x", "r5x")])], 5000, no_attrs()).unwrap();

    // get: newest version of one column; a family without ':' selects the whole family.
    let cells = c.get("t".into(), "r1".into(), "a:x".into(), no_attrs()).unwrap();
    assert_eq!(cells.len(), 1);
    assert_eq!(cells[0].value.as_deref(), Some(&b"1"[..]));
    assert!(cells[0].timestamp.unwrap() > 1_600_000_000_000, "server time in ms");
    let fam = c.get("t".into(), "r1".into(), "a".into(), no_attrs()).unwrap();
    let vals: Vec<_> = fam.iter().map(|c| c.value.clone().unwrap()).collect();
    assert_eq!(vals, vec![b"1".to_vec(), b"2".to_vec()]);
    // "b:" is the empty qualifier, not the family.
    let empty_q = c.get("t".into(), "r1".into(), "b:".into(), no_attrs()).unwrap();
    assert_eq!(empty_q.len(), 1);
    assert_eq!(empty_q[0].value.as_deref(), Some(&b"empty-q"[..]));
    assert!(c.get("t".into(), "nope".into(), "a:x".into(), no_attrs()).unwrap().is_empty());

    // getVer / getVerTs: newest first; getVerTs is exclusive of its timestamp.
    let vers = c.get_ver("t".into(), "r2".into(), "a:x".into(), 10, no_attrs()).unwrap();
    let got: Vec<_> = vers.iter().map(|c| (c.timestamp.unwrap(), c.value.clone().unwrap())).collect();
    assert_eq!(got, vec![(2000, b"new".to_vec()), (1000, b"old".to_vec())]);
    let one = c.get_ver("t".into(), "r2".into(), "a:x".into(), 1, no_attrs()).unwrap();
    assert_eq!(one.len(), 1);
    let before = c.get_ver_ts("t".into(), "r2".into(), "a:x".into(), 2000, 10, no_attrs()).unwrap();
    assert_eq!(before.len(), 1);
    assert_eq!(before[0].timestamp, Some(1000));
    assert_exception(c.get_ver("t".into(), "r2".into(), "a:x".into(), 0, no_attrs()), "IOError", "versions");

    // getRow / getRowWithColumns / getRowTs / getRowWithColumnsTs
    let row = c.get_row("t".into(), "r1".into(), no_attrs()).unwrap();
    assert_eq!(row.len(), 1);
    assert_eq!(row[0].row.as_deref(), Some(&b"r1"[..]));
    let cols: Vec<_> = row[0].columns.as_ref().unwrap().keys().cloned().collect();
    assert_eq!(cols, vec![b"a:x".to_vec(), b"a:y".to_vec(), b"b:".to_vec(), b"b:z".to_vec()]);
    assert!(row[0].sorted_columns.is_none());
    let sel = c.get_row_with_columns("t".into(), "r1".into(), vec!["a:y".into(), "b".into()], no_attrs()).unwrap();
    let cols: Vec<_> = sel[0].columns.as_ref().unwrap().keys().cloned().collect();
    assert_eq!(cols, vec![b"a:y".to_vec(), b"b:".to_vec(), b"b:z".to_vec()]);
    let r2_old = c.get_row_ts("t".into(), "r2".into(), 2000, no_attrs()).unwrap();
    assert_eq!(value(&r2_old[0], "a:x").as_deref(), Some("old"));
    let r2_none = c.get_row_ts("t".into(), "r2".into(), 1000, no_attrs()).unwrap();
    assert!(r2_none.is_empty(), "nothing strictly before ts 1000");
    let r2_cols = c.get_row_with_columns_ts("t".into(), "r2".into(), vec!["a:x".into()], 3000, no_attrs()).unwrap();
    assert_eq!(value(&r2_cols[0], "a:x").as_deref(), Some("new"));
    assert!(c.get_row("t".into(), "nope".into(), no_attrs()).unwrap().is_empty());

    // getRows*: found rows, in the order asked, missing ones left out.
    let rows = c.get_rows("t".into(), vec!["r4".into(), "nope".into(), "r3".into()], no_attrs()).unwrap();
    assert_eq!(row_keys(&rows), vec!["r4", "r3"]);
    assert_eq!(value(&rows[0], "b:w").as_deref(), Some("r4w"));
    let rows = c.get_rows_with_columns("t".into(), vec!["r4".into()], vec!["b".into()], no_attrs()).unwrap();
    assert_eq!(value(&rows[0], "b:w").as_deref(), Some("r4w"));
    assert_eq!(value(&rows[0], "a:x"), None);
    let rows = c.get_rows_ts("t".into(), vec!["r2".into(), "r5".into()], 5000, no_attrs()).unwrap();
    assert_eq!(row_keys(&rows), vec!["r2"], "r5 was written at 5000, excluded");
    let rows = c.get_rows_with_columns_ts("t".into(), vec!["r5".into()], vec!["a:x".into()], 5001, no_attrs()).unwrap();
    assert_eq!(value(&rows[0], "a:x").as_deref(), Some("r5x"));
    assert_eq!(rows[0].columns.as_ref().unwrap()[&b"a:x".to_vec()].timestamp, Some(5000));
}

#[test]
fn versions_are_newest_first_and_capped_by_max_versions() {
    let emu = emulator();
    let mut c = connect(emu.local_addr());
    c.create_table("t".into(), vec![family("f", 2, -1)]).unwrap();
    for (ts, v) in [(10, "a"), (30, "c"), (20, "b"), (5, "z")] {
        c.mutate_row_ts("t".into(), "r".into(), vec![put("f:q", v)], ts, no_attrs()).unwrap();
    }
    let cells = c.get_ver("t".into(), "r".into(), "f:q".into(), 10, no_attrs()).unwrap();
    let got: Vec<_> = cells.iter().map(|c| (c.timestamp.unwrap(), c.value.clone().unwrap())).collect();
    assert_eq!(got, vec![(30, b"c".to_vec()), (20, b"b".to_vec())]);
    // Same timestamp: the later write replaces the value.
    c.mutate_row_ts("t".into(), "r".into(), vec![put("f:q", "C")], 30, no_attrs()).unwrap();
    let cells = c.get("t".into(), "r".into(), "f:q".into(), no_attrs()).unwrap();
    assert_eq!(cells[0].value.as_deref(), Some(&b"C"[..]));
}

#[test]
fn ttl_hides_cells_older_than_the_family_ttl() {
    let emu = emulator();
    let mut c = connect(emu.local_addr());
    c.create_table("t".into(), vec![family("short", 3, 60), family("forever", 3, -1)]).unwrap();
    let old = now_ms() - 3_600_000;
    c.mutate_row_ts("t".into(), "r".into(), vec![put("short:old", "x"), put("forever:old", "y")], old, no_attrs())
        .unwrap();
    c.mutate_row("t".into(), "r".into(), vec![put("short:new", "z")], no_attrs()).unwrap();
    let row = c.get_row("t".into(), "r".into(), no_attrs()).unwrap();
    let cols: Vec<_> = row[0].columns.as_ref().unwrap().keys().cloned().collect();
    assert_eq!(cols, vec![b"forever:old".to_vec(), b"short:new".to_vec()]);
}

#[test]
fn delete_markers_mask_older_puts_as_in_hbase() {
    let emu = emulator();
    let mut c = connect(emu.local_addr());
    create_table(&mut c, "t", &["a", "b"]);
    let t = || -> Vec<u8> { "t".into() };
    let cols = |c: &mut Client, row: &str| -> Vec<String> {
        c.get_row(t(), row.into(), no_attrs())
            .unwrap()
            .first()
            .map(|r| r.columns.as_ref().unwrap().keys().map(|k| String::from_utf8_lossy(k).into_owned()).collect())
            .unwrap_or_default()
    };

    // deleteAll on a column removes every version.
    for ts in [100, 200] {
        c.mutate_row_ts(t(), "r".into(), vec![put("a:x", "v"), put("a:y", "v")], ts, no_attrs()).unwrap();
    }
    c.delete_all(t(), "r".into(), "a:x".into(), no_attrs()).unwrap();
    assert!(c.get_ver(t(), "r".into(), "a:x".into(), 10, no_attrs()).unwrap().is_empty());
    assert_eq!(cols(&mut c, "r"), vec!["a:y"]);

    // deleteAllTs deletes versions ≤ ts; a later put with an older timestamp stays masked.
    c.delete_all_ts(t(), "r".into(), "a:y".into(), 150, no_attrs()).unwrap();
    let ys = c.get_ver(t(), "r".into(), "a:y".into(), 10, no_attrs()).unwrap();
    assert_eq!(ys.iter().map(|c| c.timestamp.unwrap()).collect::<Vec<_>>(), vec![200]);
    c.mutate_row_ts(t(), "r".into(), vec![put("a:y", "late")], 120, no_attrs()).unwrap();
    let ys = c.get_ver(t(), "r".into(), "a:y".into(), 10, no_attrs()).unwrap();
    assert_eq!(ys.iter().map(|c| c.timestamp.unwrap()).collect::<Vec<_>>(), vec![200]);

    // A delete mutation on a family ("b", no colon) deletes the family.
    c.mutate_row(t(), "r2".into(), vec![put("a:x", "1"), put("b:x", "2"), put("b:y", "3")], no_attrs()).unwrap();
    c.mutate_row(t(), "r2".into(), vec![delete("b")], no_attrs()).unwrap();
    assert_eq!(cols(&mut c, "r2"), vec!["a:x"]);
    // A delete mutation on a column deletes all its versions.
    c.mutate_row(t(), "r2".into(), vec![delete("a:x")], no_attrs()).unwrap();
    assert!(cols(&mut c, "r2").is_empty());
    // mutateRows with deletes.
    c.mutate_rows(t(), vec![batch("r3", vec![put("a:x", "1"), put("a:z", "2")])], no_attrs()).unwrap();
    c.mutate_rows(t(), vec![batch("r3", vec![delete("a:x")])], no_attrs()).unwrap();
    assert_eq!(cols(&mut c, "r3"), vec!["a:z"]);
    // mutateRowsTs deletes up to its timestamp only.
    c.mutate_rows_ts(t(), vec![batch("r3", vec![put("a:z", "future")])], i64::MAX - 1, no_attrs()).unwrap();
    c.mutate_rows_ts(t(), vec![batch("r3", vec![delete("a:z")])], now_ms() + 60_000, no_attrs()).unwrap();
    let z = c.get(t(), "r3".into(), "a:z".into(), no_attrs()).unwrap();
    assert_eq!(z[0].value.as_deref(), Some(&b"future"[..]));

    // deleteAllRow removes every family; deleteAllRowTs up to its timestamp.
    c.mutate_row(t(), "r4".into(), vec![put("a:x", "1"), put("b:x", "2")], no_attrs()).unwrap();
    c.delete_all_row(t(), "r4".into(), no_attrs()).unwrap();
    assert!(c.get_row(t(), "r4".into(), no_attrs()).unwrap().is_empty());
    c.mutate_row_ts(t(), "r5".into(), vec![put("a:x", "old")], 10, no_attrs()).unwrap();
    c.mutate_row_ts(t(), "r5".into(), vec![put("b:x", "new")], 30, no_attrs()).unwrap();
    c.delete_all_row_ts(t(), "r5".into(), 20, no_attrs()).unwrap();
    assert_eq!(cols(&mut c, "r5"), vec!["b:x"]);

    // A put newer than the row delete is visible again.
    c.mutate_row_ts(t(), "r5".into(), vec![put("a:x", "back")], 21, no_attrs()).unwrap();
    assert_eq!(cols(&mut c, "r5"), vec!["a:x", "b:x"]);
}

#[test]
fn counters_are_eight_byte_big_endian_longs() {
    let emu = emulator();
    let mut c = connect(emu.local_addr());
    create_table(&mut c, "t", &["c"]);
    assert_eq!(c.atomic_increment("t".into(), "r".into(), "c:n".into(), 5).unwrap(), 5);
    assert_eq!(c.atomic_increment("t".into(), "r".into(), "c:n".into(), -7).unwrap(), -2);
    assert_eq!(c.atomic_increment("t".into(), "r".into(), "c:n".into(), 0).unwrap(), -2);
    let cell = c.get("t".into(), "r".into(), "c:n".into(), no_attrs()).unwrap();
    assert_eq!(cell[0].value.as_deref(), Some(&(-2i64).to_be_bytes()[..]));

    let inc = |row: &str, n: i64| TIncrement {
        table: Some("t".into()),
        row: Some(row.into()),
        column: Some("c:n".into()),
        ammount: Some(n),
    };
    c.increment(inc("r", 10)).unwrap();
    c.increment_rows(vec![inc("r", 1), inc("r2", 4)]).unwrap();
    assert_eq!(c.atomic_increment("t".into(), "r".into(), "c:n".into(), 0).unwrap(), 9);
    assert_eq!(c.atomic_increment("t".into(), "r2".into(), "c:n".into(), 0).unwrap(), 4);

    c.mutate_row("t".into(), "r".into(), vec![put("c:s", "abc")], no_attrs()).unwrap();
    assert_exception(c.atomic_increment("t".into(), "r".into(), "c:s".into(), 1), "IOError", "not a long");
    assert_exception(c.atomic_increment("t".into(), "r".into(), "zz:n".into(), 1), "IOError", "NoSuchColumnFamily");
}

#[test]
fn append_and_check_and_put() {
    let emu = emulator();
    let mut c = connect(emu.local_addr());
    create_table(&mut c, "t", &["f"]);
    let appended = c
        .append(TAppend {
            table: Some("t".into()),
            row: Some("r".into()),
            columns: Some(vec!["f:s".into()]),
            values: Some(vec!["ab".into()]),
        })
        .unwrap();
    assert_eq!(appended[0].value.as_deref(), Some(&b"ab"[..]));
    let appended = c
        .append(TAppend {
            table: Some("t".into()),
            row: Some("r".into()),
            columns: Some(vec!["f:s".into()]),
            values: Some(vec!["cd".into()]),
        })
        .unwrap();
    assert_eq!(appended[0].value.as_deref(), Some(&b"abcd"[..]));

    let done =
        c.check_and_put("t".into(), "r".into(), "f:s".into(), "abcd".into(), put("f:t", "1"), no_attrs()).unwrap();
    assert!(done);
    let not_done =
        c.check_and_put("t".into(), "r".into(), "f:s".into(), "zz".into(), put("f:t", "2"), no_attrs()).unwrap();
    assert!(!not_done);
    let t = c.get("t".into(), "r".into(), "f:t".into(), no_attrs()).unwrap();
    assert_eq!(t[0].value.as_deref(), Some(&b"1"[..]));
}

#[test]
fn unimplemented_methods_answer_io_error_naming_the_method() {
    let emu = emulator();
    let mut c = connect(emu.local_addr());
    let ace =
        TAccessControlEntity::new("u".to_string(), TPermissionScope::TABLE, "R".to_string(), Some(b"t".to_vec()), None);
    assert_exception(c.grant(ace.clone()), "IOError", "grant");
    assert_exception(c.revoke(ace), "IOError", "revoke");
    // The connection still works afterwards.
    assert!(c.get_table_names().unwrap().is_empty());
}

#[test]
fn framed_and_compact_wire_formats_are_served() {
    for (framed, compact) in [(true, false), (false, true), (true, true)] {
        let (transport, protocol) = wire(framed, compact);
        let config = Config::in_memory("127.0.0.1:0".parse().unwrap()).with_wire(transport, protocol);
        let emu = start(config).unwrap();
        let mut c = connect_with(emu.local_addr(), framed, compact);
        create_table(&mut c, "t", &["f"]);
        c.mutate_rows(
            "t".into(),
            vec![batch("r1", vec![put("f:q", vec![0u8; 100_000])]), batch("r2", vec![put("f:q", "x")])],
            no_attrs(),
        )
        .unwrap();
        let rows = c.get_rows("t".into(), vec!["r1".into(), "r2".into()], no_attrs()).unwrap();
        assert_eq!(row_keys(&rows), vec!["r1", "r2"], "framed={framed} compact={compact}");
        assert_eq!(rows[0].columns.as_ref().unwrap()[&b"f:q".to_vec()].value.as_ref().map(Vec::len), Some(100_000));
        assert_exception(c.get_row("nope".into(), "r".into(), no_attrs()), "IOError", "nope");
    }
}

/// Sends a call whose arguments leave some fields out, as Java and Python clients do for
/// `null`, and returns the reply's message type and its success field (id 0) reader.
mod raw {
    use std::net::{SocketAddr, TcpStream};

    use thrift::protocol::{
        TBinaryInputProtocol, TBinaryOutputProtocol, TFieldIdentifier, TInputProtocol, TListIdentifier,
        TMessageIdentifier, TMessageType, TOutputProtocol, TStructIdentifier, TType,
    };

    pub enum Arg<'a> {
        Bytes(i16, &'a [u8]),
        Columns(i16, &'a [&'a str]),
        Mutation(i16, &'a hbase_thrift::hbase::Mutation),
    }

    pub fn call(addr: SocketAddr, method: &str, args: &[Arg<'_>]) -> (TMessageType, TBinaryInputProtocol<TcpStream>) {
        let stream = TcpStream::connect(addr).unwrap();
        let mut o = TBinaryOutputProtocol::new(stream.try_clone().unwrap(), true);
        o.write_message_begin(&TMessageIdentifier::new(method, TMessageType::Call, 7)).unwrap();
        o.write_struct_begin(&TStructIdentifier::new("args")).unwrap();
        for a in args {
            match a {
                Arg::Bytes(id, b) => {
                    o.write_field_begin(&TFieldIdentifier::new("f", TType::String, *id)).unwrap();
                    o.write_bytes(b).unwrap();
                }
                Arg::Columns(id, cols) => {
                    o.write_field_begin(&TFieldIdentifier::new("f", TType::List, *id)).unwrap();
                    o.write_list_begin(&TListIdentifier::new(TType::String, cols.len() as i32)).unwrap();
                    for c in *cols {
                        o.write_bytes(c.as_bytes()).unwrap();
                    }
                    o.write_list_end().unwrap();
                }
                Arg::Mutation(id, m) => {
                    o.write_field_begin(&TFieldIdentifier::new("f", TType::Struct, *id)).unwrap();
                    m.write_to_out_protocol(&mut o).unwrap();
                }
            }
            o.write_field_end().unwrap();
        }
        o.write_field_stop().unwrap();
        o.write_struct_end().unwrap();
        o.write_message_end().unwrap();
        o.flush().unwrap();
        let mut i = TBinaryInputProtocol::new(stream, true);
        let ident = i.read_message_begin().unwrap();
        assert_eq!(ident.sequence_number, 7);
        (ident.message_type, i)
    }

    /// Reads the reply struct up to its field 0 (the result); panics on an exception field.
    pub fn success_field(i: &mut TBinaryInputProtocol<TcpStream>) -> TType {
        i.read_struct_begin().unwrap();
        let f = i.read_field_begin().unwrap();
        assert_eq!(f.id, Some(0), "expected a result, got field {:?}", f.id);
        f.field_type
    }
}

#[test]
fn omitted_arguments_are_taken_as_null_like_hbase_does() {
    use raw::Arg;
    use thrift::protocol::{TInputProtocol, TMessageType, TType};

    let emu = emulator();
    let addr = emu.local_addr();
    let mut c = connect(addr);
    create_table(&mut c, "t", &["f"]);
    c.mutate_row("t".into(), "r".into(), vec![put("f:a", "1"), put("f:b", "2")], no_attrs()).unwrap();

    // getRowWithColumns without columns (nor attributes): the whole row.
    let (kind, mut i) = raw::call(addr, "getRowWithColumns", &[Arg::Bytes(1, b"t"), Arg::Bytes(2, b"r")]);
    assert_eq!(kind, TMessageType::Reply);
    assert_eq!(raw::success_field(&mut i), TType::List);
    let list = i.read_list_begin().unwrap();
    assert_eq!(list.size, 1);
    let row = hbase_thrift::hbase::TRowResult::read_from_in_protocol(&mut i).unwrap();
    assert_eq!(row.columns.unwrap().len(), 2);

    // scannerOpen without columns: every column.
    let (kind, mut i) = raw::call(addr, "scannerOpen", &[Arg::Bytes(1, b"t"), Arg::Bytes(2, b"")]);
    assert_eq!(kind, TMessageType::Reply);
    assert_eq!(raw::success_field(&mut i), TType::I32);
    let id = i.read_i32().unwrap();
    assert_eq!(value(&c.scanner_get(id).unwrap()[0], "f:b").as_deref(), Some("2"));

    // getRowWithColumns with columns but without attributes.
    let (kind, mut i) =
        raw::call(addr, "getRowWithColumns", &[Arg::Bytes(1, b"t"), Arg::Bytes(2, b"r"), Arg::Columns(3, &["f:a"])]);
    assert_eq!(kind, TMessageType::Reply);
    assert_eq!(raw::success_field(&mut i), TType::List);
    assert_eq!(i.read_list_begin().unwrap().size, 1);
    let row = hbase_thrift::hbase::TRowResult::read_from_in_protocol(&mut i).unwrap();
    assert_eq!(row.columns.unwrap().keys().cloned().collect::<Vec<_>>(), vec![b"f:a".to_vec()]);

    // checkAndPut without a value: put only if the checked cell does not exist.
    let m = put("f:new", "x");
    let check_and_put = || {
        let args = [Arg::Bytes(1, b"t"), Arg::Bytes(2, b"r"), Arg::Bytes(3, b"f:new"), Arg::Mutation(6, &m)];
        let (kind, mut i) = raw::call(addr, "checkAndPut", &args);
        assert_eq!(kind, TMessageType::Reply);
        assert_eq!(raw::success_field(&mut i), TType::Bool);
        i.read_bool().unwrap()
    };
    assert!(check_and_put(), "the cell did not exist: put");
    assert!(!check_and_put(), "the cell exists now: no put");
    assert_eq!(c.get("t".into(), "r".into(), "f:new".into(), no_attrs()).unwrap().len(), 1);
    // An empty value, as HBase's checkAndMutate, also matches a missing cell.
    assert!(c.check_and_put("t".into(), "r".into(), "f:zz".into(), Vec::new(), put("f:c", "3"), no_attrs()).unwrap());
}
