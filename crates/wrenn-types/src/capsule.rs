//! Request and response bodies of the `/v1/capsules` API (the shapes the Wrenn SDK sends and
//! parses). A capsule is a sandbox: the same records and the same operations as
//! `/v1/sandboxes`, shown with the SDK's fields and its finer status words.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most metadata keys on one capsule.
pub const MAX_METADATA_KEYS: usize = 20;
/// Longest metadata key (bytes).
pub const MAX_METADATA_KEY_LEN: usize = 64;
/// Longest metadata value (characters, as the SDK counts them).
pub const MAX_METADATA_VALUE_LEN: usize = 64;
/// Keys the platform keeps for itself; a create naming one is refused.
pub const RESERVED_METADATA_KEYS: [&str; 4] = [
    "kernel_version",
    "vmm_version",
    "agent_version",
    "envd_version",
];

/// `POST /v1/capsules`: the fields of `POST /v1/sandboxes` (every one optional; the defaults
/// are the control plane's) and the capsule's labels.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CreateCapsuleRequest {
    #[serde(flatten)]
    pub sandbox: crate::api::CreateSandboxRequest,
    /// User labels, set at create only.
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
}

/// The status words of a capsule: the stored state, or the operation under way.
pub mod status {
    pub const STARTING: &str = "starting";
    pub const RUNNING: &str = "running";
    pub const PAUSING: &str = "pausing";
    pub const PAUSED: &str = "paused";
    pub const RESUMING: &str = "resuming";
    pub const SNAPSHOTTING: &str = "snapshotting";
    pub const STOPPING: &str = "stopping";
    pub const STOPPED: &str = "stopped";
    pub const ERROR: &str = "error";
    /// Placed on a host that has missed its heartbeats: unavailable until the host returns
    /// (computed when read, never stored).
    pub const MISSING: &str = "missing";
}

/// One capsule as `/v1/capsules` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capsule {
    pub id: String,
    /// One of [`status`]'s words.
    pub status: String,
    pub template: String,
    pub vcpus: i64,
    pub memory_mb: i64,
    pub timeout_sec: i64,
    pub created_at: String,
    pub started_at: Option<String>,
    pub last_active_at: Option<String>,
    pub last_updated: String,
    /// The labels given at create (empty when none were).
    pub metadata: BTreeMap<String, String>,
    /// Maximum disk capacity in MiB, when the platform knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_size_mb: Option<i64>,
    /// Current disk usage in MiB, when the platform knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_used_mb: Option<i64>,
}

/// Why metadata was refused, if it was.
pub fn check_metadata(m: &BTreeMap<String, String>) -> Result<(), String> {
    if m.len() > MAX_METADATA_KEYS {
        return Err(format!("metadata has more than {MAX_METADATA_KEYS} keys"));
    }
    for (k, v) in m {
        let mut chars = k.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
        let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !first_ok || !rest_ok || k.len() > MAX_METADATA_KEY_LEN {
            return Err(format!(
                "metadata key {:?} must match [a-zA-Z0-9][a-zA-Z0-9._-]{{0,63}}",
                k.chars().take(80).collect::<String>()
            ));
        }
        if RESERVED_METADATA_KEYS.contains(&k.as_str()) {
            return Err(format!("metadata key {k} is reserved"));
        }
        if v.chars().count() > MAX_METADATA_VALUE_LEN || v.contains('\0') {
            return Err(format!(
                "metadata value of {k} is longer than {MAX_METADATA_VALUE_LEN} characters or contains NUL"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(k: &str, v: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(k.to_string(), v.to_string())])
    }

    #[test]
    fn metadata_limits() {
        assert!(check_metadata(&one("env", "prod")).is_ok());
        assert!(check_metadata(&one("A.b_c-9", &"v".repeat(64))).is_ok());
        assert!(check_metadata(&one(&"k".repeat(64), "")).is_ok());
        assert!(check_metadata(&one(&"k".repeat(65), "")).is_err());
        assert!(check_metadata(&one("-x", "v")).is_err());
        assert!(check_metadata(&one("", "v")).is_err());
        assert!(check_metadata(&one("a b", "v")).is_err());
        assert!(check_metadata(&one("env", &"v".repeat(65))).is_err());
        assert!(check_metadata(&one("env", &"é".repeat(64))).is_ok());
        assert!(check_metadata(&one("env", &"é".repeat(65))).is_err());
        assert!(check_metadata(&one("env", "a\0b")).is_err());
        assert!(check_metadata(&one("agent_version", "1")).is_err());
        let many: BTreeMap<_, _> = (0..21).map(|i| (format!("k{i}"), "v".into())).collect();
        assert!(check_metadata(&many).is_err());
        let twenty: BTreeMap<_, _> = (0..20).map(|i| (format!("k{i}"), "v".into())).collect();
        assert!(check_metadata(&twenty).is_ok());
    }
}
