//! `complete_after_stored`: a real Envoy running the built filter, a real upstream and the real
//! collector. The response streams as it comes; its end reaches the client only once the
//! collector has stored the exchange's record — checked by reading the store at the moment the
//! client sees the end.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use std::time::{Duration, Instant};

/// A flush interval long enough that a record sent at the timer could not be stored before the
/// client's end: only the hold's immediate send gets it there in time.
const SLOW_FLUSH: &str = r#""flush_interval_ms": 3000"#;

fn hold_config(extra: &str) -> String {
    let keys = if extra.is_empty() {
        format!(r#""complete_after_stored": true, {SLOW_FLUSH}"#)
    } else {
        format!(r#""complete_after_stored": true, {SLOW_FLUSH}, {extra}"#)
    };
    filter_config(&keys)
}

/// Envoy with `filter` in front of `upstream`, sending captures to `audit`, and telling each
/// client its exchange's id (`x-request-id`, which is the capture's id).
fn envoy(upstream: u16, audit: u16, filter: &str) -> Envoy {
    envoy_with(upstream, audit, filter, false)
}

/// [`envoy`] with one more cluster, `truthtable_lanes`: HTTP/2 to the same collector, for
/// `audit_transport: "grpc"` (a gRPC stream needs HTTP/2; the shipped cluster speaks HTTP/1.1).
fn grpc_envoy(upstream: u16, audit: u16, filter: &str) -> Envoy {
    envoy_with(upstream, audit, filter, true)
}

fn envoy_with(upstream: u16, audit: u16, filter: &str, lanes: bool) -> Envoy {
    let lanes = lanes.then(|| {
        format!(
            "  clusters:\n{}",
            clusters::http2_cluster("truthtable_lanes", audit)
        )
    });
    Envoy::try_start_with(
        EnvoyOpts {
            upstream,
            audit,
            filter: Some(filter),
            workers: 2,
        },
        |yaml| {
            let yaml = yaml.replace(
                "preserve_external_request_id: false",
                "preserve_external_request_id: false\n          always_set_request_id_in_response: true",
            );
            match &lanes {
                Some(cluster) => {
                    assert_eq!(yaml.matches("\n  clusters:\n").count(), 1);
                    yaml.replace("\n  clusters:\n", &format!("\n{cluster}"))
                }
                None => yaml,
            }
        },
    )
    .unwrap_or_else(|log| panic!("Envoy did not start:\n{log}"))
}

/// The filter's keys that send records over gRPC streams to `truthtable_lanes`.
const GRPC: &str = r#""audit_cluster": "truthtable_lanes", "audit_transport": "grpc""#;

/// Whether the collector has stored the capture `id` (read straight from its store).
async fn stored(collector: &Collector, id: &str) -> bool {
    let url = format!("http://127.0.0.1:{}/v1/captures/{id}", collector.port);
    client().get(url).send().await.unwrap().status() == 200
}

/// An upstream, the collector (running, or down until the test starts it) and an Envoy whose
/// filter runs `filter`.
async fn rig(filter: &str, collector_up: bool) -> (Upstream, Collector, Envoy) {
    let upstream = Upstream::start().await;
    let collector = if collector_up {
        Collector::running().await
    } else {
        Collector::down(None)
    };
    let envoy = envoy(upstream.port, collector.port, filter);
    (upstream, collector, envoy)
}

/// Waits until Envoy's metric `name` reads `value` (the filter publishes at its ticks).
async fn metric_becomes(envoy: &Envoy, name: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = envoy.metric(name);
        if now == Some(value) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} is {now:?}, expected {value}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn request_id(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("x-request-id")
        .expect("Envoy sets x-request-id on the response")
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_json_answer_ends_only_once_its_record_is_stored() {
    let (_upstream, collector, envoy) = rig(&hold_config(""), true).await;
    ends_wait_for_their_records(
        &envoy,
        &collector,
        &["/v1/chat/completions", "/bytes?n=40000"],
    )
    .await;
}

/// Each of `paths` through `envoy`: when its client has the whole answer, the collector has its
/// record; every end was stored, none released unrecorded.
async fn ends_wait_for_their_records(envoy: &Envoy, collector: &Collector, paths: &[&str]) {
    for path in paths {
        let resp = client()
            .post(envoy.url(path))
            .body(r#"{"q":"capital of France?"}"#)
            .send()
            .await
            .unwrap();
        let id = request_id(&resp);
        let body = resp.bytes().await.unwrap();
        assert!(!body.is_empty());
        assert!(
            stored(collector, &id).await,
            "{path}: the client had the whole answer before its record {id} was stored"
        );
    }
    let n = paths.len() as f64;
    metric_becomes(envoy, "truthtable_hold_ends_stored", n).await;
    metric_becomes(envoy, "truthtable_hold_ends_released_unrecorded", 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_hold_the_same_answer_ends_before_its_record_is_stored() {
    // The control: the check above would catch an end that does not wait.
    let (_upstream, collector, envoy) = rig(&filter_config(SLOW_FLUSH), true).await;
    let resp = client()
        .post(envoy.url("/v1/chat/completions"))
        .body("{}")
        .send()
        .await
        .unwrap();
    let id = request_id(&resp);
    resp.bytes().await.unwrap();
    assert!(!stored(&collector, &id).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sse_events_stream_at_once_and_done_waits_for_the_record() {
    let (upstream, collector, envoy) = rig(&hold_config(""), true).await;
    let mut resp = client()
        .post(envoy.url("/sse-hold"))
        .body(r#"{"stream":true}"#)
        .send()
        .await
        .unwrap();
    let id = request_id(&resp);
    // The upstream has sent one event and waits: that event reaches the client now.
    let first = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
        .await
        .expect("the first event arrives while the upstream is still streaming")
        .unwrap()
        .unwrap();
    assert_eq!(first, sse_event(0).as_bytes());
    assert!(!stored(&collector, &id).await, "no record before the end");
    upstream.release();
    let mut rest = Vec::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        let had_done = String::from_utf8_lossy(&rest).contains("data: [DONE]");
        rest.extend_from_slice(&chunk);
        if !had_done && String::from_utf8_lossy(&rest).contains("data: [DONE]") {
            assert!(
                stored(&collector, &id).await,
                "the client saw data: [DONE] before the record was stored"
            );
        }
    }
    let rest = String::from_utf8(rest).unwrap();
    assert_eq!(rest, format!("{}data: [DONE]\n\n", sse_event(1)));
    let record = &collector.get(&format!("/v1/captures/{id}")).await["capture"];
    assert_eq!(record["outcome"], "complete");
    let body = String::from_utf8(body_bytes(&record["response"])).unwrap();
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    assert!(body.starts_with(&sse_event(0)), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bodiless_answers_end_once_their_record_is_stored() {
    let (_upstream, collector, envoy) = rig(&hold_config(""), true).await;
    for (method, path, status) in [
        (reqwest::Method::GET, "/status?code=204", 204),
        (reqwest::Method::GET, "/status?code=304", 304),
        (reqwest::Method::HEAD, "/v1/chat/completions", 200),
    ] {
        let resp = client()
            .request(method.clone(), envoy.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{method} {path}");
        let id = request_id(&resp);
        resp.bytes().await.unwrap();
        assert!(
            stored(&collector, &id).await,
            "{method} {path}: ended before its record was stored"
        );
        let record = &collector.get(&format!("/v1/captures/{id}")).await["capture"];
        assert_eq!(record["response"]["status"], status);
        assert_eq!(record["outcome"], "complete");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_collector_down_the_end_is_released_at_the_timeout_and_counted() {
    released_at_the_timeout(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_grpc_streams_with_the_collector_down_the_end_is_released_at_the_timeout() {
    released_at_the_timeout(true).await;
}

/// The collector is down: the end goes out after `hold_timeout_ms`, counted, and the record is
/// stored once the collector is back — with records sent by callouts or (`grpc`) on streams.
async fn released_at_the_timeout(grpc: bool) {
    let keys = r#""hold_timeout_ms": 600, "on_hold_timeout": "release""#;
    let upstream = Upstream::start().await;
    let mut collector = Collector::down(None);
    let envoy = if grpc {
        grpc_envoy(
            upstream.port,
            collector.port,
            &hold_config(&format!("{keys}, {GRPC}")),
        )
    } else {
        envoy(upstream.port, collector.port, &hold_config(keys))
    };
    let started = Instant::now();
    let resp = client()
        .post(envoy.url("/v1/chat/completions"))
        .body("{}")
        .send()
        .await
        .unwrap();
    let id = request_id(&resp);
    let body = resp.bytes().await.unwrap();
    let waited = started.elapsed();
    let answer: serde_json::Value = serde_json::from_slice(&body).expect("the whole answer");
    assert_eq!(answer["choices"][0]["message"]["content"], "Paris.");
    assert!(
        waited >= Duration::from_millis(550) && waited < Duration::from_millis(2000),
        "the end waited hold_timeout_ms: {waited:?}"
    );
    metric_becomes(&envoy, "truthtable_hold_ends_released_unrecorded", 1.0).await;
    // The record stayed queued and is delivered once the collector is back.
    collector.start().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !stored(&collector, &id).await {
        assert!(Instant::now() < deadline, "the queued record never arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_collector_down_reset_never_lets_the_client_see_the_end() {
    let (_upstream, mut collector, envoy) = rig(
        &hold_config(r#""hold_timeout_ms": 400, "on_hold_timeout": "reset""#),
        false,
    )
    .await;
    // A JSON answer: the client gets an error, never the whole body.
    let started = Instant::now();
    let resp = client()
        .post(envoy.url("/v1/chat/completions"))
        .body("{}")
        .send()
        .await;
    match resp {
        Ok(resp) => {
            let id = request_id(&resp);
            let body = resp.bytes().await;
            assert!(body.is_err(), "the client got a complete answer: {body:?}");
            assert!(started.elapsed() >= Duration::from_millis(350));
            // The record says what happened: stored as written at the end, then amended.
            collector.start().await;
            let deadline = Instant::now() + Duration::from_secs(15);
            let read = loop {
                if stored(&collector, &id).await {
                    let read = collector.get(&format!("/v1/captures/{id}")).await;
                    if read.get("amendments").is_some() {
                        break read;
                    }
                }
                assert!(Instant::now() < deadline, "no amended record {id}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            let amendment = &read["amendments"][0];
            assert_eq!(amendment["amendment"]["reason"], "reset_after_hold_timeout");
            assert_ne!(amendment["outcome"], "complete");
        }
        Err(e) => panic!("the response headers should have reached the client: {e}"),
    }
    // An SSE stream: the first event arrives, data: [DONE] never does.
    collector.stop().await;
    let mut resp = client()
        .post(envoy.url("/sse?events=3&delay_ms=10"))
        .send()
        .await
        .unwrap();
    let mut seen = Vec::new();
    let ended = loop {
        match resp.chunk().await {
            Ok(Some(c)) => seen.extend_from_slice(&c),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.starts_with(&sse_event(0)), "{seen}");
    assert!(!seen.contains("[DONE]"), "{seen}");
    assert!(ended.is_err(), "the stream was reset, not ended");
    metric_becomes(&envoy, "truthtable_hold_streams_reset", 2.0).await;
}

// ---- terminal events ----------------------------------------------------------------------------

/// An upstream that answers each path with fixed chunks, `None` standing for a 150 ms pause.
async fn scripted(routes: Vec<(&'static str, &'static str, Vec<Option<&'static str>>)>) -> u16 {
    use axum::body::Body;
    use axum::http::{Response, Uri};
    let routes = std::sync::Arc::new(routes);
    let app = axum::Router::new().fallback(move |uri: Uri| {
        let routes = routes.clone();
        async move {
            let (_, content_type, chunks) = routes
                .iter()
                .find(|(p, _, _)| *p == uri.path())
                .expect("a scripted path")
                .clone();
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(16);
            tokio::spawn(async move {
                for chunk in chunks {
                    match chunk {
                        Some(c) => {
                            if tx.send(Ok(bytes::Bytes::from(c))).await.is_err() {
                                return;
                            }
                        }
                        None => tokio::time::sleep(Duration::from_millis(150)).await,
                    }
                }
            });
            Response::builder()
                .header("content-type", content_type)
                .body(Body::from_stream(
                    tokio_stream::wrappers::ReceiverStream::new(rx),
                ))
                .unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

/// Streams `path` through Envoy: the chunks before the terminal event arrive before it, the
/// client sees the event only once the record is stored, and the whole body arrives. Returns the
/// stored record.
async fn terminal_event_waits(
    envoy: &Envoy,
    collector: &Collector,
    path: &str,
    event: &str,
    whole: &str,
) -> serde_json::Value {
    let started = Instant::now();
    let mut resp = client().post(envoy.url(path)).send().await.unwrap();
    let id = request_id(&resp);
    let mut seen = String::new();
    let mut first_at = None;
    while let Some(chunk) = resp.chunk().await.unwrap() {
        first_at.get_or_insert(started.elapsed());
        let had = seen.contains(event);
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
        if !had && seen.contains(event) {
            assert!(
                stored(collector, &id).await,
                "{path}: the client saw {event:?} before the record was stored"
            );
        }
    }
    assert_eq!(seen, whole, "{path}: the whole body, in order");
    let total = started.elapsed();
    assert!(
        first_at.unwrap() + Duration::from_millis(250) < total,
        "{path}: the first chunk arrived at once ({first_at:?} of {total:?})"
    );
    collector.get(&format!("/v1/captures/{id}")).await["capture"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_protocols_terminal_event_reaches_the_client_only_once_stored() {
    let openai = vec![
        Some("data: {\"choices\":[{\"delta\":{\"content\":\"Par\"}}]}\n\n"),
        None,
        Some("data: {\"choices\":[{\"delta\":{\"content\":\"is\"}}]}\n\nda"),
        None,
        Some("ta: [DO"),
        None,
        Some("NE]\n\n"),
    ];
    let anthropic = vec![
        Some("event: message_start\ndata: {\"type\":\"message_start\"}\n\n"),
        None,
        Some("event: message_delta\ndata: {\"type\":\"message_delta\"}\n\nevent: message_st"),
        None,
        Some("op\ndata: {\"type\":\"message_stop\"}\n\n"),
        // Bytes after the terminal event, once the end went out: they still reach the client.
        None,
        None,
        Some(": keep-alive after the end\n\n"),
    ];
    let ollama = vec![
        Some("{\"message\":{\"content\":\"Par\"},\"done\":false}\n"),
        None,
        Some("{\"message\":{\"content\":\"is\"},\"done\":false}\n{\"message\":{},\"done\""),
        None,
        Some(": true,\"total_duration\":1}\n"),
    ];
    let gemini = vec![
        Some("[{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Par\"}]}}]}\n"),
        None,
        Some(",\r\n{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"is\"}]},\"finishReason\": \"STOP\"}]}\n"),
        None,
        Some("]"),
    ];
    let whole = |chunks: &Vec<Option<&str>>| chunks.iter().flatten().copied().collect::<String>();
    let cases = [
        (
            "/v1/chat/completions",
            "text/event-stream",
            openai,
            "data: [DONE]",
        ),
        (
            "/v1/messages",
            "text/event-stream",
            anthropic,
            "event: message_stop",
        ),
        (
            "/api/chat",
            "application/x-ndjson",
            ollama,
            "\"done\": true",
        ),
        (
            "/v1beta/models/gemini-2.0-flash:streamGenerateContent",
            "application/json",
            gemini,
            "\"finishReason\"",
        ),
    ];
    let port = scripted(
        cases
            .iter()
            .map(|(p, ct, chunks, _)| (*p, *ct, chunks.clone()))
            .collect(),
    )
    .await;
    let collector = Collector::running().await;
    let envoy = envoy(port, collector.port, &hold_config(""));
    for (path, _, chunks, event) in &cases {
        let record = terminal_event_waits(&envoy, &collector, path, event, &whole(chunks)).await;
        assert_eq!(record["outcome"], "complete", "{path}");
        let body = String::from_utf8(body_bytes(&record["response"])).unwrap();
        assert!(
            body.contains(event) && whole(chunks).starts_with(&body),
            "{path}: the record holds everything up to the terminal event: {body:?}"
        );
    }
}

// ---- the guarantee under SIGKILL ----------------------------------------------------------------

/// What the clients of a load run saw: the ids of the answers they received completely.
struct Load {
    complete: Vec<String>,
    failed: usize,
}

/// 24 concurrent clients (half JSON answers, half SSE streams) against whichever Envoy `port`
/// names, while Envoy is SIGKILLed at random moments `kills` times and started again; returns
/// the ids of every answer a client received completely (an SSE stream counts once its
/// `data: [DONE]` arrived).
async fn load_with_kills(
    filter: &str,
    collector: &Collector,
    kills: usize,
    envoy: fn(u16, u16, &str) -> Envoy,
) -> Load {
    use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
    use std::sync::{Arc, Mutex};
    let upstream = Upstream::start().await;
    let mut current = envoy(upstream.port, collector.port, filter);
    let port = Arc::new(AtomicU16::new(current.port));
    let stop = Arc::new(AtomicBool::new(false));
    let complete = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..24 {
        let (port, stop, complete, failed) =
            (port.clone(), stop.clone(), complete.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            while !stop.load(Ordering::SeqCst) {
                let p = port.load(Ordering::SeqCst);
                let (path, sse) = if c % 2 == 0 {
                    ("/v1/chat/completions", false)
                } else {
                    ("/sse?events=4&delay_ms=5", true)
                };
                let got = async {
                    let mut resp = http
                        .post(format!("http://127.0.0.1:{p}{path}"))
                        .body(r#"{"q":"?"}"#)
                        .send()
                        .await
                        .ok()?;
                    let id = resp
                        .headers()
                        .get("x-request-id")?
                        .to_str()
                        .ok()?
                        .to_owned();
                    let mut body = Vec::new();
                    loop {
                        match resp.chunk().await {
                            Ok(Some(c)) => {
                                body.extend_from_slice(&c);
                                // A streaming client is done at the terminal event.
                                if sse && body.ends_with(b"data: [DONE]\n\n") {
                                    return Some(id);
                                }
                            }
                            Ok(None) if !sse => {
                                let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
                                return (v["choices"][0]["message"]["content"] == "Paris.")
                                    .then_some(id);
                            }
                            _ => return None,
                        }
                    }
                }
                .await;
                match got {
                    Some(id) => complete.lock().unwrap().push(id),
                    None => {
                        failed.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    for _ in 0..kills {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let wait = 400 + (seed >> 33) % 800;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        drop(current); // SIGKILL
        current = envoy(upstream.port, collector.port, filter);
        port.store(current.port, Ordering::SeqCst);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    drop(current);
    let complete = complete.lock().unwrap().clone();
    Load {
        complete,
        failed: failed.load(Ordering::SeqCst),
    }
}

/// How many of `ids` the collector has stored.
async fn stored_count(collector: &Collector, ids: &[String]) -> usize {
    use futures_util::StreamExt;
    let http = client();
    futures_util::stream::iter(ids)
        .map(|id| {
            let url = format!("http://127.0.0.1:{}/v1/captures/{id}", collector.port);
            let http = http.clone();
            async move { http.get(url).send().await.unwrap().status() == 200 }
        })
        .buffer_unordered(16)
        .filter(|stored| std::future::ready(*stored))
        .count()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_answer_received_completely_is_stored_though_envoy_is_sigkilled() {
    let collector = Collector::running().await;
    let filter = filter_config(r#""complete_after_stored": true, "flush_interval_ms": 1000"#);
    let load = load_with_kills(&filter, &collector, 3, envoy).await;
    let n = load.complete.len();
    assert!(n > 100, "too little load to tell: {n} answers");
    let stored = stored_count(&collector, &load.complete).await;
    eprintln!(
        "hold on: {stored} of {n} answers received completely are stored ({} requests failed with the kills)",
        load.failed
    );
    assert_eq!(
        stored,
        n,
        "{} answers received without their record",
        n - stored
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_hold_sigkills_lose_answers_clients_received() {
    // The control: the check above finds a loss when the hold is off.
    let collector = Collector::running().await;
    let filter = filter_config(r#""flush_interval_ms": 1000"#);
    let load = load_with_kills(&filter, &collector, 3, envoy).await;
    let n = load.complete.len();
    assert!(n > 100, "too little load to tell: {n} answers");
    // What Envoy had delivered before it died is all the collector will ever get.
    let stored = stored_count(&collector, &load.complete).await;
    eprintln!("hold off: {stored} of {n} answers received completely are stored");
    assert!(
        stored < n,
        "no loss without the hold: the test could not tell"
    );
}

// ---- after the record is stored -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_leaves_during_the_hold_is_told_by_an_amendment_of_the_capture() {
    let (_upstream, mut collector, envoy) =
        rig(&hold_config(r#""hold_timeout_ms": 20000"#), false).await;
    // The collector is down: the end stays held. The client has the headers, then goes away.
    let resp = client()
        .post(envoy.url("/v1/chat/completions"))
        .body("{}")
        .send()
        .await
        .unwrap();
    let id = request_id(&resp);
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(resp);
    tokio::time::sleep(Duration::from_millis(300)).await;
    collector.start().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let read = loop {
        let url = format!("http://127.0.0.1:{}/v1/captures/{id}", collector.port);
        let resp = client().get(url).send().await.unwrap();
        if resp.status() == 200 {
            let read: serde_json::Value = resp.json().await.unwrap();
            if read.get("amendments").is_some() {
                break read;
            }
        }
        assert!(Instant::now() < deadline, "no amended capture {id}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The capture as written at the end, unchanged; the amendment says the client never got it.
    assert_eq!(read["capture"]["outcome"], "complete");
    assert!(read["capture"].get("amendment").is_none());
    let amendments = read["amendments"].as_array().unwrap();
    assert_eq!(amendments.len(), 1, "{amendments:?}");
    let a = &amendments[0];
    assert_eq!(a["id"], id.as_str());
    assert_eq!(a["outcome"], "client_aborted");
    assert_eq!(a["amendment"]["reason"], "client_gone_during_hold");
    assert!(a["amendment"]["held_ms"].as_f64().unwrap() >= 150.0, "{a}");
}

// ---- HTTP/2 and Envoy's own replies -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_http2_stream_ends_only_once_its_record_is_stored() {
    let (_upstream, collector, envoy) = rig(&hold_config(""), true).await;
    let dir = tempfile::tempdir().unwrap();
    let headers = dir.path().join("headers");
    for path in ["/sse?events=3&delay_ms=20", "/v1/chat/completions"] {
        // curl over HTTP/2 with prior knowledge (h2c): a real HTTP/2 client.
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "--http2-prior-knowledge", "-X", "POST", "-d", "{}"])
            .args(["-w", "%{http_version}", "-D"])
            .arg(&headers)
            .arg(envoy.url(path))
            .output()
            .await
            .expect("curl (scripts/setup installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(stdout.ends_with('2'), "HTTP/2: {stdout}");
        let id = std::fs::read_to_string(&headers)
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("x-request-id: ").map(str::to_owned))
            .expect("x-request-id");
        assert!(
            stored(&collector, id.trim()).await,
            "{path}: curl had the whole HTTP/2 answer before its record was stored"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn envoys_own_error_reply_ends_only_once_its_record_is_stored() {
    let collector = Collector::running().await;
    // Nothing listens upstream: Envoy answers 503 itself.
    let nobody = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let envoy = envoy(nobody, collector.port, &hold_config(""));
    let resp = client()
        .post(envoy.url("/v1/chat/completions"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let id = request_id(&resp);
    let body = resp.bytes().await.unwrap();
    assert!(!body.is_empty(), "Envoy's reply has a body");
    assert!(
        stored(&collector, &id).await,
        "the local reply ended before its record was stored"
    );
    let record = &collector.get(&format!("/v1/captures/{id}")).await["capture"];
    assert_eq!(record["outcome"], "upstream_failed");
    assert_eq!(record["response"]["status"], 503);
}

// ---- configuration changes ----------------------------------------------------------------------

/// The record of the request that carried `x-test-case: case`, if the collector has stored it.
async fn stored_case(collector: &Collector, case: &str) -> bool {
    let list = collector.get("/v1/captures?limit=1000").await;
    for s in list["captures"].as_array().unwrap() {
        let read = collector
            .get(&format!("/v1/captures/{}", s["id"].as_str().unwrap()))
            .await;
        if header(&read["capture"]["request"], "x-test-case") == Some(case) {
            return true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_held_stream_whose_configuration_is_replaced_still_completes_or_times_out() {
    replaced_while_held(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_grpc_streams_a_held_stream_whose_configuration_is_replaced_still_completes_or_times_out(
) {
    replaced_while_held(true).await;
}

async fn replaced_while_held(grpc: bool) {
    use common::lds::{LdsEnvoy, Listener};
    let upstream = Upstream::start().await;
    let mut collector = Collector::down(None);
    let port = free_port();
    let transport = if grpc {
        format!(", {GRPC}")
    } else {
        String::new()
    };
    let config = |timeout: u32, flush: u32| {
        filter_config(&format!(
            r#""complete_after_stored": true, "hold_timeout_ms": {timeout}, "flush_interval_ms": {flush}{transport}"#
        ))
    };
    let (a, b, c) = (config(10_000, 3000), config(800, 2000), config(800, 1000));
    let listener = |config| Listener::shipped("llm", port, config);
    let mut envoy = LdsEnvoy::start(upstream.port, collector.port, 2, 5, &[listener(&a)]);
    let url = envoy.url(port, "/v1/chat/completions");
    let ask = |case: &'static str| {
        let url = url.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let body = fetch(client().post(url).header("x-test-case", case).body("{}")).await;
            (body, started.elapsed())
        })
    };

    // Held under A with the collector down; A is replaced by B; the collector comes back: the
    // old configuration's record is stored and its end goes out.
    let held = ask("held-under-a");
    tokio::time::sleep(Duration::from_millis(300)).await;
    envoy.update(&[listener(&b)]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held.is_finished(), "the end waits for the record");
    collector.start().await;
    let (body, took) = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("the end went out once stored")
        .unwrap();
    assert!(body.starts_with(b"{"), "the whole answer");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(stored_case(&collector, "held-under-a").await);
    if grpc {
        assert!(
            collector
                .metric("truthtable_collector_ingest_stream_batches_total")
                .await
                >= Some(1.0),
            "the record came on a gRPC stream"
        );
    }

    // Held under B with the collector down again; B is replaced by C: B's hold_timeout_ms
    // releases the end.
    collector.stop().await;
    let held = ask("held-under-b");
    tokio::time::sleep(Duration::from_millis(200)).await;
    envoy.update(&[listener(&c)]);
    let (body, took) = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("released at hold_timeout_ms")
        .unwrap();
    assert!(body.starts_with(b"{"), "the whole answer");
    assert!(took >= Duration::from_millis(750), "{took:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while envoy.metric("truthtable_hold_ends_released_unrecorded") != Some(1.0) {
        assert!(Instant::now() < deadline, "the release is counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A replaced configuration's gRPC streams close once its root goes: a control plane that pushes
/// a change every few minutes must not leave a collector holding the streams of every
/// configuration since Envoy started. (The root cancels them when it leaves, and Envoy resets a
/// destroyed root context's streams itself: with either alone they close about a second after
/// the replacement, so this checks the outcome, not which of the two did it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_grpc_streams_replaced_configurations_leave_no_streams_open() {
    use common::lds::{LdsEnvoy, Listener};
    let upstream = Upstream::start().await;
    let collector = Collector::running().await;
    let port = free_port();
    // One stream per worker: two workers hold at most two at a time.
    let configs: Vec<String> = [40, 50, 60, 70]
        .iter()
        .map(|flush| {
            filter_config(&format!(
                r#""flush_interval_ms": {flush}, "max_inflight": 1, {GRPC}"#
            ))
        })
        .collect();
    let listener = |config| Listener::shipped("llm", port, config);
    let mut envoy = LdsEnvoy::start(
        upstream.port,
        collector.port,
        2,
        1,
        &[listener(&configs[0])],
    );
    let open = "truthtable_collector_ingest_streams_open";
    let mut sent = 0.0;
    for (i, config) in configs.iter().enumerate() {
        if i > 0 {
            envoy.update(&[listener(config)]);
            envoy.wait_drained(Duration::from_secs(20));
        }
        // Enough exchanges at once that both workers take some and open their streams.
        let url = envoy.url(port, "/v1/chat/completions");
        let asks: Vec<_> = (0..16)
            .map(|_| tokio::spawn(fetch(client().post(url.clone()).body("{}"))))
            .collect();
        for ask in asks {
            assert!(ask.await.unwrap().starts_with(b"{"));
        }
        sent += 16.0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while collector
            .metric("truthtable_collector_records_stored_total")
            .await
            < Some(sent)
        {
            assert!(
                Instant::now() < deadline,
                "configuration {i}'s records stored"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(
        collector
            .metric("truthtable_collector_ingest_stream_batches_total")
            .await
            >= Some(4.0),
        "the records came on gRPC streams"
    );
    // Three configurations were replaced, each with a stream on one or both workers: only the
    // last one's may stay open.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = collector.metric(open).await.unwrap_or(f64::NAN);
        if now <= 2.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{now} streams still open after three replaced configurations"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---- trailers -----------------------------------------------------------------------------------

/// An HTTP/1.1 upstream that answers every request with a chunked JSON body, then, 300 ms later,
/// its trailers (`x-checksum: abc123`): written by hand, since the end of this answer is the
/// trailers and nothing else.
async fn trailing_upstream() -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // A request without a body: it ends at its blank line.
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let at = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    buf.drain(..at);
                    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                                transfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n\
                                e\r\n{\"answer\":\"ok\"\r\n";
                    if conn.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let tail = "1\r\n}\r\n0\r\nx-checksum: abc123\r\n\r\n";
                    if conn.write_all(tail.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn trailers_reach_the_client_only_once_the_record_is_stored() {
    let upstream = trailing_upstream().await;
    let collector = Collector::running().await;
    // Envoy's HTTP/1 codec passes the upstream's trailers on only when told to; HTTP/2 clients
    // always get them.
    let envoy = Envoy::try_start_with(
        EnvoyOpts {
            upstream,
            audit: collector.port,
            filter: Some(&hold_config("")),
            workers: 2,
        },
        |yaml| {
            let yaml = yaml.replace(
                "preserve_external_request_id: false",
                "preserve_external_request_id: false\n          always_set_request_id_in_response: true",
            );
            let cluster = "  - name: llm_upstream\n    type: STATIC\n";
            assert_eq!(yaml.matches(cluster).count(), 1);
            yaml.replace(
                cluster,
                &format!(
                    "{cluster}    typed_extension_protocol_options:\n      \
                     envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \
                     \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        \
                     explicit_http_config:\n          \
                     http_protocol_options: {{ enable_trailers: true }}\n"
                ),
            )
        },
    )
    .unwrap_or_else(|log| panic!("Envoy did not start:\n{log}"));
    let dir = tempfile::tempdir().unwrap();
    let headers = dir.path().join("headers");
    // curl over HTTP/2 (h2c): it writes the trailers to the header dump after the headers.
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--http2-prior-knowledge", "-D"])
        .arg(&headers)
        .arg(envoy.url("/v1/chat/completions"))
        .output()
        .await
        .expect("curl (scripts/setup installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = {
        let dump = std::fs::read_to_string(&headers).unwrap();
        assert!(
            dump.contains("x-checksum: abc123"),
            "the trailers reached the client: {dump}"
        );
        dump.lines()
            .find_map(|l| {
                l.strip_prefix("x-request-id: ")
                    .map(|v| v.trim().to_owned())
            })
            .expect("x-request-id")
    };
    assert_eq!(out.stdout, b"{\"answer\":\"ok\"}");
    // No content-length and a body chunk without end of stream: the trailers are the end.
    assert!(
        stored(&collector, &id).await,
        "the client had the trailers before the record {id} was stored"
    );
    metric_becomes(&envoy, "truthtable_hold_ends_stored", 1.0).await;
    let record = &collector.get(&format!("/v1/captures/{id}")).await["capture"];
    assert_eq!(record["outcome"], "complete");
}

// ---- a failure after the end went out -----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_that_fails_after_its_end_went_out_is_told_by_an_amendment() {
    use axum::body::Body;
    use axum::http::Response;
    // An SSE stream whose terminal event is followed by more bytes, then the upstream breaks off
    // (an error in the body: the connection closes without the chunked terminator).
    let app = axum::Router::new().fallback(|| async {
        let chunks = futures_util::stream::unfold(0u8, |step| async move {
            match step {
                0 => Some((Ok(bytes::Bytes::from("data: {\"a\":1}\n\n")), 1)),
                1 => Some((Ok(bytes::Bytes::from("data: [DONE]\n\n")), 2)),
                2 => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Some((Ok(bytes::Bytes::from(": after the end\n\n")), 3))
                }
                3 => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Some((Err(std::io::Error::other("upstream breaks off")), 4))
                }
                _ => None,
            }
        });
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(Body::from_stream(chunks))
            .unwrap()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let collector = Collector::running().await;
    let envoy = envoy(port, collector.port, &hold_config(""));
    let mut resp = client()
        .post(envoy.url("/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    let id = request_id(&resp);
    let mut seen = String::new();
    let ended = loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                let had = seen.contains("[DONE]");
                seen.push_str(&String::from_utf8_lossy(&c));
                if !had && seen.contains("[DONE]") {
                    assert!(stored(&collector, &id).await, "[DONE] before the record");
                }
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    assert!(seen.contains("[DONE]"), "{seen}");
    assert!(ended.is_err(), "the stream broke off after the end: {seen}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let read = loop {
        let read = collector.get(&format!("/v1/captures/{id}")).await;
        if read.get("amendments").is_some() {
            break read;
        }
        assert!(Instant::now() < deadline, "no amended capture {id}: {read}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The capture as written at the end; the amendment tells the failure that followed.
    assert_eq!(read["capture"]["outcome"], "complete");
    let amendments = read["amendments"].as_array().unwrap();
    assert_eq!(amendments.len(), 1, "{amendments:?}");
    let a = &amendments[0];
    assert_eq!(a["amendment"]["reason"], "failed_after_release");
    assert_ne!(a["outcome"], "complete", "{a}");
    let body = String::from_utf8(body_bytes(&a["response"])).unwrap();
    assert!(body.contains(": after the end"), "{body:?}");
}

// ---- records over gRPC streams (`audit_transport: "grpc"`) --------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_grpc_streams_a_json_answer_and_an_sse_stream_end_only_once_stored() {
    let upstream = Upstream::start().await;
    let collector = Collector::running().await;
    let envoy = grpc_envoy(upstream.port, collector.port, &hold_config(GRPC));
    let paths = ["/v1/chat/completions", "/sse?events=3&delay_ms=5"];
    ends_wait_for_their_records(&envoy, &collector, &paths).await;
    assert!(
        collector
            .metric("truthtable_collector_ingest_stream_batches_total")
            .await
            >= Some(2.0),
        "the records came as batches on gRPC streams"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_grpc_streams_every_answer_received_completely_is_stored_though_envoy_is_sigkilled() {
    let collector = Collector::running().await;
    let filter = filter_config(&format!(
        r#"{GRPC}, "complete_after_stored": true, "flush_interval_ms": 1000"#
    ));
    let load = load_with_kills(&filter, &collector, 3, grpc_envoy).await;
    let n = load.complete.len();
    assert!(n > 100, "too little load to tell: {n} answers");
    let stored = stored_count(&collector, &load.complete).await;
    eprintln!("hold on, gRPC streams: {stored} of {n} answers received completely are stored");
    assert_eq!(
        stored,
        n,
        "{} answers received without their record",
        n - stored
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_grpc_streams_a_collector_restart_loses_nothing() {
    // The streams close with the collector; what was sent on them, and what comes while it is
    // down, is sent again on new streams once it is back.
    let upstream = Upstream::start().await;
    let mut collector = Collector::running().await;
    let envoy = grpc_envoy(upstream.port, collector.port, &filter_config(GRPC));
    let send = |n: usize| {
        let url = envoy.url("/v1/chat/completions");
        async move {
            let mut ids = Vec::new();
            for _ in 0..n {
                let resp = client().post(&url).body("{}").send().await.unwrap();
                assert_eq!(resp.status(), 200);
                ids.push(request_id(&resp));
            }
            ids
        }
    };
    let mut ids = send(5).await;
    collector.wait_records(5, Duration::from_secs(10)).await;
    collector.stop().await;
    ids.extend(send(5).await);
    collector.start().await;
    let records = collector.wait_records(10, Duration::from_secs(20)).await;
    for id in &ids {
        assert!(
            records.iter().any(|r| r["id"] == id.as_str()),
            "{id} was not stored after the restart"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_grpc_streams_batches_of_a_quarter_megabyte_arrive_whole() {
    // 24 answers of 48 KiB gathered for a second: batches up to batch_max_bytes (256 KiB), larger
    // than an HTTP/2 stream's first flow-control window.
    let upstream = Upstream::start().await;
    let collector = Collector::running().await;
    let filter = filter_config(&format!(r#"{GRPC}, "flush_interval_ms": 1000"#));
    let envoy = grpc_envoy(upstream.port, collector.port, &filter);
    let mut ids = Vec::new();
    for _ in 0..24 {
        let resp = client()
            .post(envoy.url("/bytes?n=49152"))
            .body("{}")
            .send()
            .await
            .unwrap();
        ids.push(request_id(&resp));
        assert_eq!(resp.bytes().await.unwrap().len(), 49152);
    }
    let records = collector.wait_records(24, Duration::from_secs(20)).await;
    for id in &ids {
        let record = records
            .iter()
            .find(|r| r["id"] == id.as_str())
            .unwrap_or_else(|| panic!("{id} was not stored"));
        assert_eq!(record["response"]["body"]["size"], 49152);
        assert_eq!(record["response"]["body"]["truncated"], false);
    }
    assert!(
        collector
            .metric("truthtable_collector_ingest_stream_batches_total")
            .await
            >= Some(4.0),
        "1.2 MB of records came in batches of at most 256 KiB"
    );
}
