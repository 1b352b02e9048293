//! One HTTP request from a peer sidecar, in phases: method, framing and header checks (400,
//! 501) -> path normalization (400) -> the sidecar's own identity (503) -> end-user
//! authentication (401) -> authorization (403, default deny) -> identity headers (the
//! caller's `x-forwarded-client-cert` and `x-palisade-*`, in any spelling, are dropped; ours
//! is set) -> the application over plain HTTP/1.1 (502 when it does not answer) -> one audit
//! line and the metrics.

use std::net::SocketAddr;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use palisade_contract::SpiffeId;
use palisade_contract::jwt::TokenError;
use palisade_contract::path::PathError;
use palisade_contract::policy::{Request as AuthzRequest, Verdict, Workload};
use palisade_contract::request::{RequestError, check_request};

use super::Inbound;
use crate::audit::AuditEvent;
use crate::decision_log::LOG_FULL;
use crate::forwarding::{
    Framing, ProxyBody, canonical_framing, check_framing, local_response, strip_hop_by_hop,
    strip_identity_headers, underscore_headers, unsupported,
};

/// Why the sidecar answered a request itself instead of the application. Every way a
/// request can end without the application's answer is one variant, and [`Refusal::finish`]
/// is the one place that turns it into the response, the decision and the reason the audit
/// line records (so a 400 can never be audited as `allow`).
#[derive(Debug)]
pub(crate) enum Refusal {
    /// Not an upper-case token (see [`check_request`]).
    BadMethod,
    /// An upgrade or CONNECT (501).
    Unsupported(&'static str),
    /// Framing two readers could take differently (400).
    AmbiguousFraming(&'static str),
    /// A transfer coding other than chunked (501).
    UnsupportedCoding,
    /// A header the sidecar refuses (`--headers-with-underscores reject`).
    BadHeader(String),
    BadPath(PathError),
    /// The sidecar has no certificate yet, so no namespace to evaluate policies in (503).
    NoIdentity,
    /// An end-user token that is present but not acceptable (401).
    Unauthenticated(TokenError),
    /// Authorization said no (403); the decision is already on the audit event.
    Denied,
    /// The request target could not be rebuilt for the application (400).
    BadTarget,
    /// The application did not answer (502).
    AppUnavailable,
    /// The decision spool is full and `--decision-overflow refuse` applies (503).
    LogFull,
}

impl Refusal {
    /// The response, and the decision and reason on the audit event.
    fn finish(self, event: &mut AuditEvent, request_id: &str) -> Response<ProxyBody> {
        // Allowed, and then the application failed: the decision stays the policy's.
        let keeps_decision = matches!(self, Refusal::AppUnavailable);
        let (status, body, reason): (StatusCode, String, Option<String>) = match self {
            Refusal::BadMethod => (
                StatusCode::BAD_REQUEST,
                "bad request: invalid method".into(),
                Some("method is not an upper-case token".into()),
            ),
            Refusal::Unsupported(why) => {
                (StatusCode::NOT_IMPLEMENTED, why.into(), Some(why.into()))
            }
            Refusal::AmbiguousFraming(why) => (
                StatusCode::BAD_REQUEST,
                format!("palisade: {why}"),
                Some(why.into()),
            ),
            Refusal::UnsupportedCoding => {
                let why = "transfer codings other than chunked are not supported";
                (
                    StatusCode::NOT_IMPLEMENTED,
                    format!("palisade: {why}"),
                    Some(why.into()),
                )
            }
            Refusal::BadHeader(why) => (
                StatusCode::BAD_REQUEST,
                format!("bad request: {why}"),
                Some(why),
            ),
            Refusal::BadPath(e) => (
                StatusCode::BAD_REQUEST,
                format!("bad request: {e}"),
                Some(e.to_string()),
            ),
            Refusal::NoIdentity => (
                StatusCode::SERVICE_UNAVAILABLE,
                "no identity".into(),
                Some("the sidecar has no identity".into()),
            ),
            Refusal::Unauthenticated(e) => {
                event.decision = "unauthenticated".into();
                event.reason = Some(format!("end-user token refused: {e}"));
                let mut response = local_response(
                    StatusCode::UNAUTHORIZED,
                    "Jwt verification fails",
                    request_id,
                );
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
                return response;
            }
            Refusal::Denied => {
                return local_response(StatusCode::FORBIDDEN, "RBAC: access denied", request_id);
            }
            Refusal::BadTarget => (
                StatusCode::BAD_REQUEST,
                "bad request: target".into(),
                Some("the request target could not be rebuilt for the application".into()),
            ),
            Refusal::AppUnavailable => (
                StatusCode::BAD_GATEWAY,
                "upstream unavailable".into(),
                Some("the application did not answer".into()),
            ),
            Refusal::LogFull => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("palisade: {LOG_FULL}"),
                Some(LOG_FULL.into()),
            ),
        };
        if !keeps_decision {
            event.decision = "error".into();
        }
        event.reason = reason;
        local_response(status, &body, request_id)
    }
}

impl Inbound {
    /// `asked_port`: the application port the connection was addressed to, when it was
    /// redirected here; otherwise requests go to `--app`.
    pub(super) async fn handle(
        &self,
        peer: &SpiffeId,
        asked_port: Option<u16>,
        req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let own = self.identity.spiffe_id();
        let service = self.service_name(own.as_ref());
        let mut event = AuditEvent::begin(
            "inbound",
            if req.version() == Version::HTTP_2 {
                "http2"
            } else {
                "http1"
            },
        );
        event.source = Some(peer.to_string());
        event.destination_service = service;
        event.destination = own.as_ref().map(ToString::to_string).unwrap_or_default();
        event.method = req.method().as_str().chars().take(32).collect();
        event.policy_version = self.policies.load().authorization.version();
        let request_id = event.request_id.clone();
        // Finish: the one place a request's outcome becomes its response, metrics and audit.
        let response = match self
            .decide_and_forward(peer, own.as_ref(), asked_port, req, &request_id, &mut event)
            .await
        {
            Ok(response) => response,
            Err(refusal) => refusal.finish(&mut event, &request_id),
        };
        event.status = response.status().as_u16();
        self.metrics.request(
            "inbound",
            peer.as_str(),
            &event.decision,
            event.status,
            started.elapsed(),
        );
        self.audit.decided(&event).await;
        response
    }

