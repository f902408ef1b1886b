//! [`NetConfig`], the settings of a slot pool (prefix, slot range, pool size, DNS resolvers,
//! rules check interval), and the checks that they fit the address plan and the interface
//! name length. Owns no host resources.

use std::net::Ipv4Addr;
use std::time::Duration;

use super::egress::EgressPolicy;
use super::slot::MAX_INDEX;
use super::NetError;

/// Longest allowed prefix: `<prefix>v<index>` must fit the 15 characters of an interface name.
pub const MAX_PREFIX_LEN: usize = 6;

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
    /// ([`egress::host_resolvers`](super::egress::host_resolvers)).
    pub dns_resolvers: Option<Vec<Ipv4Addr>>,
    /// How often the host rules (and, in turn, [`SLOTS_CHECKED_PER_ROUND`](super::SLOTS_CHECKED_PER_ROUND) slots' namespace
    /// rules) are checked and put back if something flushed or changed them.
    pub rules_check_interval: Duration,
    /// Names that a sandbox's `allow_out`/`deny_out` resolve to these addresses instead of
    /// through the host's resolver, like `/etc/hosts` lines (tests point names at addresses
    /// they own). Empty by default.
    pub static_hosts: Vec<(String, Ipv4Addr)>,
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
            static_hosts: Vec::new(),
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

    /// Whether `index` is in this pool's slot range.
    pub(super) fn contains(&self, index: u32) -> bool {
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
