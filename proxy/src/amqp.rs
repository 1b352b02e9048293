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

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame, WriteContext, gen_frame, parse_frame};
use amq_protocol::protocol::{AMQPClass, basic, channel, connection, exchange, queue};
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use arc_swap::ArcSwap;
use bytes::BytesMut;
use palisade_contract::SpiffeId;
use palisade_contract::amqp_url::AmqpUrl;
use palisade_contract::policy::{AmqpRequest, Request, Verdict, Workload};
use palisade_contract::process::accept;
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter, ReadHalf, WriteHalf,
};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::audit::{AmqpAudit, AuditEvent, AuditLog};
use crate::identity::IdentityManager;
use crate::metrics::ProxyMetrics;
use crate::policies::Policies;
use crate::provenance;

/// AMQP 0-9-1's protocol header.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
const FRAME_END: u8 = 0xCE;
/// Largest frame accepted before `tune` has negotiated one (RabbitMQ's default frame_max).
const INITIAL_FRAME_MAX: u32 = 128 * 1024;
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
    pub const FRAME_ERROR: u16 = 501;
    pub const SYNTAX_ERROR: u16 = 502;
    pub const COMMAND_INVALID: u16 = 503;
    pub const UNEXPECTED_FRAME: u16 = 505;
}

/// The connection to the broker: TCP, or TLS over it.
trait BrokerIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> BrokerIo for T {}
type BrokerStream = Box<dyn BrokerIo>;

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
    /// From `amqp://user:pass@host:port/vhost` or `amqps://...` (see
    /// [`palisade_contract::amqp_url`]). `password` (from a file) replaces the URL's;
    /// `ca_pem` holds the roots an `amqps://` broker's certificate must chain to.
    pub fn parse(
        url: &str,
        password: Option<String>,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, String> {
        let url = AmqpUrl::parse(url)?;
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
}

/// Publisher provenance ([`crate::provenance`]), switchable per sidecar.
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

/// A content sequence from the application in progress on one channel.
struct Outgoing {
    remaining: u64,
    /// With signing: everything held until the body is complete.
    held: Option<Held>,
}

/// A message held whole: its method, header and body frames, and the running body hash.
struct Held {
    method: Vec<u8>,
    header: Option<AMQPContentHeader>,
    exchange: String,
    routing_key: String,
    bodies: Vec<Vec<u8>>,
    hash: ring::digest::Context,
    remaining: u64,
}

impl Held {
    /// The message with its header restamped by `headers` (given the header, exchange,
    /// routing key and body hash), ready to write.
    fn finish(
        self,
        ch: u16,
        headers: impl FnOnce(&AMQPContentHeader, &str, &str, &[u8]) -> Vec<(&'static str, String)>,
    ) -> Vec<u8> {
        let header = self.header.expect("held after its header");
        let digest = self.hash.finish();
        let set = headers(&header, &self.exchange, &self.routing_key, digest.as_ref());
        let mut out = self.method;
        out.extend(restamp(ch, &header, &set));
        for b in self.bodies {
            out.extend(b);
        }
        out
    }

    fn new(method: Vec<u8>, exchange: String, routing_key: String) -> Self {
        Held {
            method,
            header: None,
            exchange,
            routing_key,
            bodies: Vec::new(),
            hash: ring::digest::Context::new(&ring::digest::SHA256),
            remaining: 0,
        }
    }
}

/// The header frame with `set` added and the provenance headers an application could forge
/// removed.
fn restamp(ch: u16, header: &AMQPContentHeader, set: &[(&str, String)]) -> Vec<u8> {
    let mut headers = header.properties.headers().clone().unwrap_or_default();
    let mut kept = FieldTable::default();
    for (k, v) in headers.inner() {
        if !is_reserved_header(k.as_str()) {
            kept.insert(k.clone(), v.clone());
        }
    }
    headers = kept;
    for (k, v) in set {
        headers.insert(
            ShortString::from(*k),
            AMQPValue::LongString(LongString::from(v.clone().into_bytes())),
        );
    }
    encode(&AMQPFrame::Header(
        ch,
        AMQPContentHeader {
            class_id: header.class_id,
            body_size: header.body_size,
            properties: header.properties.clone().with_headers(headers),
        },
    ))
}

/// Whether a message header name is, in any spelling, one of the `x-palisade-` names the
/// sidecars set ([`PUBLISHER_HEADER`], the signature, the verified publisher). Field-table
/// keys are case-sensitive in AMQP, but applications look headers up loosely
/// (`X-Palisade-Verified-Publisher`, `x_palisade_verified_publisher`), so the whole prefix is
/// reserved with case and `_`/`-` folded.
fn is_reserved_header(name: &str) -> bool {
    const PREFIX: &[u8] = b"x-palisade-";
    name.len() >= PREFIX.len()
        && name.as_bytes()[..PREFIX.len()]
            .iter()
            .zip(PREFIX)
            .all(|(a, b)| a.to_ascii_lowercase() == *b || (*a == b'_' && *b == b'-'))
}

fn header_text(header: &AMQPContentHeader, name: &str) -> Option<String> {
    match header.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(v) => String::from_utf8(v.as_bytes().to_vec()).ok(),
        AMQPValue::ShortString(v) => Some(v.as_str().to_owned()),
        _ => None,
    }
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

/// One frame: its parsed form and its original bytes.
struct Frame {
    parsed: AMQPFrame,
    raw: Vec<u8>,
}

/// Bytes asked of the socket per read, and gathered per write.
const IO_BUFFER: usize = 64 * 1024;

/// The frames of one socket, read through a buffer. One read brings every frame that has
/// arrived (a publish is three frames; the profile showed three system calls per frame
/// when each frame was read field by field), and reading is cancel-safe: a frame half
/// read when a `select!` takes another branch stays in the buffer for the next call.
struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            buf: BytesMut::with_capacity(IO_BUFFER),
        }
    }

    /// Whether a whole frame is already buffered: the writer need not flush before the
    /// next frame is handled, so frames that arrived together leave together.
    fn has_frame(&self) -> bool {
        self.buf.len() >= 7
            && self.buf.len()
                >= u32::from_be_bytes([self.buf[3], self.buf[4], self.buf[5], self.buf[6]]) as usize
                    + 8
    }

    /// The next frame, refusing one larger than `frame_max` before its payload is read.
    /// `Ok(None)` on a clean end of stream between frames.
    async fn next(&mut self, frame_max: u32) -> Result<Option<Frame>, AmqpError> {
        loop {
            if let Some(frame) = self.take(frame_max)? {
                return Ok(Some(frame));
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(IO_BUFFER);
            }
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into())
                };
            }
        }
    }

    /// A whole frame from the buffer, if there is one.
    fn take(&mut self, frame_max: u32) -> Result<Option<Frame>, AmqpError> {
        let Some(&kind) = self.buf.first() else {
            return Ok(None);
        };
        if !matches!(kind, 1..=4 | 8) {
            return Err(protocol(
                reply::FRAME_ERROR,
                format!("FRAME_ERROR - unknown frame type {kind}"),
            ));
        }
        if self.buf.len() < 7 {
            return Ok(None);
        }
        let size = u32::from_be_bytes([self.buf[3], self.buf[4], self.buf[5], self.buf[6]]);
        // frame_max counts the whole frame: 7 bytes of header and the end octet.
        if frame_max != 0 && size.saturating_add(8) > frame_max {
            return Err(protocol(
                reply::FRAME_ERROR,
                format!("FRAME_ERROR - frame of {size} bytes exceeds frame_max {frame_max}"),
            ));
        }
        let total = size as usize + 8;
        if self.buf.len() < total {
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        let raw = self.buf.split_to(total).to_vec();
        if raw[total - 1] != FRAME_END {
            return Err(protocol(
                reply::FRAME_ERROR,
                "FRAME_ERROR - frame does not end with 0xCE",
            ));
        }
        match parse_frame(&raw[..]) {
            Ok((_, parsed)) => Ok(Some(Frame { parsed, raw })),
            Err(_) => Err(protocol(
                reply::SYNTAX_ERROR,
                "SYNTAX_ERROR - a frame could not be decoded",
            )),
        }
    }
}

