//! The webhook's answer to AdmissionReviews shaped as the API server sends them (a pod
//! created by a ReplicaSet, with the defaults and the ServiceAccount volume the API server
//! fills in before mutating webhooks run): the returned JSON patch, applied to the pod,
//! must give the injected spec.

use base64::Engine;
use clap::{CommandFactory, Parser};
use palisade_inject::admission::{ReviewError, respond};
use palisade_inject::{INIT_CONTAINER, PROXY_CONTAINER, Settings, inject_object};
use serde_json::{Value, json};

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// (response, the pod after its patch, if there was one).
fn review(review: &Value) -> (Value, Option<Value>) {
    let out = respond(review, &Settings::default()).unwrap();
    assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(out["kind"], "AdmissionReview");
    let response = out["response"].clone();
    assert_eq!(
        response["uid"], review["request"]["uid"],
        "the uid is echoed"
    );
    let patched = response["patch"].as_str().map(|b64| {
        assert_eq!(response["patchType"], "JSONPatch");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        let mut pod = review["request"]["object"].clone();
        json_patch::patch(&mut pod, &patch).expect("the patch applies to the pod as sent");
        pod
    });
    (response, patched)
}

/// The init container called `name`.
fn init<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no init container {name}"))
}

fn env_of(container: &Value) -> Vec<(String, Value)> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e.get("value").cloned().unwrap_or(Value::Null),
            )
        })
        .collect()
}

fn env(container: &Value, name: &str) -> Option<String> {
    env_of(container)
        .into_iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.as_str().map(str::to_owned))
}

