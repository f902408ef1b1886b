//! Network slots: one network namespace per sandbox with a TAP device for the guest NIC, a veth
//! pair to the host, and NAT so that the host reaches each guest at its own `host_ip` while every
//! guest keeps the same address ([`crate::guest::GUEST_IP`]). Owns the namespaces, veths, routes
//! and iptables rules whose names carry its configured prefix, the rules inside its namespaces,
//! and nothing else: it never touches another prefix's resources, the VMM, or anything running
//! inside a namespace.
//!
//! Address plan for slot `I`: veth /30 `10.12.0.0/16` + `4I` (host side `+1`, namespace side
//! `+2`), `host_ip` = `10.11.(I/256).(I%256)`. Inside the namespace `tap0` carries the guest's
//! gateway address; PREROUTING DNATs `host_ip` to the guest, POSTROUTING SNATs the guest to
//! `host_ip`. The host routes `host_ip/32` through the veth and masquerades sandbox traffic that
//! leaves through any other interface.
//!
//! Two layers of rules (docs/ARCHITECTURE.md, "Network policy"):
//! - in each slot's namespace ([`egress`], [`slot`]): only the guest's address may come from the
//!   TAP; the guest reaches neither the namespace nor a private, link-local, loopback, multicast
//!   or reserved range, and DNS only at the configured resolvers; IPv6 is off;
//! - on the host ([`host_rules`], chains `WRENN-<prefix>-IN`, `-FWD`, `-POST`): anything a
//!   sandbox sends to an address of the host itself is rejected unless it answers a connection
//!   the host opened (or is DNS to a resolver that is the host); a sandbox cannot reach another
//!   sandbox (`10.11.0.0/16`, `10.12.0.0/16`, or any veth of the prefix); traffic from outside
//!   towards a sandbox passes only as replies.
//!
//! Every rule carries the fingerprint of its set ([`ruleset`]). A thread of the pool checks the
//! host rules every [`NetConfig::rules_check_interval`], and the namespaces of up to
//! [`SLOTS_CHECKED_PER_ROUND`] slots in turn, and puts back whatever was flushed or changed.
//!
//! A [`SlotPool`] keeps `pool_size` slots ready (refilled by a background thread), hands them
//! out, resets or removes them on release, recovers the slots of still-running VMs after a
//! restart and removes everything of its prefix on [`SlotPool::shutdown`].

pub mod egress;
mod host_rules;
mod netns;
mod ruleset;
mod slot;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, VecDeque};
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

pub use egress::EgressPolicy;
pub use slot::{Slot, MAX_INDEX, TAP_NAME};

use crate::cmd::{self, CmdError};
use ruleset::RuleSet;
use slot::Names;

/// How many slots' namespace rules the watcher checks per round, in turn, so a round costs
/// the same with many sandboxes.
pub const SLOTS_CHECKED_PER_ROUND: usize = 8;

/// Longest allowed prefix: `<prefix>v<index>` must fit the 15 characters of an interface name.
pub const MAX_PREFIX_LEN: usize = 6;

/// A network slot failure, with the slot and step it happened in.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The configuration cannot work (bad prefix, slot range outside the address plan).
    #[error("invalid network slot configuration: {0}")]
    Config(String),
    /// Every slot index of the configured range is taken.
    #[error("no free network slot: all {max_slots} slots of prefix {prefix} are in use")]
    Exhausted {
        /// The pool's prefix.
        prefix: String,
        /// Size of the pool's slot range.
        max_slots: u32,
    },
    /// A command creating, resetting or removing one slot failed.
    #[error("network slot {index} of prefix {prefix}: {step}: {source}")]
    Slot {
        /// The pool's prefix.
        prefix: String,
        /// The slot's index.
        index: u32,
        /// What was being done.
        step: &'static str,
        /// The failed command, with its stderr.
        #[source]
        source: CmdError,
    },
    /// A command setting up or removing the prefix's host-wide rules failed.
    #[error("host network rules of prefix {prefix}: {step}: {source}")]
    Host {
        /// The pool's prefix.
        prefix: String,
        /// What was being done.
        step: &'static str,
        /// The failed command, with its stderr.
        #[source]
        source: CmdError,
    },
    /// A kernel file (a sysctl or a namespace file) could not be used.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The slot index is not one this pool can hand out or take back.
    #[error("network slot {index} of prefix {prefix}: {reason}")]
    Unknown {
        /// The pool's prefix.
        prefix: String,
        /// The slot's index.
        index: u32,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The pool has been shut down.
    #[error("the network slot pool of prefix {0} is shut down")]
    ShutDown(String),
    /// A blocking task running a slot operation did not complete.
    #[error("network slot task failed: {0}")]
    Task(String),
}

