//! Connections to peer sidecars: TCP and mTLS to one of a service's endpoints with secure
//! naming (the peer must present the SPIFFE ID the registry names), and a pool of HTTP/2
//! connections per destination service, one per worker thread, as Envoy keeps a pool per
//! worker: with a single connection, every stream of the mesh hop went through one
//! connection task on each side, and the benchmark left a fifth of the CPU idle.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use palisade_contract::registry::ServiceEntry;
use palisade_contract::tls::{ExpectedServer, VerifyError, client_config, server_name_for};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::forwarding::ProxyBody;

use super::{ForwardError, Outbound};

impl Outbound {
    /// TCP and then mTLS to one of `entry`'s endpoints (in turn), or, for a service listed
    /// without endpoints, to `redirected` (the address the application connected to),
    /// offering `alpn`; the server must present `entry.identity` (secure naming).
    pub(crate) async fn dial(
        &self,
        entry: &ServiceEntry,
        redirected: Option<SocketAddr>,
        alpn: Vec<u8>,
    ) -> Result<TlsStream<TcpStream>, ForwardError> {
        let key = format!("{}/{}", entry.namespace, entry.name);
        let unreachable = |detail: String| ForwardError::Unreachable {
            service: key.clone(),
            detail,
        };
        let endpoint = if entry.endpoints.is_empty() {
            redirected.map(|a| a.to_string()).ok_or_else(|| {
                unreachable(
                    "the service lists no endpoints, so it is reachable only on intercepted \
                     connections (its address as the destination)"
                        .into(),
                )
            })?
        } else {
            let i = self.next_endpoint.fetch_add(1, Ordering::Relaxed);
            entry.endpoints[i % entry.endpoints.len()].clone()
        };
        let tcp = crate::net::connect(endpoint.as_str(), self.connect_timeout)
            .await
            .map_err(|e| unreachable(format!("{endpoint}: {e}")))?;
        let tls_config = client_config(
            Some(self.identity.slot()),
            self.identity.bundle(),
            ExpectedServer::Exact(entry.identity.clone()),
            &[alpn.as_slice()],
        );
        let tls = match tokio::time::timeout(
            self.connect_timeout,
            TlsConnector::from(Arc::new(tls_config)).connect(server_name_for(&entry.identity), tcp),
        )
        .await
        {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                self.metrics.handshake("outbound", "failure");
                return Err(match unexpected_peer(&e) {
                    Some((got, want)) => ForwardError::SecureNaming {
                        service: key,
                        want,
                        got,
                    },
                    None => unreachable(format!("{endpoint}: TLS: {e}")),
                });
            }
            Err(_) => {
                self.metrics.handshake("outbound", "timeout");
                return Err(unreachable(format!("{endpoint}: TLS handshake timed out")));
            }
        };
        self.metrics.handshake("outbound", "success");
        Ok(tls)
    }

    /// A live connection to `entry` (at `redirected` when it lists no endpoints), from the
    /// pool or new.
    pub(super) async fn connection(
        &self,
        entry: &ServiceEntry,
        redirected: Option<SocketAddr>,
    ) -> Result<SendRequest<ProxyBody>, ForwardError> {
        let key = pool_key(entry, redirected);
        {
            let mut pool = self.pool.lock().await;
            let senders = pool.entry(key.clone()).or_default();
            senders.retain(|s| !s.is_closed());
            if senders.len() >= self.connections_per_service {
                let i = self.next_connection.fetch_add(1, Ordering::Relaxed);
                return Ok(senders[i % senders.len()].clone());
            }
        }
        let tls = self.dial(entry, redirected, b"h2".to_vec()).await?;
        let endpoint = tls
            .get_ref()
            .0
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| ForwardError::Unreachable {
                service: key.clone(),
                detail: format!("{endpoint}: HTTP/2: {e}"),
            })?;
        let open = self.metrics.open_connection("outbound");
        tokio::spawn(async move {
            let _open = open;
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "outbound connection ended with an error");
            }
        });
        let mut pool = self.pool.lock().await;
        let senders = pool.entry(key).or_default();
        // Requests that all found the pool short dialled at once: keep what fits.
        if senders.len() < self.connections_per_service {
            senders.push(sender.clone());
        }
        Ok(sender)
    }
}

/// The pool a connection to `entry` belongs to: per service, and per address for a
/// service reached at its intercepted destination (each port of it is its own pool).
pub(super) fn pool_key(entry: &ServiceEntry, redirected: Option<SocketAddr>) -> String {
    match redirected {
        Some(addr) if entry.endpoints.is_empty() => {
            format!("{}/{}@{addr}", entry.namespace, entry.name)
        }
        _ => format!("{}/{}", entry.namespace, entry.name),
    }
}

/// `(presented, expected)` when a TLS error is a secure-naming mismatch.
fn unexpected_peer(e: &std::io::Error) -> Option<(String, String)> {
    let inner = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    let rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) = inner else {
        return None;
    };
    match other.0.downcast_ref::<VerifyError>()? {
        VerifyError::UnexpectedPeer { got, want } => Some((got.clone(), want.clone())),
        _ => None,
    }
}
