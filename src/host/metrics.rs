//! The filter's Envoy metrics: counters and gauges moved by deltas, so that every VM's roots add
//! up to the proxy's totals.

use super::lifecycle::with_vm;
use super::{calls, Root};
use crate::batcher::Stats;
use proxy_wasm::types::MetricType;

#[derive(Default)]
pub(super) struct Reported {
    pub(super) stats: Stats,
    pub(super) truncated_bytes: u64,
    pub(super) held_bytes: u64,
    pub(super) held_records: u64,
}

/// Envoy metric ids, defined once per root context.
pub(super) struct Metrics {
    pub(super) captured: u32,
    pub(super) delivered: u32,
    pub(super) retried: u32,
    pub(super) dropped: u32,
    pub(super) shed: u32,
    pub(super) failed_callouts: u32,
    pub(super) handed_on: u32,
    pub(super) taken_over: u32,
    pub(super) truncated_bytes: u32,
    pub(super) queue_bytes: u32,
    pub(super) queue_records: u32,
    pub(super) holds: u32,
    pub(super) holds_stored: u32,
    pub(super) holds_released_unrecorded: u32,
    pub(super) holds_reset: u32,
}

impl Metrics {
    pub(super) fn define() -> Option<Metrics> {
        let counter = |name| calls::define_metric(MetricType::Counter, name);
        let gauge = |name| calls::define_metric(MetricType::Gauge, name);
        Some(Metrics {
            captured: counter("truthtable_records_captured")?,
            delivered: counter("truthtable_records_delivered")?,
            retried: counter("truthtable_records_retried")?,
            dropped: counter("truthtable_records_dropped")?,
            shed: counter("truthtable_records_without_bodies")?,
            failed_callouts: counter("truthtable_delivery_failures")?,
            handed_on: counter("truthtable_records_handed_on")?,
            taken_over: counter("truthtable_records_taken_over")?,
            truncated_bytes: counter("truthtable_body_bytes_truncated")?,
            queue_bytes: gauge("truthtable_queue_bytes")?,
            queue_records: gauge("truthtable_queue_records")?,
            holds: counter("truthtable_hold_ends_held")?,
            holds_stored: counter("truthtable_hold_ends_stored")?,
            holds_released_unrecorded: counter("truthtable_hold_ends_released_unrecorded")?,
            holds_reset: counter("truthtable_hold_streams_reset")?,
        })
    }

    pub(super) fn add(&self, id: u32, now: u64, was: u64) {
        if now != was {
            let delta = (now as i128 - was as i128).clamp(i64::MIN as i128, i64::MAX as i128);
            calls::increment_metric(id, delta as i64);
        }
    }
}

impl Root {
    /// Publishes what changed since the last report to Envoy's metrics.
    pub(super) fn report(&mut self) {
        let (Some(worker), Some(m)) = (&self.worker, &self.metrics) else {
            return;
        };
        let w = worker.borrow();
        let now = Reported {
            stats: w.batcher.stats(),
            truncated_bytes: w.truncated_bytes,
            held_bytes: w.batcher.held_bytes() as u64,
            held_records: w.batcher.held_records(),
        };
        let (s, was) = (&now.stats, &self.reported.stats);
        m.add(m.captured, s.captured, was.captured);
        m.add(m.delivered, s.delivered, was.delivered);
        m.add(m.retried, s.retried, was.retried);
        m.add(m.dropped, s.dropped, was.dropped);
        m.add(m.shed, s.shed, was.shed);
        m.add(m.failed_callouts, s.failed_callouts, was.failed_callouts);
        m.add(m.handed_on, s.handed_on, was.handed_on);
        m.add(m.taken_over, s.taken_over, was.taken_over);
        m.add(
            m.truncated_bytes,
            now.truncated_bytes,
            self.reported.truncated_bytes,
        );
        // Gauges move by deltas, so the VMs add up to the proxy's total.
        m.add(m.queue_bytes, now.held_bytes, self.reported.held_bytes);
        m.add(
            m.queue_records,
            now.held_records,
            self.reported.held_records,
        );
        self.reported = now;
        // Held ends are the VM's, not one root's: whichever root reports first publishes them.
        with_vm(|vm| {
            let (h, was) = (vm.holds.stats, vm.holds_reported);
            m.add(m.holds, h.held, was.held);
            m.add(m.holds_stored, h.stored, was.stored);
            m.add(
                m.holds_released_unrecorded,
                h.released_unrecorded,
                was.released_unrecorded,
            );
            m.add(m.holds_reset, h.reset, was.reset);
            vm.holds_reported = h;
        });
    }
}
