//! The few JSON primitives the record writer needs, written straight into the delivery buffer.
//!
//! Bodies dominate a record's size, so string escaping looks at sixteen bytes at a time: a chunk
//! is stored whole and scanned with vector compares for the bytes JSON must escape; each of those
//! goes through a table and the clean run after it is stored whole, so a chunk costs a step per
//! escape, not per byte, and short strings (padded to a chunk) take the same path. The same pass
//! notes whether every byte is ASCII, so a body that is needs no separate UTF-8 validation.
//! Numbers are written digit by digit, without `fmt`.

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
    escape(out, s.as_bytes());
    out.push(b'"');
}

/// Appends `bytes` as a JSON string if they are UTF-8 and returns true; otherwise leaves `out` as it
/// was and returns false. With `partial_end`, a character cut off at the very end (a body kept up
/// to a byte cap) is dropped instead of making the whole string invalid.
///
/// One pass escapes and notes whether any byte is outside ASCII; only then are the bytes validated
/// (escaping copies bytes >= 0x80 unchanged, so valid UTF-8 needs no second write).
pub fn utf8_string(out: &mut Vec<u8>, bytes: &[u8], partial_end: bool) -> bool {
    let start = out.len();
    out.push(b'"');
    if !escape(out, bytes) {
        match std::str::from_utf8(bytes) {
            Ok(_) => {}
            Err(e) if partial_end && e.error_len().is_none() => {
                // The cut-off bytes are all >= 0x80, written one for one at the end.
                out.truncate(out.len() - (bytes.len() - e.valid_up_to()));
            }
            Err(_) => {
                out.truncate(start);
                return false;
            }
        }
    }
    out.push(b'"');
    true
}

/// Appends `bytes` JSON-escaped (no quotes); returns true when all of them are ASCII.
fn escape(out: &mut Vec<u8>, bytes: &[u8]) -> bool {
    let mut outside_ascii = false;
    for block in bytes.chunks(BLOCK) {
        // Worst case 6 bytes out per byte in, plus the 16 bytes a whole-chunk store may run ahead.
        out.reserve(block.len() * 6 + 16);
        // SAFETY: `escape_block` writes at most `6 * block.len() + 16` bytes from `out`'s end, all
        // inside the capacity just reserved, and returns how many of them it initialised.
        unsafe {
            let end = out.as_mut_ptr().add(out.len());
            let (n, outside) = escape_block(block, end);
            outside_ascii |= outside;
            out.set_len(out.len() + n);
        }
    }
    !outside_ascii
}

/// Sixteen bytes as bit masks (bit i for byte i): which ones JSON must escape (`"`, `\\`, control
/// characters), and which ones are outside ASCII.
#[inline(always)]
fn scan16(chunk: &[u8; 16]) -> (u32, u32) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        // SAFETY: SSE2 is part of x86_64; the load reads exactly the 16 bytes of `chunk`.
        unsafe {
            let v = _mm_loadu_si128(chunk.as_ptr().cast());
            let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
            let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
            // Unsigned b < 0x20 exactly when min(b, 0x1f) == b.
            let control = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v);
            let escape = _mm_or_si128(_mm_or_si128(quote, backslash), control);
            (
                _mm_movemask_epi8(escape) as u32,
                _mm_movemask_epi8(v) as u32,
            )
        }
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        use std::arch::wasm32::*;
        // SAFETY: the load reads exactly the 16 bytes of `chunk`.
        let v = unsafe { v128_load(chunk.as_ptr().cast()) };
        let escape = v128_or(
            v128_or(
                u8x16_eq(v, u8x16_splat(b'"')),
                u8x16_eq(v, u8x16_splat(b'\\')),
            ),
            u8x16_lt(v, u8x16_splat(0x20)),
        );
        (
            u32::from(u8x16_bitmask(escape)),
            u32::from(u8x16_bitmask(v)),
        )
    }
    #[cfg(not(any(
        target_arch = "x86_64",
        all(target_arch = "wasm32", target_feature = "simd128")
    )))]
    {
        scan16_bytewise(chunk)
    }
}

/// [`scan16`] a byte at a time: the reference the vector versions are tested against.
#[cfg_attr(
    any(
        target_arch = "x86_64",
        all(target_arch = "wasm32", target_feature = "simd128")
    ),
    allow(dead_code)
)]
fn scan16_bytewise(chunk: &[u8; 16]) -> (u32, u32) {
    let (mut escape, mut high) = (0u32, 0u32);
    for (i, &b) in chunk.iter().enumerate() {
        escape |= u32::from(b < 0x20 || b == b'"' || b == b'\\') << i;
        high |= u32::from(b >= 0x80) << i;
    }
    (escape, high)
}

