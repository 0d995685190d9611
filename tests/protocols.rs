//! The audit view of the APIs RAG services speak, end to end: the providers' real Python clients
//! (`ollama`, `openai`, `google-genai`, pinned in scripts/setup, driven by tests/clients/drive.py)
//! send through Envoy running the built filter to an upstream that answers like each provider —
//! streamed and not, whole and broken off mid-answer — and the real collector's audit view is
//! checked against what the client itself read and what the upstream received.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Response, Uri};
use axum::routing::any;
use axum::Router;
use bytes::Bytes;
use common::*;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const OLLAMA_GENERATE: &str = "Rayleigh scattering sends more of the blue light to your eyes.";
const OLLAMA_CHAT: &str = "No coat needed: it is 18C and sunny in Paris.";
const COMPLETION: &str = " Paris, which is also its largest city.";
const OPENAI_CHAT: &str = "The capital of France is Paris.";
const GEMINI: &str = "No coat needed today: it is 18C and sunny.";
const GENERIC: &str = "This is a test response from the mock LLM.";
const GOOGLE_KEY: &str = "AIza-test-not-a-key";

// ---------------------------------------------------------------------------------------------
// An upstream that answers like Ollama, an OpenAI-compatible server and Gemini, and records what
// it received. `x-test-cut: 1` makes it break the connection halfway through its answer.

#[derive(Default)]
struct Received(Mutex<HashMap<String, Bytes>>);

struct Provider {
    port: u16,
    received: Arc<Received>,
}

