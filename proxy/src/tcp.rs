//! Opaque TCP: connections the sidecar does not parse, authorized on identity and port only.
//!
//! Databases, caches and other non-HTTP protocols still cross the mesh over mTLS, as Linkerd's
//! and Istio's opaque ports do. Both directions share the inbound port: the client sidecar
//! asks for the destination port in the TLS handshake itself, with the ALPN protocol
//! `palisade-tcp/<port>`, so no preamble is parsed and a sidecar not configured for that port
//! refuses the handshake (`no_application_protocol`) instead of piping bytes anywhere.
//!
//! - Outbound (`--tcp-outbound LISTEN=SERVICE:PORT`): the application connects to LISTEN on
//!   loopback; the sidecar resolves SERVICE in the registry, opens mTLS to one of its
//!   endpoints (secure naming as for HTTP) and pipes bytes. Transparent interception will
//!   take the port from the original destination instead.
//! - Inbound (`--opaque-ports`): after the handshake the connection is authorized as
//!   [`Request::connection`] (source identity and destination port: an ALLOW rule that needs
//!   HTTP fields never matches, a DENY rule applies without them), then piped to the
//!   application's host at that port. A denied connection is closed at once; there is no
//!   protocol to carry a 403. Each connection is one audit event (protocol `tcp`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use palisade_contract::SpiffeId;
use palisade_contract::policy::{Request, Verdict, Workload};
use palisade_contract::process::accept;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use crate::audit::AuditEvent;
use crate::inbound::Inbound;
use crate::outbound::Outbound;

const ALPN_PREFIX: &str = "palisade-tcp/";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The ALPN protocol that asks for opaque TCP to `port`.
pub fn alpn_for(port: u16) -> Vec<u8> {
    format!("{ALPN_PREFIX}{port}").into_bytes()
}

/// The port an opaque-TCP ALPN protocol asks for.
pub fn port_from_alpn(alpn: &[u8]) -> Option<u16> {
    std::str::from_utf8(alpn)
        .ok()?
        .strip_prefix(ALPN_PREFIX)?
        .parse()
        .ok()
}

/// One `--tcp-outbound` mapping: a loopback listener for a service's port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpOutbound {
    pub listen: SocketAddr,
    /// As the registry resolves it: `name` or `name.namespace`.
    pub service: String,
    pub port: u16,
}

impl std::str::FromStr for TcpOutbound {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage = || format!("{s:?} is not LISTEN=SERVICE:PORT (e.g. 127.0.0.1:15432=db:5432)");
        let (listen, target) = s.split_once('=').ok_or_else(usage)?;
        let (service, port) = target.rsplit_once(':').ok_or_else(usage)?;
        let listen = listen.parse().map_err(|_| usage())?;
        let port = port.parse().ok().filter(|p| *p != 0).ok_or_else(usage)?;
        if service.is_empty() {
            return Err(usage());
        }
        Ok(TcpOutbound {
            listen,
            service: service.to_owned(),
            port,
        })
    }
}

/// Copies both ways until both sides have closed; returns the bytes (sent to the peer
/// sidecar, received from it).
/// A TCP connection to `addr` (no Nagle), or why not, naming it `what {addr}` for the
/// audit line: opaque ports to the application, and outbound passthrough.
pub(crate) async fn connect(addr: SocketAddr, what: &str) -> Result<TcpStream, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => {
            let _ = tcp.set_nodelay(true);
            Ok(tcp)
        }
        Ok(Err(e)) => Err(format!("{what} {addr} refused: {e}")),
        Err(_) => Err(format!("{what} {addr} did not answer")),
    }
}

pub(crate) async fn pipe<P, L>(mut peer: P, mut local: L) -> (u64, u64)
where
    P: AsyncRead + AsyncWrite + Unpin,
    L: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::io::copy_bidirectional(&mut peer, &mut local).await {
        Ok((from_peer, to_peer)) => (to_peer, from_peer),
        Err(e) => {
            tracing::debug!(error = %e, "opaque connection ended with an error");
            (0, 0)
        }
    }
}

