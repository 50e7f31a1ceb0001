//! Kafka client configuration shared by every role, topic creation, and the DLQ contract.
//!
//! [`KafkaArgs`] is flattened into each role's clap config: `--kafka-brokers`,
//! `--kafka-client-id` and repeatable `--kafka-option key=value` passed through to
//! librdkafka (SASL and TLS settings go here). Values of secret options (passwords, secrets,
//! JAAS and key material) are redacted in `Debug` and never appear in errors or logs.

use std::fmt;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// DLQ record headers (DESIGN §3: the reason travels in headers; the value is the original
/// record's value, the key its key).
pub mod dlq {
    /// Why the record was rejected (short code, e.g. `undecodable`, `late`, `permanent`).
    pub const REASON: &str = "chatpipe.reason";
    /// Human-readable detail of the reason.
    pub const DETAIL: &str = "chatpipe.detail";
    /// Stage that rejected it: `ingest`, `processor`, `sink`.
    pub const STAGE: &str = "chatpipe.stage";
    /// Source topic.
    pub const TOPIC: &str = "chatpipe.source.topic";
    /// Source partition (decimal).
    pub const PARTITION: &str = "chatpipe.source.partition";
    /// Source offset (decimal).
    pub const OFFSET: &str = "chatpipe.source.offset";
}

/// `fetch.wait.max.ms` of chatpipe's consumers: how long a broker may hold a fetch that
/// found too little data. Kafka answers as soon as data arrives, so there this only sets how
/// often an idle consumer asks (20 small requests a second per broker). tansu 0.6 holds every
/// fetch for up to about this long even when data is there, so librdkafka's default of 500 ms
/// would add up to half a second per consumer hop (two on the way to HBase).
pub const FETCH_WAIT_MAX_MS: &str = "50";

/// Default topic names (DESIGN §3).
pub mod topics {
    /// Chat events from ingest.
    pub const EVENTS: &str = "chat.events";
    /// Row mutations for the sink.
    pub const ROWS: &str = "chat.rows";
    /// Per-session window counts (JSON).
    pub const AGG_SESSION: &str = "chat.agg.session.1m";
    /// Global window counts (JSON).
    pub const AGG_GLOBAL: &str = "chat.agg.global.1m";
    /// Unread counts (JSON, compacted).
    pub const UNREAD: &str = "chat.unread";
    /// Processor state changelog (compacted).
    pub const CHANGELOG: &str = "chatpipe.processor.changelog";
    /// Dead letters of every stage.
    pub const DLQ: &str = "chat.dlq";
}

/// One `key=value` librdkafka option.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaOption {
    /// librdkafka property name.
    pub key: String,
    /// Its value (possibly secret).
    pub value: String,
}

/// Whether a librdkafka property holds secret material.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "secret", "jaas", "ssl.key", "oauthbearer.config", "token", "credential"].iter().any(|s| k.contains(s))
}

impl KafkaOption {
    /// The value, or `***` when the key is secret: safe to log.
    pub fn display_value(&self) -> &str {
        if is_secret_key(&self.key) {
            "***"
        } else {
            &self.value
        }
    }
}

impl fmt::Debug for KafkaOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, self.display_value())
    }
}

/// Parses `key=value`. The error never repeats the input (it may be a secret).
pub fn parse_kafka_option(s: &str) -> Result<KafkaOption, String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok(KafkaOption { key: k.trim().to_owned(), value: v.to_owned() }),
        _ => Err("--kafka-option expects key=value (the given value is not shown)".to_owned()),
    }
}

/// clap parser for `--kafka-option` whose errors do not echo the value (clap's default
/// message quotes the offending input).
#[derive(Clone, Copy, Debug)]
pub struct KafkaOptionParser;

impl clap::builder::TypedValueParser for KafkaOptionParser {
    type Value = KafkaOption;
    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<KafkaOption, clap::Error> {
        let s = value
            .to_str()
            .ok_or_else(|| clap::Error::raw(clap::error::ErrorKind::InvalidUtf8, "--kafka-option is not UTF-8\n"))?;
        parse_kafka_option(s).map_err(|m| clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{m}\n")))
    }
}

/// Consumer-group defaults of the roles that consume in a group (processor, sink), which
/// `--kafka-option` overrides: a 10 s session with 1 s heartbeats, so a killed member's
/// partitions move within seconds, and cooperative-sticky assignment, so a member joining or
/// leaving moves only the partitions that must move (the others keep running, and the
/// processor restores nothing for them). With static membership (`group.instance.id`)
/// tansu 0.6 misassigns under cooperative-sticky (DESIGN §2); on tansu use
/// `--kafka-option partition.assignment.strategy=range` together with it.
pub const GROUP_DEFAULTS: &[(&str, &str)] = &[
    ("session.timeout.ms", "10000"),
    ("heartbeat.interval.ms", "1000"),
    ("partition.assignment.strategy", "cooperative-sticky"),
];

/// The session timeout a consumer configuration ends up with (librdkafka's default, 45 s,
/// when unset or unreadable).
pub fn session_timeout(cfg: &ClientConfig) -> Duration {
    let ms = cfg.get("session.timeout.ms").and_then(|v| v.parse::<u64>().ok()).unwrap_or(45_000);
    Duration::from_millis(ms)
}

/// Kafka connection flags shared by every role.
#[derive(clap::Args, Clone)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma-separated HOST:PORT.
    #[arg(long = "kafka-brokers", env = "CHATPIPE_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Client id reported to the brokers (a role suffix is appended).
    #[arg(long = "kafka-client-id", env = "CHATPIPE_KAFKA_CLIENT_ID", default_value = "chatpipe")]
    pub client_id: String,
    /// librdkafka property passed through as is, e.g. `security.protocol=SASL_SSL`;
    /// repeatable. In the environment, one `key=value` per line.
    #[arg(long = "kafka-option", env = "CHATPIPE_KAFKA_OPTIONS", value_parser = KafkaOptionParser, value_delimiter = '\n', hide_env_values = true)]
    pub options: Vec<KafkaOption>,
}

