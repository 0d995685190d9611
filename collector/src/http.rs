//! The HTTP surface: routes, bearer-token auth, body limits, JSON errors.
//!
//! Every error answer is `{"error": "..."}`. Store calls run on the blocking pool; an ingest answer
//! is sent only after its transaction has committed.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::json;

use crate::audit;
use crate::ingest;
use crate::metrics::{Metrics, Rejection};
use crate::record::CaptureRecord;
use crate::store::{Store, StoreError};

/// Default page size of `GET /v1/captures`.
pub const DEFAULT_LIMIT: u32 = 50;
/// Largest page size of `GET /v1/captures`.
pub const MAX_LIMIT: u32 = 1000;

/// What the handlers share.
pub struct AppState {
    /// The capture store.
    pub store: Arc<Store>,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
    /// Bearer token required on ingest, if any.
    pub ingest_token: Option<String>,
    /// Bearer token required on reads, if any.
    pub read_token: Option<String>,
    /// Largest ingest body in bytes.
    pub max_body_bytes: usize,
}

/// The collector's router.
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/captures", get(list).post(ingest))
        .route("/v1/captures/{id}", get(get_one))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(state)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    ApiError::new(status, message).into_response()
}

/// An error answer: a status and the message of its `{"error": ...}` body.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
    www_authenticate: bool,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            www_authenticate: false,
        }
    }

    fn unauthorized(message: &str) -> Self {
        ApiError {
            www_authenticate: true,
            ..Self::new(StatusCode::UNAUTHORIZED, message)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(json!({ "error": self.message }))).into_response();
        if self.www_authenticate {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}

/// Compares without an early exit, so timing does not reveal how much of a guess was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `Ok` when no token is configured or the request carries `authorization: Bearer <token>`.
fn authorize(headers: &HeaderMap, token: Option<&str>) -> Result<(), ApiError> {
    let Some(token) = token else { return Ok(()) };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    match presented {
        Some(p) if same_secret(p.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::unauthorized("invalid bearer token")),
        None => Err(ApiError::unauthorized(
            "missing `authorization: Bearer <token>` header",
        )),
    }
}

fn store_failure(state: &AppState, e: &StoreError) -> ApiError {
    state.metrics.store_error();
    tracing::error!(error = %e, "store operation failed");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("store: {e}"))
}

/// Runs a blocking store call off the async runtime.
async fn blocking<T: Send + 'static>(
    state: &Arc<AppState>,
    f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = Arc::clone(&state.store);
    match tokio::task::spawn_blocking(move || f(&store)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(store_failure(state, &e)),
        Err(e) => {
            state.metrics.store_error();
            tracing::error!(error = %e, "store task failed");
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error",
            ))
        }
    }
}

