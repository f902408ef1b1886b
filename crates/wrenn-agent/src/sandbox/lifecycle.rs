//! The life of a sandbox: create (a clone of a snapshot image), resume into any free slot,
//! destroy (pause to files is [`super::pause`]); and noticing a QEMU that went away unasked. Each
//! operation runs to its end in a task of its own ([`Manager::run_to_end`]), holds the
//! sandbox's lock, records its intent ([`Op`]) before its first step that cannot be taken back
//! and its result after its last, and releases on its error path what it acquired (slot, QEMU,
//! files). It must not publish or delete templates or warm snapshots (see
//! [`super::templates`], [`super::warm`]); it only links their files.

use super::pool::{clone_files, Shape};
use super::records::{
    self, ImageMeta, Op, RamMode, SandboxOnDisk, OWN_RAM_FILE, TEMPLATE_RAM_FILE,
};
use super::templates::temp_dir_in;
use super::{
    disk, ensure_present, envd_for, expect_status, info, io, mark_error, mark_error_keep_files,
    now_rfc3339, pre_exec_in, spec_for, valid_name, Entry, Inner, Manager, SandboxError,
    MAX_MEMORY_MB, MAX_VCPUS, MIN_MEMORY_MB,
};
use crate::vmm::{self, Vm};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use wrenn_types::agent::{SandboxInfo, SandboxStatus};
use wrenn_types::network::SandboxNetwork;

/// How long envd may take to answer after a restore.
pub(super) const RESTORE_READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The failure points of a VM start: after the state is loaded (guest stopped), after the
/// guest runs again.
struct StartPoints {
    after_load: Option<&'static str>,
    after_cont: &'static str,
}

impl Manager {
    /// Creates a sandbox from a template: a copy-on-write clone of the template's snapshot
    /// (booting a base template once first if it has no warm snapshot yet). The id is taken
    /// before any slow work, so a destroy arriving meanwhile waits for the create and then
    /// removes what it made.
    pub async fn create(
        &self,
        id: &str,
        template: &str,
        vcpus: u32,
        memory_mb: u32,
    ) -> Result<SandboxInfo, SandboxError> {
        self.create_with_network(id, template, vcpus, memory_mb, None)
            .await
    }

    /// [`Manager::create`] with the sandbox's own egress policy (`None`: the default), kept
    /// in its record for every later start.
    pub async fn create_with_network(
        &self,
        id: &str,
        template: &str,
        vcpus: u32,
        memory_mb: u32,
        network: Option<SandboxNetwork>,
    ) -> Result<SandboxInfo, SandboxError> {
        if let Some(n) = &network {
            n.validate().map_err(SandboxError::BadRequest)?;
        }
        if !valid_name(id) {
            return Err(SandboxError::BadRequest(format!(
                "invalid sandbox id {id:?}"
            )));
        }
        if !valid_name(template) {
            return Err(SandboxError::TemplateNotFound(template.to_string()));
        }
        if vcpus == 0 || vcpus > MAX_VCPUS {
            return Err(SandboxError::BadRequest(format!(
                "vcpus must be between 1 and {MAX_VCPUS}"
            )));
        }
        if !(MIN_MEMORY_MB..=MAX_MEMORY_MB).contains(&memory_mb) {
            return Err(SandboxError::BadRequest(format!(
                "memory_mb must be between {MIN_MEMORY_MB} and {MAX_MEMORY_MB}"
            )));
        }
        let (id, template) = (id.to_string(), template.to_string());
        self.run_to_end("create", move |m| async move {
            m.create_now(&id, &template, vcpus, memory_mb, network)
                .await
        })
        .await
    }

