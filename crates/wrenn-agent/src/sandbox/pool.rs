//! Warm pools: per shape (template, vCPUs, memory) a few clones already restored, past their
//! first envd answer and stopped (vCPUs paused, QEMU alive, RAM resident) in ready network
//! slots, so a create takes one, continues it, sets its clock and answers, instead of
//! restoring a snapshot while the caller waits ([`Manager::create_from_pool`]).
//!
//! This file owns the pooled clones: making them (in `pool/<name>/`, one at a time, in a task
//! of its own that waits while creates are under way and runs the restore at low CPU
//! priority), handing one to a create (its directory renamed to the sandbox's, see
//! [`crate::vmm::Vm::moved_to`]), the sizes (each shape's target grows by one when a create of
//! it misses, up to [`PoolConfig::max_per_shape`], and falls by one each
//! [`PoolConfig::idle_shrink`] without a create, all within [`PoolConfig::memory_budget_mb`]),
//! draining a template's clones when it is deleted or replaced, and removing them all when the
//! agent stops or starts. Pooled clones count as committed memory in admission (`capacity.rs`)
//! but belong to no sandbox: the control plane never sees them, so no team's quota counts them.
//! A clone is an ordinary clone (jailed, in its cgroup); it must not touch sandboxes.

use super::records::{self, ImageMeta, RamMode, SandboxOnDisk, TEMPLATE_RAM_FILE};
use super::{blocking, disk, envd_for, io, pre_exec_in, spec_for, Manager, SandboxError};
use crate::net::Slot;
use crate::vmm::{self, Vm};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use wrenn_types::agent::SandboxStatus;

/// How big the warm pools may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Most clones kept ready for one shape; 0 turns the pools off.
    pub max_per_shape: usize,
    /// Memory all pooled clones together may commit (guest RAM plus per-VM overhead), MiB.
    pub memory_budget_mb: u64,
    /// A shape with no create for this long lowers its target by one (and gives back a clone).
    pub idle_shrink: Duration,
}

impl PoolConfig {
    /// No pool: every create restores its snapshot while the caller waits.
    pub const OFF: PoolConfig = PoolConfig {
        max_per_shape: 0,
        memory_budget_mb: 0,
        idle_shrink: Duration::from_secs(600),
    };

    /// Whether any clone is ever pooled.
    pub fn enabled(&self) -> bool {
        self.max_per_shape > 0 && self.memory_budget_mb > 0
    }
}

impl Default for PoolConfig {
    /// Off until asked for: a pooled clone's QEMU is named on its command line by its pool
    /// directory, not by the sandbox it becomes, and the soak and fault harnesses still find a
    /// sandbox's QEMU by that name.
    fn default() -> Self {
        PoolConfig::OFF
    }
}

impl PoolConfig {
    /// Sizes for a host with the pools on: up to `max_per_shape` clones a shape, 2 GiB in all,
    /// a shape idle for ten minutes gives one back.
    pub fn on(max_per_shape: usize) -> PoolConfig {
        PoolConfig {
            max_per_shape,
            memory_budget_mb: 2048,
            idle_shrink: Duration::from_secs(600),
        }
    }
}

/// What a pool is kept for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Shape {
    pub template: String,
    pub vcpus: u32,
    pub memory_mb: u32,
}

/// A clone waiting in the pool: stopped, in its slot, its files in `dir`.
pub(super) struct Pooled {
    pub dir: PathBuf,
    /// The snapshot image it was cloned from, and that image's `created_at` (a template
    /// replaced under the same name is another image).
    pub image_dir: PathBuf,
    pub image_created_at: String,
    pub layers: Vec<String>,
    pub vm: Vm,
    pub slot: Slot,
}

#[derive(Default)]
struct ShapeState {
    ready: Vec<Pooled>,
    target: usize,
    last_create: Option<Instant>,
    /// No refill before this (the last one failed).
    failing_until: Option<Instant>,
    hits: u64,
    misses: u64,
}

/// The pools of one agent.
#[derive(Default)]
pub(super) struct Pools {
    cfg: Mutex<Option<PoolConfig>>,
    shapes: Mutex<HashMap<Shape, ShapeState>>,
    wake: tokio::sync::Notify,
    /// Creates under way: refills wait for them to end.
    pub creates: AtomicUsize,
    /// Memory (MiB, overhead included) of the clone being made, if one is.
    making_mb: AtomicUsize,
}

/// The pooled counts of a host, for its host info.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolCounts {
    pub pooled: u32,
    pub pooled_memory_mb: u64,
}

