//! Multi-host end-to-end test: a private PostgreSQL, two `wrenn server` processes sharing it
//! (on the test bridge's address, which the agents join through), and three `wrenn agent`
//! processes with real VMs, each in a network namespace of its own acting as its own machine
//! (see `multihost/`). Checked through the public API of either server: sandboxes spread
//! over the hosts, creates per second across the three hosts (printed), a snapshot template
//! made on one host serves creates; a SIGKILLed agent's sandboxes read as unavailable,
//! creates avoid its host, and its restart brings them back usable; after a SIGKILL of the
//! leading server the other serves every sandbox and new creates and takes over the reaper.
//! Agents join with one-time tokens and serve mutual TLS only (a plain-HTTP client gets
//! nothing); with the template's host drained a create from the template runs on another
//! host (copied there); drained hosts get no creates and keep their sandboxes working; a host
//! with sandboxes is not removed, an idle drained one is.
//!
//! Needs root, PostgreSQL's server binaries and the guest images; never skipped. Run:
//! `flock -o /tmp/wrenn-vm-tests.lock cargo test -p wrenn-cli --test multihost_e2e -- --nocapture`.

#[path = "multihost/mod.rs"]
mod multihost;

use multihost::{Api, Cluster};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const SANDBOX: &str = "multihost";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Hosts (by index) of `ids`, asserting each is on exactly one host.
fn hosts_of(c: &Cluster, ids: &[String]) -> Vec<usize> {
    ids.iter()
        .map(|id| {
            c.host_of(id)
                .unwrap_or_else(|| panic!("sandbox {id} is on no host:\n{}", c.logs()))
        })
        .collect()
}

#[test]
fn multihost_cluster() {
    let mut c = Cluster::start();
    let rt = runtime();
    let key = rt.block_on(c.account(0, SANDBOX));
    let api = [c.api(0, &key), c.api(1, &key)];

    // Spread: three creates one after another through one server go to three hosts (each
    // server counts what it placed since the hosts last reported; the other server's
    // placements it learns from the next heartbeat).
    let spread: Vec<String> = rt.block_on(async {
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(api[0].create(json!({})).await);
        }
        ids
    });
    let mut placed = hosts_of(&c, &spread);
    eprintln!("[numbers] three creates in a row went to hosts {placed:?}");
    placed.sort();
    placed.dedup();
    assert_eq!(
        placed.len(),
        3,
        "three creates did not spread over three hosts"
    );

    creates_per_second(&c, &api, &rt);
    let template_host = template_on_its_host(&c, &api, &rt, &spread[0]);

    agent_death_and_return(&mut c, &api, &rt, &spread[1]);
    server_death(&mut c, &api, &rt, &spread[1..]);
    tls_only(&c, &rt);
    drain_and_remove(&c, &api, &rt, template_host, &spread[2]);

    teardown(&mut c, &api, &rt);
}

