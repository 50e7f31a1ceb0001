//! chatpipe-tests: the integration harness and the end-to-end tests.
//!
//! [`TestBroker`] starts a real Kafka-protocol broker (tansu, DESIGN §2) on a free port —
//! the in-memory engine by default, SQLite in a temporary directory when a test needs the
//! broker to survive a restart — waits until a metadata request succeeds, creates topics,
//! and kills the broker when dropped. If `tansu` is not installed, starting fails with a
//! message naming the set-up command.
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
    bail!("the `tansu` broker is not installed: run `{SETUP_COMMAND}` (it runs `cargo install --locked tansu --version 0.6.0 --features libsql,dynostore`)")
}

/// A free TCP port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

impl TestBroker {
    /// Starts a broker with the memory engine.
    pub fn start() -> Self {
        Self::start_with(Storage::Memory)
    }

    /// Starts a broker with the given storage.
    pub fn start_with(storage: Storage) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut b = TestBroker { port: free_port(), storage, dir, child: None };
        b.spawn().unwrap_or_else(|e| panic!("{e:#}"));
        b
    }

    fn spawn(&mut self) -> Result<()> {
        let bin = tansu_binary()?;
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let engine = match self.storage {
            Storage::Memory => "memory://tansu/".to_owned(),
            // resolved against the working directory (an absolute sqlite:///path is mangled)
            Storage::Sqlite => "sqlite://tansu.db".to_owned(),
        };
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("tansu.log"))?;
        let child = Command::new(&bin)
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", &engine])
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

    /// `127.0.0.1:PORT`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
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
