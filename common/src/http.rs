//! The observability endpoint every role serves on its own port: `/metrics` (Prometheus
//! text), `/healthz` (liveness: the process serves requests and no component declared
//! itself broken for good — 503 with the broken ones and why, so Kubernetes restarts the pod)
//! and `/readyz` (readiness: every registered component reports ready; 503 with the names of
//! those that are not).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Readiness of a process's components (e.g. `kafka`, `hbase`, `http`).
#[derive(Clone, Default, Debug)]
pub struct Health {
    components: Arc<Mutex<BTreeMap<String, bool>>>,
    /// Components broken for good (a Kafka client's fatal error), with the reason.
    broken: Arc<Mutex<BTreeMap<String, String>>>,
}

impl Health {
    /// A health registry with no components (ready).
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets one component's readiness (registering it on first use).
    pub fn set(&self, component: &str, ready: bool) {
        let mut c = self.components.lock().unwrap_or_else(|p| p.into_inner());
        c.insert(component.to_owned(), ready);
    }
    /// Components that are not ready.
    pub fn not_ready(&self) -> Vec<String> {
        let c = self.components.lock().unwrap_or_else(|p| p.into_inner());
        c.iter().filter(|(_, r)| !**r).map(|(n, _)| n.clone()).collect()
    }
    /// Whether every component is ready.
    pub fn is_ready(&self) -> bool {
        self.not_ready().is_empty()
    }
    /// Declares a component broken for good (`/healthz` fails until [`Health::repaired`]).
    pub fn broken(&self, component: &str, reason: &str) {
        let mut b = self.broken.lock().unwrap_or_else(|p| p.into_inner());
        b.insert(component.to_owned(), reason.to_owned());
    }
    /// A component declared broken works again (it was replaced).
    pub fn repaired(&self, component: &str) {
        self.broken.lock().unwrap_or_else(|p| p.into_inner()).remove(component);
    }
    /// The components broken for good, with their reasons.
    pub fn broken_components(&self) -> BTreeMap<String, String> {
        self.broken.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What one role (or `dev`, several) exposes.
#[derive(Clone, Default)]
pub struct Telemetry {
    /// Metrics of the process.
    pub registry: Registry,
    /// Readiness of the process.
    pub health: Health,
}

impl Telemetry {
    /// Fresh metrics and health.
    pub fn new() -> Self {
        Self::default()
    }
}

async fn metrics(State(t): State<Telemetry>) -> impl IntoResponse {
    let mut buf = Vec::with_capacity(16 * 1024);
    match TextEncoder::new().encode(&t.registry.gather(), &mut buf) {
        Ok(()) => (StatusCode::OK, [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], buf).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn healthz(State(t): State<Telemetry>) -> axum::response::Response {
    let broken = t.health.broken_components();
    if broken.is_empty() {
        return "ok\n".into_response();
    }
    let body = serde_json::json!({ "alive": false, "broken": broken }).to_string();
    (StatusCode::SERVICE_UNAVAILABLE, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn readyz(State(t): State<Telemetry>) -> impl IntoResponse {
    let not_ready = t.health.not_ready();
    let body = serde_json::json!({ "ready": not_ready.is_empty(), "not_ready": not_ready }).to_string();
    let status = if not_ready.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, [(header::CONTENT_TYPE, "application/json")], body)
}

/// A running observability server.
pub struct ObservabilityServer {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl ObservabilityServer {
    /// Binds `addr` and serves in the background until [`Self::shutdown`].
    pub async fn start(addr: SocketAddr, telemetry: Telemetry) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let app = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(telemetry);
        let stop = cancel.clone();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "observability server failed");
            }
        });
        Ok(ObservabilityServer { addr, cancel, task })
    }

    /// Stops serving and waits for the server task.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn healthz_fails_while_a_component_is_broken_for_good() {
        let t = Telemetry::new();
        t.health.set("kafka", false); // not ready is not dead
        assert_eq!(healthz(State(t.clone())).await.status(), StatusCode::OK);
        t.health.broken("consumer", "fatal: group instance fenced");
        let r = healthz(State(t.clone())).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(r.into_body(), 4096).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["broken"]["consumer"], "fatal: group instance fenced");
        t.health.repaired("consumer");
        assert_eq!(healthz(State(t)).await.status(), StatusCode::OK);
    }
}
