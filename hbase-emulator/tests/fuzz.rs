//! Generated Thrift calls against the emulator, on every transport × protocol: valid calls
//! of the HBase Thrift1 API with random arguments, the same calls mutated (cut short, bytes
//! flipped, replaced, inserted, lengths corrupted), the wrong protocol, and garbage.
//!
//! Properties, per call:
//! * a valid call is answered — a `REPLY` (which may carry `IOError` / `IllegalArgument`)
//!   or an `EXCEPTION` message naming the method and echoing its sequence id — and its
//!   connection stays usable;
//! * anything else is answered that way or its connection is closed (the client sends the
//!   bytes, half-closes and reads to the end): never a hang (read timeout, 20 s);
//! * nothing panics on the server, and a client on each server, calling throughout, is
//!   always served (so is a fresh connection after the run).
//!
//! Size: `CHATPIPE_FUZZ_CASES` calls in all (default 20,000: about 6 s on two cores); the
//! full run is `CHATPIPE_FUZZ_CASES=100000 cargo test -p chatpipe-hbase-emulator --test fuzz
//! -- --nocapture` (about 30 s). `CHATPIPE_FUZZ_SEED` repeats a run (the seed is printed).
//! The first run found that a `mutateRows` carrying attributes that are not UTF-8 closed its
//! connection (the skip of unread fields read strings as UTF-8; `protocol.rs` now skips them
//! as bytes).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use hbase_thrift::hbase::{BatchMutation, HbaseSyncClient, Mutation, THbaseSyncClient, TScan};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use thrift::protocol::{
    TBinaryInputProtocol, TBinaryOutputProtocol, TCompactInputProtocol, TCompactOutputProtocol, TInputProtocol,
    TMessageType, TOutputProtocol, TType,
};
use thrift::transport::{TBufferedReadTransport, TFramedReadTransport};

/// Calls in all when `CHATPIPE_FUZZ_CASES` is unset: sized for CI; the full run is
/// 100,000.
const DEFAULT_CASES: u64 = 20_000;
/// How long a fuzzed connection may stay silent before the server counts as hung.
const HANG: Duration = Duration::from_secs(20);

static PANICS: AtomicU64 = AtomicU64::new(0);

/// Captures what a generated client writes for one call.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn pick<'a, T>(rng: &mut StdRng, xs: &'a [T]) -> &'a T {
    &xs[rng.gen_range(0..xs.len())]
}

fn bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let n = rng.gen_range(0..=max);
    (0..n).map(|_| rng.gen()).collect()
}

fn table(rng: &mut StdRng) -> Vec<u8> {
    match rng.gen_range(0..10) {
        0 => b"nope".to_vec(),
        1 => bytes(rng, 12),
        _ => b"t".to_vec(),
    }
}

fn row(rng: &mut StdRng) -> Vec<u8> {
    match rng.gen_range(0..10) {
        0 => Vec::new(),
        1 => bytes(rng, 300),
        _ => format!("r{}", rng.gen_range(0..50)).into_bytes(),
    }
}

fn column(rng: &mut StdRng) -> Vec<u8> {
    match rng.gen_range(0..10) {
        0 => b"f".to_vec(),
        1 => b"zz:q".to_vec(),
        2 => bytes(rng, 10),
        3 => b"f:".to_vec(),
        _ => format!("f:q{}", rng.gen_range(0..5)).into_bytes(),
    }
}

fn mutation(rng: &mut StdRng) -> Mutation {
    Mutation {
        is_delete: Some(rng.gen_bool(0.2)),
        column: Some(column(rng)),
        value: if rng.gen_bool(0.9) { Some(bytes(rng, 64)) } else { None },
        write_to_w_a_l: Some(true),
    }
}

fn timestamp(rng: &mut StdRng) -> i64 {
    if rng.gen_bool(0.1) {
        rng.gen()
    } else {
        rng.gen_range(1..2_000_000_000_000)
    }
}

