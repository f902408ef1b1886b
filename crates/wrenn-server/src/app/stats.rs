//! What a team can see of its resources: its stats (`GET /v1/capsules/stats`: what it holds
//! now, its 30-day peaks and a series over a range, from the meter's per-minute samples, see
//! `usage`) and one capsule's resource samples (`GET /v1/capsules/{id}/metrics`, asked of
//! the capsule's host agent, which keeps them; see the agent's `sandbox/metrics.rs`).

use super::{ts, App};
use crate::error::ApiError;
use crate::store::{self, Held};
use chrono::DateTime;
use std::collections::HashMap;
use wrenn_types::agent::{codes, SandboxStatus};
use wrenn_types::ids::{SandboxId, TeamId};
use wrenn_types::observe::{
    CapsuleMetrics, CapsuleStats, StatsCurrent, StatsPeaks, StatsSeries, METRIC_RANGES,
};

/// The ranges of stats: name, window and bucket (seconds).
pub const STATS_RANGES: [(&str, i64, i64); 5] = [
    ("5m", 300, 60),
    ("1h", 3600, 60),
    ("6h", 21_600, 300),
    ("24h", 86_400, 900),
    ("30d", 2_592_000, 21_600),
];
const DEFAULT_STATS_RANGE: &str = "1h";
const DEFAULT_METRICS_RANGE: &str = "10m";
const PEAK_WINDOW_MS: i64 = 30 * 24 * 3600 * 1000;

fn bad_range(name: &str, v: &str, allowed: &[&str]) -> ApiError {
    ApiError::BadRequest(format!(
        "{name} must be one of {}, not {:?}",
        allowed.join(", "),
        v.chars().take(20).collect::<String>()
    ))
}

/// Buckets of `step` seconds ending with the one now is in: their starts (ms).
fn buckets(now_ms: i64, window_s: i64, step_s: i64) -> Vec<i64> {
    let step = step_s * 1000;
    let last = now_ms - now_ms.rem_euclid(step);
    let n = window_s / step_s;
    (0..n).map(|i| last - (n - 1 - i) * step).collect()
}

impl App {
    /// The team's stats over `range` (default `1h`).
    pub async fn stats(
        &self,
        team_id: &TeamId,
        range: Option<&str>,
    ) -> Result<CapsuleStats, ApiError> {
        let name = range.unwrap_or(DEFAULT_STATS_RANGE);
        let &(name, window_s, step_s) = STATS_RANGES
            .iter()
            .find(|r| r.0 == name)
            .ok_or_else(|| bad_range("range", name, &STATS_RANGES.map(|r| r.0)))?;
        let mut current = StatsCurrent::default();
        for sb in self.store.list_sandboxes(team_id.as_str()).await? {
            if sb.status == SandboxStatus::Running {
                current.running_count += 1;
                current.vcpus_reserved += sb.vcpus;
                current.memory_mb_reserved += sb.memory_mb;
            }
        }
        let now = store::now().timestamp_millis();
        let starts = buckets(now, window_s, step_s);
        let since = starts.first().copied().unwrap_or(now);
        let held: HashMap<i64, Held> = self
            .store
            .team_held(team_id.as_str(), since, step_s * 1000)
            .await?
            .into_iter()
            .collect();
        let mut series = StatsSeries::default();
        for (i, start) in starts.iter().enumerate() {
            let mut h = held.get(&(i as i64)).copied().unwrap_or_default();
            if i + 1 == starts.len() {
                // The bucket under way holds at least what is held now.
                h.running = h.running.max(current.running_count);
                h.vcpus = h.vcpus.max(current.vcpus_reserved);
                h.memory_mb = h.memory_mb.max(current.memory_mb_reserved);
            }
            series.labels.push(ts(
                DateTime::from_timestamp_millis(*start).unwrap_or_default()
            ));
            series.running.push(h.running);
            series.vcpus.push(h.vcpus);
            series.memory_mb.push(h.memory_mb);
        }
        let peak = self
            .store
            .team_held(team_id.as_str(), now - PEAK_WINDOW_MS, PEAK_WINDOW_MS + 1)
            .await?
            .first()
            .map(|p| p.1)
            .unwrap_or_default();
        Ok(CapsuleStats {
            range: name.into(),
            current,
            peaks: StatsPeaks {
                running_count: peak.running.max(current.running_count),
                vcpus: peak.vcpus.max(current.vcpus_reserved),
                memory_mb: peak.memory_mb.max(current.memory_mb_reserved),
            },
            series,
        })
    }

    /// The resource samples of the team's capsule `id` over `range` (default `10m`): `404`
    /// unless the team has it; no points while it has never run on a host.
    pub async fn capsule_metrics(
        &self,
        team_id: &TeamId,
        id: &SandboxId,
        range: Option<&str>,
    ) -> Result<CapsuleMetrics, ApiError> {
        let name = range.unwrap_or(DEFAULT_METRICS_RANGE);
        let &(name, secs) = METRIC_RANGES
            .iter()
            .find(|r| r.0 == name)
            .ok_or_else(|| bad_range("range", name, &METRIC_RANGES.map(|r| r.0)))?;
        let sb = self
            .store
            .get_sandbox(team_id.as_str(), id.as_str())
            .await?
            .ok_or_else(|| ApiError::SandboxNotFound(id.to_string()))?;
        let points = if matches!(sb.status, SandboxStatus::Running | SandboxStatus::Paused) {
            let agent = self.hosts.agent(&sb.host_id)?;
            match agent.sandbox_metrics(&sb.id, secs).await {
                Ok(p) => p,
                // The host no longer has it (the reconciler will say so): nothing sampled.
                Err(e) if e.code() == Some(codes::NOT_FOUND) => Vec::new(),
                Err(e) => return Err(ApiError::Agent(e)),
            }
        } else {
            Vec::new()
        };
        Ok(CapsuleMetrics {
            sandbox_id: sb.id,
            range: name.into(),
            points,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_end_with_the_one_under_way() {
        let now = 1_000_000 * 60_000 + 30_000; // half a minute into a minute
        let b = buckets(now, 300, 60);
        assert_eq!(b.len(), 5);
        assert_eq!(*b.last().unwrap(), 1_000_000 * 60_000);
        assert_eq!(b[1] - b[0], 60_000);
        for (_, window, step) in STATS_RANGES {
            let n = buckets(now, window, step).len();
            assert!((5..=120).contains(&n), "{window} {step} {n}");
        }
    }
}
