//! Intercepted connections that are not HTTP (TLS to an outside service, a database
//! protocol): piped to their original destination as the application's own connection
//! would have gone, or refused under a registry-only outbound policy.

use std::net::SocketAddr;

use tokio::net::TcpStream;

use super::OutboundPolicy;
use crate::audit::AuditEvent;

use super::Outbound;

/// What became of a passthrough connection; `finish` is the one place its audit line gets
/// the decision and reason.
enum Outcome {
    /// Dialled: the bytes are piped.
    Piped(TcpStream),
    /// Not HTTP, so not routable by the registry, and the outbound policy is registry-only:
    /// refused by closing the connection at once (TCP has no way to say more).
    RegistryOnly,
    /// The original destination did not accept the connection.
    Unreachable(String),
    /// The decision spool is full and `--decision-overflow refuse` applies.
    LogFull,
}

impl Outcome {
    fn finish(self, event: &mut AuditEvent) -> Option<TcpStream> {
        let (decision, reason, upstream) = match self {
            Outcome::Piped(tcp) => ("passthrough", None, Some(tcp)),
            Outcome::RegistryOnly => (
                "deny",
                Some("not HTTP to a mesh service, and the outbound policy is registry-only".into()),
                None,
            ),
            Outcome::Unreachable(reason) => ("error", Some(reason), None),
            Outcome::LogFull => ("error", Some(crate::decision_log::LOG_FULL.into()), None),
        };
        event.decision = decision.into();
        event.reason = reason;
        upstream
    }
}

impl Outbound {
    /// A redirected connection that is not HTTP, piped to its original destination (the
    /// sidecar's own connection is exempt from redirection), with one audit line.
    pub(super) async fn passthrough(&self, app: TcpStream, destination: SocketAddr) {
        let own = self.identity.spiffe_id();
        let mut event = AuditEvent::begin("outbound", "tcp");
        event.source = own.as_ref().map(ToString::to_string);
        event.destination = destination.to_string();
        let outcome = if !self.audit.admits() {
            Outcome::LogFull
        } else if self.policy == OutboundPolicy::RegistryOnly {
            Outcome::RegistryOnly
        } else {
            match crate::net::connect_described(
                destination,
                self.connect_timeout,
                "the destination",
            )
            .await
            {
                Ok(tcp) => Outcome::Piped(tcp),
                Err(reason) => Outcome::Unreachable(reason),
            }
        };
        // Finish: one audit line, whatever the outcome; then the bytes, when dialled.
        let upstream = outcome.finish(&mut event);
        self.audit.decided(&event).await;
        if let Some(upstream) = upstream {
            crate::net::pipe(app, upstream, std::future::pending()).await;
        }
    }
}
