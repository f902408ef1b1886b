//! Several hosts, against simulated agents: a host that stops answering its heartbeats is
//! unreachable within seconds (its sandboxes read `error` / `missing`, their operations
//! answer 503, the reaper leaves them alone, creates go elsewhere) and its return brings
//! them back as they were; drain and remove; placement by capacity, not counts; and, on one
//! PostgreSQL, one leader running the reaper with a handover when it is dropped.

mod support;

use reqwest::Method;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{assert_error, TestServer};
use wrenn_server::agent::sim::SimAgent;
use wrenn_server::store::RemovedHost;

/// The heartbeat of these tests: a silent host is unreachable after three of them.
const BEAT: Duration = Duration::from_millis(250);
/// How long a state may take to show on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(20);

async fn server(database_url: Option<String>) -> TestServer {
    TestServer::start_with(move |c| {
        c.database_url = database_url;
        c.heartbeat_interval = BEAT;
        c.reaper_interval = Duration::from_secs(3600);
        c.reconcile_interval = Duration::from_secs(3600);
    })
    .await
}

/// A second simulated host registered with `t`; returns it and its id.
async fn second_host(t: &TestServer, label: &str, index: u8) -> (Arc<SimAgent>, String) {
    let sim = Arc::new(SimAgent::new(&["minimal", "python"], index).unwrap());
    let rec = t.server.register_agent(label, sim.clone()).await.unwrap();
    (sim, rec.id)
}

/// The id of the host the support server registered at start (the HTTP one).
async fn first_host_id(t: &TestServer) -> String {
    let hosts = t.server.store().list_hosts().await.unwrap();
    hosts
        .iter()
        .find(|h| h.url.starts_with("http://"))
        .unwrap()
        .id
        .clone()
}

async fn create(t: &TestServer, key: &str, path: &str, body: Value) -> String {
    let r = t
        .keyed(Method::POST, path, key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 201, "{v}");
    v["id"].as_str().unwrap().to_string()
}

async fn host_of(t: &TestServer, id: &str) -> String {
    t.server
        .store()
        .find_sandbox(id)
        .await
        .unwrap()
        .unwrap()
        .host_id
}

async fn get_status(t: &TestServer, key: &str, path: &str) -> String {
    let r = t.keyed(Method::GET, path, key).send().await.unwrap();
    let v: Value = r.json().await.unwrap();
    v["status"].as_str().unwrap_or_default().to_string()
}

