//! How captured things are written out for people: JSON re-indented without being re-encoded,
//! sizes, durations, ids in URLs.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Characters left as they are in a path segment: letters, digits and `-._~`.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `text` as one URL path segment.
pub fn segment(text: &str) -> String {
    utf8_percent_encode(text, SEGMENT).to_string()
}

/// `pairs` as a query string (`a=1&b=2`).
pub fn query_string<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    pairs
        .into_iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                utf8_percent_encode(k, NON_ALPHANUMERIC),
                utf8_percent_encode(v, NON_ALPHANUMERIC)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// A JSON text laid out two spaces an indent level. Only whitespace between tokens changes:
/// key order, number spellings and string escapes stay exactly as captured. `None` when `text`
/// is not one JSON value.
pub fn reindent_json(text: &str) -> Option<String> {
    serde_json::from_str::<serde::de::IgnoredAny>(text).ok()?;
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut chars = text.chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        for _ in 0..depth {
            out.push_str("  ");
        }
    };
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                // An empty object or array stays on one line.
                while chars.peek().is_some_and(|n| n.is_whitespace()) {
                    chars.next();
                }
                if chars.peek().is_some_and(|n| *n == '}' || *n == ']') {
                    if let Some(close) = chars.next() {
                        out.push(close);
                    }
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    Some(out)
}

/// A byte count as people read it: `512 B`, `4.2 KiB`, `1.0 MiB`.
pub fn bytes(n: u64) -> String {
    const KIB: f64 = 1024.0;
    let f = n as f64;
    if f < KIB {
        format!("{n} B")
    } else if f < KIB * KIB {
        format!("{:.1} KiB", f / KIB)
    } else {
        format!("{:.1} MiB", f / (KIB * KIB))
    }
}

/// Milliseconds as people read them: `212 ms`, `1.80 s`.
pub fn millis(ms: f64) -> String {
    if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

/// `started_at` shortened for the list: the date and the time to the second, `T` a space.
pub fn short_time(started_at: &str) -> String {
    match started_at.get(..19) {
        Some(head) if started_at.is_char_boundary(19) => head.replacen(['T', 't'], " ", 1),
        _ => started_at.to_owned(),
    }
}

/// The first bytes of `data` as a hex dump: 16 bytes a line, offset, hex and printable ASCII.
pub fn hex_dump(data: &[u8], max: usize) -> String {
    let mut out = String::new();
    for (i, chunk) in data.chunks(16).take(max.div_ceil(16)).enumerate() {
        out.push_str(&format!("{:08x}  ", i * 16));
        for k in 0..16 {
            match chunk.get(k) {
                Some(b) => out.push_str(&format!("{b:02x} ")),
                None => out.push_str("   "),
            }
        }
        out.push(' ');
        out.extend(chunk.iter().map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        }));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_reindented_and_nothing_else_changes() {
        let text = r#"{"z":1.50,"a":[1,{"k":"v, \"q\": [x]"}],"e":{},"l":[ ]}"#;
        let pretty = reindent_json(text).unwrap();
        assert_eq!(
            pretty,
            "{\n  \"z\": 1.50,\n  \"a\": [\n    1,\n    {\n      \"k\": \"v, \\\"q\\\": [x]\"\n    }\n  ],\n  \"e\": {},\n  \"l\": []\n}"
        );
        let squeezed: String = pretty.split_whitespace().collect();
        let original: String = text.split_whitespace().collect();
        assert_eq!(squeezed.replace(' ', ""), original.replace(' ', ""));
        assert_eq!(reindent_json("not json"), None);
        assert_eq!(reindent_json("{\"a\":1} trailing"), None);
    }

    #[test]
    fn ids_become_one_path_segment() {
        assert_eq!(segment("9f1c-2d3e_x.y~"), "9f1c-2d3e_x.y~");
        assert_eq!(segment("a/b?c#d\"<e>"), "a%2Fb%3Fc%23d%22%3Ce%3E");
        assert_eq!(
            query_string([("q", "a b&c"), ("mark", "x")]),
            "q=a%20b%26c&mark=x"
        );
    }

    #[test]
    fn sizes_durations_and_times_read_well() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(4300), "4.2 KiB");
        assert_eq!(bytes(1 << 20), "1.0 MiB");
        assert_eq!(millis(212.4), "212 ms");
        assert_eq!(millis(1804.2), "1.80 s");
        assert_eq!(
            short_time("2026-11-25T16:10:40.186123Z"),
            "2026-11-25 16:10:40"
        );
        assert_eq!(short_time("odd"), "odd");
    }

    #[test]
    fn binary_is_dumped_in_hex() {
        let dump = hex_dump(b"\x00\x01AB", 16);
        assert_eq!(
            dump,
            format!("00000000  00 01 41 42 {} ..AB\n", "   ".repeat(12))
        );
    }
}
