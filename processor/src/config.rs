//! `chatpipe process` configuration: every flag also an environment variable.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chatpipe_common::duration::parse_duration;
use chatpipe_common::event::MessageKind;
use chatpipe_common::kafka::{topics, KafkaArgs};

use crate::core::Rules;

fn parse_kind(s: &str) -> Result<MessageKind, String> {
    MessageKind::from_name(s).ok_or_else(|| format!("unknown message kind {s:?}"))
}

/// Processor configuration.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Address of /metrics, /healthz, /readyz.
    #[arg(long, env = "CHATPIPE_METRICS_LISTEN", default_value = "127.0.0.1:9465")]
    pub metrics_listen: SocketAddr,
    /// Local state directory: a checkpoint per partition, so a restart reads only the
    /// changelog written after it. It may be empty or lost (the partition is then restored
    /// from the whole changelog); give each instance its own.
    #[arg(long, env = "CHATPIPE_STATE_DIR", default_value = "./.chatpipe/processor")]
    pub state_dir: PathBuf,
    /// How often a partition's checkpoint is rewritten while it runs (also when it is
    /// released); a restart reads at most about this much changelog.
    #[arg(long, env = "CHATPIPE_CHECKPOINT_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub checkpoint_interval: Duration,
    /// Consumer group id.
    #[arg(long, env = "CHATPIPE_PROCESSOR_GROUP", default_value = "chatpipe-processor")]
    pub group_id: String,
    /// Static group membership (Kafka's `group.instance.id`), e.g. the pod name of a
    /// StatefulSet: a restart into the same id within the session timeout keeps its
    /// partitions without a rebalance and without a restore elsewhere. Unset: dynamic.
    #[arg(long, env = "CHATPIPE_GROUP_INSTANCE_ID")]
    pub group_instance_id: Option<String>,
    /// Input topic.
    #[arg(long, env = "CHATPIPE_EVENTS_TOPIC", default_value = topics::EVENTS)]
    pub events_topic: String,
    /// Row mutations topic (read by the sink).
    #[arg(long, env = "CHATPIPE_ROWS_TOPIC", default_value = topics::ROWS)]
    pub rows_topic: String,
    /// Per-session window counts topic.
    #[arg(long, env = "CHATPIPE_AGG_SESSION_TOPIC", default_value = topics::AGG_SESSION)]
    pub agg_session_topic: String,
    /// Global window counts topic.
    #[arg(long, env = "CHATPIPE_AGG_GLOBAL_TOPIC", default_value = topics::AGG_GLOBAL)]
    pub agg_global_topic: String,
    /// Unread counts topic (compacted).
    #[arg(long, env = "CHATPIPE_UNREAD_TOPIC", default_value = topics::UNREAD)]
    pub unread_topic: String,
    /// State changelog topic (compacted, co-partitioned with the input).
    #[arg(long, env = "CHATPIPE_CHANGELOG_TOPIC", default_value = topics::CHANGELOG)]
    pub changelog_topic: String,
    /// Per-partition window partials for the global merge (one partition).
    #[arg(long, env = "CHATPIPE_PARTIALS_TOPIC", default_value = "chatpipe.processor.partials")]
    pub partials_topic: String,
    /// Dead-letter topic.
    #[arg(long, env = "CHATPIPE_DLQ_TOPIC", default_value = topics::DLQ)]
    pub dlq_topic: String,
    /// Partitions of the input (and changelog) when this role creates them.
    #[arg(long, env = "CHATPIPE_EVENTS_PARTITIONS", default_value_t = 8)]
    pub events_partitions: i32,
    /// Partitions of the output topics when this role creates them.
    #[arg(long, env = "CHATPIPE_OUTPUT_PARTITIONS", default_value_t = 8)]
    pub output_partitions: i32,
    /// Blocked sender ids (comma-separated); their messages and edits are dropped.
    #[arg(long, env = "CHATPIPE_BLOCKED_SENDERS", value_delimiter = ',')]
    pub blocked_senders: Vec<u64>,
    /// Allowed message kinds (comma-separated); default all.
    #[arg(long, env = "CHATPIPE_ALLOWED_KINDS", value_delimiter = ',', value_parser = parse_kind)]
    pub allowed_kinds: Vec<MessageKind>,
    /// Largest body in bytes; larger ones go to the DLQ.
    #[arg(long, env = "CHATPIPE_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,
    /// How long (ingest time) a client_msg_id, a retry's alias id and a message's seq and
    /// sender are remembered: retries are deduplicated, and reads by id, edits and recalls
    /// resolved, within it (older targets go to the DLQ as unknown_target).
    #[arg(long, env = "CHATPIPE_DEDUPE_HORIZON", default_value = "24h", value_parser = parse_duration)]
    pub dedupe_horizon: Duration,
    /// Bodies at or above this size are LZ4-compressed in HBase.
    #[arg(long, env = "CHATPIPE_COMPRESS_MIN_BYTES", default_value_t = 512)]
    pub compress_min_bytes: usize,
    /// Groups with more members are not fanned out to inboxes; `chatpipe serve` merges
    /// their timelines into inboxes on read.
    #[arg(long, env = "CHATPIPE_FANOUT_MAX_MEMBERS", default_value_t = 500)]
    pub fanout_max_members: usize,
    /// Least time between two chat.unread emissions of a partition: each changed
    /// (user, session) is sent at most once per interval, with its value at that time.
    #[arg(long, env = "CHATPIPE_UNREAD_EMIT_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub unread_emit_interval: Duration,
    /// Turn inbox fan-out off (benchmarks of the counting path only).
    #[arg(long, env = "CHATPIPE_DISABLE_FANOUT")]
    pub disable_fanout: bool,
    /// Turn read marks and chat.unread off (benchmarks of the counting path only).
    #[arg(long, env = "CHATPIPE_DISABLE_UNREAD")]
    pub disable_unread: bool,
    /// Tumbling window size for counts.
    #[arg(long, env = "CHATPIPE_WINDOW", default_value = "1m", value_parser = parse_duration)]
    pub window: Duration,
    /// Watermark lag behind the largest event time.
    #[arg(long, env = "CHATPIPE_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub grace: Duration,
    /// Late events within this horizon correct their window; older ones go to the DLQ.
    #[arg(long, env = "CHATPIPE_CORRECTION_HORIZON", default_value = "24h", value_parser = parse_duration)]
    pub correction_horizon: Duration,
    /// A partition without input for this long advances its watermark on wall time.
    #[arg(long, env = "CHATPIPE_IDLE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Most input records per batch.
    #[arg(long, env = "CHATPIPE_BATCH_EVENTS", default_value_t = 2000)]
    pub batch_events: usize,
    /// Longest wait to fill a batch.
    #[arg(long, env = "CHATPIPE_BATCH_LINGER", default_value = "20ms", value_parser = parse_duration)]
    pub batch_linger: Duration,
    /// Bound on draining a revoked partition or shutting down (below the session timeout).
    #[arg(long, env = "CHATPIPE_DRAIN_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Input records queued per partition between the poller and the partition's task;
    /// a full queue pauses the partition (the poller never blocks).
    #[arg(long, env = "CHATPIPE_PARTITION_QUEUE", default_value_t = 4096)]
    pub partition_queue: usize,
    /// Producer linger (ms).
    #[arg(long, env = "CHATPIPE_PRODUCER_LINGER_MS", default_value_t = 5)]
    pub producer_linger_ms: u64,
}

