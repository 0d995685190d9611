//! One exchange as the filter saw it, and the capture record (`CONTRACT.md` §3) written from it.
//!
//! A stream context fills an [`Exchange`] as callbacks arrive; after `on_log` it is written, once,
//! straight into the delivery buffer as one NDJSON line. Nothing here allocates per header.

use crate::arrivals::Arrivals;
use crate::batcher::Bodies;
use crate::body::BodyTap;
use crate::clock::Rfc3339;
use crate::config::Config;
use crate::headers::{status_code, HeaderBlock};
use crate::json;
use crate::outcome::{classify, Outcome};
use crate::redact;
use crate::websocket::Session;
use base64::Engine;
use std::borrow::Cow;

pub const SCHEMA: &str = "truthtable.capture.v1";

/// How records travel to the audit cluster (`delivery_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// One JSON record per line, bodies as JSON strings (`application/x-ndjson`).
    #[default]
    Ndjson,
    /// Each record as a frame: its JSON without the bodies' `encoding` and `data`, then the kept
    /// body bytes as they crossed the filter (see [`FRAMED_CONTENT_TYPE`]).
    Framed,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Ndjson => "application/x-ndjson",
            Format::Framed => FRAMED_CONTENT_TYPE,
        }
    }
}

/// The content type of framed batches, version 1.
///
/// A framed batch is a sequence of frames. A frame is a header line, the record's JSON, the kept
/// request body bytes, the kept response body bytes, and `\n`. The header line is
/// `TTF1 JSON_LEN REQ_AT REQ_LEN RESP_AT RESP_LEN\n`: decimal numbers (the filter writes ten digits
/// each, zero-padded). `JSON_LEN` is the JSON's length; `REQ_LEN`/`RESP_LEN` the body bytes that
/// follow it. The JSON is the NDJSON record with `"encoding":…,"data":…,` left out of each body
/// object; `REQ_AT`/`RESP_AT` are the offsets in the JSON where they belong (right after the body
/// object's `{`), `RESP_AT` 0 when `response` is null. A reader rebuilds the NDJSON record by
/// inserting, at each offset, the body's encoding and data exactly as the filter would have
/// written them.
pub const FRAMED_CONTENT_TYPE: &str = "application/vnd.truthtable.frames.v1";

/// Bytes of a frame's header line as the filter writes it.
pub const FRAME_HEADER_LEN: usize = 60;
pub use crate::redact::REDACTED;

/// What a stream context has seen of its exchange so far.
#[derive(Debug, Default)]
pub struct Exchange {
    /// When the request headers reached the filter (host time, ns since the epoch).
    pub started_ns: Option<u64>,
    pub request_headers: Option<HeaderBlock>,
    pub request_body: BodyTap,
    pub response_headers: Option<HeaderBlock>,
    pub response_headers_ns: Option<u64>,
    pub response_body: BodyTap,
    /// When each response body chunk passed, and its size.
    pub response_chunks: Arrivals,
    /// The response's end of stream passed the filter.
    pub response_ended: bool,
    /// An upgraded exchange (`101`): its frames, walked for the Close frames.
    pub websocket: Option<Box<Session>>,
}

/// What is known only when the exchange is over.
#[derive(Debug, Clone, Copy)]
pub struct Ending<'a> {
    pub now_ns: u64,
    /// Envoy's `response.code_details`, verbatim.
    pub details: &'a str,
    /// The record id when the request carried no `x-request-id`.
    pub fallback_id: &'a str,
    /// Set when this record amends one already stored for the same exchange (see [`Amendment`]).
    pub amendment: Option<Amendment>,
}

/// What happened to an exchange after its record was stored under `complete_after_stored`: the
/// same exchange's record again, as the stream ended, with
/// `"amendment": {"reason": …, "held_ms": …}` added. A v1 receiver deduplicating by `id` drops it;
/// the collector keeps it beside the capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Amendment {
    /// `client_gone_during_hold`, `reset_after_hold_timeout` or `failed_after_release`.
    pub reason: &'static str,
    /// Microseconds from the end being held until the stream ended.
    pub held_us: u64,
}

