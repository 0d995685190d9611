//! The HTTP surface: routes, bearer-token auth, body limits, JSON errors, and the headers every
//! answer carries (a Content-Security-Policy that lets no script run, `nosniff`, no framing).
//!
//! Every error answer of the JSON API is `{"error": "..."}`. An ingest answer is sent only after its transaction
//! has committed; while the database is unavailable the answer is 503, so the filter keeps the
//! batch and sends it again.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::json;

use crate::ingest;
use crate::metrics::{IndexGauges, Metrics, Rejection, StoreGauges};
use crate::reads::{self, ListRequest};
use crate::store::{CaptureStore, Health, Store, StoreError};
use crate::web;

pub use crate::reads::{DEFAULT_LIMIT, MAX_LIMIT};

/// The Content-Security-Policy of every answer: styles and images from the collector itself,
/// forms posted only to it, and no script at all — whatever a captured body holds, it is text.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'none'; \
     style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; \
     base-uri 'none'";

/// What the handlers share.
pub struct AppState {
    /// The capture store.
    pub store: Store,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
    /// Bearer token required on ingest, if any.
    pub ingest_token: Option<String>,
    /// Bearer token required on reads, if any.
    pub read_token: Option<String>,
    /// Bearer token that posts verdicts; without one, `POST /v1/captures/{id}/verdicts` is off.
    pub verdict_token: Option<String>,
    /// Largest ingest body in bytes.
    pub max_body_bytes: usize,
    /// The OpenTelemetry exporter, when export is on.
    pub otlp: Option<crate::otlp::Exporter>,
    /// Gives stored records their digests, behind ingest (`crate::indexer`).
    pub indexer: Arc<crate::indexer::Indexer>,
    /// The verifiable log, when it is on (`crate::log`).
    pub log: Option<Arc<crate::log::Log>>,
    /// Gaps between content longer than this are stalls (`--stall-threshold-ms`).
    pub stall_threshold_ms: u64,
    /// The audit engines captures are handed to (`--audit-engine`).
    pub engines: Vec<Arc<crate::engine::Engine>>,
    /// Posts verdicts to Phoenix as span annotations, when the export goes to Phoenix.
    pub annotator: Option<crate::engine::annotate::Annotator>,
    /// Bearer token required on erasures and holds; they are refused without one.
    pub admin_token: Option<String>,
    /// Erasure and retention (`crate::erase`).
    pub erase: Arc<crate::erase::Eraser>,
}

impl AppState {
    /// Whether `verdict` is to be attached to its capture's span in Phoenix: queued with it in
    /// the store (`crate::engine::annotate`).
    pub fn annotates(&self, verdict: &crate::engine::Verdict) -> bool {
        self.annotator.is_some() && verdict.status != crate::engine::verdict::VerdictStatus::Pending
    }

    /// A verdict was stored: the annotator looks at its queue now.
    pub fn verdict_stored(&self) {
        if let Some(a) = &self.annotator {
            a.wake();
        }
    }
}

impl AppState {
    /// True while stored records wait for their digests: filters and search skip them meanwhile.
    pub fn indexing(&self) -> bool {
        self.indexer.busy()
    }
}

/// The collector's router.
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/captures", get(list).post(ingest))
        .route("/v1/captures/{id}", get(get_one))
        .route(
            "/v1/captures/{id}/verdicts",
            axum::routing::post(post_verdict),
        )
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .route("/metrics", get(metrics))
        .merge(web::routes())
        .merge(crate::log::http::routes())
        .merge(crate::erase::http::routes())
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(axum::middleware::map_response(protective_headers))
        .with_state(state)
}

/// Headers on every answer: no script runs, no type is sniffed, no page is framed or sends a
/// referrer, and nothing read from the store is cached unless its handler says otherwise.
async fn protective_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    ApiError::new(status, message).into_response()
}

/// An error answer: a status and the message of its `{"error": ...}` body.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    www_authenticate: bool,
    retry_after: bool,
}

impl ApiError {
    /// The status of the answer.
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    /// The message of the answer.
    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            www_authenticate: false,
            retry_after: false,
        }
    }

    /// 403: the operation is turned off.
    pub(crate) fn forbidden(message: &str) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
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
        if self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        r
    }
}

