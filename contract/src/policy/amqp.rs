//! The AMQP target of a policy rule, and AMQP topic matching.
//!
//! ```yaml
//! to: [ { amqp: { operations: [publish], vhosts: ["/"], exchanges: ["shop.events"], routingKeys: ["order.*"] } } ]
//! ```
//!
//! AMQP operations are authorized by the sidecar of the workload that performs them (the
//! publisher's or consumer's own sidecar, which sits between it and the broker): a policy
//! selects that workload, and `from` names its identity. Semantics:
//! - `operations`: `publish`, `consume`, `get`, `exchange.declare`, `exchange.delete`,
//!   `exchange.bind`, `exchange.unbind`, `queue.declare`, `queue.delete`, `queue.bind`,
//!   `queue.unbind`, `queue.purge`; empty means any.
//! - `vhosts`, `exchanges`, `queues`: exact, `prefix*`, `*suffix` or `*`. The default
//!   exchange `""` is its own name: only a list that names `""` matches it (never `*`), and
//!   an empty `exchanges` list does not allow publishing to it.
//! - `routingKeys`: AMQP topic patterns (`*` one word, `#` zero or more words), applied
//!   whatever the exchange type. A publish is allowed only if every routing key the broker
//!   would route with (the key, and the `CC` and `BCC` headers) is; the caller evaluates each.

use serde::Serialize;

/// The AMQP operations a rule can name.
pub const OPERATIONS: [&str; 12] = [
    "publish",
    "consume",
    "get",
    "exchange.declare",
    "exchange.delete",
    "exchange.bind",
    "exchange.unbind",
    "queue.declare",
    "queue.delete",
    "queue.bind",
    "queue.unbind",
    "queue.purge",
];

/// `to[].amqp` as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AmqpTarget {
    pub operations: Vec<String>,
    pub vhosts: Vec<String>,
    pub exchanges: Vec<String>,
    pub routing_keys: Vec<String>,
    pub queues: Vec<String>,
}

/// One AMQP operation to authorize (one routing key at a time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AmqpRequest<'a> {
    pub operation: &'a str,
    pub vhost: &'a str,
    /// The exchange published to, declared, deleted or bound (`""`: the default exchange).
    pub exchange: Option<&'a str>,
    pub routing_key: Option<&'a str>,
    /// The queue consumed, read, declared, deleted, bound or purged.
    pub queue: Option<&'a str>,
}

/// Checks a routing-key pattern: dot-separated words, `*` and `#` only as whole words.
pub fn check_topic(pattern: &str) -> Result<(), String> {
    if pattern.len() > 255 {
        return Err("is longer than 255 bytes (the AMQP limit for routing keys)".into());
    }
    for word in pattern.split('.') {
        if word.len() > 1 && (word.contains('*') || word.contains('#')) {
            return Err(format!(
                "has {word:?}: * and # must be whole words (order.*, order.#)"
            ));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Word {
    Literal(String),
    /// `*`: exactly one word.
    One,
    /// `#`: zero or more words.
    Any,
}

/// A compiled topic pattern; matching is linear in pattern × key words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic(Vec<Word>);

impl Topic {
    pub fn new(pattern: &str) -> Self {
        Topic(
            pattern
                .split('.')
                .map(|w| match w {
                    "*" => Word::One,
                    "#" => Word::Any,
                    literal => Word::Literal(literal.to_owned()),
                })
                .collect(),
        )
    }

    pub fn matches(&self, key: &str) -> bool {
        let words: Vec<&str> = key.split('.').collect();
        // reachable[j]: the pattern prefix seen so far can consume exactly words[..j].
        let mut reachable = vec![false; words.len() + 1];
        reachable[0] = true;
        for word in &self.0 {
            let mut next = vec![false; words.len() + 1];
            match word {
                Word::Any => {
                    let mut on = false;
                    for j in 0..=words.len() {
                        on |= reachable[j];
                        next[j] = on;
                    }
                }
                Word::One => next[1..].copy_from_slice(&reachable[..words.len()]),
                Word::Literal(lit) => {
                    for j in 0..words.len() {
                        next[j + 1] = reachable[j] && words[j] == lit;
                    }
                }
            }
            reachable = next;
        }
        reachable[words.len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_semantics_as_rabbitmq() {
        let cases = [
            ("order.*", "order.created", true),
            ("order.*", "order", false),
            ("order.*", "order.created.eu", false),
            ("order.#", "order", true),
            ("order.#", "order.created.eu", true),
            ("#", "", true),
            ("#", "anything.at.all", true),
            ("*", "", true),
            ("*.created", "order.created", true),
            ("#.created", "a.b.created", true),
            ("#.created", "created", true),
            ("a.#.z", "a.z", true),
            ("a.#.z", "a.b.c.z", true),
            ("a.#.z", "a.b.c", false),
            ("order.created", "order.created", true),
            ("order.created", "order.createdX", false),
            ("", "", true),
            ("", "x", false),
        ];
        for (pattern, key, want) in cases {
            assert_eq!(
                Topic::new(pattern).matches(key),
                want,
                "{pattern} vs {key:?}"
            );
        }
    }

    #[test]
    fn pattern_checks() {
        assert!(check_topic("order.*.#").is_ok());
        assert!(check_topic("order*").is_err());
        assert!(check_topic("a.b#").is_err());
        assert!(check_topic(&"a".repeat(256)).is_err());
    }
}
