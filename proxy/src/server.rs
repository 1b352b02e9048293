//! HTTP serving that the inbound and outbound listeners share: the limits a client is held
//! to, and closing connections that sit idle, never start, or cancel too much.
//!
//! hyper has a header-read timeout for HTTP/1 but nothing that closes a kept-alive connection
//! with nothing to do, which lets idle clients pin file descriptors and connection slots
//! forever. [`serve_http`] counts the requests in flight on each connection and:
//! - closes a connection whose first request has not begun by its deadline (the header
//!   timeout from accept, through TLS and protocol detection: hyper's own HTTP/1 timer
//!   starts only once the version is known, and HTTP/2 has none, so a client sending
//!   nothing or half a preface held a `--max-connections` slot until the idle timeout);
//! - once no request has been in flight for `idle_timeout`, shuts the connection down
//!   gracefully (HTTP/1: closed between requests; HTTP/2: GOAWAY, open streams finish);
//! - ends a connection whose client cancels requests faster than [`RESET_LIMIT`] allows in
//!   [`RESET_WINDOW`] (HTTP/2 RST_STREAM, "rapid reset", CVE-2023-44487). h2's own limit
//!   counts only resets still waiting to be accepted, so resets paced a few dozen at a time
//!   never reached it; this one counts over time, as Envoy's premature-reset limit does;
//! - drains a mesh connection whose trust is lost ([`crate::trust`]): a certificate of its
//!   handshake expired or the peer's root left the bundle. GOAWAY (HTTP/2) or close after
//!   the current request (HTTP/1), then the socket is closed after the drain bound.

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
use crate::trust::{ConnectionTrust, Lost};

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

/// Most requests a client may cancel on one connection within [`RESET_WINDOW`] before the
/// connection is ended. A browser cancelling navigations stays far below it; a flood of
/// HEADERS + RST_STREAM, however paced, reaches it within a window.
pub const RESET_LIMIT: usize = 100;
/// The window [`RESET_LIMIT`] counts over.
pub const RESET_WINDOW: Duration = Duration::from_secs(10);
/// How long the requests in flight on a connection ended for resets may still finish.
const RESET_DRAIN: Duration = Duration::from_secs(1);

/// Serves one connection with `handle` until the client closes it, it has been idle for
/// `limits.idle_timeout`, no request began by `first_request_by`, its client cancelled
/// more than [`RESET_LIMIT`] requests in a [`RESET_WINDOW`], or (a mesh connection) its
/// `trust` is lost.
pub async fn serve_http<I, F, Fut>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    limits: &Limits,
    first_request_by: Instant,
    mut trust: Option<ConnectionTrust>,
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
                busy.finish();
                Ok::<_, Infallible>(response)
            }
        })
    };
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let stop = tokio::select! {
        result = conn.as_mut() => return result,
        () = activity.never_started(first_request_by) => Stop::NoRequest,
        () = activity.idle_for(limits.idle_timeout) => Stop::Idle,
        () = activity.flooded.notified() => Stop::Resets,
        lost = trust_lost(trust.as_mut()) => Stop::Trust(lost),
    };
    match stop {
        // Dropping the connection closes it: there is nothing in flight to finish.
        Stop::NoRequest => Err("no request began within the header timeout".into()),
        Stop::Idle => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        Stop::Resets => {
            tracing::warn!(
                limit = RESET_LIMIT,
                window = ?RESET_WINDOW,
                "ending a connection whose client cancelled too many requests (rapid reset)"
            );
            // GOAWAY; what is in flight gets a moment, then the socket is closed.
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(RESET_DRAIN, conn).await;
            Err("the client cancelled too many requests".into())
        }
        Stop::Trust(lost) => {
            let drain = trust
                .as_ref()
                .map_or(Duration::ZERO, ConnectionTrust::drain);
            tracing::info!(target: "palisade::identity", event = "connection.drained",
                reason = %lost, drain = ?drain, "draining a mesh connection that lost its trust");
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(drain, conn).await {
                Ok(result) => result,
                Err(_) => Err(format!("closed at the drain bound: {lost}").into()),
            }
        }
    }
}

