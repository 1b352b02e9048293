//! The `palisade-proxy` binary itself: flags and exit codes.

use tokio::process::Command;

#[tokio::test]
async fn bad_settings_are_all_reported_with_exit_status_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_palisade-proxy"))
        .args([
            "--ca-bundle",
            "/nonexistent.pem",
            "--control-plane",
            "nohost",
        ])
        .env_clear()
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "--ca-bundle /nonexistent.pem",
        "host:port",
        "--token-file or --identity-dir",
    ] {
        assert!(
            stderr.contains(expected),
            "{expected} missing from: {stderr}"
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