impl Provider {
    async fn start() -> Provider {
        let received = Arc::new(Received::default());
        let app = Router::new()
            .fallback(any(answer))
            .with_state(received.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Provider { port, received }
    }

    /// The request body the upstream received for `case`.
    fn body_of(&self, case: &str) -> Bytes {
        let got = self.received.0.lock().unwrap();
        got.get(case)
            .cloned()
            .unwrap_or_else(|| panic!("the upstream got no request for {case}"))
    }
}

/// Pieces of `text` as a model streams them: words with their following space.
fn pieces(text: &str) -> Vec<&str> {
    text.split_inclusive(' ').collect()
}

/// A response that sends `frames` a little apart; when `cut`, only the first half, then the
/// connection breaks (a plain body of one frame is cut in the middle of its bytes).
fn send(content_type: &str, frames: Vec<String>, cut: bool) -> Response<Body> {
    let frames: Vec<Bytes> = match (cut, frames.as_slice()) {
        (true, [only]) => vec![Bytes::copy_from_slice(&only.as_bytes()[..only.len() / 2])],
        (true, all) => all[..all.len() / 2]
            .iter()
            .map(|f| Bytes::from(f.clone()))
            .collect(),
        (false, all) => all.iter().map(|f| Bytes::from(f.clone())).collect(),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        let n = frames.len();
        for (i, f) in frames.into_iter().enumerate() {
            if tx.send(Ok(f)).await.is_err() {
                return;
            }
            if i + 1 < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        if cut {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = tx.send(Err(std::io::Error::other("upstream dies"))).await;
        }
    });
    Response::builder()
        .header("content-type", content_type)
        .body(Body::from_stream(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .unwrap()
}

async fn answer(
    State(received): State<Arc<Received>>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response<Body> {
    let body = body.collect().await.unwrap().to_bytes();
    let case = headers
        .get("x-test-case")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    received.0.lock().unwrap().insert(case, body.clone());
    let cut = headers.contains_key("x-test-cut");
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let path = uri.path();
    let sse_query = uri.query().is_some_and(|q| q.contains("alt=sse"));
    match path {
        "/api/generate" => ollama_generate(&req, cut),
        "/api/chat" => ollama_chat(&req, cut),
        "/v1/completions" => completions(&req, cut),
        "/v1/chat/completions" => ollama_openai_chat(&req, cut),
        p if p.ends_with(":generateContent") => gemini_plain(&req, cut),
        p if p.ends_with(":streamGenerateContent") => gemini_stream(sse_query, cut),
        "/chat/completions" => send(
            "application/json",
            vec![json!({"response": GENERIC, "model": "mock-llm"}).to_string()],
            cut,
        ),
        "/ask" => {
            let mut lines: Vec<String> = pieces(GENERIC)
                .into_iter()
                .map(|p| format!("{}\n", json!({"answer": p})))
                .collect();
            lines.push(format!("{}\n", json!({"answer": "", "done": true})));
            send("application/x-ndjson", lines, cut)
        }
        "/ask/sse" => {
            let mut events: Vec<String> = pieces(GENERIC)
                .into_iter()
                .map(|p| format!("data: {}\n\n", json!({"text": p})))
                .collect();
            events.push("data: [DONE]\n\n".to_owned());
            send("text/event-stream", events, cut)
        }
        _ => Response::builder()
            .status(404)
            .body(Body::from("no such route"))
            .unwrap(),
    }
}

const CREATED_AT: &str = "2026-11-25T16:10:40.186123Z";

/// What Ollama adds to its last (`done: true`) object.
fn ollama_done(v: &mut Value) {
    let extra = json!({"done": true, "done_reason": "stop", "total_duration": 1_904_270_503u64,
        "load_duration": 14_521_375, "prompt_eval_count": 31, "prompt_eval_duration": 95_006_000,
        "eval_count": 12, "eval_duration": 1_791_000_000u64});
    for (k, val) in extra.as_object().unwrap() {
        v[k] = val.clone();
    }
}

fn ollama_generate(req: &Value, cut: bool) -> Response<Body> {
    let stream = req["stream"].as_bool().unwrap_or(true);
    if !stream {
        let mut v = json!({"model": "llama3.2", "created_at": CREATED_AT, "response": OLLAMA_GENERATE,
            "context": [128006, 9125, 128007, 271]});
        ollama_done(&mut v);
        return send("application/json; charset=utf-8", vec![v.to_string()], cut);
    }
    let mut lines: Vec<String> = pieces(OLLAMA_GENERATE)
        .into_iter()
        .map(|p| {
            let v = json!({"model": "llama3.2", "created_at": CREATED_AT, "response": p, "done": false});
            format!("{v}\n")
        })
        .collect();
    let mut last = json!({"model": "llama3.2", "created_at": CREATED_AT, "response": "",
        "context": [128006, 9125, 128007, 271]});
    ollama_done(&mut last);
    lines.push(format!("{last}\n"));
    send("application/x-ndjson", lines, cut)
}

fn ollama_chat(req: &Value, cut: bool) -> Response<Body> {
    let stream = req["stream"].as_bool().unwrap_or(true);
    let wants_tool = req["tools"].as_array().is_some_and(|t| !t.is_empty());
    let message = |content: &str| json!({"role": "assistant", "content": content});
    if !stream {
        let msg = if wants_tool {
            json!({"role": "assistant", "content": "", "tool_calls": [
                {"function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}}]})
        } else {
            message(OLLAMA_CHAT)
        };
        let mut v = json!({"model": "llama3.2", "created_at": CREATED_AT, "message": msg});
        ollama_done(&mut v);
        return send("application/json; charset=utf-8", vec![v.to_string()], cut);
    }
    let mut lines: Vec<String> = pieces(OLLAMA_CHAT)
        .into_iter()
        .map(|p| {
            let v = json!({"model": "llama3.2", "created_at": CREATED_AT, "message": message(p), "done": false});
            format!("{v}\n")
        })
        .collect();
    let mut last = json!({"model": "llama3.2", "created_at": CREATED_AT, "message": message("")});
    ollama_done(&mut last);
    lines.push(format!("{last}\n"));
    send("application/x-ndjson", lines, cut)
}

fn completions(req: &Value, cut: bool) -> Response<Body> {
    let model = req["model"].as_str().unwrap_or("m");
    let usage = json!({"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14});
    if req["stream"] != true {
        let v = json!({"id": "cmpl-7f3a", "object": "text_completion", "created": 1_764_000_000, "model": model,
            "choices": [{"index": 0, "text": COMPLETION, "logprobs": null, "finish_reason": "stop"}], "usage": usage});
        return send("application/json", vec![v.to_string()], cut);
    }
    let with_usage = req["stream_options"]["include_usage"] == true;
    let parts = pieces(COMPLETION);
    let mut events: Vec<String> = parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let finish = if i + 1 == parts.len() { json!("stop") } else { Value::Null };
            let mut v = json!({"id": "cmpl-7f3a", "object": "text_completion", "created": 1_764_000_000, "model": model,
                "choices": [{"index": 0, "text": p, "logprobs": null, "finish_reason": finish}]});
            if with_usage {
                v["usage"] = Value::Null;
            }
            format!("data: {v}\n\n")
        })
        .collect();
    if with_usage {
        let v = json!({"id": "cmpl-7f3a", "object": "text_completion", "created": 1_764_000_000, "model": model,
            "choices": [], "usage": usage});
        events.push(format!("data: {v}\n\n"));
    }
    events.push("data: [DONE]\n\n".to_owned());
    send("text/event-stream", events, cut)
}

/// Ollama's OpenAI-compatible chat endpoint.
fn ollama_openai_chat(req: &Value, cut: bool) -> Response<Body> {
    let head = json!({"id": "chatcmpl-383", "created": 1_764_000_000, "model": "llama3.2", "system_fingerprint": "fp_ollama"});
    let with = |mut v: Value, extra: Value| {
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        v
    };
    if req["stream"] != true {
        let v = with(
            head,
            json!({"object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": OPENAI_CHAT}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 15, "completion_tokens": 8, "total_tokens": 23}}),
        );
        return send("application/json", vec![v.to_string()], cut);
    }
    let mut events: Vec<String> = pieces(OPENAI_CHAT)
        .into_iter()
        .map(|p| {
            let v = with(head.clone(), json!({"object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": p}, "finish_reason": null}]}));
            format!("data: {v}\n\n")
        })
        .collect();
    let last = with(
        head.clone(),
        json!({"object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": "stop"}]}),
    );
    events.push(format!("data: {last}\n\ndata: [DONE]\n\n"));
    send("text/event-stream", events, cut)
}

fn gemini_chunk(parts: Value, last: bool) -> Value {
    let mut candidate = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
    let mut usage = json!({"promptTokenCount": 42, "totalTokenCount": 42,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 42}]});
    if last {
        candidate["finishReason"] = json!("STOP");
        usage = json!({"promptTokenCount": 42, "candidatesTokenCount": 11, "totalTokenCount": 53,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 42}]});
    }
    json!({"candidates": [candidate], "usageMetadata": usage, "modelVersion": "gemini-2.5-flash",
           "responseId": "UHZXacLvB4Wrz7IP8a6KyQ0"})
}

