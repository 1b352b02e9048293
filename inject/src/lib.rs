//! Sidecar injection for Kubernetes: what a pod gets so that it joins the mesh.
//!
//! One function, [`inject_pod`], turns a pod (or a workload's pod template) into the
//! injected one; the admission webhook ([`admission`]) answers the API server with the JSON
//! patch between the two, and `palisade inject -f` prints the injected manifests offline
//! (as `istioctl kube-inject` and `linkerd inject` do). Keeping one code path means the
//! offline result is exactly what the webhook would have done.
//!
//! What an injected pod gets:
//! - the `palisade-proxy` container: a native sidecar (an init container with
//!   `restartPolicy: Always`, started and ready before the application's containers and
//!   stopped after them) where the cluster supports it (Kubernetes 1.29+), else the first
//!   container of the pod; non-root (uid 1337), read-only root filesystem, no
//!   capabilities, requests and limits, probes on its admin port, and its thread count
//!   from its CPU limit (`PALISADE_PROXY_CORES`, as Linkerd's injector does);
//! - a projected ServiceAccount token with audience `palisade`, the sidecar's bootstrap
//!   credential; the trust bundle from the ConfigMap the control plane publishes; an
//!   in-memory volume for the key and certificate;
//! - the application's HTTP probes on its serving port rewritten to the sidecar's admin
//!   port (`/app-health/<container>-<probe>`), which asks the application: under default
//!   deny the kubelet, which has no mesh identity, could not reach the application
//!   through the inbound port;
//! - the `palisade-init` init container, first of all: it installs the transparent
//!   interception rules ([`iptables`]) and exits; inbound ports of probes that were not
//!   rewritten (the kubelet has no mesh identity) and the ports and CIDRs the pod's
//!   `palisade.dev/exclude-*` annotations list are left alone;
//! - with `palisade.dev/amqp-upstream`, the sidecar's AMQP proxy on loopback port
//!   [`AMQP_PORT`] and a rule sending the pod's connections to the broker's port there
//!   (the broker password, if any, from the Secret `palisade.dev/amqp-password-secret`);
//! - the sidecar's outbound policy (`palisade.dev/outbound-policy`, else the injector's);
//! - Prometheus scrape annotations for the sidecar's `/metrics` (unless the pod already
//!   has its own), the label `palisade.dev/sidecar: injected` (for PodMonitors), and
//!   `palisade.dev/status`, which makes injection idempotent.
//!
//! Not injected: pods annotated or labelled `palisade.dev/inject: "false"` (or
//! `disabled`), pods already injected, pods on the host network (a sidecar there would
//! capture the node's traffic).

