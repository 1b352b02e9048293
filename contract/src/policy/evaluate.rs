//! Evaluating authorization policies for one request.
//!
//! Semantics (Istio's, with Palisade's default deny):
//! 1. A matching enforced **DENY** policy denies; DENY beats ALLOW.
//! 2. Otherwise a matching enforced **ALLOW** policy allows.
//! 3. Otherwise the request is denied, including when no policy selects the workload; the
//!    mesh-wide [`DefaultMode`] may relax only that last case (no policy at all) to allow or
//!    audit, for migrations.
//! - **AUDIT** policies never change the decision; a match is recorded.
//! - **dry-run** policies are evaluated and recorded as what they would do, never enforced.
//!
//! Which policies apply to a workload is decided by [`super::index`], so a request looks
//! only at the policies that can select it, however many others the mesh holds; string
//! matchers are compiled once.

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use super::authorization::{
    Action, AuthorizationPolicy, Condition, ConditionKey, Operation, Rule, Source,
};
use super::index::WorkloadIndex;
pub use super::index::{MESH_NAMESPACE, Workload};
use crate::spiffe::SpiffeId;

/// What happens to a request for a workload that no policy selects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultMode {
    #[default]
    Deny,
    Allow,
    /// Allowed, and recorded as one that default deny would have refused.
    Audit,
}

impl std::str::FromStr for DefaultMode {
    type Err = String;

    /// `deny`, `allow` or `audit`: the one parser of the default mode, for the sidecar's
    /// `--default-mode` and the control plane's `simulate`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "deny" => Ok(DefaultMode::Deny),
            "allow" => Ok(DefaultMode::Allow),
            "audit" => Ok(DefaultMode::Audit),
            other => Err(format!(
                "{:?} is not deny, allow or audit",
                other.chars().take(32).collect::<String>()
            )),
        }
    }
}

/// A compiled string pattern: exact, `prefix*`, `*suffix` or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Any,
}

impl StringMatch {
    fn compile(pattern: &str) -> Self {
        if pattern == "*" {
            StringMatch::Any
        } else if let Some(p) = pattern.strip_suffix('*') {
            StringMatch::Prefix(p.to_owned())
        } else if let Some(s) = pattern.strip_prefix('*') {
            StringMatch::Suffix(s.to_owned())
        } else {
            StringMatch::Exact(pattern.to_owned())
        }
    }

    fn matches(&self, s: &str) -> bool {
        match self {
            StringMatch::Exact(e) => s == e,
            StringMatch::Prefix(p) => s.starts_with(p.as_str()),
            StringMatch::Suffix(x) => s.ends_with(x.as_str()),
            StringMatch::Any => true,
        }
    }
}

fn compile_all(patterns: &[String]) -> Vec<StringMatch> {
    patterns.iter().map(|p| StringMatch::compile(p)).collect()
}

fn any_matches(matchers: &[StringMatch], s: &str) -> bool {
    matchers.iter().any(|m| m.matches(s))
}

/// `list` is a positive field: empty means "not constrained", else the value must match.
fn positive(list: &[StringMatch], value: Option<&str>) -> bool {
    list.is_empty() || value.is_some_and(|v| any_matches(list, v))
}

/// `list` is a negative field: empty means "not constrained", else the value must not match
/// (an absent value matches nothing, so it passes).
fn negative(list: &[StringMatch], value: Option<&str>) -> bool {
    list.is_empty() || !value.is_some_and(|v| any_matches(list, v))
}

#[derive(Debug)]
struct CompiledSource {
    principals: Vec<StringMatch>,
    not_principals: Vec<StringMatch>,
    namespaces: Vec<StringMatch>,
    not_namespaces: Vec<StringMatch>,
    request_principals: Vec<StringMatch>,
    not_request_principals: Vec<StringMatch>,
}

impl CompiledSource {
    fn new(s: &Source) -> Self {
        Self {
            principals: compile_all(&s.principals),
            not_principals: compile_all(&s.not_principals),
            namespaces: compile_all(&s.namespaces),
            not_namespaces: compile_all(&s.not_namespaces),
            request_principals: compile_all(&s.request_principals),
            not_request_principals: compile_all(&s.not_request_principals),
        }
    }

    fn uses_http_fields(&self) -> bool {
        !self.request_principals.is_empty() || !self.not_request_principals.is_empty()
    }

    /// On a connection (`req.l4`) the HTTP-only fields are not looked at; see
    /// [`CompiledRule::matches`] for what that means per action.
    fn matches(&self, req: &Request<'_>) -> bool {
        let principal = req.source.map(SpiffeId::as_str);
        let namespace = req.source.and_then(SpiffeId::namespace);
        positive(&self.principals, principal)
            && negative(&self.not_principals, principal)
            && positive(&self.namespaces, namespace)
            && negative(&self.not_namespaces, namespace)
            && (req.l4
                || positive(&self.request_principals, req.request_principal)
                    && negative(&self.not_request_principals, req.request_principal))
    }
}

#[derive(Debug)]
struct CompiledAmqp {
    operations: Vec<String>,
    vhosts: Vec<StringMatch>,
    /// Patterns; the default exchange `""` only when named (`default_exchange`).
    exchanges: Vec<StringMatch>,
    default_exchange: bool,
    routing_keys: Vec<super::amqp::Topic>,
    queues: Vec<StringMatch>,
}

impl CompiledAmqp {
    fn new(t: &super::amqp::AmqpTarget) -> Self {
        Self {
            operations: t.operations.clone(),
            vhosts: compile_all(&t.vhosts),
            exchanges: t
                .exchanges
                .iter()
                .filter(|e| !e.is_empty())
                .map(|e| StringMatch::compile(e))
                .collect(),
            default_exchange: t.exchanges.iter().any(String::is_empty),
            routing_keys: t
                .routing_keys
                .iter()
                .map(|k| super::amqp::Topic::new(k))
                .collect(),
            queues: compile_all(&t.queues),
        }
    }

