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

/// The next connection on `listener`, or `None` once `shutdown` resolves. Accept errors
/// (out of file descriptors, a connection reset before it was accepted) are logged and
/// retried after a short pause instead of ending the server. Nagle is turned off: every
/// server here forwards small messages whose latency matters.
pub async fn accept(
    listener: &tokio::net::TcpListener,
    shutdown: &mut (impl std::future::Future<Output = ()> + Unpin),
    what: &str,
) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, addr)) => {
                    let _ = tcp.set_nodelay(true);
                    return Some((tcp, addr));
                }
                Err(e) => {
                    tracing::warn!(listener = what, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            },
            () = &mut *shutdown => return None,
        }
    }
}

/// Resolves once `stopped` turns true (or its sender is dropped): the shutdown future each
/// listener and loop of a process is given, written once for the sidecar and the control
/// plane.
pub fn until_stopped(
    stopped: &tokio::sync::watch::Receiver<bool>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut rx = stopped.clone();
    async move {
        let _ = rx.wait_for(|s| *s).await;
    }
}
