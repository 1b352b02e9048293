//! The relay after the login: two legs, each the only writer of the other socket. The
//! application's frames are checked (channel 0, field tables, routing types), authorized,
//! signed and sent on; the broker's are verified and sent back. Protocol errors close the
//! connection with the right code; a denial closes only its channel ([`super::closing`]).

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{AMQPClass, basic, channel, connection};
use amq_protocol::types::AMQPValue;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tokio::io::{AsyncWriteExt, BufWriter, ReadHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

use super::authz::check_routing_types;
use super::closing::{Shared, broker_frame_on_closing, client_frame_on_closing};
use super::frames::{FrameReader, channel_close, connection_close};
use super::stamping::{Held, Outgoing, restamp};
use super::upstream::{BrokerStream, ToBroker};
use super::{
    Amqp, AmqpError, BROKER_LOST_GRACE, CLOSE_GRACE, Inject, Legs, PUBLISHER_HEADER, protocol,
    reply,
};

/// The channels open on one connection, counted in a gauge; dropping closes them all.
pub(super) struct OpenChannels {
    pub(super) open: std::collections::HashSet<u16>,
    pub(super) gauge: prometheus::IntGauge,
}

/// What a channel closed by a policy denial is told.
const POLICY_REFUSED: &str = "ACCESS_REFUSED - refused by mesh policy (palisade)";
/// What a channel whose publish was refused because the decision spool is full is told.
const LOG_FULL_REFUSED: &str = "RESOURCE_ERROR - the decision log is full (palisade)";

impl OpenChannels {
    pub(super) fn new(gauge: prometheus::IntGauge) -> Self {
        Self {
            open: std::collections::HashSet::new(),
            gauge,
        }
    }

    pub(super) fn opened(&mut self, ch: u16) {
        if self.open.insert(ch) {
            self.gauge.inc();
        }
    }

    pub(super) fn closed(&mut self, ch: u16) {
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

impl Amqp {
    pub(super) async fn relay(
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
                        ToBroker::new(broker_w, this.audit.clone()),
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
                                self.record_error(None, "the broker connection was lost").await;
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
    pub(super) async fn client_to_broker(
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
                        self.close_client(&to_client, *code, text).await;
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
                self.close_client(&to_client, reply::COMMAND_INVALID, text)
                    .await;
                return Err(protocol(reply::COMMAND_INVALID, text));
            }
            // The tables the proxy authorizes from must read the same to the broker.
            let checked = super::tables::check_frame(&frame.raw)
                .map_err(|e| e.to_string())
                .and_then(|()| check_routing_types(&frame.parsed));
            if let Err(e) = checked {
                let text = format!("SYNTAX_ERROR - {e} (refused by palisade)");
                self.close_client(&to_client, reply::SYNTAX_ERROR, &text)
                    .await;
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
                    // No publish the decision log cannot hold (--decision-overflow refuse).
                    if !self.audit.admits() {
                        self.record_error(Some(ch), crate::decision_log::LOG_FULL)
                            .await;
                        let refusal = (reply::RESOURCE_ERROR, LOG_FULL_REFUSED);
                        self.deny(ch, (60, 40), refusal, &shared, &to_client, &mut broker)
                            .await?;
                        continue;
                    }
                    let allowed = self
                        .authorize_publish(vhost, ch, &exchange, &keys, &mut broker)
                        .await;
                    if !allowed {
                        // The body is swallowed with the closing channel.
                        let refusal = (reply::ACCESS_REFUSED, POLICY_REFUSED);
                        self.deny(ch, (60, 40), refusal, &shared, &to_client, &mut broker)
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
                    match self.check_method(vhost, ch, method).await {
                        Some((class_id, method_id)) => {
                            let refusal = (reply::ACCESS_REFUSED, POLICY_REFUSED);
                            self.deny(
                                ch,
                                (class_id, method_id),
                                refusal,
                                &shared,
                                &to_client,
                                &mut broker,
                            )
                            .await?;
                        }
                        None => broker.write_all(&frame.raw).await?,
                    }
                }
                _ => broker.write_all(&frame.raw).await?,
            }
        }
    }

    /// Reads the broker's frames and is the application socket's only writer.
    pub(super) async fn broker_to_client(
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
                    self.record_error(None, "the broker connection was lost")
                        .await;
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

    pub(super) async fn unexpected(
        &self,
        to_client: &mpsc::UnboundedSender<Inject>,
        text: &str,
    ) -> Result<(), AmqpError> {
        self.close_client(to_client, reply::UNEXPECTED_FRAME, text)
            .await;
        Err(protocol(reply::UNEXPECTED_FRAME, text))
    }

    /// Ends the application's connection with connection.close `code` (written by the
    /// leg that owns its socket, which then ends; see [`Amqp::relay`]) and audits why.
    pub(super) async fn close_client(
        &self,
        to_client: &mpsc::UnboundedSender<Inject>,
        code: u16,
        text: &str,
    ) {
        self.record_error(None, text).await;
        let _ = to_client.send(Inject::Close(connection_close(code, text)));
    }

    /// Closes channel `ch` on both legs after a denial of the method `(class, method)`,
    /// telling the application `(reply code, text)`.
    pub(super) async fn deny(
        &self,
        ch: u16,
        (class_id, method_id): (u16, u16),
        (code, text): (u16, &str),
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
            channel_close(ch, code, text, class_id, method_id),
        ));
        Ok(())
    }
}
