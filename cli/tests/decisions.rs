//! The central decision log end to end: two sidecars with durable spools ship every
//! decision to a real control plane, where `palisade decisions` lists and filters them
//! within seconds, each decision exactly once, for the auditor role only.

#[path = "../../proxy/tests/support/mod.rs"]
mod support;

use std::process::Output;
use std::time::{Duration, Instant};

use http::StatusCode;
use palisade_control_plane::RunningControlPlane;
use serde_json::Value;
use support::{call_payments, free_port, hello_app, sidecar_files, start_ready, wait_until};

async fn palisade(cp: &RunningControlPlane, token: &str, args: &[&str]) -> Output {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["--server", &format!("http://{}", cp.admin_addr)])
        .args(["--token", token])
        .args(args)
        .output();
    tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .unwrap()
        .unwrap()
}

const MESH: &str = r#"apiVersion: palisade.dev/v1
kind: AuthorizationPolicy
metadata: { name: payments-from-orders, namespace: shop }
spec:
  selector: { service: payments }
  rules:
    - from: [ { principals: ["spiffe://palisade.local/ns/shop/sa/orders"] } ]
      to:   [ { methods: ["POST"], paths: ["/charge"] } ]
"#;

/// Decision lines in these spools.
fn spooled(dirs: &[&std::path::Path]) -> usize {
    let mut n = 0;
    for dir in dirs {
        for segment in palisade_contract::decisions::segments(dir).unwrap() {
            for line in std::fs::read_to_string(segment).unwrap().lines() {
                let line: palisade_contract::decisions::Line = serde_json::from_str(line).unwrap();
                n += usize::from(line.record.is_some());
            }
        }
    }
    n
}

