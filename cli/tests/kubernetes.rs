//! The manifests in `k8s/`, checked as far as a machine without a cluster can:
//! - every kustomization renders (`kubectl kustomize`) and the result validates against
//!   the Kubernetes schemas, strictly, for 1.29 (the oldest with native sidecars) and the
//!   newest the validator knows (`kubernetes-validate`, installed by `scripts/services`);
//!   so do the shop's manifests after `palisade inject`, i.e. what the webhook admits;
//! - the control plane's Deployment parses with the binary's own flags, and the ports,
//!   probes, Service, webhook configuration, RBAC names, image and injection settings in
//!   the manifests agree with what those flags make it do;
//! - the shop's policy Job, run with its own command line against a control plane
//!   configured as the manifest configures it, applies the shop's policies.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::{CommandFactory, Parser};
use serde_json::{Value, json};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// Every directory under `k8s/` holding a kustomization.
fn kustomizations() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.file_name().unwrap() == "kustomization.yaml" {
                out.push(dir.to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join("k8s"), &mut out);
    out.sort();
    out
}

fn tool(name: &str) -> String {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{name} is needed to check k8s/ (scripts/services installs kubernetes-validate; \
         kubectl provides kustomize)"
    );
    name.to_owned()
}

/// `kubectl kustomize DIR`, as text.
fn render(dir: &Path) -> String {
    let out = Command::new(tool("kubectl"))
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple(yaml).expect("rendered manifests are YAML")
}

fn rendered(dir: &str) -> Vec<Value> {
    documents(&render(&root().join(dir)))
}

/// Strict schema validation of `yaml` for 1.29 and the newest known version.
fn validate(what: &str, yaml: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("manifests.yaml");
    std::fs::write(&file, yaml).unwrap();
    for version in [Some("1.29.0"), None] {
        let mut cmd = Command::new(tool("kubernetes-validate"));
        cmd.args(["--strict", "--quiet"]);
        if let Some(v) = version {
            cmd.args(["-k", v]);
        }
        let out = cmd.arg(&file).output().unwrap();
        let report = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !report.contains("ERROR"),
            "{what} ({}) does not validate:\n{report}",
            version.unwrap_or("newest")
        );
    }
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// Pod specs of every workload in `docs`, by workload name.
fn pod_specs(docs: &[Value]) -> Vec<(String, &Value)> {
    docs.iter()
        .filter_map(|d| {
            let spec = match d["kind"].as_str()? {
                "Deployment" | "StatefulSet" | "DaemonSet" | "Job" => {
                    &d["spec"]["template"]["spec"]
                }
                "Pod" => &d["spec"],
                _ => return None,
            };
            Some((d["metadata"]["name"].as_str()?.to_owned(), spec))
        })
        .collect()
}

#[test]
fn every_kustomization_renders_and_validates_against_the_kubernetes_schemas() {
    let dirs = kustomizations();
    assert!(dirs.len() >= 4, "{dirs:?}");
    for dir in &dirs {
        validate(&dir.display().to_string(), &render(dir));
    }
    // What the webhook would admit: the shop injected, by the same code.
    let shop = render(&root().join("k8s/examples/shop"));
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &shop).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["inject", "--image", "palisade:0.1.0", "-f"])
        .arg(file.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let injected = String::from_utf8(out.stdout).unwrap();
    validate("the shop, injected", &injected);
    let docs = documents(&injected);
    for (name, spec) in pod_specs(&docs) {
        let has_sidecar = spec["initContainers"].as_array().is_some_and(|l| {
            l.iter()
                .any(|c| c["name"] == palisade_inject::PROXY_CONTAINER)
        });
        // The broker and the policy Job opt out; every shop workload is meshed.
        let opted_out = ["rabbitmq", "mesh-config"].contains(&name.as_str());
        assert_eq!(has_sidecar, !opted_out, "{name}");
    }
}

