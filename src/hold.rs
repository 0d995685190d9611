//! `complete_after_stored`: where a response's end is, and which held ends wait for what.
//!
//! A response streams as it comes; only its end is held until the collector has acknowledged the
//! exchange's record. [`EndFinder`] says which callback carries the end: a bodiless answer's
//! headers, the chunk that completes a `content-length` body, the chunk with end of stream, the
//! trailers — or, for a stream, the chunk that carries the protocol's terminal event (a client
//! library stops reading there): SSE `data: [DONE]` (OpenAI), `event: message_stop`
//! (Anthropic), the NDJSON line with `"done": true` (Ollama), the element with `finishReason`
//! of a Gemini `streamGenerateContent` answer. [`Holds`] is the VM's table of held ends: which
//! are waiting, until when, and how each one finished.

use std::collections::HashMap;

/// A terminal event's kind of stream, chosen from the response's content type and the request's
/// path; events are only looked for in the streams that carry them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// `text/event-stream`: `data: [DONE]` or `event: message_stop` at the start of a line.
    Sse,
    /// `application/x-ndjson`: a line with `"done": true`.
    Ndjson,
    /// A Gemini `:streamGenerateContent` answer (an array, or SSE with `alt=sse`): the element
    /// that carries `finishReason`.
    Gemini,
}

impl Stream {
    /// The stream kind of a response, if it has terminal events.
    pub fn of(content_type: Option<&[u8]>, path: Option<&[u8]>) -> Option<Stream> {
        if path.is_some_and(|p| contains(p, b":streamGenerateContent")) {
            return Some(Stream::Gemini);
        }
        let ct = content_type?;
        let media = ct.split(|&b| b == b';').next().unwrap_or_default();
        let media = media.trim_ascii();
        if media.eq_ignore_ascii_case(b"text/event-stream") {
            Some(Stream::Sse)
        } else if media.eq_ignore_ascii_case(b"application/x-ndjson") {
            Some(Stream::Ndjson)
        } else {
            None
        }
    }

    /// The byte patterns that announce the end, and whether each must start a line.
    fn patterns(self) -> &'static [(&'static [u8], bool)] {
        match self {
            Stream::Sse => &[
                (b"data: [DONE]", true),
                (b"data:[DONE]", true),
                (b"event: message_stop", true),
                (b"event:message_stop", true),
            ],
            Stream::Ndjson => &[(b"\"done\":true", false), (b"\"done\": true", false)],
            Stream::Gemini => &[(b"\"finishReason\"", false)],
        }
    }
}

/// The longest pattern: the bytes of one chunk kept to find an event split across two.
const CARRY: usize = 20;

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Finds the terminal event in a stream fed chunk by chunk, events split across chunks included.
#[derive(Debug, Clone)]
pub struct EventScan {
    stream: Stream,
    /// The last bytes of what was fed so far (at most [`CARRY`]).
    carry: Vec<u8>,
    /// `carry` starts with the stream's first byte (which starts a line).
    at_start: bool,
}

impl EventScan {
    pub fn new(stream: Stream) -> EventScan {
        EventScan {
            stream,
            carry: Vec::with_capacity(CARRY * 2),
            at_start: true,
        }
    }

    /// Feeds the next chunk; true when the terminal event ends in it.
    pub fn feed(&mut self, chunk: &[u8]) -> bool {
        if chunk.is_empty() {
            return false;
        }
        let kept = self.carry.len();
        // Only the carried bytes plus the chunk's first CARRY bytes need joining; the rest of
        // the chunk is searched in place.
        let head = chunk.len().min(CARRY);
        self.carry.extend_from_slice(&chunk[..head]);
        let found = self.search(&self.carry, self.at_start, kept)
            || (chunk.len() > head && self.search(chunk, false, 0));
        if chunk.len() >= CARRY {
            self.carry.clear();
            self.carry.extend_from_slice(&chunk[chunk.len() - CARRY..]);
            self.at_start = false;
        } else {
            let drop = self.carry.len().saturating_sub(CARRY);
            self.carry.drain(..drop);
            self.at_start &= drop == 0;
        }
        found
    }

