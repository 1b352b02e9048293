//! Keys kept in a PKCS#11 token (`pkcs11` key source): an HSM, a cloud HSM that speaks
//! PKCS#11, or SoftHSM2 in tests. The key is generated in the token (or imported into it by
//! `keys migrate --to pkcs11`) as sensitive and non-extractable, and every signature is made
//! by the token: the private key never exists in this process or on disk.
//!
//! The data directory then holds only a **reference** in place of the key file, with no
//! secret in it:
//! `{"palisadePkcs11": 1, "purpose": "ca", "token": "<token label>", "id": "<hex CKA_ID>",
//!   "publicKey": "<base64 uncompressed P-256 point>"}`.
//! On load, the key with that id must be in the token and must sign what that public key
//! verifies (a probe signature), so a reference edited to name another key, or a token
//! re-initialised, stops the start with the reason.
//!
//! A PKCS#11 library can be initialised once per process (a second `C_Initialize` fails), and
//! its login state belongs to the token and the process and ends with the token's last
//! session. So libraries are loaded once, in a registry keyed by path, never finalised, and
//! each [`Token`] keeps one logged-in session open for as long as it is used.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize as _, Zeroizing};

use palisade_contract::envelope::KeyWrap;

use super::KeyError;
use super::signing::{ExternalKey, PrivateKey};

/// The DER of P-256's OID (`CKA_EC_PARAMS` of every key made or imported here).
const P256_PARAMS: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// Where the token is (`--pkcs11-module`, `--pkcs11-token`, `--pkcs11-pin-file`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSettings {
    /// The vendor's PKCS#11 library (`/usr/lib/softhsm/libsofthsm2.so`).
    pub module: PathBuf,
    /// The token's label.
    pub label: String,
    /// A file holding the user PIN (trailing newline ignored).
    pub pin_file: PathBuf,
}

/// An open, logged-in token.
pub struct Token {
    pkcs11: Pkcs11,
    slot: Slot,
    label: String,
    module: PathBuf,
    /// Keeps the token logged in for this process, and serves key management.
    session: Mutex<Session>,
    /// Kept (zeroized on drop) to log in again when the token forgets the login: an HSM
    /// restarted, a network HSM's connection lost.
    pin: AuthPin,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("label", &self.label)
            .field("module", &self.module)
            .finish_non_exhaustive()
    }
}

fn token_error(label: &str, module: &Path, reason: String) -> KeyError {
    KeyError::Token {
        token: label.to_owned(),
        module: module.to_path_buf(),
        reason,
    }
}

/// The library at `module`, loaded and initialised once per process.
pub(super) fn library(module: &Path) -> Result<Pkcs11, String> {
    static LOADED: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut loaded = LOADED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(pkcs11) = loaded.get(module) {
        return Ok(pkcs11.clone());
    }
    let pkcs11 =
        Pkcs11::new(module).map_err(|e| format!("the PKCS#11 module does not load: {e}"))?;
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(P11Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(format!("the PKCS#11 module does not initialise: {e}")),
    }
    loaded.insert(module.to_path_buf(), pkcs11.clone());
    Ok(pkcs11)
}

