//! HTTP serving that the inbound and outbound listeners share: the limits a client is held
//! to, and closing connections that sit idle.
//!
//! hyper has a header-read timeout for HTTP/1 but nothing that closes a kept-alive connection
//! with nothing to do, which lets idle clients pin file descriptors and connection slots
//! forever. [`serve_http`] counts the requests in flight on each connection and, once none
//! has been for `idle_timeout`, shuts the connection down gracefully (HTTP/1: closed between
//! requests; HTTP/2: GOAWAY, open streams finish).

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::forwarding::ProxyBody;

/// Limits on what a client may send; each is a flag of the sidecar.
#[derive(Debug, Clone)]
pub struct Limits {
    /// TLS handshake, and then each request's headers (HTTP/1), must arrive within this.
    pub header_timeout: Duration,
    /// Largest HTTP/1 request head, and HTTP/2 header list, in bytes.
    pub max_header_bytes: usize,
    /// Most header fields in an HTTP/1 request (HTTP/2 is bounded by `max_header_bytes`).
    pub max_headers: usize,
    /// Most HTTP/2 streams open at once on one connection.
    pub max_streams: u32,
    /// Most connections open at once; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_streams: 256,
            max_connections: 10_000,
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// An HTTP/1.1 + HTTP/2 server held to `limits`. HTTP/2 also caps the resets a client may
/// provoke (CVE-2023-44487 "rapid reset" and its relatives): a flood of them ends the
/// connection with GOAWAY instead of burning CPU.
pub fn http_server(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams)
        .max_header_list_size(limits.max_header_bytes as u32)
        .max_pending_accept_reset_streams(Some(64))
        .max_local_error_reset_streams(Some(256));
    builder
}

/// Serves one connection with `handle` until the client closes it or it has been idle for
/// `idle_timeout`.
pub async fn serve_http<I, F, Fut>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    idle_timeout: Duration,
    handle: F,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let service = {
        let activity = activity.clone();
        service_fn(move |req| {
            let (handle, busy) = (handle.clone(), activity.begin());
            async move {
                let response = handle(req).await;
                drop(busy);
                Ok::<_, Infallible>(response)
            }
        })
    };
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => result,
        () = activity.idle_for(idle_timeout) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}

/// The requests in flight on one connection, and when the last one ended.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    last_ended: Mutex<Instant>,
}

/// A request in flight; ends when dropped.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        *self.0.last_ended.lock().expect("not poisoned") = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Activity {
    fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            last_ended: Mutex::new(Instant::now()),
        }
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// Resolves once no request has been in flight for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let last = *self.last_ended.lock().expect("not poisoned");
            if self.in_flight.load(Ordering::Acquire) == 0 && last.elapsed() >= timeout {
                return;
            }
            // Busy now, or idle for less than `timeout`: look again when it could be over.
            let wait = timeout.saturating_sub(last.elapsed()).max(timeout / 10);
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_only_when_nothing_is_in_flight_for_the_whole_timeout() {
        let activity = Arc::new(Activity::new());
        let busy = activity.begin();
        let t = Duration::from_secs(10);
        // A request in flight for longer than the timeout keeps the connection.
        assert!(
            tokio::time::timeout(Duration::from_secs(30), activity.idle_for(t))
                .await
                .is_err()
        );
        drop(busy);
        let started = tokio::time::Instant::now();
        activity.idle_for(t).await;
        let waited = started.elapsed();
        assert!(waited >= t && waited < t + t / 5, "{waited:?}");
    }
}
