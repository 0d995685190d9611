//! Server-sent events framing, as the WHATWG HTML standard defines it.
//!
//! [`SseParser`] is incremental: bytes may arrive in any chunking (even splitting a `\r\n` pair or a
//! UTF-8 sequence) and the events are the same as for the whole stream at once. It handles `\n`,
//! `\r\n` and `\r` line endings, multi-line `data:`, comments, `event:` and `id:` fields, and a
//! leading byte-order mark. It never panics, whatever the bytes.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field, empty when the stream gave none (the standard's "message").
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// The last `id:` seen so far in the stream, if any.
    pub id: Option<String>,
}

/// Incremental SSE parser; feed it bytes, collect events.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    after_cr: bool,
    started: bool,
    event: String,
    data: String,
    has_data: bool,
    last_id: Option<String>,
    pending_fields: bool,
}

/// What is left when the stream ends.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseTail {
    /// An event whose fields were read but whose terminating blank line never came (the standard
    /// discards it; a truncated capture may still want to look at it). Includes a final
    /// unterminated line.
    pub unterminated: Option<SseEvent>,
}

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes `bytes` and returns the events they complete, in order.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        for &b in bytes {
            match b {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(ev) = self.process_line(&line) {
                        events.push(ev);
                    }
                }
                _ => {
                    self.after_cr = false;
                    self.line.push(b);
                }
            }
        }
        events
    }

    /// Ends the stream, returning whatever was never terminated by a blank line.
    pub fn finish(mut self) -> SseTail {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            // A complete event cannot come out of a non-empty line.
            let _ = self.process_line(&line);
        }
        let unterminated = (self.pending_fields && self.has_data).then(|| self.take_event());
        SseTail { unterminated }
    }

    fn take_event(&mut self) -> SseEvent {
        let mut data = std::mem::take(&mut self.data);
        if data.ends_with('\n') {
            data.pop();
        }
        self.has_data = false;
        self.pending_fields = false;
        SseEvent {
            event: std::mem::take(&mut self.event),
            data,
            id: self.last_id.clone(),
        }
    }

    fn process_line(&mut self, raw: &[u8]) -> Option<SseEvent> {
        let mut line = raw;
        if !self.started {
            self.started = true;
            line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        }
        if line.is_empty() {
            if !self.has_data {
                self.event.clear();
                self.pending_fields = false;
                return None;
            }
            return Some(self.take_event());
        }
        if line.first() == Some(&b':') {
            return None;
        }
        let line = String::from_utf8_lossy(line);
        let (name, value) = match line.split_once(':') {
            Some((name, value)) => (name, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_ref(), ""),
        };
        match name {
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
                self.has_data = true;
                self.pending_fields = true;
            }
            "event" => {
                self.event = value.to_owned();
                self.pending_fields = true;
            }
            "id" if !value.contains('\0') => self.last_id = Some(value.to_owned()),
            _ => {}
        }
        None
    }
}

