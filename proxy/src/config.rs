//! Command-line flags, each with a `PALISADE_*` environment twin, validated up front with
//! every problem reported at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use palisade_contract::TrustDomain;
use palisade_contract::policy::DefaultMode;
use palisade_contract::telemetry::LogFormat;

use crate::admin::AppProbe;
use crate::audit::AuditTarget;

/// One `--tcp-outbound` mapping: a loopback listener for a service's port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpOutbound {
    pub listen: SocketAddr,
    /// As the registry resolves it: `name` or `name.namespace`.
    pub service: String,
    pub port: u16,
}

impl std::str::FromStr for TcpOutbound {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage = || format!("{s:?} is not LISTEN=SERVICE:PORT (e.g. 127.0.0.1:15432=db:5432)");
        let (listen, target) = s.split_once('=').ok_or_else(usage)?;
        let (service, port) = target.rsplit_once(':').ok_or_else(usage)?;
        let listen = listen.parse().map_err(|_| usage())?;
        let port = port.parse().ok().filter(|p| *p != 0).ok_or_else(usage)?;
        if service.is_empty() {
            return Err(usage());
        }
        Ok(TcpOutbound {
            listen,
            service: service.to_owned(),
            port,
        })
    }
}

/// `--outbound-policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutboundPolicy {
    /// Destinations outside the registry are passed through.
    AllowAny,
    /// Only registry services are reachable through interception.
    RegistryOnly,
}

/// `--headers-with-underscores`: what the inbound sidecar does with a request header whose
/// name holds `_` (Envoy's `headers_with_underscores_action`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum UnderscoreHeaders {
    /// Removed before authorization and forwarding (nginx's default,
    /// `underscores_in_headers off`): CGI, WSGI and Rack servers read `x_user` and `x-user`
    /// as one name, so such a header could stand in for one the sidecar checked or set.
    #[default]
    Drop,
    /// The request is refused with 400.
    Reject,
    /// Forwarded. Even then, any spelling of a header the sidecar sets or strips (identity
    /// headers, the end-user token's header) is removed.
    Allow,
}

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

    /// Close client connections that have had no request in flight for this long (HTTP/1
    /// keep-alive and HTTP/2 alike; HTTP/2 gets a GOAWAY).
    #[arg(long, env = "PALISADE_IDLE_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

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
    /// other operation are always recorded). 1 records every publish.
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

impl Config {
    /// Threads serving traffic: `--cores`, or the CPUs available to this process.
    pub fn worker_threads(&self) -> usize {
        self.cores.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        })
    }

    /// Every problem with the configuration, or nothing.
    pub fn validate(&self) -> Result<(), Vec<String>> {
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
        match palisade_contract::amqp_url::AmqpUrl::parse(&self.amqp_upstream) {
            Err(why) => problems.push(format!("--amqp-upstream {why}")),
            Ok(url) if url.tls && self.amqp_ca_bundle.is_none() => {
                problems.push("an amqps:// --amqp-upstream needs --amqp-ca-bundle".into());
            }
            Ok(_) => {}
        }
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
        if self.max_backoff < Duration::from_millis(100) {
            problems.push("--max-backoff must be at least 100ms".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        ])
        .unwrap();
        let problems = c.validate().unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:#?}");
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

    #[test]
    fn tcp_outbound_flag() {
        assert_eq!(
            "127.0.0.1:15432=db.shop:5432".parse::<TcpOutbound>(),
            Ok(TcpOutbound {
                listen: "127.0.0.1:15432".parse().unwrap(),
                service: "db.shop".into(),
                port: 5432
            })
        );
        for bad in [
            "db:5432",
            "127.0.0.1:1=db",
            "127.0.0.1:1=:5432",
            "x=db:5432",
            "127.0.0.1:1=db:0",
        ] {
            assert!(bad.parse::<TcpOutbound>().is_err(), "{bad}");
        }
    }
}
