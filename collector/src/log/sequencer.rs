//! The log behind ingest: a sequencer that appends every stored record to the tree in the
//! store's commit order, and a signer that publishes a checkpoint when the tree has grown.
//!
//! Neither is on an acknowledgement's path: ingest commits and answers; [`run`] reads what was
//! committed behind a cursor kept in the log's own state, every [`POLL`]. One collector
//! sequences at a time — on a database several share, the holder of the `truthtable.log`
//! lease (the cursor lease the OpenTelemetry exporter uses); a lease lost mid-append cannot fork
//! the log either, since an append only moves the log from the size it read.
//!
//! Before it signs, the signer checks the new tree against the last signed checkpoint with a
//! consistency proof computed from the stored hashes; when that fails (someone changed the
//! store) it says so loudly, counts it, and signs nothing until the store is repaired — ingest
//! and sequencing go on.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::note::{LogKey, VerifierKey};
use super::tree::{self, Hash, Query};
use crate::store::erase::EraseStore;
use crate::store::log::{LogStore, Pending};
use crate::store::{CaptureStore, StoreError};

/// How often the sequencer looks for records to append, and the signer for growth.
pub const POLL: Duration = Duration::from_millis(200);
/// Records appended in one transaction at most.
pub const STEP: u32 = 2000;
/// The lease that makes one collector the sequencer and signer.
const LEASE: Duration = Duration::from_secs(5);
/// How often the sequencer also looks for committed records its cursor walked past. A safety
/// net: the cursor misses none (tests/postgres.rs, two sequencers racing without it); the records
/// once seen behind it came from PostgreSQL's `read_after` ordering transaction ids as text, fixed.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// The lease's name in the store's cursor table.
pub const LEASE_NAME: &str = "truthtable.log";

/// Why the log could not move on.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The stored tree does not answer.
    #[error("{0}")]
    Tree(#[from] tree::TreeError),
    /// The stored log does not agree with what was signed.
    #[error("the log fails its own check: {0}")]
    Inconsistent(String),
}

/// The running log: its key and what it reports.
pub struct Log {
    key: LogKey,
    verifier: VerifierKey,
    holder: String,
    /// Entries in the log, as last seen.
    size: AtomicU64,
    /// Size of the latest signed checkpoint, as last seen.
    signed_size: AtomicU64,
    /// Checkpoints this process signed.
    signed: AtomicU64,
    /// Times the log failed its own check (a stored checkpoint the tree does not agree with).
    failures: AtomicU64,
    /// The log failed its check and nothing is signed.
    failing: AtomicBool,
    /// The last failure said, so it is logged once per change.
    said: Mutex<Option<String>>,
    /// The size of the latest signed checkpoint this process found the stored tree to agree
    /// with (or signed): while the log has that size there is nothing to check or sign.
    checked: Mutex<Option<u64>>,
}

impl Log {
    /// A log signed with `key`.
    pub fn new(key: LogKey) -> Result<Log, super::NoteError> {
        let verifier = VerifierKey::parse(key.verifier_key())?;
        Ok(Log {
            key,
            verifier,
            holder: format!("{}/{:x}", std::process::id(), seed()),
            size: AtomicU64::new(0),
            signed_size: AtomicU64::new(0),
            signed: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            said: Mutex::new(None),
            checked: Mutex::new(None),
        })
    }

    /// The signing key.
    pub fn key(&self) -> &LogKey {
        &self.key
    }

    /// The verifier key.
    pub fn verifier(&self) -> &VerifierKey {
        &self.verifier
    }

