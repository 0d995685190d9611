//! Reassembly tests over realistic payloads of each protocol, streamed and not.

use serde_json::json;

use super::decode::tests::{b64_body, brotli, gzip, zlib};
use super::*;
use crate::record::{BodyEncoding, CapturedRequest, CapturedResponse, Outcome};

pub(super) fn utf8(data: &str, truncated: bool) -> CapturedBody {
    CapturedBody {
        encoding: BodyEncoding::Utf8,
        data: data.to_owned(),
        size: data.len() as u64 + u64::from(truncated) * 1000,
        truncated,
    }
}

pub(super) fn exchange(
    path: &str,
    request: &str,
    content_type: &str,
    body: CapturedBody,
) -> CaptureRecord {
    exchange_with(
        path,
        request,
        vec![("content-type".into(), content_type.into())],
        body,
    )
}

pub(super) fn exchange_with(
    path: &str,
    request: &str,
    headers: Headers,
    body: CapturedBody,
) -> CaptureRecord {
    CaptureRecord {
        id: "t".into(),
        started_at: "2026-11-25T16:10:40.186Z".into(),
        duration_ms: 10.0,
        outcome: Outcome::Complete,
        detail: "via_upstream".into(),
        request: CapturedRequest {
            method: "POST".into(),
            scheme: "https".into(),
            authority: "api.example.com".into(),
            path: path.into(),
            query: String::new(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: utf8(request, false),
        },
        response: Some(CapturedResponse {
            status: 200,
            headers,
            body,
            first_byte_ms: Some(1.0),
            chunks: Vec::new(),
            chunks_more: None,
        }),
    }
}

/// SSE text from `(event, data)` pairs; an empty event name writes no `event:` line.
pub(super) fn sse(events: &[(&str, serde_json::Value)]) -> String {
    events
        .iter()
        .map(|(e, d)| {
            if e.is_empty() {
                format!("data: {d}\n\n")
            } else {
                format!("event: {e}\ndata: {d}\n\n")
            }
        })
        .collect()
}

fn texts(view: &AuditView) -> Vec<(ContextSource, &str)> {
    view.context
        .iter()
        .map(|c| (c.source, c.text.as_str()))
        .collect()
}

// ---------------------------------------------------------------- OpenAI chat completions

fn chat_request() -> String {
    json!({
        "model": "gpt-4o",
        "stream": true,
        "messages": [
            {"role": "system", "content": "Answer only from the provided documents."},
            {"role": "user", "content": "What's the weather?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_w", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_w", "content": "18C and sunny"},
            {"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}, {"type": "image_url", "image_url": {"url": "data:..."}}]}
        ],
        "documents": [{"title": "France", "text": "Paris is the capital of France."}]
    })
    .to_string()
}

fn chat_chunk(choices: serde_json::Value) -> serde_json::Value {
    json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-2024-08-06", "choices": choices})
}

fn chat_stream_two_choices() -> String {
    let mut s = sse(&[
        (
            "",
            chat_chunk(json!([
            {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null},
            {"index": 1, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}])),
        ),
        (
            "",
            chat_chunk(json!([
            {"index": 0, "delta": {"content": "Paris is"}, "finish_reason": null},
            {"index": 1, "delta": {"content": "It is"}, "finish_reason": null}])),
        ),
        (
            "",
            chat_chunk(
                json!([{"index": 1, "delta": {"content": " Paris."}, "finish_reason": null}]),
            ),
        ),
        (
            "",
            chat_chunk(
                json!([{"index": 0, "delta": {"content": " the capital."}, "finish_reason": "stop"}]),
            ),
        ),
        (
            "",
            chat_chunk(json!([{"index": 1, "delta": {}, "finish_reason": "stop"}])),
        ),
        (
            "",
            json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-4o-2024-08-06", "choices": [],
            "usage": {"prompt_tokens": 57, "completion_tokens": 9, "total_tokens": 66}}),
        ),
    ]);
    s.push_str("data: [DONE]\n\n");
    s
}

#[test]
fn openai_chat_request_yields_question_and_context() {
    let v = derive(&exchange(
        "/v1/chat/completions",
        &chat_request(),
        "text/event-stream",
        utf8(&chat_stream_two_choices(), false),
    ));
    assert_eq!(v.protocol, Protocol::OpenAiChat);
    assert_eq!(
        v.question.as_deref(),
        Some("What is the capital of France?")
    );
    assert_eq!(
        texts(&v),
        vec![
            (
                ContextSource::System,
                "Answer only from the provided documents."
            ),
            (ContextSource::Tool, "18C and sunny"),
            (ContextSource::Document, "Paris is the capital of France."),
        ]
    );
    assert_eq!(v.context[1].name.as_deref(), Some("call_w"));
    assert_eq!(v.context[2].name.as_deref(), Some("France"));
}

#[test]
fn openai_chat_stream_reassembles_each_choice_and_usage() {
    let v = derive(&exchange(
        "/v1/chat/completions",
        &chat_request(),
        "text/event-stream; charset=utf-8",
        utf8(&chat_stream_two_choices(), false),
    ));
    assert!(v.streamed);
    assert_eq!(v.stream_complete, Some(true));
    assert!(v.answer_complete);
    assert_eq!(v.model.as_deref(), Some("gpt-4o-2024-08-06"));
    assert_eq!(v.answer.as_deref(), Some("Paris is the capital."));
    assert_eq!(v.finish_reason.as_deref(), Some("stop"));
    assert_eq!(v.choices.len(), 2);
    assert_eq!(v.choices[1].answer.as_deref(), Some("It is Paris."));
    assert_eq!(
        v.usage,
        Usage {
            input_tokens: Some(57),
            output_tokens: Some(9)
        }
    );
    assert!(v.problems.is_empty(), "{:?}", v.problems);
}

fn chat_tool_stream() -> String {
    let tc = |calls: serde_json::Value| {
        chat_chunk(json!([{"index": 0, "delta": {"tool_calls": calls}, "finish_reason": null}]))
    };
    let mut s = sse(&[
        (
            "",
            chat_chunk(
                json!([{"index": 0, "delta": {"role": "assistant", "content": null,
            "tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}, "finish_reason": null}]),
            ),
        ),
        (
            "",
            tc(json!([{"index": 0, "function": {"arguments": "{\"ci"}}])),
        ),
        (
            "",
            tc(
                json!([{"index": 1, "id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": ""}}]),
            ),
        ),
        (
            "",
            tc(json!([{"index": 0, "function": {"arguments": "ty\": \"Paris\"}"}}])),
        ),
        (
            "",
            tc(json!([{"index": 1, "function": {"arguments": "{\"tz\":\"CET\"}"}}])),
        ),
        (
            "",
            chat_chunk(json!([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}])),
        ),
    ]);
    s.push_str("data: [DONE]\n\n");
    // Real servers may use CRLF; the framing must not care.
    s.replace('\n', "\r\n")
}

#[test]
fn openai_chat_stream_joins_tool_call_fragments_by_index() {
    let v = derive(&exchange(
        "/v1/chat/completions",
        &chat_request(),
        "text/event-stream",
        utf8(&chat_tool_stream(), false),
    ));
    assert_eq!(v.stream_complete, Some(true));
    assert_eq!(v.answer, None);
    assert_eq!(v.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(
        v.tool_calls,
        vec![
            ToolCall {
                id: Some("call_a".into()),
                name: "get_weather".into(),
                arguments: "{\"city\": \"Paris\"}".into()
            },
            ToolCall {
                id: Some("call_b".into()),
                name: "get_time".into(),
                arguments: "{\"tz\":\"CET\"}".into()
            },
        ]
    );
}

#[test]
fn openai_chat_truncated_stream_is_marked_incomplete() {
    let full = chat_stream_two_choices();
    let cut = &full[..full.find("\" the capital.").unwrap() + 20];
    let v = derive(&exchange(
        "/v1/chat/completions",
        &chat_request(),
        "text/event-stream",
        utf8(cut, true),
    ));
    assert!(v.streamed);
    assert_eq!(v.stream_complete, Some(false));
    assert!(!v.answer_complete);
    assert!(v.body_truncated);
    assert_eq!(v.answer.as_deref(), Some("Paris is"));
    assert!(v
        .problems
        .iter()
        .any(|p| p.contains("without its terminal event")));
}

#[test]
fn openai_chat_stream_without_done_is_incomplete_even_if_untruncated() {
    let full = chat_stream_two_choices();
    let cut = full.replace("data: [DONE]\n\n", "");
    let v = derive(&exchange(
        "/v1/chat/completions",
        &chat_request(),
        "text/event-stream",
        utf8(&cut, false),
    ));
    assert_eq!(v.stream_complete, Some(false));
    assert_eq!(v.answer.as_deref(), Some("Paris is the capital."));
}

fn chat_completion() -> String {
    json!({
        "id": "chatcmpl-2", "object": "chat.completion", "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris.",
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "cite", "arguments": "{\"doc\":\"France\"}"}}]},
            "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 40, "completion_tokens": 3, "total_tokens": 43}
    })
    .to_string()
}

