//! The verifiable log's part of the store (`crate::log`): the entries in log order, the tree's
//! stored hashes (Go `sumdb/tlog`'s layout, 64 to a row), every signed checkpoint, and the
//! log's state — its size and the [`Cursor`] of the last record it sequenced — in one row.
//!
//! Both backends promise: [`LogStore::log_append`] adds entries and hashes and moves the state
//! in one transaction, and only if the log still has the size the sequencer read (so two
//! sequencers racing on a shared database can never both extend it: the log never forks);
//! a checkpoint once stored for a size is never replaced.

use std::future::Future;

use super::{Cursor, Store, StoreError};
use crate::log::tree::{Hash, Hashes};

/// The log's row of state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogState {
    /// Entries in the log.
    pub size: u64,
    /// Where the sequencer resumes in the store's commit order.
    pub cursor: Cursor,
    /// The verifier key of the key that signs the log's checkpoints, once one has.
    pub verifier_key: Option<String>,
}

/// One entry of the log, as the offline verifier walks it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedRecord {
    /// Its index in the log.
    pub index: u64,
    /// The capture id it was logged under.
    pub id: String,
    /// The record as stored now (`None` when the row is gone).
    pub raw: Option<String>,
    /// The erasure event that erased it, when its tombstone says it was erased.
    pub erased_by: Option<String>,
    /// A verdict's row in `capture_verdicts` (what the list filters by), when the entry is a
    /// verdict's and the row is there.
    pub verdict_row: Option<VerdictRow>,
}

/// What `capture_verdicts` says of a verdict beside its entry: what the list filters by.
#[derive(Debug, Clone, PartialEq)]
pub struct VerdictRow {
    /// Its event id (`verdict-<n>`).
    pub event: String,
    /// The capture it is shown with.
    pub capture_id: String,
    /// The engine.
    pub engine: String,
    /// Its status.
    pub status: String,
    /// Its score.
    pub score: Option<f64>,
    /// Its hallucination flag.
    pub hallucination: Option<bool>,
}

/// A capture's entry and where the log has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// The record's bytes exactly as stored: the entry.
    pub raw: String,
    /// Its index, once sequenced.
    pub index: Option<u64>,
}

/// A record waiting for the log: where it sits in commit order, and its leaf hash.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    /// Its place in the store's commit order.
    pub cursor: Cursor,
    /// Its sequence number.
    pub seq: i64,
    /// The capture id.
    pub id: String,
    /// SHA-256(0x00 ‖ the record as stored).
    pub leaf: Hash,
}

impl From<super::StoredCapture> for Pending {
    fn from(r: super::StoredCapture) -> Self {
        Pending {
            cursor: r.cursor,
            seq: r.seq,
            id: r.id,
            leaf: crate::log::tree::leaf_hash(r.raw.as_bytes()),
        }
    }
}

/// Bytes of a stored hash.
pub(crate) fn hash_from(bytes: &[u8]) -> Result<Hash, StoreError> {
    bytes.try_into().map(Hash).map_err(|_| {
        StoreError::Config(format!(
            "a stored log hash is {} bytes, not 32",
            bytes.len()
        ))
    })
}

/// An index as both databases keep it.
pub(crate) fn db_int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// What the log needs of a store.
pub trait LogStore: Send + Sync {
    /// The log's state.
    fn log_state(&self) -> impl Future<Output = Result<LogState, StoreError>> + Send;

    /// The stored hashes at these indexes (those missing are left out).
    fn log_hashes(
        &self,
        indexes: Vec<u64>,
    ) -> impl Future<Output = Result<Hashes, StoreError>> + Send;

