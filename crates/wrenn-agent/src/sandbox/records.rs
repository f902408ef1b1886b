//! This host's on-disk records of its sandboxes (`sandbox.json`, [`SandboxOnDisk`]) and
//! snapshot images (`meta.json`, [`ImageMeta`]), written atomically (temp file, fsync, rename),
//! so a crash leaves either the old or the new record, never half of one. It owns the records'
//! format, including reading the records earlier agents wrote, and the sandbox's [`RamMode`];
//! it must not start VMs or touch slots.
//!
//! Not to be confused with the control plane's `store` and its `SandboxRecord` (a database row
//! for a sandbox on any host): a [`SandboxOnDisk`] is the file from which this agent finds one
//! of its own sandboxes again after a restart — its VM's files, slot and RAM mode.
//!
//! A *snapshot image* is a directory holding everything a VM needs to continue: `mem` (the
//! RAM file), `state` (device state without RAM), the disk layers (hard links, bottom first,
//! each qcow2 layer's backing file named relatively) and `meta.json`. Warm snapshots of base
//! templates and user snapshot templates have the same shape.

use crate::vmm::RamMapping;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;
use wrenn_types::agent::SandboxStatus;

/// A sandbox's RAM file of its own, in its directory (mapped `share=on`).
pub const OWN_RAM_FILE: &str = "mem";
/// A clone's hard link to its template's RAM file, in its directory (mapped copy-on-write).
pub const TEMPLATE_RAM_FILE: &str = "tmem";

/// Where a sandbox's guest RAM is. It decides how the sandbox's VM starts and what a pause
/// saves (see "a clone's RAM" in `docs/ARCHITECTURE.md`). Where the data directory's
/// filesystem can reflink, a create gives [`RamMode::OwnFile`] (a reflink of the template's RAM
/// file) and it stays that. Elsewhere a create gives [`RamMode::TemplateFile`], the first pause
/// turns that into [`RamMode::InState`], the next resume into [`RamMode::OwnFile`], which it
/// stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RamMode {
    /// The sandbox's own RAM file ([`OWN_RAM_FILE`]) mapped `share=on`: the file is the RAM,
    /// so a pause saves device state only and a resume maps the file again.
    OwnFile,
    /// The template's RAM file ([`TEMPLATE_RAM_FILE`]) mapped `share=off`, copy-on-write:
    /// clones share the template's pages. A clone runs like this until its first pause.
    TemplateFile,
    /// Inside the saved `state` stream, with the device state: a clone paused for the first
    /// time. Only a paused sandbox is in this mode.
    InState,
}

/// How to start a VM from a sandbox's files: see [`RamMode::start`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamStart {
    /// The RAM file QEMU maps, in the sandbox's directory.
    pub file: &'static str,
    /// How QEMU maps it.
    pub mapping: RamMapping,
    /// How the VM that saved the `state` being loaded mapped its RAM (whether the state
    /// carries the RAM).
    pub state_saved_with: RamMapping,
    /// The mode the sandbox is in once its VM runs.
    pub running: RamMode,
}

impl RamMode {
    /// How a VM starts from a sandbox's files in this mode.
    pub fn start(self) -> RamStart {
        match self {
            RamMode::OwnFile => RamStart {
                file: OWN_RAM_FILE,
                mapping: RamMapping::Shared,
                state_saved_with: RamMapping::Shared,
                running: RamMode::OwnFile,
            },
            // The template's state was saved from a VM whose RAM was its own file.
            RamMode::TemplateFile => RamStart {
                file: TEMPLATE_RAM_FILE,
                mapping: RamMapping::CopyOnWrite,
                state_saved_with: RamMapping::Shared,
                running: RamMode::TemplateFile,
            },
            // The state carries the RAM: it is loaded into a new RAM file of the sandbox's own,
            // mapped share=on, so later pauses save device state only.
            RamMode::InState => RamStart {
                file: OWN_RAM_FILE,
                mapping: RamMapping::Shared,
                state_saved_with: RamMapping::CopyOnWrite,
                running: RamMode::OwnFile,
            },
        }
    }

    /// The mode a pause (a save of the running VM's state) leaves the sandbox in.
    pub fn after_pause(self) -> RamMode {
        match self {
            // The file is the RAM: the state holds device state only.
            RamMode::OwnFile => RamMode::OwnFile,
            // A copy-on-write mapping has no file of its own to keep: a clone's first pause
            // carries its RAM in the state.
            RamMode::TemplateFile => RamMode::InState,
            // Not a running mode: nothing was mapped to save.
            RamMode::InState => RamMode::InState,
        }
    }
}

