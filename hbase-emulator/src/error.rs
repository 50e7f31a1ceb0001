//! Errors of starting and running the emulator (request errors never end the server: they
//! are answered to the client as Thrift exceptions, see `handler.rs`).

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot create the data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("cannot open the store {path}: {source}")]
    OpenStore { path: PathBuf, source: StoreError },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot start the server threads: {0}")]
    Spawn(std::io::Error),
    #[error("the emulator task failed: {0}")]
    Task(String),
}

impl Error {
    /// Whether starting again later may succeed: the port or the store file may still be held
    /// by an instance that is shutting down.
    pub fn is_retriable(&self) -> bool {
        matches!(self, Error::Bind { .. } | Error::OpenStore { .. } | Error::Spawn(_))
    }
}
