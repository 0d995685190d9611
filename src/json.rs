//! The few JSON primitives the record writer needs, written straight into the delivery buffer.
//!
//! Bodies dominate a record's size, so string escaping skips eight bytes at a time over runs that
//! need no escape (SWAR on a `u64`), and copies them in one piece.

use std::io::Write;

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Whether any byte of `word` is `"`, `\` or a control character (< 0x20).
#[inline]
fn needs_escape(word: u64) -> bool {
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGHS;
    let quote = has_zero(word ^ (ONES * u64::from(b'"')));
    let backslash = has_zero(word ^ (ONES * u64::from(b'\\')));
    (control | quote | backslash) != 0
}

/// Appends `s` as a JSON string, quotes included.
pub fn string(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut run = 0; // start of the bytes not yet copied
    let mut i = 0;
    while i < bytes.len() {
        while let Some(chunk) = bytes.get(i..i + 8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            if needs_escape(u64::from_le_bytes(word)) {
                break;
            }
            i += 8;
        }
        let Some(&b) = bytes.get(i) else { break };
        let escaped: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => {
                out.extend_from_slice(&bytes[run..i]);
                let _ = write!(out, "\\u{b:04x}");
                i += 1;
                run = i;
                continue;
            }
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&bytes[run..i]);
        out.extend_from_slice(escaped);
        i += 1;
        run = i;
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

/// Appends bytes as a JSON string: as they are when UTF-8, else with U+FFFD for invalid sequences.
pub fn lossy(out: &mut Vec<u8>, bytes: &[u8]) {
    string(out, &String::from_utf8_lossy(bytes));
}

/// Appends a duration in milliseconds with microsecond resolution (`1804.2`, `0.973`, `12`).
pub fn millis(out: &mut Vec<u8>, micros: u64) {
    let (whole, frac) = (micros / 1000, micros % 1000);
    let _ = match frac {
        0 => write!(out, "{whole}"),
        f if f % 100 == 0 => write!(out, "{whole}.{}", f / 100),
        f if f % 10 == 0 => write!(out, "{whole}.{:02}", f / 10),
        f => write!(out, "{whole}.{f:03}"),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn json(s: &str) -> String {
        let mut out = Vec::new();
        string(&mut out, s);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn escapes_what_json_requires_and_nothing_else() {
        assert_eq!(json(""), r#""""#);
        assert_eq!(
            json("plain text, long enough to take the fast path"),
            r#""plain text, long enough to take the fast path""#
        );
        assert_eq!(json("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(json("data: {}\n\n"), r#""data: {}\n\n""#);
        assert_eq!(
            json("\r\t\u{8}\u{c}\u{1}\u{1f}"),
            r#""\r\t\b\f\u0001\u001f""#
        );
        assert_eq!(json("é€😀/\u{7f}"), "\"é€😀/\u{7f}\"");
    }

    #[test]
    fn an_escape_at_any_position_of_a_word_is_found() {
        for at in 0..24 {
            let mut s = "x".repeat(24);
            s.replace_range(at..at + 1, "\"");
            let got: String = serde_json::from_str(&json(&s)).unwrap();
            assert_eq!(got, s, "quote at {at}");
        }
    }

    #[test]
    fn invalid_utf8_is_replaced_not_dropped() {
        let mut out = Vec::new();
        lossy(&mut out, b"ok\xffok");
        assert_eq!(String::from_utf8(out).unwrap(), "\"ok\u{fffd}ok\"");
    }

    #[test]
    fn milliseconds_keep_microseconds_without_trailing_zeros() {
        let m = |us| {
            let mut out = Vec::new();
            millis(&mut out, us);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(m(1_804_200), "1804.2");
        assert_eq!(m(973), "0.973");
        assert_eq!(m(12_000), "12");
        assert_eq!(m(5_050), "5.05");
        assert_eq!(m(0), "0");
    }

    proptest! {
        #[test]
        fn any_string_round_trips_through_a_json_parser(s in any::<String>()) {
            let back: String = serde_json::from_str(&json(&s)).unwrap();
            prop_assert_eq!(back, s);
        }

        #[test]
        fn control_heavy_strings_round_trip(s in "[\\x00-\\x20\"\\\\a-z]{0,64}") {
            let back: String = serde_json::from_str(&json(&s)).unwrap();
            prop_assert_eq!(back, s);
        }
    }
}
