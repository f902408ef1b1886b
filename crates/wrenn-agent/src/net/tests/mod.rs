//! Tests of network slots against real namespaces, veths and iptables (they need root). Each test
//! uses its own prefix and slot range, so they run in parallel with each other and with other
//! pools on the host. Traffic only flows between namespaces these tests create: addresses of
//! the "outside" namespace that are not on its link are routed to it only for the slots' own
//! veths (a routing rule by input interface), never for anything else on the host.
//!
//! This file holds the shared fixtures (pools with their own prefix, fake guests, servers,
//! the "outside" world); the tests are by topic: [`pool`] (building, handing out, reusing,
//! adopting and removing slots), [`isolation`] (what guests and the host may reach),
//! [`watcher`] (rules put back after they are removed).

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

use super::leaks::list;
use super::slot::{self, Names};
use super::*;
use crate::cmd;

mod isolation;
mod pool;
mod watcher;

/// Port the fake guests listen on.
const GUEST_PORT: u16 = 8080;

/// What a slot without a sandbox policy of its own gets besides the pool's policy: the host's
/// directly connected networks, as a pool reads them.
fn default_extra() -> slot::Extra<'static> {
    static HOST_NETS: std::sync::OnceLock<Vec<egress::Ipv4Cidr>> = std::sync::OnceLock::new();
    static NONE: SandboxEgress = SandboxEgress {
        allow: Vec::new(),
        deny: Vec::new(),
        internet: true,
    };
    slot::Extra {
        host_nets: HOST_NETS.get_or_init(|| policy::host_networks().1),
        sandbox: &NONE,
    }
}

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

/// Asserts that the guest in `netns` cannot connect to `ip:port`, and is told so at once.
/// Whether a process of user `uid` (in the host's namespace) can open a TCP connection to
/// `ip:port`.
fn connects_as(uid: u32, ip: Ipv4Addr, port: u16) -> bool {
    use std::os::unix::process::CommandExt;
    // The tests' shell, not a program the agent runs (those are doctor/programs.txt's).
    let shell = "bash";
    Command::new(shell)
        .args(["-c", &format!("exec 3<>/dev/tcp/{ip}/{port}")])
        .uid(uid)
        .gid(uid)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

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
