//! A verdict as the collector keeps and shows it, whichever engine gave it, and the checks an
//! engine's answer must pass to become one. An answer that fails them becomes an engine error on
//! the capture instead (status `error`), never a verdict with made-up values.

use serde::{Deserialize, Serialize};

use super::proto;

/// Longest text kept of an engine's reasoning, a claim or a piece of evidence, in bytes.
pub const MAX_TEXT: usize = 64 * 1024;
/// Most claims kept of one verdict.
pub const MAX_CLAIMS: usize = 1000;

/// How an engine's handling of a capture ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictStatus {
    /// The engine judged the answer: score, grade and claims hold.
    Completed,
    /// The engine says its audit failed.
    Failed,
    /// The engine's answer could not be used (malformed, out of range, unknown values, too
    /// large, refused for good); `error` says why.
    Error,
    /// A webhook engine took the capture and will post its verdict later
    /// (`POST /v1/captures/{id}/verdicts`).
    Pending,
}

impl VerdictStatus {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            VerdictStatus::Completed => "completed",
            VerdictStatus::Failed => "failed",
            VerdictStatus::Error => "error",
            VerdictStatus::Pending => "pending",
        }
    }
}

/// One claim the engine checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claim {
    /// The statement taken from the answer.
    pub claim: String,
    /// `supported`, `contradicted`, `unsupported` or `partially_supported`.
    pub status: String,
    /// The engine's confidence, 0 to 1.
    pub confidence: f64,
    /// The passages of the context it rests on.
    pub evidence: Vec<String>,
}

/// The engine's own timings.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Timings {
    /// How long the engine worked on it.
    pub processing_ms: Option<i64>,
    /// When it finished, milliseconds since the Unix epoch, by the engine's clock.
    pub completed_at_ms: Option<i64>,
    /// Its steps' durations by name (`decompose_ms`, …).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub steps: std::collections::BTreeMap<String, i64>,
}

/// A verdict: what `verdicts` in `GET /v1/captures/{id}` holds, one per engine answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// The capture it judges (set when it is stored, so its log entry names the capture).
    #[serde(default)]
    pub capture_id: String,
    /// The engine, as `--audit-engine` names it (without credentials).
    pub engine: String,
    /// How it ended.
    pub status: VerdictStatus,
    /// Faithfulness, 0 (unfaithful) to 1 (fully faithful).
    pub score: Option<f64>,
    /// The engine's grade (`A` … `F`).
    pub grade: Option<String>,
    /// Whether the engine found a hallucination.
    pub hallucination: Option<bool>,
    /// Each claim it checked.
    pub claims: Vec<Claim>,
    /// Its reasoning, as it gave it.
    pub reasoning: Option<String>,
    /// Its timings.
    pub timings: Timings,
    /// The engine's id for the audit.
    pub audit_id: Option<String>,
    /// Why the engine's answer could not be used (status `error`) or why it failed.
    pub error: Option<String>,
    /// The answer was cut off (a stream that ended early) when it was handed over.
    pub answer_complete: bool,
    /// When the collector received it (RFC 3339, UTC).
    pub received_at: String,
}

impl Verdict {
    /// An engine error on the capture: the answer could not be used.
    pub fn error(engine: &str, why: String, answer_complete: bool, received_at: String) -> Self {
        Verdict {
            capture_id: String::new(),
            engine: engine.to_owned(),
            status: VerdictStatus::Error,
            score: None,
            grade: None,
            hallucination: None,
            claims: Vec::new(),
            reasoning: None,
            timings: Timings::default(),
            audit_id: None,
            error: Some(why),
            answer_complete,
            received_at,
        }
    }

    /// A webhook engine took the capture; its verdict comes later.
    pub fn pending(engine: &str, answer_complete: bool, received_at: String) -> Self {
        Verdict {
            status: VerdictStatus::Pending,
            error: None,
            ..Verdict::error(engine, String::new(), answer_complete, received_at)
        }
    }

    /// True when the engine flagged the answer: a hallucination found.
    pub fn flagged(&self) -> bool {
        self.hallucination == Some(true)
    }
}

/// Why an engine's answer is not a verdict.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadAnswer(pub String);

fn unit(what: &str, v: f32) -> Result<f64, BadAnswer> {
    let v = f64::from(v);
    if v.is_finite() && (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(BadAnswer(format!("{what} {v} is not between 0 and 1")))
    }
}

