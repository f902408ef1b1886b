//! The host-side rules of one prefix: forwarding, masquerade for sandbox traffic leaving the
//! host, and the isolation chains that keep sandboxes away from the host's own services and from
//! each other whatever their egress policy says. Everything lives in chains named
//! `WRENN-<prefix>-…` plus one jump per built-in chain, so several prefixes (agents) coexist and
//! each removes only its own. Every rule carries the fingerprint of the set
//! ([`super::ruleset`]), so [`restore`] can tell whether someone flushed or changed them.
//! Per-slot resources and the rules inside a slot's namespace are [`super::slot`]'s and
//! [`super::egress`]'s.

use std::net::Ipv4Addr;

use crate::cmd::{self, CmdError};

use super::ruleset::RuleSet;
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

/// The rules of `prefix` for `iptables-restore --noflush`, tagged with their fingerprint.
///
/// From a sandbox, the host itself answers only what the host opened, and DNS when a resolver
/// is one of the host's addresses; forwarded traffic may go neither to another veth of the
/// prefix, nor to any slot address, nor anywhere the host's own NAT redirects it (a port the
/// host publishes for a container is the host's service, too). The rest is the slot's egress
/// policy's to decide ([`super::egress`]). Towards a sandbox only replies pass. Sandbox traffic
/// leaving through any other interface is masqueraded.
///
/// envd's port in a guest is reachable only by processes of `agent_uid` (the agent's own user,
/// root): any other local user's connection to it is reset (chain `-OUT`). A process of the
/// agent's user can read the agent's files and memory anyway; entering a slot's namespace to
/// reach the guest directly needs root as well.
pub(crate) fn rules(prefix: &str, resolvers: &[Ipv4Addr], agent_uid: u32) -> RuleSet {
    let input = chain(prefix, "IN");
    let fwd = chain(prefix, "FWD");
    let out = chain(prefix, "OUT");
    let post = chain(prefix, "POST");
    let envd = wrenn_types::envd::ENVD_PORT;
    let v = veth_wildcard(prefix);
    let mut dns = String::new();
    for r in resolvers {
        for proto in ["udp", "tcp"] {
            dns.push_str(&format!(
                "-A {input} -d {r}/32 -p {proto} -m {proto} --dport 53 -j ACCEPT\n"
            ));
        }
    }
    let script = format!(
        "*filter\n\
         :{input} - [0:0]\n\
         :{fwd} - [0:0]\n\
         :{out} - [0:0]\n\
         -I INPUT 1 -i {v} -j {input}\n\
         -I OUTPUT 1 -o {v} -j {out}\n\
         -I FORWARD 1 -i {v} -j {fwd}\n\
         -I FORWARD 1 -o {v} -j {fwd}\n\
         -A {input} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n\
         {dns}\
         -A {input} -j REJECT --reject-with icmp-port-unreachable\n\
         -A {fwd} -i {v} -o {v} -j DROP\n\
         -A {fwd} -i {v} -d {HOST_IP_RANGE} -j DROP\n\
         -A {fwd} -i {v} -d {VETH_RANGE} -j DROP\n\
         -A {fwd} -i {v} -m conntrack --ctstate DNAT -j DROP\n\
         -A {fwd} -i {v} -j ACCEPT\n\
         -A {fwd} -o {v} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n\
         -A {fwd} -o {v} -j DROP\n\
         -A {out} -p tcp -m tcp --dport {envd} -m owner ! --uid-owner {agent_uid} -j REJECT \
         --reject-with tcp-reset\n\
         COMMIT\n\
         *nat\n\
         :{post} - [0:0]\n\
         -I POSTROUTING 1 -s {HOST_IP_RANGE} -j {post}\n\
         -A {post} -o {v} -j RETURN\n\
         -A {post} -j MASQUERADE\n\
         COMMIT\n"
    );
    RuleSet::new(&format!("WRENN-{prefix}-"), &script)
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Installs the prefix's host rules (replacing any left by an earlier run) and turns on IPv4
/// forwarding.
pub(crate) fn install(prefix: &str, rules: &RuleSet) -> Result<(), NetError> {
    remove(prefix)?;
    std::fs::write(IP_FORWARD, "1").map_err(|source| NetError::Io {
        what: "enabling IPv4 forwarding on the host".into(),
        source,
    })?;
    run_script("iptables-restore", &["--noflush"], rules.script(), None)
        .map_err(host_err(prefix, "installing the host rules"))?;
    Ok(())
}

/// Checks that the prefix's host rules are all present and unchanged and that IPv4 forwarding
/// is on; re-installs them if not. Returns whether anything had to be restored. Where the jumps
/// sit among other programs' rules is not checked.
pub(crate) fn restore(prefix: &str, rules: &RuleSet) -> Result<bool, NetError> {
    let out = cmd::run("iptables-save", std::iter::empty::<&str>())
        .map_err(host_err(prefix, "reading the current rules"))?;
    let forwarding = std::fs::read_to_string(IP_FORWARD).is_ok_and(|v| v.trim() == "1");
    if forwarding && rules.is_intact(&String::from_utf8_lossy(&out), false) {
        return Ok(false);
    }
    install(prefix, rules)?;
    Ok(true)
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

    #[test]
    fn host_rules_admit_resolvers_then_refuse_and_isolate_in_order() {
        let set = rules("wt1", &[Ipv4Addr::new(10, 0, 0, 53)], 0);
        let tag = set.tag().to_string();
        assert!(tag.starts_with("WRENN-wt1-"));
        let lines: Vec<String> = set
            .script()
            .lines()
            .filter(|l| l.starts_with('-'))
            .map(|l| l.replace(&format!(" -m comment --comment {tag}"), ""))
            .collect();
        assert_eq!(lines.len(), set.rules());
        assert!(lines.iter().all(|l| is_ours("wt1", l)));
        let of = |chain: &str| -> Vec<String> {
            lines
                .iter()
                .filter_map(|l| l.strip_prefix(&format!("-A {chain} ")))
                .map(str::to_string)
                .collect()
        };
        assert_eq!(
            of("WRENN-wt1-IN"),
            [
                "-m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
                "-d 10.0.0.53/32 -p udp -m udp --dport 53 -j ACCEPT",
                "-d 10.0.0.53/32 -p tcp -m tcp --dport 53 -j ACCEPT",
                "-j REJECT --reject-with icmp-port-unreachable",
            ]
        );
        assert_eq!(
            of("WRENN-wt1-FWD"),
            [
                "-i wt1v+ -o wt1v+ -j DROP",
                "-i wt1v+ -d 10.11.0.0/16 -j DROP",
                "-i wt1v+ -d 10.12.0.0/16 -j DROP",
                "-i wt1v+ -m conntrack --ctstate DNAT -j DROP",
                "-i wt1v+ -j ACCEPT",
                "-o wt1v+ -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
                "-o wt1v+ -j DROP",
            ]
        );
        assert_eq!(
            of("WRENN-wt1-POST"),
            ["-o wt1v+ -j RETURN", "-j MASQUERADE"]
        );
        // Only the agent's user reaches envd through the prefix's veths.
        assert!(lines.contains(&"-I OUTPUT 1 -o wt1v+ -j WRENN-wt1-OUT".to_string()));
        assert_eq!(
            of("WRENN-wt1-OUT"),
            [
                "-p tcp -m tcp --dport 49983 -m owner ! --uid-owner 0 -j REJECT --reject-with \
              tcp-reset"
            ]
        );
        // Other resolvers or another agent user, another fingerprint.
        assert_ne!(rules("wt1", &[], 0).tag(), tag);
        assert_ne!(
            rules("wt1", &[Ipv4Addr::new(10, 0, 0, 53)], 1000).tag(),
            tag
        );
    }
}
