//! The root context's lifecycle: who it is among the proxy's roots, and what becomes of the records
//! it holds when Envoy replaces its configuration, removes it or stops.
//!
//! A root being told `on_done` hands what it holds to a successor of the same plugin — directly
//! when the successor is in the same VM, through the plugin's shared queue when it is in another
//! (an Istio `WasmPlugin` edit makes new VMs) — or, with none, keeps delivering for
//! `drain_timeout_ms` and counts the rest as dropped. A [`Registry`] in Envoy's shared data tells a
//! root whether a successor runs elsewhere, and lets the gauges of a VM that crashed be settled by
//! whoever notices its entry going stale.

use super::{calls, Root, Worker};
use crate::batcher::Budget;
use crate::handoff;
use crate::hold::{HoldStats, Holds};
use crate::registry::{self, Entry, Registry};
use calls::{now_ms, now_ns};
use log::{debug, info, warn};
use std::cell::RefCell;
use std::hash::{BuildHasher, Hasher};
use std::rc::{Rc, Weak};

/// The byte budget of all queues of this VM, and its live root contexts (to find a successor in
/// the same VM).
#[derive(Default)]
pub(super) struct Vm {
    pub(super) budget: Budget,
    roots: Vec<Local>,
    /// Held ends of every root's streams (`complete_after_stored`): a stream whose root was
    /// replaced is still resumed, released or reset by whichever root of the VM acts first.
    pub(super) holds: Holds,
    /// The hold counts as last published to the metrics (once per VM, not per root).
    pub(super) holds_reported: HoldStats,
}

struct Local {
    context_id: u32,
    plugin: Rc<str>,
    draining: bool,
    worker: Weak<RefCell<Worker>>,
}

thread_local! {
    static VM: RefCell<Vm> = RefCell::default();
}

/// Runs `f` on the VM's shared state. Callbacks never nest, so the borrow is never contended.
pub(super) fn with_vm<R>(f: impl FnOnce(&mut Vm) -> R) -> Option<R> {
    VM.with(|vm| vm.try_borrow_mut().ok().map(|mut vm| f(&mut vm)))
}

/// Who a root is among all of the proxy's roots; known once it is configured.
pub(super) struct Me {
    /// Unique in the proxy (context ids repeat across VMs).
    nonce: u64,
    /// Envoy's plugin name and root id: a successor is a root of the same plugin.
    plugin: Rc<str>,
    /// The plugin's hand-off queue.
    queue: Option<u32>,
    /// Without a heartbeat for this long, the root counts as gone.
    stale_ms: u64,
    /// Registered as the queue's receiver (at the first tick).
    receiving: bool,
}

/// The plugin's hand-off queue.
fn queue_name(plugin: &str) -> String {
    format!("truthtable.handoff/{plugin}")
}

fn property_text(path: Vec<&str>) -> String {
    calls::property(path)
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .unwrap_or_default()
}

impl Root {
    /// `on_done`: Envoy is replacing this configuration or stopping. Hands on what the root
    /// holds, or drains it, or gives it up; true when the root may go now.
    pub(super) fn shut_down(&mut self) -> bool {
        let Some(worker) = self.worker.clone() else {
            return true;
        };
        let now = now_ms();
        self.identify();
        worker.borrow_mut().write_finished();
        let timeout = worker.borrow().config.drain_timeout_ms;
        if self.hand_on(now) || worker.borrow().batcher.is_idle() {
            self.leave();
            return true;
        }
        // With no other plugin's root left in this VM, nothing keeps it alive: Envoy is stopping,
        // or removed the VM's last configuration, and tears the VM down right after this call.
        let context_id = self.context_id;
        let vm_lives_on =
            with_vm(|vm| vm.roots.iter().any(|l| l.context_id != context_id)).unwrap_or(false);
        if timeout == 0 || !vm_lives_on {
            self.give_up(if vm_lives_on {
                "drain_timeout_ms is 0"
            } else {
                "Envoy is stopping, or removed the last configuration of this VM"
            });
            self.leave();
            return true;
        }
        warn!(
            "truthtable: {} records not yet delivered when the configuration was replaced, and \
             no successor runs: delivering them for up to drain_timeout_ms ({timeout} ms)",
            worker.borrow().batcher.held_records()
        );
        self.drain_until_ms = Some(now.saturating_add(timeout));
        self.report();
        self.heartbeat(now);
        false
    }

    /// Learns who this root is — its plugin, a proxy-wide nonce — and joins the VM's list of
    /// roots. Runs when the root is configured (or, for a host that skipped that, later).
    pub(super) fn identify(&mut self) {
        if self.me.is_some() {
            return;
        }
        let Some(worker) = &self.worker else {
            return;
        };
        let plugin: Rc<str> = format!(
            "{}/{}",
            property_text(vec!["plugin_name"]),
            property_text(vec!["plugin_root_id"])
        )
        .into();
        let mut nonce = std::collections::hash_map::RandomState::new().build_hasher();
        nonce.write_u64(now_ns());
        nonce.write_u32(self.context_id);
        // Resolved, not registered: a root becomes the queue's receiver at its first tick (the
        // configuration check Envoy runs in a throwaway root never ticks).
        let queue =
            calls::resolve_queue(&property_text(vec!["plugin_vm_id"]), &queue_name(&plugin));
        let flush = worker.borrow().config.delivery.flush_interval_ms;
        with_vm(|vm| {
            vm.roots.push(Local {
                context_id: self.context_id,
                plugin: Rc::clone(&plugin),
                draining: false,
                worker: Rc::downgrade(worker),
            })
        });
        self.me = Some(Me {
            nonce: nonce.finish(),
            plugin,
            queue,
            stale_ms: flush.saturating_mul(10).max(10_000),
            receiving: false,
        });
    }

