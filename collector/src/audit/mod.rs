//! The audit view: what a faithfulness check needs from one captured exchange.
//!
//! [`derive`] never fails: it decodes the bodies, recognises the protocol (OpenAI chat completions,
//! OpenAI Responses, Anthropic messages), reassembles streamed answers from the raw SSE bytes and
//! reports everything it could not do in `problems` (or, when no protocol is recognisable,
//! `protocol: "unknown"` with a `reason`).

mod anthropic;
mod content;
pub mod decode;
mod openai_chat;
mod responses;

use serde::Serialize;
use serde_json::Value;

use crate::record::{header, CaptureRecord, CapturedBody, Headers};
use crate::sse::{self, SseEvent};

/// The API an exchange spoke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Protocol {
    /// OpenAI (or compatible) `POST .../chat/completions`.
    #[serde(rename = "openai.chat")]
    OpenAiChat,
    /// OpenAI `POST .../responses`.
    #[serde(rename = "openai.responses")]
    OpenAiResponses,
    /// Anthropic `POST .../messages`.
    #[serde(rename = "anthropic.messages")]
    AnthropicMessages,
    /// Anything else.
    #[serde(rename = "unknown")]
    Unknown,
}

/// Where a piece of grounding text came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ContextSource {
    /// A system or developer message, Anthropic `system`, Responses `instructions`.
    System,
    /// A tool or function result fed back to the model.
    Tool,
    /// A retrieved document carried in the request.
    Document,
}

/// One text the model was grounded on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContextItem {
    /// Where it came from.
    pub source: ContextSource,
    /// Its text.
    pub text: String,
    /// The tool name / call id, or the document title / id, when the request gives one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A tool call the model made, with its complete arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ToolCall {
    /// The call id, when the protocol gives one.
    pub id: Option<String>,
    /// The tool's name.
    pub name: String,
    /// The arguments as the model wrote them (a JSON text, reassembled from fragments).
    pub arguments: String,
}

/// Token counts as the provider reported them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Usage {
    /// Prompt / input tokens.
    pub input_tokens: Option<u64>,
    /// Completion / output tokens.
    pub output_tokens: Option<u64>,
}

/// One of several alternative answers (OpenAI `n > 1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChoiceView {
    /// The choice index.
    pub index: u64,
    /// Its text.
    pub answer: Option<String>,
    /// Its tool calls.
    pub tool_calls: Vec<ToolCall>,
    /// Why it ended.
    pub finish_reason: Option<String>,
}

/// Everything the collector derives from one capture for an audit engine.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditView {
    /// The recognised API.
    pub protocol: Protocol,
    /// Why the protocol is `unknown`; `null` otherwise.
    pub reason: Option<String>,
    /// The model that answered (the response's, else the request's).
    pub model: Option<String>,
    /// The text of the last user turn.
    pub question: Option<String>,
    /// System messages, tool results and retrieved documents, in request order.
    pub context: Vec<ContextItem>,
    /// The assistant's full text (of the first choice when there are several).
    pub answer: Option<String>,
    /// The tool calls of that answer.
    pub tool_calls: Vec<ToolCall>,
    /// Why generation stopped, as the provider says it.
    pub finish_reason: Option<String>,
    /// Token counts.
    pub usage: Usage,
    /// The response was a server-sent event stream.
    pub streamed: bool,
    /// For a stream: whether its terminal event arrived. `null` when not streamed.
    pub stream_complete: Option<bool>,
    /// True when the whole answer was captured: a stream that reached its terminal event, or a
    /// complete, parseable non-streamed body.
    pub answer_complete: bool,
    /// The request or response body was cut by the filter (`body.truncated`).
    pub body_truncated: bool,
    /// Every choice, when the response had more than one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<ChoiceView>,
    /// What got in the way of a full derivation (decode errors, unparseable events, API errors).
    pub problems: Vec<String>,
}

impl AuditView {
    fn empty() -> Self {
        AuditView {
            protocol: Protocol::Unknown,
            reason: None,
            model: None,
            question: None,
            context: Vec::new(),
            answer: None,
            tool_calls: Vec::new(),
            finish_reason: None,
            usage: Usage::default(),
            streamed: false,
            stream_complete: None,
            answer_complete: false,
            body_truncated: false,
            choices: Vec::new(),
            problems: Vec::new(),
        }
    }

