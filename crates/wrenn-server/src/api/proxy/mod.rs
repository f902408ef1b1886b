//! The port proxy: HTTP and WebSocket to a port of a running capsule, through its host agent
//! ([`wrenn_agent_api::HostAgent::open_port`]). Two forms reach it:
//!
//! - by name: `http://{port}-{capsule id}.{proxy domain}/…`, decided by the `Host` header
//!   before any route ([`by_host`], a middleware around the whole router), for a wildcard DNS
//!   name pointing at this server. The guest sees the path as it is.
//! - by path: `/v1/capsules/{id}/proxy/{port}/…` on the API's own address, for setups without
//!   wildcard DNS. The guest sees the path after the prefix; a redirect to a path of its own
//!   (`Location: /dir/`) is given the prefix back. Links the guest writes as absolute paths
//!   (`href="/x"`) do not carry the prefix: for such apps, use the name form.
//!
//! Who may use it is [`crate::config::ProxyAuth`]'s (an API key in `X-API-Key` or
//! `Authorization: Bearer`, which the guest never sees, or the URL alone); which capsule and
//! how many connections are `App::proxy_target` and `App::proxy_slot`. The exchange itself
//! (headers, streaming, upgrades, redirects) is `forward`'s.

mod forward;

use super::extract::ClientAddr;
use crate::app::App;
use crate::error::ApiError;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use forward::{Form, Target};
use std::sync::Arc;
use wrenn_agent_api::parse_port;

/// Marks an answer that comes from a guest (not from the proxy), so no middleware rewrites it.
#[derive(Clone, Copy)]
pub(crate) struct Proxied;

/// Longest capsule id accepted in a proxy address: the one rule's longest name.
const MAX_ID: usize = wrenn_types::names::MAX_NAME_LEN;

pub(super) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/capsules/{id}/proxy/{port}", any(by_path))
        .route("/v1/capsules/{id}/proxy/{port}/", any(by_path))
        .route("/v1/capsules/{id}/proxy/{port}/{*rest}", any(by_path))
}

/// A capsule id as it may appear in a proxy address: lowercase letters, digits and `-`.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The port and capsule of a `Host` of the form `{port}-{id}.{domain}[:port]`, `domain`
/// being the configured proxy domain (any, when none is). `None` for any other host.
pub(crate) fn host_target(host: &str, domain: Option<&str>) -> Option<(u16, String)> {
    let host = host.trim().trim_end_matches('.').to_ascii_lowercase();
    if host.starts_with('[') {
        return None;
    }
    let host = match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h.to_string(),
        _ => host,
    };
    let (first, rest) = host.split_once('.')?;
    let rest = rest.trim_end_matches('.');
    if rest.is_empty() || domain.is_some_and(|d| d != rest) {
        return None;
    }
    let (port, id) = first.split_once('-')?;
    if !valid_id(id) {
        return None;
    }
    Some((parse_port(port)?, id.to_string()))
}

/// The request's host: `Host`, or the authority of an absolute URI (HTTP/2).
fn request_host(req: &Request) -> Option<String> {
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
}

/// Answers a request whose `Host` names a capsule's port; passes any other request on.
pub(super) async fn by_host(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let Some(host) = request_host(&req) else {
        return next.run(req).await;
    };
    let Some((port, id)) = host_target(&host, app.cfg.proxy.domain.as_deref()) else {
        return next.run(req).await;
    };
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or("/".to_string(), |p| p.as_str().to_string());
    let target = Target {
        id,
        port,
        path_and_query,
        form: Form::Host { host },
    };
    serve(app, target, req).await
}

