//! One stored capture as one OTLP span: the OpenTelemetry GenAI semantic conventions
//! (`gen_ai.*`), the OpenInference attributes Phoenix and others render (`llm.*`, `input.*`,
//! `output.*`, `retrieval.documents`), HTTP client attributes, and the capture's own
//! (`truthtable.*`). Everything comes from the record as stored and its audit view; the record's
//! headers are left out except `user-agent` and the trace context, and its query string is the
//! redacted one the filter stored, so nothing the filter redacted reaches a span.

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, ArrayValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::{Event, SpanKind};
use opentelemetry_proto::tonic::trace::v1::{status, Span, Status};
use serde_json::{json, Value};

use super::config::NonLlm;
use super::trace_context::span_context;
use crate::audit::{AuditView, ContextSource, Protocol, ToolCall};
use crate::record::{header, CaptureRecord, Outcome};

/// Span flag bits saying whether the parent is remote (OTLP `SpanFlags`).
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;

/// What to put in spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanOptions {
    /// What becomes of exchanges that are not LLM calls.
    pub non_llm: NonLlm,
    /// Longest string value, in characters (`None`: no limit).
    pub value_limit: Option<usize>,
    /// Gaps between content longer than this are stall events.
    pub stall_threshold_ms: u64,
}

/// What became of one stored capture.
#[derive(Debug, Clone, PartialEq)]
pub enum Converted {
    /// Its span.
    Span(Box<Span>),
    /// Not an LLM call, and such exchanges are not exported.
    Skipped,
    /// The stored line no longer reads as a v1 record (it did when it was stored).
    Unreadable(String),
}

/// The span of the stored record `raw`.
pub fn capture_span(raw: &str, options: &SpanOptions) -> Converted {
    let record = match CaptureRecord::parse_line(raw) {
        Ok(r) => r,
        Err(e) => return Converted::Unreadable(e.to_string()),
    };
    let view = crate::digest::view_with(&record, options.stall_threshold_ms);
    if view.protocol == Protocol::Unknown && options.non_llm == NonLlm::Skip {
        return Converted::Skipped;
    }
    Converted::Span(Box::new(span(&record, &view, options)))
}

/// Attributes under construction, with the length limit applied to every string.
struct Attrs {
    list: Vec<KeyValue>,
    limit: Option<usize>,
    truncated: bool,
}

fn any(value: any_value::Value) -> Option<AnyValue> {
    Some(AnyValue { value: Some(value) })
}

impl Attrs {
    /// `s` cut to the limit (at a character boundary).
    fn cut(&mut self, s: &str) -> String {
        match self.limit {
            Some(limit) => match s.char_indices().nth(limit) {
                Some((at, _)) => {
                    self.truncated = true;
                    s.get(..at).unwrap_or(s).to_owned()
                }
                None => s.to_owned(),
            },
            None => s.to_owned(),
        }
    }

    fn put(&mut self, key: impl Into<String>, value: Option<AnyValue>) {
        self.list.push(KeyValue {
            key: key.into(),
            value,
            ..Default::default()
        });
    }

    fn str(&mut self, key: impl Into<String>, value: &str) {
        let v = self.cut(value);
        self.put(key, any(any_value::Value::StringValue(v)));
    }

    fn opt_str(&mut self, key: &str, value: Option<&str>) {
        if let Some(v) = value {
            self.str(key, v);
        }
    }

    fn int(&mut self, key: &str, value: i64) {
        self.put(key, any(any_value::Value::IntValue(value)));
    }

    fn double(&mut self, key: &str, value: f64) {
        self.put(key, any(any_value::Value::DoubleValue(value)));
    }

    fn bool(&mut self, key: &str, value: bool) {
        self.put(key, any(any_value::Value::BoolValue(value)));
    }

    fn strs(&mut self, key: &str, values: &[String]) {
        let values = values
            .iter()
            .map(|v| AnyValue {
                value: Some(any_value::Value::StringValue(self.cut(v))),
            })
            .collect();
        self.put(
            key,
            any(any_value::Value::ArrayValue(ArrayValue { values })),
        );
    }
}

/// `gen_ai.operation.name` of each protocol.
fn operation(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::OpenAiChat
        | Protocol::OpenAiResponses
        | Protocol::AnthropicMessages
        | Protocol::OllamaChat => "chat",
        Protocol::OpenAiCompletions | Protocol::OllamaGenerate | Protocol::Generic => {
            "text_completion"
        }
        Protocol::Gemini => "generate_content",
        Protocol::Unknown => "http",
    }
}

