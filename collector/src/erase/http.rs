//! The erasure routes: `POST /v1/erasures`, `POST /v1/holds`, `GET /v1/holds`,
//! `DELETE /v1/holds/{id}` (admin token), `GET /v1/erasures` (the tombstones; read token), and
//! the `410 Gone` answer of an erased capture.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use super::Selection;
use crate::http::{authorize, authorize_read, error, store_failure, ApiError, AppState};
use crate::reads::{BadParam, ListRequest};
use crate::store::erase::{EraseStore, EventEntry, Hold, HOLD_KIND, HOLD_LIFTED_KIND};

/// The erasure routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/erasures", get(tombstones).post(erase))
        .route("/v1/holds", get(holds).post(place_hold))
        .route("/v1/holds/{id}", delete(lift_hold))
}

/// The list filters an erasure or a hold takes (the list's parameters, as JSON).
pub const FILTERS: [&str; 9] = [
    "since", "until", "outcome", "protocol", "model", "path", "status", "mark", "q",
];

/// `Ok` when the request carries the admin token; erasure is refused when none is configured.
fn authorize_admin(headers: &HeaderMap, state: &AppState) -> Result<(), ApiError> {
    let Some(token) = state.admin_token.as_deref() else {
        return Err(ApiError::forbidden(
            "erasures and holds are off: set TRUTHTABLE_ADMIN_TOKEN to turn them on",
        ));
    };
    authorize(headers, Some(token))
}

/// The list request that a JSON object of filters means.
pub fn filter_request(filters: &Value) -> Result<ListRequest, BadParam> {
    let Some(map) = filters.as_object() else {
        return Err(BadParam("filters: expected a JSON object".to_owned()));
    };
    let mut pairs = Vec::new();
    for (key, value) in map {
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Array(items) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| BadParam(format!("{key}: expected strings")))?
                .join(","),
            _ => return Err(BadParam(format!("{key}: expected a string"))),
        };
        pairs.push((key.clone(), text));
    }
    ListRequest::parse(&pairs)
}

/// An erasure's or a hold's request body, read.
struct Request {
    selection: Selection,
    /// The filters as given (kept with a hold).
    filters: Option<Value>,
    reason: String,
    dry_run: bool,
}

/// Reads `{"ids": [...]}` or the list's filters, `"reason"`, and (erasures) `"dry_run"`; a
/// selection of everything needs `"confirm_all": true`.
fn read_request(body: &[u8], erasure: bool) -> Result<Request, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let Value::Object(map) = value else {
        return Err("the body must be a JSON object".to_owned());
    };
    let mut filters = Map::new();
    let mut ids = None;
    let mut reason = None;
    let (mut dry_run, mut confirm_all) = (false, false);
    for (key, value) in map {
        match key.as_str() {
            "ids" => {
                let list: Vec<String> = serde_json::from_value(value)
                    .map_err(|_| "ids: expected an array of capture ids".to_owned())?;
                if list.is_empty() {
                    return Err("ids: empty; name at least one capture".to_owned());
                }
                ids = Some(list);
            }
            "reason" => match value {
                Value::String(s) if !s.trim().is_empty() => reason = Some(s.trim().to_owned()),
                _ => return Err("reason: expected a non-empty string".to_owned()),
            },
            "dry_run" if erasure => {
                dry_run = value
                    .as_bool()
                    .ok_or_else(|| "dry_run: expected true or false".to_owned())?
            }
            "confirm_all" => {
                confirm_all = value
                    .as_bool()
                    .ok_or_else(|| "confirm_all: expected true or false".to_owned())?
            }
            k if FILTERS.contains(&k) => {
                filters.insert(key, value);
            }
            other => {
                return Err(format!(
                    "unknown field \"{other}\"; expected ids or the list's filters ({}), reason{}, confirm_all",
                    FILTERS.join(", "),
                    if erasure { ", dry_run" } else { "" }
                ))
            }
        }
    }
    let reason = reason.ok_or_else(|| "reason: required (why these captures)".to_owned())?;
    let (selection, filters) = match ids {
        Some(_) if !filters.is_empty() => {
            return Err("give ids or filters, not both".to_owned());
        }
        Some(ids) => (Selection::Ids(ids), None),
        None => {
            let filters = Value::Object(filters);
            let req = filter_request(&filters).map_err(|e| e.0)?;
            if req.query.filter.is_empty() && !confirm_all {
                return Err(
                    "no ids and no filter: this selects every capture; add \"confirm_all\": true if that is meant"
                        .to_owned(),
                );
            }
            (Selection::Filter(Box::new(req)), Some(filters))
        }
    };
    Ok(Request {
        selection,
        filters,
        reason,
        dry_run,
    })
}

