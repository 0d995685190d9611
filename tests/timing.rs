//! How fast the answer came, end to end: a paced upstream (a known wait before the first content
//! event, known gaps between events, one long stall) streams OpenAI chat, Anthropic and Ollama
//! answers through Envoy running the filter into the real collector, whose audit view must find
//! the pacing in `timing`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::body::Body;
use axum::http::{HeaderMap, Response, Uri};
use axum::routing::any;
use axum::Router;
use bytes::Bytes;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::time::Instant;

/// Before the first content event.
const FIRST_MS: u64 = 300;
/// Between content events.
const GAP_MS: u64 = 60;
/// The stall, after [`STALL_AFTER`] words.
const STALL_MS: u64 = 800;
const STALL_AFTER: usize = 5;
/// The collector's `--stall-threshold-ms` here.
const THRESHOLD_MS: u64 = 500;
const WORDS: [&str; 9] = [
    "The",
    " capital",
    " of",
    " France",
    " is",
    " Paris",
    ",",
    " on",
    " the Seine.",
];

/// When word `i` is sent, in ms after the request arrived.
fn word_at(i: usize) -> u64 {
    let stall = if i >= STALL_AFTER {
        STALL_MS - GAP_MS
    } else {
        0
    };
    FIRST_MS + GAP_MS * i as u64 + stall
}

/// The frames of one paced answer: `(ms after the request, bytes)`.
fn script(path: &str) -> (&'static str, Vec<(u64, String)>) {
    let sse = |event: &str, data: Value| match event {
        "" => format!("data: {data}\n\n"),
        _ => format!("event: {event}\ndata: {data}\n\n"),
    };
    let last = word_at(WORDS.len() - 1) + 10;
    let mut frames = Vec::new();
    match path {
        "/v1/chat/completions" => {
            let chunk = |delta: Value, extra: Value| {
                let mut v = json!({"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": null}]});
                if let Value::Object(extra) = extra {
                    v.as_object_mut().unwrap().extend(extra);
                }
                sse("", v)
            };
            frames.push((
                0,
                chunk(json!({"role": "assistant", "content": ""}), json!(null)),
            ));
            for (i, w) in WORDS.iter().enumerate() {
                frames.push((word_at(i), chunk(json!({"content": w}), json!(null))));
            }
            frames.push((
                last,
                sse(
                    "",
                    json!({"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o",
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 9, "completion_tokens": 9}}),
                ) + "data: [DONE]\n\n",
            ));
            ("text/event-stream", frames)
        }
        "/v1/messages" => {
            frames.push((
                0,
                sse(
                    "message_start",
                    json!({"type": "message_start", "message": {"id": "m1", "type": "message",
                    "role": "assistant", "model": "claude-sonnet-4-5", "content": [],
                    "usage": {"input_tokens": 9, "output_tokens": 1}}}),
                ) + &sse(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}),
                ) + &sse("ping", json!({"type": "ping"})),
            ));
            for (i, w) in WORDS.iter().enumerate() {
                frames.push((
                    word_at(i),
                    sse(
                        "content_block_delta",
                        json!({"type": "content_block_delta", "index": 0,
                        "delta": {"type": "text_delta", "text": w}}),
                    ),
                ));
            }
            frames.push((
                last,
                sse(
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": 0}),
                ) + &sse(
                    "message_delta",
                    json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                    "usage": {"output_tokens": 9}}),
                ) + &sse("message_stop", json!({"type": "message_stop"})),
            ));
            ("text/event-stream", frames)
        }
        "/api/chat" => {
            let line = |content: &str, done: bool| {
                let mut v = json!({"model": "llama3.2", "created_at": "2026-12-06T00:00:00Z",
                    "message": {"role": "assistant", "content": content}, "done": done});
                if done {
                    v["done_reason"] = json!("stop");
                    v["eval_count"] = json!(9);
                    v["prompt_eval_count"] = json!(9);
                }
                format!("{v}\n")
            };
            for (i, w) in WORDS.iter().enumerate() {
                frames.push((word_at(i), line(w, false)));
            }
            frames.push((last, line("", true)));
            ("application/x-ndjson", frames)
        }
        _ => {
            let answer = json!({"id": "c2", "object": "chat.completion", "model": "gpt-4o",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."},
                "finish_reason": "stop"}]});
            ("application/json", vec![(0, answer.to_string())])
        }
    }
}

