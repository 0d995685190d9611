//! The indexer: every stored record's [`Digest`](crate::store::Digest), written behind ingest.
//!
//! Ingest commits a batch's records and answers; then it hands the records it stored to the
//! [`Indexer`] ([`Indexer::push`]), whose task ([`run`]) derives their digests and writes them —
//! the `capture_digests` row and the words of the search index — many records to a transaction
//! of its own. The acknowledgement never waits for the word index, and the index takes a large
//! transaction for much less per record than an ingest batch's 88 (BENCHMARKS.md).
//!
//! Nothing is lost if a record never gets here: it is stored, listed and served without its
//! digest, and the scan ([`digest::backfill`]) gives every record without a current digest one —
//! at start, after the queue overflowed or a write failed for good, and, on a database several
//! collectors share, every [`RESCAN_EVERY`] (records a replica stored and did not live to index).
//! While anything waits, [`Indexer::busy`] is true and the list says `indexing`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::digest;
use crate::record::CaptureRecord;
use crate::store::{CaptureStore, Digest};

/// Bytes of stored records (their raw lines) the queue holds at most; records beyond it are left
/// to the next scan.
pub const QUEUE_MAX_BYTES: usize = 64 << 20;
/// Records derived and written in one transaction at most.
pub const STEP_RECORDS: usize = 2000;
/// Bytes of records (raw lines) taken into one step at most, after the first.
const STEP_BYTES: usize = 16 << 20;
/// How often a shared store (PostgreSQL) is scanned for records without a current digest.
pub const RESCAN_EVERY: Duration = Duration::from_secs(3600);

/// Records stored and waiting for their digests.
#[derive(Default)]
struct Queue {
    records: VecDeque<(i64, CaptureRecord, usize)>,
    bytes: usize,
}

/// What ingest hands on, and what the list asks about.
pub struct Indexer {
    queue: Mutex<Queue>,
    wake: Notify,
    /// Records pushed and not yet written (queued or in the step being written).
    pending: AtomicU64,
    /// The scan runs.
    scanning: AtomicBool,
    /// Records were left out (or a write failed): the next step scans the store.
    rescan: AtomicBool,
    /// Digests written by this process, for `/metrics`.
    written: AtomicU64,
    /// TTFT and token gaps of the records this process stored, for `/metrics`.
    pub timing: crate::metrics::StreamTiming,
}

impl Default for Indexer {
    fn default() -> Self {
        Self::new()
    }
}

impl Indexer {
    /// An indexer that scans the store first (`busy` until that scan is done).
    pub fn new() -> Self {
        Self {
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            pending: AtomicU64::new(0),
            scanning: AtomicBool::new(true),
            rescan: AtomicBool::new(true),
            written: AtomicU64::new(0),
            timing: crate::metrics::StreamTiming::default(),
        }
    }

    /// Hands on records just committed: `(seq, record, bytes of its raw line)`. Records that
    /// would take the queue over [`QUEUE_MAX_BYTES`] are dropped from it and left to the scan.
    pub fn push(&self, stored: impl IntoIterator<Item = (i64, CaptureRecord, usize)>) {
        let mut added = 0;
        let mut left_out = false;
        {
            let Ok(mut q) = self.queue.lock() else {
                self.rescan.store(true, Ordering::SeqCst);
                self.wake.notify_one();
                return;
            };
            for (seq, record, bytes) in stored {
                if q.bytes + bytes > QUEUE_MAX_BYTES && !q.records.is_empty() {
                    left_out = true;
                    continue;
                }
                q.bytes += bytes;
                q.records.push_back((seq, record, bytes));
                added += 1;
            }
            self.pending.fetch_add(added, Ordering::SeqCst);
        }
        if left_out && !self.rescan.swap(true, Ordering::SeqCst) {
            tracing::warn!(
                queue_max_bytes = QUEUE_MAX_BYTES,
                "the index queue is full; records beyond it get their digests from a scan of the store"
            );
        }
        self.wake.notify_one();
    }