/// A create under way (refills wait for none to be).
pub(super) struct CreateUnderWay<'a>(&'a AtomicUsize);

impl Drop for CreateUnderWay<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How a pooled clone's QEMU is named in the pool directory.
const POOL_DIR: &str = "pool";
/// A refill that failed is not tried again for this long.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);
/// How often the refill task looks at idle shapes.
const TICK: Duration = Duration::from_secs(5);
/// The CPU priority (nice) of a clone while it is restored for the pool.
const REFILL_NICE: i32 = 10;

impl Pools {
    pub(super) fn new(cfg: PoolConfig) -> Pools {
        Pools {
            cfg: Mutex::new(cfg.enabled().then_some(cfg)),
            ..Pools::default()
        }
    }

    /// The sizes, `None` when the pools are off.
    fn cfg(&self) -> Option<PoolConfig> {
        *self.cfg.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn shapes(&self) -> std::sync::MutexGuard<'_, HashMap<Shape, ShapeState>> {
        self.shapes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks a create under way until the guard is dropped.
    pub(super) fn create_started(&self) -> CreateUnderWay<'_> {
        self.creates.fetch_add(1, Ordering::AcqRel);
        CreateUnderWay(&self.creates)
    }

    /// Takes a ready clone of `shape` cloned from the image `image_dir` as it is now
    /// (`meta`), counting a hit; on a miss the shape's target grows and the refill task is
    /// woken. Clones of an older image are given back for removal.
    pub(super) fn take(
        &self,
        shape: &Shape,
        image_dir: &Path,
        meta: &ImageMeta,
    ) -> (Option<Pooled>, Vec<Pooled>) {
        let Some(cfg) = self.cfg() else {
            return (None, Vec::new());
        };
        let mut shapes = self.shapes();
        let st = shapes.entry(shape.clone()).or_default();
        st.last_create = Some(Instant::now());
        let (fresh, stale): (Vec<Pooled>, Vec<Pooled>) = std::mem::take(&mut st.ready)
            .into_iter()
            .partition(|p| p.image_dir == image_dir && p.image_created_at == meta.created_at);
        st.ready = fresh;
        let got = st.ready.pop();
        if got.is_some() {
            st.hits += 1;
        } else {
            st.misses += 1;
            st.target = (st.target + 1).min(cfg.max_per_shape);
        }
        drop(shapes);
        self.wake.notify_one();
        (got, stale)
    }

    /// Puts a new clone in its shape's pool, or gives it back when the shape no longer wants
    /// it.
    fn put(&self, shape: &Shape, p: Pooled) -> Option<Pooled> {
        let mut shapes = self.shapes();
        let st = shapes.entry(shape.clone()).or_default();
        if st.ready.len() < st.target {
            st.ready.push(p);
            return None;
        }
        Some(p)
    }

    /// A refill of `shape` failed: not tried again for a while.
    fn failed(&self, shape: &Shape) {
        if let Some(st) = self.shapes().get_mut(shape) {
            st.failing_until = Some(Instant::now() + RETRY_AFTER_FAILURE);
        }
    }

    /// Committed memory of the pooled clones (and of the one being made), MiB.
    pub(super) fn committed_mb(&self, overhead_mb: u64) -> u64 {
        let ready: u64 = self
            .shapes()
            .iter()
            .map(|(s, st)| st.ready.len() as u64 * (u64::from(s.memory_mb) + overhead_mb))
            .sum();
        ready + self.making_mb.load(Ordering::Acquire) as u64
    }

    /// The pooled counts.
    pub(super) fn counts(&self, overhead_mb: u64) -> PoolCounts {
        let pooled = self.shapes().values().map(|s| s.ready.len() as u32).sum();
        PoolCounts {
            pooled,
            pooled_memory_mb: self.committed_mb(overhead_mb),
        }
    }

    /// Removes every clone (of `template`, or all) from the pools and returns them; their
    /// shapes' targets fall to zero.
    fn drain(&self, template: Option<&str>) -> Vec<Pooled> {
        let mut out = Vec::new();
        for (shape, st) in self.shapes().iter_mut() {
            if template.is_none_or(|t| t == shape.template) {
                st.target = 0;
                out.append(&mut st.ready);
            }
        }
        out
    }

