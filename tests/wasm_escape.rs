//! The record writer's string escaping takes a different code path in the filter's wasm build
//! (wasm SIMD) than in the native tests (SSE2). This runs `examples/escape_check` built for
//! wasm32-wasip1 in Node's V8, where it compares the writer with serde_json on 40 000 generated
//! byte strings. scripts/test builds the example; scripts/setup installs Node.js if it is missing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

#[test]
fn the_wasm_build_escapes_strings_exactly_as_serde_json_does() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let wasm = repo.join("target/wasm32-wasip1/release/examples/escape_check.wasm");
    let build =
        "run `cargo build --release --target wasm32-wasip1 --example escape_check` or scripts/test";
    let built = std::fs::metadata(&wasm)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| panic!("no {} ({build})", wasm.display()));
    let source = std::fs::metadata(repo.join("src/json.rs"))
        .and_then(|m| m.modified())
        .unwrap();
    assert!(
        built >= source,
        "{} is older than src/json.rs ({build})",
        wasm.display()
    );
    let out = Command::new("node")
        // The flag is what Node 18 (Debian's) needs for WASI; Node 20 accepts and ignores it.
        .args([
            "--no-warnings",
            "--experimental-wasi-unstable-preview1",
            "bench/wasi-run.mjs",
        ])
        .arg(&wasm)
        .current_dir(&repo)
        .output()
        .expect("run node (scripts/setup installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "escape_check failed in V8:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("40000 strings written as serde_json writes them, with wasm SIMD"),
        "unexpected output: {stdout}"
    );
}
