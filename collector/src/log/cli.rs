//! The log's commands: `truthtable-collector keygen` and `truthtable-collector verify`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use super::note::{LogKey, VerifierKey};
use crate::config::{Cli, Config};
use crate::store::Store;

/// The commands beside serving, chosen by the first argument.
pub const COMMANDS: [&str; 2] = ["keygen", "verify"];

/// `truthtable-collector keygen`: writes a new signing key and prints its verifier key.
#[derive(Debug, Parser)]
#[command(
    name = "truthtable-collector keygen",
    about = "Writes a new Ed25519 signing key for the verifiable log (Go sumdb/note private-key format, file mode 0600) and prints its verifier key"
)]
pub struct Keygen {
    /// The key's name: the origin line of every checkpoint (no spaces, no '+'), e.g.
    /// `audit.example.com/truthtable`.
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// Where to write the key (never over an existing file).
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
}

/// `truthtable-collector verify`: the offline check of a store.
#[derive(Debug, Parser)]
#[command(
    name = "truthtable-collector verify",
    about = "Checks a store against its signed checkpoints, offline: recomputes the tree from the stored records, checks every kept checkpoint, and names each record modified, deleted, inserted or moved, and a cut-off tail. Exit 0 only when it verifies."
)]
pub struct Verify {
    /// The store: a SQLite file or a PostgreSQL URL (passwords as for serving: PGPASSWORD, ...).
    #[arg(long, value_name = "PATH_OR_URL")]
    pub db: String,
    /// The verifier key (`<name>+<hash>+<base64>`) to check signatures against; without it,
    /// the log's own.
    #[arg(long, value_name = "VKEY")]
    pub key: Option<String>,
}

/// Runs the command `args[1]` names (`args[0]` is the program).
pub async fn main(args: Vec<String>) -> ExitCode {
    let command = args.get(1).cloned().unwrap_or_default();
    let rest: Vec<String> = std::iter::once(format!("truthtable-collector {command}"))
        .chain(args.into_iter().skip(2))
        .collect();
    let result = match command.as_str() {
        "keygen" => match Keygen::try_parse_from(rest) {
            Ok(k) => keygen(k),
            Err(e) => e.exit(),
        },
        _ => match Verify::try_parse_from(rest) {
            Ok(v) => verify(v).await,
            Err(e) => e.exit(),
        },
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn keygen(k: Keygen) -> anyhow::Result<ExitCode> {
    let key = LogKey::generate(&k.name)?;
    super::write_key(&k.out, &key)?;
    println!("{}", key.verifier_key());
    Ok(ExitCode::SUCCESS)
}

async fn verify(v: Verify) -> anyhow::Result<ExitCode> {
    let key = v
        .key
        .as_deref()
        .map(VerifierKey::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--key: {e}"))?;
    let cli = Cli::try_parse_from(["truthtable-collector", "--db", &v.db])?;
    let config = Config::new(cli, |name| std::env::var(name).ok());
    if let crate::config::DbTarget::Sqlite(path) = &config.db {
        if !path.exists() {
            anyhow::bail!("no SQLite database at {}", path.display());
        }
    }
    let store = Store::open(&config).await?;
    let report = super::verify::verify_store(&store, key).await?;
    for line in &report.lines {
        println!("{line}");
    }
    let _ = crate::store::CaptureStore::close(&store).await;
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
