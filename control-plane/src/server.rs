//! Assembling the control plane: load the CA and keys, open the store, bind the listeners,
//! then run the components, each a named task given the one stop signal: the mesh
//! configuration follower ([`MeshConfig::follow`]), the sidecar, admin, webhook and metrics
//! listeners, the Kubernetes key refresh ([`Discovery::keep_fresh`]) and trust-bundle
//! publisher, and the renewal of the control plane's own certificate ([`OwnIdentity`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use palisade_contract::process::Tasks;
use palisade_contract::tls::{ClientAuth, server_config};
use prometheus::Registry;
use tokio::net::TcpListener;

use crate::admin::{self, AdminState};
use crate::admin_tokens::{AdminToken, AdminTokenError, AdminTokenIssuer};
use crate::admin_trail::TrailSigner;
use crate::bootstrap::{BootstrapVerifier, KubernetesVerifier};
use crate::ca::{CertificateAuthority, write_file};
use crate::collector::broker::BrokerSource;
use crate::collector::{Collector, CollectorMetrics};
use crate::config::Config;
use crate::issuance::IdentityService;
use crate::join_tokens::{JoinToken, JoinTokenError, JoinTokenIssuer};
use crate::k8s_discovery::Discovery;
use crate::mesh_config::{MeshConfig, validate};
use crate::metrics::{CaMetrics, WebhookMetrics};
use crate::own_decisions::OwnDecisions;
use crate::own_identity::OwnIdentity;
use crate::retention::Retention;
use crate::store::Store;
use crate::tokens::TokenKey;
use crate::webhook;
use crate::{serving, sidecar_api};

/// Where the initial admin token is written, in the data dir.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// A started control plane. Dropping it does not stop it; call [`Self::shutdown`].
#[derive(Debug)]
pub struct RunningControlPlane {
    pub sidecar_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// The admission webhook's address, when --webhook-listen is set.
    pub webhook_addr: Option<SocketAddr>,
    pub admin_token_path: PathBuf,
    pub ca: Arc<CertificateAuthority>,
    join_tokens: JoinTokenIssuer,
    admin_tokens: AdminTokenIssuer,
    tasks: Tasks,
}

impl RunningControlPlane {
    /// Stops accepting, drains in-flight requests, and waits for every task.
    pub async fn shutdown(self) {
        self.tasks.shutdown().await;
    }

    /// Creates a join token without going through the admin API (for embedders such as the
    /// local demo and tests); recorded as created by `embedder`.
    pub async fn create_join_token(
        &self,
        namespace: &str,
        service_account: &str,
        ttl: Duration,
    ) -> Result<JoinToken, JoinTokenError> {
        self.join_tokens
            .create(namespace, service_account, ttl, "embedder")
            .await
    }

    /// Creates a recorded admin token without going through the admin API (for embedders
    /// such as tests); recorded as created by `embedder`.
    pub async fn create_admin_token(
        &self,
        name: &str,
        role: &str,
        ttl: Duration,
    ) -> Result<AdminToken, AdminTokenError> {
        self.admin_tokens.create(name, role, ttl, "embedder").await
    }

    /// The initial admin token (read from the data dir).
    pub fn admin_token(&self) -> std::io::Result<String> {
        Ok(std::fs::read_to_string(&self.admin_token_path)?
            .trim()
            .to_owned())
    }
}

