//! Usage metering and the team's daily usage (`GET /v1/capsules/usage`).
//!
//! **What is counted.** A sandbox uses its vCPUs and its memory for as long as it is
//! running (stored status `running`, whatever operation may be under way): a paused or
//! stopped one uses nothing. Usage is `running time × vCPUs` (CPU-minutes) and `running time
//! × memory MB` (RAM-MB-minutes), credited to the team's day (UTC) in which the time fell;
//! time across midnight is split between the two days.
//!
//! **How.** A periodic pass ([`App::meter_usage`], every [`METER_EVERY`], run by one control
//! plane at a time: under a lease on PostgreSQL) credits each running sandbox from where its
//! meter stands to now and moves the meter; meters and credits are written in one transaction,
//! so a restart neither loses nor repeats time. A sandbox without a meter (just started or
//! resumed) is credited from its `started_at`; one that stopped running is credited up to its
//! last write (capped at two periods past its meter) and its meter removed. So a running
//! period is counted to within one period at its end: a sandbox destroyed between two passes
//! loses the time since the last pass (at most [`METER_EVERY`]). The same pass
//! records, per team and minute, the most it held at once (for `stats`, kept 31 days).
//! Daily usage is kept without a limit (one row per team and day).

use super::App;
use crate::error::ApiError;
use crate::store::{self, Held, MeteredSandbox, UsageCredit, UsagePass};
use chrono::{DateTime, Duration as Days, NaiveDate, Utc};
use std::collections::BTreeMap;
use std::sync::Weak;
use std::time::Duration;
use wrenn_types::ids::TeamId;
use wrenn_types::observe::{UsagePoint, UsageResponse};

/// Time between two meter passes.
pub const METER_EVERY: Duration = Duration::from_secs(15);
/// The lease under which one control plane meters.
const LEASE: &str = "usage-meter";
/// How long per-minute team samples are kept.
const SAMPLES_KEPT_MS: i64 = 31 * 24 * 3600 * 1000;
/// Longest span of days one usage request may ask for.
pub const MAX_USAGE_DAYS: i64 = 366;
/// Days shown when `from` is not given.
const DEFAULT_USAGE_DAYS: i64 = 30;
const DAY_MS: i64 = 24 * 3600 * 1000;

/// The UTC day (`YYYY-MM-DD`) of a time in milliseconds.
fn day_of(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%d")
        .to_string()
}

/// `[from_ms, to_ms)` cut at UTC midnights: each day's share in milliseconds, in order.
pub(crate) fn split_by_day(from_ms: i64, to_ms: i64) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    let mut at = from_ms;
    while at < to_ms {
        let next_midnight = (at.div_euclid(DAY_MS) + 1) * DAY_MS;
        let end = next_midnight.min(to_ms);
        out.push((day_of(at), end - at));
        at = end;
    }
    out
}

/// One meter pass at `now_ms` over what the store says (see the module doc for the rules).
pub(crate) fn plan(now_ms: i64, sandboxes: &[MeteredSandbox], period_ms: i64) -> UsagePass {
    let mut credits: BTreeMap<(String, String), (i64, i64)> = BTreeMap::new();
    let mut pass = UsagePass {
        minute_ms: now_ms - now_ms.rem_euclid(60_000),
        prune_before_ms: now_ms - SAMPLES_KEPT_MS,
        ..UsagePass::default()
    };
    let mut held: BTreeMap<String, Held> = BTreeMap::new();
    for sb in sandboxes {
        let (from, to) = if sb.running {
            let started = sb.started_ms.unwrap_or(sb.last_updated_ms);
            // A meter older than the last start belongs to a previous running period.
            let from = sb.metered_to_ms.map_or(started, |m| m.max(started));
            pass.meters.push((sb.id.clone(), now_ms.max(from)));
            let h = held.entry(sb.team_id.clone()).or_default();
            h.running += 1;
            h.vcpus += sb.vcpus;
            h.memory_mb += sb.memory_mb;
            (from, now_ms)
        } else {
            pass.unmeter.push(sb.id.clone());
            let Some(m) = sb.metered_to_ms else { continue };
            let to = sb.last_updated_ms.min(now_ms).min(m + 2 * period_ms);
            (m, to)
        };
        for (day, ms) in split_by_day(from, to) {
            let c = credits.entry((sb.team_id.clone(), day)).or_default();
            c.0 += ms.saturating_mul(sb.vcpus);
            c.1 += ms.saturating_mul(sb.memory_mb);
        }
    }
    pass.credits = credits
        .into_iter()
        .map(|((team_id, day), (cpu_ms, ram_mb_ms))| UsageCredit {
            team_id,
            day,
            cpu_ms,
            ram_mb_ms,
        })
        .collect();
    pass.samples = held.into_iter().collect();
    pass
}

