//! [`ApiError`], the domain errors of the public API, and the one place that maps each to a
//! stable [`ErrorCode`] (and through it an HTTP status) in the
//! `{"error":{"code","message"}}` body. Internal details (database errors, panics) are
//! logged, never sent to the client.

use crate::agent::AgentApiError;
use crate::metrics::request::current_request_id;
use crate::store::{QuotaExceeded, StoreError};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use wrenn_types::agent::AgentErrorCode;
use wrenn_types::ErrorBody;

/// The `code` of the public API's error body; its serde name is the string on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    #[serde(rename = "bad_request")]
    BadRequest,
    #[serde(rename = "invalid_json")]
    InvalidJson,
    #[serde(rename = "unsupported_media_type")]
    UnsupportedMediaType,
    #[serde(rename = "unauthorized")]
    Unauthorized,
    #[serde(rename = "invalid_credentials")]
    InvalidCredentials,
    /// A host's join token is unknown, malformed, used or expired (additive to the seed spec).
    #[serde(rename = "invalid_join_token")]
    InvalidJoinToken,
    #[serde(rename = "email_taken")]
    EmailTaken,
    #[serde(rename = "sandbox_not_found")]
    SandboxNotFound,
    #[serde(rename = "template_not_found")]
    TemplateNotFound,
    #[serde(rename = "api_key_not_found")]
    ApiKeyNotFound,
    #[serde(rename = "file_not_found")]
    FileNotFound,
    #[serde(rename = "oauth_provider_not_configured")]
    OAuthProviderNotConfigured,
    /// No such route.
    #[serde(rename = "not_found")]
    NotFound,
    #[serde(rename = "method_not_allowed")]
    MethodNotAllowed,
    #[serde(rename = "sandbox_not_running")]
    SandboxNotRunning,
    #[serde(rename = "sandbox_not_paused")]
    SandboxNotPaused,
    #[serde(rename = "conflict")]
    Conflict,
    #[serde(rename = "snapshot_exists")]
    SnapshotExists,
    #[serde(rename = "name_reserved")]
    NameReserved,
    #[serde(rename = "payload_too_large")]
    PayloadTooLarge,
    #[serde(rename = "no_capacity")]
    NoCapacity,
    /// A per-team quota would be exceeded (additive to the seed spec).
    #[serde(rename = "quota_exceeded")]
    QuotaExceeded,
    /// Too many login or signup attempts (additive to the seed spec).
    #[serde(rename = "rate_limited")]
    RateLimited,
    /// Signup is closed on this control plane (additive to the seed spec).
    #[serde(rename = "signup_closed")]
    SignupClosed,
    /// The caller is known but this request of theirs is refused: a session cookie sent
    /// without its CSRF token or from another origin (additive to the seed spec).
    #[serde(rename = "forbidden")]
    Forbidden,
    /// The request took longer than the server allows (additive to the seed spec).
    #[serde(rename = "timeout")]
    Timeout,
    /// The sandbox's host has missed its heartbeats; its sandboxes are unavailable until it
    /// returns (additive to the seed spec).
    #[serde(rename = "host_unreachable")]
    HostUnreachable,
    #[serde(rename = "agent_error")]
    AgentError,
    #[serde(rename = "internal_error")]
    InternalError,
}

