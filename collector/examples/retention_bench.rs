//! What a retention pass costs ingest, and what it gives back on disk, on a SQLite store: a store
//! of `--captures` records (half of them started in 2020, half in 2099), then, paired on one
//! machine in one run, the store's ingest rate (batches of 88 records of about `--record-bytes`,
//! `insert_batch` straight into the store, one writer) without a pass, with a 180-day retention
//! pass erasing the old half running beside it, and without again; and the database file's size
//! (plus its write-ahead log) before the pass, after it, and after a `VACUUM`. See BENCHMARKS.md.
//!
//! `cargo run --release -p truthtable-collector --example retention_bench -- --captures 200000`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use truthtable_collector::config::{Config, DbTarget};
use truthtable_collector::erase::{retention_pass, Eraser};
use truthtable_collector::store::{CaptureStore, Digest, NewCapture, Store};

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

fn size(db: &Path) -> u64 {
    let wal = db.with_extension("db-wal");
    [db, wal.as_path()]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// Inserts batches of 88 new records until `stop`; returns records per second.
async fn ingest(store: &Store, next: &AtomicU64, stop: &AtomicBool, bytes: usize) -> f64 {
    let started = Instant::now();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let batch: Vec<NewCapture> = (0..88)
            .map(|_| {
                let i = next.fetch_add(1, Ordering::Relaxed);
                record(&format!("new-{i}"), "2099-06-01T00:00:00Z", bytes)
            })
            .collect();
        n += store.insert_batch(batch).await.unwrap().stored;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// A fresh store of `captures` records, every other one started in 2020, with their digests.
async fn build(dir: &Path, captures: usize, bytes: usize) -> Store {
    let db = dir.join("retention.db");
    let store = Store::open(&Config::with_db(DbTarget::Sqlite(db)))
        .await
        .unwrap();
    let old_us = 1_577_836_800_000_000i64; // 2020-01-01
    let new_us = 4_070_908_800_000_000i64; // 2099-01-01
    for chunk in 0..captures.div_ceil(1000) {
        let ids: Vec<(String, bool)> = (chunk * 1000..((chunk + 1) * 1000).min(captures))
            .map(|i| (format!("c-{i}"), i % 2 == 0))
            .collect();
        let batch = ids
            .iter()
            .map(|(id, old)| {
                let at = if *old {
                    "2020-01-01T00:00:00Z"
                } else {
                    "2099-01-01T00:00:00Z"
                };
                record(id, at, bytes)
            })
            .collect();
        let out = store.insert_batch(batch).await.unwrap();
        let digests = out
            .new
            .iter()
            .map(|&(i, seq)| {
                let (id, old) = &ids[i];
                (seq, digest(if *old { old_us } else { new_us }, id))
            })
            .collect();
        store.put_digests(digests).await.unwrap();
    }
    store.purge().await.unwrap();
    store
}

const RETAIN: Duration = Duration::from_secs(180 * 86_400);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut captures = 200_000usize;
    let mut bytes = 1000usize;
    let mut seconds = 10u64;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--captures" => captures = value.parse().unwrap(),
            "--record-bytes" => bytes = value.parse().unwrap(),
            "--seconds" => seconds = value.parse().unwrap(),
            other => panic!("unknown flag {other}"),
        }
    }
    // Disk: the pass alone, then VACUUM.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("retention.db");
    let load = Instant::now();
    let store = build(dir.path(), captures, bytes).await;
    let before = size(&db);
    println!(
        "store: {captures} captures of ~{bytes} bytes ({} started in 2020) loaded in {:.0} s",
        captures.div_ceil(2),
        load.elapsed().as_secs_f64()
    );
    let alone = Instant::now();
    let pass = retention_pass(&store, &Eraser::new(Some(RETAIN)), RETAIN)
        .await
        .unwrap()
        .unwrap();
    let alone = alone.elapsed();
    let after = size(&db);
    store.close().await.unwrap();
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("VACUUM")
        .unwrap();
    let vacuumed = size(&db);
    println!(
        "pass alone: {} erased in {:.1} s; file + WAL {:.1} MB before, {:.1} MB after (secure_delete zeroes, the file keeps its pages for reuse), {:.1} MB after VACUUM",
        pass.erased,
        alone.as_secs_f64(),
        before as f64 / 1e6,
        after as f64 / 1e6,
        vacuumed as f64 / 1e6
    );
    drop(dir);

    // Ingest: without, beside, and again without a pass, on a fresh store of the same size.
    let dir = tempfile::tempdir().unwrap();
    let store = build(dir.path(), captures, bytes).await;
    let next = AtomicU64::new(0);
    let timed = |secs: u64| {
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            s.store(true, Ordering::Relaxed);
        });
        stop
    };
    let stop = timed(seconds);
    let base1 = ingest(&store, &next, &stop, bytes).await;
    // With the pass: ingest runs until the pass ends.
    let stop = Arc::new(AtomicBool::new(false));
    let eraser = Eraser::new(Some(RETAIN));
    let pass_started = Instant::now();
    let (rate, pass) = tokio::join!(ingest(&store, &next, &stop, bytes), async {
        let pass = retention_pass(&store, &eraser, RETAIN)
            .await
            .unwrap()
            .unwrap();
        stop.store(true, Ordering::Relaxed);
        (pass, pass_started.elapsed())
    });
    let (pass, took) = pass;
    let stop = timed(seconds);
    let base2 = ingest(&store, &next, &stop, bytes).await;
    let baseline = (base1 + base2) / 2.0;
    println!(
        "ingest without a pass: {base1:.0} and {base2:.0} records/s; beside the pass: {rate:.0} records/s = {:.2} of without",
        rate / baseline
    );
    println!(
        "pass: {} captures erased in {:.1} s ({:.0}/s)",
        pass.erased,
        took.as_secs_f64(),
        pass.erased as f64 / took.as_secs_f64()
    );
}
