//! [`SlotPool`]: the slots of one prefix. Hands slots out (ready ones first, else a new one, else
//! waits for one being released), keeps `pool_size` ready from a background thread, claims the
//! slots of VMs that outlived a restart, and removes everything of its prefix on shutdown.
//! Taking slots back is [`super::release`]'s; building and removing one slot is
//! [`super::slot`]'s; checking the rules is [`super::watch`]'s; finding what is on the host is
//! [`super::leaks`]'s.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use super::egress::Ipv4Cidr;
use super::leaks::list;
use super::policy::{self, SandboxEgress};
use super::release::RELEASE_WAIT;
use super::ruleset::RuleSet;
use super::slot::{self, Extra, Names, Slot};
use super::{host_rules, EgressPolicy, NetConfig, NetError};

#[derive(Default)]
pub(super) struct State {
    /// Created slots waiting to be handed out.
    pub(super) ready: VecDeque<Slot>,
    /// Every index that has resources or is being built (ready, in use, kept, being created).
    pub(super) reserved: BTreeSet<u32>,
    /// Indices handed out (acquired or adopted) and not yet released.
    pub(super) in_use: BTreeSet<u32>,
    /// Indices of a previous run's running VMs, waiting for [`SlotPool::adopt`].
    kept: BTreeSet<u32>,
    /// Slots the background thread is creating right now.
    pub(super) creating: usize,
    /// Released slots whose reset or removal is still under way (see
    /// [`SlotPool::release_in_background`]); their indices stay reserved until it ends.
    pub(super) releasing: usize,
    /// Of those, the ones being reset to go back to `ready`.
    pub(super) resetting: usize,
    /// The background thread must stop.
    pub(super) stopping: bool,
    /// [`SlotPool::shutdown`] was called: nothing is handed out any more.
    pub(super) closed: bool,
    /// The host's own addresses and its directly connected networks, as last read.
    pub(super) host_addrs: Vec<Ipv4Addr>,
    pub(super) host_nets: Vec<Ipv4Cidr>,
    /// The rules of slots in use whose sandbox has its own policy.
    pub(super) sandbox: HashMap<u32, SandboxEgress>,
}

impl State {
    fn free_index(&self, cfg: &NetConfig) -> Option<u32> {
        (cfg.first_slot..cfg.first_slot + cfg.max_slots).find(|i| !self.reserved.contains(i))
    }

    /// Up to `n` indices of fully built slots (ready, in use or kept), from `first` upwards.
    pub(super) fn built_from(&self, first: u32, n: usize) -> Vec<u32> {
        let ready: BTreeSet<u32> = self.ready.iter().map(|s| s.index).collect();
        let mut built: BTreeSet<u32> = self.in_use.union(&self.kept).copied().collect();
        built.extend(ready);
        built.range(first..).take(n).copied().collect()
    }
}

pub(super) struct Inner {
    pub(super) cfg: NetConfig,
    /// The egress policy every slot's namespace enforces.
    pub(super) policy: EgressPolicy,
    /// The prefix's host rules.
    pub(super) host_rules: RuleSet,
    /// Whether the `conntrack` tool is installed: released slots are then reset and reused.
    pub(super) conntrack: bool,
    state: Mutex<State>,
    pub(super) wake: Condvar,
}

impl Inner {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The host networks and slot `index`'s sandbox rules, as they are now.
    fn extra_of(&self, index: u32) -> (Vec<Ipv4Cidr>, SandboxEgress) {
        let st = self.lock();
        (
            st.host_nets.clone(),
            st.sandbox.get(&index).cloned().unwrap_or_default(),
        )
    }

    /// Checks slot `index`'s rules against what they should be now and puts them back.
    pub(super) fn restore_slot(&self, index: u32) -> Result<bool, NetError> {
        let (host_nets, sandbox) = self.extra_of(index);
        let extra = Extra {
            host_nets: &host_nets,
            sandbox: &sandbox,
        };
        slot::restore_rules(&self.cfg.prefix, index, &self.policy, extra)
    }

    fn create_slot(&self, index: u32) -> Result<Slot, NetError> {
        let (host_nets, sandbox) = self.extra_of(index);
        let extra = Extra {
            host_nets: &host_nets,
            sandbox: &sandbox,
        };
        slot::create(&self.cfg.prefix, index, &self.policy, extra)
    }

