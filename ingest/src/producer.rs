//! Publishing to Kafka with a per-event delivery status, and Kafka readiness.
//!
//! Guarantee (DESIGN §7): [`EventProducer::publish`] reports an event as
//! [`Delivery::Accepted`] only after its delivery report says Kafka acknowledged it
//! (idempotent producer, `acks=all`). Anything else — queue full for the whole produce
//! timeout, a delivery error, no report within the timeout — is [`Delivery::Failed`] with a
//! code, and the caller must treat the event as *not known to be written* (it may still
//! have been, so the producer retries it with the same `client_msg_id` and the processor
//! dedupes). Events are enqueued in request order, each keyed by its session id, so the
//! events of one conversation in one request keep their order in the partition.
//!
//! Readiness: [`EventProducer::watch`] creates the events topic (retrying with backoff
//! until it succeeds) and then probes the broker with a metadata request every second;
//! the health component [`HEALTH_COMPONENT`] is ready only while the topic exists and the
//! broker answers. A failed delivery marks it not ready at once; the next good probe or
//! acknowledged delivery marks it ready again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatpipe_common::envelope;
use chatpipe_common::event::ChatEvent;
use chatpipe_common::http::Health;
use chatpipe_common::kafka::{ensure_topics, KafkaArgs, TopicSpec};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use tokio_util::sync::CancellationToken;

use crate::metrics::{kind, outcome, IngestMetrics};
use crate::{Config, Error};

/// The readiness component this module reports.
pub const HEALTH_COMPONENT: &str = "kafka";

/// How long to keep waiting for delivery reports after `--produce-timeout`: librdkafka
/// reports a timed-out message itself at `message.timeout.ms`, this only guards against a
/// report that never comes.
const REPORT_GRACE: Duration = Duration::from_secs(1);
/// How often the broker is probed.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Timeout of one probe (metadata request).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Backoff of topic creation: from 0.5 s, doubling, up to 30 s.
const SETUP_BACKOFF_MIN: Duration = Duration::from_millis(500);
const SETUP_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Pause between attempts to enqueue while the producer queue is full.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(2);

/// What happened to one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Acknowledged by Kafka.
    Accepted {
        /// Partition written.
        partition: i32,
        /// Offset written.
        offset: i64,
    },
    /// Not acknowledged (it may or may not have been written).
    Failed(Failure),
}

/// Why an event was not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Machine-readable: `timeout`, `queue_full`, `rejected`, `encode`, `producer_closed`.
    pub code: &'static str,
    /// Human-readable detail (the Kafka error).
    pub message: String,
    /// Whether sending the same event again may succeed.
    pub retriable: bool,
}

impl Failure {
    fn new(code: &'static str, message: impl Into<String>, retriable: bool) -> Self {
        Failure { code, message: message.into(), retriable }
    }

    /// Classifies a delivery error.
    fn from_kafka(e: &KafkaError) -> Self {
        match e.rdkafka_error_code() {
            Some(RDKafkaErrorCode::MessageTimedOut | RDKafkaErrorCode::RequestTimedOut) => {
                Failure::new("timeout", e.to_string(), true)
            }
            Some(RDKafkaErrorCode::QueueFull) => Failure::new("queue_full", e.to_string(), true),
            Some(
                RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::InvalidRecord,
            ) => Failure::new("rejected", e.to_string(), false),
            _ => Failure::new("kafka_error", e.to_string(), true),
        }
    }

    fn metric_kind(&self) -> &'static str {
        match self.code {
            "timeout" => kind::PRODUCE_TIMEOUT,
            "queue_full" => kind::QUEUE_FULL,
            "encode" => kind::ENCODE,
            _ => kind::DELIVERY,
        }
    }
}

/// Readiness shared by the watcher, the producer context and the request path.
#[derive(Debug, Default)]
pub(crate) struct Readiness {
    /// The events topic was created (or found).
    pub(crate) topic: AtomicBool,
    /// The last probe or delivery succeeded.
    pub(crate) broker: AtomicBool,
}

impl Readiness {
    fn publish(&self, health: &Health) {
        health.set(HEALTH_COMPONENT, self.is_ready());
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.topic.load(Ordering::Acquire) && self.broker.load(Ordering::Acquire)
    }
}

/// librdkafka callbacks: client errors are counted and logged through `tracing`; "all
/// brokers down" and fatal errors flip readiness at once.
pub(crate) struct IngestContext {
    metrics: IngestMetrics,
    readiness: Arc<Readiness>,
    health: Health,
}

impl ClientContext for IngestContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.metrics.error(kind::KAFKA_CLIENT);
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AllBrokersDown) => {
                self.readiness.broker.store(false, Ordering::Release);
                self.readiness.publish(&self.health);
                tracing::warn!(%error, reason, "all Kafka brokers are down; not ready");
            }
            Some(RDKafkaErrorCode::Fatal) => {
                self.readiness.broker.store(false, Ordering::Release);
                self.readiness.publish(&self.health);
                tracing::error!(%error, reason, "fatal Kafka producer error: restart ingest");
            }
            _ => tracing::warn!(%error, reason, "Kafka client error"),
        }
    }
}

