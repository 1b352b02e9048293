//! `palisade-control-plane keys ...`: offline changes to how the CA and token keys are kept
//! ([`crate::keys`]), run on the data directory with the control plane stopped.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::keys::{Kek, KeyError, KeySource, KeyStorage, migrate};

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
        /// The KEK for `--to envelope` (default: the current one).
        #[arg(long)]
        to_key_encryption_key_file: Option<PathBuf>,
    },
    /// Rotate the key-encryption key: re-seal every envelope with the new KEK, without
    /// touching the keys themselves.
    Rewrap {
        #[arg(long)]
        to_key_encryption_key_file: PathBuf,
    },
    /// Print a new random key-encryption key (32 bytes, base64) to standard output.
    NewKek,
}

impl KeysCli {
    /// Runs the command; what it did, one line per key file.
    pub fn run(&self) -> Result<Vec<String>, KeyError> {
        let (to, to_kek) = match &self.command {
            KeysCommand::NewKek => return Ok(vec![Kek::generate_base64().to_string()]),
            KeysCommand::Migrate {
                to,
                to_key_encryption_key_file,
            } => (*to, to_key_encryption_key_file.as_ref()),
            KeysCommand::Rewrap {
                to_key_encryption_key_file,
            } => (KeySource::Envelope, Some(to_key_encryption_key_file)),
        };
        let config = &self.config;
        let files = key_files(&config.data_dir, config.ca_key.as_deref());
        if files.is_empty() {
            return Err(KeyError::Envelope {
                path: config.data_dir.clone(),
                reason: "no key files here: is this the control plane's --data-dir?".into(),
            });
        }
        // The current storage of both keys; they must agree to be moved at once.
        if config.ca_key_source != config.token_key_source {
            return Err(KeyError::Envelope {
                path: config.data_dir.clone(),
                reason: "--ca-key-source and --token-key-source differ: migrate with both as they are now set".into(),
            });
        }
        let from = config.key_storage(config.ca_key_source)?;
        let to = match (to, to_kek) {
            (KeySource::File, _) => KeyStorage::file(),
            (KeySource::Envelope, Some(path)) => {
                KeyStorage::envelope(Arc::new(Kek::from_file(path)?))
            }
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
