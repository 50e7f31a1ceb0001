//! Configuration of `chatpipe ingest`: `chatpipe ingest --help` documents every flag; each
//! flag is also an environment variable `CHATPIPE_INGEST_*` (the Kafka flags are the shared
//! `CHATPIPE_KAFKA_*`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chatpipe_common::duration::parse_duration;
use chatpipe_common::kafka::{topics, KafkaArgs};
use chatpipe_common::snowflake::MAX_WORKER;

/// Most events in one request (the default).
pub const DEFAULT_MAX_BATCH: usize = 1000;
/// Largest request body: 1 MiB holds a full batch of typical chat events (~300 B each) with
/// room to spare, while bounding what one request can make us buffer.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Partitions of `chat.events` when ingest creates it (DESIGN §3: configurable).
pub const DEFAULT_EVENTS_PARTITIONS: i32 = 8;
/// Requests processed (parsed and produced) at once.
pub const DEFAULT_MAX_INFLIGHT_REQUESTS: usize = 256;
/// Bytes of all request bodies being received or parsed at once: 256 full 1 MiB bodies,
/// the bound the in-flight limit gave when bodies were read under a slot.
pub const DEFAULT_MAX_BUFFERED_BODY_BYTES: usize = DEFAULT_MAX_INFLIGHT_REQUESTS * DEFAULT_MAX_BODY_BYTES;
/// Requests per second per API key (0 disables rate limiting).
pub const DEFAULT_RATE_LIMIT_PER_SECOND: u32 = 1000;
/// Requests a key may send at once above its steady rate.
pub const DEFAULT_RATE_LIMIT_BURST: u32 = 2000;
/// Events per second per API key: a fifth of what one ingest pod carries on two cores
/// (~500k events/s, docs/BENCHMARKS.md), so no single key can take a pod (0 disables).
pub const DEFAULT_RATE_LIMIT_EVENTS_PER_SECOND: u32 = 100_000;
/// Events a key may send at once above its steady event rate: two seconds' worth, like the
/// request burst.
pub const DEFAULT_RATE_LIMIT_EVENTS_BURST: u32 = 200_000;
/// Most validation errors returned in one 400 body.
pub const DEFAULT_MAX_ERRORS: usize = 100;