/// Polls `check` every half second until it gives `Some`, for at most `secs` seconds.
async fn poll<T, F, Fut>(what: &str, secs: u64, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// SIGKILL of the agent of `sb`'s host: through both servers `sb` reads as unavailable
/// (`error`) and its operations answer 503 `host_unreachable` within the heartbeat's window,
/// new creates go to the other hosts; after the agent's restart `sb` is `running` and usable.
fn agent_death_and_return(c: &mut Cluster, api: &[Api; 2], rt: &tokio::runtime::Runtime, sb: &str) {
    let victim = c.host_of(sb).expect("host of the sandbox");
    rt.block_on(api[0].sh(sb, "echo before > /home/user/mark.txt"));
    c.hosts[victim].kill();
    let t = Instant::now();
    rt.block_on(async {
        for a in api {
            poll("the sandbox reads as unavailable", 60, || async {
                let (s, v) = a.status(sb).await;
                assert_eq!(s, 200, "{v}");
                (v["status"] != "running").then_some(())
            })
            .await;
            let (s, v) = a.status(sb).await;
            assert_eq!(v["status"], "error", "{s} {v}");
        }
        eprintln!(
            "[numbers] a SIGKILLed agent's sandbox reads as unavailable after {:?}",
            t.elapsed()
        );
        let (s, v) = api[1]
            .post(&format!("/v1/sandboxes/{sb}/exec"), json!({"cmd": "true"}))
            .await;
        assert_eq!(s, 503, "{v}");
        assert_eq!(v["error"]["code"], "host_unreachable", "{v}");
        let text = v.to_string();
        assert!(
            !text.contains("172.30.77."),
            "the host's address leaks: {text}"
        );
        for a in api {
            let id = a.create(json!({})).await;
            let h = c.host_of(&id).expect("host of a new sandbox");
            assert_ne!(h, victim, "a create went to the silent host");
            a.destroy(&id).await;
        }
    });
    let t = Instant::now();
    c.hosts[victim].restart();
    rt.block_on(async {
        for a in api {
            poll("the sandbox is running again", 120, || async {
                let (s, v) = a.status(sb).await;
                assert_eq!(s, 200, "{v}");
                (v["status"] == "running").then_some(())
            })
            .await;
        }
        assert_eq!(api[1].sh(sb, "cat /home/user/mark.txt").await, "before\n");
    });
    eprintln!(
        "[numbers] agent restart to its sandbox usable again: {:?}",
        t.elapsed()
    );
}

/// The index of the server that leads (runs the reaper), from the servers' logs.
fn leader(c: &Cluster) -> Option<usize> {
    (0..c.servers.len()).find(|&i| c.servers[i].is_running() && c.servers[i].leads())
}

/// SIGKILL of the leading server: the other serves every sandbox in `alive` (exec and the
/// exec stream), creates, and takes over the reaper (a sandbox with a short timeout it
/// creates is auto-paused).
fn server_death(c: &mut Cluster, api: &[Api; 2], rt: &tokio::runtime::Runtime, alive: &[String]) {
    let dead = rt.block_on(poll("one server leads", 60, || async { leader(c) }));
    let other = 1 - dead;
    c.servers[dead].kill();
    let t = Instant::now();
    let a = &api[other];
    rt.block_on(async {
        let (s, list) = a.get("/v1/sandboxes").await;
        assert_eq!(s, 200, "{list}");
        let listed: Vec<&str> = list
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v["id"].as_str())
            .collect();
        for id in alive {
            assert!(listed.contains(&id.as_str()), "{id} not listed: {list}");
            assert_eq!(a.sh(id, "echo alive").await, "alive\n");
            // Streams too, whichever server created the sandbox.
            let (out, code) = a.stream_sh(id, "echo streamed; echo twice").await;
            assert_eq!((out.as_str(), code), ("streamed\ntwice\n", 0));
        }
        let fresh = a.create(json!({"timeout_sec": 3})).await;
        assert_eq!(a.sh(&fresh, "echo fresh").await, "fresh\n");
        poll("the surviving server leads", 60, || async {
            c.servers[other].leads().then_some(())
        })
        .await;
        eprintln!(
            "[numbers] the other server leads {:?} after the leader's SIGKILL",
            t.elapsed()
        );
        poll(
            "the surviving server's reaper pauses an idle sandbox",
            120,
            || async {
                let (s, v) = a.status(&fresh).await;
                assert_eq!(s, 200, "{v}");
                (v["status"] == "paused").then_some(())
            },
        )
        .await;
        a.destroy(&fresh).await;
    });
    c.restart_server(dead);
    rt.block_on(async {
        for id in alive {
            let (s, v) = api[dead].status(id).await;
            assert_eq!(s, 200, "{v}");
            assert_eq!(v["status"], "running", "{v}");
        }
    });
}

/// Every server-to-agent connection is mutual TLS: the hosts' URLs are https, a plain-HTTP
/// client of an agent gets no answer, and a TLS client without the control plane's client
/// certificate is refused.
fn tls_only(c: &Cluster, rt: &tokio::runtime::Runtime) {
    let hosts = c.hosts_cli(&["list"]);
    for h in hosts.as_array().expect("hosts") {
        let url = h["url"].as_str().expect("url");
        assert!(url.starts_with("https://"), "{h}");
    }
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let no_cert = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    rt.block_on(async {
        for h in &c.hosts {
            let addr = h.url.trim_start_matches("https://");
            let r = plain.get(format!("http://{addr}/v1/host")).send().await;
            assert!(r.is_err(), "plain HTTP to agent {} answered: {r:?}", h.name);
            let r = no_cert.get(format!("{}/v1/host", h.url)).send().await;
            assert!(
                r.is_err(),
                "agent {} answered a client without a certificate: {r:?}",
                h.name
            );
        }
    });
}

/// Drain and remove: with the template's host drained a create from the template is placed
/// on another host (copied there); with the busy host drained too every create goes to the
/// third host while the busy host's sandbox keeps working; removing a host with a sandbox
/// (`busy_sb`'s) is refused while the idle drained host is removed and forgotten.
fn drain_and_remove(
    c: &Cluster,
    api: &[Api; 2],
    rt: &tokio::runtime::Runtime,
    template_host: usize,
    busy_sb: &str,
) {
    let drained = c.hosts[template_host].id.clone();
    let v = c.hosts_cli(&["drain", &drained]);
    assert_eq!(v["draining"], true, "{v}");
    c.wait_heartbeats();
    template_copied(c, api, rt, template_host);
    // The busy host drained too: creates all go to the third host, and the sandbox on the
    // drained busy host keeps working.
    let busy = c.host_of(busy_sb).expect("host of the busy sandbox");
    let v = c.hosts_cli(&["drain", &c.hosts[busy].id]);
    assert_eq!(v["draining"], true, "{v}");
    c.wait_heartbeats();
    let third = 3 - busy - template_host;
    rt.block_on(async {
        for a in api {
            let base = a.create(json!({})).await;
            assert_eq!(
                c.host_of(&base),
                Some(third),
                "a create went to a drained host"
            );
            a.destroy(&base).await;
        }
        assert_eq!(api[0].sh(busy_sb, "echo kept").await, "kept\n");
        let (s, v) = api[1].delete("/v1/snapshots/mh-template").await;
        assert_eq!(s, 204, "{v}");
    });
    let v = c.hosts_cli(&["undrain", &c.hosts[busy].id]);
    assert_eq!(v["draining"], false, "{v}");
    let out = c.hosts_cli_raw(&["remove", &c.hosts[busy].id]);
    assert!(!out.status.success(), "a host with a sandbox was removed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sandbox"), "{err}");
    let v = c.hosts_cli(&["remove", &drained]);
    assert_eq!(v["removed"], true, "{v}");
    let ids: Vec<String> = c
        .hosts_cli(&["list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        !ids.contains(&drained) && ids.contains(&c.hosts[busy].id),
        "{ids:?}"
    );
    c.wait_heartbeats();
    rt.block_on(async {
        assert_eq!(api[1].sh(busy_sb, "echo still").await, "still\n");
        let id = api[1].create(json!({})).await;
        assert_ne!(
            c.host_of(&id),
            Some(template_host),
            "a create went to the removed host"
        );
        api[1].destroy(&id).await;
    });
}