/// Writes the offline key changes (`palisade-control-plane keys migrate|rewrap`) into the
/// admin audit trail, then forgets them.
async fn record_key_changes(store: &Store, data_dir: &std::path::Path) -> anyhow::Result<()> {
    let (path, changes) = crate::keys::pending_changes(data_dir);
    for change in &changes {
        let actor = crate::store::Actor {
            principal: "palisade-control-plane keys",
            request_id: "offline",
            now: crate::ca::unix_now(),
        };
        let name = change
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let detail = serde_json::to_value(change).unwrap_or_default();
        store
            .record_admin_event(
                &actor,
                "key-migrate",
                "PrivateKey",
                palisade_contract::identity_api::CONTROL_PLANE_NAMESPACE,
                &name,
                &detail,
            )
            .await
            .context("recording the offline key changes in the audit trail")?;
    }
    if !changes.is_empty() {
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

/// Loads state and starts serving on the configured addresses.
pub async fn start(config: &Config) -> anyhow::Result<RunningControlPlane> {
    let td = config.trust_domain.clone();
    let kube = kube_api(config)?;
    let mut ca_config = config.ca_config()?;
    let token_storage = config.key_storage(config.token_key_source)?;
    if let (Some(api), Some(secret)) = (&kube, &config.k8s_ca_secret) {
        let keys = crate::kubernetes::SecretKeys {
            ca: &ca_config.key_storage,
            token: &token_storage,
        };
        ca_config.plugged_in = Some(
            crate::kubernetes::ca_secret(
                api,
                &config.k8s_namespace,
                secret,
                &td,
                &config.data_dir,
                keys,
            )
            .await
            .with_context(|| format!("the CA Secret {}/{secret}", config.k8s_namespace))?,
        );
    }
    let ca = Arc::new(CertificateAuthority::load_or_create(&ca_config)?);
    let token_key = Arc::new(TokenKey::load_or_create(
        &config.data_dir,
        &td,
        &token_storage,
    )?);
    let store = match &config.database_url {
        Some(url) => Store::open_url(url).await,
        None => Store::sqlite(&config.data_dir.join("palisade.db")).await,
    }
    .context("opening the database")?;
    record_key_changes(&store, &config.data_dir).await?;
    let (kubernetes, discovery) = kubernetes_verifier(config).await?;
    let kubernetes = kubernetes.map(|k| Arc::new(ArcSwap::from_pointee(k)));

    let registry = Registry::new();
    registry
        .register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .context("registering process metrics")?;
    let metrics = CaMetrics::register(&registry).context("registering metrics")?;
    for (key, source) in [
        ("ca", config.ca_key_source),
        ("token", config.token_key_source),
    ] {
        let protected = source.is_protected();
        metrics
            .key_protected
            .with_label_values(&[key])
            .set(i64::from(protected));
    }
    let publisher = match kube {
        Some(api) => Some(crate::kubernetes::Publisher {
            api,
            ca: ca.clone(),
            config_map: config.k8s_trust_bundle_config_map.clone(),
            webhook_config: config.k8s_webhook_config.clone(),
            metrics: crate::kubernetes::SyncMetrics::register(&registry)
                .context("registering metrics")?,
        }),
        None => None,
    };
    // The control plane's own identity, renewed by its own task below.
    let own_identity = OwnIdentity::issue(ca.clone(), config.webhook_dns_name.clone())?;
    // Its own decisions (issuance, renewal, refusal) go into the decision log, in a chain
    // signed with that identity.
    let own_decisions = OwnDecisions::new(
        store.clone(),
        own_identity.slot(),
        palisade_contract::identity_api::control_plane_id(&td),
    );
    let service = Arc::new(
        IdentityService::new(
            ca.clone(),
            BootstrapVerifier::new(td.clone(), token_key.clone(), kubernetes.clone()),
            store.clone(),
            metrics.clone(),
            &td,
        )
        .with_reattest_grace(config.reattest_grace)
        .with_decisions(own_decisions.clone()),
    );
    let tls = Arc::new(server_config(
        own_identity.slot(),
        ca.bundle(),
        ClientAuth::Optional,
        &[b"h2", b"http/1.1"],
    ));

    let admin_tokens = AdminTokenIssuer {
        key: token_key.clone(),
        store: store.clone(),
    };
    let admin_token_path = config.data_dir.join(ADMIN_TOKEN_FILE);
    if admin_token_path.exists() {
        // A data dir from before tokens were recorded: its initial token is recorded now.
        let token = std::fs::read_to_string(&admin_token_path)
            .with_context(|| format!("reading {}", admin_token_path.display()))?;
        admin_tokens.adopt(token.trim()).await?;
    } else {
        let initial = admin_tokens.create_initial().await?;
        write_file(
            &admin_token_path,
            format!("{}\n", initial.token).as_bytes(),
            true,
        )?;
        tracing::info!(path = %admin_token_path.display(), expires_at = initial.expires_at,
            "wrote the initial admin token (role admin, name initial-admin); create named \
             tokens with `palisade admin-token create`, then retire it with \
             `palisade admin-token revoke initial-admin`");
    }

    let sidecar_listener = bind(config.sidecar_listen, "sidecar").await?;
    let admin_listener = bind(config.admin_listen, "admin").await?;
    let metrics_listener = bind(config.metrics_listen, "metrics").await?;
    // The certificate is read before anything starts, so a bad one stops the start.
    let webhook = match (
        &config.webhook_listen,
        &config.webhook_cert,
        &config.webhook_key,
    ) {
        (Some(addr), Some(cert), Some(key)) => Some((
            bind(*addr, "webhook").await?,
            Arc::new(webhook::tls_config(cert, key)?),
        )),
        // The control plane's own certificate, which carries --webhook-dns-name.
        (Some(addr), _, _) => Some((
            bind(*addr, "webhook").await?,
            Arc::new(webhook::own_tls_config(own_identity.slot())),
        )),
        _ => None,
    };
    let sidecar_addr = sidecar_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    let metrics_addr = metrics_listener.local_addr()?;

    let mut tasks = Tasks::new();

    let mesh = Arc::new(
        MeshConfig::new(store.clone(), ca.clone())
            .await
            .context("reading the mesh version")?,
    );
    for path in &config.config_file {
        load_config_file(&mesh, path).await?;
    }
    let follower = mesh.clone();
    tasks.spawn(|stop| follower.follow(stop));

    let collector = Arc::new(Collector::new(
        store.clone(),
        ca.bundle(),
        CollectorMetrics::register(&registry).context("registering metrics")?,
    ));
    if let Some(url) = &config.decision_broker {
        let source = BrokerSource {
            url: url.clone(),
            queue: config.decision_queue.clone(),
        };
        let reader = collector.clone();
        tasks.spawn(|stop| reader.consume(source, stop));
    }
    let trail_signer = TrailSigner::new(store.clone(), own_identity.slot());
    tasks.spawn(|stop| trail_signer.run(stop));
    if !config.decision_retention.is_zero() {
        let retention = Retention::new(
            store.clone(),
            own_identity.slot(),
            config.decision_retention,
            &registry,
        )
        .context("registering metrics")?;
        tasks.spawn(|stop| retention.run(stop));
    }
    let sidecar_router = sidecar_api::router(service.clone(), mesh.clone(), collector);
    let (sidecar_tls, handshake_timeout) = (tls.clone(), config.handshake_timeout);
    tasks.spawn(|stop| {
        serving::serve_tls(
            sidecar_listener,
            sidecar_tls,
            sidecar_router,
            handshake_timeout,
            stop,
        )
    });

    let join_tokens = JoinTokenIssuer {
        trust_domain: td.clone(),
        key: token_key.clone(),
        store: store.clone(),
    };
    let admin = admin::router(Arc::new(AdminState {
        ca: ca.clone(),
        token_key: token_key.clone(),
        admin_tokens: admin_tokens.clone(),
        join_tokens: join_tokens.clone(),
        mesh: mesh.clone(),
        oidc: oidc_admins(config)?,
        spiffe_admins: config
            .admin_spiffe_id
            .iter()
            .map(|a| (a.id.clone(), a.role))
            .collect(),
        k8s_admins: match (&kubernetes, config.admin_k8s_service_account.is_empty()) {
            (Some(verifier), false) => Some(admin::K8sAdmins {
                verifier: verifier.clone(),
                audience: config.admin_k8s_audience.clone(),
                accounts: config.admin_k8s_service_account.clone(),
            }),
            _ => None,
        },
    }));
    if config.admin_tls {
        // The same TLS as the sidecar port: the control plane's own certificate, client
        // certificates optional (a bearer token still works), peers' SPIFFE IDs passed on.
        let admin_tls = tls.clone();
        tasks.spawn(|stop| {
            serving::serve_tls(admin_listener, admin_tls, admin, handshake_timeout, stop)
        });
    } else {
        tasks.spawn(|stop| serving::serve_plain(admin_listener, admin, "admin", stop));
    }

    let webhook_addr = match webhook {
        Some((listener, webhook_tls)) => {
            let addr = listener.local_addr()?;
            let router = webhook::router(
                config.inject_settings(),
                WebhookMetrics::register(&registry).context("registering metrics")?,
            );
            tasks.spawn(|stop| {
                serving::serve_tls(listener, webhook_tls, router, handshake_timeout, stop)
            });
            Some(addr)
        }
        None => None,
    };

    let metrics_router = crate::metrics::router(registry, ca.clone(), metrics.bundle_roots);
    tasks.spawn(|stop| serving::serve_plain(metrics_listener, metrics_router, "metrics", stop));

    if let (Some(current), Some(discovery)) = (kubernetes.clone(), discovery) {
        tasks.spawn(|stop| discovery.keep_fresh(current, stop));
    }
    if let Some(publisher) = publisher {
        let interval = config.k8s_sync_interval;
        tasks.spawn(|stop| publisher.run(interval, stop));
    }
    tasks.spawn(|stop| own_identity.run(stop));
    tasks.spawn(|stop| own_decisions.run(stop));

    tracing::info!(%sidecar_addr, %admin_addr, %metrics_addr, trust_domain = %td,
        database = store.backend_name(), "control plane ready");
    Ok(RunningControlPlane {
        sidecar_addr,
        admin_addr,
        metrics_addr,
        webhook_addr,
        admin_token_path,
        admin_tokens,
        ca,
        join_tokens,
        tasks,
    })
}

/// The Kubernetes token verifier, from a JWKS file or by OIDC discovery (then also the
/// discovery client, to refresh the keys).
async fn kubernetes_verifier(
    config: &Config,
) -> anyhow::Result<(Option<KubernetesVerifier>, Option<Discovery>)> {
    let Some(issuer) = &config.k8s_issuer else {
        return Ok((None, None));
    };
    if let Some(jwks) = &config.k8s_jwks {
        let bytes = std::fs::read(jwks).with_context(|| format!("reading {}", jwks.display()))?;
        let verifier = KubernetesVerifier::from_jwks_json(issuer, &config.k8s_audience, &bytes)
            .with_context(|| format!("loading {}", jwks.display()))?;
        return Ok((Some(verifier), None));
    }
    let ca = std::fs::read(&config.k8s_ca_file)
        .with_context(|| format!("reading {}", config.k8s_ca_file.display()))?;
    let discovery = Discovery::new(
        issuer,
        &config.k8s_audience,
        &ca,
        config.k8s_token_file.clone(),
    )?;
    let verifier = discovery
        .fetch()
        .await
        .context("fetching the Kubernetes token keys by OIDC discovery")?;
    Ok((Some(verifier), Some(discovery)))
}

/// The OIDC issuer whose tokens the admin API accepts, if configured.
fn oidc_admins(config: &Config) -> anyhow::Result<Option<admin::OidcAdmins>> {
    let (Some(issuer), Some(jwks)) = (&config.admin_oidc_issuer, &config.admin_oidc_jwks) else {
        return Ok(None);
    };
    let bytes = std::fs::read(jwks).with_context(|| format!("reading {}", jwks.display()))?;
    let keys = palisade_contract::jwt::Jwks::from_json(&bytes)
        .with_context(|| format!("loading --admin-oidc-jwks {}", jwks.display()))?;
    Ok(Some(admin::OidcAdmins {
        issuer: issuer.clone(),
        audience: config.admin_oidc_audience.clone(),
        role_claim: config.admin_oidc_role_claim.clone(),
        keys,
    }))
}

/// Applies the documents of `--config-file` at start-up (local mode), as the principal
/// `config-file`; documents already stored unchanged leave the mesh version alone.
async fn load_config_file(mesh: &MeshConfig, path: &std::path::Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading --config-file {}", path.display()))?;
    let docs = validate(&text)
        .map_err(|problems| anyhow::anyhow!("--config-file {}: {problems}", path.display()))?;
    let (version, outcomes) = mesh
        .apply_documents(
            &docs,
            &crate::store::Actor {
                principal: "config-file",
                request_id: "start-up",
                now: crate::ca::unix_now(),
            },
        )
        .await
        .with_context(|| format!("storing --config-file {}", path.display()))?;
    tracing::info!(path = %path.display(), version, documents = outcomes.len(),
        "applied the configuration file");
    Ok(())
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} listener on {addr}"))
}

/// The Kubernetes API client, when --k8s-api-server is set.
fn kube_api(config: &Config) -> anyhow::Result<Option<crate::kubernetes::KubeApi>> {
    let Some(server) = &config.k8s_api_server else {
        return Ok(None);
    };
    let ca = std::fs::read(&config.k8s_ca_file)
        .with_context(|| format!("reading {}", config.k8s_ca_file.display()))?;
    let http = crate::kubernetes::HttpsClient::new(&ca, config.k8s_token_file.clone())
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("--k8s-ca-file {}", config.k8s_ca_file.display()))?;
    Ok(Some(crate::kubernetes::KubeApi::new(server, http)))
}
