//! `chatpipe sink` flags. Every flag is also an environment variable `CHATPIPE_*`;
//! `chatpipe sink --help` prints the defaults. Durations take humantime syntax (`100ms`, `5s`).

use std::net::SocketAddr;
use std::time::Duration;

use chatpipe_common::duration::parse_duration;
use chatpipe_common::kafka::{topics, KafkaArgs};
use clap::builder::TypedValueParser as _;

use crate::hbase::{ThriftProtocol, ThriftTransport};

/// Default rows per HBase batch: large enough to amortise a Thrift round trip and the
/// region server's WAL sync, small enough to stay well under the 2 MiB default frame limit
/// of HBase's Thrift server with chat-sized rows.
pub const DEFAULT_BATCH_ROWS: usize = 1_000;
/// Default bytes per batch (approximate encoded size): HBase Thrift's default max frame.
pub const DEFAULT_BATCH_BYTES: usize = 2 * 1024 * 1024;
/// Default flush interval: the latency budget a batch may add (the issue's 100 ms).
pub const DEFAULT_FLUSH_INTERVAL: &str = "100ms";
/// Default Thrift connections: enough to keep a small cluster busy.
pub const DEFAULT_HBASE_CONNECTIONS: usize = 8;
/// Default in-flight batches: twice the connections, so that a connection goes straight to
/// the next batch while the previous one is being planned or acknowledged.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 2 * DEFAULT_HBASE_CONNECTIONS;

/// How to reach HBase's Thrift1 server (shared by `sink`, `tables create` and `query`).
#[derive(clap::Args, Debug, Clone)]
pub struct HbaseArgs {
    /// HBase Thrift1 server, HOST:PORT (`hbase thrift start`, or `chatpipe hbase-emulator`).
    #[arg(long = "hbase-thrift", env = "CHATPIPE_HBASE_THRIFT", default_value = "127.0.0.1:9090")]
    pub addr: String,

    /// The Thrift server's transport: `buffered` (`hbase thrift start`) or `framed`
    /// (`hbase thrift start -f`, and the nonblocking servers, which require it).
    #[arg(long, env = "CHATPIPE_THRIFT_TRANSPORT", value_enum, default_value_t = ThriftTransport::Buffered)]
    pub thrift_transport: ThriftTransport,

    /// The Thrift server's protocol: `binary` (`hbase thrift start`) or `compact` (`-c`).
    #[arg(long, env = "CHATPIPE_THRIFT_PROTOCOL", value_enum, default_value_t = ThriftProtocol::Binary)]
    pub thrift_protocol: ThriftProtocol,

    /// Connect, read and write timeout of one Thrift call; a call that exceeds it is a
    /// transient error (the connection is dropped and the call retried).
    #[arg(long = "hbase-timeout", env = "CHATPIPE_HBASE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
}

impl HbaseArgs {
    /// HBase's defaults (buffered, binary, 30 s) at `addr`.
    pub fn new(addr: impl Into<String>) -> Self {
        HbaseArgs {
            addr: addr.into(),
            thrift_transport: ThriftTransport::Buffered,
            thrift_protocol: ThriftProtocol::Binary,
            timeout: Duration::from_secs(30),
        }
    }

    /// The client configuration.
    pub fn config(&self) -> crate::hbase::HbaseConfig {
        crate::hbase::HbaseConfig {
            addr: self.addr.clone(),
            transport: self.thrift_transport,
            protocol: self.thrift_protocol,
            timeout: self.timeout,
        }
    }
}

