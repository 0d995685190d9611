//! Streamed JSON array framing: `[` value `,` value … `]`, written a value at a time, as Google's
//! `streamGenerateContent` answers when no `alt=sse` is asked for.
//!
//! [`JsonArrayParser`] is incremental and chunking-invariant: it returns each top-level element's
//! text as soon as the element is complete, and at the end says whether the closing `]` arrived and
//! what is left of an element cut off mid-way. It tracks nesting and strings (escapes included)
//! only; the elements are parsed as JSON by the caller. It never panics.

/// Incremental splitter of a streamed JSON array.
#[derive(Debug, Default)]
pub struct JsonArrayParser {
    state: State,
    element: Vec<u8>,
    depth: u32,
    in_string: bool,
    escaped: bool,
    trailing: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the opening `[`.
    #[default]
    Start,
    /// Inside the array.
    Elements,
    /// After the closing `]`.
    Closed,
    /// The body did not start with `[`.
    NotArray,
}

/// What is left when the body ends.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ArrayTail {
    /// The body began with `[` (after whitespace).
    pub is_array: bool,
    /// The closing `]` arrived.
    pub closed: bool,
    /// The text of an element that was still open when the body ended.
    pub partial: Option<String>,
    /// Something other than whitespace followed the closing `]`.
    pub trailing: bool,
}

impl JsonArrayParser {
    /// A parser at the start of a body.
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes `bytes`; returns the elements they complete, in order.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for &b in bytes {
            match self.state {
                State::Start => match b {
                    b'[' => self.state = State::Elements,
                    // A byte-order mark or whitespace may come first.
                    0xEF | 0xBB | 0xBF => {}
                    b if b.is_ascii_whitespace() => {}
                    _ => self.state = State::NotArray,
                },
                State::Elements => self.element_byte(b, &mut out),
                State::Closed => self.trailing |= !b.is_ascii_whitespace(),
                State::NotArray => {}
            }
        }
        out
    }

    fn element_byte(&mut self, b: u8, out: &mut Vec<String>) {
        if self.in_string {
            self.element.push(b);
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = false;
                self.end_if_done(out);
            }
            return;
        }
        match b {
            b',' | b']' if self.depth == 0 => {
                self.emit(out);
                if b == b']' {
                    self.state = State::Closed;
                }
            }
            b if b.is_ascii_whitespace() && self.depth == 0 => self.emit(out),
            _ => {
                self.element.push(b);
                match b {
                    b'"' => self.in_string = true,
                    b'{' | b'[' => self.depth += 1,
                    b'}' | b']' => {
                        self.depth = self.depth.saturating_sub(1);
                        self.end_if_done(out);
                    }
                    _ => {}
                }
            }
        }
    }

    /// An object, array or string at the top level is complete as soon as it closes.
    fn end_if_done(&mut self, out: &mut Vec<String>) {
        if self.depth == 0 {
            self.emit(out);
        }
    }

    fn emit(&mut self, out: &mut Vec<String>) {
        if !self.element.is_empty() {
            let element = std::mem::take(&mut self.element);
            out.push(String::from_utf8_lossy(&element).into_owned());
        }
    }

    /// Ends the body.
    pub fn finish(self) -> ArrayTail {
        ArrayTail {
            is_array: matches!(self.state, State::Elements | State::Closed),
            closed: self.state == State::Closed,
            partial: (!self.element.is_empty())
                .then(|| String::from_utf8_lossy(&self.element).into_owned()),
            trailing: self.trailing,
        }
    }
}

