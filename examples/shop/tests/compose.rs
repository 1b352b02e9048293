//! This machine has no Docker engine, so the compose file is checked for what can be checked
//! here: it parses, every command line parses with the real binaries' own flag definitions,
//! every file it mounts exists, references between services resolve, published ports are
//! listened on, and the control plane loads the same policy file the local demo applies.
//! Where `docker` is installed, `docker compose config` validates it too.

mod support;

use std::path::Path;

use clap::Parser as _;
use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .parent()
        .unwrap()
}

fn compose() -> Value {
    let text = std::fs::read_to_string(root().join("examples/docker-compose.yml")).unwrap();
    serde_saphyr::from_str(&text).expect("docker-compose.yml is valid YAML")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_command_parses_with_the_binaries_own_flags() {
    let compose = compose();
    let services = compose["services"].as_object().expect("services");
    let mut checked = 0;
    for (name, svc) in services {
        let command = strings(&svc["command"]);
        let Some(binary) = command.first() else {
            continue;
        };
        match binary.as_str() {
            "palisade-control-plane" => {
                let c = palisade_control_plane::Config::try_parse_from(&command)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(
                    c.config_file
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>(),
                    ["/config/policies.yaml", "/config/registry.compose.yaml"],
                    "the control plane loads the demo's policy file"
                );
            }
            "palisade-proxy" => {
                palisade_proxy::Config::try_parse_from(&command)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            "palisade-shop" => support::check_shop_args(&command[1..], name),
            // The token job runs the CLI from a shell.
            other => assert!(
                strings(&svc["entrypoint"]).first().map(String::as_str) == Some("sh")
                    && other.contains("palisade --server"),
                "{name}: unexpected command {command:?}"
            ),
        }
        checked += 1;
    }
    assert_eq!(
        checked, 10,
        "control plane, tokens, and four sidecars with their apps"
    );
}

#[test]
fn references_mounts_and_ports_resolve() {
    let compose = compose();
    let services = compose["services"].as_object().unwrap();
    let examples = root().join("examples");
    for (name, svc) in services {
        // Images: ours are built from the repository's Dockerfile; the broker is upstream's.
        match svc["image"].as_str() {
            Some("palisade:dev") => {
                assert_eq!(svc["build"]["dockerfile"], "Dockerfile", "{name}");
                let context = examples.join(svc["build"]["context"].as_str().unwrap());
                assert!(
                    context.join("Dockerfile").is_file(),
                    "{name}: no Dockerfile"
                );
            }
            Some(image) => assert!(image.starts_with("rabbitmq:"), "{name}: image {image}"),
            None => panic!("{name} has no image"),
        }
        for volume in strings(&svc["volumes"]) {
            let source = volume.split(':').next().unwrap();
            if source.starts_with('.') {
                assert!(
                    examples.join(source).exists(),
                    "{name}: {source} does not exist"
                );
            } else {
                assert!(
                    compose["volumes"].get(source).is_some(),
                    "{name}: volume {source}"
                );
            }
        }
        let deps: Vec<String> = match &svc["depends_on"] {
            Value::Array(_) => strings(&svc["depends_on"]),
            Value::Object(m) => m.keys().cloned().collect(),
            _ => Vec::new(),
        };
        for dep in deps {
            assert!(
                services.contains_key(&dep),
                "{name} depends on unknown {dep}"
            );
        }
        if let Some(mode) = svc["network_mode"].as_str() {
            let target = mode.strip_prefix("service:").expect("service:NAME");
            assert!(services.contains_key(target), "{name}: {mode}");
        }
        // A published port is one something in this network namespace listens on.
        for port in strings(&svc["ports"]) {
            let container = port.rsplit(':').next().unwrap();
            let listeners: Vec<String> = services
                .iter()
                .filter(|(other, o)| {
                    *other == name || o["network_mode"].as_str() == Some(&format!("service:{name}"))
                })
                .flat_map(|(_, o)| strings(&o["command"]))
                .collect();
            assert!(
                listeners
                    .iter()
                    .any(|a| a.ends_with(&format!(":{container}"))),
                "{name}: nothing listens on {container}"
            );
        }
    }
    // The local demo applies the same policy file.
    let demo = std::fs::read_to_string(root().join("scripts/demo")).unwrap();
    assert!(demo.contains("examples/shop/policies.yaml"));
}

#[test]
fn docker_compose_config_accepts_it_where_docker_exists() {
    let compose_available = std::process::Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !compose_available {
        eprintln!("docker compose is not installed here; the other tests check what they can");
        return;
    }
    let Ok(out) = std::process::Command::new("docker")
        .args(["compose", "-f"])
        .arg(root().join("examples/docker-compose.yml"))
        .args(["config", "-q"])
        .output()
    else {
        eprintln!("docker is not installed here; the other tests check what they can");
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