/// The operation under way on a sandbox, recorded in `sandbox.json` before its first step
/// that cannot be taken back and cleared with its result, so a restarted agent knows what to
/// finish or undo (`recover.rs`). Internal to the agent: the wire status stays the nearest of
/// the five (`pending` while creating, the status the operation started from otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Files and VM being made; a crash removes what was made.
    Creating,
    /// Device state being saved (to `state.next`, see [`NEXT_STATE_FILE`]) and QEMU ended.
    Pausing,
    /// A VM being started from the saved state; with status `running` the guest has run again
    /// (its RAM file and disk changed), so going back to the saved state is no longer possible.
    Resuming,
    /// A paused sandbox being turned into a template.
    Snapshotting,
    /// VM, slot and files being removed.
    Destroying,
}

/// Where a pause saves device state; renamed to `state` once the sandbox is recorded paused.
/// It only ever appears complete (the VM layer writes a `.partial` file and renames it).
pub const NEXT_STATE_FILE: &str = "state.next";

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
    /// Where the guest RAM is (stored as `ram` beside the fields older agents read, see
    /// `stored_ram`).
    #[serde(flatten, with = "stored_ram")]
    pub ram: RamMode,
    /// Disk layers, bottom first; the last one is the sandbox's writable overlay.
    pub layers: Vec<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    /// The operation under way, if any (absent in records of earlier agents and at rest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<Op>,
    /// The sandbox's own egress policy, as its create request gave it (absent: the default);
    /// applied again at every start (resume, restart), names resolved anew.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<wrenn_types::network::SandboxNetwork>,
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

/// The RAM mode in `sandbox.json`: the field `ram`, and the three fields agents before it
/// wrote and read (`mem_file`, `mem_share`, `ram_in_state`). Both are written, so an agent
/// rolled back to an earlier version still reads the record (it removes a sandbox directory
/// whose record it cannot read); a record without `ram` is one an earlier agent wrote and is
/// read from the three fields. The three can be dropped once no earlier agent may read
/// these records.
mod stored_ram {
    use super::{RamMode, OWN_RAM_FILE, TEMPLATE_RAM_FILE};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Stored {
        #[serde(default)]
        ram: Option<RamMode>,
        mem_file: Option<String>,
        mem_share: Option<bool>,
        ram_in_state: Option<bool>,
    }

