//! Keys at rest, end to end: a control plane whose CA and token keys are envelopes on disk
//! issues certificates and tokens as before, and refuses to start, saying why and changing
//! nothing, with a wrong key-encryption key or a damaged key file. Keys in a PKCS#11 token
//! (a real SoftHSM2 token, one per test) sign there and never reach the disk.

mod support;

use std::path::Path;

use cryptoki::object::Attribute;
use palisade_control_plane::keys::softhsm::TestToken;
use palisade_control_plane::keys::{Kek, KeySource, Token, open_envelope};
use palisade_control_plane::keys_cli::{KeysCli, KeysCommand};
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
    // A token source needs all three of the token's settings.
    let mut config = Config::for_data_dir(data.clone());
    config.token_key_source = KeySource::Pkcs11;
    config.pkcs11_module = Some("/usr/lib/softhsm/libsofthsm2.so".into());
    let problems = config.validate().unwrap_err();
    assert!(
        problems.iter().any(|p| p.contains(
            "a pkcs11 key source needs --pkcs11-module, --pkcs11-token and --pkcs11-pin-file"
        )),
        "{problems:?}"
    );
}

fn pkcs11_config(config: &mut Config, token: &TestToken) {
    config.ca_key_source = KeySource::Pkcs11;
    config.token_key_source = KeySource::Pkcs11;
    config.set_token_settings(&token.settings);
}

/// What the token says when asked, over PKCS#11, for the private value of the key a
/// reference file names: the attributes it returned (none, for a key it keeps).
fn private_value_from_token(token: &TestToken, reference: &serde_json::Value) -> Vec<Attribute> {
    let id = hex::decode(reference["id"].as_str().unwrap()).unwrap();
    Token::open(&token.settings)
        .unwrap()
        .private_value(&id)
        .unwrap()
}

fn verify_issued(h: &Harness, issued: &serde_json::Value) {
    let chain = palisade_contract::certs::certs_from_pem(
        issued["certificateChain"].as_str().unwrap().as_bytes(),
    )
    .unwrap();
    h.bundle()
        .load()
        .verify_workload(
            &chain[0],
            &chain[1..],
            rustls_pki_types::UnixTime::now(),
            palisade_contract::tls::KeyUsage::client_auth(),
        )
        .expect("the certificate verifies against the trust bundle");
}

#[tokio::test]
async fn keys_generated_in_a_token_sign_there_and_never_reach_the_disk() {
    let token = TestToken::new("cp");
    let mut h = Harness::start_with(|c| pkcs11_config(c, &token)).await;
    let join = h.join_token("shop", "orders").await;
    let (status, issued) = h.issue(Some(&join), &csr().1).await;
    assert_eq!(status, http::StatusCode::OK, "{issued}");
    verify_issued(&h, &issued);
    let admin = h.admin_token();
    let (_, status) = h
        .admin(http::Method::GET, "/v1/ca", Some(&admin), None)
        .await;
    let protection = status["keyProtection"].as_str().unwrap();
    assert!(protection.starts_with("pkcs11"), "{status}");
    let metrics = h.metrics().await;
    for key in ["ca", "token"] {
        let series = format!("palisade_ca_key_protected{{key=\"{key}\"}}");
        assert_eq!(support::sample(&metrics, &series), 1.0, "{metrics}");
    }
    // A join token signed before the restart, to be redeemed after it.
    let later = h.join_token("shop", "payments").await;
    h.stop().await;

    // On disk: references naming keys the token keeps, and will not give out.
    let data = h.config.data_dir.clone();
    for file in ["ca/ca-key.pem", "token-signing-key.pem"] {
        let text = std::fs::read_to_string(data.join(file)).unwrap();
        assert!(!text.contains("PRIVATE KEY"), "{file}: {text}");
        let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(reference["token"], token.settings.label.as_str(), "{text}");
        let value = private_value_from_token(&token, &reference);
        assert!(value.is_empty(), "{file}: the token gave out {value:?}");
    }

    // Restarted, the same CA signs with the same keys.
    let ca_cert = std::fs::read(data.join("ca/ca-cert.pem")).unwrap();
    h.restart().await;
    assert_eq!(std::fs::read(data.join("ca/ca-cert.pem")).unwrap(), ca_cert);
    let (status, issued) = h.issue(Some(&later), &csr().1).await;
    assert_eq!(status, http::StatusCode::OK, "{issued}");
    verify_issued(&h, &issued);

    // A rotation makes the next root's key in the token too.
    let (status, body) = h
        .admin(
            http::Method::POST,
            "/v1/ca/rotation/prepare",
            Some(&h.admin_token()),
            None,
        )
        .await;
    assert_eq!(status, http::StatusCode::OK, "{body}");
    let next = std::fs::read_to_string(data.join("ca/next-key.pem")).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&next).unwrap();
    assert!(private_value_from_token(&token, &reference).is_empty());
    h.stop().await;

    // Started expecting another source, or with a token that is not there: refused, saying
    // why, and nothing on disk changes.
    let before = std::fs::read(data.join("ca/ca-key.pem")).unwrap();
    let refused = async |configure: &dyn Fn(&mut Config)| {
        let mut config = h.config.clone();
        configure(&mut config);
        start(&config).await.map(|_| ()).unwrap_err().to_string()
    };
    let why = refused(&|c| {
        c.ca_key_source = KeySource::File;
        c.token_key_source = KeySource::File;
    })
    .await;
    assert!(why.contains("kept in a PKCS#11 token"), "{why}");
    let why = refused(&|c| c.pkcs11_token = Some("no-such-token".into())).await;
    assert!(why.contains("no initialised token has this label"), "{why}");
    assert_eq!(std::fs::read(data.join("ca/ca-key.pem")).unwrap(), before);
}

