//! Google Gemini `models/{model}:generateContent` and `:streamGenerateContent`, streamed (server-sent
//! events with `?alt=sse`, or by default a JSON array written an element at a time) and not.
//!
//! Every element or event is a whole `GenerateContentResponse`; a stream is reassembled per
//! candidate index from the text parts (thought parts left out), `functionCall` parts become tool
//! calls, `finishReason` and `usageMetadata` are read. An array stream is complete when its
//! closing `]` arrived; an SSE stream when every candidate has its `finishReason` (Google sends no
//! terminal event). Field names are accepted in both the JSON (`systemInstruction`) and the proto
//! (`system_instruction`) spelling.

use std::collections::BTreeMap;

use serde_json::Value;

use super::content::{append, attachment, error_message, set_choices, str_field, text_of};
use super::{AuditView, ChoiceView, ContextSource, LooksFor, StreamBody, StreamFormat, ToolCall};

pub(super) const LOOKS_FOR: LooksFor = LooksFor {
    question: "a \"contents\" item with role \"user\" and a text part",
    answer: "candidates[].content.parts[].text",
};

/// `v[camel]`, else `v[snake]`.
fn get<'a>(v: &'a Value, camel: &str, snake: &str) -> Option<&'a Value> {
    v.get(camel).or_else(|| v.get(snake))
}

fn get_str(v: &Value, camel: &str, snake: &str) -> Option<String> {
    get(v, camel, snake)
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// The model a request path names: `.../models/gemini-2.5-flash:generateContent`.
fn model_from_path(path: &str) -> Option<String> {
    let after = path.rsplit_once("/models/")?.1;
    let model = after.split(':').next()?;
    (!model.is_empty()).then(|| model.to_owned())
}

/// The text parts of a `Content` (thoughts left out), joined with `\n`.
fn parts_text(content: &Value) -> Option<String> {
    let parts = content.get("parts").and_then(Value::as_array)?;
    let texts: Vec<&str> = parts
        .iter()
        .filter(|p| p.get("thought").and_then(Value::as_bool) != Some(true))
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .collect();
    (!texts.is_empty()).then(|| texts.join("\n"))
}

fn kind_of(mime: Option<&str>) -> &'static str {
    match mime {
        Some(m) if m.starts_with("image/") => "image",
        Some(m) if m.starts_with("audio/") => "audio",
        _ => "file",
    }
}

/// The text a `functionResponse.response` stands for: its `output` string, as the API advises
/// functions to answer, or the whole object as JSON.
fn function_response_text(response: &Value) -> String {
    match response.get("output").or_else(|| response.get("result")) {
        Some(Value::String(s)) => s.clone(),
        _ => response.to_string(),
    }
}

/// Fills model, question, context and attachments from a `generateContent` request.
pub fn read_request(req: &Value, path: &str, view: &mut AuditView, problems: &mut Vec<String>) {
    view.model = model_from_path(path);
    if let Some(system) = get(req, "systemInstruction", "system_instruction") {
        let text = parts_text(system).or_else(|| text_of(system));
        if let Some(text) = text {
            let field = if system.is_string() {
                "systemInstruction"
            } else {
                "systemInstruction.parts[].text"
            };
            view.push_context(ContextSource::System, text, None, field.to_owned());
        }
    }
    if let Some(name) = get_str(req, "cachedContent", "cached_content") {
        problems.push(format!(
            "the request uses cached content {name}; its text is not in this record"
        ));
    }
    let contents = req.get("contents").and_then(Value::as_array);
    for (i, content) in contents.into_iter().flatten().enumerate() {
        let role = content
            .get("role")
            .and_then(Value::as_str)
            .unwrap_or("user");
        let parts = content.get("parts").and_then(Value::as_array);
        for (j, part) in parts.into_iter().flatten().enumerate() {
            let at = format!("contents[{i}].parts[{j}]");
            if let Some(fr) = get(part, "functionResponse", "function_response") {
                let response = fr.get("response").unwrap_or(&Value::Null);
                let name = str_field(fr, "name");
                let text = function_response_text(response);
                view.push_context(
                    ContextSource::Tool,
                    text,
                    name,
                    format!("{at}.functionResponse.response"),
                );
            }
            if role != "user" {
                continue;
            }
            if let Some(data) = get(part, "inlineData", "inline_data") {
                let mime = get_str(data, "mimeType", "mime_type");
                let kind = kind_of(mime.as_deref());
                let bytes = data.get("data").and_then(Value::as_str);
                let field = format!("{at}.inlineData");
                view.attachments.push(attachment(kind, field, mime, bytes));
            }
            if let Some(file) = get(part, "fileData", "file_data") {
                let mime = get_str(file, "mimeType", "mime_type");
                let kind = kind_of(mime.as_deref());
                let field = format!("{at}.fileData");
                view.attachments.push(attachment(kind, field, mime, None));
            }
        }
        if role == "user" {
            if let Some(text) = parts_text(content) {
                view.set_question(text, format!("contents[{i}].parts[].text"));
            }
        }
    }
}

