//! What the control plane writes to the Kubernetes API, and the HTTPS client it uses there
//! (also for OIDC discovery, [`crate::k8s_discovery`]).
//!
//! - **The trust bundle in every namespace**: a ConfigMap (`palisade-trust-bundle`, key
//!   `trust-bundle.pem`) that injected sidecars mount to verify the control plane before
//!   they have a certificate, as istiod publishes `istio-ca-root-cert`.
//! - **The webhook's caBundle**: the control plane serves the admission webhook with a
//!   certificate of its own CA (renewed with its own identity), so the
//!   MutatingWebhookConfiguration's `caBundle` must be that CA's roots; kept so here, and
//!   again after a rotation, so no certificate tool is needed in the cluster.
//! - **The CA Secret**: a new root on the very first start, stored in a Secret every later
//!   start and every replica reads (see [`ca_secret`]), with the key that signs admin and
//!   join tokens, so a token made by one replica is good at all of them.
//!
//! These are reconciled, not watched: every `--k8s-sync-interval` (and at once when the
//! signing root changes) one list of namespaces and a GET of the ConfigMap in each, then a
//! write only for what is missing or different. Replicas all write the same content,
//! so they need no leader election: a write that loses a race (409) is simply redone on
//! the next pass. A namespace created between passes waits at most one interval for its
//! ConfigMap; its injected pods' sidecars wait for the volume meanwhile (the kubelet
//! retries the mount).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use palisade_contract::TrustDomain;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::ServerName;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::ca::{CertificateAuthority, PluggedInCa, ensure_private_dir, write_file};
use crate::tokens::TOKEN_KEY_FILE;

const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response read (a list of namespaces or ConfigMaps in a big cluster fits).
const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;
/// The key of the published ConfigMap, as the injector mounts it.
pub const TRUST_BUNDLE_KEY: &str = "trust-bundle.pem";
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "palisade");
/// The Secret's key for the key that signs admin and join tokens, which replicas share too.
const TOKEN_KEY: &str = "token-key.pem";

#[derive(Debug, thiserror::Error)]
#[error("{method} {url}: {reason}")]
pub struct HttpsError {
    pub method: Method,
    pub url: String,
    pub reason: String,
}

/// HTTPS to the cluster: verified against the cluster's CA, with a bearer token read from
/// a file at each call (projected tokens are rotated by the kubelet). One kept-alive
/// connection is reused from call to call (a reconciliation pass makes one call per
/// namespace: a TLS handshake each would be most of its cost, and the API server's).
#[derive(Debug, Clone)]
pub struct HttpsClient {
    tls: Arc<ClientConfig>,
    token_file: Option<PathBuf>,
    idle: Arc<std::sync::Mutex<Option<IdleConnection>>>,
}

/// A kept-alive connection and the `host:port` it goes to.
type IdleConnection = (String, SendRequest<Full<Bytes>>);