async fn ingest(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    state.metrics.ingest_request();
    let reject = |why: Rejection, response: Response| {
        state.metrics.rejected(why);
        response
    };
    if let Err(e) = authorize(&headers, state.ingest_token.as_deref()) {
        return reject(Rejection::Unauthorized, e.into_response());
    }
    if let Some(ce) = headers.get(header::CONTENT_ENCODING) {
        if !ce.as_bytes().eq_ignore_ascii_case(b"identity") {
            return reject(
                Rejection::UnsupportedEncoding,
                error(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "request content-encoding is not supported; send plain NDJSON",
                ),
            );
        }
    }
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body exceeds the limit of {} bytes",
                state.max_body_bytes
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > state.max_body_bytes as u64) {
        return reject(Rejection::TooLarge, too_large());
    }
    let bytes = match Limited::new(body, state.max_body_bytes).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return reject(Rejection::TooLarge, too_large())
        }
        Err(e) => {
            return reject(
                Rejection::Invalid,
                error(
                    StatusCode::BAD_REQUEST,
                    format!("could not read request body: {e}"),
                ),
            )
        }
    };
    let lines = match ingest::parse_ndjson(&bytes) {
        Ok(lines) => lines,
        Err(e) => {
            return reject(
                Rejection::Invalid,
                error(StatusCode::BAD_REQUEST, e.to_string()),
            )
        }
    };
    let outcome = blocking(&state, move |store| {
        let rows: Vec<_> = lines.into_iter().map(ingest::to_row).collect();
        store.insert_batch(&rows)
    })
    .await;
    match outcome {
        Ok(o) => {
            state.metrics.batch_committed(o.stored, o.duplicates);
            tracing::debug!(
                stored = o.stored,
                duplicates = o.duplicates,
                "batch committed"
            );
            Json(json!({ "stored": o.stored, "duplicates": o.duplicates })).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    if let Err(e) = authorize(&headers, state.read_token.as_deref()) {
        return e.into_response();
    }
    let Ok(Query(params)) = query else {
        return error(StatusCode::BAD_REQUEST, "malformed query string");
    };
    let mut limit = DEFAULT_LIMIT;
    let mut before = None;
    for (key, value) in &params {
        match key.as_str() {
            "limit" => match value.parse::<u32>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => limit = n,
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "limit: expected an integer from 1 to {MAX_LIMIT}, got \"{value}\""
                        ),
                    )
                }
            },
            "before" => match value.parse::<i64>() {
                Ok(n) if n > 0 => before = Some(n),
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("before: expected a cursor from next_before, got \"{value}\""),
                    )
                }
            },
            other => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("unknown query parameter \"{other}\"; expected limit, before"),
                )
            }
        }
    }
    let rows = match blocking(&state, move |s| s.list(limit + 1, before)).await {
        Ok(rows) => rows,
        Err(e) => return e.into_response(),
    };
    let more = rows.len() > limit as usize;
    let page: Vec<_> = rows.into_iter().take(limit as usize).collect();
    let next_before = if more {
        page.last().map(|s| s.seq.to_string())
    } else {
        None
    };
    Json(json!({ "captures": page, "next_before": next_before })).into_response()
}

async fn get_one(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(e) = authorize(&headers, state.read_token.as_deref()) {
        return e.into_response();
    }
    let lookup = id.clone();
    let raw = match blocking(&state, move |s| s.get(&lookup)).await {
        Ok(Some(raw)) => raw,
        Ok(None) => {
            return error(
                StatusCode::NOT_FOUND,
                format!("no capture with id \"{id}\""),
            )
        }
        Err(e) => return e.into_response(),
    };
    let view = match CaptureRecord::parse_line(&raw) {
        Ok(record) => std::panic::catch_unwind(|| audit::derive(&record)).unwrap_or_else(|_| {
            audit::AuditView::unknown("the audit derivation failed on this record")
        }),
        Err(e) => audit::AuditView::unknown(format!("stored record no longer validates: {e}")),
    };
    let view = serde_json::to_string(&view).unwrap_or_else(|_| "null".to_owned());
    // The stored line is valid JSON; splicing it keeps the record byte for byte as received.
    let body = format!("{{\"capture\":{raw},\"audit\":{view}}}");
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let store = Arc::clone(&state.store);
    let bytes = tokio::task::spawn_blocking(move || store.size_bytes())
        .await
        .unwrap_or_default();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(bytes),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_equal_only_when_identical() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_token_exact() {
        let mut h = HeaderMap::new();
        assert!(authorize(&h, None).is_ok());
        assert!(authorize(&h, Some("t")).is_err());
        h.insert(header::AUTHORIZATION, "bearer t".parse().unwrap());
        assert!(authorize(&h, Some("t")).is_ok());
        h.insert(header::AUTHORIZATION, "Bearer tt".parse().unwrap());
        assert!(authorize(&h, Some("t")).is_err());
        h.insert(header::AUTHORIZATION, "Basic t".parse().unwrap());
        assert!(authorize(&h, Some("t")).is_err());
    }
}
