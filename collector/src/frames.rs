//! Framed ingest bodies (`application/vnd.truthtable.frames.v1`, the filter's
//! `delivery_format: "framed"`): each record's JSON without its bodies' `encoding` and `data`,
//! followed by the kept body bytes exactly as they crossed the filter. Each frame is turned back
//! into the NDJSON line the filter would have sent, byte for byte, so what is stored and served
//! cannot tell how a record arrived.
//!
//! A frame is a header line, the JSON, the request body bytes, the response body bytes and `\n`:
//!
//! ```text
//! TTF1 <json_len> <req_at> <req_len> <resp_at> <resp_len>\n<json><request bytes><response bytes>\n
//! ```
//!
//! Decimal numbers (1 to 20 digits; the filter writes 10, zero-padded). `req_at` and `resp_at` are
//! the offsets in the JSON right after the `{` of `request.body` and `response.body`, where
//! `"encoding":…,"data":…,` belong; `resp_at` is 0 when `response` is null. The lengths are all a
//! reader needs to split a batch: nothing is scanned but the header line, and nothing is
//! allocated beyond the rebuilt line of one record at a time.

use base64::Engine;
use serde::de::IgnoredAny;
use serde::Deserialize;

/// The content type of a framed body.
pub const CONTENT_TYPE: &str = "application/vnd.truthtable.frames.v1";

/// A header line is at most this long, its `\n` included.
const MAX_HEADER: usize = 128;

/// One frame of a body, borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub json: &'a [u8],
    /// Offset in `json` and the bytes of the request body.
    pub request: (usize, &'a [u8]),
    /// Offset in `json` and the bytes of the response body; `None` when `response` is null.
    pub response: Option<(usize, &'a [u8])>,
}

/// Why a body or one of its frames was refused: the frame's 1-based position and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("frame {frame}: {problem}")]
pub struct FrameError {
    pub frame: usize,
    /// The record's id, when the frame's JSON could be found and names one.
    pub id: Option<String>,
    pub problem: String,
}

/// Whether a `content-type` value names the framed format (parameters and case ignored).
pub fn is_framed(content_type: &[u8]) -> bool {
    let base = content_type
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default();
    base.trim_ascii()
        .eq_ignore_ascii_case(CONTENT_TYPE.as_bytes())
}

/// Splits a framed body into its frames. All or nothing: the first malformed frame is named.
pub fn split(body: &[u8]) -> Result<Vec<Frame<'_>>, FrameError> {
    let mut frames = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let n = frames.len() + 1;
        let bad = |problem: String| FrameError {
            frame: n,
            id: probe_id(rest),
            problem,
        };
        let (frame, after) = split_one(rest).map_err(bad)?;
        frames.push(frame);
        rest = after;
    }
    if frames.is_empty() {
        return Err(FrameError {
            frame: 0,
            id: None,
            problem: "the body holds no frame".to_owned(),
        });
    }
    Ok(frames)
}

/// One frame as the filter writes it: `json` (the record without its bodies' `encoding` and
/// `data`), the offsets in it where those belong (`resp_at` 0 when there is no response), and the
/// body bytes. The inverse of [`split`]; the collector itself only reads frames (tests and the
/// ingest benchmark write them).
pub fn encode(
    json: &str,
    req_at: usize,
    request: &[u8],
    resp_at: usize,
    response: &[u8],
) -> Vec<u8> {
    let mut out = format!(
        "TTF1 {:010} {req_at:010} {:010} {resp_at:010} {:010}\n",
        json.len(),
        request.len(),
        response.len()
    )
    .into_bytes();
    out.extend_from_slice(json.as_bytes());
    out.extend_from_slice(request);
    out.extend_from_slice(response);
    out.push(b'\n');
    out
}

/// The id in a malformed frame's JSON, when its header line gives where the JSON is.
fn probe_id(rest: &[u8]) -> Option<String> {
    let end = rest.iter().take(MAX_HEADER).position(|&b| b == b'\n')?;
    let json_len: usize = std::str::from_utf8(&rest[..end])
        .ok()?
        .split(' ')
        .nth(1)?
        .parse()
        .ok()?;
    let json = rest.get(end + 1..end.checked_add(1)?.checked_add(json_len)?)?;
    let frame = Frame {
        json,
        request: (0, &[]),
        response: None,
    };
    frame.id()
}

