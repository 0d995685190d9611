//! The durable capture store: one SQLite database in WAL mode with `synchronous=FULL`.
//!
//! Promises: [`Store::insert_batch`] commits all of a batch in one transaction or none of it, and
//! returns only after the commit is on disk; a record whose `id` is already stored is skipped and
//! counted as a duplicate; each stored record keeps its raw line verbatim and gets a sequence number
//! larger than every earlier one, which is the paging cursor.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

/// A failure of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The store was closed (shutdown in progress).
    #[error("the store is closed")]
    Closed,
}

/// One record ready to store: its raw line and the summary columns.
#[derive(Debug, Clone)]
pub struct NewCapture {
    /// The dedupe key.
    pub id: String,
    /// The record's `started_at`.
    pub started_at: String,
    /// Request method.
    pub method: String,
    /// Request path.
    pub path: String,
    /// Response status, `None` when there was no response.
    pub status: Option<u16>,
    /// Outcome as the contract spells it.
    pub outcome: String,
    /// Duration in milliseconds.
    pub duration_ms: f64,
    /// Model from the audit view, when one was found.
    pub model: Option<String>,
    /// The record exactly as received.
    pub raw: String,
}

/// What one batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchOutcome {
    /// Records newly stored.
    pub stored: u64,
    /// Records skipped because their id was already stored (or repeated in the batch).
    pub duplicates: u64,
}

/// A row of the capture list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaptureSummary {
    /// The capture id.
    pub id: String,
    /// When the exchange started.
    pub started_at: String,
    /// Request method.
    pub method: String,
    /// Request path.
    pub path: String,
    /// Response status, `null` when there was no response.
    pub status: Option<u16>,
    /// How the exchange ended.
    pub outcome: String,
    /// Duration in milliseconds.
    pub duration_ms: f64,
    /// The model, when the audit view found one.
    pub model: Option<String>,
    /// Storage sequence number (the paging cursor); not serialised.
    #[serde(skip)]
    pub seq: i64,
}

/// The store; cheap to share behind an `Arc`, every call blocks (run it off the async runtime).
pub struct Store {
    conn: Mutex<Option<Connection>>,
    path: PathBuf,
}

const SCHEMA: &str = "
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
";

impl Store {
    /// Opens (creating if needed) the database at `path` in WAL mode with `synchronous=FULL`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Sqlite(rusqlite::Error::InvalidParameterName(
                format!("journal_mode is {mode}, WAL is required"),
            )));
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Store {
            conn: Mutex::new(Some(conn)),
            path: path.to_owned(),
        })
    }

    fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let conn = guard.as_mut().ok_or(StoreError::Closed)?;
        f(conn)
    }

    /// Stores every record of `batch` in one transaction, skipping ids already stored.
    /// Returns after the commit is durable.
    pub fn insert_batch(&self, batch: &[NewCapture]) -> Result<BatchOutcome, StoreError> {
        self.with_conn(|conn| {
            let tx = conn.transaction()?;
            let mut outcome = BatchOutcome::default();
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT OR IGNORE INTO captures
                     (id, started_at, method, path, status, outcome, duration_ms, model, record)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )?;
                for c in batch {
                    let n = stmt.execute(params![
                        c.id,
                        c.started_at,
                        c.method,
                        c.path,
                        c.status,
                        c.outcome,
                        c.duration_ms,
                        c.model,
                        c.raw
                    ])?;
                    if n == 1 {
                        outcome.stored += 1;
                    } else {
                        outcome.duplicates += 1;
                    }
                }
            }
            tx.commit()?;
            Ok(outcome)
        })
    }

    /// The raw record stored under `id`.
    pub fn get(&self, id: &str) -> Result<Option<String>, StoreError> {
        self.with_conn(|conn| {
            Ok(conn
                .query_row(
                    "SELECT record FROM captures WHERE id = ?1",
                    params![id],
                    |r| r.get(0),
                )
                .optional()?)
        })
    }

    /// Up to `limit` summaries, newest stored first, all stored before cursor `before` if given.
    pub fn list(&self, limit: u32, before: Option<i64>) -> Result<Vec<CaptureSummary>, StoreError> {
        self.with_conn(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, id, started_at, method, path, status, outcome, duration_ms, model
                 FROM captures WHERE seq < ?1 ORDER BY seq DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![before.unwrap_or(i64::MAX), limit], |r| {
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
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// How many records are stored.
    pub fn count(&self) -> Result<u64, StoreError> {
        self.with_conn(|conn| {
            let n: i64 = conn.query_row("SELECT COUNT(*) FROM captures", [], |r| r.get(0))?;
            Ok(u64::try_from(n).unwrap_or_default())
        })
    }

    /// Bytes on disk: the database file plus its write-ahead log.
    pub fn size_bytes(&self) -> u64 {
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        [self.path.clone(), PathBuf::from(wal)]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }

    /// Checkpoints the log into the database and closes it; later calls fail with `Closed`.
    /// Waits for any operation in progress.
    pub fn close(&self) -> Result<(), StoreError> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(conn) = guard.take() {
            conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
            conn.close().map_err(|(_, e)| StoreError::Sqlite(e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(id: &str) -> NewCapture {
        NewCapture {
            id: id.into(),
            started_at: "2026-11-25T16:10:40.186Z".into(),
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            status: Some(200),
            outcome: "complete".into(),
            duration_ms: 12.5,
            model: Some("gpt-4o".into()),
            raw: format!("{{\"id\":\"{id}\"}}"),
        }
    }

    #[test]
    fn opens_in_wal_mode_with_full_sync() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).unwrap();
        store
            .with_conn(|c| {
                let mode: String = c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
                let sync: i64 = c.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
                assert_eq!(mode, "wal");
                assert_eq!(sync, 2, "FULL");
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn duplicates_are_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).unwrap();
        let out = store
            .insert_batch(&[capture("a"), capture("b"), capture("a")])
            .unwrap();
        assert_eq!(
            out,
            BatchOutcome {
                stored: 2,
                duplicates: 1
            }
        );
        let out = store.insert_batch(&[capture("b"), capture("c")]).unwrap();
        assert_eq!(
            out,
            BatchOutcome {
                stored: 1,
                duplicates: 1
            }
        );
        assert_eq!(store.count().unwrap(), 3);
    }

    #[test]
    fn list_pages_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).unwrap();
        let batch: Vec<_> = (0..5).map(|i| capture(&format!("r{i}"))).collect();
        store.insert_batch(&batch).unwrap();
        let page = store.list(2, None).unwrap();
        let ids: Vec<_> = page.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["r4", "r3"]);
        let page = store.list(10, Some(page[1].seq)).unwrap();
        let ids: Vec<_> = page.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["r2", "r1", "r0"]);
    }

    #[test]
    fn raw_record_is_kept_verbatim_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = Store::open(&path).unwrap();
        let mut c = capture("z");
        c.raw = "{ \"id\" : \"z\",  \"x\": 1.50 }".into();
        store.insert_batch(&[c.clone()]).unwrap();
        store.close().unwrap();
        assert!(matches!(store.get("z"), Err(StoreError::Closed)));
        let again = Store::open(&path).unwrap();
        assert_eq!(again.get("z").unwrap(), Some(c.raw));
        assert_eq!(again.get("nope").unwrap(), None);
    }
}
