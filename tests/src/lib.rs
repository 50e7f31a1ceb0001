//! chatpipe-tests: the integration harness and the end-to-end tests.
//!
//! [`TestBroker`] starts a real Kafka-protocol broker (tansu, DESIGN §2) on a free port —
//! the in-memory engine by default, SQLite in a temporary directory when a test needs the
//! broker to survive a restart — waits until a metadata request succeeds, creates topics,
//! and kills the broker when dropped. If `tansu` is not installed, starting fails with a
//! message naming the set-up command.
//!
//! [`chat`] holds the scripted workload, its independent oracle and the output collector;
//! [`pipeline`] produces a workload to `chat.events` and reads HBase back; [`roles`] runs
//! roles as `chatpipe` processes that tests kill (SIGKILL) or freeze (SIGSTOP); [`proxy`] is a
//! TCP proxy that holds, delays or resets a connection's bytes; [`time`] has [`now_ms`] and
//! the one "poll until true" loop ([`eventually`], [`wait_for`]).
//!
//! What the tests of one role share lives here too, not in a `tests/<role>_support/mod.rs`
//! compiled into every test binary: [`ingest_support`] (an in-process ingest, posting,
//! reading the events topic), [`sink_support`] (a row-mutation workload, its HBase model, an
//! in-process sink, offsets) and [`serve_support`] (a dataset written into the emulator with
//! the oracle of every read, an in-process serve, the OpenAPI checker, the push stream).
//!
//! The harness panics on set-up failure (it is test code: a broken harness must fail the
//! test loudly).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chatpipe_common::kafka::{ensure_topics, KafkaArgs, TopicSpec};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

/// The command that installs what the tests need.
pub const SETUP_COMMAND: &str = "scripts/setup";

/// The `chatpipe` binary of this workspace (built by `cargo build -p chatpipe`, which the
/// test command runs before the tests), for tests that kill a role's process.
pub fn chatpipe_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> → target/<profile>/chatpipe
    let dir = exe.parent().and_then(Path::parent).context("test executable has no parent directory")?;
    let bin = dir.join("chatpipe");
    if bin.is_file() {
        Ok(bin)
    } else {
        bail!("{} is missing: run `cargo build -p chatpipe` first (scripts/test does)", bin.display())
    }
}

/// Where the storage of a test broker lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// `memory://`: fast, gone with the process.
    Memory,
    /// `sqlite://` in a temporary directory: survives a kill and restart.
    Sqlite,
}

/// A tansu broker owned by one test.
pub struct TestBroker {
    port: u16,
    /// The port the broker names in metadata when clients reach it through a proxy.
    advertised: Option<u16>,
    storage: Storage,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// Finds the `tansu` binary (PATH, then `~/.cargo/bin`).
pub fn tansu_binary() -> Result<PathBuf> {
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin")));
    for dir in candidates {
        let p = dir.join("tansu");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("the `tansu` broker is not installed: run `{SETUP_COMMAND}` (it builds tansu 0.6.0 with chatpipe's group-coordinator patch: `scripts/tansu/build`)")
}

/// A free TCP port on 127.0.0.1 (bound and released), never one this process handed out
/// before: the kernel may give a just-released port to the next caller, and two tests of one
/// binary starting brokers at once would then share a port (the second broker fails to bind,
/// and its test talks to the first test's broker).
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = l.local_addr().expect("local addr").port();
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
}

impl TestBroker {
    /// Starts a broker with the memory engine.
    pub fn start() -> Self {
        Self::start_with(Storage::Memory)
    }

    /// Starts a broker with the given storage.
    pub fn start_with(storage: Storage) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut b = TestBroker { port: free_port(), advertised: None, storage, dir, child: None };
        // A port taken by another process in between makes tansu exit: try a fresh one.
        let mut attempts = 3;
        while let Err(e) = b.spawn() {
            attempts -= 1;
            if attempts == 0 {
                panic!("{e:#}");
            }
            b.stop();
            b.port = free_port();
        }
        b
    }

    /// Starts a broker (memory engine) behind a [`proxy::Proxy`]: it advertises the proxy's
    /// port, so every client — producers, consumers, their group coordinator — talks to it
    /// through the proxy, and the test can slow or hold the network.
    pub fn start_behind_proxy() -> (Self, proxy::Proxy) {
        let port = free_port();
        let proxy = proxy::Proxy::start(("127.0.0.1", port));
        let dir = tempfile::tempdir().expect("temp dir");
        let mut b =
            TestBroker { port, advertised: Some(proxy.addr().port()), storage: Storage::Memory, dir, child: None };
        b.spawn().unwrap_or_else(|e| panic!("{e:#}"));
        (b, proxy)
    }