impl fmt::Debug for KafkaArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaArgs")
            .field("brokers", &self.brokers)
            .field("client_id", &self.client_id)
            .field("options", &self.options)
            .finish()
    }
}

/// librdkafka properties only a producer reads (a consumer given one logs `CONFWARN`).
pub const PRODUCER_ONLY: [&str; 16] = [
    "acks",
    "batch.num.messages",
    "batch.size",
    "compression.codec",
    "compression.level",
    "compression.type",
    "delivery.timeout.ms",
    "enable.idempotence",
    "linger.ms",
    "message.send.max.retries",
    "message.timeout.ms",
    "queue.buffering.max.kbytes",
    "queue.buffering.max.messages",
    "queue.buffering.max.ms",
    "request.required.acks",
    "retries",
];

impl KafkaArgs {
    /// Arguments for a broker at `brokers` with no options (tests, dev).
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaArgs { brokers: brokers.into(), client_id: "chatpipe".to_owned(), options: Vec::new() }
    }

    /// A base configuration for a role's consumer or admin client (`role` is appended to
    /// the client id). User options are applied last, so they override chatpipe's defaults;
    /// producer-only ones ([`PRODUCER_ONLY`]) are left to the producers, so that one
    /// `--kafka-option compression.type=…` does not make every consumer log a warning.
    pub fn client_config(&self, role: &str) -> ClientConfig {
        self.client_config_with(role, &[])
    }

    /// A consumer configuration: [`Self::client_config`] with chatpipe's consumer defaults
    /// ([`FETCH_WAIT_MAX_MS`]), which the user's `--kafka-option`s override.
    pub fn consumer_config(&self, role: &str) -> ClientConfig {
        self.client_config_with(role, &[("fetch.wait.max.ms", FETCH_WAIT_MAX_MS)])
    }

    /// A consumer or admin client configuration with chatpipe's `defaults` for a role, which
    /// the user's `--kafka-option`s override (producer-only ones skipped, as in
    /// [`Self::client_config`]).
    pub fn client_config_with(&self, role: &str, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &self.brokers).set("client.id", format!("{}-{role}", self.client_id));
        for (k, v) in defaults {
            cfg.set(*k, *v);
        }
        for o in self.options.iter().filter(|o| !PRODUCER_ONLY.contains(&o.key.as_str())) {
            cfg.set(&o.key, &o.value);
        }
        cfg
    }

    /// A producer configuration with the delivery guarantee of DESIGN §7: idempotent,
    /// `acks=all`, lz4. `linger_ms` trades latency for batching.
    pub fn producer_config(&self, role: &str, linger_ms: u64) -> ClientConfig {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &self.brokers)
            .set("client.id", format!("{}-{role}", self.client_id))
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "lz4")
            .set("linger.ms", linger_ms.to_string())
            .set("message.timeout.ms", "30000");
        for o in &self.options {
            cfg.set(&o.key, &o.value);
        }
        cfg
    }

    /// A producer configuration for a role that awaits and retries every delivery itself
    /// (processor, sink): [`KafkaArgs::producer_config`] without a local message timeout,
    /// unless `--kafka-option` sets one. A local timeout would only make the idempotent
    /// producer bump its epoch (KIP-360), which tansu 0.6 answers by refusing every later
    /// request (DESIGN §2); Kafka does not need it either.
    pub fn awaited_producer_config(&self, role: &str, linger_ms: u64) -> ClientConfig {
        let mut cfg = self.producer_config(role, linger_ms);
        if !self.options.iter().any(|o| o.key == "message.timeout.ms" || o.key == "delivery.timeout.ms") {
            cfg.set("message.timeout.ms", "0");
        }
        cfg
    }
}

/// A topic a role needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Topic name.
    pub name: String,
    /// Partition count when it is created.
    pub partitions: i32,
    /// Compacted (`cleanup.policy=compact`) instead of deleted by time.
    pub compacted: bool,
    /// Further topic configuration set when it is created.
    pub configs: Vec<(&'static str, String)>,
}

