//! `chatpipe-serve`: the read side for chat clients. It answers from the HBase tables the
//! sink writes (DESIGN §5–§6) and pushes new entries live from `chat.rows`.
//!
//! # Endpoints (all `GET`, documented in `docs/openapi.json`, served at `/openapi.json`)
//!
//! * `/v1/sessions/{session}/messages?limit=&before=&after_seq=` — a timeline page, newest
//!   first (one HBase scan once the session's kind is cached), or with `after_seq` the
//!   messages after a seq, oldest first, without holes;
//! * `/v1/users/{user}/inbox?limit=&before=` — inbox rows merged with the timelines of the
//!   user's large groups (read fan-out, `inbox.rs`): the inbox scan and one timeline scan
//!   per large group once the user's large groups are cached;
//! * `/v1/users/{user}/sessions` — sessions with `unread`, the last message, newest activity
//!   first; `/v1/sessions/{session}`, `/v1/sessions/{session}/members`, `/v1/users/{user}`;
//! * `/v1/users/{user}/stream` — Server-Sent Events (`push/`).
//!
//! # Guarantee
//!
//! Reads are served from HBase as written: no row contents are cached. Two things are
//! remembered: a session's kind, which never changes, and for inbox pages each user's list
//! of large groups (with the seq they joined at) for up to `--inbox-cache-ttl` (30 s) —
//! dropped early when the `chat.rows` feed shows the user joining or leaving a session or a
//! group crossing the fan-out threshold. So after such a change an inbox page may miss, or
//! still merge, that group's messages for up to the TTL (typically only until the feed and
//! the sink have both seen it; `large_groups.rs` states the exact bound); everything else,
//! unread counts included, is as fresh as HBase. Each answer is built from one pass of
//! scans and gets, not a snapshot: rows the sink writes meanwhile may or may not show.
//!
//! # Failure behaviour
//!
//! HBase unreachable: 503 with `Retry-After`, and `/readyz` reports `hbase` not ready until a
//! probe succeeds (probed every 5 s). Kafka unreachable: reads go on; streams get 503 until
//! the feed is assigned (`push` not ready). Bad input: 400 naming the parameter; unknown ids:
//! 404; no key: 401; over the key's rate: 429 — all JSON. Shutdown: `/readyz` turns not
//! ready, push streams end, in-flight requests finish within `--drain-timeout`.
//!
//! # Layout
//!
//! * `config.rs` — [`Config`], the `chatpipe serve` flags;
//! * `store.rs` — the HBase reads (one operation each) and row shapes;
//! * `inbox.rs` — the k-way merge of read fan-out (pure);
//! * `large_groups.rs` — each user's large groups, cached for inbox pages (pure);
//! * `api/` — the router and middleware (`mod.rs`), parameters, errors, JSON views, and the
//!   handlers by role (`sessions.rs`, `users.rs`, `inbox.rs`);
//! * `push/` — the `chat.rows` feed (`mod.rs`), positions, the hub, events, the SSE route;
//! * `metrics.rs` — metric names (`chatpipe_serve_*`);
//! * `error.rs` — [`Error`], with [`Error::is_retriable`].

mod api;
mod config;
mod error;
mod inbox;
mod large_groups;
pub mod metrics;
mod push;
mod store;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chatpipe_common::http::{ObservabilityServer, Telemetry};
use chatpipe_ingest::{ApiKeys, Auth, RateLimits};
use chatpipe_sink::hbase::HbasePool;
use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use api::{route_table, DEFAULT_LIMIT, MAX_LIMIT, OPENAPI_JSON};
pub use config::Config;
pub use error::Error;
#[doc(hidden)]
pub use push::feed_for_bench;
pub use push::{HEALTH_COMPONENT as PUSH_HEALTH_COMPONENT, PARAMS as STREAM_PARAMS};

/// The readiness component of HBase reads.
pub const HBASE_HEALTH_COMPONENT: &str = "hbase";
/// The readiness component of the HTTP listener (not ready while shutting down).
pub const HTTP_HEALTH_COMPONENT: &str = "serve";
/// How often HBase is probed for `/readyz`.
const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// A running serve.
pub struct ServeHandle {
    addr: SocketAddr,
    telemetry: Telemetry,
    stop: CancellationToken,
    server: Option<JoinHandle<Result<(), std::io::Error>>>,
    tasks: Vec<JoinHandle<()>>,
    drain_timeout: Duration,
}

