//! Anthropic messages (`/v1/messages`), streamed and not.
//!
//! Streams are reassembled from `message_start`, `content_block_start`, `content_block_delta`
//! (`text_delta`, `input_json_delta`), `message_delta` and the terminal `message_stop`.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::content::{count, error_message, str_field, text_of};
use super::{AuditView, ContextItem, ContextSource, ToolCall, Usage};
use crate::sse::SseEvent;

/// Block types that are tool invocations by the model.
const TOOL_USE: &[&str] = &["tool_use", "server_tool_use"];

/// The text of a document-like block: `document` (text or content source) or `search_result`.
fn document_text(block: &Value) -> Option<String> {
    if let Some(source) = block.get("source").filter(|s| s.is_object()) {
        if let Some(data) = source.get("data").and_then(Value::as_str) {
            if source.get("type").and_then(Value::as_str) == Some("text") {
                return Some(data.to_owned());
            }
        }
        if let Some(t) = source.get("content").and_then(text_of) {
            return Some(t);
        }
    }
    block.get("content").and_then(text_of)
}

/// Fills model, question and context from a messages request.
pub fn read_request(req: &Value, view: &mut AuditView) {
    view.model = str_field(req, "model");
    if let Some(system) = req.get("system").and_then(text_of) {
        view.context.push(ContextItem {
            source: ContextSource::System,
            text: system,
            name: None,
        });
    }
    let Some(messages) = req.get("messages").and_then(Value::as_array) else {
        return;
    };
    let mut tool_names: HashMap<String, String> = HashMap::new();
    for msg in messages {
        let role = msg.get("role").and_then(Value::as_str).unwrap_or_default();
        let content = msg.get("content").unwrap_or(&Value::Null);
        let blocks: &[Value] = match content {
            Value::String(s) => {
                if role == "user" {
                    view.question = Some(s.clone());
                }
                continue;
            }
            Value::Array(blocks) => blocks,
            _ => continue,
        };
        let mut texts = Vec::new();
        for block in blocks {
            let kind = block
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default();
            match kind {
                "text" => texts.extend(str_field(block, "text")),
                k if TOOL_USE.contains(&k) => {
                    if let (Some(id), Some(name)) =
                        (str_field(block, "id"), str_field(block, "name"))
                    {
                        tool_names.insert(id, name);
                    }
                }
                "tool_result" => {
                    let id = str_field(block, "tool_use_id");
                    let name = id
                        .as_ref()
                        .and_then(|id| tool_names.get(id).cloned())
                        .or(id);
                    if let Some(text) = block.get("content").and_then(text_of) {
                        view.context.push(ContextItem {
                            source: ContextSource::Tool,
                            text,
                            name,
                        });
                    }
                }
                "document" | "search_result" => {
                    if let Some(text) = document_text(block) {
                        view.context.push(ContextItem {
                            source: ContextSource::Document,
                            text,
                            name: str_field(block, "title"),
                        });
                    }
                }
                _ => {}
            }
        }
        if role == "user" && !texts.is_empty() {
            view.question = Some(texts.join("\n"));
        }
    }
}

fn read_usage(u: &Value, usage: &mut Usage) {
    if let Some(n) = count(u, "input_tokens") {
        usage.input_tokens = Some(n);
    }
    if let Some(n) = count(u, "output_tokens") {
        usage.output_tokens = Some(n);
    }
}

/// Reads a non-streamed `message`; true when it held content.
pub fn read_response(resp: &Value, view: &mut AuditView) -> bool {
    if let Some(m) = str_field(resp, "model") {
        view.model = Some(m);
    }
    if let Some(u) = resp.get("usage") {
        read_usage(u, &mut view.usage);
    }
    view.finish_reason = str_field(resp, "stop_reason");
    let Some(blocks) = resp.get("content").and_then(Value::as_array) else {
        return false;
    };
    let mut answer: Option<String> = None;
    for block in blocks {
        let kind = block
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if kind == "text" {
            if let Some(t) = block.get("text").and_then(Value::as_str) {
                answer.get_or_insert_with(String::new).push_str(t);
            }
        } else if TOOL_USE.contains(&kind) {
            view.tool_calls.push(ToolCall {
                id: str_field(block, "id"),
                name: str_field(block, "name").unwrap_or_default(),
                arguments: block
                    .get("input")
                    .map(Value::to_string)
                    .unwrap_or_else(|| "{}".to_owned()),
            });
        }
    }
    view.answer = answer;
    true
}

