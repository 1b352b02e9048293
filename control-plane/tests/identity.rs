//! The control plane's identity service, end to end over its real listeners.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{Method, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use palisade_contract::certs::certs_from_pem;
use palisade_contract::identity_api::control_plane_id;
use palisade_contract::tls::{KeyUsage, TrustBundle};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, UnixTime};
use serde_json::{Value, json};
use support::{
    Harness, K8S_ISSUER, csr, csr_with, identity_from, k8s_claims, k8s_setup, k8s_token, sample,
    td, workload,
};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn chain_of(response: &Value) -> Vec<CertificateDer<'static>> {
    certs_from_pem(response["certificateChain"].as_str().unwrap().as_bytes()).unwrap()
}

fn verify(bundle: &TrustBundle, chain: &[CertificateDer<'static>]) -> Result<String, String> {
    bundle
        .verify_workload(
            &chain[0],
            &chain[1..],
            UnixTime::now(),
            KeyUsage::client_auth(),
        )
        .map(|id| id.to_string())
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn issues_a_leaf_with_exactly_the_tokens_identity() {
    let h = Harness::start().await;
    let token = h.join_token("shop", "orders").await;
    let (_key, csr) = csr();
    let (status, body) = h.issue(Some(&token), &csr).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["spiffeId"],
        "spiffe://palisade.local/ns/shop/sa/orders"
    );

    let chain = chain_of(&body);
    assert_eq!(chain.len(), 1, "a managed root signs leaves directly");
    let bundle = h.bundle();
    assert_eq!(
        verify(&bundle.load(), &chain).unwrap(),
        "spiffe://palisade.local/ns/shop/sa/orders"
    );
    assert_eq!(
        body["trustBundle"].as_str().unwrap(),
        bundle.load().to_pem()
    );

    let (_, cert) = X509Certificate::from_der(chain[0].as_ref()).unwrap();
    let sans = &cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    assert_eq!(sans.len(), 1, "exactly one SAN: {sans:?}");
    assert!(matches!(
        sans[0],
        GeneralName::URI("spiffe://palisade.local/ns/shop/sa/orders")
    ));
    assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_cert_sign() && !ku.crl_sign());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth && !eku.code_signing);
    let not_after = cert.validity().not_after.timestamp();
    let not_before = cert.validity().not_before.timestamp();
    let t = now() as i64;
    assert!(
        not_after <= t + 3600 && not_after >= t + 3590,
        "TTL is the configured 1h"
    );
    assert!(
        not_before <= t - 30 && not_before >= t - 120,
        "backdated by a small skew"
    );
    assert_eq!(body["notAfter"].as_i64().unwrap(), not_after);
    assert_eq!(cert.raw_serial().len(), 16, "a random 16-byte serial");

    // Another issuance for the same identity has another serial.
    let (_, body2) = h
        .issue(Some(&h.join_token("shop", "orders").await), &csr)
        .await;
    let chain2 = chain_of(&body2);
    let (_, cert2) = X509Certificate::from_der(chain2[0].as_ref()).unwrap();
    assert_ne!(cert.raw_serial(), cert2.raw_serial());
}

#[tokio::test]
async fn join_token_is_single_use() {
    let h = Harness::start().await;
    let token = h.join_token("shop", "orders").await;
    assert_eq!(h.issue(Some(&token), &csr().1).await.0, StatusCode::OK);
    let (status, body) = h.issue(Some(&token), &csr().1).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("already been used"),
        "{body}"
    );
    let metrics = h.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "palisade_ca_requests_refused_total{reason=\"token_reused\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &metrics,
            "palisade_ca_certificates_issued_total{method=\"join_token\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn csr_asking_for_more_still_gets_the_tokens_identity() {
    let h = Harness::start().await;
    let token = h.join_token("shop", "orders").await;
    let mut greedy = CertificateParams::new(vec!["payments.shop.svc".to_string()]).unwrap();
    greedy.subject_alt_names.push(SanType::URI(
        "spiffe://palisade.local/ns/shop/sa/payments"
            .try_into()
            .unwrap(),
    ));
    greedy.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    greedy.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let (_key, csr) = csr_with(greedy);
    let (status, body) = h.issue(Some(&token), &csr).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let chain = chain_of(&body);
    let (_, cert) = X509Certificate::from_der(chain[0].as_ref()).unwrap();
    let sans = &cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    assert_eq!(sans.len(), 1);
    assert!(matches!(
        sans[0],
        GeneralName::URI("spiffe://palisade.local/ns/shop/sa/orders")
    ));
    assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);
    assert!(!cert.key_usage().unwrap().unwrap().value.key_cert_sign());
}

