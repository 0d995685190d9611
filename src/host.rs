//! Envoy's side: the proxy-wasm callbacks this filter exports, translated into calls on the plain
//! modules.
//!
//! A stream is entered five times: when its context is created (the request headers have just
//! arrived), for each request body chunk, at the response headers, for each response body chunk,
//! and in `on_log`, which Envoy runs for every stream (resets and local replies included) and
//! where the last facts are read, the exchange is handed to the worker's [`Group`] of finished
//! ones (written as records a group at a time, and at every tick) and the stream's state is
//! dropped; a response with trailers adds one more. No other stream callback is exported, so Envoy
//! does not enter the VM for them (see `abi`). Every callback returns `Continue`, so Envoy
//! forwards each chunk as it comes. Every callout belongs to the root context, which owns the
//! worker's [`Batcher`]: it sends from `on_tick` and after each answer, and a stream whose records
//! filled a batch sends it from `on_log` with the root made the effective context (a stream's own
//! callout would be cancelled with the stream).

mod abi;
mod probe;

use crate::batcher::{acknowledged, Appended, Batcher, Stats};
use crate::body::BodyTap;
use crate::config::Config;
use crate::group::Group;
use crate::headers::HeaderBlock;
use crate::record::{Ending, Exchange};
use abi::{Buffer, Headers, Level, MetricKind};
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;

/// What `proxy_on_*` callbacks that return an action return: always `Continue`.
const CONTINUE: u32 = 0;

/// Everything one VM (one Envoy worker) holds: its root contexts (one per plugin configuration
/// that shares the VM) and its live streams.
#[derive(Default)]
struct Vm {
    roots: HashMap<u32, Root, IdHash>,
    streams: HashMap<u32, Stream, IdHash>,
}

thread_local! {
    static VM: RefCell<Vm> = RefCell::new(Vm::default());
}

/// Runs `f` on the VM's state. Callbacks never nest (the host calls back into the VM only to
/// allocate), so the borrow is never contended.
fn with_vm<R>(f: impl FnOnce(&mut Vm) -> R) -> Option<R> {
    VM.with(|vm| vm.try_borrow_mut().ok().map(|mut vm| f(&mut vm)))
}

/// Context ids are small sequential integers: one multiplication spreads them over the whole
/// hash (the table uses its top bits too), where SipHash would spend far more on each lookup.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(FIBONACCI);
        }
    }
    fn write_u32(&mut self, id: u32) {
        self.0 = u64::from(id).wrapping_mul(FIBONACCI);
    }
}

/// 2^64 / golden ratio: consecutive ids land far apart.
const FIBONACCI: u64 = 0x9E37_79B9_7F4A_7C15;

type IdHash = BuildHasherDefault<IdHasher>;

/// What the root context and every stream of one plugin configuration share.
struct Worker {
    config: Config,
    /// The callout's headers, in the host's serialization: the same for every batch.
    callout_headers: HeaderBlock,
    batcher: Batcher,
    /// Finished exchanges whose records are not written yet.
    finished: Group<Finished>,
    truncated_bytes: u64,
    fallback_ids: u64,
}

/// An exchange that is over, with what only `on_log` could read.
struct Finished {
    exchange: Exchange,
    /// Envoy's `response.code_details`.
    details: Vec<u8>,
    now_ns: u64,
}

