//! How fast the answer came: time to first token, the gaps between tokens and the stalls, from
//! the chunk times the filter records (`response.chunks`).
//!
//! A streamed body is framed again chunk by chunk, with the same incremental parsers the view
//! uses, so each event gets the time of the chunk that completed it. An event is
//! *content-bearing* when it carries answer text or tool-call content in its protocol's terms (an
//! OpenAI role-only first delta, an Anthropic `message_start` or a `ping` are not). The gaps are
//! taken between the chunks that completed content-bearing events.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::Value;

use super::{decode, json_array::JsonArrayParser, ndjson::NdjsonParser, Protocol, StreamFormat};
use crate::record::{header, CaptureRecord, Chunk, Headers};
use crate::sse::SseParser;

/// Gaps between content longer than this are stalls, unless the collector is told otherwise
/// (`--stall-threshold-ms`).
pub const DEFAULT_STALL_THRESHOLD_MS: u64 = 5_000;

/// Characters of the answer a stall shows from before it.
const BEFORE_CHARS: usize = 80;

/// The audit view's `timing`.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Timing {
    /// Milliseconds from the start until the response headers passed the filter.
    pub first_byte_ms: Option<f64>,
    /// Milliseconds from the start until the first content-bearing event passed.
    pub ttft_ms: Option<f64>,
    /// The gaps between content-bearing chunks; `null` with fewer than two of them.
    pub inter_token_ms: Option<Gaps>,
    /// Output tokens (as the usage reports them) per second from the first to the last
    /// content-bearing chunk.
    pub output_tokens_per_s: Option<f64>,
    /// Gaps between content-bearing chunks longer than the stall threshold, in order.
    pub stalls: Vec<Stall>,
    /// Each content-bearing chunk: when it passed (µs) and the answer's characters by then (for
    /// the capture page's timeline).
    #[serde(skip)]
    pub points: Vec<(u64, usize)>,
}

/// Percentiles of the gaps, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Gaps {
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
}

/// One long wait in the middle of an answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stall {
    /// When the wait began (the last content before it passed), ms from the start.
    pub at_ms: f64,
    /// How long it lasted.
    pub gap_ms: f64,
    /// Characters of answer content that had passed before it.
    pub answer_chars: usize,
    /// The last characters of content before it (at most 80).
    pub before: String,
}

