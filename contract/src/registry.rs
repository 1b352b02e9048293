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
//!
//! `endpoints` may be left out where sidecars intercept traffic (Kubernetes): the outbound
//! sidecar then dials, over mTLS, the address the application connected to (the
//! Service's ClusterIP, which kube-proxy balances over the pods, whose own interception
//! hands the connection to their sidecar). The mesh then needs no endpoint discovery,
//! and the identity check is the same. Without interception such a service is unreachable.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::documents::kind::Kind;
use crate::documents::walk::{Envelope, Walk, join};
use crate::spiffe::{SpiffeId, validate_namespace};

/// One service: its name, and where and as whom its sidecars answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntry {
    pub name: String,
    pub namespace: String,
    /// The SPIFFE ID every endpoint must present.
    pub identity: SpiffeId,
    /// `host:port` of the destination sidecars' inbound listeners; empty: the address an
    /// intercepted connection was going to.
    pub endpoints: Vec<String>,
}

impl Walk<'_> {
    /// One `Service` document; `None` when a problem was reported.
    pub(crate) fn service(&mut self, v: &Value, root: &str) -> Option<ServiceEntry> {
        let before = self.problems.len();
        let Envelope {
            name,
            namespace,
            spec,
            spec_loc,
        } = self.envelope(v, root, Kind::Service, &["identity", "endpoints"])?;
        if let Some(n) = &name
            && validate_namespace(n).is_err()
        {
            self.problem(
                &join(root, "metadata.name"),
                format!("{n:?} is not a valid service name (a DNS label)"),
            );
        }
        let identity_loc = join(&spec_loc, "identity");
        let identity = match spec.get("identity") {
            None => {
                self.problem(&identity_loc, "is required");
                None
            }
            Some(v) => self.string(v, &identity_loc).and_then(|s| {
                SpiffeId::parse(s)
                    .map_err(|e| {
                        self.problem(
                            &identity_loc,
                            format!("{s:?} is not a valid SPIFFE ID: it {e}"),
                        )
                    })
                    .ok()
            }),
        };
        let endpoints = self.strings(spec, &spec_loc, "endpoints", |e| {
            let valid = e.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if valid {
                Ok(())
            } else {
                Err("is not host:port".into())
            }
        });
        if self.problems.len() > before {
            return None;
        }
        Some(ServiceEntry {
            name: name?,
            namespace: namespace?,
            identity: identity?,
            endpoints,
        })
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
    use crate::documents::parse_services;

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
            text[0].starts_with("[0].spec.identity:") && text[0].contains("SPIFFE ID"),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.starts_with("[1].metadata.name: \"Pay\"")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.starts_with("[1].spec.endpoints[0]: \"nowhere\"")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.starts_with("[2].spec.extra: unknown field")),
            "{text:?}"
        );
    }

    #[test]
    fn endpoints_may_be_left_to_interception() {
        let doc = DOC.replace(", endpoints: [\"127.0.0.1:15006\"]", "");
        let services = parse_services(&doc).unwrap();
        assert_eq!(services.len(), 1);
        assert!(services[0].endpoints.is_empty());
        let empty_list = DOC.replace("[\"127.0.0.1:15006\"]", "[]");
        assert!(parse_services(&empty_list).unwrap()[0].endpoints.is_empty());
    }
}
