//! What writing one capture record costs, natively: a 1 KiB and a 64 KiB response body, either
//! escape-dense JSON (`record_cost`) or plain text (`record_cost text`). For repeatable numbers
//! count instructions: `valgrind --tool=callgrind target/release/examples/record_cost`.
#![allow(clippy::unwrap_used)]

use std::time::Instant;
use truthtable_filter::config::Config;
use truthtable_filter::headers::HeaderBlock;
use truthtable_filter::record::{Ending, Exchange};

fn main() {
    let config = Config::parse(br#"{"audit_cluster":"a"}"#).unwrap();
    let pattern: &[u8] = match std::env::args().nth(1).as_deref() {
        Some("text") => b"plain words of an answer, no quotes at all here. ",
        _ => br#"{"k":"value value","n":12345},"#,
    };
    for size in [1024usize, 65536] {
        let body: Vec<u8> = pattern.iter().cycle().copied().take(size).collect();
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
        ex.request_body.push(1024, body[..1024].to_vec());
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
        };
        let mut out = Vec::with_capacity(1 << 22);
        let rounds = 2000;
        let t = Instant::now();
        for _ in 0..rounds {
            out.clear();
            ex.write_record(&mut out, &end, &config);
        }
        println!(
            "{size} B body: {:?} per record of {} B",
            t.elapsed() / rounds,
            out.len()
        );
    }
}
