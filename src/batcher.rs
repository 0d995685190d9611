//! Delivery of records from one worker: batched by size and age, bounded in bytes, retried with
//! backoff until the audit cluster answers 2xx, and every loss counted.
//!
//! The root context owns one `Batcher`; stream contexts append finished records to it. Time comes
//! in as milliseconds from the caller, so tests drive it. A root that is replaced hands its batches
//! over ([`Batcher::hand_over`]) to its successor ([`Batcher::take_over`]) or gives up what it
//! could not deliver ([`Batcher::abandon`]), and every record is counted on the way.

use crate::config::DeliveryLimits;
use crate::headers::status_code;
use crate::record::Format;
use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;

/// The bytes of records held by every batcher of one wasm VM (one Envoy worker) together: a worker
/// whose configuration changed during an outage has an old root still holding records beside the
/// new one, and both count against the same `queue_max_bytes`. Clones share the count.
#[derive(Debug, Clone, Default)]
pub struct Budget {
    used: Rc<Cell<usize>>,
}

impl Budget {
    /// Bytes held by all batchers sharing this budget.
    pub fn used(&self) -> usize {
        self.used.get()
    }

    /// Bytes left under `limit`.
    fn room(&self, limit: usize) -> usize {
        limit.saturating_sub(self.used.get())
    }

    fn take(&self, bytes: usize) {
        self.used.set(self.used.get() + bytes);
    }

    fn give(&self, bytes: usize) {
        self.used.set(self.used.get().saturating_sub(bytes));
    }
}

/// Records sent as one callout: NDJSON lines or frames, as `format` says.
#[derive(Debug, PartialEq, Eq)]
pub struct Batch {
    pub body: Vec<u8>,
    pub records: u64,
    pub format: Format,
    /// Callouts that carried this batch and failed.
    pub failures: u32,
    sent_ms: u64,
    /// The stream contexts whose ends wait for this batch's records (`complete_after_stored`).
    pub holds: Vec<u32>,
}

impl Batch {
    /// A batch as another root handed it over.
    pub fn handed(body: Vec<u8>, records: u64, format: Format, failures: u32) -> Batch {
        Batch {
            body,
            records,
            format,
            failures,
            sent_ms: 0,
            holds: Vec::new(),
        }
    }
}

/// Cumulative counts since the VM started; the host turns them into Envoy metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Records appended (kept for delivery).
    pub captured: u64,
    /// Records the audit cluster acknowledged with a 2xx.
    pub delivered: u64,
    /// Records sent again after a failed callout.
    pub retried: u64,
    /// Records lost because the queue was full.
    pub dropped: u64,
    /// Records kept without their bodies because the queue had no room for them whole (also
    /// counted in `captured`).
    pub shed: u64,
    /// Callouts that failed (non-2xx, synthesized 503/504, dispatch refused, no answer).
    pub failed_callouts: u64,
    /// Records handed over to the root that replaced this one (no longer held here).
    pub handed_on: u64,
    /// Records taken over from a root that was replaced (held here since).
    pub taken_over: u64,
}

/// Whether a record is written with its bodies or, when the queue has no room for it, without.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bodies {
    Kept,
    Shed,
}

/// What became of a record handed to [`Batcher::append`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    Whole,
    /// Held, but written without its bodies: the queue had no room for them.
    WithoutBodies,
    /// Lost: the queue had no room even for the record without its bodies.
    Dropped,
    /// The writer wrote nothing.
    Nothing,
}

/// Room past `batch_max_bytes` for the record that fills a batch.
const BATCH_SLACK: usize = 64 << 10;

#[derive(Debug)]
pub struct Batcher {
    limits: DeliveryLimits,
    /// The format of the records appended from now on.
    format: Format,
    open: Vec<u8>,
    open_records: u64,
    open_since_ms: u64,
    /// Streams whose ends wait for a record of the open batch: it leaves at once.
    open_holds: Vec<u32>,
    waiting: VecDeque<Batch>,
    inflight: Vec<(u32, Batch)>,
    held_bytes: usize,
    held_records: u64,
    budget: Budget,
    failures_in_a_row: u32,
    paused_until_ms: u64,
    /// State of the generator that spreads retries (see [`Batcher::seeded`]).
    jitter: u64,
    stats: Stats,
}

impl Batcher {
    pub fn new(limits: DeliveryLimits) -> Batcher {
        Batcher {
            limits,
            format: Format::Ndjson,
            open: Vec::new(),
            open_records: 0,
            open_since_ms: 0,
            open_holds: Vec::new(),
            waiting: VecDeque::new(),
            inflight: Vec::new(),
            held_bytes: 0,
            held_records: 0,
            budget: Budget::default(),
            failures_in_a_row: 0,
            paused_until_ms: 0,
            jitter: 0,
            stats: Stats::default(),
        }
    }

