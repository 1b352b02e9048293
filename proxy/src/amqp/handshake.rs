//! The login, relayed: the application's credentials are replaced with the sidecar's, and
//! the vhost it opens must be the upstream URL's (530 otherwise).

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{AMQPClass, connection};
use amq_protocol::types::{LongString, ShortString};
use tokio::io::AsyncWriteExt;

use super::frames::{INITIAL_FRAME_MAX, encode};
use super::{Amqp, AmqpError, Legs, protocol, reply};

impl Amqp {
    /// Relays the login, replacing the application's credentials with the sidecar's.
    /// Returns the negotiated frame_max and the vhost, or `None` when the broker refused.
    pub(super) async fn handshake(
        &self,
        legs: &mut Legs,
    ) -> Result<Option<(u32, String)>, AmqpError> {
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
}