fn decisions(out: &Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "palisade decisions failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_decision_reaches_the_store_once_and_palisade_decisions_lists_it() {
    let dir = tempfile::tempdir().unwrap();
    let cp = support::control_plane(&dir.path().join("cp"), Duration::from_secs(3600)).await;
    let admin = std::fs::read_to_string(&cp.admin_token_path).unwrap();
    let admin = admin.trim();
    let bundle = dir.path().join("cp/trust-bundle.pem");
    let app = hello_app().await.to_string();
    let inbound = format!("127.0.0.1:{}", free_port());
    let spool = |name: &str| dir.path().join(format!("{name}-decisions"));
    let payments_files = sidecar_files(&cp, dir.path(), "payments").await;
    let payments_spool = spool("payments");
    let payments = start_ready(
        &cp,
        bundle.clone(),
        &payments_files,
        &[
            "--app",
            &app,
            "--inbound-listen",
            &inbound,
            "--decision-dir",
            payments_spool.to_str().unwrap(),
        ],
    )
    .await;
    let orders_files = sidecar_files(&cp, dir.path(), "orders").await;
    let orders_spool = spool("orders");
    let orders = start_ready(
        &cp,
        bundle.clone(),
        &orders_files,
        &["--decision-dir", orders_spool.to_str().unwrap()],
    )
    .await;
    let mesh = dir.path().join("mesh.yaml");
    std::fs::write(
        &mesh,
        format!(
            "apiVersion: palisade.dev/v1\nkind: Service\nmetadata: {{ name: payments, namespace: shop }}\n\
             spec: {{ identity: \"spiffe://palisade.local/ns/shop/sa/payments\", endpoints: [\"{inbound}\"] }}\n---\n{MESH}"
        ),
    )
    .unwrap();
    let out = palisade(&cp, admin, &["apply", "-f", mesh.to_str().unwrap()]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(
        "the policy is enforced",
        Duration::from_secs(5),
        async || call_payments(&orders, "POST", "/charge").await == StatusCode::OK,
    )
    .await;

    // The calls whose decisions we look for, once those made while waiting are stored.
    // (The sidecars' decisions: not the control plane's own issuances.)
    let sidecars_only = |all: Vec<Value>| -> Vec<Value> {
        all.into_iter()
            .filter(|d| d["record"]["direction"] != "control-plane")
            .collect()
    };
    let list = async || {
        sidecars_only(decisions(
            &palisade(
                &cp,
                admin,
                &[
                    "decisions",
                    "--since",
                    "1h",
                    "-o",
                    "json",
                    "--limit",
                    "1000",
                ],
            )
            .await,
        ))
    };
    let in_spools = || spooled(&[&payments_spool, &orders_spool]);
    wait_until(
        "the spools are shipped",
        Duration::from_secs(10),
        async || list().await.len() == in_spools(),
    )
    .await;
    let before = in_spools();
    let made = Instant::now();
    assert_eq!(
        call_payments(&orders, "POST", "/charge").await,
        StatusCode::OK
    );
    assert_eq!(
        call_payments(&orders, "GET", "/charge").await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call_payments(&orders, "GET", "/a/%2e%2e;x/charge").await,
        StatusCode::BAD_REQUEST
    );
    // Each call is decided twice: forwarded by orders' outbound, decided by payments'
    // inbound (allow, deny, and the path refused before any policy: error).
    wait_until(
        "the new decisions are stored",
        Duration::from_secs(10),
        async || list().await.len() >= before + 6,
    )
    .await;
    eprintln!(
        "decisions listed centrally {:?} after the calls",
        made.elapsed()
    );
    let all = list().await;
    let brief: Vec<String> = all
        .iter()
        .map(|d| {
            let r = &d["record"];
            format!(
                "{} {} {} {} {}",
                r["direction"], r["decision"], r["method"], r["path"], r["status"]
            )
        })
        .collect();
    assert_eq!(all.len(), before + 6, "each decision once: {brief:#?}");
    assert_eq!(
        all.len(),
        in_spools(),
        "the store holds what the spools hold"
    );
    let newest: Vec<&str> = brief.iter().take(6).map(String::as_str).collect();
    for expected in [
        r#""inbound" "allow" "POST" "/charge" 200"#,
        r#""inbound" "deny" "GET" "/charge" 403"#,
        r#""inbound" "error" "GET" "/a/%2e%2e;x/charge" 400"#,
        r#""outbound" "forward" "POST" "/charge" 200"#,
        r#""outbound" "forward" "GET" "/charge" 403"#,
        r#""outbound" "forward" "GET" "/a/%2e%2e;x/charge" 400"#,
    ] {
        assert_eq!(
            newest.iter().filter(|b| **b == expected).count(),
            1,
            "{expected} once among {newest:#?}"
        );
    }
    let mut keys: Vec<(String, i64)> = all
        .iter()
        .map(|d| {
            (
                d["instance"].as_str().unwrap().to_owned(),
                d["seq"].as_i64().unwrap(),
            )
        })
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), all.len(), "no decision stored twice");

    // Filters: the denial, with the policy's reason and the deciding workload.
    let denied = decisions(
        &palisade(
            &cp,
            admin,
            &["decisions", "--decision", "deny", "-o", "json"],
        )
        .await,
    );
    assert_eq!(denied.len(), 1, "{denied:#?}");
    let r = &denied[0]["record"];
    assert_eq!(r["method"], "GET");
    assert_eq!(r["path"], "/charge");
    assert_eq!(r["direction"], "inbound");
    assert_eq!(r["source"], "spiffe://palisade.local/ns/shop/sa/orders");
    assert_eq!(r["reason"], "no ALLOW policy matched");
    let refused = decisions(
        &palisade(
            &cp,
            admin,
            &[
                "decisions",
                "--decision",
                "error",
                "--source",
                "spiffe://palisade.local/ns/shop/sa/orders",
                "-o",
                "json",
            ],
        )
        .await,
    );
    // The path refused before any policy (and the 502s while the registry was not yet
    // known, which orders' outbound decided without a source).
    let bad_path: Vec<&Value> = refused
        .iter()
        .filter(|d| d["record"]["status"] == 400)
        .collect();
    assert_eq!(bad_path.len(), 1, "{refused:#?}");
    assert_eq!(bad_path[0]["record"]["direction"], "inbound");
    assert!(
        refused
            .iter()
            .all(|d| d["record"]["source"] == "spiffe://palisade.local/ns/shop/sa/orders"),
        "{refused:#?}"
    );
    let by_path = decisions(
        &palisade(
            &cp,
            admin,
            &[
                "decisions",
                "--path-prefix",
                "/charge",
                "--namespace",
                "shop",
                "-o",
                "json",
                "--limit",
                "1000",
            ],
        )
        .await,
    );
    assert!(
        by_path.iter().all(|d| d["record"]["path"] == "/charge"),
        "{by_path:#?}"
    );
    // One request id names one decision of each sidecar.
    let id = r["request_id"].as_str().unwrap();
    let by_id =
        decisions(&palisade(&cp, admin, &["decisions", "--request-id", id, "-o", "json"]).await);
    assert_eq!(by_id.len(), 1, "{by_id:#?}");

    // Which policy denied it, and why.
    let out = palisade(&cp, admin, &["decisions", "explain", id]).await;
    let explained = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{explained}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        explained.contains("deny by the inbound sidecar of payments"),
        "{explained}"
    );
    assert!(
        explained.contains("reason: no ALLOW policy matched"),
        "{explained}"
    );
    assert!(
        explained.contains("shop/payments-from-orders"),
        "{explained}"
    );
    let out = palisade(&cp, admin, &["decisions", "explain", "no-such-request"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no decision with request id"));

    // The table.
    let out = palisade(&cp, admin, &["decisions", "--since", "1h"]).await;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("TIME"), "{table}");
    assert!(
        table.lines().any(|l| l.contains("deny")
            && l.contains("/charge")
            && l.contains("no ALLOW policy matched")),
        "{table}"
    );

    // The auditor reads it; a viewer may not.
    let auditor = cp
        .create_admin_token("audits", "auditor", Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(
        sidecars_only(decisions(
            &palisade(
                &cp,
                &auditor.token,
                &["decisions", "-o", "json", "--limit", "1000"]
            )
            .await
        ))
        .len(),
        all.len()
    );
    let viewer = cp
        .create_admin_token("looks", "viewer", Duration::from_secs(600))
        .await
        .unwrap();
    let out = palisade(&cp, &viewer.token, &["decisions"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("role viewer may not"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The control plane's own decisions: both sidecars' certificates, issued by join token.
    let issued = decisions(
        &palisade(
            &cp,
            admin,
            &[
                "decisions",
                "--protocol",
                "identity",
                "-o",
                "json",
                "--limit",
                "1000",
            ],
        )
        .await,
    );
    for sa in ["orders", "payments"] {
        let id = format!("spiffe://palisade.local/ns/shop/sa/{sa}");
        assert!(
            issued.iter().any(|d| d["record"]["path"] == id.as_str()
                && d["record"]["decision"] == "allow"
                && d["record"]["method"] == "issue"),
            "{sa}'s issuance: {issued:#?}"
        );
    }

    // The store verifies clean, writer by writer (both sidecars' chains).
    let out = palisade(&cp, &auditor.token, &["audit", "verify"]).await;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for sa in ["orders", "payments"] {
        assert!(
            table
                .lines()
                .any(|l| l.contains(&format!("/sa/{sa}")) && l.ends_with("ok")),
            "{table}"
        );
    }

    // The policy that took part goes; the decision is still explained under the version
    // that made it (the deleted policy a candidate that did not match), not the current one.
    let out = palisade(
        &cp,
        admin,
        &["delete", "policy", "payments-from-orders", "-n", "shop"],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = palisade(&cp, admin, &["decisions", "explain", id]).await;
    let explained = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{explained}");
    assert!(
        explained.contains("explained under policy version")
            && explained.contains("shop/payments-from-orders"),
        "{explained}"
    );

    // A bad filter is a clear error.
    let out = palisade(&cp, admin, &["decisions", "--limit", "0"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("limit must be between 1 and 1000"));

    orders.shutdown().await;
    payments.shutdown().await;
    cp.shutdown().await;
}

/// Retention on a short period: the control plane's own records (an issuance) are pruned,
/// and `palisade audit verify` still passes, saying what was pruned and who signed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_with_a_signed_record_and_audit_verify_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = palisade_control_plane::Config::for_data_dir(dir.path().join("cp"));
    config.decision_retention = Duration::from_secs(2);
    let cp = palisade_control_plane::start(&config).await.unwrap();
    let admin = std::fs::read_to_string(&cp.admin_token_path).unwrap();
    let files = sidecar_files(&cp, dir.path(), "orders").await;
    let orders = start_ready(&cp, dir.path().join("cp/trust-bundle.pem"), &files, &[]).await;

    let mut table = String::new();
    wait_until(
        "the issuance is pruned",
        Duration::from_secs(20),
        async || {
            let out = palisade(&cp, admin.trim(), &["audit", "verify"]).await;
            table = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(out.status.success(), "{table}");
            table.contains("pruned by retention")
        },
    )
    .await;
    assert!(
        table.contains("signed by spiffe://palisade.local/ns/palisade-system/sa/control-plane"),
        "{table}"
    );
    let out = palisade(
        &cp,
        admin.trim(),
        &["decisions", "--since", "1h", "-o", "json"],
    )
    .await;
    // Nothing older than the retention (and a pruning's interval) is listed any more.
    let listed = decisions(&out);
    let stale: Vec<&Value> = listed
        .iter()
        .filter(|d| time_older_than(d["time"].as_str().unwrap(), Duration::from_secs(5)))
        .collect();
    assert!(stale.is_empty(), "{stale:#?}");
    orders.shutdown().await;
    cp.shutdown().await;
}

/// Whether RFC 3339 time `t` is more than `age` ago.
fn time_older_than(t: &str, age: Duration) -> bool {
    let t = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).unwrap();
    time::OffsetDateTime::now_utc() - t > age
}