impl ServeHandle {
    /// The bound API address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Metrics and health of this serve.
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// Stops accepting, ends push streams, waits for in-flight requests (bounded by
    /// `--drain-timeout`).
    pub async fn shutdown(mut self) -> Result<(), Error> {
        self.telemetry.health.set(HTTP_HEALTH_COMPONENT, false);
        self.stop.cancel();
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        if let Some(server) = self.server.take() {
            match tokio::time::timeout(self.drain_timeout, server).await {
                Err(_) => return Err(Error::DrainTimeout),
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => return Err(Error::Server(e)),
                Ok(Err(e)) => return Err(Error::Server(std::io::Error::other(e.to_string()))),
            }
        }
        Ok(())
    }
}

/// Starts serve on `config.listen` with shared `telemetry` (tests, `dev`); `/metrics` is the
/// caller's to serve.
pub async fn start(config: Config, telemetry: Telemetry) -> Result<ServeHandle, Error> {
    config.validate().map_err(Error::Config)?;
    let auth = match &config.api_keys_file {
        Some(path) => Auth::Keys(ApiKeys::load(path).map_err(|e| Error::ApiKeys(e.to_string()))?),
        None => {
            tracing::warn!("serve: authentication is OFF (--insecure-no-auth); every request is accepted");
            Auth::Disabled
        }
    };
    // bind first: a taken port fails before anything is registered on `telemetry`
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Bind { addr: config.listen, source })?;
    let addr = listener.local_addr().map_err(|source| Error::Bind { addr: config.listen, source })?;
    let limits = RateLimits::new(config.rate_limit_per_second, config.rate_limit_burst, auth.clients());
    let metrics = metrics::ServeMetrics::new(&telemetry.registry);
    let pool = HbasePool::new(config.hbase.config(), config.hbase_connections);
    let store = store::Store::new(pool, metrics.clone());
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();

    let health = telemetry.health.clone();
    health.set(HBASE_HEALTH_COMPONENT, false);
    {
        let (store, health, stop) = (store.clone(), health.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let ok = store.probe().await;
                if let Err(e) = &ok {
                    tracing::warn!(error = %e, "serve: HBase probe failed");
                }
                health.set(HBASE_HEALTH_COMPONENT, ok.is_ok());
                tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(PROBE_INTERVAL) => {} }
            }
        }));
    }

    let large_groups = Arc::new(large_groups::LargeGroups::new(config.inbox_cache_ttl, config.fanout_max_members));
    let push = if config.no_push {
        None
    } else {
        let (hub, task) = push::start(
            &config.kafka,
            &config.rows_topic,
            config.push_retention_events,
            config.fanout_max_members,
            config.preview_chars,
            metrics.clone(),
            health.clone(),
            large_groups.clone(),
            stop.clone(),
        )
        .map_err(Error::Kafka)?;
        tasks.push(task);
        Some(hub)
    };

    let state = Arc::new(api::AppState {
        auth,
        limits,
        inflight: Arc::new(Semaphore::new(config.max_inflight_requests)),
        store,
        metrics,
        kinds: Mutex::new(HashMap::new()),
        large_groups,
        preview_chars: config.preview_chars,
        push,
        push_keepalive: config.push_keepalive,
        max_push_clients: config.max_push_clients,
    });
    let app = api::router(state);
    let s = stop.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app).with_graceful_shutdown(async move { s.cancelled().await }).await
    });
    health.set(HTTP_HEALTH_COMPONENT, true);
    tracing::info!(addr = %addr, "serve listening");
    Ok(ServeHandle { addr, telemetry, stop, server: Some(server), tasks, drain_timeout: config.drain_timeout })
}

/// Runs serve until `shutdown` resolves, then drains. Serves its own `/metrics`,
/// `/healthz` and `/readyz` on `--metrics-listen`.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), Error> {
    let telemetry = Telemetry::new();
    let obs = ObservabilityServer::start(config.metrics_listen, telemetry.clone())
        .await
        .map_err(|source| Error::Bind { addr: config.metrics_listen, source })?;
    tracing::info!(addr = %obs.addr, "serve metrics listening");
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
