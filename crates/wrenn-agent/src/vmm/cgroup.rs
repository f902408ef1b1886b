//! A cgroup v2 per VM: `<cgroup2 root>/wrenn.slice/vm-<run dir name>-<hash of its path>`,
//! with `cpu.max` (its vCPUs times a configurable ratio), `memory.max` (its RAM plus QEMU's
//! overhead) with `memory.swap.max` 0, `pids.max` and `io.weight`. The forked child joins it
//! (writing to `cgroup.procs`) before QEMU is executed, so no guest code runs outside it. The
//! name depends only on the VM's run directory, so a restarted agent finds it again; it is
//! removed when the QEMU is gone.
//!
//! Hosts whose cgroup v2 hierarchy has no cpu, memory and pids controllers (cgroup v1 or hybrid
//! mounts) get no limits: [`Cgroups::detect`] says so once, at start.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// QEMU's memory beyond guest RAM that `memory.max` allows: TCG's translation cache and
/// QEMU's own heap (the RSS of a cold-booted TCG QEMU was 224 MB for 512 MB of guest RAM, of
/// which the guest's touched pages are part); KVM needs less.
pub const OVERHEAD_TCG_MB: u64 = 256;
pub const OVERHEAD_KVM_MB: u64 = 96;
/// Threads QEMU may have beyond one per vCPU (main loop, RCU, I/O workers).
pub const PIDS_BASE: u64 = 96;
const PERIOD_US: u64 = 100_000;

/// Where the per-VM cgroups live, when the host has a usable cgroup v2.
#[derive(Debug, Clone)]
pub struct Cgroups {
    /// `…/wrenn.slice`.
    pub parent: PathBuf,
    /// vCPU time allowed per vCPU (1.0: a VM never uses more than its vCPUs).
    pub cpu_ratio: f64,
}

/// The limits of one VM.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub cpu_max: String,
    pub memory_max: u64,
    pub pids_max: u64,
    pub io_weight: u32,
}

impl Limits {
    pub fn for_vm(vcpus: u32, memory_mb: u32, overhead_mb: u64, cpu_ratio: f64) -> Limits {
        let quota = (f64::from(vcpus) * cpu_ratio * PERIOD_US as f64).max(1000.0) as u64;
        Limits {
            cpu_max: format!("{quota} {PERIOD_US}"),
            memory_max: (u64::from(memory_mb) + overhead_mb) << 20,
            pids_max: PIDS_BASE + u64::from(vcpus),
            io_weight: 100,
        }
    }
}

fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
    })
}

impl Cgroups {
    /// The hierarchy to use, with `wrenn.slice` made and its controllers enabled; `Err` says
    /// why there is none.
    pub fn detect(cpu_ratio: f64) -> Result<Cgroups, String> {
        let root = cgroup2_root().ok_or("no cgroup v2 hierarchy is mounted")?;
        let have = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        let missing: Vec<&str> = ["cpu", "memory", "pids"]
            .into_iter()
            .filter(|c| !have.split_whitespace().any(|h| h == *c))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "the cgroup v2 hierarchy at {} has no {} controller (cgroup v1 or hybrid host)",
                root.display(),
                missing.join(", ")
            ));
        }
        let want: Vec<&str> = ["cpu", "memory", "pids", "io"]
            .into_iter()
            .filter(|c| have.split_whitespace().any(|h| h == *c))
            .collect();
        let enable = want
            .iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(" ");
        let parent = root.join("wrenn.slice");
        std::fs::create_dir_all(&parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        for dir in [&root, &parent] {
            std::fs::write(dir.join("cgroup.subtree_control"), &enable)
                .map_err(|e| format!("enable controllers in {}: {e}", dir.display()))?;
        }
        Ok(Cgroups { parent, cpu_ratio })
    }

    /// The cgroup of the VM whose run directory is `run_dir`.
    pub fn path_for(&self, run_dir: &Path) -> PathBuf {
        let name: String = run_dir
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .take(40)
            .collect();
        let hash = hex::encode(Sha256::digest(run_dir.as_os_str().as_encoded_bytes()));
        self.parent.join(format!("vm-{name}-{}", &hash[..8]))
    }

    /// Makes (or reuses) the VM's cgroup with `limits` set; returns its `cgroup.procs`, open
    /// for the child to write itself into.
    pub fn create(&self, run_dir: &Path, limits: &Limits) -> std::io::Result<std::fs::File> {
        let dir = self.path_for(run_dir);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let set = |file: &str, value: String| {
            std::fs::write(dir.join(file), &value)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{file} = {value}: {e}")))
        };
        set("cpu.max", limits.cpu_max.clone())?;
        set("memory.max", limits.memory_max.to_string())?;
        if dir.join("memory.swap.max").exists() {
            set("memory.swap.max", "0".into())?;
        }
        set("pids.max", limits.pids_max.to_string())?;
        if dir.join("io.weight").exists() {
            set("io.weight", format!("default {}", limits.io_weight))?;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))
    }

    /// Removes the VM's cgroup once no process is left in it.
    pub async fn remove(&self, run_dir: &Path) {
        let dir = self.path_for(run_dir);
        for _ in 0..50 {
            match std::fs::remove_dir(&dir) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        }
        tracing::warn!("cgroup {} could not be removed", dir.display());
    }
}

static CGROUPS: std::sync::OnceLock<Option<Cgroups>> = std::sync::OnceLock::new();

/// The host's per-VM cgroups, found once (a warning when there are none). The vCPU ratio is
/// `WRENN_CPU_RATIO` (default 1.0).
pub fn cgroups() -> Option<&'static Cgroups> {
    CGROUPS
        .get_or_init(|| {
            let ratio = std::env::var("WRENN_CPU_RATIO")
                .ok()
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|r| *r > 0.0)
                .unwrap_or(1.0);
            match Cgroups::detect(ratio) {
                Ok(c) => Some(c),
                Err(why) => {
                    tracing::warn!("VMs run without cgroup limits: {why}");
                    None
                }
            }
        })
        .as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_follow_vcpus_and_ram() {
        let l = Limits::for_vm(2, 512, OVERHEAD_TCG_MB, 1.0);
        assert_eq!(l.cpu_max, "200000 100000");
        assert_eq!(l.memory_max, (512 + OVERHEAD_TCG_MB) << 20);
        assert_eq!(l.pids_max, PIDS_BASE + 2);
        assert_eq!(Limits::for_vm(1, 256, 0, 0.5).cpu_max, "50000 100000");
    }

    #[test]
    fn names_are_stable_and_distinct() {
        let c = Cgroups {
            parent: "/cg/wrenn.slice".into(),
            cpu_ratio: 1.0,
        };
        let a = c.path_for(Path::new("/d/sandboxes/sb-1"));
        assert_eq!(a, c.path_for(Path::new("/d/sandboxes/sb-1")));
        assert_ne!(a, c.path_for(Path::new("/e/sandboxes/sb-1")));
        assert!(a
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("vm-sb-1-"));
    }
}
