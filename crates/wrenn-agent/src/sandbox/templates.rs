//! Snapshot templates: turning a paused or running sandbox into a template (`templates/<name>/`,
//! a snapshot image, see [`super::records`]), listing base and snapshot templates, deleting
//! them; and the one way a finished image directory is published or retired ([`publish_dir`],
//! [`retire_dir`]): built under a temp name, renamed into place. Deleting or overwriting a
//! template removes its names only: sandboxes made from it keep their hard links. It must not
//! change a sandbox other than the one being snapshotted, nor the base images.

use super::lifecycle::retire_sandbox_dir;
use super::pause::wait_idle;
use super::records::{self, ImageMeta, Op, RamMode, SandboxOnDisk};
use super::{
    blocking, disk, ensure_present, io, now_rfc3339, pre_exec_in, spec_for, valid_name, Manager,
    SandboxError,
};
use crate::vmm::Vm;
use std::path::{Path, PathBuf};
use wrenn_types::agent::{SandboxStatus, TemplateInfo, TemplateKind};

impl Manager {
    /// Turns a sandbox into a template named `name` (its RAM, device state and disk) and
    /// removes the sandbox. Sandboxes already made from an overwritten template keep working.
    /// Runs to its end whatever happens to the caller; a running sandbox is paused first (as
    /// a pause would, recorded paused), then the intent `snapshotting` is recorded; the
    /// published template names its sandbox (`from-sandbox`), so a restart knows whether the
    /// snapshot finished.
    pub async fn snapshot(
        &self,
        id: &str,
        name: &str,
        overwrite: bool,
    ) -> Result<TemplateInfo, SandboxError> {
        let (id, name) = (id.to_string(), name.to_string());
        self.run_to_end("snapshot", move |m| async move {
            m.snapshot_now(&id, &name, overwrite).await
        })
        .await
    }

    async fn snapshot_now(
        &self,
        id: &str,
        name: &str,
        overwrite: bool,
    ) -> Result<TemplateInfo, SandboxError> {
        if !valid_name(name) {
            return Err(SandboxError::BadRequest(format!(
                "invalid template name {name:?}: use lowercase letters, digits, '-', '_' or '.'"
            )));
        }
        if self.base_template(name).is_some() {
            return Err(SandboxError::AlreadyExists(format!(
                "{name} is a base template and cannot be replaced"
            )));
        }
        if !overwrite && self.template_dir(name).exists() {
            return Err(SandboxError::AlreadyExists(format!(
                "template {name} already exists"
            )));
        }
        let e = self.entry(id)?;
        let mut inner = e.lock().await;
        ensure_present(&inner.rec)?;
        match inner.rec.status {
            SandboxStatus::Running => {
                wait_idle(&e).await?;
                self.save_and_stop(&mut inner).await?
            }
            SandboxStatus::Paused => {}
            s => {
                return Err(SandboxError::Conflict(format!(
                    "sandbox {id} is {}, not running",
                    s.as_str()
                )))
            }
        }
        let dir = self.sandbox_dir(id);
        let tmp = temp_dir_in(&self.cfg.data_dir.join("templates"));
        let published = async {
            inner.rec.op = Some(Op::Snapshotting);
            records::write_json(&dir.join("sandbox.json"), &inner.rec)
                .map_err(io("write record"))?;
            self.fail("agent.snapshot.after_intent").await?;
            std::fs::create_dir_all(&tmp).map_err(io("create template dir"))?;
            let meta = self.build_template(&inner.rec, &dir, &tmp, name).await?;
            std::fs::write(tmp.join(FROM_SANDBOX_FILE), id).map_err(io("name the source"))?;
            let _g = self.template_lock.lock().await;
            let target = self.template_dir(name);
            if target.exists() && !overwrite {
                return Err(SandboxError::AlreadyExists(format!(
                    "template {name} already exists"
                )));
            }
            publish_dir(&tmp, &target)?;
            Ok(meta)
        }
        .await;
        let meta = match published {
            Ok(m) => m,
            Err(e) => {
                // Still the paused sandbox it was.
                let _ = std::fs::remove_dir_all(&tmp);
                inner.rec.op = None;
                if let Err(w) = records::write_json(&dir.join("sandbox.json"), &inner.rec) {
                    tracing::warn!(sandbox = id, "recording the snapshot undone: {w}");
                }
                return Err(e);
            }
        };
        // The sandbox has become the template: from here the snapshot is only finished.
        if let Err(e) = self.fail("agent.snapshot.after_publish").await {
            tracing::warn!(sandbox = id, "{e}; the snapshot is finished anyway");
        }
        self.teardown(&mut inner).await;
        inner.rec.status = SandboxStatus::Stopped;
        retire_sandbox_dir(&dir);
        self.forget(id, &e);
        // Clones pooled from a template this one replaced.
        self.pool_drain(name).await;
        Ok(template_info(&meta, &self.template_dir(name)))
    }

