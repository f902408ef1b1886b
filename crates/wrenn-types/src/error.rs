//! The error body every Wrenn HTTP service answers with: `{"error":{"code","message"}}`.
//!
//! The code's type is the API's own: [`crate::agent::AgentErrorCode`] for the host agent,
//! [`crate::envd::EnvdErrorCode`] for envd; a plain `String` (the default) where the codes
//! are not typed.

use serde::{Deserialize, Serialize};

/// `{"error": {...}}`, as in the public spec's `Error` schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody<C = String> {
    pub error: ErrorDetail<C>,
}

/// A stable machine-readable `code` and a human-readable `message`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail<C = String> {
    pub code: C,
    pub message: String,
}

impl ErrorBody {
    /// A body whose code is a plain string.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::with_code(code.into(), message)
    }
}

impl<C> ErrorBody<C> {
    /// A body with an API's typed code.
    pub fn with_code(code: C, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code,
                message: message.into(),
            },
        }
    }
}