impl ErrorCode {
    /// The HTTP status answered with this code.
    pub fn status(self) -> StatusCode {
        use ErrorCode::*;
        match self {
            BadRequest | InvalidJson => StatusCode::BAD_REQUEST,
            UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Unauthorized | InvalidCredentials | InvalidJoinToken => StatusCode::UNAUTHORIZED,
            SandboxNotFound
            | TemplateNotFound
            | ApiKeyNotFound
            | FileNotFound
            | OAuthProviderNotConfigured
            | NotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            EmailTaken | SandboxNotRunning | SandboxNotPaused | Conflict | SnapshotExists
            | NameReserved => StatusCode::CONFLICT,
            PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            NoCapacity | HostUnreachable => StatusCode::SERVICE_UNAVAILABLE,
            QuotaExceeded | RateLimited => StatusCode::TOO_MANY_REQUESTS,
            SignupClosed | Forbidden => StatusCode::FORBIDDEN,
            Timeout => StatusCode::GATEWAY_TIMEOUT,
            AgentError => StatusCode::BAD_GATEWAY,
            InternalError => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Everything a public API request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is well-formed but a value is out of range or invalid.
    #[error("{0}")]
    BadRequest(String),
    /// The body is not valid JSON or does not match the expected shape.
    #[error("{0}")]
    InvalidJson(String),
    /// The body's content type is not the one the endpoint accepts.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Credentials (JWT or API key) are missing or invalid.
    #[error("{0}")]
    Unauthorized(String),
    /// Valid credentials, but the request carrying them is refused (a session cookie
    /// without its CSRF token, or from another origin).
    #[error("{0}")]
    Forbidden(String),
    /// Login with an unknown email or a wrong password (one message for both).
    #[error("invalid email or password")]
    InvalidCredentials,
    /// A host's join token was refused; the message says why (unknown, malformed, used,
    /// expired, or made for another CA).
    #[error("{0}")]
    InvalidJoinToken(String),
    /// Signup with an email that already has an account.
    #[error("email already registered")]
    EmailTaken,
    /// No sandbox with that id in the caller's team.
    #[error("sandbox {0} not found")]
    SandboxNotFound(String),
    /// No template with that name for the caller's team (nor a base template).
    #[error("template {0} not found")]
    TemplateNotFound(String),
    /// No API key with that id in the caller's team.
    #[error("API key {0} not found")]
    ApiKeyNotFound(String),
    /// The file does not exist in the sandbox.
    #[error("{0}")]
    FileNotFound(String),
    /// No background process with that pid or tag in the sandbox (code `not_found`).
    #[error("{0}")]
    ProcessNotFound(String),
    /// The OAuth provider is unknown or not configured on this control plane.
    #[error("OAuth provider {0} is not configured")]
    OAuthNotConfigured(String),
    /// No such route.
    #[error("no route for {0}")]
    RouteNotFound(String),
    /// The route exists but not for this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The operation needs a running sandbox.
    #[error("sandbox {id} is {status}, not running")]
    NotRunning { id: String, status: String },
    /// Resume needs a paused sandbox.
    #[error("sandbox {id} is {status}, not paused")]
    NotPaused { id: String, status: String },
    /// The agent refused the operation in the sandbox's current state.
    #[error("{0}")]
    Conflict(String),
    /// A snapshot with that name exists and overwrite was not asked for.
    #[error("snapshot {0} already exists (use ?overwrite=true)")]
    SnapshotExists(String),
    /// Another snapshot of that name is being taken.
    #[error("a snapshot named {0} is being taken; try again when it is done")]
    SnapshotInProgress(String),
    /// The name is a base template's and cannot be used for a snapshot.
    #[error("{0} is a base template name and cannot be used for a snapshot")]
    ReservedName(String),
    /// The body is over the endpoint's limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// No healthy host has room for the sandbox.
    #[error("no host has capacity for this sandbox")]
    NoCapacity,
    /// A host agent failed or could not be reached.
    #[error("host agent error: {0}")]
    Agent(AgentApiError),
    /// The sandbox's host missed its heartbeats: nothing can be done with the sandbox until
    /// it returns (code `host_unreachable`, 503).
    #[error(
        "the sandbox's host is unreachable; the sandbox is unavailable until its host returns"
    )]
    HostUnreachable,
    /// No host agent answered, so the sandbox could not be placed.
    #[error("host agent error: no host agent is reachable")]
    NoHost,
    /// Too many attempts from this client or for this email; retry after the duration.
    #[error("too many attempts; try again in {} s", retry_after_secs(*.0))]
    RateLimited(std::time::Duration),
    /// Signup is closed: accounts are created by an administrator.
    #[error("signup is closed on this server; ask its administrator for an account")]
    SignupClosed,
    /// The request took longer than `request_timeout`.
    #[error("the request took too long")]
    Timeout,
    /// The team is at one of its quotas; the message names it.
    #[error("team quota exceeded: {0}")]
    QuotaExceeded(QuotaExceeded),
    /// Nothing accepts connections on a capsule's port (the port proxy; code `agent_error`,
    /// 502, and no host details).
    #[error("nothing answered on port {port} of capsule {id}")]
    PortUnreachable { id: String, port: u16 },
    /// A capsule or team already has as many proxied connections open as allowed (code
    /// `quota_exceeded`).
    #[error("{0}")]
    ProxyBusy(String),
    /// The database failed.
    #[error("storage error: {0}")]
    Store(StoreError),
    /// Anything else that should not happen (including a caught panic).
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for ApiError {
    /// A refused admission is the tenant's quota; any other store error is internal.
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::OverQuota(q) => ApiError::QuotaExceeded(q),
            e => ApiError::Store(e),
        }
    }
}

