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

pub use pkcs11::{Token, TokenSettings};
pub use signing::PrivateKey;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
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

/// How a key is stored: its source and, for an envelope, the KEK, for a token, the token.
#[derive(Debug, Clone)]
pub struct KeyStorage {
    pub source: KeySource,
    pub kek: Option<Arc<Kek>>,
    pub token: Option<Arc<Token>>,
}

impl KeyStorage {
    pub fn file() -> Self {
        Self {
            source: KeySource::File,
            kek: None,
            token: None,
        }
    }

    pub fn envelope(kek: Arc<Kek>) -> Self {
        Self {
            source: KeySource::Envelope,
            kek: Some(kek),
            token: None,
        }
    }

    pub fn pkcs11(token: Arc<Token>) -> Self {
        Self {
            source: KeySource::Pkcs11,
            kek: None,
            token: Some(token),
        }
    }

    /// How the migration record names it.
    pub fn describe(&self) -> String {
        match (&self.kek, &self.token) {
            (Some(kek), _) => format!("envelope (KEK {})", kek.id()),
            (None, Some(token)) => format!("pkcs11 (token \"{}\")", token.label()),
            (None, None) => "file".to_owned(),
        }
    }

    /// What to write in the key file for `key`, the key for `purpose`. For a token, the key
    /// is imported into it (and a reference is written).
    pub fn store(&self, key: &PrivateKey, purpose: &str) -> Result<Zeroizing<String>, KeyError> {
        let pem = || {
            key.to_pkcs8_pem().ok_or_else(|| {
                KeyError::BadReference("a key in a token cannot be written out".into())
            })
        };
        match (self.source, &self.kek, &self.token) {
            (KeySource::File, _, _) => pem(),
            (KeySource::Envelope, Some(kek), _) => {
                Ok(Zeroizing::new(envelope(&pem()?, purpose, kek)))
            }
            (KeySource::Pkcs11, _, Some(token)) => Ok(Zeroizing::new(token.import(key, purpose)?)),
            (KeySource::Envelope, None, _) => Err(KeyError::BadKek {
                origin: "--key-encryption-key-file".into(),
                reason: "an envelope needs a KEK and none was given".into(),
            }),
            (KeySource::Pkcs11, _, None) => Err(KeyError::BadReference(
                "the pkcs11 key source needs --pkcs11-module, --pkcs11-token and --pkcs11-pin-file"
                    .into(),
            )),
        }
    }

