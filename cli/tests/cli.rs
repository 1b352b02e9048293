//! The `palisade` binary against a running control plane.

use std::process::Output;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use palisade_control_plane::{Config, RunningControlPlane};

async fn control_plane(dir: &std::path::Path) -> RunningControlPlane {
    palisade_control_plane::start(&Config::for_data_dir(dir.join("data")))
        .await
        .unwrap()
}

async fn palisade(
    cp: Option<&RunningControlPlane>,
    server: Option<String>,
    args: &[&str],
) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_palisade"));
    if let Some(server) = server.or_else(|| cp.map(|cp| format!("http://{}", cp.admin_addr))) {
        cmd.args(["--server", &server]);
    }
    if let Some(cp) = cp {
        cmd.args(["--token-file", cp.admin_token_path.to_str().unwrap()]);
    }
    cmd.args(args)
        .env_remove("PALISADE_TOKEN")
        .env_remove("PALISADE_TOKEN_FILE");
    tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .unwrap()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn token_create_prints_a_join_token_for_the_identity() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(dir.path()).await;
    let out = palisade(
        Some(&cp),
        None,
        &[
            "token", "create", "-n", "shop", "-s", "orders", "--ttl", "5m",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let token = stdout(&out).trim().to_owned();
    let claims: serde_json::Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["sub"], "spiffe://palisade.local/ns/shop/sa/orders");
    assert_eq!(claims["aud"], "palisade-join");
    let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert_eq!(lifetime, 300);

    let out = palisade(
        Some(&cp),
        None,
        &[
            "-o", "json", "token", "create", "-n", "shop", "-s", "payments",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        json["spiffeId"],
        "spiffe://palisade.local/ns/shop/sa/payments"
    );
    cp.shutdown().await;
}

#[tokio::test]
async fn failures_are_explained_with_the_right_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(dir.path()).await;

    let out = palisade(
        Some(&cp),
        None,
        &["token", "create", "-n", "Shop", "-s", "orders"],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not a valid Kubernetes name"),
        "{}",
        stderr(&out)
    );

    let out = palisade(
        None,
        Some(format!("http://{}", cp.admin_addr)),
        &["ca", "status"],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not authenticated"),
        "{}",
        stderr(&out)
    );

    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = palisade(None, Some(format!("http://{free}")), &["ca", "status"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot reach the control plane"),
        "{}",
        stderr(&out)
    );

    let out = palisade(None, Some("ftp://x".into()), &["ca", "status"]).await;
    assert_eq!(out.status.code(), Some(2));
    let out = palisade(None, None, &["token", "create"]).await;
    assert_eq!(out.status.code(), Some(2), "clap usage error");
    cp.shutdown().await;
}

#[tokio::test]
async fn ca_rotation_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(dir.path()).await;
    for (step, phase, roots) in [
        ("prepare", "prepared", 2),
        ("activate", "activated", 2),
        ("finish", "stable", 1),
    ] {
        let out = palisade(Some(&cp), None, &["-o", "json", "ca", "rotate", step]).await;
        assert!(out.status.success(), "{step}: {}", stderr(&out));
        let status: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(status["rotationPhase"], phase);
        assert_eq!(status["roots"].as_array().unwrap().len(), roots);
    }
    let out = palisade(Some(&cp), None, &["ca", "rotate", "finish"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("409"), "{}", stderr(&out));
    let out = palisade(Some(&cp), None, &["ca", "bundle"]).await;
    assert_eq!(stdout(&out).matches("BEGIN CERTIFICATE").count(), 1);
    cp.shutdown().await;
}

#[tokio::test]
async fn server_and_token_can_come_from_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(dir.path()).await;
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "server: http://{}\ntokenFile: {}\n",
            cp.admin_addr,
            cp.admin_token_path.display()
        ),
    )
    .unwrap();
    let run = |config: std::path::PathBuf| async move {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
            .args(["ca", "status", "-o", "json"])
            .env("PALISADE_CONFIG", config)
            .env_remove("PALISADE_SERVER")
            .env_remove("PALISADE_TOKEN")
            .env_remove("PALISADE_TOKEN_FILE")
            .output()
            .await
            .unwrap()
    };
    let out = run(config.clone()).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("palisade.local"));
    // Unknown keys are refused, as everywhere.
    std::fs::write(&config, "servr: http://x\n").unwrap();
    let out = run(config).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("servr"), "{}", stderr(&out));
    cp.shutdown().await;
}