#[derive(Default)]
struct Candidate {
    text: Option<String>,
    tool_calls: Vec<ToolCall>,
    finish_reason: Option<String>,
}

/// What one `GenerateContentResponse` adds: model, usage, prompt feedback, candidate pieces.
fn apply(
    resp: &Value,
    candidates: &mut BTreeMap<u64, Candidate>,
    view: &mut AuditView,
    problems: &mut Vec<String>,
) -> bool {
    if let Some(m) = get_str(resp, "modelVersion", "model_version") {
        view.model = Some(m);
    }
    if let Some(u) = get(resp, "usageMetadata", "usage_metadata") {
        let n = |camel, snake| get(u, camel, snake).and_then(Value::as_u64);
        if let Some(i) = n("promptTokenCount", "prompt_token_count") {
            view.usage.input_tokens = Some(i);
        }
        if let Some(o) = n("candidatesTokenCount", "candidates_token_count") {
            view.usage.output_tokens = Some(o);
        }
    }
    let mut blocked = false;
    if let Some(fb) = get(resp, "promptFeedback", "prompt_feedback") {
        if let Some(reason) = get_str(fb, "blockReason", "block_reason") {
            let line = format!("the prompt was blocked: {reason}");
            if !problems.contains(&line) {
                problems.push(line);
            }
            view.finish_reason.get_or_insert(reason);
            blocked = true;
        }
    }
    let list = resp.get("candidates").and_then(Value::as_array);
    for (pos, c) in list.into_iter().flatten().enumerate() {
        let index = c.get("index").and_then(Value::as_u64).unwrap_or(pos as u64);
        let acc = candidates.entry(index).or_default();
        if let Some(r) = get_str(c, "finishReason", "finish_reason") {
            acc.finish_reason = Some(r);
        }
        let content = c.get("content").unwrap_or(&Value::Null);
        let parts = content.get("parts").and_then(Value::as_array);
        for part in parts.into_iter().flatten() {
            if part.get("thought").and_then(Value::as_bool) == Some(true) {
                continue;
            }
            if let Some(t) = part.get("text").and_then(Value::as_str) {
                append(&mut acc.text, t);
            }
            if let Some(call) = get(part, "functionCall", "function_call") {
                acc.tool_calls.push(ToolCall {
                    id: str_field(call, "id"),
                    name: call
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    arguments: call
                        .get("args")
                        .map(Value::to_string)
                        .unwrap_or_else(|| "{}".to_owned()),
                });
            }
        }
    }
    blocked
}

fn finish(candidates: BTreeMap<u64, Candidate>, view: &mut AuditView) {
    let blocked_reason = view.finish_reason.take();
    let choices: Vec<ChoiceView> = candidates
        .into_iter()
        .map(|(index, c)| ChoiceView {
            index,
            answer: c.text,
            tool_calls: c.tool_calls,
            finish_reason: c.finish_reason,
        })
        .collect();
    set_choices(view, choices);
    if view.finish_reason.is_none() {
        view.finish_reason = blocked_reason;
    }
    view.fields.answer = Some("candidates[0].content.parts[].text".to_owned());
}

/// Reads a non-streamed `GenerateContentResponse`; true when it held candidates or a verdict on
/// the prompt.
pub fn read_response(resp: &Value, view: &mut AuditView, problems: &mut Vec<String>) -> bool {
    let mut candidates = BTreeMap::new();
    let blocked = apply(resp, &mut candidates, view, problems);
    let any = !candidates.is_empty();
    finish(candidates, view);
    any || blocked
}

