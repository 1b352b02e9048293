//! Scenario 3: AMQP publishes, direct and through a sidecar.

use crate::run::setup::Sidecar;
use crate::run::{Report, Settings, median, ratio};
use serde_json::json;

pub(crate) async fn amqp_scenario(
    s: &Settings,
    r: &mut Report,
    publishers: &[Sidecar],
) -> anyhow::Result<()> {
    crate::amqp::prepare(&s.broker).await?;
    let direct_amqp = s.broker.clone();
    let via = |sc: &Sidecar| {
        format!(
            "amqp://guest:guest@{}/%2f",
            sc.amqp.expect("an AMQP sidecar")
        )
    };
    let amqp_paths = [
        ("direct", "direct", direct_amqp),
        (
            "through the sidecar, signing on",
            "sidecar-signed",
            via(&publishers[0]),
        ),
        (
            "through the sidecar, signing off",
            "sidecar-unsigned",
            via(&publishers[1]),
        ),
    ];
    r.md.push_str("\n| AMQP publishes, 1 KiB (median of rounds) | with confirms msg/s | lowest–highest | vs direct | without confirms msg/s | lowest–highest | vs direct |\n|---|---:|---:|---:|---:|---:|---:|\n");
    // [path][confirms on, off] -> one rate per round; rounds interleave the paths.
    let mut rates = vec![[Vec::new(), Vec::new()]; amqp_paths.len()];
    for _ in 0..s.rounds() {
        for (i, (_, _, url)) in amqp_paths.iter().enumerate() {
            for (j, confirms) in [true, false].into_iter().enumerate() {
                rates[i][j].push(crate::amqp::publish_rate(url, confirms, s.round_time()).await?);
            }
        }
    }
    let med = |v: &Vec<f64>| median(v.iter().copied());
    let range = |v: &Vec<f64>| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        format!("{lo:.0}–{hi:.0}")
    };
    let direct = [med(&rates[0][0]), med(&rates[0][1])];
    for (i, (name, key, _)) in amqp_paths.iter().enumerate() {
        let m = [med(&rates[i][0]), med(&rates[i][1])];
        r.md.push_str(&format!(
            "| {name} | {:.0} | {} | {} | {:.0} | {} | {} |\n",
            m[0],
            range(&rates[i][0]),
            ratio(m[0], direct[0]),
            m[1],
            range(&rates[i][1]),
            ratio(m[1], direct[1])
        ));
        for (j, confirms) in [true, false].into_iter().enumerate() {
            r.results.push(json!({"scenario": "amqp-publish", "path": key, "confirms": confirms, "messages_per_s": m[j], "rounds": rates[i][j], "confirm_window": crate::amqp::CONFIRM_WINDOW}));
        }
        if i == 1 {
            r.target(
                "AMQP through the sidecar at least 85 % of direct, with confirms (signing on)",
                m[0] >= 0.85 * direct[0],
                format!("{:.0} %", 100.0 * m[0] / direct[0]),
            );
        }
    }
    Ok(())
}
