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
    let direct_amqp = s.broker.clone();
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
    let direct = [med(&rates[0][0]), med(&rates[0][1])];
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
    for (sc, name, key) in [
        (&publishers[0], "sidecar, signing on", "sidecar-signed"),
        (&publishers[1], "sidecar, signing off", "sidecar-unsigned"),
    ] {
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
                "instructions_per_message": m, "rounds": rounds, "decision_log": s.decision_log,
            }));
        }
        r.md.push_str(&format!("| {name} | {} |\n", cells.join(" | ")));
    }
    Ok(())
}
