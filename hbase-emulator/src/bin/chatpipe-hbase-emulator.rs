//! A thin stand-alone binary of the emulator (the same as `chatpipe hbase-emulator`), used by
//! the kill -9 persistence test. Prints `listening on ADDR` on stdout once it accepts
//! connections; stops on SIGINT or SIGTERM.

use clap::Parser;

// the allocator of the `chatpipe` binary, so that this one measures the same
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "chatpipe-hbase-emulator", version, about)]
struct Args {
    #[command(flatten)]
    config: chatpipe_hbase_emulator::Config,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), chatpipe_hbase_emulator::Error> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let handle = tokio::task::spawn_blocking(move || chatpipe_hbase_emulator::start(args.config))
        .await
        .map_err(|e| chatpipe_hbase_emulator::Error::Task(e.to_string()))??;
    println!("listening on {}", handle.local_addr());
    shutdown_signal().await;
    tokio::task::spawn_blocking(move || handle.stop())
        .await
        .map_err(|e| chatpipe_hbase_emulator::Error::Task(e.to_string()))
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