impl From<AgentApiError> for ApiError {
    /// Agent errors that mean something to the user keep their meaning; the rest are 502.
    fn from(e: AgentApiError) -> Self {
        match &e {
            AgentApiError::Api { code, message, .. } => match code {
                AgentErrorCode::FileNotFound => ApiError::FileNotFound(tenant_words(message)),
                AgentErrorCode::Conflict => ApiError::Conflict(tenant_words(message)),
                AgentErrorCode::BadRequest => ApiError::BadRequest(tenant_words(message)),
                AgentErrorCode::Capacity => ApiError::NoCapacity,
                AgentErrorCode::TooLarge => ApiError::PayloadTooLarge(tenant_words(message)),
                AgentErrorCode::ProcessNotFound => ApiError::ProcessNotFound(tenant_words(message)),
                // The host's own business (its token, ids and names are ours, not the
                // user's): a 502. Unknown sandboxes and templates are caught by the callers
                // that expect them.
                AgentErrorCode::Unauthorized
                | AgentErrorCode::PortUnreachable
                | AgentErrorCode::NotFound
                | AgentErrorCode::TemplateNotFound
                | AgentErrorCode::AlreadyExists
                | AgentErrorCode::Internal
                | AgentErrorCode::Unknown => ApiError::Agent(e),
            },
            _ => ApiError::Agent(e),
        }
    }
}

impl ApiError {
    /// A body over `limit` bytes.
    pub fn too_large(limit: u64) -> Self {
        ApiError::PayloadTooLarge(format!("payload too large (limit {limit} bytes)"))
    }

