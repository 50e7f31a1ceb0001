//! The ingest library's error type. Request-level problems are HTTP responses (see
//! `api.rs`), not errors: these are the failures that stop ingest from starting or from
//! shutting down cleanly.

use std::net::SocketAddr;
use std::path::PathBuf;

use chatpipe_common::snowflake::SnowflakeError;
use rdkafka::error::KafkaError;

/// Why ingest could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag has an invalid value or flags contradict each other.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The API keys file cannot be read.
    #[error("cannot read the API keys file {path}: {source}")]
    ApiKeysFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The API keys file is malformed (the message names the line, never its content).
    #[error("invalid API keys file {path}: {message}")]
    ApiKeysFormat {
        /// The file.
        path: PathBuf,
        /// What is wrong, by line number.
        message: String,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The Kafka producer could not be created (invalid librdkafka configuration).
    #[error("cannot create the Kafka producer: {0}")]
    Producer(#[source] KafkaError),
    /// The snowflake generator refused the worker id or the clock.
    #[error("cannot generate message ids: {0}")]
    Ids(#[from] SnowflakeError),
    /// The HTTP server failed.
    #[error("HTTP server failed: {0}")]
    Server(#[source] std::io::Error),
    /// Shutdown did not finish within `--drain-timeout`: `what` was still pending.
    #[error("shutdown did not finish within the drain timeout: {what}")]
    DrainTimeout {
        /// What was still pending.
        what: &'static str,
    },
}

impl Error {
    /// Whether starting again (or later) may succeed without changing the configuration:
    /// an address in use may be freed, a clock that stepped back catches up, a drain can
    /// go faster next time; a bad flag or file stays bad.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Config(_) | Error::ApiKeysFormat { .. } | Error::Producer(_) => false,
            Error::ApiKeysFile { .. } | Error::Bind { .. } | Error::Server(_) | Error::DrainTimeout { .. } => true,
            Error::Ids(e) => e.is_retriable(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_hints() {
        assert!(!Error::Config("x".into()).is_retriable());
        assert!(Error::DrainTimeout { what: "requests" }.is_retriable());
        assert!(!Error::Ids(SnowflakeError::BadWorker(5000)).is_retriable());
        assert!(Error::Ids(SnowflakeError::ClockBackwards { behind_ms: 5, max_ms: 1 }).is_retriable());
    }
}
