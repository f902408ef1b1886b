//! The sandbox manager: owns every sandbox of this host through its whole life — create (a
//! copy-on-write clone of a warm snapshot), pause to files, resume, snapshot into a template,
//! destroy — and finds them again after the agent restarts.
//!
//! It combines the VM layer ([`crate::vmm`]), network slots ([`crate::net`]), disk layers
//! ([`disk`]) and envd ([`crate::envd_client`]); it holds no HTTP code (see [`crate::api`]).
//! Each sandbox's operations are serialised by its own lock, and each runs to its end in a task
//! of its own whatever happens to its caller (a client that gives up drops only its wait; a
//! second request for the sandbox waits for the first and then finds its result). An operation
//! records its intent ([`records::Op`]) in the sandbox's record before its first step that
//! cannot be taken back and its result after its last, so `recover.rs` can finish or undo it
//! after a crash. Every acquired resource (slot, QEMU, files) is released by the operation that
//! acquired it when that operation fails.
//!
//! One [`Manager`], its methods spread over files by job, each an `impl Manager` block:
//! - this file: the manager and its sandbox entries (lock and listing view), errors, lookups,
//!   and the small helpers the others share; it must not run an operation itself;
//! - `lifecycle.rs`: create, pause, resume, destroy, and noticing a QEMU that died;
//! - `templates.rs`: snapshot into a template, list and delete templates, publishing a
//!   finished directory;
//! - `warm.rs`: warm snapshots of base templates;
//! - `copy.rs`: a snapshot template's copy to or from another host (manifest, ranged reads,
//!   a copy under way, its checked commit);
//! - `pool/`: warm pools, clones restored ahead and stopped, which creates take;
//! - `recover.rs`: finding the sandboxes of a previous run after a restart;
//! - `capacity.rs`: the host's memory, the admission check, host info;
//! - `metrics.rs`: the resource samples of running sandboxes (a sampling task, bounded rings);
//! - [`records`] (the on-disk records) and [`disk`] (disk layers) are plain modules, not
//!   manager methods.
//!
//! Data directory layout:
//! - `sandboxes/<id>/`: `sandbox.json`, RAM file, `state`, disk layers, QMP socket, console log
//! - `templates/<name>/`: user snapshot templates (a snapshot image, see [`records`])
//! - `warm/<template>-<vcpus>x<mem>-<key>/`: warm snapshots of base templates
//! - `pool/<template>-<key>/`: pooled clones (renamed to `sandboxes/<id>/` when taken)
//! - `incoming/<name>/`: a template's copy under way from another host (not a template)

mod capacity;
mod copy;
pub mod disk;
mod lifecycle;
mod metrics;
mod network;
mod pause;
mod pool;
pub mod records;
mod recover;
mod templates;
mod warm;

pub use capacity::AdmissionConfig;
pub use pool::{PoolConfig, PoolCounts};
pub use warm::{WarmOutcome, WarmSpec};

use crate::envd_client::EnvdClient;
use crate::failpoints::Failpoints;
use crate::images::Images;
use crate::net::{Slot, SlotPool};
use crate::vmm::{self, Accel, Vm, VmSpec};
use records::SandboxOnDisk;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use wrenn_types::agent::{SandboxInfo, SandboxStatus};
use wrenn_types::envd::ENVD_PORT;

/// Limits on what a caller may ask for.
pub const MAX_VCPUS: u32 = 16;
pub const MIN_MEMORY_MB: u32 = 128;
pub const MAX_MEMORY_MB: u32 = 16384;

/// What the manager needs to run.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub data_dir: PathBuf,
    pub qemu_bin: PathBuf,
    pub accel: Accel,
    pub images: Images,
    /// Limits of admission against committed memory and free disk.
    pub admission: AdmissionConfig,
    /// Warm pools' sizes ([`PoolConfig::OFF`]: none).
    pub pool: PoolConfig,
}

