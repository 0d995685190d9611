//! The verifiable log: every stored record appended once to an append-only Merkle tree (RFC 6962
//! / RFC 9162 hashing), with signed checkpoints anyone can check offline.
//!
//! - [`tree`]: the tree and its proofs, pure (no I/O);
//! - [`note`]: keys and signed checkpoints (C2SP `tlog-checkpoint` in a C2SP `signed-note`,
//!   Ed25519, Go `sumdb/note` key formats);
//! - [`proof`]: the C2SP `tlog-proof` text.

pub mod cli;
pub mod http;
pub mod note;
pub mod proof;
pub mod sequencer;
pub mod tree;
pub mod verify;

pub use note::{Checkpoint, LogKey, NoteError, VerifierKey};
pub use proof::TlogProof;
pub use sequencer::Log;
pub use tree::{Hash, Query};

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::config::{Config, DbTarget};

/// The key file of a SQLite store that has no `--log-key`: beside the database.
pub fn default_key_path(db: &Path) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(".log-key");
    db.with_file_name(name)
}

/// Reads a key file; every problem names the file.
pub fn read_key(path: &Path) -> anyhow::Result<LogKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the log key {}", path.display()))?;
    LogKey::parse(&text).with_context(|| format!("the log key {}", path.display()))
}

/// Writes a new key file readable by its owner only; refuses to replace one.
pub fn write_key(path: &Path, key: &LogKey) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating the log key {}", path.display()))?;
    writeln!(file, "{}", key.private_key())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing the log key {}", path.display()))
}

/// A fresh key name for a log that was given none: `truthtable/<16 hex digits>`.
pub fn fresh_name() -> anyhow::Result<String> {
    let mut bytes = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| anyhow::anyhow!("the system's random source failed"))?;
    Ok(format!(
        "truthtable/{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

/// The log's key as the configuration gives it: `--log-key`, else (SQLite) the key beside the
/// database, created at first start. `None` when the log is off, or on PostgreSQL without a key.
/// A key file that is missing, unreadable or malformed is an error that names it.
pub fn configured_key(config: &Config) -> anyhow::Result<Option<LogKey>> {
    if config.log_off {
        return Ok(None);
    }
    if let Some(path) = &config.log_key {
        return read_key(path).map(Some);
    }
    match &config.db {
        DbTarget::Postgres(_) => {
            tracing::warn!(
                "the verifiable log is off: on PostgreSQL every replica needs the same key; give it with --log-key (truthtable-collector keygen writes one)"
            );
            Ok(None)
        }
        DbTarget::Sqlite(db) => {
            let path = default_key_path(db);
            if path.exists() {
                return read_key(&path).map(Some);
            }
            let key = LogKey::generate(&fresh_name()?)?;
            write_key(&path, &key)?;
            tracing::warn!(
                key_file = %path.display(),
                verifier_key = %key.verifier_key(),
                "created a signing key for the verifiable log beside the database; in production hold your own key (truthtable-collector keygen) and give it with --log-key"
            );
            Ok(Some(key))
        }
    }
}
