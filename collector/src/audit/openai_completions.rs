//! OpenAI legacy completions (`/v1/completions`: `prompt` → `choices[].text`), streamed and not, as
//! vLLM, TGI and llama.cpp servers still serve it.
//!
//! Streams are reassembled per choice index from the `text` of each `text_completion` chunk; the
//! usage chunk (`stream_options.include_usage`) is read and `data: [DONE]` is the terminal event.

use std::collections::BTreeMap;

use serde_json::Value;

use super::content::{append, count, error_message, set_choices, str_field};
use super::{AuditView, ChoiceView, LooksFor, StreamBody, Usage};

pub(super) const LOOKS_FOR: LooksFor = LooksFor {
    question: "\"prompt\" as a string or an array of strings",
    answer: "choices[].text",
};

/// Fills model and question from a completions request. A batch of prompts keeps the first as the
/// question (the choices hold the answers to all of them); token-id prompts have no text.
pub fn read_request(req: &Value, view: &mut AuditView, problems: &mut Vec<String>) {
    view.model = str_field(req, "model");
    match req.get("prompt") {
        Some(Value::String(s)) => view.set_question(s.clone(), "prompt".to_owned()),
        Some(Value::Array(items)) => {
            let texts: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
            if let Some(first) = texts.first() {
                view.set_question((*first).to_owned(), "prompt[0]".to_owned());
                if items.len() > 1 {
                    problems.push(format!(
                        "the request holds {} prompts; question is prompt[0], and the choices \
                         answer all of them",
                        items.len()
                    ));
                }
            } else if !items.is_empty() {
                problems.push("\"prompt\" is given as token ids, not text".to_owned());
            }
        }
        _ => {}
    }
}

fn usage(v: &Value) -> Option<Usage> {
    let u = v.get("usage").filter(|u| u.is_object())?;
    Some(Usage {
        input_tokens: count(u, "prompt_tokens"),
        output_tokens: count(u, "completion_tokens"),
    })
}

fn read_envelope(v: &Value, view: &mut AuditView) {
    if let Some(m) = str_field(v, "model") {
        view.model = Some(m);
    }
    if let Some(u) = usage(v) {
        view.usage = u;
    }
}

/// Reads a non-streamed `text_completion`; true when it held choices.
pub fn read_response(resp: &Value, view: &mut AuditView) -> bool {
    read_envelope(resp, view);
    let Some(choices) = resp.get("choices").and_then(Value::as_array) else {
        return false;
    };
    view.fields.answer = Some("choices[0].text".to_owned());
    let views = choices
        .iter()
        .enumerate()
        .map(|(i, c)| ChoiceView {
            index: count(c, "index").unwrap_or(i as u64),
            answer: str_field(c, "text"),
            tool_calls: Vec::new(),
            finish_reason: str_field(c, "finish_reason"),
        })
        .collect();
    set_choices(view, views);
    true
}

/// Reassembles a streamed completion; true when `data: [DONE]` arrived.
pub fn read_stream(stream: &StreamBody, view: &mut AuditView, problems: &mut Vec<String>) -> bool {
    let done = stream
        .all()
        .any(|(f, whole)| whole && f.data.trim() == "[DONE]");
    let mut choices: BTreeMap<u64, (Option<String>, Option<String>)> = BTreeMap::new();
    let mut frames = stream.json_frames(|d| d == "[DONE]");
    for (chunk, _, _) in frames.by_ref() {
        if let Some(err) = chunk.get("error").filter(|e| !e.is_null()) {
            problems.push(format!("stream error: {}", error_message(err)));
        }
        read_envelope(&chunk, view);
        let list = chunk.get("choices").and_then(Value::as_array);
        for (pos, c) in list.into_iter().flatten().enumerate() {
            let (text, finish) = choices
                .entry(count(c, "index").unwrap_or(pos as u64))
                .or_default();
            if let Some(t) = c.get("text").and_then(Value::as_str) {
                append(text, t);
            }
            if let Some(fr) = str_field(c, "finish_reason") {
                *finish = Some(fr);
            }
        }
    }
    frames.report(problems);
    view.fields.answer = Some("choices[0].text".to_owned());
    let views = choices
        .into_iter()
        .map(|(index, (answer, finish_reason))| ChoiceView {
            index,
            answer,
            tool_calls: Vec::new(),
            finish_reason,
        })
        .collect();
    set_choices(view, views);
    done
}

#[cfg(test)]
mod tests {
    use super::super::tests::{exchange, sse, utf8};
    use super::super::*;
    use serde_json::json;

