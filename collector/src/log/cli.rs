//! The commands beside serving: the log's (`keygen`, `verify`, `export`, `monitor`) and the
//! SQLite store's one-time conversion to incremental vacuum (`vacuum`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use super::note::{LogKey, VerifierKey};
use crate::config::{Cli, Config};
use crate::store::Store;

/// The commands beside serving, chosen by the first argument.
pub const COMMANDS: [&str; 5] = ["keygen", "verify", "export", "monitor", "vacuum"];

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
    #[arg(long, value_name = "PATH_OR_URL", required_unless_present = "bundle")]
    pub db: Option<String>,
    /// Checks an evidence bundle (`truthtable-collector export`), a directory or a `.tar` /
    /// `.tar.gz` archive, instead of a store: each entry against its proof and the proofs'
    /// checkpoints against the key. Needs no database.
    #[arg(long, value_name = "DIR_OR_ARCHIVE", conflicts_with = "db")]
    pub bundle: Option<PathBuf>,
    /// The verifier key (`<name>+<hash>+<base64>`) to check signatures against; without it,
    /// the log's own.
    #[arg(long, value_name = "VKEY")]
    pub key: Option<String>,
}

/// `truthtable-collector export`: evidence for an auditor.
#[derive(Debug, Parser)]
#[command(
    name = "truthtable-collector export",
    about = "Writes chosen captures (by --id, by the list's filters, or both) with their log entries, inclusion proofs, the checkpoint and the verifier key into a directory, or into one .tar / .tar.gz archive, that `truthtable-collector verify --bundle PATH --key VKEY` checks with no database and no network"
)]
pub struct Export {
    /// The store: a SQLite file or a PostgreSQL URL.
    #[arg(long, value_name = "PATH_OR_URL")]
    pub db: String,
    /// A capture to include (repeat for more).
    #[arg(long = "id", value_name = "ID")]
    pub ids: Vec<String>,
    /// Include the captures started at or after this time (as the list's `since`).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Include the captures started before this time (as the list's `until`).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Filter by model (as the list's `model`).
    #[arg(long, value_name = "MODEL")]
    pub model: Option<String>,
    /// Filter by protocol (as the list's `protocol`; repeat or comma-separate).
    #[arg(long, value_name = "PROTOCOL")]
    pub protocol: Vec<String>,
    /// Filter by outcome (as the list's `outcome`; repeat or comma-separate).
    #[arg(long, value_name = "OUTCOME")]
    pub outcome: Vec<String>,
    /// Filter by status: `200`, `5xx` or `none` (as the list's `status`).
    #[arg(long, value_name = "STATUS")]
    pub status: Option<String>,
    /// Filter by mark: truncated, incomplete, problems (as the list's `mark`).
    #[arg(long, value_name = "MARK")]
    pub mark: Vec<String>,
    /// Full-text search (as the list's `q`).
    #[arg(long, value_name = "TERMS")]
    pub q: Option<String>,
    /// Where to write: a directory (created; must not exist yet), or an archive when the name
    /// ends in `.tar`, `.tar.gz` or `.tgz` (created; must not exist yet).
    #[arg(long, value_name = "DIR_OR_ARCHIVE")]
    pub out: PathBuf,
}

impl Export {
    /// The list's filter parameters these flags give, as query-string pairs.
    fn filter_pairs(&self) -> Vec<(String, String)> {
        let mut pairs = Vec::new();
        let mut one = |key: &str, value: &Option<String>| {
            if let Some(v) = value {
                pairs.push((key.to_owned(), v.clone()));
            }
        };
        one("since", &self.since);
        one("until", &self.until);
        one("model", &self.model);
        one("status", &self.status);
        one("q", &self.q);
        for (key, values) in [
            ("protocol", &self.protocol),
            ("outcome", &self.outcome),
            ("mark", &self.mark),
        ] {
            pairs.extend(values.iter().map(|v| (key.to_owned(), v.clone())));
        }
        pairs
    }
}

