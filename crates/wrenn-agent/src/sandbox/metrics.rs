//! Resource samples of running sandboxes: a task samples every running sandbox every
//! [`SAMPLE_EVERY`] and keeps, per sandbox, two bounded rings: the last [`FINE_POINTS`]
//! samples (10 minutes) and the last [`COARSE_POINTS`] one-minute averages (24 hours). A
//! sandbox's samples go when it is no longer listed; a paused sandbox keeps the ones it had.
//!
//! What a sample says (read from the host, never from the guest):
//! - `cpu_pct`: the CPU time (`utime + stime` of `/proc/<pid>/stat`) the VM's QEMU process
//!   used since the previous sample, over the wall time between them and the sandbox's vCPUs,
//!   as a percentage capped at 100 (QEMU's own threads count too);
//! - `mem_bytes`: the QEMU process's resident memory (`VmRSS` of `/proc/<pid>/status`): the
//!   guest RAM it has touched (the RAM file's pages it mapped) plus QEMU's own;
//! - `disk_bytes`: the bytes the sandbox's top disk layer (its copy-on-write overlay) holds
//!   on the host's disk (`st_blocks × 512`), i.e. what it wrote beyond its template.
//!
//! The sampler skips a sandbox whose operation lock is held (a pause, resume or snapshot
//! under way) and never waits for one. Owns only the samples; it must not change sandboxes.

use super::{Manager, SandboxError};
use std::collections::{HashMap, VecDeque};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wrenn_types::agent::SandboxStatus;
use wrenn_types::observe::MetricPoint;

/// Time between two samples of a running sandbox.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Samples kept at full resolution: 10 minutes.
pub const FINE_POINTS: usize = 300;
/// One-minute averages kept: 24 hours.
pub const COARSE_POINTS: usize = 1440;
/// Seconds a coarse point covers.
const COARSE_STEP_SECS: i64 = 60;
/// Ranges up to this long are answered from the full-resolution ring.
const FINE_RANGE_SECS: u32 = (FINE_POINTS as u32) * 2;

/// The samples of one sandbox.
#[derive(Debug, Default)]
pub(crate) struct Series {
    fine: VecDeque<MetricPoint>,
    coarse: VecDeque<MetricPoint>,
    /// The minute being averaged: its start and the samples in it.
    minute: Option<(i64, Vec<MetricPoint>)>,
    /// The previous CPU reading: of which process, when, and its CPU ticks then (a resume
    /// runs a new QEMU, whose count starts again).
    last_cpu: Option<(u32, Instant, u64)>,
}

impl Series {
    /// Adds a sample; a sample of a new minute closes the previous minute's average.
    pub(crate) fn push(&mut self, p: MetricPoint) {
        push_bounded(&mut self.fine, p, FINE_POINTS);
        let minute = p.timestamp_unix - p.timestamp_unix.rem_euclid(COARSE_STEP_SECS);
        match &mut self.minute {
            Some((m, samples)) if *m == minute => samples.push(p),
            _ => {
                if let Some((m, samples)) = self.minute.take() {
                    push_bounded(&mut self.coarse, average(m, &samples), COARSE_POINTS);
                }
                self.minute = Some((minute, vec![p]));
            }
        }
    }

    /// The samples of the last `range_secs` seconds before `now_unix`, oldest first: every
    /// sample for a range of up to 10 minutes, else the one-minute averages (the minute
    /// under way included).
    pub(crate) fn range(&self, now_unix: i64, range_secs: u32) -> Vec<MetricPoint> {
        let since = now_unix - i64::from(range_secs);
        if range_secs <= FINE_RANGE_SECS {
            return self
                .fine
                .iter()
                .filter(|p| p.timestamp_unix > since)
                .copied()
                .collect();
        }
        let open = self.minute.as_ref().map(|(m, s)| average(*m, s));
        self.coarse
            .iter()
            .copied()
            .chain(open)
            .filter(|p| p.timestamp_unix > since)
            .collect()
    }
}