    fn request(stream: bool) -> String {
        json!({"model": "Qwen/Qwen2.5-0.5B", "prompt": "The capital of France is", "max_tokens": 8, "stream": stream,
               "stream_options": {"include_usage": true}})
        .to_string()
    }

    fn chunk(index: u64, text: &str, finish: Option<&str>) -> serde_json::Value {
        json!({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "Qwen/Qwen2.5-0.5B",
               "choices": [{"index": index, "text": text, "logprobs": null, "finish_reason": finish}]})
    }

    fn stream_body() -> String {
        let mut s = sse(&[
            ("", chunk(0, " Paris", None)),
            ("", chunk(1, " a city", None)),
            ("", chunk(0, ", on the Seine.", Some("stop"))),
            ("", chunk(1, ".", Some("length"))),
            (
                "",
                json!({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "Qwen/Qwen2.5-0.5B", "choices": [],
                       "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}),
            ),
        ]);
        s.push_str("data: [DONE]\n\n");
        s
    }

    #[test]
    fn a_stream_is_reassembled_per_choice_with_usage() {
        let v = derive(&exchange(
            "/v1/completions",
            &request(true),
            "text/event-stream",
            utf8(&stream_body(), false),
        ));
        assert_eq!(v.protocol, Protocol::OpenAiCompletions);
        assert_eq!(v.question.as_deref(), Some("The capital of France is"));
        assert_eq!(v.fields.question.as_deref(), Some("prompt"));
        assert_eq!(v.answer.as_deref(), Some(" Paris, on the Seine."));
        assert_eq!(v.fields.answer.as_deref(), Some("choices[0].text"));
        assert_eq!(v.choices.len(), 2);
        assert_eq!(v.choices[1].answer.as_deref(), Some(" a city."));
        assert_eq!(v.choices[1].finish_reason.as_deref(), Some("length"));
        assert_eq!(v.finish_reason.as_deref(), Some("stop"));
        assert_eq!(v.usage.input_tokens, Some(5));
        assert_eq!(v.usage.output_tokens, Some(7));
        assert_eq!(v.stream_complete, Some(true));
        assert!(v.problems.is_empty(), "{:?}", v.problems);
    }

    #[test]
    fn a_stream_cut_before_done_is_incomplete() {
        let full = stream_body();
        let cut = &full[..full.find(", on the").unwrap()];
        let v = derive(&exchange(
            "/v1/completions",
            &request(true),
            "text/event-stream",
            utf8(cut, true),
        ));
        assert_eq!(v.stream_complete, Some(false));
        assert!(!v.answer_complete);
        assert_eq!(v.answer.as_deref(), Some(" Paris"));
        assert!(
            v.problems.iter().any(|p| p.contains("cut off")),
            "{:?}",
            v.problems
        );
    }

    #[test]
    fn a_plain_response_gives_text_finish_and_usage() {
        let body = json!({"id": "cmpl-2", "object": "text_completion", "created": 1, "model": "Qwen/Qwen2.5-0.5B",
            "choices": [{"index": 0, "text": " Paris.", "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}});
        let v = derive(&exchange(
            "/v1/completions",
            &request(false),
            "application/json",
            utf8(&body.to_string(), false),
        ));
        assert_eq!(v.answer.as_deref(), Some(" Paris."));
        assert!(v.answer_complete && !v.streamed);
        assert_eq!(v.usage.output_tokens, Some(2));
        assert!(v.choices.is_empty());
    }

    #[test]
    fn token_prompts_and_batches_are_explained() {
        let body = json!({"object": "text_completion", "choices": [{"index": 0, "text": "x"}]})
            .to_string();
        let tokens = json!({"model": "m", "prompt": [1, 2, 3]}).to_string();
        let v = derive(&exchange(
            "/v1/completions",
            &tokens,
            "application/json",
            utf8(&body, false),
        ));
        assert_eq!(v.question, None);
        assert!(
            v.problems.iter().any(|p| p.contains("token ids")),
            "{:?}",
            v.problems
        );
        assert!(v
            .problems
            .iter()
            .any(|p| p.starts_with("no question: looked for \"prompt\"")));
        let batch = json!({"model": "m", "prompt": ["a", "b"]}).to_string();
        let v = derive(&exchange(
            "/v1/completions",
            &batch,
            "application/json",
            utf8(&body, false),
        ));
        assert_eq!(v.question.as_deref(), Some("a"));
        assert!(
            v.problems.iter().any(|p| p.contains("2 prompts")),
            "{:?}",
            v.problems
        );
    }
}
