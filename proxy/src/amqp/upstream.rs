//! The broker connection: TCP, or TLS checked against `--amqp-ca-bundle`, and its writer.

use std::sync::Arc;

use palisade_contract::amqp_url::AmqpUrl;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter, WriteHalf};

use super::{Amqp, AmqpError, HANDSHAKE_TIMEOUT};

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
pub(super) struct ToBroker(pub(super) BufWriter<WriteHalf<BrokerStream>>);

impl ToBroker {
    pub(super) async fn write_all(&mut self, bytes: &[u8]) -> Result<(), AmqpError> {
        self.0.write_all(bytes).await.map_err(AmqpError::BrokerLost)
    }

    pub(super) async fn flush(&mut self) -> Result<(), AmqpError> {
        self.0.flush().await.map_err(AmqpError::BrokerLost)
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