#[tokio::test]
async fn csr_with_a_bad_signature_is_refused_and_the_token_is_not_spent() {
    let h = Harness::start().await;
    let token = h.join_token("shop", "orders").await;
    let (_key, good) = csr();
    // Flip one bit near the end of the DER: inside the signature.
    let der = pem::parse(&good).unwrap();
    let mut bytes = der.contents().to_vec();
    let i = bytes.len() - 5;
    bytes[i] ^= 0x01;
    let tampered = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", bytes));
    let (status, body) = h.issue(Some(&token), &tampered).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "CSR signature does not verify");

    let (status, body) = h.issue(Some(&token), "not a CSR").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let (status, body) = h.issue(Some(&token), &good).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the token survives a refused CSR: {body}"
    );
}

#[tokio::test]
async fn malformed_request_bodies_are_refused_clearly() {
    let h = Harness::start().await;
    let token = h.join_token("shop", "orders").await;
    let (status, body) = h
        .sidecar_call("/v1/identity/issue", Some(&token), None, "{".into())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"].as_str().unwrap().contains("JSON"));
    let (status, _) = h
        .sidecar_call(
            "/v1/identity/issue",
            Some(&token),
            None,
            json!({"csr": "x", "extra": 1}).to_string(),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown fields are refused"
    );
    let huge = json!({"csr": "A".repeat(64 * 1024)}).to_string();
    let (status, _) = h
        .sidecar_call("/v1/identity/issue", Some(&token), None, huge)
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, body) = h.issue(None, &csr().1).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("bootstrap token is required")
    );
}

/// Tokens crafted with the control plane's own key, to reach each validation rule.
struct Forge {
    key: EncodingKey,
    kid: String,
    iss: String,
}

impl Forge {
    async fn new(h: &Harness) -> Self {
        let pem = std::fs::read(h.config.data_dir.join("token-signing-key.pem")).unwrap();
        let real = h.join_token("shop", "orders").await;
        Self {
            key: EncodingKey::from_ec_pem(&pem).unwrap(),
            kid: jsonwebtoken::decode_header(&real).unwrap().kid.unwrap(),
            iss: control_plane_id(&td()).to_string(),
        }
    }

    fn claims(&self) -> Value {
        let t = now();
        json!({"iss": self.iss, "aud": "palisade-join", "sub": "spiffe://palisade.local/ns/shop/sa/orders",
               "exp": t + 600, "nbf": t, "iat": t, "jti": "forged"})
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }

    /// Signed under a protected header written as given (jsonwebtoken's `Header` has no
    /// `crit`).
    fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), &self.key, Algorithm::ES256).unwrap();
        format!("{message}.{signature}")
    }

    fn with(&self, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> String {
        let mut claims = self.claims();
        edit(claims.as_object_mut().unwrap());
        self.sign(&claims)
    }
}

fn unsigned_token(header: Value, claims: Value) -> String {
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// Each `(name, token, reason)`: issuance is refused with 401 and `reason` in the error.
async fn assert_all_refused(h: &Harness, cases: Vec<(&str, String, &str)>) {
    for (name, token, reason) in cases {
        let (status, body) = h.issue(Some(&token), &csr().1).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(reason),
            "{name}: expected {reason:?} in {error:?}"
        );
    }
}

