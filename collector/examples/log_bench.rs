//! What the verifiable log costs (a benchmark, not a test; run by `bench/log`, numbers in
//! BENCHMARKS.md "Verifiable log"):
//!
//! - `ingest`: the release collector on a fresh store with `--log on` and `--log off`, side by
//!   side in alternating order, `--rounds` times, SQLite and PostgreSQL: `--senders` clients POST
//!   batches of `--batch` records of about `--record-bytes` for `--seconds`; only acknowledged
//!   records count. With the log on, each record's wait from its acknowledgement to the signing
//!   of the first checkpoint that includes it (the store's `signed_at` of that checkpoint).
//! - `million`: a SQLite store of `--records` records (inserted and sequenced in-process, timed),
//!   then the release collector serving `GET /v1/captures/{id}/proof` for 1000 random ids one
//!   after another, and `truthtable-collector verify` over the whole store: its time and peak
//!   memory (the child's maximum resident set size).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use truthtable_collector::config::{Config, DbTarget};
use truthtable_collector::log::{sequencer, Log, LogKey};
use truthtable_collector::store::log::LogStore;
use truthtable_collector::store::{CaptureStore, NewCapture, Store};

fn flag(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_owned())
}

fn record(id: &str, size: usize) -> String {
    let build = |pad: usize| {
        let answer = format!(
            "Opened items can be returned within 30 days. {}",
            "x".repeat(pad)
        );
        let resp = serde_json::json!({"object": "chat.completion", "model": "gpt-4o",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}]})
        .to_string();
        let req = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"What does the refund policy say?"}]}"#;
        serde_json::json!({
            "schema": "truthtable.capture.v1", "id": id,
            "started_at": "2026-11-25T16:10:40.186123Z", "duration_ms": 1804.25,
            "outcome": "complete", "detail": "via_upstream",
            "request": {"method": "POST", "scheme": "http", "authority": "llm.internal",
                "path": "/v1/chat/completions", "query": "", "headers": [["content-type", "application/json"]],
                "body": {"encoding": "utf8", "data": req, "size": req.len(), "truncated": false}},
            "response": {"status": 200, "headers": [["content-type", "application/json"]],
                "body": {"encoding": "utf8", "data": resp, "size": resp.len(), "truncated": false},
                "first_byte_ms": 212.5}
        })
        .to_string()
    };
    let base = build(0).len();
    build(size.saturating_sub(base))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

