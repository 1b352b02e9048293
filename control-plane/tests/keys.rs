//! Keys at rest, end to end: a control plane whose CA and token keys are envelopes on disk
//! issues certificates and tokens as before, and refuses to start, saying why and changing
//! nothing, with a wrong key-encryption key or a damaged key file.

mod support;

use std::path::Path;

use palisade_control_plane::keys::{Kek, KeySource, open_envelope};
use palisade_control_plane::{Config, start};
use support::{Harness, csr};

fn kek_file(dir: &Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, Kek::generate_base64().as_bytes()).unwrap();
    path
}

fn envelope_config(config: &mut Config, kek: &Path) {
    config.ca_key_source = KeySource::Envelope;
    config.token_key_source = KeySource::Envelope;
    config.key_encryption_key_file = Some(kek.to_path_buf());
}

/// The DER of the PKCS#8 key inside a PEM.
fn der_of(pem: &str) -> Vec<u8> {
    use base64::Engine as _;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn enveloped_keys_hold_no_plaintext_and_open_only_with_their_kek() {
    let outside = tempfile::tempdir().unwrap();
    let kek = kek_file(outside.path(), "kek");
    let mut h = Harness::start_with(|c| envelope_config(c, &kek)).await;
    // It works as before: a join token (signed by the token key), a certificate (by the CA).
    let join = h.join_token("shop", "orders").await;
    let (status, issued) = h.issue(Some(&join), &csr().1).await;
    assert_eq!(status, http::StatusCode::OK, "{issued}");
    let token = h.admin_token();
    let (_, status) = h
        .admin(http::Method::GET, "/v1/ca", Some(&token), None)
        .await;
    assert!(
        status["keyProtection"]
            .as_str()
            .unwrap()
            .starts_with("envelope"),
        "{status}"
    );
    let metrics = h.metrics().await;
    for key in ["ca", "token"] {
        let series = format!("palisade_ca_key_protected{{key=\"{key}\"}}");
        assert_eq!(support::sample(&metrics, &series), 1.0, "{metrics}");
    }
    h.stop().await;

    let data = h.config.data_dir.clone();
    let files = [
        (data.join("ca/ca-key.pem"), "ca"),
        (data.join("token-signing-key.pem"), "token"),
    ];
    let opened = Kek::from_file(&kek).unwrap();
    for (path, purpose) in &files {
        let on_disk = std::fs::read(path).unwrap();
        let pem = open_envelope(&on_disk, path, purpose, &opened).unwrap();
        let der = der_of(&pem);
        assert!(
            !contains(&on_disk, &der),
            "{}: the key's DER is on disk",
            path.display()
        );
        assert!(!contains(&on_disk, pem.as_bytes()), "{}", path.display());
        assert!(!contains(&on_disk, b"PRIVATE KEY"), "{}", path.display());
    }
    let ca_cert = std::fs::read(data.join("ca/ca-cert.pem")).unwrap();

    // Each way it can go wrong stops the start with the reason, and changes nothing.
    let before: Vec<Vec<u8>> = files
        .iter()
        .map(|(p, _)| std::fs::read(p).unwrap())
        .collect();
    let wrong = kek_file(outside.path(), "other-kek");
    let refused = async |configure: &dyn Fn(&mut Config)| {
        let mut config = h.config.clone();
        configure(&mut config);
        start(&config).await.map(|_| ()).unwrap_err().to_string()
    };
    let why = refused(&|c| c.key_encryption_key_file = Some(wrong.clone())).await;
    assert!(why.contains("wrong KEK"), "{why}");
    let why = refused(&|c| {
        c.ca_key_source = KeySource::File;
        c.token_key_source = KeySource::File;
    })
    .await;
    assert!(why.contains("envelope-encrypted"), "{why}");
    for (path, _) in &files {
        assert_eq!(
            std::fs::read(path).unwrap(),
            before[files.iter().position(|(p, _)| p == path).unwrap()]
        );
    }
    // A flipped byte inside the sealed key, and a truncated file.
    let ca_key = &files[0].0;
    let text = String::from_utf8(before[0].clone()).unwrap();
    let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
    let sealed = value["ciphertext"].as_str().unwrap().to_owned();
    let flipped = {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut bytes = b64.decode(&sealed).unwrap();
        bytes[20] ^= 0x80;
        b64.encode(bytes)
    };
    value["ciphertext"] = flipped.into();
    std::fs::write(ca_key, value.to_string()).unwrap();
    let why = refused(&|_| {}).await;
    assert!(why.contains("was changed"), "{why}");
    std::fs::write(ca_key, &before[0][..before[0].len() / 2]).unwrap();
    let why = refused(&|_| {}).await;
    assert!(why.contains("truncated or damaged"), "{why}");

    // Restored, it starts again with the same CA.
    std::fs::write(ca_key, &before[0]).unwrap();
    h.restart().await;
    assert_eq!(std::fs::read(data.join("ca/ca-cert.pem")).unwrap(), ca_cert);
    let (status, _) = h
        .issue(Some(&h.join_token("shop", "payments").await), &csr().1)
        .await;
    assert_eq!(status, http::StatusCode::OK);
}

#[tokio::test]
async fn an_envelope_without_a_kek_or_with_the_kek_in_the_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut config = Config::for_data_dir(data.clone());
    config.ca_key_source = KeySource::Envelope;
    let problems = config.validate().unwrap_err();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("needs the key-encryption key")),
        "{problems:?}"
    );
    config.key_encryption_key_file = Some(kek_file(&data, "kek"));
    let problems = config.validate().unwrap_err();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("is inside the data directory")),
        "{problems:?}"
    );
}
