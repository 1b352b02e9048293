//! The `AuthorizationPolicy` document: its schema and how it is read.
//!
//! Shaped like Istio's `AuthorizationPolicy` so that Istio users can port theirs with little
//! change; what differs is in the README's policy reference.

use serde::Serialize;
use serde_json::Value;

use crate::documents::kind::Kind;
use crate::documents::walk::{Envelope, Walk, join};
use crate::spiffe::{SpiffeId, validate_namespace};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    Allow,
    Deny,
    Audit,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicy {
    pub name: String,
    pub namespace: String,
    /// The service it protects; `None` protects every workload of the namespace.
    pub service: Option<String>,
    pub action: Action,
    /// Evaluated and recorded as "would allow/deny", never enforced.
    pub dry_run: bool,
    pub rules: Vec<Rule>,
}

/// A rule matches when every one of its parts does: any `from`, any `to`, all `when`.
/// An empty part matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub from: Vec<Source>,
    pub to: Vec<Operation>,
    pub when: Vec<Condition>,
}

/// Every field that is present must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    pub principals: Vec<String>,
    pub not_principals: Vec<String>,
    pub namespaces: Vec<String>,
    pub not_namespaces: Vec<String>,
    pub request_principals: Vec<String>,
    pub not_request_principals: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    pub methods: Vec<String>,
    pub not_methods: Vec<String>,
    pub paths: Vec<String>,
    pub not_paths: Vec<String>,
    pub ports: Vec<u16>,
    pub not_ports: Vec<u16>,
    /// An AMQP operation instead of an HTTP one ([`super::amqp`]).
    pub amqp: Option<super::amqp::AmqpTarget>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    pub key: ConditionKey,
    pub values: Vec<String>,
    pub not_values: Vec<String>,
}

/// What a `when` condition looks at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ConditionKey {
    /// `request.headers[name]` (the name lower-cased).
    RequestHeader(String),
    /// `request.auth.claims[a][b]`: a claim of the end-user JWT, nested by path.
    Claim(Vec<String>),
    /// `request.auth.principal`: `iss/sub` of the end-user JWT.
    RequestPrincipal,
    /// `source.principal`: the caller's SPIFFE ID.
    SourcePrincipal,
    /// `source.namespace`.
    SourceNamespace,
    /// `destination.port`.
    DestinationPort,
}

