//! How a WebSocket session ended: each direction's frames are walked by their headers alone
//! (payloads are skipped, never read) to find its Close frame and the close code (RFC 6455 §5.2,
//! §5.5.1, §7.4).
//!
//! Envoy ends an upgraded stream the same way whether the session closed normally or the
//! connection broke (`upstream_reset_after_response_started{connection_termination}`): only the
//! Close frames tell the two apart.

/// The longest a frame header gets (2 + 8 bytes of length + 4 of mask), plus the 2 bytes of a
/// close code.
const MAX_HEAD: usize = 16;

/// One direction of a session: where its frame headers are, and the Close frame if one passed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FrameWalk {
    /// Payload bytes of the current frame still to pass.
    skip: u64,
    head: [u8; MAX_HEAD],
    head_len: usize,
    close: Option<Close>,
}

/// A Close frame: its code, `None` when it carried none (1005, "no status").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close {
    pub code: Option<u16>,
}

impl Close {
    /// 1000 (normal closure), 1001 (going away) or no code at all.
    pub fn is_normal(self) -> bool {
        matches!(self.code, None | Some(1000) | Some(1001))
    }
}

impl FrameWalk {
    /// Whether a chunk of `len` bytes holds part of a frame header (else it is all payload and
    /// [`FrameWalk::pass`] is enough).
    pub fn wants(&self, len: usize) -> bool {
        self.skip < len as u64
    }

    /// A chunk of `len` bytes of payload passed, unread.
    pub fn pass(&mut self, len: usize) {
        self.skip = self.skip.saturating_sub(len as u64);
    }

    /// A chunk passed: its bytes.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = usize::try_from(self.skip).map_or(bytes.len(), |s| s.min(bytes.len()));
                self.skip -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            let (&b, rest) = match bytes.split_first() {
                Some(split) => split,
                None => break,
            };
            bytes = rest;
            if let Some(slot) = self.head.get_mut(self.head_len) {
                *slot = b;
                self.head_len += 1;
            }
            if let Some((header, payload)) = self.needed() {
                if self.head_len >= header {
                    self.end_of_head(header, payload);
                }
            }
        }
    }

    /// The Close frame of this direction, if one passed.
    pub fn close(&self) -> Option<Close> {
        self.close
    }

    /// Once the length is known: the bytes to collect (the header, and a close frame's code)
    /// and the frame's payload length.
    fn needed(&self) -> Option<(usize, u64)> {
        let h = &self.head[..self.head_len];
        let (&b1, tail) = (h.get(1)?, h.get(2..)?);
        let masked = b1 & 0x80 != 0;
        let (ext, payload) = match b1 & 0x7f {
            126 => (
                2,
                u64::from(u16::from_be_bytes([*tail.first()?, *tail.get(1)?])),
            ),
            127 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(tail.get(..8)?);
                (8, u64::from_be_bytes(n))
            }
            n => (0, u64::from(n)),
        };
        let header = 2 + ext + if masked { 4 } else { 0 };
        let code = if self.head[0] & 0x0f == 0x8 {
            payload.min(2) as usize
        } else {
            0
        };
        Some((header + code, payload))
    }

    fn end_of_head(&mut self, collected: usize, payload: u64) {
        let h = self.head;
        if h[0] & 0x0f == 0x8 {
            let masked = h[1] & 0x80 != 0;
            let code = (payload >= 2).then(|| {
                let at = collected - 2;
                let (mut a, mut b) = (h[at], h[at + 1]);
                if masked {
                    // The mask is the 4 bytes before the payload (a control frame has no
                    // extended length).
                    a ^= h[2];
                    b ^= h[3];
                }
                u16::from_be_bytes([a, b])
            });
            self.close = self.close.or(Some(Close { code }));
            self.skip = payload.saturating_sub(2);
        } else {
            self.skip = payload;
        }
        self.head_len = 0;
    }
}

/// Both directions of an upgraded exchange.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Session {
    /// Client to upstream (request body).
    pub client: FrameWalk,
    /// Upstream to client (response body).
    pub upstream: FrameWalk,
}

