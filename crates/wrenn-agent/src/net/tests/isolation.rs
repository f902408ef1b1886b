//! What a guest and the host may reach: the host reaches each guest (envd's port only as the
//! agent's user), guests reach neither the host nor each other, the default egress policy keeps
//! guests to the internet and their resolvers, and a sandbox's own policy opens and closes what
//! it lists.

use super::*;

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
    // envd's port: the agent's user (root) connects, any other user of the host is refused;
    // other ports of the guest are not the rule's business.
    let envd = wrenn_types::envd::ENVD_PORT;
    let _envd = Server::start(Some(&ga.path), envd, "envd-a");
    assert!(fetch(None, a.host_ip, envd).unwrap().starts_with("envd-a"));
    assert!(
        !connects_as(65534, a.host_ip, envd),
        "a non-agent user reached envd"
    );
    assert!(connects_as(65534, a.host_ip, GUEST_PORT));
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
        assert!(slot::restore_rules(&cfg.prefix, a.index, &inner.policy, default_extra()).unwrap());
        blocked("host, by the host's rules alone", a.host_veth_ip, host.port);
        assert!(host_rules::restore(&cfg.prefix, &inner.host_rules).unwrap());
        // Restored once, intact afterwards.
        assert!(!host_rules::restore(&cfg.prefix, &inner.host_rules).unwrap());
        assert!(
            !slot::restore_rules(&cfg.prefix, a.index, &inner.policy, default_extra()).unwrap()
        );
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

    // A network the host is directly connected to (outside the ranges denied anyway) is
    // refused too, though the world answers on it: checked with the host's first such
    // network, when it has one.
    let lan = pool.inner.lock().host_nets.first().copied();
    if let Some(lan) = lan {
        let ip = Ipv4Addr::from_bits(lan.addr().to_bits() | u32::from(lan.prefix_len() < 31));
        let host_addrs = pool.host_addresses();
        if !host_addrs.contains(&ip) {
            let table = world.table.to_string();
            cmd::run(
                "ip",
                [
                    "-n",
                    &world.netns,
                    "addr",
                    "add",
                    &format!("{ip}/32"),
                    "dev",
                    "eth0",
                ],
            )
            .unwrap();
            cmd::run(
                "ip",
                [
                    "route",
                    "add",
                    &format!("{ip}/32"),
                    "via",
                    &world.addr.to_string(),
                    "dev",
                    &world.link,
                    "table",
                    &table,
                ],
            )
            .unwrap();
            assert_blocked(&ga.path, "a network of the host", ip, GUEST_PORT);
            // Allowed by the sandbox, the same address answers: the refusal was the rule's.
            let open = SandboxEgress {
                allow: vec![egress::Ipv4Cidr::new(ip, 32).unwrap()],
                ..SandboxEgress::default()
            };
            pool.set_sandbox_egress_blocking(a.index, open).unwrap();
            assert!(fetch(Some(&ga.path), ip, GUEST_PORT)
                .unwrap()
                .starts_with("world "));
            pool.set_sandbox_egress_blocking(a.index, SandboxEgress::default())
                .unwrap();
        }
    }

    // The sandbox's own policy: an allowed network beats the default denial, a denied one
    // beats the default permission, and without internet nothing else passes.
    let metadata = Ipv4Addr::new(169, 254, 169, 254);
    let private = Ipv4Addr::new(192, 168, 77, 1);
    let own = SandboxEgress {
        allow: vec![egress::Ipv4Cidr::new(metadata, 32).unwrap()],
        deny: vec![egress::Ipv4Cidr::new(world.internet, 32).unwrap()],
        internet: true,
    };
    pool.set_sandbox_egress_blocking(a.index, own.clone())
        .unwrap();
    assert!(fetch(Some(&ga.path), metadata, GUEST_PORT)
        .unwrap()
        .starts_with("world "));
    assert_blocked(&ga.path, "a denied range not allowed", private, GUEST_PORT);
    assert_blocked(
        &ga.path,
        "an address of deny_out",
        world.internet,
        GUEST_PORT,
    );
    // DNS at the resolver still passes; the host still reaches the guest.
    assert!(fetch(Some(&ga.path), resolver, 53)
        .unwrap()
        .starts_with("dns "));
    assert!(fetch(None, a.host_ip, GUEST_PORT)
        .unwrap()
        .starts_with("guest"));
    // Flushed rules come back with the sandbox's own, not the default ones.
    in_slot(&a, "iptables", &["-F"]);
    assert!(pool.inner.restore_slot(a.index).unwrap());
    assert!(fetch(Some(&ga.path), metadata, GUEST_PORT)
        .unwrap()
        .starts_with("world "));
    let closed = SandboxEgress {
        allow: vec![egress::Ipv4Cidr::new(private, 32).unwrap()],
        deny: vec![],
        internet: false,
    };
    pool.set_sandbox_egress_blocking(a.index, closed).unwrap();
    assert!(fetch(Some(&ga.path), private, GUEST_PORT)
        .unwrap()
        .starts_with("world "));
    assert_blocked(
        &ga.path,
        "the internet without internet",
        world.internet,
        GUEST_PORT,
    );
    assert_blocked(&ga.path, "metadata no longer allowed", metadata, GUEST_PORT);

    // Released and handed out again, the slot has the default policy back.
    let index = a.index;
    drop(ga);
    pool.release_blocking(a).unwrap();
    if pool.reuses_slots() {
        let again = pool.acquire_blocking().unwrap();
        assert_eq!(again.index, index);
        // (Same veth, so the world's routing rule for it is still in place.)
        let ga = FakeGuest::attach(&cfg.prefix, &again);
        assert_blocked(&ga.path, "metadata after reuse", metadata, GUEST_PORT);
        assert!(fetch(Some(&ga.path), world.internet, GUEST_PORT)
            .unwrap()
            .starts_with("world "));
        drop(ga);
        pool.release_blocking(again).unwrap();
    }
    // A slot not in use cannot be given rules.
    assert!(pool.set_sandbox_egress_blocking(index, own).is_err());
}
