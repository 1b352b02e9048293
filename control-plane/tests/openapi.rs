//! The admin API answers as its OpenAPI document says: schemathesis (PyPI, installed by
//! `scripts/services`) runs its default checks against `control-plane/openapi.json` and a
//! running control plane, authenticated, bounded in examples. Longer runs: see the README
//! (Admin API).

use std::time::Duration;

use palisade_control_plane::Config;

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_answers_as_its_openapi_document_says() {
    let dir = tempfile::tempdir().unwrap();
    let cp = palisade_control_plane::start(&Config::for_data_dir(dir.path().join("data")))
        .await
        .unwrap();
    let token = cp.admin_token().unwrap();
    let here = env!("CARGO_MANIFEST_DIR");
    let work = tempfile::tempdir().unwrap();
    let run = tokio::process::Command::new("schemathesis")
        .current_dir(work.path())
        .args([
            "--config-file",
            &format!("{here}/tests/schemathesis/schemathesis.toml"),
            "run",
            &format!("{here}/openapi.json"),
            "--url",
            &format!("http://{}", cp.admin_addr),
            "-H",
            &format!("Authorization: Bearer {token}"),
            "--max-examples",
            "25",
            "--seed",
            "20261201",
            // Revoking tokens is tested on its own (cli/tests/cli.rs); here the stateful
            // phase would revoke the very token the run authenticates with.
            "--exclude-path",
            "/v1/admin-tokens/{id}",
            "--no-color",
        ])
        .env("SCHEMATHESIS_HOOKS", "")
        .output();
    let out = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("schemathesis finished within 10 minutes")
        .expect("schemathesis is installed (./scripts/services installs it)");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Passing because everything was refused would prove nothing.
    assert!(
        !report.contains("Authentication failed"),
        "the run lost its authentication:\n{report}"
    );
    let generated: u64 = report
        .lines()
        .find_map(|l| l.trim().split_once(" generated,"))
        .map(|(n, _)| n)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(generated > 100, "too few test cases ran:\n{report}");
    cp.shutdown().await;
}