    /// This root's proxy-wide nonce, once it is configured.
    pub(super) fn nonce(&self) -> Option<u64> {
        self.me.as_ref().map(|me| me.nonce)
    }

    /// At the first tick: becomes the receiver of the plugin's hand-off queue (creating it).
    pub(super) fn receive_queue(&mut self) {
        if let Some(me) = self.me.as_mut().filter(|me| !me.receiving) {
            me.receiving = true;
            if let Some(id) = calls::register_queue(&queue_name(&me.plugin)) {
                me.queue = Some(id);
            }
        }
    }

    /// Hands every record held to a successor of the same plugin: one in this VM directly;
    /// otherwise through the plugin's shared queue, which any of its roots in another VM takes.
    /// False when no successor runs: this root is then the plugin's last, marked as draining,
    /// and holds what it had plus whatever other roots had just handed on.
    ///
    /// The order makes that safe when several roots stop at once (every worker's root on a
    /// listener removal): each puts its batches in the queue *before* it marks itself draining
    /// in the registry, so the last one to mark itself finds every batch already there.
    pub(super) fn hand_on(&mut self, now: u64) -> bool {
        let (Some(worker), Some(me)) = (self.worker.clone(), &self.me) else {
            return false;
        };
        let context_id = self.context_id;
        let (nonce, plugin, queue, stale_ms) =
            (me.nonce, Rc::clone(&me.plugin), me.queue, me.stale_ms);
        let here = with_vm(|vm| {
            for l in vm.roots.iter_mut().filter(|l| l.context_id == context_id) {
                l.draining = true;
            }
            vm.roots
                .iter()
                .find(|l| l.context_id != context_id && l.plugin == plugin && !l.draining)
                .and_then(|l| l.worker.upgrade())
        })
        .flatten();
        if let Some(successor) = here {
            let batches = worker.borrow_mut().batcher.hand_over();
            let mut s = successor.borrow_mut();
            let (mut moved, mut lost) = (0, 0);
            for batch in batches {
                let records = batch.records;
                if s.batcher.take_over(batch) {
                    moved += records;
                } else {
                    lost += records;
                }
            }
            if moved > 0 {
                info!("truthtable: handed {moved} records to the configuration that replaced this one");
            }
            if lost > 0 {
                warn!(
                    "truthtable: {lost} records dropped when handed on: no room under queue_max_bytes"
                );
            }
            return true;
        }
        let Some(queue) = queue else {
            return false;
        };
        let mut queued = 0;
        {
            let mut w = worker.borrow_mut();
            for batch in w.batcher.release() {
                if calls::enqueue(queue, &handoff::encode(&batch)) {
                    queued += batch.records;
                } else {
                    w.batcher.take_back(batch);
                }
            }
        }
        let entry = Entry {
            root: nonce,
            plugin: plugin.to_string(),
            seen_ms: now,
            stale_ms,
            draining: true,
            bytes: 0,
            records: 0,
        };
        let successor = update_registry(|r| {
            r.update(entry.clone());
            r.has_successor(nonce, &plugin, now)
        })
        .unwrap_or(false);
        if successor && worker.borrow().batcher.is_idle() {
            worker.borrow_mut().batcher.note_hand_off(queued, 0);
            if queued > 0 {
                info!("truthtable: handed {queued} records to the plugin's roots in another VM");
            }
            return true;
        }
        // The plugin's last root: take back what it queued (and what others just queued). Its own
        // records never left; only the difference counts as handed on or taken over.
        let taken = self.drain_queue(queue, false);
        worker
            .borrow_mut()
            .batcher
            .note_hand_off(queued.saturating_sub(taken), taken.saturating_sub(queued));
        false
    }

    /// Takes the batches other roots handed on through the plugin's queue. A root that is
    /// draining takes them only when it is the plugin's last.
    pub(super) fn take_handed_on(&mut self, now: u64) {
        let Some(me) = &self.me else {
            return;
        };
        let Some(queue) = me.queue else {
            return;
        };
        if self.drain_until_ms.is_some()
            && Registry::decode(calls::shared_data(registry::KEY).0.as_deref())
                .has_successor(me.nonce, &me.plugin, now)
        {
            return;
        }
        self.drain_queue(queue, true);
    }