impl Exchange {
    pub fn new(max_body_bytes: usize) -> Exchange {
        Exchange {
            request_body: BodyTap::new(max_body_bytes),
            response_body: BodyTap::new(max_body_bytes),
            ..Exchange::default()
        }
    }

    /// The exchange's `x-request-id`, if the request carried one.
    pub fn request_id(&self) -> Option<Cow<'_, str>> {
        let id = self.request_headers.as_ref()?.get("x-request-id")?;
        (!id.is_empty()).then(|| String::from_utf8_lossy(id))
    }

    /// Body bytes kept, both directions: a lower bound of the record's size.
    pub fn kept_body_bytes(&self) -> usize {
        self.request_body.kept().len() + self.response_body.kept().len()
    }

    /// How the exchange ended. Envoy ends every WebSocket session as a reset; one whose close
    /// handshake completed normally is `complete`.
    pub fn outcome(&self, details: &str) -> Outcome {
        let websocket = self.request_headers.as_ref().and_then(|h| h.get("upgrade"));
        if websocket.is_some_and(|u| u.eq_ignore_ascii_case(b"websocket"))
            && self.websocket.as_ref().is_some_and(|s| s.closed_normally())
        {
            return Outcome::Complete;
        }
        classify(details, self.response_ended)
    }

    /// Appends this exchange's capture record to `out`: in `config.delivery_format`, an NDJSON
    /// line or a frame. With [`Bodies::Shed`] both bodies are written with no data (their sizes
    /// kept, so `truncated` says what is missing).
    pub fn write_record(
        &self,
        out: &mut Vec<u8>,
        end: &Ending<'_>,
        config: &Config,
        bodies: Bodies,
    ) {
        if config.delivery_format == Format::Ndjson {
            self.write_json(out, end, config, bodies, None);
            out.push(b'\n');
            return;
        }
        let header = out.len();
        out.resize(header + FRAME_HEADER_LEN, b' ');
        let json = out.len();
        let mut at = Framing {
            json,
            ..Framing::default()
        };
        self.write_json(out, end, config, bodies, Some(&mut at));
        let json_len = out.len() - json;
        let (request, response): (&[u8], &[u8]) = match bodies {
            Bodies::Kept => (self.request_body.kept(), self.response_body.kept()),
            Bodies::Shed => (b"", b""),
        };
        let response = if self.response_headers.is_some() {
            response
        } else {
            b""
        };
        out.extend_from_slice(request);
        out.extend_from_slice(response);
        out.push(b'\n');
        let line = &mut out[header..json];
        line[..4].copy_from_slice(b"TTF1");
        for (i, n) in [
            json_len,
            at.request,
            request.len(),
            at.response,
            response.len(),
        ]
        .into_iter()
        .enumerate()
        {
            let field = &mut line[4 + i * 11..4 + (i + 1) * 11];
            field[0] = b' ';
            let mut n = n;
            for d in field[1..].iter_mut().rev() {
                *d = b'0' + (n % 10) as u8;
                n /= 10;
            }
        }
        line[FRAME_HEADER_LEN - 1] = b'\n';
    }

    /// The record's JSON; with `framing`, the bodies' `encoding` and `data` left out and where
    /// they belong noted.
    fn write_json(
        &self,
        out: &mut Vec<u8>,
        end: &Ending<'_>,
        config: &Config,
        bodies: Bodies,
        mut framing: Option<&mut Framing>,
    ) {
        let started_ns = self.started_ns.unwrap_or(end.now_ns);
        let micros_since_start = |ns: u64| ns.saturating_sub(started_ns) / 1_000;
        out.extend_from_slice(b"{\"schema\":\"");
        out.extend_from_slice(SCHEMA.as_bytes());
        out.extend_from_slice(b"\",\"id\":");
        match self.request_id() {
            Some(id) => json::string(out, &id),
            None => json::string(out, end.fallback_id),
        }
        out.extend_from_slice(b",\"started_at\":\"");
        Rfc3339(started_ns).write_to(out);
        out.extend_from_slice(b"\",\"duration_ms\":");
        json::millis(out, micros_since_start(end.now_ns));
        out.extend_from_slice(b",\"outcome\":\"");
        out.extend_from_slice(self.outcome(end.details).as_str().as_bytes());
        out.extend_from_slice(b"\",\"detail\":");
        json::string(out, end.details);
        out.extend_from_slice(b",\"request\":");
        write_request(
            out,
            self.request_headers.as_ref(),
            &self.request_body,
            config,
            bodies,
            framing.as_deref_mut().map(|f| (f.json, &mut f.request)),
        );
        out.extend_from_slice(b",\"response\":");
        match &self.response_headers {
            None => out.extend_from_slice(b"null"),
            Some(block) => {
                let status = block.get(":status").and_then(status_code).unwrap_or(0);
                out.extend_from_slice(b"{\"status\":");
                json::uint(out, u64::from(status));
                out.extend_from_slice(b",\"headers\":");
                write_headers(out, Some(block), config);
                out.extend_from_slice(b",\"body\":");
                write_body(
                    out,
                    &self.response_body,
                    bodies,
                    framing.map(|f| (f.json, &mut f.response)),
                );
                out.extend_from_slice(b",\"first_byte_ms\":");
                let first_byte_ns = self.response_headers_ns.unwrap_or(end.now_ns);
                json::millis(out, micros_since_start(first_byte_ns));
                self.response_chunks.write_fields(out, started_ns);
                out.push(b'}');
            }
        }
        if let Some(a) = end.amendment {
            out.extend_from_slice(b",\"amendment\":{\"reason\":\"");
            out.extend_from_slice(a.reason.as_bytes());
            out.extend_from_slice(b"\",\"held_ms\":");
            json::millis(out, a.held_us);
            out.push(b'}');
        }
        out.push(b'}');
    }
}

