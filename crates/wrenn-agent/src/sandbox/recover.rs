//! Restart recovery: when the agent starts, it finds the sandboxes a previous run left in
//! `sandboxes/` — re-attaching to the QEMUs still running (their slots kept out of the pool's
//! clean-up), keeping paused ones, putting lost ones in `error` with their files kept,
//! removing half-made ones, and finishing or undoing each operation cut short by what its
//! record's intent says ([`recover_one`]) — then kills every QEMU of its data dir it did not
//! re-attach; and on a clean shutdown it lets go of its VMs without stopping them. It must not start or
//! restore VMs: a sandbox found here runs on in the QEMU it already had, or not at all.

use super::lifecycle::kill_left_qemu;
use super::pause::{put_next_state_in_place, sync_paused_files};
use super::records::{self, Op, RamMode, SandboxOnDisk, NEXT_STATE_FILE, OWN_RAM_FILE};
use super::templates::{remove_temp_dirs, template_from};
use super::{
    blocking, envd_for, io, mark_error, mark_error_keep_files, spec_for, Entry, Inner, Manager,
    ManagerConfig, SandboxError,
};
use crate::failpoints::Failpoints;
use crate::net::SlotPool;
use crate::vmm::{self, Vm};
use std::path::Path;
use std::sync::{Arc, Mutex};
use wrenn_types::agent::SandboxStatus;

impl Manager {
    /// Starts the manager: finds sandboxes left by a previous run (re-attaching to their
    /// running QEMUs, keeping paused ones, cleaning half-made ones) and sets up the slot pool.
    pub async fn start(
        cfg: ManagerConfig,
        net: crate::net::NetConfig,
    ) -> Result<Arc<Manager>, SandboxError> {
        let failpoints = Failpoints::parse(&std::env::var("WRENN_FAILPOINTS").unwrap_or_default())
            .map_err(|e| SandboxError::BadRequest(e.to_string()))?;
        for d in ["sandboxes", "templates", "warm", "pool"] {
            std::fs::create_dir_all(cfg.data_dir.join(d)).map_err(io("create data dirs"))?;
        }
        remove_temp_dirs(&cfg.data_dir.join("templates"));
        remove_temp_dirs(&cfg.data_dir.join("warm"));

        // Re-attach first: the slots of live VMs must survive the pool's clean-up.
        let mut found: Vec<(SandboxOnDisk, Option<Vm>)> = Vec::new();
        let sb_root = cfg.data_dir.join("sandboxes");
        remove_temp_dirs(&sb_root);
        for e in std::fs::read_dir(&sb_root)
            .map_err(io("read sandboxes"))?
            .flatten()
        {
            let dir = e.path();
            let rec: SandboxOnDisk = match records::read_json(&dir.join("sandbox.json")) {
                Ok(r) => r,
                Err(_) => {
                    // Never got as far as a record: half-made.
                    kill_left_qemu(&dir).await;
                    let _ = std::fs::remove_dir_all(&dir);
                    continue;
                }
            };
            if let Some(found_one) = recover_one(&cfg, &dir, rec).await {
                found.push(found_one);
            }
        }
        // Pooled clones are not kept across a restart: their QEMUs killed, slots left to the
        // pool's clean-up below, directories removed.
        Manager::clean_pool_dir(&cfg.data_dir).await;
        // Every QEMU of this data dir not re-attached is one nobody owns any more (a VM whose
        // sandbox was undone above, a warm boot or template build cut short).
        let attached: Vec<u32> = found
            .iter()
            .filter_map(|(_, vm)| vm.as_ref().map(|v| v.pid))
            .collect();
        for pid in qemus_naming(&owned_prefixes(&cfg.data_dir)) {
            if !attached.contains(&pid) {
                tracing::warn!(pid, "killing a QEMU of this data dir that no sandbox owns");
                kill_now(pid).await;
            }
        }
        let in_use: Vec<u32> = found
            .iter()
            .filter(|(_, vm)| vm.is_some())
            .filter_map(|(r, _)| r.slot)
            .collect();
        let pool = {
            let net = net.clone();
            blocking("start slot pool", move || SlotPool::start(net, &in_use)).await?
        };
        let pools = super::pool::Pools::new(cfg.pool);
        let mgr = Arc::new_cyclic(|me| Manager {
            cfg,
            pool,
            sandboxes: Mutex::default(),
            warm_locks: Mutex::default(),
            template_lock: tokio::sync::Mutex::new(()),
            failpoints,
            samples: Default::default(),
            admissions: Default::default(),
            pools,
            me: me.clone(),
        });
        mgr.start_sampler();
        mgr.start_pool_refiller();
        mgr.start_reresolver();
        for (rec, vm) in found {
            let id = rec.id.clone();
            let mut inner = Inner {
                rec,
                vm: None,
                slot: None,
                envd: None,
            };
            if let Some(vm) = vm {
                let idx = inner.rec.slot.unwrap_or_default();
                match mgr.pool.adopt(idx) {
                    Ok(slot) => {
                        mgr.restore_sandbox_egress(&id, idx, inner.rec.network.as_ref())
                            .await;
                        inner.envd = envd_for(&slot).ok();
                        if let Some(envd) = inner.envd.clone() {
                            set_clock_when_ready(id.clone(), envd);
                        }
                        mgr.watch(&id, &vm);
                        inner.vm = Some(vm);
                        inner.slot = Some(slot);
                    }
                    Err(e) => {
                        vm.kill().await;
                        let dir = mgr.sandbox_dir(&id);
                        mark_error(&dir, &mut inner.rec, format!("network slot lost: {e}"));
                    }
                }
            }
            mgr.map().insert(id, Entry::new(inner));
        }
        Ok(mgr)
    }

