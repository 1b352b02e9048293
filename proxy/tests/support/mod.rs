//! Shared by the sidecar's integration tests: a control plane and sidecars on loopback.

#![allow(dead_code)]

pub mod netns;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use palisade_control_plane::RunningControlPlane;
use palisade_proxy::{Config, RunningSidecar};
use tokio::net::TcpStream;

/// A policy letting the `orders` identity do anything to the workload it selects.
pub const ORDERS_MAY_DO_ANYTHING: &str = r#"
apiVersion: palisade.dev/v1
kind: AuthorizationPolicy
metadata: { name: orders-anything, namespace: shop }
spec:
  rules: [ { from: [ { principals: ["spiffe://palisade.local/ns/shop/sa/orders"] } ] } ]
"#;

pub async fn control_plane(data: &Path, ttl: Duration) -> RunningControlPlane {
    let mut config = palisade_control_plane::Config::for_data_dir(data.to_path_buf());
    config.workload_ttl = ttl;
    palisade_control_plane::start(&config).await.unwrap()
}

pub struct SidecarFiles {
    pub token: PathBuf,
    pub cache: PathBuf,
    pub audit: PathBuf,
}

pub async fn sidecar_files(cp: &RunningControlPlane, dir: &Path, sa: &str) -> SidecarFiles {
    sidecar_files_in(cp, dir, "shop", sa).await
}

pub async fn sidecar_files_in(
    cp: &RunningControlPlane,
    dir: &Path,
    namespace: &str,
    sa: &str,
) -> SidecarFiles {
    let token = cp
        .create_join_token(namespace, sa, Duration::from_secs(300))
        .await
        .unwrap();
    let files = SidecarFiles {
        token: dir.join(format!("{sa}.token")),
        cache: dir.join(format!("{sa}-identity")),
        audit: dir.join(format!("{sa}-audit.jsonl")),
    };
    std::fs::write(&files.token, token.token).unwrap();
    files
}

/// A sidecar config as flags would give it, every listener on a free loopback port; `extra`
/// adds or overrides flags.
pub fn sidecar_config(
    cp_addr: SocketAddr,
    bundle: PathBuf,
    files: &SidecarFiles,
    extra: &[&str],
) -> Config {
    let mut args: Vec<String> = vec![
        "palisade-proxy".into(),
        "--control-plane".into(),
        cp_addr.to_string(),
        "--ca-bundle".into(),
        bundle.display().to_string(),
        "--token-file".into(),
        files.token.display().to_string(),
        "--identity-dir".into(),
        files.cache.display().to_string(),
        "--admin-listen".into(),
        "127.0.0.1:0".into(),
        "--inbound-listen".into(),
        "127.0.0.1:0".into(),
        "--outbound-listen".into(),
        "127.0.0.1:0".into(),
        "--max-backoff".into(),
        "500ms".into(),
        "--audit-log".into(),
        files.audit.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let config = Config::try_parse_from(args).expect("valid test flags");
    config.settings().expect("valid test config");
    config
}

/// GET on the sidecar's admin port: (status, body).
pub async fn admin_get(sidecar: &RunningSidecar, path: &str) -> (u16, String) {
    http_get(sidecar.admin_addr, path, None).await
}

/// A plain-HTTP GET, with a bearer token if given: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str, bearer: Option<&str>) -> (u16, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .uri(path)
        .header(http::header::HOST, "admin");
    if let Some(token) = bearer {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let resp = sender
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A free loopback port (bound and released: good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An application answering `hello` to everything.
pub async fn hello_app() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let service = hyper::service::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                    Bytes::from_static(b"hello"),
                )))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service),
            );
        }
    });
    addr
}

/// A plain-HTTP call from an application through its sidecar's outbound listener to
/// `payments`: the status.
pub async fn call_payments(sidecar: &RunningSidecar, method: &str, path: &str) -> http::StatusCode {
    let tcp = TcpStream::connect(sidecar.outbound_addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "payments")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    status
}

pub async fn wait_until(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first audit line in `path` for which `pred` holds (waiting for it to be written).
pub async fn audit_where(
    path: &Path,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut found = None;
    wait_until(
        "the audit line is written",
        Duration::from_secs(5),
        async || {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            found = text
                .lines()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).expect("every audit line is JSON")
                })
                .find(|v| pred(v));
            found.is_some()
        },
    )
    .await;
    found.unwrap()
}