/// Polls `path` until its status is `want`; returns how long it took.
async fn wait_status(t: &TestServer, key: &str, path: &str, want: &str) -> Duration {
    let start = Instant::now();
    loop {
        let got = get_status(t, key, path).await;
        if got == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{path} stayed {got}, never {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn exec(t: &TestServer, key: &str, path: &str) -> reqwest::Response {
    t.keyed(Method::POST, path, key)
        .json(&json!({"cmd": "echo hi"}))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_host_is_unreachable_within_seconds_and_its_return_brings_its_sandboxes_back() {
    let t = server(None).await;
    let acc = t.account("silent@example.com").await;
    let a = first_host_id(&t).await;
    // Made while host a is the only one.
    let sb = create(&t, &acc.key, "/v1/sandboxes", json!({"timeout_sec": 1})).await;
    let cap = create(&t, &acc.key, "/v1/capsules", json!({"template": "minimal"})).await;
    let paused = create(&t, &acc.key, "/v1/sandboxes", json!({})).await;
    let r = t
        .keyed(
            Method::POST,
            &format!("/v1/sandboxes/{paused}/pause"),
            &acc.key,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(host_of(&t, &sb).await, a);
    let (_b_sim, b) = second_host(&t, "sim://host-b", 1).await;

    t.sim.set_silent(true);
    let took = wait_status(&t, &acc.key, &format!("/v1/sandboxes/{sb}"), "error").await;
    println!("[numbers] silent host seen unreachable after {took:?} (heartbeat {BEAT:?})");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(
        get_status(&t, &acc.key, &format!("/v1/capsules/{cap}")).await,
        "missing"
    );
    assert_eq!(
        get_status(&t, &acc.key, &format!("/v1/sandboxes/{paused}")).await,
        "error"
    );
    // The list shows the same.
    let r = t
        .keyed(Method::GET, "/v1/capsules", &acc.key)
        .send()
        .await
        .unwrap();
    let list: Value = r.json().await.unwrap();
    let mine = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == cap.as_str())
        .unwrap();
    assert_eq!(mine["status"], "missing");
    // The store says so too (from the next heartbeat), for `wrenn hosts list`.
    let start = Instant::now();
    loop {
        let hosts = t.server.store().list_hosts().await.unwrap();
        let row = hosts.iter().find(|h| h.id == a).unwrap();
        if row.status.as_str() == "unreachable" {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the store never says unreachable"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Its operations answer 503 in the error format, with no host details.
    let v = assert_error(
        exec(&t, &acc.key, &format!("/v1/sandboxes/{sb}/exec")).await,
        503,
        "host_unreachable",
    )
    .await;
    assert!(!v.to_string().contains("127.0.0.1"), "{v}");
    let r = t
        .keyed(Method::POST, &format!("/v1/sandboxes/{sb}/pause"), &acc.key)
        .send()
        .await
        .unwrap();
    assert_error(r, 503, "host_unreachable").await;
    let r = t
        .keyed(
            Method::POST,
            &format!("/v1/sandboxes/{paused}/resume"),
            &acc.key,
        )
        .send()
        .await
        .unwrap();
    assert_error(r, 503, "host_unreachable").await;
    assert_error(
        exec(&t, &acc.key, &format!("/v1/capsules/{cap}/exec")).await,
        503,
        "host_unavailable",
    )
    .await;
    let r = t
        .keyed(Method::DELETE, &format!("/v1/sandboxes/{sb}"), &acc.key)
        .send()
        .await
        .unwrap();
    assert_error(r, 503, "host_unreachable").await;

    // The reaper leaves it alone although its timeout has passed.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let reaped = t.server.reap_idle_now().await.unwrap();
    assert!(reaped.is_empty(), "{reaped:?}");
    // And the reconciler changes nothing of it.
    t.server.reconcile_now().await.unwrap();

    // Creates go to the other host.
    for _ in 0..3 {
        let id = create(&t, &acc.key, "/v1/sandboxes", json!({})).await;
        assert_eq!(host_of(&t, &id).await, b);
    }

    // Back: everything as it was.
    t.sim.set_silent(false);
    let took = wait_status(&t, &acc.key, &format!("/v1/sandboxes/{sb}"), "running").await;
    println!("[numbers] returned host seen healthy after {took:?}");
    assert_eq!(
        get_status(&t, &acc.key, &format!("/v1/capsules/{cap}")).await,
        "running"
    );
    assert_eq!(
        get_status(&t, &acc.key, &format!("/v1/sandboxes/{paused}")).await,
        "paused"
    );
    let r = exec(&t, &acc.key, &format!("/v1/sandboxes/{sb}/exec")).await;
    assert_eq!(r.status(), 200);
    let report = t.server.reconcile_now().await.unwrap();
    assert!(!report.changed_anything(), "{report:?}");
    let r = t
        .keyed(
            Method::POST,
            &format!("/v1/sandboxes/{paused}/resume"),
            &acc.key,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_host_keeps_its_sandboxes_and_gets_no_new_ones() {
    let t = server(None).await;
    let acc = t.account("drain@example.com").await;
    let a = first_host_id(&t).await;
    let on_a = create(&t, &acc.key, "/v1/sandboxes", json!({})).await;
    let (_b_sim, b) = second_host(&t, "sim://host-b", 1).await;
    let store = t.server.store();

    assert!(store.set_host_draining(&a, true).await.unwrap());
    t.server.heartbeat_now().await;
    for _ in 0..4 {
        let id = create(&t, &acc.key, "/v1/sandboxes", json!({})).await;
        assert_eq!(host_of(&t, &id).await, b);
    }
    // The sandbox on the draining host still runs and answers.
    assert_eq!(
        get_status(&t, &acc.key, &format!("/v1/sandboxes/{on_a}")).await,
        "running"
    );
    assert_eq!(
        exec(&t, &acc.key, &format!("/v1/sandboxes/{on_a}/exec"))
            .await
            .status(),
        200
    );
    // Every host draining: no room, in the error format.
    assert!(store.set_host_draining(&b, true).await.unwrap());
    t.server.heartbeat_now().await;
    let r = t
        .keyed(Method::POST, "/v1/sandboxes", &acc.key)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_error(r, 503, "no_capacity").await;
    // Undrained: a takes creates again (it has the most room now).
    assert!(store.set_host_draining(&a, false).await.unwrap());
    t.server.heartbeat_now().await;
    let id = create(&t, &acc.key, "/v1/sandboxes", json!({})).await;
    assert_eq!(host_of(&t, &id).await, a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_host_is_refused_with_sandboxes_unless_forced() {
    let t = server(None).await;
    let acc = t.account("remove@example.com").await;
    let (_b_sim, b) = second_host(&t, "sim://host-b", 1).await;
    let store = t.server.store();
    let a = first_host_id(&t).await;
    assert!(store.set_host_draining(&a, true).await.unwrap());
    t.server.heartbeat_now().await;
    let on_b = create(&t, &acc.key, "/v1/sandboxes", json!({})).await;
    assert_eq!(host_of(&t, &on_b).await, b);

    assert_eq!(
        store.remove_host(&b, false).await.unwrap(),
        RemovedHost::HasSandboxes(1)
    );
    assert_eq!(
        get_status(&t, &acc.key, &format!("/v1/sandboxes/{on_b}")).await,
        "running"
    );
    assert_eq!(
        store.remove_host(&b, true).await.unwrap(),
        RemovedHost::Removed { sandboxes: 1 }
    );
    // The next heartbeat forgets the host; its sandbox is gone with its record.
    t.server.heartbeat_now().await;
    let r = t
        .keyed(Method::GET, &format!("/v1/sandboxes/{on_b}"), &acc.key)
        .send()
        .await
        .unwrap();
    assert_error(r, 404, "sandbox_not_found").await;
    // With b removed and a draining, nothing takes a create.
    let r = t
        .keyed(Method::POST, "/v1/sandboxes", &acc.key)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_error(r, 503, "no_capacity").await;
    // A host with no sandboxes goes without --force.
    let c = t
        .server
        .register_agent(
            "sim://host-c",
            Arc::new(SimAgent::new(&["minimal"], 2).unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(
        store.remove_host(&c.id, false).await.unwrap(),
        RemovedHost::Removed { sandboxes: 0 }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_picks_by_capacity_not_counts() {
    let t = server(None).await;
    let acc = t.account("capacity@example.com").await;
    let a = first_host_id(&t).await;
    // a: one big sandbox.
    let big = create(&t, &acc.key, "/v1/sandboxes", json!({"memory_mb": 8192})).await;
    assert_eq!(host_of(&t, &big).await, a);
    let (_b_sim, b) = second_host(&t, "sim://host-b", 1).await;
    let store = t.server.store();
    // b: two small ones.
    assert!(store.set_host_draining(&a, true).await.unwrap());
    t.server.heartbeat_now().await;
    for _ in 0..2 {
        let id = create(&t, &acc.key, "/v1/sandboxes", json!({"memory_mb": 256})).await;
        assert_eq!(host_of(&t, &id).await, b);
    }
    assert!(store.set_host_draining(&a, false).await.unwrap());
    t.server.heartbeat_now().await;
    // a runs fewer sandboxes, b has more room: b.
    let id = create(&t, &acc.key, "/v1/sandboxes", json!({"memory_mb": 256})).await;
    assert_eq!(host_of(&t, &id).await, b);
    // A burst between two heartbeats spreads by what it placed: b's room falls below a's
    // after enough 1 GiB creates, and a gets the next one.
    let mut on_a = 0;
    for _ in 0..10 {
        let id = create(&t, &acc.key, "/v1/sandboxes", json!({"memory_mb": 1024})).await;
        if host_of(&t, &id).await == a {
            on_a += 1;
        }
    }
    assert!(on_a > 0, "every create of the burst went to b");
}

/// Polls until exactly one of the two leads; returns its index.
async fn one_leader(s: [&TestServer; 2]) -> usize {
    let start = Instant::now();
    loop {
        let leading: Vec<usize> = (0..2).filter(|&i| s[i].server.is_leader()).collect();
        if leading.len() == 1 {
            return leading[0];
        }
        assert!(leading.len() < 2, "two leaders at once");
        assert!(start.elapsed() < DEADLINE, "no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_servers_on_postgres_runs_the_reaper_and_hands_it_over_when_dropped() {
    let pg = support::pg::PgServer::start();
    let url = pg.create_database("leader").await;
    let quick = |url: String| {
        TestServer::start_with(move |c| {
            c.database_url = Some(url);
            c.heartbeat_interval = BEAT;
            c.reaper_interval = Duration::from_millis(100);
            c.reconcile_interval = Duration::from_secs(3600);
        })
    };
    let first = quick(url.clone()).await;
    let second = quick(url.clone()).await;
    let leader = one_leader([&first, &second]).await;
    let (lead, follow) = if leader == 0 {
        (first, second)
    } else {
        (second, first)
    };
    // Only the leader runs reaper passes.
    let start = lead.server.reaper_passes();
    let deadline = Instant::now() + DEADLINE;
    while lead.server.reaper_passes() < start + 3 {
        assert!(
            Instant::now() < deadline,
            "the leader runs no reaper passes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!follow.server.is_leader());
    assert_eq!(follow.server.reaper_passes(), 0);

    // The leader goes (its lock connection with it): the other takes over within seconds.
    let gone = Instant::now();
    drop(lead);
    while !follow.server.is_leader() {
        assert!(gone.elapsed() < DEADLINE, "no handover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = gone.elapsed();
    println!("[numbers] leader handover after {took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    let deadline = Instant::now() + DEADLINE;
    while follow.server.reaper_passes() < 3 {
        assert!(
            Instant::now() < deadline,
            "the new leader runs no reaper passes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sqlite_always_leads() {
    let t = server(None).await;
    assert!(t.server.is_leader());
}