impl Session {
    /// The close handshake completed: a Close frame passed each way, and neither carried an
    /// error code.
    pub fn closed_normally(&self) -> bool {
        match (self.client.close(), self.upstream.close()) {
            (Some(a), Some(b)) => a.is_normal() && b.is_normal(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A frame as a peer writes it; `mask` for client frames.
    fn frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = vec![0x80 | opcode];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(m | n as u8),
            n if n < 65_536 => {
                out.push(m | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(m | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        match mask {
            Some(key) => {
                out.extend_from_slice(&key);
                out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
            }
            None => out.extend_from_slice(payload),
        }
        out
    }

    fn close(code: Option<u16>, mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut payload = code.map(|c| c.to_be_bytes().to_vec()).unwrap_or_default();
        payload.extend_from_slice(b"bye");
        if code.is_none() {
            payload.clear();
        }
        frame(0x8, &payload, mask)
    }

    fn walk(bytes: &[u8]) -> FrameWalk {
        let mut w = FrameWalk::default();
        w.feed(bytes);
        w
    }

    #[test]
    fn a_close_frame_after_data_is_found_with_its_code() {
        let key = Some([0x37, 0xfa, 0x21, 0x3d]);
        let bytes = [
            frame(0x1, b"hello", key),
            frame(0x2, &[7u8; 300], key),
            frame(0x2, &[9u8; 70_000], key),
            close(Some(1000), key),
        ]
        .concat();
        assert_eq!(walk(&bytes).close(), Some(Close { code: Some(1000) }));
        let unmasked = [frame(0x1, b"hello", None), close(Some(1011), None)].concat();
        assert_eq!(walk(&unmasked).close(), Some(Close { code: Some(1011) }));
        assert_eq!(walk(&close(None, None)).close(), Some(Close { code: None }));
    }

    #[test]
    fn data_alone_has_no_close() {
        assert_eq!(walk(&frame(0x1, b"x", None)).close(), None);
        // A payload that looks like a close frame is payload.
        assert_eq!(
            walk(&frame(0x2, &close(Some(1000), None), None)).close(),
            None
        );
    }

    #[test]
    fn the_handshake_is_normal_only_when_both_sides_closed_without_an_error() {
        let key = Some([1, 2, 3, 4]);
        let mut s = Session::default();
        s.client.feed(&close(Some(1000), key));
        assert!(!s.closed_normally(), "one side only");
        s.upstream.feed(&close(Some(1000), None));
        assert!(s.closed_normally());
        let mut s = Session::default();
        s.client.feed(&close(None, key));
        s.upstream.feed(&close(Some(1001), None));
        assert!(s.closed_normally());
        let mut s = Session::default();
        s.client.feed(&close(Some(1000), key));
        s.upstream.feed(&close(Some(1011), None));
        assert!(
            !s.closed_normally(),
            "an internal error is not a normal close"
        );
    }

    #[test]
    fn payload_chunks_need_not_be_read() {
        let big = frame(0x2, &[5u8; 1000], None);
        let mut w = FrameWalk::default();
        w.feed(&big[..100]);
        assert!(!w.wants(500), "all payload");
        w.pass(500);
        assert!(w.wants(500), "the next header is in it");
        w.feed(&[&big[600..], &close(Some(1000), None)[..]].concat());
        assert_eq!(w.close(), Some(Close { code: Some(1000) }));
    }

    proptest! {
        #[test]
        fn any_chunking_finds_the_same_close(
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..6),
            code in prop::option::of(1000u16..5000),
            masked in any::<bool>(),
            cuts in prop::collection::vec(0usize..2000, 0..8),
        ) {
            let key = masked.then_some([9, 8, 7, 6]);
            let mut bytes: Vec<u8> = payloads.iter().flat_map(|p| frame(0x2, p, key)).collect();
            bytes.extend(close(code, key));
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut w = FrameWalk::default();
            let mut at = 0;
            for cut in cuts.into_iter().chain([bytes.len()]) {
                let chunk = &bytes[at..cut];
                if w.wants(chunk.len()) { w.feed(chunk) } else { w.pass(chunk.len()) }
                at = cut;
            }
            prop_assert_eq!(w.close(), Some(Close { code }));
        }

        #[test]
        fn any_bytes_are_walked_without_panic(bytes in prop::collection::vec(any::<u8>(), 0..500)) {
            let _ = walk(&bytes).close();
        }
    }
}