pub async fn wait_ready(sidecar: &RunningSidecar) {
    wait_until(
        "the sidecar is ready",
        Duration::from_secs(10),
        async || admin_get(sidecar, "/ready").await.0 == 200,
    )
    .await;
}

/// A sidecar of `cp` with `files`, once it is ready.
pub async fn start_ready(
    cp: &RunningControlPlane,
    bundle: PathBuf,
    files: &SidecarFiles,
    extra: &[&str],
) -> RunningSidecar {
    let sidecar = palisade_proxy::start(&sidecar_config(cp.sidecar_addr, bundle, files, extra))
        .await
        .unwrap();
    wait_ready(&sidecar).await;
    sidecar
}

/// A control plane with `ttl` and one ready sidecar per service account (namespace shop).
pub async fn mesh(
    dir: &Path,
    ttl: Duration,
    service_accounts: &[&str],
) -> (RunningControlPlane, Vec<RunningSidecar>) {
    let cp = control_plane(&dir.join("cp"), ttl).await;
    let bundle = dir.join("cp/trust-bundle.pem");
    let mut sidecars = Vec::new();
    for sa in service_accounts {
        let files = sidecar_files(&cp, dir, sa).await;
        sidecars.push(start_ready(&cp, bundle.clone(), &files, &[]).await);
    }
    (cp, sidecars)
}

/// A TCP echo server on loopback: its port.
pub async fn tcp_echo() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

/// The `orders` sidecar of `cp`, ready, with `extra` flags and a registry file naming
/// each `(service, address)` of `services` as served by the payments identity.
pub async fn orders_with_registry(
    cp: &RunningControlPlane,
    dir: &Path,
    services: &[(&str, SocketAddr)],
    extra: &[&str],
) -> RunningSidecar {
    let registry: Vec<String> = services
        .iter()
        .map(|(name, addr)| {
            format!(
                "apiVersion: palisade.dev/v1\nkind: Service\nmetadata: {{ name: {name}, namespace: shop }}\n\
                 spec: {{ identity: \"spiffe://palisade.local/ns/shop/sa/payments\", endpoints: [\"{addr}\"] }}\n"
            )
        })
        .collect();
    let registry_file = dir.join("registry.yaml");
    std::fs::write(&registry_file, registry.join("---\n")).unwrap();
    let files = sidecar_files(cp, dir, "orders").await;
    let mut flags = vec!["--registry-file", registry_file.to_str().unwrap()];
    flags.extend_from_slice(extra);
    start_ready(cp, dir.join("cp/trust-bundle.pem"), &files, &flags).await
}

/// The newest root of `cp`'s bundle other than `old`, once `rotate activate` has run: a
/// check of whether a sidecar's certificate chains to it.
pub fn on_new_root(
    cp: &RunningControlPlane,
    old: &rustls::pki_types::CertificateDer<'static>,
) -> impl Fn(&RunningSidecar) -> bool + use<> {
    let new_root = cp
        .ca
        .bundle()
        .load()
        .roots()
        .find(|r| *r != old)
        .unwrap()
        .clone();
    let new_only = palisade_contract::tls::TrustBundle::from_ders(
        "palisade.local".parse().unwrap(),
        vec![new_root],
    )
    .unwrap();
    move |s: &RunningSidecar| {
        let id = s.identity.slot().get().unwrap();
        new_only
            .verify_workload(
                &id.chain[0],
                &id.chain[1..],
                rustls::pki_types::UnixTime::now(),
                palisade_contract::tls::KeyUsage::client_auth(),
            )
            .is_ok()
    }
}

/// The `payments` sidecar of `cp`, ready, in front of [`hello_app`], enforcing
/// [`ORDERS_MAY_DO_ANYTHING`], with `extra` flags.
pub async fn payments_with_hello(
    cp: &RunningControlPlane,
    dir: &Path,
    extra: &[&str],
) -> RunningSidecar {
    let app = hello_app().await.to_string();
    let policy_file = dir.join("policies.yaml");
    std::fs::write(&policy_file, ORDERS_MAY_DO_ANYTHING).unwrap();
    let files = sidecar_files(cp, dir, "payments").await;
    let mut flags = vec![
        "--app",
        app.as_str(),
        "--policy-file",
        policy_file.to_str().unwrap(),
    ];
    flags.extend_from_slice(extra);
    start_ready(cp, dir.join("cp/trust-bundle.pem"), &files, &flags).await
}
