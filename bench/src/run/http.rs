//! Scenarios 1, 2 and 4: HTTP over each path (direct, Palisade, nginx) and the footprint.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;

use super::{Report, Settings, median, ratio, spread};
use crate::load::Proto;
use crate::mesh::{cpu_seconds, memory};

/// One path of the HTTP scenarios: where the client connects for each protocol, and the
/// processes whose CPU and memory it costs.
pub(crate) struct HttpPath {
    pub(crate) name: &'static str,
    pub(crate) key: &'static str,
    pub(crate) http1: SocketAddr,
    pub(crate) http2: SocketAddr,
    pub(crate) host: &'static str,
    pub(crate) proxies: Vec<Proxy>,
    /// The control plane, when this path's sidecars ship their decision log to it: its
    /// collector's CPU is reported beside the proxies' (on this machine it shares their
    /// two cores; in a mesh it runs elsewhere).
    pub(crate) collector: Option<u32>,
}

/// One proxy process on a path.
pub(crate) struct Proxy {
    pub(crate) label: &'static str,
    pub(crate) pid: u32,
    /// Where callgrind profiles it (`--callgrind`).
    pub(crate) profile: Option<std::path::PathBuf>,
}

impl Proxy {
    /// A proxy that is not profiled.
    pub(crate) fn new(label: &'static str, pid: u32) -> Self {
        Self {
            label,
            pid,
            profile: None,
        }
    }
}

/// What one HTTP path measured.
#[derive(Clone, Copy)]
pub(crate) struct HttpFigures {
    /// Median of the rounds.
    pub(crate) rps: f64,
    pub(crate) p99: f64,
    pub(crate) cpu_per_10k: f64,
    /// The collector's CPU seconds per 10k requests (NaN when there is none).
    pub(crate) collector_per_10k: f64,
    /// Lowest and highest round.
    pub(crate) range: (f64, f64),
}

