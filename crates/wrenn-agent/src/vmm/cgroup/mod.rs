//! The per-VM cgroups: a group `vm-<run dir name>-<hash of its path>` per VM, limiting its CPU
//! time (its vCPUs times a configurable ratio), its memory (its RAM plus QEMU's overhead, no
//! swap), its tasks, and weighing its I/O. The forked child joins it (writing to
//! `cgroup.procs`) before QEMU is executed, so no guest code runs outside it. The name depends
//! only on the VM's run directory, so a restarted agent finds it again; it is removed when the
//! QEMU is gone.
//!
//! Two backends, chosen once at start by [`Cgroups::detect`]: cgroup v2 (`v2.rs`) where the
//! unified hierarchy has the cpu, memory and pids controllers, else cgroup v1 (`v1.rs`) where
//! those are mounted as v1 hierarchies. A host with neither gets no limits and is told so.

pub mod v1;
pub mod v2;

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// QEMU's memory beyond guest RAM that the memory limit allows: TCG's translation cache and
/// QEMU's own heap (the RSS of a cold-booted TCG QEMU was 224 MB for 512 MB of guest RAM, of
/// which the guest's touched pages are part); KVM needs less.
pub const OVERHEAD_TCG_MB: u64 = 256;
pub const OVERHEAD_KVM_MB: u64 = 96;
/// Threads QEMU may have beyond one per vCPU (main loop, RCU, I/O workers).
pub const PIDS_BASE: u64 = 96;
/// The CPU bandwidth period.
pub const PERIOD_US: u64 = 100_000;

/// The limits of one VM.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// CPU time allowed per period.
    pub cpu_quota_us: u64,
    pub cpu_period_us: u64,
    pub memory_max: u64,
    pub pids_max: u64,
    pub io_weight: u32,
}

impl Limits {
    pub fn for_vm(vcpus: u32, memory_mb: u32, overhead_mb: u64, cpu_ratio: f64) -> Limits {
        let quota = (f64::from(vcpus) * cpu_ratio * PERIOD_US as f64).max(1000.0) as u64;
        Limits {
            cpu_quota_us: quota,
            cpu_period_us: PERIOD_US,
            memory_max: (u64::from(memory_mb) + overhead_mb) << 20,
            pids_max: PIDS_BASE + u64::from(vcpus),
            io_weight: 100,
        }
    }

