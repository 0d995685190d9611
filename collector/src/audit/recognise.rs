//! The one place that decides which protocol an exchange spoke, and says from what.
//!
//! Four kinds of evidence are read: the response body's shape (what the server actually spoke),
//! the request body's shape, protocol headers and the response's framing (`content-type`), and the
//! path. The bodies decide: a response shape wins over everything; a request shape that fits one
//! protocol only wins over the path; the path (or, failing it, the framing) only chooses between
//! the protocols a request shape fits. Every piece of evidence ends up in the view, in
//! `recognised_from` when it agrees with the choice (the deciding one first) and in `overruled`
//! when it pointed elsewhere.

use serde_json::Value;

use super::{Evidence, EvidenceSource, Payload, Protocol, StreamFormat};
use crate::record::{header, CaptureRecord};

/// What the recogniser looks for, for the `reason` of an unknown exchange.
pub const SHAPES_LOOKED_FOR: &str = "a request with \"messages\", \"contents\", \"prompt\", \
    \"input\", \"query\" or \"question\", or a response with \"choices\", \"output\", \"content\", \
    \"candidates\", \"done\" or a \"response\"/\"answer\"/\"output\"/\"text\" string";

/// The top-level answer keys of a generic prompt/response JSON, in the order they are tried.
pub const GENERIC_ANSWER_KEYS: &[&str] = &["response", "answer", "output", "text"];
/// The top-level question keys of a generic prompt/response JSON, in the order they are tried.
pub const GENERIC_QUESTION_KEYS: &[&str] = &["prompt", "query", "question", "input"];

/// The recogniser's verdict.
#[derive(Debug)]
pub struct Recognition {
    /// The protocol, `None` when nothing points to one.
    pub protocol: Option<Protocol>,
    /// The evidence that agrees with it, the deciding piece first.
    pub from: Vec<Evidence>,
    /// The evidence that pointed elsewhere.
    pub overruled: Vec<Evidence>,
}

/// The protocol a request path names, if any.
pub fn path_protocol(path: &str) -> Option<Protocol> {
    let p = path.trim_end_matches('/');
    if p.ends_with(":generateContent") || p.ends_with(":streamGenerateContent") {
        Some(Protocol::Gemini)
    } else if p.ends_with("/chat/completions") {
        Some(Protocol::OpenAiChat)
    } else if p.ends_with("/completions") {
        Some(Protocol::OpenAiCompletions)
    } else if p.ends_with("/responses") {
        Some(Protocol::OpenAiResponses)
    } else if p.ends_with("/messages") && !p.contains("/threads/") {
        Some(Protocol::AnthropicMessages)
    } else if p.ends_with("/api/generate") {
        Some(Protocol::OllamaGenerate)
    } else if p.ends_with("/api/chat") {
        Some(Protocol::OllamaChat)
    } else {
        None
    }
}

/// Whether `protocol` frames streamed answers as `format`.
fn speaks(protocol: Protocol, format: StreamFormat) -> bool {
    match format {
        StreamFormat::Ndjson => matches!(
            protocol,
            Protocol::OllamaGenerate | Protocol::OllamaChat | Protocol::Generic
        ),
        StreamFormat::JsonArray => matches!(protocol, Protocol::Gemini | Protocol::Generic),
        StreamFormat::Sse => !matches!(protocol, Protocol::OllamaGenerate | Protocol::OllamaChat),
    }
}

/// The shape of one response object (a whole body, or one frame of a stream).
fn object_shape(v: &Value) -> Option<(Protocol, String)> {
    let obj = v.as_object()?;
    let s = |k: &str| obj.get(k).and_then(Value::as_str);
    if let Some(o) = s("object") {
        let p = match o {
            "chat.completion" | "chat.completion.chunk" => Some(Protocol::OpenAiChat),
            "text_completion" => Some(Protocol::OpenAiCompletions),
            "response" => Some(Protocol::OpenAiResponses),
            _ => None,
        };
        if let Some(p) = p {
            return Some((p, format!("\"object\" is \"{o}\"")));
        }
    }
    if let Some(t) = s("type") {
        if t == "message" || t == "message_start" {
            return Some((Protocol::AnthropicMessages, format!("\"type\" is \"{t}\"")));
        }
        if t.starts_with("response.") {
            return Some((Protocol::OpenAiResponses, format!("\"type\" is \"{t}\"")));
        }
    }
    for key in ["candidates", "usageMetadata", "promptFeedback"] {
        if obj.get(key).is_some_and(|c| c.is_array() || c.is_object()) {
            return Some((Protocol::Gemini, format!("has \"{key}\"")));
        }
    }
    if obj.get("done").is_some_and(Value::is_boolean) {
        if obj.get("message").is_some_and(Value::is_object) {
            return Some((
                Protocol::OllamaChat,
                "has \"message\" and a boolean \"done\"".to_owned(),
            ));
        }
        if obj.get("response").is_some_and(Value::is_string) {
            return Some((
                Protocol::OllamaGenerate,
                "has a \"response\" string and a boolean \"done\"".to_owned(),
            ));
        }
    }
    GENERIC_ANSWER_KEYS
        .iter()
        .find(|k| obj.get(**k).is_some_and(Value::is_string))
        .map(|k| (Protocol::Generic, format!("\"{k}\" is a string")))
}

