//! Bad input: garbage bytes, a frame cut in half, absurd lengths, unknown methods, tables
//! and families. The offending client gets an error or its connection is closed; the
//! server keeps serving every other connection.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use chatpipe_hbase_emulator::{start, Config, ThriftProtocol, ThriftTransport};
use common::*;
use hbase_thrift::hbase::THbaseSyncClient;

/// Sends `bytes`, then reads until the server closes the connection or 5 s pass; returns
/// whether it closed and what it sent back.
fn send_raw(addr: SocketAddr, bytes: &[u8], half_close: bool) -> (bool, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The server may close before reading everything; a failed write is fine.
    let _ = s.write_all(bytes);
    if half_close {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (true, out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (true, out),
            Err(_) => return (false, out),
        }
    }
}

/// A binary-protocol call header: strict version, CALL, method name, seq id.
fn call_header(method: &str) -> Vec<u8> {
    let mut b = vec![0x80, 0x01, 0x00, 0x01];
    b.extend_from_slice(&(method.len() as u32).to_be_bytes());
    b.extend_from_slice(method.as_bytes());
    b.extend_from_slice(&1u32.to_be_bytes());
    b
}

fn garbage_inputs() -> Vec<(&'static str, Vec<u8>)> {
    let mut mutate_rows_huge_list = call_header("mutateRows");
    // field 1 tableName: string "t"
    mutate_rows_huge_list.extend_from_slice(&[11, 0, 1, 0, 0, 0, 1, b't']);
    // field 2 rowBatches: list<struct> claiming 2^31-1 elements
    mutate_rows_huge_list.extend_from_slice(&[15, 0, 2, 12, 0x7F, 0xFF, 0xFF, 0xFF]);
    let mut get_huge_string = call_header("get");
    get_huge_string.extend_from_slice(&[11, 0, 1, 0x7F, 0xFF, 0xFF, 0xF0, b'x']);
    let mut negative_list = call_header("getRows");
    negative_list.extend_from_slice(&[11, 0, 1, 0, 0, 0, 1, b't', 15, 0, 2, 11, 0xFF, 0xFF, 0xFF, 0xFE]);
    let mut pseudo_random = Vec::with_capacity(4096);
    let mut x: u32 = 0x1234_5678;
    for _ in 0..4096 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        pseudo_random.push(x as u8);
    }
    vec![
        ("http request", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("bad version", vec![0x80, 0x02, 0x00, 0x01, 0, 0, 0, 0]),
        ("name of 2 GiB (non-strict)", vec![0x7F, 0xFF, 0xFF, 0xFF, b'a']),
        ("list of 2^31 structs", mutate_rows_huge_list),
        ("string of 2 GiB", get_huge_string),
        ("negative list size", negative_list),
        ("pseudo-random bytes", pseudo_random),
        ("call cut in half", call_header("getTableNames")[..7].to_vec()),
        ("unknown field types", {
            let mut b = call_header("getTableNames");
            b.extend_from_slice(&[0x42, 0, 1, 0xFF, 0xFF]);
            b
        }),
    ]
}

#[test]
fn garbage_closes_only_the_offending_connection() {
    let emu = emulator();
    let addr = emu.local_addr();
    // A well-behaved client, connected before and used throughout.
    let mut good = connect(addr);
    create_table(&mut good, "t", &["f"]);
    good.mutate_row("t".into(), "r".into(), vec![put("f:q", "v")], no_attrs()).unwrap();

    for (what, bytes) in garbage_inputs() {
        let (closed, reply) = send_raw(addr, &bytes, true);
        assert!(closed, "{what}: connection neither answered nor closed");
        // Either nothing, or a well-formed exception reply (strict binary header).
        if !reply.is_empty() {
            assert_eq!(&reply[..2], &[0x80, 0x01], "{what}: unexpected reply {reply:?}");
        }
        let cells = good.get("t".into(), "r".into(), "f:q".into(), no_attrs()).unwrap();
        assert_eq!(cells[0].value.as_deref(), Some(&b"v"[..]), "after {what}");
        // And new connections are still served.
        let mut fresh = connect(addr);
        assert_eq!(fresh.get_table_names().unwrap(), vec![b"t".to_vec()], "after {what}");
    }
}

