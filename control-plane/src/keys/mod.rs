//! Private keys at rest: the CA signing key and the token-signing key, kept as plain PKCS#8
//! files (`file`, as SPIRE's default `disk` key manager), envelope-encrypted (`envelope`), or
//! in a PKCS#11 token that never lets them out (`pkcs11`, [`pkcs11`]).
//!
//! Whoever reads a plain key file (a backup, a volume snapshot, a copied Secret) can mint
//! certificates for any workload, or admin tokens for any role. An envelope file holds the
//! key encrypted with a random data key (AES-256-GCM), and beside it that data key wrapped
//! by a key-encryption key (KEK) that is kept elsewhere: a file outside the data directory
//! or an environment variable. The data directory alone then yields nothing; the decrypted
//! key lives only in memory ([`PrivateKey`], zeroed when dropped). A key in a token is not
//! in memory at all: the token signs, and the data directory holds only a reference.
//!
//! Whatever the source, the rest of the control plane signs through [`PrivateKey`] and never
//! learns where the key lives.
//!
//! The envelope is bound to its purpose (the CA key or the token key) and to its KEK's id,
//! so a file swapped for another's, sealed with another KEK, truncated or with one byte
//! changed is refused with the reason, and nothing on disk is changed.
//!
//! Format (JSON, one object):
//! `{"palisadeEnvelope": 1, "purpose": "ca-key", "kek": "<16 hex: SHA-256 of the KEK>",
//!   "wrappedKey": "<base64: nonce || AES-256-GCM(KEK, data key)>",
//!   "ciphertext": "<base64: nonce || AES-256-GCM(data key, PKCS#8 PEM)>"}`
//! with the additional data `palisade-envelope-v1 <purpose> key|data` on each seal.

pub mod pkcs11;
pub mod signing;
#[cfg(any(test, feature = "test-support"))]
pub mod softhsm;

