//! The VM work of the warm pools: making a pooled clone (files, restore at low priority, first
//! envd answer, stop), handing one to a create, removing clones, and clearing `pool/` at start.
//! The sizes and bookkeeping are the parent module's ([`super::Pools`]).

use super::{PoolConfig, PoolCounts};
use super::{Pooled, Shape, POOL_DIR, REFILL_NICE, TICK};
use crate::sandbox::records::{
    self, ImageMeta, RamMode, SandboxOnDisk, OWN_RAM_FILE, TEMPLATE_RAM_FILE,
};
use crate::sandbox::{
    blocking, disk, envd_for, io, pre_exec_in, spec_for, Inner, Manager, SandboxError,
};
use crate::vmm::{self, Vm};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use wrenn_types::agent::SandboxStatus;

impl Manager {
    fn pool_dir(&self) -> PathBuf {
        self.cfg.data_dir.join(POOL_DIR)
    }

    /// The pooled counts of this host.
    pub fn pool_counts(&self) -> PoolCounts {
        self.pools.counts(self.cfg.admission.vm_overhead_mb)
    }

    /// Takes a pooled clone for a create of `shape` from `image_dir` (`None` on a miss), and
    /// removes the clones of an older image found on the way.
    pub(in crate::sandbox) async fn pool_take(
        &self,
        shape: &Shape,
        image_dir: &Path,
        meta: &ImageMeta,
    ) -> Option<Pooled> {
        let (got, stale) = self.pools.take(shape, image_dir, meta);
        for p in stale {
            self.discard(p).await;
        }
        got
    }

    /// Kills a pooled clone and removes its slot and files.
    pub(in crate::sandbox) async fn discard(&self, p: Pooled) {
        p.vm.kill().await;
        if let Err(e) = self.pool.release(p.slot).await {
            tracing::warn!("releasing a pooled clone's network slot: {e}");
        }
        let _ = std::fs::remove_dir_all(&p.dir);
    }

    /// Removes the pooled clones of `template` (deleted or replaced).
    pub(in crate::sandbox) async fn pool_drain(&self, template: &str) {
        for p in self.pools.drain(Some(template)) {
            self.discard(p).await;
        }
    }

    /// Removes every pooled clone, keeping the targets (a create found no room); `false` when
    /// there was none.
    pub(in crate::sandbox) async fn pool_make_room(&self) -> bool {
        let all: Vec<Pooled> = self
            .pools
            .shapes()
            .values_mut()
            .flat_map(|st| std::mem::take(&mut st.ready))
            .collect();
        let any = !all.is_empty();
        for p in all {
            self.discard(p).await;
        }
        any
    }

    /// Changes the pools' sizes while the agent runs (the benchmark compares creates with and
    /// without them); turning them off removes every pooled clone.
    pub async fn set_pool_config(&self, cfg: PoolConfig) {
        *self.pools.cfg.lock().unwrap_or_else(|p| p.into_inner()) = cfg.enabled().then_some(cfg);
        if !cfg.enabled() {
            self.pool_shutdown().await;
        }
    }

    /// Turns the pools off and removes every pooled clone (the agent stops), the one a refill
    /// is making too (waited for).
    pub async fn pool_shutdown(&self) {
        *self.pools.cfg.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let _no_refill = self.pools.refilling.lock().await;
        for p in self.pools.drain(None) {
            self.discard(p).await;
        }
    }

