//! What the control plane publishes in a cluster, against a local HTTPS server standing in
//! for the Kubernetes API server (no cluster exists on the machines these tests run on).
//! The stand-in keeps objects by path and behaves as the API server does where it matters
//! here: a bearer token is required (401 without), POST of an existing name is 409, PUT
//! with a stale `resourceVersion` is 409, and lists have `items`. It is no substitute for a
//! real API server (no admission, no field validation); the README says so.

mod support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use palisade_control_plane::Config;
use serde_json::{Value, json};
use support::tls_for_localhost;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

const TOKEN: &str = "control-plane-sa-token";
const WEBHOOK_CONFIG: &str = "palisade-sidecar-injector";
const WEBHOOK_NAME: &str = "palisade-control-plane.palisade-system.svc";

type Objects = Arc<Mutex<BTreeMap<String, Value>>>;

/// The stand-in API server: its URL, the CA file that trusts it, and its objects.
struct FakeApi {
    url: String,
    ca_file: PathBuf,
    objects: Objects,
    /// TLS connections accepted and requests served.
    connections: Arc<std::sync::atomic::AtomicUsize>,
    requests: Arc<std::sync::atomic::AtomicUsize>,
}

impl FakeApi {
    fn get(&self, path: &str) -> Option<Value> {
        self.objects.lock().unwrap().get(path).cloned()
    }

    fn put(&self, path: &str, mut object: Value) {
        object["metadata"]["resourceVersion"] = json!(next_version());
        self.objects.lock().unwrap().insert(path.to_owned(), object);
    }

    fn namespace(&self, name: &str, phase: &str) {
        self.put(
            &format!("/api/v1/namespaces/{name}"),
            json!({"metadata": {"name": name}, "status": {"phase": phase}}),
        );
    }

    fn trust_bundle(&self, namespace: &str) -> Option<String> {
        self.get(&format!(
            "/api/v1/namespaces/{namespace}/configmaps/palisade-trust-bundle"
        ))
        .and_then(|cm| cm["data"]["trust-bundle.pem"].as_str().map(str::to_owned))
    }
}

/// resourceVersions, increasing over every write, as etcd's revisions do.
fn next_version() -> String {
    static VERSION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1000);
    VERSION
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        .to_string()
}