fn push_bounded(ring: &mut VecDeque<MetricPoint>, p: MetricPoint, cap: usize) {
    while ring.len() >= cap {
        ring.pop_front();
    }
    ring.push_back(p);
}

/// The average of a minute's samples, stamped with the minute's start; the disk is the last.
fn average(minute: i64, samples: &[MetricPoint]) -> MetricPoint {
    let n = samples.len().max(1) as f64;
    MetricPoint {
        timestamp_unix: minute,
        cpu_pct: samples.iter().map(|p| p.cpu_pct).sum::<f64>() / n,
        mem_bytes: (samples.iter().map(|p| p.mem_bytes as f64).sum::<f64>() / n) as u64,
        disk_bytes: samples.last().map_or(0, |p| p.disk_bytes),
    }
}

/// Every sandbox's samples.
#[derive(Debug, Default)]
pub(crate) struct Samples(Mutex<HashMap<String, Series>>);

impl Samples {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Series>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What the sampler needs of a running sandbox.
struct Target {
    id: String,
    pid: u32,
    vcpus: u32,
    disk: PathBuf,
}

impl Manager {
    /// Starts the sampling task; it ends when the manager is gone.
    pub(crate) fn start_sampler(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(mgr) = me.upgrade() else { return };
                mgr.sample_once();
            }
        });
    }

    /// One round: a sample of every running sandbox whose lock is free; the samples of
    /// sandboxes no longer listed are dropped.
    pub(crate) fn sample_once(&self) {
        let entries: Vec<_> = self
            .map()
            .iter()
            .map(|(id, e)| (id.clone(), e.clone()))
            .collect();
        let mut targets = Vec::new();
        for (id, e) in &entries {
            let Ok(inner) = e.inner.try_lock() else {
                continue;
            };
            if inner.rec.status != SandboxStatus::Running || inner.rec.op.is_some() {
                continue;
            }
            let Some(vm) = &inner.vm else { continue };
            let layer = inner.rec.layers.last().map_or("disk.qcow2", String::as_str);
            targets.push(Target {
                id: id.clone(),
                pid: vm.pid,
                vcpus: inner.rec.vcpus.max(1),
                disk: self.sandbox_dir(id).join(layer),
            });
        }
        let now = Instant::now();
        let now_unix = chrono::Utc::now().timestamp();
        let mut samples = self.samples.map();
        samples.retain(|id, _| entries.iter().any(|(e, _)| e == id));
        for t in targets {
            let Some(cpu_ticks) = cpu_ticks(t.pid) else {
                continue;
            };
            let series = samples.entry(t.id.clone()).or_default();
            let previous = series.last_cpu.filter(|(pid, _, _)| *pid == t.pid);
            series.last_cpu = Some((t.pid, now, cpu_ticks));
            // The first reading of a process only starts its CPU count.
            let Some((_, at, ticks)) = previous else {
                continue;
            };
            let cpu_pct = cpu_percent(
                cpu_ticks.saturating_sub(ticks),
                now.duration_since(at),
                t.vcpus,
            );
            series.push(MetricPoint {
                timestamp_unix: now_unix,
                cpu_pct,
                mem_bytes: rss_bytes(t.pid).unwrap_or(0),
                disk_bytes: allocated_bytes(&t.disk),
            });
        }
    }

    /// The samples of sandbox `id` of the last `range_secs` seconds (at most 24 hours).
    pub async fn metrics(
        &self,
        id: &str,
        range_secs: u32,
    ) -> Result<Vec<MetricPoint>, SandboxError> {
        if range_secs == 0 || range_secs > 86_400 {
            return Err(SandboxError::BadRequest(
                "range_secs must be between 1 and 86400".into(),
            ));
        }
        self.entry(id)?;
        let now = chrono::Utc::now().timestamp();
        Ok(self
            .samples
            .map()
            .get(id)
            .map(|s| s.range(now, range_secs))
            .unwrap_or_default())
    }
}

