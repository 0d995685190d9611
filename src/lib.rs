//! TruthTable capture filter: records every HTTP exchange passing through Envoy and ships the
//! records to an audit cluster.
//!
//! The modules are plain Rust, tested natively; `host` (wasm32 only) translates Envoy's
//! callbacks into calls on them.

pub mod arrivals;
pub mod batcher;
pub mod body;
pub mod clock;
pub mod config;
pub mod group;
pub mod handoff;
pub mod headers;
pub mod hold;
pub mod json;
pub mod lane;
pub mod outcome;
pub mod record;
pub mod redact;
pub mod registry;
pub mod websocket;

#[cfg(target_arch = "wasm32")]
mod host;
