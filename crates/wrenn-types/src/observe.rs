//! Observability bodies: a capsule's resource samples (`GET /v1/capsules/{id}/metrics`, and
//! the host agent's route behind it), the team's stats (`GET /v1/capsules/stats`) and daily
//! usage (`GET /v1/capsules/usage`), and one lifecycle event of `GET /v1/events/stream`. The
//! shapes are the ones the Wrenn SDK parses.

use crate::capsule::Capsule;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One resource sample of a sandbox, taken by its host agent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MetricPoint {
    /// When the sample was taken (seconds since the Unix epoch).
    pub timestamp_unix: i64,
    /// CPU time the VM's QEMU process used over the sample's interval, as a percentage of
    /// the sandbox's vCPUs (0-100).
    pub cpu_pct: f64,
    /// Resident memory of the VM's QEMU process: the guest RAM it has touched plus QEMU's
    /// own (bytes).
    pub mem_bytes: u64,
    /// Bytes allocated on the host's disk by the sandbox's own (top) disk layer: what it
    /// wrote beyond its template.
    pub disk_bytes: u64,
}

/// The ranges of `GET /v1/capsules/{id}/metrics`, with their length in seconds.
pub const METRIC_RANGES: [(&str, u32); 7] = [
    ("5m", 300),
    ("10m", 600),
    ("1h", 3600),
    ("2h", 7200),
    ("6h", 21600),
    ("12h", 43200),
    ("24h", 86400),
];

/// The host agent's query of its metrics route: samples of the last `range_secs` seconds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct MetricsQuery {
    pub range_secs: u32,
}

/// `GET /v1/capsules/{id}/metrics`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CapsuleMetrics {
    pub sandbox_id: String,
    pub range: String,
    pub points: Vec<MetricPoint>,
}

/// What a team holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsCurrent {
    pub running_count: i64,
    pub vcpus_reserved: i64,
    pub memory_mb_reserved: i64,
}

/// The most a team held at once over the last 30 days.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsPeaks {
    pub running_count: i64,
    pub vcpus: i64,
    pub memory_mb: i64,
}

/// Parallel arrays: the start of each bucket and the most held within it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsSeries {
    pub labels: Vec<String>,
    pub running: Vec<i64>,
    pub vcpus: Vec<i64>,
    pub memory_mb: Vec<i64>,
}

/// `GET /v1/capsules/stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapsuleStats {
    pub range: String,
    pub current: StatsCurrent,
    pub peaks: StatsPeaks,
    pub series: StatsSeries,
}

/// One day of a team's usage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsagePoint {
    /// `YYYY-MM-DD` (UTC).
    pub date: String,
    /// vCPU-minutes of running sandboxes.
    pub cpu_minutes: f64,
    /// MB-minutes of running sandboxes' memory.
    pub ram_mb_minutes: f64,
}

/// `GET /v1/capsules/usage`: one point per day from `from` to `to`, both included.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageResponse {
    pub from: String,
    pub to: String,
    pub points: Vec<UsagePoint>,
}

/// What an event is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventResource {
    pub id: String,
    /// `capsule` or `template`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// Who caused an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventActor {
    /// `user`, `api_key` or `system`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The event names of the stream.
pub mod event {
    pub const CONNECTED: &str = "connected";
    pub const CAPSULE_CREATE: &str = "capsule.create";
    pub const CAPSULE_PAUSE: &str = "capsule.pause";
    pub const CAPSULE_RESUME: &str = "capsule.resume";
    pub const CAPSULE_DESTROY: &str = "capsule.destroy";
    /// A state the control plane learnt from the host (the reconciler), not an operation's.
    pub const CAPSULE_STATE_CHANGED: &str = "capsule.state.changed";
    pub const SNAPSHOT_CREATE: &str = "template.snapshot.create";
    pub const SNAPSHOT_DELETE: &str = "template.snapshot.delete";
}

/// One message of `GET /v1/events/stream` (its `data:` line; the `event:` line repeats
/// `event`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// One of [`event`]'s names.
    pub event: String,
    /// `success` or `error`, for actions; absent on `connected` and `capsule.state.changed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<EventResource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<EventActor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Why the action failed (when `outcome` is `error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The capsule after the action, for `capsule.*` events while it exists.
    #[serde(default)]
    pub sandbox: Option<Capsule>,
    pub timestamp: String,
}
