//! Multi-host end-to-end test: a private PostgreSQL, two `wrenn server` processes on loopback
//! sharing it, and three `wrenn agent` processes with real VMs, each in a network namespace
//! of its own acting as its own machine (see `multihost/`). Checked through the public API of
//! either server: sandboxes spread over the hosts, creates per second across the three hosts
//! (printed), a snapshot template made on one host serves creates, and after a SIGKILL of one
//! server the other serves every sandbox and new creates.
//!
//! Needs root, PostgreSQL's server binaries and the guest images; never skipped. Run:
//! `flock -o /tmp/wrenn-vm-tests.lock cargo test -p wrenn-cli --test multihost_e2e -- --nocapture`.

#[path = "multihost/mod.rs"]
mod multihost;

use multihost::{Api, Cluster};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Instant;

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
    eprintln!("template made on host {template_host}");

    // SIGKILL of one server: the other serves every sandbox and new creates.
    c.servers[0].kill();
    rt.block_on(async {
        let (s, list) = api[1].get("/v1/sandboxes").await;
        assert_eq!(s, 200, "{list}");
        let listed: Vec<&str> = list
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v["id"].as_str())
            .collect();
        for id in &spread[1..] {
            assert!(listed.contains(&id.as_str()), "{id} not listed: {list}");
            assert_eq!(api[1].sh(id, "echo alive").await, "alive\n");
        }
        let fresh = api[1].create(json!({})).await;
        assert_eq!(api[1].sh(&fresh, "echo fresh").await, "fresh\n");
        api[1].destroy(&fresh).await;
    });
    c.restart_server(0);
    rt.block_on(async {
        for id in &spread[1..] {
            let (s, v) = api[0].status(id).await;
            assert_eq!(s, 200, "{v}");
            assert_eq!(v["status"], "running", "{v}");
        }
    });

    teardown(&mut c, &api, &rt);
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
    eprintln!(
        "[numbers] {N} creates at once across three hosts: {took:?}, {:.2} creates/s, per host {per_host:?}",
        N as f64 / took.as_secs_f64()
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

/// Destroys what is left through the API, stops servers and agents with SIGTERM and checks
/// nothing of the hosts is left running (the cluster's drop removes the rest).
fn teardown(c: &mut Cluster, api: &[Api; 2], rt: &tokio::runtime::Runtime) {
    rt.block_on(async {
        let (s, list) = api[0].get("/v1/sandboxes").await;
        assert_eq!(s, 200, "{list}");
        for sb in list.as_array().unwrap() {
            api[0].destroy(sb["id"].as_str().unwrap()).await;
        }
        let (s, v) = api[1].delete("/v1/snapshots/mh-template").await;
        assert_eq!(s, 204, "{v}");
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