/// Where a frame's JSON starts in the output, and the offsets in it of the two body objects'
/// missing `encoding` and `data` (0: none).
#[derive(Debug, Default)]
struct Framing {
    json: usize,
    request: usize,
    response: usize,
}

/// `{method, scheme, authority, path, query, headers, body}` from the request's header map.
fn write_request(
    out: &mut Vec<u8>,
    block: Option<&HeaderBlock>,
    body: &BodyTap,
    config: &Config,
    bodies: Bodies,
    framed: Option<(usize, &mut usize)>,
) {
    let (mut method, mut scheme, mut authority, mut target): (&[u8], &[u8], &[u8], &[u8]) =
        (b"", b"", b"", b"");
    for (name, value) in block.iter().flat_map(|b| b.iter()) {
        match name {
            b":method" => method = value,
            b":scheme" => scheme = value,
            b":authority" => authority = value,
            b":path" => target = value,
            _ => {}
        }
    }
    let (path, query) = match target.iter().position(|&b| b == b'?') {
        Some(i) => (&target[..i], &target[i + 1..]),
        None => (target, &b""[..]),
    };
    for (key, value) in [
        (&b"{\"method\":"[..], method),
        (b",\"scheme\":", scheme),
        (b",\"authority\":", authority),
        (b",\"path\":", path),
        (
            b",\"query\":",
            &redact::query(query, &config.redact_query_params),
        ),
    ] {
        out.extend_from_slice(key);
        json::lossy(out, value);
    }
    out.extend_from_slice(b",\"headers\":");
    write_headers(out, block, config);
    out.extend_from_slice(b",\"body\":");
    write_body(out, body, bodies, framed);
    out.push(b'}');
}

