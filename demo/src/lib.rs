//! A stand-in for an LLM/RAG service behind Envoy: `POST /v1/chat/completions` in OpenAI's shape,
//! streamed (`"stream": true`, Server-Sent Events, one token per event) or not. It answers from the
//! retrieved passages the request carries (a top-level `documents` array, as a RAG application
//! sends them), else from a passage of a tiny built-in corpus, and echoes the model name.

use axum::body::Body;
use axum::http::{Response, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use serde_json::{json, Value};
use std::time::Duration;

/// Passages and the words that retrieve them.
const CORPUS: [(&[&str], &str); 3] = [
    (
        &["paris", "france"],
        "Paris is the capital of France and its largest city.",
    ),
    (&["envoy"], "Envoy is an L7 proxy originally built at Lyft."),
    (
        &["wasm", "webassembly"],
        "WebAssembly filters let Envoy run sandboxed extensions.",
    ),
];

/// The service; streamed answers send one token every `token_delay`.
pub fn app(token_delay: Duration) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/v1/chat/completions",
            post(move |body: Bytes| chat(body, token_delay)),
        )
}

/// The last user message's text, whether `content` is a string or a list of parts.
fn question(req: &Value) -> String {
    let Some(messages) = req["messages"].as_array() else {
        return String::new();
    };
    let Some(last) = messages.iter().rev().find(|m| m["role"] == "user") else {
        return String::new();
    };
    match &last["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// The answer the service gives to `question`.
pub fn answer_for(question: &str) -> String {
    let q = question.to_lowercase();
    CORPUS
        .iter()
        .find(|(keys, _)| keys.iter().any(|k| q.contains(k)))
        .map(|(_, passage)| format!("According to the retrieved passage: {passage}"))
        .unwrap_or_else(|| "I do not know; nothing relevant was retrieved.".to_owned())
}

/// The text and title of the first retrieved passage the request carries in `documents`: a string,
/// or an object with `text` (or `content`) and an optional `title`.
fn retrieved(req: &Value) -> Option<(String, Option<String>)> {
    let first = req["documents"].as_array()?.first()?;
    match first {
        Value::String(s) => Some((s.clone(), None)),
        Value::Object(o) => {
            let text = o.get("text").or_else(|| o.get("content"))?.as_str()?;
            let title = o.get("title").and_then(Value::as_str).map(str::to_owned);
            Some((text.to_owned(), title))
        }
        _ => None,
    }
}

/// The answer the service gives to a chat request: grounded in the first passage it carries, or
/// else [`answer_for`] its question.
pub fn answer(req: &Value) -> String {
    match retrieved(req) {
        Some((text, Some(title))) => format!("According to {title}: {text}"),
        Some((text, None)) => format!("According to the retrieved passage: {text}"),
        None => answer_for(&question(req)),
    }
}

fn response(status: StatusCode, content_type: &str, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert("content-type", v);
    }
    r
}

async fn chat(body: Bytes, delay: Duration) -> Response<Body> {
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            let err = json!({"error": {"message": format!("invalid JSON: {e}")}});
            return response(
                StatusCode::BAD_REQUEST,
                "application/json",
                Body::from(err.to_string()),
            );
        }
    };
    let model = req["model"].as_str().unwrap_or("demo-rag-1").to_owned();
    let text = answer(&req);
    let words: Vec<String> = text.split_inclusive(' ').map(str::to_owned).collect();
    let usage = json!({"prompt_tokens": body.len() / 4, "completion_tokens": words.len(), "total_tokens": body.len() / 4 + words.len()});
    if req["stream"] != json!(true) {
        let out = json!({
            "id": "chatcmpl-demo", "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": usage,
        });
        return response(
            StatusCode::OK,
            "application/json",
            Body::from(out.to_string()),
        );
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    tokio::spawn(async move {
        let chunk = |delta: Value, finish: Value| {
            let c = json!({"id": "chatcmpl-demo", "object": "chat.completion.chunk", "model": model,
                           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
            Bytes::from(format!("data: {c}\n\n"))
        };
        let mut events = vec![chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        )];
        events.extend(
            words
                .iter()
                .map(|w| chunk(json!({"content": w}), Value::Null)),
        );
        events.push(chunk(json!({}), json!("stop")));
        let tail = json!({"id": "chatcmpl-demo", "object": "chat.completion.chunk", "model": model, "choices": [], "usage": usage});
        events.push(Bytes::from(format!("data: {tail}\n\n")));
        events.push(Bytes::from_static(b"data: [DONE]\n\n"));
        for e in events {
            if tx.send(Ok(e)).await.is_err() {
                return; // the client went away
            }
            tokio::time::sleep(delay).await;
        }
    });
    response(
        StatusCode::OK,
        "text/event-stream",
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_that_carries_passages_is_answered_from_the_first() {
        let req = json!({"messages": [{"role": "user", "content": "Who built Envoy?"}],
                         "documents": [{"title": "Envoy FAQ", "text": "Envoy was built at Lyft."}, "unused"]});
        assert_eq!(
            answer(&req),
            "According to Envoy FAQ: Envoy was built at Lyft."
        );
        let req = json!({"messages": [], "documents": ["Plain passage."]});
        assert_eq!(
            answer(&req),
            "According to the retrieved passage: Plain passage."
        );
    }

    #[test]
    fn without_passages_the_built_in_corpus_answers_the_last_user_question() {
        let req = json!({"messages": [{"role": "user", "content": "about paris"},
                                      {"role": "assistant", "content": "..."},
                                      {"role": "user", "content": [{"type": "text", "text": "What is Envoy?"}]}]});
        assert_eq!(answer(&req), answer_for("What is Envoy?"));
        assert!(answer(&req).contains("Lyft"));
        assert_eq!(
            answer(&json!({"messages": [{"role": "user", "content": "weather?"}]})),
            "I do not know; nothing relevant was retrieved."
        );
    }
}