/// A `YYYY-MM-DD` query value.
fn parse_day(name: &str, v: Option<&str>) -> Result<Option<NaiveDate>, ApiError> {
    v.map(|s| {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| {
            ApiError::BadRequest(format!(
                "{name} must be a date YYYY-MM-DD, not {:?}",
                s.chars().take(40).collect::<String>()
            ))
        })
    })
    .transpose()
}

/// Runs the meter every [`METER_EVERY`] until the [`App`] is gone.
pub async fn run_meter(app: Weak<App>) {
    crate::periodic::every(
        app,
        |_| METER_EVERY,
        |app| async move {
            if let Err(e) = app.meter_usage().await {
                tracing::warn!(error = %e, "usage meter pass failed");
            }
        },
    )
    .await
}

impl App {
    /// One meter pass (see the module doc); false when another control plane holds the
    /// meter's lease.
    pub async fn meter_usage(&self) -> Result<bool, ApiError> {
        // On SQLite only one control plane uses the database: no lease to wait out after a
        // restart.
        let ttl = (METER_EVERY * 3).max(Duration::from_secs(30));
        let single = self.store.single_writer();
        if !single && !self.store.try_lease(LEASE, &self.instance, ttl).await? {
            return Ok(false);
        }
        let sandboxes = self.store.metered_sandboxes().await?;
        let now = store::now().timestamp_millis();
        let pass = plan(now, &sandboxes, METER_EVERY.as_millis() as i64);
        // Nothing ran and nothing stopped: no write (old samples go with the next one).
        if pass.meters.is_empty() && pass.unmeter.is_empty() && pass.credits.is_empty() {
            return Ok(true);
        }
        self.store.record_usage(&pass).await?;
        Ok(true)
    }