fn split_one(rest: &[u8]) -> Result<(Frame<'_>, &[u8]), String> {
    let head = &rest[..rest.len().min(MAX_HEADER)];
    let end = head
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| format!("no header line (`TTF1 …\\n`) within {MAX_HEADER} bytes"))?;
    let line =
        std::str::from_utf8(&head[..end]).map_err(|_| "the header line is not text".to_owned())?;
    let mut fields = line.split(' ');
    if fields.next() != Some("TTF1") {
        return Err(format!(
            "the header line {line:?} does not start with TTF1 (framed version 1)"
        ));
    }
    let mut numbers = [0usize; 5];
    for (i, name) in ["json_len", "req_at", "req_len", "resp_at", "resp_len"]
        .iter()
        .enumerate()
    {
        let field = fields
            .next()
            .ok_or_else(|| format!("the header line {line:?} lacks {name}"))?;
        let valid =
            !field.is_empty() && field.len() <= 20 && field.bytes().all(|b| b.is_ascii_digit());
        numbers[i] = valid
            .then(|| field.parse().ok())
            .flatten()
            .ok_or_else(|| format!("{name} in the header line is not a number: {field:?}"))?;
    }
    if fields.next().is_some() {
        return Err(format!(
            "the header line {line:?} has more than five numbers"
        ));
    }
    let [json_len, req_at, req_len, resp_at, resp_len] = numbers;
    let body = &rest[end + 1..];
    let total = json_len
        .checked_add(req_len)
        .and_then(|n| n.checked_add(resp_len))
        .and_then(|n| n.checked_add(1))
        .filter(|&n| n <= body.len())
        .ok_or_else(|| {
            format!(
                "the header announces {json_len} + {req_len} + {resp_len} bytes and a newline, \
                 but only {} bytes follow",
                body.len()
            )
        })?;
    if body[total - 1] != b'\n' {
        return Err("the frame does not end with a newline after its bodies".to_owned());
    }
    let json = &body[..json_len];
    let request = &body[json_len..json_len + req_len];
    let response = &body[json_len + req_len..json_len + req_len + resp_len];
    let response = match resp_at {
        0 if resp_len > 0 => {
            return Err(format!(
                "{resp_len} response body bytes, but resp_at is 0 (no response)"
            ))
        }
        0 => None,
        at => Some((at, response)),
    };
    Ok((
        Frame {
            json,
            request: (req_at, request),
            response,
        },
        &body[total..],
    ))
}

/// What the rebuilding needs to know of a frame's JSON.
#[derive(Deserialize)]
struct Shape {
    request: Side,
    response: Option<Side>,
}

#[derive(Deserialize)]
struct Side {
    body: BodyShape,
}

#[derive(Deserialize)]
struct BodyShape {
    size: u64,
    truncated: bool,
    data: Option<IgnoredAny>,
    encoding: Option<IgnoredAny>,
}

impl<'a> Frame<'a> {
    /// The `id` of the frame's record, when its JSON says (to name it in an error).
    pub fn id(&self) -> Option<String> {
        #[derive(Deserialize)]
        struct Id {
            id: String,
        }
        serde_json::from_slice::<Id>(self.json).ok().map(|i| i.id)
    }

    /// The NDJSON line (without its newline) the filter would have sent for this record.
    pub fn to_line(&self) -> Result<String, String> {
        let json = std::str::from_utf8(self.json)
            .map_err(|e| format!("the record's JSON is not UTF-8 ({e})"))?;
        let shape: Shape = serde_json::from_str(json)
            .map_err(|e| format!("the record's JSON is not a framed v1 record: {e}"))?;
        let request = checked("request", shape.request.body, self.request, json)?;
        let response = match (shape.response, self.response) {
            (Some(side), Some(at)) => Some(checked("response", side.body, at, json)?),
            (None, None) => None,
            (Some(_), None) => return Err("response is not null, but resp_at is 0".to_owned()),
            (None, Some(_)) => return Err("response is null, but resp_at is not 0".to_owned()),
        };
        if let Some((at, _)) = response {
            if at <= request.0 {
                return Err(format!(
                    "resp_at ({at}) must come after req_at ({})",
                    request.0
                ));
            }
        }
        let extra = self.request.1.len() * 2 + self.response.map_or(0, |r| r.1.len() * 2);
        let mut line = String::with_capacity(json.len() + extra + 64);
        let mut copied = 0;
        for (at, data) in std::iter::once(request).chain(response) {
            line.push_str(&json[copied..at]);
            line.push_str(&data);
            copied = at;
        }
        line.push_str(&json[copied..]);
        Ok(line)
    }
}