/// Configuration of a [`SlotPool`]. Pools that run at the same time on one host need different
/// prefixes and non-overlapping slot ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// Short name prefix of every namespace, link and chain (1–6 lowercase letters and digits,
    /// starting with a letter, without `v`, so one prefix's veth wildcard never matches another's
    /// links).
    pub prefix: String,
    /// First slot index of this pool.
    pub first_slot: u32,
    /// Number of slot indices this pool may use, starting at `first_slot`.
    pub max_slots: u32,
    /// How many ready slots to keep created in advance.
    pub pool_size: usize,
    /// The only addresses guests may send DNS to (UDP and TCP port 53); DNS to any other
    /// address is refused, and a resolver in a denied range is reachable on port 53 only.
    /// `None`: the host's name servers, as the guest images get them
    /// ([`egress::host_resolvers`]).
    pub dns_resolvers: Option<Vec<Ipv4Addr>>,
    /// How often the host rules (and, in turn, [`SLOTS_CHECKED_PER_ROUND`] slots' namespace
    /// rules) are checked and put back if something flushed or changed them.
    pub rules_check_interval: Duration,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            prefix: "wr".into(),
            // Index 0 would give the sandbox the host_ip 10.11.0.0.
            first_slot: 1,
            max_slots: 1024,
            pool_size: 4,
            dns_resolvers: None,
            rules_check_interval: Duration::from_secs(5),
        }
    }
}

impl NetConfig {
    /// Checks the prefix and that the slot range fits the address plan.
    pub fn validate(&self) -> Result<(), NetError> {
        validate_prefix(&self.prefix)?;
        if self.max_slots == 0 {
            return Err(NetError::Config("max_slots must be at least 1".into()));
        }
        if u64::from(self.first_slot) + u64::from(self.max_slots) > u64::from(MAX_INDEX) {
            return Err(NetError::Config(format!(
                "slots {}..{} exceed the address plan's {MAX_INDEX} slots",
                self.first_slot,
                u64::from(self.first_slot) + u64::from(self.max_slots)
            )));
        }
        if self.pool_size > self.max_slots as usize {
            return Err(NetError::Config(format!(
                "pool_size {} is larger than max_slots {}",
                self.pool_size, self.max_slots
            )));
        }
        for &ip in self.dns_resolvers.iter().flatten() {
            EgressPolicy::check_resolver(ip).map_err(NetError::Config)?;
        }
        if self.rules_check_interval.is_zero() {
            return Err(NetError::Config(
                "rules_check_interval must be longer than zero".into(),
            ));
        }
        Ok(())
    }

    fn contains(&self, index: u32) -> bool {
        index >= self.first_slot && index - self.first_slot < self.max_slots
    }
}

fn validate_prefix(prefix: &str) -> Result<(), NetError> {
    let ok = !prefix.is_empty()
        && prefix.len() <= MAX_PREFIX_LEN
        && prefix.starts_with(|c: char| c.is_ascii_lowercase())
        && prefix
            .chars()
            .all(|c| (c.is_ascii_lowercase() || c.is_ascii_digit()) && c != 'v');
    if ok {
        Ok(())
    } else {
        Err(NetError::Config(format!(
            "prefix {prefix:?} must be 1-{MAX_PREFIX_LEN} lowercase letters or digits, start \
             with a letter and contain no 'v'"
        )))
    }
}

#[derive(Default)]
struct State {
    /// Created slots waiting to be handed out.
    ready: VecDeque<Slot>,
    /// Every index that has resources or is being built (ready, in use, kept, being created).
    reserved: BTreeSet<u32>,
    /// Indices handed out (acquired or adopted) and not yet released.
    in_use: BTreeSet<u32>,
    /// Indices of a previous run's running VMs, waiting for [`SlotPool::adopt`].
    kept: BTreeSet<u32>,
    /// Slots the background thread is creating right now.
    creating: usize,
    /// The background thread must stop.
    stopping: bool,
    /// [`SlotPool::shutdown`] was called: nothing is handed out any more.
    closed: bool,
}

