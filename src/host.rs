//! Envoy's side: the proxy-wasm SDK's root and HTTP contexts, translated into calls on the plain
//! modules.
//!
//! - [`Capture`], the `HttpContext` of each stream, notes when the request headers arrived
//!   (`on_http_request_headers`), copies the capped part of each body chunk as Envoy forwards it
//!   (`on_http_request_body`, `on_http_response_body`) — noting when each response chunk passed
//!   (`arrivals`) and, for an upgraded (`101`) exchange, walking the WebSocket frame headers to
//!   find the Close frames (`websocket`) —, and in `on_log` — which Envoy runs for
//!   every stream, resets and local replies included, sometimes as its first callback — reads
//!   both header maps and `response.code_details` and hands the finished exchange to its worker.
//!   Every callback returns `Continue`: nothing is held in Envoy on the capture's behalf.
//! - [`Root`], the `RootContext` of each plugin configuration in each VM (one VM per Envoy
//!   worker), parses the configuration, owns the worker's [`Batcher`], writes finished exchanges
//!   as records a group at a time, and makes every callout itself, from `on_tick`,
//!   `on_http_call_response` and `on_queue_ready`, so every answer reaches it. A stream whose
//!   record fills a batch asks its root for a tick at once instead of waiting for the timer.
//! - `lifecycle`: when Envoy replaces a configuration or stops, `on_done` hands what the root
//!   holds to its successor, or drains it for `drain_timeout_ms`, or counts it as dropped.
//! - `metrics` publishes the worker's counts; `calls` makes each host call without a panic.

mod calls;
mod lifecycle;
mod metrics;

use lifecycle::{with_vm, Me};
use metrics::{Metrics, Reported};

use crate::batcher::{acknowledged, stored_status, Appended, Batcher, Budget};
use crate::body::BodyTap;
use crate::config::{Config, HoldPolicy, OnHoldTimeout, Transport};
use crate::group::Group;
use crate::hold::{self, EndFinder, Fate, Step};
use crate::lane::{self, Lanes};
use crate::outcome::Outcome;
use crate::record::{Amendment, Ending, Exchange};
use crate::websocket::FrameWalk;
use calls::{now_ms, now_ns};
use log::{debug, error, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};
use std::cell::RefCell;
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|context_id| Box::new(Root::new(context_id)));
}}

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
    /// `complete_after_stored`: this root's own shared queue, a wake-up the stream of a held end
    /// sends it (Envoy posts `on_queue_ready` to the worker's event loop at once, where a 1 ms
    /// timer fires on a coarse clock, up to ~4 ms later).
    wake_queue: Option<u32>,
    /// A wake-up was sent and not yet received.
    woken: bool,
    /// `audit_transport: "grpc"`: the open streams and the batch each carries.
    lanes: Lanes,
}

/// An exchange that is over, with what only `on_log` could read.
struct Finished {
    exchange: Exchange,
    /// Envoy's `response.code_details`.
    details: Vec<u8>,
    now_ns: u64,
    /// The id its first record was written with, when it has no `x-request-id` (an amendment).
    id: Option<String>,
    amendment: Option<Amendment>,
}

impl Worker {
    fn new(config: Config, budget: Budget) -> Worker {
        Worker {
            batcher: Batcher::new(config.delivery)
                .formatted(config.delivery_format)
                .seeded(now_ns())
                .sharing(budget),
            finished: Group::new(config.delivery.batch_max_bytes),
            config,
            truncated_bytes: 0,
            fallback_ids: 0,
            hurried: false,
            wake_queue: None,
            woken: false,
            lanes: Lanes::default(),
        }
    }