pub mod admission;
pub mod iptables;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// Pod annotation (or label): `"false"` opts a pod out in a namespace where injection is
/// enabled.
pub const INJECT_ANNOTATION: &str = "palisade.dev/inject";
/// Namespace label that enables injection (the webhook's `namespaceSelector`).
pub const NAMESPACE_LABEL: &str = "palisade.dev/inject";
/// Set on injected pods: what was injected. Its presence means "do not inject again".
pub const STATUS_ANNOTATION: &str = "palisade.dev/status";
/// The sidecar container's name.
pub const PROXY_CONTAINER: &str = "palisade-proxy";
/// Pod label `injected` on every injected pod: what the PodMonitor in `k8s/monitoring`
/// selects (annotations cannot be selected on).
pub const SIDECAR_LABEL: &str = "palisade.dev/sidecar";
/// The init container that installs the interception rules.
pub const INIT_CONTAINER: &str = "palisade-init";
/// Pod annotations adding to what interception leaves alone (comma-separated), as Istio's
/// `traffic.sidecar.istio.io/exclude*`.
pub const EXCLUDE_INBOUND_PORTS: &str = "palisade.dev/exclude-inbound-ports";
pub const EXCLUDE_OUTBOUND_PORTS: &str = "palisade.dev/exclude-outbound-ports";
pub const EXCLUDE_OUTBOUND_CIDRS: &str = "palisade.dev/exclude-outbound-cidrs";
/// Pod annotation: the broker the application publishes to (`amqp://[USER@]HOST[:PORT]/VHOST`
/// or `amqps://`). The sidecar's AMQP proxy listens on [`AMQP_PORT`] and the pod's
/// connections to the broker's port are redirected to it, so every publish is authorized
/// without the application knowing.
pub const AMQP_UPSTREAM: &str = "palisade.dev/amqp-upstream";
/// Pod annotation: a Secret (key `password`) with the broker password for the sidecar,
/// kept out of the annotation and the environment.
pub const AMQP_PASSWORD_SECRET: &str = "palisade.dev/amqp-password-secret";
/// Pod annotation: the sidecar's outbound policy, `allow-any` (destinations outside the
/// registry are passed through) or `registry-only` (refused).
pub const OUTBOUND_POLICY: &str = "palisade.dev/outbound-policy";
/// The values [`OUTBOUND_POLICY`] and the injector's setting take.
pub const OUTBOUND_POLICIES: [&str; 2] = ["allow-any", "registry-only"];
/// The sidecar's AMQP listener in a pod (loopback).
pub const AMQP_PORT: u16 = 15007;
const AMQP_PASSWORD_DIR: &str = "/var/run/secrets/palisade-amqp";
const AMQP_PASSWORD_VOLUME: &str = "palisade-amqp-password";
/// The sidecar's user (and group): what interception will exclude from redirection.
pub const PROXY_UID: i64 = 1337;
/// The sidecar's ports inside the pod.
pub const INBOUND_PORT: u16 = 15006;
pub const OUTBOUND_PORT: u16 = 15001;
pub const ADMIN_PORT: u16 = 15090;
/// Where the sidecar finds what the pod's volumes bring.
pub const TOKEN_DIR: &str = "/var/run/secrets/palisade";
pub const BUNDLE_DIR: &str = "/var/run/palisade/bundle";
pub const IDENTITY_DIR: &str = "/var/run/palisade/identity";
/// The key of the trust-bundle ConfigMap that holds the PEM roots.
pub const BUNDLE_KEY: &str = "trust-bundle.pem";

/// Volume names (prefixed so they never collide with the application's).
const TOKEN_VOLUME: &str = "palisade-token";
const BUNDLE_VOLUME: &str = "palisade-trust-bundle";
const IDENTITY_VOLUME: &str = "palisade-identity";

/// What the injector puts in every pod; the control plane's flags (or the CLI's) set it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Settings {
    /// The image holding `palisade-proxy`.
    pub image: String,
    /// The control plane's sidecar-facing address, `host:port`.
    pub control_plane: String,
    pub trust_domain: String,
    /// The ConfigMap (in the pod's namespace) holding the trust bundle under
    /// [`BUNDLE_KEY`].
    pub trust_bundle_config_map: String,
    /// The audience of the projected bootstrap token (the control plane's
    /// `--k8s-audience`).
    pub token_audience: String,
    /// Inject a native sidecar (Kubernetes 1.29+) rather than a regular container.
    pub native_sidecar: bool,
    /// The sidecars' `--outbound-policy` (`allow-any` or `registry-only`) unless a pod's
    /// [`OUTBOUND_POLICY`] annotation says otherwise.
    pub outbound_policy: String,
    pub cpu_request: String,
    pub cpu_limit: String,
    pub memory_request: String,
    pub memory_limit: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            // The repository's Dockerfile, tagged with the release; push it where the
            // cluster pulls from and set the injector's image.
            image: format!("palisade:{}", env!("CARGO_PKG_VERSION")),
            control_plane: "palisade-control-plane.palisade-system.svc:15012".into(),
            trust_domain: "palisade.local".into(),
            trust_bundle_config_map: "palisade-trust-bundle".into(),
            token_audience: "palisade".into(),
            native_sidecar: true,
            outbound_policy: "allow-any".into(),
            cpu_request: "100m".into(),
            cpu_limit: "1".into(),
            memory_request: "32Mi".into(),
            memory_limit: "64Mi".into(),
        }
    }
}