fn respond(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn status(code: StatusCode, message: &str) -> Response<Full<Bytes>> {
    respond(
        code,
        json!({"kind": "Status", "code": code.as_u16(), "message": message}),
    )
}

/// One request against the object map.
fn handle(objects: &Objects, method: &Method, path: &str, body: &[u8]) -> Response<Full<Bytes>> {
    let mut objects = objects.lock().unwrap();
    match *method {
        Method::GET => {
            if let Some(object) = objects.get(path) {
                return respond(StatusCode::OK, object.clone());
            }
            // The one list the control plane reads: the namespaces.
            let items: Vec<Value> = if path == "/api/v1/namespaces" {
                objects
                    .iter()
                    .filter(|(k, _)| {
                        k.strip_prefix("/api/v1/namespaces/")
                            .is_some_and(|rest| !rest.contains('/'))
                    })
                    .map(|(_, v)| v.clone())
                    .collect()
            } else {
                return status(StatusCode::NOT_FOUND, &format!("{path} not found"));
            };
            respond(StatusCode::OK, json!({"kind": "List", "items": items}))
        }
        Method::POST => {
            // A namespace whose own admission refuses the object (the test locks it).
            if let Some(ns) = path
                .strip_prefix("/api/v1/namespaces/")
                .and_then(|rest| rest.split('/').next())
                && objects.contains_key(&format!("/locked/{ns}"))
            {
                return status(StatusCode::FORBIDDEN, "denied by the namespace's policy");
            }
            let mut object: Value = serde_json::from_slice(body).unwrap();
            let key = format!("{path}/{}", object["metadata"]["name"].as_str().unwrap());
            if objects.contains_key(&key) {
                return status(StatusCode::CONFLICT, "already exists");
            }
            object["metadata"]["resourceVersion"] = json!(next_version());
            objects.insert(key, object.clone());
            respond(StatusCode::CREATED, object)
        }
        Method::PUT => {
            let mut object: Value = serde_json::from_slice(body).unwrap();
            let Some(stored) = objects.get(path) else {
                return status(StatusCode::NOT_FOUND, "not found");
            };
            if stored["metadata"]["resourceVersion"] != object["metadata"]["resourceVersion"] {
                return status(StatusCode::CONFLICT, "the object has been modified");
            }
            object["metadata"]["resourceVersion"] = json!(next_version());
            objects.insert(path.to_owned(), object.clone());
            respond(StatusCode::OK, object)
        }
        _ => status(StatusCode::METHOD_NOT_ALLOWED, "not here"),
    }
}

async fn fake_api(dir: &Path) -> FakeApi {
    let (ca_pem, tls) = tls_for_localhost();
    let ca_file = dir.join("cluster-ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://localhost:{}",
        listener.local_addr().unwrap().port()
    );
    let objects: Objects = Arc::default();
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let (shared, counted_connections, counted_requests) =
        (objects.clone(), connections.clone(), requests.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, objects, requests) =
                (acceptor.clone(), shared.clone(), counted_requests.clone());
            counted_connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |req: Request<Incoming>| {
                    let objects = objects.clone();
                    requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    async move {
                        let authorized = req
                            .headers()
                            .get(header::AUTHORIZATION)
                            .and_then(|v| v.to_str().ok())
                            == Some(&format!("Bearer {TOKEN}"));
                        if !authorized {
                            return Ok::<_, Infallible>(status(
                                StatusCode::UNAUTHORIZED,
                                "Unauthorized",
                            ));
                        }
                        let method = req.method().clone();
                        let path = req.uri().path().to_owned();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        Ok(handle(&objects, &method, &path, &body))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    FakeApi {
        url,
        ca_file,
        objects,
        connections,
        requests,
    }
}

fn in_cluster(c: &mut Config, api: &FakeApi, token_file: &Path) {
    c.k8s_api_server = Some(api.url.clone());
    c.k8s_ca_file = api.ca_file.clone();
    c.k8s_token_file = Some(token_file.to_path_buf());
    c.k8s_ca_secret = Some("palisade-ca".into());
    c.k8s_webhook_config = Some(WEBHOOK_CONFIG.into());
    c.k8s_sync_interval = Duration::from_millis(100);
    c.webhook_listen = Some("127.0.0.1:0".parse().unwrap());
    c.webhook_dns_name = vec![WEBHOOK_NAME.into()];
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !check() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TLS handshake with the webhook as the API server makes it: `name`, verified against
/// the caBundle of the webhook configuration.
async fn webhook_handshake(
    addr: std::net::SocketAddr,
    ca_bundle_b64: &str,
    name: &str,
) -> Result<(), std::io::Error> {
    let pem = base64::engine::general_purpose::STANDARD
        .decode(ca_bundle_b64)
        .unwrap();
    let config = support::client_trusting(&pem);
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name.to_owned().try_into().unwrap(), tcp)
        .await
        .map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_publishes_its_trust_bundle_ca_and_webhook_ca_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let api = fake_api(dir.path()).await;
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    for ns in ["default", "shop", "palisade-system"] {
        api.namespace(ns, "Active");
    }
    api.namespace("leaving", "Terminating");
    // A namespace that refuses the ConfigMap must not keep the others from theirs.
    api.namespace("locked", "Active");
    api.objects
        .lock()
        .unwrap()
        .insert("/locked/locked".into(), json!(true));
    api.put(
        &format!("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{WEBHOOK_CONFIG}"),
        json!({
            "metadata": {"name": WEBHOOK_CONFIG},
            "webhooks": [{"name": "inject.palisade.dev", "clientConfig": {"service": {"name": "palisade-control-plane", "namespace": "palisade-system", "path": "/inject", "port": 15017}}}]
        }),
    );

    let mut config = Config::for_data_dir(dir.path().join("cp-a"));
    in_cluster(&mut config, &api, &token);
    let a = palisade_control_plane::start(&config).await.unwrap();
    let bundle = a.ca.bundle_pem();

    // First start: the CA is made and kept in the Secret.
    let secret = api
        .get("/api/v1/namespaces/palisade-system/secrets/palisade-ca")
        .expect("the CA Secret is created");
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    assert_eq!(
        secret["data"]["ca-cert.pem"].as_str(),
        Some(b64(&bundle).as_str())
    );
    assert!(secret["data"]["ca-key.pem"].is_string());

    // The trust bundle in every namespace but the one being deleted.
    eventually("every live namespace has the trust bundle", || {
        ["default", "shop", "palisade-system"]
            .iter()
            .all(|ns| api.trust_bundle(ns).as_deref() == Some(bundle.as_str()))
    })
    .await;
    assert_eq!(api.trust_bundle("leaving"), None);
    // The calls share a kept-alive connection rather than a TLS handshake each.
    let (connections, requests) = (
        api.connections.load(std::sync::atomic::Ordering::Relaxed),
        api.requests.load(std::sync::atomic::Ordering::Relaxed),
    );
    assert!(
        requests >= 10 && connections <= 2,
        "{connections} connections for {requests} requests"
    );
    assert_eq!(api.trust_bundle("locked"), None);

    // The webhook's caBundle is the trust bundle, and the webhook serves a certificate for
    // its Service name that verifies against it (and for no other name).
    let webhook_path = format!(
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{WEBHOOK_CONFIG}"
    );
    eventually("the caBundle is set", || {
        api.get(&webhook_path).unwrap()["webhooks"][0]["clientConfig"]["caBundle"].as_str()
            == Some(b64(&bundle).as_str())
    })
    .await;
    let ca_bundle = api.get(&webhook_path).unwrap()["webhooks"][0]["clientConfig"]["caBundle"]
        .as_str()
        .unwrap()
        .to_owned();
    let webhook = a.webhook_addr.expect("the webhook listens");
    webhook_handshake(webhook, &ca_bundle, WEBHOOK_NAME)
        .await
        .expect("the API server can verify the webhook");
    assert!(
        webhook_handshake(webhook, &ca_bundle, "evil.palisade-system.svc")
            .await
            .is_err(),
        "the certificate names the webhook's Service only"
    );

    // The failing namespace is counted as a failed pass, and retried: once it accepts the
    // ConfigMap, it gets it.
    let metrics = support::metrics_at(a.metrics_addr).await;
    assert!(
        support::sample(
            &metrics,
            r#"palisade_k8s_sync_passes_total{result="error"}"#
        ) >= 1.0,
        "{metrics}"
    );
    api.objects.lock().unwrap().remove("/locked/locked");
    // A new namespace gets its ConfigMap; a tampered one is put right; a webhook entry
    // added to the configuration gets the caBundle.
    api.namespace("late", "Active");
    let mut hooks = api.get(&webhook_path).unwrap();
    let mut second = hooks["webhooks"][0].clone();
    second["name"] = json!("second.palisade.dev");
    second["clientConfig"]
        .as_object_mut()
        .unwrap()
        .remove("caBundle");
    hooks["webhooks"].as_array_mut().unwrap().push(second);
    api.put(&webhook_path, hooks);
    let shop_cm = "/api/v1/namespaces/shop/configmaps/palisade-trust-bundle";
    let mut tampered = api.get(shop_cm).unwrap();
    tampered["data"]["trust-bundle.pem"] = json!("not a bundle");
    api.put(shop_cm, tampered);
    eventually(
        "the new and unlocked namespaces, the tampered ConfigMap and the new webhook are current",
        || {
            ["late", "shop", "locked"]
                .iter()
                .all(|ns| api.trust_bundle(ns).as_deref() == Some(bundle.as_str()))
                && api.get(&webhook_path).unwrap()["webhooks"][1]["clientConfig"]["caBundle"]
                    .as_str()
                    == Some(b64(&bundle).as_str())
        },
    )
    .await;

    // A second replica reads the same CA from the Secret, so sidecars of either verify.
    let mut config_b = Config::for_data_dir(dir.path().join("cp-b"));
    in_cluster(&mut config_b, &api, &token);
    // Replicas share the store (PostgreSQL in the replicated overlay), where admin tokens
    // are recorded; here replica B opens replica A's database.
    config_b.database_url = Some(format!(
        "sqlite://{}",
        dir.path().join("cp-a/palisade.db").display()
    ));
    let b = palisade_control_plane::start(&config_b).await.unwrap();
    assert_eq!(b.ca.bundle_pem(), bundle, "replicas share the CA");
    // ... and the token key and the store: replica A's admin token is good at replica B.
    let token_a = a.admin_token().unwrap();
    let status_b = {
        let tcp = TcpStream::connect(b.admin_addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        sender
            .send_request(
                Request::get("/v1/ca")
                    .header(header::HOST, "admin")
                    .header(header::AUTHORIZATION, format!("Bearer {token_a}"))
                    .body(http_body_util::Empty::<Bytes>::new())
                    .unwrap(),
            )
            .await
            .unwrap()
            .status()
    };
    assert_eq!(
        status_b,
        StatusCode::OK,
        "a token of replica A works at replica B"
    );

    // The passes are counted: the one that reached every namespace succeeded.
    let metrics = support::metrics_at(a.metrics_addr).await;
    assert!(
        support::sample(&metrics, r#"palisade_k8s_sync_passes_total{result="ok"}"#) >= 1.0,
        "{metrics}"
    );
    assert_eq!(
        support::sample(&metrics, "palisade_k8s_trust_bundle_namespaces"),
        5.0,
        "{metrics}"
    );
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test]
async fn a_refused_token_or_a_bad_secret_stops_the_start_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let api = fake_api(dir.path()).await;
    let token = dir.path().join("token");
    std::fs::write(&token, "not-the-token").unwrap();
    let mut config = Config::for_data_dir(dir.path().join("cp"));
    in_cluster(&mut config, &api, &token);
    let e = format!(
        "{:#}",
        palisade_control_plane::start(&config).await.unwrap_err()
    );
    assert!(e.contains("401") && e.contains("Unauthorized"), "{e}");

    std::fs::write(&token, TOKEN).unwrap();
    api.put(
        "/api/v1/namespaces/palisade-system/secrets/palisade-ca",
        json!({"metadata": {"name": "palisade-ca"}, "data": {"ca-cert.pem": "%%%"}}),
    );
    let e = format!(
        "{:#}",
        palisade_control_plane::start(&config).await.unwrap_err()
    );
    assert!(e.contains("ca-cert.pem is not base64"), "{e}");
    api.put(
        "/api/v1/namespaces/palisade-system/secrets/palisade-ca",
        json!({"metadata": {"name": "palisade-ca"}, "data": {"ca-cert.pem": "AAAA"}}),
    );
    let e = format!(
        "{:#}",
        palisade_control_plane::start(&config).await.unwrap_err()
    );
    assert!(e.contains("has no ca-key.pem"), "{e}");
    // Nothing was written over the operator's Secret.
    assert_eq!(
        api.get("/api/v1/namespaces/palisade-system/secrets/palisade-ca")
            .unwrap()["data"]["ca-cert.pem"],
        "AAAA"
    );
}

/// The file `key` of a Secret, decoded.
fn secret_file(secret: &serde_json::Value, key: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(secret["data"][key].as_str().unwrap())
        .unwrap()
}

#[tokio::test]
async fn with_envelope_key_sources_the_ca_secret_holds_only_envelopes() {
    let dir = tempfile::tempdir().unwrap();
    let api = fake_api(dir.path()).await;
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let kek = dir.path().join("kek");
    std::fs::write(
        &kek,
        palisade_control_plane::keys::Kek::generate_base64().as_bytes(),
    )
    .unwrap();
    let mut config = Config::for_data_dir(dir.path().join("cp"));
    in_cluster(&mut config, &api, &token);
    config.ca_key_source = palisade_control_plane::keys::KeySource::Envelope;
    config.token_key_source = palisade_control_plane::keys::KeySource::Envelope;
    config.key_encryption_key_file = Some(kek.clone());
    let cp = palisade_control_plane::start(&config).await.unwrap();
    let secret = api
        .get("/api/v1/namespaces/palisade-system/secrets/palisade-ca")
        .expect("the CA Secret is created");
    for key in ["ca-key.pem", "token-key.pem"] {
        let stored = secret_file(&secret, key);
        assert!(
            palisade_control_plane::keys::is_envelope(&stored),
            "{key} is not an envelope"
        );
        assert!(
            !String::from_utf8_lossy(&stored).contains("PRIVATE KEY"),
            "{key}"
        );
    }
    cp.shutdown().await;
    // Another replica with the wrong KEK cannot use the Secret, and says why.
    let other = dir.path().join("other-kek");
    std::fs::write(
        &other,
        palisade_control_plane::keys::Kek::generate_base64().as_bytes(),
    )
    .unwrap();
    let mut replica = Config::for_data_dir(dir.path().join("cp-b"));
    in_cluster(&mut replica, &api, &token);
    replica.ca_key_source = palisade_control_plane::keys::KeySource::Envelope;
    replica.token_key_source = palisade_control_plane::keys::KeySource::Envelope;
    replica.key_encryption_key_file = Some(other);
    let e = format!(
        "{:#}",
        palisade_control_plane::start(&replica).await.unwrap_err()
    );
    assert!(e.contains("wrong KEK"), "{e}");
    // With the right one it starts, on the same CA.
    replica.key_encryption_key_file = Some(kek);
    let b = palisade_control_plane::start(&replica).await.unwrap();
    assert_eq!(
        b.ca.bundle_pem(),
        String::from_utf8(secret_file(&secret, "ca-cert.pem")).unwrap()
    );
    b.shutdown().await;
}

#[tokio::test]
async fn with_pkcs11_key_sources_the_ca_secret_holds_only_references_to_the_token() {
    use palisade_control_plane::keys::KeySource;
    use palisade_control_plane::keys::softhsm::TestToken;
    let hsm = TestToken::new("k8s");
    let dir = tempfile::tempdir().unwrap();
    let api = fake_api(dir.path()).await;
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let replica = |data: &str| {
        let mut config = Config::for_data_dir(dir.path().join(data));
        in_cluster(&mut config, &api, &token);
        config.ca_key_source = KeySource::Pkcs11;
        config.token_key_source = KeySource::Pkcs11;
        config.set_token_settings(&hsm.settings);
        config
    };
    let a = palisade_control_plane::start(&replica("cp-a"))
        .await
        .unwrap();
    let secret = api
        .get("/api/v1/namespaces/palisade-system/secrets/palisade-ca")
        .expect("the CA Secret is created");
    for key in ["ca-key.pem", "token-key.pem"] {
        let stored = secret_file(&secret, key);
        let reference: serde_json::Value = serde_json::from_slice(&stored).unwrap();
        assert_eq!(reference["palisadePkcs11"], 1, "{key}: {reference}");
        assert_eq!(reference["token"], hsm.settings.label.as_str(), "{key}");
        assert!(
            !String::from_utf8_lossy(&stored).contains("PRIVATE KEY"),
            "{key}"
        );
    }
    let bundle = a.ca.bundle_pem();
    a.shutdown().await;
    // A second replica signs with the same keys in the same token, on the same CA.
    let b = palisade_control_plane::start(&replica("cp-b"))
        .await
        .unwrap();
    assert_eq!(b.ca.bundle_pem(), bundle);
    b.shutdown().await;
    // One configured for a token it cannot find says so.
    let mut lost = replica("cp-c");
    lost.pkcs11_token = Some("elsewhere".into());
    let e = format!(
        "{:#}",
        palisade_control_plane::start(&lost).await.unwrap_err()
    );
    assert!(e.contains("no initialised token has this label"), "{e}");
}