#[derive(Default)]
struct Block {
    kind: String,
    text: String,
    id: Option<String>,
    name: String,
    partial_json: String,
    initial_input: Option<Value>,
}

/// Reassembles a streamed message; true when `message_stop` arrived.
pub fn read_stream(
    events: &[SseEvent],
    tail: Option<&SseEvent>,
    view: &mut AuditView,
    problems: &mut Vec<String>,
) -> bool {
    let mut blocks: BTreeMap<u64, Block> = BTreeMap::new();
    let mut stopped = false;
    let mut bad = 0usize;
    for (i, ev) in events.iter().chain(tail).enumerate() {
        let Ok(data) = serde_json::from_str::<Value>(&ev.data) else {
            if i >= events.len() {
                problems.push("last event is cut off mid-way".to_owned());
            } else {
                bad += 1;
            }
            continue;
        };
        let kind = data
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or(ev.event.as_str());
        let index = count(&data, "index").unwrap_or_default();
        match kind {
            "message_start" => {
                let msg = data.get("message").unwrap_or(&Value::Null);
                if let Some(m) = str_field(msg, "model") {
                    view.model = Some(m);
                }
                if let Some(u) = msg.get("usage") {
                    read_usage(u, &mut view.usage);
                }
            }
            "content_block_start" => {
                let cb = data.get("content_block").unwrap_or(&Value::Null);
                let block = blocks.entry(index).or_default();
                block.kind = str_field(cb, "type").unwrap_or_default();
                block.text = str_field(cb, "text").unwrap_or_default();
                block.id = str_field(cb, "id");
                block.name = str_field(cb, "name").unwrap_or_default();
                block.initial_input = cb.get("input").cloned();
            }
            "content_block_delta" => {
                let delta = data.get("delta").unwrap_or(&Value::Null);
                let block = blocks.entry(index).or_default();
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        if block.kind.is_empty() {
                            block.kind = "text".to_owned();
                        }
                        block.text.push_str(
                            delta
                                .get("text")
                                .and_then(Value::as_str)
                                .unwrap_or_default(),
                        );
                    }
                    Some("input_json_delta") => block.partial_json.push_str(
                        delta
                            .get("partial_json")
                            .and_then(Value::as_str)
                            .unwrap_or_default(),
                    ),
                    _ => {}
                }
            }
            "message_delta" => {
                let delta = data.get("delta").unwrap_or(&Value::Null);
                if let Some(r) = str_field(delta, "stop_reason") {
                    view.finish_reason = Some(r);
                }
                if let Some(u) = data.get("usage") {
                    read_usage(u, &mut view.usage);
                }
            }
            "message_stop" => stopped = i < events.len(),
            "error" => problems.push(format!(
                "stream error: {}",
                error_message(data.get("error").unwrap_or(&Value::Null))
            )),
            _ => {}
        }
    }
    if bad > 0 {
        problems.push(format!("{bad} stream event(s) were not JSON"));
    }
    let mut answer: Option<String> = None;
    for block in blocks.into_values() {
        if block.kind == "text" {
            answer.get_or_insert_with(String::new).push_str(&block.text);
        } else if TOOL_USE.contains(&block.kind.as_str()) {
            let arguments = if block.partial_json.is_empty() {
                block
                    .initial_input
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "{}".to_owned())
            } else {
                block.partial_json
            };
            view.tool_calls.push(ToolCall {
                id: block.id,
                name: block.name,
                arguments,
            });
        }
    }
    view.answer = answer;
    stopped
}
