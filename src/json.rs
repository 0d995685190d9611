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

/// For each byte: 0 when it stands as is, else the letter after the backslash (`u` for `\u00XX`).
static ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b'u';
        b += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// Appends `s` as a JSON string, quotes included.
pub fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    // Blocks of input are escaped straight into the Vec's spare capacity, reserved for the worst
    // case (6 bytes out per byte in), so the loops neither check capacity nor call memcpy.
    for block in s.as_bytes().chunks(4096) {
        out.reserve(block.len() * 6);
        let start = out.len();
        let spare = out.spare_capacity_mut();
        let mut n = 0;
        let mut words = block.chunks_exact(8);
        for word in &mut words {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            if needs_escape(u64::from_le_bytes(w)) {
                for &b in word {
                    n += escape_into(&mut spare[n..], b);
                }
            } else {
                for (slot, &b) in spare[n..n + 8].iter_mut().zip(word) {
                    slot.write(b);
                }
                n += 8;
            }
        }
        for &b in words.remainder() {
            n += escape_into(&mut spare[n..], b);
        }
        // SAFETY: the n bytes after `start` were initialised by the loops above, and n is at most
        // the 6 * block.len() bytes reserved.
        unsafe { out.set_len(start + n) };
    }
    out.push(b'"');
}

/// Writes `b`, escaped if JSON needs it, at the start of `to`; returns the bytes written (1 to 6).
#[inline(always)]
fn escape_into(to: &mut [std::mem::MaybeUninit<u8>], b: u8) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match ESCAPE[usize::from(b)] {
        0 => {
            to[0].write(b);
            1
        }
        b'u' => {
            let escaped = [
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ];
            for (slot, e) in to[..6].iter_mut().zip(escaped) {
                slot.write(e);
            }
            6
        }
        letter => {
            to[0].write(b'\\');
            to[1].write(letter);
            2
        }
    }
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
