//! What writing one capture record costs, natively: a 1 KiB and a 64 KiB response body, either
//! escape-dense JSON (`record_cost`), plain text (`record_cost text`) or the benchmark's chat
//! answer (`record_cost bench`: a little JSON around a long run of text); a second argument picks
//! one body size, a third the number of rounds. For repeatable numbers count instructions:
//! `valgrind --tool=callgrind target/release/examples/record_cost bench 1024`; to time it in V8,
//! build it with `--target wasm32-wasip1` and run it with `bench/wasi-run.mjs`.
#![allow(clippy::unwrap_used)]

use std::time::Instant;
use truthtable_filter::batcher::Bodies;
use truthtable_filter::config::Config;
use truthtable_filter::headers::HeaderBlock;
use truthtable_filter::record::{Ending, Exchange};

fn main() {
    let config = Config::parse(br#"{"audit_cluster":"a"}"#).unwrap();
    let args: Vec<String> = std::env::args().collect();
    let body_of = |size: usize| -> Vec<u8> {
        let cycle = |pattern: &[u8]| pattern.iter().cycle().copied().take(size).collect();
        match args.get(1).map(String::as_str) {
            Some("text") => cycle(b"plain words of an answer, no quotes at all here. "),
            Some("bench") => {
                let head = br#"{"id":"chatcmpl-bench","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Paris. "#;
                let tail = br#""},"finish_reason":"stop"}]}"#;
                let mut body = head.to_vec();
                body.resize(size.saturating_sub(tail.len()).max(head.len()), b'x');
                body.extend_from_slice(tail);
                body
            }
            _ => cycle(br#"{"k":"value value","n":12345},"#),
        }
    };
    let sizes: Vec<usize> = match args.get(2).and_then(|s| s.parse().ok()) {
        Some(size) => vec![size],
        None => vec![1024, 65536],
    };
    for size in sizes {
        let body = body_of(size);
        let mut ex = Exchange::new(1 << 20);
        ex.started_ns = Some(1);
        ex.request_headers = Some(HeaderBlock::from_pairs(&[
            (":method", "POST"),
            (":path", "/v1/chat/completions?stream=false"),
            (":authority", "api.example.com"),
            (":scheme", "http"),
            ("content-type", "application/json"),
            ("authorization", "Bearer sk-1"),
            ("user-agent", "bench"),
            ("x-request-id", "0123456789abcdef"),
        ]));
        ex.request_body
            .push(1024.min(size), body[..1024.min(size)].to_vec());
        ex.response_headers = Some(HeaderBlock::from_pairs(&[
            (":status", "200"),
            ("content-type", "application/json"),
            ("server", "nginx"),
        ]));
        ex.response_body.push(size, body.clone());
        ex.response_ended = true;
        let end = Ending {
            now_ns: 5_000_000,
            details: "via_upstream",
            fallback_id: "",
            amendment: None,
        };
        let mut out = Vec::with_capacity(1 << 22);
        let rounds = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(2000u32);
        let t = Instant::now();
        for _ in 0..rounds {
            out.clear();
            ex.write_record(&mut out, &end, &config, Bodies::Kept);
        }
        println!(
            "{size} B body: {:?} per record of {} B",
            t.elapsed() / rounds,
            out.len()
        );
    }
}
