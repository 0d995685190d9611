//! `audit_transport: "grpc"`: batches as messages on long-lived gRPC streams ("lanes").
//!
//! A callout costs Envoy a new request through its HTTP client (a route, a connection from the
//! pool, a header map each way); a message on an open stream costs a frame each way. Each lane is
//! one stream of `truthtable.ingest.v1.IngestService/Deliver`
//! (`collector/proto/truthtable/ingest/v1/ingest.proto`) carrying at most one batch at a time, so
//! its acknowledgements need no correlation: the `Ack` that comes back on a lane answers the
//! batch that lane carries. A worker opens up to `max_inflight` lanes, as it would have that many
//! callouts open.
//!
//! The two messages are small and fixed, so they are written and read here by hand (the filter
//! links no protobuf library): `Batch { string content_type = 1; bytes body = 2; }` and
//! `Ack { uint32 status = 1; string message = 2; }`. The stream's target is given to Envoy as a
//! serialized `envoy.config.core.v3.GrpcService` naming the cluster and authority, so no cluster
//! name is ever taken for a serialized message.

/// The service and method a lane opens.
pub const SERVICE: &str = "truthtable.ingest.v1.IngestService";
pub const METHOD: &str = "Deliver";

fn varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn field_bytes(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    out.push((field << 3) | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// `envoy.config.core.v3.GrpcService { envoy_grpc: { cluster_name, authority } }`, the
/// authority left out when it is the cluster's name (Envoy's default). `None` when it is not
/// valid UTF-8 — a length past 127 takes a two-byte varint — since the SDK passes the target as
/// a `&str`: [`fits`] is checked when the configuration is read.
pub fn grpc_service(cluster: &str, authority: &str) -> Option<String> {
    let mut envoy_grpc = Vec::with_capacity(cluster.len() + authority.len() + 4);
    field_bytes(&mut envoy_grpc, 1, cluster.as_bytes());
    if authority != cluster {
        field_bytes(&mut envoy_grpc, 2, authority.as_bytes());
    }
    let mut out = Vec::with_capacity(envoy_grpc.len() + 3);
    field_bytes(&mut out, 1, &envoy_grpc);
    String::from_utf8(out).ok()
}

/// Whether a cluster and authority fit in a target the SDK can pass.
pub fn fits(cluster: &str, authority: &str) -> bool {
    grpc_service(cluster, authority).is_some()
}

/// A `Batch` message carrying `body` of `content_type`.
pub fn batch(content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + content_type.len() + 12);
    field_bytes(&mut out, 1, content_type.as_bytes());
    field_bytes(&mut out, 2, body);
    out
}

fn read_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at)?;
        *at += 1;
        n |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(n);
        }
    }
    None
}

/// The `status` of an `Ack` (0 when absent, as proto3 reads it); `None` when the bytes are not
/// a well-formed message. Unknown fields are skipped, so a later collector may add some.
pub fn ack_status(bytes: &[u8]) -> Option<u32> {
    let mut at = 0;
    let mut status = 0u32;
    while at < bytes.len() {
        let key = read_varint(bytes, &mut at)?;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                let v = read_varint(bytes, &mut at)?;
                if field == 1 {
                    status = u32::try_from(v).ok()?;
                }
            }
            1 => at = at.checked_add(8)?,
            2 => {
                let len = usize::try_from(read_varint(bytes, &mut at)?).ok()?;
                at = at.checked_add(len)?;
            }
            5 => at = at.checked_add(4)?,
            _ => return None,
        }
        if at > bytes.len() {
            return None;
        }
    }
    Some(status)
}

/// A worker's open lanes: which stream carries which batch.
#[derive(Debug, Default)]
pub struct Lanes {
    /// (stream token, the batch key it carries, if any).
    open: Vec<(u32, Option<u32>)>,
    /// Keys for the batcher: a lane's batch is known by a key of its own, never an HTTP token.
    next_key: u32,
}

