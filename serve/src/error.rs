//! The serve library's error type: the failures that stop serve from starting or from
//! shutting down cleanly. Request-level problems are HTTP responses (see `api/errors.rs`).

use std::net::SocketAddr;

use rdkafka::error::KafkaError;

/// Why serve could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag has an invalid value or flags contradict each other.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The API keys file cannot be read or parsed (the message names lines, never keys).
    #[error("API keys: {0}")]
    ApiKeys(String),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The push consumer could not be created (invalid librdkafka configuration).
    #[error("cannot create the push consumer: {0}")]
    Kafka(#[source] KafkaError),
    /// The HTTP server failed.
    #[error("HTTP server failed: {0}")]
    Server(#[source] std::io::Error),
    /// In-flight requests did not finish within `--drain-timeout`.
    #[error("shutdown did not finish within the drain timeout")]
    DrainTimeout,
}

impl Error {
    /// Whether starting again may succeed without changing the configuration.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Config(_) | Error::Kafka(_) => false,
            // a missing file may appear (mounted secret); a malformed one stays malformed,
            // but the message does not say which without the key: retrying is harmless
            Error::ApiKeys(_) | Error::Bind { .. } | Error::Server(_) | Error::DrainTimeout => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_hints() {
        assert!(!Error::Config("x".into()).is_retriable());
        assert!(Error::DrainTimeout.is_retriable());
        assert!(!Error::Kafka(KafkaError::Canceled).is_retriable());
    }
}
