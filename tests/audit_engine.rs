//! The audit hand-off through the whole path: clients talk to an OpenAI-shaped upstream through a
//! real Envoy running the built filter, the collector stores each exchange and hands every LLM
//! answer to a real gRPC server implementing TruthTable's `truthtable.audit.v1.AuditService`
//! (answering canned verdicts), and the verdict comes back with the capture. The engine sees the
//! question, the answer and every retrieved document; an answer cut off mid-stream is handed over
//! marked as such; an engine's unusable answer is kept as an engine error; an engine that is down
//! while the collector restarts loses no capture and judges each once. A Standard Webhooks engine's
//! signatures are verified by the independent `standardwebhooks` package. With the OpenTelemetry
//! export to a real Arize Phoenix, the verdict shows on the capture's span as an annotation.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "../collector/tests/common/phoenix.rs"]
mod phoenix;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::Response;
use common::{bind_when_free, client, filter_config, free_port, Collector, Envoy, EnvoyOpts};
use serde_json::{json, Value};
use tonic::{Request, Status};
use truthtable_collector::engine::proto::audit_service_server::{AuditService, AuditServiceServer};
use truthtable_collector::engine::proto::{
    AuditRequest, AuditResult, AuditResultRequest, AuditStatus, AuditSubmission, ClaimVerification,
    HealthRequest, HealthResponse, IngestRequest, IngestResponse, TrustGrade, VerificationStatus,
};

const PASSAGE: &str = "Paris is the capital of France.";
const SECOND: &str = "Lyon is the third-largest city of France.";

/// An OpenAI-shaped upstream: a chat completion that names Lyon the capital; a question that
/// says "break" gets a stream of two tokens and a broken connection.
async fn upstream() -> u16 {
    let chat = |body: Bytes| async move {
        let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let question = req["messages"]
            .as_array()
            .and_then(|m| m.last())
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default()
            .to_owned();
        if question.contains("break") {
            let chunk = |c: &str| {
                let c = json!({"id": "c", "object": "chat.completion.chunk", "model": "gpt-4o",
                    "choices": [{"index": 0, "delta": {"content": c}, "finish_reason": null}]});
                Ok::<_, std::io::Error>(Bytes::from(format!("data: {c}\n\n")))
            };
            let events = vec![
                chunk("Half"),
                chunk(" an"),
                Err(std::io::Error::other("the upstream dies")),
            ];
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
            tokio::spawn(async move {
                for e in events {
                    let _ = tx.send(e).await;
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
            });
            return Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(
                    tokio_stream::wrappers::ReceiverStream::new(rx),
                ))
                .unwrap();
        }
        let answer = json!({"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-2024-08-06",
            "choices": [{"index": 0, "message": {"role": "assistant",
                "content": format!("Lyon is the capital of France. ({question})")}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 40, "completion_tokens": 9, "total_tokens": 49}});
        Response::builder()
            .header("content-type", "application/json")
            .body(Body::from(answer.to_string()))
            .unwrap()
    };
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(chat))
        .fallback(|| async { "ok" });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

/// A real `AuditService`: keeps every request it is sent, answers `PROCESSING` to the first poll
/// of an audit and a canned verdict after: the answer naming Lyon the capital is a hallucination
/// (one contradicted claim, with the passage as evidence); a question that says "bad" gets a
/// score of 7, which no verdict may have.
#[derive(Clone, Default)]
struct Judge {
    seen: Arc<Mutex<Vec<AuditRequest>>>,
    polls: Arc<Mutex<HashMap<String, u32>>>,
}

impl Judge {
    fn seen(&self) -> Vec<AuditRequest> {
        self.seen.lock().unwrap().clone()
    }

    fn verdict(req: &AuditRequest, audit_id: &str) -> AuditResult {
        let evidence: Vec<String> = req
            .context
            .iter()
            .filter(|d| d.content.contains("capital"))
            .map(|d| d.content.clone())
            .collect();
        AuditResult {
            audit_id: audit_id.to_owned(),
            request_id: req.request_id.clone(),
            status: AuditStatus::Completed as i32,
            faithfulness_score: if req.query.contains("bad") { 7.0 } else { 0.2 },
            grade: TrustGrade::F as i32,
            claims: vec![ClaimVerification {
                claim: "Lyon is the capital of France.".into(),
                status: VerificationStatus::Contradicted as i32,
                confidence: 0.9,
                evidence,
            }],
            reasoning_trace: "The passage names Paris.".into(),
            completed_at_ms: 1_800_000_000_000,
            processing_time_ms: 12,
            hallucination_detected: true,
            step_timings: [("decompose_ms".to_owned(), 3)].into(),
        }
    }
}

#[tonic::async_trait]
impl AuditService for Judge {
    async fn submit_audit(
        &self,
        request: Request<AuditRequest>,
    ) -> Result<tonic::Response<AuditSubmission>, Status> {
        let req = request.into_inner();
        let audit_id = format!("audit-{}", req.request_id);
        self.seen.lock().unwrap().push(req);
        Ok(tonic::Response::new(AuditSubmission {
            audit_id,
            status: "queued".into(),
            queue_position: 0,
        }))
    }

    async fn get_audit_result(
        &self,
        request: Request<AuditResultRequest>,
    ) -> Result<tonic::Response<AuditResult>, Status> {
        let id = request.into_inner().audit_id;
        let Some(req) = self
            .seen()
            .into_iter()
            .rev()
            .find(|r| format!("audit-{}", r.request_id) == id)
        else {
            return Err(Status::not_found(id));
        };
        let polls = {
            let mut polls = self.polls.lock().unwrap();
            let n = polls.entry(id.clone()).or_default();
            *n += 1;
            *n
        };
        if polls == 1 {
            return Ok(tonic::Response::new(AuditResult {
                audit_id: id,
                status: AuditStatus::Processing as i32,
                ..Default::default()
            }));
        }
        Ok(tonic::Response::new(Judge::verdict(&req, &id)))
    }

    async fn health_check(
        &self,
        _: Request<HealthRequest>,
    ) -> Result<tonic::Response<HealthResponse>, Status> {
        Ok(tonic::Response::new(HealthResponse {
            healthy: true,
            version: "canned-1".into(),
            dependencies: HashMap::new(),
        }))
    }

    async fn ingest_documents(
        &self,
        _: Request<IngestRequest>,
    ) -> Result<tonic::Response<IngestResponse>, Status> {
        Err(Status::unimplemented("not in this engine"))
    }
}

/// Serves `judge` on `port` until the returned sender is dropped or sent to.
async fn serve_judge(judge: Judge, port: u16) -> tokio::sync::oneshot::Sender<()> {
    let listener = bind_when_free(SocketAddr::from(([127, 0, 0, 1], port))).await;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(AuditServiceServer::new(judge))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = rx.await;
                },
            )
            .await
            .unwrap();
    });
    tx
}

