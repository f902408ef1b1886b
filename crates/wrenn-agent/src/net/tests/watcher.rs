//! The rules watcher: flushed chains, deleted jumps and changed rules are put back.

use super::*;

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
        let expected = slot::rules(
            &Names::new(&cfg.prefix, a.index),
            &inner.policy,
            default_extra(),
        );
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