    /// Appends `entries` (`(seq, id)`, in log order from index `from`) and their stored
    /// `hashes`, and moves the state to the new size and `cursor`, all in one transaction —
    /// only if the log's size is still `from`. False (and nothing written) otherwise.
    fn log_append(
        &self,
        from: u64,
        cursor: Cursor,
        entries: Vec<(i64, String)>,
        hashes: Vec<(u64, Hash)>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Stores a signed checkpoint of `size` signed by `verifier_key` (kept if one is already
    /// stored for that size), and records the key as the log's if it has none.
    fn log_put_checkpoint(
        &self,
        size: u64,
        note: String,
        verifier_key: String,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The checkpoint of exactly `size`, or the latest when `None`: `(size, note)`.
    fn log_checkpoint(
        &self,
        size: Option<u64>,
    ) -> impl Future<Output = Result<Option<(u64, String)>, StoreError>> + Send;

    /// Every stored checkpoint, smallest first.
    fn log_checkpoints(
        &self,
    ) -> impl Future<Output = Result<Vec<(u64, String)>, StoreError>> + Send;

    /// The capture `id`'s entry and index.
    fn log_entry(
        &self,
        id: String,
    ) -> impl Future<Output = Result<Option<LogEntry>, StoreError>> + Send;

    /// The accountability event `id`'s entry (an erasure's, a hold's, a verdict's) and index.
    fn log_event_entry(
        &self,
        id: String,
    ) -> impl Future<Output = Result<Option<LogEntry>, StoreError>> + Send;

    /// Up to `limit` log entries from index `from` on, with the records as stored now.
    fn log_records(
        &self,
        from: u64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<LoggedRecord>, StoreError>> + Send;

    /// Up to `limit` records committed after `after`, in commit order, with their leaf hashes
    /// (what the sequencer appends; [`CaptureStore::read_after`](super::CaptureStore::read_after)
    /// with the records hashed, where a store keeps no leaf hashes of its own).
    fn log_pending(
        &self,
        after: Cursor,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<Pending>, StoreError>> + Send;

    /// Of these `seq`s, those the log already holds.
    fn log_logged(
        &self,
        seqs: Vec<i64>,
    ) -> impl Future<Output = Result<Vec<i64>, StoreError>> + Send;

    /// Up to `limit` committed records the log does not hold, in commit order (the sweep that
    /// catches a record a cursor walked past; on PostgreSQL among the 100 000 newest `seq`s).
    fn log_unlogged(
        &self,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<super::StoredCapture>, StoreError>> + Send;

    /// Captures the log does not hold: `(id, whether the sequencer has passed it)` — one it has
    /// passed was put in the store behind the log's back.
    fn log_missing(
        &self,
        cursor: Cursor,
    ) -> impl Future<Output = Result<Vec<(String, bool)>, StoreError>> + Send;
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            Store::Sqlite($s) => $call,
            Store::Postgres($s) => $call,
        }
    };
}

impl LogStore for Store {
    async fn log_state(&self) -> Result<LogState, StoreError> {
        dispatch!(self, s => s.log_state().await)
    }

    async fn log_hashes(&self, indexes: Vec<u64>) -> Result<Hashes, StoreError> {
        dispatch!(self, s => s.log_hashes(indexes).await)
    }

    async fn log_append(
        &self,
        from: u64,
        cursor: Cursor,
        entries: Vec<(i64, String)>,
        hashes: Vec<(u64, Hash)>,
    ) -> Result<bool, StoreError> {
        dispatch!(self, s => s.log_append(from, cursor, entries, hashes).await)
    }

    async fn log_put_checkpoint(
        &self,
        size: u64,
        note: String,
        verifier_key: String,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.log_put_checkpoint(size, note, verifier_key).await)
    }

    async fn log_checkpoint(&self, size: Option<u64>) -> Result<Option<(u64, String)>, StoreError> {
        dispatch!(self, s => s.log_checkpoint(size).await)
    }

    async fn log_checkpoints(&self) -> Result<Vec<(u64, String)>, StoreError> {
        dispatch!(self, s => s.log_checkpoints().await)
    }

    async fn log_entry(&self, id: String) -> Result<Option<LogEntry>, StoreError> {
        dispatch!(self, s => s.log_entry(id).await)
    }

    async fn log_event_entry(&self, id: String) -> Result<Option<LogEntry>, StoreError> {
        dispatch!(self, s => s.log_event_entry(id).await)
    }

    async fn log_records(&self, from: u64, limit: u32) -> Result<Vec<LoggedRecord>, StoreError> {
        dispatch!(self, s => s.log_records(from, limit).await)
    }

    async fn log_pending(&self, after: Cursor, limit: u32) -> Result<Vec<Pending>, StoreError> {
        dispatch!(self, s => s.log_pending(after, limit).await)
    }

    async fn log_logged(&self, seqs: Vec<i64>) -> Result<Vec<i64>, StoreError> {
        dispatch!(self, s => s.log_logged(seqs).await)
    }

    async fn log_unlogged(&self, limit: u32) -> Result<Vec<super::StoredCapture>, StoreError> {
        dispatch!(self, s => s.log_unlogged(limit).await)
    }

    async fn log_missing(&self, cursor: Cursor) -> Result<Vec<(String, bool)>, StoreError> {
        dispatch!(self, s => s.log_missing(cursor).await)
    }
}
