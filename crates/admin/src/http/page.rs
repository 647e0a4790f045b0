//! The status page at `/` and `/status`: one HTML file, a script and a style
//! sheet, all built into the binary (no CDN, nothing fetched at run time, no
//! build step). The script reads the JSON API, follows `/api/v1/events`, and
//! sends the operator's changes with the token typed into the page.

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use super::AppState;

pub(super) const INDEX: &str = include_str!("../../assets/index.html");
pub(super) const SCRIPT: &str = include_str!("../../assets/weir.js");
pub(super) const STYLE: &str = include_str!("../../assets/weir.css");

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(index))
        .route("/status", get(index))
        .route("/assets/weir.js", get(script))
        .route("/assets/weir.css", get(style))
}

async fn index() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX)
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
}

async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE)
}