impl Inbound {
    /// An opaque connection from `peer` for the application's `port`, after the handshake.
    pub(crate) async fn serve_opaque<S>(&self, peer: &SpiffeId, port: u16, tls: S)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let own = self.identity.spiffe_id();
        let mut event = AuditEvent::begin("inbound", "tcp");
        event.source = Some(peer.to_string());
        event.destination_service = self.service_name(own.as_ref());
        event.destination = own.as_ref().map(ToString::to_string).unwrap_or_default();
        event.path = format!(":{port}");
        let _open = self.metrics.open_connection("inbound");
        let verdict = match own.as_ref().and_then(SpiffeId::namespace) {
            // Opaque ports are configured per sidecar; one it was not given is refused in
            // the handshake already, this is the second line.
            _ if !self.opaque_ports.contains(&port) => {
                event.reason = Some(format!("port {port} is not an opaque port here"));
                Verdict::Deny
            }
            None => {
                event.reason = Some("the sidecar has no identity".into());
                Verdict::Deny
            }
            Some(namespace) => {
                let policies = self.policies.load();
                let decision = policies.authorization.evaluate(
                    &Workload {
                        namespace,
                        service: &event.destination_service,
                    },
                    &Request::connection(Some(peer), port),
                );
                event.apply_decision(&decision);
                self.metrics.decision(&decision);
                decision.verdict
            }
        };
        if verdict == Verdict::Deny {
            self.metrics
                .connection("inbound", peer.as_str(), event.decision);
            self.audit.record(&event);
            return;
        }
        let app = SocketAddr::new(self.app.ip(), port);
        let upstream = match connect(app, "the application at").await {
            Ok(tcp) => tcp,
            Err(reason) => {
                event.decision = "error";
                event.reason = Some(reason);
                self.metrics
                    .connection("inbound", peer.as_str(), event.decision);
                self.audit.record(&event);
                return;
            }
        };
        self.metrics
            .connection("inbound", peer.as_str(), event.decision);
        self.audit.record(&event);
        let (sent, received) = pipe(tls, upstream).await;
        self.metrics.tcp_bytes("inbound", sent, received);
    }
}

/// Serves one `--tcp-outbound` listener until `shutdown` resolves.
pub async fn serve_outbound(
    listener: TcpListener,
    outbound: Arc<Outbound>,
    target: TcpOutbound,
    shutdown: impl Future<Output = ()>,
) {
    let target = Arc::new(target);
    tokio::pin!(shutdown);
    loop {
        let Some((app, _)) = accept(&listener, &mut shutdown, "tcp-outbound").await else {
            return;
        };
        let (outbound, target) = (outbound.clone(), target.clone());
        tokio::spawn(async move { outbound.forward_opaque(app, &target).await });
    }
}

impl Outbound {
    async fn forward_opaque(&self, app: TcpStream, target: &TcpOutbound) {
        let own = self.identity.spiffe_id();
        let mut event = AuditEvent::begin("outbound", "tcp");
        event.source = own.as_ref().map(ToString::to_string);
        event.path = format!(":{}", target.port);
        let resolved = self.registry.load().resolve(
            &target.service,
            own.as_ref()
                .and_then(SpiffeId::namespace)
                .unwrap_or_default(),
        );
        let Some(entry) = resolved else {
            event.reason = Some(format!("no such service: {}", target.service));
            self.metrics.connection("outbound", "", event.decision);
            self.audit.record(&event);
            return;
        };
        event.destination_service = entry.name.clone();
        event.destination = entry.identity.to_string();
        let tls = match self.dial(&entry, None, alpn_for(target.port)).await {
            Ok(tls) => tls,
            Err(e) => {
                event.reason = Some(e.to_string());
                self.metrics
                    .connection("outbound", entry.identity.as_str(), event.decision);
                self.audit.record(&event);
                return;
            }
        };
        event.decision = "forward";
        self.metrics
            .connection("outbound", entry.identity.as_str(), event.decision);
        self.audit.record(&event);
        let _open = self.metrics.open_connection("outbound");
        let (sent, received) = pipe(tls, app).await;
        self.metrics.tcp_bytes("outbound", sent, received);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpn_round_trip_and_garbage() {
        assert_eq!(port_from_alpn(&alpn_for(5432)), Some(5432));
        for bad in [
            &b"h2"[..],
            b"palisade-tcp/",
            b"palisade-tcp/70000",
            b"palisade-tcp/x",
        ] {
            assert_eq!(port_from_alpn(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn tcp_outbound_flag() {
        assert_eq!(
            "127.0.0.1:15432=db.shop:5432".parse::<TcpOutbound>(),
            Ok(TcpOutbound {
                listen: "127.0.0.1:15432".parse().unwrap(),
                service: "db.shop".into(),
                port: 5432
            })
        );
        for bad in [
            "db:5432",
            "127.0.0.1:1=db",
            "127.0.0.1:1=:5432",
            "x=db:5432",
            "127.0.0.1:1=db:0",
        ] {
            assert!(bad.parse::<TcpOutbound>().is_err(), "{bad}");
        }
    }
}
