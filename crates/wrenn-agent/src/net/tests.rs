//! Tests of network slots against real namespaces, veths and iptables (they need root). Each test
//! uses its own prefix and slot range, so they run in parallel with each other and with other
//! pools on the host. Traffic only flows between namespaces these tests create: addresses of
//! the "outside" namespace that are not on its link are routed to it only for the slots' own
//! veths (a routing rule by input interface), never for anything else on the host.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};

use super::*;
use crate::cmd;

/// Port the fake guests listen on.
const GUEST_PORT: u16 = 8080;

/// A prefix unique to this test process and test number `n` (0–9).
fn prefix(n: u32) -> String {
    format!("wt{}{n}", std::process::id() % 1000)
}

/// A configuration with a slot range unique to this process and test number `n` (0–7).
fn config(n: u32, pool_size: usize, max_slots: u32) -> NetConfig {
    assert!(max_slots <= 10 && n < 8);
    NetConfig {
        prefix: prefix(n),
        // 10000..16000: clear of the fixed ranges the end-to-end tests use (9000..10000).
        first_slot: 10_000 + (std::process::id() % 75) * 80 + n * 10,
        max_slots,
        pool_size,
        ..NetConfig::default()
    }
}

/// Shuts the pool down when the test ends, also when it fails.
struct Guard(Arc<SlotPool>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Err(err) = self.0.shutdown() {
            eprintln!("shutdown of {} failed: {err}", self.0.config().prefix);
        }
    }
}