#[tokio::test]
async fn every_bad_bootstrap_token_is_refused_for_its_reason() {
    let h = Harness::start().await;
    let forge = Forge::new(&h).await;
    let real = h.join_token("shop", "orders").await;
    let t = now();

    let other_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let wrong_key = Forge {
        key: EncodingKey::from_ec_pem(other_key.serialize_pem().as_bytes()).unwrap(),
        kid: forge.kid.clone(),
        iss: forge.iss.clone(),
    };
    let mut parts: Vec<String> = real.split('.').map(String::from).collect();
    let real_claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
    let mut payload = real_claims.clone();
    payload["sub"] = json!("spiffe://palisade.local/ns/shop/sa/payments");
    parts[1] = URL_SAFE_NO_PAD.encode(payload.to_string());
    let tampered = parts.join(".");
    let public_pem = KeyPair::from_pem(
        &String::from_utf8(std::fs::read(h.config.data_dir.join("token-signing-key.pem")).unwrap())
            .unwrap(),
    )
    .unwrap()
    .public_key_pem();
    let mut hs_header = Header::new(Algorithm::HS256);
    hs_header.kid = Some(forge.kid.clone());
    let hmac_with_public_key = jsonwebtoken::encode(
        &hs_header,
        &forge.claims(),
        &EncodingKey::from_secret(public_pem.as_bytes()),
    )
    .unwrap();

    let cases: Vec<(&str, String, &str)> = vec![
        ("garbage", "not.a.jwt".into(), "not a well-formed JWT"),
        (
            "forged with another key",
            wrong_key.sign(&forge.claims()),
            "signature",
        ),
        ("tampered payload", tampered, "signature"),
        (
            "alg none",
            unsigned_token(
                json!({"alg": "none", "typ": "JWT", "kid": forge.kid}),
                forge.claims(),
            ),
            "rejected",
        ),
        (
            "HMAC keyed with the public key",
            hmac_with_public_key,
            "signature",
        ),
        (
            "wrong aud",
            forge.with(|c| {
                c.insert("aud".into(), json!("palisade-admin"));
            }),
            "audience",
        ),
        (
            "aud of the wrong type",
            forge.with(|c| {
                c.insert("aud".into(), json!(42));
            }),
            "rejected",
        ),
        (
            "missing iss",
            forge.with(|c| {
                c.remove("iss");
            }),
            "rejected",
        ),
        (
            "wrong iss",
            forge.with(|c| {
                c.insert("iss".into(), json!("https://evil.example"));
            }),
            "issuer",
        ),
        (
            "iss of the wrong type",
            forge.with(|c| {
                c.insert("iss".into(), json!(["x"]));
            }),
            "rejected",
        ),
        (
            "missing exp",
            forge.with(|c| {
                c.remove("exp");
            }),
            "claims",
        ),
        (
            "exp as a string",
            forge.with(|c| {
                c.insert("exp".into(), json!((t + 600).to_string()));
            }),
            "claims",
        ),
        (
            "expired",
            forge.with(|c| {
                c.insert("exp".into(), json!(t - 30));
            }),
            "expired",
        ),
        (
            "not yet valid",
            forge.with(|c| {
                c.insert("nbf".into(), json!(t + 120));
            }),
            "not valid yet",
        ),
        (
            "identity in another trust domain",
            forge.with(|c| {
                c.insert("sub".into(), json!("spiffe://other.td/ns/shop/sa/orders"));
            }),
            "no valid identity",
        ),
        (
            "malformed SPIFFE ID",
            forge.with(|c| {
                c.insert("sub".into(), json!("spiffe://palisade.local/ns/../sa/x"));
            }),
            "no valid identity",
        ),
        (
            "validly signed but never issued",
            forge.sign(&forge.claims()),
            "never issued",
        ),
        (
            "a recorded jti re-signed for another identity",
            forge.with(|c| {
                c.insert("jti".into(), real_claims["jti"].clone());
                c.insert(
                    "sub".into(),
                    json!("spiffe://palisade.local/ns/shop/sa/payments"),
                );
            }),
            "never issued for this identity",
        ),
        (
            "critical extension",
            forge.sign_with_header(
                &json!({"alg": "ES256", "kid": forge.kid, "crit": ["x-unknown"]}),
                &forge.claims(),
            ),
            "critical extensions",
        ),
        (
            "empty crit",
            forge.sign_with_header(
                &json!({"alg": "ES256", "kid": forge.kid, "crit": []}),
                &forge.claims(),
            ),
            "critical extensions",
        ),
    ];
    let cases_count = cases.len();
    assert_all_refused(&h, cases).await;
    // The record the re-signed token named was not spent: its own token still works.
    assert_eq!(h.issue(Some(&real), &csr().1).await.0, StatusCode::OK);
    // None of them got a certificate.
    let metrics = h.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "palisade_ca_certificates_issued_total{method=\"join_token\"}"
        ),
        1.0,
        "only the real token's own use"
    );
    // Each refusal and the one issuance is a record of the control plane's own chain.
    let token = h.admin_token();
    let (status, page) = h
        .admin(
            Method::GET,
            "/v1/decisions?protocol=identity&limit=1000",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let items = page["items"].as_array().unwrap();
    let denied = items
        .iter()
        .filter(|d| d["record"]["decision"] == "deny")
        .count();
    let allowed: Vec<&Value> = items
        .iter()
        .filter(|d| d["record"]["decision"] == "allow")
        .collect();
    assert_eq!(denied, cases_count, "one record per refusal");
    assert_eq!(allowed.len(), 1);
    assert_eq!(
        allowed[0]["record"]["path"],
        "spiffe://palisade.local/ns/shop/sa/orders"
    );
    assert!(
        items.iter().all(|d| d["record"]["destination"]
            == "spiffe://palisade.local/ns/palisade-system/sa/control-plane"),
        "{page}"
    );
}

