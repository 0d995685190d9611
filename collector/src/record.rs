//! The capture record, schema `truthtable.capture.v1` (see the shared CONTRACT).
//!
//! [`CaptureRecord::parse_line`] accepts one NDJSON line and either returns the typed record or a
//! [`RecordError`] that names the offending field by its dotted path (`request.body.encoding`).
//! Fields the contract does not list are allowed and ignored here; the collector keeps the raw line,
//! so they are never lost.

use base64::Engine as _;
use serde_json::{Map, Value};

/// The only schema this collector accepts.
pub const SCHEMA_V1: &str = "truthtable.capture.v1";

/// Why a line is not a valid v1 capture record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The line is not a JSON document.
    #[error("not valid JSON: {0}")]
    NotJson(String),
    /// A required field is absent.
    #[error("missing field \"{0}\"")]
    Missing(String),
    /// A field is present but its value breaks the contract.
    #[error("field \"{field}\": {problem}")]
    Invalid {
        /// Dotted path of the field, e.g. `response.body.size`.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// How the filter ended the exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The whole response reached the filter's end of the chain.
    Complete,
    /// The downstream client went away first.
    ClientAborted,
    /// Upstream connection failure, reset or timeout (including Envoy's own error reply).
    UpstreamFailed,
}

impl Outcome {
    /// Every outcome.
    pub const ALL: [Outcome; 3] = [
        Outcome::Complete,
        Outcome::ClientAborted,
        Outcome::UpstreamFailed,
    ];

    /// The contract's spelling of this outcome.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Complete => "complete",
            Outcome::ClientAborted => "client_aborted",
            Outcome::UpstreamFailed => "upstream_failed",
        }
    }
}

/// How `body.data` holds the kept bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEncoding {
    /// `data` is the bytes as UTF-8 text.
    Utf8,
    /// `data` is standard base64 of the bytes.
    Base64,
}

/// A captured body: a prefix of the bytes that crossed the filter.
#[derive(Debug, Clone, PartialEq)]
pub struct CapturedBody {
    /// How `data` encodes the bytes.
    pub encoding: BodyEncoding,
    /// The kept bytes, encoded as `encoding` says (still content-encoded if they were on the wire).
    pub data: String,
    /// Total bytes that crossed the filter, kept or not.
    pub size: u64,
    /// True when `data` holds fewer bytes than `size`.
    pub truncated: bool,
}

impl CapturedBody {
    /// The kept bytes, exactly as they crossed the filter.
    ///
    /// Never fails for a body that passed validation (base64 is checked there).
    pub fn bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        match self.encoding {
            BodyEncoding::Utf8 => Ok(self.data.as_bytes().to_vec()),
            BodyEncoding::Base64 => base64::engine::general_purpose::STANDARD.decode(&self.data),
        }
    }
}

/// Header pairs in the order Envoy held them, names lowercase.
pub type Headers = Vec<(String, String)>;

/// The request half of an exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct CapturedRequest {
    /// HTTP method.
    pub method: String,
    /// `http` or `https`.
    pub scheme: String,
    /// The `:authority` the client asked for.
    pub authority: String,
    /// Path without the query string.
    pub path: String,
    /// Raw query string without `?`.
    pub query: String,
    /// Request headers.
    pub headers: Headers,
    /// Request body.
    pub body: CapturedBody,
}

/// The response half of an exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct CapturedResponse {
    /// HTTP status code.
    pub status: u16,
    /// Response headers.
    pub headers: Headers,
    /// Response body.
    pub body: CapturedBody,
    /// Milliseconds from `started_at` until the response headers reached the filter, when given.
    pub first_byte_ms: Option<f64>,
    /// When each response body chunk passed the filter (`response.chunks`); empty when the
    /// record has none (an older filter, or no body).
    pub chunks: Vec<Chunk>,
    /// The chunks past the filter's cap, summed up (`response.chunks_more`).
    pub chunks_more: Option<ChunksMore>,
}

