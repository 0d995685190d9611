//! A batch as one root context hands it to another through an Envoy shared queue, when the root
//! that replaces it lives in another VM (an Istio `WasmPlugin` edit gives each worker a new VM).
//!
//! An item is a fixed 18-byte header and the batch's body, exactly as it would be sent:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | `TTHO` |
//! | 4 | version, `1` |
//! | 5 | delivery format of the body: `0` NDJSON, `1` framed |
//! | 6..14 | records in the body, u64 little-endian |
//! | 14..18 | failed callouts so far, u32 little-endian |
//! | 18.. | the body |
//!
//! The layout is kept across releases: the VM of an old release hands its records to the VM of
//! the new one.

use crate::batcher::Batch;
use crate::record::Format;
use std::fmt;

const MAGIC: &[u8; 4] = b"TTHO";
const VERSION: u8 = 1;
const HEADER: usize = 18;
const NDJSON: u8 = 0;
const FRAMED: u8 = 1;

/// Why a queue item is not a batch this filter can send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandoffError {
    /// Shorter than the header, or not starting with `TTHO`.
    NotABatch,
    /// A version or body format this build does not know.
    Unknown { version: u8, format: u8 },
}

impl fmt::Display for HandoffError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandoffError::NotABatch => write!(f, "not a handed-on batch"),
            HandoffError::Unknown { version, format } => write!(
                f,
                "handed-on batch of unknown version {version} or format {format}"
            ),
        }
    }
}

/// The queue item carrying `batch`.
pub fn encode(batch: &Batch) -> Vec<u8> {
    let mut item = Vec::with_capacity(HEADER + batch.body.len());
    item.extend_from_slice(MAGIC);
    item.push(VERSION);
    item.push(match batch.format {
        Format::Ndjson => NDJSON,
        Format::Framed => FRAMED,
    });
    item.extend_from_slice(&batch.records.to_le_bytes());
    item.extend_from_slice(&batch.failures.to_le_bytes());
    item.extend_from_slice(&batch.body);
    item
}

/// The batch a queue item carries. The item's buffer becomes the batch's body without a copy of
/// the body bytes beyond moving them to the front.
pub fn decode(mut item: Vec<u8>) -> Result<Batch, HandoffError> {
    if item.len() < HEADER || &item[..4] != MAGIC {
        return Err(HandoffError::NotABatch);
    }
    let (version, format) = (item[4], item[5]);
    let format = match (version, format) {
        (VERSION, NDJSON) => Format::Ndjson,
        (VERSION, FRAMED) => Format::Framed,
        _ => return Err(HandoffError::Unknown { version, format }),
    };
    let mut records = [0u8; 8];
    records.copy_from_slice(&item[6..14]);
    let mut failures = [0u8; 4];
    failures.copy_from_slice(&item[14..18]);
    item.drain(..HEADER);
    Ok(Batch::handed(
        item,
        u64::from_le_bytes(records),
        format,
        u32::from_le_bytes(failures),
    ))
}

/// How many records an item says it carries, when it is one (to count a batch that cannot be
/// taken over as dropped).
pub fn records_in(item: &[u8]) -> u64 {
    match item.get(6..14) {
        Some(bytes) if item.starts_with(MAGIC) => {
            let mut records = [0u8; 8];
            records.copy_from_slice(bytes);
            u64::from_le_bytes(records)
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_batch_comes_back_as_it_left() {
        let batch = Batch::handed(
            b"{\"id\":\"a\"}\n{\"id\":\"b\"}\n".to_vec(),
            2,
            Format::Ndjson,
            3,
        );
        let item = encode(&batch);
        assert_eq!(&item[..6], b"TTHO\x01\x00");
        assert_eq!(records_in(&item), 2);
        assert_eq!(decode(item), Ok(batch));
        let framed = Batch::handed(b"TTF1 ...".to_vec(), 1, Format::Framed, 0);
        let item = encode(&framed);
        assert_eq!(item[5], 1);
        assert_eq!(decode(item), Ok(framed));
    }

    #[test]
    fn items_that_are_not_batches_are_refused() {
        assert_eq!(decode(Vec::new()), Err(HandoffError::NotABatch));
        assert_eq!(decode(b"TTHO\x01".to_vec()), Err(HandoffError::NotABatch));
        assert_eq!(decode(vec![0; 40]), Err(HandoffError::NotABatch));
        let mut later = encode(&Batch::handed(b"x\n".to_vec(), 1, Format::Ndjson, 0));
        later[4] = 2;
        assert_eq!(
            decode(later),
            Err(HandoffError::Unknown {
                version: 2,
                format: 0
            })
        );
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_are_refused_without_panic(item in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = records_in(&item);
            let _ = decode(item);
        }

        #[test]
        fn every_batch_round_trips(body in prop::collection::vec(any::<u8>(), 0..300), records: u64, failures: u32, framed: bool) {
            let format = if framed { Format::Framed } else { Format::Ndjson };
            let batch = Batch::handed(body, records, format, failures);
            prop_assert_eq!(decode(encode(&batch)), Ok(batch));
        }
    }
}
