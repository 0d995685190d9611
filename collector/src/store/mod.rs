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
//! - every record gets a [`Digest`]: the part of its audit view the list shows, filters and
//!   searches on, kept in a table of its own (`capture_digests`, and a word index) beside the
//!   untouched record. A digest is derived data, written behind ingest in transactions of its own
//!   by [`CaptureStore::put_digests`] (`crate::indexer`, fed with the `seq`s
//!   [`CaptureStore::insert_batch`] returns); records without a current one — not reached yet,
//!   stored before digests existed, or digested by an older derivation ([`Digest::version`]) —
//!   are found by [`CaptureStore::stale_digests`] (`crate::digest::backfill`);
//! - [`CaptureStore::list`] answers a [`ListQuery`] — filters and a word search over question and
//!   answer, paged by `seq` — from indexes, so it stays fast on a large store.
//!
//! A new query is one method on [`CaptureStore`], implemented in `sqlite.rs` and
//! `postgres/mod.rs`, one line in [`Store`]'s `dispatch!`, and one case in `tests/store.rs` that
//! runs against both backends.

pub mod erase;
pub mod health;
pub mod log;
pub mod postgres;
pub mod sqlite;

use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

use crate::config::{Config, DbTarget};

/// A cursor lease in whole milliseconds, as both stores keep it.
fn lease_ms(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX)
}
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
    /// The record exactly as received.
    pub raw: String,
}

/// The part of a record's audit view that the list shows, filters and searches on, derived once
/// (behind ingest, or by the backfill) rather than for every row of every query.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Digest {
    /// The derivation that wrote it (`crate::digest::VERSION`); older digests are re-derived.
    pub version: i32,
    /// `started_at` in microseconds since the Unix epoch (`None` if it could not be read).
    pub started_us: Option<i64>,
    /// The record's outcome (copied, so every filter reads one table).
    pub outcome: String,
    /// The response status (copied likewise).
    pub status: Option<u16>,
    /// The recognised protocol's name (`openai.chat`, …, `unknown`).
    pub protocol: String,
    /// The model the view names.
    pub model: Option<String>,
    /// The first characters of the question, whitespace collapsed.
    pub question: Option<String>,
    /// The first characters of the answer, whitespace collapsed.
    pub answer: Option<String>,
    /// A body was truncated by the filter.
    pub body_truncated: bool,
    /// For a stream, whether its terminal event arrived; `None` when not streamed.
    pub stream_complete: Option<bool>,
    /// How many problems the view reports.
    pub problems: u32,
    /// The words of question and answer a search finds it by (`crate::search::index_words`).
    pub words: String,
    /// The audit view's `timing.ttft_ms`, in microseconds; `None` without one.
    pub ttft_us: Option<i64>,
    /// The record's `duration_ms`, in microseconds (copied, so every filter reads one table).
    pub duration_us: Option<i64>,
}

/// A record whose digest is missing or older than the current derivation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleDigest {
    /// The record's sequence number.
    pub seq: i64,
    /// The record exactly as received.
    pub raw: String,
}

/// Which responses a list keeps, by status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    /// Exactly this status.
    Is(u16),
    /// A class: `4` is 400–499.
    Class(u16),
    /// No response at all.
    NoResponse,
}

/// What a list keeps; every part given must hold. A capture whose digest is still being derived
/// matches only the empty filter.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListFilter {
    /// `started_at` at or after this (microseconds since the epoch).
    pub since_us: Option<i64>,
    /// `started_at` before this.
    pub until_us: Option<i64>,
    /// One of these outcomes (any when empty).
    pub outcomes: Vec<String>,
    /// One of these protocols (any when empty).
    pub protocols: Vec<String>,
    /// Exactly this model.
    pub model: Option<String>,
    /// Exactly this request path (without its query).
    pub path: Option<String>,
    /// The response status.
    pub status: Option<StatusFilter>,
    /// Only captures with a truncated body.
    pub truncated: bool,
    /// Only streams that ended without their terminal event.
    pub incomplete: bool,
    /// Only captures whose view reports problems.
    pub problems: bool,
    /// Every term must start a word of the question or the answer (`crate::search::terms`).
    pub terms: Vec<String>,
    /// Only captures whose time to first token is longer than this (microseconds).
    pub ttft_above_us: Option<i64>,
    /// Only captures that lasted longer than this (microseconds).
    pub duration_above_us: Option<i64>,
    /// Only captures an audit engine flagged (a verdict with a hallucination found).
    pub flagged: bool,
    /// Only captures with a verdict scoring below this (a decimal from 0 to 1, as given).
    pub score_below: Option<String>,
}

