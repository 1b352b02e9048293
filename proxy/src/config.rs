//! Command-line flags, each with a `PALISADE_*` environment twin, validated up front with
//! every problem reported at once, into typed [`Settings`]: one part per component, each
//! defined beside the component that takes it, so nothing downstream reads a flag again.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use palisade_contract::TrustDomain;
use palisade_contract::policy::DefaultMode;
use palisade_contract::telemetry::LogFormat;

use palisade_contract::amqp_url::AmqpUrl;
use palisade_contract::path::PathOptions;

use crate::admin::{AdminSettings, AppProbe};
use crate::amqp::{AmqpSettings, ProvenanceSettings};
use crate::audit::AuditTarget;
use crate::decision_log::{DecisionLogSettings, DecisionShip, Overflow};
use crate::forwarding::UnderscoreHeaders;
use crate::identity::{INITIAL_BACKOFF, IdentitySettings};
use crate::inbound::InboundSettings;
use crate::outbound::{OutboundPolicy, OutboundSettings, TcpOutbound};
use crate::policies::PolicySource;
use crate::server::Limits;

/// `--control-plane`: an `https://host:port` URL (as every other flag naming a server takes)
/// or a bare `host:port`, turned into the `host:port` the client dials. Anything else is
/// refused at start: a value that is neither used to be looked up as a host name and retried
/// forever.
pub fn control_plane_address(value: &str) -> Result<String, String> {
    let refuse = |why: &str| {
        Err(format!(
            "{value:?} {why}; expected https://host:port or host:port, e.g. https://127.0.0.1:15012"
        ))
    };
    let rest = match value.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => rest,
        Some(_) => return refuse("is not an https URL (the control plane speaks only mTLS)"),
        None => value,
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let authority: http::uri::Authority = match rest.parse() {
        Ok(a) => a,
        Err(_) => return refuse("is not a host and port"),
    };
    if authority.as_str() != rest || rest.contains('@') {
        return refuse("has a path, query or credentials");
    }
    match authority.port_u16() {
        Some(0) | None => refuse("names no port (or port 0)"),
        Some(port) if !authority.host().is_empty() => Ok(format!("{}:{port}", authority.host())),
        Some(_) => refuse("names no host"),
    }
}

