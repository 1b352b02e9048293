//! `palisade-proxy`: parse and validate flags, start, run until SIGINT or SIGTERM.
//!
//! The runtime is built here rather than by `#[tokio::main]` because its shape is
//! configuration: one core gets tokio's single-threaded scheduler (no work stealing, no
//! cross-thread wake-ups on the request path), more get the multi-threaded one.

use std::process::ExitCode;

use clap::Parser;
use palisade_contract::process::{report_problems, shutdown_signal};
use palisade_contract::telemetry::init_tracing;
use palisade_proxy::{Config, start_with};

fn main() -> ExitCode {
    let config = Config::parse();
    init_tracing(config.log_format);
    let settings = match config.settings() {
        Ok(settings) => settings,
        Err(problems) => return report_problems(Err(problems)).unwrap_or(ExitCode::FAILURE),
    };
    let threads = settings.worker_threads;
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let stop = shutdown_signal();
        let running = match start_with(settings).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(threads, "serving");
        stop.await;
        running.shutdown().await;
        ExitCode::SUCCESS
    })
}
