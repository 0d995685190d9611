//! The two delivery formats carry the same record: for any exchange, the frame the filter writes
//! with `delivery_format: "framed"`, rebuilt by the collector, is byte for byte the NDJSON line the
//! filter writes with `"ndjson"` — so what is stored and served cannot tell how a record arrived.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use truthtable_collector::frames;
use truthtable_filter::batcher::Bodies;
use truthtable_filter::body::BodyTap;
use truthtable_filter::config::Config;
use truthtable_filter::headers::HeaderBlock;
use truthtable_filter::record::{Ending, Exchange, FRAME_HEADER_LEN};

fn config(format: &str, cap: usize) -> Config {
    Config::parse(
        format!(r#"{{"audit_cluster":"a","max_body_bytes":{cap},"delivery_format":"{format}"}}"#)
            .as_bytes(),
    )
    .unwrap()
}

fn feed(tap: &mut BodyTap, chunk: &[u8]) {
    let room = tap.room(chunk.len());
    if room == 0 {
        tap.count(chunk.len());
    } else {
        tap.push(chunk.len(), chunk[..room].to_vec());
    }
}

/// Bodies that are text (with multi-byte characters a cap can cut), or any bytes.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[a-zé€\"\\\\\n\t{}0-9 ]{0,40}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..40),
    ]
}

fn header() -> impl Strategy<Value = (String, String)> {
    (
        prop::sample::select(vec![
            "content-type",
            "x-note",
            "authorization",
            "x-é",
            "set-cookie",
        ]),
        "[ -~é\"\\\\]{0,16}",
    )
        .prop_map(|(n, v)| (n.to_owned(), v))
}

fn exchange(
    cap: usize,
    path: &str,
    request: &[(String, String)],
    req_chunks: &[Vec<u8>],
    response: Option<&[(String, String)]>,
    resp_chunks: &[Vec<u8>],
) -> Exchange {
    let mut ex = Exchange::new(cap);
    ex.started_ns = Some(1_795_623_040_186_123_456);
    let mut pairs = vec![
        (":method".to_owned(), "POST".to_owned()),
        (":path".to_owned(), path.to_owned()),
    ];
    pairs.extend(request.iter().cloned());
    ex.request_headers = Some(HeaderBlock::from_pairs(&pairs));
    for c in req_chunks {
        feed(&mut ex.request_body, c);
    }
    if let Some(headers) = response {
        let mut pairs = vec![(":status".to_owned(), "200".to_owned())];
        pairs.extend(headers.iter().cloned());
        ex.response_headers = Some(HeaderBlock::from_pairs(&pairs));
        ex.response_headers_ns = Some(1_795_623_040_186_123_456 + 7_250_000);
        for c in resp_chunks {
            feed(&mut ex.response_body, c);
        }
        ex.response_ended = true;
    }
    ex
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_rebuilt_frame_is_the_ndjson_line(
        cap in 0usize..48,
        path in prop::sample::select(vec!["/v1/chat/completions", "/x?key=k&a=1", "/é?q=\"x\""]),
        request in prop::collection::vec(header(), 0..4),
        req_chunks in prop::collection::vec(body(), 0..3),
        response in prop::option::of(prop::collection::vec(header(), 0..4)),
        resp_chunks in prop::collection::vec(body(), 0..3),
        shed: bool,
    ) {
        let ex = exchange(cap, path, &request, &req_chunks, response.as_deref(), &resp_chunks);
        let end = Ending { now_ns: 1_795_623_041_990_323_456, details: "via_upstream", fallback_id: "tt-1", amendment: None };
        let bodies = if shed { Bodies::Shed } else { Bodies::Kept };
        let mut ndjson = Vec::new();
        ex.write_record(&mut ndjson, &end, &config("ndjson", cap), bodies);
        let mut framed = Vec::new();
        ex.write_record(&mut framed, &end, &config("framed", cap), bodies);
        prop_assert_eq!(framed[FRAME_HEADER_LEN - 1], b'\n');

        let split = frames::split(&framed).unwrap();
        prop_assert_eq!(split.len(), 1);
        let line = split[0].to_line().unwrap();
        let rebuilt = format!("{line}\n");
        prop_assert_eq!(
            rebuilt.as_bytes(),
            &ndjson[..],
            "rebuilt:\n{}\nndjson:\n{}",
            line,
            String::from_utf8_lossy(&ndjson)
        );
        // The bodies travel raw: the frame is the JSON plus the kept bytes, no escaping.
        let kept = if shed { 0 } else {
            ex.request_body.kept().len()
                + response.as_ref().map_or(0, |_| ex.response_body.kept().len())
        };
        prop_assert_eq!(framed.len(), FRAME_HEADER_LEN + split[0].json.len() + kept + 1);
    }
}
