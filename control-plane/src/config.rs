//! Command-line flags, each with a `PALISADE_*` environment twin. Everything is validated
//! before anything starts, and every bad setting is reported at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use palisade_contract::TrustDomain;
use palisade_contract::telemetry::LogFormat;

use crate::ca::{CaConfig, PluggedInCa};
use crate::keys::{Kek, KeyError, KeySource, KeyStorage, KeyWrap, Token, TokenSettings};

/// What a key or a KEK in a PKCS#11 token needs.
const TOKEN_SETTINGS_NEEDED: &str = "a pkcs11 key source needs --pkcs11-module, --pkcs11-token and --pkcs11-pin-file (so does a KEK in the token)";

/// Palisade control plane: the mesh's certificate authority and administration API.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "palisade-control-plane",
    version,
    about,
    long_about = None,
    after_help = "Offline changes to how the CA and token keys are kept (file, envelope): palisade-control-plane keys --help"
)]
pub struct Config {
    /// Directory for the CA, token key, database and initial admin token (created 0700).
    #[arg(long, env = "PALISADE_DATA_DIR", default_value = "palisade-data")]
    pub data_dir: PathBuf,

    /// Trust domain of every SPIFFE ID this control plane issues.
    #[arg(long, env = "PALISADE_TRUST_DOMAIN", default_value = "palisade.local")]
    pub trust_domain: TrustDomain,

    /// Sidecar-facing TLS listener: certificate issuance, renewal and the trust bundle.
    #[arg(long, env = "PALISADE_SIDECAR_LISTEN", default_value = "0.0.0.0:15012")]
    pub sidecar_listen: SocketAddr,

    /// Administration API listener (bearer-token authenticated, even on loopback).
    #[arg(long, env = "PALISADE_ADMIN_LISTEN", default_value = "127.0.0.1:15080")]
    pub admin_listen: SocketAddr,

    /// Prometheus metrics listener, serving /metrics.
    #[arg(long, env = "PALISADE_METRICS_LISTEN", default_value = "0.0.0.0:15014")]
    pub metrics_listen: SocketAddr,

    /// Lifetime of workload certificates (e.g. 1h, 30m, 90s); between 1s and 24h.
    #[arg(long, env = "PALISADE_WORKLOAD_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub workload_ttl: Duration,

    /// How long after its certificate expired a sidecar may still get a new one by proving
    /// it holds that certificate's key (`POST /v1/identity/reattest`: once per certificate,
    /// while its root is in the bundle), so a fleet recovers by itself after a control-plane
    /// outage longer than its certificates. 0s turns it off: an expired sidecar then needs a
    /// new bootstrap token. At most 7d.
    #[arg(long, env = "PALISADE_REATTEST_GRACE", default_value = "1h", value_parser = humantime::parse_duration)]
    pub reattest_grace: Duration,

    /// Time a client of the sidecar listener has to finish the TLS handshake, and then to send
    /// each request's headers; slower clients are disconnected.
    #[arg(long, env = "PALISADE_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,

    /// Database: postgres://... for several replicas; default sqlite in the data dir.
    #[arg(long, env = "PALISADE_DATABASE_URL")]
    pub database_url: Option<String>,

    /// Also read the sidecars' decision batches from this RabbitMQ (amqp://user:pass@host:port/vhost
    /// or amqps://…), for sidecars started with --decision-ship amqp://…: each batch's
    /// signature is checked, stored, and only then acknowledged. Replicas may all set it;
    /// one reads at a time (the queue's single active consumer), the others stand by.
    #[arg(long, env = "PALISADE_DECISION_BROKER")]
    pub decision_broker: Option<String>,

    /// How long stored decisions are kept: older ones are pruned from the start of each
    /// writer's chain, each pruning recorded and signed with the control plane's key so
    /// `palisade audit verify` tells pruned from missing. 0s keeps everything.
    #[arg(long, env = "PALISADE_DECISION_RETENTION", default_value = "90d", value_parser = humantime::parse_duration)]
    pub decision_retention: Duration,