    /// Stops every VM's supervision without stopping the VMs (they keep running for the next
    /// agent). Used on a clean agent shutdown.
    pub async fn detach_all(&self) {
        self.pool_shutdown().await;
        let entries: Vec<_> = self.map().drain().map(|(_, e)| e).collect();
        for e in entries {
            let mut inner = e.lock().await;
            // Forget the VM handle so its exit watcher finds nothing to do.
            inner.vm = None;
        }
    }
}

/// Sets a re-attached guest's wall clock once its envd answers, in the background. A resume
/// cut short after its guest ran again never set it (the guest's clock stood still while it
/// was paused); for a guest that ran on all along it is a no-op step.
fn set_clock_when_ready(id: String, envd: crate::envd_client::EnvdClient) {
    tokio::spawn(async move {
        let set = async {
            envd.wait_ready(super::lifecycle::RESTORE_READY_TIMEOUT)
                .await?;
            envd.set_clock(std::time::SystemTime::now()).await
        };
        if let Err(e) = set.await {
            tracing::warn!(sandbox = %id, "setting the clock of a re-attached guest: {e}");
        }
    });
}

/// What a restart makes of one sandbox's record: the sandbox kept (with its re-attached VM),
/// or `None` when it is removed. An operation cut short is finished or undone:
///
/// | intent | found | done |
/// |---|---|---|
/// | `creating` (or `pending`) | anything | QEMU killed, directory removed |
/// | `destroying` | anything | QEMU killed, directory removed |
/// | `pausing` | `state.next` (the save finished) | QEMU killed (its guest was stopped), files synced, `paused` |
/// | `pausing` | no `state.next`, QEMU there | save given up, guest continued, `running` |
/// | `pausing` | no `state.next`, no QEMU | `error`, files kept |
/// | `resuming`, status `paused` | anything | QEMU killed, a half-made RAM file removed, `paused` |
/// | `resuming`, status `running` | QEMU there | `running` |
/// | `resuming`, status `running` | no QEMU | `error`, files kept |
/// | `snapshotting` | its template published | directory removed (the snapshot finished) |
/// | `snapshotting` | no template | `paused` |
async fn recover_one(
    cfg: &ManagerConfig,
    dir: &Path,
    mut rec: SandboxOnDisk,
) -> Option<(SandboxOnDisk, Option<Vm>)> {
    let _ = std::fs::remove_file(dir.join(NEXT_STATE_FILE).with_extension("partial"));
    let write = |rec: &SandboxOnDisk| {
        if let Err(e) = records::write_json(&dir.join("sandbox.json"), rec) {
            tracing::warn!(sandbox = %rec.id, "recording what a restart found: {e}");
        }
    };
    match (rec.op, rec.status) {
        (Some(Op::Creating | Op::Destroying), _) | (_, SandboxStatus::Pending) => {
            kill_left_qemu(dir).await;
            let _ = std::fs::remove_dir_all(dir);
            None
        }
        (Some(Op::Pausing), _) if dir.join(NEXT_STATE_FILE).exists() => {
            // The save finished: the guest was stopped; finish the pause.
            kill_left_qemu(dir).await;
            rec.slot = None;
            rec.host_ip.clear();
            rec.ram = rec.ram.after_pause();
            if let Err(e) = sync_paused_files(dir, &rec).await {
                tracing::warn!(sandbox = %rec.id, "syncing a paused sandbox's files: {e}");
            }
            rec.status = SandboxStatus::Paused;
            rec.op = None;
            write(&rec);
            let _ = put_next_state_in_place(dir);
            Some((rec, None))
        }
        (Some(Op::Pausing), _) => match Vm::attach(spec_for(cfg, dir, &rec, "tap0")).await {
            Ok(vm) => {
                // The save never finished: give it up, the guest runs on.
                let _ = vm
                    .qmp
                    .execute("migrate_cancel", serde_json::Value::Null)
                    .await;
                match vm.cont().await {
                    Ok(()) => {
                        rec.op = None;
                        write(&rec);
                        Some((rec, Some(vm)))
                    }
                    Err(e) => {
                        vm.kill().await;
                        mark_error_keep_files(dir, &mut rec, format!("lost during a pause: {e}"));
                        Some((rec, None))
                    }
                }
            }
            Err(e) => {
                kill_left_qemu(dir).await;
                mark_error_keep_files(dir, &mut rec, format!("lost during a pause: {e}"));
                Some((rec, None))
            }
        },
        (Some(Op::Resuming), SandboxStatus::Paused) => {
            // The guest never ran again: the saved state is still the sandbox.
            kill_left_qemu(dir).await;
            if rec.ram == RamMode::InState {
                let _ = std::fs::remove_file(dir.join(OWN_RAM_FILE));
            }
            rec.slot = None;
            rec.host_ip.clear();
            rec.op = None;
            write(&rec);
            Some((rec, None))
        }
        (Some(Op::Snapshotting), _) => {
            kill_left_qemu(dir).await;
            let templates = dir
                .parent()
                .and_then(Path::parent)
                .map(|d| d.join("templates"));
            if templates.is_some_and(|t| template_from(&t, &rec.id)) {
                let _ = std::fs::remove_dir_all(dir);
                return None;
            }
            let _ = put_next_state_in_place(dir);
            rec.op = None;
            write(&rec);
            Some((rec, None))
        }
        (op, SandboxStatus::Running) => match Vm::attach(spec_for(cfg, dir, &rec, "tap0")).await {
            Ok(vm) => {
                if op.is_some() {
                    // A resume whose guest runs again: it is running.
                    rec.op = None;
                    rec.started_at = Some(crate::sandbox::now_rfc3339());
                    write(&rec);
                }
                Some((rec, Some(vm)))
            }
            Err(e) => {
                kill_left_qemu(dir).await;
                mark_error_keep_files(dir, &mut rec, format!("lost while the agent was down: {e}"));
                Some((rec, None))
            }
        },
        (_, SandboxStatus::Paused) => {
            let _ = put_next_state_in_place(dir);
            if rec.op.is_some() {
                rec.op = None;
                write(&rec);
            }
            Some((rec, None))
        }
        (_, SandboxStatus::Error | SandboxStatus::Stopped) => Some((rec, None)),
    }
}

