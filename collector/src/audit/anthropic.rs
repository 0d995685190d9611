//! Anthropic messages (`/v1/messages`), streamed and not.
//!
//! Streams are reassembled from `message_start`, `content_block_start`, `content_block_delta`
//! (`text_delta`, `input_json_delta`), `message_delta` and the terminal `message_stop`.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::content::{attachment, count, error_message, str_field, text_of};
use super::{AuditView, ContextSource, LooksFor, StreamBody, ToolCall, Usage};

pub(super) const LOOKS_FOR: LooksFor = LooksFor {
    question: "a \"messages\" item with role \"user\" and text content",
    answer: "content[] blocks of type text (content_block_delta text_delta when streamed)",
};

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
        view.push_context(ContextSource::System, system, None, "system".to_owned());
    }
    let Some(messages) = req.get("messages").and_then(Value::as_array) else {
        return;
    };
    let mut tool_names: HashMap<String, String> = HashMap::new();
    for (i, msg) in messages.iter().enumerate() {
        let role = msg.get("role").and_then(Value::as_str).unwrap_or_default();
        let content = msg.get("content").unwrap_or(&Value::Null);
        let field = format!("messages[{i}].content");
        let blocks: &[Value] = match content {
            Value::String(s) => {
                if role == "user" {
                    view.set_question(s.clone(), field);
                }
                continue;
            }
            Value::Array(blocks) => blocks,
            _ => continue,
        };
        let mut texts = Vec::new();
        for (j, block) in blocks.iter().enumerate() {
            let at = format!("{field}[{j}]");
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
                        view.push_context(ContextSource::Tool, text, name, at);
                    }
                }
                "document" | "search_result" => {
                    if let Some(text) = document_text(block) {
                        let name = str_field(block, "title");
                        view.push_context(ContextSource::Document, text, name, at);
                    } else if role == "user" {
                        note_source(block, "file", at, view);
                    }
                }
                "image" if role == "user" => note_source(block, "image", at, view),
                _ => {}
            }
        }
        if role == "user" && !texts.is_empty() {
            view.set_question(texts.join("\n"), format!("{field}[].text"));
        }
    }
}

/// Notes an image or a non-text document block of a user turn.
fn note_source(block: &Value, kind: &'static str, field: String, view: &mut AuditView) {
    let source = block.get("source").unwrap_or(&Value::Null);
    let data = match source.get("type").and_then(Value::as_str) {
        Some("base64") => source.get("data").and_then(Value::as_str),
        _ => None,
    };
    let mime = str_field(source, "media_type");
    view.attachments.push(attachment(kind, field, mime, data));
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
    view.fields.answer = Some("content[].text".to_owned());
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
pub fn read_stream(stream: &StreamBody, view: &mut AuditView, problems: &mut Vec<String>) -> bool {
    let mut blocks: BTreeMap<u64, Block> = BTreeMap::new();
    let mut stopped = false;
    view.fields.answer = Some("content_block_delta.delta.text".to_owned());
    let mut frames = stream.json_frames(|_| false);
    for (data, whole, event) in frames.by_ref() {
        let kind = data.get("type").and_then(Value::as_str).unwrap_or(event);
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
            "message_stop" => stopped = whole,
            "error" => problems.push(format!(
                "stream error: {}",
                error_message(data.get("error").unwrap_or(&Value::Null))
            )),
            _ => {}
        }
    }
    frames.report(problems);
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
