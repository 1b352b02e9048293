//! The broker connection: TCP, or TLS checked against `--amqp-ca-bundle`, and its writer.

use std::sync::Arc;

use palisade_contract::amqp_url::AmqpUrl;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter, WriteHalf};

use super::{Amqp, AmqpError, HANDSHAKE_TIMEOUT};
use crate::audit::AuditLog;

/// The connection to the broker: TCP, or TLS over it.
pub(super) trait BrokerIo: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> BrokerIo for T {}

pub(super) type BrokerStream = Box<dyn BrokerIo>;

/// Where and how the sidecar reaches the broker.
#[derive(Clone)]
pub struct Upstream {
    pub addr: String,
    /// The host name the broker's certificate must carry (amqps).
    pub host: String,
    pub vhost: String,
    pub username: String,
    pub password: String,
    /// For `amqps://`: the TLS client configuration (roots from `--amqp-ca-bundle`).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("Upstream")
            .field("addr", &self.addr)
            .field("vhost", &self.vhost)
            .field("username", &self.username)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// A TLS client configuration trusting the PEM roots in `ca_pem` (for `amqps://`).
pub fn broker_tls(ca_pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = palisade_contract::certs::certs_from_pem(ca_pem).map_err(|e| e.to_string())?;
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| format!("a root was refused: {e}"))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

impl Upstream {
    /// From a parsed `amqp://user:pass@host:port/vhost` or `amqps://...` URL (see
    /// [`palisade_contract::amqp_url`]). `password` (from a file) replaces the URL's;
    /// `ca_pem` holds the roots an `amqps://` broker's certificate must chain to.
    pub fn new(
        url: AmqpUrl,
        password: Option<String>,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, String> {
        let tls = match (url.tls, ca_pem) {
            (false, _) => None,
            (true, Some(pem)) => Some(broker_tls(pem)?),
            (true, None) => return Err("an amqps:// upstream needs --amqp-ca-bundle".into()),
        };
        Ok(Upstream {
            addr: url.addr(),
            host: url.host,
            vhost: url.vhost,
            username: url.username,
            password: password.unwrap_or(url.password),
            tls,
        })
    }
}

/// The broker socket's writer in the relay. Its errors are [`AmqpError::BrokerLost`]: the
/// leg that writes there also reads the application, and only a failure here means the
/// broker (not the application) went away.
///
/// It holds what it buffered until the decisions that let it through are in the decision
/// spool ([`ToBroker::owe`]): no byte leaves for the broker before the line of the
/// decision that allowed it reached the kernel, yet the publishes read together wait for
/// one write of the spool, not one each.
pub(super) struct ToBroker {
    /// Made with [`super::IO_BUFFER`] of room.
    out: BufWriter<WriteHalf<BrokerStream>>,
    audit: AuditLog,
    /// The spool lines that must be written before the buffer may leave.
    owed: Option<u64>,
}

impl ToBroker {
    pub(super) fn new(out: BufWriter<WriteHalf<BrokerStream>>, audit: AuditLog) -> Self {
        Self {
            out,
            audit,
            owed: None,
        }
    }

    /// What is buffered from now on leaves only once the spool holds `through` lines.
    pub(super) fn owe(&mut self, through: Option<u64>) {
        if let Some(t) = through {
            self.owed = Some(self.owed.map_or(t, |o| o.max(t)));
        }
    }

    async fn settle(&mut self) {
        if let Some(through) = self.owed {
            self.audit.settle(through).await;
            // Only now: a wait given up half-way owes the same lines again.
            self.owed = None;
        }
    }

    pub(super) async fn write_all(&mut self, bytes: &[u8]) -> Result<(), AmqpError> {
        // A write that does not fit the buffer sends it (or goes straight to the socket).
        if self.out.buffer().len() + bytes.len() > super::IO_BUFFER {
            self.settle().await;
        }
        self.out
            .write_all(bytes)
            .await
            .map_err(AmqpError::BrokerLost)
    }

