//! One network slot: its names and addresses (derived from the prefix and index alone), the
//! rules of its namespace (its NAT plus the egress policy of [`super::egress`], installed as one
//! fingerprinted set that [`restore_rules`] checks and puts back), and the commands that create,
//! reset and tear it down. Knows nothing of pools or of host-wide rules (see
//! [`super::host_rules`]); never touches another index's resources.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmd::{self, CmdError};
use crate::guest;

use super::egress::{self, EgressPolicy, Ipv4Cidr};
use super::policy::SandboxEgress;
use super::ruleset::RuleSet;
use super::{netns, NetError};

/// Where `ip netns` keeps its named namespaces.
pub(crate) const NETNS_DIR: &str = "/run/netns";
/// The TAP device inside every slot's namespace that the VMM attaches the guest NIC to.
pub const TAP_NAME: &str = "tap0";
/// Highest slot index + 1 the address plan allows (the /30s of 10.12.0.0/16).
pub const MAX_INDEX: u32 = 16384;

/// A ready network namespace for one sandbox. Whoever holds it owns it and hands it back with
/// [`super::SlotPool::release`]; it is deliberately not `Clone`.
#[derive(Debug, PartialEq, Eq)]
pub struct Slot {
    /// Index of the slot; all names and addresses derive from it and the pool's prefix.
    pub index: u32,
    /// Name of the network namespace (`<prefix>-ns<index>`).
    pub netns: String,
    /// Path of the namespace file (`/run/netns/<netns>`), for `setns`.
    pub netns_path: PathBuf,
    /// The address at which the host reaches this sandbox (DNAT to the guest).
    pub host_ip: Ipv4Addr,
    /// The guest's own address inside the namespace (the same in every slot).
    pub guest_ip: Ipv4Addr,
    /// The TAP device inside the namespace for the guest NIC.
    pub tap: String,
    /// Host side of the veth pair (in the host's namespace).
    pub host_veth: String,
    /// Address of the host side of the veth pair.
    pub host_veth_ip: Ipv4Addr,
    /// Address of the namespace side of the veth pair.
    pub ns_veth_ip: Ipv4Addr,
}

impl Slot {
    /// Makes `command` start inside this slot's network namespace (QEMU, for instance), without
    /// `ip netns exec`. Fails if the namespace file cannot be opened.
    pub fn enter_netns_pre_exec(&self, command: &mut Command) -> std::io::Result<()> {
        netns::pre_exec_setns(command, &self.netns_path)
    }
}

/// Names and addresses of slot `index` of `prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Names {
    pub index: u32,
    pub netns: String,
    pub host_veth: String,
    pub peer_veth: String,
    pub host_veth_ip: Ipv4Addr,
    pub ns_veth_ip: Ipv4Addr,
    pub host_ip: Ipv4Addr,
}

impl Names {
    pub(crate) fn new(prefix: &str, index: u32) -> Names {
        let veth = |n: u32| {
            let v = index * 4 + n;
            Ipv4Addr::new(10, 12, (v >> 8) as u8, (v & 0xff) as u8)
        };
        Names {
            index,
            netns: format!("{prefix}-ns{index}"),
            host_veth: format!("{prefix}v{index}"),
            peer_veth: format!("{prefix}p{index}"),
            host_veth_ip: veth(1),
            ns_veth_ip: veth(2),
            host_ip: Ipv4Addr::new(10, 11, (index >> 8) as u8, (index & 0xff) as u8),
        }
    }

    pub(crate) fn netns_path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.netns)
    }

    pub(crate) fn slot(&self) -> Slot {
        Slot {
            index: self.index,
            netns: self.netns.clone(),
            netns_path: self.netns_path(),
            host_ip: self.host_ip,
            guest_ip: guest_ip(),
            tap: TAP_NAME.to_string(),
            host_veth: self.host_veth.clone(),
            host_veth_ip: self.host_veth_ip,
            ns_veth_ip: self.ns_veth_ip,
        }
    }
}

/// The guest address as a typed value.
pub(crate) fn guest_ip() -> Ipv4Addr {
    guest::GUEST_IP
        .parse()
        .expect("guest::GUEST_IP is a valid IPv4 address")
}

/// A script file for `ip -batch` or `iptables-restore`, removed when dropped.
pub(crate) fn script(contents: &str) -> Result<tempfile::NamedTempFile, std::io::Error> {
    let mut file = tempfile::Builder::new().prefix("wrenn-net-").tempfile()?;
    file.write_all(contents.as_bytes())?;
    file.flush()?;
    Ok(file)
}

