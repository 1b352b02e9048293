//! Opaque TCP in: connections the sidecar does not parse, authorized on identity and port only.
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

use std::net::SocketAddr;

use palisade_contract::SpiffeId;
use palisade_contract::policy::{Request, Verdict, Workload};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::Inbound;
use crate::audit::AuditEvent;
use crate::net::{connect_described as connect, pipe};
use crate::trust::ConnectionTrust;

const ALPN_PREFIX: &str = "palisade-tcp/";

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

/// Why an opaque connection was closed before a byte reached the application; its
/// `finish` is the one place the audit event gets the decision and reason.
#[derive(Debug)]
enum Refusal {
    /// Opaque ports are configured per sidecar; one it was not given is refused in the
    /// handshake already, this is the second line.
    NotOpaquePort(u16),
    NoIdentity,
    /// Authorization said no; the decision is already on the event.
    Denied,
    /// Allowed, and the application's port did not accept the connection.
    AppUnreachable(String),
    /// The decision spool is full and `--decision-overflow refuse` applies.
    LogFull,
}

impl Refusal {
    fn finish(self, event: &mut AuditEvent) {
        match self {
            Refusal::NotOpaquePort(port) => {
                event.decision = "error".into();
                event.reason = Some(format!("port {port} is not an opaque port here"));
            }
            Refusal::NoIdentity => {
                event.decision = "error".into();
                event.reason = Some("the sidecar has no identity".into());
            }
            Refusal::Denied => {}
            Refusal::AppUnreachable(reason) => {
                event.decision = "error".into();
                event.reason = Some(reason);
            }
            Refusal::LogFull => {
                event.decision = "error".into();
                event.reason = Some(crate::decision_log::LOG_FULL.into());
            }
        }
    }
}

impl Inbound {
    /// An opaque connection from `peer` for the application's `port`, after the handshake:
    /// decide, then one audit line and one count, then (when allowed) the bytes piped until
    /// either side closes or `trust` is lost.
    pub(crate) async fn serve_opaque<S>(
        &self,
        peer: &SpiffeId,
        port: u16,
        tls: S,
        trust: ConnectionTrust,
    ) where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let own = self.identity.spiffe_id();
        let mut event = AuditEvent::begin("inbound", "tcp");
        event.source = Some(peer.to_string());
        event.destination_service = self.service_name(own.as_ref());
        event.destination = own.as_ref().map(ToString::to_string).unwrap_or_default();
        event.path = format!(":{port}");
        let _open = self.metrics.open_connection("inbound");
        let decided = self
            .decide_opaque(peer, own.as_ref(), port, &mut event)
            .await;
        // Finish: the connection's one audit line and count, whatever the outcome.
        if let Err(refusal) = &decided {
            tracing::debug!(peer = %peer, port, refusal = ?refusal, "opaque connection refused");
        }
        let upstream = decided.map_err(|r| r.finish(&mut event));
        self.metrics
            .connection("inbound", peer.as_str(), &event.decision);
        self.audit.decided(&event).await;
        if let Ok(upstream) = upstream {
            let (sent, received) = pipe(tls, upstream, trust.closes_opaque()).await;
            self.metrics.tcp_bytes("inbound", sent, received);
        }
    }

    /// Authorize on identity and port (an ALLOW rule that needs HTTP fields never matches),
    /// then connect to the application's port.
    async fn decide_opaque(
        &self,
        peer: &SpiffeId,
        own: Option<&SpiffeId>,
        port: u16,
        event: &mut AuditEvent,
    ) -> Result<TcpStream, Refusal> {
        if !self.audit.admits() {
            return Err(Refusal::LogFull);
        }
        if !self.settings.opaque_ports.contains(&port) {
            return Err(Refusal::NotOpaquePort(port));
        }
        let namespace = own
            .and_then(SpiffeId::namespace)
            .ok_or(Refusal::NoIdentity)?;
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
        if decision.verdict == Verdict::Deny {
            return Err(Refusal::Denied);
        }
        let app = SocketAddr::new(self.settings.app.ip(), port);
        connect(app, self.settings.connect_timeout, "the application at")
            .await
            .map_err(Refusal::AppUnreachable)
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
}
