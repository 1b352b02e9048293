//! The admission webhook as the Kubernetes API server calls it: HTTPS to the Service name
//! in the webhook configuration, verified against its caBundle, no client certificate,
//! an AdmissionReview in and out.

mod support;

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use palisade_control_plane::Config;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use serde_json::Value;
use support::Harness;
use tokio::net::TcpStream;

const NAME: &str = "palisade-webhook.palisade-system.svc";

/// A CA (the webhook configuration's caBundle) and a serving certificate for [`NAME`],
/// written to `dir`; returns the CA certificate (PEM).
fn serving_pki(dir: &std::path::Path) -> String {
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca = CertificateParams::default();
    ca.distinguished_name.push(DnType::CommonName, "webhook CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut leaf = CertificateParams::default();
    leaf.subject_alt_names = vec![SanType::DnsName(NAME.try_into().unwrap())];
    std::fs::write(
        dir.join("webhook.pem"),
        leaf.signed_by(&key, &issuer).unwrap().pem(),
    )
    .unwrap();
    std::fs::write(dir.join("webhook-key.pem"), key.serialize_pem()).unwrap();
    ca_pem
}

/// POST /inject as the API server would: (status, JSON body).
async fn call(addr: std::net::SocketAddr, ca_pem: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let config = support::client_trusting(ca_pem.as_bytes());
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(NAME.try_into().unwrap(), tcp)
        .await
        .expect("the webhook's certificate verifies for its Service name");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(Method::POST)
        .uri("/inject?timeout=10s")
        .header(header::HOST, NAME)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn the_webhook_answers_admission_reviews_over_tls_with_the_injection_patch() {
    let pki = tempfile::tempdir().unwrap();
    let ca = serving_pki(pki.path());
    let mut h = Harness::start_with(|c: &mut Config| {
        c.webhook_listen = Some("127.0.0.1:0".parse().unwrap());
        c.webhook_cert = Some(pki.path().join("webhook.pem"));
        c.webhook_key = Some(pki.path().join("webhook-key.pem"));
        c.inject_image = "registry.example/palisade:9.9".into();
    })
    .await;
    let addr = h.cp().webhook_addr.expect("the webhook listens");
    let review = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../inject/tests/fixtures/plain-pod.json"
    ))
    .unwrap();
    let (status, answer) = call(addr, &ca, review.clone()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let response = &answer["response"];
    let sent: Value = serde_json::from_slice(&review).unwrap();
    assert_eq!(response["uid"], sent["request"]["uid"]);
    assert_eq!(response["allowed"], true);
    let patch: json_patch::Patch = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(response["patch"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let mut pod = sent["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).unwrap();
    let proxy = &pod["spec"]["initContainers"][1];
    assert_eq!(proxy["name"], "palisade-proxy");
    // The control plane's settings reach the pod: its image flag, trust domain, audience.
    assert_eq!(proxy["image"], "registry.example/palisade:9.9");
    let token_volume = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "palisade-token")
        .unwrap();
    assert_eq!(
        token_volume["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "palisade"
    );

    // Not JSON, and JSON that is not a review: 400 with the reason, the server carries on.
    let (status, body) = call(addr, &ca, b"{not json".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "the body is not JSON");
    let (status, body) = call(addr, &ca, br#"{"kind":"Pod"}"#.to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"].as_str().unwrap().contains("AdmissionReview"),
        "{body}"
    );
    let (status, _) = call(addr, &ca, review).await;
    assert_eq!(status, StatusCode::OK);
    // Every answer is counted, by result.
    let metrics = h.metrics().await;
    for line in [
        r#"palisade_injection_reviews_total{result="injected"} 2"#,
        r#"palisade_injection_reviews_total{result="invalid"} 2"#,
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    h.stop().await;
}

#[test]
fn webhook_flags_need_their_files() {
    let mut config = Config::for_data_dir("/nonexistent".into());
    config.webhook_listen = Some("127.0.0.1:0".parse().unwrap());
    config.webhook_cert = Some("/nonexistent/webhook.pem".into());
    config.webhook_key = Some("/nonexistent/webhook-key.pem".into());
    let problems = config.validate().unwrap_err();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("--webhook-cert /nonexistent/webhook.pem: no such file")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("--webhook-key")),
        "{problems:?}"
    );
}