/// The response body's shape: from the document, or from the first frames of a stream.
fn response_shape(resp: &Payload) -> Option<(Protocol, String)> {
    match resp {
        Payload::Json(v) => object_shape(v),
        Payload::Stream(stream) => stream
            .all()
            .filter_map(|(f, _)| Some((f, serde_json::from_str::<Value>(&f.data).ok()?)))
            .take(5)
            .enumerate()
            .find_map(|(i, (f, v))| {
                let (p, what) = object_shape(&v)?;
                let event = if f.event.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", f.event)
                };
                Some((
                    p,
                    format!("{} {}{event}: {what}", stream.format.frame_name(), i + 1),
                ))
            }),
        _ => None,
    }
}

/// What a request body's shape says.
struct RequestShape {
    /// The protocol it fits best.
    guess: Protocol,
    /// Every protocol it fits.
    fits: &'static [Protocol],
    detail: String,
}

const CHAT_FAMILY: &[Protocol] = &[
    Protocol::OpenAiChat,
    Protocol::OllamaChat,
    Protocol::AnthropicMessages,
];
const PROMPT_FAMILY: &[Protocol] = &[
    Protocol::OpenAiCompletions,
    Protocol::OllamaGenerate,
    Protocol::Generic,
];

/// Keys only Ollama's native API sends.
const OLLAMA_KEYS: &[&str] = &[
    "options",
    "keep_alive",
    "think",
    "images",
    "raw",
    "template",
];
/// Keys only OpenAI's completions API sends beside a `prompt`.
const COMPLETIONS_KEYS: &[&str] = &[
    "max_tokens",
    "logprobs",
    "echo",
    "best_of",
    "stream_options",
    "logit_bias",
    "presence_penalty",
    "frequency_penalty",
];

fn request_shape(v: &Value) -> Option<RequestShape> {
    let obj = v.as_object()?;
    let has = |k: &str| obj.contains_key(k);
    if obj.get("contents").is_some_and(Value::is_array) {
        return Some(RequestShape {
            guess: Protocol::Gemini,
            fits: &[Protocol::Gemini],
            detail: "\"contents\" is an array".to_owned(),
        });
    }
    if let Some(messages) = obj.get("messages").and_then(Value::as_array) {
        let ollama_message = messages
            .iter()
            .any(|m| m.get("images").is_some_and(Value::is_array) || m.get("tool_name").is_some());
        let (guess, why) = if has("system") {
            (Protocol::AnthropicMessages, ", with a top-level \"system\"")
        } else if ollama_message || OLLAMA_KEYS.iter().any(|k| has(k)) {
            (Protocol::OllamaChat, ", with Ollama's own keys")
        } else {
            (Protocol::OpenAiChat, "")
        };
        return Some(RequestShape {
            guess,
            fits: CHAT_FAMILY,
            detail: format!("\"messages\" is an array{why}"),
        });
    }
    if let Some(prompt) = obj.get("prompt").filter(|p| p.is_string() || p.is_array()) {
        let (guess, why) = if OLLAMA_KEYS.iter().any(|k| has(k)) || has("system") {
            (Protocol::OllamaGenerate, ", with Ollama's own keys")
        } else if COMPLETIONS_KEYS.iter().any(|k| has(k)) || prompt.is_array() {
            (
                Protocol::OpenAiCompletions,
                ", with OpenAI completions keys",
            )
        } else {
            (Protocol::Generic, "")
        };
        return Some(RequestShape {
            guess,
            fits: PROMPT_FAMILY,
            detail: format!("has \"prompt\"{why}"),
        });
    }
    if has("input") && has("model") {
        return Some(RequestShape {
            guess: Protocol::OpenAiResponses,
            fits: &[Protocol::OpenAiResponses, Protocol::Generic],
            detail: "has \"input\" and \"model\"".to_owned(),
        });
    }
    GENERIC_QUESTION_KEYS
        .iter()
        .find(|k| obj.get(**k).is_some_and(Value::is_string))
        .map(|k| RequestShape {
            guess: Protocol::Generic,
            fits: &[Protocol::Generic],
            detail: format!("\"{k}\" is a string"),
        })
}

/// A protocol's own request header, if one is present.
fn header_protocol(record: &CaptureRecord) -> Option<(Protocol, &'static str)> {
    let headers = &record.request.headers;
    if header(headers, "anthropic-version").is_some() {
        Some((Protocol::AnthropicMessages, "anthropic-version"))
    } else if header(headers, "x-goog-api-client").is_some() {
        Some((Protocol::Gemini, "x-goog-api-client"))
    } else if header(headers, "x-goog-api-key").is_some() {
        Some((Protocol::Gemini, "x-goog-api-key"))
    } else {
        None
    }
}

