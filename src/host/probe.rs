//! The benchmark's host-call probe, used only by the `--features probe` build: streams that repeat
//! one host call `n` times at the point of the exchange where the capture makes it, so that
//! `bench/probe` can price each call by Envoy CPU per request against streams that make none.
//!
//! The plugin configuration is `"<call> <n>"`, for example `"request_headers 20"`.

use super::abi::{self, Buffer, Headers};
use crate::headers::HeaderBlock;
use std::cell::{Cell, RefCell};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    /// No call: the floor the others are compared with.
    None,
    Clock,
    RequestHeaders,
    ResponseHeaders,
    RequestBody,
    ResponseBody,
    CodeDetails,
    RequestIdValue,
    /// A callout of 1 KiB to the `upstream` cluster from `on_log`, made for the root context.
    Callout,
    /// The same with 256 KiB, the default batch size.
    CalloutBatch,
    /// Every call the capture makes, once each, where it makes it.
    All,
    /// `All`, and `n` bytes per exchange appended to a batch that is sent, as the capture sends a
    /// full one, when it reaches 256 KiB: the copies and the delivery, with no record written.
    AllDeliver,
}

thread_local! {
    static PLAN: Cell<(Call, u32)> = const { Cell::new((Call::None, 0)) };
    static ROOT: Cell<u32> = const { Cell::new(0) };
    static BATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The size of a default batch.
const BATCH_BYTES: usize = 256 << 10;

/// Reads the plan from the plugin configuration; false (Envoy refuses it) when it is not one.
pub fn configure(root_id: u32, config: &[u8]) -> bool {
    let Some(plan) = parse(config) else {
        return false;
    };
    PLAN.with(|p| p.set(plan));
    ROOT.with(|r| r.set(root_id));
    true
}

fn parse(config: &[u8]) -> Option<(Call, u32)> {
    let text = std::str::from_utf8(config).ok()?;
    let mut words = text.split_whitespace();
    let call = match words.next()? {
        "none" => Call::None,
        "clock" => Call::Clock,
        "request_headers" => Call::RequestHeaders,
        "response_headers" => Call::ResponseHeaders,
        "request_body" => Call::RequestBody,
        "response_body" => Call::ResponseBody,
        "code_details" => Call::CodeDetails,
        "request_id_value" => Call::RequestIdValue,
        "callout" => Call::Callout,
        "callout_batch" => Call::CalloutBatch,
        "all" => Call::All,
        "all_deliver" => Call::AllDeliver,
        _ => return None,
    };
    let n = words.next().map_or(Some(0), |w| w.parse().ok())?;
    Some((call, n))
}

/// Makes `once` n times if the plan is `call` (once if the plan is `all`).
fn repeat(call: Call, mut once: impl FnMut() -> usize) {
    let (planned, n) = PLAN.with(Cell::get);
    let times = match planned {
        Call::All | Call::AllDeliver
            if !matches!(
                call,
                Call::RequestIdValue | Call::Callout | Call::CalloutBatch
            ) =>
        {
            1
        }
        p if p == call => n,
        _ => 0,
    };
    let mut seen = 0usize;
    for _ in 0..times {
        seen = seen.wrapping_add(once());
    }
    std::hint::black_box(seen);
}

pub fn created() {
    repeat(Call::Clock, || abi::now_ns() as usize);
}

pub fn request_body(size: usize) {
    if size > 0 {
        repeat(Call::RequestBody, || {
            abi::buffer(Buffer::HttpRequestBody, size).map_or(0, |b| b.len())
        });
    }
}

pub fn response_headers() {
    if matches!(PLAN.with(Cell::get).0, Call::All | Call::AllDeliver) {
        std::hint::black_box(abi::now_ns());
    }
}

pub fn response_body(size: usize) {
    if size > 0 {
        repeat(Call::ResponseBody, || {
            abi::buffer(Buffer::HttpResponseBody, size).map_or(0, |b| b.len())
        });
    }
}

pub fn log(context_id: u32) {
    let (plan, n) = PLAN.with(Cell::get);
    if matches!(plan, Call::All | Call::AllDeliver) {
        std::hint::black_box(abi::now_ns());
    }
    repeat(Call::RequestHeaders, || {
        abi::header_block(Headers::Request).map_or(0, |b| usize::from(b.is_empty()))
    });
    repeat(Call::ResponseHeaders, || {
        abi::header_block(Headers::Response).map_or(0, |b| usize::from(b.is_empty()))
    });
    // Envoy hands a filter the request headers only inside a request callback and in on_log.
    repeat(Call::RequestIdValue, || {
        abi::header_value(Headers::Request, "x-request-id").map_or(0, |v| v.len())
    });
    repeat(Call::CodeDetails, || {
        abi::property(b"response\0code_details").map_or(0, |v| v.len())
    });
    repeat(Call::Callout, || callout(context_id, &vec![b'x'; 1 << 10]));
    repeat(Call::CalloutBatch, || {
        callout(context_id, &vec![b'x'; BATCH_BYTES])
    });
    if plan == Call::AllDeliver {
        deliver(context_id, n as usize);
    }
}

/// Appends `n` bytes (as many stores as writing a record of that size takes, none of its work)
/// and sends the batch when it is full.
fn deliver(context_id: u32, n: usize) {
    const FILLER: [u8; 4096] = [b'x'; 4096];
    BATCH.with(|batch| {
        let mut batch = batch.borrow_mut();
        if batch.capacity() == 0 {
            batch.reserve_exact(BATCH_BYTES + FILLER.len());
        }
        let mut left = n;
        while left > 0 {
            let take = left.min(FILLER.len());
            batch.extend_from_slice(&FILLER[..take]);
            left -= take;
        }
        if batch.len() >= BATCH_BYTES {
            callout(context_id, &batch);
            batch.clear();
        }
    });
}

/// One callout carrying `body` to the `upstream` cluster, made as the capture sends a full batch:
/// for the root context, whose callbacks get the answer.
fn callout(context_id: u32, body: &[u8]) -> usize {
    let headers = HeaderBlock::from_pairs(&[
        (":method", "POST"),
        (":path", "/v1/captures"),
        (":authority", "upstream"),
        ("content-type", "application/x-ndjson"),
    ]);
    if !abi::set_effective_context(ROOT.with(Cell::get)) {
        return 0;
    }
    let token = abi::http_call("upstream", &headers, body, 5000).unwrap_or(0);
    abi::set_effective_context(context_id);
    token as usize
}
