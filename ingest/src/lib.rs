//! `chatpipe-ingest`: the producer-facing HTTP API. Chat servers and apps `POST` chat events
//! to `/v1/events` (one JSON object, a JSON array, or NDJSON); ingest validates them
//! (DESIGN §4), stamps each with a snowflake `message_id` and `ingested_at`, and publishes
//! them to `chat.events` keyed by session id, in the bincode envelope.
//!
//! # Guarantee (DESIGN §7)
//!
//! * **202 only after every event of the request is acknowledged by Kafka** (idempotent
//!   producer, `acks=all`). The body lists each event's `message_id`.
//! * **All or nothing on validation**: a request with any invalid event is refused whole
//!   (400, every error with its `index` and `field`, capped), and nothing of it is produced.
//! * **Partial delivery is spelled out**: if some deliveries fail or time out, the answer is
//!   503 with a status per event; the producer retries exactly the failed ones with the same
//!   `client_msg_id` (a failed event may still have been written; the processor dedupes on
//!   `client_msg_id`).
//! * **Order**: events are produced in request order, keyed by session id, so one
//!   conversation's events of one request keep their order in the partition.
//!
//! # Failure behaviour
//!
//! * Kafka unreachable or the producer queue full beyond `--produce-timeout`: 503 with
//!   `Retry-After`, and `/readyz` (component `kafka`) is not ready until a probe or a
//!   delivery succeeds again.
//! * The events topic is created at start if missing (`--events-partitions`). If the broker
//!   cannot be reached, ingest **keeps running, not ready**, retrying with jittered backoff (about 0.5 s
//!   doubling to 30 s, each failure logged as a warning); events requests get 503 meanwhile.
//! * Overload: a body is received before the request takes an in-flight slot, bounded by
//!   `--max-body-bytes` (413) and `--read-timeout` (408), and all bodies being received by
//!   `--max-buffered-body-bytes` (503), so slow clients cannot lock fast ones out; a body
//!   with more events than `--max-batch` is refused (400) before any event is built; at most
//!   `--max-inflight-requests` requests are parsed and produced at once (503 beyond); each
//!   API key has a token bucket of requests and one of events (429 with `Retry-After`).
//! * Shutdown ([`IngestHandle::shutdown`]): `/readyz` turns not ready, the listener stops
//!   accepting, in-flight requests finish, then the producer is flushed, all within
//!   `--drain-timeout`.
//!
//! # Layout
//!
//! * `config.rs` — [`Config`], the `chatpipe ingest` flags;
//! * `auth.rs` — API keys (digests, constant-time comparison) and per-key rate limits;
//! * `api.rs` — the router and the request pipeline, JSON error bodies;
//! * `body.rs` — receiving a body under its limits, and counting its events before parsing;
//! * `producer.rs` — publishing with per-event delivery status, topic creation, readiness;
//! * `metrics.rs` — metric names (`chatpipe_ingest_*`) and their registration;
//! * `error.rs` — [`Error`], with [`Error::is_retriable`].
//!
//! # Use
//!
//! `chatpipe ingest --listen 0.0.0.0:8080 --kafka-brokers kafka:9092 --api-keys-file keys`
//! calls [`run`]. In-process (tests, `dev`): [`start`] with a [`Config::new`] and a shared
//! [`Telemetry`], then [`IngestHandle::local_addr`] and [`IngestHandle::shutdown`].

mod api;
mod auth;
mod body;
mod config;
mod error;
pub mod metrics;
mod producer;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatpipe_common::event::ParseLimits;
use chatpipe_common::http::{ObservabilityServer, Telemetry};
use chatpipe_common::snowflake::{worker_from_hostname, Snowflake};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use auth::{ApiKeys, Auth, AuthFailure, RateLimits, Secret};
pub use config::{
    Config, DEFAULT_EVENTS_PARTITIONS, DEFAULT_MAX_BATCH, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_BUFFERED_BODY_BYTES,
    DEFAULT_MAX_ERRORS, DEFAULT_MAX_INFLIGHT_REQUESTS, DEFAULT_RATE_LIMIT_BURST, DEFAULT_RATE_LIMIT_EVENTS_BURST,
    DEFAULT_RATE_LIMIT_EVENTS_PER_SECOND, DEFAULT_RATE_LIMIT_PER_SECOND,
};
pub use error::Error;
pub use producer::HEALTH_COMPONENT as KAFKA_HEALTH_COMPONENT;

/// The readiness component of the HTTP listener (not ready while shutting down).
pub const HTTP_HEALTH_COMPONENT: &str = "ingest";

/// How far back the clock may step before id generation is refused (it is waited out up to
/// this bound; see `chatpipe_common::snowflake`).
const MAX_CLOCK_BACKWARDS: Duration = Duration::from_secs(1);

/// A running ingest.
pub struct IngestHandle {
    addr: SocketAddr,
    telemetry: Telemetry,
    producer: Arc<producer::EventProducer>,
    stop_http: CancellationToken,
    stop_watch: CancellationToken,
    server: Option<JoinHandle<std::io::Result<()>>>,
    watcher: Option<JoinHandle<()>>,
    drain_timeout: Duration,
}

/// Dropping the handle without [`IngestHandle::shutdown`] stops serving at once (no drain).
impl Drop for IngestHandle {
    fn drop(&mut self) {
        self.stop_http.cancel();
        self.stop_watch.cancel();
    }
}

