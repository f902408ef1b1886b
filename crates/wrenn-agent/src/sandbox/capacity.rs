//! Capacity: the host's memory as `/proc/meminfo` reports it, the admission check a create or
//! resume passes before it starts a VM, and the host summary the control plane places
//! sandboxes by. It reads the host and the manager's lists; it must not start, stop or change
//! any sandbox.
//!
//! Admission counts committed memory, never the host's momentary free memory: the RAM of every
//! running VM plus a per-VM overhead ([`AdmissionConfig::vm_overhead_mb`]), plus what creates
//! and resumes under way have been admitted for ([`Admitted`]), plus the new VM, must fit the
//! host's total memory less a reserve, times the overcommit ratio. Pooled clones
//! (`pool/`) count as committed too. Free disk in the data
//! directory must hold the new VM's RAM (a pause writes it out) plus a reserve. Admission and
//! its reservation happen under one lock, so concurrent creates cannot overshoot.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use super::{Manager, SandboxError};
use wrenn_types::agent::{HostInfo, SandboxStatus};

impl Manager {
    /// Host capacity and counts.
    pub async fn host_info(&self) -> HostInfo {
        let list = self.list().await;
        let (total, avail) = meminfo();
        HostInfo {
            accel: self.cfg.accel,
            cpus: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            total_memory_mb: total,
            free_memory_mb: avail,
            running: list
                .iter()
                .filter(|s| s.status == SandboxStatus::Running)
                .count() as u32,
            paused: list
                .iter()
                .filter(|s| s.status == SandboxStatus::Paused)
                .count() as u32,
            templates: self.templates().into_iter().map(|t| t.name).collect(),
            pooled: self.pool_counts().pooled,
            committed_memory_mb: self.committed_mb(""),
            commit_limit_mb: commit_limit_mb(&self.cfg.admission, total),
            disk_free_mb: free_disk_mb(&self.cfg.data_dir),
        }
    }
}

/// The most memory `cfg` admits to commit on a host of `total_mb`, MiB.
fn commit_limit_mb(cfg: &AdmissionConfig, total_mb: u64) -> u64 {
    let usable = total_mb.saturating_sub(cfg.memory_reserve_mb) as f64;
    (usable * cfg.memory_overcommit) as u64
}

/// (total, available) memory of the host in MiB.
fn meminfo() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            / 1024
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

/// The admission limits of an agent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdmissionConfig {
    /// Memory kept for the host itself (the agent, the kernel, page cache), MiB.
    pub memory_reserve_mb: u64,
    /// Guest RAM committed may reach (total memory - reserve) times this; 1.0 commits no more
    /// than there is. Guests touch a fraction of their RAM, so more is possible, at the risk
    /// of the host's OOM killer if they all touch it.
    pub memory_overcommit: f64,
    /// Memory counted for each VM besides its RAM (QEMU's own), MiB.
    pub vm_overhead_mb: u64,
    /// Free space kept in the data directory's filesystem beyond what a VM needs, MiB.
    pub disk_reserve_mb: u64,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            memory_reserve_mb: 1024,
            memory_overcommit: 1.0,
            vm_overhead_mb: 64,
            disk_reserve_mb: 2048,
        }
    }
}

impl AdmissionConfig {
    /// Checks that the numbers make sense.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.memory_overcommit.is_finite() && (0.1..=100.0).contains(&self.memory_overcommit))
        {
            return Err(format!(
                "memory overcommit ratio {} must be between 0.1 and 100",
                self.memory_overcommit
            ));
        }
        Ok(())
    }
}

/// What the host has, for one admission decision (MiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostResources {
    pub total_memory_mb: u64,
    /// Memory committed to running VMs and admitted operations, overheads included.
    pub committed_mb: u64,
    /// Free space of the data directory's filesystem.
    pub free_disk_mb: u64,
}

/// Whether a VM of `memory_mb` fits `host` under `cfg`; the refusal says why in numbers.
pub fn decide(cfg: &AdmissionConfig, host: HostResources, memory_mb: u64) -> Result<(), String> {
    let need = memory_mb + cfg.vm_overhead_mb;
    let limit = commit_limit_mb(cfg, host.total_memory_mb);
    if host.committed_mb + need > limit {
        return Err(format!(
            "not enough memory on this host: {} MiB committed to sandboxes, {need} MiB more \
             needed, {limit} MiB may be committed",
            host.committed_mb
        ));
    }
    let disk_need = memory_mb + cfg.disk_reserve_mb;
    if host.free_disk_mb < disk_need {
        return Err(format!(
            "not enough free disk on this host: {} MiB free, {disk_need} MiB needed",
            host.free_disk_mb
        ));
    }
    Ok(())
}

/// The creates and resumes admitted and not yet ended, by sandbox id, with the memory (MiB,
/// overhead included) each was admitted for.
#[derive(Debug, Default)]
pub(super) struct Admissions(Mutex<HashMap<String, u64>>);

/// An admission under way: counted as committed until dropped (by then the sandbox is running
/// and counted as such, or it failed).
pub(super) struct Admitted<'a> {
    admissions: &'a Admissions,
    id: String,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.admissions
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

