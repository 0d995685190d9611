//! The list, its filters and its search, and the web view's pages, on a store of `--records`
//! captures (100 000 by default), SQLite and PostgreSQL in one run. Run by `bench/web` (which
//! starts PostgreSQL and writes the results); see BENCHMARKS.md.
//!
//! The store is filled through the collector's own ingest path (each line validated and its audit
//! view derived, as `POST /v1/captures` does), in batches of 500. Then every query is timed
//! `--rounds` times through the store interface (what `GET /v1/captures` and the list page call),
//! and the pages through HTTP on an in-process collector (`GET /ui…`, a capture's page: the read
//! plus the template). Last, every digest is deleted and the start-up backfill is timed
//! re-deriving them all: what a migration of a store of that size costs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use truthtable_collector::config::{Config, DbTarget};
use truthtable_collector::store::{CaptureStore, ListFilter, ListQuery, Page, StatusFilter, Store};
use truthtable_collector::{digest, ingest, search, timestamp};

struct Args {
    pg_admin_url: String,
    records: usize,
    rounds: usize,
    stores: Vec<String>,
}

fn args() -> Args {
    let mut a = Args {
        pg_admin_url: String::new(),
        records: 100_000,
        rounds: 15,
        stores: vec!["sqlite".into(), "postgres".into()],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_default();
        match flag.as_str() {
            "--pg-admin-url" => a.pg_admin_url = v,
            "--records" => a.records = v.parse().unwrap(),
            "--rounds" => a.rounds = v.parse().unwrap(),
            "--stores" => a.stores = v.split(',').map(str::to_owned).collect(),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

/// A deterministic generator (xorshift), so every run stores the same captures.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// Zipf-like: small indexes far more often, as words in text are.
    fn skewed(&mut self, n: usize) -> usize {
        let u = (self.next() % 1_000_000) as f64 / 1_000_000.0;
        ((n as f64).powf(u) as usize).saturating_sub(1).min(n - 1)
    }
}

const WORDS: usize = 6000;

fn word(i: usize) -> String {
    const SYLLABLES: [&str; 16] = [
        "ka", "lo", "mi", "ner", "po", "qua", "ri", "sen", "ta", "vu", "wen", "xi", "yo", "zan",
        "bel", "dor",
    ];
    let mut w = String::new();
    let mut n = i + 16;
    while n > 0 {
        w.push_str(SYLLABLES[n % 16]);
        n /= 16;
    }
    w
}

fn sentence(rng: &mut Rng, words: usize) -> String {
    (0..words)
        .map(|_| word(rng.skewed(WORDS)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn body(text: &str) -> serde_json::Value {
    json!({"encoding": "utf8", "data": text, "size": text.len(), "truncated": false})
}

/// One capture line: mostly OpenAI chat completions with passages, some Anthropic streams, some
/// streams the client left, upstream failures and truncated answers; 20 models; one hour of
/// traffic per 3 600 captures.
fn record(i: usize, rng: &mut Rng) -> String {
    let id = format!("bench-{i:07}");
    let secs = 1_795_600_000 + i as i64;
    let started_at = format!(
        "2026-11-25T{:02}:{:02}:{:02}.{:06}Z",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60,
        rng.below(1_000_000)
    );
    let mut question = sentence(rng, 12);
    if i % 10_000 == 7 {
        question.push_str(" needleword");
    }
    let answer = sentence(rng, 40);
    let model = format!("model-{:02}", rng.skewed(20));
    let kind = rng.below(100);
    let (path, req, status, resp_ct, resp, outcome, truncated) = if kind < 15 {
        let req = json!({"model": model, "max_tokens": 512, "stream": true, "messages": [{"role": "user", "content": question}]});
        let mut sse = String::new();
        sse.push_str(&format!("event: message_start\ndata: {}\n\n", json!({"type": "message_start", "message": {"model": model, "usage": {"input_tokens": 40}}})));
        for chunk in answer.split(' ').collect::<Vec<_>>().chunks(8) {
            sse.push_str(&format!("event: content_block_delta\ndata: {}\n\n", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": format!("{} ", chunk.join(" "))}})));
        }
        let aborted = kind < 3;
        if !aborted {
            sse.push_str("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
        }
        (
            "/v1/messages",
            req,
            Some(200),
            "text/event-stream",
            sse,
            if aborted {
                "client_aborted"
            } else {
                "complete"
            },
            false,
        )
    } else {
        let req = json!({"model": model, "messages": [
            {"role": "system", "content": "Answer from the documents."},
            {"role": "user", "content": question}],
            "documents": [{"title": "passage", "text": sentence(rng, 30)}]});
        let failed = kind >= 97;
        let resp = json!({"object": "chat.completion", "model": model, "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 300, "completion_tokens": 60}});
        (
            "/v1/chat/completions",
            req,
            if failed { Some(503) } else { Some(200) },
            "application/json",
            if failed {
                "{\"error\":{\"message\":\"overloaded\"}}".to_owned()
            } else {
                resp.to_string()
            },
            if failed {
                "upstream_failed"
            } else {
                "complete"
            },
            kind == 20,
        )
    };
    let req = req.to_string();
    let mut resp_body = body(&resp);
    if truncated {
        let cut = &resp[..resp.len() / 2];
        resp_body = json!({"encoding": "utf8", "data": cut, "size": resp.len(), "truncated": true});
    }
    json!({
        "schema": "truthtable.capture.v1", "id": id, "started_at": started_at,
        "duration_ms": 800.0 + rng.below(4000) as f64, "outcome": outcome, "detail": "via_upstream",
        "request": {"method": "POST", "scheme": "http", "authority": "llm.internal", "path": path,
            "query": "", "headers": [["content-type", "application/json"], ["authorization", "[REDACTED]"]],
            "body": body(&req)},
        "response": status.map(|s| json!({"status": s, "headers": [["content-type", resp_ct]], "body": resp_body, "first_byte_ms": 200.0}))
    })
    .to_string()
}

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

async fn sql(store: &str, db: &str, statement: &str) {
    if store == "sqlite" {
        let conn = rusqlite::Connection::open(db).unwrap();
        conn.execute_batch(statement).unwrap();
    } else {
        let (client, conn) = tokio_postgres::connect(db, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client.batch_execute(statement).await.unwrap();
    }
}

fn median_and_max(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (ms(v[v.len() / 2]), ms(*v.last().unwrap()))
}

async fn time<F, Fut, T>(rounds: usize, mut f: F) -> (f64, f64, T)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let mut last = f().await; // warm
    let mut times = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        last = f().await;
        times.push(t.elapsed());
    }
    let (m, x) = median_and_max(times);
    (m, x, last)
}

#[tokio::main]
async fn main() {
    let a = args();
    println!("| store | what | rows | median ms | max ms |");
    println!("|---|---|---|---|---|");
    for store_name in &a.stores {
        let dir = tempfile::tempdir().unwrap();
        let db = if store_name == "sqlite" {
            dir.path().join("bench.db").display().to_string()
        } else {
            fresh_pg(&a.pg_admin_url, "tt_list_bench").await
        };
        let config = Config::with_db(DbTarget::from_arg(&db));
        let store = Store::open(&config).await.unwrap();

        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let t = Instant::now();
        let mut lines = Vec::with_capacity(500);
        for i in 0..a.records {
            lines.push(record(i, &mut rng));
            if lines.len() == 500 || i + 1 == a.records {
                let body = lines.join("\n");
                lines.clear();
                let rows = tokio::task::spawn_blocking(move || {
                    ingest::parse_ndjson(body.as_bytes())
                        .unwrap()
                        .into_iter()
                        .map(|line| ingest::to_row(line).0)
                        .collect::<Vec<_>>()
                })
                .await
                .unwrap();
                store.insert_batch(rows).await.unwrap();
            }
        }
        // What the indexer does behind ingest: every record's digest (here after the last batch).
        digest::backfill(&store, &AtomicBool::new(true)).await;
        let fill = t.elapsed().as_secs_f64();
        let stats = store.stats().await.unwrap();
        println!(
            "| {store_name} | fill through ingest and indexing ({} records, {:.0} MB on disk) | {} | {:.0} s total | {:.0} records/s |",
            stats.records,
            stats.bytes as f64 / 1e6,
            stats.records,
            fill,
            stats.records as f64 / fill
        );

        // Statistics, as PostgreSQL's autovacuum gathers them after a bulk load (SQLite's
        // planner has none unless asked; the collector never asks).
        if store_name == "postgres" {
            sql(store_name, &db, "ANALYZE").await;
        }
        let newest = store
            .list(ListQuery {
                limit: 1,
                ..ListQuery::default()
            })
            .await
            .unwrap();
        let top = newest[0].seq;
        let hour = timestamp::unix_micros("2026-11-25T10:00:00Z").unwrap();
        let q = |filter: ListFilter| ListQuery {
            limit: 51,
            filter,
            page: Page::Newest,
            ..ListQuery::default()
        };
        let terms = |s: &str| search::terms(s).unwrap();
        let cases: Vec<(String, ListQuery)> = vec![
            ("newest page, no filter".into(), q(ListFilter::default())),
            (
                "a page 50 000 back, no filter".into(),
                ListQuery {
                    page: Page::Before(top - 50_000),
                    ..q(ListFilter::default())
                },
            ),
            (
                "protocol=anthropic.messages (15 %)".into(),
                q(ListFilter {
                    protocols: vec!["anthropic.messages".into()],
                    ..Default::default()
                }),
            ),
            (
                "model= one of 20 (model-05)".into(),
                q(ListFilter {
                    model: Some("model-05".into()),
                    ..Default::default()
                }),
            ),
            (
                "outcome=client_aborted (3 %)".into(),
                q(ListFilter {
                    outcomes: vec!["client_aborted".into()],
                    ..Default::default()
                }),
            ),
            (
                "status=5xx (3 %)".into(),
                q(ListFilter {
                    status: Some(StatusFilter::Class(5)),
                    ..Default::default()
                }),
            ),
            (
                "mark=truncated (1 %)".into(),
                q(ListFilter {
                    truncated: true,
                    ..Default::default()
                }),
            ),
            (
                "mark=problems".into(),
                q(ListFilter {
                    problems: true,
                    ..Default::default()
                }),
            ),
            (
                "since/until: one hour".into(),
                q(ListFilter {
                    since_us: Some(hour),
                    until_us: Some(hour + 3_600_000_000),
                    ..Default::default()
                }),
            ),
            (
                format!("q= the most common word ({})", word(0)),
                q(ListFilter {
                    terms: terms(&word(0)),
                    ..Default::default()
                }),
            ),
            (
                "q= a word in 10 captures".into(),
                q(ListFilter {
                    terms: terms("needleword"),
                    ..Default::default()
                }),
            ),
            (
                format!("q= two mid-frequency words ({} {})", word(40), word(60)),
                q(ListFilter {
                    terms: terms(&format!("{} {}", word(40), word(60))),
                    ..Default::default()
                }),
            ),
            (
                "q= a 2-letter prefix (ka)".into(),
                q(ListFilter {
                    terms: terms("ka"),
                    ..Default::default()
                }),
            ),
            (
                "q= a word no capture has".into(),
                q(ListFilter {
                    terms: terms("nosuchwordanywhere"),
                    ..Default::default()
                }),
            ),
            (
                "protocol + mark=problems + q".into(),
                q(ListFilter {
                    protocols: vec!["openai.chat".into()],
                    problems: true,
                    terms: terms(&word(3)),
                    ..Default::default()
                }),
            ),
        ];
        for (name, query) in cases {
            let (m, x, rows) = time(a.rounds, || {
                let store = &store;
                let query = query.clone();
                async move { store.list(query).await.unwrap().len() }
            })
            .await;
            println!("| {store_name} | list: {name} | {rows} | {m:.2} | {x:.2} |");
        }
        let (m, x, models) = time(a.rounds, || async { store.models().await.unwrap().len() }).await;
        println!("| {store_name} | the models (loose index scan) | {models} | {m:.2} | {x:.2} |");

        // The pages, through HTTP on an in-process collector over the same store.
        store.close().await.unwrap();
        let store = Store::open(&config).await.unwrap();
        let state = truthtable_collector::state(&config, store).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(truthtable_collector::serve(
            listener,
            Arc::clone(&state),
            async {
                let _ = rx.await;
            },
        ));
        let client = reqwest::Client::new();
        for (name, path) in [
            ("GET /ui (newest 50)", "/ui".to_owned()),
            (
                "GET /ui?q=&protocol=&mark=problems",
                format!("/ui?q={}&protocol=openai.chat&mark=problems", word(3)),
            ),
            (
                "GET /v1/captures (JSON, newest 50)",
                "/v1/captures".to_owned(),
            ),
            (
                "GET /ui/captures/{id} (RAG chat)",
                "/ui/captures/bench-0000100".to_owned(),
            ),
        ] {
            let (m, x, bytes) = time(a.rounds, || {
                let (client, url) = (&client, format!("{base}{path}"));
                async move {
                    let r = client.get(url).send().await.unwrap();
                    assert_eq!(r.status(), 200);
                    r.bytes().await.unwrap().len()
                }
            })
            .await;
            println!("| {store_name} | page: {name} | {bytes} bytes | {m:.2} | {x:.2} |");
        }
        let _ = tx.send(());
        server.await.unwrap().unwrap();

        // The migration: every digest gone, re-derived by the start-up backfill.
        sql(store_name, &db, "DELETE FROM capture_digests").await;
        if store_name == "sqlite" {
            sql(store_name, &db, "DELETE FROM capture_search").await;
        }
        let store = Store::open(&config).await.unwrap();
        let t = Instant::now();
        digest::backfill(&store, &AtomicBool::new(true)).await;
        let s = t.elapsed().as_secs_f64();
        println!(
            "| {store_name} | backfill: every digest re-derived at start | {} | {:.0} s total | {:.0} records/s |",
            a.records,
            s,
            a.records as f64 / s
        );
        store.close().await.unwrap();
    }
}