/// `truthtable-collector monitor`: watches a collector's log from outside.
#[derive(Debug, Parser)]
#[command(
    name = "truthtable-collector monitor",
    about = "Fetches a collector's newest checkpoint, checks its signature and that it is consistent with the last checkpoint this monitor trusted (kept in --state), and says so; exit 0 only when it is. Catches a history rewritten and re-signed, even by someone holding the key. Run it from another machine on a schedule."
)]
pub struct Monitor {
    /// The collector's base URL, e.g. `https://collector.internal:8081`.
    #[arg(long, value_name = "URL")]
    pub url: String,
    /// The log's verifier key (`<name>+<hash>+<base64>`).
    #[arg(long, value_name = "VKEY")]
    pub key: String,
    /// File holding the last trusted checkpoint (created at the first run).
    #[arg(long, value_name = "PATH")]
    pub state: PathBuf,
}

/// `truthtable-collector vacuum`: the one-time conversion of a SQLite store created before
/// stores gave erased captures' space back.
#[derive(Debug, Parser)]
#[command(
    name = "truthtable-collector vacuum",
    about = "Converts a SQLite store created before incremental vacuum (auto_vacuum=NONE) so that erasures and retention passes give the erased captures' space back to the file system: sets auto_vacuum=INCREMENTAL and runs VACUUM, which rewrites the whole file (it needs free disk of up to twice the file's size meanwhile: a copy in the temporary directory, then the copy written back through the write-ahead log). Stop the collector first: the command refuses a file a collector has open. A store that needs no conversion is left as it is."
)]
pub struct Vacuum {
    /// The SQLite file.
    #[arg(long, value_name = "PATH")]
    pub db: PathBuf,
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
        "export" => match Export::try_parse_from(rest) {
            Ok(x) => export(x).await,
            Err(e) => e.exit(),
        },
        "monitor" => match Monitor::try_parse_from(rest) {
            Ok(m) => monitor(m).await,
            Err(e) => e.exit(),
        },
        "vacuum" => match Vacuum::try_parse_from(rest) {
            Ok(v) => vacuum(v).await,
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
    let (report, store) = match (&v.bundle, &v.db) {
        (Some(dir), _) => {
            let key = key.ok_or_else(|| anyhow::anyhow!("--bundle needs the --key you trust"))?;
            (super::verify::verify_bundle(dir, &key)?, None)
        }
        (None, Some(db)) => {
            let store = open_store(db).await?;
            (super::verify::verify_store(&store, key).await?, Some(store))
        }
        (None, None) => anyhow::bail!("give --db or --bundle"),
    };
    for line in &report.lines {
        println!("{line}");
    }
    if let Some(store) = store {
        let _ = crate::store::CaptureStore::close(&store).await;
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn vacuum(v: Vacuum) -> anyhow::Result<ExitCode> {
    if !v.db.is_file() {
        anyhow::bail!("no SQLite database at {}", v.db.display());
    }
    let path = v.db.clone();
    let converted = tokio::task::spawn_blocking(move || {
        crate::store::sqlite::convert_to_incremental_vacuum(&path)
    })
    .await??;
    match converted {
        None => println!(
            "{}: already gives erased captures' space back (auto_vacuum=INCREMENTAL); nothing to do",
            v.db.display()
        ),
        Some((before, after)) => println!(
            "{}: converted to auto_vacuum=INCREMENTAL; {:.1} MB before, {:.1} MB after",
            v.db.display(),
            before as f64 / 1e6,
            after as f64 / 1e6
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// Opens the store `db` names as serving would (without creating a SQLite file).
async fn open_store(db: &str) -> anyhow::Result<Store> {
    let cli = Cli::try_parse_from(["truthtable-collector", "--db", db])?;
    let config = Config::new(cli, |name| std::env::var(name).ok());
    if let crate::config::DbTarget::Sqlite(path) = &config.db {
        if !path.exists() {
            anyhow::bail!("no SQLite database at {}", path.display());
        }
    }
    Ok(Store::open(&config).await?)
}

/// A capture id as a file name in a bundle: its characters outside `[A-Za-z0-9._-]` as `%XX`.
pub fn bundle_name(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// The archive form `path`'s name asks for: `Some(true)` for gzip, `Some(false)` for plain tar.
fn archive_kind(path: &std::path::Path) -> Option<bool> {
    let name = path.file_name()?.to_str()?;
    if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        Some(true)
    } else if name.ends_with(".tar") {
        Some(false)
    } else {
        None
    }
}

/// The ids the export names: those given with `--id`, then those the filters match, newest
/// first, each once. The filters are the list's own (`GET /v1/captures`), asked of the store's
/// list query page by page.
async fn chosen_ids(store: &Store, x: &Export) -> anyhow::Result<Vec<String>> {
    use crate::store::{CaptureStore as _, ListQuery, Page};
    let pairs = x.filter_pairs();
    let mut ids: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for id in &x.ids {
        if seen.insert(id.clone()) {
            ids.push(id.clone());
        }
    }
    if pairs.is_empty() {
        if ids.is_empty() {
            anyhow::bail!(
                "choose captures: give --id, or a filter (--since, --until, --model, --protocol, --outcome, --status, --mark, --q)"
            );
        }
        return Ok(ids);
    }
    let req = crate::reads::ListRequest::parse(&pairs).map_err(|e| anyhow::anyhow!("{}", e.0))?;
    // The filters read the digests, which the serving collector derives behind ingest.
    if !store
        .stale_digests(0, crate::digest::VERSION, 1)
        .await?
        .is_empty()
    {
        eprintln!(
            "warning: some stored records have no digest yet, and the filters skip them; a running collector derives them within seconds (GET /v1/captures says \"indexing\": false when done), or name them with --id"
        );
    }
    let mut query = ListQuery {
        limit: crate::reads::MAX_LIMIT,
        page: Page::Newest,
        ..req.query
    };
    let mut matched = 0usize;
    loop {
        let rows = store.list(query.clone()).await?;
        let full = rows.len() >= query.limit as usize;
        let Some(last) = rows.last().map(|r| r.seq) else {
            break;
        };
        for row in rows {
            matched += 1;
            if seen.insert(row.id.clone()) {
                ids.push(row.id);
            }
        }
        if !full {
            break;
        }
        query.page = Page::Before(last);
    }
    if matched == 0 {
        anyhow::bail!("no capture matches the filter");
    }
    Ok(ids)
}

async fn export(x: Export) -> anyhow::Result<ExitCode> {
    use crate::store::log::LogStore as _;
    use anyhow::Context as _;
    let archive = archive_kind(&x.out);
    if x.out.exists() {
        anyhow::bail!("{} exists already", x.out.display());
    }
    let store = open_store(&x.db).await?;
    let ids = chosen_ids(&store, &x).await?;
    let state = store.log_state().await?;
    let vkey = state
        .verifier_key
        .ok_or_else(|| anyhow::anyhow!("the store's log has no signed checkpoint yet"))?;
    let (size, note) = store
        .log_checkpoint(None)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the store's log has no signed checkpoint yet"))?;
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for id in &ids {
        let entry = store
            .log_entry(id.clone())
            .await?
            .ok_or_else(|| anyhow::anyhow!("no capture with id {id:?}"))?;
        let index = entry
            .index
            .filter(|i| *i < size)
            .ok_or_else(|| anyhow::anyhow!("capture {id:?} is not yet in a signed checkpoint"))?;
        let path = super::sequencer::answer(&store, super::Query::Inclusion { index, size })
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let proof = super::TlogProof {
            index,
            path,
            checkpoint: note.clone(),
        };
        files.push((format!("{}.entry", bundle_name(id)), entry.raw.into()));
        files.push((
            format!("{}.tlog-proof", bundle_name(id)),
            proof.to_text().into_bytes(),
        ));
    }
    files.push(("checkpoint".to_owned(), note.into_bytes()));
    files.push(("verifier-key".to_owned(), format!("{vkey}\n").into_bytes()));
    match archive {
        Some(gzip) => write_archive(&x.out, gzip, &files)
            .with_context(|| format!("writing {}", x.out.display()))?,
        None => {
            std::fs::create_dir(&x.out).with_context(|| format!("creating {}", x.out.display()))?;
            for (name, body) in files {
                let path = x.out.join(name);
                std::fs::write(&path, body)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    println!(
        "wrote {} capture(s) with their proofs against the checkpoint of size {size} to {}",
        ids.len(),
        x.out.display()
    );
    let _ = crate::store::CaptureStore::close(&store).await;
    Ok(ExitCode::SUCCESS)
}

/// Writes `files` as one tar archive (gzip-compressed when `gzip`), each a regular file at the
/// archive's top level; a new file, never over an existing one.
fn write_archive(
    path: &std::path::Path,
    gzip: bool,
    files: &[(String, Vec<u8>)],
) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut tar = tar::Builder::new(Vec::new());
    let mtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for (name, body) in files {
        let mut header = tar::Header::new_ustar();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(mtime);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, name, body.as_slice())?;
    }
    let mut bytes = tar.into_inner()?;
    if gzip {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&bytes)?;
        bytes = gz.finish()?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    Ok(())
}

async fn monitor(m: Monitor) -> anyhow::Result<ExitCode> {
    use anyhow::Context as _;
    let key = VerifierKey::parse(&m.key).map_err(|e| anyhow::anyhow!("--key: {e}"))?;
    let base = m.url.trim_end_matches('/');
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()?;
    let token = std::env::var(crate::config::READ_TOKEN_ENV)
        .ok()
        .filter(|t| !t.is_empty());
    let get = |path: String| {
        let mut req = client.get(format!("{base}{path}"));
        if let Some(t) = &token {
            req = req.bearer_auth(t);
        }
        async move {
            let r = req
                .send()
                .await
                .with_context(|| format!("GET {base}{path}"))?;
            let status = r.status();
            let body = r.text().await?;
            if !status.is_success() {
                anyhow::bail!("GET {base}{path}: {status}: {body}");
            }
            Ok(body)
        }
    };
    let newest = get("/v1/log/checkpoint".to_owned()).await?;
    let new = match key.open(&newest) {
        Ok(c) => c,
        Err(e) => {
            println!("FAIL the newest checkpoint: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let trusted = match std::fs::read_to_string(&m.state) {
        Ok(text) => Some(
            key.open(&text)
                .with_context(|| format!("the trusted checkpoint in {}", m.state.display()))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", m.state.display())),
    };
    if let Some(old) = trusted {
        if new.size < old.size {
            println!(
                "FAIL the log shrank: it shows a checkpoint of size {}, and a checkpoint of size {} was trusted before",
                new.size, old.size
            );
            return Ok(ExitCode::FAILURE);
        }
        let proof = get(format!(
            "/v1/log/consistency?old={}&new={}",
            old.size, new.size
        ))
        .await?;
        let hashes: Result<Vec<super::Hash>, _> =
            proof.lines().map(super::Hash::parse_hash).collect();
        let consistent = hashes.is_ok_and(|p| {
            super::tree::check_consistency(&p, old.size, old.root, new.size, new.root).is_ok()
        });
        if !consistent {
            println!(
                "FAIL the checkpoint of size {} is not consistent with the trusted checkpoint of size {}: the log's history was rewritten",
                new.size, old.size
            );
            return Ok(ExitCode::FAILURE);
        }
        println!(
            "OK checkpoint of size {} is signed and consistent with the trusted checkpoint of size {}",
            new.size, old.size
        );
    } else {
        println!(
            "OK checkpoint of size {} is signed; trusting it from now on (first run)",
            new.size
        );
    }
    let tmp = m.state.with_extension("tmp");
    std::fs::write(&tmp, &newest)
        .and_then(|()| std::fs::rename(&tmp, &m.state))
        .with_context(|| format!("saving the trusted checkpoint to {}", m.state.display()))?;
    Ok(ExitCode::SUCCESS)
}