/// Sends each frame of the path's script at its time (from the request's arrival, so delays do
/// not add up); gzip-compressed, each frame flushed as a server streams it, when the request says
/// `accept-encoding: gzip`.
async fn paced(uri: Uri, headers: HeaderMap) -> Response<Body> {
    use std::io::Write;
    let start = Instant::now();
    let (content_type, frames) = script(uri.path());
    let gzip = headers
        .get("accept-encoding")
        .is_some_and(|v| v.as_bytes() == b"gzip");
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        let mut encoder =
            gzip.then(|| flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default()));
        let last = frames.len() - 1;
        for (i, (at, frame)) in frames.into_iter().enumerate() {
            tokio::time::sleep_until(start + Duration::from_millis(at)).await;
            let bytes = match encoder.as_mut() {
                None => frame.into_bytes(),
                Some(e) => {
                    e.write_all(frame.as_bytes()).unwrap();
                    e.flush().unwrap();
                    std::mem::take(e.get_mut())
                }
            };
            let mut bytes = bytes;
            if i == last {
                if let Some(e) = encoder.take() {
                    bytes.extend(e.finish().unwrap());
                }
            }
            if tx.send(Ok(Bytes::from(bytes))).await.is_err() {
                return;
            }
        }
    });
    let mut response = Response::builder().header("content-type", content_type);
    if gzip {
        response = response.header("content-encoding", "gzip");
    }
    response
        .body(Body::from_stream(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .unwrap()
}

struct Rig {
    envoy: Envoy,
    collector: Collector,
}

async fn rig() -> Rig {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, Router::new().fallback(any(paced))).await });
    let mut collector = Collector::down(None);
    collector.stall_threshold_ms = Some(THRESHOLD_MS);
    collector.start().await;
    let envoy = Envoy::start(EnvoyOpts {
        upstream,
        audit: collector.port,
        filter: Some(&filter_config("")),
        workers: 2,
    });
    Rig { envoy, collector }
}

/// The audit view of the one capture whose path is `path`.
fn view_of<'a>(captures: &'a [Value], path: &str) -> &'a Value {
    &captures
        .iter()
        .find(|c| c["capture"]["request"]["path"] == path)
        .unwrap_or_else(|| panic!("no capture of {path}"))["audit"]
}