impl Token {
    /// Loads the module, finds the token by its label and logs in with the PIN; a missing
    /// module or token and a wrong PIN each say so.
    pub fn open(settings: &TokenSettings) -> Result<Arc<Self>, KeyError> {
        let fail = |reason: String| token_error(&settings.label, &settings.module, reason);
        let pin = Zeroizing::new(
            std::fs::read_to_string(&settings.pin_file)
                .map_err(|source| KeyError::io(settings.pin_file.clone(), source))?,
        );
        let pin = pin.trim_end_matches(['\n', '\r']);
        if pin.is_empty() {
            return Err(fail(format!(
                "the PIN file {} is empty",
                settings.pin_file.display()
            )));
        }
        let pkcs11 = library(&settings.module).map_err(fail)?;
        let slots = pkcs11
            .get_slots_with_initialized_token()
            .map_err(|e| fail(format!("listing the slots failed: {e}")))?;
        let mut labels = Vec::new();
        let mut found = None;
        for slot in slots {
            let Ok(info) = pkcs11.get_token_info(slot) else {
                continue;
            };
            if info.label() == settings.label && found.is_none() {
                found = Some((slot, info.user_pin_locked()));
            }
            labels.push(format!("\"{}\"", info.label()));
        }
        let Some((slot, locked)) = found else {
            return Err(fail(format!(
                "no initialised token has this label (the module offers {})",
                if labels.is_empty() {
                    "none".to_owned()
                } else {
                    labels.join(", ")
                }
            )));
        };
        if locked {
            return Err(fail(
                "the user PIN is locked after too many wrong attempts".into(),
            ));
        }
        let session = pkcs11
            .open_rw_session(slot)
            .map_err(|e| fail(format!("opening a session failed: {e}")))?;
        let pin = AuthPin::new(pin.into());
        match log_in(&session, &pin) {
            Ok(()) => {}
            Err(P11Error::Pkcs11(RvError::PinIncorrect, _)) => {
                return Err(fail(format!(
                    "the PIN in {} is wrong",
                    settings.pin_file.display()
                )));
            }
            Err(P11Error::Pkcs11(RvError::PinLocked, _)) => {
                return Err(fail(
                    "the user PIN is locked after too many wrong attempts".into(),
                ));
            }
            Err(e) => return Err(fail(format!("login failed: {e}"))),
        }
        Ok(Arc::new(Self {
            pkcs11,
            slot,
            label: settings.label.clone(),
            module: settings.module.clone(),
            session: Mutex::new(session),
            pin,
        }))
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    fn error(&self, reason: String) -> KeyError {
        token_error(&self.label, &self.module, reason)
    }

    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Generates a key for `purpose` in the token: sensitive, never extractable. Returns the
    /// key and the reference to store in its place.
    pub fn generate(self: &Arc<Self>, purpose: &str) -> Result<(PrivateKey, String), KeyError> {
        let (id, label) = new_id(purpose);
        let public_template = [
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::EcParams(P256_PARAMS.to_vec()),
            Attribute::Verify(true),
            Attribute::Label(label.clone().into_bytes()),
            Attribute::Id(id.to_vec()),
        ];
        let private_template = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Label(label.into_bytes()),
            Attribute::Id(id.to_vec()),
        ];
        let point = {
            let session = self.session();
            let (public, _private) = session
                .generate_key_pair(
                    &Mechanism::EccKeyPairGen,
                    &public_template,
                    &private_template,
                )
                .map_err(|e| self.error(format!("generating a P-256 key failed: {e}")))?;
            self.ec_point(&session, public)?
        };
        let reference = Reference::new(purpose, &self.label, &id, &point);
        let key = self.key(&reference)?;
        Ok((key, reference.to_text()))
    }

    /// Imports `key` (held in memory) into the token for `purpose`, sensitive and
    /// non-extractable from then on; returns the reference to store in place of the key.
    pub fn import(self: &Arc<Self>, key: &PrivateKey, purpose: &str) -> Result<String, KeyError> {
        let scalar = key
            .secret_scalar()
            .ok_or_else(|| self.error("the key is already in a token".into()))?;
        let (id, label) = new_id(purpose);
        let common = |class| {
            vec![
                Attribute::Class(class),
                Attribute::KeyType(KeyType::EC),
                Attribute::Token(true),
                Attribute::EcParams(P256_PARAMS.to_vec()),
                Attribute::Label(label.clone().into_bytes()),
                Attribute::Id(id.to_vec()),
            ]
        };
        let mut private = common(ObjectClass::PRIVATE_KEY);
        private.extend([
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Value(scalar.to_vec()),
        ]);
        let mut public = common(ObjectClass::PUBLIC_KEY);
        public.extend([
            Attribute::Verify(true),
            Attribute::EcPoint(octet_string(key.public_key_raw())),
        ]);
        let created = {
            let session = self.session();
            session
                .create_object(&private)
                .and_then(|_| session.create_object(&public))
        };
        for attribute in &mut private {
            if let Attribute::Value(value) = attribute {
                value.zeroize();
            }
        }
        created.map_err(|e| self.error(format!("importing the key failed: {e}")))?;
        let reference = Reference::new(purpose, &self.label, &id, key.public_key_raw());
        // Read back: the token's key must sign what the imported key's public key verifies.
        self.key(&reference)?;
        Ok(reference.to_text())
    }