#[test]
fn a_plain_pod_gets_the_native_sidecar_its_volumes_and_annotations() {
    let input = fixture("plain-pod.json");
    let (response, pod) = review(&input);
    assert_eq!(response["allowed"], true);
    let pod = pod.expect("a patch");
    let original = &input["request"]["object"];

    // The application's containers are untouched.
    assert_eq!(pod["spec"]["containers"], original["spec"]["containers"]);
    // First the interception step (root with NET_ADMIN, for a moment), then the sidecar:
    // native (restartPolicy Always), hardened.
    let inits = pod["spec"]["initContainers"].as_array().unwrap();
    assert_eq!(inits[0]["name"], INIT_CONTAINER);
    assert_eq!(inits[0]["command"], json!(["palisade-init"]));
    assert_eq!(
        inits[0]["securityContext"]["capabilities"]["add"],
        json!(["NET_ADMIN", "NET_RAW"])
    );
    assert!(inits[0].get("restartPolicy").is_none(), "runs once");
    let proxy = &inits[1];
    assert_eq!(proxy["name"], PROXY_CONTAINER);
    assert_eq!(proxy["restartPolicy"], "Always");
    assert_eq!(proxy["securityContext"]["runAsUser"], 1337);
    assert_eq!(proxy["securityContext"]["runAsNonRoot"], true);
    assert_eq!(proxy["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        proxy["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
    assert!(proxy["resources"]["limits"]["memory"].is_string());
    assert_eq!(proxy["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(proxy["livenessProbe"]["httpGet"]["path"], "/live");
    assert_eq!(
        env(proxy, "PALISADE_APP").as_deref(),
        Some("127.0.0.1:8080"),
        "the inbound sidecar forwards to the declared port"
    );
    assert_eq!(
        env(proxy, "PALISADE_TOKEN_FILE").as_deref(),
        Some("/var/run/secrets/palisade/token")
    );
    // Bootstrap token (audience palisade), trust bundle, identity; the API server's own
    // ServiceAccount volume kept.
    let volumes = pod["spec"]["volumes"].as_array().unwrap();
    let names: Vec<&str> = volumes
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "kube-api-access-7xq2k",
            "palisade-token",
            "palisade-trust-bundle",
            "palisade-identity"
        ]
    );
    assert_eq!(
        volumes[1]["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "palisade"
    );
    assert_eq!(volumes[2]["configMap"]["name"], "palisade-trust-bundle");
    for mount in proxy["volumeMounts"].as_array().unwrap() {
        assert!(
            names.contains(&mount["name"].as_str().unwrap()),
            "{mount} has its volume"
        );
    }
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "15090");
    assert_eq!(
        pod["metadata"]["labels"]["palisade.dev/sidecar"], "injected",
        "the label PodMonitors select on"
    );
    let status: Value =
        serde_json::from_str(annotations["palisade.dev/status"].as_str().unwrap()).unwrap();
    assert_eq!(status["container"], PROXY_CONTAINER);

    // Injecting the injected pod again changes nothing (the API server may call twice).
    let mut again = input.clone();
    again["request"]["object"] = pod;
    let (response, patch) = review(&again);
    assert_eq!(response["allowed"], true);
    assert!(patch.is_none(), "no second sidecar");
    assert_eq!(
        response["auditAnnotations"]["palisade.dev/injection"],
        "already injected"
    );
}

#[test]
fn an_opted_out_pod_and_an_injected_one_are_admitted_unchanged() {
    for (file, why) in [
        (
            "opted-out-pod.json",
            "opted out by the palisade.dev/inject annotation",
        ),
        ("already-injected-pod.json", "already injected"),
    ] {
        let (response, patch) = review(&fixture(file));
        assert_eq!(response["allowed"], true, "{file}");
        assert!(patch.is_none(), "{file}: no patch");
        assert_eq!(response["auditAnnotations"]["palisade.dev/injection"], why);
    }
    // The label the webhook configuration's objectSelector uses opts out too, so that
    // `palisade inject` agrees with a webhook that was never called.
    let mut labelled = fixture("plain-pod.json");
    labelled["request"]["object"]["metadata"]["labels"] = json!({ "palisade.dev/inject": "false" });
    let (response, patch) = review(&labelled);
    assert!(patch.is_none());
    assert_eq!(
        response["auditAnnotations"]["palisade.dev/injection"],
        "opted out by the palisade.dev/inject label"
    );
}

#[test]
fn http_probes_on_the_serving_port_go_through_the_sidecar_by_number_or_port_name() {
    let input = fixture("probes-and-named-ports-pod.json");
    let (_, pod) = review(&input);
    let pod = pod.expect("a patch");
    let web = &pod["spec"]["containers"][0];
    let original = &input["request"]["object"]["spec"]["containers"][0];
    // Liveness named its port ("http" = 8080), readiness gave the number: both rewritten,
    // their timings kept.
    assert_eq!(
        web["livenessProbe"]["httpGet"],
        json!({ "path": "/app-health/web-live", "port": 15090, "scheme": "HTTP" })
    );
    assert_eq!(web["livenessProbe"]["initialDelaySeconds"], 3);
    assert_eq!(
        web["readinessProbe"]["httpGet"]["path"],
        "/app-health/web-ready"
    );
    assert_eq!(
        web["readinessProbe"]["periodSeconds"],
        original["readinessProbe"]["periodSeconds"]
    );
    // The startup probe is on the "metrics" port (9090), not the serving port: unchanged.
    assert_eq!(web["startupProbe"], original["startupProbe"]);
    // A TCP probe of another container: unchanged.
    assert_eq!(
        pod["spec"]["containers"][1],
        input["request"]["object"]["spec"]["containers"][1]
    );
    // The sidecar asks the application at the original paths.
    let proxy = init(&pod, PROXY_CONTAINER);
    assert_eq!(
        env(proxy, "PALISADE_APP_PROBES").as_deref(),
        Some("web-live=/healthz,web-ready=/ready?full=1")
    );
    assert_eq!(
        env(proxy, "PALISADE_APP").as_deref(),
        Some("127.0.0.1:8080")
    );
    // What the kubelet still probes directly (the startup probe on "metrics" = 9090, the
    // cache's TCP probe on "redis" = 6379) is left out of interception; the rewritten
    // probes go to the admin port, which interception never touches.
    let init_args = &init(&pod, INIT_CONTAINER)["args"];
    assert!(
        init_args
            .as_array()
            .unwrap()
            .contains(&json!("--exclude-inbound-ports=9090,6379")),
        "{init_args}"
    );
}

#[test]
fn the_init_steps_arguments_are_palisade_inits_and_the_pods_exclusions_reach_it() {
    let mut input = fixture("plain-pod.json");
    input["request"]["object"]["metadata"]["annotations"] = json!({
        "palisade.dev/exclude-outbound-ports": "5432, 6379",
        "palisade.dev/exclude-outbound-cidrs": "169.254.169.254/32",
        "palisade.dev/exclude-inbound-ports": "9000",
    });
    let (_, pod) = review(&input);
    let pod = pod.unwrap();
    let args: Vec<String> = init(&pod, INIT_CONTAINER)["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    // The binary itself accepts them and prints the rules they mean.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_palisade-init"))
        .args(&args)
        .arg("--dry-run")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rules = String::from_utf8(out.stdout).unwrap();
    for line in [
        "-A PALISADE_INBOUND -p tcp --dport 9000 -j RETURN",
        "-A PALISADE_OUTPUT -p tcp --dport 5432 -j RETURN",
        "-A PALISADE_OUTPUT -p tcp --dport 6379 -j RETURN",
        "-A PALISADE_OUTPUT -d 169.254.169.254/32 -j RETURN",
        "-A PALISADE_OUTPUT -m owner --uid-owner 1337 -j RETURN",
    ] {
        assert!(
            rules.lines().any(|l| l == line),
            "{line} missing from\n{rules}"
        );
    }
    // A bad annotation refuses the pod with the reason rather than guessing.
    input["request"]["object"]["metadata"]["annotations"] =
        json!({ "palisade.dev/exclude-outbound-cidrs": "10.0.0.0" });
    let (response, patch) = review(&input);
    assert!(patch.is_none());
    assert_eq!(response["allowed"], false);
    assert!(
        response["status"]["message"]
            .as_str()
            .unwrap()
            .contains("palisade.dev/exclude-outbound-cidrs"),
        "{response}"
    );
}

#[test]
fn a_pod_with_a_broker_gets_the_amqp_proxy_and_its_connections_redirected_to_it() {
    let mut input = fixture("plain-pod.json");
    input["request"]["object"]["metadata"]["annotations"] = json!({
        "palisade.dev/amqp-upstream": "amqp://shop@rabbitmq.shop.svc.cluster.local:5673/%2f",
        "palisade.dev/amqp-password-secret": "shop-broker",
    });
    let (_, pod) = review(&input);
    let pod = pod.unwrap();
    let proxy = init(&pod, "palisade-proxy");
    assert_eq!(
        env(proxy, "PALISADE_AMQP_UPSTREAM").as_deref(),
        Some("amqp://shop@rabbitmq.shop.svc.cluster.local:5673/%2f")
    );
    assert_eq!(
        env(proxy, "PALISADE_AMQP_LISTEN").as_deref(),
        Some("127.0.0.1:15007")
    );
    let password_file = env(proxy, "PALISADE_AMQP_PASSWORD_FILE").unwrap();
    let mount = proxy["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "palisade-amqp-password")
        .expect("the password Secret is mounted");
    assert!(password_file.starts_with(mount["mountPath"].as_str().unwrap()));
    let volume = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "palisade-amqp-password")
        .unwrap();
    assert_eq!(volume["secret"]["secretName"], "shop-broker");
    // The broker's port (from the URL) goes to the sidecar's AMQP listener.
    let args = init(&pod, INIT_CONTAINER)["args"]
        .as_array()
        .unwrap()
        .clone();
    assert!(args.contains(&json!("--amqp=5673:15007")), "{args:?}");

    // Without a port the scheme's default; a URL that is not AMQP refuses the pod.
    for (url, arg) in [
        ("amqp://rabbitmq/%2f", "--amqp=5672:15007"),
        ("amqps://rabbitmq.example", "--amqp=5671:15007"),
    ] {
        input["request"]["object"]["metadata"]["annotations"] =
            json!({ "palisade.dev/amqp-upstream": url });
        let pod = review(&input).1.unwrap();
        let args = init(&pod, INIT_CONTAINER)["args"]
            .as_array()
            .unwrap()
            .clone();
        assert!(args.contains(&json!(arg)), "{url}: {args:?}");
    }
    for (annotations, expected) in [
        (
            json!({ "palisade.dev/amqp-upstream": "http://rabbitmq" }),
            "is not an amqp://",
        ),
        (
            json!({ "palisade.dev/amqp-upstream": "amqp://rabbitmq:0/" }),
            "bad port",
        ),
        (
            json!({ "palisade.dev/amqp-password-secret": "s" }),
            "needs palisade.dev/amqp-upstream",
        ),
    ] {
        input["request"]["object"]["metadata"]["annotations"] = annotations;
        let (response, patch) = review(&input);
        assert!(patch.is_none());
        let message = response["status"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{message}");
    }
}

#[test]
fn the_outbound_policy_comes_from_the_injector_or_the_pods_annotation() {
    let mut input = fixture("plain-pod.json");
    let (_, pod) = review(&input);
    let policy = |pod: &Value| env(init(pod, "palisade-proxy"), "PALISADE_OUTBOUND_POLICY");
    assert_eq!(policy(&pod.unwrap()).as_deref(), Some("allow-any"));
    input["request"]["object"]["metadata"]["annotations"] =
        json!({ "palisade.dev/outbound-policy": "registry-only" });
    let (_, pod) = review(&input);
    assert_eq!(policy(&pod.unwrap()).as_deref(), Some("registry-only"));
    let strict = palisade_inject::Settings {
        outbound_policy: "registry-only".into(),
        ..palisade_inject::Settings::default()
    };
    let plain = fixture("plain-pod.json")["request"]["object"].clone();
    let palisade_inject::Outcome::Injected(pod) =
        palisade_inject::inject_pod(&plain, &strict).unwrap()
    else {
        panic!("not injected")
    };
    assert_eq!(policy(&pod).as_deref(), Some("registry-only"));
    input["request"]["object"]["metadata"]["annotations"] =
        json!({ "palisade.dev/outbound-policy": "deny-some" });
    let (response, patch) = review(&input);
    assert!(patch.is_none());
    assert!(
        response["status"]["message"]
            .as_str()
            .unwrap()
            .contains("is not allow-any or registry-only"),
        "{response}"
    );
}

#[test]
fn what_cannot_be_injected_is_refused_and_what_is_not_a_review_is_an_error() {
    // A pod without containers would run outside the mesh: refused, with the reason.
    let mut input = fixture("plain-pod.json");
    input["request"]["object"]["spec"]["containers"] = json!([]);
    let (response, patch) = review(&input);
    assert_eq!(response["allowed"], false);
    assert!(patch.is_none());
    assert_eq!(response["status"]["code"], 400);
    assert!(
        response["status"]["message"]
            .as_str()
            .unwrap()
            .contains("no containers"),
        "{response}"
    );
    // Updates and other kinds are not mutated.
    let mut update = fixture("plain-pod.json");
    update["request"]["operation"] = json!("UPDATE");
    assert!(review(&update).1.is_none());
    // Not an AdmissionReview at all.
    for bad in [
        json!({}),
        json!({ "apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": { "uid": "x" } }),
        json!({ "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {} }),
    ] {
        assert_eq!(
            respond(&bad, &Settings::default()),
            Err(ReviewError::NotAReview),
            "{bad}"
        );
    }
}

#[test]
fn every_variable_the_sidecar_gets_is_a_flag_of_palisade_proxy_and_parses() {
    let mut input = fixture("probes-and-named-ports-pod.json");
    // With the AMQP annotations too, so their variables are checked as well.
    let annotations = input["request"]["object"]["metadata"]
        .as_object_mut()
        .unwrap()
        .entry("annotations")
        .or_insert_with(|| json!({}));
    annotations["palisade.dev/amqp-upstream"] = json!("amqp://rabbitmq:5672/%2f");
    annotations["palisade.dev/amqp-password-secret"] = json!("broker");
    let (_, pod) = review(&input);
    let pod = pod.unwrap();
    let proxy = init(&pod, PROXY_CONTAINER);
    assert_eq!(proxy["command"], json!(["palisade-proxy"]));
    let command = palisade_proxy::Config::command();
    let mut args = vec!["palisade-proxy".to_owned()];
    for (name, value) in env_of(proxy) {
        let arg = command
            .get_arguments()
            .find(|a| a.get_env().and_then(|e| e.to_str()) == Some(name.as_str()))
            .unwrap_or_else(|| panic!("palisade-proxy has no flag for {name}"));
        // Values from the downward API (the CPU limit) are whole numbers at run time.
        let value = value.as_str().map_or("1".to_owned(), str::to_owned);
        args.push(format!("--{}", arg.get_long().unwrap()));
        args.push(value);
    }
    let config =
        palisade_proxy::Config::try_parse_from(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert_eq!(config.app.port(), 8080);
    assert_eq!(config.admin_listen.port(), palisade_inject::ADMIN_PORT);
    assert_eq!(config.inbound_listen.port(), palisade_inject::INBOUND_PORT);
    assert_eq!(config.app_probe.len(), 2);
    assert_eq!(
        config.amqp_listen.map(|a| a.port()),
        Some(palisade_inject::AMQP_PORT)
    );
    // The ports the container declares are the ones the flags bind.
    let ports: Vec<u64> = proxy["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_u64().unwrap())
        .collect();
    assert_eq!(
        ports,
        [
            u64::from(config.inbound_listen.port()),
            u64::from(config.admin_listen.port())
        ]
    );
}

#[test]
fn workloads_get_their_pod_template_injected_and_other_kinds_pass_through() {
    let pod = fixture("plain-pod.json")["request"]["object"].clone();
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": "payments", "namespace": "shop" },
        "spec": { "replicas": 2, "selector": { "matchLabels": { "app": "payments" } },
                  "template": { "metadata": { "labels": { "app": "payments" } }, "spec": pod["spec"].clone() } }
    });
    let out = inject_object(&deployment, &Settings::default()).unwrap();
    assert_eq!(
        out["spec"]["template"]["spec"]["initContainers"][1]["name"],
        PROXY_CONTAINER
    );
    assert_eq!(out["spec"]["replicas"], 2);
    assert_eq!(inject_object(&out, &Settings::default()).unwrap(), out);
    let service = json!({ "apiVersion": "v1", "kind": "Service", "metadata": { "name": "payments" }, "spec": {} });
    assert_eq!(
        inject_object(&service, &Settings::default()).unwrap(),
        service
    );
    // Without native sidecars, the proxy is the first container.
    let settings = Settings {
        native_sidecar: false,
        ..Settings::default()
    };
    let out = inject_object(&deployment, &settings).unwrap();
    let containers = &out["spec"]["template"]["spec"]["containers"];
    assert_eq!(containers[0]["name"], PROXY_CONTAINER);
    assert!(containers[0].get("restartPolicy").is_none());
    assert_eq!(
        out["spec"]["template"]["spec"]["initContainers"][0]["name"],
        INIT_CONTAINER
    );
    assert_eq!(containers[1]["name"], "web");
}