    fn spawn(&mut self) -> Result<()> {
        let bin = tansu_binary()?;
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://127.0.0.1:{}", self.advertised.unwrap_or(self.port));
        let engine = match self.storage {
            Storage::Memory => "memory://tansu/".to_owned(),
            // resolved against the working directory (an absolute sqlite:///path is mangled)
            Storage::Sqlite => "sqlite://tansu.db".to_owned(),
        };
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("tansu.log"))?;
        let child = Command::new(&bin)
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &advertised, "--storage-engine", &engine])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(60))
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", self.bootstrap()).create()?;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("tansu exited with {status} during start-up; log:\n{}", self.log());
                }
            }
            if consumer.fetch_metadata(None, Duration::from_secs(2)).is_ok() {
                // The answer must come from our broker: one that lost the port to another
                // process exits at once, so look again after a moment.
                std::thread::sleep(Duration::from_millis(300));
                if let Some(status) = self.child.as_mut().map(Child::try_wait).transpose()?.flatten() {
                    bail!("tansu exited with {status} during start-up; log:\n{}", self.log());
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("tansu did not answer a metadata request within {timeout:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default()
    }

    /// The broker process's id while it runs (benchmarks read its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `127.0.0.1:PORT` (the proxy's port for a broker behind one).
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.advertised.unwrap_or(self.port))
    }

    /// Kafka arguments pointing at this broker.
    pub fn kafka_args(&self) -> KafkaArgs {
        KafkaArgs::new(self.bootstrap())
    }

    /// Creates topics (existing ones are kept).
    pub async fn create_topics(&self, specs: &[TopicSpec]) {
        ensure_topics(&self.kafka_args(), specs, Duration::from_secs(30)).await.expect("create topics");
    }

    /// Kills the broker (SIGKILL) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the broker again on the same port and storage (with [`Storage::Sqlite`],
    /// acknowledged data survives; with memory it is gone).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn().unwrap_or_else(|e| panic!("{e:#}"));
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

pub mod chat;
pub mod ingest_support;
pub mod pipeline;
pub mod proxy;
pub mod roles;
pub mod serve_support;
pub mod sink_support;
pub mod time;

pub use time::{eventually, now_ms, wait_for};

/// An HBase emulator (chatpipe's Thrift1 server, in process) owned by one test, persisting
/// to a temporary directory, so that it can be stopped and started again on the same port
/// with the same data — an HBase outage, as the sink sees it.
pub struct TestHbase {
    addr: std::net::SocketAddr,
    dir: tempfile::TempDir,
    durability: chatpipe_hbase_emulator::Durability,
    handle: Option<chatpipe_hbase_emulator::EmulatorHandle>,
}

impl TestHbase {
    /// Starts an emulator on a free port (default `--durability os`).
    pub fn start() -> Self {
        Self::start_with(chatpipe_hbase_emulator::Durability::Os)
    }

    /// Starts an emulator on a free port with the given `--durability`.
    pub fn start_with(durability: chatpipe_hbase_emulator::Durability) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = chatpipe_hbase_emulator::Config {
            durability,
            ..chatpipe_hbase_emulator::Config::on_disk(([127, 0, 0, 1], 0).into(), dir.path())
        };
        let handle = chatpipe_hbase_emulator::start(config).unwrap_or_else(|e| panic!("start the emulator: {e}"));
        TestHbase { addr: handle.local_addr(), dir, durability, handle: Some(handle) }
    }

    /// `127.0.0.1:PORT`, for `--hbase-thrift`.
    pub fn thrift(&self) -> String {
        self.addr.to_string()
    }

    /// The data directory (copy it while stopped to inspect what was durable).
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether it is serving.
    pub fn is_running(&self) -> bool {
        self.handle.is_some()
    }

    /// Stops serving: every connection is closed, the port and the store are released.
    pub fn stop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.stop();
        }
    }

    /// Starts again on the same port and data directory (retrying the bind for a while, in
    /// case the port is still held by the old sockets).
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let config = chatpipe_hbase_emulator::Config {
                durability: self.durability,
                ..chatpipe_hbase_emulator::Config::on_disk(self.addr, self.dir.path())
            };
            match chatpipe_hbase_emulator::start(config) {
                Ok(h) => {
                    self.handle = Some(h);
                    return;
                }
                Err(e) if Instant::now() < deadline => {
                    eprintln!("emulator restart on {} failed ({e}); retrying", self.addr);
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("restart the emulator on {}: {e}", self.addr),
            }
        }
    }
}

impl Drop for TestHbase {
    fn drop(&mut self) {
        self.stop();
    }
}