/// What [`inject_pod`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The injected pod.
    Injected(Value),
    /// Left as it was, and why.
    Skipped(&'static str),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InjectError {
    #[error("not a pod: {0}")]
    NotAPod(&'static str),
    #[error("annotation {0}: {1}")]
    BadAnnotation(&'static str, String),
}

/// The pod (`{metadata, spec}`: a Pod or a pod template) with the sidecar injected.
pub fn inject_pod(pod: &Value, settings: &Settings) -> Result<Outcome, InjectError> {
    let spec = pod
        .get("spec")
        .and_then(Value::as_object)
        .ok_or(InjectError::NotAPod("no spec"))?;
    let containers = spec
        .get("containers")
        .and_then(Value::as_array)
        .filter(|c| !c.is_empty())
        .ok_or(InjectError::NotAPod("no containers"))?;
    let annotation = |name: &str| {
        pod.pointer("/metadata/annotations")
            .and_then(|a| a.get(name))
            .and_then(Value::as_str)
    };
    // The label as well as the annotation (as Istio's sidecar.istio.io/inject): the webhook
    // configuration's objectSelector uses the label to skip the call altogether, and
    // `palisade inject` must agree with a webhook that was never called.
    let opted_out = |v: &str| v.eq_ignore_ascii_case("false") || v == "disabled";
    if annotation(INJECT_ANNOTATION).is_some_and(opted_out) {
        return Ok(Outcome::Skipped(
            "opted out by the palisade.dev/inject annotation",
        ));
    }
    let label = pod
        .pointer("/metadata/labels")
        .and_then(|l| l.get(INJECT_ANNOTATION))
        .and_then(Value::as_str);
    if label.is_some_and(opted_out) {
        return Ok(Outcome::Skipped(
            "opted out by the palisade.dev/inject label",
        ));
    }
    let named_proxy = |list: Option<&Value>| {
        list.and_then(Value::as_array).is_some_and(|l| {
            l.iter()
                .any(|c| c.get("name").and_then(Value::as_str) == Some(PROXY_CONTAINER))
        })
    };
    if annotation(STATUS_ANNOTATION).is_some()
        || named_proxy(spec.get("containers"))
        || named_proxy(spec.get("initContainers"))
    {
        return Ok(Outcome::Skipped("already injected"));
    }
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Ok(Outcome::Skipped("the pod uses the host network"));
    }

    let list = |name: &'static str| -> Vec<String> {
        annotation(name)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let ports = |name: &'static str| -> Result<Vec<u16>, InjectError> {
        list(name)
            .iter()
            .map(|p| {
                p.parse::<u16>()
                    .map_err(|_| InjectError::BadAnnotation(name, format!("{p:?} is not a port")))
            })
            .collect()
    };
    let mut interception = iptables::Interception {
        exclude_inbound_ports: ports(EXCLUDE_INBOUND_PORTS)?,
        exclude_outbound_ports: ports(EXCLUDE_OUTBOUND_PORTS)?,
        exclude_outbound_cidrs: list(EXCLUDE_OUTBOUND_CIDRS),
        ..iptables::Interception::default()
    };
    interception
        .check()
        .map_err(|e| InjectError::BadAnnotation(EXCLUDE_OUTBOUND_CIDRS, e.to_string()))?;
    let amqp = match annotation(AMQP_UPSTREAM) {
        Some(url) => {
            let broker = palisade_contract::amqp_url::AmqpUrl::parse(url).map_err(|why| {
                InjectError::BadAnnotation(AMQP_UPSTREAM, format!("{url:?} {why}"))
            })?;
            interception.amqp = Some((broker.port, AMQP_PORT));
            Some(Amqp {
                upstream: url.to_owned(),
                password_secret: annotation(AMQP_PASSWORD_SECRET).map(str::to_owned),
            })
        }
        None if annotation(AMQP_PASSWORD_SECRET).is_some() => {
            return Err(InjectError::BadAnnotation(
                AMQP_PASSWORD_SECRET,
                format!("needs {AMQP_UPSTREAM}"),
            ));
        }
        None => None,
    };

    let outbound_policy = annotation(OUTBOUND_POLICY).unwrap_or(&settings.outbound_policy);
    if !OUTBOUND_POLICIES.contains(&outbound_policy) {
        return Err(InjectError::BadAnnotation(
            OUTBOUND_POLICY,
            format!("{outbound_policy:?} is not allow-any or registry-only"),
        ));
    }

    let mut out = pod.clone();
    let app_port = app_port(containers);
    // Probes first (they name the application containers), then the sidecar.
    let mut probes = Vec::new();
    if let Some(list) = out
        .pointer_mut("/spec/containers")
        .and_then(Value::as_array_mut)
    {
        for container in list {
            if let Some(port) = app_port {
                probes.extend(rewrite_probes(container, port));
            }
            // What the kubelet still probes directly must not be redirected.
            interception
                .exclude_inbound_ports
                .extend(direct_probe_ports(container));
        }
    }
    let proxy = proxy_container(settings, app_port, &probes, amqp.as_ref(), outbound_policy);
    let init = init_container(settings, &interception);
    let spec = out["spec"].as_object_mut().expect("checked above");
    // The interception rules go in first of all, then (native) the sidecar: any init
    // container after them already has the mesh.
    let inits = array_field(spec, "initContainers");
    inits.insert(0, init);
    if settings.native_sidecar {
        inits.insert(1, proxy);
    } else {
        // First container: the kubelet starts containers in order.
        let list = array_field(spec, "containers");
        list.insert(0, proxy);
    }
    let volumes = array_field(spec, "volumes");
    volumes.extend(pod_volumes(settings));
    if let Some(secret) = amqp.as_ref().and_then(|a| a.password_secret.as_ref()) {
        volumes.push(json!({
            "name": AMQP_PASSWORD_VOLUME,
            "secret": { "secretName": secret, "items": [ { "key": "password", "path": "password" } ] }
        }));
    }

    let metadata = out
        .as_object_mut()
        .expect("a pod is an object")
        .entry("metadata")
        .or_insert_with(|| json!({}));
    let metadata = metadata
        .as_object_mut()
        .ok_or(InjectError::NotAPod("metadata is not an object"))?;
    metadata
        .entry("labels")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or(InjectError::NotAPod("labels are not an object"))?
        .insert(SIDECAR_LABEL.into(), json!("injected"));
    let annotations = metadata
        .entry("annotations")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or(InjectError::NotAPod("annotations are not an object"))?;
    if !annotations.keys().any(|k| k.starts_with("prometheus.io/")) {
        annotations.insert("prometheus.io/scrape".into(), json!("true"));
        annotations.insert("prometheus.io/port".into(), json!(ADMIN_PORT.to_string()));
        annotations.insert("prometheus.io/path".into(), json!("/metrics"));
    }
    annotations.insert(
        STATUS_ANNOTATION.into(),
        json!(
            json!({
                "version": env!("CARGO_PKG_VERSION"),
                "container": PROXY_CONTAINER,
                "nativeSidecar": settings.native_sidecar,
                "probes": probes.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            })
            .to_string()
        ),
    );
    Ok(Outcome::Injected(out))
}

