//! Generates the `truthtable.audit.v1` client (and the server trait, which tests and benchmarks
//! implement) from `proto/truthtable/audit/v1/evaluator.proto`, and the `truthtable.ingest.v1`
//! service the collector serves (and its client, for tests) from
//! `proto/truthtable/ingest/v1/ingest.proto`.
//!
//! The `.proto` is parsed by `protox`, a protobuf compiler written in Rust, rather than by
//! `protoc`: the collector then builds wherever cargo does (its Dockerfile, CI, a fresh clone)
//! with no system package and no `protoc` version to keep in step.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/truthtable/audit/v1/evaluator.proto",
        "proto/truthtable/ingest/v1/ingest.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