/// The provider as `gen_ai.provider.name`, the older `gen_ai.system`, and OpenInference's
/// `llm.provider`, from the API the exchange spoke (and, for Azure and Vertex AI, where it went).
pub(crate) fn provider(
    protocol: Protocol,
    record: &CaptureRecord,
) -> Option<(&'static str, &'static str, Option<&'static str>)> {
    let host = record.request.authority.to_ascii_lowercase();
    match protocol {
        Protocol::OpenAiChat | Protocol::OpenAiCompletions | Protocol::OpenAiResponses => {
            if host.contains(".openai.azure.com") {
                Some(("azure.ai.openai", "az.ai.openai", Some("azure")))
            } else {
                Some(("openai", "openai", Some("openai")))
            }
        }
        Protocol::AnthropicMessages => Some(("anthropic", "anthropic", Some("anthropic"))),
        Protocol::Gemini => {
            if record.request.path.contains("/publishers/google/") {
                Some(("gcp.vertex_ai", "vertex_ai", Some("google")))
            } else {
                Some(("gcp.gemini", "gemini", Some("google")))
            }
        }
        Protocol::OllamaGenerate | Protocol::OllamaChat => Some(("ollama", "ollama", None)),
        Protocol::Generic | Protocol::Unknown => None,
    }
}

/// Nanoseconds since the Unix epoch of an RFC 3339 timestamp (the record's `started_at`).
pub fn unix_nanos(timestamp: &str) -> Option<u64> {
    use time::format_description::well_known::Rfc3339;
    // The contract allows a space or a lowercase `t`/`z`; the parser wants `T` and `Z`.
    let mut normal: Vec<u8> = timestamp.as_bytes().to_vec();
    if let Some(sep) = normal.get_mut(10) {
        if matches!(*sep, b' ' | b't') {
            *sep = b'T';
        }
    }
    if let Some(z) = normal.last_mut() {
        if *z == b'z' {
            *z = b'Z';
        }
    }
    let normal = String::from_utf8(normal).ok()?;
    let at = time::OffsetDateTime::parse(&normal, &Rfc3339).ok()?;
    u64::try_from(at.unix_timestamp_nanos()).ok()
}

fn millis_to_nanos(ms: f64) -> u64 {
    if ms.is_finite() && ms > 0.0 {
        (ms * 1_000_000.0).round().min(u64::MAX as f64) as u64
    } else {
        0
    }
}

/// `host` and `port` of an `:authority`.
fn host_port(authority: &str) -> (&str, Option<i64>) {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        match rest.split_once(']') {
            Some((h, tail)) => (h, tail.strip_prefix(':')),
            None => (authority, None),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            _ => (authority, None),
        }
    };
    (host, port.and_then(|p| p.parse().ok()))
}

/// A tool call's arguments as a value when they are JSON, else as the text they are.
fn arguments(call: &ToolCall) -> Value {
    serde_json::from_str(&call.arguments).unwrap_or_else(|_| Value::String(call.arguments.clone()))
}