impl Worker {
    fn new(config: Config) -> Worker {
        let c = &config;
        let mut headers: Vec<(&str, &str)> = Vec::with_capacity(4 + c.audit_headers.len());
        headers.push((":method", "POST"));
        headers.push((":path", &c.audit_path));
        headers.push((":authority", &c.audit_authority));
        headers.push(("content-type", "application/x-ndjson"));
        headers.extend(
            c.audit_headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str())),
        );
        Worker {
            callout_headers: HeaderBlock::from_pairs(&headers),
            batcher: Batcher::new(config.delivery).seeded(abi::now_ns()),
            finished: Group::new(config.delivery.batch_max_bytes),
            config,
            truncated_bytes: 0,
            fallback_ids: 0,
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

    /// Dispatches every batch that is due. Runs for the root context: from its own callbacks, or
    /// from a stream's `on_log` with the root made the effective context.
    fn deliver(&mut self, now: u64) {
        while let Some(batch) = self.batcher.next_due(now) {
            if cfg!(feature = "record-only") {
                self.batcher.sent(0, batch, now);
                self.batcher.answered(0, true, now);
                continue;
            }
            let c = &self.config;
            let timeout = u32::try_from(c.audit_timeout_ms).unwrap_or(u32::MAX);
            match abi::http_call(
                &c.audit_cluster,
                &self.callout_headers,
                &batch.body,
                timeout,
            ) {
                Ok(token) => self.batcher.sent(token, batch, now),
                Err(status) => {
                    abi::log(
                        Level::Warn,
                        &format!(
                            "truthtable: cannot call audit cluster {} (status {status}); the batch will be retried",
                            c.audit_cluster
                        ),
                    );
                    self.batcher.not_sent(batch, now);
                    break;
                }
            }
        }
    }
}

#[derive(Default)]
struct Root {
    worker: Option<Rc<RefCell<Worker>>>,
    metrics: Option<Metrics>,
    reported: Reported,
}

// ---- exports: the VM and the root context ------------------------------------------------------

#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_root_id: u32, _vm_configuration_size: usize) -> u32 {
    1
}

