//! The mesh configuration end to end: documents applied with the `palisade` CLI reach
//! running sidecars within a second, `simulate` agrees with what the sidecar does, and the
//! sidecars keep enforcing (and restart from their cached configuration) while the control
//! plane is down.

#[path = "../../proxy/tests/support/mod.rs"]
mod support;

use std::process::Output;
use std::time::{Duration, Instant};

use http::StatusCode;
use palisade_control_plane::RunningControlPlane;
use serde_json::Value;
use support::{
    call_payments, free_port, hello_app, sidecar_config, sidecar_files, wait_ready, wait_until,
};

async fn palisade(cp: &RunningControlPlane, args: &[&str]) -> Output {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["--server", &format!("http://{}", cp.admin_addr)])
        .args(["--token-file", cp.admin_token_path.to_str().unwrap()])
        .args(args)
        .env_remove("PALISADE_TOKEN")
        .output();
    tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .unwrap()
        .unwrap()
}

fn ok_stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "palisade failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const POLICY: &str = r#"apiVersion: palisade.dev/v1
kind: AuthorizationPolicy
metadata: { name: payments-from-orders, namespace: shop }
spec:
  selector: { service: payments }
  rules:
    - from: [ { principals: ["spiffe://palisade.local/ns/shop/sa/orders"] } ]
      to:   [ { methods: ["POST"], paths: ["/charge"] } ]
"#;

