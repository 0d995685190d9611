//! The benchmark's host-call probe, used only by the `--features probe` build: streams that repeat
//! one host call `n` times at the point of the exchange where the capture makes it, so that
//! `bench/probe` can price each call by Envoy CPU per request against streams that make none.
//!
//! The plugin configuration is `"<call> <n>"`, for example `"request_headers 20"`.

use super::abi::{self, Buffer, Headers};
use std::cell::Cell;

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
    /// Every call the capture makes, once each, where it makes it.
    All,
}

thread_local! {
    static PLAN: Cell<(Call, u32)> = const { Cell::new((Call::None, 0)) };
}

/// Reads the plan from the plugin configuration; false (Envoy refuses it) when it is not one.
pub fn configure(config: &[u8]) -> bool {
    let Some(plan) = parse(config) else {
        return false;
    };
    PLAN.with(|p| p.set(plan));
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
        "all" => Call::All,
        _ => return None,
    };
    let n = words.next().map_or(Some(0), |w| w.parse().ok())?;
    Some((call, n))
}

/// Makes `once` n times if the plan is `call` (once if the plan is `all`).
fn repeat(call: Call, mut once: impl FnMut() -> usize) {
    let (planned, n) = PLAN.with(Cell::get);
    let times = match planned {
        Call::All if call != Call::RequestIdValue => 1,
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
    if PLAN.with(Cell::get).0 == Call::All {
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

pub fn log() {
    if PLAN.with(Cell::get).0 == Call::All {
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
}