/// The producer of `chat.events`.
pub(crate) struct EventProducer {
    producer: FutureProducer<IngestContext>,
    topic: String,
    topic_spec: TopicSpec,
    kafka: KafkaArgs,
    produce_timeout: Duration,
    metrics: IngestMetrics,
    readiness: Arc<Readiness>,
    health: Health,
}

impl EventProducer {
    /// Creates the producer (no network I/O yet).
    pub(crate) fn new(config: &Config, metrics: IngestMetrics, health: Health) -> Result<Self, Error> {
        let readiness = Arc::new(Readiness::default());
        let mut cfg = config.kafka.producer_config("ingest", duration_ms(config.linger));
        // --produce-timeout bounds a request's wait; let librdkafka give up on a message at
        // the same time so the report says so, unless the operator chose otherwise.
        let user_set = |key: &str| config.kafka.options.iter().any(|o| o.key == key);
        if !user_set("message.timeout.ms") && !user_set("delivery.timeout.ms") {
            cfg.set("message.timeout.ms", duration_ms(config.produce_timeout).to_string());
        }
        if !user_set("request.timeout.ms") {
            cfg.set("request.timeout.ms", duration_ms(config.produce_timeout).clamp(1, 30_000).to_string());
        }
        let context = IngestContext { metrics: metrics.clone(), readiness: readiness.clone(), health: health.clone() };
        let producer = cfg.create_with_context(context).map_err(Error::Producer)?;
        health.set(HEALTH_COMPONENT, false);
        Ok(EventProducer {
            producer,
            topic: config.events_topic.clone(),
            topic_spec: TopicSpec::new(&config.events_topic, config.events_partitions),
            kafka: config.kafka.clone(),
            produce_timeout: config.produce_timeout,
            metrics,
            readiness,
            health,
        })
    }

    /// Whether the events topic exists (requests are refused with 503 before).
    pub(crate) fn topic_ready(&self) -> bool {
        self.readiness.topic.load(Ordering::Acquire)
    }

    /// Whether the topic exists and the broker answers.
    pub(crate) fn is_ready(&self) -> bool {
        self.readiness.is_ready()
    }

    fn set_broker_ready(&self, ready: bool) {
        if self.readiness.broker.swap(ready, Ordering::AcqRel) != ready {
            self.readiness.publish(&self.health);
            if ready {
                tracing::info!(topic = %self.topic, "Kafka is reachable; ready");
            } else {
                tracing::warn!(topic = %self.topic, "Kafka deliveries or probes fail; not ready");
            }
        }
    }