#[test]
fn openai_chat_non_streamed_response() {
    let v = derive(&exchange(
        "/v1/chat/completions",
        &chat_request(),
        "application/json",
        utf8(&chat_completion(), false),
    ));
    assert!(!v.streamed);
    assert_eq!(v.stream_complete, None);
    assert!(v.answer_complete);
    assert_eq!(v.answer.as_deref(), Some("Paris."));
    assert_eq!(v.tool_calls[0].name, "cite");
    assert_eq!(v.tool_calls[0].arguments, "{\"doc\":\"France\"}");
    assert_eq!(v.usage.input_tokens, Some(40));
    assert_eq!(v.usage.output_tokens, Some(3));
    assert!(v.choices.is_empty());
}

#[test]
fn the_requested_and_the_answering_model_are_kept_apart() {
    let v = derive(&exchange(
        "/v1/chat/completions",
        &chat_request(),
        "application/json",
        utf8(&chat_completion(), false),
    ));
    assert_eq!(v.request_model.as_deref(), Some("gpt-4o"));
    assert_eq!(v.response_model.as_deref(), Some("gpt-4o-2024-08-06"));
    assert_eq!(v.model, v.response_model);
    // A response that names no model: `model` is the request's, `response_model` is null.
    let v = derive(&exchange(
        "/v1/chat/completions",
        &chat_request(),
        "application/json",
        utf8(r#"{"choices":[{"message":{"content":"Paris."}}]}"#, false),
    ));
    assert_eq!(v.model.as_deref(), Some("gpt-4o"));
    assert_eq!(v.request_model.as_deref(), Some("gpt-4o"));
    assert_eq!(v.response_model, None);
}

#[test]
fn openai_chat_truncated_json_body_says_so() {
    let full = chat_completion();
    let v = derive(&exchange(
        "/v1/chat/completions",
        &chat_request(),
        "application/json",
        utf8(&full[..full.len() / 2], true),
    ));
    assert_eq!(v.protocol, Protocol::OpenAiChat);
    assert!(v.body_truncated);
    assert!(!v.answer_complete);
    assert_eq!(v.answer, None);
    assert!(
        v.problems.iter().any(|p| p.contains("truncated")),
        "{:?}",
        v.problems
    );
}

// ---------------------------------------------------------------- Anthropic messages

fn anthropic_request() -> String {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "stream": true,
        "system": [{"type": "text", "text": "You are a weather assistant."}],
        "messages": [
            {"role": "user", "content": "What's the weather in San Francisco?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_0", "name": "get_weather", "input": {"location": "SF"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_0", "content": [{"type": "text", "text": "15C, fog"}]},
                {"type": "document", "title": "Climate", "source": {"type": "text", "media_type": "text/plain", "data": "SF summers are foggy."}},
                {"type": "text", "text": "And tomorrow?"}
            ]}
        ]
    })
    .to_string()
}

