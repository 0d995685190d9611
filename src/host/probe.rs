//! The benchmark's host-call probe (`--features probe`): a stream context that repeats one host
//! call `n` times at the point of the exchange where the capture makes it, so that `bench/probe`
//! can price each call by Envoy CPU per request against a stream context that makes none.
//!
//! The plugin configuration is `"<call> <n>"`, for example `"request_headers 20"`.

use super::abi;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
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

#[derive(Clone, Copy, Debug)]
pub struct Plan {
    call: Call,
    n: u32,
}

impl Plan {
    pub fn parse(config: &[u8]) -> Option<Plan> {
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
        Some(Plan { call, n })
    }
}

pub struct Probe(pub Plan);

impl Probe {
    fn repeat(&self, call: Call, mut once: impl FnMut() -> usize) {
        if self.0.call == Call::All && call != Call::RequestIdValue {
            std::hint::black_box(once());
            return;
        }
        if self.0.call != call {
            return;
        }
        let mut seen = 0usize;
        for _ in 0..self.0.n {
            seen = seen.wrapping_add(once());
        }
        std::hint::black_box(seen);
    }
}

impl Context for Probe {}

impl HttpContext for Probe {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        self.repeat(Call::Clock, || abi::now_ns() as usize);
        self.repeat(Call::RequestIdValue, || {
            abi::header_value(MapType::HttpRequestHeaders, "x-request-id").map_or(0, |v| v.len())
        });
        Action::Continue
    }

    fn on_http_request_body(&mut self, size: usize, _end_of_stream: bool) -> Action {
        if size > 0 {
            self.repeat(Call::RequestBody, || {
                abi::buffer(BufferType::HttpRequestBody, size)
                    .map_or(0, |b| usize::from(b.is_empty()))
            });
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if self.0.call == Call::All {
            std::hint::black_box(abi::now_ns());
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, _end_of_stream: bool) -> Action {
        if size > 0 {
            self.repeat(Call::ResponseBody, || {
                abi::buffer(BufferType::HttpResponseBody, size)
                    .map_or(0, |b| usize::from(b.is_empty()))
            });
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        if self.0.call == Call::All {
            std::hint::black_box(abi::now_ns());
        }
        self.repeat(Call::RequestHeaders, || {
            abi::header_block(MapType::HttpRequestHeaders).map_or(0, |b| usize::from(b.is_empty()))
        });
        self.repeat(Call::ResponseHeaders, || {
            abi::header_block(MapType::HttpResponseHeaders).map_or(0, |b| usize::from(b.is_empty()))
        });
        self.repeat(Call::CodeDetails, || {
            abi::property(b"response\0code_details").map_or(0, |v| v.len())
        });
    }
}