#[test]
fn a_connection_that_stops_mid_frame_does_not_block_others() {
    let config =
        Config::in_memory("127.0.0.1:0".parse().unwrap()).with_wire(ThriftTransport::Framed, ThriftProtocol::Binary);
    let emu = start(config).unwrap();
    let addr = emu.local_addr();
    // A frame announcing 1000 bytes, of which only 10 arrive; the client stays connected.
    let mut stuck = TcpStream::connect(addr).unwrap();
    stuck.write_all(&1000u32.to_be_bytes()).unwrap();
    stuck.write_all(&[0u8; 10]).unwrap();
    let mut c = connect_with(addr, true, false);
    create_table(&mut c, "t", &["f"]);
    assert_eq!(c.get_table_names().unwrap(), vec![b"t".to_vec()]);
    // Frames over the limit without a call inside, and negative ones, close the connection.
    for (size, half_close) in [(i32::MAX, true), (-5, false), (65 * 1024 * 1024, true)] {
        let (closed, reply) = send_raw(addr, &size.to_be_bytes(), half_close);
        assert!(closed, "frame size {size}");
        assert!(reply.is_empty());
    }
    // The half frame is finished by its client: it gets an exception or a close, not a hang.
    drop(stuck);
    assert_eq!(c.get_table_names().unwrap(), vec![b"t".to_vec()]);
    // Garbage inside a well-formed frame.
    let mut frame = 8u32.to_be_bytes().to_vec();
    frame.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4]);
    let (closed, _) = send_raw(addr, &frame, true);
    assert!(closed);
    assert_eq!(c.get_table_names().unwrap(), vec![b"t".to_vec()]);
}

