//! Capture records of the kinds an auditor meets, as the filter writes them: a RAG chat
//! completion with its passages (gzip-compressed answer), an Anthropic stream, a stream the
//! client hung up on, an Ollama tool call, a truncated body, an upstream failure, and a hostile
//! exchange whose bodies, headers and model try to run script in whoever looks at them.

use std::io::Write as _;

use base64::Engine as _;
use serde_json::{json, Value};

/// The script a hostile capture tries to run: it would change the page's title and call home.
pub const HOSTILE_MARK: &str = "PWNED-BY-CAPTURE";

pub fn body(text: &str) -> Value {
    json!({"encoding": "utf8", "data": text, "size": text.len(), "truncated": false})
}

pub fn gzip_body(text: &str) -> Value {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(text.as_bytes()).unwrap();
    let bytes = enc.finish().unwrap();
    json!({"encoding": "base64", "data": base64::engine::general_purpose::STANDARD.encode(&bytes),
           "size": bytes.len(), "truncated": false})
}

fn record(
    id: &str,
    started_at: &str,
    outcome: &str,
    path: &str,
    req_headers: Value,
    req_body: Value,
    response: Value,
) -> Value {
    json!({
        "schema": "truthtable.capture.v1", "id": id, "started_at": started_at,
        "duration_ms": 1804.25, "outcome": outcome,
        "detail": if outcome == "complete" { "via_upstream" } else if outcome == "client_aborted" { "downstream_remote_disconnect" } else { "upstream_reset_before_response_started{connection_termination}" },
        "request": {"method": "POST", "scheme": "https", "authority": "llm.internal.example",
            "path": path, "query": "", "headers": req_headers, "body": req_body},
        "response": response
    })
}

fn std_headers(id: &str) -> Value {
    json!([
        ["content-type", "application/json"],
        ["authorization", "[REDACTED]"],
        ["x-request-id", id],
        ["user-agent", "OpenAI/Python 1.51.0"]
    ])
}

/// A RAG chat completion: a system message, two retrieved passages, the question; the answer
/// gzip-compressed as the upstream sent it.
pub fn rag_chat(id: &str, started_at: &str, question: &str, answer: &str) -> Value {
    let req = json!({"model": "gpt-4o", "messages": [
        {"role": "system", "content": "Answer only from the documents. Cite the policy section."},
        {"role": "user", "content": question}],
        "documents": [
            {"title": "Refund policy §3", "text": "Opened items may be returned within 30 days of delivery for store credit."},
            {"title": "Refund policy §4", "text": "Unopened items are refunded to the original payment method within 60 days."}]});
    let resp = json!({"id": "chatcmpl-9x", "object": "chat.completion", "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 182, "completion_tokens": 31}});
    record(
        id,
        started_at,
        "complete",
        "/v1/chat/completions",
        std_headers(id),
        body(&req.to_string()),
        json!({"status": 200, "headers": [["content-type", "application/json"], ["content-encoding", "gzip"],
               ["set-cookie", "[REDACTED]"]],
               "body": gzip_body(&resp.to_string()), "first_byte_ms": 212.5}),
    )
}

/// An Anthropic messages stream, complete.
pub fn anthropic_stream(id: &str, started_at: &str) -> Value {
    let req = json!({"model": "claude-sonnet-4-5", "max_tokens": 512, "stream": true,
        "system": "You are the support assistant of Example Corp.",
        "messages": [{"role": "user", "content": "Can I get a refund for a gift card?"}]});
    let events = [
        (
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929", "usage": {"input_tokens": 41, "output_tokens": 1}}}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Gift cards are "}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "not refundable."}}),
        ),
        (
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        (
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 9}}),
        ),
        ("message_stop", json!({"type": "message_stop"})),
    ];
    let sse: String = events
        .iter()
        .map(|(e, d)| format!("event: {e}\ndata: {d}\n\n"))
        .collect();
    record(
        id,
        started_at,
        "complete",
        "/v1/messages",
        json!([
            ["content-type", "application/json"],
            ["x-api-key", "[REDACTED]"],
            ["anthropic-version", "2023-06-01"]
        ]),
        body(&req.to_string()),
        json!({"status": 200, "headers": [["content-type", "text/event-stream"]], "body": body(&sse), "first_byte_ms": 301.0}),
    )
}