/// Compares without an early exit, so timing does not reveal how much of a guess was right.
pub(crate) fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `Ok` for a read when no read token is configured, the request carries it as a bearer token,
/// or it carries a valid session cookie of the web view's sign-in.
pub(crate) fn authorize_read(headers: &HeaderMap, state: &AppState) -> Result<(), ApiError> {
    let Some(token) = state.read_token.as_deref() else {
        return Ok(());
    };
    if !headers.contains_key(header::AUTHORIZATION) && web::session::valid(headers, token) {
        return Ok(());
    }
    authorize(headers, Some(token))
}

/// `Ok` when no token is configured or the request carries `authorization: Bearer <token>`.
pub(crate) fn authorize(headers: &HeaderMap, token: Option<&str>) -> Result<(), ApiError> {
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

/// The answer to a failed store call: 503 (with `retry-after`) while the database is
/// unavailable, 500 otherwise. The cause is logged by the store's health tracker or here.
pub(crate) fn store_failure(state: &AppState, e: &StoreError) -> ApiError {
    if e.is_unavailable() {
        state.metrics.store_unavailable();
        tracing::debug!(error = %e, "store unavailable");
        ApiError {
            retry_after: true,
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}"))
        }
    } else {
        state.metrics.store_error();
        tracing::error!(error = %e, "store operation failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("store: {e}"))
    }
}

/// `POST /v1/captures`; also each batch of an ingest stream (`crate::lanes`).
pub(crate) async fn ingest(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
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
                    "request content-encoding is not supported; send NDJSON or frames uncompressed",
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
    let framed = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| crate::frames::is_framed(ct.as_bytes()));
    let parsed = if framed {
        ingest::parse_framed(&bytes)
    } else {
        ingest::parse_ndjson(&bytes)
    };
    let lines = match parsed {
        Ok(lines) => lines,
        Err(e) => {
            return reject(
                Rejection::Invalid,
                error(StatusCode::BAD_REQUEST, e.to_string()),
            )
        }
    };
    // Each record with its line's size, kept for the indexer (taken by the batch's place).
    let (rows, mut records): (Vec<_>, Vec<_>) = lines
        .into_iter()
        .map(|line| {
            let (row, record) = ingest::to_row(line);
            let size = row.raw.len();
            (row, Some((record, size)))
        })
        .unzip();
    let outcome = state
        .store
        .insert_batch(rows)
        .await
        .map_err(|e| store_failure(&state, &e));
    match outcome {
        Ok(o) => {
            state.metrics.batch_committed(o.stored, o.duplicates);
            if let (Some(exporter), true) = (&state.otlp, o.stored > 0) {
                exporter.wake();
            }
            if o.stored > 0 {
                state.engines.iter().for_each(|e| e.wake());
            }
            tracing::debug!(
                stored = o.stored,
                duplicates = o.duplicates,
                "batch committed"
            );
            // Committed; the digests follow behind the answer (crate::indexer).
            state.indexer.push(o.new.iter().filter_map(|&(i, seq)| {
                let (record, size) = records.get_mut(i)?.take()?;
                Some((seq, record, size))
            }));
            Json(json!({ "stored": o.stored, "duplicates": o.duplicates })).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    if let Err(e) = authorize_read(&headers, &state) {
        return e.into_response();
    }
    let Ok(Query(pairs)) = query else {
        return error(StatusCode::BAD_REQUEST, "malformed query string");
    };
    let req = match ListRequest::parse(&pairs) {
        Ok(req) => req,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.0),
    };
    match reads::list(&state, &req).await {
        Ok(page) => Json(json!({
            "captures": page.rows,
            "next_before": page.next_before,
            "prev_after": page.prev_after,
            "indexing": page.indexing,
        }))
        .into_response(),
        Err(e) => store_failure(&state, &e).into_response(),
    }
}

async fn get_one(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(e) = authorize_read(&headers, &state) {
        return e.into_response();
    }
    let read = match reads::capture(&state, id.clone()).await {
        Ok(Some(read)) => read,
        Ok(None) => {
            if let Some(gone) = crate::erase::http::gone(&state, &id).await {
                return gone;
            }
            return error(
                StatusCode::NOT_FOUND,
                format!("no capture with id \"{id}\""),
            );
        }
        Err(e) => return store_failure(&state, &e).into_response(),
    };
    let view = serde_json::to_string(&read.view).unwrap_or_else(|_| "null".to_owned());
    // Amendments (`complete_after_stored`), shown only when there are some.
    let amendments = match state.store.amendments(id.clone()).await {
        Ok(a) if a.is_empty() => String::new(),
        Ok(a) => format!(",\"amendments\":[{}]", a.join(",")),
        Err(e) => return store_failure(&state, &e).into_response(),
    };
    // The stored line is valid JSON; splicing it keeps the record byte for byte as received.
    let mut body = format!("{{\"capture\":{},\"audit\":{view}", read.raw);
    if let Some(place) = read.log {
        body.push_str(",\"log\":");
        body.push_str(&crate::log::http::place_json(&id, place).to_string());
    }
    body.push_str(",\"verdicts\":[");
    for (i, v) in read.verdicts.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&crate::log::http::verdict_json(v, read.log.is_some()));
    }
    body.push(']');
    body.push_str(&amendments);
    body.push('}');
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Largest verdict body taken by `POST /v1/captures/{id}/verdicts`.
const MAX_VERDICT_BYTES: usize = 4 << 20;