/// Where the QEMUs of a data dir name their files: the sandboxes', warm snapshots' and
/// templates' directories (never the images, which other data dirs link too).
fn owned_prefixes(data_dir: &Path) -> Vec<String> {
    ["sandboxes", "warm", "templates", "pool"]
        .iter()
        .map(|d| format!("{}/", data_dir.join(d).display()))
        .collect()
}

/// The pids of the QEMU processes whose command line names a path starting with one of
/// `prefixes`.
fn qemus_naming(prefixes: &[String]) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let mut args = cmdline.split(|b| *b == 0).map(String::from_utf8_lossy);
            let is_qemu = args.next().is_some_and(|a0| {
                Path::new(a0.as_ref())
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("qemu-system"))
            });
            is_qemu && args.any(|a| prefixes.iter().any(|p| a.contains(p.as_str())))
        })
        .filter(|pid| vmm::pid_alive(*pid))
        .collect()
}

/// Kills a process at once and waits (bounded) until it is gone.
async fn kill_now(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while vmm::pid_alive(pid) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::Images;
    use crate::sandbox::records::TEMPLATE_RAM_FILE;
    use std::path::PathBuf;

    fn cfg(data_dir: &Path) -> ManagerConfig {
        ManagerConfig {
            data_dir: data_dir.to_path_buf(),
            qemu_bin: "qemu-system-x86_64".into(),
            accel: crate::vmm::Accel::Tcg,
            admission: Default::default(),
            pool: crate::sandbox::PoolConfig::OFF,
            images: Images {
                kernel: data_dir.join("vmlinux"),
                initrd: data_dir.join("initrd"),
                templates: Vec::new(),
            },
        }
    }

    /// A sandbox directory with a record and the files of a clone paused once.
    fn sandbox(data_dir: &Path, op: Option<Op>, status: SandboxStatus) -> (PathBuf, SandboxOnDisk) {
        let dir = data_dir.join("sandboxes").join("sb-1");
        std::fs::create_dir_all(&dir).unwrap();
        let rec = SandboxOnDisk {
            id: "sb-1".into(),
            template: "minimal".into(),
            vcpus: 1,
            memory_mb: 256,
            status,
            slot: Some(3),
            host_ip: "10.11.0.7".into(),
            ram: RamMode::TemplateFile,
            layers: vec!["disk-1.qcow2".into()],
            created_at: "2026-12-01T10:00:00.000Z".into(),
            started_at: None,
            error: None,
            op,
            network: None,
        };
        for f in ["state", TEMPLATE_RAM_FILE, "disk-1.qcow2"] {
            std::fs::write(dir.join(f), f).unwrap();
        }
        records::write_json(&dir.join("sandbox.json"), &rec).unwrap();
        (dir, rec)
    }

    fn stored(dir: &Path) -> SandboxOnDisk {
        records::read_json(&dir.join("sandbox.json")).unwrap()
    }

    #[tokio::test]
    async fn a_pause_cut_short_after_its_save_is_finished_and_keeps_the_new_state() {
        let d = tempfile::tempdir().unwrap();
        let (dir, rec) = sandbox(d.path(), Some(Op::Pausing), SandboxStatus::Running);
        std::fs::write(dir.join(NEXT_STATE_FILE), "new").unwrap();
        let (rec, vm) = recover_one(&cfg(d.path()), &dir, rec).await.unwrap();
        assert!(vm.is_none());
        assert_eq!(
            (rec.status, rec.op, rec.ram),
            (SandboxStatus::Paused, None, RamMode::InState)
        );
        assert_eq!(rec.slot, None);
        assert_eq!(std::fs::read_to_string(dir.join("state")).unwrap(), "new");
        assert!(!dir.join(NEXT_STATE_FILE).exists());
        assert_eq!(stored(&dir).status, SandboxStatus::Paused);
        // Recorded paused but killed before the state was put in place: the restart does it.
        std::fs::write(dir.join(NEXT_STATE_FILE), "newer").unwrap();
        let (rec, _) = recover_one(&cfg(d.path()), &dir, stored(&dir))
            .await
            .unwrap();
        assert_eq!(rec.status, SandboxStatus::Paused);
        assert_eq!(std::fs::read_to_string(dir.join("state")).unwrap(), "newer");
    }

    #[tokio::test]
    async fn a_pause_lost_before_its_save_finished_is_an_error_with_files_kept() {
        let d = tempfile::tempdir().unwrap();
        let (dir, rec) = sandbox(d.path(), Some(Op::Pausing), SandboxStatus::Running);
        let (rec, vm) = recover_one(&cfg(d.path()), &dir, rec).await.unwrap();
        assert!(vm.is_none());
        assert_eq!((rec.status, rec.op), (SandboxStatus::Error, None));
        for f in ["state", TEMPLATE_RAM_FILE, "disk-1.qcow2"] {
            assert!(dir.join(f).exists(), "{f} kept");
        }
    }

    #[tokio::test]
    async fn a_resume_before_the_guest_ran_is_undone_and_after_it_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let (dir, mut rec) = sandbox(d.path(), Some(Op::Resuming), SandboxStatus::Paused);
        rec.ram = RamMode::InState;
        std::fs::write(dir.join(OWN_RAM_FILE), "half-loaded").unwrap();
        let (rec, _) = recover_one(&cfg(d.path()), &dir, rec).await.unwrap();
        assert_eq!((rec.status, rec.op), (SandboxStatus::Paused, None));
        assert_eq!(rec.ram, RamMode::InState);
        assert!(!dir.join(OWN_RAM_FILE).exists());
        assert!(dir.join("state").exists());

        // The guest ran again (status running) and its VM is gone: error, files kept.
        let mut rec = stored(&dir);
        rec.status = SandboxStatus::Running;
        rec.ram = RamMode::OwnFile;
        rec.op = Some(Op::Resuming);
        std::fs::write(dir.join(OWN_RAM_FILE), "ran").unwrap();
        let (rec, _) = recover_one(&cfg(d.path()), &dir, rec).await.unwrap();
        assert_eq!(rec.status, SandboxStatus::Error);
        assert!(dir.join(OWN_RAM_FILE).exists() && dir.join("state").exists());
        assert_eq!(stored(&dir).status, SandboxStatus::Error);
    }

    #[tokio::test]
    async fn creates_and_destroys_cut_short_are_removed() {
        for (op, status) in [
            (Some(Op::Creating), SandboxStatus::Pending),
            (Some(Op::Destroying), SandboxStatus::Paused),
            (None, SandboxStatus::Pending),
        ] {
            let d = tempfile::tempdir().unwrap();
            let (dir, rec) = sandbox(d.path(), op, status);
            assert!(recover_one(&cfg(d.path()), &dir, rec).await.is_none());
            assert!(!dir.exists(), "{op:?} {status:?}");
        }
    }

    #[tokio::test]
    async fn a_snapshot_cut_short_is_finished_once_published_else_the_sandbox_stays_paused() {
        let d = tempfile::tempdir().unwrap();
        let (dir, rec) = sandbox(d.path(), Some(Op::Snapshotting), SandboxStatus::Paused);
        let (rec, _) = recover_one(&cfg(d.path()), &dir, rec).await.unwrap();
        assert_eq!((rec.status, rec.op), (SandboxStatus::Paused, None));

        let t = d.path().join("templates").join("snap");
        std::fs::create_dir_all(&t).unwrap();
        std::fs::write(t.join(super::super::templates::FROM_SANDBOX_FILE), "sb-1").unwrap();
        let mut rec = stored(&dir);
        rec.op = Some(Op::Snapshotting);
        assert!(recover_one(&cfg(d.path()), &dir, rec).await.is_none());
        assert!(!dir.exists());
    }

    #[test]
    fn only_the_data_dirs_own_directories_name_its_qemus() {
        let p = owned_prefixes(Path::new("/var/lib/wrenn"));
        assert!(p.contains(&"/var/lib/wrenn/sandboxes/".to_string()));
        // Another data dir below this one (the tests' scratch dirs) is not this one's.
        let other = "/var/lib/wrenn/e2e/x/sandboxes/sb-1/qmp.sock";
        assert!(!p.iter().any(|p| other.contains(p.as_str())));
        assert!(qemus_naming(&["/nonexistent-wrenn-dir/".into()]).is_empty());
    }
}