fn text(what: &str, s: String) -> Result<String, BadAnswer> {
    if s.len() > MAX_TEXT {
        return Err(BadAnswer(format!(
            "{what} is {} bytes, more than {MAX_TEXT}",
            s.len()
        )));
    }
    Ok(s)
}

/// The grade's letter.
fn grade(value: i32) -> Result<Option<String>, BadAnswer> {
    use proto::TrustGrade as G;
    Ok(match G::try_from(value) {
        Ok(G::Unspecified) => None,
        Ok(G::A) => Some("A".into()),
        Ok(G::B) => Some("B".into()),
        Ok(G::C) => Some("C".into()),
        Ok(G::D) => Some("D".into()),
        Ok(G::F) => Some("F".into()),
        Err(_) => return Err(BadAnswer(format!("unknown grade {value}"))),
    })
}

fn claim_status(value: i32) -> Result<&'static str, BadAnswer> {
    use proto::VerificationStatus as V;
    match V::try_from(value) {
        Ok(V::Supported) => Ok("supported"),
        Ok(V::Contradicted) => Ok("contradicted"),
        Ok(V::Unsupported) => Ok("unsupported"),
        Ok(V::PartiallySupported) => Ok("partially_supported"),
        Ok(V::Unspecified) => Ok("unspecified"),
        Err(_) => Err(BadAnswer(format!("unknown claim status {value}"))),
    }
}

/// A `COMPLETED` or `FAILED` audit result as a verdict; anything out of range or unknown is a
/// [`BadAnswer`].
pub fn from_result(
    engine: &str,
    r: proto::AuditResult,
    answer_complete: bool,
    received_at: String,
) -> Result<Verdict, BadAnswer> {
    use proto::AuditStatus as S;
    let status = match S::try_from(r.status) {
        Ok(S::Completed) => VerdictStatus::Completed,
        Ok(S::Failed) => VerdictStatus::Failed,
        Ok(other) => {
            return Err(BadAnswer(format!(
                "the audit is {} (not finished)",
                other.as_str_name()
            )))
        }
        Err(_) => return Err(BadAnswer(format!("unknown audit status {}", r.status))),
    };
    let timings = Timings {
        processing_ms: (r.processing_time_ms != 0).then_some(r.processing_time_ms),
        completed_at_ms: (r.completed_at_ms != 0).then_some(r.completed_at_ms),
        steps: r.step_timings.into_iter().collect(),
    };
    let reasoning = Some(text("reasoning", r.reasoning_trace)?).filter(|s| !s.is_empty());
    let audit_id = Some(r.audit_id).filter(|s| !s.is_empty());
    if status == VerdictStatus::Failed {
        return Ok(Verdict {
            capture_id: String::new(),
            engine: engine.to_owned(),
            status,
            score: None,
            grade: None,
            hallucination: None,
            claims: Vec::new(),
            error: Some(
                reasoning
                    .clone()
                    .unwrap_or_else(|| "the engine reports the audit FAILED".to_owned()),
            ),
            reasoning,
            timings,
            audit_id,
            answer_complete,
            received_at,
        });
    }
    if r.claims.len() > MAX_CLAIMS {
        return Err(BadAnswer(format!(
            "{} claims, more than {MAX_CLAIMS}",
            r.claims.len()
        )));
    }
    let claims = r
        .claims
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            Ok(Claim {
                claim: text(&format!("claims[{i}].claim"), c.claim)?,
                status: claim_status(c.status)?.to_owned(),
                confidence: unit(&format!("claims[{i}].confidence"), c.confidence)?,
                evidence: c
                    .evidence
                    .into_iter()
                    .map(|e| text(&format!("claims[{i}].evidence"), e))
                    .collect::<Result<_, _>>()?,
            })
        })
        .collect::<Result<Vec<_>, BadAnswer>>()?;
    Ok(Verdict {
        capture_id: String::new(),
        engine: engine.to_owned(),
        status,
        score: Some(unit("faithfulness_score", r.faithfulness_score)?),
        grade: grade(r.grade)?,
        hallucination: Some(r.hallucination_detected),
        claims,
        reasoning,
        timings,
        audit_id,
        error: None,
        answer_complete,
        received_at,
    })
}

