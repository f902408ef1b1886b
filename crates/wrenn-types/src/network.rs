//! The per-sandbox network policy a create request may carry (`network`): whether the guest
//! reaches the internet, and lists of destinations it may (`allow_out`) or may not
//! (`deny_out`) reach, each an IPv4 network (`a.b.c.d/len` or a bare address) or a domain name.
//! The same value travels from the public API to the agent and is kept in the agent's record of
//! the sandbox. Owns the syntax and the limits, which the control plane and the agent both
//! check ([`SandboxNetwork::validate`]); turning names into addresses and rules is the agent's.

use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// Most entries in each of `allow_out` and `deny_out`.
pub const MAX_RULES: usize = 64;
/// Most domain names over both lists (each is resolved by the agent).
pub const MAX_NAMES: usize = 16;
/// Longest domain name.
pub const MAX_NAME_LEN: usize = 253;

/// Networks no `allow_out` entry may overlap, with why: the host's loopback, every sandbox's
/// host-side and veth addresses, the guest's own network, "this network", multicast and
/// reserved. The agent adds the host's own addresses.
pub const NEVER_ALLOWED: &[(Ipv4Addr, u8, &str)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8, "\"this network\""),
    (
        Ipv4Addr::new(10, 11, 0, 0),
        16,
        "the sandboxes' host addresses",
    ),
    (
        Ipv4Addr::new(10, 12, 0, 0),
        16,
        "the sandboxes' links to the host",
    ),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback"),
    (Ipv4Addr::new(172, 16, 0, 0), 24, "the guest's own network"),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast"),
    (Ipv4Addr::new(240, 0, 0, 0), 4, "reserved"),
];

/// `network` on create. Absent: the default policy (internet yes, private and link-local
/// ranges and the host's networks no).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxNetwork {
    /// `false`: nothing outside `allow_out` (and DNS to the configured resolvers) is
    /// reachable. Default `true`.
    #[serde(default, alias = "internet", skip_serializing_if = "Option::is_none")]
    pub allow_internet_access: Option<bool>,
    /// Destinations reachable even inside a range denied by default or by `deny_out`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_out: Vec<String>,
    /// Destinations refused even though the default policy would let them pass.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_out: Vec<String>,
}

/// One entry of `allow_out` or `deny_out`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// An IPv4 network: its first address and prefix length.
    Net(Ipv4Addr, u8),
    /// A domain name (lower-case), resolved by the agent into addresses.
    Name(&'a str),
}

impl SandboxNetwork {
    /// Whether the guest may reach the internet outside `allow_out`.
    pub fn internet(&self) -> bool {
        self.allow_internet_access.unwrap_or(true)
    }

    /// Checks counts and syntax, and that no `allow_out` network overlaps
    /// [`NEVER_ALLOWED`]. The message names the offending entry.
    pub fn validate(&self) -> Result<(), String> {
        let mut names = 0;
        for (field, list) in [("allow_out", &self.allow_out), ("deny_out", &self.deny_out)] {
            if list.len() > MAX_RULES {
                return Err(format!(
                    "network.{field} has {} entries; at most {MAX_RULES} are allowed",
                    list.len()
                ));
            }
            for entry in list.iter() {
                match parse_target(entry).map_err(|e| format!("network.{field}: {e}"))? {
                    Target::Name(_) => names += 1,
                    Target::Net(addr, len) if field == "allow_out" => {
                        if let Some((_, _, why)) = NEVER_ALLOWED
                            .iter()
                            .find(|(a, l, _)| overlaps((addr, len), (*a, *l)))
                        {
                            return Err(format!(
                                "network.allow_out: {entry:?} overlaps {why}, which no sandbox \
                                 may reach"
                            ));
                        }
                    }
                    Target::Net(..) => {}
                }
            }
        }
        if names > MAX_NAMES {
            return Err(format!(
                "network lists {names} domain names; at most {MAX_NAMES} are allowed"
            ));
        }
        Ok(())
    }
}