fn anthropic_stream() -> String {
    sse(&[
        (
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": "claude-sonnet-4-5-20250929", "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 472, "output_tokens": 2}}}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        ("ping", json!({"type": "ping"})),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Okay, let me"}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " check tomorrow."}}),
        ),
        (
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "get_forecast", "input": {}}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"location\": \"San Fra"}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "ncisco, CA\", \"days\": 1}"}}),
        ),
        (
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 1}),
        ),
        (
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 89}}),
        ),
        ("message_stop", json!({"type": "message_stop"})),
    ])
}

#[test]
fn anthropic_request_yields_question_and_context() {
    let v = derive(&exchange(
        "/v1/messages",
        &anthropic_request(),
        "text/event-stream",
        utf8(&anthropic_stream(), false),
    ));
    assert_eq!(v.protocol, Protocol::AnthropicMessages);
    assert_eq!(v.question.as_deref(), Some("And tomorrow?"));
    assert_eq!(
        texts(&v),
        vec![
            (ContextSource::System, "You are a weather assistant."),
            (ContextSource::Tool, "15C, fog"),
            (ContextSource::Document, "SF summers are foggy."),
        ]
    );
    assert_eq!(v.context[1].name.as_deref(), Some("get_weather"));
}

#[test]
fn anthropic_stream_reassembles_text_and_tool_use() {
    let v = derive(&exchange(
        "/v1/messages",
        &anthropic_request(),
        "text/event-stream",
        utf8(&anthropic_stream(), false),
    ));
    assert!(v.streamed);
    assert_eq!(v.stream_complete, Some(true));
    assert_eq!(v.model.as_deref(), Some("claude-sonnet-4-5-20250929"));
    assert_eq!(v.answer.as_deref(), Some("Okay, let me check tomorrow."));
    assert_eq!(
        v.tool_calls,
        vec![ToolCall {
            id: Some("toolu_1".into()),
            name: "get_forecast".into(),
            arguments: "{\"location\": \"San Francisco, CA\", \"days\": 1}".into()
        }]
    );
    assert_eq!(v.finish_reason.as_deref(), Some("tool_use"));
    assert_eq!(
        v.usage,
        Usage {
            input_tokens: Some(472),
            output_tokens: Some(89)
        }
    );
    assert!(v.problems.is_empty(), "{:?}", v.problems);
}

#[test]
fn anthropic_truncated_stream_is_marked_incomplete() {
    let full = anthropic_stream();
    let cut = &full[..full.find("content_block_stop").unwrap()];
    let v = derive(&exchange(
        "/v1/messages",
        &anthropic_request(),
        "text/event-stream",
        utf8(cut, true),
    ));
    assert_eq!(v.stream_complete, Some(false));
    assert!(!v.answer_complete);
    assert_eq!(v.answer.as_deref(), Some("Okay, let me check tomorrow."));
    assert!(v.tool_calls.is_empty());
}