    /// Whether `hay` holds a pattern that ends past `new_from` (earlier ones were seen before).
    fn search(&self, hay: &[u8], at_start: bool, new_from: usize) -> bool {
        self.stream.patterns().iter().any(|(p, line_start)| {
            hay.windows(p.len()).enumerate().any(|(i, w)| {
                w == *p
                    && i + p.len() > new_from
                    && (!line_start
                        || (i == 0 && at_start)
                        || (i > 0 && matches!(hay[i - 1], b'\n' | b'\r')))
            })
        })
    }
}

/// Which callback of a response carries its end.
#[derive(Debug, Clone)]
pub struct EndFinder {
    /// The response's `content-length`, when it has one.
    content_length: Option<u64>,
    /// Body bytes that passed so far.
    passed: u64,
    scan: Option<EventScan>,
}

impl EndFinder {
    /// For a response with `content_length` (`None`: none, or not a number) whose stream kind is
    /// `stream`.
    pub fn new(content_length: Option<u64>, stream: Option<Stream>) -> EndFinder {
        EndFinder {
            content_length,
            passed: 0,
            scan: stream.map(EventScan::new),
        }
    }

    /// Whether the response headers carry the end: a bodiless answer (end of stream, or
    /// `content-length: 0`).
    pub fn at_headers(&self, end_of_stream: bool) -> bool {
        end_of_stream || self.content_length == Some(0)
    }

    /// Whether a body chunk of `size` bytes (`bytes`: the chunk, when it is scanned) carries the
    /// end: end of stream, the last byte of a `content-length` body, or the terminal event.
    pub fn at_chunk(&mut self, size: usize, bytes: Option<&[u8]>, end_of_stream: bool) -> bool {
        self.passed += size as u64;
        let found = match (&mut self.scan, bytes) {
            (Some(scan), Some(bytes)) => scan.feed(bytes),
            _ => false,
        };
        found || end_of_stream || self.content_length.is_some_and(|n| self.passed >= n)
    }

    /// True when chunks must be read to be scanned for a terminal event.
    pub fn scans(&self) -> bool {
        self.scan.is_some()
    }
}

/// Parses a `content-length` value.
pub fn content_length(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?.trim();
    (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

/// How a held end finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Waiting for the record's acknowledgement.
    Waiting,
    /// The record was stored; the end went out.
    Stored,
    /// `hold_timeout_ms` passed: the end went out without a stored record.
    Released,
    /// `hold_timeout_ms` passed: the client's stream was reset.
    Reset,
}

/// One held end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub since_ms: u64,
    pub deadline_ms: u64,
    /// Reset (true) or release the end at the deadline.
    pub reset: bool,
    pub fate: Fate,
}

/// Counts since the VM started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HoldStats {
    /// Ends held.
    pub held: u64,
    /// Ends that went out once their record was stored.
    pub stored: u64,
    /// Ends released at `hold_timeout_ms` without a stored record.
    pub released_unrecorded: u64,
    /// Streams reset at `hold_timeout_ms`.
    pub reset: u64,
}

/// What the root does for a held end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Resume(u32),
    Reset(u32),
}

/// The held ends of one VM, by stream context id (unique within the VM, never reused).
#[derive(Debug, Default)]
pub struct Holds {
    ends: HashMap<u32, Held>,
    pub stats: HoldStats,
}

impl Holds {
    /// A stream held its end at `now_ms`.
    pub fn hold(&mut self, context_id: u32, now_ms: u64, timeout_ms: u64, reset: bool) {
        self.stats.held += 1;
        self.ends.insert(
            context_id,
            Held {
                since_ms: now_ms,
                deadline_ms: now_ms.saturating_add(timeout_ms),
                reset,
                fate: Fate::Waiting,
            },
        );
    }

    /// The records of these streams were stored: the ends still waiting go out.
    pub fn stored(&mut self, context_ids: &[u32]) -> Vec<Step> {
        let mut steps = Vec::new();
        for id in context_ids {
            if let Some(h) = self.ends.get_mut(id).filter(|h| h.fate == Fate::Waiting) {
                h.fate = Fate::Stored;
                self.stats.stored += 1;
                steps.push(Step::Resume(*id));
            }
        }
        steps
    }