/// Accept chat events over HTTP and publish them to Kafka.
#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    /// Address of the events API (`POST /v1/events`); port 0 picks a free port.
    #[arg(long, env = "CHATPIPE_INGEST_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "CHATPIPE_INGEST_METRICS_LISTEN", default_value = "127.0.0.1:9464")]
    pub metrics_listen: SocketAddr,

    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// File of accepted API keys: one per line, either `key` or `name:key` (split at the
    /// first `:`); blank lines and lines starting with `#` are skipped. Clients send
    /// `Authorization: Bearer <key>`. Required unless --insecure-no-auth.
    #[arg(
        long,
        env = "CHATPIPE_INGEST_API_KEYS_FILE",
        required_unless_present = "insecure_no_auth",
        conflicts_with = "insecure_no_auth"
    )]
    pub api_keys_file: Option<PathBuf>,

    /// Accept requests without an API key (development only; logged as a warning). Any
    /// `Authorization` header is then ignored.
    #[arg(long, env = "CHATPIPE_INGEST_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,

    /// Topic the events are published to.
    #[arg(long, env = "CHATPIPE_INGEST_EVENTS_TOPIC", default_value = topics::EVENTS)]
    pub events_topic: String,

    /// Partitions of the events topic when ingest creates it (an existing topic is kept as is).
    #[arg(
        long,
        env = "CHATPIPE_INGEST_EVENTS_PARTITIONS",
        default_value_t = DEFAULT_EVENTS_PARTITIONS,
        value_parser = clap::value_parser!(i32).range(1..)
    )]
    pub events_partitions: i32,

    /// Most events in one request (JSON array elements or NDJSON lines).
    #[arg(long, env = "CHATPIPE_INGEST_MAX_BATCH", default_value_t = DEFAULT_MAX_BATCH)]
    pub max_batch: usize,

    /// Largest request body in bytes; larger requests get 413.
    #[arg(long, env = "CHATPIPE_INGEST_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,

    /// How far `sent_at` may be ahead of the server clock; further ahead it is clamped to
    /// `ingested_at` (past times are kept as sent).
    #[arg(long, env = "CHATPIPE_INGEST_MAX_CLOCK_SKEW", default_value = "60s", value_parser = parse_duration)]
    pub max_clock_skew: Duration,

    /// Snowflake worker id (0..=1023), unique per running ingest. Unset: the ordinal of a
    /// StatefulSet pod name (`chatpipe-ingest-3` → 3) from the host name, else 0 (with a warning).
    #[arg(
        long,
        env = "CHATPIPE_INGEST_WORKER_ID",
        value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_WORKER))
    )]
    pub worker_id: Option<u32>,

    /// How long the producer waits to batch events into one Kafka request (`linger.ms`).
    #[arg(long, env = "CHATPIPE_INGEST_LINGER", default_value = "5ms", value_parser = parse_duration)]
    pub linger: Duration,

    /// How long a request waits for Kafka to acknowledge its events (queueing included,
    /// also librdkafka's `message.timeout.ms` unless set with --kafka-option); then 503.
    #[arg(long, env = "CHATPIPE_INGEST_PRODUCE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub produce_timeout: Duration,

    /// Requests processed (parsed and produced) at once, once their body is received;
    /// further requests get 503 with `Retry-After`.
    #[arg(long, env = "CHATPIPE_INGEST_MAX_INFLIGHT_REQUESTS", default_value_t = DEFAULT_MAX_INFLIGHT_REQUESTS)]
    pub max_inflight_requests: usize,

    /// Bytes of all request bodies being received or parsed at once, charged as the bytes
    /// arrive; a request that would go beyond gets 503 with `Retry-After`. At least
    /// --max-body-bytes.
    #[arg(long, env = "CHATPIPE_INGEST_MAX_BUFFERED_BODY_BYTES", default_value_t = DEFAULT_MAX_BUFFERED_BODY_BYTES)]
    pub max_buffered_body_bytes: usize,

    /// Steady requests per second allowed per API key (one shared bucket when auth is off);
    /// 0 disables rate limiting.
    #[arg(long, env = "CHATPIPE_INGEST_RATE_LIMIT_PER_SECOND", default_value_t = DEFAULT_RATE_LIMIT_PER_SECOND)]
    pub rate_limit_per_second: u32,

    /// Requests a key may send in a burst above the steady rate (token bucket size).
    #[arg(long, env = "CHATPIPE_INGEST_RATE_LIMIT_BURST", default_value_t = DEFAULT_RATE_LIMIT_BURST)]
    pub rate_limit_burst: u32,

    /// Steady events per second allowed per API key (one shared bucket when auth is off),
    /// next to the request rate: a request takes one token per event, all or none; over the
    /// rate it gets 429 with `Retry-After`. 0 disables.
    #[arg(
        long,
        env = "CHATPIPE_INGEST_RATE_LIMIT_EVENTS_PER_SECOND",
        default_value_t = DEFAULT_RATE_LIMIT_EVENTS_PER_SECOND
    )]
    pub rate_limit_events_per_second: u32,

    /// Events a key may send in a burst above the steady event rate (token bucket size); at
    /// least --max-batch, so a full request can pass.
    #[arg(long, env = "CHATPIPE_INGEST_RATE_LIMIT_EVENTS_BURST", default_value_t = DEFAULT_RATE_LIMIT_EVENTS_BURST)]
    pub rate_limit_events_burst: u32,

    /// How long a client may take to send its request body; then 408. The body is received
    /// before the request takes an in-flight slot, so slow clients do not hold slots.
    #[arg(long, env = "CHATPIPE_INGEST_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub read_timeout: Duration,

    /// On shutdown, how long to wait for in-flight requests and the producer flush
    /// (below Kubernetes' default 30 s grace period).
    #[arg(long, env = "CHATPIPE_INGEST_DRAIN_TIMEOUT", default_value = "25s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Most validation errors listed in one 400 response.
    #[arg(long, env = "CHATPIPE_INGEST_MAX_ERRORS", default_value_t = DEFAULT_MAX_ERRORS)]
    pub max_errors: usize,
}