    /// Seeds the draw of retry pauses. Workers and proxies seeded differently (the host uses the
    /// clock when a worker is configured) that fail together, when their audit cluster goes
    /// down, do not all retry at the same instants when it comes back.
    pub fn seeded(mut self, seed: u64) -> Batcher {
        self.jitter = seed;
        self
    }

    /// Records appended from now on are written in `format` (the caller's writer writes them).
    pub fn formatted(mut self, format: Format) -> Batcher {
        self.format = format;
        self
    }

    /// Applies new limits and format to everything from now on; what is held stays held (an open
    /// batch of another format is closed first, so a batch never mixes two).
    pub fn reconfigure(&mut self, limits: DeliveryLimits, format: Format) {
        if format != self.format {
            self.seal();
        }
        self.limits = limits;
        self.format = format;
    }

    /// Counts what this batcher holds against `budget`, shared with the VM's other batchers,
    /// instead of against its own.
    pub fn sharing(mut self, budget: Budget) -> Batcher {
        budget.take(self.held_bytes);
        self.budget.give(self.held_bytes);
        self.budget = budget;
        self
    }

    /// Appends the record that `write` puts after the buffer's end; `write` is told whether to
    /// include the bodies. When the whole record would take the VM's batchers together past
    /// `queue_max_bytes`, it
    /// is written again without its bodies (the exchange stays on record, its bodies counted as
    /// not kept); only when even that does not fit is the record dropped and counted.
    /// `at_least` is a lower bound of the whole record's size (its bodies' bytes): when not even
    /// that fits, the whole record is not written at all.
    pub fn append(
        &mut self,
        now_ms: u64,
        at_least: usize,
        mut write: impl FnMut(&mut Vec<u8>, Bodies),
    ) -> Appended {
        let room = self.budget.room(self.limits.queue_max_bytes);
        let mut bodies = if at_least > room {
            Bodies::Shed
        } else {
            Bodies::Kept
        };
        // A record with large bodies (an estimate: bodies grow a little when escaped) that the
        // open batch has no room for starts a batch of its own, so the open one is not copied
        // into a larger buffer.
        let estimate = match bodies {
            Bodies::Kept => at_least.saturating_add(at_least / 8).saturating_add(4096),
            Bodies::Shed => 4096,
        };
        if self.open_records > 0 && estimate > self.open.capacity() - self.open.len() {
            self.seal();
        }
        if self.open.capacity() == 0 {
            // One allocation per batch, sized for a full one, instead of a chain of doublings
            // that copy the batch each time it grows. Larger ones come in powers of two, so the
            // buffers of delivered batches fit the next ones.
            let full = self.limits.batch_max_bytes.saturating_add(BATCH_SLACK);
            let size = if estimate > full {
                estimate.checked_next_power_of_two().unwrap_or(estimate)
            } else {
                full
            };
            self.open.reserve_exact(size);
        }
        let mark = self.open.len();
        let added = loop {
            write(&mut self.open, bodies);
            let added = self.open.len() - mark;
            if added == 0 {
                return Appended::Nothing;
            }
            if added <= room {
                break added;
            }
            self.open.truncate(mark);
            if bodies == Bodies::Shed {
                self.stats.dropped += 1;
                return Appended::Dropped;
            }
            bodies = Bodies::Shed;
        };
        let appended = match bodies {
            Bodies::Kept => Appended::Whole,
            Bodies::Shed => {
                self.stats.shed += 1;
                Appended::WithoutBodies
            }
        };
        if self.open_records == 0 {
            self.open_since_ms = now_ms;
        }
        self.open_records += 1;
        self.hold(added, 1);
        self.stats.captured += 1;
        if self.open.len() >= self.limits.batch_max_bytes {
            self.seal();
        }
        appended
    }

    fn seal(&mut self) {
        if self.open_records == 0 {
            return;
        }
        self.waiting.push_back(Batch {
            body: std::mem::take(&mut self.open),
            records: std::mem::take(&mut self.open_records),
            format: self.format,
            failures: 0,
            sent_ms: 0,
            holds: std::mem::take(&mut self.open_holds),
        });
    }

    /// [`Batcher::append`] for the record of a stream whose end is held until the record is
    /// stored: the open batch is due at once, and its acknowledgement names `context_id`
    /// ([`Batcher::answered`]).
    pub fn append_held(
        &mut self,
        now_ms: u64,
        at_least: usize,
        context_id: u32,
        write: impl FnMut(&mut Vec<u8>, Bodies),
    ) -> Appended {
        let sealed_before = self.waiting.len();
        let appended = self.append(now_ms, at_least, write);
        if matches!(appended, Appended::Whole | Appended::WithoutBodies) {
            // The record filled the open batch, which was sealed with it.
            let sealed_with_it = self.waiting.len() > sealed_before && self.open_records == 0;
            match self.waiting.back_mut() {
                Some(b) if sealed_with_it => b.holds.push(context_id),
                _ => self.open_holds.push(context_id),
            }
        }
        appended
    }