fn encode(frame: &AMQPFrame) -> Vec<u8> {
    match gen_frame(frame)(WriteContext::from(Vec::new())) {
        Ok(ctx) => ctx.write,
        Err(e) => {
            // Only frames built here are encoded; they are small and well-formed.
            tracing::error!(error = ?e, "encoding an AMQP frame failed");
            Vec::new()
        }
    }
}

fn channel_close(ch: u16, code: u16, text: &str, class_id: u16, method_id: u16) -> Vec<u8> {
    encode(&AMQPFrame::Method(
        ch,
        AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
            reply_code: code,
            reply_text: ShortString::from(text),
            class_id,
            method_id,
        })),
    ))
}

fn channel_close_ok(ch: u16) -> Vec<u8> {
    encode(&AMQPFrame::Method(
        ch,
        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
    ))
}

fn connection_close(code: u16, text: &str) -> Vec<u8> {
    encode(&AMQPFrame::Method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: code,
            reply_text: ShortString::from(text.chars().take(250).collect::<String>()),
            class_id: 0,
            method_id: 0,
        })),
    ))
}

/// Where a channel stands after a denial.
#[derive(Debug, Default)]
struct Closing {
    client_close_ok: bool,
    broker_close_ok: bool,
    /// Frames from the application for the channel re-opened before the broker confirmed.
    held: VecDeque<Vec<u8>>,
}

/// What both directions of one connection share: the channels closing after a denial.
#[derive(Debug, Default)]
struct Shared {
    closing: Mutex<HashMap<u16, Closing>>,
    /// How many channels are closing, so that every frame need not take the lock to learn
    /// that none is.
    closing_now: std::sync::atomic::AtomicUsize,
}

impl Shared {
    fn start_closing(&self, ch: u16) {
        let mut closing = self.closing.lock().expect("not poisoned");
        if closing.insert(ch, Closing::default()).is_none() {
            self.closing_now
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
    }

    /// Applies `update` to channel `ch` if it is closing; `None` if it is not. When both
    /// sides have confirmed, the closing ends and its held application frames are returned.
    fn on_closing(
        &self,
        ch: u16,
        update: impl FnOnce(&mut Closing),
    ) -> Option<Option<VecDeque<Vec<u8>>>> {
        if self.closing_now.load(std::sync::atomic::Ordering::Acquire) == 0 {
            return None;
        }
        let mut closing = self.closing.lock().expect("not poisoned");
        let state = closing.get_mut(&ch)?;
        update(state);
        if !(state.client_close_ok && state.broker_close_ok) {
            return Some(None);
        }
        let done = closing.remove(&ch).expect("present");
        self.closing_now
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        Some(Some(done.held))
    }
}

/// The channels open on one connection, counted in a gauge; dropping closes them all.
struct OpenChannels {
    open: std::collections::HashSet<u16>,
    gauge: prometheus::IntGauge,
}

impl OpenChannels {
    fn new(gauge: prometheus::IntGauge) -> Self {
        Self {
            open: std::collections::HashSet::new(),
            gauge,
        }
    }

    fn opened(&mut self, ch: u16) {
        if self.open.insert(ch) {
            self.gauge.inc();
        }
    }

    fn closed(&mut self, ch: u16) {
        if self.open.remove(&ch) {
            self.gauge.dec();
        }
    }
}

impl Drop for OpenChannels {
    fn drop(&mut self) {
        self.gauge.sub(self.open.len() as i64);
    }
}

/// Both sockets of a proxied connection, each way buffered.
struct Legs {
    client_r: FrameReader<OwnedReadHalf>,
    client_w: BufWriter<OwnedWriteHalf>,
    broker_r: FrameReader<ReadHalf<BrokerStream>>,
    broker_w: BufWriter<WriteHalf<BrokerStream>>,
}

/// The broker socket's writer in the relay. Its errors are [`AmqpError::BrokerLost`]: the
/// leg that writes there also reads the application, and only a failure here means the
/// broker (not the application) went away.
struct ToBroker(BufWriter<WriteHalf<BrokerStream>>);

impl ToBroker {
    async fn write_all(&mut self, bytes: &[u8]) -> Result<(), AmqpError> {
        self.0.write_all(bytes).await.map_err(AmqpError::BrokerLost)
    }

    async fn flush(&mut self) -> Result<(), AmqpError> {
        self.0.flush().await.map_err(AmqpError::BrokerLost)
    }
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
            self.record_error(None, "the client does not speak AMQP 0-9-1");
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
        self.relay(legs, frame_max, vhost).await
    }