    /// Ends past their deadline at `now_ms`: released or reset, as each stream's policy says.
    pub fn expire(&mut self, now_ms: u64) -> Vec<Step> {
        let mut steps = Vec::new();
        for (id, h) in &mut self.ends {
            if h.fate != Fate::Waiting || now_ms < h.deadline_ms {
                continue;
            }
            if h.reset {
                h.fate = Fate::Reset;
                self.stats.reset += 1;
                steps.push(Step::Reset(*id));
            } else {
                h.fate = Fate::Released;
                self.stats.released_unrecorded += 1;
                steps.push(Step::Resume(*id));
            }
        }
        steps.sort_by_key(|s| match s {
            Step::Resume(id) | Step::Reset(id) => *id,
        });
        steps
    }

    /// A held end that can never be stored (its record was dropped): its policy applies now.
    pub fn give_up(&mut self, context_id: u32, now_ms: u64) -> Option<Step> {
        let h = self.ends.get_mut(&context_id)?;
        h.deadline_ms = now_ms;
        self.expire(now_ms)
            .into_iter()
            .find(|s| matches!(s, Step::Resume(id) | Step::Reset(id) if *id == context_id))
    }

    /// The state of a stream's end, if it was held.
    pub fn get(&self, context_id: u32) -> Option<Held> {
        self.ends.get(&context_id).copied()
    }