#[test]
fn an_unknown_method_gets_an_exception_and_the_connection_stays_usable() {
    let emu = emulator();
    let addr = emu.local_addr();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Call "noSuchMethod" with one string argument, then a real getTableNames.
    let mut bytes = call_header("noSuchMethod");
    bytes.extend_from_slice(&[11, 0, 1, 0, 0, 0, 2, b'h', b'i', 0]);
    bytes.extend_from_slice(&call_header("getTableNames"));
    bytes.push(0);
    s.write_all(&bytes).unwrap();
    // Two replies: an EXCEPTION (type 3) naming the method, then a REPLY (type 2).
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let exception_header = [0x80u8, 0x01, 0x00, 0x03];
    let reply_header = [0x80u8, 0x01, 0x00, 0x02];
    while !(got.windows(4).any(|w| w == exception_header) && got.windows(4).any(|w| w == reply_header)) {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed; got {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("noSuchMethod"), "{text}");
    assert!(text.contains("getTableNames"), "{text}");
}

#[test]
fn unknown_tables_and_families_are_errors_not_crashes() {
    let emu = emulator();
    let mut c = connect(emu.local_addr());
    create_table(&mut c, "t", &["f"]);
    assert_exception(
        c.mutate_row("nope".into(), "r".into(), vec![put("f:q", "v")], no_attrs()),
        "IOError",
        "TableNotFoundException",
    );
    assert_exception(c.get_row("nope".into(), "r".into(), no_attrs()), "IOError", "nope");
    assert_exception(
        c.mutate_row("t".into(), "r".into(), vec![put("zz:q", "v")], no_attrs()),
        "IOError",
        "NoSuchColumnFamilyException",
    );
    assert_exception(c.get("t".into(), "r".into(), "zz:q".into(), no_attrs()), "IOError", "zz");
    // A batch naming an unknown family writes nothing at all.
    assert_exception(
        c.mutate_rows(
            "t".into(),
            vec![batch("ok", vec![put("f:q", "v")]), batch("bad", vec![put("zz:q", "v")])],
            no_attrs(),
        ),
        "IOError",
        "zz",
    );
    assert!(c.get_row("t".into(), "ok".into(), no_attrs()).unwrap().is_empty());
    // Put without a qualifier in a batch, a row of 0 bytes, a negative timestamp.
    assert_exception(
        c.mutate_rows("t".into(), vec![batch("r", vec![put("f", "v")])], no_attrs()),
        "IllegalArgument",
        "famAndQf",
    );
    assert_exception(
        c.mutate_row("t".into(), Vec::new(), vec![put("f:q", "v")], no_attrs()),
        "IllegalArgument",
        "Row length is 0",
    );
    assert_exception(
        c.mutate_row_ts("t".into(), "r".into(), vec![put("f:q", "v")], -1, no_attrs()),
        "IllegalArgument",
        "negative",
    );
    // The same connection still works.
    c.mutate_row("t".into(), "r".into(), vec![put("f:q", "v")], no_attrs()).unwrap();
    assert_eq!(c.get_row("t".into(), "r".into(), no_attrs()).unwrap().len(), 1);
}

#[test]
fn connections_beyond_the_limit_are_closed_and_the_rest_served() {
    let config = Config { max_connections: 2, ..Config::in_memory("127.0.0.1:0".parse().unwrap()) };
    let emu = start(config).unwrap();
    let addr = emu.local_addr();
    let mut a = connect(addr);
    let mut b = connect(addr);
    assert!(a.get_table_names().unwrap().is_empty());
    assert!(b.get_table_names().unwrap().is_empty());
    let mut third = connect(addr);
    assert!(third.get_table_names().is_err(), "third connection must be refused");
    drop(a);
    // Once a slot is free, a new connection is served (the server notices the close when
    // the connection's thread ends; retry until it has).
    let mut served = false;
    for _ in 0..100 {
        let mut c = connect(addr);
        if c.get_table_names().is_ok() {
            served = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(served);
    assert!(b.get_table_names().is_ok());
}

#[test]
fn idle_connections_are_closed_like_hbase_does() {
    let config = Config { idle_timeout_secs: 1, ..Config::in_memory("127.0.0.1:0".parse().unwrap()) };
    let emu = start(config).unwrap();
    let addr = emu.local_addr();
    let mut c = connect(addr);
    assert!(c.get_table_names().unwrap().is_empty());
    // A silent client: the server closes the connection (read returns 0) well before 30 s.
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = [0u8; 8];
    let n = idle.read(&mut buf).expect("the server must close an idle connection");
    assert_eq!(n, 0);
    // A new connection is served as usual.
    let mut fresh = connect(addr);
    assert!(fresh.get_table_names().unwrap().is_empty());
}

/// An `IOError` reply to a call refused for its size: the strict binary reply header, the
/// method's name, and the reason.
fn assert_refused_reply(reply: &[u8], method: &str, what: &str) {
    let text = String::from_utf8_lossy(reply);
    assert!(reply.len() > 4 && reply[..4] == [0x80, 0x01, 0x00, 0x02], "{what}: not a reply: {reply:?}");
    assert!(text.contains(method), "{what}: {text}");
    assert!(text.contains("request refused"), "{what}: {text}");
}

#[test]
fn a_filter_nested_100000_deep_is_refused_and_the_server_keeps_serving() {
    let emu = emulator();
    let addr = emu.local_addr();
    let mut good = connect(addr);
    create_table(&mut good, "t", &["f"]);
    good.mutate_row("t".into(), "r".into(), vec![put("f:q", "v")], no_attrs()).unwrap();
    let mut bad = connect(addr);
    for filter in ["(".repeat(100_000), format!("{}PrefixFilter('r'){}", "(".repeat(5_000), ")".repeat(5_000))] {
        let scan = hbase_thrift::hbase::TScan { filter_string: Some(filter.into_bytes()), ..scan() };
        assert_exception(bad.scanner_open_with_scan("t".into(), scan, no_attrs()), "IOError", "nested deeper");
        // The same connection and every other one go on.
        assert_eq!(bad.get_table_names().unwrap(), vec![b"t".to_vec()]);
        let cells = good.get("t".into(), "r".into(), "f:q".into(), no_attrs()).unwrap();
        assert_eq!(cells[0].value.as_deref(), Some(&b"v"[..]));
    }
}

#[test]
fn oversize_strings_frames_and_containers_get_an_io_error_and_others_are_served() {
    for framed in [false, true] {
        for compact in [false, true] {
            let what = format!("framed={framed} compact={compact}");
            let config = Config { max_message_bytes: 64 * 1024, ..Config::in_memory("127.0.0.1:0".parse().unwrap()) }
                .with_wire(wire(framed, compact).0, wire(framed, compact).1);
            let emu = start(config).unwrap();
            let addr = emu.local_addr();
            let mut good = connect_with(addr, framed, compact);
            create_table(&mut good, "t", &["f"]);
            // A value over the limit (and, framed, a frame over it): IOError, nothing written.
            let mut big = connect_with(addr, framed, compact);
            let r = big.mutate_row("t".into(), "big".into(), vec![put("f:q", vec![b'x'; 100 * 1024])], no_attrs());
            assert_exception(r, "IOError", "request refused");
            assert!(good.get_row("t".into(), "big".into(), no_attrs()).unwrap().is_empty(), "{what}");
            // Everyone else is served, before and after.
            good.mutate_row("t".into(), "r".into(), vec![put("f:q", "v")], no_attrs()).unwrap();
            let mut fresh = connect_with(addr, framed, compact);
            let cells = fresh.get("t".into(), "r".into(), "f:q".into(), no_attrs()).unwrap();
            assert_eq!(cells[0].value.as_deref(), Some(&b"v"[..]), "{what}");
        }
    }
    // A container over the limit (binary, buffered): answered with an IOError naming the call.
    let emu = emulator();
    let mut huge_list = call_header("mutateRows");
    huge_list.extend_from_slice(&[11, 0, 1, 0, 0, 0, 1, b't']);
    huge_list.extend_from_slice(&[15, 0, 2, 12, 0x7F, 0xFF, 0xFF, 0xFF]);
    let (closed, reply) = send_raw(emu.local_addr(), &huge_list, true);
    assert!(closed);
    assert_refused_reply(&reply, "mutateRows", "list of 2^31 structs");
    // A frame over the limit whose call header arrives: answered too, then closed.
    let emu = start(
        Config::in_memory("127.0.0.1:0".parse().unwrap()).with_wire(ThriftTransport::Framed, ThriftProtocol::Binary),
    )
    .unwrap();
    let mut frame = (65 * 1024 * 1024u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&call_header("getTableNames"));
    frame.extend_from_slice(&[0u8; 2048]);
    let (closed, reply) = send_raw(emu.local_addr(), &frame, true);
    assert!(closed);
    // The reply is framed: skip its 4-byte size.
    assert!(reply.len() > 4, "{reply:?}");
    assert_refused_reply(&reply[4..], "getTableNames", "frame of 65 MiB");
    let mut c = connect_with(emu.local_addr(), true, false);
    assert!(c.get_table_names().unwrap().is_empty());
}
