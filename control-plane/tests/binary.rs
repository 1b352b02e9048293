//! The `palisade-control-plane` binary itself: flags, exit codes, graceful shutdown.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_palisade-control-plane");

#[tokio::test]
async fn bad_settings_are_all_reported_with_exit_status_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--workload-ttl",
            "0s",
            "--database-url",
            "mysql://x",
            "--k8s-issuer",
            "https://k8s",
        ])
        .env_clear()
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in ["--workload-ttl", "--database-url", "--k8s-issuer needs"] {
        assert!(
            stderr.contains(expected),
            "{expected} missing from: {stderr}"
        );
    }
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "nothing was created"
    );
}

#[tokio::test]
async fn starts_then_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args([
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
            "--sidecar-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .env_clear()
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let event: serde_json::Value = serde_json::from_str(&line).expect("JSON log lines");
            if event["message"] == "control plane ready" {
                return event;
            }
        }
        panic!("exited before it was ready");
    })
    .await
    .unwrap();
    assert_eq!(ready["trust_domain"], "palisade.local");
    assert!(dir.path().join("data/admin-token").exists());

    let pid = child.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn the_keys_subcommand_makes_a_kek_and_refuses_a_directory_without_keys() {
    let out = Command::new(BIN)
        .args(["keys", "new-kek"])
        .env_clear()
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let kek = String::from_utf8(out.stdout).unwrap();
    palisade_control_plane::keys::Kek::from_base64(&kek, "stdout").expect("a usable KEK");

    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "keys",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "migrate",
            "--to",
            "envelope",
        ])
        .env_clear()
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no key files here"), "{stderr}");
}

/// The binary on `data` with its keys in the token labelled `label`, logging in with the
/// PIN in `pin_file`.
fn with_token(
    data: &std::path::Path,
    token: &palisade_control_plane::keys::softhsm::TestToken,
    pin_file: &std::path::Path,
    label: &str,
) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(["--data-dir", data.to_str().unwrap()])
        .args(["--sidecar-listen", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0"])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .args(["--log-format", "json"])
        .args(["--ca-key-source", "pkcs11", "--token-key-source", "pkcs11"])
        .arg("--pkcs11-module")
        .arg(&token.settings.module)
        .args(["--pkcs11-token", label])
        .arg("--pkcs11-pin-file")
        .arg(pin_file)
        .env_clear()
        // The test's SoftHSM2 configuration (.cargo/config.toml), so the child sees the token.
        .env("SOFTHSM2_CONF", std::env::var_os("SOFTHSM2_CONF").unwrap());
    command
}

#[tokio::test]
async fn a_wrong_pin_or_a_missing_token_stops_the_start_with_the_reason_and_changes_nothing() {
    let token = palisade_control_plane::keys::softhsm::TestToken::new("binary");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let label = token.settings.label.clone();
    // With the right PIN it starts, making its keys in the token.
    let mut child = with_token(&data, &token, &token.settings.pin_file, &label)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("control plane ready") {
                return;
            }
        }
        panic!("exited before it was ready");
    })
    .await
    .unwrap();
    child.kill().await.unwrap();
    let snapshot = || {
        ["ca/ca-key.pem", "ca/ca-cert.pem", "token-signing-key.pem"]
            .map(|f| std::fs::read(data.join(f)).unwrap())
    };
    let before = snapshot();

    let wrong = dir.path().join("wrong-pin");
    std::fs::write(&wrong, "0000\n").unwrap();
    let out = with_token(&data, &token, &wrong, &label)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("wrong-pin is wrong"), "{stderr}");
    let out = with_token(&data, &token, &token.settings.pin_file, "gone")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("PKCS#11 token \"gone\"")
            && stderr.contains("no initialised token has this label"),
        "{stderr}"
    );
    assert_eq!(snapshot(), before, "nothing on disk changed");
}
