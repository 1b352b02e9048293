//! `palisade-bench run`: the scenarios in order over one mesh started once (`setup.rs`):
//! policy evaluation (`policy_eval.rs`), HTTP and footprint (`http.rs`),
//! AMQP publishes (`amqp_publish.rs`), issuance, propagation (`propagation.rs`); then the
//! report with the targets judged (`Report`, `finish`).

mod amqp_publish;
mod decision_log;
mod http;
mod policy_eval;
mod propagation;
mod setup;

use crate::load::{Proto, percentile};
use crate::mesh::{Procs, free_addr, memory, wait_status};
use crate::run::amqp_publish::amqp_scenario;
use crate::run::http::HttpPath;
use crate::run::propagation::propagation_scenario;
use crate::run::setup::{Mesh, sidecar_tls, write_policy};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub(crate) struct Settings {
    /// Where the palisade binaries are (target/release).
    #[arg(long)]
    pub(crate) bin_dir: PathBuf,
    /// Where results.md and results.json go.
    #[arg(long, default_value = "bench-results")]
    pub(crate) out: PathBuf,
    /// A moment per scenario (for CI); the numbers mean nothing.
    #[arg(long)]
    pub(crate) smoke: bool,
    /// Connections for the throughput runs.
    #[arg(long, default_value_t = 32)]
    pub(crate) concurrency: usize,
    /// Offered rate for the latency runs (requests per second).
    #[arg(long, default_value_t = 2000)]
    pub(crate) rate: u64,
    /// The broker for the AMQP scenario.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub(crate) broker: String,
    /// Run only these scenarios (comma-separated: eval, decisions, http1, http2, amqp,
    /// issuance, propagation), for investigating one; a published run runs them all.
    #[arg(long, value_delimiter = ',')]
    pub(crate) only: Vec<String>,
    /// Decisions stored in the central decision-log scenario (each backend).
    #[arg(long, default_value_t = 400_000)]
    pub(crate) decision_rows: usize,
    /// Fill the decision store up to this many rows (untimed, older than the timed ones,
    /// spread over the last day) before the queries run; default: only the timed rows.
    /// The query target is 10 million.
    #[arg(long)]
    pub(crate) decision_query_rows: Option<usize>,
    /// Give every sidecar a --decision-dir (the durable, signed decision log), to measure
    /// what it costs against a run without.
    #[arg(long)]
    pub(crate) decision_log: bool,
    /// With `--decision-log`: where the sidecars ship it (`control-plane`, the default, to
    /// the control plane on this same machine, whose collector then competes for its two
    /// cores; or `off`, the spool alone, as when the collector runs elsewhere).
    #[arg(long, default_value = "control-plane", value_parser = ["control-plane", "off"])]
    pub(crate) decision_ship: String,
    /// Run the sidecars under valgrind's callgrind and report instructions per request in
    /// each sidecar for the HTTP scenarios (Palisade's path) and per message in each
    /// publisher's sidecar for AMQP; the run's seconds then mean nothing, so throughput,
    /// latency, the footprint and the other paths are left out. Use with `--only`.
    #[arg(long)]
    pub(crate) callgrind: bool,
}

impl Settings {
    pub(crate) fn runs(&self, scenario: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == scenario)
    }

    /// Interleaved rounds of each throughput measurement (the median is reported).
    pub(crate) fn rounds(&self) -> usize {
        if self.smoke { 1 } else { 3 }
    }

    /// Length of one `--callgrind` round (a sidecar under valgrind serves some hundreds of
    /// requests a second).
    pub(crate) fn callgrind_round(&self) -> Duration {
        Duration::from_secs(if self.smoke { 1 } else { 10 })
    }

    /// Length of one throughput round.
    pub(crate) fn round_time(&self) -> Duration {
        if self.smoke {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(5)
        }
    }
}