/// The span of `record`, whose audit view is `view`.
pub fn span(record: &CaptureRecord, view: &AuditView, options: &SpanOptions) -> Span {
    let mut a = Attrs {
        list: Vec::with_capacity(48),
        limit: options.value_limit,
        truncated: false,
    };
    let llm = view.protocol != Protocol::Unknown;
    let req = &record.request;

    // The capture itself.
    a.str("truthtable.capture.id", &record.id);
    a.str("truthtable.capture.outcome", record.outcome.as_str());
    a.str("truthtable.capture.detail", &record.detail);
    if view.body_truncated {
        a.bool("truthtable.capture.body_truncated", true);
    }
    a.str("truthtable.audit.protocol", view.protocol.as_str());
    if let Some(reason) = &view.reason {
        a.str("truthtable.audit.reason", reason);
    }
    if !view.problems.is_empty() {
        a.strs("truthtable.audit.problems", &view.problems);
    }

    // HTTP client attributes.
    let (host, port) = host_port(&req.authority);
    a.str("http.request.method", &req.method);
    a.str("url.scheme", &req.scheme);
    a.str("url.path", &req.path);
    if !req.query.is_empty() {
        a.str("url.query", &req.query);
    }
    let query = if req.query.is_empty() {
        String::new()
    } else {
        format!("?{}", req.query)
    };
    a.str(
        "url.full",
        &format!("{}://{}{}{query}", req.scheme, req.authority, req.path),
    );
    a.str("server.address", host);
    if let Some(port) = port {
        a.int("server.port", port);
    }
    a.opt_str("user_agent.original", header(&req.headers, "user-agent"));
    a.int(
        "http.request.body.size",
        i64::try_from(req.body.size).unwrap_or(i64::MAX),
    );
    if let Some(resp) = &record.response {
        a.int("http.response.status_code", i64::from(resp.status));
        a.int(
            "http.response.body.size",
            i64::try_from(resp.body.size).unwrap_or(i64::MAX),
        );
    }

    // Failures: the exchange broke (upstream_failed), or the model's server answered an error.
    let status = record.response.as_ref().map(|r| r.status);
    let failure = match (record.outcome, status) {
        (Outcome::UpstreamFailed, _) => Some((record.detail.clone(), record.detail.clone())),
        (_, Some(s)) if s >= 400 => Some((s.to_string(), format!("HTTP {s}"))),
        _ => None,
    };
    if let Some((error_type, _)) = &failure {
        a.str("error.type", error_type);
    }

    let name = if llm {
        gen_ai(&mut a, record, view)
    } else {
        req.method.clone()
    };
    if a.truncated {
        a.bool("truthtable.span.attributes_truncated", true);
    }

    let start = unix_nanos(&record.started_at).unwrap_or_default();
    let end = start.saturating_add(millis_to_nanos(record.duration_ms));
    let mut events = Vec::new();
    if let Some(first_byte) = record.response.as_ref().and_then(|r| r.first_byte_ms) {
        events.push(Event {
            time_unix_nano: start.saturating_add(millis_to_nanos(first_byte)),
            name: "truthtable.capture.first_byte".to_owned(),
            ..Default::default()
        });
    }
    for stall in view.timing.iter().flat_map(|t| &t.stalls) {
        let mut ea = Attrs {
            list: Vec::new(),
            limit: options.value_limit,
            truncated: false,
        };
        ea.double("truthtable.stall.gap_ms", stall.gap_ms);
        ea.int(
            "truthtable.stall.answer_chars",
            i64::try_from(stall.answer_chars).unwrap_or(i64::MAX),
        );
        ea.str("truthtable.stall.before", &stall.before);
        events.push(Event {
            time_unix_nano: start.saturating_add(millis_to_nanos(stall.at_ms)),
            name: "truthtable.stream.stall".to_owned(),
            attributes: ea.list,
            ..Default::default()
        });
    }
    if record.outcome == Outcome::ClientAborted {
        let mut ea = Attrs {
            list: Vec::new(),
            limit: options.value_limit,
            truncated: false,
        };
        ea.str("truthtable.capture.detail", &record.detail);
        ea.bool("truthtable.audit.answer_complete", view.answer_complete);
        events.push(Event {
            time_unix_nano: end,
            name: "truthtable.capture.client_aborted".to_owned(),
            attributes: ea.list,
            ..Default::default()
        });
    }

    let context = span_context(&record.id, &req.headers);
    let (parent_span_id, trace_state, flags) = match &context.parent {
        Some(p) => (
            p.span_id.to_vec(),
            p.state.clone(),
            u32::from(p.flags) | HAS_IS_REMOTE | IS_REMOTE,
        ),
        None => (Vec::new(), String::new(), HAS_IS_REMOTE),
    };
    Span {
        trace_id: context.trace_id.to_vec(),
        span_id: context.span_id.to_vec(),
        trace_state,
        parent_span_id,
        flags,
        name,
        kind: SpanKind::Client as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        attributes: a.list,
        events,
        status: failure.map(|(_, message)| Status {
            message,
            code: status::StatusCode::Error as i32,
        }),
        ..Default::default()
    }
}

/// The GenAI server timings, in seconds: time to first token, and time per output token after
/// the first (from the first to the last content-bearing chunk, over the output tokens but one).
fn gen_ai_timing(a: &mut Attrs, t: &crate::audit::timing::Timing, output_tokens: Option<u64>) {
    if let Some(ttft) = t.ttft_ms {
        a.double("gen_ai.server.time_to_first_token", ttft / 1000.0);
    }
    if let (Some(n), Some(first), Some(last)) = (output_tokens, t.points.first(), t.points.last()) {
        if n > 1 && last.0 > first.0 {
            let secs = (last.0 - first.0) as f64 / 1e6;
            a.double("gen_ai.server.time_per_output_token", secs / (n - 1) as f64);
        }
    }
}