/// One response body chunk as it passed the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// Microseconds from `started_at`.
    pub at_us: u64,
    /// Its size in bytes.
    pub bytes: u64,
}

/// The chunks the filter only counted (past its cap of kept chunk times).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunksMore {
    /// How many.
    pub count: u64,
    /// Their bytes.
    pub bytes: u64,
    /// When the last one passed, microseconds from `started_at`.
    pub last_at_us: u64,
    /// The longest wait before one of them, in microseconds.
    pub max_gap_us: u64,
    /// When that wait began (µs from `started_at`) and the body bytes that had passed by then;
    /// `None` from filters that did not say.
    pub max_gap_at: Option<(u64, u64)>,
}

/// One captured HTTP exchange, validated against the v1 contract.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptureRecord {
    /// The exchange's request id; the deduplication key.
    pub id: String,
    /// RFC 3339 UTC timestamp of the request headers.
    pub started_at: String,
    /// Duration of the exchange in milliseconds.
    pub duration_ms: f64,
    /// How the exchange ended.
    pub outcome: Outcome,
    /// Envoy's `response.code_details`.
    pub detail: String,
    /// The request.
    pub request: CapturedRequest,
    /// The response, `None` when no response headers were produced.
    pub response: Option<CapturedResponse>,
}

/// Whether a stored line is an amendment: a record the filter sends again, under
/// `complete_after_stored`, to say what happened to the exchange after its record was stored
/// (top-level `"amendment": {"reason": …, "held_ms": …}`). The store keeps it beside the capture
/// instead of dropping it as a duplicate. A key can only appear as `"amendment":` outside a JSON
/// string, so the scan is exact once the parse confirms it is the record's own key.
pub fn is_amendment(raw: &str) -> bool {
    raw.contains("\"amendment\":")
        && serde_json::from_str::<Value>(raw)
            .ok()
            .is_some_and(|v| v.get("amendment").is_some_and(Value::is_object))
}

/// Case-insensitive lookup of the first header named `name`.
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

impl CaptureRecord {
    /// Parses and validates one NDJSON line.
    pub fn parse_line(line: &str) -> Result<Self, RecordError> {
        let value: Value =
            serde_json::from_str(line).map_err(|e| RecordError::NotJson(e.to_string()))?;
        Self::from_value(&value)
    }

    /// Validates an already parsed JSON value.
    pub fn from_value(value: &Value) -> Result<Self, RecordError> {
        let root = Obj::new(value, "")?;
        let schema = root.string("schema")?;
        if schema != SCHEMA_V1 {
            return Err(root.invalid(
                "schema",
                format!("expected \"{SCHEMA_V1}\", got \"{schema}\""),
            ));
        }
        let id = root.string("id")?;
        if id.is_empty() {
            return Err(root.invalid("id", "must not be empty".into()));
        }
        let started_at = root.string("started_at")?;
        if !is_rfc3339(started_at) {
            return Err(root.invalid(
                "started_at",
                format!("expected an RFC 3339 timestamp, got \"{started_at}\""),
            ));
        }
        let duration_ms = root.number("duration_ms")?;
        let outcome = match root.string("outcome")? {
            "complete" => Outcome::Complete,
            "client_aborted" => Outcome::ClientAborted,
            "upstream_failed" => Outcome::UpstreamFailed,
            other => {
                return Err(root.invalid(
                    "outcome",
                    format!(
                        "expected one of \"complete\", \"client_aborted\", \"upstream_failed\", got \"{other}\""
                    ),
                ))
            }
        };
        let detail = root.string("detail")?.to_owned();

        let req = root.object("request")?;
        let request = CapturedRequest {
            method: req.string("method")?.to_owned(),
            scheme: req.string("scheme")?.to_owned(),
            authority: req.string("authority")?.to_owned(),
            path: req.string("path")?.to_owned(),
            query: req.string("query")?.to_owned(),
            headers: req.headers("headers")?,
            body: req.body("body")?,
        };

        let response = match root.get("response")? {
            Value::Null => None,
            _ => {
                let resp = root.object("response")?;
                let status = resp.integer("status")?;
                let status = u16::try_from(status)
                    .ok()
                    .filter(|s| (100..=999).contains(s))
                    .ok_or_else(|| {
                        resp.invalid(
                            "status",
                            format!("expected an HTTP status code, got {status}"),
                        )
                    })?;
                let first_byte_ms = match resp.map.get("first_byte_ms") {
                    None | Some(Value::Null) => None,
                    Some(_) => Some(resp.number("first_byte_ms")?),
                };
                Some(CapturedResponse {
                    status,
                    headers: resp.headers("headers")?,
                    body: resp.body("body")?,
                    first_byte_ms,
                    chunks: resp.chunks("chunks")?,
                    chunks_more: resp.chunks_more("chunks_more")?,
                })
            }
        };

        Ok(CaptureRecord {
            id: id.to_owned(),
            started_at: started_at.to_owned(),
            duration_ms,
            outcome,
            detail,
            request,
            response,
        })
    }
}

