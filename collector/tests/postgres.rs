//! The real binary on a real PostgreSQL: how it starts (credentials, bad URLs, TLS), what it does
//! while the database is down or restarting, and replicas sharing one database.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::postgres::{PgOptions, Postgres, PASSWORD, USER};
use common::{get_json, metric, ndjson, post, when_indexed, Process};
use serde_json::Value;
use truthtable_collector::config::{Config, DbTarget};
use truthtable_collector::store::log::LogStore;
use truthtable_collector::store::{CaptureStore, Cursor, Store};

/// Arguments and environment of one collector start.
type Start<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>);

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// Runs the binary to its exit (it must not start serving); returns its status and log.
fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let out = Process::command(args, env).output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn health(client: &reqwest::Client, base: &str) -> (u16, Value) {
    let r = client.get(format!("{base}/healthz")).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn wait_health(client: &reqwest::Client, base: &str, want: u16, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = health(client, base).await;
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/healthz is {status} {body}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn wrong_credentials_a_missing_database_and_bad_urls_stop_the_start_naming_the_problem() {
    let pg = Postgres::shared();
    let db = pg.database();
    let url = pg.url(&db);
    let missing = pg.url("no_such_db");
    let cases: [(Start, &str); 5] = [
        (
            (vec!["--db", &url], vec![("PGPASSWORD", "not-the-password")]),
            "password authentication failed",
        ),
        ((vec!["--db", &url], vec![]), "password"),
        (
            (vec!["--db", &missing], vec![("PGPASSWORD", PASSWORD)]),
            "does not exist",
        ),
        (
            (
                vec!["--db", "postgres://127.0.0.1/x"],
                vec![("PGPASSWORD", PASSWORD)],
            ),
            "names no user",
        ),
        (
            (
                vec![
                    "--db",
                    "postgres://tt:hunter2@127.0.0.1/x?sslmode=sometimes",
                ],
                vec![],
            ),
            "sslmode=sometimes",
        ),
    ];
    for ((args, env), needle) in cases {
        let (status, log) = run_to_exit(&args, &env);
        assert!(!status.success(), "{args:?} started:\n{log}");
        assert!(log.contains(needle), "{args:?}: no {needle:?} in\n{log}");
        assert!(!log.contains("hunter2"), "the password was logged:\n{log}");
        assert!(!log.contains("listening on"), "{log}");
    }
}

#[tokio::test]
async fn the_password_comes_from_pgpassword_a_password_file_or_pgpassfile_never_the_command_line() {
    use std::os::unix::fs::PermissionsExt as _;
    let pg = Postgres::shared();
    let db = pg.database();
    let url = pg.url(&db);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("db-password");
    std::fs::write(&file, format!("{PASSWORD}\n")).unwrap();
    let pgpass = dir.path().join("pgpass");
    std::fs::write(
        &pgpass,
        format!("127.0.0.1:{}:{db}:{USER}:{PASSWORD}\n", pg.port),
    )
    .unwrap();
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let file_arg = file.display().to_string();
    let pgpass_env = pgpass.display().to_string();
    let client = reqwest::Client::new();
    let starts: [Start; 4] = [
        (vec!["--db", &url], vec![("PGPASSWORD", PASSWORD)]),
        (vec!["--db", &url, "--db-password-file", &file_arg], vec![]),
        (
            vec![],
            vec![
                ("TRUTHTABLE_DB", &url),
                ("TRUTHTABLE_DB_PASSWORD_FILE", &file_arg),
            ],
        ),
        (vec!["--db", &url], vec![("PGPASSFILE", &pgpass_env)]),
    ];
    for (i, (args, env)) in starts.into_iter().enumerate() {
        let proc = Process::start_with(&args, &env);
        let batch = ndjson(&ids(&format!("pw{i}"), 2));
        assert_eq!(post(&client, &proc.base(), batch, None).await.status(), 200);
        let (status, body) = health(&client, &proc.base()).await;
        assert_eq!((status, body["store"].as_str()), (200, Some("postgres")));
        assert!(proc.log().iter().any(|l| l.contains("listening on")
            && l.contains(&format!("postgres://{USER}@127.0.0.1:{}/{db}", pg.port))));
    }
    assert_eq!(pg.sql(&db, "SELECT count(*) FROM captures"), "8");
}

#[tokio::test]
async fn replicas_sharing_a_database_store_each_id_once_and_read_the_same() {
    let pg = Postgres::shared();
    let db = pg.database();
    let url = pg.url_with_password(&db);
    let (a, b) = (
        Process::start_with(&["--db", &url], &[]),
        Process::start_with(&["--db", &url], &[]),
    );
    assert!(
        !a.log().join("\n").contains(PASSWORD),
        "the URL's password was logged"
    );
    let client = reqwest::Client::new();
    // The same batch to both replicas at once, then a redelivery: stored once.
    let batch = ndjson(&ids("rep", 30));
    let (base_a, base_b) = (a.base(), b.base());
    let (ra, rb) = tokio::join!(
        post(&client, &base_a, batch.clone(), None),
        post(&client, &base_b, batch.clone(), None)
    );
    let (ra, rb): (Value, Value) = (ra.json().await.unwrap(), rb.json().await.unwrap());
    assert_eq!(
        ra["stored"].as_u64().unwrap() + rb["stored"].as_u64().unwrap(),
        30
    );
    assert_eq!(
        ra["duplicates"].as_u64().unwrap() + rb["duplicates"].as_u64().unwrap(),
        30
    );
    let again: Value = post(&client, &b.base(), batch, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (again["stored"].as_u64(), again["duplicates"].as_u64()),
        (Some(0), Some(30))
    );
    assert_eq!(pg.sql(&db, "SELECT count(*) FROM captures"), "30");

    // Each replica checks for records to digest when it starts (`indexing` is its own progress);
    // once both have, they answer every read alike, byte for byte.
    for base in [a.base(), b.base()] {
        let url = format!("{base}/v1/captures?limit=1");
        when_indexed(&client, &url, Duration::from_secs(15)).await;
    }
    for path in ["/v1/captures?limit=7", "/v1/captures/rep-3"] {
        let read = |base: String| {
            let client = client.clone();
            async move {
                client
                    .get(format!("{base}{path}"))
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap()
            }
        };
        let (from_a, from_b) = tokio::join!(read(a.base()), read(b.base()));
        assert_eq!(from_a, from_b, "{path} differs between replicas");
    }
    let got: Value = get_json(&client, format!("{}/v1/captures/rep-3", a.base())).await;
    assert_eq!(got["audit"]["question"], "question for rep-3");
    assert_eq!(
        metric(&client, &b.base(), "truthtable_collector_records").await,
        30
    );
    assert_eq!(
        metric(&client, &b.base(), "truthtable_collector_store_up").await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_database_is_down_ingest_answers_503_health_says_why_and_it_reconnects_by_itself()
{
    let pg = Postgres::start(PgOptions::default());
    let db = pg.database();
    let url = pg.url_with_password(&db);
    let client = reqwest::Client::new();
    let proc = Process::start_with(&["--db", &url], &[]);
    assert_eq!(
        post(&client, &proc.base(), ndjson(&ids("before", 3)), None)
            .await
            .status(),
        200
    );

    pg.stop("immediate");
    let resp = post(&client, &proc.base(), ndjson(&ids("during", 3)), None).await;
    assert_eq!(resp.status(), 503, "ingest while the database is down");
    assert_eq!(resp.headers()["retry-after"], "1");
    let down = wait_health(&client, &proc.base(), 503, Duration::from_secs(15)).await;
    assert_eq!(down["status"], "unavailable");
    assert!(down["error"].as_str().unwrap().len() > 5, "{down}");
    // Reads are unavailable too, and say so.
    let read = client
        .get(format!("{}/v1/captures", proc.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 503);
    let live = client
        .get(format!("{}/livez", proc.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200, "the process itself is alive");
    // Several failures in a row are logged once.
    for _ in 0..3 {
        let _ = post(&client, &proc.base(), ndjson(&ids("during", 3)), None).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;

    pg.start_again();
    wait_health(&client, &proc.base(), 200, Duration::from_secs(15)).await;
    assert_eq!(
        post(&client, &proc.base(), ndjson(&ids("during", 3)), None)
            .await
            .status(),
        200
    );
    assert_eq!(pg.sql(&db, "SELECT count(*) FROM captures"), "6");
    let (downs, ups) = (
        proc.log_count("database unavailable"),
        proc.log_count("database available again"),
    );
    // Logged once per change of cause, however many operations fail: an immediate stop and
    // restart goes through up to four causes (connection closed, refused, "starting up", "not
    // yet accepting connections"), and operations in flight may report the first two in turn.
    let causes: Vec<String> = proc
        .log()
        .iter()
        .filter_map(|l| l.split("database unavailable: ").nth(1))
        .map(|c| c.split("; ingest answers").next().unwrap_or(c).to_owned())
        .collect();
    assert!(
        (1..=6).contains(&downs) && causes.windows(2).all(|w| w[0] != w[1]),
        "{downs} lines for one outage:\n{}",
        proc.log().join("\n")
    );
    assert!(ups >= 1 && ups <= downs, "{}", proc.log().join("\n"));
    let unavailable = metric(
        &client,
        &proc.base(),
        "truthtable_collector_store_unavailable_total",
    )
    .await;
    assert!(unavailable >= 5, "{unavailable}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_started_before_its_database_waits_for_it_and_then_creates_the_schema() {
    let pg = Postgres::start(PgOptions::default());
    let db = pg.database();
    let url = pg.url_with_password(&db);
    pg.stop("fast");
    let client = reqwest::Client::new();
    let proc = Process::start_with(&["--db", &url], &[]);
    let (status, body) = health(&client, &proc.base()).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        post(&client, &proc.base(), ndjson(&ids("early", 2)), None)
            .await
            .status(),
        503
    );
    pg.start_again();
    wait_health(&client, &proc.base(), 200, Duration::from_secs(15)).await;
    assert_eq!(
        post(&client, &proc.base(), ndjson(&ids("early", 2)), None)
            .await
            .status(),
        200
    );
    // The latest schema: the captures (1), the export cursors (2), the digests (3), the verifiable
    // log (4), the amendments (5), the digests' TTFT and duration (6), the audit
    // engines' verdicts (7), erasure (8), verdicts as log events (9) and the captures' leaf
    // hashes (10).
    assert_eq!(
        pg.sql(&db, "SELECT max(version) FROM truthtable_schema"),
        "11"
    );
}

#[tokio::test]
async fn tls_to_the_database_is_verified_as_sslmode_asks() {
    let pg = Postgres::start(PgOptions { tls: true });
    let db = pg.database();
    let ca = pg.ca_file().display().to_string();
    let at = |host: &str, query: &str| {
        format!(
            "postgres://{USER}:{PASSWORD}@{host}:{}/{db}?{query}",
            pg.port
        )
    };
    let client = reqwest::Client::new();
    // The certificate names localhost, signed by itself.
    for url in [
        at(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
        at("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}")),
        at("127.0.0.1", "sslmode=require"),
    ] {
        let proc = Process::start_with(&["--db", &url], &[]);
        assert_eq!(
            post(&client, &proc.base(), ndjson(&ids("tls", 1)), None)
                .await
                .status(),
            200
        );
        let encrypted = pg.superuser_sql(
            "postgres",
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.application_name = 'truthtable-collector' AND NOT s.ssl",
        );
        assert_eq!(encrypted, "0", "{url}: a connection without TLS");
    }
    for (url, needle) in [
        (
            at(
                "127.0.0.1",
                &format!("sslmode=verify-full&sslrootcert={ca}"),
            ),
            "certificate",
        ),
        (
            at("localhost", "sslmode=verify-full&sslrootcert=system"),
            "certificate",
        ),
    ] {
        let (status, log) = run_to_exit(&["--db", &url], &[]);
        assert!(!status.success(), "{url} started");
        assert!(log.contains(needle), "{url}: {log}");
    }
}

#[tokio::test]
async fn read_after_leaves_records_of_transactions_in_flight_for_later() {
    let pg = Postgres::shared();
    let db = pg.database();
    let store = open_store(pg, &db).await;
    store.insert_batch(vec![row("first")]).await.unwrap();

    // A transaction that inserts and stays open, as a slow replica's batch would.
    let (client, conn) = tokio_postgres::connect(&pg.url_with_password(&db), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client.batch_execute("BEGIN").await.unwrap();
    client
        .batch_execute(
            "INSERT INTO captures (id, started_at, method, path, outcome, duration_ms, record)
             VALUES ('slow', 't', 'POST', '/', 'complete', 1, '{\"id\":\"slow\"}')",
        )
        .await
        .unwrap();
    store.insert_batch(vec![row("after")]).await.unwrap();
    let ids = |rows: Vec<truthtable_collector::store::StoredCapture>| {
        rows.into_iter().map(|r| r.id).collect::<Vec<_>>()
    };
    let page = store.read_after(Cursor::START, 10).await.unwrap();
    let cursor = page.last().unwrap().cursor;
    assert_eq!(
        ids(page),
        ["first"],
        "nothing past the open transaction yet"
    );
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        ids(store.read_after(cursor, 10).await.unwrap()),
        ["slow", "after"]
    );
}

fn row(id: &str) -> truthtable_collector::store::NewCapture {
    truthtable_collector::store::NewCapture {
        id: id.into(),
        started_at: "t".into(),
        method: "POST".into(),
        path: "/".into(),
        status: None,
        outcome: "complete".into(),
        duration_ms: 1.0,
        raw: format!("{{\"id\":\"{id}\"}}"),
    }
}

/// The schema collectors wrote before digests existed (migration 1), as it is on their databases.
const SCHEMA_1: &str = "
CREATE TABLE truthtable_schema (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());
INSERT INTO truthtable_schema (version) VALUES (1);
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
CREATE INDEX captures_commit_order ON captures (tx, seq);";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_an_older_collector_is_migrated_at_start_and_its_records_digested() {
    let pg = Postgres::shared();
    let db = pg.database();
    pg.sql(&db, SCHEMA_1);
    for i in 0..250 {
        let line = common::record(&format!("old-{i}"))
            .to_string()
            .replace('\'', "''");
        pg.sql(
            &db,
            &format!(
                "INSERT INTO captures (id, started_at, method, path, status, outcome, duration_ms, model, record)
                 VALUES ('old-{i}', '2026-11-25T16:10:40.186123Z', 'POST', '/v1/chat/completions', 200, 'complete', 1804.25, 'gpt-4o-2024-08-06', '{line}')"
            ),
        );
    }
    let url = pg.url(&db);
    let collector = Process::start_with(&["--db", &url], &[("PGPASSWORD", PASSWORD)]);
    let client = reqwest::Client::new();
    let base = collector.base();
    let url = format!("{base}/v1/captures?protocol=openai.chat&q=question%20old&limit=1000");
    let page = when_indexed(&client, &url, Duration::from_secs(30)).await;
    assert_eq!(page["captures"].as_array().unwrap().len(), 250, "{page}");
    assert_eq!(
        page["captures"][0]["question_preview"],
        "question for old-249"
    );
    assert_eq!(
        pg.sql(&db, "SELECT max(version) FROM truthtable_schema"),
        "11"
    );
    assert_eq!(pg.sql(&db, "SELECT count(*) FROM capture_digests"), "250");
    assert_eq!(
        collector.log_count("every stored record has its digest"),
        1,
        "{:?}",
        collector.log()
    );
    // The records themselves are untouched.
    let raw: Value = get_json(&client, format!("{base}/v1/captures/old-7")).await;
    assert_eq!(raw["capture"], common::record("old-7"));
    // Stored before leaf hashes were kept beside them (new rows get theirs at ingest), they
    // go to the log under their records' hashes, and in commit order.
    assert_eq!(
        pg.sql(&db, "SELECT count(*) FROM captures WHERE leaf IS NULL"),
        "250"
    );
    let store = open_store(pg, &db).await;
    let pending = store.log_pending(Cursor::START, 1000).await.unwrap();
    assert_eq!(pending.len(), 250);
    for p in &pending[..3] {
        let raw = store.get(p.id.clone()).await.unwrap().unwrap();
        let mut h = <sha2::Sha256 as sha2::Digest>::new();
        sha2::Digest::update(&mut h, [0u8]);
        sha2::Digest::update(&mut h, raw.as_bytes());
        assert_eq!(p.leaf.0[..], sha2::Digest::finalize(h)[..], "{}", p.id);
    }
    assert_eq!(pending[0].id, "old-0");
    // A capture ingested now keeps its leaf hash.
    assert_eq!(
        post(&client, &base, ndjson(&["new-1".to_owned()]), None)
            .await
            .status(),
        200
    );
    assert_eq!(
        pg.sql(
            &db,
            "SELECT octet_length(leaf) FROM captures WHERE id = 'new-1'"
        ),
        "32"
    );
}

/// A small random source for the stress tests (xorshift; the seed is printed so a failing run
/// can be repeated with `TRUTHTABLE_STRESS_SEED`).
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let seed = std::env::var("TRUTHTABLE_STRESS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            })
            | 1;
        eprintln!("stress seed {seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Opens another handle on `db`: its own pool, as a replica's.
async fn open_store(pg: &Postgres, db: &str) -> Store {
    let mut config = Config::with_db(DbTarget::Postgres(pg.url(db)));
    config.db_password.env = Some(PASSWORD.to_owned());
    Store::open(&config).await.unwrap()
}

/// Moves the server's transaction ids on until the next one is at least `to`.
async fn take_xids_until(client: &tokio_postgres::Client, to: u64) {
    client
        .batch_execute("SET synchronous_commit = off")
        .await
        .unwrap();
    loop {
        let row = client
            .query_one("SELECT pg_current_xact_id()::text", &[])
            .await
            .unwrap();
        let left = to.saturating_sub(row.get::<_, String>(0).parse::<u64>().unwrap() + 1);
        if left == 0 {
            break;
        }
        let take = "BEGIN; SELECT pg_current_xact_id(); COMMIT; ".repeat(left.min(500) as usize);
        client.batch_execute(&take).await.unwrap();
    }
    client
        .batch_execute("RESET synchronous_commit")
        .await
        .unwrap();
}

/// Moves the server's transaction ids to a little below the next power of ten and returns it:
/// the writes that follow take ids of one more digit than those before them (999, then 1000),
/// where ids compared as text instead of numbers would misorder them.
async fn just_below_a_power_of_ten(client: &tokio_postgres::Client) -> u64 {
    let row = client
        .query_one("SELECT pg_current_xact_id()::text", &[])
        .await
        .unwrap();
    let boundary = 10u64.pow(row.get::<_, String>(0).len() as u32);
    take_xids_until(client, boundary - 100).await;
    boundary
}

/// Writes to `db` as replicas under load do, all at once: `WRITERS` store handles inserting
/// batches of 1 to 40 records whose ids overlap (an insert waits for another's uncommitted copy
/// of an id, ON CONFLICT, then skips it), and one connection holding explicit transactions open
/// a while before committing (or, one in four, rolling back). The transaction ids start a little
/// below a power of ten, which is returned: the writes take ids on both sides of it.
async fn write_concurrently(pg: &Postgres, db: &str, seed: u64) -> u64 {
    const WRITERS: u64 = 4;
    const BATCHES: u64 = 50;
    const IDS: u64 = 2500;
    // Every transaction takes the ids it writes in one order (as text), so none deadlock.
    let ids = |rng: &mut Rng, n: u64| {
        let mut ids: Vec<String> = (0..n).map(|_| format!("k{}", rng.below(IDS))).collect();
        ids.sort();
        ids
    };
    let (client, conn) = tokio_postgres::connect(&pg.url_with_password(db), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let boundary = just_below_a_power_of_ten(&client).await;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = open_store(pg, db).await;
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(seed.wrapping_mul(w + 7) | 1);
            for _ in 0..BATCHES {
                let n = 1 + rng.below(40);
                let batch = ids(&mut rng, n).iter().map(|id| row(id)).collect();
                store.insert_batch(batch).await.unwrap();
            }
        }));
    }
    tasks.push(tokio::spawn(async move {
        let mut rng = Rng(seed.wrapping_mul(3) | 1);
        for _ in 0..BATCHES {
            client.batch_execute("BEGIN").await.unwrap();
            let n = 1 + rng.below(5);
            for id in ids(&mut rng, n) {
                client
                    .execute(
                        "INSERT INTO captures (id, started_at, method, path, outcome, duration_ms, record)
                         VALUES ($1, 't', 'POST', '/', 'complete', 1, '{}') ON CONFLICT (id) DO NOTHING",
                        &[&id],
                    )
                    .await
                    .unwrap();
            }
            tokio::time::sleep(Duration::from_millis(rng.below(40))).await;
            let end = if rng.below(4) == 0 { "ROLLBACK" } else { "COMMIT" };
            client.batch_execute(end).await.unwrap();
        }
    }));
    for t in tasks {
        t.await.unwrap();
    }
    let sides = pg.sql(
        db,
        &format!(
            "SELECT count(*) FILTER (WHERE tx < '{boundary}') > 0 AND count(*) FILTER (WHERE tx >= '{boundary}') > 0 FROM captures"
        ),
    );
    assert_eq!(
        sides, "t",
        "the writes did not take transaction ids on both sides of {boundary}"
    );
    boundary
}

/// The promise the OpenTelemetry export, the audit hand-off and the log's sequencer rely on:
/// a reader walking `read_after` while several replicas write — ids racing one another, some
/// transactions held open, some rolled back — reads every stored record exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_after_under_concurrent_writers_reads_every_record_exactly_once() {
    // A server of its own: no other test's transactions between the ids it moves and its writes.
    let pg = &Postgres::start(PgOptions::default());
    let db = pg.database();
    let mut rng = Rng::seeded();
    let seed = rng.below(u64::MAX);
    let reader = open_store(pg, &db).await;
    let mut cursor = Cursor::START;
    let mut seen: Vec<String> = Vec::new();
    let read = async |cursor: &mut Cursor, seen: &mut Vec<String>, limit: u32| {
        let page = reader.read_after(*cursor, limit).await.unwrap();
        for r in &page {
            assert!(
                r.cursor > *cursor,
                "{} read at {} after {}",
                r.id,
                r.cursor,
                cursor
            );
            *cursor = r.cursor;
        }
        seen.extend(page.into_iter().map(|r| r.id));
    };
    let done = std::sync::atomic::AtomicBool::new(false);
    let writing = async {
        write_concurrently(pg, &db, seed).await;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    let reading = async {
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            let limit = [1, 3, 17, 200][rng.below(4) as usize];
            read(&mut cursor, &mut seen, limit).await;
            tokio::time::sleep(Duration::from_millis(rng.below(3))).await;
        }
    };
    tokio::join!(writing, reading);
    let stored: Vec<String> = pg
        .sql(&db, "SELECT id FROM captures ORDER BY id")
        .lines()
        .map(str::to_owned)
        .collect();
    // The last commits become readable once no older transaction runs on the server.
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < stored.len() && Instant::now() < deadline {
        read(&mut cursor, &mut seen, 500).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut sorted = seen.clone();
    sorted.sort();
    let n = sorted.len();
    sorted.dedup();
    assert_eq!(n, sorted.len(), "a record was read twice");
    let missed: Vec<&String> = stored
        .iter()
        .filter(|id| sorted.binary_search(id).is_err())
        .collect();
    assert!(
        missed.is_empty(),
        "{} of {} stored records never read (cursor {cursor}): {}",
        missed.len(),
        stored.len(),
        pg.sql(
            &db,
            &format!(
                "SELECT string_agg(id || ' at ' || tx || '-' || seq, ', ') FROM captures WHERE id IN ({})",
                missed.iter().take(20).map(|id| format!("'{id}'")).collect::<Vec<_>>().join(",")
            )
        )
    );
    assert!(stored.len() > 500, "{} stored", stored.len());
}

/// The log's sequencer leans on the same promise: two sequencers (two replicas' handles) racing
/// one another behind the same concurrent writers, with only their `read_after` cursor — no
/// sweep for records behind it — put every stored record in the log exactly once, and every
/// checkpoint signed on the way is a root of the one tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sequencers_racing_without_a_sweep_log_every_record_exactly_once() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use truthtable_collector::log::{sequencer, Log, LogKey};
    let pg = &Postgres::start(PgOptions::default());
    let db = pg.database();
    let key = LogKey::generate("stress.test/log").unwrap();
    let mut rng = Rng::seeded();
    let seed = rng.below(u64::MAX);
    // First a backlog across a power of ten of transaction ids, with more records above it than
    // a sequencer reads at once: a cursor that misordered the ids would pass those below.
    let (client, conn) = tokio_postgres::connect(&pg.url_with_password(&db), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let writer = open_store(pg, &db).await;
    let boundary = just_below_a_power_of_ten(&client).await;
    let rows = |prefix: &str, n: usize| (0..n).map(|i| row(&format!("{prefix}-{i}"))).collect();
    writer.insert_batch(rows("below", 50)).await.unwrap();
    take_xids_until(&client, boundary).await;
    for part in 0..3 {
        let n = sequencer::STEP as usize / 2;
        writer
            .insert_batch(rows(&format!("above{part}"), n))
            .await
            .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut sequencers = Vec::new();
    for i in 0..2u64 {
        let (store, log, stop) = (
            open_store(pg, &db).await,
            Log::new(key.clone()).unwrap(),
            Arc::clone(&stop),
        );
        let mut rng = Rng(seed.wrapping_mul(i + 11) | 1);
        sequencers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                sequencer::sequence(&store, &log, false).await.unwrap();
                sequencer::sign(&store, &log).await.unwrap();
                tokio::time::sleep(Duration::from_millis(rng.below(5))).await;
            }
        }));
    }
    write_concurrently(pg, &db, seed).await;
    let stored: u64 = pg
        .sql(&db, "SELECT count(*) FROM captures")
        .parse()
        .unwrap();
    pg.wait_for(
        &db,
        "SELECT count(*) FROM log_entries",
        Duration::from_secs(20),
        |n| n == stored.to_string(),
    );
    stop.store(true, Ordering::Relaxed);
    for s in sequencers {
        s.await.unwrap();
    }
    assert_eq!(
        pg.sql(
            &db,
            "SELECT count(*) || ' ' || count(DISTINCT e.seq) || ' ' || max(e.idx) + 1 || ' '
                    || count(c.seq) FROM log_entries e LEFT JOIN captures c USING (seq)"
        ),
        format!("{stored} {stored} {stored} {stored}"),
        "every stored record logged exactly once"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_truthtable-collector"))
        .args([
            "verify",
            "--db",
            &pg.url_with_password(&db),
            "--key",
            key.verifier_key(),
        ])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.ends_with(&format!("{stored} of {stored} records verified\n")),
        "{report}"
    );
}