    /// The key `reference` names, checked by a probe signature against its public key.
    pub fn key(self: &Arc<Self>, reference: &Reference) -> Result<PrivateKey, KeyError> {
        if reference.token != self.label {
            return Err(self.error(format!(
                "the key is in token \"{}\", not in this one (--pkcs11-token)",
                reference.token
            )));
        }
        let id = hex::decode(&reference.id)
            .map_err(|_| self.error(format!("key id {:?} is not hex", reference.id)))?;
        let session = self
            .pkcs11
            .open_ro_session(self.slot)
            .map_err(|e| self.error(format!("opening a session failed: {e}")))?;
        let handle = self.private_key(&session, &id)?;
        let public = reference.public_key()?;
        let key = TokenKey {
            state: Mutex::new((session, handle)),
            id,
            token: self.clone(),
        };
        let mut challenge = [0u8; 32];
        SystemRandom::new()
            .fill(&mut challenge)
            .expect("the system random source works");
        let signature = key.sign(&challenge)?;
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, &public)
            .verify(&challenge, &signature)
            .map_err(|_| {
                self.error(format!(
                    "the token's key {} does not match the public key its reference names \
                     (the reference was changed?)",
                    reference.id
                ))
            })?;
        Ok(PrivateKey::external(Box::new(key), public))
    }

    /// The private key with CKA_ID `id`: exactly one, or why not.
    fn private_key(&self, session: &Session, id: &[u8]) -> Result<ObjectHandle, KeyError> {
        let found = session
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Id(id.to_vec()),
            ])
            .map_err(|e| self.error(format!("searching the token failed: {e}")))?;
        match found.as_slice() {
            [handle] => Ok(*handle),
            [] => Err(self.error(format!(
                "no private key with id {} in the token (deleted, or the token was \
                 re-initialised?)",
                hex::encode(id)
            ))),
            _ => Err(self.error(format!(
                "{} private keys share id {}: refusing to guess",
                found.len(),
                hex::encode(id)
            ))),
        }
    }

    /// What the token answers when asked for the value (CKA_VALUE) of the private key with
    /// CKA_ID `id`: the attributes it returned, none for a key it keeps (for the tests).
    #[cfg(any(test, feature = "test-support"))]
    pub fn private_value(&self, id: &[u8]) -> Result<Vec<Attribute>, KeyError> {
        let session = self.session();
        let handle = self.private_key(&session, id)?;
        session
            .get_attributes(handle, &[AttributeType::Value])
            .map_err(|e| self.error(format!("reading the key failed: {e}")))
    }

    /// A new session for the key `id`, logged in again if the token forgot the login.
    fn reopen(&self, id: &[u8]) -> Result<(Session, ObjectHandle), KeyError> {
        let session = self
            .pkcs11
            .open_ro_session(self.slot)
            .map_err(|e| self.error(format!("re-opening a session failed: {e}")))?;
        log_in(&session, &self.pin)
            .map_err(|e| self.error(format!("logging in again failed: {e}")))?;
        let handle = self.private_key(&session, id)?;
        Ok((session, handle))
    }

    /// The uncompressed point of the public key object `handle`.
    fn ec_point(&self, session: &Session, handle: ObjectHandle) -> Result<Vec<u8>, KeyError> {
        let attributes = session
            .get_attributes(handle, &[AttributeType::EcPoint])
            .map_err(|e| self.error(format!("reading the public key failed: {e}")))?;
        match attributes.as_slice() {
            // CKA_EC_POINT is a DER OCTET STRING around the point.
            [Attribute::EcPoint(der)] if der.len() == 67 && der[..2] == [0x04, 0x41] => {
                Ok(der[2..].to_vec())
            }
            _ => Err(self.error("the token returned no P-256 public point".into())),
        }
    }
}

