//! What retention passes cost ingest, and what they give back on disk, on SQLite or PostgreSQL:
//! a store of `--captures` records with their digests, half of them old — spread over
//! `--rounds` years, 2015 onwards — and half started in 2099. Then `--rounds` paired rounds on
//! one machine in one run: ingest alone for `--seconds`, then ingest beside a retention pass
//! (what the collector runs, `truthtable_collector::erase::retention_pass`) whose cut-off
//! erases the next year of old captures, so the passes together erase half the store; and ingest
//! alone once more at the end. Ingest is the store's own: one writer calling `insert_batch` with
//! batches of 88 records of about `--record-bytes` as fast as it can, each batch timed (its p50,
//! p99 and longest are what a sender waits). Last, the store's size before the passes, after
//! them, and (SQLite) after a `VACUUM`. `--layout oldest-first` stores the older half first, a
//! year after another, as retention meets captures. Two more measurements, SQLite only:
//! `--phase disk` (what one pass over the older half gives back to the file system, nothing else
//! writing) and `--phase auto-vacuum` (ingest into a store with `auto_vacuum=INCREMENTAL` against
//! one with NONE, paired). With `RUST_LOG=debug`, each store step's time and each batch over
//! 100 ms go to stderr. See BENCHMARKS.md.
//!
//! `cargo run --release -p truthtable-collector --example retention_bench -- --captures 200000`
//! `… -- --store postgres --pg-admin-url postgres://postgres:pw@127.0.0.1:5432/postgres` (`bench/retention`)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use truthtable_collector::config::{Config, DbTarget};
use truthtable_collector::erase::{retention_pass, Eraser};
use truthtable_collector::store::{CaptureStore, Digest, NewCapture, Store};

/// The first year of old captures.
const FIRST_YEAR: i32 = 2015;

fn record(id: &str, started_at: &str, bytes: usize) -> NewCapture {
    let filler = "x".repeat(bytes.saturating_sub(300));
    NewCapture {
        id: id.to_owned(),
        started_at: started_at.to_owned(),
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        status: Some(200),
        outcome: "complete".into(),
        duration_ms: 12.5,
        raw: format!(
            r#"{{"schema":"truthtable.capture.v1","id":"{id}","started_at":"{started_at}","question":"what about {id}","filler":"{filler}"}}"#
        ),
    }
}

fn digest(started_us: i64, id: &str) -> Digest {
    Digest {
        version: 1,
        started_us: Some(started_us),
        outcome: "complete".into(),
        status: Some(200),
        protocol: "openai.chat".into(),
        model: Some("gpt-4o".into()),
        question: Some(format!("what about {id}")),
        answer: Some("an answer".into()),
        words: format!("what about {id} an answer"),
        ..Digest::default()
    }
}

/// Seconds since the epoch of January 1st of `year`, UTC.
fn new_year(year: i32) -> i64 {
    time::Date::from_calendar_date(year, time::Month::January, 1)
        .unwrap()
        .midnight()
        .assume_utc()
        .unix_timestamp()
}

/// Half a year into `year`: well clear of the passes' cut-offs (January 1st), however late a
/// pass computes its own.
fn mid_year(year: i32) -> i64 {
    new_year(year) + 181 * 86_400
}

/// Where the store lives, and how big it is.
enum Target {
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

impl Target {
    fn db(&self) -> DbTarget {
        match self {
            Target::Sqlite(p) => DbTarget::Sqlite(p.clone()),
            Target::Postgres(u) => DbTarget::Postgres(u.clone()),
        }
    }