    pub(super) async fn flush(&mut self) -> Result<(), AmqpError> {
        if !self.out.buffer().is_empty() {
            self.settle().await;
        }
        self.out.flush().await.map_err(AmqpError::BrokerLost)
    }
}

impl Amqp {
    /// TCP, and TLS for an `amqps://` upstream (the broker's certificate checked against
    /// `--amqp-ca-bundle` for the URL's host name).
    pub(super) async fn connect_broker(&self) -> Result<BrokerStream, AmqpError> {
        let unreachable = |e| AmqpError::Upstream(self.upstream.addr.clone(), e);
        let tcp = crate::net::connect(self.upstream.addr.as_str(), self.connect_timeout)
            .await
            .map_err(unreachable)?;
        let Some(tls) = &self.upstream.tls else {
            return Ok(Box::new(tcp));
        };
        let name = rustls_pki_types::ServerName::try_from(self.upstream.host.clone())
            .map_err(|e| unreachable(std::io::Error::other(e)))?;
        let stream = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp),
        )
        .await
        .map_err(|_| unreachable(std::io::ErrorKind::TimedOut.into()))?
        .map_err(unreachable)?;
        Ok(Box::new(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> AmqpUrl {
        AmqpUrl::parse(s).unwrap()
    }

    /// What the relay buffered for the broker leaves only once the decisions that allowed
    /// it are in the spool: while the spool's writer is not running nothing reaches the
    /// broker, and a flush then sends the frames and their lines are in the segment.
    #[tokio::test]
    async fn frames_for_the_broker_wait_for_the_lines_they_owe() {
        use crate::decision_log::{DecisionLogSettings, DecisionShip, Overflow, Spool};
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir().unwrap();
        let registry = prometheus::Registry::new();
        let metrics = crate::metrics::ProxyMetrics::register(&registry).unwrap();
        let settings = DecisionLogSettings {
            dir: dir.path().to_owned(),
            fsync_interval: std::time::Duration::from_secs(1),
            checkpoint_interval: std::time::Duration::from_secs(3600),
            ship: DecisionShip::Off,
            spool_max: 1 << 30,
            overflow: Overflow::Refuse,
            segment_max: crate::decision_log::SEGMENT_BYTES,
        };
        let spool = Spool::open(
            settings,
            palisade_contract::tls::IdentitySlot::new(),
            metrics.spool.clone(),
        )
        .unwrap();
        let audit = AuditLog::start(
            crate::audit::AuditTarget::File(dir.path().join("audit.jsonl")),
            metrics.audit_dropped.clone(),
        )
        .await
        .unwrap()
        .with_spool(spool.clone());
        let (near, mut far) = tokio::io::duplex(64 * 1024);
        let (_, write) = tokio::io::split(Box::new(near) as BrokerStream);
        let mut broker = ToBroker::new(
            BufWriter::with_capacity(super::super::IO_BUFFER, write),
            audit.clone(),
        );
        let mut owed = None;
        for i in 0..3 {
            let event = crate::audit::AuditEvent::begin("outbound", "amqp");
            owed = audit.decided_owed(&event);
            broker.owe(owed);
            broker
                .write_all(format!("publish {i};").as_bytes())
                .await
                .unwrap();
        }
        assert_eq!(owed, Some(3), "three lines owed");
        let flushed =
            tokio::time::timeout(std::time::Duration::from_millis(200), broker.flush()).await;
        assert!(
            flushed.is_err(),
            "frames left before their decisions were written"
        );
        let mut got = [0u8; 64];
        let read =
            tokio::time::timeout(std::time::Duration::from_millis(50), far.read(&mut got)).await;
        assert!(
            read.is_err(),
            "the broker got bytes before the decisions were written"
        );
        let mut tasks = palisade_contract::process::Tasks::new();
        let writer = spool.clone();
        tasks.spawn(|stop| writer.run(stop));
        broker.flush().await.unwrap();
        let segment = dir
            .path()
            .join(palisade_contract::decisions::segment_name(0));
        let lines = std::fs::read_to_string(&segment).unwrap().lines().count();
        assert_eq!(lines, 3);
        let n = far.read(&mut got).await.unwrap();
        assert_eq!(&got[..n], b"publish 0;publish 1;publish 2;");
        tasks.shutdown().await;
    }

    #[test]
    fn upstream_urls() {
        let u = Upstream::new(url("amqp://app:s%3Acret@rabbit:5673/%2f"), None, None).unwrap();
        assert_eq!((u.addr.as_str(), u.vhost.as_str()), ("rabbit:5673", "/"));
        assert_eq!(
            (u.username.as_str(), u.password.as_str()),
            ("app", "s:cret")
        );
        let u = Upstream::new(url("amqp://rabbit/shop"), Some("from-file".into()), None).unwrap();
        assert_eq!(
            (u.addr.as_str(), u.vhost.as_str(), u.password.as_str()),
            ("rabbit:5672", "shop", "from-file")
        );
        assert!(
            !format!("{u:?}").contains("from-file"),
            "the password is never printed"
        );
        assert!(
            Upstream::new(url("amqps://x"), None, None)
                .unwrap_err()
                .contains("--amqp-ca-bundle")
        );
    }
}