fn gemini_plain(req: &Value, cut: bool) -> Response<Body> {
    let wants_tool = req["tools"].as_array().is_some_and(|t| !t.is_empty());
    let parts = if wants_tool {
        json!([{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": "CiQB0e2Kb9wA"}])
    } else {
        json!([{"text": GEMINI}])
    };
    let body = serde_json::to_string_pretty(&gemini_chunk(parts, true)).unwrap();
    send("application/json; charset=UTF-8", vec![body], cut)
}

fn gemini_stream(sse: bool, cut: bool) -> Response<Body> {
    let parts = pieces(GEMINI);
    let chunks: Vec<Value> = parts
        .iter()
        .enumerate()
        .map(|(i, p)| gemini_chunk(json!([{"text": p}]), i + 1 == parts.len()))
        .collect();
    if sse {
        let events = chunks
            .iter()
            .map(|c| format!("data: {c}\r\n\r\n"))
            .collect();
        return send("text/event-stream", events, cut);
    }
    // Without alt=sse Google streams one pretty-printed JSON array.
    let n = chunks.len();
    let frames = chunks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let open = if i == 0 { "[" } else { "" };
            let close = if i + 1 == n { "\n]" } else { "\n,\r\n" };
            format!("{open}{}{close}", serde_json::to_string_pretty(c).unwrap())
        })
        .collect();
    send("application/json; charset=UTF-8", frames, cut)
}

// ---------------------------------------------------------------------------------------------
// The path: client → Envoy + filter → provider, captures → collector.

struct Path {
    provider: Provider,
    envoy: Envoy,
    collector: Collector,
}

async fn path(filter_extra: &str) -> Path {
    let provider = Provider::start().await;
    let collector = Collector::running().await;
    let filter = filter_config(filter_extra);
    let envoy = Envoy::start(EnvoyOpts {
        upstream: provider.port,
        audit: collector.port,
        filter: Some(&filter),
        workers: 1,
    });
    Path {
        provider,
        envoy,
        collector,
    }
}

/// What a client read of one case.
struct Read {
    answer: String,
    tool_calls: Vec<Value>,
    error: Option<String>,
}

/// Runs the Python clients for `cases`; returns what each read.
async fn drive(p: &Path, cases: &[&str]) -> HashMap<String, Read> {
    let python = repo().join(".venv/bin/python");
    assert!(
        python.exists(),
        "no {} (run scripts/setup: it installs the pinned client packages)",
        python.display()
    );
    let out = tokio::process::Command::new(&python)
        .arg(repo().join("tests/clients/drive.py"))
        .arg(p.envoy.url(""))
        .args(cases)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "drive.py failed:\n{stderr}");
    let reads: HashMap<String, Read> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            let read = Read {
                answer: v["answer"].as_str().unwrap().to_owned(),
                tool_calls: v["tool_calls"].as_array().unwrap().clone(),
                error: v["error"].as_str().map(str::to_owned),
            };
            (v["case"].as_str().unwrap().to_owned(), read)
        })
        .collect();
    assert_eq!(reads.len(), cases.len(), "drive.py stderr:\n{stderr}");
    reads
}

