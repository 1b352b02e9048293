//! `palisade decisions`: the central decision log (`GET /v1/decisions`), newest first as a
//! table like kubectl's, or as JSON/YAML; `--follow` keeps printing new decisions as they
//! arrive, oldest first, as `kubectl logs -f` does.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;

use crate::Output;
use crate::client::{ApiClient, ApiError, api_path};

/// What `palisade decisions` filters on (each a query parameter of `GET /v1/decisions`).
#[derive(Debug, Default, clap::Args)]
pub struct Filters {
    /// Only decisions this recent (e.g. 10m, 2h).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub since: Option<Duration>,
    /// Only calls from this SPIFFE ID.
    #[arg(long)]
    pub source: Option<String>,
    /// Only calls to this service (its registry name).
    #[arg(long)]
    pub destination: Option<String>,
    /// Only calls to workloads of this namespace.
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Only this decision (allow, deny, audit, dry-run-deny, unauthenticated, forward,
    /// passthrough, error).
    #[arg(long)]
    pub decision: Option<String>,
    /// Only decisions made by this policy (namespace/name).
    #[arg(long)]
    pub policy: Option<String>,
    /// Only this protocol (http1, http2, tcp, amqp).
    #[arg(long)]
    pub protocol: Option<String>,
    /// Only this HTTP method or AMQP operation.
    #[arg(long)]
    pub method: Option<String>,
    /// Only paths starting with this.
    #[arg(long)]
    pub path_prefix: Option<String>,
    /// Only this AMQP exchange.
    #[arg(long)]
    pub exchange: Option<String>,
    /// Only this AMQP routing key.
    #[arg(long)]
    pub routing_key: Option<String>,
    /// Only the decision with this request id.
    #[arg(long)]
    pub request_id: Option<String>,
    /// At most this many (1 to 1000).
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
}

impl Filters {
    fn query(&self, since: Option<i64>) -> Vec<(&'static str, String)> {
        let mut q = vec![("limit", self.limit.to_string())];
        if let Some(s) = since {
            q.push(("since", s.to_string()));
        }
        for (name, value) in [
            ("source", &self.source),
            ("destination", &self.destination),
            ("namespace", &self.namespace),
            ("decision", &self.decision),
            ("policy", &self.policy),
            ("protocol", &self.protocol),
            ("method", &self.method),
            ("pathPrefix", &self.path_prefix),
            ("exchange", &self.exchange),
            ("routingKey", &self.routing_key),
            ("requestId", &self.request_id),
        ] {
            if let Some(v) = value {
                q.push((name, v.clone()));
            }
        }
        q
    }
}

async fn page(api: &ApiClient, query: &[(&str, String)]) -> Result<Vec<Value>, ApiError> {
    let query: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let page = api
        .get_json(&api_path(&["v1", "decisions"], &query))
        .await?;
    Ok(page["items"].as_array().cloned().unwrap_or_default())
}

pub async fn list(
    api: &ApiClient,
    filters: &Filters,
    follow: bool,
    output: Output,
) -> Result<(), ApiError> {
    let now = palisade_contract::unix_now();
    let since = filters.since.map(|d| now - d.as_secs() as i64);
    let items = page(api, &filters.query(since)).await?;
    if !follow {
        if let Output::Json | Output::Yaml = output {
            println!("{:#}", Value::Array(items));
        } else {
            header();
            items.iter().for_each(row);
        }
        return Ok(());
    }
    // Oldest first from here on; each decision printed once (by instance and sequence).
    if let Output::Table = output {
        header();
    }
    let mut seen = HashSet::new();
    let mut newest = since.unwrap_or(now);
    let mut batch = items;
    loop {
        for item in batch.iter().rev() {
            let key = (item["instance"].to_string(), item["seq"].as_i64());
            if !seen.insert(key) {
                continue;
            }
            match output {
                Output::Table => row(item),
                Output::Json | Output::Yaml => println!("{item}"),
            }
        }
        if let Some(t) = batch.first().and_then(record_secs) {
            newest = newest.max(t);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Decisions of the newest second seen are asked for again: a second is the
        // query's grain, and `seen` drops the repeats.
        batch = page(api, &filters.query(Some(newest))).await?;
        if seen.len() > 100_000 {
            seen.clear();
        }
    }
}

fn record_secs(item: &Value) -> Option<i64> {
    let t = item["time"].as_str()?;
    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

fn header() {
    println!(
        "{:<24} {:<16} {:<44} {:<28} {:<8} {:<32} WHY",
        "TIME", "DECISION", "SOURCE", "DESTINATION", "METHOD", "PATH"
    );
}

fn row(item: &Value) {
    let r = &item["record"];
    let s = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    let (method, path) = match r.get("amqp").filter(|a| !a.is_null()) {
        Some(a) => (
            s(&a["operation"]),
            format!("{} {}", s(&a["exchange"]), s(&a["routing_key"])),
        ),
        None => (s(&r["method"]), s(&r["path"])),
    };
    let why = match (r["policy"].as_str(), r["reason"].as_str()) {
        (Some(p), _) => format!("{p}:{}", r["rule"]),
        (None, Some(reason)) => reason.to_owned(),
        (None, None) => "-".into(),
    };
    let time: String = s(&item["time"]).chars().take(23).collect();
    let destination = match r["destination_service"].as_str() {
        Some(d) if !d.is_empty() => d.to_owned(),
        _ => s(&r["destination"]),
    };
    println!(
        "{:<24} {:<16} {:<44} {:<28} {:<8} {:<32} {}",
        time,
        s(&r["decision"]),
        s(&r["source"]),
        destination,
        method,
        path,
        why
    );
}

/// `palisade decisions explain REQUEST_ID`: the stored decisions of one request (each
/// sidecar that decided it), and for the ones a policy made, `simulate`'s explanation: which
/// policy and rule decided, and why each other candidate did not match. The explanation is
/// made under the policies of the version that decided (`policy_version`, replayed from the
/// audit trail), so it holds however the policies changed since.
pub async fn explain(api: &ApiClient, request_id: &str, output: Output) -> Result<(), ApiError> {
    let items = page(
        api,
        &[("requestId", request_id.to_owned()), ("limit", "10".into())],
    )
    .await?;
    if items.is_empty() {
        return Err(ApiError::Refused {
            status: http::StatusCode::NOT_FOUND,
            message: format!(
                "no decision with request id {request_id} is in the store (shipping takes a \
                 moment; list recent ones with palisade decisions --since 5m)"
            ),
        });
    }
    let current = api.get_json("/v1/resources").await?["meshVersion"]
        .as_i64()
        .unwrap_or_default();
    for item in items.iter().rev() {
        let r = &item["record"];
        let s = |v: &Value| v.as_str().unwrap_or("-").to_owned();
        println!(
            "{} {} by the {} sidecar of {}: {} {} {} -> {} (status {})",
            s(&item["time"]),
            s(&r["decision"]),
            s(&r["direction"]),
            s(&r["destination_service"]),
            s(&r["source"]),
            s(&r["method"]),
            s(&r["path"]),
            s(&r["destination"]),
            r["status"],
        );
        match (r["policy"].as_str(), r["reason"].as_str()) {
            (Some(p), _) => println!("  decided by {p}, rule {}", r["rule"]),
            (None, Some(reason)) => println!("  reason: {reason}"),
            _ => {}
        }
        let source = r["source"].as_str();
        let namespace = r["destination"]
            .as_str()
            .and_then(|d| d.split("/ns/").nth(1))
            .and_then(|rest| rest.split('/').next());
        let service = r["destination_service"].as_str().filter(|s| !s.is_empty());
        let inbound_http = r["direction"] == "inbound" && s(&r["protocol"]).starts_with("http");
        let amqp = r.get("amqp").filter(|a| !a.is_null());
        let policy_made = r["policy_version"].as_i64().unwrap_or_default() > 0;
        match (source, namespace, service) {
            (Some(source), Some(ns), Some(svc)) if inbound_http && policy_made => {
                let policies = under_version(r, current);
                let target = crate::mesh::Target::Http {
                    method: r["method"].as_str().unwrap_or("GET"),
                    path: r["path"].as_str().unwrap_or("/"),
                    headers: &[],
                    port: 8080,
                };
                crate::mesh::simulate(
                    api,
                    source,
                    Some(&format!("{svc}.{ns}")),
                    target,
                    policies,
                    output,
                )
                .await?;
            }
            (Some(source), _, _) if amqp.is_some_and(|a| a["operation"] == "publish") => {
                let policies = under_version(r, current);
                let a = amqp.expect("checked");
                let spec = format!("{}:{}", s(&a["exchange"]), s(&a["routing_key"]));
                crate::mesh::simulate(
                    api,
                    source,
                    None,
                    crate::mesh::Target::AmqpPublish(&spec),
                    policies,
                    output,
                )
                .await?;
            }
            _ => println!("  (not a policy decision: nothing more to explain)"),
        }
        println!();
    }
    Ok(())
}

/// The policies to explain `record` under: those of the version that decided it (said
/// when the policies changed since), or the current ones when that version is not the
/// control plane's (a sidecar with --policy-file).
fn under_version(record: &Value, current: i64) -> crate::mesh::Policies<'static> {
    let decided = record["policy_version"].as_i64().unwrap_or_default();
    if decided < 1 || decided > current {
        println!(
            "  note: policy version {decided} is not one of the control plane's (1 to {current}); \
             the explanation below is under the current policies"
        );
        return crate::mesh::Policies::Current;
    }
    if decided != current {
        println!(
            "  explained under policy version {decided}, the one that decided (the policies \
             changed since: the current version is {current})"
        );
    }
    crate::mesh::Policies::AtVersion(decided)
}