#[tokio::test]
async fn inject_adds_the_sidecar_to_pod_templates_offline_and_only_once() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("app.yaml");
    std::fs::write(
        &manifests,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: { name: payments, namespace: shop }\n\
         spec:\n  selector: { matchLabels: { app: payments } }\n  template:\n    metadata: { labels: { app: payments } }\n\
         \x20   spec:\n      containers:\n        - name: web\n          image: registry.example/payments:1\n\
         \x20         ports: [ { name: http, containerPort: 8080 } ]\n\
         \x20         readinessProbe: { httpGet: { path: /ready, port: http } }\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: { name: payments, namespace: shop }\nspec: { ports: [ { port: 80 } ] }\n",
    )
    .unwrap();
    // No control plane: --server points nowhere and inject never calls it.
    let inject = async |file: &std::path::Path| {
        let args = [
            "inject",
            "-f",
            file.to_str().unwrap(),
            "--image",
            "palisade:test",
        ];
        palisade(None, Some("http://127.0.0.1:9".into()), &args).await
    };
    let out = inject(&manifests).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&stdout(&out)).unwrap();
    assert_eq!(docs.len(), 2);
    let pod = &docs[0]["spec"]["template"]["spec"];
    assert_eq!(pod["initContainers"][0]["name"], "palisade-init");
    assert_eq!(pod["initContainers"][1]["name"], "palisade-proxy");
    assert_eq!(pod["initContainers"][1]["image"], "palisade:test");
    assert_eq!(
        pod["containers"][0]["readinessProbe"]["httpGet"]["path"],
        "/app-health/web-ready"
    );
    assert_eq!(docs[1]["kind"], "Service");
    assert!(docs[1]["spec"].get("template").is_none());

    // The output injected again is the same output.
    let injected = dir.path().join("injected.yaml");
    std::fs::write(&injected, stdout(&out)).unwrap();
    let again = inject(&injected).await;
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(stdout(&again), stdout(&out));

    // Not manifests: a clear error, exit status 2.
    std::fs::write(&manifests, "kind: [unclosed").unwrap();
    let bad = inject(&manifests).await;
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(
        stderr(&bad).contains("not YAML or JSON manifests"),
        "{}",
        stderr(&bad)
    );
}

