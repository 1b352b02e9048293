//! `POST /v1/simulate`: what a sidecar would decide for a request, and why, with the same
//! pre-checks and evaluator the sidecar runs (contract).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use palisade_contract::SpiffeId;
use palisade_contract::documents::{Kind, PolicyDocuments, validate_values};
use palisade_contract::path::PathOptions;
use palisade_contract::policy::{Decision, DefaultMode, Explanation, PolicySet, Request, Workload};
use palisade_contract::request::{RequestError, check_request};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::mesh_config::validate;

use super::{AdminError, AdminState, internal, invalid};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SimulateRequest {
    /// The caller's SPIFFE ID.
    pub source: SpiffeId,
    /// The destination workload.
    pub namespace: String,
    pub service: String,
    pub http: Option<SimulatedHttp>,
    /// An opaque TCP connection to this port, instead of `http`.
    pub tcp_port: Option<u16>,
    /// An AMQP operation by the workload itself (`source` is its identity, `namespace` and
    /// `service` name it), instead of `http`.
    pub amqp: Option<SimulatedAmqp>,
    /// The end user (`iss/sub`) and claims of a verified JWT, if the request carries one.
    pub request_principal: Option<String>,
    pub claims: Option<Value>,
    /// Documents (YAML or JSON) to evaluate as if applied: they replace stored documents
    /// of the same kind, namespace and name. Nothing is stored.
    pub proposed: Option<String>,
    /// Evaluate under the policies as they stood at this mesh version (a decision's
    /// `policy_version`), replayed from the audit trail, instead of the current ones.
    pub at_version: Option<i64>,
    /// What the sidecar does for workloads no ALLOW policy selects.
    #[serde(default)]
    pub default_mode: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SimulatedHttp {
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub headers: HashMap<String, String>,
    #[serde(default = "default_port")]
    pub port: u16,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SimulatedAmqp {
    /// `publish`, `consume`, `get`, `exchange.declare`, ...
    pub operation: String,
    #[serde(default = "default_vhost")]
    pub vhost: String,
    pub exchange: Option<String>,
    /// For a publish: the routing key, then any `CC`/`BCC` keys; every one must be allowed.
    #[serde(default)]
    pub routing_keys: Vec<String>,
    pub queue: Option<String>,
}

pub(super) fn default_vhost() -> String {
    "/".into()
}

pub(super) fn default_port() -> u16 {
    8080
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SimulateResult {
    /// What the sidecar would log: `allow`, `deny`, `audit`, `dry-run-deny`.
    pub decision: &'static str,
    pub mesh_version: i64,
    /// The path the sidecar would match and forward.
    pub normalized_path: Option<String>,
    pub detail: Decision,
    pub candidates: Vec<Explanation>,
}

pub async fn simulate(
    State(state): State<Arc<AdminState>>,
    body: Result<Json<SimulateRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<SimulateResult>, AdminError> {
    let Json(req) = body.map_err(|r| AdminError::from_json_rejection(r, "simulate request"))?;
    let bad = |error: String| AdminError::Invalid {
        error,
        details: Vec::new(),
    };
    let default_mode: DefaultMode = req
        .default_mode
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|e| bad(format!("defaultMode {e}")))?
        .unwrap_or_default();
    let store = state.mesh.store();
    let kind = Kind::AuthorizationPolicy.as_str();
    let (current, stored) = store.list(Some(kind), None).await.map_err(internal)?;
    let (mesh_version, mut values) = match req.at_version {
        None => (
            current,
            stored
                .into_iter()
                .map(|r| (r.namespace, r.name, r.document))
                .collect::<Vec<(String, String, Value)>>(),
        ),
        Some(_) if req.proposed.is_some() => {
            return Err(bad("give atVersion or proposed, not both".into()));
        }
        Some(v) if v < 1 || v > current => {
            return Err(bad(format!(
                "atVersion {v}: the mesh versions are 1 to {current}"
            )));
        }
        Some(v) => (v, store.documents_at(kind, v).await.map_err(internal)?),
    };
    if let Some(proposed) = &req.proposed {
        for doc in validate(proposed).map_err(invalid)? {
            if doc.kind != Kind::AuthorizationPolicy {
                continue;
            }
            values.retain(|(ns, name, _)| (ns, name) != (&doc.namespace, &doc.name));
            values.push((doc.namespace, doc.name, doc.value));
        }
    }
    let all: Vec<Value> = values.into_iter().map(|(_, _, v)| v).collect();
    let docs = PolicyDocuments::from_documents(validate_values(&all).map_err(invalid)?);
    let set = PolicySet::new(&docs.authorization, mesh_version as u64, default_mode);
    let workload = Workload {
        namespace: &req.namespace,
        service: &req.service,
    };
    let headers: http::HeaderMap = req
        .http
        .as_ref()
        .map(|h| {
            h.headers
                .iter()
                .filter_map(|(k, v)| {
                    Some((
                        http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).ok()?,
                        http::HeaderValue::from_str(v).ok()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    if let Some(amqp) = &req.amqp {
        if req.http.is_some() || req.tcp_port.is_some() {
            return Err(bad("give exactly one of http, tcpPort and amqp".into()));
        }
        return Ok(Json(simulate_amqp(
            &set,
            &workload,
            &req,
            amqp,
            mesh_version,
        )));
    }
    let (request, normalized_path);
    match (&req.http, req.tcp_port) {
        (Some(h), None) => {
            // The sidecar's own pre-checks (contract::request), so simulate refuses what
            // the sidecar refuses.
            let target =
                check_request(&h.method, &h.path, PathOptions::default()).map_err(|e| match e {
                    RequestError::BadPath(_) => {
                        bad(format!("path {:?}: {e} (the sidecar answers 400)", h.path))
                    }
                    RequestError::BadMethod(_) => bad(format!("{e} (the sidecar answers 400)")),
                })?;
            normalized_path = Some(target.policy_path().into_owned());
            request = Request {
                source: Some(&req.source),
                request_principal: req.request_principal.as_deref(),
                claims: req.claims.as_ref(),
                method: &h.method,
                path: normalized_path.as_deref().unwrap_or("/"),
                port: h.port,
                headers: &headers,
                l4: false,
                amqp: None,
            };
        }
        (None, Some(port)) => {
            normalized_path = None;
            request = Request::connection(Some(&req.source), port);
        }
        _ => return Err(bad("give exactly one of http, tcpPort and amqp".into())),
    }
    let detail = set.evaluate(&workload, &request);
    let candidates = set.explain(&workload, &request);
    Ok(Json(SimulateResult {
        decision: detail.label(),
        mesh_version,
        normalized_path: normalized_path.clone(),
        candidates,
        detail,
    }))
}

/// An AMQP operation: each routing key is a decision of its own (as the sidecar makes them);
/// the first refused one is the answer, else the last allowed one.
pub(super) fn simulate_amqp(
    set: &PolicySet,
    workload: &Workload<'_>,
    req: &SimulateRequest,
    amqp: &SimulatedAmqp,
    mesh_version: i64,
) -> SimulateResult {
    let keys: Vec<Option<&str>> = if amqp.routing_keys.is_empty() {
        vec![None]
    } else {
        amqp.routing_keys.iter().map(|k| Some(k.as_str())).collect()
    };
    let mut answer = None;
    for key in keys {
        let request = Request::amqp(
            Some(&req.source),
            palisade_contract::policy::AmqpRequest {
                operation: &amqp.operation,
                vhost: &amqp.vhost,
                exchange: amqp.exchange.as_deref(),
                routing_key: key,
                queue: amqp.queue.as_deref(),
            },
        );
        let detail = set.evaluate(workload, &request);
        let refused = detail.verdict == palisade_contract::policy::Verdict::Deny;
        answer = Some((detail, set.explain(workload, &request)));
        if refused {
            break;
        }
    }
    let (detail, candidates) = answer.expect("at least one decision");
    SimulateResult {
        decision: detail.label(),
        mesh_version,
        normalized_path: None,
        candidates,
        detail,
    }
}
