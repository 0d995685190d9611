//! Envoy's side: the proxy-wasm SDK's root and HTTP contexts, translated into calls on the plain
//! modules.
//!
//! - [`Capture`], the `HttpContext` of each stream, notes when the request headers arrived
//!   (`on_http_request_headers`), copies the capped part of each body chunk as Envoy forwards it
//!   (`on_http_request_body`, `on_http_response_body`), and in `on_log` — which Envoy runs for
//!   every stream, resets and local replies included, sometimes as its first callback — reads
//!   both header maps and `response.code_details` and hands the finished exchange to its worker.
//!   Every callback returns `Continue`: nothing is held in Envoy on the capture's behalf.
//! - [`Root`], the `RootContext` of each plugin configuration in each VM (one VM per Envoy
//!   worker), parses the configuration, owns the worker's [`Batcher`], writes finished exchanges
//!   as records a group at a time, and makes every callout itself, from `on_tick`,
//!   `on_http_call_response` and `on_queue_ready`, so every answer reaches it. A stream whose
//!   record fills a batch asks its root for a tick at once instead of waiting for the timer.
//! - When Envoy replaces a configuration (a new root in the same VM, or with an Istio
//!   `WasmPlugin` edit a new VM) or shuts the root down, `on_done` hands what the root holds to
//!   the successor of the same plugin — directly when it is in the same VM, through a shared
//!   queue when it is in another — or, with no successor, keeps delivering for
//!   `drain_timeout_ms` and counts what is left as dropped. A [`Registry`] in shared data tells a
//!   root whether a successor runs elsewhere, and lets the gauges of a VM that crashed be
//!   subtracted by whoever notices.

mod calls;

use crate::batcher::{acknowledged, Appended, Batcher, Budget, Stats};
use crate::body::BodyTap;
use crate::config::Config;
use crate::group::Group;
use crate::handoff;
use crate::record::{Ending, Exchange};
use crate::registry::{self, Entry, Registry};
use calls::{now_ms, now_ns};
use log::{debug, error, info, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};
use std::cell::RefCell;
use std::hash::{BuildHasher, Hasher};
use std::rc::{Rc, Weak};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|context_id| Box::new(Root::new(context_id)));
}}

// ---- the VM: what every root context of one worker shares ---------------------------------------

/// The byte budget of all queues of this VM, and its live root contexts (to find a successor in
/// the same VM).
#[derive(Default)]
struct Vm {
    budget: Budget,
    roots: Vec<Local>,
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
fn with_vm<R>(f: impl FnOnce(&mut Vm) -> R) -> Option<R> {
    VM.with(|vm| vm.try_borrow_mut().ok().map(|mut vm| f(&mut vm)))
}

/// Formats only what Envoy's `wasm` log component would print.
fn sync_log_level() {
    if let Some(level) = calls::log_level() {
        proxy_wasm::set_log_level(level);
    }
}

// ---- the worker: what a root context and its streams share --------------------------------------

struct Worker {
    config: Config,
    batcher: Batcher,
    /// Finished exchanges whose records are not written yet.
    finished: Group<Finished>,
    truncated_bytes: u64,
    fallback_ids: u64,
    /// A stream asked the root for an immediate tick (a batch is full and may be sent).
    hurried: bool,
}

/// An exchange that is over, with what only `on_log` could read.
struct Finished {
    exchange: Exchange,
    /// Envoy's `response.code_details`.
    details: Vec<u8>,
    now_ns: u64,
}

impl Worker {
    fn new(config: Config, budget: Budget) -> Worker {
        Worker {
            batcher: Batcher::new(config.delivery)
                .seeded(now_ns())
                .sharing(budget),
            finished: Group::new(config.delivery.batch_max_bytes),
            config,
            truncated_bytes: 0,
            fallback_ids: 0,
            hurried: false,
        }
    }

