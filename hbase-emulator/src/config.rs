//! Configuration of the emulator: `chatpipe hbase-emulator --help` documents every flag;
//! each flag is also an environment variable `CHATPIPE_HBASE_EMULATOR_*`.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::store::Durability;

/// Default memstore: every memtable together, flushed a quarter at a time. HBase flushes a
/// region's memstore at 128 MiB (`hbase.hregion.memstore.flush.size`) under a global limit
/// of 40% of the heap; a dev emulator shares a laptop with the rest of the stack.
pub const DEFAULT_MEMSTORE_SIZE_MB: u64 = 64;

/// Default block cache of the sorted files (HBase: `hfile.block.cache.size`, 40% of heap).
pub const DEFAULT_BLOCK_CACHE_MB: u64 = 32;

/// Default Thrift port of `hbase thrift start`.
const fn default_port() -> u16 {
    9090
}

/// HBase's Thrift server refuses frames above 2 MiB by default
/// (`hbase.regionserver.thrift.framed.max_frame_size_in_mb`); the emulator is more lenient
/// so that large test batches pass, but still bounded so garbage cannot claim memory.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// HBase's Thrift server allows up to 1000 worker threads
/// (`hbase.thrift.maxWorkerThreads`); each connection holds one.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1000;

/// HBase's Thrift server closes a connection idle this long
/// (`hbase.thrift.server.socket.read.timeout`, 60 s): clients must reconnect, and so must
/// they here.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 60;

/// The Thrift transports HBase's Thrift server offers (`hbase thrift start [-f]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ThriftTransport {
    /// Messages back to back on the stream (HBase's default).
    #[default]
    Buffered,
    /// Each message behind a 4-byte length (`-f`; required by HBase's nonblocking servers).
    Framed,
}

/// The Thrift protocols HBase's Thrift server offers (`hbase thrift start [-c]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ThriftProtocol {
    /// TBinaryProtocol, strict (HBase's default).
    #[default]
    Binary,
    /// TCompactProtocol (`-c`).
    Compact,
}

impl Config {
    /// Whether the framed transport is served.
    pub fn framed(&self) -> bool {
        self.thrift_transport == ThriftTransport::Framed
    }

    /// Whether the compact protocol is served.
    pub fn compact(&self) -> bool {
        self.thrift_protocol == ThriftProtocol::Compact
    }

    /// This configuration with the given transport and protocol.
    pub fn with_wire(self, thrift_transport: ThriftTransport, thrift_protocol: ThriftProtocol) -> Config {
        Config { thrift_transport, thrift_protocol, ..self }
    }
}