/// Splits a whole body; the convenience form of [`JsonArrayParser`].
pub fn parse_all(bytes: &[u8]) -> (Vec<String>, ArrayTail) {
    let mut p = JsonArrayParser::new();
    let elements = p.feed(bytes);
    (elements, p.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    #[test]
    fn google_style_array_is_split_into_its_objects() {
        let body = b"[{\n  \"candidates\": [{\"content\": {\"parts\": [{\"text\": \"a]}\\\"\"}]}}]\n}\n,\r\n{\"usageMetadata\": {}}\n]";
        let (elements, tail) = parse_all(body);
        assert_eq!(elements.len(), 2);
        let first: Value = serde_json::from_str(&elements[0]).unwrap();
        assert_eq!(
            first["candidates"][0]["content"]["parts"][0]["text"],
            "a]}\""
        );
        assert_eq!(elements[1], "{\"usageMetadata\": {}}");
        assert!(tail.is_array && tail.closed && !tail.trailing);
        assert_eq!(tail.partial, None);
    }

    #[test]
    fn a_cut_body_keeps_the_complete_elements_and_the_partial_one() {
        let (elements, tail) = parse_all(b"[{\"a\": 1},\n{\"b\": [2, ");
        assert_eq!(elements, ["{\"a\": 1}"]);
        assert!(tail.is_array && !tail.closed);
        assert_eq!(tail.partial.as_deref(), Some("{\"b\": [2, "));
    }

    #[test]
    fn scalars_and_empty_arrays_are_elements_too() {
        let (elements, tail) = parse_all(b" [1, \"x,y\", true ,null,[]]");
        assert_eq!(elements, ["1", "\"x,y\"", "true", "null", "[]"]);
        assert!(tail.closed);
        let (elements, tail) = parse_all(b"[]");
        assert!(elements.is_empty() && tail.closed);
    }

    #[test]
    fn not_an_array_and_trailing_bytes_are_told() {
        let (elements, tail) = parse_all(b"{\"a\": [1]}");
        assert!(elements.is_empty() && !tail.is_array);
        let (_, tail) = parse_all(b"[1] x");
        assert!(tail.closed && tail.trailing);
    }

    fn value_strategy() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(Value::from),
            "[a-z\"\\\\\\[\\]{},:é ]{0,10}".prop_map(Value::from),
            any::<bool>().prop_map(Value::from),
            Just(Value::Null),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn write(values: &[Value], pretty: bool) -> Vec<u8> {
        let items: Vec<String> = values
            .iter()
            .map(|v| {
                if pretty {
                    serde_json::to_string_pretty(v).unwrap()
                } else {
                    v.to_string()
                }
            })
            .collect();
        format!("[{}]\n", items.join("\n,\r\n")).into_bytes()
    }

    proptest! {
        #[test]
        fn written_arrays_read_back_for_any_chunking(
            values in proptest::collection::vec(value_strategy(), 0..6),
            pretty in any::<bool>(),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let body = write(&values, pretty);
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
            points.sort_unstable();
            let mut p = JsonArrayParser::new();
            let mut elements = Vec::new();
            let mut from = 0;
            for at in points {
                elements.extend(p.feed(&body[from..at]));
                from = at;
            }
            elements.extend(p.feed(&body[from..]));
            let tail = p.finish();
            prop_assert!(tail.closed && !tail.trailing && tail.partial.is_none());
            let got: Vec<Value> = elements.iter().map(|e| serde_json::from_str(e).unwrap()).collect();
            prop_assert_eq!(got, values);
        }

        #[test]
        fn a_prefix_yields_a_prefix_of_the_elements(
            values in proptest::collection::vec(value_strategy(), 1..6),
            cut in any::<usize>(),
        ) {
            let body = write(&values, true);
            let at = cut % (body.len() + 1);
            let (elements, tail) = parse_all(&body[..at]);
            prop_assert!(elements.len() <= values.len());
            for (e, v) in elements.iter().zip(&values) {
                prop_assert_eq!(&serde_json::from_str::<Value>(e).unwrap(), v);
            }
            if tail.closed {
                prop_assert_eq!(elements.len(), values.len());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_chunking_is_invariant(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            split in any::<usize>(),
        ) {
            let whole = parse_all(&bytes);
            let at = split % (bytes.len() + 1);
            let mut p = JsonArrayParser::new();
            let mut elements = p.feed(&bytes[..at]);
            elements.extend(p.feed(&bytes[at..]));
            prop_assert_eq!((elements, p.finish()), whole);
        }
    }
}
