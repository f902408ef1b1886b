//! Wire types shared by every Wrenn component: the public API (`api`), the host agent's
//! internal API (`agent`), the in-guest daemon's API (`envd`), the `/v1/capsules` bodies
//! (`capsule`), a snapshot template's copy between hosts (`copy`), the guest filesystem operations shared by all three hops (`fs`), the one wire form of a
//! point in time (`time`), the one rule for names (`names`) and the ids that follow it (`ids`: `TeamId`, `SandboxId`, `TemplateName`), the per-sandbox network policy (`network`), and the observability bodies
//! (`observe`: metrics, stats, usage, events), and background processes on every hop
//! (`process`).
//!
//! This crate holds plain serde types only (with chrono for time). It must not depend on any
//! runtime (tokio, axum, sqlx) so that the static guest binary and the CLI can use it cheaply.

pub mod agent;
pub mod api;
pub mod capsule;
pub mod copy;
pub mod envd;
pub mod error;
pub mod fs;
pub mod ids;
pub mod names;
pub mod network;
pub mod observe;
pub mod process;
pub mod pty;
pub mod stream;
pub mod time;
mod wire_enum;

pub use error::{ErrorBody, ErrorDetail};