    /// Removes what a previous run left in `pool/`: its QEMUs killed, their cgroups and
    /// directories removed. Run at start, before the slot pool cleans up unused slots.
    pub(in crate::sandbox) async fn clean_pool_dir(data_dir: &Path) {
        let root = data_dir.join(POOL_DIR);
        if let Ok(rd) = std::fs::read_dir(&root) {
            for e in rd.flatten() {
                let dir = e.path();
                crate::sandbox::lifecycle::kill_left_qemu(&dir).await;
                if let Some(cg) = vmm::cgroup::cgroups() {
                    cg.remove(&dir).await;
                }
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        let _ = std::fs::create_dir_all(&root);
    }

    /// Starts the refill task: it wakes on a miss and every few seconds, shrinks idle shapes,
    /// and refills one clone at a time while no create is under way (nothing while the pools
    /// are off).
    pub(in crate::sandbox) fn start_pool_refiller(&self) {
        let me = self.me.clone();
        tokio::spawn(async move {
            loop {
                let Some(m) = me.upgrade() else { return };
                let _ = tokio::time::timeout(TICK, m.pools.wake.notified()).await;
                m.refill_round().await;
            }
        });
    }

    async fn refill_round(&self) {
        for p in self.pools.shrink_idle() {
            self.discard(p).await;
        }
        let overhead = self.cfg.admission.vm_overhead_mb;
        while let Some(shape) = self.pools.next_refill(overhead) {
            // Creates first: a refill starts only while none is under way.
            while self.pools.creates.load(Ordering::Acquire) > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _refilling = self.pools.refilling.lock().await;
            if self.pools.cfg().is_none() {
                return; // turned off (or the agent stops) meanwhile
            }
            match self.make_pooled(&shape).await {
                Ok(p) => {
                    if let Some(over) = self.pools.put(&shape, p) {
                        self.discard(over).await; // drained or shrunk meanwhile
                    }
                }
                Err(e) => {
                    tracing::warn!("warm pool of {} not refilled: {e}", shape.template);
                    self.pools.failed(&shape);
                }
            }
        }
    }

    /// Makes one pooled clone of `shape`: the clone's files as a create makes them, its VM
    /// restored at low CPU priority, continued until envd answers, then stopped.
    async fn make_pooled(&self, shape: &Shape) -> Result<Pooled, SandboxError> {
        let (image_dir, meta) = self
            .snapshot_image(&shape.template, shape.vcpus, shape.memory_mb)
            .await?;
        let name = format!(
            "{}-{}",
            shape.template,
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let _admitted = self.admit(&format!("pool:{name}"), meta.memory_mb)?;
        let mb = (u64::from(meta.memory_mb) + self.cfg.admission.vm_overhead_mb) as usize;
        self.pools.making_mb.store(mb, Ordering::Release);
        let dir = self.pool_dir().join(&name);
        let made = self.restore_pooled(&dir, &image_dir, &meta).await;
        self.pools.making_mb.store(0, Ordering::Release);
        if made.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        made
    }

    async fn restore_pooled(
        &self,
        dir: &Path,
        image_dir: &Path,
        meta: &ImageMeta,
    ) -> Result<Pooled, SandboxError> {
        let t0 = Instant::now();
        std::fs::create_dir_all(dir).map_err(io("create pool dir"))?;
        let (layers, ram_mode) = clone_files(dir, image_dir, meta).await?;
        // The QMP path QEMU is started with, so it is still known after the directory moves.
        std::fs::write(
            dir.join(vmm::ORIGIN_FILE),
            dir.join("qmp.sock").display().to_string(),
        )
        .map_err(io("write QMP origin"))?;
        let rec = pool_record(meta, &layers, ram_mode);
        let ram = rec.ram.start();
        let slot = self.pool.acquire().await?;
        let spec = spec_for(&self.cfg, dir, &rec, &slot.tap);
        let loaded = Vm::load(
            spec,
            &dir.join("state"),
            ram.state_saved_with,
            Some(pre_exec_in(&slot)),
        )
        .await;
        let vm = match loaded {
            Ok(vm) => vm,
            Err(e) => {
                let _ = self.pool.release(slot).await;
                return Err(e.into());
            }
        };
        let warmed = async {
            set_nice(vm.pid, REFILL_NICE);
            let envd = envd_for(&slot)?;
            vm.cont().await?;
            envd.wait_ready(crate::sandbox::lifecycle::RESTORE_READY_TIMEOUT)
                .await?;
            // A sandbox's first commands, run once in this QEMU, so their code is already
            // translated (under TCG) when the create that takes the clone runs them. A buffered
            // exec leaves nothing behind in envd (no process list entry); a template without
            // Python skips that part.
            if let Err(e) = envd.exec(&warmup_exec()).await {
                tracing::debug!("pooled clone's warm-up command: {e}");
            }
            vm.qmp
                .execute("stop", serde_json::Value::Null)
                .await
                .map_err(vmm::VmError::from)?;
            set_nice(vm.pid, 0);
            Ok::<(), SandboxError>(())
        }
        .await;
        let pooled = Pooled {
            dir: dir.to_path_buf(),
            image_dir: image_dir.to_path_buf(),
            image_created_at: meta.created_at.clone(),
            layers,
            ram: ram_mode,
            vm,
            slot,
        };
        if let Err(e) = warmed {
            self.discard(pooled).await;
            return Err(e);
        }
        tracing::debug!("pooled clone of {} ready in {:?}", meta.name, t0.elapsed());
        Ok(pooled)
    }

    /// Starts sandbox `inner` from a pooled clone: its directory becomes the sandbox's, its
    /// record is written, its own egress rules replace the default ones, and the guest
    /// continues and gets its clock. On an error before the guest continues, the clone is
    /// given back to the caller's teardown through `inner` (its VM and slot are set).
    pub(in crate::sandbox) async fn create_from_pool(
        &self,
        inner: &mut Inner,
        dir: &Path,
        p: Pooled,
    ) -> Result<(), SandboxError> {
        let t0 = Instant::now();
        let Pooled {
            dir: pdir,
            layers,
            ram,
            mut vm,
            slot,
            ..
        } = p;
        inner.rec.layers = layers;
        inner.rec.ram = ram;
        inner.rec.slot = Some(slot.index);
        inner.rec.host_ip = slot.host_ip.to_string();
        let index = slot.index;
        inner.slot = Some(slot);
        // Recorded (creating) before it moves: a crash after the rename finds a create cut
        // short and removes it.
        let moved = async {
            records::write_json(&pdir.join("sandbox.json"), &inner.rec)
                .map_err(io("write record"))?;
            std::fs::rename(&pdir, dir).map_err(io("move pooled clone"))?;
            vm.moved_to(dir).await?;
            Ok::<(), SandboxError>(())
        }
        .await;
        inner.vm = Some(vm);
        if let Err(e) = moved {
            let _ = std::fs::remove_dir_all(&pdir);
            return Err(e);
        }
        let egress = self.sandbox_egress(inner.rec.network.as_ref()).await?;
        if let Some(egress) = egress {
            self.pool.set_sandbox_egress(index, egress).await?;
        }
        let envd = inner.slot.as_ref().map(envd_for).transpose()?;
        let (Some(vm), Some(envd)) = (&inner.vm, envd) else {
            return Err(SandboxError::Internal("the pooled VM went away".into()));
        };
        // The guest ran before (in the pool), so it continues before the record says running:
        // a clone whose QEMU died in the pool fails here and the create falls back to a clone.
        vm.cont().await?;
        inner.rec.status = SandboxStatus::Running;
        records::write_json(&dir.join("sandbox.json"), &inner.rec).map_err(io("write record"))?;
        self.fail("agent.create.after_start").await?;
        if envd.set_clock(std::time::SystemTime::now()).await.is_err() {
            // A first connection refused while the guest's network wakes up: wait for envd.
            envd.wait_ready(crate::sandbox::lifecycle::RESTORE_READY_TIMEOUT)
                .await?;
            envd.set_clock(std::time::SystemTime::now()).await?;
        }
        tracing::debug!(sandbox = %inner.rec.id, "from the pool in {:?}", t0.elapsed());
        inner.envd = Some(envd);
        inner.rec.op = None;
        inner.rec.started_at = Some(crate::sandbox::now_rfc3339());
        inner.rec.error = None;
        records::write_json(&dir.join("sandbox.json"), &inner.rec).map_err(io("write record"))?;
        if let Some(vm) = &inner.vm {
            self.watch(&inner.rec.id, vm);
        }
        Ok(())
    }
}

/// Links a clone's files from a snapshot image into `dir` (its disk layers, the template's
/// RAM and state) and makes its own disk overlay on top; returns its layers and where its RAM
/// is: a reflink of the template's RAM file where the filesystem can make one (a file of its
/// own from the start, so no pause or resume ever copies the RAM), else a hard link of the
/// template's file, mapped copy-on-write.
pub(in crate::sandbox) async fn clone_files(
    dir: &Path,
    image_dir: &Path,
    meta: &ImageMeta,
) -> Result<(Vec<String>, RamMode), SandboxError> {
    disk::link_layers(image_dir, dir, &meta.layers).map_err(io("link template disk"))?;
    let ram = if disk::reflink(&image_dir.join("mem"), &dir.join(OWN_RAM_FILE))
        .map_err(io("reflink template RAM"))?
    {
        RamMode::OwnFile
    } else {
        disk::link(&image_dir.join("mem"), &dir.join(TEMPLATE_RAM_FILE))
            .map_err(io("link template RAM"))?;
        RamMode::TemplateFile
    };
    disk::link(&image_dir.join("state"), &dir.join("state")).map_err(io("link template state"))?;
    let top = format!(
        "disk-{}.qcow2",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let backing = meta.layers.last().cloned().unwrap_or_default();
    {
        let (dir, top) = (dir.to_path_buf(), top.clone());
        blocking("create overlay", move || {
            disk::create_overlay(&dir, &backing, &top)
        })
        .await?;
    }
    let mut layers = meta.layers.clone();
    layers.push(top);
    Ok((layers, ram))
}

/// The warm-up command of a pooled clone: a shell, `true` and Python's start-up.
fn warmup_exec() -> wrenn_types::envd::ExecRequest {
    wrenn_types::envd::ExecRequest {
        args: vec![
            "-c".into(),
            "true; command -v python3 >/dev/null && python3 -c pass; true".into(),
        ],
        timeout_sec: Some(30),
        ..wrenn_types::envd::ExecRequest::new("sh")
    }
}

/// The record a pooled clone's VM is described by (no sandbox yet).
fn pool_record(meta: &ImageMeta, layers: &[String], ram: RamMode) -> SandboxOnDisk {
    SandboxOnDisk {
        id: String::new(),
        template: meta.name.clone(),
        vcpus: meta.vcpus,
        memory_mb: meta.memory_mb,
        status: SandboxStatus::Pending,
        slot: None,
        host_ip: String::new(),
        ram,
        layers: layers.to_vec(),
        created_at: crate::sandbox::now_rfc3339(),
        started_at: None,
        error: None,
        op: None,
        network: None,
    }
}

/// Sets the CPU priority of every thread of process `pid` (QEMU's vCPU threads are threads of
/// their own, which a process-wide priority would miss).
fn set_nice(pid: u32, nice: i32) {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for t in rd.flatten() {
        if let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
            // SAFETY: setpriority only reads its integer arguments.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, tid, nice);
            }
        }
    }
}
