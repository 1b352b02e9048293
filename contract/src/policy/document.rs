//! Authorization policy documents: parsing and validation.
//!
//! Documents are YAML or JSON (several per input, `---`-separated), shaped like Istio's
//! `AuthorizationPolicy` so that Istio users can port theirs with little change. Parsing
//! goes through a generic value first and then walks it field by field, so that *every*
//! problem is reported with its location (`spec.rules[0].to[0].methods[1]: "get" is not an
//! upper-case HTTP method`), and unknown fields are errors rather than silently ignored.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::spiffe::{SpiffeId, validate_namespace, validate_service_account};

pub const API_VERSION: &str = "palisade.dev/v1";
pub const KIND: &str = "AuthorizationPolicy";

/// Limits that keep a policy cheap to compile and to evaluate.
pub const MAX_RULES: usize = 256;
pub const MAX_VALUES: usize = 1024;
pub const MAX_VALUE_LEN: usize = 1024;

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

/// One problem in a document, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub location: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// Every problem found in an input, in document order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} problem(s): {}", .0.len(), .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
pub struct Problems(pub Vec<Problem>);

/// The documents of one input, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyDocuments {
    pub authorization: Vec<AuthorizationPolicy>,
    pub authentication: Vec<super::authentication::RequestAuthentication>,
    pub services: Vec<crate::registry::ServiceEntry>,
}

/// One validated document of any kind the mesh knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Document {
    Authorization(AuthorizationPolicy),
    Authentication(super::authentication::RequestAuthentication),
    Service(crate::registry::ServiceEntry),
}

impl Document {
    pub fn kind(&self) -> &'static str {
        match self {
            Document::Authorization(_) => KIND,
            Document::Authentication(_) => super::authentication::KIND,
            Document::Service(_) => crate::registry::KIND,
        }
    }

    /// `(namespace, name)`.
    pub fn key(&self) -> (&str, &str) {
        match self {
            Document::Authorization(d) => (&d.namespace, &d.name),
            Document::Authentication(d) => (&d.namespace, &d.name),
            Document::Service(d) => (&d.namespace, &d.name),
        }
    }
}

/// The kinds of document the mesh stores, in the order they are listed.
pub const KINDS: [&str; 3] = [KIND, super::authentication::KIND, crate::registry::KIND];

/// Splits YAML or JSON input (several documents, `---`-separated) into generic values.
pub fn parse_values(input: &str) -> Result<Vec<Value>, Problems> {
    let values: Vec<Value> = serde_saphyr::from_multiple(input).map_err(|e| {
        Problems(vec![Problem {
            location: "input".into(),
            message: format!("not valid YAML or JSON: {e}"),
        }])
    })?;
    if values.is_empty() {
        return Err(Problems(vec![Problem {
            location: "input".into(),
            message: "no document found".into(),
        }]));
    }
    Ok(values)
}

/// Validates each value as the document its `kind` names. All must be valid for any to be
/// returned: a batch is applied whole or not at all. Locations are prefixed with `[i]` when
/// there are several documents.
pub fn validate_values(values: &[Value]) -> Result<Vec<Document>, Problems> {
    let mut problems = Vec::new();
    let mut docs = Vec::new();
    let several = values.len() > 1;
    for (i, value) in values.iter().enumerate() {
        let root = if several {
            format!("[{i}]")
        } else {
            String::new()
        };
        let mut walk = Walk {
            problems: &mut problems,
        };
        let doc = match value.get("kind").and_then(Value::as_str) {
            Some(super::authentication::KIND) => walk
                .request_authentication(value, &root)
                .map(Document::Authentication),
            Some(crate::registry::KIND) => walk.service(value, &root).map(Document::Service),
            _ => walk.policy(value, &root).map(Document::Authorization),
        };
        docs.extend(doc);
    }
    if problems.is_empty() {
        Ok(docs)
    } else {
        Err(Problems(problems))
    }
}

impl PolicyDocuments {
    pub fn from_documents(docs: Vec<Document>) -> Self {
        let mut out = Self::default();
        for doc in docs {
            match doc {
                Document::Authorization(d) => out.authorization.push(d),
                Document::Authentication(d) => out.authentication.push(d),
                Document::Service(d) => out.services.push(d),
            }
        }
        out
    }
}

/// Parses and validates one or more YAML or JSON documents of any kind (see
/// [`validate_values`]).
pub fn parse_documents(input: &str) -> Result<PolicyDocuments, Problems> {
    let values = parse_values(input)?;
    validate_values(&values).map(PolicyDocuments::from_documents)
}

pub(crate) fn join(base: &str, field: &str) -> String {
    if base.is_empty() {
        field.to_owned()
    } else {
        format!("{base}.{field}")
    }
}

/// Walks a generic value, collecting every problem with its location.
pub(crate) struct Walk<'p> {
    pub(crate) problems: &'p mut Vec<Problem>,
}