/// The array `name` of `spec`, created empty if absent (or not an array).
fn array_field<'a>(spec: &'a mut Map<String, Value>, name: &str) -> &'a mut Vec<Value> {
    let v = spec.entry(name).or_insert_with(|| json!([]));
    if !v.is_array() {
        *v = json!([]);
    }
    v.as_array_mut().expect("made an array")
}

/// The port the inbound sidecar forwards to: the first TCP `containerPort` of the first
/// container that declares one.
fn app_port(containers: &[Value]) -> Option<u16> {
    containers.iter().find_map(|c| {
        c.get("ports")?.as_array()?.iter().find_map(|p| {
            let tcp = p
                .get("protocol")
                .and_then(Value::as_str)
                .is_none_or(|proto| proto == "TCP");
            tcp.then(|| p.get("containerPort")?.as_u64()?.try_into().ok())
                .flatten()
        })
    })
}

/// Rewrites `container`'s HTTP probes aimed at `app_port` to the sidecar's admin port;
/// returns each as (name, original path) for the sidecar's `--app-probe`. A probe's port
/// may be a number or the name of one of the container's ports. Probes on other ports,
/// TCP, gRPC, exec and HTTPS probes are left as they are.
fn rewrite_probes(container: &mut Value, app_port: u16) -> Vec<(String, String)> {
    let name = container
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("app")
        .to_owned();
    let ports = container.get("ports").cloned().unwrap_or(Value::Null);
    let resolve = |port: &Value| resolve_port(&ports, port);
    let mut rewritten = Vec::new();
    for (kind, short) in [
        ("livenessProbe", "live"),
        ("readinessProbe", "ready"),
        ("startupProbe", "startup"),
    ] {
        let Some(get) = container.get_mut(kind).and_then(|p| p.get_mut("httpGet")) else {
            continue;
        };
        let https = get
            .get("scheme")
            .and_then(Value::as_str)
            .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"));
        if https || get.get("port").and_then(resolve) != Some(app_port) {
            continue;
        }
        let path = get
            .get("path")
            .and_then(Value::as_str)
            .unwrap_or("/")
            .to_owned();
        let probe = format!("{name}-{short}");
        get["path"] = json!(format!("/app-health/{probe}"));
        get["port"] = json!(ADMIN_PORT);
        rewritten.push((probe, path));
    }
    rewritten
}

