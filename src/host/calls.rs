//! The host calls the filter makes, each through the SDK's `proxy_wasm::hostcalls` form that
//! returns a `Result`, so nothing the host answers becomes a panic.
//!
//! The SDK's convenience methods on `Context`/`HttpContext`/`RootContext` `unwrap` those results;
//! the `hostcalls` functions panic only on a status code the ABI does not define for the call (a
//! host bug, not something the network or a configuration can cause). Each wrapper names what it
//! turns an error into. One host function, `proxy_get_header_map_pairs`, is imported here directly:
//! see [`header_block`].

use crate::headers::HeaderBlock;
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType, Status};
use std::ptr::null_mut;
use std::time::{Duration, UNIX_EPOCH};

/// Host time in nanoseconds since the epoch; 0 if the host has no clock (it always has one).
pub fn now_ns() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

pub fn now_ms() -> u64 {
    now_ns() / 1_000_000
}

/// Up to `max` bytes of the request or response body chunk being processed; `None` when the host
/// has none (NotFound) or refuses.
pub fn body(buffer: BufferType, max: usize) -> Option<Vec<u8>> {
    hostcalls::get_buffer(buffer, 0, max).ok().flatten()
}

/// Up to `max` bytes from offset `start` of the body being processed (a paused stream's buffer
/// grows with each chunk); `None` when the host has none.
pub fn body_at(buffer: BufferType, start: usize, max: usize) -> Option<Vec<u8>> {
    hostcalls::get_buffer(buffer, start, max).ok().flatten()
}

/// Lets the held response of stream `context_id` go on, from a root callback; false when the
/// host knows no such context. The calls that follow act for the root again.
pub fn resume_response(context_id: u32, root_id: u32) -> bool {
    let done = set_effective_context(context_id) && hostcalls::resume_http_response().is_ok();
    set_effective_context(root_id);
    done
}

/// Resets the client's stream of `context_id` (Envoy's `proxy_close_stream` on the response),
/// from a root callback; false when the host knows no such context.
pub fn reset_response(context_id: u32, root_id: u32) -> bool {
    let done = set_effective_context(context_id) && hostcalls::reset_http_response().is_ok();
    set_effective_context(root_id);
    done
}

/// Resets the client's stream being processed (a stream callback).
pub fn reset_own_response() -> bool {
    hostcalls::reset_http_response().is_ok()
}

/// The whole plugin configuration; `None` when the host has none.
pub fn plugin_configuration() -> Option<Vec<u8>> {
    hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
        .ok()
        .flatten()
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> Status;
}

/// A whole header map, kept in the host's serialization as one buffer.
///
/// Imported directly because the SDK's `get_map_bytes` turns every header into a `String` and a
/// `Vec` (two allocations per header of both maps, every exchange) and unwraps
/// `String::from_utf8` on every name, which would panic on a name another filter set that is not
/// UTF-8. The buffer comes from the SDK's `proxy_on_memory_allocate`, as for every host call.
pub fn header_block(map: MapType) -> Option<HeaderBlock> {
    if cfg!(feature = "sdk-header-maps") {
        // The benchmark's comparison build: the SDK's way.
        let pairs = hostcalls::get_map_bytes(map).ok()?;
        return Some(HeaderBlock::from_pairs(&pairs));
    }
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: both out-pointers are valid for writes; on Ok the host has written a buffer it
    // allocated through `proxy_on_memory_allocate` (a boxed slice of exactly `size` bytes), whose
    // ownership passes to us, exactly as the SDK's own `get_map_bytes` takes it.
    unsafe {
        match proxy_get_header_map_pairs(map, &mut data, &mut size) {
            Status::Ok if !data.is_null() => {
                Some(HeaderBlock::from_raw(Vec::from_raw_parts(data, size, size)))
            }
            _ => None,
        }
    }
}

/// The response's `:status`; `None` when absent or refused.
pub fn response_status() -> Option<Vec<u8>> {
    hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status")
        .ok()
        .flatten()
}

/// One value of the callout answer's headers (`:status`); `None` when absent or refused.
pub fn call_response_header(name: &str) -> Option<Vec<u8>> {
    hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, name)
        .ok()
        .flatten()
}

