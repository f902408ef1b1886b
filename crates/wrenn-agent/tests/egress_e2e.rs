//! End-to-end tests of the egress policy with a real microVM: what a guest may reach through
//! its slot by default, what a sandbox's own `network` policy opens and closes (also after a
//! pause and resume), and that no local user but the agent's reaches envd.
//!
//! The tests share one agent (its own prefix and slot range) and one VM; the policy test makes
//! a second sandbox of its own. Everything the guest
//! is allowed or refused to reach lives in a network namespace the tests create (`ee-world`):
//! a private address, a shared (CGNAT) one, the cloud metadata address, a private resolver and
//! a documentation address (TEST-NET-3) standing for the internet. Those addresses are routed
//! into that namespace for the VM's veth only (a routing rule by input interface, whose table
//! ends in `unreachable`), so nothing the guest sends ever leaves the host, and nothing else on
//! the host is rerouted.
//!
//! Needs root and the guest images (`WRENN_DATA_DIR`, default `/var/lib/wrenn`; built on first
//! use from `WRENN_ENVD_BIN`); `WRENN_QEMU` names another QEMU binary.

mod common;
mod egress_world;

use common::{images_dir, rt, scratch_dir, Slots, TestAgent};
use egress_world::{
    route_to_world, run, World, DENIED, DNS_PORT, INTERNET, LINK_HOST, RESOLVER, SINK_PORT,
    WEB_PORT,
};
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// Fixed prefix and slot range, clear of the other end-to-end tests' (a run cleans up what a
/// killed earlier run left).
const PREFIX: &str = "ee";
const FIRST_SLOT: u32 = 9200;
/// A name the agent resolves to the metadata address (its `static_hosts`), for domain rules.
const METADATA_NAME: &str = "metadata.egress.test";
/// How many tests share the VM: the last one to finish removes it and the world.
const TESTS: usize = 6;

/// The shared agent, VM and world.
struct Setup {
    agent: TestAgent,
    id: String,
    /// Where the host reaches the VM.
    host_ip: Ipv4Addr,
    /// The namespace of the VM's slot.
    slot_netns: String,
    world: World,
}

/// The shared setup, or why it failed (then every test fails with that, instead of trying to
/// set it up again).
static SETUP: OnceCell<Result<Setup, String>> = OnceCell::const_new();

async fn setup() -> &'static Setup {
    let result = SETUP
        .get_or_init(|| async {
            // On its own task, so a failure is caught and kept.
            tokio::spawn(build_setup()).await.map_err(|e| e.to_string())
        })
        .await;
    match result {
        Ok(s) => s,
        Err(e) => panic!("the shared agent and VM could not be set up: {e}"),
    }
}

async fn build_setup() -> Setup {
    kill_vms(false);
    let world = World::create();
    let slots = Slots {
        prefix: PREFIX,
        first: FIRST_SLOT,
        count: 8,
        pool: 1,
    };
    let agent = TestAgent::start_with(scratch_dir("egress"), slots, |cfg| {
        // The QEMU binary, as `wrenn agent --qemu` takes it.
        if let Some(qemu) = std::env::var_os("WRENN_QEMU") {
            cfg.qemu_bin = qemu.into();
        }
        cfg.net.dns_resolvers = Some(vec![RESOLVER]);
        cfg.net.static_hosts = vec![(METADATA_NAME.into(), DENIED[3].0)];
    })
    .await;
    let id = format!("sb-egress-{}", std::process::id());
    let (s, v) = agent
        .call(
            reqwest::Method::POST,
            "/v1/sandboxes",
            Some(json!({"id": id, "template": "minimal", "vcpus": 1, "memory_mb": 256})),
        )
        .await;
    assert_eq!(s, 201, "create: {v}");
    let host_ip: Ipv4Addr = v["host_ip"].as_str().unwrap().parse().unwrap();
    let index = route_to_world(PREFIX, host_ip);
    Setup {
        agent,
        id,
        host_ip,
        slot_netns: format!("{PREFIX}-ns{index}"),
        world,
    }
}

impl Setup {
    /// Runs a Python program in the guest (as root) and returns its stdout.
    async fn python(&self, program: &str) -> String {
        self.python_on(&self.id, program).await
    }