/// Parses a whole stream; the convenience form of [`SseParser`].
pub fn parse_all(bytes: &[u8]) -> (Vec<SseEvent>, SseTail) {
    let mut p = SseParser::new();
    let events = p.feed(bytes);
    (events, p.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ev(event: &str, data: &str) -> SseEvent {
        SseEvent {
            event: event.into(),
            data: data.into(),
            id: None,
        }
    }

    #[test]
    fn openai_style_data_lines() {
        let (events, tail) = parse_all(b"data: {\"a\":1}\n\ndata: [DONE]\n\n");
        assert_eq!(events, vec![ev("", "{\"a\":1}"), ev("", "[DONE]")]);
        assert_eq!(tail.unterminated, None);
    }

    #[test]
    fn event_field_names_the_event_and_resets_after_dispatch() {
        let (events, _) =
            parse_all(b"event: message_start\ndata: {}\n\ndata: x\n\nevent: ping\ndata: y\n\n");
        assert_eq!(
            events,
            vec![ev("message_start", "{}"), ev("", "x"), ev("ping", "y")]
        );
    }

    #[test]
    fn all_three_line_endings_are_accepted() {
        let (a, _) = parse_all(b"data: 1\r\n\r\ndata: 2\r\rdata: 3\n\n");
        assert_eq!(a, vec![ev("", "1"), ev("", "2"), ev("", "3")]);
    }

    #[test]
    fn multi_line_data_is_joined_with_newlines() {
        let (events, _) = parse_all(b"data: one\ndata:two\ndata\n\n");
        assert_eq!(events, vec![ev("", "one\ntwo\n")]);
    }

    #[test]
    fn comments_and_unknown_fields_are_ignored() {
        let (events, _) = parse_all(b": keep-alive\nretry: 10\nfoo: bar\ndata: x\n\n");
        assert_eq!(events, vec![ev("", "x")]);
    }

    #[test]
    fn blank_line_without_data_dispatches_nothing() {
        let (events, _) = parse_all(b"event: ping\n\ndata: x\n\n");
        assert_eq!(events, vec![ev("", "x")]);
    }

    #[test]
    fn id_field_is_carried() {
        let (events, _) = parse_all(b"id: 7\ndata: x\n\ndata: y\n\n");
        assert_eq!(events[0].id.as_deref(), Some("7"));
        assert_eq!(events[1].id.as_deref(), Some("7"));
    }

    #[test]
    fn leading_bom_is_stripped() {
        let (events, _) = parse_all(b"\xEF\xBB\xBFdata: x\n\n");
        assert_eq!(events, vec![ev("", "x")]);
    }

    #[test]
    fn unterminated_final_event_is_reported_in_the_tail() {
        let (events, tail) = parse_all(b"data: a\n\nevent: e\ndata: {\"b\":");
        assert_eq!(events, vec![ev("", "a")]);
        assert_eq!(tail.unterminated, Some(ev("e", "{\"b\":")));
    }

    #[test]
    fn crlf_split_across_chunks_is_one_line_ending() {
        let mut p = SseParser::new();
        let mut events = p.feed(b"data: a\r");
        events.extend(p.feed(b"\n\r"));
        events.extend(p.feed(b"\ndata: b\n\n"));
        assert_eq!(events, vec![ev("", "a"), ev("", "b")]);
    }

    fn stream_strategy() -> impl Strategy<Value = Vec<u8>> {
        let line = prop_oneof![
            "[a-z{}\":,0-9 ]{0,12}".prop_map(|s| format!("data: {s}")),
            "[a-z_.]{0,10}".prop_map(|s| format!("event: {s}")),
            "[a-z ]{0,8}".prop_map(|s| format!(": {s}")),
            Just(String::new()),
            "[a-zé€]{0,6}".prop_map(|s| format!("data:{s}")),
        ];
        let eol = prop_oneof![Just("\n"), Just("\r\n"), Just("\r")];
        proptest::collection::vec((line, eol), 0..20).prop_map(|parts| {
            parts
                .into_iter()
                .flat_map(|(l, e)| format!("{l}{e}").into_bytes())
                .collect()
        })
    }

    proptest! {
        #[test]
        fn any_chunking_gives_the_same_events(
            stream in stream_strategy(),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let whole = parse_all(&stream);
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
            points.sort_unstable();
            let mut p = SseParser::new();
            let mut events = Vec::new();
            let mut from = 0;
            for at in points {
                events.extend(p.feed(&stream[from..at]));
                from = at;
            }
            events.extend(p.feed(&stream[from..]));
            prop_assert_eq!(events, whole.0);
            prop_assert_eq!(p.finish(), whole.1);
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_chunking_is_invariant(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            split in any::<usize>(),
        ) {
            let whole = parse_all(&bytes);
            let at = split % (bytes.len() + 1);
            let mut p = SseParser::new();
            let mut events = p.feed(&bytes[..at]);
            events.extend(p.feed(&bytes[at..]));
            prop_assert_eq!(events, whole.0);
        }

        #[test]
        fn written_events_read_back(
            datas in proptest::collection::vec("[^\r\n]{0,20}", 1..6),
            crlf in any::<bool>(),
        ) {
            let eol = if crlf { "\r\n" } else { "\n" };
            let text: String = datas.iter().map(|d| format!("data: {d}{eol}{eol}")).collect();
            let (events, _) = parse_all(text.as_bytes());
            let got: Vec<String> = events.into_iter().map(|e| e.data).collect();
            prop_assert_eq!(got, datas);
        }
    }
}
