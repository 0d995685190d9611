//! OpenAI Responses API (`/v1/responses`), streamed and not.
//!
//! Streams are reassembled from `response.output_text.delta` and
//! `response.function_call_arguments.delta` by output index; `response.completed` (or the
//! terminal `response.incomplete` / `response.failed`) ends the stream and carries model and usage.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::content::{count, error_message, str_field, text_of};
use super::{AuditView, ContextSource, LooksFor, StreamBody, ToolCall, Usage};

pub(super) const LOOKS_FOR: LooksFor = LooksFor {
    question: "a string \"input\", or an \"input\" message with role \"user\" and text content",
    answer:
        "output[].content[] parts of type output_text (response.output_text.delta when streamed)",
};

/// Events after which the server sends nothing more.
const TERMINAL: &[&str] = &[
    "response.completed",
    "response.incomplete",
    "response.failed",
];

/// Fills model, question and context from a Responses request.
pub fn read_request(req: &Value, view: &mut AuditView) {
    view.model = str_field(req, "model");
    if let Some(text) = req.get("instructions").and_then(text_of) {
        view.push_context(ContextSource::System, text, None, "instructions".to_owned());
    }
    let items = match req.get("input") {
        Some(Value::String(s)) => {
            view.set_question(s.clone(), "input".to_owned());
            return;
        }
        Some(Value::Array(items)) => items,
        _ => return,
    };
    let mut call_names: HashMap<String, String> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        let kind = item
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("message");
        match kind {
            "message" => {
                let role = item.get("role").and_then(Value::as_str).unwrap_or_default();
                let Some(text) = item.get("content").and_then(text_of) else {
                    continue;
                };
                let field = format!("input[{i}].content");
                match role {
                    "system" | "developer" => {
                        view.push_context(ContextSource::System, text, None, field)
                    }
                    "user" => view.set_question(text, field),
                    _ => {}
                }
            }
            "function_call" => {
                if let (Some(id), Some(name)) =
                    (str_field(item, "call_id"), str_field(item, "name"))
                {
                    call_names.insert(id, name);
                }
            }
            "function_call_output" => {
                let id = str_field(item, "call_id");
                let name = id
                    .as_ref()
                    .and_then(|id| call_names.get(id).cloned())
                    .or(id);
                if let Some(text) = item.get("output").and_then(text_of) {
                    let field = format!("input[{i}].output");
                    view.push_context(ContextSource::Tool, text, name, field);
                }
            }
            _ => {}
        }
    }
}

/// Model and usage from a `response` object.
fn read_envelope(resp: &Value, view: &mut AuditView) {
    if let Some(m) = str_field(resp, "model") {
        view.model = Some(m);
    }
    if let Some(u) = resp.get("usage").filter(|u| u.is_object()) {
        view.usage = Usage {
            input_tokens: count(u, "input_tokens"),
            output_tokens: count(u, "output_tokens"),
        };
    }
}

/// Model, usage and finish reason from a finished `response` object.
fn read_finished(resp: &Value, view: &mut AuditView) {
    read_envelope(resp, view);
    let status = str_field(resp, "status");
    let incomplete = resp
        .get("incomplete_details")
        .and_then(|d| str_field(d, "reason"));
    view.finish_reason = match status.as_deref() {
        Some("incomplete") => incomplete.or(status),
        _ => status,
    };
}

/// Answer text and tool calls from a response's `output` items.
fn read_output(resp: &Value) -> (Option<String>, Vec<ToolCall>) {
    let mut answer: Option<String> = None;
    let mut calls = Vec::new();
    let items = resp.get("output").and_then(Value::as_array);
    for item in items.into_iter().flatten() {
        match item.get("type").and_then(Value::as_str) {
            Some("message") => {
                let parts = item.get("content").and_then(Value::as_array);
                for part in parts.into_iter().flatten() {
                    let text = match part.get("type").and_then(Value::as_str) {
                        Some("output_text") => part.get("text").and_then(Value::as_str),
                        Some("refusal") => part.get("refusal").and_then(Value::as_str),
                        _ => None,
                    };
                    if let Some(t) = text {
                        answer.get_or_insert_with(String::new).push_str(t);
                    }
                }
            }
            Some("function_call") => calls.push(ToolCall {
                id: str_field(item, "call_id"),
                name: str_field(item, "name").unwrap_or_default(),
                arguments: str_field(item, "arguments").unwrap_or_default(),
            }),
            _ => {}
        }
    }
    (answer, calls)
}

