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

use super::Inbound;
use crate::audit::AuditEvent;
use crate::net::{connect_described as connect, pipe};

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