/// `/v1/capsules/{id}/proxy/{port}/…`.
async fn by_path(State(app): State<Arc<App>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    // "", "v1", "capsules", id, "proxy", port, rest
    let segs: Vec<&str> = path.splitn(7, '/').collect();
    let (id, port) = (
        segs.get(3).copied().unwrap_or(""),
        segs.get(5).copied().unwrap_or(""),
    );
    if !valid_id(id) {
        return ApiError::SandboxNotFound(id.chars().take(MAX_ID).collect()).into_response();
    }
    let Some(port_no) = parse_port(port) else {
        return ApiError::BadRequest("port must be a number from 1 to 65535".into())
            .into_response();
    };
    let prefix = format!("/v1/capsules/{id}/proxy/{port}");
    let rest = &path[prefix.len()..];
    if rest.is_empty() {
        // The app's root, with the slash its relative links need.
        let to = match &query {
            Some(q) => format!("{prefix}/?{q}"),
            None => format!("{prefix}/"),
        };
        return (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, to)]).into_response();
    }
    let path_and_query = match &query {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_string(),
    };
    let target = Target {
        id: id.to_string(),
        port: port_no,
        path_and_query,
        form: Form::Path {
            prefix,
            host: request_host(&req),
        },
    };
    serve(app, target, req).await
}

/// The API key a request carries: `X-API-Key`, else `Authorization: Bearer <key>` (then the
/// `Authorization` header is the proxy's and is not passed on).
fn api_key(headers: &HeaderMap) -> (Option<String>, bool) {
    if let Some(k) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return (Some(k.trim().to_string()), false);
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|k| k.trim().to_string())
        .filter(|k| k.starts_with(crate::auth::API_KEY_PREFIX));
    let used = bearer.is_some();
    (bearer, used)
}

async fn serve(app: Arc<App>, target: Target, req: Request) -> Response {
    let (mut parts, body) = req.into_parts();
    let client =
        match <ClientAddr as axum::extract::FromRequestParts<Arc<App>>>::from_request_parts(
            &mut parts, &app,
        )
        .await
        {
            Ok(ClientAddr(a)) => a,
            Err(e) => return e.into_response(),
        };
    let (key, bearer_used) = api_key(&parts.headers);
    let sb = match app.proxy_target(key.as_deref(), &target.id).await {
        Ok(sb) => sb,
        Err(e) => return e.into_response(),
    };
    parts.headers.remove("x-api-key");
    if bearer_used {
        parts.headers.remove(header::AUTHORIZATION);
    }
    let req = Request::from_parts(parts, body);
    match forward::forward(app, sb, target, req, client).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_name_a_port_and_a_capsule() {
        let t = |h: &str, d: Option<&str>| host_target(h, d);
        let want = Some((8000, "sb-abc123".to_string()));
        assert_eq!(t("8000-sb-abc123.localhost", None), want);
        assert_eq!(t("8000-SB-abc123.Localhost:9090", None), want);
        assert_eq!(
            t(
                "8000-sb-abc123.sandbox.example.com",
                Some("sandbox.example.com")
            ),
            want
        );
        assert_eq!(
            t(
                "8000-sb-abc123.sandbox.example.com.",
                Some("sandbox.example.com")
            ),
            want
        );
        assert_eq!(
            t("8000-sb-abc123.evil.com", Some("sandbox.example.com")),
            None
        );
        assert_eq!(
            t(
                "8000-sb-abc123.x.sandbox.example.com",
                Some("sandbox.example.com")
            ),
            None
        );
        for not_ours in [
            "localhost:8080",
            "127.0.0.1:8080",
            "[::1]:8080",
            "api.example.com",
            "8000-sb-abc123",
            "0-sb-abc.localhost",
            "65536-sb-abc.localhost",
            "80x-sb-abc.localhost",
            "8000-.localhost",
            "8000-sb_abc.localhost",
        ] {
            assert_eq!(t(not_ours, None), None, "{not_ours}");
        }
    }

    #[test]
    fn the_key_comes_from_x_api_key_or_a_bearer_key() {
        let mut h = HeaderMap::new();
        assert_eq!(api_key(&h), (None, false));
        h.insert(
            header::AUTHORIZATION,
            "Bearer token-of-the-app".parse().unwrap(),
        );
        assert_eq!(api_key(&h), (None, false));
        let key = format!("{}abc", crate::auth::API_KEY_PREFIX);
        h.insert(
            header::AUTHORIZATION,
            format!("Bearer {key}").parse().unwrap(),
        );
        assert_eq!(api_key(&h), (Some(key.clone()), true));
        h.insert("x-api-key", "other".parse().unwrap());
        assert_eq!(api_key(&h), (Some("other".into()), false));
    }
}
