//! `palisade-control-plane`: parse and validate flags, start, run until SIGINT or SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use palisade_contract::process::{report_problems, shutdown_signal};
use palisade_contract::telemetry::init_tracing;
use palisade_control_plane::{Config, start};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    init_tracing(config.log_format);
    if let Some(code) = report_problems(config.validate()) {
        return code;
    }
    let stop = shutdown_signal();
    let running = match start(&config).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    stop.await;
    running.shutdown().await;
    ExitCode::SUCCESS
}
