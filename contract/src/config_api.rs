//! The configuration protocol: how sidecars follow the mesh configuration the control plane
//! stores (on its sidecar-facing port, over mTLS with the sidecar's certificate).
//!
//! `GET /v1/config?version=V&applied=A&instance=I` is a long poll: the control plane answers
//! as soon as the mesh version is newer than `V` (at once if it already is), or with `204`
//! after [`LONG_POLL`] when nothing changed. `A` is the version the sidecar has applied (its
//! acknowledgement, shown by `palisade workloads`); `I` tells sidecars with the same
//! identity apart; `roots` names the roots it trusts (`palisade ca status`, `palisade check`). The answer carries only what concerns the caller ([`concerns`]).
//!
//! The documents travel as they were stored, and the sidecar validates them with the same
//! code the control plane used ([`crate::documents::validate_values`]): a set it cannot accept
//! is refused whole and the last good one stays.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::policy::index::MESH_NAMESPACE;

pub const CONFIG_PATH: &str = "/v1/config";

/// How long the control plane holds a poll with no change.
pub const LONG_POLL: Duration = Duration::from_secs(25);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigQuery {
    /// The newest version the sidecar has seen (0: none).
    pub version: i64,
    /// The version it has applied.
    pub applied: i64,
    pub instance: String,
    /// The roots it trusts now ([`crate::tls::root_id`], comma-separated): whether a
    /// rotation step has reached it, whatever it did with the rest of the configuration.
    #[serde(default)]
    pub roots: String,
}

impl ConfigQuery {
    /// The poll's path and query, as the control plane's `Query<ConfigQuery>` reads it.
    pub fn path(&self) -> String {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("version", &self.version.to_string())
            .append_pair("applied", &self.applied.to_string())
            .append_pair("instance", &self.instance)
            .append_pair("roots", &self.roots)
            .finish();
        format!("{CONFIG_PATH}?{query}")
    }
}

/// The configuration for one sidecar at one mesh version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshConfig {
    pub version: i64,
    /// `AuthorizationPolicy`, `RequestAuthentication` and `Service` documents.
    pub documents: Vec<Value>,
    /// The roots to trust (PEM).
    pub trust_bundle: String,
}

/// Whether a document of `kind` in `namespace` concerns a sidecar of `sidecar_namespace`:
/// policies and request authentication of its namespace and the mesh-wide namespace, and
/// every service (any of them may be called).
pub fn concerns(kind: &str, namespace: &str, sidecar_namespace: &str) -> bool {
    kind == crate::documents::Kind::Service.as_str()
        || namespace == sidecar_namespace
        || namespace == MESH_NAMESPACE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_reads_back_as_written() {
        let q = ConfigQuery {
            version: 7,
            applied: 6,
            instance: "a b&c".into(),
            roots: "00112233aabbccdd,ffeeddccbbaa9988".into(),
        };
        let path = q.path();
        let query = path.strip_prefix("/v1/config?").unwrap();
        let back: ConfigQuery = serde_json::from_value(serde_json::Value::Object(
            form_urlencoded::parse(query.as_bytes())
                .map(|(k, v)| {
                    let v = match k.as_ref() {
                        "version" | "applied" => serde_json::json!(v.parse::<i64>().unwrap()),
                        _ => serde_json::json!(v),
                    };
                    (k.into_owned(), v)
                })
                .collect(),
        ))
        .unwrap();
        assert_eq!(
            (back.version, back.applied, back.instance, back.roots),
            (q.version, q.applied, q.instance, q.roots)
        );
    }

    #[test]
    fn a_sidecar_gets_its_namespace_the_mesh_namespace_and_all_services() {
        assert!(concerns("AuthorizationPolicy", "shop", "shop"));
        assert!(concerns("RequestAuthentication", "palisade-system", "shop"));
        assert!(concerns("Service", "billing", "shop"));
        assert!(!concerns("AuthorizationPolicy", "billing", "shop"));
        assert!(!concerns("RequestAuthentication", "billing", "shop"));
    }
}
