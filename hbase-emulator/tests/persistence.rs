//! Durability: every write acknowledged to a client survives a kill -9 of the server process
//! during a write storm — after memstore flushes and compactions have run, in both
//! durability modes — and a restart on the same data dir and port (recovery from the
//! write-ahead log over the sorted files); and an in-process stop/start keeps the data.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chatpipe_hbase_emulator::{start, Config};
use common::*;
use hbase_thrift::hbase::THbaseSyncClient;

/// Starts the emulator binary; returns it with the address it printed.
fn spawn_server(data_dir: &Path, listen: &str, durability: &str) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatpipe-hbase-emulator"))
        // A small memstore, so that the storm flushes to sorted files on its own too.
        .args(["--listen", listen, "--durability", durability, "--memstore-size-mb", "4", "--data-dir"])
        .arg(data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start chatpipe-hbase-emulator");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    (child, addr)
}

#[test]
fn acknowledged_writes_survive_kill_9_and_restart() {
    kill_9_and_restart("os");
}

#[test]
fn acknowledged_writes_survive_kill_9_and_restart_with_fsync() {
    kill_9_and_restart("fsync");
}

fn kill_9_and_restart(durability: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, addr) = spawn_server(dir.path(), "127.0.0.1:0", durability);
    let mut c = connect(addr);
    create_table(&mut c, "chat:messages", &["m"]);
    c.create_table("counts".into(), vec![family("c", 1, -1)]).unwrap();
    c.mutate_row("chat:messages".into(), "deleted".into(), vec![put("m:body", "x")], no_attrs()).unwrap();
    c.delete_all_row("chat:messages".into(), "deleted".into(), no_attrs()).unwrap();

    // Writers keep writing while the server is killed; each records what was acknowledged.
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let counter_acked = Arc::new(Mutex::new(0i64));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..3 {
        let (acked, stop) = (Arc::clone(&acked), Arc::clone(&stop));
        writers.push(std::thread::spawn(move || {
            let mut c = connect(addr);
            for i in 0.. {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let rows: Vec<String> = (0..20).map(|j| format!("{w}|{i:06}|{j:02}")).collect();
                let batches =
                    rows.iter().map(|r| batch(r.as_str(), vec![put("m:body", format!("body of {r}"))])).collect();
                match c.mutate_rows("chat:messages".into(), batches, no_attrs()) {
                    Ok(()) => acked.lock().unwrap().extend(rows),
                    Err(_) => break, // the server is gone: not acknowledged
                }
            }
        }));
    }
    {
        let (counter_acked, stop) = (Arc::clone(&counter_acked), Arc::clone(&stop));
        writers.push(std::thread::spawn(move || {
            let mut c = connect(addr);
            while !stop.load(Ordering::SeqCst) {
                match c.atomic_increment("counts".into(), "r".into(), "c:n".into(), 1) {
                    Ok(v) => *counter_acked.lock().unwrap() = v,
                    Err(_) => break,
                }
            }
        }));
    }
    // Flushes and compactions while the storm goes on: `compact` flushes the memstore to a
    // sorted file, `majorCompact` flushes and merges every file into one; both return when
    // done. Writes go on after each, so the kill finds data in the log, the memstore and files.
    let mut admin = connect(addr);
    for round in 0..3 {
        let target = 2_000 * (round + 1);
        while acked.lock().unwrap().len() < target {
            std::thread::sleep(Duration::from_millis(20));
        }
        admin.compact("chat:messages".into()).unwrap();
        admin.major_compact("chat:messages".into()).unwrap();
    }
    // Let more writes through after the last compaction (no timing assertion: only counts).
    let after_compactions = acked.lock().unwrap().len() + 2_000;
    while acked.lock().unwrap().len() < after_compactions {
        std::thread::sleep(Duration::from_millis(20));
    }
    server.kill().unwrap(); // SIGKILL
    server.wait().unwrap();
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let counter = *counter_acked.lock().unwrap();
    assert!(acked.len() >= 8_000);

    // Restart on the same data dir and port.
    let (mut server, addr2) = spawn_server(dir.path(), &addr.to_string(), durability);
    assert_eq!(addr2, addr);
    let mut c = connect(addr);
    let mut names = c.get_table_names().unwrap();
    names.sort();
    assert_eq!(names, vec![b"chat:messages".to_vec(), b"counts".to_vec()]);
    let cds = c.get_column_descriptors("counts".into()).unwrap();
    assert_eq!(cds[&b"c:".to_vec()].max_versions, Some(1));

    let id = c.scanner_open("chat:messages".into(), Vec::new(), vec![], no_attrs()).unwrap();
    let rows = drain(&mut c, id, 5_000);
    let present: std::collections::HashSet<String> = row_keys(&rows).into_iter().collect();
    let missing: Vec<&String> = acked.iter().filter(|r| !present.contains(*r)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged rows lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    for r in rows.iter().take(100) {
        let key = String::from_utf8(r.row.clone().unwrap()).unwrap();
        assert_eq!(value(r, "m:body"), Some(format!("body of {key}")));
    }
    assert!(!present.contains("deleted"), "a delete marker was lost");
    // The counter is at least the last acknowledged value (a write may have committed
    // without its reply reaching the client), and its cell is still an 8-byte long.
    let now = c.atomic_increment("counts".into(), "r".into(), "c:n".into(), 0).unwrap();
    assert!(now >= counter, "counter went back from {counter} to {now}");

    // Writes after the restart work too, and a compaction of recovered data keeps it all.
    c.mutate_row("chat:messages".into(), "after".into(), vec![put("m:body", "y")], no_attrs()).unwrap();
    c.major_compact("chat:messages".into()).unwrap();
    let id = c.scanner_open("chat:messages".into(), Vec::new(), vec![], no_attrs()).unwrap();
    let compacted: std::collections::HashSet<String> = row_keys(&drain(&mut c, id, 5_000)).into_iter().collect();
    assert!(acked.iter().all(|r| compacted.contains(r)), "a compaction after recovery lost rows");
    assert!(compacted.contains("after") && !compacted.contains("deleted"));
    server.kill().unwrap();
    server.wait().unwrap();
}

