//! The audit view: what a faithfulness check needs from one captured exchange.
//!
//! [`derive`] never fails: it decodes the bodies, frames streamed answers (SSE, NDJSON or a
//! streamed JSON array), lets the [`recognise`] step choose the protocol (and say from what), has
//! that protocol's module read question, context and answer, and reports in `problems` everything
//! it could not do, including why a question or an answer is missing (or, when no protocol is
//! recognisable, `protocol: "unknown"` with a `reason`).

mod anthropic;
mod content;
pub mod decode;
mod gemini;
mod generic;
pub mod json_array;
pub mod ndjson;
mod ollama;
mod openai_chat;
mod openai_completions;
mod recognise;
mod responses;
pub mod timing;

use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::record::{header, CaptureRecord, CapturedBody, Headers, Outcome};
use crate::sse;

/// The API an exchange spoke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// OpenAI (or compatible) `POST .../chat/completions`.
    OpenAiChat,
    /// OpenAI (or compatible: vLLM, TGI, llama.cpp) legacy `POST .../completions`.
    OpenAiCompletions,
    /// OpenAI `POST .../responses`.
    OpenAiResponses,
    /// Anthropic `POST .../messages`.
    AnthropicMessages,
    /// Ollama `POST /api/generate`.
    OllamaGenerate,
    /// Ollama `POST /api/chat`.
    OllamaChat,
    /// Google Gemini `models/*:generateContent` and `:streamGenerateContent`.
    Gemini,
    /// A prompt/response JSON of no named API (`prompt`/`query`/`question`/`input` →
    /// `response`/`answer`/`output`/`text`).
    Generic,
    /// Anything else.
    Unknown,
}

impl Protocol {
    /// Every protocol a view can name.
    pub const ALL: [Protocol; 9] = [
        Protocol::OpenAiChat,
        Protocol::OpenAiCompletions,
        Protocol::OpenAiResponses,
        Protocol::AnthropicMessages,
        Protocol::OllamaGenerate,
        Protocol::OllamaChat,
        Protocol::Gemini,
        Protocol::Generic,
        Protocol::Unknown,
    ];

    /// The name the view gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::OpenAiChat => "openai.chat",
            Protocol::OpenAiCompletions => "openai.completions",
            Protocol::OpenAiResponses => "openai.responses",
            Protocol::AnthropicMessages => "anthropic.messages",
            Protocol::OllamaGenerate => "ollama.generate",
            Protocol::OllamaChat => "ollama.chat",
            Protocol::Gemini => "gemini.generate_content",
            Protocol::Generic => "generic",
            Protocol::Unknown => "unknown",
        }
    }
}

impl Serialize for Protocol {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// What a piece of recognition evidence was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EvidenceSource {
    /// The request path (and query).
    Path,
    /// The shape of the request body.
    RequestBody,
    /// The shape of the response body.
    ResponseBody,
    /// The response's `content-type`: how the answer was framed.
    ContentType,
    /// A request header only one protocol's clients send (`anthropic-version`, `x-goog-api-client`).
    Header,
}

impl EvidenceSource {
    /// Every kind of evidence the recogniser reads.
    pub const ALL: [EvidenceSource; 5] = [
        EvidenceSource::Path,
        EvidenceSource::RequestBody,
        EvidenceSource::ResponseBody,
        EvidenceSource::ContentType,
        EvidenceSource::Header,
    ];
}

/// One reason to take an exchange for a protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Evidence {
    /// What it was read from.
    pub source: EvidenceSource,
    /// The protocol it points to.
    pub suggests: Protocol,
    /// What was seen, e.g. `"object" is "text_completion"`.
    pub detail: String,
}

/// Where a piece of grounding text came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ContextSource {
    /// A system or developer message, Anthropic `system`, Responses `instructions`, Ollama
    /// `system`, Gemini `systemInstruction`.
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
    /// The request field it was read from, e.g. `messages[0].content`.
    pub field: String,
}