    /// True when a record whose stream's end is held waits in the open batch or a sealed one:
    /// the root sends it now rather than at the flush interval.
    pub fn has_holds_due(&self, now_ms: u64) -> bool {
        (!self.open_holds.is_empty() || self.waiting.iter().any(|b| !b.holds.is_empty()))
            && self.may_call_out(now_ms)
    }

    /// True when a sealed batch (a full one, or one that failed before) may be sent right now:
    /// no backoff is running and a callout slot is free.
    pub fn can_send_sealed(&self, now_ms: u64) -> bool {
        !self.waiting.is_empty() && self.may_call_out(now_ms)
    }

    fn may_call_out(&self, now_ms: u64) -> bool {
        let open_limit = if self.failures_in_a_row > 0 {
            1
        } else {
            self.limits.max_inflight
        };
        now_ms >= self.paused_until_ms && self.inflight.len() < open_limit
    }

    /// The next batch to send now, if any: a full batch, or one whose oldest record has waited
    /// `flush_interval_ms`, unless a backoff is running or enough callouts are open. After a
    /// failure only one callout is open at a time, so a down audit cluster sees one probe.
    pub fn next_due(&mut self, now_ms: u64) -> Option<Batch> {
        if !self.may_call_out(now_ms) {
            return None;
        }
        if self.waiting.is_empty()
            && self.open_records > 0
            && (!self.open_holds.is_empty()
                || now_ms.saturating_sub(self.open_since_ms) >= self.limits.flush_interval_ms)
        {
            self.seal();
        }
        self.waiting.pop_front()
    }

    /// The host dispatched `batch` as callout `token`.
    pub fn sent(&mut self, token: u32, mut batch: Batch, now_ms: u64) {
        batch.sent_ms = now_ms;
        if batch.failures > 0 {
            self.stats.retried += batch.records;
        }
        self.inflight.push((token, batch));
    }

    /// Whether the batch sent as `token` still awaits its answer.
    pub fn awaits(&self, token: u32) -> bool {
        self.inflight.iter().any(|(t, _)| *t == token)
    }

    /// The host could not dispatch `batch` at all (for example the cluster is unknown).
    pub fn not_sent(&mut self, batch: Batch, now_ms: u64) {
        self.fail(batch, now_ms);
    }

    /// The answer to callout `token` arrived; `stored` is true exactly for a 2xx `:status`.
    /// Returns the streams whose held ends waited for the records it stored.
    pub fn answered(&mut self, token: u32, stored: bool, now_ms: u64) -> Vec<u32> {
        let Some(i) = self.inflight.iter().position(|(t, _)| *t == token) else {
            return Vec::new();
        };
        let (_, mut batch) = self.inflight.swap_remove(i);
        if stored {
            self.unhold(&batch);
            self.stats.delivered += batch.records;
            self.failures_in_a_row = 0;
            self.paused_until_ms = 0;
            std::mem::take(&mut batch.holds)
        } else {
            self.fail(batch, now_ms);
            Vec::new()
        }
    }

    /// Fails callouts open longer than `timeout_ms` plus a grace second: Envoy answers every
    /// callout from the root context, so this only guards against an answer that never comes.
    pub fn expire(&mut self, now_ms: u64, timeout_ms: u64) {
        let deadline = timeout_ms.saturating_add(1000);
        while let Some(i) = self
            .inflight
            .iter()
            .position(|(_, b)| now_ms.saturating_sub(b.sent_ms) > deadline)
        {
            let (_, batch) = self.inflight.swap_remove(i);
            self.fail(batch, now_ms);
        }
    }

    fn fail(&mut self, mut batch: Batch, now_ms: u64) {
        batch.failures += 1;
        self.stats.failed_callouts += 1;
        self.failures_in_a_row = self.failures_in_a_row.saturating_add(1);
        self.paused_until_ms = now_ms.saturating_add(self.backoff_ms());
        // Oldest first: the failed batch goes ahead of those that never left.
        self.waiting.push_front(batch);
    }

    /// A pause drawn between half and all of its ceiling: `retry_initial_ms` doubled for each
    /// failure in a row after the first, up to `retry_max_ms`.
    fn backoff_ms(&mut self) -> u64 {
        let doublings = self.failures_in_a_row.saturating_sub(1).min(32);
        let ceiling = self
            .limits
            .retry_initial_ms
            .saturating_mul(1u64 << doublings)
            .min(self.limits.retry_max_ms);
        let floor = ceiling / 2;
        floor + self.next_jitter() % (ceiling - floor + 1)
    }