/// The timing of `record`'s response, read with `protocol`'s notion of content.
pub fn of(
    record: &CaptureRecord,
    protocol: Protocol,
    format: Option<StreamFormat>,
    output_tokens: Option<u64>,
    stall_threshold_ms: u64,
) -> Option<Timing> {
    let response = record.response.as_ref()?;
    let mut timing = Timing {
        first_byte_ms: response.first_byte_ms,
        ..Timing::default()
    };
    let Some(format) = format else {
        return Some(timing);
    };
    let threshold_us = stall_threshold_ms.saturating_mul(1_000);
    if response.chunks.is_empty() {
        return Some(timing);
    }
    let Ok(captured) = response.body.bytes() else {
        return Some(timing);
    };
    // Past the filter's cap of kept chunk times only the longest wait is known: a piece of its
    // own, ending where that wait began, places it in the answer.
    let late_gap = response.chunks_more.as_ref().and_then(|more| {
        let (at_us, after_bytes) = more.max_gap_at?;
        let kept: u64 = response.chunks.iter().map(|c| c.bytes).sum();
        let piece = Chunk {
            at_us,
            bytes: after_bytes.saturating_sub(kept),
        };
        (more.max_gap_us > threshold_us).then_some((piece, more.max_gap_us))
    });
    let mut chunks = response.chunks.clone();
    chunks.extend(late_gap.map(|(piece, _)| piece));
    // Chunk sizes count the bytes as they crossed the filter: a compressed stream is decoded
    // piece by piece, so each chunk's time goes with the plain bytes it let through.
    let Some((bytes, chunks)) = plain(&captured, chunks, &response.headers) else {
        return Some(timing);
    };
    let content_upto = |n: usize| content_chunks(&bytes, &chunks[..n], format, protocol);
    let late_stall = late_gap.map(|(_, gap_us)| {
        let before: String = content_upto(chunks.len())
            .into_iter()
            .map(|c| c.1)
            .collect();
        let at_us = chunks.last().map_or(0, |c| c.at_us);
        (at_us, gap_us, before)
    });
    let kept_chunks = chunks.len() - usize::from(late_stall.is_some());
    let content = content_upto(kept_chunks);
    let Some(&(first_us, _)) = content.first() else {
        return Some(timing);
    };
    timing.ttft_ms = Some(ms(first_us));
    let mut gaps: Vec<u64> = Vec::with_capacity(content.len());
    let mut answer = String::new();
    for pair in content.windows(2) {
        let [(before_us, before_text), (at_us, _)] = pair else {
            continue;
        };
        answer.push_str(before_text);
        let gap = at_us.saturating_sub(*before_us);
        gaps.push(gap);
        if gap > threshold_us {
            timing.stalls.push(Stall {
                at_ms: ms(*before_us),
                gap_ms: ms(gap),
                answer_chars: answer.chars().count(),
                before: last_chars(&answer, BEFORE_CHARS),
            });
        }
    }
    if let Some((at_us, gap_us, before)) = late_stall {
        timing.stalls.push(Stall {
            at_ms: ms(at_us),
            gap_ms: ms(gap_us),
            answer_chars: before.chars().count(),
            before: last_chars(&before, BEFORE_CHARS),
        });
    }
    let mut chars = 0;
    timing.points = content
        .iter()
        .map(|(at, text)| {
            chars += text.chars().count();
            (*at, chars)
        })
        .collect();
    if !gaps.is_empty() {
        gaps.sort_unstable();
        timing.inter_token_ms = Some(Gaps {
            p50: ms(nearest_rank(&gaps, 50)),
            p95: ms(nearest_rank(&gaps, 95)),
            max: ms(gaps[gaps.len() - 1]),
        });
    }
    let last_us = content.last().map_or(first_us, |c| c.0);
    if let (Some(tokens), true) = (output_tokens, last_us > first_us) {
        let secs = (last_us - first_us) as f64 / 1e6;
        timing.output_tokens_per_s = Some((tokens as f64 / secs * 10.0).round() / 10.0);
    }
    Some(timing)
}

fn ms(us: u64) -> f64 {
    us as f64 / 1_000.0
}

/// The `p`th percentile of sorted, non-empty `values` (nearest rank).
fn nearest_rank(values: &[u64], p: usize) -> u64 {
    let rank = (values.len() * p).div_ceil(100).max(1);
    values[rank.min(values.len()) - 1]
}

fn last_chars(s: &str, n: usize) -> String {
    let count = s.chars().count();
    s.chars().skip(count.saturating_sub(n)).collect()
}

/// A framer fed chunk by chunk: the frames (`event`, `data`) each chunk completes.
enum Framer {
    Sse(SseParser),
    Ndjson(NdjsonParser),
    Array(JsonArrayParser),
}

impl Framer {
    fn new(format: StreamFormat) -> Framer {
        match format {
            StreamFormat::Sse => Framer::Sse(SseParser::new()),
            StreamFormat::Ndjson => Framer::Ndjson(NdjsonParser::new()),
            StreamFormat::JsonArray => Framer::Array(JsonArrayParser::new()),
        }
    }

    fn feed(&mut self, bytes: &[u8]) -> Vec<(String, String)> {
        match self {
            Framer::Sse(p) => p
                .feed(bytes)
                .into_iter()
                .map(|e| (e.event, e.data))
                .collect(),
            Framer::Ndjson(p) => p
                .feed(bytes)
                .into_iter()
                .map(|l| (String::new(), l))
                .collect(),
            Framer::Array(p) => p
                .feed(bytes)
                .into_iter()
                .map(|l| (String::new(), l))
                .collect(),
        }
    }

    /// The frame the body ended inside of, if any.
    fn finish(self) -> Option<(String, String)> {
        match self {
            Framer::Sse(p) => p.finish().unterminated.map(|e| (e.event, e.data)),
            Framer::Ndjson(p) => p.finish().map(|l| (String::new(), l)),
            Framer::Array(p) => p.finish().partial.map(|l| (String::new(), l)),
        }
    }
}

