//! Key envelopes: a private key encrypted with a random data key (AES-256-GCM), and beside it
//! that data key wrapped by a key-encryption key (KEK) kept elsewhere. The control plane
//! keeps its CA and token keys this way (`--ca-key-source envelope`), and a sidecar may keep
//! its cached workload key this way (`--identity-key-encryption-key-file`): one format, one
//! reader, for both.
//!
//! The envelope is bound to its purpose (which key it holds) and to its KEK's id, so a file
//! swapped for another's, sealed with another KEK, truncated or with one byte changed is
//! refused with the reason.
//!
//! Format (JSON, one object):
//! `{"palisadeEnvelope": 1, "purpose": "ca", "kek": "<16 hex: the KEK's id>",
//!   "wrappedKey": "<base64: the data key wrapped by the KEK>",
//!   "ciphertext": "<base64: nonce || AES-256-GCM(data key, PKCS#8 PEM)>"}`
//! with the additional data `palisade-envelope-v1 <purpose> key|data` on each seal. A KEK
//! given as bytes wraps as `nonce || AES-256-GCM(KEK, data key)`; a KEK held in a PKCS#11
//! token ([`KeyWrap`]) wraps the same way, inside the token.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Why an envelope could not be made or opened.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
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

/// What wraps and unwraps data keys: a [`Kek`] given as bytes, or a key in a token.
pub trait KeyWrap: Send + Sync + std::fmt::Debug {
    /// The KEK's public name, recorded in each envelope it seals.
    fn id(&self) -> &str;
    /// Where it came from, for error messages (never the key).
    fn origin(&self) -> &str;
    /// `data_key` wrapped, bound to `aad`.
    fn wrap(&self, data_key: &[u8], aad: &[u8]) -> Result<Vec<u8>, String>;
    /// The data key in `wrapped`, or `None` when it does not unwrap (changed, or another KEK).
    fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Option<Zeroizing<Vec<u8>>>;
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

impl Kek {
    /// From base64 text (surrounding whitespace ignored); `origin` names where it came from.
    pub fn from_base64(text: &str, origin: &str) -> Result<Self, EnvelopeError> {
        let bad = |reason: String| EnvelopeError::BadKek {
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
    pub fn from_file(path: &Path) -> Result<Self, EnvelopeError> {
        let text =
            Zeroizing::new(
                std::fs::read_to_string(path).map_err(|source| EnvelopeError::Io {
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
}

impl KeyWrap for Kek {
    /// The first 16 hex digits of its SHA-256.
    fn id(&self) -> &str {
        &self.id
    }

    fn origin(&self) -> &str {
        &self.origin
    }

    fn wrap(&self, data_key: &[u8], aad: &[u8]) -> Result<Vec<u8>, String> {
        Ok(seal(self.key.as_ref(), data_key, aad))
    }

    fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        open(self.key.as_ref(), wrapped, aad)
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

pub fn aad(purpose: &str, part: &str) -> Vec<u8> {
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
pub fn envelope(pem: &str, purpose: &str, kek: &dyn KeyWrap) -> Result<String, EnvelopeError> {
    let mut data_key = Zeroizing::new([0u8; 32]);
    SystemRandom::new()
        .fill(data_key.as_mut())
        .expect("the system random source works");
    let file = EnvelopeFile {
        palisade_envelope: VERSION,
        purpose: purpose.to_owned(),
        kek: kek.id().to_owned(),
        wrapped_key: B64.encode(kek.wrap(data_key.as_ref(), &aad(purpose, "key")).map_err(
            |reason| EnvelopeError::BadKek {
                origin: kek.origin().to_owned(),
                reason,
            },
        )?),
        ciphertext: B64.encode(seal(
            data_key.as_ref(),
            pem.as_bytes(),
            &aad(purpose, "data"),
        )),
    };
    let mut text = serde_json::to_string_pretty(&file).expect("serializes");
    text.push('\n');
    Ok(text)
}

/// Checks what a stored form says of itself: a `version` (found, read here) and the key's
/// `purpose` (found, expected), or why it is refused.
pub fn check_header(
    what: &str,
    (version, known): (u32, u32),
    found: &str,
    purpose: &str,
) -> Result<(), String> {
    if version != known {
        return Err(format!(
            "{what} version {version} is not one this version of Palisade reads ({known})"
        ));
    }
    if found != purpose {
        return Err(format!(
            "this {what} is for the {found} key, not the {purpose} key"
        ));
    }
    Ok(())
}

/// Whether a key file's contents look sealed (a JSON object) rather than a plain PEM.
pub fn looks_sealed(bytes: &[u8]) -> bool {
    bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// The PKCS#8 PEM in the envelope `bytes` (read from `path`), for `purpose`, opened with
/// `kek`; every way it can fail says why.
pub fn open_envelope(
    bytes: &[u8],
    path: &Path,
    purpose: &str,
    kek: &dyn KeyWrap,
) -> Result<Zeroizing<String>, EnvelopeError> {
    let bad = |reason: String| EnvelopeError::Envelope {
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
    if file.kek != kek.id() {
        return Err(bad(format!(
            "sealed with key-encryption key {}, but the one given ({}) is {}: wrong KEK",
            file.kek,
            kek.origin(),
            kek.id()
        )));
    }
    let decode = |field: &str, text: &str| {
        B64.decode(text)
            .map_err(|e| bad(format!("{field} is not base64 (damaged?): {e}")))
    };
    let wrapped = decode("wrappedKey", &file.wrapped_key)?;
    let ciphertext = decode("ciphertext", &file.ciphertext)?;
    let data_key = kek.unwrap(&wrapped, &aad(purpose, "key")).ok_or_else(|| {
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
        let sealed = envelope(PEM, "ca", &k).unwrap();
        assert!(looks_sealed(sealed.as_bytes()));
        assert!(!sealed.contains("MIGHAgEA") && !sealed.contains("PRIVATE KEY"));
        assert_eq!(
            *open_envelope(sealed.as_bytes(), path, "ca", &k).unwrap(),
            PEM
        );
        let why = |r: Result<Zeroizing<String>, EnvelopeError>| r.unwrap_err().to_string();
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
        let sealed = envelope(PEM, "ca", &k).unwrap();
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