    fn set_sandbox_egress(&self, index: u32, egress: SandboxEgress) -> Result<(), NetError> {
        {
            let mut st = self.lock();
            if !st.in_use.contains(&index) {
                return Err(NetError::Unknown {
                    prefix: self.cfg.prefix.clone(),
                    index,
                    reason: "given sandbox rules but not in use",
                });
            }
            if egress.is_default() {
                st.sandbox.remove(&index);
            } else {
                st.sandbox.insert(index, egress);
            }
        }
        self.restore_slot(index).map(drop)
    }

    fn acquire(&self) -> Result<Slot, NetError> {
        let index = {
            let mut st = self.lock();
            let deadline = std::time::Instant::now() + RELEASE_WAIT;
            loop {
                if st.closed {
                    return Err(NetError::ShutDown(self.cfg.prefix.clone()));
                }
                if let Some(slot) = st.ready.pop_front() {
                    st.in_use.insert(slot.index);
                    self.wake.notify_all();
                    return Ok(slot);
                }
                if let Some(index) = st.free_index(&self.cfg) {
                    st.reserved.insert(index);
                    break index;
                }
                // Every index is taken, but a released slot may come back (reset) or be freed
                // (removed) in a moment: wait for that rather than refuse.
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if st.releasing == 0 || left.is_zero() {
                    return Err(NetError::Exhausted {
                        prefix: self.cfg.prefix.clone(),
                        max_slots: self.cfg.max_slots,
                    });
                }
                st = self
                    .wake
                    .wait_timeout(st, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        };
        let created = self.create_slot(index);
        let mut st = self.lock();
        match created {
            Ok(slot) if !st.closed => {
                st.in_use.insert(index);
                Ok(slot)
            }
            Ok(_) => {
                drop(st);
                let removed = slot::destroy(&self.cfg.prefix, index, self.conntrack);
                let mut st = self.lock();
                if removed.is_ok() {
                    st.reserved.remove(&index);
                }
                Err(NetError::ShutDown(self.cfg.prefix.clone()))
            }
            Err(err) => {
                st.reserved.remove(&index);
                Err(err)
            }
        }
    }

    /// The background refill loop: keeps `pool_size` slots ready until told to stop.
    fn refill(&self) {
        loop {
            let index = {
                let mut st = self.lock();
                loop {
                    if st.stopping {
                        return;
                    }
                    if st.ready.len() + st.creating + st.resetting < self.cfg.pool_size {
                        if let Some(i) = st.free_index(&self.cfg) {
                            st.reserved.insert(i);
                            st.creating += 1;
                            break i;
                        }
                    }
                    st = self.wake.wait(st).unwrap_or_else(|e| e.into_inner());
                }
            };
            let created = self.create_slot(index);
            let mut st = self.lock();
            st.creating -= 1;
            match created {
                Ok(slot) => st.ready.push_back(slot),
                Err(err) => {
                    st.reserved.remove(&index);
                    tracing::warn!(%err, "creating a network slot for the pool failed");
                    // Back off before trying again, unless told to stop.
                    let _ = self
                        .wake
                        .wait_timeout_while(st, Duration::from_secs(1), |st| !st.stopping);
                }
            }
        }
    }
}

/// A pool of network slots of one prefix. Create it with [`SlotPool::new`] or
/// [`SlotPool::start`]; end it with [`SlotPool::shutdown`]. Dropping it without shutdown only
/// stops the background thread and leaves every slot in place (as a crash would); the next
/// [`SlotPool::start`] with the same prefix cleans them up. Dropping waits for a slot the
/// background thread may be creating (about 10 ms) and for a rules check under way.
pub struct SlotPool {
    pub(super) inner: Arc<Inner>,
    /// The refill thread and the rules watcher.
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for SlotPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotPool")
            .field("cfg", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

impl SlotPool {
    /// Starts a pool with no slots to keep: removes every leftover of the prefix.
    pub fn new(cfg: NetConfig) -> Result<Arc<SlotPool>, NetError> {
        Self::start(cfg, &[])
    }

    /// Starts a pool after a restart: removes every slot of the prefix that is not in `in_use`
    /// (the slots of VMs that are still running, to be claimed with [`SlotPool::adopt`]),
    /// (re)installs the host rules and the kept slots' rules, and starts filling the pool and
    /// watching the rules. Blocks while cleaning up.
    pub fn start(cfg: NetConfig, in_use: &[u32]) -> Result<Arc<SlotPool>, NetError> {
        cfg.validate()?;
        let mut kept = BTreeSet::new();
        for &index in in_use {
            if !cfg.contains(index) {
                return Err(NetError::Unknown {
                    prefix: cfg.prefix.clone(),
                    index,
                    reason: "kept slot is outside the configured slot range",
                });
            }
            kept.insert(index);
        }
        let mut stale = BTreeSet::new();
        for item in list(&cfg.prefix)? {
            if let Some(index) = item.index {
                if !kept.contains(&index) {
                    stale.insert(index);
                }
            }
        }
        let conntrack = program_exists("conntrack");
        for index in stale {
            slot::destroy(&cfg.prefix, index, conntrack)?;
        }
        let policy = EgressPolicy::new(cfg.dns_resolvers.as_deref());
        if policy.resolvers.is_empty() {
            tracing::warn!(
                "no IPv4 DNS resolver configured or found on the host: guests get no DNS"
            );
        }
        let host_rules = host_rules::rules(
            &cfg.prefix,
            &policy.resolvers,
            nix::unistd::geteuid().as_raw(),
        );
        host_rules::install(&cfg.prefix, &host_rules)?;
        let (host_addrs, host_nets) = policy::host_networks();
        // The kept slots' namespaces get the rules of this configuration (they may come from
        // an older agent, or another resolver list); a sandbox's own rules come back when the
        // agent claims its slot ([`SlotPool::set_sandbox_egress`]).
        for &index in &kept {
            let extra = Extra {
                host_nets: &host_nets,
                sandbox: &SandboxEgress::default(),
            };
            if slot::restore_rules(&cfg.prefix, index, &policy, extra)? {
                tracing::info!(index, "updated the rules of a kept network slot");
            }
        }
        let state = State {
            reserved: kept.clone(),
            kept,
            host_addrs,
            host_nets,
            ..State::default()
        };
        let inner = Arc::new(Inner {
            cfg,
            policy,
            host_rules,
            conntrack,
            state: Mutex::new(state),
            wake: Condvar::new(),
        });
        let pool = Arc::new(SlotPool {
            inner: Arc::clone(&inner),
            workers: Mutex::new(Vec::new()),
        });
        for (name, body) in [
            ("netslots", Inner::refill as fn(&Inner)),
            ("netrules", Inner::watch_rules),
        ] {
            let worker_inner = Arc::clone(&inner);
            let handle = std::thread::Builder::new()
                .name(format!("{name}-{}", inner.cfg.prefix))
                .spawn(move || body(&worker_inner))
                .map_err(|source| NetError::Io {
                    what: format!("starting the {name} thread"),
                    source,
                })?;
            pool.workers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(handle);
        }
        Ok(pool)
    }

    /// The egress policy the pool's slots enforce (the resolvers guests may use).
    pub fn egress_policy(&self) -> &EgressPolicy {
        &self.inner.policy
    }

    /// The pool's configuration.
    pub fn config(&self) -> &NetConfig {
        &self.inner.cfg
    }

    /// Whether released slots are reset and reused (the `conntrack` tool is installed) rather
    /// than always removed.
    pub fn reuses_slots(&self) -> bool {
        self.inner.conntrack
    }

    /// Hands out a ready slot, or creates one if none is ready.
    pub async fn acquire(&self) -> Result<Slot, NetError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.acquire())
            .await
            .map_err(|e| NetError::Task(e.to_string()))?
    }

    /// Blocking form of [`SlotPool::acquire`].
    pub fn acquire_blocking(&self) -> Result<Slot, NetError> {
        self.inner.acquire()
    }

    /// Claims a slot kept at [`SlotPool::start`] for a VM that survived the restart.
    pub fn adopt(&self, index: u32) -> Result<Slot, NetError> {
        let mut st = self.inner.lock();
        let unknown = |reason| NetError::Unknown {
            prefix: self.inner.cfg.prefix.clone(),
            index,
            reason,
        };
        if !st.kept.contains(&index) {
            return Err(unknown("not kept at start (or already adopted)"));
        }
        let slot = Names::new(&self.inner.cfg.prefix, index).slot();
        if !slot.netns_path.exists() {
            return Err(unknown("its namespace no longer exists"));
        }
        st.kept.remove(&index);
        st.in_use.insert(index);
        Ok(slot)
    }

    /// Gives slot `index` (handed out, not yet released) its sandbox's own rules, or the
    /// default ones for [`SandboxEgress::default`], and installs them at once. They stay until
    /// the slot is released; the rules watcher puts them back like any slot's.
    pub async fn set_sandbox_egress(
        &self,
        index: u32,
        egress: SandboxEgress,
    ) -> Result<(), NetError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.set_sandbox_egress(index, egress))
            .await
            .map_err(|e| NetError::Task(e.to_string()))?
    }

