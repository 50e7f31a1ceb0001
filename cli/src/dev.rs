//! `chatpipe dev`: the whole pipeline in one process on a laptop.
//!
//! Starts a tansu broker (SQLite storage under the data directory, so it survives
//! restarts), the HBase Thrift emulator (persistent, under the data directory), creates the
//! topics and tables, and runs ingest, processor, sink and serve in-process with one shared
//! metrics endpoint. `--demo` adds a synthetic chat workload and a live summary line.
//! Ctrl-C drains every role and stops the broker it started. Auth is off unless
//! `--api-keys-file` is given; requests that carry an `Authorization` header still work.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chatpipe_common::http::{ObservabilityServer, Telemetry};
use clap::{Args, Parser};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

/// `chatpipe dev` flags.
#[derive(Debug, Clone, Args)]
pub struct DevArgs {
    /// Events API address.
    #[arg(long, env = "CHATPIPE_DEV_HTTP_LISTEN", default_value = "127.0.0.1:8080")]
    pub http_listen: SocketAddr,
    /// Read API (chatpipe serve) address.
    #[arg(long, env = "CHATPIPE_DEV_SERVE_LISTEN", default_value = "127.0.0.1:8081")]
    pub serve_listen: SocketAddr,
    /// Kafka (tansu) listener.
    #[arg(long, env = "CHATPIPE_DEV_KAFKA_LISTEN", default_value = "127.0.0.1:9092")]
    pub kafka_listen: SocketAddr,
    /// HBase Thrift (emulator) listener.
    #[arg(long, env = "CHATPIPE_DEV_THRIFT_LISTEN", default_value = "127.0.0.1:9090")]
    pub thrift_listen: SocketAddr,
    /// /metrics, /healthz, /readyz of all roles.
    #[arg(long, env = "CHATPIPE_DEV_METRICS_LISTEN", default_value = "127.0.0.1:9464")]
    pub metrics_listen: SocketAddr,
    /// Data directory (broker, HBase, processor scratch).
    #[arg(long, env = "CHATPIPE_DEV_DATA_DIR", default_value = "./.chatpipe")]
    pub data_dir: PathBuf,
    /// Require API keys from this file (one key per line, or name:key); default: no auth.
    #[arg(long, env = "CHATPIPE_DEV_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// Partitions of chat.events and the internal topics.
    #[arg(long, env = "CHATPIPE_DEV_PARTITIONS", default_value_t = 4)]
    pub partitions: i32,
    /// The tansu binary.
    #[arg(long, env = "CHATPIPE_DEV_TANSU", default_value = "tansu")]
    pub tansu: PathBuf,
    /// Also drive a synthetic chat workload and print a live summary.
    #[arg(long)]
    pub demo: bool,
    /// Events per second of the --demo workload.
    #[arg(long, default_value_t = 200)]
    pub demo_rate: u64,
}

/// Parses a role's config from flags, exactly as its subcommand would.
fn role_config<T: Args + clap::FromArgMatches>(args: &[String]) -> Result<T> {
    #[derive(Parser)]
    struct W<T: Args> {
        #[command(flatten)]
        c: T,
    }
    let argv = std::iter::once("chatpipe".to_string()).chain(args.iter().cloned());
    Ok(W::<T>::try_parse_from(argv)?.c)
}

/// Producer settings for the local broker (DESIGN §2): no compression (loopback, and tansu
/// decompresses every batch it stores: a quarter of its CPU under load) and two requests in
/// flight per connection (with librdkafka's five, a producer's broker thread spins while
/// tansu is slow to answer: ingest and the processor burned 40–70 CPU-s per minute of load).
/// Measured in docs/BENCHMARKS.md (bench/devstack); production keeps the defaults.
const DEV_KAFKA_OPTIONS: [&str; 2] = ["compression.type=none", "max.in.flight.requests.per.connection=2"];

/// `--kafka-option` flags for [`DEV_KAFKA_OPTIONS`].
fn dev_kafka_options() -> Vec<String> {
    DEV_KAFKA_OPTIONS.iter().flat_map(|o| ["--kafka-option".to_owned(), (*o).to_owned()]).collect()
}

fn s(v: impl ToString) -> String {
    v.to_string()
}

struct Broker {
    child: Child,
}