/// Checks one body of a frame against its JSON; the offset and the `"encoding":…,"data":…,` to
/// insert there.
fn checked(
    side: &str,
    shape: BodyShape,
    (at, bytes): (usize, &[u8]),
    json: &str,
) -> Result<(usize, String), String> {
    if shape.data.is_some() || shape.encoding.is_some() {
        return Err(format!(
            "{side}.body carries encoding or data: in a frame its bytes follow the JSON"
        ));
    }
    let fits = at >= 1
        && json.as_bytes().get(at - 1) == Some(&b'{')
        && json.as_bytes()[at..].starts_with(b"\"size\":");
    if !fits {
        return Err(format!(
            "{side} offset {at} is not right after the `{{` of a body object"
        ));
    }
    let kept = bytes.len() as u64;
    if kept > shape.size || shape.truncated != (kept < shape.size) {
        return Err(format!(
            "{side}.body: {kept} bytes follow, but the record says size {} and truncated {}",
            shape.size, shape.truncated
        ));
    }
    let mut out = String::with_capacity(bytes.len() + 32);
    // As the filter's writer decides: text when the bytes are UTF-8 (a character cut off at the
    // end of a truncated body dropped), base64 otherwise.
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => Some(text),
        Err(e) if shape.truncated && e.error_len().is_none() => {
            std::str::from_utf8(&bytes[..e.valid_up_to()]).ok()
        }
        Err(_) => None,
    };
    match text {
        Some(text) => {
            out.push_str("\"encoding\":\"utf8\",\"data\":");
            out.push_str(&serde_json::to_string(text).map_err(|e| e.to_string())?);
        }
        None => {
            out.push_str("\"encoding\":\"base64\",\"data\":\"");
            base64::engine::general_purpose::STANDARD.encode_string(bytes, &mut out);
            out.push('"');
        }
    }
    out.push(',');
    Ok((at, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A frame as the filter writes it, from the JSON with its two offsets.
    fn frame(json: &str, request: &[u8], response: Option<&[u8]>) -> Vec<u8> {
        let req_at = json.find("\"body\":{").unwrap() + 8;
        let resp_at = response.map_or(0, |_| json.rfind("\"body\":{").unwrap() + 8);
        encode(json, req_at, request, resp_at, response.unwrap_or_default())
    }

    const JSON: &str = r#"{"schema":"truthtable.capture.v1","id":"a1","request":{"path":"/","body":{"size":5,"truncated":false}},"response":{"status":200,"body":{"size":4,"truncated":false},"first_byte_ms":1.5}}"#;

    fn lines(body: &[u8]) -> Result<Vec<String>, String> {
        split(body)
            .map_err(|e| e.to_string())?
            .iter()
            .map(|f| f.to_line())
            .collect()
    }

    #[test]
    fn a_frame_becomes_the_ndjson_line() {
        let body = frame(JSON, b"he\"lo", Some(b"\x00\xff\x01\x02"));
        let got = lines(&body).unwrap();
        assert_eq!(
            got,
            [
                r#"{"schema":"truthtable.capture.v1","id":"a1","request":{"path":"/","body":{"encoding":"utf8","data":"he\"lo","size":5,"truncated":false}},"response":{"status":200,"body":{"encoding":"base64","data":"AP8BAg==","size":4,"truncated":false},"first_byte_ms":1.5}}"#
            ]
        );
        let null = r#"{"id":"b","request":{"body":{"size":0,"truncated":false}},"response":null}"#;
        let two = [frame(JSON, b"hello", Some(b"abcd")), frame(null, b"", None)].concat();
        let got = lines(&two).unwrap();
        assert_eq!(got.len(), 2);
        assert!(got[1].contains(r#""body":{"encoding":"utf8","data":"","size":0"#));
    }

    #[test]
    fn a_character_cut_off_by_the_cap_is_dropped_as_the_filter_does() {
        let json = r#"{"request":{"body":{"size":9,"truncated":true}},"response":null}"#;
        let got = lines(&frame(json, "abcdé".as_bytes().split_at(5).0, None)).unwrap();
        assert!(
            got[0].contains(r#""encoding":"utf8","data":"abcd","size":9"#),
            "{got:?}"
        );
        // Not truncated: the same bytes are not text.
        let json = r#"{"request":{"body":{"size":5,"truncated":false}},"response":null}"#;
        let got = lines(&frame(json, "abcdé".as_bytes().split_at(5).0, None)).unwrap();
        assert!(got[0].contains(r#""encoding":"base64""#), "{got:?}");
    }

    #[test]
    fn malformed_frames_are_named_with_the_problem() {
        let good = frame(JSON, b"hello", Some(b"abcd"));
        for (body, says) in [
            (b"".to_vec(), "no frame"),
            (b"TTF2 1 1 1 1 1\n{}".to_vec(), "TTF1"),
            (b"TTF1 1 1 1\n".to_vec(), "lacks"),
            (b"TTF1 x 1 1 1 1\n".to_vec(), "not a number"),
            (b"TTF1 999999 1 0 0 0\n{}\n".to_vec(), "only"),
            (b"TTF1 1 1 1 1 1 1\n".to_vec(), "more than five"),
            (vec![b'T'; 300], "no header line"),
            (good[..good.len() - 1].to_vec(), "only"),
            ([&good[..good.len() - 1], b"x"].concat(), "newline"),
            (frame(JSON, b"hell", Some(b"abcd")), "size 5"),
            (frame(JSON, b"hello", None), "resp_at is 0"),
            (
                frame(
                    &JSON.replace(r#"{"size":5"#, r#"{"data":"x","size":5"#),
                    b"hello",
                    Some(b"abcd"),
                ),
                "carries encoding or data",
            ),
        ] {
            let err = lines(&body).unwrap_err();
            assert!(err.contains(says), "{says:?} not in {err:?}");
        }
        let two = [good.clone(), b"TTF1 nope\n".to_vec()].concat();
        assert!(lines(&two).unwrap_err().starts_with("frame 2: "));
    }

    #[test]
    fn offsets_must_point_at_body_objects() {
        let mut body = frame(JSON, b"hello", Some(b"abcd"));
        // Point req_at somewhere else in the JSON.
        body[16..26].copy_from_slice(b"0000000003");
        let err = lines(&body).unwrap_err();
        assert!(err.contains("not right after"), "{err}");
    }

    #[test]
    fn content_types_are_recognised_without_parameters_or_case() {
        assert!(is_framed(b"application/vnd.truthtable.frames.v1"));
        assert!(is_framed(
            b"Application/VND.truthtable.frames.v1; charset=binary"
        ));
        assert!(!is_framed(b"application/x-ndjson"));
        assert!(!is_framed(b""));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(frames) = split(&body) {
                for f in frames { let _ = f.to_line(); let _ = f.id(); }
            }
        }

        /// Any cut of a valid body is refused as a whole or yields only whole frames.
        #[test]
        fn a_cut_body_is_refused_or_whole(cut in 0usize..400) {
            let body = [frame(JSON, b"hello", Some(b"abcd")), frame(JSON, b"world", Some(b"wxyz"))].concat();
            let cut = cut.min(body.len());
            match lines(&body[..cut]) {
                Ok(got) => prop_assert!(cut == body.len() / 2 || cut == body.len(), "{} frames from a cut at {}", got.len(), cut),
                Err(_) => prop_assert!(cut != body.len()),
            }
        }

        /// Bodies of any bytes rebuild a line whose data decodes back to exactly those bytes.
        #[test]
        fn body_bytes_come_back_exactly(request in prop::collection::vec(any::<u8>(), 0..64)) {
            let json = format!(r#"{{"request":{{"body":{{"size":{},"truncated":false}}}},"response":null}}"#, request.len());
            let line = &lines(&frame(&json, &request, None)).unwrap()[0];
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let body = &v["request"]["body"];
            let data = body["data"].as_str().unwrap();
            let back = if body["encoding"] == "base64" {
                base64::engine::general_purpose::STANDARD.decode(data).unwrap()
            } else {
                data.as_bytes().to_vec()
            };
            prop_assert_eq!(back, request);
        }
    }
}
