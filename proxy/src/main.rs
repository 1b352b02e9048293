//! `palisade-proxy`: parse and validate flags, start, run until SIGINT or SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use palisade_contract::telemetry::init_tracing;
use palisade_proxy::{Config, start};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    init_tracing(config.log_format);
    if let Err(problems) = config.validate() {
        for p in &problems {
            eprintln!("error: {p}");
        }
        return ExitCode::from(2);
    }
    let running = match start(&config).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    running.shutdown().await;
    ExitCode::SUCCESS
}
