//! Ollama's native API: `/api/generate` (`prompt` → `response`) and `/api/chat` (`messages` →
//! `message`), streamed as NDJSON or not.
//!
//! A stream is one JSON object a line; the pieces of `response` (or `message.content`) are joined,
//! `message.tool_calls` are collected (Ollama sends each call whole), and the last line —
//! `done: true` with `done_reason`, `prompt_eval_count` and `eval_count` — is the terminal event.
//! A stream cut before that line is incomplete. (Ollama's OpenAI-compatible `/v1/...` endpoints
//! speak OpenAI's shapes and are read as OpenAI.)

use serde_json::Value;

use super::content::{append, attachment, count, error_message, str_field, text_of};
use super::{AuditView, ContextSource, LooksFor, StreamBody, ToolCall};

pub(super) const GENERATE_LOOKS_FOR: LooksFor = LooksFor {
    question: "\"prompt\" as a string",
    answer: "\"response\" (of every NDJSON line when streamed)",
};

pub(super) const CHAT_LOOKS_FOR: LooksFor = LooksFor {
    question: "a \"messages\" item with role \"user\" and text \"content\"",
    answer: "\"message.content\" (of every NDJSON line when streamed)",
};

fn note_images(images: Option<&Value>, field: &str, view: &mut AuditView) {
    let list = images.and_then(Value::as_array);
    for (j, image) in list.into_iter().flatten().enumerate() {
        let at = format!("{field}[{j}]");
        view.attachments
            .push(attachment("image", at, None, image.as_str()));
    }
}

/// Fills model, question, context and images from an `/api/generate` request. Its `context`
/// (token ids of an earlier exchange) has no text here; that is said in `problems`.
pub fn read_generate_request(req: &Value, view: &mut AuditView, problems: &mut Vec<String>) {
    view.model = str_field(req, "model");
    if let Some(system) = str_field(req, "system").filter(|s| !s.is_empty()) {
        view.push_context(ContextSource::System, system, None, "system".to_owned());
    }
    if let Some(prompt) = str_field(req, "prompt") {
        view.set_question(prompt, "prompt".to_owned());
    }
    note_images(req.get("images"), "images", view);
    if let Some(tokens) = req.get("context").and_then(Value::as_array) {
        if tokens.iter().all(Value::is_number) && !tokens.is_empty() {
            problems.push(format!(
                "the request carries \"context\": {} token ids of an earlier /api/generate \
                 exchange; their text is not in this record",
                tokens.len()
            ));
        }
    }
}

/// Fills model, question, context and images from an `/api/chat` request.
pub fn read_chat_request(req: &Value, view: &mut AuditView) {
    view.model = str_field(req, "model");
    let Some(messages) = req.get("messages").and_then(Value::as_array) else {
        return;
    };
    for (i, msg) in messages.iter().enumerate() {
        let role = msg.get("role").and_then(Value::as_str).unwrap_or_default();
        let field = format!("messages[{i}].content");
        let text = msg.get("content").and_then(text_of);
        match (role, text) {
            ("system", Some(text)) => view.push_context(ContextSource::System, text, None, field),
            ("tool", Some(text)) => {
                let name = str_field(msg, "tool_name").or_else(|| str_field(msg, "name"));
                view.push_context(ContextSource::Tool, text, name, field)
            }
            ("user", text) => {
                note_images(msg.get("images"), &format!("messages[{i}].images"), view);
                if let Some(text) = text.filter(|t| !t.is_empty()) {
                    view.set_question(text, field);
                }
            }
            _ => {}
        }
    }
}

