//! The collector's ingest rate next to its store's floor, for SQLite and PostgreSQL, in one run.
//! Run by `bench/ingest` (which builds this, starts PostgreSQL and writes the results); see
//! BENCHMARKS.md.
//!
//! - ingest: the release `truthtable-collector` on a fresh store; `--senders` concurrent clients
//!   POST NDJSON batches of `--batch` records of about `--record-bytes` each, as the filter
//!   sends them, for `--seconds`; only records acknowledged (200, all stored) count. Then the
//!   wait until the list no longer says `indexing` (the digests, written behind ingest, caught
//!   up): reported as seconds after the last answer and as records/s from start to all indexed.
//! - floor: the same records (same bytes, same summary columns, computed once) inserted into a
//!   fresh store with the same schema, one transaction per batch, by the simplest loop the
//!   store allows: one connection, a prepared `INSERT` per record between `BEGIN` and `COMMIT`.
//!   PostgreSQL takes concurrent writers, so its floor is also measured with `--senders` such
//!   loops at once ("floor xN").
//!
//! Rounds alternate ingest and floor so that drift on the shared machine hits both alike.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use truthtable_collector::config::{Config, DbTarget};
use truthtable_collector::store::{CaptureStore, Store};

struct Args {
    collector: String,
    pg_admin_url: String,
    seconds: u64,
    senders: usize,
    batch: usize,
    record_bytes: usize,
    rounds: usize,
    stores: Vec<String>,
}

