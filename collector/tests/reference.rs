//! `docs/reference.md` is checked against the collector's code: every command-line flag (from clap's
//! own description of the command line) and every environment variable (from the `--help` text and
//! the constants the config reads) has a row with the real default, every metric `/metrics` renders
//! is listed, and the example record is one the collector accepts. `collector/README.md` lists every
//! field of the audit view, every protocol it can name and every kind of recognition evidence. The
//! OpenTelemetry section names every attribute and event the exporter writes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use clap::CommandFactory;
use std::collections::BTreeSet;
use std::path::PathBuf;
use truthtable_collector::audit::{AuditView, EvidenceSource, Protocol};
use truthtable_collector::config::{Cli, INGEST_TOKEN_ENV, READ_TOKEN_ENV};
use truthtable_collector::metrics::{IndexGauges, Metrics, StoreGauges};
use truthtable_collector::record::CaptureRecord;
use truthtable_collector::store::StoreStats;

fn reference() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/reference.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The text of the `## title` section, up to the next `## ` heading.
fn section(doc: &str, title: &str) -> String {
    let start = doc
        .find(&format!("\n## {title}\n"))
        .unwrap_or_else(|| panic!("docs/reference.md has no `## {title}` section"));
    let body = &doc[start + title.len() + 5..];
    let end = body.find("\n## ").unwrap_or(body.len());
    body[..end].to_owned()
}

/// The row of the collector table whose first cell starts with `` `name`` (followed by a space
/// or the closing backtick).
fn row<'a>(table: &'a str, name: &str) -> Option<&'a str> {
    table.lines().find(|l| {
        l.strip_prefix(&format!("| `{name}"))
            .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('`'))
    })
}

#[test]
fn every_collector_flag_has_a_row_with_its_default() {
    let table = section(&reference(), "Collector flags and environment");
    let cmd = Cli::command();
    let mut flags = 0;
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else {
            continue;
        };
        if matches!(long, "help" | "version") {
            continue;
        }
        let flag = format!("--{long}");
        let line =
            row(&table, &flag).unwrap_or_else(|| panic!("{flag} has no row in docs/reference.md"));
        for value_name in arg.get_value_names().into_iter().flatten() {
            assert!(
                line.starts_with(&format!("| `{flag} {value_name}`")),
                "{flag}: the row should show it as `{flag} {value_name}`: {line}"
            );
        }
        let cells: Vec<&str> = line.split(" | ").collect();
        for default in arg.get_default_values() {
            let default = default.to_string_lossy();
            assert!(
                cells.get(1) == Some(&format!("`{default}`").as_str()),
                "{flag}: the default cell should be `{default}`: {line}"
            );
        }
        if let Some(env) = arg.get_env() {
            let env = env.to_string_lossy();
            assert!(row(&table, &env).is_some(), "{env} ({flag}) has no row");
        }
        flags += 1;
    }
    assert!(flags >= 3, "found only {flags} flags");
}

#[test]
fn every_collector_variable_has_a_row() {
    let table = section(&reference(), "Collector flags and environment");
    // The variables the --help text lists under "Environment:", plus those the config reads.
    let help = Cli::command()
        .get_after_help()
        .map(|h| h.to_string())
        .unwrap_or_default();
    let env_block = help
        .split("Environment:")
        .nth(1)
        .expect("--help has an Environment: section");
    let mut vars: BTreeSet<String> = env_block
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        // "  NAME  text"; continuation lines are indented further.
        .filter_map(|l| l.strip_prefix("  ").filter(|r| !r.starts_with(' ')))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| {
            !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .map(str::to_owned)
        .collect();
    vars.insert(INGEST_TOKEN_ENV.to_owned());
    vars.insert(READ_TOKEN_ENV.to_owned());
    vars.extend(
        truthtable_collector::otlp::config::VARIABLES
            .iter()
            .map(|v| (*v).to_owned()),
    );
    assert!(vars.len() >= 3, "{vars:?}");
    for var in vars {
        assert!(
            row(&table, &var).is_some(),
            "{var} has no row in docs/reference.md"
        );
    }
}

#[test]
fn every_collector_metric_is_listed() {
    let metrics = section(&reference(), "Metrics");
    let rendered = Metrics::new().render(
        StoreGauges {
            up: true,
            stats: Some(StoreStats::default()),
        },
        IndexGauges::default(),
    ) + &{
        let timing = truthtable_collector::metrics::StreamTiming::default();
        timing.observe(
            Some("m"),
            &truthtable_collector::audit::timing::Timing {
                ttft_ms: Some(1.0),
                ..Default::default()
            },
        );
        timing.render()
    };
    let mut names = BTreeSet::new();
    for line in rendered.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            let (name, kind) = (words.next().unwrap(), words.next().unwrap());
            let found = metrics.lines().any(|l| {
                (l.starts_with(&format!("| `{name}` |")) || l.starts_with(&format!("| `{name}{{")))
                    && l.contains(&format!("| {kind} |"))
            });
            assert!(found, "{name} ({kind}) has no row in docs/reference.md");
            names.insert(name.to_owned());
        }
    }
    assert!(names.len() >= 5, "{names:?}");
}

