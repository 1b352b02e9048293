//! One decision record: what the evaluator used and what it decided. The sidecar writes it
//! (the `record` of a decision line, and the `--audit-log` stream); the control plane's
//! collector reads it back to index and query it. One type for both, so the two sides can
//! never disagree on a field.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::policy::Decision;

/// One authorization decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// RFC 3339, UTC.
    pub time: String,
    pub request_id: String,
    /// `allow`, `deny`, `audit`, `dry-run-deny`, `unauthenticated` (an end-user token was
    /// refused: 401), or `error` when the request never reached a decision (bad path, bad
    /// method).
    pub decision: Cow<'static, str>,
    pub direction: Cow<'static, str>,
    pub source: Option<String>,
    /// The end user (`iss/sub` of a verified JWT), when the request carried one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_principal: Option<String>,
    pub destination_service: String,
    pub destination: String,
    pub protocol: Cow<'static, str>,
    pub method: String,
    pub path: String,
    pub status: u16,
    /// `namespace/name` of the deciding policy, and its rule index.
    pub policy: Option<String>,
    pub rule: Option<usize>,
    pub policy_version: u64,
    /// Why a request was denied or refused.
    pub reason: Option<String>,
    /// Dry-run policies that matched, as `namespace/name:ACTION`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dry_run: Vec<String>,
    /// The AUDIT policy that matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_policy: Option<String>,
    /// For AMQP operations: what was asked of the broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amqp: Option<AmqpRecord>,
}

/// The AMQP side of an audit event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AmqpRecord {
    pub channel: Option<u16>,
    pub operation: String,
    pub vhost: String,
    pub exchange: Option<String>,
    /// The routing key this decision was about.
    pub routing_key: Option<String>,
    /// For a publish, every key it would be routed with (the key, then `CC` and `BCC`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routing_keys: Vec<String>,
    pub queue: Option<String>,
}

impl Record {
    /// An event for a request or connection just received: a fresh request id, the time,
    /// and decision `error` until something decides.
    pub fn begin(direction: &'static str, protocol: &'static str) -> Self {
        Record {
            time: crate::now_rfc3339(),
            request_id: crate::request_id(),
            decision: Cow::Borrowed("error"),
            direction: Cow::Borrowed(direction),
            source: None,
            request_principal: None,
            destination_service: String::new(),
            destination: String::new(),
            protocol: Cow::Borrowed(protocol),
            method: String::new(),
            path: String::new(),
            status: 0,
            policy: None,
            rule: None,
            policy_version: 0,
            reason: None,
            dry_run: Vec::new(),
            audit_policy: None,
            amqp: None,
        }
    }

    /// Fills the decision fields from a policy decision.
    pub fn apply_decision(&mut self, d: &Decision) {
        use crate::policy::Basis;
        self.decision = Cow::Borrowed(d.label());
        self.policy_version = d.policy_version;
        match &d.basis {
            Basis::Policy { policy, rule } => {
                self.policy = Some(policy.to_string());
                self.rule = Some(*rule);
            }
            Basis::NoAllowMatched => {
                self.reason
                    .get_or_insert_with(|| "no ALLOW policy matched".into());
            }
            Basis::NoPolicy { mode } => {
                self.reason.get_or_insert_with(|| {
                    format!("no ALLOW policy selects this workload (default: {mode:?})")
                        .to_lowercase()
                });
            }
        }
        if d.verdict == crate::policy::Verdict::Deny && self.reason.is_none() {
            self.reason = Some("denied by policy".into());
        }
        self.dry_run = d
            .dry_run
            .iter()
            .filter(|r| r.rule.is_some())
            .map(|r| format!("{}:{}", r.policy, action_name(r.action)))
            .collect();
        self.audit_policy = d.audit.as_ref().map(|(p, _)| p.to_string());
    }
}

fn action_name(a: crate::policy::Action) -> &'static str {
    use crate::policy::Action;
    match a {
        Action::Allow => "ALLOW",
        Action::Deny => "DENY",
        Action::Audit => "AUDIT",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_as_written() {
        let mut r = Record::begin("inbound", "http1");
        r.decision = Cow::Borrowed("deny");
        r.source = Some("spiffe://td/ns/a/sa/b".into());
        r.amqp = Some(AmqpRecord {
            operation: "basic.publish".into(),
            routing_keys: vec!["k".into()],
            ..AmqpRecord::default()
        });
        let json = serde_json::to_string(&r).unwrap();
        assert!(
            !json.contains("dry_run"),
            "empty lists are left out: {json}"
        );
        let back: Record = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }
}
