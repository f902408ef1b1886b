//! Capacity: the host's memory as `/proc/meminfo` reports it, the admission check a create or
//! resume passes before it starts a VM, and the host summary the control plane places
//! sandboxes by. It reads the host and the manager's lists; it must not start, stop or change
//! any sandbox.

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
        }
    }
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

/// Refuses a VM when the host could not give it a reasonable share of its RAM.
pub(super) fn check_capacity(memory_mb: u32) -> Result<(), SandboxError> {
    let (_, avail) = meminfo();
    // Guests touch a fraction of their RAM; keep a floor so the host itself stays healthy.
    let need = 256 + u64::from(memory_mb) / 4;
    if avail < need {
        return Err(SandboxError::Capacity(format!(
            "not enough free memory on this host ({avail} MiB available, {need} MiB needed)"
        )));
    }
    Ok(())
}