/// Runs `program args… <script file>`; an I/O error writing the script becomes a spawn error.
pub(crate) fn run_script(
    program: &str,
    args: &[&str],
    contents: &str,
    netns: Option<&Path>,
) -> Result<Vec<u8>, CmdError> {
    let label = cmd::describe(program, args.iter().chain(&["<script>"]));
    let spawn_err = |source| CmdError::Spawn {
        command: label.clone(),
        source,
    };
    let file = script(contents).map_err(spawn_err)?;
    let mut command = Command::new(program);
    command.args(args).arg(file.path());
    if let Some(ns) = netns {
        netns::pre_exec_setns(&mut command, ns).map_err(spawn_err)?;
    }
    let label = format!("{label}\n{}", contents.trim_end());
    cmd::output(command, label).map(|o| o.stdout)
}

/// Creates slot `index` of `prefix`: namespace, veth pair, TAP, addresses, routes, the
/// namespace's rules (NAT and `policy`), forwarding on and IPv6 off. On failure everything
/// already created is removed again.
pub(crate) fn create(
    prefix: &str,
    index: u32,
    policy: &EgressPolicy,
    extra: Extra<'_>,
) -> Result<Slot, NetError> {
    let n = Names::new(prefix, index);
    match build(prefix, &n, policy, extra) {
        Ok(()) => Ok(n.slot()),
        Err(err) => {
            if let Err(cleanup) = destroy(prefix, index, false) {
                tracing::warn!(%cleanup, "removing a half-built network slot failed");
            }
            Err(err)
        }
    }
}

fn build(prefix: &str, n: &Names, policy: &EgressPolicy, extra: Extra<'_>) -> Result<(), NetError> {
    let step_err = |step: &'static str| {
        move |source| NetError::Slot {
            prefix: prefix.to_string(),
            index: n.index,
            step,
            source,
        }
    };
    let host = format!(
        "netns add {ns}\n\
         link add {hv} type veth peer name {pv} netns {ns}\n\
         addr add {hip}/30 dev {hv}\n\
         link set {hv} up\n\
         route add {host_ip}/32 via {nip} dev {hv}\n",
        ns = n.netns,
        hv = n.host_veth,
        pv = n.peer_veth,
        hip = n.host_veth_ip,
        nip = n.ns_veth_ip,
        host_ip = n.host_ip,
    );
    run_script("ip", &["-batch"], &host, None)
        .map_err(step_err("host side (namespace, veth, route)"))?;

    let inside = format!(
        "link set lo up\n\
         tuntap add {tap} mode tap\n\
         link set {tap} address {gwmac}\n\
         addr add {gw}/{plen} dev {tap}\n\
         link set {tap} up\n\
         addr add {nip}/30 dev {pv}\n\
         link set {pv} up\n\
         route add default via {hip} dev {pv}\n",
        tap = TAP_NAME,
        gw = guest::GUEST_GATEWAY,
        gwmac = guest::GATEWAY_MAC,
        plen = guest::GUEST_PREFIX,
        nip = n.ns_veth_ip,
        pv = n.peer_veth,
        hip = n.host_veth_ip,
    );
    // IPv6 off before any device of the namespace comes up (the TAP, created next, inherits
    // `default`), so none gets an IPv6 address even for a moment.
    let path = n.netns_path();
    netns::run_in(&path, || {
        disable_ipv6()?;
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
    })
    .and_then(|r| r)
    .map_err(|source| NetError::Io {
        what: format!(
            "disabling IPv6 and enabling forwarding in namespace {}",
            n.netns
        ),
        source,
    })?;
    run_script("ip", &["-n", &n.netns, "-batch"], &inside, None)
        .map_err(step_err("namespace devices (tap, veth, default route)"))?;
    install_rules(&path, &rules(n, policy, extra)).map_err(step_err("namespace rules"))?;
    Ok(())
}

/// The slot's `nat` table: the host reaches the guest at `host_ip`, the guest leaves as
/// `host_ip`.
fn nat_table(n: &Names) -> String {
    format!(
        "*nat\n\
         :PREROUTING ACCEPT [0:0]\n\
         :INPUT ACCEPT [0:0]\n\
         :OUTPUT ACCEPT [0:0]\n\
         :POSTROUTING ACCEPT [0:0]\n\
         -A PREROUTING -i {pv} -d {host_ip}/32 -j DNAT --to-destination {guest}\n\
         -A POSTROUTING -o {pv} -s {guest}/32 -j SNAT --to-source {host_ip}\n\
         COMMIT\n",
        pv = n.peer_veth,
        host_ip = n.host_ip,
        guest = guest::GUEST_IP,
    )
}

/// What a slot's egress rules are made of besides the pool's [`EgressPolicy`]: the host's
/// directly connected networks (denied) and the sandbox's own additions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Extra<'a> {
    pub host_nets: &'a [Ipv4Cidr],
    pub sandbox: &'a SandboxEgress,
}