async fn erase(State(state): State<Arc<AppState>>, headers: HeaderMap, body: String) -> Response {
    if let Err(e) = authorize_admin(&headers, &state) {
        return e.into_response();
    }
    let req = match read_request(body.as_bytes(), true) {
        Ok(req) => req,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let ids = match req.selection {
        Selection::Ids(ids) => ids,
        Selection::Filter(list) => match super::resolve(&state.store, &list.query.filter).await {
            Ok(ids) => ids,
            Err(e) => return store_failure(&state, &e).into_response(),
        },
    };
    match super::erase(
        &state.store,
        &state.erase,
        ids,
        &req.reason,
        "request",
        req.dry_run,
    )
    .await
    {
        Ok(report) => Json(report).into_response(),
        Err(e) => store_failure(&state, &e).into_response(),
    }
}

async fn place_hold(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if let Err(e) = authorize_admin(&headers, &state) {
        return e.into_response();
    }
    let req = match read_request(body.as_bytes(), false) {
        Ok(req) => req,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let hold = Hold {
        id: super::fresh_id(),
        reason: req.reason,
        placed_at: super::now_text(),
        ids: match req.selection {
            Selection::Ids(ids) => Some(ids),
            Selection::Filter(_) => None,
        },
        filters: req.filters,
        lifted_at: None,
    };
    let entry = EventEntry {
        kind: HOLD_KIND,
        id: &hold.id,
        at: &hold.placed_at,
        reason: &hold.reason,
        by: "request",
        captures: hold.ids.as_deref().unwrap_or_default(),
        filters: hold.filters.as_ref(),
        verdicts: &[],
    }
    .to_text();
    match state.store.put_hold(hold.clone(), entry).await {
        Ok(()) => {
            tracing::info!(hold = %hold.id, reason = %hold.reason, "legal hold placed");
            (StatusCode::CREATED, Json(hold)).into_response()
        }
        Err(e) => store_failure(&state, &e).into_response(),
    }
}

async fn holds(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize_admin(&headers, &state) {
        return e.into_response();
    }
    match state.store.holds().await {
        Ok(holds) => Json(json!({ "holds": holds })).into_response(),
        Err(e) => store_failure(&state, &e).into_response(),
    }
}

async fn lift_hold(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(e) = authorize_admin(&headers, &state) {
        return e.into_response();
    }
    let at = super::now_text();
    let entry = EventEntry {
        kind: HOLD_LIFTED_KIND,
        id: &id,
        at: &at,
        reason: "lifted",
        by: "request",
        captures: &[],
        filters: None,
        verdicts: &[],
    }
    .to_text();
    match state.store.lift_hold(id.clone(), at.clone(), entry).await {
        Ok(true) => {
            tracing::info!(hold = %id, "legal hold lifted");
            Json(json!({ "id": id, "lifted_at": at })).into_response()
        }
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            format!("no hold in force has id \"{id}\""),
        ),
        Err(e) => store_failure(&state, &e).into_response(),
    }
}

/// The tombstones, most recently erased first (`?limit=`, default 100, at most 1000).
async fn tombstones(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<Vec<(String, String)>>,
) -> Response {
    if let Err(e) = authorize_read(&headers, &state) {
        return e.into_response();
    }
    let mut limit = 100;
    for (k, v) in q {
        match (k.as_str(), v.parse::<u32>()) {
            ("limit", Ok(n)) if (1..=1000).contains(&n) => limit = n,
            ("limit", _) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("limit: expected an integer from 1 to 1000, got \"{v}\""),
                )
            }
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("unknown query parameter \"{k}\"; expected limit"),
                )
            }
        }
    }
    match state.store.tombstones(limit).await {
        Ok(t) => Json(json!({ "tombstones": t })).into_response(),
        Err(e) => store_failure(&state, &e).into_response(),
    }
}

/// `410 Gone` with the tombstone, when the capture `id` was erased.
pub async fn gone(state: &AppState, id: &str) -> Option<Response> {
    let tombstone = state.store.tombstone(id.to_owned()).await.ok()??;
    Some(
        (
            StatusCode::GONE,
            Json(json!({
                "error": format!("capture \"{id}\" was erased on {} ({})", tombstone.erased_at, tombstone.reason),
                "tombstone": tombstone,
            })),
        )
            .into_response(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_names_what_is_missing_or_wrong() {
        let err = |body: &str| {
            read_request(body.as_bytes(), true)
                .err()
                .unwrap_or_default()
        };
        assert!(err(r#"{"ids":["a"]}"#).contains("reason: required"));
        assert!(err(r#"{"reason":"x"}"#).contains("confirm_all"));
        assert!(err(r#"{"ids":[],"reason":"x"}"#).contains("ids: empty"));
        assert!(err(r#"{"ids":["a"],"model":"m","reason":"x"}"#).contains("not both"));
        assert!(err(r#"{"idz":["a"],"reason":"x"}"#).contains("unknown field \"idz\""));
        assert!(err(r#"{"since":"yesterday","reason":"x"}"#).contains("since:"));
        assert!(read_request(br#"{"reason":"x","confirm_all":true}"#, true).is_ok());
        assert!(read_request(br#"{"reason":"x","dry_run":true}"#, false).is_err());
        let ok = read_request(br#"{"model":"gpt-4o","q":"secret","reason":"x"}"#, true).unwrap();
        assert!(
            matches!(ok.selection, Selection::Filter(r) if r.query.filter.model.as_deref() == Some("gpt-4o"))
        );
    }
}