/// Palisade sidecar proxy.
#[derive(Debug, Clone, Parser)]
#[command(name = "palisade-proxy", version, about, long_about = None, args_override_self = true)]
pub struct Config {
    /// The control plane's sidecar-facing address: `https://host:port` or `host:port`.
    #[arg(
        long,
        env = "PALISADE_CONTROL_PLANE",
        default_value = "127.0.0.1:15012",
        value_parser = control_plane_address
    )]
    pub control_plane: String,

    /// Trust bundle (PEM roots) used to verify the control plane and, until the control plane
    /// sends a newer one, every peer.
    #[arg(long, env = "PALISADE_CA_BUNDLE")]
    pub ca_bundle: PathBuf,

    /// Trust domain of the mesh.
    #[arg(long, env = "PALISADE_TRUST_DOMAIN", default_value = "palisade.local")]
    pub trust_domain: TrustDomain,

    /// Bootstrap token (a join token, or a projected Kubernetes ServiceAccount token), read
    /// whenever the sidecar has no valid certificate.
    #[arg(long, env = "PALISADE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// Directory where the key, certificate and bundle are cached (mode 0600), so a restarted
    /// sidecar renews with them instead of a new token.
    #[arg(long, env = "PALISADE_IDENTITY_DIR")]
    pub identity_dir: Option<PathBuf>,

    /// Keep the cached key in --identity-dir envelope-encrypted with this key-encryption key
    /// (a file of 32 random bytes, base64, kept off the node disk: a mounted Secret). A
    /// cached key that is not sealed with it is ignored. See the README on when it helps.
    #[arg(
        long,
        env = "PALISADE_IDENTITY_KEY_ENCRYPTION_KEY_FILE",
        requires = "identity_dir"
    )]
    pub identity_key_encryption_key_file: Option<PathBuf>,

    /// Admin listener: /live, /ready, /metrics (never subject to mesh policy).
    #[arg(long, env = "PALISADE_ADMIN_LISTEN", default_value = "0.0.0.0:15090")]
    pub admin_listen: SocketAddr,

    /// Inbound listener: mTLS from other sidecars, authorized, then forwarded to --app.
    #[arg(long, env = "PALISADE_INBOUND_LISTEN", default_value = "0.0.0.0:15006")]
    pub inbound_listen: SocketAddr,

    /// Outbound listener: plain HTTP from the application (HTTP_PROXY, or Host naming the
    /// service), forwarded over mTLS to the destination's sidecar.
    #[arg(
        long,
        env = "PALISADE_OUTBOUND_LISTEN",
        default_value = "127.0.0.1:15001"
    )]
    pub outbound_listen: SocketAddr,

    /// Service registry (YAML or JSON `Service` documents): endpoints and the identity each
    /// service must present. Until policy distribution lands it comes from this file.
    #[arg(long, env = "PALISADE_REGISTRY_FILE")]
    pub registry_file: Option<PathBuf>,

    /// The application's plain-HTTP address (loopback).
    #[arg(long, env = "PALISADE_APP", default_value = "127.0.0.1:8080")]
    pub app: SocketAddr,

    /// An application health check the admin port serves as /app-health/NAME: NAME=PATH
    /// (repeatable or comma-separated), e.g. live=/healthz. Point the kubelet's probes there;
    /// the inbound port only admits mesh peers.
    #[arg(long, env = "PALISADE_APP_PROBES", value_delimiter = ',')]
    pub app_probe: Vec<AppProbe>,

    /// The service this sidecar protects, as policies' `selector.service` names it
    /// (default: the service account of its SPIFFE ID).
    #[arg(long, env = "PALISADE_SERVICE")]
    pub service: Option<String>,

    /// Authorization policies (YAML or JSON, several documents). Without it, every request
    /// gets the default decision.
    #[arg(long, env = "PALISADE_POLICY_FILE")]
    pub policy_file: Option<PathBuf>,

    /// What happens to requests for a workload no ALLOW policy selects: deny, allow or audit
    /// (allow, and log as audit) — the last two only for migrations.
    #[arg(long, env = "PALISADE_DEFAULT_MODE", default_value = "deny")]
    pub default_mode: DefaultMode,

    /// Where audit events go: stdout, or a file path (JSON lines, appended).
    #[arg(long, env = "PALISADE_AUDIT_LOG", default_value = "stdout")]
    pub audit_log: AuditTarget,

    /// The durable decision log: a directory (created, mode 0700) where every decision is
    /// appended to a hash-chained, signed spool before its outcome leaves the sidecar.
    #[arg(long, env = "PALISADE_DECISION_DIR")]
    pub decision_dir: Option<PathBuf>,

    /// How often the decision spool is fsynced (what a machine crash can lose at most).
    #[arg(long, env = "PALISADE_DECISION_FSYNC_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub decision_fsync_interval: Duration,

    /// How often the decision spool gets a checkpoint signed with the workload's key (and
    /// at shutdown).
    #[arg(long, env = "PALISADE_DECISION_CHECKPOINT_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub decision_checkpoint_interval: Duration,

    /// Where the decision spool is shipped: `control-plane` (the default; over the sidecar
    /// API's mTLS, a segment deleted once the control plane stored all of it), a RabbitMQ
    /// URL `amqp://user:pass@host:port/vhost` or `amqps://…` (each batch signed with the
    /// workload key, published with confirms to --decision-queue, a segment deleted once
    /// the broker confirmed all of it; control planes read it with --decision-broker), or
    /// `off` (the spool only grows: for a node-local collector of your own).
    #[arg(long, env = "PALISADE_DECISION_SHIP", default_value = "control-plane")]
    pub decision_ship: String,

    /// With --decision-ship amqp://…: the queue (a quorum queue, declared if missing; the
    /// control plane's --decision-queue).
    #[arg(long, env = "PALISADE_DECISION_QUEUE", default_value = palisade_contract::decisions::broker::DEFAULT_QUEUE)]
    pub decision_queue: String,

    /// The decision spool's bound: once its segments hold this much (shipping fell
    /// behind), --decision-overflow applies. Bytes, or with a unit: KiB, MiB, GiB.
    #[arg(long, env = "PALISADE_DECISION_SPOOL_MAX", default_value = "1GiB", value_parser = parse_bytes)]
    pub decision_spool_max: u64,

    /// A new spool segment is started once the current one holds this much; the shipper
    /// deletes a segment once every line of it is stored centrally, so smaller segments
    /// give disk back sooner (and make more files). Bytes, or with a unit: KiB, MiB, GiB.
    #[arg(long, env = "PALISADE_DECISION_SEGMENT_MAX", default_value = "64MiB", value_parser = parse_bytes)]
    pub decision_segment_max: u64,

    /// What a full spool does: refuse (new requests get 503, new connections and
    /// publishes are refused, each counted) or drop (traffic goes on, its decisions are
    /// not written, and a gap entry in the chain says how many).
    #[arg(long, env = "PALISADE_DECISION_OVERFLOW", value_enum, default_value_t = Overflow::Refuse)]
    pub decision_overflow: Overflow,

    /// Keep %2F, %5C and \ in paths (undecoded) instead of answering 400.
    #[arg(long, env = "PALISADE_ALLOW_ENCODED_SLASHES")]
    pub allow_encoded_slashes: bool,

    /// Inbound request headers whose names hold an underscore: drop (default), reject (400)
    /// or allow.
    #[arg(
        long,
        env = "PALISADE_HEADERS_WITH_UNDERSCORES",
        value_enum,
        default_value_t = UnderscoreHeaders::Drop
    )]
    pub headers_with_underscores: UnderscoreHeaders,

    /// Time allowed for the TLS handshake and then for each request's headers.
    #[arg(long, env = "PALISADE_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,

    /// Largest request head (HTTP/1) or header list (HTTP/2), in bytes.
    #[arg(long, env = "PALISADE_MAX_HEADER_BYTES", default_value_t = 65536)]
    pub max_header_bytes: usize,

    /// Most header fields in an HTTP/1 request (more: 431).
    #[arg(long, env = "PALISADE_MAX_HEADERS", default_value_t = 100)]
    pub max_headers: usize,

    /// Most concurrent HTTP/2 streams per inbound connection.
    #[arg(long, env = "PALISADE_MAX_STREAMS", default_value_t = 256)]
    pub max_streams: u32,

    /// Most inbound connections at once.
    #[arg(long, env = "PALISADE_MAX_CONNECTIONS", default_value_t = 10000)]
    pub max_connections: usize,

    /// Application ports served as opaque TCP (comma-separated): connections for them are
    /// mTLS-authenticated, authorized on source identity and port only, then piped to the
    /// application's host at that port.
    #[arg(long, env = "PALISADE_OPAQUE_PORTS", value_delimiter = ',')]
    pub opaque_ports: Vec<u16>,

    /// What happens to intercepted traffic for destinations outside the service registry
    /// (Istio's outboundTrafficPolicy): allow-any passes it through to where it was going
    /// (audited as passthrough); registry-only refuses it (HTTP 403, other connections
    /// closed; audited as deny), so a workload reaches only mesh services and what its
    /// pod excludes from interception.
    #[arg(
        long,
        env = "PALISADE_OUTBOUND_POLICY",
        value_enum,
        default_value = "allow-any"
    )]
    pub outbound_policy: OutboundPolicy,

    /// Opaque TCP to another service: LISTEN=SERVICE:PORT (repeatable or comma-separated),
    /// e.g. 127.0.0.1:15432=db:5432. The application connects to LISTEN; the sidecar opens
    /// mTLS to SERVICE's sidecar (secure naming as for HTTP), which pipes to its port PORT.
    #[arg(long, env = "PALISADE_TCP_OUTBOUND", value_delimiter = ',')]
    pub tcp_outbound: Vec<TcpOutbound>,

    /// Longest wait for a TCP connection the sidecar opens: to the application, a peer
    /// sidecar, a passthrough destination, the broker or the control plane.
    #[arg(long, env = "PALISADE_CONNECT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,

    /// Close client connections that have had no request in flight for this long (HTTP/1
    /// keep-alive and HTTP/2 alike; HTTP/2 gets a GOAWAY).
    #[arg(long, env = "PALISADE_IDLE_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// A mesh connection lives no longer than the trust it was opened with: when a
    /// certificate of its handshake expires or its peer's root leaves the trust bundle, it
    /// takes no new requests (HTTP/2 GOAWAY, HTTP/1 closed after the current request) and
    /// what is in flight gets this long to finish before the socket is closed. Opaque TCP
    /// is closed at once.
    #[arg(long, env = "PALISADE_CONNECTION_DRAIN", default_value = "10s", value_parser = humantime::parse_duration)]
    pub connection_drain: Duration,

    /// AMQP listener for the application (loopback): it connects here as if to RabbitMQ, and
    /// every operation is authorized before the broker sees it. Off unless given.
    #[arg(long, env = "PALISADE_AMQP_LISTEN")]
    pub amqp_listen: Option<SocketAddr>,

    /// The real broker: amqp://USER:PASSWORD@HOST:PORT/VHOST (vhost percent-encoded, %2f for
    /// /). The sidecar logs in with these credentials, whatever the application sends.
    #[arg(
        long,
        env = "PALISADE_AMQP_UPSTREAM",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub amqp_upstream: String,

    /// For an amqps:// upstream: the roots (PEM) the broker's certificate must chain to.
    #[arg(long, env = "PALISADE_AMQP_CA_BUNDLE")]
    pub amqp_ca_bundle: Option<PathBuf>,

    /// A file holding the broker password (replaces the URL's; keeps it out of flags and
    /// the environment).
    #[arg(long, env = "PALISADE_AMQP_PASSWORD_FILE")]
    pub amqp_password_file: Option<PathBuf>,

    /// Sign every message this workload publishes (x-palisade-signature: the publisher,
    /// exchange, routing key, time and body hash, signed with the workload's key).
    #[arg(long, env = "PALISADE_AMQP_SIGN", default_value_t = true, action = clap::ArgAction::Set)]
    pub amqp_sign: bool,

    /// Verify the signature of every message this workload receives; the application sees
    /// x-palisade-verified-publisher only for a valid one.
    #[arg(long, env = "PALISADE_AMQP_VERIFY", default_value_t = true, action = clap::ArgAction::Set)]
    pub amqp_verify: bool,

    /// Largest message signed or verified (it is held whole for the body hash); larger ones
    /// pass unsigned / unverified, and are counted.
    #[arg(long, env = "PALISADE_AMQP_MAX_SIGNED_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub amqp_max_signed_bytes: u64,

    /// Oldest signature a consumer accepts (messages can wait in queues).
    #[arg(long, env = "PALISADE_AMQP_SIGNATURE_MAX_AGE", default_value = "24h", value_parser = humantime::parse_duration)]
    pub amqp_signature_max_age: Duration,

    /// Record one allowed AMQP publish in this many in the audit log (denials and every
    /// other operation are always recorded). 1 records every publish. With --decision-dir,
    /// the ones left out are declared in the chain (gap entries with the reason), so
    /// verification shows how many were sampled out and where.
    #[arg(long, env = "PALISADE_AMQP_AUDIT_SAMPLE", default_value_t = 1)]
    pub amqp_audit_sample: u64,

    /// Longest wait between retries when the control plane cannot be reached (e.g. 30s).
    #[arg(long, env = "PALISADE_MAX_BACKOFF", default_value = "30s", value_parser = humantime::parse_duration)]
    pub max_backoff: Duration,

    /// Log format on stderr: text or json.
    #[arg(long, env = "PALISADE_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,

    /// Threads serving traffic (default: the CPUs this process may use, cgroup limits
    /// included). With 1, the sidecar runs on a single-threaded runtime: no hand-offs
    /// between threads, the cheapest per request when the pod has one core or less (as
    /// Linkerd's proxy does with LINKERD2_PROXY_CORES=1).
    #[arg(long, env = "PALISADE_PROXY_CORES")]
    pub cores: Option<usize>,
}

