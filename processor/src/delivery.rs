//! Delivery of a batch's records: building the output records of a batch, producing a set
//! of records and awaiting every acknowledgement.
//!
//! **Guarantee**: [`deliver`] returns only when every record is acknowledged by the broker
//! (a transient failure retries the whole set with backoff: outputs are deterministic, so
//! re-sending is safe); it never drops a record silently.
//!
//! **Failure behaviour**: a record refused for what it is (over the size limit) is replaced
//! by a DLQ record naming it (reason `output_refused`) instead of stalling the partition; an
//! output that fails to encode is counted as an error and logged; while the broker does not
//! answer, readiness reports Kafka down and a warning is counted every 30 s. A producer the
//! client declares failed for good (a fatal error, or fenced by the broker — tansu 0.6 fences
//! an idempotent producer whose process was frozen past its timeouts) is replaced by a new one
//! (`errors_total{kind="producer_fatal"}`) and the set is sent again through it: without that,
//! a partition task would retry on a dead producer forever.

use std::sync::Mutex;
use std::time::Duration;

use futures::future::join_all;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::FutureProducer;
use rdkafka::producer::FutureRecord;
use rdkafka::producer::Producer;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::Message;

use chatpipe_common::backoff::Backoff;
use chatpipe_common::envelope;
use chatpipe_common::http::Telemetry;
use chatpipe_common::kafka::dlq;

use crate::changelog;
use crate::config::Config;
use crate::core::{Outcome, Outputs};
use crate::metrics::ProcessorMetrics;

/// What delivering needs: the producer, where refused records go, and where to report.
pub(crate) struct Delivery {
    producer: RenewableProducer,
    pub(crate) metrics: ProcessorMetrics,
    pub(crate) telemetry: Telemetry,
    pub(crate) dlq_topic: String,
}

impl Delivery {
    /// Creates the first producer with `make`, which also makes its replacements.
    pub(crate) fn new(
        make: impl Fn() -> KafkaResult<FutureProducer> + Send + Sync + 'static,
        metrics: ProcessorMetrics,
        telemetry: Telemetry,
        dlq_topic: String,
    ) -> KafkaResult<Self> {
        Ok(Delivery { producer: RenewableProducer::new(Box::new(make))?, metrics, telemetry, dlq_topic })
    }

    /// The current producer and its generation (to name it in [`Delivery::renew_if_failed`]).
    pub(crate) fn producer(&self) -> (u64, FutureProducer) {
        self.producer.current()
    }

    /// Replaces producer `generation` if it failed for good (`error` is what it answered);
    /// whether the next attempt uses a new producer.
    pub(crate) fn renew_if_failed(&self, generation: u64, error: &KafkaError) -> bool {
        let renewed = self.producer.renew_if_failed(generation, error);
        if let Some(result) = &renewed {
            self.metrics.errors.with_label_values(&["producer_fatal"]).inc();
            match result {
                Ok(()) => {
                    self.telemetry.health.repaired("producer");
                    tracing::error!(%error, "the Kafka producer failed for good; replaced it")
                }
                Err(e) => {
                    // liveness fails until a replacement works (a restart may fix what did not)
                    self.telemetry.health.broken("producer", &e.to_string());
                    tracing::error!(%error, replacement = %e, "the Kafka producer failed for good and a new one could not be made; retrying")
                }
            }
        }
        matches!(renewed, Some(Ok(())))
    }
}

/// The processor's one producer, replaced when the client declares it failed for good.
struct RenewableProducer {
    current: Mutex<(u64, FutureProducer)>,
    make: Box<dyn Fn() -> KafkaResult<FutureProducer> + Send + Sync>,
}

impl RenewableProducer {
    fn new(make: Box<dyn Fn() -> KafkaResult<FutureProducer> + Send + Sync>) -> KafkaResult<Self> {
        Ok(RenewableProducer { current: Mutex::new((0, make()?)), make })
    }

