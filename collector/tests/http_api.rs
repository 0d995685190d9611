//! The HTTP API over loopback, against a server running in the test process.
// This whole crate is tests; its helpers may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{get_json, metric, ndjson, post, record, when_indexed, InProcess};
use serde_json::Value;

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

#[tokio::test]
async fn ingest_then_read_back_returns_the_record_verbatim_and_its_audit_view() {
    let server = InProcess::start(None, None, None).await;
    let client = reqwest::Client::new();
    let line = format!("{}", record("r-1"));
    let resp = post(&client, &server.base, format!("{line}\n"), None).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["stored"], 1);
    assert_eq!(body["duplicates"], 0);

    let text = client
        .get(server.url("/v1/captures/r-1"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The capture is spliced in byte for byte, unknown fields included.
    assert!(
        text.starts_with(&format!("{{\"capture\":{line},")),
        "{text}"
    );
    let got: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(got["capture"]["x_future_field"]["kept"], true);
    let audit = &got["audit"];
    assert_eq!(audit["protocol"], "openai.chat");
    assert_eq!(audit["question"], "question for r-1");
    assert_eq!(audit["answer"], "answer for r-1");
    assert_eq!(audit["context"][0]["source"], "system");
    assert_eq!(audit["usage"]["output_tokens"], 4);

    // The model comes from the digest, written behind ingest.
    server.indexed().await;
    let list: Value = get_json(&client, server.url("/v1/captures")).await;
    let first = &list["captures"][0];
    assert_eq!(first["id"], "r-1");
    assert_eq!(first["method"], "POST");
    assert_eq!(first["path"], "/v1/chat/completions");
    assert_eq!(first["status"], 200);
    assert_eq!(first["outcome"], "complete");
    assert_eq!(first["duration_ms"], 1804.25);
    assert_eq!(first["model"], "gpt-4o-2024-08-06");
    assert_eq!(first["started_at"], "2026-11-25T16:10:40.186123Z");
    assert!(list["next_before"].is_null());
    server.stop().await;
}

#[tokio::test]
async fn duplicate_ids_are_stored_once_and_counted_in_metrics() {
    let server = InProcess::start(None, None, None).await;
    let client = reqwest::Client::new();
    let batch = ndjson(&ids("d", 3));
    assert_eq!(
        post(&client, &server.base, batch.clone(), None)
            .await
            .status(),
        200
    );
    let again = post(&client, &server.base, batch, None).await;
    assert_eq!(again.status(), 200, "a redelivered batch is accepted");
    let body: Value = again.json().await.unwrap();
    assert_eq!(body["stored"], 0);
    assert_eq!(body["duplicates"], 3);

    let list: Value = get_json(&client, server.url("/v1/captures")).await;
    assert_eq!(list["captures"].as_array().unwrap().len(), 3);
    assert_eq!(
        metric(
            &client,
            &server.base,
            "truthtable_collector_records_stored_total"
        )
        .await,
        3
    );
    assert_eq!(
        metric(
            &client,
            &server.base,
            "truthtable_collector_duplicates_total"
        )
        .await,
        3
    );
    assert_eq!(
        metric(&client, &server.base, "truthtable_collector_records").await,
        3
    );
    assert!(metric(&client, &server.base, "truthtable_collector_store_bytes").await > 0);
    server.stop().await;
}

#[tokio::test]
async fn bad_line_3_is_rejected_naming_it_and_nothing_of_the_request_is_stored() {
    let server = InProcess::start(None, None, None).await;
    let client = reqwest::Client::new();
    let mut bad = record("b-2");
    bad.as_object_mut().unwrap().remove("id");
    let body = format!(
        "{}\n{}\n{}\n{}\n",
        record("b-0"),
        record("b-1"),
        bad,
        record("b-3")
    );
    let resp = post(&client, &server.base, body, None).await;
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"], "line 3: missing field \"id\"");

    for id in ["b-0", "b-1", "b-3"] {
        let r = client
            .get(server.url(&format!("/v1/captures/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{id} must not be stored");
    }
    assert_eq!(
        metric(
            &client,
            &server.base,
            "truthtable_collector_rejected_requests_total{reason=\"invalid\"}"
        )
        .await,
        1
    );
    server.stop().await;
}

#[tokio::test]
async fn oversized_request_gets_413_and_stores_nothing() {
    let server = InProcess::start(None, None, Some(4096)).await;
    let client = reqwest::Client::new();
    let body = ndjson(&ids("big", 10));
    assert!(body.len() > 4096);
    let resp = post(&client, &server.base, body, None).await;
    assert_eq!(resp.status(), 413);
    let err: Value = resp.json().await.unwrap();
    assert!(err["error"].as_str().unwrap().contains("4096"));
    let small = post(&client, &server.base, ndjson(&ids("small", 1)), None).await;
    assert_eq!(small.status(), 200, "a request under the limit still works");
    let list: Value = get_json(&client, server.url("/v1/captures")).await;
    assert_eq!(list["captures"].as_array().unwrap().len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn ingest_requires_the_ingest_token_when_set() {
    let server = InProcess::start(Some("in-secret"), None, None).await;
    let client = reqwest::Client::new();
    let none = post(&client, &server.base, ndjson(&ids("a", 1)), None).await;
    assert_eq!(none.status(), 401);
    let wrong = post(&client, &server.base, ndjson(&ids("a", 1)), Some("nope")).await;
    assert_eq!(wrong.status(), 401);
    let right = post(
        &client,
        &server.base,
        ndjson(&ids("a", 1)),
        Some("in-secret"),
    )
    .await;
    assert_eq!(right.status(), 200);
    // Reads are open when only the ingest token is set.
    let read = client
        .get(server.url("/v1/captures/a-0"))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    assert_eq!(
        metric(
            &client,
            &server.base,
            "truthtable_collector_rejected_requests_total{reason=\"unauthorized\"}"
        )
        .await,
        2
    );
    server.stop().await;
}

#[tokio::test]
async fn reads_require_the_read_token_when_set() {
    let server = InProcess::start(None, Some("rd-secret"), None).await;
    let client = reqwest::Client::new();
    assert_eq!(
        post(&client, &server.base, ndjson(&ids("a", 1)), None)
            .await
            .status(),
        200
    );
    for path in ["/v1/captures", "/v1/captures/a-0"] {
        let none = client.get(server.url(path)).send().await.unwrap();
        assert_eq!(none.status(), 401, "{path}");
        let wrong = client
            .get(server.url(path))
            .bearer_auth("in-secret")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{path}");
        let right = client
            .get(server.url(path))
            .bearer_auth("rd-secret")
            .send()
            .await
            .unwrap();
        assert_eq!(right.status(), 200, "{path}");
    }
    server.stop().await;
}

#[tokio::test]
async fn paging_walks_back_through_every_record_newest_first() {
    let server = InProcess::start(None, None, None).await;
    let client = reqwest::Client::new();
    for batch in 0..3 {
        let body = ndjson(&ids(&format!("p{batch}"), 4));
        assert_eq!(post(&client, &server.base, body, None).await.status(), 200);
    }
    let mut seen = Vec::new();
    let mut url = server.url("/v1/captures?limit=5");
    loop {
        let page: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
        let captures = page["captures"].as_array().unwrap();
        assert!(captures.len() <= 5);
        seen.extend(
            captures
                .iter()
                .map(|c| c["id"].as_str().unwrap().to_owned()),
        );
        match page["next_before"].as_str() {
            Some(cursor) => url = server.url(&format!("/v1/captures?limit=5&before={cursor}")),
            None => break,
        }
    }
    let mut expected: Vec<String> = (0..3).flat_map(|b| ids(&format!("p{b}"), 4)).collect();
    expected.reverse();
    assert_eq!(seen, expected);
    server.stop().await;
}

async fn list(client: &reqwest::Client, server: &InProcess, query: &str) -> Value {
    let resp = client
        .get(server.url(&format!("/v1/captures?{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{query}");
    resp.json().await.unwrap()
}

fn listed(page: &Value) -> Vec<&str> {
    page["captures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn the_list_filters_searches_and_pages_both_ways() {
    let server = InProcess::start(None, None, None).await;
    let client = reqwest::Client::new();
    let body: String = common::captures::varied_set()
        .iter()
        .map(|r| format!("{r}\n"))
        .collect();
    assert_eq!(post(&client, &server.base, body, None).await.status(), 200);
    // `indexing` clears once the indexer, behind ingest, has written the batch's digests.
    let page = when_indexed(
        &client,
        &server.url("/v1/captures?"),
        std::time::Duration::from_secs(10),
    )
    .await;
    assert_eq!(page["indexing"], false);
    let rag = page["captures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "rag-refund-opened")
        .unwrap();
    assert_eq!(rag["protocol"], "openai.chat");
    assert_eq!(rag["model"], "gpt-4o-2024-08-06");
    assert_eq!(rag["question_preview"], "Can I return an opened item?");
    assert!(rag["answer_preview"]
        .as_str()
        .unwrap()
        .starts_with("Yes: opened items may be returned"));
    assert_eq!(
        (
            &rag["body_truncated"],
            &rag["stream_complete"],
            &rag["problem_count"]
        ),
        (&Value::Bool(false), &Value::Null, &Value::from(0))
    );
    for (query, want) in [
        (
            "q=refund&protocol=openai.chat",
            vec!["rag-refund-unopened", "rag-refund-opened"],
        ),
        ("q=REFUND%20gift", vec!["anthropic-giftcard"]),
        (
            "q=&protocol=",
            vec![
                "rag-refund-unopened",
                "failed-berlin",
                "truncated-contract",
                "ollama-weather",
                "aborted-warranty",
                "anthropic-giftcard",
                "rag-refund-opened",
            ],
        ),
        (
            "outcome=client_aborted,upstream_failed",
            vec!["failed-berlin", "aborted-warranty"],
        ),
        (
            "outcome=client_aborted&outcome=upstream_failed",
            vec!["failed-berlin", "aborted-warranty"],
        ),
        ("status=none", vec!["failed-berlin"]),
        ("status=2xx&mark=incomplete", vec!["aborted-warranty"]),
        ("mark=truncated", vec!["truncated-contract"]),
        ("mark=problems&protocol=ollama.chat", vec!["ollama-weather"]),
        (
            "model=claude-sonnet-4-5-20250929",
            vec!["anthropic-giftcard"],
        ),
        (
            "since=2026-11-25T09:05:00Z",
            vec!["rag-refund-unopened", "failed-berlin"],
        ),
        (
            "since=2026-11-25T10:04:00%2B01:00&until=2026-11-25T09:06",
            vec!["failed-berlin", "truncated-contract"],
        ),
        ("q=paris%20tool", vec!["ollama-weather"]),
        ("q=paris%20berlin", vec![]),
        ("q=get_weather", vec!["ollama-weather"]),
    ] {
        assert_eq!(
            listed(&list(&client, &server, query).await),
            want,
            "{query}"
        );
    }
    // Paging a filtered list: older pages, then back to newer ones.
    let first = list(&client, &server, "limit=2&mark=problems").await;
    assert_eq!(listed(&first), ["failed-berlin", "truncated-contract"]);
    assert_eq!(first["prev_after"], Value::Null);
    let before = first["next_before"].as_str().unwrap();
    let second = list(
        &client,
        &server,
        &format!("limit=2&mark=problems&before={before}"),
    )
    .await;
    assert_eq!(listed(&second), ["ollama-weather", "aborted-warranty"]);
    let after = second["prev_after"].as_str().unwrap();
    let back = list(
        &client,
        &server,
        &format!("limit=2&mark=problems&after={after}"),
    )
    .await;
    assert_eq!(listed(&back), ["failed-berlin", "truncated-contract"]);
    assert_eq!(back["prev_after"], Value::Null, "the newest page again");
    assert_eq!(second["next_before"], Value::Null, "the oldest page");
    server.stop().await;
}

#[tokio::test]
async fn bad_paging_parameters_get_400_with_a_json_error() {
    let server = InProcess::start(None, None, None).await;
    let client = reqwest::Client::new();
    for query in [
        "limit=0",
        "limit=1001",
        "limit=ten",
        "before=x",
        "colour=red",
        "before=3&after=2",
        "since=yesterday",
        "outcome=fine",
        "protocol=soap",
        "status=teapot",
        "mark=red",
        "q=%21%21",
        "model=a&model=b",
    ] {
        let resp = client
            .get(server.url(&format!("/v1/captures?{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{query}");
        let err: Value = resp.json().await.unwrap();
        // The message names the parameter it refuses.
        let name = query.split('=').next().unwrap();
        let message = err["error"].as_str().unwrap_or_default();
        let names_it = message.starts_with(&format!("{name}:"))
            || message.starts_with(&format!("{name} and "))
            || message.contains(&format!("\"{name}\""));
        assert!(names_it, "{query}: {message}");
    }
    server.stop().await;
}

#[tokio::test]
async fn unknown_id_is_404_and_health_is_ok() {
    let server = InProcess::start(None, None, None).await;
    let client = reqwest::Client::new();
    let resp = client
        .get(server.url("/v1/captures/missing"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let err: Value = resp.json().await.unwrap();
    assert!(err["error"].as_str().unwrap().contains("missing"));
    let health = client.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn an_unrecognisable_exchange_is_stored_with_an_unknown_audit_view() {
    let server = InProcess::start(None, None, None).await;
    let client = reqwest::Client::new();
    let mut rec = record("odd");
    rec["request"]["path"] = "/static/logo.png".into();
    rec["request"]["method"] = "GET".into();
    rec["request"]["body"] =
        serde_json::json!({"encoding": "utf8", "data": "", "size": 0, "truncated": false});
    rec["response"]["body"] = serde_json::json!({"encoding": "base64", "data": "iVBORw0KGgo=", "size": 8, "truncated": false});
    assert_eq!(
        post(&client, &server.base, format!("{rec}\n"), None)
            .await
            .status(),
        200
    );
    let got: Value = get_json(&client, server.url("/v1/captures/odd")).await;
    assert_eq!(got["audit"]["protocol"], "unknown");
    assert!(got["audit"]["reason"].is_string());
    server.stop().await;
}

/// A framed record as the filter writes one: its JSON without the bodies' encoding and data, then
/// the body bytes.
fn frame(id: &str, request: &[u8], response: &[u8]) -> Vec<u8> {
    let json = format!(
        r#"{{"schema":"truthtable.capture.v1","id":"{id}","started_at":"2026-11-25T16:10:40.186123Z","duration_ms":12.5,"outcome":"complete","detail":"via_upstream","request":{{"method":"POST","scheme":"http","authority":"a","path":"/v1/chat/completions","query":"","headers":[],"body":{{"size":{},"truncated":false}}}},"response":{{"status":200,"headers":[],"body":{{"size":{},"truncated":false}},"first_byte_ms":3.0}}}}"#,
        request.len(),
        response.len()
    );
    let req_at = json.find(r#""body":{"#).unwrap() + 8;
    let resp_at = json.rfind(r#""body":{"#).unwrap() + 8;
    truthtable_collector::frames::encode(&json, req_at, request, resp_at, response)
}

async fn post_framed(
    client: &reqwest::Client,
    server: &InProcess,
    body: Vec<u8>,
) -> reqwest::Response {
    client
        .post(server.url("/v1/captures"))
        .header("content-type", truthtable_collector::frames::CONTENT_TYPE)
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_framed_batch_is_stored_and_served_as_the_record_it_carries() {
    let server = InProcess::start(None, None, None).await;
    let client = reqwest::Client::new();
    let question =
        br#"{"model":"m","messages":[{"role":"user","content":"Capital of \"France\"?"}]}"#;
    let answer = br#"{"choices":[{"message":{"role":"assistant","content":"Paris."},"finish_reason":"stop"}]}"#;
    let body = [
        frame("f-1", question, answer),
        frame("f-2", b"", b"\x1f\x8b\x08\x00"),
    ]
    .concat();
    let resp = post_framed(&client, &server, body).await;
    assert_eq!(resp.status(), 200);
    let stored: Value = resp.json().await.unwrap();
    assert_eq!(stored["stored"], 2);

    let text = client
        .get(server.url("/v1/captures/f-1"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let expected = format!(
        "{{\"capture\":{{\"schema\":\"truthtable.capture.v1\",\"id\":\"f-1\",\"started_at\":\"2026-11-25T16:10:40.186123Z\",\"duration_ms\":12.5,\"outcome\":\"complete\",\"detail\":\"via_upstream\",\"request\":{{\"method\":\"POST\",\"scheme\":\"http\",\"authority\":\"a\",\"path\":\"/v1/chat/completions\",\"query\":\"\",\"headers\":[],\"body\":{{\"encoding\":\"utf8\",\"data\":{},\"size\":{},\"truncated\":false}}}},",
        serde_json::to_string(std::str::from_utf8(question).unwrap()).unwrap(),
        question.len()
    );
    assert!(text.starts_with(&expected), "{text}");
    let got: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(got["audit"]["question"], "Capital of \"France\"?");
    assert_eq!(got["audit"]["answer"], "Paris.");
    let binary: Value = get_json(&client, server.url("/v1/captures/f-2")).await;
    assert_eq!(binary["capture"]["response"]["body"]["encoding"], "base64");
    assert_eq!(binary["capture"]["response"]["body"]["data"], "H4sIAA==");

    // The same id again, now as NDJSON: a duplicate, however it travels.
    let line = binary["capture"].to_string();
    let resp = post(&client, &server.base, format!("{line}\n"), None).await;
    let again: Value = resp.json().await.unwrap();
    assert_eq!(
        (again["stored"].as_u64(), again["duplicates"].as_u64()),
        (Some(0), Some(1))
    );
}

#[tokio::test]
async fn a_malformed_frame_is_refused_naming_it_and_nothing_of_the_request_is_stored() {
    let server = InProcess::start(None, None, None).await;
    let client = reqwest::Client::new();
    let mut bad = frame("bad-2", b"hello", b"world");
    // The request body is announced one byte shorter than the record says.
    bad[27..37].copy_from_slice(b"0000000004");
    let body = [frame("good-1", b"hi", b"there"), bad].concat();
    let resp = post_framed(&client, &server, body).await;
    assert_eq!(resp.status(), 400);
    let error: Value = resp.json().await.unwrap();
    let message = error["error"].as_str().expect("an error message");
    assert!(message.contains("frame 2"), "{message}");
    assert!(message.contains("bad-2"), "names the record: {message}");
    let list: Value = get_json(&client, server.url("/v1/captures")).await;
    assert_eq!(
        list["captures"].as_array().unwrap().len(),
        0,
        "nothing stored"
    );
    assert_eq!(
        metric(
            &client,
            &server.base,
            "truthtable_collector_records_stored_total"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn digests_are_written_behind_ingest_and_never_hold_it_up() {
    let server = InProcess::start(None, None, None).await;
    let client = reqwest::Client::new();
    let searched = |q: &'static str| {
        let (client, url) = (client.clone(), server.url(&format!("/v1/captures?q={q}")));
        async move {
            let page = get_json(&client, url).await;
            let found: Vec<String> = page["captures"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["id"].as_str().unwrap().to_owned())
                .collect();
            found
        }
    };
    let resp = post(&client, &server.base, ndjson(&ids("idx", 3)), None).await;
    assert_eq!(resp.status(), 200);
    server.indexed().await;
    assert_eq!(searched("idx").await, ["idx-2", "idx-1", "idx-0"]);
    let written = "truthtable_collector_digests_written_total";
    assert_eq!(metric(&client, &server.base, written).await, 3);
    assert_eq!(
        metric(&client, &server.base, "truthtable_collector_index_pending").await,
        0
    );

    // The word index cannot be written any more: ingest still stores and acknowledges every
    // record (it never waits for the index); only their digests wait, and the list says so.
    rusqlite::Connection::open(&server.db)
        .unwrap()
        .execute_batch("DROP TABLE capture_search")
        .unwrap();
    let resp = post(&client, &server.base, ndjson(&ids("late", 2)), None).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["stored"], 2);
    assert_eq!(common::sqlite_count(&server.db), 5);
    let page = get_json(&client, server.url("/v1/captures")).await;
    let listed: Vec<&str> = page["captures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["late-1", "late-0", "idx-2", "idx-1", "idx-0"]);
    assert_eq!(
        page["captures"][0]["protocol"],
        Value::Null,
        "no digest yet"
    );
    assert_eq!(page["captures"][2]["protocol"], "openai.chat");
    assert_eq!(page["indexing"], true);
    assert_eq!(metric(&client, &server.base, written).await, 3);
    server.stop().await;
}