/// A sandbox operation's failure; [`crate::api`] maps each to a status and error code.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The request is malformed or out of limits.
    #[error("{0}")]
    BadRequest(String),
    /// No sandbox with that id on this host.
    #[error("sandbox {0} not found")]
    NotFound(String),
    /// No template with that name on this host.
    #[error("template {0} not found")]
    TemplateNotFound(String),
    /// The sandbox is in the wrong state for the operation.
    #[error("{0}")]
    Conflict(String),
    /// A template or sandbox with that name already exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// Not enough memory on this host.
    #[error("{0}")]
    Capacity(String),
    /// The VM could not be started, saved or restored.
    #[error("VM: {0}")]
    Vm(#[from] vmm::VmError),
    /// A network slot could not be made or released.
    #[error("network: {0}")]
    Net(#[from] crate::net::NetError),
    /// envd inside the guest failed or did not answer.
    #[error("envd: {0}")]
    Envd(#[from] crate::envd_client::EnvdError),
    /// A disk layer could not be made.
    #[error("disk: {0}")]
    Disk(#[from] crate::cmd::CmdError),
    /// A file of the sandbox could not be read or written.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The operation's task failed (panicked) or a failure point failed it.
    #[error("{0}")]
    Internal(String),
}

impl From<crate::failpoints::Injected> for SandboxError {
    fn from(e: crate::failpoints::Injected) -> Self {
        SandboxError::Internal(e.to_string())
    }
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
    let context = context.into();
    move |source| SandboxError::Io { context, source }
}

/// Runs blocking work (`qemu-img`, network set-up) off the async threads and returns its result;
/// a task that panicked is an I/O error named by `context`.
async fn blocking<T, E>(
    context: &str,
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, SandboxError>
where
    T: Send + 'static,
    E: Into<SandboxError> + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(r) => r.map_err(Into::into),
        Err(e) => Err(SandboxError::Io {
            context: context.into(),
            source: std::io::Error::other(e),
        }),
    }
}

/// The live part of a sandbox, behind its lock.
struct Inner {
    rec: SandboxOnDisk,
    vm: Option<Vm>,
    slot: Option<Slot>,
    envd: Option<EnvdClient>,
}

/// One sandbox: its live part behind an operation lock, a copy of its public view that
/// listing reads without waiting for an operation (a resume may take seconds) to finish, and
/// the number of execs and file transfers under way (a pause waits for them, bounded).
struct Entry {
    inner: tokio::sync::Mutex<Inner>,
    view: Mutex<SandboxInfo>,
    busy: AtomicUsize,
}

impl Entry {
    fn new(inner: Inner) -> Arc<Entry> {
        Arc::new(Entry {
            view: Mutex::new(info(&inner.rec)),
            inner: tokio::sync::Mutex::new(inner),
            busy: AtomicUsize::new(0),
        })
    }

    /// Takes the operation lock; the view is refreshed when it is released.
    async fn lock(&self) -> Locked<'_> {
        Locked {
            guard: self.inner.lock().await,
            view: &self.view,
        }
    }

    fn view(&self) -> SandboxInfo {
        self.view.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// An exec or file transfer under way on a sandbox: held by the caller until it ends, so a
/// pause can wait for it ([`PAUSE_WAITS_FOR_ACTIVITY`]) instead of cutting it off.
pub struct Activity(Arc<Entry>);

impl Drop for Activity {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How long a pause waits for the execs and file transfers under way to end before it refuses
/// with a conflict (the control plane's reaper then leaves the sandbox running).
pub const PAUSE_WAITS_FOR_ACTIVITY: Duration = Duration::from_secs(5);

/// The operation lock of a sandbox; publishes the sandbox's view when dropped.
struct Locked<'a> {
    guard: tokio::sync::MutexGuard<'a, Inner>,
    view: &'a Mutex<SandboxInfo>,
}

impl std::ops::Deref for Locked<'_> {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.guard
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Inner {
        &mut self.guard
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        *self.view.lock().unwrap_or_else(|p| p.into_inner()) = info(&self.guard.rec);
    }
}

/// Owner of every sandbox and template on this host.
pub struct Manager {
    cfg: ManagerConfig,
    pool: Arc<SlotPool>,
    sandboxes: Mutex<HashMap<String, Arc<Entry>>>,
    /// One lock per warm snapshot, so concurrent first creates boot it once.
    warm_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Serialises template publication and deletion.
    template_lock: tokio::sync::Mutex<()>,
    /// Named failure points for tests (`WRENN_FAILPOINTS`).
    failpoints: Failpoints,
    /// Resource samples of running sandboxes (`metrics.rs`).
    samples: metrics::Samples,
    /// Creates and resumes admitted and under way (`capacity.rs`).
    admissions: capacity::Admissions,
    /// Pooled clones (`pool/`).
    pools: pool::Pools,
    me: Weak<Manager>,
}

fn now_rfc3339() -> String {
    wrenn_types::time::Timestamp::now().to_string()
}

/// Ids and template names: the one rule of `wrenn_types::names`, shared with the control plane.
pub fn valid_name(s: &str) -> bool {
    wrenn_types::names::valid_name(s)
}

impl Manager {
    fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.cfg.data_dir.join("sandboxes").join(id)
    }

    fn template_dir(&self, name: &str) -> PathBuf {
        self.cfg.data_dir.join("templates").join(name)
    }

    fn entry(&self, id: &str) -> Result<Arc<Entry>, SandboxError> {
        self.map()
            .get(id)
            .cloned()
            .ok_or_else(|| SandboxError::NotFound(id.to_string()))
    }

    /// The sandboxes; a panic elsewhere while it was held leaves the map as it was.
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Entry>>> {
        self.sandboxes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The failure points of this agent (armed from `WRENN_FAILPOINTS` at start).
    pub fn failpoints(&self) -> &Failpoints {
        &self.failpoints
    }

    /// Reaches the failure point `name` (see [`crate::failpoints`]).
    async fn fail(&self, name: &'static str) -> Result<(), SandboxError> {
        if let Some(wait) = self.failpoints.reach(name)? {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    /// Runs an operation in a task of its own, so it runs to its end even when the caller's
    /// future is dropped (a client that gives up); the caller waits for its result.
    async fn run_to_end<T, F, Fut>(&self, what: &str, op: F) -> Result<T, SandboxError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Manager>) -> Fut,
        Fut: std::future::Future<Output = Result<T, SandboxError>> + Send + 'static,
    {
        let me = self
            .me
            .upgrade()
            .ok_or_else(|| SandboxError::Internal("the agent is shutting down".into()))?;
        match tokio::spawn(op(me)).await {
            Ok(r) => r,
            Err(e) => Err(SandboxError::Internal(format!("{what} failed: {e}"))),
        }
    }

    /// The accelerator guests run with.
    pub fn accel(&self) -> Accel {
        self.cfg.accel
    }

    /// The slot pool (for tests that check nothing leaked).
    pub fn slot_pool(&self) -> &Arc<SlotPool> {
        &self.pool
    }

    /// Lists every sandbox on this host.
    pub async fn list(&self) -> Vec<SandboxInfo> {
        let entries: Vec<_> = self.map().values().cloned().collect();
        let mut out: Vec<SandboxInfo> = entries.iter().map(|e| e.view()).collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// One sandbox, with its disk's capacity when its writable layer is there.
    pub async fn get(&self, id: &str) -> Result<SandboxInfo, SandboxError> {
        let mut view = self.entry(id)?.view();
        view.disk_size_mb = disk::capacity_mb(&self.sandbox_dir(id));
        Ok(view)
    }

    /// The envd client of a running sandbox with nothing under way, and the mark of an exec or
    /// transfer about to use it: hold the [`Activity`] until that ends (a pause waits for it).
    pub async fn envd(&self, id: &str) -> Result<(EnvdClient, Activity), SandboxError> {
        let e = self.entry(id)?;
        let inner = e.lock().await;
        match (&inner.rec.status, &inner.envd, inner.rec.op) {
            (SandboxStatus::Running, Some(c), None) => {
                e.busy.fetch_add(1, Ordering::AcqRel);
                Ok((c.clone(), Activity(e.clone())))
            }
            (s, _, _) => Err(SandboxError::Conflict(format!(
                "sandbox {id} is {}, not running",
                s.as_str()
            ))),
        }
    }
}

impl Manager {
    /// Where the host reaches `port` of a running sandbox's guest (its slot's address; the
    /// slot's NAT forwards every port to the guest).
    pub async fn guest_addr(&self, id: &str, port: u16) -> Result<SocketAddr, SandboxError> {
        let e = self.entry(id)?;
        let inner = e.lock().await;
        match (&inner.rec.status, &inner.slot, inner.rec.op) {
            (SandboxStatus::Running, Some(slot), None) => {
                Ok(SocketAddr::new(slot.host_ip.into(), port))
            }
            (s, _, _) => Err(SandboxError::Conflict(format!(
                "sandbox {id} is {}, not running",
                s.as_str()
            ))),
        }
    }
}

/// A sandbox an operation found gone once it had the lock (destroyed, snapshotted or a failed
/// create while it waited).
fn ensure_present(rec: &SandboxOnDisk) -> Result<(), SandboxError> {
    if rec.status == SandboxStatus::Stopped {
        return Err(SandboxError::NotFound(rec.id.clone()));
    }
    Ok(())
}

fn envd_for(slot: &Slot) -> Result<EnvdClient, SandboxError> {
    Ok(EnvdClient::new(SocketAddr::new(
        slot.host_ip.into(),
        ENVD_PORT,
    ))?)
}

fn pre_exec_in(slot: &Slot) -> vmm::PreExec<'_> {
    Box::new(move |cmd| slot.enter_netns_pre_exec(cmd))
}

/// The VM spec of a sandbox from its record; its RAM file and mapping are the ones its RAM
/// mode starts with ([`records::RamMode::start`]).
fn spec_for(cfg: &ManagerConfig, dir: &Path, rec: &SandboxOnDisk, tap: &str) -> VmSpec {
    let ram = rec.ram.start();
    VmSpec {
        qemu_bin: cfg.qemu_bin.clone(),
        accel: cfg.accel,
        vcpus: rec.vcpus,
        memory_mb: rec.memory_mb,
        kernel: cfg.images.kernel.clone(),
        initrd: cfg.images.initrd.clone(),
        cmdline: vmm::kernel_cmdline(cfg.accel),
        mem_path: dir.join(ram.file),
        mem_mapping: ram.mapping,
        disk: dir.join(
            rec.layers
                .last()
                .map(String::as_str)
                .unwrap_or("disk.qcow2"),
        ),
        tap: tap.to_string(),
        mac: crate::guest::GUEST_MAC.into(),
        run_dir: dir.to_path_buf(),
    }
}

/// A conflict unless the sandbox is in state `want`.
fn expect_status(rec: &SandboxOnDisk, want: SandboxStatus) -> Result<(), SandboxError> {
    if rec.status == want {
        return Ok(());
    }
    Err(SandboxError::Conflict(format!(
        "sandbox {} is {}, not {}",
        rec.id,
        rec.status.as_str(),
        want.as_str()
    )))
}

/// Puts a sandbox in `error` keeping its files (disk, RAM, state): a guest that ran again after
/// a resume and then failed, or one lost mid-operation. Its record says so; destroy removes it.
fn mark_error_keep_files(dir: &Path, rec: &mut SandboxOnDisk, why: String) {
    rec.status = SandboxStatus::Error;
    rec.error = Some(why);
    rec.slot = None;
    rec.host_ip.clear();
    rec.op = None;
    if let Err(e) = records::write_json(&dir.join("sandbox.json"), rec) {
        tracing::warn!(sandbox = %rec.id, "recording error: {e}");
    }
}

/// Puts a sandbox whose VM is gone (QEMU died, or its network could not be restored) in
/// `error`, keeping its record, its disk layers (the user's files, as the guest last wrote
/// them) and its console log; the RAM, device state and runtime files are of a VM that no
/// longer exists and are removed. Destroy removes the rest.
fn mark_error(dir: &Path, rec: &mut SandboxOnDisk, why: String) {
    rec.status = SandboxStatus::Error;
    rec.error = Some(why);
    rec.slot = None;
    rec.host_ip.clear();
    rec.op = None;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if !kept_after_vm_loss(&e.file_name().to_string_lossy()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let _ = records::write_json(&dir.join("sandbox.json"), rec);
}

/// The files of a sandbox dir [`mark_error`] keeps.
fn kept_after_vm_loss(name: &str) -> bool {
    name == "sandbox.json"
        || name == "console.log"
        || (name.starts_with("disk-") && name.ends_with(".qcow2"))
}

fn info(rec: &SandboxOnDisk) -> SandboxInfo {
    SandboxInfo {
        id: rec.id.clone(),
        status: rec.status,
        template: rec.template.clone(),
        vcpus: rec.vcpus,
        memory_mb: rec.memory_mb,
        guest_ip: crate::guest::GUEST_IP.into(),
        host_ip: rec.host_ip.clone(),
        started_at: rec.started_at.clone(),
        error: rec.error.clone(),
        disk_size_mb: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> SandboxOnDisk {
        SandboxOnDisk {
            id: id.into(),
            template: "minimal".into(),
            vcpus: 1,
            memory_mb: 256,
            status: SandboxStatus::Pending,
            slot: None,
            host_ip: String::new(),
            ram: records::RamMode::TemplateFile,
            layers: vec![],
            created_at: now_rfc3339(),
            started_at: None,
            error: None,
            op: None,
            network: None,
        }
    }

    #[tokio::test]
    async fn view_is_readable_during_an_operation_and_follows_it() {
        let e = Entry::new(Inner {
            rec: record("sb-1"),
            vm: None,
            slot: None,
            envd: None,
        });
        let mut op = e.lock().await;
        op.rec.status = SandboxStatus::Running;
        op.rec.host_ip = "10.11.0.7".into();
        // While the operation holds the lock, the view answers at once with the last state.
        assert_eq!(e.view().status, SandboxStatus::Pending);
        drop(op);
        let v = e.view();
        assert_eq!(v.status, SandboxStatus::Running);
        assert_eq!(v.host_ip, "10.11.0.7");
    }

    #[test]
    fn a_lost_vm_keeps_the_record_disk_layers_and_console_only() {
        let dir = tempfile::tempdir().unwrap();
        let all = [
            "sandbox.json",
            "console.log",
            "disk-1.qcow2",
            "disk-2.qcow2",
            "mem",
            "state",
            "qmp.sock",
            "qemu.pid",
        ];
        for f in all {
            std::fs::write(dir.path().join(f), b"x").unwrap();
        }
        let mut rec = record("sb-1");
        rec.status = SandboxStatus::Running;
        rec.host_ip = "10.11.0.7".into();
        mark_error(dir.path(), &mut rec, "the VM stopped unexpectedly".into());
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "console.log",
                "disk-1.qcow2",
                "disk-2.qcow2",
                "sandbox.json"
            ]
        );
        let stored: SandboxOnDisk = records::read_json(&dir.path().join("sandbox.json")).unwrap();
        assert_eq!(stored.status, SandboxStatus::Error);
        assert!(stored.host_ip.is_empty());
    }

    #[test]
    fn names_are_path_and_shell_safe() {
        assert!(valid_name("sb-abc123"));
        assert!(valid_name("my.snap_1"));
        assert!(!valid_name(""));
        assert!(!valid_name("../x"));
        assert!(!valid_name(".hidden"));
        assert!(!valid_name("Upper"));
        assert!(!valid_name("a b"));
        assert!(!valid_name(&"a".repeat(64))); // one over the shared limit
    }
}
