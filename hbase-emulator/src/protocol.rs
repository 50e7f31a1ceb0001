//! The wire side of a connection: buffered or framed transport, binary or compact protocol,
//! with the bounds the `thrift` crate lacks.
//!
//! `thrift` 0.17 allocates whatever a length prefix asks for (`vec![0; len]` for strings,
//! `Vec::with_capacity(size)` for lists, `resize(frame_size)` for frames), so a few garbage
//! bytes can abort the process with an allocation failure. [`GuardedInput`] wraps the
//! crate's input protocols and checks every length before anything is allocated: strings
//! and binaries up to `max_message_bytes`, containers up to [`MAX_CONTAINER_ELEMENTS`],
//! frames (read by our own [`FramedReader`]) up to `max_message_bytes`. It also reads the
//! arguments of an unknown method off the wire (so the reply stays in sync) and records
//! whether any read failed, so the server closes a connection whose stream is out of step.
//!
//! The generated argument readers refuse a call that leaves out an argument, where HBase's
//! Java server takes it as `null` (happybase leaves out `columns=None`, for one): the guard
//! supplies each missing top-level argument as an empty value (empty string, list, map,
//! struct; zero), which HBase's handler treats as it treats `null`.

use std::cell::RefCell;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::TcpStream;
use std::rc::Rc;

use thrift::protocol::{
    TBinaryInputProtocol, TBinaryOutputProtocol, TCompactInputProtocol, TCompactOutputProtocol, TFieldIdentifier,
    TInputProtocol, TListIdentifier, TMapIdentifier, TMessageIdentifier, TMessageType, TOutputProtocol, TSetIdentifier,
    TStructIdentifier, TType,
};
use thrift::{ProtocolError, ProtocolErrorKind};

/// Most elements of one list, set or map in a request.
pub const MAX_CONTAINER_ELEMENTS: i32 = 1_000_000;

/// The argument fields of every method of the Thrift1 `Hbase` service (from the generated
/// `Hbase*Args` structs, which insist on all of them).
const METHOD_ARGS: &[(&str, &[(i16, TType)])] = &[
    ("enableTable", &[(1, TType::String)]),
    ("disableTable", &[(1, TType::String)]),
    ("isTableEnabled", &[(1, TType::String)]),
    ("compact", &[(1, TType::String)]),
    ("majorCompact", &[(1, TType::String)]),
    ("getTableNames", &[]),
    ("getTableNamesWithIsTableEnabled", &[]),
    ("getColumnDescriptors", &[(1, TType::String)]),
    ("getTableRegions", &[(1, TType::String)]),
    ("createTable", &[(1, TType::String), (2, TType::List)]),
    ("deleteTable", &[(1, TType::String)]),
    ("get", &[(1, TType::String), (2, TType::String), (3, TType::String), (4, TType::Map)]),
    ("getVer", &[(1, TType::String), (2, TType::String), (3, TType::String), (4, TType::I32), (5, TType::Map)]),
    (
        "getVerTs",
        &[
            (1, TType::String),
            (2, TType::String),
            (3, TType::String),
            (4, TType::I64),
            (5, TType::I32),
            (6, TType::Map),
        ],
    ),
    ("getRow", &[(1, TType::String), (2, TType::String), (3, TType::Map)]),
    ("getRowWithColumns", &[(1, TType::String), (2, TType::String), (3, TType::List), (4, TType::Map)]),
    ("getRowTs", &[(1, TType::String), (2, TType::String), (3, TType::I64), (4, TType::Map)]),
    (
        "getRowWithColumnsTs",
        &[(1, TType::String), (2, TType::String), (3, TType::List), (4, TType::I64), (5, TType::Map)],
    ),
    ("getRows", &[(1, TType::String), (2, TType::List), (3, TType::Map)]),
    ("getRowsWithColumns", &[(1, TType::String), (2, TType::List), (3, TType::List), (4, TType::Map)]),
    ("getRowsTs", &[(1, TType::String), (2, TType::List), (3, TType::I64), (4, TType::Map)]),
    (
        "getRowsWithColumnsTs",
        &[(1, TType::String), (2, TType::List), (3, TType::List), (4, TType::I64), (5, TType::Map)],
    ),
    ("mutateRow", &[(1, TType::String), (2, TType::String), (3, TType::List), (4, TType::Map)]),
    ("mutateRowTs", &[(1, TType::String), (2, TType::String), (3, TType::List), (4, TType::I64), (5, TType::Map)]),
    ("mutateRows", &[(1, TType::String), (2, TType::List), (3, TType::Map)]),
    ("mutateRowsTs", &[(1, TType::String), (2, TType::List), (3, TType::I64), (4, TType::Map)]),
    ("atomicIncrement", &[(1, TType::String), (2, TType::String), (3, TType::String), (4, TType::I64)]),
    ("deleteAll", &[(1, TType::String), (2, TType::String), (3, TType::String), (4, TType::Map)]),
    ("deleteAllTs", &[(1, TType::String), (2, TType::String), (3, TType::String), (4, TType::I64), (5, TType::Map)]),
    ("deleteAllRow", &[(1, TType::String), (2, TType::String), (3, TType::Map)]),
    ("increment", &[(1, TType::Struct)]),
    ("incrementRows", &[(1, TType::List)]),
    ("deleteAllRowTs", &[(1, TType::String), (2, TType::String), (3, TType::I64), (4, TType::Map)]),
    ("scannerOpenWithScan", &[(1, TType::String), (2, TType::Struct), (3, TType::Map)]),
    ("scannerOpen", &[(1, TType::String), (2, TType::String), (3, TType::List), (4, TType::Map)]),
    (
        "scannerOpenWithStop",
        &[(1, TType::String), (2, TType::String), (3, TType::String), (4, TType::List), (5, TType::Map)],
    ),
    ("scannerOpenWithPrefix", &[(1, TType::String), (2, TType::String), (3, TType::List), (4, TType::Map)]),
    ("scannerOpenTs", &[(1, TType::String), (2, TType::String), (3, TType::List), (4, TType::I64), (5, TType::Map)]),
    (
        "scannerOpenWithStopTs",
        &[
            (1, TType::String),
            (2, TType::String),
            (3, TType::String),
            (4, TType::List),
            (5, TType::I64),
            (6, TType::Map),
        ],
    ),
    ("scannerGet", &[(1, TType::I32)]),
    ("scannerGetList", &[(1, TType::I32), (2, TType::I32)]),
    ("scannerClose", &[(1, TType::I32)]),
    ("getRegionInfo", &[(1, TType::String)]),
    ("append", &[(1, TType::Struct)]),
    (
        "checkAndPut",
        &[
            (1, TType::String),
            (2, TType::String),
            (3, TType::String),
            (5, TType::String),
            (6, TType::Struct),
            (7, TType::Map),
        ],
    ),
    ("getThriftServerType", &[]),
    ("getClusterId", &[]),
    ("grant", &[(1, TType::Struct)]),
    ("revoke", &[(1, TType::Struct)]),
];

