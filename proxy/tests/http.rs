//! The HTTP data plane end to end: a control plane, the `payments` sidecar in front of a
//! small echo application, and the `orders` sidecar. Inbound tests call payments' sidecar
//! directly with the orders identity; outbound tests go app -> orders sidecar -> payments
//! sidecar -> app, as a real call would.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use palisade_contract::SpiffeId;
use palisade_contract::tls::{ExpectedServer, client_config, server_name_for};
use palisade_control_plane::RunningControlPlane;
use palisade_proxy::RunningSidecar;
use serde_json::{Value, json};
use support::{
    ORDERS_MAY_DO_ANYTHING, audit_where, control_plane, sidecar_config, sidecar_files, tcp_echo,
    wait_ready,
};
use tokio::net::{TcpListener, TcpStream};

const POLICIES: &str = r#"
apiVersion: palisade.dev/v1
kind: AuthorizationPolicy
metadata: { name: payments-from-orders, namespace: shop }
spec:
  selector: { service: payments }
  action: ALLOW
  rules:
    - from: [ { principals: ["spiffe://palisade.local/ns/shop/sa/orders"] } ]
      to:   [ { methods: ["POST"], paths: ["/charge", "/refunds/*", "/upload"] } ]
    - from: [ { principals: ["spiffe://palisade.local/ns/shop/sa/orders"] } ]
      to:   [ { methods: ["GET"], paths: ["/dry"] } ]
---
apiVersion: palisade.dev/v1
kind: AuthorizationPolicy
metadata: { name: block-refund, namespace: shop }
spec:
  action: DENY
  rules: [ { to: [ { paths: ["/refunds/blocked"] } ] } ]
---
apiVersion: palisade.dev/v1
kind: AuthorizationPolicy
metadata: { name: maybe-no-dry, namespace: shop }
spec:
  action: DENY
  dryRun: true
  rules: [ { to: [ { paths: ["/dry"] } ] } ]
"#;