/// Parses one entry: `a.b.c.d`, `a.b.c.d/len` (no host bits) or a domain name (letters,
/// digits and hyphens in dot-separated labels of 1-63 characters, at least two labels, the
/// last not numeric; a trailing dot is dropped). Entries are case-insensitive; a name comes
/// back as given, so callers lower-case it.
pub fn parse_target(entry: &str) -> Result<Target<'_>, String> {
    let e = entry.trim_end_matches('.');
    if e.is_empty() || e.len() > MAX_NAME_LEN {
        return Err(format!(
            "{:?} is neither an IPv4 network nor a domain name",
            truncated(entry)
        ));
    }
    if e.bytes()
        .all(|b| b.is_ascii_digit() || b == b'.' || b == b'/')
    {
        let (addr, len) = e.split_once('/').unwrap_or((e, "32"));
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{e:?} is not an IPv4 address or network"))?;
        let len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= 32)
            .ok_or_else(|| format!("{e:?} has no valid prefix length (0-32)"))?;
        if addr.to_bits() & !mask(len) != 0 {
            return Err(format!(
                "{e:?} has bits set past its prefix length (write the network's first address)"
            ));
        }
        return Ok(Target::Net(addr, len));
    }
    let labels: Vec<&str> = e.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    let tld_ok = labels
        .last()
        .is_some_and(|l| !l.bytes().all(|b| b.is_ascii_digit()));
    if labels.len() < 2 || !labels.iter().all(label_ok) || !tld_ok {
        return Err(format!(
            "{:?} is neither an IPv4 network nor a domain name",
            truncated(entry)
        ));
    }
    Ok(Target::Name(e))
}

/// The netmask of a prefix length.
pub fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    }
}

/// Whether two networks share an address.
pub fn overlaps(a: (Ipv4Addr, u8), b: (Ipv4Addr, u8)) -> bool {
    let len = a.1.min(b.1);
    a.0.to_bits() & mask(len) == b.0.to_bits() & mask(len)
}

fn truncated(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(allow: &[&str], deny: &[&str]) -> SandboxNetwork {
        SandboxNetwork {
            allow_internet_access: None,
            allow_out: allow.iter().map(|s| s.to_string()).collect(),
            deny_out: deny.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn entries_are_networks_or_names() {
        assert_eq!(
            parse_target("10.200.0.0/16"),
            Ok(Target::Net(Ipv4Addr::new(10, 200, 0, 0), 16))
        );
        assert_eq!(
            parse_target("169.254.169.254"),
            Ok(Target::Net(Ipv4Addr::new(169, 254, 169, 254), 32))
        );
        assert_eq!(
            parse_target("api.example.com."),
            Ok(Target::Name("api.example.com"))
        );
        for bad in [
            "",
            "10.0.0.1/8",
            "10.0.0.0/33",
            "10.0.0/8",
            "1.2.3.4.5",
            "localhost",
            "-a.example.com",
            "a..example.com",
            "exa mple.com",
            "1.2.3.999",
            "example.123",
            "*.example.com",
            "2001:db8::/32",
        ] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
        assert!(parse_target(&format!("{}.com", "a".repeat(64))).is_err());
        assert!(parse_target(&format!("{}com", "a.".repeat(130))).is_err());
    }

    #[test]
    fn validation_limits_counts_and_refuses_reserved_allows() {
        assert!(net(&["10.200.0.0/16", "db.internal.example"], &["1.1.1.1"])
            .validate()
            .is_ok());
        // Denying anything is fine, even the reserved ranges.
        assert!(net(&[], &["0.0.0.0/0", "127.0.0.1"]).validate().is_ok());
        for reserved in [
            "0.0.0.0/0",
            "10.0.0.0/8",
            "10.11.0.5",
            "127.0.0.1",
            "172.16.0.2",
        ] {
            let err = net(&[reserved], &[]).validate().unwrap_err();
            assert!(err.contains("overlaps"), "{reserved}: {err}");
        }
        assert!(net(&["172.16.1.0/24", "10.10.0.0/16"], &[])
            .validate()
            .is_ok());
        let many: Vec<String> = (0..=MAX_RULES).map(|i| format!("203.0.113.{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(net(&[], &many)
            .validate()
            .unwrap_err()
            .contains("at most 64"));
        assert!(net(&many[..MAX_RULES], &[]).validate().is_ok());
        let names: Vec<String> = (0..=MAX_NAMES).map(|i| format!("h{i}.example")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        assert!(net(&names, &[])
            .validate()
            .unwrap_err()
            .contains("domain names"));
        assert!(net(&names[..MAX_NAMES], &[]).validate().is_ok());
    }

    #[test]
    fn wire_form_accepts_internet_as_an_alias() {
        let n: SandboxNetwork =
            serde_json::from_str(r#"{"internet": false, "allow_out": ["1.2.3.4"]}"#).unwrap();
        assert!(!n.internet());
        assert!(SandboxNetwork::default().internet());
        assert_eq!(
            serde_json::to_value(SandboxNetwork::default()).unwrap(),
            serde_json::json!({})
        );
    }
}