/// An OpenAI chat stream the client hung up on after three chunks: no `[DONE]`.
pub fn aborted_stream(id: &str, started_at: &str) -> Value {
    let req = json!({"model": "gpt-4o-mini", "stream": true, "messages": [
        {"role": "user", "content": "Explain the warranty terms for laptops in detail."}]});
    let chunk = |text: &str| {
        json!({"object": "chat.completion.chunk", "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]})
    };
    let sse: String = ["Laptops carry a ", "two-year warranty ", "covering"]
        .iter()
        .map(|t| format!("data: {}\n\n", chunk(t)))
        .collect();
    record(
        id,
        started_at,
        "client_aborted",
        "/v1/chat/completions",
        std_headers(id),
        body(&req.to_string()),
        json!({"status": 200, "headers": [["content-type", "text/event-stream"]], "body": body(&sse), "first_byte_ms": 180.0}),
    )
}

/// An Ollama chat whose answer is a tool call, as NDJSON.
pub fn ollama_tool(id: &str, started_at: &str) -> Value {
    let req = json!({"model": "llama3.2", "messages": [
        {"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather"}}]});
    let lines = [
        json!({"model": "llama3.2", "message": {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}, "done": false}),
        json!({"model": "llama3.2", "message": {"role": "assistant", "content": ""}, "done": true, "done_reason": "stop", "prompt_eval_count": 120, "eval_count": 18}),
    ];
    let ndjson: String = lines.iter().map(|l| format!("{l}\n")).collect();
    record(
        id,
        started_at,
        "complete",
        "/api/chat",
        json!([["content-type", "application/json"]]),
        body(&req.to_string()),
        json!({"status": 200, "headers": [["content-type", "application/x-ndjson"]], "body": body(&ndjson), "first_byte_ms": 95.0}),
    )
}

/// A chat completion whose answer was cut at the filter's `max_body_bytes`.
pub fn truncated(id: &str, started_at: &str) -> Value {
    let req = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "List every clause of the supplier contract."}]});
    let full = json!({"object": "chat.completion", "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Clause 1: ".repeat(40)}, "finish_reason": "stop"}]}).to_string();
    let kept = &full[..200];
    record(
        id,
        started_at,
        "complete",
        "/v1/chat/completions",
        std_headers(id),
        body(&req.to_string()),
        json!({"status": 200, "headers": [["content-type", "application/json"]],
               "body": {"encoding": "utf8", "data": kept, "size": full.len(), "truncated": true}, "first_byte_ms": 400.0}),
    )
}

/// An exchange whose upstream reset the connection: no response.
pub fn upstream_failed(id: &str, started_at: &str) -> Value {
    let req = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Is the Berlin office open on Sunday?"}]});
    record(
        id,
        started_at,
        "upstream_failed",
        "/v1/chat/completions",
        std_headers(id),
        body(&req.to_string()),
        Value::Null,
    )
}

/// An exchange that tries, in every field an auditor sees, to run script in the auditor's
/// browser: the question, a context document, the answer, a header, the model and the query.
pub fn hostile(id: &str, started_at: &str) -> Value {
    let run = format!("document.title='{HOSTILE_MARK}';fetch('/{HOSTILE_MARK}')");
    let question = format!("<script>{run}</script> hello <img src=x onerror=\"{run}\">");
    let answer = format!("</div><svg onload=\"{run}\"></svg><iframe src=\"javascript:{run}\"></iframe> answer <b>bold</b>");
    let req = json!({"model": format!("<img src=x onerror=\"{run}\">"), "messages": [
        {"role": "system", "content": format!("<style>body{{display:none}}</style><a href=\"javascript:{run}\">x</a>")},
        {"role": "user", "content": question}],
        "documents": [{"title": format!("\"><script>{run}</script>"), "text": format!("<object data=\"javascript:{run}\"></object>")}]});
    let resp = json!({"object": "chat.completion", "model": format!("<script>{run}</script>"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}]});
    let mut r = record(
        id,
        started_at,
        "complete",
        "/v1/chat/completions",
        json!([
            ["content-type", "application/json"],
            ["x-note", format!("\"><script>{run}</script>")]
        ]),
        body(&req.to_string()),
        json!({"status": 200, "headers": [["content-type", "application/json"], ["x-evil", format!("<img src=x onerror=\"{run}\">")]],
               "body": body(&resp.to_string()), "first_byte_ms": 10.0}),
    );
    r["request"]["query"] = json!(format!("q=<script>{run}</script>"));
    r
}

/// A varied set of records, oldest first, started a minute apart from `2026-11-25T09:00:00Z`.
pub fn varied_set() -> Vec<Value> {
    let t = |m: u32| format!("2026-11-25T09:{m:02}:00.000000Z");
    vec![
        rag_chat("rag-refund-opened", &t(0), "Can I return an opened item?", "Yes: opened items may be returned within 30 days of delivery, for store credit (Refund policy §3)."),
        anthropic_stream("anthropic-giftcard", &t(1)),
        aborted_stream("aborted-warranty", &t(2)),
        ollama_tool("ollama-weather", &t(3)),
        truncated("truncated-contract", &t(4)),
        upstream_failed("failed-berlin", &t(5)),
        rag_chat("rag-refund-unopened", &t(6), "How long do I have to return an unopened item?", "Unopened items are refunded to the original payment method within 60 days (Refund policy §4)."),
    ]
}
