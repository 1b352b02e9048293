//! The AMQP 0-9-1 proxy: the application talks to its sidecar as if it were RabbitMQ; the
//! sidecar logs in to the real broker with its own credentials and authorizes every
//! operation before the broker sees it.
//!
//! Frames are read with their 7-byte header first, so a frame larger than the negotiated
//! `frame_max` is refused before its payload is buffered; they are parsed with amq-protocol's
//! codec, and forwarded as the original bytes unless changed (the login, and the content
//! header of an allowed publish, which gets `x-palisade-publisher`).
//!
//! Each socket has exactly one writer: the task that reads the other socket. A frame the
//! sidecar makes for a socket (a channel close, a close-ok) is handed to that writer, which
//! sends it between frames and never inside a content sequence of the same channel.
//!
//! A denied operation closes only its channel, as RabbitMQ does: `channel.close 403
//! ACCESS_REFUSED` (with the class and method of the refused operation) toward the
//! application, `channel.close 200` toward the broker, the refused publish's content
//! swallowed, every frame of that channel dropped until each side's `close-ok` (a crossing
//! `close` is answered with `close-ok`), and frames for a channel re-opened with the same
//! number held until the broker has confirmed the close. Other channels carry on.
//!
//! The pieces, in the order a connection meets them: `upstream.rs` (the broker
//! connection), `frames.rs`, `handshake.rs` (credentials and vhost), `relay.rs` (the two
//! legs), `tables.rs` and `authz.rs` (what an operation does, and whether it may),
//! `closing.rs` (a channel closed after a denial), `stamping.rs` and `provenance.rs` (who
//! published a message).

mod authz;
mod closing;
mod frames;
mod handshake;
pub mod provenance;
mod relay;
mod stamping;
pub mod tables;
mod upstream;

pub use authz::{Op, check_routing_types, operations};
pub use frames::PROTOCOL_HEADER;
pub use upstream::{Upstream, broker_tls};

use crate::audit::{AmqpAudit, AuditEvent, AuditLog};
use crate::identity::IdentityManager;
use crate::metrics::ProxyMetrics;
use crate::policies::Policies;
use crate::runtime::ProxyRuntime;
use arc_swap::ArcSwap;
use palisade_contract::SpiffeId;
use palisade_contract::amqp_url::AmqpUrl;
use palisade_contract::process::accept;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

use frames::{FrameReader, IO_BUFFER, connection_close};
use upstream::BrokerStream;

/// Time allowed for the protocol header and the login.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the leg reading from the broker gets to report a broker that the writing leg
/// found gone (a failed write means the connection was reset, so its read fails at once).
const BROKER_LOST_GRACE: Duration = Duration::from_secs(1);

/// How long an application that has been sent connection.close gets to acknowledge it
/// before its socket is closed anyway.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The header the sidecar sets on every publish it allows.
pub const PUBLISHER_HEADER: &str = "x-palisade-publisher";

/// AMQP reply codes used here.
mod reply {
    pub const SUCCESS: u16 = 200;
    pub const CONNECTION_FORCED: u16 = 320;
    pub const ACCESS_REFUSED: u16 = 403;
    pub const NOT_ALLOWED: u16 = 530;
    pub const RESOURCE_ERROR: u16 = 506;
    pub const FRAME_ERROR: u16 = 501;
    pub const SYNTAX_ERROR: u16 = 502;
    pub const COMMAND_INVALID: u16 = 503;
    pub const UNEXPECTED_FRAME: u16 = 505;
}

/// The AMQP proxy's part of the configuration.
#[derive(Debug, Clone)]
pub struct AmqpSettings {
    /// Where the application connects, as if to RabbitMQ.
    pub listen: SocketAddr,
    /// The real broker, parsed once (`--amqp-upstream`).
    pub upstream: AmqpUrl,
    /// Replaces the URL's password.
    pub password_file: Option<PathBuf>,
    /// The roots an `amqps://` broker's certificate must chain to.
    pub ca_bundle: Option<PathBuf>,
    /// The service policies select this workload by (as for the inbound path).
    pub service: Option<String>,
    pub provenance: ProvenanceSettings,
    /// Record one allowed publish in this many (denials and other operations always).
    pub audit_sample: u64,
    /// Longest wait for the TCP connection to the broker.
    pub connect_timeout: Duration,
}

/// Everything the AMQP path needs; shared by all connections.
pub struct Amqp {
    pub identity: Arc<IdentityManager>,
    pub policies: Arc<ArcSwap<Policies>>,
    pub service: Option<String>,
    pub upstream: Upstream,
    pub audit: AuditLog,
    pub metrics: ProxyMetrics,
    pub provenance: ProvenanceSettings,
    /// Record one allowed publish in this many (denials and other operations always).
    pub audit_sample: u64,
    pub allowed_publishes: std::sync::atomic::AtomicU64,
    connect_timeout: Duration,
}

impl Amqp {
    /// Reads the broker password and roots the settings name, and builds the upstream.
    pub fn new(settings: AmqpSettings, runtime: &ProxyRuntime) -> anyhow::Result<Self> {
        use anyhow::Context;
        let password = match &settings.password_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("reading --amqp-password-file {}", p.display()))?
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
            ),
            None => None,
        };
        let ca = match &settings.ca_bundle {
            Some(p) => Some(
                std::fs::read(p)
                    .with_context(|| format!("reading --amqp-ca-bundle {}", p.display()))?,
            ),
            None => None,
        };
        let upstream = Upstream::new(settings.upstream, password, ca.as_deref())
            .map_err(|e| anyhow::anyhow!("--amqp-upstream: {e}"))?;
        Ok(Self {
            identity: runtime.identity.clone(),
            policies: runtime.policies.clone(),
            service: settings.service,
            upstream,
            audit: runtime.audit.clone(),
            metrics: runtime.metrics.clone(),
            provenance: settings.provenance,
            audit_sample: settings.audit_sample,
            allowed_publishes: std::sync::atomic::AtomicU64::new(0),
            connect_timeout: settings.connect_timeout,
        })
    }
}

