//! Which captures go to an engine, and what it is handed: the capture's audit view as an
//! `AuditRequest` (gRPC) or as JSON (webhooks). Selection is decided by the stored record alone,
//! so every collector (and every restart) selects the same captures.

use std::collections::HashMap;

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use super::proto;
use crate::audit::{AuditView, ContextSource, Protocol};
use crate::record::CaptureRecord;

/// Which captures an engine judges, beyond the default: a recognised LLM protocol and an answer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Selection {
    /// Request paths that start with one of these (any path when empty).
    pub paths: Vec<String>,
    /// Models (the view's, or the request's) equal to one of these, or starting with one that
    /// ends in `*` (any model when empty).
    pub models: Vec<String>,
    /// The share of the selected captures judged, 0 to 1; chosen by the capture id's hash, so
    /// the same captures are chosen every time.
    pub sample: f64,
}

/// Why a capture is not handed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// Its stored line no longer reads as a record.
    Unreadable(String),
    /// No LLM protocol was recognised.
    NotLlm,
    /// The view found no answer (and no tool call).
    NoAnswer,
    /// Left out by `--audit-path`.
    Path,
    /// Left out by `--audit-model`.
    Model,
    /// Left out by `--audit-sample`.
    Sampled,
}

/// A capture to hand over.
#[derive(Debug, Clone)]
pub struct Handoff {
    /// The capture id (the idempotency key).
    pub capture_id: String,
    /// Whether the whole answer was captured.
    pub answer_complete: bool,
    /// What a gRPC engine is sent.
    pub request: proto::AuditRequest,
    /// What an HTTP engine is sent: `{"capture_id", "audit"}`.
    pub json: Value,
}