/// Serve HBase's Thrift1 API from an embedded, durable store.
#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    /// Address to serve Thrift on (port 0: any free port).
    #[arg(
        long,
        env = "CHATPIPE_HBASE_EMULATOR_LISTEN",
        default_value_t = SocketAddr::from(([127, 0, 0, 1], default_port()))
    )]
    pub listen: SocketAddr,

    /// Directory of the store (created if missing, locked while in use): the write-ahead log
    /// and sorted files under `lsm/`.
    #[arg(long, env = "CHATPIPE_HBASE_EMULATOR_DATA_DIR", required_unless_present = "in_memory")]
    pub data_dir: Option<PathBuf>,

    /// When a write is acknowledged: `os` once the operating system has it (survives a kill
    /// of the emulator, like HBase's default WAL hflush), `fsync` once it is on disk
    /// (survives a power loss; one disk flush per commit).
    #[arg(long, env = "CHATPIPE_HBASE_EMULATOR_DURABILITY", value_enum, default_value_t = Durability::Os)]
    pub durability: Durability,

    /// Most memory held by written data not yet flushed to sorted files, in MiB (at least 4):
    /// a quarter of it is flushed at a time in the background; writes wait when all of it is
    /// in use. Memory is bounded by this and --block-cache-mb, not by the data's size.
    #[arg(
        long,
        env = "CHATPIPE_HBASE_EMULATOR_MEMSTORE_SIZE_MB",
        default_value_t = DEFAULT_MEMSTORE_SIZE_MB,
        value_parser = clap::value_parser!(u64).range(4..=65536)
    )]
    pub memstore_size_mb: u64,

    /// Cache of the sorted files' blocks, in MiB.
    #[arg(
        long,
        env = "CHATPIPE_HBASE_EMULATOR_BLOCK_CACHE_MB",
        default_value_t = DEFAULT_BLOCK_CACHE_MB,
        value_parser = clap::value_parser!(u64).range(1..=65536)
    )]
    pub block_cache_mb: u64,

    /// Keep nothing after the emulator stops (tests): data lives in a temporary directory
    /// (same write path, same memory bounds) removed on stop; conflicts with --data-dir.
    #[arg(long, env = "CHATPIPE_HBASE_EMULATOR_IN_MEMORY", conflicts_with = "data_dir")]
    pub in_memory: bool,

    /// Thrift transport: `buffered` (HBase's default) or `framed` (`hbase thrift start -f`).
    /// Clients must use the same.
    #[arg(
        long,
        env = "CHATPIPE_HBASE_EMULATOR_THRIFT_TRANSPORT",
        value_enum,
        default_value_t = ThriftTransport::Buffered
    )]
    pub thrift_transport: ThriftTransport,

    /// Thrift protocol: `binary` (HBase's default) or `compact` (`hbase thrift start -c`).
    /// Clients must use the same.
    #[arg(
        long,
        env = "CHATPIPE_HBASE_EMULATOR_THRIFT_PROTOCOL",
        value_enum,
        default_value_t = ThriftProtocol::Binary
    )]
    pub thrift_protocol: ThriftProtocol,

    /// Pre-split every table created into this many salt regions ("000".."N-1", N ≤ 1000).
    /// Unset: tables in namespace `chat` get 128 salt regions, others one region.
    #[arg(
        long,
        env = "CHATPIPE_HBASE_EMULATOR_PRESPLIT_SALT",
        value_parser = clap::value_parser!(u32).range(1..=1000)
    )]
    pub presplit_salt: Option<u32>,

    /// Connections served at once, one thread each; further connections are closed at once.
    #[arg(
        long,
        env = "CHATPIPE_HBASE_EMULATOR_MAX_CONNECTIONS",
        default_value_t = DEFAULT_MAX_CONNECTIONS
    )]
    pub max_connections: usize,

    /// Close a connection that sends nothing for this many seconds, as HBase does (0: never).
    #[arg(long, env = "CHATPIPE_HBASE_EMULATOR_IDLE_TIMEOUT_SECS", default_value_t = DEFAULT_IDLE_TIMEOUT_SECS)]
    pub idle_timeout_secs: u64,

    /// Largest frame, string or binary value accepted from a client, in bytes.
    #[arg(
        long,
        env = "CHATPIPE_HBASE_EMULATOR_MAX_MESSAGE_BYTES",
        default_value_t = DEFAULT_MAX_MESSAGE_BYTES
    )]
    pub max_message_bytes: usize,
}

impl Config {
    /// An in-memory emulator on `listen` (port 0 for any free port): for tests.
    pub fn in_memory(listen: SocketAddr) -> Config {
        Config {
            listen,
            data_dir: None,
            in_memory: true,
            durability: Durability::Os,
            memstore_size_mb: DEFAULT_MEMSTORE_SIZE_MB,
            block_cache_mb: DEFAULT_BLOCK_CACHE_MB,
            thrift_transport: ThriftTransport::Buffered,
            thrift_protocol: ThriftProtocol::Binary,
            presplit_salt: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout_secs: DEFAULT_IDLE_TIMEOUT_SECS,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }

    /// An emulator persisting to `data_dir`, on `listen`.
    pub fn on_disk(listen: SocketAddr, data_dir: impl Into<PathBuf>) -> Config {
        Config { data_dir: Some(data_dir.into()), in_memory: false, ..Config::in_memory(listen) }
    }
}