    /// Runs a Python program in sandbox `id`'s guest (as root) and returns its stdout.
    async fn python_on(&self, id: &str, program: &str) -> String {
        let (s, v) = self
            .agent
            .call(
                reqwest::Method::POST,
                &format!("/v1/sandboxes/{id}/exec"),
                Some(json!({"cmd": "python3", "args": ["-c", program], "timeout_sec": 60})),
            )
            .await;
        assert_eq!(s, 200, "exec: {v}");
        assert_eq!(v["exit_code"], 0, "guest program failed: {v}");
        v["stdout"].as_str().unwrap().to_string()
    }

    /// Tries a TCP connection from the guest to each target; for each, `connected <answer>` or
    /// `refused <errno name>` (a timeout counts as `refused timeout`).
    async fn connect_all(&self, targets: &[(Ipv4Addr, u16)]) -> Vec<String> {
        self.connect_all_on(&self.id, targets).await
    }

    /// [`Setup::connect_all`] from sandbox `id`'s guest.
    async fn connect_all_on(&self, id: &str, targets: &[(Ipv4Addr, u16)]) -> Vec<String> {
        let list: Vec<String> = targets
            .iter()
            .map(|(ip, port)| format!("(\"{ip}\", {port})"))
            .collect();
        let program = format!(
            "import errno, json, socket\n\
             out = []\n\
             for target in [{}]:\n\
             \x20   s = socket.socket(); s.settimeout(5)\n\
             \x20   try:\n\
             \x20       s.connect(target); out.append('connected ' + s.recv(200).decode())\n\
             \x20   except socket.timeout:\n\
             \x20       out.append('refused timeout')\n\
             \x20   except OSError as e:\n\
             \x20       out.append('refused ' + errno.errorcode.get(e.errno, str(e.errno)))\n\
             \x20   finally:\n\
             \x20       s.close()\n\
             print(json.dumps(out))\n",
            list.join(", ")
        );
        serde_json::from_str(self.python_on(id, &program).await.trim()).unwrap()
    }

    /// Sends one datagram per `(source, destination, port, text)` from the guest. A source
    /// other than the guest's own address must have been added to its NIC.
    async fn send_all(&self, datagrams: &[(Ipv4Addr, Ipv4Addr, u16, &str)]) {
        let list: Vec<String> = datagrams
            .iter()
            .map(|(from, to, port, text)| format!("(\"{from}\", \"{to}\", {port}, b\"{text}\")"))
            .collect();
        let program = format!(
            "import socket\n\
             for src, dst, port, text in [{}]:\n\
             \x20   s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             \x20   s.bind((src, 0)); s.sendto(text, (dst, port)); s.close()\n",
            list.join(", ")
        );
        self.python(&program).await;
    }

    /// Waits up to `limit` until `tag`'s datagrams stop arriving, and returns them.
    async fn datagrams(&self, tag: &str, expected: usize) -> Vec<(IpAddr, String)> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.world.datagrams(tag).len() < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Time for any that should not arrive to show up.
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.world.datagrams(tag)
    }

    /// Removes the sandbox, the agent's network and the routing rule; the world goes when the
    /// process ends (or with the next run's clean-up). Reports failures instead of panicking:
    /// it runs while a failed test unwinds.
    async fn teardown(&self) {
        let (s, v) = self
            .agent
            .call(
                reqwest::Method::DELETE,
                &format!("/v1/sandboxes/{}", self.id),
                None,
            )
            .await;
        if s != 204 {
            eprintln!("destroying the egress test sandbox: {s} {v}");
        }
        if let Err(err) = self.agent.agent.manager.slot_pool().shutdown() {
            eprintln!("shutting down the egress test slots: {err}");
        }
        self.world.stop.store(true, Ordering::Relaxed);
        World::remove_leftovers();
        let _ = std::fs::remove_dir_all(&self.agent.data_dir);
    }
}

