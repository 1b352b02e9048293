//! `GET /v1/decisions`: the central decision log, newest first, filtered and paginated with
//! a cursor (the last row of a page: `time_ms:instance:seq`), for the auditor role; and
//! `GET /v1/decisions/integrity`: the stored chains checked again, writer by writer, by
//! the rules `palisade audit verify --dir` applies to a spool.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use palisade_contract::decisions::Line;
use serde::{Deserialize, Serialize};

use crate::store::DecisionFilter;

use super::{AdminError, AdminState, internal};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DecisionQuery {
    /// Unix seconds, inclusive.
    pub since: Option<i64>,
    /// Unix seconds, exclusive.
    pub until: Option<i64>,
    pub source: Option<String>,
    /// The destination service's name (as the registry names it).
    pub destination: Option<String>,
    /// The destination's namespace (from its SPIFFE ID).
    pub namespace: Option<String>,
    pub decision: Option<String>,
    /// `namespace/name` of the deciding policy.
    pub policy: Option<String>,
    pub protocol: Option<String>,
    pub method: Option<String>,
    pub path_prefix: Option<String>,
    pub exchange: Option<String>,
    pub routing_key: Option<String>,
    pub request_id: Option<String>,
    /// 1 to 1000, default 100.
    pub limit: Option<i64>,
    /// `next` of the previous page.
    pub cursor: Option<String>,
}

/// One stored decision as the API returns it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DecisionEntry {
    pub instance: String,
    pub seq: i64,
    /// RFC 3339, as the sidecar recorded it.
    pub time: String,
    /// The record as the sidecar wrote it (`null` for a checkpoint or gap entry).
    pub record: Option<Box<serde_json::value::RawValue>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DecisionPage {
    pub items: Vec<DecisionEntry>,
    /// The cursor of the next page, absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

pub async fn decisions(
    State(state): State<Arc<AdminState>>,
    Query(q): Query<DecisionQuery>,
) -> Result<Json<DecisionPage>, AdminError> {
    let invalid = |error: &str| AdminError::Invalid {
        error: error.to_owned(),
        details: Vec::new(),
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(invalid("limit must be between 1 and 1000"));
    }
    let before = match &q.cursor {
        None => None,
        Some(c) => Some(parse_cursor(c).ok_or_else(|| invalid("not a cursor this API made"))?),
    };
    let ms = |s: i64| s.saturating_mul(1000);
    let filter = DecisionFilter {
        since_ms: q.since.map(ms),
        until_ms: q.until.map(ms),
        source: q.source,
        destination: q.destination,
        namespace: q.namespace,
        decision: q.decision,
        policy: q.policy,
        protocol: q.protocol,
        method: q.method,
        path_prefix: q.path_prefix,
        exchange: q.exchange,
        routing_key: q.routing_key,
        request_id: q.request_id,
        before,
        limit,
    };
    let rows = state
        .mesh
        .store()
        .decisions(&filter)
        .await
        .map_err(internal)?;
    let next = (rows.len() as i64 == limit)
        .then(|| {
            rows.last()
                .map(|r| format!("{}:{}:{}", r.time_ms, r.instance, r.seq))
        })
        .flatten();
    let items = rows
        .into_iter()
        .map(|r| {
            let line: Line = serde_json::from_str(&r.line)
                .map_err(|e| internal(format!("stored line {}/{}: {e}", r.instance, r.seq)))?;
            Ok(DecisionEntry {
                instance: r.instance,
                seq: r.seq,
                time: line.time,
                record: line.record,
            })
        })
        .collect::<Result<_, AdminError>>()?;
    Ok(Json(DecisionPage { items, next }))
}

fn parse_cursor(c: &str) -> Option<(i64, String, i64)> {
    let mut parts = c.splitn(3, ':');
    let time = parts.next()?.parse().ok()?;
    let instance = parts.next()?.to_owned();
    let seq = parts.next()?.parse().ok()?;
    Some((time, instance, seq))
}

/// `GET /v1/decisions/integrity`: [`crate::collector::verify_store`].
pub async fn integrity(
    State(state): State<Arc<AdminState>>,
) -> Result<Json<serde_json::Value>, AdminError> {
    let bundle = state.ca.bundle().load_full();
    crate::collector::verify_store(state.mesh.store(), &bundle)
        .await
        .map(Json)
        .map_err(internal)
}