impl Lanes {
    /// A lane that carries nothing now.
    pub fn idle(&self) -> Option<u32> {
        self.open
            .iter()
            .find(|(_, carrying)| carrying.is_none())
            .map(|(t, _)| *t)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.open.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// A stream was opened.
    pub fn opened(&mut self, stream: u32) {
        self.open.push((stream, None));
    }

    /// `stream` now carries a batch: the key the batcher knows it by.
    pub fn carry(&mut self, stream: u32) -> u32 {
        // The high bit keeps a lane's key apart from Envoy's callout tokens (counted from 1),
        // which the batcher may still hold from before a change of transport.
        self.next_key = self.next_key.wrapping_add(1) & 0x7fff_ffff;
        let key = self.next_key | 0x8000_0000;
        if let Some(lane) = self.open.iter_mut().find(|(t, _)| *t == stream) {
            lane.1 = Some(key);
        }
        key
    }

    /// An acknowledgement came on `stream`: the key of the batch it answers.
    pub fn acknowledged(&mut self, stream: u32) -> Option<u32> {
        self.open
            .iter_mut()
            .find(|(t, _)| *t == stream)
            .and_then(|lane| lane.1.take())
    }

    /// `stream` closed: the key of the batch it carried, unanswered.
    pub fn closed(&mut self, stream: u32) -> Option<u32> {
        let i = self.open.iter().position(|(t, _)| *t == stream)?;
        self.open.swap_remove(i).1
    }

    /// Lanes whose batch is no longer awaited (the batcher gave it up at `audit_timeout_ms`):
    /// they are taken out, to be cancelled, since an acknowledgement still to come on them
    /// would answer a batch that is gone.
    pub fn stale(&mut self, awaited: impl Fn(u32) -> bool) -> Vec<u32> {
        let mut out = Vec::new();
        self.open.retain(|(t, carrying)| match carrying {
            Some(key) if !awaited(*key) => {
                out.push(*t);
                false
            }
            _ => true,
        });
        out
    }

    /// Every lane, taken out (the root is going away).
    pub fn take_all(&mut self) -> Vec<u32> {
        self.open.drain(..).map(|(t, _)| t).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_the_two_fields_in_protobuf_wire_form() {
        let m = batch("application/x-ndjson", b"{}\n");
        let mut expected = vec![0x0a, 20];
        expected.extend_from_slice(b"application/x-ndjson");
        expected.extend_from_slice(&[0x12, 3]);
        expected.extend_from_slice(b"{}\n");
        assert_eq!(m, expected);
        // A body past 127 bytes takes a two-byte length.
        let big = batch("t", &[7u8; 300]);
        assert_eq!(&big[..5], &[0x0a, 1, b't', 0x12, 0xac]);
        assert_eq!(big[5], 0x02);
        assert_eq!(big.len(), 6 + 300);
    }

    #[test]
    fn the_grpc_service_names_cluster_and_authority() {
        let m = grpc_service("audit", "collector").map(String::into_bytes);
        let expected = [&[0x0a, 18, 0x0a, 5][..], b"audit", &[0x12, 9], b"collector"].concat();
        assert_eq!(m, Some(expected));
        let same = grpc_service("audit", "audit").map(String::into_bytes);
        assert_eq!(same, Some([&[0x0a, 7, 0x0a, 5][..], b"audit"].concat()));
    }

    #[test]
    fn a_target_past_127_bytes_does_not_fit() {
        let cluster = "outbound|9000||truthtable-collector.truthtable.svc.cluster.local";
        assert!(fits(cluster, cluster), "the authority is left out");
        assert!(fits(cluster, "truthtable-collector.truthtable:9000"));
        assert!(fits(&"c".repeat(125), &"c".repeat(125)));
        assert!(!fits(&"c".repeat(126), "x"));
        assert!(!fits(cluster, &"a".repeat(60)));
    }

    #[test]
    fn an_ack_gives_its_status_and_skips_what_it_does_not_know() {
        assert_eq!(ack_status(&[0x08, 0xc8, 0x01]), Some(200));
        assert_eq!(ack_status(&[]), Some(0));
        // status 503, message "full", then an unknown fixed64 field 3 and fixed32 field 4.
        let mut m = vec![0x08, 0xf7, 0x03, 0x12, 4];
        m.extend_from_slice(b"full");
        m.push(0x19);
        m.extend_from_slice(&[0; 8]);
        m.push(0x25);
        m.extend_from_slice(&[0; 4]);
        assert_eq!(ack_status(&m), Some(503));
    }

    #[test]
    fn a_malformed_ack_is_none_not_a_panic() {
        assert_eq!(ack_status(&[0x08]), None, "varint cut short");
        assert_eq!(ack_status(&[0x12, 10, b'a']), None, "length past the end");
        assert_eq!(ack_status(&[0x0b]), None, "a group's wire type");
        assert_eq!(
            ack_status(&[0x08, 0xff, 0xff, 0xff, 0xff, 0x7f]),
            None,
            "past u32"
        );
        assert_eq!(ack_status(&[0x80; 11]), None, "an endless varint");
    }

    #[test]
    fn a_lane_carries_one_batch_and_its_ack_or_close_answers_it() {
        let mut lanes = Lanes::default();
        assert_eq!(lanes.idle(), None);
        lanes.opened(7);
        lanes.opened(9);
        assert_eq!(lanes.idle(), Some(7));
        let a = lanes.carry(7);
        assert_eq!(lanes.idle(), Some(9));
        let b = lanes.carry(9);
        assert_ne!(a, b);
        assert_eq!(lanes.idle(), None);
        assert_eq!(lanes.acknowledged(7), Some(a));
        assert_eq!(lanes.acknowledged(7), None, "one ack per batch");
        assert_eq!(lanes.idle(), Some(7));
        assert_eq!(lanes.closed(9), Some(b));
        assert_eq!(lanes.len(), 1);
        assert_eq!(lanes.closed(9), None);
    }

    #[test]
    fn a_lane_whose_batch_was_given_up_is_taken_out() {
        let mut lanes = Lanes::default();
        lanes.opened(1);
        lanes.opened(2);
        lanes.opened(3);
        let a = lanes.carry(1);
        let b = lanes.carry(2);
        assert_eq!(
            lanes.stale(|k| k == b),
            vec![1],
            "1's batch is no longer awaited"
        );
        assert_eq!(lanes.acknowledged(2), Some(b));
        assert_eq!(lanes.len(), 2);
        assert_ne!(a, b);
        assert_eq!(lanes.take_all(), vec![2, 3]);
        assert!(lanes.is_empty());
    }
}
