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
//! Timeouts replace the producer: when a request's deliveries time out, the librdkafka
//! producer is swapped for a new one (a fresh producer id) and the old one is purged and
//! destroyed, failing whatever it still held (those requests answer 503). librdkafka's own
//! message timeout is set beyond `--produce-timeout`, so ingest's timer fires first and the
//! old producer never bumps its epoch locally (KIP-360): tansu 0.6.0 panics in its storage on
//! a produce with a locally bumped epoch and then refuses every request until restarted.
//! With Apache Kafka the swap is merely harmless: everything the old producer held was
//! reported failed ("maybe written"), which the producers retry with the same `client_msg_id`.
//!
//! Readiness: [`EventProducer::watch`] creates the events topic (retrying with backoff
//! until it succeeds) and then probes the broker with a metadata request every second;
//! the health component [`HEALTH_COMPONENT`] is ready only while the topic exists and the
//! broker answers. A failed delivery marks it not ready at once; the next good probe or
//! acknowledged delivery marks it ready again.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chatpipe_common::backoff::Backoff;
use chatpipe_common::envelope;
use chatpipe_common::event::ChatEvent;
use chatpipe_common::http::Health;
use chatpipe_common::kafka::{ensure_topics, KafkaArgs, TopicSpec};
use rdkafka::config::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::{kind, outcome, IngestMetrics};
use crate::{Config, Error};

/// The readiness component this module reports.
pub const HEALTH_COMPONENT: &str = "kafka";

/// librdkafka's `message.timeout.ms` is `--produce-timeout` plus this, so that ingest's own
/// timer (which replaces the producer) always fires first; see the module doc.
const LIBRDKAFKA_TIMEOUT_MARGIN: Duration = Duration::from_secs(5);
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
#[derive(Clone)]
pub(crate) struct IngestContext {
    metrics: IngestMetrics,
    readiness: Arc<Readiness>,
    health: Health,
    /// Set on a fatal error: the watcher replaces the producer.
    needs_reset: Arc<AtomicBool>,
}

impl ClientContext for IngestContext {
    /// librdkafka's own log lines, one level down from its defaults: it calls a refused
    /// connection an error, which is not data at risk (deliveries report that themselves).
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical => {
                tracing::error!(target: "librdkafka", fac, "{log_message}")
            }
            RDKafkaLogLevel::Error | RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", fac, "{log_message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", fac, "{log_message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, "{log_message}"),
        }
    }

    /// Counted always; logged only when it changes something (librdkafka logs connection
    /// failures itself, with its own suppression of repeats), so an outage does not flood
    /// the log.
    fn error(&self, error: KafkaError, reason: &str) {
        self.metrics.error(kind::KAFKA_CLIENT);
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AllBrokersDown) => {
                if self.readiness.broker.swap(false, Ordering::AcqRel) {
                    self.readiness.publish(&self.health);
                    tracing::warn!(%error, reason, "all Kafka brokers are down; not ready");
                }
            }
            Some(RDKafkaErrorCode::Fatal) => {
                self.needs_reset.store(true, Ordering::Release);
                self.readiness.broker.store(false, Ordering::Release);
                self.readiness.publish(&self.health);
                tracing::error!(%error, reason, "fatal Kafka producer error; replacing the producer");
            }
            _ => tracing::debug!(%error, reason, "Kafka client error"),
        }
    }
}

/// Delivery reports go straight into the request's [`Deliveries`] (no channel and no future
/// per event).
impl ProducerContext for IngestContext {
    type DeliveryOpaque = Box<Slot>;

    fn delivery(&self, result: &DeliveryResult<'_>, mut slot: Box<Slot>) {
        slot.report(match result {
            Ok(message) => Delivery::Accepted { partition: message.partition(), offset: message.offset() },
            Err((error, _)) => Delivery::Failed(Failure::from_kafka(error)),
        });
    }
}

/// The statuses of one request's events, filled in by the producer's polling thread.
struct Deliveries {
    statuses: Mutex<Vec<Option<Delivery>>>,
    /// Events without a status yet.
    remaining: AtomicUsize,
    /// Signalled when `remaining` reaches 0 (the permit is kept if nobody waits yet).
    done: Notify,
}

