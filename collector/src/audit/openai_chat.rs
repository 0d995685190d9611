//! OpenAI chat completions (`/v1/chat/completions`), streamed and not.
//!
//! Streams are reassembled per choice: content deltas concatenated, tool-call argument fragments
//! joined by their `index`, the usage chunk read, and `data: [DONE]` taken as the terminal event.

use std::collections::BTreeMap;

use serde_json::Value;

use super::content::{append, attachment, count, error_message, set_choices, str_field, text_of};
use super::{AuditView, ChoiceView, ContextSource, LooksFor, StreamBody, ToolCall, Usage};

pub(super) const LOOKS_FOR: LooksFor = LooksFor {
    question: "a \"messages\" item with role \"user\" and text content",
    answer: "choices[].message.content (choices[].delta.content when streamed)",
};

/// Notes the non-text parts of a message's content (`image_url`, `input_audio`, `file`).
fn note_attachments(content: &Value, field: &str, view: &mut AuditView) {
    let Some(parts) = content.as_array() else {
        return;
    };
    for (j, part) in parts.iter().enumerate() {
        let at = format!("{field}[{j}]");
        match part.get("type").and_then(Value::as_str) {
            Some("image_url") => {
                let url = part.get("image_url").and_then(|u| u.get("url").or(Some(u)));
                let data = url
                    .and_then(Value::as_str)
                    .filter(|u| u.starts_with("data:"));
                view.attachments.push(attachment("image", at, None, data));
            }
            Some("input_audio") => {
                let audio = part.get("input_audio").unwrap_or(&Value::Null);
                let mime = str_field(audio, "format").map(|f| format!("audio/{f}"));
                let data = audio.get("data").and_then(Value::as_str);
                view.attachments.push(attachment("audio", at, mime, data));
            }
            Some("file") => {
                let file = part.get("file").unwrap_or(&Value::Null);
                let data = file.get("file_data").and_then(Value::as_str);
                view.attachments.push(attachment("file", at, None, data));
            }
            _ => {}
        }
    }
}

/// Fills model, question and context from a chat completions request.
pub fn read_request(req: &Value, view: &mut AuditView) {
    view.model = str_field(req, "model");
    let Some(messages) = req.get("messages").and_then(Value::as_array) else {
        return;
    };
    for (i, msg) in messages.iter().enumerate() {
        let role = msg.get("role").and_then(Value::as_str).unwrap_or_default();
        let content = msg.get("content").unwrap_or(&Value::Null);
        let field = format!("messages[{i}].content");
        match (role, text_of(content)) {
            ("system" | "developer", Some(text)) => {
                view.push_context(ContextSource::System, text, None, field)
            }
            ("tool" | "function", Some(text)) => {
                let name = str_field(msg, "name").or_else(|| str_field(msg, "tool_call_id"));
                view.push_context(ContextSource::Tool, text, name, field)
            }
            ("user", text) => {
                note_attachments(content, &field, view);
                if let Some(text) = text {
                    view.set_question(text, field);
                }
            }
            _ => {}
        }
    }
}

pub(super) fn usage(v: &Value) -> Option<Usage> {
    let u = v.get("usage").filter(|u| u.is_object())?;
    Some(Usage {
        input_tokens: count(u, "prompt_tokens").or_else(|| count(u, "input_tokens")),
        output_tokens: count(u, "completion_tokens").or_else(|| count(u, "output_tokens")),
    })
}

