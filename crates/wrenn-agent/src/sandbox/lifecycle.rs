//! The life of a sandbox: create (a copy-on-write clone of a snapshot image), pause to files,
//! resume into any free slot, destroy; and noticing a QEMU that went away unasked. Each
//! operation holds the sandbox's lock and releases on its error path what it acquired (slot,
//! QEMU, files). It must not publish or delete templates or warm snapshots (see
//! [`super::templates`], [`super::warm`]); it only links their files.

use super::capacity::check_capacity;
use super::records::{self, ImageMeta, RamMode, SandboxOnDisk, OWN_RAM_FILE, TEMPLATE_RAM_FILE};
use super::{
    blocking, disk, envd_for, expect_status, info, io, mark_error, now_rfc3339, pre_exec_in,
    spec_for, valid_name, Entry, Inner, Manager, SandboxError, MAX_MEMORY_MB, MAX_VCPUS,
    MIN_MEMORY_MB,
};
use crate::vmm::Vm;
use std::path::Path;
use std::time::{Duration, SystemTime};
use wrenn_types::agent::{SandboxInfo, SandboxStatus};

/// How long envd may take to answer after a restore.
const RESTORE_READY_TIMEOUT: Duration = Duration::from_secs(20);

impl Manager {
    /// Creates a sandbox from a template: a copy-on-write clone of the template's snapshot
    /// (booting a base template once first if it has no warm snapshot yet).
    pub async fn create(
        &self,
        id: &str,
        template: &str,
        vcpus: u32,
        memory_mb: u32,
    ) -> Result<SandboxInfo, SandboxError> {
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
        let (image_dir, meta) = self.snapshot_image(template, vcpus, memory_mb).await?;
        check_capacity(meta.memory_mb)?;

        let dir = self.sandbox_dir(id);
        let rec = SandboxOnDisk {
            id: id.to_string(),
            template: template.to_string(),
            vcpus: meta.vcpus,
            memory_mb: meta.memory_mb,
            status: SandboxStatus::Pending,
            slot: None,
            host_ip: String::new(),
            ram: RamMode::TemplateFile,
            layers: Vec::new(),
            created_at: now_rfc3339(),
            started_at: None,
            error: None,
        };
        let entry = Entry::new(Inner {
            rec,
            vm: None,
            slot: None,
            envd: None,
        });
        {
            let mut map = self.sandboxes.lock().expect("sandboxes lock");
            if map.contains_key(id) || dir.exists() {
                return Err(SandboxError::AlreadyExists(format!(
                    "sandbox {id} already exists"
                )));
            }
            map.insert(id.to_string(), entry.clone());
        }
        let mut inner = entry.lock().await;
        match self.clone_into(&mut inner, &dir, &image_dir, &meta).await {
            Ok(()) => Ok(info(&inner.rec)),
            Err(e) => {
                self.teardown(&mut inner).await;
                let _ = std::fs::remove_dir_all(&dir);
                self.sandboxes.lock().expect("sandboxes lock").remove(id);
                Err(e)
            }
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
        disk::link_layers(image_dir, dir, &meta.layers).map_err(io("link template disk"))?;
        disk::link(&image_dir.join("mem"), &dir.join(TEMPLATE_RAM_FILE))
            .map_err(io("link template RAM"))?;
        disk::link(&image_dir.join("state"), &dir.join("state"))
            .map_err(io("link template state"))?;
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
        inner.rec.layers = meta.layers.clone();
        inner.rec.layers.push(top);
        tracing::debug!(sandbox = %inner.rec.id, "files ready in {:?}", t0.elapsed());
        self.start_vm(inner, dir).await
    }

    /// Restores the sandbox's VM from `dir/state` into a fresh slot and waits for envd. The
    /// RAM mode says which RAM file is mapped and whether the state carries the RAM
    /// ([`RamMode::start`]); the record then holds the mode the VM runs in.
    async fn start_vm(&self, inner: &mut Inner, dir: &Path) -> Result<(), SandboxError> {
        let t0 = std::time::Instant::now();
        let ram = inner.rec.ram.start();
        let slot = self.pool.acquire().await?;
        let t_slot = t0.elapsed();
        inner.rec.slot = Some(slot.index);
        inner.rec.host_ip = slot.host_ip.to_string();
        let spec = spec_for(&self.cfg, dir, &inner.rec, &slot.tap);
        inner.slot = Some(slot);
        let slot = inner.slot.as_ref().expect("slot just set");
        let vm = Vm::restore(
            spec,
            &dir.join("state"),
            ram.state_saved_with,
            Some(pre_exec_in(slot)),
        )
        .await?;
        let t_vm = t0.elapsed();
        let envd = envd_for(inner.slot.as_ref().expect("slot just set"))?;
        inner.vm = Some(vm);
        envd.wait_ready(RESTORE_READY_TIMEOUT).await?;
        let t_ready = t0.elapsed();
        envd.set_clock(SystemTime::now()).await?;
        tracing::debug!(
            sandbox = %inner.rec.id,
            "slot {t_slot:?}, VM restored {t_vm:?}, envd ready {t_ready:?}, clock set {:?}",
            t0.elapsed()
        );
        inner.envd = Some(envd);
        inner.rec.ram = ram.running;
        inner.rec.status = SandboxStatus::Running;
        inner.rec.started_at = Some(now_rfc3339());
        inner.rec.error = None;
        records::write_json(&dir.join("sandbox.json"), &inner.rec).map_err(io("write record"))?;
        if let Some(vm) = &inner.vm {
            self.watch(&inner.rec.id, vm);
        }
        Ok(())
    }

    /// Pauses a running sandbox to files: device state (and RAM, for a clone that has never
    /// been paused) saved, QEMU ended, slot released.
    pub async fn pause(&self, id: &str) -> Result<SandboxInfo, SandboxError> {
        let e = self.entry(id)?;
        let mut inner = e.lock().await;
        expect_status(&inner.rec, SandboxStatus::Running)?;
        self.save_and_stop(&mut inner).await?;
        Ok(info(&inner.rec))
    }

    pub(super) async fn save_and_stop(&self, inner: &mut Inner) -> Result<(), SandboxError> {
        let dir = self.sandbox_dir(&inner.rec.id);
        let vm = inner.vm.take().expect("running sandbox has a VM");
        inner.envd = None;
        if let Err(e) = vm.save(&dir.join("state")).await {
            // The guest is stopped but intact: let it run on.
            let _ = vm.cont().await;
            inner.vm = Some(vm);
            inner.envd = inner.slot.as_ref().and_then(|s| envd_for(s).ok());
            return Err(e.into());
        }
        vm.quit().await?;
        if let Some(slot) = inner.slot.take() {
            if let Err(e) = self.pool.release(slot).await {
                tracing::warn!(sandbox = %inner.rec.id, "releasing network slot: {e}");
            }
        }
        inner.rec.slot = None;
        inner.rec.host_ip.clear();
        inner.rec.ram = inner.rec.ram.after_pause();
        inner.rec.status = SandboxStatus::Paused;
        records::write_json(&dir.join("sandbox.json"), &inner.rec).map_err(io("write record"))?;
        // Make the RAM and state durable without holding up the caller.
        let mut files = vec![dir.join("state")];
        if inner.rec.ram == RamMode::OwnFile {
            files.push(dir.join(OWN_RAM_FILE));
        }
        tokio::task::spawn_blocking(move || {
            for f in files {
                if let Ok(f) = std::fs::File::open(f) {
                    let _ = f.sync_all();
                }
            }
        });
        Ok(())
    }

    /// Resumes a paused sandbox in any free slot; its processes continue where they stopped.
    pub async fn resume(&self, id: &str) -> Result<SandboxInfo, SandboxError> {
        let e = self.entry(id)?;
        let mut inner = e.lock().await;
        expect_status(&inner.rec, SandboxStatus::Paused)?;
        check_capacity(inner.rec.memory_mb)?;
        let dir = self.sandbox_dir(id);
        let before = inner.rec.clone();
        if before.ram == RamMode::InState {
            // The saved state carries the RAM: it is loaded into a RAM file of the sandbox's
            // own, so later pauses only save device state.
            disk::create_mem_file(&dir.join(OWN_RAM_FILE), inner.rec.memory_mb)
                .map_err(io("create RAM file"))?;
        }
        match self.start_vm(&mut inner, &dir).await {
            Ok(()) => {
                if before.ram == RamMode::InState {
                    // The template's RAM is no longer mapped.
                    let _ = std::fs::remove_file(dir.join(TEMPLATE_RAM_FILE));
                }
                Ok(info(&inner.rec))
            }
            Err(e) => {
                self.teardown(&mut inner).await;
                inner.rec = before;
                Err(e)
            }
        }
    }

    /// Destroys a sandbox in any state and removes its files.
    pub async fn destroy(&self, id: &str) -> Result<(), SandboxError> {
        let e = self.entry(id)?;
        let mut inner = e.lock().await;
        self.teardown(&mut inner).await;
        inner.rec.status = SandboxStatus::Stopped;
        let _ = std::fs::remove_dir_all(self.sandbox_dir(id));
        self.sandboxes.lock().expect("sandboxes lock").remove(id);
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
    pub(super) fn watch(&self, id: &str, vm: &Vm) {
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