/// Something other than text that the request showed the model (an image, a file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attachment {
    /// `image`, `audio` or `file`.
    pub kind: &'static str,
    /// The request field that holds it, e.g. `messages[1].images[0]`.
    pub field: String,
    /// Its media type, when the request names one.
    pub mime_type: Option<String>,
    /// Its size in bytes, when it is carried inline (base64).
    pub size_bytes: Option<u64>,
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

/// One of several alternative answers (OpenAI `n > 1`, Gemini `candidateCount > 1`).
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

/// The body fields the question and the answer were read from.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct FieldsUsed {
    /// E.g. `prompt`, `messages[2].content`, `contents[0].parts[0].text`.
    pub question: Option<String>,
    /// E.g. `response`, `choices[0].delta.content`, `candidates[0].content.parts[].text`.
    pub answer: Option<String>,
}

/// How a streamed answer was framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamFormat {
    /// Server-sent events (`text/event-stream`).
    Sse,
    /// One JSON object a line (`application/x-ndjson`).
    Ndjson,
    /// A JSON array written an element at a time (Gemini without `alt=sse`).
    JsonArray,
}

/// Everything the collector derives from one capture for an audit engine.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditView {
    /// The recognised API.
    pub protocol: Protocol,
    /// Why the protocol is `unknown`; `null` otherwise.
    pub reason: Option<String>,
    /// What the protocol was recognised from, the deciding evidence first.
    pub recognised_from: Vec<Evidence>,
    /// Evidence that pointed to another protocol and was outweighed (the bodies decide).
    pub overruled: Vec<Evidence>,
    /// The model that answered (the response's, else the request's).
    pub model: Option<String>,
    /// The model the request asked for (its body's `model`, or a Gemini path's).
    pub request_model: Option<String>,
    /// The model the response named.
    pub response_model: Option<String>,
    /// The text of the last user turn.
    pub question: Option<String>,
    /// System messages, tool results and retrieved documents, in request order.
    pub context: Vec<ContextItem>,
    /// Images and files the request carried.
    pub attachments: Vec<Attachment>,
    /// The assistant's full text (of the first choice when there are several).
    pub answer: Option<String>,
    /// The tool calls of that answer.
    pub tool_calls: Vec<ToolCall>,
    /// Why generation stopped, as the provider says it.
    pub finish_reason: Option<String>,
    /// Token counts.
    pub usage: Usage,
    /// The body fields question and answer were read from.
    pub fields: FieldsUsed,
    /// The response was a stream (SSE, NDJSON or a streamed JSON array).
    pub streamed: bool,
    /// How the stream was framed; `null` when not streamed.
    pub stream_format: Option<StreamFormat>,
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
    /// What got in the way of a full derivation (decode errors, unparseable frames, API errors,
    /// and what was looked for when the question or the answer is missing).
    pub problems: Vec<String>,
    /// How fast the answer came; `null` without a response.
    pub timing: Option<timing::Timing>,
}

impl AuditView {
    fn empty() -> Self {
        AuditView {
            protocol: Protocol::Unknown,
            reason: None,
            recognised_from: Vec::new(),
            overruled: Vec::new(),
            model: None,
            request_model: None,
            response_model: None,
            question: None,
            context: Vec::new(),
            attachments: Vec::new(),
            answer: None,
            tool_calls: Vec::new(),
            finish_reason: None,
            usage: Usage::default(),
            fields: FieldsUsed::default(),
            streamed: false,
            stream_format: None,
            stream_complete: None,
            answer_complete: false,
            body_truncated: false,
            choices: Vec::new(),
            problems: Vec::new(),
            timing: None,
        }
    }

    /// A view for a record whose derivation could not even start.
    pub fn unknown(reason: impl Into<String>) -> Self {
        AuditView {
            reason: Some(reason.into()),
            ..Self::empty()
        }
    }

    /// Adds one grounding text, read from `field`.
    fn push_context(
        &mut self,
        source: ContextSource,
        text: String,
        name: Option<String>,
        field: String,
    ) {
        self.context.push(ContextItem {
            source,
            text,
            name,
            field,
        });
    }

