//! The capture store: one interface, [`CaptureStore`], with two backends behind it — an embedded
//! SQLite file ([`sqlite`]) for one collector, and a PostgreSQL database ([`postgres`]) that
//! several collector replicas share. [`Store`] is whichever one `--db` selected.
//!
//! Every backend promises the same things, and `tests/store.rs` checks them against both:
//! - [`CaptureStore::insert_batch`] stores all of a batch or none of it, and returns only after the
//!   commit is durable;
//! - a record whose `id` is already stored (by this collector or any other sharing the database) is
//!   skipped and counted as a duplicate; the copy stored first is kept;
//! - the raw line is kept byte for byte;
//! - each record gets a sequence number (`seq`) larger than those of the records stored before it
//!   on the same database: the paging cursor of the list, newest first;
//! - [`CaptureStore::read_after`] walks every record exactly once in commit order behind a
//!   [`Cursor`] a reader can persist (an exporter's position);
//! - a named reader's cursor is kept in the store under a lease ([`CaptureStore::claim_cursor`]):
//!   while one holder's lease runs, no other (in this collector or another sharing the database)
//!   gets the cursor, and only the holder can move it;
//! - a database that cannot be reached answers [`StoreError::Unavailable`] (ingest says 503, the
//!   filter keeps the batch and sends it again) and [`CaptureStore::health`] says why.
//!
//! A new query (a filtered list, a search) is one method on [`CaptureStore`], implemented in
//! `sqlite.rs` and `postgres/mod.rs`, one line in [`Store`]'s `dispatch!`, and one case in
//! `tests/store.rs` that runs against both backends.

pub mod health;
pub mod postgres;
pub mod sqlite;

use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

use crate::config::{Config, DbTarget};
pub use health::Health;

/// A failure of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error.
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL refused the operation for a reason that sending it again does not cure.
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    /// The database cannot take the operation now (unreachable, restarting, refusing
    /// connections, read-only after a failover, or not yet prepared): send it again later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The store cannot be opened as configured (a bad URL, a password file that cannot be read,
    /// wrong credentials, a database that does not exist). Retrying does not help.
    #[error("{0}")]
    Config(String),
    /// The store was closed (shutdown in progress).
    #[error("the store is closed")]
    Closed,
}

impl StoreError {
    /// True when the same operation may well succeed later (HTTP 503 rather than 500).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Closed)
    }
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

/// A position in a store's commit order. Records read after a cursor are exactly those committed
/// after the ones read up to it; none committed later can appear behind it. Opaque to readers:
/// persist its `Display` form and `parse` it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Cursor {
    /// The committing transaction's id (PostgreSQL `xid8`); 0 on SQLite, whose single writer
    /// commits in `seq` order.
    pub(crate) tx: u64,
    /// The record's sequence number.
    pub(crate) seq: i64,
}

impl Cursor {
    /// Before every record.
    pub const START: Cursor = Cursor { tx: 0, seq: 0 };
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.tx, self.seq)
    }
}

/// A cursor string that is not one [`Cursor`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a store cursor: {0:?}")]
pub struct BadCursor(String);

impl FromStr for Cursor {
    type Err = BadCursor;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadCursor(s.to_owned());
        let (tx, seq) = s.split_once('-').ok_or_else(bad)?;
        Ok(Cursor {
            tx: tx.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

/// A stored record as a sequential reader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCapture {
    /// Where this record sits; pass it to [`CaptureStore::read_after`] to continue after it.
    pub cursor: Cursor,
    /// Its sequence number (as in the list's paging).
    pub seq: i64,
    /// The capture id.
    pub id: String,
    /// The record exactly as received.
    pub raw: String,
}

/// Size figures for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Records in the store.
    pub records: u64,
    /// Bytes the store takes on disk.
    pub bytes: u64,
}

/// What every store does. Methods take owned arguments and return `Send` futures, so handlers
/// can await them on any runtime thread; blocking backends move their work off the runtime.
pub trait CaptureStore: Send + Sync {
    /// The backend's name, as `/healthz` and the logs show it (`sqlite`, `postgres`).
    fn backend(&self) -> &'static str;

    /// Stores every record of `batch` in one transaction, skipping ids already stored; returns
    /// after the commit is durable. On error nothing of the batch is stored.
    fn insert_batch(
        &self,
        batch: Vec<NewCapture>,
    ) -> impl Future<Output = Result<BatchOutcome, StoreError>> + Send;

    /// The raw record stored under `id`.
    fn get(&self, id: String) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    /// Up to `limit` summaries, newest stored first, all with `seq` below `before` if given.
    fn list(
        &self,
        limit: u32,
        before: Option<i64>,
    ) -> impl Future<Output = Result<Vec<CaptureSummary>, StoreError>> + Send;

