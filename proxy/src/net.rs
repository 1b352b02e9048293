//! The two socket operations every path shares: dialling with a deadline and without Nagle,
//! and piping bytes both ways.
//!
//! Every connection the sidecar opens carries small, latency-bound messages (HTTP/2 frames,
//! AMQP methods, TLS records), so Nagle's algorithm is always off: with it on, the
//! benchmark's p99 was 6x nginx's. And every dial has a deadline, so an address that drops
//! SYNs costs a bounded wait, not the kernel's two minutes.

use std::future::Future;
use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, ToSocketAddrs};

/// TCP to `addr` within `timeout`, with `TCP_NODELAY` set. A missed deadline is an
/// `io::ErrorKind::TimedOut` error.
pub async fn connect(addr: impl ToSocketAddrs, timeout: Duration) -> io::Result<TcpStream> {
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// Copies both ways until both sides have closed or `cut` resolves (then both sockets are
/// closed); returns the bytes (sent to the peer, received from it). An error or a cut ends
/// the copy and counts nothing.
pub async fn pipe<P, L>(mut peer: P, mut local: L, cut: impl Future<Output = ()>) -> (u64, u64)
where
    P: AsyncRead + AsyncWrite + Unpin,
    L: AsyncRead + AsyncWrite + Unpin,
{
    let copied = tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut peer, &mut local) => copied,
        () = cut => return (0, 0),
    };
    match copied {
        Ok((from_peer, to_peer)) => (to_peer, from_peer),
        Err(e) => {
            tracing::debug!(error = %e, "piped connection ended with an error");
            (0, 0)
        }
    }
}

/// A TCP connection to `addr` within `timeout`, or why not, naming it `what {addr}` for the
/// audit line: opaque ports to the application, and outbound passthrough.
pub(crate) async fn connect_described(
    addr: std::net::SocketAddr,
    timeout: Duration,
    what: &str,
) -> Result<TcpStream, String> {
    connect(addr, timeout).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::TimedOut => format!("{what} {addr} did not answer"),
        _ => format!("{what} {addr} refused: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connects_without_nagle_and_says_why_not() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let timeout = Duration::from_secs(5);
        let tcp = connect(addr, timeout).await.unwrap();
        assert!(tcp.nodelay().unwrap());
        drop((tcp, listener));
        // A port nobody listens on is refused at once, and the audit text says so.
        let refused = connect_described(addr, timeout, "the application at")
            .await
            .unwrap_err();
        assert!(
            refused.starts_with(&format!("the application at {addr} refused")),
            "{refused}"
        );
    }
}
