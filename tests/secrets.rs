//! Secrets are never stored: canary secrets sent everywhere a client or an upstream can put one —
//! every built-in credential header, every built-in credential query parameter, a cookie, a
//! `set-cookie` and an echoed key from the upstream, a header and a parameter named only in the
//! operator's lists, the ingest token itself — are found in no artifact the capture leaves: the
//! collector's database files (WAL included), the collector's debug log, Envoy's log with the wasm
//! component at debug, Envoy's stats, the filter's error lines, the collector's JSON reads and
//! its web pages (the list and every capture's page).
//!
//! And an erased exchange's question and answer are found in none of the artifacts erasure
//! promises to clear: the database file and its WAL, every JSON read, every web page, and the
//! OpenTelemetry spans the collector sends after the erasure.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::http::HeaderMap;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use truthtable_filter::redact::{DEFAULT_HEADERS, DEFAULT_QUERY_PARAMS};

const INGEST_TOKEN: &str = "tt-canary-ingest-token-0c1d";
const OPERATOR_HEADER: &str = "x-tenant-key";
const OPERATOR_PARAM: &str = "tenant_sig";

fn canary(kind: &str, name: &str) -> String {
    format!("tt-canary-{kind}-{name}-7f3a")
}

/// An upstream that answers like an LLM API and puts secrets in its response headers.
async fn leaky_upstream() -> u16 {
    use axum::response::IntoResponse;
    let app = axum::Router::new().fallback(|headers: HeaderMap| async move {
        let echoed = headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_owned();
        (
            [
                ("content-type", "application/json".to_owned()),
                (
                    "set-cookie",
                    format!("session={}; Path=/", canary("set-cookie", "session")),
                ),
                ("x-api-key", echoed),
            ],
            r#"{"choices":[{"message":{"role":"assistant","content":"Paris."}}]}"#,
        )
            .into_response()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

/// A child process, killed if the test fails before it stops it.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The collector as its own process, logging at debug into `dir/collector.log`.
fn collector(dir: &Path, port: u16) -> Killed {
    collector_with(dir, port, &[], &[])
}

/// The collector with more flags and environment.
fn collector_with(dir: &Path, port: u16, args: &[&str], env: &[(&str, &str)]) -> Killed {
    let bin = repo().join("target/debug/truthtable-collector");
    assert!(
        bin.exists(),
        "no collector binary at {} (run `cargo build -p truthtable-collector` or scripts/test)",
        bin.display()
    );
    let child = Command::new(bin)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--db")
        .arg(dir.join("captures.db"))
        .args(args)
        .env("TRUTHTABLE_INGEST_TOKEN", INGEST_TOKEN)
        .envs(env.iter().copied())
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("collector.log")).unwrap())
        .spawn()
        .unwrap();
    let child = Killed(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the collector did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_canary_secret_reaches_any_stored_or_printed_artifact() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = leaky_upstream().await;
    let collector_port = free_port();
    let mut collector = collector(dir.path(), collector_port);
    let filter = filter_config(&format!(
        r#""audit_headers": {{"authorization": "Bearer {INGEST_TOKEN}"}},
            "redact_headers": ["{OPERATOR_HEADER}"], "redact_query_params": ["{OPERATOR_PARAM}"]"#
    ));
    let envoy = Envoy::try_start_with(
        EnvoyOpts {
            upstream,
            audit: collector_port,
            filter: Some(&filter),
            workers: 2,
        },
        |yaml| yaml,
    )
    .unwrap();
    // Envoy's own log, with the wasm component at debug: started again on a fresh log by the
    // harness's flags would lose the first Envoy's traffic, so raise the level at runtime.
    let raised = client()
        .post(format!(
            "http://127.0.0.1:{}/logging?wasm=debug",
            envoy.admin
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(raised.status(), 200);

    let mut canaries = vec![INGEST_TOKEN.to_owned()];
    let mut sent = 0;
    // One exchange per built-in credential header.
    for name in DEFAULT_HEADERS {
        let value = canary("header", name);
        canaries.push(value.clone());
        let resp = client()
            .post(envoy.url("/v1/chat/completions"))
            .header(*name, &value)
            .header("x-test-case", format!("header-{name}"))
            .body(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{name}");
        resp.bytes().await.unwrap();
        sent += 1;
    }
    // One exchange carrying every built-in and the operator's query parameter, percent-encoded
    // and in capitals too, plus the operator's header and a cookie.
    let mut query = vec!["stream=false".to_owned()];
    for name in DEFAULT_QUERY_PARAMS.iter().copied().chain([OPERATOR_PARAM]) {
        let value = canary("query", name);
        let encoded_value = canary("query-encoded", name);
        canaries.push(value.clone());
        canaries.push(encoded_value.clone());
        query.push(format!("{name}={value}"));
        query.push(format!(
            "{}={encoded_value}",
            name.to_uppercase().replace('_', "%5F")
        ));
    }
    let operator = canary("header", OPERATOR_HEADER);
    let cookie = canary("cookie", "sid");
    canaries.extend([operator.clone(), cookie.clone()]);
    let resp = client()
        .post(envoy.url(&format!("/v1/chat/completions?{}", query.join("&"))))
        .header(OPERATOR_HEADER, &operator)
        .header("cookie", format!("sid={cookie}; theme=dark"))
        .header("x-test-case", "query")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();
    sent += 1;
    canaries.push(canary("set-cookie", "session"));

    // Every exchange is stored, with the names kept and the values replaced.
    let base = format!("http://127.0.0.1:{collector_port}");
    let read = |path: String| async move {
        let text = client()
            .get(&path)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        (serde_json::from_str::<Value>(&text).unwrap(), text)
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let (list, mut reads) = loop {
        let (list, text) = read(format!("{base}/v1/captures?limit=1000")).await;
        // Once indexed too: the previews in the list and pages are swept as well.
        if list["captures"].as_array().unwrap().len() >= sent && list["indexing"] == false {
            break (list, text);
        }
        assert!(
            Instant::now() < deadline,
            "not all exchanges stored: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut records = Vec::new();
    let page = |path: String| async move {
        let resp = client().get(&path).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        resp.text().await.unwrap()
    };
    let mut pages = page(format!("{base}/ui?limit=1000")).await;
    for s in list["captures"].as_array().unwrap() {
        let id = s["id"].as_str().unwrap();
        let (one, text) = read(format!("{base}/v1/captures/{id}")).await;
        reads.push_str(&text);
        records.push(one["capture"].clone());
        let html = page(format!("{base}/ui/captures/{id}")).await;
        assert!(
            html.contains("[REDACTED]"),
            "the page shows the redacted values as such"
        );
        pages.push_str(&html);
    }
    assert_eq!(
        list["captures"].as_array().unwrap().len(),
        sent,
        "each exchange stored once"
    );
    assert_eq!(
        pages.matches(" id=\"request\"").count(),
        sent,
        "every capture's page, once each"
    );
    let record = |case: &str| {
        records
            .iter()
            .find(|r| header(&r["request"], "x-test-case") == Some(case))
            .unwrap_or_else(|| panic!("no record of {case}"))
    };
    for name in DEFAULT_HEADERS {
        let r = record(&format!("header-{name}"));
        let kept = headers_named(&r["request"], name);
        assert_eq!(kept, ["[REDACTED]"], "{name} is on record, redacted");
    }
    let echoed = record("header-x-api-key");
    assert_eq!(
        headers_named(&echoed["response"], "x-api-key"),
        ["[REDACTED]"],
        "a key the upstream echoes is redacted in the response too"
    );
    let r = record("query");
    assert_eq!(
        headers_named(&r["request"], OPERATOR_HEADER),
        ["[REDACTED]"]
    );
    assert_eq!(headers_named(&r["response"], "set-cookie"), ["[REDACTED]"]);
    let q = r["request"]["query"].as_str().unwrap();
    assert!(
        q.starts_with("stream=false&key=[REDACTED]&KEY=[REDACTED]"),
        "{q}"
    );
    assert_eq!(
        q.matches("=[REDACTED]").count(),
        2 * (DEFAULT_QUERY_PARAMS.len() + 1),
        "{q}"
    );

    // A bad configuration whose audit_headers hold a token: refused, the token not shown.
    let refused = Envoy::try_start(EnvoyOpts {
        upstream,
        audit: collector_port,
        filter: Some(&filter_config(&format!(
            r#""audit_headers": "Bearer {INGEST_TOKEN}-in-a-bad-config""#
        ))),
        workers: 1,
    });
    let error_lines = match refused {
        Ok(_) => panic!("Envoy accepted audit_headers as a string"),
        Err(log) => log,
    };
    assert!(error_lines.contains("audit_headers"), "{error_lines}");

    // Let the last batches and log lines settle, then look everywhere: the database files while
    // the collector runs (the WAL holds the newest pages) and after it stopped.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stats = admin_get(envoy.admin, "/stats").unwrap()
        + &admin_get(envoy.admin, "/stats/prometheus").unwrap();
    let mut artifacts: Vec<(String, Vec<u8>)> = vec![
        ("Envoy's stats".into(), stats.into_bytes()),
        ("the collector's JSON reads".into(), reads.into_bytes()),
        ("the collector's web pages".into(), pages.into_bytes()),
        ("the filter's error lines".into(), error_lines.into_bytes()),
    ];
    let running = files_under(dir.path());
    assert!(
        running.iter().any(|p| p.ends_with("captures.db-wal")),
        "the WAL is among the artifacts: {running:?}"
    );
    for file in running {
        artifacts.push((
            format!("{} (running)", file.display()),
            std::fs::read(&file).unwrap(),
        ));
    }
    let envoy_log = envoy.log_text();
    assert!(
        envoy_log.contains("[debug][wasm]"),
        "Envoy's wasm component logged at debug:\n{envoy_log}"
    );
    artifacts.push(("Envoy's log".into(), envoy_log.into_bytes()));
    drop(envoy);
    Command::new("kill")
        .arg("-TERM")
        .arg(collector.0.id().to_string())
        .status()
        .unwrap();
    collector.0.wait().unwrap();
    for file in files_under(dir.path()) {
        artifacts.push((file.display().to_string(), std::fs::read(&file).unwrap()));
    }
    let collector_log =
        String::from_utf8_lossy(&std::fs::read(dir.path().join("collector.log")).unwrap())
            .into_owned();
    assert!(
        collector_log.contains("DEBUG"),
        "the collector logged at debug:\n{collector_log}"
    );
    for (name, bytes) in &artifacts {
        for secret in &canaries {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} found in {name}"
            );
        }
    }
}

const ADMIN_TOKEN: &str = "tt-admin-token-for-the-erasure-sweep";
/// Words only the exchange to be erased holds: in its question, and in its answer.
const ERASED_Q: &str = "quokkazanzibarsweep";
const ERASED_A: &str = "platypusmarmaladesweep";
/// A word only the kept exchange holds: found where the scan looks, so the scan is not blind.
const KEPT_Q: &str = "walruslighthousesweep";

/// An upstream that answers a chat question naming [`ERASED_Q`] with [`ERASED_A`].
async fn answering_upstream() -> u16 {
    let app = axum::Router::new().fallback(|body: String| async move {
        let answer = if body.contains(ERASED_Q) {
            format!("Dear {ERASED_A}, refunds take 60 days.")
        } else {
            "Yes, within 30 days.".to_owned()
        };
        (
            [("content-type", "application/json")],
            serde_json::json!({"choices": [{"message": {"role": "assistant", "content": answer}}]})
                .to_string(),
        )
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

/// An OTLP/HTTP receiver that answers 503 until `open`, and keeps every body it took.
struct SpanSink {
    endpoint: String,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    taken: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl SpanSink {
    async fn start() -> SpanSink {
        use std::sync::atomic::Ordering;
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let taken = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (o, t) = (open.clone(), taken.clone());
        let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
            let (o, t) = (o.clone(), t.clone());
            async move {
                if !o.load(Ordering::SeqCst) {
                    return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                }
                t.lock().unwrap().extend_from_slice(&body);
                axum::http::StatusCode::OK
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        SpanSink {
            endpoint,
            open,
            taken,
        }
    }
}

/// A counter or gauge of the collector's `/metrics`.
async fn collector_metric(base: &str, name: &str) -> f64 {
    let text = client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

async fn wait_metric(base: &str, name: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while collector_metric(base, name).await < want {
        assert!(Instant::now() < deadline, "{name} did not reach {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn holds(bytes: &[u8], word: &str) -> bool {
    bytes.windows(word.len()).any(|w| w == word.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_exchange_is_found_in_no_artifact_erasure_clears() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = answering_upstream().await;
    let sink = SpanSink::start().await;
    let port = free_port();
    let mut collector = collector_with(
        dir.path(),
        port,
        &[
            "--otlp-endpoint",
            &sink.endpoint,
            "--otlp-retry-max-ms",
            "300",
        ],
        &[("TRUTHTABLE_ADMIN_TOKEN", ADMIN_TOKEN)],
    );
    let base = format!("http://127.0.0.1:{port}");
    let filter = filter_config(&format!(
        r#""audit_headers": {{"authorization": "Bearer {INGEST_TOKEN}"}}"#
    ));
    let envoy = Envoy::start(EnvoyOpts {
        upstream,
        audit: port,
        filter: Some(&filter),
        workers: 1,
    });
    for question in [
        format!("My name is {ERASED_Q}, refund me"),
        format!("Can I return it? {KEPT_Q}"),
    ] {
        let resp = client()
            .post(envoy.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(
                serde_json::json!({"model": "m", "messages": [{"role": "user", "content": question}]})
                    .to_string(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    // Both stored and indexed; the exporter has read them and is being refused.
    let deadline = Instant::now() + Duration::from_secs(15);
    let erased_id = loop {
        let list: Value = client()
            .get(format!("{base}/v1/captures"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let rows = list["captures"].as_array().unwrap();
        let erased = rows.iter().find(|r| {
            r["question_preview"]
                .as_str()
                .is_some_and(|q| q.contains(ERASED_Q))
        });
        if let (2, false, Some(r)) = (rows.len(), list["indexing"] == true, erased) {
            break r["id"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "not both stored: {list}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    wait_metric(&base, "truthtable_collector_otlp_spans_retried_total", 1.0).await;

    let erased = client()
        .post(format!("{base}/v1/erasures"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"ids": [erased_id], "reason": "GDPR Art. 17 sweep"}))
        .send()
        .await
        .unwrap();
    assert_eq!(erased.status(), 200);
    sink.open.store(true, std::sync::atomic::Ordering::SeqCst);
    wait_metric(&base, "truthtable_collector_otlp_spans_exported_total", 1.0).await;

    // Every read and page the collector serves, for both captures and the lists.
    let list: Value = client()
        .get(format!("{base}/v1/captures?erased=show"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<String> = list["captures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(ids.contains(&erased_id) && ids.len() == 2, "{list}");
    let mut reads = Vec::new();
    let mut paths = vec![
        "/v1/captures?erased=show".to_owned(),
        "/v1/captures".to_owned(),
        format!("/v1/captures?q={ERASED_Q}"),
        "/v1/erasures".to_owned(),
        "/v1/log/checkpoint".to_owned(),
        "/metrics".to_owned(),
    ];
    for id in &ids {
        for tail in ["", "/entry", "/proof"] {
            paths.push(format!("/v1/captures/{id}{tail}"));
        }
    }
    for path in &paths {
        let resp = client().get(format!("{base}{path}")).send().await.unwrap();
        reads.extend(resp.bytes().await.unwrap());
    }
    let mut pages = Vec::new();
    for path in ["/ui".to_owned(), "/ui?erased=show".to_owned()]
        .into_iter()
        .chain(ids.iter().map(|id| format!("/ui/captures/{id}")))
    {
        let resp = client().get(format!("{base}{path}")).send().await.unwrap();
        pages.extend(resp.bytes().await.unwrap());
    }
    assert!(
        holds(&pages, "erased on") && holds(&pages, "GDPR Art. 17 sweep"),
        "the pages show the tombstone"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let spans = sink.taken.lock().unwrap().clone();
    let mut artifacts: Vec<(String, Vec<u8>)> = vec![
        ("the collector's JSON reads".into(), reads),
        ("the collector's web pages".into(), pages),
        ("the OpenTelemetry spans sent".into(), spans),
    ];
    let running: Vec<(String, Vec<u8>)> = files_under(dir.path())
        .into_iter()
        .filter(|p| !p.ends_with("collector.log"))
        .map(|p| {
            (
                format!("{} (running)", p.display()),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    assert!(
        running.iter().any(|(_, b)| holds(b, KEPT_Q)),
        "the database files hold the kept exchange"
    );
    artifacts.extend(running);
    drop(envoy);
    Command::new("kill")
        .arg("-TERM")
        .arg(collector.0.id().to_string())
        .status()
        .unwrap();
    collector.0.wait().unwrap();
    for file in files_under(dir.path()) {
        if !file.ends_with("collector.log") {
            artifacts.push((file.display().to_string(), std::fs::read(&file).unwrap()));
        }
    }
    for (name, bytes) in &artifacts[..3] {
        assert!(holds(bytes, KEPT_Q), "{name} holds the kept exchange");
    }
    for (name, bytes) in &artifacts {
        for word in [ERASED_Q, ERASED_A] {
            assert!(!holds(bytes, word), "{word} found in {name}");
        }
    }
}