    /// The stable error code (the status follows from it: [`ErrorCode::status`]).
    pub fn code(&self) -> ErrorCode {
        use ApiError::*;
        match self {
            BadRequest(_) => ErrorCode::BadRequest,
            InvalidJson(_) => ErrorCode::InvalidJson,
            UnsupportedMediaType(_) => ErrorCode::UnsupportedMediaType,
            Unauthorized(_) => ErrorCode::Unauthorized,
            Forbidden(_) => ErrorCode::Forbidden,
            InvalidCredentials => ErrorCode::InvalidCredentials,
            InvalidJoinToken(_) => ErrorCode::InvalidJoinToken,
            EmailTaken => ErrorCode::EmailTaken,
            SandboxNotFound(_) => ErrorCode::SandboxNotFound,
            TemplateNotFound(_) => ErrorCode::TemplateNotFound,
            ApiKeyNotFound(_) => ErrorCode::ApiKeyNotFound,
            FileNotFound(_) => ErrorCode::FileNotFound,
            OAuthNotConfigured(_) => ErrorCode::OAuthProviderNotConfigured,
            RouteNotFound(_) | ProcessNotFound(_) => ErrorCode::NotFound,
            MethodNotAllowed => ErrorCode::MethodNotAllowed,
            NotRunning { .. } => ErrorCode::SandboxNotRunning,
            NotPaused { .. } => ErrorCode::SandboxNotPaused,
            Conflict(_) => ErrorCode::Conflict,
            SnapshotExists(_) | SnapshotInProgress(_) => ErrorCode::SnapshotExists,
            ReservedName(_) => ErrorCode::NameReserved,
            PayloadTooLarge(_) => ErrorCode::PayloadTooLarge,
            NoCapacity => ErrorCode::NoCapacity,
            HostUnreachable => ErrorCode::HostUnreachable,
            QuotaExceeded(_) => ErrorCode::QuotaExceeded,
            RateLimited(_) => ErrorCode::RateLimited,
            SignupClosed => ErrorCode::SignupClosed,
            Timeout => ErrorCode::Timeout,
            Agent(_) | NoHost | PortUnreachable { .. } => ErrorCode::AgentError,
            ProxyBusy(_) => ErrorCode::QuotaExceeded,
            Store(_) | Internal(_) => ErrorCode::InternalError,
        }
    }
}

/// An agent's message for a tenant ([`crate::redact::for_tenant`]); the full text is logged.
fn tenant_words(message: &str) -> String {
    let shown = crate::redact::for_tenant(message);
    if shown != message {
        tracing::info!(agent_message = %message, "host details removed from an agent message");
    }
    shown
}

/// Whole seconds of a `Retry-After`, rounded up (at least 1).
fn retry_after_secs(d: std::time::Duration) -> u64 {
    (d.as_secs_f64().ceil() as u64).max(1)
}

