//! A verdict as an Arize Phoenix span annotation: when the OpenTelemetry export sends spans to
//! Phoenix over HTTP, each verdict is posted to `POST /v1/span_annotations` on the capture's span
//! (whose id the export derives from the capture id), named `truthtable.verdict`, one per engine
//! (Phoenix keeps the latest per name and identifier; the store keeps every verdict).
//!
//! The span may reach Phoenix after the verdict: Phoenix then answers 404 and the annotation is
//! posted again with backoff, for up to [`GIVE_UP`]. Annotating never holds up the hand-off; it
//! is not kept across a restart (the verdict itself is, in the store).

use std::time::{Duration, Instant};

use serde_json::json;

use super::Verdict;
use crate::otlp::{ExportConfig, Protocol};

/// How long an annotation is retried before it is given up (and logged).
pub const GIVE_UP: Duration = Duration::from_secs(600);
/// The annotation's name in Phoenix.
pub const NAME: &str = "truthtable.verdict";

/// Where verdicts go in Phoenix, derived from the export settings.
#[derive(Clone)]
pub struct Annotator {
    client: reqwest::Client,
    url: String,
    headers: reqwest::header::HeaderMap,
}

impl Annotator {
    /// An annotator when export goes to an OTLP/HTTP endpoint at `…/v1/traces` (Phoenix's
    /// layout): the annotations go to `…/v1/span_annotations` with the export's headers.
    pub fn for_export(config: &ExportConfig) -> Option<Annotator> {
        if config.protocol != Protocol::HttpProtobuf {
            return None;
        }
        let base = config.url.strip_suffix("/v1/traces")?;
        let mut headers = reqwest::header::HeaderMap::new();
        for (k, v) in &config.headers {
            let name = reqwest::header::HeaderName::from_bytes(k.as_bytes()).ok()?;
            let mut value = reqwest::header::HeaderValue::from_str(v).ok()?;
            value.set_sensitive(true);
            headers.append(name, value);
        }
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .ok()?;
        Some(Annotator {
            client,
            url: format!("{base}/v1/span_annotations?sync=true"),
            headers,
        })
    }

    /// The request body for `verdict` on the span of `capture_id`.
    pub fn body(capture_id: &str, verdict: &Verdict) -> serde_json::Value {
        let span = crate::otlp::trace_context::span_context(capture_id, &Vec::new()).span_id;
        let span_id: String = span.iter().map(|b| format!("{b:02x}")).collect();
        let label = match (verdict.status, verdict.hallucination) {
            (super::verdict::VerdictStatus::Completed, Some(true)) => "hallucination",
            (super::verdict::VerdictStatus::Completed, _) => "faithful",
            (super::verdict::VerdictStatus::Failed, _) => "audit failed",
            _ => "engine error",
        };
        json!({"data": [{
            "span_id": span_id,
            "name": NAME,
            "annotator_kind": "LLM",
            "identifier": verdict.engine,
            "result": {"label": label, "score": verdict.score,
                       "explanation": verdict.reasoning.as_deref().or(verdict.error.as_deref())},
            "metadata": {"engine": verdict.engine, "grade": verdict.grade,
                         "hallucination": verdict.hallucination, "claims": verdict.claims,
                         "capture_id": capture_id, "received_at": verdict.received_at},
        }]})
    }

    /// Posts the annotation until Phoenix takes it, refuses it for good, or [`GIVE_UP`] passes.
    pub async fn annotate(self, capture_id: String, verdict: Verdict) {
        let body = Self::body(&capture_id, &verdict).to_string();
        let started = Instant::now();
        let mut wait = Duration::from_millis(250);
        loop {
            let sent = self
                .client
                .post(&self.url)
                .headers(self.headers.clone())
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await;
            let why = match sent {
                Ok(r) if r.status().is_success() => return,
                // The span is not in Phoenix yet, or Phoenix is busy or down.
                Ok(r) if r.status() == 404 || r.status() == 429 || r.status().is_server_error() => {
                    format!("Phoenix answered {}", r.status())
                }
                Ok(r) => {
                    tracing::warn!(capture = %capture_id, status = %r.status(), "Phoenix refused the verdict's span annotation");
                    return;
                }
                Err(e) => e.to_string(),
            };
            if started.elapsed() > GIVE_UP {
                tracing::warn!(capture = %capture_id, "the verdict's span annotation was not taken within {} s ({why}); the verdict stays in the store", GIVE_UP.as_secs());
                return;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(10));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_annotation_names_the_captures_span_and_carries_the_verdict() {
        let mut v = Verdict::error("grpc://e", "x".into(), true, "t".into());
        v.status = super::super::verdict::VerdictStatus::Completed;
        v.score = Some(0.2);
        v.hallucination = Some(true);
        v.error = None;
        v.reasoning = Some("why".into());
        let body = Annotator::body("cap-1", &v);
        let a = &body["data"][0];
        let span = crate::otlp::trace_context::span_context("cap-1", &Vec::new()).span_id;
        assert_eq!(a["span_id"].as_str().unwrap().len(), 16);
        assert_eq!(
            a["span_id"],
            span.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        assert_eq!(
            a["result"],
            json!({"label": "hallucination", "score": 0.2, "explanation": "why"})
        );
        assert_eq!(a["identifier"], "grpc://e");
        assert_eq!(a["name"], NAME);
    }
}
