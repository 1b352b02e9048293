//! Private keys at rest: the CA signing key and the token-signing key, kept as plain PKCS#8
//! files (`file`, as SPIRE's default `disk` key manager) or envelope-encrypted (`envelope`).
//!
//! Whoever reads a plain key file (a backup, a volume snapshot, a copied Secret) can mint
//! certificates for any workload, or admin tokens for any role. An envelope file holds the
//! key encrypted with a random data key (AES-256-GCM), and beside it that data key wrapped
//! by a key-encryption key (KEK) that is kept elsewhere: a file outside the data directory
//! or an environment variable. The data directory alone then yields nothing; the decrypted
//! key lives only in memory, in buffers zeroed when dropped.
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
}

impl KeySource {
    /// What `palisade ca status` and the metrics say about it.
    pub fn protection(self) -> &'static str {
        match self {
            KeySource::File => "unprotected (plain file)",
            KeySource::Envelope => "envelope (AES-256-GCM, KEK held outside the data directory)",
        }
    }
}

/// How a key is stored: its source and, for an envelope, the KEK.
#[derive(Debug, Clone)]
pub struct KeyStorage {
    pub source: KeySource,
    pub kek: Option<Arc<Kek>>,
}

impl KeyStorage {
    pub fn file() -> Self {
        Self {
            source: KeySource::File,
            kek: None,
        }
    }
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

/// Whether `bytes` (a key file's contents) is an envelope rather than a plain PEM key.
pub fn is_envelope(bytes: &[u8]) -> bool {
    bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
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
    if file.palisade_envelope != VERSION {
        return Err(bad(format!(
            "envelope version {} is not one this control plane reads ({VERSION})",
            file.palisade_envelope
        )));
    }
    if file.purpose != purpose {
        return Err(bad(format!(
            "this envelope holds the {} key, not the {purpose} key",
            file.purpose
        )));
    }
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

/// Reads the private key at `path` as `storage` says it is kept: the PEM, in memory only.
/// A plain file where an envelope is expected (or the reverse) is refused, not guessed.
pub fn read_key(
    path: &Path,
    purpose: &str,
    storage: &KeyStorage,
) -> Result<Zeroizing<String>, KeyError> {
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    })?);
    let bad = |reason: &str| KeyError::Envelope {
        path: path.to_path_buf(),
        reason: reason.to_owned(),
    };
    match (storage.source, is_envelope(&bytes), &storage.kek) {
        (KeySource::File, false, _) => {
            Ok(Zeroizing::new(String::from_utf8_lossy(&bytes).into_owned()))
        }
        (KeySource::File, true, _) => Err(bad(
            "the key is envelope-encrypted: start with --*-key-source envelope and its KEK",
        )),
        (KeySource::Envelope, true, Some(kek)) => open_envelope(&bytes, path, purpose, kek),
        (KeySource::Envelope, false, _) => Err(bad(
            "the key is a plain file, but an envelope is expected: it was not encrypted (refusing to use a key stored unprotected)",
        )),
        (KeySource::Envelope, true, None) => Err(bad("an envelope needs a KEK")),
    }
}

