//! The filter in a real Envoy, between a real client, a real upstream and a real audit receiver.
//! Each test names one behaviour a user relies on, and checks what the client, the upstream and
//! the receiver each saw.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use futures_util::StreamExt;
use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, Instant};

struct Rig {
    upstream: Upstream,
    receiver: Receiver,
    envoy: Envoy,
}

async fn rig(extra_config: &str) -> Rig {
    let upstream = Upstream::start().await;
    let receiver = Receiver::start().await;
    let config = filter_config(extra_config);
    let envoy = Envoy::start(EnvoyOpts {
        upstream: upstream.port,
        audit: receiver.port,
        filter: Some(&config),
        workers: 2,
    });
    Rig {
        upstream,
        receiver,
        envoy,
    }
}

fn plain_envoy(upstream: u16) -> Envoy {
    Envoy::start(EnvoyOpts {
        upstream,
        audit: free_port(),
        filter: None,
        workers: 2,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_exchange_is_recorded_whole_and_the_client_cannot_tell() {
    let r = rig("").await;
    let plain = plain_envoy(r.upstream.port);
    let request =
        br#"{"model":"gpt-4o","messages":[{"role":"user","content":"Capital of France?"}]}"#;
    let send = |url: String| {
        client()
            .post(url)
            .header("content-type", "application/json")
            .header("authorization", "Bearer sk-live-abcdef")
            .header("x-api-key", "key-12345")
            .header("x-test-case", "json")
            .header("x-multi", "one")
            .header("x-multi", "two")
            .body(&request[..])
            .send()
    };
    let through_filter = client_view(
        send(r.envoy.url("/v1/chat/completions?stream=false&a=1"))
            .await
            .unwrap(),
    )
    .await;
    let through_plain = client_view(
        send(plain.url("/v1/chat/completions?stream=false&a=1"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        through_filter, through_plain,
        "the client sees the same response with and without the filter"
    );

    let seen = r.upstream.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].body, seen[1].body, "the upstream got the same body");
    assert_eq!(seen[0].uri, seen[1].uri, "the upstream got the same target");
    let names = |s: &Seen| {
        s.headers
            .iter()
            .map(|(n, _)| n.clone())
            .filter(|n| n != "x-request-id")
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(&seen[0]),
        names(&seen[1]),
        "the upstream got the same headers"
    );

    let rec = r.receiver.record_of("json").await;
    assert_eq!(rec["schema"], "truthtable.capture.v1");
    assert_eq!(rec["outcome"], "complete");
    assert_eq!(rec["detail"], "via_upstream");
    let req = &rec["request"];
    assert_eq!(req["method"], "POST");
    assert_eq!(req["scheme"], "http");
    assert_eq!(req["authority"], format!("127.0.0.1:{}", r.envoy.port));
    assert_eq!(req["path"], "/v1/chat/completions");
    assert_eq!(req["query"], "stream=false&a=1");
    assert_eq!(req["body"]["data"], std::str::from_utf8(request).unwrap());
    assert_eq!(req["body"]["size"], request.len());
    assert_eq!(req["body"]["truncated"], false);
    assert_eq!(
        headers_named(req, "x-multi"),
        ["one", "two"],
        "repeated headers stay repeated"
    );
    assert_eq!(header(req, "authorization"), Some("[REDACTED]"));
    assert_eq!(header(req, "x-api-key"), Some("[REDACTED]"));
    assert!(req["headers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| !p[0].as_str().unwrap().starts_with(':')));
    // The id is the request id Envoy gave the exchange and sent upstream.
    let upstream_id = seen[0]
        .headers
        .iter()
        .find(|(n, _)| n == "x-request-id")
        .map(|(_, v)| v.as_str());
    assert_eq!(rec["id"].as_str(), upstream_id);
    assert_eq!(header(req, "x-request-id"), upstream_id);

    let resp = &rec["response"];
    assert_eq!(resp["status"], 200);
    assert_eq!(
        resp["body"]["data"].as_str().unwrap().as_bytes(),
        &through_filter.body[..]
    );
    assert_eq!(
        headers_named(resp, "set-cookie"),
        ["[REDACTED]", "[REDACTED]"]
    );
    assert_eq!(header(resp, "x-upstream"), Some("yes"));
    let first_byte = resp["first_byte_ms"].as_f64().unwrap();
    let duration = rec["duration_ms"].as_f64().unwrap();
    assert!(
        0.0 <= first_byte && first_byte <= duration,
        "{first_byte} <= {duration}"
    );
    assert!(rec["started_at"].as_str().unwrap().ends_with('Z'));

    let raw = serde_json::to_string(&rec).unwrap();
    for secret in ["sk-live-abcdef", "key-12345", "s3cr3t-one", "s3cr3t-two"] {
        assert!(!raw.contains(secret), "{secret} left the filter: {raw}");
    }
    let posts = r.receiver.state.posts.lock().unwrap().clone();
    let (headers, _) = &posts[0];
    assert!(headers.contains(&("content-type".into(), delivery_content_type().into())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_reach_the_client_while_the_upstream_is_still_streaming() {
    let r = rig("").await;
    let resp = client()
        .get(r.envoy.url("/sse-hold"))
        .header("x-test-case", "sse-hold")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    // The upstream sends its second event only when released: the first one must arrive before.
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("the first event arrived while the upstream held the stream open")
        .unwrap()
        .unwrap();
    assert_eq!(first, sse_event(0).as_bytes());
    r.upstream.release();
    let mut rest = Vec::new();
    while let Some(chunk) = stream.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    let want = format!("{}{}{}", sse_event(0), sse_event(1), "data: [DONE]\n\n");
    assert_eq!(
        format!(
            "{}{}",
            String::from_utf8_lossy(&first),
            String::from_utf8_lossy(&rest)
        ),
        want
    );

    let rec = r.receiver.record_of("sse-hold").await;
    assert_eq!(rec["outcome"], "complete");
    assert_eq!(
        rec["response"]["body"]["data"], want,
        "the raw event stream, byte for byte"
    );
    assert_eq!(
        header(&rec["response"], "content-type"),
        Some("text/event-stream")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_chunk_timing_is_the_same_with_and_without_the_filter() {
    let r = rig("").await;
    let plain = plain_envoy(r.upstream.port);
    // 10 events 100 ms apart: each must be delivered as sent, not held to the end.
    let gaps = |url: String| async move {
        let resp = client().get(url).send().await.unwrap();
        let mut stream = resp.bytes_stream();
        let mut arrivals = Vec::new();
        let start = Instant::now();
        while let Some(chunk) = stream.next().await {
            chunk.unwrap();
            arrivals.push(start.elapsed());
        }
        arrivals
    };
    let with = gaps(r.envoy.url("/sse?events=10&delay_ms=100")).await;
    let without = gaps(plain.url("/sse?events=10&delay_ms=100")).await;
    assert!(
        with.len() >= 5,
        "events arrive as separate chunks: {with:?}"
    );
    // A buffered stream would arrive in one piece at ~1 s; streamed, the first chunk comes at once.
    assert!(
        with[0] < Duration::from_millis(500),
        "first event after {:?}",
        with[0]
    );
    let spread = |a: &[Duration]| a.last().unwrap().saturating_sub(a[0]);
    assert!(
        spread(&with) > Duration::from_millis(600),
        "chunks spread over the stream: {with:?}"
    );
    assert!(spread(&without) > Duration::from_millis(600), "{without:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_says_when_each_chunk_of_a_paced_stream_passed() {
    let r = rig("").await;
    // Six events 150 ms apart, then `[DONE]` 150 ms after the last.
    let resp = client()
        .get(r.envoy.url("/sse?events=6&delay_ms=150"))
        .header("x-test-case", "paced")
        .send()
        .await
        .unwrap();
    let body = resp.bytes().await.unwrap();
    let rec = r.receiver.record_of("paced").await;
    let response = &rec["response"];
    let chunks: Vec<(u64, u64)> = response["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c[0].as_u64().unwrap(), c[1].as_u64().unwrap()))
        .collect();
    assert_eq!(response["chunks_more"], Value::Null);
    assert_eq!(
        chunks.iter().map(|c| c.1).sum::<u64>(),
        body.len() as u64,
        "every byte is in a chunk: {chunks:?}"
    );
    assert_eq!(
        chunks.len(),
        7,
        "each event passed as its own chunk: {chunks:?}"
    );
    let first_byte_us = (response["first_byte_ms"].as_f64().unwrap() * 1000.0) as u64;
    assert!(chunks[0].0 >= first_byte_us, "{chunks:?} after the headers");
    for pair in chunks.windows(2) {
        let gap_ms = (pair[1].0 - pair[0].0) as f64 / 1000.0;
        assert!(
            (100.0..400.0).contains(&gap_ms),
            "a gap of {gap_ms} ms where the upstream paused 150 ms: {chunks:?}"
        );
    }
    let duration_us = (rec["duration_ms"].as_f64().unwrap() * 1000.0) as u64;
    assert!(
        chunks[6].0 <= duration_us,
        "{chunks:?} within {duration_us} µs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_past_max_body_bytes_are_counted_not_kept_and_still_forwarded_whole() {
    let r = rig(r#""max_body_bytes": 65536"#).await;
    let n = 3 * 1024 * 1024 + 17;
    let upload = binary(300_000);
    let resp = client()
        .post(r.envoy.url(&format!("/bytes?n={n}")))
        .header("x-test-case", "big")
        .body(upload.clone())
        .send()
        .await
        .unwrap();
    let body = resp.bytes().await.unwrap();
    assert_eq!(&body[..], &binary(n)[..], "the client got every byte");
    assert_eq!(
        r.upstream.seen()[0].body,
        upload,
        "the upstream got every byte"
    );

    let rec = r.receiver.record_of("big").await;
    let resp = &rec["response"];
    assert_eq!(resp["body"]["size"], n);
    assert_eq!(resp["body"]["truncated"], true);
    assert_eq!(resp["body"]["encoding"], "base64", "not UTF-8, so base64");
    assert_eq!(body_bytes(resp), &binary(n)[..65536], "a byte-exact prefix");
    let req = &rec["request"];
    assert_eq!(req["body"]["size"], upload.len());
    assert_eq!(body_bytes(req), &upload[..65536]);
    // The dropped bytes are counted in Envoy's metrics.
    let want = (n - 65536 + upload.len() - 65536) as f64;
    let deadline = Instant::now() + Duration::from_secs(5);
    while r.envoy.metric("truthtable_body_bytes_truncated") != Some(want) {
        assert!(
            Instant::now() < deadline,
            "truncated bytes metric: {:?}",
            r.envoy.metric("truthtable_body_bytes_truncated")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_bodies_are_kept_compressed_and_byte_exact() {
    let r = rig("").await;
    let resp = client()
        .get(r.envoy.url("/gzip"))
        .header("x-test-case", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    let wire = resp.bytes().await.unwrap();
    let rec = r.receiver.record_of("gzip").await;
    assert_eq!(header(&rec["response"], "content-encoding"), Some("gzip"));
    assert_eq!(rec["response"]["body"]["encoding"], "base64");
    assert_eq!(body_bytes(&rec["response"]), &wire[..]);
    assert_eq!(rec["response"]["body"]["truncated"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_set_cookie_reaches_the_client_and_is_redacted_in_the_record() {
    let r = rig(r#""redact_headers": ["X-Tenant-Key"]"#).await;
    let resp = client()
        .get(r.envoy.url("/json"))
        .header("cookie", "sid=c00kie")
        .header("x-tenant-key", "tenant-s3cret")
        .header("x-test-case", "cookies")
        .send()
        .await
        .unwrap();
    let cookies: Vec<_> = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        cookies, SET_COOKIES,
        "both cookies reach the client unchanged"
    );
    let seen = &r.upstream.seen()[0];
    assert!(
        seen.headers
            .contains(&("cookie".into(), "sid=c00kie".into())),
        "the upstream still gets the cookie"
    );
    let rec = r.receiver.record_of("cookies").await;
    assert_eq!(
        headers_named(&rec["response"], "set-cookie"),
        ["[REDACTED]", "[REDACTED]"]
    );
    assert_eq!(header(&rec["request"], "cookie"), Some("[REDACTED]"));
    assert_eq!(header(&rec["request"], "x-tenant-key"), Some("[REDACTED]"));
    let raw = rec.to_string();
    assert!(
        !raw.contains("c00kie") && !raw.contains("tenant-s3cret") && !raw.contains("s3cr3t"),
        "{raw}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_mid_stream_leaves_a_client_aborted_record() {
    let r = rig("").await;
    let resp = client()
        .get(r.envoy.url("/sse-hold"))
        .header("x-test-case", "abort")
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    drop(stream); // hang up while the upstream is still streaming
    let rec = r.receiver.record_of("abort").await;
    r.upstream.release();
    assert_eq!(rec["outcome"], "client_aborted", "{rec:#}");
    assert_eq!(rec["response"]["status"], 200);
    assert_eq!(
        rec["response"]["body"]["data"].as_str().unwrap().as_bytes(),
        &first[..],
        "the bytes that had passed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_reset_mid_stream_leaves_an_upstream_failed_record() {
    let r = rig("").await;
    let resp = client()
        .get(r.envoy.url("/sse-reset"))
        .header("x-test-case", "reset")
        .send()
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut stream = resp.bytes_stream();
    let mut broke = false;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => got.extend_from_slice(&c),
            Err(_) => broke = true,
        }
    }
    assert!(broke, "the client sees the stream break");
    let rec = r.receiver.record_of("reset").await;
    assert_eq!(rec["outcome"], "upstream_failed", "{rec:#}");
    assert!(
        rec["detail"]
            .as_str()
            .unwrap()
            .starts_with("upstream_reset_after_response_started"),
        "{}",
        rec["detail"]
    );
    assert_eq!(
        rec["response"]["body"]["data"].as_str().unwrap().as_bytes(),
        &got[..]
    );
    assert_eq!(got, format!("{}{}", sse_event(0), sse_event(1)).as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_is_down_leaves_an_upstream_failed_record_of_envoys_reply() {
    let receiver = Receiver::start().await;
    let config = filter_config("");
    let envoy = Envoy::start(EnvoyOpts {
        upstream: free_port(),
        audit: receiver.port,
        filter: Some(&config),
        workers: 1,
    });
    let resp = client()
        .post(envoy.url("/v1/chat/completions"))
        .header("x-test-case", "down")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let body = resp.bytes().await.unwrap();
    let rec = receiver.record_of("down").await;
    assert_eq!(rec["outcome"], "upstream_failed");
    assert!(
        rec["detail"]
            .as_str()
            .unwrap()
            .starts_with("upstream_reset_before_response_started"),
        "{}",
        rec["detail"]
    );
    assert_eq!(rec["response"]["status"], 503);
    assert_eq!(
        rec["response"]["body"]["data"].as_str().unwrap().as_bytes(),
        &body[..]
    );
    assert_eq!(rec["request"]["body"]["data"], "{}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_status_and_empty_body_is_recorded() {
    let r = rig("").await;
    let c = client();
    for (i, (method, path)) in [
        ("GET", "/status?code=404"),
        ("DELETE", "/status?code=500"),
        ("HEAD", "/json"),
        ("PUT", "/status?code=204"),
        ("OPTIONS", "/nowhere"),
    ]
    .iter()
    .enumerate()
    {
        let resp = c
            .request(method.parse().unwrap(), r.envoy.url(path))
            .header("x-test-case", format!("m{i}"))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let rec = r.receiver.record_of(&format!("m{i}")).await;
        assert_eq!(rec["request"]["method"], *method);
        assert_eq!(rec["response"]["status"], status);
        assert_eq!(rec["outcome"], "complete", "{rec:#}");
        assert_eq!(rec["request"]["body"]["size"], 0);
        assert_eq!(rec["request"]["body"]["data"], "");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_outage_of_503s_then_refused_connections_loses_no_record() {
    let mut r = rig("").await;
    let c = client();
    let mut sent = 0;
    let mut send_some = async |n: usize| {
        for _ in 0..n {
            let resp = c
                .post(r.envoy.url("/json"))
                .header("x-test-case", format!("outage-{sent}"))
                .body("{}")
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "traffic flows during the outage");
            resp.bytes().await.unwrap();
            sent += 1;
        }
    };
    send_some(10).await;
    r.receiver
        .state
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    send_some(20).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    r.receiver.stop();
    send_some(20).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    r.receiver
        .state
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    r.receiver.resume().await;
    send_some(10).await;
    let records = r.receiver.wait_count(60, Duration::from_secs(20)).await;
    let mut count: HashMap<String, usize> = HashMap::new();
    for rec in &records {
        *count
            .entry(header(&rec["request"], "x-test-case").unwrap().to_owned())
            .or_default() += 1;
    }
    for i in 0..60 {
        assert_eq!(
            count.get(&format!("outage-{i}")),
            Some(&1),
            "record outage-{i} stored once"
        );
    }
    assert!(
        r.receiver
            .state
            .refused_posts
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0,
        "the 503s were seen"
    );
    assert!(r.envoy.metric("truthtable_records_retried").unwrap_or(0.0) > 0.0);
    assert!(
        r.envoy
            .metric("truthtable_delivery_failures")
            .unwrap_or(0.0)
            > 0.0
    );
    assert_eq!(r.envoy.metric("truthtable_records_dropped"), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_keeps_records_without_bodies_then_drops_and_counts_every_loss() {
    // The receiver is down; the one worker holds at most 64 KiB of records. Each exchange's
    // record is ~5 KiB whole (a 4000-byte request body) and well under 1 KiB without bodies.
    let upstream = Upstream::start().await;
    let mut receiver = Receiver::start().await;
    receiver.stop();
    let config = filter_config(r#""queue_max_bytes": 65536, "batch_max_bytes": 4096"#);
    let envoy = Envoy::start(EnvoyOpts {
        upstream: upstream.port,
        audit: receiver.port,
        filter: Some(&config),
        workers: 1,
    });
    let c = client();
    let body = "x".repeat(4000);
    let total = 150;
    for i in 0..total {
        let resp = c
            .post(envoy.url("/json"))
            .header("x-test-case", format!("q{i}"))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "capture loss never costs traffic");
        resp.bytes().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let captured = envoy.metric("truthtable_records_captured").unwrap();
    let lean = envoy.metric("truthtable_records_without_bodies").unwrap();
    let dropped = envoy.metric("truthtable_records_dropped").unwrap();
    let queued = envoy.metric("truthtable_queue_records").unwrap();
    assert!(
        lean > 0.0,
        "records that do not fit whole are kept without bodies"
    );
    assert!(dropped > 0.0, "drops, once not even that fits, are counted");
    assert_eq!(
        captured + dropped,
        total as f64,
        "every exchange is either held or counted as dropped"
    );
    assert_eq!(queued, captured);
    assert!(envoy.metric("truthtable_queue_bytes").unwrap() <= 65536.0);

    // Back up: every held record arrives; the lean ones say their bodies were not kept.
    receiver.resume().await;
    let records = receiver
        .wait_count(captured as usize, Duration::from_secs(20))
        .await;
    assert_eq!(records.len(), captured as usize);
    let without_bodies: Vec<&Value> = records
        .iter()
        .filter(|r| r["request"]["body"]["data"] == "")
        .collect();
    assert_eq!(without_bodies.len(), lean as usize);
    for r in without_bodies {
        assert_eq!(r["request"]["body"]["size"], 4000);
        assert_eq!(r["request"]["body"]["truncated"], true);
        assert_eq!(r["response"]["status"], 200);
        assert_eq!(r["outcome"], "complete");
    }
    // The first record to arrive was not written without bodies.
    let first_lean = records
        .iter()
        .position(|r| r["request"]["body"]["data"] == "")
        .unwrap();
    assert!(first_lean > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_concurrent_exchanges_are_each_recorded_exactly_once() {
    let r = rig("").await;
    let c = client();
    let total = 3000;
    let url = r.envoy.url("/json");
    let results = futures_util::stream::iter(0..total)
        .map(|i| {
            let (c, url) = (c.clone(), url.clone());
            async move {
                let resp = c
                    .post(url)
                    .header("x-test-case", format!("load-{i}"))
                    .body(format!("{{\"n\":{i}}}"))
                    .send()
                    .await
                    .unwrap();
                let status = resp.status();
                resp.bytes().await.unwrap();
                status
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    assert!(results.iter().all(|s| s.as_u16() == 200));
    let records = r.receiver.wait_count(total, Duration::from_secs(30)).await;
    let mut by_case: HashMap<String, Vec<&Value>> = HashMap::new();
    for rec in &records {
        by_case
            .entry(header(&rec["request"], "x-test-case").unwrap().to_owned())
            .or_default()
            .push(rec);
    }
    for i in 0..total {
        let got = by_case.get(&format!("load-{i}")).map_or(0, Vec::len);
        assert_eq!(got, 1, "load-{i} recorded {got} times");
        let rec = by_case[&format!("load-{i}")][0];
        assert_eq!(
            rec["request"]["body"]["data"],
            format!("{{\"n\":{i}}}"),
            "record holds its own exchange"
        );
    }
    let ids: std::collections::HashSet<&str> =
        records.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), total, "ids are unique per exchange");
    let deadline = Instant::now() + Duration::from_secs(5);
    while r.envoy.metric("truthtable_records_delivered") != Some(total as f64) {
        assert!(
            Instant::now() < deadline,
            "delivered metric {:?}",
            r.envoy.metric("truthtable_records_delivered")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        r.envoy.metric("truthtable_records_captured"),
        Some(total as f64)
    );
    assert_eq!(r.envoy.metric("truthtable_queue_records"), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_headers_and_path_are_sent_on_every_callout() {
    let r = rig(r#""audit_path": "/ingest/v1", "audit_authority": "collector.internal", "audit_headers": {"authorization": "Bearer ingest-t0ken"}"#).await;
    fetch(
        client()
            .get(r.envoy.url("/json"))
            .header("x-test-case", "callout"),
    )
    .await;
    r.receiver.record_of("callout").await;
    let posts = r.receiver.state.posts.lock().unwrap().clone();
    let (headers, _) = &posts[0];
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("authorization"), Some("Bearer ingest-t0ken"));
    assert_eq!(get("host"), Some("collector.internal"));
    assert_eq!(get("content-type"), Some(delivery_content_type()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_leaves_as_soon_as_it_is_full_not_at_the_next_flush() {
    // The tick (= flush_interval_ms) is a minute away: only a batch sent from the stream that
    // filled it can arrive within the test's few seconds.
    let r = rig(r#""batch_max_bytes": 1024, "flush_interval_ms": 60000"#).await;
    for i in 0..3 {
        fetch(
            client()
                .post(r.envoy.url("/json"))
                .header("x-test-case", format!("full-{i}"))
                .body("q".repeat(2048)),
        )
        .await;
    }
    for i in 0..3 {
        let rec = r
            .receiver
            .wait_for(Duration::from_secs(5), |rec| {
                header(&rec["request"], "x-test-case") == Some(&format!("full-{i}"))
            })
            .await;
        assert_eq!(rec["request"]["body"]["size"], 2048);
    }
    // Each record filled a batch of its own: one POST each.
    assert_eq!(r.receiver.state.posts.lock().unwrap().len(), 3);
}
