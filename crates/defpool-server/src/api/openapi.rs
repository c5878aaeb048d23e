//! The OpenAPI document (hand-written, `openapi.json`) and a self-contained page rendering it
//! (no CDN: the document is inlined in the page and rendered by a few lines of script).

use axum::http::header;
use axum::response::{Html, IntoResponse, Response};

pub const DOCUMENT: &str = include_str!("openapi.json");
const PAGE: &str = include_str!("docs.html");

pub async fn document() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT).into_response()
}

pub async fn docs() -> Html<String> {
    // `</` cannot end the inline script early once escaped.
    Html(PAGE.replace("__OPENAPI__", &DOCUMENT.replace("</", "<\\/")))
}