    /// A new key for `purpose`, kept as this storage keeps keys (in the token, for a token),
    /// with what to write in its key file.
    pub fn generate(&self, purpose: &str) -> Result<(PrivateKey, Zeroizing<String>), KeyError> {
        if let (KeySource::Pkcs11, Some(token)) = (self.source, &self.token) {
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
    palisade_contract::private_files::write_atomic(path, contents, true).map_err(|source| {
        KeyError::Io {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// A key-encryption key: 32 random bytes, given base64-encoded.
pub struct Kek {
    key: Zeroizing<[u8; 32]>,
    id: String,
    /// Where it came from, for error messages (never the key).
    origin: String,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kek")
            .field("id", &self.id)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// Why a key could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{origin}: the key-encryption key must be 32 bytes, base64-encoded ({reason})")]
    BadKek { origin: String, reason: String },
    #[error("{path}: {reason}")]
    Envelope { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("PKCS#11 token \"{token}\" ({module}): {reason}")]
    Token {
        token: String,
        module: PathBuf,
        reason: String,
    },
    #[error("{0}")]
    BadReference(String),
}

impl Kek {
    /// From base64 text (surrounding whitespace ignored); `origin` names where it came from.
    pub fn from_base64(text: &str, origin: &str) -> Result<Self, KeyError> {
        let bad = |reason: String| KeyError::BadKek {
            origin: origin.to_owned(),
            reason,
        };
        let bytes = Zeroizing::new(B64.decode(text.trim()).map_err(|e| bad(e.to_string()))?);
        let mut key = Zeroizing::new([0u8; 32]);
        if bytes.len() != key.len() {
            return Err(bad(format!("it has {} bytes", bytes.len())));
        }
        key.copy_from_slice(&bytes);
        let digest = ring::digest::digest(&ring::digest::SHA256, key.as_ref());
        Ok(Self {
            id: hex::encode(&digest.as_ref()[..8]),
            key,
            origin: origin.to_owned(),
        })
    }

    /// From a file (which should live outside the data directory).
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let text =
            Zeroizing::new(
                std::fs::read_to_string(path).map_err(|source| KeyError::Io {
                    path: path.to_path_buf(),
                    source,
                })?,
            );
        Self::from_base64(&text, &path.display().to_string())
    }

    /// A new random KEK, base64-encoded (`palisade-control-plane` prints one for setup).
    pub fn generate_base64() -> Zeroizing<String> {
        let mut key = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(key.as_mut())
            .expect("the system random source works");
        Zeroizing::new(B64.encode(key.as_ref()))
    }

    /// The KEK's public name: the first 16 hex digits of its SHA-256.
    pub fn id(&self) -> &str {
        &self.id
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EnvelopeFile {
    palisade_envelope: u32,
    purpose: String,
    kek: String,
    wrapped_key: String,
    ciphertext: String,
}

const VERSION: u32 = 1;

fn aad(purpose: &str, part: &str) -> Vec<u8> {
    format!("palisade-envelope-v1 {purpose} {part}").into_bytes()
}

/// `nonce || ciphertext+tag` of `plain` under `key`.
fn seal(key: &[u8], plain: &[u8], aad: &[u8]) -> Vec<u8> {
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte key"));
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .expect("the system random source works");
    let mut out = plain.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut out,
    )
    .expect("AES-GCM seals any length we use");
    let mut sealed = nonce.to_vec();
    sealed.extend_from_slice(&out);
    sealed
}

/// The plaintext of `sealed` (from [`seal`]), or `None` when it does not open.
fn open(key: &[u8], sealed: &[u8], aad: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).ok()?);
    if sealed.len() < NONCE_LEN {
        return None;
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut buf = Zeroizing::new(body.to_vec());
    let plain_len = key
        .open_in_place(nonce, Aad::from(aad), &mut buf)
        .ok()?
        .len();
    buf.truncate(plain_len);
    Some(buf)
}

/// The envelope text for `pem`, the key for `purpose`, sealed with `kek`.
pub fn envelope(pem: &str, purpose: &str, kek: &Kek) -> String {
    let mut data_key = Zeroizing::new([0u8; 32]);
    SystemRandom::new()
        .fill(data_key.as_mut())
        .expect("the system random source works");
    let file = EnvelopeFile {
        palisade_envelope: VERSION,
        purpose: purpose.to_owned(),
        kek: kek.id.clone(),
        wrapped_key: B64.encode(seal(
            kek.key.as_ref(),
            data_key.as_ref(),
            &aad(purpose, "key"),
        )),
        ciphertext: B64.encode(seal(
            data_key.as_ref(),
            pem.as_bytes(),
            &aad(purpose, "data"),
        )),
    };
    let mut text = serde_json::to_string_pretty(&file).expect("serializes");
    text.push('\n');
    text
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
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        Stored::Plain
    } else if pkcs11::Reference::is_reference(bytes) {
        Stored::Reference
    } else {
        Stored::Envelope
    }
}

/// Checks what a stored form says of itself: a `version` (found, read here) and the key's
/// `purpose` (found, expected), or why it is refused.
fn check_header(
    what: &str,
    (version, known): (u32, u32),
    found: &str,
    purpose: &str,
) -> Result<(), String> {
    if version != known {
        return Err(format!(
            "{what} version {version} is not one this control plane reads ({known})"
        ));
    }
    if found != purpose {
        return Err(format!(
            "this {what} is for the {found} key, not the {purpose} key"
        ));
    }
    Ok(())
}

/// Whether `bytes` (a key file's contents) is an envelope rather than a plain PEM key.
pub fn is_envelope(bytes: &[u8]) -> bool {
    stored_form(bytes) == Stored::Envelope
}

/// The PKCS#8 PEM in the envelope `bytes` (read from `path`), for `purpose`, opened with
/// `kek`; every way it can fail says why.
pub fn open_envelope(
    bytes: &[u8],
    path: &Path,
    purpose: &str,
    kek: &Kek,
) -> Result<Zeroizing<String>, KeyError> {
    let bad = |reason: String| KeyError::Envelope {
        path: path.to_path_buf(),
        reason,
    };
    let file: EnvelopeFile = serde_json::from_slice(bytes).map_err(|e| {
        bad(format!(
            "not a readable key envelope (truncated or damaged?): {e}"
        ))
    })?;
    check_header(
        "envelope",
        (file.palisade_envelope, VERSION),
        &file.purpose,
        purpose,
    )
    .map_err(bad)?;
    if file.kek != kek.id {
        return Err(bad(format!(
            "sealed with key-encryption key {}, but the one given ({}) is {}: wrong KEK",
            file.kek, kek.origin, kek.id
        )));
    }
    let decode = |field: &str, text: &str| {
        B64.decode(text)
            .map_err(|e| bad(format!("{field} is not base64 (damaged?): {e}")))
    };
    let wrapped = decode("wrappedKey", &file.wrapped_key)?;
    let ciphertext = decode("ciphertext", &file.ciphertext)?;
    let data_key = open(kek.key.as_ref(), &wrapped, &aad(purpose, "key")).ok_or_else(|| {
        bad("the wrapped data key does not open with this KEK: the file was changed".into())
    })?;
    let plain = open(&data_key, &ciphertext, &aad(purpose, "data")).ok_or_else(|| {
        bad("the key does not decrypt with its data key: the file was changed or truncated".into())
    })?;
    let text = std::str::from_utf8(&plain)
        .map_err(|_| bad("the decrypted key is not text".into()))?
        .to_owned();
    Ok(Zeroizing::new(text))
}

/// The private key at `path`, kept as `storage` says: in memory only for a file or an
/// envelope, in its token for a reference. A key stored one way where another is expected is
/// refused with the reason, not guessed.
pub fn load_key(path: &Path, purpose: &str, storage: &KeyStorage) -> Result<PrivateKey, KeyError> {
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    })?);
    let bad = |reason: String| KeyError::Envelope {
        path: path.to_path_buf(),
        reason,
    };
    let pem = |text: &str| PrivateKey::from_pkcs8_pem(text).map_err(bad);
    let stored = stored_form(&bytes);
    match (storage.source, stored) {
        (KeySource::File, Stored::Plain) => pem(&String::from_utf8_lossy(&bytes)),
        (KeySource::Envelope, Stored::Envelope) => {
            let kek = storage.kek.as_ref().ok_or_else(|| bad("an envelope needs a KEK".into()))?;
            pem(&open_envelope(&bytes, path, purpose, kek)?)
        }
        (KeySource::Pkcs11, Stored::Reference) => {
            let token = storage.token.as_ref().ok_or_else(|| {
                bad("a key in a PKCS#11 token needs --pkcs11-module, --pkcs11-token and --pkcs11-pin-file".into())
            })?;
            let reference = pkcs11::Reference::parse(&bytes, path, purpose)?;
            token.key(&reference).map_err(|e| bad(e.to_string()))
        }
        (_, Stored::Envelope) => Err(bad(
            "the key is envelope-encrypted: start with --*-key-source envelope and its KEK".into(),
        )),
        (_, Stored::Reference) => Err(bad(
            "the key is kept in a PKCS#11 token: start with --*-key-source pkcs11 and the token's settings".into(),
        )),
        (KeySource::Envelope, Stored::Plain) => Err(bad(
            "the key is a plain file, but an envelope is expected: it was not encrypted (refusing to use a key stored unprotected)".into(),
        )),
        (KeySource::Pkcs11, Stored::Plain) => Err(bad(
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
    if from.source == KeySource::Pkcs11 {
        return Err(KeyError::BadReference(
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
            return Err(KeyError::Envelope {
                path: path.clone(),
                reason: "the rewritten key does not read back as the original".into(),
            });
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

    const PEM: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n";

    #[test]
    fn an_envelope_opens_with_its_kek_and_purpose_only() {
        let (k, path) = (kek(), Path::new("ca-key.pem"));
        let sealed = envelope(PEM, "ca", &k);
        assert!(is_envelope(sealed.as_bytes()));
        assert!(!sealed.contains("MIGHAgEA") && !sealed.contains("PRIVATE KEY"));
        assert_eq!(
            *open_envelope(sealed.as_bytes(), path, "ca", &k).unwrap(),
            PEM
        );
        let why = |r: Result<Zeroizing<String>, KeyError>| r.unwrap_err().to_string();
        assert!(why(open_envelope(sealed.as_bytes(), path, "ca", &kek())).contains("wrong KEK"));
        assert!(
            why(open_envelope(sealed.as_bytes(), path, "token", &k))
                .contains("is for the ca key, not the token key")
        );
        let truncated = &sealed.as_bytes()[..sealed.len() / 2];
        assert!(why(open_envelope(truncated, path, "ca", &k)).contains("truncated or damaged"));
    }

    #[test]
    fn every_changed_byte_of_the_sealed_parts_is_refused() {
        let k = kek();
        let sealed = envelope(PEM, "ca", &k);
        let file: EnvelopeFile = serde_json::from_str(&sealed).unwrap();
        for field in ["wrappedKey", "ciphertext"] {
            let value = if field == "wrappedKey" {
                &file.wrapped_key
            } else {
                &file.ciphertext
            };
            let mut bytes = B64.decode(value).unwrap();
            for i in 0..bytes.len() {
                bytes[i] ^= 0x01;
                let mut changed: serde_json::Value = serde_json::from_str(&sealed).unwrap();
                changed[field] = B64.encode(&bytes).into();
                let text = changed.to_string();
                let err = open_envelope(text.as_bytes(), Path::new("k"), "ca", &k).unwrap_err();
                assert!(
                    err.to_string().contains("was changed"),
                    "{field}[{i}]: {err}"
                );
                bytes[i] ^= 0x01;
            }
        }
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
        let k = Arc::new(kek());
        let (key, pem) = real_key();
        std::fs::write(&plain, &*pem).unwrap();
        std::fs::write(&sealed, envelope(&pem, "ca", &k)).unwrap();
        let envelope_storage = KeyStorage::envelope(k);
        let public = key.public_key_raw();
        let loaded = |path: &Path, storage: &KeyStorage| load_key(path, "ca", storage);
        assert_eq!(
            loaded(&plain, &KeyStorage::file())
                .unwrap()
                .public_key_raw(),
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
        let err = loaded(&sealed, &KeyStorage::file())
            .unwrap_err()
            .to_string();
        assert!(err.contains("envelope-encrypted"), "{err}");
        // A reference to a key in a token is neither.
        let reference =
            r#"{"palisadePkcs11": 1, "purpose": "ca", "token": "t", "id": "00", "publicKey": ""}"#;
        std::fs::write(&plain, reference).unwrap();
        assert!(!is_envelope(reference.as_bytes()));
        for storage in [KeyStorage::file(), envelope_storage.clone()] {
            let err = loaded(&plain, &storage).unwrap_err().to_string();
            assert!(err.contains("kept in a PKCS#11 token"), "{err}");
        }
        // Not a key at all.
        std::fs::write(
            &plain,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = loaded(&plain, &KeyStorage::file()).unwrap_err().to_string();
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
        let first = KeyStorage::envelope(Arc::new(kek()));
        let done = migrate(dir.path(), &files, &KeyStorage::file(), &first).unwrap();
        assert_eq!(done.len(), 2);
        let public = |storage: &KeyStorage| {
            load_key(&ca, "ca", storage).map(|k| k.public_key_raw().to_vec())
        };
        assert_eq!(public(&first).unwrap(), ca_key.public_key_raw());
        // Rewrap under a new KEK: the old one no longer opens them.
        let second = KeyStorage::envelope(Arc::new(kek()));
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
        assert!(migrate(dir.path(), &files, &second, &KeyStorage::file()).is_err());
        assert_eq!(std::fs::read(&ca).unwrap(), before);
        // Every change waits for the audit trail.
        let (_, pending) = pending_changes(dir.path());
        assert_eq!(pending.len(), 4);
        assert_eq!(pending[0].from, "file");
        assert!(pending[2].from.starts_with("envelope (KEK "), "{pending:?}");
    }

    #[test]
    fn a_kek_must_be_32_bytes_of_base64() {
        for bad in ["", "not base64!", &B64.encode([0u8; 16])] {
            let err = Kek::from_base64(bad, "PALISADE_KEK")
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("PALISADE_KEK: the key-encryption key must be 32 bytes"),
                "{err}"
            );
        }
        let k = Kek::from_base64(&format!(" {}\n", B64.encode([7u8; 32])), "f").unwrap();
        assert_eq!(k.id().len(), 16);
    }
}
