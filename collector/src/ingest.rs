//! Ingest bodies: NDJSON split into lines, or frames (see [`crate::frames`]) rebuilt into the same
//! lines; every line validated; each record turned into a row.
//!
//! All or nothing: [`parse_ndjson`] and [`parse_framed`] return every record or the first bad
//! line's (frame's) number and problem. NDJSON: blank lines are skipped; `\r\n` line ends are
//! accepted.

use crate::frames;
use crate::record::{CaptureRecord, RecordError};
use crate::store::NewCapture;

/// Why an ingest body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    /// A line (1-based) is not a valid v1 record.
    #[error("line {line}: {problem}")]
    BadLine {
        /// 1-based line number in the request body.
        line: usize,
        /// What is wrong with it.
        problem: String,
    },
    /// A frame (1-based) is malformed or not a valid v1 record.
    #[error("frame {frame}{}: {problem}", .id.as_ref().map(|id| format!(" (id {id:?})")).unwrap_or_default())]
    BadFrame {
        /// 1-based frame number in the request body.
        frame: usize,
        /// The record's id, when its JSON gives one.
        id: Option<String>,
        /// What is wrong with it.
        problem: String,
    },
    /// The body holds no record at all.
    #[error("request body holds no capture records")]
    Empty,
}

/// A validated record and its line exactly as received.
#[derive(Debug, Clone)]
pub struct IngestedLine {
    /// The line text (without its line end).
    pub raw: String,
    /// The typed record.
    pub record: CaptureRecord,
}

/// Validates every line of an NDJSON body.
pub fn parse_ndjson(body: &[u8]) -> Result<Vec<IngestedLine>, IngestError> {
    let mut out = Vec::new();
    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let bad = |problem: String| IngestError::BadLine {
            line: i + 1,
            problem,
        };
        let text = std::str::from_utf8(line).map_err(|e| bad(format!("not valid UTF-8 ({e})")))?;
        let record =
            CaptureRecord::parse_line(text).map_err(|e: RecordError| bad(e.to_string()))?;
        out.push(IngestedLine {
            raw: text.to_owned(),
            record,
        });
    }
    if out.is_empty() {
        return Err(IngestError::Empty);
    }
    Ok(out)
}

/// Validates every frame of a framed body, each rebuilt as the NDJSON line the filter would have
/// sent: what is stored is the same either way.
pub fn parse_framed(body: &[u8]) -> Result<Vec<IngestedLine>, IngestError> {
    let split = frames::split(body).map_err(|e| match e.frame {
        0 => IngestError::Empty,
        frame => IngestError::BadFrame {
            frame,
            id: e.id,
            problem: e.problem,
        },
    })?;
    let mut out = Vec::with_capacity(split.len());
    for (i, frame) in split.iter().enumerate() {
        let bad = |problem: String| IngestError::BadFrame {
            frame: i + 1,
            id: frame.id(),
            problem,
        };
        let raw = frame.to_line().map_err(bad)?;
        let record =
            CaptureRecord::parse_line(&raw).map_err(|e: RecordError| bad(e.to_string()))?;
        out.push(IngestedLine { raw, record });
    }
    Ok(out)
}

/// The store row for a validated line, and its record (for the indexer, which derives the
/// digest from it once the row is committed).
pub fn to_row(line: IngestedLine) -> (NewCapture, CaptureRecord) {
    let record = line.record;
    let row = NewCapture {
        id: record.id.clone(),
        started_at: record.started_at.clone(),
        method: record.request.method.clone(),
        path: record.request.path.clone(),
        status: record.response.as_ref().map(|r| r.status),
        outcome: record.outcome.as_str().to_owned(),
        duration_ms: record.duration_ms,
        raw: line.raw,
    };
    (row, record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::sample;

    #[test]
    fn every_line_becomes_a_record_and_blank_lines_are_skipped() {
        let body = format!("{}\r\n\n{}\n", sample("a"), sample("b"));
        let lines = parse_ndjson(body.as_bytes()).unwrap();
        let ids: Vec<_> = lines.iter().map(|l| l.record.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert!(!lines[0].raw.ends_with('\r'));
    }

    #[test]
    fn the_first_bad_line_is_named_by_number() {
        let mut bad = sample("c");
        bad.as_object_mut().unwrap().remove("id");
        let body = format!("{}\n{}\n{}\n", sample("a"), sample("b"), bad);
        assert_eq!(
            parse_ndjson(body.as_bytes()).unwrap_err().to_string(),
            "line 3: missing field \"id\""
        );
    }

    #[test]
    fn invalid_utf8_is_a_bad_line() {
        let mut body = format!("{}\n", sample("a")).into_bytes();
        body.extend_from_slice(b"\xff\xfe\n");
        let err = parse_ndjson(&body).unwrap_err().to_string();
        assert!(err.starts_with("line 2: not valid UTF-8"), "{err}");
    }

    #[test]
    fn an_empty_body_is_refused() {
        assert!(matches!(parse_ndjson(b"\n  \n"), Err(IngestError::Empty)));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = parse_ndjson(&bytes);
        }

        #[test]
        fn the_reported_line_is_the_corrupted_one(n in 1usize..8, bad_at in 0usize..8, cut in 1usize..40) {
            let bad_at = bad_at % n;
            let body: String = (0..n)
                .map(|i| {
                    let line = sample(&format!("id-{i}")).to_string();
                    if i == bad_at { format!("{}\n", &line[..line.len() - cut]) } else { format!("{line}\n") }
                })
                .collect();
            match parse_ndjson(body.as_bytes()) {
                Err(IngestError::BadLine { line, .. }) => proptest::prop_assert_eq!(line, bad_at + 1),
                other => proptest::prop_assert!(false, "expected a bad line, got {:?}", other.map(|v| v.len())),
            }
        }
    }

    #[test]
    fn rows_carry_summary_columns_and_the_raw_line() {
        let line = parse_ndjson(sample("a").to_string().as_bytes())
            .unwrap()
            .remove(0);
        let raw = line.raw.clone();
        let (row, record) = to_row(line);
        assert_eq!(row.id, "a");
        assert_eq!(row.status, Some(200));
        assert_eq!(row.outcome, "complete");
        assert_eq!(row.raw, raw);
        assert_eq!(record.id, "a");
    }
}