    fn matches(&self, r: &super::amqp::AmqpRequest<'_>) -> bool {
        let exchange_ok = match r.exchange {
            None => true,
            Some("") => self.default_exchange,
            Some(e) => {
                (self.exchanges.is_empty() && !self.default_exchange)
                    || any_matches(&self.exchanges, e)
            }
        };
        (self.operations.is_empty() || self.operations.iter().any(|o| o == r.operation))
            && positive(&self.vhosts, Some(r.vhost))
            && exchange_ok
            && (self.routing_keys.is_empty()
                || r.routing_key
                    .is_some_and(|k| self.routing_keys.iter().any(|t| t.matches(k))))
            && positive(&self.queues, r.queue)
    }
}

#[derive(Debug)]
struct CompiledOperation {
    methods: Vec<StringMatch>,
    not_methods: Vec<StringMatch>,
    paths: Vec<StringMatch>,
    not_paths: Vec<StringMatch>,
    ports: Vec<u16>,
    not_ports: Vec<u16>,
    amqp: Option<CompiledAmqp>,
}

impl CompiledOperation {
    fn new(o: &Operation) -> Self {
        Self {
            methods: compile_all(&o.methods),
            not_methods: compile_all(&o.not_methods),
            paths: compile_all(&o.paths),
            not_paths: compile_all(&o.not_paths),
            ports: o.ports.clone(),
            not_ports: o.not_ports.clone(),
            amqp: o.amqp.as_ref().map(CompiledAmqp::new),
        }
    }

    fn uses_http_fields(&self) -> bool {
        !self.methods.is_empty()
            || !self.not_methods.is_empty()
            || !self.paths.is_empty()
            || !self.not_paths.is_empty()
    }

    fn matches(&self, req: &Request<'_>) -> bool {
        if let Some(amqp) = &self.amqp {
            // An AMQP entry matches AMQP operations only.
            return req.amqp.as_ref().is_some_and(|r| amqp.matches(r));
        }
        (req.l4
            || positive(&self.methods, Some(req.method))
                && negative(&self.not_methods, Some(req.method))
                && positive(&self.paths, Some(req.path))
                && negative(&self.not_paths, Some(req.path)))
            && (self.ports.is_empty() || self.ports.contains(&req.port))
            && !self.not_ports.contains(&req.port)
    }
}

#[derive(Debug)]
struct CompiledCondition {
    key: ConditionKey,
    values: Vec<StringMatch>,
    not_values: Vec<StringMatch>,
}

impl CompiledCondition {
    fn new(c: &Condition) -> Self {
        Self {
            key: c.key.clone(),
            values: compile_all(&c.values),
            not_values: compile_all(&c.not_values),
        }
    }

    fn uses_http_fields(&self) -> bool {
        matches!(
            self.key,
            ConditionKey::RequestHeader(_)
                | ConditionKey::Claim(_)
                | ConditionKey::RequestPrincipal
        )
    }

    /// `unreadable_matches`: what a header value that is not valid UTF-8 counts as. For a
    /// DENY it counts as a match (an attacker must not dodge a DENY with bad bytes); for an
    /// ALLOW it counts as no match. It is true exactly for DENY and AUDIT policies.
    ///
    /// A header is a list (RFC 9110, section 5.3): `x-debug: off, on` on one line means what
    /// two lines `off` and `on` mean, and backends join or split them as they please. So a
    /// header is matched by its readings: every line whole, and every element of a line that
    /// holds a comma (commas inside quoted strings do not split). `values` match when any
    /// reading does, for ALLOW and DENY alike. `notValues` exclude, for an ALLOW, when any
    /// reading is listed; for a DENY only when every reading is, so an unlisted element
    /// cannot hide behind a listed one.
    fn matches(&self, req: &Request<'_>, unreadable_matches: bool) -> bool {
        if req.l4 && self.uses_http_fields() {
            return true;
        }
        let check = |values: &mut dyn Iterator<Item = &str>| -> bool {
            let mut any = false;
            let mut excluded = false;
            for v in values {
                any |= any_matches(&self.values, v);
                excluded |= any_matches(&self.not_values, v);
            }
            (self.values.is_empty() || any) && !excluded
        };
        match &self.key {
            ConditionKey::RequestHeader(name) => {
                let lines = req.headers.get_all(name.as_str());
                if lines.iter().any(|v| v.to_str().is_err()) {
                    return unreadable_matches;
                }
                let readings = || {
                    lines
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .flat_map(list_readings)
                };
                let any = readings().any(|v| any_matches(&self.values, v));
                let excluded = if unreadable_matches {
                    let mut seen = false;
                    let all_listed = readings().all(|v| {
                        seen = true;
                        any_matches(&self.not_values, v)
                    });
                    seen && all_listed && !self.not_values.is_empty()
                } else {
                    readings().any(|v| any_matches(&self.not_values, v))
                };
                (self.values.is_empty() || any) && !excluded
            }
            ConditionKey::Claim(path) => {
                let mut node = req.claims;
                for segment in path {
                    node = node.and_then(|n| n.get(segment));
                }
                let scalars: Vec<String> = match node {
                    Some(Value::Array(items)) => items.iter().filter_map(scalar).collect(),
                    Some(v) => scalar(v).into_iter().collect(),
                    None => Vec::new(),
                };
                check(&mut scalars.iter().map(String::as_str))
            }
            ConditionKey::RequestPrincipal => check(&mut req.request_principal.into_iter()),
            ConditionKey::SourcePrincipal => {
                check(&mut req.source.map(SpiffeId::as_str).into_iter())
            }
            ConditionKey::SourceNamespace => {
                check(&mut req.source.and_then(SpiffeId::namespace).into_iter())
            }
            ConditionKey::DestinationPort => {
                let port = req.port.to_string();
                check(&mut std::iter::once(port.as_str()))
            }
        }
    }
}