    /// Entries in the log, as last seen.
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    /// The log's metrics in Prometheus text format; `stored` is the store's record count when
    /// known (the records not yet sequenced are the difference).
    pub fn render_metrics(&self, stored: Option<u64>) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let size = self.size();
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        };
        metric(
            "truthtable_log_size",
            "gauge",
            "Entries in the verifiable log.",
            size,
        );
        metric(
            "truthtable_log_signed_size",
            "gauge",
            "Size of the latest signed checkpoint.",
            self.signed_size.load(Ordering::Relaxed),
        );
        if let Some(stored) = stored {
            metric(
                "truthtable_log_unsequenced_records",
                "gauge",
                "Stored records not yet in the log (the sequencing lag).",
                stored.saturating_sub(size),
            );
        }
        metric(
            "truthtable_log_checkpoints_signed_total",
            "counter",
            "Checkpoints this process signed.",
            self.signed.load(Ordering::Relaxed),
        );
        metric(
            "truthtable_log_verification_failures_total",
            "counter",
            "Times the stored log disagreed with its last signed checkpoint (nothing is signed meanwhile).",
            self.failures.load(Ordering::Relaxed),
        );
        metric(
            "truthtable_log_failing",
            "gauge",
            "1 while the log fails its own check and signs nothing.",
            u64::from(self.failing.load(Ordering::Relaxed)),
        );
        out
    }

    fn fail(&self, why: &str) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.failing.store(true, Ordering::Relaxed);
        let mut said = self.said.lock().unwrap_or_else(|p| p.into_inner());
        if said.as_deref() != Some(why) {
            tracing::error!(
                problem = %why,
                "THE VERIFIABLE LOG FAILS ITS OWN CHECK: the store no longer agrees with a checkpoint the log signed; no checkpoint is signed until this is resolved (run `truthtable-collector verify`); ingest goes on"
            );
            *said = Some(why.to_owned());
        }
    }

    fn recovered(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!("the verifiable log passes its check again; signing resumes");
            *self.said.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }
}

fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    (nanos ^ (u64::from(std::process::id()) << 32)) | 1
}

/// The answer to a query over the stored tree, reading only the hashes it needs.
pub async fn answer(store: &impl LogStore, query: Query) -> Result<Vec<Hash>, LogError> {
    let hashes = store.log_hashes(query.indexes()?).await?;
    Ok(query.answer(&hashes)?)
}

/// The stored tree's root at `size`.
pub async fn root(store: &impl LogStore, size: u64) -> Result<Hash, LogError> {
    answer(store, Query::Root(size))
        .await?
        .first()
        .copied()
        .ok_or_else(|| LogError::Inconsistent("no root".to_owned()))
}

/// Appends up to [`STEP`] records committed after the log's cursor — or, with `sweep`, any
/// committed records the log does not hold — skipping any the log already holds; returns how
/// many it read.
pub async fn sequence<S: CaptureStore + LogStore + EraseStore>(
    store: &S,
    log: &Log,
    sweep: bool,
) -> Result<usize, LogError> {
    let state = store.log_state().await?;
    log.size.store(state.size, Ordering::Relaxed);
    let mut records: Vec<Pending> = if sweep {
        let unlogged = store.log_unlogged(STEP).await?;
        unlogged.into_iter().map(Pending::from).collect()
    } else {
        store.log_pending(state.cursor, STEP).await?
    };
    let read = records.len();
    // Accountability events (erasures, holds) waiting for the log go in after the records.
    let events = store.unlogged_events(STEP).await?;
    if records.is_empty() && events.is_empty() {
        return Ok(0);
    }
    let last = records
        .last()
        .map_or(state.cursor, |r| r.cursor.max(state.cursor));
    // A record a cursor meets twice (a sweep's, or a shared database's commit order seen
    // twice) is appended once.
    let logged = store
        .log_logged(records.iter().map(|r| r.seq).collect())
        .await?;
    if !logged.is_empty() {
        let logged: std::collections::HashSet<i64> = logged.into_iter().collect();
        records.retain(|r| !logged.contains(&r.seq));
    }
    let mut known = store.log_hashes(tree::frontier(state.size)).await?;
    let leaves: Vec<Hash> = records
        .iter()
        .map(|r| r.leaf)
        .chain(events.iter().map(|e| tree::leaf_hash(e.entry.as_bytes())))
        .collect();
    let made = tree::append(state.size, &leaves, &mut known)?;
    let entries: Vec<(i64, String)> = records
        .into_iter()
        .map(|r| (r.seq, r.id))
        .chain(events.into_iter().map(|e| (-e.seq, e.log_id)))
        .collect();
    let n = entries.len();
    if store.log_append(state.size, last, entries, made).await? {
        log.size.store(state.size + n as u64, Ordering::Relaxed);
        Ok(read)
    } else {
        // Another sequencer moved the log first; read again.
        Ok(0)
    }
}