    /// Bytes on disk: the file and its write-ahead log, or the database's relations.
    async fn size(&self) -> u64 {
        match self {
            Target::Sqlite(db) => {
                let wal = db.with_extension("db-wal");
                [db.as_path(), wal.as_path()]
                    .iter()
                    .filter_map(|p| std::fs::metadata(p).ok())
                    .map(|m| m.len())
                    .sum()
            }
            Target::Postgres(url) => {
                let client = pg(url).await;
                let row = client
                    .query_one("SELECT pg_database_size(current_database())", &[])
                    .await
                    .unwrap();
                row.get::<_, i64>(0) as u64
            }
        }
    }
}

async fn pg(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// A fresh PostgreSQL database; returns its URL (with the admin URL's credentials).
async fn fresh_pg(admin_url: &str, name: &str) -> String {
    let client = pg(admin_url).await;
    for sql in [
        format!("DROP DATABASE IF EXISTS {name}"),
        format!("CREATE DATABASE {name}"),
    ] {
        client.batch_execute(&sql).await.unwrap();
    }
    let (base, query) = admin_url.split_once('?').unwrap_or((admin_url, ""));
    let base = &base[..base.rfind('/').unwrap()];
    format!("{base}/{name}?{query}")
}

/// What one stretch of ingest did: records stored, seconds spent ingesting, and each batch's
/// wait in ms (sorted).
#[derive(Default)]
struct Ingest {
    records: u64,
    secs: f64,
    waits: Vec<f64>,
}

impl Ingest {
    fn rate(&self) -> f64 {
        self.records as f64 / self.secs.max(1e-9)
    }

    fn at(&self, q: f64) -> f64 {
        if self.waits.is_empty() {
            return 0.0;
        }
        self.waits[((self.waits.len() as f64 * q) as usize).min(self.waits.len() - 1)]
    }

    fn p50_ms(&self) -> f64 {
        self.at(0.5)
    }

    fn p99_ms(&self) -> f64 {
        self.at(0.99)
    }

    fn max_ms(&self) -> f64 {
        self.waits.last().copied().unwrap_or(0.0)
    }

    /// This stretch and `other` as one.
    fn add(&mut self, other: Ingest) {
        self.records += other.records;
        self.secs += other.secs;
        self.waits.extend(other.waits);
        self.waits.sort_by(f64::total_cmp);
    }
}

/// Inserts batches of 88 new records until one of `stops` is set, timing each.
async fn ingest(store: &Store, next: &AtomicU64, stops: &[&AtomicBool], bytes: usize) -> Ingest {
    let started = Instant::now();
    let mut n = 0u64;
    let mut waits = Vec::new();
    while !stops.iter().any(|s| s.load(Ordering::Relaxed)) {
        let batch: Vec<NewCapture> = (0..88)
            .map(|_| {
                let i = next.fetch_add(1, Ordering::Relaxed);
                record(&format!("new-{i}"), "2099-06-01T00:00:00Z", bytes)
            })
            .collect();
        let t = Instant::now();
        n += store.insert_batch(batch).await.unwrap().stored;
        waits.push(t.elapsed().as_secs_f64() * 1000.0);
        if t.elapsed() > Duration::from_millis(100) {
            tracing::debug!(
                took_ms = t.elapsed().as_millis() as u64,
                "slow ingest batch"
            );
        }
    }
    waits.sort_by(f64::total_cmp);
    Ingest {
        records: n,
        secs: started.elapsed().as_secs_f64(),
        waits,
    }
}

/// Bytes free on the file system that holds `dir` (`df`), or `None` when `df` cannot say.
fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    let out = std::process::Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(dir)
        .output()
        .ok()?;
    String::from_utf8(out.stdout)
        .ok()?
        .lines()
        .nth(1)?
        .trim()
        .parse()
        .ok()
}

/// Ingest beside a pass, in windows: `window` seconds of ingest, then `idle` seconds without,
/// until `done` (the pass ended) — so a long pass does not fill the disk with what is ingested
/// beside it. No window starts with less than `min_free` bytes free. Returns the windows as
/// one stretch, how many there were, and whether the disk stopped them.
async fn windows(
    store: &Store,
    next: &AtomicU64,
    done: &AtomicBool,
    (window, idle): (u64, u64),
    bytes: usize,
    (dir, min_free): (&std::path::Path, u64),
) -> (Ingest, usize, bool) {
    let mut all = Ingest::default();
    let mut count = 0;
    while !done.load(Ordering::Relaxed) {
        if free_bytes(dir).is_some_and(|free| free < min_free) {
            return (all, count, true);
        }
        all.add(ingest(store, next, &[&*timed(window), done], bytes).await);
        count += 1;
        let idle_until = Instant::now() + Duration::from_secs(idle);
        while !done.load(Ordering::Relaxed) && Instant::now() < idle_until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    (all, count, false)
}

/// PostgreSQL's own work beside the bench's, stretch by stretch: the seconds an autovacuum
/// worker spent on each table and what the ingest statement waited on, and for what share of
/// the samples it ran (`pg_stat_activity`, sampled every 100 ms), the checkpoints and
/// the buffers they wrote (`pg_stat_bgwriter`), and — when the server loaded
/// `pg_stat_statements` — the pass's statements that took the most time.
struct Background {
    client: tokio_postgres::Client,
    busy: Arc<std::sync::Mutex<std::collections::BTreeMap<String, f64>>>,
    bgwriter: (i64, i64),
    statements: bool,
}

impl Background {
    async fn start(url: &str) -> Background {
        let busy = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
        let sampler = pg(url).await;
        let seen = Arc::clone(&busy);
        tokio::spawn(async move {
            let mut last = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                // Autovacuum workers at work, and what the bench's ingest statement waits on
                // (`ingest waiting on …`; `CPU` when it waits on nothing).
                let Ok(rows) = sampler
                    .query(
                        "SELECT query FROM pg_stat_activity
                         WHERE backend_type = 'autovacuum worker' AND query <> ''
                         UNION ALL
                         SELECT 'ingest waiting on ' || coalesce(wait_event_type || ':' || wait_event, 'CPU')
                         FROM pg_stat_activity
                         WHERE state = 'active' AND query LIKE '%INSERT INTO capture_amendments%'
                           AND pid <> pg_backend_pid()",
                        &[],
                    )
                    .await
                else {
                    return;
                };
                let dt = last.elapsed().as_secs_f64();
                last = Instant::now();
                let mut busy = seen.lock().unwrap();
                for r in rows {
                    let q: String = r.get(0);
                    let q = q.trim_start_matches("autovacuum: ").replace("public.", "");
                    *busy.entry(q).or_insert(0.0) += dt;
                }
            }
        });
        let client = pg(url).await;
        let statements = client
            .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .await
            .is_ok()
            && client
                .batch_execute("SELECT pg_stat_statements_reset()")
                .await
                .is_ok();
        let mut me = Background {
            client,
            busy,
            bgwriter: (0, 0),
            statements,
        };
        me.bgwriter = me.checkpoints().await;
        me
    }

    async fn checkpoints(&self) -> (i64, i64) {
        let r = self
            .client
            .query_one(
                "SELECT checkpoints_timed + checkpoints_req, buffers_checkpoint FROM pg_stat_bgwriter",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    }

    /// What PostgreSQL did since the last call, in a line.
    async fn take(&mut self) -> String {
        let busy = std::mem::take(&mut *self.busy.lock().unwrap());
        let now = self.checkpoints().await;
        let (checkpoints, buffers) = (now.0 - self.bgwriter.0, now.1 - self.bgwriter.1);
        self.bgwriter = now;
        let mut parts: Vec<String> = busy
            .iter()
            .filter(|(q, s)| **s >= 0.1 && !q.starts_with("ingest"))
            .map(|(q, s)| format!("{q} {s:.1} s"))
            .collect();
        let mut waits: Vec<(&String, &f64)> = busy
            .iter()
            .filter(|(q, _)| q.starts_with("ingest"))
            .collect();
        waits.sort_by(|a, b| b.1.total_cmp(a.1));
        let sampled: f64 = waits.iter().map(|(_, s)| **s).sum();
        if sampled > 0.0 {
            parts.push(format!(
                "ingest {}",
                waits
                    .iter()
                    .take(3)
                    .map(|(q, s)| format!(
                        "{} {:.0}%",
                        q.trim_start_matches("ingest waiting on "),
                        100.0 * **s / sampled
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if checkpoints > 0 || buffers > 0 {
            parts.push(format!(
                "{checkpoints} checkpoint(s) begun, {buffers} buffers written by checkpoints"
            ));
        }
        if parts.is_empty() {
            "—".to_owned()
        } else {
            parts.join("; ")
        }
    }

    /// The statements (not the bench's inserts) that took the most time since the last call.
    async fn statements(&self) -> Vec<String> {
        if !self.statements {
            return Vec::new();
        }
        let rows = self
            .client
            .query(
                "SELECT regexp_replace(left(query, 90), '\\s+', ' ', 'g'), calls,
                        total_exec_time, total_plan_time
                 FROM pg_stat_statements
                 WHERE query NOT LIKE 'INSERT INTO captures%' AND query NOT LIKE '%pg_stat%'
                   AND query NOT LIKE 'SELECT query FROM pg_stat_activity%'
                 ORDER BY total_exec_time DESC LIMIT 6",
                &[],
            )
            .await
            .unwrap();
        self.client
            .batch_execute("SELECT pg_stat_statements_reset()")
            .await
            .unwrap();
        rows.iter()
            .map(|r| {
                let calls: i64 = r.get(1);
                let total: f64 = r.get(2);
                format!(
                    "{calls} × `{}`: {total:.0} ms ({:.2} ms each; planning {:.0} ms)",
                    r.get::<_, String>(0),
                    total / calls.max(1) as f64,
                    r.get::<_, f64>(3)
                )
            })
            .collect()
    }
}

/// Fills the store: `captures` records, every other one old (half a year into one of `years`
/// years from [`FIRST_YEAR`], in turn), the rest started in 2099, with their digests.
async fn build(store: &Store, captures: usize, years: usize, bytes: usize) {
    build_with(store, "c", captures, bytes, |i| {
        (i % 2 == 0).then(|| FIRST_YEAR + ((i / 2) % years) as i32)
    })
    .await
}

/// Fills the store with `captures` records (ids `{prefix}-{i}`), the `i`th started half a year
/// into `old_year(i)`, or in 2099 when that is `None`, with their digests.
async fn build_with(
    store: &Store,
    prefix: &str,
    captures: usize,
    bytes: usize,
    old_year: impl Fn(usize) -> Option<i32>,
) {
    let new_us = new_year(2099) * 1_000_000;
    for chunk in 0..captures.div_ceil(1000) {
        let ids: Vec<(String, Option<i32>)> = (chunk * 1000..((chunk + 1) * 1000).min(captures))
            .map(|i| (format!("{prefix}-{i}"), old_year(i)))
            .collect();
        let batch = ids
            .iter()
            .map(|(id, year)| {
                let at = match year {
                    Some(y) => time::OffsetDateTime::from_unix_timestamp(mid_year(*y))
                        .unwrap()
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap(),
                    None => "2099-01-01T00:00:00Z".to_owned(),
                };
                record(id, &at, bytes)
            })
            .collect();
        let out = store.insert_batch(batch).await.unwrap();
        let digests = out
            .new
            .iter()
            .map(|&(i, seq)| {
                let (id, year) = &ids[i];
                let us = year.map_or(new_us, |y| mid_year(y) * 1_000_000);
                (seq, digest(us, id))
            })
            .collect();
        store.put_digests(digests).await.unwrap();
    }
}

fn timed(secs: u64) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stop);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(secs)).await;
        s.store(true, Ordering::Relaxed);
    });
    stop
}

/// A stretch of ingest alone for `seconds`, its row printed (with what PostgreSQL did beside it):
/// what it ingested, and the store's size at its end.
async fn stretch_alone(
    store: &Store,
    next: &AtomicU64,
    seconds: u64,
    bytes: usize,
    target: &Target,
    background: &mut Option<Background>,
) -> (Ingest, u64) {
    eprintln!("[{}] alone", utc());
    let i = ingest(store, next, &[&*timed(seconds)], bytes).await;
    let size = target.size().await;
    let bg = match background.as_mut() {
        Some(b) => Some(b.take().await),
        None => None,
    };
    row("alone", &i, size, bg.as_deref());
    (i, size)
}

/// One stretch's line: ingest, the store's size at its end, and (PostgreSQL) what the server
/// did beside it.
fn row(what: &str, i: &Ingest, size: u64, background: Option<&str>) {
    println!(
        "| {what} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} |{}",
        i.rate(),
        i.p50_ms(),
        i.p99_ms(),
        i.max_ms(),
        mb(size),
        background.map_or(String::new(), |b| format!(" {b} |"))
    );
}

fn utc() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!("{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second())
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// `--phase disk`: what erasing half the store gives back to the file system, with nothing else
/// writing. The older half — the first stored, as retention meets them (`--layout oldest-first`),
/// or every other capture (`--layout interleaved`, as an erasure by filter may) — is erased by
/// one retention pass; the size before, after it, and after a `VACUUM` that rewrites the file.
async fn disk(dir: &std::path::Path, captures: usize, bytes: usize, layout: &str) {
    let db = dir.join("disk.db");
    let target = Target::Sqlite(db.clone());
    let store = Store::open(&Config::with_db(target.db())).await.unwrap();
    let load = Instant::now();
    let old = |i: usize| match layout {
        "oldest-first" => (i < captures / 2).then_some(FIRST_YEAR),
        "interleaved" => i.is_multiple_of(2).then_some(FIRST_YEAR),
        other => panic!("--layout: oldest-first or interleaved, not {other}"),
    };
    build_with(&store, "c", captures, bytes, old).await;
    store.purge().await.unwrap();
    let before = target.size().await;
    println!(
        "sqlite, {layout}: {captures} captures of ~{bytes} bytes loaded in {:.0} s: {:.1} MB",
        load.elapsed().as_secs_f64(),
        mb(before)
    );
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let retain = Duration::from_secs(u64::try_from(now - new_year(FIRST_YEAR + 1)).unwrap());
    let eraser = Eraser::new(Some(retain));
    let started = Instant::now();
    let pass = retention_pass(&store, &eraser, retain)
        .await
        .unwrap()
        .unwrap();
    let took = started.elapsed().as_secs_f64();
    let after = target.size().await;
    store.close().await.unwrap();
    let conn = rusqlite::Connection::open(&db).unwrap();
    let free: i64 = conn
        .query_row("PRAGMA freelist_count", [], |r| r.get(0))
        .unwrap();
    let started = Instant::now();
    conn.execute_batch("VACUUM").unwrap();
    let vacuum_took = started.elapsed().as_secs_f64();
    drop(conn);
    let vacuumed = target.size().await;
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| captures erased by one retention pass, nothing else writing | {} ({:.1} MB of records) in {took:.1} s |",
        pass.erased,
        mb(pass.erased * bytes as u64)
    );
    println!("| file + WAL before the pass | {:.1} MB |", mb(before));
    println!(
        "| file + WAL after the pass | {:.1} MB ({free} pages still free) |",
        mb(after)
    );
    println!(
        "| given back by the pass | {:.1} MB |",
        mb(before.saturating_sub(after))
    );
    println!(
        "| file after a `VACUUM` (rewrites the file; {vacuum_took:.1} s) | {:.1} MB |",
        mb(vacuumed)
    );
    println!(
        "| given back by the pass / by pass and `VACUUM` | {:.2} |",
        before.saturating_sub(after) as f64 / before.saturating_sub(vacuumed).max(1) as f64
    );
    std::fs::remove_file(&db).ok();
}

/// `--phase auto-vacuum`: what `auto_vacuum=INCREMENTAL` costs ingest. Two stores of
/// `captures` records, one created as stores were before (auto_vacuum NONE), one as now; then
/// `rounds` rounds of ingest for `seconds` on each, the order alternating (NONE first in odd
/// rounds), so both see the machine alike.
async fn auto_vacuum_cost(
    dir: &std::path::Path,
    captures: usize,
    bytes: usize,
    seconds: u64,
    rounds: usize,
) {
    let none = dir.join("none.db");
    // The first page written (by switching to WAL) before the collector asks for incremental
    // vacuum: what stores created before it have.
    rusqlite::Connection::open(&none)
        .unwrap()
        .query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
        .unwrap();
    let incremental = dir.join("incremental.db");
    let mut stores = Vec::new();
    for (name, db) in [("NONE", &none), ("INCREMENTAL", &incremental)] {
        let store = Store::open(&Config::with_db(DbTarget::Sqlite(db.clone())))
            .await
            .unwrap();
        build(&store, captures, 5, bytes).await;
        store.purge().await.unwrap();
        let av: i64 = rusqlite::Connection::open(db)
            .unwrap()
            .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
            .unwrap();
        println!("sqlite, auto_vacuum {name} ({av}): {captures} captures of ~{bytes} bytes loaded");
        stores.push(store);
    }
    println!();
    println!(
        "| round | NONE records/s | p99 ms | INCREMENTAL records/s | p99 ms | INCREMENTAL / NONE |"
    );
    println!("|---|---|---|---|---|---|");
    let next = AtomicU64::new(0);
    let mut ratios = Vec::new();
    for k in 0..rounds {
        let order: [usize; 2] = if k % 2 == 0 { [0, 1] } else { [1, 0] };
        let mut got: [Option<Ingest>; 2] = [None, None];
        for i in order {
            got[i] = Some(ingest(&stores[i], &next, &[&*timed(seconds)], bytes).await);
        }
        let [Some(a), Some(b)] = got else {
            unreachable!()
        };
        ratios.push(b.rate() / a.rate());
        println!(
            "| {} ({}) | {:.0} | {:.1} | {:.0} | {:.1} | {:.3} |",
            k + 1,
            if k % 2 == 0 {
                "NONE first"
            } else {
                "INCREMENTAL first"
            },
            a.rate(),
            a.p99_ms(),
            b.rate(),
            b.p99_ms(),
            b.rate() / a.rate()
        );
    }
    ratios.sort_by(f64::total_cmp);
    println!();
    println!(
        "ingest with INCREMENTAL / with NONE: median {:.3}, lowest {:.3}, highest {:.3}",
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1]
    );
    for store in stores {
        store.close().await.unwrap();
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // Timing lines on stderr with RUST_LOG=debug: each slow batch, each step of the store's.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let mut captures = 200_000usize;
    let mut bytes = 1000usize;
    let mut seconds = 10u64;
    let mut rounds = 5usize;
    let mut store_kind = "sqlite".to_owned();
    let mut admin_url = None;
    let mut phase = "rounds".to_owned();
    let mut layout: Option<String> = None;
    let mut idle: Option<u64> = None;
    let mut min_free_gb = 4u64;
    let mut settle = true;
    let mut warm_up = 10_000usize;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--captures" => captures = value.parse().unwrap(),
            "--record-bytes" => bytes = value.parse().unwrap(),
            "--seconds" => seconds = value.parse().unwrap(),
            "--rounds" => rounds = value.parse().unwrap(),
            "--store" => store_kind = value,
            "--pg-admin-url" => admin_url = Some(value),
            "--phase" => phase = value,
            "--layout" => layout = Some(value),
            "--idle" => idle = Some(value.parse().unwrap()),
            "--min-free-gb" => min_free_gb = value.parse().unwrap(),
            "--warm-up" => warm_up = value.parse().unwrap(),
            "--settle" => settle = matches!(value.as_str(), "yes" | "true" | "1"),
            other => panic!("unknown flag {other}"),
        }
    }
    let dir = tempfile::tempdir().unwrap();
    match phase.as_str() {
        "rounds" => {}
        "disk" => {
            let layout = layout.as_deref().unwrap_or("oldest-first");
            return disk(dir.path(), captures, bytes, layout).await;
        }
        "auto-vacuum" => {
            return auto_vacuum_cost(dir.path(), captures, bytes, seconds, rounds).await
        }
        other => panic!("--phase: rounds, disk or auto-vacuum, not {other}"),
    }
    let layout = layout.unwrap_or_else(|| "interleaved".to_owned());
    let target = match store_kind.as_str() {
        "sqlite" => Target::Sqlite(dir.path().join("retention.db")),
        "postgres" => Target::Postgres(
            fresh_pg(
                admin_url
                    .as_deref()
                    .expect("--store postgres needs --pg-admin-url"),
                "truthtable_retention_bench",
            )
            .await,
        ),
        other => panic!("--store: sqlite or postgres, not {other}"),
    };
    let store = Store::open(&Config::with_db(target.db())).await.unwrap();
    let load = Instant::now();
    // Captures from the year before the first, stored first and erased by a pass before the
    // rounds: a store under retention has run passes before and holds their tombstones, which
    // every batch of ingest looks its ids up in (and PostgreSQL plans that look-up by how many
    // there are).
    build_with(&store, "w", warm_up, bytes, |_| Some(FIRST_YEAR - 1)).await;
    match layout.as_str() {
        // Every other capture old, the years in turn: each pass erases a tenth of the store,
        // scattered over it.
        "interleaved" => build(&store, captures, rounds, bytes).await,
        // The older half stored first, a year after another: each pass erases a run of
        // captures stored together, and its vacuum moves pages from the file's end into them.
        "oldest-first" => {
            let half = captures / 2;
            build_with(&store, "c", captures, bytes, |i| {
                (i < half).then(|| FIRST_YEAR + (i * rounds / half.max(1)) as i32)
            })
            .await
        }
        other => panic!("--layout: oldest-first or interleaved, not {other}"),
    }
    store.purge().await.unwrap();
    let loaded_in = load.elapsed().as_secs_f64();
    let warmed = if warm_up > 0 {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let retain = Duration::from_secs(u64::try_from(now - new_year(FIRST_YEAR)).unwrap());
        let t = Instant::now();
        let pass = retention_pass(&store, &Eraser::new(Some(retain)), retain)
            .await
            .unwrap()
            .unwrap();
        format!(
            "; a pass before the rounds erased the {} captures from {} in {:.0} s",
            pass.erased,
            FIRST_YEAR - 1,
            t.elapsed().as_secs_f64()
        )
    } else {
        "; no pass before the rounds (`--warm-up 0`)".to_owned()
    };
    // A store that grew over months has long been vacuumed and analyzed, and its pages written
    // out; one loaded a moment ago has not, and PostgreSQL's autovacuum and autoanalyze of the
    // loaded tables, and the checkpoint of what the load wrote, would run beside the first
    // stretches (BENCHMARKS.md, "Retention"). `--settle no` leaves the store as loaded.
    let settled = match (&target, settle) {
        (Target::Postgres(url), true) => {
            let client = pg(url).await;
            let t = Instant::now();
            client.batch_execute("VACUUM (ANALYZE)").await.unwrap();
            client.batch_execute("CHECKPOINT").await.unwrap();
            format!(
                "; then `VACUUM (ANALYZE)` and `CHECKPOINT` in {:.0} s",
                t.elapsed().as_secs_f64()
            )
        }
        (Target::Postgres(_), false) => "; not settled (`--settle no`)".to_owned(),
        (Target::Sqlite(_), _) => String::new(),
    };
    let before = target.size().await;
    let (idle, min_free) = (idle.unwrap_or(4 * seconds), min_free_gb * 1_000_000_000);
    println!(
        "{store_kind}: {captures} captures of ~{bytes} bytes ({} started in {FIRST_YEAR}–{}, the rest in 2099; layout {layout}) loaded in {loaded_in:.0} s{warmed}{settled}, {:.1} MB",
        captures.div_ceil(2),
        FIRST_YEAR + rounds as i32 - 1,
        before as f64 / 1e6
    );
    println!(
        "stretches alone {seconds} s; beside a pass, windows of {seconds} s of ingest each followed by {idle} s without, until the pass ends"
    );
    println!();
    let mut background = match &target {
        Target::Postgres(url) => Some(Background::start(url).await),
        Target::Sqlite(_) => None,
    };
    if background.is_some() {
        println!("| stretch | ingest records/s | batch p50 ms | batch p99 ms | longest batch ms | store MB at its end | PostgreSQL beside it (autovacuum worker seconds; checkpoints) |");
        println!("|---|---|---|---|---|---|---|");
    } else {
        println!("| stretch | ingest records/s | batch p50 ms | batch p99 ms | longest batch ms | store MB at its end |");
        println!("|---|---|---|---|---|---|");
    }