    /// Blocking form of [`SlotPool::set_sandbox_egress`].
    pub fn set_sandbox_egress_blocking(
        &self,
        index: u32,
        egress: SandboxEgress,
    ) -> Result<(), NetError> {
        self.inner.set_sandbox_egress(index, egress)
    }

    /// The host's own IPv4 addresses, as last read (no sandbox may be allowed to reach them).
    pub fn host_addresses(&self) -> Vec<Ipv4Addr> {
        self.inner.lock().host_addrs.clone()
    }

    /// Indices handed out and not yet released.
    pub fn in_use(&self) -> Vec<u32> {
        self.inner.lock().in_use.iter().copied().collect()
    }

    /// Number of ready slots right now.
    pub fn ready(&self) -> usize {
        self.inner.lock().ready.len()
    }

    /// Things of this prefix that no slot of the pool accounts for (and, after shutdown,
    /// anything at all of the prefix). Empty when nothing leaks.
    pub fn leftovers(&self) -> Result<Vec<String>, NetError> {
        let (reserved, closed) = {
            let st = self.inner.lock();
            (st.reserved.clone(), st.closed)
        };
        Ok(list(&self.inner.cfg.prefix)?
            .into_iter()
            .filter(|item| match item.index {
                Some(index) => !reserved.contains(&index),
                None => closed,
            })
            .map(|item| item.what)
            .collect())
    }