impl Walk<'_> {
    /// One `AuthorizationPolicy` document; `None` when a problem was reported.
    pub(crate) fn policy(&mut self, v: &Value, root: &str) -> Option<AuthorizationPolicy> {
        let before = self.problems.len();
        let Envelope {
            name,
            namespace,
            spec,
            spec_loc,
        } = self.envelope(
            v,
            root,
            Kind::AuthorizationPolicy,
            &["selector", "action", "dryRun", "rules"],
        )?;
        let service = self.selector(spec, &spec_loc).ok()?;
        let action = match spec.get("action") {
            None => Action::Allow,
            Some(v) => match v.as_str() {
                Some("ALLOW") => Action::Allow,
                Some("DENY") => Action::Deny,
                Some("AUDIT") => Action::Audit,
                _ => {
                    self.problem(
                        &join(&spec_loc, "action"),
                        format!("{v} is not ALLOW, DENY or AUDIT"),
                    );
                    Action::Allow
                }
            },
        };
        let dry_run = match spec.get("dryRun") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                self.problem(
                    &join(&spec_loc, "dryRun"),
                    format!("must be true or false, not {other}"),
                );
                false
            }
        };
        let rules = self.rules(spec, &spec_loc, "rules", Self::rule);
        if self.problems.len() > before {
            return None;
        }
        Some(AuthorizationPolicy {
            name: name?,
            namespace: namespace?,
            service,
            action,
            dry_run,
            rules,
        })
    }

    fn rule(&mut self, v: &Value, loc: &str) -> Option<Rule> {
        let map = self.object(v, loc, &["from", "to", "when"])?;
        let from_loc = join(loc, "from");
        let from = self
            .list(map.get("from"), &from_loc)
            .iter()
            .enumerate()
            .filter_map(|(i, s)| self.source(s, &format!("{from_loc}[{i}]")))
            .collect();
        let to_loc = join(loc, "to");
        let to = self
            .list(map.get("to"), &to_loc)
            .iter()
            .enumerate()
            .filter_map(|(i, o)| self.operation(o, &format!("{to_loc}[{i}]")))
            .collect();
        let when_loc = join(loc, "when");
        let when = self
            .list(map.get("when"), &when_loc)
            .iter()
            .enumerate()
            .filter_map(|(i, c)| self.condition(c, &format!("{when_loc}[{i}]")))
            .collect();
        Some(Rule { from, to, when })
    }

    fn source(&mut self, v: &Value, loc: &str) -> Option<Source> {
        const FIELDS: &[&str] = &[
            "principals",
            "notPrincipals",
            "namespaces",
            "notNamespaces",
            "requestPrincipals",
            "notRequestPrincipals",
        ];
        let map = self.object(v, loc, FIELDS)?;
        let source = Source {
            principals: self.strings(map, loc, "principals", check_principal),
            not_principals: self.strings(map, loc, "notPrincipals", check_principal),
            namespaces: self.strings(map, loc, "namespaces", check_namespace),
            not_namespaces: self.strings(map, loc, "notNamespaces", check_namespace),
            request_principals: self.strings(map, loc, "requestPrincipals", check_pattern),
            not_request_principals: self.strings(map, loc, "notRequestPrincipals", check_pattern),
        };
        if map.is_empty() {
            self.problem(loc, "is empty; remove it to match any source");
        }
        Some(source)
    }

    fn operation(&mut self, v: &Value, loc: &str) -> Option<Operation> {
        const FIELDS: &[&str] = &[
            "methods",
            "notMethods",
            "paths",
            "notPaths",
            "ports",
            "notPorts",
            "amqp",
        ];
        let map = self.object(v, loc, FIELDS)?;
        let amqp = map
            .get("amqp")
            .and_then(|a| self.amqp(a, &join(loc, "amqp")));
        if map.contains_key("amqp") && map.len() > 1 {
            self.problem(
                loc,
                "amqp cannot be combined with HTTP fields in one entry; use another entry of to",
            );
        }
        let op = Operation {
            methods: self.strings(map, loc, "methods", check_method),
            not_methods: self.strings(map, loc, "notMethods", check_method),
            paths: self.strings(map, loc, "paths", check_path),
            not_paths: self.strings(map, loc, "notPaths", check_path),
            ports: self.ports(map, loc, "ports"),
            not_ports: self.ports(map, loc, "notPorts"),
            amqp,
        };
        if map.is_empty() {
            self.problem(loc, "is empty; remove it to match any operation");
        }
        Some(op)
    }

    fn amqp(&mut self, v: &Value, loc: &str) -> Option<super::amqp::AmqpTarget> {
        use super::amqp::{OPERATIONS, check_topic};
        let map = self.object(
            v,
            loc,
            &["operations", "vhosts", "exchanges", "routingKeys", "queues"],
        )?;
        let target = super::amqp::AmqpTarget {
            operations: self.strings(map, loc, "operations", |s| {
                if OPERATIONS.contains(&s) {
                    Ok(())
                } else {
                    Err(format!(
                        "is not an AMQP operation (one of: {})",
                        OPERATIONS.join(", ")
                    ))
                }
            }),
            vhosts: self.strings(map, loc, "vhosts", check_pattern),
            // "" is the default exchange, a name of its own.
            exchanges: self.strings(map, loc, "exchanges", |s| {
                if s.is_empty() {
                    Ok(())
                } else {
                    check_pattern(s)
                }
            }),
            routing_keys: self.strings(map, loc, "routingKeys", check_topic),
            queues: self.strings(map, loc, "queues", check_pattern),
        };
        if map.is_empty() {
            self.problem(
                loc,
                "is empty; name at least one of operations, vhosts, exchanges, routingKeys, queues",
            );
        }
        Some(target)
    }

    fn condition(&mut self, v: &Value, loc: &str) -> Option<Condition> {
        let map = self.object(v, loc, &["key", "values", "notValues"])?;
        let key_loc = join(loc, "key");
        let key = match map.get("key") {
            None => {
                self.problem(&key_loc, "is required");
                None
            }
            Some(k) => self.string(k, &key_loc).and_then(|k| match parse_key(k) {
                Ok(key) => Some(key),
                Err(why) => {
                    self.problem(&key_loc, format!("{k:?} {why}"));
                    None
                }
            }),
        };
        let values = self.strings(map, loc, "values", check_pattern);
        let not_values = self.strings(map, loc, "notValues", check_pattern);
        if values.is_empty() && not_values.is_empty() {
            self.problem(loc, "needs values or notValues");
        }
        if key == Some(ConditionKey::DestinationPort) {
            for (field, list) in [("values", &values), ("notValues", &not_values)] {
                for (i, v) in list.iter().enumerate() {
                    if !matches!(v.parse::<u32>(), Ok(1..=65535)) {
                        self.problem(
                            &format!("{}[{i}]", join(loc, field)),
                            format!("{v:?} is not a port"),
                        );
                    }
                }
            }
        }
        Some(Condition {
            key: key?,
            values,
            not_values,
        })
    }
}

