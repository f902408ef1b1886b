//! Warm snapshots: a base template cold-booted once per (vcpus, memory), warmed up through envd
//! and saved to `warm/<template>-<vcpus>x<mem>-<key>/`, so a create from a base template is a
//! restore, not a boot. Made on first use, or ahead of it ([`Manager::prepare_warm`], which the
//! agent runs at start for its [`WarmSpec`] list). One lock per snapshot: a create that arrives
//! while the snapshot is being made waits for it instead of booting a second time. Also finds
//! the snapshot image a create clones (a user template as it is, or the warm snapshot). It must
//! not touch sandboxes: the VM it boots is its own, in a slot it releases before returning.

use super::records::{self, ImageMeta};
use super::templates::{publish_dir, temp_dir_in};
use super::{
    blocking, disk, envd_for, io, now_rfc3339, pre_exec_in, Manager, SandboxError, MAX_MEMORY_MB,
    MAX_VCPUS, MIN_MEMORY_MB,
};
use crate::vmm::{self, RamMapping, Vm, VmSpec};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Version of the warm snapshot recipe; bump to invalidate existing warm snapshots.
const WARM_VERSION: &str = "1";
/// How long a cold boot may take to bring envd up (TCG is slow).
const COLD_BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// Requests served through envd before the snapshot is saved.
const WARMUP_EXECS: usize = 3;
/// Longest run of a template's own warm-up script (a Jupyter server and its first kernel
/// under TCG on a loaded host).
const WARMUP_SCRIPT_TIMEOUT_SEC: u64 = 300;

/// A warm snapshot to prepare before the first create needs it: a base template at a size.
/// Written `TEMPLATE:VCPUS:MEMORY_MB`, e.g. `minimal:1:512`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmSpec {
    pub template: String,
    pub vcpus: u32,
    pub memory_mb: u32,
}

impl std::str::FromStr for WarmSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?}: expected TEMPLATE:VCPUS:MEMORY_MB, e.g. minimal:1:512");
        let mut parts = s.trim().split(':');
        let (Some(template), Some(vcpus), Some(memory), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let spec = WarmSpec {
            template: template.to_string(),
            vcpus: vcpus.parse().map_err(|_| bad())?,
            memory_mb: memory.parse().map_err(|_| bad())?,
        };
        if !super::valid_name(&spec.template) {
            return Err(format!("{s:?}: invalid template name"));
        }
        if spec.vcpus == 0 || spec.vcpus > MAX_VCPUS {
            return Err(format!("{s:?}: vcpus must be between 1 and {MAX_VCPUS}"));
        }
        if !(MIN_MEMORY_MB..=MAX_MEMORY_MB).contains(&spec.memory_mb) {
            return Err(format!(
                "{s:?}: memory must be between {MIN_MEMORY_MB} and {MAX_MEMORY_MB} MB"
            ));
        }
        Ok(spec)
    }
}

impl WarmSpec {
    /// As an option value: `minimal:1:512`.
    pub fn arg(&self) -> String {
        format!("{}:{}:{}", self.template, self.vcpus, self.memory_mb)
    }
}

impl std::fmt::Display for WarmSpec {
    /// As people read it: `minimal (1 vCPU, 512 MB)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = if self.vcpus == 1 { "" } else { "s" };
        write!(
            f,
            "{} ({} vCPU{s}, {} MB)",
            self.template, self.vcpus, self.memory_mb
        )
    }
}

/// What [`Manager::prepare_warm`] found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WarmOutcome {
    /// The snapshot was there already (made by an earlier run or by a create).
    Found,
    /// This call (or a create it waited for) cold-booted and saved it, taking this long.
    Made(Duration),
}

