//! The documents the mesh stores and distributes: what kinds there are, and how an input
//! (YAML or JSON, several documents per input, `---`-separated) becomes validated documents.
//!
//! One function reads every kind, for both sides: the control plane validates with it before
//! it stores a change, the sidecar with it before it applies a pushed set
//! ([`validate_values`]), so the two can never accept different documents.

use serde_json::Value;

use crate::policy::{AuthorizationPolicy, RequestAuthentication};
use crate::registry::ServiceEntry;

pub(crate) mod kind;
pub mod walk;

pub use kind::{API_VERSION, Kind};

use walk::Walk;
pub use walk::{Problem, Problems};

/// The documents of one input, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyDocuments {
    pub authorization: Vec<AuthorizationPolicy>,
    pub authentication: Vec<RequestAuthentication>,
    pub services: Vec<ServiceEntry>,
}

/// One validated document of any kind the mesh knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Document {
    Authorization(AuthorizationPolicy),
    Authentication(RequestAuthentication),
    Service(ServiceEntry),
}

impl Document {
    pub fn kind(&self) -> Kind {
        match self {
            Document::Authorization(_) => Kind::AuthorizationPolicy,
            Document::Authentication(_) => Kind::RequestAuthentication,
            Document::Service(_) => Kind::Service,
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
        let kind = value.get("kind").and_then(Value::as_str);
        // Without a known kind the document is read as a policy, whose walk then says
        // that `kind` must be "AuthorizationPolicy".
        let doc = match kind.and_then(|k| k.parse().ok()) {
            Some(Kind::RequestAuthentication) => walk
                .request_authentication(value, &root)
                .map(Document::Authentication),
            Some(Kind::Service) => walk.service(value, &root).map(Document::Service),
            Some(Kind::AuthorizationPolicy) | None => {
                walk.policy(value, &root).map(Document::Authorization)
            }
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

/// Parses `Service` documents (YAML or JSON, several per input); all must be valid, and all
/// must be services.
pub fn parse_services(input: &str) -> Result<Vec<ServiceEntry>, Problems> {
    let docs = parse_documents(input)?;
    if !docs.authorization.is_empty() || !docs.authentication.is_empty() {
        return Err(Problems(vec![Problem {
            location: "input".into(),
            message: "only Service documents belong in a registry file".into(),
        }]));
    }
    Ok(docs.services)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::documents::walk::MAX_VALUES;

    const EXAMPLE: &str = r#"
apiVersion: palisade.dev/v1
kind: AuthorizationPolicy
metadata: { name: a, namespace: shop }
spec:
  rules:
    - to: [ { methods: ["POST"], paths: ["/charge", "/refunds/*"] } ]
"#;

    /// `input` is refused with exactly the problems `expect` (each a prefix of one).
    pub(crate) fn assert_problems(input: &str, expect: &[&str]) {
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
    fn kinds_read_and_written_alike() {
        for kind in Kind::ALL {
            assert_eq!(kind.as_str().parse::<Kind>(), Ok(kind));
            assert_eq!(Kind::from_resource(kind.resource()), Some(kind));
        }
        assert!("Policy".parse::<Kind>().is_err());
        assert_eq!(Kind::from_resource("policies"), None);
    }
}
