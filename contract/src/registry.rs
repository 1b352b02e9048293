//! The service registry: which sidecars serve a service, and which SPIFFE ID they must
//! present (secure naming). The outbound sidecar resolves a request's host here and refuses
//! a destination whose certificate names anyone else.
//!
//! ```yaml
//! apiVersion: palisade.dev/v1
//! kind: Service
//! metadata: { name: payments, namespace: shop }
//! spec: { identity: "spiffe://palisade.local/ns/shop/sa/payments", endpoints: ["10.0.0.7:15006"] }
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::policy::{Problem, Problems};
use crate::spiffe::{SpiffeId, validate_namespace};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ServiceDocument {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: ServiceSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    name: String,
    namespace: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceSpec {
    identity: SpiffeId,
    endpoints: Vec<String>,
}

/// One service: its name, and where and as whom its sidecars answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntry {
    pub name: String,
    pub namespace: String,
    /// The SPIFFE ID every endpoint must present.
    pub identity: SpiffeId,
    /// `host:port` of the destination sidecars' inbound listeners.
    pub endpoints: Vec<String>,
}

/// Parses `Service` documents (YAML or JSON, several per input); all must be valid.
pub fn parse_services(input: &str) -> Result<Vec<ServiceEntry>, Problems> {
    let values: Vec<serde_json::Value> = serde_saphyr::from_multiple(input).map_err(|e| {
        Problems(vec![Problem {
            location: "input".into(),
            message: format!("not valid YAML or JSON: {e}"),
        }])
    })?;
    let mut problems = Vec::new();
    let mut entries = Vec::new();
    for (i, value) in values.into_iter().enumerate() {
        let mut problem = |message: String| {
            problems.push(Problem {
                location: format!("[{i}]"),
                message,
            })
        };
        let doc: ServiceDocument = match serde_json::from_value(value) {
            Ok(d) => d,
            Err(e) => {
                problem(e.to_string());
                continue;
            }
        };
        if doc.api_version != crate::policy::document::API_VERSION || doc.kind != "Service" {
            problem("must be apiVersion palisade.dev/v1, kind Service".into());
        }
        for (what, name) in [
            ("name", &doc.metadata.name),
            ("namespace", &doc.metadata.namespace),
        ] {
            if validate_namespace(name).is_err() {
                problem(format!("metadata.{what} {name:?} is not a DNS label"));
            }
        }
        if doc.spec.endpoints.is_empty() {
            problem("spec.endpoints must list at least one host:port".into());
        }
        for (j, e) in doc.spec.endpoints.iter().enumerate() {
            let valid = e.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !valid {
                problem(format!("spec.endpoints[{j}] {e:?} is not host:port"));
            }
        }
        entries.push(ServiceEntry {
            name: doc.metadata.name,
            namespace: doc.metadata.namespace,
            identity: doc.spec.identity,
            endpoints: doc.spec.endpoints,
        });
    }
    if problems.is_empty() {
        Ok(entries)
    } else {
        Err(Problems(problems))
    }
}

/// Services by namespace and name.
#[derive(Debug, Default)]
pub struct ServiceRegistry {
    services: HashMap<String, HashMap<String, Arc<ServiceEntry>>>,
}

impl ServiceRegistry {
    pub fn new(entries: Vec<ServiceEntry>) -> Self {
        let mut services: HashMap<String, HashMap<String, Arc<ServiceEntry>>> = HashMap::new();
        for e in entries {
            services
                .entry(e.namespace.clone())
                .or_default()
                .insert(e.name.clone(), Arc::new(e));
        }
        Self { services }
    }

    /// Resolves a request host (`payments`, `payments.shop`, `payments.shop.svc`,
    /// `payments.shop.svc.cluster.local`, any with `:port`) from a workload in
    /// `own_namespace`.
    pub fn resolve(&self, host: &str, own_namespace: &str) -> Option<Arc<ServiceEntry>> {
        let host = host.rsplit_once(':').map_or(host, |(h, p)| {
            if p.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                host
            }
        });
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let host = host
            .strip_suffix(".svc.cluster.local")
            .or_else(|| host.strip_suffix(".svc"))
            .unwrap_or(&host);
        let (name, namespace) = match host.split_once('.') {
            Some((name, ns)) if !ns.contains('.') => (name, ns),
            Some(_) => return None,
            None => (host, own_namespace),
        };
        self.services.get(namespace)?.get(name).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"
apiVersion: palisade.dev/v1
kind: Service
metadata: { name: payments, namespace: shop }
spec: { identity: "spiffe://palisade.local/ns/shop/sa/payments", endpoints: ["127.0.0.1:15006"] }
"#;

    #[test]
    fn resolves_the_usual_host_forms() {
        let reg = ServiceRegistry::new(parse_services(DOC).unwrap());
        for host in [
            "payments",
            "payments:8080",
            "payments.shop",
            "payments.shop.svc",
            "payments.shop.svc.cluster.local",
            "PAYMENTS.shop.svc.cluster.local.",
            "payments.shop:80",
        ] {
            let e = reg
                .resolve(host, "shop")
                .unwrap_or_else(|| panic!("{host}"));
            assert_eq!(
                e.identity.as_str(),
                "spiffe://palisade.local/ns/shop/sa/payments"
            );
        }
        assert!(
            reg.resolve("payments", "other").is_none(),
            "a bare name is in the caller's namespace"
        );
        assert!(reg.resolve("payments.other", "shop").is_none());
        assert!(reg.resolve("evil.com", "shop").is_none());
        assert!(reg.resolve("payments.shop.evil.com", "shop").is_none());
    }

    #[test]
    fn bad_documents_are_refused_with_reasons() {
        let bad = DOC.replace(
            "spiffe://palisade.local/ns/shop/sa/payments",
            "spiffe://x/../y",
        ) + "---\n"
            + &DOC
                .replace("127.0.0.1:15006", "nowhere")
                .replace("name: payments", "name: Pay")
            + "---\n"
            + &DOC.replace("endpoints:", "extra: 1, endpoints:");
        let problems = parse_services(&bad).unwrap_err().0;
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert!(
            text[0].starts_with("[0]:") && text[0].contains("SPIFFE ID"),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.starts_with("[1]: metadata.name \"Pay\"")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.starts_with("[1]: spec.endpoints[0] \"nowhere\"")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.starts_with("[2]:") && t.contains("unknown field")),
            "{text:?}"
        );
    }
}