    /// Sets the question and the field it came from.
    fn set_question(&mut self, text: String, field: String) {
        self.question = Some(text);
        self.fields.question = Some(field);
    }
}

/// One unit of a streamed body: an SSE event, an NDJSON line or an array element.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frame {
    /// The SSE `event:` name; empty for the other framings.
    pub event: String,
    /// The SSE `data:`, the line, or the element's JSON text.
    pub data: String,
}

/// A streamed response body, framed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamBody {
    /// How it was framed.
    pub format: StreamFormat,
    /// The complete frames, in order.
    pub frames: Vec<Frame>,
    /// A frame the body ended inside of (no blank line, newline or element end after it).
    pub tail: Option<Frame>,
    /// For a JSON array: its closing `]` arrived.
    pub closed: bool,
}

impl StreamBody {
    /// Every frame, the unterminated tail last; the flag is true for complete frames.
    pub fn all(&self) -> impl Iterator<Item = (&Frame, bool)> {
        self.frames
            .iter()
            .map(|f| (f, true))
            .chain(self.tail.iter().map(|f| (f, false)))
    }

    /// The frames that are JSON, parsed one at a time as the caller goes, each with its
    /// completeness flag and SSE event name. Frames `skip` accepts (e.g. `[DONE]`) are neither
    /// parsed nor counted; the others are counted, for [`JsonFrames::report`].
    fn json_frames<F: Fn(&str) -> bool>(&self, skip: F) -> JsonFrames<'_, F> {
        JsonFrames {
            frames: self.frames.iter(),
            tail: self.tail.as_ref(),
            format: self.format,
            skip,
            bad: 0,
            cut: false,
        }
    }
}

/// The iterator of [`StreamBody::json_frames`].
struct JsonFrames<'a, F> {
    frames: std::slice::Iter<'a, Frame>,
    tail: Option<&'a Frame>,
    format: StreamFormat,
    skip: F,
    bad: usize,
    cut: bool,
}

impl<'a, F: Fn(&str) -> bool> Iterator for JsonFrames<'a, F> {
    type Item = (Value, bool, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (frame, whole) = match self.frames.next() {
                Some(f) => (f, true),
                None => (self.tail.take()?, false),
            };
            if (self.skip)(frame.data.trim()) {
                continue;
            }
            match serde_json::from_str::<Value>(&frame.data) {
                Ok(v) => return Some((v, whole, frame.event.as_str())),
                Err(_) if !whole => self.cut = true,
                Err(_) => self.bad += 1,
            }
        }
    }
}

impl<F> JsonFrames<'_, F> {
    /// Tells `problems` about the frames that were not JSON: a cut-off last frame apart from
    /// frames that are not JSON at all.
    fn report(self, problems: &mut Vec<String>) {
        let name = self.format.frame_name();
        if self.cut {
            problems.push(format!("last {name} is cut off mid-way"));
        }
        if self.bad > 0 {
            problems.push(format!("{} {name}(s) were not JSON", self.bad));
        }
    }
}

impl StreamFormat {
    fn frame_name(self) -> &'static str {
        match self {
            StreamFormat::Sse => "stream event",
            StreamFormat::Ndjson => "NDJSON line",
            StreamFormat::JsonArray => "array element",
        }
    }
}

/// A decoded body, classified.
enum Payload {
    /// No bytes at all.
    Empty,
    /// A JSON document.
    Json(Value),
    /// A streamed body.
    Stream(StreamBody),
    /// Bytes that are neither; the reason.
    Unparseable(String),
}

