//! The cgroup v1 backend: a VM gets a group `wrenn/vm-…` in each of the cpu, memory and pids
//! hierarchies (and blkio, where mounted), with `cpu.cfs_period_us`/`cpu.cfs_quota_us`,
//! `memory.limit_in_bytes` (and `memory.memsw.limit_in_bytes` at the same value where the
//! kernel accounts swap, else `memory.swappiness` 0), `pids.max` and the blkio weight. Used
//! where the unified hierarchy has no controllers (v1 and hybrid hosts).
//!
//! Where the groups go, per hierarchy: under its root (`<mount>/wrenn`) when the root is
//! writable, else under the agent's own group (from `/proc/self/cgroup`). The root comes first
//! because it does not change between runs of the agent (its own group may: a job runner can
//! put each process tree in a group of its own), so a restarted agent finds the groups again by
//! name; on a systemd host it is a group beside `system.slice`, as container runtimes' cgroupfs
//! drivers make, which systemd leaves alone.

use super::Limits;
use std::path::{Path, PathBuf};

/// The controllers a VM's limits need, and the one that only weighs its I/O.
pub const REQUIRED: [&str; 3] = ["cpu", "memory", "pids"];
pub const OPTIONAL: [&str; 1] = ["blkio"];

/// One mounted v1 hierarchy the VMs' groups are made in.
#[derive(Debug, Clone, PartialEq)]
pub struct Hierarchy {
    /// Where it is mounted (`/sys/fs/cgroup/memory`).
    pub mount: PathBuf,
    /// Those of [`REQUIRED`] and [`OPTIONAL`] it carries (`cpu` and `cpuacct` may share one).
    pub controllers: Vec<String>,
    /// `<mount>/wrenn` or `<mount>/<the agent's own group>/wrenn`.
    pub parent: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct V1 {
    pub hierarchies: Vec<Hierarchy>,
}

/// The v1 mounts (`cgroup` file systems) of `/proc/self/mounts`' text: mount point and the
/// controllers in its options.
fn mounts_in(mounts: &str) -> Vec<(PathBuf, Vec<String>)> {
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 3 && f[2] == "cgroup").then(|| {
                let opts = f[3].split(',').map(String::from).collect();
                (PathBuf::from(f[1]), opts)
            })
        })
        .collect()
}

/// The group of `controller` in `/proc/self/cgroup`'s text (`4:memory:/a/b` → `/a/b`).
fn own_group(self_cgroup: &str, controller: &str) -> Option<String> {
    self_cgroup.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, names, path) = (f.next()?, f.next()?, f.next()?);
        names
            .split(',')
            .any(|n| n == controller)
            .then(|| path.to_string())
    })
}

impl V1 {
    /// The hierarchies to use, from `/proc/self/mounts` and `/proc/self/cgroup`; `writable`
    /// says whether a directory may be written (the real one: `access(W_OK)`). Changes
    /// nothing; `Err` says why there is no usable v1 backend.
    pub fn find(
        mounts: &str,
        self_cgroup: &str,
        writable: &dyn Fn(&Path) -> bool,
    ) -> Result<V1, String> {
        let mounted = mounts_in(mounts);
        let mut hierarchies: Vec<Hierarchy> = vec![];
        let mut missing = vec![];
        for controller in REQUIRED.iter().chain(OPTIONAL.iter()) {
            let Some((mount, _)) = mounted
                .iter()
                .find(|(_, o)| o.iter().any(|x| x == controller))
            else {
                if REQUIRED.contains(controller) {
                    missing.push(*controller);
                }
                continue;
            };
            if let Some(h) = hierarchies.iter_mut().find(|h| &h.mount == mount) {
                h.controllers.push(controller.to_string());
                continue;
            }
            let parent = if writable(mount) {
                mount.join("wrenn")
            } else {
                // Under a bind-mounted part of the tree the own group's path may not exist.
                let own = own_group(self_cgroup, controller).unwrap_or_default();
                let dir = mount.join(own.trim_start_matches('/'));
                if !(dir.is_dir() && writable(&dir)) {
                    if REQUIRED.contains(controller) {
                        return Err(format!(
                            "the cgroup v1 {controller} hierarchy at {} is not writable",
                            mount.display()
                        ));
                    }
                    continue;
                }
                dir.join("wrenn")
            };
            hierarchies.push(Hierarchy {
                mount: mount.clone(),
                controllers: vec![controller.to_string()],
                parent,
            });
        }
        if !missing.is_empty() {
            return Err(format!(
                "no cgroup v1 {} hierarchy is mounted",
                missing.join(", ")
            ));
        }
        Ok(V1 { hierarchies })
    }

