//! A header map exactly as the proxy-wasm host hands it over, read without copying.
//!
//! The host serializes a map as: pair count (u32 LE), then for each pair the name and value lengths
//! (u32 LE each), then each name and value followed by a NUL. Keeping that buffer as it came, and
//! walking it only when the record is written, costs one host call and one allocation per map.

/// One header map, in the order Envoy holds it, repeats included.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HeaderBlock {
    raw: Vec<u8>,
}

impl HeaderBlock {
    /// Wraps a buffer in the host's serialization. A malformed buffer yields the pairs before the fault.
    pub fn from_raw(raw: Vec<u8>) -> HeaderBlock {
        HeaderBlock { raw }
    }

    /// Serializes pairs the way the host does (used by tests and by hosts that hand over pairs).
    pub fn from_pairs<N: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(N, V)]) -> HeaderBlock {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
        for (n, v) in pairs {
            raw.extend_from_slice(&(n.as_ref().len() as u32).to_le_bytes());
            raw.extend_from_slice(&(v.as_ref().len() as u32).to_le_bytes());
        }
        for (n, v) in pairs {
            raw.extend_from_slice(n.as_ref());
            raw.push(0);
            raw.extend_from_slice(v.as_ref());
            raw.push(0);
        }
        HeaderBlock { raw }
    }

    /// The map in the host's serialization.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }

    /// All pairs, pseudo-headers included.
    pub fn iter(&self) -> Pairs<'_> {
        let count = read_u32(&self.raw, 0).unwrap_or(0) as usize;
        // Each pair needs 8 bytes of lengths; a count the buffer cannot hold is malformed.
        let count = count.min(self.raw.len().saturating_sub(4) / 8);
        Pairs {
            raw: &self.raw,
            index: 0,
            count,
            data: 4 + count * 8,
        }
    }

    /// The first value of `name` (names are lower case in Envoy; compared exactly).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|(n, _)| *n == name.as_bytes())
            .map(|(_, v)| v)
    }

    /// True when the host handed over no pairs at all.
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }
}

/// A `:status` value as a number, if it is one.
pub fn status_code(value: &[u8]) -> Option<u16> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

fn read_u32(raw: &[u8], at: usize) -> Option<u32> {
    let bytes = raw.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// Iterator over `(name, value)` byte slices of a [`HeaderBlock`].
pub struct Pairs<'a> {
    raw: &'a [u8],
    index: usize,
    count: usize,
    data: usize,
}

impl<'a> Iterator for Pairs<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.index >= self.count {
            return None;
        }
        let lens = 4 + self.index * 8;
        let name_len = read_u32(self.raw, lens)? as usize;
        let value_len = read_u32(self.raw, lens + 4)? as usize;
        let name_end = self.data.checked_add(name_len)?;
        let value_start = name_end.checked_add(1)?;
        let value_end = value_start.checked_add(value_len)?;
        // A pair counts only with its value's terminating NUL in the buffer: a map cut short
        // ends before the pair it cuts.
        if value_end >= self.raw.len() {
            return None;
        }
        let name = self.raw.get(self.data..name_end)?;
        let value = self.raw.get(value_start..value_end)?;
        self.data = value_end + 1;
        self.index += 1;
        Some((name, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_come_back_in_order_with_repeats() {
        let pairs = [
            (":status", "200"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("content-type", "text/event-stream"),
            ("x-empty", ""),
        ];
        let block = HeaderBlock::from_pairs(&pairs);
        let got: Vec<(&[u8], &[u8])> = block.iter().collect();
        let want: Vec<(&[u8], &[u8])> = pairs
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .collect();
        assert_eq!(got, want);
        assert_eq!(block.get("set-cookie"), Some(&b"a=1"[..]));
        assert_eq!(block.get("x-missing"), None);
    }

    #[test]
    fn a_map_cut_before_its_last_nul_ends_before_that_pair() {
        // ("", "") is 4 + 8 + 2 bytes: cut at 13 the value's NUL is missing (found by the
        // proptest below).
        let mut raw = HeaderBlock::from_pairs(&[("", ""), ("", "")]).raw;
        assert_eq!(HeaderBlock::from_raw(raw.clone()).iter().count(), 2);
        raw.truncate(raw.len() - 1);
        assert_eq!(HeaderBlock::from_raw(raw.clone()).iter().count(), 1);
        let one = HeaderBlock::from_pairs(&[("", "")]).raw;
        assert_eq!(HeaderBlock::from_raw(one[..13].to_vec()).iter().count(), 0);
    }

    #[test]
    fn empty_and_garbage_buffers_yield_no_pairs() {
        assert!(HeaderBlock::from_raw(Vec::new()).is_empty());
        assert!(HeaderBlock::from_raw(vec![0xff, 0xff, 0xff, 0xff]).is_empty());
        assert!(HeaderBlock::from_pairs::<&str, &str>(&[]).is_empty());
    }

    proptest::proptest! {
        #[test]
        fn roundtrip(pairs in proptest::collection::vec((".{0,12}", ".{0,40}"), 0..12)) {
            let block = HeaderBlock::from_pairs(&pairs);
            let got: Vec<(Vec<u8>, Vec<u8>)> = block.iter().map(|(n, v)| (n.to_vec(), v.to_vec())).collect();
            let want: Vec<(Vec<u8>, Vec<u8>)> = pairs.iter().map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec())).collect();
            proptest::prop_assert_eq!(got, want);
        }

        #[test]
        fn truncated_or_corrupt_buffers_never_panic(
            pairs in proptest::collection::vec(("[a-z]{0,8}", "[ -~]{0,20}"), 0..6),
            cut in 0usize..200,
            flip in proptest::collection::vec((0usize..200, proptest::num::u8::ANY), 0..4),
        ) {
            let mut raw = HeaderBlock::from_pairs(&pairs).raw;
            raw.truncate(cut.min(raw.len()));
            for (at, byte) in flip {
                if let Some(b) = raw.get_mut(at) { *b = byte; }
            }
            let len = raw.len();
            let n = HeaderBlock::from_raw(raw).iter().count();
            // Every pair the walk yields is backed by 8 length bytes and 2 NULs of the buffer.
            proptest::prop_assert!(n == 0 || 4 + n * 10 <= len);
        }
    }
}