/// Requests to `/slow` in the echo application now, and the most there ever were at once.
static SLOW_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
static SLOW_MAX_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// An application that answers `/upload` by streaming the body back, and anything else with
/// what it received (method, target, headers) as JSON (`/slow` after 200 ms).
async fn echo_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|req: Request<Incoming>| async move {
                    if req.uri().path() == "/upload" {
                        return Ok::<_, Infallible>(Response::new(req.into_body().boxed()));
                    }
                    if req.uri().path() == "/unhealthy" {
                        let mut sick = Response::new(Empty::new().map_err(|n| match n {}).boxed());
                        *sick.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                        return Ok(sick);
                    }
                    if req.uri().path() == "/slow" {
                        let now = SLOW_IN_FLIGHT.fetch_add(1, Ordering::SeqCst) + 1;
                        SLOW_MAX_IN_FLIGHT.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        SLOW_IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
                    }
                    let headers: serde_json::Map<String, Value> = req
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or("<binary>"))))
                        .collect();
                    let seen = json!({"method": req.method().as_str(), "target": req.uri().to_string(), "headers": headers});
                    Ok(Response::new(
                        Full::new(Bytes::from(seen.to_string()))
                            .map_err(|n| match n {})
                            .boxed(),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

struct Mesh {
    _dir: tempfile::TempDir,
    cp: RunningControlPlane,
    payments: RunningSidecar,
    orders: RunningSidecar,
    payments_audit: std::path::PathBuf,
    orders_audit: std::path::PathBuf,
}

async fn mesh(policies: Option<&str>) -> Mesh {
    mesh_with(policies, &[]).await
}

async fn mesh_with(policies: Option<&str>, flags: &[&str]) -> Mesh {
    mesh_full(policies, flags, &[]).await
}

/// A mesh with extra flags for the payments sidecar and for the orders sidecar.
async fn mesh_full(policies: Option<&str>, flags: &[&str], orders_flags: &[&str]) -> Mesh {
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(&dir.path().join("cp"), Duration::from_secs(3600)).await;
    let bundle = dir.path().join("cp/trust-bundle.pem");
    let app = echo_app().await.to_string();
    let policy_file = dir.path().join("policies.yaml");
    let mut extra = vec!["--app", app.as_str()];
    extra.extend_from_slice(flags);
    if let Some(p) = policies {
        std::fs::write(&policy_file, p).unwrap();
        extra.extend(["--policy-file", policy_file.to_str().unwrap()]);
    }
    let payments_files = sidecar_files(&cp, dir.path(), "payments").await;
    let payments = palisade_proxy::start(&sidecar_config(
        cp.sidecar_addr,
        bundle.clone(),
        &payments_files,
        &extra,
    ))
    .await
    .unwrap();
    // The orders sidecar's registry: payments as it is, and "wrong", which points at the
    // payments sidecar but expects another identity (a secure-naming violation).
    let registry = format!(
        "apiVersion: palisade.dev/v1\nkind: Service\nmetadata: {{ name: payments, namespace: shop }}\n\
         spec: {{ identity: \"spiffe://palisade.local/ns/shop/sa/payments\", endpoints: [\"{addr}\"] }}\n---\n\
         apiVersion: palisade.dev/v1\nkind: Service\nmetadata: {{ name: wrong, namespace: shop }}\n\
         spec: {{ identity: \"spiffe://palisade.local/ns/shop/sa/inventory\", endpoints: [\"{addr}\"] }}\n",
        addr = payments.inbound_addr
    );
    let registry_file = dir.path().join("registry.yaml");
    std::fs::write(&registry_file, registry).unwrap();
    let orders_files = sidecar_files(&cp, dir.path(), "orders").await;
    let mut orders_extra = vec!["--registry-file", registry_file.to_str().unwrap()];
    orders_extra.extend_from_slice(orders_flags);
    let orders = palisade_proxy::start(&sidecar_config(
        cp.sidecar_addr,
        bundle,
        &orders_files,
        &orders_extra,
    ))
    .await
    .unwrap();
    wait_ready(&payments).await;
    wait_ready(&orders).await;
    Mesh {
        payments_audit: payments_files.audit,
        orders_audit: orders_files.audit,
        _dir: dir,
        cp,
        payments,
        orders,
    }
}

impl Mesh {
    fn payments_id(&self) -> SpiffeId {
        self.payments.identity.spiffe_id().unwrap()
    }

    /// A TLS connection to the payments sidecar as `orders` (or with no certificate).
    async fn tls(
        &self,
        with_cert: bool,
        alpn: &[u8],
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let config = client_config(
            with_cert.then(|| self.orders.identity.slot()),
            self.orders.identity.bundle(),
            ExpectedServer::Exact(self.payments_id()),
            &[alpn],
        );
        let tcp = TcpStream::connect(self.payments.inbound_addr).await?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(server_name_for(&self.payments_id()), tcp)
            .await
    }

    async fn send<B>(&self, http2: bool, req: Request<B>) -> Response<Incoming>
    where
        B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let tls = self
            .tls(true, if http2 { b"h2" } else { b"http/1.1" })
            .await
            .unwrap();
        if http2 {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            sender.send_request(req).await.unwrap()
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .unwrap();
            tokio::spawn(conn);
            sender.send_request(req).await.unwrap()
        }
    }

    async fn call(
        &self,
        http2: bool,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, http::HeaderMap, String) {
        let uri = if http2 {
            format!("https://payments{target}")
        } else {
            target.to_owned()
        };
        let mut req = Request::builder().method(method).uri(uri);
        if !http2 {
            req = req.header("host", "payments");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self
            .send(http2, req.body(Empty::<Bytes>::new()).unwrap())
            .await;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    /// A plain-HTTP call from the orders application to its own sidecar's outbound port.
    async fn app_call(
        &self,
        http2: bool,
        method: &str,
        uri: &str,
        host: Option<&str>,
    ) -> (StatusCode, http::HeaderMap, String) {
        let tcp = TcpStream::connect(self.orders.outbound_addr).await.unwrap();
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(h) = host {
            req = req.header("host", h);
        }
        let req = req.body(Empty::<Bytes>::new()).unwrap();
        let resp = if http2 {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            sender.send_request(req).await.unwrap()
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .unwrap();
            tokio::spawn(conn);
            sender.send_request(req).await.unwrap()
        };
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    async fn audit_line(&self, request_id: &str) -> Value {
        audit_line(&self.payments_audit, request_id).await
    }

    async fn stop(self) {
        self.payments.shutdown().await;
        self.orders.shutdown().await;
        self.cp.shutdown().await;
    }
}

async fn audit_line(path: &Path, request_id: &str) -> Value {
    audit_where(path, |v| v["request_id"] == request_id).await
}

#[tokio::test]
async fn an_allowed_call_reaches_the_app_with_the_callers_identity() {
    let m = mesh(Some(POLICIES)).await;
    for http2 in [false, true] {
        let (status, headers, body) = m
            .call(
                http2,
                "POST",
                "/charge?amount=5",
                &[
                    (
                        "x-forwarded-client-cert",
                        "By=spiffe://evil;URI=spiffe://palisade.local/ns/shop/sa/admin",
                    ),
                    ("x-palisade-publisher", "spiffe://evil"),
                ],
            )
            .await;
        assert_eq!(status, StatusCode::OK, "http2={http2}: {body}");
        let seen: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(seen["method"], "POST");
        assert_eq!(seen["target"], "/charge?amount=5");
        assert_eq!(
            seen["headers"]["x-forwarded-client-cert"],
            "By=spiffe://palisade.local/ns/shop/sa/payments;URI=spiffe://palisade.local/ns/shop/sa/orders"
        );
        assert!(
            seen["headers"].get("x-palisade-publisher").is_none(),
            "forged header removed"
        );
        assert_eq!(seen["headers"]["host"], "payments");
        let request_id = seen["headers"]["x-request-id"].as_str().unwrap().to_owned();
        assert!(
            headers.get("x-request-id").is_none(),
            "the app's response is passed as it is"
        );
        let audit = m.audit_line(&request_id).await;
        assert_eq!(audit["decision"], "allow");
        assert_eq!(audit["policy"], "shop/payments-from-orders");
        assert_eq!(audit["rule"], 0);
        assert_eq!(audit["source"], "spiffe://palisade.local/ns/shop/sa/orders");
        assert_eq!(
            audit["destination"],
            "spiffe://palisade.local/ns/shop/sa/payments"
        );
        assert_eq!(audit["destination_service"], "payments");
        assert_eq!(audit["path"], "/charge");
        assert_eq!(audit["status"], 200);
        assert_eq!(audit["protocol"], if http2 { "http2" } else { "http1" });
        assert_eq!(audit["policy_version"], 1);
        assert!(audit["time"].as_str().unwrap().ends_with('Z'));
    }
    m.stop().await;
}

#[tokio::test]
async fn denials_are_403_with_a_request_id_and_an_audit_line() {
    let m = mesh(Some(POLICIES)).await;
    for (method, target, policy) in [
        ("GET", "/charge", None),
        ("POST", "/refunds/blocked", Some("shop/block-refund")),
    ] {
        let (status, headers, body) = m.call(false, method, target, &[]).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {target}");
        assert_eq!(body, "RBAC: access denied\n");
        let request_id = headers["x-request-id"].to_str().unwrap();
        let audit = m.audit_line(request_id).await;
        assert_eq!(audit["decision"], "deny");
        assert_eq!(audit["status"], 403);
        assert_eq!(audit["policy"].as_str(), policy, "{method} {target}");
        assert!(audit["reason"].as_str().is_some_and(|r| !r.is_empty()));
    }
    // (POST /refunds/blocked above is allowed by an ALLOW rule: DENY won.)
    // Dry-run never enforces, but records what it would have done.
    let (status, _, _) = m.call(false, "GET", "/dry", &[]).await;
    assert_eq!(status, StatusCode::OK);
    let (_, _, body) = m.call(false, "GET", "/dry", &[]).await;
    let request_id = serde_json::from_str::<Value>(&body).unwrap()["headers"]["x-request-id"]
        .as_str()
        .unwrap()
        .to_owned();
    let audit = m.audit_line(&request_id).await;
    assert_eq!(audit["decision"], "dry-run-deny");
    assert_eq!(audit["dry_run"][0], "shop/maybe-no-dry:DENY");
    let (_, metrics) = support::admin_get(&m.payments, "/metrics").await;
    assert!(
        metrics.contains(
            r#"palisade_proxy_authz_decisions_total{decision="deny",policy="shop/block-refund"} 1"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains(r#"palisade_proxy_http_requests_total{decision="deny",direction="inbound",peer="spiffe://palisade.local/ns/shop/sa/orders",status_class="4xx"} 2"#), "{metrics}");
    m.stop().await;
}

/// `payments` accepts end-user tokens from one issuer; `/me` needs a user of tenant acme.
fn end_user_policies(jwks: &Value) -> String {
    format!(
        r#"
apiVersion: palisade.dev/v1
kind: RequestAuthentication
metadata: {{ name: shop-users, namespace: shop }}
spec:
  selector: {{ service: payments }}
  jwtRules:
    - issuer: "https://idp.example"
      audiences: ["shop"]
      jwks: '{jwks}'
---
apiVersion: palisade.dev/v1
kind: AuthorizationPolicy
metadata: {{ name: users-of-acme, namespace: shop }}
spec:
  selector: {{ service: payments }}
  rules:
    - from: [ {{ requestPrincipals: ["https://idp.example/*"] }} ]
      to:   [ {{ methods: ["GET"], paths: ["/me"] }} ]
      when: [ {{ key: "request.auth.claims[tenant]", values: ["acme"] }} ]
"#
    )
}

#[tokio::test]
async fn end_user_tokens_are_verified_and_authorized() {
    use palisade_contract::jwt::testing::{TestIssuer, now};
    let idp = TestIssuer::new("k1");
    let m = mesh(Some(&end_user_policies(&idp.jwks))).await;
    let t = now();
    let claims = |patch: Value| {
        let mut c = json!({"iss": "https://idp.example", "sub": "alice", "aud": ["shop"],
                           "exp": t + 300, "nbf": t - 1, "tenant": "acme"});
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let bearer = |token: &str| format!("Bearer {token}");

    // Accepted, over HTTP/1.1 and HTTP/2; the token itself does not reach the application.
    for http2 in [false, true] {
        let token = bearer(&idp.sign(&claims(json!({}))));
        let (status, _, body) = m
            .call(http2, "GET", "/me", &[("authorization", &token)])
            .await;
        assert_eq!(status, StatusCode::OK, "http2={http2}: {body}");
        let seen: Value = serde_json::from_str(&body).unwrap();
        assert!(seen["headers"].get("authorization").is_none(), "{seen}");
        let audit = m
            .audit_line(seen["headers"]["x-request-id"].as_str().unwrap())
            .await;
        assert_eq!(audit["decision"], "allow");
        assert_eq!(audit["request_principal"], "https://idp.example/alice");
        assert_eq!(audit["policy"], "shop/users-of-acme");
    }

    // A valid token that the policy does not allow, and no token at all: 403, not 401.
    let other_tenant = bearer(&idp.sign(&claims(json!({"tenant": "globex"}))));
    for headers in [vec![("authorization", other_tenant.as_str())], vec![]] {
        let (status, _, body) = m.call(false, "GET", "/me", &headers).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{headers:?}");
        assert_eq!(body, "RBAC: access denied\n");
    }

    // Present but invalid: 401 with the reason in the audit line only.
    let impostor = TestIssuer::new("k1");
    let refused = [
        (impostor.sign(&claims(json!({}))), "signature"),
        (idp.sign(&claims(json!({"exp": t - 60}))), "expired"),
        (idp.sign_as(Some("k2"), &claims(json!({}))), "unknown key"),
        (idp.sign(&claims(json!({"aud": ["elsewhere"]}))), "audience"),
        (
            idp.sign(&claims(json!({"iss": "https://evil.example"}))),
            "issuer",
        ),
        ("garbage".to_owned(), "well-formed"),
    ];
    // However the token is spread or spelled, a present token is verified or refused, and
    // never passed on unverified: a forged Bearer behind a Basic line, two tokens, and a
    // token that is not ASCII.
    let good = bearer(&idp.sign(&claims(json!({}))));
    let forged = bearer(&impostor.sign(&claims(json!({}))));
    let spread: [(Vec<(&str, &str)>, &str); 4] = [
        (
            vec![
                ("authorization", "Basic YWxhZGRpbg=="),
                ("authorization", &forged),
            ],
            "signature",
        ),
        (
            vec![("authorization", &good), ("authorization", &good)],
            "more than one token",
        ),
        (
            vec![("authorization", &good), ("authorization", &forged)],
            "more than one token",
        ),
        (
            vec![("authorization", "Bearer t\u{e9}t\u{e9}")],
            "well-formed",
        ),
    ];
    for (headers, why) in spread {
        let (status, response_headers, body) = m.call(false, "GET", "/me", &headers).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{headers:?}: {body}");
        let audit = m
            .audit_line(response_headers["x-request-id"].to_str().unwrap())
            .await;
        let reason = audit["reason"].as_str().unwrap();
        assert!(reason.contains(why), "{why}: {reason}");
    }
    for (token, why) in refused {
        let (status, headers, body) = m
            .call(false, "GET", "/me", &[("authorization", &bearer(&token))])
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{why}");
        assert_eq!(body, "Jwt verification fails\n");
        assert!(
            headers["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer")
        );
        let audit = m
            .audit_line(headers["x-request-id"].to_str().unwrap())
            .await;
        assert_eq!(audit["decision"], "unauthenticated");
        assert_eq!(audit["status"], 401);
        let reason = audit["reason"].as_str().unwrap();
        assert!(reason.contains(why), "{why}: {reason}");
    }
    m.stop().await;
}

#[tokio::test]
async fn without_policies_everything_is_denied_but_probes_and_admin_work() {
    let m = mesh_with(None, &["--app-probe", "live=/healthz,sick=/unhealthy"]).await;
    // Health probes go to the admin port, which asks the application.
    let (status, body) = support::admin_get(&m.payments, "/app-health/live").await;
    assert_eq!((status, body.as_str()), (200, "app probe live: 200 OK\n"));
    let (status, _) = support::admin_get(&m.payments, "/app-health/sick").await;
    assert_eq!(status, 503);
    // Only configured probes: the admin port is no way around policy.
    assert_eq!(
        support::admin_get(&m.payments, "/app-health/charge")
            .await
            .0,
        404
    );
    assert_eq!(support::admin_get(&m.payments, "/ready").await.0, 200);
    assert_eq!(support::admin_get(&m.payments, "/metrics").await.0, 200);
    // Through the mesh, the same path is denied like everything else.
    assert_eq!(
        m.call(false, "GET", "/healthz", &[]).await.0,
        StatusCode::FORBIDDEN
    );
    let (status, headers, _) = m.call(false, "POST", "/charge", &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let audit = m
        .audit_line(headers["x-request-id"].to_str().unwrap())
        .await;
    assert!(
        audit["reason"]
            .as_str()
            .unwrap()
            .contains("no allow policy selects"),
        "{audit}"
    );
    m.stop().await;
}

#[tokio::test]
async fn the_path_that_is_authorized_is_the_path_that_is_forwarded() {
    let m = mesh(Some(POLICIES)).await;
    let (status, _, body) = m.call(false, "POST", "/charge/../refunds/7", &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["target"],
        "/refunds/7"
    );
    // Dot-segments cannot reach a denied path's neighbour unseen, nor a DENY be dodged.
    let (status, _, _) = m.call(false, "POST", "/refunds/x/../blocked", &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = m.call(false, "POST", "/refunds/%62locked", &[]).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "decoded unreserved characters are matched"
    );
    for (method, target) in [
        ("POST", "/refunds%2fblocked"),
        ("POST", "/refunds/a%00"),
        ("post", "/charge"),
    ] {
        let (status, headers, body) = m.call(false, method, target, &[]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {target}: {body}");
        let audit = m
            .audit_line(headers["x-request-id"].to_str().unwrap())
            .await;
        assert_eq!(audit["decision"], "error");
    }
    m.stop().await;
}

#[tokio::test]
async fn only_mesh_certificates_get_in() {
    let m = mesh(Some(POLICIES)).await;
    // No client certificate: the server refuses during the handshake (TLS 1.3 reports it on
    // first use of the connection).
    let refused = match m.tls(false, b"http/1.1").await {
        Err(_) => true,
        Ok(tls) => {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .unwrap();
            tokio::spawn(conn);
            let req = Request::get("/charge")
                .header("host", "p")
                .body(Empty::<Bytes>::new())
                .unwrap();
            sender.send_request(req).await.is_err()
        }
    };
    assert!(refused, "a client without a certificate got through");
    // Plaintext HTTP to the inbound port gets no answer.
    let tcp = TcpStream::connect(m.payments.inbound_addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/charge")
        .header("host", "p")
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert!(
        sender.send_request(req).await.is_err(),
        "plaintext was answered"
    );
    // A certificate from another mesh's CA.
    let dir = tempfile::tempdir().unwrap();
    let other_cp = control_plane(&dir.path().join("other"), Duration::from_secs(3600)).await;
    let other_files = sidecar_files(&other_cp, dir.path(), "orders").await;
    let other = palisade_proxy::start(&sidecar_config(
        other_cp.sidecar_addr,
        dir.path().join("other/trust-bundle.pem"),
        &other_files,
        &[],
    ))
    .await
    .unwrap();
    wait_ready(&other).await;
    let config = client_config(
        Some(other.identity.slot()),
        m.orders.identity.bundle(),
        ExpectedServer::Exact(m.payments_id()),
        &[b"http/1.1"],
    );
    let tcp = TcpStream::connect(m.payments.inbound_addr).await.unwrap();
    let result = async {
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(server_name_for(&m.payments_id()), tcp)
            .await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        let req = Request::get("/charge")
            .header("host", "p")
            .body(Empty::<Bytes>::new())
            .unwrap();
        sender
            .send_request(req)
            .await
            .map_err(std::io::Error::other)
    }
    .await;
    assert!(result.is_err(), "a foreign CA's certificate got through");
    let (_, metrics) = support::admin_get(&m.payments, "/metrics").await;
    assert!(
        metrics.contains(
            r#"palisade_proxy_tls_handshakes_total{direction="inbound",result="failure"}"#
        ),
        "{metrics}"
    );
    other.shutdown().await;
    other_cp.shutdown().await;
    m.stop().await;
}

/// A request body of `remaining` bytes, produced 64 KiB at a time (never held whole).
struct Generated {
    remaining: usize,
    chunk: Bytes,
}

impl hyper::body::Body for Generated {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(self.chunk.len());
        self.remaining -= n;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }
}

fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    statm
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<usize>()
        .unwrap()
        * 4096
}

#[tokio::test]
async fn a_100_mb_body_streams_through_without_growing_memory() {
    let m = mesh(Some(POLICIES)).await;
    const SIZE: usize = 100 * 1024 * 1024;
    let before = resident_bytes();
    let peak = Arc::new(std::sync::atomic::AtomicUsize::new(before));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(resident_bytes(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let body = Generated {
        remaining: SIZE,
        chunk: Bytes::from(vec![b'x'; 64 * 1024]),
    };
    let req = Request::post("/upload")
        .header("host", "payments")
        .body(body)
        .unwrap();
    let resp = m.send(false, req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut received = 0usize;
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            assert!(data.iter().all(|b| *b == b'x'));
            received += data.len();
        }
    }
    sampler.abort();
    assert_eq!(received, SIZE);
    let growth = peak
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(before);
    assert!(
        growth < 40 * 1024 * 1024,
        "resident memory grew by {} MB while streaming 100 MB",
        growth / (1024 * 1024)
    );
    m.stop().await;
}

#[tokio::test]
async fn limits_on_headers_and_slow_clients() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let m = mesh_with(
        Some(POLICIES),
        &["--max-header-bytes", "8192", "--header-timeout", "300ms"],
    )
    .await;
    // Oversized request head over HTTP/1.1: 431.
    let big = "a".repeat(16 * 1024);
    let tls = m.tls(true, b"http/1.1").await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::post("/charge")
        .header("host", "p")
        .header("x-big", big.as_str())
        .body(Empty::<Bytes>::new())
        .unwrap();
    let status = sender.send_request(req).await.map(|r| r.status());
    assert_eq!(status.unwrap(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    // Over HTTP/2 the oversized header list is refused too (the request fails).
    let tls = m.tls(true, b"h2").await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::post("https://payments/charge")
        .header("x-big", big.as_str())
        .body(Empty::<Bytes>::new())
        .unwrap();
    match sender.send_request(req).await {
        Ok(r) => assert_eq!(r.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        Err(e) => assert!(
            e.to_string().to_lowercase().contains("reset") || e.to_string().contains("header"),
            "{e}"
        ),
    }
    // Too many header fields over HTTP/1.1: 431 (--max-headers, 100 by default).
    let tls = m.tls(true, b"http/1.1").await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::post("/charge").header("host", "p");
    for i in 0..120 {
        req = req.header(format!("x-h{i}"), "v");
    }
    let status = sender
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .map(|r| r.status());
    assert_eq!(status.unwrap(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    // A client that starts a request and never finishes its headers is disconnected.
    let mut tls = m.tls(true, b"http/1.1").await.unwrap();
    tls.write_all(b"POST /charge HTTP/1.1\r\nhost: p\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a slow client kept its connection");
    assert!(started.elapsed() >= Duration::from_millis(250));
    // The sidecar still serves others.
    assert_eq!(
        m.call(false, "POST", "/charge", &[]).await.0,
        StatusCode::OK
    );
    m.stop().await;
}

#[tokio::test]
async fn a_call_crosses_both_sidecars_over_pooled_mtls_connections() {
    let m = mesh(Some(POLICIES)).await;
    let calls = [
        (false, "/charge", Some("payments")),
        (false, "http://payments.shop/charge", None), // as an HTTP proxy (absolute-form)
        (
            true,
            "http://payments.shop.svc.cluster.local:8080/charge",
            None,
        ), // HTTP/2, prior knowledge
        (false, "/refunds/3?x=1", Some("payments:80")),
    ];
    for (http2, uri, host) in calls {
        let (status, _, body) = m.app_call(http2, "POST", uri, host).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {body}");
        let seen: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            seen["headers"]["x-forwarded-client-cert"],
            "By=spiffe://palisade.local/ns/shop/sa/payments;URI=spiffe://palisade.local/ns/shop/sa/orders",
            "{uri}"
        );
        assert!(seen["target"].as_str().unwrap().starts_with('/'), "{seen}");
    }
    // The destination's decision comes back unchanged.
    let (status, _, body) = m.app_call(false, "GET", "/charge", Some("payments")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::FORBIDDEN, "RBAC: access denied\n")
    );
    // All of it over the pooled mTLS connections from orders to payments (one per worker
    // thread), which more calls reuse rather than add to.
    let handshakes = async || {
        let (_, metrics) = support::admin_get(&m.orders, "/metrics").await;
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(
                    r#"palisade_proxy_tls_handshakes_total{direction="outbound",result="success"} "#,
                )
            })
            .map_or(0, |v| v.parse::<u64>().unwrap())
    };
    let pooled = handshakes().await;
    let threads = std::thread::available_parallelism().unwrap().get() as u64;
    assert!((1..=threads).contains(&pooled), "{pooled} handshakes");
    for _ in 0..20 {
        let (status, _, _) = m.app_call(false, "POST", "/charge", Some("payments")).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(handshakes().await, pooled, "the pool was reused");
    m.stop().await;
}

#[tokio::test]
async fn a_destination_with_the_wrong_identity_is_refused() {
    let m = mesh(Some(POLICIES)).await;
    let (status, headers, body) = m.app_call(false, "POST", "/charge", Some("wrong")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.contains("secure naming"), "{body}");
    assert!(
        body.contains("spiffe://palisade.local/ns/shop/sa/inventory"),
        "{body}"
    );
    let audit = audit_line(&m.orders_audit, headers["x-request-id"].to_str().unwrap()).await;
    assert_eq!(audit["direction"], "outbound");
    assert_eq!(audit["decision"], "error");
    assert!(
        audit["reason"]
            .as_str()
            .unwrap()
            .contains("the endpoint presented spiffe://palisade.local/ns/shop/sa/payments"),
        "{audit}"
    );
    // Unknown services are refused plainly.
    let (status, _, body) = m.app_call(false, "GET", "/", Some("nowhere")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains("no such service: nowhere"), "{body}");
    m.stop().await;
}

#[tokio::test]
async fn idle_connections_are_closed_and_the_pool_reconnects() {
    let m = mesh_with(Some(ORDERS_MAY_DO_ANYTHING), &["--idle-timeout", "300ms"]).await;
    let get = |uri: &str| {
        Request::get(uri)
            .header("host", "payments")
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    // The client keeps each connection (and its sender) open; the sidecar closes it once
    // idle: HTTP/1.1 between requests, HTTP/2 with a GOAWAY.
    let tls = m.tls(true, b"http/1.1").await.unwrap();
    let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    let h1_conn = tokio::spawn(conn);
    assert_eq!(
        h1.send_request(get("/x")).await.unwrap().status(),
        StatusCode::OK
    );
    let tls = m.tls(true, b"h2").await.unwrap();
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    let h2_conn = tokio::spawn(conn);
    assert_eq!(
        h2.send_request(get("https://payments/x"))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let started = std::time::Instant::now();
    for conn in [h1_conn, h2_conn] {
        tokio::time::timeout(Duration::from_secs(5), conn)
            .await
            .expect("an idle connection is closed")
            .unwrap()
            .unwrap();
    }
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(h1.is_closed() && h2.is_closed());
    // The orders sidecar's pooled connection to payments is closed the same way; the next call
    // opens a new one instead of failing.
    for _ in 0..2 {
        let (status, _, body) = m.app_call(false, "GET", "http://payments/x", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    m.stop().await;
}

#[tokio::test]
async fn http2_streams_and_connections_are_capped() {
    let m = mesh_with(
        Some(ORDERS_MAY_DO_ANYTHING),
        &["--max-streams", "2", "--max-connections", "1"],
    )
    .await;
    let tls = m.tls(true, b"h2").await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    // A client that opens more streams than allowed before it has the server's SETTINGS
    // gets REFUSED_STREAM for the extra ones (safe to retry). One that has them, as here
    // after a first request, holds the others back: six concurrent requests, at most two
    // at the application at once, all answered.
    let first = Request::get("https://payments/x")
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(
        sender.clone().send_request(first).await.unwrap().status(),
        StatusCode::OK
    );
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let mut sender = sender.clone();
        calls.spawn(async move {
            let req = Request::get("https://payments/slow")
                .body(Empty::<Bytes>::new())
                .unwrap();
            sender.send_request(req).await.unwrap().status()
        });
    }
    let statuses = calls.join_all().await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(SLOW_MAX_IN_FLIGHT.load(Ordering::SeqCst), 2);
    // One connection at most: a second one is not served while the first is open...
    let status = {
        let second = async {
            let tls = m.tls(true, b"h2").await.unwrap();
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let req = Request::get("https://payments/x")
                .body(Empty::<Bytes>::new())
                .unwrap();
            sender.send_request(req).await.unwrap().status()
        };
        tokio::pin!(second);
        let early = tokio::time::timeout(Duration::from_millis(500), second.as_mut()).await;
        assert!(early.is_err(), "a second connection was served");
        // ...and is once the first closes.
        drop(sender);
        let _ = conn.await;
        tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("the waiting connection is served")
    };
    assert_eq!(status, StatusCode::OK);
    m.stop().await;
}

#[tokio::test]
async fn a_reset_flood_ends_the_connection() {
    let m = mesh(Some(ORDERS_MAY_DO_ANYTHING)).await;
    let tls = m.tls(true, b"h2").await.unwrap();
    let (mut client, conn) = h2::client::handshake(tls).await.unwrap();
    let conn = tokio::spawn(conn);
    // Open streams and cancel them at once (RST_STREAM), as in CVE-2023-44487.
    let mut sent = 0;
    for _ in 0..5000 {
        let Ok(ready) = client.clone().ready().await else {
            break;
        };
        client = ready;
        let req = Request::get("https://payments/flood").body(()).unwrap();
        match client.send_request(req, true) {
            Ok((response, _)) => drop(response),
            Err(_) => break,
        }
        sent += 1;
        tokio::task::yield_now().await;
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the flooding connection is closed")
        .unwrap();
    let err = ended.expect_err("closed with an error");
    // GOAWAY(ENHANCE_YOUR_CALM), or a reset socket when the GOAWAY races the client's writes.
    assert!(
        err.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) || err.is_io(),
        "{err:?}"
    );
    assert!(sent < 5000, "the server let {sent} reset streams through");
    // Other clients are still served.
    assert_eq!(m.call(true, "GET", "/x", &[]).await.0, StatusCode::OK);
    m.stop().await;
}

/// A TCP application that echoes what it receives.
/// Writes `data` to the listener at `addr` and reads until the other side closes.
async fn tcp_round_trip(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let _ = tcp.write_all(data).await;
    let _ = tcp.shutdown().await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut got))
        .await
        .expect("the connection ends");
    got
}

#[tokio::test]
async fn opaque_tcp_is_authorized_by_identity_and_port() {
    let (allowed, denied, unlisted) = (tcp_echo().await, tcp_echo().await, tcp_echo().await);
    let policies = format!(
        r#"
apiVersion: palisade.dev/v1
kind: AuthorizationPolicy
metadata: {{ name: orders-db, namespace: shop }}
spec:
  selector: {{ service: payments }}
  rules:
    - from: [ {{ principals: ["spiffe://palisade.local/ns/shop/sa/orders"] }} ]
      to: [ {{ ports: [{allowed}] }} ]
    # Needs HTTP: never allows a connection.
    - from: [ {{ principals: ["spiffe://palisade.local/ns/shop/sa/orders"] }} ]
      to: [ {{ methods: ["GET"], ports: [{denied}] }} ]
"#
    );
    let opaque = format!("{allowed},{denied}");
    let outbound = format!(
        "127.0.0.1:0=payments:{allowed},127.0.0.1:0=payments:{denied},\
         127.0.0.1:0=payments:{unlisted},127.0.0.1:0=wrong:{allowed}"
    );
    let m = mesh_full(
        Some(&policies),
        &["--opaque-ports", &opaque],
        &["--tcp-outbound", &outbound],
    )
    .await;
    let addrs = m.orders.tcp_outbound_addrs.clone();
    let data: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    assert!(
        tcp_round_trip(addrs[0], &data).await == data,
        "bytes piped both ways"
    );
    let line = audit_where(&m.payments_audit, |v| {
        v["protocol"] == "tcp" && v["decision"] == "allow"
    })
    .await;
    assert_eq!(line["source"], "spiffe://palisade.local/ns/shop/sa/orders");
    assert_eq!(line["path"], format!(":{allowed}"));
    assert_eq!(line["policy"], "shop/orders-db");
    let line = audit_where(&m.orders_audit, |v| {
        v["protocol"] == "tcp" && v["decision"] == "forward"
    })
    .await;
    assert_eq!(
        line["destination"],
        "spiffe://palisade.local/ns/shop/sa/payments"
    );

    // Denied by policy: closed without a byte.
    assert!(tcp_round_trip(addrs[1], b"hello").await.is_empty());
    let line = audit_where(&m.payments_audit, |v| {
        v["protocol"] == "tcp" && v["decision"] == "deny"
    })
    .await;
    assert_eq!(line["path"], format!(":{denied}"));
    assert_eq!(line["reason"], "no ALLOW policy matched");

    // A port the destination does not serve as opaque: the handshake is refused.
    assert!(tcp_round_trip(addrs[2], b"hello").await.is_empty());
    let line = audit_where(&m.orders_audit, |v| {
        v["protocol"] == "tcp" && v["path"] == format!(":{unlisted}")
    })
    .await;
    assert_eq!(line["decision"], "error");
    assert!(line["reason"].as_str().unwrap().contains("TLS"), "{line}");

    // Secure naming holds for opaque TCP too.
    assert!(tcp_round_trip(addrs[3], b"hello").await.is_empty());
    let line = audit_where(&m.orders_audit, |v| {
        v["protocol"] == "tcp" && v["destination_service"] == "wrong"
    })
    .await;
    assert!(
        line["reason"].as_str().unwrap().contains("secure naming"),
        "{line}"
    );

    let (_, metrics) = support::admin_get(&m.payments, "/metrics").await;
    assert!(metrics.contains(r#"palisade_proxy_tcp_connections_total{decision="allow",direction="inbound",peer="spiffe://palisade.local/ns/shop/sa/orders"} 1"#), "{metrics}");
    assert!(
        metrics.contains(&format!(
            r#"palisade_proxy_tcp_bytes_total{{direction="inbound",flow="sent"}} {}"#,
            data.len()
        )),
        "{metrics}"
    );
    m.stop().await;
}

#[tokio::test]
async fn upgrades_and_connect_are_refused_with_501() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let m = mesh(Some(ORDERS_MAY_DO_ANYTHING)).await;
    let upgrade = [("connection", "upgrade"), ("upgrade", "websocket")];
    let (status, _, body) = m.call(false, "GET", "/chat", &upgrade).await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED);
    assert!(body.contains("upgrades"), "{body}");
    // From the application: a WebSocket upgrade and a CONNECT tunnel.
    for head in [
        "GET /chat HTTP/1.1\r\nhost: payments\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
        "CONNECT payments:443 HTTP/1.1\r\nhost: payments:443\r\n\r\n",
    ] {
        let mut tcp = TcpStream::connect(m.orders.outbound_addr).await.unwrap();
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 1024];
        let n = tcp.read(&mut buf).await.unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 501"), "{head}: {text}");
    }
    m.stop().await;
}

/// The cases adversarial testing found (issue 14): each is refused at the mechanism that let
/// it through, over HTTP/1.1 and HTTP/2.
const HARDENING: &str = r#"
apiVersion: palisade.dev/v1
kind: AuthorizationPolicy
metadata: { name: public, namespace: shop }
spec:
  selector: { service: payments }
  rules:
    - from: [ { principals: ["spiffe://palisade.local/ns/shop/sa/orders"] } ]
      to:   [ { paths: ["/public/*", "/refunds/*", "/slow"] } ]
---
apiVersion: palisade.dev/v1
kind: AuthorizationPolicy
metadata: { name: no-debug, namespace: shop }
spec:
  action: DENY
  rules:
    - to: [ { paths: ["/refunds/blocked"] } ]
    - when: [ { key: "request.headers[x-debug]", values: ["on"] } ]
"#;

fn seen_headers(body: &str) -> serde_json::Map<String, Value> {
    let seen: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{body}"));
    seen["headers"].as_object().unwrap().clone()
}

#[tokio::test]
async fn forged_identity_headers_in_any_spelling_never_reach_the_app() {
    let m = mesh(Some(HARDENING)).await;
    let forged = "By=evil;URI=spiffe://palisade.local/ns/shop/sa/admin";
    for http2 in [false, true] {
        let (status, _, body) = m
            .call(
                http2,
                "GET",
                "/public/x",
                &[
                    ("x_forwarded_client_cert", forged),
                    ("x-forwarded_client-cert", forged),
                    ("x_palisade_publisher", "spiffe://evil"),
                    ("x_debug", "on"),
                    ("x-kept", "yes"),
                ],
            )
            .await;
        assert_eq!(status, StatusCode::OK, "http2={http2}: {body}");
        let headers = seen_headers(&body);
        assert!(
            headers.keys().all(|k| !k.contains('_')),
            "http2={http2}: {headers:?}"
        );
        assert_eq!(headers["x-kept"], "yes");
        let xfcc = headers["x-forwarded-client-cert"].as_str().unwrap();
        assert!(
            xfcc.ends_with("URI=spiffe://palisade.local/ns/shop/sa/orders"),
            "{xfcc}"
        );
    }
    // Mixed case over HTTP/1.1 (HTTP/2 names are lower case on the wire).
    let (status, body) = raw_http1(
        &m,
        "GET /public/x HTTP/1.1\r\nHost: payments\r\nX_Forwarded_Client_Cert: By=evil\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.to_lowercase().contains("by=evil"), "{body}");
    m.stop().await;
}

#[tokio::test]
async fn headers_with_underscores_can_be_refused_instead() {
    let m = mesh_with(Some(HARDENING), &["--headers-with-underscores", "reject"]).await;
    for http2 in [false, true] {
        let (status, headers, _) = m
            .call(http2, "GET", "/public/x", &[("x_user", "admin")])
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "http2={http2}");
        let audit = m
            .audit_line(headers["x-request-id"].to_str().unwrap())
            .await;
        assert!(
            audit["reason"].as_str().unwrap().contains("x_user"),
            "{audit}"
        );
    }
    m.stop().await;
}

#[tokio::test]
async fn a_deny_on_a_header_sees_every_element_of_a_list() {
    let m = mesh(Some(HARDENING)).await;
    for http2 in [false, true] {
        for value in ["on", "off, on", "off,on", "on , off"] {
            let (status, _, _) = m
                .call(http2, "GET", "/public/x", &[("x-debug", value)])
                .await;
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "http2={http2} x-debug: {value}"
            );
        }
        let (status, _, _) = m
            .call(http2, "GET", "/public/x", &[("x-debug", "off, onward")])
            .await;
        assert_eq!(status, StatusCode::OK, "elements are matched whole");
    }
    m.stop().await;
}

#[tokio::test]
async fn path_parameters_and_invalid_escapes_cannot_reach_another_path() {
    let m = mesh(Some(HARDENING)).await;
    for http2 in [false, true] {
        for target in [
            "/public/..;/admin",
            "/public/%2e%2e;/admin",
            "/public/..;jsessionid=1/admin",
            "/public/.%2e%3B/admin",
            "/public/%C0%AF../admin",
            "/public/%C0%AE%C0%AE/admin",
        ] {
            let (status, headers, body) = m.call(http2, "GET", target, &[]).await;
            assert_eq!(
                status,
                StatusCode::BAD_REQUEST,
                "http2={http2} {target}: {body}"
            );
            let audit = m
                .audit_line(headers["x-request-id"].to_str().unwrap())
                .await;
            assert_eq!(audit["decision"], "error", "{audit}");
        }
        // Parameters are matched as Tomcat routes the path: a DENY is not dodged with them.
        let (status, _, _) = m.call(http2, "GET", "/refunds/blocked;x=1", &[]).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "http2={http2}");
        // And forwarded as written where nothing is hidden behind them.
        let (status, _, body) = m
            .call(http2, "GET", "/public/cart;jsessionid=AB12", &[])
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let seen: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(seen["target"], "/public/cart;jsessionid=AB12");
    }
    m.stop().await;
}

/// Writes `request` as raw bytes over mTLS to the payments sidecar and reads the answer
/// until the connection closes: (status, everything after the status line).
async fn raw_http1(m: &Mesh, request: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = m.tls(true, b"http/1.1").await.unwrap();
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, text)
}

#[tokio::test]
async fn framing_toward_the_app_is_canonical_and_ambiguous_framing_is_refused() {
    let m = mesh(Some(HARDENING)).await;
    // Leading zeros: forwarded as the length the sidecar read.
    let (status, text) = raw_http1(
        &m,
        "POST /public/x HTTP/1.1\r\nHost: payments\r\nContent-Length: 0003\r\nConnection: close\r\n\r\nabc",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains(r#""content-length":"3""#), "{text}");
    for (te, want) in [
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
            400,
        ),
        ("Transfer-Encoding: chunked, chunked", 400),
        ("Transfer-Encoding: identity, chunked", 400),
        ("Transfer-Encoding: gzip, chunked", 501),
    ] {
        let request = format!(
            "POST /public/x HTTP/1.1\r\nHost: payments\r\n{te}\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        );
        let (status, text) = raw_http1(&m, &request).await;
        assert_eq!(status, want, "{te}: {text}");
    }
    // Both: hyper drops the Content-Length (RFC 9112, 6.3: chunked wins) and the application
    // gets the one framing the sidecar read.
    let (status, text) = raw_http1(
        &m,
        "POST /public/x HTTP/1.1\r\nHost: payments\r\nTransfer-Encoding: chunked\r\nContent-Length: 99\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(!text.contains(r#""content-length":"99""#), "{text}");
    // Plain chunked still goes through, re-framed by the sidecar.
    let (status, text) = raw_http1(
        &m,
        "POST /public/x HTTP/1.1\r\nHost: payments\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    m.stop().await;
}

/// Whether the peer closes `io` within `within` (reading nothing more).
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(io: &mut S, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 256];
    tokio::time::timeout(within, async {
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn connections_that_never_send_a_request_are_cut_at_the_header_timeout() {
    use tokio::io::AsyncWriteExt;
    let flags = [
        "--header-timeout",
        "300ms",
        "--max-connections",
        "3",
        "--idle-timeout",
        "5m",
    ];
    let m = mesh_full(Some(HARDENING), &flags, &flags).await;
    // The outbound listener: nothing, one byte, half an HTTP/2 preface, half a request line.
    for first in [&b""[..], b"G", b"PRI * HTTP/2.0\r\n", b"GET /x HT"] {
        let mut tcp = TcpStream::connect(m.orders.outbound_addr).await.unwrap();
        tcp.write_all(first).await.unwrap();
        assert!(
            closed_within(&mut tcp, Duration::from_secs(3)).await,
            "outbound kept a connection that sent {first:?}"
        );
    }
    // The inbound listener, after a completed mTLS handshake: more such connections than
    // --max-connections, and a real peer still gets in once they are cut.
    let mut idle = Vec::new();
    for alpn in [&b"h2"[..], b"http/1.1", b"h2", b"http/1.1"] {
        idle.push(m.tls(true, alpn).await.unwrap());
    }
    idle[0].write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    for (i, tls) in idle.iter_mut().take(3).enumerate() {
        assert!(
            closed_within(tls, Duration::from_secs(3)).await,
            "inbound kept idle connection {i}"
        );
    }
    let (status, _, _) = tokio::time::timeout(
        Duration::from_secs(5),
        m.call(true, "GET", "/public/x", &[]),
    )
    .await
    .expect("a real peer is served once the silent ones are cut");
    assert_eq!(status, StatusCode::OK);
    m.stop().await;
}

#[tokio::test]
async fn paced_resets_end_the_connection() {
    let m = mesh(Some(HARDENING)).await;
    let tls = m.tls(true, b"h2").await.unwrap();
    let (mut client, conn) = h2::client::handshake(tls).await.unwrap();
    let conn = tokio::spawn(conn);
    // HEADERS + RST_STREAM, 5 to a write, 20 ms apart: no burst comes near h2's own limit
    // (64 reset streams waiting to be accepted), which is all that stopped a flood before.
    let mut sent = 0;
    'flood: for _ in 0..300 {
        for _ in 0..5 {
            let Ok(ready) = client.clone().ready().await else {
                break 'flood;
            };
            client = ready;
            let req = Request::get("https://payments/slow").body(()).unwrap();
            match client.send_request(req, true) {
                Ok((response, _)) => drop(response),
                Err(_) => break 'flood,
            }
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        if conn.is_finished() {
            break;
        }
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(
        ended.is_ok(),
        "the connection was not ended after {sent} resets"
    );
    assert!(sent < 1000, "the server let {sent} paced resets through");
    // Other clients are still served.
    assert_eq!(
        m.call(true, "GET", "/public/x", &[]).await.0,
        StatusCode::OK
    );
    m.stop().await;
}