#[tokio::test]
async fn cli_changes_reach_sidecars_and_survive_a_control_plane_outage() {
    let dir = tempfile::tempdir().unwrap();
    let cp = support::control_plane(&dir.path().join("cp"), Duration::from_secs(3600)).await;
    let bundle = dir.path().join("cp/trust-bundle.pem");
    let app = hello_app().await.to_string();
    let inbound = format!("127.0.0.1:{}", free_port());
    let payments_files = sidecar_files(&cp, dir.path(), "payments").await;
    let payments_flags = ["--app", app.as_str(), "--inbound-listen", inbound.as_str()];
    let payments = palisade_proxy::start(&sidecar_config(
        cp.sidecar_addr,
        bundle.clone(),
        &payments_files,
        &payments_flags,
    ))
    .await
    .unwrap();
    let orders_files = sidecar_files(&cp, dir.path(), "orders").await;
    let orders = palisade_proxy::start(&sidecar_config(
        cp.sidecar_addr,
        bundle.clone(),
        &orders_files,
        &[],
    ))
    .await
    .unwrap();
    wait_ready(&payments).await;
    wait_ready(&orders).await;

    // The registry entry, then (default deny) a 403 from payments.
    let service = dir.path().join("service.yaml");
    std::fs::write(
        &service,
        format!(
            "apiVersion: palisade.dev/v1\nkind: Service\nmetadata: {{ name: payments, namespace: shop }}\n\
             spec: {{ identity: \"spiffe://palisade.local/ns/shop/sa/payments\", endpoints: [\"{inbound}\"] }}\n"
        ),
    )
    .unwrap();
    let out = ok_stdout(&palisade(&cp, &["apply", "-f", service.to_str().unwrap()]).await);
    assert!(out.contains("Service shop/payments created"), "{out}");
    wait_until(
        "orders knows payments",
        Duration::from_secs(5),
        async || call_payments(&orders, "POST", "/charge").await == StatusCode::FORBIDDEN,
    )
    .await;

    // A dry run changes nothing.
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let out =
        ok_stdout(&palisade(&cp, &["apply", "-f", policy.to_str().unwrap(), "--dry-run"]).await);
    assert!(out.contains("would be created"), "{out}");
    assert_eq!(
        call_payments(&orders, "POST", "/charge").await,
        StatusCode::FORBIDDEN
    );

    // Applied for real: the running sidecar allows the call within a second.
    let out = ok_stdout(&palisade(&cp, &["apply", "-f", policy.to_str().unwrap()]).await);
    let applied_at = Instant::now();
    assert!(
        out.contains("AuthorizationPolicy shop/payments-from-orders created"),
        "{out}"
    );
    wait_until(
        "the policy is enforced",
        Duration::from_secs(1),
        async || call_payments(&orders, "POST", "/charge").await == StatusCode::OK,
    )
    .await;
    let propagation = applied_at.elapsed();
    eprintln!("policy change enforced {propagation:?} after the CLI returned");

    // simulate agrees with what the sidecar does.
    for (method, path) in [
        ("POST", "/charge"),
        ("GET", "/charge"),
        ("POST", "/x/../charge"),
        ("POST", "/refund"),
    ] {
        let out = ok_stdout(
            &palisade(
                &cp,
                &[
                    "simulate",
                    "-o",
                    "json",
                    "--from",
                    "spiffe://palisade.local/ns/shop/sa/orders",
                    "--to",
                    "payments",
                    "--method",
                    method,
                    "--path",
                    path,
                ],
            )
            .await,
        );
        let simulated: Value = serde_json::from_str(&out).unwrap();
        let actual = call_payments(&orders, method, path).await;
        let expected = if simulated["decision"] == "deny" {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::OK
        };
        assert_eq!(actual, expected, "{method} {path}: {simulated}");
    }

    // simulate speaks AMQP too: every routing key (CC included) is judged.
    let amqp = dir.path().join("amqp.yaml");
    std::fs::write(
        &amqp,
        "apiVersion: palisade.dev/v1\nkind: AuthorizationPolicy\nmetadata: { name: orders-publish, namespace: shop }\n\
         spec:\n  selector: { service: orders }\n  rules: [ { to: [ { amqp: { operations: [publish], exchanges: [shop.events], routingKeys: [\"order.*\"] } } ] } ]\n",
    )
    .unwrap();
    ok_stdout(&palisade(&cp, &["apply", "-f", amqp.to_str().unwrap()]).await);
    for (spec, want) in [
        ("shop.events:order.created", "allow"),
        ("shop.events:order.created,payment.secret", "deny"),
        ("other:order.created", "deny"),
    ] {
        let out = ok_stdout(
            &palisade(
                &cp,
                &[
                    "simulate",
                    "-o",
                    "json",
                    "--from",
                    "spiffe://palisade.local/ns/shop/sa/orders",
                    "--amqp-publish",
                    spec,
                ],
            )
            .await,
        );
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["decision"], want, "{spec}: {v}");
    }

    // Both sidecars report the version they applied.
    let version = {
        let out = ok_stdout(&palisade(&cp, &["get", "policies", "-o", "json"]).await);
        serde_json::from_str::<Value>(&out).unwrap()["meshVersion"]
            .as_i64()
            .unwrap()
    };
    wait_until(
        "both sidecars acknowledge",
        Duration::from_secs(35),
        async || {
            let out = ok_stdout(&palisade(&cp, &["workloads", "-o", "json"]).await);
            let list: Value = serde_json::from_str(&out).unwrap();
            let items = list["items"].as_array().unwrap();
            items.len() == 2 && items.iter().all(|w| w["appliedVersion"] == version)
        },
    )
    .await;
    let out = ok_stdout(&palisade(&cp, &["get", "policies", "-o", "yaml"]).await);
    assert!(out.contains("name: payments-from-orders"), "{out}");
    let out = ok_stdout(&palisade(&cp, &["audit"]).await);
    assert!(
        out.contains("initial-admin") && out.contains("created"),
        "{out}"
    );
    let out = ok_stdout(&palisade(&cp, &["check"]).await);
    assert!(out.contains("no problems found"), "{out}");

    // A configuration a sidecar cannot use (a JWKS file it does not have) is refused whole
    // there; the last good one stays in force, and `check` shows the sidecar behind.
    let authn = dir.path().join("authn.yaml");
    std::fs::write(
        &authn,
        "apiVersion: palisade.dev/v1\nkind: RequestAuthentication\nmetadata: { name: users, namespace: shop }\n\
         spec:\n  jwtRules: [ { issuer: \"https://idp.example\", audiences: [shop], jwksFile: /nonexistent/jwks.json } ]\n",
    )
    .unwrap();
    ok_stdout(&palisade(&cp, &["apply", "-f", authn.to_str().unwrap()]).await);
    wait_until(
        "payments refuses the configuration",
        Duration::from_secs(5),
        async || {
            support::admin_get(&payments, "/metrics")
                .await
                .1
                .contains("palisade_proxy_config_rejected_total 1")
        },
    )
    .await;
    assert_eq!(
        call_payments(&orders, "POST", "/charge").await,
        StatusCode::OK
    );
    assert_eq!(
        call_payments(&orders, "GET", "/charge").await,
        StatusCode::FORBIDDEN
    );
    let out = palisade(&cp, &["check"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("sa/payments: has applied version"), "{text}");
    ok_stdout(
        &palisade(
            &cp,
            &["delete", "requestauthentication", "users", "-n", "shop"],
        )
        .await,
    );

    // The control plane goes away: the sidecars keep enforcing what they have.
    let cp_admin = cp.admin_addr;
    cp.shutdown().await;
    assert_eq!(
        call_payments(&orders, "POST", "/charge").await,
        StatusCode::OK
    );
    assert_eq!(
        call_payments(&orders, "GET", "/charge").await,
        StatusCode::FORBIDDEN
    );
    // A sidecar restarted meanwhile starts from its cached certificate and configuration.
    payments.shutdown().await;
    let payments = palisade_proxy::start(&sidecar_config(
        "127.0.0.1:9".parse().unwrap(),
        bundle,
        &payments_files,
        &payments_flags,
    ))
    .await
    .unwrap();
    wait_ready(&payments).await;
    assert_eq!(
        call_payments(&orders, "POST", "/charge").await,
        StatusCode::OK
    );
    assert_eq!(
        call_payments(&orders, "GET", "/charge").await,
        StatusCode::FORBIDDEN
    );
    let _ = cp_admin;
    payments.shutdown().await;
    orders.shutdown().await;
}