/// The bytes to write for a new key `pem` kept as `storage` says.
pub fn key_file_contents(
    pem: &str,
    purpose: &str,
    storage: &KeyStorage,
) -> Result<Zeroizing<String>, KeyError> {
    match (storage.source, &storage.kek) {
        (KeySource::File, _) => Ok(Zeroizing::new(pem.to_owned())),
        (KeySource::Envelope, Some(kek)) => Ok(Zeroizing::new(envelope(pem, purpose, kek))),
        (KeySource::Envelope, None) => Err(KeyError::BadKek {
            origin: "--key-encryption-key-file".into(),
            reason: "an envelope needs a KEK and none was given".into(),
        }),
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
/// reads each back with `to`. All are read and checked before any is written, so a wrong
/// KEK or a damaged file changes nothing; each file is replaced atomically. The change is
/// appended to [`PENDING_AUDIT_FILE`] in `data_dir`.
pub fn migrate(
    data_dir: &Path,
    files: &[(PathBuf, &'static str)],
    from: &KeyStorage,
    to: &KeyStorage,
) -> Result<Vec<Migrated>, KeyError> {
    let describe = |s: &KeyStorage| match &s.kek {
        Some(kek) => format!("envelope (KEK {})", kek.id()),
        None => "file".to_owned(),
    };
    let plain: Vec<(&PathBuf, &str, Zeroizing<String>)> = files
        .iter()
        .map(|(path, purpose)| Ok((path, *purpose, read_key(path, purpose, from)?)))
        .collect::<Result<_, KeyError>>()?;
    let mut done = Vec::new();
    for (path, purpose, pem) in plain {
        let contents = key_file_contents(&pem, purpose, to)?;
        palisade_contract::private_files::write_atomic(path, contents.as_bytes(), true).map_err(
            |source| KeyError::Io {
                path: path.clone(),
                source,
            },
        )?;
        if *read_key(path, purpose, to)? != *pem {
            return Err(KeyError::Envelope {
                path: path.clone(),
                reason: "the rewritten key does not read back as the original".into(),
            });
        }
        done.push(Migrated {
            path: path.clone(),
            from: describe(from),
            to: describe(to),
        });
    }
    let pending = data_dir.join(PENDING_AUDIT_FILE);
    let mut lines = std::fs::read_to_string(&pending).unwrap_or_default();
    for m in &done {
        lines.push_str(&serde_json::to_string(m).expect("serializes"));
        lines.push('\n');
    }
    palisade_contract::private_files::write_atomic(&pending, lines.as_bytes(), true).map_err(
        |source| KeyError::Io {
            path: pending.clone(),
            source,
        },
    )?;
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
                .contains("holds the ca key, not the token key")
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

    #[test]
    fn a_plain_file_is_never_taken_for_an_envelope_or_the_reverse() {
        let dir = tempfile::tempdir().unwrap();
        let (plain, sealed) = (dir.path().join("plain.pem"), dir.path().join("sealed.pem"));
        let k = Arc::new(kek());
        std::fs::write(&plain, PEM).unwrap();
        std::fs::write(&sealed, envelope(PEM, "ca", &k)).unwrap();
        let envelope_storage = KeyStorage {
            source: KeySource::Envelope,
            kek: Some(k),
        };
        assert_eq!(*read_key(&plain, "ca", &KeyStorage::file()).unwrap(), PEM);
        assert_eq!(*read_key(&sealed, "ca", &envelope_storage).unwrap(), PEM);
        let err = read_key(&plain, "ca", &envelope_storage)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("plain file, but an envelope is expected"),
            "{err}"
        );
        let err = read_key(&sealed, "ca", &KeyStorage::file())
            .unwrap_err()
            .to_string();
        assert!(err.contains("envelope-encrypted"), "{err}");
    }

    #[test]
    fn migrate_moves_every_key_or_none() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, token) = (dir.path().join("ca.pem"), dir.path().join("token.pem"));
        std::fs::write(&ca, PEM).unwrap();
        std::fs::write(&token, PEM.replace("MIGH", "MIGG")).unwrap();
        let files = vec![(ca.clone(), "ca"), (token.clone(), "token")];
        let first = KeyStorage {
            source: KeySource::Envelope,
            kek: Some(Arc::new(kek())),
        };
        let done = migrate(dir.path(), &files, &KeyStorage::file(), &first).unwrap();
        assert_eq!(done.len(), 2);
        assert_eq!(*read_key(&ca, "ca", &first).unwrap(), PEM);
        // Rewrap under a new KEK: the old one no longer opens them.
        let second = KeyStorage {
            source: KeySource::Envelope,
            kek: Some(Arc::new(kek())),
        };
        migrate(dir.path(), &files, &first, &second).unwrap();
        assert!(
            read_key(&ca, "ca", &first)
                .unwrap_err()
                .to_string()
                .contains("wrong KEK")
        );
        assert_eq!(*read_key(&ca, "ca", &second).unwrap(), PEM);
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