#[tokio::test]
async fn the_control_planes_identity_is_never_issued() {
    let h = Harness::start().await;
    let (status, body) = h
        .admin(
            Method::POST,
            "/v1/join-tokens",
            Some(&h.admin_token()),
            Some(json!({"namespace": "palisade-system", "serviceAccount": "control-plane"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let forge = Forge::new(&h).await;
    let token = forge.with(|c| {
        c.insert("sub".into(), json!(control_plane_id(&td()).to_string()));
    });
    let (status, body) = h.issue(Some(&token), &csr().1).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body["error"].as_str().unwrap().contains("reserved"));
}

#[tokio::test]
async fn invalid_names_are_refused_when_creating_join_tokens() {
    let h = Harness::start().await;
    for (ns, sa) in [
        ("Shop", "orders"),
        ("shop", ""),
        ("shop", "a/b"),
        ("sh%6Fp", "orders"),
        ("-shop", "orders"),
    ] {
        let (status, body) = h
            .admin(
                Method::POST,
                "/v1/join-tokens",
                Some(&h.admin_token()),
                Some(json!({"namespace": ns, "serviceAccount": sa})),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{ns}/{sa}: {body}");
        assert!(
            body["details"][0]
                .as_str()
                .unwrap()
                .contains("not a valid Kubernetes name"),
            "{body}"
        );
    }
    let (status, _) = h
        .admin(
            Method::POST,
            "/v1/join-tokens",
            Some(&h.admin_token()),
            Some(json!({"namespace": "shop", "serviceAccount": "orders", "ttlSeconds": 90000})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn renewal_needs_the_current_certificate_and_keeps_the_identity() {
    let h = Harness::start().await;
    let token = h.join_token("shop", "orders").await;
    let (key, csr1) = csr();
    let (_, first) = h.issue(Some(&token), &csr1).await;
    let identity = identity_from(&first, &key);

    let (key2, csr2) = csr();
    let (status, renewed) = h.renew(Some(identity), &csr2).await;
    assert_eq!(status, StatusCode::OK, "{renewed}");
    assert_eq!(renewed["spiffeId"], first["spiffeId"]);
    assert_ne!(chain_of(&renewed)[0], chain_of(&first)[0]);
    identity_from(&renewed, &key2); // the new certificate is for the new key

    let (status, body) = h.renew(None, &csr().1).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("client certificate")
    );
    let metrics = h.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "palisade_ca_certificates_issued_total{method=\"renewal\"}"
        ),
        1.0
    );
    // The default keeps keys in plain files, and the metrics say so.
    assert!(
        metrics.contains("palisade_ca_key_protected{key=\"ca\"} 0\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn renewal_on_a_kept_alive_connection_stops_when_the_certificate_expires() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    let h = Harness::start_with(|c| c.workload_ttl = Duration::from_secs(2)).await;
    let (key, csr1) = csr();
    let (_, first) = h
        .issue(Some(&h.join_token("shop", "orders").await), &csr1)
        .await;
    let not_after = first["notAfter"].as_i64().unwrap();
    let identity = identity_from(&first, &key);
    let config = palisade_contract::tls::client_config(
        Some(identity),
        h.bundle(),
        palisade_contract::tls::ExpectedServer::Exact(control_plane_id(&td())),
        &[b"http/1.1"],
    );
    let tcp = tokio::net::TcpStream::connect(h.cp().sidecar_addr)
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(rustls_pki_types::ServerName::try_from("cp").unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut renew = async || {
        let body = json!({"csr": csr().1}).to_string();
        let req = http::Request::post("/v1/identity/renew")
            .header(http::header::HOST, "cp")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status();
        resp.into_body().collect().await.unwrap();
        status
    };
    assert_eq!(renew().await, StatusCode::OK);
    while (now() as i64) < not_after + 1 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        renew().await,
        StatusCode::UNAUTHORIZED,
        "same connection, expired certificate"
    );
}

#[tokio::test]
async fn sidecars_can_verify_the_control_plane_and_nothing_else_passes_for_it() {
    let h = Harness::start().await;
    // The support client requires the control plane's SPIFFE ID; expecting another fails.
    let config = palisade_contract::tls::client_config(
        None,
        h.bundle(),
        palisade_contract::tls::ExpectedServer::Exact(workload("shop", "payments")),
        &[],
    );
    let tcp = tokio::net::TcpStream::connect(h.cp().sidecar_addr)
        .await
        .unwrap();
    let err = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(rustls_pki_types::ServerName::try_from("cp").unwrap(), tcp)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("UnexpectedPeer"), "{err}");
    assert!(
        err.to_string().contains("palisade-system/sa/control-plane"),
        "{err}"
    );
}

#[tokio::test]
async fn kubernetes_service_account_tokens_bootstrap_identities() {
    let keydir = tempfile::tempdir().unwrap();
    let (key, jwks) = k8s_setup(keydir.path());
    let h = Harness::start_with(|c| {
        c.k8s_issuer = Some(K8S_ISSUER.into());
        c.k8s_jwks = Some(jwks.clone());
    })
    .await;

    let good = k8s_token(&key, "k1", &k8s_claims(K8S_ISSUER, "shop", "inventory"));
    let (status, body) = h.issue(Some(&good), &csr().1).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["spiffeId"],
        "spiffe://palisade.local/ns/shop/sa/inventory"
    );
    // Projected tokens are not single-use: the kubelet refreshes them and pods reuse them.
    assert_eq!(h.issue(Some(&good), &csr().1).await.0, StatusCode::OK);

    let other = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let other_key = EncodingKey::from_ec_pem(other.serialize_pem().as_bytes()).unwrap();
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("sym".into());
    let hmac = jsonwebtoken::encode(
        &hs,
        &k8s_claims(K8S_ISSUER, "shop", "inventory"),
        &EncodingKey::from_secret(b"shared secret"),
    )
    .unwrap();
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut c = k8s_claims(K8S_ISSUER, "shop", "inventory");
        f(&mut c);
        k8s_token(&key, "k1", &c)
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "wrong audience",
            edit(&|c| c["aud"] = json!(["kubernetes"])),
            "audience",
        ),
        (
            "missing audience",
            edit(&|c| {
                c.as_object_mut().unwrap().remove("aud");
            }),
            "claims",
        ),
        (
            "unknown kid",
            k8s_token(&key, "k2", &k8s_claims(K8S_ISSUER, "shop", "inventory")),
            "unknown key",
        ),
        (
            "right kid, wrong key",
            k8s_token(
                &other_key,
                "k1",
                &k8s_claims(K8S_ISSUER, "shop", "inventory"),
            ),
            "signature",
        ),
        ("symmetric JWKS key", hmac, "unknown key"),
        (
            "sub disagrees with kubernetes.io",
            edit(&|c| c["sub"] = json!("system:serviceaccount:shop:payments")),
            "no valid identity",
        ),
        (
            "invalid namespace",
            edit(&|c| {
                c["kubernetes.io"]["namespace"] = json!("Shop");
                c["sub"] = json!("system:serviceaccount:Shop:inventory");
            }),
            "no valid identity",
        ),
        (
            "expired",
            edit(&|c| c["exp"] = json!(now() - 60)),
            "expired",
        ),
        (
            "no kubernetes.io claims",
            edit(&|c| {
                c.as_object_mut().unwrap().remove("kubernetes.io");
            }),
            "claims",
        ),
        (
            "untrusted issuer",
            edit(&|c| c["iss"] = json!("https://other-cluster")),
            "issuer",
        ),
    ];
    assert_all_refused(&h, cases).await;
}

#[tokio::test]
async fn root_rotation_overlaps_then_drops_the_old_root() {
    let h = Harness::start().await;
    let admin = h.admin_token();
    let issue = || async {
        chain_of(
            &h.issue(Some(&h.join_token("shop", "orders").await), &csr().1)
                .await
                .1,
        )
    };
    let old_leaf = issue().await;
    let old_bundle = h.bundle().load_full();
    assert_eq!(old_bundle.len(), 1);

    let (status, body) = h
        .admin(Method::POST, "/v1/ca/rotation/activate", Some(&admin), None)
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "activate before prepare: {body}"
    );

    let (status, body) = h
        .admin(Method::POST, "/v1/ca/rotation/prepare", Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["rotationPhase"], "prepared");
    let overlap = h.bundle().load_full();
    assert_eq!(overlap.len(), 2);
    // Still signing with the old root.
    assert!(verify(&old_bundle, &issue().await).is_ok());

    let (status, body) = h
        .admin(Method::POST, "/v1/ca/rotation/activate", Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["rotationPhase"], "activated");
    let new_leaf = issue().await;
    assert!(
        verify(&old_bundle, &new_leaf).is_err(),
        "signed by the new root"
    );
    // During the overlap both generations are accepted.
    assert!(verify(&overlap, &old_leaf).is_ok());
    assert!(verify(&overlap, &new_leaf).is_ok());

    let (status, body) = h
        .admin(Method::POST, "/v1/ca/rotation/finish", Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["rotationPhase"], "stable");
    let after = h.bundle().load_full();
    assert_eq!(after.len(), 1);
    let err = verify(&after, &old_leaf).unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(verify(&after, &new_leaf).is_ok());

    // The control plane serves a certificate from the new root: a client that trusts only
    // the new root can still reach it (the re-issue is asynchronous, so poll briefly).
    let mut reached = false;
    for _ in 0..40 {
        let cfg = palisade_contract::tls::client_config(
            None,
            palisade_contract::tls::shared_bundle((*after).clone()),
            palisade_contract::tls::ExpectedServer::Exact(control_plane_id(&td())),
            &[],
        );
        let tcp = tokio::net::TcpStream::connect(h.cp().sidecar_addr)
            .await
            .unwrap();
        if tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
            .connect(rustls_pki_types::ServerName::try_from("cp").unwrap(), tcp)
            .await
            .is_ok()
        {
            reached = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        reached,
        "control plane still presents an old-root certificate"
    );
    let (status, _) = h
        .admin(Method::POST, "/v1/ca/rotation/finish", Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
}

fn write_pem(path: &std::path::Path, der: &CertificateDer<'_>) {
    std::fs::write(
        path,
        pem::encode(&pem::Pem::new("CERTIFICATE", der.as_ref().to_vec())),
    )
    .unwrap();
}

#[tokio::test]
async fn a_plugged_in_intermediate_ca_signs_and_its_chain_is_served() {
    let files = tempfile::tempdir().unwrap();
    let root_key = KeyPair::generate().unwrap();
    let mut root_params = CertificateParams::default();
    root_params
        .distinguished_name
        .push(DnType::CommonName, "Corp Root");
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let root = root_params.self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(root_params, root_key);
    let int_key = KeyPair::generate().unwrap();
    let mut int_params = CertificateParams::default();
    int_params
        .distinguished_name
        .push(DnType::CommonName, "Palisade Intermediate");
    int_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    int_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let intermediate = int_params.signed_by(&int_key, &root_issuer).unwrap();
    let p = |n: &str| files.path().join(n);
    write_pem(&p("root.pem"), root.der());
    write_pem(&p("int.pem"), intermediate.der());
    std::fs::write(p("int-key.pem"), int_key.serialize_pem()).unwrap();

    let h = Harness::start_with(|c| {
        c.ca_cert = Some(p("int.pem"));
        c.ca_key = Some(p("int-key.pem"));
        c.ca_roots = Some(p("root.pem"));
    })
    .await;
    let (status, body) = h
        .issue(Some(&h.join_token("shop", "orders").await), &csr().1)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let chain = chain_of(&body);
    assert_eq!(chain.len(), 2, "leaf and intermediate");
    assert_eq!(chain[1], *intermediate.der());
    let bundle = h.bundle().load_full();
    assert_eq!(bundle.roots().collect::<Vec<_>>(), vec![root.der()]);
    assert!(verify(&bundle, &chain).is_ok());
    let (status, ca) = h
        .admin(Method::GET, "/v1/ca", Some(&h.admin_token()), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ca["mode"], "plugged-in");
    assert_eq!(ca["roots"][0]["signing"], true);
    let (status, _) = h
        .admin(
            Method::POST,
            "/v1/ca/rotation/prepare",
            Some(&h.admin_token()),
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "plugged-in CAs rotate by their files"
    );

    // A key that does not match the certificate stops start-up.
    let wrong = KeyPair::generate().unwrap();
    std::fs::write(p("wrong-key.pem"), wrong.serialize_pem()).unwrap();
    let mut config = h.config.clone();
    config.data_dir = files.path().join("other-data");
    config.ca_key = Some(p("wrong-key.pem"));
    let err = palisade_control_plane::start(&config).await.unwrap_err();
    assert!(format!("{err:#}").contains("self-check"), "{err:#}");
    // So does a signing certificate that is not a CA.
    let mut config = h.config.clone();
    config.data_dir = files.path().join("third-data");
    let leaf = chain[0].clone();
    write_pem(&p("leaf.pem"), &leaf);
    config.ca_cert = Some(p("leaf.pem"));
    let err = palisade_control_plane::start(&config).await.unwrap_err();
    assert!(
        format!("{err:#}").contains("not a CA certificate"),
        "{err:#}"
    );
}

#[tokio::test]
async fn the_admin_api_needs_a_valid_token_with_the_right_role() {
    let h = Harness::start().await;
    let body = json!({"namespace": "shop", "serviceAccount": "orders"});
    let (status, _) = h
        .admin(Method::POST, "/v1/join-tokens", None, Some(body.clone()))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = h
        .admin(
            Method::POST,
            "/v1/join-tokens",
            Some("garbage"),
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A join token is not an admin token.
    let join = h.join_token("shop", "orders").await;
    let (status, _) = h.admin(Method::GET, "/v1/ca", Some(&join), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Signed with the right key but never recorded: refused.
    let key = palisade_control_plane::tokens::TokenKey::load_or_create(
        &h.config.data_dir,
        &td(),
        &palisade_control_plane::keys::KeyStorage::File,
    )
    .unwrap();
    let (unrecorded, _) = key
        .mint_admin("alice", "admin", Duration::from_secs(60))
        .unwrap();
    let (status, body) = h
        .admin(Method::GET, "/v1/ca", Some(&unrecorded), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let viewer =
        h.cp.as_ref()
            .unwrap()
            .create_admin_token("alice", "viewer", Duration::from_secs(60))
            .await
            .unwrap()
            .token;
    let (status, _) = h
        .admin(
            Method::POST,
            "/v1/join-tokens",
            Some(&viewer),
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = h
        .admin(Method::POST, "/v1/ca/rotation/prepare", Some(&viewer), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, ca) = h.admin(Method::GET, "/v1/ca", Some(&viewer), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ca["trustDomain"], "palisade.local");
    let (status, _) = h.admin(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn slow_and_plaintext_clients_are_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::start_with(|c| c.handshake_timeout = Duration::from_millis(300)).await;
    let read_until_closed = |mut tcp: tokio::net::TcpStream| async move {
        let mut buf = vec![0u8; 1024];
        let started = std::time::Instant::now();
        loop {
            match tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
                Ok(Ok(_)) => continue,
                Err(_) => panic!("the server kept the connection open"),
            }
        }
    };
    // Connects and never starts the handshake.
    let idle = tokio::net::TcpStream::connect(h.cp().sidecar_addr)
        .await
        .unwrap();
    let waited = read_until_closed(idle).await;
    assert!(
        waited >= Duration::from_millis(250),
        "closed after {waited:?}"
    );
    // Speaks plaintext HTTP to the TLS port.
    let mut plain = tokio::net::TcpStream::connect(h.cp().sidecar_addr)
        .await
        .unwrap();
    plain
        .write_all(b"POST /v1/identity/issue HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    read_until_closed(plain).await;
    // The listener still serves others.
    assert_eq!(
        h.issue(Some(&h.join_token("shop", "orders").await), &csr().1)
            .await
            .0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn restart_reuses_the_ca_and_remembers_spent_tokens() {
    let mut h = Harness::start().await;
    let data = h.config.data_dir.clone();
    for private in ["ca/ca-key.pem", "token-signing-key.pem", "admin-token"] {
        let mode = std::fs::metadata(data.join(private))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{private}");
    }
    assert_eq!(
        std::fs::metadata(&data).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let root_before = std::fs::read(data.join("ca/ca-cert.pem")).unwrap();
    let token = h.join_token("shop", "orders").await;
    assert_eq!(h.issue(Some(&token), &csr().1).await.0, StatusCode::OK);
    let unused = h.join_token("shop", "payments").await;

    h.restart().await;
    assert_eq!(
        std::fs::read(data.join("ca/ca-cert.pem")).unwrap(),
        root_before
    );
    assert_eq!(
        h.issue(Some(&token), &csr().1).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(h.issue(Some(&unused), &csr().1).await.0, StatusCode::OK);
}

/// A re-attestation request for the certificate in `issued` (its key `key`), for `csr`,
/// signed at `signed_at`; `sign_csr` is what the signature covers (normally `csr`).
fn reattest_body(
    issued: &Value,
    key: &KeyPair,
    csr: &str,
    sign_csr: &str,
    signed_at: i64,
) -> String {
    let message = palisade_contract::identity_api::reattest_message(signed_at, sign_csr);
    let rng = ring::rand::SystemRandom::new();
    let signer = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &key.serialize_der(),
        &rng,
    )
    .unwrap();
    let signature = signer.sign(&rng, &message).unwrap();
    json!({
        "certificateChain": issued["certificateChain"],
        "csr": csr,
        "signedAt": signed_at,
        "signature": base64::engine::general_purpose::STANDARD.encode(signature),
    })
    .to_string()
}

async fn reattest(h: &Harness, body: String) -> (StatusCode, Value) {
    h.sidecar_call(
        palisade_contract::identity_api::REATTEST_PATH,
        None,
        None,
        body,
    )
    .await
}

/// A certificate for shop/orders from `h` (TTL as configured), its key, once it has expired.
async fn expired_certificate(h: &Harness) -> (Value, KeyPair) {
    let (key, request) = csr();
    let (status, issued) = h
        .issue(Some(&h.join_token("shop", "orders").await), &request)
        .await;
    assert_eq!(status, StatusCode::OK, "{issued}");
    let not_after = issued["notAfter"].as_i64().unwrap();
    while (now() as i64) <= not_after {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (issued, key)
}

#[tokio::test]
async fn an_expired_certificate_is_reattested_once_with_its_key_and_never_otherwise() {
    let h = Harness::start_with(|c| {
        c.workload_ttl = Duration::from_secs(2);
        c.reattest_grace = Duration::from_secs(60);
    })
    .await;
    // Still valid: renew instead.
    let (renewed_key, request) = csr();
    let (_, renewed_one) = h
        .issue(Some(&h.join_token("shop", "orders").await), &request)
        .await;
    let (new_key, new_csr) = csr();
    let t = now() as i64;
    let body = reattest_body(&renewed_one, &renewed_key, &new_csr, &new_csr, t);
    let (status, answer) = reattest(&h, body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("has not expired"),
        "{answer}"
    );
    // Renewed, and so never to be re-attested (whoever kept a copy of it).
    let (status, _) = h
        .renew(Some(identity_from(&renewed_one, &renewed_key)), &csr().1)
        .await;
    assert_eq!(status, StatusCode::OK);

    let (issued, key) = expired_certificate(&h).await;
    let t = now() as i64;
    let refusals = [
        // Renewed before it expired.
        (
            reattest_body(&renewed_one, &renewed_key, &new_csr, &new_csr, t),
            "already renewed or re-attested",
        ),
        // A signature over another CSR cannot carry this one.
        (reattest_body(&issued, &key, &new_csr, &csr().1, t), "does not verify with the certificate's key"),
        // Another key cannot sign for this certificate.
        (reattest_body(&issued, &csr().0, &new_csr, &new_csr, t), "does not verify with the certificate's key"),
        // Signed long ago (or far ahead): a captured request is stale.
        (reattest_body(&issued, &key, &new_csr, &new_csr, t - 1000), "signedAt is 1000s"),
        (reattest_body(&issued, &key, &new_csr, &new_csr, t + 1000), "signedAt is -1000s"),
        (
            json!({"certificateChain": "not PEM", "csr": new_csr, "signedAt": t, "signature": "AA=="}).to_string(),
            "certificateChain",
        ),
    ];
    for (body, why) in refusals {
        let (status, answer) = reattest(&h, body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{why}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(why),
            "{why}: {answer}"
        );
    }
    let (status, answer) = reattest(&h, json!({"csr": new_csr}).to_string()).await;
    assert!(status.is_client_error(), "{status} {answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("certificateChain"),
        "{answer}"
    );

    // The real thing: the same identity, for the new key.
    let (status, renewed) = reattest(&h, reattest_body(&issued, &key, &new_csr, &new_csr, t)).await;
    assert_eq!(status, StatusCode::OK, "{renewed}");
    assert_eq!(renewed["spiffeId"], issued["spiffeId"]);
    identity_from(&renewed, &new_key);
    // Once only.
    let (_, another) = csr();
    let (status, answer) = reattest(&h, reattest_body(&issued, &key, &another, &another, t)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("already renewed or re-attested"),
        "{answer}"
    );
    let metrics = h.metrics().await;
    let count = |series: &str| sample(&metrics, series);
    assert_eq!(
        count("palisade_ca_certificates_issued_total{method=\"reattestation\"}"),
        1.0
    );
    assert_eq!(
        count("palisade_ca_requests_refused_total{reason=\"reattest_reused\"}"),
        2.0
    );
}

#[tokio::test]
async fn reattestation_ends_with_the_grace_and_can_be_turned_off() {
    let late = Harness::start_with(|c| {
        c.workload_ttl = Duration::from_secs(2);
        c.reattest_grace = Duration::from_secs(1);
    })
    .await;
    let (issued, key) = expired_certificate(&late).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, new_csr) = csr();
    let body = reattest_body(&issued, &key, &new_csr, &new_csr, now() as i64);
    let (status, answer) = reattest(&late, body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("more than the re-attestation grace of 1s"),
        "{answer}"
    );

    let off = Harness::start_with(|c| {
        c.workload_ttl = Duration::from_secs(2);
        c.reattest_grace = Duration::ZERO;
    })
    .await;
    let (issued, key) = expired_certificate(&off).await;
    let body = reattest_body(&issued, &key, &new_csr, &new_csr, now() as i64);
    let (status, answer) = reattest(&off, body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("re-attestation is off"),
        "{answer}"
    );
}