/// A verdict an audit engine posts later (a webhook engine that answered without one): checked
/// like an engine's answer, then appended to the capture's verdicts. 201 when stored.
async fn post_verdict(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    let Some(token) = state.verdict_token.as_deref() else {
        return error(
            StatusCode::FORBIDDEN,
            "this collector takes no verdicts: set TRUTHTABLE_VERDICT_TOKEN",
        );
    };
    if let Err(e) = authorize(&headers, Some(token)) {
        return e.into_response();
    }
    let bytes = match Limited::new(body, MAX_VERDICT_BYTES).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a verdict is at most {MAX_VERDICT_BYTES} bytes"),
            )
        }
    };
    let posted: crate::engine::verdict::PostedVerdict = match serde_json::from_slice(&bytes) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("not a verdict: {e}")),
    };
    let Some(engine) = posted.engine.clone().filter(|e| !e.trim().is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "engine: required (the engine's name)",
        );
    };
    let seq = match state.store.capture_seq(id.clone()).await {
        Ok(Some(seq)) => seq,
        Ok(None) => {
            return error(
                StatusCode::NOT_FOUND,
                format!("no capture with id \"{id}\""),
            )
        }
        Err(e) => return store_failure(&state, &e).into_response(),
    };
    let mut verdict =
        match crate::engine::verdict::from_posted(&engine, posted, true, crate::engine::now()) {
            Ok(v) => v,
            Err(e) => return error(StatusCode::BAD_REQUEST, e.0),
        };
    verdict.capture_id = id.clone();
    let new = crate::store::NewVerdict {
        capture_seq: seq,
        capture_id: id,
        engine,
        status: verdict.status.as_str().to_owned(),
        score: verdict.score,
        hallucination: verdict.hallucination,
        verdict: serde_json::to_string(&verdict).unwrap_or_default(),
        received_at: verdict.received_at.clone(),
        annotate: state.annotates(&verdict),
    };
    match state.store.add_verdict(new).await {
        Ok(()) => {
            state.verdict_stored();
            (StatusCode::CREATED, Json(verdict)).into_response()
        }
        Err(e) => store_failure(&state, &e).into_response(),
    }
}

/// 200 while the store takes writes; 503 with the cause while it does not (a readiness probe).
async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    let store = state.store.backend();
    match state.store.health() {
        Health::Up => Json(json!({ "status": "ok", "store": store })).into_response(),
        Health::Down(cause) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unavailable", "store": store, "error": cause })),
        )
            .into_response(),
    }
}

/// 200 while the process serves HTTP, whatever the database does (a liveness probe).
async fn livez() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let up = state.store.health().is_up();
    let stats = if up {
        state.store.stats().await.ok()
    } else {
        None
    };
    let mut text = state.metrics.render(
        StoreGauges { up, stats },
        IndexGauges {
            pending: state.indexer.pending(),
            written: state.indexer.written(),
        },
    );
    text.push_str(&state.indexer.timing.render());
    text.push_str(&crate::engine::render_metrics(&state.engines));
    if let Some(log) = &state.log {
        // The log also holds the entries of erased captures, erasures, holds and verdicts.
        let entries = match stats {
            Some(s) => {
                use crate::store::erase::EraseStore as _;
                let e = state.store.erase_counts().await.unwrap_or_default();
                Some(s.records + e.erased + e.events)
            }
            None => None,
        };
        text.push_str(&log.render_metrics(entries));
    }
    if up {
        text.push_str(&state.erase.render_metrics(&state.store).await);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
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
