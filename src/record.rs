//! One exchange as the filter saw it, and the capture record (`CONTRACT.md` §3) written from it.
//!
//! A stream context fills an [`Exchange`] as callbacks arrive; `on_log` writes it, once, straight
//! into the delivery buffer as one NDJSON line. Nothing here allocates per header.

use crate::body::BodyTap;
use crate::clock::{millis_between, Rfc3339};
use crate::config::Config;
use crate::headers::HeaderBlock;
use crate::outcome::{classify, Outcome};
use base64::Engine;
use serde::ser::{SerializeSeq, SerializeStruct, Serializer};
use serde::Serialize;
use std::borrow::Cow;

pub const SCHEMA: &str = "truthtable.capture.v1";
pub const REDACTED: &str = "[REDACTED]";

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
    /// The response's end of stream passed the filter.
    pub response_ended: bool,
}

/// What is known only when the exchange is over.
#[derive(Debug, Clone, Copy)]
pub struct Ending<'a> {
    pub now_ns: u64,
    /// Envoy's `response.code_details`, verbatim.
    pub details: &'a str,
    /// The record id when the request carried no `x-request-id`.
    pub fallback_id: &'a str,
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

    pub fn outcome(&self, details: &str) -> Outcome {
        classify(details, self.response_ended)
    }

    /// Appends this exchange's capture record and a newline to `out`.
    pub fn write_record(&self, out: &mut Vec<u8>, end: &Ending<'_>, config: &Config) {
        let started_ns = self.started_ns.unwrap_or(end.now_ns);
        let id = self.request_id();
        let record = RecordView {
            schema: SCHEMA,
            id: id.as_deref().unwrap_or(end.fallback_id),
            started_at: Rfc3339(started_ns),
            duration_ms: millis_between(started_ns, end.now_ns),
            outcome: self.outcome(end.details),
            detail: end.details,
            request: RequestView::new(self.request_headers.as_ref(), &self.request_body, config),
            response: self.response_headers.as_ref().map(|block| ResponseView {
                status: block
                    .get(":status")
                    .and_then(|s| std::str::from_utf8(s).ok())
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
                headers: HeadersView {
                    block: Some(block),
                    config,
                },
                body: BodyView(&self.response_body),
                first_byte_ms: millis_between(
                    started_ns,
                    self.response_headers_ns.unwrap_or(end.now_ns),
                ),
            }),
        };
        // Serializing plain data into a Vec cannot fail; should it ever, the line is not emitted.
        let mark = out.len();
        if serde_json::to_writer(&mut *out, &record).is_ok() {
            out.push(b'\n');
        } else {
            out.truncate(mark);
        }
    }
}

#[derive(Serialize)]
struct RecordView<'a> {
    schema: &'static str,
    id: &'a str,
    #[serde(serialize_with = "display")]
    started_at: Rfc3339,
    duration_ms: f64,
    outcome: Outcome,
    detail: &'a str,
    request: RequestView<'a>,
    response: Option<ResponseView<'a>>,
}

fn display<S: Serializer>(value: &Rfc3339, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

#[derive(Serialize)]
struct RequestView<'a> {
    method: Cow<'a, str>,
    scheme: Cow<'a, str>,
    authority: Cow<'a, str>,
    path: Cow<'a, str>,
    query: Cow<'a, str>,
    headers: HeadersView<'a>,
    body: BodyView<'a>,
}

impl<'a> RequestView<'a> {
    fn new(block: Option<&'a HeaderBlock>, body: &'a BodyTap, config: &'a Config) -> Self {
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
        RequestView {
            method: String::from_utf8_lossy(method),
            scheme: String::from_utf8_lossy(scheme),
            authority: String::from_utf8_lossy(authority),
            path: String::from_utf8_lossy(path),
            query: String::from_utf8_lossy(query),
            headers: HeadersView { block, config },
            body: BodyView(body),
        }
    }
}

#[derive(Serialize)]
struct ResponseView<'a> {
    status: u16,
    headers: HeadersView<'a>,
    body: BodyView<'a>,
    first_byte_ms: f64,
}