    /// The stream is over: forgets it, and returns how its end finished.
    pub fn end(&mut self, context_id: u32) -> Option<Held> {
        self.ends.remove(&context_id)
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn finds(stream: Stream, chunks: &[&[u8]]) -> Option<usize> {
        let mut scan = EventScan::new(stream);
        chunks.iter().position(|c| scan.feed(c))
    }

    #[test]
    fn the_stream_kind_comes_from_the_content_type_and_gemini_paths() {
        assert_eq!(
            Stream::of(Some(b"text/event-stream; charset=utf-8"), None),
            Some(Stream::Sse)
        );
        assert_eq!(
            Stream::of(Some(b"application/x-ndjson"), Some(b"/api/chat")),
            Some(Stream::Ndjson)
        );
        assert_eq!(
            Stream::of(
                Some(b"application/json"),
                Some(b"/v1beta/models/gemini-2.0-flash:streamGenerateContent")
            ),
            Some(Stream::Gemini)
        );
        assert_eq!(
            Stream::of(Some(b"application/json"), Some(b"/v1/chat")),
            None
        );
        assert_eq!(Stream::of(None, None), None);
    }

    #[test]
    fn openai_done_is_found_at_a_line_start_only() {
        assert_eq!(
            finds(Stream::Sse, &[b"data: {\"a\":1}\n\n", b"data: [DONE]\n\n"]),
            Some(1)
        );
        assert_eq!(finds(Stream::Sse, &[b"data: [DONE]\n\n"]), Some(0));
        assert_eq!(
            finds(
                Stream::Sse,
                &[b"data: {\"text\":\"say data: [DONE] now\"}\n\n"]
            ),
            None,
            "inside an event's data it is content, not the end"
        );
    }

    #[test]
    fn anthropic_message_stop_ollama_done_and_gemini_finish_reason_are_found() {
        assert_eq!(
            finds(
                Stream::Sse,
                &[
                    b"event: content_block_stop\ndata: {}\n\n",
                    b"event: message_delta\ndata: {}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
                ]
            ),
            Some(1)
        );
        assert_eq!(
            finds(
                Stream::Ndjson,
                &[b"{\"done\":false}\n", b"{\"message\":{},\"done\": true}\n"]
            ),
            Some(1)
        );
        assert_eq!(
            finds(
                Stream::Gemini,
                &[
                    b"[{\"candidates\":[]}\n,",
                    b"{\"candidates\":[{\"finishReason\": \"STOP\"}]}]"
                ]
            ),
            Some(1)
        );
    }

    #[test]
    fn an_event_split_across_chunks_is_found_in_the_chunk_that_completes_it() {
        assert_eq!(
            finds(Stream::Sse, &[b"data: {}\n\nda", b"ta: [DO", b"NE]\n\n"]),
            Some(2)
        );
        assert_eq!(
            finds(Stream::Sse, &[b"d", b"a", b"t", b"a: [DONE]"]),
            Some(3)
        );
        // A line start carried over a chunk boundary.
        assert_eq!(
            finds(Stream::Sse, &[b"data: {}\n", b"\ndata: [DONE]"]),
            Some(1)
        );
        assert_eq!(finds(Stream::Ndjson, &[b"{\"done\"", b": true}"]), Some(1));
    }

    #[test]
    fn the_end_of_a_body_is_its_last_content_length_byte_or_end_of_stream() {
        let mut end = EndFinder::new(Some(10), None);
        assert!(!end.at_headers(false));
        assert!(!end.at_chunk(4, None, false));
        assert!(end.at_chunk(6, None, false), "the 10th byte ends the body");
        let mut chunked = EndFinder::new(None, None);
        assert!(!chunked.at_chunk(100, None, false));
        assert!(chunked.at_chunk(0, None, true));
        assert!(EndFinder::new(Some(0), None).at_headers(false));
        assert!(EndFinder::new(None, None).at_headers(true));
        assert_eq!(content_length(b" 42 "), Some(42));
        assert_eq!(content_length(b"-1"), None);
        assert_eq!(content_length(b""), None);
    }

    #[test]
    fn a_stored_record_resumes_only_ends_still_waiting() {
        let mut holds = Holds::default();
        holds.hold(7, 1000, 500, false);
        holds.hold(8, 1000, 500, true);
        assert_eq!(holds.stored(&[7, 99]), vec![Step::Resume(7)]);
        assert_eq!(holds.stored(&[7]), vec![], "resumed once");
        assert_eq!(holds.get(7).map(|h| h.fate), Some(Fate::Stored));
        assert_eq!(holds.expire(1499), vec![]);
        assert_eq!(holds.expire(1500), vec![Step::Reset(8)]);
        assert_eq!(holds.stored(&[8]), vec![], "a reset stream is not resumed");
        assert_eq!(holds.end(8).map(|h| h.fate), Some(Fate::Reset));
        assert_eq!(holds.len(), 1);
        assert_eq!(
            holds.stats,
            HoldStats {
                held: 2,
                stored: 1,
                released_unrecorded: 0,
                reset: 1
            }
        );
    }

    #[test]
    fn a_release_at_the_deadline_is_counted_as_unrecorded() {
        let mut holds = Holds::default();
        holds.hold(3, 0, 100, false);
        assert_eq!(holds.expire(100), vec![Step::Resume(3)]);
        assert_eq!(holds.stats.released_unrecorded, 1);
        assert_eq!(holds.give_up(3, 200), None, "already finished");
        holds.hold(4, 0, 100, false);
        assert_eq!(holds.give_up(4, 50), Some(Step::Resume(4)));
    }

    proptest! {
        #[test]
        fn done_is_found_however_the_stream_is_cut(
            prefix in "[a-z{}:\" \n]{0,60}",
            cuts in prop::collection::vec(0usize..80, 0..6),
        ) {
            let body = format!("{prefix}\ndata: [DONE]\n\n").into_bytes();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(body.len())).collect();
            cuts.push(0);
            cuts.push(body.len());
            cuts.sort_unstable();
            cuts.dedup();
            let mut scan = EventScan::new(Stream::Sse);
            let mut found_at = None;
            for w in cuts.windows(2) {
                if scan.feed(&body[w[0]..w[1]]) && found_at.is_none() {
                    found_at = Some(w[1]);
                }
            }
            // Found in the chunk that completes `data: [DONE]`, not before, not after.
            let done_ends = body.len() - 2;
            let completing = cuts.iter().copied().find(|&c| c >= done_ends);
            prop_assert_eq!(found_at, completing);
        }
    }
}