/// Bytes of an oversize frame read to learn which call it carries (its message header), so
/// that the call can be answered with an `IOError` before the connection is closed.
const OVERSIZE_HEADER_BYTES: usize = 1024;

/// Reads whole frames of the framed transport, refusing sizes outside `0..=max`.
///
/// A frame above `max` is not read: only its first [`OVERSIZE_HEADER_BYTES`] are passed on
/// (enough for the message header) and the shared flag is set, after which every read fails.
/// [`GuardedInput`] refuses to finish reading the call's arguments while the flag is set, so
/// the call is never executed; the server answers it with an `IOError` and closes.
pub struct FramedReader<R> {
    inner: R,
    buf: Vec<u8>,
    pos: usize,
    max: usize,
    oversize: Rc<RefCell<Option<String>>>,
}

impl<R: Read> FramedReader<R> {
    pub fn new(inner: R, max: usize) -> Self {
        FramedReader { inner, buf: Vec::new(), pos: 0, max, oversize: Rc::default() }
    }
}

impl<R: Read> Read for FramedReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        while self.pos == self.buf.len() {
            if let Some(why) = self.oversize.borrow().as_ref() {
                return Err(io::Error::new(io::ErrorKind::InvalidData, why.clone()));
            }
            let mut size = [0u8; 4];
            self.inner.read_exact(&mut size)?;
            let size = i32::from_be_bytes(size);
            let size = usize::try_from(size)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("negative frame size {size}")))?;
            let take = if size > self.max {
                *self.oversize.borrow_mut() =
                    Some(format!("frame of {size} bytes exceeds the limit of {} bytes", self.max));
                size.min(OVERSIZE_HEADER_BYTES)
            } else {
                size
            };
            self.buf.clear();
            self.buf.resize(take, 0);
            self.inner.read_exact(&mut self.buf)?;
            self.pos = 0;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Buffers one message and writes it as a frame on flush.
pub struct FramedWriter<W> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: Write> FramedWriter<W> {
    pub fn new(inner: W) -> Self {
        FramedWriter { inner, buf: Vec::with_capacity(4096) }
    }
}

impl<W: Write> Write for FramedWriter<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return self.inner.flush();
        }
        let size = i32::try_from(self.buf.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "reply too large for a frame"))?;
        self.inner.write_all(&size.to_be_bytes())?;
        self.inner.write_all(&self.buf)?;
        self.buf.clear();
        if self.buf.capacity() > 1 << 20 {
            self.buf.shrink_to(4096);
        }
        self.inner.flush()
    }
}

/// A reader shared by the wrapped protocol and [`GuardedInput`], so both consume one stream.
#[derive(Clone)]
struct SharedRead(Rc<RefCell<Box<dyn Read>>>);