/// Kills the VMs these tests started (found by their data directory, which only these tests
/// use): those of this run (`own`, after the sandbox could not be destroyed) or of earlier,
/// killed runs.
fn kill_vms(own: bool) {
    let prefix = images_dir().join("e2e").join("egress-");
    let prefix = prefix.to_string_lossy().into_owned();
    let mine = format!("{prefix}{}-", std::process::id());
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.starts_with("qemu-system")
            && cmdline.contains(&prefix)
            && cmdline.contains(&mine) == own
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Held by each test; the last test to finish tears the shared setup down (also after a
/// failure).
struct Lease;

static FINISHED: AtomicUsize = AtomicUsize::new(0);

impl Drop for Lease {
    fn drop(&mut self) {
        if FINISHED.fetch_add(1, Ordering::SeqCst) + 1 == TESTS {
            if let Some(Ok(s)) = SETUP.get() {
                rt().block_on(s.teardown());
            }
            kill_vms(true);
            World::remove_leftovers();
        }
    }
}

#[test]
fn guest_reaches_an_internet_address_but_no_private_shared_or_metadata_one() {
    let _lease = Lease;
    rt().block_on(async {
        let s = setup().await;
        let mut targets = vec![(INTERNET, WEB_PORT)];
        targets.extend(DENIED.iter().map(|(ip, _)| (*ip, WEB_PORT)));
        let results = s.connect_all(&targets).await;
        // The internet stand-in answers, and sees the host's address (masquerade), not the
        // guest's or the slot's.
        assert_eq!(results[0], format!("connected web {INTERNET} {LINK_HOST}"));
        // Every denied range is refused at once by the slot (an ICMP "administratively
        // prohibited" is EHOSTUNREACH), though it is routed to the same place.
        for ((ip, what), result) in DENIED.iter().zip(&results[1..]) {
            assert_eq!(result, "refused EHOSTUNREACH", "{what} ({ip})");
        }
    });
}

#[test]
fn dns_goes_to_the_configured_resolver_only_and_there_to_port_53_only() {
    let _lease = Lease;
    rt().block_on(async {
        let s = setup().await;
        let results = s
            .connect_all(&[
                (RESOLVER, DNS_PORT),
                (RESOLVER, WEB_PORT),
                (INTERNET, DNS_PORT),
            ])
            .await;
        assert_eq!(results[0], format!("connected dns {RESOLVER} {LINK_HOST}"));
        assert_eq!(
            results[1], "refused EHOSTUNREACH",
            "the resolver's web port"
        );
        assert_eq!(results[2], "refused EHOSTUNREACH", "DNS at a non-resolver");
        let guest: Ipv4Addr = wrenn_agent::guest::GUEST_IP.parse().unwrap();
        s.send_all(&[
            (guest, RESOLVER, DNS_PORT, "udp-dns-resolver"),
            (guest, INTERNET, DNS_PORT, "udp-dns-elsewhere"),
        ])
        .await;
        let got = s.datagrams("udp-dns-", 1).await;
        assert_eq!(
            got,
            [(IpAddr::V4(LINK_HOST), "udp-dns-resolver".to_string())]
        );
    });
}

#[test]
fn only_the_guest_address_leaves_the_tap() {
    let _lease = Lease;
    rt().block_on(async {
        let s = setup().await;
        // Another address of the guest's network, and another sandbox's host address.
        let same_net = Ipv4Addr::new(172, 16, 0, 77);
        let other_slot = Ipv4Addr::new(10, 11, 0, 99);
        let sh = |script: &str| {
            format!("import subprocess\nsubprocess.run({script:?}, shell=True, check=True)\n")
        };
        s.python(&sh(&format!(
            "ip addr add {same_net}/24 dev eth0 && ip addr add {other_slot}/32 dev eth0"
        )))
        .await;
        let guest: Ipv4Addr = wrenn_agent::guest::GUEST_IP.parse().unwrap();
        s.send_all(&[
            (same_net, INTERNET, SINK_PORT, "spoof-same-network"),
            (other_slot, INTERNET, SINK_PORT, "spoof-other-slot"),
            (guest, INTERNET, SINK_PORT, "spoof-genuine"),
        ])
        .await;
        s.python(&sh(&format!(
            "ip addr del {same_net}/24 dev eth0 && ip addr del {other_slot}/32 dev eth0"
        )))
        .await;
        let got = s.datagrams("spoof-", 1).await;
        assert_eq!(got, [(IpAddr::V4(LINK_HOST), "spoof-genuine".to_string())]);
    });
}

#[test]
fn slot_has_no_ipv6_and_the_agent_still_reaches_the_guest() {
    let _lease = Lease;
    rt().block_on(async {
        let s = setup().await;
        // The exec itself went host -> slot -> guest and back.
        assert_eq!(s.python("print(6*7)").await, "42\n");
        let v6 = run("ip", &["-n", &s.slot_netns, "-6", "-o", "addr", "show"]);
        assert_eq!(v6.trim(), "", "IPv6 addresses in the slot");
        if Path::new("/proc/sys/net/ipv6").exists() {
            let off = run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &s.slot_netns,
                    "cat",
                    "/proc/sys/net/ipv6/conf/tap0/disable_ipv6",
                ],
            );
            assert_eq!(off.trim(), "1");
        }
    });
}

