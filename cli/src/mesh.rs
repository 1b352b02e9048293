//! The mesh-configuration commands: apply, get, delete, simulate, workloads, audit, check.
//! Each is a thin shell over one admin API route; the output is a table for people and the
//! API's JSON with `-o json` for scripts.

use std::time::Duration;

use palisade_contract::documents::Kind;
use serde_json::{Value, json};

use crate::Output;
use crate::client::{ApiClient, ApiError, api_path};

/// The kind a resource type names, as people type it (kubectl's way: singular, plural or
/// short name, any case).
pub fn kind(typed: &str) -> Result<Kind, ApiError> {
    match typed.to_ascii_lowercase().as_str() {
        "policy" | "policies" | "authorizationpolicy" | "authorizationpolicies" | "ap" => {
            Ok(Kind::AuthorizationPolicy)
        }
        "requestauthentication" | "requestauthentications" | "ra" => {
            Ok(Kind::RequestAuthentication)
        }
        "service" | "services" | "svc" => Ok(Kind::Service),
        other => Err(ApiError::Usage(format!(
            "unknown resource type {other:?}: use policies, requestauthentications or services"
        ))),
    }
}

use palisade_contract::unix_now as now;

fn read_input(file: &str) -> Result<String, ApiError> {
    if file == "-" {
        std::io::read_to_string(std::io::stdin())
            .map_err(|e| ApiError::Usage(format!("reading standard input: {e}")))
    } else {
        std::fs::read_to_string(file).map_err(|e| ApiError::Usage(format!("reading {file}: {e}")))
    }
}

/// `palisade inject`: the manifests of `file` with their pods injected, as YAML.
pub fn inject(file: &str, settings: &palisade_inject::Settings) -> Result<(), ApiError> {
    let input = read_input(file)?;
    let docs: Vec<Value> = serde_saphyr::from_multiple(&input)
        .map_err(|e| ApiError::Usage(format!("{file}: not YAML or JSON manifests: {e}")))?;
    let mut out = Vec::with_capacity(docs.len());
    for (i, doc) in docs.iter().filter(|d| !d.is_null()).enumerate() {
        out.push(
            palisade_inject::inject_object(doc, settings)
                .map_err(|e| ApiError::Usage(format!("{file}: document {}: {e}", i + 1)))?,
        );
    }
    print!(
        "{}",
        serde_saphyr::to_string_multiple(&out).map_err(|e| ApiError::Usage(e.to_string()))?
    );
    Ok(())
}

pub async fn apply(
    api: &ApiClient,
    file: &str,
    dry_run: bool,
    output: Output,
) -> Result<(), ApiError> {
    let input = read_input(file)?;
    let path = if dry_run {
        "/v1/apply?dryRun=true"
    } else {
        "/v1/apply"
    };
    let result = api.post_documents(path, input).await?;
    if let Output::Json | Output::Yaml = output {
        println!("{result:#}");
        return Ok(());
    }
    for item in result["results"].as_array().into_iter().flatten() {
        let kind = item["kind"].as_str().unwrap_or_default();
        let target = format!(
            "{}/{}",
            item["namespace"].as_str().unwrap_or_default(),
            item["name"].as_str().unwrap_or_default()
        );
        let action = item["action"].as_str().unwrap_or_default();
        if dry_run {
            println!("{kind} {target} would be {action}");
            if action == "updated" {
                print_diff(&item["before"], &item["after"]);
            }
        } else {
            println!("{kind} {target} {action}");
        }
    }
    if !dry_run {
        println!("mesh version {}", result["meshVersion"]);
    }
    Ok(())
}

/// The lines of `before` and `after` (as YAML) that differ, `-`/`+` prefixed, in order
/// (longest common subsequence, which is plenty for documents of policy size).
fn print_diff(before: &Value, after: &Value) {
    let yaml = |v: &Value| serde_saphyr::to_string(v).unwrap_or_else(|_| format!("{v:#}"));
    let (a, b) = (yaml(before), yaml(after));
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            println!("    {}", a[i]);
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            println!("  + {}", b[j]);
            j += 1;
        } else {
            println!("  - {}", a[i]);
            i += 1;
        }
    }
}

