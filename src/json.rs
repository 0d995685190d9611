//! The few JSON primitives the record writer needs, written straight into the delivery buffer.
//!
//! Bodies dominate a record's size, so string escaping looks at eight bytes at a time (SWAR on a
//! `u64`): a word that needs no escape is stored whole; in one that does, the bytes before the
//! first escape are kept from a whole-word store and the rest go through a table byte by byte.
//! Numbers are written digit by digit, without `fmt`.

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `word` (little-endian) that is `"`, `\` or a control character
/// (< 0x20). Only the lowest set bit is exact: bytes above the first match may be flagged
/// spuriously (a borrow runs into them), which is all the caller relies on.
#[inline(always)]
fn escape_mask(word: u64) -> u64 {
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGHS;
    let quote = has_zero(word ^ (ONES * u64::from(b'"')));
    let backslash = has_zero(word ^ (ONES * u64::from(b'\\')));
    control | quote | backslash
}

/// For each byte, what JSON makes of it: the bytes to store (little-endian, low 16 bits) and how
/// many of them count (bits 16 and up): the byte itself (1), a backslash and a letter (2), or 6 for
/// a `\u00XX` escape, which is written separately.
static ESCAPE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = (1 << 16) | b as u32;
        b += 1;
    }
    let mut c = 0;
    while c < 0x20 {
        table[c] = 6 << 16;
        c += 1;
    }
    let letters: [(u8, u8); 7] = [
        (0x08, b'b'),
        (0x09, b't'),
        (0x0a, b'n'),
        (0x0c, b'f'),
        (0x0d, b'r'),
        (b'"', b'"'),
        (b'\\', b'\\'),
    ];
    let mut i = 0;
    while i < letters.len() {
        let (byte, letter) = letters[i];
        table[byte as usize] = (2 << 16) | ((letter as u32) << 8) | b'\\' as u32;
        i += 1;
    }
    table
};

/// Input bytes escaped per reservation, so that a large body does not reserve six times its size.
const BLOCK: usize = 4096;

/// Appends `s` as a JSON string, quotes included.
pub fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for block in s.as_bytes().chunks(BLOCK) {
        // Worst case 6 bytes out per byte in, plus the 8 bytes a whole-word store may run ahead.
        out.reserve(block.len() * 6 + 8);
        // SAFETY: `escape_block` writes at most `6 * block.len() + 8` bytes from `out`'s end, all
        // inside the capacity just reserved, and returns how many of them it initialised.
        unsafe {
            let end = out.as_mut_ptr().add(out.len());
            let n = escape_block(block, end);
            out.set_len(out.len() + n);
        }
    }
    out.push(b'"');
}

/// Writes `block` JSON-escaped at `dst`; returns the bytes written.
///
/// A word without escapes is stored whole. A word with one is stored whole too, which puts its
/// bytes before the first escape in place; the rest of it goes through the table byte by byte.
///
/// # Safety
/// `dst` must be valid for writes of `6 * block.len() + 8` bytes.
#[inline(always)]
unsafe fn escape_block(block: &[u8], dst: *mut u8) -> usize {
    let (mut i, mut n) = (0usize, 0usize);
    while i + 8 <= block.len() {
        // SAFETY: i + 8 <= block.len(). At most 6 bytes were written per byte consumed (n <= 6i),
        // so the 8-byte store ends by 6i + 8 <= 6 * block.len() + 8.
        let word = unsafe { block.as_ptr().add(i).cast::<u64>().read_unaligned() };
        unsafe { dst.add(n).cast::<u64>().write_unaligned(word) };
        let mask = escape_mask(u64::from_le(word));
        if mask == 0 {
            i += 8;
            n += 8;
            continue;
        }
        let clean = (mask.trailing_zeros() / 8) as usize;
        let word_end = i + 8;
        i += clean;
        n += clean;
        while i < word_end {
            // SAFETY: n <= 6i and each byte writes at most 6, so n + 6 <= 6 * block.len().
            n += unsafe { escape_byte(block[i], dst.add(n)) };
            i += 1;
        }
    }
    for &b in &block[i..] {
        // SAFETY: as above.
        n += unsafe { escape_byte(b, dst.add(n)) };
    }
    n
}

/// Writes `b`, escaped if JSON needs it, at `to`; returns the bytes written (1, 2 or 6).
///
/// # Safety
/// `to` must be valid for writes of 6 bytes.
#[inline(always)]
unsafe fn escape_byte(b: u8, to: *mut u8) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let entry = ESCAPE[usize::from(b)];
    let len = (entry >> 16) as usize;
    if len == 6 {
        let escaped = [
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX[usize::from(b >> 4)],
            HEX[usize::from(b & 0xf)],
        ];
        unsafe { to.copy_from_nonoverlapping(escaped.as_ptr(), 6) };
    } else {
        // The byte itself or a backslash and a letter; a second byte past a 1-byte entry is
        // scratch that the next write covers.
        unsafe { to.cast::<u16>().write_unaligned((entry as u16).to_le()) };
    }
    len
}

/// Appends bytes as a JSON string: as they are when UTF-8, else with U+FFFD for invalid sequences.
pub fn lossy(out: &mut Vec<u8>, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => string(out, text),
        Err(_) => string(out, &String::from_utf8_lossy(bytes)),
    }
}

/// Appends an unsigned integer in decimal.
pub fn uint(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Appends `n` as exactly `width` decimal digits (the low ones; zero-padded).
pub fn digits(out: &mut Vec<u8>, mut n: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let width = width.min(buf.len());
    for slot in buf[..width].iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&buf[..width]);
}

/// Appends a duration in milliseconds with microsecond resolution (`1804.2`, `0.973`, `12`).
pub fn millis(out: &mut Vec<u8>, micros: u64) {
    uint(out, micros / 1000);
    let frac = micros % 1000;
    if frac != 0 {
        out.push(b'.');
        let (digits_kept, value) = match frac {
            f if f % 100 == 0 => (1, f / 100),
            f if f % 10 == 0 => (2, f / 10),
            f => (3, f),
        };
        digits(out, value, digits_kept);
    }
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
    fn escapes_on_both_sides_of_a_block_boundary_are_kept() {
        for at in BLOCK - 9..BLOCK + 9 {
            let mut s = "x".repeat(2 * BLOCK + 3);
            s.replace_range(at..at + 1, "\n");
            s.replace_range(at + 2..at + 3, "\"");
            let got: String = serde_json::from_str(&json(&s)).unwrap();
            assert_eq!(got, s, "escapes at {at}");
        }
    }

    #[test]
    fn numbers_are_written_in_decimal() {
        let mut out = Vec::new();
        uint(&mut out, 0);
        out.push(b' ');
        uint(&mut out, u64::MAX);
        out.push(b' ');
        digits(&mut out, 7, 4);
        out.push(b' ');
        digits(&mut out, 123_456, 6);
        assert_eq!(out, b"0 18446744073709551615 0007 123456");
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
        fn long_strings_round_trip_across_blocks(
            s in "([a-z ]{0,9}[\"\\\\\n\x01é€😀]){800,1600}",
        ) {
            prop_assert!(s.len() > BLOCK / 2);
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
