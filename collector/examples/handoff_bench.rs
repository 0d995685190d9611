//! Audit hand-offs per second against an instant engine, next to the ingest rate, in one run.
//! Run by `bench/handoff` (which builds it in release mode and writes the table); see
//! BENCHMARKS.md, "Audit hand-off".
//!
//! An in-process `truthtable.audit.v1.AuditService` (tonic, on loopback) answers every audit at
//! once: `SubmitAudit` returns an id and the first `GetAuditResult` says `COMPLETED` with one
//! claim. For each round, on a fresh SQLite store, an in-process collector takes `--records`
//! RAG captures (about 3 kB each) as the filter sends them — `--senders` clients POSTing NDJSON
//! batches of 88 — and:
//! - "ingest alone": no engine; the ingest rate (records acknowledged per second);
//! - "ingest + hand-off, concurrency C": the engine configured with `--audit-concurrency C`; the
//!   ingest rate while the hand-off runs beside it, and hand-offs per second from the first
//!   POST until every capture has its verdict (verdicts stored, `truthtable_audit_judged_total`).
//!
//! Rounds alternate the configurations so that drift on the shared machine hits all alike.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::{Request, Response, Status};
use truthtable_collector::engine::proto::audit_service_server::{AuditService, AuditServiceServer};
use truthtable_collector::engine::proto::*;

#[derive(Default)]
struct Instant_;

#[tonic::async_trait]
impl AuditService for Instant_ {
    async fn submit_audit(
        &self,
        r: Request<AuditRequest>,
    ) -> Result<Response<AuditSubmission>, Status> {
        Ok(Response::new(AuditSubmission {
            audit_id: r.into_inner().request_id,
            status: "completed".into(),
            queue_position: 0,
        }))
    }
    async fn get_audit_result(
        &self,
        r: Request<AuditResultRequest>,
    ) -> Result<Response<AuditResult>, Status> {
        let id = r.into_inner().audit_id;
        Ok(Response::new(AuditResult {
            request_id: id.clone(),
            audit_id: id,
            status: AuditStatus::Completed as i32,
            faithfulness_score: 0.9,
            grade: TrustGrade::A as i32,
            claims: vec![ClaimVerification {
                claim: "Opened items can be returned within 30 days.".into(),
                status: VerificationStatus::Supported as i32,
                confidence: 0.9,
                evidence: vec!["Opened items may be returned within 30 days.".into()],
            }],
            reasoning_trace: "supported".into(),
            completed_at_ms: 1,
            processing_time_ms: 1,
            hallucination_detected: false,
            step_timings: HashMap::new(),
        }))
    }
    async fn health_check(
        &self,
        _: Request<HealthRequest>,
    ) -> Result<Response<HealthResponse>, Status> {
        Ok(Response::new(HealthResponse {
            healthy: true,
            version: "instant".into(),
            dependencies: HashMap::new(),
        }))
    }
    async fn ingest_documents(
        &self,
        _: Request<IngestRequest>,
    ) -> Result<Response<IngestResponse>, Status> {
        Err(Status::unimplemented("no"))
    }
}

fn record(id: &str) -> String {
    let request = serde_json::json!({"model": "gpt-4o", "messages": [
        {"role": "system", "content": "Answer from the retrieved passages only."},
        {"role": "user", "content": "What does the refund policy say about opened items?"}],
        "documents": [{"title": "Refund policy §3", "text": "Opened items may be returned within 30 days. ".repeat(20)}]});
    let response = serde_json::json!({"object": "chat.completion", "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Opened items can be returned within 30 days."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 412, "completion_tokens": 18}});
    let (req, resp) = (request.to_string(), response.to_string());
    serde_json::json!({
        "schema": "truthtable.capture.v1", "id": id,
        "started_at": "2026-11-25T16:10:40.186123Z", "duration_ms": 1804.25,
        "outcome": "complete", "detail": "via_upstream",
        "request": {"method": "POST", "scheme": "http", "authority": "llm.internal",
            "path": "/v1/chat/completions", "query": "",
            "headers": [["content-type", "application/json"], ["x-request-id", id]],
            "body": {"encoding": "utf8", "data": req, "size": req.len(), "truncated": false}},
        "response": {"status": 200, "headers": [["content-type", "application/json"]],
            "body": {"encoding": "utf8", "data": resp, "size": resp.len(), "truncated": false},
            "first_byte_ms": 212.5}
    })
    .to_string()
}