impl HttpsClient {
    /// `ca_pem`: the roots that sign the API server's certificate.
    pub fn new(ca_pem: &[u8], token_file: Option<PathBuf>) -> Result<Self, String> {
        let mut roots = RootCertStore::empty();
        let certs = palisade_contract::certs::certs_from_pem(ca_pem)
            .map_err(|e| format!("cluster CA: {e}"))?;
        for cert in certs {
            roots.add(cert).map_err(|e| format!("cluster CA: {e}"))?;
        }
        let mut tls =
            ClientConfig::builder_with_provider(palisade_contract::tls::crypto_provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            tls: Arc::new(tls),
            token_file,
            idle: Arc::default(),
        })
    }

    /// The idle connection to `authority` if it is still open, else a new one.
    async fn connection(
        &self,
        authority: &str,
        host: &str,
        port: u16,
    ) -> Result<SendRequest<Full<Bytes>>, String> {
        let reusable = self
            .idle
            .lock()
            .expect("not poisoned")
            .take()
            .filter(|(a, sender)| a == authority && !sender.is_closed());
        if let Some((_, mut sender)) = reusable
            && sender.ready().await.is_ok()
        {
            return Ok(sender);
        }
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(|e| e.to_string())?;
        let name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
        let tls = TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(sender)
    }

    /// One request and the whole response, whatever its status.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Bytes), HttpsError> {
        let fail = |reason: String| HttpsError {
            method: method.clone(),
            url: url.to_owned(),
            reason,
        };
        let uri: Uri = url.parse().map_err(|e| fail(format!("bad URL: {e}")))?;
        if uri.scheme_str() != Some("https") {
            return Err(fail("only https:// is accepted".into()));
        }
        let host = uri.host().ok_or_else(|| fail("no host".into()))?.to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let token = match &self.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| fail(format!("reading {}: {e}", path.display())))?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        let authority = format!("{host}:{port}");
        let exchange = async {
            let mut sender = self
                .connection(&authority, host.trim_matches(['[', ']']), port)
                .await
                .map_err(fail)?;
            let mut req = Request::builder()
                .method(method.clone())
                .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
                .header(header::HOST, uri.authority().map_or("", |a| a.as_str()))
                .header(header::ACCEPT, "application/json");
            if let Some(token) = &token {
                req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
            }
            let payload = match body {
                Some(v) => {
                    req = req.header(header::CONTENT_TYPE, "application/json");
                    Bytes::from(serde_json::to_vec(v).map_err(|e| fail(e.to_string()))?)
                }
                None => Bytes::new(),
            };
            let response = sender
                .send_request(
                    req.body(Full::new(payload))
                        .map_err(|e| fail(e.to_string()))?,
                )
                .await
                .map_err(|e| fail(e.to_string()))?;
            let status = response.status();
            let bytes = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| fail(e.to_string()))?
                .to_bytes();
            // Read to the end: the connection can carry the next call.
            if !sender.is_closed() {
                *self.idle.lock().expect("not poisoned") = Some((authority.clone(), sender));
            }
            Ok((status, bytes))
        };
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| fail(format!("timed out after {TIMEOUT:?}")))?
    }

    /// GET a JSON document that must be there (2xx).
    pub async fn get_json(&self, url: &str) -> Result<Bytes, HttpsError> {
        let (status, body) = self.request(Method::GET, url, None).await?;
        if !status.is_success() {
            return Err(HttpsError {
                method: Method::GET,
                url: url.to_owned(),
                reason: status_reason(status, &body),
            });
        }
        Ok(body)
    }
}

/// An unexpected status, with the API server's own explanation (a `Status` object's
/// message) when it sent one.
fn status_reason(status: StatusCode, body: &[u8]) -> String {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(|m| format!(": {m}")))
        .unwrap_or_default();
    format!("HTTP {status}{message}")
}

/// What a write to the API came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    Done,
    /// 409: someone else wrote first (a replica); read again and redo on the next pass.
    Conflict,
}

/// The Kubernetes API server at `server` (e.g. `https://kubernetes.default.svc`).
#[derive(Debug, Clone)]
pub struct KubeApi {
    server: String,
    http: HttpsClient,
}

impl KubeApi {
    pub fn new(server: &str, http: HttpsClient) -> Self {
        Self {
            server: server.trim_end_matches('/').to_owned(),
            http,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server)
    }

    fn error(&self, method: Method, path: &str, reason: String) -> HttpsError {
        HttpsError {
            method,
            url: self.url(path),
            reason,
        }
    }