impl State {
    fn free_index(&self, cfg: &NetConfig) -> Option<u32> {
        (cfg.first_slot..cfg.first_slot + cfg.max_slots).find(|i| !self.reserved.contains(i))
    }

    /// Up to `n` indices of fully built slots (ready, in use or kept), from `first` upwards.
    fn built_from(&self, first: u32, n: usize) -> Vec<u32> {
        let ready: BTreeSet<u32> = self.ready.iter().map(|s| s.index).collect();
        let mut built: BTreeSet<u32> = self.in_use.union(&self.kept).copied().collect();
        built.extend(ready);
        built.range(first..).take(n).copied().collect()
    }
}

struct Inner {
    cfg: NetConfig,
    /// The egress policy every slot's namespace enforces.
    policy: EgressPolicy,
    /// The prefix's host rules.
    host_rules: RuleSet,
    /// Whether the `conntrack` tool is installed: released slots are then reset and reused.
    conntrack: bool,
    state: Mutex<State>,
    wake: Condvar,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn acquire(&self) -> Result<Slot, NetError> {
        let index = {
            let mut st = self.lock();
            if st.closed {
                return Err(NetError::ShutDown(self.cfg.prefix.clone()));
            }
            if let Some(slot) = st.ready.pop_front() {
                st.in_use.insert(slot.index);
                self.wake.notify_all();
                return Ok(slot);
            }
            let index = st
                .free_index(&self.cfg)
                .ok_or_else(|| NetError::Exhausted {
                    prefix: self.cfg.prefix.clone(),
                    max_slots: self.cfg.max_slots,
                })?;
            st.reserved.insert(index);
            index
        };
        let created = slot::create(&self.cfg.prefix, index, &self.policy);
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

    fn release(&self, slot: Slot) -> Result<(), NetError> {
        let reuse = {
            let mut st = self.lock();
            if !st.in_use.remove(&slot.index) {
                return Err(NetError::Unknown {
                    prefix: self.cfg.prefix.clone(),
                    index: slot.index,
                    reason: "released but not in use",
                });
            }
            self.conntrack && !st.closed && st.ready.len() + st.creating < self.cfg.pool_size
        };
        if reuse {
            match slot::reset(&self.cfg.prefix, &slot) {
                Ok(()) => {
                    let mut st = self.lock();
                    if !st.closed {
                        st.ready.push_back(slot);
                        self.wake.notify_all();
                        return Ok(());
                    }
                }
                Err(err) => tracing::warn!(%err, "resetting a network slot failed; removing it"),
            }
        }
        self.remove(slot.index)
    }

    /// Tears down a reserved index and frees it; on failure the index stays reserved so it is
    /// not handed out again while something of it is left.
    fn remove(&self, index: u32) -> Result<(), NetError> {
        let result = slot::destroy(&self.cfg.prefix, index, self.conntrack);
        let mut st = self.lock();
        if result.is_ok() {
            st.reserved.remove(&index);
        }
        self.wake.notify_all();
        result
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
                    if st.ready.len() + st.creating < self.cfg.pool_size {
                        if let Some(i) = st.free_index(&self.cfg) {
                            st.reserved.insert(i);
                            st.creating += 1;
                            break i;
                        }
                    }
                    st = self.wake.wait(st).unwrap_or_else(|e| e.into_inner());
                }
            };
            let created = slot::create(&self.cfg.prefix, index, &self.policy);
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