    /// Up to `limit` records committed after `after`, in commit order (oldest first). Records of
    /// transactions still in progress are left for a later call, so a reader that persists the
    /// last cursor it handled and resumes from it sees every record exactly once.
    fn read_after(
        &self,
        after: Cursor,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<StoredCapture>, StoreError>> + Send;

    /// Takes (or renews) the lease on the reader cursor `name` for `holder`, for `lease` from now
    /// by the database's clock, and returns the cursor ([`Cursor::START`] for a new name).
    /// `None` while another holder's lease runs: that holder is the one reading.
    fn claim_cursor(
        &self,
        name: String,
        holder: String,
        lease: Duration,
    ) -> impl Future<Output = Result<Option<Cursor>, StoreError>> + Send;

    /// Moves the cursor `name` to `cursor` and renews `holder`'s lease. False (and nothing
    /// changed) when `holder` no longer holds it: another holder claimed it after the lease ran
    /// out.
    fn save_cursor(
        &self,
        name: String,
        holder: String,
        cursor: Cursor,
        lease: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Gives up `holder`'s lease on `name` (the cursor stays), so another holder can claim it at
    /// once.
    fn release_cursor(
        &self,
        name: String,
        holder: String,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// How many records are stored and how much disk they take.
    fn stats(&self) -> impl Future<Output = Result<StoreStats, StoreError>> + Send;

    /// Whether the store takes writes now, and if not, why.
    fn health(&self) -> Health;

    /// Finishes what is in progress and closes the store; later calls fail with `Closed`.
    fn close(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The store `--db` selected.
pub enum Store {
    /// An embedded SQLite file.
    Sqlite(sqlite::SqliteStore),
    /// A PostgreSQL database, possibly shared with other collectors.
    Postgres(postgres::PgStore),
}

impl Store {
    /// Opens the store the configuration names: a SQLite file is created if missing; a
    /// PostgreSQL database is connected to and its schema created or migrated. A configuration
    /// that cannot work (bad URL, wrong credentials, unreadable password file) is an error; a
    /// PostgreSQL server that is only unreachable for now is not: the store opens unavailable
    /// and connects by itself once the server answers.
    pub async fn open(config: &Config) -> Result<Store, StoreError> {
        match &config.db {
            DbTarget::Sqlite(path) => {
                let path = path.clone();
                let store = tokio::task::spawn_blocking(move || sqlite::SqliteStore::open(&path))
                    .await
                    .map_err(|e| StoreError::Config(format!("opening SQLite: {e}")))??;
                Ok(Store::Sqlite(store))
            }
            DbTarget::Postgres(url) => Ok(Store::Postgres(
                postgres::PgStore::open(url, &config.db_password, config.db_pool_size).await?,
            )),
        }
    }

    /// The store as the logs may show it: a file path, or a URL without its password.
    pub fn describe(&self) -> String {
        match self {
            Store::Sqlite(s) => s.path().display().to_string(),
            Store::Postgres(s) => s.describe().to_owned(),
        }
    }
}

/// Calls the same method on whichever backend this is.
macro_rules! dispatch {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            Store::Sqlite($s) => $call,
            Store::Postgres($s) => $call,
        }
    };
}

impl CaptureStore for Store {
    fn backend(&self) -> &'static str {
        dispatch!(self, s => s.backend())
    }

    async fn insert_batch(&self, batch: Vec<NewCapture>) -> Result<BatchOutcome, StoreError> {
        dispatch!(self, s => s.insert_batch(batch).await)
    }

    async fn get(&self, id: String) -> Result<Option<String>, StoreError> {
        dispatch!(self, s => s.get(id).await)
    }

    async fn list(
        &self,
        limit: u32,
        before: Option<i64>,
    ) -> Result<Vec<CaptureSummary>, StoreError> {
        dispatch!(self, s => s.list(limit, before).await)
    }

    async fn read_after(
        &self,
        after: Cursor,
        limit: u32,
    ) -> Result<Vec<StoredCapture>, StoreError> {
        dispatch!(self, s => s.read_after(after, limit).await)
    }

    async fn claim_cursor(
        &self,
        name: String,
        holder: String,
        lease: Duration,
    ) -> Result<Option<Cursor>, StoreError> {
        dispatch!(self, s => s.claim_cursor(name, holder, lease).await)
    }

    async fn save_cursor(
        &self,
        name: String,
        holder: String,
        cursor: Cursor,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        dispatch!(self, s => s.save_cursor(name, holder, cursor, lease).await)
    }

    async fn release_cursor(&self, name: String, holder: String) -> Result<(), StoreError> {
        dispatch!(self, s => s.release_cursor(name, holder).await)
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        dispatch!(self, s => s.stats().await)
    }

    fn health(&self) -> Health {
        dispatch!(self, s => s.health())
    }

    async fn close(&self) -> Result<(), StoreError> {
        dispatch!(self, s => s.close().await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_through_their_text_and_order_by_commit() {
        let c = Cursor {
            tx: 7_000_000_123,
            seq: 42,
        };
        assert_eq!(c.to_string().parse::<Cursor>(), Ok(c));
        assert_eq!("0-0".parse::<Cursor>(), Ok(Cursor::START));
        for bad in ["", "12", "a-1", "1-b", "-1-2"] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad}");
        }
        assert!(Cursor { tx: 1, seq: 900 } < Cursor { tx: 2, seq: 3 });
    }
}