fn wait_ready(pool: &SlotPool, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while pool.ready() < n {
        assert!(
            Instant::now() < deadline,
            "pool never reached {n} ready slots"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn text(out: Vec<u8>) -> String {
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs a command inside the slot's namespace through `enter_netns_pre_exec`.
fn in_slot(slot: &Slot, program: &str, args: &[&str]) -> String {
    let mut c = Command::new(program);
    c.args(args);
    slot.enter_netns_pre_exec(&mut c).unwrap();
    text(
        cmd::output(c, format!("{program} {args:?}"))
            .unwrap()
            .stdout,
    )
}

/// A TCP server on a background thread (optionally inside a namespace) that answers every
/// connection with `<tag> <peer address>` and stops when dropped.
struct Server {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(netns: Option<&Path>, port: u16, tag: &str) -> Server {
        let ns = netns.map(|p| File::open(p).unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let tag = tag.to_string();
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            if let Some(ns) = ns {
                setns(&ns, CloneFlags::CLONE_NEWNET).unwrap();
            }
            let listener = TcpListener::bind(("0.0.0.0", port)).unwrap();
            listener.set_nonblocking(true).unwrap();
            tx.send(listener.local_addr().unwrap().port()).unwrap();
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, peer)) => {
                        let _ = conn.write_all(format!("{tag} {}", peer.ip()).as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        let port = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        Server {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects to `addr` (from inside `netns` when given) with a 1 s timeout and reads the answer.
fn fetch(netns: Option<&Path>, ip: Ipv4Addr, port: u16) -> std::io::Result<String> {
    let go = move || -> std::io::Result<String> {
        let addr = SocketAddr::from((ip, port));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        Ok(answer)
    };
    match netns {
        Some(ns) => netns::run_in(ns, go)?,
        None => go(),
    }
}

/// A stand-in for a VM: a namespace `<prefix>-g<index>` holding GUEST_IP on a veth whose other
/// end, inside the slot, replaces the TAP: it is named like the TAP and carries the gateway
/// address, so the slot's rules apply to it as they do to a real guest's packets.
struct FakeGuest {
    netns: String,
    path: PathBuf,
}

impl FakeGuest {
    fn attach(prefix: &str, slot: &Slot) -> FakeGuest {
        let netns = format!("{prefix}-g{}", slot.index);
        cmd::run("ip", ["netns", "add", &netns]).unwrap();
        let gw = format!(
            "{}/{}",
            crate::guest::GUEST_GATEWAY,
            crate::guest::GUEST_PREFIX
        );
        let guest = format!("{}/{}", crate::guest::GUEST_IP, crate::guest::GUEST_PREFIX);
        let tap = &slot.tap;
        let slot_side = format!(
            "link del {tap}\n\
             link add {tap} type veth peer name eth0 netns {netns}\n\
             addr add {gw} dev {tap}\n\
             link set {tap} up\n"
        );
        slot::run_script("ip", &["-n", &slot.netns, "-batch"], &slot_side, None).unwrap();
        let guest_side = format!(
            "link set lo up\n\
             addr add {guest} dev eth0\n\
             link set eth0 up\n\
             route add default via {}\n",
            crate::guest::GUEST_GATEWAY
        );
        slot::run_script("ip", &["-n", &netns, "-batch"], &guest_side, None).unwrap();
        let path = Path::new("/run/netns").join(&netns);
        FakeGuest { netns, path }
    }

    /// Adds an address to the guest's NIC, as a guest trying another source would.
    fn add_address(&self, cidr: &str) {
        cmd::run(
            "ip",
            ["-n", &self.netns, "addr", "add", cidr, "dev", "eth0"],
        )
        .unwrap();
    }
}

impl Drop for FakeGuest {
    fn drop(&mut self) {
        let _ = cmd::run("ip", ["netns", "del", &self.netns]);
    }
}

/// A namespace standing for "the outside world", linked to the host by `<prefix>x0`. Its link
/// address is private; [`World::EXTRA`] addresses it also holds are routed to it from the slots
/// given to [`World::route_from`] only.
struct World {
    netns: String,
    path: PathBuf,
    link: String,
    host_addr: Ipv4Addr,
    addr: Ipv4Addr,
    /// The routing table (and rule) that sends the slots' traffic for the extra addresses here.
    table: u32,
    /// A documentation address (TEST-NET-2), standing for an internet address.
    internet: Ipv4Addr,
}

impl World {
    /// Addresses the world holds besides its link address: an internet stand-in (added in
    /// [`World::create`]), the cloud metadata address, a private and a shared (CGNAT) address.
    const EXTRA: [Ipv4Addr; 3] = [
        Ipv4Addr::new(169, 254, 169, 254),
        Ipv4Addr::new(192, 168, 77, 1),
        Ipv4Addr::new(100, 64, 0, 1),
    ];

    /// The world of test `n`; `table` must be unique to the test (its first slot index).
    fn create(prefix: &str, n: u32, table: u32) -> World {
        let netns = format!("{prefix}-world");
        let link = format!("{prefix}x0");
        let third = ((std::process::id() % 25) * 10 + n) as u8;
        let host_addr = Ipv4Addr::new(10, 13, third, 1);
        let addr = Ipv4Addr::new(10, 13, third, 2);
        let internet = Ipv4Addr::new(198, 51, 100, 10 + n as u8);
        let host = format!(
            "netns add {netns}\n\
             link add {link} type veth peer name eth0 netns {netns}\n\
             addr add {host_addr}/30 dev {link}\n\
             link set {link} up\n"
        );
        slot::run_script("ip", &["-batch"], &host, None).unwrap();
        let mut inside = format!("link set lo up\naddr add {addr}/30 dev eth0\n");
        for extra in Self::EXTRA.iter().chain([&internet]) {
            inside.push_str(&format!("addr add {extra}/32 dev eth0\n"));
        }
        inside.push_str("link set eth0 up\n");
        slot::run_script("ip", &["-n", &netns, "-batch"], &inside, None).unwrap();
        // Replies come from addresses the host routes elsewhere: loose reverse-path checking.
        let _ = std::fs::write(format!("/proc/sys/net/ipv4/conf/{link}/rp_filter"), "2");
        let mut routes = String::new();
        for extra in Self::EXTRA.iter().chain([&internet]) {
            routes.push_str(&format!(
                "route add {extra}/32 via {addr} dev {link} table {table}\n"
            ));
        }
        slot::run_script("ip", &["-batch"], &routes, None).unwrap();
        let path = Path::new("/run/netns").join(&netns);
        World {
            netns,
            path,
            link,
            host_addr,
            addr,
            table,
            internet,
        }
    }

    /// Routes what the slot's guest sends to the extra addresses into the world.
    fn route_from(&self, slot: &Slot) {
        let table = self.table.to_string();
        cmd::run(
            "ip",
            [
                "rule",
                "add",
                "iif",
                &slot.host_veth,
                "lookup",
                &table,
                "priority",
                "1000",
            ],
        )
        .unwrap();
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let table = self.table.to_string();
        while cmd::run("ip", ["rule", "del", "lookup", &table]).is_ok() {}
        let _ = cmd::run("ip", ["route", "flush", "table", &table]);
        let _ = cmd::run("ip", ["link", "del", &self.link]);
        let _ = cmd::run("ip", ["netns", "del", &self.netns]);
    }
}

/// A UDP receiver in a namespace that keeps what arrives (sender address and text) until it is
/// dropped.
struct UdpSink {
    got: Arc<Mutex<Vec<(IpAddr, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpSink {
    fn start(netns: &Path, port: u16) -> UdpSink {
        let ns = File::open(netns).unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let (got2, stop2) = (Arc::clone(&got), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            setns(&ns, CloneFlags::CLONE_NEWNET).unwrap();
            let socket = UdpSocket::bind(("0.0.0.0", port)).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_millis(20)))
                .unwrap();
            tx.send(()).unwrap();
            let mut buf = [0u8; 1500];
            while !stop2.load(Ordering::Relaxed) {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    got2.lock().unwrap().push((from.ip(), text));
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        UdpSink {
            got,
            stop,
            thread: Some(thread),
        }
    }

    fn received(&self) -> Vec<(IpAddr, String)> {
        self.got.lock().unwrap().clone()
    }
}

impl Drop for UdpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends `text` from `from` (an address of the namespace) to `to`, inside `netns`.
fn send_udp(netns: &Path, from: Ipv4Addr, to: SocketAddr, text: &str) {
    netns::run_in(netns, || {
        let socket = UdpSocket::bind((from, 0)).unwrap();
        socket.send_to(text.as_bytes(), to).unwrap();
    })
    .unwrap();
}

#[tokio::test]
async fn slots_are_built_as_planned_and_removed_without_leaks() {
    let cfg = config(0, 2, 6);
    let pool = SlotPool::new(cfg.clone()).unwrap();
    let guard = Guard(Arc::clone(&pool));
    wait_ready(&pool, 2);

    // Two from the pool, one created on demand.
    let mut slots = Vec::new();
    for _ in 0..3 {
        slots.push(pool.acquire().await.unwrap());
    }
    let mut host_ips: Vec<_> = slots.iter().map(|s| s.host_ip).collect();
    host_ips.sort();
    host_ips.dedup();
    assert_eq!(host_ips.len(), 3, "every slot has its own host_ip");

    let host_rules = text(cmd::run("iptables-save", ["-t", "filter"]).unwrap());
    let p = &cfg.prefix;
    assert!(
        host_rules.lines().any(|l| l.starts_with(&format!(
            "-A INPUT -i {p}v+ -m comment --comment WRENN-{p}-"
        )) && l.ends_with(&format!(" -j WRENN-{p}-IN"))),
        "{host_rules}"
    );
    for s in &slots {
        // The namespace holds its rules and nothing else.
        let expected = slot::rules(&Names::new(p, s.index), &pool.inner.policy);
        assert!(expected.is_intact(&in_slot(s, "iptables-save", &[]), true));
        assert!(cfg.contains(s.index));
        assert_eq!(s.netns, format!("{}-ns{}", cfg.prefix, s.index));
        assert!(s.netns_path.exists());
        assert_eq!(s.guest_ip.to_string(), crate::guest::GUEST_IP);
        let links = in_slot(s, "ip", &["-o", "-4", "addr", "show"]);
        assert!(
            links.contains(&format!("tap0    inet {}/24", crate::guest::GUEST_GATEWAY)),
            "{links}"
        );
        assert!(
            links.contains(&format!(
                "{}p{}    inet {}/30",
                cfg.prefix, s.index, s.ns_veth_ip
            )),
            "{links}"
        );
        let tap = in_slot(s, "ip", &["-d", "link", "show", "tap0"]);
        assert!(tap.contains("tun type tap") && tap.contains(",UP"), "{tap}");
        let route = in_slot(s, "ip", &["route", "show", "default"]);
        assert!(
            route.contains(&format!("via {}", s.host_veth_ip)),
            "{route}"
        );
        let nat = in_slot(s, "iptables-save", &["-t", "nat"]);
        assert!(
            nat.contains(&format!("-d {}/32", s.host_ip))
                && nat.contains("--to-destination 172.16.0.2"),
            "{nat}"
        );
        assert!(nat.contains(&format!("--to-source {}", s.host_ip)), "{nat}");
        let fwd = netns::run_in(&s.netns_path, || {
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
        })
        .unwrap()
        .unwrap();
        assert_eq!(fwd.trim(), "1");
        let host_addr =
            text(cmd::run("ip", ["-o", "-4", "addr", "show", "dev", &s.host_veth]).unwrap());
        assert!(
            host_addr.contains(&format!("{}/30", s.host_veth_ip)),
            "{host_addr}"
        );
        let host_route =
            text(cmd::run("ip", ["route", "show", &format!("{}/32", s.host_ip)]).unwrap());
        assert!(
            host_route.contains(&format!("via {} dev {}", s.ns_veth_ip, s.host_veth)),
            "{host_route}"
        );
    }
    assert_eq!(pool.leftovers().unwrap(), Vec::<String>::new());

    // The pool refills behind the acquisitions.
    wait_ready(&pool, 2);
    assert_eq!(pool.in_use().len(), 3);

    let released: Vec<u32> = slots.iter().map(|s| s.index).collect();
    for s in slots {
        pool.release(s).await.unwrap();
    }
    assert!(pool.in_use().is_empty());
    assert_eq!(pool.leftovers().unwrap(), Vec::<String>::new());
    let again = pool.acquire().await.unwrap();
    assert!(again.netns_path.exists());
    pool.release(again).await.unwrap();
    assert!(!released.is_empty());

    drop(guard);
    assert_eq!(leftovers(&cfg.prefix).unwrap(), Vec::<String>::new());
}

#[test]
fn exhausted_range_and_foreign_release_are_errors() {
    let cfg = config(1, 0, 1);
    let pool = SlotPool::new(cfg.clone()).unwrap();
    let _guard = Guard(Arc::clone(&pool));
    let a = pool.acquire_blocking().unwrap();
    assert!(matches!(
        pool.acquire_blocking(),
        Err(NetError::Exhausted { .. })
    ));
    let foreign = Names::new(&cfg.prefix, a.index + 1).slot();
    assert!(matches!(
        pool.release_blocking(foreign),
        Err(NetError::Unknown { .. })
    ));
    pool.release_blocking(a).unwrap();
    // With pool_size 0 a released slot is removed, and its index can be built again.
    assert_eq!(
        leftovers(&cfg.prefix)
            .unwrap()
            .iter()
            .filter(|l| !l.starts_with("iptables"))
            .count(),
        0
    );
    let b = pool.acquire_blocking().unwrap();
    pool.release_blocking(b).unwrap();
}

#[test]
fn bad_configurations_are_refused() {
    let bad = [
        NetConfig {
            prefix: "toolong7".into(),
            ..NetConfig::default()
        },
        NetConfig {
            prefix: "wv".into(),
            ..NetConfig::default()
        },
        NetConfig {
            prefix: "9a".into(),
            ..NetConfig::default()
        },
        NetConfig {
            first_slot: MAX_INDEX - 2,
            max_slots: 3,
            ..NetConfig::default()
        },
        NetConfig {
            max_slots: 0,
            pool_size: 0,
            ..NetConfig::default()
        },
        NetConfig {
            max_slots: 2,
            pool_size: 3,
            ..NetConfig::default()
        },
    ];
    for cfg in bad {
        assert!(
            matches!(cfg.validate(), Err(NetError::Config(_))),
            "{cfg:?}"
        );
    }
    NetConfig::default().validate().unwrap();
}

/// Asserts that the guest in `netns` cannot connect to `ip:port`, and is told so at once.
fn assert_blocked(netns: &Path, what: &str, ip: Ipv4Addr, port: u16) {
    let started = Instant::now();
    let r = fetch(Some(netns), ip, port);
    assert!(
        r.is_err(),
        "{what} ({ip}:{port}) reachable from a guest: {r:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{what}: refusal took {:?}",
        started.elapsed()
    );
}

#[test]
fn host_reaches_guests_and_guests_reach_neither_host_nor_each_other() {
    let cfg = NetConfig {
        // The test takes rules away itself; the watcher must not put them back meanwhile.
        rules_check_interval: Duration::from_secs(3600),
        ..config(2, 0, 2)
    };
    let pool = SlotPool::new(cfg.clone()).unwrap();
    let _guard = Guard(Arc::clone(&pool));
    let a = pool.acquire_blocking().unwrap();
    let b = pool.acquire_blocking().unwrap();
    let ga = FakeGuest::attach(&cfg.prefix, &a);
    let gb = FakeGuest::attach(&cfg.prefix, &b);
    let _sa = Server::start(Some(&ga.path), GUEST_PORT, "guest-a");
    let _sb = Server::start(Some(&gb.path), GUEST_PORT, "guest-b");
    let host = Server::start(None, 0, "host");
    let world = World::create(&cfg.prefix, 2, cfg.first_slot);
    world.route_from(&a);
    let _outside = Server::start(Some(&world.path), GUEST_PORT, "world");

    // The host reaches each guest at its own host_ip; the guest sees the host's veth address.
    let answer = fetch(None, a.host_ip, GUEST_PORT).unwrap();
    assert_eq!(answer, format!("guest-a {}", a.host_veth_ip));
    let answer = fetch(None, b.host_ip, GUEST_PORT).unwrap();
    assert_eq!(answer, format!("guest-b {}", b.host_veth_ip));

    // A guest reaches the internet, masqueraded behind the host.
    let answer = fetch(Some(&ga.path), world.internet, GUEST_PORT).unwrap();
    assert_eq!(answer, format!("world {}", world.host_addr));

    // A guest cannot reach the host's services, at any host address, nor another sandbox.
    let blocked = |what: &str, ip: Ipv4Addr, port: u16| assert_blocked(&ga.path, what, ip, port);
    blocked("host via own veth", a.host_veth_ip, host.port);
    blocked("host via another slot's veth", b.host_veth_ip, host.port);
    blocked("host via the outside link", world.host_addr, host.port);
    blocked("another sandbox", b.host_ip, GUEST_PORT);
    blocked("another slot's namespace", b.ns_veth_ip, GUEST_PORT);
    blocked("its own slot's namespace", a.ns_veth_ip, GUEST_PORT);

    // Control: the same attempts succeed without the host's chains and the slot's rules, so
    // the rules above are what blocks them (only when the host's own FORWARD/INPUT policies
    // accept). Each layer alone still blocks them.
    let policies = text(cmd::run("iptables", ["-S"]).unwrap());
    if policies.contains("-P INPUT ACCEPT") && policies.contains("-P FORWARD ACCEPT") {
        let inner = &pool.inner;
        host_rules::remove(&cfg.prefix).unwrap();
        blocked("host, by the slot's rules alone", a.host_veth_ip, host.port);
        blocked(
            "another sandbox, by the slot's rules alone",
            b.host_ip,
            GUEST_PORT,
        );
        in_slot(&a, "iptables", &["-F"]);
        in_slot(&a, "iptables", &["-X"]);
        in_slot(&a, "iptables", &["-t", "raw", "-F"]);
        let open_host = fetch(Some(&ga.path), a.host_veth_ip, host.port);
        let open_b = fetch(Some(&ga.path), b.host_ip, GUEST_PORT);
        // (Without this prefix's chains another pool's masquerade may rewrite the source, so
        // only the reachability is checked.)
        assert!(open_host.unwrap().starts_with("host "));
        assert!(open_b.unwrap().starts_with("guest-b "));
        assert!(slot::restore_rules(&cfg.prefix, a.index, &inner.policy).unwrap());
        blocked("host, by the host's rules alone", a.host_veth_ip, host.port);
        assert!(host_rules::restore(&cfg.prefix, &inner.host_rules).unwrap());
        // Restored once, intact afterwards.
        assert!(!host_rules::restore(&cfg.prefix, &inner.host_rules).unwrap());
        assert!(!slot::restore_rules(&cfg.prefix, a.index, &inner.policy).unwrap());
        blocked("host after restoring", a.host_veth_ip, host.port);
        blocked("another sandbox after restoring", b.host_ip, GUEST_PORT);
    }

    // The host still reaches the guest after all of this.
    assert!(fetch(None, a.host_ip, GUEST_PORT)
        .unwrap()
        .starts_with("guest-a"));
    pool.release_blocking(a).unwrap();
    pool.release_blocking(b).unwrap();
    assert_eq!(pool.leftovers().unwrap(), Vec::<String>::new());
    drop((ga, gb));
}

#[test]
fn default_egress_policy_keeps_guests_to_the_internet_and_their_resolvers() {
    let n = 6;
    let base = config(n, 0, 1);
    let third = ((std::process::id() % 25) * 10 + n) as u8;
    // A private resolver: the world's link address, reachable on port 53 only.
    let resolver = Ipv4Addr::new(10, 13, third, 2);
    let cfg = NetConfig {
        dns_resolvers: Some(vec![resolver]),
        ..base
    };
    let pool = SlotPool::new(cfg.clone()).unwrap();
    let _guard = Guard(Arc::clone(&pool));
    let a = pool.acquire_blocking().unwrap();
    let ga = FakeGuest::attach(&cfg.prefix, &a);
    let _served = Server::start(Some(&ga.path), GUEST_PORT, "guest");
    let world = World::create(&cfg.prefix, n, cfg.first_slot);
    assert_eq!(world.addr, resolver);
    world.route_from(&a);
    let _web = Server::start(Some(&world.path), GUEST_PORT, "world");
    let _dns = Server::start(Some(&world.path), 53, "dns");

    // The internet, at any port but DNS; DNS at the resolver only, there at nothing but DNS.
    let answer = fetch(Some(&ga.path), world.internet, GUEST_PORT).unwrap();
    assert_eq!(answer, format!("world {}", world.host_addr));
    let answer = fetch(Some(&ga.path), resolver, 53).unwrap();
    assert_eq!(answer, format!("dns {}", world.host_addr));
    assert_blocked(&ga.path, "DNS at a non-resolver", world.internet, 53);
    assert_blocked(
        &ga.path,
        "a private resolver's other ports",
        resolver,
        GUEST_PORT,
    );
    // No private, shared or link-local address, whoever holds it.
    for ip in World::EXTRA {
        assert_blocked(&ga.path, "a denied range", ip, GUEST_PORT);
    }
    // Replies to the host's connections still flow.
    assert!(fetch(None, a.host_ip, GUEST_PORT)
        .unwrap()
        .starts_with("guest"));

    // Only the guest's own address leaves the TAP: a datagram from any other source is dropped,
    // also from an address of the guest's network or a slot address.
    let sink = UdpSink::start(&world.path, 9999);
    let to = SocketAddr::from((world.internet, 9999));
    ga.add_address("172.16.0.77/24");
    ga.add_address("10.11.0.99/32");
    send_udp(
        &ga.path,
        Ipv4Addr::new(172, 16, 0, 77),
        to,
        "spoofed-same-network",
    );
    send_udp(
        &ga.path,
        Ipv4Addr::new(10, 11, 0, 99),
        to,
        "spoofed-slot-address",
    );
    send_udp(&ga.path, a.guest_ip, to, "genuine");
    let deadline = Instant::now() + Duration::from_secs(5);
    while sink.received().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        sink.received(),
        [(IpAddr::V4(world.host_addr), "genuine".to_string())]
    );

    // IPv6 is off in the slot: the TAP has no IPv6 address and the kernel drops what arrives.
    let v6 = netns::run_in(&a.netns_path, || {
        ["all", "default", TAP_NAME].map(|dev| {
            std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6"))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        })
    })
    .unwrap();
    if Path::new("/proc/sys/net/ipv6").exists() {
        assert_eq!(v6, ["1", "1", "1"]);
    }
    assert_eq!(in_slot(&a, "ip", &["-6", "-o", "addr", "show"]).trim(), "");
    pool.release_blocking(a).unwrap();
}

#[test]
fn flushed_rules_are_put_back_by_the_watcher() {
    let cfg = NetConfig {
        rules_check_interval: Duration::from_millis(100),
        ..config(7, 0, 1)
    };
    let pool = SlotPool::new(cfg.clone()).unwrap();
    let _guard = Guard(Arc::clone(&pool));
    let a = pool.acquire_blocking().unwrap();
    let ga = FakeGuest::attach(&cfg.prefix, &a);
    let _served = Server::start(Some(&ga.path), GUEST_PORT, "guest");
    let host = Server::start(None, 0, "host");
    let inner = &pool.inner;
    let host_intact = || {
        let saved = text(cmd::run("iptables-save", std::iter::empty::<&str>()).unwrap());
        inner.host_rules.is_intact(&saved, false)
    };
    let slot_intact = || {
        let expected = slot::rules(&Names::new(&cfg.prefix, a.index), &inner.policy);
        expected.is_intact(&in_slot(&a, "iptables-save", &[]), true)
    };
    let wait_for = |what: &str, ok: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ok() {
            assert!(Instant::now() < deadline, "{what} never restored");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    assert!(host_intact() && slot_intact());

    let fwd = host_rules::chain(&cfg.prefix, "FWD");
    let input = host_rules::chain(&cfg.prefix, "IN");
    // A flushed chain, a deleted jump, a changed rule.
    cmd::run("iptables", ["-F", &fwd]).unwrap();
    wait_for("a flushed host chain", &host_intact);
    let jump = text(cmd::run("iptables", ["-S", "INPUT"]).unwrap())
        .lines()
        .find(|l| l.contains(&input))
        .unwrap()
        .replacen("-A ", "-D ", 1);
    cmd::run("iptables", jump.split_whitespace()).unwrap();
    wait_for("a deleted jump", &host_intact);
    cmd::run("iptables", ["-R", &input, "1", "-j", "ACCEPT"]).unwrap();
    wait_for("a replaced rule", &host_intact);
    assert_blocked(
        &ga.path,
        "host after the host rules came back",
        a.host_veth_ip,
        host.port,
    );

    // Everything in the slot's namespace, and IPv6 turned back on.
    in_slot(&a, "iptables", &["-F"]);
    in_slot(&a, "iptables", &["-t", "nat", "-F"]);
    wait_for("the slot's rules", &slot_intact);
    in_slot(&a, "iptables", &["-I", "FORWARD", "-j", "ACCEPT"]);
    wait_for("a foreign rule in the slot", &slot_intact);
    if Path::new("/proc/sys/net/ipv6").exists() {
        netns::run_in(&a.netns_path, || {
            std::fs::write("/proc/sys/net/ipv6/conf/tap0/disable_ipv6", "0")
        })
        .unwrap()
        .unwrap();
        wait_for("IPv6 off", &|| {
            netns::run_in(&a.netns_path, || {
                std::fs::read_to_string("/proc/sys/net/ipv6/conf/tap0/disable_ipv6")
            })
            .unwrap()
            .unwrap()
            .trim()
                == "1"
        });
    }
    assert_blocked(
        &ga.path,
        "host after the slot's rules came back",
        a.host_veth_ip,
        host.port,
    );
    // The restored NAT carries the host's connections to the guest again.
    assert!(fetch(None, a.host_ip, GUEST_PORT)
        .unwrap()
        .starts_with("guest"));
    pool.release_blocking(a).unwrap();
}

#[test]
fn released_slot_is_reset_and_reused() {
    let cfg = config(3, 2, 2);
    let pool = SlotPool::new(cfg.clone()).unwrap();
    let _guard = Guard(Arc::clone(&pool));
    wait_ready(&pool, 2);
    let a = pool.acquire_blocking().unwrap();
    let index = a.index;
    let ga = FakeGuest::attach(&cfg.prefix, &a);
    let _server = Server::start(Some(&ga.path), GUEST_PORT, "guest");
    assert!(fetch(None, a.host_ip, GUEST_PORT)
        .unwrap()
        .starts_with("guest"));
    let host_ip = a.host_ip.to_string();
    let path = a.netns_path.clone();

    pool.release_blocking(a).unwrap();
    if pool.reuses_slots() {
        // Reset: no tracked connection of the old sandbox is left, in the slot or on the host.
        let mut c = Command::new("conntrack");
        c.arg("-L");
        netns::pre_exec_setns(&mut c, &path).unwrap();
        let inside = cmd::output(c, "conntrack -L".into()).unwrap();
        assert_eq!(text(inside.stdout).trim(), "");
        let on_host = cmd::run("conntrack", ["-L", "-d", &host_ip]).unwrap();
        assert_eq!(text(on_host).trim(), "");
        assert_eq!(pool.ready(), 2);
    }
    // Both slots are handed out again; the one released still carries traffic.
    let first = pool.acquire_blocking().unwrap();
    let second = pool.acquire_blocking().unwrap();
    let (again, other) = if first.index == index {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(again.index, index);
    if pool.reuses_slots() {
        assert!(fetch(None, again.host_ip, GUEST_PORT)
            .unwrap()
            .starts_with("guest"));
    }
    pool.release_blocking(again).unwrap();
    pool.release_blocking(other).unwrap();
    assert_eq!(pool.leftovers().unwrap(), Vec::<String>::new());
}

#[test]
fn restart_keeps_the_slots_of_running_vms_and_removes_the_rest() {
    let cfg = config(4, 2, 5);
    let pool = SlotPool::new(cfg.clone()).unwrap();
    wait_ready(&pool, 2);
    let kept = pool.acquire_blocking().unwrap();
    let other = pool.acquire_blocking().unwrap();
    let ga = FakeGuest::attach(&cfg.prefix, &kept);
    let _server = Server::start(Some(&ga.path), GUEST_PORT, "survivor");
    wait_ready(&pool, 2);
    // A crash: the pool goes away without shutdown, its slots stay.
    drop(pool);
    let before = leftovers(&cfg.prefix).unwrap();
    assert!(
        before.iter().any(|l| l.contains(&other.netns)),
        "{before:?}"
    );

    let restarted = SlotPool::start(
        NetConfig {
            pool_size: 0,
            ..cfg.clone()
        },
        &[kept.index],
    )
    .unwrap();
    let guard = Guard(Arc::clone(&restarted));
    let all = leftovers(&cfg.prefix).unwrap();
    let slot_items: Vec<_> = all.iter().filter(|l| !l.starts_with("iptables")).collect();
    let kept_veth = format!("{}v{}", cfg.prefix, kept.index);
    assert!(
        slot_items
            .iter()
            .all(|l| l.contains(&kept.netns) || l.contains(&kept_veth)),
        "{slot_items:?}"
    );
    assert!(!other.netns_path.exists());
    assert_eq!(restarted.leftovers().unwrap(), Vec::<String>::new());

    let adopted = restarted.adopt(kept.index).unwrap();
    assert_eq!(adopted, kept);
    assert!(matches!(
        restarted.adopt(kept.index),
        Err(NetError::Unknown { .. })
    ));
    assert!(matches!(
        restarted.adopt(other.index),
        Err(NetError::Unknown { .. })
    ));
    // The surviving guest is still reachable through the reinstalled host rules.
    assert_eq!(
        fetch(None, adopted.host_ip, GUEST_PORT).unwrap(),
        format!("survivor {}", adopted.host_veth_ip)
    );
    restarted.release_blocking(adopted).unwrap();
    drop(guard);
    drop(ga);
    assert_eq!(leftovers(&cfg.prefix).unwrap(), Vec::<String>::new());
}

#[tokio::test]
async fn close_idle_removes_ready_slots_and_keeps_the_ones_in_use() {
    let cfg = config(5, 2, 4);
    let pool = SlotPool::new(cfg.clone()).unwrap();
    let _guard = Guard(Arc::clone(&pool));
    wait_ready(&pool, 2);
    let held = pool.acquire().await.unwrap();
    wait_ready(&pool, 2);
    pool.close_idle().unwrap();
    assert_eq!(pool.ready(), 0);
    // Only the held slot (and the host-wide rules) remain of this prefix.
    let slots: BTreeSet<u32> = list(&cfg.prefix)
        .unwrap()
        .into_iter()
        .filter_map(|f| f.index)
        .collect();
    assert_eq!(slots, BTreeSet::from([held.index]));
    assert!(held.netns_path.exists());
    assert!(pool.leftovers().unwrap().is_empty());
    // No refill after closing.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(pool.ready(), 0);
    pool.release(held).await.unwrap();
}
