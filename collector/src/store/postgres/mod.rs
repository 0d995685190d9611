//! The shared store: a PostgreSQL database (13 or later) that several collector replicas write to
//! and read from.
//!
//! A batch is one `INSERT … SELECT FROM unnest(…) ON CONFLICT (id) DO NOTHING`: one statement,
//! hence one transaction, all or nothing, committed (and, with `synchronous_commit` on, flushed)
//! before it returns. The unique `id` makes a record stored once across replicas: a replica that
//! races another for the same id waits for the other's commit and then skips it. Each row also
//! records its transaction (`tx`, an `xid8`), so [`read_after`](CaptureStore::read_after) can
//! walk rows in commit order and leave those of transactions still in flight for later.
//!
//! Digests live in `capture_digests` (keyed by `seq`, an index per filter), their words in a
//! `tsvector` built with `array_to_tsvector` from the words `crate::search` split — taken as
//! they are, no text-search parser or dictionary — under a GIN index; a search is a `tsquery` of
//! prefix terms (`'env':* & 'proxy':*`), so it means what it means on SQLite. A batch's records
//! and digests are written by one statement.
//!
//! Availability: connections come from a pool that reconnects on demand; a background task
//! prepares the schema (if the server was down at start) and probes the server, and every
//! operation's result updates [`Health`]. Failures to reach the server are
//! [`StoreError::Unavailable`].

pub mod connect;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{
    Hook, HookError, Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime,
};
use tokio_postgres::NoTls;

use self::connect::{classify, Failure};
use super::erase::{
    EraseCounts, EraseOutcome, EraseRequest, EraseStore, Hold, PendingEvent, Tombstone,
    EVENT_PREFIX, VERDICT_KIND, VERDICT_PREFIX,
};
use super::health::HealthTracker;
use super::log::{
    db_int, hash_from, LogEntry, LogState, LogStore, LoggedRecord, Pending, VerdictRow,
};
use super::{
    list_sql, BatchOutcome, CaptureStore, CaptureSummary, Cursor, Dialect, Digest, Health,
    ListQuery, NewCapture, NewVerdict, Page, PendingAnnotation, SqlValue, StaleDigest, StoreError,
    StoreStats, StoredCapture, StoredVerdict, MODELS_SQL,
};
use crate::config::PasswordSources;
use crate::log::tree::{Hash, Hashes};

/// Longest wait for a pooled connection when every one is busy.
const POOL_WAIT: Duration = Duration::from_secs(10);
/// Longest any one store operation may take before it is answered as unavailable.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the background task checks the server while it answers.
const PROBE_EVERY: Duration = Duration::from_secs(5);
/// How often it tries again while the server does not answer.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Schema versions, applied in order inside one transaction under an advisory lock, so
/// replicas starting together migrate once. `truthtable_schema` holds the versions applied.
const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE captures (
    seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tx          xid8 NOT NULL DEFAULT pg_current_xact_id(),
    id          text NOT NULL UNIQUE,
    started_at  text NOT NULL,
    method      text NOT NULL,
    path        text NOT NULL,
    status      integer,
    outcome     text NOT NULL,
    duration_ms double precision NOT NULL,
    model       text,
    record      text NOT NULL
);
CREATE INDEX captures_commit_order ON captures (tx, seq);
",
    "
CREATE TABLE export_cursors (
    name        text PRIMARY KEY,
    cursor      text NOT NULL DEFAULT '0-0',
    holder      text,
    lease_until timestamptz NOT NULL DEFAULT '-infinity'
);
",
    "
CREATE TABLE capture_digests (
    seq             bigint PRIMARY KEY,
    version         integer NOT NULL,
    started_us      bigint,
    outcome         text NOT NULL,
    status          integer,
    protocol        text NOT NULL,
    model           text,
    question        text,
    answer          text,
    body_truncated  boolean NOT NULL,
    stream_complete boolean,
    problems        integer NOT NULL,
    search          tsvector NOT NULL
);
CREATE INDEX capture_digests_started ON capture_digests (started_us);
CREATE INDEX capture_digests_outcome ON capture_digests (outcome, seq);
CREATE INDEX capture_digests_status ON capture_digests (status, seq);
CREATE INDEX capture_digests_protocol ON capture_digests (protocol, seq);
CREATE INDEX capture_digests_model ON capture_digests (model, seq);
CREATE INDEX capture_digests_truncated ON capture_digests (seq) WHERE body_truncated;
CREATE INDEX capture_digests_incomplete ON capture_digests (seq) WHERE NOT stream_complete;
CREATE INDEX capture_digests_problems ON capture_digests (seq) WHERE problems > 0;
-- A small pending list: new words are merged into the index 256 kB at a time (cheaper than
-- one by one), and a search never scans more than that of unmerged words (the default 4 MB
-- cost every search ~40 ms after a bulk load).
CREATE INDEX capture_digests_search ON capture_digests USING gin (search)
    WITH (gin_pending_list_limit = 256);
",
    // The verifiable log (crate::log): the sequencer gives the records already stored their
    // entries first.
    "
CREATE TABLE log_entries (
    idx bigint PRIMARY KEY,
    seq bigint NOT NULL UNIQUE,
    id  text NOT NULL
);
CREATE TABLE log_hashes (
    idx  bigint PRIMARY KEY,
    hash bytea NOT NULL
);
CREATE TABLE log_checkpoints (
    size      bigint PRIMARY KEY,
    note      text NOT NULL,
    signed_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE log_state (
    one          integer PRIMARY KEY CHECK (one = 1),
    size         bigint NOT NULL,
    cursor       text NOT NULL,
    verifier_key text
);
INSERT INTO log_state (one, size, cursor) VALUES (1, 0, '0-0');
",
    // Amendments (`complete_after_stored`): what happened to an exchange after its record was
    // stored, kept as their own rows beside the capture (the capture's bytes never change).
    "
CREATE TABLE capture_amendments (
    seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id          text NOT NULL UNIQUE,
    received_at timestamptz NOT NULL DEFAULT now(),
    record      text NOT NULL
);
",
    "
ALTER TABLE capture_digests ADD COLUMN ttft_us bigint, ADD COLUMN duration_us bigint;
CREATE INDEX capture_digests_ttft ON capture_digests (ttft_us, seq);
CREATE INDEX capture_digests_duration ON capture_digests (duration_us, seq);
",
    // Audit engines' verdicts (crate::engine): appended, never changed.
    "
CREATE TABLE capture_verdicts (
    seq           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    capture_seq   bigint NOT NULL,
    capture_id    text NOT NULL,
    engine        text NOT NULL,
    status        text NOT NULL,
    score         double precision,
    hallucination boolean,
    verdict       text NOT NULL,
    received_at   text NOT NULL
);
CREATE INDEX capture_verdicts_capture ON capture_verdicts (capture_id, engine);
CREATE INDEX capture_verdicts_seq ON capture_verdicts (capture_seq);
CREATE INDEX capture_verdicts_flagged ON capture_verdicts (capture_seq) WHERE hallucination;
CREATE INDEX capture_verdicts_score ON capture_verdicts (score, capture_seq);
",
    // Erasure (crate::erase): tombstones, accountability events the log appends, legal holds.
    "
CREATE TABLE tombstones (
    seq        bigint PRIMARY KEY,
    id         text NOT NULL UNIQUE,
    started_at text NOT NULL,
    leaf_hash  text NOT NULL,
    erased_at  text NOT NULL,
    reason     text NOT NULL,
    erasure    text NOT NULL,
    erased_by  text NOT NULL
);
CREATE TABLE log_events (
    seq   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id    text NOT NULL UNIQUE,
    kind  text NOT NULL,
    entry text NOT NULL
);
CREATE TABLE holds (
    id        text PRIMARY KEY,
    reason    text NOT NULL,
    placed_at text NOT NULL,
    ids       text,
    filters   text,
    lifted_at text
);
",
    // A verdict is evidence too: its JSON moves to its event (`verdict-<seq>`), which the
    // verifiable log appends; the row keeps what the list filters by.
    "
ALTER TABLE capture_verdicts ADD COLUMN event_seq bigint;
INSERT INTO log_events (id, kind, entry)
    SELECT 'verdict-' || seq, 'truthtable.verdict/v1', verdict FROM capture_verdicts ORDER BY seq;
UPDATE capture_verdicts cv SET event_seq = v.seq FROM log_events v WHERE v.id = 'verdict-' || cv.seq;
ALTER TABLE capture_verdicts DROP COLUMN verdict;
CREATE UNIQUE INDEX capture_verdicts_event ON capture_verdicts (event_seq);
ALTER TABLE capture_verdicts ADD COLUMN annotate boolean NOT NULL DEFAULT false;
CREATE INDEX capture_verdicts_annotate ON capture_verdicts (seq) WHERE annotate;
",
    // Each capture's leaf hash, taken at ingest from the bytes it stores, so the sequencer reads
    // 32 bytes a record instead of the record (NULL on rows stored before: it hashes those).
    "
ALTER TABLE captures ADD COLUMN leaf bytea;
",
    // The log's stored hashes 64 to a row, as SQLite keeps them: an append writes a few dozen
    // rows, not two a record.
    "
CREATE TABLE log_hash_tiles (tile bigint PRIMARY KEY, hashes bytea NOT NULL);
INSERT INTO log_hash_tiles (tile, hashes)
    SELECT idx / 64, string_agg(hash, ''::bytea ORDER BY idx) FROM log_hashes GROUP BY idx / 64;
DROP TABLE log_hashes;
",
];