/// A JSON object together with its dotted path, for error messages that name fields.
struct Obj<'a> {
    map: &'a Map<String, Value>,
    path: String,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl<'a> Obj<'a> {
    fn new(value: &'a Value, path: &str) -> Result<Self, RecordError> {
        match value {
            Value::Object(map) => Ok(Obj {
                map,
                path: path.to_owned(),
            }),
            other if path.is_empty() => Err(RecordError::Invalid {
                field: "(record)".into(),
                problem: format!("expected a JSON object, got {}", type_name(other)),
            }),
            other => Err(RecordError::Invalid {
                field: path.to_owned(),
                problem: format!("expected an object, got {}", type_name(other)),
            }),
        }
    }

    fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn invalid(&self, key: &str, problem: String) -> RecordError {
        RecordError::Invalid {
            field: self.field(key),
            problem,
        }
    }

    fn wrong_type(&self, key: &str, expected: &str, got: &Value) -> RecordError {
        self.invalid(key, format!("expected {expected}, got {}", type_name(got)))
    }

    fn get(&self, key: &str) -> Result<&'a Value, RecordError> {
        self.map
            .get(key)
            .ok_or_else(|| RecordError::Missing(self.field(key)))
    }

    fn string(&self, key: &str) -> Result<&'a str, RecordError> {
        let v = self.get(key)?;
        v.as_str()
            .ok_or_else(|| self.wrong_type(key, "a string", v))
    }

    fn number(&self, key: &str) -> Result<f64, RecordError> {
        let v = self.get(key)?;
        let n = v
            .as_f64()
            .ok_or_else(|| self.wrong_type(key, "a number", v))?;
        if n < 0.0 {
            return Err(self.invalid(key, format!("must not be negative, got {n}")));
        }
        Ok(n)
    }

    fn integer(&self, key: &str) -> Result<u64, RecordError> {
        let v = self.get(key)?;
        v.as_u64()
            .ok_or_else(|| self.wrong_type(key, "a non-negative integer", v))
    }

    fn boolean(&self, key: &str) -> Result<bool, RecordError> {
        let v = self.get(key)?;
        v.as_bool()
            .ok_or_else(|| self.wrong_type(key, "a boolean", v))
    }

    fn object(&self, key: &str) -> Result<Obj<'a>, RecordError> {
        Obj::new(self.get(key)?, &self.field(key))
    }

    fn headers(&self, key: &str) -> Result<Headers, RecordError> {
        let v = self.get(key)?;
        let items = v
            .as_array()
            .ok_or_else(|| self.wrong_type(key, "an array of [name, value] pairs", v))?;
        items
            .iter()
            .enumerate()
            .map(|(i, pair)| match pair.as_array().map(Vec::as_slice) {
                Some([Value::String(name), Value::String(value)]) => {
                    Ok((name.clone(), value.clone()))
                }
                _ => Err(RecordError::Invalid {
                    field: format!("{}[{i}]", self.field(key)),
                    problem: "expected a [name, value] pair of strings".into(),
                }),
            })
            .collect()
    }

    /// `[[at_us, bytes], …]`; absent or `null` is none.
    fn chunks(&self, key: &str) -> Result<Vec<Chunk>, RecordError> {
        let v = match self.map.get(key) {
            None | Some(Value::Null) => return Ok(Vec::new()),
            Some(v) => v,
        };
        let items = v
            .as_array()
            .ok_or_else(|| self.wrong_type(key, "an array of [at_us, bytes] pairs", v))?;
        items
            .iter()
            .enumerate()
            .map(|(i, pair)| match pair.as_array().map(Vec::as_slice) {
                Some([at, bytes]) => match (at.as_u64(), bytes.as_u64()) {
                    (Some(at_us), Some(bytes)) => Ok(Chunk { at_us, bytes }),
                    _ => Err(self.bad_chunk(key, i)),
                },
                _ => Err(self.bad_chunk(key, i)),
            })
            .collect()
    }

    fn bad_chunk(&self, key: &str, i: usize) -> RecordError {
        RecordError::Invalid {
            field: format!("{}[{i}]", self.field(key)),
            problem: "expected an [at_us, bytes] pair of non-negative integers".into(),
        }
    }

    /// `{count, bytes, last_at_us, max_gap_us[, max_gap_at_us, max_gap_after_bytes]}`; absent
    /// or `null` is none.
    fn chunks_more(&self, key: &str) -> Result<Option<ChunksMore>, RecordError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => {
                let m = self.object(key)?;
                let max_gap_at = match m.map.get("max_gap_at_us") {
                    None | Some(Value::Null) => None,
                    Some(_) => Some((
                        m.integer("max_gap_at_us")?,
                        m.integer("max_gap_after_bytes")?,
                    )),
                };
                Ok(Some(ChunksMore {
                    count: m.integer("count")?,
                    bytes: m.integer("bytes")?,
                    last_at_us: m.integer("last_at_us")?,
                    max_gap_us: m.integer("max_gap_us")?,
                    max_gap_at,
                }))
            }
        }
    }

    fn body(&self, key: &str) -> Result<CapturedBody, RecordError> {
        let b = self.object(key)?;
        let encoding = match b.string("encoding")? {
            "utf8" => BodyEncoding::Utf8,
            "base64" => BodyEncoding::Base64,
            other => {
                return Err(b.invalid(
                    "encoding",
                    format!("expected \"utf8\" or \"base64\", got \"{other}\""),
                ))
            }
        };
        let data = b.string("data")?.to_owned();
        if encoding == BodyEncoding::Base64
            && base64::engine::general_purpose::STANDARD
                .decode(&data)
                .is_err()
        {
            return Err(b.invalid(
                "data",
                "encoding is \"base64\" but data is not base64".into(),
            ));
        }
        Ok(CapturedBody {
            encoding,
            data,
            size: b.integer("size")?,
            truncated: b.boolean("truncated")?,
        })
    }
}