/// Headers as `[name, value]` pairs, pseudo-headers left out, secrets replaced.
fn write_headers(out: &mut Vec<u8>, block: Option<&HeaderBlock>, config: &Config) {
    out.push(b'[');
    let mut first = true;
    for (name, value) in block.iter().flat_map(|b| b.iter()) {
        if name.first() == Some(&b':') {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        out.push(b'[');
        if name.iter().any(u8::is_ascii_uppercase) {
            // Envoy keeps header names in lower case; anything else is lowered here.
            json::lossy(out, &name.to_ascii_lowercase());
        } else {
            json::lossy(out, name);
        }
        out.push(b',');
        if config.is_redacted(name) {
            json::string(out, REDACTED);
        } else {
            json::lossy(out, value);
        }
        out.push(b']');
    }
    out.push(b']');
}

/// A body as `{encoding, data, size, truncated}`; framed (`framed`: the JSON's start, and where to
/// note the offset of the missing fields), as `{size, truncated}`, its bytes following the JSON.
fn write_body(
    out: &mut Vec<u8>,
    tap: &BodyTap,
    bodies: Bodies,
    framed: Option<(usize, &mut usize)>,
) {
    let (kept, truncated) = match bodies {
        Bodies::Kept => (tap.kept(), tap.truncated()),
        Bodies::Shed => (&[][..], tap.size() > 0),
    };
    out.push(b'{');
    match framed {
        // Framed: the bytes follow the JSON; note where `encoding` and `data` belong.
        Some((json, at)) => *at = out.len() - json,
        None => {
            let encoding = out.len();
            out.extend_from_slice(b"\"encoding\":\"utf8\",\"data\":");
            // A truncated body may end inside a character: that partial character is dropped
            // rather than forcing the whole body into base64.
            if !json::utf8_string(out, kept, truncated) {
                out.truncate(encoding);
                out.extend_from_slice(b"\"encoding\":\"base64\",\"data\":\"");
                let start = out.len();
                let engine = &base64::engine::general_purpose::STANDARD;
                out.resize(
                    start + base64::encoded_len(kept.len(), true).unwrap_or(0),
                    0,
                );
                let written = engine.encode_slice(kept, &mut out[start..]).unwrap_or(0);
                out.truncate(start + written);
                out.push(b'"');
            }
            out.push(b',');
        }
    }
    out.extend_from_slice(b"\"size\":");
    json::uint(out, tap.size());
    out.extend_from_slice(if truncated {
        b",\"truncated\":true}"
    } else {
        b",\"truncated\":false}"
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn config() -> Config {
        Config::parse(
            br#"{"audit_cluster":"audit","redact_headers":["x-tenant-secret"],"max_body_bytes":8}"#,
        )
        .unwrap()
    }

    fn feed(tap: &mut BodyTap, chunk: &[u8]) {
        let room = tap.room(chunk.len());
        tap.push(chunk.len(), chunk[..room].to_vec());
    }

    fn write(ex: &Exchange, end: Ending<'_>) -> Value {
        let mut out = Vec::new();
        ex.write_record(&mut out, &end, &config(), Bodies::Kept);
        assert_eq!(out.last(), Some(&b'\n'), "one NDJSON line");
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        serde_json::from_slice(&out).unwrap()
    }

    const T0: u64 = 1_795_623_040_186_123_456;

    /// An exchange that ended at T0 with no details and no request id of its own.
    const AT_T0: Ending<'static> = Ending {
        now_ns: T0,
        details: "",
        fallback_id: "x",
        amendment: None,
    };

    #[test]
    fn an_amendment_is_the_same_record_with_its_reason_added() {
        let ex = chat_exchange();
        let plain = write(&ex, AT_T0);
        let amended = write(
            &ex,
            Ending {
                amendment: Some(Amendment {
                    reason: "client_gone_during_hold",
                    held_us: 1_500,
                }),
                ..AT_T0
            },
        );
        assert_eq!(amended["id"], plain["id"]);
        assert_eq!(
            amended["amendment"],
            json!({"reason": "client_gone_during_hold", "held_ms": 1.5})
        );
        let mut without = amended.clone();
        without.as_object_mut().unwrap().remove("amendment");
        assert_eq!(without, plain, "nothing else differs");
        assert!(plain.get("amendment").is_none());
    }

    fn base64_data(body: &Value) -> Vec<u8> {
        assert_eq!(body["encoding"], "base64");
        base64::engine::general_purpose::STANDARD
            .decode(body["data"].as_str().unwrap())
            .unwrap()
    }

    fn chat_exchange() -> Exchange {
        let mut ex = Exchange::new(8);
        ex.started_ns = Some(T0);
        ex.request_headers = Some(HeaderBlock::from_pairs(&[
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", "api.example.com"),
            (":path", "/v1/chat/completions?stream=true&a=1"),
            ("content-type", "application/json"),
            ("Authorization", "Bearer sk-secret"),
            ("x-tenant-secret", "t-123"),
            ("x-request-id", "9f1c2d3e"),
        ]));
        feed(&mut ex.request_body, b"{\"q\":1}");
        ex.response_headers = Some(HeaderBlock::from_pairs(&[
            (":status", "200"),
            ("content-type", "text/event-stream"),
            ("set-cookie", "sid=c00kie1"),
            ("set-cookie", "tok=c00kie2"),
        ]));
        ex.response_headers_ns = Some(T0 + 212_500_000);
        feed(&mut ex.response_body, b"data: 1\n\n");
        ex.response_chunks.push(T0 + 300_000_000, 9);
        feed(&mut ex.response_body, b"data: 2\n\n");
        ex.response_chunks.push(T0 + 1_800_000_500, 9);
        ex.response_ended = true;
        ex
    }

    #[test]
    fn a_complete_exchange_becomes_a_contract_record() {
        let got = write(
            &chat_exchange(),
            Ending {
                now_ns: T0 + 1_804_200_000,
                details: "via_upstream",
                fallback_id: "unused",
                amendment: None,
            },
        );
        assert_eq!(
            got,
            json!({
                "schema": "truthtable.capture.v1",
                "id": "9f1c2d3e",
                "started_at": "2026-11-25T16:10:40.186123Z",
                "duration_ms": 1804.2,
                "outcome": "complete",
                "detail": "via_upstream",
                "request": {
                    "method": "POST", "scheme": "http", "authority": "api.example.com",
                    "path": "/v1/chat/completions", "query": "stream=true&a=1",
                    "headers": [["content-type", "application/json"],
                                ["authorization", "[REDACTED]"],
                                ["x-tenant-secret", "[REDACTED]"],
                                ["x-request-id", "9f1c2d3e"]],
                    "body": {"encoding": "utf8", "data": "{\"q\":1}", "size": 7, "truncated": false}
                },
                "response": {
                    "status": 200,
                    "headers": [["content-type", "text/event-stream"],
                                ["set-cookie", "[REDACTED]"], ["set-cookie", "[REDACTED]"]],
                    "body": {"encoding": "utf8", "data": "data: 1\n", "size": 18, "truncated": true},
                    "first_byte_ms": 212.5,
                    "chunks": [[300_000, 9], [1_800_000, 9]],
                    "chunks_more": null
                }
            })
        );
    }

    #[test]
    fn a_record_without_bodies_keeps_everything_else_and_says_what_is_missing() {
        let ex = chat_exchange();
        let end = Ending {
            now_ns: T0 + 1_000_000,
            details: "via_upstream",
            fallback_id: "x",
            amendment: None,
        };
        let (mut whole, mut lean) = (Vec::new(), Vec::new());
        ex.write_record(&mut whole, &end, &config(), Bodies::Kept);
        ex.write_record(&mut lean, &end, &config(), Bodies::Shed);
        let (mut whole, lean): (Value, Value) = (
            serde_json::from_slice(&whole).unwrap(),
            serde_json::from_slice(&lean).unwrap(),
        );
        for side in ["request", "response"] {
            let body = &lean[side]["body"];
            assert_eq!(body["data"], "", "{side}");
            assert_eq!(body["size"], whole[side]["body"]["size"], "{side}");
            assert_eq!(body["truncated"], true, "{side}");
            whole[side]["body"] = body.clone();
        }
        assert_eq!(
            lean, whole,
            "only the bodies' data and truncated flags differ"
        );
    }

    #[test]
    fn listed_query_parameters_are_redacted_in_the_record() {
        let mut ex = chat_exchange();
        ex.request_headers = Some(HeaderBlock::from_pairs(&[
            (":method", "POST"),
            (
                ":path",
                "/v1beta/models/g:generateContent?alt=sse&key=AIza-canary&API%5FKEY=k2",
            ),
        ]));
        let got = write(&ex, AT_T0);
        assert_eq!(got["request"]["path"], "/v1beta/models/g:generateContent");
        assert_eq!(
            got["request"]["query"],
            "alt=sse&key=[REDACTED]&API%5FKEY=[REDACTED]"
        );
    }

    #[test]
    fn secrets_never_appear_in_the_record() {
        let mut out = Vec::new();
        chat_exchange().write_record(
            &mut out,
            &Ending {
                now_ns: T0,
                details: "via_upstream",
                fallback_id: "x",
                amendment: None,
            },
            &config(),
            Bodies::Kept,
        );
        let text = String::from_utf8(out).unwrap();
        for secret in ["sk-secret", "t-123", "c00kie1", "c00kie2"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
    }

    #[test]
    fn no_response_headers_means_null_response_and_fallback_id() {
        let mut ex = Exchange::new(8);
        ex.started_ns = Some(T0);
        ex.request_headers = Some(HeaderBlock::from_pairs(&[
            (":method", "GET"),
            (":path", "/"),
        ]));
        let got = write(
            &ex,
            Ending {
                now_ns: T0 + 5_000_000,
                details: "downstream_remote_disconnect",
                fallback_id: "tt-1",
                amendment: None,
            },
        );
        assert_eq!(got["id"], "tt-1");
        assert_eq!(got["response"], Value::Null);
        assert_eq!(got["outcome"], "client_aborted");
        assert_eq!(got["request"]["query"], "");
        assert_eq!(got["request"]["path"], "/");
        assert_eq!(got["duration_ms"], 5.0);
    }

    #[test]
    fn on_log_as_the_first_callback_still_yields_a_record() {
        let ex = Exchange::new(8);
        let got = write(
            &ex,
            Ending {
                now_ns: T0,
                details: "",
                fallback_id: "tt-2",
                amendment: None,
            },
        );
        assert_eq!(got["id"], "tt-2");
        assert_eq!(got["started_at"], "2026-11-25T16:10:40.186123Z");
        assert_eq!(got["request"]["method"], "");
        assert_eq!(got["request"]["headers"], json!([]));
    }

    #[test]
    fn binary_bodies_are_base64_and_byte_exact() {
        let mut ex = Exchange::new(8);
        feed(&mut ex.request_body, &[0x1f, 0x8b, 0x08, 0x00, 0xff]);
        let got = write(&ex, AT_T0);
        assert_eq!(
            base64_data(&got["request"]["body"]),
            vec![0x1f, 0x8b, 0x08, 0x00, 0xff]
        );
    }

    #[test]
    fn a_cut_through_a_character_keeps_the_text_before_it() {
        let mut ex = Exchange::new(8);
        feed(&mut ex.request_body, "abcdeffé€".as_bytes()); // 'é' straddles the 8-byte cap
        let got = write(&ex, AT_T0);
        assert_eq!(got["request"]["body"]["encoding"], "utf8");
        assert_eq!(got["request"]["body"]["data"], "abcdeff");
        assert_eq!(got["request"]["body"]["truncated"], true);
        assert_eq!(got["request"]["body"]["size"], 12);
    }

    #[test]
    fn a_websocket_session_whose_close_handshake_completed_is_complete() {
        let reset = "upstream_reset_after_response_started{connection_termination}";
        let mut ex = Exchange::new(8);
        ex.request_headers = Some(HeaderBlock::from_pairs(&[
            (":method", "GET"),
            ("upgrade", "WebSocket"),
        ]));
        let mut session = Session::default();
        assert_eq!(ex.outcome(reset), Outcome::UpstreamFailed, "no session");
        session.client.feed(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]); // masked close 1000
        ex.websocket = Some(Box::new(session.clone()));
        assert_eq!(
            ex.outcome(reset),
            Outcome::UpstreamFailed,
            "one side closed"
        );
        session.upstream.feed(&[0x88, 0x02, 0x03, 0xe8]);
        ex.websocket = Some(Box::new(session));
        assert_eq!(ex.outcome(reset), Outcome::Complete);
        ex.request_headers = Some(HeaderBlock::from_pairs(&[(":method", "GET")]));
        assert_eq!(
            ex.outcome(reset),
            Outcome::UpstreamFailed,
            "not a WebSocket upgrade"
        );
    }

    #[test]
    fn invalid_utf8_inside_the_kept_bytes_is_base64() {
        // Long enough that the text before the bad byte was already written when it was found.
        let body = [&br#"{"text":""#[..], &[b'a'; 40], b"\xff\"}"].concat();
        let mut ex = Exchange::new(1024);
        feed(&mut ex.request_body, &body);
        let got = write(&ex, AT_T0);
        assert_eq!(base64_data(&got["request"]["body"]), body);
        assert_eq!(got["request"]["body"]["size"], body.len());
    }
}