#[test]
fn anthropic_non_streamed_response() {
    let body = json!({
        "id": "msg_2", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
        "content": [
            {"type": "text", "text": "It will be foggy."},
            {"type": "tool_use", "id": "toolu_9", "name": "log", "input": {"level": "info"}}
        ],
        "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 100, "output_tokens": 12}
    });
    let v = derive(&exchange(
        "/v1/messages",
        &anthropic_request(),
        "application/json",
        utf8(&body.to_string(), false),
    ));
    assert_eq!(v.answer.as_deref(), Some("It will be foggy."));
    assert_eq!(v.tool_calls[0].name, "log");
    assert_eq!(v.tool_calls[0].arguments, "{\"level\":\"info\"}");
    assert_eq!(v.finish_reason.as_deref(), Some("end_turn"));
    assert_eq!(v.usage.output_tokens, Some(12));
    assert!(v.answer_complete);
}

// ---------------------------------------------------------------- OpenAI Responses

fn responses_request() -> String {
    json!({
        "model": "gpt-4.1",
        "instructions": "Use the lookup tool when unsure.",
        "stream": true,
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Who wrote Dune?"}]},
            {"type": "function_call", "call_id": "call_7", "name": "lookup", "arguments": "{\"q\":\"Dune\"}"},
            {"type": "function_call_output", "call_id": "call_7", "output": "Dune (1965) by Frank Herbert."}
        ]
    })
    .to_string()
}

fn responses_stream() -> String {
    let completed = json!({"id": "resp_1", "object": "response", "status": "completed", "model": "gpt-4.1-2025-04-14",
        "output": [
            {"type": "message", "id": "msg_1", "role": "assistant", "content": [{"type": "output_text", "text": "Frank Herbert wrote Dune.", "annotations": []}]},
            {"type": "function_call", "id": "fc_1", "call_id": "call_8", "name": "lookup", "arguments": "{\"q\":\"Herbert\"}"}],
        "usage": {"input_tokens": 37, "output_tokens": 11, "total_tokens": 48}});
    sse(&[
        (
            "response.created",
            json!({"type": "response.created", "sequence_number": 0, "response": {"id": "resp_1", "object": "response", "status": "in_progress", "model": "gpt-4.1-2025-04-14", "output": [], "usage": null}}),
        ),
        (
            "response.output_item.added",
            json!({"type": "response.output_item.added", "output_index": 0, "item": {"id": "msg_1", "type": "message", "status": "in_progress", "role": "assistant", "content": []}}),
        ),
        (
            "response.output_text.delta",
            json!({"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": "Frank Herbert"}),
        ),
        (
            "response.output_text.delta",
            json!({"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": " wrote Dune."}),
        ),
        (
            "response.output_item.added",
            json!({"type": "response.output_item.added", "output_index": 1, "item": {"type": "function_call", "id": "fc_1", "call_id": "call_8", "name": "lookup", "arguments": ""}}),
        ),
        (
            "response.function_call_arguments.delta",
            json!({"type": "response.function_call_arguments.delta", "output_index": 1, "item_id": "fc_1", "delta": "{\"q\":"}),
        ),
        (
            "response.function_call_arguments.delta",
            json!({"type": "response.function_call_arguments.delta", "output_index": 1, "item_id": "fc_1", "delta": "\"Herbert\"}"}),
        ),
        (
            "response.completed",
            json!({"type": "response.completed", "response": completed}),
        ),
    ])
}

#[test]
fn responses_request_yields_question_and_context() {
    let v = derive(&exchange(
        "/v1/responses",
        &responses_request(),
        "text/event-stream",
        utf8(&responses_stream(), false),
    ));
    assert_eq!(v.protocol, Protocol::OpenAiResponses);
    assert_eq!(v.question.as_deref(), Some("Who wrote Dune?"));
    assert_eq!(
        texts(&v),
        vec![
            (ContextSource::System, "Use the lookup tool when unsure."),
            (ContextSource::Tool, "Dune (1965) by Frank Herbert."),
        ]
    );
    assert_eq!(v.context[1].name.as_deref(), Some("lookup"));
}

#[test]
fn responses_stream_reassembles_text_and_function_call() {
    let v = derive(&exchange(
        "/v1/responses",
        &responses_request(),
        "text/event-stream",
        utf8(&responses_stream(), false),
    ));
    assert_eq!(v.stream_complete, Some(true));
    assert_eq!(v.answer.as_deref(), Some("Frank Herbert wrote Dune."));
    assert_eq!(
        v.tool_calls,
        vec![ToolCall {
            id: Some("call_8".into()),
            name: "lookup".into(),
            arguments: "{\"q\":\"Herbert\"}".into()
        }]
    );
    assert_eq!(v.model.as_deref(), Some("gpt-4.1-2025-04-14"));
    assert_eq!(v.finish_reason.as_deref(), Some("completed"));
    assert_eq!(v.usage.input_tokens, Some(37));
    assert_eq!(v.usage.output_tokens, Some(11));
}

#[test]
fn responses_truncated_stream_is_marked_incomplete() {
    let full = responses_stream();
    let cut = &full[..full.find("event: response.completed").unwrap()];
    let v = derive(&exchange(
        "/v1/responses",
        &responses_request(),
        "text/event-stream",
        utf8(cut, true),
    ));
    assert_eq!(v.stream_complete, Some(false));
    assert_eq!(v.answer.as_deref(), Some("Frank Herbert wrote Dune."));
    assert_eq!(v.finish_reason, None);
}

