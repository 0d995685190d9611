//! Erasure and legal holds in the store (`crate::erase`): what erasing a capture removes, the
//! tombstone it leaves, and the accountability events (erasures, holds placed and lifted) that
//! the verifiable log appends as entries of their own.
//!
//! Both backends promise: [`EraseStore::erase`] removes each capture's content from every table
//! that holds it — the tables `CONTENT_TABLES` lists in `sqlite.rs` and `postgres/mod.rs`, one
//! line per table — and writes its tombstone and the erasure's event, all in one transaction: a
//! capture is erased entirely or not at all; a dry run does the same and rolls back. An event's
//! log entry is keyed in `log_entries` by the negated `seq` of its `log_events` row, so the
//! sequencer appends it like a record and `verify` reads it back. An audit engine's verdict is
//! such an event too (kind [`VERDICT_KIND`]): its entry is the verdict as stored, and erasing a
//! capture removes its verdicts' entries with it, named in the erasure's entry.

use std::future::Future;

use serde::Serialize;

use super::{Store, StoreError};

/// The prefix of an event's id in the log (`log_entries.id`).
pub const EVENT_PREFIX: &str = "event/";

/// What remains of an erased capture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tombstone {
    /// The capture id.
    pub id: String,
    /// When the exchange started.
    pub started_at: String,
    /// Its index in the log, once sequenced.
    pub log_index: Option<u64>,
    /// Its leaf hash (hex), `SHA-256(0x00 ‖ entry)` of the record it had.
    pub leaf_hash: String,
    /// When it was erased (RFC 3339, UTC).
    pub erased_at: String,
    /// Why.
    pub reason: String,
    /// The erasure event that erased it.
    pub erasure: String,
    /// By which request or policy: `request`, or `retention <duration>`.
    pub by: String,
}

/// One erasure to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EraseRequest {
    /// The event's id.
    pub event: String,
    /// Why.
    pub reason: String,
    /// `request` or `retention <duration>`.
    pub by: String,
    /// When (RFC 3339, UTC).
    pub erased_at: String,
    /// The captures to erase.
    pub ids: Vec<String>,
    /// Answer what would be erased, and erase nothing.
    pub dry_run: bool,
}

/// What an erasure did (or, dry, would do).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct EraseOutcome {
    /// Captures erased now.
    pub erased: Vec<String>,
    /// Captures erased before (their tombstones stay as they were).
    pub already_erased: Vec<String>,
    /// Ids no capture or tombstone has.
    pub unknown: Vec<String>,
}

/// A legal hold: while it is active, the captures it names or its filters match are neither
/// erased on request nor by retention.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hold {
    /// Its id.
    pub id: String,
    /// Why.
    pub reason: String,
    /// When it was placed (RFC 3339, UTC).
    pub placed_at: String,
    /// The captures it names, when given by ids.
    pub ids: Option<Vec<String>>,
    /// The list filters it holds by, when given by filters (a JSON object).
    pub filters: Option<serde_json::Value>,
    /// When it was lifted, if it was.
    pub lifted_at: Option<String>,
}

/// An accountability event's log entry: the bytes the log hashes. Fields in a fixed order.
#[derive(Debug, Clone, Serialize)]
pub struct EventEntry<'a> {
    /// `truthtable.erasure/v1`, `truthtable.hold/v1` or `truthtable.hold-lifted/v1`.
    pub kind: &'a str,
    /// The event's id (an erasure's or a hold's).
    pub id: &'a str,
    /// When.
    pub at: &'a str,
    /// Why.
    pub reason: &'a str,
    /// `request`, `retention <duration>`, or (holds) `request`.
    pub by: &'a str,
    /// The captures it names (erased, or held by id).
    pub captures: &'a [String],
    /// The filters a hold holds by.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filters: Option<&'a serde_json::Value>,
    /// The verdicts an erasure removed with its captures (their event ids, `verdict-<n>`).
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub verdicts: &'a [String],
}

/// The entry kind of an erasure.
pub const ERASURE_KIND: &str = "truthtable.erasure/v1";
/// The entry kind of a hold placed.
pub const HOLD_KIND: &str = "truthtable.hold/v1";
/// The entry kind of a hold lifted.
pub const HOLD_LIFTED_KIND: &str = "truthtable.hold-lifted/v1";
/// The kind of a verdict's event: its entry is the verdict's JSON exactly as stored and shown.
pub const VERDICT_KIND: &str = "truthtable.verdict/v1";
/// The prefix of a verdict's event id: `verdict-<n>`, `n` its row in `capture_verdicts`.
pub const VERDICT_PREFIX: &str = "verdict-";

impl EventEntry<'_> {
    /// The entry's bytes.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The erasure's entry for the captures it erased and the verdicts that went with them.
pub fn erasure_entry(req: &EraseRequest, erased: &[String], verdicts: &[String]) -> String {
    EventEntry {
        kind: ERASURE_KIND,
        id: &req.event,
        at: &req.erased_at,
        reason: &req.reason,
        by: &req.by,
        captures: erased,
        filters: None,
        verdicts,
    }
    .to_text()
}

