//! The web view: its pages over HTTP (what they hold, what they escape, the headers and the
//! sign-in they carry), and in a real headless Chromium (an auditor filtering, opening a capture
//! and reading it; signing in with the read token; a hostile capture that runs nothing).
//!
//! Screenshots of the browser tests go to `$TRUTHTABLE_SCREENSHOTS` (`scripts/screenshots` sets
//! it to `docs/screenshots/`), else to `target/web-screenshots/`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;

use common::browser::Browser;
use common::captures::{self, HOSTILE_MARK};
use common::{get_json, post, InProcess};
use serde_json::Value;
use truthtable_collector::http::CONTENT_SECURITY_POLICY;

const READ_TOKEN: &str = "rt-web-test-5b2e9c";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn store_records(server: &InProcess, records: &[Value]) {
    let body: String = records.iter().map(|r| format!("{r}\n")).collect();
    let resp = post(&client(), &server.base, body, None).await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    server.indexed().await;
}

async fn page(
    server: &InProcess,
    path: &str,
) -> (reqwest::StatusCode, reqwest::header::HeaderMap, String) {
    let resp = client().get(server.url(path)).send().await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    (status, headers, resp.text().await.unwrap())
}

/// The ids of the rows of a list page, in order.
fn row_ids(html: &str) -> Vec<String> {
    html.split("<tr data-id=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect()
}

fn screenshot_dir() -> PathBuf {
    std::env::var_os("TRUTHTABLE_SCREENSHOTS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/web-screenshots"),
        PathBuf::from,
    )
}

