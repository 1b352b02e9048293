//! Kubernetes token keys fetched by OIDC discovery from a local HTTPS server standing in for
//! the API server (its own CA, a bearer token required, as a real cluster does).

mod support;

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use support::{Harness, csr, k8s_claims, k8s_keys, k8s_token, tls_for_localhost};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const SA_TOKEN: &str = "control-plane-sa-token";

/// Serves the discovery document (naming `claimed_issuer`) and `jwks` over HTTPS; returns
/// the issuer URL and the CA file that trusts the server.
async fn api_server(dir: &Path, jwks: Value, claimed_issuer: Option<&str>) -> (String, PathBuf) {
    let (ca_pem, tls) = tls_for_localhost();
    let ca_file = dir.join("cluster-ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!(
        "https://localhost:{}",
        listener.local_addr().unwrap().port()
    );
    let claimed = claimed_issuer.unwrap_or(&issuer).to_owned();
    let discovery = json!({"issuer": claimed, "jwks_uri": format!("{issuer}/openid/v1/jwks")});
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, discovery, jwks) = (acceptor.clone(), discovery.clone(), jwks.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |req: Request<Incoming>| {
                    let authorized = req
                        .headers()
                        .get(header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok())
                        == Some(&format!("Bearer {SA_TOKEN}"));
                    let (status, body) = match (authorized, req.uri().path()) {
                        (false, _) => (StatusCode::UNAUTHORIZED, json!({"kind": "Status"})),
                        (true, "/.well-known/openid-configuration") => {
                            (StatusCode::OK, discovery.clone())
                        }
                        (true, "/openid/v1/jwks") => (StatusCode::OK, jwks.clone()),
                        _ => (StatusCode::NOT_FOUND, json!({})),
                    };
                    async move {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from(body.to_string())))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (issuer, ca_file)
}

fn discovery_config(c: &mut palisade_control_plane::Config, issuer: &str, ca: &Path, token: &Path) {
    c.k8s_issuer = Some(issuer.to_owned());
    c.k8s_oidc_discovery = true;
    c.k8s_ca_file = ca.to_path_buf();
    c.k8s_token_file = Some(token.to_path_buf());
}

#[tokio::test]
async fn keys_found_by_discovery_verify_service_account_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let (key, jwks) = k8s_keys();
    let (issuer, ca) = api_server(dir.path(), jwks, None).await;
    let token_file = dir.path().join("sa-token");
    std::fs::write(&token_file, SA_TOKEN).unwrap();
    let h = Harness::start_with(|c| discovery_config(c, &issuer, &ca, &token_file)).await;

    let token = k8s_token(&key, "k1", &k8s_claims(&issuer, "shop", "inventory"));
    let (status, body) = h.issue(Some(&token), &csr().1).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["spiffeId"],
        "spiffe://palisade.local/ns/shop/sa/inventory"
    );
    let other_issuer = k8s_token(
        &key,
        "k1",
        &k8s_claims("https://elsewhere", "shop", "inventory"),
    );
    assert_eq!(
        h.issue(Some(&other_issuer), &csr().1).await.0,
        StatusCode::UNAUTHORIZED
    );
}

async fn start_error(configure: impl FnOnce(&mut palisade_control_plane::Config)) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut config = palisade_control_plane::Config::for_data_dir(dir.path().join("data"));
    configure(&mut config);
    format!(
        "{:#}",
        palisade_control_plane::start(&config).await.unwrap_err()
    )
}

#[tokio::test]
async fn discovery_refuses_what_it_cannot_trust() {
    let dir = tempfile::tempdir().unwrap();
    let good_token = dir.path().join("sa-token");
    std::fs::write(&good_token, SA_TOKEN).unwrap();
    let bad_token = dir.path().join("bad-token");
    std::fs::write(&bad_token, "nope").unwrap();

    let (issuer, ca) = api_server(&subdir(dir.path(), "a"), k8s_keys().1, None).await;
    let err = start_error(|c| discovery_config(c, &issuer, &ca, &bad_token)).await;
    assert!(err.contains("HTTP 401"), "{err}");

    let (issuer, ca) = api_server(
        &subdir(dir.path(), "b"),
        k8s_keys().1,
        Some("https://evil.example"),
    )
    .await;
    let err = start_error(|c| discovery_config(c, &issuer, &ca, &good_token)).await;
    assert!(
        err.contains("names issuer \"https://evil.example\""),
        "{err}"
    );

    // A CA that did not sign the server's certificate.
    let (issuer, _) = api_server(&subdir(dir.path(), "c"), k8s_keys().1, None).await;
    let (other_ca, _) = tls_for_localhost();
    let other_ca_file = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca_file, other_ca).unwrap();
    let err = start_error(|c| discovery_config(c, &issuer, &other_ca_file, &good_token)).await;
    assert!(err.contains("TLS"), "{err}");

    // Only symmetric keys published: nothing usable.
    let (issuer, ca) = api_server(
        &subdir(dir.path(), "d"),
        json!({"keys": [{"kty": "oct", "kid": "s", "k": "c2VjcmV0"}]}),
        None,
    )
    .await;
    let err = start_error(|c| discovery_config(c, &issuer, &ca, &good_token)).await;
    assert!(err.contains("no usable asymmetric key"), "{err}");
}

fn subdir(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(&path).unwrap();
    path
}