impl Broker {
    fn start(tansu: &Path, listen: SocketAddr, dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("tansu.log"))?;
        let url = format!("tcp://{listen}");
        let child = Command::new(tansu)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", "sqlite://tansu.db"])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot start {} ({e}): install it with `scripts/setup` (tansu 0.6.0 with chatpipe's group-coordinator patch, scripts/tansu/build)",
                    tansu.display()
                )
            })?;
        let mut b = Broker { child };
        let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", listen.to_string()).create()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = b.child.try_wait()? {
                bail!("tansu exited with {status} (is {listen} in use?); see {}", dir.join("tansu.log").display());
            }
            if consumer.fetch_metadata(None, Duration::from_secs(1)).is_ok() {
                return Ok(b);
            }
            if Instant::now() > deadline {
                bail!("tansu did not answer on {listen} within 60 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn stop(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn metric_sum(t: &Telemetry, name: &str, label: Option<(&str, &str)>) -> f64 {
    t.registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| label.is_none_or(|(k, v)| m.get_label().iter().any(|l| l.name() == k && l.value() == v)))
        .map(|m| m.get_counter().get_value() + m.get_gauge().get_value())
        .sum()
}

/// Runs the local stack until `shutdown` resolves.
pub async fn run(args: DevArgs, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> Result<()> {
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
    let data = args.data_dir.canonicalize()?;
    let brokers = args.kafka_listen.to_string();
    let thrift = args.thrift_listen.to_string();

    let tansu = args.tansu.clone();
    let kafka_listen = args.kafka_listen;
    let kafka_dir = data.join("kafka");
    let broker = tokio::task::spawn_blocking(move || Broker::start(&tansu, kafka_listen, &kafka_dir)).await??;

    let hbase_dir = data.join("hbase");
    std::fs::create_dir_all(&hbase_dir)?;
    let emulator = chatpipe_hbase_emulator::start(role_config(&[
        "--listen".into(),
        thrift.clone(),
        "--data-dir".into(),
        hbase_dir.display().to_string(),
    ])?)?;
    let t = thrift.clone();
    let created =
        tokio::task::spawn_blocking(move || -> Result<Vec<(&'static str, chatpipe_sink::tables::Outcome)>> {
            let mut client = chatpipe_sink::hbase::HbaseClient::connect(&chatpipe_sink::hbase::HbaseConfig::new(t))?;
            Ok(chatpipe_sink::tables::create_all(&mut client)?)
        })
        .await??;

    let telemetry = Telemetry::new();
    let metrics = ObservabilityServer::start(args.metrics_listen, telemetry.clone()).await?;
    let mut ingest_args = vec![
        "--listen".into(),
        args.http_listen.to_string(),
        "--kafka-brokers".into(),
        brokers.clone(),
        "--events-partitions".into(),
        s(args.partitions),
    ];
    ingest_args.extend(dev_kafka_options());
    match &args.api_keys_file {
        Some(f) => ingest_args.extend(["--api-keys-file".into(), f.display().to_string()]),
        None => ingest_args.push("--insecure-no-auth".into()),
    }
    let ingest = chatpipe_ingest::start(role_config(&ingest_args)?, telemetry.clone()).await?;
    let processor = chatpipe_processor::start(
        role_config(
            &[
                dev_kafka_options(),
                vec![
                    "--kafka-brokers".into(),
                    brokers.clone(),
                    "--state-dir".into(),
                    data.join("processor").display().to_string(),
                    "--events-partitions".into(),
                    s(args.partitions),
                    "--output-partitions".into(),
                    s(args.partitions),
                    "--idle-timeout".into(),
                    "5s".into(),
                ],
            ]
            .concat(),
        )?,
        telemetry.clone(),
    )
    .await?;
    let sink_stop = tokio_util::sync::CancellationToken::new();
    let sink_cfg: chatpipe_sink::Config = role_config(
        &[
            dev_kafka_options(),
            vec![
                "--kafka-brokers".into(),
                brokers.clone(),
                "--hbase-thrift".into(),
                thrift.clone(),
                "--topic-partitions".into(),
                s(args.partitions),
            ],
        ]
        .concat(),
    )?;
    let sink = {
        let stop = sink_stop.clone();
        let t = telemetry.clone();
        tokio::spawn(async move {
            chatpipe_sink::run_with_telemetry(sink_cfg, t, async move { stop.cancelled().await }).await
        })
    };

    let mut serve_args = vec![
        "--listen".into(),
        args.serve_listen.to_string(),
        "--hbase-thrift".into(),
        thrift.clone(),
        "--kafka-brokers".into(),
        brokers.clone(),
    ];
    match &args.api_keys_file {
        Some(f) => serve_args.extend(["--api-keys-file".into(), f.display().to_string()]),
        None => serve_args.push("--insecure-no-auth".into()),
    }
    let serve_cfg: chatpipe_serve::Config = role_config(&serve_args)?;
    let serve = match chatpipe_serve::start(serve_cfg.clone(), telemetry.clone()).await {
        // the read API is an extra of `dev`: a taken port moves it rather than failing
        Err(chatpipe_serve::Error::Bind { addr, .. }) => {
            println!("  ({addr} is taken: the read API listens on a free port instead)");
            let cfg = chatpipe_serve::Config { listen: SocketAddr::from(([127, 0, 0, 1], 0)), ..serve_cfg };
            chatpipe_serve::start(cfg, telemetry.clone()).await?
        }
        other => other?,
    };

    let auth = match &args.api_keys_file {
        Some(f) => format!("API keys from {}", f.display()),
        None => "OFF (no API key needed; an Authorization header is accepted and ignored)".into(),
    };
    println!("chatpipe dev is up");
    println!("  events API   http://{}/v1/events   auth: {auth}", ingest.local_addr());
    println!("  read API     http://{}/v1/...   (OpenAPI: http://{0}/openapi.json)", serve.local_addr());
    println!("  metrics      http://{}/metrics  (/healthz, /readyz)", metrics.addr);
    println!("  Kafka        {brokers}   (tansu, data in {})", data.join("kafka").display());
    println!("  HBase Thrift {thrift}   (emulator, data in {}; tables: {})", hbase_dir.display(), created.len());
    println!("  try: curl -X POST http://{}/v1/events -H 'content-type: application/json' \\", ingest.local_addr());
    println!("         -d '{{\"type\":\"message\",\"session_id\":\"42\",\"session_kind\":\"direct\",\"sender_id\":1,\"recipient_id\":2,\"message\":{{\"kind\":\"text\",\"body\":\"hello\"}}}}'");
    println!("       chatpipe query timeline --hbase-thrift {thrift} --session 42");
    println!("  Ctrl-C stops everything.");

    let demo_stop = Arc::new(AtomicBool::new(false));
    let mut demo = None;
    if args.demo {
        let load: crate::load::LoadArgs = role_config(&[
            "--url".into(),
            format!("http://{}", ingest.local_addr()),
            "--rate".into(),
            s(args.demo_rate),
            "--duration".into(),
            "100y".into(),
            "--sessions".into(),
            "200".into(),
            "--concurrency".into(),
            "8".into(),
            "--quiet".into(),
        ])?;
        let stop = demo_stop.clone();
        demo = Some(tokio::spawn(async move { crate::load::generate(load, Some(stop)).await }));
        let t = telemetry.clone();
        let stop = demo_stop.clone();
        tokio::spawn(async move {
            let mut last = (Instant::now(), 0.0);
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let accepted = metric_sum(&t, chatpipe_ingest::metrics::EVENTS_TOTAL, Some(("outcome", "accepted")));
                let rate = (accepted - last.1) / last.0.elapsed().as_secs_f64();
                last = (Instant::now(), accepted);
                let lag = metric_sum(&t, chatpipe_processor::metrics::LAG, None)
                    + metric_sum(&t, chatpipe_sink::metrics::CONSUMER_LAG, None);
                let rows = metric_sum(&t, chatpipe_sink::metrics::ROWS_WRITTEN, None);
                println!("demo: {rate:>7.0} events/s accepted | lag {lag:>6.0} | {rows:>9.0} rows written | {accepted:>8.0} events total");
            }
        });
    }

    shutdown.await;
    println!("shutting down…");
    demo_stop.store(true, Ordering::Relaxed);
    if let Some(d) = demo {
        let _ = d.await;
    }
    ingest.shutdown().await?;
    serve.shutdown().await?;
    processor.shutdown().await?;
    sink_stop.cancel();
    match sink.await {
        Ok(r) => r?,
        Err(e) => bail!("sink task failed: {e}"),
    }
    metrics.shutdown().await;
    emulator.stop();
    tokio::task::spawn_blocking(move || broker.stop()).await?;
    println!("stopped");
    Ok(())
}