    /// The object at `path`, or `None` when there is none (404).
    async fn get(&self, path: &str) -> Result<Option<Value>, HttpsError> {
        let (status, body) = self
            .http
            .request(Method::GET, &self.url(path), None)
            .await?;
        match status {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| self.error(Method::GET, path, format!("not JSON: {e}"))),
            _ => Err(self.error(Method::GET, path, status_reason(status, &body))),
        }
    }

    /// The items of a list (`path` a collection, with its query).
    async fn list(&self, path: &str) -> Result<Vec<Value>, HttpsError> {
        match self.get(path).await? {
            Some(Value::Object(mut list)) => match list.remove("items") {
                Some(Value::Array(items)) => Ok(items),
                Some(Value::Null) | None => Ok(Vec::new()),
                Some(_) => Err(self.error(Method::GET, path, "items is not a list".into())),
            },
            Some(_) => Err(self.error(Method::GET, path, "not a list".into())),
            None => Err(self.error(Method::GET, path, "HTTP 404: no such list".into())),
        }
    }

    async fn write(
        &self,
        method: Method,
        path: &str,
        object: &Value,
    ) -> Result<Written, HttpsError> {
        let (status, body) = self
            .http
            .request(method.clone(), &self.url(path), Some(object))
            .await?;
        match status {
            StatusCode::CONFLICT => Ok(Written::Conflict),
            s if s.is_success() => Ok(Written::Done),
            _ => Err(self.error(method, path, status_reason(status, &body))),
        }
    }

    /// POST to the collection `path`.
    async fn create(&self, path: &str, object: &Value) -> Result<Written, HttpsError> {
        self.write(Method::POST, path, object).await
    }

    /// PUT at `path`: `object` carries the `resourceVersion` it was read at, so a change
    /// made since is never overwritten unseen (409 instead).
    async fn replace(&self, path: &str, object: &Value) -> Result<Written, HttpsError> {
        self.write(Method::PUT, path, object).await
    }
}

/// Reads the CA from the Secret `name` in `namespace`, creating it with a new root first if
/// there is none, and writes its files (0600 for the key) under `data_dir/k8s-ca` for the
/// CA to load as a plugged-in one. Two replicas starting together both try to create it;
/// the API server lets one win (409 for the other, which then reads the winner's).
/// How the keys a new CA Secret holds are kept (as `--ca-key-source` and
/// `--token-key-source` say).
#[derive(Debug, Clone, Copy)]
pub struct SecretKeys<'a> {
    pub ca: &'a crate::keys::KeyStorage,
    pub token: &'a crate::keys::KeyStorage,
}

pub async fn ca_secret(
    api: &KubeApi,
    namespace: &str,
    name: &str,
    trust_domain: &TrustDomain,
    data_dir: &Path,
    keys: SecretKeys<'_>,
) -> anyhow::Result<PluggedInCa> {
    use anyhow::Context;
    let path = format!("/api/v1/namespaces/{namespace}/secrets/{name}");
    let secret = match api.get(&path).await? {
        Some(secret) => secret,
        None => {
            // Kept in the Secret as they are kept on disk: with envelope sources, the
            // Secret holds only envelopes, and its copies open only with the KEK; with
            // pkcs11, only references to keys in the token.
            let (cert, key) = crate::ca::new_root_stored(trust_domain, keys.ca)?;
            let (_, token_key) = keys.token.generate(crate::tokens::TOKEN_KEY_PURPOSE)?;
            let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
            let secret = json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "labels": { MANAGED_BY.0: MANAGED_BY.1 },
                },
                "type": "Opaque",
                "data": {
                    "ca-cert.pem": b64(&cert),
                    "ca-key.pem": b64(&key),
                    TOKEN_KEY: b64(&token_key),
                },
            });
            match api
                .create(&format!("/api/v1/namespaces/{namespace}/secrets"), &secret)
                .await?
            {
                Written::Done => {
                    tracing::info!(secret = %name, %namespace, "created a new root CA in the Secret");
                    secret
                }
                Written::Conflict => api
                    .get(&path)
                    .await?
                    .context("the CA Secret was created by another replica but cannot be read")?,
            }
        }
    };
    let dir = data_dir.join("k8s-ca");
    ensure_private_dir(&dir)?;
    let field = |key: &str| -> anyhow::Result<Option<Vec<u8>>> {
        match secret["data"].get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => {
                let text = v
                    .as_str()
                    .with_context(|| format!("Secret {namespace}/{name}: {key} is not a string"))?;
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map(Some)
                    .with_context(|| format!("Secret {namespace}/{name}: {key} is not base64"))
            }
        }
    };
    // Each key present is written to its file (0600 for keys) and its path returned.
    let put = |key: &str, file: PathBuf, private: bool| -> anyhow::Result<Option<PathBuf>> {
        let Some(bytes) = field(key)? else {
            return Ok(None);
        };
        write_file(&file, &bytes, private)?;
        Ok(Some(file))
    };
    let missing = |key: &str| format!("Secret {namespace}/{name} has no {key}");
    let cert = put("ca-cert.pem", dir.join("ca-cert.pem"), false)?
        .with_context(|| missing("ca-cert.pem"))?;
    let key =
        put("ca-key.pem", dir.join("ca-key.pem"), true)?.with_context(|| missing("ca-key.pem"))?;
    let roots = put("roots.pem", dir.join("roots.pem"), false)?;
    let chain = put("chain.pem", dir.join("chain.pem"), false)?;
    if put(TOKEN_KEY, data_dir.join(TOKEN_KEY_FILE), true)?.is_none() {
        tracing::warn!(secret = %name, %namespace,
            "the CA Secret has no {TOKEN_KEY}: each replica signs admin and join tokens with \
             a key of its own, so a token works only at the replica that made it");
    }
    Ok(PluggedInCa {
        // A self-made root signs for itself; an operator's intermediate comes with roots.
        roots: roots.unwrap_or_else(|| cert.clone()),
        chain,
        cert,
        key,
    })
}

