//! Pausing a sandbox to files: waiting for its activity to end, saving its device state,
//! ending its QEMU, and making every file it is made of durable before it is recorded
//! `paused` (the steps and their order are in `docs/ARCHITECTURE.md`, "Operations run to
//! their end"). Split from [`super::lifecycle`], whose other operations it shares the
//! sandbox's lock and records with.

use super::records::{self, Op, RamMode, SandboxOnDisk, NEXT_STATE_FILE, OWN_RAM_FILE};
use super::{
    blocking, ensure_present, expect_status, info, io, mark_error_keep_files, Entry, Inner,
    Manager, SandboxError, PAUSE_WAITS_FOR_ACTIVITY,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;
use wrenn_types::agent::{SandboxInfo, SandboxStatus};

impl Manager {
    /// Pauses a running sandbox to files: device state (and RAM, for a clone that has never
    /// been paused) saved, QEMU ended, slot released (reset after the answer), files durable.
    /// Waits up to [`PAUSE_WAITS_FOR_ACTIVITY`] for execs and file transfers under way to end,
    /// else refuses.
    pub async fn pause(&self, id: &str) -> Result<SandboxInfo, SandboxError> {
        let id = id.to_string();
        self.run_to_end("pause", move |m| async move { m.pause_now(&id).await })
            .await
    }

    async fn pause_now(&self, id: &str) -> Result<SandboxInfo, SandboxError> {
        let e = self.entry(id)?;
        let mut inner = e.lock().await;
        ensure_present(&inner.rec)?;
        expect_status(&inner.rec, SandboxStatus::Running)?;
        wait_idle(&e).await?;
        self.save_and_stop(&mut inner).await?;
        Ok(info(&inner.rec))
    }

    /// The pause itself (also a snapshot's first step): intent, save, QEMU ended, files synced,
    /// `paused` recorded, the new state put in place. Before QEMU ends a failure lets the guest
    /// run on; after, the saved state is the sandbox: a failure there leaves it in `error` with
    /// its files kept (a restart finds the pause finished, see `recover.rs`).
    pub(super) async fn save_and_stop(&self, inner: &mut Inner) -> Result<(), SandboxError> {
        let dir = self.sandbox_dir(&inner.rec.id);
        let Some(vm) = inner.vm.take() else {
            return Err(SandboxError::Internal(format!(
                "running sandbox {} has no VM",
                inner.rec.id
            )));
        };
        let envd = inner.envd.take();
        let next = dir.join(NEXT_STATE_FILE);
        let t0 = std::time::Instant::now();
        let saved = async {
            inner.rec.op = Some(Op::Pausing);
            records::write_json(&dir.join("sandbox.json"), &inner.rec)
                .map_err(io("write record"))?;
            self.fail("agent.pause.after_intent").await?;
            vm.save(&next).await?;
            self.fail("agent.pause.after_save").await
        }
        .await;
        if let Err(e) = saved {
            // The guest is stopped (or was never stopped) but intact: let it run on.
            let _ = vm.cont().await;
            let _ = std::fs::remove_file(&next);
            inner.vm = Some(vm);
            inner.envd = envd;
            inner.rec.op = None;
            if let Err(w) = records::write_json(&dir.join("sandbox.json"), &inner.rec) {
                tracing::warn!(sandbox = %inner.rec.id, "recording the pause undone: {w}");
            }
            return Err(e);
        }
        let t_saved = t0.elapsed();
        // A stopped, saved guest writes no more RAM, and its disk was flushed when the save
        // ended: every file it is made of is synced while QEMU ends, side by side. The disk
        // overlay is synced once more after QEMU has ended, in case its exit wrote to it (a
        // sync with nothing to write is nearly free). The slot is reset (or removed) after
        // the answer: nothing of the pause depends on it, and it is handed out again only
        // once reset.
        let after_pause = inner.rec.ram.after_pause();
        let files = paused_files(&dir, after_pause, &inner.rec.layers);
        let overlay: Vec<PathBuf> = inner
            .rec
            .layers
            .last()
            .map(|l| dir.join(l))
            .into_iter()
            .collect();
        let slot = inner.slot.take();
        inner.rec.slot = None;
        inner.rec.host_ip.clear();
        let id = inner.rec.id.clone();
        let ended = async {
            vm.quit().await?;
            let t_quit = t0.elapsed();
            if let Some(slot) = slot {
                if let Err(e) = self.pool.release_in_background(slot) {
                    tracing::warn!(sandbox = %id, "releasing network slot: {e}");
                }
            }
            self.fail("agent.pause.after_stop").await?;
            sync_files(overlay).await?;
            Ok::<_, SandboxError>(t_quit)
        };
        let (ended, synced) = tokio::join!(ended, sync_files(files));
        let finished = match (ended, synced) {
            (Ok(t_quit), Ok(())) => {
                let t_synced = t0.elapsed();
                let r = self.finish_pause(inner, &dir, after_pause);
                tracing::debug!(
                    sandbox = %inner.rec.id,
                    "saved {t_saved:?}, QEMU ended {t_quit:?}, files synced {t_synced:?}, \
                     paused {:?}",
                    t0.elapsed()
                );
                r
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        if let Err(e) = finished {
            mark_error_keep_files(
                &dir,
                &mut inner.rec,
                format!("pause failed after its VM ended: {e}"),
            );
            return Err(e);
        }
        self.fail("agent.pause.after_record").await
    }

    /// Records a pause whose files are durable: `paused`, the new state put in place.
    fn finish_pause(
        &self,
        inner: &mut Inner,
        dir: &Path,
        ram: RamMode,
    ) -> Result<(), SandboxError> {
        inner.rec.ram = ram;
        inner.rec.status = SandboxStatus::Paused;
        inner.rec.op = None;
        records::write_json(&dir.join("sandbox.json"), &inner.rec).map_err(io("write record"))?;
        put_next_state_in_place(dir).map_err(io("put saved state in place"))
    }
}

/// Waits until no exec or file transfer is under way on the sandbox, up to
/// [`PAUSE_WAITS_FOR_ACTIVITY`]; a conflict if one still is. New ones wait for the lock the
/// caller holds.
pub(super) async fn wait_idle(e: &Entry) -> Result<(), SandboxError> {
    let deadline = std::time::Instant::now() + PAUSE_WAITS_FOR_ACTIVITY;
    while e.busy.load(Ordering::Acquire) > 0 {
        if std::time::Instant::now() > deadline {
            return Err(SandboxError::Conflict(
                "the sandbox has an exec or file transfer under way".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Makes a paused sandbox's files durable before it is recorded paused: the saved state, its
/// RAM file when the RAM is there, the disk overlay, and the directory.
pub(super) async fn sync_paused_files(dir: &Path, rec: &SandboxOnDisk) -> Result<(), SandboxError> {
    sync_files(paused_files(dir, rec.ram, &rec.layers)).await
}

/// The files a paused sandbox is made of, by its RAM mode and disk layers (as recorded once
/// paused), and its directory: the saved state, its RAM file when it has one of its own, its
/// disk overlay.
fn paused_files(dir: &Path, ram: RamMode, layers: &[String]) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = vec![dir.join(NEXT_STATE_FILE)];
    if ram == RamMode::OwnFile {
        files.push(dir.join(OWN_RAM_FILE));
    }
    files.extend(layers.last().map(|top| dir.join(top)));
    files.push(dir.to_path_buf());
    files
}

/// Syncs `files` to disk, each on a thread of its own (a filesystem serves concurrent syncs
/// together); a missing one is skipped. All have ended when this returns.
async fn sync_files(files: Vec<PathBuf>) -> Result<(), SandboxError> {
    let syncs = files.into_iter().map(|f| {
        blocking("sync paused files", move || {
            match std::fs::File::open(&f) {
                Ok(h) => h.sync_all().map_err(io("sync paused files"))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("sync paused files")(e)),
            }
            Ok::<(), SandboxError>(())
        })
    });
    futures_util::future::join_all(syncs)
        .await
        .into_iter()
        .collect()
}

/// Puts a finished pause's state (`state.next`) in place as `state`, if it is still there.
pub(super) fn put_next_state_in_place(dir: &Path) -> std::io::Result<()> {
    let next = dir.join(NEXT_STATE_FILE);
    if !next.exists() {
        return Ok(());
    }
    std::fs::rename(&next, dir.join("state"))?;
    std::fs::File::open(dir)?.sync_all()
}
