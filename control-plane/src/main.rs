//! `palisade-control-plane`: parse and validate flags, start, run until SIGINT or SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use palisade_contract::process::{report_problems, shutdown_signal};
use palisade_contract::telemetry::init_tracing;
use palisade_control_plane::{Config, start};

#[tokio::main]
async fn main() -> ExitCode {
    // `palisade-control-plane keys ...`: offline key changes, then exit.
    if std::env::args().nth(1).as_deref() == Some("keys") {
        let cli = palisade_control_plane::keys_cli::KeysCli::parse_from(
            std::iter::once("palisade-control-plane keys".to_owned())
                .chain(std::env::args().skip(2)),
        );
        return match cli.run() {
            Ok(lines) => {
                for line in lines {
                    println!("{line}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
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