/// Signs a checkpoint of the stored tree if it has grown past the latest signed one, after
/// checking that the new tree is consistent with it. Returns the size signed, if any.
pub async fn sign(store: &impl LogStore, log: &Log) -> Result<Option<u64>, LogError> {
    let checked = *log.checked.lock().unwrap_or_else(|p| p.into_inner());
    if checked.is_some_and(|n| n == log.size()) {
        return Ok(None);
    }
    let state = store.log_state().await?;
    log.size.store(state.size, Ordering::Relaxed);
    if let Some(theirs) = state.verifier_key.as_deref() {
        if theirs != log.verifier.as_str() {
            return Err(LogError::Inconsistent(format!(
                "the log's checkpoints are signed by {theirs}, and this collector's key is {}; give it the log's key with --log-key",
                log.verifier.as_str()
            )));
        }
    }
    let latest = store.log_checkpoint(None).await?;
    let signed = match &latest {
        Some((n, note)) => {
            let checkpoint = log.verifier.open(note).map_err(|e| {
                LogError::Inconsistent(format!("the stored checkpoint of size {n}: {e}"))
            })?;
            if checkpoint.size != *n {
                return Err(LogError::Inconsistent(format!(
                    "the checkpoint stored as size {n} is of size {}",
                    checkpoint.size
                )));
            }
            log.signed_size.store(*n, Ordering::Relaxed);
            Some(checkpoint)
        }
        None => None,
    };
    if let Some(c) = signed {
        if c.size > state.size {
            return Err(LogError::Inconsistent(format!(
                "the log holds {} entries, and a checkpoint of size {} was signed: entries were removed",
                state.size, c.size
            )));
        }
        let stored = root(store, c.size).await?;
        if stored != c.root {
            return Err(LogError::Inconsistent(format!(
                "the stored tree of size {} has root {stored}, the signed checkpoint {}",
                c.size, c.root
            )));
        }
        if c.size == state.size {
            *log.checked.lock().unwrap_or_else(|p| p.into_inner()) = Some(c.size);
            return Ok(None);
        }
    } else if state.size == 0 {
        return Ok(None);
    }
    let new_root = root(store, state.size).await?;
    if let Some(c) = signed {
        let proof = answer(
            store,
            Query::Consistency {
                old: c.size,
                new: state.size,
            },
        )
        .await?;
        tree::check_consistency(&proof, c.size, c.root, state.size, new_root).map_err(|_| {
            LogError::Inconsistent(format!(
                "the stored tree of size {} is not consistent with the signed checkpoint of size {}",
                state.size, c.size
            ))
        })?;
    }
    let note = log
        .key
        .sign_checkpoint(state.size, new_root)
        .map_err(|e| LogError::Inconsistent(e.to_string()))?;
    store
        .log_put_checkpoint(state.size, note, log.verifier.as_str().to_owned())
        .await?;
    log.signed.fetch_add(1, Ordering::Relaxed);
    log.signed_size.store(state.size, Ordering::Relaxed);
    *log.checked.lock().unwrap_or_else(|p| p.into_inner()) = Some(state.size);
    Ok(Some(state.size))
}

/// Sequences and signs until aborted; with `leased` (a database several collectors share), only
/// while this collector holds the log's lease.
pub async fn run<S: CaptureStore + LogStore + EraseStore>(store: &S, log: &Log, leased: bool) {
    // On a shared database the sequencer also sweeps now and then, a safety net behind its
    // cursor; one collector's SQLite commits in `seq` order, so there is nothing to sweep.
    let mut last_sweep = tokio::time::Instant::now();
    loop {
        let held = if leased {
            store
                .claim_cursor(LEASE_NAME.to_owned(), log.holder.clone(), LEASE)
                .await
        } else {
            Ok(Some(crate::store::Cursor::START))
        };
        match held {
            Ok(Some(_)) => {}
            Ok(None) => {
                // Another collector sequences; keep the gauges current.
                if let Ok(state) = store.log_state().await {
                    log.size.store(state.size, Ordering::Relaxed);
                }
                tokio::time::sleep(POLL * 5).await;
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "the log's lease could not be taken");
                tokio::time::sleep(POLL * 5).await;
                continue;
            }
        }
        let mut full = false;
        let sweep = leased && last_sweep.elapsed() >= SWEEP_EVERY;
        if sweep {
            last_sweep = tokio::time::Instant::now();
        }
        match sequence(store, log, sweep).await {
            Ok(n) => full = n == STEP as usize,
            Err(e) => tracing::warn!(error = %e, "sequencing the log failed; trying again"),
        }
        match sign(store, log).await {
            Ok(_) => log.recovered(),
            Err(LogError::Inconsistent(why)) => log.fail(&why),
            Err(e) => tracing::warn!(error = %e, "signing a checkpoint failed; trying again"),
        }
        if !full {
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Gives up the lease so another collector can sequence at once.
pub async fn release(store: &impl CaptureStore, log: &Log) {
    let _ = store
        .release_cursor(LEASE_NAME.to_owned(), log.holder.clone())
        .await;
}