/// True for `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` (`t`/`z` and a space separator accepted).
fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| {
        b.get(r)
            .is_some_and(|d| !d.is_empty() && d.iter().all(u8::is_ascii_digit))
    };
    let at = |i: usize, set: &[u8]| b.get(i).is_some_and(|c| set.contains(c));
    if !(digits(0..4)
        && at(4, b"-")
        && digits(5..7)
        && at(7, b"-")
        && digits(8..10)
        && at(10, b"Tt ")
        && digits(11..13)
        && at(13, b":")
        && digits(14..16)
        && at(16, b":")
        && digits(17..19))
    {
        return false;
    }
    let mut i = 19;
    if at(i, b".") {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    match b.get(i) {
        Some(b'Z' | b'z') => i + 1 == b.len(),
        Some(b'+' | b'-') => {
            digits(i + 1..i + 3) && at(i + 3, b":") && digits(i + 4..i + 6) && i + 6 == b.len()
        }
        _ => false,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// A valid record with the given id, as a JSON value tests can tweak.
    pub(crate) fn sample(id: &str) -> Value {
        json!({
            "schema": "truthtable.capture.v1",
            "id": id,
            "started_at": "2026-11-25T16:10:40.186123Z",
            "duration_ms": 1804.2,
            "outcome": "complete",
            "detail": "via_upstream",
            "request": {
                "method": "POST", "scheme": "http", "authority": "api.example.com",
                "path": "/v1/chat/completions", "query": "",
                "headers": [["content-type", "application/json"]],
                "body": {"encoding": "utf8", "data": "{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", "size": 61, "truncated": false}
            },
            "response": {
                "status": 200,
                "headers": [["content-type", "application/json"]],
                "body": {"encoding": "utf8", "data": "{\"object\":\"chat.completion\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"hello\"},\"finish_reason\":\"stop\"}]}", "size": 120, "truncated": false},
                "first_byte_ms": 212.5
            }
        })
    }

    fn error_of(v: Value) -> String {
        match CaptureRecord::from_value(&v) {
            Ok(_) => panic!("expected an error for {v}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_contract_example_record_parses() {
        let r = CaptureRecord::parse_line(&sample("abc").to_string()).unwrap();
        assert_eq!(r.id, "abc");
        assert_eq!(r.outcome, Outcome::Complete);
        assert_eq!(r.request.method, "POST");
        assert_eq!(r.response.as_ref().unwrap().status, 200);
        assert_eq!(r.response.unwrap().first_byte_ms, Some(212.5));
    }

    #[test]
    fn unknown_extra_fields_are_allowed() {
        let mut v = sample("x");
        v["future_field"] = json!({"a": 1});
        v["request"]["trailers"] = json!([]);
        assert!(CaptureRecord::from_value(&v).is_ok());
    }

    #[test]
    fn null_response_is_allowed() {
        let mut v = sample("x");
        v["response"] = Value::Null;
        assert!(CaptureRecord::from_value(&v).unwrap().response.is_none());
    }

    #[test]
    fn missing_top_level_field_is_named() {
        let mut v = sample("x");
        v.as_object_mut().unwrap().remove("id");
        assert_eq!(error_of(v), "missing field \"id\"");
    }

    #[test]
    fn missing_nested_field_is_named_by_path() {
        let mut v = sample("x");
        v["request"]["body"]
            .as_object_mut()
            .unwrap()
            .remove("truncated");
        assert_eq!(error_of(v), "missing field \"request.body.truncated\"");
        let mut v = sample("x");
        v.as_object_mut().unwrap().remove("response");
        assert_eq!(error_of(v), "missing field \"response\"");
    }

    #[test]
    fn wrong_schema_is_rejected() {
        let mut v = sample("x");
        v["schema"] = json!("truthtable.capture.v2");
        assert!(error_of(v).starts_with("field \"schema\": expected \"truthtable.capture.v1\""));
    }

    #[test]
    fn empty_id_is_rejected() {
        let mut v = sample("x");
        v["id"] = json!("");
        assert_eq!(error_of(v), "field \"id\": must not be empty");
        let mut v = sample("x");
        v["id"] = json!(7);
        assert_eq!(error_of(v), "field \"id\": expected a string, got a number");
    }

    #[test]
    fn bad_outcome_names_the_allowed_values() {
        let mut v = sample("x");
        v["outcome"] = json!("done");
        assert!(error_of(v).contains("\"client_aborted\""));
    }

    #[test]
    fn duration_must_be_a_number() {
        let mut v = sample("x");
        v["duration_ms"] = json!("1804");
        assert_eq!(
            error_of(v),
            "field \"duration_ms\": expected a number, got a string"
        );
    }

    #[test]
    fn started_at_must_be_rfc3339() {
        for ok in [
            "2026-11-25T16:10:40Z",
            "2026-11-25T16:10:40.186Z",
            "2026-11-25T16:10:40.186+01:00",
        ] {
            assert!(is_rfc3339(ok), "{ok}");
        }
        for bad in [
            "yesterday",
            "2026-11-25",
            "2026-11-25T16:10:40",
            "2026-11-25T16:10:40.Z",
        ] {
            assert!(!is_rfc3339(bad), "{bad}");
        }
        let mut v = sample("x");
        v["started_at"] = json!("yesterday");
        assert!(error_of(v).starts_with("field \"started_at\""));
    }

    #[test]
    fn body_encoding_and_base64_are_checked() {
        let mut v = sample("x");
        v["response"]["body"]["encoding"] = json!("hex");
        assert!(error_of(v).starts_with("field \"response.body.encoding\""));
        let mut v = sample("x");
        v["response"]["body"]["encoding"] = json!("base64");
        v["response"]["body"]["data"] = json!("not base64!!");
        assert!(error_of(v).starts_with("field \"response.body.data\""));
    }

    #[test]
    fn headers_must_be_string_pairs() {
        let mut v = sample("x");
        v["request"]["headers"] = json!([["a", "b"], ["c"]]);
        assert_eq!(
            error_of(v),
            "field \"request.headers[1]\": expected a [name, value] pair of strings"
        );
    }

    #[test]
    fn status_must_be_an_http_status() {
        let mut v = sample("x");
        v["response"]["status"] = json!(70000);
        assert!(error_of(v).starts_with("field \"response.status\""));
    }

    #[test]
    fn non_json_and_non_object_lines_are_rejected() {
        assert!(CaptureRecord::parse_line("{")
            .unwrap_err()
            .to_string()
            .starts_with("not valid JSON"));
        assert_eq!(
            CaptureRecord::parse_line("[1]").unwrap_err().to_string(),
            "field \"(record)\": expected a JSON object, got an array"
        );
    }

    #[test]
    fn chunk_times_are_read_and_may_be_absent() {
        let r = CaptureRecord::from_value(&sample("x")).unwrap();
        assert!(
            r.response.unwrap().chunks.is_empty(),
            "an older filter's record"
        );
        let mut v = sample("x");
        v["response"]["chunks"] = json!([[240130, 52], [251877, 15]]);
        v["response"]["chunks_more"] =
            json!({"count": 2, "bytes": 30, "last_at_us": 300000, "max_gap_us": 40000});
        let resp = CaptureRecord::from_value(&v).unwrap().response.unwrap();
        assert_eq!(
            resp.chunks,
            vec![
                Chunk {
                    at_us: 240130,
                    bytes: 52
                },
                Chunk {
                    at_us: 251877,
                    bytes: 15
                }
            ]
        );
        let more = resp.chunks_more.unwrap();
        assert_eq!(more.max_gap_us, 40000);
        assert_eq!(
            more.max_gap_at, None,
            "an older filter's summary says no more"
        );
        v["response"]["chunks_more"]["max_gap_at_us"] = json!(260000);
        v["response"]["chunks_more"]["max_gap_after_bytes"] = json!(80);
        let resp = CaptureRecord::from_value(&v).unwrap().response.unwrap();
        assert_eq!(resp.chunks_more.unwrap().max_gap_at, Some((260000, 80)));
    }

    #[test]
    fn a_malformed_chunk_is_named() {
        let mut v = sample("x");
        v["response"]["chunks"] = json!([[1, 2], [3, "four"]]);
        assert_eq!(
            error_of(v),
            "field \"response.chunks[1]\": expected an [at_us, bytes] pair of non-negative integers"
        );
        let mut v = sample("x");
        v["response"]["chunks_more"] = json!({"count": 1});
        assert_eq!(error_of(v), "missing field \"response.chunks_more.bytes\"");
    }

    #[test]
    fn base64_body_bytes_decode() {
        let mut v = sample("x");
        v["response"]["body"]["encoding"] = json!("base64");
        v["response"]["body"]["data"] = json!("AP8=");
        let r = CaptureRecord::from_value(&v).unwrap();
        assert_eq!(r.response.unwrap().body.bytes().unwrap(), vec![0u8, 255]);
    }
}