    /// Makes the `wrenn` parent group in every hierarchy and removes what [`sweep`] finds
    /// there.
    pub fn prepare(&self) -> Result<(), String> {
        for h in &self.hierarchies {
            std::fs::create_dir_all(&h.parent)
                .map_err(|e| format!("{}: {e}", h.parent.display()))?;
            sweep(&h.parent, std::time::Duration::from_secs(60));
        }
        Ok(())
    }

    /// The group `name` in every hierarchy.
    pub fn dirs(&self, name: &str) -> Vec<PathBuf> {
        self.hierarchies
            .iter()
            .map(|h| h.parent.join(name))
            .collect()
    }

    /// Makes (or reuses) the group `name` in every hierarchy with `limits` set; returns their
    /// `cgroup.procs`, open for the child to write itself into each.
    pub fn create(&self, name: &str, limits: &Limits) -> std::io::Result<Vec<std::fs::File>> {
        let mut procs = vec![];
        for h in &self.hierarchies {
            let dir = h.parent.join(name);
            super::make_dir(&dir)?;
            for c in &h.controllers {
                set_limits(&dir, c, limits)?;
            }
            procs.push(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(dir.join("cgroup.procs"))?,
            );
        }
        Ok(procs)
    }
}

/// Removes the VM groups under `parent` that no process is in and that are older than
/// `min_age`: those of QEMUs that died with their agent. The kernel refuses to remove a group
/// that still holds a process (a running VM a restarted agent re-attaches to), and a young
/// empty group may be one another agent on the host is about to fill. Returns how many.
pub fn sweep(parent: &Path, min_age: std::time::Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= min_age);
        let vm = e.file_name().to_string_lossy().starts_with("vm-");
        if vm && old && std::fs::remove_dir(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Writes the files of `controller` in the group `dir`.
fn set_limits(dir: &Path, controller: &str, limits: &Limits) -> std::io::Result<()> {
    let set = |file: &str, value: String| super::set(dir, file, &value);
    match controller {
        "cpu" => {
            set("cpu.cfs_period_us", limits.cpu_period_us.to_string())?;
            set("cpu.cfs_quota_us", limits.cpu_quota_us.to_string())?;
        }
        "memory" => {
            let limit = limits.memory_max.to_string();
            if dir.join("memory.memsw.limit_in_bytes").exists() {
                // Memory plus swap equal to memory alone: no swap. The kernel keeps memsw at
                // least the limit at every step, so a raised limit (a reused group) goes second.
                if set("memory.limit_in_bytes", limit.clone()).is_err() {
                    set("memory.memsw.limit_in_bytes", limit.clone())?;
                    set("memory.limit_in_bytes", limit.clone())?;
                }
                set("memory.memsw.limit_in_bytes", limit)?;
            } else {
                // No swap accounting: the group's pages are not swapped out instead.
                set("memory.limit_in_bytes", limit)?;
                set("memory.swappiness", "0".into())?;
            }
        }
        "pids" => set("pids.max", limits.pids_max.to_string())?,
        "blkio" => {
            // `blkio.weight` (CFQ kernels) or BFQ's; neither on a kernel without either.
            if let Some(f) = ["blkio.weight", "blkio.bfq.weight"]
                .into_iter()
                .find(|f| dir.join(f).exists())
            {
                set(f, limits.io_weight.to_string())?;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::cgroup::PIDS_BASE;

    /// This kind of host: separate v1 hierarchies, cpu and cpuacct apart, an empty cgroup2.
    fn mounts(root: &Path) -> String {
        let mut s = format!("tmpfs {} tmpfs rw 0 0\n", root.display());
        for c in ["cpu", "cpuacct", "memory", "pids", "blkio", "devices"] {
            s += &format!("cgroup {}/{c} cgroup rw,relatime,{c} 0 0\n", root.display());
        }
        s += &format!(
            "cgroup {}/systemd cgroup rw,name=systemd 0 0\n",
            root.display()
        );
        s += &format!("cgroup2 {}/unified cgroup2 rw 0 0\n", root.display());
        s
    }

    const SELF: &str = "9:name=systemd:/\n8:pids:/\n7:blkio:/\n\
                        4:memory:/process_api/72a3\n1:cpu:/\n0::/\n";

    #[test]
    fn hierarchies_are_found_from_the_mounts() {
        let root = Path::new("/fake");
        let v1 = V1::find(&mounts(root), SELF, &|_| true).unwrap();
        let got: Vec<(String, Vec<String>)> = v1
            .hierarchies
            .iter()
            .map(|h| (h.parent.display().to_string(), h.controllers.clone()))
            .collect();
        assert_eq!(
            got,
            [
                ("/fake/cpu/wrenn".to_string(), vec!["cpu".to_string()]),
                ("/fake/memory/wrenn".into(), vec!["memory".into()]),
                ("/fake/pids/wrenn".into(), vec!["pids".into()]),
                ("/fake/blkio/wrenn".into(), vec!["blkio".into()]),
            ]
        );
        assert_eq!(v1.dirs("vm-a")[1], PathBuf::from("/fake/memory/wrenn/vm-a"));
    }

    #[test]
    fn co_mounted_controllers_share_one_group_and_blkio_is_optional() {
        let m = "cgroup /cg/cpu,cpuacct cgroup rw,nosuid,cpu,cpuacct 0 0\n\
                 cgroup /cg/memory cgroup rw,memory 0 0\n\
                 cgroup /cg/pids cgroup rw,pids 0 0\n";
        let v1 = V1::find(m, "", &|_| true).unwrap();
        assert_eq!(v1.hierarchies.len(), 3);
        assert_eq!(v1.hierarchies[0].mount, PathBuf::from("/cg/cpu,cpuacct"));
        assert_eq!(v1.hierarchies[0].controllers, ["cpu"]);
    }

    #[test]
    fn a_missing_controller_is_named() {
        let m = "cgroup /cg/cpu cgroup rw,cpu 0 0\ncgroup2 /cg2 cgroup2 rw 0 0\n";
        let err = V1::find(m, "", &|_| true).unwrap_err();
        assert_eq!(err, "no cgroup v1 memory, pids hierarchy is mounted");
        assert!(V1::find("", "", &|_| true).is_err());
    }

    #[test]
    fn a_read_only_root_falls_back_to_the_own_group() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("memory/process_api/72a3")).unwrap();
        let memory_root = root.path().join("memory");
        let v1 = V1::find(&mounts(root.path()), SELF, &|p: &Path| {
            p != memory_root.as_path()
        })
        .unwrap();
        let memory = v1
            .hierarchies
            .iter()
            .find(|h| h.controllers == ["memory"])
            .unwrap();
        assert_eq!(
            memory.parent,
            root.path().join("memory/process_api/72a3/wrenn")
        );

        // Neither the root nor the own group: no backend.
        let err = V1::find(&mounts(root.path()), SELF, &|_| false).unwrap_err();
        assert!(
            err.contains("cpu hierarchy") && err.contains("not writable"),
            "{err}"
        );
    }

    /// A fake v1 tree: the hierarchies as directories, each VM group holding the files the
    /// kernel would make (`memsw` only where swap is accounted).
    fn fake_tree(swap_accounting: bool) -> (tempfile::TempDir, V1) {
        let root = tempfile::tempdir().unwrap();
        let v1 = V1::find(&mounts(root.path()), SELF, &|_| true).unwrap();
        v1.prepare().unwrap();
        for dir in v1.dirs("vm-a") {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("cgroup.procs"), "").unwrap();
        }
        let mem = root.path().join("memory/wrenn/vm-a");
        std::fs::write(mem.join("memory.limit_in_bytes"), "9223372036854771712").unwrap();
        if swap_accounting {
            std::fs::write(
                mem.join("memory.memsw.limit_in_bytes"),
                "9223372036854771712",
            )
            .unwrap();
        }
        std::fs::write(root.path().join("blkio/wrenn/vm-a/blkio.bfq.weight"), "100").unwrap();
        (root, v1)
    }

    #[test]
    fn the_limits_are_written_in_every_hierarchy() {
        let (root, v1) = fake_tree(true);
        let limits = Limits::for_vm(2, 256, 256, 0.5);
        let procs = v1.create("vm-a", &limits).unwrap();
        assert_eq!(procs.len(), 4);
        let read = |f: &str| std::fs::read_to_string(root.path().join(f)).unwrap();
        assert_eq!(read("cpu/wrenn/vm-a/cpu.cfs_period_us"), "100000");
        assert_eq!(read("cpu/wrenn/vm-a/cpu.cfs_quota_us"), "100000");
        let limit = (512u64 << 20).to_string();
        assert_eq!(read("memory/wrenn/vm-a/memory.limit_in_bytes"), limit);
        assert_eq!(read("memory/wrenn/vm-a/memory.memsw.limit_in_bytes"), limit);
        assert!(!root
            .path()
            .join("memory/wrenn/vm-a/memory.swappiness")
            .exists());
        assert_eq!(
            read("pids/wrenn/vm-a/pids.max"),
            (PIDS_BASE + 2).to_string()
        );
        assert_eq!(read("blkio/wrenn/vm-a/blkio.bfq.weight"), "100");
        assert!(!root.path().join("blkio/wrenn/vm-a/blkio.weight").exists());
        // The files the child writes itself into are the groups' `cgroup.procs`.
        use std::io::Write;
        for (mut f, dir) in procs.into_iter().zip(v1.dirs("vm-a")) {
            f.write_all(b"0").unwrap();
            assert_eq!(
                std::fs::read_to_string(dir.join("cgroup.procs")).unwrap(),
                "0"
            );
        }
    }

    #[test]
    fn a_sweep_removes_old_empty_vm_groups_only() {
        let root = tempfile::tempdir().unwrap();
        let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        let mk = |name: &str, busy: bool, old: bool| {
            let d = root.path().join(name);
            std::fs::create_dir(&d).unwrap();
            if busy {
                // A directory that cannot be removed stands for a group with a process.
                std::fs::write(d.join("x"), "").unwrap();
            }
            if old {
                std::fs::File::open(&d)
                    .unwrap()
                    .set_modified(an_hour_ago)
                    .unwrap();
            }
            d
        };
        let gone = mk("vm-a-1", false, true);
        let busy = mk("vm-b-2", true, true);
        let young = mk("vm-c-3", false, false);
        let other = mk("not-a-vm", false, true);
        assert_eq!(sweep(root.path(), std::time::Duration::from_secs(60)), 1);
        assert!(!gone.exists());
        assert!(busy.exists() && young.exists() && other.exists());
    }

    #[test]
    fn without_swap_accounting_swappiness_is_zero() {
        let (root, v1) = fake_tree(false);
        v1.create("vm-a", &Limits::for_vm(1, 256, 96, 1.0)).unwrap();
        let mem = root.path().join("memory/wrenn/vm-a");
        assert_eq!(
            std::fs::read_to_string(mem.join("memory.limit_in_bytes")).unwrap(),
            (352u64 << 20).to_string()
        );
        assert_eq!(
            std::fs::read_to_string(mem.join("memory.swappiness")).unwrap(),
            "0"
        );
        assert!(!mem.join("memory.memsw.limit_in_bytes").exists());
    }
}