/// What a tenant is told of an agent failure: its kind, never the agent's address or words.
fn tenant_agent_message(e: &AgentApiError) -> String {
    match e {
        AgentApiError::Api { code, .. } => format!("host agent error: {}", code.as_str()),
        AgentApiError::Transport(_) => "host agent error: the sandbox's host is unreachable".into(),
        AgentApiError::Protocol(_) => "host agent error: unexpected answer from the host".into(),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.code();
        // A 5xx says what kind of failure it was and the request id under which the detail
        // is logged (the request's span carries the id), never the detail itself.
        let with_id = |m: String| match current_request_id() {
            Some(id) => format!("{m} (request id {id})"),
            None => m,
        };
        let message = match &self {
            ApiError::Store(_) | ApiError::Internal(_) => {
                tracing::error!(error = %self, "internal error");
                with_id("internal error".to_string())
            }
            ApiError::Agent(e) => {
                // The agent's own words may name its addresses and paths: logged, not sent.
                tracing::warn!(error = %e, "host agent error");
                with_id(tenant_agent_message(e))
            }
            ApiError::NoHost | ApiError::NoCapacity | ApiError::Timeout => {
                with_id(self.to_string())
            }
            _ => self.to_string(),
        };
        let mut res = (code.status(), Json(ErrorBody::with_code(code, message))).into_response();
        if let ApiError::RateLimited(d) = &self {
            res.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(retry_after_secs(*d)),
            );
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code with its wire name and status, as the spec's clients know them.
    const CODES: [(ErrorCode, &str, u16); 28] = [
        (ErrorCode::BadRequest, "bad_request", 400),
        (ErrorCode::InvalidJson, "invalid_json", 400),
        (
            ErrorCode::UnsupportedMediaType,
            "unsupported_media_type",
            415,
        ),
        (ErrorCode::Unauthorized, "unauthorized", 401),
        (ErrorCode::InvalidCredentials, "invalid_credentials", 401),
        (ErrorCode::EmailTaken, "email_taken", 409),
        (ErrorCode::SandboxNotFound, "sandbox_not_found", 404),
        (ErrorCode::TemplateNotFound, "template_not_found", 404),
        (ErrorCode::ApiKeyNotFound, "api_key_not_found", 404),
        (ErrorCode::FileNotFound, "file_not_found", 404),
        (
            ErrorCode::OAuthProviderNotConfigured,
            "oauth_provider_not_configured",
            404,
        ),
        (ErrorCode::NotFound, "not_found", 404),
        (ErrorCode::MethodNotAllowed, "method_not_allowed", 405),
        (ErrorCode::SandboxNotRunning, "sandbox_not_running", 409),
        (ErrorCode::SandboxNotPaused, "sandbox_not_paused", 409),
        (ErrorCode::Conflict, "conflict", 409),
        (ErrorCode::SnapshotExists, "snapshot_exists", 409),
        (ErrorCode::NameReserved, "name_reserved", 409),
        (ErrorCode::PayloadTooLarge, "payload_too_large", 413),
        (ErrorCode::NoCapacity, "no_capacity", 503),
        (ErrorCode::QuotaExceeded, "quota_exceeded", 429),
        (ErrorCode::RateLimited, "rate_limited", 429),
        (ErrorCode::SignupClosed, "signup_closed", 403),
        (ErrorCode::Forbidden, "forbidden", 403),
        (ErrorCode::Timeout, "timeout", 504),
        (ErrorCode::HostUnreachable, "host_unreachable", 503),
        (ErrorCode::AgentError, "agent_error", 502),
        (ErrorCode::InternalError, "internal_error", 500),
    ];

    #[test]
    fn codes_keep_their_wire_names_and_statuses() {
        for (code, wire, status) in CODES {
            assert_eq!(serde_json::to_string(&code).unwrap(), format!("\"{wire}\""));
            assert_eq!(
                serde_json::from_str::<ErrorCode>(&format!("\"{wire}\"")).unwrap(),
                code
            );
            assert_eq!(code.status().as_u16(), status, "{wire}");
        }
    }

    #[test]
    fn body_is_the_plain_error_body() {
        let typed = ErrorBody::with_code(
            ErrorCode::SandboxNotRunning,
            "sandbox sb-1 is paused, not running",
        );
        let plain = ErrorBody::new("sandbox_not_running", "sandbox sb-1 is paused, not running");
        assert_eq!(
            serde_json::to_string(&typed).unwrap(),
            serde_json::to_string(&plain).unwrap()
        );
        assert_eq!(
            serde_json::to_string(&typed).unwrap(),
            r#"{"error":{"code":"sandbox_not_running","message":"sandbox sb-1 is paused, not running"}}"#
        );
    }

    #[test]
    fn agent_errors_do_not_tell_tenants_where_the_host_is() {
        let e = ApiError::Agent(AgentApiError::Transport(
            "error sending request for url (http://10.0.0.7:7070/v1/sandboxes)".into(),
        ));
        let msg = tenant_agent_message(match &e {
            ApiError::Agent(a) => a,
            _ => unreachable!(),
        });
        assert!(
            !msg.contains("10.0.0.7") && msg.contains("unreachable"),
            "{msg}"
        );
        let e = AgentApiError::new(AgentErrorCode::Internal, "qemu failed: /var/lib/wrenn/x");
        assert_eq!(tenant_agent_message(&e), "host agent error: internal");
    }

    #[test]
    fn each_error_has_its_code() {
        assert_eq!(ApiError::NoHost.code(), ErrorCode::AgentError);
        assert_eq!(
            ApiError::Internal("x".into()).code(),
            ErrorCode::InternalError
        );
        assert_eq!(
            ApiError::OAuthNotConfigured("gitlab".into()).code(),
            ErrorCode::OAuthProviderNotConfigured
        );
        assert_eq!(
            ApiError::NotPaused {
                id: "sb".into(),
                status: "running".into()
            }
            .code()
            .status(),
            StatusCode::CONFLICT
        );
    }
}
