//! Throwaway SoftHSM2 tokens for the tests and the benchmark (feature `test-support`): the
//! `pkcs11` key source is tested against a real PKCS#11 implementation, not a mock.
//!
//! Two properties of SoftHSM2 shape this. It reads its configuration (`SOFTHSM2_CONF`) once
//! per process: `.cargo/config.toml` points the processes cargo starts at
//! `scripts/softhsm2-test.conf`, whose token directory is [`TOKEN_DIR`]. And a process sees
//! the tokens that existed when it initialised the library plus those it initialised itself,
//! not those another process made since. So tokens are made through the library in the test
//! process (`C_InitToken` on the free slot, then `C_InitPIN`), one at a time; a child process
//! started afterwards sees them. Tokens are never deleted while a process may hold them: ones
//! older than an hour are removed before this process first loads the library.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use cryptoki::session::UserType;
use cryptoki::types::AuthPin;

use super::TokenSettings;
use super::pkcs11::library;

/// Where `scripts/softhsm2-test.conf` keeps the tokens.
pub const TOKEN_DIR: &str = "/tmp/palisade-softhsm/tokens";

/// Where Debian's package puts the module (and where other distributions do).
const MODULES: [&str; 3] = [
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
];

/// SoftHSM2's PKCS#11 module on this machine.
pub fn module() -> PathBuf {
    MODULES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("SoftHSM2 is not installed: run scripts/services (apt-get install softhsm2)")
}

/// A token initialised for one test (its PIN in a file of its own, `settings.pin_file`).
#[derive(Debug)]
pub struct TestToken {
    pub settings: TokenSettings,
}

fn remove_stale_tokens(dir: &Path) {
    let hour = std::time::Duration::from_secs(3600);
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().unwrap_or_default() > hour);
        if old {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl TestToken {
    /// A new token whose label starts with `prefix` (at most 16 bytes).
    pub fn new(prefix: &str) -> Self {
        static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
        static PREPARED: OnceLock<()> = OnceLock::new();
        let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        PREPARED.get_or_init(|| {
            std::fs::create_dir_all(TOKEN_DIR).expect("creating the SoftHSM2 token directory");
            remove_stale_tokens(Path::new(TOKEN_DIR));
        });
        let id = crate::tokens::random_id().unwrap();
        let label = format!("{prefix}-{}", &id[..12]);
        assert!(label.len() <= 32, "token labels are at most 32 bytes");
        let pin = format!("pin-{}", &id[12..]);
        let so_pin = format!("so-{id}");
        let module = module();
        let pkcs11 = library(&module).unwrap();
        let slot = pkcs11
            .get_slots_with_token()
            .unwrap()
            .into_iter()
            .find(|s| {
                pkcs11
                    .get_token_info(*s)
                    .is_ok_and(|i| !i.token_initialized())
            })
            .expect("SoftHSM2 offers a free slot");
        pkcs11
            .init_token(slot, &AuthPin::new(so_pin.clone().into()), &label)
            .unwrap();
        let session = pkcs11.open_rw_session(slot).unwrap();
        session
            .login(UserType::So, Some(&AuthPin::new(so_pin.clone().into())))
            .unwrap();
        session.init_pin(&AuthPin::new(pin.clone().into())).unwrap();
        session.logout().unwrap();
        drop(session);
        let pin_file = std::env::temp_dir().join(format!("palisade-{label}.pin"));
        palisade_contract::private_files::write_atomic(
            &pin_file,
            format!("{pin}\n").as_bytes(),
            true,
        )
        .unwrap();
        Self {
            settings: TokenSettings {
                module,
                label,
                pin_file,
            },
        }
    }
}

impl Drop for TestToken {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.settings.pin_file);
    }
}