    /// splitmix64: well spread from any seed, consecutive clock readings included.
    fn next_jitter(&mut self) -> u64 {
        self.jitter = self.jitter.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.jitter;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn hold(&mut self, bytes: usize, records: u64) {
        self.held_bytes += bytes;
        self.held_records += records;
        self.budget.take(bytes);
    }

    fn unhold(&mut self, batch: &Batch) {
        self.held_bytes -= batch.body.len();
        self.held_records -= batch.records;
        self.budget.give(batch.body.len());
    }

    /// Hands over every record held — the open batch sealed, waiting batches, and batches in
    /// flight (their answers are ignored from now on; a receiver that stored one stores it once
    /// more as a duplicate) — for the root that replaces this one. Nothing is held afterwards.
    pub fn hand_over(&mut self) -> Vec<Batch> {
        let batches = self.release();
        self.stats.handed_on += batches.iter().map(|b| b.records).sum::<u64>();
        batches
    }

    /// Everything held, as [`Batcher::hand_over`] gives it, but not counted as handed on yet: for
    /// a hand-off whose outcome is known only later (see [`Batcher::note_hand_off`]).
    pub fn release(&mut self) -> Vec<Batch> {
        self.seal();
        let mut batches: Vec<Batch> = self.inflight.drain(..).map(|(_, b)| b).collect();
        batches.extend(self.waiting.drain(..));
        self.budget.give(self.held_bytes);
        self.held_bytes = 0;
        self.held_records = 0;
        batches
    }

    /// Takes over a batch a replaced root handed on, to be sent with the others. When the VM's
    /// batchers have no room for it under `queue_max_bytes`, its records are counted as dropped
    /// and false is returned.
    pub fn take_over(&mut self, batch: Batch) -> bool {
        self.adopt(batch, true)
    }

    /// Holds a batch again without counting it as taken over (it may be one this batcher
    /// released itself); without room, its records are counted as dropped.
    pub fn take_back(&mut self, batch: Batch) -> bool {
        self.adopt(batch, false)
    }

    fn adopt(&mut self, mut batch: Batch, taken_over: bool) -> bool {
        if batch.records == 0 {
            return true;
        }
        if batch.body.len() > self.budget.room(self.limits.queue_max_bytes) {
            self.stats.dropped += batch.records;
            return false;
        }
        batch.sent_ms = 0;
        self.hold(batch.body.len(), batch.records);
        if taken_over {
            self.stats.taken_over += batch.records;
        }
        self.waiting.push_back(batch);
        true
    }

    /// Settles a hand-off made with [`Batcher::release`] and [`Batcher::take_back`]: `handed`
    /// records left this batcher for good, `taken` arrived from others.
    pub fn note_hand_off(&mut self, handed: u64, taken: u64) {
        self.stats.handed_on += handed;
        self.stats.taken_over += taken;
    }

    /// Gives up every record held, counting each as dropped; returns how many there were.
    pub fn abandon(&mut self) -> u64 {
        let lost = self.release().iter().map(|b| b.records).sum();
        self.stats.dropped += lost;
        lost
    }

    /// Nothing held and no callout open: a root that is shutting down may go.
    pub fn is_idle(&self) -> bool {
        self.held_records == 0 && self.inflight.is_empty()
    }

    /// Counts records that were lost elsewhere (a VM that stopped without handing them on) as
    /// dropped by this batcher, so that the proxy's totals stay true.
    pub fn count_lost(&mut self, records: u64) {
        self.stats.dropped += records;
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Bytes of records held: open, waiting, in flight.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    pub fn held_records(&self) -> u64 {
        self.held_records
    }
}

impl Drop for Batcher {
    /// A batcher dropped while holding records (its root was deleted) frees its share of the budget.
    fn drop(&mut self) {
        self.budget.give(self.held_bytes);
    }
}

/// Whether a callout's `:status` means "stored": a 2xx, and nothing else. Envoy reports a failed
/// callout (connection refused, timeout) as a synthesized 503/504.
pub fn acknowledged(status: Option<&[u8]>) -> bool {
    status
        .and_then(status_code)
        .is_some_and(|s| stored_status(u32::from(s)))
}

/// Whether a delivery's status (a callout's `:status`, a stream's `Ack.status`) says its
/// records are stored: 2xx.
pub fn stored_status(status: u32) -> bool {
    (200..300).contains(&status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits() -> DeliveryLimits {
        DeliveryLimits {
            batch_max_bytes: 100,
            flush_interval_ms: 50,
            queue_max_bytes: 300,
            max_inflight: 2,
            retry_initial_ms: 10,
            retry_max_ms: 40,
        }
    }

    /// Sends the batch due at `now` as callout `token`.
    fn send(b: &mut Batcher, token: u32, now: u64) {
        let batch = b.next_due(now).expect("a batch is due");
        b.sent(token, batch, now);
    }

    /// A record of `len` bytes, or of at most `LEAN` bytes when written without its bodies.
    fn record(b: &mut Batcher, now: u64, len: usize) -> Appended {
        b.append(now, 0, |out, bodies| {
            let len = match bodies {
                Bodies::Kept => len,
                Bodies::Shed => len.min(LEAN),
            };
            out.extend(std::iter::repeat_n(b'x', len - 1));
            out.push(b'\n');
        })
    }

    const LEAN: usize = 5;

    #[test]
    fn a_record_too_large_for_the_open_batch_starts_a_batch_of_its_own() {
        let mut b = Batcher::new(DeliveryLimits {
            batch_max_bytes: 1024,
            queue_max_bytes: 1 << 24,
            ..limits()
        });
        record(&mut b, 0, 10);
        let big = 200_000;
        let appended = b.append(0, big, |out, _| {
            out.extend(std::iter::repeat_n(b'x', big));
            out.push(b'\n');
        });
        assert_eq!(appended, Appended::Whole);
        let first = b
            .next_due(0)
            .expect("the small record's batch, sealed early");
        assert_eq!((first.records, first.body.len()), (1, 10));
        let second = b.next_due(0).expect("the large record's batch, full");
        assert_eq!((second.records, second.body.len()), (1, big + 1));
        assert!(
            second.body.capacity().is_power_of_two(),
            "allocated once, in a size the next large batch can reuse: {}",
            second.body.capacity()
        );
    }

    #[test]
    fn a_held_record_leaves_at_once_and_its_2xx_names_exactly_its_streams() {
        let mut b = Batcher::new(limits());
        record(&mut b, 0, 10);
        assert!(!b.has_holds_due(0));
        let held = |b: &mut Batcher, ctx: u32| {
            b.append_held(0, 0, ctx, |out, _| out.extend_from_slice(b"held\n"))
        };
        assert_eq!(held(&mut b, 7), Appended::Whole);
        assert_eq!(held(&mut b, 8), Appended::Whole);
        assert!(b.has_holds_due(0));
        // Due at once, not at the flush interval; the plain record rides along.
        let batch = b.next_due(0).expect("due at once");
        assert_eq!((batch.records, batch.holds.clone()), (3, vec![7, 8]));
        b.sent(1, batch, 0);
        // A failed callout keeps the holds with the batch for its retry.
        assert_eq!(b.answered(1, false, 1), Vec::<u32>::new());
        let retry = b.next_due(100).expect("retried");
        assert_eq!(retry.holds, vec![7, 8]);
        b.sent(2, retry, 100);
        held(&mut b, 9);
        // While failing, one callout at a time: the later hold waits for the retry's answer.
        assert_eq!(b.next_due(100), None);
        assert_eq!(b.answered(2, true, 101), vec![7, 8]);
        let next = b.next_due(101).expect("a later hold in a batch of its own");
        b.sent(3, next, 101);
        assert_eq!(b.answered(3, true, 102), vec![9]);
        assert!(!b.has_holds_due(102));
    }

    #[test]
    fn a_held_record_that_fills_the_batch_is_named_by_the_sealed_batch() {
        let mut b = Batcher::new(limits());
        b.append_held(0, 0, 5, |out, _| out.extend(std::iter::repeat_n(b'x', 150)));
        let batch = b.next_due(0).expect("sealed when full");
        assert_eq!(batch.holds, vec![5]);
        assert_eq!(b.next_due(0), None);
    }

    #[test]
    fn only_a_2xx_status_acknowledges_a_batch() {
        for ok in ["200", "201", "204", "299"] {
            assert!(acknowledged(Some(ok.as_bytes())), "{ok}");
        }
        for not in [
            "199", "300", "400", "413", "503", "504", "", "2xx", "200 OK",
        ] {
            assert!(!acknowledged(Some(not.as_bytes())), "{not}");
        }
        assert!(!acknowledged(None), "no :status at all");
    }

    #[test]
    fn a_young_small_batch_waits_for_the_flush_interval() {
        let mut b = Batcher::new(limits());
        assert_eq!(record(&mut b, 0, 10), Appended::Whole);
        assert_eq!(b.next_due(49), None);
        let batch = b.next_due(50).unwrap();
        assert_eq!(batch.records, 1);
        assert_eq!(batch.body.len(), 10);
    }

    #[test]
    fn a_full_batch_leaves_at_once() {
        let mut b = Batcher::new(limits());
        for _ in 0..5 {
            record(&mut b, 0, 20);
        }
        let batch = b.next_due(0).unwrap();
        assert_eq!(batch.records, 5);
        assert_eq!(b.next_due(0), None);
    }

    #[test]
    fn a_2xx_delivers_and_frees_the_bytes() {
        let mut b = Batcher::new(limits());
        record(&mut b, 0, 10);
        let batch = b.next_due(100).unwrap();
        b.sent(7, batch, 100);
        assert_eq!(b.held_bytes(), 10);
        b.answered(7, true, 120);
        assert_eq!(b.held_bytes(), 0);
        assert_eq!(b.held_records(), 0);
        assert_eq!(b.stats().delivered, 1);
        assert_eq!(b.stats().retried, 0);
    }

    #[test]
    fn a_failure_retries_the_same_bytes_after_a_growing_backoff() {
        let mut b = Batcher::new(limits());
        record(&mut b, 0, 10);
        let first = b.next_due(100).unwrap();
        let body = first.body.clone();
        b.sent(1, first, 100);
        b.answered(1, false, 100);
        // Each pause lies between half and all of its ceiling.
        assert_eq!(b.next_due(104), None, "at least half of retry_initial_ms");
        let again = b.next_due(110).unwrap();
        assert_eq!(again.body, body);
        b.sent(2, again, 110);
        b.answered(2, false, 110);
        assert_eq!(b.next_due(119), None, "doubled");
        let third = b.next_due(130).unwrap();
        b.sent(3, third, 130);
        b.answered(3, false, 130);
        send(&mut b, 4, 170);
        b.answered(4, false, 170);
        assert_eq!(b.next_due(189), None, "at least half of the doubled pause");
        let last = b.next_due(210).unwrap();
        b.sent(5, last, 210);
        b.answered(5, true, 215);
        let s = b.stats();
        assert_eq!(
            (s.delivered, s.retried, s.failed_callouts, s.dropped),
            (1, 4, 4, 0)
        );
        assert_eq!(b.held_bytes(), 0);
    }

    /// The pause after each of `failures` failed callouts in a row, for a batcher seeded `seed`.
    fn pauses(seed: u64, failures: u32) -> Vec<u64> {
        let mut b = Batcher::new(DeliveryLimits {
            retry_initial_ms: 100,
            retry_max_ms: 1600,
            ..limits()
        })
        .seeded(seed);
        record(&mut b, 0, 10);
        let mut now = 50;
        let mut batch = b.next_due(now).expect("a batch is due");
        let mut pauses = Vec::new();
        for token in 0..failures {
            b.sent(token, batch, now);
            b.answered(token, false, now);
            let failed_at = now;
            batch = loop {
                if let Some(again) = b.next_due(now) {
                    break again;
                }
                now += 1;
            };
            pauses.push(now - failed_at);
        }
        pauses
    }

    #[test]
    fn retry_pauses_are_drawn_between_half_and_all_of_the_doubling_ceiling() {
        for seed in 0..50 {
            for (i, pause) in pauses(seed, 7).into_iter().enumerate() {
                let ceiling = (100u64 << i).min(1600);
                assert!(
                    (ceiling / 2..=ceiling).contains(&pause),
                    "seed {seed}, failure {i}: pause {pause} outside {}..={ceiling}",
                    ceiling / 2
                );
            }
        }
    }

    #[test]
    fn workers_seeded_apart_do_not_retry_in_step() {
        // Seeds as two workers get them from the clock, a few microseconds apart.
        let a = pauses(1_764_489_600_000_000_000, 7);
        let b = pauses(1_764_489_600_000_003_000, 7);
        let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
        assert!(same <= 1, "pauses {a:?} and {b:?} mostly coincide");
    }

    #[test]
    fn a_success_ends_the_backoff() {
        let mut b = Batcher::new(limits());
        record(&mut b, 0, 10);
        send(&mut b, 1, 50);
        b.answered(1, false, 50);
        send(&mut b, 2, 60);
        b.answered(2, true, 61);
        record(&mut b, 61, 10);
        assert!(b.next_due(111).is_some(), "no backoff after a success");
    }

    #[test]
    fn while_failing_only_one_callout_is_open() {
        let mut b = Batcher::new(limits());
        for _ in 0..15 {
            record(&mut b, 0, 20);
        }
        let one = b.next_due(0).unwrap();
        b.sent(1, one, 0);
        b.answered(1, false, 0);
        let probe = b.next_due(10).unwrap();
        b.sent(2, probe, 10);
        assert_eq!(b.next_due(10), None);
        b.answered(2, true, 11);
        send(&mut b, 3, 11);
        assert!(
            b.next_due(11).is_some(),
            "max_inflight again after a success"
        );
    }

    #[test]
    fn max_inflight_bounds_open_callouts() {
        let mut b = Batcher::new(limits());
        for _ in 0..15 {
            record(&mut b, 0, 20);
        }
        send(&mut b, 1, 0);
        send(&mut b, 2, 0);
        assert_eq!(b.next_due(0), None);
    }

    #[test]
    fn a_record_without_room_whole_is_kept_without_its_bodies() {
        let mut b = Batcher::new(limits());
        for _ in 0..29 {
            assert_eq!(record(&mut b, 0, 10), Appended::Whole);
        }
        assert_eq!(record(&mut b, 0, 50), Appended::WithoutBodies);
        assert_eq!(b.held_bytes(), 290 + LEAN);
        let s = b.stats();
        assert_eq!((s.captured, s.shed, s.dropped), (30, 1, 0));
        let last = std::iter::from_fn(|| b.next_due(1000)).last().unwrap();
        assert_eq!(last.records, 10);
        assert_eq!(
            last.body.len(),
            90 + LEAN,
            "the lean record, no torn whole one"
        );
    }

    #[test]
    fn a_record_whose_bodies_alone_do_not_fit_is_not_written_whole() {
        let mut b = Batcher::new(limits());
        for _ in 0..29 {
            record(&mut b, 0, 10);
        }
        let mut asked = Vec::new();
        let appended = b.append(0, 11, |out, bodies| {
            asked.push(bodies);
            out.extend_from_slice(b"abc\n");
        });
        assert_eq!(appended, Appended::WithoutBodies);
        assert_eq!(asked, [Bodies::Shed]);
        assert_eq!(b.stats().shed, 1);
    }

    #[test]
    fn a_full_queue_drops_new_records_and_counts_them() {
        let mut b = Batcher::new(limits());
        for _ in 0..6 {
            assert_eq!(record(&mut b, 0, 50), Appended::Whole);
        }
        assert_eq!(record(&mut b, 0, 1), Appended::Dropped);
        assert_eq!(b.stats().dropped, 1);
        assert_eq!(b.held_bytes(), 300);
        let all: u64 = std::iter::from_fn(|| b.next_due(1000))
            .map(|x| x.records)
            .sum();
        assert_eq!(all, 6, "the dropped record left no bytes behind");
    }

    #[test]
    fn a_callout_that_never_answers_is_retried() {
        let mut b = Batcher::new(limits());
        record(&mut b, 0, 10);
        send(&mut b, 1, 50);
        b.expire(1000, 5000);
        assert_eq!(b.next_due(10_000), None, "still within the timeout");
        b.expire(6051, 5000);
        let again = b.next_due(10_000).unwrap();
        assert_eq!(again.failures, 1);
        b.answered(1, true, 10_000); // a late answer for the expired token changes nothing
        assert_eq!(b.stats().delivered, 0);
    }

    #[test]
    fn a_refused_dispatch_is_retried() {
        let mut b = Batcher::new(limits());
        record(&mut b, 0, 10);
        let batch = b.next_due(50).unwrap();
        b.not_sent(batch, 50);
        assert_eq!(b.stats().failed_callouts, 1);
        assert!(b.next_due(60).is_some());
    }

    #[test]
    fn batchers_sharing_a_budget_hold_no_more_together_than_queue_max_bytes() {
        let budget = Budget::default();
        let mut old = Batcher::new(limits()).sharing(budget.clone());
        let mut new = Batcher::new(limits()).sharing(budget.clone());
        for _ in 0..4 {
            assert_eq!(record(&mut old, 0, 50), Appended::Whole);
        }
        assert_eq!(record(&mut new, 0, 60), Appended::Whole);
        assert_eq!(budget.used(), 260);
        assert_eq!(
            record(&mut new, 0, 50),
            Appended::WithoutBodies,
            "the old root's records count against the new one's room"
        );
        assert_eq!(record(&mut new, 0, 35), Appended::Whole);
        assert_eq!(budget.used(), 300);
        assert_eq!(record(&mut new, 0, 1), Appended::Dropped);
        drop(old);
        assert_eq!(budget.used(), 100, "a dropped batcher frees its share");
    }

    #[test]
    fn hand_over_gives_every_held_record_in_flight_or_not_and_holds_nothing_after() {
        let budget = Budget::default();
        let mut old = Batcher::new(limits()).sharing(budget.clone());
        for _ in 0..7 {
            record(&mut old, 0, 20);
        }
        send(&mut old, 1, 0); // five records in flight
        let handed = old.hand_over();
        assert_eq!(handed.iter().map(|b| b.records).sum::<u64>(), 7);
        assert_eq!((old.held_bytes(), old.held_records()), (0, 0));
        assert!(old.is_idle());
        assert_eq!(budget.used(), 0);
        old.answered(1, true, 5);
        assert_eq!(
            old.stats().delivered,
            0,
            "an answer after the hand-over counts nothing"
        );
        assert_eq!(old.stats().handed_on, 7);

        let mut new = Batcher::new(limits()).sharing(budget.clone());
        for batch in handed {
            assert!(new.take_over(batch));
        }
        assert_eq!((new.held_records(), budget.used()), (7, 140));
        assert_eq!(new.stats().taken_over, 7);
        let sent: u64 = std::iter::from_fn(|| {
            let batch = new.next_due(0)?;
            let records = batch.records;
            new.sent(9, batch, 0);
            new.answered(9, true, 0);
            Some(records)
        })
        .sum();
        assert_eq!(
            sent, 7,
            "taken-over batches leave at once, without waiting a flush"
        );
        assert_eq!(new.stats().delivered, 7);
    }

    #[test]
    fn a_taken_over_batch_without_room_is_counted_as_dropped() {
        let budget = Budget::default();
        let mut new = Batcher::new(limits()).sharing(budget.clone());
        for _ in 0..5 {
            record(&mut new, 0, 50);
        }
        let batch = Batch::handed(vec![b'x'; 60], 3, Format::Ndjson, 0);
        assert!(!new.take_over(batch));
        let s = new.stats();
        assert_eq!((s.dropped, s.taken_over), (3, 0));
        assert_eq!(budget.used(), 250);
    }

    #[test]
    fn a_released_batch_taken_back_is_neither_handed_on_nor_taken_over() {
        let budget = Budget::default();
        let mut b = Batcher::new(limits()).sharing(budget.clone());
        for _ in 0..3 {
            record(&mut b, 0, 10);
        }
        let released = b.release();
        assert_eq!((b.held_records(), budget.used()), (0, 0));
        for batch in released {
            assert!(b.take_back(batch));
        }
        let s = b.stats();
        assert_eq!((s.handed_on, s.taken_over, b.held_records()), (0, 0, 3));
        assert_eq!(budget.used(), 30);
        b.note_hand_off(1, 2);
        let s = b.stats();
        assert_eq!((s.handed_on, s.taken_over), (1, 2));
    }

    #[test]
    fn abandon_counts_everything_held_as_dropped() {
        let budget = Budget::default();
        let mut b = Batcher::new(limits()).sharing(budget.clone());
        for _ in 0..3 {
            record(&mut b, 0, 10);
        }
        send(&mut b, 1, 50);
        record(&mut b, 50, 10);
        assert_eq!(b.abandon(), 4);
        assert_eq!(b.stats().dropped, 4);
        assert_eq!((b.held_records(), budget.used()), (0, 0));
        assert!(b.is_idle());
    }

    proptest! {
        /// Whatever the sizes and answers, every record appended (whole or without bodies) is
        /// delivered or still held, every record refused is counted as dropped, and nothing is
        /// delivered twice.
        #[test]
        fn records_are_conserved(ops in prop::collection::vec((1usize..120, any::<bool>(), 0u64..80), 1..200)) {
            let mut b = Batcher::new(limits());
            let mut now = 0;
            let mut token = 0;
            let (mut appended, mut shed, mut refused) = (0u64, 0u64, 0u64);
            for (len, ok, dt) in ops {
                now += dt;
                match record(&mut b, now, len) {
                    Appended::Whole => appended += 1,
                    Appended::WithoutBodies => { appended += 1; shed += 1 }
                    Appended::Dropped => refused += 1,
                    Appended::Nothing => prop_assert!(false, "the writer always writes"),
                }
                while let Some(batch) = b.next_due(now) {
                    token += 1;
                    b.sent(token, batch, now);
                }
                if let Some((t, _)) = b.inflight.first() {
                    let t = *t;
                    b.answered(t, ok, now);
                }
                let s = b.stats();
                prop_assert_eq!(s.captured, appended);
                prop_assert_eq!(s.dropped, refused);
                prop_assert_eq!(s.shed, shed);
                prop_assert_eq!(s.delivered + b.held_records(), appended);
                prop_assert!(b.held_bytes() <= limits().queue_max_bytes);
            }
        }

        /// A root replaced midway hands everything over: across the two batchers, every record
        /// captured is delivered, still held, or counted as dropped, and the shared budget holds.
        #[test]
        fn records_are_conserved_across_a_hand_over(
            before in prop::collection::vec((1usize..120, any::<bool>()), 0..60),
            after in prop::collection::vec((1usize..120, any::<bool>()), 0..60),
        ) {
            let budget = Budget::default();
            let mut old = Batcher::new(limits()).sharing(budget.clone());
            let mut new = Batcher::new(limits()).sharing(budget.clone());
            let mut token = 0;
            let mut refused = 0u64;
            let mut step = |b: &mut Batcher, len: usize, ok: bool, now: u64| {
                if record(b, now, len) == Appended::Dropped {
                    refused += 1;
                }
                while let Some(batch) = b.next_due(now) {
                    token += 1;
                    b.sent(token, batch, now);
                    if ok { b.answered(token, true, now); }
                }
            };
            let mut now = 0;
            for (len, ok) in before {
                now += 30;
                step(&mut old, len, ok, now);
                step(&mut new, len, ok, now);
            }
            for batch in old.hand_over() {
                new.take_over(batch);
                prop_assert!(budget.used() <= limits().queue_max_bytes);
            }
            for (len, ok) in after {
                now += 30;
                step(&mut new, len, ok, now);
            }
            let (o, n) = (old.stats(), new.stats());
            let lost_in_take_over = o.handed_on - n.taken_over;
            prop_assert_eq!(o.dropped + n.dropped, refused + lost_in_take_over);
            prop_assert_eq!(
                o.captured + n.captured,
                o.delivered + n.delivered + new.held_records() + lost_in_take_over
            );
            prop_assert_eq!(old.held_records(), 0);
            prop_assert!(budget.used() <= limits().queue_max_bytes);
            prop_assert_eq!(budget.used(), new.held_bytes());
        }
    }
}