impl ListFilter {
    /// True when nothing is filtered.
    pub fn is_empty(&self) -> bool {
        *self == ListFilter::default()
    }
}

/// Where a page of the list starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Page {
    /// The newest captures.
    #[default]
    Newest,
    /// Captures stored before this `seq` (older).
    Before(i64),
    /// Captures stored after this `seq` (newer): the page just above it.
    After(i64),
}

/// The order of the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sort {
    /// Most recently stored first, paged by [`Page`].
    #[default]
    Newest,
    /// Longest time to first token first (captures without one left out), paged by [`ListQuery::after_key`].
    Ttft,
    /// Longest duration first, paged likewise.
    Duration,
}

impl Sort {
    /// The digest column a sorted list is ordered by.
    fn column(self) -> Option<&'static str> {
        match self {
            Sort::Newest => None,
            Sort::Ttft => Some("d.ttft_us"),
            Sort::Duration => Some("d.duration_us"),
        }
    }
}

/// One page of the filtered list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListQuery {
    /// What to keep.
    pub filter: ListFilter,
    /// Most rows to return.
    pub limit: u32,
    /// Where to start (a list in stored order).
    pub page: Page,
    /// The order.
    pub sort: Sort,
    /// A sorted list's next page: the rows after this `(key, seq)` in the sort order.
    pub after_key: Option<(i64, i64)>,
}

/// A value bound into a list query.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SqlValue {
    Int(i64),
    Text(String),
}

/// How a backend spells what the shared list query needs.
pub(crate) struct Dialect {
    /// The placeholder of the `n`th (1-based) parameter.
    pub placeholder: fn(usize) -> String,
    /// The condition that `d.seq` matches the search bound at this placeholder.
    pub search: fn(&str) -> String,
    /// The search parameter for these terms.
    pub search_param: fn(&[String]) -> String,
    /// A word index to walk newest first instead of the digests when searching: its
    /// `FROM` (joining `d`) and its `seq` column. With it, a search stops at the page's last
    /// match rather than collecting every match first.
    pub search_walk: Option<(&'static str, &'static str)>,
}

