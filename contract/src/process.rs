//! What both binaries do around their work: report every configuration problem and exit 2,
//! and wait for SIGINT or SIGTERM to start a graceful shutdown.

use std::process::ExitCode;

/// Prints each problem as `error: ...` and returns exit status 2, or `None` when there are
/// none.
pub fn report_problems(result: Result<(), Vec<String>>) -> Option<ExitCode> {
    let problems = result.err()?;
    for p in &problems {
        eprintln!("error: {p}");
    }
    Some(ExitCode::from(2))
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (what Kubernetes and docker send).
pub async fn shutdown_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "no SIGTERM handler; only Ctrl-C stops this process");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutting down");
}