    /// Fills `tmp` with a snapshot image of the paused sandbox in `dir`.
    async fn build_template(
        &self,
        rec: &SandboxOnDisk,
        dir: &Path,
        tmp: &Path,
        name: &str,
    ) -> Result<ImageMeta, SandboxError> {
        let mut layers = rec.layers.clone();
        if layers.len() > disk::MAX_CHAIN {
            let flat = format!(
                "flat-{}.qcow2",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            );
            let Some(top) = layers.last().map(|l| dir.join(l)) else {
                return Err(SandboxError::Internal(
                    "a sandbox without disk layers".into(),
                ));
            };
            let out = tmp.join(&flat);
            blocking("flatten disk", move || disk::flatten(&top, &out)).await?;
            layers = vec![flat];
        } else {
            disk::link_layers(dir, tmp, &layers).map_err(io("link disk layers"))?;
        }
        let ram = rec.ram.start();
        if rec.ram == RamMode::InState {
            // A clone's RAM is in its state file: load it once into a RAM file of the
            // template's own (mapped as a resume would map it) and save the device state alone.
            disk::create_mem_file(&tmp.join("mem"), rec.memory_mb).map_err(io("RAM file"))?;
            let slot = self.pool.acquire().await?;
            let mut spec = spec_for(&self.cfg, dir, rec, &slot.tap);
            spec.mem_path = tmp.join("mem");
            spec.run_dir = tmp.join("run");
            let res = async {
                let vm = Vm::load(
                    spec,
                    &dir.join("state"),
                    ram.state_saved_with,
                    Some(pre_exec_in(&slot)),
                )
                .await?;
                let saved = vm.save(&tmp.join("state")).await;
                vm.quit().await?;
                saved
            }
            .await;
            let _ = self.pool.release(slot).await;
            let _ = std::fs::remove_dir_all(tmp.join("run"));
            res?;
        } else {
            disk::link(&dir.join(ram.file), &tmp.join("mem")).map_err(io("link RAM"))?;
            disk::link(&dir.join("state"), &tmp.join("state")).map_err(io("link state"))?;
        }
        let meta = ImageMeta {
            name: name.to_string(),
            kind: "snapshot".into(),
            vcpus: rec.vcpus,
            memory_mb: rec.memory_mb,
            layers,
            created_at: now_rfc3339(),
            source_key: String::new(),
        };
        records::write_json(&tmp.join("meta.json"), &meta).map_err(io("write template meta"))?;
        Ok(meta)
    }

    pub(super) fn base_template(&self, name: &str) -> Option<&crate::images::BaseTemplate> {
        self.cfg.images.templates.iter().find(|t| t.name == name)
    }