const DIALECT: Dialect = Dialect {
    placeholder: |n| format!("${n}"),
    search: |p| format!("d.search @@ {p}::text::tsquery"),
    search_param: |terms| {
        terms
            .iter()
            .map(|t| format!("'{t}':*"))
            .collect::<Vec<_>>()
            .join(" & ")
    },
    search_walk: None,
};

/// Run on every new connection: a 2xx means committed durably, so a server whose default is
/// `synchronous_commit = off` gets `on` for our sessions (stronger settings are left alone).
const DURABLE_COMMITS: &str = "DO $$ BEGIN
    IF current_setting('synchronous_commit') = 'off' THEN
        PERFORM set_config('synchronous_commit', 'on', false);
    END IF;
END $$";

/// Key of the advisory lock that serialises migrations (any constant other programs do not use).
const MIGRATION_LOCK: i64 = 0x7472_7574_6874_6162; // "truthtab"

/// The records of a batch; of ids repeated in a batch the first is stored, and an erased
/// capture's id (a tombstone's) is not stored again. `model` stays NULL: the digest, written
/// behind ingest, names the model.
const INSERT: &str = "
WITH amended AS (
    INSERT INTO capture_amendments (id, record)
    SELECT a.id, a.record FROM unnest($1::text[], $8::text[], $9::bool[]) AS a(id, record, amends)
    WHERE a.amends AND NOT EXISTS (SELECT 1 FROM tombstones t WHERE t.id = a.id)
    ON CONFLICT (id) DO NOTHING
)
INSERT INTO captures (id, started_at, method, path, status, outcome, duration_ms, record, leaf)
SELECT id, started_at, method, path, status, outcome, duration_ms, record, leaf
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int4[], $6::text[],
            $7::float8[], $8::text[], $10::bytea[])
     WITH ORDINALITY AS b(id, started_at, method, path, status, outcome, duration_ms, record, leaf,
                          n)
WHERE NOT EXISTS (SELECT 1 FROM tombstones t WHERE t.id = b.id)
ORDER BY n
ON CONFLICT (id) DO NOTHING
RETURNING seq, id";

/// Digests written over older ones (or none), never over a newer derivation's, in one
/// statement; only for records that exist (looked up by key: a join let the planner hash the
/// whole table, a cost that grew with it), and share-locked: a record being erased is waited for
/// and then skipped, so its digest cannot outlive the erasure.
const PUT_DIGESTS: &str = "
INSERT INTO capture_digests (seq, version, started_us, outcome, status, protocol, model, question,
                             answer, body_truncated, stream_complete, problems, search, ttft_us,
                             duration_us)
SELECT DISTINCT ON (b.seq) b.seq, b.version, b.started_us, b.outcome, b.status, b.protocol,
       b.model, b.question, b.answer, b.truncated, b.complete, b.problems,
       array_to_tsvector(string_to_array(b.words, ' ')), b.ttft_us, b.duration_us
FROM unnest($1::int8[], $2::int4[], $3::int8[], $4::text[], $5::int4[], $6::text[], $7::text[],
            $8::text[], $9::text[], $10::bool[], $11::bool[], $12::int4[], $13::text[],
            $14::int8[], $15::int8[])
     AS b(seq, version, started_us, outcome, status, protocol, model, question, answer,
          truncated, complete, problems, words, ttft_us, duration_us)
WHERE b.seq IN (SELECT seq FROM captures WHERE seq = ANY($1::int8[]) FOR SHARE)
ORDER BY b.seq
ON CONFLICT (seq) DO UPDATE SET
    version = EXCLUDED.version, started_us = EXCLUDED.started_us, outcome = EXCLUDED.outcome,
    status = EXCLUDED.status, protocol = EXCLUDED.protocol, model = EXCLUDED.model,
    question = EXCLUDED.question, answer = EXCLUDED.answer,
    body_truncated = EXCLUDED.body_truncated, stream_complete = EXCLUDED.stream_complete,
    problems = EXCLUDED.problems, search = EXCLUDED.search, ttft_us = EXCLUDED.ttft_us,
    duration_us = EXCLUDED.duration_us
WHERE capture_digests.version < EXCLUDED.version";

/// The PostgreSQL store; cheap to share behind an `Arc`.
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    display: String,
    health: HealthTracker,
    /// The schema is known to be at the latest version.
    ready: AtomicBool,
    monitor: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Tombstones as their statistics last counted them (`-1`: not read yet), and how many
    /// this collector added since ([`PgStore::keep_tombstone_stats`]).
    tombstones_counted: AtomicI64,
    tombstones_added: AtomicI64,
}

impl PgStore {
    /// The entry and log index that `sql` (selecting them for `$1`) finds for `id`.
    async fn entry_at(&self, sql: &str, id: String) -> Result<Option<LogEntry>, StoreError> {
        let row = self
            .with_client(async |client| client.query_opt(sql, &[&id]).await)
            .await?;
        Ok(row.map(|r| LogEntry {
            raw: r.get(0),
            index: r
                .get::<_, Option<i64>>(1)
                .and_then(|i| u64::try_from(i).ok()),
        }))
    }

    /// Up to `limit` rows committed after `after`, in commit order, with their cursors: columns
    /// 0 and 1 are the cursor's, then `columns`.
    async fn walk_after(
        &self,
        after: Cursor,
        limit: u32,
        columns: &str,
    ) -> Result<Vec<(Cursor, tokio_postgres::Row)>, StoreError> {
        let tx = after.tx.to_string();
        let limit = i64::from(limit);
        // Rows of transactions older than the oldest one still running are final: no row can
        // join them later, so (tx, seq) order among them is the commit order a reader can trust.
        // The ORDER BY names the table's column (`c.tx`): a bare `tx` would be the output column
        // `tx::text`, ordering 999 after 1000 — a page across such a boundary moved the cursor
        // past records it had not returned — and sorting every row after the cursor besides.
        let sql = format!(
            "SELECT c.tx::text, c.seq, {columns} FROM captures c
             WHERE (c.tx, c.seq) > ($1::text::xid8, $2)
               AND c.tx < pg_snapshot_xmin(pg_current_snapshot())
             ORDER BY c.tx, c.seq LIMIT $3"
        );
        let rows = self
            .with_client(async |client| {
                let stmt = client.prepare_cached(&sql).await?;
                client.query(&stmt, &[&tx, &after.seq, &limit]).await
            })
            .await?;
        rows.into_iter()
            .map(|row| {
                let tx: String = row.get(0);
                let seq: i64 = row.get(1);
                let tx = tx.parse().map_err(|_| {
                    StoreError::Postgres(format!("transaction id {tx:?} is not a number"))
                })?;
                Ok((Cursor { tx, seq }, row))
            })
            .collect()
    }