    /// The decision queue on --decision-broker (a quorum queue, declared if missing).
    #[arg(long, env = "PALISADE_DECISION_QUEUE", default_value = palisade_contract::decisions::broker::DEFAULT_QUEUE)]
    pub decision_queue: String,

    /// Mesh documents (AuthorizationPolicy, RequestAuthentication, Service; YAML or JSON)
    /// applied at start-up, as `palisade apply -f` would: local mode without the CLI.
    /// Several files: repeat the flag or separate with commas.
    #[arg(long, env = "PALISADE_CONFIG_FILE", value_delimiter = ',')]
    pub config_file: Vec<PathBuf>,

    /// Plugged-in CA: the signing certificate (PEM; a root or an intermediate).
    #[arg(long, env = "PALISADE_CA_CERT", requires_all = ["ca_key", "ca_roots"])]
    pub ca_cert: Option<PathBuf>,

    /// Plugged-in CA: the signing certificate's private key (PKCS#8 PEM, mode 0600).
    #[arg(long, env = "PALISADE_CA_KEY", requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,

    /// How the CA signing key is kept at rest: file (plain PKCS#8, readable by whoever
    /// reads the data directory), envelope (encrypted; needs the key-encryption key) or
    /// pkcs11 (generated in a PKCS#11 token, which signs; needs --pkcs11-*).
    #[arg(
        long,
        env = "PALISADE_CA_KEY_SOURCE",
        value_enum,
        default_value = "file"
    )]
    pub ca_key_source: KeySource,

    /// How the token-signing key (join and admin tokens) is kept at rest: file, envelope or
    /// pkcs11.
    #[arg(
        long,
        env = "PALISADE_TOKEN_KEY_SOURCE",
        value_enum,
        default_value = "file"
    )]
    pub token_key_source: KeySource,

    /// The key-encryption key for envelope key sources: a file (outside the data
    /// directory) holding 32 random bytes, base64-encoded (`head -c 32 /dev/urandom |
    /// base64`). Or give it in PALISADE_KEY_ENCRYPTION_KEY.
    #[arg(long, env = "PALISADE_KEY_ENCRYPTION_KEY_FILE")]
    pub key_encryption_key_file: Option<PathBuf>,

    /// The key-encryption key itself, base64 (prefer the file: an environment is easier to
    /// leak).
    #[arg(
        long = "key-encryption-key",
        env = "PALISADE_KEY_ENCRYPTION_KEY",
        hide_env_values = true,
        hide = true
    )]
    pub key_encryption_key: Option<String>,

    /// The key-encryption key for envelope key sources as an AES-256 key in the PKCS#11
    /// token (--pkcs11-*): its label. The token wraps and unwraps the data keys, and the KEK
    /// never leaves it. Make one with `palisade-control-plane keys new-kek --in-token LABEL`.
    #[arg(long, env = "PALISADE_KEY_ENCRYPTION_KEY_PKCS11")]
    pub key_encryption_key_pkcs11: Option<String>,

    /// The PKCS#11 library of the HSM for pkcs11 key sources (SoftHSM2:
    /// /usr/lib/softhsm/libsofthsm2.so).
    #[arg(long, env = "PALISADE_PKCS11_MODULE")]
    pub pkcs11_module: Option<PathBuf>,

    /// The label of the PKCS#11 token that holds the keys.
    #[arg(long, env = "PALISADE_PKCS11_TOKEN")]
    pub pkcs11_token: Option<String>,

    /// A file holding the token's user PIN (outside the data directory, mode 0600).
    #[arg(long, env = "PALISADE_PKCS11_PIN_FILE")]
    pub pkcs11_pin_file: Option<PathBuf>,

    /// Plugged-in CA: the root certificate(s) sidecars trust (PEM; several during a rotation).
    #[arg(long, env = "PALISADE_CA_ROOTS", requires = "ca_cert")]
    pub ca_roots: Option<PathBuf>,

    /// Plugged-in CA: intermediates between the signing certificate and the root (PEM).
    #[arg(long, env = "PALISADE_CA_CHAIN", requires = "ca_cert")]
    pub ca_chain: Option<PathBuf>,

    /// Kubernetes bootstrap: the ServiceAccount token issuer (the cluster's
    /// --service-account-issuer). Needs --k8s-jwks or --k8s-oidc-discovery.
    #[arg(long, env = "PALISADE_K8S_ISSUER")]
    pub k8s_issuer: Option<String>,

    /// Kubernetes bootstrap: the issuer's JWKS as a file (e.g. saved from /openid/v1/jwks).
    #[arg(
        long,
        env = "PALISADE_K8S_JWKS",
        requires = "k8s_issuer",
        conflicts_with = "k8s_oidc_discovery"
    )]
    pub k8s_jwks: Option<PathBuf>,

    /// Kubernetes bootstrap: fetch the JWKS from <issuer>/.well-known/openid-configuration
    /// (HTTPS), at start and every 10 minutes.
    #[arg(long, env = "PALISADE_K8S_OIDC_DISCOVERY", requires = "k8s_issuer")]
    pub k8s_oidc_discovery: bool,

    /// Kubernetes bootstrap: CA bundle for the discovery HTTPS calls.
    #[arg(
        long,
        env = "PALISADE_K8S_CA_FILE",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    )]
    pub k8s_ca_file: PathBuf,

    /// Kubernetes bootstrap: bearer token for the discovery calls (e.g. the control plane's own
    /// ServiceAccount token); none when anonymous discovery is allowed.
    #[arg(long, env = "PALISADE_K8S_TOKEN_FILE")]
    pub k8s_token_file: Option<PathBuf>,

    /// Kubernetes bootstrap: the audience projected tokens must carry.
    #[arg(long, env = "PALISADE_K8S_AUDIENCE", default_value = "palisade")]
    pub k8s_audience: String,

    /// Admin API: also accept bearer JWTs from this OIDC issuer (operators' single sign-on).
    /// Needs --admin-oidc-jwks.
    #[arg(long, env = "PALISADE_ADMIN_OIDC_ISSUER")]
    pub admin_oidc_issuer: Option<String>,

    /// Admin API: the OIDC issuer's JWKS as a file.
    #[arg(long, env = "PALISADE_ADMIN_OIDC_JWKS", requires = "admin_oidc_issuer")]
    pub admin_oidc_jwks: Option<PathBuf>,

    /// Admin API: the audience OIDC tokens must carry.
    #[arg(long, env = "PALISADE_ADMIN_OIDC_AUDIENCE", default_value = "palisade")]
    pub admin_oidc_audience: String,

    /// Admin API: the OIDC token claim holding the caller's role (viewer, editor, admin,
    /// auditor).
    #[arg(
        long,
        env = "PALISADE_ADMIN_OIDC_ROLE_CLAIM",
        default_value = "palisade_role"
    )]
    pub admin_oidc_role_claim: String,

    /// Admin API: a Kubernetes ServiceAccount whose projected tokens (audience
    /// --admin-k8s-audience, from --k8s-issuer) act with a role, NAMESPACE/NAME=ROLE
    /// (repeatable or comma-separated), e.g. shop/mesh-config=editor.
    #[arg(
        long,
        env = "PALISADE_ADMIN_K8S_SERVICE_ACCOUNTS",
        value_delimiter = ',',
        requires = "k8s_issuer"
    )]
    pub admin_k8s_service_account: Vec<crate::admin::K8sAdmin>,

    /// Admin API: the audience ServiceAccount tokens must carry (not bootstrap's, so a
    /// workload's bootstrap token never works here).
    #[arg(
        long,
        env = "PALISADE_ADMIN_K8S_AUDIENCE",
        default_value = "palisade-admin"
    )]
    pub admin_k8s_audience: String,

    /// Serve the admin API over TLS (the control plane's own certificate, as on the sidecar
    /// port), so operators may authenticate with a client certificate (--admin-spiffe-id).
    #[arg(long, env = "PALISADE_ADMIN_TLS")]
    pub admin_tls: bool,

    /// With --admin-tls: a SPIFFE ID whose client certificate acts with a role,
    /// ID=ROLE (repeatable or comma-separated), e.g.
    /// spiffe://palisade.local/ns/palisade-system/sa/ops=admin.
    #[arg(
        long,
        env = "PALISADE_ADMIN_SPIFFE_IDS",
        value_delimiter = ',',
        requires = "admin_tls"
    )]
    pub admin_spiffe_id: Vec<crate::admin::SpiffeAdmin>,

    /// Kubernetes: the API server (in a pod: https://kubernetes.default.svc). Turns on the
    /// control plane's writes to it: the trust-bundle ConfigMap in every namespace, the
    /// webhook's caBundle (--k8s-webhook-config) and the CA Secret (--k8s-ca-secret). Calls
    /// use --k8s-ca-file and --k8s-token-file.
    #[arg(long, env = "PALISADE_K8S_API_SERVER", requires = "k8s_token_file")]
    pub k8s_api_server: Option<String>,

    /// Kubernetes: the control plane's own namespace (where the CA Secret lives).
    #[arg(
        long,
        env = "PALISADE_K8S_NAMESPACE",
        default_value = "palisade-system"
    )]
    pub k8s_namespace: String,

    /// Kubernetes: the ConfigMap (key trust-bundle.pem) published in every namespace for
    /// injected sidecars to mount.
    #[arg(
        long,
        env = "PALISADE_K8S_TRUST_BUNDLE_CONFIG_MAP",
        default_value_t = palisade_inject::Settings::default().trust_bundle_config_map
    )]
    pub k8s_trust_bundle_config_map: String,

    /// Kubernetes: the MutatingWebhookConfiguration whose caBundle the control plane keeps
    /// equal to its trust bundle (it serves the webhook with a certificate of its own CA).
    #[arg(long, env = "PALISADE_K8S_WEBHOOK_CONFIG", requires = "k8s_api_server")]
    pub k8s_webhook_config: Option<String>,

    /// Kubernetes: keep the CA in this Secret of --k8s-namespace (keys ca-cert.pem and
    /// ca-key.pem, optionally roots.pem and chain.pem, and token-key.pem for admin and join
    /// tokens): created with a new root on first start, read by every later start and every
    /// replica. Rotate by editing the Secret as a plugged-in CA, then restarting.
    #[arg(
        long,
        env = "PALISADE_K8S_CA_SECRET",
        requires = "k8s_api_server",
        conflicts_with = "ca_cert"
    )]
    pub k8s_ca_secret: Option<String>,

    /// Kubernetes: how often the published objects are checked and mended (also at once
    /// when the signing root changes).
    #[arg(long, env = "PALISADE_K8S_SYNC_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub k8s_sync_interval: Duration,

    /// Serve the sidecar injector's admission webhook (POST /inject) on this address, over
    /// TLS (e.g. 0.0.0.0:15017): with --webhook-cert/--webhook-key, or else with the
    /// control plane's own certificate carrying --webhook-dns-name.
    #[arg(long, env = "PALISADE_WEBHOOK_LISTEN")]
    pub webhook_listen: Option<SocketAddr>,

    /// The webhook's serving certificate chain (PEM), for the Service name the
    /// MutatingWebhookConfiguration calls; its CA is that configuration's caBundle.
    #[arg(long, env = "PALISADE_WEBHOOK_CERT", requires = "webhook_key")]
    pub webhook_cert: Option<PathBuf>,

    /// The webhook certificate's private key (PEM).
    #[arg(long, env = "PALISADE_WEBHOOK_KEY", requires = "webhook_cert")]
    pub webhook_key: Option<PathBuf>,

    /// Without --webhook-cert: DNS names the API server calls the webhook by (repeatable or
    /// comma-separated), added to the control plane's own certificate, which then serves
    /// the webhook; the caBundle is the trust bundle.
    #[arg(
        long,
        env = "PALISADE_WEBHOOK_DNS_NAMES",
        value_delimiter = ',',
        conflicts_with = "webhook_cert"
    )]
    pub webhook_dns_name: Vec<String>,

    /// Injection: the sidecar image.
    #[arg(long, env = "PALISADE_INJECT_IMAGE", default_value_t = palisade_inject::Settings::default().image)]
    pub inject_image: String,

    /// Injection: the control plane's sidecar-facing address as pods reach it.
    #[arg(long, env = "PALISADE_INJECT_CONTROL_PLANE", default_value_t = palisade_inject::Settings::default().control_plane)]
    pub inject_control_plane: String,

    /// Injection: add the sidecar as a native sidecar (Kubernetes 1.29+); false adds it as
    /// the pod's first container.
    #[arg(long, env = "PALISADE_INJECT_NATIVE_SIDECAR", default_value_t = true, action = clap::ArgAction::Set)]
    pub inject_native_sidecar: bool,

    /// Injection: the sidecars' outbound policy for destinations outside the registry,
    /// allow-any or registry-only (a pod's palisade.dev/outbound-policy annotation wins).
    #[arg(
        long,
        env = "PALISADE_INJECT_OUTBOUND_POLICY",
        default_value = "allow-any",
        value_parser = clap::builder::PossibleValuesParser::new(palisade_inject::OUTBOUND_POLICIES)
    )]
    pub inject_outbound_policy: String,

    /// Log format on stderr: text or json.
    #[arg(long, env = "PALISADE_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