/// One protocol over every path: throughput in interleaved rounds, then latency at `rate`.
pub(crate) async fn scenario(
    s: &Settings,
    r: &mut Report,
    proto: Proto,
    paths: &[HttpPath],
    rate: u64,
    dur: Duration,
) -> anyhow::Result<()> {
    if s.callgrind {
        return instructions(s, r, proto, paths).await;
    }
    r.md.push_str(&format!(
        "\n| {}, 1 KiB responses | req/s ({} connections, median of rounds) | lowest–highest round | vs direct | vs nginx | p50 ms | p99 ms | p99.9 ms | p99 vs nginx | CPU s / 10k req (proxies) | errors |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        proto.label(),
        s.concurrency
    ));
    // Throughput in interleaved rounds (every path once per round), the median kept:
    // on a shared two-core VM one path's run can land on a noisy moment.
    let addr_of = |path: &HttpPath| match proto {
        Proto::Http1 => path.http1,
        Proto::Http2 => path.http2,
    };
    let mut rounds: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); paths.len()];
    let mut errors = vec![0u64; paths.len()];
    for _ in 0..s.rounds() {
        for (i, path) in paths.iter().enumerate() {
            let cpu = || -> f64 { path.proxies.iter().map(|p| cpu_seconds(p.pid)).sum() };
            let collector = || path.collector.map_or(f64::NAN, cpu_seconds);
            let (before, collector_before) = (cpu(), collector());
            let (rps, e) = crate::load::throughput(
                addr_of(path),
                proto,
                path.host,
                s.concurrency,
                s.round_time(),
            )
            .await?;
            let (used, collector_used) = (cpu() - before, collector() - collector_before);
            let requests = rps * s.round_time().as_secs_f64();
            let per_10k = |used: f64| {
                if requests == 0.0 {
                    f64::NAN
                } else {
                    used / requests * 10_000.0
                }
            };
            let cpu_per_10k = if path.proxies.is_empty() {
                f64::NAN
            } else {
                per_10k(used)
            };
            rounds[i].push((rps, cpu_per_10k, per_10k(collector_used)));
            errors[i] += e;
        }
    }
    let mut measured: Vec<(HttpFigures, [f64; 3], u64)> = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        let (lat, errors_l) =
            crate::load::latency(addr_of(path), proto, path.host, rate, dur).await?;
        measured.push((
            HttpFigures {
                rps: median(rounds[i].iter().map(|r| r.0)),
                p99: lat[1],
                cpu_per_10k: median(rounds[i].iter().map(|r| r.1)),
                collector_per_10k: median(rounds[i].iter().map(|r| r.2)),
                range: rounds[i]
                    .iter()
                    .fold((f64::INFINITY, 0.0f64), |(lo, hi), r| {
                        (lo.min(r.0), hi.max(r.0))
                    }),
            },
            lat,
            errors[i] + errors_l,
        ));
    }
    let direct = measured[0].0;
    let nginx = paths
        .iter()
        .position(|p| p.key == "nginx")
        .map(|i| measured[i].0);
    for (i, (path, (f, [p50, p99, p999], errors))) in paths.iter().zip(&measured).enumerate() {
        let vs_nginx = nginx.map_or(f64::NAN, |n| n.rps);
        let p99_nginx = nginx.map_or(f64::NAN, |n| n.p99);
        r.md.push_str(&format!(
            "| {} | {:.0} | {:.0}–{:.0} | {} | {} | {p50:.2} | {p99:.2} | {p999:.2} | {} | {} | {errors} |\n",
            path.name,
            f.rps,
            f.range.0,
            f.range.1,
            ratio(f.rps, direct.rps),
            ratio(f.rps, vs_nginx),
            ratio(*p99, p99_nginx),
            match (f.cpu_per_10k.is_nan(), f.collector_per_10k.is_nan()) {
                (true, _) => "–".to_owned(),
                (false, true) => format!("{:.2}", f.cpu_per_10k),
                (false, false) => format!(
                    "{:.2} (+ {:.2} control plane collecting the decision log)",
                    f.cpu_per_10k, f.collector_per_10k
                ),
            },
        ));
        r.results.push(json!({
            "scenario": proto.key(), "path": path.key, "throughput_rps": f.rps,
            "p50_ms": p50, "p99_ms": p99, "p999_ms": p999,
            "cpu_s_per_10k_requests": f.cpu_per_10k, "errors": errors,
            "collector_cpu_s_per_10k_requests": (!f.collector_per_10k.is_nan()).then_some(f.collector_per_10k),
            "decision_log": path.key.ends_with("-durable"),
            "throughput_rounds_rps": rounds[i].iter().map(|r| r.0).collect::<Vec<_>>(),
            "offered_rate_rps": rate, "connections": s.concurrency,
        }));
    }
    let at = |key: &str| {
        paths
            .iter()
            .position(|p| p.key == key)
            .map(|i| measured[i].0)
    };
    if let (Some(plain), Some(durable)) = (at("palisade"), at("palisade-durable")) {
        r.target(
            &format!(
                "{} throughput with the durable decision log within 5 % of the plain log's",
                proto.label()
            ),
            durable.rps >= 0.95 * plain.rps,
            format!(
                "{:.0} vs {:.0} req/s ({})",
                durable.rps,
                plain.rps,
                ratio(durable.rps, plain.rps)
            ),
        );
        r.target(
            &format!(
                "{} p99 at {rate} req/s with the durable decision log within 5 % of the plain log's",
                proto.label()
            ),
            durable.p99 <= 1.05 * plain.p99,
            format!("{:.2} vs {:.2} ms", durable.p99, plain.p99),
        );
    }
    if let (Some(n), Some(i)) = (nginx, paths.iter().position(|p| p.key == "palisade")) {
        let p = measured[i].0;
        r.target(
            &format!("{} throughput at least the nginx pair's", proto.label()),
            p.rps >= n.rps,
            format!(
                "{:.0} vs {:.0} req/s ({})",
                p.rps,
                n.rps,
                ratio(p.rps, n.rps)
            ),
        );
        r.target(
            &format!(
                "{} p99 at {rate} req/s no worse than the nginx pair's",
                proto.label()
            ),
            p.p99 <= n.p99,
            format!("{:.2} vs {:.2} ms", p.p99, n.p99),
        );
    }
    Ok(())
}

