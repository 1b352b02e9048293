//! Scenario 3: AMQP publishes, direct and through a sidecar.

use crate::run::setup::Sidecar;
use crate::run::{Report, Settings, median, ratio, spread};
use serde_json::json;

pub(crate) async fn amqp_scenario(
    s: &Settings,
    r: &mut Report,
    publishers: &[Sidecar],
) -> anyhow::Result<()> {
    crate::amqp::prepare(&s.broker).await?;
    if s.callgrind {
        return instructions(s, r, publishers).await;
    }
    let mut amqp_paths = vec![("direct", "direct", s.broker.clone())];
    amqp_paths.extend(
        publishers
            .iter()
            .zip(PUBLISHERS)
            .map(|(sc, (name, key))| (name, key, via(sc))),
    );
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
    let direct = [med(&rates[0][0]), med(&rates[0][1])];
    let mut medians = std::collections::HashMap::new();
    for (i, (name, key, _)) in amqp_paths.iter().enumerate() {
        let m = [med(&rates[i][0]), med(&rates[i][1])];
        r.md.push_str(&format!(
            "| {name} | {:.0} | {} | {} | {:.0} | {} | {} |\n",
            m[0],
            spread(&rates[i][0]),
            ratio(m[0], direct[0]),
            m[1],
            spread(&rates[i][1]),
            ratio(m[1], direct[1])
        ));
        for (j, confirms) in [true, false].into_iter().enumerate() {
            r.results.push(json!({"scenario": "amqp-publish", "path": key, "confirms": confirms, "messages_per_s": m[j], "rounds": rates[i][j], "confirm_window": crate::amqp::CONFIRM_WINDOW}));
        }
        if key == &"sidecar-signed" {
            r.target(
                "AMQP through the sidecar at least 85 % of direct, with confirms (signing on)",
                m[0] >= 0.85 * direct[0],
                format!("{:.0} %", 100.0 * m[0] / direct[0]),
            );
        }
        medians.insert(*key, m);
    }
    if let (Some(plain), Some(durable)) = (
        medians.get("sidecar-signed"),
        medians.get("sidecar-signed-durable"),
    ) {
        for (j, confirms) in ["with confirms", "without confirms"]
            .into_iter()
            .enumerate()
        {
            let (plain, durable) = (plain[j], durable[j]);
            r.target(
                &format!("AMQP publishes {confirms} (signing on) with the durable decision log within 5 % of the plain log's"),
                durable >= 0.95 * plain,
                format!("{durable:.0} vs {plain:.0} msg/s ({})", ratio(durable, plain)),
            );
        }
    }
    Ok(())
}

/// The publishers' sidecars in the order the run starts them: with the plain log, then
/// (with `--decision-log`) the same two with the durable one.
const PUBLISHERS: [(&str, &str); 4] = [
    ("through the sidecar, signing on", "sidecar-signed"),
    ("through the sidecar, signing off", "sidecar-unsigned"),
    (
        "through the sidecar, signing on, durable decision log",
        "sidecar-signed-durable",
    ),
    (
        "through the sidecar, signing off, durable decision log",
        "sidecar-unsigned-durable",
    ),
];

fn via(sc: &Sidecar) -> String {
    format!(
        "amqp://guest:guest@{}/%2f",
        sc.amqp.expect("an AMQP sidecar")
    )
}

/// `--callgrind`: instructions per message in each publisher's sidecar, with confirms and
/// without, in rounds after a warm-up publish.
async fn instructions(s: &Settings, r: &mut Report, publishers: &[Sidecar]) -> anyhow::Result<()> {
    let round = s.callgrind_round();
    r.md.push_str(&format!(
        "\n| AMQP publishes, 1 KiB (callgrind) | instructions per message with confirms, median of {} rounds | lowest–highest | without confirms | lowest–highest |\n|---|---:|---:|---:|---:|\n",
        s.rounds()
    ));
    for (sc, (name, key)) in publishers.iter().zip(PUBLISHERS) {
        let profile = sc.profile.as_deref().expect("a profiled sidecar");
        let url = via(sc);
        let mut cells = Vec::new();
        for confirms in [true, false] {
            crate::amqp::publish(&url, confirms, round).await?;
            let rounds = crate::callgrind::per_unit(&[(sc.pid, profile)], s.rounds(), || async {
                Ok(crate::amqp::publish(&url, confirms, round).await?.0)
            })
            .await?
            .remove(0);
            let m = median(rounds.iter().copied());
            cells.push(format!("{m:.0} | {}", spread(&rounds)));
            r.results.push(json!({
                "scenario": "amqp-publish-instructions", "path": key, "confirms": confirms,
                "instructions_per_message": m, "rounds": rounds, "decision_log": key.ends_with("-durable").then_some(&s.decision_ship),
            }));
        }
        r.md.push_str(&format!("| {name} | {} |\n", cells.join(" | ")));
    }
    Ok(())
}