    let next = AtomicU64::new(0);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut notes = Vec::new();
    if let Some(b) = background.as_mut() {
        b.take().await;
        b.statements().await;
    }
    let (first, first_size) =
        stretch_alone(&store, &next, seconds, bytes, &target, &mut background).await;
    let mut alone = vec![first];
    let mut beside = Vec::new();
    let mut passes = Vec::new();
    for k in 0..rounds {
        // The cut-off: the start of the year after this round's, so the pass erases that year.
        let cutoff = new_year(FIRST_YEAR + k as i32 + 1);
        let retain = Duration::from_secs(u64::try_from(now - cutoff).unwrap());
        let eraser = Eraser::new(Some(retain));
        let done = AtomicBool::new(false);
        let started = Instant::now();
        eprintln!("[{}] pass {}", utc(), k + 1);
        let ((during, count, full), pass) = tokio::join!(
            windows(
                &store,
                &next,
                &done,
                (seconds, idle),
                bytes,
                (dir.path(), min_free)
            ),
            async {
                let pass = retention_pass(&store, &eraser, retain)
                    .await
                    .unwrap()
                    .unwrap();
                done.store(true, Ordering::Relaxed);
                (pass, started.elapsed())
            }
        );
        if full {
            notes.push(format!(
                "pass {}: no more windows of ingest beside it, under {min_free_gb} GB free on disk",
                k + 1
            ));
        }
        let size = target.size().await;
        let bg = match background.as_mut() {
            Some(b) => Some(b.take().await),
            None => None,
        };
        row(
            &format!(
                "beside pass {} ({} erased in {:.1} s; {count} window(s), {:.1} s of ingest)",
                k + 1,
                pass.0.erased,
                pass.1.as_secs_f64(),
                during.secs
            ),
            &during,
            size,
            bg.as_deref(),
        );
        if let Some(b) = background.as_ref() {
            for line in b.statements().await {
                notes.push(format!("pass {}: {line}", k + 1));
            }
        }
        beside.push(during);
        passes.push(pass);
        let (after, _) =
            stretch_alone(&store, &next, seconds, bytes, &target, &mut background).await;
        alone.push(after);
    }
    eprintln!("[{}] passes done", utc());
    println!();
    for note in &notes {
        println!("- {note}");
    }
    if !notes.is_empty() {
        println!();
    }
    let mut ratios = Vec::new();
    for (k, during) in beside.iter().enumerate() {
        if during.records == 0 {
            continue;
        }
        let baseline = (alone[k].rate() + alone[k + 1].rate()) / 2.0;
        ratios.push(during.rate() / baseline);
    }
    let listed = ratios
        .iter()
        .map(|r| format!("{r:.2}"))
        .collect::<Vec<_>>()
        .join(", ");
    ratios.sort_by(f64::total_cmp);
    let erased: u64 = passes.iter().map(|p| p.0.erased).sum();
    let took: f64 = passes.iter().map(|p| p.1.as_secs_f64()).sum();
    let p99 = |v: &[Ingest]| v.iter().map(|i| i.p99_ms()).fold(0.0, f64::max);
    if !ratios.is_empty() {
        println!(
            "ingest beside a pass / alone (each pass against the mean of the stretches either side): {listed} (passes in order); median {:.2}, lowest {:.2}, highest {:.2}",
            ratios[ratios.len() / 2],
            ratios[0],
            ratios[ratios.len() - 1]
        );
    }
    println!(
        "batch p99: at most {:.1} ms alone, at most {:.1} ms beside a pass",
        p99(&alone),
        p99(&beside)
    );
    println!(
        "passes: {erased} captures erased in {took:.0} s ({:.0}/s, pauses included)",
        erased as f64 / took
    );
    let ingested = next.load(Ordering::Relaxed);
    let after = target.size().await;
    store.close().await.unwrap();
    // What ingest alone added per record, in the first stretch (before anything was erased):
    // the store's size had nothing been erased is about `before` plus that for every record
    // ingested, and what the passes freed (given back, or taken again by ingest) the difference.
    let per_record = first_size.saturating_sub(before) as f64 / alone[0].records.max(1) as f64;
    let unerased = before as f64 + per_record * ingested as f64;
    println!(
        "size: {:.1} MB before the passes; {:.1} MB after them, with {ingested} records ingested ({per_record:.0} bytes each in the first stretch: {:.1} MB had nothing been erased, so the passes freed about {:.1} MB)",
        mb(before),
        mb(after),
        unerased / 1e6,
        (unerased - after as f64) / 1e6
    );
    if let Target::Sqlite(db) = &target {
        let free = free_bytes(dir.path()).unwrap_or(0);
        if free < 2 * after {
            println!(
                "no closing VACUUM: {:.1} GB free on disk, and it may need up to twice the file's {:.1} GB",
                free as f64 / 1e9,
                after as f64 / 1e9
            );
        } else {
            let t = Instant::now();
            rusqlite::Connection::open(db)
                .unwrap()
                .execute_batch("VACUUM")
                .unwrap();
            println!(
                "after a closing VACUUM ({:.0} s): {:.1} MB",
                t.elapsed().as_secs_f64(),
                mb(target.size().await)
            );
        }
    }
}