impl Config {
    /// The defaults of every flag, with auth off, listening on `127.0.0.1:0` (both ports):
    /// for tests and the all-in-one `dev` command. Set `api_keys_file` (and clear
    /// `insecure_no_auth`) to require keys.
    pub fn new(kafka: KafkaArgs) -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            kafka,
            api_keys_file: None,
            insecure_no_auth: true,
            events_topic: topics::EVENTS.to_owned(),
            events_partitions: DEFAULT_EVENTS_PARTITIONS,
            max_batch: DEFAULT_MAX_BATCH,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_clock_skew: Duration::from_secs(60),
            worker_id: None,
            linger: Duration::from_millis(5),
            produce_timeout: Duration::from_secs(5),
            max_inflight_requests: DEFAULT_MAX_INFLIGHT_REQUESTS,
            max_buffered_body_bytes: DEFAULT_MAX_BUFFERED_BODY_BYTES,
            rate_limit_per_second: DEFAULT_RATE_LIMIT_PER_SECOND,
            rate_limit_burst: DEFAULT_RATE_LIMIT_BURST,
            rate_limit_events_per_second: DEFAULT_RATE_LIMIT_EVENTS_PER_SECOND,
            rate_limit_events_burst: DEFAULT_RATE_LIMIT_EVENTS_BURST,
            read_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(25),
            max_errors: DEFAULT_MAX_ERRORS,
        }
    }

    /// Checks what clap cannot: every problem is reported by flag name.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.api_keys_file.is_none() && !self.insecure_no_auth {
            return Err("either --api-keys-file or --insecure-no-auth is required".into());
        }
        if self.max_batch == 0 {
            return Err("--max-batch must be at least 1".into());
        }
        if self.max_body_bytes == 0 {
            return Err("--max-body-bytes must be at least 1".into());
        }
        if self.max_inflight_requests == 0 {
            return Err("--max-inflight-requests must be at least 1".into());
        }
        if self.rate_limit_per_second > 0 && self.rate_limit_burst == 0 {
            return Err("--rate-limit-burst must be at least 1 when rate limiting is on".into());
        }
        if self.rate_limit_events_per_second > 0
            && usize::try_from(self.rate_limit_events_burst).is_ok_and(|b| b < self.max_batch)
        {
            return Err(format!(
                "--rate-limit-events-burst ({}) must be at least --max-batch ({}) when the event rate is limited",
                self.rate_limit_events_burst, self.max_batch
            ));
        }
        if self.max_buffered_body_bytes < self.max_body_bytes {
            return Err(format!(
                "--max-buffered-body-bytes ({}) must be at least --max-body-bytes ({})",
                self.max_buffered_body_bytes, self.max_body_bytes
            ));
        }
        if self.read_timeout.is_zero() {
            return Err("--read-timeout must be positive".into());
        }
        if self.produce_timeout.is_zero() {
            return Err("--produce-timeout must be positive".into());
        }
        if self.linger >= self.produce_timeout {
            return Err("--linger must be shorter than --produce-timeout".into());
        }
        if self.events_partitions < 1 {
            return Err("--events-partitions must be at least 1".into());
        }
        if self.max_errors == 0 {
            return Err("--max-errors must be at least 1".into());
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
        let parsed = Cli::try_parse_from(["ingest", "--insecure-no-auth", "--listen", "127.0.0.1:0"]).unwrap().config;
        let mut built = Config::new(parsed.kafka.clone());
        built.metrics_listen = parsed.metrics_listen;
        assert_eq!(format!("{parsed:?}"), format!("{built:?}"));
        assert_eq!(parsed.metrics_listen, SocketAddr::from(([127, 0, 0, 1], 9464)));
        assert!(built.validate().is_ok());
    }

    #[test]
    fn auth_must_be_chosen_explicitly() {
        assert!(Cli::try_parse_from(["ingest"]).is_err(), "neither keys nor --insecure-no-auth");
        assert!(Cli::try_parse_from(["ingest", "--insecure-no-auth", "--api-keys-file", "k"]).is_err());
        let c = Cli::try_parse_from(["ingest", "--api-keys-file", "keys.txt"]).unwrap().config;
        assert!(!c.insecure_no_auth);
    }

    #[test]
    fn durations_and_ranges_parse() {
        let c = Cli::try_parse_from([
            "ingest",
            "--insecure-no-auth",
            "--max-clock-skew",
            "2m",
            "--linger",
            "1ms",
            "--worker-id",
            "1023",
        ])
        .unwrap()
        .config;
        assert_eq!(c.max_clock_skew, Duration::from_secs(120));
        assert_eq!(c.linger, Duration::from_millis(1));
        assert_eq!(c.worker_id, Some(1023));
        assert!(Cli::try_parse_from(["ingest", "--insecure-no-auth", "--worker-id", "1024"]).is_err());
        assert!(Cli::try_parse_from(["ingest", "--insecure-no-auth", "--events-partitions", "0"]).is_err());
    }

    #[test]
    fn validate_names_the_flag() {
        let mut c = Config::new(KafkaArgs::new("b:1"));
        c.rate_limit_burst = 0;
        assert!(c.validate().unwrap_err().contains("--rate-limit-burst"));
        let mut c = Config::new(KafkaArgs::new("b:1"));
        c.linger = Duration::from_secs(10);
        assert!(c.validate().unwrap_err().contains("--linger"));
        let mut c = Config::new(KafkaArgs::new("b:1"));
        c.rate_limit_events_burst = 999;
        assert!(c.validate().unwrap_err().contains("--rate-limit-events-burst"));
        c.rate_limit_events_per_second = 0;
        assert!(c.validate().is_ok(), "no event rate, no burst to check");
        let mut c = Config::new(KafkaArgs::new("b:1"));
        c.max_buffered_body_bytes = c.max_body_bytes - 1;
        assert!(c.validate().unwrap_err().contains("--max-buffered-body-bytes"));
    }

    #[test]
    fn hardening_flags_parse() {
        let c = Cli::try_parse_from([
            "ingest",
            "--insecure-no-auth",
            "--rate-limit-events-per-second",
            "50",
            "--rate-limit-events-burst",
            "1000",
            "--max-buffered-body-bytes",
            "4194304",
            "--read-timeout",
            "2s",
        ])
        .unwrap()
        .config;
        assert_eq!((c.rate_limit_events_per_second, c.rate_limit_events_burst), (50, 1000));
        assert_eq!(c.max_buffered_body_bytes, 4 << 20);
        assert_eq!(c.read_timeout, Duration::from_secs(2));
        assert!(c.validate().is_ok());
    }
}