#[tokio::test]
async fn every_audit_engine_metric_is_listed() {
    use truthtable_collector::engine::{render_metrics, AuditInputs, Engine};
    let metrics = section(&reference(), "Metrics");
    let engines = Engine::all(&AuditInputs {
        engines: vec!["grpc://127.0.0.1:1".into()],
        ..AuditInputs::default()
    })
    .unwrap();
    let rendered = render_metrics(&engines);
    let mut n = 0;
    for line in rendered.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            let (name, kind) = (words.next().unwrap(), words.next().unwrap());
            assert!(
                metrics
                    .lines()
                    .any(|l| l.starts_with(&format!("| `{name}{{engine}}` | {kind} |"))),
                "{name} ({kind}) has no row in docs/reference.md"
            );
            n += 1;
        }
    }
    assert!(n >= 4, "{rendered}");
}

#[test]
fn the_example_record_is_accepted_by_the_collector() {
    let doc = section(&reference(), "Capture record");
    let start = doc.find("```json\n").expect("an example record") + 8;
    let end = start + doc[start..].find("```").expect("end of the example");
    let value: serde_json::Value = serde_json::from_str(&doc[start..end]).expect("JSON");
    let line = value.to_string();
    if let Err(e) = CaptureRecord::parse_line(&line) {
        panic!("the collector refuses the example record: {e:?}");
    }
}

