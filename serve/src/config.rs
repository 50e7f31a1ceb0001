//! Configuration of `chatpipe serve`: `chatpipe serve --help` documents every flag; each flag
//! is also an environment variable `CHATPIPE_SERVE_*` (the HBase flags are the shared
//! `CHATPIPE_HBASE_*`, the Kafka flags the shared `CHATPIPE_KAFKA_*`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chatpipe_common::duration::parse_duration;
use chatpipe_common::kafka::{topics, KafkaArgs};
use chatpipe_sink::HbaseArgs;
use clap::builder::TypedValueParser as _;

/// Requests per second per API key. Reads are cheaper than ingest's batches but a chat
/// client polls: 1000/s per key (one key per backend service) matches ingest's default.
pub const DEFAULT_RATE_LIMIT_PER_SECOND: u32 = 1000;
/// Requests a key may send at once above its steady rate.
pub const DEFAULT_RATE_LIMIT_BURST: u32 = 2000;
/// Thrift connections: each HBase call holds one; 16 keeps 2 cores busy with room for the
/// parallel scans of an inbox page.
pub const DEFAULT_HBASE_CONNECTIONS: usize = 16;
/// DESIGN §6: groups above this many members get no inbox rows (the processor's
/// `--fanout-max-members`; serve must use the same value).
pub const DEFAULT_FANOUT_MAX_MEMBERS: u64 = 500;
/// The processor's `preview_chars`: an inbox entry read from a timeline gets the same preview.
pub const DEFAULT_PREVIEW_CHARS: usize = 80;
/// Push events kept in memory for `Last-Event-ID` resume (over all users).
pub const DEFAULT_PUSH_RETENTION_EVENTS: usize = 200_000;
/// Connected push clients at most (each holds a bounded queue).
pub const DEFAULT_MAX_PUSH_CLIENTS: usize = 10_000;
/// Requests served at once (503 beyond).
pub const DEFAULT_MAX_INFLIGHT_REQUESTS: usize = 512;

/// Serve the read API for chat clients from HBase, and live push from Kafka.
#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    /// Address of the read API (`/v1/...`, `/openapi.json`); port 0 picks a free port.
    #[arg(long, env = "CHATPIPE_SERVE_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,

    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "CHATPIPE_SERVE_METRICS_LISTEN", default_value = "127.0.0.1:9465")]
    pub metrics_listen: SocketAddr,

    /// HBase Thrift connection.
    #[command(flatten)]
    pub hbase: HbaseArgs,

    /// Thrift connections in the pool (each blocking call holds one).
    #[arg(long, env = "CHATPIPE_SERVE_HBASE_CONNECTIONS", default_value_t = DEFAULT_HBASE_CONNECTIONS,
          value_parser = clap::value_parser!(u16).range(1..=1024).map(usize::from))]
    pub hbase_connections: usize,

    /// Kafka connection (live push reads `--rows-topic`).
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Topic of row mutations the push stream follows (the processor's output, DESIGN §3).
    #[arg(long, env = "CHATPIPE_SERVE_ROWS_TOPIC", default_value = topics::ROWS)]
    pub rows_topic: String,

    /// Serve reads only: no Kafka consumer, `/v1/users/{user}/stream` answers 503.
    #[arg(long, env = "CHATPIPE_SERVE_NO_PUSH")]
    pub no_push: bool,

    /// File of accepted API keys: one per line, either `key` or `name:key` (the format of
    /// `chatpipe ingest --api-keys-file`). Clients send `Authorization: Bearer <key>`.
    /// Required unless --insecure-no-auth.
    #[arg(
        long,
        env = "CHATPIPE_SERVE_API_KEYS_FILE",
        required_unless_present = "insecure_no_auth",
        conflicts_with = "insecure_no_auth"
    )]
    pub api_keys_file: Option<PathBuf>,

    /// Accept requests without an API key (development only; logged as a warning).
    #[arg(long, env = "CHATPIPE_SERVE_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,

    /// Steady requests per second allowed per API key (one shared bucket when auth is off);
    /// 0 disables rate limiting. A push stream costs one request when it connects.
    #[arg(long, env = "CHATPIPE_SERVE_RATE_LIMIT_PER_SECOND", default_value_t = DEFAULT_RATE_LIMIT_PER_SECOND)]
    pub rate_limit_per_second: u32,

    /// Requests a key may send in a burst above the steady rate (token bucket size).
    #[arg(long, env = "CHATPIPE_SERVE_RATE_LIMIT_BURST", default_value_t = DEFAULT_RATE_LIMIT_BURST)]
    pub rate_limit_burst: u32,

    /// Requests served at once (push streams excluded); further requests get 503.
    #[arg(long, env = "CHATPIPE_SERVE_MAX_INFLIGHT_REQUESTS", default_value_t = DEFAULT_MAX_INFLIGHT_REQUESTS)]
    pub max_inflight_requests: usize,

    /// Groups with more members than this have no inbox rows (the processor's
    /// `--fanout-max-members`; keep both equal): their messages are merged into inbox pages
    /// from the group's timeline.
    #[arg(long, env = "CHATPIPE_SERVE_FANOUT_MAX_MEMBERS", default_value_t = DEFAULT_FANOUT_MAX_MEMBERS)]
    pub fanout_max_members: u64,

    /// Characters of a message body shown as the preview of an inbox entry merged from a
    /// timeline (the processor's preview length).
    #[arg(long, env = "CHATPIPE_SERVE_PREVIEW_CHARS", default_value_t = DEFAULT_PREVIEW_CHARS)]
    pub preview_chars: usize,

    /// How long an inbox page may use the user's cached list of large groups instead of
    /// reading `chat:user_sessions` and `chat:sessions` (`0s`: no cache). With push on, the
    /// feed drops an entry early on a join, a leave or a group crossing the threshold; the
    /// TTL bounds how stale the list can be otherwise (see `large_groups.rs`).
    #[arg(long, env = "CHATPIPE_SERVE_INBOX_CACHE_TTL", default_value = "30s", value_parser = parse_duration)]
    pub inbox_cache_ttl: Duration,

    /// Push events kept in memory for resuming a stream with `Last-Event-ID` (over all
    /// users); a client that was away longer gets a `reset` event and reloads.
    #[arg(long, env = "CHATPIPE_SERVE_PUSH_RETENTION_EVENTS", default_value_t = DEFAULT_PUSH_RETENTION_EVENTS)]
    pub push_retention_events: usize,

    /// Connected push clients at most; further streams get 503.
    #[arg(long, env = "CHATPIPE_SERVE_MAX_PUSH_CLIENTS", default_value_t = DEFAULT_MAX_PUSH_CLIENTS)]
    pub max_push_clients: usize,

    /// SSE keep-alive comment interval (proxies close idle connections).
    #[arg(long, env = "CHATPIPE_SERVE_PUSH_KEEPALIVE", default_value = "15s", value_parser = parse_duration)]
    pub push_keepalive: Duration,

    /// On shutdown, how long in-flight requests may take (push streams are closed at once).
    #[arg(long, env = "CHATPIPE_SERVE_DRAIN_TIMEOUT", default_value = "25s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

