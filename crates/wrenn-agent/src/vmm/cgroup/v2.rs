//! The cgroup v2 backend: a VM's group is `<cgroup2 root>/wrenn.slice/vm-…`, with `cpu.max`,
//! `memory.max` with `memory.swap.max` 0, `pids.max` and `io.weight`. Used where the unified
//! hierarchy has the cpu, memory and pids controllers.

use super::Limits;
use std::path::{Path, PathBuf};

/// The unified hierarchy's `wrenn.slice`, under which every VM gets a group.
#[derive(Debug, Clone, PartialEq)]
pub struct V2 {
    /// `…/wrenn.slice`.
    pub parent: PathBuf,
    /// The root's controllers this backend enables (`cpu memory pids`, and `io` if present).
    pub controllers: Vec<String>,
}

/// The mount point of the cgroup2 file system in `/proc/self/mounts`' text.
pub fn root_in(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
    })
}

impl V2 {
    /// The backend the host allows, found without changing anything; `Err` says why there is
    /// none.
    pub fn find(mounts: &str) -> Result<V2, String> {
        let root = root_in(mounts).ok_or("no cgroup v2 hierarchy is mounted")?;
        let have = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        let has = |c: &str| have.split_whitespace().any(|h| h == c);
        let missing: Vec<&str> = ["cpu", "memory", "pids"]
            .into_iter()
            .filter(|c| !has(c))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "the cgroup v2 hierarchy at {} has no {} controller",
                root.display(),
                missing.join(", ")
            ));
        }
        Ok(V2 {
            parent: root.join("wrenn.slice"),
            controllers: ["cpu", "memory", "pids", "io"]
                .into_iter()
                .filter(|c| has(c))
                .map(String::from)
                .collect(),
        })
    }

    /// Makes `wrenn.slice` and enables the controllers for it and its groups.
    pub fn prepare(&self) -> Result<(), String> {
        let enable = self
            .controllers
            .iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(" ");
        std::fs::create_dir_all(&self.parent)
            .map_err(|e| format!("{}: {e}", self.parent.display()))?;
        let root = self.parent.parent().unwrap_or(Path::new("/"));
        for dir in [root, &self.parent] {
            std::fs::write(dir.join("cgroup.subtree_control"), &enable)
                .map_err(|e| format!("enable controllers in {}: {e}", dir.display()))?;
        }
        Ok(())
    }

    /// Makes (or reuses) the group `name` with `limits` set; returns its `cgroup.procs`, open
    /// for the child to write itself into.
    pub fn create(&self, name: &str, limits: &Limits) -> std::io::Result<std::fs::File> {
        let dir = self.parent.join(name);
        super::make_dir(&dir)?;
        let set = |file: &str, value: String| super::set(&dir, file, &value);
        set("cpu.max", limits.cpu_max())?;
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_is_found() {
        let mounts = "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n";
        assert_eq!(root_in(mounts), Some("/sys/fs/cgroup/unified".into()));
        assert_eq!(root_in("proc /proc proc rw 0 0\n"), None);
    }

    #[test]
    fn a_hierarchy_without_controllers_is_refused_and_one_with_them_is_used() {
        let root = tempfile::tempdir().unwrap();
        let mounts = format!("cgroup2 {} cgroup2 rw 0 0\n", root.path().display());
        std::fs::write(root.path().join("cgroup.controllers"), "\n").unwrap();
        let err = V2::find(&mounts).unwrap_err();
        assert!(err.contains("no cpu, memory, pids controller"), "{err}");

        std::fs::write(
            root.path().join("cgroup.controllers"),
            "cpuset cpu memory pids\n",
        )
        .unwrap();
        let v2 = V2::find(&mounts).unwrap();
        assert_eq!(v2.parent, root.path().join("wrenn.slice"));
        assert_eq!(v2.controllers, ["cpu", "memory", "pids"]);

        // The group's files as the kernel makes them (a temp dir makes none).
        let dir = v2.parent.join("vm-a");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("memory.swap.max"), "max").unwrap();
        std::fs::write(dir.join("cgroup.procs"), "").unwrap();
        v2.create("vm-a", &Limits::for_vm(2, 256, 256, 1.0))
            .unwrap();
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(read("cpu.max"), "200000 100000");
        assert_eq!(read("memory.max"), (512u64 << 20).to_string());
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("pids.max"), (super::super::PIDS_BASE + 2).to_string());
        assert!(!dir.join("io.weight").exists());
    }
}