#[tokio::test]
async fn the_list_is_served_at_the_root_and_at_ui_with_the_apis_filters() {
    let server = InProcess::start(None, None, None).await;
    store_records(&server, &captures::varied_set()).await;
    let (status, headers, html) = page(&server, "/").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let all = row_ids(&html);
    assert_eq!(
        all,
        [
            "rag-refund-unopened",
            "failed-berlin",
            "truncated-contract",
            "ollama-weather",
            "aborted-warranty",
            "anthropic-giftcard",
            "rag-refund-opened"
        ]
    );
    assert_eq!(row_ids(&page(&server, "/ui").await.2), all);
    // The row shows the first words of question and answer, protocol, model and marks.
    assert!(html.contains("How long do I have to return an unopened item?"));
    assert!(html.contains("Unopened items are refunded to the original payment method"));
    assert!(html.contains("anthropic.messages") && html.contains("claude-sonnet-4-5-20250929"));
    assert!(
        html.contains("tool call: get_weather("),
        "a tool call stands for the answer"
    );
    assert!(html.contains("class=\"mark truncated\""));
    assert!(html.contains("class=\"mark incomplete\""));
    assert!(html.contains("class=\"mark problems\""));
    // The page asks the same reads as the JSON API and gets the same rows.
    for query in [
        "q=refund",
        "protocol=openai.chat&q=opened",
        "outcome=client_aborted",
        "status=none",
        "mark=truncated",
        "model=llama3.2",
        "since=2026-11-25T09:03&until=2026-11-25T09:05:00Z",
        "limit=2",
    ] {
        let html = page(&server, &format!("/ui?{query}")).await.2;
        let api: Value = get_json(&client(), server.url(&format!("/v1/captures?{query}"))).await;
        let api_ids: Vec<String> = api["captures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_owned())
            .collect();
        assert!(!api_ids.is_empty(), "{query}");
        assert_eq!(row_ids(&html), api_ids, "{query}");
    }
    assert_eq!(
        row_ids(&page(&server, "/ui?q=refund").await.2),
        [
            "rag-refund-unopened",
            "anthropic-giftcard",
            "rag-refund-opened"
        ]
    );
    // Paging: older and newer links carry the filters.
    let first = page(&server, "/ui?limit=3&mark=problems").await.2;
    let older = first
        .split("id=\"older\" href=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .replace("&amp;", "&");
    assert!(
        older.contains("mark=problems") && older.contains("before="),
        "{older}"
    );
    let second = page(&server, &older).await.2;
    assert!(!row_ids(&second).is_empty());
    assert!(row_ids(&second)
        .iter()
        .all(|id| !row_ids(&first).contains(id)));
    assert!(second.contains("id=\"newer\""));
    // A bad filter is shown with what is wrong, in the form.
    let (status, _, html) = page(&server, "/ui?status=teapot&q=x").await;
    assert_eq!(status, 400);
    assert!(html.contains("status: expected a status (200), a class (4xx) or none"));
    assert!(html.contains("value=\"teapot\""));
    server.stop().await;
}

#[tokio::test]
async fn a_captures_page_shows_question_context_and_answer_and_the_raw_exchange() {
    let server = InProcess::start(None, None, None).await;
    store_records(&server, &captures::varied_set()).await;
    let (status, _, html) = page(&server, "/ui/captures/rag-refund-opened").await;
    assert_eq!(status, 200);
    let section = |id: &str| {
        let start = html
            .find(&format!(" id=\"{id}\""))
            .unwrap_or_else(|| panic!("no section {id}"));
        let rest = &html[start..];
        rest[..rest.find("</section>").unwrap()].to_owned()
    };
    assert!(section("question").contains("Can I return an opened item?"));
    let context = section("context");
    assert!(context.contains("Answer only from the documents."));
    assert!(context.contains(">system<") && context.contains(">document<"));
    assert!(context.contains("Refund policy §3") && context.contains("documents[0]"));
    assert!(context.contains("Opened items may be returned within 30 days of delivery"));
    let answer = section("answer");
    assert!(answer
        .contains("opened items may be returned within 30 days of delivery, for store credit"));
    assert!(answer.contains("<code>stop</code>"));
    assert!(answer.contains("182 in · 31 out"));
    // The raw exchange: headers as stored (redacted shown as such), the gzip body decoded.
    let response = section("response");
    assert!(response.contains("decoded from <code>gzip</code>"));
    assert!(
        response.contains("&quot;chat.completion&quot;"),
        "{response}"
    );
    assert!(html.contains("<span class=\"redacted\""));
    assert!(section("request").contains("authorization"));
    assert!(html.contains("href=\"/v1/captures/rag-refund-opened\""));

    // A stream, event by event.
    let html = page(&server, "/ui/captures/anthropic-giftcard").await.2;
    assert_eq!(html.matches("<li class=\"event\"").count(), 7, "{html}");
    assert!(html.contains("event: message_stop"));
    assert!(html.contains("Gift cards are not refundable."));
    assert!(html.contains("end_turn"));
    // An abandoned stream says so.
    let html = page(&server, "/ui/captures/aborted-warranty").await.2;
    assert!(html.contains("no terminal event"));
    assert!(html.contains("Laptops carry a two-year warranty covering"));
    assert!(html.contains("stream ended without its terminal event"));
    // A tool call with its arguments.
    let html = page(&server, "/ui/captures/ollama-weather").await.2;
    assert!(html.contains("get_weather"));
    assert!(
        html.contains("&quot;city&quot;: &quot;Paris&quot;"),
        "{html}"
    );
    // No response at all.
    let html = page(&server, "/ui/captures/failed-berlin").await.2;
    assert!(html.contains("No response headers were produced"));
    // An unknown id.
    let (status, _, html) = page(&server, "/ui/captures/nope").await;
    assert_eq!(status, 404);
    assert!(html.contains("No capture is stored with id"));
    server.stop().await;
}

#[tokio::test]
async fn captured_markup_is_shown_as_text_and_no_page_may_run_script() {
    let server = InProcess::start(None, None, None).await;
    let id = "hostile-\"><img src=x onerror=alert(1)>";
    store_records(&server, &[captures::hostile(id, "2026-11-25T10:00:00Z")]).await;
    let href = format!(
        "/ui/captures/{}",
        "hostile-%22%3E%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E"
    );
    for path in ["/ui", href.as_str()] {
        let (status, headers, html) = page(&server, path).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(headers["content-security-policy"], CONTENT_SECURITY_POLICY);
        assert!(CONTENT_SECURITY_POLICY.contains("script-src 'none'"));
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["x-frame-options"], "DENY");
        assert_eq!(headers["cache-control"], "no-store");
        for raw in [
            "<script",
            "<img src=x",
            "<svg",
            "<iframe",
            "<object",
            "<style>",
            "onerror=\"",
            "onload=\"",
            "href=\"javascript",
        ] {
            assert!(
                !html.contains(raw),
                "{path}: {raw} reached the page unescaped"
            );
        }
        assert!(html.contains("&lt;script&gt;document.title="), "{path}");
    }
    // The page links to the capture by its id, escaped into one path segment.
    assert!(page(&server, "/ui")
        .await
        .2
        .contains(&format!("href=\"{href}\"")));
    // The JSON record is JSON, never HTML, with the same protections.
    let resp = client()
        .get(server.url(&format!("/v1/captures/{}", &href["/ui/captures/".len()..])))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    // Assets are compiled in and cacheable; nothing else is served from /ui/assets.
    let (status, headers, css) = page(
        &server,
        &format!("/ui/assets/{}/style.css", env!("CARGO_PKG_VERSION")),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/css; charset=utf-8");
    assert!(headers["cache-control"]
        .to_str()
        .unwrap()
        .contains("immutable"));
    assert!(css.contains(".qca"));
    assert_eq!(page(&server, "/ui/assets/1/secret.txt").await.0, 404);
    server.stop().await;
}

fn set_cookie(headers: &reqwest::header::HeaderMap) -> Vec<String> {
    headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

async fn sign_in(server: &InProcess, token: &str, extra: &[(&str, &str)]) -> reqwest::Response {
    let mut req = client().post(server.url("/ui/login")).form(&[
        ("token", token),
        ("next", "/ui/captures/rag-refund-opened?x=1"),
    ]);
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn with_a_read_token_every_page_needs_a_sign_in_that_keeps_the_token_out_of_urls() {
    let server = InProcess::start(None, Some(READ_TOKEN), None).await;
    store_records(&server, &captures::varied_set()).await;
    // Every page answers the sign-in form until then, returning to it afterwards.
    for path in ["/", "/ui", "/ui/captures/rag-refund-opened"] {
        let (status, _, html) = page(&server, path).await;
        assert_eq!(status, 401, "{path}");
        assert!(
            html.contains("<form id=\"signin\" method=\"post\" action=\"/ui/login\""),
            "{html}"
        );
        assert!(
            html.contains(&format!("name=\"next\" value=\"{path}\"")),
            "{path}"
        );
        assert!(
            !html.contains("Refund"),
            "{path} shows nothing of the captures"
        );
    }
    // A wrong token: refused, not echoed.
    let resp = sign_in(&server, "guess-123", &[]).await;
    assert_eq!(resp.status(), 401);
    assert!(set_cookie(resp.headers()).is_empty());
    let html = resp.text().await.unwrap();
    assert!(
        html.contains("That is not this collector&#39;s read token.")
            || html.contains("That is not this collector's read token.")
    );
    assert!(!html.contains("guess-123"));
    // A sign-in from another site is refused outright.
    let resp = sign_in(&server, READ_TOKEN, &[("sec-fetch-site", "cross-site")]).await;
    assert_eq!(resp.status(), 403);
    assert!(set_cookie(resp.headers()).is_empty());
    // The right token: a session cookie, HttpOnly and SameSite, that is not the token.
    let resp = sign_in(&server, READ_TOKEN, &[("sec-fetch-site", "same-origin")]).await;
    assert_eq!(resp.status(), 303);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(location, "/ui/captures/rag-refund-opened?x=1");
    let cookies = set_cookie(resp.headers());
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    let cookie = &cookies[0];
    assert!(cookie.starts_with("tt_session="));
    assert!(
        cookie.contains("; HttpOnly")
            && cookie.contains("; SameSite=Lax")
            && cookie.contains("; Path=/")
    );
    assert!(
        !cookie.contains("Secure"),
        "plain HTTP: a Secure cookie would not come back"
    );
    assert!(!cookie.contains(READ_TOKEN) && !location.contains(READ_TOKEN));
    let session = cookie.split(';').next().unwrap().to_owned();
    // The session opens the pages and the JSON reads the page links to.
    let with = |path: &str| {
        client()
            .get(server.url(path))
            .header("cookie", session.clone())
            .send()
    };
    let resp = with("/ui/captures/rag-refund-opened").await.unwrap();
    assert_eq!(resp.status(), 200);
    let html = resp.text().await.unwrap();
    assert!(html.contains("Can I return an opened item?"));
    assert!(html.contains("<form class=\"signout\" method=\"post\" action=\"/ui/logout\""));
    assert!(!html.contains(READ_TOKEN));
    assert_eq!(with("/ui?q=refund").await.unwrap().status(), 200);
    assert_eq!(
        with("/v1/captures/rag-refund-opened")
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(with("/v1/captures?q=refund").await.unwrap().status(), 200);
    // A forged or tampered session does not.
    let (name, value) = session.split_once('=').unwrap();
    let (expiry, mac) = value.split_once('.').unwrap();
    for forged in [
        format!("{name}={}.{mac}", expiry.parse::<u64>().unwrap() + 60),
        format!("{name}={expiry}.{}", mac.chars().rev().collect::<String>()),
        format!("{name}={READ_TOKEN}"),
    ] {
        let resp = client()
            .get(server.url("/ui"))
            .header("cookie", forged.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{forged}");
        let resp = client()
            .get(server.url("/v1/captures"))
            .header("cookie", forged.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{forged}");
    }
    // The bearer token still reads the API; a wrong bearer is not rescued by a cookie.
    let resp = client()
        .get(server.url("/v1/captures"))
        .bearer_auth(READ_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = client()
        .get(server.url("/v1/captures"))
        .bearer_auth("wrong")
        .header("cookie", session.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // Behind a TLS proxy the cookie is Secure, under the __Host- prefix.
    let resp = sign_in(&server, READ_TOKEN, &[("x-forwarded-proto", "https")]).await;
    let cookie = set_cookie(resp.headers()).remove(0);
    assert!(
        cookie.starts_with("__Host-tt_session=") && cookie.ends_with("; Secure"),
        "{cookie}"
    );
    // Signing out clears it; an open redirect is never followed.
    let resp = client()
        .post(server.url("/ui/logout"))
        .header("cookie", session.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/ui/login");
    let cleared = set_cookie(resp.headers());
    assert!(!cleared.is_empty(), "signing out sets the cookie to expire");
    assert!(
        cleared.iter().all(|c| c.contains("Max-Age=0")),
        "{cleared:?}"
    );
    let resp = client()
        .post(server.url("/ui/login"))
        .form(&[("token", READ_TOKEN), ("next", "//evil.example/")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["location"], "/ui");
    server.stop().await;
}

// ---- In a real browser ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_chromium_an_auditor_filters_opens_a_capture_and_reads_question_and_answer() {
    let server = InProcess::start(None, None, None).await;
    store_records(&server, &captures::varied_set()).await;
    let browser = Browser::start().await;
    browser.goto(&server.url("/")).await;
    assert_eq!(browser.title().await, "Captures · TruthTable");
    assert_eq!(browser.find_all("#captures tbody tr").await.len(), 7);
    // The page is styled by its own stylesheet (the CSP allows 'self' styles).
    let font = browser
        .eval("return getComputedStyle(document.querySelector('header.top')).display")
        .await;
    assert_eq!(font, "flex");
    browser.screenshot(&screenshot_dir().join("list.png")).await;

    // Filter: a word search and a protocol.
    browser.find("#q").await.type_text("refund").await;
    browser
        .find("select[name=protocol]")
        .await
        .choose("openai.chat")
        .await;
    browser.find("#apply").await.click().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !browser.url().await.contains("q=refund") {
        assert!(
            std::time::Instant::now() < deadline,
            "the form was not submitted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let url = browser.url().await;
    assert!(url.contains("protocol=openai.chat"), "{url}");
    let rows = browser.find_all("#captures tbody tr").await;
    assert_eq!(rows.len(), 2);
    let mut ids = Vec::new();
    for r in &rows {
        ids.push(r.attr("data-id").await.unwrap());
    }
    assert_eq!(ids, ["rag-refund-unopened", "rag-refund-opened"]);
    // The filter stays in the form.
    assert_eq!(
        browser.find("#q").await.attr("value").await.as_deref(),
        Some("refund")
    );

    // Open the older one and read it.
    browser
        .find("tr[data-id=rag-refund-opened] a.question")
        .await
        .click()
        .await;
    let q = browser.find("#question .text").await;
    assert_eq!(q.text().await, "Can I return an opened item?");
    let a = browser.text_of("#answer .text").await;
    assert!(
        a.starts_with("Yes: opened items may be returned within 30 days"),
        "{a}"
    );
    assert!(browser
        .url()
        .await
        .ends_with("/ui/captures/rag-refund-opened"));
    let docs = browser.find_all("#context article.context-item").await;
    assert_eq!(docs.len(), 3, "system message and two documents");
    assert!(browser
        .text_of("#context")
        .await
        .contains("Refund policy §4"));
    browser.resize(1440, 1250).await;
    browser
        .screenshot(&screenshot_dir().join("capture.png"))
        .await;
    // The JSON record is one click away.
    browser.find("#json").await.click().await;
    let text = browser.text_of("body").await;
    let json: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["audit"]["question"], "Can I return an opened item?");
    drop(browser);
    server.stop().await;
}

/// Gives two captures of the varied set verdicts, as the audit hand-off stores them: one
/// flagged, with a contradicted claim whose evidence is a document of its context, and one
/// judged faithful.
async fn judge(server: &InProcess) {
    use truthtable_collector::engine::verdict::{Claim, Timings, Verdict, VerdictStatus};
    use truthtable_collector::store::{CaptureStore as _, ListQuery, NewVerdict};
    let rows = server
        .state()
        .store
        .list(ListQuery {
            limit: 100,
            ..ListQuery::default()
        })
        .await
        .unwrap();
    for (id, score, flagged) in [
        ("rag-refund-opened", 0.25, true),
        ("rag-refund-unopened", 0.95, false),
    ] {
        let seq = rows.iter().find(|r| r.id == id).unwrap().seq;
        let verdict = Verdict {
            capture_id: id.into(),
            engine: "grpc://judge:50051".into(),
            status: VerdictStatus::Completed,
            score: Some(score),
            grade: Some(if flagged { "F" } else { "A" }.into()),
            hallucination: Some(flagged),
            claims: vec![Claim {
                claim: "Opened items are refunded in cash.".into(),
                status: if flagged { "contradicted" } else { "supported" }.into(),
                confidence: 0.875,
                evidence: vec![
                    "Opened items may be returned within 30 days of delivery for store credit."
                        .into(),
                ],
            }],
            reasoning: Some("The policy says store credit.".into()),
            timings: Timings::default(),
            audit_id: Some(format!("audit-{id}")),
            error: None,
            answer_complete: true,
            received_at: "2026-12-06T23:30:00Z".into(),
        };
        server
            .state()
            .store
            .add_verdict(NewVerdict {
                capture_seq: seq,
                capture_id: id.into(),
                engine: verdict.engine.clone(),
                status: "completed".into(),
                score: verdict.score,
                hallucination: verdict.hallucination,
                verdict: serde_json::to_string(&verdict).unwrap(),
                received_at: verdict.received_at.clone(),
                annotate: false,
            })
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_chromium_an_auditor_finds_flagged_answers_and_reads_each_claim_beside_the_answer() {
    let server = InProcess::start(None, None, None).await;
    store_records(&server, &captures::varied_set()).await;
    judge(&server).await;
    let browser = Browser::start().await;
    browser.goto(&server.url("/ui")).await;
    assert_eq!(
        browser
            .text_of("tr[data-id=rag-refund-opened] td.verdict")
            .await,
        "flagged 0.25"
    );
    assert_eq!(
        browser
            .text_of("tr[data-id=rag-refund-unopened] td.verdict")
            .await,
        "faithful 0.95"
    );
    assert_eq!(
        browser
            .text_of("tr[data-id=anthropic-giftcard] td.verdict")
            .await,
        "—"
    );

    // Only the flagged ones.
    browser
        .find("select[name=verdict]")
        .await
        .choose("flagged")
        .await;
    browser.find("#apply").await.click().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !browser.url().await.contains("verdict=flagged") {
        assert!(
            std::time::Instant::now() < deadline,
            "the form was not submitted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let rows = browser.find_all("#captures tbody tr").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].attr("data-id").await.as_deref(),
        Some("rag-refund-opened")
    );

    // Its page: the claim beside the answer, with its evidence and where the context holds it.
    browser
        .find("tr[data-id=rag-refund-opened] a.question")
        .await
        .click()
        .await;
    let claim = browser.find("#answer #verdicts tr.claim").await;
    assert_eq!(
        browser
            .text_of("#answer #verdicts tr.claim .claim-text")
            .await,
        "Opened items are refunded in cash."
    );
    assert_eq!(
        browser
            .text_of("#answer #verdicts tr.claim .claim-status")
            .await,
        "contradicted"
    );
    assert_eq!(browser.text_of("#answer #verdicts .score").await, "0.25");
    let evidence = browser.text_of("#answer #verdicts .evidence-item").await;
    assert!(
        evidence.starts_with("Opened items may be returned within 30 days")
            && evidence.ends_with("— document Refund policy §3"),
        "{evidence}"
    );
    let link = browser
        .find("#answer #verdicts .evidence-item a.from")
        .await;
    assert_eq!(
        link.attr("href")
            .await
            .as_deref()
            .map(|h| h.ends_with("#context-1")),
        Some(true)
    );
    assert!(browser
        .text_of("#context-1")
        .await
        .contains("Refund policy §3"));
    assert!(claim.text().await.contains("0.88"));
    drop(browser);

    // The JSON API and the list say the same.
    let got = get_json(&client(), server.url("/v1/captures/rag-refund-opened")).await;
    assert_eq!(got["verdicts"][0]["claims"][0]["status"], "contradicted");
    let list = get_json(&client(), server.url("/v1/captures?score_below=0.5")).await;
    assert_eq!(list["captures"][0]["id"], "rag-refund-opened");
    assert_eq!(list["captures"][0]["flagged"], true);
    assert_eq!(list["captures"][0]["verdict_count"], 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_chromium_signing_in_with_the_read_token_opens_the_view() {
    let server = InProcess::start(None, Some(READ_TOKEN), None).await;
    store_records(&server, &captures::varied_set()).await;
    let browser = Browser::start().await;
    browser
        .goto(&server.url("/ui/captures/anthropic-giftcard"))
        .await;
    assert_eq!(browser.title().await, "Sign in · TruthTable");
    browser
        .find("#token")
        .await
        .type_text("not-the-token")
        .await;
    browser.find("#signin button").await.click().await;
    let error = browser.text_of(".signin .error").await;
    assert!(error.contains("not this collector's read token"), "{error}");
    assert!(browser.cookies().await.is_empty());
    browser.find("#token").await.type_text(READ_TOKEN).await;
    browser.find("#signin button").await.click().await;
    // Back where the auditor was going, signed in.
    let q = browser.text_of("#question .text").await;
    assert_eq!(q, "Can I get a refund for a gift card?");
    let url = browser.url().await;
    assert!(url.ends_with("/ui/captures/anthropic-giftcard"), "{url}");
    assert!(!url.contains(READ_TOKEN));
    let cookies = browser.cookies().await;
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    assert_eq!(cookies[0]["name"], "tt_session");
    assert_eq!(cookies[0]["httpOnly"], true);
    assert_eq!(cookies[0]["sameSite"], "Lax");
    assert!(!cookies[0]["value"].as_str().unwrap().contains(READ_TOKEN));
    // No script on the page can read it.
    assert_eq!(browser.eval("return document.cookie").await, "");
    for u in browser.requested_urls().await {
        assert!(!u.contains(READ_TOKEN), "{u}");
    }
    // Signing out: the next page asks again.
    browser.find("form.signout button").await.click().await;
    browser.find("#signin").await;
    browser.goto(&server.url("/ui")).await;
    assert_eq!(browser.title().await, "Sign in · TruthTable");
    assert!(browser.cookies().await.is_empty());
    drop(browser);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_chromium_a_hostile_capture_shows_its_markup_as_text_and_runs_nothing() {
    let server = InProcess::start(None, None, None).await;
    store_records(
        &server,
        &[captures::hostile("hostile", "2026-11-25T10:00:00Z")],
    )
    .await;
    let browser = Browser::start().await;
    for (path, title) in [
        ("/ui", "Captures · TruthTable"),
        ("/ui/captures/hostile", "Capture hostile · TruthTable"),
    ] {
        browser.goto(&server.url(path)).await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(
            browser.title().await,
            title,
            "{path}: a captured script set the title"
        );
        let requested = browser.requested_urls().await;
        assert!(
            requested
                .iter()
                .all(|u| !u.contains(HOSTILE_MARK) && !u.ends_with("/x")),
            "{path}: a captured element made a request: {requested:?}"
        );
        let injected = browser
            .eval("return document.querySelectorAll('main script, main img, main svg, main iframe, main object, main style, main [onerror], main [onload]').length")
            .await;
        assert_eq!(injected, 0, "{path}: captured markup became elements");
        assert_eq!(browser.eval("return document.scripts.length").await, 0);
    }
    // On the capture's page the markup is there, as text.
    let q = browser.text_of("#question .text").await;
    assert!(q.starts_with("<script>document.title="), "{q}");
    assert!(browser
        .text_of("#answer .text")
        .await
        .contains("<svg onload="));
    assert!(browser
        .text_of("#context")
        .await
        .contains("<object data=\"javascript:"));
    assert!(browser.text_of("#request").await.contains("x-note"));
    assert!(browser
        .text_of("#response")
        .await
        .contains("<img src=x onerror="));
    // Hidden styles did not apply either: the page is visible.
    assert_eq!(
        browser
            .eval("return getComputedStyle(document.body).display")
            .await,
        "block"
    );
    drop(browser);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_chromium_a_streamed_captures_page_draws_its_arrival_with_the_stall_marked() {
    let server = InProcess::start(None, None, None).await;
    // An Anthropic stream whose events passed the filter one chunk each: the first text at
    // 520 ms, the second after a stall of 6 s (the default threshold is 5 s).
    let mut rec = captures::anthropic_stream("timed-stream", "2026-11-25T09:05:00.000000Z");
    let data = rec["response"]["body"]["data"].as_str().unwrap().to_owned();
    let events: Vec<&str> = data.split_inclusive("\n\n").collect();
    let times_ms = [301, 302, 520, 6_600, 6_601, 6_602, 6_603];
    assert_eq!(events.len(), times_ms.len());
    rec["response"]["chunks"] = events
        .iter()
        .zip(times_ms)
        .map(|(e, t)| serde_json::json!([t * 1000, e.len()]))
        .collect();
    store_records(&server, &[rec]).await;

    let browser = Browser::start().await;
    browser.goto(&server.url("/ui/captures/timed-stream")).await;
    assert_eq!(browser.text_of("#ttft").await, "520.0 ms");
    let stalls = browser.text_of("#stalls").await;
    assert!(
        stalls.contains("6080.0 ms at 520.0 ms") && stalls.contains("Gift cards are"),
        "{stalls}"
    );
    // Chromium lays the inline SVG out at its size, with the arrival drawn and the stall shaded.
    let width = browser
        .eval("return document.querySelector('svg#timeline').getBoundingClientRect().width")
        .await;
    assert_eq!(width.as_f64(), Some(640.0));
    let points = browser
        .eval("return document.querySelector('svg#timeline polyline.arrival').points.numberOfItems")
        .await;
    assert_eq!(
        points.as_u64(),
        Some(5),
        "the origin and a step per content chunk"
    );
    assert_eq!(browser.find_all("svg#timeline rect.stall").await.len(), 1);
    let fill = browser
        .eval("return getComputedStyle(document.querySelector('svg#timeline rect.stall')).fill")
        .await;
    assert_eq!(
        fill, "rgb(245, 194, 192)",
        "presentation attributes pass the CSP"
    );
    browser
        .screenshot(&screenshot_dir().join("timeline.png"))
        .await;
    // The list finds it by its TTFT, and the form keeps the choice.
    browser
        .goto(&server.url("/ui?ttft_above=500&sort=ttft"))
        .await;
    let rows = browser.find_all("#captures tbody tr").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].attr("data-id").await.as_deref(),
        Some("timed-stream")
    );
    assert_eq!(
        browser
            .find("#ttft_above")
            .await
            .attr("value")
            .await
            .as_deref(),
        Some("500")
    );
    browser.goto(&server.url("/ui?ttft_above=600")).await;
    assert!(browser.find_all("#captures tbody tr").await.is_empty());
    drop(browser);
    server.stop().await;
}