#[test]
fn responses_non_streamed_response() {
    let body = json!({"id": "resp_2", "object": "response", "status": "incomplete",
        "incomplete_details": {"reason": "max_output_tokens"}, "model": "gpt-4.1-2025-04-14",
        "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Frank"}]}],
        "usage": {"input_tokens": 30, "output_tokens": 1}});
    let v = derive(&exchange(
        "/v1/responses",
        &json!({"model": "gpt-4.1", "input": "Who wrote Dune?"}).to_string(),
        "application/json",
        utf8(&body.to_string(), false),
    ));
    assert_eq!(v.question.as_deref(), Some("Who wrote Dune?"));
    assert_eq!(v.answer.as_deref(), Some("Frank"));
    assert_eq!(v.finish_reason.as_deref(), Some("max_output_tokens"));
    assert_eq!(v.usage.output_tokens, Some(1));
}

// ---------------------------------------------------------------- encodings and unknowns

#[test]
fn compressed_responses_are_decoded_before_parsing() {
    let stream = anthropic_stream();
    for (ce, bytes) in [
        ("gzip", gzip(stream.as_bytes())),
        ("br", brotli(stream.as_bytes())),
        ("deflate", zlib(stream.as_bytes())),
    ] {
        let headers = vec![
            ("content-type".to_owned(), "text/event-stream".to_owned()),
            ("content-encoding".to_owned(), ce.to_owned()),
        ];
        let v = derive(&exchange_with(
            "/v1/messages",
            &anthropic_request(),
            headers,
            b64_body(&bytes, false),
        ));
        assert_eq!(v.stream_complete, Some(true), "{ce}");
        assert_eq!(
            v.answer.as_deref(),
            Some("Okay, let me check tomorrow."),
            "{ce}"
        );
    }
}

#[test]
fn truncated_gzip_stream_is_reassembled_as_far_as_it_goes() {
    let stream = chat_stream_two_choices();
    let z = gzip(stream.as_bytes());
    let headers = vec![
        ("content-type".to_owned(), "text/event-stream".to_owned()),
        ("content-encoding".to_owned(), "gzip".to_owned()),
    ];
    let v = derive(&exchange_with(
        "/v1/chat/completions",
        &chat_request(),
        headers,
        b64_body(&z[..z.len() * 3 / 4], true),
    ));
    assert_eq!(v.protocol, Protocol::OpenAiChat);
    assert!(v.body_truncated);
    assert_eq!(v.stream_complete, Some(false));
    assert!(
        v.problems.iter().any(|p| p.contains("gzip")),
        "{:?}",
        v.problems
    );
}

#[test]
fn base64_uncompressed_body_is_decoded() {
    let v = derive(&exchange(
        "/v1/chat/completions",
        &chat_request(),
        "application/json",
        b64_body(chat_completion().as_bytes(), false),
    ));
    assert_eq!(v.answer.as_deref(), Some("Paris."));
}

#[test]
fn protocol_is_recognised_from_bodies_when_the_path_is_unusual() {
    let v = derive(&exchange(
        "/llm/proxy",
        &chat_request(),
        "application/json",
        utf8(&chat_completion(), false),
    ));
    assert_eq!(v.protocol, Protocol::OpenAiChat);
    assert_eq!(v.answer.as_deref(), Some("Paris."));
}

#[test]
fn unparseable_exchange_is_unknown_with_a_reason() {
    let mut rec = exchange(
        "/index.html",
        "",
        "text/html",
        utf8("<html>hi</html>", false),
    );
    rec.request.method = "GET".into();
    let v = derive(&rec);
    assert_eq!(v.protocol, Protocol::Unknown);
    let reason = v.reason.unwrap();
    assert!(reason.contains("not JSON"), "{reason}");
    assert!(reason.contains("GET /index.html"), "{reason}");
}

#[test]
fn known_path_with_garbage_bodies_is_unknown_not_a_failure() {
    let rec = exchange(
        "/v1/chat/completions",
        "not json",
        "application/json",
        utf8("also not json", false),
    );
    let v = derive(&rec);
    assert_eq!(v.protocol, Protocol::Unknown);
    assert!(v.reason.is_some());
    let unknown_encoding = exchange_with(
        "/v1/chat/completions",
        "{",
        vec![("content-encoding".into(), "zstd".into())],
        b64_body(b"\x28\xb5\x2f\xfd", false),
    );
    let v = derive(&unknown_encoding);
    assert_eq!(v.protocol, Protocol::Unknown);
    assert!(v.reason.unwrap().contains("zstd"));
}

#[test]
fn upstream_error_is_reported_as_a_problem() {
    let v = derive(&exchange(
        "/v1/chat/completions",
        &chat_request(),
        "application/json",
        utf8(
            &json!({"error": {"message": "Rate limit reached", "type": "requests"}}).to_string(),
            false,
        ),
    ));
    assert_eq!(v.protocol, Protocol::OpenAiChat);
    assert!(v.problems.iter().any(|p| p.contains("Rate limit reached")));
    assert_eq!(v.answer, None);
}

