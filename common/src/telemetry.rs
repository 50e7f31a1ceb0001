//! Tracing set-up and shared metric helpers.
//!
//! Logs are JSON in production and human-readable in `dev` (`--log-format`). Levels mean
//! something: ERROR only for data at risk or operator action; per-record problems are
//! counted in metrics, not logged per record.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

/// Logging flags, global to every subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log format [default: text for `dev`, json otherwise].
    #[arg(long, env = "CHATPIPE_LOG_FORMAT", global = true)]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` or `chatpipe_sink=debug,info`.
    #[arg(long, env = "CHATPIPE_LOG", default_value = "info", global = true)]
    pub log_level: String,
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("invalid log filter: {0}")]
pub struct TelemetryError(String);

/// Installs the global subscriber. A second call (tests) keeps the first subscriber.
pub fn init(args: &LogArgs, default_format: LogFormat) -> Result<(), TelemetryError> {
    let filter = EnvFilter::try_new(&args.log_level).map_err(|e| TelemetryError(e.to_string()))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match args.log_format.unwrap_or(default_format) {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    Ok(())
}

/// Latency buckets in seconds, 0.5 ms to 30 s.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Size buckets (rows, events, bytes/KiB): powers of four.
pub const SIZE_BUCKETS: &[f64] =
    &[1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0];

/// Registers metrics on a registry. Metric names are constants owned by each crate, so
/// construction and registration only fail on a malformed or duplicate name: a programming
/// error that every test building the metrics catches, hence `expect` here.
pub struct Metrics<'r>(pub &'r Registry);

#[allow(clippy::expect_used)]
fn register<M: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: M) -> M {
    r.register(Box::new(m.clone())).expect("metric names are unique constants");
    m
}

#[allow(clippy::expect_used)]
impl Metrics<'_> {
    /// A counter.
    pub fn counter(&self, name: &str, help: &str) -> IntCounter {
        register(self.0, IntCounter::new(name, help).expect("valid metric name"))
    }
    /// A labelled counter.
    pub fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        register(self.0, IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric name"))
    }
    /// A gauge.
    pub fn gauge(&self, name: &str, help: &str) -> IntGauge {
        register(self.0, IntGauge::new(name, help).expect("valid metric name"))
    }
    /// A labelled gauge.
    pub fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        register(self.0, IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric name"))
    }
    /// A histogram with the given buckets.
    pub fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> Histogram {
        register(
            self.0,
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec())).expect("valid metric name"),
        )
    }
    /// A labelled histogram with the given buckets.
    pub fn histogram_vec(&self, name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
        register(
            self.0,
            HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), labels)
                .expect("valid metric name"),
        )
    }
}