/// Every capture the collector holds, by its `x-test-case`.
async fn captures(p: &Path, n: usize) -> HashMap<String, Value> {
    p.collector
        .captures(n)
        .await
        .into_iter()
        .map(|c| {
            let case = header(&c["capture"]["request"], "x-test-case")
                .unwrap()
                .to_owned();
            (case, c)
        })
        .collect()
}

/// What holds for every case: the record has exactly the bytes the client library sent, the
/// protocol is the expected one, and a whole answer is the one the client read (a cut one a
/// strict prefix of `full`, said to be incomplete).
fn check_case(p: &Path, case: &str, got: &Value, read: &Read, protocol: &str, full: &str) {
    let capture = &got["capture"];
    let audit = &got["audit"];
    assert_eq!(
        body_bytes(&capture["request"]),
        p.provider.body_of(case),
        "{case}: the record holds the request body the client library sent"
    );
    assert_eq!(audit["protocol"], protocol, "{case}: {audit:#}");
    assert!(
        audit["recognised_from"]
            .as_array()
            .is_some_and(|e| !e.is_empty()),
        "{case}: {audit:#}"
    );
    let problems: Vec<&str> = audit["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let answer = audit["answer"].as_str();
    let streamed = audit["streamed"] == true;
    if case.ends_with(".cut") {
        assert!(read.error.is_some(), "{case}: the client saw the break");
        assert_eq!(capture["outcome"], "upstream_failed", "{case}");
        assert_eq!(audit["answer_complete"], false, "{case}: {audit:#}");
        if streamed {
            assert_eq!(audit["stream_complete"], false, "{case}");
            let part = answer.unwrap_or_else(|| panic!("{case}: a partial answer: {audit:#}"));
            assert!(
                !part.is_empty() && full.starts_with(part) && part.len() < full.len(),
                "{case}: {part:?} is a strict prefix of {full:?}"
            );
            assert!(
                full.starts_with(&read.answer) && read.answer.len() <= part.len(),
                "{case}: the client read {:?} of it",
                read.answer
            );
            assert!(
                problems
                    .iter()
                    .any(|p| p.starts_with("stream ended without its terminal event")),
                "{case}: {problems:?}"
            );
        } else {
            assert_eq!(answer, None, "{case}");
            assert!(
                problems.iter().any(|p| p.contains("not complete JSON")),
                "{case}: {problems:?}"
            );
            assert!(
                problems.iter().any(|p| p.starts_with("no answer:")),
                "{case}: {problems:?}"
            );
        }
    } else {
        assert_eq!(read.error, None, "{case}: the client read the whole answer");
        // The openai client stops reading at `data: [DONE]` and may hang up before the body's
        // end has crossed Envoy: the exchange is then client_aborted with the answer complete.
        let outcomes: &[&str] = if streamed {
            &["complete", "client_aborted"]
        } else {
            &["complete"]
        };
        assert!(
            outcomes.iter().any(|o| capture["outcome"] == *o),
            "{case}: {}",
            capture["outcome"]
        );
        assert_eq!(audit["answer_complete"], true, "{case}: {audit:#}");
        if streamed {
            assert_eq!(audit["stream_complete"], true, "{case}");
        }
        if read.tool_calls.is_empty() {
            assert_eq!(
                answer,
                Some(read.answer.as_str()),
                "{case}: what the client read"
            );
            assert_eq!(answer, Some(full), "{case}");
        }
    }
}

fn texts(audit: &Value) -> Vec<(String, String)> {
    audit["context"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["source"].as_str().unwrap().to_owned(),
                c["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pair(a: &str, b: &str) -> (String, String) {
    (a.to_owned(), b.to_owned())
}

/// The tool calls of a view as `{name, arguments}` with the arguments parsed.
fn calls(audit: &Value) -> Vec<Value> {
    audit["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let args: Value = serde_json::from_str(c["arguments"].as_str().unwrap()).unwrap();
            json!({"name": c["name"], "arguments": args})
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_generate_and_chat_through_the_ollama_client() {
    let p = path("").await;
    let cases = [
        "ollama.generate.plain",
        "ollama.generate.plain.cut",
        "ollama.generate.stream",
        "ollama.generate.stream.cut",
        "ollama.chat.plain",
        "ollama.chat.plain.cut",
        "ollama.chat.tools",
        "ollama.chat.stream",
        "ollama.chat.stream.cut",
        "ollama.openai.chat",
        "ollama.openai.chat.stream",
    ];
    let reads = drive(&p, &cases).await;
    let got = captures(&p, cases.len()).await;
    for case in cases {
        let (protocol, full) = if case.starts_with("ollama.generate") {
            ("ollama.generate", OLLAMA_GENERATE)
        } else if case.starts_with("ollama.chat") {
            ("ollama.chat", OLLAMA_CHAT)
        } else {
            ("openai.chat", OPENAI_CHAT)
        };
        check_case(&p, case, &got[case], &reads[case], protocol, full);
    }

    let g = &got["ollama.generate.stream"]["audit"];
    assert_eq!(g["stream_format"], "ndjson");
    assert_eq!(g["question"], "Why is the sky blue?");
    assert_eq!(
        g["fields"],
        json!({"question": "prompt", "answer": "response"})
    );
    assert_eq!(
        texts(g),
        [pair("system", "Answer from the retrieved passage only.")]
    );
    assert_eq!(g["attachments"][0]["kind"], "image");
    assert_eq!(g["attachments"][0]["field"], "images[0]");
    assert_eq!(g["attachments"][0]["size_bytes"], 26);
    assert_eq!(g["finish_reason"], "stop");
    assert_eq!(g["usage"], json!({"input_tokens": 31, "output_tokens": 12}));
    assert_eq!(g["model"], "llama3.2");
    assert_eq!(g["problems"], json!([]));
    assert_eq!(got["ollama.generate.plain"]["audit"]["streamed"], false);

    let c = &got["ollama.chat.stream"]["audit"];
    assert_eq!(c["question"], "Should I take a coat?");
    assert_eq!(c["fields"]["question"], "messages[4].content");
    assert_eq!(
        texts(c),
        [
            pair("system", "You answer weather questions from tool results."),
            pair("tool", "18C and sunny")
        ]
    );
    assert_eq!(c["context"][1]["name"], "get_weather");
    assert_eq!(c["problems"], json!([]));

    let t = &got["ollama.chat.tools"]["audit"];
    assert_eq!(calls(t), reads["ollama.chat.tools"].tool_calls);
    assert_eq!(
        calls(t),
        [json!({"name": "get_weather", "arguments": {"city": "Paris"}})]
    );
    assert_eq!(t["answer"], Value::Null);
    assert_eq!(t["attachments"][0]["field"], "messages[0].images[0]");
    let said = t["problems"].as_array().unwrap();
    assert!(
        said.iter()
            .any(|p| p.as_str().unwrap().starts_with("no answer text:")
                && p.as_str().unwrap().contains("1 tool call")),
        "{said:?}"
    );

    for case in ["ollama.openai.chat", "ollama.openai.chat.stream"] {
        let o = &got[case]["audit"];
        assert_eq!(o["question"], "What is the capital of France?", "{case}");
        assert_eq!(o["overruled"], json!([]), "{case}: {o:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_completions_through_the_openai_client() {
    let p = path("").await;
    let cases = [
        "openai.completions.plain",
        "openai.completions.plain.cut",
        "openai.completions.stream",
        "openai.completions.stream.cut",
    ];
    let reads = drive(&p, &cases).await;
    let got = captures(&p, cases.len()).await;
    for case in cases {
        check_case(
            &p,
            case,
            &got[case],
            &reads[case],
            "openai.completions",
            COMPLETION,
        );
        let a = &got[case]["audit"];
        assert_eq!(a["question"], "The capital of France is", "{case}");
        assert_eq!(a["fields"]["question"], "prompt", "{case}");
    }
    for case in ["openai.completions.plain", "openai.completions.stream"] {
        let a = &got[case]["audit"];
        assert_eq!(a["fields"]["answer"], "choices[0].text");
        assert_eq!(a["finish_reason"], "stop", "{case}");
        assert_eq!(
            a["usage"],
            json!({"input_tokens": 5, "output_tokens": 9}),
            "{case}"
        );
        assert_eq!(a["model"], "Qwen/Qwen2.5-0.5B-Instruct");
        assert_eq!(a["problems"], json!([]), "{case}");
    }
    assert_eq!(
        got["openai.completions.stream"]["audit"]["stream_format"],
        "sse"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_through_the_google_genai_client() {
    // x-goog-api-key is redacted by the built-in list: no redact_headers needed.
    let p = path("").await;
    let cases = [
        "gemini.plain",
        "gemini.plain.cut",
        "gemini.tools",
        "gemini.stream",
        "gemini.stream.cut",
    ];
    let mut reads = drive(&p, &cases).await;

    // The SDK streams with alt=sse only; the default streamed JSON array is asked for with the
    // very body the SDK sent, by a plain HTTP client that reads the array itself.
    let sdk_body = p.provider.body_of("gemini.stream");
    let stream_path = "/v1beta/models/gemini-2.5-flash:streamGenerateContent";
    for case in ["gemini.array", "gemini.array.cut"] {
        let mut req = client()
            .post(p.envoy.url(stream_path))
            .header("content-type", "application/json")
            .header("x-goog-api-key", GOOGLE_KEY)
            .header("x-test-case", case)
            .body(sdk_body.clone());
        if case.ends_with(".cut") {
            req = req.header("x-test-cut", "1");
        }
        let read = match req.send().await.unwrap().bytes().await {
            Ok(body) => {
                let items: Vec<Value> = serde_json::from_slice(&body).unwrap();
                let answer = items
                    .iter()
                    .filter_map(|i| i["candidates"][0]["content"]["parts"][0]["text"].as_str())
                    .collect();
                Read {
                    answer,
                    tool_calls: Vec::new(),
                    error: None,
                }
            }
            Err(e) => Read {
                answer: String::new(),
                tool_calls: Vec::new(),
                error: Some(e.to_string()),
            },
        };
        reads.insert(case.to_owned(), read);
    }

    let all = cases.len() + 2;
    let got = captures(&p, all).await;
    for (case, c) in &got {
        check_case(
            &p,
            case,
            c,
            &reads[case.as_str()],
            "gemini.generate_content",
            GEMINI,
        );
        let raw = c["capture"].to_string();
        assert!(
            !raw.contains(GOOGLE_KEY),
            "{case}: the API key is not recorded"
        );
        assert_eq!(
            header(&c["capture"]["request"], "x-goog-api-key"),
            Some("[REDACTED]")
        );
    }

    let s = &got["gemini.stream"]["audit"];
    assert_eq!(s["stream_format"], "sse");
    assert_eq!(s["question"], "Should I take a coat?");
    assert_eq!(s["fields"]["question"], "contents[3].parts[].text");
    assert_eq!(
        texts(s),
        [
            pair("system", "Answer from the tool results only."),
            pair("tool", "18C and sunny")
        ]
    );
    assert_eq!(s["context"][1]["name"], "get_weather");
    assert_eq!(s["finish_reason"], "STOP");
    assert_eq!(s["usage"], json!({"input_tokens": 42, "output_tokens": 11}));
    assert_eq!(s["model"], "gemini-2.5-flash");
    assert_eq!(s["problems"], json!([]));

    let a = &got["gemini.array"]["audit"];
    assert_eq!(a["stream_format"], "json_array");
    assert_eq!(a["question"], s["question"]);
    assert_eq!(a["problems"], json!([]));

    let t = &got["gemini.tools"]["audit"];
    assert_eq!(calls(t), reads["gemini.tools"].tool_calls);
    assert_eq!(
        calls(t),
        [json!({"name": "get_weather", "arguments": {"city": "Paris"}})]
    );
    assert_eq!(t["attachments"][0]["mime_type"], "image/png");
    assert_eq!(
        t["attachments"][0]["field"],
        "contents[0].parts[1].inlineData"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_prompt_response_json_plain_ndjson_and_sse() {
    let p = path("").await;
    let requests = [
        (
            "generic.mock",
            "/chat/completions",
            json!({"prompt": "Hello"}),
        ),
        (
            "generic.mock.cut",
            "/chat/completions",
            json!({"prompt": "Hello"}),
        ),
        (
            "generic.ndjson",
            "/ask",
            json!({"query": "Hello?", "documents": [{"title": "Mock", "text": "The mock LLM answers tests."}]}),
        ),
        ("generic.ndjson.cut", "/ask", json!({"query": "Hello?"})),
        ("generic.sse", "/ask/sse", json!({"question": "Hello?"})),
        ("generic.sse.cut", "/ask/sse", json!({"question": "Hello?"})),
    ];
    let mut reads = HashMap::new();
    for (case, path, body) in &requests {
        let mut req = client()
            .post(p.envoy.url(path))
            .header("x-test-case", *case)
            .json(body);
        if case.ends_with(".cut") {
            req = req.header("x-test-cut", "1");
        }
        let read = match req.send().await.unwrap().bytes().await {
            Ok(_) => Read {
                answer: GENERIC.to_owned(),
                tool_calls: Vec::new(),
                error: None,
            },
            Err(e) => Read {
                answer: String::new(),
                tool_calls: Vec::new(),
                error: Some(e.to_string()),
            },
        };
        reads.insert(case.to_string(), read);
    }
    let got = captures(&p, requests.len()).await;
    for (case, _, _) in &requests {
        check_case(&p, case, &got[*case], &reads[*case], "generic", GENERIC);
    }

    let m = &got["generic.mock"]["audit"];
    assert_eq!(m["question"], "Hello");
    assert_eq!(m["model"], "mock-llm");
    assert_eq!(
        m["fields"],
        json!({"question": "prompt", "answer": "response"})
    );
    assert_eq!(m["recognised_from"][0]["source"], "response_body");
    assert_eq!(
        m["overruled"],
        json!([{"source": "path", "suggests": "openai.chat", "detail": "request path /chat/completions"}])
    );
    assert_eq!(m["problems"], json!([]));

    let n = &got["generic.ndjson"]["audit"];
    assert_eq!(
        n["fields"],
        json!({"question": "query", "answer": "answer"})
    );
    assert_eq!(n["stream_format"], "ndjson");
    assert_eq!(texts(n), [pair("document", "The mock LLM answers tests.")]);
    assert_eq!(n["context"][0]["name"], "Mock");
    let s = &got["generic.sse"]["audit"];
    assert_eq!(
        s["fields"],
        json!({"question": "question", "answer": "text"})
    );
    assert_eq!(s["stream_format"], "sse");
}