pub use palisade_contract::envelope::{EnvelopeError, Kek, KeyWrap, envelope, open_envelope};
pub use pkcs11::{Token, TokenSettings};
pub use signing::PrivateKey;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Where a private key is kept (`--ca-key-source`, `--token-key-source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeySource {
    /// A plain PKCS#8 PEM file (mode 0600): readable by anyone who reads the data directory.
    File,
    /// Encrypted with a data key wrapped by the key-encryption key.
    Envelope,
    /// Generated in (or imported into) a PKCS#11 token, which signs; never leaves it.
    Pkcs11,
}

impl KeySource {
    /// What `palisade ca status` and the metrics say about it.
    pub fn protection(self) -> &'static str {
        match self {
            KeySource::File => "unprotected (plain file)",
            KeySource::Envelope => "envelope (AES-256-GCM, KEK held outside the data directory)",
            KeySource::Pkcs11 => "pkcs11 (generated in a PKCS#11 token; the key never leaves it)",
        }
    }

    /// Whether a copy of the data directory is enough to use the key.
    pub fn is_protected(self) -> bool {
        self != KeySource::File
    }
}

/// How a key is stored, with what that needs: the KEK for an envelope, the opened token for
/// `pkcs11`.
#[derive(Debug, Clone)]
pub enum KeyStorage {
    File,
    Envelope(Arc<dyn KeyWrap>),
    Pkcs11(Arc<Token>),
}

impl KeyStorage {
    pub fn source(&self) -> KeySource {
        match self {
            KeyStorage::File => KeySource::File,
            KeyStorage::Envelope(_) => KeySource::Envelope,
            KeyStorage::Pkcs11(_) => KeySource::Pkcs11,
        }
    }

    /// How the migration record names it.
    pub fn describe(&self) -> String {
        match self {
            KeyStorage::File => "file".to_owned(),
            KeyStorage::Envelope(kek) => format!("envelope (KEK {})", kek.id()),
            KeyStorage::Pkcs11(token) => format!("pkcs11 (token \"{}\")", token.label()),
        }
    }

    /// What to write in the key file for `key`, the key for `purpose`. For a token, the key
    /// is imported into it (and a reference is written).
    pub fn store(&self, key: &PrivateKey, purpose: &str) -> Result<Zeroizing<String>, KeyError> {
        let pem = || {
            key.to_pkcs8_pem()
                .ok_or_else(|| KeyError::Refused("a key in a token cannot be written out".into()))
        };
        match self {
            KeyStorage::File => pem(),
            KeyStorage::Envelope(kek) => {
                Ok(Zeroizing::new(envelope(&pem()?, purpose, kek.as_ref())?))
            }
            KeyStorage::Pkcs11(token) => Ok(Zeroizing::new(token.import(key, purpose)?)),
        }
    }

    /// A new key for `purpose`, kept as this storage keeps keys (in the token, for a token),
    /// with what to write in its key file.
    pub fn generate(&self, purpose: &str) -> Result<(PrivateKey, Zeroizing<String>), KeyError> {
        if let KeyStorage::Pkcs11(token) = self {
            let (key, reference) = token.generate(purpose)?;
            return Ok((key, Zeroizing::new(reference)));
        }
        let key = PrivateKey::generate();
        let contents = self.store(&key, purpose)?;
        Ok((key, contents))
    }

    /// A new key for `purpose`, written to `path` (mode 0600, atomically).
    pub fn create(&self, path: &Path, purpose: &str) -> Result<PrivateKey, KeyError> {
        let (key, contents) = self.generate(purpose)?;
        write_private(path, contents.as_bytes())?;
        Ok(key)
    }
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), KeyError> {
    palisade_contract::private_files::write_atomic(path, contents, true)
        .map_err(|source| KeyError::io(path.to_path_buf(), source))
}

/// Why a key could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A key file (plain, envelope or reference) or a KEK that cannot be used.
    #[error(transparent)]
    Stored(#[from] EnvelopeError),
    #[error("PKCS#11 token \"{token}\" ({module}): {reason}")]
    Token {
        token: String,
        module: PathBuf,
        reason: String,
    },
    /// Anything else that stops a key from being used or moved, with the reason.
    #[error("{0}")]
    Refused(String),
}

impl KeyError {
    /// `path` holds a key that cannot be used, for `reason`.
    pub fn stored(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        EnvelopeError::Envelope {
            path: path.into(),
            reason: reason.into(),
        }
        .into()
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EnvelopeError::Io {
            path: path.into(),
            source,
        }
        .into()
    }

    pub fn bad_kek(origin: impl Into<String>, reason: impl Into<String>) -> Self {
        EnvelopeError::BadKek {
            origin: origin.into(),
            reason: reason.into(),
        }
        .into()
    }
}

/// What a key file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stored {
    /// A plain PKCS#8 PEM.
    Plain,
    Envelope,
    /// A reference to a key in a PKCS#11 token.
    Reference,
}

fn stored_form(bytes: &[u8]) -> Stored {
    if !palisade_contract::envelope::looks_sealed(bytes) {
        Stored::Plain
    } else if pkcs11::Reference::is_reference(bytes) {
        Stored::Reference
    } else {
        Stored::Envelope
    }
}

/// Whether `bytes` (a key file's contents) is an envelope rather than a plain PEM key.
pub fn is_envelope(bytes: &[u8]) -> bool {
    stored_form(bytes) == Stored::Envelope
}

/// The private key at `path`, kept as `storage` says: in memory only for a file or an
/// envelope, in its token for a reference. A key stored one way where another is expected is
/// refused with the reason, not guessed.
pub fn load_key(path: &Path, purpose: &str, storage: &KeyStorage) -> Result<PrivateKey, KeyError> {
    let bytes = Zeroizing::new(
        std::fs::read(path).map_err(|source| KeyError::io(path.to_path_buf(), source))?,
    );
    let bad = |reason: String| KeyError::stored(path.to_path_buf(), reason);
    let pem = |text: &str| PrivateKey::from_pkcs8_pem(text).map_err(bad);
    match (storage, stored_form(&bytes)) {
        (KeyStorage::File, Stored::Plain) => {
            pem(&Zeroizing::new(String::from_utf8_lossy(&bytes).into_owned()))
        }
        (KeyStorage::Envelope(kek), Stored::Envelope) => {
            pem(&open_envelope(&bytes, path, purpose, kek.as_ref())?)
        }
        (KeyStorage::Pkcs11(token), Stored::Reference) => {
            let reference = pkcs11::Reference::parse(&bytes, path, purpose)?;
            token.key(&reference).map_err(|e| bad(e.to_string()))
        }
        (_, Stored::Envelope) => Err(bad(
            "the key is envelope-encrypted: start with --*-key-source envelope and its KEK".into(),
        )),
        (_, Stored::Reference) => Err(bad(
            "the key is kept in a PKCS#11 token: start with --*-key-source pkcs11 and the token's settings".into(),
        )),
        (KeyStorage::Envelope(_), Stored::Plain) => Err(bad(
            "the key is a plain file, but an envelope is expected: it was not encrypted (refusing to use a key stored unprotected)".into(),
        )),
        (KeyStorage::Pkcs11(_), Stored::Plain) => Err(bad(
            "the key is a plain file, but a PKCS#11 token is expected: move it into the token with `palisade-control-plane keys migrate --to pkcs11` (refusing to use a key stored unprotected)".into(),
        )),
    }
}

/// What `keys migrate` did to one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Migrated {
    pub path: PathBuf,
    pub from: String,
    pub to: String,
}

/// The file in the data directory where offline key changes wait to be written to the
/// admin audit trail at the next start.
pub const PENDING_AUDIT_FILE: &str = "key-changes.jsonl";

/// Rewrites every key in `files` from `from` to `to` (another source, or a new KEK), then
/// reads each back with `to`. All are read, checked and converted before any is written, so
/// a wrong KEK or a damaged file changes nothing; each file is replaced atomically. The
/// change is appended to [`PENDING_AUDIT_FILE`] in `data_dir`. A key in a token never
/// leaves it, so migrating from `pkcs11` is refused.
pub fn migrate(
    data_dir: &Path,
    files: &[(PathBuf, &'static str)],
    from: &KeyStorage,
    to: &KeyStorage,
) -> Result<Vec<Migrated>, KeyError> {
    if let KeyStorage::Pkcs11(_) = from {
        return Err(KeyError::Refused(
            "the keys are in a PKCS#11 token, and a key in a token never leaves it: to stop \
             using the token, rotate the CA (palisade ca rotate) with another key source"
                .into(),
        ));
    }
    let keys: Vec<(&PathBuf, &str, PrivateKey)> = files
        .iter()
        .map(|(path, purpose)| Ok((path, *purpose, load_key(path, purpose, from)?)))
        .collect::<Result<_, KeyError>>()?;
    let converted: Vec<(&PathBuf, &str, PrivateKey, Zeroizing<String>)> = keys
        .into_iter()
        .map(|(path, purpose, key)| {
            let contents = to.store(&key, purpose)?;
            Ok((path, purpose, key, contents))
        })
        .collect::<Result<_, KeyError>>()?;
    let mut done = Vec::new();
    for (path, purpose, key, contents) in converted {
        write_private(path, contents.as_bytes())?;
        if load_key(path, purpose, to)?.public_key_raw() != key.public_key_raw() {
            return Err(KeyError::stored(
                path.clone(),
                "the rewritten key does not read back as the original",
            ));
        }
        done.push(Migrated {
            path: path.clone(),
            from: from.describe(),
            to: to.describe(),
        });
    }
    let pending = data_dir.join(PENDING_AUDIT_FILE);
    let mut lines = std::fs::read_to_string(&pending).unwrap_or_default();
    for m in &done {
        lines.push_str(&serde_json::to_string(m).expect("serializes"));
        lines.push('\n');
    }
    write_private(&pending, lines.as_bytes())?;
    Ok(done)
}

/// The offline key changes waiting for the audit trail (and the file to remove once
/// recorded).
pub fn pending_changes(data_dir: &Path) -> (PathBuf, Vec<Migrated>) {
    let path = data_dir.join(PENDING_AUDIT_FILE);
    let changes = std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (path, changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kek() -> Kek {
        Kek::from_base64(&Kek::generate_base64(), "test").unwrap()
    }

    fn real_key() -> (PrivateKey, Zeroizing<String>) {
        let key = PrivateKey::generate();
        let pem = key.to_pkcs8_pem().unwrap();
        (key, pem)
    }

    #[test]
    fn a_plain_file_is_never_taken_for_an_envelope_or_the_reverse() {
        let dir = tempfile::tempdir().unwrap();
        let (plain, sealed) = (dir.path().join("plain.pem"), dir.path().join("sealed.pem"));
        let k: Arc<dyn KeyWrap> = Arc::new(kek());
        let (key, pem) = real_key();
        std::fs::write(&plain, &*pem).unwrap();
        std::fs::write(&sealed, envelope(&pem, "ca", k.as_ref()).unwrap()).unwrap();
        let envelope_storage = KeyStorage::Envelope(k);
        let public = key.public_key_raw();
        let loaded = |path: &Path, storage: &KeyStorage| load_key(path, "ca", storage);
        assert_eq!(
            loaded(&plain, &KeyStorage::File).unwrap().public_key_raw(),
            public
        );
        assert_eq!(
            loaded(&sealed, &envelope_storage).unwrap().public_key_raw(),
            public
        );
        let err = loaded(&plain, &envelope_storage).unwrap_err().to_string();
        assert!(
            err.contains("plain file, but an envelope is expected"),
            "{err}"
        );
        let err = loaded(&sealed, &KeyStorage::File).unwrap_err().to_string();
        assert!(err.contains("envelope-encrypted"), "{err}");
        // A reference to a key in a token is neither.
        let reference =
            r#"{"palisadePkcs11": 1, "purpose": "ca", "token": "t", "id": "00", "publicKey": ""}"#;
        std::fs::write(&plain, reference).unwrap();
        assert!(!is_envelope(reference.as_bytes()));
        for storage in [KeyStorage::File, envelope_storage.clone()] {
            let err = loaded(&plain, &storage).unwrap_err().to_string();
            assert!(err.contains("kept in a PKCS#11 token"), "{err}");
        }
        // Not a key at all.
        std::fs::write(
            &plain,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = loaded(&plain, &KeyStorage::File).unwrap_err().to_string();
        assert!(
            err.contains("not a PKCS#8 PEM ECDSA P-256 private key"),
            "{err}"
        );
    }

    #[test]
    fn migrate_moves_every_key_or_none() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, token) = (dir.path().join("ca.pem"), dir.path().join("token.pem"));
        let ((ca_key, ca_pem), (_, token_pem)) = (real_key(), real_key());
        std::fs::write(&ca, &*ca_pem).unwrap();
        std::fs::write(&token, &*token_pem).unwrap();
        let files = vec![(ca.clone(), "ca"), (token.clone(), "token")];
        let first = KeyStorage::Envelope(Arc::new(kek()));
        let done = migrate(dir.path(), &files, &KeyStorage::File, &first).unwrap();
        assert_eq!(done.len(), 2);
        let public = |storage: &KeyStorage| {
            load_key(&ca, "ca", storage).map(|k| k.public_key_raw().to_vec())
        };
        assert_eq!(public(&first).unwrap(), ca_key.public_key_raw());
        // Rewrap under a new KEK: the old one no longer opens them.
        let second = KeyStorage::Envelope(Arc::new(kek()));
        migrate(dir.path(), &files, &first, &second).unwrap();
        assert!(
            public(&first)
                .unwrap_err()
                .to_string()
                .contains("wrong KEK")
        );
        assert_eq!(public(&second).unwrap(), ca_key.public_key_raw());
        // One damaged file: nothing is rewritten.
        std::fs::write(&token, "{").unwrap();
        let before = std::fs::read(&ca).unwrap();
        assert!(migrate(dir.path(), &files, &second, &KeyStorage::File).is_err());
        assert_eq!(std::fs::read(&ca).unwrap(), before);
        // Every change waits for the audit trail.
        let (_, pending) = pending_changes(dir.path());
        assert_eq!(pending.len(), 4);
        assert_eq!(pending[0].from, "file");
        assert!(pending[2].from.starts_with("envelope (KEK "), "{pending:?}");
    }
}
