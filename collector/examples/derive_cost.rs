//! What deriving one audit view costs: `cargo run --release -p truthtable-collector --example
//! derive_cost [ROUNDS]`. Builds an OpenAI chat stream, an Anthropic stream (both 200 deltas) and a
//! non-streamed chat completion as capture records, derives each view ROUNDS times (default 2000)
//! and prints the mean time per view. Run two builds in one session and compare them as ratios.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use truthtable_collector::audit::derive;
use truthtable_collector::record::CaptureRecord;

fn record(path: &str, request: &str, content_type: &str, response: &str) -> CaptureRecord {
    let line = serde_json::json!({
        "schema": "truthtable.capture.v1", "id": "bench", "started_at": "2026-11-25T16:10:40.186Z",
        "duration_ms": 10.0, "outcome": "complete", "detail": "via_upstream",
        "request": {"method": "POST", "scheme": "http", "authority": "llm", "path": path, "query": "",
            "headers": [["content-type", "application/json"]],
            "body": {"encoding": "utf8", "data": request, "size": request.len(), "truncated": false}},
        "response": {"status": 200, "headers": [["content-type", content_type]],
            "body": {"encoding": "utf8", "data": response, "size": response.len(), "truncated": false}}
    });
    CaptureRecord::parse_line(&line.to_string()).unwrap()
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let request = serde_json::json!({"model": "gpt-4o", "stream": true, "messages": [
        {"role": "system", "content": "Answer only from the documents."},
        {"role": "user", "content": "What is the capital of France?"}]})
    .to_string();
    let mut chat = String::new();
    let mut anthropic = String::from("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude\",\"usage\":{\"input_tokens\":5}}}\n\n");
    for i in 0..200 {
        chat.push_str(&format!("data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}},\"finish_reason\":null}}]}}\n\n"));
        anthropic.push_str(&format!("event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"tok{i} \"}}}}\n\n"));
    }
    chat.push_str("data: [DONE]\n\n");
    anthropic.push_str("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    let plain = serde_json::json!({"id": "c", "object": "chat.completion", "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 2}})
    .to_string();
    let records = [
        (
            "openai chat stream",
            record("/v1/chat/completions", &request, "text/event-stream", &chat),
        ),
        (
            "anthropic stream",
            record("/v1/messages", &request, "text/event-stream", &anthropic),
        ),
        (
            "openai chat plain",
            record("/v1/chat/completions", &request, "application/json", &plain),
        ),
    ];
    for (name, rec) in &records {
        let answer = derive(rec).answer.unwrap_or_default();
        let start = Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(derive(std::hint::black_box(rec)));
        }
        let per = start.elapsed().as_secs_f64() * 1e6 / rounds as f64;
        println!(
            "{name:<20} {per:>9.1} us/view  (answer {} bytes)",
            answer.len()
        );
    }
}