/// The container's command line with its environment turned into the flags clap reads
/// those variables for (values from the downward API or Secrets get `placeholder`).
fn command_line(
    container: &Value,
    command: &clap::Command,
    placeholder: impl Fn(&str) -> String,
) -> Vec<String> {
    let mut args: Vec<String> = container["command"]
        .as_array()
        .unwrap()
        .iter()
        .chain(container["args"].as_array().into_iter().flatten())
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    for env in container["env"].as_array().into_iter().flatten() {
        let name = env["name"].as_str().unwrap();
        let arg = command
            .get_arguments()
            .find(|a| a.get_env().and_then(|e| e.to_str()) == Some(name))
            .unwrap_or_else(|| panic!("{} has no flag for {name}", command.get_name()));
        let value = env["value"]
            .as_str()
            .map_or_else(|| placeholder(name), str::to_owned);
        args.push(format!("--{}={value}", arg.get_long().unwrap()));
    }
    args
}

fn control_plane_config(docs: &[Value]) -> (palisade_control_plane::Config, Value) {
    let deployment = find(docs, "Deployment", "palisade-control-plane");
    let container = deployment["spec"]["template"]["spec"]["containers"][0].clone();
    assert_eq!(container["command"], json!(["palisade-control-plane"]));
    let args = command_line(
        &container,
        &palisade_control_plane::Config::command(),
        |name| match name {
            "PALISADE_K8S_NAMESPACE" => "palisade-system".into(),
            "PALISADE_DATABASE_URL" => "postgres://palisade@db/palisade".into(),
            other => panic!("no placeholder for {other}"),
        },
    );
    let config = palisade_control_plane::Config::try_parse_from(&args)
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    (config, container)
}

