//! Instructions per request, counted by valgrind's callgrind (`run --callgrind`): this
//! machine's VM exposes no hardware counters, and an instruction count is repeatable where
//! seconds on a shared two-core VM are not (BENCHMARKS.md). The sidecars run under
//! `valgrind --tool=callgrind`; around each measured round the harness zeroes their counters
//! (`callgrind_control -z`) and dumps them (`callgrind_control -d`), so a dump holds the
//! round's requests only, not start-up, certificate issuance or the warm-up.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

/// The command line that runs `program args` under callgrind, its profile dumps going to
/// `out_prefix.N`.
pub fn wrap(program: &Path, args: &[String], out_prefix: &Path) -> (PathBuf, Vec<String>) {
    let mut wrapped = vec![
        "--tool=callgrind".to_owned(),
        format!("--callgrind-out-file={}", out_prefix.display()),
        program.display().to_string(),
    ];
    wrapped.extend(args.iter().cloned());
    (PathBuf::from("valgrind"), wrapped)
}

fn control(flag: &str, pid: u32) -> anyhow::Result<()> {
    let out = Command::new("callgrind_control")
        .args([flag, &pid.to_string()])
        .output()
        .context("running callgrind_control (valgrind's)")?;
    if !out.status.success() {
        bail!(
            "callgrind_control {flag} {pid}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Zeroes the counters of the process `pid`.
pub fn zero(pid: u32) -> anyhow::Result<()> {
    control("-z", pid)
}

/// Dumps the counters of `pid` (profiling to `out_prefix`) and returns the instructions
/// counted since they were last zeroed or dumped.
pub async fn dump(pid: u32, out_prefix: &Path) -> anyhow::Result<u64> {
    let before = dumps(out_prefix)?;
    control("-d", pid)?;
    for _ in 0..100 {
        let now = dumps(out_prefix)?;
        if let Some(newest) = now.iter().filter(|p| !before.contains(p)).max() {
            // Read until its totals line (written last) is there.
            let text = std::fs::read_to_string(newest)?;
            if let Some(n) = text
                .lines()
                .find_map(|l| l.strip_prefix("totals: "))
                .and_then(|t| t.split_whitespace().next())
            {
                return Ok(n.parse()?);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "callgrind wrote no dump of {pid} to {}",
        out_prefix.display()
    )
}

/// Instructions per unit of work (a request, a message) in each of `proxies` (pid, profile),
/// one value per round for each: counters zeroed, `work` run (it returns how many units it
/// did), counters dumped.
pub async fn per_unit<F, Fut>(
    proxies: &[(u32, &Path)],
    rounds: usize,
    mut work: F,
) -> anyhow::Result<Vec<Vec<f64>>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<u64>>,
{
    let mut per_unit = vec![Vec::with_capacity(rounds); proxies.len()];
    for _ in 0..rounds {
        for &(pid, _) in proxies {
            zero(pid)?;
        }
        let units = work().await?;
        anyhow::ensure!(units > 0, "no work done in a round under callgrind");
        for (i, &(pid, profile)) in proxies.iter().enumerate() {
            per_unit[i].push(dump(pid, profile).await? as f64 / units as f64);
        }
    }
    Ok(per_unit)
}

fn dumps(out_prefix: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let dir = out_prefix.parent().context("a profile directory")?;
    let name = out_prefix
        .file_name()
        .context("a profile name")?
        .to_string_lossy()
        .into_owned()
        + ".";
    Ok(std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|f| f.to_string_lossy().starts_with(&name))
        })
        .collect())
}