    /// v2's `cpu.max`: `<quota> <period>`.
    pub fn cpu_max(&self) -> String {
        format!("{} {}", self.cpu_quota_us, self.cpu_period_us)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Backend {
    V2(v2::V2),
    V1(v1::V1),
}

/// Where the per-VM cgroups live, on a host that has usable ones.
#[derive(Debug, Clone)]
pub struct Cgroups {
    pub backend: Backend,
    /// vCPU time allowed per vCPU (1.0: a VM never uses more than its vCPUs).
    pub cpu_ratio: f64,
}

/// Writes `value` to the control file `dir/file`, saying which on failure.
fn set(dir: &Path, file: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(dir.join(file), value)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{file} = {value}: {e}")))
}

/// Makes the group `dir`, or reuses it (a QEMU of the same run dir that died).
fn make_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

fn writable(p: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a NUL-terminated path that outlives the call.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

impl Backend {
    /// The backend this host allows, from the texts of `/proc/self/mounts` and
    /// `/proc/self/cgroup`: v2 first, then v1. Changes nothing; `Err` says why there is none.
    pub fn find(mounts: &str, self_cgroup: &str) -> Result<Backend, String> {
        match v2::V2::find(mounts) {
            Ok(v2) => Ok(Backend::V2(v2)),
            Err(no_v2) => match v1::V1::find(mounts, self_cgroup, &writable) {
                Ok(v1) => Ok(Backend::V1(v1)),
                Err(no_v1) => Err(format!("{no_v2}, and {no_v1}")),
            },
        }
    }

    /// The host's backend, read from `/proc/self`.
    pub fn probe() -> Result<Backend, String> {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        Backend::find(&read("/proc/self/mounts"), &read("/proc/self/cgroup"))
    }

    /// `v2: /sys/fs/cgroup/wrenn.slice (cpu memory pids io)` or
    /// `v1: /sys/fs/cgroup/cpu/wrenn (cpu), …`.
    pub fn describe(&self) -> String {
        match self {
            Backend::V2(v) => format!("v2: {} ({})", v.parent.display(), v.controllers.join(" ")),
            Backend::V1(v) => format!(
                "v1: {}",
                v.hierarchies
                    .iter()
                    .map(|h| format!("{} ({})", h.parent.display(), h.controllers.join(" ")))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// The group name of the VM whose run directory is `run_dir`.
pub fn vm_name(run_dir: &Path) -> String {
    let name: String = run_dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(40)
        .collect();
    let hash = hex::encode(Sha256::digest(run_dir.as_os_str().as_encoded_bytes()));
    format!("vm-{name}-{}", &hash[..8])
}

impl Cgroups {
    /// The backend to use, with its parent groups made; `Err` says why there is none.
    pub fn detect(cpu_ratio: f64) -> Result<Cgroups, String> {
        let backend = Backend::probe()?;
        match &backend {
            Backend::V2(v) => v.prepare()?,
            Backend::V1(v) => v.prepare()?,
        }
        Ok(Cgroups { backend, cpu_ratio })
    }

    /// The groups of the VM whose run directory is `run_dir`: one under v2, one per
    /// hierarchy under v1.
    pub fn dirs_for(&self, run_dir: &Path) -> Vec<PathBuf> {
        let name = vm_name(run_dir);
        match &self.backend {
            Backend::V2(v) => vec![v.parent.join(name)],
            Backend::V1(v) => v.dirs(&name),
        }
    }

    /// Renames the groups of the VM run from `from` to the names of `to`: the VM's processes
    /// and limits stay as they are. Stops at the first failure (the caller falls back to
    /// making the new groups and moving the processes).
    pub fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        for (a, b) in self.dirs_for(from).into_iter().zip(self.dirs_for(to)) {
            std::fs::rename(a, b)?;
        }
        Ok(())
    }

    /// Makes (or reuses) the VM's groups with `limits` set; returns their `cgroup.procs`, open
    /// for the child to write itself into each.
    pub fn create(&self, run_dir: &Path, limits: &Limits) -> std::io::Result<Vec<std::fs::File>> {
        let name = vm_name(run_dir);
        match &self.backend {
            Backend::V2(v) => Ok(vec![v.create(&name, limits)?]),
            Backend::V1(v) => v.create(&name, limits),
        }
    }

    /// Removes the VM's groups once no process is left in them (a process that just exited
    /// may hold a group for a moment: retried for half a second).
    pub async fn remove(&self, run_dir: &Path) {
        let mut left = self.dirs_for(run_dir);
        // A group stays busy for a moment after its last process has gone: retry soon, then
        // less often, for about half a second in all.
        let mut wait = std::time::Duration::from_millis(1);
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
        loop {
            left.retain(|d| match std::fs::remove_dir(d) {
                Ok(()) => false,
                Err(e) => e.kind() != std::io::ErrorKind::NotFound,
            });
            if left.is_empty() {
                return;
            }
            if std::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(std::time::Duration::from_millis(16));
        }
        for d in left {
            tracing::warn!("cgroup {} could not be removed", d.display());
        }
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
                Ok(c) => {
                    tracing::info!("VM cgroups {}", c.backend.describe());
                    Some(c)
                }
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
        assert_eq!(l.cpu_max(), "200000 100000");
        assert_eq!((l.cpu_quota_us, l.cpu_period_us), (200_000, PERIOD_US));
        assert_eq!(l.memory_max, (512 + OVERHEAD_TCG_MB) << 20);
        assert_eq!(l.pids_max, PIDS_BASE + 2);
        assert_eq!(Limits::for_vm(1, 256, 0, 0.5).cpu_max(), "50000 100000");
        assert_eq!(Limits::for_vm(1, 256, 0, 0.001).cpu_quota_us, 1000);
    }

    #[test]
    fn names_are_stable_and_distinct() {
        let a = vm_name(Path::new("/d/sandboxes/sb-1"));
        assert_eq!(a, vm_name(Path::new("/d/sandboxes/sb-1")));
        assert_ne!(a, vm_name(Path::new("/e/sandboxes/sb-1")));
        assert!(a.starts_with("vm-sb-1-"), "{a}");
        let c = Cgroups {
            backend: Backend::V1(
                v1::V1::find(
                    "cgroup /c/cpu cgroup rw,cpu 0 0\ncgroup /c/memory cgroup rw,memory 0 0\n\
                     cgroup /c/pids cgroup rw,pids 0 0\n",
                    "",
                    &|_| true,
                )
                .unwrap(),
            ),
            cpu_ratio: 1.0,
        };
        let dirs = c.dirs_for(Path::new("/d/sandboxes/sb-1"));
        assert_eq!(
            dirs,
            ["cpu", "memory", "pids"].map(|h| PathBuf::from(format!("/c/{h}/wrenn/{a}")))
        );
    }

    #[test]
    fn v2_is_chosen_when_it_has_the_controllers_else_v1() {
        let root = tempfile::tempdir().unwrap();
        let v2_root = root.path().join("unified");
        std::fs::create_dir_all(&v2_root).unwrap();
        std::fs::write(v2_root.join("cgroup.controllers"), "").unwrap();
        let mut mounts = format!("cgroup2 {} cgroup2 rw 0 0\n", v2_root.display());
        for c in ["cpu", "memory", "pids"] {
            std::fs::create_dir_all(root.path().join(c)).unwrap();
            mounts += &format!("cgroup {}/{c} cgroup rw,{c} 0 0\n", root.path().display());
        }
        let self_cgroup = "4:memory:/job\n1:cpu:/\n0::/\n";
        assert!(matches!(
            Backend::find(&mounts, self_cgroup).unwrap(),
            Backend::V1(_)
        ));
        std::fs::write(v2_root.join("cgroup.controllers"), "cpu io memory pids").unwrap();
        let b = Backend::find(&mounts, self_cgroup).unwrap();
        assert_eq!(
            b.describe(),
            format!("v2: {}/wrenn.slice (cpu memory pids io)", v2_root.display())
        );
        // Neither: both reasons.
        let err = Backend::find("proc /proc proc rw 0 0\n", "").unwrap_err();
        assert!(
            err.contains("no cgroup v2") && err.contains("no cgroup v1 cpu, memory, pids"),
            "{err}"
        );
    }
}