    /// The phases of one request, in order; each refusal ends it with its [`Refusal`].
    async fn decide_and_forward(
        &self,
        peer: &SpiffeId,
        own: Option<&SpiffeId>,
        asked_port: Option<u16>,
        mut req: Request<Incoming>,
        request_id: &str,
        event: &mut AuditEvent,
    ) -> Result<Response<ProxyBody>, Refusal> {
        // No decision the log cannot hold (--decision-overflow refuse).
        if !self.audit.admits() {
            return Err(Refusal::LogFull);
        }
        // Request checks: what the sidecar will not carry, before anything reads the request.
        if let Some(why) = unsupported(&req) {
            return Err(Refusal::Unsupported(why));
        }
        match check_framing(req.headers()) {
            Framing::Ok => {}
            Framing::Ambiguous(why) => return Err(Refusal::AmbiguousFraming(why)),
            Framing::UnsupportedCoding => return Err(Refusal::UnsupportedCoding),
        }
        // Before anything reads the headers, so authorization sees what the application will.
        underscore_headers(req.headers_mut(), self.settings.headers_with_underscores)
            .map_err(Refusal::BadHeader)?;
        // Method and path: the one reading that is both authorized and forwarded.
        let raw_target = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        // The pre-checks `palisade simulate` makes too (contract::request): an upper-case
        // method token, and the path normalized.
        let target = check_request(
            req.method().as_str(),
            &raw_target,
            self.settings.path_options,
        )
        .map_err(|e| match e {
            RequestError::BadMethod(_) => Refusal::BadMethod,
            RequestError::BadPath(e) => {
                event.path = raw_target.chars().take(256).collect();
                Refusal::BadPath(e)
            }
        })?;
        event.path = target.path.clone();

        // Own identity: policies are evaluated in this workload's namespace.
        let app = SocketAddr::new(
            self.settings.app.ip(),
            asked_port.unwrap_or(self.settings.app.port()),
        );
        let (own_ns, port) = own
            .and_then(SpiffeId::namespace)
            .map(|ns| (ns, app.port()))
            .ok_or(Refusal::NoIdentity)?;
        let policies = self.policies.load();
        let workload = Workload {
            namespace: own_ns,
            service: &event.destination_service,
        };
        // End-user authentication first: a token that is present must be valid (401, as
        // Envoy's jwt_authn answers); a missing one is left to authorization to judge.
        let end_user = policies
            .authentication
            .authenticate(&workload, req.headers())
            .map_err(Refusal::Unauthenticated)?;
        let token_headers = policies.authentication.token_headers(&workload);
        event.request_principal = end_user.as_ref().map(|u| u.principal.clone());
        // Authorize: default deny.
        let policy_path = target.policy_path();
        let decision = policies.authorization.evaluate(
            &workload,
            &AuthzRequest {
                source: Some(peer),
                request_principal: end_user.as_ref().map(|u| u.principal.as_str()),
                claims: end_user.as_ref().map(|u| &u.claims),
                method: req.method().as_str(),
                path: &policy_path,
                port,
                headers: req.headers(),
                l4: false,
                amqp: None,
            },
        );
        event.apply_decision(&decision);
        self.metrics.decision(&decision);
        if decision.verdict == Verdict::Deny {
            return Err(Refusal::Denied);
        }

        // Forward: canonical framing, identity headers, the application over HTTP/1.1.
        let (mut parts, body) = req.into_parts();
        let authority = parts.uri.authority().map(|a| a.as_str().to_owned());
        parts.uri = Uri::builder()
            .scheme("http")
            .authority(app.to_string())
            .path_and_query(target.to_target())
            .build()
            .map_err(|_| Refusal::BadTarget)?;
        parts.version = Version::HTTP_11;
        canonical_framing(&mut parts.headers, body.size_hint().exact());
        strip_hop_by_hop(&mut parts.headers);
        strip_identity_headers(&mut parts.headers, &token_headers);
        if let Some(name) = end_user.as_ref().and_then(|u| u.strip_header.as_ref()) {
            parts.headers.remove(name);
        }
        if !parts.headers.contains_key(header::HOST)
            && let Some(v) = authority.and_then(|a| HeaderValue::from_str(&a).ok())
        {
            parts.headers.insert(header::HOST, v);
        }
        let xfcc = format!(
            "By={};URI={peer}",
            own.map(ToString::to_string).unwrap_or_default()
        );
        if let Ok(v) = HeaderValue::from_str(&xfcc) {
            parts.headers.insert("x-forwarded-client-cert", v);
        }
        if let Ok(v) = HeaderValue::from_str(request_id) {
            parts.headers.insert("x-request-id", v);
        }
        match self.client.request(Request::from_parts(parts, body)).await {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Ok(Response::from_parts(parts, body.boxed()))
            }
            Err(e) => {
                tracing::warn!(%app, error = %e, "the application did not answer");
                Err(Refusal::AppUnavailable)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_says_why_and_is_never_audited_as_allowed_beside_an_error() {
        let refusals = || {
            vec![
                (Refusal::BadMethod, 400),
                (Refusal::Unsupported("no"), 501),
                (Refusal::AmbiguousFraming("twice"), 400),
                (Refusal::UnsupportedCoding, 501),
                (Refusal::BadHeader("x_y".into()), 400),
                (Refusal::BadPath(PathError::BadEscape), 400),
                (Refusal::NoIdentity, 503),
                (Refusal::Unauthenticated(TokenError::Expired), 401),
                (Refusal::BadTarget, 400),
                (Refusal::LogFull, 503),
            ]
        };
        for (refusal, status) in refusals() {
            let what = format!("{refusal:?}");
            // As if authorization had already allowed (the BadTarget case did say "allow").
            let mut event = AuditEvent::begin("inbound", "http1");
            event.decision = "allow".into();
            let response = refusal.finish(&mut event, "id");
            assert_eq!(response.status().as_u16(), status, "{what}");
            let want = if status == 401 {
                "unauthenticated"
            } else {
                "error"
            };
            assert_eq!(event.decision, want, "{what}");
            assert!(event.reason.is_some(), "{what}");
            assert_eq!(response.headers()["x-request-id"], "id", "{what}");
        }
        // A denial keeps the decision and reason authorization put on the event.
        let mut event = AuditEvent::begin("inbound", "http1");
        event.decision = "deny".into();
        event.reason = Some("no ALLOW policy matched".into());
        let response = Refusal::Denied.finish(&mut event, "id");
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            (event.decision.as_ref(), event.reason.as_deref()),
            ("deny", Some("no ALLOW policy matched"))
        );
        // The application failing after an allow stays the policy's decision, with why.
        let mut event = AuditEvent::begin("inbound", "http1");
        event.decision = "allow".into();
        let response = Refusal::AppUnavailable.finish(&mut event, "id");
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(event.decision, "allow");
        assert_eq!(
            event.reason.as_deref(),
            Some("the application did not answer")
        );
    }
}