#[tokio::test]
async fn operators_can_use_a_client_certificate_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let mut config =
        palisade_control_plane::Config::for_data_dir(dir.path().join("cp").to_path_buf());
    config.admin_tls = true;
    config.admin_spiffe_id = vec![
        "spiffe://palisade.local/ns/palisade-system/sa/ops=editor"
            .parse()
            .unwrap(),
    ];
    let cp = palisade_control_plane::start(&config).await.unwrap();
    let bundle = dir.path().join("cp/trust-bundle.pem");
    // The operator's certificate, obtained like any workload's (here by a sidecar process
    // that caches it in its identity dir).
    let files = support::sidecar_files_in(&cp, dir.path(), "palisade-system", "ops").await;
    let agent = support::start_ready(&cp, bundle.clone(), &files, &[]).await;
    agent.shutdown().await;

    let https = |args: &[&str], with_cert: bool| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_palisade"));
        cmd.args(["--server", &format!("https://{}", cp.admin_addr)])
            .args(["--ca-bundle", bundle.to_str().unwrap()])
            .args(args)
            .env_remove("PALISADE_TOKEN")
            .env_remove("PALISADE_TOKEN_FILE")
            .env("PALISADE_CONFIG", dir.path().join("none.yaml"));
        if with_cert {
            cmd.args(["--cert", files.cache.join("cert.pem").to_str().unwrap()])
                .args(["--key", files.cache.join("key.pem").to_str().unwrap()]);
        }
        cmd.output()
    };
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let out = https(&["apply", "-f", policy.to_str().unwrap()], true)
        .await
        .unwrap();
    let text = ok_stdout(&out);
    assert!(text.contains("created"), "{text}");
    // The editor role from --admin-spiffe-id: no join tokens.
    let out = https(&["token", "create", "-n", "shop", "-s", "x"], true)
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("permission denied"));
    // Without a certificate (and no token): not authenticated.
    let out = https(&["get", "policies"], false).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not authenticated"));
    cp.shutdown().await;
}