fn args() -> Args {
    let mut a = Args {
        collector: "target/release/truthtable-collector".into(),
        pg_admin_url: String::new(),
        seconds: 10,
        senders: 4,
        batch: 88,
        record_bytes: 2980,
        rounds: 3,
        stores: vec!["sqlite".into(), "postgres".into()],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--collector" => a.collector = value,
            "--pg-admin-url" => a.pg_admin_url = value,
            "--seconds" => a.seconds = value.parse().unwrap(),
            "--senders" => a.senders = value.parse().unwrap(),
            "--batch" => a.batch = value.parse().unwrap(),
            "--record-bytes" => a.record_bytes = value.parse().unwrap(),
            "--rounds" => a.rounds = value.parse().unwrap(),
            "--stores" => a.stores = value.split(',').map(str::to_owned).collect(),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

/// One v1 record of a non-streamed chat exchange with a 1 KiB-ish request and answer, padded
/// so the line is `size` bytes; `id` has a fixed width.
fn record(id: &str, size: usize) -> String {
    let request = serde_json::json!({"model": "gpt-4o", "messages": [
        {"role": "system", "content": "Answer from the retrieved passages only."},
        {"role": "user", "content": "What does the refund policy say about opened items?"}]});
    let response = serde_json::json!({"object": "chat.completion", "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Opened items can be returned within 30 days."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 412, "completion_tokens": 18}});
    let build = |pad: usize| {
        let mut req = request.clone();
        req["passage"] = "x".repeat(pad / 2).into();
        let mut resp = response.clone();
        resp["system_fingerprint"] = "y".repeat(pad - pad / 2).into();
        let (req, resp) = (req.to_string(), resp.to_string());
        serde_json::json!({
            "schema": "truthtable.capture.v1", "id": id,
            "started_at": "2026-11-25T16:10:40.186123Z", "duration_ms": 1804.25,
            "outcome": "complete", "detail": "via_upstream",
            "request": {"method": "POST", "scheme": "http", "authority": "llm.internal",
                "path": "/v1/chat/completions", "query": "",
                "headers": [["content-type", "application/json"], ["authorization", "[REDACTED]"],
                            ["x-request-id", id], ["user-agent", "bench/1.0"]],
                "body": {"encoding": "utf8", "data": req, "size": req.len(), "truncated": false}},
            "response": {"status": 200,
                "headers": [["content-type", "application/json"], ["x-envoy-upstream-service-time", "212"]],
                "body": {"encoding": "utf8", "data": resp, "size": resp.len(), "truncated": false},
                "first_byte_ms": 212.5}
        })
        .to_string()
    };
    let base = build(0).len();
    build(size.saturating_sub(base))
}

/// The same record as the filter frames it (`delivery_format: "framed"`): its JSON without the
/// bodies' encoding and data, then the body bytes raw.
fn frame_of(line: &str) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
    let mut bodies = Vec::new();
    for side in ["request", "response"] {
        let body = &mut v[side]["body"];
        bodies.push(body["data"].as_str().unwrap().to_owned());
        let (size, truncated) = (body["size"].clone(), body["truncated"].clone());
        *body = serde_json::json!({"size": size, "truncated": truncated});
    }
    let json = v.to_string();
    let req_at = json.find(r#""body":{"#).unwrap() + 8;
    let resp_at = json.rfind(r#""body":{"#).unwrap() + 8;
    truthtable_collector::frames::encode(
        &json,
        req_at,
        bodies[0].as_bytes(),
        resp_at,
        bodies[1].as_bytes(),
    )
}

fn batch_lines(tag: &str, lane: usize, n: u64, batch: usize, size: usize) -> Vec<String> {
    (0..batch)
        .map(|i| record(&format!("{tag}-{lane:02}-{n:09}-{i:03}"), size))
        .collect()
}

#[derive(Default)]
struct Count {
    records: AtomicU64,
    bytes: AtomicU64,
}

struct Rate {
    records_per_s: f64,
    mb_per_s: f64,
    /// Ingest only: seconds from the last acknowledgement until every record had its digest.
    catch_up_s: f64,
    /// Ingest only: records acknowledged ÷ seconds from the start until all had their digests.
    indexed_per_s: f64,
}

fn rate(count: &Count, elapsed: Duration) -> Rate {
    let s = elapsed.as_secs_f64();
    Rate {
        records_per_s: count.records.load(Ordering::Relaxed) as f64 / s,
        mb_per_s: count.bytes.load(Ordering::Relaxed) as f64 / s / 1e6,
        catch_up_s: 0.0,
        indexed_per_s: 0.0,
    }
}

/// A fresh PostgreSQL database; returns its URL (with the admin URL's credentials).
async fn fresh_pg(admin_url: &str, name: &str) -> String {
    let (client, conn) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
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

fn target(store: &str, dir: &std::path::Path, url: Option<&str>) -> String {
    match store {
        "sqlite" => dir.join("bench.db").display().to_string(),
        _ => url.unwrap().to_owned(),
    }
}

async fn ingest(a: &Args, db: &str, tag: &str, framed: bool) -> Rate {
    let mut child = Command::new(&a.collector)
        .args(["--listen", "127.0.0.1:0", "--db", db])
        .env("RUST_LOG", "warn,truthtable_collector=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on ").nth(1) {
                let _ = tx.send(
                    rest.split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned(),
                );
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    let url = format!("http://{addr}/v1/captures");
    let count = Arc::new(Count::default());
    let stop = Arc::new(AtomicBool::new(false));
    let client = reqwest::Client::new();
    let mut tasks = tokio::task::JoinSet::new();
    let start = Instant::now();
    for lane in 0..a.senders {
        let (client, url, count, stop, tag) = (
            client.clone(),
            url.clone(),
            Arc::clone(&count),
            Arc::clone(&stop),
            tag.to_owned(),
        );
        let (batch, size) = (a.batch, a.record_bytes);
        // One body per sender, built before the clock starts; each send stamps a fresh batch
        // number into the ids (fixed width), so the senders spend next to nothing.
        let lines = batch_lines(&tag, lane, 0, batch, size);
        let template = if framed {
            lines.iter().flat_map(|l| frame_of(l)).collect()
        } else {
            let mut body = lines.join("\n");
            body.push('\n');
            body.into_bytes()
        };
        let content_type = if framed {
            truthtable_collector::frames::CONTENT_TYPE
        } else {
            "application/x-ndjson"
        };
        let marker = format!("{tag}-{lane:02}-");
        let slots: Vec<usize> = template
            .windows(marker.len())
            .enumerate()
            .filter(|(_, w)| *w == marker.as_bytes())
            .map(|(i, _)| i + marker.len())
            .collect();
        tasks.spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut body = template.clone();
                let digits = format!("{n:09}");
                for &at in &slots {
                    body[at..at + 9].copy_from_slice(digits.as_bytes());
                }
                let len = body.len() as u64;
                let resp = client
                    .post(&url)
                    .header("content-type", content_type)
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200);
                let v: serde_json::Value = resp.json().await.unwrap();
                assert_eq!(v["stored"].as_u64(), Some(batch as u64));
                count.records.fetch_add(batch as u64, Ordering::Relaxed);
                count.bytes.fetch_add(len, Ordering::Relaxed);
                n += 1;
            }
        });
    }
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    while let Some(t) = tasks.join_next().await {
        t.unwrap();
    }
    let elapsed = start.elapsed();
    // The index follows behind the acknowledgements: how long after the last one until every
    // record has its digest.
    let list = format!("{url}?limit=1");
    loop {
        let page: serde_json::Value = client
            .get(&list)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if page["indexing"] == false {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let indexed = start.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    let mut r = rate(&count, elapsed);
    r.catch_up_s = (indexed - elapsed).as_secs_f64();
    r.indexed_per_s = count.records.load(Ordering::Relaxed) as f64 / indexed.as_secs_f64();
    r
}

/// The floor: `loops` loops, each on its own connection, insert pre-built batches one
/// transaction each with a prepared INSERT per record.
async fn floor(a: &Args, store: &str, db: &str, tag: &str, loops: usize) -> Rate {
    // The collector's own open creates the schema the floor writes into.
    let mut config = Config::with_db(DbTarget::from_arg(db));
    config.db_pool_size = 1;
    let opened = Store::open(&config).await.unwrap();
    opened.close().await.unwrap();
    // Rows are built before the clock starts: the floor pays for storing, nothing else.
    let batches_per_loop = 4000 / a.batch.max(1) + 8;
    let count = Arc::new(Count::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    let mut prepared = Vec::new();
    for lane in 0..loops {
        let rows: Vec<Vec<String>> = (0..batches_per_loop as u64)
            .map(|n| batch_lines(tag, lane, n, a.batch, a.record_bytes))
            .collect();
        prepared.push(rows);
    }
    let start = Instant::now();
    for (lane, rows) in prepared.into_iter().enumerate() {
        let (count, stop, db, store) = (
            Arc::clone(&count),
            Arc::clone(&stop),
            db.to_owned(),
            store.to_owned(),
        );
        let tag = format!("{tag}-{lane}");
        handles.push(std::thread::spawn(move || {
            if store == "sqlite" {
                sqlite_floor(&db, &rows, &tag, &count, &stop);
            } else {
                pg_floor(&db, &rows, &tag, &count, &stop);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    rate(&count, start.elapsed())
}

const INSERT_ROW: &str = "INSERT INTO captures
    (id, started_at, method, path, status, outcome, duration_ms, model, record)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING";

/// The records of `rows`, again and again with fresh ids (a round number in front).
fn each_batch(
    rows: &[Vec<String>],
    tag: &str,
    stop: &AtomicBool,
    mut f: impl FnMut(Vec<(String, &str)>),
) {
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for batch in rows {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let keyed: Vec<(String, &str)> = batch
                .iter()
                .enumerate()
                .map(|(i, raw)| (format!("{tag}-{round}-{i}"), raw.as_str()))
                .collect();
            f(keyed);
            round += 1;
        }
    }
}

fn sqlite_floor(db: &str, rows: &[Vec<String>], tag: &str, count: &Count, stop: &AtomicBool) {
    let mut conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    each_batch(rows, tag, stop, |batch| {
        let tx = conn.transaction().unwrap();
        {
            let mut stmt = tx.prepare_cached(&INSERT_ROW.replace('$', "?")).unwrap();
            for (id, raw) in &batch {
                stmt.execute(rusqlite::params![
                    id,
                    "2026-11-25T16:10:40.186123Z",
                    "POST",
                    "/v1/chat/completions",
                    200,
                    "complete",
                    1804.25,
                    "gpt-4o-2024-08-06",
                    raw
                ])
                .unwrap();
            }
        }
        tx.commit().unwrap();
        count
            .records
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let bytes: usize = batch.iter().map(|(_, r)| r.len() + 1).sum();
        count.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    });
}

fn pg_floor(url: &str, rows: &[Vec<String>], tag: &str, count: &Count, stop: &AtomicBool) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let stmt = client.prepare(INSERT_ROW).await.unwrap();
        let mut round = 0u64;
        'outer: while !stop.load(Ordering::Relaxed) {
            for batch in rows {
                if stop.load(Ordering::Relaxed) {
                    break 'outer;
                }
                let tx = client.transaction().await.unwrap();
                for (i, raw) in batch.iter().enumerate() {
                    let id = format!("{tag}-{round}-{i}");
                    tx.execute(
                        &stmt,
                        &[
                            &id,
                            &"2026-11-25T16:10:40.186123Z",
                            &"POST",
                            &"/v1/chat/completions",
                            &200i32,
                            &"complete",
                            &1804.25f64,
                            &"gpt-4o-2024-08-06",
                            raw,
                        ],
                    )
                    .await
                    .unwrap();
                }
                tx.commit().await.unwrap();
                count
                    .records
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                let bytes: usize = batch.iter().map(|r| r.len() + 1).sum();
                count.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
                round += 1;
            }
        }
    });
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    let sample = record("bench-00-000000000-000", a.record_bytes);
    println!(
        "# ingest benchmark: {} senders, batches of {} records of {} bytes ({} KiB), {} s per run, {} rounds",
        a.senders,
        a.batch,
        sample.len(),
        (sample.len() + 1) * a.batch / 1024,
        a.seconds,
        a.rounds
    );
    let mut summary = Vec::new();
    let mut index_summary = Vec::new();
    for store in &a.stores {
        let mut runs: Vec<(&str, Vec<Rate>)> = vec![
            ("ingest", vec![]),
            ("ingest framed", vec![]),
            ("floor x1", vec![]),
        ];
        if store == "postgres" {
            runs.push(("floor xN", vec![]));
        }
        for round in 0..a.rounds {
            for (kind, results) in runs.iter_mut() {
                let dir = tempfile::tempdir().unwrap();
                let name = format!("bench_{round}_{}", kind.replace(" ", "_").to_lowercase());
                let url = if store == "postgres" {
                    Some(fresh_pg(&a.pg_admin_url, &name).await)
                } else {
                    None
                };
                let db = target(store, dir.path(), url.as_deref());
                let tag = format!("r{round}");
                let r = match *kind {
                    "ingest" => ingest(&a, &db, &tag, false).await,
                    "ingest framed" => ingest(&a, &db, &tag, true).await,
                    "floor x1" => floor(&a, store, &db, &tag, 1).await,
                    _ => floor(&a, store, &db, &tag, a.senders).await,
                };
                let index = if kind.starts_with("ingest") {
                    format!(
                        "; indexed {:.1} s after the last answer ({:.0} records/s start to indexed)",
                        r.catch_up_s, r.indexed_per_s
                    )
                } else {
                    String::new()
                };
                println!(
                    "{store:8} {kind:13} round {round}: {:8.0} records/s {:7.1} MB/s{index}",
                    r.records_per_s, r.mb_per_s
                );
                results.push(r);
            }
        }
        let med = |rs: &[Rate]| {
            (
                median(rs.iter().map(|r| r.records_per_s).collect()),
                median(rs.iter().map(|r| r.mb_per_s).collect()),
            )
        };
        let (ingest_r, ingest_mb) = med(&runs[0].1);
        for (kind, rs) in &runs {
            let (r, mb) = med(rs);
            let paired: Vec<f64> = runs[0]
                .1
                .iter()
                .zip(rs.iter())
                .map(|(i, f)| i.records_per_s / f.records_per_s)
                .collect();
            summary.push(format!(
                "| {store} | {kind} | {r:.0} | {mb:.1} | {:.2} | {:.2} |",
                ingest_r / r,
                median(paired)
            ));
        }
        let _ = ingest_mb;
        for (kind, rs) in runs.iter().filter(|(k, _)| k.starts_with("ingest")) {
            index_summary.push(format!(
                "| {store} | {kind} | {:.1} | {:.0} |",
                median(rs.iter().map(|r| r.catch_up_s).collect()),
                median(rs.iter().map(|r| r.indexed_per_s).collect()),
            ));
        }
    }
    println!();
    println!("| store | run | records/s (median) | MB/s (median) | ingest ÷ this (medians) | ingest ÷ this (median of paired rounds) |");
    println!("|---|---|---|---|---|---|");
    for line in summary {
        println!("{line}");
    }
    println!();
    println!("| store | run | index caught up, s after the last answer (median) | records/s from start to all indexed (median) |");
    println!("|---|---|---|---|");
    for line in index_summary {
        println!("{line}");
    }
}
