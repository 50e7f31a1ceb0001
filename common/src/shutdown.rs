//! The process shutdown signal: resolves on the first SIGINT (Ctrl-C) or SIGTERM
//! (Kubernetes' stop). Roles take it as `shutdown: impl Future` and then drain.

/// Resolves when the process is asked to stop. If a signal handler cannot be installed
/// (no such signal on the platform), that source is ignored rather than failing.
pub async fn signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received, shutting down"),
        _ = term => tracing::info!("SIGTERM received, shutting down"),
    }
}