/// The list query: the SQL text and its parameters, in order. Unfiltered, it walks `captures` by
/// `seq` and shows digests where they exist; filtered, it chooses the page from
/// `capture_digests`, whose indexes cover every filter, and joins the records of that page only.
pub(crate) fn list_sql(q: &ListQuery, dialect: &Dialect) -> (String, Vec<SqlValue>) {
    let mut params = Vec::new();
    let mut bind = |v: SqlValue| {
        params.push(v);
        (dialect.placeholder)(params.len())
    };
    let f = &q.filter;
    let mut conds: Vec<String> = Vec::new();
    let sorted = q.sort.column();
    let walk = dialect
        .search_walk
        .filter(|_| !f.terms.is_empty() && sorted.is_none());
    let key = match walk {
        _ if f.is_empty() && sorted.is_none() => "c.seq",
        Some((_, key)) => key,
        None => "d.seq",
    };
    match q.page {
        Page::Newest => {}
        Page::Before(seq) => conds.push(format!("{key} < {}", bind(SqlValue::Int(seq)))),
        Page::After(seq) => conds.push(format!("{key} > {}", bind(SqlValue::Int(seq)))),
    }
    if let Some(t) = f.since_us {
        conds.push(format!("d.started_us >= {}", bind(SqlValue::Int(t))));
    }
    if let Some(t) = f.until_us {
        conds.push(format!("d.started_us < {}", bind(SqlValue::Int(t))));
    }
    let mut one_of = |column: &str, values: &[String], conds: &mut Vec<String>| {
        if values.is_empty() {
            return;
        }
        let list: Vec<String> = values
            .iter()
            .map(|v| bind(SqlValue::Text(v.clone())))
            .collect();
        conds.push(format!("{column} IN ({})", list.join(", ")));
    };
    one_of("d.outcome", &f.outcomes, &mut conds);
    one_of("d.protocol", &f.protocols, &mut conds);
    if let Some(m) = &f.model {
        one_of("d.model", std::slice::from_ref(m), &mut conds);
    }
    if let Some(p) = &f.path {
        // The path is the record's, not the digest's: looked up by key for each candidate.
        let p = bind(SqlValue::Text(p.clone()));
        conds.push(format!(
            "EXISTS (SELECT 1 FROM captures pc WHERE pc.seq = d.seq AND pc.path = {p})"
        ));
    }
    match f.status {
        None => {}
        Some(StatusFilter::Is(s)) => {
            conds.push(format!("d.status = {}", bind(SqlValue::Int(i64::from(s)))))
        }
        Some(StatusFilter::Class(c)) => {
            let lo = bind(SqlValue::Int(i64::from(c) * 100));
            let hi = bind(SqlValue::Int(i64::from(c) * 100 + 99));
            conds.push(format!("d.status BETWEEN {lo} AND {hi}"));
        }
        Some(StatusFilter::NoResponse) => conds.push("d.status IS NULL".to_owned()),
    }
    if f.truncated {
        conds.push("d.body_truncated".to_owned());
    }
    if f.incomplete {
        conds.push("NOT d.stream_complete".to_owned());
    }
    if f.problems {
        conds.push("d.problems > 0".to_owned());
    }
    if let Some(us) = f.ttft_above_us {
        conds.push(format!("d.ttft_us > {}", bind(SqlValue::Int(us))));
    }
    if let Some(us) = f.duration_above_us {
        conds.push(format!("d.duration_us > {}", bind(SqlValue::Int(us))));
    }
    if let Some(column) = sorted {
        conds.push(format!("{column} IS NOT NULL"));
        if let Some((k, seq)) = q.after_key {
            let (k, seq) = (bind(SqlValue::Int(k)), bind(SqlValue::Int(seq)));
            conds.push(format!("({column}, d.seq) < ({k}, {seq})"));
        }
    }
    if !f.terms.is_empty() {
        let p = bind(SqlValue::Text((dialect.search_param)(&f.terms)));
        conds.push((dialect.search)(&p));
    }
    if f.flagged {
        conds.push(
            "d.seq IN (SELECT capture_seq FROM capture_verdicts WHERE hallucination)".to_owned(),
        );
    }
    if let Some(below) = &f.score_below {
        // Bound as text and cast, so neither backend needs a float parameter type.
        let p = bind(SqlValue::Text(below.clone()));
        conds.push(format!(
            "d.seq IN (SELECT capture_seq FROM capture_verdicts \
             WHERE score < CAST(CAST({p} AS TEXT) AS DOUBLE PRECISION))"
        ));
    }
    let order = if matches!(q.page, Page::After(_)) {
        "ASC"
    } else {
        "DESC"
    };
    let limit = bind(SqlValue::Int(i64::from(q.limit)));
    let where_ = if conds.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conds.join(" AND "))
    };
    // Filtered, the page's seqs are chosen from the digests alone (narrow rows, or an index
    // that covers the filter), and only that page's records are joined.
    let source = match walk {
        _ if f.is_empty() && sorted.is_none() => "captures c",
        Some((from, _)) => from,
        None => "capture_digests d",
    };
    let (from, outer_order) = match sorted {
        None => (
            format!(
                "(SELECT {key} AS seq FROM {source} {where_} ORDER BY {key} {order} LIMIT {limit}) p"
            ),
            format!("p.seq {order}"),
        ),
        Some(column) => (
            format!(
                "(SELECT d.seq AS seq, {column} AS k FROM {source} {where_}
                  ORDER BY {column} DESC, d.seq DESC LIMIT {limit}) p"
            ),
            "p.k DESC, p.seq DESC".to_owned(),
        ),
    };
    let sql = format!(
        "SELECT c.seq, c.id, c.started_at, c.method, c.path, c.status, c.outcome, c.duration_ms,
                coalesce(d.model, c.model), d.protocol, d.question, d.answer, d.body_truncated,
                d.stream_complete, d.problems, d.ttft_us, d.duration_us,
                (SELECT count(*) FROM capture_verdicts v WHERE v.capture_seq = c.seq AND v.status <> 'pending'),
                (SELECT max(CASE WHEN v.hallucination THEN 1 WHEN v.hallucination IS NOT NULL THEN 0 END)
                 FROM capture_verdicts v WHERE v.capture_seq = c.seq),
                (SELECT min(v.score) FROM capture_verdicts v WHERE v.capture_seq = c.seq)
         FROM {from} JOIN captures c ON c.seq = p.seq LEFT JOIN capture_digests d ON d.seq = p.seq
         ORDER BY {outer_order}"
    );
    (sql, params)
}

