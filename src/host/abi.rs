//! The proxy-wasm ABI (0.2.1) host functions this filter calls, with safe wrappers.
//!
//! Written here rather than taken from the `proxy-wasm` SDK because the SDK's dispatcher exports
//! every callback of the ABI, and Envoy enters the VM for each one that is exported: a stream pays
//! for `on_request_headers`, `on_done` and `on_delete` even when the filter has nothing to do
//! there. `bench/probe` measured that at about a third of a wasm filter's fixed cost per request.
//! No wrapper panics: a status other than OK becomes `None` or `Err`.

use crate::headers::HeaderBlock;
use std::ptr::null_mut;

const OK: u32 = 0;

/// `proxy_buffer_type_t`.
#[derive(Clone, Copy, Debug)]
#[repr(u32)]
pub enum Buffer {
    HttpRequestBody = 0,
    HttpResponseBody = 1,
    PluginConfiguration = 7,
}

/// `proxy_map_type_t`.
#[derive(Clone, Copy, Debug)]
#[repr(u32)]
pub enum Headers {
    Request = 0,
    Response = 2,
    CallResponse = 6,
}

/// `proxy_metric_type_t`.
#[derive(Clone, Copy, Debug)]
#[repr(u32)]
pub enum MetricKind {
    Counter = 0,
    Gauge = 1,
}

/// `proxy_log_level_t`, the levels this filter logs at.
#[derive(Clone, Copy, Debug)]
#[repr(u32)]
pub enum Level {
    Warn = 3,
    Error = 4,
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_http_call(
        upstream_data: *const u8,
        upstream_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        body_data: *const u8,
        body_size: usize,
        trailers_data: *const u8,
        trailers_size: usize,
        timeout_milliseconds: u32,
        return_token: *mut u32,
    ) -> u32;
    fn proxy_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
}

/// The host's allocator entry point: every buffer a host function returns is allocated here, as a
/// boxed slice of exactly `size` bytes, and owned by the caller afterwards (see [`owned`]).
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let mut buffer: Vec<std::mem::MaybeUninit<u8>> = Vec::with_capacity(size);
    // SAFETY: `MaybeUninit` needs no initialisation; the host fills all `size` bytes.
    unsafe { buffer.set_len(size) };
    Box::into_raw(buffer.into_boxed_slice()).cast::<u8>()
}

/// Takes ownership of a buffer the host allocated through [`proxy_on_memory_allocate`].
fn owned(status: u32, data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if status != OK || data.is_null() {
        return None;
    }
    // SAFETY: the host filled `data` with `size` bytes allocated by `proxy_on_memory_allocate`
    // (a boxed slice of exactly `size` bytes) and hands ownership to the caller.
    Some(unsafe { Vec::from_raw_parts(data, size, size) })
}

pub fn log(level: Level, message: &str) {
    // SAFETY: a valid slice.
    unsafe { proxy_log(level as u32, message.as_ptr(), message.len()) };
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

pub fn set_tick_period_ms(period: u32) -> Result<(), u32> {
    // SAFETY: no pointers.
    match unsafe { proxy_set_tick_period_milliseconds(period) } {
        OK => Ok(()),
        status => Err(status),
    }
}

/// Up to `max` bytes of a buffer, from its start.
pub fn buffer(buffer: Buffer, max: usize) -> Option<Vec<u8>> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: out-pointers are valid; see `owned`.
    let status = unsafe { proxy_get_buffer_bytes(buffer as u32, 0, max, &mut data, &mut size) };
    owned(status, data, size)
}

/// A whole header map, kept in the host's serialization.
pub fn header_block(map: Headers) -> Option<HeaderBlock> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: out-pointers are valid; see `owned`.
    let status = unsafe { proxy_get_header_map_pairs(map as u32, &mut data, &mut size) };
    owned(status, data, size).map(HeaderBlock::from_raw)
}

pub fn header_value(map: Headers, key: &str) -> Option<Vec<u8>> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: key is a valid slice; out-pointers are valid; see `owned`.
    let status = unsafe {
        proxy_get_header_map_value(map as u32, key.as_ptr(), key.len(), &mut data, &mut size)
    };
    owned(status, data, size)
}

/// A property by its NUL-separated path, such as `b"response\0code_details"`.
pub fn property(path: &[u8]) -> Option<Vec<u8>> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: path is a valid slice; out-pointers are valid; see `owned`.
    let status = unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) };
    owned(status, data, size)
}

/// Starts an HTTP callout to `cluster`; the answer arrives in `proxy_on_http_call_response` of
/// the root context with the returned token. `headers` are in the host's map serialization.
pub fn http_call(
    cluster: &str,
    headers: &HeaderBlock,
    body: &[u8],
    timeout_ms: u32,
) -> Result<u32, u32> {
    // An empty map in the host's serialization: a pair count of zero.
    const NO_TRAILERS: [u8; 4] = [0; 4];
    let mut token = 0u32;
    // SAFETY: every pointer/length pair is a valid slice; the token is a valid out-pointer.
    let status = unsafe {
        proxy_http_call(
            cluster.as_ptr(),
            cluster.len(),
            headers.as_bytes().as_ptr(),
            headers.as_bytes().len(),
            body.as_ptr(),
            body.len(),
            NO_TRAILERS.as_ptr(),
            NO_TRAILERS.len(),
            timeout_ms,
            &mut token,
        )
    };
    match status {
        OK => Ok(token),
        status => Err(status),
    }
}

pub fn define_metric(kind: MetricKind, name: &str) -> Option<u32> {
    let mut id = 0u32;
    // SAFETY: name is a valid slice; id is a valid out-pointer.
    match unsafe { proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) } {
        OK => Some(id),
        _ => None,
    }
}

pub fn increment_metric(id: u32, delta: i64) {
    // SAFETY: no pointers.
    unsafe { proxy_increment_metric(id, delta) };
}

/// Makes the host calls that follow, until the callback returns, act for `context_id` (such as the
/// root context, from a stream's callback). False when the host knows no such context.
pub fn set_effective_context(context_id: u32) -> bool {
    // SAFETY: no pointers.
    unsafe { proxy_set_effective_context(context_id) == OK }
}