/// Counters for the reconciliation, on the control plane's registry.
#[derive(Clone, Debug)]
pub struct SyncMetrics {
    /// Passes, by result (`ok`, `error`).
    pub passes: IntCounterVec,
    /// Objects written, by kind (`configmap`, `webhook`).
    pub writes: IntCounterVec,
    /// Namespaces whose trust-bundle ConfigMap is current after the last pass.
    pub namespaces: IntGauge,
}

impl SyncMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let passes = IntCounterVec::new(
            Opts::new(
                "palisade_k8s_sync_passes_total",
                "Reconciliations of the objects the control plane publishes in Kubernetes, by result.",
            ),
            &["result"],
        )?;
        let writes = IntCounterVec::new(
            Opts::new(
                "palisade_k8s_sync_writes_total",
                "Objects created or corrected in Kubernetes, by kind.",
            ),
            &["kind"],
        )?;
        let namespaces = IntGauge::new(
            "palisade_k8s_trust_bundle_namespaces",
            "Namespaces holding the current trust-bundle ConfigMap after the last pass.",
        )?;
        registry.register(Box::new(passes.clone()))?;
        registry.register(Box::new(writes.clone()))?;
        registry.register(Box::new(namespaces.clone()))?;
        Ok(Self {
            passes,
            writes,
            namespaces,
        })
    }
}

/// Keeps the trust-bundle ConfigMaps and the webhook's caBundle as the CA says.
#[derive(Debug, Clone)]
pub struct Publisher {
    pub api: KubeApi,
    pub ca: Arc<CertificateAuthority>,
    /// The ConfigMap's name in every namespace.
    pub config_map: String,
    /// The MutatingWebhookConfiguration to keep the caBundle of.
    pub webhook_config: Option<String>,
    pub metrics: SyncMetrics,
}