fn attrs(rng: &mut StdRng) -> BTreeMap<Vec<u8>, Vec<u8>> {
    if rng.gen_bool(0.9) {
        BTreeMap::new()
    } else {
        (0..rng.gen_range(1..3)).map(|_| (bytes(rng, 8), bytes(rng, 8))).collect()
    }
}

/// The bytes of one valid call (no framing) in `compact` or binary protocol, made by the
/// generated client itself; scanner ids are small numbers, so some exist.
fn valid_call(rng: &mut StdRng, compact: bool) -> Vec<u8> {
    let out = Capture::default();
    let o: Box<dyn TOutputProtocol> = if compact {
        Box::new(TCompactOutputProtocol::new(out.clone()))
    } else {
        Box::new(TBinaryOutputProtocol::new(out.clone(), true))
    };
    let i: Box<dyn TInputProtocol> = Box::new(TBinaryInputProtocol::new(std::io::empty(), true));
    let mut c = HbaseSyncClient::new(i, o);
    let rows = |rng: &mut StdRng| (0..rng.gen_range(0..4)).map(|_| row(rng)).collect::<Vec<_>>();
    let columns = |rng: &mut StdRng| (0..rng.gen_range(0..3)).map(|_| column(rng)).collect::<Vec<_>>();
    let mutations = |rng: &mut StdRng| (0..rng.gen_range(0..4)).map(|_| mutation(rng)).collect::<Vec<_>>();
    // Each call fails on reading its reply (nothing to read): only the request matters.
    let _ = match rng.gen_range(0..22) {
        0 => c.get_table_names().map(drop),
        1 => c.get_column_descriptors(table(rng)).map(drop),
        2 => c.get_table_regions(table(rng)).map(drop),
        3 => c.get(table(rng), row(rng), column(rng), attrs(rng)).map(drop),
        4 => c.get_ver(table(rng), row(rng), column(rng), rng.gen_range(-2..5), attrs(rng)).map(drop),
        5 => c.get_row(table(rng), row(rng), attrs(rng)).map(drop),
        6 => c.get_row_with_columns(table(rng), row(rng), columns(rng), attrs(rng)).map(drop),
        7 => c.get_rows(table(rng), rows(rng), attrs(rng)).map(drop),
        8 => c.get_rows_with_columns_ts(table(rng), rows(rng), columns(rng), timestamp(rng), attrs(rng)).map(drop),
        9 | 10 => c.mutate_row(table(rng), row(rng), mutations(rng), attrs(rng)).map(drop),
        11 | 12 => {
            let batches = (0..rng.gen_range(0..5))
                .map(|_| BatchMutation { row: Some(row(rng)), mutations: Some(mutations(rng)) })
                .collect();
            c.mutate_rows(table(rng), batches, attrs(rng)).map(drop)
        }
        13 => c.mutate_row_ts(table(rng), row(rng), mutations(rng), timestamp(rng), attrs(rng)).map(drop),
        14 => c.delete_all_row(table(rng), row(rng), attrs(rng)).map(drop),
        15 => c.delete_all(table(rng), row(rng), column(rng), attrs(rng)).map(drop),
        16 => c.atomic_increment(table(rng), row(rng), column(rng), rng.gen_range(-5..5)).map(drop),
        17 => {
            let scan = TScan {
                start_row: Some(row(rng)),
                stop_row: if rng.gen_bool(0.5) { Some(row(rng)) } else { None },
                columns: Some(columns(rng)),
                caching: Some(rng.gen_range(-1..100)),
                filter_string: match rng.gen_range(0..4) {
                    0 => Some(b"PrefixFilter('r1')".to_vec()),
                    1 => Some(bytes(rng, 30)),
                    2 => Some(b"KeyOnlyFilter() OR FirstKeyOnlyFilter() AND (".to_vec()),
                    _ => None,
                },
                reversed: Some(rng.gen_bool(0.3)),
                ..TScan::default()
            };
            c.scanner_open_with_scan(table(rng), scan, attrs(rng)).map(drop)
        }
        18 => c.scanner_get_list(rng.gen_range(-2..20), rng.gen_range(-1..50)).map(drop),
        19 => c.scanner_close(rng.gen_range(-2..20)).map(drop),
        20 => c.get_region_info(row(rng)).map(drop),
        _ => c.check_and_put(table(rng), row(rng), column(rng), bytes(rng, 8), mutation(rng), attrs(rng)).map(drop),
    };
    let bytes = out.0.lock().unwrap().clone();
    bytes
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Valid,
    Truncated,
    Flipped,
    Spliced,
    BadFrameLength,
    WrongProtocol,
    Garbage,
}

