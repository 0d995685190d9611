//! The embedded store: one SQLite database in WAL mode with `synchronous=FULL`, one writer.
//!
//! A commit is fsynced before [`SqliteStore::insert_batch`] returns; `INSERT OR IGNORE` on the
//! unique `id` skips duplicates; `seq` (an `AUTOINCREMENT` key) grows in commit order, since
//! SQLite has one writer at a time. Every call runs on tokio's blocking pool. A sequential reader
//! ([`CaptureStore::read_after`], the exporter's and the log's) and the log's reads (its state,
//! stored hashes, checkpoints, entries: the sequencer, the signer and the proofs) have a
//! connection of their own, so they never hold up ingest nor wait behind its commits (WAL lets
//! one writer and readers work at once).
//!
//!
//! Digests live in `capture_digests` (keyed by `seq`, narrow rows, an index per filter) and their
//! words in `capture_search`, a contentless FTS5 table (rowid = `seq`) with the `ascii`
//! tokenizer: the words arrive already split and lower-cased by `crate::search`, so FTS5 keeps
//! them as they are and a prefix query (`"env"*`) means what it means on PostgreSQL.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use crate::log::tree::{Hash, Hashes};

use super::erase::{
    EraseCounts, EraseOutcome, EraseRequest, EraseStore, Hold, PendingEvent, Tombstone,
    EVENT_PREFIX, VERDICT_KIND, VERDICT_PREFIX,
};
use super::log::{
    db_int, hash_from, LogEntry, LogState, LogStore, LoggedRecord, Pending, VerdictRow,
};
use super::{
    list_sql, BatchOutcome, CaptureStore, CaptureSummary, Cursor, Dialect, Digest, Health,
    ListQuery, NewCapture, NewVerdict, Page, PendingAnnotation, SqlValue, StaleDigest, StoreError,
    StoreStats, StoredCapture, StoredVerdict, MODELS_SQL,
};

/// The SQLite store; cheap to share behind an `Arc`.
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Mutex<Option<Connection>>,
    /// Reads for [`CaptureStore::read_after`], beside the writer.
    reader: Mutex<Option<Connection>>,
    path: PathBuf,
    /// Rows in `captures`: counted at open, then kept by the one writer.
    records: AtomicU64,
    /// The file gives freed pages back (`auto_vacuum=INCREMENTAL`, every store created since
    /// it was the default); a store created before keeps them for reuse until converted
    /// ([`convert_to_incremental_vacuum`]).
    incremental_vacuum: bool,
}

/// Schema versions, applied in order; `PRAGMA user_version` holds how many have been applied.
const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE IF NOT EXISTS captures (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    started_at  TEXT NOT NULL,
    method      TEXT NOT NULL,
    path        TEXT NOT NULL,
    status      INTEGER,
    outcome     TEXT NOT NULL,
    duration_ms REAL NOT NULL,
    model       TEXT,
    record      TEXT NOT NULL
);
",
    "
CREATE TABLE IF NOT EXISTS export_cursors (
    name           TEXT PRIMARY KEY,
    cursor         TEXT NOT NULL DEFAULT '0-0',
    holder         TEXT,
    lease_until_ms INTEGER NOT NULL DEFAULT 0
);
",
    "
CREATE TABLE capture_digests (
    seq             INTEGER PRIMARY KEY,
    version         INTEGER NOT NULL,
    started_us      INTEGER,
    outcome         TEXT NOT NULL,
    status          INTEGER,
    protocol        TEXT NOT NULL,
    model           TEXT,
    question        TEXT,
    answer          TEXT,
    body_truncated  INTEGER NOT NULL,
    stream_complete INTEGER,
    problems        INTEGER NOT NULL
);
CREATE INDEX capture_digests_started ON capture_digests (started_us);
CREATE INDEX capture_digests_outcome ON capture_digests (outcome, seq);
CREATE INDEX capture_digests_status ON capture_digests (status, seq);
CREATE INDEX capture_digests_protocol ON capture_digests (protocol, seq);
CREATE INDEX capture_digests_model ON capture_digests (model, seq);
CREATE INDEX capture_digests_truncated ON capture_digests (seq) WHERE body_truncated;
CREATE INDEX capture_digests_incomplete ON capture_digests (seq) WHERE NOT stream_complete;
CREATE INDEX capture_digests_problems ON capture_digests (seq) WHERE problems > 0;
CREATE VIRTUAL TABLE capture_search USING fts5(
    words, content='', contentless_delete=1, tokenize='ascii', detail='none', prefix='2 3'
);
",
    // The verifiable log (crate::log): the sequencer gives the records already stored their
    // entries first.
    "
CREATE TABLE log_entries (
    idx INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    id  TEXT NOT NULL
);
CREATE TABLE log_hashes (
    idx  INTEGER PRIMARY KEY,
    hash BLOB NOT NULL
);
CREATE TABLE log_checkpoints (
    size         INTEGER PRIMARY KEY,
    note         TEXT NOT NULL,
    signed_at_ms INTEGER NOT NULL
);
CREATE TABLE log_state (
    one          INTEGER PRIMARY KEY CHECK (one = 1),
    size         INTEGER NOT NULL,
    cursor       TEXT NOT NULL,
    verifier_key TEXT
);
INSERT INTO log_state (one, size, cursor) VALUES (1, 0, '0-0');
",
    // Amendments (`complete_after_stored`): what happened to an exchange after its record was
    // stored, kept as their own rows beside the capture (the capture's bytes never change).
    "
CREATE TABLE capture_amendments (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    received_ms INTEGER NOT NULL,
    record      TEXT NOT NULL
);
",
    "
ALTER TABLE capture_digests ADD COLUMN ttft_us INTEGER;
ALTER TABLE capture_digests ADD COLUMN duration_us INTEGER;
CREATE INDEX capture_digests_ttft ON capture_digests (ttft_us, seq);
CREATE INDEX capture_digests_duration ON capture_digests (duration_us, seq);
",
    // Audit engines' verdicts (crate::engine): appended, never changed.
    "
CREATE TABLE capture_verdicts (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    capture_seq   INTEGER NOT NULL,
    capture_id    TEXT NOT NULL,
    engine        TEXT NOT NULL,
    status        TEXT NOT NULL,
    score         REAL,
    hallucination INTEGER,
    verdict       TEXT NOT NULL,
    received_at   TEXT NOT NULL
);
CREATE INDEX capture_verdicts_capture ON capture_verdicts (capture_id, engine);
CREATE INDEX capture_verdicts_seq ON capture_verdicts (capture_seq);
CREATE INDEX capture_verdicts_flagged ON capture_verdicts (capture_seq) WHERE hallucination;
CREATE INDEX capture_verdicts_score ON capture_verdicts (score, capture_seq);
",
    // Erasure (crate::erase): tombstones, accountability events the log appends, legal holds.
    "
CREATE TABLE tombstones (
    seq        INTEGER PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    started_at TEXT NOT NULL,
    leaf_hash  TEXT NOT NULL,
    erased_at  TEXT NOT NULL,
    reason     TEXT NOT NULL,
    erasure    TEXT NOT NULL,
    erased_by  TEXT NOT NULL
);
CREATE TABLE log_events (
    seq   INTEGER PRIMARY KEY AUTOINCREMENT,
    id    TEXT NOT NULL UNIQUE,
    kind  TEXT NOT NULL,
    entry TEXT NOT NULL
);
CREATE TABLE holds (
    id        TEXT PRIMARY KEY,
    reason    TEXT NOT NULL,
    placed_at TEXT NOT NULL,
    ids       TEXT,
    filters   TEXT,
    lifted_at TEXT
);
",
    // A verdict is evidence too: its JSON moves to its event (`verdict-<seq>`), which the
    // verifiable log appends; the row keeps what the list filters by.
    "
ALTER TABLE capture_verdicts ADD COLUMN event_seq INTEGER;
INSERT INTO log_events (id, kind, entry)
    SELECT 'verdict-' || seq, 'truthtable.verdict/v1', verdict FROM capture_verdicts ORDER BY seq;
UPDATE capture_verdicts SET event_seq =
    (SELECT v.seq FROM log_events v WHERE v.id = 'verdict-' || capture_verdicts.seq);
ALTER TABLE capture_verdicts DROP COLUMN verdict;
CREATE UNIQUE INDEX capture_verdicts_event ON capture_verdicts (event_seq);
ALTER TABLE capture_verdicts ADD COLUMN annotate INTEGER NOT NULL DEFAULT 0;
CREATE INDEX capture_verdicts_annotate ON capture_verdicts (seq) WHERE annotate;
",
    // The log's stored hashes, [`HASHES_PER_ROW`] to a row (`tile_hashes` moves the existing
    // ones here, then `log_hashes` goes): a sequencing step writes a few dozen rows, not two a
    // record, on the writer ingest waits for.
    "
CREATE TABLE log_hash_tiles (
    tile   INTEGER PRIMARY KEY,
    hashes BLOB NOT NULL
);
",
    // Each capture's leaf hash, taken at ingest from the bytes it stores, so the sequencer reads
    // 32 bytes a record instead of the record (NULL on rows stored before: it hashes those).
    "