    /// True while stored records wait for their digests (queued, being written, or the scan runs):
    /// filters and search skip those records meanwhile.
    pub fn busy(&self) -> bool {
        self.scanning.load(Ordering::SeqCst)
            || self.rescan.load(Ordering::SeqCst)
            || self.pending.load(Ordering::SeqCst) > 0
    }

    /// Records pushed and not yet written.
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::SeqCst)
    }

    /// Digests this process has written from its queue.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Takes the next step: up to [`STEP_RECORDS`] records, and no more than [`STEP_BYTES`] after
    /// the first.
    fn take(&self) -> Vec<(i64, CaptureRecord)> {
        let Ok(mut q) = self.queue.lock() else {
            return Vec::new();
        };
        let mut step = Vec::new();
        let mut bytes = 0;
        while step.len() < STEP_RECORDS {
            match q.records.front() {
                Some((_, _, b)) if step.is_empty() || bytes + b <= STEP_BYTES => {}
                _ => break,
            }
            let Some((seq, record, b)) = q.records.pop_front() else {
                break;
            };
            bytes += b;
            q.bytes = q.bytes.saturating_sub(b);
            step.push((seq, record));
        }
        step
    }

    /// Waits until nothing is pending, or `within` has passed; returns what is still pending.
    pub async fn settle(&self, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        while self.pending() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.pending()
    }
}

/// Derives and writes the digests of what [`Indexer::push`] hands on, a step at a time, and scans
/// the store when asked to: at start, after an overflow or a failed write, and every
/// `rescan_every` when that is given (a store that other collectors share: [`RESCAN_EVERY`]).
/// Runs until aborted. While the store is unavailable a step waits and is written again.
pub async fn run(store: &impl CaptureStore, indexer: &Indexer, rescan_every: Option<Duration>) {
    let mut next_rescan = rescan_every.map(|every| tokio::time::Instant::now() + every);
    // Digests derived and not yet written.
    let mut ready: Option<Vec<(i64, Digest)>> = None;
    loop {
        if let Some(at) = next_rescan.filter(|at| *at <= tokio::time::Instant::now()) {
            indexer.rescan.store(true, Ordering::SeqCst);
            next_rescan = rescan_every.map(|every| at.max(tokio::time::Instant::now()) + every);
        }
        if ready.is_none() && indexer.rescan.load(Ordering::SeqCst) {
            // `scanning` first, so that `busy` stays true throughout.
            indexer.scanning.store(true, Ordering::SeqCst);
            indexer.rescan.store(false, Ordering::SeqCst);
            digest::backfill(store, &indexer.scanning).await;
        }
        let step = indexer.take();
        if step.is_empty() && ready.is_none() {
            let far = tokio::time::Instant::now() + Duration::from_secs(86_400);
            tokio::select! {
                () = indexer.wake.notified() => {}
                () = tokio::time::sleep_until(next_rescan.unwrap_or(far)) => {}
            }
            continue;
        }
        // A step is derived while the one before it is written: the two work on different cores
        // (a blocking thread of ours, and the database server or SQLite's writer).
        let writing = async {
            if let Some(digests) = ready.take() {
                let n = digests.len() as u64;
                write(store, indexer, digests).await;
                indexer.pending.fetch_sub(n, Ordering::SeqCst);
            }
        };
        let (derived, ()) = tokio::join!(derive(indexer, step), writing);
        ready = derived;
    }
}

