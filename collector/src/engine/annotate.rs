//! A verdict as an Arize Phoenix span annotation: when the OpenTelemetry export sends spans to
//! Phoenix over HTTP, each verdict is posted to `POST /v1/span_annotations` on the capture's span
//! (whose id the export derives from the capture id), named `truthtable.verdict`, one per engine
//! (Phoenix keeps the latest per name and identifier; the store keeps every verdict).
//!
//! The queue is the store: a verdict is stored marked to be annotated, in the same transaction,
//! and [`run`] posts the marked ones and unmarks each once Phoenix took it (or refused it for
//! good). So a verdict not yet annotated when the collector stops is annotated after the next
//! start; posting twice is harmless (Phoenix keeps one per name and engine). The span may reach
//! Phoenix after the verdict: Phoenix then answers 404 and the annotation is posted again with
//! backoff, for up to [`GIVE_UP`] in one run. Annotating never holds up the hand-off.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::Verdict;
use crate::http::AppState;
use crate::otlp::{ExportConfig, Protocol};
use crate::store::{CaptureStore as _, PendingAnnotation};

/// How long an annotation is retried (in one run) before it is given up (and logged).
pub const GIVE_UP: Duration = Duration::from_secs(600);
/// The annotation's name in Phoenix.
pub const NAME: &str = "truthtable.verdict";
/// Most queued verdicts read at once.
const BATCH: u32 = 256;
/// Most annotations posted at once.
const IN_FLIGHT: usize = 8;
/// How often the queue is looked at when no verdict was stored meanwhile.
const POLL: Duration = Duration::from_secs(1);
/// The first wait before an annotation is posted again; it doubles up to [`RETRY_MAX`].
const FIRST_RETRY: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// Where verdicts go in Phoenix, derived from the export settings.
#[derive(Clone)]
pub struct Annotator {
    client: reqwest::Client,
    url: String,
    headers: reqwest::header::HeaderMap,
    wake: Arc<Notify>,
}

/// How one post of an annotation ended.
enum Posted {
    /// Phoenix took it.
    Taken,
    /// Phoenix refused it for good (its status).
    Refused(reqwest::StatusCode),
    /// Not now: the span is not there yet, or Phoenix is busy or away.
    Retry(String),
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
            wake: Arc::new(Notify::new()),
        })
    }

    /// A verdict was queued: look now rather than at the next poll. Never waits.
    pub fn wake(&self) {
        self.wake.notify_one();
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

    /// Posts the annotation of a queued verdict once.
    async fn post(&self, queued: &PendingAnnotation) -> Posted {
        let verdict: Verdict = match serde_json::from_str(&queued.verdict) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(capture = %queued.capture_id, "a stored verdict does not read ({e}); it is not annotated in Phoenix");
                return Posted::Refused(reqwest::StatusCode::UNPROCESSABLE_ENTITY);
            }
        };
        let sent = self
            .client
            .post(&self.url)
            .headers(self.headers.clone())
            .header("content-type", "application/json")
            .body(Self::body(&queued.capture_id, &verdict).to_string())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => Posted::Taken,
            // The span is not in Phoenix yet, or Phoenix is busy or down.
            Ok(r) if r.status() == 404 || r.status() == 429 || r.status().is_server_error() => {
                Posted::Retry(format!("Phoenix answered {}", r.status()))
            }
            Ok(r) => Posted::Refused(r.status()),
            Err(e) => Posted::Retry(e.to_string()),
        }
    }
}

/// When a queued annotation is posted again.
struct Retry {
    first: Instant,
    next: Instant,
    wait: Duration,
}

/// Posts the queued verdicts' annotations until aborted (at shutdown; what is still queued is
/// posted after the next start).
pub async fn run(state: Arc<AppState>, annotator: Annotator) {
    let mut retries: HashMap<i64, Retry> = HashMap::new();
    loop {
        let queued = match state.store.to_annotate(BATCH).await {
            Ok(q) => q,
            Err(e) => {
                tracing::debug!(error = %e, "reading the verdicts to annotate failed");
                tokio::time::sleep(POLL).await;
                continue;
            }
        };
        let now = Instant::now();
        // Rows erased meanwhile are no longer queued.
        let rows: std::collections::HashSet<i64> = queued.iter().map(|q| q.row).collect();
        retries.retain(|row, _| rows.contains(row));
        let due: Vec<PendingAnnotation> = queued
            .into_iter()
            .filter(|q| retries.get(&q.row).is_none_or(|r| r.next <= now))
            .collect();
        let mut due = due.into_iter();
        let mut tasks = JoinSet::new();
        let mut done = Vec::new();
        loop {
            while tasks.len() < IN_FLIGHT {
                let Some(q) = due.next() else { break };
                let a = annotator.clone();
                tasks.spawn(async move {
                    let posted = a.post(&q).await;
                    (q, posted)
                });
            }
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            let Ok((q, posted)) = joined else { continue };
            match posted {
                Posted::Taken => done.push(q.row),
                Posted::Refused(status) => {
                    tracing::warn!(capture = %q.capture_id, %status, "Phoenix refused the verdict's span annotation");
                    done.push(q.row);
                }
                Posted::Retry(why) => {
                    let now = Instant::now();
                    let r = retries.entry(q.row).or_insert(Retry {
                        first: now,
                        next: now,
                        wait: FIRST_RETRY,
                    });
                    if r.first.elapsed() > GIVE_UP {
                        tracing::warn!(capture = %q.capture_id, "the verdict's span annotation was not taken within {} s ({why}); the verdict stays in the store", GIVE_UP.as_secs());
                        done.push(q.row);
                    } else {
                        r.next = now + r.wait;
                        r.wait = (r.wait * 2).min(RETRY_MAX);
                    }
                }
            }
        }
        if !done.is_empty() {
            for row in &done {
                retries.remove(row);
            }
            // Not unmarked: posted again later, which Phoenix takes as the same annotation.
            if let Err(e) = state.store.annotated(done).await {
                tracing::debug!(error = %e, "marking verdicts annotated failed");
            }
        }
        let next = retries.values().map(|r| r.next).min().map_or(POLL, |t| {
            t.saturating_duration_since(Instant::now()).min(POLL)
        });
        tokio::select! {
            _ = annotator.wake.notified() => {}
            _ = tokio::time::sleep(next) => {}
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