/// The readings of one header line: the line itself, and when it holds a comma, each
/// non-empty element of it as a list (split at commas outside double-quoted strings, with
/// the optional whitespace around them trimmed).
fn list_readings(line: &str) -> impl Iterator<Item = &str> {
    let elements = line.contains(',').then(|| {
        let mut parts = Vec::new();
        let (mut start, mut quoted, mut escaped) = (0, false, false);
        for (i, b) in line.bytes().enumerate() {
            match b {
                _ if escaped => escaped = false,
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                b',' if !quoted => {
                    parts.push(&line[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&line[start..]);
        parts
            .into_iter()
            .map(|p| p.trim_matches([' ', '\t']))
            .filter(|p| !p.is_empty())
    });
    std::iter::once(line).chain(elements.into_iter().flatten())
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[derive(Debug)]
struct CompiledRule {
    from: Vec<CompiledSource>,
    to: Vec<CompiledOperation>,
    when: Vec<CompiledCondition>,
    /// Whether any field needs an HTTP request (method, path, end user, header, claim).
    uses_http_fields: bool,
}

impl CompiledRule {
    fn new(r: &Rule) -> Self {
        let from: Vec<_> = r.from.iter().map(CompiledSource::new).collect();
        let to: Vec<_> = r.to.iter().map(CompiledOperation::new).collect();
        let when: Vec<_> = r.when.iter().map(CompiledCondition::new).collect();
        let uses_http_fields = from.iter().any(CompiledSource::uses_http_fields)
            || to.iter().any(CompiledOperation::uses_http_fields)
            || when.iter().any(CompiledCondition::uses_http_fields);
        Self {
            from,
            to,
            when,
            uses_http_fields,
        }
    }

    /// `unreadable_matches` is true for DENY and AUDIT policies (see
    /// [`CompiledCondition::matches`]). On an opaque connection (`req.l4`), as in Istio: an
    /// ALLOW rule that needs HTTP fields never matches (it cannot be satisfied), while a
    /// DENY or AUDIT rule is applied without its HTTP fields, so it matches more, never less.
    /// The hot path: no allocation. [`Self::mismatches`] says the same at length.
    fn matches(&self, req: &Request<'_>, unreadable_matches: bool) -> bool {
        if req.l4 && self.uses_http_fields && !unreadable_matches {
            return false;
        }
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(req)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(req)))
            && self.when.iter().all(|c| c.matches(req, unreadable_matches))
    }

    /// The parts of the rule that do not match `req` (empty: the rule matches).
    fn mismatches(&self, req: &Request<'_>, unreadable_matches: bool) -> Vec<String> {
        if req.l4 && self.uses_http_fields && !unreadable_matches {
            return vec!["needs HTTP fields (the request is an opaque connection)".into()];
        }
        let mut failed = Vec::new();
        if !(self.from.is_empty() || self.from.iter().any(|s| s.matches(req))) {
            failed.push("from".to_owned());
        }
        if !(self.to.is_empty() || self.to.iter().any(|o| o.matches(req))) {
            failed.push("to".to_owned());
        }
        for (i, c) in self.when.iter().enumerate() {
            if !c.matches(req, unreadable_matches) {
                failed.push(format!("when[{i}]"));
            }
        }
        failed
    }
}

/// How one policy fared against a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    /// `namespace/name`.
    pub policy: String,
    pub action: Action,
    pub dry_run: bool,
    /// The first rule that matched, if any.
    pub matched_rule: Option<usize>,
    pub rules: Vec<RuleExplanation>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleExplanation {
    pub index: usize,
    pub matched: bool,
    /// The parts that did not match: `from`, `to`, `when[i]`.
    pub failed: Vec<String>,
}

/// Which policy (and rule) a decision rests on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct PolicyRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug)]
struct CompiledPolicy {
    id: Arc<PolicyRef>,
    action: Action,
    dry_run: bool,
    rules: Vec<CompiledRule>,
}

impl CompiledPolicy {
    /// The index of the first matching rule.
    fn matching_rule(&self, req: &Request<'_>) -> Option<usize> {
        let unreadable_matches = self.action != Action::Allow;
        self.rules
            .iter()
            .position(|r| r.matches(req, unreadable_matches))
    }
}

/// The attributes of one HTTP request that policies look at.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The caller's SPIFFE ID from its mTLS certificate.
    pub source: Option<&'a SpiffeId>,
    /// `iss/sub` of a verified end-user JWT.
    pub request_principal: Option<&'a str>,
    /// The claims of that JWT.
    pub claims: Option<&'a Value>,
    /// Upper-case method.
    pub method: &'a str,
    /// The normalized path ([`crate::path::normalize`]).
    pub path: &'a str,
    /// The destination port the request arrived for.
    pub port: u16,
    pub headers: &'a http::HeaderMap,
    /// Only the connection is known (an opaque TCP port, or an AMQP operation): see
    /// [`Request::connection`].
    pub l4: bool,
    /// The AMQP operation, for [`Request::amqp`].
    pub amqp: Option<super::amqp::AmqpRequest<'a>>,
}

impl<'a> Request<'a> {
    /// An opaque TCP connection from `source` to `port`: authorized on identity and port only.
    pub fn connection(source: Option<&'a SpiffeId>, port: u16) -> Self {
        static NO_HEADERS: std::sync::LazyLock<http::HeaderMap> =
            std::sync::LazyLock::new(http::HeaderMap::new);
        Request {
            source,
            request_principal: None,
            claims: None,
            method: "",
            path: "",
            port,
            headers: &NO_HEADERS,
            l4: true,
            amqp: None,
        }
    }

    /// An AMQP operation by `source` (the workload's own identity, at its own sidecar).
    /// HTTP fields are judged as for an opaque connection.
    pub fn amqp(source: Option<&'a SpiffeId>, op: super::amqp::AmqpRequest<'a>) -> Self {
        Request {
            amqp: Some(op),
            ..Self::connection(source, 0)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
}

/// Why the verdict is what it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Basis {
    /// A DENY or ALLOW policy's rule matched.
    Policy { policy: Arc<PolicyRef>, rule: usize },
    /// ALLOW policies select the workload, but none matched.
    NoAllowMatched,
    /// No enforced policy selects the workload; the mesh default decided.
    NoPolicy { mode: DefaultMode },
}

/// What a dry-run policy would have done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DryRun {
    pub policy: Arc<PolicyRef>,
    pub action: Action,
    /// The rule that matched, if one did.
    pub rule: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    pub verdict: Verdict,
    pub basis: Basis,
    /// The first AUDIT policy that matched, with its rule.
    pub audit: Option<(Arc<PolicyRef>, usize)>,
    pub dry_run: Vec<DryRun>,
    pub policy_version: u64,
}

impl Decision {
    /// The audit-log label: `allow`, `deny`, `audit` (allowed, and an AUDIT policy or the
    /// audit default mode flagged it), `dry-run-deny` (allowed, but a dry-run DENY matched).
    pub fn label(&self) -> &'static str {
        match self.verdict {
            Verdict::Deny => "deny",
            Verdict::Allow
                if self.audit.is_some()
                    || self.basis
                        == (Basis::NoPolicy {
                            mode: DefaultMode::Audit,
                        }) =>
            {
                "audit"
            }
            Verdict::Allow
                if self
                    .dry_run
                    .iter()
                    .any(|d| d.action == Action::Deny && d.rule.is_some()) =>
            {
                "dry-run-deny"
            }
            Verdict::Allow => "allow",
        }
    }
}

/// Every policy of the mesh, compiled and indexed, at one version.
#[derive(Debug, Default)]
pub struct PolicySet {
    version: u64,
    default_mode: DefaultMode,
    index: WorkloadIndex<CompiledPolicy>,
}

impl PolicySet {
    pub fn new(policies: &[AuthorizationPolicy], version: u64, default_mode: DefaultMode) -> Self {
        let mut index = WorkloadIndex::default();
        for p in policies {
            index.insert(
                &p.namespace,
                p.service.as_deref(),
                CompiledPolicy {
                    id: Arc::new(PolicyRef {
                        namespace: p.namespace.clone(),
                        name: p.name.clone(),
                    }),
                    action: p.action,
                    dry_run: p.dry_run,
                    rules: p.rules.iter().map(CompiledRule::new).collect(),
                },
            );
        }
        PolicySet {
            version,
            default_mode,
            index,
        }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    fn candidates<'s>(&'s self, w: &Workload<'_>) -> impl Iterator<Item = &'s CompiledPolicy> {
        self.index.candidates(w)
    }

    /// How many policies a request for `workload` looks at.
    pub fn candidate_count(&self, workload: &Workload<'_>) -> usize {
        self.candidates(workload).count()
    }

    /// Why each policy that applies to `workload` did or did not match `req`, in the order
    /// [`Self::evaluate`] looks at them (for the control plane's simulate endpoint).
    pub fn explain(&self, workload: &Workload<'_>, req: &Request<'_>) -> Vec<Explanation> {
        self.candidates(workload)
            .map(|policy| {
                let unreadable_matches = policy.action != Action::Allow;
                let rules: Vec<RuleExplanation> = policy
                    .rules
                    .iter()
                    .enumerate()
                    .map(|(index, rule)| {
                        let failed = rule.mismatches(req, unreadable_matches);
                        RuleExplanation {
                            index,
                            matched: failed.is_empty(),
                            failed,
                        }
                    })
                    .collect();
                Explanation {
                    policy: policy.id.to_string(),
                    action: policy.action,
                    dry_run: policy.dry_run,
                    matched_rule: rules.iter().find(|r| r.matched).map(|r| r.index),
                    rules,
                }
            })
            .collect()
    }

    pub fn evaluate(&self, workload: &Workload<'_>, req: &Request<'_>) -> Decision {
        let mut deny = None;
        let mut allow = None;
        let mut any_allow_policy = false;
        let mut audit = None;
        let mut dry_run = Vec::new();
        for policy in self.candidates(workload) {
            if policy.dry_run {
                dry_run.push(DryRun {
                    policy: policy.id.clone(),
                    action: policy.action,
                    rule: policy.matching_rule(req),
                });
                continue;
            }
            match policy.action {
                Action::Deny if deny.is_none() => {
                    if let Some(rule) = policy.matching_rule(req) {
                        deny = Some((policy.id.clone(), rule));
                    }
                }
                Action::Allow => {
                    any_allow_policy = true;
                    if allow.is_none()
                        && let Some(rule) = policy.matching_rule(req)
                    {
                        allow = Some((policy.id.clone(), rule));
                    }
                }
                Action::Audit if audit.is_none() => {
                    audit = policy
                        .matching_rule(req)
                        .map(|rule| (policy.id.clone(), rule));
                }
                _ => {}
            }
        }
        let (verdict, basis) = match (deny, allow) {
            (Some((policy, rule)), _) => (Verdict::Deny, Basis::Policy { policy, rule }),
            (None, Some((policy, rule))) => (Verdict::Allow, Basis::Policy { policy, rule }),
            (None, None) if any_allow_policy => (Verdict::Deny, Basis::NoAllowMatched),
            (None, None) => {
                let verdict = match self.default_mode {
                    DefaultMode::Deny => Verdict::Deny,
                    DefaultMode::Allow | DefaultMode::Audit => Verdict::Allow,
                };
                (
                    verdict,
                    Basis::NoPolicy {
                        mode: self.default_mode,
                    },
                )
            }
        };
        Decision {
            verdict,
            basis,
            audit,
            dry_run,
            policy_version: self.version,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::documents::parse_documents;
    use http::HeaderMap;

    fn set(yaml: &str, mode: DefaultMode) -> PolicySet {
        PolicySet::new(&parse_documents(yaml).unwrap().authorization, 7, mode)
    }

    fn policy(name: &str, ns: &str, selector: &str, action: &str, rules: &str) -> String {
        format!(
            "apiVersion: palisade.dev/v1\nkind: AuthorizationPolicy\nmetadata: {{ name: {name}, namespace: {ns} }}\n\
             spec:\n{selector}  action: {action}\n  rules: {rules}\n---\n"
        )
    }

    const PAYMENTS: Workload<'static> = Workload {
        namespace: "shop",
        service: "payments",
    };

    struct Call {
        source: Option<SpiffeId>,
        method: &'static str,
        path: &'static str,
        port: u16,
        headers: HeaderMap,
        principal: Option<&'static str>,
        claims: Option<Value>,
    }

    fn call(sa: &str, method: &'static str, path: &'static str) -> Call {
        Call {
            source: Some(
                SpiffeId::parse(&format!("spiffe://palisade.local/ns/shop/sa/{sa}")).unwrap(),
            ),
            method,
            path,
            port: 8080,
            headers: HeaderMap::new(),
            principal: None,
            claims: None,
        }
    }

    impl Call {
        fn header(mut self, name: &'static str, value: &[u8]) -> Self {
            self.headers
                .append(name, http::HeaderValue::from_bytes(value).unwrap());
            self
        }

        fn eval(&self, set: &PolicySet, w: &Workload<'_>) -> Decision {
            set.evaluate(
                w,
                &Request {
                    source: self.source.as_ref(),
                    request_principal: self.principal,
                    claims: self.claims.as_ref(),
                    method: self.method,
                    path: self.path,
                    port: self.port,
                    headers: &self.headers,
                    l4: false,
                    amqp: None,
                },
            )
        }
    }

    const SELECT_PAYMENTS: &str = "  selector: { service: payments }\n";
    const ORDERS_MAY_CHARGE: &str = r#"[ { from: [ { principals: ["spiffe://palisade.local/ns/shop/sa/orders"] } ], to: [ { methods: ["POST"], paths: ["/charge", "/refunds/*"] } ] } ]"#;

    fn basis_policy(d: &Decision) -> Option<(String, usize)> {
        match &d.basis {
            Basis::Policy { policy, rule } => Some((policy.to_string(), *rule)),
            _ => None,
        }
    }

    #[test]
    fn allow_matches_and_everything_else_is_denied() {
        let s = set(
            &policy(
                "charge",
                "shop",
                SELECT_PAYMENTS,
                "ALLOW",
                ORDERS_MAY_CHARGE,
            ),
            DefaultMode::Deny,
        );
        let d = call("orders", "POST", "/charge").eval(&s, &PAYMENTS);
        assert_eq!((d.verdict, d.label()), (Verdict::Allow, "allow"));
        assert_eq!(basis_policy(&d), Some(("shop/charge".into(), 0)));
        assert_eq!(d.policy_version, 7);
        assert_eq!(
            call("orders", "POST", "/refunds/42")
                .eval(&s, &PAYMENTS)
                .verdict,
            Verdict::Allow
        );
        for (sa, method, path) in [
            ("orders", "GET", "/charge"),
            ("orders", "POST", "/charge/x"),
            ("orders", "POST", "/refunds"),
            ("rogue", "POST", "/charge"),
        ] {
            let d = call(sa, method, path).eval(&s, &PAYMENTS);
            assert_eq!(
                (d.verdict, &d.basis),
                (Verdict::Deny, &Basis::NoAllowMatched),
                "{sa} {method} {path}"
            );
        }
        // The policy selects payments only.
        let other = Workload {
            namespace: "shop",
            service: "inventory",
        };
        let d = call("orders", "POST", "/charge").eval(&s, &other);
        assert_eq!(
            d.basis,
            Basis::NoPolicy {
                mode: DefaultMode::Deny
            }
        );
        assert_eq!(d.verdict, Verdict::Deny);
    }

    #[test]
    fn deny_beats_allow() {
        let yaml = policy(
            "charge",
            "shop",
            SELECT_PAYMENTS,
            "ALLOW",
            ORDERS_MAY_CHARGE,
        ) + &policy(
            "no-refunds",
            "shop",
            "",
            "DENY",
            r#"[ { to: [ { paths: ["/refunds/*"] } ] } ]"#,
        );
        let s = set(&yaml, DefaultMode::Deny);
        let d = call("orders", "POST", "/refunds/1").eval(&s, &PAYMENTS);
        assert_eq!(d.verdict, Verdict::Deny);
        assert_eq!(basis_policy(&d), Some(("shop/no-refunds".into(), 0)));
        assert_eq!(
            call("orders", "POST", "/charge")
                .eval(&s, &PAYMENTS)
                .verdict,
            Verdict::Allow
        );
    }

    #[test]
    fn default_mode_only_relaxes_workloads_without_allow_policies() {
        let yaml = policy(
            "charge",
            "shop",
            SELECT_PAYMENTS,
            "ALLOW",
            ORDERS_MAY_CHARGE,
        );
        for (mode, verdict, label) in [
            (DefaultMode::Deny, Verdict::Deny, "deny"),
            (DefaultMode::Allow, Verdict::Allow, "allow"),
            (DefaultMode::Audit, Verdict::Allow, "audit"),
        ] {
            let s = set(&yaml, mode);
            let inventory = Workload {
                namespace: "shop",
                service: "inventory",
            };
            let d = call("orders", "GET", "/").eval(&s, &inventory);
            assert_eq!((d.verdict, d.label()), (verdict, label), "{mode:?}");
            // Payments has an ALLOW policy: strict whatever the mode.
            assert_eq!(
                call("orders", "GET", "/").eval(&s, &PAYMENTS).verdict,
                Verdict::Deny,
                "{mode:?}"
            );
        }
        let empty = PolicySet::new(&[], 1, DefaultMode::Deny);
        assert_eq!(
            call("orders", "GET", "/").eval(&empty, &PAYMENTS).verdict,
            Verdict::Deny
        );
    }

    #[test]
    fn dry_run_is_recorded_never_enforced() {
        let yaml = policy(
            "charge",
            "shop",
            SELECT_PAYMENTS,
            "ALLOW",
            ORDERS_MAY_CHARGE,
        ) + &policy(
            "maybe-deny",
            "shop",
            "",
            "DENY",
            r#"[ { to: [ { methods: ["POST"] } ] } ]"#,
        )
        .replace("  action: DENY", "  action: DENY\n  dryRun: true");
        let s = set(&yaml, DefaultMode::Deny);
        let d = call("orders", "POST", "/charge").eval(&s, &PAYMENTS);
        assert_eq!((d.verdict, d.label()), (Verdict::Allow, "dry-run-deny"));
        assert_eq!(d.dry_run.len(), 1);
        assert_eq!(
            (d.dry_run[0].policy.name.as_str(), d.dry_run[0].rule),
            ("maybe-deny", Some(0))
        );
        let d = call("orders", "GET", "/charge").eval(&s, &PAYMENTS);
        assert_eq!(d.dry_run[0].rule, None, "dry-run DENY did not match a GET");
    }

    #[test]
    fn audit_policies_are_recorded_and_change_nothing() {
        let yaml = policy(
            "charge",
            "shop",
            SELECT_PAYMENTS,
            "ALLOW",
            ORDERS_MAY_CHARGE,
        ) + &policy(
            "watch",
            "shop",
            "",
            "AUDIT",
            r#"[ { to: [ { paths: ["/refunds/*"] } ] } ]"#,
        );
        let s = set(&yaml, DefaultMode::Deny);
        let d = call("orders", "POST", "/refunds/1").eval(&s, &PAYMENTS);
        assert_eq!((d.verdict, d.label()), (Verdict::Allow, "audit"));
        assert_eq!(
            d.audit.as_ref().map(|(p, r)| (p.name.as_str(), *r)),
            Some(("watch", 0))
        );
        let d = call("rogue", "POST", "/refunds/1").eval(&s, &PAYMENTS);
        assert_eq!(d.verdict, Verdict::Deny, "AUDIT does not allow");
    }

    #[test]
    fn rule_shapes_follow_istio() {
        // rules: [{}] matches everything; a policy without rules matches nothing.
        let s = set(
            &policy("all", "shop", SELECT_PAYMENTS, "ALLOW", "[ {} ]"),
            DefaultMode::Deny,
        );
        assert_eq!(
            call("anyone", "DELETE", "/x").eval(&s, &PAYMENTS).verdict,
            Verdict::Allow
        );
        let s = set(
            &policy("none", "shop", SELECT_PAYMENTS, "ALLOW", "[]"),
            DefaultMode::Deny,
        );
        assert_eq!(
            call("anyone", "GET", "/").eval(&s, &PAYMENTS).basis,
            Basis::NoAllowMatched
        );
        // Patterns, negations, namespaces, ports.
        let rules = r#"[ { from: [ { principals: ["*/sa/orders"], notNamespaces: ["staging"] } ],
                           to: [ { paths: ["/api/*", "*.json"], notPaths: ["/api/admin*"], ports: [8080] } ] } ]"#;
        let s = set(
            &policy("p", "shop", SELECT_PAYMENTS, "ALLOW", rules),
            DefaultMode::Deny,
        );
        assert_eq!(
            call("orders", "GET", "/api/v1").eval(&s, &PAYMENTS).verdict,
            Verdict::Allow
        );
        assert_eq!(
            call("orders", "GET", "/x/data.json")
                .eval(&s, &PAYMENTS)
                .verdict,
            Verdict::Allow
        );
        assert_eq!(
            call("orders", "GET", "/api/admin/users")
                .eval(&s, &PAYMENTS)
                .verdict,
            Verdict::Deny
        );
        assert_eq!(
            call("payments", "GET", "/api/v1")
                .eval(&s, &PAYMENTS)
                .verdict,
            Verdict::Deny
        );
        let mut other_port = call("orders", "GET", "/api/v1");
        other_port.port = 9090;
        assert_eq!(other_port.eval(&s, &PAYMENTS).verdict, Verdict::Deny);
        let mut staging = call("orders", "GET", "/api/v1");
        staging.source =
            Some(SpiffeId::parse("spiffe://palisade.local/ns/staging/sa/orders").unwrap());
        assert_eq!(staging.eval(&s, &PAYMENTS).verdict, Verdict::Deny);
        let mut anonymous = call("orders", "GET", "/api/v1");
        anonymous.source = None;
        assert_eq!(anonymous.eval(&s, &PAYMENTS).verdict, Verdict::Deny);
    }

    #[test]
    fn headers_every_value_counts_and_unreadable_values_fail_closed() {
        let allow = r#"[ { when: [ { key: "request.headers[x-tenant]", values: ["acme"] } ] } ]"#;
        let deny = r#"[ { when: [ { key: "request.headers[x-debug]", values: ["on"] } ] } ]"#;
        let yaml = policy("tenant", "shop", SELECT_PAYMENTS, "ALLOW", allow)
            + &policy("no-debug", "shop", "", "DENY", deny);
        let s = set(&yaml, DefaultMode::Deny);
        let ok = call("orders", "GET", "/")
            .header("x-tenant", b"other")
            .header("x-tenant", b"acme");
        assert_eq!(
            ok.eval(&s, &PAYMENTS).verdict,
            Verdict::Allow,
            "any value of a repeated header"
        );
        let hidden = call("orders", "GET", "/")
            .header("x-tenant", b"acme")
            .header("x-debug", b"off")
            .header("x-debug", b"on");
        assert_eq!(
            hidden.eval(&s, &PAYMENTS).verdict,
            Verdict::Deny,
            "a DENY sees every value"
        );
        let unreadable_deny = call("orders", "GET", "/")
            .header("x-tenant", b"acme")
            .header("x-debug", b"\xff\xfe");
        assert_eq!(
            unreadable_deny.eval(&s, &PAYMENTS).verdict,
            Verdict::Deny,
            "bad bytes cannot dodge a DENY"
        );
        let unreadable_allow = call("orders", "GET", "/").header("x-tenant", b"ac\xffme");
        assert_eq!(
            unreadable_allow.eval(&s, &PAYMENTS).verdict,
            Verdict::Deny,
            "nor satisfy an ALLOW"
        );
        let missing = call("orders", "GET", "/");
        assert_eq!(missing.eval(&s, &PAYMENTS).verdict, Verdict::Deny);
        // One line holding a list is the same list as separate lines (RFC 9110).
        let joined = call("orders", "GET", "/")
            .header("x-tenant", b"acme")
            .header("x-debug", b"off, on");
        assert_eq!(joined.eval(&s, &PAYMENTS).verdict, Verdict::Deny, "off, on");
        let joined = call("orders", "GET", "/")
            .header("x-tenant", b"acme")
            .header("x-debug", b"off,on,");
        assert_eq!(joined.eval(&s, &PAYMENTS).verdict, Verdict::Deny, "off,on,");
        let joined = call("orders", "GET", "/").header("x-tenant", b"other, acme");
        assert_eq!(
            joined.eval(&s, &PAYMENTS).verdict,
            Verdict::Allow,
            "an ALLOW is satisfied by any element, as by any line"
        );
        let quoted = call("orders", "GET", "/")
            .header("x-tenant", b"acme")
            .header("x-debug", b"\"off, on\"");
        assert_eq!(
            quoted.eval(&s, &PAYMENTS).verdict,
            Verdict::Allow,
            "a comma inside a quoted string does not split"
        );
    }

    #[test]
    fn list_readings_split_outside_quotes() {
        fn r(l: &str) -> Vec<&str> {
            list_readings(l).collect()
        }
        assert_eq!(r("on"), ["on"]);
        assert_eq!(r("off, on"), ["off, on", "off", "on"]);
        assert_eq!(r(" a ,\tb,,"), [" a ,\tb,,", "a", "b"]);
        assert_eq!(r(r#""a,b", c"#), [r#""a,b", c"#, r#""a,b""#, "c"]);
        assert_eq!(r(r#""a\",b", c"#), [r#""a\",b", c"#, r#""a\",b""#, "c"]);
    }

    #[test]
    fn a_deny_with_not_values_sees_every_element() {
        // DENY unless x-env is exactly "prod": "prod, dev" must not pass as "prod".
        let allow = r#"[ {} ]"#;
        let deny = r#"[ { when: [ { key: "request.headers[x-env]", notValues: ["prod"] } ] } ]"#;
        let yaml = policy("all", "shop", SELECT_PAYMENTS, "ALLOW", allow)
            + &policy("prod-only", "shop", "", "DENY", deny);
        let s = set(&yaml, DefaultMode::Deny);
        let with = |v: &[u8]| {
            call("orders", "GET", "/")
                .header("x-env", v)
                .eval(&s, &PAYMENTS)
                .verdict
        };
        assert_eq!(with(b"prod"), Verdict::Allow);
        assert_eq!(with(b"dev"), Verdict::Deny);
        assert_eq!(with(b"prod, dev"), Verdict::Deny);
        assert_eq!(
            with(b"prod,prod"),
            Verdict::Deny,
            "the whole line is a reading too"
        );
        // And an ALLOW's notValues exclude on any element.
        let allow = r#"[ { when: [ { key: "request.headers[x-env]", notValues: ["dev"] } ] } ]"#;
        let s = set(
            &policy("not-dev", "shop", SELECT_PAYMENTS, "ALLOW", allow),
            DefaultMode::Deny,
        );
        let with = |v: &[u8]| {
            call("orders", "GET", "/")
                .header("x-env", v)
                .eval(&s, &PAYMENTS)
                .verdict
        };
        assert_eq!(with(b"prod"), Verdict::Allow);
        assert_eq!(with(b"prod, dev"), Verdict::Deny);
    }

    #[test]
    fn end_user_claims_and_principals() {
        let rules = r#"[ { from: [ { requestPrincipals: ["https://idp.example/*"] } ],
            when: [ { key: "request.auth.claims[realm][roles]", values: ["admin"] },
                    { key: "request.auth.claims[level]", notValues: ["0"] } ] } ]"#;
        let s = set(
            &policy("admins", "shop", SELECT_PAYMENTS, "ALLOW", rules),
            DefaultMode::Deny,
        );
        let mut c = call("orders", "GET", "/");
        c.principal = Some("https://idp.example/alice");
        c.claims = Some(serde_json::json!({"realm": {"roles": ["user", "admin"]}, "level": 3}));
        assert_eq!(c.eval(&s, &PAYMENTS).verdict, Verdict::Allow);
        c.claims = Some(serde_json::json!({"realm": {"roles": ["user", "admin"]}, "level": 0}));
        assert_eq!(
            c.eval(&s, &PAYMENTS).verdict,
            Verdict::Deny,
            "notValues excludes level 0"
        );
        c.claims = Some(serde_json::json!({"realm": {"roles": "user"}, "level": 3}));
        assert_eq!(c.eval(&s, &PAYMENTS).verdict, Verdict::Deny);
        c.claims = None;
        c.principal = None;
        assert_eq!(c.eval(&s, &PAYMENTS).verdict, Verdict::Deny);
    }

    #[test]
    fn mesh_wide_policies_apply_in_every_namespace() {
        let yaml = policy(
            "no-trace",
            MESH_NAMESPACE,
            "",
            "DENY",
            r#"[ { to: [ { methods: ["TRACE"] } ] } ]"#,
        ) + &policy("all", "shop", SELECT_PAYMENTS, "ALLOW", "[ {} ]");
        let s = set(&yaml, DefaultMode::Deny);
        let d = call("orders", "TRACE", "/").eval(&s, &PAYMENTS);
        assert_eq!(
            basis_policy(&d),
            Some(("palisade-system/no-trace".into(), 0))
        );
        assert_eq!(
            call("orders", "GET", "/").eval(&s, &PAYMENTS).verdict,
            Verdict::Allow
        );
    }

    #[test]
    fn only_the_policies_that_select_a_workload_are_examined() {
        let mut policies = parse_documents(&policy(
            "charge",
            "shop",
            SELECT_PAYMENTS,
            "ALLOW",
            ORDERS_MAY_CHARGE,
        ))
        .unwrap()
        .authorization;
        let template = policies[0].clone();
        for i in 0..10_000 {
            let mut p = template.clone();
            p.name = format!("p{i}");
            p.namespace = format!("ns{}", i % 100);
            p.service = Some(format!("svc{i}"));
            policies.push(p);
        }
        let s = PolicySet::new(&policies, 1, DefaultMode::Deny);
        assert_eq!(s.len(), 10_001);
        assert_eq!(s.candidate_count(&PAYMENTS), 1);
        assert_eq!(
            s.candidate_count(&Workload {
                namespace: "ns3",
                service: "svc3"
            }),
            1
        );
        assert_eq!(
            call("orders", "POST", "/charge")
                .eval(&s, &PAYMENTS)
                .verdict,
            Verdict::Allow
        );
    }

    #[test]
    fn opaque_connections_are_judged_on_identity_and_port_only() {
        let orders = SpiffeId::parse("spiffe://palisade.local/ns/shop/sa/orders").unwrap();
        let rogue = SpiffeId::parse("spiffe://palisade.local/ns/shop/sa/rogue").unwrap();
        let s = set(
            &[
                policy(
                    "orders-db",
                    "shop",
                    SELECT_PAYMENTS,
                    "ALLOW",
                    r#"[ { from: [ { principals: ["spiffe://palisade.local/ns/shop/sa/orders"] } ], to: [ { ports: [5432] } ] } ]"#,
                ),
                // Needs HTTP fields: can never allow a connection.
                policy(
                    "rogue-http",
                    "shop",
                    SELECT_PAYMENTS,
                    "ALLOW",
                    r#"[ { from: [ { principals: ["*/sa/rogue"] } ], to: [ { methods: ["GET"] } ] } ]"#,
                ),
                // Applied without its HTTP fields: denies every connection of inventory.
                policy(
                    "no-inventory-admin",
                    "shop",
                    SELECT_PAYMENTS,
                    "DENY",
                    r#"[ { from: [ { principals: ["*/sa/inventory"] } ], to: [ { paths: ["/admin*"] } ], when: [ { key: "request.headers[x-debug]", values: ["1"] } ] } ]"#,
                ),
                policy(
                    "inventory-db",
                    "shop",
                    SELECT_PAYMENTS,
                    "ALLOW",
                    r#"[ { from: [ { principals: ["*/sa/inventory"] } ] } ]"#,
                ),
            ]
            .concat(),
            DefaultMode::Deny,
        );
        let conn =
            |id: &SpiffeId, port| s.evaluate(&PAYMENTS, &Request::connection(Some(id), port));
        let d = conn(&orders, 5432);
        assert_eq!(d.verdict, Verdict::Allow);
        assert_eq!(basis_policy(&d), Some(("shop/orders-db".into(), 0)));
        assert_eq!(conn(&orders, 6379).verdict, Verdict::Deny);
        assert_eq!(
            (conn(&rogue, 5432).verdict, conn(&rogue, 5432).basis),
            (Verdict::Deny, Basis::NoAllowMatched)
        );
        let inventory = SpiffeId::parse("spiffe://palisade.local/ns/shop/sa/inventory").unwrap();
        let d = conn(&inventory, 5432);
        assert_eq!(d.verdict, Verdict::Deny);
        assert_eq!(
            basis_policy(&d),
            Some(("shop/no-inventory-admin".into(), 0))
        );
        // The same DENY over HTTP applies only to what it names.
        let mut http = call("inventory", "GET", "/orders");
        http.port = 5432;
        assert_eq!(http.eval(&s, &PAYMENTS).verdict, Verdict::Allow);
        assert_eq!(
            call("inventory", "GET", "/admin")
                .header("x-debug", b"1")
                .eval(&s, &PAYMENTS)
                .verdict,
            Verdict::Deny
        );
    }

    #[test]
    fn amqp_operations_are_matched_by_amqp_targets_only() {
        use crate::policy::amqp::AmqpRequest;
        let s = set(
            &[
                policy(
                    "orders-publish",
                    "shop",
                    SELECT_PAYMENTS,
                    "ALLOW",
                    r#"[ { to: [ { amqp: { operations: [publish], vhosts: ["/"], exchanges: ["shop.events"], routingKeys: ["order.*"] } } ] },
                         { to: [ { amqp: { operations: [publish], exchanges: [""], routingKeys: ["replies.#"] } } ] },
                         { to: [ { amqp: { operations: [consume, get], queues: ["payments.*"] } } ] },
                         { to: [ { methods: ["GET"] } ] } ]"#,
                ),
                policy(
                    "no-secrets",
                    "shop",
                    SELECT_PAYMENTS,
                    "DENY",
                    r#"[ { to: [ { amqp: { routingKeys: ["order.secret"] } } ] } ]"#,
                ),
            ]
            .concat(),
            DefaultMode::Deny,
        );
        let me = SpiffeId::parse("spiffe://palisade.local/ns/shop/sa/payments").unwrap();
        let publish = |exchange: &'static str, key: &'static str| AmqpRequest {
            operation: "publish",
            vhost: "/",
            exchange: Some(exchange),
            routing_key: Some(key),
            queue: None,
        };
        let decide =
            |op: AmqpRequest<'static>| s.evaluate(&PAYMENTS, &Request::amqp(Some(&me), op));
        assert_eq!(
            decide(publish("shop.events", "order.created")).verdict,
            Verdict::Allow
        );
        assert_eq!(
            decide(publish("shop.events", "order.created.eu")).verdict,
            Verdict::Deny
        );
        assert_eq!(
            decide(publish("other", "order.created")).verdict,
            Verdict::Deny
        );
        let d = decide(publish("shop.events", "order.secret"));
        assert_eq!(basis_policy(&d), Some(("shop/no-secrets".into(), 0)));
        // The default exchange is its own name.
        assert_eq!(decide(publish("", "replies.42")).verdict, Verdict::Allow);
        assert_eq!(decide(publish("", "order.created")).verdict, Verdict::Deny);
        let consume = |queue: &'static str| AmqpRequest {
            operation: "consume",
            vhost: "/",
            exchange: None,
            routing_key: None,
            queue: Some(queue),
        };
        assert_eq!(decide(consume("payments.in")).verdict, Verdict::Allow);
        assert_eq!(decide(consume("orders.in")).verdict, Verdict::Deny);
        // The HTTP rule (GET) neither allows AMQP nor is allowed by AMQP rules.
        assert_eq!(
            call("payments", "GET", "/x").eval(&s, &PAYMENTS).verdict,
            Verdict::Allow
        );
        assert_eq!(
            call("payments", "POST", "/x").eval(&s, &PAYMENTS).verdict,
            Verdict::Deny
        );
    }

    #[test]
    fn amqp_targets_are_validated() {
        let bad = policy(
            "x",
            "shop",
            "",
            "ALLOW",
            r#"[ { to: [ { amqp: { operations: [publsh], routingKeys: ["order*"], colour: 1 }, methods: ["GET"] } ] } ]"#,
        );
        let problems: Vec<String> = parse_documents(&bad)
            .unwrap_err()
            .0
            .iter()
            .map(ToString::to_string)
            .collect();
        for want in [
            "spec.rules[0].to[0]: amqp cannot be combined",
            "spec.rules[0].to[0].amqp.colour: unknown field",
            "spec.rules[0].to[0].amqp.operations[0]: \"publsh\" is not an AMQP operation",
            "spec.rules[0].to[0].amqp.routingKeys[0]: \"order*\" has \"order*\"",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(want)),
                "{want} in {problems:#?}"
            );
        }
    }
}
