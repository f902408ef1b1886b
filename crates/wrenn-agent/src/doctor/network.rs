//! What network slots need from the kernel: `/dev/net/tun`, network namespaces (one is created,
//! given a TAP device, and deleted), iptables with the tables, match and targets the slot and
//! host rules use (tried inside that namespace, so the host's rules are only read), and IPv4
//! forwarding.

use super::Check;
use crate::cmd::{self, CmdError};

const TUN: &str = "/dev/net/tun";
const FORWARDING: &str = "/proc/sys/net/ipv4/ip_forward";

/// Rules of every kind the agent installs: a chain of its own, the conntrack match, REJECT,
/// DNAT and SNAT, MASQUERADE, a tcp match.
const RULES: &str = "*filter\n\
    :WRENN-DOCTOR - [0:0]\n\
    -I INPUT 1 -i doctorv+ -j WRENN-DOCTOR\n\
    -A WRENN-DOCTOR -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n\
    -A WRENN-DOCTOR -p tcp -m tcp --dport 53 -j ACCEPT\n\
    -A WRENN-DOCTOR -j REJECT --reject-with icmp-admin-prohibited\n\
    COMMIT\n\
    *nat\n\
    :WRENN-DOCTOR-POST - [0:0]\n\
    -A PREROUTING -i doctorp0 -d 10.11.0.1/32 -j DNAT --to-destination 172.16.0.2\n\
    -A POSTROUTING -o doctorp0 -s 172.16.0.2/32 -j SNAT --to-source 10.11.0.1\n\
    -I POSTROUTING 1 -s 10.11.0.0/16 -j WRENN-DOCTOR-POST\n\
    -A WRENN-DOCTOR-POST -j MASQUERADE\n\
    COMMIT\n";

pub fn tun_device() -> Check {
    use std::os::unix::fs::FileTypeExt;
    let name = TUN;
    match std::fs::metadata(TUN) {
        Ok(m) if m.file_type().is_char_device() => {
            match std::fs::OpenOptions::new().read(true).write(true).open(TUN) {
                Ok(_) => Check::ok(name, "present, opens read-write"),
                Err(e) => Check::fail(
                    name,
                    format!("does not open: {e}"),
                    "run as root; in a container, pass the device in (--device /dev/net/tun)",
                ),
            }
        }
        Ok(_) => Check::fail(
            name,
            "exists but is not a character device",
            "rm /dev/net/tun && mknod /dev/net/tun c 10 200",
        ),
        Err(e) => Check::fail(
            name,
            format!("missing ({e}): no TAP devices for guests"),
            "modprobe tun",
        ),
    }
}

/// Two lines: `network namespaces` (create one, a TAP device in it, delete it) and `iptables rules`
/// (the agent's kinds of rules loaded inside that namespace; the host's rules read).
pub fn namespace_and_rules(ip_runs: bool, iptables_runs: bool) -> Vec<Check> {
    const NS: &str = "network namespaces";
    const IPT: &str = "iptables rules";
    if !ip_runs {
        return vec![
            Check::fail(NS, "not tried: `ip` does not run", "see the `ip` line"),
            Check::fail(
                IPT,
                "not tried: needs a network namespace",
                "see the `ip` line",
            ),
        ];
    }
    let ns = format!("wrenn-doctor-{}", std::process::id());
    // A namespace of an earlier, killed run with the same pid.
    let _ = cmd::run("ip", ["netns", "del", &ns]);
    if let Err(e) = cmd::run("ip", ["netns", "add", &ns]) {
        return vec![
            Check::fail(
                NS,
                format!("cannot create one: {}", short(&e)),
                "run as root on a kernel with network namespaces; a container needs \
                 CAP_SYS_ADMIN and CAP_NET_ADMIN",
            ),
            Check::fail(
                IPT,
                "not tried: needs a network namespace",
                "see the line above",
            ),
        ];
    }
    let mut ns_check = match cmd::run(
        "ip",
        ["-n", &ns, "tuntap", "add", "dev", "tap0", "mode", "tap"],
    ) {
        Ok(_) => Check::ok(
            NS,
            format!("created {ns} with a TAP device in it, and deleted it"),
        ),
        Err(e) => Check::fail(
            NS,
            format!("created one, but no TAP device in it: {}", short(&e)),
            "modprobe tun",
        ),
    };
    let rules_check = if iptables_runs {
        iptables(&ns)
    } else {
        Check::fail(
            IPT,
            "not tried: iptables-restore does not run",
            "see the `iptables-restore` line",
        )
    };
    if let Err(e) = cmd::run("ip", ["netns", "del", &ns]) {
        ns_check = Check::fail(
            NS,
            format!("could not delete the test namespace {ns}: {}", short(&e)),
            format!("ip netns del {ns}"),
        );
    }
    vec![ns_check, rules_check]
}

fn iptables(ns: &str) -> Check {
    const IPT: &str = "iptables rules";
    let fix = "the kernel needs netfilter with conntrack and NAT (modules nf_conntrack, nf_nat, \
               xt_conntrack, nft_compat or ip_tables); a container needs CAP_NET_ADMIN";
    let file = match tempfile::NamedTempFile::new() {
        Ok(f) => f,
        Err(e) => return Check::fail(IPT, format!("no temporary file for the rules: {e}"), fix),
    };
    if let Err(e) = std::fs::write(file.path(), RULES) {
        return Check::fail(IPT, format!("cannot write the rules: {e}"), fix);
    }
    let path = file.path().to_string_lossy().into_owned();
    let load = [
        "netns",
        "exec",
        ns,
        "iptables-restore",
        "--noflush",
        path.as_str(),
    ];
    if let Err(e) = cmd::run("ip", load) {
        return Check::fail(
            IPT,
            format!("the rules of a network slot do not load: {}", short(&e)),
            fix,
        );
    }
    for table in ["filter", "nat"] {
        if let Err(e) = cmd::run("iptables-save", ["-t", table]) {
            return Check::fail(
                IPT,
                format!("cannot read the host's {table} table: {}", short(&e)),
                fix,
            );
        }
    }
    let backend = cmd::run("iptables", ["--version"])
        .map(|v| String::from_utf8_lossy(&v).trim().to_string())
        .unwrap_or_default();
    Check::ok(
        IPT,
        format!(
            "conntrack, REJECT, DNAT, SNAT and MASQUERADE rules load in a namespace; the host's \
             tables read ({backend})"
        ),
    )
}

pub fn forwarding() -> Check {
    let name = "IPv4 forwarding";
    match std::fs::read_to_string(FORWARDING).map(|s| s.trim().to_string()) {
        Ok(v) if v == "1" => Check::ok(name, "on"),
        Ok(_) => {
            if nix::unistd::access(FORWARDING, nix::unistd::AccessFlags::W_OK).is_ok() {
                Check::ok(name, "off now; the agent turns it on when it starts")
            } else {
                Check::fail(
                    name,
                    format!("off, and {FORWARDING} is not writable here"),
                    "sysctl -w net.ipv4.ip_forward=1 as root (in a container: on its host)",
                )
            }
        }
        Err(e) => Check::fail(
            name,
            format!("cannot read {FORWARDING}: {e}"),
            "a kernel with IPv4 networking and /proc mounted",
        ),
    }
}

/// A command error in one line: the spawn error, or the command's stderr without the command.
fn short(e: &CmdError) -> String {
    match e {
        CmdError::Spawn { source, .. } => source.to_string(),
        CmdError::Failed { stderr, status, .. } if stderr.is_empty() => status.clone(),
        CmdError::Failed { stderr, .. } => stderr.lines().collect::<Vec<_>>().join(" / "),
    }
}