/// One case: its kind and the bytes to send (framed when the server is).
fn case(rng: &mut StdRng, framed: bool, compact: bool) -> (Kind, Vec<u8>) {
    let kind = match rng.gen_range(0..100) {
        0..=44 => Kind::Valid,
        45..=59 => Kind::Truncated,
        60..=71 => Kind::Flipped,
        72..=81 => Kind::Spliced,
        82..=87 if framed => Kind::BadFrameLength,
        82..=91 => Kind::WrongProtocol,
        _ => Kind::Garbage,
    };
    let mut call = valid_call(rng, compact ^ (kind == Kind::WrongProtocol));
    match kind {
        Kind::Valid | Kind::WrongProtocol | Kind::BadFrameLength => {}
        Kind::Truncated => call.truncate(rng.gen_range(0..call.len().max(1))),
        Kind::Flipped => {
            for _ in 0..rng.gen_range(1..4) {
                let i = rng.gen_range(0..call.len());
                call[i] = if rng.gen_bool(0.5) { call[i] ^ (1 << rng.gen_range(0..8)) } else { rng.gen() };
            }
        }
        Kind::Spliced => {
            let i = rng.gen_range(0..=call.len());
            if rng.gen_bool(0.5) {
                // a length-like run: huge, negative or zero counts where lengths are read
                let run: [u8; 4] = *pick(rng, &[[0x7f, 0xff, 0xff, 0xff], [0xff; 4], [0; 4], [0x80, 0, 0, 0]]);
                call.splice(i..i, run);
            } else {
                let end = rng.gen_range(i..=call.len());
                let with = bytes(rng, 16);
                call.splice(i..end, with);
            }
        }
        Kind::Garbage => call = bytes(rng, 2000),
    }
    let bytes = if !framed {
        call
    } else if kind == Kind::BadFrameLength {
        let mut v = frame(&call);
        let longer = call.len() as i32 + rng.gen_range(1..100);
        let len: i32 = *pick(rng, &[-1, 0, longer, i32::MAX, 70 << 20]);
        v[..4].copy_from_slice(&len.to_be_bytes());
        v
    } else {
        frame(&call)
    };
    (kind, bytes)
}

fn tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(HANG)).unwrap();
    // closed with a reset: 100,000 connections leave no TIME_WAIT behind
    socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
    s
}

/// Reads one reply message of `method` with `seq`: REPLY or EXCEPTION. Err: what went wrong.
fn read_reply(i: &mut dyn TInputProtocol, method: &str, seq: i32) -> Result<(), String> {
    let m = i.read_message_begin().map_err(|e| format!("reading the reply: {e}"))?;
    if m.name != method || m.sequence_number != seq {
        return Err(format!("reply {m:?} to {method}#{seq}"));
    }
    if !matches!(m.message_type, TMessageType::Reply | TMessageType::Exception) {
        return Err(format!("reply of type {:?}", m.message_type));
    }
    skip(i, TType::Struct, 0).map_err(|e| format!("reading the reply body: {e}"))?;
    i.read_message_end().map_err(|e| e.to_string())
}

