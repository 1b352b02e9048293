//! The peer: two nginx instances doing the sidecars' two-hop job. The outbound one takes
//! the client's plaintext request (HTTP/1.1, or HTTP/2 with prior knowledge on a second
//! port) and originates mTLS with a client certificate over pooled keep-alive connections;
//! the inbound one terminates TLS, requires a client certificate chaining to the CA,
//! checks its subject (the nearest nginx has to an identity check without scripting),
//! writes a buffered access-log line per request, and forwards to the application over
//! pooled keep-alive connections.
//!
//! nginx checks names by DNS SAN and subject, not by SPIFFE URI, so it gets its own small
//! PKI (P-256, like Palisade's), generated here with rcgen. Both use TLS 1.3 only.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::mesh::Procs;

/// Where the nginx pair listens.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// Outbound, HTTP/1.1 from the client.
    pub out_http1: SocketAddr,
    /// Outbound, HTTP/2 (prior knowledge) from the client.
    pub out_http2: SocketAddr,
    /// Inbound, mTLS from the outbound nginx.
    pub inbound: SocketAddr,
}

/// The name the outbound nginx expects on the inbound one's certificate.
const SERVER_NAME: &str = "payments.shop.svc";
/// The subject the inbound nginx allows.
const CLIENT_SUBJECT: &str = "CN=orders.shop";

/// Finds nginx: `$PALISADE_BENCH_NGINX`, then the PATH, then Debian's /usr/sbin.
pub fn find() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PALISADE_BENCH_NGINX") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
}

fn write_pki(dir: &Path) -> anyhow::Result<()> {
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, "bench nginx CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    std::fs::write(dir.join("ca.pem"), ca_cert.pem())?;
    let issuer = Issuer::new(ca, ca_key);
    for (name, cn, san, purpose) in [
        (
            "server",
            "payments.shop",
            SanType::DnsName(SERVER_NAME.try_into()?),
            ExtendedKeyUsagePurpose::ServerAuth,
        ),
        (
            "client",
            "orders.shop",
            SanType::URI("spiffe://palisade.local/ns/shop/sa/orders".try_into()?),
            ExtendedKeyUsagePurpose::ClientAuth,
        ),
    ] {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut leaf = CertificateParams::default();
        leaf.distinguished_name = DistinguishedName::new();
        leaf.distinguished_name.push(DnType::CommonName, cn);
        leaf.subject_alt_names = vec![san];
        leaf.is_ca = IsCa::ExplicitNoCa;
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![purpose];
        let cert = leaf.signed_by(&key, &issuer)?;
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem())?;
        std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem())?;
    }
    Ok(())
}

/// The parts both instances share: foreground, one worker per core (as the sidecars get
/// one runtime thread per core), temp paths inside the instance's own folder.
fn preamble(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "daemon off;\nmaster_process on;\nworker_processes auto;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\nevents {{ worker_connections 4096; }}\nhttp {{\n\
         client_body_temp_path {d}/body;\nproxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\nuwsgi_temp_path {d}/uwsgi;\nscgi_temp_path {d}/scgi;\n\
         keepalive_requests 1000000;\nkeepalive_timeout 300s;\n\
         ssl_protocols TLSv1.3;\n"
    )
}

/// Starts the pair in `dir`; the inbound forwards to `app`. Returns the pids of both
/// masters (their workers are their children).
pub fn start(
    procs: &mut Procs,
    nginx: &Path,
    dir: &Path,
    app: SocketAddr,
    ports: Ports,
) -> anyhow::Result<[u32; 2]> {
    let pki = dir.join("pki");
    std::fs::create_dir_all(&pki)?;
    write_pki(&pki)?;
    let p = |f: &str| pki.join(f).display().to_string();

    let inbound_dir = dir.join("inbound");
    std::fs::create_dir_all(&inbound_dir)?;
    let inbound_conf = format!(
        "{}upstream app {{ server {app}; keepalive 64; keepalive_requests 1000000; }}\n\
         log_format bench '$time_iso8601 $request_id $ssl_client_s_dn $request_method $uri $status';\n\
         server {{\n  listen {} ssl;\n  ssl_certificate {};\n  ssl_certificate_key {};\n\
         ssl_client_certificate {};\n  ssl_verify_client on;\n\
         access_log {}/access.log bench buffer=256k flush=1s;\n\
         if ($ssl_client_s_dn != \"{CLIENT_SUBJECT}\") {{ return 403; }}\n\
         location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n}}\n}}\n",
        preamble(&inbound_dir),
        ports.inbound,
        p("server.pem"),
        p("server-key.pem"),
        p("ca.pem"),
        inbound_dir.display(),
    );
    let outbound_dir = dir.join("outbound");
    std::fs::create_dir_all(&outbound_dir)?;
    let outbound_conf = format!(
        "{}access_log off;\n\
         upstream inbound {{ server {}; keepalive 64; keepalive_requests 1000000; }}\n\
         server {{\n  listen {};\n  listen {} http2;\n\
         location / {{\n    proxy_pass https://inbound;\n    proxy_http_version 1.1;\n\
         proxy_set_header Connection \"\";\n    proxy_ssl_certificate {};\n\
         proxy_ssl_certificate_key {};\n    proxy_ssl_trusted_certificate {};\n\
         proxy_ssl_verify on;\n    proxy_ssl_name {SERVER_NAME};\n    proxy_ssl_server_name on;\n\
         proxy_ssl_protocols TLSv1.3;\n    proxy_ssl_session_reuse on;\n  }}\n}}\n}}\n",
        preamble(&outbound_dir),
        ports.inbound,
        ports.out_http1,
        ports.out_http2,
        p("client.pem"),
        p("client-key.pem"),
        p("ca.pem"),
    );
    let mut pids = [0; 2];
    for (i, (name, conf_dir, conf)) in [
        ("nginx-inbound", &inbound_dir, inbound_conf),
        ("nginx-outbound", &outbound_dir, outbound_conf),
    ]
    .into_iter()
    .enumerate()
    {
        let file = conf_dir.join("nginx.conf");
        std::fs::write(&file, conf)?;
        let check = std::process::Command::new(nginx)
            .arg("-t")
            .arg("-q")
            .arg("-p")
            .arg(conf_dir)
            .arg("-c")
            .arg(&file)
            .output()
            .with_context(|| format!("running {}", nginx.display()))?;
        if !check.status.success() {
            anyhow::bail!(
                "{name}: nginx refused its configuration: {}",
                String::from_utf8_lossy(&check.stderr)
            );
        }
        pids[i] = procs.spawn(
            name,
            nginx,
            &[
                "-p".into(),
                conf_dir.display().to_string(),
                "-c".into(),
                file.display().to_string(),
            ],
            &conf_dir.join("stderr.log"),
        )?;
    }
    Ok(pids)
}