/// Headers as `[name, value]` pairs, pseudo-headers left out, secrets replaced.
struct HeadersView<'a> {
    block: Option<&'a HeaderBlock>,
    config: &'a Config,
}

impl Serialize for HeadersView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(None)?;
        for (name, value) in self.block.iter().flat_map(|b| b.iter()) {
            if name.first() == Some(&b':') {
                continue;
            }
            let name = lowercase(name);
            let value = if self.config.is_redacted(name.as_bytes()) {
                Cow::Borrowed(REDACTED)
            } else {
                String::from_utf8_lossy(value)
            };
            seq.serialize_element(&(name, value))?;
        }
        seq.end()
    }
}

/// Envoy keeps header names in lower case; anything else is lowered here.
fn lowercase(name: &[u8]) -> Cow<'_, str> {
    if name.iter().any(u8::is_ascii_uppercase) {
        Cow::Owned(String::from_utf8_lossy(name).to_ascii_lowercase())
    } else {
        String::from_utf8_lossy(name)
    }
}

/// A body as `{encoding, data, size, truncated}`.
struct BodyView<'a>(&'a BodyTap);

impl Serialize for BodyView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let tap = self.0;
        let mut st = s.serialize_struct("body", 4)?;
        match text_of(tap.kept(), tap.truncated()) {
            Some(text) => {
                st.serialize_field("encoding", "utf8")?;
                st.serialize_field("data", text)?;
            }
            None => {
                st.serialize_field("encoding", "base64")?;
                let encoded = base64::engine::general_purpose::STANDARD.encode(tap.kept());
                st.serialize_field("data", &encoded)?;
            }
        }
        st.serialize_field("size", &tap.size())?;
        st.serialize_field("truncated", &tap.truncated())?;
        st.end()
    }
}

/// The kept bytes as text, if they are UTF-8. A truncated body may end inside a character; that
/// partial character is dropped rather than forcing the whole body into base64.
fn text_of(kept: &[u8], truncated: bool) -> Option<&str> {
    match std::str::from_utf8(kept) {
        Ok(text) => Some(text),
        Err(e) if truncated && e.error_len().is_none() => {
            std::str::from_utf8(&kept[..e.valid_up_to()]).ok()
        }
        Err(_) => None,
    }
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
        ex.write_record(&mut out, &end, &config());
        assert_eq!(out.last(), Some(&b'\n'), "one NDJSON line");
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        serde_json::from_slice(&out).unwrap()
    }

    const T0: u64 = 1_795_623_040_186_123_456;

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
        feed(&mut ex.response_body, b"data: 2\n\n");
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
                    "first_byte_ms": 212.5
                }
            })
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
            },
            &config(),
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
        let got = write(
            &ex,
            Ending {
                now_ns: T0,
                details: "",
                fallback_id: "x",
            },
        );
        assert_eq!(got["request"]["body"]["encoding"], "base64");
        let data = got["request"]["body"]["data"].as_str().unwrap();
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(data)
                .unwrap(),
            vec![0x1f, 0x8b, 0x08, 0x00, 0xff]
        );
    }

    #[test]
    fn a_cut_through_a_character_keeps_the_text_before_it() {
        let mut ex = Exchange::new(8);
        feed(&mut ex.request_body, "abcdeffé€".as_bytes()); // 'é' straddles the 8-byte cap
        let got = write(
            &ex,
            Ending {
                now_ns: T0,
                details: "",
                fallback_id: "x",
            },
        );
        assert_eq!(got["request"]["body"]["encoding"], "utf8");
        assert_eq!(got["request"]["body"]["data"], "abcdeff");
        assert_eq!(got["request"]["body"]["truncated"], true);
        assert_eq!(got["request"]["body"]["size"], 12);
    }

    #[test]
    fn invalid_utf8_inside_the_kept_bytes_is_base64() {
        assert_eq!(text_of(b"ab\xffcd", false), None);
        assert_eq!(text_of(b"ab\xffcd", true), None);
        assert_eq!(text_of(b"ab\xc3", false), None);
        assert_eq!(text_of(b"ab\xc3", true), Some("ab"));
    }
}
