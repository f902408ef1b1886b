//! [`ApiError`], the domain errors of the public API, and the one place that maps each to an
//! HTTP status and a stable error `code` in the `{"error":{"code","message"}}` body.
//! Internal details (database errors, panics) are logged, never sent to the client.

use crate::agent::AgentApiError as AgentError;
use crate::store::StoreError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use wrenn_types::agent::codes;
use wrenn_types::ErrorBody;

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
    /// Login with an unknown email or a wrong password (one message for both).
    #[error("invalid email or password")]
    InvalidCredentials,
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
    Agent(AgentError),
    /// No host agent answered, so the sandbox could not be placed.
    #[error("host agent error: no host agent is reachable")]
    NoHost,
    /// The database failed.
    #[error("storage error: {0}")]
    Store(#[from] StoreError),
    /// Anything else that should not happen (including a caught panic).
    #[error("{0}")]
    Internal(String),
}

impl From<AgentError> for ApiError {
    /// Agent errors that mean something to the user keep their meaning; the rest are 502.
    fn from(e: AgentError) -> Self {
        match &e {
            AgentError::Api { code, message, .. } => match *code {
                codes::FILE_NOT_FOUND => ApiError::FileNotFound(message.clone()),
                codes::CONFLICT => ApiError::Conflict(message.clone()),
                codes::BAD_REQUEST => ApiError::BadRequest(message.clone()),
                codes::CAPACITY => ApiError::NoCapacity,
                codes::TOO_LARGE => ApiError::PayloadTooLarge(message.clone()),
                _ => ApiError::Agent(e),
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

    /// HTTP status and stable error code.
    pub fn status_code(&self) -> (StatusCode, &'static str) {
        use ApiError::*;
        match self {
            BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            InvalidJson(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
            UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            InvalidCredentials => (StatusCode::UNAUTHORIZED, "invalid_credentials"),
            EmailTaken => (StatusCode::CONFLICT, "email_taken"),
            SandboxNotFound(_) => (StatusCode::NOT_FOUND, "sandbox_not_found"),
            TemplateNotFound(_) => (StatusCode::NOT_FOUND, "template_not_found"),
            ApiKeyNotFound(_) => (StatusCode::NOT_FOUND, "api_key_not_found"),
            FileNotFound(_) => (StatusCode::NOT_FOUND, "file_not_found"),
            OAuthNotConfigured(_) => (StatusCode::NOT_FOUND, "oauth_provider_not_configured"),
            RouteNotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            NotRunning { .. } => (StatusCode::CONFLICT, "sandbox_not_running"),
            NotPaused { .. } => (StatusCode::CONFLICT, "sandbox_not_paused"),
            Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            SnapshotExists(_) => (StatusCode::CONFLICT, "snapshot_exists"),
            ReservedName(_) => (StatusCode::CONFLICT, "name_reserved"),
            PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            NoCapacity => (StatusCode::SERVICE_UNAVAILABLE, "no_capacity"),
            Agent(_) | NoHost => (StatusCode::BAD_GATEWAY, "agent_error"),
            Store(_) | Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_code();
        let message = match &self {
            ApiError::Store(_) | ApiError::Internal(_) => {
                tracing::error!(error = %self, "internal error");
                "internal error".to_string()
            }
            ApiError::Agent(e) => {
                tracing::warn!(error = %e, "host agent error");
                self.to_string()
            }
            _ => self.to_string(),
        };
        (status, Json(ErrorBody::new(code, message))).into_response()
    }
}
