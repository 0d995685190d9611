//! OpenTelemetry export against a real Arize Phoenix (`common::phoenix`), on both stores: every
//! stored capture arrives once as a span carrying question, answer, model, tokens and outcome; a
//! restart in the middle of a backlog resumes from the saved cursor and sends nothing twice; of
//! two collectors on one PostgreSQL database exactly one exports, and the other takes over when
//! it stops; a killed collector sends at most its last request again; gRPC with gzip works;
//! exchanges that are not LLM calls export as plain HTTP spans or not at all; and ingest answers
//! at once while the OTLP endpoint hangs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser as _;
use common::phoenix::{attr, span_of, Phoenix};
use common::postgres::{Postgres, PASSWORD};
use common::{get_json, metric, ndjson, post, Process};
use serde_json::{json, Value};
use truthtable_collector::config::{Cli, Config};
use truthtable_collector::metrics::SpanCount;
use truthtable_collector::AppState;

static PROJECTS: AtomicUsize = AtomicUsize::new(0);

/// A Phoenix project of the test's own (`openinference.project.name`).
fn project(name: &str) -> String {
    format!(
        "{name}-{}-{}",
        std::process::id(),
        PROJECTS.fetch_add(1, Ordering::SeqCst)
    )
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// Where a case's captures are stored.
#[derive(Clone)]
enum Db {
    Sqlite(Arc<tempfile::TempDir>),
    Postgres(String),
}

impl Db {
    fn sqlite() -> Db {
        Db::Sqlite(Arc::new(tempfile::tempdir().unwrap()))
    }

    fn postgres() -> Db {
        let pg = Postgres::shared();
        Db::Postgres(pg.url(&pg.database()))
    }

    fn arg(&self) -> String {
        match self {
            Db::Sqlite(dir) => dir.path().join("t.db").display().to_string(),
            Db::Postgres(url) => url.clone(),
        }
    }
}

/// A collector in this process, its state at hand (the exporter's counters).
struct Collector {
    base: String,
    state: Arc<AppState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Collector {
    /// Runs on `db` with these flags and `OTEL_*` variables.
    async fn start(db: &Db, args: &[&str], env: &[(&str, &str)]) -> Collector {
        let mut argv = vec!["truthtable-collector".to_owned(), "--db".into(), db.arg()];
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .chain([("PGPASSWORD".to_owned(), PASSWORD.to_owned())])
            .collect();
        let config = Config::new(Cli::parse_from(argv), move |name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        });
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
        Collector {
            base,
            state,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Exporting to `phoenix` over OTLP/HTTP, into `project`.
    async fn exporting(db: &Db, phoenix: &Phoenix, project: &str, args: &[&str]) -> Collector {
        let attrs = format!("openinference.project.name={project}");
        Collector::start(
            db,
            args,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", &phoenix.base()),
                ("OTEL_RESOURCE_ATTRIBUTES", &attrs),
            ],
        )
        .await
    }

    fn count(&self, what: SpanCount) -> u64 {
        self.state.metrics.otlp_count(what)
    }

    async fn ingest(&self, ids: &[String]) {
        let client = reqwest::Client::new();
        for chunk in ids.chunks(50) {
            let resp = post(&client, &self.base, ndjson(chunk), None).await;
            assert_eq!(resp.status(), 200);
        }
    }

    /// Stops as SIGTERM does: requests in flight finish, the exporter saves its cursor.
    async fn stop(mut self) -> Arc<AppState> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
        Arc::clone(&self.state)
    }

    async fn wait_count(&self, what: SpanCount, at_least: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.count(what) < at_least {
            assert!(
                Instant::now() < deadline,
                "{what:?} is {} after {timeout:?}, expected {at_least}",
                self.count(what)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Every capture id among `spans`, sorted, repeats kept.
fn capture_ids(spans: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = spans
        .iter()
        .map(|s| {
            attr(s, "truthtable.capture.id")
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    ids.sort();
    ids
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

async fn every_capture_arrives_once_and_a_restart_mid_export_resumes(db: Db) {
    let phoenix = Phoenix::shared();
    let project = project("resume");
    let first = Collector::exporting(&db, phoenix, &project, &["--otlp-batch-size", "7"]).await;
    // Span ids follow capture ids, and Phoenix keeps one span per id: ids of this case's own.
    let early = ids(&format!("{project}-early"), 30);
    first.ingest(&early).await;
    let spans = phoenix
        .wait_spans(&project, 30, Duration::from_secs(30))
        .await;
    assert_eq!(capture_ids(&spans), sorted(early.clone()));
    let s = span_of(&spans, &early[3]);
    assert_eq!(s["name"], "chat gpt-4o");
    assert_eq!(s["span_kind"], "LLM");
    assert_eq!(
        attr(s, "input.value"),
        format!("question for {}", early[3]).as_str()
    );
    assert_eq!(
        attr(s, "output.value"),
        format!("answer for {}", early[3]).as_str()
    );
    assert_eq!(attr(s, "llm.model_name"), "gpt-4o-2024-08-06");
    assert_eq!(attr(s, "gen_ai.request.model"), "gpt-4o");
    assert_eq!(attr(s, "gen_ai.usage.input_tokens"), 12);
    assert_eq!(attr(s, "gen_ai.usage.output_tokens"), 4);
    assert_eq!(attr(s, "llm.token_count.total"), 16);
    assert_eq!(attr(s, "truthtable.capture.outcome"), "complete");
    assert_eq!(attr(s, "http.response.status_code"), 200);
    assert_eq!(s["start_time"], "2026-11-25T16:10:40.186123+00:00");
    assert_eq!(s["end_time"], "2026-11-25T16:10:41.990373+00:00");
    assert_eq!(first.count(SpanCount::Exported), 30);
    first.stop().await;

    // A backlog stored while nothing exports.
    let quiet = Collector::start(&db, &[], &[]).await;
    let backlog = ids(&format!("{project}-backlog"), 200);
    quiet.ingest(&backlog).await;
    quiet.stop().await;

    // Stopped in the middle of it, then started again.
    let second = Collector::exporting(&db, phoenix, &project, &["--otlp-batch-size", "5"]).await;
    second
        .wait_count(SpanCount::Exported, 20, Duration::from_secs(30))
        .await;
    let before = second.stop().await.metrics.otlp_count(SpanCount::Exported);
    assert!(before < 200, "the restart came too late to be mid-export");
    let third = Collector::exporting(&db, phoenix, &project, &["--otlp-batch-size", "50"]).await;
    let spans = phoenix
        .wait_spans(&project, 230, Duration::from_secs(60))
        .await;
    let mut all = early;
    all.extend(backlog);
    assert_eq!(capture_ids(&spans), sorted(all), "each capture once");
    assert_eq!(
        before + third.count(SpanCount::Exported),
        200,
        "the restart resumed where the stop left off: nothing sent twice"
    );
    assert_eq!(third.count(SpanCount::Failed), 0);
    third.stop().await;
}

macro_rules! on_both_stores {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Db::sqlite()).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Db::postgres()).await
                }
            )*
        }
    };
}

on_both_stores!(every_capture_arrives_once_and_a_restart_mid_export_resumes);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_collectors_on_one_database_one_exports_and_the_other_takes_over() {
    let phoenix = Phoenix::shared();
    let project = project("replicas");
    let db = Db::postgres();
    let a = Collector::exporting(&db, phoenix, &project, &[]).await;
    let b = Collector::exporting(&db, phoenix, &project, &[]).await;
    let first = ids("r1", 40);
    a.ingest(&first[..20]).await;
    b.ingest(&first[20..]).await;
    let spans = phoenix
        .wait_spans(&project, 40, Duration::from_secs(30))
        .await;
    assert_eq!(capture_ids(&spans), sorted(first.clone()));
    let (ea, eb) = (a.count(SpanCount::Exported), b.count(SpanCount::Exported));
    assert_eq!(ea + eb, 40, "each span sent once between them");
    assert!(ea == 0 || eb == 0, "only one exports: {ea} and {eb}");
    let client = reqwest::Client::new();
    let gauge = |c: &Collector| {
        let (client, base) = (client.clone(), c.base.clone());
        async move { metric(&client, &base, "truthtable_collector_otlp_exporting").await == 1 }
    };
    assert_ne!(gauge(&a).await, gauge(&b).await, "one gauge says 1");

    // The exporting one stops (and gives its lease up); the other takes over.
    let (exporter, other) = if ea > 0 { (a, b) } else { (b, a) };
    exporter.stop().await;
    let second = ids("r2", 30);
    other.ingest(&second).await;
    let spans = phoenix
        .wait_spans(&project, 70, Duration::from_secs(60))
        .await;
    let mut all = first;
    all.extend(second);
    assert_eq!(capture_ids(&spans), sorted(all));
    assert_eq!(other.count(SpanCount::Exported), 30);
    other.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_with_gzip_reaches_phoenix() {
    let phoenix = Phoenix::shared();
    let project = project("grpc");
    let attrs = format!("openinference.project.name={project},deployment.environment.name=test");
    let db = Db::sqlite();
    let c = Collector::start(
        &db,
        &[
            "--otlp-endpoint",
            &phoenix.grpc(),
            "--otlp-protocol",
            "grpc",
        ],
        &[
            ("OTEL_RESOURCE_ATTRIBUTES", &attrs),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ("OTEL_SERVICE_NAME", "audit-grpc"),
        ],
    )
    .await;
    let sent = ids("g", 12);
    c.ingest(&sent).await;
    let spans = phoenix
        .wait_spans(&project, 12, Duration::from_secs(30))
        .await;
    assert_eq!(capture_ids(&spans), sorted(sent));
    assert_eq!(
        attr(span_of(&spans, "g-0"), "output.value"),
        "answer for g-0"
    );
    assert_eq!(c.count(SpanCount::Exported), 12);
    c.stop().await;
}

/// A record of `GET /healthz` answered `ok`: not an LLM call.
fn health_check(id: &str) -> String {
    let mut r = common::record(id);
    r["request"]["method"] = json!("GET");
    r["request"]["path"] = json!("/healthz");
    r["request"]["body"] = json!({"encoding": "utf8", "data": "", "size": 0, "truncated": false});
    r["response"]["headers"] = json!([["content-type", "text/plain"]]);
    r["response"]["body"] =
        json!({"encoding": "utf8", "data": "ok", "size": 2, "truncated": false});
    format!("{r}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchanges_that_are_not_llm_calls_are_plain_http_spans_or_none() {
    let phoenix = Phoenix::shared();
    let client = reqwest::Client::new();
    let as_http = project("non-llm-http");
    let (db, db2) = (Db::sqlite(), Db::sqlite());
    let c = Collector::exporting(&db, phoenix, &as_http, &[]).await;
    let body = format!("{}{}", ndjson(&["llm-1".into()]), health_check("hc-1"));
    assert_eq!(post(&client, &c.base, body, None).await.status(), 200);
    let spans = phoenix
        .wait_spans(&as_http, 2, Duration::from_secs(30))
        .await;
    let hc = span_of(&spans, "hc-1");
    assert_eq!(hc["name"], "GET");
    assert_eq!(attr(hc, "url.path"), "/healthz");
    assert_eq!(attr(hc, "truthtable.audit.protocol"), "unknown");
    assert!(attr(hc, "openinference.span.kind").is_null());
    assert_eq!(span_of(&spans, "llm-1")["span_kind"], "LLM");
    c.stop().await;

    let skipped = project("non-llm-skip");
    let c = Collector::exporting(&db2, phoenix, &skipped, &["--otlp-non-llm", "skip"]).await;
    let body = format!("{}{}", health_check("hc-2"), ndjson(&["llm-2".into()]));
    assert_eq!(post(&client, &c.base, body, None).await.status(), 200);
    let spans = phoenix
        .wait_spans(&skipped, 1, Duration::from_secs(30))
        .await;
    assert_eq!(capture_ids(&spans), ["llm-2"]);
    assert_eq!(c.count(SpanCount::Skipped), 1);
    assert_eq!(c.count(SpanCount::Exported), 1);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_answers_at_once_while_the_otlp_endpoint_hangs_and_requests_carry_the_headers() {
    // An endpoint that takes connections, reads what comes, and never answers.
    use tokio::io::AsyncReadExt as _;
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", hang.local_addr().unwrap());
    let heads = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let held = tokio::spawn({
        let heads = Arc::clone(&heads);
        async move {
            let mut conns = Vec::new();
            while let Ok((mut conn, _)) = hang.accept().await {
                let mut buf = vec![0u8; 8192];
                let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or(0);
                heads
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase());
                conns.push(conn);
            }
        }
    });
    let db = Db::sqlite();
    let c = Collector::start(
        &db,
        &["--otlp-endpoint", &url],
        &[
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "60000"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "Authorization=Basic%20dGVzdDp0ZXN0,x-tenant=t1",
            ),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let started = Instant::now();
    for round in 0..20 {
        let sent = Instant::now();
        let resp = post(
            &client,
            &c.base,
            ndjson(&ids(&format!("h{round}"), 10)),
            None,
        )
        .await;
        assert_eq!(resp.status(), 200);
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "ingest waited {:?} behind the exporter",
            sent.elapsed()
        );
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    let list: Value = get_json(&client, format!("{}/v1/captures?limit=1000", c.base)).await;
    assert_eq!(list["captures"].as_array().unwrap().len(), 200);
    assert_eq!(c.count(SpanCount::Exported), 0, "nothing was answered");
    // What the exporter sent: OTLP/HTTP protobuf, with the configured headers.
    let deadline = Instant::now() + Duration::from_secs(10);
    let head = loop {
        if let Some(h) = heads.lock().unwrap().first().cloned() {
            break h;
        }
        assert!(Instant::now() < deadline, "no export request arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(head.starts_with("post /v1/traces http/1.1\r\n"), "{head}");
    for line in [
        "content-type: application/x-protobuf",
        "authorization: basic dgvzddp0zxn0",
        "x-tenant: t1",
        "user-agent: truthtable-collector/",
    ] {
        assert!(head.contains(line), "{line} missing from\n{head}");
    }
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_collector_sends_at_most_its_last_request_again() {
    let phoenix = Phoenix::shared();
    let project = project("sigkill");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("k.db").display().to_string();
    let client = reqwest::Client::new();
    {
        let quiet = Process::start_with(&["--db", &db], &[]);
        let backlog = ids("k", 300);
        for chunk in backlog.chunks(100) {
            assert_eq!(
                post(&client, &quiet.base(), ndjson(chunk), None)
                    .await
                    .status(),
                200
            );
        }
    }
    let attrs = format!("openinference.project.name={project}");
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", phoenix.base()),
        ("OTEL_RESOURCE_ATTRIBUTES", attrs),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let args = ["--db", &db, "--otlp-batch-size", "10"];
    let exported = |p: &Process| {
        let (client, base) = (client.clone(), p.base());
        async move {
            metric(
                &client,
                &base,
                "truthtable_collector_otlp_spans_exported_total",
            )
            .await
        }
    };
    let mut first = Process::start_with(&args, &env);
    let deadline = Instant::now() + Duration::from_secs(30);
    let seen = loop {
        let n = exported(&first).await;
        if n >= 50 {
            break n;
        }
        assert!(Instant::now() < deadline, "exported only {n}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    assert!(seen < 300, "the kill came too late to be mid-export");

    let second = Process::start_with(&args, &env);
    let spans = phoenix
        .wait_spans(&project, 300, Duration::from_secs(60))
        .await;
    assert_eq!(capture_ids(&spans), sorted(ids("k", 300)));
    // Every span is in Phoenix; the second collector's count settles once its last answer is in.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let resent = (exported(&second).await + seen).saturating_sub(300);
    assert!(
        resent <= 10,
        "{resent} spans sent again after the kill; at most one request (10) may be"
    );
}
