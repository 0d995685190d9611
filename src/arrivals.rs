//! When each chunk of a response body passed the filter, and how big it was: the raw material of
//! time to first token, token gaps and stalls (derived by the collector, not here).
//!
//! The first [`MAX_CHUNKS`] chunks are kept one by one; the rest are summed up. A chunk costs a
//! clock read (the caller's) and 16 bytes of a vector that grows by doubling.

use crate::json;

/// Chunks kept one by one; later ones only count in the summary.
pub const MAX_CHUNKS: usize = 4096;

/// The arrivals of one response body, in host time (ns since the epoch).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Arrivals {
    /// `(ns, bytes)` of the first [`MAX_CHUNKS`] non-empty chunks.
    kept: Vec<(u64, u32)>,
    /// Their bytes, summed once the cap is reached (they change no more after it).
    kept_bytes: u64,
    /// The chunks after those.
    more: Rest,
}

/// What is known of the chunks past the cap.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Rest {
    count: u64,
    bytes: u64,
    last_ns: u64,
    /// The longest wait before one of them (the first one's counted from the last kept chunk).
    max_gap_ns: u64,
    /// When that wait began, and the body bytes that had passed by then (where in the answer
    /// it happened).
    max_gap_from_ns: u64,
    max_gap_after_bytes: u64,
}

impl Arrivals {
    /// Notes a chunk of `size` bytes that passed at `now_ns`. Empty chunks (a bare end of
    /// stream) carry nothing and are not noted.
    pub fn push(&mut self, now_ns: u64, size: usize) {
        if size == 0 {
            return;
        }
        let size = u32::try_from(size).unwrap_or(u32::MAX);
        if self.kept.len() < MAX_CHUNKS {
            self.kept.push((now_ns, size));
            return;
        }
        if self.more.count == 0 {
            self.kept_bytes = self.kept.iter().map(|&(_, b)| u64::from(b)).sum();
        }
        let previous = if self.more.count == 0 {
            self.kept.last().map_or(now_ns, |&(ns, _)| ns)
        } else {
            self.more.last_ns
        };
        let gap = now_ns.saturating_sub(previous);
        if gap > self.more.max_gap_ns || self.more.count == 0 {
            self.more.max_gap_ns = gap;
            self.more.max_gap_from_ns = previous;
            self.more.max_gap_after_bytes = self.kept_bytes + self.more.bytes;
        }
        self.more.count += 1;
        self.more.bytes += u64::from(size);
        self.more.last_ns = now_ns;
    }

    /// Chunks noted one by one.
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// Appends the record's fields, each preceded by a comma: `"chunks":[[at_us,bytes],…]` and
    /// `"chunks_more"`: `null`, or past the cap `{"count":…,"bytes":…,"last_at_us":…,"max_gap_us":…}`.
    /// Times are microseconds since `started_ns`.
    pub fn write_fields(&self, out: &mut Vec<u8>, started_ns: u64) {
        let us = |ns: u64| ns.saturating_sub(started_ns) / 1_000;
        out.extend_from_slice(b",\"chunks\":[");
        for (i, &(ns, size)) in self.kept.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.push(b'[');
            json::uint(out, us(ns));
            out.push(b',');
            json::uint(out, u64::from(size));
            out.push(b']');
        }
        out.push(b']');
        if self.more.count == 0 {
            out.extend_from_slice(b",\"chunks_more\":null");
            return;
        }
        out.extend_from_slice(b",\"chunks_more\":{\"count\":");
        json::uint(out, self.more.count);
        out.extend_from_slice(b",\"bytes\":");
        json::uint(out, self.more.bytes);
        out.extend_from_slice(b",\"last_at_us\":");
        json::uint(out, us(self.more.last_ns));
        out.extend_from_slice(b",\"max_gap_us\":");
        json::uint(out, self.more.max_gap_ns / 1_000);
        out.extend_from_slice(b",\"max_gap_at_us\":");
        json::uint(out, us(self.more.max_gap_from_ns));
        out.extend_from_slice(b",\"max_gap_after_bytes\":");
        json::uint(out, self.more.max_gap_after_bytes);
        out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn fields(a: &Arrivals, started_ns: u64) -> Value {
        let mut out = b"{\"x\":0".to_vec();
        a.write_fields(&mut out, started_ns);
        out.push(b'}');
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn chunks_are_written_in_microseconds_since_the_start_with_their_sizes() {
        let mut a = Arrivals::default();
        a.push(1_000_000_000 + 212_500_000, 512);
        a.push(1_000_000_000 + 250_000_999, 87);
        assert_eq!(
            fields(&a, 1_000_000_000),
            json!({"x": 0, "chunks": [[212_500, 512], [250_000, 87]], "chunks_more": null})
        );
    }

    #[test]
    fn an_empty_end_of_stream_is_not_a_chunk() {
        let mut a = Arrivals::default();
        a.push(5, 0);
        assert!(a.is_empty());
        assert_eq!(
            fields(&a, 0),
            json!({"x": 0, "chunks": [], "chunks_more": null})
        );
    }

    #[test]
    fn chunks_past_the_cap_are_summed_up_with_their_longest_gap() {
        let mut a = Arrivals::default();
        for i in 0..MAX_CHUNKS as u64 {
            a.push(i * 1_000_000, 10);
        }
        // Past the cap: 7 ms after the last kept chunk, then 2 ms, then a 40 ms stall.
        let last = (MAX_CHUNKS as u64 - 1) * 1_000_000;
        a.push(last + 7_000_000, 5);
        a.push(last + 9_000_000, 6);
        a.push(last + 49_000_000, 7);
        assert_eq!(a.len(), MAX_CHUNKS);
        let got = fields(&a, 0);
        assert_eq!(got["chunks"].as_array().unwrap().len(), MAX_CHUNKS);
        assert_eq!(
            got["chunks_more"],
            json!({
                "count": 3,
                "bytes": 18,
                "last_at_us": (last + 49_000_000) / 1000,
                "max_gap_us": 40_000,
                // It began when the second chunk past the cap passed, after all the kept bytes
                // and 11 more.
                "max_gap_at_us": (last + 9_000_000) / 1000,
                "max_gap_after_bytes": MAX_CHUNKS as u64 * 10 + 11,
            })
        );
    }

    #[test]
    fn a_chunk_before_the_start_counts_as_at_the_start() {
        let mut a = Arrivals::default();
        a.push(10, 1);
        assert_eq!(
            fields(&a, 1_000_000),
            json!({"x": 0, "chunks": [[0, 1]], "chunks_more": null})
        );
    }
}