    /// A record id for an exchange without `x-request-id`, unique in the proxy.
    fn fallback_id(&mut self, now_ns: u64) -> String {
        self.fallback_ids += 1;
        format!("tt-{now_ns:x}-{:x}", self.fallback_ids)
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
            id,
            amendment,
        } in finished.drain()
        {
            let fallback_id = match id {
                Some(id) => id,
                None if ex.request_id().is_none() => {
                    *fallback_ids += 1;
                    format!("tt-{now_ns:x}-{:x}", *fallback_ids)
                }
                None => String::new(),
            };
            let details = String::from_utf8_lossy(&details);
            let end = Ending {
                now_ns,
                details: &details,
                fallback_id: &fallback_id,
                amendment,
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
        if self.config.audit_transport == Transport::Grpc {
            return self.deliver_on_lanes(now);
        }
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
            headers.push(("content-type", batch.format.content_type()));
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

    /// `audit_transport: "grpc"`: each due batch goes as a message on an idle lane, or on a new
    /// one. The batcher lets at most `max_inflight` batches be open, one per lane, so a due batch
    /// always finds an idle lane or room for a new one.
    fn deliver_on_lanes(&mut self, now: u64) {
        while let Some(batch) = self.batcher.next_due(now) {
            let Some(lane) = self.lanes.idle().or_else(|| self.open_lane()) else {
                self.batcher.not_sent(batch, now);
                return;
            };
            let message = lane::batch(batch.format.content_type(), &batch.body);
            if calls::grpc_send(lane, &message) {
                let key = self.lanes.carry(lane);
                self.batcher.sent(key, batch, now);
            } else {
                warn!(
                    "truthtable: cannot send on a stream to audit cluster {}; the batch will be retried",
                    self.config.audit_cluster
                );
                self.lanes.closed(lane);
                calls::grpc_cancel(lane);
                self.batcher.not_sent(batch, now);
                return;
            }
        }
    }

    /// Opens a lane to the audit cluster; `None` (logged) when Envoy refuses.
    fn open_lane(&mut self) -> Option<u32> {
        let c = &self.config;
        let service = lane::grpc_service(&c.audit_cluster, &c.audit_authority)?;
        let metadata = c
            .audit_headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()))
            .collect();
        match calls::grpc_stream(&service, (lane::SERVICE, lane::METHOD), metadata) {
            Ok(stream) => {
                self.lanes.opened(stream);
                Some(stream)
            }
            Err(status) => {
                warn!(
                    "truthtable: cannot open a stream to audit cluster {} ({status:?}); the batch will be retried",
                    c.audit_cluster
                );
                None
            }
        }
    }

    /// Lanes whose batch the batcher gave up on (no acknowledgement within
    /// `audit_timeout_ms`): reset, since what comes on them later answers nothing.
    fn drop_stale_lanes(&mut self) {
        let Worker { batcher, lanes, .. } = self;
        for stream in lanes.stale(|key| batcher.awaits(key)) {
            calls::grpc_cancel(stream);
        }
    }

    /// What a batch's answer means for the held ends it carried; then what is due goes.
    fn answered(&mut self, root_id: u32, key: u32, stored: bool, now: u64) {
        let stored_holds = self.batcher.answered(key, stored, now);
        if !stored_holds.is_empty() {
            let steps = with_vm(|vm| vm.holds.stored(&stored_holds)).unwrap_or_default();
            act_on_holds(root_id, &steps);
        }
        // An answer frees a callout slot: send what is due without waiting for the tick.
        self.deliver(now);
    }
}

/// Resumes or resets held streams as `steps` say; runs in a callback of root `root_id`.
fn act_on_holds(root_id: u32, steps: &[Step]) {
    for step in steps {
        let (id, done) = match *step {
            Step::Resume(id) => (id, calls::resume_response(id, root_id)),
            Step::Reset(id) => (id, calls::reset_response(id, root_id)),
        };
        if !done {
            debug!("truthtable: held stream {id} is gone");
        }
    }
}

