//! NDJSON framing: one JSON text a line, as Ollama (`application/x-ndjson`) and many home-grown
//! services stream their answers.
//!
//! [`NdjsonParser`] is incremental: bytes may arrive in any chunking (even splitting a `\r\n` pair or
//! a UTF-8 sequence) and the lines are the same as for the whole body at once. `\n` and `\r\n` end a
//! line, blank lines are skipped, a leading byte-order mark is dropped. It never panics.

/// Incremental NDJSON splitter; feed it bytes, collect lines.
#[derive(Debug, Default)]
pub struct NdjsonParser {
    line: Vec<u8>,
    started: bool,
}

impl NdjsonParser {
    /// A parser at the start of a body.
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes `bytes` and returns the non-blank lines they complete, in order, without their
    /// line endings.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                let line = std::mem::take(&mut self.line);
                lines.extend(self.finish_line(&line));
            } else {
                self.line.push(b);
            }
        }
        lines
    }

    /// Ends the body, returning its last line when no line ending followed it.
    pub fn finish(mut self) -> Option<String> {
        let line = std::mem::take(&mut self.line);
        self.finish_line(&line)
    }

    fn finish_line(&mut self, raw: &[u8]) -> Option<String> {
        let mut line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if !self.started && !line.is_empty() {
            self.started = true;
            line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        Some(String::from_utf8_lossy(line).into_owned())
    }
}

/// Splits a whole body; the convenience form of [`NdjsonParser`]. Returns the terminated lines
/// and the unterminated last one, if any.
pub fn parse_all(bytes: &[u8]) -> (Vec<String>, Option<String>) {
    let mut p = NdjsonParser::new();
    let lines = p.feed(bytes);
    (lines, p.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lines_are_split_on_newlines_and_blank_lines_skipped() {
        let (lines, tail) = parse_all(b"{\"a\":1}\n\n{\"b\":2}\r\n  \r\n{\"c\":");
        assert_eq!(lines, ["{\"a\":1}", "{\"b\":2}"]);
        assert_eq!(tail.as_deref(), Some("{\"c\":"));
    }

    #[test]
    fn a_final_newline_leaves_no_tail() {
        assert_eq!(parse_all(b"{}\n"), (vec!["{}".to_owned()], None));
        assert_eq!(parse_all(b""), (vec![], None));
    }

    #[test]
    fn leading_bom_is_dropped() {
        let (lines, _) = parse_all(b"\xEF\xBB\xBF{\"a\":1}\n");
        assert_eq!(lines, ["{\"a\":1}"]);
    }

    #[test]
    fn crlf_split_across_chunks_is_one_line_ending() {
        let mut p = NdjsonParser::new();
        let mut lines = p.feed(b"{\"a\":1}\r");
        lines.extend(p.feed(b"\n{\"b\":2}\r"));
        lines.extend(p.feed(b"\n"));
        assert_eq!(lines, ["{\"a\":1}", "{\"b\":2}"]);
        assert_eq!(p.finish(), None);
    }

    fn body_strategy() -> impl Strategy<Value = Vec<u8>> {
        let line = prop_oneof![
            "\\{\"response\":\"[a-zé€ ]{0,8}\",\"done\":(true|false)\\}",
            "[a-z{}\":,0-9 ]{0,12}",
            Just(String::new()),
            Just("   ".to_owned()),
        ];
        let eol = prop_oneof![Just("\n"), Just("\r\n")];
        proptest::collection::vec((line, eol), 0..20).prop_map(|parts| {
            parts
                .into_iter()
                .flat_map(|(l, e)| format!("{l}{e}").into_bytes())
                .collect()
        })
    }

    fn chunked(bytes: &[u8], cuts: &[usize]) -> (Vec<String>, Option<String>) {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        points.sort_unstable();
        let mut p = NdjsonParser::new();
        let mut lines = Vec::new();
        let mut from = 0;
        for at in points {
            lines.extend(p.feed(&bytes[from..at]));
            from = at;
        }
        lines.extend(p.feed(&bytes[from..]));
        (lines, p.finish())
    }

    proptest! {
        #[test]
        fn any_chunking_gives_the_same_lines(
            body in body_strategy(),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            prop_assert_eq!(chunked(&body, &cuts), parse_all(&body));
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_chunking_is_invariant(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            cuts in proptest::collection::vec(any::<usize>(), 0..4),
        ) {
            prop_assert_eq!(chunked(&bytes, &cuts), parse_all(&bytes));
        }

        #[test]
        fn written_objects_read_back(
            texts in proptest::collection::vec("[^\r\n]{0,20}", 1..8),
            crlf in any::<bool>(),
            final_eol in any::<bool>(),
        ) {
            let eol = if crlf { "\r\n" } else { "\n" };
            let values: Vec<serde_json::Value> =
                texts.iter().map(|t| serde_json::json!({"response": t})).collect();
            let mut body = values.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(eol);
            if final_eol {
                body.push_str(eol);
            }
            let (lines, tail) = parse_all(body.as_bytes());
            let got: Vec<serde_json::Value> = lines
                .iter()
                .chain(tail.as_ref())
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            prop_assert_eq!(got, values);
            prop_assert_eq!(tail.is_none(), final_eol);
        }
    }
}