    /// A view for a record whose derivation could not even start.
    pub fn unknown(reason: impl Into<String>) -> Self {
        AuditView {
            reason: Some(reason.into()),
            ..Self::empty()
        }
    }
}

/// A decoded body, classified.
enum Payload {
    /// No bytes at all.
    Empty,
    /// A JSON document.
    Json(Value),
    /// A server-sent event stream (events, plus the unterminated remainder if any).
    Stream(Vec<SseEvent>, Option<SseEvent>),
    /// Bytes that are neither; the reason.
    Unparseable(String),
}

fn is_event_stream(headers: &Headers, bytes: &[u8]) -> bool {
    if let Some(ct) = header(headers, "content-type") {
        if ct
            .trim()
            .to_ascii_lowercase()
            .starts_with("text/event-stream")
        {
            return true;
        }
    }
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .and_then(|i| bytes.get(i..))
        .unwrap_or_default();
    start.starts_with(b"data:") || start.starts_with(b"event:")
}

fn payload(
    body: &CapturedBody,
    headers: &Headers,
    what: &str,
    problems: &mut Vec<String>,
) -> Payload {
    let decoded = decode::decode_body(body, headers);
    let decode_problem = decoded.problem.map(|p| format!("{what} body: {p}"));
    if let Some(p) = &decode_problem {
        problems.push(p.clone());
    }
    let bytes = decoded.bytes;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Payload::Empty;
    }
    if is_event_stream(headers, &bytes) {
        let (events, tail) = sse::parse_all(&bytes);
        return Payload::Stream(events, tail.unterminated);
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(v) => Payload::Json(v),
        Err(e) => {
            let why = if body.truncated {
                format!("{what} body is truncated and not complete JSON ({e})")
            } else {
                format!("{what} body is not JSON: {e}")
            };
            Payload::Unparseable(match decode_problem {
                Some(p) => format!("{p}; {why}"),
                None => why,
            })
        }
    }
}

fn path_protocol(path: &str) -> Option<Protocol> {
    let p = path.trim_end_matches('/');
    if p.ends_with("/chat/completions") {
        Some(Protocol::OpenAiChat)
    } else if p.ends_with("/responses") {
        Some(Protocol::OpenAiResponses)
    } else if p.ends_with("/messages") && !p.contains("/threads/") {
        Some(Protocol::AnthropicMessages)
    } else {
        None
    }
}

fn response_protocol(resp: &Payload) -> Option<Protocol> {
    match resp {
        Payload::Json(v) => {
            match (
                v.get("object").and_then(Value::as_str),
                v.get("type").and_then(Value::as_str),
            ) {
                (Some("chat.completion"), _) => Some(Protocol::OpenAiChat),
                (Some("response"), _) => Some(Protocol::OpenAiResponses),
                (_, Some("message")) => Some(Protocol::AnthropicMessages),
                _ => None,
            }
        }
        Payload::Stream(events, _) => events.iter().take(3).find_map(|e| {
            let v: Value = serde_json::from_str(&e.data).ok()?;
            match (
                v.get("object").and_then(Value::as_str),
                v.get("type").and_then(Value::as_str),
            ) {
                (Some("chat.completion.chunk"), _) => Some(Protocol::OpenAiChat),
                (_, Some("message_start")) => Some(Protocol::AnthropicMessages),
                (_, Some(t)) if t.starts_with("response.") => Some(Protocol::OpenAiResponses),
                _ => None,
            }
        }),
        _ => None,
    }
}

fn request_protocol(req: &Payload, headers: &Headers) -> Option<Protocol> {
    let Payload::Json(v) = req else { return None };
    if v.get("messages").is_some_and(Value::is_array) {
        if header(headers, "anthropic-version").is_some() || v.get("system").is_some() {
            Some(Protocol::AnthropicMessages)
        } else {
            Some(Protocol::OpenAiChat)
        }
    } else if v.get("input").is_some() && v.get("model").is_some() {
        Some(Protocol::OpenAiResponses)
    } else {
        None
    }
}