/// The distinct models of the digests, found by one index probe each (a loose index scan), so
/// it is as fast on a large store as on a small one.
pub(crate) const MODELS_SQL: &str = "
WITH RECURSIVE m(model) AS (
    SELECT min(model) FROM capture_digests
    UNION ALL
    SELECT (SELECT min(model) FROM capture_digests WHERE model > m.model)
    FROM m WHERE m.model IS NOT NULL
)
SELECT model FROM m WHERE model IS NOT NULL LIMIT 1000";

/// What one batch did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BatchOutcome {
    /// Records newly stored.
    pub stored: u64,
    /// Records skipped because their id was already stored (or repeated in the batch).
    pub duplicates: u64,
    /// Each newly stored record's place in the batch and its `seq`, in batch order.
    pub new: Vec<(usize, i64)>,
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
    /// The recognised protocol; `null` while the digest is being derived.
    pub protocol: Option<String>,
    /// The first characters of the question.
    #[serde(rename = "question_preview")]
    pub question: Option<String>,
    /// The first characters of the answer.
    #[serde(rename = "answer_preview")]
    pub answer: Option<String>,
    /// A body was truncated by the filter.
    pub body_truncated: Option<bool>,
    /// For a stream, whether its terminal event arrived.
    pub stream_complete: Option<bool>,
    /// How many problems the audit view reports.
    #[serde(rename = "problem_count")]
    pub problems: Option<u32>,
    /// Time to first token in milliseconds, when the audit view found one.
    pub ttft_ms: Option<f64>,
    /// How many verdicts audit engines gave on it (engine errors included, hand-offs whose
    /// verdict is still to come not).
    pub verdict_count: u32,
    /// Whether an engine flagged it (found a hallucination); `null` until an engine judged it.
    pub flagged: Option<bool>,
    /// The lowest score an engine gave it; `null` until an engine scored it.
    pub lowest_score: Option<f64>,
    /// Storage sequence number (the paging cursor); not serialised.
    #[serde(skip)]
    pub seq: i64,
    /// The digest's `ttft_us` and `duration_us` (a sorted list's paging cursor); not serialised.
    #[serde(skip)]
    pub keys: (Option<i64>, Option<i64>),
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

/// An audit engine's verdict on a stored capture, ready to store (`crate::engine`).
#[derive(Debug, Clone, PartialEq)]
pub struct NewVerdict {
    /// The capture's sequence number.
    pub capture_seq: i64,
    /// The capture id.
    pub capture_id: String,
    /// The engine, as `--audit-engine` names it.
    pub engine: String,
    /// `completed`, `failed` or `error`.
    pub status: String,
    /// Faithfulness, 0 to 1, when the engine gave one.
    pub score: Option<f64>,
    /// Whether the engine found a hallucination, when it said.
    pub hallucination: Option<bool>,
    /// The whole verdict as JSON (`crate::engine::verdict::Verdict`).
    pub verdict: String,
    /// When it arrived (RFC 3339).
    pub received_at: String,
    /// Queue it for a Phoenix span annotation ([`CaptureStore::to_annotate`]).
    pub annotate: bool,
}

/// A verdict waiting to be posted to Phoenix as a span annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingAnnotation {
    /// Its row in `capture_verdicts`.
    pub row: i64,
    /// The capture it judges.
    pub capture_id: String,
    /// The verdict as stored (JSON).
    pub verdict: String,
}

