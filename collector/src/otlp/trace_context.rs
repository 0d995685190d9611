//! Which trace a capture's span belongs to: the caller's, when the captured request carried a
//! valid W3C `traceparent` (the span is then a child of the caller's span), else a trace of its
//! own. Ids are derived from the capture id, so exporting a capture again yields the same span
//! (receivers that key spans by id, as Phoenix does, keep one).

use sha2::{Digest, Sha256};

use crate::record::Headers;

/// W3C trace-flags bit: the caller sampled this trace.
pub const SAMPLED: u8 = 0x01;

/// The span's place in a trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanContext {
    /// The trace: the caller's, or one derived from the capture id.
    pub trace_id: [u8; 16],
    /// This span, derived from the capture id.
    pub span_id: [u8; 8],
    /// The caller's span, when the request carried one.
    pub parent: Option<Parent>,
}

/// The caller's span, from its `traceparent` (and `tracestate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    /// The caller's span id (`parent-id`).
    pub span_id: [u8; 8],
    /// The trace flags it sent.
    pub flags: u8,
    /// Its `tracestate`, passed on as it came (empty when none or unusable).
    pub state: String,
}

/// The span context of the capture `id` whose request had `headers`.
pub fn span_context(id: &str, headers: &Headers) -> SpanContext {
    let digest = Sha256::digest(id.as_bytes());
    let mut own_trace = [0u8; 16];
    let mut span_id = [0u8; 8];
    own_trace.copy_from_slice(&digest[..16]);
    span_id.copy_from_slice(&digest[16..24]);
    if span_id == [0; 8] {
        span_id[7] = 1;
    }
    if own_trace == [0; 16] {
        own_trace[15] = 1;
    }
    let traceparents: Vec<&str> = values(headers, "traceparent").collect();
    // One traceparent, or several that agree; anything else starts a trace of our own.
    let parsed = match traceparents.split_first() {
        Some((first, rest)) if rest.iter().all(|v| v.trim() == first.trim()) => {
            parse_traceparent(first)
        }
        _ => None,
    };
    match parsed {
        Some((trace_id, parent_id, flags)) => {
            let state: Vec<&str> = values(headers, "tracestate")
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            let state = state.join(",");
            SpanContext {
                trace_id,
                span_id,
                parent: Some(Parent {
                    span_id: parent_id,
                    flags,
                    // Longer than the W3C limit: not a tracestate anyone should pass on.
                    state: if state.len() <= 512 {
                        state
                    } else {
                        String::new()
                    },
                }),
            }
        }
        None => SpanContext {
            trace_id: own_trace,
            span_id,
            parent: None,
        },
    }
}

fn values<'a>(headers: &'a Headers, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A W3C `traceparent` (`00-<trace-id>-<parent-id>-<flags>`): trace id, parent id and flags,
/// or `None` when it is not valid. Versions above 00 are read by their first four fields, as
/// the recommendation asks; `ff`, uppercase hex and all-zero ids are invalid.
pub fn parse_traceparent(value: &str) -> Option<([u8; 16], [u8; 8], u8)> {
    let v = value.trim().as_bytes();
    let version = hex::<1>(v.get(0..2)?)?[0];
    if version == 0xff || v.len() < 55 || (version == 0 && v.len() != 55) {
        return None;
    }
    if v.get(2) != Some(&b'-') || v.get(35) != Some(&b'-') || v.get(52) != Some(&b'-') {
        return None;
    }
    if v.len() > 55 && v.get(55) != Some(&b'-') {
        return None;
    }
    let trace_id = hex::<16>(v.get(3..35)?)?;
    let parent_id = hex::<8>(v.get(36..52)?)?;
    let flags = hex::<1>(v.get(53..55)?)?[0];
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some((trace_id, parent_id, flags))
}

/// `2 * N` lowercase hex digits as bytes.
fn hex<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    if digits.len() != 2 * N {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        let byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        if let Some(slot) = out.get_mut(i) {
            *slot = byte;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_valid_traceparent_makes_the_span_a_child_in_the_callers_trace() {
        let c = span_context(
            "req-1",
            &headers(&[("traceparent", TP), ("tracestate", "rojo=00f067aa0ba902b7")]),
        );
        assert_eq!(
            c.trace_id,
            [
                0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
                0x47, 0x36
            ]
        );
        let parent = c.parent.unwrap();
        assert_eq!(
            parent.span_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert_eq!(parent.flags, SAMPLED);
        assert_eq!(parent.state, "rojo=00f067aa0ba902b7");
        assert_ne!(c.span_id, parent.span_id);
    }

    #[test]
    fn ids_are_the_same_every_time_a_capture_is_exported() {
        let h = headers(&[("traceparent", TP)]);
        assert_eq!(span_context("req-1", &h), span_context("req-1", &h));
        assert_ne!(
            span_context("req-1", &h).span_id,
            span_context("req-2", &h).span_id
        );
        let own = span_context("req-1", &headers(&[]));
        assert_eq!(own, span_context("req-1", &headers(&[])));
        assert_ne!(own.trace_id, span_context("req-2", &headers(&[])).trace_id);
        assert!(own.parent.is_none());
    }

    #[test]
    fn invalid_traceparents_start_a_trace_of_its_own() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
            let c = span_context("r", &headers(&[("traceparent", bad)]));
            assert!(c.parent.is_none(), "{bad:?}");
        }
        // Two traceparents that disagree: which one is the caller's is unknowable.
        let two = headers(&[
            ("traceparent", TP),
            (
                "traceparent",
                "00-11111111111111111111111111111111-2222222222222222-01",
            ),
        ]);
        assert!(span_context("r", &two).parent.is_none());
    }

    #[test]
    fn a_later_version_is_read_by_its_first_four_fields() {
        let future = format!("cc{}-what-comes-next", &TP[2..]);
        assert!(parse_traceparent(&future).is_some());
        assert!(parse_traceparent(&format!("cc{}x", &TP[2..])).is_none());
        assert_eq!(
            parse_traceparent(&format!(" {TP} ")).map(|t| t.2),
            Some(SAMPLED)
        );
    }

    proptest::proptest! {
        #[test]
        fn any_header_value_is_safe(value in ".{0,80}") {
            let _ = parse_traceparent(&value);
            let _ = span_context("r", &headers(&[("traceparent", &value)]));
        }
    }
}
