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
//!   or reserved range nor a network the host is directly connected to, and DNS only at the
//!   configured resolvers; IPv6 is off; a sandbox's own `allow_out` comes before those
//!   denials, its `deny_out` before everything the default lets pass;
//! - on the host ([`host_rules`], chains `WRENN-<prefix>-IN`, `-FWD`, `-OUT`, `-POST`): anything a
//!   sandbox sends to an address of the host itself is rejected unless it answers a connection
//!   the host opened (or is DNS to a resolver that is the host); a sandbox cannot reach another
//!   sandbox (`10.11.0.0/16`, `10.12.0.0/16`, or any veth of the prefix); traffic from outside
//!   towards a sandbox passes only as replies; a local process of any user but the agent's
//!   cannot connect to envd's port in a guest.
//!
//! Every rule carries the fingerprint of its set ([`ruleset`]). A thread of the pool checks the
//! host rules every [`NetConfig::rules_check_interval`], and the namespaces of up to
//! [`SLOTS_CHECKED_PER_ROUND`] slots in turn, and puts back whatever was flushed or changed.
//!
//! A [`SlotPool`] keeps `pool_size` slots ready (refilled by a background thread), hands them
//! out, resets or removes them on release, recovers the slots of still-running VMs after a
//! restart and removes everything of its prefix on [`SlotPool::shutdown`].

//!
//! Files: [`config`] (the pool's settings and their checks), [`error`] (`NetError`),
//! [`pool`] (handing out and refilling slots), [`release`] (taking them back), [`watch`] (the rules watcher),
//! [`leaks`] (finding what of a prefix is on the host), [`slot`] (one slot's resources),
//! [`egress`] and [`host_rules`] (the two layers of rules), [`policy`] (a sandbox's own
//! allow and deny lists, resolved, and the host's directly connected networks), [`ruleset`]
//! (rule fingerprints),
//! [`netns`] (entering a namespace).

mod config;
pub mod egress;
mod error;
mod host_rules;
mod leaks;
mod netns;
pub mod policy;
mod pool;
mod release;
mod ruleset;
mod slot;
#[cfg(test)]
mod tests;
mod watch;

pub use config::{NetConfig, MAX_PREFIX_LEN};
pub use egress::EgressPolicy;
pub use error::NetError;
pub use leaks::leftovers;
pub use policy::SandboxEgress;
pub use pool::SlotPool;
pub use slot::{Slot, MAX_INDEX, TAP_NAME};
pub use watch::SLOTS_CHECKED_PER_ROUND;