struct Collector {
    child: Child,
    base: String,
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(bin: &str, args: &[&str]) -> Collector {
    let mut child = Command::new(bin)
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
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
    let addr = rx.recv_timeout(Duration::from_secs(60)).unwrap();
    Collector {
        child,
        base: format!("http://{addr}"),
    }
}

async fn metric(client: &reqwest::Client, base: &str, name: &str) -> Option<u64> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

async fn fresh_pg(admin_url: &str, name: &str) -> String {
    let (client, conn) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
        .await
        .unwrap();
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let (base, query) = admin_url.split_once('?').unwrap_or((admin_url, ""));
    format!("{}/{name}?{query}", &base[..base.rfind('/').unwrap()])
}

/// `(idx, id)` of every entry and `(size, signed at ms)` of every checkpoint.
async fn log_tables(db: &str) -> (Vec<(i64, String)>, Vec<(i64, i64)>) {
    if db.starts_with("postgres") {
        let (client, conn) = tokio_postgres::connect(db, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let entries = client
            .query("SELECT idx, id FROM log_entries", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let cps = client
            .query(
                "SELECT size, (extract(epoch FROM signed_at) * 1000)::int8 FROM log_checkpoints ORDER BY size",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        (entries, cps)
    } else {
        let conn = rusqlite::Connection::open(db).unwrap();
        let mut st = conn.prepare("SELECT idx, id FROM log_entries").unwrap();
        let entries = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let mut st = conn
            .prepare("SELECT size, signed_at_ms FROM log_checkpoints ORDER BY size")
            .unwrap();
        let cps = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        (entries, cps)
    }
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct Run {
    per_s: f64,
    /// p50, p99, max of acknowledgement → signed checkpoint, in ms (log on only).
    wait: Option<(i64, i64, i64)>,
}

#[allow(clippy::too_many_arguments)]
async fn ingest_run(
    bin: &str,
    db: &str,
    key: &str,
    log: &str,
    secs: u64,
    senders: usize,
    batch: usize,
    size: usize,
) -> Run {
    let proc = start(bin, &["--db", db, "--log-key", key, "--log", log]);
    let client = reqwest::Client::new();
    let acks: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let began = Instant::now();
    let mut tasks = Vec::new();
    for lane in 0..senders {
        let (client, base, acks, stop) = (
            client.clone(),
            proc.base.clone(),
            acks.clone(),
            stop.clone(),
        );
        let log = log.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let ids: Vec<String> = (0..batch)
                    .map(|i| format!("{log}-{lane}-{n}-{i}"))
                    .collect();
                let body: String = ids.iter().map(|id| record(id, size) + "\n").collect();
                let ok = client
                    .post(format!("{base}/v1/captures"))
                    .header("content-type", "application/x-ndjson")
                    .body(body)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                if ok {
                    let at = now_ms();
                    acks.lock()
                        .unwrap()
                        .extend(ids.into_iter().map(|id| (id, at)));
                }
                n += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = began.elapsed().as_secs_f64();
    let acked = acks.lock().unwrap().len();
    let per_s = acked as f64 / elapsed;
    if log == "off" {
        return Run { per_s, wait: None };
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while metric(&client, &proc.base, "truthtable_log_signed_size").await < Some(acked as u64) {
        assert!(Instant::now() < deadline, "the log did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(proc);
    let (entries, cps) = log_tables(db).await;
    let index: std::collections::HashMap<String, i64> =
        entries.into_iter().map(|(i, id)| (id, i)).collect();
    let mut waits: Vec<i64> = acks
        .lock()
        .unwrap()
        .iter()
        .map(|(id, at)| {
            let idx = index[id];
            let signed = cps.iter().find(|(n, _)| *n > idx).unwrap().1;
            signed - at
        })
        .collect();
    waits.sort_unstable();
    Run {
        per_s,
        wait: Some((
            percentile(&waits, 0.5),
            percentile(&waits, 0.99),
            *waits.last().unwrap_or(&0),
        )),
    }
}

async fn ingest(bin: &str) {
    let secs: u64 = flag("--seconds", "8").parse().unwrap();
    let rounds: usize = flag("--rounds", "3").parse().unwrap();
    let senders: usize = flag("--senders", "4").parse().unwrap();
    let batch: usize = flag("--batch", "88").parse().unwrap();
    let size: usize = flag("--record-bytes", "2980").parse().unwrap();
    let pg_admin = flag("--pg-admin-url", "");
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("log.key");
    std::fs::write(&key, LogKey::generate("bench/log").unwrap().private_key()).unwrap();
    let key = key.display().to_string();
    println!("| store | round | log off (records/s) | log on (records/s) | on ÷ off | ack → signed checkpoint p50 / p99 / max (ms) |");
    println!("|---|---|---|---|---|---|");
    for store in flag("--stores", "sqlite,postgres").split(',') {
        let mut ratios = Vec::new();
        for round in 0..rounds {
            let mut off = 0.0;
            let mut on = (0.0, None);
            let order = if round % 2 == 0 {
                ["off", "on"]
            } else {
                ["on", "off"]
            };
            for log in order {
                let name = format!("logbench_{round}_{log}");
                let db = if store == "sqlite" {
                    dir.path().join(format!("{name}.db")).display().to_string()
                } else {
                    fresh_pg(&pg_admin, &name).await
                };
                let r = ingest_run(bin, &db, &key, log, secs, senders, batch, size).await;
                if log == "off" {
                    off = r.per_s;
                } else {
                    on = (r.per_s, r.wait);
                }
            }
            let (p50, p99, max) = on.1.unwrap_or_default();
            ratios.push(on.0 / off);
            println!(
                "| {store} | {} | {off:.0} | {:.0} | {:.3} | {p50} / {p99} / {max} |",
                round + 1,
                on.0,
                on.0 / off
            );
        }
        ratios.sort_by(f64::total_cmp);
        println!(
            "| {store} | median | | | {:.3} | |",
            ratios[ratios.len() / 2]
        );
    }
}

/// Runs `cmd` to its end; returns its wall time and the child's peak resident set (KiB). The
/// child is reaped by `wait4` (which also gives its resource use).
#[allow(clippy::zombie_processes)]
fn timed(cmd: &mut Command) -> (Duration, i64, String) {
    let began = Instant::now();
    let child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let pid = child.id() as libc::pid_t;
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.unwrap(), &mut out).unwrap();
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, writing into the locals above.
    unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    (began.elapsed(), usage.ru_maxrss, out)
}

async fn million(bin: &str) {
    let n: u64 = flag("--records", "1000000").parse().unwrap();
    let dir = flag("--dir", "/tmp");
    let dir = tempfile::tempdir_in(dir).unwrap();
    let path = dir.path().join("million.db");
    let store = Store::open(&Config::with_db(DbTarget::Sqlite(path.clone())))
        .await
        .unwrap();
    let key = LogKey::generate("bench/million").unwrap();
    let key_path = dir.path().join("log.key");
    std::fs::write(&key_path, key.private_key()).unwrap();
    let vkey = key.verifier_key().to_owned();
    let log = Log::new(key).unwrap();
    let began = Instant::now();
    let mut i = 0;
    while i < n {
        let batch: Vec<NewCapture> = (i..(i + 5000).min(n))
            .map(|k| {
                let id = format!("m-{k:08}");
                NewCapture {
                    raw: record(&id, 600),
                    id,
                    started_at: "2026-11-25T16:10:40.186123Z".into(),
                    method: "POST".into(),
                    path: "/v1/chat/completions".into(),
                    status: Some(200),
                    outcome: "complete".into(),
                    duration_ms: 1.0,
                }
            })
            .collect();
        i += batch.len() as u64;
        store.insert_batch(batch).await.unwrap();
    }
    let stored = began.elapsed();
    let began = Instant::now();
    while sequencer::sequence(&store, &log, false).await.unwrap() > 0 {}
    sequencer::sign(&store, &log).await.unwrap();
    let sequenced = began.elapsed();
    assert_eq!(store.log_state().await.unwrap().size, n);
    store.close().await.unwrap();
    drop(store);
    println!("records: {n} of 600 bytes; stored in {:.1} s; sequenced and signed in {:.1} s ({:.0} records/s)",
        stored.as_secs_f64(), sequenced.as_secs_f64(), n as f64 / sequenced.as_secs_f64());
    let db_bytes = std::fs::metadata(&path).unwrap().len();
    println!("database: {:.0} MB", db_bytes as f64 / 1e6);

    let proc = start(
        bin,
        &[
            "--db",
            &path.display().to_string(),
            "--log-key",
            &key_path.display().to_string(),
        ],
    );
    let client = reqwest::Client::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut lat = Vec::new();
    for round in 0..1100 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let id = format!("m-{:08}", seed % n);
        let t = Instant::now();
        let r = client
            .get(format!("{}/v1/captures/{id}/proof", proc.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap();
        if round >= 100 {
            lat.push(t.elapsed().as_micros() as i64);
        }
    }
    lat.sort_unstable();
    println!(
        "proof over HTTP (1000 random ids, after 100 to warm up): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&lat, 0.5) as f64 / 1000.0,
        percentile(&lat, 0.99) as f64 / 1000.0,
        *lat.last().unwrap() as f64 / 1000.0
    );
    drop(proc);
    let (took, rss_kib, out) = timed(Command::new(bin).args([
        "verify",
        "--db",
        &path.display().to_string(),
        "--key",
        &vkey,
    ]));
    println!(
        "verify: {:.1} s, peak memory {:.0} MB; it said: {}",
        took.as_secs_f64(),
        rss_kib as f64 / 1024.0,
        out.lines().last().unwrap_or_default()
    );
    let _ = Path::new(&path);
}

#[tokio::main]
async fn main() {
    let bin = flag("--collector", "target/release/truthtable-collector");
    match std::env::args().nth(1).as_deref() {
        Some("ingest") => ingest(&bin).await,
        Some("million") => million(&bin).await,
        _ => panic!("usage: log_bench ingest|million [flags]"),
    }
}