fn assert_near(what: &str, got: &Value, want: u64, slack: u64) {
    let got = got
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {got}"));
    assert!(
        got >= want as f64 && got <= (want + slack) as f64,
        "{what}: {got} ms where the upstream paced {want} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttft_token_gaps_and_a_stall_are_found_where_a_paced_upstream_put_them() {
    let r = rig().await;
    let requests = [
        (
            "/v1/chat/completions",
            json!({"model": "gpt-4o", "stream": true,
            "messages": [{"role": "user", "content": "Capital of France?"}]}),
        ),
        (
            "/v1/messages",
            json!({"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": true,
            "messages": [{"role": "user", "content": "Capital of France?"}]}),
        ),
        (
            "/api/chat",
            json!({"model": "llama3.2",
            "messages": [{"role": "user", "content": "Capital of France?"}]}),
        ),
    ];
    let sent = requests.iter().map(|(path, body)| {
        client()
            .post(r.envoy.url(path))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    });
    for resp in futures_util::future::join_all(sent).await {
        let resp = resp.unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    let captures = r.collector.captures(3).await;
    for (path, _) in &requests {
        let view = view_of(&captures, path);
        assert_eq!(view["answer"], WORDS.concat(), "{path}");
        let timing = &view["timing"];
        eprintln!("{path}: {timing}");
        assert!(
            timing["first_byte_ms"].as_f64().unwrap() < FIRST_MS as f64,
            "{path}: {timing}"
        );
        // Pacing on loopback is exact to a few milliseconds (one chunk late by a few ms shortens
        // the gap after it); the slack is for a busy machine.
        assert_near(&format!("{path} ttft_ms"), &timing["ttft_ms"], FIRST_MS, 40);
        assert_near(
            &format!("{path} p50"),
            &timing["inter_token_ms"]["p50"],
            GAP_MS - 10,
            30,
        );
        assert_near(
            &format!("{path} max"),
            &timing["inter_token_ms"]["max"],
            STALL_MS - 20,
            80,
        );
        let stalls = timing["stalls"].as_array().unwrap();
        assert_eq!(stalls.len(), 1, "{path}: {timing}");
        let stall = &stalls[0];
        assert_eq!(stall["before"], WORDS[..STALL_AFTER].concat(), "{path}");
        assert_eq!(
            stall["answer_chars"],
            WORDS[..STALL_AFTER].concat().len(),
            "{path}"
        );
        assert_near(
            &format!("{path} stall at"),
            &stall["at_ms"],
            word_at(STALL_AFTER - 1),
            40,
        );
        assert_near(
            &format!("{path} stall gap"),
            &stall["gap_ms"],
            STALL_MS - 20,
            80,
        );
        // 9 output tokens over the ~1.3 s from the first word to the last.
        let rate = timing["output_tokens_per_s"].as_f64().unwrap();
        assert!((5.0..8.0).contains(&rate), "{path}: {rate} tokens/s");
    }
    // The list finds them by their TTFT, slowest first (digests are written just behind ingest).
    let deadline = Instant::now() + Duration::from_secs(10);
    let listed = loop {
        let list = r
            .collector
            .get("/v1/captures?ttft_above=250&sort=ttft")
            .await;
        if list["captures"].as_array().unwrap().len() == 3 || Instant::now() > deadline {
            break list;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let ttfts: Vec<f64> = listed["captures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["ttft_ms"].as_f64().unwrap())
        .collect();
    assert_eq!(ttfts.len(), 3, "{listed}");
    assert!(
        ttfts.windows(2).all(|w| w[0] >= w[1]),
        "slowest first: {ttfts:?}"
    );
    let none = r.collector.get("/v1/captures?ttft_above=5000").await;
    assert_eq!(none["captures"], json!([]));
    // /metrics: a TTFT histogram per model, and the 8 gaps of each answer.
    let metrics = client()
        .get(format!("http://127.0.0.1:{}/metrics", r.collector.port))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for model in ["gpt-4o", "claude-sonnet-4-5", "llama3.2"] {
        for line in [
            format!("truthtable_collector_ttft_seconds_bucket{{model=\"{model}\",le=\"0.25\"}} 0"),
            format!("truthtable_collector_ttft_seconds_bucket{{model=\"{model}\",le=\"0.5\"}} 1"),
            format!("truthtable_collector_inter_token_seconds_count{{model=\"{model}\"}} 8"),
            format!(
                "truthtable_collector_inter_token_seconds_bucket{{model=\"{model}\",le=\"0.5\"}} 7"
            ),
        ] {
            assert!(
                metrics.lines().any(|l| l == line),
                "no {line} in\n{metrics}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_streamed_answer_has_its_first_byte_and_no_gap_statistics() {
    let r = rig().await;
    let resp = client()
        .post(r.envoy.url("/v1/chat/completions/plain"))
        .header("content-type", "application/json")
        .body(r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Capital of France?"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();
    let captures = r.collector.captures(1).await;
    let timing = &view_of(&captures, "/v1/chat/completions/plain")["timing"];
    assert!(timing["first_byte_ms"].as_f64().is_some(), "{timing}");
    assert_eq!(timing["ttft_ms"], Value::Null);
    assert_eq!(timing["inter_token_ms"], Value::Null);
    assert_eq!(timing["stalls"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_stream_is_timed_by_the_plain_bytes_each_chunk_carried() {
    let r = rig().await;
    let resp = client()
        .post(r.envoy.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("accept-encoding", "gzip")
        .body(r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"Capital of France?"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    resp.bytes().await.unwrap();
    let captures = r.collector.captures(1).await;
    let view = view_of(&captures, "/v1/chat/completions");
    assert_eq!(view["answer"], WORDS.concat());
    let timing = &view["timing"];
    assert_near("gzip ttft_ms", &timing["ttft_ms"], FIRST_MS, 40);
    let stalls = timing["stalls"].as_array().unwrap();
    assert_eq!(stalls.len(), 1, "{timing}");
    assert_eq!(stalls[0]["before"], WORDS[..STALL_AFTER].concat());
    assert_near("gzip stall gap", &stalls[0]["gap_ms"], STALL_MS - 20, 80);
}