/// Publisher provenance ([`provenance`]), switchable per sidecar.
#[derive(Debug, Clone)]
pub struct ProvenanceSettings {
    /// Sign the messages this workload publishes.
    pub sign: bool,
    /// Verify the messages this workload receives (and strip what does not verify).
    pub verify: bool,
    /// Messages larger than this are passed on unsigned / unverified (they would have to
    /// be held whole), and counted.
    pub max_message_bytes: u64,
    /// Oldest signature accepted.
    pub max_age: Duration,
}

impl std::fmt::Debug for Amqp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Amqp")
            .field("upstream", &self.upstream.addr)
            .finish_non_exhaustive()
    }
}

/// Serves the application's AMQP connections until `shutdown` resolves.
pub async fn serve(listener: TcpListener, amqp: Arc<Amqp>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    while let Some((client, addr)) = accept(&listener, &mut shutdown, "amqp").await {
        let amqp = amqp.clone();
        tokio::spawn(async move {
            let _open = amqp.metrics.open_connection("amqp");
            if let Err(e) = amqp.connection(client).await {
                tracing::debug!(peer = %addr, error = %e, "AMQP connection ended");
            }
        });
    }
}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Writing to the broker failed: it went away while the application was sending.
    #[error("the broker connection was lost: {0}")]
    BrokerLost(std::io::Error),
    #[error("{text}")]
    Protocol { code: u16, text: String },
    #[error("the broker at {0} is unreachable: {1}")]
    Upstream(String, std::io::Error),
    #[error("the handshake took too long")]
    Timeout,
}

fn protocol(code: u16, text: impl Into<String>) -> AmqpError {
    AmqpError::Protocol {
        code,
        text: text.into(),
    }
}

/// Both sockets of a proxied connection, each way buffered.
struct Legs {
    client_r: FrameReader<OwnedReadHalf>,
    client_w: BufWriter<OwnedWriteHalf>,
    broker_r: FrameReader<ReadHalf<BrokerStream>>,
    broker_w: BufWriter<WriteHalf<BrokerStream>>,
}

/// A frame made by the sidecar, for the writer of one socket.
enum Inject {
    /// For the application, on a channel (sent when that channel is not mid-content).
    ToClient(u16, Vec<u8>),
    /// For the broker: frames the broker-side close-ok released.
    ToBroker(Vec<u8>),
    /// A connection.close for the application: the last frame it is sent.
    Close(Vec<u8>),
}

impl Amqp {
    fn service_name(&self, own: Option<&SpiffeId>) -> String {
        crate::policies::service_name(self.service.as_deref(), own)
    }

    async fn connection(self: &Arc<Self>, mut client: TcpStream) -> Result<(), AmqpError> {
        let mut header = [0u8; 8];
        tokio::time::timeout(HANDSHAKE_TIMEOUT, client.read_exact(&mut header))
            .await
            .map_err(|_| AmqpError::Timeout)??;
        if &header != PROTOCOL_HEADER {
            // The spec's answer: the header we speak, then close.
            let _ = client.write_all(PROTOCOL_HEADER).await;
            let _ = client.shutdown().await;
            // Read what the client sent on, so closing does not reset the connection before
            // it has read the header.
            let mut sink = [0u8; 4096];
            let drain = async { while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {} };
            let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
            self.record_error(None, "the client does not speak AMQP 0-9-1")
                .await;
            return Ok(());
        }
        let mut broker = self.connect_broker().await?;
        broker.write_all(PROTOCOL_HEADER).await?;
        let (client_r, client_w) = client.into_split();
        let (broker_r, broker_w) = tokio::io::split(broker);
        let mut legs = Legs {
            client_r: FrameReader::new(client_r),
            client_w: BufWriter::with_capacity(IO_BUFFER, client_w),
            broker_r: FrameReader::new(broker_r),
            broker_w: BufWriter::with_capacity(IO_BUFFER, broker_w),
        };
        let negotiated = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.handshake(&mut legs))
            .await
            .map_err(|_| AmqpError::Timeout)?;
        let (frame_max, vhost) = match negotiated {
            Ok(Some(n)) => n,
            Ok(None) => return Ok(()),
            Err(e) => {
                self.fail(&mut legs.client_w, &e).await;
                return Err(e);
            }
        };
        // No new connection the decision log cannot hold (--decision-overflow refuse).
        if !self.audit.admits() {
            let e = protocol(reply::NOT_ALLOWED, crate::decision_log::LOG_FULL);
            self.fail(&mut legs.client_w, &e).await;
            return Err(e);
        }
        self.relay(legs, frame_max, vhost).await
    }

    /// Tells the application why its connection ends, and records it.
    async fn fail<W: AsyncWrite + Unpin>(&self, client: &mut W, e: &AmqpError) {
        if let AmqpError::Protocol { code, text } = e {
            let _ = client.write_all(&connection_close(*code, text)).await;
            let _ = client.flush().await;
        }
        self.record_error(None, &e.to_string()).await;
    }

    async fn record_error(&self, channel: Option<u16>, reason: &str) {
        let own = self.identity.spiffe_id();
        let mut event = AuditEvent::begin("outbound", "amqp");
        event.source = own.as_ref().map(ToString::to_string);
        event.destination = self.upstream.addr.clone();
        event.reason = Some(reason.to_owned());
        event.amqp = Some(AmqpAudit {
            channel,
            ..AmqpAudit::default()
        });
        self.audit.decided(&event).await;
    }
}
