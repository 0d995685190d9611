//! Generic prompt/response JSON: a request with a `prompt`, `query`, `question` or `input` string
//! answered by a `response`, `answer`, `output` or `text` string — the shape of many home-grown RAG
//! services — and its streamed forms (NDJSON lines or SSE events each carrying a piece of the
//! answer under one of those keys, or a bare JSON string).
//!
//! Nothing here is guessed to be a named API: the view says `generic` and names the fields it used.
//! A stream ends at `data: [DONE]`, a `done: true`, a `finish_reason`, an SSE event named `done` /
//! `end`, or a JSON array's `]`. A stream that uses none of these markers counts as complete when
//! the exchange completed (outcome `complete`), nothing was truncated and its last frame is whole.

use serde_json::Value;

use super::content::{append, str_field, text_of};
use super::recognise::{GENERIC_ANSWER_KEYS, GENERIC_QUESTION_KEYS};
use super::{AuditView, ContextSource, LooksFor, StreamBody, StreamFormat};

pub(super) const LOOKS_FOR: LooksFor = LooksFor {
    question: "a \"prompt\", \"query\", \"question\" or \"input\" string (or a \"messages\" item \
               with role \"user\")",
    answer: "a \"response\", \"answer\", \"output\" or \"text\" string",
};

/// Keys that name why generation stopped.
const FINISH_KEYS: &[&str] = &["finish_reason", "done_reason", "stop_reason"];
/// SSE event names that end a stream.
const END_EVENTS: &[&str] = &["done", "end", "complete", "completed"];

/// Fills model, question and system context from the request.
pub fn read_request(req: &Value, view: &mut AuditView) {
    view.model = str_field(req, "model");
    let question = GENERIC_QUESTION_KEYS
        .iter()
        .find_map(|k| req.get(*k).and_then(Value::as_str).map(|q| (*k, q)));
    if let Some((key, q)) = question {
        view.set_question(q.to_owned(), key.to_owned());
    } else if let Some(messages) = req.get("messages").and_then(Value::as_array) {
        for (i, msg) in messages.iter().enumerate() {
            let role = msg.get("role").and_then(Value::as_str);
            let text = msg.get("content").and_then(text_of);
            let field = format!("messages[{i}].content");
            match (role, text) {
                (Some("user"), Some(t)) => view.set_question(t, field),
                (Some("system"), Some(t)) => {
                    view.push_context(ContextSource::System, t, None, field)
                }
                _ => {}
            }
        }
    }
    if let Some(system) = str_field(req, "system") {
        view.push_context(ContextSource::System, system, None, "system".to_owned());
    }
}

/// The answer key and text an object carries, if any.
fn answer_of(v: &Value) -> Option<(&'static str, &str)> {
    GENERIC_ANSWER_KEYS
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_str).map(|t| (*k, t)))
}

/// Model, finish reason and usage, wherever an object gives them.
fn read_envelope(v: &Value, view: &mut AuditView) {
    if let Some(m) = str_field(v, "model") {
        view.model = Some(m);
    }
    if let Some(r) = FINISH_KEYS.iter().find_map(|k| str_field(v, k)) {
        view.finish_reason = Some(r);
    }
    if let Some(u) = super::openai_chat::usage(v) {
        view.usage = u;
    }
}

/// Reads a non-streamed answer; true when it held an answer string.
pub fn read_response(resp: &Value, view: &mut AuditView) -> bool {
    read_envelope(resp, view);
    let Some((key, text)) = answer_of(resp) else {
        return false;
    };
    view.fields.answer = Some(key.to_owned());
    view.answer = Some(text.to_owned());
    true
}