impl std::fmt::Debug for IngestHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestHandle").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl IngestHandle {
    /// The bound address of the events API.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the events topic exists and Kafka answers.
    pub fn is_ready(&self) -> bool {
        self.producer.is_ready()
    }

    /// Waits until ready (the topic created and the broker answering), up to `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.is_ready() {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// The telemetry this ingest reports to.
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// Drains: not ready, stop accepting connections, finish in-flight requests, flush the
    /// producer; within `--drain-timeout` overall.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        let deadline = Instant::now() + self.drain_timeout;
        self.telemetry.health.set(HTTP_HEALTH_COMPONENT, false);
        self.stop_http.cancel();
        tracing::info!("ingest shutting down: finishing in-flight requests");
        let mut result = Ok(());
        if let Some(mut server) = self.server.take() {
            match tokio::time::timeout(self.drain_timeout, &mut server).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => result = Err(Error::Server(e)),
                Ok(Err(join)) => result = Err(Error::Server(std::io::Error::other(join.to_string()))),
                Err(_) => {
                    server.abort();
                    result = Err(Error::DrainTimeout { what: "in-flight requests" });
                }
            }
        }
        self.stop_watch.cancel();
        if let Some(watcher) = self.watcher.take() {
            let _ = watcher.await;
        }
        self.producer.mark_stopping();
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
        if let Err(e) = self.producer.flush(left).await {
            tracing::error!(error = %e, unacknowledged = self.producer.in_flight(), "producer flush did not finish");
            if result.is_ok() {
                result = Err(Error::DrainTimeout { what: "producer flush" });
            }
        }
        tracing::info!("ingest stopped");
        result
    }
}

/// The snowflake worker id: the flag, else a StatefulSet ordinal in the host name, else 0.
fn worker_id(config: &Config) -> u32 {
    if let Some(w) = config.worker_id {
        return w;
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    match worker_from_hostname(&host) {
        Some(w) => {
            tracing::info!(worker_id = w, host = %host, "snowflake worker id from the host name");
            w
        }
        None => {
            tracing::warn!(
                host = %host,
                "no --worker-id and no pod ordinal in the host name: using worker id 0; \
                 set --worker-id when running more than one ingest"
            );
            0
        }
    }
}

/// Starts ingest in the background: loads keys, creates the producer, starts creating the
/// topic and probing Kafka, binds `--listen` and serves. Registers metrics and readiness
/// on `telemetry` (the caller serves them). Returns once the listener is bound; the handle
/// reports readiness.
pub async fn start(config: Config, telemetry: Telemetry) -> Result<IngestHandle, Error> {
    config.validate().map_err(Error::Config)?;
    let auth = match (&config.api_keys_file, config.insecure_no_auth) {
        (Some(path), false) => {
            let keys = ApiKeys::load(path)?;
            tracing::info!(keys = keys.len(), names = ?keys.names().collect::<Vec<_>>(), "API keys loaded");
            auth::Auth::Keys(keys)
        }
        _ => {
            tracing::warn!("--insecure-no-auth: accepting events without an API key");
            auth::Auth::Disabled
        }
    };
    let limits = auth::RateLimits::new(config.rate_limit_per_second, config.rate_limit_burst, auth.clients());
    let event_limits =
        auth::RateLimits::new(config.rate_limit_events_per_second, config.rate_limit_events_burst, auth.clients());
    let ids = Snowflake::new(worker_id(&config), MAX_CLOCK_BACKWARDS)?;
    let metrics = metrics::IngestMetrics::new(&telemetry.registry);
    let producer = Arc::new(producer::EventProducer::new(&config, metrics.clone(), telemetry.health.clone())?);

    let state = Arc::new(api::AppState {
        auth,
        limits,
        event_limits,
        inflight: Arc::new(Semaphore::new(config.max_inflight_requests)),
        body_budget: body::BodyBudget::new(config.max_buffered_body_bytes, metrics.buffered_body_bytes.clone()),
        producer: producer.clone(),
        ids,
        metrics,
        parse_limits: ParseLimits { max_events: config.max_batch, max_errors: config.max_errors },
        max_body_bytes: config.max_body_bytes,
        max_skew_ms: i64::try_from(config.max_clock_skew.as_millis()).unwrap_or(i64::MAX),
        read_timeout: config.read_timeout,
    });

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Bind { addr: config.listen, source })?;
    let addr = listener.local_addr().map_err(|source| Error::Bind { addr: config.listen, source })?;

    let stop_watch = CancellationToken::new();
    let watcher = tokio::spawn(producer.clone().watch(stop_watch.clone()));

    let stop_http = CancellationToken::new();
    let stop = stop_http.clone();
    let app = api::router(state);
    let server = tokio::spawn(async move {
        axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await
    });
    telemetry.health.set(HTTP_HEALTH_COMPONENT, true);
    tracing::info!(
        %addr,
        topic = %config.events_topic,
        brokers = %config.kafka.brokers,
        max_batch = config.max_batch,
        max_body_bytes = config.max_body_bytes,
        "ingest listening"
    );
    Ok(IngestHandle {
        addr,
        telemetry,
        producer,
        stop_http,
        stop_watch,
        server: Some(server),
        watcher: Some(watcher),
        drain_timeout: config.drain_timeout,
    })
}

/// Runs ingest until `shutdown` resolves, then drains. Serves its own `/metrics`,
/// `/healthz` and `/readyz` on `--metrics-listen`.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), Error> {
    let telemetry = Telemetry::new();
    let obs = ObservabilityServer::start(config.metrics_listen, telemetry.clone())
        .await
        .map_err(|source| Error::Bind { addr: config.metrics_listen, source })?;
    tracing::info!(addr = %obs.addr, "ingest metrics listening");
    let handle = match start(config, telemetry).await {
        Ok(h) => h,
        Err(e) => {
            obs.shutdown().await;
            return Err(e);
        }
    };
    shutdown.await;
    let result = handle.shutdown().await;
    obs.shutdown().await;
    result
}