#[test]
fn the_control_planes_manifests_agree_with_its_flags() {
    for overlay in [
        "k8s/control-plane",
        "k8s/overlays/postgres",
        "k8s/overlays/envelope",
        "k8s/overlays/pkcs11",
    ] {
        let docs = rendered(overlay);
        let (config, container) = control_plane_config(&docs);
        let port_of = |name: &Value| -> u16 {
            match name {
                Value::Number(n) => n.as_u64().unwrap() as u16,
                Value::String(s) => container["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|p| p["name"] == s.as_str())
                    .unwrap_or_else(|| panic!("{overlay}: no container port named {s}"))
                    ["containerPort"]
                    .as_u64()
                    .unwrap() as u16,
                other => panic!("{overlay}: port {other}"),
            }
        };
        // The declared ports are exactly the listeners.
        let mut declared: Vec<u16> = container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["containerPort"].as_u64().unwrap() as u16)
            .collect();
        declared.sort_unstable();
        let webhook = config.webhook_listen.expect("the injector is served");
        let mut listening = vec![
            config.sidecar_listen.port(),
            config.admin_listen.port(),
            config.metrics_listen.port(),
            webhook.port(),
        ];
        listening.sort_unstable();
        assert_eq!(declared, listening, "{overlay}");
        for addr in [
            config.sidecar_listen,
            config.admin_listen,
            config.metrics_listen,
            webhook,
        ] {
            assert!(
                addr.ip().is_unspecified(),
                "{overlay}: {addr} is unreachable from the Service"
            );
        }
        // Probes: the admin port's real endpoints, over TLS when the admin API is.
        for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
            let get = &container[probe]["httpGet"];
            assert_eq!(get["path"], path, "{overlay} {probe}");
            assert_eq!(
                port_of(&get["port"]),
                config.admin_listen.port(),
                "{overlay} {probe}"
            );
            assert_eq!(
                get["scheme"] == "HTTPS",
                config.admin_tls,
                "{overlay} {probe}: scheme follows --admin-tls"
            );
        }
        // An envelope overlay reads its KEK, a pkcs11 overlay its PIN, from a mounted
        // Secret outside the data dir; the module is mounted too.
        use palisade_control_plane::keys::KeySource;
        let source = config.ca_key_source;
        assert_eq!(
            source == KeySource::Envelope,
            overlay.ends_with("envelope"),
            "{overlay}"
        );
        assert_eq!(
            source == KeySource::Pkcs11,
            overlay.ends_with("pkcs11"),
            "{overlay}"
        );
        assert_eq!(config.token_key_source, source, "{overlay}");
        let pod = &find(&docs, "Deployment", "palisade-control-plane")["spec"]["template"]["spec"];
        let volume_of = |file: &std::path::Path| -> Value {
            assert!(!file.starts_with(&config.data_dir), "{overlay}");
            let mount = container["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| file.starts_with(m["mountPath"].as_str().unwrap()))
                .unwrap_or_else(|| panic!("{overlay}: {} is not mounted", file.display()));
            pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == mount["name"])
                .unwrap()
                .clone()
        };
        let secrets = [&config.key_encryption_key_file, &config.pkcs11_pin_file];
        for file in secrets.into_iter().flatten() {
            let volume = volume_of(file);
            assert!(
                volume["secret"]["secretName"].is_string(),
                "{overlay}: {volume}"
            );
        }
        if source == KeySource::Pkcs11 {
            assert!(
                config.token_settings().is_some(),
                "{overlay}: the token's settings"
            );
            let module = config.pkcs11_module.as_ref().unwrap();
            assert!(
                volume_of(module)["hostPath"]["path"].is_string(),
                "{overlay}"
            );
        }
        // The Service routes to the listeners, and pods reach the sidecar port at the
        // address the injector gives them.
        let service = find(&docs, "Service", "palisade-control-plane");
        let svc_ns = service["metadata"]["namespace"].as_str().unwrap();
        let svc_host = format!("palisade-control-plane.{svc_ns}.svc");
        let service_port = |target: u16| -> u64 {
            service["spec"]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| port_of(&p["targetPort"]) == target)
                .unwrap_or_else(|| panic!("{overlay}: the Service has no port for {target}"))
                ["port"]
                .as_u64()
                .unwrap()
        };
        for p in &listening {
            service_port(*p);
        }
        assert_eq!(
            config.inject_control_plane,
            format!("{svc_host}:{}", service_port(config.sidecar_listen.port()))
        );
        // The webhook configuration calls the webhook where it listens, by a name its
        // certificate carries, and is the one whose caBundle the control plane keeps.
        let hook_config = docs
            .iter()
            .find(|d| d["kind"] == "MutatingWebhookConfiguration")
            .unwrap();
        assert_eq!(
            config.k8s_webhook_config.as_deref(),
            hook_config["metadata"]["name"].as_str()
        );
        let hook = &hook_config["webhooks"][0];
        let called = &hook["clientConfig"]["service"];
        assert_eq!(called["name"], "palisade-control-plane");
        assert_eq!(called["namespace"], svc_ns);
        assert_eq!(called["path"], "/inject");
        assert_eq!(
            called["port"].as_u64().unwrap(),
            service_port(webhook.port())
        );
        assert!(config.webhook_dns_name.contains(&svc_host), "{overlay}");
        assert_eq!(hook["failurePolicy"], "Fail");
        // Pods opted out by label are not even sent (the injector would skip them too).
        let skip = &hook["objectSelector"]["matchExpressions"][0];
        assert_eq!(skip["key"], palisade_inject::INJECT_ANNOTATION);
        assert_eq!(skip["operator"], "NotIn");
        assert!(skip["values"].as_array().unwrap().contains(&json!("false")));
        assert_eq!(
            hook["namespaceSelector"]["matchLabels"][palisade_inject::NAMESPACE_LABEL],
            "enabled"
        );
        // RBAC grants the names the flags write, to the account the pod runs as.
        let pod = &find(&docs, "Deployment", "palisade-control-plane")["spec"]["template"]["spec"];
        let account = pod["serviceAccountName"].as_str().unwrap();
        let granted = |kind: &str, resource: &str, verb: &str| -> Vec<String> {
            docs.iter()
                .filter(|d| d["kind"] == kind)
                .flat_map(|d| d["rules"].as_array().unwrap().iter())
                .filter(|r| {
                    r["resources"]
                        .as_array()
                        .unwrap()
                        .contains(&json!(resource))
                        && r["verbs"].as_array().unwrap().contains(&json!(verb))
                })
                .flat_map(|r| {
                    r["resourceNames"]
                        .as_array()
                        .map_or(vec!["*".to_owned()], |n| {
                            n.iter().map(|v| v.as_str().unwrap().to_owned()).collect()
                        })
                })
                .collect()
        };
        assert_eq!(
            granted("ClusterRole", "configmaps", "update"),
            [config.k8s_trust_bundle_config_map.as_str()]
        );
        assert_eq!(
            granted("ClusterRole", "configmaps", "get"),
            [config.k8s_trust_bundle_config_map.as_str()]
        );
        assert_eq!(granted("ClusterRole", "configmaps", "create"), ["*"]);
        assert!(
            granted("ClusterRole", "configmaps", "list").is_empty(),
            "no reading every ConfigMap in the cluster"
        );
        assert_eq!(granted("ClusterRole", "namespaces", "list"), ["*"]);
        assert_eq!(
            granted("ClusterRole", "mutatingwebhookconfigurations", "update"),
            [config.k8s_webhook_config.as_deref().unwrap()]
        );
        assert_eq!(
            granted("Role", "secrets", "get"),
            [config.k8s_ca_secret.as_deref().unwrap()]
        );
        assert!(
            granted("ClusterRole", "secrets", "get").is_empty(),
            "no Secrets cluster-wide"
        );
        for binding in docs
            .iter()
            .filter(|d| d["kind"] == "RoleBinding" || d["kind"] == "ClusterRoleBinding")
        {
            assert_eq!(binding["subjects"][0]["name"], account);
            assert_eq!(binding["subjects"][0]["namespace"], svc_ns);
        }
        assert_eq!(config.k8s_namespace, svc_ns);
        // One image, the one the injector gives sidecars by default.
        let image = palisade_inject::Settings::default().image;
        assert_eq!(container["image"], image.as_str());
        assert_eq!(config.inject_image, image);
        // Several replicas share PostgreSQL; one replica keeps SQLite on its volume.
        let replicas = find(&docs, "Deployment", "palisade-control-plane")["spec"]["replicas"]
            .as_u64()
            .unwrap();
        assert_eq!(replicas > 1, config.database_url.is_some(), "{overlay}");
        if replicas > 1 {
            assert!(pod["affinity"]["podAntiAffinity"].is_object(), "{overlay}");
        }
    }
}