/// A verdict as an HTTP engine gives it: in its 2xx answer, or later through
/// `POST /v1/captures/{id}/verdicts`. Unknown fields are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct PostedVerdict {
    /// Only through `POST /v1/captures/{id}/verdicts`: which engine says it.
    #[serde(default)]
    pub engine: Option<String>,
    /// `completed` (the default) or `failed`.
    #[serde(default)]
    pub status: Option<String>,
    /// 0 to 1.
    #[serde(default)]
    pub score: Option<f64>,
    /// A short grade (`A` … `F`).
    #[serde(default)]
    pub grade: Option<String>,
    /// Whether a hallucination was found.
    #[serde(default)]
    pub hallucination: Option<bool>,
    /// Each claim checked.
    #[serde(default)]
    pub claims: Vec<Claim>,
    /// The engine's reasoning.
    #[serde(default)]
    pub reasoning: Option<String>,
    /// The engine's timings.
    #[serde(default)]
    pub timings: Option<Timings>,
    /// The engine's id for the audit.
    #[serde(default)]
    pub audit_id: Option<String>,
    /// Why a `failed` audit failed.
    #[serde(default)]
    pub error: Option<String>,
}

/// The claim statuses a verdict may name.
pub const CLAIM_STATUSES: [&str; 5] = [
    "supported",
    "contradicted",
    "unsupported",
    "partially_supported",
    "unspecified",
];