/// An event waiting for the log, or read back from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEvent {
    /// Its `log_events.seq` (the log keys it by `-seq`).
    pub seq: i64,
    /// Its id in the log (`event/<id>`).
    pub log_id: String,
    /// The entry.
    pub entry: String,
}

/// Store counts for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EraseCounts {
    /// Tombstones.
    pub erased: u64,
    /// Active holds.
    pub holds: u64,
    /// Accountability events (erasures, holds placed and lifted, verdicts): entries the log holds
    /// or will.
    pub events: u64,
}

/// What erasure needs of a store.
pub trait EraseStore: Send + Sync {
    /// Erases `req.ids` (see the module's promise).
    fn erase(
        &self,
        req: EraseRequest,
    ) -> impl Future<Output = Result<EraseOutcome, StoreError>> + Send;

    /// The tombstone of `id`, if it was erased.
    fn tombstone(
        &self,
        id: String,
    ) -> impl Future<Output = Result<Option<Tombstone>, StoreError>> + Send;

    /// Up to `limit` tombstones, most recently erased first.
    fn tombstones(
        &self,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<Tombstone>, StoreError>> + Send;

    /// Up to `limit` tombstones of captures stored strictly between `above` and `below` (by
    /// `seq`; `None` is no bound), newest stored first, or oldest first when `oldest_first`:
    /// `(seq, tombstone)`. The list shows them in their captures' places.
    fn tombstones_between(
        &self,
        above: Option<i64>,
        below: Option<i64>,
        oldest_first: bool,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<(i64, Tombstone)>, StoreError>> + Send;

    /// Up to `limit` events the log does not hold yet, oldest first.
    fn unlogged_events(
        &self,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<PendingEvent>, StoreError>> + Send;

    /// Places `hold` and stores its event `entry`, in one transaction.
    fn put_hold(
        &self,
        hold: Hold,
        entry: String,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Lifts the active hold `id` at `at` and stores its event `entry`; false when no active
    /// hold has that id.
    fn lift_hold(
        &self,
        id: String,
        at: String,
        entry: String,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Every hold, active or lifted, newest first.
    fn holds(&self) -> impl Future<Output = Result<Vec<Hold>, StoreError>> + Send;

    /// Up to `limit` ids of captures that started before `before_us` (microseconds since the
    /// epoch; by the digest, or the stored `started_at` when there is none yet), oldest first,
    /// after `after_seq`: `(seq, id)`.
    fn started_before(
        &self,
        before_us: i64,
        after_seq: i64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<(i64, String)>, StoreError>> + Send;

    /// How many stored captures started before `before_us` (as [`EraseStore::started_before`]
    /// finds them).
    fn count_started_before(
        &self,
        before_us: i64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Counts for the metrics.
    fn erase_counts(&self) -> impl Future<Output = Result<EraseCounts, StoreError>> + Send;
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            Store::Sqlite($s) => $call,
            Store::Postgres($s) => $call,
        }
    };
}

impl EraseStore for Store {
    async fn erase(&self, req: EraseRequest) -> Result<EraseOutcome, StoreError> {
        dispatch!(self, s => s.erase(req).await)
    }

    async fn tombstone(&self, id: String) -> Result<Option<Tombstone>, StoreError> {
        dispatch!(self, s => s.tombstone(id).await)
    }

    async fn tombstones(&self, limit: u32) -> Result<Vec<Tombstone>, StoreError> {
        dispatch!(self, s => s.tombstones(limit).await)
    }

    async fn tombstones_between(
        &self,
        above: Option<i64>,
        below: Option<i64>,
        oldest_first: bool,
        limit: u32,
    ) -> Result<Vec<(i64, Tombstone)>, StoreError> {
        dispatch!(self, s => s.tombstones_between(above, below, oldest_first, limit).await)
    }

    async fn unlogged_events(&self, limit: u32) -> Result<Vec<PendingEvent>, StoreError> {
        dispatch!(self, s => s.unlogged_events(limit).await)
    }

    async fn put_hold(&self, hold: Hold, entry: String) -> Result<(), StoreError> {
        dispatch!(self, s => s.put_hold(hold, entry).await)
    }

    async fn lift_hold(&self, id: String, at: String, entry: String) -> Result<bool, StoreError> {
        dispatch!(self, s => s.lift_hold(id, at, entry).await)
    }

    async fn holds(&self) -> Result<Vec<Hold>, StoreError> {
        dispatch!(self, s => s.holds().await)
    }

    async fn started_before(
        &self,
        before_us: i64,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        dispatch!(self, s => s.started_before(before_us, after_seq, limit).await)
    }

    async fn count_started_before(&self, before_us: i64) -> Result<u64, StoreError> {
        dispatch!(self, s => s.count_started_before(before_us).await)
    }

    async fn erase_counts(&self) -> Result<EraseCounts, StoreError> {
        dispatch!(self, s => s.erase_counts().await)
    }
}

impl Store {
    /// After an erasure: gives the erased rows' space back and makes their bytes unrecoverable
    /// from the store's files where the store can (SQLite: merges the word index, gives the
    /// free pages back to the file system, truncates the write-ahead log; PostgreSQL: vacuums
    /// the content tables, their TOAST with them).
    pub async fn purge(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.purge().await,
            Store::Postgres(s) => s.purge().await,
        }
    }
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
