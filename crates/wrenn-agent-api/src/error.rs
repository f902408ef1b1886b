//! [`AgentApiError`]: how an operation of the agent API fails, on either side of the hop, and
//! the one mapping of it to a status and an error body.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use wrenn_types::agent::AgentErrorCode;
use wrenn_types::ErrorBody;

/// Failure of a call of the agent API.
#[derive(Debug, thiserror::Error)]
pub enum AgentApiError {
    /// An error the agent answers with: its status, wire code and message.
    #[error("agent answered {status} {code}: {message}")]
    Api {
        status: u16,
        code: AgentErrorCode,
        message: String,
    },
    /// The agent could not be reached, or the connection broke mid-transfer.
    #[error("agent unreachable: {0}")]
    Transport(String),
    /// The agent answered something that does not follow its API.
    #[error("unexpected answer from agent: {0}")]
    Protocol(String),
}

impl AgentApiError {
    /// An answer with `code` and the status that goes with it.
    pub fn new(code: AgentErrorCode, message: impl Into<String>) -> Self {
        Self::with_status(code.status(), code, message)
    }

    /// An answer with `code` and a status of its own (an envd error passed through).
    pub fn with_status(status: u16, code: AgentErrorCode, message: impl Into<String>) -> Self {
        Self::Api {
            status,
            code,
            message: message.into(),
        }
    }

    /// The agent's error code, if it answered with one.
    pub fn code(&self) -> Option<AgentErrorCode> {
        match self {
            Self::Api { code, .. } => Some(*code),
            Self::Transport(_) | Self::Protocol(_) => None,
        }
    }
}

impl IntoResponse for AgentApiError {
    /// An answer is sent as it is; a failure to reach something further on is `internal`.
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            Self::Api {
                status,
                code,
                message,
            } => (status, code, message),
            other @ (Self::Transport(_) | Self::Protocol(_)) => {
                let code = AgentErrorCode::Internal;
                (code.status(), code, other.to_string())
            }
        };
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(ErrorBody::with_code(code, message))).into_response()
    }
}