    /// Writes the records of every finished exchange into the batcher, oldest first.
    fn write_finished(&mut self) {
        let Worker {
            config,
            batcher,
            finished,
            truncated_bytes,
            fallback_ids,
            ..
        } = self;
        for Finished {
            exchange: ex,
            details,
            now_ns,
        } in finished.drain()
        {
            let fallback_id = if ex.request_id().is_none() {
                *fallback_ids += 1;
                format!("tt-{now_ns:x}-{:x}", *fallback_ids)
            } else {
                String::new()
            };
            let details = String::from_utf8_lossy(&details);
            let end = Ending {
                now_ns,
                details: &details,
                fallback_id: &fallback_id,
            };
            let kept = ex.kept_body_bytes();
            let appended = batcher.append(now_ns / 1_000_000, kept, |out, bodies| {
                ex.write_record(out, &end, config, bodies)
            });
            // Bytes past max_body_bytes, and the kept ones too when the record went without bodies.
            let shed = if appended == Appended::WithoutBodies {
                kept
            } else {
                0
            };
            *truncated_bytes +=
                ex.request_body.dropped() + ex.response_body.dropped() + shed as u64;
        }
    }

    /// Dispatches every batch that is due. Runs only in the root context's own callbacks, so the
    /// SDK routes each answer to it.
    fn deliver(&mut self, now: u64) {
        while let Some(batch) = self.batcher.next_due(now) {
            if cfg!(feature = "record-only") {
                self.batcher.sent(0, batch, now);
                self.batcher.answered(0, true, now);
                continue;
            }
            let c = &self.config;
            let mut headers = Vec::with_capacity(4 + c.audit_headers.len());
            headers.push((":method", "POST"));
            headers.push((":path", c.audit_path.as_str()));
            headers.push((":authority", c.audit_authority.as_str()));
            headers.push(("content-type", "application/x-ndjson"));
            headers.extend(
                c.audit_headers
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str())),
            );
            match calls::http_call(&c.audit_cluster, headers, &batch.body, c.audit_timeout_ms) {
                Ok(token) => self.batcher.sent(token, batch, now),
                Err(status) => {
                    warn!(
                        "truthtable: cannot call audit cluster {} ({status:?}); the batch will be retried",
                        c.audit_cluster
                    );
                    self.batcher.not_sent(batch, now);
                    break;
                }
            }
        }
    }
}

// ---- the root context ---------------------------------------------------------------------------

/// Who a root is among all of the proxy's roots; known from its first tick.
struct Me {
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

struct Root {
    context_id: u32,
    worker: Option<Rc<RefCell<Worker>>>,
    metrics: Option<Metrics>,
    reported: Reported,
    me: Option<Me>,
    /// Set by `on_done` when there is no successor: keep delivering until then.
    drain_until_ms: Option<u64>,
    /// The last registry entry written: when, and the gauges and state it held.
    registered: Option<(u64, u64, u64, bool)>,
    level_checked_ms: u64,
}

impl Root {
    fn new(context_id: u32) -> Root {
        Root {
            context_id,
            worker: None,
            metrics: None,
            reported: Reported::default(),
            me: None,
            drain_until_ms: None,
            registered: None,
            level_checked_ms: 0,
        }
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        sync_log_level();
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        sync_log_level();
        let bytes = calls::plugin_configuration().unwrap_or_default();
        let config = match Config::parse(&bytes) {
            Ok(config) => config,
            Err(e) => {
                error!("{e}");
                return false;
            }
        };
        let tick = config.delivery.flush_interval_ms;
        // The record-only benchmark build reports nothing: its "delivered" would be made up.
        if self.metrics.is_none() && !cfg!(feature = "record-only") {
            self.metrics = Metrics::define();
        }
        match &self.worker {
            // Envoy gives a changed configuration a new root context; a host that configures
            // the same root again gets the new settings for everything not yet written.
            Some(worker) => {
                let mut w = worker.borrow_mut();
                w.write_finished();
                w.batcher.reconfigure(config.delivery);
                w.finished = Group::new(config.delivery.batch_max_bytes);
                w.config = config;
            }
            None => {
                let budget = with_vm(|vm| vm.budget.clone()).unwrap_or_default();
                self.worker = Some(Rc::new(RefCell::new(Worker::new(config, budget))));
            }
        }
        if !calls::set_tick_period_ms(tick) {
            error!("truthtable: cannot set the tick period");
            return false;
        }
        self.identify();
        true
    }