/// A posted verdict checked: scores and confidences from 0 to 1, known statuses, bounded texts.
pub fn from_posted(
    engine: &str,
    p: PostedVerdict,
    answer_complete: bool,
    received_at: String,
) -> Result<Verdict, BadAnswer> {
    let status = match p.status.as_deref() {
        None | Some("completed") => VerdictStatus::Completed,
        Some("failed") => VerdictStatus::Failed,
        Some(other) => {
            return Err(BadAnswer(format!(
                "status {other:?} is not completed or failed"
            )))
        }
    };
    let in_unit = |what: &str, v: f64| {
        if v.is_finite() && (0.0..=1.0).contains(&v) {
            Ok(v)
        } else {
            Err(BadAnswer(format!("{what} {v} is not between 0 and 1")))
        }
    };
    if status == VerdictStatus::Completed && p.score.is_none() {
        return Err(BadAnswer("a completed verdict needs a score".to_owned()));
    }
    let score = p.score.map(|s| in_unit("score", s)).transpose()?;
    if p.claims.len() > MAX_CLAIMS {
        return Err(BadAnswer(format!(
            "{} claims, more than {MAX_CLAIMS}",
            p.claims.len()
        )));
    }
    let mut claims = Vec::with_capacity(p.claims.len());
    for (i, c) in p.claims.into_iter().enumerate() {
        if !CLAIM_STATUSES.contains(&c.status.as_str()) {
            return Err(BadAnswer(format!(
                "claims[{i}].status {:?} is not one of {}",
                c.status,
                CLAIM_STATUSES.join(", ")
            )));
        }
        claims.push(Claim {
            claim: text(&format!("claims[{i}].claim"), c.claim)?,
            confidence: in_unit(&format!("claims[{i}].confidence"), c.confidence)?,
            evidence: c
                .evidence
                .into_iter()
                .map(|e| text(&format!("claims[{i}].evidence"), e))
                .collect::<Result<_, _>>()?,
            status: c.status,
        });
    }
    if p.grade.as_ref().is_some_and(|g| g.len() > 16) {
        return Err(BadAnswer("grade is longer than 16 bytes".to_owned()));
    }
    Ok(Verdict {
        capture_id: String::new(),
        engine: engine.to_owned(),
        status,
        score,
        grade: p.grade,
        hallucination: p.hallucination,
        claims,
        reasoning: p.reasoning.map(|r| text("reasoning", r)).transpose()?,
        timings: p.timings.unwrap_or_default(),
        audit_id: p.audit_id.map(|a| text("audit_id", a)).transpose()?,
        error: p.error.map(|e| text("error", e)).transpose()?,
        answer_complete,
        received_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result() -> proto::AuditResult {
        proto::AuditResult {
            audit_id: "a1".into(),
            request_id: "cap".into(),
            status: proto::AuditStatus::Completed as i32,
            faithfulness_score: 0.25,
            grade: proto::TrustGrade::F as i32,
            claims: vec![proto::ClaimVerification {
                claim: "Lyon is the capital".into(),
                status: proto::VerificationStatus::Contradicted as i32,
                confidence: 0.5,
                evidence: vec!["Paris is the capital of France.".into()],
            }],
            reasoning_trace: "contradicted by the passage".into(),
            completed_at_ms: 5,
            processing_time_ms: 12,
            hallucination_detected: true,
            step_timings: [("decompose_ms".to_owned(), 3)].into(),
        }
    }

    #[test]
    fn a_completed_result_keeps_score_grade_claims_and_timings() {
        let v = from_result("grpc://e", result(), true, "t".into()).unwrap();
        assert_eq!(v.status, VerdictStatus::Completed);
        assert_eq!((v.score, v.grade.as_deref()), (Some(0.25), Some("F")));
        assert!(v.flagged());
        assert_eq!(v.claims[0].status, "contradicted");
        assert_eq!(v.claims[0].evidence, ["Paris is the capital of France."]);
        assert_eq!(v.timings.processing_ms, Some(12));
        assert_eq!(v.timings.steps["decompose_ms"], 3);
        let json = serde_json::to_value(&v).unwrap();
        for key in [
            "engine",
            "score",
            "hallucination",
            "grade",
            "claims",
            "received_at",
        ] {
            assert!(json.get(key).is_some(), "{key}");
        }
    }

    #[test]
    fn out_of_range_and_unknown_values_are_bad_answers() {
        let mut r = result();
        r.faithfulness_score = 1.5;
        assert!(from_result("e", r, true, "t".into())
            .unwrap_err()
            .0
            .contains("faithfulness_score 1.5"));
        let mut r = result();
        r.faithfulness_score = f32::NAN;
        assert!(from_result("e", r, true, "t".into()).is_err());
        let mut r = result();
        r.grade = 9;
        assert_eq!(
            from_result("e", r, true, "t".into()).unwrap_err().0,
            "unknown grade 9"
        );
        let mut r = result();
        r.claims[0].status = 42;
        assert!(from_result("e", r, true, "t".into()).is_err());
        let mut r = result();
        r.status = 17;
        assert!(from_result("e", r, true, "t".into()).is_err());
        let mut r = result();
        r.reasoning_trace = "x".repeat(MAX_TEXT + 1);
        assert!(from_result("e", r, true, "t".into()).is_err());
    }

    #[test]
    fn a_posted_verdict_is_checked_like_an_engines_answer() {
        let posted = |v: serde_json::Value| {
            from_posted("e", serde_json::from_value(v).unwrap(), true, "t".into())
        };
        let v = posted(
            serde_json::json!({"score": 0.4, "grade": "C", "hallucination": true,
            "claims": [{"claim": "c", "status": "unsupported", "confidence": 0.5, "evidence": []}],
            "extra": "ignored"}),
        )
        .unwrap();
        assert_eq!(
            (v.status, v.score, v.flagged()),
            (VerdictStatus::Completed, Some(0.4), true)
        );
        for (bad, why) in [
            (serde_json::json!({"score": 2.0}), "score 2"),
            (serde_json::json!({"hallucination": true}), "needs a score"),
            (
                serde_json::json!({"score": 0.5, "status": "maybe"}),
                "status \"maybe\"",
            ),
            (
                serde_json::json!({"score": 0.5, "claims": [{"claim": "c", "status": "odd", "confidence": 0.5, "evidence": []}]}),
                "claims[0].status",
            ),
            (
                serde_json::json!({"score": 0.5, "claims": [{"claim": "c", "status": "supported", "confidence": -1, "evidence": []}]}),
                "claims[0].confidence",
            ),
        ] {
            let e = posted(bad).unwrap_err().0;
            assert!(e.contains(why), "{e}");
        }
        let failed = posted(serde_json::json!({"status": "failed", "error": "timeout"})).unwrap();
        assert_eq!(failed.status, VerdictStatus::Failed);
    }

    #[test]
    fn a_failed_audit_is_kept_as_failed_with_the_engines_words() {
        let mut r = result();
        r.status = proto::AuditStatus::Failed as i32;
        let v = from_result("e", r, false, "t".into()).unwrap();
        assert_eq!(v.status, VerdictStatus::Failed);
        assert_eq!(v.error.as_deref(), Some("contradicted by the passage"));
        assert_eq!(v.score, None);
        assert!(!v.answer_complete);
    }
}
