//! What an AMQP operation asks the broker to do, and whether this workload may: the method
//! table (with declare arguments that reroute messages counted as publishes), the routing
//! types the broker routes by, and one audited decision per operation.

use crate::audit::{AmqpAudit, AuditEvent};
use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{AMQPClass, basic, exchange, queue};
use amq_protocol::types::{AMQPValue, FieldTable, ShortString};
use palisade_contract::SpiffeId;
use palisade_contract::policy::{AmqpRequest, Request, Verdict, Workload};

use super::Amqp;

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
pub(super) fn string_arg(args: &FieldTable, name: &str) -> Option<String> {
    match args.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// The workload performing AMQP operations.
pub(super) struct Actor {
    pub(super) own: Option<SpiffeId>,
    pub(super) service: String,
}

/// An operation to authorize, with owned names (they may come from declare arguments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub operation: &'static str,
    pub exchange: Option<String>,
    pub routing_key: Option<String>,
    pub queue: Option<String>,
}

impl Amqp {
    /// Authorizes a non-publish method; `Some((class, method))` when it is refused.
    pub(super) async fn check_method(
        &self,
        vhost: &str,
        ch: u16,
        method: &AMQPClass,
    ) -> Option<(u16, u16)> {
        let (checks, ids) = operations(method)?;
        let actor = self.actor();
        for c in &checks {
            let request = AmqpRequest {
                operation: c.operation,
                vhost,
                exchange: c.exchange.as_deref(),
                routing_key: c.routing_key.as_deref(),
                queue: c.queue.as_deref(),
            };
            if !self.authorize(&actor, ch, &request, None, None).await {
                return Some(ids);
            }
        }
        None
    }

    /// Every routing key of a publish must be allowed. The lines of the allowing decisions
    /// are owed by `broker` (the publish waits in its buffer until they are written); a
    /// denial's is written before this returns.
    pub(super) async fn authorize_publish(
        &self,
        vhost: &str,
        ch: u16,
        exchange: &str,
        keys: &[String],
        broker: &mut super::upstream::ToBroker,
    ) -> bool {
        let actor = self.actor();
        for k in keys {
            let request = AmqpRequest {
                operation: "publish",
                vhost,
                exchange: Some(exchange),
                routing_key: Some(k),
                queue: None,
            };
            if !self
                .authorize(&actor, ch, &request, Some(keys), Some(&mut *broker))
                .await
            {
                return false;
            }
        }
        true
    }

    /// Who is acting: this workload, as its policies select it. Looked up once per
    /// operation, not once per routing key.
    pub(super) fn actor(&self) -> Actor {
        let own = self.identity.spiffe_id();
        Actor {
            service: self.service_name(own.as_ref()),
            own,
        }
    }

    /// One decision: evaluated, counted and recorded (before the caller acts on it). With
    /// `broker`, an allowing decision's line is not waited for here but owed by the
    /// broker's writer, which holds the allowed frames until it is written.
    pub(super) async fn authorize(
        &self,
        actor: &Actor,
        ch: u16,
        op: &AmqpRequest<'_>,
        all_keys: Option<&[String]>,
        broker: Option<&mut super::upstream::ToBroker>,
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
                self.audit.sampled_out();
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
        match broker {
            Some(broker) if allowed => broker.owe(self.audit.decided_owed(&event)),
            _ => self.audit.decided(&event).await,
        }
        allowed
    }
}

#[cfg(test)]
mod tests {
    use amq_protocol::frame::AMQPContentHeader;

    use super::*;

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
}