struct Outcome {
    ingest_per_s: f64,
    handoff_per_s: Option<f64>,
}

async fn round(engine: Option<(u16, usize)>, records: usize, senders: usize, tag: &str) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let mut argv = vec![
        "truthtable-collector".to_owned(),
        "--db".to_owned(),
        dir.path().join("b.db").display().to_string(),
    ];
    if let Some((port, c)) = engine {
        argv.extend([
            "--audit-engine".to_owned(),
            format!("grpc://127.0.0.1:{port}"),
            "--audit-concurrency".to_owned(),
            c.to_string(),
        ]);
    }
    let config = truthtable_collector::Config::new(
        truthtable_collector::config::Cli::try_from_args(argv).unwrap(),
        |_| None,
    );
    let store = truthtable_collector::store::Store::open(&config)
        .await
        .unwrap();
    let state = truthtable_collector::state(&config, store).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(truthtable_collector::serve(
        listener,
        Arc::clone(&state),
        async {
            let _ = rx.await;
        },
    ));
    let lines: Vec<String> = (0..records)
        .map(|i| record(&format!("{tag}-{i}")))
        .collect();
    let batches: Vec<String> = lines.chunks(88).map(|c| c.join("\n") + "\n").collect();
    let batches = Arc::new(batches);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..senders {
        let (batches, next, client, url) = (
            Arc::clone(&batches),
            Arc::clone(&next),
            client.clone(),
            format!("{base}/v1/captures"),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(b) = batches.get(i) else { return };
                let r = client
                    .post(&url)
                    .header("content-type", "application/x-ndjson")
                    .body(b.clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let ingest_per_s = records as f64 / started.elapsed().as_secs_f64();
    let handoff_per_s = if engine.is_some() {
        let e = &state.engines[0];
        let deadline = Instant::now() + Duration::from_secs(600);
        while e.stats.judged.load(Ordering::Relaxed) < records as u64 {
            assert!(Instant::now() < deadline, "hand-off did not finish");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Some(records as f64 / started.elapsed().as_secs_f64())
    } else {
        None
    };
    let _ = tx.send(());
    task.await.unwrap().unwrap();
    Outcome {
        ingest_per_s,
        handoff_per_s,
    }
}

#[tokio::main]
async fn main() {
    let mut records = 5000;
    let mut rounds = 3;
    let mut senders = 4;
    let mut concurrency = vec![1usize, 8, 32];
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().unwrap();
        match flag.as_str() {
            "--records" => records = v.parse().unwrap(),
            "--rounds" => rounds = v.parse().unwrap(),
            "--senders" => senders = v.parse().unwrap(),
            "--concurrency" => concurrency = v.split(',').map(|c| c.parse().unwrap()).collect(),
            other => panic!("unknown flag {other}"),
        }
    }
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AuditServiceServer::new(Instant_))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut configs: Vec<Option<usize>> = vec![None];
    configs.extend(concurrency.iter().map(|c| Some(*c)));
    let mut results: Vec<Vec<Outcome>> = configs.iter().map(|_| Vec::new()).collect();
    for r in 0..rounds {
        for (i, c) in configs.iter().enumerate() {
            let o = round(c.map(|c| (port, c)), records, senders, &format!("r{r}c{i}")).await;
            eprintln!(
                "round {r} {}: ingest {:.0}/s, hand-off {}",
                c.map_or("ingest alone".to_owned(), |c| format!("concurrency {c}")),
                o.ingest_per_s,
                o.handoff_per_s
                    .map_or("-".to_owned(), |h| format!("{h:.0}/s"))
            );
            results[i].push(o);
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    println!("| configuration | ingest, records/s | hand-offs/s (first POST to last verdict) |");
    println!("|---|---|---|");
    for (c, rs) in configs.iter().zip(&results) {
        let ingest = median(rs.iter().map(|o| o.ingest_per_s).collect());
        let handoff = rs
            .iter()
            .filter_map(|o| o.handoff_per_s)
            .collect::<Vec<_>>();
        println!(
            "| {} | {ingest:.0} | {} |",
            c.map_or("ingest alone (no engine)".to_owned(), |c| format!(
                "ingest + hand-off, `--audit-concurrency {c}`"
            )),
            if handoff.is_empty() {
                "—".to_owned()
            } else {
                format!("{:.0}", median(handoff))
            }
        );
    }
    println!(
        "\n{records} RAG captures of ~{} bytes, {senders} senders, batches of 88, SQLite; median of {rounds} rounds.",
        record("x").len()
    );
}
