//! `chatpipe`: the one binary. Each subcommand is one role; the binary only parses
//! arguments, sets up tracing and hands over to the role's library `run(config, shutdown)`.
//! Errors are printed once with their chain and the process exits non-zero.

mod dev;
mod load;

use anyhow::Result;
use chatpipe_common::telemetry::LogFormat;
use clap::{CommandFactory, Parser, Subcommand};

/// `chatpipe --version`: the crate version and the git revision it was built from
/// (`cli/build.rs`), e.g. `chatpipe 0.1.0 (rev 1a2b3c4d5e6f)`.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (rev ", env!("CHATPIPE_GIT_REVISION"), ")");

// mimalloc: the processor and sink allocate many small, short-lived buffers per record;
// it is markedly faster than the system allocator for that pattern (processor bench).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// chatpipe: a streaming pipeline for chat events (ingest → Kafka → processor → HBase).
#[derive(Parser, Debug)]
#[command(name = "chatpipe", version = VERSION, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    log: chatpipe_common::telemetry::LogArgs,
    #[command(subcommand)]
    command: Command,
}

// One value, parsed once at start-up: boxing the large variants buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Accept chat events over HTTP (POST /v1/events) and publish them to chat.events.
    Ingest(chatpipe_ingest::Config),
    /// Serve HBase's Thrift1 API from an embedded store (dev and tests).
    HbaseEmulator(chatpipe_hbase_emulator::Config),
    /// Process chat.events into timelines, inboxes, membership, unread and window counts.
    Process(chatpipe_processor::Config),
    /// Write chat.rows into HBase through its Thrift1 API (batched, replay-safe).
    Sink(chatpipe_sink::Config),
    /// Serve the read API for chat clients (timelines, inboxes, sessions, live push) from HBase.
    Serve(chatpipe_serve::Config),
    /// Create the HBase tables (`create`) or print HBase shell DDL (`--hbase-shell`).
    Tables(chatpipe_sink::TablesArgs),
    /// Read a conversation timeline or a user's inbox from HBase, newest first.
    Query(chatpipe_sink::QueryArgs),
    /// Run the whole pipeline locally: tansu, HBase emulator, ingest, processor and sink.
    Dev(dev::DevArgs),
    /// Generate chat load against an ingest URL; optionally verify it landed in HBase.
    Load(load::LoadArgs),
    /// Print a shell completion script to stdout, e.g.
    /// `chatpipe completions bash > /etc/bash_completion.d/chatpipe`.
    Completions {
        /// The shell: bash, elvish, fish, powershell or zsh.
        shell: clap_complete::Shell,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Command::Completions { shell } = cli.command {
        // before tracing: the script is the only output
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "chatpipe", &mut script);
        return match std::io::Write::write_all(&mut std::io::stdout().lock(), &script) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()), // `| head`
            r => Ok(r?),
        };
    }
    let default_format =
        if matches!(cli.command, Command::Dev(_) | Command::Load(_)) { LogFormat::Text } else { LogFormat::Json };
    chatpipe_common::telemetry::init(&cli.log, default_format)?;
    let shutdown = chatpipe_common::shutdown::signal();
    match cli.command {
        Command::Ingest(cfg) => chatpipe_ingest::run(cfg, shutdown).await?,
        Command::HbaseEmulator(cfg) => chatpipe_hbase_emulator::run(cfg, shutdown).await?,
        Command::Process(cfg) => chatpipe_processor::run(cfg, shutdown).await?,
        Command::Sink(cfg) => chatpipe_sink::run(cfg, shutdown).await?,
        Command::Serve(cfg) => chatpipe_serve::run(cfg, shutdown).await?,
        Command::Tables(args) => chatpipe_sink::tables::run(args, &mut std::io::stdout()).await?,
        Command::Dev(args) => dev::run(args, shutdown).await?,
        Command::Load(args) => load::run(args).await?,
        Command::Query(args) => chatpipe_sink::query::run(args, &mut std::io::stdout(), &mut std::io::stderr()).await?,
        Command::Completions { .. } => {}
    }
    Ok(())
}
