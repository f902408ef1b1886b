//! Tests of network slots against real namespaces, veths and iptables (they need root). Each test
//! uses its own prefix and slot range, so they run in parallel with each other and with other
//! pools on the host. Traffic only flows between namespaces these tests create.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
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

/// A configuration with a slot range unique to this process and test number `n` (0–4).
fn config(n: u32, pool_size: usize, max_slots: u32) -> NetConfig {
    assert!(max_slots <= 10 && n < 6);
    NetConfig {
        prefix: prefix(n),
        // 10000..16000: clear of the fixed ranges the end-to-end tests use (9000..10000).
        first_slot: 10_000 + (std::process::id() % 100) * 60 + n * 10,
        max_slots,
        pool_size,
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
/// end, inside the slot, takes over the TAP's gateway address.
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
        cmd::run(
            "ip",
            ["-n", &slot.netns, "addr", "del", &gw, "dev", &slot.tap],
        )
        .unwrap();
        let slot_side = format!(
            "link add gw0 type veth peer name eth0 netns {netns}\n\
             addr add {gw} dev gw0\n\
             link set gw0 up\n"
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
}

impl Drop for FakeGuest {
    fn drop(&mut self) {
        let _ = cmd::run("ip", ["netns", "del", &self.netns]);
    }
}

/// A namespace standing for "the outside world", linked to the host by `<prefix>x0`.
struct World {
    netns: String,
    path: PathBuf,
    link: String,
    host_addr: Ipv4Addr,
    addr: Ipv4Addr,
}

impl World {
    fn create(prefix: &str) -> World {
        let netns = format!("{prefix}-world");
        let link = format!("{prefix}x0");
        let third = (std::process::id() % 250) as u8;
        let host_addr = Ipv4Addr::new(10, 13, third, 1);
        let addr = Ipv4Addr::new(10, 13, third, 2);
        let host = format!(
            "netns add {netns}\n\
             link add {link} type veth peer name eth0 netns {netns}\n\
             addr add {host_addr}/30 dev {link}\n\
             link set {link} up\n"
        );
        slot::run_script("ip", &["-batch"], &host, None).unwrap();
        let inside = format!("link set lo up\naddr add {addr}/30 dev eth0\nlink set eth0 up\n");
        slot::run_script("ip", &["-n", &netns, "-batch"], &inside, None).unwrap();
        let path = Path::new("/run/netns").join(&netns);
        World {
            netns,
            path,
            link,
            host_addr,
            addr,
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = cmd::run("ip", ["link", "del", &self.link]);
        let _ = cmd::run("ip", ["netns", "del", &self.netns]);
    }
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
    assert!(host_rules.contains(&format!(
        "-A INPUT -i {}v+ -j WRENN-{}-IN",
        cfg.prefix, cfg.prefix
    )));
    for s in &slots {
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

#[test]
fn host_reaches_guests_and_guests_reach_neither_host_nor_each_other() {
    let cfg = config(2, 0, 2);
    let pool = SlotPool::new(cfg.clone()).unwrap();
    let _guard = Guard(Arc::clone(&pool));
    let a = pool.acquire_blocking().unwrap();
    let b = pool.acquire_blocking().unwrap();
    let ga = FakeGuest::attach(&cfg.prefix, &a);
    let gb = FakeGuest::attach(&cfg.prefix, &b);
    let _sa = Server::start(Some(&ga.path), GUEST_PORT, "guest-a");
    let _sb = Server::start(Some(&gb.path), GUEST_PORT, "guest-b");
    let host = Server::start(None, 0, "host");
    let world = World::create(&cfg.prefix);
    let _outside = Server::start(Some(&world.path), GUEST_PORT, "world");

    // The host reaches each guest at its own host_ip; the guest sees the host's veth address.
    let answer = fetch(None, a.host_ip, GUEST_PORT).unwrap();
    assert_eq!(answer, format!("guest-a {}", a.host_veth_ip));
    let answer = fetch(None, b.host_ip, GUEST_PORT).unwrap();
    assert_eq!(answer, format!("guest-b {}", b.host_veth_ip));

    // A guest reaches the outside, masqueraded behind the host.
    let answer = fetch(Some(&ga.path), world.addr, GUEST_PORT).unwrap();
    assert_eq!(answer, format!("world {}", world.host_addr));

    // A guest cannot reach the host's services, at any host address, nor another sandbox.
    let blocked = |what: &str, ip: Ipv4Addr, port: u16| {
        let started = Instant::now();
        let r = fetch(Some(&ga.path), ip, port);
        assert!(r.is_err(), "{what} reachable from a guest: {r:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
    };
    blocked("host via own veth", a.host_veth_ip, host.port);
    blocked("host via another slot's veth", b.host_veth_ip, host.port);
    blocked("host via the outside link", world.host_addr, host.port);
    blocked("another sandbox", b.host_ip, GUEST_PORT);
    blocked("another slot's namespace", b.ns_veth_ip, GUEST_PORT);

    // Control: the same attempts succeed without the isolation chains, so the rules above are
    // what blocks them (only when the host's own FORWARD/INPUT policies accept).
    let policies = text(cmd::run("iptables", ["-S"]).unwrap());
    if policies.contains("-P INPUT ACCEPT") && policies.contains("-P FORWARD ACCEPT") {
        host::remove(&cfg.prefix).unwrap();
        let open_host = fetch(Some(&ga.path), a.host_veth_ip, host.port);
        let open_b = fetch(Some(&ga.path), b.host_ip, GUEST_PORT);
        host::install(&cfg.prefix).unwrap();
        // (Without this prefix's chains another pool's masquerade may rewrite the source, so
        // only the reachability is checked.)
        assert!(open_host.unwrap().starts_with("host "));
        assert!(open_b.unwrap().starts_with("guest-b "));
        blocked("host after reinstall", a.host_veth_ip, host.port);
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