#[test]
fn in_process_stop_releases_port_and_store_and_restart_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let emu = start(Config::on_disk("127.0.0.1:0".parse().unwrap(), dir.path())).unwrap();
    let addr = emu.local_addr();
    let mut c = connect(addr);
    create_table(&mut c, "t", &["f"]);
    c.mutate_row("t".into(), "r".into(), vec![put("f:q", "v1")], no_attrs()).unwrap();
    emu.stop();

    // The open connection is closed, new ones are refused while it is down.
    assert!(c.get_table_names().is_err());
    assert!(std::net::TcpStream::connect(addr).is_err());

    let emu = start(Config::on_disk(addr, dir.path())).unwrap();
    assert_eq!(emu.local_addr(), addr);
    let mut c = connect(addr);
    let cells = c.get("t".into(), "r".into(), "f:q".into(), no_attrs()).unwrap();
    assert_eq!(cells[0].value.as_deref(), Some(&b"v1"[..]));
    drop(emu); // dropping stops it as well
    let emu = start(Config::on_disk(addr, dir.path())).unwrap();
    let mut c = connect(emu.local_addr());
    assert_eq!(c.get_table_names().unwrap(), vec![b"t".to_vec()]);
}

#[test]
fn a_second_instance_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = start(Config::on_disk("127.0.0.1:0".parse().unwrap(), dir.path())).unwrap();
    let second = start(Config::on_disk("127.0.0.1:0".parse().unwrap(), dir.path()));
    let err = second.unwrap_err();
    assert!(err.to_string().contains("in use by another emulator"), "{err}");
}