/// Writes `block` JSON-escaped at `dst`; returns the bytes written and whether any byte was
/// outside ASCII.
///
/// Sixteen bytes at a time: the chunk is stored whole, which puts everything before its first
/// escape in place; when there is an escape, each one goes through the table and the clean run
/// after it is stored whole from the chunk, so a chunk costs one step per escape, not per byte. The
/// last few bytes are padded to a chunk with spaces, so short strings (header names and values)
/// take the same path.
///
/// # Safety
/// `dst` must be valid for writes of `6 * block.len() + 16` bytes.
#[inline(always)]
unsafe fn escape_block(block: &[u8], dst: *mut u8) -> (usize, bool) {
    let (mut i, mut n) = (0usize, 0usize);
    let mut high = 0u32;
    // A chunk with escapes, then spaces: a 16-byte read at any offset up to 16 stays inside.
    let mut buf = [b' '; 32];
    while i < block.len() {
        let len = (block.len() - i).min(16);
        let chunk: [u8; 16] = if len == 16 {
            // SAFETY: i + 16 <= block.len().
            unsafe { block.as_ptr().add(i).cast::<[u8; 16]>().read_unaligned() }
        } else {
            let mut padded = [b' '; 16];
            padded[..len].copy_from_slice(&block[i..]);
            padded
        };
        // SAFETY: at most 6 bytes were written per byte consumed (n <= 6i), so a 16-byte store at
        // n ends by 6i + 16 <= 6 * block.len() + 16; every store below comes after consuming at
        // least as many bytes as were written before it, so the same bound holds.
        unsafe { dst.add(n).cast::<[u8; 16]>().write_unaligned(chunk) };
        // The padding is neither escaped nor outside ASCII.
        let (mut escape, outside_ascii) = scan16(&chunk);
        high |= outside_ascii;
        i += len;
        if escape == 0 {
            n += len;
            continue;
        }
        buf[..16].copy_from_slice(&chunk);
        let mut k = 0usize;
        while escape != 0 {
            let e = escape.trailing_zeros() as usize;
            // Bytes k..e are clean: one store puts them in place (what follows is overwritten).
            unsafe { store16(dst.add(n), &buf, k) };
            n += e - k;
            n += unsafe { escape_byte(buf[e], dst.add(n)) };
            k = e + 1;
            escape &= escape - 1;
        }
        // The clean run after the last escape.
        unsafe { store16(dst.add(n), &buf, k) };
        n += len - k;
    }
    (n, high != 0)
}

/// Stores `buf[k..k + 16]` at `to`.
///
/// # Safety
/// `to` must be valid for writes of 16 bytes; `k <= 16`.
#[inline(always)]
unsafe fn store16(to: *mut u8, buf: &[u8; 32], k: usize) {
    debug_assert!(k <= 16);
    unsafe {
        to.cast::<[u8; 16]>()
            .write_unaligned(buf.as_ptr().add(k).cast::<[u8; 16]>().read_unaligned())
    };
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
    if !utf8_string(out, bytes, false) {
        string(out, &String::from_utf8_lossy(bytes));
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
    fn an_escape_at_any_position_of_a_chunk_is_found() {
        for at in 0..40 {
            let mut s = "x".repeat(40);
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
    fn bytes_that_are_not_utf8_leave_the_output_untouched() {
        for (bytes, partial_end) in [
            (&b"ab\xffcd"[..], false),
            (b"ab\xffcd", true),
            (b"ab\xc3", false),
            (
                b"a long text that is cut inside a \xc3 character, not at its end",
                true,
            ),
        ] {
            let mut out = b"kept".to_vec();
            assert!(!utf8_string(&mut out, bytes, partial_end), "{bytes:?}");
            assert_eq!(out, b"kept");
        }
    }

    #[test]
    fn a_character_cut_off_at_the_end_is_dropped_when_allowed() {
        let text = "naïve \"quoted\" text, then é€😀".repeat(3);
        for cut in 1..4 {
            let bytes = &[text.as_bytes(), &"😀".as_bytes()[..cut]].concat();
            let mut out = Vec::new();
            assert!(utf8_string(&mut out, bytes, true));
            let back: String = serde_json::from_slice(&out).unwrap();
            assert_eq!(back, text);
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
        fn long_strings_round_trip_across_blocks(
            s in "([a-z ]{0,9}[\"\\\\\n\x01é€😀]){800,1600}",
        ) {
            prop_assert!(s.len() > BLOCK / 2);
            let back: String = serde_json::from_str(&json(&s)).unwrap();
            prop_assert_eq!(back, s);
        }

        #[test]
        fn the_vector_scan_agrees_with_the_bytewise_one(
            chunk in proptest::array::uniform16(
                prop_oneof![any::<u8>(), Just(b'"'), Just(b'\\'), 0u8..0x21, 0x7fu8..0x81])
        ) {
            prop_assert_eq!(scan16(&chunk), scan16_bytewise(&chunk));
        }

        #[test]
        fn strings_are_written_exactly_as_serde_json_writes_them(s in any::<String>()) {
            prop_assert_eq!(json(&s), serde_json::to_string(&s).unwrap());
        }

        #[test]
        fn any_bytes_are_written_exactly_when_they_are_utf8(
            bytes in proptest::collection::vec(
                prop_oneof![any::<u8>(), Just(b'"'), Just(b'a'), Just(0xc3), Just(0xa9)], 0..80),
            partial_end in any::<bool>(),
        ) {
            let mut out = Vec::new();
            let written = utf8_string(&mut out, &bytes, partial_end);
            let valid = match std::str::from_utf8(&bytes) {
                Ok(text) => Some(text),
                Err(e) if partial_end && e.error_len().is_none() => {
                    std::str::from_utf8(&bytes[..e.valid_up_to()]).ok()
                }
                Err(_) => None,
            };
            prop_assert_eq!(written, valid.is_some());
            match valid {
                Some(text) => {
                    let back: String = serde_json::from_slice(&out).unwrap();
                    prop_assert_eq!(back, text);
                }
                None => prop_assert!(out.is_empty()),
            }
        }

        #[test]
        fn control_heavy_strings_round_trip(s in "[\\x00-\\x20\"\\\\a-z]{0,64}") {
            let back: String = serde_json::from_str(&json(&s)).unwrap();
            prop_assert_eq!(back, s);
        }
    }
}