    /// The team's usage per day from `from` (default: 30 days before `to`) to `to` (default:
    /// today, UTC), both included, a point for every day.
    pub async fn usage(
        &self,
        team_id: &TeamId,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<UsageResponse, ApiError> {
        let today = store::now().date_naive();
        let to = parse_day("to", to)?.unwrap_or(today);
        let from = parse_day("from", from)?.unwrap_or(to - Days::days(DEFAULT_USAGE_DAYS));
        if from > to {
            return Err(ApiError::BadRequest("from must not be after to".into()));
        }
        if (to - from).num_days() >= MAX_USAGE_DAYS {
            return Err(ApiError::BadRequest(format!(
                "at most {MAX_USAGE_DAYS} days per request"
            )));
        }
        let (f, t) = (from.to_string(), to.to_string());
        let stored: BTreeMap<String, (i64, i64)> = self
            .store
            .daily_usage(team_id.as_str(), &f, &t)
            .await?
            .into_iter()
            .map(|d| (d.day, (d.cpu_ms, d.ram_mb_ms)))
            .collect();
        let points = from
            .iter_days()
            .take_while(|d| *d <= to)
            .map(|d| {
                let day = d.to_string();
                let (cpu, ram) = stored.get(&day).copied().unwrap_or_default();
                UsagePoint {
                    date: day,
                    cpu_minutes: cpu as f64 / 60_000.0,
                    ram_mb_minutes: ram as f64 / 60_000.0,
                }
            })
            .collect();
        Ok(UsageResponse {
            from: f,
            to: t,
            points,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn ms(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    fn sb(id: &str, running: bool, started: &str, meter: Option<i64>) -> MeteredSandbox {
        MeteredSandbox {
            id: id.into(),
            team_id: "t".into(),
            running,
            vcpus: 2,
            memory_mb: 512,
            started_ms: Some(ms(started)),
            last_updated_ms: ms(started),
            metered_to_ms: meter,
        }
    }

    #[test]
    fn time_is_split_at_utc_midnight() {
        let from = ms("2026-03-01T23:50:00Z");
        let to = ms("2026-03-03T00:05:00Z");
        assert_eq!(
            split_by_day(from, to),
            vec![
                ("2026-03-01".to_string(), 10 * MIN),
                ("2026-03-02".to_string(), DAY_MS),
                ("2026-03-03".to_string(), 5 * MIN),
            ]
        );
        assert!(split_by_day(to, from).is_empty());
        assert!(split_by_day(to, to).is_empty());
    }

    #[test]
    fn a_running_sandbox_is_credited_across_midnight_and_metered_to_now() {
        let now = ms("2026-03-02T00:10:00Z");
        let pass = plan(now, &[sb("a", true, "2026-03-01T23:40:00Z", None)], 15_000);
        // 20 minutes before midnight and 10 after, at 2 vCPUs and 512 MB.
        assert_eq!(
            pass.credits,
            vec![
                UsageCredit {
                    team_id: "t".into(),
                    day: "2026-03-01".into(),
                    cpu_ms: 20 * MIN * 2,
                    ram_mb_ms: 20 * MIN * 512,
                },
                UsageCredit {
                    team_id: "t".into(),
                    day: "2026-03-02".into(),
                    cpu_ms: 10 * MIN * 2,
                    ram_mb_ms: 10 * MIN * 512,
                },
            ]
        );
        assert_eq!(pass.meters, vec![("a".to_string(), now)]);
        assert_eq!(
            pass.samples,
            vec![(
                "t".to_string(),
                Held {
                    running: 1,
                    vcpus: 2,
                    memory_mb: 512
                }
            )]
        );
        assert_eq!(pass.minute_ms, ms("2026-03-02T00:10:00Z"));
    }

    #[test]
    fn passes_in_a_row_count_each_moment_once() {
        let start = ms("2026-03-01T23:59:00Z");
        let mut meter = None;
        let mut total = 0;
        for i in 1..=8 {
            let now = start + i * 15_000;
            let mut s = sb("a", true, "2026-03-01T23:59:00Z", meter);
            s.started_ms = Some(start);
            let pass = plan(now, &[s], 15_000);
            total += pass.credits.iter().map(|c| c.cpu_ms).sum::<i64>();
            meter = Some(pass.meters[0].1);
        }
        assert_eq!(total, 2 * MIN * 2);
    }

    #[test]
    fn a_stopped_sandbox_is_credited_to_its_last_write_and_unmetered() {
        let meter = ms("2026-03-01T10:00:00Z");
        let mut s = sb("a", false, "2026-03-01T09:00:00Z", Some(meter));
        s.last_updated_ms = meter + 5_000;
        let pass = plan(meter + 60 * MIN, &[s.clone()], 15_000);
        assert_eq!(pass.credits[0].cpu_ms, 5_000 * 2);
        assert_eq!(pass.unmeter, vec!["a".to_string()]);
        assert!(pass.meters.is_empty() && pass.samples.is_empty());
        // A later write (say a rename) does not count as running time past two periods.
        s.last_updated_ms = meter + 50 * MIN;
        let pass = plan(meter + 60 * MIN, &[s], 15_000);
        assert_eq!(pass.credits[0].cpu_ms, 30_000 * 2);
        // Never metered: nothing to credit.
        let pass = plan(
            meter,
            &[sb("b", false, "2026-03-01T09:00:00Z", None)],
            15_000,
        );
        assert!(pass.credits.is_empty());
    }

    #[test]
    fn a_resumed_sandbox_is_not_credited_for_its_pause() {
        // Metered at 10:00, paused and resumed at 11:00 between two passes.
        let meter = ms("2026-03-01T10:00:00Z");
        let s = sb("a", true, "2026-03-01T11:00:00Z", Some(meter));
        let pass = plan(ms("2026-03-01T11:01:00Z"), &[s], 15_000);
        assert_eq!(pass.credits[0].cpu_ms, MIN * 2);
    }
}