/// The digests of a step's records, derived on the blocking pool; `None` for an empty step, or
/// when the derivation failed (its records are then left to a scan, and no longer pending).
async fn derive(indexer: &Indexer, step: Vec<(i64, CaptureRecord)>) -> Option<Vec<(i64, Digest)>> {
    if step.is_empty() {
        return None;
    }
    let n = step.len() as u64;
    let derived = tokio::task::spawn_blocking(move || {
        step.into_iter()
            .map(|(seq, record)| {
                let view = digest::view_of(&record);
                let timing = view.timing.clone().map(|t| (view.model.clone(), t));
                ((seq, digest::of(&record, &view)), timing)
            })
            .unzip::<_, _, Vec<(i64, Digest)>, Vec<_>>()
    })
    .await;
    match derived {
        Ok((digests, timings)) => {
            for (model, timing) in timings.into_iter().flatten() {
                indexer.timing.observe(model.as_deref(), &timing);
            }
            Some(digests)
        }
        Err(e) => {
            tracing::error!(error = %e, "deriving digests failed; a scan of the store gives them");
            indexer.rescan.store(true, Ordering::SeqCst);
            indexer.pending.fetch_sub(n, Ordering::SeqCst);
            None
        }
    }
}

/// Writes one step's digests, again and again while the store is unavailable; any other failure
/// leaves them to a scan.
async fn write(store: &impl CaptureStore, indexer: &Indexer, digests: Vec<(i64, Digest)>) {
    let n = digests.len() as u64;
    loop {
        match store.put_digests(digests.clone()).await {
            Ok(_) => {
                indexer.written.fetch_add(n, Ordering::Relaxed);
                return;
            }
            Err(e) if e.is_unavailable() => tokio::time::sleep(Duration::from_secs(1)).await,
            Err(e) => {
                tracing::error!(error = %e, "storing digests failed; a scan of the store gives them");
                indexer.rescan.store(true, Ordering::SeqCst);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::sample;

    fn record(id: &str) -> CaptureRecord {
        CaptureRecord::from_value(&sample(id)).unwrap()
    }

    #[test]
    fn a_new_indexer_is_busy_until_its_first_scan() {
        let ix = Indexer::new();
        assert!(ix.busy());
        ix.rescan.store(false, Ordering::SeqCst);
        ix.scanning.store(false, Ordering::SeqCst);
        assert!(!ix.busy());
        ix.push([(1, record("a"), 10)]);
        assert!(ix.busy());
        assert_eq!(ix.pending(), 1);
    }

    #[test]
    fn steps_are_taken_in_order_and_bounded() {
        let ix = Indexer::new();
        ix.push((0..STEP_RECORDS as i64 + 5).map(|i| (i, record("a"), 1)));
        let first = ix.take();
        assert_eq!(first.len(), STEP_RECORDS);
        assert_eq!(first.first().map(|s| s.0), Some(0));
        assert_eq!(
            ix.take().iter().map(|s| s.0).collect::<Vec<_>>(),
            [2000, 2001, 2002, 2003, 2004]
        );
        assert!(ix.take().is_empty());
        // A step stops before the record that would take it over STEP_BYTES, but always takes one.
        ix.push([(7, record("a"), STEP_BYTES), (8, record("b"), 1)]);
        assert_eq!(ix.take().iter().map(|s| s.0).collect::<Vec<_>>(), [7]);
        assert_eq!(ix.take().iter().map(|s| s.0).collect::<Vec<_>>(), [8]);
    }

    #[test]
    fn records_beyond_the_queue_limit_are_left_to_a_scan() {
        let ix = Indexer::new();
        ix.rescan.store(false, Ordering::SeqCst);
        ix.push([(1, record("a"), QUEUE_MAX_BYTES - 10)]);
        assert!(!ix.rescan.load(Ordering::SeqCst));
        ix.push([(2, record("b"), 5), (3, record("c"), 20)]);
        assert!(
            ix.rescan.load(Ordering::SeqCst),
            "the left-out record is scanned for"
        );
        assert_eq!(ix.pending(), 2);
        let seqs: Vec<i64> = std::iter::from_fn(|| Some(ix.take()))
            .take_while(|s| !s.is_empty())
            .flatten()
            .map(|s| s.0)
            .collect();
        assert_eq!(seqs, [1, 2]);
    }
}
