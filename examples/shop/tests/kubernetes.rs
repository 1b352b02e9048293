//! The shop's Kubernetes manifests (`k8s/examples/shop`) run these binaries: every
//! `palisade-shop` command line there parses with the binary's own flags, and the
//! addresses the applications and their sidecars are given are Services the manifests
//! define, on the ports those Services serve. (Rendering and schema validation of the
//! whole directory are in `cli/tests/kubernetes.rs`.)

mod support;

use std::path::Path;

use serde_json::Value;

fn manifests() -> Vec<Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../k8s/examples/shop");
    let mut docs = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap();
        if name.ends_with(".yaml") && name != "kustomization.yaml" && name != "mesh.yaml" {
            let text = std::fs::read_to_string(&path).unwrap();
            let parsed: Vec<Value> =
                serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            docs.extend(parsed);
        }
    }
    docs
}

/// `host:port` is a Service of the shop namespace serving `port`.
fn is_service(docs: &[Value], address: &str) {
    let (host, port) = address.rsplit_once(':').expect("host:port");
    let name = host
        .strip_suffix(".shop.svc.cluster.local")
        .unwrap_or_else(|| panic!("{address} is not a shop Service's name"));
    let service = docs
        .iter()
        .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no Service {name}"));
    assert!(
        service["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["port"].as_u64().map(|p| p.to_string()).as_deref() == Some(port)),
        "Service {name} does not serve {port}"
    );
}

#[test]
fn every_shop_command_parses_and_names_services_that_exist() {
    let docs = manifests();
    let mut checked = 0;
    for doc in &docs {
        let template = &doc["spec"]["template"];
        let Some(containers) = template["spec"]["containers"].as_array() else {
            continue;
        };
        for container in containers {
            let command: Vec<String> = container["command"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| a.as_str().unwrap().to_owned())
                .collect();
            if command.first().map(String::as_str) != Some("palisade-shop") {
                continue;
            }
            support::check_shop_args(&command[1..], &format!("{command:?}"));
            for arg in &command {
                for flag in ["--sidecar-http=", "--sidecar-amqp=", "--payments-inbound="] {
                    if let Some(address) = arg.strip_prefix(flag) {
                        is_service(&docs, address);
                    }
                }
                // Applications listen on loopback only: nothing reaches them but the sidecar.
                if let Some(listen) = arg.strip_prefix("--listen=") {
                    assert!(listen.starts_with("127.0.0.1:"), "{command:?}");
                }
            }
            // A pod that speaks AMQP has its sidecar's AMQP proxy, towards a real Service.
            if command.iter().any(|a| a.starts_with("--sidecar-amqp=")) {
                let upstream = template["metadata"]["annotations"]["palisade.dev/amqp-upstream"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{command:?}: no palisade.dev/amqp-upstream"));
                let address = upstream
                    .trim_start_matches("amqp://")
                    .split('/')
                    .next()
                    .unwrap()
                    .rsplit('@')
                    .next()
                    .unwrap();
                is_service(&docs, address);
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 4, "payments, orders, inventory and rogue");
}
