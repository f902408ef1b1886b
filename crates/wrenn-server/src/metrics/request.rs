//! The per-request middleware: picks the request id (a valid `X-Request-Id` from the client,
//! else a fresh one), runs the request inside a `request` tracing span carrying the id, the
//! method, the matched route template, and (once known) the status and latency, writes one
//! `info` line per request, records the HTTP metrics and returns the id in `X-Request-Id`.
//!
//! It never logs or labels headers, bodies, credentials, raw paths or query strings: the
//! route is the router's template (`/v1/sandboxes/{id}`), never the URI.

use super::{method_label, UNMATCHED_ROUTE};
use crate::app::App;
use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

/// The request and response header that carries the request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The longest request id accepted from a client.
pub const MAX_REQUEST_ID: usize = 64;

/// The id of the current request, also put in the request's extensions for handlers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// A client-supplied id is kept when it is 1–64 characters of `[A-Za-z0-9._-]`.
pub fn valid_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The client's id if valid, else a new random one (a UUID v4).
fn pick_request_id(req: &Request) -> String {
    req.headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_request_id(v))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// The middleware (installed with `axum::middleware::from_fn_with_state` as the outermost
/// router layer, so it sees the matched route and every answer, panics included).
pub async fn observe(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = pick_request_id(&req);
    let method = method_label(req.method());
    let route: Arc<str> = match req.extensions().get::<MatchedPath>() {
        Some(p) => Arc::from(p.as_str()),
        None => Arc::from(UNMATCHED_ROUTE),
    };
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %method,
        route = %route,
        status = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
    );
    let mut res = next.run(req).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = res.status().as_u16();
    app.metrics.observe_request(method, &route, status, elapsed);
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    span.record("status", status);
    span.record("latency_ms", latency_ms);
    span.in_scope(|| tracing::info!("request finished"));
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_rules() {
        for ok in ["a", "abc-123_X.y", &"z".repeat(64)] {
            assert!(valid_request_id(ok), "{ok:?} refused");
        }
        for bad in [
            "",
            &"z".repeat(65),
            "a b",
            "a/b",
            "é",
            "a\"b",
            "a\nb",
            "a;b",
        ] {
            assert!(!valid_request_id(bad), "{bad:?} accepted");
        }
    }
}
