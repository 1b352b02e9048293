//! `palisade audit verify --dir`: a sidecar's decision spool checked offline, with the trust
//! bundle alone (no control plane): every record in its place, every link intact, every
//! checkpoint signed by the workload that wrote the records. The checks are the contract's
//! ([`palisade_contract::decisions::verify`]), the same the collector makes.

use std::path::Path;

use palisade_contract::TrustDomain;
use palisade_contract::decisions::verify::{Finding, Report, verify_dir};
use palisade_contract::tls::TrustBundle;
use serde_json::json;

use crate::Output;
use crate::client::ApiError;

/// Prints a report per writer; `Ok(false)` when anything is wrong (exit 1).
pub fn dir(
    dir: &Path,
    bundle: Option<&Path>,
    trust_domain: &str,
    output: Output,
) -> Result<bool, ApiError> {
    let usage = |m: String| ApiError::Usage(m);
    let bundle = bundle.ok_or_else(|| {
        usage(
            "audit verify needs --ca-bundle: the trust bundle the checkpoints must chain to".into(),
        )
    })?;
    let td = TrustDomain::parse(trust_domain)
        .map_err(|e| usage(format!("--trust-domain {trust_domain:?}: {e}")))?;
    let pem = std::fs::read(bundle)
        .map_err(|e| usage(format!("reading --ca-bundle {}: {e}", bundle.display())))?;
    let bundle = TrustBundle::from_pem(td, &pem)
        .map_err(|e| usage(format!("--ca-bundle {}: {e}", bundle.display())))?;
    if !dir.is_dir() {
        return Err(usage(format!("--dir {}: not a directory", dir.display())));
    }
    let (reports, unattributed) =
        verify_dir(dir, &bundle).map_err(|e| usage(format!("reading {}: {e}", dir.display())))?;
    let clean = unattributed.is_empty() && reports.iter().all(Report::clean);
    match output {
        Output::Json | Output::Yaml => {
            let value = json!({
                "clean": clean,
                "instances": reports.iter().map(report_json).collect::<Vec<_>>(),
                "findings": unattributed.iter().map(ToString::to_string).collect::<Vec<_>>(),
            });
            if let Output::Yaml = output {
                print!(
                    "{}",
                    serde_saphyr::to_string(&value).map_err(|e| usage(e.to_string()))?
                );
            } else {
                println!("{value:#}");
            }
        }
        Output::Table => {
            println!(
                "{:<18} {:<44} {:>9} {:>11} {:>8} {:>8}  {:<20} {:<20}  RESULT",
                "INSTANCE",
                "SIGNER",
                "DECISIONS",
                "CHECKPOINTS",
                "UNSIGNED",
                "DROPPED",
                "FIRST",
                "LAST"
            );
            for r in &reports {
                println!(
                    "{:<18} {:<44} {:>9} {:>11} {:>8} {:>8}  {:<20} {:<20}  {}",
                    r.instance,
                    r.signer.as_deref().unwrap_or("-"),
                    r.decisions,
                    r.checkpoints,
                    r.unsigned,
                    r.dropped,
                    r.first_time.as_deref().unwrap_or("-"),
                    r.last_time.as_deref().unwrap_or("-"),
                    if r.clean() { "ok" } else { "FAILED" }
                );
                for reason in &r.drop_reasons {
                    println!("  dropped (declared by the writer): {reason}");
                }
                for f in &r.findings {
                    println!("  - {f}");
                }
            }
            for f in &unattributed {
                println!("  - {f}");
            }
            if reports.is_empty() {
                println!("(no records)");
            }
        }
    }
    Ok(clean)
}

fn report_json(r: &Report) -> serde_json::Value {
    json!({
        "instance": r.instance,
        "signer": r.signer,
        "decisions": r.decisions,
        "checkpoints": r.checkpoints,
        "signedThrough": r.signed_through,
        "unsigned": r.unsigned,
        "dropped": r.dropped,
        "dropReasons": r.drop_reasons,
        "firstTime": r.first_time,
        "lastTime": r.last_time,
        "clean": r.clean(),
        "findings": r.findings.iter().map(|f: &Finding| json!({
            "kind": f.kind(),
            "message": f.to_string(),
        })).collect::<Vec<_>>(),
    })
}