fn collector_readme() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("README.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The text of the `### title` section of the collector README, up to the next heading.
fn subsection(doc: &str, title: &str) -> String {
    let start = doc
        .find(&format!("\n### {title}\n"))
        .unwrap_or_else(|| panic!("collector/README.md has no `### {title}` section"));
    let body = &doc[start + title.len() + 6..];
    let end = body.find("\n#").unwrap_or(body.len());
    body[..end].to_owned()
}

/// The first cell of every table row.
fn first_cells(section: &str) -> Vec<String> {
    section
        .lines()
        .filter_map(|l| l.strip_prefix("| "))
        .filter_map(|l| l.split(" | ").next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_audit_view_field_protocol_and_evidence_source_is_documented() {
    let readme = collector_readme();
    let fields = first_cells(&subsection(&readme, "Fields"));
    let view = serde_json::to_value(AuditView::unknown("x")).unwrap();
    let mut keys: Vec<String> = view.as_object().unwrap().keys().cloned().collect();
    keys.push("choices".to_owned()); // left out of a view with a single choice
    for key in &keys {
        assert!(
            fields.iter().any(|c| c.contains(&format!("`{key}`"))),
            "the audit view field {key} has no row in collector/README.md's Fields table"
        );
    }
    let protocols = first_cells(&subsection(&readme, "What each protocol yields"));
    for p in Protocol::ALL {
        assert!(
            protocols.iter().any(|c| c == &format!("`{}`", p.as_str())),
            "protocol {} has no row in collector/README.md",
            p.as_str()
        );
    }
    let recognition = subsection(&readme, "How the protocol is recognised");
    for source in EvidenceSource::ALL {
        let name = serde_json::to_value(source).unwrap();
        let name = name.as_str().unwrap();
        assert!(
            recognition.contains(&format!("`{name}`")),
            "evidence source {name} is not named in collector/README.md"
        );
    }
}

/// Every attribute key and event name of the spans the exporter makes of `records`, indices as `N`.
fn span_names(records: &[serde_json::Value]) -> BTreeSet<String> {
    use truthtable_collector::otlp::span::{capture_span, Converted, SpanOptions};
    let options = SpanOptions {
        non_llm: truthtable_collector::otlp::NonLlm::Http,
        value_limit: Some(8),
        stall_threshold_ms: 100,
    };
    let index = |key: &str| -> String {
        key.split('.')
            .map(|part| {
                if part.chars().all(|c| c.is_ascii_digit()) {
                    "N"
                } else {
                    part
                }
            })
            .collect::<Vec<_>>()
            .join(".")
    };
    let mut names = BTreeSet::new();
    for r in records {
        let Converted::Span(span) = capture_span(&r.to_string(), &options) else {
            panic!("no span for {r}");
        };
        names.extend(span.attributes.iter().map(|kv| index(&kv.key)));
        for e in &span.events {
            names.insert(e.name.clone());
            names.extend(e.attributes.iter().map(|kv| index(&kv.key)));
        }
    }
    names
}

/// A v1 record of a `path` exchange with these bodies.
fn exchange(
    path: &str,
    request: serde_json::Value,
    ct: &str,
    response: &str,
    outcome: &str,
) -> serde_json::Value {
    let body = |data: &str| serde_json::json!({"encoding": "utf8", "data": data, "size": data.len(), "truncated": false});
    serde_json::json!({
        "schema": "truthtable.capture.v1", "id": format!("{path}-{outcome}"),
        "started_at": "2026-11-25T16:10:40.186Z", "duration_ms": 12.5, "outcome": outcome,
        "detail": "via_upstream",
        "request": {"method": "POST", "scheme": "http", "authority": "llm:8000", "path": path,
            "query": "key=[REDACTED]", "headers": [["content-type", "application/json"], ["user-agent", "t"]],
            "body": body(&request.to_string())},
        "response": {"status": 500, "headers": [["content-type", ct]], "body": body(response), "first_byte_ms": 2.0}
    })
}

#[test]
fn every_span_attribute_and_event_is_documented() {
    use serde_json::json;
    let doc = section(&reference(), "OpenTelemetry export");
    let chat = json!({"model": "gpt-4o", "messages": [
        {"role": "system", "content": "Use the documents, all of them."},
        {"role": "tool", "tool_call_id": "call_0", "content": "18C"},
        {"role": "user", "content": "What is the weather in Paris today?"}],
        "documents": [{"title": "t", "text": "Paris is the capital."}]});
    let answer = json!({"object": "chat.completion", "model": "gpt-4o-1", "choices": [{"index": 0,
        "message": {"role": "assistant", "content": "Sunny and warm.",
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        "finish_reason": "stop"}], "usage": {"prompt_tokens": 3, "completion_tokens": 2}});
    let records = [
        exchange(
            "/v1/chat/completions",
            chat.clone(),
            "application/json",
            &answer.to_string(),
            "complete",
        ),
        exchange(
            "/v1/chat/completions",
            chat,
            "text/event-stream",
            "data: {\"choices\"",
            "client_aborted",
        ),
        exchange(
            "/v1/chat/completions",
            json!({"model": "m"}),
            "text/plain",
            "",
            "upstream_failed",
        ),
        exchange("/other", json!({"x": 1}), "text/plain", "", "complete"),
        {
            // A stream with chunk times and a stall: the timing attributes and the stall event.
            let events = [
                "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Sun\"}}]}\n\n",
                "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ny\"}}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n",
                "data: [DONE]\n\n",
            ];
            let mut r = exchange(
                "/v1/chat/completions",
                json!({"model": "m", "messages": [{"role": "user", "content": "q"}]}),
                "text/event-stream",
                &events.concat(),
                "complete",
            );
            r["response"]["chunks"] = json!([
                [3000, events[0].len()],
                [400_000, events[1].len()],
                [400_100, events[2].len()]
            ]);
            r
        },
    ];
    let names = span_names(&records);
    assert!(names.len() > 40, "{names:?}");
    for name in &names {
        assert!(
            doc.contains(&format!("`{name}`")),
            "{name} is not named in docs/reference.md's OpenTelemetry export section"
        );
    }
}

#[test]
fn every_list_parameter_and_field_is_documented_in_both_places() {
    use truthtable_collector::reads::LIST_PARAMS;
    use truthtable_collector::store::CaptureSummary;
    let doc = section(&reference(), "Collector reads and web view");
    let readme = collector_readme();
    for param in LIST_PARAMS {
        assert!(
            doc.lines()
                .any(|l| l.starts_with(&format!("| `{param}` |"))),
            "list parameter {param} has no row in docs/reference.md"
        );
        assert!(
            readme.contains(&format!("`{param}`")),
            "list parameter {param} is not named in collector/README.md"
        );
    }
    let summary = serde_json::to_value(CaptureSummary {
        id: String::new(),
        started_at: String::new(),
        method: String::new(),
        path: String::new(),
        status: None,
        outcome: String::new(),
        duration_ms: 0.0,
        model: None,
        protocol: None,
        question: None,
        answer: None,
        body_truncated: None,
        stream_complete: None,
        problems: None,
        ttft_ms: None,
        verdict_count: 0,
        flagged: None,
        lowest_score: None,
        seq: 0,
        keys: (None, None),
    })
    .unwrap();
    let mut fields: Vec<String> = summary
        .as_object()
        .unwrap()
        .keys()
        .map(|k| format!("captures[].{k}"))
        .collect();
    fields.extend(["next_before", "prev_after", "indexing"].map(str::to_owned));
    for field in fields {
        assert!(
            doc.lines()
                .any(|l| l.starts_with(&format!("| `{field}` |"))),
            "list field {field} has no row in docs/reference.md"
        );
    }
}

#[test]
fn every_web_path_the_sign_in_and_the_content_security_policy_are_documented() {
    use truthtable_collector::http::CONTENT_SECURITY_POLICY;
    use truthtable_collector::web::{session, PATHS};
    let doc = section(&reference(), "Collector reads and web view");
    for path in PATHS {
        assert!(
            doc.lines().any(|l| l.starts_with(&format!("| `{path}` |"))),
            "web path {path} has no row in docs/reference.md"
        );
    }
    assert!(
        doc.contains(&format!(
            "`Content-Security-Policy: {CONTENT_SECURITY_POLICY}`"
        )),
        "docs/reference.md does not quote the Content-Security-Policy as sent"
    );
    for name in [session::COOKIE, session::SECURE_COOKIE] {
        assert!(
            doc.contains(&format!("`{name}`")),
            "cookie {name} is not named"
        );
    }
    let hours = session::LIFETIME.as_secs() / 3600;
    assert!(
        doc.contains(&format!("valid {hours} hours")),
        "the session lifetime"
    );
    let readme = collector_readme();
    assert!(readme.contains("/ui/captures/{id}") && readme.contains("tt_session"));
}
