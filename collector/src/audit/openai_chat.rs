//! OpenAI chat completions (`/v1/chat/completions`), streamed and not.
//!
//! Streams are reassembled per choice: content deltas concatenated, tool-call argument fragments
//! joined by their `index`, the usage chunk read, and `data: [DONE]` taken as the terminal event.

use std::collections::BTreeMap;

use serde_json::Value;

use super::content::{count, error_message, str_field, text_of};
use super::{AuditView, ChoiceView, ContextItem, ContextSource, ToolCall, Usage};
use crate::sse::SseEvent;

/// Fills model, question and context from a chat completions request.
pub fn read_request(req: &Value, view: &mut AuditView) {
    view.model = str_field(req, "model");
    let Some(messages) = req.get("messages").and_then(Value::as_array) else {
        return;
    };
    for msg in messages {
        let role = msg.get("role").and_then(Value::as_str).unwrap_or_default();
        let text = msg.get("content").and_then(text_of);
        match (role, text) {
            ("system" | "developer", Some(text)) => view.context.push(ContextItem {
                source: ContextSource::System,
                text,
                name: None,
            }),
            ("tool" | "function", Some(text)) => view.context.push(ContextItem {
                source: ContextSource::Tool,
                text,
                name: str_field(msg, "name").or_else(|| str_field(msg, "tool_call_id")),
            }),
            ("user", Some(text)) => view.question = Some(text),
            _ => {}
        }
    }
}

fn usage(v: &Value) -> Option<Usage> {
    let u = v.get("usage").filter(|u| u.is_object())?;
    Some(Usage {
        input_tokens: count(u, "prompt_tokens").or_else(|| count(u, "input_tokens")),
        output_tokens: count(u, "completion_tokens").or_else(|| count(u, "output_tokens")),
    })
}

/// Puts the choices into the view: the first as the answer, all of them when there are several.
fn set_choices(view: &mut AuditView, mut choices: Vec<ChoiceView>) {
    choices.sort_by_key(|c| c.index);
    if let Some(first) = choices.first() {
        view.answer = first.answer.clone();
        view.tool_calls = first.tool_calls.clone();
        view.finish_reason = first.finish_reason.clone();
    }
    if choices.len() > 1 {
        view.choices = choices;
    }
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

fn append(slot: &mut Option<String>, piece: &str) {
    slot.get_or_insert_with(String::new).push_str(piece);
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
pub fn read_stream(
    events: &[SseEvent],
    tail: Option<&SseEvent>,
    view: &mut AuditView,
    problems: &mut Vec<String>,
) -> bool {
    let mut choices: BTreeMap<u64, ChoiceAcc> = BTreeMap::new();
    let mut done = false;
    let mut bad = 0usize;
    for (i, ev) in events.iter().chain(tail).enumerate() {
        let data = ev.data.trim();
        if data == "[DONE]" {
            done = i < events.len();
            continue;
        }
        match serde_json::from_str::<Value>(data) {
            Ok(chunk) => {
                if let Some(err) = chunk.get("error").filter(|e| !e.is_null()) {
                    problems.push(format!("stream error: {}", error_message(err)));
                }
                apply_chunk(&chunk, &mut choices, view);
            }
            Err(_) if i >= events.len() => {
                problems.push("last event is cut off mid-way".to_owned())
            }
            Err(_) => bad += 1,
        }
    }
    if bad > 0 {
        problems.push(format!("{bad} stream event(s) were not JSON"));
    }
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