/// The tool calls of a chat `message`; Ollama gives `arguments` as an object.
fn tool_calls(msg: &Value) -> Vec<ToolCall> {
    let calls = msg.get("tool_calls").and_then(Value::as_array);
    calls
        .into_iter()
        .flatten()
        .map(|tc| {
            let f = tc.get("function").unwrap_or(&Value::Null);
            let arguments = match f.get("arguments") {
                Some(Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
                None => "{}".to_owned(),
            };
            ToolCall {
                id: str_field(tc, "id"),
                name: str_field(f, "name").unwrap_or_default(),
                arguments,
            }
        })
        .collect()
}

/// Model, finish reason and counts: every line has the model, the `done` line the rest.
fn read_envelope(v: &Value, view: &mut AuditView) {
    if let Some(m) = str_field(v, "model") {
        view.model = Some(m);
    }
    if let Some(r) = str_field(v, "done_reason") {
        view.finish_reason = Some(r);
    }
    if let Some(n) = count(v, "prompt_eval_count") {
        view.usage.input_tokens = Some(n);
    }
    if let Some(n) = count(v, "eval_count") {
        view.usage.output_tokens = Some(n);
    }
}

fn is_done(v: &Value) -> bool {
    v.get("done").and_then(Value::as_bool) == Some(true)
}

/// Reads a non-streamed answer (`stream: false`); true when it is the finished (`done`) one.
pub fn read_response(resp: &Value, view: &mut AuditView) -> bool {
    read_envelope(resp, view);
    if let Some(msg) = resp.get("message").filter(|m| m.is_object()) {
        view.fields.answer = Some("message.content".to_owned());
        view.tool_calls = tool_calls(msg);
        view.answer =
            str_field(msg, "content").filter(|c| !c.is_empty() || view.tool_calls.is_empty());
    } else if let Some(text) = str_field(resp, "response") {
        view.fields.answer = Some("response".to_owned());
        view.answer = Some(text);
    }
    is_done(resp)
}

/// Reassembles an NDJSON stream; true when its `done: true` line arrived.
pub fn read_stream(stream: &StreamBody, view: &mut AuditView, problems: &mut Vec<String>) -> bool {
    let mut text: Option<String> = None;
    let mut saw_text_field = false;
    let mut done = false;
    let mut frames = stream.json_frames(|_| false);
    for (line, _, _) in frames.by_ref() {
        if let Some(err) = line.get("error").filter(|e| !e.is_null()) {
            problems.push(format!("stream error: {}", error_message(err)));
        }
        read_envelope(&line, view);
        let piece = if let Some(msg) = line.get("message").filter(|m| m.is_object()) {
            view.fields.answer = Some("message.content".to_owned());
            view.tool_calls.extend(tool_calls(msg));
            msg.get("content").and_then(Value::as_str)
        } else {
            let piece = line.get("response").and_then(Value::as_str);
            if piece.is_some() {
                view.fields.answer = Some("response".to_owned());
            }
            piece
        };
        if let Some(p) = piece {
            saw_text_field = true;
            if !p.is_empty() {
                append(&mut text, p);
            }
        }
        done |= is_done(&line);
    }
    frames.report(problems);
    if text.is_none() && saw_text_field && view.tool_calls.is_empty() {
        text = Some(String::new());
    }
    view.answer = text;
    done
}

#[cfg(test)]
mod tests {
    use super::super::tests::{exchange, utf8};
    use super::super::*;
    use serde_json::json;

    const NDJSON: &str = "application/x-ndjson";

    fn generate_request(stream: bool) -> String {
        json!({"model": "llama3.2", "prompt": "Why is the sky blue?", "system": "Answer from the passage.",
               "images": ["iVBORw0KGgo="], "context": [1, 2, 3], "stream": stream})
        .to_string()
    }

    fn line(v: serde_json::Value) -> String {
        format!("{v}\n")
    }

    fn generate_stream() -> String {
        let piece = |t: &str| {
            line(
                json!({"model": "llama3.2", "created_at": "2026-11-25T16:10:40.1Z", "response": t, "done": false}),
            )
        };
        [
            piece("Rayleigh"),
            piece(" scattering"),
            piece("."),
            line(json!({"model": "llama3.2", "created_at": "2026-11-25T16:10:41.1Z", "response": "", "done": true,
                        "done_reason": "stop", "context": [1, 2, 3, 4], "total_duration": 1000, "load_duration": 10,
                        "prompt_eval_count": 26, "prompt_eval_duration": 100, "eval_count": 3, "eval_duration": 300})),
        ]
        .concat()
    }

    #[test]
    fn a_generate_stream_is_joined_and_done_ends_it() {
        let v = derive(&exchange(
            "/api/generate",
            &generate_request(true),
            NDJSON,
            utf8(&generate_stream(), false),
        ));
        assert_eq!(v.protocol, Protocol::OllamaGenerate);
        assert_eq!(v.stream_format, Some(StreamFormat::Ndjson));
        assert_eq!(v.question.as_deref(), Some("Why is the sky blue?"));
        assert_eq!(v.answer.as_deref(), Some("Rayleigh scattering."));
        assert_eq!(
            (v.fields.question.as_deref(), v.fields.answer.as_deref()),
            (Some("prompt"), Some("response"))
        );
        assert_eq!(v.context[0].text, "Answer from the passage.");
        assert_eq!(v.context[0].field, "system");
        assert_eq!(v.attachments.len(), 1);
        assert_eq!(v.attachments[0].field, "images[0]");
        assert_eq!(v.attachments[0].size_bytes, Some(8));
        assert_eq!(v.finish_reason.as_deref(), Some("stop"));
        assert_eq!(
            (v.usage.input_tokens, v.usage.output_tokens),
            (Some(26), Some(3))
        );
        assert_eq!(v.stream_complete, Some(true));
        assert!(v.answer_complete);
        assert_eq!(
            v.problems,
            ["the request carries \"context\": 3 token ids of an earlier /api/generate exchange; their text is not in this record"]
        );
    }

    #[test]
    fn a_generate_stream_cut_before_done_is_incomplete() {
        let full = generate_stream();
        let cut = &full[..full.find("\"done\":true").unwrap()];
        let v = derive(&exchange(
            "/api/generate",
            &generate_request(true),
            NDJSON,
            utf8(cut, false),
        ));
        assert_eq!(v.stream_complete, Some(false));
        assert!(!v.answer_complete);
        assert_eq!(v.answer.as_deref(), Some("Rayleigh scattering."));
        assert_eq!(v.finish_reason, None);
        assert!(
            v.problems
                .iter()
                .any(|p| p == "last NDJSON line is cut off mid-way"),
            "{:?}",
            v.problems
        );
        assert!(v
            .problems
            .iter()
            .any(|p| p.contains("without its terminal event")));
    }

    #[test]
    fn a_plain_generate_answer() {
        let body = json!({"model": "llama3.2", "created_at": "2026-11-25T16:10:41.1Z", "response": "Rayleigh scattering.",
                          "done": true, "done_reason": "stop", "context": [1], "prompt_eval_count": 26, "eval_count": 4});
        let v = derive(&exchange(
            "/api/generate",
            &generate_request(false),
            "application/json; charset=utf-8",
            utf8(&body.to_string(), false),
        ));
        assert_eq!(v.protocol, Protocol::OllamaGenerate);
        assert!(!v.streamed);
        assert_eq!(v.answer.as_deref(), Some("Rayleigh scattering."));
        assert!(v.answer_complete);
        assert_eq!(v.usage.output_tokens, Some(4));
    }

    fn chat_request() -> String {
        json!({"model": "llama3.2", "stream": true, "tools": [{"type": "function", "function": {"name": "get_weather"}}],
               "messages": [
                   {"role": "system", "content": "You answer weather questions."},
                   {"role": "user", "content": "Weather in Paris?", "images": ["aW1n"]},
                   {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                   {"role": "tool", "content": "18C and sunny", "tool_name": "get_weather"},
                   {"role": "user", "content": "And tomorrow?"}
               ]})
        .to_string()
    }

    fn chat_line(content: &str, extra: serde_json::Value) -> String {
        let mut v = json!({"model": "llama3.2", "created_at": "2026-11-25T16:10:40.1Z",
                           "message": {"role": "assistant", "content": content}, "done": false});
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            for (k, val) in e {
                o.insert(k.clone(), val.clone());
            }
        }
        line(v)
    }

    #[test]
    fn a_chat_stream_gives_text_tool_calls_context_and_usage() {
        let body = [
            chat_line("Let me", json!({})),
            chat_line(" check.", json!({})),
            line(json!({"model": "llama3.2", "created_at": "2026-11-25T16:10:40.2Z", "done": false,
                        "message": {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "function": {"index": 0, "name": "get_forecast", "arguments": {"city": "Paris", "days": 1}}}]}})),
            chat_line("", json!({"done": true, "done_reason": "stop", "prompt_eval_count": 40, "eval_count": 9})),
        ]
        .concat()
        .replace('\n', "\r\n");
        let v = derive(&exchange(
            "/api/chat",
            &chat_request(),
            NDJSON,
            utf8(&body, false),
        ));
        assert_eq!(v.protocol, Protocol::OllamaChat);
        assert_eq!(v.question.as_deref(), Some("And tomorrow?"));
        assert_eq!(v.fields.question.as_deref(), Some("messages[4].content"));
        let ctx: Vec<_> = v
            .context
            .iter()
            .map(|c| (c.source, c.text.as_str(), c.name.as_deref()))
            .collect();
        assert_eq!(
            ctx,
            [
                (ContextSource::System, "You answer weather questions.", None),
                (ContextSource::Tool, "18C and sunny", Some("get_weather"))
            ]
        );
        assert_eq!(v.attachments[0].field, "messages[1].images[0]");
        assert_eq!(v.answer.as_deref(), Some("Let me check."));
        assert_eq!(v.fields.answer.as_deref(), Some("message.content"));
        assert_eq!(
            v.tool_calls,
            [ToolCall {
                id: Some("call_1".into()),
                name: "get_forecast".into(),
                arguments: "{\"city\":\"Paris\",\"days\":1}".into()
            }]
        );
        assert_eq!(
            (v.usage.input_tokens, v.usage.output_tokens),
            (Some(40), Some(9))
        );
        assert_eq!(v.stream_complete, Some(true));
        assert!(v.problems.is_empty(), "{:?}", v.problems);
    }

    #[test]
    fn a_plain_chat_answer_that_only_calls_a_tool_says_so() {
        let body = json!({"model": "llama3.2", "created_at": "2026-11-25T16:10:40.1Z", "done": true, "done_reason": "stop",
            "message": {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}});
        let v = derive(&exchange(
            "/api/chat",
            &chat_request(),
            "application/json",
            utf8(&body.to_string(), false),
        ));
        assert_eq!(v.answer, None);
        assert_eq!(v.tool_calls[0].arguments, "{\"city\":\"Paris\"}");
        assert!(v.answer_complete);
        assert!(
            v.problems.iter().any(|p| p
                .starts_with("no answer text: looked for \"message.content\"")
                && p.contains("1 tool call")),
            "{:?}",
            v.problems
        );
    }

    #[test]
    fn a_stream_error_line_is_a_problem() {
        let body = line(json!({"error": "model runner has unexpectedly stopped"}));
        let v = derive(&exchange(
            "/api/chat",
            &chat_request(),
            NDJSON,
            utf8(&body, false),
        ));
        assert_eq!(v.protocol, Protocol::OllamaChat);
        assert_eq!(v.stream_complete, Some(false));
        assert!(v
            .problems
            .iter()
            .any(|p| p.contains("model runner has unexpectedly stopped")));
        assert!(
            v.problems.iter().any(|p| p.starts_with("no answer:")),
            "{:?}",
            v.problems
        );
    }
}
