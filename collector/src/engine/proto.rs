//! The `truthtable.audit.v1` messages, client and server trait, generated at build time from
//! `proto/truthtable/audit/v1/evaluator.proto` (see `build.rs`).

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("truthtable.audit.v1");