    async fn create_now(
        &self,
        id: &str,
        template: &str,
        vcpus: u32,
        memory_mb: u32,
        network: Option<SandboxNetwork>,
    ) -> Result<SandboxInfo, SandboxError> {
        let dir = self.sandbox_dir(id);
        // Declared before the lock: dropped after it, when the view says running.
        let mut _admitted = None;
        let _under_way = self.pools.create_started();
        let entry = Entry::new(Inner {
            rec: SandboxOnDisk {
                id: id.to_string(),
                template: template.to_string(),
                vcpus,
                memory_mb,
                status: SandboxStatus::Pending,
                slot: None,
                host_ip: String::new(),
                ram: RamMode::TemplateFile,
                layers: Vec::new(),
                created_at: now_rfc3339(),
                started_at: None,
                error: None,
                op: Some(Op::Creating),
                network,
            },
            vm: None,
            slot: None,
            envd: None,
        });
        // Locked before it is listed: an operation that finds it waits for the create.
        let mut inner = entry.lock().await;
        {
            let mut map = self.map();
            if map.contains_key(id) || dir.exists() {
                return Err(SandboxError::AlreadyExists(format!(
                    "sandbox {id} already exists"
                )));
            }
            map.insert(id.to_string(), entry.clone());
        }
        let made = async {
            self.fail("agent.create.after_register").await?;
            let (image_dir, meta) = self.snapshot_image(template, vcpus, memory_mb).await?;
            let shape = Shape {
                template: template.to_string(),
                vcpus: meta.vcpus,
                memory_mb: meta.memory_mb,
            };
            let mut pooled = self.pool_take(&shape, &image_dir, &meta).await;
            _admitted = Some(match self.admit(id, meta.memory_mb) {
                Ok(a) => a,
                // Pooled clones give way to a create that finds no room.
                Err(e) => {
                    if let Some(p) = pooled.take() {
                        self.discard(p).await;
                    }
                    if !self.pool_make_room().await {
                        return Err(e);
                    }
                    self.admit(id, meta.memory_mb)?
                }
            });
            inner.rec.vcpus = meta.vcpus;
            inner.rec.memory_mb = meta.memory_mb;
            if let Some(p) = pooled {
                match self.create_from_pool(&mut inner, &dir, p).await {
                    Ok(()) => return Ok(()),
                    // The guest never continued: a clone of the snapshot instead.
                    Err(e) if inner.rec.status != SandboxStatus::Running => {
                        tracing::warn!(sandbox = id, "pooled clone failed, cloning: {e}");
                        self.teardown(&mut inner).await;
                        let _ = std::fs::remove_dir_all(&dir);
                        inner.rec.layers.clear();
                    }
                    Err(e) => return Err(e),
                }
            }
            self.clone_into(&mut inner, &dir, &image_dir, &meta).await
        }
        .await;
        match made {
            Ok(()) => Ok(info(&inner.rec)),
            Err(e) => {
                self.teardown(&mut inner).await;
                let _ = std::fs::remove_dir_all(&dir);
                inner.rec.status = SandboxStatus::Stopped;
                self.forget(id, &entry);
                Err(e)
            }
        }
    }

