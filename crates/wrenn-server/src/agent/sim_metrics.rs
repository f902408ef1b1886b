//! The simulated agent's resource samples: what the real agent's sampler would have kept for
//! a sandbox, made up from its record (one sample every 2 seconds of the range, at most the
//! last minute's while it runs; none once it is paused or stopped). Plausible and
//! deterministic, so tests can check shapes and bounds.

use wrenn_types::agent::{SandboxInfo, SandboxStatus};
use wrenn_types::observe::MetricPoint;

/// Seconds between two simulated samples.
const STEP_SECS: i64 = 2;
/// Most samples answered.
const MOST: i64 = 30;

/// The samples of `sb` over the last `range_secs` seconds before `now_unix`, oldest first.
pub(super) fn points(sb: &SandboxInfo, range_secs: u32, now_unix: i64) -> Vec<MetricPoint> {
    if sb.status != SandboxStatus::Running {
        return Vec::new();
    }
    let n = (i64::from(range_secs) / STEP_SECS).clamp(1, MOST);
    (0..n)
        .map(|i| MetricPoint {
            timestamp_unix: now_unix - (n - 1 - i) * STEP_SECS,
            cpu_pct: 5.0 + (i % 5) as f64,
            mem_bytes: u64::from(sb.memory_mb) * 1024 * 1024 / 4,
            disk_bytes: 8 * 1024 * 1024,
        })
        .collect()
}