impl Token {
    /// Makes an AES-256 key-encryption key labelled `label` in the token: sensitive, never
    /// extractable, for wrapping envelopes' data keys (`keys new-kek --in-token`).
    pub fn generate_kek(self: &Arc<Self>, label: &str) -> Result<TokenKek, KeyError> {
        if !self.secret_keys(label)?.is_empty() {
            return Err(self.error(format!("a key labelled \"{label}\" is already there")));
        }
        let (id, _) = new_id("kek");
        self.session()
            .generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::AES),
                    Attribute::ValueLen(32.into()),
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Encrypt(true),
                    Attribute::Decrypt(true),
                    Attribute::Label(label.as_bytes().to_vec()),
                    Attribute::Id(id.to_vec()),
                ],
            )
            .map_err(|e| self.error(format!("generating an AES-256 key failed: {e}")))?;
        self.kek(label)
    }

    /// The AES key-encryption key labelled `label`.
    pub fn kek(self: &Arc<Self>, label: &str) -> Result<TokenKek, KeyError> {
        let handle = match self.secret_keys(label)?.as_slice() {
            [handle] => *handle,
            [] => {
                return Err(self.error(format!(
                    "no key-encryption key labelled \"{label}\" (make one with \
                     `palisade-control-plane keys new-kek --in-token {label}`)"
                )));
            }
            several => {
                return Err(self.error(format!(
                    "{} keys are labelled \"{label}\": refusing to guess",
                    several.len()
                )));
            }
        };
        let id = match self
            .session()
            .get_attributes(handle, &[AttributeType::Id])
            .map_err(|e| self.error(format!("reading the key's id failed: {e}")))?
            .as_slice()
        {
            [Attribute::Id(id)] => id.clone(),
            _ => Vec::new(),
        };
        // Its public name: the token, the label and the object's id, hashed.
        let name = format!("pkcs11 {} {label} {}", self.label, hex::encode(&id));
        let digest = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
        Ok(TokenKek {
            id: hex::encode(&digest.as_ref()[..8]),
            origin: format!(
                "key-encryption key \"{label}\" in PKCS#11 token \"{}\"",
                self.label
            ),
            handle,
            token: self.clone(),
        })
    }

    fn secret_keys(&self, label: &str) -> Result<Vec<ObjectHandle>, KeyError> {
        self.session()
            .find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Label(label.as_bytes().to_vec()),
            ])
            .map_err(|e| self.error(format!("searching the token failed: {e}")))
    }
}

/// A key-encryption key held in a token: the token wraps and unwraps data keys with
/// AES-256-GCM (`nonce || ciphertext || tag`, as a KEK given as bytes does), and the KEK
/// never leaves it. Used at start and by the offline commands only, so it works in the
/// token's own session.
pub struct TokenKek {
    id: String,
    origin: String,
    handle: ObjectHandle,
    token: Arc<Token>,
}

impl std::fmt::Debug for TokenKek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKek")
            .field("id", &self.id)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

const GCM_NONCE: usize = 12;

impl KeyWrap for TokenKek {
    fn id(&self) -> &str {
        &self.id
    }

    fn origin(&self) -> &str {
        &self.origin
    }

