//! Loopback ports for the processes a test starts. Shared by the filter's and the collector's tests
//! (`collector/tests/common/mod.rs` includes this file).

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Ports below Linux's default ephemeral range (32768–60999): the kernel never hands one of them to
/// an outgoing connection, so Envoy's, the collector's or Phoenix's own connections cannot take a
/// port between the moment a test picks it and the moment its server binds it. (A port from
/// `bind(127.0.0.1:0)` comes from the ephemeral range and could be; that failed CI once.)
const FIRST: u16 = 20000;
const COUNT: u16 = 12000;

/// A loopback port that nothing listens on now and that this test process has not handed out
/// before.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<(HashSet<u16>, u64)>> = Mutex::new(None);
    let mut guard = GIVEN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let (given, state) = guard.get_or_insert_with(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        (
            HashSet::new(),
            nanos ^ (u64::from(std::process::id()) << 32) | 1,
        )
    });
    for _ in 0..10 * u32::from(COUNT) {
        // xorshift64: test processes started in parallel start at different places.
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        let port = FIRST + (*state % u64::from(COUNT)) as u16;
        if given.insert(port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + COUNT)
}
