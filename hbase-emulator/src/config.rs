//! Configuration of the emulator: `chatpipe hbase-emulator --help` documents every flag;
//! each flag is also an environment variable `CHATPIPE_HBASE_EMULATOR_*`.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::store::Durability;

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

    /// Directory of the store (created if missing); holds `hbase-emulator.redb`.
    #[arg(long, env = "CHATPIPE_HBASE_EMULATOR_DATA_DIR", required_unless_present = "in_memory")]
    pub data_dir: Option<PathBuf>,

    /// When a write is acknowledged: `os` once the operating system has it (survives a kill
    /// of the emulator, like HBase's default WAL hflush), `fsync` once it is on disk
    /// (survives a power loss; one disk flush per commit).
    #[arg(long, env = "CHATPIPE_HBASE_EMULATOR_DURABILITY", value_enum, default_value_t = Durability::Os)]
    pub durability: Durability,

    /// Keep everything in memory, nothing on disk (tests); conflicts with --data-dir.
    #[arg(long, env = "CHATPIPE_HBASE_EMULATOR_IN_MEMORY", conflicts_with = "data_dir")]
    pub in_memory: bool,

    /// Framed transport instead of HBase's default buffered transport (`hbase thrift start -f`).
    #[arg(long, env = "CHATPIPE_HBASE_EMULATOR_FRAMED")]
    pub framed: bool,

    /// Compact protocol instead of HBase's default binary protocol (`hbase thrift start -c`).
    #[arg(long, env = "CHATPIPE_HBASE_EMULATOR_COMPACT")]
    pub compact: bool,

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
            framed: false,
            compact: false,
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