/// Kills a warm-up VM whose preparation is abandoned (the future dropped, e.g. when the
/// process stops mid-boot), so no QEMU outlives it in a directory about to be removed.
struct KillOnDrop(Option<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take().filter(|p| *p > 1) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

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
        let (dir, meta, _) = self.warm_image(template, vcpus, memory_mb).await?;
        Ok((dir, meta))
    }

    /// Makes the warm snapshot of `spec` now unless it exists, so that the first create of that
    /// template and size restores instead of booting. A create arriving meanwhile waits for
    /// this one (the same lock) and boots nothing itself.
    pub async fn prepare_warm(&self, spec: &WarmSpec) -> Result<WarmOutcome, SandboxError> {
        if self.base_template(&spec.template).is_none() {
            return Err(SandboxError::TemplateNotFound(format!(
                "{} (warm snapshots are made of base templates)",
                spec.template
            )));
        }
        let started = Instant::now();
        let (_, _, made) = self
            .warm_image(&spec.template, spec.vcpus, spec.memory_mb)
            .await?;
        Ok(if made {
            WarmOutcome::Made(started.elapsed())
        } else {
            WarmOutcome::Found
        })
    }

    /// The warm snapshot of a base template, made under its lock if missing; `true` when this
    /// call made it.
    async fn warm_image(
        &self,
        template: &str,
        vcpus: u32,
        memory_mb: u32,
    ) -> Result<(PathBuf, ImageMeta, bool), SandboxError> {
        let base = self
            .base_template(template)
            .ok_or_else(|| SandboxError::TemplateNotFound(template.to_string()))?
            .clone();
        let key = self.warm_key(&base);
        // A template's names share one image, so they share its warm snapshot too: it is
        // named after the first name listed for that image.
        let canonical = self
            .cfg
            .images
            .templates
            .iter()
            .find(|t| t.rootfs == base.rootfs)
            .map_or(template, |t| t.name.as_str());
        let dir = self
            .cfg
            .data_dir
            .join("warm")
            .join(format!("{canonical}-{vcpus}x{memory_mb}-{}", &key[..12]));
        let lock = self
            .warm_locks
            .lock()
            .expect("warm locks")
            .entry(dir.display().to_string())
            .or_default()
            .clone();
        let _g = lock.lock().await;
        if let Ok(meta) = records::read_json::<ImageMeta>(&dir.join("meta.json")) {
            return Ok((dir, meta, false));
        }
        let started = Instant::now();
        let tmp = temp_dir_in(&self.cfg.data_dir.join("warm"));
        match self
            .make_warm(&base, canonical, vcpus, memory_mb, &key, &tmp)
            .await
        {
            Ok(meta) => {
                publish_dir(&tmp, &dir)?;
                tracing::info!(
                    "warm snapshot of {canonical}: saved as {} ({:.1}s in all)",
                    dir.display(),
                    started.elapsed().as_secs_f64()
                );
                Ok((dir, meta, true))
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
        let started = Instant::now();
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
            tracing::info!(
                "warm snapshot of {template}: cold boot ({vcpus} vCPU, {memory_mb} MB, {:?})",
                self.cfg.accel
            );
            let vm = Vm::boot(spec, Some(pre_exec_in(&slot))).await?;
            let mut guard = KillOnDrop(Some(vm.pid));
            let ready = async {
                envd.wait_ready(COLD_BOOT_TIMEOUT).await?;
                tracing::info!(
                    "warm snapshot of {template}: envd ready after {:.1}s",
                    started.elapsed().as_secs_f64()
                );
                // Serve a few requests before saving, so the code paths a sandbox uses first
                // are already translated (under TCG) and paged in when a clone starts.
                let t = Instant::now();
                for _ in 0..WARMUP_EXECS {
                    envd.exec(&warmup_exec()).await?;
                }
                tracing::info!(
                    "warm snapshot of {template}: {WARMUP_EXECS} warm-up commands in {:.1}s",
                    t.elapsed().as_secs_f64()
                );
                // The template's own warm-up (e.g. the code runner's Jupyter kernel), if any.
                let t = Instant::now();
                let out = envd.exec(&warmup_script_exec()).await?;
                if out.exit_code != 0 {
                    return Err(SandboxError::Internal(format!(
                        "warm-up script of {template} failed (exit {}{}): {} {}",
                        out.exit_code,
                        if out.timed_out { ", timed out" } else { "" },
                        out.stdout.trim(),
                        out.stderr.trim()
                    )));
                }
                if !out.stdout.trim().is_empty() {
                    tracing::info!(
                        "warm snapshot of {template}: {} ({:.1}s)",
                        out.stdout.trim(),
                        t.elapsed().as_secs_f64()
                    );
                }
                Ok::<(), SandboxError>(())
            }
            .await;
            if let Err(e) = ready {
                let console = std::fs::read_to_string(vm.spec.console_path()).unwrap_or_default();
                vm.kill().await;
                guard.0 = None;
                let tail: Vec<&str> = console.lines().rev().take(10).collect();
                tracing::warn!(
                    "cold boot of {template} failed; console (last lines, newest first): {tail:?}"
                );
                return Err(e);
            }
            vm.save(&tmp.join("state")).await?;
            vm.quit().await?;
            guard.0 = None;
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
        Ok(meta)
    }
}

fn warmup_exec() -> wrenn_types::envd::ExecRequest {
    wrenn_types::envd::ExecRequest {
        timeout_sec: Some(30),
        ..wrenn_types::envd::ExecRequest::new("true")
    }
}

/// Runs the template's warm-up script when its image has one; succeeds at once otherwise.
fn warmup_script_exec() -> wrenn_types::envd::ExecRequest {
    let path = crate::guest::GUEST_WARMUP_PATH;
    wrenn_types::envd::ExecRequest {
        args: vec!["-c".into(), format!("[ -x {path} ] || exit 0; exec {path}")],
        timeout_sec: Some(WARMUP_SCRIPT_TIMEOUT_SEC),
        max_output_bytes: Some(16 * 1024),
        ..wrenn_types::envd::ExecRequest::new("/bin/sh")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_specs_parse_and_print() {
        let w: WarmSpec = "minimal:1:512".parse().unwrap();
        assert_eq!(
            w,
            WarmSpec {
                template: "minimal".into(),
                vcpus: 1,
                memory_mb: 512
            }
        );
        assert_eq!(w.arg(), "minimal:1:512");
        assert_eq!(w.to_string(), "minimal (1 vCPU, 512 MB)");
        let w: WarmSpec = " py:2:1024 ".parse().unwrap();
        assert_eq!(w.to_string(), "py (2 vCPUs, 1024 MB)");
        for bad in [
            "",
            "minimal",
            "minimal:1",
            "minimal:1:512:x",
            "minimal:x:512",
        ] {
            let e = bad.parse::<WarmSpec>().unwrap_err();
            assert!(e.contains("TEMPLATE:VCPUS:MEMORY_MB"), "{bad}: {e}");
        }
        assert!("minimal:17:512".parse::<WarmSpec>().is_err());
        assert!("minimal:1:100".parse::<WarmSpec>().is_err());
        assert!("../x:1:512".parse::<WarmSpec>().is_err());
    }
}