    /// Holds every batch waiting in the hand-off queue (counted as taken over when `counted`);
    /// returns the records taken. Batches that do not fit under `queue_max_bytes` are dropped and
    /// counted.
    fn drain_queue(&mut self, queue: u32, counted: bool) -> u64 {
        let Some(worker) = &self.worker else {
            return 0;
        };
        let mut w = worker.borrow_mut();
        let (mut taken, mut lost) = (0, 0);
        while let Some(item) = calls::dequeue(queue) {
            let records = handoff::records_in(&item);
            match handoff::decode(item) {
                Ok(batch) => {
                    let held = if counted {
                        w.batcher.take_over(batch)
                    } else {
                        w.batcher.take_back(batch)
                    };
                    if held {
                        taken += records;
                    } else {
                        lost += records;
                    }
                }
                Err(e) => {
                    w.batcher.count_lost(records);
                    lost += records;
                    warn!("truthtable: a queue item could not be taken over: {e}");
                }
            }
        }
        if lost > 0 {
            warn!("truthtable: {lost} handed-on records dropped: no room under queue_max_bytes");
        }
        taken
    }

    /// One step of a root that is shutting down without a successor; true when it is finished
    /// (it has called `done()`).
    pub(super) fn drain_step(&mut self, now: u64) -> bool {
        let (Some(worker), Some(until), Some(me)) =
            (self.worker.clone(), self.drain_until_ms, &self.me)
        else {
            return false;
        };
        let successor = Registry::decode(calls::shared_data(registry::KEY).0.as_deref())
            .has_successor(me.nonce, &me.plugin, now);
        let finished = if (successor && self.hand_on(now)) || worker.borrow().batcher.is_idle() {
            true
        } else if now >= until {
            let timeout = worker.borrow().config.drain_timeout_ms;
            self.give_up(&format!(
                "not delivered within drain_timeout_ms ({timeout} ms) of the configuration \
                 being replaced"
            ));
            true
        } else {
            false
        };
        if finished {
            self.leave();
            self.drain_until_ms = None;
            calls::done();
        }
        finished
    }

    /// Counts everything still held as dropped, once, with one warning saying `why`.
    pub(super) fn give_up(&mut self, why: &str) {
        let Some(worker) = &self.worker else {
            return;
        };
        let lost = worker.borrow_mut().batcher.abandon();
        if lost > 0 {
            warn!("truthtable: {lost} records dropped: {why}, and no successor runs to take them");
        }
    }

    /// This root is going: its last numbers reach the metrics, and it leaves the registry.
    pub(super) fn leave(&mut self) {
        self.report();
        // Its streams to the audit cluster end with it: the batches they carried were handed on
        // or given up, so an acknowledgement still to come would answer nothing.
        if let Some(worker) = &self.worker {
            for stream in worker.borrow_mut().lanes.take_all() {
                calls::grpc_cancel(stream);
            }
        }
        let context_id = self.context_id;
        with_vm(|vm| vm.roots.retain(|l| l.context_id != context_id));
        if let Some(me) = &self.me {
            let nonce = me.nonce;
            update_registry(|r| {
                r.remove(nonce);
            });
        }
    }

    /// Keeps this root's registry entry current (at least every second, and whenever what it
    /// added to the gauges changed), and settles the entries of roots that stopped without
    /// leaving.
    pub(super) fn heartbeat(&mut self, now: u64) {
        let Some(me) = &self.me else {
            return;
        };
        let entry = Entry {
            root: me.nonce,
            plugin: me.plugin.to_string(),
            seen_ms: now,
            stale_ms: me.stale_ms,
            draining: self.drain_until_ms.is_some(),
            bytes: self.reported.held_bytes,
            records: self.reported.held_records,
        };
        let state = (entry.bytes, entry.records, entry.draining);
        if let Some((at, bytes, records, draining)) = self.registered {
            if now.saturating_sub(at) < 1000 && (bytes, records, draining) == state {
                return;
            }
        }
        let Some(reaped) = update_registry(|r| {
            r.update(entry.clone());
            r.reap(now)
        }) else {
            return;
        };
        self.registered = Some((now, state.0, state.1, state.2));
        for gone in reaped {
            if let Some(m) = &self.metrics {
                m.add(m.queue_bytes, 0, gone.bytes);
                m.add(m.queue_records, 0, gone.records);
            }
            if gone.records > 0 {
                if let Some(worker) = &self.worker {
                    worker.borrow_mut().batcher.count_lost(gone.records);
                }
                warn!(
                    "truthtable: {} records dropped: held by a root of {} that stopped without \
                     handing them on (its VM crashed or was torn down)",
                    gone.records, gone.plugin
                );
            }
        }
    }
}

/// Reads, changes and writes back the registry, starting again when another VM wrote it in
/// between; `None` when it kept losing the race.
fn update_registry<R>(mut change: impl FnMut(&mut Registry) -> R) -> Option<R> {
    for _ in 0..8 {
        let (value, cas) = calls::shared_data(registry::KEY);
        let mut registry = Registry::decode(value.as_deref());
        let out = change(&mut registry);
        if calls::set_shared_data(registry::KEY, &registry.encode(), cas) {
            return Some(out);
        }
    }
    debug!("truthtable: the root registry is busy; will try again at the next tick");
    None
}
