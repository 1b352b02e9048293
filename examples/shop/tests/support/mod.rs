//! Shared by the tests that check deployment files' command lines.

/// Runs `palisade-shop ARGS --check` (parse the arguments, then exit) and fails the test
/// with the binary's own message if they do not parse.
pub fn check_shop_args(args: &[String], what: &str) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_palisade-shop"))
        .args(args)
        .arg("--check")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
