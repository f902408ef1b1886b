//! The store's records of host agents: a host's row (its URL, credential, last health and
//! capacity, drain flag, certificate pin), its health status as stored, and what a removal did.

use super::StoreError;
use chrono::{DateTime, Utc};

/// A host agent the control plane can place sandboxes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRecord {
    pub id: String,
    pub url: String,
    /// Bearer token the control plane presents to the agent.
    pub token: String,
    pub status: HostStatus,
    pub cpus: i64,
    pub total_memory_mb: i64,
    pub free_memory_mb: i64,
    pub running: i64,
    pub last_seen: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// Takes no new sandboxes (its running ones stay); set by `wrenn hosts drain`.
    pub draining: bool,
    /// Lowercase hex SHA-256 of the certificate last issued to it (a joined host; `None`:
    /// never joined). Set by a join or rotation, never by [`Store::upsert_host`].
    ///
    /// [`Store::upsert_host`]: super::Store::upsert_host
    pub cert_sha256: Option<String>,
}

/// What [`Store::remove_host`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemovedHost {
    /// No host with that id.
    NotFound,
    /// Refused: this many sandboxes are placed on the host (and removal was not forced).
    HasSandboxes(i64),
    /// Removed, with the records of this many sandboxes placed on it.
    Removed { sandboxes: i64 },
}

/// Whether the control plane reached a host agent at its last health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostStatus {
    Healthy,
    Unreachable,
}

impl HostStatus {
    /// Every status.
    pub const ALL: [HostStatus; 2] = [Self::Healthy, Self::Unreachable];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Unreachable => "unreachable",
        }
    }
}

/// Parses a stored host status.
pub(crate) fn parse_host_status(s: &str) -> Result<HostStatus, StoreError> {
    HostStatus::ALL
        .into_iter()
        .find(|h| h.as_str() == s)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown host status {s:?}")))
}

/// Capacity numbers last reported by a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostCapacity {
    pub cpus: i64,
    pub total_memory_mb: i64,
    pub free_memory_mb: i64,
    pub running: i64,
}