fn evidence(source: EvidenceSource, suggests: Protocol, detail: String) -> Evidence {
    Evidence {
        source,
        suggests,
        detail,
    }
}

/// Chooses the protocol of `record`, whose bodies are already decoded and framed.
pub(super) fn recognise(record: &CaptureRecord, req: &Payload, resp: &Payload) -> Recognition {
    let path = path_protocol(&record.request.path).map(|p| {
        let query = &record.request.query;
        let shown = if query.is_empty() {
            record.request.path.clone()
        } else {
            format!("{}?{query}", record.request.path)
        };
        (p, format!("request path {shown}"))
    });
    let response = response_shape(resp).map(|(p, d)| (p, format!("response {d}")));
    let request = match req {
        Payload::Json(v) => request_shape(v),
        _ => None,
    };
    let by_header = header_protocol(record);
    let header_says = by_header
        .as_ref()
        .filter(|(p, _)| request.as_ref().is_none_or(|r| r.fits.contains(p)));
    let framing = match resp {
        Payload::Stream(s) => Some(s.format),
        _ => None,
    };

    // When the best fit of a request shape cannot have framed the answer so, the framing picks
    // another protocol that fits (an NDJSON answer to a `messages` request is Ollama's).
    let by_framing = |fits: &[Protocol], guess: Protocol| {
        let f = framing.filter(|f| !speaks(guess, *f))?;
        fits.iter()
            .copied()
            .find(|p| speaks(*p, f) && *p != Protocol::Generic)
    };
    let decided: Option<(Protocol, EvidenceSource)> = if let Some((p, _)) = &response {
        Some((*p, EvidenceSource::ResponseBody))
    } else if let Some((p, _)) = header_says {
        Some((*p, EvidenceSource::Header))
    } else if let Some(shape) = &request {
        if shape.fits.len() == 1 {
            Some((shape.guess, EvidenceSource::RequestBody))
        } else if let Some((p, _)) = path.as_ref().filter(|(p, _)| shape.fits.contains(p)) {
            Some((*p, EvidenceSource::Path))
        } else if let Some(p) = by_framing(shape.fits, shape.guess) {
            Some((p, EvidenceSource::ContentType))
        } else {
            Some((shape.guess, EvidenceSource::RequestBody))
        }
    } else {
        path.as_ref().map(|(p, _)| (*p, EvidenceSource::Path))
    };
    let Some((protocol, deciding)) = decided else {
        return Recognition {
            protocol: None,
            from: Vec::new(),
            overruled: Vec::new(),
        };
    };

    // Every piece of evidence, with what it suggests and whether it fits the choice.
    let mut all: Vec<(Evidence, bool)> = Vec::new();
    if let Some((p, d)) = response {
        all.push((evidence(EvidenceSource::ResponseBody, p, d), p == protocol));
    }
    if let Some((p, name)) = by_header {
        let detail = format!("request header {name}");
        all.push((evidence(EvidenceSource::Header, p, detail), p == protocol));
    }
    if let Some(shape) = &request {
        let fits = shape.fits.contains(&protocol);
        let suggests = if fits { protocol } else { shape.guess };
        let detail = format!("request {}", shape.detail);
        all.push((
            evidence(EvidenceSource::RequestBody, suggests, detail),
            fits,
        ));
    }
    if let (Some(f), Some(response)) = (framing, &record.response) {
        let ct = header(&response.headers, "content-type").unwrap_or("no content-type");
        let detail = format!("response {ct}, framed as {}", frame_kind(f));
        let suggests = match f {
            _ if speaks(protocol, f) => Some(protocol),
            StreamFormat::Ndjson => Some(match &request {
                Some(r) if r.fits == CHAT_FAMILY => Protocol::OllamaChat,
                _ => Protocol::OllamaGenerate,
            }),
            StreamFormat::JsonArray => Some(Protocol::Gemini),
            StreamFormat::Sse => None,
        };
        if let Some(s) = suggests {
            all.push((
                evidence(EvidenceSource::ContentType, s, detail),
                s == protocol,
            ));
        }
    }
    if let Some((p, d)) = path {
        all.push((evidence(EvidenceSource::Path, p, d), p == protocol));
    }

    let (mut from, overruled): (Vec<_>, Vec<_>) = all.into_iter().partition(|(_, fits)| *fits);
    if let Some(i) = from.iter().position(|(e, _)| e.source == deciding) {
        let first = from.remove(i);
        from.insert(0, first);
    }
    Recognition {
        protocol: Some(protocol),
        from: from.into_iter().map(|(e, _)| e).collect(),
        overruled: overruled.into_iter().map(|(e, _)| e).collect(),
    }
}

fn frame_kind(f: StreamFormat) -> &'static str {
    match f {
        StreamFormat::Sse => "server-sent events",
        StreamFormat::Ndjson => "NDJSON",
        StreamFormat::JsonArray => "a streamed JSON array",
    }
}