/// The common parts of a document, as [`Walk::envelope`] found them.
pub(crate) struct Envelope<'v> {
    pub(crate) name: Option<String>,
    pub(crate) namespace: Option<String>,
    pub(crate) spec: &'v Map<String, Value>,
    pub(crate) spec_loc: String,
}

impl Walk<'_> {
    pub(crate) fn problem(&mut self, location: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            location: if location.is_empty() {
                "document".into()
            } else {
                location.to_owned()
            },
            message: message.into(),
        });
    }

    /// The value as an object whose fields are all in `known`; unknown fields are reported.
    pub(crate) fn object<'v>(
        &mut self,
        v: &'v Value,
        loc: &str,
        known: &[&str],
    ) -> Option<&'v Map<String, Value>> {
        let Some(map) = v.as_object() else {
            self.problem(loc, format!("must be an object, not {}", type_name(v)));
            return None;
        };
        for key in map.keys() {
            if !known.contains(&key.as_str()) {
                self.problem(
                    &join(loc, key),
                    format!("unknown field (expected one of: {})", known.join(", ")),
                );
            }
        }
        Some(map)
    }

    pub(crate) fn string<'v>(&mut self, v: &'v Value, loc: &str) -> Option<&'v str> {
        match v.as_str() {
            Some(s) if s.len() <= MAX_VALUE_LEN => Some(s),
            Some(_) => {
                self.problem(loc, format!("is longer than {MAX_VALUE_LEN} bytes"));
                None
            }
            None => {
                self.problem(loc, format!("must be a string, not {}", type_name(v)));
                None
            }
        }
    }

    pub(crate) fn list<'v>(&mut self, v: Option<&'v Value>, loc: &str) -> &'v [Value] {
        match v {
            None | Some(Value::Null) => &[],
            Some(Value::Array(items)) if items.len() <= MAX_VALUES => items,
            Some(Value::Array(_)) => {
                self.problem(loc, format!("has more than {MAX_VALUES} entries"));
                &[]
            }
            Some(other) => {
                self.problem(loc, format!("must be a list, not {}", type_name(other)));
                &[]
            }
        }
    }

    /// The list `field` of `map`, each entry parsed by `parse` (at most [`MAX_RULES`]).
    pub(crate) fn rules<T>(
        &mut self,
        map: &Map<String, Value>,
        base: &str,
        field: &str,
        parse: impl Fn(&mut Self, &Value, &str) -> Option<T>,
    ) -> Vec<T> {
        let loc = join(base, field);
        let items = self.list(map.get(field), &loc);
        if items.len() > MAX_RULES {
            self.problem(&loc, format!("has more than {MAX_RULES} rules"));
        }
        items
            .iter()
            .enumerate()
            .filter_map(|(i, r)| parse(self, r, &format!("{loc}[{i}]")))
            .collect()
    }

    /// A list of strings, each checked by `check` (which returns why a value is wrong).
    pub(crate) fn strings(
        &mut self,
        map: &Map<String, Value>,
        base: &str,
        field: &str,
        check: impl Fn(&str) -> Result<(), String>,
    ) -> Vec<String> {
        let loc = join(base, field);
        let mut out = Vec::new();
        for (i, item) in self.list(map.get(field), &loc).iter().enumerate() {
            let item_loc = format!("{loc}[{i}]");
            if let Some(s) = self.string(item, &item_loc) {
                match check(s) {
                    Ok(()) => out.push(s.to_owned()),
                    Err(why) => self.problem(&item_loc, format!("{s:?} {why}")),
                }
            }
        }
        out
    }

    fn ports(&mut self, map: &Map<String, Value>, base: &str, field: &str) -> Vec<u16> {
        let loc = join(base, field);
        let mut out = Vec::new();
        for (i, item) in self.list(map.get(field), &loc).iter().enumerate() {
            // Istio writes ports as strings; numbers are accepted too.
            let port = match item {
                Value::Number(n) => n.as_u64(),
                Value::String(s) => s.parse::<u64>().ok(),
                _ => None,
            };
            match port {
                Some(p @ 1..=65535) => out.push(p as u16),
                _ => self.problem(
                    &format!("{loc}[{i}]"),
                    format!("{item} is not a port (1-65535)"),
                ),
            }
        }
        out
    }

    /// The parts every document kind shares: `apiVersion`, `kind`, `metadata` (name and
    /// namespace) and a `spec` object with the given fields.
    pub(crate) fn envelope<'v>(
        &mut self,
        v: &'v Value,
        root: &str,
        kind: &str,
        spec_fields: &[&str],
    ) -> Option<Envelope<'v>> {
        let doc = self.object(v, root, &["apiVersion", "kind", "metadata", "spec"])?;
        match doc.get("apiVersion").and_then(Value::as_str) {
            Some(API_VERSION) => {}
            _ => self.problem(
                &join(root, "apiVersion"),
                format!("must be {API_VERSION:?}"),
            ),
        }
        if doc.get("kind").and_then(Value::as_str) != Some(kind) {
            self.problem(&join(root, "kind"), format!("must be {kind:?}"));
        }
        let (name, namespace) = self.metadata(doc.get("metadata"), &join(root, "metadata"));
        let spec_loc = join(root, "spec");
        // A missing spec is an empty one (for an ALLOW policy: allow nothing, as Istio).
        static EMPTY: std::sync::LazyLock<Value> =
            std::sync::LazyLock::new(|| Value::Object(Map::new()));
        let spec = self.object(doc.get("spec").unwrap_or(&EMPTY), &spec_loc, spec_fields)?;
        Some(Envelope {
            name,
            namespace,
            spec,
            spec_loc,
        })
    }

    /// `spec.selector`: `Ok(None)` protects the whole namespace; `Err` was reported.
    pub(crate) fn selector(
        &mut self,
        spec: &Map<String, Value>,
        spec_loc: &str,
    ) -> Result<Option<String>, ()> {
        let sel = match spec.get("selector") {
            None | Some(Value::Null) => return Ok(None),
            Some(sel) => sel,
        };
        let loc = join(spec_loc, "selector");
        let sel = self.object(sel, &loc, &["service"]).ok_or(())?;
        let Some(s) = sel.get("service") else {
            self.problem(
                &loc,
                "must name a service (omit the selector to protect the whole namespace)",
            );
            return Err(());
        };
        let loc = join(&loc, "service");
        let s = self.string(s, &loc).ok_or(())?;
        match validate_namespace(s) {
            Ok(()) => Ok(Some(s.to_owned())),
            Err(_) => {
                self.problem(
                    &loc,
                    format!("{s:?} is not a valid service name (a DNS label)"),
                );
                Err(())
            }
        }
    }

    fn policy(&mut self, v: &Value, root: &str) -> Option<AuthorizationPolicy> {
        let before = self.problems.len();
        let Envelope {
            name,
            namespace,
            spec,
            spec_loc,
        } = self.envelope(v, root, KIND, &["selector", "action", "dryRun", "rules"])?;
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

    fn metadata(&mut self, v: Option<&Value>, loc: &str) -> (Option<String>, Option<String>) {
        let Some(v) = v else {
            self.problem(loc, "is required (name and namespace)");
            return (None, None);
        };
        let Some(meta) = self.object(v, loc, &["name", "namespace", "labels", "annotations"])
        else {
            return (None, None);
        };
        let field = |walk: &mut Self, key: &str, check: fn(&str) -> bool, rule: &str| {
            let loc = join(loc, key);
            match meta.get(key) {
                None => {
                    walk.problem(&loc, "is required");
                    None
                }
                Some(v) => walk.string(v, &loc).and_then(|s| {
                    if check(s) {
                        Some(s.to_owned())
                    } else {
                        walk.problem(&loc, format!("{s:?} is not {rule}"));
                        None
                    }
                }),
            }
        };
        let name = field(
            self,
            "name",
            |s| validate_service_account(s).is_ok(),
            "a valid name (a DNS subdomain)",
        );
        let namespace = field(
            self,
            "namespace",
            |s| validate_namespace(s).is_ok(),
            "a valid namespace (a DNS label)",
        );
        (name, namespace)
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

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
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
pub(super) mod tests {
    use super::*;

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

    /// `input` is refused with exactly the problems `expect` (each a prefix of one).
    pub(in crate::policy) fn assert_problems(input: &str, expect: &[&str]) {
        let problems = parse_documents(input).unwrap_err().0;
        let got: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        for e in expect {
            assert!(
                got.iter().any(|g| g.starts_with(e)),
                "missing {e:?} in {got:#?}"
            );
        }
        assert_eq!(got.len(), expect.len(), "{got:#?}");
    }

    #[test]
    fn a_batch_with_one_bad_document_is_refused_whole() {
        let bad = EXAMPLE.replace("POST", "post");
        let err = parse_documents(&format!("{EXAMPLE}\n---\n{bad}")).unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert!(
            err.0[0]
                .location
                .starts_with("[1].spec.rules[0].to[0].methods[0]"),
            "{err}"
        );
    }

    #[test]
    fn garbage_and_limits() {
        assert!(parse_documents("{ not: [yaml").is_err());
        assert!(
            parse_documents("42").unwrap_err().0[0]
                .message
                .contains("must be an object")
        );
        let many: Vec<String> = (0..=MAX_VALUES).map(|i| format!("\"/p{i}\"")).collect();
        let big = EXAMPLE.replace(
            r#"["/charge", "/refunds/*"]"#,
            &format!("[{}]", many.join(",")),
        );
        let err = parse_documents(&big).unwrap_err();
        assert!(err.to_string().contains("more than 1024 entries"), "{err}");
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