/// Skips a value of type `t`: thrift's own `skip` reads strings as UTF-8, and HBase's
/// `Text` is bytes.
fn skip(i: &mut dyn TInputProtocol, t: TType, depth: u32) -> thrift::Result<()> {
    if depth > 64 {
        return Err(thrift::Error::Protocol(thrift::ProtocolError::new(
            thrift::ProtocolErrorKind::DepthLimit,
            "reply nested too deep",
        )));
    }
    match t {
        TType::Bool => i.read_bool().map(drop),
        TType::I08 => i.read_i8().map(drop),
        TType::I16 => i.read_i16().map(drop),
        TType::I32 => i.read_i32().map(drop),
        TType::I64 => i.read_i64().map(drop),
        TType::Double => i.read_double().map(drop),
        TType::String | TType::Utf7 | TType::Utf8 => i.read_bytes().map(drop),
        TType::Struct => {
            i.read_struct_begin()?;
            loop {
                let f = i.read_field_begin()?;
                if f.field_type == TType::Stop {
                    break;
                }
                skip(i, f.field_type, depth + 1)?;
                i.read_field_end()?;
            }
            i.read_struct_end()
        }
        TType::List => {
            let l = i.read_list_begin()?;
            for _ in 0..l.size {
                skip(i, l.element_type, depth + 1)?;
            }
            i.read_list_end()
        }
        TType::Set => {
            let l = i.read_set_begin()?;
            for _ in 0..l.size {
                skip(i, l.element_type, depth + 1)?;
            }
            i.read_set_end()
        }
        TType::Map => {
            let m = i.read_map_begin()?;
            for _ in 0..m.size {
                if let (Some(k), Some(v)) = (m.key_type, m.value_type) {
                    skip(i, k, depth + 1)?;
                    skip(i, v, depth + 1)?;
                }
            }
            i.read_map_end()
        }
        other => Err(thrift::Error::Protocol(thrift::ProtocolError::new(
            thrift::ProtocolErrorKind::InvalidData,
            format!("unexpected type {other:?} in a reply"),
        ))),
    }
}

/// The method name and sequence id of a valid call's bytes (unframed).
fn header(call: &[u8], compact: bool) -> (String, i32) {
    let mut i: Box<dyn TInputProtocol> = if compact {
        Box::new(TCompactInputProtocol::new(call))
    } else {
        Box::new(TBinaryInputProtocol::new(call, true))
    };
    let m = i.read_message_begin().unwrap();
    (m.name, m.sequence_number)
}

/// Sends a broken case on its own connection, half-closes, reads to the end: the server
/// must close it (or answer and close) within [`HANG`].
fn send_broken(addr: SocketAddr, bytes: &[u8]) -> Result<(), String> {
    let mut s = tcp(addr);
    let _ = s.write_all(bytes); // the server may close before reading everything
    let _ = s.shutdown(Shutdown::Write);
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
            Err(e) => return Err(format!("no answer and no close: {e}")),
        }
    }
}

/// One connection carrying valid calls (replies read with the wire's input protocol).
struct Session {
    stream: TcpStream,
    input: Box<dyn TInputProtocol>,
    /// The calls made on it so far (for failure messages).
    calls: Vec<String>,
}

impl Session {
    fn open(addr: SocketAddr, framed: bool, compact: bool) -> Session {
        let stream = tcp(addr);
        let r = stream.try_clone().unwrap();
        let r: Box<dyn Read> =
            if framed { Box::new(TFramedReadTransport::new(r)) } else { Box::new(TBufferedReadTransport::new(r)) };
        let input: Box<dyn TInputProtocol> = if compact {
            Box::new(TCompactInputProtocol::new(r))
        } else {
            Box::new(TBinaryInputProtocol::new(r, true))
        };
        Session { stream, input, calls: Vec::new() }
    }
}

#[derive(Default, Debug)]
struct Tally {
    per_kind: BTreeMap<String, u64>,
    failures: Vec<String>,
}

