//! A control plane on loopback ports with a fresh data dir, and clients for both of its
//! listeners.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use palisade_contract::identity_api::{ISSUE_PATH, RENEW_PATH, control_plane_id};
use palisade_contract::tls::{
    ExpectedServer, IdentitySlot, SharedBundle, TrustBundle, WorkloadIdentity, client_config,
    server_name_for, shared_bundle,
};
use palisade_contract::{SpiffeId, TrustDomain};
use palisade_control_plane::{Config, RunningControlPlane, start};
use rcgen::{CertificateParams, KeyPair};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

pub struct Harness {
    pub cp: Option<RunningControlPlane>,
    pub dir: tempfile::TempDir,
    pub config: Config,
}

pub fn td() -> TrustDomain {
    TrustDomain::parse("palisade.local").unwrap()
}

pub fn workload(ns: &str, sa: &str) -> SpiffeId {
    td().workload_id(ns, sa).unwrap()
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A control plane on PostgreSQL (127.0.0.1:5432, database `test`), in a schema of its
    /// own so tests run in parallel and leave the database clean.
    pub async fn start_postgres() -> Self {
        let database_url = palisade_control_plane::store::fresh_postgres_schema().await;
        Self::start_with(|c| c.database_url = Some(database_url)).await
    }

    pub async fn start_with(configure: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::for_data_dir(dir.path().join("data"));
        configure(&mut config);
        let cp = start(&config).await.expect("control plane starts");
        Self {
            cp: Some(cp),
            dir,
            config,
        }
    }

    pub fn cp(&self) -> &RunningControlPlane {
        self.cp.as_ref().expect("running")
    }

    pub async fn stop(&mut self) {
        if let Some(cp) = self.cp.take() {
            cp.shutdown().await;
        }
    }

    pub async fn restart(&mut self) {
        self.stop().await;
        self.cp = Some(start(&self.config).await.expect("control plane restarts"));
    }

    pub fn bundle(&self) -> SharedBundle {
        let pem = std::fs::read(self.config.data_dir.join("trust-bundle.pem")).unwrap();
        shared_bundle(TrustBundle::from_pem(td(), &pem).unwrap())
    }

    pub fn admin_token(&self) -> String {
        self.cp().admin_token().unwrap()
    }

    /// An admin API call; returns the status and the body as JSON (or a JSON string).
    pub async fn admin(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let (status, _, value) = self.admin_raw(method, path, token, &[], body).await;
        (status, value)
    }

    /// An admin API call with extra headers and a raw body (YAML, say); returns the status,
    /// the response headers and the body as JSON (or a JSON string).
    pub async fn admin_raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> (StatusCode, http::HeaderMap, Value) {
        let body: Bytes = body.into();
        let tcp = TcpStream::connect(self.cp().admin_addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "admin");
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if body.starts_with(b"{") {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = sender
            .send_request(req.body(Full::new(body)).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, headers, value)
    }

    /// A recorded admin token of the control plane for `role`, named `name`.
    pub async fn token_for(&self, name: &str, role: &str) -> String {
        self.cp
            .as_ref()
            .expect("running")
            .create_admin_token(name, role, Duration::from_secs(600))
            .await
            .unwrap()
            .token
    }

    pub async fn join_token(&self, ns: &str, sa: &str) -> String {
        let (status, body) = self
            .admin(
                Method::POST,
                "/v1/join-tokens",
                Some(&self.admin_token()),
                Some(serde_json::json!({"namespace": ns, "serviceAccount": sa, "ttlSeconds": 600})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }

    /// A call to the sidecar-facing listener, verifying the control plane's identity, with
    /// `identity` as the client certificate when given.
    pub async fn sidecar_call(
        &self,
        path: &str,
        token: Option<&str>,
        identity: Option<Arc<IdentitySlot>>,
        body: String,
    ) -> (StatusCode, Value) {
        self.sidecar_request(Method::POST, path, token, identity, body)
            .await
    }

    pub async fn sidecar_request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        identity: Option<Arc<IdentitySlot>>,
        body: String,
    ) -> (StatusCode, Value) {
        self.tls_request(self.cp().sidecar_addr, method, path, token, identity, body)
            .await
    }

    /// A request over TLS to `addr` (the sidecar port, or the admin port with --admin-tls).
    pub async fn tls_request(
        &self,
        addr: std::net::SocketAddr,
        method: Method,
        path: &str,
        token: Option<&str>,
        identity: Option<Arc<IdentitySlot>>,
        body: String,
    ) -> (StatusCode, Value) {
        let config = client_config(
            identity,
            self.bundle(),
            ExpectedServer::Exact(control_plane_id(&td())),
            &[b"http/1.1"],
        );
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = TlsConnector::from(Arc::new(config))
            .connect(server_name_for(&control_plane_id(&td())), tcp)
            .await
            .expect("TLS to the control plane");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "cp")
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let resp = tokio::time::timeout(
            Duration::from_secs(30),
            sender.send_request(req.body(Full::new(Bytes::from(body))).unwrap()),
        )
        .await
        .unwrap()
        .unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    pub async fn issue(&self, token: Option<&str>, csr: &str) -> (StatusCode, Value) {
        self.sidecar_call(
            ISSUE_PATH,
            token,
            None,
            serde_json::json!({"csr": csr}).to_string(),
        )
        .await
    }

    pub async fn renew(
        &self,
        identity: Option<Arc<IdentitySlot>>,
        csr: &str,
    ) -> (StatusCode, Value) {
        self.sidecar_call(
            RENEW_PATH,
            None,
            identity,
            serde_json::json!({"csr": csr}).to_string(),
        )
        .await
    }

    /// The control plane's Prometheus text.
    pub async fn metrics(&self) -> String {
        metrics_at(self.cp().metrics_addr).await
    }
}

/// The Prometheus text served at `addr`.
pub async fn metrics_at(addr: std::net::SocketAddr) -> String {
    {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::builder()
            .uri("/metrics")
            .header(header::HOST, "m")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        String::from_utf8(
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap()
    }
}

/// A fresh P-256 key and a CSR built from `params`.
pub fn csr_with(params: CertificateParams) -> (KeyPair, String) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    (key, csr)
}

pub fn csr() -> (KeyPair, String) {
    csr_with(CertificateParams::default())
}

/// An identity slot holding the certificate from an issue/renew response.
pub fn identity_from(response: &Value, key: &KeyPair) -> Arc<IdentitySlot> {
    let chain = palisade_contract::certs::certs_from_pem(
        response["certificateChain"].as_str().unwrap().as_bytes(),
    )
    .unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let slot = IdentitySlot::new();
    slot.set(WorkloadIdentity::from_der(chain, key).unwrap());
    slot
}

/// Reads a metric sample's value from Prometheus text (`name{labels}` exactly as printed).
pub fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

pub const K8S_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// A cluster's token signing key (kid `k1`) and its JWKS, which also lists a symmetric key
/// (kid `sym`, secret `shared secret`) that must never be used.
pub fn k8s_keys() -> (jsonwebtoken::EncodingKey, Value) {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let issuer = palisade_contract::jwt::testing::TestIssuer::new("k1");
    let mut jwks = issuer.jwks;
    jwks["keys"].as_array_mut().unwrap().push(
        serde_json::json!({"kty": "oct", "kid": "sym", "k": URL_SAFE_NO_PAD.encode(b"shared secret")}),
    );
    (issuer.key, jwks)
}

/// The key and a JWKS file for it in `dir`.
pub fn k8s_setup(dir: &std::path::Path) -> (jsonwebtoken::EncodingKey, std::path::PathBuf) {
    let (key, jwks) = k8s_keys();
    let path = dir.join("jwks.json");
    std::fs::write(&path, jwks.to_string()).unwrap();
    (key, path)
}

/// Claims of a projected ServiceAccount token as the kubelet requests them.
pub fn k8s_claims(issuer: &str, ns: &str, sa: &str) -> Value {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    serde_json::json!({"aud": ["palisade"], "exp": t + 600, "iat": t, "nbf": t, "iss": issuer,
           "sub": format!("system:serviceaccount:{ns}:{sa}"),
           "kubernetes.io": {"namespace": ns, "pod": {"name": format!("{sa}-7d9f"), "uid": "p1"},
                             "serviceaccount": {"name": sa, "uid": "s1"}}})
}

pub fn k8s_token(key: &jsonwebtoken::EncodingKey, kid: &str, claims: &Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// A TLS CA and a server certificate for `localhost` signed by it: (CA PEM, server config).
pub fn tls_for_localhost() -> (String, rustls::ServerConfig) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let config =
        rustls::ServerConfig::builder_with_provider(palisade_contract::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(rustls_pki_types::PrivatePkcs8KeyDer::from(
                    key.serialize_der(),
                )),
            )
            .unwrap();
    (ca_cert.pem(), config)
}

/// A TLS client config trusting the roots in `ca_pem` (as the API server trusts a
/// webhook's caBundle), without a client certificate.
pub fn client_trusting(ca_pem: &[u8]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in palisade_contract::certs::certs_from_pem(ca_pem).unwrap() {
        roots.add(c).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(palisade_contract::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}
