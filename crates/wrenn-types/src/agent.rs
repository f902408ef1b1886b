//! The host agent's internal API, called by the control plane (one agent per host).
//!
//! Transport: HTTP/JSON, every request carries `Authorization: Bearer <agent token>`.
//! Errors use [`crate::ErrorBody`] with the codes in [`codes`].
//!
//! | method | path | body → answer |
//! |---|---|---|
//! | GET    | `/v1/host`                              | → [`HostInfo`] |
//! | GET    | `/v1/sandboxes`                         | → `[SandboxInfo]` |
//! | POST   | `/v1/sandboxes`                         | [`CreateSandbox`] → 201 [`SandboxInfo`] |
//! | GET    | `/v1/sandboxes/{id}`                    | → [`SandboxInfo`] |
//! | DELETE | `/v1/sandboxes/{id}`                    | → 204 |
//! | POST   | `/v1/sandboxes/{id}/pause`              | → [`SandboxInfo`] |
//! | POST   | `/v1/sandboxes/{id}/resume`             | → [`SandboxInfo`] |
//! | POST   | `/v1/sandboxes/{id}/snapshot`           | [`SnapshotRequest`] → 201 [`TemplateInfo`] (the sandbox is gone afterwards) |
//! | POST   | `/v1/sandboxes/{id}/exec`               | [`crate::envd::ExecRequest`] → [`crate::envd::ExecResponse`] |
//! | GET    | `/v1/sandboxes/{id}/exec/stream`        | WebSocket, messages of [`crate::stream`] |
//! | PUT    | `/v1/sandboxes/{id}/files?path=/abs`    | raw body, streamed → 204 |
//! | GET    | `/v1/sandboxes/{id}/files?path=/abs`    | → raw bytes, streamed |
//! | GET    | `/v1/templates`                         | → `[TemplateInfo]` |
//! | DELETE | `/v1/templates/{name}`                  | → 204 |

use serde::{Deserialize, Serialize};

/// Error codes the agent answers with.
pub mod codes {
    pub const BAD_REQUEST: &str = "bad_request";
    pub const UNAUTHORIZED: &str = "unauthorized";
    pub const NOT_FOUND: &str = "not_found";
    pub const TEMPLATE_NOT_FOUND: &str = "template_not_found";
    /// Wrong state for the operation (e.g. exec on a paused sandbox).
    pub const CONFLICT: &str = "conflict";
    /// A template with that name exists and overwrite was not asked for.
    pub const ALREADY_EXISTS: &str = "already_exists";
    /// Not enough memory or slots on this host.
    pub const CAPACITY: &str = "capacity";
    pub const FILE_NOT_FOUND: &str = "file_not_found";
    pub const TOO_LARGE: &str = "too_large";
    pub const INTERNAL: &str = "internal";
}

/// Which accelerator the agent runs guests with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    pub accel: Accel,
    pub cpus: u32,
    pub total_memory_mb: u64,
    pub free_memory_mb: u64,
    pub running: u32,
    pub paused: u32,
    /// Templates this host can create sandboxes from.
    pub templates: Vec<String>,
}

/// Lifecycle state of a sandbox as the agent sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxStatus {
    Pending,
    Running,
    Paused,
    Stopped,
    Error,
}

impl SandboxStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Stopped => "stopped",
            Self::Error => "error",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateSandbox {
    /// Chosen by the caller (the control plane); unique on the host.
    pub id: String,
    pub template: String,
    pub vcpus: u32,
    pub memory_mb: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxInfo {
    pub id: String,
    pub status: SandboxStatus,
    pub template: String,
    pub vcpus: u32,
    pub memory_mb: u32,
    /// The guest's own address (the same in every sandbox).
    pub guest_ip: String,
    /// The host-side address that reaches this sandbox; empty while paused.
    pub host_ip: String,
    /// RFC 3339; when the VM last started running (create or resume).
    pub started_at: Option<String>,
    /// Why the sandbox is in `error`, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRequest {
    pub name: String,
    #[serde(default)]
    pub overwrite: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateInfo {
    pub name: String,
    /// `base` for images built by the image builder, `snapshot` for snapshots of sandboxes.
    pub kind: String,
    pub vcpus: Option<u32>,
    pub memory_mb: Option<u32>,
    pub size_bytes: u64,
    /// RFC 3339.
    pub created_at: String,
}