/// Reads a non-streamed `response`; true when it held an `output` array.
pub fn read_response(resp: &Value, view: &mut AuditView) -> bool {
    read_finished(resp, view);
    view.fields.answer = Some("output[].content[].text".to_owned());
    let (answer, calls) = read_output(resp);
    view.answer = answer;
    view.tool_calls = calls;
    resp.get("output").is_some_and(Value::is_array)
}

#[derive(Default)]
struct CallAcc {
    id: Option<String>,
    name: String,
    arguments: String,
    done: bool,
}

/// Reassembles a streamed response; true when a terminal event arrived.
pub fn read_stream(stream: &StreamBody, view: &mut AuditView, problems: &mut Vec<String>) -> bool {
    let mut texts: BTreeMap<(u64, u64), String> = BTreeMap::new();
    let mut calls: BTreeMap<u64, CallAcc> = BTreeMap::new();
    let mut terminal: Option<Value> = None;
    view.fields.answer = Some("response.output_text.delta".to_owned());
    let mut frames = stream.json_frames(|_| false);
    for (data, whole, event) in frames.by_ref() {
        let kind = data.get("type").and_then(Value::as_str).unwrap_or(event);
        let out = count(&data, "output_index").unwrap_or_default();
        match kind {
            "response.created" | "response.in_progress" => {
                if let Some(r) = data.get("response") {
                    read_envelope(r, view);
                }
            }
            "response.output_text.delta" => {
                let part = count(&data, "content_index").unwrap_or_default();
                texts.entry((out, part)).or_default().push_str(
                    data.get("delta")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                );
            }
            "response.output_item.added" | "response.output_item.done" => {
                let item = data.get("item").unwrap_or(&Value::Null);
                if item.get("type").and_then(Value::as_str) == Some("function_call") {
                    let call = calls.entry(out).or_default();
                    call.id = str_field(item, "call_id").or(call.id.take());
                    if let Some(n) = str_field(item, "name") {
                        call.name = n;
                    }
                    let args = str_field(item, "arguments").unwrap_or_default();
                    if kind == "response.output_item.done" && !args.is_empty() {
                        call.arguments = args;
                        call.done = true;
                    } else if call.arguments.is_empty() {
                        call.arguments = args;
                    }
                }
            }
            "response.function_call_arguments.delta" => {
                let call = calls.entry(out).or_default();
                if !call.done {
                    call.arguments.push_str(
                        data.get("delta")
                            .and_then(Value::as_str)
                            .unwrap_or_default(),
                    );
                }
            }
            "response.function_call_arguments.done" => {
                if let Some(a) = str_field(&data, "arguments") {
                    let call = calls.entry(out).or_default();
                    call.arguments = a;
                    call.done = true;
                }
            }
            k if TERMINAL.contains(&k) && whole => {
                terminal = Some(data.get("response").cloned().unwrap_or(Value::Null));
            }
            "error" => problems.push(format!("stream error: {}", error_message(&data))),
            _ => {}
        }
    }
    frames.report(problems);
    view.answer = (!texts.is_empty()).then(|| texts.into_values().collect());
    view.tool_calls = calls
        .into_values()
        .map(|c| ToolCall {
            id: c.id,
            name: c.name,
            arguments: c.arguments,
        })
        .collect();
    let Some(resp) = terminal else {
        return false;
    };
    read_finished(&resp, view);
    if let Some(e) = resp.get("error").filter(|e| !e.is_null()) {
        problems.push(format!("response failed: {}", error_message(e)));
    }
    let (answer, calls) = read_output(&resp);
    if view.answer.is_none() {
        view.answer = answer;
    }
    if view.tool_calls.is_empty() {
        view.tool_calls = calls;
    }
    true
}
