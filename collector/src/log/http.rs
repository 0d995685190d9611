//! The log's reads: the latest checkpoint, the verifier key, consistency proofs, and the entry
//! and inclusion proof of each capture and of each accountability event (a verdict, an erasure,
//! a hold). The read token applies as to every other read.

use std::sync::Arc;

use axum::extract::{Path, Query as QueryParams, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use super::proof::TlogProof;
use super::sequencer::{self, LogError};
use super::tree::{self, Query};
use super::Log;
use crate::http::{authorize_read, error, store_failure, AppState};
use crate::store::log::LogStore;

/// The log's routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/log/checkpoint", get(checkpoint))
        .route("/v1/log/key", get(key))
        .route("/v1/log/consistency", get(consistency))
        .route("/v1/captures/{id}/entry", get(entry))
        .route("/v1/captures/{id}/proof", get(proof))
        .route("/v1/log/events/{id}/entry", get(event_entry))
        .route("/v1/log/events/{id}/proof", get(event_proof))
}

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

/// The log, or the answer that says it is off; and the read token checked.
fn log_of<'a>(state: &'a AppState, headers: &HeaderMap) -> Result<&'a Arc<Log>, Box<Response>> {
    authorize_read(headers, state).map_err(|e| Box::new(e.into_response()))?;
    state.log.as_ref().ok_or_else(|| {
        Box::new(error(
            StatusCode::NOT_FOUND,
            "the verifiable log is off on this collector (--log off, or PostgreSQL without --log-key)",
        ))
    })
}

fn failure(state: &AppState, e: LogError) -> Response {
    match e {
        LogError::Store(e) => store_failure(state, &e).into_response(),
        LogError::Tree(tree::TreeError::OutOfRange(why)) => error(StatusCode::BAD_REQUEST, why),
        other => error(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    }
}

async fn checkpoint(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(r) = log_of(&state, &headers) {
        return *r;
    }
    match state.store.log_checkpoint(None).await {
        Ok(Some((_, note))) => text(note),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "no checkpoint signed yet: the log is empty",
        ),
        Err(e) => store_failure(&state, &e).into_response(),
    }
}

async fn key(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    match log_of(&state, &headers) {
        Ok(log) => text(format!("{}\n", log.verifier().as_str())),
        Err(r) => *r,
    }
}

#[derive(Deserialize)]
struct Sizes {
    old: u64,
    new: u64,
}

async fn consistency(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    sizes: Result<QueryParams<Sizes>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(r) = log_of(&state, &headers) {
        return *r;
    }
    let Ok(QueryParams(Sizes { old, new })) = sizes else {
        return error(
            StatusCode::BAD_REQUEST,
            "give both sizes as decimal numbers: ?old=N&new=M",
        );
    };
    let size = match state.store.log_state().await {
        Ok(s) => s.size,
        Err(e) => return store_failure(&state, &e).into_response(),
    };
    let query = Query::Consistency { old, new };
    if let Err(e) = query.check(size) {
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    match sequencer::answer(&state.store, query).await {
        Ok(proof) => text(proof.iter().map(|h| format!("{h}\n")).collect()),
        Err(e) => failure(&state, e),
    }
}

async fn entry(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = log_of(&state, &headers) {
        return *r;
    }
    match state.store.log_entry(id.clone()).await {
        Ok(Some(e)) => ([(header::CONTENT_TYPE, "application/json")], e.raw).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("no capture with id \"{id}\""),
        ),
        Err(e) => store_failure(&state, &e).into_response(),
    }
}

#[derive(Deserialize)]
struct ProofParams {
    size: Option<u64>,
}

fn not_yet(message: String) -> Response {
    let mut r = error(StatusCode::CONFLICT, message);
    r.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    r
}

async fn proof(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    params: Result<QueryParams<ProofParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(r) = log_of(&state, &headers) {
        return *r;
    }
    let found = state.store.log_entry(id.clone()).await;
    prove(&state, &format!("capture \"{id}\""), found, params).await
}

async fn event_entry(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = log_of(&state, &headers) {
        return *r;
    }
    match state.store.log_event_entry(id.clone()).await {
        Ok(Some(e)) => ([(header::CONTENT_TYPE, "application/json")], e.raw).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no event with id \"{id}\"")),
        Err(e) => store_failure(&state, &e).into_response(),
    }
}

async fn event_proof(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    params: Result<QueryParams<ProofParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(r) = log_of(&state, &headers) {
        return *r;
    }
    let found = state.store.log_event_entry(id.clone()).await;
    prove(&state, &format!("event \"{id}\""), found, params).await
}

/// The `tlog-proof` of `what`, whose entry the store `found`.
async fn prove(
    state: &AppState,
    what: &str,
    found: Result<Option<crate::store::log::LogEntry>, crate::store::StoreError>,
    params: Result<QueryParams<ProofParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(QueryParams(ProofParams { size: asked })) = params else {
        return error(StatusCode::BAD_REQUEST, "size must be a decimal number");
    };
    let index = match found {
        Ok(Some(e)) => e.index,
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no {what}")),
        Err(e) => return store_failure(state, &e).into_response(),
    };
    let Some(index) = index else {
        return not_yet(format!(
            "{what} is stored and not yet sequenced into the log; its proof follows within seconds"
        ));
    };
    let (size, note) = match state.store.log_checkpoint(asked).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return match asked {
                Some(n) => error(StatusCode::NOT_FOUND, format!("no checkpoint of size {n}")),
                None => not_yet(format!(
                    "{what} is at index {index}, and no checkpoint is signed yet"
                )),
            }
        }
        Err(e) => return store_failure(state, &e).into_response(),
    };
    if index >= size {
        let message = format!("{what} is at index {index}, beyond the checkpoint of size {size}");
        return if asked.is_some() {
            error(StatusCode::BAD_REQUEST, message)
        } else {
            not_yet(format!("{message}; the next checkpoint includes it"))
        };
    }
    match sequencer::answer(&state.store, Query::Inclusion { index, size }).await {
        Ok(path) => text(
            TlogProof {
                index,
                path,
                checkpoint: note,
            }
            .to_text(),
        ),
        Err(e) => failure(state, e),
    }
}

/// A capture's place in the log as the JSON API shows it: `index` (`null` until sequenced),
/// `checkpoint_size` (the latest signed checkpoint's), and `proof`, the path of its proof once
/// that checkpoint includes it.
pub fn place_json(id: &str, place: crate::reads::LogPlace) -> serde_json::Value {
    serde_json::json!({
        "index": place.index,
        "checkpoint_size": place.checkpoint_size,
        "proof": place.proven().then(|| format!("/v1/captures/{}/proof", crate::web::format::segment(id))),
    })
}

/// A stored verdict as `verdicts` in `GET /v1/captures/{id}` shows it: its stored JSON (its log
/// entry, byte for byte), and with the log on, `log`: its `event` id, its `index` (`null` until
/// sequenced), and the paths of its `entry` and `proof`.
pub fn verdict_json(v: &crate::store::StoredVerdict, log_on: bool) -> String {
    let stored = v.json.trim_end();
    let Some(open) = stored.strip_suffix('}').filter(|_| log_on) else {
        return v.json.clone();
    };
    let event = crate::web::format::segment(&v.event);
    let log = serde_json::json!({
        "event": v.event,
        "index": v.log_index,
        "entry": format!("/v1/log/events/{event}/entry"),
        "proof": format!("/v1/log/events/{event}/proof"),
    });
    let sep = if open.trim_end().ends_with('{') {
        ""
    } else {
        ","
    };
    format!("{open}{sep}\"log\":{log}}}")
}
