//! `palisade audit verify --dir`: a clean spool passes (exit 0), a copy with one byte
//! changed or a record removed is named (exit 1), a missing bundle is a usage error (2).

use std::path::Path;
use std::process::Command;

use palisade_contract::decisions::{CHECKPOINT_TYP, Chain, HEAD_FILE, INSTANCE_FILE, segment_name};
use palisade_contract::signing;

const ME: &str = "spiffe://palisade.local/ns/shop/sa/orders";

/// A spool of five decisions and a checkpoint, as a sidecar leaves it.
fn spool(dir: &Path, identity: &palisade_contract::tls::WorkloadIdentity) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(INSTANCE_FILE), "i1\n").unwrap();
    let mut chain = Chain::new("i1");
    let mut bytes = Vec::new();
    for i in 0..5 {
        bytes.extend(chain.decision(
            "2026-12-01T21:00:00Z",
            &serde_json::json!({"decision": "allow", "i": i}),
        ));
    }
    let note = chain.next_checkpoint_note(ME, "2026-12-01T21:00:10Z");
    let jws = signing::sign(identity, CHECKPOINT_TYP, 1_764_622_810, note.as_bytes()).unwrap();
    let checkpoint = chain.checkpoint("2026-12-01T21:00:10Z", ME, &jws);
    bytes.extend(&checkpoint);
    std::fs::write(dir.join(segment_name(0)), bytes).unwrap();
    std::fs::write(dir.join(HEAD_FILE), checkpoint).unwrap();
}

fn verify(bundle: Option<&Path>, dir: &Path) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_palisade"));
    if let Some(b) = bundle {
        cmd.args(["--ca-bundle", &b.display().to_string()]);
    }
    let out = cmd
        .args(["audit", "verify", "--dir", &dir.display().to_string()])
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn verify_passes_a_clean_spool_and_names_what_was_altered() {
    let tmp = tempfile::tempdir().unwrap();
    let (ca_pem, identity) = signing::test_identity_pem(ME);
    let bundle = tmp.path().join("bundle.pem");
    std::fs::write(&bundle, ca_pem).unwrap();
    let clean = tmp.path().join("clean");
    spool(&clean, &identity);
    let (code, out) = verify(Some(&bundle), &clean);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(ME) && out.contains(" ok"), "{out}");

    // One stored byte changed in a copy.
    let changed = tmp.path().join("changed");
    spool(&changed, &identity);
    let segment = changed.join(segment_name(0));
    let text = std::fs::read_to_string(&segment).unwrap();
    std::fs::write(&segment, text.replacen("\"i\":1", "\"i\":7", 1)).unwrap();
    let (code, out) = verify(Some(&bundle), &changed);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("record 2 does not link"), "{out}");

    // A record removed.
    let removed = tmp.path().join("removed");
    spool(&removed, &identity);
    let segment = removed.join(segment_name(0));
    let text = std::fs::read_to_string(&segment).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.contains("\"seq\":3,")).collect();
    std::fs::write(&segment, lines.join("\n") + "\n").unwrap();
    let (code, out) = verify(Some(&bundle), &removed);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("record 3 is missing"), "{out}");

    // Another CA's bundle: the checkpoint is not trusted.
    let (other_pem, _) = signing::test_identity_pem(ME);
    let other = tmp.path().join("other.pem");
    std::fs::write(&other, other_pem).unwrap();
    let (code, out) = verify(Some(&other), &clean);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not trusted"), "{out}");

    // No bundle, or no directory: usage errors.
    let (code, out) = verify(None, &clean);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("needs --ca-bundle"), "{out}");
    let (code, out) = verify(Some(&bundle), &tmp.path().join("nowhere"));
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("not a directory"), "{out}");
}