/// The GenAI and OpenInference attributes of an LLM call; returns the span name
/// (`{operation} {model}`).
fn gen_ai(a: &mut Attrs, record: &CaptureRecord, view: &AuditView) -> String {
    let op = operation(view.protocol);
    a.str("gen_ai.operation.name", op);
    if let Some((name, system, openinference)) = provider(view.protocol, record) {
        a.str("gen_ai.provider.name", name);
        a.str("gen_ai.system", system);
        a.opt_str("llm.provider", openinference);
    }
    a.opt_str("gen_ai.request.model", view.request_model.as_deref());
    a.opt_str("gen_ai.response.model", view.response_model.as_deref());
    let reasons: Vec<String> = if view.choices.is_empty() {
        view.finish_reason.iter().cloned().collect()
    } else {
        view.choices
            .iter()
            .filter_map(|c| c.finish_reason.clone())
            .collect()
    };
    if !reasons.is_empty() {
        a.strs("gen_ai.response.finish_reasons", &reasons);
    }
    let (input, output) = (view.usage.input_tokens, view.usage.output_tokens);
    let tokens = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    if let Some(n) = input {
        a.int("gen_ai.usage.input_tokens", tokens(n));
        a.int("llm.token_count.prompt", tokens(n));
    }
    if let Some(n) = output {
        a.int("gen_ai.usage.output_tokens", tokens(n));
        a.int("llm.token_count.completion", tokens(n));
    }
    if let (Some(i), Some(o)) = (input, output) {
        a.int("llm.token_count.total", tokens(i.saturating_add(o)));
    }
    a.bool("truthtable.audit.streamed", view.streamed);
    a.bool("truthtable.audit.answer_complete", view.answer_complete);
    if let Some(t) = &view.timing {
        gen_ai_timing(a, t, output);
    }

    // What the model was given: system texts and tool results in request order, then the
    // question. Retrieved documents go to `retrieval.documents`.
    let mut input_messages = Vec::new();
    let mut oi_index = 0;
    for item in &view.context {
        let text = a.cut(&item.text);
        let (role, part) = match item.source {
            ContextSource::System => ("system", json!({"type": "text", "content": text})),
            ContextSource::Tool => {
                let mut part = json!({"type": "tool_call_response", "response": text});
                if let Some(name) = &item.name {
                    part["id"] = json!(name);
                }
                ("tool", part)
            }
            ContextSource::Document => continue,
        };
        input_messages.push(json!({"role": role, "parts": [part]}));
        let prefix = format!("llm.input_messages.{oi_index}.message");
        a.str(format!("{prefix}.role"), role);
        a.str(format!("{prefix}.content"), &item.text);
        if let (ContextSource::Tool, Some(name)) = (item.source, &item.name) {
            a.str(format!("{prefix}.name"), name);
        }
        oi_index += 1;
    }
    if let Some(q) = &view.question {
        let text = a.cut(q);
        input_messages.push(json!({"role": "user", "parts": [{"type": "text", "content": text}]}));
        let prefix = format!("llm.input_messages.{oi_index}.message");
        a.str(format!("{prefix}.role"), "user");
        a.str(format!("{prefix}.content"), q);
    }
    if !input_messages.is_empty() {
        let text = Value::Array(input_messages).to_string();
        a.put(
            "gen_ai.input.messages",
            any(any_value::Value::StringValue(text)),
        );
    }
    if let Some(q) = &view.question {
        a.str("input.value", q);
        a.str("input.mime_type", "text/plain");
    }

    let documents = view
        .context
        .iter()
        .filter(|c| c.source == ContextSource::Document);
    for (i, doc) in documents.enumerate() {
        a.str(
            format!("retrieval.documents.{i}.document.content"),
            &doc.text,
        );
        if let Some(name) = &doc.name {
            a.str(format!("retrieval.documents.{i}.document.id"), name);
        }
    }

    // What it answered: each choice, or the one answer.
    let choices: Vec<(Option<&String>, &[ToolCall], Option<&String>)> = if view.choices.is_empty() {
        if view.answer.is_some() || !view.tool_calls.is_empty() {
            vec![(
                view.answer.as_ref(),
                view.tool_calls.as_slice(),
                view.finish_reason.as_ref(),
            )]
        } else {
            Vec::new()
        }
    } else {
        view.choices
            .iter()
            .map(|c| {
                (
                    c.answer.as_ref(),
                    c.tool_calls.as_slice(),
                    c.finish_reason.as_ref(),
                )
            })
            .collect()
    };
    let mut output_messages = Vec::new();
    for (i, (answer, calls, finish)) in choices.iter().enumerate() {
        let prefix = format!("llm.output_messages.{i}.message");
        a.str(format!("{prefix}.role"), "assistant");
        let mut parts = Vec::new();
        if let Some(text) = answer {
            parts.push(json!({"type": "text", "content": a.cut(text)}));
            a.str(format!("{prefix}.content"), text);
        }
        for (j, call) in calls.iter().enumerate() {
            let mut part =
                json!({"type": "tool_call", "name": call.name, "arguments": arguments(call)});
            if let Some(id) = &call.id {
                part["id"] = json!(id);
            }
            parts.push(part);
            let tc = format!("{prefix}.tool_calls.{j}.tool_call");
            a.opt_str(&format!("{tc}.id"), call.id.as_deref());
            a.str(format!("{tc}.function.name"), &call.name);
            a.str(format!("{tc}.function.arguments"), &call.arguments);
        }
        let mut message = json!({"role": "assistant", "parts": parts});
        if let Some(f) = finish {
            message["finish_reason"] = json!(f);
        }
        output_messages.push(message);
    }
    if !output_messages.is_empty() {
        let text = Value::Array(output_messages).to_string();
        a.put(
            "gen_ai.output.messages",
            any(any_value::Value::StringValue(text)),
        );
    }
    match (&view.answer, view.tool_calls.is_empty()) {
        (Some(answer), _) => {
            a.str("output.value", answer);
            a.str("output.mime_type", "text/plain");
        }
        (None, false) => {
            let calls: Vec<Value> = view
                .tool_calls
                .iter()
                .map(|c| json!({"id": c.id, "name": c.name, "arguments": arguments(c)}))
                .collect();
            a.str("output.value", &Value::Array(calls).to_string());
            a.str("output.mime_type", "application/json");
        }
        (None, true) => {}
    }

    a.str("openinference.span.kind", "LLM");
    a.opt_str("llm.model_name", view.model.as_deref());
    match view.request_model.as_deref().or(view.model.as_deref()) {
        Some(model) => format!("{op} {model}"),
        None => op.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{BodyEncoding, CapturedBody, CapturedRequest, CapturedResponse};

    fn body(data: &str) -> CapturedBody {
        CapturedBody {
            encoding: BodyEncoding::Utf8,
            data: data.to_owned(),
            size: data.len() as u64,
            truncated: false,
        }
    }

    fn record(
        path: &str,
        request: &Value,
        content_type: &str,
        response: &str,
        outcome: Outcome,
    ) -> CaptureRecord {
        CaptureRecord {
            id: "9f1c2d3e-0001".into(),
            started_at: "2026-11-25T16:10:40.186123Z".into(),
            duration_ms: 1804.25,
            outcome,
            detail: "via_upstream".into(),
            request: CapturedRequest {
                method: "POST".into(),
                scheme: "https".into(),
                authority: "api.openai.com:443".into(),
                path: path.into(),
                query: "api-key=[REDACTED]".into(),
                headers: vec![
                    ("content-type".into(), "application/json".into()),
                    ("authorization".into(), "[REDACTED]".into()),
                    ("user-agent".into(), "OpenAI/Python 3.51.0".into()),
                ],
                body: body(&request.to_string()),
            },
            response: Some(CapturedResponse {
                status: 200,
                headers: vec![("content-type".into(), content_type.into())],
                body: body(response),
                first_byte_ms: Some(212.5),
                chunks: Vec::new(),
                chunks_more: None,
            }),
        }
    }

    fn chat_request() -> Value {
        json!({"model": "gpt-4o", "stream": true, "messages": [
            {"role": "system", "content": "Answer only from the passages."},
            {"role": "user", "content": "What is the capital of France?"}],
            "documents": [{"title": "france.txt", "text": "Paris is the capital of France."}]})
    }

    fn chat_stream() -> String {
        let chunk = |delta: Value, finish: Value| {
            format!(
                "data: {}\n\n",
                json!({"object": "chat.completion.chunk", "model": "gpt-4o-2024-08-06",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            )
        };
        let usage = json!({"object": "chat.completion.chunk", "model": "gpt-4o-2024-08-06", "choices": [],
            "usage": {"prompt_tokens": 31, "completion_tokens": 2}});
        format!(
            "{}{}{}data: {usage}\n\ndata: [DONE]\n\n",
            chunk(
                json!({"role": "assistant", "content": "Paris"}),
                Value::Null
            ),
            chunk(json!({"content": "."}), Value::Null),
            chunk(json!({}), json!("stop")),
        )
    }

    const OPTIONS: SpanOptions = SpanOptions {
        non_llm: NonLlm::Http,
        value_limit: Some(65_536),
        stall_threshold_ms: 5_000,
    };

    fn to_span(record: &CaptureRecord, options: &SpanOptions) -> Span {
        let raw = record_json(record);
        match capture_span(&raw, options) {
            Converted::Span(s) => *s,
            other => panic!("expected a span, got {other:?}"),
        }
    }

    /// The record as the filter would have sent it.
    fn record_json(r: &CaptureRecord) -> String {
        let side = |b: &CapturedBody| json!({"encoding": "utf8", "data": b.data, "size": b.size, "truncated": b.truncated});
        json!({
            "schema": "truthtable.capture.v1", "id": r.id, "started_at": r.started_at,
            "duration_ms": r.duration_ms, "outcome": r.outcome.as_str(), "detail": r.detail,
            "request": {"method": r.request.method, "scheme": r.request.scheme, "authority": r.request.authority,
                "path": r.request.path, "query": r.request.query, "headers": r.request.headers,
                "body": side(&r.request.body)},
            "response": r.response.as_ref().map(|resp| json!({"status": resp.status, "headers": resp.headers,
                "body": side(&resp.body), "first_byte_ms": resp.first_byte_ms,
                "chunks": resp.chunks.iter().map(|c| [c.at_us, c.bytes]).collect::<Vec<_>>()})),
        })
        .to_string()
    }

    fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a any_value::Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref())
    }

    fn s<'a>(span: &'a Span, key: &str) -> &'a str {
        match attr(span, key) {
            Some(any_value::Value::StringValue(v)) => v,
            other => panic!("{key}: expected a string, got {other:?}"),
        }
    }

    fn i(span: &Span, key: &str) -> i64 {
        match attr(span, key) {
            Some(any_value::Value::IntValue(v)) => *v,
            other => panic!("{key}: expected an integer, got {other:?}"),
        }
    }

    #[test]
    fn a_streamed_chat_answer_carries_question_answer_model_tokens_and_outcome() {
        let r = record(
            "/v1/chat/completions",
            &chat_request(),
            "text/event-stream",
            &chat_stream(),
            Outcome::Complete,
        );
        let span = to_span(&r, &OPTIONS);
        assert_eq!(span.name, "chat gpt-4o");
        assert_eq!(span.kind, SpanKind::Client as i32);
        assert_eq!(s(&span, "gen_ai.operation.name"), "chat");
        assert_eq!(s(&span, "gen_ai.provider.name"), "openai");
        assert_eq!(s(&span, "gen_ai.system"), "openai");
        assert_eq!(s(&span, "gen_ai.request.model"), "gpt-4o");
        assert_eq!(s(&span, "gen_ai.response.model"), "gpt-4o-2024-08-06");
        assert_eq!(s(&span, "llm.model_name"), "gpt-4o-2024-08-06");
        assert_eq!(i(&span, "gen_ai.usage.input_tokens"), 31);
        assert_eq!(i(&span, "gen_ai.usage.output_tokens"), 2);
        assert_eq!(i(&span, "llm.token_count.prompt"), 31);
        assert_eq!(i(&span, "llm.token_count.completion"), 2);
        assert_eq!(i(&span, "llm.token_count.total"), 33);
        assert_eq!(s(&span, "openinference.span.kind"), "LLM");
        assert_eq!(s(&span, "input.value"), "What is the capital of France?");
        assert_eq!(s(&span, "input.mime_type"), "text/plain");
        assert_eq!(s(&span, "output.value"), "Paris.");
        assert_eq!(s(&span, "llm.input_messages.0.message.role"), "system");
        assert_eq!(
            s(&span, "llm.input_messages.0.message.content"),
            "Answer only from the passages."
        );
        assert_eq!(s(&span, "llm.input_messages.1.message.role"), "user");
        assert_eq!(s(&span, "llm.output_messages.0.message.role"), "assistant");
        assert_eq!(s(&span, "llm.output_messages.0.message.content"), "Paris.");
        assert_eq!(
            s(&span, "retrieval.documents.0.document.content"),
            "Paris is the capital of France."
        );
        assert_eq!(s(&span, "retrieval.documents.0.document.id"), "france.txt");
        let input: Value = serde_json::from_str(s(&span, "gen_ai.input.messages")).unwrap();
        assert_eq!(
            input,
            json!([
                {"role": "system", "parts": [{"type": "text", "content": "Answer only from the passages."}]},
                {"role": "user", "parts": [{"type": "text", "content": "What is the capital of France?"}]}
            ])
        );
        let output: Value = serde_json::from_str(s(&span, "gen_ai.output.messages")).unwrap();
        assert_eq!(
            output,
            json!([{"role": "assistant", "parts": [{"type": "text", "content": "Paris."}], "finish_reason": "stop"}])
        );
        match attr(&span, "gen_ai.response.finish_reasons") {
            Some(any_value::Value::ArrayValue(a)) => assert_eq!(
                a.values[0].value,
                Some(any_value::Value::StringValue("stop".into()))
            ),
            other => panic!("finish reasons: {other:?}"),
        }
        assert_eq!(s(&span, "truthtable.capture.id"), "9f1c2d3e-0001");
        assert_eq!(s(&span, "truthtable.capture.outcome"), "complete");
        assert_eq!(s(&span, "http.request.method"), "POST");
        assert_eq!(s(&span, "url.path"), "/v1/chat/completions");
        assert_eq!(i(&span, "http.response.status_code"), 200);
        assert_eq!(s(&span, "server.address"), "api.openai.com");
        assert_eq!(i(&span, "server.port"), 443);
        assert_eq!(s(&span, "user_agent.original"), "OpenAI/Python 3.51.0");
        assert!(matches!(
            attr(&span, "truthtable.audit.streamed"),
            Some(any_value::Value::BoolValue(true))
        ));
        assert_eq!(span.status, None, "a complete exchange is not an error");
    }

    #[test]
    fn start_and_duration_come_from_the_record() {
        let r = record(
            "/v1/chat/completions",
            &chat_request(),
            "text/event-stream",
            &chat_stream(),
            Outcome::Complete,
        );
        let span = to_span(&r, &OPTIONS);
        // 2026-11-25T16:10:40.186123Z
        assert_eq!(span.start_time_unix_nano, 1_795_623_040_186_123_000);
        assert_eq!(
            span.end_time_unix_nano - span.start_time_unix_nano,
            1_804_250_000
        );
        let first_byte = &span.events[0];
        assert_eq!(first_byte.name, "truthtable.capture.first_byte");
        assert_eq!(
            first_byte.time_unix_nano - span.start_time_unix_nano,
            212_500_000
        );
        assert_eq!(
            unix_nanos("2026-11-25 16:10:40.5z"),
            unix_nanos("2026-11-25T16:10:40.500Z")
        );
        assert_eq!(
            unix_nanos("2026-11-25T17:10:40+01:00"),
            unix_nanos("2026-11-25T16:10:40Z")
        );
    }

    #[test]
    fn a_tool_call_answer_is_an_output_message_with_its_arguments() {
        let response = json!({"object": "chat.completion", "model": "gpt-4o",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": null,
                "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 9}});
        let request = json!({"model": "gpt-4o", "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "tool_calls": [{"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_0", "content": "18C"},
            {"role": "user", "content": "And tomorrow?"}]});
        let r = record(
            "/v1/chat/completions",
            &request,
            "application/json",
            &response.to_string(),
            Outcome::Complete,
        );
        let span = to_span(&r, &OPTIONS);
        assert_eq!(
            s(
                &span,
                "llm.output_messages.0.message.tool_calls.0.tool_call.function.name"
            ),
            "get_weather"
        );
        assert_eq!(
            s(
                &span,
                "llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments"
            ),
            "{\"city\":\"Paris\"}"
        );
        assert_eq!(
            s(
                &span,
                "llm.output_messages.0.message.tool_calls.0.tool_call.id"
            ),
            "call_1"
        );
        assert_eq!(s(&span, "output.mime_type"), "application/json");
        let out: Value = serde_json::from_str(s(&span, "output.value")).unwrap();
        assert_eq!(out[0]["arguments"], json!({"city": "Paris"}));
        let output: Value = serde_json::from_str(s(&span, "gen_ai.output.messages")).unwrap();
        assert_eq!(
            output[0],
            json!({"role": "assistant", "finish_reason": "tool_calls", "parts": [
                {"type": "tool_call", "id": "call_1", "name": "get_weather", "arguments": {"city": "Paris"}}]})
        );
        let input: Value = serde_json::from_str(s(&span, "gen_ai.input.messages")).unwrap();
        assert_eq!(
            input[0],
            json!({"role": "tool", "parts": [{"type": "tool_call_response", "id": "call_0", "response": "18C"}]})
        );
        assert_eq!(s(&span, "llm.input_messages.0.message.role"), "tool");
        assert_eq!(
            s(&span, "llm.input_messages.1.message.content"),
            "And tomorrow?"
        );
    }

    #[test]
    fn an_aborted_stream_gets_an_event_and_a_failed_upstream_an_error_status() {
        let cut = chat_stream();
        let cut = &cut[..cut.find("data: {\"choices\"").unwrap_or(cut.len() / 2)];
        let r = record(
            "/v1/chat/completions",
            &chat_request(),
            "text/event-stream",
            cut,
            Outcome::ClientAborted,
        );
        let span = to_span(&r, &OPTIONS);
        let aborted = span
            .events
            .iter()
            .find(|e| e.name == "truthtable.capture.client_aborted")
            .expect("a client_aborted event");
        assert_eq!(aborted.time_unix_nano, span.end_time_unix_nano);
        assert_eq!(s(&span, "truthtable.capture.outcome"), "client_aborted");
        assert_eq!(
            span.status, None,
            "the client leaving is not the model's error"
        );

        let mut r = record(
            "/v1/chat/completions",
            &chat_request(),
            "text/event-stream",
            cut,
            Outcome::UpstreamFailed,
        );
        r.detail = "upstream_reset_after_response_started{connection_termination}".into();
        let span = to_span(&r, &OPTIONS);
        let status = span.status.clone().expect("an error status");
        assert_eq!(status.code, status::StatusCode::Error as i32);
        assert_eq!(status.message, r.detail);
        assert_eq!(s(&span, "error.type"), r.detail);
        assert!(span
            .events
            .iter()
            .all(|e| e.name != "truthtable.capture.client_aborted"));

        r.outcome = Outcome::Complete;
        if let Some(resp) = r.response.as_mut() {
            resp.status = 429;
            resp.body = body(r#"{"error": {"message": "rate limited"}}"#);
        }
        let span = to_span(&r, &OPTIONS);
        assert_eq!(
            span.status.clone().map(|s| s.message),
            Some("HTTP 429".to_owned())
        );
        assert_eq!(s(&span, "error.type"), "429");
    }

    #[test]
    fn a_non_llm_exchange_is_a_plain_http_span_or_nothing() {
        let mut r = record(
            "/healthz",
            &json!({}),
            "text/plain",
            "ok",
            Outcome::Complete,
        );
        r.request.method = "GET".into();
        r.request.body = body("");
        let span = to_span(&r, &OPTIONS);
        assert_eq!(span.name, "GET");
        assert_eq!(s(&span, "truthtable.audit.protocol"), "unknown");
        assert!(attr(&span, "openinference.span.kind").is_none());
        assert!(attr(&span, "gen_ai.operation.name").is_none());
        assert_eq!(s(&span, "url.path"), "/healthz");
        let skip = SpanOptions {
            non_llm: NonLlm::Skip,
            ..OPTIONS
        };
        assert_eq!(capture_span(&record_json(&r), &skip), Converted::Skipped);
        assert!(matches!(
            capture_span("{\"schema\":\"nope\"}", &OPTIONS),
            Converted::Unreadable(_)
        ));
    }

    #[test]
    fn the_callers_traceparent_makes_the_span_its_child() {
        let mut r = record(
            "/v1/chat/completions",
            &chat_request(),
            "text/event-stream",
            &chat_stream(),
            Outcome::Complete,
        );
        r.request.headers.push((
            "traceparent".into(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        ));
        let span = to_span(&r, &OPTIONS);
        assert_eq!(span.trace_id[..4], [0x4b, 0xf9, 0x2f, 0x35]);
        assert_eq!(
            span.parent_span_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert_eq!(span.flags, 0x301, "sampled, with a remote parent");
    }

    #[test]
    fn long_values_are_cut_to_the_limit_and_the_span_says_so() {
        let long = "é".repeat(100);
        let mut request = chat_request();
        request["messages"][1]["content"] = json!(long);
        let r = record(
            "/v1/chat/completions",
            &request,
            "text/event-stream",
            &chat_stream(),
            Outcome::Complete,
        );
        let span = to_span(
            &r,
            &SpanOptions {
                value_limit: Some(10),
                ..OPTIONS
            },
        );
        assert_eq!(s(&span, "input.value"), "é".repeat(10));
        // The messages stay valid JSON: their texts are cut, not the JSON.
        let input: Value = serde_json::from_str(s(&span, "gen_ai.input.messages")).unwrap();
        assert_eq!(input[1]["parts"][0]["content"], json!("é".repeat(10)));
        assert!(matches!(
            attr(&span, "truthtable.span.attributes_truncated"),
            Some(any_value::Value::BoolValue(true))
        ));
        let whole = to_span(&r, &OPTIONS);
        assert_eq!(s(&whole, "input.value"), long);
        assert!(attr(&whole, "truthtable.span.attributes_truncated").is_none());
    }

    #[test]
    fn redacted_values_stay_redacted_and_no_other_header_is_exported() {
        let r = record(
            "/v1/chat/completions",
            &chat_request(),
            "text/event-stream",
            &chat_stream(),
            Outcome::Complete,
        );
        let span = to_span(&r, &OPTIONS);
        assert_eq!(s(&span, "url.query"), "api-key=[REDACTED]");
        assert!(span
            .attributes
            .iter()
            .all(|kv| !kv.key.contains("authorization")
                && !kv.key.starts_with("http.request.header")));
    }

    #[test]
    fn authorities_split_into_host_and_port() {
        assert_eq!(host_port("api.openai.com"), ("api.openai.com", None));
        assert_eq!(host_port("llm:8000"), ("llm", Some(8000)));
        assert_eq!(host_port("[::1]:8080"), ("::1", Some(8080)));
        assert_eq!(host_port("[::1]"), ("::1", None));
    }

    proptest::proptest! {
        #[test]
        fn any_stored_line_is_safe(raw in ".{0,300}") {
            let _ = capture_span(&raw, &OPTIONS);
        }
    }

    #[test]
    fn a_timed_stream_carries_the_genai_timings_and_an_event_per_stall() {
        let stream = chat_stream();
        let events: Vec<&str> = stream.split_inclusive("\n\n").collect();
        // "Paris" at 300 ms, "." after a 6 s stall, the rest at once.
        let times_ms = [300, 6_300, 6_301, 6_302, 6_303];
        assert_eq!(events.len(), times_ms.len());
        let mut r = record(
            "/v1/chat/completions",
            &chat_request(),
            "text/event-stream",
            &stream,
            Outcome::Complete,
        );
        if let Some(resp) = r.response.as_mut() {
            resp.chunks = events
                .iter()
                .zip(times_ms)
                .map(|(e, t)| crate::record::Chunk {
                    at_us: t * 1000,
                    bytes: e.len() as u64,
                })
                .collect();
        }
        let span = to_span(&r, &OPTIONS);
        let d = |key: &str| match attr(&span, key) {
            Some(any_value::Value::DoubleValue(v)) => *v,
            other => panic!("{key}: expected a double, got {other:?}"),
        };
        assert_eq!(d("gen_ai.server.time_to_first_token"), 0.3);
        // 2 output tokens: the 6 s from the first to the last content, over one token.
        assert_eq!(d("gen_ai.server.time_per_output_token"), 6.0);
        let stall = span
            .events
            .iter()
            .find(|e| e.name == "truthtable.stream.stall")
            .expect("a stall event");
        assert_eq!(
            stall.time_unix_nano - span.start_time_unix_nano,
            300_000_000,
            "when the stall began"
        );
        let before = stall
            .attributes
            .iter()
            .find(|kv| kv.key == "truthtable.stall.before")
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref());
        assert_eq!(before, Some(&any_value::Value::StringValue("Paris".into())));
        let untimed = to_span(
            &record(
                "/v1/chat/completions",
                &chat_request(),
                "text/event-stream",
                &stream,
                Outcome::Complete,
            ),
            &OPTIONS,
        );
        assert!(attr(&untimed, "gen_ai.server.time_to_first_token").is_none());
        assert!(untimed
            .events
            .iter()
            .all(|e| e.name != "truthtable.stream.stall"));
    }
}