ALTER TABLE captures ADD COLUMN leaf BLOB;
",
];

/// The migration whose SQL creates `log_hash_tiles`; [`tile_hashes`] fills it in the same
/// transaction.
const TILES_MIGRATION: usize = 10;

/// Stored hashes a row of `log_hash_tiles` holds: row `t` holds the hashes at stored indexes
/// `64 t ..`, 32 bytes each, in order (2 KiB, within one database page). Only the newest row is
/// ever short.
const HASHES_PER_ROW: u64 = 64;

/// Milliseconds since the Unix epoch, by SQLite's clock.
const NOW_MS: &str = "CAST(unixepoch('subsec') * 1000 AS INTEGER)";

const DIALECT: Dialect = Dialect {
    placeholder: |n| format!("?{n}"),
    search: |p| {
        format!("d.seq IN (SELECT rowid FROM capture_search WHERE capture_search MATCH {p})")
    },
    search_param: |terms| {
        terms
            .iter()
            .map(|t| format!("\"{t}\"*"))
            .collect::<Vec<_>>()
            .join(" ")
    },
    // FTS5 gives its matches in rowid (= seq) order, newest first when asked.
    search_walk: None,
};

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` in WAL mode with `synchronous=FULL`,
    /// and brings its schema up to date. Blocks.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // Before anything writes the file's first page (switching to WAL does): a new store
        // can then give erased captures' pages back to the file system ([`SqliteStore::purge`]).
        // On a store created before, this changes nothing until a `VACUUM`.
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Sqlite(rusqlite::Error::InvalidParameterName(
                format!("journal_mode is {mode}, WAL is required"),
            )));
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        // What is deleted is overwritten with zeros, so an erased capture's bytes leave the file.
        conn.pragma_update(None, "secure_delete", "ON")?;
        migrate(&conn)?;
        let records: i64 = conn.query_row("SELECT COUNT(*) FROM captures", [], |r| r.get(0))?;
        let incremental_vacuum = auto_vacuum(&conn)? == AUTO_VACUUM_INCREMENTAL;
        if !incremental_vacuum {
            tracing::warn!(
                db = %path.display(),
                "this SQLite store was created without incremental vacuum: erased captures' pages are reused by new ones, but the file does not shrink; to make it give them back, stop the collector once and run `truthtable-collector vacuum --db {}` (it rewrites the file)",
                path.display()
            );
        }
        let reader = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        reader.busy_timeout(std::time::Duration::from_secs(10))?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                conn: Mutex::new(Some(conn)),
                reader: Mutex::new(Some(reader)),
                path: path.to_owned(),
                records: AtomicU64::new(u64::try_from(records).unwrap_or_default()),
                incremental_vacuum,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on the reading connection, on the blocking pool: with WAL it reads beside the
    /// writer and never waits behind ingest's commits (the log's reads, a sequential reader's).
    async fn reading<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let guard = inner.reader.lock().unwrap_or_else(|p| p.into_inner());
            f(guard.as_ref().ok_or(StoreError::Closed)?)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
    }

    /// Runs `f` on the connection, on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner, &mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let mut guard = inner.conn.lock().unwrap_or_else(|p| p.into_inner());
            let conn = guard.as_mut().ok_or(StoreError::Closed)?;
            f(&inner, conn)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
    }
}

/// `PRAGMA auto_vacuum`'s value for `INCREMENTAL`.
const AUTO_VACUUM_INCREMENTAL: i64 = 2;

fn auto_vacuum(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?)
}

/// Converts the store at `path`, created before stores gave freed pages back, to
/// `auto_vacuum=INCREMENTAL` with a `VACUUM`, which rewrites the whole file (and needs free disk
/// of up to twice its size meanwhile: a temporary copy, then the write-ahead log). Takes the file for itself: fails at once, changing nothing, while a
/// collector has it open. Returns the file's size before and after (the file and its
/// write-ahead log), or `None` when it needed no conversion. Blocks.
pub fn convert_to_incremental_vacuum(path: &Path) -> Result<Option<(u64, u64)>, StoreError> {
    let size = || file_and_wal_bytes(path);
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    // An exclusive lock, taken without waiting: in WAL mode it is refused while another
    // connection (a running collector's) has the database open.
    conn.busy_timeout(Duration::ZERO)?;
    let mode: String = conn.query_row("PRAGMA locking_mode=EXCLUSIVE", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("exclusive") {
        return Err(StoreError::Config(format!(
            "{}: could not take the file for itself (locking_mode is {mode})",
            path.display()
        )));
    }
    let busy = |e: rusqlite::Error| match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            StoreError::Config(format!(
                "{} is in use (is a collector running on it? stop it first)",
                path.display()
            ))
        }
        _ => StoreError::Sqlite(e),
    };
    conn.execute_batch("BEGIN EXCLUSIVE; COMMIT;")
        .map_err(busy)?;
    if auto_vacuum(&conn)? == AUTO_VACUUM_INCREMENTAL {
        return Ok(None);
    }
    let before = size();
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    conn.execute_batch("VACUUM").map_err(busy)?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    if auto_vacuum(&conn)? != AUTO_VACUUM_INCREMENTAL {
        return Err(StoreError::Config(format!(
            "{}: VACUUM did not turn on incremental vacuum",
            path.display()
        )));
    }
    drop(conn);
    Ok(Some((before, size())))
}

/// Bytes of the database file at `path` and its write-ahead log.
fn file_and_wal_bytes(path: &Path) -> u64 {
    let mut wal = path.to_owned().into_os_string();
    wal.push("-wal");
    [path.to_owned(), PathBuf::from(wal)]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let applied: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (version, sql) in MIGRATIONS.iter().enumerate().skip(applied.max(0) as usize) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        if version + 1 == TILES_MIGRATION {
            tile_hashes(&tx)?;
        }
        tx.execute_batch(&format!("PRAGMA user_version = {};", version + 1))?;
        tx.commit()?;
    }
    Ok(())
}

/// Moves the stored hashes a store kept a row each (`log_hashes`, before migration 10) to
/// `log_hash_tiles`, and drops the old table. A row holds a run from its first index; a hash
/// after a gap in its row is not carried over, so the log's self-check names it missing.
fn tile_hashes(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    let mut rows: Vec<(u64, Vec<u8>)> = Vec::new();
    {
        let mut stmt = tx.prepare("SELECT idx, hash FROM log_hashes ORDER BY idx")?;
        let mut found = stmt.query([])?;
        while let Some(r) = found.next()? {
            let idx = u64::try_from(r.get::<_, i64>(0)?).unwrap_or(u64::MAX);
            let hash: Vec<u8> = r.get(1)?;
            let (tile, at) = (idx / HASHES_PER_ROW, idx % HASHES_PER_ROW);
            match rows.last_mut() {
                Some((t, bytes))
                    if *t == tile && bytes.len() as u64 == at * 32 && hash.len() == 32 =>
                {
                    bytes.extend_from_slice(&hash);
                }
                _ if at == 0 && hash.len() == 32 => rows.push((tile, hash)),
                _ => {}
            }
        }
    }
    let mut put = tx.prepare("INSERT INTO log_hash_tiles (tile, hashes) VALUES (?1, ?2)")?;
    for (tile, bytes) in rows {
        put.execute(params![db_int(tile), bytes])?;
    }
    tx.execute_batch("DROP TABLE log_hashes;")?;
    Ok(())
}

/// A cursor as `export_cursors` keeps it.
fn parse_cursor(text: &str) -> Result<Cursor, StoreError> {
    text.parse().map_err(|e: super::BadCursor| {
        StoreError::Sqlite(rusqlite::Error::InvalidParameterName(format!(
            "export_cursors holds {e}"
        )))
    })
}

fn insert_batch(
    conn: &mut Connection,
    batch: &[NewCapture],
    leaves: &[Hash],
) -> Result<BatchOutcome, StoreError> {
    let tx = conn.transaction()?;
    let mut outcome = BatchOutcome::default();
    {
        // `model` stays NULL: the digest, written behind ingest, names the model. An erased
        // capture's id (a tombstone's) is not stored again: a duplicate.
        let mut stmt = tx.prepare_cached(
            "INSERT OR IGNORE INTO captures
             (id, started_at, method, path, status, outcome, duration_ms, record, leaf)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9
             WHERE NOT EXISTS (SELECT 1 FROM tombstones WHERE id = ?1)",
        )?;
        for ((i, c), leaf) in batch.iter().enumerate().zip(leaves) {
            let n = stmt.execute(params![
                c.id,
                c.started_at,
                c.method,
                c.path,
                c.status,
                c.outcome,
                c.duration_ms,
                c.raw,
                &leaf.0[..]
            ])?;
            if n == 1 {
                outcome.stored += 1;
                outcome.new.push((i, tx.last_insert_rowid()));
            } else {
                outcome.duplicates += 1;
            }
        }
        let mut amend = tx.prepare_cached(&format!(
            "INSERT OR IGNORE INTO capture_amendments (id, received_ms, record)
             SELECT ?1, {NOW_MS}, ?2 WHERE NOT EXISTS (SELECT 1 FROM tombstones WHERE id = ?1)"
        ))?;
        for c in batch.iter().filter(|c| crate::record::is_amendment(&c.raw)) {
            amend.execute(params![c.id, c.raw])?;
        }
    }
    tx.commit()?;
    Ok(outcome)
}

/// Writes (or replaces) the digests of `written` — `(seq, digest, whether one is replaced)` —
/// and their words: every digest row first, then every word row. An FTS5 table writes out the
/// words it holds in memory at each statement of the transaction that needs a statement journal,
/// which an `INSERT OR REPLACE` into a table with indexes does: interleaved, the two wrote a
/// segment of the word index per record, at three times the cost (BENCHMARKS.md).
fn write_digests(conn: &Connection, written: &[(i64, &Digest, bool)]) -> Result<(), StoreError> {
    let mut row = conn.prepare_cached(
        "INSERT OR REPLACE INTO capture_digests
         (seq, version, started_us, outcome, status, protocol, model, question, answer,
          body_truncated, stream_complete, problems, ttft_us, duration_us)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?;
    for (seq, d, _) in written {
        row.execute(params![
            seq,
            d.version,
            d.started_us,
            d.outcome,
            d.status,
            d.protocol,
            d.model,
            d.question,
            d.answer,
            d.body_truncated,
            d.stream_complete,
            d.problems,
            d.ttft_us,
            d.duration_us
        ])?;
    }
    let mut forget = conn.prepare_cached("DELETE FROM capture_search WHERE rowid = ?1")?;
    let mut words =
        conn.prepare_cached("INSERT INTO capture_search (rowid, words) VALUES (?1, ?2)")?;
    for (seq, d, replacing) in written {
        if *replacing {
            forget.execute(params![seq])?;
        }
        words.execute(params![seq, d.words])?;
    }
    Ok(())
}

fn summary(r: &rusqlite::Row<'_>) -> rusqlite::Result<CaptureSummary> {
    Ok(CaptureSummary {
        seq: r.get(0)?,
        id: r.get(1)?,
        started_at: r.get(2)?,
        method: r.get(3)?,
        path: r.get(4)?,
        status: r.get(5)?,
        outcome: r.get(6)?,
        duration_ms: r.get(7)?,
        model: r.get(8)?,
        protocol: r.get(9)?,
        question: r.get(10)?,
        answer: r.get(11)?,
        body_truncated: r.get(12)?,
        stream_complete: r.get(13)?,
        problems: r.get(14)?,
        ttft_ms: r.get::<_, Option<i64>>(15)?.map(|us| us as f64 / 1000.0),
        keys: (r.get(15)?, r.get(16)?),
        verdict_count: r.get(17)?,
        flagged: r.get::<_, Option<i64>>(18)?.map(|f| f > 0),
        lowest_score: r.get(19)?,
    })
}

impl CaptureStore for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn insert_batch(&self, batch: Vec<NewCapture>) -> Result<BatchOutcome, StoreError> {
        let leaves: Vec<Hash> = batch
            .iter()
            .map(|c| crate::log::tree::leaf_hash(c.raw.as_bytes()))
            .collect();
        self.blocking(move |inner, conn| {
            let outcome = insert_batch(conn, &batch, &leaves)?;
            inner.records.fetch_add(outcome.stored, Ordering::Relaxed);
            Ok(outcome)
        })
        .await
    }

    async fn amendments(&self, id: String) -> Result<Vec<String>, StoreError> {
        self.blocking(move |_, conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT record FROM capture_amendments WHERE id = ?1 ORDER BY seq",
            )?;
            let rows = stmt.query_map(params![id], |r| r.get(0))?;
            Ok(rows.collect::<Result<Vec<String>, _>>()?)
        })
        .await
    }

    async fn get(&self, id: String) -> Result<Option<String>, StoreError> {
        self.blocking(move |_, conn| {
            Ok(conn
                .query_row(
                    "SELECT record FROM captures WHERE id = ?1",
                    params![id],
                    |r| r.get(0),
                )
                .optional()?)
        })
        .await
    }

    async fn list(&self, query: ListQuery) -> Result<Vec<CaptureSummary>, StoreError> {
        self.blocking(move |_, conn| {
            let (sql, values) = list_sql(&query, &DIALECT);
            let values: Vec<rusqlite::types::Value> = values
                .into_iter()
                .map(|v| match v {
                    SqlValue::Int(i) => rusqlite::types::Value::Integer(i),
                    SqlValue::Text(t) => rusqlite::types::Value::Text(t),
                })
                .collect();
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(values), summary)?;
            let mut rows = rows.collect::<Result<Vec<_>, _>>()?;
            if matches!(query.page, Page::After(_)) {
                rows.reverse();
            }
            Ok(rows)
        })
        .await
    }

    async fn models(&self) -> Result<Vec<String>, StoreError> {
        self.blocking(move |_, conn| {
            let mut stmt = conn.prepare_cached(MODELS_SQL)?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn stale_digests(
        &self,
        after: i64,
        version: i32,
        limit: u32,
    ) -> Result<Vec<StaleDigest>, StoreError> {
        self.blocking(move |_, conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT c.seq, c.record FROM captures c
                 LEFT JOIN capture_digests d ON d.seq = c.seq
                 WHERE c.seq > ?1 AND (d.seq IS NULL OR d.version < ?2)
                 ORDER BY c.seq LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![after, version, limit], |r| {
                Ok(StaleDigest {
                    seq: r.get(0)?,
                    raw: r.get(1)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn put_digests(&self, digests: Vec<(i64, Digest)>) -> Result<u64, StoreError> {
        self.blocking(move |_, conn| {
            let tx = conn.transaction()?;
            let mut written = Vec::with_capacity(digests.len());
            {
                let mut current = tx.prepare_cached(
                    "SELECT d.version FROM captures c
                     LEFT JOIN capture_digests d ON d.seq = c.seq WHERE c.seq = ?1",
                )?;
                for (seq, digest) in &digests {
                    let version: Option<Option<i32>> =
                        current.query_row(params![seq], |r| r.get(0)).optional()?;
                    // Only records that exist, and never over a newer derivation's digest.
                    match version {
                        Some(v) if v.is_none_or(|v| v < digest.version) => {
                            written.push((*seq, digest, v.is_some()));
                        }
                        _ => {}
                    }
                }
            }
            write_digests(&tx, &written)?;
            tx.commit()?;
            Ok(written.len() as u64)
        })
        .await
    }

    async fn read_after(
        &self,
        after: Cursor,
        limit: u32,
    ) -> Result<Vec<StoredCapture>, StoreError> {
        self.reading(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, id, record FROM captures WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![after.seq, limit], |r| {
                let seq: i64 = r.get(0)?;
                Ok(StoredCapture {
                    cursor: Cursor { tx: 0, seq },
                    seq,
                    id: r.get(1)?,
                    raw: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn claim_cursor(
        &self,
        name: String,
        holder: String,
        lease: Duration,
    ) -> Result<Option<Cursor>, StoreError> {
        let lease_ms = super::lease_ms(lease);
        self.blocking(move |_, conn| {
            let cursor: Option<String> = conn
                .query_row(
                    &format!(
                        "INSERT INTO export_cursors AS c (name, holder, lease_until_ms)
                         VALUES (?1, ?2, {NOW_MS} + ?3)
                         ON CONFLICT (name) DO UPDATE
                         SET holder = excluded.holder, lease_until_ms = excluded.lease_until_ms
                         WHERE c.holder = excluded.holder OR c.holder IS NULL
                            OR c.lease_until_ms < {NOW_MS}
                         RETURNING cursor"
                    ),
                    params![name, holder, lease_ms],
                    |r| r.get(0),
                )
                .optional()?;
            cursor.map(|c| parse_cursor(&c)).transpose()
        })
        .await
    }

    async fn save_cursor(
        &self,
        name: String,
        holder: String,
        cursor: Cursor,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let lease_ms = super::lease_ms(lease);
        self.blocking(move |_, conn| {
            let n = conn.execute(
                &format!(
                    "UPDATE export_cursors SET cursor = ?3, lease_until_ms = {NOW_MS} + ?4
                     WHERE name = ?1 AND holder = ?2"
                ),
                params![name, holder, cursor.to_string(), lease_ms],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn release_cursor(&self, name: String, holder: String) -> Result<(), StoreError> {
        self.blocking(move |_, conn| {
            conn.execute(
                "UPDATE export_cursors SET holder = NULL, lease_until_ms = 0
                 WHERE name = ?1 AND holder = ?2",
                params![name, holder],
            )?;
            Ok(())
        })
        .await
    }

    async fn add_verdict(&self, v: NewVerdict) -> Result<(), StoreError> {
        self.blocking(move |_, conn| {
            let tx = conn.transaction()?;
            let added = tx
                .prepare_cached(
                    "INSERT INTO capture_verdicts
                     (capture_seq, capture_id, engine, status, score, hallucination, received_at, annotate)
                     SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8 WHERE EXISTS (SELECT 1 FROM captures WHERE seq = ?1)",
                )?
                .execute(params![
                    v.capture_seq,
                    v.capture_id,
                    v.engine,
                    v.status,
                    v.score,
                    v.hallucination,
                    v.received_at,
                    v.annotate
                ])?;
            if added == 1 {
                let row = tx.last_insert_rowid();
                tx.prepare_cached("INSERT INTO log_events (id, kind, entry) VALUES (?1, ?2, ?3)")?
                    .execute(params![format!("{VERDICT_PREFIX}{row}"), VERDICT_KIND, v.verdict])?;
                let event = tx.last_insert_rowid();
                tx.prepare_cached("UPDATE capture_verdicts SET event_seq = ?1 WHERE seq = ?2")?
                    .execute(params![event, row])?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn capture_seq(&self, id: String) -> Result<Option<i64>, StoreError> {
        self.blocking(move |_, conn| {
            Ok(conn
                .prepare_cached("SELECT seq FROM captures WHERE id = ?1")?
                .query_row(params![id], |r| r.get(0))
                .optional()?)
        })
        .await
    }

    async fn verdicts(&self, id: String) -> Result<Vec<StoredVerdict>, StoreError> {
        self.blocking(move |_, conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT v.entry, v.id, e.idx FROM capture_verdicts cv
                 JOIN log_events v ON v.seq = cv.event_seq
                 LEFT JOIN log_entries e ON e.seq = -v.seq
                 WHERE cv.capture_id = ?1 ORDER BY cv.seq",
            )?;
            let rows = stmt.query_map(params![id], |r| {
                Ok(StoredVerdict {
                    json: r.get(0)?,
                    event: r.get(1)?,
                    log_index: r
                        .get::<_, Option<i64>>(2)?
                        .and_then(|i| u64::try_from(i).ok()),
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn to_annotate(&self, limit: u32) -> Result<Vec<PendingAnnotation>, StoreError> {
        self.blocking(move |_, conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT cv.seq, cv.capture_id, v.entry FROM capture_verdicts cv
                 JOIN log_events v ON v.seq = cv.event_seq
                 WHERE cv.annotate ORDER BY cv.seq LIMIT ?1",
            )?;
            let rows = stmt.query_map(params![limit], |r| {
                Ok(PendingAnnotation {
                    row: r.get(0)?,
                    capture_id: r.get(1)?,
                    verdict: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn annotated(&self, rows: Vec<i64>) -> Result<(), StoreError> {
        self.blocking(move |_, conn| {
            let tx = conn.transaction()?;
            {
                let mut stmt =
                    tx.prepare_cached("UPDATE capture_verdicts SET annotate = 0 WHERE seq = ?1")?;
                for row in rows {
                    stmt.execute(params![row])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn judged(&self, engine: String, ids: Vec<String>) -> Result<Vec<String>, StoreError> {
        self.blocking(move |_, conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT 1 FROM capture_verdicts WHERE capture_id = ?1 AND engine = ?2 LIMIT 1",
            )?;
            let mut out = Vec::new();
            for id in ids {
                if stmt.exists(params![id, engine])? {
                    out.push(id);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let bytes = file_and_wal_bytes(&self.inner.path);
        Ok(StoreStats {
            records: self.inner.records.load(Ordering::Relaxed),
            bytes,
        })
    }

    fn health(&self) -> Health {
        Health::Up
    }

    /// Checkpoints the log into the database and closes it. Waits for any operation in progress.
    async fn close(&self) -> Result<(), StoreError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            if let Some(reader) = inner
                .reader
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
            {
                reader.close().map_err(|(_, e)| StoreError::Sqlite(e))?;
            }
            let mut guard = inner.conn.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(conn) = guard.take() {
                conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
                conn.close().map_err(|(_, e)| StoreError::Sqlite(e))?;
            }
            Ok(())
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
    }
}

impl LogStore for SqliteStore {
    async fn log_state(&self) -> Result<LogState, StoreError> {
        self.reading(|conn| {
            let (size, cursor, verifier_key): (i64, String, Option<String>) = conn.query_row(
                "SELECT size, cursor, verifier_key FROM log_state WHERE one = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            Ok(LogState {
                size: u64::try_from(size).unwrap_or_default(),
                cursor: parse_cursor(&cursor)?,
                verifier_key,
            })
        })
        .await
    }

    async fn log_hashes(&self, indexes: Vec<u64>) -> Result<Hashes, StoreError> {
        self.reading(move |conn| {
            let mut by_row: std::collections::BTreeMap<u64, Vec<u64>> = Default::default();
            for i in indexes {
                by_row.entry(i / HASHES_PER_ROW).or_default().push(i);
            }
            let mut stmt =
                conn.prepare_cached("SELECT hashes FROM log_hash_tiles WHERE tile = ?1")?;
            let mut out = Hashes::default();
            for (tile, wanted) in by_row {
                let found = stmt
                    .query_row(params![db_int(tile)], |r| {
                        let bytes = r.get_ref(0)?.as_blob()?;
                        Ok(wanted
                            .iter()
                            .filter_map(|&i| {
                                let at = usize::try_from(i % HASHES_PER_ROW).ok()? * 32;
                                Some((i, bytes.get(at..at + 32)?.to_vec()))
                            })
                            .collect::<Vec<_>>())
                    })
                    .optional()?;
                for (i, hash) in found.unwrap_or_default() {
                    out.0.insert(i, hash_from(&hash)?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn log_append(
        &self,
        from: u64,
        cursor: Cursor,
        entries: Vec<(i64, String)>,
        hashes: Vec<(u64, Hash)>,
    ) -> Result<bool, StoreError> {
        self.blocking(move |_, conn| {
            let tx = conn.transaction()?;
            let to = from + entries.len() as u64;
            let moved = tx.execute(
                "UPDATE log_state SET size = ?1, cursor = ?2 WHERE one = 1 AND size = ?3",
                params![db_int(to), cursor.to_string(), db_int(from)],
            )?;
            if moved != 1 {
                return Ok(false);
            }
            {
                let mut entry = tx
                    .prepare_cached("INSERT INTO log_entries (idx, seq, id) VALUES (?1, ?2, ?3)")?;
                for (idx, (seq, id)) in (from..).zip(&entries) {
                    entry.execute(params![db_int(idx), seq, id])?;
                }
                put_hashes(&tx, hashes)?;
            }
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn log_put_checkpoint(
        &self,
        size: u64,
        note: String,
        verifier_key: String,
    ) -> Result<(), StoreError> {
        self.blocking(move |_, conn| {
            let tx = conn.transaction()?;
            tx.execute(
                &format!(
                    "INSERT INTO log_checkpoints (size, note, signed_at_ms) VALUES (?1, ?2, {NOW_MS})
                     ON CONFLICT (size) DO NOTHING"
                ),
                params![db_int(size), note],
            )?;
            tx.execute(
                "UPDATE log_state SET verifier_key = ?1 WHERE one = 1 AND verifier_key IS NULL",
                params![verifier_key],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn log_checkpoint(&self, size: Option<u64>) -> Result<Option<(u64, String)>, StoreError> {
        self.reading(move |conn| {
            let row = |r: &rusqlite::Row<'_>| -> rusqlite::Result<(i64, String)> {
                Ok((r.get(0)?, r.get(1)?))
            };
            let found = match size {
                Some(n) => conn
                    .query_row(
                        "SELECT size, note FROM log_checkpoints WHERE size = ?1",
                        params![db_int(n)],
                        row,
                    )
                    .optional()?,
                None => conn
                    .query_row(
                        "SELECT size, note FROM log_checkpoints ORDER BY size DESC LIMIT 1",
                        [],
                        row,
                    )
                    .optional()?,
            };
            Ok(found.map(|(n, note)| (u64::try_from(n).unwrap_or_default(), note)))
        })
        .await
    }

    async fn log_checkpoints(&self) -> Result<Vec<(u64, String)>, StoreError> {
        self.reading(|conn| {
            let mut stmt = conn.prepare("SELECT size, note FROM log_checkpoints ORDER BY size")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    u64::try_from(r.get::<_, i64>(0)?).unwrap_or_default(),
                    r.get(1)?,
                ))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn log_entry(&self, id: String) -> Result<Option<LogEntry>, StoreError> {
        self.reading(move |conn| {
            entry_at(
                conn,
                "SELECT c.record, e.idx FROM captures c
                 LEFT JOIN log_entries e ON e.seq = c.seq WHERE c.id = ?1",
                &id,
            )
        })
        .await
    }

    async fn log_event_entry(&self, id: String) -> Result<Option<LogEntry>, StoreError> {
        self.reading(move |conn| {
            entry_at(
                conn,
                "SELECT v.entry, e.idx FROM log_events v
                 LEFT JOIN log_entries e ON e.seq = -v.seq WHERE v.id = ?1",
                &id,
            )
        })
        .await
    }

    async fn log_records(&self, from: u64, limit: u32) -> Result<Vec<LoggedRecord>, StoreError> {
        self.reading(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT e.idx, e.id, coalesce(c.record, v.entry), t.erasure, cv.capture_id,
                        cv.engine, cv.status, cv.score, cv.hallucination FROM log_entries e
                 LEFT JOIN captures c ON c.seq = e.seq
                 LEFT JOIN log_events v ON e.seq < 0 AND v.seq = -e.seq
                 LEFT JOIN tombstones t ON t.seq = e.seq
                 LEFT JOIN capture_verdicts cv ON e.seq < 0 AND cv.event_seq = -e.seq
                 WHERE e.idx >= ?1 ORDER BY e.idx LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![db_int(from), limit], |r| {
                let id: String = r.get(1)?;
                let capture_id: Option<String> = r.get(4)?;
                let verdict_row = match capture_id {
                    Some(capture_id) => Some(VerdictRow {
                        event: id.strip_prefix(EVENT_PREFIX).unwrap_or(&id).to_owned(),
                        capture_id,
                        engine: r.get(5)?,
                        status: r.get(6)?,
                        score: r.get(7)?,
                        hallucination: r.get(8)?,
                    }),
                    None => None,
                };
                Ok(LoggedRecord {
                    index: u64::try_from(r.get::<_, i64>(0)?).unwrap_or_default(),
                    id,
                    raw: r.get(2)?,
                    erased_by: r.get(3)?,
                    verdict_row,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn log_pending(&self, after: Cursor, limit: u32) -> Result<Vec<Pending>, StoreError> {
        self.reading(move |conn| {
            // The record is read only where no leaf hash was kept at ingest.
            let mut stmt = conn.prepare_cached(
                "SELECT seq, id, leaf, CASE WHEN length(leaf) = 32 THEN NULL ELSE record END
                 FROM captures WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![after.seq, limit], |r| {
                let seq: i64 = r.get(0)?;
                let leaf = match r.get_ref(3)?.as_str_or_null()? {
                    Some(record) => crate::log::tree::leaf_hash(record.as_bytes()),
                    None => Hash(r.get(2)?),
                };
                Ok(Pending {
                    cursor: Cursor { tx: 0, seq },
                    seq,
                    id: r.get(1)?,
                    leaf,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn log_logged(&self, seqs: Vec<i64>) -> Result<Vec<i64>, StoreError> {
        self.reading(move |conn| {
            let (Some(&low), Some(&high)) = (seqs.iter().min(), seqs.iter().max()) else {
                return Ok(Vec::new());
            };
            // A step's records are nearly consecutive: one range read, not a lookup each.
            if high.abs_diff(low) <= 4 * seqs.len() as u64 + 64 {
                let wanted: std::collections::HashSet<i64> = seqs.into_iter().collect();
                let mut stmt =
                    conn.prepare_cached("SELECT seq FROM log_entries WHERE seq BETWEEN ?1 AND ?2")?;
                let found = stmt.query_map(params![low, high], |r| r.get::<_, i64>(0))?;
                let mut out = Vec::new();
                for seq in found {
                    let seq = seq?;
                    if wanted.contains(&seq) {
                        out.push(seq);
                    }
                }
                return Ok(out);
            }
            let mut stmt = conn.prepare_cached("SELECT 1 FROM log_entries WHERE seq = ?1")?;
            let mut out = Vec::new();
            for seq in seqs {
                if stmt.exists(params![seq])? {
                    out.push(seq);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn log_unlogged(&self, limit: u32) -> Result<Vec<StoredCapture>, StoreError> {
        self.blocking(move |_, conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT c.seq, c.id, c.record FROM captures c
                 WHERE NOT EXISTS (SELECT 1 FROM log_entries e WHERE e.seq = c.seq)
                 ORDER BY c.seq LIMIT ?1",
            )?;
            let rows = stmt.query_map(params![limit], |r| {
                let seq: i64 = r.get(0)?;
                Ok(StoredCapture {
                    cursor: Cursor { tx: 0, seq },
                    seq,
                    id: r.get(1)?,
                    raw: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn log_missing(&self, cursor: Cursor) -> Result<Vec<(String, bool)>, StoreError> {
        self.reading(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT c.id, c.seq <= ?1 FROM captures c
                 WHERE NOT EXISTS (SELECT 1 FROM log_entries e WHERE e.seq = c.seq)
                 ORDER BY c.seq",
            )?;
            let rows = stmt.query_map(params![cursor.seq], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}

/// Every table that holds a capture's content, and how to delete it by `seq`: erasure deletes
/// through this list (a new table of derived content is one more line).
const CONTENT_TABLES: &[&str] = &[
    "DELETE FROM capture_search WHERE rowid = ?1",
    "DELETE FROM capture_digests WHERE seq = ?1",
    "DELETE FROM log_events WHERE seq IN (SELECT event_seq FROM capture_verdicts WHERE capture_seq = ?1)",
    "DELETE FROM capture_verdicts WHERE capture_seq = ?1",
    "DELETE FROM capture_amendments WHERE id = (SELECT id FROM captures WHERE seq = ?1)",
    "DELETE FROM captures WHERE seq = ?1",
];

const TOMBSTONE_COLUMNS: &str = "t.id, t.started_at, e.idx, t.leaf_hash, t.erased_at, t.reason,
     t.erasure, t.erased_by FROM tombstones t LEFT JOIN log_entries e ON e.seq = t.seq";

fn tombstone(r: &rusqlite::Row<'_>) -> rusqlite::Result<Tombstone> {
    tombstone_from(r, 0)
}

/// The tombstone in the row's [`TOMBSTONE_COLUMNS`] from column `at` on.
fn tombstone_from(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Tombstone> {
    Ok(Tombstone {
        id: r.get(at)?,
        started_at: r.get(at + 1)?,
        log_index: r
            .get::<_, Option<i64>>(at + 2)?
            .and_then(|i| u64::try_from(i).ok()),
        leaf_hash: r.get(at + 3)?,
        erased_at: r.get(at + 4)?,
        reason: r.get(at + 5)?,
        erasure: r.get(at + 6)?,
        by: r.get(at + 7)?,
    })
}

fn erase(conn: &mut Connection, req: &EraseRequest) -> Result<EraseOutcome, StoreError> {
    let tx = conn.transaction()?;
    let mut out = EraseOutcome::default();
    let mut found: Vec<(i64, String, String, String)> = Vec::new();
    {
        let mut capture =
            tx.prepare_cached("SELECT seq, started_at, record FROM captures WHERE id = ?1")?;
        let mut erased = tx.prepare_cached("SELECT 1 FROM tombstones WHERE id = ?1")?;
        let mut seen = std::collections::HashSet::new();
        for id in &req.ids {
            if !seen.insert(id.as_str()) {
                continue;
            }
            let row: Option<(i64, String, String)> = capture
                .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?;
            match row {
                Some((seq, started_at, record)) => {
                    found.push((seq, id.clone(), started_at, record));
                }
                None if erased.exists(params![id])? => out.already_erased.push(id.clone()),
                None => out.unknown.push(id.clone()),
            }
        }
    }
    out.erased = found.iter().map(|f| f.1.clone()).collect();
    if !found.is_empty() {
        let mut verdicts = Vec::new();
        {
            let mut stmt = tx.prepare_cached(
                "SELECT v.id FROM capture_verdicts cv JOIN log_events v ON v.seq = cv.event_seq
                 WHERE cv.capture_seq = ?1 ORDER BY cv.seq",
            )?;
            for (seq, ..) in &found {
                let ids = stmt.query_map(params![seq], |r| r.get::<_, String>(0))?;
                verdicts.extend(ids.collect::<Result<Vec<_>, _>>()?);
            }
        }
        tx.execute(
            "INSERT INTO log_events (id, kind, entry) VALUES (?1, ?2, ?3)",
            params![
                req.event,
                super::erase::ERASURE_KIND,
                super::erase::erasure_entry(req, &out.erased, &verdicts)
            ],
        )?;
        let mut stone = tx.prepare_cached(
            "INSERT INTO tombstones
             (seq, id, started_at, leaf_hash, erased_at, reason, erasure, erased_by)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        let mut deletes = CONTENT_TABLES
            .iter()
            .map(|sql| tx.prepare_cached(sql))
            .collect::<Result<Vec<_>, _>>()?;
        for (seq, id, started_at, record) in &found {
            let leaf = crate::log::tree::leaf_hash(record.as_bytes());
            stone.execute(params![
                seq,
                id,
                started_at,
                super::erase::hex(&leaf.0),
                req.erased_at,
                req.reason,
                req.event,
                req.by
            ])?;
            for delete in &mut deletes {
                delete.execute(params![seq])?;
            }
        }
    }
    if !req.dry_run {
        tx.commit()?;
    }
    Ok(out)
}

/// The entry and log index that `sql` (selecting them for `?1`) finds for `id`.
fn entry_at(conn: &Connection, sql: &str, id: &str) -> Result<Option<LogEntry>, StoreError> {
    let found: Option<(String, Option<i64>)> = conn
        .query_row(sql, params![id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(found.map(|(raw, idx)| LogEntry {
        raw,
        index: idx.and_then(|i| u64::try_from(i).ok()),
    }))
}

/// Writes the hashes a sequencing step made (consecutive stored indexes, continuing the stored
/// ones) into their rows of `log_hash_tiles`: the newest row is extended, the rest are new.
fn put_hashes(
    tx: &rusqlite::Transaction<'_>,
    mut hashes: Vec<(u64, Hash)>,
) -> Result<(), StoreError> {
    hashes.sort_unstable_by_key(|(i, _)| *i);
    let mut get = tx.prepare_cached("SELECT hashes FROM log_hash_tiles WHERE tile = ?1")?;
    let mut put = tx.prepare_cached(
        "INSERT INTO log_hash_tiles (tile, hashes) VALUES (?1, ?2)
         ON CONFLICT (tile) DO UPDATE SET hashes = excluded.hashes",
    )?;
    let mut at = 0;
    while at < hashes.len() {
        let tile = hashes[at].0 / HASHES_PER_ROW;
        let mut bytes: Vec<u8> = get
            .query_row(params![db_int(tile)], |r| r.get(0))
            .optional()?
            .unwrap_or_default();
        while let Some((idx, hash)) = hashes.get(at).filter(|(i, _)| i / HASHES_PER_ROW == tile) {
            if bytes.len() as u64 != idx % HASHES_PER_ROW * 32 {
                return Err(StoreError::Sqlite(rusqlite::Error::InvalidParameterName(
                    format!("the log's stored hash {idx} does not follow the stored ones"),
                )));
            }
            bytes.extend_from_slice(&hash.0);
            at += 1;
        }
        put.execute(params![db_int(tile), bytes])?;
    }
    Ok(())
}

/// Leaf pages of the word index one merge step writes at most (of about 4 KB each; FTS5 itself
/// merges in units of 64 behind ingest).
const MERGE_PAGES: i64 = 64;
/// After each merge step [`SqliteStore::purge`] pauses this many times as long as the step took
/// (at least [`MERGE_PAUSE`]), so it holds the writer at most a fifth of the time.
const MERGE_PAUSE_FACTOR: u32 = 4;
const MERGE_PAUSE: Duration = Duration::from_millis(20);
/// Merge steps a purge takes before it merges what is left in one statement: reached only if
/// the index keeps gaining deleted entries as fast as the steps drop them.
const MERGE_STEPS_MAX: u32 = 20_000;
/// Free pages one step of [`SqliteStore::purge`]'s incremental vacuum gives back at most (of
/// 4 KB each: 1 MB). Each is filled with a page moved from the file's end, so a step writes a
/// few times this many pages; it runs in its own transaction, then pauses like a merge step.
const VACUUM_PAGES: u32 = 256;
/// Tries at truncating the write-ahead log, [`CHECKPOINT_RETRY`] apart (the writer is released
/// in between).
const CHECKPOINT_TRIES: u32 = 50;
const CHECKPOINT_RETRY: Duration = Duration::from_millis(20);

/// The least rowid of `capture_search_data` that is a page of a segment's tombstone hash
/// (FTS5's `FTS5_TOMBSTONE_ROWID(0, 0)`: segment ids, 16 bits, start at bit 37, and tombstone
/// pages are filed under segment id + 2^16). A segment has such pages exactly when entries it
/// holds were deleted, and they go when a merge rewrites the segment without those entries.
const FTS5_FIRST_TOMBSTONE: i64 = 1 << 53;

/// What one merge step of the word index found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Merge {
    /// No segment holds a deleted entry.
    Clean,
    /// Merged up to [`MERGE_PAGES`] pages.
    Merged,
    /// Deleted entries are left but the step found nothing to merge (the merge under way is not
    /// the level FTS5 picks next): the next step starts the merge again over every segment.
    Idle,
}

/// Whether a segment of the word index still holds deleted entries (their words with them).
fn deleted_words_indexed(conn: &Connection) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM capture_search_data WHERE id >= ?1)")?
        .query_row(params![FTS5_FIRST_TOMBSTONE], |r| r.get(0))?)
}

/// One bounded step of merging the word index, in its own transaction. `start`: put every
/// segment into one level and start merging them (FTS5's `merge` with a negative count, the
/// incremental `optimize`), otherwise carry on the merge under way (a positive count; with
/// `usermerge` 2 the merge in progress is taken up as soon as the levels below it hold fewer
/// segments than it, which FTS5's own merging behind ingest keeps so).
fn merge_step(conn: &Connection, start: bool) -> Result<Merge, StoreError> {
    if !deleted_words_indexed(conn)? {
        return Ok(Merge::Clean);
    }
    if start {
        conn.execute(
            "INSERT INTO capture_search (capture_search, rank) VALUES ('usermerge', 2)",
            [],
        )?;
    }
    let before = conn.total_changes();
    conn.execute(
        "INSERT INTO capture_search (capture_search, rank) VALUES ('merge', ?1)",
        params![if start { -MERGE_PAGES } else { MERGE_PAGES }],
    )?;
    // FTS5's documented test: a merge that did nothing changed fewer than two rows.
    Ok(if conn.total_changes() - before >= 2 {
        Merge::Merged
    } else {
        Merge::Idle
    })
}

/// Free pages in the file.
fn free_pages(conn: &Connection) -> Result<u64, StoreError> {
    let n: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or_default())
}

/// One step of incremental vacuum, in its own transaction: gives back up to [`VACUUM_PAGES`]
/// free pages (the file ends that much sooner once the write-ahead log is checkpointed) and
/// returns how many are left.
fn vacuum_step(conn: &Connection) -> Result<u64, StoreError> {
    let mut stmt = conn.prepare_cached(&format!("PRAGMA incremental_vacuum({VACUUM_PAGES})"))?;
    // The pragma gives back one page per row it returns: it must be run to its end.
    let mut rows = stmt.query([])?;
    while rows.next()?.is_some() {}
    drop(rows);
    free_pages(conn)
}

impl SqliteStore {
    /// Makes erased bytes unrecoverable from the files and gives their space back, in steps
    /// that each hold the writer briefly (ingest goes on in between): merges the word index
    /// until no segment holds a deleted entry (a contentless index keeps a deleted capture's
    /// words in its segments until a merge rewrites them); on a store with incremental vacuum,
    /// gives the free pages back [`VACUUM_PAGES`] a step; then checkpoints the write-ahead log
    /// and truncates it (its frames hold earlier versions of the pages; the checkpoint is what
    /// shortens the database file).
    pub async fn purge(&self) -> Result<(), StoreError> {
        let mut start = true;
        let mut clean = false;
        for _ in 0..MERGE_STEPS_MAX {
            let t = std::time::Instant::now();
            let merge = self
                .blocking(move |_, conn| merge_step(conn, start))
                .await?;
            tracing::debug!(
                took_ms = t.elapsed().as_millis() as u64,
                ?merge,
                "word index merge step"
            );
            match merge {
                Merge::Clean => {
                    clean = true;
                    break;
                }
                Merge::Merged => start = false,
                Merge::Idle => start = true,
            }
            tokio::time::sleep(MERGE_PAUSE.max(t.elapsed() * MERGE_PAUSE_FACTOR)).await;
        }
        if !clean {
            tracing::warn!("the word index kept gaining deleted entries while it was merged in steps; merging what is left at once");
            self.blocking(|_, conn| {
                conn.execute(
                    "INSERT INTO capture_search (capture_search) VALUES ('optimize')",
                    [],
                )?;
                Ok(())
            })
            .await?;
        }
        if self.inner.incremental_vacuum {
            self.vacuum_in_steps().await?;
        }
        for _ in 0..CHECKPOINT_TRIES {
            let t = std::time::Instant::now();
            // Without waiting: a reader on an older snapshot makes it busy at once, and the
            // writer is released before the next try.
            let busy = self
                .blocking(|_, conn| {
                    conn.busy_timeout(Duration::ZERO)?;
                    let busy = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                        r.get::<_, i64>(0)
                    });
                    conn.busy_timeout(Duration::from_secs(10))?;
                    Ok(busy? != 0)
                })
                .await?;
            tracing::debug!(
                took_ms = t.elapsed().as_millis() as u64,
                busy,
                "write-ahead log truncation"
            );
            if !busy {
                return Ok(());
            }
            tokio::time::sleep(CHECKPOINT_RETRY).await;
        }
        tracing::warn!("the write-ahead log could not be truncated after an erasure (readers kept it busy); it is on the next erasure or at shutdown");
        Ok(())
    }
}

impl SqliteStore {
    /// Gives the file's free pages back in steps of [`VACUUM_PAGES`], pausing after each four
    /// times as long as it took (at least [`MERGE_PAUSE`]). Ingest meanwhile takes free pages
    /// too, so the steps are bounded by what was free at the start.
    async fn vacuum_in_steps(&self) -> Result<(), StoreError> {
        let free = self.blocking(|_, conn| free_pages(conn)).await?;
        let steps = free.div_ceil(u64::from(VACUUM_PAGES));
        for _ in 0..steps {
            let t = std::time::Instant::now();
            let left = self.blocking(|_, conn| vacuum_step(conn)).await?;
            tracing::debug!(
                took_ms = t.elapsed().as_millis() as u64,
                left,
                "incremental vacuum step"
            );
            if left == 0 {
                break;
            }
            tokio::time::sleep(MERGE_PAUSE.max(t.elapsed() * MERGE_PAUSE_FACTOR)).await;
        }
        Ok(())
    }
}

impl EraseStore for SqliteStore {
    async fn erase(&self, req: EraseRequest) -> Result<EraseOutcome, StoreError> {
        let out = self
            .blocking(move |inner, conn| {
                let out = erase(conn, &req)?;
                if !req.dry_run {
                    inner
                        .records
                        .fetch_sub(out.erased.len() as u64, Ordering::Relaxed);
                }
                Ok(out)
            })
            .await?;
        Ok(out)
    }

    async fn tombstone(&self, id: String) -> Result<Option<Tombstone>, StoreError> {
        self.blocking(move |_, conn| {
            Ok(conn
                .query_row(
                    &format!("SELECT {TOMBSTONE_COLUMNS} WHERE t.id = ?1"),
                    params![id],
                    tombstone,
                )
                .optional()?)
        })
        .await
    }

    async fn tombstones(&self, limit: u32) -> Result<Vec<Tombstone>, StoreError> {
        self.blocking(move |_, conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {TOMBSTONE_COLUMNS} ORDER BY t.erased_at DESC, t.seq DESC LIMIT ?1"
            ))?;
            let rows = stmt.query_map(params![limit], tombstone)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn tombstones_between(
        &self,
        above: Option<i64>,
        below: Option<i64>,
        oldest_first: bool,
        limit: u32,
    ) -> Result<Vec<(i64, Tombstone)>, StoreError> {
        self.blocking(move |_, conn| {
            let order = if oldest_first { "ASC" } else { "DESC" };
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT t.seq, {TOMBSTONE_COLUMNS} WHERE t.seq > ?1 AND t.seq < ?2
                 ORDER BY t.seq {order} LIMIT ?3"
            ))?;
            let rows = stmt.query_map(
                params![above.unwrap_or(0), below.unwrap_or(i64::MAX), limit],
                |r| Ok((r.get(0)?, tombstone_from(r, 1)?)),
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn unlogged_events(&self, limit: u32) -> Result<Vec<PendingEvent>, StoreError> {
        self.reading(move |conn| {
            let mut stmt = conn.prepare_cached(
                // One writer commits events in `seq` order, so none hides behind the latest
                // one logged: only those after it are looked at.
                "SELECT v.seq, v.id, v.entry FROM log_events v
                 WHERE v.seq > coalesce((SELECT -min(seq) FROM log_entries WHERE seq < 0), 0)
                   AND NOT EXISTS (SELECT 1 FROM log_entries e WHERE e.seq = -v.seq)
                 ORDER BY v.seq LIMIT ?1",
            )?;
            let rows = stmt.query_map(params![limit], |r| {
                Ok(PendingEvent {
                    seq: r.get(0)?,
                    log_id: format!("{EVENT_PREFIX}{}", r.get::<_, String>(1)?),
                    entry: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn put_hold(&self, hold: Hold, entry: String) -> Result<(), StoreError> {
        self.blocking(move |_, conn| {
            let tx = conn.transaction()?;
            tx.execute(
                "INSERT INTO holds (id, reason, placed_at, ids, filters) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    hold.id,
                    hold.reason,
                    hold.placed_at,
                    hold.ids.map(|i| serde_json::Value::from(i).to_string()),
                    hold.filters.map(|f| f.to_string())
                ],
            )?;
            tx.execute(
                "INSERT INTO log_events (id, kind, entry) VALUES (?1, ?2, ?3)",
                params![hold.id, super::erase::HOLD_KIND, entry],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn lift_hold(&self, id: String, at: String, entry: String) -> Result<bool, StoreError> {
        self.blocking(move |_, conn| {
            let tx = conn.transaction()?;
            let n = tx.execute(
                "UPDATE holds SET lifted_at = ?2 WHERE id = ?1 AND lifted_at IS NULL",
                params![id, at],
            )?;
            if n == 1 {
                tx.execute(
                    "INSERT INTO log_events (id, kind, entry) VALUES (?1, ?2, ?3)",
                    params![
                        format!("{id}/lifted"),
                        super::erase::HOLD_LIFTED_KIND,
                        entry
                    ],
                )?;
                tx.commit()?;
            }
            Ok(n == 1)
        })
        .await
    }

    async fn holds(&self) -> Result<Vec<Hold>, StoreError> {
        self.blocking(move |_, conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, reason, placed_at, ids, filters, lifted_at FROM holds
                 ORDER BY placed_at DESC, id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, Option<String>>(5)?,
                ))
            })?;
            rows.map(|row| {
                let (id, reason, placed_at, ids, filters, lifted_at) = row?;
                Ok(Hold {
                    id,
                    reason,
                    placed_at,
                    ids: ids
                        .map(|t| serde_json::from_str(&t))
                        .transpose()
                        .map_err(bad_hold)?,
                    filters: filters
                        .map(|t| serde_json::from_str(&t))
                        .transpose()
                        .map_err(bad_hold)?,
                    lifted_at,
                })
            })
            .collect()
        })
        .await
    }

    async fn started_before(
        &self,
        before_us: i64,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        self.blocking(move |_, conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT d.seq, c.id FROM capture_digests d JOIN captures c ON c.seq = d.seq
                 WHERE d.seq > ?1 AND d.started_us < ?2 ORDER BY d.seq LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![after_seq, before_us, limit], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn count_started_before(&self, before_us: i64) -> Result<u64, StoreError> {
        self.blocking(move |_, conn| {
            let n: i64 = conn
                .prepare_cached("SELECT count(*) FROM capture_digests WHERE started_us < ?1")?
                .query_row(params![before_us], |r| r.get(0))?;
            Ok(u64::try_from(n).unwrap_or_default())
        })
        .await
    }

    async fn erase_counts(&self) -> Result<EraseCounts, StoreError> {
        self.blocking(move |_, conn| {
            let erased: i64 =
                conn.query_row("SELECT count(*) FROM tombstones", [], |r| r.get(0))?;
            let holds: i64 = conn.query_row(
                "SELECT count(*) FROM holds WHERE lifted_at IS NULL",
                [],
                |r| r.get(0),
            )?;
            let events: i64 =
                conn.query_row("SELECT count(*) FROM log_events", [], |r| r.get(0))?;
            Ok(EraseCounts {
                erased: u64::try_from(erased).unwrap_or_default(),
                holds: u64::try_from(holds).unwrap_or_default(),
                events: u64::try_from(events).unwrap_or_default(),
            })
        })
        .await
    }
}

fn bad_hold(e: serde_json::Error) -> StoreError {
    StoreError::Sqlite(rusqlite::Error::InvalidParameterName(format!(
        "a stored hold is not valid JSON: {e}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn opens_in_wal_mode_with_full_sync_and_incremental_vacuum_at_the_latest_schema() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        store
            .blocking(|_, c| {
                let mode: String = c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
                let sync: i64 = c.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
                let version: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0))?;
                assert_eq!(mode, "wal");
                assert_eq!(sync, 2, "FULL");
                assert_eq!(version as usize, MIGRATIONS.len());
                assert_eq!(auto_vacuum(c)?, AUTO_VACUUM_INCREMENTAL);
                Ok(())
            })
            .await
            .unwrap();
    }

    fn rows(ids: &[&str]) -> Vec<NewCapture> {
        let body: String = ids
            .iter()
            .map(|id| format!("{}\n", crate::record::tests::sample(id)))
            .collect();
        crate::ingest::parse_ndjson(body.as_bytes())
            .unwrap()
            .into_iter()
            .map(|l| crate::ingest::to_row(l).0)
            .collect()
    }

    #[tokio::test]
    async fn the_log_reads_leaf_hashes_kept_at_ingest_and_hashes_records_kept_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        let batch = rows(&["a", "b", "c"]);
        let want: Vec<(String, Hash)> = batch
            .iter()
            .map(|c| (c.id.clone(), crate::log::tree::leaf_hash(c.raw.as_bytes())))
            .collect();
        store.insert_batch(batch).await.unwrap();
        let kept: i64 = store
            .reading(|c| {
                Ok(c.query_row(
                    "SELECT count(*) FROM captures WHERE length(leaf) = 32",
                    [],
                    |r| r.get(0),
                )?)
            })
            .await
            .unwrap();
        assert_eq!(kept, 3, "ingest keeps each record's leaf hash");
        // A row stored before leaf hashes were kept, and one whose kept hash is damaged: both
        // are hashed from the record as stored.
        store
            .blocking(|_, c| {
                c.execute("UPDATE captures SET leaf = NULL WHERE id = 'b'", [])?;
                c.execute("UPDATE captures SET leaf = x'00' WHERE id = 'c'", [])?;
                Ok(())
            })
            .await
            .unwrap();
        let pending = store.log_pending(Cursor::START, 10).await.unwrap();
        let got: Vec<(String, Hash)> = pending.iter().map(|p| (p.id.clone(), p.leaf)).collect();
        assert_eq!(got, want);
        let after_a = store.log_pending(pending[0].cursor, 10).await.unwrap();
        assert_eq!(after_a.len(), 2);
        assert_eq!(after_a[0].id, "b");
    }

    #[tokio::test]
    async fn log_logged_names_exactly_the_seqs_the_log_holds_near_and_far_apart() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        let ids: Vec<String> = (0..300).map(|i| format!("r{i}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        store.insert_batch(rows(&ids)).await.unwrap();
        // The log holds seqs 1..=10 and 200.
        let held: Vec<(i64, String)> = (1..=10)
            .chain([200])
            .map(|s| (s, format!("r{}", s - 1)))
            .collect();
        store
            .blocking(move |_, c| {
                let mut put =
                    c.prepare("INSERT INTO log_entries (idx, seq, id) VALUES (?1, ?2, ?3)")?;
                for (idx, (seq, id)) in held.iter().enumerate() {
                    put.execute(params![idx as i64, seq, id])?;
                }
                Ok(())
            })
            .await
            .unwrap();
        let mut near = store.log_logged((5..=20).collect()).await.unwrap();
        near.sort_unstable();
        assert_eq!(near, (5..=10).collect::<Vec<_>>(), "one range read");
        let mut far = store.log_logged(vec![3, 200, 299, 7]).await.unwrap();
        far.sort_unstable();
        assert_eq!(far, vec![3, 7, 200], "a lookup each");
        assert!(store.log_logged(vec![]).await.unwrap().is_empty());
        assert_eq!(
            store.log_logged(vec![11, 12]).await.unwrap(),
            Vec::<i64>::new()
        );
    }

    #[tokio::test]
    async fn a_database_made_before_schema_versions_is_adopted_as_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.execute(
                "INSERT INTO captures (id, started_at, method, path, status, outcome, duration_ms, model, record)
                 VALUES ('old', 't', 'GET', '/', 200, 'complete', 1.0, NULL, '{}')",
                [],
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(
            store.get("old".into()).await.unwrap().as_deref(),
            Some("{}")
        );
        assert_eq!(store.stats().await.unwrap().records, 1);
    }

    async fn protocol(store: &SqliteStore) -> usize {
        let q = ListQuery {
            limit: 10,
            filter: crate::store::ListFilter {
                protocols: vec!["openai.chat".into()],
                ..Default::default()
            },
            page: Page::Newest,
            ..ListQuery::default()
        };
        store.list(q).await.unwrap().len()
    }

    #[tokio::test]
    async fn a_database_of_schema_1_is_migrated_and_its_records_digested() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        let raw = crate::record::tests::sample("old").to_string();
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(&format!("{} PRAGMA user_version = 1;", MIGRATIONS[0]))
                .unwrap();
            conn.execute(
                "INSERT INTO captures (id, started_at, method, path, status, outcome, duration_ms, model, record)
                 VALUES ('old', '2026-11-25T16:10:40Z', 'POST', '/v1/chat/completions', 200, 'complete', 1.0, NULL, ?1)",
                [&raw],
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(protocol(&store).await, 0, "not digested yet");
        let running = std::sync::atomic::AtomicBool::new(true);
        crate::digest::backfill(&store, &running).await;
        assert_eq!(protocol(&store).await, 1);
        let s = store
            .list(ListQuery {
                limit: 1,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(s[0].model.as_deref(), Some("gpt-4o"));
        assert!(s[0].question.is_some());
    }

    #[tokio::test]
    async fn verdicts_stored_before_they_joined_the_log_become_its_events_as_they_were() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v8.db");
        let verdict = r#"{"engine":"grpc://a","score":0.5}"#;
        {
            let conn = Connection::open(&path).unwrap();
            let eight: String = MIGRATIONS[..8].concat();
            conn.execute_batch(&format!("{eight} PRAGMA user_version = 8;"))
                .unwrap();
            conn.execute(
                "INSERT INTO captures (id, started_at, method, path, status, outcome, duration_ms, model, record)
                 VALUES ('old', 't', 'GET', '/', 200, 'complete', 1.0, NULL, '{}')",
                [],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO capture_verdicts
                 (capture_seq, capture_id, engine, status, score, hallucination, verdict, received_at)
                 VALUES (1, 'old', 'grpc://a', 'completed', 0.5, 0, ?1, 't')",
                [verdict],
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let kept = store.verdicts("old".into()).await.unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(
            (kept[0].json.as_str(), kept[0].event.as_str()),
            (verdict, "verdict-1")
        );
        let waiting = store.unlogged_events(10).await.unwrap();
        assert_eq!(waiting.len(), 1, "the log appends it next");
        assert_eq!(
            (waiting[0].log_id.as_str(), waiting[0].entry.as_str()),
            ("event/verdict-1", verdict)
        );
    }

    #[tokio::test]
    async fn closing_checkpoints_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = SqliteStore::open(&path).unwrap();
        store.close().await.unwrap();
        let wal = dir.path().join("t.db-wal");
        assert_eq!(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0), 0);
        assert!(matches!(
            store.get("x".into()).await,
            Err(StoreError::Closed)
        ));
    }

    /// Indexes `n` captures' words from rowid `first` on in one transaction (one segment).
    async fn index_words(store: &SqliteStore, first: i64, n: i64, secret: Option<&'static str>) {
        store
            .blocking(move |_, conn| {
                let tx = conn.transaction()?;
                {
                    let mut stmt =
                        tx.prepare("INSERT INTO capture_search (rowid, words) VALUES (?1, ?2)")?;
                    for seq in first..first + n {
                        let words: String = (0..12)
                            .map(|k| format!("w{}x{k} ", seq * 7919 % 100_003))
                            .collect();
                        let words = match secret {
                            Some(s) if seq % 10 == 0 => format!("{words}{s}{seq}"),
                            _ if seq == 3 => format!("{words}{KEPT}"),
                            _ => words,
                        };
                        stmt.execute(params![seq, words])?;
                    }
                }
                tx.commit()?;
                Ok(())
            })
            .await
            .unwrap();
    }

    /// A word only a kept capture has (the first term of its page, so held whole, not as the
    /// tail of a prefix-compressed term: the byte scan is not blind).
    const KEPT: &str = "lighthousewalrus";

    fn file_holds(path: &Path, word: &str) -> bool {
        let bytes = std::fs::read(path).unwrap_or_default();
        bytes.windows(word.len()).any(|w| w == word.as_bytes())
    }

    /// Purge merges the word index in steps, and the writer serves others between them: words
    /// indexed while it runs are stored before it ends, and still no deleted word is left in the
    /// index, the file or its write-ahead log.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn purge_drops_deleted_words_in_steps_that_let_writes_in_between() {
        const SECRET: &str = "zanzibarquokka";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("purge.db");
        let store = Arc::new(SqliteStore::open(&path).unwrap());
        // Several segments, large enough that merging them takes many steps.
        for k in 0..8 {
            index_words(&store, 1 + k * 4000, 4000, Some(SECRET)).await;
        }
        let deleted = store
            .blocking(|_, conn| {
                Ok(conn.execute("DELETE FROM capture_search WHERE rowid % 10 = 0", [])?)
            })
            .await
            .unwrap();
        assert_eq!(deleted, 3200);
        assert!(store
            .blocking(|_, c| deleted_words_indexed(c))
            .await
            .unwrap());

        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (store, done) = (Arc::clone(&store), Arc::clone(&done));
            tokio::spawn(async move {
                let mut during = 0;
                let mut next = 1_000_000;
                while !done.load(Ordering::Relaxed) {
                    index_words(&store, next, 50, None).await;
                    next += 50;
                    if !done.load(Ordering::Relaxed) {
                        during += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                during
            })
        };
        store.purge().await.unwrap();
        done.store(true, Ordering::Relaxed);
        let during = writer.await.unwrap();

        let wal = dir.path().join("purge.db-wal");
        assert!(!file_holds(&path, SECRET), "a deleted word is in the file");
        assert!(!file_holds(&wal, SECRET), "a deleted word is in the log");
        assert!(!store
            .blocking(|_, c| deleted_words_indexed(c))
            .await
            .unwrap());
        assert!(file_holds(&path, KEPT) || file_holds(&wal, KEPT));
        assert!(during >= 2, "{during} writes went in while purge ran");
        // The index is whole and finds what was kept.
        store
            .blocking(|_, conn| {
                conn.execute(
                    "INSERT INTO capture_search (capture_search, rank) VALUES ('integrity-check', 0)",
                    [],
                )?;
                let kept: i64 = conn.query_row(
                    "SELECT count(*) FROM capture_search WHERE capture_search MATCH ?1",
                    [KEPT],
                    |r| r.get(0),
                )?;
                assert_eq!(kept, 1);
                Ok(())
            })
            .await
            .unwrap();
    }
}
