//! The egress policy of a sandbox, as rules of its slot's namespace: what a guest may send, and
//! where. By default a guest reaches the internet (where the host can) but no private, shared,
//! link-local, loopback, multicast or reserved range ([`DENIED_BY_DEFAULT`]), and DNS only at
//! the configured resolvers, which stay reachable on port 53 even inside a denied range. Packets
//! from the TAP with any source but the guest's address are dropped before connection tracking
//! sees them; IPv6 is off in the namespace. Owns the `raw` and `filter` tables of a slot's
//! namespace (the slot adds its `nat` table, see [`super::slot`]); it never touches the host's
//! own rules (those are [`super::host_rules`]'s).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use crate::guest;

use super::policy::SandboxEgress;
use super::slot::TAP_NAME;

/// An IPv4 network: an address whose bits past the prefix length are zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    len: u8,
}

impl Ipv4Cidr {
    /// The network `addr/len`; `None` when `len` is over 32 or `addr` has host bits set.
    pub const fn new(addr: Ipv4Addr, len: u8) -> Option<Ipv4Cidr> {
        if len > 32 || addr.to_bits() & !mask(len) != 0 {
            return None;
        }
        Some(Ipv4Cidr { addr, len })
    }

    /// The network's first address.
    pub const fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub const fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether `ip` lies in the network.
    pub const fn contains(&self, ip: Ipv4Addr) -> bool {
        ip.to_bits() & mask(self.len) == self.addr.to_bits()
    }
}

const fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - len as u32)
    }
}

/// A network of the default deny list, checked at compile time.
const fn net(a: u8, b: u8, c: u8, d: u8, len: u8) -> Ipv4Cidr {
    match Ipv4Cidr::new(Ipv4Addr::new(a, b, c, d), len) {
        Some(n) => n,
        None => panic!("not a network address"),
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = String;

    /// `a.b.c.d/len`, or a bare address for a /32.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = s.split_once('/').unwrap_or((s, "32"));
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IPv4 network (a.b.c.d/len)"))?;
        let len: u8 = len
            .parse()
            .map_err(|_| format!("{s:?} has no valid prefix length"))?;
        Ipv4Cidr::new(addr, len)
            .ok_or_else(|| format!("{s:?} is not a network address (host bits set or len > 32)"))
    }
}

/// The destinations no guest reaches by default, with why. The documentation ranges
/// (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24) are not on it: they are not routed on the
/// internet, and the end-to-end tests use one as their stand-in for an internet address.
pub const DENIED_BY_DEFAULT: &[(Ipv4Cidr, &str)] = &[
    (net(0, 0, 0, 0, 8), "\"this network\" (RFC 791)"),
    (
        net(10, 0, 0, 0, 8),
        "private (RFC 1918); holds every slot's own addresses",
    ),
    (
        net(100, 64, 0, 0, 10),
        "shared address space, carrier-grade NAT (RFC 6598)",
    ),
    (net(127, 0, 0, 0, 8), "loopback"),
    (
        net(169, 254, 0, 0, 16),
        "link-local (RFC 3927), with the cloud metadata address 169.254.169.254",
    ),
    (
        net(172, 16, 0, 0, 12),
        "private (RFC 1918); holds the guest's own network",
    ),
    (
        net(192, 0, 0, 0, 24),
        "IETF protocol assignments (RFC 6890)",
    ),
    (net(192, 168, 0, 0, 16), "private (RFC 1918)"),
    (net(198, 18, 0, 0, 15), "benchmarking (RFC 2544)"),
    (net(224, 0, 0, 0, 4), "multicast"),
    (
        net(240, 0, 0, 0, 4),
        "reserved (RFC 1112), with the limited broadcast address",
    ),
];

/// Name of the chain in a slot's namespace that every packet the guest sends through the
/// namespace passes.
pub(crate) const EGRESS_CHAIN: &str = "WRENN-EGRESS";
/// How refused packets are answered: at once, so a guest's connect fails instead of hanging.
const REFUSE: &str = "REJECT --reject-with icmp-admin-prohibited";