/// The ports of `container`'s probes that still go straight to the application (those
/// [`rewrite_probes`] left alone): HTTP(S) on another port, TCP and gRPC probes.
fn direct_probe_ports(container: &Value) -> Vec<u16> {
    let ports = container.get("ports").cloned().unwrap_or(Value::Null);
    let mut out = Vec::new();
    for kind in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let Some(probe) = container.get(kind) else {
            continue;
        };
        for handler in ["httpGet", "tcpSocket", "grpc"] {
            let port = probe
                .get(handler)
                .and_then(|h| h.get("port"))
                .and_then(|p| resolve_port(&ports, p));
            // A rewritten probe points at the admin port, which is never redirected.
            if let Some(p) = port.filter(|p| *p != ADMIN_PORT) {
                out.push(p);
            }
        }
    }
    out
}

/// A probe's port: a number, or the name of one of the container's `ports`.
fn resolve_port(ports: &Value, port: &Value) -> Option<u16> {
    match port {
        Value::Number(n) => n.as_u64().and_then(|n| n.try_into().ok()),
        Value::String(s) => s.parse().ok().or_else(|| {
            ports.as_array()?.iter().find_map(|p| {
                (p.get("name").and_then(Value::as_str) == Some(s.as_str()))
                    .then(|| p.get("containerPort")?.as_u64()?.try_into().ok())
                    .flatten()
            })
        }),
        _ => None,
    }
}

fn init_container(settings: &Settings, interception: &iptables::Interception) -> Value {
    json!({
        "name": INIT_CONTAINER,
        "image": settings.image,
        "command": [INIT_CONTAINER],
        "args": interception.args(),
        "resources": {
            "requests": { "cpu": "10m", "memory": "10Mi" },
            "limits": { "cpu": "100m", "memory": "32Mi" },
        },
        // iptables needs root and NET_ADMIN/NET_RAW in the pod's network namespace; this
        // container runs for a moment before anything else and nothing else gets them.
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": false,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": { "add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"] },
        },
    })
}

/// The pod's broker, from its annotations.
struct Amqp {
    upstream: String,
    password_secret: Option<String>,
}

fn env(name: &str, value: impl Into<String>) -> Value {
    json!({ "name": name, "value": value.into() })
}