/// A property by its path, such as `["response", "code_details"]`; `None` when absent or when the
/// host cannot serialize it.
pub fn property(path: Vec<&str>) -> Option<Vec<u8>> {
    hostcalls::get_property(path).ok().flatten()
}

/// Starts a callout; the answer reaches the root context this runs for (the SDK registers the
/// token with the context being called). `Err` carries the host's refusal (BadArgument for a
/// cluster Envoy does not know).
pub fn http_call(
    cluster: &str,
    headers: Vec<(&str, &str)>,
    body: &[u8],
    timeout_ms: u64,
) -> Result<u32, Status> {
    hostcalls::dispatch_http_call(
        cluster,
        headers,
        Some(body),
        Vec::new(),
        Duration::from_millis(timeout_ms),
    )
}

/// Opens a gRPC stream to `service` (a serialized `GrpcService`); its token.
pub fn grpc_stream(
    service: &str,
    method: (&str, &str),
    metadata: Vec<(&str, &[u8])>,
) -> Result<u32, Status> {
    hostcalls::open_grpc_stream(service, method.0, method.1, metadata)
}

/// Sends one message on an open gRPC stream.
pub fn grpc_send(stream: u32, message: &[u8]) -> bool {
    hostcalls::send_grpc_stream_message(stream, Some(message), false).is_ok()
}

/// Resets a gRPC stream (nothing more comes on it).
pub fn grpc_cancel(stream: u32) {
    let _ = hostcalls::cancel_grpc_stream(stream);
}

/// The message a gRPC stream just delivered.
pub fn grpc_message(size: usize) -> Option<Vec<u8>> {
    hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, size)
        .ok()
        .flatten()
}

pub fn set_tick_period_ms(ms: u64) -> bool {
    hostcalls::set_tick_period(Duration::from_millis(ms)).is_ok()
}

/// Makes the host calls that follow act for `context_id` until the callback returns; false when
/// the host knows no such context.
pub fn set_effective_context(context_id: u32) -> bool {
    hostcalls::set_effective_context(context_id).is_ok()
}

pub fn define_metric(kind: MetricType, name: &str) -> Option<u32> {
    hostcalls::define_metric(kind, name).ok()
}

/// Adds `delta` (negative for a gauge going down); a refusal leaves the metric as it was.
pub fn increment_metric(id: u32, delta: i64) {
    let _ = hostcalls::increment_metric(id, delta);
}

/// A shared-data value and its compare-and-swap token.
pub fn shared_data(key: &str) -> (Option<Vec<u8>>, Option<u32>) {
    hostcalls::get_shared_data(key).unwrap_or((None, None))
}

/// Writes a shared-data value if nobody wrote it since `cas` was read; false on a mismatch.
pub fn set_shared_data(key: &str, value: &[u8], cas: Option<u32>) -> bool {
    hostcalls::set_shared_data(key, Some(value), cas).is_ok()
}

/// Registers this root context as the receiver of the named queue (the last one registered gets
/// `on_queue_ready`); the queue's id, shared by every VM of the same `vm_id`.
pub fn register_queue(name: &str) -> Option<u32> {
    hostcalls::register_shared_queue(name).ok()
}

/// The id of the named queue of VMs with `vm_id`, without becoming its receiver; `None` when no
/// root registered it yet.
pub fn resolve_queue(vm_id: &str, name: &str) -> Option<u32> {
    hostcalls::resolve_shared_queue(vm_id, name).ok().flatten()
}

pub fn enqueue(queue: u32, item: &[u8]) -> bool {
    hostcalls::enqueue_shared_queue(queue, Some(item)).is_ok()
}

/// The next item of a queue; `None` when it is empty or gone.
pub fn dequeue(queue: u32) -> Option<Vec<u8>> {
    hostcalls::dequeue_shared_queue(queue).ok().flatten()
}

/// Tells the host a root context that returned false from `on_done` has finished; false when the
/// host was not waiting for it.
pub fn done() -> bool {
    hostcalls::done().is_ok()
}

/// The log level of Envoy's `wasm` component, to format nothing it would discard.
pub fn log_level() -> Option<proxy_wasm::types::LogLevel> {
    hostcalls::get_log_level().ok()
}