impl Read for SharedRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.borrow_mut().read(buf)
    }
}

fn protocol_error(kind: ProtocolErrorKind, message: String) -> thrift::Error {
    thrift::Error::Protocol(ProtocolError { kind, message })
}

/// An input protocol that bounds every length it reads. See the module doc.
pub struct GuardedInput {
    inner: Box<dyn TInputProtocol>,
    raw: SharedRead,
    compact: bool,
    max_bytes: usize,
    failed: bool,
    args: ArgsState,
    /// The name and sequence number of the call being read.
    message: Option<(String, i32)>,
    /// Why the call being read is refused (a length over the limits); shared with the
    /// [`FramedReader`], which reports oversize frames here.
    refused: Rc<RefCell<Option<String>>>,
    /// A message header read already, returned by the next `read_message_begin`.
    replay: Option<TMessageIdentifier>,
}

/// Bookkeeping to supply missing top-level arguments (see the module doc).
#[derive(Default)]
struct ArgsState {
    /// The argument fields of the method being read.
    schema: &'static [(i16, TType)],
    /// Nesting of real structs (1 = the arguments struct).
    depth: u32,
    /// Argument field ids present on the wire.
    seen: u64,
    /// Missing fields still to supply, last first.
    pending: Vec<(i16, TType)>,
    /// The real end of the arguments was read; a `Stop` is owed after the supplied fields.
    stop_owed: bool,
    /// The type of the supplied value about to be read.
    value: Option<TType>,
    /// Inside a supplied (empty) struct.
    synthetic_structs: u32,
    /// Supplied (empty) containers whose end is still to be read.
    synthetic_containers: u32,
    /// The current field is a supplied one.
    synthetic_field: bool,
}

fn stop_field() -> TFieldIdentifier {
    TFieldIdentifier::new::<Option<String>, String, Option<i16>>(None, TType::Stop, None)
}

impl GuardedInput {
    /// Whether any read failed (the stream can no longer be trusted).
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// The call being read when a length over the limits was refused: its name, sequence
    /// number and the reason, for the server to answer it with an `IOError`.
    pub fn refused_call(&self) -> Option<(String, i32, String)> {
        let why = self.refused.borrow().clone()?;
        let (name, seq) = self.message.clone()?;
        Some((name, seq, why))
    }

    /// Has the next `read_message_begin` return `ident` again (read by the server to pick
    /// a decoder, then handed to the generated processor).
    pub fn replay(&mut self, ident: TMessageIdentifier) {
        self.replay = Some(ident);
    }

    /// Reads a string or binary, appending it to `out` (no allocation of its own), and
    /// returns where it is in `out`; bounded as every length here.
    pub fn read_bytes_into(&mut self, out: &mut Vec<u8>) -> thrift::Result<std::ops::Range<usize>> {
        let start = out.len();
        if self.synthetic().is_some() {
            return Ok(start..start);
        }
        let len = if self.compact { self.read_varint_u32().map(i64::from) } else { self.read_raw_i32().map(i64::from) };
        let len = self.track(len)?;
        let Some(len) = usize::try_from(len).ok().filter(|l| *l <= self.max_bytes) else {
            return Err(self.refuse(format!("string or binary of {len} bytes outside 0..={}", self.max_bytes)));
        };
        out.resize(start + len, 0);
        let read = self.raw.read_exact(&mut out[start..]).map_err(thrift::Error::from);
        self.track(read)?;
        Ok(start..out.len())
    }

    /// Whether the connection speaks the compact protocol (else binary).
    pub fn is_compact(&self) -> bool {
        self.compact
    }

    /// Binary protocol only, inside a nested struct (where no argument is ever supplied):
    /// a field header read straight off the stream, `None` at the struct's end. The binary
    /// protocol keeps no state between reads, so this mixes with the other reads.
    pub fn binary_field(&mut self) -> thrift::Result<Option<(i16, TType)>> {
        let kind = self.read_raw_byte();
        let kind = self.track(kind)?;
        let kind = match kind {
            0 => return Ok(None),
            2 => TType::Bool,
            3 => TType::I08,
            4 => TType::Double,
            6 => TType::I16,
            8 => TType::I32,
            10 => TType::I64,
            11 => TType::String,
            12 => TType::Struct,
            13 => TType::Map,
            14 => TType::Set,
            15 => TType::List,
            other => {
                self.failed = true;
                return Err(protocol_error(ProtocolErrorKind::InvalidData, format!("unknown field type {other}")));
            }
        };
        let mut id = [0u8; 2];
        let read = self.raw.read_exact(&mut id).map_err(thrift::Error::from);
        self.track(read)?;
        Ok(Some((i16::from_be_bytes(id), kind)))
    }

    /// Binary protocol only: a bool value read straight off the stream.
    pub fn binary_bool(&mut self) -> thrift::Result<bool> {
        let b = self.read_raw_byte();
        self.track(b).map(|b| b != 0)
    }

