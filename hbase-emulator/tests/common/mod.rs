//! Helpers shared by the integration tests: an emulator on a free port and a real Thrift
//! client (`hbase_thrift::hbase::HbaseSyncClient`) over TCP.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use chatpipe_hbase_emulator::{start, Config, EmulatorHandle, ThriftProtocol, ThriftTransport};
use hbase_thrift::hbase::{
    AlreadyExists, BatchMutation, ColumnDescriptor, HbaseSyncClient, IOError, IllegalArgument, Mutation,
    THbaseSyncClient, TRowResult, TScan,
};
use thrift::protocol::{
    TBinaryInputProtocol, TBinaryOutputProtocol, TCompactInputProtocol, TCompactOutputProtocol, TInputProtocol,
    TOutputProtocol,
};
use thrift::transport::{
    TBufferedReadTransport, TBufferedWriteTransport, TFramedReadTransport, TFramedWriteTransport, TIoChannel,
    TTcpChannel,
};

pub type Client = HbaseSyncClient<Box<dyn TInputProtocol + Send>, Box<dyn TOutputProtocol + Send>>;

/// An in-memory emulator on a free port (buffered transport, binary protocol).
pub fn emulator() -> EmulatorHandle {
    start(Config::in_memory("127.0.0.1:0".parse().unwrap())).unwrap()
}

/// The transport and protocol of the `framed` / `compact` switches.
pub fn wire(framed: bool, compact: bool) -> (ThriftTransport, ThriftProtocol) {
    (
        if framed { ThriftTransport::Framed } else { ThriftTransport::Buffered },
        if compact { ThriftProtocol::Compact } else { ThriftProtocol::Binary },
    )
}

/// Every transport × protocol combination HBase's Thrift server (and happybase) offers.
pub const WIRES: [(bool, bool); 4] = [(false, false), (true, false), (false, true), (true, true)];

/// An in-memory emulator on a free port with the given transport and protocol.
pub fn emulator_with(framed: bool, compact: bool) -> EmulatorHandle {
    let (transport, protocol) = wire(framed, compact);
    start(Config::in_memory("127.0.0.1:0".parse().unwrap()).with_wire(transport, protocol)).unwrap()
}

/// A client speaking HBase's default wire format (buffered, binary).
pub fn connect(addr: SocketAddr) -> Client {
    connect_with(addr, false, false)
}

/// A client with the given transport and protocol.
pub fn connect_with(addr: SocketAddr, framed: bool, compact: bool) -> Client {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    stream.set_nodelay(true).unwrap();
    let (r, w) = TTcpChannel::with_stream(stream).split().unwrap();
    let (r, w): (Box<dyn std::io::Read + Send>, Box<dyn std::io::Write + Send>) = if framed {
        (Box::new(TFramedReadTransport::new(r)), Box::new(TFramedWriteTransport::new(w)))
    } else {
        (Box::new(TBufferedReadTransport::new(r)), Box::new(TBufferedWriteTransport::new(w)))
    };
    let (i, o): (Box<dyn TInputProtocol + Send>, Box<dyn TOutputProtocol + Send>) = if compact {
        (Box::new(TCompactInputProtocol::new(r)), Box::new(TCompactOutputProtocol::new(w)))
    } else {
        (Box::new(TBinaryInputProtocol::new(r, true)), Box::new(TBinaryOutputProtocol::new(w, true)))
    };
    HbaseSyncClient::new(i, o)
}

/// A family descriptor as a careful client sends it (the generated `Default` fills in
/// `maxVersions = 0` and empty names, which HBase refuses).
pub fn family(name: &str, max_versions: i32, ttl_secs: i32) -> ColumnDescriptor {
    ColumnDescriptor {
        name: Some(format!("{name}:").into_bytes()),
        max_versions: Some(max_versions),
        compression: Some("NONE".into()),
        in_memory: Some(false),
        bloom_filter_type: Some("NONE".into()),
        bloom_filter_vector_size: Some(0),
        bloom_filter_nb_hashes: Some(0),
        block_cache_enabled: Some(false),
        time_to_live: Some(ttl_secs),
    }
}

pub fn create_table(client: &mut Client, table: &str, families: &[&str]) {
    let cds = families.iter().map(|f| family(f, 3, -1)).collect();
    client.create_table(table.into(), cds).unwrap();
}

pub fn put(column: &str, value: impl Into<Vec<u8>>) -> Mutation {
    Mutation {
        is_delete: Some(false),
        column: Some(column.into()),
        value: Some(value.into()),
        write_to_w_a_l: Some(true),
    }
}

pub fn delete(column: &str) -> Mutation {
    Mutation { is_delete: Some(true), column: Some(column.into()), value: None, write_to_w_a_l: Some(true) }
}

pub fn batch(row: impl Into<Vec<u8>>, mutations: Vec<Mutation>) -> BatchMutation {
    BatchMutation { row: Some(row.into()), mutations: Some(mutations) }
}

pub fn no_attrs() -> BTreeMap<Vec<u8>, Vec<u8>> {
    BTreeMap::new()
}

pub fn scan() -> TScan {
    TScan {
        start_row: None,
        stop_row: None,
        timestamp: None,
        columns: None,
        caching: None,
        filter_string: None,
        batch_size: None,
        sort_columns: None,
        reversed: None,
        cache_blocks: None,
    }
}

/// Reads a scanner to its end, `page` rows per call, and closes it.
pub fn drain(client: &mut Client, id: i32, page: i32) -> Vec<TRowResult> {
    let mut out = Vec::new();
    loop {
        let rows = client.scanner_get_list(id, page).unwrap();
        if rows.is_empty() {
            break;
        }
        assert!(rows.len() <= page as usize, "more rows than asked for");
        out.extend(rows);
    }
    client.scanner_close(id).unwrap();
    out
}

pub fn row_keys(rows: &[TRowResult]) -> Vec<String> {
    rows.iter().map(|r| String::from_utf8_lossy(r.row.as_deref().unwrap()).into_owned()).collect()
}

/// The value of `column` in a row result.
pub fn value(row: &TRowResult, column: &str) -> Option<String> {
    row.columns
        .as_ref()?
        .get(column.as_bytes())
        .and_then(|c| c.value.as_deref())
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Which declared exception (or other error) a call failed with, and its message.
pub fn exception(e: &thrift::Error) -> (&'static str, String) {
    match e {
        thrift::Error::User(u) => {
            if let Some(x) = u.downcast_ref::<IOError>() {
                ("IOError", x.message.clone().unwrap_or_default())
            } else if let Some(x) = u.downcast_ref::<IllegalArgument>() {
                ("IllegalArgument", x.message.clone().unwrap_or_default())
            } else if let Some(x) = u.downcast_ref::<AlreadyExists>() {
                ("AlreadyExists", x.message.clone().unwrap_or_default())
            } else {
                ("User", u.to_string())
            }
        }
        thrift::Error::Application(a) => ("Application", a.message.clone()),
        thrift::Error::Transport(t) => ("Transport", t.message.clone()),
        thrift::Error::Protocol(p) => ("Protocol", p.message.clone()),
    }
}

/// Asserts a call failed with the given declared exception whose message contains `needle`.
#[track_caller]
pub fn assert_exception<T: std::fmt::Debug>(r: thrift::Result<T>, kind: &str, needle: &str) {
    match r {
        Ok(v) => panic!("expected {kind} containing {needle:?}, got Ok({v:?})"),
        Err(e) => {
            let (k, message) = exception(&e);
            assert_eq!(k, kind, "wrong exception: {message}");
            assert!(message.contains(needle), "{kind} message {message:?} does not contain {needle:?}");
        }
    }
}