    /// Connects to the database `url` names and prepares its schema. Errors that retrying cannot
    /// cure (a bad URL, wrong credentials, a missing database, a refused certificate) fail here;
    /// a server that does not answer yet does not: the store starts unavailable and a
    /// background task connects as soon as it can.
    pub async fn open(
        url: &str,
        passwords: &PasswordSources,
        pool_size: usize,
    ) -> Result<PgStore, StoreError> {
        let target = connect::target(url, passwords)?;
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match target.tls {
            None => Manager::from_config(target.config, NoTls, manager_config),
            Some(tls) => Manager::from_config(
                target.config,
                tokio_postgres_rustls::MakeRustlsConnect::new(tls),
                manager_config,
            ),
        };
        let pool = Pool::builder(manager)
            .max_size(pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(connect::CONNECT_TIMEOUT + Duration::from_secs(1)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .post_create(Hook::async_fn(|client, _| {
                Box::pin(async move {
                    client
                        .batch_execute(DURABLE_COMMITS)
                        .await
                        .map_err(HookError::Backend)
                })
            }))
            .build()
            .map_err(|e| StoreError::Config(format!("{}: {e}", target.display)))?;
        let inner = Arc::new(Inner {
            pool,
            display: target.display,
            health: HealthTracker::new("postgres", Health::Up),
            ready: AtomicBool::new(false),
            monitor: Mutex::new(None),
            tombstones_counted: AtomicI64::new(-1),
            tombstones_added: AtomicI64::new(0),
        });
        match inner.prepare().await {
            Ok(()) => inner.ready.store(true, Ordering::SeqCst),
            Err(Failure::Permanent(cause)) => {
                return Err(StoreError::Config(format!("{}: {cause}", inner.display)))
            }
            Err(Failure::Transient(cause)) => inner.health.down(&cause),
        }
        let monitor = tokio::spawn(Arc::clone(&inner).monitor());
        *inner.monitor.lock().unwrap_or_else(|p| p.into_inner()) = Some(monitor);
        Ok(PgStore { inner })
    }

    /// The database as the logs show it (no password).
    pub fn describe(&self) -> &str {
        &self.inner.display
    }

    /// Runs `op` on a pooled connection, within [`OPERATION_TIMEOUT`], and records in the health
    /// state whether the server answered.
    async fn with_client<T>(
        &self,
        op: impl AsyncFnOnce(&mut deadpool_postgres::Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, StoreError> {
        let inner = &self.inner;
        if inner.pool.is_closed() {
            return Err(StoreError::Closed);
        }
        if !inner.ready.load(Ordering::SeqCst) {
            let why = match inner.health.get() {
                Health::Down(cause) => cause,
                Health::Up => "the schema is being prepared".to_owned(),
            };
            return Err(StoreError::Unavailable(why));
        }
        let run = async {
            let mut client = inner.pool.get().await.map_err(|e| pool_failure(&e))?;
            op(&mut client).await.map_err(|e| classify(&e))
        };
        match tokio::time::timeout(OPERATION_TIMEOUT, run).await {
            Ok(Ok(value)) => {
                inner.health.up();
                Ok(value)
            }
            Ok(Err(Failure::Transient(cause))) => {
                inner.health.down(&cause);
                Err(StoreError::Unavailable(cause))
            }
            Ok(Err(Failure::Permanent(cause))) => Err(StoreError::Postgres(cause)),
            Err(_) => {
                let cause = format!(
                    "no answer from the database within {} s",
                    OPERATION_TIMEOUT.as_secs()
                );
                inner.health.down(&cause);
                Err(StoreError::Unavailable(cause))
            }
        }
    }
}

/// A connection the pool could not hand out means the server is unavailable to us, whatever the
/// reason (even wrong credentials after a password rotation): 503, and the cause in the health.
fn pool_failure(e: &PoolError) -> Failure {
    Failure::Transient(match e {
        PoolError::Backend(e) => classify(e).cause().to_owned(),
        PoolError::Timeout(_) => format!(
            "no database connection free or opened within {} s",
            POOL_WAIT.as_secs()
        ),
        other => other.to_string(),
    })
}

impl Inner {
    /// Checks the server and brings the schema up to date.
    async fn prepare(&self) -> Result<(), Failure> {
        let mut client = self.pool.get().await.map_err(|e| match e {
            PoolError::Backend(e) => classify(&e),
            other => pool_failure(&other),
        })?;
        let setting = |row: &tokio_postgres::Row| row.get::<_, String>(0);
        let version: i32 = client
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .await
            .map_err(|e| classify(&e))?
            .get(0);
        if version < 130_000 {
            return Err(Failure::Permanent(format!(
                "PostgreSQL 13 or later is needed (the server is {version})"
            )));
        }
        let encoding = client
            .query_one("SHOW server_encoding", &[])
            .await
            .map(|r| setting(&r))
            .map_err(|e| classify(&e))?;
        if !matches!(encoding.as_str(), "UTF8" | "SQL_ASCII") {
            return Err(Failure::Permanent(format!(
                "the database's encoding is {encoding}; records are kept byte for byte only in a UTF8 database (CREATE DATABASE … ENCODING 'UTF8')"
            )));
        }
        let tx = client.transaction().await.map_err(|e| classify(&e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(|e| classify(&e))?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS truthtable_schema (
                 version    integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await
        .map_err(|e| classify(&e))?;
        let applied: i32 = tx
            .query_one(
                "SELECT coalesce(max(version), 0) FROM truthtable_schema",
                &[],
            )
            .await
            .map_err(|e| classify(&e))?
            .get(0);
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied.max(0) as usize) {
            let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
            tx.batch_execute(sql).await.map_err(|e| {
                Failure::Permanent(format!(
                    "schema migration {version}: {}",
                    classify(&e).cause()
                ))
            })?;
            tx.execute(
                "INSERT INTO truthtable_schema (version) VALUES ($1)",
                &[&version],
            )
            .await
            .map_err(|e| classify(&e))?;
            tracing::info!(store = "postgres", "schema migration {version} applied");
        }
        if applied > MIGRATIONS.len() as i32 {
            return Err(Failure::Permanent(format!(
                "the database's schema is version {applied}, newer than this collector knows ({}); run a newer collector",
                MIGRATIONS.len()
            )));
        }
        tx.commit().await.map_err(|e| classify(&e))?;
        Ok(())
    }

    /// Prepares the schema if that could not be done at start, then checks the server every few
    /// seconds, so `/healthz` follows it with or without traffic.
    async fn monitor(self: Arc<Self>) {
        loop {
            let wait = if self.ready.load(Ordering::SeqCst) {
                let probe = async {
                    let client = self.pool.get().await.map_err(|e| pool_failure(&e))?;
                    client
                        .simple_query("SELECT 1")
                        .await
                        .map_err(|e| classify(&e))
                };
                match tokio::time::timeout(OPERATION_TIMEOUT, probe).await {
                    Ok(Ok(_)) => self.health.up(),
                    Ok(Err(f)) => self.health.down(f.cause()),
                    Err(_) => self.health.down("no answer to the health probe"),
                }
                PROBE_EVERY
            } else {
                match self.prepare().await {
                    Ok(()) => {
                        self.ready.store(true, Ordering::SeqCst);
                        self.health.up();
                    }
                    Err(f) => self.health.down(f.cause()),
                }
                RETRY_EVERY
            };
            let wait = if self.health.get().is_up() {
                wait
            } else {
                RETRY_EVERY
            };
            tokio::time::sleep(wait).await;
        }
    }
}

fn summary(row: &tokio_postgres::Row) -> CaptureSummary {
    CaptureSummary {
        seq: row.get(0),
        id: row.get(1),
        started_at: row.get(2),
        method: row.get(3),
        path: row.get(4),
        status: row
            .get::<_, Option<i32>>(5)
            .and_then(|s| u16::try_from(s).ok()),
        outcome: row.get(6),
        duration_ms: row.get(7),
        model: row.get(8),
        protocol: row.get(9),
        question: row.get(10),
        answer: row.get(11),
        body_truncated: row.get(12),
        stream_complete: row.get(13),
        problems: row
            .get::<_, Option<i32>>(14)
            .and_then(|p| u32::try_from(p).ok()),
        ttft_ms: row.get::<_, Option<i64>>(15).map(|us| us as f64 / 1000.0),
        keys: (row.get(15), row.get(16)),
        verdict_count: u32::try_from(row.get::<_, i64>(17)).unwrap_or(u32::MAX),
        flagged: row.get::<_, Option<i32>>(18).map(|f| f > 0),
        lowest_score: row.get(19),
    }
}

const NO_INT: Option<i32> = None;

fn int4(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

impl CaptureStore for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn insert_batch(&self, batch: Vec<NewCapture>) -> Result<BatchOutcome, StoreError> {
        let column = |f: fn(&NewCapture) -> &str| batch.iter().map(f).collect::<Vec<&str>>();
        let ids = column(|c| &c.id);
        let started = column(|c| &c.started_at);
        let methods = column(|c| &c.method);
        let paths = column(|c| &c.path);
        let outcomes = column(|c| &c.outcome);
        let raws = column(|c| &c.raw);
        let statuses: Vec<Option<i32>> = batch.iter().map(|c| c.status.map(i32::from)).collect();
        let durations: Vec<f64> = batch.iter().map(|c| c.duration_ms).collect();
        let amends: Vec<bool> = batch
            .iter()
            .map(|c| crate::record::is_amendment(&c.raw))
            .collect();
        let leaves: Vec<Vec<u8>> = batch
            .iter()
            .map(|c| crate::log::tree::leaf_hash(c.raw.as_bytes()).0.to_vec())
            .collect();
        let rows = self
            .with_client(async |client| {
                let stmt = client.prepare_cached(INSERT).await?;
                client
                    .query(
                        &stmt,
                        &[
                            &ids, &started, &methods, &paths, &statuses, &outcomes, &durations,
                            &raws, &amends, &leaves,
                        ],
                    )
                    .await
            })
            .await?;
        // RETURNING comes in no promised order: each stored id is the first of its repeats.
        let mut first = std::collections::HashMap::with_capacity(batch.len());
        for (i, id) in ids.iter().enumerate() {
            first.entry(*id).or_insert(i);
        }
        let mut new: Vec<(usize, i64)> = rows
            .iter()
            .filter_map(|r| Some((*first.get(r.get::<_, &str>(1))?, r.get(0))))
            .collect();
        new.sort_unstable();
        let stored = new.len() as u64;
        Ok(BatchOutcome {
            stored,
            duplicates: (batch.len() as u64).saturating_sub(stored),
            new,
        })
    }

    async fn amendments(&self, id: String) -> Result<Vec<String>, StoreError> {
        self.with_client(async |client| {
            let stmt = client
                .prepare_cached("SELECT record FROM capture_amendments WHERE id = $1 ORDER BY seq")
                .await?;
            let rows = client.query(&stmt, &[&id]).await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
        .await
    }

    async fn get(&self, id: String) -> Result<Option<String>, StoreError> {
        self.with_client(async |client| {
            let stmt = client
                .prepare_cached("SELECT record FROM captures WHERE id = $1")
                .await?;
            Ok(client.query_opt(&stmt, &[&id]).await?.map(|r| r.get(0)))
        })
        .await
    }

    async fn list(&self, query: ListQuery) -> Result<Vec<CaptureSummary>, StoreError> {
        let (sql, values) = list_sql(&query, &DIALECT);
        // Integers are bigint or integer depending on the column; text binds as text. The
        // statement's parameter types say which, so each value is converted to fit.
        let mut rows: Vec<CaptureSummary> = self
            .with_client(async |client| {
                // Prepared afresh, so it is planned for these values (how rare a search word
                // is decides between the word index and walking `seq`), never a generic plan.
                let stmt = client.prepare(&sql).await?;
                let ints32: Vec<Option<i32>> = values
                    .iter()
                    .map(|v| match v {
                        SqlValue::Int(i) => i32::try_from(*i).ok(),
                        SqlValue::Text(_) => None,
                    })
                    .collect();
                let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = Vec::new();
                for (i, (v, ty)) in values.iter().zip(stmt.params()).enumerate() {
                    match v {
                        SqlValue::Text(t) => params.push(t),
                        SqlValue::Int(_) if *ty == tokio_postgres::types::Type::INT4 => {
                            params.push(ints32.get(i).unwrap_or(&NO_INT))
                        }
                        SqlValue::Int(n) => params.push(n),
                    }
                }
                Ok(client
                    .query(&stmt, &params)
                    .await?
                    .iter()
                    .map(summary)
                    .collect())
            })
            .await?;
        if matches!(query.page, Page::After(_)) {
            rows.reverse();
        }
        Ok(rows)
    }

    async fn models(&self) -> Result<Vec<String>, StoreError> {
        self.with_client(async |client| {
            let stmt = client.prepare_cached(MODELS_SQL).await?;
            Ok(client
                .query(&stmt, &[])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect())
        })
        .await
    }

    async fn stale_digests(
        &self,
        after: i64,
        version: i32,
        limit: u32,
    ) -> Result<Vec<StaleDigest>, StoreError> {
        let limit = i64::from(limit);
        self.with_client(async |client| {
            let stmt = client
                .prepare_cached(
                    "SELECT c.seq, c.record FROM captures c
                     LEFT JOIN capture_digests d ON d.seq = c.seq
                     WHERE c.seq > $1 AND (d.seq IS NULL OR d.version < $2)
                     ORDER BY c.seq LIMIT $3",
                )
                .await?;
            Ok(client
                .query(&stmt, &[&after, &version, &limit])
                .await?
                .iter()
                .map(|r| StaleDigest {
                    seq: r.get(0),
                    raw: r.get(1),
                })
                .collect())
        })
        .await
    }

    async fn put_digests(&self, digests: Vec<(i64, Digest)>) -> Result<u64, StoreError> {
        let seqs: Vec<i64> = digests.iter().map(|(s, _)| *s).collect();
        let d: Vec<&Digest> = digests.iter().map(|(_, d)| d).collect();
        let versions: Vec<i32> = d.iter().map(|d| d.version).collect();
        let started: Vec<Option<i64>> = d.iter().map(|d| d.started_us).collect();
        let outcomes: Vec<&str> = d.iter().map(|d| d.outcome.as_str()).collect();
        let statuses: Vec<Option<i32>> = d.iter().map(|d| d.status.map(i32::from)).collect();
        let protocols: Vec<&str> = d.iter().map(|d| d.protocol.as_str()).collect();
        let models: Vec<Option<&str>> = d.iter().map(|d| d.model.as_deref()).collect();
        let questions: Vec<Option<&str>> = d.iter().map(|d| d.question.as_deref()).collect();
        let answers: Vec<Option<&str>> = d.iter().map(|d| d.answer.as_deref()).collect();
        let truncated: Vec<bool> = d.iter().map(|d| d.body_truncated).collect();
        let complete: Vec<Option<bool>> = d.iter().map(|d| d.stream_complete).collect();
        let problems: Vec<i32> = d.iter().map(|d| int4(d.problems)).collect();
        let words: Vec<&str> = d.iter().map(|d| d.words.as_str()).collect();
        let ttft: Vec<Option<i64>> = d.iter().map(|d| d.ttft_us).collect();
        let duration: Vec<Option<i64>> = d.iter().map(|d| d.duration_us).collect();
        self.with_client(async |client| {
            let stmt = client.prepare_cached(PUT_DIGESTS).await?;
            client
                .execute(
                    &stmt,
                    &[
                        &seqs, &versions, &started, &outcomes, &statuses, &protocols, &models,
                        &questions, &answers, &truncated, &complete, &problems, &words, &ttft,
                        &duration,
                    ],
                )
                .await
        })
        .await
    }

    async fn read_after(
        &self,
        after: Cursor,
        limit: u32,
    ) -> Result<Vec<StoredCapture>, StoreError> {
        let rows = self.walk_after(after, limit, "c.id, c.record").await?;
        Ok(rows
            .into_iter()
            .map(|(cursor, row)| StoredCapture {
                cursor,
                seq: cursor.seq,
                id: row.get(2),
                raw: row.get(3),
            })
            .collect())
    }

    async fn claim_cursor(
        &self,
        name: String,
        holder: String,
        lease: Duration,
    ) -> Result<Option<Cursor>, StoreError> {
        let lease_ms = super::lease_ms(lease);
        // One statement: a new name is inserted already held; an existing one is taken only
        // from its holder itself, from nobody, or from a holder whose lease ran out.
        let cursor: Option<String> = self
            .with_client(async |client| {
                let stmt = client
                    .prepare_cached(
                        "INSERT INTO export_cursors AS c (name, holder, lease_until)
                         VALUES ($1, $2, clock_timestamp() + $3::int8 * interval '1 millisecond')
                         ON CONFLICT (name) DO UPDATE
                         SET holder = excluded.holder, lease_until = excluded.lease_until
                         WHERE c.holder = excluded.holder OR c.holder IS NULL
                            OR c.lease_until < clock_timestamp()
                         RETURNING c.cursor",
                    )
                    .await?;
                Ok(client
                    .query_opt(&stmt, &[&name, &holder, &lease_ms])
                    .await?
                    .map(|r| r.get(0)))
            })
            .await?;
        cursor
            .map(|c| {
                c.parse()
                    .map_err(|e| StoreError::Postgres(format!("export_cursors holds {e}")))
            })
            .transpose()
    }

    async fn save_cursor(
        &self,
        name: String,
        holder: String,
        cursor: Cursor,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let lease_ms = super::lease_ms(lease);
        let cursor = cursor.to_string();
        let n = self
            .with_client(async |client| {
                let stmt = client
                    .prepare_cached(
                        "UPDATE export_cursors
                         SET cursor = $3, lease_until = clock_timestamp() + $4::int8 * interval '1 millisecond'
                         WHERE name = $1 AND holder = $2",
                    )
                    .await?;
                client
                    .execute(&stmt, &[&name, &holder, &cursor, &lease_ms])
                    .await
            })
            .await?;
        Ok(n == 1)
    }

    async fn release_cursor(&self, name: String, holder: String) -> Result<(), StoreError> {
        self.with_client(async |client| {
            client
                .execute(
                    "UPDATE export_cursors SET holder = NULL, lease_until = '-infinity'
                     WHERE name = $1 AND holder = $2",
                    &[&name, &holder],
                )
                .await
        })
        .await?;
        Ok(())
    }

    async fn add_verdict(&self, v: NewVerdict) -> Result<(), StoreError> {
        self.with_client(async |client| {
            let tx = client.transaction().await?;
            let row = tx
                .query_opt(
                    "INSERT INTO capture_verdicts
                     (capture_seq, capture_id, engine, status, score, hallucination, received_at, annotate)
                     SELECT $1, $2, $3, $4, $5, $6, $7, $8
                     WHERE EXISTS (SELECT 1 FROM captures WHERE seq = $1 FOR SHARE)
                     RETURNING seq",
                    &[
                        &v.capture_seq,
                        &v.capture_id,
                        &v.engine,
                        &v.status,
                        &v.score,
                        &v.hallucination,
                        &v.received_at,
                        &v.annotate,
                    ],
                )
                .await?;
            if let Some(row) = row {
                let seq: i64 = row.get(0);
                tx.execute(
                    "WITH event AS (INSERT INTO log_events (id, kind, entry) VALUES ($1, $2, $3)
                                    RETURNING seq)
                     UPDATE capture_verdicts SET event_seq = (SELECT seq FROM event) WHERE seq = $4",
                    &[&format!("{VERDICT_PREFIX}{seq}"), &VERDICT_KIND, &v.verdict, &seq],
                )
                .await?;
            }
            tx.commit().await
        })
        .await?;
        Ok(())
    }

    async fn capture_seq(&self, id: String) -> Result<Option<i64>, StoreError> {
        self.with_client(async |client| {
            let stmt = client
                .prepare_cached("SELECT seq FROM captures WHERE id = $1")
                .await?;
            Ok(client.query_opt(&stmt, &[&id]).await?.map(|r| r.get(0)))
        })
        .await
    }

    async fn verdicts(&self, id: String) -> Result<Vec<StoredVerdict>, StoreError> {
        self.with_client(async |client| {
            let stmt = client
                .prepare_cached(
                    "SELECT v.entry, v.id, e.idx FROM capture_verdicts cv
                     JOIN log_events v ON v.seq = cv.event_seq
                     LEFT JOIN log_entries e ON e.seq = -v.seq
                     WHERE cv.capture_id = $1 ORDER BY cv.seq",
                )
                .await?;
            Ok(client
                .query(&stmt, &[&id])
                .await?
                .iter()
                .map(|r| StoredVerdict {
                    json: r.get(0),
                    event: r.get(1),
                    log_index: r
                        .get::<_, Option<i64>>(2)
                        .and_then(|i| u64::try_from(i).ok()),
                })
                .collect())
        })
        .await
    }

    async fn to_annotate(&self, limit: u32) -> Result<Vec<PendingAnnotation>, StoreError> {
        let limit = i64::from(limit);
        let rows = self
            .with_client(async |client| {
                client
                    .query(
                        "SELECT cv.seq, cv.capture_id, v.entry FROM capture_verdicts cv
                         JOIN log_events v ON v.seq = cv.event_seq
                         WHERE cv.annotate ORDER BY cv.seq LIMIT $1",
                        &[&limit],
                    )
                    .await
            })
            .await?;
        Ok(rows
            .iter()
            .map(|r| PendingAnnotation {
                row: r.get(0),
                capture_id: r.get(1),
                verdict: r.get(2),
            })
            .collect())
    }

    async fn annotated(&self, rows: Vec<i64>) -> Result<(), StoreError> {
        self.with_client(async |client| {
            client
                .execute(
                    "UPDATE capture_verdicts SET annotate = false WHERE seq = ANY($1)",
                    &[&rows],
                )
                .await
        })
        .await?;
        Ok(())
    }

    async fn judged(&self, engine: String, ids: Vec<String>) -> Result<Vec<String>, StoreError> {
        self.with_client(async |client| {
            let stmt = client
                .prepare_cached(
                    "SELECT DISTINCT capture_id FROM capture_verdicts
                     WHERE engine = $1 AND capture_id = ANY($2::text[])",
                )
                .await?;
            Ok(client
                .query(&stmt, &[&engine, &ids])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect())
        })
        .await
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let row = self
            .with_client(async |client| {
                client
                    .query_one(
                        "SELECT count(*), pg_total_relation_size('captures') FROM captures",
                        &[],
                    )
                    .await
            })
            .await?;
        let records: i64 = row.get(0);
        let bytes: i64 = row.get(1);
        Ok(StoreStats {
            records: u64::try_from(records).unwrap_or_default(),
            bytes: u64::try_from(bytes).unwrap_or_default(),
        })
    }

    fn health(&self) -> Health {
        self.inner.health.get()
    }

    /// Stops the background task and closes the pool; operations in progress keep their
    /// connections until they finish.
    async fn close(&self) -> Result<(), StoreError> {
        if let Some(monitor) = self
            .inner
            .monitor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            monitor.abort();
        }
        self.inner.pool.close();
        Ok(())
    }
}

/// A log append in one statement (one transaction): the state moves only from the size the
/// sequencer read — a racing sequencer waits for the row, then finds another size and writes
/// nothing — and the entries and hashes are written only when it moved.
const LOG_APPEND: &str = "
WITH moved AS (
    UPDATE log_state SET size = $1, cursor = $2 WHERE one = 1 AND size = $3 RETURNING size
), entries AS (
    INSERT INTO log_entries (idx, seq, id)
    SELECT * FROM unnest($4::int8[], $5::int8[], $6::text[]) WHERE EXISTS (SELECT 1 FROM moved)
), hashes AS (
    INSERT INTO log_hash_tiles AS t (tile, hashes)
    SELECT * FROM unnest($7::int8[], $8::bytea[]) WHERE EXISTS (SELECT 1 FROM moved)
    ON CONFLICT (tile) DO UPDATE SET hashes = t.hashes || excluded.hashes
)
SELECT count(*) FROM moved";

impl LogStore for PgStore {
    async fn log_state(&self) -> Result<LogState, StoreError> {
        let row = self
            .with_client(async |client| {
                client
                    .query_one(
                        "SELECT size, cursor, verifier_key FROM log_state WHERE one = 1",
                        &[],
                    )
                    .await
            })
            .await?;
        let cursor: String = row.get(1);
        Ok(LogState {
            size: u64::try_from(row.get::<_, i64>(0)).unwrap_or_default(),
            cursor: cursor
                .parse()
                .map_err(|e| StoreError::Postgres(format!("log_state holds {e}")))?,
            verifier_key: row.get(2),
        })
    }

    async fn log_hashes(&self, indexes: Vec<u64>) -> Result<Hashes, StoreError> {
        let mut wanted: Vec<i64> = indexes.iter().map(|i| db_int(i / 64)).collect();
        wanted.sort_unstable();
        wanted.dedup();
        let rows = self
            .with_client(async |client| {
                let stmt = client
                    .prepare_cached("SELECT tile, hashes FROM log_hash_tiles WHERE tile = ANY($1)")
                    .await?;
                client.query(&stmt, &[&wanted]).await
            })
            .await?;
        let tiles: std::collections::HashMap<i64, &[u8]> =
            rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let mut out = Hashes::default();
        for i in indexes {
            let at = (i % 64) as usize * 32;
            if let Some(hash) = tiles.get(&db_int(i / 64)).and_then(|b| b.get(at..at + 32)) {
                out.0.insert(i, hash_from(hash)?);
            }
        }
        Ok(out)
    }

    async fn log_append(
        &self,
        from: u64,
        cursor: Cursor,
        entries: Vec<(i64, String)>,
        hashes: Vec<(u64, Hash)>,
    ) -> Result<bool, StoreError> {
        let to = db_int(from + entries.len() as u64);
        let from_ = db_int(from);
        let cursor = cursor.to_string();
        let idxs: Vec<i64> = (from..).take(entries.len()).map(db_int).collect();
        let seqs: Vec<i64> = entries.iter().map(|e| e.0).collect();
        let ids: Vec<&str> = entries.iter().map(|e| e.1.as_str()).collect();
        let mut hashes = hashes;
        hashes.sort_unstable_by_key(|h| h.0);
        let mut hash_idxs: Vec<i64> = Vec::new();
        let mut hash_bytes: Vec<Vec<u8>> = Vec::new();
        for (idx, hash) in &hashes {
            let tile = db_int(idx / 64);
            if hash_idxs.last() != Some(&tile) {
                hash_idxs.push(tile);
                hash_bytes.push(Vec::with_capacity(64 * 32));
            }
            if let Some(b) = hash_bytes.last_mut() {
                b.extend_from_slice(&hash.0);
            }
        }
        let moved: i64 = self
            .with_client(async |client| {
                let stmt = client.prepare_cached(LOG_APPEND).await?;
                client
                    .query_one(
                        &stmt,
                        &[
                            &to,
                            &cursor,
                            &from_,
                            &idxs,
                            &seqs,
                            &ids,
                            &hash_idxs,
                            &hash_bytes,
                        ],
                    )
                    .await
                    .map(|r| r.get(0))
            })
            .await?;
        Ok(moved == 1)
    }

    async fn log_put_checkpoint(
        &self,
        size: u64,
        note: String,
        verifier_key: String,
    ) -> Result<(), StoreError> {
        let size = db_int(size);
        self.with_client(async |client| {
            client
                .execute(
                    "WITH stored AS (
                         INSERT INTO log_checkpoints (size, note) VALUES ($1, $2)
                         ON CONFLICT (size) DO NOTHING
                     )
                     UPDATE log_state SET verifier_key = $3
                     WHERE one = 1 AND verifier_key IS NULL",
                    &[&size, &note, &verifier_key],
                )
                .await
        })
        .await?;
        Ok(())
    }

    async fn log_checkpoint(&self, size: Option<u64>) -> Result<Option<(u64, String)>, StoreError> {
        let wanted = size.map(db_int);
        let row = self
            .with_client(async |client| match wanted {
                Some(n) => {
                    client
                        .query_opt(
                            "SELECT size, note FROM log_checkpoints WHERE size = $1",
                            &[&n],
                        )
                        .await
                }
                None => {
                    client
                        .query_opt(
                            "SELECT size, note FROM log_checkpoints ORDER BY size DESC LIMIT 1",
                            &[],
                        )
                        .await
                }
            })
            .await?;
        Ok(row.map(|r| {
            (
                u64::try_from(r.get::<_, i64>(0)).unwrap_or_default(),
                r.get(1),
            )
        }))
    }

    async fn log_checkpoints(&self) -> Result<Vec<(u64, String)>, StoreError> {
        let rows = self
            .with_client(async |client| {
                client
                    .query("SELECT size, note FROM log_checkpoints ORDER BY size", &[])
                    .await
            })
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    u64::try_from(r.get::<_, i64>(0)).unwrap_or_default(),
                    r.get(1),
                )
            })
            .collect())
    }

    async fn log_entry(&self, id: String) -> Result<Option<LogEntry>, StoreError> {
        self.entry_at(
            "SELECT c.record, e.idx FROM captures c
             LEFT JOIN log_entries e ON e.seq = c.seq WHERE c.id = $1",
            id,
        )
        .await
    }

    async fn log_event_entry(&self, id: String) -> Result<Option<LogEntry>, StoreError> {
        self.entry_at(
            "SELECT v.entry, e.idx FROM log_events v
             LEFT JOIN log_entries e ON e.seq = -v.seq WHERE v.id = $1",
            id,
        )
        .await
    }

    async fn log_records(&self, from: u64, limit: u32) -> Result<Vec<LoggedRecord>, StoreError> {
        let from = db_int(from);
        let limit = i64::from(limit);
        let rows = self
            .with_client(async |client| {
                client
                    .query(
                        "SELECT e.idx, e.id, coalesce(c.record, v.entry), t.erasure, cv.capture_id,
                                cv.engine, cv.status, cv.score, cv.hallucination
                         FROM log_entries e
                         LEFT JOIN captures c ON c.seq = e.seq
                         LEFT JOIN log_events v ON e.seq < 0 AND v.seq = -e.seq
                         LEFT JOIN tombstones t ON t.seq = e.seq
                         LEFT JOIN capture_verdicts cv ON e.seq < 0 AND cv.event_seq = -e.seq
                         WHERE e.idx >= $1 ORDER BY e.idx LIMIT $2",
                        &[&from, &limit],
                    )
                    .await
            })
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let id: String = r.get(1);
                let verdict_row = r.get::<_, Option<String>>(4).map(|capture_id| VerdictRow {
                    event: id.strip_prefix(EVENT_PREFIX).unwrap_or(&id).to_owned(),
                    capture_id,
                    engine: r.get(5),
                    status: r.get(6),
                    score: r.get(7),
                    hallucination: r.get(8),
                });
                LoggedRecord {
                    index: u64::try_from(r.get::<_, i64>(0)).unwrap_or_default(),
                    id,
                    raw: r.get(2),
                    erased_by: r.get(3),
                    verdict_row,
                }
            })
            .collect())
    }

    async fn log_pending(&self, after: Cursor, limit: u32) -> Result<Vec<Pending>, StoreError> {
        // The leaf hash kept at ingest; the record is read, and hashed, only where none was kept.
        let rows = self
            .walk_after(
                after,
                limit,
                "c.id, c.leaf, CASE WHEN octet_length(c.leaf) = 32 THEN NULL ELSE c.record END",
            )
            .await?;
        rows.into_iter()
            .map(|(cursor, row)| {
                let leaf = match row.get::<_, Option<&str>>(4) {
                    Some(record) => crate::log::tree::leaf_hash(record.as_bytes()),
                    None => hash_from(row.get::<_, &[u8]>(3))?,
                };
                Ok(Pending {
                    cursor,
                    seq: cursor.seq,
                    id: row.get(2),
                    leaf,
                })
            })
            .collect()
    }

    async fn log_logged(&self, seqs: Vec<i64>) -> Result<Vec<i64>, StoreError> {
        let rows = self
            .with_client(async |client| {
                client
                    .query("SELECT seq FROM log_entries WHERE seq = ANY($1)", &[&seqs])
                    .await
            })
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn log_unlogged(&self, limit: u32) -> Result<Vec<StoredCapture>, StoreError> {
        let limit = i64::from(limit);
        let rows = self
            .with_client(async |client| {
                client
                    .query(
                        "SELECT c.tx::text, c.seq, c.id, c.record FROM captures c
                         WHERE c.seq > coalesce((SELECT max(seq) FROM log_entries), 0) - 100000
                           AND NOT EXISTS (SELECT 1 FROM log_entries e WHERE e.seq = c.seq)
                           AND c.tx < pg_snapshot_xmin(pg_current_snapshot())
                         ORDER BY c.tx, c.seq LIMIT $1",
                        &[&limit],
                    )
                    .await
            })
            .await?;
        rows.iter()
            .map(|row| {
                let tx: String = row.get(0);
                Ok(StoredCapture {
                    cursor: Cursor {
                        tx: tx.parse().map_err(|_| {
                            StoreError::Postgres(format!("transaction id {tx:?} is not a number"))
                        })?,
                        seq: row.get(1),
                    },
                    seq: row.get(1),
                    id: row.get(2),
                    raw: row.get(3),
                })
            })
            .collect()
    }

    async fn log_missing(&self, cursor: Cursor) -> Result<Vec<(String, bool)>, StoreError> {
        let tx = cursor.tx.to_string();
        let rows = self
            .with_client(async |client| {
                client
                    .query(
                        "SELECT c.id, (c.tx, c.seq) <= ($1::text::xid8, $2) FROM captures c
                         WHERE NOT EXISTS (SELECT 1 FROM log_entries e WHERE e.seq = c.seq)
                         ORDER BY c.seq",
                        &[&tx, &cursor.seq],
                    )
                    .await
            })
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

/// Every table that holds a capture's content, and how to delete it for a step's captures, by
/// their `seq`s (`$1`, an array): erasure deletes through this list, one statement a table for
/// the whole step (a new table of derived content is one more line).
const CONTENT_TABLES: &[&str] = &[
    "DELETE FROM capture_digests WHERE seq = ANY($1)",
    "DELETE FROM log_events WHERE seq IN (SELECT event_seq FROM capture_verdicts WHERE capture_seq = ANY($1))",
    "DELETE FROM capture_verdicts WHERE capture_seq = ANY($1)",
    "DELETE FROM capture_amendments WHERE id IN (SELECT id FROM captures WHERE seq = ANY($1))",
    "DELETE FROM captures WHERE seq = ANY($1)",
];

const TOMBSTONE_COLUMNS: &str = "t.id, t.started_at, e.idx, t.leaf_hash, t.erased_at, t.reason,
     t.erasure, t.erased_by FROM tombstones t LEFT JOIN log_entries e ON e.seq = t.seq";

fn tombstone(r: &tokio_postgres::Row) -> Tombstone {
    tombstone_from(r, 0)
}

/// The tombstone in the row's [`TOMBSTONE_COLUMNS`] from column `at` on.
fn tombstone_from(r: &tokio_postgres::Row, at: usize) -> Tombstone {
    Tombstone {
        id: r.get(at),
        started_at: r.get(at + 1),
        log_index: r
            .get::<_, Option<i64>>(at + 2)
            .and_then(|i| u64::try_from(i).ok()),
        leaf_hash: r.get(at + 3),
        erased_at: r.get(at + 4),
        reason: r.get(at + 5),
        erasure: r.get(at + 6),
        by: r.get(at + 7),
    }
}

impl PgStore {
    /// Vacuums the tables erasure deletes from ([`CONTENT_TABLES`]), and with them their TOAST:
    /// the erased rows' space is free for new rows at once, not when autovacuum next gets to the
    /// table (by default after a fifth of it changed, which a few erasures in a large store
    /// never reach). `VACUUM` takes no lock that stops ingest or reads.
    pub async fn purge(&self) -> Result<(), StoreError> {
        self.with_client(async |client| {
            client
                .batch_execute(
                    "VACUUM captures, capture_digests, capture_verdicts, capture_amendments",
                )
                .await
        })
        .await
    }
}

impl PgStore {
    /// Analyzes `tombstones` once this collector's erasures (`erased` more now) have at least
    /// doubled it since its statistics were taken. Every batch of ingest looks its ids up there,
    /// by a plan PostgreSQL caches and keeps until those statistics change; planned while the
    /// table was empty, or never analyzed, it reads the whole table for each batch (or each
    /// record), and a store's first retention pass, growing the table from nothing by thousands
    /// a second, held ingest beside it to 0.72 and 0.69 of its rate in two runs, until
    /// autovacuum analyzed the table (BENCHMARKS.md, "Retention"). Doubling bounds the
    /// analyzes to a few for a first pass and to none for most later ones; `SKIP_LOCKED` leaves
    /// the table to an autovacuum already analyzing it.
    async fn keep_tombstone_stats(&self, erased: usize) -> Result<(), StoreError> {
        let inner = &self.inner;
        let added = inner
            .tombstones_added
            .fetch_add(erased as i64, Ordering::Relaxed)
            + erased as i64;
        let mut counted = inner.tombstones_counted.load(Ordering::Relaxed);
        if counted < 0 {
            let row = self
                .with_client(async |client| {
                    client
                        .query_one(
                            "SELECT greatest(reltuples, 0)::bigint FROM pg_class
                             WHERE oid = 'tombstones'::regclass",
                            &[],
                        )
                        .await
                })
                .await?;
            counted = row.get(0);
            inner.tombstones_counted.store(counted, Ordering::Relaxed);
        }
        if added < counted.max(1) {
            return Ok(());
        }
        inner.tombstones_added.fetch_sub(added, Ordering::Relaxed);
        inner
            .tombstones_counted
            .store(counted + added, Ordering::Relaxed);
        self.with_client(async |client| {
            client
                .batch_execute("ANALYZE (SKIP_LOCKED) tombstones")
                .await
        })
        .await
    }

    /// One erasure in one transaction: see [`EraseStore::erase`].
    async fn erase_step(&self, req: EraseRequest) -> Result<EraseOutcome, StoreError> {
        self.with_client(async |client| {
            let tx = client.transaction().await?;
            let mut out = EraseOutcome::default();
            let mut found: Vec<(i64, String, String, String)> = Vec::new();
            // The step's ids, each once, in the order asked; looked up (and locked) together.
            let mut seen = std::collections::HashSet::new();
            let ids: Vec<&String> = req.ids.iter().filter(|id| seen.insert(id.as_str())).collect();
            let mut stored: std::collections::HashMap<String, (i64, String, String)> = tx
                .query(
                    "SELECT id, seq, started_at, record FROM captures WHERE id = ANY($1)
                     ORDER BY seq FOR UPDATE",
                    &[&ids],
                )
                .await?
                .into_iter()
                .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
                .collect();
            let missing: Vec<&String> = ids
                .iter()
                .filter(|id| !stored.contains_key(id.as_str()))
                .copied()
                .collect();
            let erased: std::collections::HashSet<String> = if missing.is_empty() {
                Default::default()
            } else {
                tx.query("SELECT id FROM tombstones WHERE id = ANY($1)", &[&missing])
                    .await?
                    .into_iter()
                    .map(|r| r.get(0))
                    .collect()
            };
            for id in ids {
                match stored.remove(id.as_str()) {
                    Some((seq, started_at, record)) => {
                        found.push((seq, id.clone(), started_at, record))
                    }
                    None if erased.contains(id.as_str()) => out.already_erased.push(id.clone()),
                    None => out.unknown.push(id.clone()),
                }
            }
            out.erased = found.iter().map(|f| f.1.clone()).collect();
            if !found.is_empty() {
                let seqs: Vec<i64> = found.iter().map(|f| f.0).collect();
                let verdicts: Vec<String> = tx
                    .query(
                        "SELECT v.id FROM capture_verdicts cv JOIN log_events v ON v.seq = cv.event_seq
                         WHERE cv.capture_seq = ANY($1) ORDER BY cv.seq",
                        &[&seqs],
                    )
                    .await?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                tx.execute(
                    "INSERT INTO log_events (id, kind, entry) VALUES ($1, $2, $3)",
                    &[
                        &req.event,
                        &super::erase::ERASURE_KIND,
                        &super::erase::erasure_entry(&req, &out.erased, &verdicts),
                    ],
                )
                .await?;
                let (stone_ids, started, leaves): (Vec<&str>, Vec<&str>, Vec<String>) = found
                    .iter()
                    .map(|(_, id, started_at, record)| {
                        let leaf = crate::log::tree::leaf_hash(record.as_bytes());
                        (id.as_str(), started_at.as_str(), super::erase::hex(&leaf.0))
                    })
                    .fold(Default::default(), |(mut a, mut b, mut c), (x, y, z)| {
                        a.push(x);
                        b.push(y);
                        c.push(z);
                        (a, b, c)
                    });
                tx.execute(
                    "INSERT INTO tombstones
                     (seq, id, started_at, leaf_hash, erased_at, reason, erasure, erased_by)
                     SELECT seq, id, started_at, leaf_hash, $5, $6, $7, $8
                     FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[])
                          AS t (seq, id, started_at, leaf_hash)",
                    &[
                        &seqs,
                        &stone_ids,
                        &started,
                        &leaves,
                        &req.erased_at,
                        &req.reason,
                        &req.event,
                        &req.by,
                    ],
                )
                .await?;
                for sql in CONTENT_TABLES {
                    tx.execute(*sql, &[&seqs]).await?;
                }
            }
            if req.dry_run {
                tx.rollback().await?;
            } else {
                tx.commit().await?;
            }
            Ok(out)
        })
        .await
    }
}

impl EraseStore for PgStore {
    async fn erase(&self, req: EraseRequest) -> Result<EraseOutcome, StoreError> {
        let dry_run = req.dry_run;
        let out = self.erase_step(req).await?;
        if !dry_run && !out.erased.is_empty() {
            // The erasure is committed whatever this says.
            if let Err(e) = self.keep_tombstone_stats(out.erased.len()).await {
                tracing::warn!(error = %e, "could not analyze the tombstones after an erasure");
            }
        }
        Ok(out)
    }

    async fn tombstone(&self, id: String) -> Result<Option<Tombstone>, StoreError> {
        let row = self
            .with_client(async |client| {
                client
                    .query_opt(
                        &format!("SELECT {TOMBSTONE_COLUMNS} WHERE t.id = $1"),
                        &[&id],
                    )
                    .await
            })
            .await?;
        Ok(row.as_ref().map(tombstone))
    }

    async fn tombstones(&self, limit: u32) -> Result<Vec<Tombstone>, StoreError> {
        let limit = i64::from(limit);
        let rows = self
            .with_client(async |client| {
                client
                    .query(
                        &format!(
                            "SELECT {TOMBSTONE_COLUMNS} ORDER BY t.erased_at DESC, t.seq DESC LIMIT $1"
                        ),
                        &[&limit],
                    )
                    .await
            })
            .await?;
        Ok(rows.iter().map(tombstone).collect())
    }

    async fn tombstones_between(
        &self,
        above: Option<i64>,
        below: Option<i64>,
        oldest_first: bool,
        limit: u32,
    ) -> Result<Vec<(i64, Tombstone)>, StoreError> {
        let (above, below, limit) = (
            above.unwrap_or(0),
            below.unwrap_or(i64::MAX),
            i64::from(limit),
        );
        let order = if oldest_first { "ASC" } else { "DESC" };
        let rows = self
            .with_client(async |client| {
                client
                    .query(
                        &format!(
                            "SELECT t.seq, {TOMBSTONE_COLUMNS} WHERE t.seq > $1 AND t.seq < $2
                             ORDER BY t.seq {order} LIMIT $3"
                        ),
                        &[&above, &below, &limit],
                    )
                    .await
            })
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), tombstone_from(r, 1)))
            .collect())
    }

    async fn unlogged_events(&self, limit: u32) -> Result<Vec<PendingEvent>, StoreError> {
        let limit = i64::from(limit);
        let rows = self
            .with_client(async |client| {
                client
                    .query(
                        // Events commit out of `seq` order only by a little (one per verdict,
                        // erasure or hold, each in a short transaction): those after the latest
                        // logged one, and a window before it, are looked at, not every event.
                        "SELECT v.seq, v.id, v.entry FROM log_events v
                         WHERE v.seq > coalesce((SELECT -min(seq) FROM log_entries WHERE seq < 0), 0) - 10000
                           AND NOT EXISTS (SELECT 1 FROM log_entries e WHERE e.seq = -v.seq)
                         ORDER BY v.seq LIMIT $1",
                        &[&limit],
                    )
                    .await
            })
            .await?;
        Ok(rows
            .iter()
            .map(|r| PendingEvent {
                seq: r.get(0),
                log_id: format!("{EVENT_PREFIX}{}", r.get::<_, String>(1)),
                entry: r.get(2),
            })
            .collect())
    }

    async fn put_hold(&self, hold: Hold, entry: String) -> Result<(), StoreError> {
        let ids = hold.ids.map(|i| serde_json::Value::from(i).to_string());
        let filters = hold.filters.map(|f| f.to_string());
        self.with_client(async |client| {
            let tx = client.transaction().await?;
            tx.execute(
                "INSERT INTO holds (id, reason, placed_at, ids, filters) VALUES ($1, $2, $3, $4, $5)",
                &[&hold.id, &hold.reason, &hold.placed_at, &ids, &filters],
            )
            .await?;
            tx.execute(
                "INSERT INTO log_events (id, kind, entry) VALUES ($1, $2, $3)",
                &[&hold.id, &super::erase::HOLD_KIND, &entry],
            )
            .await?;
            tx.commit().await
        })
        .await
    }

    async fn lift_hold(&self, id: String, at: String, entry: String) -> Result<bool, StoreError> {
        let event = format!("{id}/lifted");
        self.with_client(async |client| {
            let tx = client.transaction().await?;
            let n = tx
                .execute(
                    "UPDATE holds SET lifted_at = $2 WHERE id = $1 AND lifted_at IS NULL",
                    &[&id, &at],
                )
                .await?;
            if n == 1 {
                tx.execute(
                    "INSERT INTO log_events (id, kind, entry) VALUES ($1, $2, $3)",
                    &[&event, &super::erase::HOLD_LIFTED_KIND, &entry],
                )
                .await?;
                tx.commit().await?;
            }
            Ok(n == 1)
        })
        .await
    }

    async fn holds(&self) -> Result<Vec<Hold>, StoreError> {
        let rows = self
            .with_client(async |client| {
                client
                    .query(
                        "SELECT id, reason, placed_at, ids, filters, lifted_at FROM holds
                         ORDER BY placed_at DESC, id",
                        &[],
                    )
                    .await
            })
            .await?;
        let json = |t: Option<String>| {
            t.map(|t| serde_json::from_str::<serde_json::Value>(&t))
                .transpose()
                .map_err(|e| StoreError::Postgres(format!("a stored hold is not valid JSON: {e}")))
        };
        rows.iter()
            .map(|r| {
                Ok(Hold {
                    id: r.get(0),
                    reason: r.get(1),
                    placed_at: r.get(2),
                    ids: json(r.get(3))?
                        .map(serde_json::from_value)
                        .transpose()
                        .map_err(|e| StoreError::Postgres(format!("a stored hold's ids: {e}")))?,
                    filters: json(r.get(4))?,
                    lifted_at: r.get(5),
                })
            })
            .collect()
    }

    async fn started_before(
        &self,
        before_us: i64,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let limit = i64::from(limit);
        let rows = self
            .with_client(async |client| {
                client
                    .query(
                        "SELECT d.seq, c.id FROM capture_digests d JOIN captures c ON c.seq = d.seq
                         WHERE d.seq > $1 AND d.started_us < $2 ORDER BY d.seq LIMIT $3",
                        &[&after_seq, &before_us, &limit],
                    )
                    .await
            })
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn count_started_before(&self, before_us: i64) -> Result<u64, StoreError> {
        let row = self
            .with_client(async |client| {
                client
                    .query_one(
                        "SELECT count(*) FROM capture_digests WHERE started_us < $1",
                        &[&before_us],
                    )
                    .await
            })
            .await?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or_default())
    }

    async fn erase_counts(&self) -> Result<EraseCounts, StoreError> {
        let row = self
            .with_client(async |client| {
                client
                    .query_one(
                        "SELECT (SELECT count(*) FROM tombstones),
                                (SELECT count(*) FROM holds WHERE lifted_at IS NULL),
                                (SELECT count(*) FROM log_events)",
                        &[],
                    )
                    .await
            })
            .await?;
        Ok(EraseCounts {
            erased: u64::try_from(row.get::<_, i64>(0)).unwrap_or_default(),
            holds: u64::try_from(row.get::<_, i64>(1)).unwrap_or_default(),
            events: u64::try_from(row.get::<_, i64>(2)).unwrap_or_default(),
        })
    }
}