/// Write `chat.rows` into HBase through its Thrift1 API.
#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// HBase Thrift connection.
    #[command(flatten)]
    pub hbase: HbaseArgs,

    /// Thrift connections in the pool (each blocking call holds one).
    #[arg(long, env = "CHATPIPE_HBASE_CONNECTIONS", default_value_t = DEFAULT_HBASE_CONNECTIONS,
          value_parser = clap::value_parser!(u16).range(1..=1024).map(usize::from))]
    pub hbase_connections: usize,

    /// Topic of row mutations to consume.
    #[arg(long, env = "CHATPIPE_SINK_ROWS_TOPIC", default_value = topics::ROWS)]
    pub rows_topic: String,

    /// Dead-letter topic for records that can never be written.
    #[arg(long, env = "CHATPIPE_SINK_DLQ_TOPIC", default_value = topics::DLQ)]
    pub dlq_topic: String,

    /// Partitions of the rows and DLQ topics when the sink creates them (existing topics
    /// are left as they are).
    #[arg(long, env = "CHATPIPE_SINK_TOPIC_PARTITIONS", default_value_t = 8)]
    pub topic_partitions: i32,

    /// Consumer group id; sink instances of one deployment share it.
    #[arg(long, env = "CHATPIPE_SINK_GROUP_ID", default_value = "chatpipe-sink")]
    pub group_id: String,

    /// Static group membership (Kafka's `group.instance.id`), e.g. the pod name of a
    /// StatefulSet: a restart into the same id within the session timeout keeps its
    /// partitions without a rebalance. Unset: dynamic membership.
    #[arg(long, env = "CHATPIPE_GROUP_INSTANCE_ID")]
    pub group_instance_id: Option<String>,

    /// Flush a partition's batch when it holds this many rows.
    #[arg(long, env = "CHATPIPE_SINK_BATCH_ROWS", default_value_t = DEFAULT_BATCH_ROWS,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000).map(|v| v as usize))]
    pub batch_rows: usize,

    /// Flush a partition's batch when it holds this many bytes (approximate encoded size).
    #[arg(long, env = "CHATPIPE_SINK_BATCH_BYTES", default_value_t = DEFAULT_BATCH_BYTES,
          value_parser = clap::value_parser!(u32).range(1..).map(|v| v as usize))]
    pub batch_bytes: usize,

    /// Flush a partition's batch when its oldest row has waited this long.
    #[arg(long, env = "CHATPIPE_SINK_FLUSH_INTERVAL", default_value = DEFAULT_FLUSH_INTERVAL,
          value_parser = parse_duration)]
    pub flush_interval: Duration,

    /// Batches being written at once, over all partitions (one per partition at most, so
    /// that one row's mutations are never reordered); they share the connections.
    #[arg(long, env = "CHATPIPE_SINK_MAX_IN_FLIGHT", default_value_t = DEFAULT_MAX_IN_FLIGHT,
          value_parser = clap::value_parser!(u16).range(1..=1024).map(usize::from))]
    pub max_in_flight: usize,

    /// First backoff after a transient HBase error; doubles per attempt, with jitter.
    #[arg(long, env = "CHATPIPE_SINK_RETRY_BACKOFF", default_value = "100ms", value_parser = parse_duration)]
    pub retry_backoff: Duration,

    /// Longest backoff between two attempts.
    #[arg(long, env = "CHATPIPE_SINK_RETRY_MAX_BACKOFF", default_value = "10s", value_parser = parse_duration)]
    pub retry_max_backoff: Duration,

    /// Retries of one HBase call on transient errors before its rows go to the DLQ
    /// (reason `retries_exhausted`); 0 retries forever (the partition waits for HBase).
    #[arg(long, env = "CHATPIPE_SINK_MAX_RETRIES", default_value_t = 0)]
    pub max_retries: u32,

    /// How long a revocation or shutdown waits for in-flight batches before abandoning them
    /// (their offsets are then not committed, so the rows are written again by the next
    /// owner). Abandoned batches' HBase calls already on the wire are then waited for, up to
    /// `--hbase-timeout` + 1 s, before the partitions are released.
    #[arg(long, env = "CHATPIPE_SINK_DRAIN_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Create the tables of DESIGN §6 at start-up if they are missing (as `chatpipe tables
    /// create` does). Without it, a missing table sends its rows to the DLQ.
    #[arg(long, env = "CHATPIPE_SINK_CREATE_TABLES")]
    pub create_tables: bool,

    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "CHATPIPE_SINK_METRICS_LISTEN", default_value = "0.0.0.0:9102")]
    pub metrics_listen: SocketAddr,
}

impl Config {
    /// A configuration with the defaults for a broker and a Thrift server (tests, `dev`).
    pub fn new(kafka: KafkaArgs, hbase_thrift: impl Into<String>) -> Self {
        Config {
            kafka,
            hbase: HbaseArgs::new(hbase_thrift),
            hbase_connections: DEFAULT_HBASE_CONNECTIONS,
            rows_topic: topics::ROWS.to_owned(),
            dlq_topic: topics::DLQ.to_owned(),
            topic_partitions: 8,
            group_id: "chatpipe-sink".to_owned(),
            group_instance_id: None,
            batch_rows: DEFAULT_BATCH_ROWS,
            batch_bytes: DEFAULT_BATCH_BYTES,
            flush_interval: Duration::from_millis(100),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            retry_backoff: Duration::from_millis(100),
            retry_max_backoff: Duration::from_secs(10),
            max_retries: 0,
            drain_timeout: Duration::from_secs(15),
            create_tables: false,
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }

    /// Rows a partition buffers (beyond its in-flight batch) before its worker stops
    /// reading.
    pub(crate) fn max_buffered_rows(&self) -> usize {
        (2 * self.batch_rows).max(1024)
    }

    /// Bytes a partition buffers before its worker stops reading.
    pub(crate) fn max_buffered_bytes(&self) -> usize {
        2 * self.batch_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    #[test]
    fn defaults_match_the_issue() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert_eq!(cli.config.batch_rows, 1_000);
        assert_eq!(cli.config.batch_bytes, 2 * 1024 * 1024);
        assert_eq!(cli.config.flush_interval, Duration::from_millis(100));
        assert_eq!(cli.config.rows_topic, "chat.rows");
        assert_eq!(cli.config.dlq_topic, "chat.dlq");
        assert_eq!(cli.config.topic_partitions, 8);
        assert_eq!(cli.config.max_retries, 0);
    }

    #[test]
    fn flags_parse() {
        let cli = Cli::try_parse_from([
            "x",
            "--hbase-thrift",
            "h:1",
            "--batch-rows",
            "5",
            "--flush-interval",
            "20ms",
            "--hbase-timeout",
            "2s",
            "--thrift-transport",
            "framed",
            "--thrift-protocol",
            "compact",
        ])
        .unwrap();
        assert_eq!(cli.config.hbase.config().transport, ThriftTransport::Framed);
        assert_eq!(cli.config.hbase.config().protocol, ThriftProtocol::Compact);
        let defaults = Cli::try_parse_from(["x"]).unwrap().config.hbase.config();
        assert_eq!((defaults.transport, defaults.protocol), (ThriftTransport::Buffered, ThriftProtocol::Binary));
        assert!(Cli::try_parse_from(["x", "--thrift-transport", "http"]).is_err());
        assert_eq!(cli.config.hbase.addr, "h:1");
        assert_eq!(cli.config.batch_rows, 5);
        assert_eq!(cli.config.flush_interval, Duration::from_millis(20));
        assert_eq!(cli.config.hbase.timeout, Duration::from_secs(2));
        assert!(Cli::try_parse_from(["x", "--batch-rows", "0"]).is_err());
        assert!(Cli::try_parse_from(["x", "--flush-interval", "soon"]).is_err());
    }
}
