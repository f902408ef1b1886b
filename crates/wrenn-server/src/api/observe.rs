//! The per-request middleware, outermost layer of the router: picks the request id (a valid
//! `X-Request-Id` from the client, else a fresh one), runs the request inside a `request`
//! tracing span carrying the id, the method, the matched route template, and (once known)
//! the status and latency, writes one `info` line per request, records the HTTP metrics and
//! returns the id in `X-Request-Id`.
//!
//! The rules (which ids are kept, which labels exist) are `metrics::request`'s; this file
//! only applies them. It never logs or labels headers, bodies, credentials, raw paths or
//! query strings.

use crate::app::App;
use crate::metrics::request::{
    method_label, valid_request_id, RequestId, CURRENT_REQUEST_ID, LOG_TARGET, REQUEST_ID_HEADER,
    UNMATCHED_ROUTE,
};
use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

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
        target: LOG_TARGET,
        "request",
        request_id = %id,
        method = %method,
        route = %route,
        status = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
    );
    let mut res = CURRENT_REQUEST_ID
        .scope(id.clone(), next.run(req).instrument(span.clone()))
        .await;
    let elapsed = started.elapsed();
    let status = res.status().as_u16();
    app.metrics.observe_request(method, route, status, elapsed);
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    span.record("status", status);
    span.record("latency_ms", latency_ms);
    span.in_scope(|| tracing::info!(target: LOG_TARGET, "request finished"));
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    res
}