/// The chunks that completed content-bearing frames: when each passed (µs) and the content
/// they completed. Chunks past the kept bytes are not framed.
/// The body's plain bytes and its chunks measured in them: the captured bytes as they are, or,
/// under one `content-encoding`, decoded chunk by chunk. `None` when the coding cannot be.
fn plain<'a>(
    bytes: &'a [u8],
    chunks: Vec<Chunk>,
    headers: &Headers,
) -> Option<(Cow<'a, [u8]>, Vec<Chunk>)> {
    let coding = header(headers, "content-encoding")
        .map(str::trim)
        .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"));
    let Some(coding) = coding else {
        return Some((Cow::Borrowed(bytes), chunks));
    };
    let mut offset = 0usize;
    let pieces = chunks.iter().map(|c| {
        let end = offset
            .saturating_add(usize::try_from(c.bytes).unwrap_or(usize::MAX))
            .min(bytes.len());
        let piece = &bytes[offset.min(end)..end];
        offset = end;
        piece
    });
    let decoded = decode::decode_pieces(coding, pieces)?;
    let plain_chunks = chunks
        .iter()
        .zip(&decoded)
        .map(|(c, d)| Chunk {
            at_us: c.at_us,
            bytes: d.len() as u64,
        })
        .collect();
    Some((Cow::Owned(decoded.concat()), plain_chunks))
}

fn content_chunks(
    bytes: &[u8],
    chunks: &[crate::record::Chunk],
    format: StreamFormat,
    protocol: Protocol,
) -> Vec<(u64, String)> {
    let mut framer = Framer::new(format);
    let mut out: Vec<(u64, String)> = Vec::new();
    let mut offset = 0usize;
    let mut last_at = 0;
    for chunk in chunks {
        if offset >= bytes.len() {
            break;
        }
        let end = offset.saturating_add(usize::try_from(chunk.bytes).unwrap_or(usize::MAX));
        let piece = &bytes[offset..end.min(bytes.len())];
        offset = end;
        last_at = chunk.at_us;
        let text: String = framer
            .feed(piece)
            .iter()
            .filter_map(|(event, data)| content_of(protocol, event, data))
            .collect();
        if !text.is_empty() {
            out.push((chunk.at_us, text));
        }
    }
    if let Some(text) = framer
        .finish()
        .and_then(|(event, data)| content_of(protocol, &event, &data))
    {
        match out.last_mut() {
            Some((at, t)) if *at == last_at => t.push_str(&text),
            _ => out.push((last_at, text)),
        }
    }
    out
}

/// The answer text or tool-call content a frame carries in `protocol`'s terms; `None` for a
/// frame that carries none (a role-only delta, a ping, usage, an end marker).
pub fn content_of(protocol: Protocol, event: &str, data: &str) -> Option<String> {
    let v: Value = serde_json::from_str(data).ok()?;
    let mut text = String::new();
    let mut push = |s: Option<&str>| {
        if let Some(s) = s {
            text.push_str(s);
        }
    };
    let str_at = |v: &Value, path: &[&str]| -> Option<String> {
        let mut cur = v;
        for key in path {
            cur = cur.get(key)?;
        }
        cur.as_str().map(str::to_owned)
    };
    match protocol {
        Protocol::OpenAiChat => {
            for choice in array(&v, "choices") {
                let Some(delta) = choice.get("delta").or_else(|| choice.get("message")) else {
                    continue;
                };
                push(delta.get("content").and_then(Value::as_str));
                push(delta.get("refusal").and_then(Value::as_str));
                for call in array(delta, "tool_calls") {
                    push(str_at(call, &["function", "name"]).as_deref());
                    push(str_at(call, &["function", "arguments"]).as_deref());
                }
            }
        }
        Protocol::OpenAiCompletions => {
            for choice in array(&v, "choices") {
                push(choice.get("text").and_then(Value::as_str));
            }
        }
        Protocol::OpenAiResponses => {
            let kind = v.get("type").and_then(Value::as_str).unwrap_or(event);
            if matches!(
                kind,
                "response.output_text.delta"
                    | "response.refusal.delta"
                    | "response.function_call_arguments.delta"
            ) {
                push(v.get("delta").and_then(Value::as_str));
            }
        }
        Protocol::AnthropicMessages => {
            match v.get("type").and_then(Value::as_str).unwrap_or(event) {
                "content_block_delta" => {
                    push(str_at(&v, &["delta", "text"]).as_deref());
                    push(str_at(&v, &["delta", "partial_json"]).as_deref());
                }
                "content_block_start" => {
                    if str_at(&v, &["content_block", "type"]).as_deref() == Some("tool_use") {
                        push(str_at(&v, &["content_block", "name"]).as_deref());
                    }
                    push(str_at(&v, &["content_block", "text"]).as_deref());
                }
                _ => {}
            }
        }
        Protocol::OllamaGenerate | Protocol::OllamaChat => {
            push(v.get("response").and_then(Value::as_str));
            push(str_at(&v, &["message", "content"]).as_deref());
            if let Some(calls) = v.get("message").and_then(|m| m.get("tool_calls")) {
                if calls.as_array().is_some_and(|c| !c.is_empty()) {
                    push(Some(&calls.to_string()));
                }
            }
        }
        Protocol::Gemini => {
            for candidate in array(&v, "candidates") {
                let parts = candidate.get("content").map(|c| array(c, "parts"));
                for part in parts.into_iter().flatten() {
                    if part.get("thought").and_then(Value::as_bool) == Some(true) {
                        continue;
                    }
                    push(part.get("text").and_then(Value::as_str));
                    if let Some(call) = part.get("functionCall") {
                        push(Some(&call.to_string()));
                    }
                }
            }
        }
        Protocol::Generic => match &v {
            Value::String(s) => push(Some(s)),
            _ => push(
                super::recognise::GENERIC_ANSWER_KEYS
                    .iter()
                    .find_map(|k| v.get(*k).and_then(Value::as_str)),
            ),
        },
        Protocol::Unknown => {}
    }
    (!text.is_empty()).then_some(text)
}