#[no_mangle]
pub extern "C" fn proxy_on_context_create(context_id: u32, root_id: u32) {
    with_vm(|vm| {
        if root_id == 0 {
            vm.roots.insert(context_id, Root::default());
            return;
        }
        if cfg!(feature = "probe") {
            probe::created();
            return;
        }
        if cfg!(feature = "passthrough") {
            return;
        }
        let Some(worker) = vm.roots.get(&root_id).and_then(|r| r.worker.clone()) else {
            return;
        };
        let max_body_bytes = worker.borrow().config.max_body_bytes;
        let mut exchange = Exchange::new(max_body_bytes);
        // Envoy creates a stream's filters when its request headers have arrived.
        exchange.started_ns = Some(abi::now_ns());
        vm.streams.insert(
            context_id,
            Stream {
                worker,
                root_id,
                exchange,
            },
        );
    });
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(root_id: u32, configuration_size: usize) -> u32 {
    let bytes = abi::buffer(Buffer::PluginConfiguration, configuration_size).unwrap_or_default();
    if cfg!(feature = "probe") {
        return u32::from(probe::configure(root_id, &bytes));
    }
    let configured = with_vm(|vm| vm.roots.entry(root_id).or_default().configure(&bytes));
    u32::from(configured.unwrap_or(false))
}

#[no_mangle]
pub extern "C" fn proxy_on_tick(root_id: u32) {
    with_vm(|vm| {
        if let Some(root) = vm.roots.get_mut(&root_id) {
            root.on_tick();
        }
    });
}

#[no_mangle]
pub extern "C" fn proxy_on_http_call_response(
    root_id: u32,
    token: u32,
    _headers: usize,
    _body_size: usize,
    _trailers: usize,
) {
    with_vm(|vm| {
        if let Some(root) = vm.roots.get_mut(&root_id) {
            root.on_http_call_response(token);
        }
    });
}

impl Root {
    fn configure(&mut self, bytes: &[u8]) -> bool {
        let config = match Config::parse(bytes) {
            Ok(config) => config,
            Err(e) => {
                abi::log(Level::Error, &e.to_string());
                return false;
            }
        };
        let tick = u32::try_from(config.delivery.flush_interval_ms).unwrap_or(u32::MAX);
        // The record-only benchmark build reports nothing: its "delivered" would be made up.
        if self.metrics.is_none() && !cfg!(feature = "record-only") {
            self.metrics = Metrics::define();
        }
        self.worker = Some(Rc::new(RefCell::new(Worker::new(config))));
        if let Err(status) = abi::set_tick_period_ms(tick) {
            abi::log(
                Level::Error,
                &format!("truthtable: cannot set the tick period (status {status})"),
            );
            return false;
        }
        true
    }

    fn on_tick(&mut self) {
        if let Some(worker) = &self.worker {
            let mut w = worker.borrow_mut();
            let timeout = w.config.audit_timeout_ms;
            w.write_finished();
            w.batcher.expire(abi::now_ms(), timeout);
        }
        self.deliver();
        self.report();
    }

    fn on_http_call_response(&mut self, token: u32) {
        let status = abi::header_value(Headers::CallResponse, ":status");
        let stored = acknowledged(status.as_deref());
        if let Some(worker) = &self.worker {
            let mut w = worker.borrow_mut();
            if !stored {
                abi::log(
                    Level::Warn,
                    &format!(
                        "truthtable: audit cluster {} did not store a batch (status {}); it will be retried",
                        w.config.audit_cluster,
                        status.as_deref().map(String::from_utf8_lossy).unwrap_or_default()
                    ),
                );
            }
            w.batcher.answered(token, stored, abi::now_ms());
        }
        // An answer frees a callout slot: send what is due without waiting for the next tick.
        self.deliver();
    }

    /// Dispatches every batch that is due.
    fn deliver(&mut self) {
        if let Some(worker) = &self.worker {
            worker.borrow_mut().deliver(abi::now_ms());
        }
    }

    /// Publishes what changed since the last tick to Envoy's metrics.
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
        let was = &self.reported;
        m.add(m.captured, now.stats.captured, was.stats.captured);
        m.add(m.delivered, now.stats.delivered, was.stats.delivered);
        m.add(m.retried, now.stats.retried, was.stats.retried);
        m.add(m.dropped, now.stats.dropped, was.stats.dropped);
        m.add(m.shed, now.stats.shed, was.stats.shed);
        m.add(
            m.failed_callouts,
            now.stats.failed_callouts,
            was.stats.failed_callouts,
        );
        m.add(m.truncated_bytes, now.truncated_bytes, was.truncated_bytes);
        // Gauges move by deltas, so the workers' VMs add up to the proxy's total.
        m.add(m.queue_bytes, now.held_bytes, was.held_bytes);
        m.add(m.queue_records, now.held_records, was.held_records);
        self.reported = now;
    }
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
    truncated_bytes: u32,
    queue_bytes: u32,
    queue_records: u32,
}

impl Metrics {
    fn define() -> Option<Metrics> {
        let counter = |name| abi::define_metric(MetricKind::Counter, name);
        let gauge = |name| abi::define_metric(MetricKind::Gauge, name);
        Some(Metrics {
            captured: counter("truthtable_records_captured")?,
            delivered: counter("truthtable_records_delivered")?,
            retried: counter("truthtable_records_retried")?,
            dropped: counter("truthtable_records_dropped")?,
            shed: counter("truthtable_records_without_bodies")?,
            failed_callouts: counter("truthtable_delivery_failures")?,
            truncated_bytes: counter("truthtable_body_bytes_truncated")?,
            queue_bytes: gauge("truthtable_queue_bytes")?,
            queue_records: gauge("truthtable_queue_records")?,
        })
    }

    fn add(&self, id: u32, now: u64, was: u64) {
        if now != was {
            let delta = (now as i128 - was as i128).clamp(i64::MIN as i128, i64::MAX as i128);
            abi::increment_metric(id, delta as i64);
        }
    }
}

// ---- exports: streams --------------------------------------------------------------------------

/// One HTTP exchange: body chunks copied as they pass, finished in `on_log` (its record is written
/// once, with its worker's group).
struct Stream {
    worker: Rc<RefCell<Worker>>,
    /// The root context whose worker this stream feeds (it sends the batches).
    root_id: u32,
    exchange: Exchange,
}