    /// Removes `entry` from the listing (if it is still the one listed under `id`).
    pub(super) fn forget(&self, id: &str, entry: &Arc<Entry>) {
        let mut map = self.map();
        if map.get(id).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            map.remove(id);
        }
    }

    async fn clone_into(
        &self,
        inner: &mut Inner,
        dir: &Path,
        image_dir: &Path,
        meta: &ImageMeta,
    ) -> Result<(), SandboxError> {
        let t0 = std::time::Instant::now();
        std::fs::create_dir_all(dir).map_err(io("create sandbox dir"))?;
        records::write_json(&dir.join("sandbox.json"), &inner.rec).map_err(io("write record"))?;
        (inner.rec.layers, inner.rec.ram) = clone_files(dir, image_dir, meta).await?;
        tracing::debug!(sandbox = %inner.rec.id, "files ready in {:?}", t0.elapsed());
        self.fail("agent.create.after_files").await?;
        let points = StartPoints {
            after_load: None,
            after_cont: "agent.create.after_start",
        };
        self.start_vm(inner, dir, points).await
    }

    /// Starts the sandbox's VM from `dir/state` in a fresh slot and waits for envd. The RAM
    /// mode says which RAM file is mapped and whether the state carries the RAM
    /// ([`RamMode::start`]). Just before the guest runs again the record says `running` (with
    /// the intent still set): from then on the RAM file and disk move on from the saved state,
    /// and a failure can no longer go back to it. At the end the intent is cleared.
    async fn start_vm(
        &self,
        inner: &mut Inner,
        dir: &Path,
        points: StartPoints,
    ) -> Result<(), SandboxError> {
        let t0 = std::time::Instant::now();
        let ram = inner.rec.ram.start();
        let egress = self.sandbox_egress(inner.rec.network.as_ref()).await?;
        let slot = self.pool.acquire().await?;
        let t_slot = t0.elapsed();
        inner.rec.slot = Some(slot.index);
        inner.rec.host_ip = slot.host_ip.to_string();
        let spec = spec_for(&self.cfg, dir, &inner.rec, &slot.tap);
        let envd = envd_for(&slot);
        let loaded = Vm::load(
            spec,
            &dir.join("state"),
            ram.state_saved_with,
            Some(pre_exec_in(&slot)),
        )
        .await;
        let index = slot.index;
        inner.slot = Some(slot);
        inner.vm = Some(loaded?);
        let envd = envd?;
        // Before the guest runs: its own rules in place of the default ones.
        if let Some(egress) = egress {
            self.pool.set_sandbox_egress(index, egress).await?;
        }
        if let Some(p) = points.after_load {
            self.fail(p).await?;
        }
        let t_vm = t0.elapsed();
        inner.rec.status = SandboxStatus::Running;
        inner.rec.ram = ram.running;
        records::write_json(&dir.join("sandbox.json"), &inner.rec).map_err(io("write record"))?;
        match &inner.vm {
            Some(vm) => vm.cont().await?,
            None => return Err(SandboxError::Internal("the VM went away".into())),
        }
        self.fail(points.after_cont).await?;
        // The guest's clock stood still since its state was saved.
        envd.set_clock_when_ready(RESTORE_READY_TIMEOUT).await?;
        tracing::debug!(
            sandbox = %inner.rec.id,
            "slot {t_slot:?}, VM restored {t_vm:?}, envd ready and clock set {:?}",
            t0.elapsed()
        );
        inner.envd = Some(envd);
        inner.rec.op = None;
        inner.rec.started_at = Some(now_rfc3339());
        inner.rec.error = None;
        records::write_json(&dir.join("sandbox.json"), &inner.rec).map_err(io("write record"))?;
        if let Some(vm) = &inner.vm {
            self.watch(&inner.rec.id, vm);
        }
        Ok(())
    }

    /// Resumes a paused sandbox in any free slot; its processes continue where they stopped.
    /// A failure before the guest runs again leaves it paused as it was; after, in `error`
    /// with its files kept (its RAM file and disk have moved on from the saved state).
    pub async fn resume(&self, id: &str) -> Result<SandboxInfo, SandboxError> {
        let id = id.to_string();
        self.run_to_end("resume", move |m| async move { m.resume_now(&id).await })
            .await
    }

    async fn resume_now(&self, id: &str) -> Result<SandboxInfo, SandboxError> {
        let e = self.entry(id)?;
        let _admitted;
        let mut inner = e.lock().await;
        ensure_present(&inner.rec)?;
        expect_status(&inner.rec, SandboxStatus::Paused)?;
        _admitted = self.admit(id, inner.rec.memory_mb)?;
        let dir = self.sandbox_dir(id);
        let before = inner.rec.clone();
        let started = async {
            inner.rec.op = Some(Op::Resuming);
            records::write_json(&dir.join("sandbox.json"), &inner.rec)
                .map_err(io("write record"))?;
            self.fail("agent.resume.after_intent").await?;
            if before.ram == RamMode::InState {
                // The saved state carries the RAM: it is loaded into a RAM file of the
                // sandbox's own, so later pauses only save device state.
                disk::create_mem_file(&dir.join(OWN_RAM_FILE), inner.rec.memory_mb)
                    .map_err(io("create RAM file"))?;
            }
            let points = StartPoints {
                after_load: Some("agent.resume.after_load"),
                after_cont: "agent.resume.after_cont",
            };
            self.start_vm(&mut inner, &dir, points).await
        }
        .await;
        match started {
            Ok(()) => {
                if before.ram == RamMode::InState {
                    // The template's RAM is no longer mapped.
                    let _ = std::fs::remove_file(dir.join(TEMPLATE_RAM_FILE));
                }
                Ok(info(&inner.rec))
            }
            Err(e) => {
                let ran = inner.rec.status == SandboxStatus::Running;
                self.teardown(&mut inner).await;
                if ran {
                    mark_error_keep_files(
                        &dir,
                        &mut inner.rec,
                        format!("resume failed after the guest ran again: {e}"),
                    );
                } else {
                    if before.ram == RamMode::InState {
                        let _ = std::fs::remove_file(dir.join(OWN_RAM_FILE));
                    }
                    inner.rec = before;
                    if let Err(w) = records::write_json(&dir.join("sandbox.json"), &inner.rec) {
                        tracing::warn!(sandbox = id, "recording the resume undone: {w}");
                    }
                }
                Err(e)
            }
        }
    }

    /// Destroys a sandbox in any state and removes its files. A destroy that finds an
    /// operation under way (a slow first create, say) waits for it, then destroys what it
    /// left; one that finds the sandbox already gone once it had the lock succeeds.
    pub async fn destroy(&self, id: &str) -> Result<(), SandboxError> {
        let id = id.to_string();
        self.run_to_end("destroy", move |m| async move { m.destroy_now(&id).await })
            .await
    }

    async fn destroy_now(&self, id: &str) -> Result<(), SandboxError> {
        let e = self.entry(id)?;
        let mut inner = e.lock().await;
        if inner.rec.status == SandboxStatus::Stopped {
            return Ok(());
        }
        let dir = self.sandbox_dir(id);
        inner.rec.op = Some(Op::Destroying);
        if dir.join("sandbox.json").exists() {
            records::write_json(&dir.join("sandbox.json"), &inner.rec)
                .map_err(io("write record"))?;
        }
        self.fail("agent.destroy.after_intent").await?;
        self.teardown(&mut inner).await;
        kill_left_qemu(&dir).await;
        self.fail("agent.destroy.after_kill").await?;
        retire_sandbox_dir(&dir);
        inner.rec.status = SandboxStatus::Stopped;
        self.forget(id, &e);
        Ok(())
    }

    /// Kills the VM and releases the slot of a sandbox, whatever state it is in.
    pub(super) async fn teardown(&self, inner: &mut Inner) {
        inner.envd = None;
        if let Some(vm) = inner.vm.take() {
            vm.kill().await;
        }
        if let Some(slot) = inner.slot.take() {
            if let Err(e) = self.pool.release(slot).await {
                tracing::warn!(sandbox = %inner.rec.id, "releasing network slot: {e}");
            }
        }
        inner.rec.slot = None;
        inner.rec.host_ip.clear();
    }

    /// Notices when a sandbox's QEMU goes away without being asked to.
    /// Also keeps its console log bounded while it runs.
    pub(super) fn watch(&self, id: &str, vm: &Vm) {
        crate::vmm::console::keep_bounded(
            self.sandbox_dir(id).join("console.log"),
            vm.qmp.closed_signal(),
        );
        let closed = vm.qmp.closed_signal();
        let pid = vm.pid;
        let id = id.to_string();
        let me = self.me.clone();
        tokio::spawn(async move {
            closed.await;
            if let Some(mgr) = me.upgrade() {
                mgr.on_vm_exit(&id, pid).await;
            }
        });
    }

    async fn on_vm_exit(&self, id: &str, pid: u32) {
        let Ok(entry) = self.entry(id) else { return };
        let mut inner = entry.lock().await;
        if inner.vm.as_ref().map(|v| v.pid) != Some(pid) {
            return; // an exit we asked for (pause, destroy) or an older VM
        }
        let dir = self.sandbox_dir(id);
        let console = std::fs::read_to_string(dir.join("console.log")).unwrap_or_default();
        let tail: String = console
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join(" | ");
        tracing::warn!(
            sandbox = id,
            pid,
            "QEMU exited unexpectedly; console: {tail}"
        );
        self.teardown(&mut inner).await;
        mark_error(&dir, &mut inner.rec, "the VM stopped unexpectedly".into());
    }
}

/// Kills the QEMU a sandbox's pid file names, if it still is that sandbox's QEMU (a reused pid
/// is left alone).
pub(super) async fn kill_left_qemu(dir: &Path) {
    let Ok(pid) = std::fs::read_to_string(dir.join("qemu.pid")) else {
        return;
    };
    if let Ok(pid) = pid.trim().parse() {
        vmm::kill_stale(pid, &dir.join("qmp.sock")).await;
    }
}

/// Removes a sandbox's directory: renamed aside in one step (so a crash never leaves half a
/// sandbox under its own name), then deleted.
pub(super) fn retire_sandbox_dir(dir: &Path) {
    let Some(parent) = dir.parent() else { return };
    let aside = temp_dir_in(parent);
    match std::fs::rename(dir, &aside) {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(aside);
        }
        Err(_) => {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