/// The validated configuration, one typed part per component: what [`Config::settings`]
/// returns and all that [`crate::sidecar::start_with`] reads.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The trust bundle read at start (the roots until the control plane sends newer).
    pub ca_bundle: PathBuf,
    pub identity: IdentitySettings,
    pub admin: AdminSettings,
    pub inbound: InboundSettings,
    pub outbound: OutboundSettings,
    /// With `--amqp-listen` only.
    pub amqp: Option<AmqpSettings>,
    pub policy: PolicySource,
    pub audit_log: AuditTarget,
    /// With `--decision-dir` only.
    pub decisions: Option<DecisionLogSettings>,
    /// Threads serving traffic: `--cores`, or the CPUs available to this process.
    pub worker_threads: usize,
}

impl Config {
    /// Every problem with the configuration at once, or the typed settings.
    pub fn settings(&self) -> Result<Settings, Vec<String>> {
        let mut problems = Vec::new();
        if !self.ca_bundle.is_file() {
            problems.push(format!(
                "--ca-bundle {}: no such file",
                self.ca_bundle.display()
            ));
        }
        if let Some(t) = &self.token_file
            && !t.is_file()
            && self.identity_dir.is_none()
        {
            problems.push(format!(
                "--token-file {}: no such file (and no --identity-dir to start from)",
                t.display()
            ));
        }
        if self.token_file.is_none() && self.identity_dir.is_none() {
            problems.push(
                "either --token-file or --identity-dir (with a cached certificate) is needed"
                    .into(),
            );
        }
        let cache_kek = match &self.identity_key_encryption_key_file {
            Some(path) => match palisade_contract::envelope::Kek::from_file(path) {
                Ok(kek) => Some(std::sync::Arc::new(kek)),
                Err(e) => {
                    problems.push(format!("--identity-key-encryption-key-file: {e}"));
                    None
                }
            },
            None => None,
        };
        if let Some(p) = &self.policy_file
            && !p.is_file()
        {
            problems.push(format!("--policy-file {}: no such file", p.display()));
        }
        if let Some(p) = &self.registry_file
            && !p.is_file()
        {
            problems.push(format!("--registry-file {}: no such file", p.display()));
        }
        if let Some(s) = &self.service
            && palisade_contract::spiffe::validate_namespace(s).is_err()
        {
            problems.push(format!(
                "--service {s:?} is not a valid service name (a DNS label)"
            ));
        }
        if self.header_timeout < Duration::from_millis(100) {
            problems.push("--header-timeout must be at least 100ms".into());
        }
        if self.max_header_bytes < 1024
            || self.max_headers == 0
            || self.max_streams == 0
            || self.max_connections == 0
        {
            problems.push("--max-header-bytes must be at least 1024, --max-headers, --max-streams and --max-connections at least 1".into());
        }
        let amqp_upstream = match AmqpUrl::parse(&self.amqp_upstream) {
            Err(why) => {
                problems.push(format!("--amqp-upstream {why}"));
                None
            }
            Ok(url) if url.tls && self.amqp_ca_bundle.is_none() => {
                problems.push("an amqps:// --amqp-upstream needs --amqp-ca-bundle".into());
                None
            }
            Ok(url) => Some(url),
        };
        if let Some(p) = &self.amqp_ca_bundle
            && !p.is_file()
        {
            problems.push(format!("--amqp-ca-bundle {}: no such file", p.display()));
        }
        if let Some(p) = &self.amqp_password_file
            && !p.is_file()
        {
            problems.push(format!(
                "--amqp-password-file {}: no such file",
                p.display()
            ));
        }
        if self.amqp_audit_sample == 0 {
            problems.push("--amqp-audit-sample must be at least 1".into());
        }
        if self.cores == Some(0) {
            problems.push("--cores must be at least 1".into());
        }
        if self.opaque_ports.contains(&0) {
            problems.push("--opaque-ports: 0 is not a port".into());
        }
        if self.idle_timeout < Duration::from_millis(100) {
            problems.push("--idle-timeout must be at least 100ms".into());
        }
        if self.decision_fsync_interval < Duration::from_millis(10)
            || self.decision_fsync_interval > Duration::from_secs(1)
        {
            problems.push("--decision-fsync-interval must be between 10ms and 1s".into());
        }
        if self.decision_spool_max < 1 << 20 {
            problems.push("--decision-spool-max must be at least 1MiB".into());
        }
        if self.decision_segment_max < 4 << 10 {
            problems.push("--decision-segment-max must be at least 4KiB".into());
        }
        if self.decision_checkpoint_interval < Duration::from_millis(100) {
            problems.push("--decision-checkpoint-interval must be at least 100ms".into());
        }
        if self.connect_timeout < Duration::from_millis(100) {
            problems.push("--connect-timeout must be at least 100ms".into());
        }
        if self.connection_drain > Duration::from_secs(600) {
            problems.push("--connection-drain must be at most 10m".into());
        }
        if self.max_backoff < Duration::from_millis(100) {
            problems.push("--max-backoff must be at least 100ms".into());
        }
        let decision_ship = DecisionShip::parse(&self.decision_ship, &self.decision_queue)
            .unwrap_or_else(|why| {
                problems.push(why);
                DecisionShip::Off
            });
        // Every check above reported into `problems`; the upstream is `None` only with one.
        let (true, Some(amqp_upstream)) = (problems.is_empty(), amqp_upstream) else {
            return Err(problems);
        };
        let worker_threads = self.cores.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        let limits = Limits {
            header_timeout: self.header_timeout,
            max_header_bytes: self.max_header_bytes,
            max_streams: self.max_streams,
            max_headers: self.max_headers,
            max_connections: self.max_connections,
            idle_timeout: self.idle_timeout,
        };
        Ok(Settings {
            ca_bundle: self.ca_bundle.clone(),
            identity: IdentitySettings {
                control_plane: self.control_plane.clone(),
                trust_domain: self.trust_domain.clone(),
                token_file: self.token_file.clone(),
                cache_dir: self.identity_dir.clone(),
                cache_kek,
                initial_backoff: INITIAL_BACKOFF.min(self.max_backoff),
                max_backoff: self.max_backoff,
                connect_timeout: self.connect_timeout,
                connection_drain: self.connection_drain,
            },
            admin: AdminSettings {
                listen: self.admin_listen,
                app: self.app,
                probes: self
                    .app_probe
                    .iter()
                    .map(|p| (p.name.clone(), p.path.clone()))
                    .collect(),
            },
            inbound: InboundSettings {
                listen: self.inbound_listen,
                app: self.app,
                service: self.service.clone(),
                path_options: PathOptions {
                    allow_encoded_slashes: self.allow_encoded_slashes,
                },
                limits: limits.clone(),
                opaque_ports: self.opaque_ports.clone(),
                headers_with_underscores: self.headers_with_underscores,
                connect_timeout: self.connect_timeout,
            },
            outbound: OutboundSettings {
                listen: self.outbound_listen,
                limits,
                connections_per_service: worker_threads,
                policy: self.outbound_policy,
                tcp: self.tcp_outbound.clone(),
                connect_timeout: self.connect_timeout,
            },
            amqp: self.amqp_listen.map(|listen| AmqpSettings {
                listen,
                upstream: amqp_upstream,
                password_file: self.amqp_password_file.clone(),
                ca_bundle: self.amqp_ca_bundle.clone(),
                service: self.service.clone(),
                provenance: ProvenanceSettings {
                    sign: self.amqp_sign,
                    verify: self.amqp_verify,
                    max_message_bytes: self.amqp_max_signed_bytes,
                    max_age: self.amqp_signature_max_age,
                },
                audit_sample: self.amqp_audit_sample,
                connect_timeout: self.connect_timeout,
            }),
            policy: PolicySource {
                policy_file: self.policy_file.clone(),
                registry_file: self.registry_file.clone(),
                default_mode: self.default_mode,
            },
            audit_log: self.audit_log.clone(),
            decisions: self
                .decision_dir
                .clone()
                .map(move |dir| DecisionLogSettings {
                    dir,
                    fsync_interval: self.decision_fsync_interval,
                    checkpoint_interval: self.decision_checkpoint_interval,
                    ship: decision_ship,
                    spool_max: self.decision_spool_max,
                    overflow: self.decision_overflow,
                    segment_max: self.decision_segment_max,
                }),
            worker_threads,
        })
    }
}

