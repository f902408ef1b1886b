//! Restart recovery: when the agent starts, it finds the sandboxes a previous run left in
//! `sandboxes/` — re-attaching to the QEMUs still running (their slots kept out of the pool's
//! clean-up), keeping paused ones, putting lost ones in `error` and removing half-made ones —
//! and on a clean shutdown it lets go of its VMs without stopping them. It must not start or
//! restore VMs: a sandbox found here runs on in the QEMU it already had, or not at all.

use super::records::{self, SandboxOnDisk};
use super::templates::remove_temp_dirs;
use super::{
    blocking, envd_for, io, mark_error, spec_for, Entry, Inner, Manager, ManagerConfig,
    SandboxError,
};
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
        for d in ["sandboxes", "templates", "warm"] {
            std::fs::create_dir_all(cfg.data_dir.join(d)).map_err(io("create data dirs"))?;
        }
        remove_temp_dirs(&cfg.data_dir.join("templates"));
        remove_temp_dirs(&cfg.data_dir.join("warm"));

        // Re-attach first: the slots of live VMs must survive the pool's clean-up.
        let mut found: Vec<(SandboxOnDisk, Option<Vm>)> = Vec::new();
        let sb_root = cfg.data_dir.join("sandboxes");
        for e in std::fs::read_dir(&sb_root)
            .map_err(io("read sandboxes"))?
            .flatten()
        {
            let dir = e.path();
            let rec: SandboxOnDisk = match records::read_json(&dir.join("sandbox.json")) {
                Ok(r) => r,
                Err(_) => {
                    // Never got as far as a record: half-made.
                    let _ = std::fs::remove_dir_all(&dir);
                    continue;
                }
            };
            match rec.status {
                SandboxStatus::Running => {
                    let spec = spec_for(&cfg, &dir, &rec, "tap0");
                    match Vm::attach(spec).await {
                        Ok(vm) => found.push((rec, Some(vm))),
                        Err(e) => {
                            kill_left_qemu(&dir).await;
                            let mut rec = rec;
                            mark_error(
                                &dir,
                                &mut rec,
                                format!("lost while the agent was down: {e}"),
                            );
                            found.push((rec, None));
                        }
                    }
                }
                SandboxStatus::Paused | SandboxStatus::Error | SandboxStatus::Stopped => {
                    found.push((rec, None))
                }
                SandboxStatus::Pending => {
                    kill_left_qemu(&dir).await;
                    let _ = std::fs::remove_dir_all(&dir);
                }
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
        let mgr = Arc::new_cyclic(|me| Manager {
            cfg,
            pool,
            sandboxes: Mutex::default(),
            warm_locks: Mutex::default(),
            template_lock: tokio::sync::Mutex::new(()),
            me: me.clone(),
        });
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
                        inner.envd = envd_for(&slot).ok();
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
            mgr.sandboxes
                .lock()
                .expect("sandboxes lock")
                .insert(id, Entry::new(inner));
        }
        Ok(mgr)
    }

    /// Stops every VM's supervision without stopping the VMs (they keep running for the next
    /// agent). Used on a clean agent shutdown.
    pub async fn detach_all(&self) {
        let entries: Vec<_> = self
            .sandboxes
            .lock()
            .expect("sandboxes lock")
            .drain()
            .map(|(_, e)| e)
            .collect();
        for e in entries {
            let mut inner = e.lock().await;
            // Forget the VM handle so its exit watcher finds nothing to do.
            inner.vm = None;
        }
    }
}

/// Kills the QEMU a previous agent left for the sandbox in `dir`, if its pid file names one
/// that is still that sandbox's QEMU (a reused pid is left alone).
async fn kill_left_qemu(dir: &Path) {
    let Ok(pid) = std::fs::read_to_string(dir.join("qemu.pid")) else {
        return;
    };
    if let Ok(pid) = pid.trim().parse() {
        vmm::kill_stale(pid, &dir.join("qmp.sock")).await;
    }
}