#[test]
fn record_without_response_still_gets_the_question() {
    let mut rec = exchange("/v1/messages", &anthropic_request(), "", utf8("", false));
    rec.response = None;
    let v = derive(&rec);
    assert_eq!(v.protocol, Protocol::AnthropicMessages);
    assert_eq!(v.question.as_deref(), Some("And tomorrow?"));
    assert!(!v.answer_complete);
}

#[test]
fn view_serialises_with_the_documented_field_names() {
    let v = derive(&exchange(
        "/v1/chat/completions",
        &chat_request(),
        "application/json",
        utf8(&chat_completion(), false),
    ));
    let j = serde_json::to_value(&v).unwrap();
    assert_eq!(j["protocol"], "openai.chat");
    for key in [
        "model",
        "question",
        "context",
        "answer",
        "tool_calls",
        "finish_reason",
        "usage",
        "streamed",
        "stream_complete",
        "answer_complete",
        "body_truncated",
        "problems",
        "reason",
    ] {
        assert!(j.get(key).is_some(), "missing {key}");
    }
    assert_eq!(j["context"][0]["source"], "system");
    assert_eq!(j["usage"]["input_tokens"], 40);
}

// ---------------------------------------------------------------- recognition

fn sources(evidence: &[Evidence]) -> Vec<(EvidenceSource, Protocol)> {
    evidence.iter().map(|e| (e.source, e.suggests)).collect()
}

#[test]
fn a_response_shape_overrules_the_path() {
    let v = derive(&exchange(
        "/api/generate",
        &chat_request(),
        "application/json",
        utf8(&chat_completion(), false),
    ));
    assert_eq!(v.protocol, Protocol::OpenAiChat);
    assert_eq!(
        sources(&v.recognised_from),
        [
            (EvidenceSource::ResponseBody, Protocol::OpenAiChat),
            (EvidenceSource::RequestBody, Protocol::OpenAiChat)
        ]
    );
    assert_eq!(
        sources(&v.overruled),
        [(EvidenceSource::Path, Protocol::OllamaGenerate)]
    );
}

#[test]
fn ollama_openai_compatible_endpoints_stay_openai() {
    let body = json!({"id": "chatcmpl-42", "object": "chat.completion", "created": 1, "model": "llama3.2",
        "system_fingerprint": "fp_ollama",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}});
    let v = derive(&exchange(
        "/v1/chat/completions",
        &json!({"model": "llama3.2", "messages": [{"role": "user", "content": "Capital of France?"}]})
            .to_string(),
        "application/json",
        utf8(&body.to_string(), false),
    ));
    assert_eq!(v.protocol, Protocol::OpenAiChat);
    assert_eq!(v.answer.as_deref(), Some("Paris."));
    assert!(v.overruled.is_empty(), "{:?}", v.overruled);
}

#[test]
fn ndjson_framing_picks_ollama_chat_when_the_bodies_say_no_more() {
    // A messages request on a proxy path, answered by an NDJSON stream cut inside its first line.
    let v = derive(&exchange(
        "/llm",
        &json!({"model": "llama3.2", "messages": [{"role": "user", "content": "Hi"}]}).to_string(),
        "application/x-ndjson",
        utf8("{\"model\":\"llama3.2\",\"created_at\":\"2026-", true),
    ));
    assert_eq!(v.protocol, Protocol::OllamaChat);
    assert_eq!(v.recognised_from[0].source, EvidenceSource::ContentType);
    assert_eq!(v.question.as_deref(), Some("Hi"));
    assert_eq!(v.stream_complete, Some(false));
    assert!(
        v.problems.iter().any(
            |p| p.starts_with("no answer: looked for \"message.content\"")
                && p.contains("1 NDJSON line")
        ),
        "{:?}",
        v.problems
    );
}

