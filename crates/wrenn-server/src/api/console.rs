//! The web console (`console/` in the repository), embedded in the binary at build time by
//! `build.rs` and served at `/` by the API router's fallback: a file of the build by its
//! path, and `index.html` for any other page path (the console routes in the browser).
//! API paths (`/v1/...`) and non-GET methods never reach the console: they keep their JSON
//! 404 and 405 answers. Hashed assets (`/assets/...`) are cached for good, `index.html`
//! never. A binary built without the console answers a page that says how to build it.

use super::{method_not_allowed, route_not_found};
use axum::http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderName, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// `(path, bytes)` of every file of `console/dist`, sorted by path; empty when not built.
static ASSETS: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/console_assets.rs"));

const NOT_BUILT: &str = "<!doctype html><html><head><meta charset=\"utf-8\"><title>Wrenn</title>\
</head><body style=\"font-family:sans-serif;max-width:40em;margin:3em auto\">\
<h1>Wrenn</h1><p>The web console was not built into this binary. Build it with \
<code>scripts/build.sh</code> (it needs Node.js and npm: <code>scripts/deps.sh</code> installs \
them). The API is served as usual: see <a href=\"/openapi.yaml\">/openapi.yaml</a>.</p>\
</body></html>";

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
form-action 'self'";

/// Whether the console was built into this binary.
pub fn built() -> bool {
    find("/index.html").is_some()
}

fn find(path: &str) -> Option<&'static [u8]> {
    ASSETS
        .binary_search_by(|(p, _)| (*p).cmp(path))
        .ok()
        .map(|i| ASSETS[i].1)
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, e)| e) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json" | "map") => "application/json",
        Some("webmanifest") => "application/manifest+json",
        Some("woff2") => "font/woff2",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn is_api(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/") || path == "/metrics" || path == "/openapi.yaml"
}

fn page(body: &'static [u8]) -> Response {
    (
        StatusCode::OK,
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (CACHE_CONTROL, "no-cache"),
            (HeaderName::from_static("content-security-policy"), CSP),
            (HeaderName::from_static("x-content-type-options"), "nosniff"),
            // The GitHub sign-in's last page has the session token in its address.
            (HeaderName::from_static("referrer-policy"), "no-referrer"),
        ],
        body,
    )
        .into_response()
}

/// Whether a request is a browser's page load: it asks for HTML (`Accept: text/html`, which
/// browsers send when they navigate). Other clients (scripts, SDKs, `curl` by default) asking
/// for a path that is neither a route nor a file keep the API's JSON 404.
fn wants_page(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("text/html"))
}

/// The router's fallback: the console for GET and HEAD outside the API (its files for anyone,
/// its page paths for browsers, and `/` for everyone), the API's error answers otherwise.
pub(super) async fn fallback(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let path = uri.path();
    if is_api(path) {
        return route_not_found(uri.clone()).await.into_response();
    }
    if method != Method::GET && method != Method::HEAD {
        return method_not_allowed().await.into_response();
    }
    if path != "/index.html" {
        if let Some(bytes) = find(path) {
            let cache = if path.starts_with("/assets/") {
                "public, max-age=31536000, immutable"
            } else {
                "no-cache"
            };
            return (
                [
                    (CONTENT_TYPE, content_type(path)),
                    (CACHE_CONTROL, cache),
                    (HeaderName::from_static("x-content-type-options"), "nosniff"),
                ],
                bytes,
            )
                .into_response();
        }
    }
    // A missing file (an old hashed asset, a typo) is a 404, not the page.
    let last = path.rsplit('/').next().unwrap_or_default();
    if path.starts_with("/assets/")
        || (last.contains('.') && path != "/index.html")
        || (path != "/" && !wants_page(&headers))
    {
        return route_not_found(uri.clone()).await.into_response();
    }
    page(find("/index.html").unwrap_or(NOT_BUILT.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_paths_are_never_the_console() {
        for p in [
            "/v1",
            "/v1/sandboxes",
            "/v1/nope",
            "/metrics",
            "/openapi.yaml",
        ] {
            assert!(is_api(p), "{p}");
        }
        for p in ["/", "/auth/github/callback", "/sandboxes/sb-1", "/v1x"] {
            assert!(!is_api(p), "{p}");
        }
    }

    #[test]
    fn content_types_by_extension() {
        assert_eq!(
            content_type("/assets/a-1.js"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(content_type("/assets/a-1.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("/favicon.svg"), "image/svg+xml");
        assert_eq!(content_type("/x"), "application/octet-stream");
    }

    #[test]
    fn assets_are_sorted_for_the_lookup() {
        assert!(ASSETS.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
