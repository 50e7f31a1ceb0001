//! `chatpipe-hbase-emulator`: our own server of HBase's **Thrift1** interface, for dev and
//! tests where HBase cannot be installed — the role Google's Bigtable emulator plays for
//! Bigtable. Code tested against it should work unchanged against `hbase thrift start`.
//!
//! It serves the generated `HbaseSyncProcessor` of the `hbase-thrift` crate over the binary
//! protocol and buffered transport (HBase's defaults) or, as `hbase thrift start -f -c` does,
//! the framed transport and compact protocol (`--thrift-transport`, `--thrift-protocol`), and
//! keeps tables, cells, versions and delete markers on HBase's own kind of write path: a
//! write-ahead log with group commit, a sorted in-memory store bounded by
//! `--memstore-size-mb`, background flushes to immutable sorted files and their compaction
//! (the fjall LSM-tree crate); reads merge the memstore and the files.
//!
//! # Guarantees
//!
//! * **Durability**: a write acknowledged to a client is in the write-ahead log before the
//!   reply is sent (concurrent calls share one append: group commit). With the default
//!   `--durability os` the log has reached the operating system, so the write survives a
//!   kill -9 of the emulator and a restart on the same `--data-dir` (as HBase's default WAL
//!   `hflush` survives a RegionServer crash); `--durability fsync` also waits for the disk
//!   (`fdatasync`) and survives a power loss. A call's writes are atomic: a batch naming an
//!   unknown family writes nothing (HBase may apply part of such a batch). `--in-memory`
//!   keeps nothing after a stop.
//! * **Memory** is bounded by `--memstore-size-mb` and `--block-cache-mb`, not by the data.
//! * **Semantics as HBase has them**: see `store.rs` (versions, `maxVersions`, TTL, delete
//!   markers that mask older puts, 8-byte big-endian counters, bytewise row order) and
//!   `handler.rs` (how each Thrift method maps, which exception it raises). Methods not
//!   implemented (`grant`, `revoke`) answer an `IOError` naming the method.
//! * **Failure**: bad input never panics the server and never takes it down: lengths are
//!   bounded before anything is allocated (`protocol.rs`); a call with a frame, string or
//!   container over the limits is answered with an `IOError` and its connection closed; a
//!   connection that sends garbage or a cut frame is closed; a filter string is parsed with
//!   bounded depth and size (`filter.rs`) — and every other connection goes on (`server.rs`). As HBase's Thrift server
//!   does, a connection idle for `--idle-timeout-secs` (60) is closed: clients reconnect.
//! * **Concurrency**: one thread per connection (up to `--max-connections`); concurrent
//!   mutations share one commit (group commit), each answered after it; reads see the
//!   latest commit and never wait for writes. Scanners are server-wide, as in HBase.
//!
//! # Layout
//!
//! * `config.rs` — [`Config`], the `chatpipe hbase-emulator` flags (env `CHATPIPE_HBASE_EMULATOR_*`);
//! * `keys.rs` — keys of the store (`table id ‖ row ‖ edit sequence`, bytewise row order);
//! * `row.rs` — one row (families, columns, versions, delete markers) and HBase's write
//!   semantics on it, as reads put it together (unit-tested);
//! * `store/` — tables, writes, reads and scans, no Thrift (unit-tested): `meta.rs`
//!   (descriptors), `batch.rs` (mutations in one buffer), `edit.rs` (a row's edits: blind
//!   deltas, snapshots, merging), `engine.rs` (log, memstore, sorted files, flushes,
//!   compaction), `commit.rs` (group commit of every write), `read.rs` (the read path);
//! * `filter.rs` — HBase's filter language as happybase users write it (bounded parser);
//! * `regions.rs` — region boundaries, salt pre-splits ([`SALT_BUCKETS`], chatpipe-common's);
//! * `scanner.rs` — open scanners;
//! * `handler.rs` — the `HbaseSyncHandler` implementation;
//! * `mutate_rows.rs` — `mutateRows`/`mutateRowsTs` decoded straight into one buffer;
//! * `protocol.rs` — transports and bounded protocols;
//! * `server.rs` — listener, connection threads, shutdown.
//!
//! # Use
//!
//! From the binary: `chatpipe hbase-emulator --listen 127.0.0.1:9090 --data-dir DIR`
//! (or `--in-memory`), which calls [`run`] until the shutdown future resolves.
//!
//! In-process (tests of other crates): [`start`] binds (port 0 allowed) and returns an
//! [`EmulatorHandle`] with the bound address; [`EmulatorHandle::stop`] (or dropping it) closes
//! every connection and the store, after which the same port and data dir can be started
//! again — e.g. to test a sink against an HBase outage:
//!
//! ```no_run
//! use chatpipe_hbase_emulator::{start, Config};
//! # fn main() -> Result<(), chatpipe_hbase_emulator::Error> {
//! let dir = std::path::PathBuf::from("/tmp/emulator-data");
//! let emulator = start(Config::on_disk("127.0.0.1:0".parse().unwrap(), &dir))?;
//! let addr = emulator.local_addr();
//! // ... write through a Thrift client on `addr` ...
//! emulator.stop(); // HBase is down
//! let emulator = start(Config::on_disk(addr, &dir))?; // back, same data
//! # drop(emulator); Ok(()) }
//! ```

