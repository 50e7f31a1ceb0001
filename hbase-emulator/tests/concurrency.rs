//! Many connections at once: 8 clients × 10,000 rows each, all present afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use chatpipe_hbase_emulator::{start, Config};
use common::*;
use hbase_thrift::hbase::THbaseSyncClient;

const CONNECTIONS: usize = 8;
const ROWS_PER_CONNECTION: usize = 10_000;
const ROWS_PER_CALL: usize = 250;

#[test]
fn eight_connections_write_ten_thousand_rows_each_and_all_are_present() {
    let dir = tempfile::tempdir().unwrap();
    let emu = start(Config::on_disk("127.0.0.1:0".parse().unwrap(), dir.path())).unwrap();
    let addr = emu.local_addr();
    let mut c = connect(addr);
    create_table(&mut c, "chat:messages", &["m"]);

    let writers: Vec<_> = (0..CONNECTIONS)
        .map(|w| {
            std::thread::spawn(move || {
                let mut c = connect(addr);
                for chunk in 0..ROWS_PER_CONNECTION / ROWS_PER_CALL {
                    let batches = (0..ROWS_PER_CALL)
                        .map(|i| {
                            let n = chunk * ROWS_PER_CALL + i;
                            batch(
                                format!("{w:03}|{n:05}"),
                                vec![put("m:body", format!("{w}-{n}")), put("m:seq", n.to_string())],
                            )
                        })
                        .collect();
                    c.mutate_rows("chat:messages".into(), batches, no_attrs()).unwrap();
                    // Interleave reads on the same connection.
                    let n = chunk * ROWS_PER_CALL;
                    let got = c
                        .get("chat:messages".into(), format!("{w:03}|{n:05}").into(), "m:body".into(), no_attrs())
                        .unwrap();
                    assert_eq!(got[0].value.as_deref(), Some(format!("{w}-{n}").as_bytes()));
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }

    // Every row, in order, with its values: one prefix scan per writer, in parallel.
    let readers: Vec<_> = (0..CONNECTIONS)
        .map(|w| {
            std::thread::spawn(move || {
                let mut c = connect(addr);
                let id = c
                    .scanner_open_with_prefix("chat:messages".into(), format!("{w:03}|").into(), vec![], no_attrs())
                    .unwrap();
                let rows = drain(&mut c, id, 1_000);
                assert_eq!(rows.len(), ROWS_PER_CONNECTION, "writer {w}");
                for (n, r) in rows.iter().enumerate() {
                    assert_eq!(r.row.as_deref(), Some(format!("{w:03}|{n:05}").as_bytes()));
                    assert_eq!(value(r, "m:body"), Some(format!("{w}-{n}")));
                    assert_eq!(value(r, "m:seq"), Some(n.to_string()));
                }
            })
        })
        .collect();
    for r in readers {
        r.join().unwrap();
    }
    let id = c.scanner_open("chat:messages".into(), Vec::new(), vec![], no_attrs()).unwrap();
    assert_eq!(drain(&mut c, id, 10_000).len(), CONNECTIONS * ROWS_PER_CONNECTION);
}