    /// TCP, and TLS for an `amqps://` upstream (the broker's certificate checked against
    /// `--amqp-ca-bundle` for the URL's host name).
    async fn connect_broker(&self) -> Result<BrokerStream, AmqpError> {
        let unreachable = |e| AmqpError::Upstream(self.upstream.addr.clone(), e);
        let tcp = crate::net::connect(self.upstream.addr.as_str(), HANDSHAKE_TIMEOUT)
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

    /// Relays the login, replacing the application's credentials with the sidecar's.
    /// Returns the negotiated frame_max and the vhost, or `None` when the broker refused.
    async fn handshake(&self, legs: &mut Legs) -> Result<Option<(u32, String)>, AmqpError> {
        let mut frame_max = INITIAL_FRAME_MAX;
        let mut vhost = None;
        let Legs {
            client_r,
            client_w: client,
            broker_r,
            broker_w: broker,
        } = legs;
        loop {
            client.flush().await?;
            broker.flush().await?;
            tokio::select! {
                from_broker = broker_r.next(INITIAL_FRAME_MAX) => {
                    let Some(f) = from_broker? else { return Ok(None) };
                    client.write_all(&f.raw).await?;
                    match f.parsed {
                        AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))) => {
                            client.flush().await?;
                            let vhost = vhost.unwrap_or_else(|| self.upstream.vhost.clone());
                            return Ok(Some((frame_max, vhost)));
                        }
                        AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(_))) => {
                            return Ok(None);
                        }
                        _ => {}
                    }
                }
                from_client = client_r.next(INITIAL_FRAME_MAX) => {
                    let Some(f) = from_client? else { return Ok(None) };
                    match f.parsed {
                        AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::StartOk(ok))) => {
                            // Whatever the application sent as credentials stays here.
                            let response = format!("\0{}\0{}", self.upstream.username, self.upstream.password);
                            let replaced = AMQPFrame::Method(0, AMQPClass::Connection(
                                connection::AMQPMethod::StartOk(connection::StartOk {
                                    client_properties: ok.client_properties,
                                    mechanism: ShortString::from("PLAIN"),
                                    response: LongString::from(response.into_bytes()),
                                    locale: ok.locale,
                                })));
                            broker.write_all(&encode(&replaced)).await?;
                        }
                        AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::TuneOk(t))) => {
                            if t.frame_max != 0 {
                                frame_max = t.frame_max;
                            }
                            broker.write_all(&f.raw).await?;
                        }
                        AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Open(open))) => {
                            let asked = open.virtual_host.as_str();
                            if asked != self.upstream.vhost {
                                return Err(protocol(reply::NOT_ALLOWED, format!(
                                    "NOT_ALLOWED - this sidecar connects to vhost {:?} only", self.upstream.vhost)));
                            }
                            vhost = Some(asked.to_owned());
                            broker.write_all(&f.raw).await?;
                        }
                        _ => broker.write_all(&f.raw).await?,
                    }
                }
            }
        }
    }

    /// Tells the application why its connection ends, and records it.
    async fn fail<W: AsyncWrite + Unpin>(&self, client: &mut W, e: &AmqpError) {
        if let AmqpError::Protocol { code, text } = e {
            let _ = client.write_all(&connection_close(*code, text)).await;
            let _ = client.flush().await;
        }
        self.record_error(None, &e.to_string());
    }

    fn record_error(&self, channel: Option<u16>, reason: &str) {
        let own = self.identity.spiffe_id();
        let mut event = AuditEvent::begin("outbound", "amqp");
        event.source = own.as_ref().map(ToString::to_string);
        event.destination = self.upstream.addr.clone();
        event.reason = Some(reason.to_owned());
        event.amqp = Some(AmqpAudit {
            channel,
            ..AmqpAudit::default()
        });
        self.audit.record(&event);
    }

    async fn relay(
        self: &Arc<Self>,
        legs: Legs,
        frame_max: u32,
        vhost: String,
    ) -> Result<(), AmqpError> {
        let Legs {
            mut client_r,
            client_w,
            broker_r,
            broker_w,
        } = legs;
        let shared = Arc::new(Shared::default());
        let (to_client, to_client_rx) = mpsc::unbounded_channel();
        let (to_broker, to_broker_rx) = mpsc::unbounded_channel();
        let broker_side = {
            let upward = {
                let this = self.clone();
                let shared = shared.clone();
                let to_client = to_client.clone();
                let client_r = &mut client_r;
                async move {
                    this.client_to_broker(
                        client_r,
                        ToBroker(broker_w),
                        frame_max,
                        &vhost,
                        shared,
                        to_client,
                        to_broker_rx,
                    )
                    .await
                }
            };
            let downward = {
                let this = self.clone();
                async move {
                    this.broker_to_client(
                        broker_r,
                        client_w,
                        frame_max,
                        shared,
                        to_client_rx,
                        to_broker,
                    )
                    .await
                }
            };
            tokio::pin!(upward, downward);
            tokio::select! {
                r = &mut upward => match r {
                    // The application's frames found the broker gone. The reading leg sees
                    // the same loss and tells the application in protocol terms
                    // (connection.close 320) and the audit log; it is the only writer of
                    // the application's socket, so it is given the moment to do so.
                    Err(AmqpError::BrokerLost(e)) => {
                        match tokio::time::timeout(BROKER_LOST_GRACE, &mut downward).await {
                            Ok(r) => r,
                            Err(_) => {
                                self.record_error(None, "the broker connection was lost");
                                return Err(AmqpError::BrokerLost(e));
                            }
                        }
                    }
                    // The application broke the protocol: the reading leg writes the
                    // connection.close on its way and ends.
                    Err(e @ AmqpError::Protocol { .. }) => {
                        let _ = tokio::time::timeout(CLOSE_GRACE, &mut downward).await;
                        Err(e)
                    }
                    // The application went away.
                    r => return r,
                },
                r = &mut downward => r,
            }
        };
        // The broker's side is over and the application has its last frames (the write
        // half is shut once the reading leg is dropped). Closing the socket while the
        // application's frames still arrive would reset the connection: its next write
        // fails, and clients then report that failure instead of the connection.close they
        // have not read yet. So, as AMQP's close handshake asks, what it still sends is
        // read and dropped until it acknowledges the close or hangs up.
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            while let Ok(Some(frame)) = client_r.next(frame_max).await {
                if let AMQPFrame::Method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)),
                ) = frame.parsed
                {
                    break;
                }
            }
        })
        .await;
        broker_side
    }

    /// Reads the application's frames, authorizes, and is the broker socket's only writer.
    #[allow(clippy::too_many_arguments)]
    async fn client_to_broker(
        &self,
        client: &mut FrameReader<OwnedReadHalf>,
        mut broker: ToBroker,
        frame_max: u32,
        vhost: &str,
        shared: Arc<Shared>,
        to_client: mpsc::UnboundedSender<Inject>,
        mut injected: mpsc::UnboundedReceiver<Inject>,
    ) -> Result<(), AmqpError> {
        // A publish waiting for its content header: (channel, method bytes, exchange, key).
        let mut pending: HashMap<u16, (Vec<u8>, String, String)> = HashMap::new();
        // Content sequences in progress, per channel.
        let mut content: HashMap<u16, Outgoing> = HashMap::new();
        loop {
            // Frames that arrived together leave in one write.
            if !client.has_frame() {
                broker.flush().await?;
            }
            let frame = tokio::select! {
                f = client.next(frame_max) => f,
                Some(Inject::ToBroker(bytes)) = injected.recv() => {
                    broker.write_all(&bytes).await?;
                    continue;
                }
            };
            let frame = match frame {
                Ok(Some(f)) => f,
                Ok(None) => {
                    broker.flush().await?;
                    return Ok(());
                }
                Err(e) => {
                    if let AmqpError::Protocol { code, text } = &e {
                        self.close_client(&to_client, *code, text);
                    }
                    return Err(e);
                }
            };
            let ch = frame.parsed.channel_id();
            self.metrics.amqp_bytes("from_client", frame.raw.len());
            // Channel 0 carries the connection's own methods and heartbeats, nothing else
            // (AMQP 0-9-1, 4.2.3): anything else there is a connection error, not a channel
            // to close.
            if ch == 0
                && !matches!(
                    frame.parsed,
                    AMQPFrame::Method(_, AMQPClass::Connection(_)) | AMQPFrame::Heartbeat
                )
            {
                let text = "COMMAND_INVALID - only connection methods may use channel 0";
                self.close_client(&to_client, reply::COMMAND_INVALID, text);
                return Err(protocol(reply::COMMAND_INVALID, text));
            }
            // The tables the proxy authorizes from must read the same to the broker.
            let checked = crate::amqp_tables::check_frame(&frame.raw)
                .map_err(|e| e.to_string())
                .and_then(|()| check_routing_types(&frame.parsed));
            if let Err(e) = checked {
                let text = format!("SYNTAX_ERROR - {e} (refused by palisade)");
                self.close_client(&to_client, reply::SYNTAX_ERROR, &text);
                return Err(protocol(reply::SYNTAX_ERROR, text));
            }
            // Frames of a channel closed after a denial.
            if let Some(release) = client_frame_on_closing(&shared, ch, &frame, &to_client) {
                for f in release {
                    broker.write_all(&f).await?;
                }
                continue;
            }
            match frame.parsed {
                AMQPFrame::Method(_, AMQPClass::Basic(basic::AMQPMethod::Publish(p))) => {
                    if pending.contains_key(&ch) || content.contains_key(&ch) {
                        return self
                            .unexpected(
                                &to_client,
                                "UNEXPECTED_FRAME - publish inside a content sequence",
                            )
                            .await;
                    }
                    pending.insert(
                        ch,
                        (
                            frame.raw,
                            p.exchange.as_str().to_owned(),
                            p.routing_key.as_str().to_owned(),
                        ),
                    );
                }
                AMQPFrame::Header(_, header) => {
                    let Some((method, exchange, key)) = pending.remove(&ch) else {
                        return self
                            .unexpected(
                                &to_client,
                                "UNEXPECTED_FRAME - content header without a publish",
                            )
                            .await;
                    };
                    let mut keys = vec![key];
                    for name in ["CC", "BCC"] {
                        if let Some(AMQPValue::FieldArray(list)) = header
                            .properties
                            .headers()
                            .as_ref()
                            .and_then(|h| h.inner().get(name))
                        {
                            for v in list.as_slice() {
                                match v {
                                    AMQPValue::LongString(s) => keys
                                        .push(String::from_utf8_lossy(s.as_bytes()).into_owned()),
                                    AMQPValue::ShortString(s) => keys.push(s.as_str().to_owned()),
                                    _ => {}
                                }
                            }
                        }
                    }
                    let allowed = self.authorize_publish(vhost, ch, &exchange, &keys);
                    if !allowed {
                        // The body is swallowed with the closing channel.
                        self.deny(ch, 60, 40, &shared, &to_client, &mut broker)
                            .await?;
                        continue;
                    }
                    let sign = self.provenance.sign
                        && header.body_size <= self.provenance.max_message_bytes;
                    if self.provenance.sign && !sign {
                        self.metrics.provenance("sign", "too_large");
                    }
                    if sign {
                        let mut held = Held::new(method, exchange, keys.swap_remove(0));
                        held.remaining = header.body_size;
                        held.header = Some(header);
                        if held.remaining == 0 {
                            broker.write_all(&self.signed(ch, held)).await?;
                        } else {
                            content.insert(
                                ch,
                                Outgoing {
                                    remaining: 0,
                                    held: Some(held),
                                },
                            );
                        }
                    } else {
                        let own = self
                            .identity
                            .spiffe_id()
                            .map(|id| id.to_string())
                            .unwrap_or_default();
                        broker.write_all(&method).await?;
                        broker
                            .write_all(&restamp(ch, &header, &[(PUBLISHER_HEADER, own)]))
                            .await?;
                        if header.body_size > 0 {
                            content.insert(
                                ch,
                                Outgoing {
                                    remaining: header.body_size,
                                    held: None,
                                },
                            );
                        }
                    }
                }
                AMQPFrame::Body(_, ref body) => {
                    let Some(out) = content.get_mut(&ch) else {
                        return self
                            .unexpected(
                                &to_client,
                                "UNEXPECTED_FRAME - body without a content header",
                            )
                            .await;
                    };
                    match &mut out.held {
                        Some(held) => {
                            held.hash.update(body);
                            held.remaining = held.remaining.saturating_sub(body.len() as u64);
                            held.bodies.push(frame.raw);
                            if held.remaining == 0 {
                                let held =
                                    content.remove(&ch).and_then(|o| o.held).expect("present");
                                broker.write_all(&self.signed(ch, held)).await?;
                            }
                        }
                        None => {
                            out.remaining = out.remaining.saturating_sub(body.len() as u64);
                            if out.remaining == 0 {
                                content.remove(&ch);
                            }
                            broker.write_all(&frame.raw).await?;
                        }
                    }
                }
                AMQPFrame::Method(_, ref method) => {
                    if pending.contains_key(&ch) || content.contains_key(&ch) {
                        return self
                            .unexpected(
                                &to_client,
                                "UNEXPECTED_FRAME - a method inside a content sequence",
                            )
                            .await;
                    }
                    match self.check_method(vhost, ch, method) {
                        Some((class_id, method_id)) => {
                            self.deny(ch, class_id, method_id, &shared, &to_client, &mut broker)
                                .await?;
                        }
                        None => broker.write_all(&frame.raw).await?,
                    }
                }
                _ => broker.write_all(&frame.raw).await?,
            }
        }
    }

    /// A held delivery with its provenance checked: the application sees
    /// `x-palisade-verified-publisher` only for a valid signature, and never the signature
    /// itself or a forged verified header.
    fn verified(&self, ch: u16, held: Held) -> Vec<u8> {
        held.finish(ch, |header, exchange, routing_key, digest| {
            let publisher = header_text(header, PUBLISHER_HEADER);
            let outcome = match (
                header_text(header, provenance::SIGNATURE_HEADER),
                &publisher,
            ) {
                (Some(jws), Some(publisher)) => provenance::verify(
                    &self.identity.bundle().load(),
                    &jws,
                    publisher,
                    provenance::Message {
                        exchange,
                        routing_key,
                        body_sha256: digest,
                    },
                    self.provenance.max_age,
                ),
                _ => Err(provenance::ProvenanceError::Missing),
            };
            let mut set = Vec::with_capacity(2);
            if let Some(p) = publisher {
                // Kept as information; only the verified header is to be trusted.
                set.push((PUBLISHER_HEADER, p));
            }
            match outcome {
                Ok(id) => {
                    self.metrics.provenance("verify", "ok");
                    set.push((provenance::VERIFIED_HEADER, id.to_string()));
                }
                Err(e) => {
                    self.metrics.provenance("verify", e.label());
                    tracing::debug!(target: "palisade::provenance", reason = %e, %exchange,
                        %routing_key, "message without a verified publisher");
                }
            }
            set
        })
    }

    /// A held publish, stamped with the publisher and its signature, ready for the broker.
    fn signed(&self, ch: u16, held: Held) -> Vec<u8> {
        held.finish(ch, |_, exchange, routing_key, digest| {
            let mut set = Vec::with_capacity(2);
            if let Some(identity) = self.identity.slot().get() {
                set.push((PUBLISHER_HEADER, identity.spiffe_id.to_string()));
                let message = provenance::Message {
                    exchange,
                    routing_key,
                    body_sha256: digest,
                };
                match provenance::sign(&identity, message) {
                    Some(jws) => {
                        set.push((provenance::SIGNATURE_HEADER, jws));
                        self.metrics.provenance("sign", "ok");
                    }
                    None => self.metrics.provenance("sign", "failed"),
                }
            }
            set
        })
    }

    async fn unexpected(
        &self,
        to_client: &mpsc::UnboundedSender<Inject>,
        text: &str,
    ) -> Result<(), AmqpError> {
        self.close_client(to_client, reply::UNEXPECTED_FRAME, text);
        Err(protocol(reply::UNEXPECTED_FRAME, text))
    }

    /// Ends the application's connection with connection.close `code` (written by the
    /// leg that owns its socket, which then ends; see [`Amqp::relay`]) and audits why.
    fn close_client(&self, to_client: &mpsc::UnboundedSender<Inject>, code: u16, text: &str) {
        let _ = to_client.send(Inject::Close(connection_close(code, text)));
        self.record_error(None, text);
    }

    /// Closes channel `ch` on both legs after a denial.
    async fn deny(
        &self,
        ch: u16,
        class_id: u16,
        method_id: u16,
        shared: &Shared,
        to_client: &mpsc::UnboundedSender<Inject>,
        broker: &mut ToBroker,
    ) -> Result<(), AmqpError> {
        shared.start_closing(ch);
        broker
            .write_all(&channel_close(
                ch,
                reply::SUCCESS,
                "palisade: operation refused",
                0,
                0,
            ))
            .await?;
        let _ = to_client.send(Inject::ToClient(
            ch,
            channel_close(
                ch,
                reply::ACCESS_REFUSED,
                "ACCESS_REFUSED - refused by mesh policy (palisade)",
                class_id,
                method_id,
            ),
        ));
        Ok(())
    }

    /// Authorizes a non-publish method; `Some((class, method))` when it is refused.
    fn check_method(&self, vhost: &str, ch: u16, method: &AMQPClass) -> Option<(u16, u16)> {
        let (checks, ids) = operations(method)?;
        let actor = self.actor();
        let refused = checks.iter().any(|c| {
            let request = AmqpRequest {
                operation: c.operation,
                vhost,
                exchange: c.exchange.as_deref(),
                routing_key: c.routing_key.as_deref(),
                queue: c.queue.as_deref(),
            };
            !self.authorize(&actor, ch, &request, None)
        });
        refused.then_some(ids)
    }

    /// Every routing key of a publish must be allowed.
    fn authorize_publish(&self, vhost: &str, ch: u16, exchange: &str, keys: &[String]) -> bool {
        let actor = self.actor();
        keys.iter().all(|k| {
            self.authorize(
                &actor,
                ch,
                &AmqpRequest {
                    operation: "publish",
                    vhost,
                    exchange: Some(exchange),
                    routing_key: Some(k),
                    queue: None,
                },
                Some(keys),
            )
        })
    }

    /// Who is acting: this workload, as its policies select it. Looked up once per
    /// operation, not once per routing key.
    fn actor(&self) -> Actor {
        let own = self.identity.spiffe_id();
        Actor {
            service: self.service_name(own.as_ref()),
            own,
        }
    }

    /// One decision: evaluated, counted and audited.
    fn authorize(
        &self,
        actor: &Actor,
        ch: u16,
        op: &AmqpRequest<'_>,
        all_keys: Option<&[String]>,
    ) -> bool {
        let (own, service) = (&actor.own, &actor.service);
        let policies = self.policies.load();
        let decision = match own.as_ref().and_then(SpiffeId::namespace) {
            Some(namespace) => policies.authorization.evaluate(
                &Workload { namespace, service },
                &Request::amqp(own.as_ref(), *op),
            ),
            None => return false,
        };
        self.metrics.decision(&decision);
        self.metrics.amqp_operation(op.operation, decision.label());
        let allowed = decision.verdict == Verdict::Allow;
        if allowed && op.operation == "publish" && self.audit_sample > 1 {
            let n = self
                .allowed_publishes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if !n.is_multiple_of(self.audit_sample) {
                return true;
            }
        }
        let mut event = AuditEvent::begin("outbound", "amqp");
        event.source = own.as_ref().map(ToString::to_string);
        event.destination_service = service.clone();
        event.destination = self.upstream.addr.clone();
        event.method = op.operation.to_owned();
        event.apply_decision(&decision);
        event.amqp = Some(AmqpAudit {
            channel: Some(ch),
            operation: op.operation.to_owned(),
            vhost: op.vhost.to_owned(),
            exchange: op.exchange.map(str::to_owned),
            routing_key: op.routing_key.map(str::to_owned),
            routing_keys: all_keys.map(<[String]>::to_vec).unwrap_or_default(),
            queue: op.queue.map(str::to_owned),
        });
        self.audit.record(&event);
        allowed
    }

    /// Reads the broker's frames and is the application socket's only writer.
    async fn broker_to_client(
        &self,
        mut broker: FrameReader<ReadHalf<BrokerStream>>,
        mut client: BufWriter<OwnedWriteHalf>,
        frame_max: u32,
        shared: Arc<Shared>,
        mut injected: mpsc::UnboundedReceiver<Inject>,
        to_broker: mpsc::UnboundedSender<Inject>,
    ) -> Result<(), AmqpError> {
        // Body bytes still to come per channel, toward the application.
        let mut content: HashMap<u16, u64> = HashMap::new();
        // Deliveries held whole for verification, per channel.
        let mut holding: HashMap<u16, Held> = HashMap::new();
        // Whether the connection is being closed in the protocol (then an end of stream is
        // expected).
        let mut connection_closing = false;
        // Open channels, for the gauge (all closed when the connection ends).
        let mut channels = OpenChannels::new(self.metrics.amqp_channels.clone());
        // Frames made here, waiting for their channel's content sequence to finish.
        let mut waiting: VecDeque<(u16, Vec<u8>)> = VecDeque::new();
        loop {
            // Deliver what may go now.
            let mut i = 0;
            while i < waiting.len() {
                if !content.contains_key(&waiting[i].0) {
                    let (_, bytes) = waiting.remove(i).expect("in range");
                    client.write_all(&bytes).await?;
                } else {
                    i += 1;
                }
            }
            if !broker.has_frame() {
                client.flush().await?;
            }
            let frame = tokio::select! {
                f = broker.next(frame_max) => f,
                Some(inject) = injected.recv() => {
                    match inject {
                        Inject::ToClient(ch, bytes) => waiting.push_back((ch, bytes)),
                        // Frames on channel 0 may come between another channel's content
                        // frames, so the close need not wait for them.
                        Inject::Close(bytes) => {
                            client.write_all(&bytes).await?;
                            client.flush().await?;
                            return Ok(());
                        }
                        Inject::ToBroker(_) => {}
                    }
                    continue;
                }
            };
            let frame = match frame {
                Ok(Some(f)) => f,
                // The broker went away without closing the connection: tell the application
                // in protocol terms rather than with a reset socket.
                Ok(None) | Err(AmqpError::Io(_)) if !connection_closing => {
                    let _ = client
                        .write_all(&connection_close(
                            reply::CONNECTION_FORCED,
                            "CONNECTION_FORCED - the broker connection was lost",
                        ))
                        .await;
                    let _ = client.flush().await;
                    self.record_error(None, "the broker connection was lost");
                    return Ok(());
                }
                Ok(None) => {
                    client.flush().await?;
                    return Ok(());
                }
                Err(e) => {
                    let _ = client.flush().await;
                    return Err(e);
                }
            };
            if let AMQPFrame::Method(
                0,
                AMQPClass::Connection(
                    connection::AMQPMethod::Close(_) | connection::AMQPMethod::CloseOk(_),
                ),
            ) = &frame.parsed
            {
                connection_closing = true;
            }
            let ch = frame.parsed.channel_id();
            self.metrics.amqp_bytes("from_broker", frame.raw.len());
            // Channels the broker opened or closed (a closing after a denial ends below).
            match &frame.parsed {
                AMQPFrame::Method(_, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_))) => {
                    channels.opened(ch);
                }
                AMQPFrame::Method(
                    _,
                    AMQPClass::Channel(
                        channel::AMQPMethod::CloseOk(_) | channel::AMQPMethod::Close(_),
                    ),
                ) => channels.closed(ch),
                _ => {}
            }
            if broker_frame_on_closing(&shared, ch, &frame, &to_broker).is_some() {
                continue;
            }
            if self.provenance.verify {
                match &frame.parsed {
                    // A delivery starts: hold it until its body is complete.
                    AMQPFrame::Method(_, AMQPClass::Basic(basic::AMQPMethod::Deliver(d))) => {
                        holding.insert(
                            ch,
                            Held::new(frame.raw, d.exchange.to_string(), d.routing_key.to_string()),
                        );
                        continue;
                    }
                    AMQPFrame::Method(_, AMQPClass::Basic(basic::AMQPMethod::GetOk(g))) => {
                        holding.insert(
                            ch,
                            Held::new(frame.raw, g.exchange.to_string(), g.routing_key.to_string()),
                        );
                        continue;
                    }
                    AMQPFrame::Header(_, header) if holding.contains_key(&ch) => {
                        let mut held = holding.remove(&ch).expect("present");
                        if header.body_size > self.provenance.max_message_bytes {
                            // Too large to hold: passed on without a verified publisher.
                            self.metrics.provenance("verify", "too_large");
                            client.write_all(&held.method).await?;
                            client.write_all(&restamp(ch, header, &[])).await?;
                            content.insert(ch, header.body_size);
                            continue;
                        }
                        held.remaining = header.body_size;
                        held.header = Some(header.clone());
                        if held.remaining == 0 {
                            client.write_all(&self.verified(ch, held)).await?;
                        } else {
                            holding.insert(ch, held);
                        }
                        continue;
                    }
                    AMQPFrame::Body(_, body) if holding.contains_key(&ch) => {
                        let held = holding.get_mut(&ch).expect("present");
                        held.hash.update(body);
                        held.remaining = held.remaining.saturating_sub(body.len() as u64);
                        held.bodies.push(frame.raw);
                        if held.remaining == 0 {
                            let held = holding.remove(&ch).expect("present");
                            client.write_all(&self.verified(ch, held)).await?;
                        }
                        continue;
                    }
                    _ => {}
                }
            }
            match &frame.parsed {
                AMQPFrame::Header(_, header) if header.body_size > 0 => {
                    content.insert(ch, header.body_size);
                }
                AMQPFrame::Body(_, body) => {
                    if let Some(remaining) = content.get_mut(&ch) {
                        *remaining = remaining.saturating_sub(body.len() as u64);
                        if *remaining == 0 {
                            content.remove(&ch);
                        }
                    }
                }
                _ => {}
            }
            client.write_all(&frame.raw).await?;
        }
    }
}