/// The results as they are measured: a Markdown report, the same figures as JSON, and the
/// verdict on each target.
#[derive(Default)]
pub(crate) struct Report {
    pub(crate) md: String,
    pub(crate) results: Vec<Value>,
    pub(crate) targets: Vec<(String, bool, String)>,
}

impl Report {
    pub(crate) fn target(&mut self, what: &str, met: bool, detail: String) {
        self.targets.push((what.to_owned(), met, detail));
    }
}

pub(crate) fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "–".into()
    }
}

/// "lowest–highest" of a set of rounds.
pub(crate) fn spread(values: &[f64]) -> String {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(0.0, f64::max);
    format!("{lo:.0}–{hi:.0}")
}

/// The median (NaN when empty; NaN values sort last).
pub(crate) fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(|a, b| a.total_cmp(b));
    percentile(&v, 0.5)
}

pub(crate) async fn run(s: Settings) -> anyhow::Result<()> {
    let dur = if s.smoke {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(10)
    };
    let rate = if s.smoke { s.rate.min(200) } else { s.rate };
    let work = std::env::temp_dir().join(format!("palisade-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let mut procs = Procs(Vec::new());
    let me = std::env::current_exe()?;
    let mut r = Report::default();

    // 5. Policy evaluation, in process.
    policy_eval::scenario(&s, &mut r);
    // 8. The central decision log (collector ingest, queries) and the spool, in process.
    if s.runs("decisions") {
        decision_log::scenario(&s, &mut r).await?;
    }

    // The mesh: control plane, the app, payments' sidecar in front of it, orders' sidecar
    // calling it, and two publishers' sidecars for AMQP.
    let (cp_sidecar, cp_admin, cp_metrics) = (free_addr(), free_addr(), free_addr());
    let data = work.join("cp");
    procs.spawn(
        "control-plane",
        &s.bin_dir.join("palisade-control-plane"),
        &[
            "--data-dir".into(),
            data.display().to_string(),
            "--sidecar-listen".into(),
            cp_sidecar.to_string(),
            "--admin-listen".into(),
            cp_admin.to_string(),
            "--metrics-listen".into(),
            cp_metrics.to_string(),
        ],
        &work.join("cp.log"),
    )?;
    wait_status(cp_admin, "cp", "/healthz", 200).await?;
    let app = free_addr();
    procs.spawn(
        "app",
        &me,
        &["app".into(), "--listen".into(), app.to_string()],
        &work.join("app.log"),
    )?;
    let mesh = Mesh {
        bin_dir: s.bin_dir.clone(),
        work: work.clone(),
        data: data.clone(),
        cp_sidecar,
        cp_admin,
        app,
        callgrind: s.callgrind,
    };
    if s.decision_log {
        r.md.push_str(&format!(
            "\n**Every Palisade path is measured twice, interleaved: with the plain log, and with the durable decision log (`--decision-dir`, `--decision-ship {}`) too.**\n",
            s.decision_ship
        ));
    }
    let http_policy = work.join("policy.yaml");
    write_policy(
        &http_policy,
        "bench",
        "  selector: { service: payments }\n  rules:\n    - from: [ { principals: [\"spiffe://palisade.local/ns/shop/sa/orders\"] } ]\n      to: [ { methods: [\"GET\"], paths: [\"/item\"] } ]\n",
    )?;
    let amqp_policy = work.join("amqp-policy.yaml");
    write_policy(
        &amqp_policy,
        "bench-publish",
        &format!(
            "  rules:\n    - to: [ {{ amqp: {{ operations: [publish], vhosts: [\"/\"], exchanges: [\"\"], routingKeys: [\"{}\"] }} }} ]\n",
            crate::amqp::QUEUE
        ),
    )?;
    // The sidecars, each pair twice with `--decision-log`: with the plain log only, and
    // with the durable one too (`-durable`), measured side by side in interleaved rounds.
    let path_arg = |flag: &str, p: &Path| vec![flag.to_owned(), p.display().to_string()];
    let mut pairs = Vec::new();
    let mut publishers = Vec::new();
    for durable in [false, true]
        .into_iter()
        .take(1 + usize::from(s.decision_log))
    {
        let variant = if durable { "-durable" } else { "" };
        let with_log = |name: &str, mut extra: Vec<String>| {
            if durable {
                extra.extend(mesh.decision_log(name, &s.decision_ship));
            }
            extra
        };
        let payments_inbound = free_addr();
        let registry = work.join(format!("registry{variant}.yaml"));
        std::fs::write(
            &registry,
            format!(
                "apiVersion: palisade.dev/v1\nkind: Service\nmetadata: {{ name: payments, namespace: shop }}\nspec: {{ identity: \"spiffe://palisade.local/ns/shop/sa/payments\", endpoints: [\"{payments_inbound}\"] }}\n"
            ),
        )?;
        let name = format!("payments{variant}");
        let extra = with_log(&name, path_arg("--policy-file", &http_policy));
        let payments = mesh
            .sidecar(&mut procs, &name, "payments", payments_inbound, &extra)
            .await?;
        let name = format!("orders{variant}");
        let extra = with_log(&name, path_arg("--registry-file", &registry));
        let orders = mesh
            .sidecar(&mut procs, &name, "orders", free_addr(), &extra)
            .await?;
        wait_status(orders.outbound, "payments", "/item", 200).await?;
        pairs.push((durable, orders, payments));
        for (sa, sign) in [("publisher", "true"), ("publisher-unsigned", "false")] {
            let name = format!("{sa}{variant}");
            let mut extra = path_arg("--policy-file", &amqp_policy);
            extra.extend([
                "--amqp-upstream".into(),
                s.broker.clone(),
                "--amqp-sign".into(),
                sign.into(),
            ]);
            let extra = with_log(&name, extra);
            publishers.push(
                mesh.sidecar(&mut procs, &name, sa, free_addr(), &extra)
                    .await?,
            );
        }
    }
    wait_status(app, "app", "/item", 200).await?;

    let mut paths = vec![HttpPath {
        name: "direct",
        key: "direct",
        http1: app,
        http2: app,
        host: "app",
        proxies: vec![],
        collector: None,
    }];
    for &(durable, ref orders, ref payments) in &pairs {
        paths.push(HttpPath {
            name: if durable {
                "Palisade, durable decision log (--decision-dir)"
            } else {
                "Palisade (2 sidecars, mTLS, policy, audit)"
            },
            key: if durable {
                "palisade-durable"
            } else {
                "palisade"
            },
            http1: orders.outbound,
            http2: orders.outbound,
            host: "payments",
            proxies: if durable {
                [
                    ("orders sidecar, durable log", orders),
                    ("payments sidecar, durable log", payments),
                ]
            } else {
                [("orders sidecar", orders), ("payments sidecar", payments)]
            }
            .into_iter()
            .map(|(label, sc)| http::Proxy {
                label,
                pid: sc.pid,
                profile: sc.profile.clone(),
            })
            .collect(),
            collector: (durable && s.decision_ship == "control-plane")
                .then(|| procs.pid("control-plane"))
                .flatten(),
        });
    }
    match crate::nginx::find() {
        Some(bin) => {
            let ports = crate::nginx::Ports {
                out_http1: free_addr(),
                out_http2: free_addr(),
                inbound: free_addr(),
            };
            let [inbound, outbound] =
                crate::nginx::start(&mut procs, &bin, &work.join("nginx"), app, ports)?;
            wait_status(ports.out_http1, "payments", "/item", 200).await?;
            paths.push(HttpPath {
                name: "nginx (2 instances, mTLS, subject check, access log)",
                key: "nginx",
                http1: ports.out_http1,
                http2: ports.out_http2,
                host: "payments",
                proxies: vec![
                    http::Proxy::new("nginx outbound", outbound),
                    http::Proxy::new("nginx inbound", inbound),
                ],
                collector: None,
            });
        }
        None => {
            r.md.push_str("\n**nginx was not found: the nginx rows are missing from this run.**\n");
        }
    }
    let idle: HashMap<u32, u64> = paths
        .iter()
        .flat_map(|p| p.proxies.iter())
        .map(|p| (p.pid, memory(p.pid).0))
        .collect();

    // 1 and 2. HTTP, each protocol over every path; 4. footprint after scenario 1.
    for proto in [Proto::Http1, Proto::Http2] {
        if s.runs(proto.key()) {
            http::scenario(&s, &mut r, proto, &paths, rate, dur).await?;
            if proto == Proto::Http1 && !s.callgrind {
                http::footprint(&mut r, &paths, &idle);
            }
        }
    }

    // 3. AMQP publishes.
    if s.runs("amqp") {
        amqp_scenario(&s, &mut r, &publishers).await?;
    }

    // 6. Certificate issuance.
    if s.runs("issuance") {
        let (slot, bundle, server) = sidecar_tls(&work.join("orders-id"))?;
        let (signed, p50, p99, errors) =
            crate::issuance::rate(cp_sidecar, slot, bundle, server, 8, dur).await?;
        r.md.push_str(&format!(
            "\n| certificate issuance (renewal: mTLS + CSR + sign) | CSRs signed/s (8 clients) | p50 ms | p99 ms | errors |\n|---|---:|---:|---:|---:|\n| control plane, SQLite | {signed:.0} | {p50:.2} | {p99:.2} | {errors} |\n"
        ));
        r.results.push(json!({"scenario": "issuance", "clients": 8, "signed_per_s": signed, "p50_ms": p50, "p99_ms": p99, "errors": errors}));
        // The same by key source (issue 17), each on a control plane in this process.
        r.md.push_str("\n| issuance by key source (control plane in the harness's process) | CSRs signed/s (8 clients) | p50 ms | p99 ms | errors |\n|---|---:|---:|---:|---:|\n");
        for (source, (signed, p50, p99, errors)) in
            crate::issuance::by_key_source(&work, 8, dur).await?
        {
            r.md.push_str(&format!(
                "| --ca-key-source {source} | {signed:.0} | {p50:.2} | {p99:.2} | {errors} |\n"
            ));
            r.results.push(json!({"scenario": "issuance-key-source", "key_source": source, "clients": 8, "signed_per_s": signed, "p50_ms": p50, "p99_ms": p99, "errors": errors}));
        }
    }

    // 7. Propagation: simulated sidecars (orders' certificate, many instances) wait on the
    // configuration long poll; one policy change; how long until each has it.
    if s.runs("propagation") {
        let admin_token = std::fs::read_to_string(data.join("admin-token"))?
            .trim()
            .to_owned();
        propagation_scenario(&s, &mut r, cp_sidecar, cp_admin, &admin_token, &work).await?;
    }
    drop(procs);
    finish(&s, r)?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// The targets table, then results.md and results.json.
pub(crate) fn finish(s: &Settings, mut r: Report) -> anyhow::Result<()> {
    r.md.push_str(&format!(
        "\n| target{} | met | measured |\n|---|---|---|\n",
        if s.smoke {
            " (smoke run: means nothing)"
        } else {
            ""
        }
    ));
    for (what, met, detail) in &r.targets {
        r.md.push_str(&format!(
            "| {what} | {} | {detail} |\n",
            if *met { "yes" } else { "**no**" }
        ));
    }
    let targets: Vec<Value> = r
        .targets
        .iter()
        .map(|(what, met, detail)| json!({"target": what, "met": met, "measured": detail}))
        .collect();
    std::fs::create_dir_all(&s.out)?;
    std::fs::write(s.out.join("results.md"), &r.md)?;
    std::fs::write(
        s.out.join("results.json"),
        serde_json::to_string_pretty(
            &json!({"smoke": s.smoke, "results": r.results, "targets": targets}),
        )?,
    )?;
    println!("{}", r.md);
    Ok(())
}
