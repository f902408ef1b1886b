//! The pool's slots: built as planned and removed without leaks, the errors of a full range,
//! a foreign release and bad configurations, reset and reuse on release, adoption after a
//! restart, and closing the idle slots.

use super::*;

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
        let expected = slot::rules(&Names::new(p, s.index), &pool.inner.policy, default_extra());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_released_in_background_is_waited_for_not_refused() {
    // One slot in all: while it is being reset, an acquire can only get it back.
    let cfg = config(6, 1, 1);
    let pool = SlotPool::new(cfg.clone()).unwrap();
    let _guard = Guard(Arc::clone(&pool));
    wait_ready(&pool, 1);
    let a = pool.acquire().await.unwrap();
    let index = a.index;
    pool.release_in_background(a).unwrap();
    let again = pool.acquire().await.unwrap();
    assert_eq!(again.index, index);
    assert!(again.netns_path.exists());

    // A clean stop waits for a release under way: nothing idle is left behind.
    pool.release_in_background(again).unwrap();
    pool.close_idle().unwrap();
    assert_eq!(pool.ready(), 0);
    assert_eq!(
        list(&cfg.prefix)
            .unwrap()
            .into_iter()
            .filter_map(|f| f.index)
            .count(),
        0
    );
}
