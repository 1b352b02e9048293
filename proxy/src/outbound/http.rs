//! One HTTP request from the application: resolve its host in the registry, then forward it
//! over a pooled mTLS connection to the destination's sidecar (HTTP/2), or, for an
//! intercepted connection to a destination outside the registry, as plain HTTP to where it
//! was going (unless the outbound policy is registry-only). One audit line per request.

use std::net::SocketAddr;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};

use super::OutboundPolicy;
use crate::audit::AuditEvent;
use crate::forwarding::{
    Framing, ProxyBody, canonical_framing, check_framing, local_response, strip_hop_by_hop,
    unsupported,
};

use super::{ForwardError, Outbound};

/// Where a forwarded request went.
#[derive(Debug, Clone, Copy)]
pub(super) enum Route {
    /// To a mesh service's sidecar over mTLS.
    Mesh,
    /// Outside the mesh, as plain HTTP to the intercepted destination.
    Passthrough,
}

impl Route {
    fn label(self) -> &'static str {
        match self {
            Route::Mesh => "forward",
            Route::Passthrough => "passthrough",
        }
    }
}

impl ForwardError {
    /// The response, and the decision and reason on the audit event.
    fn finish(self, event: &mut AuditEvent, request_id: &str) -> Response<ProxyBody> {
        if matches!(self, ForwardError::SecureNaming { .. }) {
            tracing::warn!(target: "palisade::audit", error = %self, "secure naming violation");
        }
        let (status, decision) = match self {
            ForwardError::Unsupported(_) | ForwardError::UnsupportedCoding => {
                (StatusCode::NOT_IMPLEMENTED, "error")
            }
            ForwardError::AmbiguousFraming(_) => (StatusCode::BAD_REQUEST, "error"),
            ForwardError::OutsideRegistry(_) => (StatusCode::FORBIDDEN, "deny"),
            ForwardError::LogFull => (StatusCode::SERVICE_UNAVAILABLE, "error"),
            _ => (StatusCode::BAD_GATEWAY, "error"),
        };
        event.decision = decision.into();
        event.reason = Some(self.to_string());
        local_response(status, &format!("palisade: {self}"), request_id)
    }
}