    fn refuse(&mut self, why: String) -> thrift::Error {
        self.failed = true;
        *self.refused.borrow_mut() = Some(why.clone());
        protocol_error(ProtocolErrorKind::SizeLimit, why)
    }

    fn track<T>(&mut self, r: thrift::Result<T>) -> thrift::Result<T> {
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    fn read_raw_byte(&mut self) -> thrift::Result<u8> {
        let mut b = [0u8; 1];
        self.raw.read_exact(&mut b)?;
        Ok(b[0])
    }

    fn read_raw_i32(&mut self) -> thrift::Result<i32> {
        let mut b = [0u8; 4];
        self.raw.read_exact(&mut b)?;
        Ok(i32::from_be_bytes(b))
    }

    fn read_varint_u32(&mut self) -> thrift::Result<u32> {
        let mut value: u32 = 0;
        for i in 0..5 {
            let b = self.read_raw_byte()?;
            value |= u32::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(protocol_error(ProtocolErrorKind::InvalidData, "varint longer than 5 bytes".into()))
    }

    fn read_sized(&mut self, len: i64) -> thrift::Result<Vec<u8>> {
        let Some(len) = usize::try_from(len).ok().filter(|l| *l <= self.max_bytes) else {
            return Err(self.refuse(format!("string or binary of {len} bytes outside 0..={}", self.max_bytes)));
        };
        let mut buf = vec![0u8; len];
        self.raw.read_exact(&mut buf)?;
        Ok(buf)
    }

    fn read_bytes_unchecked_track(&mut self) -> thrift::Result<Vec<u8>> {
        let len = if self.compact { i64::from(self.read_varint_u32()?) } else { i64::from(self.read_raw_i32()?) };
        self.read_sized(len)
    }

    fn read_message_begin_untracked(&mut self) -> thrift::Result<TMessageIdentifier> {
        self.message = None;
        let ident = if self.compact {
            let id = self.read_raw_byte()?;
            if id != 0x82 {
                return Err(protocol_error(
                    ProtocolErrorKind::BadVersion,
                    format!("invalid compact protocol header {id:#x}"),
                ));
            }
            let type_and_version = self.read_raw_byte()?;
            if type_and_version & 0x1F != 1 {
                return Err(protocol_error(
                    ProtocolErrorKind::BadVersion,
                    format!("bad compact protocol version {}", type_and_version & 0x1F),
                ));
            }
            let message_type = TMessageType::try_from(type_and_version >> 5)?;
            let sequence = self.read_varint_u32()? as i32;
            let name = String::from_utf8(self.read_bytes_unchecked_track()?)?;
            TMessageIdentifier::new(name, message_type, sequence)
        } else {
            let first = self.read_raw_i32()?;
            if first < 0 {
                let [b0, b1, _, t] = first.to_be_bytes();
                if [b0, b1] != [0x80, 0x01] {
                    return Err(protocol_error(
                        ProtocolErrorKind::BadVersion,
                        format!("bad binary protocol version {first:#x}"),
                    ));
                }
                let message_type = TMessageType::try_from(t)?;
                let name = String::from_utf8(self.read_bytes_unchecked_track()?)?;
                let sequence = self.read_raw_i32()?;
                TMessageIdentifier::new(name, message_type, sequence)
            } else {
                // Old, non-strict clients: the name's length comes first.
                let name = String::from_utf8(self.read_sized(i64::from(first))?)?;
                let message_type = TMessageType::try_from(self.read_raw_byte()?)?;
                let sequence = self.read_raw_i32()?;
                TMessageIdentifier::new(name, message_type, sequence)
            }
        };
        self.args = ArgsState::default();
        self.message = Some((ident.name.clone(), ident.sequence_number));
        match METHOD_ARGS.iter().find(|(name, _)| *name == ident.name) {
            Some((_, schema)) => self.args.schema = schema,
            None => {
                // The processor answers "unknown method" without reading the arguments; read
                // them here so that the next request starts where it should.
                self.skip(TType::Struct)?;
                self.inner.read_message_end()?;
            }
        }
        Ok(ident)
    }

    /// Takes the supplied value about to be read, if any.
    fn synthetic(&mut self) -> Option<TType> {
        self.args.value.take()
    }

    fn field_begin(&mut self) -> thrift::Result<TFieldIdentifier> {
        let a = &mut self.args;
        if a.synthetic_structs > 0 {
            return Ok(stop_field());
        }
        if a.depth == 1 && a.stop_owed {
            return Ok(match a.pending.pop() {
                Some((id, ty)) => {
                    a.value = Some(ty);
                    a.synthetic_field = true;
                    TFieldIdentifier::new::<Option<String>, String, i16>(None, ty, id)
                }
                None => {
                    a.stop_owed = false;
                    stop_field()
                }
            });
        }
        let field = self.inner.read_field_begin()?;
        let a = &mut self.args;
        if a.depth == 1 {
            match field.id {
                _ if field.field_type == TType::Stop => {
                    a.pending = a
                        .schema
                        .iter()
                        .rev()
                        .filter(|(id, _)| (0..64).contains(id) && a.seen & (1u64 << id) == 0)
                        .copied()
                        .collect();
                    if !a.pending.is_empty() {
                        a.stop_owed = true;
                        return self.field_begin();
                    }
                }
                Some(id) if (0..64).contains(&id) => a.seen |= 1u64 << id,
                _ => {}
            }
        }
        Ok(field)
    }

    fn check_size(&mut self, size: i32, what: &str) -> thrift::Result<()> {
        if (0..=MAX_CONTAINER_ELEMENTS).contains(&size) {
            Ok(())
        } else {
            Err(self.refuse(format!("{what} of {size} elements outside 0..={MAX_CONTAINER_ELEMENTS}")))
        }
    }
}

impl TInputProtocol for GuardedInput {
    /// thrift's own skip, except that strings are skipped as bytes: HBase's `Text` is
    /// binary, and the default reads a skipped string as UTF-8, so a valid call whose
    /// skipped field (a `mutateRows` attribute, an unknown method's argument) holds other
    /// bytes failed and closed its connection. A map that claims entries without naming
    /// their types is an error here, not the default's panic.
    fn skip_till_depth(&mut self, field_type: TType, depth: i8) -> thrift::Result<()> {
        if depth == 0 {
            return Err(protocol_error(ProtocolErrorKind::DepthLimit, format!("cannot parse past {field_type:?}")));
        }
        match field_type {
            TType::Bool => self.read_bool().map(drop),
            TType::I08 => self.read_i8().map(drop),
            TType::I16 => self.read_i16().map(drop),
            TType::I32 => self.read_i32().map(drop),
            TType::I64 => self.read_i64().map(drop),
            TType::Double => self.read_double().map(drop),
            TType::String => self.read_bytes().map(drop),
            TType::Struct => {
                self.read_struct_begin()?;
                loop {
                    let field = self.read_field_begin()?;
                    if field.field_type == TType::Stop {
                        break;
                    }
                    self.skip_till_depth(field.field_type, depth - 1)?;
                }
                self.read_struct_end()
            }
            TType::List => {
                let list = self.read_list_begin()?;
                for _ in 0..list.size {
                    self.skip_till_depth(list.element_type, depth - 1)?;
                }
                self.read_list_end()
            }
            TType::Set => {
                let set = self.read_set_begin()?;
                for _ in 0..set.size {
                    self.skip_till_depth(set.element_type, depth - 1)?;
                }
                self.read_set_end()
            }
            TType::Map => {
                let map = self.read_map_begin()?;
                if map.size > 0 {
                    let (Some(k), Some(v)) = (map.key_type, map.value_type) else {
                        return Err(protocol_error(ProtocolErrorKind::InvalidData, "map entries without types".into()));
                    };
                    for _ in 0..map.size {
                        self.skip_till_depth(k, depth - 1)?;
                        self.skip_till_depth(v, depth - 1)?;
                    }
                }
                self.read_map_end()
            }
            other => Err(protocol_error(ProtocolErrorKind::Unknown, format!("cannot skip field type {other:?}"))),
        }
    }

    fn read_message_begin(&mut self) -> thrift::Result<TMessageIdentifier> {
        if let Some(ident) = self.replay.take() {
            return Ok(ident);
        }
        let r = self.read_message_begin_untracked();
        self.track(r)
    }
    fn read_message_end(&mut self) -> thrift::Result<()> {
        let r = self.inner.read_message_end();
        self.track(r)
    }
    fn read_struct_begin(&mut self) -> thrift::Result<Option<TStructIdentifier>> {
        if self.synthetic().is_some() || self.args.synthetic_structs > 0 {
            self.args.synthetic_structs += 1;
            return Ok(None);
        }
        let r = self.inner.read_struct_begin();
        self.args.depth += 1;
        self.track(r)
    }
    fn read_struct_end(&mut self) -> thrift::Result<()> {
        if self.args.synthetic_structs > 0 {
            self.args.synthetic_structs -= 1;
            return Ok(());
        }
        self.args.depth = self.args.depth.saturating_sub(1);
        if self.args.depth == 0 {
            // The end of a call's arguments: a call in an oversize frame is never executed.
            if let Some(why) = self.refused.borrow().clone() {
                self.failed = true;
                return Err(protocol_error(ProtocolErrorKind::SizeLimit, why));
            }
        }
        let r = self.inner.read_struct_end();
        self.track(r)
    }
    fn read_field_begin(&mut self) -> thrift::Result<TFieldIdentifier> {
        let r = self.field_begin();
        self.track(r)
    }
    fn read_field_end(&mut self) -> thrift::Result<()> {
        if self.args.synthetic_structs == 0 && std::mem::take(&mut self.args.synthetic_field) {
            return Ok(());
        }
        if self.args.synthetic_structs > 0 {
            return Ok(());
        }
        let r = self.inner.read_field_end();
        self.track(r)
    }
    fn read_bool(&mut self) -> thrift::Result<bool> {
        if self.synthetic().is_some() {
            return Ok(false);
        }
        let r = self.inner.read_bool();
        self.track(r)
    }
    fn read_bytes(&mut self) -> thrift::Result<Vec<u8>> {
        if self.synthetic().is_some() {
            return Ok(Vec::new());
        }
        let r = self.read_bytes_unchecked_track();
        self.track(r)
    }
    fn read_i8(&mut self) -> thrift::Result<i8> {
        if self.synthetic().is_some() {
            return Ok(0);
        }
        let r = self.inner.read_i8();
        self.track(r)
    }
    fn read_i16(&mut self) -> thrift::Result<i16> {
        if self.synthetic().is_some() {
            return Ok(0);
        }
        let r = self.inner.read_i16();
        self.track(r)
    }
    fn read_i32(&mut self) -> thrift::Result<i32> {
        if self.synthetic().is_some() {
            return Ok(0);
        }
        let r = self.inner.read_i32();
        self.track(r)
    }
    fn read_i64(&mut self) -> thrift::Result<i64> {
        if self.synthetic().is_some() {
            return Ok(0);
        }
        let r = self.inner.read_i64();
        self.track(r)
    }
    fn read_double(&mut self) -> thrift::Result<f64> {
        if self.synthetic().is_some() {
            return Ok(0.0);
        }
        let r = self.inner.read_double();
        self.track(r)
    }
    fn read_string(&mut self) -> thrift::Result<String> {
        if self.synthetic().is_some() {
            return Ok(String::new());
        }
        let r = self.read_bytes_unchecked_track().and_then(|b| String::from_utf8(b).map_err(thrift::Error::from));
        self.track(r)
    }
    fn read_list_begin(&mut self) -> thrift::Result<TListIdentifier> {
        if self.synthetic().is_some() {
            self.args.synthetic_containers += 1;
            return Ok(TListIdentifier::new(TType::String, 0));
        }
        let r = self.inner.read_list_begin();
        let ident = self.track(r)?;
        self.check_size(ident.size, "list")?;
        Ok(ident)
    }
    fn read_list_end(&mut self) -> thrift::Result<()> {
        if self.args.synthetic_containers > 0 {
            self.args.synthetic_containers -= 1;
            return Ok(());
        }
        let r = self.inner.read_list_end();
        self.track(r)
    }
    fn read_set_begin(&mut self) -> thrift::Result<TSetIdentifier> {
        if self.synthetic().is_some() {
            self.args.synthetic_containers += 1;
            return Ok(TSetIdentifier::new(TType::String, 0));
        }
        let r = self.inner.read_set_begin();
        let ident = self.track(r)?;
        self.check_size(ident.size, "set")?;
        Ok(ident)
    }
    fn read_set_end(&mut self) -> thrift::Result<()> {
        if self.args.synthetic_containers > 0 {
            self.args.synthetic_containers -= 1;
            return Ok(());
        }
        let r = self.inner.read_set_end();
        self.track(r)
    }
    fn read_map_begin(&mut self) -> thrift::Result<TMapIdentifier> {
        if self.synthetic().is_some() {
            self.args.synthetic_containers += 1;
            return Ok(TMapIdentifier::new(TType::String, TType::String, 0));
        }
        let r = self.inner.read_map_begin();
        let ident = self.track(r)?;
        self.check_size(ident.size, "map")?;
        Ok(ident)
    }
    fn read_map_end(&mut self) -> thrift::Result<()> {
        if self.args.synthetic_containers > 0 {
            self.args.synthetic_containers -= 1;
            return Ok(());
        }
        let r = self.inner.read_map_end();
        self.track(r)
    }
    fn read_byte(&mut self) -> thrift::Result<u8> {
        if self.synthetic().is_some() {
            return Ok(0);
        }
        let r = self.inner.read_byte();
        self.track(r)
    }
}

#[cfg(test)]
impl GuardedInput {
    /// An input over bytes in memory (unit tests).
    pub(crate) fn over(bytes: Vec<u8>, compact: bool, max_bytes: usize) -> GuardedInput {
        let raw = SharedRead(Rc::new(RefCell::new(Box::new(io::Cursor::new(bytes)))));
        let inner: Box<dyn TInputProtocol> = if compact {
            Box::new(TCompactInputProtocol::new(raw.clone()))
        } else {
            Box::new(TBinaryInputProtocol::new(raw.clone(), true))
        };
        GuardedInput {
            inner,
            raw,
            compact,
            max_bytes,
            failed: false,
            args: ArgsState::default(),
            message: None,
            refused: Rc::default(),
            replay: None,
        }
    }
}

/// The output side of a connection. While the call being read is refused (see
/// [`GuardedInput::refused_call`]) it drops what the processor writes — the
/// `TApplicationException` the `thrift` crate answers a read error with — so that the server
/// can answer the call with the `IOError` HBase's IDL declares instead, through
/// [`GuardedOutput::unmuted`].
pub struct GuardedOutput {
    inner: Box<dyn TOutputProtocol>,
    refused: Rc<RefCell<Option<String>>>,
}

impl GuardedOutput {
    fn muted(&self) -> bool {
        self.refused.borrow().is_some()
    }

    /// The underlying protocol, writing even while a call is refused.
    pub fn unmuted(&mut self) -> &mut dyn TOutputProtocol {
        self.inner.as_mut()
    }
}

impl TOutputProtocol for GuardedOutput {
    fn write_message_begin(&mut self, identifier: &TMessageIdentifier) -> thrift::Result<()> {
        if self.muted() {
            return Ok(());
        }
        self.inner.write_message_begin(identifier)
    }
    fn write_message_end(&mut self) -> thrift::Result<()> {
        if self.muted() {
            return Ok(());
        }
        self.inner.write_message_end()
    }
    fn write_struct_begin(&mut self, identifier: &TStructIdentifier) -> thrift::Result<()> {
        if self.muted() {
            return Ok(());
        }
        self.inner.write_struct_begin(identifier)
    }
    fn write_struct_end(&mut self) -> thrift::Result<()> {
        if self.muted() {
            return Ok(());
        }
        self.inner.write_struct_end()
    }
    fn write_field_begin(&mut self, identifier: &TFieldIdentifier) -> thrift::Result<()> {
        if self.muted() {
            return Ok(());
        }
        self.inner.write_field_begin(identifier)
    }
    fn write_field_end(&mut self) -> thrift::Result<()> {
        if self.muted() {
            return Ok(());
        }
        self.inner.write_field_end()
    }
    fn write_field_stop(&mut self) -> thrift::Result<()> {
        if self.muted() {
            return Ok(());
        }
        self.inner.write_field_stop()
    }
    fn write_bool(&mut self, b: bool) -> thrift::Result<()> {
        if self.muted() {
            return Ok(());
        }
        self.inner.write_bool(b)
    }
    fn write_bytes(&mut self, b: &[u8]) -> thrift::Result<()> {
        if self.muted() {
            return Ok(());
        }
        self.inner.write_bytes(b)
    }
    fn write_i8(&mut self, i: i8) -> thrift::Result<()> {
        if self.muted() {
            return Ok(());
        }
        self.inner.write_i8(i)
    }
    fn write_i16(&mut self, i: i16) -> thrift::Result<()> {
        if self.muted() {
            return Ok(());
        }
        self.inner.write_i16(i)
    }
    fn write_i32(&mut self, i: i32) -> thrift::Result<()> {
        if self.muted() {
            return Ok(());
        }
        self.inner.write_i32(i)
    }
    fn write_i64(&mut self, i: i64) -> thrift::Result<()> {
        if self.muted() {
            return Ok(());
        }
        self.inner.write_i64(i)
    }
    fn write_double(&mut self, d: f64) -> thrift::Result<()> {
        if self.muted() {
            return Ok(());
        }
        self.inner.write_double(d)
    }
    fn write_string(&mut self, s: &str) -> thrift::Result<()> {
        if self.muted() {
            return Ok(());
        }
        self.inner.write_string(s)
    }
    fn write_list_begin(&mut self, identifier: &TListIdentifier) -> thrift::Result<()> {
        if self.muted() {
            return Ok(());
        }
        self.inner.write_list_begin(identifier)
    }
    fn write_list_end(&mut self) -> thrift::Result<()> {
        if self.muted() {
            return Ok(());
        }
        self.inner.write_list_end()
    }
    fn write_set_begin(&mut self, identifier: &TSetIdentifier) -> thrift::Result<()> {
        if self.muted() {
            return Ok(());
        }
        self.inner.write_set_begin(identifier)
    }
    fn write_set_end(&mut self) -> thrift::Result<()> {
        if self.muted() {
            return Ok(());
        }
        self.inner.write_set_end()
    }
    fn write_map_begin(&mut self, identifier: &TMapIdentifier) -> thrift::Result<()> {
        if self.muted() {
            return Ok(());
        }
        self.inner.write_map_begin(identifier)
    }
    fn write_map_end(&mut self) -> thrift::Result<()> {
        if self.muted() {
            return Ok(());
        }
        self.inner.write_map_end()
    }
    fn flush(&mut self) -> thrift::Result<()> {
        if self.muted() {
            return Ok(());
        }
        self.inner.flush()
    }
    fn write_byte(&mut self, b: u8) -> thrift::Result<()> {
        if self.muted() {
            return Ok(());
        }
        self.inner.write_byte(b)
    }
}

/// How a connection is spoken.
#[derive(Debug, Clone, Copy)]
pub struct WireFormat {
    pub framed: bool,
    pub compact: bool,
    pub max_message_bytes: usize,
    /// Close the connection after this long without a byte from the client.
    pub idle_timeout: Option<std::time::Duration>,
}

/// Builds the input and output protocols of one connection.
pub fn protocols(stream: TcpStream, wire: WireFormat) -> io::Result<(GuardedInput, GuardedOutput)> {
    let write_half = stream.try_clone()?;
    let refused: Rc<RefCell<Option<String>>> = Rc::default();
    let reader: Box<dyn Read> = if wire.framed {
        let mut framed = FramedReader::new(BufReader::with_capacity(64 * 1024, stream), wire.max_message_bytes);
        framed.oversize = Rc::clone(&refused);
        Box::new(framed)
    } else {
        Box::new(BufReader::with_capacity(64 * 1024, stream))
    };
    let raw = SharedRead(Rc::new(RefCell::new(reader)));
    let inner: Box<dyn TInputProtocol> = if wire.compact {
        Box::new(TCompactInputProtocol::new(raw.clone()))
    } else {
        Box::new(TBinaryInputProtocol::new(raw.clone(), true))
    };
    let input = GuardedInput {
        inner,
        raw,
        compact: wire.compact,
        max_bytes: wire.max_message_bytes,
        failed: false,
        args: ArgsState::default(),
        message: None,
        refused: Rc::clone(&refused),
        replay: None,
    };
    let writer: Box<dyn Write> = if wire.framed {
        Box::new(FramedWriter::new(BufWriter::with_capacity(64 * 1024, write_half)))
    } else {
        Box::new(BufWriter::with_capacity(64 * 1024, write_half))
    };
    let inner: Box<dyn TOutputProtocol> = if wire.compact {
        Box::new(TCompactOutputProtocol::new(writer))
    } else {
        Box::new(TBinaryOutputProtocol::new(writer, true))
    };
    Ok((input, GuardedOutput { inner, refused }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guarded(bytes: Vec<u8>, compact: bool) -> GuardedInput {
        GuardedInput::over(bytes, compact, 1024)
    }

    #[test]
    fn huge_or_negative_lengths_are_refused_before_allocating() {
        let mut p = guarded(vec![0x7F, 0xFF, 0xFF, 0xFF], false);
        assert!(p.read_bytes().is_err());
        assert!(p.failed());
        let mut p = guarded(vec![0xFF, 0xFF, 0xFF, 0xFF], false);
        assert!(p.read_bytes().is_err());
        // list header: element type string (11), size 2^31-1
        let mut p = guarded(vec![11, 0x7F, 0xFF, 0xFF, 0xFF], false);
        assert!(p.read_list_begin().is_err());
        let mut p = guarded(vec![11, 0x80, 0, 0, 0], false);
        assert!(p.read_list_begin().is_err());
        // a non-strict message whose name claims 2 GiB
        let mut p = guarded(vec![0x7F, 0xFF, 0xFF, 0xF0], false);
        assert!(p.read_message_begin().is_err());
        let mut p = guarded(vec![0xFF, 0xFF, 0xFF, 0xFF, 0x0F], true);
        assert!(p.read_bytes().is_err());
    }

    #[test]
    fn strings_within_limits_round_trip() {
        let mut p = guarded(vec![0, 0, 0, 3, b'a', b'b', b'c'], false);
        assert_eq!(p.read_string().unwrap(), "abc");
        let mut p = guarded(vec![3, b'x', b'y', b'z'], true);
        assert_eq!(p.read_bytes().unwrap(), b"xyz");
        assert!(!p.failed());
    }

    #[test]
    fn frames_outside_limits_are_refused() {
        let mut r = FramedReader::new(io::Cursor::new(vec![0xFF, 0xFF, 0xFF, 0xFF]), 100);
        assert!(r.read(&mut [0u8; 8]).is_err());
        // An oversize frame: its first bytes are passed on (the call's header), then nothing.
        let mut oversize = vec![0, 0, 1, 0];
        oversize.extend_from_slice(&[5u8; 256]);
        let mut r = FramedReader::new(io::Cursor::new(oversize), 100);
        let mut all = Vec::new();
        assert!(r.read_to_end(&mut all).is_err());
        assert_eq!(all.len(), 256);
        assert!(r.oversize.borrow().as_deref().is_some_and(|m| m.contains("256 bytes")));
        let mut r = FramedReader::new(io::Cursor::new(vec![0, 0, 0, 2, 7, 8]), 100);
        let mut out = [0u8; 8];
        assert_eq!(r.read(&mut out).unwrap(), 2);
        assert_eq!(&out[..2], &[7, 8]);
    }
}