    fn wrap(&self, data_key: &[u8], aad: &[u8]) -> Result<Vec<u8>, String> {
        let mut nonce = [0u8; GCM_NONCE];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the system random source works");
        let mut iv = nonce;
        let params = GcmParams::new(&mut iv, aad, 128.into()).map_err(|e| e.to_string())?;
        let sealed = self
            .token
            .session()
            .encrypt(&Mechanism::AesGcm(params), self.handle, data_key)
            .map_err(|e| format!("the token did not wrap the data key: {e}"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if wrapped.len() < GCM_NONCE {
            return None;
        }
        let (nonce, sealed) = wrapped.split_at(GCM_NONCE);
        let mut iv: [u8; GCM_NONCE] = nonce.try_into().ok()?;
        let params = GcmParams::new(&mut iv, aad, 128.into()).ok()?;
        self.token
            .session()
            .decrypt(&Mechanism::AesGcm(params), self.handle, sealed)
            .ok()
            .map(Zeroizing::new)
    }
}

/// A random CKA_ID (16 bytes) and a label naming the purpose, for a new key.
fn new_id(purpose: &str) -> ([u8; 16], String) {
    let mut id = [0u8; 16];
    SystemRandom::new()
        .fill(&mut id)
        .expect("the system random source works");
    (id, format!("palisade-{purpose}-{}", hex::encode(&id[..4])))
}

/// The DER OCTET STRING holding `point` (65 bytes).
fn octet_string(point: &[u8]) -> Vec<u8> {
    let mut der = vec![0x04, point.len() as u8];
    der.extend_from_slice(point);
    der
}

/// A private key in a token, with its own session (a PKCS#11 session runs one operation at
/// a time).
pub struct TokenKey {
    state: Mutex<(Session, ObjectHandle)>,
    id: Vec<u8>,
    token: Arc<Token>,
}

/// Logs `session`'s token in as the user; already logged in (by another session of this
/// process) is fine.
fn log_in(session: &Session, pin: &AuthPin) -> Result<(), P11Error> {
    match session.login(UserType::User, Some(pin)) {
        Ok(()) | Err(P11Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Errors after which a fresh session (and login) may succeed where the old one failed.
fn session_lost(e: &P11Error) -> bool {
    matches!(
        e,
        P11Error::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::UserNotLoggedIn
                | RvError::KeyHandleInvalid
                | RvError::ObjectHandleInvalid
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent,
            _
        )
    )
}

impl ExternalKey for TokenKey {
    /// ECDSA over the SHA-256 of `message` (the token signs the digest): `r || s`.
    fn sign(&self, message: &[u8]) -> Result<[u8; 64], KeyError> {
        let digest = ring::digest::digest(&ring::digest::SHA256, message);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let sign = |(session, handle): &(Session, ObjectHandle)| {
            session.sign(&Mechanism::Ecdsa, *handle, digest.as_ref())
        };
        let signature = match sign(&state) {
            Err(e) if session_lost(&e) => {
                // The token lost the session or the login (restarted, reconnected): once
                // more on a fresh one, then the error stands.
                tracing::warn!(token = %self.token.label, error = %e,
                    "the PKCS#11 session was lost; opening a new one");
                *state = self.token.reopen(&self.id)?;
                sign(&state)
            }
            other => other,
        }
        .map_err(|e| self.token.error(format!("signing failed: {e}")))?;
        signature.try_into().map_err(|s: Vec<u8>| {
            self.token
                .error(format!("the token returned a {}-byte signature", s.len()))
        })
    }
}

/// What the data directory holds in place of a key kept in a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Reference {
    palisade_pkcs11: u32,
    pub purpose: String,
    pub token: String,
    pub id: String,
    pub public_key: String,
}

const VERSION: u32 = 1;

impl Reference {
    fn new(purpose: &str, token: &str, id: &[u8], point: &[u8]) -> Self {
        Self {
            palisade_pkcs11: VERSION,
            purpose: purpose.to_owned(),
            token: token.to_owned(),
            id: hex::encode(id),
            public_key: B64.encode(point),
        }
    }

    /// Whether `bytes` (a key file's contents) is a reference rather than a key.
    pub fn is_reference(bytes: &[u8]) -> bool {
        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(bytes)
            .is_ok_and(|object| object.contains_key("palisadePkcs11"))
    }

    /// Reads the reference in `bytes` (from `path`) to a key for `purpose`.
    pub fn parse(bytes: &[u8], path: &Path, purpose: &str) -> Result<Self, KeyError> {
        let bad = |reason: String| KeyError::stored(path.to_path_buf(), reason);
        let reference: Self = serde_json::from_slice(bytes)
            .map_err(|e| bad(format!("not a readable PKCS#11 key reference: {e}")))?;
        palisade_contract::envelope::check_header(
            "key reference",
            (reference.palisade_pkcs11, VERSION),
            &reference.purpose,
            purpose,
        )
        .map_err(bad)?;
        reference.public_key().map_err(|_| {
            bad("publicKey is not a base64 uncompressed P-256 point (damaged?)".into())
        })?;
        Ok(reference)
    }

    fn public_key(&self) -> Result<Vec<u8>, KeyError> {
        match B64.decode(&self.public_key) {
            Ok(point) if point.len() == 65 && point[0] == 0x04 => Ok(point),
            _ => Err(KeyError::Refused(format!(
                "publicKey of key {} is not a base64 uncompressed P-256 point",
                self.id
            ))),
        }
    }

    fn to_text(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("serializes");
        text.push('\n');
        text
    }
}

#[cfg(test)]
mod tests {
    //! Against a real SoftHSM2 token (one per test: login state is per token and process).
    use super::*;
    use crate::keys::softhsm::TestToken;
    use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};

    fn verifies(key: &PrivateKey, message: &[u8]) -> bool {
        let signature = key.sign_fixed(message).unwrap();
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key.public_key_raw())
            .verify(message, &signature)
            .is_ok()
    }

    #[test]
    fn a_key_generated_in_the_token_signs_and_cannot_be_read_out() {
        let test = TestToken::new("gen");
        let token = Token::open(&test.settings).unwrap();
        let (key, reference) = token.generate("ca").unwrap();
        assert!(key.in_token() && key.to_pkcs8_pem().is_none());
        assert!(verifies(&key, b"a certificate"));
        let reference =
            Reference::parse(reference.as_bytes(), Path::new("ca-key.pem"), "ca").unwrap();
        assert_eq!(
            token.key(&reference).unwrap().public_key_raw(),
            key.public_key_raw()
        );
        // Asking the token for the private value yields nothing, and the key says why.
        let id = hex::decode(&reference.id).unwrap();
        let value = token.private_value(&id).unwrap();
        assert!(value.is_empty(), "the private value came out: {value:?}");
        let session = token.session();
        let handle = token.private_key(&session, &id).unwrap();
        let flags = session
            .get_attributes(
                handle,
                &[
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::NeverExtractable,
                ],
            )
            .unwrap();
        assert_eq!(
            flags,
            vec![
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::NeverExtractable(true),
            ]
        );
    }

    #[test]
    fn an_imported_key_keeps_its_public_key_and_a_changed_reference_is_refused() {
        let test = TestToken::new("import");
        let token = Token::open(&test.settings).unwrap();
        let original = PrivateKey::generate();
        let text = token.import(&original, "token").unwrap();
        let path = Path::new("token-signing-key.pem");
        let reference = Reference::parse(text.as_bytes(), path, "token").unwrap();
        let key = token.key(&reference).unwrap();
        assert_eq!(key.public_key_raw(), original.public_key_raw());
        assert!(verifies(&key, b"a join token"));

        // The reference names another key's public key: the probe signature catches it.
        let mut changed = reference.clone();
        changed.public_key = B64.encode(PrivateKey::generate().public_key_raw());
        let err = token.key(&changed).unwrap_err().to_string();
        assert!(err.contains("does not match the public key"), "{err}");
        let mut changed = reference.clone();
        changed.id = "00".repeat(16);
        let err = token.key(&changed).unwrap_err().to_string();
        assert!(err.contains("no private key with id"), "{err}");
        let mut changed = reference.clone();
        changed.token = "another".into();
        let err = token.key(&changed).unwrap_err().to_string();
        assert!(err.contains("not in this one"), "{err}");
        let err = Reference::parse(text.as_bytes(), path, "ca")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("is for the token key, not the ca key"),
            "{err}"
        );
        let err = Reference::parse(&text.as_bytes()[..text.len() / 2], path, "token")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not a readable PKCS#11 key reference"),
            "{err}"
        );
    }

    #[test]
    fn a_wrong_pin_a_missing_token_and_an_empty_pin_file_are_refused_with_the_reason() {
        // Made after the library was initialised by other tests: it must still be found.
        let test = TestToken::new("pin");
        let wrong = std::env::temp_dir().join(format!("{}-wrong.pin", test.settings.label));
        std::fs::write(&wrong, "not-the-pin\n").unwrap();
        let settings = |f: &dyn Fn(&mut TokenSettings)| {
            let mut s = test.settings.clone();
            f(&mut s);
            Token::open(&s).unwrap_err().to_string()
        };
        let err = settings(&|s| s.pin_file = wrong.clone());
        assert!(err.contains("is wrong"), "{err}");
        let err = settings(&|s| s.label = "no-such-token".into());
        assert!(
            err.contains("no initialised token has this label")
                && err.contains(&test.settings.label),
            "{err}"
        );
        std::fs::write(&wrong, "\n").unwrap();
        let err = settings(&|s| s.pin_file = wrong.clone());
        assert!(err.contains("is empty"), "{err}");
        let err = settings(&|s| s.module = "/nonexistent/libpkcs11.so".into());
        assert!(err.contains("does not load"), "{err}");
        std::fs::remove_file(&wrong).unwrap();
        // And the right PIN, with a newline after it, opens it.
        Token::open(&test.settings).unwrap();
    }

    #[test]
    fn a_kek_in_the_token_wraps_and_unwraps_there_and_refuses_changes() {
        let test = TestToken::new("kek");
        let token = Token::open(&test.settings).unwrap();
        let kek = token.generate_kek("palisade-kek").unwrap();
        let err = token.generate_kek("palisade-kek").unwrap_err().to_string();
        assert!(err.contains("already there"), "{err}");
        let wrapped = kek
            .wrap(b"0123456789abcdef0123456789abcdef", b"aad")
            .unwrap();
        assert!(!wrapped.windows(16).any(|w| w == b"0123456789abcdef"));
        assert_eq!(
            &kek.unwrap(&wrapped, b"aad").unwrap()[..],
            b"0123456789abcdef0123456789abcdef"
        );
        assert!(kek.unwrap(&wrapped, b"other aad").is_none());
        for i in 0..wrapped.len() {
            let mut changed = wrapped.clone();
            changed[i] ^= 1;
            assert!(kek.unwrap(&changed, b"aad").is_none(), "byte {i}");
        }
        // Found again by its label, with the same id; another KEK does not open it.
        let again = token.kek("palisade-kek").unwrap();
        assert_eq!(again.id(), kek.id());
        assert!(again.unwrap(&wrapped, b"aad").is_some());
        let other = token.generate_kek("other-kek").unwrap();
        assert_ne!(other.id(), kek.id());
        assert!(other.unwrap(&wrapped, b"aad").is_none());
        let err = token.kek("missing").unwrap_err().to_string();
        assert!(err.contains("keys new-kek --in-token missing"), "{err}");
        // And the token will not give it out.
        let handle = token.secret_keys("palisade-kek").unwrap()[0];
        let value = token
            .session()
            .get_attributes(handle, &[AttributeType::Value])
            .unwrap();
        assert!(value.is_empty(), "{value:?}");
    }

    #[test]
    fn a_key_signs_again_after_the_token_forgot_the_login() {
        let test = TestToken::new("relogin");
        let token = Token::open(&test.settings).unwrap();
        let (key, _) = token.generate("ca").unwrap();
        assert!(verifies(&key, b"before"));
        // What an HSM restart or a lost connection does: the token's login is gone, for
        // every session of this process.
        token.session().logout().unwrap();
        let raw = token.pkcs11.open_ro_session(token.slot).unwrap();
        let handles = raw
            .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
            .unwrap();
        assert!(
            handles.is_empty(),
            "the private keys are hidden when logged out"
        );
        drop(raw);
        assert!(
            verifies(&key, b"after"),
            "the key logged in again and signed"
        );
        assert!(verifies(&key, b"and again"));
    }
}