/// `palisade` with an explicit token (instead of the initial admin token's file).
async fn palisade_as(cp: &RunningControlPlane, token: &str, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_palisade"));
    cmd.args(["--server", &format!("http://{}", cp.admin_addr)])
        .args(args)
        .env("PALISADE_TOKEN", token)
        .env_remove("PALISADE_TOKEN_FILE");
    tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn admin_tokens_are_created_listed_revoked_and_checked_on_every_call() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(dir.path()).await;
    let create = |role: &'static str, name: &'static str| {
        let cp = &cp;
        async move {
            let out = palisade(
                Some(cp),
                None,
                &[
                    "admin-token",
                    "create",
                    "--role",
                    role,
                    "--name",
                    name,
                    "--ttl",
                    "2h",
                ],
            )
            .await;
            assert!(out.status.success(), "{}", stderr(&out));
            stdout(&out).trim().to_owned()
        }
    };
    let viewer = create("viewer", "ci-viewer").await;
    let ops = create("admin", "ops").await;
    // The new tokens work, for their role only.
    assert!(
        palisade_as(&cp, &viewer, &["ca", "status"])
            .await
            .status
            .success()
    );
    let out = palisade_as(
        &cp,
        &viewer,
        &["token", "create", "-n", "shop", "-s", "orders"],
    )
    .await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("role viewer may not do this"),
        "{}",
        stderr(&out)
    );
    // A name is unique among usable tokens; bad roles, names and lifetimes are refused.
    for (args, why) in [
        (vec!["--role", "viewer", "--name", "ci-viewer"], "exists"),
        (vec!["--role", "root", "--name", "x"], "is not viewer"),
        (
            vec!["--role", "viewer", "--name", "Not_A_Name"],
            "lower-case",
        ),
        (
            vec!["--role", "viewer", "--name", "y", "--ttl", "365d"],
            "lifetime",
        ),
    ] {
        let mut all = vec!["admin-token", "create"];
        all.extend(args);
        let out = palisade(Some(&cp), None, &all).await;
        assert!(!out.status.success(), "{all:?}");
        assert!(stderr(&out).contains(why), "{all:?}: {}", stderr(&out));
    }
    // The list shows ids and metadata, never a token.
    let out = palisade(Some(&cp), None, &["admin-token", "list", "-o", "json"]).await;
    let list = stdout(&out);
    let items: serde_json::Value = serde_json::from_str(&list).unwrap();
    let names: Vec<&str> = items["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 3, "{list}");
    for name in ["initial-admin", "ci-viewer", "ops"] {
        assert!(names.contains(&name), "{name} in {list}");
    }
    for token in [&viewer, &ops] {
        assert!(!list.contains(token.as_str()));
    }
    // Revoked by name: refused on the very next call.
    let out = palisade(Some(&cp), None, &["admin-token", "revoke", "ci-viewer"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("revoked ci-viewer"),
        "{}",
        stdout(&out)
    );
    let out = palisade_as(&cp, &viewer, &["ca", "status"]).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("revoked"), "{}", stderr(&out));
    let out = palisade(Some(&cp), None, &["admin-token", "revoke", "ci-viewer"]).await;
    assert!(!out.status.success(), "revoking twice is an error");
    // The initial token is retired the same way; the named admin token carries on.
    let out = palisade_as(&cp, &ops, &["admin-token", "revoke", "initial-admin"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !palisade(Some(&cp), None, &["ca", "status"])
            .await
            .status
            .success()
    );
    let out = palisade_as(&cp, &ops, &["audit", "-o", "json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let trail: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    // Newest first; read oldest first here.
    let steps: Vec<String> = trail
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .filter(|e| e["kind"] == "AdminToken")
        .map(|e| {
            format!(
                "{} {} {}",
                e["principal"].as_str().unwrap(),
                e["action"].as_str().unwrap(),
                e["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            "initial-admin created ci-viewer",
            "initial-admin created ops",
            "initial-admin revoked ci-viewer",
            "ops revoked initial-admin",
        ]
    );
    // Neither the API's answers nor the database hold a token.
    let mut db = std::fs::read(dir.path().join("data/palisade.db")).unwrap();
    db.extend(std::fs::read(dir.path().join("data/palisade.db-wal")).unwrap_or_default());
    let ids = items["items"][0]["id"]
        .as_str()
        .unwrap()
        .as_bytes()
        .to_vec();
    assert!(
        db.windows(ids.len()).any(|w| w == ids),
        "the ids are stored"
    );
    for token in [&viewer, &ops] {
        let needle = token.as_bytes();
        assert!(
            !db.windows(needle.len()).any(|w| w == needle),
            "a token was stored"
        );
    }
    cp.shutdown().await;
}

#[tokio::test]
async fn query_values_are_sent_as_one_value_however_they_are_spelled() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(dir.path()).await;
    // Something in the trail, by the initial admin.
    let out = palisade(
        Some(&cp),
        None,
        &["token", "create", "-n", "shop", "-s", "orders"],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    for principal in ["a&limit=1", "a#b", "a b", "initial-admin&kind=x", "%41"] {
        let out = palisade(
            Some(&cp),
            None,
            &["audit", "--principal", principal, "-o", "json"],
        )
        .await;
        assert!(out.status.success(), "{principal}: {}", stderr(&out));
        let trail: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(
            trail,
            serde_json::json!([]),
            "{principal}: no such principal"
        );
    }
    let out = palisade(
        Some(&cp),
        None,
        &["audit", "--principal", "initial-admin", "-o", "json"],
    )
    .await;
    let trail: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(trail.as_array().map(Vec::len), Some(1), "{trail}");
    cp.shutdown().await;
}