    /// Stops refilling and watching the rules and removes the ready (idle) slots, keeping the
    /// slots in use and the host rules, so VMs left running for the next agent keep their
    /// network. For a clean agent shutdown that leaves nothing idle behind.
    pub fn close_idle(&self) -> Result<(), NetError> {
        self.stop_worker();
        self.inner.wait_released();
        let idle: Vec<u32> = {
            let mut st = self.inner.lock();
            st.ready.drain(..).map(|slot| slot.index).collect()
        };
        let mut first_err = None;
        for index in idle {
            if let Err(err) = self.inner.remove(index) {
                first_err.get_or_insert(err);
            }
        }
        match first_err {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// Removes every slot (ready, in use or kept) and the prefix's host rules. Slots still held
    /// by callers become invalid; releasing them afterwards is an error.
    pub fn shutdown(&self) -> Result<(), NetError> {
        self.stop_worker();
        self.inner.wait_released();
        let indices: Vec<u32> = {
            let mut st = self.inner.lock();
            st.closed = true;
            st.ready.clear();
            st.in_use.clear();
            st.kept.clear();
            st.reserved.iter().copied().collect()
        };
        let mut first_err = None;
        for index in indices {
            if let Err(err) = self.inner.remove(index) {
                first_err.get_or_insert(err);
            }
        }
        // Anything of the prefix not accounted for (e.g. a slot created concurrently).
        let prefix = &self.inner.cfg.prefix;
        let stray: BTreeSet<u32> = list(prefix)?.into_iter().filter_map(|i| i.index).collect();
        for index in stray {
            if let Err(err) = slot::destroy(prefix, index, false) {
                first_err.get_or_insert(err);
            }
        }
        if let Err(err) = host_rules::remove(prefix) {
            first_err.get_or_insert(err);
        }
        match first_err {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// Stops the refill thread and the rules watcher.
    fn stop_worker(&self) {
        self.inner.lock().stopping = true;
        self.inner.wake.notify_all();
        let handles = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|e| e.into_inner()));
        for handle in handles {
            let _ = handle.join();
        }
    }
}

impl Drop for SlotPool {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

/// Whether `name` is an executable file in one of the `PATH` directories (or `/usr/sbin`,
/// `/sbin`, which a non-login root shell may lack).
fn program_exists(name: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|dir| is_executable(&dir.join(name)))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