/// Runs `cases` cases against the server at `addr`; failures are collected, not panicked.
fn fuzz(addr: SocketAddr, framed: bool, compact: bool, cases: u64, seed: u64) -> Tally {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tally = Tally::default();
    let mut session: Option<Session> = None;
    for n in 0..cases {
        let (kind, bytes) = case(&mut rng, framed, compact);
        *tally.per_kind.entry(format!("{kind:?}")).or_default() += 1;
        let result = if kind == Kind::Valid {
            let s = session.get_or_insert_with(|| Session::open(addr, framed, compact));
            let unframed = if framed { &bytes[4..] } else { &bytes[..] };
            let (method, seq) = header(unframed, compact);
            let sent = s.stream.write_all(&bytes).map_err(|e| format!("sending: {e}"));
            let r = sent.and_then(|()| read_reply(s.input.as_mut(), &method, seq));
            let earlier = s.calls.join(", ");
            s.calls.push(format!("{method} {bytes:?}"));
            r.map_err(|e| format!("{method}: {e} (after {earlier} on the connection; {bytes:?})"))
        } else {
            session = None;
            send_broken(addr, &bytes)
        };
        if let Err(e) = result {
            session = None;
            if tally.failures.len() < 20 {
                tally.failures.push(format!("case {n} ({kind:?}, {} bytes, seed {seed}): {e}", bytes.len()));
            }
        }
    }
    tally
}

#[test]
fn generated_thrift_calls_never_crash_hang_or_starve_other_clients() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));
    let cases: u64 = std::env::var("CHATPIPE_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_CASES);
    let seed: u64 = std::env::var("CHATPIPE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    println!("thrift fuzz: {cases} cases, seed {seed}");
    let started = Instant::now();

    let servers: Vec<_> =
        WIRES.iter().map(|&(framed, compact)| (framed, compact, emulator_with(framed, compact))).collect();
    let done = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for (framed, compact, emu) in &servers {
        let (addr, framed, compact) = (emu.local_addr(), *framed, *compact);
        let mut good = connect_with(addr, framed, compact);
        create_table(&mut good, "t", &["f"]);
        good.mutate_row("t".into(), "known".into(), vec![put("f:q", "v")], no_attrs()).unwrap();
        // a well-behaved client calling all along
        let done = Arc::clone(&done);
        threads.push(std::thread::spawn(move || {
            let mut calls = 0u64;
            while !done.load(Ordering::SeqCst) {
                let cells = good.get("t".into(), "known".into(), "f:q".into(), no_attrs());
                let ok = cells.as_ref().is_ok_and(|c| c.len() == 1 && c[0].value.as_deref() == Some(&b"v"[..]));
                if !ok {
                    return Err(format!("the well-behaved client of {framed}/{compact} was not served: {cells:?}"));
                }
                calls += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(calls)
        }));
    }
    let fuzzers: Vec<_> = servers
        .iter()
        .enumerate()
        .map(|(k, (framed, compact, emu))| {
            let (addr, framed, compact) = (emu.local_addr(), *framed, *compact);
            let share = cases / 4 + u64::from((k as u64) < cases % 4);
            let seed = seed.wrapping_add(k as u64);
            std::thread::spawn(move || fuzz(addr, framed, compact, share, seed))
        })
        .collect();
    let tallies: Vec<Tally> = fuzzers.into_iter().map(|t| t.join().unwrap()).collect();
    done.store(true, Ordering::SeqCst);
    let served: Vec<Result<u64, String>> = threads.into_iter().map(|t| t.join().unwrap()).collect();

    let mut per_kind: BTreeMap<String, u64> = BTreeMap::new();
    let mut failures = Vec::new();
    for t in tallies {
        for (k, n) in t.per_kind {
            *per_kind.entry(k).or_default() += n;
        }
        failures.extend(t.failures);
    }
    println!(
        "thrift fuzz: {} cases in {:.1} s over 4 wires: {per_kind:?}; well-behaved calls served: {served:?}; panics: {}",
        per_kind.values().sum::<u64>(),
        started.elapsed().as_secs_f64(),
        PANICS.load(Ordering::SeqCst)
    );
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    for s in served {
        s.unwrap();
    }
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "the server panicked");
    assert_eq!(per_kind.values().sum::<u64>(), cases);
    // Every server still answers a fresh connection.
    for (framed, compact, emu) in &servers {
        let mut c = connect_with(emu.local_addr(), *framed, *compact);
        assert!(c.get_table_names().unwrap().contains(&b"t".to_vec()));
    }
}