/// `1073741824`, `512KiB`, `64MiB`, `1GiB` (also `K`, `M`, `G` and `KB`, `MB`, `GB`, as
/// powers of 1024: a spool bound, not a marketing figure).
fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 512MiB, 1GiB)"))?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KB" | "KiB" => 10,
        "M" | "MB" | "MiB" => 20,
        "G" | "GB" | "GiB" => 30,
        other => return Err(format!("unknown size unit {other:?} (use KiB, MiB or GiB)")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_bytes_or_binary_units_and_nothing_else() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("512KiB"), Ok(512 << 10));
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("2G"), Ok(2 << 30));
        for bad in ["", "MiB", "1TiB", "-1MiB", "1.5GiB", "99999999999999GiB"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_unreadable_or_malformed_cache_kek_is_a_start_error() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bundle.pem");
        std::fs::write(&bundle, "").unwrap();
        let short = dir.path().join("short-kek");
        std::fs::write(&short, "c2hvcnQ=\n").unwrap();
        for (kek, expected) in [
            (short.display().to_string(), "must be 32 bytes"),
            ("/nonexistent/kek".to_owned(), "No such file"),
        ] {
            let c = Config::try_parse_from([
                "palisade-proxy",
                "--ca-bundle",
                bundle.to_str().unwrap(),
                "--identity-dir",
                dir.path().to_str().unwrap(),
                "--identity-key-encryption-key-file",
                &kek,
            ])
            .unwrap();
            let problems = c.settings().unwrap_err();
            assert!(
                problems
                    .iter()
                    .any(|p| p.starts_with("--identity-key-encryption-key-file")
                        && p.contains(expected)),
                "{problems:?}"
            );
        }
        // It means nothing without a cache to seal.
        assert!(
            Config::try_parse_from([
                "palisade-proxy",
                "--ca-bundle",
                "b.pem",
                "--identity-key-encryption-key-file",
                "k",
            ])
            .is_err()
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let c = Config::try_parse_from([
            "palisade-proxy",
            "--ca-bundle",
            "/nonexistent/bundle.pem",
            "--amqp-audit-sample",
            "0",
            "--max-backoff",
            "1ms",
            "--connect-timeout",
            "10ms",
            "--decision-segment-max",
            "1KiB",
        ])
        .unwrap();
        let problems = c.settings().unwrap_err();
        assert_eq!(problems.len(), 6, "{problems:#?}");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("--decision-segment-max"))
        );
        assert!(problems.iter().any(|p| p.contains("--connect-timeout")));
        assert!(problems.iter().any(|p| p.contains("--ca-bundle")));
        assert!(
            problems
                .iter()
                .any(|p| p.contains("--token-file or --identity-dir"))
        );
        assert!(problems.iter().any(|p| p.contains("--amqp-audit-sample")));
        assert!(problems.iter().any(|p| p.contains("--max-backoff")));
        // A control plane that is not host:port is refused while parsing, with the flag named.
        let err = Config::try_parse_from([
            "palisade-proxy",
            "--ca-bundle",
            "b.pem",
            "--control-plane",
            "nohost",
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("--control-plane") && err.contains("https://host:port"),
            "{err}"
        );
    }

    #[test]
    fn defaults_match_the_documentation() {
        let c = Config::try_parse_from(["palisade-proxy", "--ca-bundle", "b.pem"]).unwrap();
        assert_eq!(c.admin_listen.to_string(), "0.0.0.0:15090");
        assert_eq!(c.control_plane, "127.0.0.1:15012");
        assert_eq!(c.max_backoff, Duration::from_secs(30));
        assert_eq!(c.headers_with_underscores, UnderscoreHeaders::Drop);
        assert_eq!(c.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.connection_drain, Duration::from_secs(10));
    }

    #[test]
    fn settings_carry_each_flag_to_its_component_once() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bundle.pem");
        std::fs::write(&bundle, "").unwrap();
        let c = Config::try_parse_from([
            "palisade-proxy",
            "--ca-bundle",
            bundle.to_str().unwrap(),
            "--identity-dir",
            dir.path().to_str().unwrap(),
            "--connect-timeout",
            "2s",
            "--cores",
            "3",
            "--service",
            "orders",
            "--amqp-listen",
            "127.0.0.1:5673",
            "--amqp-upstream",
            "amqp://u:p@rabbit:5672/shop",
        ])
        .unwrap();
        let s = c.settings().unwrap();
        let two = Duration::from_secs(2);
        assert_eq!(s.identity.connect_timeout, two);
        assert_eq!(s.inbound.connect_timeout, two);
        assert_eq!(s.outbound.connect_timeout, two);
        assert_eq!(s.outbound.connections_per_service, 3);
        assert_eq!(s.worker_threads, 3);
        let amqp = s.amqp.expect("--amqp-listen gives AMQP settings");
        assert_eq!(amqp.connect_timeout, two);
        assert_eq!(
            (amqp.upstream.vhost.as_str(), amqp.upstream.addr().as_str()),
            ("shop", "rabbit:5672")
        );
        assert_eq!(amqp.service.as_deref(), Some("orders"));
        assert_eq!(s.inbound.service.as_deref(), Some("orders"));
        assert!(s.policy.from_control_plane());
    }

    #[test]
    fn the_control_plane_is_a_url_or_host_and_port_and_nothing_else() {
        for (given, want) in [
            ("https://127.0.0.1:15012", "127.0.0.1:15012"),
            ("HTTPS://cp.example:15012/", "cp.example:15012"),
            ("127.0.0.1:15012", "127.0.0.1:15012"),
            ("https://[::1]:15012", "[::1]:15012"),
            (
                "palisade-control-plane.palisade-system.svc:15012",
                "palisade-control-plane.palisade-system.svc:15012",
            ),
        ] {
            assert_eq!(control_plane_address(given).as_deref(), Ok(want), "{given}");
        }
        for bad in [
            "http://127.0.0.1:15012",
            "https://127.0.0.1",
            "127.0.0.1",
            "https://127.0.0.1:0",
            "https://127.0.0.1:15012/v1",
            "https://u:p@127.0.0.1:15012",
            "https://:15012",
            "",
            "tcp://x:1",
        ] {
            let err = control_plane_address(bad).unwrap_err();
            assert!(err.contains("expected https://host:port"), "{bad}: {err}");
        }
    }
}