fn content_type(headers: &Headers) -> String {
    header(headers, "content-type")
        .map(|ct| ct.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

fn first_bytes(bytes: &[u8]) -> &[u8] {
    bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .and_then(|i| bytes.get(i..))
        .unwrap_or_default()
}

fn is_event_stream(ct: &str, bytes: &[u8]) -> bool {
    let start = first_bytes(bytes);
    ct.starts_with("text/event-stream")
        || start.starts_with(b"data:")
        || start.starts_with(b"event:")
}

/// Media types whose body is one JSON text a line.
fn is_ndjson_type(ct: &str) -> bool {
    [
        "application/x-ndjson",
        "application/ndjson",
        "application/jsonl",
        "application/x-jsonlines",
        "application/json-lines",
        "application/jsonlines",
    ]
    .iter()
    .any(|t| ct.starts_with(t))
}

fn sse_stream(bytes: &[u8]) -> StreamBody {
    let (events, tail) = sse::parse_all(bytes);
    let frame = |e: sse::SseEvent| Frame {
        event: e.event,
        data: e.data,
    };
    StreamBody {
        format: StreamFormat::Sse,
        frames: events.into_iter().map(frame).collect(),
        tail: tail.unterminated.map(frame),
        closed: false,
    }
}

fn ndjson_stream(bytes: &[u8]) -> StreamBody {
    let (lines, tail) = ndjson::parse_all(bytes);
    let frame = |data| Frame {
        event: String::new(),
        data,
    };
    let mut frames: Vec<Frame> = lines.into_iter().map(frame).collect();
    // JSON delimits itself: a last line that parses is whole even without its newline.
    let tail = match tail {
        Some(t) if serde_json::from_str::<Value>(&t).is_ok() => {
            frames.push(frame(t));
            None
        }
        t => t.map(frame),
    };
    StreamBody {
        format: StreamFormat::Ndjson,
        frames,
        tail,
        closed: false,
    }
}

/// A streamed JSON array, and whether bytes follow its closing `]`.
fn json_array_stream(bytes: &[u8]) -> (StreamBody, bool) {
    let (elements, tail) = json_array::parse_all(bytes);
    let frame = |data| Frame {
        event: String::new(),
        data,
    };
    let stream = StreamBody {
        format: StreamFormat::JsonArray,
        frames: elements.into_iter().map(frame).collect(),
        tail: tail.partial.map(frame),
        closed: tail.closed,
    };
    (stream, tail.trailing)
}

/// The frames of a decoded response body, framed as the audit view frames it (SSE, NDJSON or a
/// streamed JSON array); `None` when the body is not a stream. For showing a stream event by
/// event.
pub fn response_frames(headers: &Headers, bytes: &[u8]) -> Option<StreamBody> {
    let ct = content_type(headers);
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    if is_event_stream(&ct, bytes) {
        return Some(sse_stream(bytes));
    }
    if is_ndjson_type(&ct) {
        return Some(ndjson_stream(bytes));
    }
    if first_bytes(bytes).starts_with(b"[") {
        return Some(json_array_stream(bytes).0);
    }
    if serde_json::from_slice::<Value>(bytes).is_err() && looks_like_ndjson(bytes) {
        return Some(ndjson_stream(bytes));
    }
    None
}

/// A body of several lines whose first line is a JSON text.
fn looks_like_ndjson(bytes: &[u8]) -> bool {
    let (lines, tail) = ndjson::parse_all(bytes);
    lines.len() + usize::from(tail.is_some()) >= 2
        && lines
            .first()
            .is_some_and(|l| serde_json::from_str::<Value>(l).is_ok())
}

/// Which side of the exchange a body belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Request,
    Response,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Request => "request",
            Side::Response => "response",
        }
    }
}