/// What guests may reach. Today one policy serves every sandbox of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressPolicy {
    /// The only addresses a guest may send DNS (UDP and TCP port 53) to. An address in a denied
    /// range is reachable on port 53 and nothing else.
    pub resolvers: Vec<Ipv4Addr>,
}

impl EgressPolicy {
    /// The default policy with the given resolvers (each once), or with the host's
    /// ([`host_resolvers`]).
    pub fn new(resolvers: Option<&[Ipv4Addr]>) -> EgressPolicy {
        let mut unique = Vec::new();
        for ip in resolvers.map_or_else(host_resolvers, <[Ipv4Addr]>::to_vec) {
            if !unique.contains(&ip) {
                unique.push(ip);
            }
        }
        EgressPolicy { resolvers: unique }
    }

    /// Why a resolver address cannot work, if it cannot.
    pub fn check_resolver(ip: Ipv4Addr) -> Result<(), String> {
        if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast() {
            Err(format!(
                "DNS resolver {ip} is not an address a guest can reach (a loopback resolver of \
                 the host serves only the host)"
            ))
        } else {
            Ok(())
        }
    }

    /// The `filter` table of a slot's namespace. The guest may not reach the namespace itself;
    /// what it sends through the namespace passes [`EGRESS_CHAIN`]: replies and packets of
    /// connections already allowed, then DNS to the resolvers only, then the sandbox's own
    /// allowed networks, then its own denied ones, then no range denied by default nor any of
    /// `host_nets` (the host's directly connected networks), then anything else unless the
    /// sandbox has no internet. Traffic towards the guest (the host's connections to envd,
    /// DNATed by the slot) is not filtered here: the host's rules decide who may open those.
    pub(crate) fn filter_table(&self, host_nets: &[Ipv4Cidr], sandbox: &SandboxEgress) -> String {
        let chain = EGRESS_CHAIN;
        let mut t = format!(
            "*filter\n\
             :INPUT ACCEPT [0:0]\n\
             :FORWARD ACCEPT [0:0]\n\
             :OUTPUT ACCEPT [0:0]\n\
             :{chain} - [0:0]\n\
             -A INPUT -i {TAP_NAME} -j {REFUSE}\n\
             -A FORWARD -i {TAP_NAME} -j {chain}\n\
             -A {chain} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n"
        );
        for r in &self.resolvers {
            for proto in ["udp", "tcp"] {
                t.push_str(&format!(
                    "-A {chain} -d {r}/32 -p {proto} -m {proto} --dport 53 -j ACCEPT\n"
                ));
            }
        }
        for proto in ["udp", "tcp"] {
            t.push_str(&format!(
                "-A {chain} -p {proto} -m {proto} --dport 53 -j {REFUSE}\n"
            ));
        }
        for net in &sandbox.allow {
            t.push_str(&format!("-A {chain} -d {net} -j ACCEPT\n"));
        }
        for net in &sandbox.deny {
            t.push_str(&format!("-A {chain} -d {net} -j {REFUSE}\n"));
        }
        for (range, _) in DENIED_BY_DEFAULT {
            t.push_str(&format!("-A {chain} -d {range} -j {REFUSE}\n"));
        }
        for net in host_nets {
            t.push_str(&format!("-A {chain} -d {net} -j {REFUSE}\n"));
        }
        let last = if sandbox.internet { "ACCEPT" } else { REFUSE };
        t.push_str(&format!("-A {chain} -j {last}\nCOMMIT\n"));
        t
    }
}

/// The `raw` table of a slot's namespace: only the guest's own address may come from the TAP.
/// Anything else is dropped before connection tracking, so spoofed packets leave no state.
pub(crate) fn raw_table() -> String {
    format!(
        "*raw\n\
         :PREROUTING ACCEPT [0:0]\n\
         :OUTPUT ACCEPT [0:0]\n\
         -A PREROUTING -i {TAP_NAME} ! -s {guest}/32 -j DROP\n\
         COMMIT\n",
        guest = guest::GUEST_IP,
    )
}