/// What to do with an application frame on a channel closed after a denial: `None` if the
/// channel is not closing; otherwise the held frames it releases (usually none).
fn client_frame_on_closing(
    shared: &Shared,
    ch: u16,
    frame: &Frame,
    to_client: &mpsc::UnboundedSender<Inject>,
) -> Option<VecDeque<Vec<u8>>> {
    let released = shared.on_closing(ch, |closing| match &frame.parsed {
        AMQPFrame::Method(_, AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)))
            if !closing.client_close_ok =>
        {
            closing.client_close_ok = true;
        }
        AMQPFrame::Method(_, AMQPClass::Channel(channel::AMQPMethod::Close(_)))
            if !closing.client_close_ok =>
        {
            // Crossing close: answer it; the application is done with the channel.
            closing.client_close_ok = true;
            let _ = to_client.send(Inject::ToClient(ch, channel_close_ok(ch)));
        }
        // A re-opened channel: held until the broker confirms the close.
        _ if closing.client_close_ok => closing.held.push_back(frame.raw.clone()),
        _ => {}
    })?;
    Some(released.unwrap_or_default())
}

/// The same for a broker frame: `None` if the channel is not closing. When the closing
/// completes, the held application frames go to the broker's writer.
fn broker_frame_on_closing(
    shared: &Shared,
    ch: u16,
    frame: &Frame,
    to_broker: &mpsc::UnboundedSender<Inject>,
) -> Option<()> {
    let released = shared.on_closing(ch, |closing| match &frame.parsed {
        AMQPFrame::Method(_, AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))) => {
            closing.broker_close_ok = true;
        }
        AMQPFrame::Method(_, AMQPClass::Channel(channel::AMQPMethod::Close(_))) => {
            // Crossing close from the broker: answer it; it counts as confirmed.
            closing.broker_close_ok = true;
            let _ = to_broker.send(Inject::ToBroker(channel_close_ok(ch)));
        }
        _ => {}
    })?;
    if let Some(held) = released.filter(|h| !h.is_empty()) {
        let _ = to_broker.send(Inject::ToBroker(held.into_iter().flatten().collect()));
    }
    Some(())
}