/// `broke_off` names how the exchange ended when it did not complete (a body that ends there is
/// cut short although the filter kept all of it).
fn payload(
    body: &CapturedBody,
    headers: &Headers,
    side: Side,
    broke_off: Option<&str>,
    problems: &mut Vec<String>,
) -> Payload {
    let what = side.name();
    let decoded = decode::decode_body(body, headers);
    let decode_problem = decoded.problem.map(|p| format!("{what} body: {p}"));
    if let Some(p) = &decode_problem {
        problems.push(p.clone());
    }
    let bytes = decoded.bytes;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Payload::Empty;
    }
    if side == Side::Response {
        let ct = content_type(headers);
        if is_event_stream(&ct, &bytes) {
            return Payload::Stream(sse_stream(&bytes));
        }
        if is_ndjson_type(&ct) {
            return Payload::Stream(ndjson_stream(&bytes));
        }
        if first_bytes(&bytes).starts_with(b"[") {
            let (stream, trailing) = json_array_stream(&bytes);
            if trailing {
                problems.push(format!(
                    "{what} body has bytes after its JSON array's closing ]"
                ));
            }
            return Payload::Stream(stream);
        }
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(v) => Payload::Json(v),
        Err(_) if side == Side::Response && looks_like_ndjson(&bytes) => {
            Payload::Stream(ndjson_stream(&bytes))
        }
        Err(e) => {
            let why = if body.truncated {
                format!("{what} body is truncated and not complete JSON ({e})")
            } else if let Some(outcome) = broke_off {
                format!(
                    "{what} body ends where the exchange broke off ({outcome}) and is not \
                     complete JSON ({e})"
                )
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

/// What a protocol's module looks for, told when it is not found.
struct LooksFor {
    question: &'static str,
    answer: &'static str,
}

fn looks_for(protocol: Protocol) -> LooksFor {
    match protocol {
        Protocol::OpenAiChat => openai_chat::LOOKS_FOR,
        Protocol::OpenAiCompletions => openai_completions::LOOKS_FOR,
        Protocol::OpenAiResponses => responses::LOOKS_FOR,
        Protocol::AnthropicMessages => anthropic::LOOKS_FOR,
        Protocol::OllamaGenerate => ollama::GENERATE_LOOKS_FOR,
        Protocol::OllamaChat => ollama::CHAT_LOOKS_FOR,
        Protocol::Gemini => gemini::LOOKS_FOR,
        Protocol::Generic => generic::LOOKS_FOR,
        Protocol::Unknown => LooksFor {
            question: "nothing (no protocol recognised)",
            answer: "nothing (no protocol recognised)",
        },
    }
}

fn read_request(
    protocol: Protocol,
    req: &Value,
    record: &CaptureRecord,
    view: &mut AuditView,
    problems: &mut Vec<String>,
) {
    match protocol {
        Protocol::OpenAiChat => openai_chat::read_request(req, view),
        Protocol::OpenAiCompletions => openai_completions::read_request(req, view, problems),
        Protocol::AnthropicMessages => anthropic::read_request(req, view),
        Protocol::OpenAiResponses => responses::read_request(req, view),
        Protocol::OllamaGenerate => ollama::read_generate_request(req, view, problems),
        Protocol::OllamaChat => ollama::read_chat_request(req, view),
        Protocol::Gemini => gemini::read_request(req, &record.request.path, view, problems),
        Protocol::Generic => generic::read_request(req, view),
        Protocol::Unknown => {}
    }
    view.context.extend(content::documents(req));
}

fn read_response(
    protocol: Protocol,
    resp: &Value,
    view: &mut AuditView,
    problems: &mut Vec<String>,
) -> bool {
    match protocol {
        Protocol::OpenAiChat => openai_chat::read_response(resp, view),
        Protocol::OpenAiCompletions => openai_completions::read_response(resp, view),
        Protocol::AnthropicMessages => anthropic::read_response(resp, view),
        Protocol::OpenAiResponses => responses::read_response(resp, view),
        Protocol::OllamaGenerate | Protocol::OllamaChat => ollama::read_response(resp, view),
        Protocol::Gemini => gemini::read_response(resp, view, problems),
        Protocol::Generic => generic::read_response(resp, view),
        Protocol::Unknown => false,
    }
}

fn read_stream(
    protocol: Protocol,
    stream: &StreamBody,
    exchange_complete: bool,
    view: &mut AuditView,
    problems: &mut Vec<String>,
) -> bool {
    match protocol {
        Protocol::OpenAiChat => openai_chat::read_stream(stream, view, problems),
        Protocol::OpenAiCompletions => openai_completions::read_stream(stream, view, problems),
        Protocol::AnthropicMessages => anthropic::read_stream(stream, view, problems),
        Protocol::OpenAiResponses => responses::read_stream(stream, view, problems),
        Protocol::OllamaGenerate | Protocol::OllamaChat => {
            ollama::read_stream(stream, view, problems)
        }
        Protocol::Gemini => gemini::read_stream(stream, view, problems),
        Protocol::Generic => generic::read_stream(stream, exchange_complete, view, problems),
        Protocol::Unknown => false,
    }
}

/// Derives the audit view of `record`, stalls past the default threshold. Never fails and never
/// panics on any input.
pub fn derive(record: &CaptureRecord) -> AuditView {
    derive_with(record, timing::DEFAULT_STALL_THRESHOLD_MS)
}

/// [`derive`], with gaps longer than `stall_threshold_ms` between content reported as stalls.
pub fn derive_with(record: &CaptureRecord, stall_threshold_ms: u64) -> AuditView {
    let mut view = derive_content(record);
    view.timing = timing::of(
        record,
        view.protocol,
        view.stream_format,
        view.usage.output_tokens,
        stall_threshold_ms,
    );
    view
}

fn derive_content(record: &CaptureRecord) -> AuditView {
    let mut view = AuditView::empty();
    let req = &record.request;
    view.body_truncated =
        req.body.truncated || record.response.as_ref().is_some_and(|r| r.body.truncated);

    let mut problems = Vec::new();
    let broke_off = (record.outcome != Outcome::Complete).then(|| record.outcome.as_str());
    let req_payload = payload(&req.body, &req.headers, Side::Request, None, &mut problems);
    let resp_payload = match &record.response {
        Some(r) => payload(
            &r.body,
            &r.headers,
            Side::Response,
            broke_off,
            &mut problems,
        ),
        None => Payload::Empty,
    };

    let recognition = recognise::recognise(record, &req_payload, &resp_payload);
    view.recognised_from = recognition.from;
    view.overruled = recognition.overruled;
    let understood = |p: &Payload| matches!(p, Payload::Json(_) | Payload::Stream(..));
    let Some(protocol) = recognition
        .protocol
        .filter(|_| understood(&req_payload) || understood(&resp_payload))
    else {
        return unknown_view(record, &req_payload, &resp_payload, view, problems);
    };
    view.protocol = protocol;

    match &req_payload {
        Payload::Json(v) => read_request(protocol, v, record, &mut view, &mut problems),
        Payload::Unparseable(e) => problems.push(e.clone()),
        Payload::Empty | Payload::Stream(_) => {}
    }
    // The request's model, then the response's: `model` is the latter, else the former.
    view.request_model = view.model.take();

    let status = record.response.as_ref().map(|r| r.status);
    match &resp_payload {
        Payload::Json(v) => {
            if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
                problems.push(format!(
                    "upstream answered {}: {}",
                    status.unwrap_or_default(),
                    content::error_message(err)
                ));
            }
            let parsed = read_response(protocol, v, &mut view, &mut problems);
            view.answer_complete = parsed && !view.body_truncated;
        }
        Payload::Stream(stream) => {
            view.streamed = true;
            view.stream_format = Some(stream.format);
            let exchange_complete = record.outcome == Outcome::Complete && !view.body_truncated;
            let complete = read_stream(
                protocol,
                stream,
                exchange_complete,
                &mut view,
                &mut problems,
            );
            if !complete {
                problems.push(match broke_off {
                    Some(outcome) => format!(
                        "stream ended without its terminal event (the exchange ended {outcome}: {})",
                        record.detail
                    ),
                    None => "stream ended without its terminal event".to_owned(),
                });
            }
            view.stream_complete = Some(complete);
            view.answer_complete = complete;
        }
        Payload::Unparseable(e) => problems.push(e.clone()),
        Payload::Empty => {}
    }
    view.response_model = view.model.take();
    view.model = view
        .response_model
        .clone()
        .or_else(|| view.request_model.clone());
    explain_missing(
        record,
        &req_payload,
        &resp_payload,
        &mut view,
        &mut problems,
    );
    view.problems.extend(problems);
    view
}

/// Never silent: says what was looked for whenever the question or the answer is missing or
/// empty.
fn explain_missing(
    record: &CaptureRecord,
    req: &Payload,
    resp: &Payload,
    view: &mut AuditView,
    problems: &mut Vec<String>,
) {
    let wanted = looks_for(view.protocol);
    match (&view.question, req) {
        (Some(q), _) if q.trim().is_empty() => problems.push(format!(
            "empty question: {} is an empty string",
            view.fields.question.as_deref().unwrap_or("the question")
        )),
        (Some(_), _) => {}
        (None, Payload::Empty) => problems.push("no question: the request body is empty".into()),
        (None, Payload::Unparseable(_)) => {
            problems.push("no question: the request body could not be read as JSON".into())
        }
        (None, _) => problems.push(format!(
            "no question: looked for {} and found none",
            wanted.question
        )),
    }
    if let Some(a) = &view.answer {
        if a.trim().is_empty() {
            problems.push(format!(
                "empty answer: {} is an empty string",
                view.fields.answer.as_deref().unwrap_or("the answer")
            ));
        }
        return;
    }
    let Some(response) = &record.response else {
        problems.push(format!(
            "no answer: there is no response (outcome {}, {})",
            record.outcome.as_str(),
            record.detail
        ));
        return;
    };
    let why = match resp {
        Payload::Empty => format!("the response body is empty (status {})", response.status),
        Payload::Unparseable(_) => "the response body could not be read".to_owned(),
        Payload::Stream(s) => format!(
            "looked for {} in {} {}(s) and found none",
            wanted.answer,
            s.frames.len() + usize::from(s.tail.is_some()),
            s.format.frame_name()
        ),
        Payload::Json(_) => format!("looked for {} and found none", wanted.answer),
    };
    let mut line = if view.tool_calls.is_empty() {
        format!("no answer: {why}")
    } else {
        format!(
            "no answer text: {why}; the model answered with {} tool call(s)",
            view.tool_calls.len()
        )
    };
    if response.status >= 400 {
        line.push_str(&format!(" (status {})", response.status));
    }
    problems.push(line);
}

/// The view of an exchange whose protocol could not be recognised: the reason says what was
/// looked for.
fn unknown_view(
    record: &CaptureRecord,
    req_payload: &Payload,
    resp_payload: &Payload,
    mut view: AuditView,
    mut problems: Vec<String>,
) -> AuditView {
    let req = &record.request;
    let mut why = Vec::new();
    match req_payload {
        Payload::Unparseable(e) => why.push(e.clone()),
        Payload::Empty => why.push("request body is empty".to_owned()),
        _ => {}
    }
    match (resp_payload, &record.response) {
        (_, None) => why.push("there is no response".to_owned()),
        (Payload::Unparseable(e), _) => why.push(e.clone()),
        (Payload::Empty, _) => why.push("response body is empty".to_owned()),
        _ => {}
    }
    if why.is_empty() || recognise::path_protocol(&req.path).is_none() {
        why.push(format!(
            "{} {} is not a known LLM endpoint and the bodies match no known protocol \
             (looked for {})",
            req.method,
            req.path,
            recognise::SHAPES_LOOKED_FOR
        ));
    }
    problems.extend(why.iter().cloned());
    view.reason = Some(why.join("; "));
    view.protocol = Protocol::Unknown;
    // Nothing was recognised: whatever pointed somewhere was outweighed by unreadable bodies.
    let pointed = std::mem::take(&mut view.recognised_from);
    view.overruled.splice(0..0, pointed);
    view.problems = problems;
    view
}

#[cfg(test)]
mod tests;
