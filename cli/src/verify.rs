//! `palisade audit verify --dir`: a sidecar's decision spool checked offline, with the trust
//! bundle alone (no control plane): every record in its place, every link intact, every
//! checkpoint signed by the workload that wrote the records. The checks are the contract's
//! ([`palisade_contract::decisions::verify`]), the same the collector makes.

use std::path::Path;

use palisade_contract::TrustDomain;
use palisade_contract::decisions::verify::{Report, verify_dir};
use palisade_contract::tls::TrustBundle;
use serde_json::{Value, json};

use crate::Output;
use crate::client::{ApiClient, ApiError};

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
    let value = json!({
        "clean": clean,
        "instances": reports.iter().map(Report::to_json).collect::<Vec<_>>(),
        "findings": unattributed.iter().map(ToString::to_string).collect::<Vec<_>>(),
    });
    print(&value, output)?;
    Ok(clean)
}

/// `palisade audit verify` without `--dir`: the control plane checks its store
/// (`GET /v1/decisions/integrity`) by the same rules; printed the same way.
pub async fn central(api: &ApiClient, output: Output) -> Result<bool, ApiError> {
    let value = api.get_json("/v1/decisions/integrity").await?;
    print(&value, output)?;
    Ok(value["clean"].as_bool() == Some(true))
}

/// One report per writer (`{"clean", "instances": [...], "findings": [...]}`), as a table
/// or as it is.
fn print(value: &Value, output: Output) -> Result<(), ApiError> {
    match output {
        Output::Json => println!("{value:#}"),
        Output::Yaml => print!(
            "{}",
            serde_saphyr::to_string(value).map_err(|e| ApiError::Usage(e.to_string()))?
        ),
        Output::Table => {
            println!(
                "{:<26} {:<44} {:>9} {:>11} {:>8} {:>8}  {:<20} {:<20}  RESULT",
                "INSTANCE",
                "SIGNER",
                "DECISIONS",
                "CHECKPOINTS",
                "UNSIGNED",
                "DROPPED",
                "FIRST",
                "LAST"
            );
            let s = |v: &Value| v.as_str().unwrap_or("-").to_owned();
            let n = |v: &Value| v.as_u64().unwrap_or_default();
            let instances = value["instances"].as_array().cloned().unwrap_or_default();
            for r in &instances {
                let time = |v: &Value| s(v).chars().take(20).collect::<String>();
                println!(
                    "{:<26} {:<44} {:>9} {:>11} {:>8} {:>8}  {:<20} {:<20}  {}",
                    s(&r["instance"]),
                    s(&r["signer"]),
                    n(&r["decisions"]),
                    n(&r["checkpoints"]),
                    n(&r["unsigned"]),
                    n(&r["dropped"]),
                    time(&r["firstTime"]),
                    time(&r["lastTime"]),
                    if r["clean"] == true { "ok" } else { "FAILED" }
                );
                if let Some(p) = r["pruned"].as_object() {
                    let before = p["before"]
                        .as_i64()
                        .and_then(|ms| palisade_contract::rfc3339_at(ms.div_euclid(1000)))
                        .unwrap_or_else(|| "-".into());
                    println!(
                        "  pruned by retention: {} records before {before} (the chain is kept from {}; signed by {})",
                        n(&p["records"]),
                        n(&p["from"]),
                        s(&p["signer"])
                    );
                }
                for reason in r["dropReasons"].as_array().into_iter().flatten() {
                    println!("  dropped (declared by the writer): {}", s(reason));
                }
                for f in r["findings"].as_array().into_iter().flatten() {
                    println!("  - {}", s(&f["message"]));
                }
            }
            for f in value["findings"].as_array().into_iter().flatten() {
                println!("  - {}", s(f));
            }
            let trail = &value["adminTrail"];
            if trail.is_object() {
                let unchained = n(&trail["unchained"]);
                println!(
                    "admin audit trail: {} entries, {} checkpoints, signed through entry {}, {} unsigned{}  {}",
                    n(&trail["entries"]),
                    n(&trail["checkpoints"]),
                    n(&trail["signedThrough"]),
                    n(&trail["unsigned"]),
                    if unchained > 0 {
                        format!(" ({unchained} written before the trail was chained, not checked)")
                    } else {
                        String::new()
                    },
                    if trail["clean"] == true {
                        "ok"
                    } else {
                        "FAILED"
                    }
                );
                for f in trail["findings"].as_array().into_iter().flatten() {
                    println!("  - {}", s(&f["message"]));
                }
            }
            if instances.is_empty() {
                println!("(no records)");
            }
        }
    }
    Ok(())
}