/// What a non-publish method asks the broker to do, as the operations to authorize (each
/// one must be allowed), with the method's class and method ids for the refusal; `None` for
/// methods that are not authorized here. Declare arguments that reroute messages count as
/// what they do: a publish to the alternate or dead-letter exchange.
pub fn operations(method: &AMQPClass) -> Option<(Vec<Op>, (u16, u16))> {
    let s = |v: &ShortString| Some(v.as_str().to_owned());
    let op = |operation, exchange, routing_key, queue| Op {
        operation,
        exchange,
        routing_key,
        queue,
    };
    let (checks, ids): (Vec<Op>, (u16, u16)) = match method {
        AMQPClass::Basic(basic::AMQPMethod::Consume(c)) => {
            (vec![op("consume", None, None, s(&c.queue))], (60, 20))
        }
        AMQPClass::Basic(basic::AMQPMethod::Get(g)) => {
            (vec![op("get", None, None, s(&g.queue))], (60, 70))
        }
        AMQPClass::Exchange(exchange::AMQPMethod::Declare(d)) => {
            let mut v = vec![op("exchange.declare", s(&d.exchange), None, None)];
            if let Some(alt) = string_arg(&d.arguments, "alternate-exchange") {
                // Unroutable messages are published there.
                v.push(op("publish", Some(alt), None, None));
            }
            (v, (40, 10))
        }
        AMQPClass::Exchange(exchange::AMQPMethod::Delete(d)) => (
            vec![op("exchange.delete", s(&d.exchange), None, None)],
            (40, 20),
        ),
        AMQPClass::Exchange(exchange::AMQPMethod::Bind(b)) => (
            vec![op(
                "exchange.bind",
                s(&b.destination),
                s(&b.routing_key),
                None,
            )],
            (40, 30),
        ),
        AMQPClass::Exchange(exchange::AMQPMethod::Unbind(b)) => (
            vec![op(
                "exchange.unbind",
                s(&b.destination),
                s(&b.routing_key),
                None,
            )],
            (40, 40),
        ),
        AMQPClass::Queue(queue::AMQPMethod::Declare(d)) => {
            let mut v = vec![op("queue.declare", None, None, s(&d.queue))];
            if let Some(dlx) = string_arg(&d.arguments, "x-dead-letter-exchange") {
                // Dead letters are published there.
                let key = string_arg(&d.arguments, "x-dead-letter-routing-key");
                v.push(op("publish", Some(dlx), key, None));
            }
            (v, (50, 10))
        }
        AMQPClass::Queue(queue::AMQPMethod::Bind(b)) => (
            vec![op(
                "queue.bind",
                s(&b.exchange),
                s(&b.routing_key),
                s(&b.queue),
            )],
            (50, 20),
        ),
        AMQPClass::Queue(queue::AMQPMethod::Unbind(b)) => (
            vec![op(
                "queue.unbind",
                s(&b.exchange),
                s(&b.routing_key),
                s(&b.queue),
            )],
            (50, 50),
        ),
        AMQPClass::Queue(queue::AMQPMethod::Purge(p)) => {
            (vec![op("queue.purge", None, None, s(&p.queue))], (50, 30))
        }
        AMQPClass::Queue(queue::AMQPMethod::Delete(d)) => {
            (vec![op("queue.delete", None, None, s(&d.queue))], (50, 40))
        }
        _ => return None,
    };
    Some((checks, ids))
}