    /// Templates on this host: base templates and snapshot templates.
    pub fn templates(&self) -> Vec<TemplateInfo> {
        let mut out: Vec<TemplateInfo> = self
            .cfg
            .images
            .templates
            .iter()
            .map(|t| TemplateInfo {
                name: t.name.clone(),
                kind: TemplateKind::Base,
                vcpus: None,
                memory_mb: None,
                size_bytes: std::fs::metadata(&t.rootfs)
                    .map(|m| {
                        use std::os::unix::fs::MetadataExt;
                        m.blocks() * 512
                    })
                    .unwrap_or(t.size_bytes),
                created_at: std::fs::metadata(&t.rootfs)
                    .and_then(|m| m.modified())
                    .map(|t| chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339())
                    .unwrap_or_default(),
            })
            .collect();
        if let Ok(rd) = std::fs::read_dir(self.cfg.data_dir.join("templates")) {
            for e in rd.flatten() {
                let dir = e.path();
                if let Ok(meta) = records::read_json::<ImageMeta>(&dir.join("meta.json")) {
                    out.push(template_info(&meta, &dir));
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Deletes a snapshot template. Sandboxes made from it keep their own links to its files.
    pub async fn delete_template(&self, name: &str) -> Result<(), SandboxError> {
        if self.base_template(name).is_some() {
            return Err(SandboxError::Conflict(format!(
                "{name} is a base template and cannot be deleted"
            )));
        }
        let dir = self.template_dir(name);
        if !valid_name(name) || !dir.join("meta.json").exists() {
            return Err(SandboxError::TemplateNotFound(name.to_string()));
        }
        let _g = self.template_lock.lock().await;
        retire_dir(&dir)?;
        self.pool_drain(name).await;
        Ok(())
    }
}

/// In a snapshot template made from a sandbox: that sandbox's id.
pub(super) const FROM_SANDBOX_FILE: &str = "from-sandbox";

/// True when the snapshot template of a sandbox with this id is published (a snapshot cut
/// short after its publication finished).
pub(super) fn template_from(templates: &Path, id: &str) -> bool {
    std::fs::read_dir(templates)
        .map(|rd| {
            rd.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with(".tmp-"))
                .any(|e| {
                    std::fs::read_to_string(e.path().join(FROM_SANDBOX_FILE)).is_ok_and(|s| s == id)
                })
        })
        .unwrap_or(false)
}

pub(super) fn template_info(meta: &ImageMeta, dir: &Path) -> TemplateInfo {
    TemplateInfo {
        name: meta.name.clone(),
        kind: TemplateKind::Snapshot,
        vcpus: Some(meta.vcpus),
        memory_mb: Some(meta.memory_mb),
        size_bytes: records::dir_allocated_bytes(dir),
        created_at: meta.created_at.clone(),
    }
}

/// Removes what a crash left of directories being built or retired in `dir` (see
/// [`temp_dir_in`]).
pub(super) fn remove_temp_dirs(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// A fresh name `.tmp-<uuid>` in `parent` for a directory being built or retired there;
/// [`remove_temp_dirs`] clears what a crash leaves of them.
pub(super) fn temp_dir_in(parent: &Path) -> PathBuf {
    parent.join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()))
}

/// Puts the finished directory `tmp` at `target` (same parent directory) in one rename, so a
/// reader finds the old directory or the new one, never a mix. An existing `target` is renamed
/// aside first and removed once the new one is in place.
pub(super) fn publish_dir(tmp: &Path, target: &Path) -> Result<(), SandboxError> {
    let old = if target.exists() {
        Some(move_aside(target)?)
    } else {
        None
    };
    std::fs::rename(tmp, target).map_err(io("publish directory"))?;
    if let Some(old) = old {
        let _ = std::fs::remove_dir_all(old);
    }
    Ok(())
}

/// Removes a published directory: renamed aside in one step, then deleted.
pub(super) fn retire_dir(target: &Path) -> Result<(), SandboxError> {
    let old = move_aside(target)?;
    let _ = std::fs::remove_dir_all(old);
    Ok(())
}

fn move_aside(target: &Path) -> Result<PathBuf, SandboxError> {
    let aside = temp_dir_in(target.parent().unwrap_or(Path::new(".")));
    std::fs::rename(target, &aside).map_err(io("move old directory aside"))?;
    Ok(aside)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_replaces_and_retire_removes_leaving_no_temp_dirs() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("t");
        for content in ["one", "two"] {
            let tmp = temp_dir_in(d.path());
            std::fs::create_dir(&tmp).unwrap();
            std::fs::write(tmp.join("meta.json"), content).unwrap();
            publish_dir(&tmp, &target).unwrap();
            assert_eq!(
                std::fs::read_to_string(target.join("meta.json")).unwrap(),
                content
            );
        }
        let names = |d: &Path| -> Vec<_> {
            std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect()
        };
        assert_eq!(names(d.path()), vec![std::ffi::OsString::from("t")]);
        retire_dir(&target).unwrap();
        assert!(names(d.path()).is_empty());
    }

    #[test]
    fn temp_dirs_are_cleared_and_published_ones_kept() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(temp_dir_in(d.path())).unwrap();
        std::fs::create_dir(d.path().join("kept")).unwrap();
        remove_temp_dirs(d.path());
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("kept")]);
    }
}