    /// The rules watcher: every `rules_check_interval` until told to stop, checks the host
    /// rules and the next [`SLOTS_CHECKED_PER_ROUND`] built slots (in index order, wrapping
    /// around), and puts back whatever differs from what was installed.
    fn watch_rules(&self) {
        let mut next = self.cfg.first_slot;
        loop {
            {
                let st = self.lock();
                let (st, _) = self
                    .wake
                    .wait_timeout_while(st, self.cfg.rules_check_interval, |st| !st.stopping)
                    .unwrap_or_else(|e| e.into_inner());
                if st.stopping {
                    return;
                }
            }
            let prefix = &self.cfg.prefix;
            match host_rules::restore(prefix, &self.host_rules) {
                Ok(true) => tracing::warn!(
                    prefix = %prefix,
                    "the host network rules had been removed or changed; restored them"
                ),
                Ok(false) => {}
                Err(err) => tracing::warn!(%err, "checking the host network rules failed"),
            }
            let batch = self.lock().built_from(next, SLOTS_CHECKED_PER_ROUND);
            for index in batch {
                next = index + 1;
                match slot::restore_rules(prefix, index, &self.policy) {
                    Ok(true) => tracing::warn!(
                        prefix = %prefix,
                        index,
                        "a network slot's rules had been removed or changed; restored them"
                    ),
                    Ok(false) => {}
                    // A slot removed while it was being checked is no failure.
                    Err(err) if !self.lock().built_from(index, 1).contains(&index) => {
                        tracing::debug!(%err, "checked a network slot while it was removed");
                    }
                    Err(err) => tracing::warn!(%err, "checking a network slot's rules failed"),
                }
            }
            if self.lock().built_from(next, 1).is_empty() {
                next = self.cfg.first_slot;
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
    inner: Arc<Inner>,
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
        let host_rules = host_rules::rules(&cfg.prefix, &policy.resolvers);
        host_rules::install(&cfg.prefix, &host_rules)?;
        // The kept slots' namespaces get the rules of this configuration (they may come from
        // an older agent, or another resolver list).
        for &index in &kept {
            if slot::restore_rules(&cfg.prefix, index, &policy)? {
                tracing::info!(index, "updated the rules of a kept network slot");
            }
        }
        let state = State {
            reserved: kept.clone(),
            kept,
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

    /// Takes a slot back once its VM has ended: resets it and returns it to the pool, or removes
    /// it (namespace, veths, route, tracked connections). Nothing of the old sandbox remains.
    pub async fn release(&self, slot: Slot) -> Result<(), NetError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.release(slot))
            .await
            .map_err(|e| NetError::Task(e.to_string()))?
    }

    /// Blocking form of [`SlotPool::release`].
    pub fn release_blocking(&self, slot: Slot) -> Result<(), NetError> {
        self.inner.release(slot)
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

/// One thing of a prefix found on the host.
struct Found {
    /// The slot it belongs to, if it belongs to one (host-wide rules do not).
    index: Option<u32>,
    /// Human-readable description.
    what: String,
}

/// Parses `<prefix><sep><digits>` into the index.
fn index_of(name: &str, prefix: &str, sep: &str) -> Option<u32> {
    let digits = name.strip_prefix(prefix)?.strip_prefix(sep)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 5 {
        return None;
    }
    digits.parse().ok()
}

/// Everything of `prefix` present on the host: namespaces, links, routes, rules and chains.
fn list(prefix: &str) -> Result<Vec<Found>, NetError> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(slot::NETNS_DIR) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(index) = index_of(&name, prefix, "-ns") {
                found.push(Found {
                    index: Some(index),
                    what: format!("network namespace {name}"),
                });
            }
        }
    }
    let links = std::fs::read_dir("/sys/class/net").map_err(|source| NetError::Io {
        what: "listing network interfaces".into(),
        source,
    })?;
    for entry in links.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(index) = index_of(&name, prefix, "v").or_else(|| index_of(&name, prefix, "p")) {
            found.push(Found {
                index: Some(index),
                what: format!("link {name}"),
            });
        }
    }
    let routes =
        cmd::run("ip", ["-o", "-4", "route", "show"]).map_err(|source| NetError::Host {
            prefix: prefix.to_string(),
            step: "listing routes",
            source,
        })?;
    for line in String::from_utf8_lossy(&routes).lines() {
        let mut words = line.split_whitespace();
        while let Some(w) = words.next() {
            if w == "dev" {
                if let Some(index) = words.next().and_then(|d| index_of(d, prefix, "v")) {
                    found.push(Found {
                        index: Some(index),
                        what: format!("route {}", line.trim()),
                    });
                }
                break;
            }
        }
    }
    for table in ["filter", "nat"] {
        for line in host_rules::saved(prefix, table)? {
            if !line.starts_with('#') && host_rules::is_ours(prefix, &line) {
                found.push(Found {
                    index: None,
                    what: format!("iptables {table}: {line}"),
                });
            }
        }
    }
    Ok(found)
}

/// Everything of `prefix` still present on the host (namespaces, links, routes, iptables rules
/// and chains), described one per line. Empty after [`SlotPool::shutdown`].
pub fn leftovers(prefix: &str) -> Result<Vec<String>, NetError> {
    Ok(list(prefix)?.into_iter().map(|f| f.what).collect())
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
