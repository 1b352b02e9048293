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
///
/// The handlers are installed when this is *called*, not when the future is first polled:
/// call it before starting, so that a SIGTERM arriving right after "ready" is logged (a
/// supervisor or a test acting on that line) starts a graceful shutdown instead of taking
/// the default action and killing the process. Must be called inside a tokio runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            (term, int) => {
                let e = term.err().or(int.err()).map(|e| e.to_string());
                tracing::warn!(error = ?e, "no SIGTERM handler; only Ctrl-C stops this process");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        tracing::info!("shutting down");
    }
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

/// The long-running tasks of a process (listeners, loops), all stopped by one signal: each
/// is spawned with the future that resolves when the process stops, and [`Tasks::shutdown`]
/// raises the signal and waits for every one to finish (listeners drain in-flight work).
/// Written once for the sidecar and the control plane.
#[derive(Debug)]
pub struct Tasks {
    stop: tokio::sync::watch::Sender<bool>,
    set: tokio::task::JoinSet<()>,
}

impl Default for Tasks {
    fn default() -> Self {
        Self::new()
    }
}

impl Tasks {
    pub fn new() -> Self {
        Self {
            stop: tokio::sync::watch::channel(false).0,
            set: tokio::task::JoinSet::new(),
        }
    }

    /// Spawns `task(stopping)`, where `stopping` resolves once the process stops.
    pub fn spawn<F>(&mut self, task: impl FnOnce(Stopping) -> F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let stopping = until_stopped(&self.stop.subscribe());
        self.set.spawn(task(Box::pin(stopping)));
    }

    /// Raises the stop signal and waits for every task.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        while self.set.join_next().await.is_some() {}
    }
}

/// The future a task of [`Tasks`] is given: it resolves when the process stops.
pub type Stopping = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_task_sees_the_stop_and_shutdown_waits_for_it() {
        let finished = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Tasks::new();
        for _ in 0..3 {
            let finished = finished.clone();
            tasks.spawn(|stopping| async move {
                stopping.await;
                tokio::task::yield_now().await;
                finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
        tokio::task::yield_now().await;
        assert_eq!(finished.load(std::sync::atomic::Ordering::SeqCst), 0);
        tasks.shutdown().await;
        assert_eq!(finished.load(std::sync::atomic::Ordering::SeqCst), 3);
    }
}
