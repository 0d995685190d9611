//! What happens to a chunk of body: the first `max_body_bytes` are kept, every byte is counted.

/// A capped copy of one direction's body, fed chunk by chunk as Envoy forwards it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BodyTap {
    kept: Vec<u8>,
    size: u64,
    cap: usize,
}

impl BodyTap {
    pub fn new(cap: usize) -> BodyTap {
        BodyTap {
            kept: Vec::new(),
            size: 0,
            cap,
        }
    }

    /// How many bytes of a chunk of `chunk_len` bytes are worth reading from the host.
    pub fn room(&self, chunk_len: usize) -> usize {
        chunk_len.min(self.cap - self.kept.len())
    }

    /// Records a chunk of `chunk_len` bytes of which `prefix` (at most `room(chunk_len)` bytes) was read.
    pub fn push(&mut self, chunk_len: usize, prefix: Vec<u8>) {
        self.size += chunk_len as u64;
        let take = prefix.len().min(self.cap - self.kept.len());
        if self.kept.is_empty() && take == prefix.len() {
            // The common case of a body in one chunk: keep the host's buffer, copy nothing.
            self.kept = prefix;
            return;
        }
        let needed = self.kept.len() + take;
        if needed > self.kept.capacity() {
            // Powers of two, never past the cap: every stream's buffers come in the same few
            // sizes, so the ones freed by finished streams fit the next ones and the VM's memory
            // stops growing once it has seen the peak of concurrent bodies.
            // `needed` never exceeds the cap: `take` is at most the room left under it.
            let size = needed.next_power_of_two().min(self.cap);
            self.kept.reserve_exact(size - self.kept.len());
        }
        self.kept.extend_from_slice(&prefix[..take]);
    }

    /// Records a chunk whose bytes were not read (the cap is reached, or the host had none).
    pub fn count(&mut self, chunk_len: usize) {
        self.size += chunk_len as u64;
    }

    pub fn kept(&self) -> &[u8] {
        &self.kept
    }

    /// Total bytes that crossed the filter, kept or not.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes counted but not kept.
    pub fn dropped(&self) -> u64 {
        self.size - self.kept.len() as u64
    }

    pub fn truncated(&self) -> bool {
        (self.kept.len() as u64) < self.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn feed(tap: &mut BodyTap, chunk: &[u8]) {
        let room = tap.room(chunk.len());
        if room == 0 {
            tap.count(chunk.len());
        } else {
            tap.push(chunk.len(), chunk[..room].to_vec());
        }
    }

    #[test]
    fn body_under_the_cap_is_kept_whole() {
        let mut tap = BodyTap::new(16);
        feed(&mut tap, b"hello ");
        feed(&mut tap, b"world");
        assert_eq!(tap.kept(), b"hello world");
        assert_eq!(tap.size(), 11);
        assert!(!tap.truncated());
    }

    #[test]
    fn bytes_past_the_cap_are_counted_not_kept() {
        let mut tap = BodyTap::new(4);
        feed(&mut tap, b"abc");
        assert_eq!(tap.room(10), 1);
        feed(&mut tap, b"defgh");
        assert_eq!(tap.room(10), 0);
        feed(&mut tap, b"ijk");
        assert_eq!(tap.kept(), b"abcd");
        assert_eq!(tap.size(), 11);
        assert_eq!(tap.dropped(), 7);
        assert!(tap.truncated());
    }

    #[test]
    fn zero_cap_keeps_nothing_and_counts_everything() {
        let mut tap = BodyTap::new(0);
        feed(&mut tap, b"abc");
        assert_eq!(tap.kept(), b"");
        assert_eq!(tap.size(), 3);
        assert!(tap.truncated());
    }

    #[test]
    fn a_host_that_hands_over_more_than_asked_is_still_capped() {
        let mut tap = BodyTap::new(2);
        tap.push(5, b"abcde".to_vec());
        assert_eq!(tap.kept(), b"ab");
    }

    #[test]
    fn a_growing_body_is_kept_in_power_of_two_buffers_up_to_the_cap() {
        let mut tap = BodyTap::new(1 << 20);
        let mut sizes = Vec::new();
        for _ in 0..100 {
            feed(&mut tap, &[b'x'; 16_000]);
            if sizes.last() != Some(&tap.kept.capacity()) {
                sizes.push(tap.kept.capacity());
            }
        }
        assert_eq!(sizes[0], 16_000, "one chunk: the host's buffer as it came");
        assert!(sizes[1..].iter().all(|s| s.is_power_of_two()), "{sizes:?}");
        assert_eq!(*sizes.last().unwrap(), 1 << 20, "never past the cap");
        assert_eq!(tap.kept().len(), 1 << 20);
    }

    proptest! {
        #[test]
        fn kept_is_the_capped_prefix_of_the_body(
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..50), 0..20),
            cap in 0usize..300,
        ) {
            let mut tap = BodyTap::new(cap);
            for c in &chunks { feed(&mut tap, c); }
            let whole: Vec<u8> = chunks.concat();
            prop_assert_eq!(tap.kept(), &whole[..whole.len().min(cap)]);
            prop_assert_eq!(tap.size(), whole.len() as u64);
            prop_assert_eq!(tap.truncated(), whole.len() > cap);
        }
    }
}