/// Every rule of the slot's namespace: anti-spoofing (`raw`), NAT (`nat`) and the egress
/// policy (`filter`). The namespace holds nothing else, so the set owns these tables whole.
pub(crate) fn rules(n: &Names, policy: &EgressPolicy, extra: Extra<'_>) -> RuleSet {
    let script = format!(
        "{}{}{}",
        egress::raw_table(),
        nat_table(n),
        policy.filter_table(extra.host_nets, extra.sandbox)
    );
    RuleSet::new("wrenn-", &script)
}

/// Replaces the `raw`, `nat` and `filter` tables of the namespace at `path` with `rules`, in
/// one transaction (connections already tracked keep their NAT).
fn install_rules(path: &Path, rules: &RuleSet) -> Result<(), CmdError> {
    run_script("iptables-restore", &[], rules.script(), Some(path)).map(drop)
}

const IPV6_CONF: &str = "/proc/sys/net/ipv6/conf";

/// Turns IPv6 off on every interface of the calling thread's namespace, the TAP included
/// (the kernel then drops every IPv6 packet arriving on it). Nothing to do on a host without
/// IPv6.
fn disable_ipv6() -> std::io::Result<()> {
    if !Path::new(IPV6_CONF).exists() {
        return Ok(());
    }
    for dev in ["all", "default", TAP_NAME] {
        let file = Path::new(IPV6_CONF).join(dev).join("disable_ipv6");
        if dev == TAP_NAME && !file.exists() {
            continue;
        }
        std::fs::write(file, "1")?;
    }
    Ok(())
}

/// Whether IPv6 is off in the calling thread's namespace (everywhere and on the TAP).
fn ipv6_disabled() -> bool {
    ["all", TAP_NAME].iter().all(|dev| {
        match std::fs::read_to_string(Path::new(IPV6_CONF).join(dev).join("disable_ipv6")) {
            Ok(v) => v.trim() == "1",
            // No IPv6 on the host, or no TAP (then nothing arrives on it).
            Err(err) => err.kind() == std::io::ErrorKind::NotFound,
        }
    })
}

/// Checks that slot `index`'s namespace holds exactly its rules for `policy` and `extra` and
/// has IPv6 off; puts back whatever differs. Returns whether anything had to be restored.
pub(crate) fn restore_rules(
    prefix: &str,
    index: u32,
    policy: &EgressPolicy,
    extra: Extra<'_>,
) -> Result<bool, NetError> {
    let n = Names::new(prefix, index);
    let path = n.netns_path();
    let step_err = |step: &'static str| {
        move |source| NetError::Slot {
            prefix: prefix.to_string(),
            index,
            step,
            source,
        }
    };
    let io_err = |source| NetError::Io {
        what: format!("entering namespace {}", n.netns),
        source,
    };
    let expected = rules(&n, policy, extra);
    let mut save = Command::new("iptables-save");
    netns::pre_exec_setns(&mut save, &path).map_err(io_err)?;
    let saved = cmd::output(save, format!("iptables-save (in {})", n.netns))
        .map_err(step_err("reading the namespace rules"))?
        .stdout;
    let rules_intact = expected.is_intact(&String::from_utf8_lossy(&saved), true);
    if !rules_intact {
        install_rules(&path, &expected).map_err(step_err("restoring the namespace rules"))?;
    }
    let ipv6_off = netns::run_in(&path, ipv6_disabled).map_err(io_err)?;
    if !ipv6_off {
        netns::run_in(&path, disable_ipv6)
            .and_then(|r| r)
            .map_err(|source| NetError::Io {
                what: format!("disabling IPv6 in namespace {}", n.netns),
                source,
            })?;
    }
    Ok(!(rules_intact && ipv6_off))
}

/// Removes slot `index` of `prefix`, whatever state it is in (also half-built or half-removed):
/// deleting the host veth deletes its peer and the route through it. Fails only if the
/// namespace or a veth end is still present afterwards.
pub(crate) fn destroy(prefix: &str, index: u32, conntrack: bool) -> Result<(), NetError> {
    let n = Names::new(prefix, index);
    // Deleting a veth waits for the kernel (tens of ms); forgetting the host's tracked
    // connections runs alongside it.
    let (removed, forgotten) = std::thread::scope(|scope| {
        let forget = conntrack.then(|| scope.spawn(|| forget_host_connections(prefix, &n)));
        let removed = remove_devices(prefix, &n);
        let forgotten = forget.map_or(Ok(()), joined);
        (removed, forgotten)
    });
    removed.and(forgotten)
}