impl Config {
    /// A configuration with defaults for a broker (tests, dev).
    pub fn for_brokers(brokers: &str) -> Self {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct P {
            #[command(flatten)]
            c: Config,
        }
        // Defaults only: parsing an empty command line cannot fail.
        let mut c = P::try_parse_from(["process"]).map(|p| p.c).unwrap_or_else(|e| unreachable!("{e}"));
        c.kafka = KafkaArgs::new(brokers);
        c
    }

    /// The processing rules.
    pub fn rules(&self) -> Rules {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Rules {
            blocked_senders: self.blocked_senders.iter().copied().collect(),
            allowed_kinds: (!self.allowed_kinds.is_empty())
                .then(|| self.allowed_kinds.iter().copied().collect::<HashSet<_>>()),
            max_body_bytes: self.max_body_bytes,
            dedupe_horizon_ms: ms(self.dedupe_horizon),
            compress_min_bytes: self.compress_min_bytes,
            fanout_max_members: self.fanout_max_members,
            fan_out: !self.disable_fanout,
            unread: !self.disable_unread,
            unread_emit_interval_ms: ms(self.unread_emit_interval),
            window_ms: ms(self.window).max(1),
            grace_ms: ms(self.grace),
            correction_horizon_ms: ms(self.correction_horizon),
            preview_chars: 80,
        }
    }
}
