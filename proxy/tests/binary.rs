//! The `palisade-proxy` binary itself: flags and exit codes.

use tokio::process::Command;

#[tokio::test]
async fn bad_settings_are_all_reported_with_exit_status_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_palisade-proxy"))
        .args([
            "--ca-bundle",
            "/nonexistent.pem",
            "--idle-timeout",
            "1ms",
            "--connection-drain",
            "1h",
        ])
        .env_clear()
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "--ca-bundle /nonexistent.pem",
        "--idle-timeout",
        "--connection-drain must be at most 10m",
        "--token-file or --identity-dir",
    ] {
        assert!(
            stderr.contains(expected),
            "{expected} missing from: {stderr}"
        );
    }
    // A control plane that is neither a URL nor host:port is refused at start, not looked
    // up as a host name and retried forever.
    for bad in ["nohost", "http://127.0.0.1:15012", "https://127.0.0.1"] {
        let run = Command::new(env!("CARGO_BIN_EXE_palisade-proxy"))
            .args(["--ca-bundle", "/nonexistent.pem", "--control-plane", bad])
            .env_clear()
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(std::time::Duration::from_secs(10), run)
            .await
            .unwrap_or_else(|_| panic!("{bad}: the sidecar kept running instead of refusing it"))
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("--control-plane") && stderr.contains("https://host:port"),
            "{bad}: {stderr}"
        );
    }
    let help = Command::new(env!("CARGO_BIN_EXE_palisade-proxy"))
        .arg("--help")
        .output()
        .await
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("PALISADE_CA_BUNDLE") && help.contains("[default: 0.0.0.0:15090]"),
        "{help}"
    );
}
