//! `palisade-control-plane keys ...`: offline changes to how the CA and token keys are kept
//! ([`crate::keys`]), run on the data directory with the control plane stopped.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::keys::{Kek, KeyError, KeySource, KeyStorage, KeyWrap as _, migrate};

/// `palisade-control-plane keys ...`: offline changes to how the keys are kept. Stop the
/// control plane first; the flags before the subcommand say how the keys are kept now.
#[derive(Debug, clap::Parser)]
#[command(name = "palisade-control-plane keys")]
pub struct KeysCli {
    #[command(flatten)]
    pub config: crate::Config,
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Re-store the CA and token keys with another source (the CA itself is unchanged:
    /// sidecars notice nothing). E.g. `keys --data-dir D migrate --to envelope
    /// --to-key-encryption-key-file /etc/palisade/kek`, or `keys --data-dir D
    /// --pkcs11-module M --pkcs11-token T --pkcs11-pin-file P migrate --to pkcs11` (imports
    /// the keys into the token as non-extractable; a key in a token never leaves it).
    Migrate {
        #[arg(long, value_enum)]
        to: KeySource,
        #[command(flatten)]
        kek: TargetKek,
    },
    /// Rotate the key-encryption key: re-seal every envelope with the new KEK (a file, or a
    /// key in the token), without touching the keys themselves.
    Rewrap {
        #[command(flatten)]
        kek: TargetKek,
    },
    /// Print a new random key-encryption key (32 bytes, base64) to standard output; with
    /// `--in-token LABEL`, make an AES-256 KEK in the PKCS#11 token (--pkcs11-*) instead,
    /// which never leaves it.
    NewKek {
        #[arg(long, value_name = "LABEL")]
        in_token: Option<String>,
    },
}

/// The KEK that `migrate --to envelope` and `rewrap` seal with.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TargetKek {
    /// A KEK file (default for migrate: the current KEK).
    #[arg(long, conflicts_with = "to_key_encryption_key_pkcs11")]
    pub to_key_encryption_key_file: Option<PathBuf>,
    /// A KEK in the PKCS#11 token (--pkcs11-*), by label.
    #[arg(long, value_name = "LABEL")]
    pub to_key_encryption_key_pkcs11: Option<String>,
}

impl KeysCli {
    /// Runs the command; what it did, one line per key file.
    pub fn run(&self) -> Result<Vec<String>, KeyError> {
        let config = &self.config;
        let (to, to_kek) = match &self.command {
            KeysCommand::NewKek { in_token: None } => {
                return Ok(vec![Kek::generate_base64().to_string()]);
            }
            KeysCommand::NewKek {
                in_token: Some(label),
            } => {
                let kek = config.token()?.generate_kek(label)?;
                return Ok(vec![format!(
                    "made {} (id {}): start with --key-encryption-key-pkcs11 {label}",
                    kek.origin(),
                    kek.id()
                )]);
            }
            KeysCommand::Migrate { to, kek } => (*to, kek.clone()),
            KeysCommand::Rewrap { kek } => {
                if kek.to_key_encryption_key_file.is_none()
                    && kek.to_key_encryption_key_pkcs11.is_none()
                {
                    return Err(KeyError::Refused(
                        "rewrap needs the new KEK: --to-key-encryption-key-file or \
                         --to-key-encryption-key-pkcs11"
                            .into(),
                    ));
                }
                (KeySource::Envelope, kek.clone())
            }
        };
        let files = key_files(&config.data_dir, config.ca_key.as_deref());
        if files.is_empty() {
            return Err(KeyError::stored(
                config.data_dir.clone(),
                "no key files here: is this the control plane's --data-dir?",
            ));
        }
        // The current storage of both keys; they must agree to be moved at once.
        if config.ca_key_source != config.token_key_source {
            return Err(KeyError::stored(
                config.data_dir.clone(),
                "--ca-key-source and --token-key-source differ: migrate with both as they are now set",
            ));
        }
        let from = config.key_storage(config.ca_key_source)?;
        let to = match (to, to_kek) {
            (KeySource::File, _) => KeyStorage::File,
            (
                KeySource::Envelope,
                TargetKek {
                    to_key_encryption_key_file: Some(path),
                    ..
                },
            ) => KeyStorage::Envelope(Arc::new(Kek::from_file(&path)?)),
            (
                KeySource::Envelope,
                TargetKek {
                    to_key_encryption_key_pkcs11: Some(label),
                    ..
                },
            ) => KeyStorage::Envelope(Arc::new(config.token()?.kek(&label)?)),
            (source, _) => config.key_storage(source)?,
        };
        let done = migrate(&config.data_dir, &files, &from, &to)?;
        Ok(done
            .iter()
            .map(|m| format!("{}: {} -> {}", m.path.display(), m.from, m.to))
            .collect())
    }
}

/// A key file the control plane keeps in `data_dir`, with its purpose: the managed CA's
/// signing key (and the next one during a rotation) and the token key. A plugged-in CA's
/// key lives where `--ca-key` says and is migrated with it.
pub fn key_files(data_dir: &Path, plugged_in_key: Option<&Path>) -> Vec<(PathBuf, &'static str)> {
    let mut files = vec![
        (data_dir.join("ca/ca-key.pem"), crate::ca::CA_KEY_PURPOSE),
        (data_dir.join("ca/next-key.pem"), crate::ca::CA_KEY_PURPOSE),
        (
            data_dir.join(crate::tokens::TOKEN_KEY_FILE),
            crate::tokens::TOKEN_KEY_PURPOSE,
        ),
    ];
    if let Some(key) = plugged_in_key {
        files.push((key.to_path_buf(), crate::ca::CA_KEY_PURPOSE));
    }
    files.retain(|(path, _)| path.exists());
    files
}