    fn current(&self) -> (u64, FutureProducer) {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// `None` when producer `generation` has not failed for good or was replaced already;
    /// otherwise whether a replacement was made.
    fn renew_if_failed(&self, generation: u64, error: &KafkaError) -> Option<KafkaResult<()>> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.0 != generation || !failed_for_good(&current.1, error) {
            return None;
        }
        // the old producer's queue is dropped: every task awaiting it sees its deliveries
        // fail and sends its set again through the new one (outputs are deterministic)
        current.1.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
        Some((self.make)().map(|p| *current = (generation + 1, p)))
    }
}

/// Whether a producer cannot deliver anything any more: librdkafka raised a fatal error, or
/// the broker fenced its producer id (which only a new producer gets past).
fn failed_for_good(producer: &FutureProducer, error: &KafkaError) -> bool {
    producer.client().fatal_error().is_some()
        || matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::Fatal | RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch)
        )
}

/// A record to produce.
#[derive(Clone)]
pub(crate) struct OutRecord {
    pub(crate) topic: String,
    pub(crate) partition: Option<i32>,
    pub(crate) key: Vec<u8>,
    pub(crate) value: Option<Vec<u8>>,
    pub(crate) headers: Vec<(&'static str, String)>,
}

/// Produces every record and awaits every delivery; retries the whole set with backoff
/// until all are acknowledged (re-sending identical records is safe).
///
/// A record the broker or client refuses for what it is (over the size limit) is never
/// retried forever and never dropped silently: it is replaced by a DLQ record naming its
/// topic, key and size (reason `output_refused`), counted and logged as an error, and the
/// partition moves on.
pub(crate) async fn deliver(d: &Delivery, records: &[OutRecord], source: Source<'_>) -> Option<i64> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    let mut substituted: Vec<OutRecord>;
    let mut records = records;
    loop {
        let (generation, producer) = d.producer();
        match try_deliver(d, &producer, records).await {
            Ok((refused, last)) if refused.is_empty() => {
                d.telemetry.health.set("kafka", true);
                return last;
            }
            Ok((refused, _)) => {
                substituted = records
                    .iter()
                    .enumerate()
                    .map(|(i, r)| match refused.iter().find(|(j, _)| *j == i) {
                        Some((_, e)) => refused_to_dlq(d, r, e, source),
                        None => r.clone(),
                    })
                    .collect();
                records = &substituted;
            }
            Err(e) => {
                d.metrics.errors.with_label_values(&["produce"]).inc();
                d.telemetry.health.set("kafka", false);
                if d.renew_if_failed(generation, &e) {
                    continue;
                }
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "output delivery failed; retrying the batch");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// The input an output set was made from (the DLQ headers of a refused output name it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Source<'a> {
    pub(crate) topic: &'a str,
    pub(crate) partition: i32,
    /// The batch's last input offset.
    pub(crate) offset: i64,
}

/// The DLQ record that stands for an output the broker refused: its key, no value, and
/// headers naming the output topic and size and the input batch it came from.
fn refused_to_dlq(d: &Delivery, r: &OutRecord, e: &KafkaError, source: Source<'_>) -> OutRecord {
    let size = r.value.as_ref().map_or(0, Vec::len);
    d.metrics.errors.with_label_values(&["output_refused"]).inc();
    d.metrics.dlq.with_label_values(&["output_refused"]).inc();
    tracing::error!(topic = %r.topic, bytes = size, error = %e, "an output record was refused; sent to the DLQ instead");
    OutRecord {
        topic: d.dlq_topic.clone(),
        partition: None,
        key: r.key.clone(),
        value: None,
        headers: vec![
            (dlq::REASON, "output_refused".to_owned()),
            (
                dlq::DETAIL,
                format!(
                    "a {size}-byte record for {} made by the batch ending at the source offset was refused: {e}",
                    r.topic
                ),
            ),
            (dlq::STAGE, "processor".to_owned()),
            (dlq::TOPIC, source.topic.to_owned()),
            (dlq::PARTITION, source.partition.to_string()),
            (dlq::OFFSET, source.offset.max(0).to_string()),
        ],
    }
}

/// How long deliveries may stay unacknowledged before the processor reports Kafka as not
/// ready (it keeps waiting: the producer has no local message timeout).
const SLOW_DELIVERY: Duration = Duration::from_secs(30);

/// Whether a produce error is a property of the record (retrying cannot help).
fn is_permanent(e: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(e.rdkafka_error_code(), Some(C::MessageSizeTooLarge | C::InvalidRecord))
}

/// Produces every record and awaits every delivery: `Ok` with the records refused for
/// what they are (index, error) and the offset of the last record, `Err` on the first
/// transient failure.
async fn try_deliver(
    d: &Delivery,
    producer: &FutureProducer,
    records: &[OutRecord],
) -> Result<(Vec<(usize, KafkaError)>, Option<i64>), KafkaError> {
    let mut futures = Vec::with_capacity(records.len());
    for r in records {
        let mut rec = FutureRecord::<[u8], [u8]>::to(&r.topic).key(&r.key);
        if let Some(headers) = changelog::kafka_headers(&r.headers) {
            rec = rec.headers(headers);
        }
        if let Some(v) = &r.value {
            rec = rec.payload(v);
        }
        if let Some(p) = r.partition {
            rec = rec.partition(p);
        }
        // send() waits for queue space (bounded by librdkafka's queue), then for delivery
        futures.push(producer.send(rec, Duration::from_secs(30)));
    }
    // Deliveries have no local timeout (see `start`): while the broker does not answer, say
    // so (readiness, a counted warning every SLOW_DELIVERY) and keep waiting.
    let mut all = std::pin::pin!(join_all(futures));
    let results = loop {
        match tokio::time::timeout(SLOW_DELIVERY, &mut all).await {
            Ok(r) => break r,
            Err(_) => {
                d.telemetry.health.set("kafka", false);
                d.metrics.errors.with_label_values(&["produce_slow"]).inc();
                tracing::warn!(records = records.len(), waited = ?SLOW_DELIVERY, "outputs not acknowledged yet; still waiting");
            }
        }
    };
    let mut refused = Vec::new();
    let mut last = None;
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(d) => last = Some(d.offset),
            Err((e, _)) if is_permanent(&e) => refused.push((i, e)),
            Err((e, _)) => return Err(e),
        }
    }
    Ok((refused, last))
}

pub(crate) fn record_outcomes(m: &ProcessorMetrics, o: &Outputs) {
    for (outcome, n) in &o.outcomes {
        m.events.with_label_values(&[outcome.as_str()]).inc_by(*n);
        if *outcome == Outcome::Late {
            m.late.inc_by(*n);
        }
    }
    for d in &o.dlq {
        m.dlq.with_label_values(&[d.reason]).inc();
    }
    m.windows.with_label_values(&["session"]).inc_by(o.windows_emitted);
    m.output.with_label_values(&["rows"]).inc_by(o.rows.len() as u64);
    if o.encode_errors > 0 {
        m.errors.with_label_values(&["encode"]).inc_by(o.encode_errors);
        tracing::error!(records = o.encode_errors, "output records failed to encode");
    }
    m.output.with_label_values(&["agg_session"]).inc_by(o.session_aggs.len() as u64);
    m.output.with_label_values(&["unread"]).inc_by(o.unread.len() as u64);
}

pub(crate) fn output_records(
    cfg: &Config,
    o: &mut Outputs,
    batch: &[OwnedMessage],
    partition: i32,
    metrics: &ProcessorMetrics,
) -> Vec<OutRecord> {
    let mut out = Vec::with_capacity(o.rows.len() + o.session_aggs.len() + o.unread.len() + 2);
    for r in &mut o.rows {
        if r.value.len() > envelope::MAX_BODY {
            // no event's rows come near it (bodies ≤ --max-body-bytes, fan-out bounded);
            // an error to alert on, never a silent drop
            metrics.errors.with_label_values(&["encode"]).inc();
            tracing::error!(bytes = r.value.len(), "a chat.rows record is over the envelope's size limit");
            continue;
        }
        out.push(OutRecord {
            topic: cfg.rows_topic.clone(),
            partition: None,
            key: itoa::Buffer::new().format(r.key).as_bytes().to_vec(),
            value: Some(std::mem::take(&mut r.value)),
            headers: Vec::new(),
        });
    }
    for (k, v) in &o.session_aggs {
        out.push(OutRecord {
            topic: cfg.agg_session_topic.clone(),
            partition: None,
            key: k.clone().into_bytes(),
            value: Some(v.clone().into_bytes()),
            headers: Vec::new(),
        });
    }
    for (k, v) in &o.unread {
        out.push(OutRecord {
            topic: cfg.unread_topic.clone(),
            partition: None,
            key: k.clone().into_bytes(),
            value: v.clone().map(String::into_bytes),
            headers: Vec::new(),
        });
    }
    if let Some(p) = &o.progress {
        if let Ok(v) = envelope::encode(p).inspect_err(|e| {
            metrics.errors.with_label_values(&["encode"]).inc();
            tracing::error!(error = %e, "a window progress record failed to encode");
        }) {
            out.push(OutRecord {
                topic: cfg.partials_topic.clone(),
                partition: Some(0),
                key: partition.to_string().into_bytes(),
                value: Some(v),
                headers: Vec::new(),
            });
        }
    }
    for d in &o.dlq {
        let original = batch.iter().find(|m| m.offset() == d.offset);
        out.push(OutRecord {
            topic: cfg.dlq_topic.clone(),
            partition: None,
            key: original.and_then(|m| m.key()).map(<[u8]>::to_vec).unwrap_or_default(),
            value: original.and_then(|m| m.payload()).map(<[u8]>::to_vec),
            headers: vec![
                (dlq::REASON, d.reason.to_owned()),
                (dlq::DETAIL, d.detail.clone()),
                (dlq::STAGE, "processor".to_owned()),
                (dlq::TOPIC, cfg.events_topic.clone()),
                (dlq::PARTITION, partition.to_string()),
                (dlq::OFFSET, d.offset.to_string()),
            ],
        });
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    use rdkafka::ClientConfig;

    use super::*;

    fn delivery(bootstrap: String) -> Delivery {
        let telemetry = Telemetry::new();
        let metrics = ProcessorMetrics::new(&telemetry.registry);
        let make = move || {
            ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("enable.idempotence", "true")
                .set("message.timeout.ms", "0")
                .create::<FutureProducer>()
        };
        Delivery::new(make, metrics, telemetry, "dlq".into()).unwrap()
    }

    fn record(i: u8) -> OutRecord {
        OutRecord {
            topic: "out".into(),
            partition: Some(0),
            key: vec![i],
            value: Some(vec![i; 8]),
            headers: Vec::new(),
        }
    }

    /// A producer the broker fences (what tansu answers an idempotent producer whose process
    /// was frozen) is replaced, and the set is delivered through the new one.
    #[tokio::test]
    async fn a_fenced_producer_is_replaced_and_the_set_delivered() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("out", 1, 1).unwrap();
        let d = delivery(cluster.bootstrap_servers());
        let source = Source { topic: "in", partition: 0, offset: 0 };
        assert!(deliver(&d, &[record(1)], source).await.is_some());
        assert_eq!(d.producer().0, 0);
        cluster.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_PRODUCER_FENCED; 3]);
        let delivered = tokio::time::timeout(Duration::from_secs(60), deliver(&d, &[record(2), record(3)], source))
            .await
            .expect("a fenced producer must not stall the partition");
        assert!(delivered.is_some());
        assert!(d.producer().0 >= 1, "the fenced producer was replaced");
        assert!(d.metrics.errors.with_label_values(&["producer_fatal"]).get() >= 1);
    }
}