/// Scenario 4: each proxy's resident memory, idle (before scenario 1) and at its peak.
pub(crate) fn footprint(r: &mut Report, paths: &[HttpPath], idle: &HashMap<u32, u64>) {
    r.md.push_str("\n| footprint (scenario 1) | idle RSS MiB | peak RSS MiB |\n|---|---:|---:|\n");
    let mut sidecar_peak: u64 = 0;
    for path in paths.iter().filter(|p| !p.proxies.is_empty()) {
        for &Proxy { label, pid, .. } in &path.proxies {
            let (_, peak) = memory(pid);
            if path.key == "palisade" {
                sidecar_peak = sidecar_peak.max(peak);
            }
            r.md.push_str(&format!(
                "| {label}{} | {:.1} | {:.1} |\n",
                if path.key == "nginx" {
                    " (master + workers)"
                } else {
                    ""
                },
                idle[&pid] as f64 / 1024.0,
                peak as f64 / 1024.0
            ));
            r.results.push(json!({"scenario": "footprint", "process": label, "idle_rss_kib": idle[&pid], "peak_rss_kib": peak}));
        }
    }
    r.target(
        "sidecar resident memory under 20 MB at peak in scenario 1",
        sidecar_peak * 1024 < 20_000_000,
        format!("{:.1} MB", sidecar_peak as f64 * 1024.0 / 1e6),
    );
}

/// `--callgrind`: instructions per request in each proxy of every path that is profiled, in
/// closed-loop rounds after a warm-up round (counters zeroed before a round and dumped
/// after it, so a round's count is its requests and its connections' set-up only).
async fn instructions(
    s: &Settings,
    r: &mut Report,
    proto: Proto,
    paths: &[HttpPath],
) -> anyhow::Result<()> {
    let round = s.callgrind_round();
    // Few connections: under callgrind a sidecar serves hundreds of requests a second, and
    // the count per request does not depend on the load.
    let connections = 4;
    let profiled = |p: &&HttpPath| p.proxies.iter().any(|x| x.profile.is_some());
    for path in paths.iter().filter(profiled) {
        let addr = match proto {
            Proto::Http1 => path.http1,
            Proto::Http2 => path.http2,
        };
        crate::load::closed_loop(addr, proto, path.host, connections, round).await?;
        let proxies: Vec<(&'static str, u32, &std::path::Path)> = path
            .proxies
            .iter()
            .filter_map(|p| Some((p.label, p.pid, p.profile.as_deref()?)))
            .collect();
        let profiles: Vec<(u32, &std::path::Path)> = proxies
            .iter()
            .map(|&(_, pid, profile)| (pid, profile))
            .collect();
        let per_request = crate::callgrind::per_unit(&profiles, s.rounds(), || async {
            let (done, errors, _) =
                crate::load::closed_loop(addr, proto, path.host, connections, round).await?;
            anyhow::ensure!(
                errors == 0,
                "{}: {errors} errors under callgrind",
                path.name
            );
            Ok(done)
        })
        .await?;
        r.md.push_str(&format!(
            "\n| {} over {} (callgrind) | instructions per request, median of {} rounds | lowest–highest round |\n|---|---:|---:|\n",
            proto.label(),
            path.name,
            s.rounds()
        ));
        for (&(label, ..), rounds) in proxies.iter().zip(&per_request) {
            let m = median(rounds.iter().copied());
            r.md.push_str(&format!("| {label} | {m:.0} | {} |\n", spread(rounds)));
            r.results.push(json!({
                "scenario": format!("{}-instructions", proto.key()), "path": path.key, "proxy": label,
                "instructions_per_request": m, "rounds": rounds,
                "decision_log": path.key.ends_with("-durable"),
            }));
        }
    }
    Ok(())
}
