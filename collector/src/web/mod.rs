//! The web view for auditors, served by the collector itself: the list of captures at `/` and
//! `/ui` (filters, search, paging), a capture's page at `/ui/captures/{id}`, and the sign-in at
//! `/ui/login`. Pages are rendered on the server from the same reads as the JSON API
//! ([`crate::reads`]); the stylesheet and icon are compiled into the binary; no page has a script.
//!
//! With a read token set, every page needs a sign-in ([`session`]); without one, the view is as
//! open as the JSON API.

pub mod format;
pub mod pages;
pub mod session;

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::Markup;
use serde::Deserialize;

use crate::http::{same_secret, store_failure, AppState};
use crate::reads::{self, ListRequest};
use crate::store::erase::EraseStore as _;
use pages::Viewer;

/// The stylesheet, compiled in.
pub const STYLE_CSS: &str = include_str!("assets/style.css");
/// The icon, compiled in.
pub const ICON_SVG: &str = include_str!("assets/icon.svg");
/// Part of every asset's path, so a new build's assets are never served from an old cache.
pub const ASSET_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The list's paths.
pub const LIST_PATHS: [&str; 3] = ["/", "/ui", "/ui/"];
/// A capture's page.
pub const CAPTURE_PATH: &str = "/ui/captures/{id}";
/// The sign-in form (GET) and the sign-in (POST).
pub const SIGN_IN_PATH: &str = "/ui/login";
/// The sign-out (POST).
pub const SIGN_OUT_PATH: &str = "/ui/logout";
/// The compiled-in stylesheet and icon.
pub const ASSET_PATH: &str = "/ui/assets/{version}/{name}";
/// Every path the web view serves.
pub const PATHS: [&str; 7] = [
    LIST_PATHS[0],
    LIST_PATHS[1],
    LIST_PATHS[2],
    CAPTURE_PATH,
    SIGN_IN_PATH,
    SIGN_OUT_PATH,
    ASSET_PATH,
];

/// The web view's routes.
pub fn routes() -> Router<Arc<AppState>> {
    let mut router = Router::new();
    for path in LIST_PATHS {
        router = router.route(path, get(list_page));
    }
    router
        .route(CAPTURE_PATH, get(capture_page))
        .route(SIGN_IN_PATH, get(sign_in_page).post(sign_in))
        .route(SIGN_OUT_PATH, post(sign_out))
        .route(ASSET_PATH, get(asset))
}

fn html(status: StatusCode, page: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page.into_string(),
    )
        .into_response()
}

/// Who the request comes from; `None` when it must sign in first.
fn viewer(state: &AppState, headers: &HeaderMap) -> Option<Viewer> {
    match state.read_token.as_deref() {
        None => Some(Viewer::Open),
        Some(token) if session::valid(headers, token) => Some(Viewer::SignedIn),
        Some(_) => None,
    }
}

/// The sign-in page, as the answer to a request for `uri`, which it returns to afterwards.
fn sign_in_first(uri: &Uri) -> Response {
    let next = uri
        .path_and_query()
        .map_or("/ui".to_owned(), |p| p.as_str().to_owned());
    html(StatusCode::UNAUTHORIZED, pages::sign_in(&next, None))
}

async fn list_page(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    uri: Uri,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let Some(viewer) = viewer(&state, &headers) else {
        return sign_in_first(&uri);
    };
    let pairs = query.map(|Query(p)| p).unwrap_or_default();
    let req = match ListRequest::parse(&pairs) {
        Ok(req) => req,
        Err(e) => {
            // Show the form with what was typed, and what is wrong with it.
            let shown = ListRequest {
                filters: pairs.into_iter().filter(|(_, v)| !v.is_empty()).collect(),
                ..ListRequest::default()
            };
            return html(
                StatusCode::BAD_REQUEST,
                pages::list(&shown, None, &[], Some(&e.0), viewer),
            );
        }
    };
    let (page, models) = tokio::join!(reads::list(&state, &req), reads::models(&state));
    match page {
        Ok(page) => html(
            StatusCode::OK,
            pages::list(&req, Some(&page), &models.unwrap_or_default(), None, viewer),
        ),
        Err(e) => {
            let e = store_failure(&state, &e);
            html(
                e.status(),
                pages::list(&req, None, &[], Some(e.message()), viewer),
            )
        }
    }
}

