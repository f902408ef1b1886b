//! Wire types of the host agent's internal API, called by the control plane (one agent per
//! host). Transport: HTTP/JSON with `Authorization: Bearer <agent token>` on every request.
//! The routes, the `HostAgent` trait and the router are in the `wrenn-agent-api` crate.
//! Errors use [`crate::ErrorBody`] with an [`AgentErrorCode`].

use crate::wire_enum::wire_enum;
use serde::{Deserialize, Serialize};

wire_enum! {
    /// The `code` of the agent's error body, with the status it is answered with (an envd
    /// error passed through keeps envd's client-error status instead).
    pub enum AgentErrorCode {
        BadRequest = "bad_request" (400),
        Unauthorized = "unauthorized" (401),
        /// No such sandbox, or no such route.
        NotFound = "not_found" (404),
        TemplateNotFound = "template_not_found" (404),
        /// Wrong state for the operation (e.g. exec on a paused sandbox).
        Conflict = "conflict" (409),
        /// A template with that name exists and overwrite was not asked for.
        AlreadyExists = "already_exists" (409),
        /// Not enough memory or slots on this host.
        Capacity = "capacity" (503),
        /// The file does not exist in the sandbox.
        FileNotFound = "file_not_found" (404),
        TooLarge = "too_large" (413),
        /// No background process in the sandbox has that pid or tag.
        ProcessNotFound = "process_not_found" (404),
        /// Nothing accepts connections on the asked port of the sandbox's guest.
        PortUnreachable = "port_unreachable" (502),
        Internal = "internal" (500),
        /// A code this build does not know (from an agent of another version); never sent.
        #[serde(other)]
        Unknown = "unknown" (500),
    }
}

/// The codes of [`AgentErrorCode`] as constants, for the control plane's matches written
/// against them; new code names the enum.
pub mod codes {
    use super::AgentErrorCode as C;
    pub const BAD_REQUEST: C = C::BadRequest;
    pub const UNAUTHORIZED: C = C::Unauthorized;
    pub const NOT_FOUND: C = C::NotFound;
    pub const TEMPLATE_NOT_FOUND: C = C::TemplateNotFound;
    pub const CONFLICT: C = C::Conflict;
    pub const ALREADY_EXISTS: C = C::AlreadyExists;
    pub const CAPACITY: C = C::Capacity;
    pub const FILE_NOT_FOUND: C = C::FileNotFound;
    pub const TOO_LARGE: C = C::TooLarge;
    pub const INTERNAL: C = C::Internal;
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
    /// Clones waiting in the agent's warm pools (no sandbox's yet; counted as committed
    /// memory on the host, never in a team's quota).
    #[serde(default)]
    pub pooled: u32,
    /// Memory committed to sandboxes, pooled clones and admitted operations, VM overheads
    /// included, MiB (0 from an agent that does not say).
    #[serde(default)]
    pub committed_memory_mb: u64,
    /// The most memory the agent admits to commit (its total less its reserve, times its
    /// overcommit ratio), MiB; 0 from an agent that does not say.
    #[serde(default)]
    pub commit_limit_mb: u64,
    /// Free space of the agent's data directory's filesystem, MiB (0 when unknown).
    #[serde(default)]
    pub disk_free_mb: u64,
}

wire_enum! {
    /// Lifecycle state of a sandbox as the agent sees it.
    pub enum SandboxStatus {
        Pending = "pending",
        Running = "running",
        Paused = "paused",
        Stopped = "stopped",
        Error = "error",
    }
}

wire_enum! {
    /// Where a template comes from.
    pub enum TemplateKind {
        /// An image built by the image builder.
        Base = "base",
        /// A snapshot of a sandbox.
        Snapshot = "snapshot",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateSandbox {
    /// Chosen by the caller (the control plane); unique on the host.
    pub id: String,
    pub template: String,
    pub vcpus: u32,
    pub memory_mb: u32,
    /// The sandbox's own egress policy; absent: the default one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::network::SandboxNetwork>,
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
    /// The capacity of the guest's disk in MiB (its image's virtual size), on a single
    /// sandbox's GET; absent in lists, while the disk is not made yet, and from older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_size_mb: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRequest {
    pub name: String,
    #[serde(default)]
    pub overwrite: bool,
}

/// The query of the file routes: `?path=/abs/path` in the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileQuery {
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateInfo {
    pub name: String,
    pub kind: TemplateKind,
    pub vcpus: Option<u32>,
    pub memory_mb: Option<u32>,
    pub size_bytes: u64,
    /// RFC 3339.
    pub created_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_keep_their_wire_names() {
        crate::wire_enum::assert_wire_names(AgentErrorCode::ALL, |c| c.as_str());
        crate::wire_enum::assert_wire_names(SandboxStatus::ALL, |s| s.as_str());
        crate::wire_enum::assert_wire_names(TemplateKind::ALL, |k| k.as_str());
        assert_eq!(codes::FILE_NOT_FOUND.as_str(), "file_not_found");
        assert_eq!(AgentErrorCode::Capacity.status(), 503);
        assert_eq!(SandboxStatus::Paused.as_str(), "paused");
        assert_eq!(
            serde_json::to_string(&SandboxStatus::ALL).unwrap(),
            r#"["pending","running","paused","stopped","error"]"#
        );
        assert_eq!(
            serde_json::from_str::<AgentErrorCode>(r#""brand_new""#).unwrap(),
            AgentErrorCode::Unknown
        );
    }
}
