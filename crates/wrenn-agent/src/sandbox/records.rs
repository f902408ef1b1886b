//! This host's on-disk records of its sandboxes (`sandbox.json`, [`SandboxOnDisk`]) and
//! snapshot images (`meta.json`, [`ImageMeta`]), written atomically (temp file, fsync, rename),
//! so a crash leaves either the old or the new record, never half of one. It owns the records'
//! format; it must not start VMs or touch slots.
//!
//! Not to be confused with the control plane's `store` and its `SandboxRecord` (a database row
//! for a sandbox on any host): a [`SandboxOnDisk`] is the file from which this agent finds one
//! of its own sandboxes again after a restart — its VM's files, slot and RAM mode.
//!
//! A *snapshot image* is a directory holding everything a VM needs to continue: `mem` (the
//! RAM file), `state` (device state without RAM), the disk layers (hard links, bottom first,
//! each qcow2 layer's backing file named relatively) and `meta.json`. Warm snapshots of base
//! templates and user snapshot templates have the same shape.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;
use wrenn_types::agent::SandboxStatus;

/// The persistent record of one sandbox on this host (`sandboxes/<id>/sandbox.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxOnDisk {
    pub id: String,
    pub template: String,
    pub vcpus: u32,
    pub memory_mb: u32,
    pub status: SandboxStatus,
    /// Network slot while running.
    pub slot: Option<u32>,
    pub host_ip: String,
    /// RAM file name inside the sandbox directory.
    pub mem_file: String,
    /// Whether the RAM file is the VM's RAM (`true`) or a template mapped copy-on-write.
    pub mem_share: bool,
    /// Whether the saved `state` contains the RAM (a paused copy-on-write clone).
    pub ram_in_state: bool,
    /// Disk layers, bottom first; the last one is the sandbox's writable overlay.
    pub layers: Vec<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
}

/// `meta.json` of a snapshot image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageMeta {
    pub name: String,
    /// `snapshot` for user templates, `warm` for warm snapshots of base templates.
    pub kind: String,
    pub vcpus: u32,
    pub memory_mb: u32,
    pub layers: Vec<String>,
    pub created_at: String,
    /// For warm snapshots: the identity of the inputs it was made from.
    #[serde(default)]
    pub source_key: String,
}

/// Writes `value` as JSON to `path` atomically and durably.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Reads a JSON record.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> std::io::Result<T> {
    let bytes = std::fs::read(path)?;
    serde_json::from_slice(&bytes).map_err(std::io::Error::other)
}

/// Bytes a directory's files take on disk (allocated blocks, so sparse files count what they use).
pub fn dir_allocated_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_leaves_no_temp_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("meta.json");
        let m = ImageMeta {
            name: "t".into(),
            kind: "snapshot".into(),
            vcpus: 1,
            memory_mb: 256,
            layers: vec!["base.ext4".into(), "l1.qcow2".into()],
            created_at: "now".into(),
            source_key: String::new(),
        };
        write_json(&p, &m).unwrap();
        let back: ImageMeta = read_json(&p).unwrap();
        assert_eq!(back.layers, m.layers);
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("meta.json")]);
    }
}