#[test]
fn monitors_scrape_ports_that_exist_and_the_dashboard_uses_real_metrics() {
    let docs = rendered("k8s/monitoring");
    let pod_monitor = find(&docs, "PodMonitor", "palisade-sidecars");
    assert_eq!(
        pod_monitor["spec"]["selector"]["matchLabels"][palisade_inject::SIDECAR_LABEL],
        "injected"
    );
    // The port name is the injected sidecar's.
    let pod =
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "app", "image": "x"}]}});
    let palisade_inject::Outcome::Injected(injected) =
        palisade_inject::inject_pod(&pod, &palisade_inject::Settings::default()).unwrap()
    else {
        panic!("not injected")
    };
    let proxy = injected["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == palisade_inject::PROXY_CONTAINER)
        .unwrap();
    let port = &pod_monitor["spec"]["podMetricsEndpoints"][0]["port"];
    assert!(
        proxy["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| &p["name"] == port),
        "{port} is not a port of the sidecar"
    );
    let cp = rendered("k8s/control-plane");
    let service = find(&cp, "Service", "palisade-control-plane");
    let sm_port =
        &find(&docs, "ServiceMonitor", "palisade-control-plane")["spec"]["endpoints"][0]["port"];
    assert!(
        service["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| &p["name"] == sm_port),
        "{sm_port} is not a port of the control plane's Service"
    );
    // Every metric the dashboard and the alerts query is one the binaries register.
    fn rust_sources(dir: &std::path::Path, out: &mut String) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut sources = String::new();
    for d in ["proxy/src", "control-plane/src"] {
        rust_sources(&root().join(d), &mut sources);
    }
    let dashboard =
        std::fs::read_to_string(root().join("k8s/monitoring/grafana-dashboard.json")).unwrap();
    let dashboard_json: Value = serde_json::from_str(&dashboard).unwrap();
    assert!(dashboard_json["panels"].as_array().unwrap().len() >= 8);
    let alerts = std::fs::read_to_string(root().join("k8s/monitoring/alerts.yaml")).unwrap();
    let mut names: Vec<String> = Vec::new();
    for text in [&dashboard, &alerts] {
        for (i, _) in text.match_indices("palisade_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let base = name.strip_suffix("_bucket").unwrap_or(&name).to_owned();
            if !names.contains(&base) && base != "palisade_" {
                names.push(base);
            }
        }
    }
    assert!(names.len() >= 10, "{names:?}");
    for name in &names {
        assert!(
            sources.contains(&format!("\"{name}\"")),
            "{name} is not a metric the proxy or control plane registers"
        );
    }
    for topic in [
        "palisade_proxy_http_requests_total",
        "palisade_proxy_authz_decisions_total",
        "palisade_proxy_amqp_operations_total",
        "palisade_identity_certificate_expiry_timestamp_seconds",
    ] {
        assert!(
            names.iter().any(|n| n == topic),
            "the dashboard lacks {topic}"
        );
    }
}

#[tokio::test]
async fn the_shop_policy_job_applies_the_shop_policies_with_its_own_command() {
    let cp_docs = rendered("k8s/control-plane");
    let (manifest, _) = control_plane_config(&cp_docs);
    let shop = rendered("k8s/examples/shop");
    let job = find(&shop, "Job", "mesh-config");
    let pod = &job["spec"]["template"]["spec"];
    let account = pod["serviceAccountName"].as_str().unwrap();
    let shop_ns = job["metadata"]["namespace"].as_str().unwrap();
    // The control plane as the manifest sets up its admin API, with a test cluster's keys.
    let issuer = palisade_contract::jwt::testing::TestIssuer::new("k1");
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, issuer.jwks.to_string()).unwrap();
    let mut config = palisade_control_plane::Config::for_data_dir(dir.path().join("cp"));
    config.trust_domain = manifest.trust_domain.clone();
    config.admin_tls = manifest.admin_tls;
    config.admin_k8s_service_account = manifest.admin_k8s_service_account.clone();
    config.admin_k8s_audience = manifest.admin_k8s_audience.clone();
    config.k8s_issuer = manifest.k8s_issuer.clone();
    config.k8s_jwks = Some(jwks);
    let cp = palisade_control_plane::start(&config).await.unwrap();

    // The Job's projected token: its audience, its account.
    let volumes = pod["volumes"].as_array().unwrap();
    let projected = volumes
        .iter()
        .find_map(|v| v["projected"]["sources"][0]["serviceAccountToken"].as_object())
        .expect("a projected token");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "aud": [projected["audience"]], "exp": now + 600, "iat": now, "nbf": now,
        "iss": manifest.k8s_issuer.as_deref().unwrap(),
        "sub": format!("system:serviceaccount:{shop_ns}:{account}"),
        "kubernetes.io": {"namespace": shop_ns, "serviceaccount": {"name": account, "uid": "u"}},
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("k1".into());
    let token = dir.path().join("token");
    std::fs::write(
        &token,
        jsonwebtoken::encode(&header, &claims, &issuer.key).unwrap(),
    )
    .unwrap();

    // The Job's command, with its mounts' files from here and the control plane's address.
    let container = &pod["containers"][0];
    let mounts = container["volumeMounts"].as_array().unwrap();
    let mount_of = |volume: &str| -> String {
        mounts.iter().find(|m| m["name"] == volume).unwrap()["mountPath"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let volume_of = |pred: &dyn Fn(&Value) -> bool| -> String {
        volumes.iter().find(|v| pred(v)).unwrap()["name"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let bundle_volume =
        volume_of(&|v| v["configMap"]["name"] == manifest.k8s_trust_bundle_config_map.as_str());
    let mesh_volume = volume_of(&|v| {
        v["configMap"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("shop-mesh"))
    });
    let token_volume = volume_of(&|v| v["projected"].is_object());
    let local = [
        (
            format!(
                "{}/{}",
                mount_of(&bundle_volume),
                palisade_inject::BUNDLE_KEY
            ),
            dir.path().join("cp/trust-bundle.pem"),
        ),
        (
            format!("{}/mesh.yaml", mount_of(&mesh_volume)),
            root().join("k8s/examples/shop/mesh.yaml"),
        ),
        (format!("{}/token", mount_of(&token_volume)), token.clone()),
    ];
    let mut args: Vec<String> = Vec::new();
    for arg in container["command"].as_array().unwrap().iter().skip(1) {
        let mut arg = arg.as_str().unwrap().to_owned();
        if let Some(server) = arg.strip_prefix("--server=") {
            assert_eq!(
                server,
                format!(
                    "https://palisade-control-plane.palisade-system.svc:{}",
                    manifest.admin_listen.port()
                )
            );
            arg = format!("--server=https://{}", cp.admin_addr);
        }
        for (in_pod, here) in &local {
            arg = arg.replace(in_pod.as_str(), &here.display().to_string());
        }
        args.push(arg);
    }
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(&args)
        .env_remove("PALISADE_CONFIG")
        .env("HOME", dir.path())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The shop's policies and services are in the store, recorded as the Job's account.
    let admin = cp.admin_token().unwrap();
    let list = tokio::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args([
            "--server",
            &format!("https://{}", cp.admin_addr),
            "--trust-domain",
        ])
        .arg(manifest.trust_domain.to_string())
        .arg("--ca-bundle")
        .arg(dir.path().join("cp/trust-bundle.pem"))
        .args(["--token", &admin, "audit", "-o", "json"])
        .env("HOME", dir.path())
        .output()
        .await
        .unwrap();
    let trail = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    assert!(
        trail.contains(&format!("k8s:{shop_ns}/{account}")),
        "{trail}"
    );
    for name in [
        "payments-charge",
        "orders-publish",
        "inventory-consume",
        "rogue-audit",
    ] {
        assert!(trail.contains(name), "{name} was not applied: {trail}");
    }
    cp.shutdown().await;
}

#[test]
fn the_clusters_shop_policies_are_the_demos_with_the_clusters_trust_domain() {
    let demo = std::fs::read_to_string(root().join("examples/shop/policies.yaml")).unwrap();
    let cluster = std::fs::read_to_string(root().join("k8s/examples/shop/mesh.yaml")).unwrap();
    let policies = |text: &str| -> Vec<Value> {
        documents(text)
            .into_iter()
            .filter(|d| d["kind"] == "AuthorizationPolicy")
            .collect()
    };
    let expected = policies(&demo.replace("spiffe://palisade.local/", "spiffe://cluster.local/"));
    assert_eq!(expected.len(), 4);
    assert_eq!(
        policies(&cluster),
        expected,
        "k8s/examples/shop/mesh.yaml drifted from the demo's policies"
    );
    // Services without endpoints (interception finds them), one per serving workload.
    let services: Vec<Value> = documents(&cluster)
        .into_iter()
        .filter(|d| d["kind"] == "Service")
        .collect();
    assert_eq!(services.len(), 3);
    assert!(
        services
            .iter()
            .all(|s| s["spec"].get("endpoints").is_none())
    );
}