async fn capture_page(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
) -> Response {
    let Some(viewer) = viewer(&state, &headers) else {
        return sign_in_first(&uri);
    };
    match reads::capture(&state, id.clone()).await {
        Ok(Some(read)) => html(StatusCode::OK, pages::capture(&id, &read, viewer)),
        Ok(None) if let Ok(Some(t)) = state.store.tombstone(id.clone()).await => html(
            StatusCode::GONE,
            pages::problem(
                "Erased capture",
                &format!(
                    "Capture \"{id}\" was erased on {} ({}). Its tombstone remains: started at {}, log index {}, leaf hash {}, erasure {} by {}.",
                    t.erased_at,
                    t.reason,
                    t.started_at,
                    t.log_index.map_or("none".to_owned(), |i| i.to_string()),
                    t.leaf_hash,
                    t.erasure,
                    t.by
                ),
                viewer,
            ),
        ),
        Ok(None) => html(
            StatusCode::NOT_FOUND,
            pages::problem(
                "No such capture",
                &format!("No capture is stored with id \"{id}\"."),
                viewer,
            ),
        ),
        Err(e) => {
            let e = store_failure(&state, &e);
            html(
                e.status(),
                pages::problem("The store did not answer", e.message(), viewer),
            )
        }
    }
}

/// Where to go after signing in: a path on this collector, never another site.
fn local_path(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.to_owned(),
        _ => "/ui".to_owned(),
    }
}

/// A post from another site (a forged sign-in or sign-out) is refused; browsers say where a
/// request comes from in `sec-fetch-site`.
fn cross_site(headers: &HeaderMap) -> bool {
    headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| !matches!(v, "same-origin" | "none"))
}

fn see_other(location: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

#[derive(Deserialize)]
struct NextQuery {
    next: Option<String>,
}

async fn sign_in_page(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<NextQuery>, QueryRejection>,
) -> Response {
    let next = local_path(query.ok().and_then(|Query(q)| q.next).as_deref());
    match state.read_token.as_deref() {
        None => see_other(&next),
        Some(token) if session::valid(&headers, token) => see_other(&next),
        Some(_) => html(StatusCode::OK, pages::sign_in(&next, None)),
    }
}

#[derive(Deserialize)]
struct SignInForm {
    token: String,
    next: Option<String>,
}

async fn sign_in(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    form: Result<Form<SignInForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    if cross_site(&headers) {
        return html(
            StatusCode::FORBIDDEN,
            pages::problem(
                "Refused",
                "A sign-in posted from another site is refused.",
                Viewer::Anonymous,
            ),
        );
    }
    let Ok(Form(form)) = form else {
        return html(
            StatusCode::BAD_REQUEST,
            pages::sign_in("/ui", Some("The form did not arrive whole; try again.")),
        );
    };
    let next = local_path(form.next.as_deref());
    let Some(token) = state.read_token.as_deref() else {
        return see_other(&next);
    };
    if !same_secret(form.token.trim().as_bytes(), token.as_bytes()) {
        // A wrong guess costs the guesser a moment; the token is never echoed.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        tracing::info!("web view: a sign-in with a wrong token");
        return html(
            StatusCode::UNAUTHORIZED,
            pages::sign_in(&next, Some("That is not this collector's read token.")),
        );
    }
    let mut r = see_other(&next);
    r.headers_mut().insert(
        header::SET_COOKIE,
        session::sign_in(token, session::is_https(&headers)),
    );
    r
}

async fn sign_out(headers: HeaderMap) -> Response {
    if cross_site(&headers) {
        return StatusCode::FORBIDDEN.into_response();
    }
    let mut r = see_other("/ui/login");
    for cookie in session::sign_out(session::is_https(&headers)) {
        r.headers_mut().append(header::SET_COOKIE, cookie);
    }
    r
}

async fn asset(Path((version, name)): Path<(String, String)>) -> Response {
    let (body, kind) = match name.as_str() {
        "style.css" => (STYLE_CSS, "text/css; charset=utf-8"),
        "icon.svg" => (ICON_SVG, "image/svg+xml"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    let cache = if version == ASSET_VERSION {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    (
        [(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, cache)],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed_after_sign_in() {
        assert_eq!(local_path(Some("/ui/captures/a?x=1")), "/ui/captures/a?x=1");
        for bad in [
            "https://evil.example/",
            "//evil.example/",
            "/\\evil",
            "ui",
            "",
        ] {
            assert_eq!(local_path(Some(bad)), "/ui", "{bad}");
        }
        assert_eq!(local_path(None), "/ui");
    }

    #[test]
    fn cross_site_posts_are_recognised() {
        let mut h = HeaderMap::new();
        assert!(!cross_site(&h));
        h.insert("sec-fetch-site", "same-origin".parse().unwrap());
        assert!(!cross_site(&h));
        h.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(cross_site(&h));
        h.insert("sec-fetch-site", "same-site".parse().unwrap());
        assert!(cross_site(&h));
    }
}