/// Runs `f` on the stream `context_id`, if it is one this filter captures.
fn with_stream(context_id: u32, f: impl FnOnce(&mut Stream)) {
    with_vm(|vm| vm.streams.get_mut(&context_id).map(f));
}

#[no_mangle]
pub extern "C" fn proxy_on_request_body(context_id: u32, size: usize, _end: u32) -> u32 {
    if cfg!(feature = "probe") {
        probe::request_body(size);
    }
    with_stream(context_id, |s| {
        tap(&mut s.exchange.request_body, Buffer::HttpRequestBody, size)
    });
    CONTINUE
}

#[no_mangle]
pub extern "C" fn proxy_on_response_headers(context_id: u32, _headers: usize, end: u32) -> u32 {
    if cfg!(feature = "probe") {
        probe::response_headers();
    }
    with_stream(context_id, |s| {
        s.exchange.response_headers_ns = Some(abi::now_ns());
        s.exchange.response_ended |= end != 0;
    });
    CONTINUE
}

#[no_mangle]
pub extern "C" fn proxy_on_response_body(context_id: u32, size: usize, end: u32) -> u32 {
    if cfg!(feature = "probe") {
        probe::response_body(size);
    }
    with_stream(context_id, |s| {
        tap(
            &mut s.exchange.response_body,
            Buffer::HttpResponseBody,
            size,
        );
        s.exchange.response_ended |= end != 0;
    });
    CONTINUE
}

#[no_mangle]
pub extern "C" fn proxy_on_response_trailers(context_id: u32, _trailers: usize) -> u32 {
    with_stream(context_id, |s| s.exchange.response_ended = true);
    CONTINUE
}

#[no_mangle]
pub extern "C" fn proxy_on_log(context_id: u32) {
    if cfg!(feature = "probe") {
        probe::log(context_id);
    }
    if let Some(Some(stream)) = with_vm(|vm| vm.streams.remove(&context_id)) {
        stream.finish(context_id);
    }
}

impl Stream {
    /// Reads what only `on_log` can, hands the exchange to the worker's group of finished ones,
    /// and writes the group's records (sending the batch they filled, if any) when it is due.
    fn finish(self, context_id: u32) {
        let Stream {
            worker,
            root_id,
            exchange: mut ex,
        } = self;
        let now_ns = abi::now_ns();
        // Headers are read once, here: the request as the router sent it upstream (rewrites
        // included), the response as the client got it, and both even when on_log is the
        // stream's first callback.
        ex.request_headers = abi::header_block(Headers::Request);
        ex.response_headers = abi::header_block(Headers::Response).filter(|b| !b.is_empty());
        if ex.response_headers.is_some() && ex.response_headers_ns.is_none() {
            ex.response_headers_ns = Some(now_ns);
        }
        let details = abi::property(b"response\0code_details").unwrap_or_default();
        if cfg!(feature = "copy-only") {
            return;
        }
        let mut w = worker.borrow_mut();
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
        // A full batch leaves now rather than at the next tick, so the worker holds fewer bytes
        // (and fewer are lost if Envoy stops). Callouts belong to the root context (a stream's
        // would be cancelled with the stream), so the root acts for this one call.
        let now_ms = now_ns / 1_000_000;
        if w.batcher.can_send_sealed(now_ms) && abi::set_effective_context(root_id) {
            w.deliver(now_ms);
            abi::set_effective_context(context_id);
        }
    }
}

/// Copies the part of a body chunk that fits under the cap; counts the rest.
fn tap(body: &mut BodyTap, buffer: Buffer, size: usize) {
    let room = body.room(size);
    match (room > 0).then(|| abi::buffer(buffer, room)).flatten() {
        Some(bytes) => body.push(size, bytes),
        None => body.count(size),
    }
}