impl Config {
    /// A configuration for tests and embedding: a data dir, every listener on 127.0.0.1:0.
    pub fn for_data_dir(data_dir: PathBuf) -> Self {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            data_dir,
            trust_domain: TrustDomain::parse("palisade.local").expect("valid default"),
            sidecar_listen: any,
            admin_listen: any,
            metrics_listen: any,
            workload_ttl: Duration::from_secs(3600),
            reattest_grace: Duration::from_secs(3600),
            handshake_timeout: Duration::from_secs(10),
            database_url: None,
            decision_broker: None,
            decision_retention: Duration::from_secs(90 * 24 * 3600),
            decision_queue: palisade_contract::decisions::broker::DEFAULT_QUEUE.into(),
            config_file: Vec::new(),
            ca_cert: None,
            ca_key: None,
            ca_key_source: KeySource::File,
            token_key_source: KeySource::File,
            key_encryption_key_file: None,
            key_encryption_key: None,
            key_encryption_key_pkcs11: None,
            pkcs11_module: None,
            pkcs11_token: None,
            pkcs11_pin_file: None,
            ca_roots: None,
            ca_chain: None,
            k8s_issuer: None,
            k8s_jwks: None,
            k8s_oidc_discovery: false,
            k8s_ca_file: "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt".into(),
            k8s_token_file: None,
            k8s_audience: "palisade".into(),
            admin_oidc_issuer: None,
            admin_oidc_jwks: None,
            admin_oidc_audience: "palisade".into(),
            admin_oidc_role_claim: "palisade_role".into(),
            admin_k8s_service_account: Vec::new(),
            admin_k8s_audience: "palisade-admin".into(),
            admin_tls: false,
            admin_spiffe_id: Vec::new(),
            k8s_api_server: None,
            k8s_namespace: "palisade-system".into(),
            k8s_trust_bundle_config_map: palisade_inject::Settings::default()
                .trust_bundle_config_map,
            k8s_webhook_config: None,
            k8s_ca_secret: None,
            k8s_sync_interval: Duration::from_secs(30),
            webhook_listen: None,
            webhook_cert: None,
            webhook_key: None,
            webhook_dns_name: Vec::new(),
            inject_image: palisade_inject::Settings::default().image,
            inject_control_plane: palisade_inject::Settings::default().control_plane,
            inject_native_sidecar: true,
            inject_outbound_policy: "allow-any".into(),
            log_format: LogFormat::Text,
        }
    }

    /// What the injector puts in pods.
    pub fn inject_settings(&self) -> palisade_inject::Settings {
        palisade_inject::Settings {
            image: self.inject_image.clone(),
            control_plane: self.inject_control_plane.clone(),
            trust_domain: self.trust_domain.to_string(),
            token_audience: self.k8s_audience.clone(),
            native_sidecar: self.inject_native_sidecar,
            outbound_policy: self.inject_outbound_policy.clone(),
            trust_bundle_config_map: self.k8s_trust_bundle_config_map.clone(),
            ..palisade_inject::Settings::default()
        }
    }

    /// Every problem with the configuration, or nothing.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        for (flag, file) in [
            ("--webhook-cert", &self.webhook_cert),
            ("--webhook-key", &self.webhook_key),
        ] {
            if let Some(f) = file
                && !f.is_file()
            {
                problems.push(format!("{flag} {}: no such file", f.display()));
            }
        }
        if self.workload_ttl < Duration::from_secs(1)
            || self.workload_ttl > Duration::from_secs(24 * 3600)
        {
            problems.push(format!(
                "--workload-ttl {} is out of range (1s to 24h)",
                humantime::format_duration(self.workload_ttl)
            ));
        }
        let envelope = [self.ca_key_source, self.token_key_source].contains(&KeySource::Envelope);
        let keks = [
            self.key_encryption_key_file.is_some(),
            self.key_encryption_key.is_some(),
            self.key_encryption_key_pkcs11.is_some(),
        ]
        .into_iter()
        .filter(|given| *given)
        .count();
        if envelope && keks == 0 {
            problems.push(
                "an envelope key source needs the key-encryption key: --key-encryption-key-file, \
                 PALISADE_KEY_ENCRYPTION_KEY or --key-encryption-key-pkcs11"
                    .into(),
            );
        }
        if keks > 1 {
            problems.push(
                "give one key-encryption key: --key-encryption-key-file, \
                 PALISADE_KEY_ENCRYPTION_KEY or --key-encryption-key-pkcs11"
                    .into(),
            );
        }
        let pkcs11 = [self.ca_key_source, self.token_key_source].contains(&KeySource::Pkcs11)
            || (envelope && self.key_encryption_key_pkcs11.is_some());
        if pkcs11 && self.token_settings().is_none() {
            problems.push(TOKEN_SETTINGS_NEEDED.into());
        }
        if let Some(kek) = &self.key_encryption_key_file
            && let (Ok(kek), Ok(data)) = (kek.canonicalize(), self.data_dir.canonicalize())
            && kek.starts_with(&data)
        {
            problems.push(format!(
                "--key-encryption-key-file {} is inside the data directory: a copy of the \
                 directory would carry the key that opens its keys; keep it elsewhere",
                kek.display()
            ));
        }
        if self.reattest_grace > Duration::from_secs(7 * 24 * 3600) {
            problems.push(format!(
                "--reattest-grace {} is out of range (0s to 7d)",
                humantime::format_duration(self.reattest_grace)
            ));
        }
        if self.handshake_timeout < Duration::from_millis(100)
            || self.handshake_timeout > Duration::from_secs(300)
        {
            problems.push("--handshake-timeout is out of range (100ms to 5m)".into());
        }
        for (flag, path) in [
            ("--ca-cert", &self.ca_cert),
            ("--ca-key", &self.ca_key),
            ("--ca-roots", &self.ca_roots),
            ("--ca-chain", &self.ca_chain),
            ("--k8s-jwks", &self.k8s_jwks),
            ("--admin-oidc-jwks", &self.admin_oidc_jwks),
        ] {
            if let Some(p) = path
                && !p.is_file()
            {
                problems.push(format!("{flag} {}: no such file", p.display()));
            }
        }
        if let Some(url) = &self.database_url
            && !(url.starts_with("postgres://")
                || url.starts_with("postgresql://")
                || url.starts_with("sqlite://"))
        {
            problems.push(format!(
                "--database-url {url:?}: use postgres://... or sqlite://PATH"
            ));
        }
        if self.k8s_issuer.is_some() && self.k8s_jwks.is_none() && !self.k8s_oidc_discovery {
            problems.push("--k8s-issuer needs --k8s-jwks FILE or --k8s-oidc-discovery".into());
        }
        if self.k8s_oidc_discovery || self.k8s_api_server.is_some() {
            if !self.k8s_ca_file.is_file() {
                problems.push(format!(
                    "--k8s-ca-file {}: no such file (needed by --k8s-oidc-discovery and \
                     --k8s-api-server)",
                    self.k8s_ca_file.display()
                ));
            }
            if let Some(t) = &self.k8s_token_file
                && !t.is_file()
            {
                problems.push(format!("--k8s-token-file {}: no such file", t.display()));
            }
        }
        if let Some(url) = &self.k8s_api_server
            && !url.starts_with("https://")
        {
            problems.push(format!(
                "--k8s-api-server {url:?}: only https:// is accepted"
            ));
        }
        if self.k8s_sync_interval < Duration::from_millis(100) {
            problems.push("--k8s-sync-interval is too short (100ms at least)".into());
        }
        if self.webhook_listen.is_some()
            && self.webhook_cert.is_none()
            && self.webhook_dns_name.is_empty()
        {
            problems.push(
                "--webhook-listen needs --webhook-cert/--webhook-key or --webhook-dns-name".into(),
            );
        }
        for name in &self.webhook_dns_name {
            if rcgen::string::Ia5String::try_from(name.as_str()).is_err()
                || name.is_empty()
                || name.contains(['/', ' ', ':'])
            {
                problems.push(format!("--webhook-dns-name {name:?} is not a DNS name"));
            }
        }
        if self.admin_k8s_audience == self.k8s_audience {
            problems.push(
                "--admin-k8s-audience must differ from --k8s-audience: a workload's bootstrap \
                 token must not be an admin credential"
                    .into(),
            );
        }
        if self.admin_oidc_issuer.is_some() && self.admin_oidc_jwks.is_none() {
            problems.push("--admin-oidc-issuer needs --admin-oidc-jwks".into());
        }
        if self.k8s_audience.is_empty() {
            problems.push("--k8s-audience must not be empty".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// The PKCS#11 token, when all of its settings are given.
    pub fn token_settings(&self) -> Option<TokenSettings> {
        Some(TokenSettings {
            module: self.pkcs11_module.clone()?,
            label: self.pkcs11_token.clone()?,
            pin_file: self.pkcs11_pin_file.clone()?,
        })
    }

    /// Sets the `--pkcs11-*` flags to `settings` (what [`Config::token_settings`] reads back).
    pub fn set_token_settings(&mut self, settings: &TokenSettings) {
        self.pkcs11_module = Some(settings.module.clone());
        self.pkcs11_token = Some(settings.label.clone());
        self.pkcs11_pin_file = Some(settings.pin_file.clone());
    }

    /// How a key of `source` is kept: with the key-encryption key read now for an envelope,
    /// the token opened and logged in now for pkcs11.
    pub fn key_storage(&self, source: KeySource) -> Result<KeyStorage, KeyError> {
        Ok(match source {
            KeySource::File => KeyStorage::File,
            KeySource::Envelope => KeyStorage::Envelope(self.kek()?),
            KeySource::Pkcs11 => KeyStorage::Pkcs11(self.token()?),
        })
    }

    /// The PKCS#11 token the `--pkcs11-*` flags name, opened and logged in.
    pub fn token(&self) -> Result<Arc<Token>, KeyError> {
        let settings = self
            .token_settings()
            .ok_or_else(|| KeyError::Refused(TOKEN_SETTINGS_NEEDED.into()))?;
        Token::open(&settings)
    }

    /// The key-encryption key, from a file, the environment or the token.
    pub fn kek(&self) -> Result<Arc<dyn KeyWrap>, KeyError> {
        match (
            &self.key_encryption_key_file,
            &self.key_encryption_key,
            &self.key_encryption_key_pkcs11,
        ) {
            (Some(path), _, _) => Ok(Arc::new(Kek::from_file(path)?)),
            (None, Some(text), _) => Ok(Arc::new(Kek::from_base64(
                text,
                "PALISADE_KEY_ENCRYPTION_KEY",
            )?)),
            (None, None, Some(label)) => Ok(Arc::new(self.token()?.kek(label)?)),
            (None, None, None) => Err(KeyError::bad_kek(
                "--key-encryption-key-file",
                "an envelope key source needs one, and none was given",
            )),
        }
    }

    pub fn ca_config(&self) -> Result<CaConfig, KeyError> {
        Ok(CaConfig {
            trust_domain: self.trust_domain.clone(),
            data_dir: self.data_dir.clone(),
            plugged_in: match (&self.ca_cert, &self.ca_key, &self.ca_roots) {
                (Some(cert), Some(key), Some(roots)) => Some(PluggedInCa {
                    cert: cert.clone(),
                    key: key.clone(),
                    roots: roots.clone(),
                    chain: self.ca_chain.clone(),
                }),
                _ => None,
            },
            workload_ttl: self.workload_ttl,
            key_storage: self.key_storage(self.ca_key_source)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut c = Config::for_data_dir("/tmp/x".into());
        c.workload_ttl = Duration::from_secs(2 * 24 * 3600);
        c.ca_cert = Some("/nonexistent/ca.pem".into());
        c.database_url = Some("mysql://db".into());
        c.k8s_audience = String::new();
        c.reattest_grace = Duration::from_secs(8 * 24 * 3600);
        let problems = c.validate().unwrap_err();
        assert_eq!(problems.len(), 5, "{problems:#?}");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("--reattest-grace 8days")),
            "{problems:#?}"
        );
        assert!(problems[0].contains("--workload-ttl"));
        assert!(
            problems
                .iter()
                .any(|p| p.contains("--ca-cert /nonexistent/ca.pem"))
        );
        assert!(Config::for_data_dir("/tmp/x".into()).validate().is_ok());
    }

    #[test]
    fn flags_parse_with_their_defaults() {
        let c =
            Config::try_parse_from(["palisade-control-plane", "--workload-ttl", "90s"]).unwrap();
        assert_eq!(c.workload_ttl, Duration::from_secs(90));
        assert_eq!(c.sidecar_listen.port(), 15012);
        assert_eq!(c.admin_listen.to_string(), "127.0.0.1:15080");
        let err =
            Config::try_parse_from(["palisade-control-plane", "--trust-domain", "Bad.Domain"])
                .unwrap_err();
        assert!(err.to_string().contains("trust domain"), "{err}");
        // Plugged-in CA flags come together.
        assert!(Config::try_parse_from(["palisade-control-plane", "--ca-cert", "x.pem"]).is_err());
    }

    #[test]
    fn kubernetes_and_webhook_settings_are_checked() {
        let mut c = Config::for_data_dir("/tmp/x".into());
        c.k8s_api_server = Some("http://kubernetes.default.svc".into());
        c.k8s_ca_file = "/nonexistent/ca.crt".into();
        c.k8s_sync_interval = Duration::from_millis(10);
        c.webhook_listen = Some("0.0.0.0:15017".parse().unwrap());
        c.admin_k8s_audience = "palisade".into();
        let problems = c.validate().unwrap_err();
        for expected in [
            "--k8s-ca-file /nonexistent/ca.crt: no such file",
            "only https:// is accepted",
            "--k8s-sync-interval is too short",
            "--webhook-listen needs --webhook-cert/--webhook-key or --webhook-dns-name",
            "--admin-k8s-audience must differ from --k8s-audience",
        ] {
            assert!(
                problems.iter().any(|p| p.contains(expected)),
                "{expected} missing from {problems:#?}"
            );
        }
        c = Config::for_data_dir("/tmp/x".into());
        c.webhook_listen = Some("0.0.0.0:15017".parse().unwrap());
        c.webhook_dns_name = vec!["palisade.example.svc".into(), "bad name".into()];
        let problems = c.validate().unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert!(problems[0].contains("\"bad name\" is not a DNS name"));
        // The CA Secret needs the API server; it cannot be combined with a plugged-in CA.
        for args in [
            &["--k8s-ca-secret", "palisade-ca"][..],
            &[
                "--k8s-api-server",
                "https://k",
                "--k8s-token-file",
                "t",
                "--k8s-ca-secret",
                "c",
                "--ca-cert",
                "a",
                "--ca-key",
                "b",
                "--ca-roots",
                "r",
            ][..],
        ] {
            let mut argv = vec!["palisade-control-plane"];
            argv.extend_from_slice(args);
            assert!(Config::try_parse_from(argv).is_err(), "{args:?}");
        }
    }
}