// ---- the root context ---------------------------------------------------------------------------

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
        let tick = config.tick_ms();
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
                w.batcher
                    .reconfigure(config.delivery, config.delivery_format);
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
        self.wake_on_holds();
        {
            let mut w = worker.borrow_mut();
            if w.hurried {
                w.hurried = false;
                calls::set_tick_period_ms(w.config.tick_ms());
            }
            w.write_finished();
            let timeout = w.config.audit_timeout_ms;
            w.batcher.expire(now, timeout);
            w.drop_stale_lanes();
        }
        let expired = with_vm(|vm| vm.holds.expire(now)).unwrap_or_default();
        act_on_holds(self.context_id, &expired);
        self.take_handed_on(now);
        worker.borrow_mut().deliver(now);
        if self.drain_until_ms.is_some() && self.drain_step(now) {
            return;
        }
        self.report();
        self.heartbeat(now);
        // Envoy's log level can change at run time (`POST /logging?wasm=debug`).
        sync_log_level();
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        let now = now_ms();
        if let Some(worker) = &self.worker {
            let mut w = worker.borrow_mut();
            if w.wake_queue == Some(queue_id) {
                while calls::dequeue(queue_id).is_some() {}
                w.woken = false;
                w.deliver(now);
                return;
            }
        }
        self.take_handed_on(now);
        if let Some(worker) = &self.worker {
            worker.borrow_mut().deliver(now);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // The SDK panics on None: a root without a configuration gets streams that capture
        // nothing (Envoy sends none to it; the configuration failed or never came).
        match &self.worker {
            Some(worker) if !cfg!(feature = "passthrough") => {
                let w = worker.borrow();
                Some(Box::new(Capture {
                    worker: Rc::clone(worker),
                    root_id: self.context_id,
                    context_id,
                    exchange: Exchange::new(w.config.max_body_bytes),
                    hold: w.config.hold.map(|policy| HoldState {
                        policy,
                        end: None,
                        held: None,
                        buffered_seen: 0,
                    }),
                }))
            }
            _ => Some(Box::new(Passthrough)),
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl Root {
    /// At a tick, under `complete_after_stored`: registers this root's wake-up queue (named by
    /// its proxy-wide nonce, so no other root receives its wake-ups).
    fn wake_on_holds(&mut self) {
        let (Some(worker), Some(nonce)) = (&self.worker, self.nonce()) else {
            return;
        };
        let mut w = worker.borrow_mut();
        if w.config.hold.is_some() && w.wake_queue.is_none() {
            w.wake_queue = calls::register_queue(&format!("truthtable.wake/{nonce:x}"));
        }
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
            let status = status.as_deref().map(String::from_utf8_lossy);
            if stored {
                debug!(
                    "truthtable: audit cluster {} stored a batch (status {})",
                    w.config.audit_cluster,
                    status.unwrap_or_default()
                );
            } else {
                warn!(
                    "truthtable: audit cluster {} did not store a batch (status {}); it will be retried",
                    w.config.audit_cluster,
                    status.unwrap_or_default()
                );
            }
            w.answered(self.context_id, token, stored, now);
        }
        if self.drain_until_ms.is_some() {
            self.drain_step(now);
        }
    }

    fn on_grpc_stream_message(&mut self, token: u32, message_size: usize) {
        let now = now_ms();
        let Some(worker) = self.worker.clone() else {
            return;
        };
        {
            let mut w = worker.borrow_mut();
            let Some(key) = w.lanes.acknowledged(token) else {
                return;
            };
            let status = calls::grpc_message(message_size)
                .as_deref()
                .and_then(lane::ack_status);
            let stored = status.is_some_and(stored_status);
            if !stored {
                warn!(
                    "truthtable: audit cluster {} did not store a batch (status {status:?}); it will be retried",
                    w.config.audit_cluster
                );
            }
            w.answered(self.context_id, key, stored, now);
        }
        if self.drain_until_ms.is_some() {
            self.drain_step(now);
        }
    }

    fn on_grpc_stream_close(&mut self, token: u32, status_code: u32) {
        let now = now_ms();
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let mut w = worker.borrow_mut();
        if let Some(key) = w.lanes.closed(token) {
            warn!(
                "truthtable: a stream to audit cluster {} closed (grpc-status {status_code}) with a batch unanswered; it will be retried",
                w.config.audit_cluster
            );
            w.answered(self.context_id, key, false, now);
        }
    }

    /// Envoy is replacing this configuration or stopping: hand on, drain, or go.
    fn on_done(&mut self) -> bool {
        self.shut_down()
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
    /// `complete_after_stored`: `None` when it is off.
    hold: Option<HoldState>,
}

/// A stream's part of `complete_after_stored`.
struct HoldState {
    policy: HoldPolicy,
    /// Where the response's end is; known from the response headers.
    end: Option<EndFinder>,
    /// Set when the end was held and the record written: when, and the record's id if the
    /// request had no `x-request-id`.
    held: Option<(u64, Option<String>)>,
    /// Bytes of the paused response buffer already copied (Envoy hands a paused stream's whole
    /// buffer to each later callback).
    buffered_seen: usize,
}

impl Context for Capture {}

impl HttpContext for Capture {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.exchange.started_ns = Some(now_ns());
        if self.hold.is_some() {
            // The record is written before on_log, when only this callback sees the request.
            self.exchange.request_headers = calls::header_block(MapType::HttpRequestHeaders);
        }
        #[cfg(feature = "test-panic")]
        test_panic();
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        if let Some(ws) = self.exchange.websocket.as_deref_mut() {
            walk(&mut ws.client, BufferType::HttpRequestBody, body_size);
        }
        tap(
            &mut self.exchange.request_body,
            BufferType::HttpRequestBody,
            body_size,
        );
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.exchange.response_headers_ns = Some(now_ns());
        if calls::response_status().as_deref() == Some(b"101") {
            self.exchange.websocket = Some(Box::default());
        }
        self.exchange.response_ended |= end_of_stream;
        let Some(hold) = self.hold.as_mut() else {
            return Action::Continue;
        };
        let headers = calls::header_block(MapType::HttpResponseHeaders).filter(|b| !b.is_empty());
        let content_length = headers
            .as_ref()
            .and_then(|h| h.get("content-length"))
            .and_then(hold::content_length);
        let content_type = headers.as_ref().and_then(|h| h.get("content-type"));
        let path = self
            .exchange
            .request_headers
            .as_ref()
            .and_then(|h| h.get(":path"));
        let end = EndFinder::new(content_length, hold::Stream::of(content_type, path));
        let at_end = end.at_headers(end_of_stream);
        hold.end = Some(end);
        self.exchange.response_headers = headers;
        if at_end {
            return self.hold_end();
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(hold) = self.hold.as_mut() else {
            chunk_passed(&mut self.exchange, body_size);
            tap(
                &mut self.exchange.response_body,
                BufferType::HttpResponseBody,
                body_size,
            );
            self.exchange.response_ended |= end_of_stream;
            return Action::Continue;
        };
        if let Some((_, _)) = hold.held {
            let waiting = with_vm(|vm| vm.holds.get(self.context_id))
                .flatten()
                .is_some_and(|h| h.fate == Fate::Waiting);
            // While the end waits, Envoy hands over its whole buffer: copy what is new.
            let seen = if waiting { hold.buffered_seen } else { 0 };
            let new = body_size.saturating_sub(seen);
            chunk_timed(&mut self.exchange, new);
            let room = self.exchange.response_body.room(new);
            match (room > 0)
                .then(|| calls::body_at(BufferType::HttpResponseBody, seen, room))
                .flatten()
            {
                Some(bytes) => self.exchange.response_body.push(new, bytes),
                None => self.exchange.response_body.count(new),
            }
            hold.buffered_seen = if waiting { body_size } else { 0 };
            return if waiting {
                Action::Pause
            } else {
                Action::Continue
            };
        }
        chunk_passed(&mut self.exchange, body_size);
        let scans = hold.end.as_ref().is_some_and(EndFinder::scans);
        let at_end = if scans {
            // The terminal event is looked for in every byte, kept or not.
            let bytes = calls::body(BufferType::HttpResponseBody, body_size);
            let at_end = hold
                .end
                .as_mut()
                .is_some_and(|e| e.at_chunk(body_size, bytes.as_deref(), end_of_stream));
            match bytes {
                Some(bytes) => self.exchange.response_body.push(body_size, bytes),
                None => self.exchange.response_body.count(body_size),
            }
            at_end
        } else {
            tap(
                &mut self.exchange.response_body,
                BufferType::HttpResponseBody,
                body_size,
            );
            match hold.end.as_mut() {
                Some(e) => e.at_chunk(body_size, None, end_of_stream),
                None => end_of_stream,
            }
        };
        self.exchange.response_ended |= end_of_stream;
        if at_end {
            hold.buffered_seen = body_size;
            return self.hold_end();
        }
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        self.exchange.response_ended = true;
        let Some(hold) = self.hold.as_mut() else {
            return Action::Continue;
        };
        if hold.held.is_none() {
            hold.buffered_seen = 0;
            return self.hold_end();
        }
        let waiting = with_vm(|vm| vm.holds.get(self.context_id))
            .flatten()
            .is_some_and(|h| h.fate == Fate::Waiting);
        if waiting {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    fn on_log(&mut self) {
        let exchange = std::mem::take(&mut self.exchange);
        match self.hold.as_ref().and_then(|h| h.held.clone()) {
            Some((since_ms, id)) => self.after_hold(exchange, since_ms, id),
            None => self.finish(exchange, None, None),
        }
    }
}

impl Capture {
    /// The response's end is here: writes the exchange's record now, from everything that
    /// passed, into a batch that leaves at once, and holds the end until the root hears the
    /// record was stored (or `hold_timeout_ms` passes).
    fn hold_end(&mut self) -> Action {
        let Some(hold) = self.hold.as_mut() else {
            return Action::Continue;
        };
        let now_ns = now_ns();
        let now = now_ns / 1_000_000;
        self.exchange.response_ended = true;
        if self.exchange.request_headers.is_none() {
            self.exchange.request_headers = calls::header_block(MapType::HttpRequestHeaders);
        }
        let details = calls::property(vec!["response", "code_details"]).unwrap_or_default();
        let details = String::from_utf8_lossy(&details);
        let mut w = self.worker.borrow_mut();
        // Records of exchanges that finished before this one go first.
        w.write_finished();
        let id = match self.exchange.request_id() {
            Some(_) => None,
            None => Some(w.fallback_id(now_ns)),
        };
        let end = Ending {
            now_ns,
            details: &details,
            fallback_id: id.as_deref().unwrap_or_default(),
            amendment: None,
        };
        let kept = self.exchange.kept_body_bytes();
        let Worker {
            config, batcher, ..
        } = &mut *w;
        let ex = &self.exchange;
        let appended = batcher.append_held(now, kept, self.context_id, |out, bodies| {
            ex.write_record(out, &end, config, bodies)
        });
        hold.held = Some((now, id));
        let (timeout, reset) = (
            hold.policy.timeout_ms,
            hold.policy.on_timeout == OnHoldTimeout::Reset,
        );
        let context_id = self.context_id;
        let step = with_vm(|vm| {
            if !cfg!(feature = "hold-no-pause") {
                vm.holds.hold(context_id, now, timeout, reset);
            }
            match appended {
                Appended::Whole | Appended::WithoutBodies => None,
                // Never to be stored: the policy applies now.
                Appended::Dropped | Appended::Nothing => vm.holds.give_up(context_id, now),
            }
        })
        .flatten();
        match step {
            Some(Step::Resume(_)) => return Action::Continue,
            Some(Step::Reset(_)) => {
                calls::reset_own_response();
                return Action::Pause;
            }
            None => {}
        }
        // The root sends the batch as soon as it is woken (with other ends held meanwhile), not
        // at the flush interval: through its wake-up queue, or before its first tick by making
        // its timer due.
        if !w.woken && w.batcher.has_holds_due(now) {
            match w.wake_queue {
                Some(queue) => w.woken = calls::enqueue(queue, b"w"),
                None if !w.hurried && calls::set_effective_context(self.root_id) => {
                    w.hurried = calls::set_tick_period_ms(1);
                    calls::set_effective_context(self.context_id);
                }
                None => {}
            }
        }
        if cfg!(feature = "hold-no-pause") {
            return Action::Continue;
        }
        Action::Pause
    }

    /// `on_log` of a stream whose record was written when its end was held: what happened
    /// since then is sent as an amendment when the record no longer tells it (the client left
    /// during the hold, the stream was reset at the timeout, or it failed after the end went
    /// out).
    fn after_hold(&self, mut ex: Exchange, since_ms: u64, id: Option<String>) {
        let context_id = self.context_id;
        let fate = with_vm(|vm| vm.holds.end(context_id))
            .flatten()
            .map(|h| h.fate);
        let reason = match fate {
            Some(Fate::Waiting) => "client_gone_during_hold",
            Some(Fate::Reset) => "reset_after_hold_timeout",
            Some(Fate::Stored | Fate::Released) | None => {
                let details = calls::property(vec!["response", "code_details"]).unwrap_or_default();
                if ex.outcome(&String::from_utf8_lossy(&details)) == Outcome::Complete {
                    return;
                }
                "failed_after_release"
            }
        };
        // The client never saw the end.
        ex.response_ended = !matches!(fate, Some(Fate::Waiting | Fate::Reset));
        let held_us = now_ms().saturating_sub(since_ms).saturating_mul(1000);
        self.finish(ex, id, Some(Amendment { reason, held_us }));
    }

    /// Reads what only `on_log` can, hands the exchange to the worker's group of finished ones,
    /// writes the group's records when it is due, and asks the root for an immediate tick when a
    /// batch is full and may leave.
    fn finish(&self, mut ex: Exchange, id: Option<String>, amendment: Option<Amendment>) {
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
            id,
            amendment,
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

/// Walks the WebSocket frame headers of a chunk, reading it only when a header is in it.
/// `size` new response bytes passed the stream's current end: their time (unless built without
/// chunk timing) and the WebSocket frames they carry. Not for bytes that Envoy hands over again
/// while a held end waits: those are timed by the caller, at their offset.
fn chunk_passed(ex: &mut Exchange, size: usize) {
    chunk_timed(ex, size);
    if let Some(ws) = ex.websocket.as_deref_mut() {
        walk(&mut ws.upstream, BufferType::HttpResponseBody, size);
    }
}

fn chunk_timed(ex: &mut Exchange, size: usize) {
    if !cfg!(feature = "no-chunk-timing") {
        ex.response_chunks.push(now_ns(), size);
    }
}

fn walk(frames: &mut FrameWalk, buffer: BufferType, size: usize) {
    match frames
        .wants(size)
        .then(|| calls::body(buffer, size))
        .flatten()
    {
        Some(bytes) => frames.feed(&bytes),
        None => frames.pass(size),
    }
}

/// The stream context of the benchmark's floor build and of a root without a configuration:
/// every callback is the SDK's default (`Continue`), nothing is read.
struct Passthrough;

impl Context for Passthrough {}
impl HttpContext for Passthrough {}