#[test]
fn a_sandbox_s_own_policy_opens_what_it_allows_and_closes_what_it_denies() {
    let _lease = Lease;
    rt().block_on(async {
        let s = setup().await;
        let (private, metadata) = (DENIED[0].0, DENIED[3].0);
        // A name that resolves nowhere, or an allowed network holding the host, is refused.
        for network in [
            json!({"allow_out": ["nothing.invalid"]}),
            json!({"allow_out": [format!("{LINK_HOST}/32")]}),
        ] {
            let (st, v) = s
                .agent
                .call(
                    reqwest::Method::POST,
                    "/v1/sandboxes",
                    Some(
                        json!({"id": format!("sb-policy-bad-{}", std::process::id()),
                           "template": "minimal", "vcpus": 1, "memory_mb": 256,
                           "network": network}),
                    ),
                )
                .await;
            assert_eq!(st, 400, "{network}: {v}");
        }
        let id = format!("sb-policy-{}", std::process::id());
        let (st, v) = s
            .agent
            .call(
                reqwest::Method::POST,
                "/v1/sandboxes",
                Some(
                    json!({"id": id, "template": "minimal", "vcpus": 1, "memory_mb": 256,
                       "network": {"allow_out": [private.to_string(), METADATA_NAME],
                                   "deny_out": [INTERNET.to_string()]}}),
                ),
            )
            .await;
        assert_eq!(st, 201, "create with a policy: {v}");
        route_to_world(PREFIX, v["host_ip"].as_str().unwrap().parse().unwrap());
        let targets = [
            (private, WEB_PORT),
            (metadata, WEB_PORT),
            (DENIED[1].0, WEB_PORT),
            (INTERNET, WEB_PORT),
        ];
        let expected = [
            format!("connected web {private} {LINK_HOST}"),
            format!("connected web {metadata} {LINK_HOST}"),
            "refused EHOSTUNREACH".to_string(),
            "refused EHOSTUNREACH".to_string(),
        ];
        assert_eq!(s.connect_all_on(&id, &targets).await, expected);
        // (The default sandbox is refused both addresses: the first test. Not asked again
        // here: the kernel answers a guest at most a burst of 6 refusals a second, and the
        // tests run at once.)
        // Paused and resumed (in whatever slot is free), the policy comes back with it.
        s.agent.lifecycle(&id, "pause").await;
        let v = s.agent.lifecycle(&id, "resume").await;
        route_to_world(PREFIX, v["host_ip"].as_str().unwrap().parse().unwrap());
        assert_eq!(s.connect_all_on(&id, &targets).await, expected);

        s.agent.destroy(&id).await;
    });
}

#[test]
fn no_local_user_but_the_agent_s_reaches_envd() {
    let _lease = Lease;
    rt().block_on(async {
        use std::os::unix::process::CommandExt;
        let s = setup().await;
        let connects_as = |uid: u32, port: u16| {
            Command::new("bash")
                .args(["-c", &format!("exec 3<>/dev/tcp/{}/{port}", s.host_ip)])
                .uid(uid)
                .gid(uid)
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap()
                .success()
        };
        let envd = wrenn_types::envd::ENVD_PORT;
        // Another user of the host is refused at once; the agent's own user (root, as this
        // test) connects, and the agent's execs work.
        assert!(!connects_as(65534, envd), "uid 65534 reached envd");
        assert!(connects_as(0, envd));
        assert_eq!(s.python("print(6*7)").await, "42\n");
    });
}