/// Where `id` falls in [0, 1): the first 8 bytes of its SHA-256.
pub fn sample_point(id: &str) -> f64 {
    let hash = Sha256::digest(id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

impl Selection {
    fn model_matches(&self, view: &AuditView) -> bool {
        if self.models.is_empty() {
            return true;
        }
        let names = [view.model.as_deref(), view.request_model.as_deref()];
        self.models.iter().any(|want| {
            names
                .iter()
                .flatten()
                .any(|m| match want.strip_suffix('*') {
                    Some(prefix) => m.starts_with(prefix),
                    None => m == want,
                })
        })
    }

    /// The hand-off for a stored line, or why there is none.
    pub fn select(&self, raw: &str) -> Result<Handoff, Skip> {
        let record = CaptureRecord::parse_line(raw).map_err(|e| Skip::Unreadable(e.to_string()))?;
        if !self.paths.is_empty()
            && !self
                .paths
                .iter()
                .any(|p| record.request.path.starts_with(p))
        {
            return Err(Skip::Path);
        }
        let view = crate::digest::view_of(&record);
        if view.protocol == Protocol::Unknown {
            return Err(Skip::NotLlm);
        }
        let answered = view.answer.as_deref().is_some_and(|a| !a.trim().is_empty());
        if !answered && view.tool_calls.is_empty() {
            return Err(Skip::NoAnswer);
        }
        if !self.model_matches(&view) {
            return Err(Skip::Model);
        }
        if sample_point(&record.id) >= self.sample {
            return Err(Skip::Sampled);
        }
        Ok(handoff(&record, &view))
    }
}

/// A `ContextDocument` for each context item: its text, its field as the id (unique within the
/// request), and its source, field and name as metadata.
fn documents(view: &AuditView) -> Vec<proto::ContextDocument> {
    view.context
        .iter()
        .map(|c| {
            let mut metadata = HashMap::from([
                (
                    "source".to_owned(),
                    match c.source {
                        ContextSource::System => "system",
                        ContextSource::Tool => "tool",
                        ContextSource::Document => "document",
                    }
                    .to_owned(),
                ),
                ("field".to_owned(), c.field.clone()),
            ]);
            if let Some(name) = &c.name {
                metadata.insert("name".to_owned(), name.clone());
            }
            proto::ContextDocument {
                id: c.field.clone(),
                content: c.text.clone(),
                metadata,
                relevance_score: 0.0,
            }
        })
        .collect()
}

fn handoff(record: &CaptureRecord, view: &AuditView) -> Handoff {
    let to_json = |v: &dyn erased::Json| v.json();
    let mut metadata = HashMap::from([
        ("capture_id".to_owned(), record.id.clone()),
        ("outcome".to_owned(), record.outcome.as_str().to_owned()),
        ("protocol".to_owned(), view.protocol.as_str().to_owned()),
        ("path".to_owned(), record.request.path.clone()),
        (
            "answer_complete".to_owned(),
            view.answer_complete.to_string(),
        ),
        ("usage".to_owned(), to_json(&view.usage)),
        ("tool_calls".to_owned(), to_json(&view.tool_calls)),
    ]);
    if let Some(complete) = view.stream_complete {
        metadata.insert("stream_complete".to_owned(), complete.to_string());
    }
    if let Some(reason) = &view.finish_reason {
        metadata.insert("finish_reason".to_owned(), reason.clone());
    }
    if let Some(m) = &view.request_model {
        metadata.insert("request_model".to_owned(), m.clone());
    }
    let timestamp_ms = crate::otlp::span::unix_nanos(&record.started_at)
        .map(|ns| i64::try_from(ns / 1_000_000).unwrap_or(i64::MAX))
        .unwrap_or_default();
    let provider = crate::otlp::span::provider(view.protocol, record)
        .map(|(name, _, _)| name.to_owned())
        .unwrap_or_default();
    let request = proto::AuditRequest {
        request_id: record.id.clone(),
        query: view.question.clone().unwrap_or_default(),
        response: view.answer.clone().unwrap_or_default(),
        context: documents(view),
        model: view.model.clone().unwrap_or_default(),
        provider,
        timestamp_ms,
        metadata,
    };
    Handoff {
        capture_id: record.id.clone(),
        answer_complete: view.answer_complete,
        request,
        json: json!({"capture_id": record.id, "audit": view}),
    }
}

/// Serialising small view parts to JSON text for the metadata map.
mod erased {
    pub trait Json {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> String {
            serde_json::to_string(self).unwrap_or_default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Selection {
        Selection {
            sample: 1.0,
            ..Selection::default()
        }
    }

    fn rag_line(id: &str) -> String {
        let mut r = crate::record::tests::sample(id);
        let body = json!({"model": "gpt-4o", "messages": [
            {"role": "system", "content": "Answer from the passages."},
            {"role": "user", "content": "What is the capital of France?"}],
            "documents": [{"title": "france.txt", "text": "Paris is the capital of France."}]});
        r["request"]["body"]["data"] = json!(body.to_string());
        r["request"]["body"]["size"] = json!(body.to_string().len());
        r.to_string()
    }

    #[test]
    fn a_rag_capture_is_handed_over_with_question_answer_and_every_document() {
        let h = all().select(&rag_line("cap-1")).unwrap();
        let r = &h.request;
        assert_eq!(r.request_id, "cap-1");
        assert_eq!(r.query, "What is the capital of France?");
        assert!(!r.response.is_empty());
        assert_eq!(r.provider, "openai");
        assert!(r.timestamp_ms > 0);
        assert_eq!(r.context.len(), 2, "{:?}", r.context);
        let doc = &r.context[1];
        assert_eq!(doc.content, "Paris is the capital of France.");
        assert_eq!(doc.metadata["source"], "document");
        assert_eq!(doc.metadata["name"], "france.txt");
        assert_eq!(r.metadata["capture_id"], "cap-1");
        assert_eq!(r.metadata["outcome"], "complete");
        assert!(r.metadata.contains_key("usage"));
        assert_eq!(h.json["capture_id"], "cap-1");
        assert_eq!(
            h.json["audit"]["question"],
            "What is the capital of France?"
        );
    }

    #[test]
    fn filters_leave_captures_out_by_path_model_and_sample() {
        let line = rag_line("cap-2");
        let only = |s: Selection| s.select(&line).map(|_| ()).unwrap_err();
        assert_eq!(
            only(Selection {
                paths: vec!["/v2/".into()],
                ..all()
            }),
            Skip::Path
        );
        assert_eq!(
            only(Selection {
                models: vec!["claude*".into()],
                ..all()
            }),
            Skip::Model
        );
        assert!(Selection {
            models: vec!["gpt-4*".into()],
            paths: vec!["/v1/chat".into()],
            ..all()
        }
        .select(&line)
        .is_ok());
        assert_eq!(
            only(Selection {
                sample: 0.0,
                ..all()
            }),
            Skip::Sampled
        );
        // About half of many ids are chosen at 0.5, and the same ones each time.
        let half = Selection {
            sample: 0.5,
            ..all()
        };
        let chosen = (0..400)
            .filter(|i| sample_point(&format!("id-{i}")) < half.sample)
            .count();
        assert!((150..250).contains(&chosen), "{chosen}");
        assert_eq!(sample_point("x"), sample_point("x"));
    }

    #[test]
    fn captures_that_are_not_llm_calls_or_have_no_answer_are_skipped() {
        let mut r = crate::record::tests::sample("plain");
        r["request"]["path"] = json!("/healthz");
        r["request"]["method"] = json!("GET");
        r["request"]["body"] =
            json!({"encoding": "utf8", "data": "", "size": 0, "truncated": false});
        r["response"]["headers"] = json!([["content-type", "text/plain"]]);
        r["response"]["body"] =
            json!({"encoding": "utf8", "data": "ok", "size": 2, "truncated": false});
        assert_eq!(all().select(&r.to_string()).unwrap_err(), Skip::NotLlm);
        assert!(matches!(
            all().select("{not json").unwrap_err(),
            Skip::Unreadable(_)
        ));
    }
}