    pub fn serialize<S: Serializer>(ram: &RamMode, s: S) -> Result<S::Ok, S::Error> {
        let (mem_file, mem_share, ram_in_state) = match ram {
            RamMode::OwnFile => (OWN_RAM_FILE, true, false),
            RamMode::TemplateFile => (TEMPLATE_RAM_FILE, false, false),
            RamMode::InState => (TEMPLATE_RAM_FILE, false, true),
        };
        Stored {
            ram: Some(*ram),
            mem_file: Some(mem_file.into()),
            mem_share: Some(mem_share),
            ram_in_state: Some(ram_in_state),
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<RamMode, D::Error> {
        let stored = Stored::deserialize(d)?;
        if let Some(ram) = stored.ram {
            return Ok(ram);
        }
        // An earlier agent's record: it wrote these three fields, always together.
        match (stored.mem_file, stored.mem_share, stored.ram_in_state) {
            (Some(_), Some(_), Some(true)) => Ok(RamMode::InState),
            (Some(_), Some(true), Some(false)) => Ok(RamMode::OwnFile),
            (Some(_), Some(false), Some(false)) => Ok(RamMode::TemplateFile),
            _ => Err(serde::de::Error::custom(
                "sandbox record without ram (or mem_file, mem_share and ram_in_state)",
            )),
        }
    }
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

    /// A record as the agent wrote it before [`RamMode`]: a clone paused once.
    const EARLIER_AGENT_RECORD: &str = r#"{
  "id": "sb-3f2a9c",
  "template": "minimal",
  "vcpus": 1,
  "memory_mb": 256,
  "status": "paused",
  "slot": null,
  "host_ip": "",
  "mem_file": "tmem",
  "mem_share": false,
  "ram_in_state": true,
  "layers": [
    "base-0123456789ab.ext4",
    "warm-0123456789ab.qcow2",
    "disk-0123456789ab.qcow2"
  ],
  "created_at": "2026-11-30T10:00:00.000Z",
  "started_at": "2026-11-30T10:00:01.000Z",
  "error": null
}"#;

    fn earlier_record(mem_file: &str, mem_share: bool, ram_in_state: bool) -> String {
        EARLIER_AGENT_RECORD
            .replace(
                r#""mem_file": "tmem""#,
                &format!(r#""mem_file": "{mem_file}""#),
            )
            .replace(
                r#""mem_share": false"#,
                &format!(r#""mem_share": {mem_share}"#),
            )
            .replace(
                r#""ram_in_state": true"#,
                &format!(r#""ram_in_state": {ram_in_state}"#),
            )
    }

    #[test]
    fn records_of_earlier_agents_load() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sandbox.json");
        std::fs::write(&p, EARLIER_AGENT_RECORD).unwrap();
        let rec: SandboxOnDisk = read_json(&p).unwrap();
        assert_eq!(rec.ram, RamMode::InState);
        assert_eq!(rec.status, SandboxStatus::Paused);
        assert_eq!(rec.layers.len(), 3);
        assert_eq!(rec.op, None);
        assert_eq!(rec.started_at.as_deref(), Some("2026-11-30T10:00:01.000Z"));
        // The other two combinations earlier agents wrote.
        for (json, want) in [
            (earlier_record("mem", true, false), RamMode::OwnFile),
            (earlier_record("tmem", false, false), RamMode::TemplateFile),
        ] {
            let rec: SandboxOnDisk = serde_json::from_str(&json).unwrap();
            assert_eq!(rec.ram, want, "{json}");
        }
        // Without any RAM fields the record is not one the agent ever wrote.
        let json = EARLIER_AGENT_RECORD
            .replace(r#""mem_share": false,"#, "")
            .replace(r#""ram_in_state": true,"#, "")
            .replace(r#""mem_file": "tmem","#, "");
        assert!(serde_json::from_str::<SandboxOnDisk>(&json).is_err());
    }

    #[test]
    fn records_keep_their_ram_mode_and_stay_readable_by_earlier_agents() {
        /// The RAM fields as earlier agents read them.
        #[derive(Deserialize)]
        struct EarlierRam {
            mem_file: String,
            mem_share: bool,
            ram_in_state: bool,
        }
        let base: SandboxOnDisk = serde_json::from_str(EARLIER_AGENT_RECORD).unwrap();
        for (ram, earlier) in [
            (RamMode::OwnFile, ("mem", true, false)),
            (RamMode::TemplateFile, ("tmem", false, false)),
            (RamMode::InState, ("tmem", false, true)),
        ] {
            let json = serde_json::to_string(&SandboxOnDisk {
                ram,
                ..base.clone()
            })
            .unwrap();
            let back: SandboxOnDisk = serde_json::from_str(&json).unwrap();
            assert_eq!(back.ram, ram);
            assert_eq!(back.id, base.id);
            let e: EarlierRam = serde_json::from_str(&json).unwrap();
            assert_eq!((e.mem_file.as_str(), e.mem_share, e.ram_in_state), earlier);
        }
    }

    #[test]
    fn the_network_policy_is_kept_and_absent_without_one() {
        let base: SandboxOnDisk = serde_json::from_str(EARLIER_AGENT_RECORD).unwrap();
        assert_eq!(base.network, None);
        assert!(serde_json::to_value(&base)
            .unwrap()
            .get("network")
            .is_none());
        let network = wrenn_types::network::SandboxNetwork {
            allow_internet_access: Some(false),
            allow_out: vec!["db.example.com".into()],
            deny_out: vec!["203.0.113.0/24".into()],
        };
        let with = SandboxOnDisk {
            network: Some(network.clone()),
            ..base
        };
        let back: SandboxOnDisk =
            serde_json::from_str(&serde_json::to_string(&with).unwrap()).unwrap();
        assert_eq!(back.network, Some(network));
    }

    #[test]
    fn the_operation_under_way_is_kept_and_absent_at_rest() {
        let base: SandboxOnDisk = serde_json::from_str(EARLIER_AGENT_RECORD).unwrap();
        let at_rest = serde_json::to_value(&base).unwrap();
        assert!(at_rest.get("op").is_none(), "{at_rest}");
        let pausing = SandboxOnDisk {
            op: Some(Op::Pausing),
            ..base
        };
        let json = serde_json::to_value(&pausing).unwrap();
        assert_eq!(json["op"], "pausing");
        let back: SandboxOnDisk = serde_json::from_value(json).unwrap();
        assert_eq!(back.op, Some(Op::Pausing));
    }

    #[test]
    fn a_clones_first_pause_carries_its_ram_and_its_resume_owns_it() {
        let created = RamMode::TemplateFile;
        assert_eq!(created.start().mapping, RamMapping::CopyOnWrite);
        let paused = created.start().running.after_pause();
        assert_eq!(paused, RamMode::InState);
        let resumed = paused.start();
        assert_eq!(resumed.state_saved_with, RamMapping::CopyOnWrite);
        assert_eq!(
            (resumed.file, resumed.mapping),
            (OWN_RAM_FILE, RamMapping::Shared)
        );
        assert_eq!(resumed.running, RamMode::OwnFile);
        // From then on a pause saves device state only and the RAM stays in the file.
        assert_eq!(resumed.running.after_pause(), RamMode::OwnFile);
        assert_eq!(
            RamMode::OwnFile.start().state_saved_with,
            RamMapping::Shared
        );
    }

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