impl Config {
    /// Every flag's default, auth off, both listeners on `127.0.0.1:0`: for tests and `dev`.
    pub fn new(hbase: HbaseArgs, kafka: KafkaArgs) -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            hbase,
            hbase_connections: DEFAULT_HBASE_CONNECTIONS,
            kafka,
            rows_topic: topics::ROWS.to_owned(),
            no_push: false,
            api_keys_file: None,
            insecure_no_auth: true,
            rate_limit_per_second: DEFAULT_RATE_LIMIT_PER_SECOND,
            rate_limit_burst: DEFAULT_RATE_LIMIT_BURST,
            max_inflight_requests: DEFAULT_MAX_INFLIGHT_REQUESTS,
            fanout_max_members: DEFAULT_FANOUT_MAX_MEMBERS,
            preview_chars: DEFAULT_PREVIEW_CHARS,
            inbox_cache_ttl: Duration::from_secs(30),
            push_retention_events: DEFAULT_PUSH_RETENTION_EVENTS,
            max_push_clients: DEFAULT_MAX_PUSH_CLIENTS,
            push_keepalive: Duration::from_secs(15),
            drain_timeout: Duration::from_secs(25),
        }
    }

    /// Checks what clap cannot; every problem names its flag.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.api_keys_file.is_none() && !self.insecure_no_auth {
            return Err("either --api-keys-file or --insecure-no-auth is required".into());
        }
        if self.rate_limit_per_second > 0 && self.rate_limit_burst == 0 {
            return Err("--rate-limit-burst must be at least 1 when rate limiting is on".into());
        }
        if self.max_inflight_requests == 0 {
            return Err("--max-inflight-requests must be at least 1".into());
        }
        if self.push_retention_events == 0 {
            return Err("--push-retention-events must be at least 1".into());
        }
        if self.push_keepalive.is_zero() {
            return Err("--push-keepalive must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    #[test]
    fn new_matches_the_flag_defaults() {
        let parsed = Cli::try_parse_from(["serve", "--insecure-no-auth", "--listen", "127.0.0.1:0"]).unwrap().config;
        let mut built = Config::new(parsed.hbase.clone(), parsed.kafka.clone());
        built.metrics_listen = parsed.metrics_listen;
        assert_eq!(format!("{parsed:?}"), format!("{built:?}"));
        assert!(built.validate().is_ok());
    }

    #[test]
    fn auth_must_be_chosen_explicitly_and_flags_keep_the_chart_names() {
        assert!(Cli::try_parse_from(["serve"]).is_err());
        assert!(Cli::try_parse_from(["serve", "--insecure-no-auth", "--api-keys-file", "k"]).is_err());
        let c = Cli::try_parse_from([
            "serve",
            "--api-keys-file",
            "keys",
            "--listen",
            "0.0.0.0:8081",
            "--metrics-listen",
            "0.0.0.0:9465",
            "--hbase-thrift",
            "hbase:9090",
            "--kafka-brokers",
            "kafka:9092",
        ])
        .unwrap()
        .config;
        assert_eq!(c.hbase.addr, "hbase:9090");
        assert_eq!(c.kafka.brokers, "kafka:9092");
    }
}