/// Exact, `prefix*`, `*suffix` or `*`: at most one `*`, at an end.
fn check_pattern(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("is empty".into());
    }
    let stars = s.matches('*').count();
    if stars == 0 || s == "*" || (stars == 1 && (s.starts_with('*') || s.ends_with('*'))) {
        Ok(())
    } else {
        Err("is not a valid pattern: use exact, prefix*, *suffix or *".into())
    }
}

fn check_principal(s: &str) -> Result<(), String> {
    check_pattern(s)?;
    if s.contains('*') {
        if s != "*" && !s.starts_with("spiffe://") && !s.starts_with('*') {
            return Err("must be a SPIFFE ID (spiffe://...) or a pattern of one".into());
        }
        return Ok(());
    }
    SpiffeId::parse(s)
        .map(|_| ())
        .map_err(|e| format!("is not a valid SPIFFE ID: it {e}"))
}

fn check_namespace(s: &str) -> Result<(), String> {
    check_pattern(s)?;
    if s.contains('*') || validate_namespace(s).is_ok() {
        Ok(())
    } else {
        Err("is not a valid namespace".into())
    }
}

fn check_method(s: &str) -> Result<(), String> {
    if !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_uppercase()) || s == "*" {
        Ok(())
    } else {
        Err("is not an upper-case HTTP method".into())
    }
}

fn check_path(s: &str) -> Result<(), String> {
    check_pattern(s)?;
    if s.starts_with('*') {
        return Ok(());
    }
    if !s.starts_with('/') {
        return Err("must start with '/' (or be a *suffix pattern)".into());
    }
    let literal = s.trim_end_matches('*');
    if literal.contains(';') {
        return Err(
            "contains ';': requests are matched with their path parameters removed (as Tomcat \
             and Spring route them), so this would never match"
                .into(),
        );
    }
    match crate::path::normalize(
        literal,
        crate::path::PathOptions {
            allow_encoded_slashes: true,
        },
    ) {
        Ok(n) if n.path == literal && n.query.is_none() => Ok(()),
        Ok(n) if n.query.is_none() => Err(format!(
            "is not in normalized form and would never match; write {:?}",
            if s.ends_with('*') {
                format!("{}*", n.path)
            } else {
                n.path
            }
        )),
        _ => Err("is not a valid path (no query, fragment or control characters)".into()),
    }
}

/// Parses a `when` key.
fn parse_key(k: &str) -> Result<ConditionKey, String> {
    match k {
        "source.principal" => return Ok(ConditionKey::SourcePrincipal),
        "source.namespace" => return Ok(ConditionKey::SourceNamespace),
        "request.auth.principal" => return Ok(ConditionKey::RequestPrincipal),
        "destination.port" => return Ok(ConditionKey::DestinationPort),
        _ => {}
    }
    let unknown = || {
        "is not a supported key (request.headers[NAME], request.auth.claims[NAME]..., \
         request.auth.principal, source.principal, source.namespace, destination.port)"
            .to_owned()
    };
    if let Some(rest) = k.strip_prefix("request.headers[") {
        let name = rest.strip_suffix(']').ok_or_else(unknown)?;
        if name.is_empty() || http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err("names an invalid header".into());
        }
        return Ok(ConditionKey::RequestHeader(name.to_ascii_lowercase()));
    }
    if let Some(rest) = k.strip_prefix("request.auth.claims") {
        let mut path = Vec::new();
        let mut rest = rest;
        while let Some(r) = rest.strip_prefix('[') {
            let (name, after) = r.split_once(']').ok_or_else(unknown)?;
            if name.is_empty() {
                return Err("has an empty claim name".into());
            }
            path.push(name.to_owned());
            rest = after;
        }
        if path.is_empty() || !rest.is_empty() {
            return Err(unknown());
        }
        return Ok(ConditionKey::Claim(path));
    }
    Err(unknown())
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::documents::parse_documents;
    use crate::documents::tests::assert_problems;

    const EXAMPLE: &str = r#"
apiVersion: palisade.dev/v1
kind: AuthorizationPolicy
metadata: { name: payments-from-orders, namespace: shop }
spec:
  selector: { service: payments }
  action: ALLOW
  rules:
    - from: [ { principals: ["spiffe://palisade.local/ns/shop/sa/orders"] } ]
      to:   [ { methods: ["POST"], paths: ["/charge", "/refunds/*"] } ]
      when: [ { key: "request.headers[x-tenant]", values: ["acme"] } ]
