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

#[cfg(test)]
mod tests;
mod vm;

pub(super) use vm::clone_files;

use super::records::ImageMeta;
use crate::net::Slot;
use crate::vmm::Vm;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
    /// Off until asked for: under TCG a refill costs seconds of CPU (restore, envd, the
    /// warm-up) after every create it serves, more than the ~0.5 s a hit saves when creates
    /// come back to back (`crates/wrenn-bench/README.md`, "The pool as a default").
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
    /// Where its RAM is ([`clone_files`] decides).
    pub ram: super::records::RamMode,
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
    /// Held by the refill task while it makes a clone and puts it in the pool (or gives it
    /// back), so turning the pools off waits for that clone and removes it too.
    refilling: tokio::sync::Mutex<()>,
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

/// The directory of the pooled clones in the data directory.
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