/// Joins the answer pieces of a stream; true when it is complete (see the module documentation).
pub fn read_stream(
    stream: &StreamBody,
    exchange_complete: bool,
    view: &mut AuditView,
    problems: &mut Vec<String>,
) -> bool {
    let mut text: Option<String> = None;
    let mut uses_markers = stream.format == StreamFormat::JsonArray;
    let mut ended = false;
    for (frame, whole) in stream.all() {
        if frame.data.trim() == "[DONE]" || END_EVENTS.contains(&frame.event.as_str()) {
            uses_markers = true;
            ended |= whole;
        }
    }
    let is_marker = |d: &str| d == "[DONE]";
    let mut frames = stream.json_frames(is_marker);
    for (v, whole, _) in frames.by_ref() {
        read_envelope(&v, view);
        match (&v, answer_of(&v)) {
            (Value::String(s), _) => {
                view.fields.answer = Some("(each frame is a JSON string)".to_owned());
                append(&mut text, s);
            }
            (_, Some((key, piece))) => {
                view.fields.answer = Some(key.to_owned());
                append(&mut text, piece);
            }
            _ => {}
        }
        if let Some(done) = v.get("done").and_then(Value::as_bool) {
            uses_markers = true;
            ended |= done && whole;
        }
        if FINISH_KEYS.iter().any(|k| v.get(*k).is_some()) {
            uses_markers = true;
            ended |= whole
                && FINISH_KEYS
                    .iter()
                    .any(|k| v.get(*k).is_some_and(|r| !r.is_null()));
        }
    }
    frames.report(problems);
    view.answer = text;
    match stream.format {
        StreamFormat::JsonArray => stream.closed,
        _ if uses_markers => ended,
        _ => exchange_complete && stream.tail.is_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{exchange, utf8};
    use super::super::*;
    use serde_json::json;

    /// The exchange this project grew from: an OpenAI path with a prompt/response body.
    #[test]
    fn the_body_decides_over_the_path_and_names_its_fields() {
        let v = derive(&exchange(
            "/chat/completions",
            &json!({"prompt": "Hello"}).to_string(),
            "application/json",
            utf8(&json!({"response": "This is a test response from the mock LLM.", "model": "mock-llm"}).to_string(), false),
        ));
        assert_eq!(v.protocol, Protocol::Generic);
        assert_eq!(v.question.as_deref(), Some("Hello"));
        assert_eq!(
            v.answer.as_deref(),
            Some("This is a test response from the mock LLM.")
        );
        assert_eq!(v.model.as_deref(), Some("mock-llm"));
        assert_eq!(
            (v.fields.question.as_deref(), v.fields.answer.as_deref()),
            (Some("prompt"), Some("response"))
        );
        assert_eq!(v.recognised_from[0].source, EvidenceSource::ResponseBody);
        assert_eq!(
            v.recognised_from[0].detail,
            "response \"response\" is a string"
        );
        assert_eq!(v.overruled.len(), 1);
        assert_eq!(
            (v.overruled[0].source, v.overruled[0].suggests),
            (EvidenceSource::Path, Protocol::OpenAiChat)
        );
        assert!(v.answer_complete);
        assert!(v.problems.is_empty(), "{:?}", v.problems);
    }

    #[test]
    fn every_question_and_answer_key_is_recognised() {
        for (q, a) in [
            ("prompt", "response"),
            ("query", "answer"),
            ("question", "output"),
            ("input", "text"),
        ] {
            let v = derive(&exchange(
                "/rag",
                &json!({q: "Who?", "documents": [{"title": "Doc", "text": "Ada."}]}).to_string(),
                "application/json",
                utf8(&json!({a: "Ada."}).to_string(), false),
            ));
            assert_eq!(v.protocol, Protocol::Generic, "{q} {a}");
            assert_eq!(
                (v.fields.question.as_deref(), v.fields.answer.as_deref()),
                (Some(q), Some(a))
            );
            assert_eq!(v.context[0].field, "documents[0]");
        }
    }

    #[test]
    fn an_ndjson_stream_with_done_markers() {
        let body = "{\"response\":\"Ada\"}\n{\"response\":\" Lovelace\"}\n{\"response\":\"\",\"done\":true}\n";
        let v = derive(&exchange(
            "/ask",
            "{\"query\":\"Who?\"}",
            "application/x-ndjson",
            utf8(body, false),
        ));
        assert_eq!(v.protocol, Protocol::Generic);
        assert_eq!(v.answer.as_deref(), Some("Ada Lovelace"));
        assert_eq!(v.stream_complete, Some(true));
        let cut = &body[..body.rfind("{\"response\":\"\"").unwrap() + 5];
        let v = derive(&exchange(
            "/ask",
            "{\"query\":\"Who?\"}",
            "application/x-ndjson",
            utf8(cut, true),
        ));
        assert_eq!(v.answer.as_deref(), Some("Ada Lovelace"));
        assert_eq!(v.stream_complete, Some(false), "the done line was cut");
        assert!(
            v.problems
                .iter()
                .any(|p| p == "last NDJSON line is cut off mid-way"),
            "{:?}",
            v.problems
        );
    }

    #[test]
    fn an_sse_stream_without_markers_is_complete_only_if_the_exchange_was() {
        let body = "data: {\"text\":\"Ada\"}\n\ndata: {\"text\":\" Lovelace\"}\n\n";
        let mut rec = exchange(
            "/ask",
            "{\"question\":\"Who?\"}",
            "text/event-stream",
            utf8(body, false),
        );
        let v = derive(&rec);
        assert_eq!(
            (v.answer.as_deref(), v.stream_complete),
            (Some("Ada Lovelace"), Some(true))
        );
        rec.outcome = Outcome::UpstreamFailed;
        let v = derive(&rec);
        assert_eq!(v.stream_complete, Some(false));
        let with_done = format!("{body}data: [DONE]\n\n");
        let mut rec = exchange(
            "/ask",
            "{\"question\":\"Who?\"}",
            "text/event-stream",
            utf8(&with_done, false),
        );
        rec.outcome = Outcome::ClientAborted;
        assert_eq!(derive(&rec).stream_complete, Some(true), "[DONE] arrived");
    }

    #[test]
    fn a_stream_of_bare_strings() {
        let body = "\"Ada\"\n\" Lovelace\"\n";
        let v = derive(&exchange(
            "/ask",
            "{\"prompt\":\"Who?\"}",
            "application/x-ndjson",
            utf8(body, false),
        ));
        assert_eq!(v.protocol, Protocol::Generic, "{:?}", v.recognised_from);
        assert_eq!(v.answer.as_deref(), Some("Ada Lovelace"));
    }

    #[test]
    fn a_missing_answer_names_the_keys_looked_for() {
        let v = derive(&exchange(
            "/ask",
            "{\"prompt\":\"Who?\"}",
            "application/json",
            utf8("{\"result\": 42}", false),
        ));
        assert_eq!(v.protocol, Protocol::Generic);
        assert_eq!(v.answer, None);
        assert!(
            v.problems.contains(&"no answer: looked for a \"response\", \"answer\", \"output\" or \"text\" string and found none".to_owned()),
            "{:?}",
            v.problems
        );
    }
}