/// The arguments and headers that route messages must have the type the broker routes by
/// (RabbitMQ: a long string, and for `CC`/`BCC` an array of them). A value of another type
/// would be skipped by the proxy's authorization but not necessarily by the broker.
pub fn check_routing_types(frame: &AMQPFrame) -> Result<(), String> {
    let string = |t: &FieldTable, name: &str| match t.inner().get(name) {
        None | Some(AMQPValue::LongString(_)) => Ok(()),
        Some(_) => Err(format!("argument {name} must be a long string")),
    };
    match frame {
        AMQPFrame::Method(_, AMQPClass::Queue(queue::AMQPMethod::Declare(d))) => {
            string(&d.arguments, "x-dead-letter-exchange")?;
            string(&d.arguments, "x-dead-letter-routing-key")
        }
        AMQPFrame::Method(_, AMQPClass::Exchange(exchange::AMQPMethod::Declare(d))) => {
            string(&d.arguments, "alternate-exchange")
        }
        AMQPFrame::Header(_, header) => {
            let Some(headers) = header.properties.headers() else {
                return Ok(());
            };
            for name in ["CC", "BCC"] {
                match headers.inner().get(name) {
                    None => {}
                    Some(AMQPValue::FieldArray(list))
                        if list
                            .as_slice()
                            .iter()
                            .all(|v| matches!(v, AMQPValue::LongString(_))) => {}
                    Some(_) => {
                        return Err(format!("header {name} must be an array of long strings"));
                    }
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// A string argument of a declare (`x-dead-letter-exchange` and the like).
fn string_arg(args: &FieldTable, name: &str) -> Option<String> {
    match args.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// The workload performing AMQP operations.
struct Actor {
    own: Option<SpiffeId>,
    service: String,
}

/// An operation to authorize, with owned names (they may come from declare arguments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub operation: &'static str,
    pub exchange: Option<String>,
    pub routing_key: Option<String>,
    pub queue: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_a_reserved_header_is_reserved() {
        for name in [
            "x-palisade-verified-publisher",
            "X-Palisade-Verified-Publisher",
            "x_palisade_verified_publisher",
            "X-PALISADE-SIGNATURE",
            "x-palisade-anything",
        ] {
            assert!(is_reserved_header(name), "{name}");
        }
        for name in [
            "x-palisade",
            "x-palisadex-a",
            "palisade-signature",
            "CC",
            "",
        ] {
            assert!(!is_reserved_header(name), "{name}");
        }
        let mut headers = FieldTable::default();
        for name in [
            "X-Palisade-Verified-Publisher",
            "x_palisade_publisher",
            "kept",
        ] {
            headers.insert(name.into(), AMQPValue::LongString("spoof".into()));
        }
        let header = AMQPContentHeader {
            class_id: 60,
            body_size: 0,
            properties: amq_protocol::protocol::BasicProperties::default().with_headers(headers),
        };
        let bytes = restamp(1, &header, &[]);
        let (_, parsed) = amq_protocol::frame::parse_frame(bytes.as_slice()).unwrap();
        let AMQPFrame::Header(_, h) = parsed else {
            panic!("a header frame")
        };
        let names: Vec<String> = h
            .properties
            .headers()
            .as_ref()
            .unwrap()
            .inner()
            .keys()
            .map(|k| k.to_string())
            .collect();
        assert_eq!(names, ["kept"]);
    }

    #[test]
    fn routing_arguments_and_headers_must_have_the_routing_type() {
        let declare = |value: AMQPValue| {
            let mut args = FieldTable::default();
            args.insert("x-dead-letter-exchange".into(), value);
            AMQPFrame::Method(
                1,
                AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                    queue: "q".into(),
                    arguments: args,
                    ..Default::default()
                })),
            )
        };
        assert_eq!(
            check_routing_types(&declare(AMQPValue::LongString("dlx".into()))),
            Ok(())
        );
        assert!(
            check_routing_types(&declare(AMQPValue::LongLongInt(1)))
                .unwrap_err()
                .contains("x-dead-letter-exchange")
        );
        let publish = |cc: AMQPValue| {
            let mut headers = FieldTable::default();
            headers.insert("CC".into(), cc);
            AMQPFrame::Header(
                1,
                AMQPContentHeader {
                    class_id: 60,
                    body_size: 0,
                    properties: amq_protocol::protocol::BasicProperties::default()
                        .with_headers(headers),
                },
            )
        };
        let list = |v: Vec<AMQPValue>| AMQPValue::FieldArray(v.into());
        assert_eq!(
            check_routing_types(&publish(list(vec![AMQPValue::LongString("k".into())]))),
            Ok(())
        );
        assert!(check_routing_types(&publish(AMQPValue::LongString("k".into()))).is_err());
        assert!(check_routing_types(&publish(list(vec![AMQPValue::Boolean(true)]))).is_err());
    }

    #[tokio::test]
    async fn frames_read_together_are_buffered_and_a_cancelled_read_loses_nothing() {
        let (mut tx, rx) = tokio::io::duplex(1 << 16);
        let mut reader = FrameReader::new(rx);
        let close = channel_close(1, 403, "ACCESS_REFUSED", 60, 40);
        let heartbeat = encode(&AMQPFrame::Heartbeat);
        // Half a frame, then a read that gives up (as a select! taking another branch).
        tx.write_all(&close[..5]).await.unwrap();
        let gave_up =
            tokio::time::timeout(Duration::from_millis(20), reader.next(INITIAL_FRAME_MAX)).await;
        assert!(gave_up.is_err(), "no whole frame yet");
        // The rest, and a second frame in the same write.
        let mut rest = close[5..].to_vec();
        rest.extend_from_slice(&heartbeat);
        tx.write_all(&rest).await.unwrap();
        let first = reader.next(INITIAL_FRAME_MAX).await.unwrap().unwrap();
        assert_eq!(
            first.raw, close,
            "the bytes read before the cancel were kept"
        );
        assert!(reader.has_frame(), "the heartbeat came in the same read");
        let second = reader.next(INITIAL_FRAME_MAX).await.unwrap().unwrap();
        assert!(matches!(second.parsed, AMQPFrame::Heartbeat));
        assert!(!reader.has_frame());
        // A clean end between frames is None; in the middle of one, an error.
        tx.write_all(&heartbeat[..3]).await.unwrap();
        drop(tx);
        assert!(reader.next(INITIAL_FRAME_MAX).await.is_err());
    }

    #[test]
    fn upstream_urls() {
        let u = Upstream::parse("amqp://app:s%3Acret@rabbit:5673/%2f", None, None).unwrap();
        assert_eq!((u.addr.as_str(), u.vhost.as_str()), ("rabbit:5673", "/"));
        assert_eq!(
            (u.username.as_str(), u.password.as_str()),
            ("app", "s:cret")
        );
        let u = Upstream::parse("amqp://rabbit/shop", Some("from-file".into()), None).unwrap();
        assert_eq!(
            (u.addr.as_str(), u.vhost.as_str(), u.password.as_str()),
            ("rabbit:5672", "shop", "from-file")
        );
        assert!(
            !format!("{u:?}").contains("from-file"),
            "the password is never printed"
        );
        assert!(Upstream::parse("http://x", None, None).is_err());
        assert!(
            Upstream::parse("amqps://x", None, None)
                .unwrap_err()
                .contains("--amqp-ca-bundle")
        );
    }
}