"#;

    #[test]
    fn parses_the_documented_example() {
        let p = parse_documents(EXAMPLE).unwrap().authorization;
        assert_eq!(p.len(), 1);
        let p = &p[0];
        assert_eq!(
            (p.name.as_str(), p.namespace.as_str()),
            ("payments-from-orders", "shop")
        );
        assert_eq!(p.service.as_deref(), Some("payments"));
        assert_eq!(p.action, Action::Allow);
        assert!(!p.dry_run);
        assert_eq!(
            p.rules[0].from[0].principals,
            ["spiffe://palisade.local/ns/shop/sa/orders"]
        );
        assert_eq!(p.rules[0].to[0].paths, ["/charge", "/refunds/*"]);
        assert_eq!(
            p.rules[0].when[0].key,
            ConditionKey::RequestHeader("x-tenant".into())
        );
    }

    #[test]
    fn json_and_multiple_documents() {
        let json = r#"{"apiVersion":"palisade.dev/v1","kind":"AuthorizationPolicy",
            "metadata":{"name":"deny-all","namespace":"shop"},"spec":{"action":"DENY","rules":[{}]}}"#;
        let p = parse_documents(json).unwrap().authorization;
        assert_eq!(p[0].action, Action::Deny);
        assert_eq!(p[0].rules, vec![Rule::default()]);
        let both = format!("{EXAMPLE}\n---\n{json}\n");
        assert_eq!(parse_documents(&both).unwrap().authorization.len(), 2);
    }

    #[test]
    fn every_problem_is_reported_with_its_location() {
        let bad = r#"
apiVersion: palisade.dev/v2
kind: AuthorizationPolicy
metadata: { name: Bad_Name, namespace: shop }
spec:
  action: MAYBE
  dryRun: "yes"
  colour: blue
  rules:
    - from: [ { principals: ["spiffe://palisade.local/ns/../sa/x", "orders"], namespaces: ["Shop"] } ]
      to:   [ { methods: ["POST", "get"], paths: ["/a/../b", "charge", "/x*y"], ports: [0, "8080", "http"] } ]
      when: [ { key: "request.cookies[x]", values: ["a"] }, { key: "request.headers[x-a]" } ]
      unless: []
"#;
        let expect = [
            "apiVersion: must be \"palisade.dev/v1\"",
            "metadata.name: \"Bad_Name\" is not a valid name",
            "spec.colour: unknown field",
            "spec.action: \"MAYBE\" is not ALLOW, DENY or AUDIT",
            "spec.dryRun: must be true or false",
            "spec.rules[0].unless: unknown field",
            "spec.rules[0].from[0].principals[0]: \"spiffe://palisade.local/ns/../sa/x\" is not a valid SPIFFE ID",
            "spec.rules[0].from[0].principals[1]: \"orders\" is not a valid SPIFFE ID",
            "spec.rules[0].from[0].namespaces[0]: \"Shop\" is not a valid namespace",
            "spec.rules[0].to[0].methods[1]: \"get\" is not an upper-case HTTP method",
            "spec.rules[0].to[0].paths[0]: \"/a/../b\" is not in normalized form and would never match; write \"/b\"",
            "spec.rules[0].to[0].paths[1]: \"charge\" must start with '/'",
            "spec.rules[0].to[0].paths[2]: \"/x*y\" is not a valid pattern",
            "spec.rules[0].to[0].ports[0]: 0 is not a port",
            "spec.rules[0].to[0].ports[2]: \"http\" is not a port",
            "spec.rules[0].when[0].key: \"request.cookies[x]\" is not a supported key",
            "spec.rules[0].when[1]: needs values or notValues",
        ];
        assert_problems(bad, &expect);
    }

    #[test]
    fn condition_keys() {
        assert_eq!(
            parse_key("request.auth.claims[groups]"),
            Ok(ConditionKey::Claim(vec!["groups".into()]))
        );
        assert_eq!(
            parse_key("request.auth.claims[realm][roles]"),
            Ok(ConditionKey::Claim(vec!["realm".into(), "roles".into()]))
        );
        assert_eq!(
            parse_key("request.headers[X-Tenant]"),
            Ok(ConditionKey::RequestHeader("x-tenant".into()))
        );
        assert!(parse_key("request.headers[bad header]").is_err());
        assert!(parse_key("request.auth.claims[]").is_err());
        assert!(parse_key("request.auth.claims[a]x").is_err());
        assert_eq!(
            parse_key("destination.port"),
            Ok(ConditionKey::DestinationPort)
        );
    }
}
