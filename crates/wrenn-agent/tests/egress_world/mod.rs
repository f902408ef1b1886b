//! The world of the egress tests: a network namespace (`ee-world`) holding a private
//! address, a shared (CGNAT) one, the cloud metadata address, a private resolver and a
//! documentation address standing for the internet, each serving a small web server, DNS and a
//! UDP sink that records who sent what. A slot's veth is routed into it by a routing rule by
//! input interface ([`route_to_world`]), whose table ends in `unreachable`: nothing the guest
//! sends leaves the host, and nothing else on the host is rerouted.

use nix::sched::{setns, CloneFlags};
use std::fs::File;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The world namespace, its link to the host, and the routing table for the VM's veth.
pub const WORLD: &str = "ee-world";
pub const WORLD_LINK: &str = "eex0";
pub const TABLE: &str = "9200";
pub const LINK_HOST: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);
pub const LINK_WORLD: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 2);
/// Stands for an internet address (TEST-NET-3).
pub const INTERNET: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
/// The only resolver the agent is configured with: private, so reachable on port 53 only.
pub const RESOLVER: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 53);
/// Addresses of denied ranges the world holds, with what they stand for.
pub const DENIED: [(Ipv4Addr, &str); 4] = [
    (Ipv4Addr::new(10, 200, 0, 1), "private 10/8"),
    (Ipv4Addr::new(192, 168, 77, 1), "private 192.168/16"),
    (Ipv4Addr::new(100, 64, 0, 1), "shared 100.64/10"),
    (Ipv4Addr::new(169, 254, 169, 254), "cloud metadata"),
];
/// Ports of the world's services: a web server on every address, DNS (TCP and UDP) on every
/// address, and a UDP sink that records who sent what.
pub const WEB_PORT: u16 = 80;
pub const DNS_PORT: u16 = 53;
pub const SINK_PORT: u16 = 9999;

/// Runs a command that must succeed; returns its stdout.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command whose failure does not matter (clean-up of what may not exist).
pub fn try_run(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// What a service of the world saw: the sender's address and the text it sent (UDP), or the
/// connection's peer (TCP, with an empty text).
pub type Seen = Arc<Mutex<Vec<(IpAddr, String)>>>;

/// The namespace the guest's traffic is routed to, with its services running on threads.
pub struct World {
    pub stop: Arc<AtomicBool>,
    udp: Seen,
}

impl World {
    /// Removes whatever an earlier run left: the namespace, its link and the routing rule.
    pub fn remove_leftovers() {
        while try_run("ip", &["rule", "del", "lookup", TABLE]) {}
        try_run("ip", &["route", "flush", "table", TABLE]);
        try_run("ip", &["link", "del", WORLD_LINK]);
        try_run("ip", &["netns", "del", WORLD]);
    }

    pub fn create() -> World {
        Self::remove_leftovers();
        run("ip", &["netns", "add", WORLD]);
        run(
            "ip",
            &[
                "link", "add", WORLD_LINK, "type", "veth", "peer", "name", "eth0", "netns", WORLD,
            ],
        );
        run(
            "ip",
            &["addr", "add", &format!("{LINK_HOST}/30"), "dev", WORLD_LINK],
        );
        run("ip", &["link", "set", WORLD_LINK, "up"]);
        // Replies come from addresses the host routes elsewhere: loose reverse-path checking.
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv4/conf/{WORLD_LINK}/rp_filter"),
            "2",
        );
        let inside = |args: &[&str]| {
            let mut all = vec!["-n", WORLD];
            all.extend_from_slice(args);
            run("ip", &all);
        };
        inside(&["link", "set", "lo", "up"]);
        inside(&["addr", "add", &format!("{LINK_WORLD}/30"), "dev", "eth0"]);
        for ip in Self::addresses() {
            inside(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"]);
            run(
                "ip",
                &[
                    "route",
                    "add",
                    &format!("{ip}/32"),
                    "via",
                    &LINK_WORLD.to_string(),
                    "dev",
                    WORLD_LINK,
                    "table",
                    TABLE,
                ],
            );
        }
        // Anything else the VM sends goes nowhere.
        run(
            "ip",
            &["route", "add", "unreachable", "default", "table", TABLE],
        );
        inside(&["link", "set", "eth0", "up"]);

        let stop = Arc::new(AtomicBool::new(false));
        let udp: Seen = Arc::default();
        for (port, tag) in [(WEB_PORT, "web"), (DNS_PORT, "dns")] {
            Self::serve_tcp(port, tag, Arc::clone(&stop));
        }
        for port in [DNS_PORT, SINK_PORT] {
            Self::serve_udp(port, Arc::clone(&udp), Arc::clone(&stop));
        }
        World { stop, udp }
    }

    /// Every address the world holds besides its link address.
    fn addresses() -> Vec<Ipv4Addr> {
        let mut all = vec![INTERNET, RESOLVER];
        all.extend(DENIED.iter().map(|(ip, _)| *ip));
        all
    }

    /// Joins the world's namespace on the calling thread.
    fn enter() {
        let ns = File::open(Path::new("/run/netns").join(WORLD)).unwrap();
        setns(&ns, CloneFlags::CLONE_NEWNET).unwrap();
    }

    /// Answers every connection with `<tag> <local address> <peer address>`.
    fn serve_tcp(port: u16, tag: &'static str, stop: Arc<AtomicBool>) {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            Self::enter();
            let listener = TcpListener::bind(("0.0.0.0", port)).unwrap();
            listener.set_nonblocking(true).unwrap();
            tx.send(()).unwrap();
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, peer)) => {
                        let local = conn.local_addr().unwrap().ip();
                        let _ = conn.write_all(format!("{tag} {local} {}", peer.ip()).as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
    }

    /// Records every datagram with its sender.
    fn serve_udp(port: u16, seen: Seen, stop: Arc<AtomicBool>) {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            Self::enter();
            let socket = UdpSocket::bind(("0.0.0.0", port)).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_millis(20)))
                .unwrap();
            tx.send(()).unwrap();
            let mut buf = [0u8; 1500];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    seen.lock().unwrap().push((from.ip(), text));
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
    }

    /// The datagrams received whose text starts with `tag`.
    pub fn datagrams(&self, tag: &str) -> Vec<(IpAddr, String)> {
        self.udp
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, text)| text.starts_with(tag))
            .cloned()
            .collect()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        Self::remove_leftovers();
    }
}

/// Routes what the veth of the slot at `host_ip` (of an agent with network `prefix`) brings in to the world, and nothing else
/// anywhere; returns the slot's index.
pub fn route_to_world(prefix: &str, host_ip: Ipv4Addr) -> u32 {
    let [_, _, hi, lo] = host_ip.octets();
    let index = u32::from(hi) * 256 + u32::from(lo);
    let veth = format!("{prefix}v{index}");
    try_run("ip", &["rule", "del", "iif", &veth, "lookup", TABLE]);
    run(
        "ip",
        &[
            "rule", "add", "iif", &veth, "lookup", TABLE, "priority", "1000",
        ],
    );
    index
}