pub async fn get(
    api: &ApiClient,
    kind: &str,
    namespace: Option<&str>,
    output: Output,
) -> Result<(), ApiError> {
    let kind = self::kind(kind)?;
    let mut query = vec![("kind", kind.as_str())];
    query.extend(namespace.map(|ns| ("namespace", ns)));
    let list = api
        .get_json(&api_path(&["v1", "resources"], &query))
        .await?;
    let items = list["items"].as_array().cloned().unwrap_or_default();
    match output {
        Output::Json => println!("{list:#}"),
        Output::Yaml => {
            let docs: Vec<&Value> = items.iter().map(|r| &r["document"]).collect();
            print!(
                "{}",
                serde_saphyr::to_string_multiple(&docs)
                    .map_err(|e| ApiError::Usage(e.to_string()))?
            );
        }
        Output::Table => {
            println!(
                "{:<16} {:<32} {:>8}  UPDATED BY",
                "NAMESPACE", "NAME", "VERSION"
            );
            for r in &items {
                println!(
                    "{:<16} {:<32} {:>8}  {}",
                    r["namespace"].as_str().unwrap_or_default(),
                    r["name"].as_str().unwrap_or_default(),
                    r["resourceVersion"],
                    r["updatedBy"].as_str().unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}

pub async fn delete(
    api: &ApiClient,
    kind: &str,
    name: &str,
    namespace: &str,
    output: Output,
) -> Result<(), ApiError> {
    let kind = self::kind(kind)?;
    let result = api
        .delete(&api_path(
            &["v1", "namespaces", namespace, kind.resource(), name],
            &[],
        ))
        .await?;
    match output {
        Output::Table => println!("{kind} {namespace}/{name} deleted"),
        _ => println!("{result:#}"),
    }
    Ok(())
}

/// What `simulate` asks about.
pub enum Target<'a> {
    Http {
        method: &'a str,
        path: &'a str,
        headers: &'a [String],
        port: u16,
    },
    /// `EXCHANGE:KEY[,KEY...]`.
    AmqpPublish(&'a str),
}

/// Which policies `simulate` evaluates under.
pub enum Policies<'a> {
    /// The stored ones, now.
    Current,
    /// These documents (a file, or -) as if applied.
    Proposed(&'a str),
    /// The ones of a past mesh version.
    AtVersion(i64),
}

pub async fn simulate(
    api: &ApiClient,
    from: &str,
    to: Option<&str>,
    target: Target<'_>,
    policies: Policies<'_>,
    output: Output,
) -> Result<(), ApiError> {
    let (from_ns, from_sa) = from
        .split("/ns/")
        .nth(1)
        .and_then(|rest| rest.split_once("/sa/"))
        .ok_or_else(|| ApiError::Usage(format!("--from {from:?} is not a workload SPIFFE ID")))?;
    let to = match (to, &target) {
        (Some(t), _) => t.to_owned(),
        (None, Target::AmqpPublish(_)) => from_sa.to_owned(),
        (None, Target::Http { .. }) => {
            return Err(ApiError::Usage(
                "--to SERVICE[.NAMESPACE] is required".into(),
            ));
        }
    };
    let (service, namespace) = match to.split_once('.') {
        Some((s, ns)) => (s.to_owned(), ns.to_owned()),
        None => (to.clone(), from_ns.to_owned()),
    };
    let mut request = json!({"source": from, "namespace": namespace, "service": service});
    match target {
        Target::Http {
            method,
            path,
            headers,
            port,
        } => {
            let mut header_map = serde_json::Map::new();
            for h in headers {
                let (k, v) = h
                    .split_once('=')
                    .or_else(|| h.split_once(':'))
                    .ok_or_else(|| ApiError::Usage(format!("-H {h:?} is not NAME=VALUE")))?;
                header_map.insert(k.trim().to_owned(), json!(v.trim()));
            }
            request["http"] =
                json!({"method": method, "path": path, "headers": header_map, "port": port});
        }
        Target::AmqpPublish(spec) => {
            let (exchange, keys) = spec.split_once(':').ok_or_else(|| {
                ApiError::Usage(format!(
                    "--amqp-publish {spec:?} is not EXCHANGE:ROUTING_KEY"
                ))
            })?;
            let keys: Vec<&str> = keys.split(',').collect();
            request["amqp"] =
                json!({"operation": "publish", "exchange": exchange, "routingKeys": keys});
        }
    }
    match policies {
        Policies::Current => {}
        Policies::Proposed(file) => request["proposed"] = json!(read_input(file)?),
        Policies::AtVersion(v) => request["atVersion"] = json!(v),
    }
    let result = api.post_json("/v1/simulate", &request).await?;
    if let Output::Json | Output::Yaml = output {
        println!("{result:#}");
        return Ok(());
    }
    println!(
        "decision: {}",
        result["decision"].as_str().unwrap_or_default()
    );
    let basis = &result["detail"]["basis"];
    match basis["kind"].as_str() {
        Some("policy") => println!(
            "by:       {}/{} rule {}",
            basis["policy"]["namespace"].as_str().unwrap_or_default(),
            basis["policy"]["name"].as_str().unwrap_or_default(),
            basis["rule"]
        ),
        Some(other) => println!("by:       {other}"),
        None => {}
    }
    if let Some(p) = result["normalizedPath"].as_str() {
        println!("path:     {p}");
    }
    for c in result["candidates"].as_array().into_iter().flatten() {
        let state = match c["matchedRule"].as_u64() {
            Some(r) => format!("matched rule {r}"),
            None => "no rule matched".into(),
        };
        let dry = if c["dryRun"].as_bool() == Some(true) {
            " (dry run)"
        } else {
            ""
        };
        println!(
            "  {} {}{dry}: {state}",
            c["action"].as_str().unwrap_or_default(),
            c["policy"].as_str().unwrap_or_default()
        );
        for r in c["rules"].as_array().into_iter().flatten() {
            if r["matched"].as_bool() != Some(true) {
                let failed: Vec<&str> = r["failed"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                println!(
                    "    rule {}: {} did not match",
                    r["index"],
                    failed.join(", ")
                );
            }
        }
    }
    Ok(())
}

/// A certificate's remaining life for the workloads table: `in 30s`, or `EXPIRED 30s ago`
/// (an expired sidecar cannot poll, so its row stays as it was last seen).
fn expiry_in(left: i64) -> String {
    if left > 0 {
        format!("in {left}s")
    } else {
        format!("EXPIRED {}s ago", -left)
    }
}

/// The same as a phrase: `expires in 30s`, or `expired 30s ago`.
fn expiry_phrase(left: i64) -> String {
    if left > 0 {
        format!("expires in {left}s")
    } else {
        format!(
            "expired {}s ago: it cannot renew (its /ready says what it needs)",
            -left
        )
    }
}

pub async fn workloads(api: &ApiClient, output: Output) -> Result<(), ApiError> {
    let list = api.get_json("/v1/workloads").await?;
    if let Output::Json | Output::Yaml = output {
        println!("{list:#}");
        return Ok(());
    }
    let mesh = list["meshVersion"].as_i64().unwrap_or_default();
    println!("mesh version {mesh}");
    println!(
        "{:<52} {:>8} {:>16} {:>10}",
        "SPIFFE ID", "APPLIED", "CERT EXPIRES", "LAST SEEN"
    );
    for w in list["items"].as_array().into_iter().flatten() {
        println!(
            "{:<52} {:>8} {:>16} {:>10}",
            w["spiffeId"].as_str().unwrap_or_default(),
            w["appliedVersion"],
            expiry_in(w["certificateExpiry"].as_i64().unwrap_or_default() - now()),
            format!(
                "{}s ago",
                now() - w["lastSeen"].as_i64().unwrap_or_default()
            ),
        );
    }
    Ok(())
}

pub async fn audit(
    api: &ApiClient,
    since: Option<Duration>,
    principal: Option<&str>,
    output: Output,
) -> Result<(), ApiError> {
    let since = since.map(|s| (now() - s.as_secs() as i64).to_string());
    let mut query = vec![("limit", "1000")];
    query.extend(since.as_deref().map(|s| ("since", s)));
    query.extend(principal.map(|p| ("principal", p)));
    let trail = api.get_json(&api_path(&["v1", "audit"], &query)).await?;
    if let Output::Json | Output::Yaml = output {
        // The entries themselves, newest first (the API's page without its cursor).
        println!("{:#}", trail["items"]);
        return Ok(());
    }
    println!(
        "{:>8} {:>11} {:<16} {:<8} TARGET",
        "VERSION", "TIME", "PRINCIPAL", "ACTION"
    );
    for e in trail["items"].as_array().into_iter().flatten() {
        println!(
            "{:>8} {:>11} {:<16} {:<8} {} {}/{}",
            e["meshVersion"],
            e["time"],
            e["principal"].as_str().unwrap_or_default(),
            e["action"].as_str().unwrap_or_default(),
            e["kind"].as_str().unwrap_or_default(),
            e["namespace"].as_str().unwrap_or_default(),
            e["name"].as_str().unwrap_or_default(),
        );
    }
    Ok(())
}

/// `palisade admin-token ...`.
#[derive(Debug)]
pub enum AdminTokenAction {
    Create {
        role: String,
        name: String,
        ttl: Duration,
    },
    List,
    Revoke(String),
}

pub async fn admin_token(
    api: &ApiClient,
    action: AdminTokenAction,
    output: Output,
) -> Result<(), ApiError> {
    let result = match action {
        AdminTokenAction::Create { role, name, ttl } => {
            let body = json!({"name": name, "role": role, "ttlSeconds": ttl.as_secs()});
            let created = api
                .post_json(&api_path(&["v1", "admin-tokens"], &[]), &body)
                .await?;
            if let Output::Table = output {
                println!("{}", created["token"].as_str().unwrap_or_default());
                return Ok(());
            }
            created
        }
        AdminTokenAction::List => {
            let list = api
                .get_json(&api_path(&["v1", "admin-tokens"], &[]))
                .await?;
            if let Output::Table = output {
                println!(
                    "{:<32} {:<24} {:<8} {:>11} {:<10} CREATED BY",
                    "ID", "NAME", "ROLE", "EXPIRES", "STATE"
                );
                let now = now();
                for t in list["items"].as_array().into_iter().flatten() {
                    let expires = t["expiresAt"].as_i64().unwrap_or_default();
                    let state = if !t["revokedAt"].is_null() {
                        "revoked"
                    } else if expires <= now {
                        "expired"
                    } else {
                        "active"
                    };
                    println!(
                        "{:<32} {:<24} {:<8} {:>11} {:<10} {}",
                        t["id"].as_str().unwrap_or_default(),
                        t["name"].as_str().unwrap_or_default(),
                        t["role"].as_str().unwrap_or_default(),
                        expires,
                        state,
                        t["createdBy"].as_str().unwrap_or_default()
                    );
                }
                return Ok(());
            }
            list
        }
        AdminTokenAction::Revoke(id) => {
            let revoked = api
                .delete(&api_path(&["v1", "admin-tokens", &id], &[]))
                .await?;
            if let Output::Table = output {
                for t in revoked["revoked"].as_array().into_iter().flatten() {
                    println!(
                        "revoked {} ({})",
                        t["name"].as_str().unwrap_or_default(),
                        t["id"].as_str().unwrap_or_default()
                    );
                }
                return Ok(());
            }
            revoked
        }
    };
    println!("{result:#}");
    Ok(())
}

/// One finding of `palisade check`.
#[derive(Debug, PartialEq, Eq)]
pub struct Finding {
    pub severity: &'static str,
    pub target: String,
    pub message: String,
}

/// Lints the mesh as `istioctl analyze` does, from the stored documents and the sidecars'
/// reports.
pub fn findings(resources: &[Value], workloads: &[Value], mesh_version: i64) -> Vec<Finding> {
    let mut out = Vec::new();
    let doc_of = |r: &Value| r["document"].clone();
    let policies: Vec<Value> = resources
        .iter()
        .filter(|r| r["kind"] == Kind::AuthorizationPolicy.as_str())
        .map(doc_of)
        .collect();
    let services: Vec<Value> = resources
        .iter()
        .filter(|r| r["kind"] == Kind::Service.as_str())
        .map(doc_of)
        .collect();
    let name = |d: &Value| {
        format!(
            "{}/{}",
            d["metadata"]["namespace"].as_str().unwrap_or_default(),
            d["metadata"]["name"].as_str().unwrap_or_default()
        )
    };
    let is_allow = |p: &Value| p["spec"]["action"].as_str().unwrap_or("ALLOW") == "ALLOW";
    for p in &policies {
        let wildcard = p["spec"]["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|r| r["from"].as_array().into_iter().flatten())
            .flat_map(|f| f["principals"].as_array().into_iter().flatten())
            .any(|v| v == "*");
        if is_allow(p) && wildcard {
            out.push(Finding {
                severity: "warning",
                target: format!("AuthorizationPolicy {}", name(p)),
                message: "ALLOW rule with principals [\"*\"]: any workload of the mesh may call"
                    .into(),
            });
        }
        if let Some(svc) = p["spec"]["selector"]["service"].as_str() {
            let ns = p["metadata"]["namespace"].as_str().unwrap_or_default();
            let registered = services.iter().any(|s| {
                s["metadata"]["name"] == svc
                    && (s["metadata"]["namespace"] == ns || ns == "palisade-system")
            });
            // A workload that only publishes or calls out has no Service entry, but its
            // sidecar reports in (service = its service account by default).
            let running = workloads.iter().any(|w| {
                let id = w["spiffeId"].as_str().unwrap_or_default();
                id.ends_with(&format!("/sa/{svc}"))
                    && (ns == "palisade-system" || id.contains(&format!("/ns/{ns}/")))
            });
            if !registered && !running {
                out.push(Finding {
                    severity: "warning",
                    target: format!("AuthorizationPolicy {}", name(p)),
                    message: format!(
                        "selects service {svc:?}, which is neither in the registry nor a running workload"
                    ),
                });
            }
        }
    }
    for p in policies.iter().filter(|p| !is_allow(p)) {
        for message in exact_deny_gaps(p) {
            out.push(Finding {
                severity: "warning",
                target: format!("AuthorizationPolicy {}", name(p)),
                message,
            });
        }
    }
    for s in &services {
        let ns = s["metadata"]["namespace"].as_str().unwrap_or_default();
        let svc = s["metadata"]["name"].as_str().unwrap_or_default();
        let allowed = policies.iter().any(|p| {
            let pns = p["metadata"]["namespace"].as_str().unwrap_or_default();
            is_allow(p)
                && (pns == ns || pns == "palisade-system")
                && p["spec"]["selector"]["service"]
                    .as_str()
                    .is_none_or(|sel| sel == svc)
        });
        if !allowed {
            out.push(Finding {
                severity: "warning",
                target: format!("Service {}", name(s)),
                message: "no ALLOW policy selects it: every request to it is denied".into(),
            });
        }
    }
    for w in workloads {
        let id = w["spiffeId"].as_str().unwrap_or_default();
        let applied = w["appliedVersion"].as_i64().unwrap_or_default();
        if applied < mesh_version {
            out.push(Finding {
                severity: "warning",
                target: format!("sidecar {id}"),
                message: format!("has applied version {applied}; the mesh is at {mesh_version}"),
            });
        }
        let left = w["certificateExpiry"].as_i64().unwrap_or_default() - now();
        if left < 600 {
            out.push(Finding {
                severity: "error",
                target: format!("sidecar {id}"),
                message: format!("certificate {}", expiry_phrase(left)),
            });
        }
    }
    out
}

/// Whether a policy path pattern (exact, `prefix*`, `*suffix` or `*`) matches `path`.
fn path_pattern_matches(pattern: &str, path: &str) -> bool {
    if pattern == "*" {
        true
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        path.starts_with(prefix)
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        path.ends_with(suffix)
    } else {
        pattern == path
    }
}

/// A DENY (or AUDIT) on an exact path matches that spelling only, while backends often
/// serve `/admin/` as `/admin` and some route without regard to case: the variants the
/// policy does not cover itself, one message each.
fn exact_deny_gaps(policy: &Value) -> Vec<String> {
    let paths: Vec<&str> = policy["spec"]["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["to"].as_array().into_iter().flatten())
        .flat_map(|t| {
            let op = t.get("operation").unwrap_or(t);
            op["paths"].as_array().into_iter().flatten()
        })
        .filter_map(Value::as_str)
        .collect();
    let covered = |variant: &str| paths.iter().any(|p| path_pattern_matches(p, variant));
    let mut out = Vec::new();
    for exact in paths.iter().filter(|p| !p.contains('*')) {
        let slash = match exact.strip_suffix('/') {
            Some("") => None,
            Some(without) => Some(without.to_owned()),
            None => Some(format!("{exact}/")),
        };
        if let Some(variant) = slash.filter(|v| !covered(v)) {
            out.push(format!(
                "DENY on the exact path {exact:?} does not cover {variant:?}, which a backend \
                 may serve as the same resource; add {variant:?} (or \"{exact}*\")"
            ));
        }
        let has_letters = exact.bytes().any(|b| b.is_ascii_alphabetic());
        let other_case = paths
            .iter()
            .any(|p| p.eq_ignore_ascii_case(exact) && p != exact);
        if has_letters && !other_case {
            out.push(format!(
                "DENY on the exact path {exact:?} matches that letter case only ({:?} is not \
                 denied); if the backend routes without regard to case, list the variants or \
                 deny by ALLOW-listing instead",
                exact.to_ascii_uppercase()
            ));
        }
    }
    out
}

/// The sidecars in a CA status that trust a dropped root or not yet every root.
pub fn sidecars_behind(status: &serde_json::Value) -> Vec<(&'static str, String)> {
    let list = |key: &str| {
        status["sidecars"][key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect::<Vec<_>>()
    };
    let dropped = list("trustingDroppedRoots")
        .into_iter()
        .map(|s| ("still trusts a root the bundle dropped", s));
    let missing = list("missingRoots")
        .into_iter()
        .map(|s| ("does not trust every root of the bundle yet", s));
    dropped.chain(missing).collect()
}

/// Exit status 1 when there is a finding of severity error.
pub async fn check(api: &ApiClient, output: Output) -> Result<bool, ApiError> {
    let resources = api.get_json("/v1/resources").await?;
    let workloads = api.get_json("/v1/workloads").await?;
    let ca = api.get_json("/v1/ca").await?;
    let mesh_version = resources["meshVersion"].as_i64().unwrap_or_default();
    let mut found = findings(
        resources["items"].as_array().map_or(&[][..], Vec::as_slice),
        workloads["items"].as_array().map_or(&[][..], Vec::as_slice),
        mesh_version,
    );
    // A sidecar behind on the trust bundle: after `rotate finish`, one still trusting the
    // dropped root accepts peers the mesh no longer does.
    found.extend(
        sidecars_behind(&ca)
            .into_iter()
            .map(|(what, sidecar)| Finding {
                severity: "warning",
                target: format!("sidecar {sidecar}"),
                message: what.to_owned(),
            }),
    );
    match output {
        Output::Json | Output::Yaml => {
            let list: Vec<Value> = found
                .iter()
                .map(|f| json!({"severity": f.severity, "target": f.target, "message": f.message}))
                .collect();
            println!("{:#}", Value::Array(list));
        }
        _ if found.is_empty() => println!("no problems found (mesh version {mesh_version})"),
        _ => {
            for f in &found {
                println!("{:<8} {}: {}", f.severity, f.target, f.message);
            }
        }
    }
    Ok(!found.iter().any(|f| f.severity == "error"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(kind: &str, doc: Value) -> Value {
        json!({"kind": kind, "document": doc})
    }

    #[test]
    fn check_finds_what_istioctl_analyze_would() {
        let resources = vec![
            resource(
                "AuthorizationPolicy",
                json!({"metadata": {"name": "open", "namespace": "shop"},
                       "spec": {"selector": {"service": "ghost"}, "rules": [{"from": [{"principals": ["*"]}]}]}}),
            ),
            resource(
                "Service",
                json!({"metadata": {"name": "payments", "namespace": "shop"}}),
            ),
        ];
        let workloads = vec![json!({"spiffeId": "spiffe://td/ns/shop/sa/payments",
                                    "appliedVersion": 3, "certificateExpiry": now() + 60})];
        let found = findings(&resources, &workloads, 5);
        let messages: Vec<String> = found
            .iter()
            .map(|f| format!("{} {}: {}", f.severity, f.target, f.message))
            .collect();
        assert_eq!(messages.len(), 5, "{messages:#?}");
        assert!(messages[0].contains("principals [\"*\"]"));
        assert!(messages[1].contains("\"ghost\", which is neither in the registry"));
        assert!(messages[2].contains("Service shop/payments: no ALLOW policy"));
        assert!(messages[3].contains("applied version 3; the mesh is at 5"));
        assert!(messages[4].starts_with("error sidecar"));
        assert!(
            messages[4].contains("certificate expires in"),
            "{}",
            messages[4]
        );
        assert!(findings(&[], &[], 0).is_empty());
        // An expired sidecar cannot poll: its row stays, and says it expired.
        let expired = vec![json!({"spiffeId": "spiffe://td/ns/shop/sa/payments",
                                  "appliedVersion": 5, "certificateExpiry": now() - 30})];
        let found = findings(&[], &expired, 5);
        assert_eq!(found.len(), 1);
        assert!(
            found[0].message.starts_with("certificate expired 3"),
            "{}",
            found[0].message
        );
        assert!(expiry_in(-30).starts_with("EXPIRED 30s ago"));
        assert_eq!(expiry_in(30), "in 30s");
    }

    #[test]
    fn sidecars_behind_the_bundle_are_named_with_what_they_lack() {
        let status = json!({"sidecars": {"seen": 3,
            "trustingDroppedRoots": ["spiffe://td/ns/shop/sa/a (i1)"],
            "missingRoots": ["spiffe://td/ns/shop/sa/b (i2)"]}});
        assert_eq!(
            sidecars_behind(&status),
            vec![
                (
                    "still trusts a root the bundle dropped",
                    "spiffe://td/ns/shop/sa/a (i1)".to_owned()
                ),
                (
                    "does not trust every root of the bundle yet",
                    "spiffe://td/ns/shop/sa/b (i2)".to_owned()
                ),
            ]
        );
        assert!(sidecars_behind(&json!({})).is_empty());
    }

    #[test]
    fn check_warns_about_exact_deny_paths_a_backend_may_serve_otherwise() {
        let deny = |paths: Value| {
            vec![resource(
                "AuthorizationPolicy",
                json!({"metadata": {"name": "no-admin", "namespace": "shop"},
                       "spec": {"action": "DENY", "rules": [{"to": [{"paths": paths}]}]}}),
            )]
        };
        let messages = |paths: Value| -> Vec<String> {
            findings(&deny(paths), &[], 0)
                .into_iter()
                .map(|f| f.message)
                .collect()
        };
        let found = messages(json!(["/admin"]));
        assert_eq!(found.len(), 2, "{found:#?}");
        assert!(
            found[0].contains("does not cover \"/admin/\""),
            "{}",
            found[0]
        );
        assert!(
            found[1].contains("\"/ADMIN\" is not denied"),
            "{}",
            found[1]
        );
        // Covered variants are not reported.
        assert!(messages(json!(["/admin", "/admin/", "/ADMIN", "/ADMIN/"])).is_empty());
        assert!(
            messages(json!(["/admin*"])).is_empty(),
            "prefixes are not exact"
        );
        let found = messages(json!(["/v1/", "/V1/"]));
        assert_eq!(found.len(), 2, "{found:#?}");
        assert!(
            found
                .iter()
                .all(|m| m.contains("does not cover \"/v1\"") || m.contains("\"/V1\""))
        );
        assert!(
            messages(json!(["/", "/1"]))
                .iter()
                .all(|m| m.contains("\"/1/\""))
        );
        // ALLOW policies are not concerned.
        let allow = vec![resource(
            "AuthorizationPolicy",
            json!({"metadata": {"name": "a", "namespace": "shop"},
                   "spec": {"rules": [{"to": [{"paths": ["/admin"]}]}]}}),
        )];
        assert!(findings(&allow, &[], 0).is_empty());
    }

    #[test]
    fn resource_type_aliases() {
        assert_eq!(kind("policy").unwrap(), Kind::AuthorizationPolicy);
        assert_eq!(kind("AP").unwrap().resource(), "authorizationpolicies");
        assert_eq!(kind("svc").unwrap(), Kind::Service);
        assert!(kind("pods").is_err());
    }
}
