//! OpenTelemetry export through the whole path: clients talk to an OpenAI-shaped upstream through
//! a real Envoy running the built filter, the collector stores each exchange and exports it, and a
//! real Arize Phoenix shows it, read back through Phoenix's REST API. A streamed chat answer, a
//! streamed tool call, a stream the client hangs up on and one the upstream breaks arrive with
//! question, answer, model, tokens and outcome, inside the caller's trace when the request
//! carried a `traceparent` (and under Envoy's own span when Envoy traces too), and with no secret
//! the filter redacted. Phoenix going down for a while and a collector restart in the middle of the
//! export lose no span and send none twice.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "../collector/tests/common/phoenix.rs"]
mod phoenix;

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::Response;
use common::{client, filter_config, free_port, Collector, Envoy, EnvoyOpts};
use futures_util::StreamExt;
use phoenix::{attr, Phoenix};
use serde_json::{json, Value};
use truthtable_collector::metrics::SpanCount;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";
const BEARER_CANARY: &str = "sk-otel-canary-bearer-5e1f";
const QUERY_CANARY: &str = "otel-canary-query-77aa";

fn chunk(delta: Value, finish: Value) -> String {
    let c = json!({"id": "chatcmpl-otel", "object": "chat.completion.chunk", "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    format!("data: {c}\n\n")
}

fn usage(prompt: u64, completion: u64) -> String {
    let c = json!({"id": "chatcmpl-otel", "object": "chat.completion.chunk", "model": "gpt-4o-2024-08-06",
        "choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}});
    format!("data: {c}\n\n")
}

/// An OpenAI-shaped upstream: `POST /v1/chat/completions` streams an answer, or a tool call when
/// the request offers tools; a question that says "hold" gets its first token and then waits;
/// one that says "break" gets two tokens and a broken connection.
async fn upstream() -> u16 {
    let chat = |body: Bytes| async move {
        let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let question = req["messages"]
            .as_array()
            .and_then(|m| m.last())
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default()
            .to_owned();
        let events: Vec<Result<String, std::io::Error>> = if req["tools"].is_array() {
            let call = |args: &str, first: bool| {
                let mut call = json!({"index": 0, "function": {"arguments": args}});
                if first {
                    call = json!({"index": 0, "id": "call_weather_1", "type": "function",
                        "function": {"name": "get_weather", "arguments": args}});
                }
                chunk(json!({"tool_calls": [call]}), Value::Null)
            };
            vec![
                Ok(chunk(
                    json!({"role": "assistant", "content": null}),
                    Value::Null,
                )),
                Ok(call("{\"city\":", true)),
                Ok(call("\"Paris\"}", false)),
                Ok(chunk(json!({}), json!("tool_calls"))),
                Ok(usage(60, 18)),
                Ok("data: [DONE]\n\n".to_owned()),
            ]
        } else if question.contains("break") {
            vec![
                Ok(chunk(
                    json!({"role": "assistant", "content": "Half"}),
                    Value::Null,
                )),
                Ok(chunk(json!({"content": " an"}), Value::Null)),
                Err(std::io::Error::other("the upstream dies")),
            ]
        } else {
            let mut out = vec![Ok(chunk(
                json!({"role": "assistant", "content": "Paris"}),
                Value::Null,
            ))];
            for word in [" is", " the", " capital", " of", " France."] {
                out.push(Ok(chunk(json!({"content": word}), Value::Null)));
            }
            out.push(Ok(chunk(json!({}), json!("stop"))));
            out.push(Ok(usage(42, 7)));
            out.push(Ok("data: [DONE]\n\n".to_owned()));
            out
        };
        let hold = question.contains("hold");
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
        tokio::spawn(async move {
            for (i, e) in events.into_iter().enumerate() {
                let _ = tx.send(e.map(Bytes::from)).await;
                if hold && i == 0 {
                    // Until the client hangs up.
                    tx.closed().await;
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(Body::from_stream(
                tokio_stream::wrappers::ReceiverStream::new(rx),
            ))
            .unwrap()
    };
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(chat))
        .fallback(|| async { "ok" });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

/// A collector that is not running yet, exporting to `phoenix` under `project`.
fn exporting_to(phoenix: &Phoenix, project: &str, args: &[&str]) -> Collector {
    let mut c = Collector::down(None);
    c.env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), phoenix.base()),
        (
            "OTEL_RESOURCE_ATTRIBUTES".into(),
            format!("openinference.project.name={project}"),
        ),
    ];
    c.args = args.iter().map(|a| (*a).to_owned()).collect();
    c
}

/// What these tests ask of the collector beyond starting and stopping it.
impl Collector {
    /// Stops as SIGTERM does; returns the spans this run exported.
    async fn stop_exported(&mut self) -> u64 {
        self.stop()
            .await
            .map(|state| state.metrics.otlp_count(SpanCount::Exported))
            .unwrap_or_default()
    }

    fn count(&self, what: SpanCount) -> u64 {
        self.state()
            .map(|state| state.metrics.otlp_count(what))
            .unwrap_or_default()
    }

    async fn stored(&self) -> usize {
        let url = format!("http://127.0.0.1:{}/v1/captures?limit=1000", self.port);
        let list: Value = client()
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        list["captures"].as_array().map(Vec::len).unwrap_or(0)
    }

    async fn wait_stored(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.stored().await < n {
            assert!(
                Instant::now() < deadline,
                "the collector holds fewer than {n}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn chat(question: &str) -> Value {
    json!({"model": "gpt-4o", "stream": true, "stream_options": {"include_usage": true},
        "messages": [
            {"role": "system", "content": "Answer only from the retrieved passage."},
            {"role": "user", "content": question}],
        "documents": [{"title": "france.txt", "text": "Paris is the capital of France."}]})
}

/// The span whose `input.value` is `question`.
fn span_asking<'a>(spans: &'a [Value], question: &str) -> &'a Value {
    spans
        .iter()
        .find(|s| attr(s, "input.value") == question)
        .unwrap_or_else(|| panic!("no span asks {question:?} among {spans:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_calls_arrive_in_phoenix_with_question_answer_model_tokens_and_outcome() {
    let phoenix = Phoenix::shared();
    let project = format!("e2e-{}", std::process::id());
    let mut collector = exporting_to(phoenix, &project, &[]);
    collector.start().await;
    let filter = filter_config("");
    let envoy = Envoy::start(EnvoyOpts {
        upstream: upstream().await,
        audit: collector.port,
        filter: Some(&filter),
        workers: 2,
    });
    let http = client();
    let url = envoy.url(&format!("/v1/chat/completions?api-key={QUERY_CANARY}"));

    // A streamed answer, in the caller's trace, with credentials the filter redacts.
    let resp = http
        .post(&url)
        .header("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01"))
        .header("tracestate", "app=checkout")
        .bearer_auth(BEARER_CANARY)
        .json(&chat("What is the capital of France?"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");

    // A streamed tool call.
    let mut tools = chat("What is the weather in Paris?");
    tools["tools"] = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let resp = http.post(&url).json(&tools).send().await.unwrap();
    resp.text().await.unwrap();

    // The client hangs up after the first token.
    let resp = http
        .post(&url)
        .json(&chat("Please hold: what is the capital of Italy?"))
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(
        String::from_utf8_lossy(&first).contains("Paris"),
        "the first token"
    );
    drop(stream);

    // The upstream breaks the stream.
    let resp = http
        .post(&url)
        .json(&chat("Will this break?"))
        .send()
        .await
        .unwrap();
    let _ = resp.bytes().await;

    // Not an LLM call.
    let _ = http
        .get(envoy.url("/healthz"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await;

    let spans = phoenix
        .wait_spans(&project, 5, Duration::from_secs(60))
        .await;
    assert_eq!(spans.len(), 5, "{spans:#?}");

    let s = span_asking(&spans, "What is the capital of France?");
    assert_eq!(s["name"], "chat gpt-4o");
    assert_eq!(s["span_kind"], "LLM");
    assert_eq!(attr(s, "output.value"), "Paris is the capital of France.");
    assert_eq!(attr(s, "llm.model_name"), "gpt-4o-2024-08-06");
    assert_eq!(attr(s, "gen_ai.request.model"), "gpt-4o");
    assert_eq!(attr(s, "gen_ai.response.model"), "gpt-4o-2024-08-06");
    assert_eq!(attr(s, "gen_ai.provider.name"), "openai");
    assert_eq!(attr(s, "gen_ai.operation.name"), "chat");
    assert_eq!(attr(s, "gen_ai.usage.input_tokens"), 42);
    assert_eq!(attr(s, "gen_ai.usage.output_tokens"), 7);
    assert_eq!(attr(s, "llm.token_count.prompt"), 42);
    assert_eq!(attr(s, "llm.token_count.completion"), 7);
    assert_eq!(attr(s, "gen_ai.response.finish_reasons"), &json!(["stop"]));
    assert_eq!(attr(s, "truthtable.capture.outcome"), "complete");
    assert_eq!(attr(s, "truthtable.audit.streamed"), true);
    assert_eq!(attr(s, "truthtable.audit.answer_complete"), true);
    assert_eq!(attr(s, "http.response.status_code"), 200);
    assert_eq!(attr(s, "url.path"), "/v1/chat/completions");
    assert_eq!(
        attr(s, "retrieval.documents.0.document.content"),
        "Paris is the capital of France."
    );
    let input: Value =
        serde_json::from_str(attr(s, "gen_ai.input.messages").as_str().unwrap()).unwrap();
    assert_eq!(
        input[1],
        json!({"role": "user", "parts": [{"type": "text", "content": "What is the capital of France?"}]})
    );
    // Inside the caller's trace, a child of its span.
    assert_eq!(s["context"]["trace_id"], TRACE_ID);
    assert_eq!(s["parent_id"], PARENT_ID);
    let capture_id = attr(s, "truthtable.capture.id")
        .as_str()
        .unwrap()
        .to_owned();
    // The span's times are the capture's.
    let stored: Value = client()
        .get(format!(
            "http://127.0.0.1:{}/v1/captures/{capture_id}",
            collector.port
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let started = stored["capture"]["started_at"].as_str().unwrap();
    assert_eq!(
        s["start_time"].as_str().unwrap()[..23],
        started[..23],
        "span start {} is the capture's {started}",
        s["start_time"]
    );

    let t = span_asking(&spans, "What is the weather in Paris?");
    let call = "llm.output_messages.0.message.tool_calls.0.tool_call";
    assert_eq!(attr(t, &format!("{call}.function.name")), "get_weather");
    assert_eq!(
        attr(t, &format!("{call}.function.arguments")),
        "{\"city\":\"Paris\"}"
    );
    assert_eq!(attr(t, &format!("{call}.id")), "call_weather_1");
    assert_eq!(
        attr(t, "gen_ai.response.finish_reasons"),
        &json!(["tool_calls"])
    );
    assert_eq!(attr(t, "gen_ai.usage.output_tokens"), 18);
    let output: Value =
        serde_json::from_str(attr(t, "gen_ai.output.messages").as_str().unwrap()).unwrap();
    assert_eq!(
        output[0]["parts"][0],
        json!({"type": "tool_call", "id": "call_weather_1", "name": "get_weather", "arguments": {"city": "Paris"}})
    );
    assert_ne!(t["context"]["trace_id"], TRACE_ID, "a trace of its own");
    assert!(t["parent_id"].is_null());

    let a = span_asking(&spans, "Please hold: what is the capital of Italy?");
    assert_eq!(attr(a, "truthtable.capture.outcome"), "client_aborted");
    assert_eq!(attr(a, "truthtable.audit.answer_complete"), false);
    assert_eq!(a["status_code"], "UNSET");
    assert!(
        a["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "truthtable.capture.client_aborted"),
        "{a:#}"
    );

    let b = span_asking(&spans, "Will this break?");
    assert_eq!(attr(b, "truthtable.capture.outcome"), "upstream_failed");
    assert_eq!(b["status_code"], "ERROR");
    assert!(
        b["status_message"]
            .as_str()
            .unwrap()
            .starts_with("upstream_reset"),
        "{b:#}"
    );
    assert_eq!(
        attr(b, "output.value"),
        "Half an",
        "what arrived before it broke"
    );

    let h = spans
        .iter()
        .find(|s| attr(s, "url.path") == "/healthz")
        .expect("the health check as an HTTP span");
    assert_eq!(h["name"], "GET");
    assert!(attr(h, "openinference.span.kind").is_null());

    // Nothing the filter redacted is in Phoenix.
    let everything = serde_json::to_string(&spans).unwrap();
    for canary in [BEARER_CANARY, QUERY_CANARY] {
        assert!(!everything.contains(canary), "{canary} reached Phoenix");
    }
    assert_eq!(attr(s, "url.query"), "api-key=[REDACTED]");
    assert_eq!(collector.count(SpanCount::Exported), 5);
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phoenix_down_for_a_while_and_a_collector_restart_mid_export_lose_nothing_and_send_nothing_twice(
) {
    let phoenix = Phoenix::start();
    let project = format!("outage-{}", std::process::id());
    // One capture a request, so the export of the backlog takes long enough to restart in it.
    let mut collector = exporting_to(
        &phoenix,
        &project,
        &["--otlp-batch-size", "1", "--otlp-retry-max-ms", "500"],
    );
    collector.start().await;
    let filter = filter_config("");
    let envoy = Envoy::start(EnvoyOpts {
        upstream: upstream().await,
        audit: collector.port,
        filter: Some(&filter),
        workers: 2,
    });
    let http = client();
    let ask = |n: usize| {
        let (http, url) = (http.clone(), envoy.url("/v1/chat/completions"));
        async move {
            let resp = http
                .post(url)
                .json(&chat(&format!(
                    "Question {n}: what is the capital of France?"
                )))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            resp.bytes().await.unwrap();
        }
    };
    for n in 0..5 {
        ask(n).await;
    }
    phoenix
        .wait_spans(&project, 5, Duration::from_secs(30))
        .await;

    // Phoenix goes away; traffic goes on and is stored.
    phoenix.stop();
    let went_down = Instant::now();
    for n in 5..45 {
        ask(n).await;
    }
    collector.wait_stored(45).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while collector.count(SpanCount::Retried) == 0 {
        assert!(Instant::now() < deadline, "no export attempt failed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    phoenix.start_again();
    eprintln!(
        "Phoenix was down for {:.1} s",
        went_down.elapsed().as_secs_f64()
    );

    // Once it is back, the collector restarts in the middle of sending the backlog.
    let deadline = Instant::now() + Duration::from_secs(60);
    while collector.count(SpanCount::Exported) < 15 {
        assert!(Instant::now() < deadline, "the backlog did not start to go");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let before = collector.stop_exported().await;
    assert!(before < 45, "the restart came after the backlog was sent");
    collector.start().await;
    let spans = phoenix
        .wait_spans(&project, 45, Duration::from_secs(60))
        .await;
    let mut questions: Vec<String> = spans
        .iter()
        .map(|s| attr(s, "input.value").as_str().unwrap().to_owned())
        .collect();
    questions.sort();
    questions.dedup();
    assert_eq!(
        (spans.len(), questions.len()),
        (45, 45),
        "each exchange once"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = collector.count(SpanCount::Exported);
    assert_eq!(
        before + after,
        45,
        "{before} before the restart and {after} after: nothing was sent twice"
    );
    assert_eq!(collector.count(SpanCount::Failed), 0);
    collector.stop().await;
}

/// Envoy's own OpenTelemetry tracing, sending its spans to Phoenix over gRPC.
fn with_envoy_tracing(yaml: String, phoenix_grpc: u16) -> String {
    let tracing = "          stat_prefix: llm_ingress\n          tracing:\n            provider:\n              name: envoy.tracers.opentelemetry\n              typed_config:\n                \"@type\": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig\n                grpc_service:\n                  envoy_grpc: { cluster_name: phoenix_otlp }\n                  timeout: 2s\n                service_name: envoy-gateway\n";
    assert_eq!(
        yaml.matches("          stat_prefix: llm_ingress\n").count(),
        1
    );
    let mut yaml = yaml.replace("          stat_prefix: llm_ingress\n", tracing);
    yaml.push_str(&format!(
        "  - name: phoenix_otlp\n    type: STATIC\n    connect_timeout: 1s\n    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: {{ http2_protocol_options: {{}} }}\n    load_assignment:\n      cluster_name: phoenix_otlp\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {phoenix_grpc} }} }} }}\n"
    ));
    yaml
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_envoys_own_tracing_the_capture_is_a_child_of_envoys_span_in_the_same_trace() {
    const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    const PARENT: &str = "b7ad6b7169203331";
    let phoenix = Phoenix::shared();
    // Envoy names no project, so both go to Phoenix's `default` one.
    let mut collector = exporting_to(phoenix, "default", &[]);
    collector
        .env
        .retain(|(k, _)| k != "OTEL_RESOURCE_ATTRIBUTES");
    collector.start().await;
    let filter = filter_config("");
    let envoy = Envoy::try_start_with(
        EnvoyOpts {
            upstream: upstream().await,
            audit: collector.port,
            filter: Some(&filter),
            workers: 2,
        },
        |yaml| with_envoy_tracing(yaml, phoenix.grpc_port),
    )
    .unwrap_or_else(|log| panic!("Envoy with tracing did not start:\n{log}"));
    let resp = client()
        .post(envoy.url("/v1/chat/completions"))
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .json(&chat("Which trace is this in?"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap();

    // Envoy flushes its spans every few seconds.
    let deadline = Instant::now() + Duration::from_secs(60);
    let in_trace = loop {
        let spans: Vec<Value> = phoenix
            .spans("default")
            .await
            .into_iter()
            .filter(|s| s["context"]["trace_id"] == TRACE)
            .collect();
        if spans.len() >= 2 {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "the trace holds {} span(s): {spans:#?}",
            spans.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ours = in_trace
        .iter()
        .find(|s| !attr(s, "truthtable.capture.id").is_null())
        .expect("the capture's span");
    let envoys = in_trace
        .iter()
        .find(|s| attr(s, "truthtable.capture.id").is_null())
        .expect("Envoy's span");
    assert_eq!(attr(ours, "input.value"), "Which trace is this in?");
    // Envoy's span is the caller's child, and the capture's span is Envoy's: the traceparent
    // the filter captured is the one Envoy's tracing put on the request.
    assert_eq!(envoys["parent_id"], PARENT, "{envoys:#}");
    assert_eq!(ours["parent_id"], envoys["context"]["span_id"], "{ours:#}");

    // Without a traceparent from the client, Envoy starts the trace and the capture joins it.
    let resp = client()
        .post(envoy.url("/v1/chat/completions"))
        .json(&chat("Who starts this trace?"))
        .send()
        .await
        .unwrap();
    resp.text().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let spans = phoenix.spans("default").await;
        let ours = spans
            .iter()
            .find(|s| attr(s, "input.value") == "Who starts this trace?");
        let envoys = ours.and_then(|o| {
            spans.iter().find(|s| {
                s["context"]["span_id"] == o["parent_id"]
                    && attr(s, "truthtable.capture.id").is_null()
            })
        });
        if let (Some(ours), Some(envoys)) = (ours, envoys) {
            assert_eq!(ours["context"]["trace_id"], envoys["context"]["trace_id"]);
            assert!(envoys["parent_id"].is_null(), "Envoy's span is the root");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no capture span under an Envoy span: {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    collector.stop().await;
}