fn array<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    v.get(key).and_then(Value::as_array).into_iter().flatten()
}

#[cfg(test)]
mod tests {
    use super::super::tests::{exchange, sse, utf8};
    use super::super::{derive_with, AuditView};
    use super::*;
    use crate::record::{CaptureRecord, Chunk};
    use serde_json::json;

    /// `record` with its response body made of `chunks`, each `(at_ms, bytes)`, in order.
    fn paced(mut record: CaptureRecord, chunks: &[(u64, &str)]) -> CaptureRecord {
        let body: String = chunks.iter().map(|(_, c)| *c).collect();
        let response = record.response.as_mut().unwrap();
        response.body = utf8(&body, false);
        response.chunks = chunks
            .iter()
            .map(|(at_ms, c)| Chunk {
                at_us: at_ms * 1_000,
                bytes: c.len() as u64,
            })
            .collect();
        record
    }

    fn timing(record: &CaptureRecord, stall_ms: u64) -> Timing {
        let view: AuditView = derive_with(record, stall_ms);
        view.timing.expect("a response has timing")
    }

    fn gaps(t: &Timing) -> (f64, f64, f64) {
        let g = t.inter_token_ms.expect("gap statistics");
        (g.p50, g.p95, g.max)
    }

    fn chat(delta: serde_json::Value) -> String {
        sse(&[(
            "",
            json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}),
        )])
    }

    #[test]
    fn a_stall_past_the_filters_cap_of_chunk_times_is_found_where_it_happened() {
        let (hello, world, again) = (
            chat(json!({"content": "Hello"})),
            chat(json!({"content": " world"})),
            chat(json!({"content": " again"})),
        );
        // The filter kept the first chunk's time only; the rest it summed up, with its longest
        // wait: 7 s, after " world" passed at 400 ms.
        let mut record = paced(
            exchange(
                "/v1/chat/completions",
                r#"{"model":"m","messages":[]}"#,
                "text/event-stream",
                utf8("", false),
            ),
            &[(300, &hello)],
        );
        let response = record.response.as_mut().unwrap();
        let body = format!("{hello}{world}{again}data: [DONE]\n\n");
        response.body = utf8(&body, false);
        response.chunks_more = Some(crate::record::ChunksMore {
            count: 3,
            bytes: (body.len() - hello.len()) as u64,
            last_at_us: 7_401_000,
            max_gap_us: 7_000_000,
            max_gap_at: Some((400_000, (hello.len() + world.len()) as u64)),
        });
        let t = timing(&record, 5_000);
        assert_eq!(
            t.stalls,
            vec![Stall {
                at_ms: 400.0,
                gap_ms: 7_000.0,
                answer_chars: 11,
                before: "Hello world".into(),
            }]
        );
        // Not a stall under a longer threshold; and a filter that did not say where is heard
        // as saying nothing.
        assert!(timing(&record, 8_000).stalls.is_empty());
        record
            .response
            .as_mut()
            .unwrap()
            .chunks_more
            .as_mut()
            .unwrap()
            .max_gap_at = None;
        assert!(timing(&record, 5_000).stalls.is_empty());
    }

    #[test]
    fn openai_chat_ttft_skips_the_role_only_delta_and_a_stall_is_found_where_it_happened() {
        let (role, hello, world, again, end) = (
            chat(json!({"role": "assistant", "content": ""})),
            chat(json!({"content": "Hello"})),
            chat(json!({"content": " world"})),
            chat(json!({"content": " again"})),
            sse(&[(
                "",
                json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 4}}),
            )]),
        );
        let record = paced(
            exchange(
                "/v1/chat/completions",
                r#"{"model":"m","messages":[]}"#,
                "text/event-stream",
                utf8("", false),
            ),
            &[
                (100, &role),
                (300, &hello),
                (350, &world),
                (6_350, &again),
                (6_360, &end),
                (6_361, "data: [DONE]\n\n"),
            ],
        );
        let t = timing(&record, 5_000);
        assert_eq!(t.first_byte_ms, Some(1.0));
        assert_eq!(
            t.ttft_ms,
            Some(300.0),
            "the role-only first delta is not content"
        );
        assert_eq!(gaps(&t), (50.0, 6_000.0, 6_000.0));
        assert_eq!(
            t.stalls,
            vec![Stall {
                at_ms: 350.0,
                gap_ms: 6_000.0,
                answer_chars: 11,
                before: "Hello world".into()
            }]
        );
        // 4 tokens over the 6.05 s from the first content to the last.
        assert_eq!(t.output_tokens_per_s, Some(0.7));
        assert_eq!(t.points, vec![(300_000, 5), (350_000, 11), (6_350_000, 17)]);
        assert!(
            timing(&record, 10_000).stalls.is_empty(),
            "under a higher threshold"
        );
    }

    #[test]
    fn an_event_split_across_chunks_passed_when_its_last_byte_did() {
        let hello = chat(json!({"content": "Hello"}));
        let (a, b) = hello.split_at(10);
        let record = paced(
            exchange(
                "/v1/chat/completions",
                r#"{"model":"m","messages":[]}"#,
                "text/event-stream",
                utf8("", false),
            ),
            &[(100, a), (250, b), (260, "data: [DONE]\n\n")],
        );
        let t = timing(&record, 5_000);
        assert_eq!(t.ttft_ms, Some(250.0));
        assert_eq!(t.inter_token_ms, None, "one content chunk has no gaps");
    }

    #[test]
    fn events_arriving_in_one_chunk_make_one_point() {
        let two = format!(
            "{}{}",
            chat(json!({"content": "a"})),
            chat(json!({"content": "b"}))
        );
        let record = paced(
            exchange(
                "/v1/chat/completions",
                r#"{"model":"m","messages":[]}"#,
                "text/event-stream",
                utf8("", false),
            ),
            &[(100, &two), (140, &chat(json!({"content": "c"})))],
        );
        let t = timing(&record, 5_000);
        assert_eq!(t.ttft_ms, Some(100.0));
        assert_eq!(gaps(&t), (40.0, 40.0, 40.0));
    }

    #[test]
    fn anthropic_content_starts_at_the_first_text_delta() {
        let ev = |name: &str, data: serde_json::Value| sse(&[(name, data)]);
        let text = |t: &str| {
            ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}}),
            )
        };
        let record = paced(
            exchange(
                "/v1/messages",
                r#"{"model":"claude","max_tokens":10,"messages":[{"role":"user","content":"q"}]}"#,
                "text/event-stream",
                utf8("", false),
            ),
            &[
                (
                    50,
                    &ev(
                        "message_start",
                        json!({"type": "message_start", "message": {"model": "claude", "usage": {"input_tokens": 3, "output_tokens": 1}}}),
                    ),
                ),
                (60, &ev("ping", json!({"type": "ping"}))),
                (
                    70,
                    &ev(
                        "content_block_start",
                        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                    ),
                ),
                (200, &text("Par")),
                (230, &text("is")),
                (290, &text(".")),
                (
                    300,
                    &ev(
                        "message_delta",
                        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}}),
                    ),
                ),
                (301, &ev("message_stop", json!({"type": "message_stop"}))),
            ],
        );
        let t = timing(&record, 5_000);
        assert_eq!(t.ttft_ms, Some(200.0));
        assert_eq!(gaps(&t), (30.0, 60.0, 60.0));
        assert_eq!(t.output_tokens_per_s, Some(33.3));
        assert!(t.stalls.is_empty());
    }

    #[test]
    fn ollama_ndjson_lines_are_timed() {
        let line = |v: serde_json::Value| format!("{v}\n");
        let said = |t: &str| {
            line(
                json!({"model": "llama3", "message": {"role": "assistant", "content": t}, "done": false}),
            )
        };
        let record = paced(
            exchange(
                "/api/chat",
                r#"{"model":"llama3","messages":[{"role":"user","content":"q"}]}"#,
                "application/x-ndjson",
                utf8("", false),
            ),
            &[
                (120, &said("Hi")),
                (140, &said(" there")),
                (900, &said("!")),
                (
                    905,
                    &line(
                        json!({"model": "llama3", "message": {"role": "assistant", "content": ""}, "done": true, "eval_count": 3}),
                    ),
                ),
            ],
        );
        let t = timing(&record, 500);
        assert_eq!(t.ttft_ms, Some(120.0));
        assert_eq!(gaps(&t), (20.0, 760.0, 760.0));
        assert_eq!(t.stalls.len(), 1);
        assert_eq!(t.stalls[0].before, "Hi there");
        assert_eq!(t.stalls[0].at_ms, 140.0);
    }

    #[test]
    fn gemini_json_array_elements_are_timed() {
        let part = |text: &str| json!({"candidates": [{"content": {"role": "model", "parts": [{"text": text}]}}]});
        let record = paced(
            exchange(
                "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
                r#"{"contents":[{"role":"user","parts":[{"text":"q"}]}]}"#,
                "application/json",
                utf8("", false),
            ),
            &[
                (80, &format!("[{}", part("One"))),
                (130, &format!(",\r\n{}", part(" two"))),
                (150, "]"),
            ],
        );
        let t = timing(&record, 5_000);
        assert_eq!(t.ttft_ms, Some(80.0));
        assert_eq!(gaps(&t), (50.0, 50.0, 50.0));
    }

    #[test]
    fn responses_and_completions_streams_are_timed_by_their_deltas() {
        let ev = |name: &str, data: serde_json::Value| sse(&[(name, data)]);
        let responses = paced(
            exchange(
                "/v1/responses",
                r#"{"model":"gpt-4o","input":"q","stream":true}"#,
                "text/event-stream",
                utf8("", false),
            ),
            &[
                (
                    40,
                    &ev(
                        "response.created",
                        json!({"type": "response.created", "response": {"model": "gpt-4o"}}),
                    ),
                ),
                (
                    90,
                    &ev(
                        "response.output_text.delta",
                        json!({"type": "response.output_text.delta", "delta": "Yes"}),
                    ),
                ),
                (
                    110,
                    &ev(
                        "response.output_text.delta",
                        json!({"type": "response.output_text.delta", "delta": "."}),
                    ),
                ),
            ],
        );
        let t = timing(&responses, 5_000);
        assert_eq!((t.ttft_ms, gaps(&t).0), (Some(90.0), 20.0));

        let completions = paced(
            exchange(
                "/v1/completions",
                r#"{"model":"m","prompt":"q","stream":true}"#,
                "text/event-stream",
                utf8("", false),
            ),
            &[
                (
                    70,
                    &sse(&[(
                        "",
                        json!({"object": "text_completion", "choices": [{"index": 0, "text": "A"}]}),
                    )]),
                ),
                (
                    95,
                    &sse(&[(
                        "",
                        json!({"object": "text_completion", "choices": [{"index": 0, "text": "B"}]}),
                    )]),
                ),
            ],
        );
        let t = timing(&completions, 5_000);
        assert_eq!((t.ttft_ms, gaps(&t).0), (Some(70.0), 25.0));
    }

    #[test]
    fn a_non_streamed_answer_has_its_first_byte_and_no_gap_statistics() {
        let body = json!({"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."}}]}).to_string();
        let record = paced(
            exchange(
                "/v1/chat/completions",
                r#"{"model":"m","messages":[]}"#,
                "application/json",
                utf8("", false),
            ),
            &[(200, &body[..10]), (210, &body[10..])],
        );
        let t = timing(&record, 5_000);
        assert_eq!(t.first_byte_ms, Some(1.0));
        assert_eq!(
            (t.ttft_ms, t.inter_token_ms, t.output_tokens_per_s),
            (None, None, None)
        );
        assert!(t.stalls.is_empty());
    }

    #[test]
    fn a_record_without_chunk_times_has_only_its_first_byte() {
        let stream = chat(json!({"content": "Hello"}));
        let record = exchange(
            "/v1/chat/completions",
            r#"{"model":"m","messages":[]}"#,
            "text/event-stream",
            utf8(&stream, false),
        );
        assert_eq!(
            timing(&record, 5_000).ttft_ms,
            None,
            "an older filter's record"
        );
    }

    /// `events` compressed as a server streams them: each flushed into a chunk of its own, the
    /// coding's trailer in the last.
    fn compressed_chunks(coding: &str, events: &[&str]) -> Vec<Vec<u8>> {
        use std::io::Write;
        fn pieces<W: Write>(
            mut w: W,
            events: &[&str],
            taken: impl Fn(&mut W) -> Vec<u8>,
            finish: impl FnOnce(W) -> Vec<u8>,
        ) -> Vec<Vec<u8>> {
            let mut out = Vec::new();
            for e in events {
                w.write_all(e.as_bytes()).unwrap();
                w.flush().unwrap();
                out.push(taken(&mut w));
            }
            let tail = finish(w);
            out.last_mut().unwrap().extend(tail);
            out
        }
        let level = flate2::Compression::default();
        match coding {
            "gzip" => pieces(
                flate2::write::GzEncoder::new(Vec::new(), level),
                events,
                |w| std::mem::take(w.get_mut()),
                |w| w.finish().unwrap(),
            ),
            "deflate" => pieces(
                flate2::write::ZlibEncoder::new(Vec::new(), level),
                events,
                |w| std::mem::take(w.get_mut()),
                |w| w.finish().unwrap(),
            ),
            _ => pieces(
                brotli::CompressorWriter::new(Vec::new(), 4096, 5, 22),
                events,
                |w| std::mem::take(w.get_mut()),
                |w| w.into_inner(),
            ),
        }
    }

    #[test]
    fn a_compressed_stream_is_timed_by_the_plain_bytes_each_chunk_let_through() {
        let (role, hello, world) = (
            chat(json!({"role": "assistant", "content": ""})),
            chat(json!({"content": "Hello"})),
            chat(json!({"content": " world"})),
        );
        for coding in ["gzip", "deflate", "br"] {
            let chunks = compressed_chunks(coding, &[&role, &hello, &world, "data: [DONE]\n\n"]);
            let mut record = exchange(
                "/v1/chat/completions",
                r#"{"model":"m","messages":[]}"#,
                "text/event-stream",
                utf8("", false),
            );
            let response = record.response.as_mut().unwrap();
            response.body = super::super::decode::tests::b64_body(&chunks.concat(), false);
            response.chunks = [100, 300, 7_500, 7_510]
                .iter()
                .zip(&chunks)
                .map(|(at_ms, c)| Chunk {
                    at_us: at_ms * 1_000,
                    bytes: c.len() as u64,
                })
                .collect();
            response
                .headers
                .push(("content-encoding".into(), coding.into()));
            let t = timing(&record, 5_000);
            assert_eq!(
                t.ttft_ms,
                Some(300.0),
                "{coding}: the role-only delta is not content"
            );
            assert_eq!(gaps(&t).2, 7_200.0, "{coding}");
            assert_eq!(t.stalls.len(), 1, "{coding}");
            assert_eq!(t.stalls[0].before, "Hello", "{coding}");
            // A body that is not what its coding says gives no times, not wrong ones.
            let response = record.response.as_mut().unwrap();
            response.body = utf8(&format!("{role}{hello}{world}"), false);
            assert_eq!(timing(&record, 5_000).ttft_ms, None, "{coding}");
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<u64> = (1..=20).collect();
        assert_eq!(nearest_rank(&values, 50), 10);
        assert_eq!(nearest_rank(&values, 95), 19);
        assert_eq!(nearest_rank(&[7], 95), 7);
    }
}
