//! The whole path: a client talks to the demo LLM service through Envoy running the filter, and the
//! collector (the audit cluster) ends up holding each exchange with its audit view.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

struct Path {
    envoy: Envoy,
    collector: u16,
    _db: tempfile::TempDir,
}

/// Starts the demo service, the collector (with `ingest_token` when given) and Envoy.
async fn path(ingest_token: Option<&str>) -> Path {
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_port = upstream.local_addr().unwrap().port();
    tokio::spawn(async move {
        axum::serve(
            upstream,
            truthtable_demo_llm::app(Duration::from_millis(40)),
        )
        .await
    });

    let db = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = listener.local_addr().unwrap().port();
    let mut config = truthtable_collector::Config::with_db(
        truthtable_collector::config::DbTarget::Sqlite(db.path().join("captures.db")),
    );
    config.listen = listener.local_addr().unwrap();
    config.ingest_token = ingest_token.map(str::to_owned);
    let store = truthtable_collector::store::Store::open(&config)
        .await
        .unwrap();
    let state = truthtable_collector::state(&config, store).unwrap();
    tokio::spawn(truthtable_collector::serve(
        listener,
        state,
        std::future::pending(),
    ));

    let filter = match ingest_token {
        Some(t) => filter_config(&format!(
            r#""audit_headers": {{"authorization": "Bearer {t}"}}"#
        )),
        None => filter_config(""),
    };
    let envoy = Envoy::start(EnvoyOpts {
        upstream: upstream_port,
        audit: collector,
        filter: Some(&filter),
        workers: 2,
    });
    Path {
        envoy,
        collector,
        _db: db,
    }
}

impl Path {
    async fn get(&self, path: &str) -> Value {
        let url = format!("http://127.0.0.1:{}{}", self.collector, path);
        let resp = client().get(url).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        resp.json().await.unwrap()
    }

    /// Waits until the collector holds `n` captures; returns them newest first, each with its audit view.
    async fn captures(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let list = self.get("/v1/captures?limit=100").await;
            let summaries = list["captures"].as_array().unwrap().clone();
            if summaries.len() >= n {
                let mut out = Vec::new();
                for s in summaries {
                    out.push(
                        self.get(&format!("/v1/captures/{}", s["id"].as_str().unwrap()))
                            .await,
                    );
                }
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "collector holds {} of {n} captures",
                summaries.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn chat(question: &str, stream: bool) -> Value {
    json!({
        "model": "demo-rag-1",
        "stream": stream,
        "messages": [
            {"role": "system", "content": "Answer only from the retrieved passage."},
            {"role": "user", "content": question}
        ]
    })
}

/// The assistant text a client reassembles from an OpenAI chat stream.
fn text_of_stream(raw: &str) -> String {
    raw.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_and_plain_answers_reach_the_collector_with_their_audit_views() {
    let p = path(None).await;
    let c = client();
    let streamed = c
        .post(p.envoy.url("/v1/chat/completions"))
        .header("authorization", "Bearer sk-demo-secret")
        .json(&chat("What is the capital of France?", true))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let plain: Value = c
        .post(p.envoy.url("/v1/chat/completions"))
        .json(&chat("Who built Envoy?", false))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let streamed_answer = text_of_stream(&streamed);
    assert!(
        streamed_answer.contains("Paris is the capital of France"),
        "{streamed_answer}"
    );

    let captures = p.captures(2).await;
    let find = |q: &str| {
        captures
            .iter()
            .find(|c| c["audit"]["question"] == q)
            .unwrap_or_else(|| panic!("no capture for {q}: {captures:#?}"))
    };

    let s = find("What is the capital of France?");
    assert_eq!(s["capture"]["outcome"], "complete");
    assert_eq!(
        header(&s["capture"]["request"], "authorization"),
        Some("[REDACTED]")
    );
    assert!(!s.to_string().contains("sk-demo-secret"));
    let audit = &s["audit"];
    assert_eq!(audit["protocol"], "openai.chat");
    assert_eq!(audit["model"], "demo-rag-1");
    assert_eq!(
        audit["answer"],
        streamed_answer.as_str(),
        "the collector's answer is what the client read"
    );
    assert_eq!(audit["streamed"], true);
    assert_eq!(audit["stream_complete"], true);
    assert_eq!(audit["finish_reason"], "stop");
    assert!(
        audit["context"]
            .to_string()
            .contains("Answer only from the retrieved passage."),
        "{audit:#}"
    );

    let n = find("Who built Envoy?");
    assert_eq!(
        n["audit"]["answer"],
        plain["choices"][0]["message"]["content"]
    );
    assert_eq!(n["audit"]["streamed"], false);
    assert_eq!(n["audit"]["answer_complete"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_cut_short_by_the_client_is_stored_as_incomplete() {
    let p = path(None).await;
    let resp = client()
        .post(p.envoy.url("/v1/chat/completions"))
        .json(&chat("Tell me about wasm filters", true))
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    let mut got = Vec::new();
    while got.iter().filter(|&&b| b == b'\n').count() < 6 {
        got.extend_from_slice(&stream.next().await.unwrap().unwrap());
    }
    drop(stream);
    let captures = p.captures(1).await;
    let c = &captures[0];
    assert_eq!(c["capture"]["outcome"], "client_aborted");
    assert_eq!(
        c["audit"]["stream_complete"], false,
        "a truncated answer says it is truncated"
    );
    assert_eq!(c["audit"]["answer_complete"], false);
    let partial = c["audit"]["answer"].as_str().unwrap_or_default();
    let full = truthtable_demo_llm::answer_for("Tell me about wasm filters");
    assert!(
        full.starts_with(partial) && partial.len() < full.len(),
        "{partial:?} is a strict prefix of {full:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captures_reach_a_collector_that_requires_an_ingest_token() {
    let p = path(Some("ingest-t0ken")).await;
    let resp = client()
        .post(p.envoy.url("/v1/chat/completions"))
        .json(&chat("Paris?", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let captures = p.captures(1).await;
    assert_eq!(captures[0]["audit"]["question"], "Paris?");
    assert_eq!(
        p.envoy.metric("truthtable_delivery_failures"),
        Some(0.0),
        "no callout was refused"
    );
}
