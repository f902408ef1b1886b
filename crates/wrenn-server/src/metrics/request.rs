//! The vocabulary of request observation: the request-id rules, the fixed set of `method`
//! label values, the `route` label of unmatched requests, and the tracing target of the
//! request span and line. The middleware that applies them to each request is
//! `api::observe`; this module reads no request itself.
//!
//! Nothing here admits headers, bodies, credentials, raw paths or query strings: the route
//! is the router's template (`/v1/sandboxes/{id}`), never the URI.

/// The request and response header that carries the request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The longest request id accepted from a client.
pub const MAX_REQUEST_ID: usize = 64;

/// The `route` label of requests that matched no route.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// The tracing target of the `request` span and its `request finished` line. It names the
/// module that wrote them before the middleware moved to `api`, so that log filters such as
/// `RUST_LOG=info,wrenn_server::metrics::request=warn` keep working.
pub const LOG_TARGET: &str = "wrenn_server::metrics::request";

/// The id of the current request, also put in the request's extensions for handlers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

tokio::task_local! {
    /// The id of the request being answered, set by `api::observe` around the handler, so
    /// an error answer can name it (`ApiError`'s response) without being handed it.
    pub static CURRENT_REQUEST_ID: String;
}

/// The id of the request this task is answering, if any.
pub fn current_request_id() -> Option<String> {
    CURRENT_REQUEST_ID.try_with(Clone::clone).ok()
}

/// A client-supplied id is kept when it is 1–64 characters of `[A-Za-z0-9._-]`.
pub fn valid_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Maps a request method to a label from a fixed set (extension methods become `other`).
pub fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
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

    #[test]
    fn methods_map_to_a_fixed_set() {
        let odd = axum::http::Method::from_bytes(b"BREW").unwrap();
        assert_eq!(method_label(&odd), "other");
        assert_eq!(method_label(&axum::http::Method::GET), "GET");
    }
}