fn proxy_container(
    settings: &Settings,
    app_port: Option<u16>,
    probes: &[(String, String)],
    amqp: Option<&Amqp>,
    outbound_policy: &str,
) -> Value {
    let mut envs = vec![
        env("PALISADE_CONTROL_PLANE", &settings.control_plane),
        env("PALISADE_TRUST_DOMAIN", &settings.trust_domain),
        env("PALISADE_CA_BUNDLE", format!("{BUNDLE_DIR}/{BUNDLE_KEY}")),
        env("PALISADE_TOKEN_FILE", format!("{TOKEN_DIR}/token")),
        env("PALISADE_IDENTITY_DIR", IDENTITY_DIR),
        env("PALISADE_ADMIN_LISTEN", format!("0.0.0.0:{ADMIN_PORT}")),
        env("PALISADE_INBOUND_LISTEN", format!("0.0.0.0:{INBOUND_PORT}")),
        env(
            "PALISADE_OUTBOUND_LISTEN",
            format!("127.0.0.1:{OUTBOUND_PORT}"),
        ),
        env("PALISADE_LOG_FORMAT", "json"),
        env("PALISADE_OUTBOUND_POLICY", outbound_policy),
        // Whole CPUs of the container's limit, rounded up (at least 1).
        json!({
            "name": "PALISADE_PROXY_CORES",
            "valueFrom": { "resourceFieldRef": { "containerName": PROXY_CONTAINER, "resource": "limits.cpu", "divisor": "1" } }
        }),
    ];
    if let Some(port) = app_port {
        envs.push(env("PALISADE_APP", format!("127.0.0.1:{port}")));
    }
    if !probes.is_empty() {
        let list: Vec<String> = probes.iter().map(|(n, p)| format!("{n}={p}")).collect();
        envs.push(env("PALISADE_APP_PROBES", list.join(",")));
    }
    let mut mounts = vec![
        json!({ "name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true }),
        json!({ "name": BUNDLE_VOLUME, "mountPath": BUNDLE_DIR, "readOnly": true }),
        json!({ "name": IDENTITY_VOLUME, "mountPath": IDENTITY_DIR }),
    ];
    if let Some(amqp) = amqp {
        envs.push(env(
            "PALISADE_AMQP_LISTEN",
            format!("127.0.0.1:{AMQP_PORT}"),
        ));
        envs.push(env("PALISADE_AMQP_UPSTREAM", &amqp.upstream));
        if amqp.password_secret.is_some() {
            envs.push(env(
                "PALISADE_AMQP_PASSWORD_FILE",
                format!("{AMQP_PASSWORD_DIR}/password"),
            ));
            mounts.push(json!({ "name": AMQP_PASSWORD_VOLUME, "mountPath": AMQP_PASSWORD_DIR, "readOnly": true }));
        }
    }
    let probe =
        |path: &str| json!({ "httpGet": { "path": path, "port": ADMIN_PORT }, "periodSeconds": 5 });
    let mut container = json!({
        "name": PROXY_CONTAINER,
        "image": settings.image,
        "command": ["palisade-proxy"],
        "env": envs,
        "ports": [
            { "name": "palisade-in", "containerPort": INBOUND_PORT, "protocol": "TCP" },
            { "name": "palisade-admin", "containerPort": ADMIN_PORT, "protocol": "TCP" },
        ],
        "readinessProbe": probe("/ready"),
        "livenessProbe": probe("/live"),
        // The application starts only once the sidecar has its certificate.
        "startupProbe": { "httpGet": { "path": "/ready", "port": ADMIN_PORT }, "periodSeconds": 1, "failureThreshold": 120 },
        "resources": {
            "requests": { "cpu": settings.cpu_request, "memory": settings.memory_request },
            "limits": { "cpu": settings.cpu_limit, "memory": settings.memory_limit },
        },
        "securityContext": {
            "runAsUser": PROXY_UID,
            "runAsGroup": PROXY_UID,
            "runAsNonRoot": true,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": { "drop": ["ALL"] },
            "seccompProfile": { "type": "RuntimeDefault" },
        },
        "volumeMounts": mounts,
    });
    if settings.native_sidecar {
        container["restartPolicy"] = json!("Always");
    }
    container
}

fn pod_volumes(settings: &Settings) -> Vec<Value> {
    vec![
        json!({
            "name": TOKEN_VOLUME,
            "projected": { "sources": [ { "serviceAccountToken": {
                "audience": settings.token_audience, "expirationSeconds": 3600, "path": "token"
            } } ] }
        }),
        json!({
            "name": BUNDLE_VOLUME,
            "configMap": { "name": settings.trust_bundle_config_map, "items": [ { "key": BUNDLE_KEY, "path": BUNDLE_KEY } ] }
        }),
        json!({ "name": IDENTITY_VOLUME, "emptyDir": { "medium": "Memory", "sizeLimit": "1Mi" } }),
    ]
}

/// The pod templates inside a Kubernetes object, by JSON pointer: the object itself for a
/// Pod, `spec.template` for workloads, `spec.jobTemplate.spec.template` for a CronJob;
/// nothing for other kinds.
pub fn pod_template_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// `palisade inject`: the object with its pod (template) injected; other kinds, and pods
/// the injector skips, come back unchanged.
pub fn inject_object(object: &Value, settings: &Settings) -> Result<Value, InjectError> {
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
    let Some(pointer) = pod_template_pointer(kind) else {
        return Ok(object.clone());
    };
    let Some(pod) = object.pointer(pointer) else {
        return Err(InjectError::NotAPod("the workload has no pod template"));
    };
    match inject_pod(pod, settings)? {
        Outcome::Skipped(_) => Ok(object.clone()),
        Outcome::Injected(injected) => {
            let mut out = object.clone();
            if pointer.is_empty() {
                out = injected;
            } else if let Some(slot) = out.pointer_mut(pointer) {
                *slot = injected;
            }
            Ok(out)
        }
    }
}