impl Deliveries {
    fn new(events: usize) -> Arc<Self> {
        Arc::new(Deliveries {
            statuses: Mutex::new(vec![None; events]),
            remaining: AtomicUsize::new(events),
            done: Notify::new(),
        })
    }

    /// Records event `index`'s status; called once per event.
    fn set(&self, index: usize, status: Delivery) {
        if let Some(s) = self.statuses.lock().unwrap_or_else(|p| p.into_inner()).get_mut(index) {
            *s = Some(status);
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_one();
        }
    }

    /// The statuses; `None` for events not reported yet.
    fn take(&self) -> Vec<Option<Delivery>> {
        std::mem::take(&mut *self.statuses.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// One enqueued event: reports its status exactly once, from its delivery report or, should
/// librdkafka drop it unreported, as `producer_closed` when dropped.
pub(crate) struct Slot {
    deliveries: Arc<Deliveries>,
    index: usize,
    reported: bool,
}

impl Slot {
    fn report(&mut self, status: Delivery) {
        if !self.reported {
            self.reported = true;
            self.deliveries.set(self.index, status);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.report(Delivery::Failed(Failure::new("producer_closed", "the producer was closed", true)));
    }
}

/// The librdkafka producer in use and its generation (incremented by each replacement).
struct Current {
    generation: u64,
    /// In an `Arc` so that the replaced producer can be destroyed (which blocks: it purges
    /// and joins threads) on a blocking thread once no request holds it any more.
    producer: Arc<ThreadedProducer<IngestContext>>,
}

/// The producer of `chat.events`.
pub(crate) struct EventProducer {
    current: RwLock<Current>,
    client_config: ClientConfig,
    context: IngestContext,
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
            cfg.set("message.timeout.ms", duration_ms(config.produce_timeout + LIBRDKAFKA_TIMEOUT_MARGIN).to_string());
        }
        if !user_set("allow.auto.create.topics") {
            // Topics are created deliberately (with --events-partitions), never as a side
            // effect of a metadata request or a produce.
            cfg.set("allow.auto.create.topics", "false");
        }
        if !user_set("request.timeout.ms") {
            cfg.set("request.timeout.ms", duration_ms(config.produce_timeout).clamp(1, 30_000).to_string());
        }
        let context = IngestContext {
            metrics: metrics.clone(),
            readiness: readiness.clone(),
            health: health.clone(),
            needs_reset: Arc::new(AtomicBool::new(false)),
        };
        let producer = cfg.create_with_context(context.clone()).map_err(Error::Producer)?;
        health.set(HEALTH_COMPONENT, false);
        Ok(EventProducer {
            current: RwLock::new(Current { generation: 0, producer: Arc::new(producer) }),
            client_config: cfg,
            context,
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

    /// The producer in use.
    fn current(&self) -> (u64, Arc<ThreadedProducer<IngestContext>>) {
        let c = self.current.read().unwrap_or_else(|p| p.into_inner());
        (c.generation, c.producer.clone())
    }

    /// Replaces producer `generation` (if still current) by a new one, then purges and
    /// destroys the old one in the background. See the module doc for why.
    fn replace(&self, generation: u64) {
        let old = {
            let mut c = self.current.write().unwrap_or_else(|p| p.into_inner());
            if c.generation != generation {
                return;
            }
            match self.client_config.create_with_context::<_, ThreadedProducer<IngestContext>>(self.context.clone()) {
                Ok(new) => {
                    c.generation += 1;
                    std::mem::replace(&mut c.producer, Arc::new(new))
                }
                Err(error) => {
                    tracing::error!(%error, "cannot create a new Kafka producer; keeping the old one");
                    return;
                }
            }
        };
        self.context.needs_reset.store(false, Ordering::Release);
        self.metrics.error(kind::PRODUCER_REPLACED);
        tracing::warn!(generation = generation + 1, "deliveries timed out: replaced the Kafka producer");
        // Purging fails what the old producer still holds (those requests answer 503 as
        // soon as the purge is reported). Destroying it blocks (it flushes and joins its
        // threads), so it happens on a blocking thread once the requests let go of it.
        tokio::task::spawn_blocking(move || {
            old.purge(PurgeConfig::default().queue().inflight());
            let mut old = old;
            let give_up = Instant::now() + Duration::from_secs(60);
            loop {
                match Arc::try_unwrap(old) {
                    Ok(producer) => return drop(producer),
                    Err(still_shared) if Instant::now() < give_up => {
                        old = still_shared;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(_) => return, // the last request to finish destroys it
                }
            }
        });
    }

    /// Produces every event and waits (at most `--produce-timeout` from the start, queueing
    /// included) for all delivery reports. Returns one status per event, in order. A
    /// timeout replaces the producer (see the module doc).
    pub(crate) async fn publish(&self, events: &[ChatEvent]) -> Vec<Delivery> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.produce_timeout;
        let (generation, producer) = self.current();
        let deliveries = Deliveries::new(events.len());
        let mut gave_up: Option<Failure> = None;
        let mut payload = Vec::with_capacity(512);
        for (i, ev) in events.iter().enumerate() {
            if let Some(f) = &gave_up {
                deliveries.set(i, Delivery::Failed(f.clone()));
                continue;
            }
            if let Err(e) = envelope::encode_into(ev, &mut payload) {
                deliveries.set(i, Delivery::Failed(Failure::new("encode", e.to_string(), false)));
                continue;
            }
            let mut key = itoa::Buffer::new();
            let key = key.format(ev.session_id);
            let slot = Box::new(Slot { deliveries: deliveries.clone(), index: i, reported: false });
            let mut record = BaseRecord::with_opaque_to(&self.topic, slot).key(key).payload(&payload);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        if tokio::time::Instant::now() >= deadline {
                            // Nothing later in the request is enqueued either: a retry then
                            // resends a suffix, keeping each conversation's order.
                            let f = Failure::new(
                                "queue_full",
                                "the producer queue stayed full for the produce timeout",
                                true,
                            );
                            let mut slot = back.delivery_opaque;
                            slot.report(Delivery::Failed(f.clone()));
                            gave_up = Some(f);
                            break;
                        }
                        record = back;
                        tokio::time::sleep(QUEUE_FULL_PAUSE).await;
                    }
                    Err((e, back)) => {
                        let mut slot = back.delivery_opaque;
                        slot.report(Delivery::Failed(Failure::from_kafka(&e)));
                        break;
                    }
                }
            }
        }
        // One wait for the whole request; what has not been reported by the deadline is a
        // timeout (a report arriving later changes nothing).
        if deliveries.remaining.load(Ordering::Acquire) > 0 {
            tokio::select! {
                biased;
                () = deliveries.done.notified() => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
        let statuses = deliveries.take();
        let statuses: Vec<Delivery> = statuses
            .into_iter()
            .map(|s| {
                s.unwrap_or_else(|| {
                    Delivery::Failed(Failure::new(
                        "timeout",
                        "no acknowledgement from Kafka within the produce timeout",
                        true,
                    ))
                })
            })
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
            let broker_trouble = statuses.iter().any(
                |s| matches!(s, Delivery::Failed(f) if matches!(f.code, "timeout" | "queue_full" | "kafka_error")),
            );
            if broker_trouble {
                self.set_broker_ready(false);
            }
            if statuses.iter().any(|s| matches!(s, Delivery::Failed(f) if f.code == "timeout")) {
                self.replace(generation);
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
        let mut backoff = Backoff::new(SETUP_BACKOFF_MIN, SETUP_BACKOFF_MAX);
        loop {
            if !self.topic_ready() {
                let r = tokio::select! {
                    biased;
                    () = cancel.cancelled() => return,
                    r = self.set_up_topic() => r,
                };
                match r {
                    Ok(()) => {
                        tracing::info!(topic = %self.topic, "events topic ready");
                        self.readiness.topic.store(true, Ordering::Release);
                        self.readiness.publish(&self.health);
                        backoff.reset();
                    }
                    Err(error) => {
                        self.metrics.error(kind::TOPIC_SETUP);
                        let delay = backoff.next_delay();
                        tracing::warn!(
                            topic = %self.topic,
                            %error,
                            retry_in = ?delay,
                            "cannot find or create the events topic; not ready, retrying"
                        );
                        tokio::select! {
                            biased;
                            () = cancel.cancelled() => return,
                            () = tokio::time::sleep(delay) => {}
                        }
                        continue;
                    }
                }
            }
            if self.context.needs_reset.load(Ordering::Acquire) {
                let (generation, _) = self.current();
                self.replace(generation);
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

    /// Whether the events topic exists with partitions (one metadata request; the producer
    /// does not auto-create topics, so asking does not create it).
    async fn topic_present(&self) -> Result<bool, KafkaError> {
        let (_, producer) = self.current();
        let topic = self.topic.clone();
        let md = tokio::task::spawn_blocking(move || producer.client().fetch_metadata(Some(&topic), PROBE_TIMEOUT))
            .await
            .unwrap_or(Err(KafkaError::Canceled))?;
        Ok(md.topics().iter().any(|t| t.name() == self.topic && t.error().is_none() && !t.partitions().is_empty()))
    }

    /// Finds the events topic, or creates it with `--events-partitions` (an existing topic
    /// is used as it is: no create permission is needed then).
    async fn set_up_topic(&self) -> Result<(), KafkaError> {
        if self.topic_present().await? {
            return Ok(());
        }
        ensure_topics(&self.kafka, std::slice::from_ref(&self.topic_spec), PROBE_TIMEOUT * 5).await?;
        tracing::info!(topic = %self.topic, partitions = self.topic_spec.partitions, "created the events topic");
        Ok(())
    }

    /// One probe: `false` if the broker does not answer or the topic has gone (then the
    /// watcher sets it up again).
    async fn probe(&self) -> bool {
        match self.topic_present().await {
            Ok(true) => true,
            Ok(false) => {
                tracing::warn!(topic = %self.topic, "events topic is missing; setting it up again");
                self.readiness.topic.store(false, Ordering::Release);
                self.readiness.publish(&self.health);
                false
            }
            Err(error) => {
                self.metrics.error(kind::PROBE);
                tracing::debug!(%error, "Kafka probe failed");
                false
            }
        }
    }

    /// Waits until every queued message is delivered or `timeout` passes.
    pub(crate) async fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        let (_, producer) = self.current();
        tokio::task::spawn_blocking(move || producer.flush(timeout)).await.unwrap_or(Err(KafkaError::Canceled))
    }

    /// Messages not yet acknowledged.
    pub(crate) fn in_flight(&self) -> i32 {
        self.current().1.in_flight_count()
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

    #[tokio::test]
    async fn every_event_gets_one_status_and_the_request_is_woken_once_all_are_in() {
        let deliveries = Deliveries::new(3);
        let slot = |index| Box::new(Slot { deliveries: deliveries.clone(), index, reported: false });
        let (mut acked, unreported) = (slot(0), slot(1));
        acked.report(Delivery::Accepted { partition: 2, offset: 7 });
        acked.report(Delivery::Failed(Failure::new("rejected", "a second report", false)));
        drop(acked);
        drop(unreported); // dropped by librdkafka without a report
        assert_eq!(deliveries.remaining.load(Ordering::Acquire), 1);
        deliveries.set(2, Delivery::Failed(Failure::new("encode", "bad", false)));
        // the permit is kept although nobody was waiting yet
        tokio::time::timeout(Duration::from_secs(1), deliveries.done.notified()).await.unwrap();
        let statuses = deliveries.take();
        assert_eq!(statuses[0], Some(Delivery::Accepted { partition: 2, offset: 7 }));
        assert!(matches!(&statuses[1], Some(Delivery::Failed(f)) if f.code == "producer_closed"));
        assert!(matches!(&statuses[2], Some(Delivery::Failed(f)) if f.code == "encode"));
    }

    #[test]
    fn a_report_after_the_request_timed_out_is_dropped() {
        let deliveries = Deliveries::new(1);
        let mut late = Box::new(Slot { deliveries: deliveries.clone(), index: 0, reported: false });
        assert_eq!(deliveries.take(), vec![None]); // the request answers "timeout"
        late.report(Delivery::Accepted { partition: 0, offset: 1 });
        assert!(deliveries.take().is_empty());
        assert_eq!(deliveries.remaining.load(Ordering::Acquire), 0);
    }

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