/// Reassembles a stream of `GenerateContentResponse`s; true when it is complete (see the module
/// documentation).
pub fn read_stream(stream: &StreamBody, view: &mut AuditView, problems: &mut Vec<String>) -> bool {
    let mut candidates = BTreeMap::new();
    let mut blocked = false;
    let mut frames = stream.json_frames(|_| false);
    for (resp, _, _) in frames.by_ref() {
        // A non-streamed answer's `error` is reported by the caller, with the status.
        if let Some(err) = resp.get("error").filter(|e| !e.is_null()) {
            problems.push(format!("stream error: {}", error_message(err)));
        }
        blocked |= apply(&resp, &mut candidates, view, problems);
    }
    frames.report(problems);
    let finished = blocked
        || (!candidates.is_empty() && candidates.values().all(|c| c.finish_reason.is_some()));
    finish(candidates, view);
    match stream.format {
        StreamFormat::JsonArray => stream.closed,
        StreamFormat::Sse | StreamFormat::Ndjson => finished,
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{exchange, sse, utf8};
    use super::super::*;
    use serde_json::json;

    const PLAIN: &str = "/v1beta/models/gemini-2.5-flash:generateContent";
    const STREAM: &str = "/v1beta/models/gemini-2.5-flash:streamGenerateContent";

    fn request() -> String {
        json!({
            "contents": [
                {"role": "user", "parts": [{"text": "What's the weather in Paris?"}]},
                {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]},
                {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"output": "18C and sunny"}}}]},
                {"role": "user", "parts": [{"text": "And what should I wear?"}, {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}]}
            ],
            "systemInstruction": {"role": "user", "parts": [{"text": "Answer from the tool results."}]},
            "generationConfig": {"temperature": 0.2}
        })
        .to_string()
    }

    fn chunk(text: &str, finish: Option<&str>) -> serde_json::Value {
        let mut c = json!({"content": {"role": "model", "parts": [{"text": text}]}, "index": 0});
        if let Some(f) = finish {
            c["finishReason"] = json!(f);
        }
        let mut v =
            json!({"candidates": [c], "modelVersion": "gemini-2.5-flash", "responseId": "r1"});
        if finish.is_some() {
            v["usageMetadata"] =
                json!({"promptTokenCount": 31, "candidatesTokenCount": 8, "totalTokenCount": 39});
        }
        v
    }

    fn chunks() -> Vec<serde_json::Value> {
        vec![
            chunk("A light", None),
            chunk(" jacket", None),
            chunk(" will do.", Some("STOP")),
        ]
    }

    #[test]
    fn the_request_gives_question_system_tool_result_and_image() {
        let body = chunk("A light jacket.", Some("STOP")).to_string();
        let v = derive(&exchange(
            PLAIN,
            &request(),
            "application/json",
            utf8(&body, false),
        ));
        assert_eq!(v.protocol, Protocol::Gemini);
        assert_eq!(v.question.as_deref(), Some("And what should I wear?"));
        assert_eq!(
            v.fields.question.as_deref(),
            Some("contents[3].parts[].text")
        );
        let ctx: Vec<_> = v
            .context
            .iter()
            .map(|c| (c.source, c.text.as_str(), c.name.as_deref()))
            .collect();
        assert_eq!(
            ctx,
            [
                (ContextSource::System, "Answer from the tool results.", None),
                (ContextSource::Tool, "18C and sunny", Some("get_weather"))
            ]
        );
        assert_eq!(v.attachments[0].mime_type.as_deref(), Some("image/png"));
        assert_eq!(v.attachments[0].field, "contents[3].parts[1].inlineData");
        assert_eq!(v.answer.as_deref(), Some("A light jacket."));
        assert_eq!(v.finish_reason.as_deref(), Some("STOP"));
        assert_eq!(
            (v.usage.input_tokens, v.usage.output_tokens),
            (Some(31), Some(8))
        );
        assert_eq!(v.model.as_deref(), Some("gemini-2.5-flash"));
        assert!(v.answer_complete);
        assert!(v.problems.is_empty(), "{:?}", v.problems);
    }

    #[test]
    fn an_error_in_a_stream_is_a_stream_error_and_a_plain_error_is_said_once() {
        let error = json!({"error": {"code": 503, "message": "the model is overloaded", "status": "UNAVAILABLE"}});
        let events = [("", chunk("A light", None)), ("", error.clone())];
        let v = derive(&exchange(
            STREAM,
            &request(),
            "text/event-stream",
            utf8(&sse(&events), false),
        ));
        // The problems that report the error: exactly one, worded as `start`.
        let said_once_as = |v: &AuditView, start: &str| {
            let said: Vec<&String> = v
                .problems
                .iter()
                .filter(|p| p.contains("overloaded"))
                .collect();
            assert_eq!(said.len(), 1, "{:?}", v.problems);
            assert!(said[0].starts_with(start), "{said:?}");
        };
        said_once_as(&v, "stream error: ");
        assert_eq!(v.answer.as_deref(), Some("A light"));
        let mut plain = exchange(
            PLAIN,
            &request(),
            "application/json",
            utf8(&error.to_string(), false),
        );
        if let Some(r) = plain.response.as_mut() {
            r.status = 503;
        }
        said_once_as(&derive(&plain), "upstream answered 503: ");
    }

    #[test]
    fn an_sse_stream_is_complete_when_every_candidate_finished() {
        let events: Vec<(&str, serde_json::Value)> =
            chunks().into_iter().map(|c| ("", c)).collect();
        let body = sse(&events).replace('\n', "\r\n");
        let v = derive(&exchange(
            STREAM,
            &request(),
            "text/event-stream",
            utf8(&body, false),
        ));
        assert_eq!(v.stream_format, Some(StreamFormat::Sse));
        assert_eq!(v.answer.as_deref(), Some("A light jacket will do."));
        assert_eq!(v.stream_complete, Some(true));
        let cut = &body[..body.find(" will do").unwrap()];
        let v = derive(&exchange(
            STREAM,
            &request(),
            "text/event-stream",
            utf8(cut, true),
        ));
        assert_eq!(v.stream_complete, Some(false));
        assert_eq!(v.answer.as_deref(), Some("A light jacket"));
        assert_eq!(v.finish_reason, None);
    }

    fn array_body() -> String {
        let items: Vec<String> = chunks()
            .iter()
            .map(|c| serde_json::to_string_pretty(c).unwrap())
            .collect();
        format!("[{}]", items.join("\n,\r\n"))
    }

    #[test]
    fn a_json_array_stream_is_complete_at_its_closing_bracket() {
        let body = array_body();
        let v = derive(&exchange(
            STREAM,
            &request(),
            "application/json; charset=UTF-8",
            utf8(&body, false),
        ));
        assert_eq!(v.protocol, Protocol::Gemini);
        assert_eq!(v.stream_format, Some(StreamFormat::JsonArray));
        assert_eq!(v.answer.as_deref(), Some("A light jacket will do."));
        assert_eq!(v.stream_complete, Some(true));
        assert!(v.problems.is_empty(), "{:?}", v.problems);
        let cut = &body[..body.find(" will do").unwrap()];
        let v = derive(&exchange(
            STREAM,
            &request(),
            "application/json",
            utf8(cut, false),
        ));
        assert_eq!(v.stream_complete, Some(false));
        assert_eq!(v.answer.as_deref(), Some("A light jacket"));
        assert!(
            v.problems
                .iter()
                .any(|p| p == "last array element is cut off mid-way"),
            "{:?}",
            v.problems
        );
    }

    #[test]
    fn function_calls_several_candidates_and_thoughts() {
        let body = json!({"candidates": [
            {"index": 0, "finishReason": "STOP", "content": {"role": "model", "parts": [
                {"text": "Let me think", "thought": true},
                {"functionCall": {"id": "fc1", "name": "get_forecast", "args": {"city": "Paris", "days": 1}}}]}},
            {"index": 1, "finishReason": "MAX_TOKENS", "content": {"role": "model", "parts": [{"text": "Maybe"}]}}
        ]});
        let v = derive(&exchange(
            PLAIN,
            &request(),
            "application/json",
            utf8(&body.to_string(), false),
        ));
        assert_eq!(v.answer, None);
        assert_eq!(
            v.tool_calls,
            [ToolCall {
                id: Some("fc1".into()),
                name: "get_forecast".into(),
                arguments: "{\"city\":\"Paris\",\"days\":1}".into()
            }]
        );
        assert_eq!(v.choices.len(), 2);
        assert_eq!(v.choices[1].answer.as_deref(), Some("Maybe"));
        assert!(
            v.problems
                .iter()
                .any(|p| p.starts_with("no answer text:") && p.contains("1 tool call")),
            "{:?}",
            v.problems
        );
    }

    #[test]
    fn a_blocked_prompt_is_said_and_the_stream_is_finished() {
        let body = json!({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 5}});
        let events = [("", body)];
        let v = derive(&exchange(
            STREAM,
            &request(),
            "text/event-stream",
            utf8(&sse(&events), false),
        ));
        assert_eq!(v.stream_complete, Some(true));
        assert_eq!(v.finish_reason.as_deref(), Some("SAFETY"));
        assert!(
            v.problems
                .iter()
                .any(|p| p == "the prompt was blocked: SAFETY"),
            "{:?}",
            v.problems
        );
        assert!(
            v.problems.iter().any(|p| p.starts_with("no answer:")),
            "{:?}",
            v.problems
        );
    }

    #[test]
    fn snake_case_fields_and_cached_content_are_read() {
        let req = json!({"contents": [{"parts": [{"text": "Hi"}]}], "system_instruction": {"parts": [{"text": "Be kind."}]},
                         "cached_content": "cachedContents/abc"}).to_string();
        let body = json!({"candidates": [{"content": {"parts": [{"text": "Hello"}]}, "finish_reason": "STOP"}]}).to_string();
        let v = derive(&exchange(
            "/v1/projects/p/locations/l/publishers/google/models/gemini-2.0-flash:generateContent",
            &req,
            "application/json",
            utf8(&body, false),
        ));
        assert_eq!(v.model.as_deref(), Some("gemini-2.0-flash"));
        assert_eq!(v.question.as_deref(), Some("Hi"));
        assert_eq!(v.context[0].text, "Be kind.");
        assert_eq!(v.finish_reason.as_deref(), Some("STOP"));
        assert!(
            v.problems.iter().any(|p| p.contains("cachedContents/abc")),
            "{:?}",
            v.problems
        );
    }
}
