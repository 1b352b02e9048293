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
use palisade_contract::path::normalize;
use palisade_contract::policy::{Request as AuthzRequest, Verdict, Workload};

use super::Inbound;
use crate::audit::AuditEvent;
use crate::forwarding::{
    ProxyBody, canonical_framing, framing_refusal, local_response, strip_hop_by_hop,
    strip_identity_headers, underscore_headers, unsupported,
};

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
        let response = self
            .decide_and_forward(peer, own.as_ref(), asked_port, req, &request_id, &mut event)
            .await;
        event.status = response.status().as_u16();
        self.metrics.request(
            "inbound",
            peer.as_str(),
            event.decision,
            event.status,
            started.elapsed(),
        );
        self.audit.record(&event);
        response
    }

    async fn decide_and_forward(
        &self,
        peer: &SpiffeId,
        own: Option<&SpiffeId>,
        asked_port: Option<u16>,
        mut req: Request<Incoming>,
        request_id: &str,
        event: &mut AuditEvent,
    ) -> Response<ProxyBody> {
        // Methods are case-sensitive tokens; a lower-case "get" is not GET and would slip
        // past rules written for GET.
        if !req
            .method()
            .as_str()
            .bytes()
            .all(|b| b.is_ascii_uppercase())
        {
            event.reason = Some("method is not an upper-case token".into());
            return local_response(
                StatusCode::BAD_REQUEST,
                "bad request: invalid method",
                request_id,
            );
        }
        if let Some(why) = unsupported(&req) {
            event.reason = Some(why.into());
            return local_response(StatusCode::NOT_IMPLEMENTED, why, request_id);
        }
        if let Some(refusal) = framing_refusal(&req, request_id, event) {
            return refusal;
        }
        // Before anything reads the headers, so authorization sees what the application will.
        if let Err(why) = underscore_headers(req.headers_mut(), self.headers_with_underscores) {
            event.reason = Some(why.clone());
            return local_response(
                StatusCode::BAD_REQUEST,
                &format!("bad request: {why}"),
                request_id,
            );
        }
        let raw_target = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let target = match normalize(&raw_target, self.path_options) {
            Ok(t) => t,
            Err(e) => {
                event.path = raw_target.chars().take(256).collect();
                event.reason = Some(e.to_string());
                return local_response(
                    StatusCode::BAD_REQUEST,
                    &format!("bad request: {e}"),
                    request_id,
                );
            }
        };
        event.path = target.path.clone();

        let app = SocketAddr::new(self.app.ip(), asked_port.unwrap_or(self.app.port()));
        let (own_ns, port) = match own.and_then(SpiffeId::namespace) {
            Some(ns) => (ns, app.port()),
            None => {
                event.reason = Some("the sidecar has no identity".into());
                return local_response(StatusCode::SERVICE_UNAVAILABLE, "no identity", request_id);
            }
        };
        let policies = self.policies.load();
        let workload = Workload {
            namespace: own_ns,
            service: &event.destination_service,
        };
        // End-user authentication first: a token that is present must be valid (401, as
        // Envoy's jwt_authn answers); a missing one is left to authorization to judge.
        let end_user = match policies
            .authentication
            .authenticate(&workload, req.headers())
        {
            Ok(user) => user,
            Err(e) => {
                event.decision = "unauthenticated";
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
        };
        let token_headers = policies.authentication.token_headers(&workload);
        event.request_principal = end_user.as_ref().map(|u| u.principal.clone());
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
            return local_response(StatusCode::FORBIDDEN, "RBAC: access denied", request_id);
        }

        let (mut parts, body) = req.into_parts();
        let authority = parts.uri.authority().map(|a| a.as_str().to_owned());
        parts.uri = match Uri::builder()
            .scheme("http")
            .authority(app.to_string())
            .path_and_query(target.to_target())
            .build()
        {
            Ok(uri) => uri,
            Err(_) => {
                return local_response(StatusCode::BAD_REQUEST, "bad request: target", request_id);
            }
        };
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
                Response::from_parts(parts, body.boxed())
            }
            Err(e) => {
                tracing::warn!(%app, error = %e, "the application did not answer");
                event.reason = Some("the application did not answer".into());
                local_response(StatusCode::BAD_GATEWAY, "upstream unavailable", request_id)
            }
        }
    }
}