mod config;
mod error;
mod filter;
mod handler;
mod keys;
mod mutate_rows;
mod protocol;
mod regions;
mod row;
mod scanner;
mod server;
mod store;

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;

pub use config::{
    Config, ThriftProtocol, ThriftTransport, DEFAULT_IDLE_TIMEOUT_SECS, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_MESSAGE_BYTES,
};
pub use error::Error;
pub use regions::{salt_split_points, SALTED_NAMESPACE, SALT_BUCKETS};
pub use server::EmulatorHandle;
pub use store::{Durability, LOCK_FILE, LSM_DIR};

/// The store file of emulators before the write path moved to an LSM tree: not read any
/// more (a warning names it when present).
pub const LEGACY_STORE_FILE: &str = "hbase-emulator.redb";

/// Opens the store, binds the listener and starts serving on background threads.
///
/// Blocking (it opens and may recover the store file); from async code prefer [`run`] or
/// call it in `spawn_blocking`.
pub fn start(config: Config) -> Result<EmulatorHandle, Error> {
    if config.max_connections == 0 {
        return Err(Error::Config("--max-connections must be at least 1".into()));
    }
    let options = store::EngineOptions {
        durability: config.durability,
        memstore_bytes: config.memstore_size_mb.saturating_mul(1024 * 1024),
        block_cache_bytes: config.block_cache_mb.saturating_mul(1024 * 1024),
    };
    let store = match (&config.data_dir, config.in_memory) {
        (_, true) => store::Store::temporary(options)
            .map_err(|source| Error::OpenStore { path: "<temporary>".into(), source })?,
        (Some(dir), false) => {
            std::fs::create_dir_all(dir).map_err(|source| Error::DataDir { path: dir.clone(), source })?;
            let legacy = dir.join(LEGACY_STORE_FILE);
            if legacy.exists() {
                tracing::warn!(
                    file = %legacy.display(),
                    "data of an older emulator (redb) is not read by this version; delete the file to reclaim space"
                );
            }
            store::Store::open(dir, options).map_err(|source| Error::OpenStore { path: dir.clone(), source })?
        }
        (None, false) => return Err(Error::Config("either --data-dir or --in-memory is required".into())),
    };
    let listener = TcpListener::bind(config.listen).map_err(|source| Error::Bind { addr: config.listen, source })?;
    let addr = listener.local_addr().map_err(|source| Error::Bind { addr: config.listen, source })?;
    let store = Arc::new(store);
    let handler = handler::Handler::new(Arc::clone(&store), config.presplit_salt, addr.ip().to_string(), addr.port());
    let wire = protocol::WireFormat {
        framed: config.framed(),
        compact: config.compact(),
        max_message_bytes: config.max_message_bytes,
        idle_timeout: (config.idle_timeout_secs > 0).then(|| std::time::Duration::from_secs(config.idle_timeout_secs)),
    };
    let handle = server::serve(listener, handler, store, wire, config.max_connections).map_err(Error::Spawn)?;
    tracing::info!(
        addr = %handle.local_addr(),
        data_dir = ?config.data_dir,
        in_memory = config.in_memory,
        transport = ?config.thrift_transport,
        protocol = ?config.thrift_protocol,
        "hbase emulator listening"
    );
    Ok(handle)
}

/// Serves until `shutdown` resolves, then closes every connection and the store.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), Error> {
    let handle = tokio::task::spawn_blocking(move || start(config)).await.map_err(|e| Error::Task(e.to_string()))??;
    shutdown.await;
    tokio::task::spawn_blocking(move || handle.stop()).await.map_err(|e| Error::Task(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + 'static>() {}
    fn assert_send<T: Send + 'static>(_: T) {}

    #[test]
    fn public_types_can_cross_threads_and_tasks() {
        assert_send_sync::<Error>();
        assert_send_sync::<EmulatorHandle>();
        // The future of `run` can be spawned on a multi-threaded runtime (it is not polled).
        assert_send(run(Config::in_memory("127.0.0.1:0".parse().unwrap()), async {}));
    }

    #[test]
    fn run_serves_until_shutdown_and_start_rejects_bad_config() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = rt.spawn(run(Config::in_memory("127.0.0.1:0".parse().unwrap()), async {
            let _ = rx.await;
        }));
        tx.send(()).unwrap();
        rt.block_on(task).unwrap().unwrap();

        let none = Config { in_memory: false, ..Config::in_memory("127.0.0.1:0".parse().unwrap()) };
        assert!(matches!(start(none), Err(Error::Config(_))));
        let zero = Config { max_connections: 0, ..Config::in_memory("127.0.0.1:0".parse().unwrap()) };
        assert!(matches!(start(zero), Err(Error::Config(_))));
    }
}
