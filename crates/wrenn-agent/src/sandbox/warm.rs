//! Warm snapshots: a base template cold-booted once per (vcpus, memory), warmed up through envd
//! and saved to `warm/<template>-<vcpus>x<mem>-<key>/`, so a create from a base template is a
//! restore, not a boot. Also finds the snapshot image a create clones (a user template as it
//! is, or the warm snapshot). It must not touch sandboxes: the VM it boots is its own, in a
//! slot it releases before returning.

use super::records::{self, ImageMeta};
use super::templates::{publish_dir, temp_dir_in};
use super::{blocking, disk, envd_for, io, now_rfc3339, pre_exec_in, Manager, SandboxError};
use crate::vmm::{self, RamMapping, Vm, VmSpec};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Version of the warm snapshot recipe; bump to invalidate existing warm snapshots.
const WARM_VERSION: &str = "1";
/// How long a cold boot may take to bring envd up (TCG is slow).
const COLD_BOOT_TIMEOUT: Duration = Duration::from_secs(120);

impl Manager {
    /// The snapshot image a sandbox of `template` is cloned from: a user template as it is, or
    /// the warm snapshot of a base template for (vcpus, memory), made on first use.
    pub(super) async fn snapshot_image(
        &self,
        template: &str,
        vcpus: u32,
        memory_mb: u32,
    ) -> Result<(PathBuf, ImageMeta), SandboxError> {
        let tdir = self.template_dir(template);
        if let Ok(meta) = records::read_json::<ImageMeta>(&tdir.join("meta.json")) {
            return Ok((tdir, meta));
        }
        let base = self
            .base_template(template)
            .ok_or_else(|| SandboxError::TemplateNotFound(template.to_string()))?
            .clone();
        let key = self.warm_key(&base);
        let dir = self
            .cfg
            .data_dir
            .join("warm")
            .join(format!("{template}-{vcpus}x{memory_mb}-{}", &key[..12]));
        let lock = self
            .warm_locks
            .lock()
            .expect("warm locks")
            .entry(dir.display().to_string())
            .or_default()
            .clone();
        let _g = lock.lock().await;
        if let Ok(meta) = records::read_json::<ImageMeta>(&dir.join("meta.json")) {
            return Ok((dir, meta));
        }
        let tmp = temp_dir_in(&self.cfg.data_dir.join("warm"));
        match self
            .make_warm(&base, template, vcpus, memory_mb, &key, &tmp)
            .await
        {
            Ok(meta) => {
                publish_dir(&tmp, &dir)?;
                Ok((dir, meta))
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(e)
            }
        }
    }

    /// Identity of everything a warm snapshot depends on.
    fn warm_key(&self, base: &crate::images::BaseTemplate) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(WARM_VERSION);
        h.update(format!("{:?}", self.cfg.accel));
        for p in [
            &base.rootfs,
            &self.cfg.images.kernel,
            &self.cfg.images.initrd,
        ] {
            h.update(p.display().to_string());
            if let Ok(m) = std::fs::metadata(p) {
                use std::os::unix::fs::MetadataExt;
                h.update(format!("{}:{}:{}", m.len(), m.mtime(), m.mtime_nsec()));
            }
        }
        hex::encode(h.finalize())
    }

    /// Cold-boots a base template once, waits for envd, warms it up and saves it.
    async fn make_warm(
        &self,
        base: &crate::images::BaseTemplate,
        template: &str,
        vcpus: u32,
        memory_mb: u32,
        key: &str,
        tmp: &Path,
    ) -> Result<ImageMeta, SandboxError> {
        let started = std::time::Instant::now();
        std::fs::create_dir_all(tmp).map_err(io("create warm dir"))?;
        let base_name = format!("base-{}.ext4", &key[..12]);
        disk::link(&base.rootfs, &tmp.join(&base_name)).map_err(io("link base image"))?;
        let layer = format!(
            "warm-{}.qcow2",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        {
            let (d, b, l) = (tmp.to_path_buf(), base_name.clone(), layer.clone());
            blocking("create overlay", move || disk::create_overlay(&d, &b, &l)).await?;
        }
        disk::create_mem_file(&tmp.join("mem"), memory_mb).map_err(io("RAM file"))?;
        let slot = self.pool.acquire().await?;
        let spec = VmSpec {
            qemu_bin: self.cfg.qemu_bin.clone(),
            accel: self.cfg.accel,
            vcpus,
            memory_mb,
            kernel: self.cfg.images.kernel.clone(),
            initrd: self.cfg.images.initrd.clone(),
            cmdline: vmm::kernel_cmdline(self.cfg.accel),
            mem_path: tmp.join("mem"),
            mem_mapping: RamMapping::Shared,
            disk: tmp.join(&layer),
            tap: slot.tap.clone(),
            mac: crate::guest::GUEST_MAC.into(),
            run_dir: tmp.join("run"),
        };
        let res = async {
            let envd = envd_for(&slot)?;
            let vm = Vm::boot(spec, Some(pre_exec_in(&slot))).await?;
            let ready = async {
                envd.wait_ready(COLD_BOOT_TIMEOUT).await?;
                tracing::info!(
                    template,
                    vcpus,
                    memory_mb,
                    "cold boot to envd ready in {:.2}s",
                    started.elapsed().as_secs_f64()
                );
                // Serve a few requests before saving, so the code paths a sandbox uses first
                // are already translated (under TCG) and paged in when a clone starts.
                for _ in 0..3 {
                    envd.exec(&warmup_exec()).await?;
                }
                Ok::<(), SandboxError>(())
            }
            .await;
            if let Err(e) = ready {
                let console = std::fs::read_to_string(vm.spec.console_path()).unwrap_or_default();
                vm.kill().await;
                let tail: Vec<&str> = console.lines().rev().take(10).collect();
                tracing::warn!(
                    "cold boot of {template} failed; console (last lines, newest first): {tail:?}"
                );
                return Err(e);
            }
            vm.save(&tmp.join("state")).await?;
            vm.quit().await?;
            Ok::<(), SandboxError>(())
        }
        .await;
        let _ = self.pool.release(slot).await;
        res?;
        let _ = std::fs::remove_dir_all(tmp.join("run"));
        let meta = ImageMeta {
            name: template.to_string(),
            kind: "warm".into(),
            vcpus,
            memory_mb,
            layers: vec![base_name, layer],
            created_at: now_rfc3339(),
            source_key: key.to_string(),
        };
        records::write_json(&tmp.join("meta.json"), &meta).map_err(io("write warm meta"))?;
        tracing::info!(
            template,
            vcpus,
            memory_mb,
            "warm snapshot made in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        Ok(meta)
    }
}

fn warmup_exec() -> wrenn_types::envd::ExecRequest {
    wrenn_types::envd::ExecRequest {
        timeout_sec: Some(30),
        ..wrenn_types::envd::ExecRequest::new("true")
    }
}