#[test]
fn a_protocol_header_decides_when_there_is_no_response() {
    let mut rec = exchange(
        "/proxy",
        &json!({"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}]})
            .to_string(),
        "",
        utf8("", false),
    );
    rec.request
        .headers
        .push(("anthropic-version".into(), "2023-06-01".into()));
    rec.response = None;
    rec.outcome = Outcome::UpstreamFailed;
    rec.detail = "upstream_reset_before_response_started{connection_failure}".into();
    let v = derive(&rec);
    assert_eq!(v.protocol, Protocol::AnthropicMessages);
    assert_eq!(v.recognised_from[0].source, EvidenceSource::Header);
    assert_eq!(
        v.problems,
        ["no answer: there is no response (outcome upstream_failed, upstream_reset_before_response_started{connection_failure})"]
    );
}

#[test]
fn the_request_shape_wins_over_a_path_it_does_not_fit() {
    let mut rec = exchange(
        "/v1/chat/completions",
        &json!({"contents": [{"parts": [{"text": "Hi"}]}]}).to_string(),
        "application/json",
        utf8("{\"error\": {\"message\": \"bad gateway\"}}", false),
    );
    if let Some(r) = rec.response.as_mut() {
        r.status = 502;
    }
    let v = derive(&rec);
    assert_eq!(v.protocol, Protocol::Gemini);
    assert_eq!(v.question.as_deref(), Some("Hi"));
    assert_eq!(
        sources(&v.overruled),
        [(EvidenceSource::Path, Protocol::OpenAiChat)]
    );
    // The error once, with the status: a non-streamed answer is not a stream.
    let errors: Vec<&String> = v
        .problems
        .iter()
        .filter(|p| p.contains("bad gateway"))
        .collect();
    assert_eq!(errors, ["upstream answered 502: bad gateway"]);
    assert!(
        v.problems.iter().any(|p| p
            .starts_with("no answer: looked for candidates[].content.parts[].text")
            && p.ends_with("(status 502)")),
        "{:?}",
        v.problems
    );
}

#[test]
fn an_unknown_exchange_says_what_was_looked_for() {
    let v = derive(&exchange(
        "/v1/embeddings",
        "{\"model\": \"e5\", \"encoding_format\": \"float\"}",
        "application/json",
        utf8("{\"data\": [{\"embedding\": [0.1]}]}", false),
    ));
    assert_eq!(v.protocol, Protocol::Unknown);
    let reason = v.reason.unwrap();
    assert!(
        reason.contains("POST /v1/embeddings is not a known LLM endpoint"),
        "{reason}"
    );
    assert!(
        reason.contains("\"contents\"") && reason.contains("\"candidates\""),
        "{reason}"
    );
}

#[test]
fn an_empty_answer_is_explained() {
    let body = json!({"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "length"}]});
    let v = derive(&exchange(
        "/v1/chat/completions",
        &chat_request(),
        "application/json",
        utf8(&body.to_string(), false),
    ));
    assert_eq!(v.answer.as_deref(), Some(""));
    assert!(
        v.problems
            .contains(&"empty answer: choices[0].message.content is an empty string".to_owned()),
        "{:?}",
        v.problems
    );
}

#[test]
fn existing_protocols_name_their_fields() {
    let v = derive(&exchange(
        "/v1/chat/completions",
        &chat_request(),
        "text/event-stream",
        utf8(&chat_stream_two_choices(), false),
    ));
    assert_eq!(v.fields.question.as_deref(), Some("messages[4].content"));
    assert_eq!(v.fields.answer.as_deref(), Some("choices[0].delta.content"));
    assert_eq!(v.context[0].field, "messages[0].content");
    assert_eq!(v.attachments.len(), 1, "the image_url part of the question");
    assert_eq!(v.attachments[0].field, "messages[4].content[1]");
    let v = derive(&exchange(
        "/v1/messages",
        &anthropic_request(),
        "text/event-stream",
        utf8(&anthropic_stream(), false),
    ));
    assert_eq!(
        v.fields.question.as_deref(),
        Some("messages[2].content[].text")
    );
    assert_eq!(v.context[2].field, "messages[2].content[1]");
    let v = derive(&exchange(
        "/v1/responses",
        &responses_request(),
        "text/event-stream",
        utf8(&responses_stream(), false),
    ));
    assert_eq!(v.fields.question.as_deref(), Some("input[0].content"));
    assert_eq!(
        v.fields.answer.as_deref(),
        Some("response.output_text.delta")
    );
}

/// Realistic and broken request/response pairs of every protocol, for the properties below.
fn pool() -> Vec<(&'static str, String, &'static str, String)> {
    let ollama_stream = "{\"model\":\"m\",\"created_at\":\"t\",\"response\":\"Ray\",\"done\":false}\n{\"model\":\"m\",\"created_at\":\"t\",\"response\":\"leigh\",\"done\":false}\n{\"model\":\"m\",\"created_at\":\"t\",\"response\":\"\",\"done\":true,\"done_reason\":\"stop\",\"eval_count\":2}\n";
    let gemini_array = "[{\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Ray\"}]}}]}\n,\n{\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"leigh\"}]}, \"finishReason\": \"STOP\"}]}\n]";
    vec![
        ("/v1/chat/completions", chat_request(), "text/event-stream", chat_stream_two_choices()),
        ("/v1/chat/completions", chat_request(), "application/json", chat_completion()),
        ("/v1/messages", anthropic_request(), "text/event-stream", anthropic_stream()),
        ("/v1/responses", responses_request(), "text/event-stream", responses_stream()),
        ("/api/generate", "{\"model\":\"m\",\"prompt\":\"Why?\"}".into(), "application/x-ndjson", ollama_stream.into()),
        ("/v1beta/models/g:streamGenerateContent", "{\"contents\":[{\"parts\":[{\"text\":\"Why?\"}]}]}".into(), "application/json", gemini_array.into()),
        ("/v1/completions", "{\"model\":\"m\",\"prompt\":\"Why?\"}".into(), "text/event-stream", "data: {\"object\":\"text_completion\",\"choices\":[{\"index\":0,\"text\":\"Ray\"}]}\n\ndata: [DONE]\n\n".into()),
        ("/ask", "{\"question\":\"Why?\"}".into(), "application/x-ndjson", "{\"answer\":\"Ray\"}\n{\"answer\":\"leigh\"}\n".into()),
        ("/chat/completions", "{\"prompt\":\"Why?\"}".into(), "application/json", "{\"response\":\"Rayleigh\"}".into()),
        ("/v1/chat/completions", "{}".into(), "application/json", "{}".into()),
        ("/api/chat", "{\"messages\":[]}".into(), "application/x-ndjson", "".into()),
        ("/x", "not json".into(), "text/plain", "hello".into()),
    ]
}

mod never_silent {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the exchange, a missing or empty question or answer comes with its explanation.
        #[test]
        fn a_missing_question_or_answer_is_always_explained(
            pick in 0usize..12,
            other in 0usize..12,
            cut in 0usize..2000,
            mix in any::<bool>(),
            drop_response in any::<bool>(),
        ) {
            let pool = pool();
            let (path, req, ct, resp) = &pool[pick % pool.len()];
            // Sometimes a path of one protocol with the bodies of another.
            let path = if mix { pool[other % pool.len()].0 } else { path };
            let at = cut.min(resp.len());
            let at = (0..=at).rev().find(|i| resp.is_char_boundary(*i)).unwrap_or(0);
            let mut rec = exchange(path, req, ct, utf8(&resp[..at], at < resp.len()));
            if drop_response {
                rec.response = None;
            }
            let v = derive(&rec);
            if v.protocol == Protocol::Unknown {
                prop_assert!(v.reason.as_deref().is_some_and(|r| !r.is_empty()));
            } else {
                let said = |prefix: &str| v.problems.iter().any(|p| p.starts_with(prefix));
                match &v.question {
                    None => prop_assert!(said("no question:"), "{:?}", v.problems),
                    Some(q) if q.trim().is_empty() => prop_assert!(said("empty question:")),
                    Some(_) => {}
                }
                match &v.answer {
                    None => prop_assert!(said("no answer"), "{:?}", v.problems),
                    Some(a) if a.trim().is_empty() => prop_assert!(said("empty answer:")),
                    Some(_) => {}
                }
            }
        }

        /// Any prefix of a stream gives a prefix of the whole answer, and is complete only whole.
        #[test]
        fn a_prefix_of_a_stream_gives_a_prefix_of_its_answer(pick in 4usize..8, cut in 0usize..2000) {
            let (path, req, ct, resp) = &pool()[pick];
            let whole = derive(&exchange(path, req, ct, utf8(resp, false)));
            let full = whole.answer.clone().unwrap_or_default();
            prop_assert_eq!(whole.stream_complete, Some(true), "{:?}", whole.problems);
            let at = cut.min(resp.len());
            let v = derive(&exchange(path, req, ct, utf8(&resp[..at], at < resp.len())));
            let part = v.answer.clone().unwrap_or_default();
            prop_assert!(full.starts_with(&part), "{:?} is not a prefix of {:?}", part, full);
            if v.stream_complete == Some(true) {
                prop_assert_eq!(part, full);
            }
        }

        /// NDJSON line endings and blank lines never change what an Ollama stream says.
        #[test]
        fn ndjson_line_endings_do_not_change_the_view(crlf in any::<bool>(), blanks in 0usize..3) {
            let (path, req, ct, resp) = &pool()[4];
            let eol = format!("{}{}", if crlf { "\r\n" } else { "\n" }, "\n".repeat(blanks));
            let reframed = resp.replace('\n', &eol);
            let a = derive(&exchange(path, req, ct, utf8(resp, false)));
            let b = derive(&exchange(path, req, ct, utf8(&reframed, false)));
            prop_assert_eq!(a, b);
        }
    }
}

mod never_panics {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_response_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..400),
            path in prop_oneof![Just("/v1/chat/completions"), Just("/v1/messages"), Just("/v1/responses"),
                Just("/v1/completions"), Just("/api/generate"), Just("/api/chat"),
                Just("/v1beta/models/g:streamGenerateContent"), Just("/x")],
            ct in prop_oneof![Just("text/event-stream"), Just("application/json"), Just("application/x-ndjson")],
            ce in prop_oneof![Just(""), Just("gzip"), Just("br"), Just("deflate")],
        ) {
            let mut headers = vec![("content-type".to_owned(), ct.to_owned())];
            if !ce.is_empty() {
                headers.push(("content-encoding".to_owned(), ce.to_owned()));
            }
            let _ = derive(&exchange_with(path, &chat_request(), headers, b64_body(&bytes, false)));
        }

        #[test]
        fn any_prefix_of_a_real_stream_never_panics(cut in 0usize..4000) {
            let more: Vec<String> = pool().into_iter().map(|(_, _, _, r)| r).collect();
            for stream in [chat_tool_stream(), anthropic_stream(), responses_stream()].into_iter().chain(more) {
                let at = cut.min(stream.len());
                let body = b64_body(&stream.as_bytes()[..at], at < stream.len());
                let _ = derive(&exchange("/v1/chat/completions", "{}", "text/event-stream", body));
            }
        }
    }
}