/// Reads a non-streamed `chat.completion`; true when it held choices.
pub fn read_response(resp: &Value, view: &mut AuditView) -> bool {
    if let Some(m) = str_field(resp, "model") {
        view.model = Some(m);
    }
    if let Some(u) = usage(resp) {
        view.usage = u;
    }
    let Some(choices) = resp.get("choices").and_then(Value::as_array) else {
        return false;
    };
    view.fields.answer = Some("choices[0].message.content".to_owned());
    let views = choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let msg = c.get("message").unwrap_or(&Value::Null);
            let answer = msg
                .get("content")
                .and_then(text_of)
                .or_else(|| str_field(msg, "refusal"));
            let tool_calls = msg
                .get("tool_calls")
                .and_then(Value::as_array)
                .map(|calls| {
                    calls
                        .iter()
                        .map(|tc| {
                            let f = tc.get("function").unwrap_or(&Value::Null);
                            ToolCall {
                                id: str_field(tc, "id"),
                                name: str_field(f, "name").unwrap_or_default(),
                                arguments: str_field(f, "arguments").unwrap_or_default(),
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            ChoiceView {
                index: count(c, "index").unwrap_or(i as u64),
                answer,
                tool_calls,
                finish_reason: str_field(c, "finish_reason"),
            }
        })
        .collect();
    set_choices(view, views);
    true
}

#[derive(Default)]
struct ToolAcc {
    id: Option<String>,
    name: String,
    arguments: String,
}

#[derive(Default)]
struct ChoiceAcc {
    text: Option<String>,
    refusal: Option<String>,
    tools: BTreeMap<u64, ToolAcc>,
    finish_reason: Option<String>,
}

fn apply_chunk(chunk: &Value, choices: &mut BTreeMap<u64, ChoiceAcc>, view: &mut AuditView) {
    if let Some(m) = str_field(chunk, "model") {
        view.model = Some(m);
    }
    if let Some(u) = usage(chunk) {
        view.usage = u;
    }
    let Some(list) = chunk.get("choices").and_then(Value::as_array) else {
        return;
    };
    for (pos, c) in list.iter().enumerate() {
        let acc = choices
            .entry(count(c, "index").unwrap_or(pos as u64))
            .or_default();
        if let Some(fr) = str_field(c, "finish_reason") {
            acc.finish_reason = Some(fr);
        }
        let Some(delta) = c.get("delta") else {
            continue;
        };
        if let Some(t) = delta.get("content").and_then(Value::as_str) {
            append(&mut acc.text, t);
        }
        if let Some(t) = delta.get("refusal").and_then(Value::as_str) {
            append(&mut acc.refusal, t);
        }
        let calls = delta.get("tool_calls").and_then(Value::as_array);
        for (tpos, tc) in calls.into_iter().flatten().enumerate() {
            let tool = acc
                .tools
                .entry(count(tc, "index").unwrap_or(tpos as u64))
                .or_default();
            if let Some(id) = str_field(tc, "id").filter(|s| !s.is_empty()) {
                tool.id = Some(id);
            }
            let f = tc.get("function").unwrap_or(&Value::Null);
            if let Some(name) = f.get("name").and_then(Value::as_str) {
                // Most servers send the name once; some repeat it whole in every fragment.
                if tool.name.is_empty() {
                    tool.name = name.to_owned();
                } else if tool.name != name {
                    tool.name.push_str(name);
                }
            }
            if let Some(a) = f.get("arguments").and_then(Value::as_str) {
                tool.arguments.push_str(a);
            }
        }
    }
}

/// Reassembles a streamed completion; true when `data: [DONE]` arrived.
pub fn read_stream(stream: &StreamBody, view: &mut AuditView, problems: &mut Vec<String>) -> bool {
    let mut choices: BTreeMap<u64, ChoiceAcc> = BTreeMap::new();
    let done = stream
        .all()
        .any(|(f, whole)| whole && f.data.trim() == "[DONE]");
    let mut frames = stream.json_frames(|d| d == "[DONE]");
    for (chunk, _, _) in frames.by_ref() {
        if let Some(err) = chunk.get("error").filter(|e| !e.is_null()) {
            problems.push(format!("stream error: {}", error_message(err)));
        }
        apply_chunk(&chunk, &mut choices, view);
    }
    frames.report(problems);
    view.fields.answer = Some("choices[0].delta.content".to_owned());
    let views = choices
        .into_iter()
        .map(|(index, acc)| ChoiceView {
            index,
            answer: acc.text.or(acc.refusal),
            tool_calls: acc
                .tools
                .into_values()
                .map(|t| ToolCall {
                    id: t.id,
                    name: t.name,
                    arguments: t.arguments,
                })
                .collect(),
            finish_reason: acc.finish_reason,
        })
        .collect();
    set_choices(view, views);
    done
}