/// Resolves when `trust` is lost; never for a connection without one.
async fn trust_lost(trust: Option<&mut ConnectionTrust>) -> Lost {
    match trust {
        Some(trust) => trust.lost().await,
        None => std::future::pending().await,
    }
}

/// Why [`serve_http`] ends a connection the client has not closed.
enum Stop {
    NoRequest,
    Idle,
    Resets,
    Trust(Lost),
}

/// The requests in flight on one connection, when the last one ended, and the requests its
/// client cancelled lately. The outbound pool keeps one per pooled connection too, to close
/// it once idle.
#[derive(Debug)]
pub(crate) struct Activity {
    in_flight: AtomicUsize,
    begun: AtomicUsize,
    last_ended: Mutex<Instant>,
    /// Requests cancelled (dropped before their response was ready) in the current window,
    /// and when that window began.
    cancelled: Mutex<(usize, Instant)>,
    flooded: tokio::sync::Notify,
}

/// A request in flight; ends when dropped, and counts as cancelled unless it finished.
pub(crate) struct Busy {
    activity: Arc<Activity>,
    finished: bool,
}

impl Busy {
    fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let activity = &self.activity;
        *activity.last_ended.lock().expect("not poisoned") = Instant::now();
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
        if !self.finished {
            activity.cancelled_one(Instant::now());
        }
    }
}

impl Activity {
    pub(crate) fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            begun: AtomicUsize::new(0),
            last_ended: Mutex::new(Instant::now()),
            cancelled: Mutex::new((0, Instant::now())),
            flooded: tokio::sync::Notify::new(),
        }
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.begun.fetch_add(1, Ordering::AcqRel);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy {
            activity: self.clone(),
            finished: false,
        }
    }

    /// A request in flight that is never counted as cancelled (we are its client).
    pub(crate) fn begin_ours(self: &Arc<Self>) -> Busy {
        let mut busy = self.begin();
        busy.finished = true;
        busy
    }

    /// Resolves at `deadline` if no request has begun by then; never otherwise.
    async fn never_started(&self, deadline: Instant) {
        tokio::time::sleep_until(deadline).await;
        if self.begun.load(Ordering::Acquire) > 0 {
            std::future::pending::<()>().await;
        }
    }

    /// Counts a cancelled request at `now`; past [`RESET_LIMIT`] in a window, the connection
    /// is flooded.
    fn cancelled_one(&self, now: Instant) {
        let mut window = self.cancelled.lock().expect("not poisoned");
        if now.duration_since(window.1) >= RESET_WINDOW {
            *window = (0, now);
        }
        window.0 += 1;
        if window.0 > RESET_LIMIT {
            self.flooded.notify_one();
        }
    }

    /// Resolves once no request has been in flight for `timeout`.
    pub(crate) async fn idle_for(&self, timeout: Duration) {
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
    async fn cancellations_are_counted_over_a_window_however_they_are_paced() {
        let activity = Arc::new(Activity::new());
        let flooded = || {
            let a = activity.clone();
            async move {
                tokio::time::timeout(Duration::from_millis(1), a.flooded.notified())
                    .await
                    .is_ok()
            }
        };
        // Finished requests never count.
        for _ in 0..10 * RESET_LIMIT {
            activity.begin().finish();
        }
        assert!(!flooded().await);
        // Cancellations spread thinly over many windows never add up.
        for _ in 0..5 {
            for _ in 0..RESET_LIMIT / 2 {
                drop(activity.begin());
            }
            tokio::time::advance(RESET_WINDOW).await;
        }
        assert!(!flooded().await);
        // 50 every 10 ms, as the paced attack sent them: over the limit within the window.
        for _ in 0..3 {
            for _ in 0..50 {
                drop(activity.begin());
            }
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        assert!(flooded().await);
    }

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