/// `used` clock ticks over `wall` on `vcpus` vCPUs, as a percentage in 0-100.
fn cpu_percent(used: u64, wall: Duration, vcpus: u32) -> f64 {
    let hz = clock_ticks_per_sec();
    let wall = wall.as_secs_f64();
    if wall <= 0.0 {
        return 0.0;
    }
    let pct = used as f64 / hz / wall / f64::from(vcpus.max(1)) * 100.0;
    pct.clamp(0.0, 100.0)
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf only reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// `utime + stime` of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat)
}

/// The fields after the command name (which may hold spaces and parentheses): state is
/// field 3, utime 14 and stime 15.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_rss(&status)
}

fn parse_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn allocated_bytes(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.blocks() * 512)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(t: i64, cpu: f64, mem: u64, disk: u64) -> MetricPoint {
        MetricPoint {
            timestamp_unix: t,
            cpu_pct: cpu,
            mem_bytes: mem,
            disk_bytes: disk,
        }
    }

    #[test]
    fn the_fine_ring_keeps_the_last_points_only() {
        let mut s = Series::default();
        for i in 0..(FINE_POINTS as i64 + 50) {
            s.push(point(1_000_000 + i * 2, 1.0, 1, 1));
        }
        assert_eq!(s.fine.len(), FINE_POINTS);
        assert_eq!(s.fine.front().unwrap().timestamp_unix, 1_000_000 + 100);
        let now = 1_000_000 + (FINE_POINTS as i64 + 49) * 2;
        // The last 5 minutes hold 150 samples two seconds apart.
        assert_eq!(s.range(now, 300).len(), 150);
        assert_eq!(s.range(now, 600).len(), FINE_POINTS);
    }

    #[test]
    fn the_coarse_ring_averages_minutes_and_is_bounded() {
        let mut s = Series::default();
        let start = 1_200_000; // a minute's start
                               // Minute 0: cpu 10 and 30, memory 100 and 300; minute 1 begins.
        s.push(point(start, 10.0, 100, 5));
        s.push(point(start + 30, 30.0, 300, 7));
        s.push(point(start + 60, 50.0, 500, 9));
        assert_eq!(s.coarse.len(), 1);
        assert_eq!(s.coarse[0], point(start, 20.0, 200, 7));
        // The hour view shows the closed minute and the one under way.
        let hour = s.range(start + 61, 3600);
        assert_eq!(hour.len(), 2);
        assert_eq!(hour[1], point(start + 60, 50.0, 500, 9));
        for m in 2..(COARSE_POINTS as i64 + 10) {
            s.push(point(start + m * 60, 1.0, 1, 1));
        }
        assert_eq!(s.coarse.len(), COARSE_POINTS);
        let last = start + (COARSE_POINTS as i64 + 9) * 60;
        assert!(s.range(last, 86_400).len() <= COARSE_POINTS + 1);
    }

    #[test]
    fn proc_parsing() {
        let stat = "1234 (qemu-system-x86 (a) b) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert_eq!(parse_cpu_ticks("garbage"), None);
        let status = "Name:\tqemu\nVmPeak:\t 9 kB\nVmRSS:\t  2048 kB\nThreads: 4\n";
        assert_eq!(parse_rss(status), Some(2 * 1024 * 1024));
        assert_eq!(parse_rss("Name: x\n"), None);
    }

    #[test]
    fn cpu_percent_is_per_vcpu_and_capped() {
        let hz = clock_ticks_per_sec() as u64;
        // One second of CPU over two seconds on one vCPU: 50 %.
        let p = cpu_percent(hz, Duration::from_secs(2), 1);
        assert!((p - 50.0).abs() < 0.01, "{p}");
        // The same on two vCPUs: 25 %.
        let p = cpu_percent(hz, Duration::from_secs(2), 2);
        assert!((p - 25.0).abs() < 0.01, "{p}");
        assert_eq!(cpu_percent(hz * 10, Duration::from_secs(1), 1), 100.0);
        assert_eq!(cpu_percent(5, Duration::ZERO, 1), 0.0);
    }

    #[test]
    fn this_process_can_be_read() {
        let pid = std::process::id();
        assert!(cpu_ticks(pid).is_some());
        assert!(rss_bytes(pid).unwrap() > 0);
    }
}
