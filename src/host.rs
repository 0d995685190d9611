//! Envoy's side: proxy-wasm callbacks translated into calls on the plain modules.
//!
//! Stream contexts only read what Envoy hands them and never call out; the root context owns the
//! worker's [`Batcher`] and does all delivery from `on_tick`. Every body callback returns
//! `Continue`, so Envoy forwards each chunk as it comes.

use crate::batcher::{acknowledged, Batcher, Stats};
use crate::body::BodyTap;
use crate::config::Config;
use crate::record::{Ending, Exchange};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root::default()));
}}

/// What the root context and every stream context of one VM (one Envoy worker) share.
struct Worker {
    config: Config,
    batcher: Batcher,
    truncated_bytes: u64,
    fallback_ids: u64,
}

#[derive(Default)]
struct Root {
    worker: Option<Rc<RefCell<Worker>>>,
    metrics: Option<Metrics>,
    reported: Reported,
    #[cfg(feature = "probe")]
    probe: Option<probe::Plan>,
}

#[cfg(feature = "probe")]
mod probe;

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        _body: usize,
        _trailers: usize,
    ) {
        let status = abi::header_value(MapType::HttpCallResponseHeaders, ":status");
        let stored = acknowledged(status.as_deref());
        if let Some(worker) = &self.worker {
            let mut w = worker.borrow_mut();
            if !stored {
                log::warn!(
                    "truthtable: audit cluster {} did not store a batch (status {}); it will be retried",
                    w.config.audit_cluster,
                    status.as_deref().map(String::from_utf8_lossy).unwrap_or_default()
                );
            }
            w.batcher.answered(token, stored, abi::now_ms());
        }
        // An answer frees a callout slot: send what is due without waiting for the next tick.
        self.deliver();
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        let bytes = abi::buffer(BufferType::PluginConfiguration, size).unwrap_or_default();
        #[cfg(feature = "probe")]
        {
            self.probe = probe::Plan::parse(&bytes);
            return self.probe.is_some();
        }
        #[allow(unreachable_code)]
        let config = match Config::parse(&bytes) {
            Ok(config) => config,
            Err(e) => {
                log::error!("{e}");
                return false;
            }
        };
        let tick = Duration::from_millis(config.delivery.flush_interval_ms);
        if self.metrics.is_none() {
            self.metrics = Metrics::define();
        }
        self.worker = Some(Rc::new(RefCell::new(Worker {
            batcher: Batcher::new(config.delivery),
            config,
            truncated_bytes: 0,
            fallback_ids: 0,
        })));
        if let Err(e) = hostcalls::set_tick_period(tick) {
            log::error!("truthtable: cannot set the tick period: {e:?}");
            return false;
        }
        true
    }

    fn on_tick(&mut self) {
        if let Some(worker) = &self.worker {
            let mut w = worker.borrow_mut();
            let timeout = w.config.audit_timeout_ms;
            w.batcher.expire(abi::now_ms(), timeout);
        }
        self.deliver();
        self.report();
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        if cfg!(feature = "passthrough") {
            return Some(Box::new(Idle));
        }
        #[cfg(feature = "probe")]
        if let Some(plan) = self.probe {
            return Some(Box::new(probe::Probe(plan)));
        }
        Some(Box::new(Stream {
            exchange: Exchange::new(
                self.worker
                    .as_ref()
                    .map_or(0, |w| w.borrow().config.max_body_bytes),
            ),
            worker: self.worker.clone(),
            done: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl Root {
    /// Dispatches every batch that is due.
    fn deliver(&mut self) {
        let Some(worker) = &self.worker else { return };
        let mut w = worker.borrow_mut();
        let now = abi::now_ms();
        while let Some(batch) = w.batcher.next_due(now) {
            if cfg!(feature = "record-only") {
                w.batcher.sent(0, batch, now);
                w.batcher.answered(0, true, now);
                continue;
            }
            let c = &w.config;
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
            let sent = hostcalls::dispatch_http_call(
                &c.audit_cluster,
                headers,
                Some(&batch.body),
                Vec::new(),
                Duration::from_millis(c.audit_timeout_ms),
            );
            match sent {
                Ok(token) => w.batcher.sent(token, batch, now),
                Err(e) => {
                    log::warn!(
                        "truthtable: cannot call audit cluster {}: {e:?}; the batch will be retried",
                        c.audit_cluster
                    );
                    w.batcher.not_sent(batch, now);
                    break;
                }
            }
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

/// Envoy metric ids, defined once per VM.
struct Metrics {
    captured: u32,
    delivered: u32,
    retried: u32,
    dropped: u32,
    failed_callouts: u32,
    truncated_bytes: u32,
    queue_bytes: u32,
    queue_records: u32,
}

impl Metrics {
    fn define() -> Option<Metrics> {
        let counter = |name| hostcalls::define_metric(MetricType::Counter, name).ok();
        let gauge = |name| hostcalls::define_metric(MetricType::Gauge, name).ok();
        Some(Metrics {
            captured: counter("truthtable_records_captured")?,
            delivered: counter("truthtable_records_delivered")?,
            retried: counter("truthtable_records_retried")?,
            dropped: counter("truthtable_records_dropped")?,
            failed_callouts: counter("truthtable_delivery_failures")?,
            truncated_bytes: counter("truthtable_body_bytes_truncated")?,
            queue_bytes: gauge("truthtable_queue_bytes")?,
            queue_records: gauge("truthtable_queue_records")?,
        })
    }

    fn add(&self, id: u32, now: u64, was: u64) {
        if now != was {
            let delta = (now as i128 - was as i128).clamp(i64::MIN as i128, i64::MAX as i128);
            let _ = hostcalls::increment_metric(id, delta as i64);
        }
    }
}

/// The benchmark's floor (`--features passthrough`): a stream context that captures nothing.
struct Idle;

impl Context for Idle {}
impl HttpContext for Idle {}

/// One HTTP exchange. Notes the time of its headers, copies body chunks as they pass, and writes
/// the record once, in `on_log`.
struct Stream {
    worker: Option<Rc<RefCell<Worker>>>,
    exchange: Exchange,
    done: bool,
}

impl Context for Stream {
    fn on_done(&mut self) -> bool {
        // Envoy runs on_log before on_done for every stream; this only covers a host that would not.
        self.finish();
        true
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if self.worker.is_some() {
            self.exchange.started_ns = Some(abi::now_ns());
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, size: usize, _end_of_stream: bool) -> Action {
        tap(
            &mut self.exchange.request_body,
            BufferType::HttpRequestBody,
            size,
        );
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        if self.worker.is_some() {
            self.exchange.response_headers_ns = Some(abi::now_ns());
            self.exchange.response_ended |= end_of_stream;
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        tap(
            &mut self.exchange.response_body,
            BufferType::HttpResponseBody,
            size,
        );
        self.exchange.response_ended |= end_of_stream;
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _trailers: usize) -> Action {
        self.exchange.response_ended = true;
        Action::Continue
    }

    fn on_log(&mut self) {
        self.finish();
    }
}

impl Stream {
    /// Writes the record into the worker's batcher, once.
    fn finish(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        let Some(worker) = &self.worker else { return };
        let now_ns = abi::now_ns();
        let ex = &mut self.exchange;
        // Headers are read once, here: the request as the router sent it upstream (rewrites
        // included), the response as the client got it, and both even when on_log is the
        // stream's first callback.
        ex.request_headers = abi::header_block(MapType::HttpRequestHeaders);
        ex.response_headers =
            abi::header_block(MapType::HttpResponseHeaders).filter(|b| !b.is_empty());
        if ex.response_headers.is_some() && ex.response_headers_ns.is_none() {
            ex.response_headers_ns = Some(now_ns);
        }
        let details = abi::property(b"response\0code_details").unwrap_or_default();
        let details = String::from_utf8_lossy(&details);
        if cfg!(feature = "copy-only") {
            return;
        }
        let mut w = worker.borrow_mut();
        let fallback_id = if ex.request_id().is_none() {
            w.fallback_ids += 1;
            format!("tt-{now_ns:x}-{:x}", w.fallback_ids)
        } else {
            String::new()
        };
        w.truncated_bytes += ex.request_body.dropped() + ex.response_body.dropped();
        let end = Ending {
            now_ns,
            details: &details,
            fallback_id: &fallback_id,
        };
        let Worker {
            config, batcher, ..
        } = &mut *w;
        batcher.append(now_ns / 1_000_000, |out| ex.write_record(out, &end, config));
    }
}

/// Copies the part of a body chunk that fits under the cap; counts the rest.
fn tap(body: &mut BodyTap, buffer: BufferType, size: usize) {
    let room = body.room(size);
    match (room > 0).then(|| abi::buffer(buffer, room)).flatten() {
        Some(bytes) => body.push(size, bytes),
        None => body.count(size),
    }
}

/// The few host calls on the hot path, made directly so that no status the host returns can
/// panic the VM and no map is copied into per-header strings.
mod abi {
    use crate::headers::HeaderBlock;
    use proxy_wasm::types::{BufferType, MapType};
    use std::ptr::null_mut;

    const OK: u32 = 0;

    #[link(wasm_import_module = "env")]
    extern "C" {
        fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
        fn proxy_get_header_map_pairs(
            map_type: MapType,
            return_data: *mut *mut u8,
            return_size: *mut usize,
        ) -> u32;
        fn proxy_get_header_map_value(
            map_type: MapType,
            key_data: *const u8,
            key_size: usize,
            return_data: *mut *mut u8,
            return_size: *mut usize,
        ) -> u32;
        fn proxy_get_buffer_bytes(
            buffer_type: BufferType,
            start: usize,
            max_size: usize,
            return_data: *mut *mut u8,
            return_size: *mut usize,
        ) -> u32;
        fn proxy_get_property(
            path_data: *const u8,
            path_size: usize,
            return_data: *mut *mut u8,
            return_size: *mut usize,
        ) -> u32;
    }

    /// Takes ownership of a buffer the host allocated through the SDK's `proxy_on_memory_allocate`.
    fn owned(status: u32, data: *mut u8, size: usize) -> Option<Vec<u8>> {
        if status != OK || data.is_null() {
            return None;
        }
        // SAFETY: the host filled `data` with `size` bytes allocated by this module's allocator
        // (a boxed slice of exactly `size` bytes), and hands ownership to the caller.
        Some(unsafe { Vec::from_raw_parts(data, size, size) })
    }

    pub fn now_ns() -> u64 {
        let mut t = 0u64;
        // SAFETY: the host writes one u64 through a valid pointer.
        unsafe { proxy_get_current_time_nanoseconds(&mut t) };
        t
    }

    pub fn now_ms() -> u64 {
        now_ns() / 1_000_000
    }

    pub fn header_block(map: MapType) -> Option<HeaderBlock> {
        let (mut data, mut size) = (null_mut(), 0usize);
        // SAFETY: out-pointers are valid; see `owned`.
        let status = unsafe { proxy_get_header_map_pairs(map, &mut data, &mut size) };
        owned(status, data, size).map(HeaderBlock::from_raw)
    }

    pub fn header_value(map: MapType, key: &str) -> Option<Vec<u8>> {
        let (mut data, mut size) = (null_mut(), 0usize);
        // SAFETY: key is a valid slice; out-pointers are valid; see `owned`.
        let status = unsafe {
            proxy_get_header_map_value(map, key.as_ptr(), key.len(), &mut data, &mut size)
        };
        owned(status, data, size)
    }

    pub fn buffer(buffer: BufferType, max: usize) -> Option<Vec<u8>> {
        let (mut data, mut size) = (null_mut(), 0usize);
        // SAFETY: out-pointers are valid; see `owned`.
        let status = unsafe { proxy_get_buffer_bytes(buffer, 0, max, &mut data, &mut size) };
        owned(status, data, size)
    }

    /// A property by its NUL-separated path, such as `b"response\0code_details"`.
    pub fn property(path: &[u8]) -> Option<Vec<u8>> {
        let (mut data, mut size) = (null_mut(), 0usize);
        // SAFETY: path is a valid slice; out-pointers are valid; see `owned`.
        let status = unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) };
        owned(status, data, size)
    }
}
