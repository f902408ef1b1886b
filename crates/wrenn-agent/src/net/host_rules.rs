//! Host-wide rules of one prefix: forwarding, masquerade for sandbox traffic leaving the host,
//! and the isolation chains that keep sandboxes away from the host's own services and from each
//! other. Everything lives in chains named `WRENN-<prefix>-…` plus one jump per built-in chain,
//! so several prefixes (agents) coexist and each removes only its own. Per-slot resources are
//! [`super::slot`]'s.

use crate::cmd::{self, CmdError};

use super::slot::run_script;
use super::NetError;

/// Source range of sandbox traffic as it reaches the host (each namespace SNATs its guest to
/// the slot's `host_ip`).
pub(crate) const HOST_IP_RANGE: &str = "10.11.0.0/16";
/// Range of the veth /30s.
pub(crate) const VETH_RANGE: &str = "10.12.0.0/16";

/// Chain names of a prefix.
pub(crate) fn chain(prefix: &str, part: &str) -> String {
    format!("WRENN-{prefix}-{part}")
}

/// The `iptables` wildcard matching every host-side veth of the prefix.
pub(crate) fn veth_wildcard(prefix: &str) -> String {
    format!("{prefix}v+")
}

fn host_err<'a>(prefix: &'a str, step: &'static str) -> impl Fn(CmdError) -> NetError + 'a {
    move |source| NetError::Host {
        prefix: prefix.to_string(),
        step,
        source,
    }
}

/// The rules script for `iptables-restore --noflush`.
pub(crate) fn rules(prefix: &str) -> String {
    let input = chain(prefix, "IN");
    let fwd = chain(prefix, "FWD");
    let post = chain(prefix, "POST");
    let v = veth_wildcard(prefix);
    format!(
        "*filter\n\
         :{input} - [0:0]\n\
         :{fwd} - [0:0]\n\
         -I INPUT 1 -i {v} -j {input}\n\
         -I FORWARD 1 -i {v} -j {fwd}\n\
         -I FORWARD 1 -o {v} -j {fwd}\n\
         -A {input} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n\
         -A {input} -j REJECT --reject-with icmp-port-unreachable\n\
         -A {fwd} -i {v} -o {v} -j DROP\n\
         -A {fwd} -i {v} -d {HOST_IP_RANGE} -j DROP\n\
         -A {fwd} -i {v} -d {VETH_RANGE} -j DROP\n\
         -A {fwd} -i {v} -j ACCEPT\n\
         -A {fwd} -o {v} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n\
         -A {fwd} -o {v} -j DROP\n\
         COMMIT\n\
         *nat\n\
         :{post} - [0:0]\n\
         -I POSTROUTING 1 -s {HOST_IP_RANGE} -j {post}\n\
         -A {post} -o {v} -j RETURN\n\
         -A {post} -j MASQUERADE\n\
         COMMIT\n"
    )
}

/// Installs the prefix's host rules (replacing any left by an earlier run) and turns on IPv4
/// forwarding.
pub(crate) fn install(prefix: &str) -> Result<(), NetError> {
    remove(prefix)?;
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|source| NetError::Io {
        what: "enabling IPv4 forwarding on the host".into(),
        source,
    })?;
    run_script("iptables-restore", &["--noflush"], &rules(prefix), None)
        .map_err(host_err(prefix, "installing the host rules"))?;
    Ok(())
}

/// Lines of `iptables-save -t <table>`.
pub(crate) fn saved(prefix: &str, table: &str) -> Result<Vec<String>, NetError> {
    let out = cmd::run("iptables-save", ["-t", table])
        .map_err(host_err(prefix, "reading the current rules"))?;
    Ok(String::from_utf8_lossy(&out)
        .lines()
        .map(str::to_string)
        .collect())
}

/// Whether a saved rule or chain line belongs to `prefix`.
pub(crate) fn is_ours(prefix: &str, line: &str) -> bool {
    let tag = format!("WRENN-{prefix}-");
    let v = format!(" {} ", veth_wildcard(prefix));
    line.contains(&tag) || format!("{line} ").contains(&v)
}

/// Removes the prefix's jumps, rules and chains from the filter and nat tables. Does nothing if
/// none are present.
pub(crate) fn remove(prefix: &str) -> Result<(), NetError> {
    let tag = format!("WRENN-{prefix}-");
    let mut script = String::new();
    for table in ["filter", "nat"] {
        let lines = saved(prefix, table)?;
        let mut deletes = Vec::new();
        let mut chains = Vec::new();
        for line in &lines {
            if let Some(decl) = line.strip_prefix(':') {
                let name = decl.split_whitespace().next().unwrap_or_default();
                if name.starts_with(&tag) {
                    chains.push(name.to_string());
                }
            } else if let Some(rule) = line.strip_prefix("-A ") {
                let chain_name = rule.split_whitespace().next().unwrap_or_default();
                if !chain_name.starts_with(&tag) && is_ours(prefix, line) {
                    deletes.push(format!("-D {rule}"));
                }
            }
        }
        if deletes.is_empty() && chains.is_empty() {
            continue;
        }
        script.push_str(&format!("*{table}\n"));
        for d in deletes {
            script.push_str(&d);
            script.push('\n');
        }
        for c in &chains {
            script.push_str(&format!("-F {c}\n"));
        }
        for c in &chains {
            script.push_str(&format!("-X {c}\n"));
        }
        script.push_str("COMMIT\n");
    }
    if script.is_empty() {
        return Ok(());
    }
    run_script("iptables-restore", &["--noflush"], &script, None)
        .map_err(host_err(prefix, "removing the host rules"))?;
    Ok(())
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn ownership_of_rules_is_by_prefix() {
        assert!(is_ours("wt1", "-A INPUT -i wt1v+ -j WRENN-wt1-IN"));
        assert!(is_ours("wt1", "-A FORWARD -o wt1v+ -j ACCEPT"));
        assert!(!is_ours("wt1", "-A INPUT -i wt12v+ -j WRENN-wt12-IN"));
        assert!(!is_ours("wt1", "-A INPUT -i eth0 -j ACCEPT"));
    }
}