impl Publisher {
    /// One reconciliation pass. A namespace that cannot be written (an admission policy of
    /// its own refusing the ConfigMap, say) is skipped and reported, so it neither starves
    /// the namespaces after it nor the webhook's caBundle; the pass then fails with the
    /// first such error, and the next pass tries again.
    pub async fn sync(&self) -> Result<(), HttpsError> {
        let bundle = self.ca.bundle_pem();
        let namespaces = self.api.list("/api/v1/namespaces").await?;
        let mut current = 0;
        let mut first_error = None;
        for ns in &namespaces {
            let Some(namespace) = ns["metadata"]["name"].as_str() else {
                continue;
            };
            // Objects cannot be created in a namespace being deleted.
            if ns["status"]["phase"].as_str() == Some("Terminating") {
                continue;
            }
            match self.publish_bundle(namespace, &bundle).await {
                Ok(true) => current += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(%namespace, error = %e, "publishing the trust bundle failed");
                    first_error.get_or_insert(e);
                }
            }
        }
        self.metrics.namespaces.set(current);
        if let Some(name) = &self.webhook_config
            && let Err(e) = self.sync_webhook(name, &bundle).await
        {
            first_error.get_or_insert(e);
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Makes `namespace`'s ConfigMap hold `bundle`; true when it does afterwards (false: a
    /// replica's write won the race, this pass leaves it to the next).
    async fn publish_bundle(&self, namespace: &str, bundle: &str) -> Result<bool, HttpsError> {
        // One GET per namespace rather than one list of every ConfigMap in the cluster:
        // listing would need read access to all ConfigMaps, while a GET can be granted for
        // this one name only (see k8s/control-plane/rbac.yaml).
        let path = format!(
            "/api/v1/namespaces/{namespace}/configmaps/{}",
            self.config_map
        );
        let written = match self.api.get(&path).await? {
            Some(cm) if cm["data"][TRUST_BUNDLE_KEY].as_str() == Some(bundle) => return Ok(true),
            Some(mut cm) => {
                cm["data"] = json!({ TRUST_BUNDLE_KEY: bundle });
                self.api.replace(&path, &cm).await?
            }
            None => {
                self.api
                    .create(
                        &format!("/api/v1/namespaces/{namespace}/configmaps"),
                        &json!({
                            "apiVersion": "v1",
                            "kind": "ConfigMap",
                            "metadata": {
                                "name": self.config_map,
                                "namespace": namespace,
                                "labels": { MANAGED_BY.0: MANAGED_BY.1 },
                            },
                            "data": { TRUST_BUNDLE_KEY: bundle },
                        }),
                    )
                    .await?
            }
        };
        if written == Written::Done {
            self.metrics.writes.with_label_values(&["configmap"]).inc();
            tracing::info!(%namespace, config_map = %self.config_map, "published the trust bundle");
        }
        Ok(written == Written::Done)
    }

    async fn sync_webhook(&self, name: &str, bundle: &str) -> Result<(), HttpsError> {
        let path =
            format!("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}");
        let Some(mut config) = self.api.get(&path).await? else {
            tracing::warn!(webhook_config = %name,
                "the MutatingWebhookConfiguration does not exist; no caBundle to keep");
            return Ok(());
        };
        let want = base64::engine::general_purpose::STANDARD.encode(bundle);
        let mut changed = false;
        if let Some(hooks) = config["webhooks"].as_array_mut() {
            for hook in hooks {
                if hook["clientConfig"]["caBundle"].as_str() != Some(want.as_str()) {
                    hook["clientConfig"]["caBundle"] = Value::String(want.clone());
                    changed = true;
                }
            }
        }
        if changed && self.api.replace(&path, &config).await? == Written::Done {
            self.metrics.writes.with_label_values(&["webhook"]).inc();
            tracing::info!(webhook_config = %name, "set the webhook's caBundle to the trust bundle");
        }
        Ok(())
    }

    /// Passes every `interval` and when the signing root changes, until `stop`.
    pub async fn run(self, interval: Duration, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut signer = self.ca.watch_signer();
        loop {
            match self.sync().await {
                Ok(()) => self.metrics.passes.with_label_values(&["ok"]).inc(),
                Err(e) => {
                    self.metrics.passes.with_label_values(&["error"]).inc();
                    tracing::warn!(error = %e, "publishing to Kubernetes failed; retrying next pass");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                _ = signer.changed() => {}
                () = &mut stop => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unexpected_statuses_carry_the_api_servers_message_when_there_is_one() {
        assert_eq!(
            status_reason(
                StatusCode::FORBIDDEN,
                br#"{"kind":"Status","message":"configmaps is forbidden"}"#
            ),
            "HTTP 403 Forbidden: configmaps is forbidden"
        );
        assert_eq!(
            status_reason(StatusCode::BAD_GATEWAY, b"<html>proxy error</html>"),
            "HTTP 502 Bad Gateway"
        );
    }
}
