//! Wire types shared by every Wrenn component: the public API (`api`), the host agent's
//! internal API (`agent`), and the in-guest daemon's API (`envd`).
//!
//! This crate holds plain serde types only. It must not depend on any runtime (tokio, axum,
//! sqlx) so that the static guest binary and the CLI can use it cheaply.

pub mod agent;
pub mod api;
pub mod envd;
pub mod error;
pub mod stream;

pub use error::{ErrorBody, ErrorDetail};