/// With the template's host drained, a create from the template is placed on another host
/// (the template copied there agent to agent) and has the file written before the snapshot.
fn template_copied(
    c: &Cluster,
    api: &[Api; 2],
    rt: &tokio::runtime::Runtime,
    template_host: usize,
) {
    rt.block_on(async {
        let t = Instant::now();
        // The copy moves the whole template (base image included) between the hosts: tens of
        // seconds in a debug build under TCG, more on a loaded machine.
        let from = api[1]
            .create_within(json!({"template": "mh-template"}), Duration::from_secs(900))
            .await;
        eprintln!(
            "[numbers] create from a template made on another host (copied): {:?}",
            t.elapsed()
        );
        let h = c.host_of(&from).expect("host of the copy's sandbox");
        assert_ne!(h, template_host, "a create went to the drained host");
        assert_eq!(
            api[0].sh(&from, "cat /home/user/where.txt").await,
            "made-on-one-host\n"
        );
        api[1].destroy(&from).await;
    });
}

/// Twelve creates at once (half through each server): prints creates per second and where
/// they went, checks each answers, destroys them.
fn creates_per_second(c: &Cluster, api: &[Api; 2], rt: &tokio::runtime::Runtime) {
    const N: usize = 12;
    let t = Instant::now();
    let ids: Vec<String> = rt.block_on(async {
        let creates = (0..N).map(|i| {
            let a = api[i % 2].clone();
            async move { a.create(json!({})).await }
        });
        futures_util::future::join_all(creates).await
    });
    let took = t.elapsed();
    let mut per_host: BTreeMap<usize, usize> = BTreeMap::new();
    for h in hosts_of(c, &ids) {
        *per_host.entry(h).or_default() += 1;
    }
    let rate = N as f64 / took.as_secs_f64();
    eprintln!(
        "[numbers] {N} creates at once across three hosts ({} guests, {} CPUs): {took:?}, \
         {rate:.2} creates/s, per host {per_host:?}",
        c.accel(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    rt.block_on(async {
        let checks = ids.iter().enumerate().map(|(i, id)| {
            let a = api[i % 2].clone();
            async move {
                assert_eq!(a.sh(id, "echo $((6*7))").await, "42\n");
                a.destroy(id).await;
            }
        });
        futures_util::future::join_all(checks).await;
    });
}

/// Snapshots `origin` as a template and creates from it: the new sandbox has the file written
/// before the snapshot. Returns the template's host.
fn template_on_its_host(
    c: &Cluster,
    api: &[Api; 2],
    rt: &tokio::runtime::Runtime,
    origin: &str,
) -> usize {
    let host = c.host_of(origin).expect("origin's host");
    rt.block_on(async {
        api[0]
            .sh(origin, "echo made-on-one-host > /home/user/where.txt")
            .await;
        let (s, v) = api[1]
            .post(
                "/v1/snapshots",
                json!({"sandbox_id": origin, "name": "mh-template"}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let from = api[0].create(json!({"template": "mh-template"})).await;
        assert_eq!(
            api[1].sh(&from, "cat /home/user/where.txt").await,
            "made-on-one-host\n"
        );
        api[1].destroy(&from).await;
    });
    host
}

/// Destroys the sandboxes left through the API, stops servers and agents with SIGTERM and checks
/// nothing of the hosts is left running (the cluster's drop removes the rest).
fn teardown(c: &mut Cluster, api: &[Api; 2], rt: &tokio::runtime::Runtime) {
    rt.block_on(async {
        let (s, list) = api[0].get("/v1/sandboxes").await;
        assert_eq!(s, 200, "{list}");
        for sb in list.as_array().unwrap() {
            api[0].destroy(sb["id"].as_str().unwrap()).await;
        }
    });
    for s in &mut c.servers {
        let status = s.stop();
        assert!(status.success(), "server exit: {status}");
    }
    for h in &mut c.hosts {
        let status = h.stop();
        assert!(status.success(), "agent {} exit: {status}", h.name);
        let left = multihost::processes_of(&h.data_dir);
        assert!(left.is_empty(), "processes of {} left: {left:?}", h.name);
    }
}