impl Outbound {
    /// `redirected`: the original destination, when the pod's interception rules sent
    /// this connection here.
    pub(super) async fn handle(
        &self,
        req: Request<Incoming>,
        redirected: Option<SocketAddr>,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let own = self.identity.spiffe_id();
        let mut event = AuditEvent::begin(
            "outbound",
            if req.version() == Version::HTTP_2 {
                "http2"
            } else {
                "http1"
            },
        );
        event.source = own.as_ref().map(ToString::to_string);
        event.method = req.method().as_str().chars().take(32).collect();
        event.path = req.uri().path().chars().take(256).collect();
        let request_id = event.request_id.clone();
        // Finish: the one place a request's outcome becomes its response, metrics and audit.
        let own_namespace = own.as_ref().and_then(|id| id.namespace());
        let response = match self
            .forward(req, own_namespace, redirected, &mut event)
            .await
        {
            Ok((response, route)) => {
                event.decision = route.label().into();
                response
            }
            Err(e) => e.finish(&mut event, &request_id),
        };
        event.status = response.status().as_u16();
        let peer = event.destination.clone();
        self.metrics.request(
            "outbound",
            &peer,
            &event.decision,
            event.status,
            started.elapsed(),
        );
        self.audit.decided(&event).await;
        response
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        own_namespace: Option<&str>,
        redirected: Option<SocketAddr>,
        event: &mut AuditEvent,
    ) -> Result<(Response<ProxyBody>, Route), ForwardError> {
        // No decision the log cannot hold (--decision-overflow refuse).
        if !self.audit.admits() {
            return Err(ForwardError::LogFull);
        }
        if let Some(why) = unsupported(&req) {
            return Err(ForwardError::Unsupported(why));
        }
        match check_framing(req.headers()) {
            Framing::Ok => {}
            Framing::Ambiguous(why) => return Err(ForwardError::AmbiguousFraming(why)),
            Framing::UnsupportedCoding => return Err(ForwardError::UnsupportedCoding),
        }
        let host = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
            })
            .ok_or(ForwardError::NoHost)?;
        let resolved = self
            .registry
            .load()
            .resolve(&host, own_namespace.unwrap_or_default());
        let entry = match (resolved, redirected) {
            (Some(entry), _) => entry,
            // Not a mesh service, on an intercepted connection: where the application was
            // going anyway (as Istio's ALLOW_ANY outbound mode), unless refused.
            (None, Some(destination)) => {
                if self.policy == OutboundPolicy::RegistryOnly {
                    event.destination = destination.to_string();
                    return Err(ForwardError::OutsideRegistry(
                        host.chars().take(253).collect(),
                    ));
                }
                let response = self.forward_plain(req, destination, event).await?;
                return Ok((response, Route::Passthrough));
            }
            (None, None) => {
                return Err(ForwardError::UnknownService(
                    host.chars().take(253).collect(),
                ));
            }
        };
        event.destination_service = entry.name.clone();
        event.destination = entry.identity.to_string();
        let (mut parts, body) = req.into_parts();
        canonical_framing(&mut parts.headers, body.size_hint().exact());
        retarget(&mut parts, "https", &host, Version::HTTP_2)?;
        parts.headers.remove(header::HOST);
        if let Ok(v) = HeaderValue::from_str(&event.request_id) {
            parts.headers.entry("x-request-id").or_insert(v);
        }
        let request = Request::from_parts(parts, body.boxed());
        let response = self.send_pooled(&entry, redirected, request).await?;
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        parts.version = Version::HTTP_11;
        Ok((Response::from_parts(parts, body), Route::Mesh))
    }

    /// Plain HTTP to `destination`, outside the mesh, with the request's own `Host`.
    async fn forward_plain(
        &self,
        req: Request<Incoming>,
        destination: SocketAddr,
        event: &mut AuditEvent,
    ) -> Result<Response<ProxyBody>, ForwardError> {
        event.destination = destination.to_string();
        let (mut parts, body) = req.into_parts();
        canonical_framing(&mut parts.headers, body.size_hint().exact());
        if let Some(authority) = parts.uri.authority().cloned()
            && let Ok(v) = HeaderValue::from_str(authority.as_str())
        {
            parts.headers.insert(header::HOST, v);
        }
        retarget(
            &mut parts,
            "http",
            &destination.to_string(),
            Version::HTTP_11,
        )?;
        match self.plain.request(Request::from_parts(parts, body)).await {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Ok(Response::from_parts(parts, body.boxed()))
            }
            Err(e) => Err(ForwardError::Unreachable {
                service: destination.to_string(),
                detail: e.to_string(),
            }),
        }
    }
}

/// Points a request at `scheme://authority` (same path and query) for the next hop's
/// protocol version, without this hop's hop-by-hop headers.
fn retarget(
    parts: &mut http::request::Parts,
    scheme: &str,
    authority: &str,
    version: Version,
) -> Result<(), ForwardError> {
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    parts.uri = Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|_| ForwardError::NoHost)?;
    parts.version = version;
    strip_hop_by_hop(&mut parts.headers);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_forwarding_error_has_one_status_and_decision() {
        let cases = [
            (ForwardError::Unsupported("no"), 501, "error"),
            (ForwardError::UnsupportedCoding, 501, "error"),
            (ForwardError::AmbiguousFraming("twice"), 400, "error"),
            (ForwardError::OutsideRegistry("x".into()), 403, "deny"),
            (ForwardError::UnknownService("x".into()), 502, "error"),
            (ForwardError::NoHost, 502, "error"),
        ];
        for (e, status, decision) in cases {
            let what = e.to_string();
            let mut event = AuditEvent::begin("outbound", "http1");
            let response = e.finish(&mut event, "id");
            assert_eq!(response.status().as_u16(), status, "{what}");
            assert_eq!(event.decision, decision, "{what}");
            assert_eq!(event.reason.as_deref(), Some(what.as_str()));
        }
        assert_eq!(Route::Mesh.label(), "forward");
        assert_eq!(Route::Passthrough.label(), "passthrough");
    }
}
