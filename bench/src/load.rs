//! The load generator: the same code drives every HTTP path (direct, Palisade, nginx), so
//! differences between rows come from the path, not from the client.
//!
//! - [`throughput`]: a closed loop on `concurrency` connections (HTTP/1.1: one request at
//!   a time per connection; HTTP/2: one connection each too, so both protocols offer the
//!   same parallelism and only the framing differs).
//! - [`latency`]: an open loop at a fixed rate; each request's latency counts from when it
//!   was due, so a slow response cannot hide the requests queued behind it (coordinated
//!   omission).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// How the client speaks to the first hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Http1,
    /// HTTP/2 with prior knowledge (h2c), as a sidecar's application would.
    Http2,
}

impl Proto {
    pub fn label(self) -> &'static str {
        match self {
            Proto::Http1 => "HTTP/1.1",
            Proto::Http2 => "HTTP/2",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Proto::Http1 => "http1",
            Proto::Http2 => "http2",
        }
    }
}

/// One client connection.
pub enum Conn {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

pub async fn connect(addr: SocketAddr, proto: Proto) -> anyhow::Result<Conn> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let io = TokioIo::new(tcp);
    Ok(match proto {
        Proto::Http1 => {
            let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            Conn::H1(sender)
        }
        Proto::Http2 => {
            let (sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            Conn::H2(sender)
        }
    })
}

/// One GET, its body read to the end; an error unless 2xx.
pub async fn one(conn: &mut Conn, host: &str) -> anyhow::Result<()> {
    let resp = match conn {
        Conn::H1(sender) => {
            sender.ready().await?;
            let req = Request::get("/item")
                .header("host", host)
                .body(Empty::new())?;
            sender.send_request(req).await?
        }
        Conn::H2(sender) => {
            sender.ready().await?;
            let req = Request::get(format!("http://{host}/item")).body(Empty::new())?;
            sender.send_request(req).await?
        }
    };
    if !resp.status().is_success() {
        bail!("status {}", resp.status());
    }
    resp.into_body().collect().await?;
    Ok(())
}

/// Closed loop: `concurrency` connections, each sending as fast as answered, for
/// `duration`. Returns (requests per second, errors).
pub async fn throughput(
    addr: SocketAddr,
    proto: Proto,
    host: &str,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<(f64, u64)> {
    let (done, errors, elapsed) = closed_loop(addr, proto, host, concurrency, duration).await?;
    Ok((done as f64 / elapsed.as_secs_f64(), errors))
}

/// The closed loop of [`throughput`]: requests completed, errors, and how long it took
/// (until the last connection stopped).
pub async fn closed_loop(
    addr: SocketAddr,
    proto: Proto,
    host: &str,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<(u64, u64, Duration)> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let mut conn = connect(addr, proto).await?;
        let (stop, done, errors, host) =
            (stop.clone(), done.clone(), errors.clone(), host.to_owned());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match one(&mut conn, &host).await {
                    Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    Ok((
        done.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        started.elapsed(),
    ))
}

/// Open loop at `rate` requests per second for `duration`: latency from when each request
/// was due. Returns (p50, p99, p99.9) in milliseconds, and errors.
pub async fn latency(
    addr: SocketAddr,
    proto: Proto,
    host: &str,
    rate: u64,
    duration: Duration,
) -> anyhow::Result<([f64; 3], u64)> {
    // Enough connections that the pool is never the bottleneck at this rate.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..64 {
        tx.send(connect(addr, proto).await?).ok();
    }
    let pool = Arc::new(tokio::sync::Mutex::new(rx));
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let total = (rate as f64 * duration.as_secs_f64()) as u64;
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = started + interval * i as u32;
        tokio::time::sleep_until(due).await;
        let (pool, tx, host) = (pool.clone(), tx.clone(), host.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut conn = pool
                .lock()
                .await
                .recv()
                .await
                .expect("pool never empties for good");
            let ok = one(&mut conn, &host).await.is_ok();
            let took = due.elapsed();
            let _ = tx.send(conn);
            (took, ok)
        }));
    }
    let mut samples = Vec::with_capacity(tasks.len());
    let mut errors = 0;
    for t in tasks {
        let (took, ok) = t.await?;
        if ok {
            samples.push(took.as_secs_f64() * 1000.0);
        } else {
            errors += 1;
        }
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    Ok((
        [
            percentile(&samples, 0.50),
            percentile(&samples, 0.99),
            percentile(&samples, 0.999),
        ],
        errors,
    ))
}

/// The `p` quantile of sorted `samples` (NaN when empty).
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    samples
        .get(((samples.len() as f64 * p) as usize).min(samples.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN)
}