/// A collector that is not running yet, with these arguments.
fn collector_with(args: &[String]) -> Collector {
    let mut c = Collector::down(None);
    c.args = args.to_vec();
    c
}

/// What these tests ask of the collector beyond starting and stopping it.
impl Collector {
    /// The stored captures' ids by their question.
    async fn ids(&self, n: usize) -> HashMap<String, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let list = self.get("/v1/captures?limit=100").await;
            let rows = list["captures"].as_array().cloned().unwrap_or_default();
            if rows.len() >= n && rows.iter().all(|r| !r["protocol"].is_null()) {
                return rows
                    .iter()
                    .map(|r| {
                        (
                            r["question_preview"]
                                .as_str()
                                .unwrap_or(r["path"].as_str().unwrap())
                                .to_owned(),
                            r["id"].as_str().unwrap().to_owned(),
                        )
                    })
                    .collect();
            }
            assert!(
                Instant::now() < deadline,
                "fewer than {n} captures: {list:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The verdicts on `id`, once there are at least `n`.
    async fn verdicts(&self, id: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.get(&format!("/v1/captures/{id}")).await;
            let v = got["verdicts"].as_array().cloned().unwrap_or_default();
            if v.len() >= n {
                return v;
            }
            assert!(Instant::now() < deadline, "no verdict on {id}: {got:#}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Asserts each `(family, value)` of `engine`'s samples on `/metrics`.
    async fn engine_metrics(&self, engine: &str, want: &[(&str, f64)]) {
        for (family, value) in want {
            let got = self
                .sample(&format!("{family}{{engine=\"{engine}\"}}"))
                .await;
            assert_eq!(got, *value, "{family}");
        }
    }

    /// The sample `name` (with its labels) on `/metrics`; panics when it is not there.
    async fn sample(&self, name: &str) -> f64 {
        let text = client()
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in {text}"))
    }
}

fn rag(question: &str) -> Value {
    json!({"model": "gpt-4o", "messages": [
            {"role": "system", "content": "Answer only from the retrieved passages."},
            {"role": "user", "content": question}],
        "documents": [{"title": "france.txt", "text": PASSAGE}, {"title": "lyon.txt", "text": SECOND}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rag_answer_reaches_the_audit_service_with_every_document_and_its_verdict_is_kept() {
    let judge = Judge::default();
    let engine_port = free_port();
    let _engine = serve_judge(judge.clone(), engine_port).await;
    let engine = format!("grpc://127.0.0.1:{engine_port}");
    let mut collector = collector_with(&["--audit-engine".to_owned(), engine.clone()]);
    collector.start().await;
    let filter = filter_config("");
    let envoy = Envoy::start(EnvoyOpts {
        upstream: upstream().await,
        audit: collector.port,
        filter: Some(&filter),
        workers: 2,
    });
    let http = client();
    let url = envoy.url("/v1/chat/completions");
    for q in [
        "What is the capital of France?",
        "Will this break?",
        "Is this a bad one?",
    ] {
        let _ = http
            .post(&url)
            .json(&rag(q))
            .send()
            .await
            .unwrap()
            .bytes()
            .await;
    }
    let _ = http
        .get(envoy.url("/healthz"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await;

    let ids = collector.ids(4).await;
    let rag_id = &ids["What is the capital of France?"];
    let v = collector.verdicts(rag_id, 1).await;
    assert_eq!(v.len(), 1, "{v:#?}");
    let v = &v[0];
    assert_eq!(v["engine"], engine.as_str());
    assert_eq!(v["status"], "completed");
    assert!((v["score"].as_f64().unwrap() - 0.2).abs() < 1e-6, "{v}");
    assert_eq!(v["hallucination"], true);
    assert_eq!(v["grade"], "F");
    assert_eq!(
        v["claims"],
        json!([{"claim": "Lyon is the capital of France.", "status": "contradicted",
            "confidence": v["claims"][0]["confidence"], "evidence": [PASSAGE]}])
    );
    assert!((v["claims"][0]["confidence"].as_f64().unwrap() - 0.9).abs() < 1e-6);
    assert_eq!(v["reasoning"], "The passage names Paris.");
    assert_eq!(v["timings"]["processing_ms"], 12);
    assert_eq!(v["timings"]["steps"]["decompose_ms"], 3);
    assert!(v["received_at"].as_str().unwrap().starts_with("20"), "{v}");
    // The verdict is an entry of the verifiable log, its entry the verdict as shown.
    assert_eq!(v["capture_id"], rag_id.as_str());
    let entry_path = v["log"]["entry"].as_str().unwrap();
    let entry: Value = client()
        .get(collector.url(entry_path))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut shown = v.clone();
    shown.as_object_mut().unwrap().remove("log");
    assert_eq!(entry, shown);

    // What the engine was sent: the question, the answer and every document the model saw.
    let seen = judge.seen();
    let sent = seen.iter().find(|r| &r.request_id == rag_id).unwrap();
    assert_eq!(sent.query, "What is the capital of France?");
    assert_eq!(
        sent.response,
        "Lyon is the capital of France. (What is the capital of France?)"
    );
    let docs: Vec<(&str, Option<&str>, &str)> = sent
        .context
        .iter()
        .map(|d| {
            (
                d.content.as_str(),
                d.metadata.get("name").map(String::as_str),
                d.metadata["source"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        docs,
        [
            ("Answer only from the retrieved passages.", None, "system"),
            (PASSAGE, Some("france.txt"), "document"),
            (SECOND, Some("lyon.txt"), "document"),
        ]
    );
    assert!(sent.context.iter().all(|d| !d.id.is_empty()));
    assert_eq!(sent.model, "gpt-4o-2024-08-06");
    assert_eq!(sent.provider, "openai");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        (now_ms - sent.timestamp_ms).abs() < 120_000,
        "{}",
        sent.timestamp_ms
    );
    assert_eq!(sent.metadata["capture_id"], *rag_id);
    assert_eq!(sent.metadata["outcome"], "complete");
    assert_eq!(sent.metadata["finish_reason"], "stop");
    assert_eq!(sent.metadata["answer_complete"], "true");
    let usage: Value = serde_json::from_str(&sent.metadata["usage"]).unwrap();
    assert_eq!(usage, json!({"input_tokens": 40, "output_tokens": 9}));

    // The answer cut off mid-stream is handed over, marked as such.
    let broken_id = &ids["Will this break?"];
    collector.verdicts(broken_id, 1).await;
    let broken = judge
        .seen()
        .into_iter()
        .find(|r| &r.request_id == broken_id)
        .unwrap();
    assert_eq!(broken.response, "Half an");
    assert_eq!(broken.metadata["answer_complete"], "false");
    assert_eq!(broken.metadata["stream_complete"], "false");
    assert_eq!(broken.metadata["outcome"], "upstream_failed");

    // A score of 7 is no verdict: an engine error on the capture, and the others go on.
    let bad_id = &ids["Is this a bad one?"];
    let bad = collector.verdicts(bad_id, 1).await;
    assert_eq!(bad[0]["status"], "error");
    assert!(
        bad[0]["log"]["event"]
            .as_str()
            .unwrap()
            .starts_with("verdict-"),
        "an engine error is an entry too: {bad:#?}"
    );
    assert_eq!(bad[0]["score"], Value::Null);
    assert!(
        bad[0]["error"]
            .as_str()
            .unwrap()
            .contains("faithfulness_score 7"),
        "{bad:#?}"
    );

    // Not an LLM call: never handed over.
    let health_id = &ids["/healthz"];
    assert!(judge.seen().iter().all(|r| &r.request_id != health_id));
    let got = collector.get(&format!("/v1/captures/{health_id}")).await;
    assert_eq!(got["verdicts"], json!([]));

    // The list filters by verdict.
    let flagged = collector.get("/v1/captures?verdict=flagged").await;
    let mut flagged: Vec<&str> = flagged["captures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    flagged.sort_unstable();
    let mut want = vec![rag_id.as_str(), broken_id.as_str()];
    want.sort_unstable();
    assert_eq!(flagged, want);
    let low = collector.get("/v1/captures?score_below=0.5").await;
    assert_eq!(low["captures"].as_array().unwrap().len(), 2, "{low:#}");
    let none = collector.get("/v1/captures?score_below=0.1").await;
    assert_eq!(none["captures"], json!([]));

    collector
        .engine_metrics(
            &engine,
            &[
                ("truthtable_audit_sent_total", 3.0),
                ("truthtable_audit_judged_total", 2.0),
                ("truthtable_audit_failed_total", 1.0),
                ("truthtable_audit_skipped_total", 1.0),
                ("truthtable_audit_engine_up", 1.0),
            ],
        )
        .await;
    collector.stop().await;
}

/// An engine that starts down: TruthTable's `AuditService` or a Standard Webhooks receiver, on a
/// port chosen up front.
enum DownEngine {
    Grpc(Judge, u16),
    Webhook(u16),
}

/// An engine that came up; dropping it stops it.
enum UpEngine {
    Grpc(#[allow(dead_code)] tokio::sync::oneshot::Sender<()>),
    Webhook(Receiver),
}

impl DownEngine {
    fn url(&self) -> String {
        match self {
            DownEngine::Grpc(_, port) => format!("grpc://127.0.0.1:{port}"),
            DownEngine::Webhook(port) => format!("http://127.0.0.1:{port}/hooks/truthtable"),
        }
    }

    async fn up(&self) -> UpEngine {
        match self {
            DownEngine::Grpc(judge, port) => {
                UpEngine::Grpc(serve_judge(judge.clone(), *port).await)
            }
            DownEngine::Webhook(port) => UpEngine::Webhook(Receiver::start_on(*port)),
        }
    }

    /// How many times capture `id` was handed to the engine.
    fn submitted(&self, up: &UpEngine, id: &str) -> usize {
        match (self, up) {
            (DownEngine::Grpc(judge, _), _) => {
                judge.seen().iter().filter(|r| r.request_id == id).count()
            }
            (_, UpEngine::Webhook(receiver)) => receiver
                .deliveries()
                .iter()
                .filter(|d| d["id"] == id && d["verified"] == true)
                .count(),
            (DownEngine::Webhook(_), UpEngine::Grpc(_)) => unreachable!(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_engine_down_across_a_collector_restart_judges_every_capture_once() {
    down_across_a_restart(DownEngine::Grpc(Judge::default(), free_port())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_engine_down_across_a_collector_restart_judges_every_capture_once() {
    down_across_a_restart(DownEngine::Webhook(free_port())).await;
}

/// Captures arrive while `down` cannot be reached, the collector restarts, more arrive, the
/// engine comes back: each capture is handed over and judged exactly once, and a restart after
/// that hands nothing over again.
async fn down_across_a_restart(down: DownEngine) {
    let engine = down.url();
    let mut collector = collector_with(&[
        "--audit-engine".to_owned(),
        engine.clone(),
        "--audit-retry-max-ms".to_owned(),
        "200".to_owned(),
    ]);
    collector.env = vec![(
        "TRUTHTABLE_WEBHOOK_SECRETS".into(),
        format!("{OLD_SECRET} {NEW_SECRET}"),
    )];
    collector.start().await;
    let filter = filter_config("");
    let envoy = Envoy::start(EnvoyOpts {
        upstream: upstream().await,
        audit: collector.port,
        filter: Some(&filter),
        workers: 2,
    });
    let http = client();
    let questions: Vec<String> = (0..5).map(|i| format!("Question number {i}?")).collect();
    for q in &questions[..3] {
        let _ = http
            .post(envoy.url("/v1/chat/completions"))
            .json(&rag(q))
            .send()
            .await
            .unwrap()
            .bytes()
            .await;
    }
    collector.ids(3).await;
    // The engine is down: attempts fail and are retried; nothing is judged.
    let label = format!("{{engine=\"{engine}\"}}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while collector
        .sample(&format!("truthtable_audit_retried_total{label}"))
        .await
        < 3.0
    {
        assert!(
            Instant::now() < deadline,
            "no retries while the engine is down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    collector
        .engine_metrics(&engine, &[("truthtable_audit_engine_up", 0.0)])
        .await;
    assert!(
        collector
            .sample(&format!("truthtable_audit_lag_seconds{label}"))
            .await
            > 0.0
    );

    // The collector restarts while the engine is still down, and more captures arrive.
    collector.stop().await;
    collector.start().await;
    for q in &questions[3..] {
        let _ = http
            .post(envoy.url("/v1/chat/completions"))
            .json(&rag(q))
            .send()
            .await
            .unwrap()
            .bytes()
            .await;
    }
    let ids = collector.ids(5).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The engine comes back: every capture is judged, once.
    let up = down.up().await;
    for q in &questions {
        collector.verdicts(&ids[q.as_str()], 1).await;
    }
    // A restart after everything was judged hands nothing over again.
    collector.stop().await;
    collector.start().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for q in &questions {
        let id = &ids[q.as_str()];
        let v = collector.verdicts(id, 1).await;
        assert_eq!(v.len(), 1, "{q}: {v:#?}");
        assert_eq!(v[0]["status"], "completed");
        let sent = down.submitted(&up, id);
        assert_eq!(sent, 1, "{q} was submitted {sent} times");
    }
    collector
        .engine_metrics(
            &engine,
            &[
                ("truthtable_audit_sent_total", 0.0),
                ("truthtable_audit_lag_seconds", 0.0),
            ],
        )
        .await;
    collector.stop().await;
}

const OLD_SECRET: &str = "whsec_dGhlLW9sZC1zZWNyZXQtb2YtdGhpcy10ZXN0LTAx";
const NEW_SECRET: &str = "whsec_dGhlLW5ldy1zZWNyZXQtb2YtdGhpcy10ZXN0LTAy";
const OTHER_SECRET: &str = "whsec_YS1zZWNyZXQtbm9ib2R5LWNvbmZpZ3VyZWQtMDM=";
const VERDICT_TOKEN: &str = "vt-audit-test-6d1f";

/// The Python receiver (`tests/clients/webhook_receiver.py`) on a free port; killed on drop.
struct Receiver {
    child: std::process::Child,
    port: u16,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Receiver {
    fn start() -> Receiver {
        Receiver::start_on(free_port())
    }

    fn start_on(port: u16) -> Receiver {
        use std::io::BufRead as _;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("deliveries.jsonl");
        let python = std::env::var_os("WEBHOOKS_PYTHON")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| common::repo().join(".venv-webhooks/bin/python"));
        let mut child = std::process::Command::new(&python)
            .arg(common::repo().join("tests/clients/webhook_receiver.py"))
            .args([port.to_string().as_str(), NEW_SECRET, OTHER_SECRET])
            .arg(&log)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e} (scripts/setup installs it)", python.display()));
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        Receiver {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    fn deliveries(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_engine_gets_signed_hand_offs_that_standard_webhooks_verifies_and_its_verdicts_are_kept(
) {
    let receiver = Receiver::start();
    let engine = format!("http://127.0.0.1:{}/hooks/truthtable", receiver.port);
    let mut collector = collector_with(&["--audit-engine".to_owned(), engine.clone()]);
    collector.env = vec![
        // A rotation: the receiver knows only the new secret.
        (
            "TRUTHTABLE_WEBHOOK_SECRETS".into(),
            format!("{OLD_SECRET} {NEW_SECRET}"),
        ),
        ("TRUTHTABLE_VERDICT_TOKEN".into(), VERDICT_TOKEN.into()),
    ];
    collector.start().await;
    let filter = filter_config("");
    let envoy = Envoy::start(EnvoyOpts {
        upstream: upstream().await,
        audit: collector.port,
        filter: Some(&filter),
        workers: 2,
    });
    let http = client();
    for q in [
        "What is the capital of France?",
        "Judge this one later, please.",
    ] {
        let _ = http
            .post(envoy.url("/v1/chat/completions"))
            .json(&rag(q))
            .send()
            .await
            .unwrap()
            .bytes()
            .await;
    }
    let ids = collector.ids(2).await;
    let now_id = &ids["What is the capital of France?"];
    let later_id = &ids["Judge this one later, please."];

    // The verdict in the 2xx answer.
    let v = collector.verdicts(now_id, 1).await;
    assert_eq!(v[0]["engine"], engine.as_str());
    assert_eq!(v[0]["status"], "completed");
    assert_eq!(v[0]["score"], 0.9);
    assert_eq!(v[0]["hallucination"], false);
    assert_eq!(v[0]["claims"][0]["status"], "supported");
    assert_eq!(v[0]["audit_id"], format!("wh-{now_id}"));

    // Every delivery verified with the independent implementation, and not with another secret.
    let later = collector.verdicts(later_id, 1).await;
    assert_eq!(later[0]["status"], "pending");
    let deliveries = receiver.deliveries();
    assert_eq!(deliveries.len(), 2, "{deliveries:#?}");
    for d in &deliveries {
        assert_eq!(d["verified"], true, "{d:#}");
        assert_eq!(d["other_secret_verified"], false, "{d:#}");
        assert_eq!(d["path"], "/hooks/truthtable");
        assert_eq!(d["payload"]["type"], "truthtable.capture.audit");
        assert_eq!(d["payload"]["data"]["capture_id"], d["id"]);
    }
    let sent = deliveries
        .iter()
        .find(|d| d["id"] == now_id.as_str())
        .unwrap();
    let audit = &sent["payload"]["data"]["audit"];
    assert_eq!(audit["question"], "What is the capital of France?");
    let docs: Vec<&str> = audit["context"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    assert_eq!(docs[1..], [PASSAGE, SECOND]);

    // The verdict that comes later, posted with the token.
    let post = |token: &str, body: Value| {
        http.post(collector.url(&format!("/v1/captures/{later_id}/verdicts")))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let verdict = json!({"engine": engine, "score": 0.3, "grade": "D", "hallucination": true,
        "claims": [{"claim": "Lyon is the capital of France.", "status": "contradicted", "confidence": 0.8,
                    "evidence": [PASSAGE]}]});
    assert_eq!(post("wrong", verdict.clone()).await.unwrap().status(), 401);
    let bad = post(VERDICT_TOKEN, json!({"engine": engine, "score": 3}))
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("score 3"));
    let created = post(VERDICT_TOKEN, verdict).await.unwrap();
    assert_eq!(created.status(), 201);
    let later = collector.verdicts(later_id, 2).await;
    assert_eq!(later[1]["status"], "completed");
    assert_eq!(later[1]["hallucination"], true);
    let unknown = http
        .post(collector.url("/v1/captures/nope/verdicts"))
        .bearer_auth(VERDICT_TOKEN)
        .json(&json!({"engine": "x", "score": 0.5}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let flagged = collector.get("/v1/captures?verdict=flagged").await;
    assert_eq!(flagged["captures"][0]["id"], later_id.as_str());
    collector.stop().await;
}

/// The `truthtable.verdict` annotation Phoenix holds on the span of capture `id`, read back
/// through its REST API.
async fn annotation_in_phoenix(phoenix: &phoenix::Phoenix, project: &str, id: &str) -> Value {
    let spans = phoenix
        .wait_spans(project, 1, Duration::from_secs(60))
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut spans = spans;
    let span_id = loop {
        if spans
            .iter()
            .any(|s| phoenix::attr(s, "truthtable.capture.id") == id)
        {
            let span = phoenix::span_of(&spans, id);
            break span["context"]["span_id"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "no span of {id} in Phoenix");
        tokio::time::sleep(Duration::from_millis(200)).await;
        spans = phoenix.spans(project).await;
    };
    let url = format!(
        "{}/v1/projects/{project}/span_annotations?span_ids={span_id}",
        phoenix.base()
    );
    loop {
        let got: Value = client()
            .get(&url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or(Value::Null);
        if let Some(a) = got["data"].as_array().and_then(|d| d.first()) {
            return a.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no annotation on span {span_id} of {id}: {got}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_export_to_phoenix_the_verdict_is_an_annotation_on_the_captures_span_even_after_a_restart(
) {
    let phoenix = phoenix::Phoenix::shared();
    let project = format!("audit-{}", std::process::id());
    let judge = Judge::default();
    let engine_port = free_port();
    let _engine = serve_judge(judge.clone(), engine_port).await;
    let engine = format!("grpc://127.0.0.1:{engine_port}");
    let mut collector = collector_with(&["--audit-engine".to_owned(), engine.clone()]);
    let export_to = |base: String| {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), base),
            (
                "OTEL_RESOURCE_ATTRIBUTES".to_owned(),
                format!("openinference.project.name={project}"),
            ),
        ]
    };
    // First Phoenix cannot be reached: the verdict is stored, and its annotation cannot be sent
    // before the collector stops.
    collector.env = export_to(format!("http://127.0.0.1:{}", free_port()));
    collector.start().await;
    let filter = filter_config("");
    let envoy = Envoy::start(EnvoyOpts {
        upstream: upstream().await,
        audit: collector.port,
        filter: Some(&filter),
        workers: 2,
    });
    let ask = |question: &'static str| {
        let url = envoy.url("/v1/chat/completions");
        async move {
            let _ = client()
                .post(url)
                .json(&rag(question))
                .send()
                .await
                .unwrap()
                .bytes()
                .await;
        }
    };
    ask("What is the capital of France?").await;
    let ids = collector.ids(1).await;
    let before = ids["What is the capital of France?"].clone();
    collector.verdicts(&before, 1).await;
    collector.stop().await;

    // Started again with Phoenix there, it annotates what it could not before, and what comes.
    collector.env = export_to(phoenix.base());
    collector.start().await;
    ask("Which city is the capital of France?").await;
    let ids = collector.ids(2).await;
    let after = ids["Which city is the capital of France?"].clone();
    collector.verdicts(&after, 1).await;
    for id in [&before, &after] {
        let annotation = annotation_in_phoenix(phoenix, &project, id).await;
        assert_eq!(annotation["name"], "truthtable.verdict");
        assert_eq!(annotation["annotator_kind"], "LLM");
        assert_eq!(annotation["result"]["label"], "hallucination");
        assert!((annotation["result"]["score"].as_f64().unwrap() - 0.2).abs() < 1e-6);
        assert_eq!(
            annotation["result"]["explanation"],
            "The passage names Paris."
        );
        assert_eq!(annotation["metadata"]["engine"], engine.as_str());
        assert_eq!(annotation["metadata"]["capture_id"], id.as_str());
        assert_eq!(
            annotation["metadata"]["claims"][0]["status"],
            "contradicted"
        );
    }
    collector.stop().await;
}