/// The host's name servers as guests are given them: the non-loopback `nameserver` entries of
/// `/etc/resolv.conf`, or else of systemd-resolved's upstream list, or else 1.1.1.1 and
/// 8.8.8.8. The same rule writes the guest images' `/etc/resolv.conf`; only the IPv4 entries
/// count, since guests have no IPv6.
pub fn host_resolvers() -> Vec<Ipv4Addr> {
    let read = |p: &str| nameservers(&std::fs::read_to_string(p).unwrap_or_default());
    let mut servers = read("/etc/resolv.conf");
    if servers.is_empty() {
        servers = read("/run/systemd/resolve/resolv.conf");
    }
    if servers.is_empty() {
        servers = vec![
            Ipv4Addr::new(1, 1, 1, 1).into(),
            Ipv4Addr::new(8, 8, 8, 8).into(),
        ];
    }
    servers
        .into_iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
        .collect()
}

/// The non-loopback `nameserver` addresses of a resolv.conf text, in order, without repeats.
fn nameservers(text: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for ip in text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|s| s.trim().parse::<IpAddr>().ok())
        .filter(|ip| !ip.is_loopback())
    {
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

#[cfg(test)]
mod unit {
    use super::*;

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_and_contain() {
        assert_eq!(cidr("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(cidr("192.0.2.7").to_string(), "192.0.2.7/32");
        assert!(cidr("0.0.0.0/0").contains(Ipv4Addr::new(203, 0, 113, 1)));
        for bad in ["10.0.0.1/8", "10.0.0.0/33", "10.0.0/8", "10.0.0.0/x", ""] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad}");
        }
        let link_local = cidr("169.254.0.0/16");
        assert!(link_local.contains(Ipv4Addr::new(169, 254, 169, 254)));
        assert!(!link_local.contains(Ipv4Addr::new(169, 255, 0, 1)));
    }

    fn denied(ip: Ipv4Addr) -> bool {
        DENIED_BY_DEFAULT.iter().any(|(n, _)| n.contains(ip))
    }

    #[test]
    fn default_deny_list_covers_what_is_not_the_internet() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        for blocked in [
            "10.11.0.5",
            "10.12.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.77.1",
            "100.64.0.1",
            "100.127.255.254",
            "169.254.169.254",
            "127.0.0.1",
            "224.0.0.251",
            "239.255.255.250",
            "255.255.255.255",
            "240.0.0.1",
            "0.0.0.0",
            "192.0.0.8",
            "198.18.0.1",
        ] {
            assert!(denied(ip(blocked)), "{blocked} should be denied");
        }
        for open in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "172.15.255.255",
            "100.63.255.255",
            "100.128.0.0",
            "192.169.0.1",
            "203.0.113.7",
            "198.51.100.1",
            "11.0.0.1",
            "223.255.255.255",
        ] {
            assert!(!denied(ip(open)), "{open} should be open");
        }
        // The guest's own address, its gateway and every slot's addresses are denied ranges.
        assert!(denied(guest::GUEST_IP.parse().unwrap()));
        assert!(denied(guest::GUEST_GATEWAY.parse().unwrap()));
    }

    #[test]
    fn filter_table_orders_replies_resolvers_dns_denials_then_the_internet() {
        let policy = EgressPolicy {
            resolvers: vec![Ipv4Addr::new(10, 0, 0, 53), Ipv4Addr::new(1, 1, 1, 1)],
        };
        let table = policy.filter_table(&[], &SandboxEgress::default());
        let rules: Vec<&str> = table.lines().filter(|l| l.starts_with("-A")).collect();
        let egress: Vec<&str> = rules
            .iter()
            .filter_map(|r| r.strip_prefix("-A WRENN-EGRESS "))
            .collect();
        assert_eq!(
            rules[..2],
            [
                "-A INPUT -i tap0 -j REJECT --reject-with icmp-admin-prohibited",
                "-A FORWARD -i tap0 -j WRENN-EGRESS",
            ]
        );
        assert_eq!(
            egress[..7],
            [
                "-m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
                "-d 10.0.0.53/32 -p udp -m udp --dport 53 -j ACCEPT",
                "-d 10.0.0.53/32 -p tcp -m tcp --dport 53 -j ACCEPT",
                "-d 1.1.1.1/32 -p udp -m udp --dport 53 -j ACCEPT",
                "-d 1.1.1.1/32 -p tcp -m tcp --dport 53 -j ACCEPT",
                "-p udp -m udp --dport 53 -j REJECT --reject-with icmp-admin-prohibited",
                "-p tcp -m tcp --dport 53 -j REJECT --reject-with icmp-admin-prohibited",
            ]
        );
        let denials = &egress[7..egress.len() - 1];
        assert_eq!(denials.len(), DENIED_BY_DEFAULT.len());
        assert!(
            denials.contains(&"-d 169.254.0.0/16 -j REJECT --reject-with icmp-admin-prohibited")
        );
        assert_eq!(egress.last(), Some(&"-j ACCEPT"));
        assert_eq!(rules.len(), 2 + egress.len());
        // Without resolvers no DNS passes at all.
        let none = EgressPolicy { resolvers: vec![] }.filter_table(&[], &SandboxEgress::default());
        assert!(!none.contains("--dport 53 -j ACCEPT"));
    }

    #[test]
    fn a_sandbox_s_allows_come_before_its_denials_and_the_default_ones() {
        let policy = EgressPolicy {
            resolvers: vec![Ipv4Addr::new(1, 1, 1, 1)],
        };
        let sandbox = SandboxEgress {
            allow: vec![cidr("10.200.0.1/32"), cidr("169.254.169.254/32")],
            deny: vec![cidr("203.0.113.0/24")],
            internet: false,
        };
        let table = policy.filter_table(&[cidr("192.0.2.0/24")], &sandbox);
        let egress: Vec<&str> = table
            .lines()
            .filter_map(|r| r.strip_prefix("-A WRENN-EGRESS "))
            .collect();
        let at = |rule: &str| egress.iter().position(|r| *r == rule).unwrap();
        let refuse = "-j REJECT --reject-with icmp-admin-prohibited";
        let allow_meta = at("-d 169.254.169.254/32 -j ACCEPT");
        assert!(
            at("-p udp -m udp --dport 53 -j REJECT --reject-with icmp-admin-prohibited")
                < at("-d 10.200.0.1/32 -j ACCEPT")
        );
        assert!(allow_meta < at(&format!("-d 203.0.113.0/24 {refuse}")));
        assert!(
            at(&format!("-d 203.0.113.0/24 {refuse}")) < at(&format!("-d 10.0.0.0/8 {refuse}"))
        );
        assert!(allow_meta < at(&format!("-d 169.254.0.0/16 {refuse}")));
        // The host's own networks are denied after the defaults; without internet the chain
        // ends in a refusal.
        assert_eq!(
            egress[egress.len() - 2],
            format!("-d 192.0.2.0/24 {refuse}")
        );
        assert_eq!(
            egress.last(),
            Some(&"-j REJECT --reject-with icmp-admin-prohibited")
        );
        let open = policy.filter_table(&[], &SandboxEgress::default());
        assert!(open.ends_with("-A WRENN-EGRESS -j ACCEPT\nCOMMIT\n"));
    }

    #[test]
    fn raw_table_drops_every_source_but_the_guest() {
        assert!(raw_table().contains("-A PREROUTING -i tap0 ! -s 172.16.0.2/32 -j DROP\n"));
    }

    #[test]
    fn resolvers_come_from_nameserver_lines_without_loopback() {
        let text = "# x\nnameserver 127.0.0.53\nnameserver 10.255.255.53\nnameserver ::1\n\
                    nameserver bogus\nsearch example\nnameserver 2001:db8::1\n\
                    nameserver 10.255.255.53\n";
        assert_eq!(
            nameservers(text),
            [
                "10.255.255.53".parse::<IpAddr>().unwrap(),
                "2001:db8::1".parse().unwrap()
            ]
        );
        assert!(EgressPolicy::check_resolver(Ipv4Addr::new(127, 0, 0, 53)).is_err());
        assert!(EgressPolicy::check_resolver(Ipv4Addr::UNSPECIFIED).is_err());
        assert!(EgressPolicy::check_resolver(Ipv4Addr::new(10, 0, 0, 2)).is_ok());
        let quad9 = Ipv4Addr::new(9, 9, 9, 9);
        assert_eq!(EgressPolicy::new(Some(&[quad9, quad9])).resolvers, [quad9]);
    }
}
