//! `GET /dashboard`: a self-contained page that polls `/circuit-status` and `/metrics`.

use actix_web::http::header;
use actix_web::HttpResponse;

const PAGE: &str = include_str!("dashboard.html");

/// Same-origin fetches only; the page loads nothing from elsewhere, so it works offline.
const CSP: &str = "default-src 'none'; connect-src 'self'; script-src 'unsafe-inline'; \
                   style-src 'unsafe-inline'; img-src data:";

pub async fn dashboard() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(PAGE)
}
