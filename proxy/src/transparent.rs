//! Transparent interception, the sidecar's side: where a redirected connection was going.
//!
//! The pod's init step (`palisade-init`) redirects TCP with iptables `REDIRECT`; the
//! kernel keeps the destination the application (or the peer) asked for, and
//! `SO_ORIGINAL_DST` returns it on the accepted socket. nix wraps the `getsockopt`, so no
//! `unsafe` is needed here.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsFd;

use nix::sys::socket::{getsockopt, sockopt};

/// The destination a redirected connection was addressed to (IPv4 or IPv6). For a
/// connection that was not redirected, the kernel answers with the socket's own local
/// address (IPv4) or an error (`ENOENT`).
pub fn original_dst(socket: &impl AsFd) -> io::Result<SocketAddr> {
    match getsockopt(socket, sockopt::OriginalDst) {
        Ok(v4) => Ok(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr)),
            u16::from_be(v4.sin_port),
        ))),
        Err(v4_error) => match getsockopt(socket, sockopt::Ip6tOriginalDst) {
            Ok(v6) => Ok(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(v6.sin6_addr.s6_addr),
                u16::from_be(v6.sin6_port),
                v6.sin6_flowinfo,
                v6.sin6_scope_id,
            ))),
            Err(_) => Err(io::Error::from(v4_error)),
        },
    }
}

/// How long a redirected outbound connection may stay silent before it is taken for a
/// protocol where the server speaks first (and passed through as TCP). Such ports are
/// best excluded from interception (`palisade-init --exclude-outbound-ports`).
pub const DETECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether the first bytes on `tcp` (peeked, not consumed) start an HTTP/1 request or the
/// HTTP/2 preface. TLS (a ClientHello starts with 0x16) and other protocols are not.
pub async fn looks_like_http(tcp: &tokio::net::TcpStream) -> bool {
    const METHODS: [&[u8]; 9] = [
        b"GET ",
        b"POST ",
        b"PUT ",
        b"HEAD ",
        b"DELETE ",
        b"OPTIONS ",
        b"PATCH ",
        b"TRACE ",
        b"PRI * HTTP/2.0",
    ];
    let deadline = tokio::time::Instant::now() + DETECT_TIMEOUT;
    let mut buf = [0u8; 14];
    loop {
        let n = match tokio::time::timeout_at(deadline, tcp.peek(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return false,
        };
        let seen = &buf[..n];
        let possible = METHODS
            .iter()
            .any(|m| m.starts_with(seen) || seen.starts_with(m));
        if !possible {
            return false;
        }
        if METHODS.iter().any(|m| seen.starts_with(m)) {
            return true;
        }
        // A prefix of a method so far: wait for more bytes.
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn first_bytes(parts: &[&[u8]]) -> bool {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let parts: Vec<Vec<u8>> = parts.iter().map(|p| p.to_vec()).collect();
        let writer = tokio::spawn(async move {
            for p in parts {
                client.write_all(&p).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            client
        });
        let verdict = looks_like_http(&server).await;
        let _client = writer.await.unwrap();
        // Peeking consumed nothing.
        let mut buf = [0u8; 1];
        if verdict {
            assert_eq!(server.peek(&mut buf).await.unwrap(), 1);
        }
        verdict
    }

    #[tokio::test]
    async fn http_is_told_from_tls_and_other_protocols() {
        assert!(first_bytes(&[b"GET /x HTTP/1.1\r\n"]).await);
        assert!(
            first_bytes(&[b"PO", b"ST / HTTP/1.1\r\n"]).await,
            "split method"
        );
        assert!(first_bytes(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]).await);
        assert!(
            !first_bytes(&[&[0x16, 0x03, 0x01, 0x02, 0x00]]).await,
            "TLS"
        );
        assert!(!first_bytes(&[b"GETX"]).await);
        assert!(
            !first_bytes(&[b"\x00\x00\x00\x08\x04\xd2\x16\x2f"]).await,
            "postgres"
        );
        // Silent (a server-first protocol): not HTTP, after the detection timeout.
        assert!(!first_bytes(&[]).await);
    }
}