/// Derives the audit view of `record`. Never fails and never panics on any input.
pub fn derive(record: &CaptureRecord) -> AuditView {
    let mut view = AuditView::empty();
    let req = &record.request;
    view.body_truncated =
        req.body.truncated || record.response.as_ref().is_some_and(|r| r.body.truncated);

    let mut problems = Vec::new();
    let req_payload = payload(&req.body, &req.headers, "request", &mut problems);
    let resp_payload = match &record.response {
        Some(r) => payload(&r.body, &r.headers, "response", &mut problems),
        None => Payload::Empty,
    };

    let protocol = path_protocol(&req.path)
        .or_else(|| response_protocol(&resp_payload))
        .or_else(|| request_protocol(&req_payload, &req.headers));
    let understood = |p: &Payload| matches!(p, Payload::Json(_) | Payload::Stream(..));
    let Some(protocol) = protocol.filter(|_| understood(&req_payload) || understood(&resp_payload))
    else {
        let mut why = Vec::new();
        match &req_payload {
            Payload::Unparseable(e) => why.push(e.clone()),
            Payload::Empty => why.push("request body is empty".to_owned()),
            _ => {}
        }
        match (&resp_payload, &record.response) {
            (_, None) => why.push("there is no response".to_owned()),
            (Payload::Unparseable(e), _) => why.push(e.clone()),
            (Payload::Empty, _) => why.push("response body is empty".to_owned()),
            _ => {}
        }
        if why.is_empty() || path_protocol(&req.path).is_none() {
            why.push(format!(
                "{} {} is not a known LLM endpoint and the bodies match no known protocol",
                req.method, req.path
            ));
        }
        problems.extend(why.iter().cloned());
        let mut unknown = AuditView::unknown(why.join("; "));
        unknown.body_truncated = view.body_truncated;
        unknown.problems = problems;
        return unknown;
    };
    view.protocol = protocol;

    if let Payload::Json(v) = &req_payload {
        match protocol {
            Protocol::OpenAiChat => openai_chat::read_request(v, &mut view),
            Protocol::AnthropicMessages => anthropic::read_request(v, &mut view),
            Protocol::OpenAiResponses => responses::read_request(v, &mut view),
            Protocol::Unknown => {}
        }
        view.context.extend(content::documents(v));
    } else if let Payload::Unparseable(e) = &req_payload {
        problems.push(e.clone());
    }

    let status = record.response.as_ref().map(|r| r.status);
    match resp_payload {
        Payload::Json(v) => {
            if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
                problems.push(format!(
                    "upstream answered {}: {}",
                    status.unwrap_or_default(),
                    content::error_message(err)
                ));
            }
            let parsed = match protocol {
                Protocol::OpenAiChat => openai_chat::read_response(&v, &mut view),
                Protocol::AnthropicMessages => anthropic::read_response(&v, &mut view),
                Protocol::OpenAiResponses => responses::read_response(&v, &mut view),
                Protocol::Unknown => false,
            };
            view.answer_complete = parsed && !view.body_truncated;
        }
        Payload::Stream(events, tail) => {
            view.streamed = true;
            let complete = match protocol {
                Protocol::OpenAiChat => {
                    openai_chat::read_stream(&events, tail.as_ref(), &mut view, &mut problems)
                }
                Protocol::AnthropicMessages => {
                    anthropic::read_stream(&events, tail.as_ref(), &mut view, &mut problems)
                }
                Protocol::OpenAiResponses => {
                    responses::read_stream(&events, tail.as_ref(), &mut view, &mut problems)
                }
                Protocol::Unknown => false,
            };
            if !complete {
                problems.push("stream ended without its terminal event".to_owned());
            }
            view.stream_complete = Some(complete);
            view.answer_complete = complete;
        }
        Payload::Unparseable(e) => problems.push(e),
        Payload::Empty => {
            if record.response.is_none() {
                problems.push("there is no response".to_owned());
            } else {
                problems.push("response body is empty".to_owned());
            }
        }
    }
    view.problems.extend(problems);
    view
}

#[cfg(test)]
mod tests;
