//! OpenTelemetry export: every stored capture as one OTLP span, sent to the endpoint the standard
//! `OTEL_EXPORTER_OTLP_*` variables (or `--otlp-endpoint`) name.
//!
//! The exporter reads from the store, never from the ingest path: ingest only pokes it after a
//! commit, and never waits for it. It walks the records in commit order behind a cursor kept in
//! the store ([`export::CURSOR`]) under a lease, so a restart resumes where it stopped, and of
//! several collectors sharing a PostgreSQL database exactly one exports at a time. A request's
//! cursor is saved once the endpoint has taken it: nothing is exported twice in normal operation,
//! and after a crash at most the request that was in flight is sent again (its spans keep their
//! ids, so receivers that key spans by id keep one copy). While the endpoint is down the exporter
//! waits with backoff and sends the same spans again; the store holds them meanwhile.
//!
//! [`config`] reads the settings, [`span`] turns a capture into a span, [`trace_context`] places
//! it in the caller's trace, [`transport`] sends a request over HTTP or gRPC, [`export`] is the
//! loop.

pub mod config;
pub mod export;
pub mod span;
pub mod trace_context;
pub mod transport;

pub use config::{ExportConfig, NonLlm, OtlpInputs, Protocol};
pub use export::{run, Exporter};
