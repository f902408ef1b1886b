//! What one sandbox's egress rules add to the default policy: its own `allow_out` and
//! `deny_out` networks and whether it reaches the internet ([`SandboxEgress`], built from the
//! create request's [`SandboxNetwork`] by [`SandboxEgress::resolve`], which turns domain names
//! into addresses), and the networks the host is directly connected to ([`host_networks`]),
//! which no guest reaches by default. Owns the resolution and the reading of the host's
//! interfaces; the rules themselves are [`super::egress`]'s text, installed by
//! [`super::slot`].
//!
//! Domain rules are address rules: a name stands for the IPv4 addresses it resolved to when the
//! sandbox started (and at each later re-resolution), up to [`MAX_ADDRS_PER_NAME`] of them.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use wrenn_types::network::{parse_target, SandboxNetwork, Target};

use super::egress::{Ipv4Cidr, DENIED_BY_DEFAULT};
use crate::cmd;

/// Most addresses one domain name contributes to a sandbox's rules.
pub const MAX_ADDRS_PER_NAME: usize = 16;
/// How long one name's resolution may take.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// One sandbox's additions to the default egress policy, as addresses. The default value adds
/// nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxEgress {
    /// Reachable before any denial (the sandbox's `allow_out`).
    pub allow: Vec<Ipv4Cidr>,
    /// Refused before the default policy lets anything pass (its `deny_out`).
    pub deny: Vec<Ipv4Cidr>,
    /// Whether what no rule decides passes (the internet) or is refused.
    pub internet: bool,
}

impl Default for SandboxEgress {
    fn default() -> Self {
        SandboxEgress {
            allow: Vec::new(),
            deny: Vec::new(),
            internet: true,
        }
    }
}

/// Why a sandbox's policy cannot be applied: a bad entry (the tenant's fault) or a name that
/// did not resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError(pub String);

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl SandboxEgress {
    /// The rules of `network`: networks as given, names resolved (through `static_hosts`
    /// first, an `/etc/hosts`-like table of the agent's configuration, then the host's
    /// resolver). An allowed network that holds one of `host_addrs` (the host's own addresses)
    /// is refused; so is a name that resolves to none, or only to such, addresses.
    pub async fn resolve(
        network: &SandboxNetwork,
        static_hosts: &[(String, Ipv4Addr)],
        host_addrs: &[Ipv4Addr],
    ) -> Result<SandboxEgress, PolicyError> {
        network.validate().map_err(PolicyError)?;
        let mut out = SandboxEgress {
            internet: network.internet(),
            ..SandboxEgress::default()
        };
        for (allow, list) in [(true, &network.allow_out), (false, &network.deny_out)] {
            let mut nets = BTreeSet::new();
            for entry in list {
                match parse_target(entry).map_err(PolicyError)? {
                    Target::Net(addr, len) => {
                        let cidr = Ipv4Cidr::new(addr, len)
                            .ok_or_else(|| PolicyError(format!("{entry:?} is not a network")))?;
                        if allow && host_addrs.iter().any(|ip| cidr.contains(*ip)) {
                            return Err(PolicyError(format!(
                                "network.allow_out: {entry:?} holds an address of the host, \
                                 which no sandbox may reach"
                            )));
                        }
                        nets.insert(cidr);
                    }
                    Target::Name(name) => {
                        let mut addrs = lookup(&name.to_ascii_lowercase(), static_hosts).await?;
                        if allow {
                            addrs.retain(|ip| !host_addrs.contains(ip) && !reserved(*ip));
                        }
                        if addrs.is_empty() {
                            return Err(PolicyError(format!(
                                "{entry:?} resolves to no address a sandbox may use"
                            )));
                        }
                        nets.extend(addrs.into_iter().filter_map(|ip| Ipv4Cidr::new(ip, 32)));
                    }
                }
            }
            if allow {
                out.allow = nets.into_iter().collect();
            } else {
                out.deny = nets.into_iter().collect();
            }
        }
        Ok(out)
    }

    /// Whether the sandbox adds nothing to the default policy.
    pub fn is_default(&self) -> bool {
        *self == SandboxEgress::default()
    }
}

/// Whether `ip` is in a range no allow rule may reach (the control plane's list).
fn reserved(ip: Ipv4Addr) -> bool {
    wrenn_types::network::NEVER_ALLOWED
        .iter()
        .any(|(a, l, _)| wrenn_types::network::overlaps((ip, 32), (*a, *l)))
}

/// The IPv4 addresses of `name`: from `static_hosts` if it is listed there, else from the
/// host's resolver, sorted, at most [`MAX_ADDRS_PER_NAME`].
async fn lookup(
    name: &str,
    static_hosts: &[(String, Ipv4Addr)],
) -> Result<Vec<Ipv4Addr>, PolicyError> {
    let listed: Vec<Ipv4Addr> = static_hosts
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, ip)| *ip)
        .collect();
    let mut addrs: BTreeSet<Ipv4Addr> = if !listed.is_empty() {
        listed.into_iter().collect()
    } else {
        let found = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((name, 0)))
            .await
            .map_err(|_| PolicyError(format!("resolving {name:?} took too long")))?
            .map_err(|_| PolicyError(format!("{name:?} does not resolve")))?;
        found
            .filter_map(|sa| match sa.ip() {
                IpAddr::V4(v4) => Some(v4),
                IpAddr::V6(_) => None,
            })
            .collect()
    };
    while addrs.len() > MAX_ADDRS_PER_NAME {
        addrs.pop_last();
    }
    Ok(addrs.into_iter().collect())
}