fn remove_devices(prefix: &str, n: &Names) -> Result<(), NetError> {
    let script = format!(
        "link del {hv}\nlink del {pv}\nnetns del {ns}\n",
        hv = n.host_veth,
        pv = n.peer_veth,
        ns = n.netns
    );
    // With -force ip keeps going past the parts that are already gone; what counts is what is
    // left afterwards.
    let result = run_script("ip", &["-force", "-batch"], &script, None);
    let remaining = [
        Path::new("/sys/class/net").join(&n.host_veth),
        Path::new("/sys/class/net").join(&n.peer_veth),
        n.netns_path(),
    ]
    .into_iter()
    .any(|p| p.exists());
    if remaining {
        let source = result.err().unwrap_or_else(|| CmdError::Failed {
            command: format!("ip -force -batch (removing slot {})", n.index),
            status: "exit status: 0".into(),
            stderr: "namespace or veth still present after removal".into(),
        });
        return Err(NetError::Slot {
            prefix: prefix.to_string(),
            index: n.index,
            step: "teardown",
            source,
        });
    }
    Ok(())
}

/// Clears what a previous sandbox left in slot `slot`: the namespace's connection tracking
/// table, its neighbour entries on the TAP, and the host's tracked connections to and from the
/// slot's `host_ip`. Needs the `conntrack` tool.
pub(crate) fn reset(prefix: &str, slot: &Slot) -> Result<(), NetError> {
    let n = Names::new(prefix, slot.index);
    let step_err = |step: &'static str| {
        move |source| NetError::Slot {
            prefix: prefix.to_string(),
            index: slot.index,
            step,
            source,
        }
    };
    if !slot.netns_path.exists() {
        return Err(NetError::Slot {
            prefix: prefix.to_string(),
            index: slot.index,
            step: "reset",
            source: CmdError::Failed {
                command: format!("test -e {}", slot.netns_path.display()),
                status: "missing".into(),
                stderr: "the slot's namespace no longer exists".into(),
            },
        });
    }
    let mut flush = Command::new("conntrack");
    flush.arg("-F");
    netns::pre_exec_setns(&mut flush, &slot.netns_path).map_err(|source| NetError::Io {
        what: format!("opening namespace {}", slot.netns),
        source,
    })?;
    // The three clean-ups are independent; each costs a process start, so run them together.
    std::thread::scope(|scope| {
        let host = scope.spawn(|| forget_host_connections(prefix, &n));
        let neigh = scope.spawn(|| {
            cmd::run("ip", ["-n", &slot.netns, "neigh", "flush", "dev", TAP_NAME])
                .map(drop)
                .map_err(step_err("flushing the namespace's neighbour table"))
        });
        let inside = cmd::output(flush, format!("conntrack -F (in {})", slot.netns))
            .map(drop)
            .map_err(step_err("flushing the namespace's connection tracking"));
        let neigh = joined(neigh);
        let host = joined(host);
        inside.and(neigh).and(host)
    })
}

/// Deletes the host's tracked connections from and to the slot's `host_ip`.
fn forget_host_connections(prefix: &str, n: &Names) -> Result<(), NetError> {
    let ip = n.host_ip.to_string();
    let delete = |dir: &str| match cmd::run("conntrack", ["-D", dir, &ip]) {
        Ok(_) => Ok(()),
        // conntrack exits 1 when nothing matched.
        Err(CmdError::Failed { stderr, .. }) if stderr.contains(" 0 flow entries") => Ok(()),
        Err(source) => Err(NetError::Slot {
            prefix: prefix.to_string(),
            index: n.index,
            step: "forgetting the host's tracked connections",
            source,
        }),
    };
    std::thread::scope(|scope| {
        let replies = scope.spawn(|| delete("-d"));
        let outgoing = delete("-s");
        outgoing.and(joined(replies))
    })
}

/// The result of a scoped thread, passing on its panic.
fn joined<T>(handle: std::thread::ScopedJoinHandle<'_, T>) -> T {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn addresses_follow_the_plan() {
        let n = Names::new("wr", 0);
        assert_eq!(n.host_veth_ip, Ipv4Addr::new(10, 12, 0, 1));
        assert_eq!(n.ns_veth_ip, Ipv4Addr::new(10, 12, 0, 2));
        assert_eq!(n.host_ip, Ipv4Addr::new(10, 11, 0, 0));
        let n = Names::new("wr", 300);
        assert_eq!(n.host_veth_ip, Ipv4Addr::new(10, 12, 4, 177));
        assert_eq!(n.ns_veth_ip, Ipv4Addr::new(10, 12, 4, 178));
        assert_eq!(n.host_ip, Ipv4Addr::new(10, 11, 1, 44));
        let last = Names::new("abcdef", MAX_INDEX - 1);
        assert_eq!(last.ns_veth_ip, Ipv4Addr::new(10, 12, 255, 254));
        assert!(last.host_veth.len() <= 15 && last.peer_veth.len() <= 15);
        assert_eq!(last.netns_path(), Path::new("/run/netns/abcdef-ns16383"));
    }
}