/// A stored verdict: its JSON, which is also its entry in the verifiable log, and where the
/// log has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredVerdict {
    /// The verdict as stored (`crate::engine::verdict::Verdict` as JSON): the log entry's bytes.
    pub json: String,
    /// Its event id (`verdict-<n>`); its log entry is `event/verdict-<n>`.
    pub event: String,
    /// Its index in the log, once sequenced.
    pub log_index: Option<u64>,
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

    /// The amendments stored for capture `id` (records carrying `"amendment"`, see
    /// [`crate::record::is_amendment`]), as received, oldest first.
    fn amendments(
        &self,
        id: String,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// Up to `query.limit` summaries that pass its filter, newest stored first, starting where
    /// its page says.
    fn list(
        &self,
        query: ListQuery,
    ) -> impl Future<Output = Result<Vec<CaptureSummary>, StoreError>> + Send;

    /// The distinct models named by the digests, in order (at most 1000).
    fn models(&self) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// Up to `limit` records after `seq` (in `seq` order) whose digest is missing or older than
    /// `version`.
    fn stale_digests(
        &self,
        after: i64,
        version: i32,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<StaleDigest>, StoreError>> + Send;

    /// Stores these digests (by `seq`), replacing older ones and their words; a digest already
    /// of a newer version is kept. Returns how many were written.
    fn put_digests(
        &self,
        digests: Vec<(i64, Digest)>,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

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

    /// Appends a verdict and its event for the verifiable log (its entry: `verdict.verdict`),
    /// in one transaction (verdicts are never changed or removed: several engines, or several
    /// runs of one, each keep theirs; erasure removes them with their capture). A verdict on a
    /// capture no longer stored — erased while its engine judged it — is dropped.
    fn add_verdict(
        &self,
        verdict: NewVerdict,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The sequence number of the capture stored under `id`, if any.
    fn capture_seq(
        &self,
        id: String,
    ) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send;

    /// The verdicts on capture `id` as stored, in the order they arrived.
    fn verdicts(
        &self,
        id: String,
    ) -> impl Future<Output = Result<Vec<StoredVerdict>, StoreError>> + Send;

    /// Up to `limit` verdicts stored with `annotate` and not yet marked [`Self::annotated`],
    /// oldest first: the durable queue of Phoenix span annotations.
    fn to_annotate(
        &self,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<PendingAnnotation>, StoreError>> + Send;

    /// Takes these verdicts (by `row`) off the annotation queue: sent, refused or given up.
    fn annotated(&self, rows: Vec<i64>) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Of `ids`, those `engine` has already given a verdict (or an engine error) on.
    fn judged(
        &self,
        engine: String,
        ids: Vec<String>,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

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

    async fn amendments(&self, id: String) -> Result<Vec<String>, StoreError> {
        dispatch!(self, s => s.amendments(id).await)
    }

    async fn list(&self, query: ListQuery) -> Result<Vec<CaptureSummary>, StoreError> {
        dispatch!(self, s => s.list(query).await)
    }

    async fn models(&self) -> Result<Vec<String>, StoreError> {
        dispatch!(self, s => s.models().await)
    }

    async fn stale_digests(
        &self,
        after: i64,
        version: i32,
        limit: u32,
    ) -> Result<Vec<StaleDigest>, StoreError> {
        dispatch!(self, s => s.stale_digests(after, version, limit).await)
    }

    async fn put_digests(&self, digests: Vec<(i64, Digest)>) -> Result<u64, StoreError> {
        dispatch!(self, s => s.put_digests(digests).await)
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

    async fn add_verdict(&self, verdict: NewVerdict) -> Result<(), StoreError> {
        dispatch!(self, s => s.add_verdict(verdict).await)
    }

    async fn capture_seq(&self, id: String) -> Result<Option<i64>, StoreError> {
        dispatch!(self, s => s.capture_seq(id).await)
    }

    async fn verdicts(&self, id: String) -> Result<Vec<StoredVerdict>, StoreError> {
        dispatch!(self, s => s.verdicts(id).await)
    }

    async fn to_annotate(&self, limit: u32) -> Result<Vec<PendingAnnotation>, StoreError> {
        dispatch!(self, s => s.to_annotate(limit).await)
    }

    async fn annotated(&self, rows: Vec<i64>) -> Result<(), StoreError> {
        dispatch!(self, s => s.annotated(rows).await)
    }

    async fn judged(&self, engine: String, ids: Vec<String>) -> Result<Vec<String>, StoreError> {
        dispatch!(self, s => s.judged(engine, ids).await)
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