#[tokio::test]
async fn plain_keys_migrate_into_a_token_keeping_the_ca_and_never_migrate_out() {
    let token = TestToken::new("migrate");
    let mut h = Harness::start().await;
    let later = h.join_token("shop", "orders").await;
    h.stop().await;
    let data = h.config.data_dir.clone();
    let ca_cert = std::fs::read(data.join("ca/ca-cert.pem")).unwrap();
    let plain = std::fs::read_to_string(data.join("ca/ca-key.pem")).unwrap();

    let mut to = h.config.clone();
    pkcs11_config(&mut to, &token);
    let cli = |config: &Config, command: KeysCommand| KeysCli {
        config: config.clone(),
        command,
    };
    let done = cli(
        &h.config,
        KeysCommand::Migrate {
            to: KeySource::Pkcs11,
            kek: Default::default(),
        },
    );
    // The target's token settings come from the same flags.
    let done = KeysCli {
        config: Config {
            pkcs11_module: to.pkcs11_module.clone(),
            pkcs11_token: to.pkcs11_token.clone(),
            pkcs11_pin_file: to.pkcs11_pin_file.clone(),
            ..done.config
        },
        ..done
    }
    .run()
    .unwrap();
    assert_eq!(done.len(), 2, "{done:?}");
    assert!(
        done.iter().all(|l| l.contains("file -> pkcs11")),
        "{done:?}"
    );
    let reference = std::fs::read_to_string(data.join("ca/ca-key.pem")).unwrap();
    assert!(!reference.contains("PRIVATE KEY"), "{reference}");
    assert!(!contains(reference.as_bytes(), &der_of(&plain)));

    h.config = to.clone();
    h.restart().await;
    assert_eq!(std::fs::read(data.join("ca/ca-cert.pem")).unwrap(), ca_cert);
    let (status, issued) = h.issue(Some(&later), &csr().1).await;
    assert_eq!(status, http::StatusCode::OK, "{issued}");
    verify_issued(&h, &issued);
    let (_, entries) = h
        .admin(http::Method::GET, "/v1/audit", Some(&h.admin_token()), None)
        .await;
    assert!(
        entries.to_string().contains("pkcs11 (token"),
        "the migration is in the audit trail: {entries}"
    );
    h.stop().await;

    // Out of the token: refused, nothing written.
    let err = cli(
        &to,
        KeysCommand::Migrate {
            to: KeySource::File,
            kek: Default::default(),
        },
    )
    .run()
    .unwrap_err()
    .to_string();
    assert!(err.contains("never leaves it"), "{err}");
    assert_eq!(
        std::fs::read_to_string(data.join("ca/ca-key.pem")).unwrap(),
        reference
    );
}

#[tokio::test]
async fn envelopes_can_be_sealed_by_a_kek_that_never_leaves_the_token() {
    let token = TestToken::new("tokenkek");
    let outside = tempfile::tempdir().unwrap();
    let with_token = |c: &mut Config| {
        c.ca_key_source = KeySource::Envelope;
        c.token_key_source = KeySource::Envelope;
        c.set_token_settings(&token.settings);
        c.key_encryption_key_pkcs11 = Some("palisade-kek".into());
    };
    let mut plain = Config::for_data_dir(outside.path().join("unused"));
    with_token(&mut plain);
    let made = KeysCli {
        config: plain.clone(),
        command: KeysCommand::NewKek {
            in_token: Some("palisade-kek".into()),
        },
    }
    .run()
    .unwrap();
    assert!(
        made[0].contains("--key-encryption-key-pkcs11 palisade-kek"),
        "{made:?}"
    );

    let mut h = Harness::start_with(with_token).await;
    let (status, issued) = h
        .issue(Some(&h.join_token("shop", "orders").await), &csr().1)
        .await;
    assert_eq!(status, http::StatusCode::OK, "{issued}");
    verify_issued(&h, &issued);
    h.stop().await;
    let data = h.config.data_dir.clone();
    let kek = h.config.kek().unwrap();
    for (file, purpose) in [("ca/ca-key.pem", "ca"), ("token-signing-key.pem", "token")] {
        let on_disk = std::fs::read(data.join(file)).unwrap();
        let envelope: serde_json::Value = serde_json::from_slice(&on_disk).unwrap();
        assert_eq!(envelope["kek"], kek.id(), "{file}");
        let pem = open_envelope(&on_disk, &data.join(file), purpose, kek.as_ref()).unwrap();
        assert!(
            !contains(&on_disk, &der_of(&pem)),
            "{file}: the key's DER is on disk"
        );
    }
    let ca_cert = std::fs::read(data.join("ca/ca-cert.pem")).unwrap();

    // Rewrapped under a KEK file: the token's KEK no longer opens them, the file's does.
    let file_kek = kek_file(outside.path(), "kek");
    let done = KeysCli {
        config: h.config.clone(),
        command: KeysCommand::Rewrap {
            kek: palisade_control_plane::keys_cli::TargetKek {
                to_key_encryption_key_file: Some(file_kek.clone()),
                to_key_encryption_key_pkcs11: None,
            },
        },
    }
    .run()
    .unwrap();
    assert_eq!(done.len(), 2, "{done:?}");
    let err = start(&h.config).await.map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("wrong KEK"), "{err}");
    h.config.key_encryption_key_pkcs11 = None;
    h.config.key_encryption_key_file = Some(file_kek);
    h.restart().await;
    assert_eq!(std::fs::read(data.join("ca/ca-cert.pem")).unwrap(), ca_cert);
}