    /// The next shape to refill: below its target, not failing, within the budget.
    fn next_refill(&self, overhead_mb: u64) -> Option<Shape> {
        let cfg = self.cfg()?;
        let committed = self.committed_mb(overhead_mb);
        let now = Instant::now();
        self.shapes()
            .iter()
            .filter(|(_, st)| st.ready.len() < st.target)
            .filter(|(_, st)| st.failing_until.is_none_or(|t| t <= now))
            .filter(|(s, _)| {
                committed + u64::from(s.memory_mb) + overhead_mb <= cfg.memory_budget_mb
            })
            .min_by_key(|(_, st)| st.ready.len())
            .map(|(s, _)| s.clone())
    }

    /// Lowers the target of shapes idle for [`PoolConfig::idle_shrink`] by one and returns
    /// the clones now over their target.
    fn shrink_idle(&self) -> Vec<Pooled> {
        let Some(cfg) = self.cfg() else {
            return Vec::new();
        };
        let now = Instant::now();
        let mut out = Vec::new();
        for st in self.shapes().values_mut() {
            let idle = st
                .last_create
                .is_none_or(|t| now.duration_since(t) >= cfg.idle_shrink);
            if idle && st.target > 0 {
                st.target -= 1;
                st.last_create = Some(now);
            }
            while st.ready.len() > st.target {
                out.extend(st.ready.pop());
            }
        }
        out
    }
}

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
    pub(super) async fn pool_take(
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
    pub(super) async fn discard(&self, p: Pooled) {
        p.vm.kill().await;
        if let Err(e) = self.pool.release(p.slot).await {
            tracing::warn!("releasing a pooled clone's network slot: {e}");
        }
        let _ = std::fs::remove_dir_all(&p.dir);
    }

    /// Removes the pooled clones of `template` (deleted or replaced).
    pub(super) async fn pool_drain(&self, template: &str) {
        for p in self.pools.drain(Some(template)) {
            self.discard(p).await;
        }
    }

    /// Removes every pooled clone, keeping the targets (a create found no room); `false` when
    /// there was none.
    pub(super) async fn pool_make_room(&self) -> bool {
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

    /// Removes every pooled clone (the agent stops).
    pub async fn pool_shutdown(&self) {
        for p in self.pools.drain(None) {
            self.discard(p).await;
        }
    }

    /// Removes what a previous run left in `pool/`: its QEMUs killed, their cgroups and
    /// directories removed. Run at start, before the slot pool cleans up unused slots.
    pub(super) async fn clean_pool_dir(data_dir: &Path) {
        let root = data_dir.join(POOL_DIR);
        if let Ok(rd) = std::fs::read_dir(&root) {
            for e in rd.flatten() {
                let dir = e.path();
                super::lifecycle::kill_left_qemu(&dir).await;
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
    pub(super) fn start_pool_refiller(&self) {
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
        let layers = clone_files(dir, image_dir, meta).await?;
        // The QMP path QEMU is started with, so it is still known after the directory moves.
        std::fs::write(
            dir.join(vmm::ORIGIN_FILE),
            dir.join("qmp.sock").display().to_string(),
        )
        .map_err(io("write QMP origin"))?;
        let rec = pool_record(meta, &layers);
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
            envd.wait_ready(super::lifecycle::RESTORE_READY_TIMEOUT)
                .await?;
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
    pub(super) async fn create_from_pool(
        &self,
        inner: &mut super::Inner,
        dir: &Path,
        p: Pooled,
    ) -> Result<(), SandboxError> {
        let t0 = Instant::now();
        let Pooled {
            dir: pdir,
            layers,
            mut vm,
            slot,
            ..
        } = p;
        inner.rec.layers = layers;
        inner.rec.ram = RamMode::TemplateFile;
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
        inner.rec.status = SandboxStatus::Running;
        records::write_json(&dir.join("sandbox.json"), &inner.rec).map_err(io("write record"))?;
        let envd = inner.slot.as_ref().map(envd_for).transpose()?;
        let (Some(vm), Some(envd)) = (&inner.vm, envd) else {
            return Err(SandboxError::Internal("the pooled VM went away".into()));
        };
        vm.cont().await?;
        self.fail("agent.create.after_start").await?;
        if envd.set_clock(std::time::SystemTime::now()).await.is_err() {
            // A first connection refused while the guest's network wakes up: wait for envd.
            envd.wait_ready(super::lifecycle::RESTORE_READY_TIMEOUT)
                .await?;
            envd.set_clock(std::time::SystemTime::now()).await?;
        }
        tracing::debug!(sandbox = %inner.rec.id, "from the pool in {:?}", t0.elapsed());
        inner.envd = Some(envd);
        inner.rec.op = None;
        inner.rec.started_at = Some(super::now_rfc3339());
        inner.rec.error = None;
        records::write_json(&dir.join("sandbox.json"), &inner.rec).map_err(io("write record"))?;
        if let Some(vm) = &inner.vm {
            self.watch(&inner.rec.id, vm);
        }
        Ok(())
    }
}

/// Links a clone's files from a snapshot image into `dir` (its disk layers, the template's
/// RAM and state) and makes its own disk overlay on top; returns its layers.
pub(super) async fn clone_files(
    dir: &Path,
    image_dir: &Path,
    meta: &ImageMeta,
) -> Result<Vec<String>, SandboxError> {
    disk::link_layers(image_dir, dir, &meta.layers).map_err(io("link template disk"))?;
    disk::link(&image_dir.join("mem"), &dir.join(TEMPLATE_RAM_FILE))
        .map_err(io("link template RAM"))?;
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
    Ok(layers)
}

/// The record a pooled clone's VM is described by (no sandbox yet).
fn pool_record(meta: &ImageMeta, layers: &[String]) -> SandboxOnDisk {
    SandboxOnDisk {
        id: String::new(),
        template: meta.name.clone(),
        vcpus: meta.vcpus,
        memory_mb: meta.memory_mb,
        status: SandboxStatus::Pending,
        slot: None,
        host_ip: String::new(),
        ram: RamMode::TemplateFile,
        layers: layers.to_vec(),
        created_at: super::now_rfc3339(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> Shape {
        Shape {
            template: "minimal".into(),
            vcpus: 1,
            memory_mb: 256,
        }
    }

    fn meta() -> ImageMeta {
        ImageMeta {
            name: "minimal".into(),
            kind: "warm".into(),
            vcpus: 1,
            memory_mb: 256,
            layers: vec![],
            created_at: "t1".into(),
            source_key: String::new(),
        }
    }

    #[test]
    fn a_miss_raises_the_target_up_to_the_maximum_and_off_means_never() {
        let pools = Pools::new(PoolConfig {
            max_per_shape: 2,
            memory_budget_mb: 10_000,
            idle_shrink: Duration::from_secs(600),
        });
        assert!(pools.next_refill(64).is_none(), "no demand, no pool");
        for _ in 0..5 {
            let (got, stale) = pools.take(&shape(), Path::new("/img"), &meta());
            assert!(got.is_none() && stale.is_empty());
        }
        assert_eq!(pools.shapes().get(&shape()).unwrap().target, 2);
        assert_eq!(pools.shapes().get(&shape()).unwrap().misses, 5);
        assert_eq!(pools.next_refill(64), Some(shape()));

        let off = Pools::new(PoolConfig::OFF);
        let _ = off.take(&shape(), Path::new("/img"), &meta());
        assert!(off.next_refill(64).is_none());
        assert!(off.shapes().is_empty());
    }

    #[test]
    fn the_budget_bounds_refills() {
        let pools = Pools::new(PoolConfig {
            max_per_shape: 4,
            memory_budget_mb: 256 + 64 - 1,
            idle_shrink: Duration::from_secs(600),
        });
        let _ = pools.take(&shape(), Path::new("/img"), &meta());
        assert!(pools.next_refill(64).is_none(), "one clone is over budget");
        pools.making_mb.store(0, Ordering::Release);
        let pools = Pools::new(PoolConfig {
            memory_budget_mb: 256 + 64,
            ..pools.cfg().unwrap()
        });
        let _ = pools.take(&shape(), Path::new("/img"), &meta());
        assert_eq!(pools.next_refill(64), Some(shape()));
        pools.making_mb.store(320, Ordering::Release);
        assert!(
            pools.next_refill(64).is_none(),
            "the clone being made counts"
        );
        assert_eq!(pools.committed_mb(64), 320);
    }

    #[test]
    fn idle_shapes_shrink_and_drain_zeroes_targets() {
        let pools = Pools::new(PoolConfig {
            max_per_shape: 3,
            memory_budget_mb: 10_000,
            idle_shrink: Duration::ZERO,
        });
        for _ in 0..3 {
            let _ = pools.take(&shape(), Path::new("/img"), &meta());
        }
        assert_eq!(pools.shapes().get(&shape()).unwrap().target, 3);
        assert!(pools.shrink_idle().is_empty());
        assert_eq!(pools.shapes().get(&shape()).unwrap().target, 2);
        assert!(pools.drain(Some("other")).is_empty());
        assert_eq!(pools.shapes().get(&shape()).unwrap().target, 2);
        assert!(pools.drain(Some("minimal")).is_empty());
        assert_eq!(pools.shapes().get(&shape()).unwrap().target, 0);
    }
}