    /// Produces every event and waits (at most `--produce-timeout` plus a short grace) for
    /// all delivery reports. Returns one status per event, in order.
    pub(crate) async fn publish(&self, events: &[ChatEvent]) -> Vec<Delivery> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.produce_timeout;
        let mut statuses: Vec<Option<Delivery>> = vec![None; events.len()];
        let mut pending = Vec::with_capacity(events.len());
        let mut gave_up: Option<Failure> = None;
        let mut payload = Vec::with_capacity(512);
        for (i, ev) in events.iter().enumerate() {
            if let Some(f) = &gave_up {
                statuses[i] = Some(Delivery::Failed(f.clone()));
                continue;
            }
            if let Err(e) = envelope::encode_into(ev, &mut payload) {
                statuses[i] = Some(Delivery::Failed(Failure::new("encode", e.to_string(), false)));
                continue;
            }
            let key = ev.session_id.to_string();
            let mut record = FutureRecord::to(&self.topic).key(&key).payload(&payload);
            loop {
                match self.producer.send_result(record) {
                    Ok(fut) => {
                        pending.push((i, fut));
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        if tokio::time::Instant::now() >= deadline {
                            // Nothing later in the request is enqueued either: a retry then
                            // resends a suffix, keeping each conversation's order.
                            let f = Failure::new(
                                "queue_full",
                                "the producer queue stayed full for the produce timeout",
                                true,
                            );
                            statuses[i] = Some(Delivery::Failed(f.clone()));
                            gave_up = Some(f);
                            break;
                        }
                        record = back;
                        tokio::time::sleep(QUEUE_FULL_PAUSE).await;
                    }
                    Err((e, _)) => {
                        statuses[i] = Some(Delivery::Failed(Failure::from_kafka(&e)));
                        break;
                    }
                }
            }
        }
        let report_deadline = deadline + REPORT_GRACE;
        for (i, fut) in pending {
            let status = match tokio::time::timeout_at(report_deadline, fut).await {
                Ok(Ok(Ok(d))) => Delivery::Accepted { partition: d.partition, offset: d.offset },
                Ok(Ok(Err((e, _)))) => Delivery::Failed(Failure::from_kafka(&e)),
                Ok(Err(_canceled)) => {
                    Delivery::Failed(Failure::new("producer_closed", "the producer was closed", true))
                }
                Err(_elapsed) => Delivery::Failed(Failure::new(
                    "timeout",
                    "no acknowledgement from Kafka within the produce timeout",
                    true,
                )),
            };
            statuses[i] = Some(status);
        }
        let statuses: Vec<Delivery> = statuses
            .into_iter()
            .map(|s| s.unwrap_or_else(|| Delivery::Failed(Failure::new("internal", "no status", true))))
            .collect();
        let mut accepted = 0u64;
        let mut failed = 0u64;
        for s in &statuses {
            match s {
                Delivery::Accepted { .. } => accepted += 1,
                Delivery::Failed(f) => {
                    failed += 1;
                    self.metrics.error(f.metric_kind());
                }
            }
        }
        self.metrics.events.with_label_values(&[outcome::ACCEPTED]).inc_by(accepted);
        if failed > 0 {
            self.metrics.events.with_label_values(&[outcome::FAILED]).inc_by(failed);
            let broker_trouble = statuses.iter().any(|s| {
                matches!(s, Delivery::Failed(f) if matches!(f.code, "timeout" | "queue_full" | "kafka_error"))
            });
            if broker_trouble {
                self.set_broker_ready(false);
            }
        } else {
            self.metrics.produce_latency.observe(started.elapsed().as_secs_f64());
            self.set_broker_ready(true);
        }
        statuses
    }

    /// Creates the topic (retrying with backoff until it succeeds), then probes the broker
    /// every second until `cancel`; recreates the topic if it disappears.
    pub(crate) async fn watch(self: Arc<Self>, cancel: CancellationToken) {
        let mut backoff = SETUP_BACKOFF_MIN;
        loop {
            if !self.topic_ready() {
                let r = tokio::select! {
                    biased;
                    () = cancel.cancelled() => return,
                    r = ensure_topics(&self.kafka, std::slice::from_ref(&self.topic_spec), PROBE_TIMEOUT * 5) => r,
                };
                match r {
                    Ok(()) => {
                        tracing::info!(topic = %self.topic, partitions = self.topic_spec.partitions, "events topic ready");
                        self.readiness.topic.store(true, Ordering::Release);
                        self.readiness.publish(&self.health);
                        backoff = SETUP_BACKOFF_MIN;
                    }
                    Err(error) => {
                        self.metrics.error(kind::TOPIC_SETUP);
                        tracing::warn!(
                            topic = %self.topic,
                            %error,
                            retry_in = ?backoff,
                            "cannot create the events topic; not ready, retrying"
                        );
                        tokio::select! {
                            biased;
                            () = cancel.cancelled() => return,
                            () = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(SETUP_BACKOFF_MAX);
                        continue;
                    }
                }
            }
            let probe = self.probe();
            let ok = tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                ok = probe => ok,
            };
            self.set_broker_ready(ok);
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(PROBE_INTERVAL) => {}
            }
        }
    }

    /// One metadata request for the events topic. `false` if the broker does not answer or
    /// the topic has no partitions (then the topic is created again).
    async fn probe(&self) -> bool {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        let result =
            tokio::task::spawn_blocking(move || producer.client().fetch_metadata(Some(&topic), PROBE_TIMEOUT)).await;
        match result {
            Ok(Ok(md)) => {
                let present = md
                    .topics()
                    .iter()
                    .any(|t| t.name() == self.topic && t.error().is_none() && !t.partitions().is_empty());
                if !present {
                    tracing::warn!(topic = %self.topic, "events topic is missing; creating it again");
                    self.readiness.topic.store(false, Ordering::Release);
                    self.readiness.publish(&self.health);
                }
                present
            }
            Ok(Err(error)) => {
                self.metrics.error(kind::PROBE);
                tracing::debug!(%error, "Kafka probe failed");
                false
            }
            Err(_join) => false,
        }
    }

    /// Waits until every queued message is delivered or `timeout` passes.
    pub(crate) async fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .unwrap_or(Err(KafkaError::Canceled))
    }

    /// Messages not yet acknowledged.
    pub(crate) fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }

    /// Marks the component not ready (shutdown).
    pub(crate) fn mark_stopping(&self) {
        self.readiness.broker.store(false, Ordering::Release);
        self.readiness.publish(&self.health);
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_classified_with_retry_hints() {
        let t = Failure::from_kafka(&KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut));
        assert_eq!((t.code, t.retriable), ("timeout", true));
        let r = Failure::from_kafka(&KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge));
        assert_eq!((r.code, r.retriable), ("rejected", false));
        let o = Failure::from_kafka(&KafkaError::MessageProduction(RDKafkaErrorCode::NotEnoughReplicas));
        assert_eq!((o.code, o.retriable), ("kafka_error", true));
    }
}