impl TopicSpec {
    /// A time-retained topic.
    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        TopicSpec { name: name.into(), partitions, compacted: false, configs: Vec::new() }
    }
    /// A compacted topic.
    pub fn compacted(name: impl Into<String>, partitions: i32) -> Self {
        TopicSpec { name: name.into(), partitions, compacted: true, configs: Vec::new() }
    }
    /// With a topic configuration entry.
    pub fn with(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.configs.push((key, value.into()));
        self
    }
}

/// Creates the topics that do not exist yet; existing ones are left as they are.
pub async fn ensure_topics(args: &KafkaArgs, specs: &[TopicSpec], timeout: Duration) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = args.client_config("admin").create()?;
    let new: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|s| {
            let mut t = NewTopic::new(&s.name, s.partitions, TopicReplication::Fixed(-1));
            if s.compacted {
                t = t.set("cleanup.policy", "compact");
            }
            for (k, v) in &s.configs {
                t = t.set(k, v);
            }
            t
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(timeout)).request_timeout(Some(timeout));
    let results = admin.create_topics(new.iter(), &opts).await?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(KafkaError::AdminOp(code))
                    .inspect_err(|_| tracing::error!(topic = %name, %code, "topic creation failed"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        kafka: KafkaArgs,
    }

    #[test]
    fn secrets_are_redacted_in_debug_and_errors() {
        let cli = Cli::try_parse_from([
            "x",
            "--kafka-brokers",
            "b:9092",
            "--kafka-option",
            "sasl.password=hunter2",
            "--kafka-option",
            "security.protocol=SASL_SSL",
            "--kafka-option",
            "sasl.jaas.config=org.Foo required password=\"s3cr3t\";",
        ])
        .unwrap();
        let dbg = format!("{:?}", cli);
        assert!(!dbg.contains("hunter2") && !dbg.contains("s3cr3t"), "{dbg}");
        assert!(dbg.contains("security.protocol=SASL_SSL"));
        let cfg = cli.kafka.client_config("test");
        assert_eq!(cfg.get("sasl.password"), Some("hunter2"));
        assert_eq!(cfg.get("client.id"), Some("chatpipe-test"));
        let err = Cli::try_parse_from(["x", "--kafka-option", "hunter2"]).unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn producer_only_options_reach_producers_and_not_consumers() {
        let mut args = KafkaArgs::new("b:1");
        for o in ["compression.type=none", "max.in.flight.requests.per.connection=2", "linger.ms=7"] {
            args.options.push(parse_kafka_option(o).unwrap());
        }
        let producer = args.producer_config("ingest", 5);
        assert_eq!(producer.get("compression.type"), Some("none"));
        assert_eq!(producer.get("linger.ms"), Some("7"));
        for consumer in [args.consumer_config("sink"), args.client_config("admin")] {
            assert_eq!(consumer.get("compression.type"), None);
            assert_eq!(consumer.get("linger.ms"), None);
            assert_eq!(consumer.get("max.in.flight.requests.per.connection"), Some("2"));
        }
    }

    #[test]
    fn user_options_override_producer_defaults() {
        let mut args = KafkaArgs::new("b:1");
        args.options.push(parse_kafka_option("linger.ms=50").unwrap());
        let cfg = args.producer_config("ingest", 5);
        assert_eq!(cfg.get("linger.ms"), Some("50"));
        assert_eq!(cfg.get("enable.idempotence"), Some("true"));
        assert_eq!(cfg.get("acks"), Some("all"));
    }

    #[test]
    fn awaited_producers_have_no_local_message_timeout_unless_the_user_sets_one() {
        let mut args = KafkaArgs::new("b:1");
        assert_eq!(args.awaited_producer_config("processor", 5).get("message.timeout.ms"), Some("0"));
        assert_eq!(args.producer_config("ingest", 5).get("message.timeout.ms"), Some("30000"));
        args.options.push(parse_kafka_option("message.timeout.ms=900000").unwrap());
        assert_eq!(args.awaited_producer_config("processor", 5).get("message.timeout.ms"), Some("900000"));
    }
}

/// Sets `gauge{topic, partition}` to each assigned partition's consumer lag from a
/// librdkafka statistics report (enable with `statistics.interval.ms`). Partitions that
/// are not assigned (lag -1) are removed from the gauge.
pub fn record_consumer_lag(stats: &rdkafka::Statistics, gauge: &prometheus::IntGaugeVec) {
    for (topic, t) in &stats.topics {
        for (partition, p) in &t.partitions {
            if *partition < 0 {
                continue; // the internal "unassigned" partition
            }
            let part = partition.to_string();
            if p.consumer_lag >= 0 {
                gauge.with_label_values(&[topic.as_str(), part.as_str()]).set(p.consumer_lag);
            } else {
                let _ = gauge.remove_label_values(&[topic.as_str(), part.as_str()]);
            }
        }
    }
}

/// A consumer context that only records consumer lag per partition.
#[derive(Clone)]
pub struct LagContext {
    /// `chatpipe_<stage>_consumer_lag_messages{topic, partition}`.
    pub lag: prometheus::IntGaugeVec,
}

impl rdkafka::ClientContext for LagContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        record_consumer_lag(&statistics, &self.lag);
    }
}

impl rdkafka::consumer::ConsumerContext for LagContext {}