    fn on_tick(&mut self) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let now = now_ms();
        self.identify();
        self.receive_queue();
        {
            let mut w = worker.borrow_mut();
            if w.hurried {
                w.hurried = false;
                calls::set_tick_period_ms(w.config.delivery.flush_interval_ms);
            }
            w.write_finished();
            let timeout = w.config.audit_timeout_ms;
            w.batcher.expire(now, timeout);
        }
        self.take_handed_on(now);
        worker.borrow_mut().deliver(now);
        if self.drain_until_ms.is_some() && self.drain_step(now) {
            return;
        }
        self.report();
        self.heartbeat(now);
        if now.saturating_sub(self.level_checked_ms) >= 1000 {
            self.level_checked_ms = now;
            sync_log_level();
        }
    }

    fn on_queue_ready(&mut self, _queue_id: u32) {
        let now = now_ms();
        self.take_handed_on(now);
        if let Some(worker) = &self.worker {
            worker.borrow_mut().deliver(now);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // The SDK panics on None: a root without a configuration gets streams that capture
        // nothing (Envoy sends none to it; the configuration failed or never came).
        match &self.worker {
            Some(worker) if !cfg!(feature = "passthrough") => Some(Box::new(Capture {
                worker: Rc::clone(worker),
                root_id: self.context_id,
                context_id,
                exchange: Exchange::new(worker.borrow().config.max_body_bytes),
            })),
            _ => Some(Box::new(Passthrough)),
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _num_headers: usize,
        _body_size: usize,
        _num_trailers: usize,
    ) {
        let now = now_ms();
        let status = calls::call_response_header(":status");
        let stored = acknowledged(status.as_deref());
        let Some(worker) = self.worker.clone() else {
            return;
        };
        {
            let mut w = worker.borrow_mut();
            if !stored {
                warn!(
                    "truthtable: audit cluster {} did not store a batch (status {}); it will be retried",
                    w.config.audit_cluster,
                    status.as_deref().map(String::from_utf8_lossy).unwrap_or_default()
                );
            }
            w.batcher.answered(token, stored, now);
            // An answer frees a callout slot: send what is due without waiting for the tick.
            w.deliver(now);
        }
        if self.drain_until_ms.is_some() {
            self.drain_step(now);
        }
    }

    /// Envoy is replacing this configuration or stopping: hand on, drain, or go.
    fn on_done(&mut self) -> bool {
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
        info!(
            "truthtable: {} records not yet delivered when the configuration was replaced, and \
             no successor runs: delivering them for up to drain_timeout_ms ({timeout} ms)",
            worker.borrow().batcher.held_records()
        );
        self.drain_until_ms = Some(now.saturating_add(timeout));
        self.report();
        self.heartbeat(now);
        false
    }
}

impl Root {
    /// Learns who this root is — its plugin, a proxy-wide nonce — and joins the VM's list of
    /// roots. Runs when the root is configured (or, for a host that skipped that, later).
    fn identify(&mut self) {
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

    /// At the first tick: becomes the receiver of the plugin's hand-off queue (creating it).
    fn receive_queue(&mut self) {
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
    fn hand_on(&mut self, now: u64) -> bool {
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
    fn take_handed_on(&mut self, now: u64) {
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
    fn drain_step(&mut self, now: u64) -> bool {
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
    fn give_up(&mut self, why: &str) {
        let Some(worker) = &self.worker else {
            return;
        };
        let lost = worker.borrow_mut().batcher.abandon();
        if lost > 0 {
            warn!("truthtable: {lost} records dropped: {why}, and no successor runs to take them");
        }
    }

    /// This root is going: its last numbers reach the metrics, and it leaves the registry.
    fn leave(&mut self) {
        self.report();
        let context_id = self.context_id;
        with_vm(|vm| vm.roots.retain(|l| l.context_id != context_id));
        if let Some(me) = &self.me {
            let nonce = me.nonce;
            update_registry(|r| {
                r.remove(nonce);
            });
        }
    }

    /// Publishes what changed since the last report to Envoy's metrics.
    fn report(&mut self) {
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
    }

    /// Keeps this root's registry entry current (at least every second, and whenever what it
    /// added to the gauges changed), and settles the entries of roots that stopped without
    /// leaving.
    fn heartbeat(&mut self, now: u64) {
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

#[derive(Default)]
struct Reported {
    stats: Stats,
    truncated_bytes: u64,
    held_bytes: u64,
    held_records: u64,
}

/// Envoy metric ids, defined once per root context.
struct Metrics {
    captured: u32,
    delivered: u32,
    retried: u32,
    dropped: u32,
    shed: u32,
    failed_callouts: u32,
    handed_on: u32,
    taken_over: u32,
    truncated_bytes: u32,
    queue_bytes: u32,
    queue_records: u32,
}

impl Metrics {
    fn define() -> Option<Metrics> {
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
        })
    }

    fn add(&self, id: u32, now: u64, was: u64) {
        if now != was {
            let delta = (now as i128 - was as i128).clamp(i64::MIN as i128, i64::MAX as i128);
            calls::increment_metric(id, delta as i64);
        }
    }
}

// ---- the HTTP context ---------------------------------------------------------------------------

/// One HTTP exchange: body chunks copied as they pass, finished in `on_log`.
struct Capture {
    worker: Rc<RefCell<Worker>>,
    /// The root context whose worker this stream feeds.
    root_id: u32,
    context_id: u32,
    exchange: Exchange,
}

impl Context for Capture {}

impl HttpContext for Capture {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.exchange.started_ns = Some(now_ns());
        #[cfg(feature = "test-panic")]
        test_panic();
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        tap(
            &mut self.exchange.request_body,
            BufferType::HttpRequestBody,
            body_size,
        );
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.exchange.response_headers_ns = Some(now_ns());
        self.exchange.response_ended |= end_of_stream;
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        tap(
            &mut self.exchange.response_body,
            BufferType::HttpResponseBody,
            body_size,
        );
        self.exchange.response_ended |= end_of_stream;
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        self.exchange.response_ended = true;
        Action::Continue
    }

    fn on_log(&mut self) {
        let exchange = std::mem::take(&mut self.exchange);
        self.finish(exchange);
    }
}

impl Capture {
    /// Reads what only `on_log` can, hands the exchange to the worker's group of finished ones,
    /// writes the group's records when it is due, and asks the root for an immediate tick when a
    /// batch is full and may leave.
    fn finish(&self, mut ex: Exchange) {
        let now_ns = now_ns();
        // Headers are read once, here: the request as the router sent it upstream (rewrites
        // included), the response as the client got it, and both even when on_log is the
        // stream's first callback.
        ex.request_headers = calls::header_block(MapType::HttpRequestHeaders);
        ex.response_headers =
            calls::header_block(MapType::HttpResponseHeaders).filter(|b| !b.is_empty());
        if ex.response_headers.is_some() && ex.response_headers_ns.is_none() {
            ex.response_headers_ns = Some(now_ns);
        }
        let details = calls::property(vec!["response", "code_details"]).unwrap_or_default();
        if cfg!(feature = "copy-only") {
            return;
        }
        let mut w = self.worker.borrow_mut();
        let kept = ex.kept_body_bytes();
        let finished = Finished {
            exchange: ex,
            details,
            now_ns,
        };
        if !w.finished.push(finished, kept) {
            return;
        }
        w.write_finished();
        // A stream's own callout would lose its answer with the stream, so the root sends the
        // full batch: its timer, made due at once (and set back at that tick).
        if !w.hurried
            && w.batcher.can_send_sealed(now_ns / 1_000_000)
            && calls::set_effective_context(self.root_id)
        {
            w.hurried = calls::set_tick_period_ms(1);
            calls::set_effective_context(self.context_id);
        }
    }
}

/// The test-only build's way to crash the VM as a bug would: a request that carries
/// `x-truthtable-test-panic` panics here (tests of `failure_policy: FAIL_RELOAD`).
#[cfg(feature = "test-panic")]
#[allow(clippy::panic)]
fn test_panic() {
    let headers = calls::header_block(MapType::HttpRequestHeaders);
    if headers.is_some_and(|h| h.get("x-truthtable-test-panic").is_some()) {
        panic!("x-truthtable-test-panic");
    }
}

/// Copies the part of a body chunk that fits under the cap; counts the rest.
fn tap(body: &mut BodyTap, buffer: BufferType, size: usize) {
    let room = body.room(size);
    match (room > 0).then(|| calls::body(buffer, room)).flatten() {
        Some(bytes) => body.push(size, bytes),
        None => body.count(size),
    }
}

/// The stream context of the benchmark's floor build and of a root without a configuration:
/// every callback is the SDK's default (`Continue`), nothing is read.
struct Passthrough;

impl Context for Passthrough {}
impl HttpContext for Passthrough {}