/// The host's own IPv4 addresses and the networks of its interfaces other than loopback that
/// no range of [`DENIED_BY_DEFAULT`] already covers (the host's LAN, for instance), each once.
/// Empty if `ip` cannot be run.
pub fn host_networks() -> (Vec<Ipv4Addr>, Vec<Ipv4Cidr>) {
    match cmd::run("ip", ["-4", "-o", "addr", "show"]) {
        Ok(out) => parse_addrs(&String::from_utf8_lossy(&out)),
        Err(err) => {
            tracing::warn!(%err, "reading the host's addresses failed");
            (Vec::new(), Vec::new())
        }
    }
}

/// The addresses and networks of `ip -4 -o addr show` output, without loopback.
fn parse_addrs(text: &str) -> (Vec<Ipv4Addr>, Vec<Ipv4Cidr>) {
    let mut addrs = BTreeSet::new();
    let mut nets = BTreeSet::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(dev) = words.nth(1) else { continue };
        if dev == "lo" || words.next() != Some("inet") {
            continue;
        }
        let Some((ip, len)) = words.next().and_then(|w| w.split_once('/')) else {
            continue;
        };
        let (Ok(ip), Ok(len)) = (ip.parse::<Ipv4Addr>(), len.parse::<u8>()) else {
            continue;
        };
        if ip.is_loopback() || len > 32 {
            continue;
        }
        addrs.insert(ip);
        let first = Ipv4Addr::from_bits(ip.to_bits() & wrenn_types::network::mask(len));
        if let Some(net) = Ipv4Cidr::new(first, len) {
            let covered = DENIED_BY_DEFAULT
                .iter()
                .any(|(d, _)| d.prefix_len() <= len && d.contains(first));
            if !covered {
                nets.insert(net);
            }
        }
    }
    (addrs.into_iter().collect(), nets.into_iter().collect())
}

#[cfg(test)]
mod unit {
    use super::*;

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn host_networks_are_the_interfaces_outside_the_default_deny_list() {
        let text = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever\n\
                    4: eth0    inet 192.0.2.2/24 brd 192.0.2.255 scope global eth0\n\
                    5: eth1    inet 198.51.100.9/28 scope global eth1\n\
                    6: wrv1    inet 10.12.0.1/30 scope global wrv1\n\
                    7: wlan0    inet 192.168.1.20/24 scope global wlan0\n\
                    8: eth2    inet 192.0.2.3/24 scope global secondary eth2\n";
        let (addrs, nets) = parse_addrs(text);
        assert_eq!(nets, [cidr("192.0.2.0/24"), cidr("198.51.100.0/28")]);
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            addrs,
            [
                ip("10.12.0.1"),
                ip("192.0.2.2"),
                ip("192.0.2.3"),
                ip("192.168.1.20"),
                ip("198.51.100.9")
            ]
        );
    }

    fn network(allow: &[&str], deny: &[&str], internet: Option<bool>) -> SandboxNetwork {
        SandboxNetwork {
            allow_internet_access: internet,
            allow_out: allow.iter().map(|s| s.to_string()).collect(),
            deny_out: deny.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[tokio::test]
    async fn resolution_turns_names_into_addresses_and_refuses_the_host() {
        let hosts = vec![
            ("db.test.example".to_string(), Ipv4Addr::new(10, 200, 0, 1)),
            ("db.test.example".to_string(), Ipv4Addr::new(10, 200, 0, 2)),
            ("self.test.example".to_string(), Ipv4Addr::new(192, 0, 2, 2)),
        ];
        let host = [Ipv4Addr::new(192, 0, 2, 2)];
        let got = SandboxEgress::resolve(
            &network(
                &["DB.test.example", "169.254.169.254"],
                &["203.0.113.0/24"],
                Some(false),
            ),
            &hosts,
            &host,
        )
        .await
        .unwrap();
        assert_eq!(
            got.allow,
            [
                cidr("10.200.0.1/32"),
                cidr("10.200.0.2/32"),
                cidr("169.254.169.254/32")
            ]
        );
        assert_eq!(got.deny, [cidr("203.0.113.0/24")]);
        assert!(!got.internet);
        // The host's own address, as a network or behind a name, is never allowed.
        let err = SandboxEgress::resolve(&network(&["192.0.2.0/24"], &[], None), &hosts, &host)
            .await
            .unwrap_err();
        assert!(err.0.contains("address of the host"), "{err}");
        let err =
            SandboxEgress::resolve(&network(&["self.test.example"], &[], None), &hosts, &host)
                .await
                .unwrap_err();
        assert!(err.0.contains("no address"), "{err}");
        // Denying it is fine; invalid entries are refused as the control plane refuses them.
        assert!(
            SandboxEgress::resolve(&network(&[], &["self.test.example"], None), &hosts, &host)
                .await
                .is_ok()
        );
        assert!(
            SandboxEgress::resolve(&network(&["10.0.0.0/8"], &[], None), &hosts, &host)
                .await
                .is_err()
        );
        assert!(
            SandboxEgress::resolve(&SandboxNetwork::default(), &hosts, &host)
                .await
                .unwrap()
                .is_default()
        );
    }
}