impl Manager {
    /// Admits a VM of `memory_mb` for sandbox `id` ([`decide`] on committed memory and free
    /// disk) and counts it as committed until the returned guard is dropped.
    pub(super) fn admit(&self, id: &str, memory_mb: u32) -> Result<Admitted<'_>, SandboxError> {
        let cfg = &self.cfg.admission;
        let (total, _) = meminfo();
        let free_disk_mb = free_disk_mb(&self.cfg.data_dir);
        let (committed_mb, mut inflight) = self.committed_locked(id);
        let host = HostResources {
            total_memory_mb: total,
            committed_mb,
            free_disk_mb,
        };
        decide(cfg, host, u64::from(memory_mb)).map_err(SandboxError::Capacity)?;
        inflight.insert(id.to_string(), u64::from(memory_mb) + cfg.vm_overhead_mb);
        Ok(Admitted {
            admissions: &self.admissions,
            id: id.to_string(),
        })
    }
}

impl Manager {
    /// Memory committed now (running VMs, pooled clones, admitted operations; overheads
    /// included), MiB, leaving out sandbox `id` (none for `""`).
    fn committed_mb(&self, id: &str) -> u64 {
        self.committed_locked(id).0
    }

    /// [`Self::committed_mb`] and the admissions' lock, held so an admission can be added
    /// before another is counted.
    fn committed_locked(&self, id: &str) -> (u64, std::sync::MutexGuard<'_, HashMap<String, u64>>) {
        let cfg = &self.cfg.admission;
        let running: Vec<(String, u64)> = self
            .map()
            .values()
            .map(|e| e.view())
            .filter(|v| v.status == SandboxStatus::Running)
            .map(|v| (v.id, u64::from(v.memory_mb) + cfg.vm_overhead_mb))
            .collect();
        let pooled = self.pools.committed_mb(cfg.vm_overhead_mb);
        let inflight = self.admissions.0.lock().unwrap_or_else(|e| e.into_inner());
        let committed = pooled
            + running
                .iter()
                .filter(|(rid, _)| rid != id && !inflight.contains_key(rid))
                .map(|(_, mb)| mb)
                .sum::<u64>()
            + inflight
                .iter()
                .filter(|(rid, _)| *rid != id)
                .map(|(_, mb)| mb)
                .sum::<u64>();
        (committed, inflight)
    }
}

/// Free space of the filesystem holding `dir` for an unprivileged user, MiB. Unknown counts
/// as plenty, so an unreadable filesystem does not stop every create.
fn free_disk_mb(dir: &Path) -> u64 {
    match nix::sys::statvfs::statvfs(dir) {
        Ok(st) => st.blocks_available().saturating_mul(st.fragment_size()) >> 20,
        Err(err) => {
            tracing::warn!(%err, "reading the data directory's free space failed");
            u64::MAX
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    fn host(total: u64, committed: u64, disk: u64) -> HostResources {
        HostResources {
            total_memory_mb: total,
            committed_mb: committed,
            free_disk_mb: disk,
        }
    }

    #[test]
    fn admission_counts_committed_memory_against_total_less_reserve() {
        let cfg = AdmissionConfig::default();
        // 8 GiB host: 7168 MiB may be committed; 512 MiB + 64 MiB overhead per VM.
        assert!(decide(&cfg, host(8192, 0, 100_000), 512).is_ok());
        assert!(decide(&cfg, host(8192, 7168 - 576, 100_000), 512).is_ok());
        let err = decide(&cfg, host(8192, 7168 - 575, 100_000), 512).unwrap_err();
        assert!(err.contains("memory") && err.contains("7168 MiB"), "{err}");
        // A VM larger than the host is refused even on an empty host.
        assert!(decide(&cfg, host(8192, 0, 100_000), 8192).is_err());
        // Overcommit 2: twice as much may be committed.
        let twice = AdmissionConfig {
            memory_overcommit: 2.0,
            ..cfg
        };
        assert!(decide(&twice, host(8192, 14336 - 576, 100_000), 512).is_ok());
        assert!(decide(&twice, host(8192, 14336 - 575, 100_000), 512).is_err());
        // A host smaller than its reserve admits nothing.
        assert!(decide(&cfg, host(512, 0, 100_000), 128).is_err());
    }

    #[test]
    fn admission_needs_the_vm_s_ram_plus_the_reserve_on_disk() {
        let cfg = AdmissionConfig::default();
        assert!(decide(&cfg, host(65536, 0, 512 + 2048), 512).is_ok());
        let err = decide(&cfg, host(65536, 0, 512 + 2047), 512).unwrap_err();
        assert!(err.contains("disk"), "{err}");
    }

    #[test]
    fn overcommit_ratio_is_checked() {
        let bad = |r| AdmissionConfig {
            memory_overcommit: r,
            ..AdmissionConfig::default()
        };
        assert!(bad(0.0).validate().is_err());
        assert!(bad(f64::NAN).validate().is_err());
        assert!(bad(1000.0).validate().is_err());
        assert!(bad(1.5).validate().is_ok());
    }
}
